//! The end of a call, answered or not: records, queue events, media
//! closed, operators released.

use super::*;

/// How a call ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// No operator answered: the caller gets `status` (or, answered by an
    /// IVR flow, a BYE unless `caller_gone`).
    Unanswered { status: u16, caller_gone: bool },
    /// An operator answered: BYE to the legs asked for.
    Connected { bye_a: bool, bye_b: bool },
}

impl Engine {
    /// Ends a call no operator answered: the caller gets `status` (or,
    /// answered by an IVR flow, a BYE unless `caller_gone`).
    pub(super) fn end_unanswered(
        &mut self,
        now: Instant,
        call_id: CallId,
        status: u16,
        outcome: CallOutcome,
        caller_gone: bool,
    ) {
        let ending = Ending::Unanswered {
            status,
            caller_gone,
        };
        self.end_call(now, call_id, ending, outcome);
    }

    /// Ends a connected call, sending BYE to the legs asked for.
    pub(super) fn end_connected(
        &mut self,
        now: Instant,
        call_id: CallId,
        bye_a: bool,
        bye_b: bool,
        outcome: CallOutcome,
    ) {
        self.end_call(now, call_id, Ending::Connected { bye_a, bye_b }, outcome);
    }

    /// The one way a call ends: its tables, media and transfer leg, then
    /// its legs as `ending` says, its metrics and its record.
    fn end_call(&mut self, now: Instant, call_id: CallId, ending: Ending, outcome: CallOutcome) {
        let _span = self.call_span(call_id).entered();
        let Some(mut call) = self.calls.remove(&call_id) else {
            return;
        };
        // A stored callback ends the call as its request, however it ends.
        let outcome = if call.callback_stored && matches!(ending, Ending::Unanswered { .. }) {
            CallOutcome::CallbackRequested
        } else {
            outcome
        };
        call.span.record("outcome", outcome.as_str());
        self.by_a.remove(call.a_leg.call_id.as_str());
        if let Some(r) = call.rejoin.take() {
            self.client.remove(&r.key);
        }
        self.close_media(call_id);
        self.end_phone_monitor(now, call_id);
        self.offer_withdrawn(now, call_id);
        self.lent_ended(call.lent.as_deref());
        if let Some(opening) = call.opening.take() {
            // Ended while its ports were being reserved (a CANCEL in the
            // same batch as its INVITE): it existed, so it is recorded as
            // started before its end, as before the media boundary.
            let did = match opening {
                Opening::Inbound { did, .. } | Opening::Callback { did } => did,
                Opening::Handover { .. } => String::new(),
            };
            self.out.push_back(Output::Record(Record::CallStarted {
                id: call.record_id.clone(),
                at_ms: self.unix_ms_at(call.started),
                caller: call.caller.clone(),
                did,
            }));
        }
        if let Some(mut t) = call.transfer.take() {
            // The caller left while the transfer rang, or after it connected.
            self.by_b.remove(t.call_id.as_str());
            if let Some(key) = t.invite.take() {
                let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
                self.cancel_client_invite(now, &key, flow);
            } else if let Some(mut leg) = t.dialog.take()
                && matches!(ending, Ending::Connected { bye_b: true, .. })
            {
                self.send_bye(now, &mut leg);
            }
        }
        match ending {
            Ending::Unanswered {
                status,
                caller_gone,
            } => self.release_unanswered(now, call_id, &mut call, status, caller_gone, outcome),
            Ending::Connected { bye_a, bye_b } => {
                self.release_connected(now, call_id, &mut call, bye_a, bye_b, outcome)
            }
        }
        let at_ms = self.unix_ms_at(now);
        let queue_name = self.router.queue(call.queue).name.clone();
        let (queue, agent, wait_ms, talk_ms) = match ending {
            Ending::Unanswered { .. } => {
                let wait_ms = call
                    .in_queue
                    .then(|| now.saturating_duration_since(call.enqueued).as_millis() as i64);
                self.visit_unanswered(
                    now,
                    &call,
                    now.saturating_duration_since(call.enqueued),
                    outcome,
                );
                if call.in_queue && call.consult.is_none() {
                    self.metrics
                        .queue_wait
                        .with_label_values(&[&queue_name])
                        .observe((now - call.enqueued).as_secs_f64());
                    self.metrics
                        .queue_dequeued
                        .with_label_values(&[&queue_name, outcome.as_str()])
                        .inc();
                    // A callback being placed is no visit (`queue_event`).
                    if call.outbound().is_none() {
                        let event = QueueEvent::of_unanswered(outcome);
                        self.out.push_back(Output::Record(Record::Queue {
                            call: call.record_id.clone(),
                            at_ms,
                            queue: queue_name.clone(),
                            event,
                            agent: None,
                            position: None,
                            wait_ms,
                        }));
                    }
                }
                self.metrics
                    .calls
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                // A citizen who called and reached nobody, with no callback
                // taken and no transfer: a dead end (our own outbound calls
                // and operators' consultations are not citizens calling).
                // One cut off by the node stopping is one too, as the
                // reports count it (`shutdown`, `exit` in the queue log).
                if call.outbound().is_none()
                    && call.transferred.is_none()
                    && call.consult.is_none()
                    && !call.visit_answered
                    && outcome != CallOutcome::CallbackRequested
                {
                    let queue = if call.in_queue {
                        queue_name.as_str()
                    } else {
                        ""
                    };
                    self.metrics
                        .dead_ends
                        .with_label_values(&[queue, outcome.as_str()])
                        .inc();
                }
                info!(caller = %Masked(&call.caller), %outcome, "call ended before answer");
                // After a transfer, the operator who talked and their talk.
                let (agent, talk_ms) = match &call.transferred {
                    Some((a, t)) => (Some(a.clone()), Some(t.as_millis() as i64)),
                    None => (None, None),
                };
                (call.in_queue.then_some(queue_name), agent, wait_ms, talk_ms)
            }
            Ending::Connected { .. } => {
                if let Some(r) = self.complete_record(now, &call) {
                    self.out.push_back(Output::Record(r));
                }
                self.metrics.calls.with_label_values(&["answered"]).inc();
                info!(
                    %outcome,
                    duration_seconds = (now - call.started).as_secs(),
                    "call ended"
                );
                // The talk of every operator, the last one's name.
                let before = call
                    .transferred
                    .as_ref()
                    .map_or(Duration::ZERO, |(_, t)| *t);
                let (talk_ms, agent) = match &call.connected {
                    Some((t, a)) => (
                        Some((now.saturating_duration_since(*t) + before).as_millis() as i64),
                        Some(a.clone()),
                    ),
                    None => (None, None),
                };
                let wait_ms = call
                    .connected
                    .as_ref()
                    .map(|(t, _)| t.saturating_duration_since(call.enqueued).as_millis() as i64);
                (Some(queue_name), agent, wait_ms, talk_ms)
            }
        };
        self.out.push_back(Output::Record(Record::CallEnded {
            id: call.record_id.clone(),
            at_ms,
            outcome,
            queue,
            agent,
            wait_ms,
            talk_ms,
            variables: variables_of(&call),
        }));
    }

    /// An unanswered call's legs: ringing operators released, the caller
    /// (or the callback's citizen) answered or hung up on, and a callback
    /// tried again by its policy.
    fn release_unanswered(
        &mut self,
        now: Instant,
        call_id: CallId,
        call: &mut Call,
        status: u16,
        caller_gone: bool,
        outcome: CallOutcome,
    ) {
        if call.phase != Phase::Connected {
            // Releases every operator still ringing for it, too.
            self.router.withdraw(now, call_id);
            if let Some(agent) = call.named.take() {
                // A colleague rung by name (the call was in no queue).
                self.router
                    .offer_failed(now, call_id, agent, OfferOutcome::Withdrawn);
            }
            for b in call.forks.drain(..) {
                self.cancel_b(now, b);
            }
        }
        if let Some(p) = call.preview.take().filter(|p| !p.accepted) {
            // Its contact leaves the operator's desk (the router released
            // them with the withdrawal).
            self.agent_released(p.agent);
        }
        if let Some(o) = call.outbound().filter(|o| o.answered) {
            // Customer first, reached and then lost while queued (they hung
            // up, or nobody took them in time): nobody spoke to them, so
            // the request is not done; it is tried again by the policy.
            let outcome = match outcome {
                CallOutcome::MaxWait | CallOutcome::QueueFull => CallbackOutcome::NoOperator,
                _ => CallbackOutcome::Abandoned,
            };
            self.outbound_failed(o, call.queue, outcome);
            if !caller_gone {
                self.send_bye(now, &mut call.a_leg);
            }
        } else if let Some(o) = call
            .outbound()
            .filter(|o| o.campaign.is_some() && !o.dialled)
        {
            // A campaign's contact nobody dialled (skipped, no operator in
            // time, the campaign stopped): no attempt of the citizen's; the
            // contact goes back to its campaign.
            self.attempt_state(
                o,
                CallbackState::Requeue {
                    outcome: outcome.into(),
                },
            );
        } else if let Some(o) = call.outbound() {
            // A callback nobody took: nobody to hang up on; try later.
            let outcome = if outcome == CallOutcome::MaxWait {
                CallbackOutcome::NoOperator
            } else {
                outcome.into()
            };
            self.outbound_failed(o, call.queue, outcome);
        } else if let Some(i) = call.inbound().filter(|i| !i.answered) {
            let r = i.response(status, reason_phrase(status));
            self.respond(now, &i.key, &r);
        } else if !caller_gone {
            self.send_bye(now, &mut call.a_leg);
        }
    }

    /// A connected call's legs: BYE where asked, a citizen still ringing
    /// cancelled, the callback's outcome, the operator released.
    fn release_connected(
        &mut self,
        now: Instant,
        call_id: CallId,
        call: &mut Call,
        bye_a: bool,
        bye_b: bool,
        outcome: CallOutcome,
    ) {
        let citizen_reached = call.outbound().is_none_or(|o| o.answered);
        if let Some(key) = call.outbound_mut().and_then(|o| o.invite.take()) {
            // The citizen's phone still rings: CANCEL it.
            self.cancel_client_invite(now, &key, call.a_leg.flow);
        }
        if bye_a && citizen_reached {
            self.send_bye(now, &mut call.a_leg);
        }
        if let Some(o) = call.outbound()
            && !o.answered
        {
            if outcome == CallOutcome::CallbackMoved {
                // Not this node's callback any more: no state of it.
            } else if o.dialled || outcome == CallOutcome::StoreFailed {
                self.outbound_failed(o, call.queue, outcome.into());
            } else {
                // The operator hung up (or their phone died) during the
                // whisper, before the INVITE left: not the citizen's
                // attempt. Retrying only after `callback_retry_seconds`
                // would push them behind everyone who asked later.
                info!(
                    %outcome,
                    "callback: the operator left before the citizen was dialled; back to pending"
                );
                if o.campaign.is_none() {
                    self.metrics
                        .callbacks
                        .with_label_values(&["operator_left"])
                        .inc();
                }
                self.attempt_state(
                    o,
                    CallbackState::Requeue {
                        outcome: outcome.into(),
                    },
                );
            }
        }
        if let Some(b) = call.b.take() {
            let agent = b.agent();
            self.by_b.remove(b.call_id.as_str());
            // The INVITE's client transaction outlives the call (Timer M);
            // a 2xx retransmitted after this is simply ignored.
            self.client.remove(&b.invite_key);
            if let Some(mut leg) = b.dialog
                && bye_b
            {
                self.send_bye(now, &mut leg);
            }
            if let Some(agent) = agent {
                self.router.call_ended(now, agent, call_id);
                self.agent_released(agent);
            }
        }
    }

    /// The call's media is over: the plane closes its sockets and puts
    /// its ports back in the pool.
    pub(super) fn close_media(&mut self, call_id: CallId) {
        self.out
            .push_back(Output::Media(MediaCommand::Close { call: call_id }));
    }
}
