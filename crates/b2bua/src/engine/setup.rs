//! Inbound setup: a trunk's INVITE becomes a call (DID, anchored media,
//! tenant) and enters its IVR flow or its queue.

use super::*;

impl Engine {
    pub(super) fn on_request(&mut self, now: Instant, flow: Flow, msg: Box<Message>) {
        let key = TxKey::of(&msg);
        // A supervisor's phone's dialog answers for itself: it may never
        // act on a call (ingress checked its tags and source).
        if msg.to_tag.is_some() && self.phone_monitor_request(now, flow, &key, &msg) {
            return;
        }
        if *msg.method() == Method::Cancel && self.phone_monitor_cancel(now, &key, &msg) {
            return;
        }
        match msg.method() {
            Method::Register => {
                let resp = self.register(now, flow, &msg);
                self.respond(now, &key, &resp);
            }
            Method::Options => {
                let tag = self.token();
                let mut r = msg.response(200, "OK", Some(&tag));
                r.push("Allow", ALLOW);
                r.push("Accept", "application/sdp");
                self.respond(now, &key, &r);
            }
            Method::Invite if msg.to_tag.is_none() => self.new_call(now, flow, msg),
            Method::Invite | Method::Update => self.on_reinvite(now, &key, &msg),
            Method::Info => self.on_info(now, &key, &msg),
            Method::Prack => self.on_prack(now, &key, &msg),
            Method::Cancel => self.on_cancel(now, &key, &msg),
            Method::Bye => self.on_bye(now, &key, &msg),
            Method::Refer => self.on_refer(now, &key, &msg),
            Method::Ack => self.on_ack(now, flow, &msg),
            _ => {
                let r = msg.response(200, "OK", None);
                self.respond(now, &key, &r);
            }
        }
    }

    pub(super) fn new_call(&mut self, now: Instant, flow: Flow, msg: Box<Message>) {
        if let Some((mode, agent)) = monitor_phone::feature_code(&msg) {
            return self.phone_monitor_invite(now, flow, msg, mode, agent);
        }
        // An operator consulting a queue of their firm (attended transfer):
        // challenged and checked first; refused ones are answered there.
        let consult = match self.consult_queue(flow, &msg) {
            Some(queue) => match self.consult_admit(now, flow, &msg, queue) {
                Some(c) => Some(c),
                None => return,
            },
            None => None,
        };
        let key = TxKey::of(&msg);
        if self.phone_monitors.contains_key(msg.call_id.as_str()) {
            // A supervisor's dialog's Call-ID never becomes a call's.
            let r = msg.response(482, reason_phrase(482), Some("x"));
            self.respond(now, &key, &r);
            return;
        }
        // Another node's call for the operator held for it here, or a
        // trunk's call for one of its DIDs.
        let claimed = self.claim_handover(now, flow.remote.ip(), &msg);
        let (trunk, target) = match &claimed {
            Some(c) => (None, Target::Queue(c.queue, c.spec.clone())),
            None if consult.is_some() => {
                let c = consult.as_ref().expect("checked");
                (None, Target::Queue(c.queue, c.spec.clone()))
            }
            None => match self.inbound(flow, &msg) {
                Some((trunk, target)) => (Some(trunk), target),
                None => {
                    // precheck guarantees both (a lease may lapse in
                    // between); answer rather than leave the caller hanging.
                    let r = msg.response(404, reason_phrase(404), Some("x"));
                    self.respond(now, &key, &r);
                    return;
                }
            },
        };
        // RFC 4028: an interval below ours is refused with our minimum
        // (the caller retries with it); one we take is refreshed by the
        // caller, and only a caller that supports the extension is held
        // to it (else its Session-Expires, maybe a proxy's, is ignored).
        let supports_timer = msg.supports("timer");
        let session = match session_timer::session_expires(&msg) {
            Some(se) if se.interval < session_timer::MIN_SE && supports_timer => {
                self.metrics
                    .sip_rejected
                    .with_label_values(&["session_interval_too_small"])
                    .inc();
                let mut r = msg.response(422, reason_phrase(422), Some("x"));
                r.push("Min-SE", &session_timer::MIN_SE.to_string());
                self.respond(now, &key, &r);
                if let Some(c) = &claimed {
                    self.unclaim(now, c);
                }
                return;
            }
            // §9, table 2: the caller refreshes unless it asks us to, or
            // cannot (a proxy's timer on a caller without the extension).
            Some(se) => Some((
                se.interval
                    .max(session_timer::min_se(&msg).unwrap_or(0))
                    .max(session_timer::MIN_SE),
                !supports_timer || se.refresher == Some(session_timer::Refresher::Uas),
            )),
            None => None,
        };
        let (session_timer, we_refresh) = (session.map(|s| s.0), session.is_some_and(|s| s.1));
        let peer_update = allows_update(&msg);
        let peer_info = allows(&msg, "INFO");
        // RFC 4028 §7.4: our refreshes carry the largest Min-SE the dialog
        // has seen, the caller's (or a proxy's on the way) included.
        let min_se = session_timer::min_se(&msg)
            .map_or(session_timer::MIN_SE, |m| m.max(session_timer::MIN_SE));
        // RFC 3262: a caller that requires it gets every provisional
        // response reliably (RSeq, retransmitted until its PRACK); one that
        // merely supports it gets them as usual.
        let reliable = msg
            .headers_named("Require")
            .flat_map(uri::split_list)
            .any(|o| o.trim().eq_ignore_ascii_case("100rel"))
            .then(|| Reliable {
                // Random below 2**31 (§7.1), so a count never wraps.
                next_rseq: (self.rng.next_u32() >> 1).max(1),
                unacked: None,
                held_final: None,
            });
        let trying = msg.response(100, "Trying", None);
        self.respond(now, &key, &trying);

        let id = match &claimed {
            // The router knows the call by its placeholder already.
            Some(c) => c.call,
            None => {
                self.next_call += 1;
                CallId(self.next_call - 1)
            }
        };
        let a_tag = self.token();
        let from = msg.header("From").unwrap_or_default().to_owned();
        let asserted = trunk
            .and_then(|t| self.trunks.get(t.index()))
            .is_some_and(|t| t.asserted_identity)
            .then(|| asserted_caller(&msg))
            .flatten();
        // RFC 3323: `id` hides the asserted identity, `user` and `header`
        // the caller's own; any of them keeps the number from operators.
        let private = msg
            .headers_named("Privacy")
            .flat_map(|v| v.split(';'))
            .any(|p| {
                ["id", "user", "header"]
                    .iter()
                    .any(|w| p.trim().eq_ignore_ascii_case(w))
            });
        let asserted_number = asserted.clone();
        let caller = asserted
            .or_else(|| {
                uri::parse_name_addr(&from).and_then(|n| uri::user(n.uri).map(str::to_owned))
            })
            .unwrap_or_else(|| "anonymous".to_owned());
        let a_leg = Leg::from_request(&msg, &a_tag, flow);
        let span = tracing::info_span!(
            "call",
            call = %id,
            queue = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        let _entered = span.clone().entered();
        let media = match self.anchor(flow, &msg) {
            Ok(m) => m,
            Err(reason) => {
                if let Some(c) = &claimed {
                    self.unclaim(now, c);
                }
                self.metrics.sdp_rejected.with_label_values(&[reason]).inc();
                self.metrics.calls.with_label_values(&[reason]).inc();
                warn!(reason, code = 488, "call refused: media");
                let mut r = msg.response(488, reason_phrase(488), Some(&a_tag));
                r.push("Warning", "305 centralino \"Incompatible media format\"");
                self.respond(now, &key, &r);
                return;
            }
        };
        let (phase, spec) = match &target {
            Target::Queue(_, spec) => (Phase::Queued, spec.clone()),
            Target::Flow(_, spec) => (Phase::Ivr, spec.clone()),
        };
        // A handed-over call keeps its node's record id (with a suffix of
        // ours: it may come back another time), so both records match.
        let record_id = match msg.header("X-Centralino-Call").filter(|r| {
            claimed.is_some()
                && (1..=64).contains(&r.len())
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            Some(origin) => format!("{origin}-{}", &self.token()[..8]),
            None => self.record_id(now),
        };
        let did = msg
            .request_uri()
            .and_then(|r| match uri::scheme(r)? {
                Scheme::Tel => r
                    .split_once(':')
                    .map(|(_, d)| d.split(';').next().unwrap_or(d)),
                _ => uri::user(r),
            })
            .unwrap_or_default()
            .to_owned();
        let tenant = match (&claimed, trunk) {
            (Some(c), _) => self.queues[c.queue.0 as usize].tenant,
            (None, Some(t)) => self.trunks.get(t.index()).map_or(TenantId(0), |t| t.tenant),
            (None, None) => consult.as_ref().map_or(TenantId(0), |c| c.tenant),
        };
        // A running campaign's number: the caller is looked up among its
        // contacts, only when the carrier asserted who calls (a From is
        // anyone's to write) and they did not withhold their number. The
        // DID routes the call as the admin configured it.
        let mut lookup = None;
        let campaigns = self.campaigns_presenting(&did, tenant);
        if !campaigns.is_empty()
            && !private
            && let Some(asserted) = &asserted_number
        {
            let country = self
                .dial_plans
                .get(tenant.index())
                .map_or("39", |p| p.country_code.as_str());
            if let Some(number) = centralino_types::dialplan::normalize(asserted, country) {
                lookup = Some(Output::CallerLookup {
                    call: id,
                    record: record_id.clone(),
                    campaigns,
                    number,
                });
            }
        }
        self.by_a.insert(msg.call_id.to_string(), id);
        let ip = flow.local.ip();
        let mut call = Call::new(NewCall {
            span,
            phase,
            queue: QueueId(0),
            now,
            customer: Customer::Inbound(Inbound {
                key,
                invite: msg,
                tag: a_tag,
                answered: false,
            }),
            a_leg,
            caller,
            private,
            media,
            spec,
            record_id,
            tenant,
        });
        // What the caller's INVITE asked of the session (RFC 4028, 3262).
        call.session_timer = session_timer;
        call.we_refresh = we_refresh;
        call.peer_update = peer_update;
        call.peer_info = peer_info;
        call.refresh_tries.min_se = min_se;
        call.reliable = reliable;
        if let Some(c) = &consult {
            call.named = c.named;
        }
        call.opening = Some(match &claimed {
            Some(c) => {
                call.handed_over = true;
                call.lent = c.lent.clone().map(Box::new);
                Opening::Handover {
                    agent: c.agent,
                    queue: c.queue,
                }
            }
            None => Opening::Inbound { target, did },
        });
        call.consult = consult.map(|c| c.consult);
        call.received = self.read_at.unwrap_or(now);
        self.calls.insert(id, call);
        if let Some(lookup) = lookup {
            self.out.push_back(lookup);
        }
        self.reserve_media(id, ip);
    }

    /// Asks the media plane for the call's two port pairs; the call goes on
    /// in [`Engine::media_reserved`] (or is refused in
    /// [`Engine::media_unavailable`]). The engine never binds a socket: a
    /// port is promised in an SDP only once the driver holds it.
    pub(super) fn reserve_media(&mut self, id: CallId, ip: IpAddr) {
        self.out
            .push_back(Output::Media(MediaCommand::Reserve { call: id, ip }));
    }

    /// The driver holds the call's ports: the call goes on where its setup
    /// stopped.
    pub(super) fn media_reserved(&mut self, now: Instant, id: CallId, a_port: u16, b_port: u16) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(opening) = call.opening.take() else {
            return;
        };
        call.media.a_port = a_port;
        call.media.b_port = b_port;
        let (record_id, caller) = (call.record_id.clone(), call.caller.clone());
        match opening {
            Opening::Inbound { target, did } => {
                self.out.push_back(Output::Record(Record::CallStarted {
                    id: record_id,
                    at_ms: self.unix_ms_at(now),
                    caller,
                    did,
                }));
                match target {
                    Target::Queue(queue, spec) => {
                        match self.calls.get(&id).and_then(|c| c.named) {
                            // A consultation naming a colleague: rung directly.
                            Some(agent) => self.consult_ring(now, id, queue, agent),
                            None => self.enter_queue(now, id, queue, &spec),
                        }
                    }
                    Target::Flow(flow, _) => self.start_flow(now, id, flow),
                }
            }
            Opening::Handover { agent, queue } => {
                self.out.push_back(Output::Record(Record::CallStarted {
                    id: record_id,
                    at_ms: self.unix_ms_at(now),
                    caller,
                    did: String::new(),
                }));
                self.handover_reserved(now, id, agent, queue);
            }
            Opening::Callback { did } => {
                self.out.push_back(Output::Record(Record::CallStarted {
                    id: record_id,
                    at_ms: self.unix_ms_at(now),
                    caller,
                    did,
                }));
                self.callback_reserved(now, id);
            }
        }
    }

    /// The media plane had no ports for a call still being set up: it is
    /// refused as if it had never started (no record), a caller with a
    /// 503 and `Retry-After`, a callback retried by its policy.
    pub(super) fn media_unavailable(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        let _span = call.span.clone().entered();
        self.by_a.remove(call.a_leg.call_id.as_str());
        let queue = call.queue;
        if call.handed_over {
            // The operator held for it is free again.
            self.router.withdraw(now, id);
            self.lent_ended(call.lent.as_deref());
        }
        match call.customer {
            Customer::Inbound(inbound) => {
                let reason = "no_rtp_port";
                self.metrics.sdp_rejected.with_label_values(&[reason]).inc();
                self.metrics.calls.with_label_values(&[reason]).inc();
                warn!(reason, code = 503, "call refused: media");
                let mut r = inbound
                    .invite
                    .response(503, reason_phrase(503), Some(&inbound.tag));
                r.push("Retry-After", "5");
                self.respond(now, &inbound.key, &r);
            }
            Customer::Outbound(o) => match &o.campaign {
                Some(c) => self.contact_state(
                    c,
                    None,
                    CallbackState::Failed {
                        outcome: CallbackOutcome::NoRtpPort,
                    },
                ),
                None => self.retry_or_fail(&o.id, o.attempt, queue, CallbackOutcome::NoRtpPort),
            },
        }
    }

    /// Puts a call in `queue` with `spec`: early media (music) for a call
    /// not answered yet, music on the open media for an answered one. A
    /// full queue ends the call with the queue's exit status (or a BYE).
    pub(super) fn enter_queue(
        &mut self,
        now: Instant,
        id: CallId,
        queue: QueueId,
        spec: &CallSpec,
    ) {
        let qname = self.router.queue(queue).name.clone();
        // The call's span (and its OpenTelemetry export) names the queue
        // it waits in or was refused by, the last one when it moves.
        if let Some(call) = self.calls.get(&id) {
            call.span.record("queue", qname.as_str());
        }
        if let Err(e) = self.router.enqueue(now, queue, id, spec) {
            warn!(queue = %qname, error = %e, "call refused by the router");
            self.unserved(now, id, queue, "full", CallOutcome::QueueFull);
            return;
        }
        let announce = self.queues[queue.0 as usize].announce_every;
        let max_wait = self.router.queue(queue).max_wait;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.queue = queue;
        call.in_queue = true;
        call.enqueued = now;
        call.phase = Phase::Queued;
        // A new wait: whatever the last queue offered is over.
        call.unserved = false;
        call.vhold = None;
        if call.consult.is_none() {
            // An operator's consultation is not the queue's traffic.
            self.metrics
                .queue_enqueued
                .with_label_values(&[&qname])
                .inc();
        }
        info!(caller = %Masked(&call.caller), queue = %qname, "call queued");
        self.queue_music(now, id, queue);
        self.timers
            .push(Reverse((now + max_wait, id, CallTimer::MaxWait)));
        if self.nobody_in(queue)
            && self.queues[queue.0 as usize].when_unserved != centralino_config::Unserved::Hangup
        {
            self.timers.push(Reverse((
                now + unserved::NOBODY_GRACE,
                id,
                CallTimer::Nobody,
            )));
        }
        if let Some(every) = announce {
            self.timers
                .push(Reverse((now + every, id, CallTimer::Announce)));
        }
        self.visit_started(now, id, queue);
        self.queue_event(now, id, QueueEvent::Enter, None);
    }

    /// The caller hears `queue`'s music: on their open media, or as early
    /// media (183 with our SDP, refreshed) while unanswered; a late offer
    /// gets 180 and their own ringback.
    pub(super) fn queue_music(&mut self, now: Instant, id: CallId, queue: QueueId) {
        let music = self.queues[queue.0 as usize].music.clone();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.answered() {
            // The caller is already connected to us (IVR): music now.
            if call.media.opened {
                self.out.push_back(Output::Media(MediaCommand::Play {
                    call: id,
                    prompts: Vec::new(),
                    music,
                }));
            }
        } else if call.media.opened {
            // Early media already flowing (an overflow from another
            // queue): this queue's music on it, nothing signalled again.
            self.out.push_back(Output::Media(MediaCommand::Play {
                call: id,
                prompts: Vec::new(),
                music,
            }));
        } else if let Some(inbound) = call.inbound() {
            let contact = Self::caller_contact(call);
            let mut progress = if call.media.late_offer {
                // No offer yet: no early media, the caller hears its own
                // ringback until the answer.
                inbound.response(180, "Ringing")
            } else {
                inbound.response(183, "Session Progress")
            };
            progress.push_shared("Contact", contact);
            let media = &mut call.media;
            if !media.late_offer {
                progress.set_body(Some("application/sdp"), a_sdp(media, &self.codecs));
            }
            if !media.late_offer {
                // The caller hears our media while waiting (early media:
                // the call stays unanswered, so CANCEL and the queue's
                // exit status still work as a carrier expects).
                self.out.push_back(Output::Media(open_command(id, media)));
                self.out.push_back(Output::Media(MediaCommand::Play {
                    call: id,
                    prompts: Vec::new(),
                    music,
                }));
            }
            self.provisional(now, id, progress);
            self.timers
                .push(Reverse((now + PROGRESS_REFRESH, id, CallTimer::Progress)));
        }
    }

    /// Checks the caller's offer: the caller's media parameters (ports
    /// come from the media plane), or the metric reason of a 488.
    pub(super) fn anchor(
        &mut self,
        flow: Flow,
        msg: &Message,
    ) -> Result<AnchoredMedia, &'static str> {
        let late_offer = msg.body.is_empty();
        let (addr, law, telephone_event, direction) = if late_offer {
            // Placeholders until the ACK brings the caller's answer.
            let law = self.codecs.first().copied().unwrap_or(Law::Alaw);
            (
                SocketAddr::from(([0, 0, 0, 0], 0)),
                law,
                None,
                Direction::SendRecv,
            )
        } else {
            let audio = sdp::parse(&msg.body).map_err(|_| "malformed_sdp")?;
            if audio.port == 0 {
                return Err("no_audio");
            }
            let law = audio.choose(&self.codecs).ok_or("no_common_codec")?;
            let addr = SocketAddr::new(audio.addr, audio.port);
            if self
                .media_refusal(addr, flow.remote.ip(), flow.local.ip())
                .is_some()
            {
                return Err("bad_address");
            }
            (addr, law, audio.telephone_event, audio.direction.answer())
        };
        let session = self.rng.next_u64() >> 2;
        let ip = flow.local.ip();
        Ok(AnchoredMedia {
            ip,
            sdp_ip: self.advertise.unwrap_or(ip),
            // Filled in when the media plane holds them.
            a_port: 0,
            b_port: 0,
            a: Peer {
                addr,
                law,
                telephone_event,
                signalling: Some(flow.remote.ip()),
                browser: flow.transport == Transport::Browser,
            },
            a_direction: direction,
            b: None,
            b_direction: Direction::SendRecv,
            session,
            b_session: session + 1,
            sent: [None; 2],
            digits: String::new(),
            late_offer,
            opened: false,
            offered_in_2xx: [None, None],
        })
    }

    pub(super) fn call_span(&self, id: CallId) -> tracing::Span {
        self.calls
            .get(&id)
            .map_or_else(tracing::Span::none, |c| c.span.clone())
    }
}
