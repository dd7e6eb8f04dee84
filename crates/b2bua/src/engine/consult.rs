//! Attended transfer from an operator's SIP phone (RFC 5589 §7): while
//! talking to a caller, the operator calls a queue of their own firm from
//! the same account (a consultation: challenged by digest, routed as any
//! call, so the colleague who answers gets the caller's requirements), then
//! sends a REFER on the caller's dialog whose `Refer-To` carries
//! `Replaces` (RFC 3891) naming the consultation. The node, which anchors
//! both calls, hands the consulted operator's leg to the caller's call: a
//! re-INVITE moves their media to the caller's operator port, the
//! transferring operator gets NOTIFY and BYE on both dialogs and goes to
//! wrap-up. Nothing is dialled anywhere: only a consultation of the same
//! operator, about the same call, named by its Call-ID and both tags, can
//! be joined to a caller.

use super::*;
use centralino_sip::registrar::Auth;
use centralino_sip::replaces;

use super::dialogs::tag_of;

/// What a consultation calls: a queue of the firm, or a colleague by
/// name.
#[derive(Clone, Copy, Debug)]
pub(super) enum ConsultTo {
    Queue(QueueId),
    Colleague(AgentId),
}

/// A consultation that may start.
pub(super) struct ConsultStart {
    pub(super) queue: QueueId,
    pub(super) spec: Arc<CallSpec>,
    pub(super) tenant: TenantId,
    pub(super) consult: Consult,
    /// The colleague named, rung directly.
    pub(super) named: Option<AgentId>,
}

impl Engine {
    /// What an INVITE calls when it can only be an operator's
    /// consultation: no trunk's DID from a trunk's address, no other
    /// node's handover, and a queue's or an operator's name as the
    /// Request-URI's user. Who sends it is proven by digest in
    /// [`Self::consult_admit`].
    pub(super) fn consult_queue(&self, flow: Flow, msg: &Message) -> Option<ConsultTo> {
        let source = flow.remote.ip();
        if self.handover_for(source, msg).is_some()
            || self.inbound_by_address(source, msg).is_some()
        {
            return None;
        }
        let user = uri::user(msg.request_uri()?)?;
        let to = match self
            .queue_ids
            .get(user)
            .copied()
            .filter(|q| !self.queues[q.0 as usize].retired)
        {
            Some(q) => ConsultTo::Queue(q),
            None => ConsultTo::Colleague(*self.agent_ids.get(user)?),
        };
        // Only from where the named operator's phone is registered: a
        // carrier's address or a stranger gets no challenge (and no
        // transaction), as before consultations existed.
        let from = msg
            .header("From")
            .and_then(uri::parse_name_addr)
            .and_then(|n| uri::user(n.uri))?;
        self.registrar
            .bindings(from)
            .iter()
            .any(|b| b.flow.remote.ip() == source)
            .then_some(to)
    }

    /// Challenges a consultation's INVITE and checks it: an operator of
    /// the queue's firm, talking to a caller of this node, with no other
    /// consultation. Answers the INVITE itself when it is refused.
    pub(super) fn consult_admit(
        &mut self,
        now: Instant,
        flow: Flow,
        msg: &Message,
        to: ConsultTo,
    ) -> Option<ConsultStart> {
        let key = TxKey::of(msg);
        let refuse = |this: &mut Self, code: u16, reason: &'static str| {
            this.metrics.sip_rejected.with_label_values(&[reason]).inc();
            let r = msg.response(code, reason_phrase(code), Some("cons"));
            this.respond(now, &key, &r);
        };
        let from = msg
            .header("From")
            .and_then(uri::parse_name_addr)
            .and_then(|n| uri::user(n.uri).map(str::to_owned))
            .unwrap_or_default();
        // The registrar's digest and throttle, as for a supervisor's phone;
        // a browser desk's gateway speaks for the operator its session
        // logged in (its flow is only ever made in the process, and
        // `consult_queue` found the operator's binding on it).
        let auth = if flow.transport == Transport::Browser {
            Auth::Ok(from.clone())
        } else {
            self.registrar.authenticate(now, flow, msg, &from)
        };
        let user = match auth {
            Auth::Ok(user) => user,
            Auth::Challenge(r) => {
                self.respond(now, &key, &r);
                return None;
            }
            Auth::Refused => {
                warn!(peer = %flow.remote.ip(), "a consultation with wrong credentials refused");
                refuse(self, 403, "consult_auth_failed");
                self.publish_bans();
                return None;
            }
            Auth::Malformed => {
                refuse(self, 400, "malformed_authorization");
                return None;
            }
        };
        if self.by_a.contains_key(msg.call_id.as_str())
            || self.by_b.contains_key(msg.call_id.as_str())
            || self.phone_monitors.contains_key(msg.call_id.as_str())
        {
            // Its requests would speak for another dialog.
            refuse(self, 482, "consult_call_id_in_use");
            return None;
        }
        let Some(&agent) = self.agent_ids.get(&user) else {
            warn!(user = %user, "a consultation from an account that is no operator's refused");
            refuse(self, 403, "consult_not_operator");
            return None;
        };
        let firm = self.router.agent(agent).attributes.tenant;
        let same_firm = match to {
            ConsultTo::Queue(q) => self.queues[q.0 as usize].tenant.0 as u16 == firm,
            ConsultTo::Colleague(b) => b != agent && self.router.agent(b).attributes.tenant == firm,
        };
        if !same_firm {
            // Another firm's queue or operator is as unknown as a missing
            // one.
            refuse(self, 404, "consult_unknown_target");
            return None;
        }

        let about = match self.router.agent(agent).state {
            AgentState::OnCall(c) => Some(c),
            _ => None,
        }
        .filter(|c| {
            self.calls.get(c).is_some_and(|call| {
                call.phase == Phase::Connected
                    && call.consult.is_none()
                    && call.tenant.0 as u16 == firm
                    && call.transfer.is_none()
                    && !call.handed_over
                    && call.b.as_ref().and_then(BLeg::agent) == Some(agent)
            })
        });
        let Some(about) = about else {
            // A consultation is about the caller on the line: without one
            // a phone account cannot make the node ring colleagues.
            warn!(user = %user, "a consultation from an operator not talking to a caller refused");
            refuse(self, 403, "consult_not_talking");
            return None;
        };
        // Rare (one per transfer): a scan keeps no second index in step.
        if self
            .calls
            .values()
            .any(|c| c.consult.is_some_and(|k| k.by == agent))
        {
            refuse(self, 486, "consult_busy");
            return None;
        }
        let (queue, named) = match to {
            ConsultTo::Queue(q) => (q, None),
            ConsultTo::Colleague(b) => (self.calls.get(&about)?.queue, Some(b)),
        };
        if named.is_some_and(|b| self.router.agent(b).state != AgentState::Available) {
            refuse(self, 486, "consult_colleague_busy");
            return None;
        }
        if named.is_none() && !self.router.has_room(queue) {
            refuse(self, 503, "consult_queue_full");
            return None;
        }
        let tenant = self.calls.get(&about)?.tenant;
        let spec = self.calls.get(&about)?.spec.clone();
        match named {
            Some(b) => {
                info!(user = %user, colleague = %self.router.agent(b).name, "operator consults a colleague");
            }
            None => {
                info!(user = %user, queue = %self.router.queue(queue).name, "operator consults a queue");
            }
        }
        Some(ConsultStart {
            queue,
            spec,
            tenant,
            consult: Consult { by: agent, about },
            named,
        })
    }

    /// A consultation naming a colleague, its ports held: the consulting
    /// operator hears `queue`'s music while the colleague's phone rings;
    /// not available any more, `486`.
    pub(super) fn consult_ring(
        &mut self,
        now: Instant,
        id: CallId,
        queue: QueueId,
        agent: AgentId,
    ) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.queue = queue;
            call.enqueued = now;
            call.phase = Phase::Queued;
        }
        self.queue_music(now, id, queue);
        if !self.router.reserve_named(now, agent, id, queue) {
            if let Some(call) = self.calls.get_mut(&id) {
                call.named = None;
            }
            self.end_unanswered(now, id, 486, CallOutcome::Busy, false);
        }
    }

    /// A REFER whose `Refer-To` carries `Replaces` on the call `x` (its
    /// sender is the operator talking on it: `on_refer` checked). The
    /// consultation named must be that operator's, about `x`, answered by
    /// one of this node's SIP operators.
    pub(super) fn attended_transfer(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        x: CallId,
        value: &str,
    ) {
        let refused = |this: &mut Self, code: u16, reason: &'static str, why: &'static str| {
            warn!(call_id = %x, why, "attended transfer refused");
            let r = msg.response(code, reason, None);
            this.respond(now, key, &r);
            this.metrics
                .transfers
                .with_label_values(&["operator", "refused"])
                .inc();
        };
        let Some(rep) = replaces::parse(value) else {
            return refused(self, 400, "Bad Replaces", "malformed");
        };
        let by = self
            .calls
            .get(&x)
            .and_then(|c| c.b.as_ref())
            .and_then(BLeg::agent);
        let y = self.by_a.get(rep.call_id.as_str()).copied().filter(|y| {
            self.calls.get(y).is_some_and(|c| {
                by.is_some_and(|by| c.consult == Some(Consult { by, about: x }))
                    && tag_of(&c.a_leg.local) == Some(rep.to_tag.as_str())
                    && tag_of(&c.a_leg.remote) == Some(rep.from_tag.as_str())
            })
        });
        // Unknown, another's, or named with the wrong tags: all alike.
        let Some(y) = y else {
            return refused(
                self,
                403,
                "Transfer Target Not Allowed",
                "not_own_consultation",
            );
        };
        let ready = self.calls.get(&y).is_some_and(|c| {
            c.phase == Phase::Connected
                && c.answered()
                && c.b.as_ref().is_some_and(|b| {
                    b.dialog.is_some()
                        && b.agent()
                            .is_some_and(|a| self.router.agent(a).state == AgentState::OnCall(y))
                })
        }) && by.is_some_and(|a| self.router.agent(a).state == AgentState::OnCall(x));
        if rep.early_only || !ready {
            // Not answered yet: the operator keeps both calls.
            return refused(self, 403, "Consultation Not Transferable", "not_answered");
        }
        let mut r = msg.response(202, "Accepted", None);
        if let Some(b) = self.calls.get(&x).and_then(|c| c.b.as_ref()) {
            r.push("Contact", &dialog::contact(b.flow));
        }
        self.respond(now, key, &r);
        // The consulted operator leaves the consultation, dialog and all.
        let Some(yc) = self.calls.get_mut(&y) else {
            return;
        };
        let Some(leg) = yc.b.take() else {
            return;
        };
        let (y_queue, b_peer, b_session, y_sent, y_info) = (
            yc.queue,
            yc.media.b,
            yc.media.b_session,
            yc.media.sent[Side::B.index()],
            yc.b_info,
        );
        yc.monitor = None;
        self.end_phone_monitor(now, y);
        // The transferring operator leaves the caller (NOTIFY, BYE,
        // wrap-up), the caller's wait and talk kept for the record.
        let Some((by_name, _)) = self.release_transferor(now, x) else {
            return;
        };
        self.queue_event(now, x, QueueEvent::Transfer, by_name);
        let agent = leg.agent().expect("checked: this node's operator");
        let name = self.router.agent(agent).name.clone();
        self.router.move_call(agent, y, x);
        self.by_b.insert(leg.call_id.clone(), x);
        let Some(xc) = self.calls.get_mut(&x) else {
            return;
        };
        // The caller enters the consulted queue and is answered there at
        // once (as a blind transfer's caller would be, later): its figures
        // count the call as offered and answered.
        xc.queue = y_queue;
        xc.enqueued = now;
        xc.phase = Phase::Connected;
        xc.connected = Some((now, name.clone()));
        let media = &mut xc.media;
        media.b = b_peer;
        media.b_direction = Direction::SendRecv;
        media.b_session = b_session;
        // The colleague's leg goes on in its own session: the offer that
        // moves it to this call's port is its next version.
        media.sent[Side::B.index()] = y_sent;
        // Whether the colleague's phone takes INFO, as its own answer said.
        xc.b_info = y_info;
        xc.info_off[Side::B.index()] = false;
        let record = self.queues[y_queue.0 as usize].record;
        // A phone's address is bridged at once. A browser's WebRTC leg
        // lives on the consultation's port: its desk makes a new one on
        // the caller's operator port when our re-INVITE names it, and the
        // bridge follows its answer (the caller hears the queue's music
        // meanwhile, as the transferor's leg went at its release).
        if let Some(peer) = b_peer.filter(|_| leg.flow.transport != Transport::Browser) {
            self.out.push_back(Output::Media(MediaCommand::Bridge {
                call: x,
                b: peer.into(),
                record,
            }));
        }
        // A 2xx of their first INVITE repeated now (our ACK lost) is the
        // caller's call's to acknowledge.
        if self.client.contains_key(&leg.invite_key) {
            self.client
                .insert(leg.invite_key.clone(), ClientRef::BInvite(x));
        }
        let Some(xc) = self.calls.get_mut(&x) else {
            return;
        };
        xc.b = Some(leg);
        if let Some(old) = xc.rejoin.take() {
            self.client.remove(&old.key);
        }
        self.send_rejoin(now, x);
        info!(agent = %name, "attended transfer: the consulted operator takes the caller");
        self.metrics
            .transfers
            .with_label_values(&["operator", "done"])
            .inc();
        self.visit_started(now, x, y_queue);
        self.visit_answered(now, x, Duration::ZERO);
        self.queue_event(now, x, QueueEvent::Enter, None);
        self.queue_event(now, x, QueueEvent::Connect, Some(name.clone()));
        if let Some(c) = self.calls.get(&x) {
            let desk = self.desk(c, DeskState::Connected);
            self.out.push_back(Output::AgentCall {
                agent: name,
                info: Some(desk),
            });
        }
        // The consultation is over: its caller (the transferring operator's
        // phone) gets BYE; its record says how it ended.
        self.end_connected(now, y, true, false, CallOutcome::ConsultTransferred);
    }

    /// Our re-INVITE to the colleague now on `x`: the caller's operator
    /// port, in the law they already speak, the same `o=` session.
    pub(super) fn send_rejoin(&mut self, now: Instant, x: CallId) {
        let Some(call) = self.calls.get_mut(&x) else {
            return;
        };
        let media = &mut call.media;
        let offer = media.b.map(|p| {
            let formats = [p.law.payload_type()];
            let local = Local {
                addr: media.sdp_ip,
                port: media.b_port,
                formats: &formats,
                telephone_event: p.telephone_event,
                direction: Direction::SendRecv,
                session: media.b_session,
                version: 0,
            };
            stamped(media, Side::B, local)
        });
        let attempt = call.rejoin.as_ref().map_or(0, |r| r.attempt);
        let Some(b) = call.b.as_mut() else {
            return;
        };
        let Some(dialog) = b.dialog.as_mut() else {
            return;
        };
        dialog.cseq += 1;
        let (dialog, flow, leg) = (dialog.clone(), b.flow, b.call_id.clone());
        let mut invite = self.in_dialog(&dialog, Method::Invite);
        invite.push("Contact", &dialog::contact(flow));
        if let Some(offer) = offer {
            invite.set_body(Some("application/sdp"), offer);
        }
        let key = TxKey::of(&invite);
        self.send_request(now, flow, invite, ClientRef::Rejoin(x, leg));
        if let Some(call) = self.calls.get_mut(&x) {
            call.rejoin = Some(Rejoin {
                key,
                pending: true,
                attempt,
            });
        }
    }

    /// Whether `key` is the re-INVITE of the colleague still on `x`.
    pub(super) fn rejoin_current(&self, x: CallId, leg: &str, key: &TxKey) -> bool {
        self.calls.get(&x).is_some_and(|c| {
            c.b.as_ref().is_some_and(|b| b.call_id == leg)
                && c.rejoin.as_ref().is_some_and(|r| r.key == *key)
        })
    }

    /// The colleague's phone answered our re-INVITE: a 2xx is acknowledged
    /// (again, if repeated) and its media taken; a glare (`491`) is tried
    /// again after 2.1 to 4 s (RFC 3261 §14.1), three times; any other
    /// refusal leaves them unreachable on the caller's port, so the caller
    /// goes back to the queue ahead of later callers, as with an
    /// operator's dead phone. An answer for a colleague no longer on the
    /// call changes nothing.
    pub(super) fn on_rejoin_response(
        &mut self,
        now: Instant,
        x: CallId,
        leg: &str,
        key: &TxKey,
        msg: &Message,
    ) {
        if !self.rejoin_current(x, leg, key) {
            self.client.remove(key);
            return;
        }
        let Some(call) = self.calls.get(&x) else {
            return;
        };
        let _span = call.span.clone().entered();
        let pending = call.rejoin.as_ref().is_some_and(|r| r.pending);
        let Some(b) = call.b.as_ref() else {
            return;
        };
        let (flow, dialog) = (b.flow, b.dialog.clone());
        let law = call.media.b.map(|p| p.law);
        let code = msg.code();
        if (200..300).contains(&code)
            && let Some(dialog) = dialog
        {
            self.send_ack(&dialog, msg);
            if !pending {
                return;
            }
            // A browser's answer is its gateway's, naming the caller's
            // operator port, where the plane now ends its new WebRTC leg.
            let browser = flow.transport == Transport::Browser;
            let answer = law
                .and_then(|law| b_answer(msg, &[law], flow.remote.ip()))
                .map(|(p, d)| (Peer { browser, ..p }, d))
                .filter(|(p, _)| {
                    browser
                        || self
                            .refused_media(p.addr, flow.remote.ip(), flow.local.ip())
                            .is_none()
                });
            if let Some((peer, direction)) = answer
                && let Some(call) = self.calls.get_mut(&x)
            {
                if let Some(r) = call.rejoin.as_mut() {
                    r.pending = false;
                }
                // Our next SDP follows the answer's direction (a new
                // version when that changes it).
                call.media.set_peer(Side::B, peer, direction);
                call.info_off[Side::B.index()] = false;
                let record = self.queues[call.queue.0 as usize].record;
                if browser {
                    // Not bridged at the transfer (see `attended_transfer`).
                    self.out.push_back(Output::Media(MediaCommand::Bridge {
                        call: x,
                        b: peer.into(),
                        record,
                    }));
                }
                // The answer's direction, a colleague holding their
                // consultation included (a bridge starts unheld).
                self.out.push_back(Output::Media(MediaCommand::Update {
                    call: x,
                    side: Side::B,
                    peer: peer.into(),
                    held: direction != Direction::SendRecv,
                }));
                return;
            }
        }
        self.client.remove(key);
        if !pending {
            return;
        }
        if code == 491
            && let Some(r) = self.calls.get_mut(&x).and_then(|c| c.rejoin.as_mut())
            && r.attempt < 3
        {
            r.attempt += 1;
            let attempt = r.attempt;
            let wait = Duration::from_millis(2_100 + u64::from(self.rng.next_u32() % 1_900));
            self.timers
                .push(Reverse((now + wait, x, CallTimer::Rejoin(attempt))));
            return;
        }
        warn!(
            code,
            "the consulted operator's phone refused the caller's media: the caller waits again"
        );
        self.rejoin_failed(now, x);
    }

    /// The consulted operator cannot be moved onto the caller's port.
    pub(super) fn rejoin_failed(&mut self, now: Instant, x: CallId) {
        self.metrics
            .transfers
            .with_label_values(&["operator", "failed"])
            .inc();
        if !self.requeue_after_operator_loss(now, x) {
            self.end_connected(now, x, true, true, CallOutcome::MediaFailed);
        }
    }
}
