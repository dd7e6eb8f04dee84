//! A call and its legs: the customer leg, inbound (a caller's INVITE we
//! answer) or outbound (a call Centralino places: callbacks now, a
//! campaign's contacts next), the operator legs, the anchored media as
//! signalling knows it, and what each leg still owes or waits for.

use super::*;

/// The citizen's side of a call: every call has one, set up one way or
/// the other.
#[derive(Debug)]
pub(super) enum Customer {
    /// Came in from a trunk: Centralino answers its INVITE.
    Inbound(Inbound),
    /// Placed by Centralino through an outbound trunk: a callback now,
    /// a campaign's contact next.
    Outbound(Outbound),
}

/// A caller's INVITE that Centralino answers.
#[derive(Debug)]
pub(super) struct Inbound {
    /// Its server transaction.
    pub(super) key: TxKey,
    pub(super) invite: Box<Message>,
    /// Our To tag.
    pub(super) tag: String,
    /// It got our 200 OK (IVR calls are answered first, queued calls when
    /// an operator answers).
    pub(super) answered: bool,
}

impl Inbound {
    /// A response to the caller's INVITE, with our tag.
    pub(super) fn response(&self, code: u16, reason: &'static str) -> Message {
        self.invite.response(code, reason, Some(&self.tag))
    }
}

/// A call Centralino places (a callback being executed).
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) id: String,
    pub(super) attempt: u32,
    /// By when the callback was promised (Unix seconds).
    pub(super) promised_unix: Option<i64>,
    /// Our INVITE to the citizen, built with the trunk's identity when the
    /// trunk is chosen; it leaves (with our offer) when it is dialled.
    pub(super) request: Box<Message>,
    /// Dial the citizen first, then queue them.
    pub(super) customer_first: bool,
    /// The citizen's INVITE, while it rings.
    pub(super) invite: Option<TxKey>,
    /// The citizen's INVITE has left: their phone may have rung.
    pub(super) dialled: bool,
    /// The citizen answered.
    pub(super) answered: bool,
    /// The outbound trunk dialled through.
    pub(super) trunk: TrunkId,
    /// Where the network's early media comes from (its 18x SDP), once the
    /// waiting operator was bridged to it.
    pub(super) early_media: Option<SocketAddr>,
    /// A campaign's attempt (a callback otherwise).
    pub(super) campaign: Option<Box<CampaignCall>>,
    /// The carrier's reliable provisional responses acknowledged so far.
    pub(super) prack: Pracked,
}

/// The reliable provisional responses (RFC 3262) of one INVITE of ours we
/// acknowledged by PRACK: per early dialog (a forking network may open a
/// few, at most [`Pracked::FORKS`] are followed) its tag, its last `RSeq`
/// and the SDP answer it carried, if any; and the CSeq our last PRACK took
/// (the dialog's requests after the 2xx go on above it). A new INVITE (an
/// authenticated retry, another trunk) starts afresh.
#[derive(Debug, Default)]
pub(super) struct Pracked {
    early: Vec<EarlyDialog>,
    pub(super) cseq: u32,
}

#[derive(Debug)]
struct EarlyDialog {
    tag: String,
    rseq: u32,
    answer: Option<Vec<u8>>,
}

/// What a provisional response to our INVITE asks of us (RFC 3262 §4).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Provisional {
    /// Not sent reliably: taken as it is.
    Unreliable,
    /// A new reliable one: PRACK it with this `RSeq` and CSeq, then take it.
    Prack(u32, u32),
    /// A repeated or out-of-order reliable one: "MUST NOT be processed
    /// further" (the network repeats what it still waits for).
    Discard,
}

impl Pracked {
    /// Early dialogs followed at most (forks beyond are not PRACKed).
    const FORKS: usize = 8;

    /// What `msg`, a provisional response to our INVITE, asks of us: a
    /// reliable one (`Require: 100rel`) with an `RSeq` in 1..2^31, the
    /// first of its early dialog or the next in order, is PRACKed and its
    /// SDP kept as the answer of that early dialog (RFC 3261 §13.2.1: a
    /// reliable 1xx may carry it, the 2xx then need not); a repeated or
    /// out-of-order one is discarded, and so is one we cannot PRACK.
    pub(super) fn due(&mut self, msg: &Message) -> Provisional {
        let reliable = (101..200).contains(&msg.code())
            && msg
                .headers_named("Require")
                .flat_map(uri::split_list)
                .any(|o| o.trim().eq_ignore_ascii_case("100rel"));
        if !reliable {
            return Provisional::Unreliable;
        }
        let rseq = msg
            .header("RSeq")
            .and_then(|r| r.trim().parse::<u32>().ok())
            .filter(|r| (1..1 << 31).contains(r));
        // CSeqs stay below 2^31 (RFC 3261 §8.1.1.5): one above is no
        // response to a request of ours.
        let cseq = self
            .cseq
            .max(msg.cseq)
            .checked_add(1)
            .filter(|c| *c < 1 << 31);
        let (Some(rseq), Some(cseq), Some(tag)) = (rseq, cseq, msg.to_tag.as_deref()) else {
            return Provisional::Discard;
        };
        // Kept only when it is SDP (bounded by the message limits, one
        // per early dialog, dropped at the final response).
        let answer = sdp::parse(&msg.body).is_ok().then(|| msg.body.clone());
        let full = self.early.len() >= Self::FORKS;
        match self.early.iter_mut().find(|e| e.tag == tag) {
            Some(e) if rseq != e.rseq.wrapping_add(1) => return Provisional::Discard,
            Some(e) => {
                e.rseq = rseq;
                // The first reliable SDP is the answer (RFC 3261 §13.2.1).
                if e.answer.is_none() {
                    e.answer = answer;
                }
            }
            None if full => return Provisional::Discard,
            None => self.early.push(EarlyDialog {
                tag: tag.to_owned(),
                rseq,
                answer,
            }),
        }
        self.cseq = cseq;
        Provisional::Prack(rseq, cseq)
    }

    /// At the final response: the SDP answer a reliable 1xx of the early
    /// dialog `tag` carried (a 2xx of that dialog without a body confirms
    /// it); the early dialogs are let go, the CSeq kept.
    pub(super) fn settle(&mut self, tag: Option<&str>) -> Option<Vec<u8>> {
        let early = std::mem::take(&mut self.early);
        let tag = tag?;
        early.into_iter().find(|e| e.tag == tag)?.answer
    }
}

/// A call's anchored media as the signalling side knows it.
#[derive(Debug)]
pub(super) struct AnchoredMedia {
    /// Local address the ports are bound on.
    pub(super) ip: IpAddr,
    /// Address written into SDP.
    pub(super) sdp_ip: IpAddr,
    pub(super) a_port: u16,
    pub(super) b_port: u16,
    pub(super) a: Peer,
    /// The direction our last SDP to the caller's leg said: an answer
    /// mirrors their offer, a refresh repeats it (RFC 4028 §7.4), a new
    /// offer of ours says `sendrecv`.
    pub(super) a_direction: Direction,
    pub(super) b: Option<Peer>,
    /// The same towards the operator's leg.
    pub(super) b_direction: Direction,
    /// o= session id towards the caller.
    pub(super) session: u64,
    /// o= session id towards the operator (`session + 1`; an attended
    /// transfer's operator keeps the one of their consultation).
    pub(super) b_session: u64,
    /// What each leg (`Side::index`) was last sent: a digest of our SDP
    /// with its `o=` version left out, and that version. The next SDP to
    /// the leg keeps the version when it says the same and takes the next
    /// one when it does not (RFC 3264 §8), whatever the other leg does
    /// (`answer::stamped`). A new dialog on the operator's side starts
    /// afresh; a consulted colleague's dialog keeps its own.
    pub(super) sent: [Option<(u64, u64)>; 2],
    /// Key presses so far (for the call's flow).
    pub(super) digits: String,
    /// The caller's INVITE had no SDP: our offer goes in the 200 OK and
    /// their answer comes in the ACK; the media opens then.
    pub(super) late_offer: bool,
    /// The media plane has the call (`Open` sent).
    pub(super) opened: bool,
    /// Per side: the dialog (Call-ID) and CSeq of a re-INVITE without SDP
    /// that our 2xx answered with an offer; the peer's answer comes in its
    /// ACK (RFC 3261 §14.2, RFC 3264 §8). Named by its dialog, so the ACK
    /// of another leg on that side (a colleague's, a transfer's) never
    /// takes it.
    pub(super) offered_in_2xx: [Option<(String, u32)>; 2],
}

impl AnchoredMedia {
    /// Sets a side's peer and the direction we answer it with (what our
    /// next SDP to it says follows).
    pub(super) fn set_peer(&mut self, side: Side, peer: Peer, direction: Direction) {
        match side {
            Side::A => {
                self.a = peer;
                self.a_direction = direction;
            }
            Side::B => {
                self.b = Some(peer);
                self.b_direction = direction;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BState {
    Calling,
    Ringing,
    Answered,
}

/// Who a B-leg rings.
#[derive(Debug)]
pub(super) enum Operator {
    /// One of this node's operators (their phone, one leg per phone).
    Local(AgentId),
    /// An operator another node holds for this call (the national
    /// network): the leg goes to that node, which rings them.
    Remote(Box<Lent>),
}

/// An operator of another node, granted for one of this node's calls.
#[derive(Debug)]
pub(super) struct Lent {
    /// The node.
    pub(super) node: String,
    /// Its operator's name there.
    pub(super) operator: String,
}

#[derive(Debug)]
pub(super) struct BLeg {
    pub(super) op: Operator,
    /// Offer number within the call (keys its ring timer).
    pub(super) attempt: u32,
    pub(super) invite_key: TxKey,
    pub(super) call_id: String,
    pub(super) local: String,
    pub(super) flow: Flow,
    pub(super) state: BState,
    pub(super) dialog: Option<Leg>,
}

impl BLeg {
    /// This node's operator it rings (`None`: another node's).
    pub(super) fn agent(&self) -> Option<AgentId> {
        match &self.op {
            Operator::Local(a) => Some(*a),
            Operator::Remote(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Answered, walking an IVR flow.
    Ivr,
    Queued,
    Offering,
    Connected,
}

pub(super) struct Call {
    /// `call{call=…}`: every log line about the call carries it.
    pub(super) span: tracing::Span,
    pub(super) phase: Phase,
    pub(super) queue: QueueId,
    pub(super) enqueued: Instant,
    pub(super) started: Instant,
    /// When the node read the message that started the call (the
    /// dispatch latency's start; `started` for calls we place).
    pub(super) received: Instant,
    /// The citizen's side: who set it up and what is owed to it.
    pub(super) customer: Customer,
    /// The customer leg's dialog (early: our side and the flow).
    pub(super) a_leg: Leg,
    /// Our Contact towards the caller, made at its first use and shared
    /// by every response and request of the call (`caller_contact`).
    pub(super) a_contact: std::cell::OnceCell<Value>,
    pub(super) caller: String,
    /// The caller asked not to be identified (RFC 3323/3325 `Privacy`):
    /// operators are offered the call from "anonymous"; the record keeps
    /// the number.
    pub(super) private: bool,
    /// B-legs ringing (one, or several with ring-all).
    pub(super) forks: Vec<BLeg>,
    /// The B-leg that answered.
    pub(super) b: Option<BLeg>,
    pub(super) attempt: u32,
    pub(super) media: AnchoredMedia,
    /// Entered a queue (queue metrics apply).
    pub(super) in_queue: bool,
    /// What the DID asks of every call.
    pub(super) spec: Arc<CallSpec>,
    /// The IVR walk, while it lasts.
    pub(super) run: Option<Run>,
    /// A flow waiting for the media (late offer: it opens at the ACK).
    pub(super) pending_flow: Option<Arc<IvrFlow>>,
    /// Call record id (unique across restarts).
    pub(super) record_id: String,
    /// When an operator answered, and who.
    pub(super) connected: Option<(Instant, String)>,
    /// Transferred by an operator: the first operator who talked, and the
    /// talk before the transfer (the record keeps both; a caller who gives
    /// up after a transfer is no dead end).
    pub(super) transferred: Option<(String, Duration)>,
    /// The caller asked to be called back; the store has not answered yet.
    pub(super) callback_asked: bool,
    /// Virtual hold's number dialogue in progress, and its step (stale
    /// timers carry an older step).
    pub(super) vhold: Option<Vhold>,
    pub(super) vhold_step: u32,
    /// An IVR transfer to an external number: its INVITE while it rings,
    /// its dialog once answered.
    pub(super) transfer: Option<TransferLeg>,
    /// Whose call it is: the tenant of the trunk it came in on, or of the
    /// queue that calls back (its dial plan and outbound trunks apply).
    pub(super) tenant: TenantId,
    /// The caller's session timer (RFC 4028), when its INVITE asked for
    /// one and supports the extension: the interval (seconds); the caller
    /// refreshes, and a call whose refreshes stop is ended. The step
    /// tells a stale expiry timer from the current one.
    pub(super) session_timer: Option<u32>,
    pub(super) session_step: u32,
    /// Centralino refreshes the session (RFC 4028: the caller asked for
    /// `refresher=uas`, a proxy set a timer the caller does not support,
    /// or a carrier answering our INVITE left it to us), by UPDATE when
    /// the peer allows it (`peer_update`), else by re-INVITE.
    pub(super) we_refresh: bool,
    pub(super) peer_update: bool,
    /// The caller's side listed INFO in its `Allow`: keys the operator
    /// sends by INFO are relayed to it (RFC 6086 §4.2: never to a peer
    /// that did not say it takes INFO).
    pub(super) peer_info: bool,
    /// The operator's side (their phone's 200, or a transfer's far end)
    /// listed INFO in its `Allow`: keys that reach us as RFC 4733 events,
    /// which it did not negotiate, are sent to it by INFO.
    pub(super) b_info: bool,
    /// Keys relayed by INFO on this call, and the last one's time: at
    /// most `INFO_RELAYS_MOST`, `INFO_RELAY_SPACING` apart (a sender
    /// cannot make the node flood the other phone).
    pub(super) info_relays: (u16, Option<Instant>),
    /// A side answered a relayed INFO with "gone" (481, 408, no answer)
    /// or "not taken" (405, 415, 469, 501): nothing more is relayed to it.
    pub(super) info_off: [bool; 2],
    /// Our refresh re-INVITE on the caller's leg awaits its answer: a
    /// re-INVITE from the caller meanwhile is glare (491, RFC 3261 §14.2).
    pub(super) refreshing: bool,
    /// Our refreshes' refusals in a row and the `Min-SE` they carry.
    pub(super) refresh_tries: RefreshTries,
    /// The caller required reliable provisional responses (RFC 3262).
    pub(super) reliable: Option<Reliable>,
    /// Where setup stopped to wait for the media plane's ports; `None`
    /// once they are held.
    pub(super) opening: Option<Opening>,
    /// A preview campaign's contact on an operator's desk, waiting for
    /// them to accept or skip it (or accepted by them: their phone rings).
    pub(super) preview: Option<Preview>,
    /// A citizen calling a campaign's number who is one of its contacts
    /// (found by the driver after the call began).
    pub(super) known: Option<Box<KnownCaller>>,
    /// Another node's call handed over to the operator it was granted
    /// (the national network): it never waits here; if that operator
    /// does not take it, it goes back to its node.
    pub(super) handed_over: bool,
    /// Another firm's call lent this node's operator under an agreement:
    /// (borrower, lender), counted until the call ends.
    pub(super) lent: Option<Box<(String, String)>>,
    /// A supervisor on the conversation (listening, whispering, barging).
    pub(super) monitor: Option<Monitoring>,
    /// An operator's consultation (a call from their phone to a queue of
    /// their firm while they talk to a caller), ready for an attended
    /// transfer.
    pub(super) consult: Option<Consult>,
    /// Our re-INVITE that moved an attended transfer's colleague here.
    pub(super) rejoin: Option<Rejoin>,
    /// Going back to its queue after losing its operator: the same visit
    /// (not offered again).
    pub(super) requeued: bool,
    /// An operator answered the current visit (its figures count it once).
    pub(super) visit_answered: bool,
    /// A queue could not serve it and offered a callback: if that comes to
    /// nothing, the call ends.
    pub(super) unserved: bool,
    /// Overflowed once already (never around a ring of queues).
    pub(super) overflowed: bool,
    /// Its callback is stored: a hang-up during the confirmation is still
    /// a callback request, not an abandon.
    pub(super) callback_stored: bool,
    /// Transferred to this operator by name, their phone ringing: not in
    /// the queue meanwhile; unanswered, back to it.
    pub(super) named: Option<AgentId>,
}

/// Our re-INVITE to the colleague an attended transfer moved onto a call:
/// its client transaction (kept, as a B-leg INVITE's is, so a repeated
/// 2xx is acknowledged again), whether its answer is awaited, and the try.
#[derive(Debug)]
pub(super) struct Rejoin {
    pub(super) key: TxKey,
    pub(super) pending: bool,
    pub(super) attempt: u32,
}

/// Who consults, about which call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Consult {
    /// The operator whose phone placed it.
    pub(super) by: AgentId,
    /// The caller's call they were talking on.
    pub(super) about: CallId,
}

/// A campaign's contact calling its number back, for the operator's desk.
#[derive(Clone, Debug)]
pub(super) struct KnownCaller {
    /// The campaign's name.
    pub(super) campaign: String,
    /// The contact's id.
    pub(super) contact: i64,
    /// What the desk shows of them.
    pub(super) desk: Vec<(String, String)>,
}

/// A preview campaign's contact shown to one operator.
#[derive(Clone, Copy, Debug)]
pub(super) struct Preview {
    pub(super) agent: AgentId,
    /// The offer it belongs to (the call's `attempt`): a stale timer
    /// carries an older one.
    pub(super) attempt: u32,
    /// They accepted: the offer is their phone ringing now.
    pub(super) accepted: bool,
}

/// What a call does once its ports are held.
pub(super) enum Opening {
    /// A trunk's call: its CDR starts, it enters its flow or queue.
    Inbound { target: Target, did: String },
    /// A callback: it waits for an operator (or dials, customer first).
    Callback { did: String },
    /// Another node's call for the operator held for it here.
    Handover { agent: AgentId, queue: QueueId },
}

/// What every call starts with, whichever way it was set up.
pub(super) struct NewCall {
    pub(super) span: tracing::Span,
    pub(super) phase: Phase,
    pub(super) queue: QueueId,
    pub(super) now: Instant,
    pub(super) customer: Customer,
    pub(super) a_leg: Leg,
    pub(super) caller: String,
    pub(super) private: bool,
    pub(super) media: AnchoredMedia,
    pub(super) spec: Arc<CallSpec>,
    pub(super) record_id: String,
    pub(super) tenant: TenantId,
}

impl Call {
    /// The one way a call is made: an inbound one by `setup`, a callback
    /// by `callbacks` (a campaign's contact next); the rest starts empty.
    /// Replaces the caller's leg (an outbound call's next trunk, its
    /// answered dialog): our Contact towards it is made again at its next
    /// use, so it can never name another leg's flow.
    pub(super) fn replace_a_leg(&mut self, leg: Leg) -> Leg {
        self.a_contact = std::cell::OnceCell::new();
        std::mem::replace(&mut self.a_leg, leg)
    }

    pub(super) fn new(c: NewCall) -> Self {
        Self {
            span: c.span,
            phase: c.phase,
            queue: c.queue,
            enqueued: c.now,
            started: c.now,
            received: c.now,
            customer: c.customer,
            a_leg: c.a_leg,
            a_contact: std::cell::OnceCell::new(),
            caller: c.caller,
            private: c.private,
            forks: Vec::new(),
            b: None,
            attempt: 0,
            media: c.media,
            in_queue: false,
            spec: c.spec,
            run: None,
            pending_flow: None,
            record_id: c.record_id,
            connected: None,
            transferred: None,
            callback_asked: false,
            vhold: None,
            vhold_step: 0,
            transfer: None,
            tenant: c.tenant,
            session_timer: None,
            session_step: 0,
            we_refresh: false,
            peer_update: false,
            peer_info: false,
            b_info: false,
            info_relays: (0, None),
            info_off: [false; 2],
            refreshing: false,
            refresh_tries: RefreshTries::default(),
            reliable: None,
            opening: None,
            preview: None,
            known: None,
            handed_over: false,
            lent: None,
            monitor: None,
            consult: None,
            rejoin: None,
            requeued: false,
            visit_answered: false,
            unserved: false,
            overflowed: false,
            callback_stored: false,
            named: None,
        }
    }

    /// The caller's INVITE we answer, when the call came in from a trunk.
    pub(super) fn inbound(&self) -> Option<&Inbound> {
        match &self.customer {
            Customer::Inbound(i) => Some(i),
            Customer::Outbound(_) => None,
        }
    }

    pub(super) fn inbound_mut(&mut self) -> Option<&mut Inbound> {
        match &mut self.customer {
            Customer::Inbound(i) => Some(i),
            Customer::Outbound(_) => None,
        }
    }

    /// The callback being executed, when Centralino placed the call.
    pub(super) fn outbound(&self) -> Option<&Outbound> {
        match &self.customer {
            Customer::Outbound(o) => Some(o),
            Customer::Inbound(_) => None,
        }
    }

    pub(super) fn outbound_mut(&mut self) -> Option<&mut Outbound> {
        match &mut self.customer {
            Customer::Outbound(o) => Some(o),
            Customer::Inbound(_) => None,
        }
    }

    /// No final response is owed on the customer leg: an inbound caller
    /// got our 200 OK, or Centralino placed the call (it is the client).
    pub(super) fn answered(&self) -> bool {
        self.inbound().is_none_or(|i| i.answered)
    }
}

/// Reliable provisional responses towards a caller that requires them
/// (`Require: 100rel`, RFC 3262).
#[derive(Debug)]
pub(super) struct Reliable {
    /// The next RSeq.
    pub(super) next_rseq: u32,
    /// The one not yet acknowledged by a PRACK (only one at a time): its
    /// RSeq, the response, when it was first sent, the next interval.
    pub(super) unacked: Option<(u32, Box<Message>, Instant, Duration)>,
    /// A 2xx that waits for the PRACK of a provisional that carried our
    /// SDP answer (§3: it may not overtake it).
    pub(super) held_final: Option<Box<Message>>,
}

/// Virtual hold's number dialogue (queue `callback_number`).
#[derive(Debug)]
pub(super) enum Vhold {
    /// The number read back: 1 confirms it, 2 keys in another.
    Confirm(String),
    /// Keying in another number (`#` ends it); attempts so far.
    Enter(String, u8),
}

/// The far end of an IVR transfer.
#[derive(Debug)]
pub(super) struct TransferLeg {
    pub(super) call_id: String,
    pub(super) invite: Option<TxKey>,
    pub(super) dialog: Option<Leg>,
    /// An operator's transfer (REFER), not the IVR's: unanswered, the
    /// caller goes back to their queue, whatever flow brought them.
    pub(super) by_operator: bool,
    /// The leg's own session timer (RFC 4028), as the far end's 2xx set
    /// it: the interval (seconds), whether we refresh, and the step that
    /// tells a stale timer from the current one. A far end that stops
    /// refreshing (a carrier that lost the call without a BYE) ends the
    /// call instead of holding the caller's line and our ports forever.
    pub(super) session: Option<u32>,
    pub(super) we_refresh: bool,
    pub(super) session_step: u32,
    pub(super) peer_update: bool,
    /// Our refresh re-INVITE on this leg awaits its answer (glare: 491).
    pub(super) refreshing: bool,
    pub(super) refresh_tries: RefreshTries,
    /// The far end's reliable provisional responses acknowledged.
    pub(super) prack: Pracked,
    /// Where the far network's early media comes from (its 18x SDP), once
    /// the caller was bridged to it.
    pub(super) early_media: Option<SocketAddr>,
}
