//! Operators' transfers (REFER, RFC 3515), from a SIP phone or a browser
//! desktop. Blind to a queue: the caller leaves this operator and waits in
//! the target queue (of the call's own firm) as if waiting since they first
//! entered a queue, with the call record, the IVR's answers and the script
//! travelling to the next operator's offer. Only the operator who talks
//! the call may transfer it; a caller's REFER is refused (a citizen must
//! never make the node place a call). A number is dialled only when the
//! call's firm lists its prefix in `transfer_numbers` and its dial plan
//! lets it out; if it does not answer, the caller waits in their queue
//! again. A `Refer-To` with `Replaces` is an attended transfer (`consult`).
//! Any other target is refused.

use super::*;
use centralino_sip::replaces;

impl Engine {
    pub(super) fn on_refer(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let refused = |this: &mut Self, code: u16, reason: &'static str, target: &str| {
            let r = msg.response(code, reason, None);
            this.respond(now, key, &r);
            this.metrics
                .transfers
                .with_label_values(&[target, "refused"])
                .inc();
        };
        let Some((call_id, side)) = self.dialog_side(msg) else {
            return refused(self, 481, reason_phrase(481), "unknown");
        };
        // Only the operator talking to a caller of this node: not while a
        // callback's citizen is still being dialled, not on another node's
        // call (it goes back to its node, never into our queues).
        if self
            .calls
            .get(&call_id)
            .is_some_and(|c| c.rejoin.as_ref().is_some_and(|r| r.pending))
        {
            // Our re-INVITE moving this operator here is not answered yet.
            return refused(self, 491, reason_phrase(491), "unknown");
        }
        // An operator's consultation is no caller to pass on.
        let connected = self.calls.get(&call_id).is_some_and(|c| {
            c.phase == Phase::Connected
                && c.transfer.is_none()
                && !c.handed_over
                && c.consult.is_none()
                && c.outbound().is_none_or(|o| o.answered)
        });
        if side != Side::B || !connected {
            warn!(%call_id, side = side.label(), "REFER refused: only the operator talking to this node's caller transfers it");
            return refused(self, 403, "Forbidden", "unknown");
        }
        let refer_to: Vec<&str> = msg
            .headers_named("Refer-To")
            .flat_map(uri::split_list)
            .collect();
        let Some(to) = refer_to
            .first()
            .filter(|_| refer_to.len() == 1)
            .and_then(|v| uri::parse_name_addr(v))
        else {
            return refused(self, 400, "Bad Refer-To", "unknown");
        };
        if let Some(replaces) = replaces::embedded_header(to.uri, "Replaces") {
            // Attended: the operator's own consultation takes the caller.
            return self.attended_transfer(now, key, msg, call_id, &replaces);
        }
        if uri::has_headers(to.uri) {
            // Other embedded headers would be ours to put in a request we
            // never make for a blind transfer.
            return refused(self, 400, "Embedded Headers Not Supported", "unknown");
        }
        let scheme = uri::classify(to.uri);
        let user = match scheme {
            Some(Scheme::Sip | Scheme::Sips) => uri::user(to.uri).unwrap_or_default(),
            _ => "",
        };
        let tenant = self.calls.get(&call_id).map(|c| c.tenant);
        let queue = self.queue_ids.get(user).copied().filter(|q| {
            let p = &self.queues[q.0 as usize];
            !p.retired && Some(p.tenant) == tenant
        });
        // A colleague by name: one of the firm's operators.
        let named = self.agent_ids.get(user).copied().filter(|&a| {
            tenant.is_some_and(|t| self.router.agent(a).attributes.tenant == t.0 as u16)
        });
        if queue.is_none()
            && let Some(agent) = named
        {
            if self.router.agent(agent).state != AgentState::Available {
                // Busy, on a break or not logged in: the operator keeps the
                // caller (and may try a queue).
                return refused(self, 486, "Colleague Not Available", "operator");
            }
            let mut r = msg.response(202, "Accepted", None);
            if let Some(b) = self.calls.get(&call_id).and_then(|c| c.b.as_ref()) {
                r.push("Contact", &dialog::contact(b.flow));
            }
            self.respond(now, key, &r);
            self.transfer_to_operator(now, call_id, agent);
            return;
        }
        let Some(queue) = queue else {
            if let Some(number) = self.transfer_number(call_id, scheme, to.uri, user) {
                let mut r = msg.response(202, "Accepted", None);
                if let Some(b) = self.calls.get(&call_id).and_then(|c| c.b.as_ref()) {
                    r.push("Contact", &dialog::contact(b.flow));
                }
                self.respond(now, key, &r);
                self.transfer_to_number(now, call_id, &number);
                return;
            }
            let kind = if scheme == Some(Scheme::Tel)
                || (!user.is_empty()
                    && user
                        .trim_start_matches('+')
                        .chars()
                        .all(|c| c.is_ascii_digit()))
            {
                "external"
            } else {
                "unknown"
            };
            warn!(%call_id, target = kind, "REFER refused: the target is not a queue of the call's firm");
            return refused(self, 403, "Transfer Target Not Allowed", kind);
        };
        if !self.router.has_room(queue) {
            // Full: the operator keeps the caller (nobody is cut off by a
            // transfer).
            return refused(self, 503, "Target Queue Full", "queue");
        }
        let mut r = msg.response(202, "Accepted", None);
        if let Some(b) = self.calls.get(&call_id).and_then(|c| c.b.as_ref()) {
            r.push("Contact", &dialog::contact(b.flow));
        }
        self.respond(now, key, &r);
        self.transfer_to_queue(now, call_id, queue);
    }

    /// The number a REFER names, in E.164, when the call's firm lets its
    /// operators transfer there: a prefix of its `transfer_numbers`, its
    /// dial plan, and an outbound trunk of its own to leave through.
    fn transfer_number(
        &self,
        call_id: CallId,
        scheme: Option<Scheme>,
        target: &str,
        user: &str,
    ) -> Option<String> {
        let tenant = self.calls.get(&call_id)?.tenant;
        let prefixes = self.transfer_numbers.get(tenant.index())?;
        if prefixes.is_empty() {
            return None;
        }
        let raw = match scheme {
            Some(Scheme::Tel) => {
                let mut parts = target.strip_prefix("tel:")?.split(';');
                let number = parts.next()?.replace(['-', '.', '(', ')'], "");
                // A local number of another context (RFC 3966
                // `phone-context`) is not the national number it looks
                // like: refused rather than guessed.
                if !number.starts_with('+')
                    && parts.any(|p| p.trim().to_ascii_lowercase().starts_with("phone-context="))
                {
                    return None;
                }
                number
            }
            _ => user.to_owned(),
        };
        let number = self.dialable(tenant, &raw, "operator_transfer")?;
        let allowed = prefixes.iter().any(|p| number.starts_with(p.as_str()))
            && self.trunks.iter().any(|t| t.dials_for(tenant));
        allowed.then_some(number)
    }

    /// The operator's leg ends (NOTIFY, BYE, wrap-up) and the caller is
    /// put through to `number` (the IVR transfer's leg); unanswered, they
    /// wait in their queue again.
    fn transfer_to_number(&mut self, now: Instant, call_id: CallId, number: &str) {
        let Some((by, spec)) = self.release_transferor(now, call_id) else {
            return;
        };
        info!(by = ?by, number = %Masked(number), "operator transferred the call to a number");
        self.metrics
            .transfers
            .with_label_values(&["external", "done"])
            .inc();
        self.queue_event(now, call_id, QueueEvent::Transfer, by);
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.spec = Arc::new(spec.clone());
        }
        // The queue's music while the number rings.
        if let Some(call) = self.calls.get(&call_id) {
            let music = self.queues[call.queue.0 as usize].music.clone();
            self.out.push_back(Output::Media(MediaCommand::Play {
                call: call_id,
                prompts: Vec::new(),
                music,
            }));
        }
        if self.start_transfer(now, call_id, number) {
            if let Some(t) = self
                .calls
                .get_mut(&call_id)
                .and_then(|c| c.transfer.as_mut())
            {
                t.by_operator = true;
            }
        } else {
            let queue = self.calls.get(&call_id).map(|c| c.queue);
            if let Some(queue) = queue {
                self.enter_queue(now, call_id, queue, &spec);
            }
        }
    }

    /// Takes the transferring operator off the call: NOTIFY of success and
    /// BYE on their leg, wrap-up for them, their talk kept for the record.
    /// Returns who they were and the call's spec with its wait so far.
    pub(super) fn release_transferor(
        &mut self,
        now: Instant,
        call_id: CallId,
    ) -> Option<(Option<String>, CallSpec)> {
        let call = self.calls.get_mut(&call_id)?;
        let _span = call.span.clone().entered();
        let talked = call
            .connected
            .as_ref()
            .map_or(Duration::ZERO, |(t, _)| now.saturating_duration_since(*t));
        let (mut b, by, spec) = self.detach_operator(now, call_id)?;
        if let Some(call) = self.calls.get_mut(&call_id) {
            let t = call
                .transferred
                .get_or_insert_with(|| (by.clone().unwrap_or_default(), Duration::ZERO));
            t.1 += talked;
        }
        if let Some(mut leg) = b.dialog.take() {
            leg.cseq += 1;
            let mut notify = self.in_dialog(&leg, Method::Notify);
            notify.push("Contact", &dialog::contact(leg.flow));
            notify.push("Event", "refer");
            notify.push("Subscription-State", "terminated;reason=noresource");
            notify.set_body(
                Some("message/sipfrag;version=2.0"),
                b"SIP/2.0 200 OK\r\n".to_vec(),
            );
            self.send_request(now, leg.flow, notify, ClientRef::Other);
            self.send_bye(now, &mut leg);
        }
        if let Some(agent) = b.agent() {
            self.router.call_ended(now, agent, call_id);
            self.agent_released(agent);
        }
        Some((by, spec))
    }

    /// The operator's leg ends (NOTIFY, BYE, wrap-up) and the colleague
    /// `agent` is rung for the caller, who hears the queue's music; not
    /// answered (or taken meanwhile), the caller waits in their queue
    /// again with their wait.
    fn transfer_to_operator(&mut self, now: Instant, call_id: CallId, agent: AgentId) {
        let Some((by, spec)) = self.release_transferor(now, call_id) else {
            return;
        };
        let name = self.router.agent(agent).name.clone();
        info!(by = ?by, to = %name, "operator transferred the call to a colleague");
        self.metrics
            .transfers
            .with_label_values(&["operator", "done"])
            .inc();
        self.queue_event(now, call_id, QueueEvent::Transfer, by);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.spec = Arc::new(spec.clone());
        let queue = call.queue;
        let music = self.queues[queue.0 as usize].music.clone();
        self.out.push_back(Output::Media(MediaCommand::Play {
            call: call_id,
            prompts: Vec::new(),
            music,
        }));
        if self.router.reserve_named(now, agent, call_id, queue) {
            if let Some(call) = self.calls.get_mut(&call_id) {
                call.named = Some(agent);
                call.phase = Phase::Queued;
            }
        } else {
            self.enter_queue(now, call_id, queue, &spec);
        }
    }

    /// A colleague rung by name did not take the call: it waits in its
    /// queue again, with its wait.
    pub(super) fn named_failed(&mut self, now: Instant, call_id: CallId, agent: AgentId) {
        let Some(call) = self
            .calls
            .get_mut(&call_id)
            .filter(|c| c.named == Some(agent) && c.phase != Phase::Connected)
        else {
            return;
        };
        call.named = None;
        if call.consult.is_some() {
            // A consultation of a colleague who did not take it: over.
            self.end_unanswered(now, call_id, 480, CallOutcome::NoAnswer, false);
            return;
        }
        let queue = call.queue;
        let spec = (*call.spec).clone();
        info!("the colleague named did not answer: the caller waits in the queue again");
        self.enter_queue(now, call_id, queue, &spec);
    }

    /// The operator's leg ends (NOTIFY of success, then BYE); the caller
    /// goes to `queue` keeping the time waited so far; the operator to
    /// wrap-up, as at the end of any call.
    fn transfer_to_queue(&mut self, now: Instant, call_id: CallId, queue: QueueId) {
        let Some((by, spec)) = self.release_transferor(now, call_id) else {
            return;
        };
        let target = self.router.queue(queue).name.clone();
        info!(by = ?by, queue = %target, "operator transferred the call to a queue");
        self.metrics
            .transfers
            .with_label_values(&["queue", "done"])
            .inc();
        self.metrics
            .calls_requeued
            .with_label_values(&["transfer"])
            .inc();
        self.queue_event(now, call_id, QueueEvent::Transfer, by);
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.queue = queue;
            // A second transfer counts the wait from the first queue too.
            call.spec = Arc::new(spec.clone());
        }
        self.enter_queue(now, call_id, queue, &spec);
    }
}
