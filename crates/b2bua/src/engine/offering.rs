//! Offering a waiting call to operators: the operator's INVITE (one, or
//! several forks for ring-all and an operator's several phones), its
//! answers, CANCELs, and a call that goes back to its queue when an offer
//! fails.

use super::*;

impl Engine {
    /// Offers a call to an operator: every phone they registered (a desk
    /// phone and a softphone) rings at once, one B-leg each; the first to
    /// answer takes it, the others get CANCEL. The offer fails only when
    /// every phone has failed, or at the ring timeout.
    pub(super) fn invite_operator(&mut self, now: Instant, call_id: CallId, agent: AgentId) {
        let _span = self.call_span(call_id).entered();
        let name = self.router.agent(agent).name.clone();
        let bindings = self.registrar.bindings(&name).to_vec();
        if bindings.is_empty() {
            // Registered state and bindings disagree: log the operator out
            // and put the call back (off their desk, waiting again).
            self.router.logout(agent);
            self.agent_released(agent);
            if let Some(call) = self.calls.get_mut(&call_id)
                && call.forks.is_empty()
            {
                call.phase = Phase::Queued;
            }
            self.offer_failed(now, call_id, agent, OfferOutcome::Rejected);
            return;
        }
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let desk = self.desk(call, DeskState::Offered);
        let queue = call.queue;
        self.out.push_back(Output::AgentCall {
            agent: name.clone(),
            info: Some(desk),
        });
        let attempt = call.attempt + 1;
        if let Some(call) = self.calls.get_mut(&call_id) {
            // Exactly the phones rung: `push` would start at four legs, an
            // allocation large enough to make glibc consolidate its free
            // lists (`malloc_consolidate`, seen in the engine's profile).
            call.forks.reserve_exact(bindings.len());
        }
        for binding in &bindings {
            let flow = self.binding_flow(binding);
            let Some((inv, b_call_id, local)) = self.operator_invite(
                call_id,
                &binding.contact,
                &format!("<{}>", binding.contact),
                flow,
                &binding.path,
            ) else {
                return;
            };
            let key = self.send_request(now, flow, inv, ClientRef::BInvite(call_id));
            self.by_b.insert(b_call_id.clone(), call_id);
            let call = self.calls.get_mut(&call_id).expect("checked above");
            call.forks.push(BLeg {
                op: Operator::Local(agent),
                attempt,
                invite_key: key,
                call_id: b_call_id,
                local,
                flow,
                state: BState::Calling,
                dialog: None,
            });
        }
        let ring = self.router.queue(queue).ring_timeout;
        let call = self.calls.get_mut(&call_id).expect("checked above");
        call.phase = Phase::Offering;
        call.attempt = attempt;
        // Offered as it entered the queue (an operator was free): the
        // node's own dispatch latency.
        if attempt == 1 && call.enqueued == now && call.outbound().is_none() {
            self.metrics
                .dispatch
                .observe(now.saturating_duration_since(call.received).as_secs_f64());
        }
        debug!(agent = %name, phones = bindings.len(), "offering call");
        self.timers
            .push(Reverse((now + ring, call_id, CallTimer::Ring(attempt))));
        self.queue_event(now, call_id, QueueEvent::Offer, Some(name));
    }

    /// The INVITE that offers `call_id` to one phone (or to another
    /// node's hand-over URI): the caller as the operator may see them,
    /// the call record id, the script, the IVR's answers, our SDP offer.
    /// Returns it with its Call-ID and our From.
    pub(super) fn operator_invite(
        &mut self,
        call_id: CallId,
        request_uri: &str,
        to: &str,
        flow: Flow,
        path: &[String],
    ) -> Option<(Message, String, String)> {
        let via = self.via(flow);
        let b_call_id = self.token() + "@centralino";
        let b_tag = self.token();
        let call = self.calls.get(&call_id)?;
        let local = if call.private {
            [
                "\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=",
                &b_tag,
            ]
            .concat()
        } else {
            // The Via's text of our address (made once per address).
            ["<sip:", &call.caller, "@", &via.sent_by, ">;tag=", &b_tag].concat()
        };
        let mut inv =
            Message::new_request(Method::Invite, request_uri, via, &local, to, &b_call_id, 1);
        // Through the edge proxies it registered through (RFC 3327);
        // the flow is still the one the REGISTER came on (the first
        // of them), so a Path names nobody we would not send to.
        for r in path {
            inv.push("Route", r);
        }
        inv.push("Contact", &dialog::contact(flow));
        inv.push_shared("User-Agent", self.user_agent.clone());
        // The call record id (operator answers are stored against it)
        // and the queue's operator script, for the operator's desktop.
        inv.push("X-Centralino-Call", &call.record_id);
        match call.outbound().map(|o| (&o.id, &o.campaign)) {
            // A campaign's call: the operator's phone shows which.
            Some((_, Some(c))) => inv.push("X-Centralino-Campaign", &c.name),
            // A callback: the operator's phone shows it before
            // answering (the citizen is dialled after the answer).
            Some((id, None)) => inv.push("X-Centralino-Callback", id),
            // A campaign's contact calling its number back.
            None => {
                if let Some(k) = &call.known {
                    inv.push("X-Centralino-Campaign", &k.campaign);
                }
            }
        }
        // A campaign's own script over its queue's.
        if let Some(script) = call
            .outbound()
            .and_then(|o| o.campaign.as_ref()?.script.as_ref())
            .or(self.queues[call.queue.0 as usize].script.as_ref())
        {
            inv.push("X-Centralino-Script", script);
        }
        // What the caller chose and answered in the IVR travels with
        // the offer, for the operator's phone or desktop to show.
        if let Some(run) = &call.run {
            inv.push("X-Centralino-Flow", run.flow());
            for (name, value) in run.variables.iter().take(MAX_VARIABLE_HEADERS) {
                inv.push("X-Centralino-Var", &format!("{name}={value}"));
            }
        }
        // Disjoint fields: the call's media and the node's laws.
        let media = &mut self.calls.get_mut(&call_id)?.media;
        inv.set_body(Some("application/sdp"), b_offer(media, &self.codecs));
        Some((inv, b_call_id, local))
    }

    /// A phone of `agent` is out of the offer (it refused, failed, timed
    /// out): the offer fails only once none of their phones rings.
    pub(super) fn fork_gone(
        &mut self,
        now: Instant,
        call_id: CallId,
        agent: AgentId,
        outcome: OfferOutcome,
    ) {
        let still_ringing = self
            .calls
            .get(&call_id)
            .is_some_and(|c| c.forks.iter().any(|b| b.agent() == Some(agent)));
        if still_ringing {
            return;
        }
        self.agent_released(agent);
        self.offer_failed(now, call_id, agent, outcome);
    }

    pub(super) fn on_response(&mut self, now: Instant, key: TxKey, msg: Box<Message>) {
        let code = msg.code();
        match self.client.get(&key) {
            Some(ClientRef::BInvite(call)) => {
                let call = *call;
                self.on_b_invite_response(now, key, call, msg);
            }
            Some(ClientRef::Orphan { local, flow }) => {
                if (200..300).contains(&code) {
                    // The operator answered after we gave up: ACK and hang up.
                    let (local, flow) = (local.clone(), *flow);
                    let mut leg = Leg::from_response(&local, flow, &msg);
                    self.send_ack(&leg, &msg);
                    self.send_bye(now, &mut leg);
                }
                if code >= 200 {
                    self.client.remove(&key);
                }
            }
            Some(ClientRef::Citizen(call)) => {
                let call = *call;
                self.on_citizen_response(now, key, call, &msg);
            }
            Some(ClientRef::InfoRelay(call, to, dialog)) => {
                let (call, to, dialog) = (*call, *to, dialog.clone());
                if code >= 200 {
                    self.client.remove(&key);
                    self.info_relay_answered(call, to, &dialog, Some(code));
                }
            }
            Some(ClientRef::Transfer(call)) => {
                let call = *call;
                self.on_transfer_response(now, key, call, &msg);
            }
            Some(ClientRef::TrunkPing(trunk)) => {
                let trunk = *trunk;
                if code >= 200 {
                    self.client.remove(&key);
                    self.trunk_seen(trunk, true);
                }
            }
            Some(ClientRef::Refresh(call)) => {
                let call = *call;
                if code >= 200 {
                    self.client.remove(&key);
                    self.on_refresh_response(now, call, &msg);
                }
            }
            Some(ClientRef::TransferRefresh(call)) => {
                let call = *call;
                if code >= 200 {
                    self.client.remove(&key);
                    self.on_transfer_refresh_response(now, call, &msg);
                }
            }
            Some(ClientRef::Rejoin(call, leg)) => {
                let (call, leg) = (*call, leg.clone());
                if code >= 200 {
                    self.on_rejoin_response(now, call, &leg, &key, &msg);
                }
            }
            // A retransmitted 2xx whose transaction we forgot at the first:
            // our ACK was lost.
            None if (200..300).contains(&code) && key.method == Method::Invite => {
                self.reack(now, &msg);
            }
            // Any answer, even 405 or 404, says the phone is there.
            Some(ClientRef::Other | ClientRef::Qualify(_)) | None => {
                if code >= 200 {
                    self.client.remove(&key);
                }
            }
        }
    }

    pub(super) fn on_b_invite_response(
        &mut self,
        now: Instant,
        key: TxKey,
        call_id: CallId,
        msg: Box<Message>,
    ) {
        let _span = self.call_span(call_id).entered();
        let code = msg.code();
        // An answer we can use: a common codec, audio, and an address we
        // may send to.
        let fork_flow = self
            .calls
            .get(&call_id)
            .and_then(|c| c.forks.iter().find(|b| b.invite_key == key))
            .map(|b| b.flow);
        let usable_answer = (200..300).contains(&code)
            && fork_flow.is_some_and(|f| {
                b_answer(&msg, &self.codecs, f.remote.ip()).is_some_and(|(p, _)| {
                    // A browser's answer names the call's own operator
                    // port: the node's gateway ends its WebRTC leg there.
                    f.transport == Transport::Browser
                        || self
                            .refused_media(p.addr, f.remote.ip(), f.local.ip())
                            .is_none()
                })
            });
        let Some(call) = self.calls.get_mut(&call_id) else {
            self.client.remove(&key);
            return;
        };
        if let Some(b) = call.b.as_ref().filter(|b| b.invite_key == key) {
            // A retransmitted 2xx of the answered leg: our ACK was lost.
            if (200..300).contains(&code)
                && let Some(leg) = b.dialog.clone()
            {
                self.send_ack(&leg, &msg);
            }
            return;
        }
        let Some(i) = call.forks.iter().position(|b| b.invite_key == key) else {
            return;
        };
        let b = &mut call.forks[i];
        match code {
            100 => {}
            101..=199 => {
                if b.state == BState::Calling {
                    b.state = BState::Ringing;
                    // Idempotent: a second phone of the same operator
                    // ringing changes nothing.
                    if let Some(agent) = b.agent() {
                        self.router.ringing(agent, call_id);
                    }
                }
                // The operator's early media is not relayed: the caller
                // keeps hearing the queue's music until the answer.
            }
            200..=299 if !usable_answer => {
                // An answer we cannot use (no common codec, no audio):
                // acknowledge, hang up on that phone, try someone else.
                let b = call.forks.swap_remove(i);
                if call.forks.is_empty() {
                    call.phase = Phase::Queued;
                }
                let mut leg = Leg::from_response(&b.local, b.flow, &msg);
                self.client.remove(&key);
                self.by_b.remove(b.call_id.as_str());
                self.send_ack(&leg, &msg);
                self.send_bye(now, &mut leg);
                self.metrics
                    .sdp_rejected
                    .with_label_values(&["operator_answer"])
                    .inc();
                warn!(agent = %self.leg_name(&b), "operator's SDP answer unusable, trying another operator");
                self.leg_gone(now, call_id, b.agent(), OfferOutcome::Rejected);
            }
            200..=299 => {
                let mut b = call.forks.swap_remove(i);
                let losers: Vec<BLeg> = call.forks.drain(..).collect();
                let leg = Leg::from_response(&b.local, b.flow, &msg);
                b.state = BState::Answered;
                b.dialog = Some(leg.clone());
                let agent = b.agent();
                let name = leg_name(&self.router, &b);
                let b_from = b.flow.remote.ip();
                call.b = Some(b);
                call.phase = Phase::Connected;
                let browser = call
                    .b
                    .as_ref()
                    .is_some_and(|b| b.flow.transport == Transport::Browser);
                let (mut b_peer, b_direction) =
                    b_answer(&msg, &self.codecs, b_from).expect("checked by the guard arm");
                b_peer.browser = browser;
                call.media.b = Some(b_peer);
                call.media.b_direction = b_direction;
                // A new operator's dialog: its phone is asked afresh
                // whether it takes keys by INFO.
                call.info_off[Side::B.index()] = false;
                call.b_info = allows(&msg, "INFO");
                // Another node's operator hears that node's whisper.
                let whisper = if agent.is_some() {
                    whisper_prompts(
                        &self.queues[call.queue.0 as usize],
                        call.outbound().is_some(),
                        &self.prompts,
                        &self.callback_tone,
                    )
                } else {
                    Vec::new()
                };
                if !whisper.is_empty() {
                    self.metrics
                        .whispers
                        .with_label_values(&[if call.outbound().is_some() {
                            "callback"
                        } else {
                            "call"
                        }])
                        .inc();
                }
                if call.media.opened {
                    if !whisper.is_empty() {
                        self.out.push_back(Output::Media(MediaCommand::Whisper {
                            call: call_id,
                            b: b_peer.into(),
                            prompts: whisper,
                        }));
                    }
                    self.out.push_back(Output::Media(MediaCommand::Bridge {
                        call: call_id,
                        b: b_peer.into(),
                        record: self.queues[call.queue.0 as usize].record,
                    }));
                } else if call.outbound().is_some_and(|o| !o.customer_first) && !whisper.is_empty()
                {
                    // Agent first: the citizen is not dialled yet. The
                    // operator's side opens now for the whisper; the
                    // citizen's address comes with their answer.
                    let cmd = open_command(call_id, &mut call.media);
                    self.out.push_back(Output::Media(cmd));
                    self.out.push_back(Output::Media(MediaCommand::Whisper {
                        call: call_id,
                        b: b_peer.into(),
                        prompts: whisper,
                    }));
                }
                // The caller's 200 OK, unless an IVR flow answered them
                // already or Centralino placed the call (a callback).
                let mut ok = call
                    .inbound()
                    .filter(|i| !i.answered)
                    .map(|i| i.response(200, "OK"));
                if let Some(ok) = ok.as_mut() {
                    ok.push_shared("Contact", Self::caller_contact(call));
                    ok.set_body(
                        Some("application/sdp"),
                        a_sdp(&mut call.media, &self.codecs),
                    );
                }
                if let Some(i) = call.inbound_mut() {
                    i.answered = true;
                }
                if let Some(ok) = ok.as_mut() {
                    self.session_refreshed(now, call_id, ok);
                }
                let Some(call) = self.calls.get_mut(&call_id) else {
                    return;
                };
                let (queue, enqueued, started, consult) = (
                    call.queue,
                    call.enqueued,
                    call.started,
                    call.consult.is_some(),
                );
                self.send_ack(&leg, &msg);
                // The router releases the other ring-all operators itself.
                if let Some(agent) = agent {
                    self.router.answered(now, agent, call_id);
                } else {
                    self.metrics
                        .cluster_handovers
                        .with_label_values(&["connected"])
                        .inc();
                }
                for l in losers {
                    // The winner's other phones stop ringing; their desk
                    // stays on the call.
                    let release = l.agent() != agent;
                    self.cancel_fork(now, l, release, Some(COMPLETED_ELSEWHERE));
                }
                if let Some(ok) = ok {
                    self.final_ok(now, call_id, ok);
                }
                if let Some(o) = self.calls.get(&call_id).and_then(|c| c.outbound()) {
                    if o.customer_first {
                        // Customer first: the citizen, reached, now talks
                        // to an operator.
                        self.callback_kept(now, call_id);
                    } else {
                        // Agent first: the operator is there; the citizen
                        // is dialled once the store knows (never twice).
                        self.outbound_state(call_id, CallbackState::Dialing { call: call_id });
                    }
                }
                let qname = self.router.queue(queue).name.clone();
                self.metrics
                    .call_setup
                    .observe((now - started).as_secs_f64());
                self.visit_answered(now, call_id, now.saturating_duration_since(enqueued));
                if !consult {
                    self.metrics
                        .queue_wait
                        .with_label_values(&[&qname])
                        .observe((now - enqueued).as_secs_f64());
                    self.metrics
                        .queue_dequeued
                        .with_label_values(&[&qname, "answered"])
                        .inc();
                }
                self.metrics
                    .agent_offers
                    .with_label_values(&["answered"])
                    .inc();
                info!(agent = %name, queue = %qname, "call answered");
                if let Some(c) = self.calls.get_mut(&call_id) {
                    c.connected = Some((now, name.clone()));
                    // Answered during a callback dialogue: it is over.
                    c.vhold = None;
                    c.unserved = false;
                    c.named = None;
                }
                if let Some(c) = self.calls.get(&call_id).filter(|_| agent.is_some()) {
                    let desk = self.desk(c, DeskState::Connected);
                    self.out.push_back(Output::AgentCall {
                        agent: name.clone(),
                        info: Some(desk),
                    });
                }
                self.queue_event(now, call_id, QueueEvent::Connect, Some(name));
            }
            _ => {
                let b = call.forks.swap_remove(i);
                self.client.remove(&key);
                self.by_b.remove(b.call_id.as_str());
                if call.forks.is_empty() {
                    call.phase = Phase::Queued;
                }
                let outcome = if matches!(code, 486 | 600 | 603) {
                    OfferOutcome::Rejected
                } else {
                    OfferOutcome::NoAnswer
                };
                self.metrics
                    .agent_offers
                    .with_label_values(&[if outcome == OfferOutcome::Rejected {
                        "rejected"
                    } else {
                        "failed"
                    }])
                    .inc();
                debug!(code, "operator's phone refused the call");
                self.leg_gone(now, call_id, b.agent(), outcome);
            }
        }
    }

    pub(super) fn on_client_timeout(&mut self, now: Instant, key: TxKey) {
        if let Some(ClientRef::Qualify(agent)) = self.client.get(&key) {
            let agent = *agent;
            self.client.remove(&key);
            let name = self.router.agent(agent).name.clone();
            warn!(agent = %name, "the operator's phone does not answer OPTIONS: logged out");
            self.metrics.agents_unreachable.inc();
            self.registrar.drop_bindings(&name);
            return;
        }
        if let Some(ClientRef::TrunkPing(trunk)) = self.client.get(&key) {
            let trunk = *trunk;
            self.client.remove(&key);
            self.trunk_seen(trunk, false);
            return;
        }
        if let Some(ClientRef::Refresh(call_id)) = self.client.get(&key) {
            // No answer to our refresh: as a 408 (RFC 4028 §10).
            let call_id = *call_id;
            self.client.remove(&key);
            if !self.calls.contains_key(&call_id) {
                return; // the call ended meanwhile: nothing expired
            }
            warn!("session refresh unanswered: the session is gone");
            self.metrics.session_timer_expired.inc();
            self.metrics
                .session_refreshes
                .with_label_values(&["gone"])
                .inc();
            self.end_connected(now, call_id, true, true, CallOutcome::SessionExpired);
            return;
        }
        if let Some(ClientRef::TransferRefresh(call_id)) = self.client.get(&key) {
            // No answer to our refresh of the transfer leg: as a 408.
            let call_id = *call_id;
            self.client.remove(&key);
            if self
                .calls
                .get(&call_id)
                .is_some_and(|c| c.transfer.is_some())
            {
                self.transfer_session_gone(now, call_id, "gone");
            }
            return;
        }
        if let Some(ClientRef::Rejoin(call_id, leg)) = self.client.get(&key) {
            let (call_id, leg) = (*call_id, leg.clone());
            self.client.remove(&key);
            if self.rejoin_current(call_id, &leg, &key) {
                warn!("the consulted operator's phone never answered our re-INVITE");
                self.rejoin_failed(now, call_id);
            }
            return;
        }
        if let Some(ClientRef::Transfer(call_id)) = self.client.get(&key) {
            let call_id = *call_id;
            self.client.remove(&key);
            self.transfer_failed(now, call_id);
            return;
        }
        if let Some(ClientRef::InfoRelay(call_id, to, dialog)) = self.client.get(&key) {
            let (call_id, to, dialog) = (*call_id, *to, dialog.clone());
            self.client.remove(&key);
            self.info_relay_answered(call_id, to, &dialog, None);
            return;
        }
        if let Some(ClientRef::Citizen(call_id)) = self.client.get(&key) {
            let call_id = *call_id;
            self.client.remove(&key);
            if let Some(o) = self.calls.get_mut(&call_id).and_then(|c| c.outbound_mut()) {
                o.invite = None;
            }
            // Not even a provisional answer: the trunk, not the citizen.
            if self.next_trunk(now, call_id, "timeout") {
                return;
            }
            self.end_connected(now, call_id, false, true, CallOutcome::NoAnswer);
            return;
        }
        if let Some(ClientRef::BInvite(call_id)) = self.client.remove(&key) {
            let Some(call) = self.calls.get_mut(&call_id) else {
                return;
            };
            if let Some(i) = call.forks.iter().position(|b| b.invite_key == key) {
                let b = call.forks.swap_remove(i);
                self.by_b.remove(b.call_id.as_str());
                if call.forks.is_empty() {
                    call.phase = Phase::Queued;
                }
                self.metrics
                    .agent_offers
                    .with_label_values(&["no_answer"])
                    .inc();
                self.leg_gone(now, call_id, b.agent(), OfferOutcome::NoAnswer);
            }
        }
    }

    /// The operator's phone went silent mid-call (it died, lost its network):
    /// the caller is not left in dead air. The operator's leg gets BYE and
    /// they are paused (`media_lost`) until they resume; the caller hears
    /// the music again and goes back to the queue as if waiting since they
    /// first entered it (ahead of later callers), for the next operator.
    /// `false` when the call cannot go back (an IVR transfer).
    pub(super) fn requeue_after_operator_loss(&mut self, now: Instant, call_id: CallId) -> bool {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return false;
        };
        // Another node's call is that node's to put back: here it ends.
        if call.transfer.is_some() || call.b.is_none() || !call.media.opened || call.handed_over {
            return false;
        }
        let (_span, queue) = (call.span.clone().entered(), call.queue);
        let Some((mut b, lost, spec)) = self.detach_operator(now, call_id) else {
            return false;
        };
        if let Some(mut leg) = b.dialog.take() {
            self.send_bye(now, &mut leg);
        }
        if let Some(agent) = b.agent() {
            self.router.call_lost(now, agent, call_id);
            self.agent_released(agent);
            if matches!(self.router.agent(agent).state, AgentState::Paused(_)) {
                self.agent_event(now, agent, "pause", Some("media_lost".to_owned()));
            }
        }
        warn!(agent = ?lost, "the operator's phone went silent: the caller goes back to the queue");
        if let Some(c) = self.calls.get_mut(&call_id) {
            // The same visit goes on: not offered again.
            c.requeued = true;
        }
        self.metrics
            .calls_requeued
            .with_label_values(&["operator_media_lost"])
            .inc();
        self.queue_event(now, call_id, QueueEvent::Requeue, lost);
        self.enter_queue(now, call_id, queue, &spec);
        true
    }

    /// Takes the answered operator's leg off a call: the caller back to
    /// the music (`Unbridge`) and waiting again, with the time waited so
    /// far added to the call's spec. Returns the leg (its dialog still
    /// open, for the caller to end), the operator's name and that spec.
    pub(super) fn detach_operator(
        &mut self,
        now: Instant,
        call_id: CallId,
    ) -> Option<(BLeg, Option<String>, CallSpec)> {
        let complete = self
            .calls
            .get(&call_id)
            .and_then(|c| self.complete_record(now, c));
        let call = self.calls.get_mut(&call_id)?;
        let b = call.b.take()?;
        let name = call.connected.take().map(|(_, name)| name);
        if let Some(r) = complete {
            self.out.push_back(Output::Record(r));
        }
        // Waited so far, on top of what the call brought (a callback's time
        // since the request): it keeps its place.
        let mut spec = (*call.spec).clone();
        spec.waited += now.saturating_duration_since(call.enqueued);
        call.media.b = None;
        call.media.b_direction = Direction::SendRecv;
        call.phase = Phase::Queued;
        // The supervisor was on that operator's conversation (the media
        // plane ends their leg with the `Unbridge`).
        call.monitor = None;
        // Our re-INVITE that moved them here, if any, is theirs.
        if let Some(r) = call.rejoin.take() {
            self.client.remove(&r.key);
        }
        self.end_phone_monitor(now, call_id);
        self.by_b.remove(b.call_id.as_str());
        self.client.remove(&b.invite_key);
        self.out
            .push_back(Output::Media(MediaCommand::Unbridge { call: call_id }));
        Some((b, name, spec))
    }

    /// A B-leg is out of the offer: this node's operator (see
    /// [`Self::fork_gone`]), or another node's (the call goes back to its
    /// place here).
    pub(super) fn leg_gone(
        &mut self,
        now: Instant,
        call_id: CallId,
        agent: Option<AgentId>,
        outcome: OfferOutcome,
    ) {
        match agent {
            Some(agent) => self.fork_gone(now, call_id, agent, outcome),
            None => self.handover_failed(now, call_id),
        }
    }

    /// Who a B-leg rings, for the log and the record: this node's
    /// operator's name, or `name@node` for another node's.
    pub(super) fn leg_name(&self, b: &BLeg) -> String {
        leg_name(&self.router, b)
    }

    /// The router's `offer_failed`, plus the queue log's pause when the
    /// miss made it pause the operator (`max_no_answer`).
    pub(super) fn offer_failed(
        &mut self,
        now: Instant,
        call: CallId,
        agent: AgentId,
        outcome: OfferOutcome,
    ) {
        if self.calls.get(&call).is_some_and(|c| c.handed_over) {
            self.lent_call_failed(now, call, agent, outcome);
            return;
        }
        self.router.offer_failed(now, call, agent, outcome);
        if self.router.agent(agent).state == AgentState::Paused(PauseReason::NoAnswer) {
            self.agent_event(now, agent, "pause", Some("no_answer".to_owned()));
        }
        self.named_failed(now, call, agent);
    }

    /// CANCEL for one of our INVITEs still ringing.
    pub(super) fn cancel_client_invite(&mut self, now: Instant, key: &TxKey, flow: Flow) {
        self.cancel_with_reason(now, key, flow, None);
    }

    pub(super) fn cancel_with_reason(
        &mut self,
        now: Instant,
        key: &TxKey,
        flow: Flow,
        reason: Option<&str>,
    ) {
        if let Some(inv) = self.txn.client_request(key) {
            let cancel = dialog::cancel(inv, reason);
            self.send_request(now, flow, cancel, ClientRef::Other);
        }
    }

    pub(super) fn cancel_b(&mut self, now: Instant, b: BLeg) {
        self.cancel_fork(now, b, true, None);
    }

    /// CANCELs a ringing B-leg (a late 2xx gets ACK and BYE); `release`
    /// clears the operator's desk; `reason` goes in a `Reason` header
    /// (RFC 3326).
    pub(super) fn cancel_fork(
        &mut self,
        now: Instant,
        b: BLeg,
        release: bool,
        reason: Option<&str>,
    ) {
        if release && let Some(agent) = b.agent() {
            self.agent_released(agent);
        }
        self.by_b.remove(b.call_id.as_str());
        self.cancel_with_reason(now, &b.invite_key, b.flow, reason);
        self.client.insert(
            b.invite_key,
            ClientRef::Orphan {
                local: b.local,
                flow: b.flow,
            },
        );
    }

    /// A ringing B-leg is gone without an answer: it is cancelled, the
    /// operator released and, when no other leg rings, the call returns to
    /// its place in the queue.
    pub(super) fn b_leg_failed(
        &mut self,
        now: Instant,
        call_id: CallId,
        which: impl Fn(&BLeg) -> bool,
        outcome: OfferOutcome,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let (gone, kept): (Vec<BLeg>, Vec<BLeg>) = call.forks.drain(..).partition(|b| which(b));
        call.forks = kept;
        if call.forks.is_empty() && !gone.is_empty() {
            call.phase = Phase::Queued;
        }
        let mut agents: Vec<Option<AgentId>> = gone.iter().map(BLeg::agent).collect();
        agents.dedup();
        for b in gone {
            self.cancel_fork(now, b, false, None);
        }
        for agent in agents {
            self.leg_gone(now, call_id, agent, outcome);
        }
    }

    /// The router took a reservation back (its lease ran out before we
    /// reported anything): stop ringing that operator.
    pub(super) fn reclaimed(&mut self, now: Instant, call_id: CallId, agent: AgentId) {
        let _span = self.call_span(call_id).entered();
        warn!(agent = %self.router.agent(agent).name, "reservation lapsed, offer withdrawn");
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let (gone, kept): (Vec<BLeg>, Vec<BLeg>) =
            call.forks.drain(..).partition(|b| b.agent() == Some(agent));
        call.forks = kept;
        if call.forks.is_empty() {
            call.phase = Phase::Queued;
        }
        let release = !gone.is_empty();
        for b in gone {
            self.cancel_fork(now, b, false, None);
        }
        if release {
            self.agent_released(agent);
        }
        self.preview_reclaimed(call_id, agent);
        self.named_failed(now, call_id, agent);
    }
}

/// See [`Engine::leg_name`] (a field borrow, for code holding a call).
pub(super) fn leg_name(router: &Router, b: &BLeg) -> String {
    match &b.op {
        Operator::Local(a) => router.agent(*a).name.clone(),
        Operator::Remote(l) => format!("{}@{}", l.operator, l.node),
    }
}
