//! IVR flows (alberature) as the engine runs them: the interpreter's
//! actions, digits, announcements of position and wait, and what the
//! operator is told of the caller's answers.

use super::*;

impl Engine {
    /// Answers a call for its IVR flow and starts the walk (at the ACK
    /// after a late offer, when the media exists).
    pub(super) fn start_flow(&mut self, now: Instant, id: CallId, flow: Arc<IvrFlow>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        // Answered first: many trunks send the caller's keys only once
        // the call is answered.
        let Some(inbound) = call.inbound() else {
            return;
        };
        let mut ok = inbound.response(200, "OK");
        ok.push_shared("Contact", Self::caller_contact(call));
        ok.set_body(
            Some("application/sdp"),
            a_sdp(&mut call.media, &self.codecs),
        );
        if let Some(inbound) = call.inbound_mut() {
            inbound.answered = true;
        }
        self.session_refreshed(now, id, &mut ok);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let late = call.media.late_offer;
        if late {
            call.pending_flow = Some(flow.clone());
        } else {
            self.out
                .push_back(Output::Media(open_command(id, &mut call.media)));
        }
        self.final_ok(now, id, ok);
        self.metrics
            .flow_calls
            .with_label_values(&[&flow.name, "started"])
            .inc();
        if !late {
            self.run_flow(now, id, flow);
        }
    }

    pub(super) fn run_flow(&mut self, now: Instant, id: CallId, flow: Arc<IvrFlow>) {
        let facts = facts!(self, now);
        let (run, actions) = Run::start(flow, now, &facts);
        if let Some(call) = self.calls.get_mut(&id) {
            info!(flow = run.flow(), "IVR flow started");
            call.run = Some(run);
        }
        self.flow_actions(now, id, actions);
    }

    /// The queue a flow names, if it is the call's tenant's. A backstop:
    /// `check-config` keeps the flows a trunk reaches to its tenant's
    /// queues, and a reload can neither move a queue to another tenant
    /// nor give a removed queue's name to a new one (it comes back in its
    /// old place); but a call keeps its flow across reloads, and a firm's
    /// caller in another firm's queue is what TEST-MATRIX D12 forbids, so
    /// the rule is checked again where the call would cross.
    pub(super) fn flow_queue(&self, tenant: TenantId, name: &str) -> Option<QueueId> {
        let q = *self.queue_ids.get(name)?;
        if self.queue_tenant(q) == tenant {
            return Some(q);
        }
        warn!(queue = %name, "the call's flow names a queue of another tenant: refused");
        None
    }

    /// Carries out what the flow asked, then arms its next deadline.
    pub(super) fn flow_actions(&mut self, now: Instant, id: CallId, actions: Vec<FlowAction>) {
        for a in actions {
            match a {
                FlowAction::Play(names) => {
                    let mut prompts = Vec::with_capacity(names.len());
                    for n in &names {
                        match self.prompts.get(n) {
                            Some(p) => prompts.push(p.clone()),
                            None => debug!(prompt = %n, "prompt not loaded, skipped"),
                        }
                    }
                    self.out.push_back(Output::Media(MediaCommand::Play {
                        call: id,
                        prompts,
                        music: None,
                    }));
                }
                FlowAction::Enqueue {
                    queue,
                    requirements,
                    priority,
                    fragile,
                } => {
                    let Some(call) = self.calls.get_mut(&id) else {
                        return;
                    };
                    let flow_name = call.run.as_ref().map(|r| r.flow().to_owned());
                    let mut spec = (*call.spec).clone();
                    for r in &requirements {
                        // Checked when the configuration loaded.
                        match Requirement::parse(r, &self.catalog) {
                            Ok(req) => {
                                spec.requirement = Some(match &spec.requirement {
                                    Some(have) => have.and(&req),
                                    None => req,
                                });
                            }
                            Err(e) => {
                                warn!(requirement = %r, error = %e, "flow requirement ignored")
                            }
                        }
                    }
                    spec.priority = i32::from(priority).max(spec.priority);
                    spec.fragile |= fragile;
                    if let Some(f) = flow_name {
                        self.metrics
                            .flow_calls
                            .with_label_values(&[&f, "queued"])
                            .inc();
                    }
                    let tenant = self.calls.get(&id).map(|c| c.tenant);
                    match tenant.and_then(|t| self.flow_queue(t, &queue)) {
                        Some(q) => self.enter_queue(now, id, q, &spec),
                        None => self.end_unanswered(now, id, 480, CallOutcome::IvrNoQueue, false),
                    }
                }
                FlowAction::Transfer { number } => {
                    if !self.start_transfer(now, id, &number) {
                        self.transfer_failed(now, id);
                        return;
                    }
                }
                FlowAction::Callback { queue } => {
                    let Some(call) = self.calls.get(&id) else {
                        return;
                    };
                    let tenant = self
                        .flow_queue(call.tenant, &queue)
                        .map(|q| self.queue_tenant(q));
                    let caller = call.caller.clone();
                    // Stored in E.164 like the API's requests, so one
                    // citizen is one pending callback however spelled.
                    let e164 = tenant.and_then(|t| self.dialable(t, &caller, "ivr"));
                    let Some(call) = self.calls.get_mut(&id) else {
                        return;
                    };
                    if let Some(number) = e164 {
                        call.callback_asked = true;
                        info!(number = %Masked(&number), queue = %queue, "caller accepts a callback (IVR)");
                        let enqueued_unix = self.unix_at(now);
                        self.out.push_back(Output::StoreCallback {
                            call: id,
                            queue,
                            number,
                            enqueued_unix,
                        });
                    } else if let Some(mut run) = call.run.take() {
                        // No number to call back, or no queue of the
                        // call's tenant to keep it: the flow's fallback.
                        let why = if tenant.is_some() {
                            "no_number"
                        } else {
                            "ivr_failed"
                        };
                        self.metrics.callbacks.with_label_values(&[why]).inc();
                        let facts = facts!(self, now);
                        let more = run.callback_result(now, false, &facts);
                        call.run = Some(run);
                        self.flow_actions(now, id, more);
                        return;
                    }
                }
                FlowAction::Hangup => {
                    if let Some(f) = self
                        .calls
                        .get(&id)
                        .and_then(|c| c.run.as_ref())
                        .map(|r| r.flow().to_owned())
                    {
                        self.metrics
                            .flow_calls
                            .with_label_values(&[&f, "hung_up"])
                            .inc();
                    }
                    self.end_unanswered(now, id, 480, CallOutcome::IvrHangup, false);
                }
            }
        }
        if let Some(t) = self
            .calls
            .get(&id)
            .and_then(|c| c.run.as_ref())
            .and_then(Run::poll_timeout)
        {
            self.timers.push(Reverse((t, id, CallTimer::Flow)));
        }
    }

    /// Tells a waiting caller their position and expected wait, then the
    /// music resumes.
    pub(super) fn announce(&mut self, call_id: CallId, queue: QueueId) {
        if !self.calls.get(&call_id).is_some_and(|c| c.media.opened) {
            // A late offer: no media towards the caller before the answer.
            return;
        }
        let Some(est) = self.router.estimate(call_id) else {
            return;
        };
        let position = est.position;
        let minutes = est
            .wait
            .map(|d| u32::try_from(d.as_secs().div_ceil(60)).unwrap_or(u32::MAX));
        let mut names = announce::position_and_wait(position, minutes);
        names.extend(self.queues[queue.0 as usize].callback_offer.iter().cloned());
        let Some(prompts) = self.prompts.sequence(&names) else {
            self.metrics
                .announcements
                .with_label_values(&["skipped"])
                .inc();
            debug!("announcement skipped: prompts not loaded");
            return;
        };
        self.metrics
            .announcements
            .with_label_values(&["played"])
            .inc();
        debug!(position, ?minutes, "announcing position and wait");
        self.out.push_back(Output::Media(MediaCommand::Play {
            call: call_id,
            prompts,
            music: self.queues[queue.0 as usize].music.clone(),
        }));
    }

    /// One key press, from RTP or SIP INFO: kept for the call's flow.
    pub(super) fn on_digit(
        &mut self,
        now: Instant,
        call_id: CallId,
        side: Side,
        digit: char,
        source: &'static str,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let _span = call.span.clone().entered();
        self.metrics.dtmf_digits.with_label_values(&[source]).inc();
        if call.media.digits.len() >= MAX_DIGITS {
            call.media.digits.remove(0);
        }
        call.media.digits.push(digit);
        // The digit itself only at debug: callers key in codes and dates.
        debug!(side = side.label(), source, %digit, "key press");
        info!(side = side.label(), source, "key press received");
        if side == Side::A
            && matches!(call.phase, Phase::Queued | Phase::Offering)
            && call.in_queue
            && !call.callback_asked
            && call.consult.is_none()
        {
            if call.vhold.is_some() {
                self.vhold_digit(now, call_id, digit);
                return;
            }
            if self.queues[call.queue.0 as usize].callback_key == Some(digit) {
                let number = call.caller.clone();
                let queue = call.queue;
                let usable = self
                    .dialable(self.queue_tenant(queue), &number, "virtual_hold")
                    .is_some();
                if self.queues[queue.0 as usize].callback_number.is_some() {
                    info!("caller asks to be called back: confirming the number");
                    if usable {
                        self.vhold_ask(now, call_id, Vhold::Confirm(number));
                    } else {
                        self.vhold_ask(now, call_id, Vhold::Enter(String::new(), 0));
                    }
                } else if usable {
                    self.vhold_store(call_id, number);
                } else {
                    info!("callback asked without a usable caller number: the call stays queued");
                    self.metrics
                        .callbacks
                        .with_label_values(&["no_number"])
                        .inc();
                }
                return;
            }
        }
        if side == Side::A
            && let Some(mut run) = call.run.take()
        {
            let facts = facts!(self, now);
            let actions = run.handle_digit(now, digit, &facts);
            call.run = Some(run);
            self.flow_actions(now, call_id, actions);
        }
    }
}

/// The IVR's answers as `name=value` lines, for the call record.
pub(super) fn variables_of(call: &Call) -> Option<String> {
    let run = call.run.as_ref()?;
    (!run.variables.is_empty()).then(|| {
        run.variables
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Opens a call's media (marks it opened).
/// What the operator hears on answering: the queue's whisper for calls,
/// its callback whisper (or the built-in tone) for callbacks; prompts not
/// loaded are left out.
pub(super) fn whisper_prompts(
    policy: &QueuePolicy,
    is_callback: bool,
    lib: &Library,
    tone: &Prompt,
) -> Vec<Prompt> {
    match (is_callback, &policy.callback_whisper) {
        (true, None) => vec![tone.clone()],
        (true, Some(names)) => names_to_prompts(names, lib),
        (false, _) => names_to_prompts(&policy.whisper, lib),
    }
}

pub(super) fn names_to_prompts(names: &[String], lib: &Library) -> Vec<Prompt> {
    names.iter().filter_map(|n| lib.get(n).cloned()).collect()
}
