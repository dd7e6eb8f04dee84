//! Callbacks ("Ti chiamiamo noi") as the engine executes them: the
//! citizen's leg through the tenant's outbound trunks (dial plan, failover,
//! digest towards the carrier), agent-first and customer-first, early
//! media, retries by outcome and the answer of the store.

use super::*;

impl Engine {
    /// `number` in E.164 when it passes the dial plan of `tenant`, the
    /// only spelling a trunk is ever given (the plan reads a bare number
    /// as national, a carrier might not). Refusals are logged (masked)
    /// and counted with where the number came from.
    pub(super) fn dialable(
        &self,
        tenant: TenantId,
        number: &str,
        via: &'static str,
    ) -> Option<String> {
        let plan = self.dial_plans.get(tenant.index());
        match plan.map(|p| p.check(number)) {
            Some(Ok(e164)) => Some(e164),
            refused => {
                let reason = match refused {
                    Some(Err(r)) => r.label(),
                    _ => "not_allowed",
                };
                info!(number = %Masked(number), via, reason, "number refused by the dial plan");
                self.metrics
                    .dial_plan_refused
                    .with_label_values(&[via, reason])
                    .inc();
                None
            }
        }
    }

    /// The tenant of a queue.
    pub(super) fn queue_tenant(&self, queue: QueueId) -> TenantId {
        self.queues[queue.0 as usize].tenant
    }

    /// Starts executing a callback (agent first): it waits in its queue
    /// like a call that has waited since the request was made; when an
    /// operator answers, the citizen is dialled through the queue's
    /// tenant's outbound trunk.
    pub fn start_callback(&mut self, now: Instant, cb: DueCallback) {
        if self.draining {
            // Claimed as the drain began (the scheduler looks before it
            // claims, but the claim and its way here take time): a node
            // that is leaving starts nothing. Back to pending at once, the
            // attempt given back, for another node or this one restarted.
            let state = CallbackState::Requeue {
                outcome: CallbackOutcome::Ended(CallOutcome::Shutdown),
            };
            match &cb.campaign {
                Some(c) => self.contact_state(c, None, state),
                None => self.callback_state(&cb.id, state),
            }
            return;
        }
        let via = if cb.campaign.is_some() {
            "campaign"
        } else {
            "callback"
        };
        let Some(&queue) = self.queue_ids.get(&cb.queue) else {
            self.start_failed(&cb, CallbackOutcome::UnknownQueue);
            return;
        };
        let tenant = self.queue_tenant(queue);
        if let Some(c) = &cb.campaign
            && self.tenant_names.get(tenant.index()) != Some(&c.tenant)
        {
            // The campaign and its queue are checked together when it is
            // made, and a queue keeps its firm for the life of the store
            // (`queue_owners.rs`): a backstop, never another firm's trunk.
            warn!(campaign = %c.name, queue = %cb.queue, "a campaign's queue belongs to another firm: its contact is not dialled");
            self.start_failed(&cb, CallbackOutcome::OtherTenant);
            return;
        }
        if self.dialable(tenant, &cb.number, via).is_none() {
            // Stored before the plan said no (an older version, a reload):
            // never dialled, and no retry would change that.
            self.start_failed(&cb, CallbackOutcome::DialPlan);
            return;
        }
        // The tenant's first outbound trunk that is not down (all down:
        // the first, in case the pings are wrong).
        let ours = || {
            (0..self.trunks.len())
                .map(TrunkId::at)
                .filter(|&j| self.trunks[j.index()].dials_for(tenant))
        };
        let preferred = cb
            .campaign
            .as_ref()
            .and_then(|c| c.trunk.as_deref())
            .and_then(|name| ours().find(|&j| self.trunks[j.index()].name == name))
            .filter(|&j| !self.trunks[j.index()].down);
        let trunk = preferred
            .or_else(|| ours().find(|&j| !self.trunks[j.index()].down))
            .or_else(|| ours().next());
        let Some(trunk) = trunk.filter(|&t| self.outbound_flow(t).is_some()) else {
            warn!(queue = %cb.queue, "no outbound trunk for callbacks");
            self.start_failed(&cb, CallbackOutcome::NoOutboundTrunk);
            return;
        };
        // The call's SIP side towards the citizen is filled in when we
        // dial; its media is anchored like any call's.
        let number = cb.number.clone();
        let caller_id = cb.campaign.as_ref().and_then(|c| c.caller_id.clone());
        let Some((a_leg, invite, _)) = self.citizen_leg(trunk, &number, via, caller_id.as_deref())
        else {
            self.start_failed(&cb, CallbackOutcome::DialPlan);
            return;
        };
        let ip = a_leg.flow.local.ip();
        let law = self.codecs.first().copied().unwrap_or(Law::Alaw);
        let session = self.rng.next_u64() >> 2;
        let media = AnchoredMedia {
            ip,
            sdp_ip: self.advertise.unwrap_or(ip),
            // Filled in when the media plane holds them.
            a_port: 0,
            b_port: 0,
            a: Peer {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                law,
                telephone_event: None,
                signalling: None,
                browser: false,
            },
            a_direction: Direction::SendRecv,
            b: None,
            b_direction: Direction::SendRecv,
            session,
            b_session: session + 1,
            sent: [None; 2],
            digits: String::new(),
            late_offer: false,
            opened: false,
            offered_in_2xx: [None, None],
        };
        let mut spec = CallSpec {
            priority: cb.priority,
            requirement: None,
            fragile: false,
            waited: Duration::from_secs(
                u64::try_from(self.unix_at(now) - cb.created_unix).unwrap_or(0),
            ),
        };
        if let Some(r) = &cb.requirements
            && let Ok(req) = Requirement::parse(r, &self.catalog)
        {
            spec.requirement = Some(req);
        }
        let id = CallId(self.next_call);
        self.next_call += 1;
        let span = tracing::info_span!(
            "call",
            call = %id,
            queue = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        let _entered = span.clone().entered();
        info!(number = %Masked(&number), queue = %cb.queue, attempt = cb.attempt, "callback: waiting for an operator");
        let record_id = self.record_id(now);
        let did = match &cb.campaign {
            Some(c) => format!("campaign:{}", c.name),
            None => format!("callback:{}", cb.id),
        };
        let outbound = Outbound {
            id: cb.id.clone(),
            attempt: cb.attempt,
            promised_unix: cb.promised_unix,
            request: Box::new(invite),
            // A campaign's own mode decides, never the queue's callback
            // mode: a fragile (progressive) campaign is always agent first.
            customer_first: match &cb.campaign {
                Some(c) => c.customer_first,
                None => self.queues[queue.0 as usize].customer_first,
            },
            invite: None,
            dialled: false,
            answered: false,
            trunk,
            early_media: None,
            campaign: cb.campaign.clone(),
            prack: Pracked::default(),
        };
        let mut call = Call::new(NewCall {
            span,
            phase: Phase::Queued,
            queue,
            now,
            customer: Customer::Outbound(outbound),
            a_leg,
            caller: number,
            private: false,
            media,
            spec: Arc::new(spec.clone()),
            record_id,
            tenant,
        });
        call.opening = Some(Opening::Callback { did });
        self.calls.insert(id, call);
        self.reserve_media(id, ip);
    }

    /// A callback's media is held: it waits for an operator, or (customer
    /// first) its citizen is dialled once the store knows.
    pub(super) fn callback_reserved(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let (queue, spec) = (call.queue, call.spec.clone());
        let customer_first = call.outbound().is_some_and(|o| o.customer_first);
        if customer_first {
            // Customer first: the citizen is dialled now (once the store
            // knows) and queued when they answer.
            self.outbound_state(id, CallbackState::Dialing { call: id });
        } else {
            self.enter_queue(now, id, queue, &spec);
        }
        self.pump(now);
    }

    /// The leg towards a number through outbound trunk `trunk` (a citizen
    /// called back, an IVR transfer), its INVITE (no body yet) and our tag.
    /// `None` when the trunk takes no calls, or its tenant's dial plan
    /// refuses the number: every INVITE to a trunk is built here, so this
    /// is the one gate no new call source can go around.
    pub(super) fn citizen_leg(
        &mut self,
        trunk: TrunkId,
        number: &str,
        via: &'static str,
        caller_id: Option<&str>,
    ) -> Option<(Leg, Message, String)> {
        let t = self.trunks.get(trunk.index())?;
        let caller_id = caller_id.map_or_else(|| t.caller_id.clone(), str::to_owned);
        let (tenant, asserted) = (t.tenant, t.asserted_identity);
        let flow = self.outbound_flow(trunk)?;
        let number = self.dialable(tenant, number, via)?;
        let (remote, local) = (flow.remote, flow.local);
        let target = match flow.transport {
            Transport::Tls => format!("sip:{number}@{remote};transport=tls"),
            _ => format!("sip:{number}@{remote}"),
        };
        let tag = self.token();
        let call_id = format!("{}@centralino", self.token());
        let local_uri = format!("<sip:{caller_id}@{local}>;tag={tag}");
        let via = self.via(flow);
        let invite = Message::new_request(
            Method::Invite,
            &target,
            via,
            &local_uri,
            &format!("<{target}>"),
            &call_id,
            1,
        );
        let mut invite = invite;
        // RFC 4028: a call whose far end vanished without a BYE is found
        // by its session timer, whichever side the carrier makes refresh.
        // RFC 3262: a carrier may send its ringing and early media
        // reliably (each PRACKed), or require it.
        invite.push("Supported", "timer, 100rel");
        invite.push(
            "Session-Expires",
            &session_timer::DEFAULT_INTERVAL.to_string(),
        );
        if asserted {
            // The carrier presents the service's number (RFC 3325), whatever
            // it makes of our From.
            invite.push("P-Asserted-Identity", &format!("<sip:{caller_id}@{local}>"));
        }
        let leg = Leg {
            call_id: call_id.into(),
            local: local_uri,
            remote: format!("<{target}>"),
            remote_target: target,
            route_set: Vec::new(),
            cseq: 1,
            flow,
        };
        Some((leg, invite, tag))
    }

    /// The trunk failed the citizen's INVITE (a 5xx, or no answer at all):
    /// the same attempt goes on through the tenant's next outbound trunk
    /// (configuration order), so a carrier down costs a citizen nothing
    /// while another is up. `false` when none is left.
    pub(super) fn next_trunk(
        &mut self,
        now: Instant,
        call_id: CallId,
        reason: &'static str,
    ) -> bool {
        let Some(call) = self.calls.get(&call_id) else {
            return false;
        };
        let Some(o) = call.outbound().filter(|o| !o.answered) else {
            return false;
        };
        // The call's own tenant: trunks are positions in a table a reload
        // rebuilds, and may have moved or gone since this one was chosen.
        let (from, tenant) = (o.trunk, call.tenant);
        let Some(next) = (from.index() + 1..self.trunks.len())
            .find(|&j| self.trunks[j].dials_for(tenant) && !self.trunks[j].down)
            .map(TrunkId::at)
        else {
            return false;
        };
        let number = call.caller.clone();
        let caller_id = o.campaign.as_ref().and_then(|c| c.caller_id.clone());
        let Some((leg, invite, _)) =
            self.citizen_leg(next, &number, "callback", caller_id.as_deref())
        else {
            return false;
        };
        let old = self
            .calls
            .get_mut(&call_id)
            .expect("looked up")
            .replace_a_leg(leg);
        self.by_a.remove(old.call_id.as_str());
        if let Some(o) = self.calls.get_mut(&call_id).and_then(|c| c.outbound_mut()) {
            *o.request = invite;
            o.trunk = next;
            o.prack = Pracked::default();
        }
        warn!(
            reason,
            from = from.0,
            to = next.0,
            "outbound trunk failed: the callback goes on through the next one"
        );
        self.metrics
            .trunk_failovers
            .with_label_values(&[reason])
            .inc();
        self.callback_dialing(now, call_id, true);
        true
    }

    pub(super) fn callback_state(&mut self, id: &str, state: CallbackState) {
        self.out.push_back(Output::CallbackState {
            id: id.to_owned(),
            state,
        });
    }

    /// A callback (or campaign contact) that cannot start: why.
    fn start_failed(&mut self, cb: &DueCallback, outcome: CallbackOutcome) {
        let state = CallbackState::Failed { outcome };
        match &cb.campaign {
            Some(c) => self.contact_state(c, None, state),
            None => self.callback_state(&cb.id, state),
        }
    }

    /// The outbound attempt of call `id` moved on.
    pub(super) fn outbound_state(&mut self, id: CallId, state: CallbackState) {
        let who = self.calls.get(&id).and_then(|c| {
            let o = c.outbound()?;
            Some((o.id.clone(), o.campaign.clone(), c.record_id.clone()))
        });
        match who {
            Some((_, Some(c), record)) => self.contact_state(&c, Some(record), state),
            Some((cb, None, _)) => self.callback_state(&cb, state),
            None => {}
        }
    }

    /// A callback is done (an operator talks to the citizen): kept, in
    /// time when within its promise (README, "Service figures").
    /// A campaign's contact is only done (its own metrics count it).
    pub(super) fn callback_kept(&mut self, now: Instant, id: CallId) {
        if let Some(c) = self.calls.get(&id)
            && let Some(o) = c.outbound().filter(|o| o.campaign.is_none())
        {
            // No promise could be made (the queue's hours never open
            // that long, or a callback from before promises were kept):
            // neither kept in time nor late.
            let in_time = match o.promised_unix {
                None => "none",
                Some(p) if self.unix_at(now) <= p => "yes",
                Some(_) => "no",
            };
            let name = &self.router.queue(c.queue).name;
            self.metrics
                .queue_callbacks_kept
                .with_label_values(&[name.as_str(), in_time])
                .inc();
        }
        self.outbound_state(id, CallbackState::Done);
    }

    /// An outbound attempt moved on: a callback's state for its record, a
    /// campaign contact's for the campaign.
    pub(super) fn attempt_state(&mut self, o: &Outbound, state: CallbackState) {
        match &o.campaign {
            Some(c) => self.contact_state(c, None, state),
            None => self.callback_state(&o.id, state),
        }
    }

    /// A callback's attempt ended without reaching the citizen.
    pub(super) fn outbound_failed(
        &mut self,
        o: &Outbound,
        queue: QueueId,
        outcome: CallbackOutcome,
    ) {
        if self.shutting_down {
            return;
        }
        if o.campaign.is_none() {
            self.metrics
                .callbacks
                .with_label_values(&[outcome.as_str()])
                .inc();
        }
        match &o.campaign {
            // The campaign's policy decides what follows, in the driver.
            Some(c) => self.contact_state(c, None, CallbackState::Failed { outcome }),
            None => {
                let id = o.id.clone();
                self.retry_or_fail(&id, o.attempt, queue, outcome);
            }
        }
    }

    /// Another attempt later, or failed when the outcome's (or the
    /// queue's) attempts are used up.
    pub(super) fn retry_or_fail(
        &mut self,
        id: &str,
        attempt: u32,
        queue: QueueId,
        outcome: CallbackOutcome,
    ) {
        let policy = &self.queues[queue.0 as usize];
        let (max, after) = (policy.callback_max_attempts, policy.callback_retry);
        let (max, after) = policy
            .callback_retries
            .iter()
            .find(|(o, _, _)| o == outcome.as_str())
            .map_or((max, after), |(_, m, a)| (*m, *a));
        let state = if attempt >= max {
            CallbackState::Failed { outcome }
        } else {
            CallbackState::Retry { outcome, after }
        };
        self.callback_state(id, state);
    }

    /// The store's answer to [`CallbackState::Dialing`]: dial the citizen
    /// (or, if it could not record it, give the operator back).
    pub fn callback_dialing(&mut self, now: Instant, call_id: CallId, recorded: bool) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let _span = call.span.clone().entered();
        if !recorded {
            warn!("callback could not be marked as dialled: not dialling");
            self.end_connected(now, call_id, false, true, CallOutcome::StoreFailed);
            self.pump(now);
            return;
        }
        let (port, session) = (call.media.a_port, call.media.session);
        let offer_body = sdp_offer(&mut call.media, &self.codecs, Side::A, port, session);
        let Some(o) = call.outbound() else {
            return;
        };
        let mut inv = (*o.request).clone();
        inv.push("Contact", &dialog::contact(call.a_leg.flow));
        inv.push_shared("User-Agent", self.user_agent.clone());
        inv.set_body(Some("application/sdp"), offer_body);
        let flow = call.a_leg.flow;
        let a_call_id = call.a_leg.call_id.clone();
        info!("callback: dialling the citizen");
        let key = self.send_request(now, flow, inv, ClientRef::Citizen(call_id));
        self.by_a.insert(a_call_id.to_string(), call_id);
        if let Some(o) = self.calls.get_mut(&call_id).and_then(|c| c.outbound_mut()) {
            o.invite = Some(key);
            o.dialled = true;
        }
        self.pump(now);
    }

    /// The national work stream could not fence a callback's dial: the
    /// operator is given back, the callback goes back to pending with its
    /// attempt given back (it was never dialled).
    pub fn callback_held(&mut self, now: Instant, call_id: CallId) {
        self.callback_not_dialled(now, call_id, CallOutcome::ClusterUnavailable);
    }

    /// The national work stream says another node owns this callback now
    /// (or its record cannot be trusted): the operator is given back and
    /// nothing is recorded of the callback here (its store row already
    /// says why).
    pub fn callback_gone(&mut self, now: Instant, call_id: CallId) {
        self.callback_not_dialled(now, call_id, CallOutcome::CallbackMoved);
    }

    fn callback_not_dialled(&mut self, now: Instant, call_id: CallId, why: CallOutcome) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let _span = call.span.clone().entered();
        warn!(outcome = %why, "callback: the national work stream says not to dial");
        self.end_connected(now, call_id, false, true, why);
        self.pump(now);
    }

    /// A carrier's 18x with SDP while an operator waits for the citizen
    /// (agent first): the operator hears what the network plays (ringback,
    /// "the number is not reachable"), as on any phone, instead of
    /// silence. Customer first, nobody waits: nothing to bridge. The
    /// caller side's liveness is not judged before the answer (a 183 may
    /// bring no RTP at all).
    pub(super) fn citizen_early_media(&mut self, call_id: CallId, msg: &Message) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let (Some(b), Some(out)) = (call.media.b, call.outbound()) else {
            return;
        };
        if out.answered || out.customer_first {
            return;
        }
        let flow = call.a_leg.flow;
        let Some((law, audio)) = sdp::parse(&msg.body)
            .ok()
            .filter(|a| a.port != 0)
            .and_then(|a| Some((a.choose(&self.codecs)?, a)))
        else {
            return;
        };
        let addr = SocketAddr::new(audio.addr, audio.port);
        if out.early_media == Some(addr)
            || self
                .refused_media(addr, flow.remote.ip(), flow.local.ip())
                .is_some()
        {
            return;
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let first = call
            .outbound_mut()
            .is_some_and(|o| o.early_media.replace(addr).is_none());
        let peer = Peer {
            addr,
            law,
            telephone_event: audio.telephone_event,
            signalling: Some(flow.remote.ip()),
            browser: false,
        };
        let cmd = citizen_peer(call_id, &mut call.media, peer);
        self.out.push_back(Output::Media(cmd));
        if first {
            // Not recorded: the conversation starts at the answer, whose
            // bridge turns recording on where the queue asks for it.
            self.out.push_back(Output::Media(MediaCommand::Bridge {
                call: call_id,
                b: b.into(),
                record: false,
            }));
            info!("callback: the network's early media reaches the operator");
            self.metrics.callback_early_media.inc();
        }
    }

    /// A response from the citizen's side.
    pub(super) fn on_citizen_response(
        &mut self,
        now: Instant,
        key: TxKey,
        call_id: CallId,
        msg: &Message,
    ) {
        let code = msg.code();
        let _span = self.call_span(call_id).entered();
        if code < 200 {
            let due = self.calls.get_mut(&call_id).and_then(|c| {
                let (local, flow) = (c.a_leg.local.clone(), c.a_leg.flow);
                Some((c.outbound_mut()?.prack.due(msg), local, flow))
            });
            if !self.take_provisional(now, due, msg) {
                return;
            }
            if code > 100 && !msg.body.is_empty() {
                self.citizen_early_media(call_id, msg);
            }
            return;
        }
        self.client.remove(&key);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(out) = call.outbound_mut() else {
            return;
        };
        out.invite = None;
        if matches!(code, 401 | 407) {
            let flow = call.a_leg.flow;
            if let Some(retry) =
                self.authenticated_retry(now, &key, flow, msg, ClientRef::Citizen(call_id))
            {
                if let Some(o) = self.calls.get_mut(&call_id).and_then(|c| c.outbound_mut()) {
                    o.invite = Some(retry);
                    // A new INVITE: its reliable responses start afresh.
                    o.prack = Pracked::default();
                }
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if (200..300).contains(&code) {
            let mut leg = Leg::from_response(&call.a_leg.local, call.a_leg.flow, msg);
            // Our PRACKs took CSeqs of the dialog: what follows goes on
            // above them.
            leg.cseq = leg.cseq.max(call.outbound().map_or(0, |o| o.prack.cseq));
            let flow = call.a_leg.flow;
            // A 2xx without SDP confirms the answer its early dialog's
            // reliable 1xx carried (RFC 3261 §13.2.1, RFC 3262).
            let early = call
                .outbound_mut()
                .and_then(|o| o.prack.settle(msg.to_tag.as_deref()));
            let body = match early {
                Some(sdp) if msg.body.is_empty() => sdp,
                _ => msg.body.clone(),
            };
            let answer = self.usable_answer(&body, flow);
            let Some(call) = self.calls.get_mut(&call_id) else {
                return;
            };
            call.replace_a_leg(leg.clone());
            call.peer_update = allows_update(msg);
            call.peer_info = allows(msg, "INFO");
            if let Some(se) = session_timer::session_expires(msg) {
                // We offered a session timer: in the carrier's answer
                // `uac` is us.
                call.session_timer = Some(se.interval.max(session_timer::MIN_SE));
                call.we_refresh = se.refresher != Some(session_timer::Refresher::Uas);
            }
            self.send_ack_kept(now, &leg, msg);
            self.session_armed(now, call_id);
            let Some((law, audio)) = answer else {
                warn!("the citizen's answer has no usable SDP");
                self.end_connected(now, call_id, true, true, CallOutcome::BadAnswer);
                return;
            };
            let Some(call) = self.calls.get_mut(&call_id) else {
                return;
            };
            let peer = Peer {
                addr: SocketAddr::new(audio.addr, audio.port),
                law,
                telephone_event: audio.telephone_event,
                signalling: Some(call.a_leg.flow.remote.ip()),
                browser: false,
            };
            let cmd = citizen_peer(call_id, &mut call.media, peer);
            self.out.push_back(Output::Media(cmd));
            if let Some(b) = call.media.b {
                let record = self.queues[call.queue.0 as usize].record;
                self.out.push_back(Output::Media(MediaCommand::Bridge {
                    call: call_id,
                    b: b.into(),
                    record,
                }));
            }
            let customer_first = call.outbound().is_some_and(|o| o.customer_first);
            let campaign = call.outbound().is_some_and(|o| o.campaign.is_some());
            if let Some(o) = call.outbound_mut() {
                o.answered = true;
            }
            if customer_first {
                // Reached: now they wait for an operator like any caller,
                // with the time of their request.
                let (queue, spec) = (call.queue, (*call.spec).clone());
                self.enter_queue(now, call_id, queue, &spec);
                if campaign {
                    // Predictive: an operator within the grace, or the
                    // message (an abandoned call).
                    self.timers.push(Reverse((
                        now + campaigns::ANSWER_GRACE,
                        call_id,
                        CallTimer::AnswerGrace,
                    )));
                }
            }
            info!("callback: the citizen answered");
            // A campaign's answers count in its own metrics.
            if !campaign {
                self.metrics
                    .callbacks
                    .with_label_values(&["answered"])
                    .inc();
            }
            // Customer first: done only once an operator talks to them
            // (a citizen who gives up waiting is called again).
            if !customer_first {
                self.callback_kept(now, call_id);
            }
            return;
        }
        if matches!(code, 500 | 502 | 503 | 504) && self.next_trunk(now, call_id, "5xx") {
            return;
        }
        let outcome = match code {
            486 | 600 | 603 => CallOutcome::Busy,
            408 | 480 | 487 => CallOutcome::NoAnswer,
            _ => CallOutcome::Failed,
        };
        info!(code, %outcome, "callback: the citizen was not reached");
        self.end_connected(now, call_id, false, true, outcome);
    }

    /// A carrier challenged our INVITE (`resp` is its 401 or 407): when the
    /// trunk at `flow.remote` has credentials and this INVITE carried none,
    /// the same INVITE again (same Call-ID, tags and body; CSeq + 1, a new
    /// branch) with the answer (RFC 3261 §22.2), its key returned. `None`:
    /// no credentials, a second challenge, or one we cannot answer; the
    /// caller then treats the response as the failure it is.
    pub(super) fn authenticated_retry(
        &mut self,
        now: Instant,
        key: &TxKey,
        flow: Flow,
        resp: &Message,
        what: ClientRef,
    ) -> Option<TxKey> {
        let trunk = self
            .trunks
            .iter()
            .position(|t| t.outbound == Some(flow.remote))?;
        let auth = self.trunks.get(trunk)?.auth.clone()?;
        let (asks, answers) = if resp.code() == 407 {
            ("Proxy-Authenticate", "Proxy-Authorization")
        } else {
            ("WWW-Authenticate", "Authorization")
        };
        let orig = self.txn.client_request(key)?.clone();
        if orig.header("Authorization").is_some() || orig.header("Proxy-Authorization").is_some() {
            warn!(trunk = %self.trunks[trunk].name, "the carrier refused our credentials");
            self.metrics
                .trunk_auth
                .with_label_values(&["refused"])
                .inc();
            return None;
        }
        // SHA-256 when the carrier offers it beside MD5 (RFC 8760 §2.4).
        let challenges: Vec<auth::Challenge> = resp
            .headers_named(asks)
            .filter_map(auth::parse_challenge)
            .collect();
        let Some(challenge) = challenges
            .iter()
            .find(|c| c.algorithm == auth::Algorithm::Sha256)
            .or_else(|| challenges.first())
        else {
            warn!(trunk = %self.trunks[trunk].name, "the carrier's challenge cannot be answered");
            self.metrics
                .trunk_auth
                .with_label_values(&["unanswerable"])
                .inc();
            return None;
        };
        let uri = orig.request_uri().unwrap_or_default().to_owned();
        let cnonce = self.token();
        let answer = auth::answer_challenge(
            challenge,
            &auth.username,
            &auth.password,
            orig.method().as_str(),
            &uri,
            &cnonce,
            1,
        );
        let via = self.via(flow);
        let mut req = Message::new_request(
            orig.method().clone(),
            &uri,
            via,
            orig.header("From").unwrap_or_default(),
            orig.header("To").unwrap_or_default(),
            &orig.call_id,
            orig.cseq + 1,
        );
        const REBUILT: [&str; 7] = [
            "Via",
            "Max-Forwards",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Content-Length",
        ];
        for h in &orig.headers {
            if !REBUILT.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
                req.headers.push(h.clone());
            }
        }
        req.body = orig.body.clone();
        req.push(answers, &answer);
        info!(trunk = %self.trunks[trunk].name, algorithm = challenge.algorithm.token(), "the carrier asked for credentials: INVITE sent again with them");
        self.metrics
            .trunk_auth
            .with_label_values(&["answered"])
            .inc();
        Some(self.send_request(now, flow, req, what))
    }

    /// The store's answer to [`Output::StoreCallback`]: when durable, the
    /// call leaves the queue, hears the confirmation and ends; if not, it
    /// keeps its place.
    pub fn callback_stored(&mut self, now: Instant, call_id: CallId, stored: bool) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let _span = call.span.clone().entered();
        if call.phase == Phase::Ivr
            && let Some(mut run) = call.run.take()
        {
            // Offered by the IVR flow: the flow confirms or falls back.
            // Stored, the call ends as the request it is (however the
            // flow ends it: its hangup node is no dead end then).
            call.callback_asked = false;
            call.callback_stored |= stored;
            let event = if stored { "ivr_created" } else { "ivr_failed" };
            self.metrics.callbacks.with_label_values(&[event]).inc();
            let facts = facts!(self, now);
            let actions = run.callback_result(now, stored, &facts);
            call.run = Some(run);
            self.flow_actions(now, call_id, actions);
            self.pump(now);
            return;
        }
        if !stored && call.unserved {
            self.metrics
                .callbacks
                .with_label_values(&["ivr_failed"])
                .inc();
            self.unserved_failed(now, call_id);
            return;
        }
        if !stored || call.phase == Phase::Connected {
            call.callback_asked = false;
            warn!("callback not stored: the caller keeps waiting");
            self.metrics
                .callbacks
                .with_label_values(&["ivr_failed"])
                .inc();
            return;
        }
        self.metrics
            .callbacks
            .with_label_values(&["ivr_created"])
            .inc();
        // Stored: however the call ends now, it ends as a callback request.
        call.callback_stored = true;
        let confirm = self.queues[call.queue.0 as usize].callback_confirm.clone();
        // Out of the queue now: no operator may be offered it any more.
        self.router.withdraw(now, call_id);
        let forks: Vec<BLeg> = call.forks.drain(..).collect();
        call.phase = Phase::Ivr;
        for b in forks {
            self.cancel_b(now, b);
        }
        let prompts: Vec<Prompt> = confirm
            .iter()
            .filter_map(|n| self.prompts.get(n).cloned())
            .collect();
        let duration: Duration = prompts.iter().map(Prompt::duration).sum();
        self.out.push_back(Output::Media(MediaCommand::Play {
            call: call_id,
            prompts,
            music: None,
        }));
        self.timers
            .push(Reverse((now + duration, call_id, CallTimer::CallbackDone)));
        self.pump(now);
    }
}
