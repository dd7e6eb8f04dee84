//! Keeping the caller's session: reliable provisional responses (RFC
//! 3262: RSeq, retransmission until the PRACK, the 2xx held behind it) and
//! session timers (RFC 4028: who refreshes, our refreshes, expiry).

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use centralino_media::sdp;
use centralino_sip::dialog::Leg;
use centralino_sip::guard::reason_phrase;
use centralino_sip::session_timer;
use centralino_sip::txn::{Flow, TxKey};
use centralino_sip::{Message, Method, Transport};
use centralino_types::CallId;
use rand::RngCore;
use tracing::{debug, info, warn};

use super::{CallOutcome, CallTimer, ClientRef, Engine, Output, Provisional, Side, a_sdp};
use crate::media::{MediaCommand, Peer};

impl Engine {
    /// Sends a provisional response to the caller's INVITE: reliably
    /// (RSeq, `Require: 100rel`, retransmitted from T1 until its PRACK)
    /// when the caller requires it. A new one waits for the last one's
    /// PRACK (§3): a repeated 183 is simply not sent meanwhile.
    pub(super) fn provisional(&mut self, now: Instant, call_id: CallId, mut r: Message) {
        let t1 = self.t1;
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        // Only a caller's INVITE gets provisional responses.
        let Some(a_key) = call.inbound().map(|i| i.key.clone()) else {
            return;
        };
        if let Some(rel) = call.reliable.as_mut() {
            // One at a time; and without the caller's offer, a reliable
            // provisional would have to carry ours (§5), which this B2BUA
            // makes in the 2xx: the caller gets only the 100.
            if rel.unacked.is_some() || call.media.late_offer {
                return;
            }
            let rseq = rel.next_rseq;
            rel.next_rseq = rseq.wrapping_add(1).max(1);
            r.push("Require", "100rel");
            r.push("RSeq", &rseq.to_string());
            rel.unacked = Some((rseq, Box::new(r.clone()), now, t1));
            self.timers
                .push(Reverse((now + t1, call_id, CallTimer::Reliable(rseq))));
        }
        self.respond(now, &a_key, &r);
    }

    /// Sends the caller's 2xx, unless a reliable provisional response that
    /// carried our SDP is still unacknowledged: then it waits for that
    /// PRACK (RFC 3262 §3).
    pub(super) fn final_ok(&mut self, now: Instant, call_id: CallId, ok: Message) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(a_key) = call.inbound().map(|i| i.key.clone()) else {
            return;
        };
        if let Some(rel) = call.reliable.as_mut()
            && rel
                .unacked
                .as_ref()
                .is_some_and(|(_, r, _, _)| !r.body.is_empty())
        {
            rel.held_final = Some(Box::new(ok));
            return;
        }
        if let Some(rel) = call.reliable.as_mut() {
            // The 2xx ends the provisional's retransmissions.
            rel.unacked = None;
        }
        self.respond(now, &a_key, &ok);
    }

    /// A provisional response `msg` to an INVITE of ours, as its
    /// `Pracked` judged it (with the leg's local From and flow): a new
    /// reliable one is PRACKed; `false` when it is to be discarded (RFC
    /// 3262 §4: not processed further).
    pub(super) fn take_provisional(
        &mut self,
        now: Instant,
        judged: Option<(Provisional, String, Flow)>,
        msg: &Message,
    ) -> bool {
        match judged {
            Some((Provisional::Prack(rseq, cseq), local, flow)) => {
                self.send_prack(now, &local, flow, msg, rseq, cseq);
                true
            }
            Some((Provisional::Discard, ..)) => false,
            _ => true,
        }
    }

    /// Our PRACK (RFC 3262 §4) of the reliable provisional response `msg`
    /// to our INVITE, in the early dialog it makes (its To tag, Contact and
    /// Record-Route), with CSeq `cseq`; its answer changes nothing (a
    /// carrier that never gets it gives up on the INVITE itself, which
    /// fails the call as any refusal).
    pub(super) fn send_prack(
        &mut self,
        now: Instant,
        local: &str,
        flow: Flow,
        msg: &Message,
        rseq: u32,
        cseq: u32,
    ) {
        let mut early = Leg::from_response(local, flow, msg);
        early.cseq = cseq;
        let mut prack = self.in_dialog(&early, Method::Prack);
        prack.push("RAck", &format!("{rseq} {} INVITE", msg.cseq));
        debug!(rseq, "reliable provisional response acknowledged by PRACK");
        self.send_request(now, flow, prack, ClientRef::Other);
    }

    /// A PRACK (RFC 3262 §3): the `RAck` must name the unacknowledged
    /// reliable provisional response of this INVITE; anything else is
    /// `481`. A 2xx held for it goes out now.
    pub(super) fn on_prack(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let matched = self.dialog_side(msg).and_then(|(call_id, side)| {
            let call = self.calls.get_mut(&call_id)?;
            let (a_key, cseq) = call.inbound().map(|i| (i.key.clone(), i.invite.cseq))?;
            let rel = call.reliable.as_mut()?;
            let (rseq, _, _, _) = rel.unacked.as_ref()?;
            let mut rack = msg.header("RAck")?.split_whitespace();
            let ok = side == Side::A
                && rack.next()?.parse::<u32>().ok()? == *rseq
                && rack.next()?.parse::<u32>().ok()? == cseq
                && rack.next()?.eq_ignore_ascii_case("INVITE");
            if !ok {
                return None;
            }
            rel.unacked = None;
            Some((a_key, rel.held_final.take()))
        });
        let Some((a_key, held)) = matched else {
            let r = msg.response(481, reason_phrase(481), None);
            self.respond(now, key, &r);
            return;
        };
        let r = msg.response(200, "OK", None);
        self.respond(now, key, &r);
        if let Some(ok) = held {
            self.respond(now, &a_key, &ok);
        }
    }

    /// The caller's session was established or refreshed now: `r` (the
    /// 2xx) says so (RFC 4028 §9: the caller refreshes) and its expiry is
    /// armed anew, the older timer left to lapse as stale.
    pub(super) fn session_refreshed(&mut self, now: Instant, call_id: CallId, r: &mut Message) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(interval) = call.session_timer else {
            return;
        };
        // In the answer to the caller's request, `uac` is the caller and
        // `uas` is us.
        if call.we_refresh {
            r.push("Session-Expires", &format!("{interval};refresher=uas"));
        } else {
            r.push("Session-Expires", &format!("{interval};refresher=uac"));
            r.push("Require", "timer");
        }
        self.session_armed(now, call_id);
    }

    /// The session was just established or refreshed: its expiry is armed
    /// anew (older timers lapse as stale), and our next refresh at half
    /// the interval when it is ours to make (RFC 4028 §10).
    pub(super) fn session_armed(&mut self, now: Instant, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(interval) = call.session_timer else {
            return;
        };
        call.session_step += 1;
        let step = call.session_step;
        // §10: the refresher's session lasts the interval; the other side
        // gives up a little before it.
        let lasts = if call.we_refresh {
            Duration::from_secs(u64::from(interval))
        } else {
            session_timer::expiry(interval)
        };
        self.timers.push(Reverse((
            now + lasts,
            call_id,
            CallTimer::SessionExpired(step),
        )));
        if call.we_refresh {
            self.timers.push(Reverse((
                now + Duration::from_secs(u64::from(interval / 2)),
                call_id,
                CallTimer::SessionRefresh(step),
            )));
        }
    }

    /// Refreshes the caller leg's session: UPDATE without a body when the
    /// peer allows it, else a re-INVITE offering the same session (our
    /// SDP unchanged, so nothing is renegotiated).
    pub(super) fn send_refresh(&mut self, now: Instant, call_id: CallId) {
        let codecs = self.codecs.clone();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(interval) = call.session_timer else {
            return;
        };
        let method = if call.peer_update {
            Method::Update
        } else {
            Method::Invite
        };
        call.a_leg.cseq += 1;
        call.refreshing = method == Method::Invite;
        let min_se = call.refresh_tries.min_se;
        let leg = call.a_leg.clone();
        let contact = Self::caller_contact(call);
        let body = (method == Method::Invite).then(|| a_sdp(&mut call.media, &codecs));
        let mut req = self.in_dialog(&leg, method);
        req.push_shared("Contact", contact);
        req.push("Supported", "timer");
        // We make this request: `uac` is us.
        req.push("Session-Expires", &format!("{interval};refresher=uac"));
        req.push("Min-SE", &min_se.to_string());
        if let Some(body) = body {
            req.set_body(Some("application/sdp"), body);
        }
        self.send_request(now, leg.flow, req, ClientRef::Refresh(call_id));
    }

    /// The answer to our session refresh (RFC 4028 §10), as
    /// [`refresh_answer`] reads it.
    pub(super) fn on_refresh_response(&mut self, now: Instant, call_id: CallId, msg: &Message) {
        let dice = self.rng.next_u64();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.refreshing = false;
        if (200..300).contains(&msg.code()) && !call.a_leg.answers(msg) {
            // Another dialog's 2xx (a broken or failed-over SBC): ACKed,
            // nothing taken from it (interval, refresher, target, media),
            // and the refresh tried again as after any refusal.
            let leg = call.a_leg.clone();
            let wait = call.refresh_tries.retry_in();
            let step = call.session_step;
            self.refresh_not_ours(now, &leg, msg);
            self.timers.push(Reverse((
                now + wait,
                call_id,
                CallTimer::SessionRefresh(step),
            )));
            return;
        }
        let answer = refresh_answer(
            msg,
            &mut call.session_timer,
            &mut call.we_refresh,
            &mut call.peer_update,
            &mut call.refresh_tries,
        );
        // Glare (491) is not a refusal: RFC 3261 §14.1's random wait. The
        // carrier chose the Call-ID of a call it brought, we a callback's.
        let retry_in = match answer {
            RefreshAnswer::Retry if msg.code() == 491 => {
                Some(call.refresh_tries.glare_in(dice, call.inbound().is_none()))
            }
            RefreshAnswer::Retry => Some(call.refresh_tries.retry_in()),
            _ => None,
        };
        let step = call.session_step;
        match answer {
            RefreshAnswer::Refreshed => {
                call.a_leg.refresh_target(msg);
                let leg = call.a_leg.clone();
                if msg.cseq_method == Method::Invite {
                    self.send_ack_kept(now, &leg, msg);
                    self.refresh_answer_media(call_id, Side::A, leg.flow, msg);
                }
                self.session_armed(now, call_id);
            }
            RefreshAnswer::Again(_) => self.send_refresh(now, call_id),
            RefreshAnswer::Gone => {
                warn!(
                    code = msg.code(),
                    "session refresh answered: the session is gone"
                );
                self.metrics.session_timer_expired.inc();
                self.end_connected(
                    now,
                    call_id,
                    msg.code() == 408,
                    true,
                    CallOutcome::SessionExpired,
                );
            }
            RefreshAnswer::Retry => self.timers.push(Reverse((
                now + retry_in.unwrap_or(REFRESH_RETRY),
                call_id,
                CallTimer::SessionRefresh(step),
            ))),
        }
        self.metrics
            .session_refreshes
            .with_label_values(&[answer.label()])
            .inc();
    }
}

/// A transient refusal of our refresh (491 glare, a 5xx) is tried again
/// this much later, doubled after each refusal in a row (up to 64 s);
/// the expiry ends the call if none succeeds.
pub(super) const REFRESH_RETRY: Duration = Duration::from_secs(2);

/// 491s in a row taken as glare; the next ones as refusals.
pub(super) const MAX_GLARES: u32 = 3;

/// How long to wait before our re-INVITE again after a 491 (RFC 3261
/// §14.1), in 10 ms steps from `dice`: 2.1–4 s when we chose the dialog's
/// Call-ID, 0–2 s when the peer did, so the two sides do not collide
/// again.
pub(super) fn glare_wait(dice: u64, we_own_call_id: bool) -> Duration {
    let tens = if we_own_call_id {
        210 + dice % 191
    } else {
        dice % 201
    };
    Duration::from_millis(tens * 10)
}

/// What our refreshes of one leg learned from its refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RefreshTries {
    /// Refusals in a row since the last 2xx.
    pub(super) failures: u32,
    /// 491s in a row since the last 2xx.
    pub(super) glares: u32,
    /// The largest `Min-SE` a 422 made us take: every refresh that follows
    /// carries it (RFC 4028 §7.4), so a proxy on the path that asked for
    /// it is not asked again with less.
    pub(super) min_se: u32,
}

impl Default for RefreshTries {
    fn default() -> Self {
        Self {
            failures: 0,
            glares: 0,
            min_se: session_timer::MIN_SE,
        }
    }
}

impl RefreshTries {
    /// How long until the next try after a transient refusal: 2 s, then
    /// twice as long after each refusal in a row, up to 64 s (a carrier
    /// answering 503 to everything is not asked every 2 s for hours).
    pub(super) fn retry_in(&mut self) -> Duration {
        let wait = REFRESH_RETRY * (1 << self.failures.min(5));
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// How long until the next try after a 491: RFC 3261 §14.1's random
    /// wait ([`glare_wait`]) for the first [`MAX_GLARES`] in a row; past
    /// them the far end is not in a glare but refusing, and the refusals'
    /// backoff applies (a peer answering 491 to everything is not asked
    /// every 2 s until the session expires).
    pub(super) fn glare_in(&mut self, dice: u64, we_own_call_id: bool) -> Duration {
        self.glares = self.glares.saturating_add(1);
        if self.glares > MAX_GLARES {
            self.retry_in()
        } else {
            glare_wait(dice, we_own_call_id)
        }
    }
}

impl Engine {
    /// A 2xx to our refresh whose Call-ID or To tag is not the dialog's:
    /// the session is renewed (the far end's proxy said yes) but neither
    /// its target nor its media are taken from it.
    /// A 2xx to a re-INVITE is still ACKed (kept, for its
    /// retransmissions), as the dialog it names, but never hung up: it
    /// carries the live call's Call-ID and our tag, and a stack matching
    /// dialogs on those would end the real call.
    pub(super) fn refresh_not_ours(&mut self, now: Instant, leg: &Leg, msg: &Message) {
        warn!("a refresh answer with another dialog's tags: nothing taken from it");
        self.metrics
            .sdp_rejected
            .with_label_values(&["refresh_foreign_dialog"])
            .inc();
        if msg.cseq_method == Method::Invite {
            let other = Leg::from_response(&leg.local, leg.flow, msg);
            self.send_ack_kept(now, &other, msg);
        }
    }

    /// The SDP answer in a 2xx to our refresh re-INVITE of `side` (on
    /// `flow`). We offered the same session, but a far end may answer
    /// from a new address (an SBC that moved its media): taken as a
    /// re-INVITE's offer would be, with the same checks, or the relay
    /// would go on sending where nothing listens. An answer without the
    /// law in use, or to an address we may not send to, changes nothing.
    pub(super) fn refresh_answer_media(
        &mut self,
        call_id: CallId,
        side: Side,
        flow: Flow,
        msg: &Message,
    ) {
        if msg.body.is_empty() || flow.transport == Transport::Browser {
            return;
        }
        let Ok(audio) = sdp::parse(&msg.body) else {
            return;
        };
        let addr = SocketAddr::new(audio.addr, audio.port);
        let refused = self.refused_media(addr, flow.remote.ip(), flow.local.ip());
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(current) = (match side {
            Side::A => Some(call.media.a),
            Side::B => call.media.b,
        }) else {
            return;
        };
        let held = audio.on_hold();
        if audio.port == 0
            || !audio.formats.contains(&current.law.payload_type())
            || refused.is_some()
        {
            debug!(?refused, "refresh answer's SDP not taken");
            self.metrics
                .sdp_rejected
                .with_label_values(&["refresh"])
                .inc();
            return;
        }
        let peer = Peer {
            addr,
            telephone_event: audio.telephone_event,
            ..current
        };
        let direction = audio.direction.answer();
        let was = match side {
            Side::A => call.media.a_direction,
            Side::B => call.media.b_direction,
        };
        if peer == current && direction == was {
            return;
        }
        // Our next offer on this leg differs when its direction or types
        // follow the far end's: then a new SDP version of this leg's.
        call.media.set_peer(side, peer, direction);
        info!(
            side = side.label(),
            held, "the far end changed its media in a refresh answer"
        );
        self.out.push_back(Output::Media(MediaCommand::Update {
            call: call_id,
            side,
            peer: peer.into(),
            held,
        }));
    }
}

/// What the answer to our session refresh of a leg means (RFC 4028 §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefreshAnswer {
    /// A 2xx renewed the session.
    Refreshed,
    /// Send the refresh again now (the label says why): 422 asked for a
    /// longer interval, or an UPDATE was refused as unknown (re-INVITE).
    Again(&'static str),
    /// 408 or 481: the session is gone.
    Gone,
    /// Anything else: again in [`REFRESH_RETRY`].
    Retry,
}

impl RefreshAnswer {
    /// The `outcome` label of `centralino_session_refreshes_total`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Refreshed => "refreshed",
            Self::Again(why) => why,
            Self::Gone => "gone",
            Self::Retry => "retry",
        }
    }
}

/// The longest session interval we keep (a day).
const MAX_SESSION: u32 = session_timer::MAX_SE;

/// Reads the answer to our refresh of a leg whose timer is `interval`
/// (seconds), updating it: a 2xx's `Session-Expires` may change the
/// interval and hand the refreshing over (in its answer `uas` is the
/// peer); 422 raises the interval to its `Min-SE`; an UPDATE refused
/// as unknown falls back to re-INVITE (`peer_update` cleared); `tries`
/// counts refusals in a row and keeps the largest `Min-SE` taken.
pub(super) fn refresh_answer(
    msg: &Message,
    interval: &mut Option<u32>,
    we_refresh: &mut bool,
    peer_update: &mut bool,
    tries: &mut RefreshTries,
) -> RefreshAnswer {
    match msg.code() {
        200..=299 => {
            tries.failures = 0;
            tries.glares = 0;
            if let Some(se) = session_timer::session_expires(msg) {
                *interval = Some(se.interval.clamp(session_timer::MIN_SE, MAX_SESSION));
                *we_refresh = se.refresher != Some(session_timer::Refresher::Uas);
            }
            RefreshAnswer::Refreshed
        }
        422 => {
            let min = msg
                .header("Min-SE")
                .and_then(|v| v.split(';').next()?.trim().parse::<u32>().ok())
                .unwrap_or(session_timer::MIN_SE);
            let now = interval.unwrap_or(session_timer::MIN_SE);
            let asked = now.max(min).min(MAX_SESSION);
            if asked <= now {
                // "Too small" without a larger Min-SE (or past a day):
                // asking again at once would only loop. Later, as for
                // any other refusal; the session's own expiry bounds it.
                return RefreshAnswer::Retry;
            }
            *interval = Some(asked);
            tries.min_se = tries.min_se.max(asked);
            RefreshAnswer::Again("too_small")
        }
        405 | 501 if *peer_update => {
            *peer_update = false;
            RefreshAnswer::Again("update_refused")
        }
        408 | 481 => RefreshAnswer::Gone,
        _ => RefreshAnswer::Retry,
    }
}
