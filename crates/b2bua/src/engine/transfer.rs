//! IVR transfers to an external number through the tenant's outbound
//! trunk (dial plan applied), falling back to the flow when they fail.

use super::*;

impl Engine {
    /// Places the INVITE of an IVR transfer through the caller's tenant's
    /// outbound trunk (from the operator-side port). `false` when there is
    /// no trunk to leave through.
    pub(super) fn start_transfer(&mut self, now: Instant, id: CallId, number: &str) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let tenant = call.tenant;
        let trunk = self
            .trunks
            .iter()
            .position(|t| t.dials_for(tenant))
            .map(TrunkId::at);
        let Some((mut leg, mut inv, _)) =
            trunk.and_then(|t| self.citizen_leg(t, number, "transfer", None))
        else {
            warn!("IVR transfer: no outbound trunk for this tenant");
            return false;
        };
        // The citizen leg's INVITE offers a session timer (RFC 4028): the
        // far end's 2xx says who refreshes, and this leg keeps its own
        // (`transfer_session_armed`), apart from the caller's.
        let (flow, call_id) = (leg.flow, leg.call_id.to_string());
        inv.push("Contact", &dialog::contact(flow));
        inv.push_shared("User-Agent", self.user_agent.clone());
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        // A new dialog on the operator's side: its versions start afresh.
        call.media.sent[Side::B.index()] = None;
        let (port, session) = (call.media.b_port, call.media.session + 1);
        let body = sdp_offer(&mut call.media, &self.codecs, Side::B, port, session);
        inv.set_body(Some("application/sdp"), body);
        info!(number = %Masked(number), "IVR transfer: dialling");
        let key = self.send_request(now, flow, inv, ClientRef::Transfer(id));
        self.by_b.insert(call_id.clone(), id);
        if let Some(call) = self.calls.get_mut(&id) {
            // Our side of the dialog-to-be (local tag, flow); the far end's
            // part arrives with its answer.
            leg.remote.clear();
            leg.remote_target.clear();
            call.transfer = Some(TransferLeg {
                call_id,
                invite: Some(key),
                dialog: Some(leg),
                by_operator: false,
                session: None,
                we_refresh: false,
                session_step: 0,
                peer_update: false,
                refreshing: false,
                refresh_tries: RefreshTries::default(),
                prack: Pracked::default(),
                early_media: None,
            });
        }
        true
    }

    /// The transfer's far end did not answer: the flow's fallback, or for
    /// an operator's transfer the caller's queue again (no dead end).
    pub(super) fn transfer_failed(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let t = call.transfer.take();
        if let Some(t) = &t {
            self.by_b.remove(t.call_id.as_str());
            if t.early_media.is_some() {
                // The caller heard the far network: back to our music and
                // prompts.
                call.media.b = None;
                self.out
                    .push_back(Output::Media(MediaCommand::Unbridge { call: id }));
            }
        }
        if t.is_some_and(|t| t.by_operator) {
            let (queue, spec) = (call.queue, (*call.spec).clone());
            info!("the number did not answer: the caller waits in their queue again");
            self.enter_queue(now, id, queue, &spec);
            return;
        }
        let Some(mut run) = call.run.take() else {
            return;
        };
        let actions = run.transfer_result(now, &facts!(self, now));
        call.run = Some(run);
        self.flow_actions(now, id, actions);
    }

    /// The far network's early media on a transfer's leg (an 18x with
    /// SDP: its ringback, "the number you called is unreachable"): the
    /// caller hears it until the answer, or until the failure takes them
    /// back (`Unbridge`). Only at an address media may go to; a new
    /// address moves it.
    fn transfer_early_media(&mut self, id: CallId, msg: &Message) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let Some(t) = call.transfer.as_ref().filter(|t| t.invite.is_some()) else {
            return;
        };
        let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
        let early = t.early_media;
        let Some((peer, _)) = b_answer(msg, &self.codecs, flow.remote.ip()) else {
            return;
        };
        if early == Some(peer.addr)
            || self
                .refused_media(peer.addr, flow.remote.ip(), flow.local.ip())
                .is_some()
        {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(t) = call.transfer.as_mut() {
            t.early_media = Some(peer.addr);
        }
        call.media.b = Some(peer);
        self.out.push_back(Output::Media(MediaCommand::Bridge {
            call: id,
            b: peer.into(),
            record: false,
        }));
        if early.is_none() {
            info!("transfer: the caller hears the far network's early media");
            self.metrics.transfer_early_media.inc();
        }
    }

    /// A response to an IVR transfer's INVITE.
    pub(super) fn on_transfer_response(
        &mut self,
        now: Instant,
        key: TxKey,
        id: CallId,
        msg: &Message,
    ) {
        let code = msg.code();
        if code < 200 {
            let due = self.calls.get_mut(&id).and_then(|c| {
                let flow = c.a_leg.flow;
                let t = c.transfer.as_mut()?;
                let (local, flow) = t
                    .dialog
                    .as_ref()
                    .map_or((String::new(), flow), |l| (l.local.clone(), l.flow));
                Some((t.prack.due(msg), local, flow))
            });
            if !self.take_provisional(now, due, msg) {
                return;
            }
            if code > 100 && !msg.body.is_empty() {
                self.transfer_early_media(id, msg);
            }
            return;
        }
        self.client.remove(&key);
        let _span = self.call_span(id).entered();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(t) = call.transfer.as_mut() else {
            return;
        };
        t.invite = None;
        if matches!(code, 401 | 407) {
            let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
            if let Some(retry) =
                self.authenticated_retry(now, &key, flow, msg, ClientRef::Transfer(id))
            {
                if let Some(t) = self.calls.get_mut(&id).and_then(|c| c.transfer.as_mut()) {
                    t.invite = Some(retry);
                    // A new INVITE: its reliable responses start afresh.
                    t.prack = Pracked::default();
                }
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(t) = call.transfer.as_mut() else {
            return;
        };
        if !(200..300).contains(&code) {
            info!(code, "IVR transfer not answered");
            self.transfer_failed(now, id);
            return;
        }
        let local = t
            .dialog
            .as_ref()
            .map(|l| l.local.clone())
            .unwrap_or_default();
        let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
        let mut leg = Leg::from_response(&local, flow, msg);
        leg.cseq = leg.cseq.max(t.prack.cseq);
        t.dialog = Some(leg.clone());
        t.peer_update = allows_update(msg);
        if let Some(se) = session_timer::session_expires(msg) {
            // We offered the timer: in the far end's answer `uac` is us.
            t.session = Some(se.interval.max(session_timer::MIN_SE));
            t.we_refresh = se.refresher != Some(session_timer::Refresher::Uas);
        }
        // A 2xx without SDP confirms the answer its early dialog's
        // reliable 1xx carried (RFC 3261 §13.2.1, RFC 3262).
        let early = t
            .prack
            .settle(msg.to_tag.as_deref())
            .filter(|_| msg.body.is_empty())
            .map(|body| {
                let mut m = msg.clone();
                m.body = body;
                m
            });
        let peer = b_answer(
            early.as_ref().unwrap_or(msg),
            &self.codecs,
            flow.remote.ip(),
        )
        .filter(|(p, _)| {
            self.refused_media(p.addr, flow.remote.ip(), flow.local.ip())
                .is_none()
        });
        self.send_ack_kept(now, &leg, msg);
        let Some((peer, direction)) = peer else {
            warn!("IVR transfer: the far end's SDP is unusable");
            self.end_connected(now, id, true, true, CallOutcome::BadAnswer);
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.media.b = Some(peer);
        call.media.b_direction = direction;
        // The number's leg is a dialog of its own (its SDP versions went
        // on from our offer to it), asked afresh whether it takes INFO.
        call.media.b_session = call.media.session + 1;
        call.info_off[Side::B.index()] = false;
        call.b_info = allows(msg, "INFO");
        call.phase = Phase::Connected;
        call.connected = Some((now, "transfer".to_owned()));
        // The queue log keeps the transfer (an IVR transfer never entered a
        // queue: the queue is empty).
        let record = Record::Queue {
            call: call.record_id.clone(),
            at_ms: self.unix_ms_at(now),
            queue: String::new(),
            event: QueueEvent::Transfer,
            agent: None,
            position: None,
            wait_ms: None,
        };
        self.out.push_back(Output::Record(record));
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        self.out.push_back(Output::Media(MediaCommand::Bridge {
            call: id,
            b: peer.into(),
            record: false,
        }));
        if let Some(flow) = call.run.as_ref().map(|r| r.flow().to_owned()) {
            self.metrics
                .flow_calls
                .with_label_values(&[&flow, "transferred"])
                .inc();
        }
        self.transfer_session_armed(now, id);
        info!("IVR transfer answered");
    }

    /// The transfer leg's session was established or refreshed now: its
    /// expiry is armed anew (older timers lapse as stale), and our next
    /// refresh at half the interval when it is ours (RFC 4028 §10).
    pub(super) fn transfer_session_armed(&mut self, now: Instant, id: CallId) {
        let Some(t) = self.calls.get_mut(&id).and_then(|c| c.transfer.as_mut()) else {
            return;
        };
        let Some(interval) = t.session else {
            return;
        };
        t.session_step += 1;
        let step = t.session_step;
        let lasts = if t.we_refresh {
            Duration::from_secs(u64::from(interval))
        } else {
            session_timer::expiry(interval)
        };
        self.timers
            .push(Reverse((now + lasts, id, CallTimer::TransferExpired(step))));
        if t.we_refresh {
            self.timers.push(Reverse((
                now + Duration::from_secs(u64::from(interval / 2)),
                id,
                CallTimer::TransferRefresh(step),
            )));
        }
    }

    /// The current transfer leg's session (answered, with a timer) whose
    /// timers carry `step`.
    fn transfer_session(&self, id: CallId, step: u32) -> Option<&TransferLeg> {
        self.calls
            .get(&id)?
            .transfer
            .as_ref()
            .filter(|t| t.invite.is_none() && t.session.is_some() && t.session_step == step)
    }

    pub(super) fn transfer_session_expired(&mut self, now: Instant, id: CallId, step: u32) {
        if self.transfer_session(id, step).is_some() {
            warn!("session timer expired: the transfer's far end stopped refreshing");
            self.transfer_session_gone(now, id, "expired");
        }
    }

    pub(super) fn transfer_refresh_due(&mut self, now: Instant, id: CallId, step: u32) {
        if self
            .transfer_session(id, step)
            .is_some_and(|t| t.we_refresh)
        {
            self.send_transfer_refresh(now, id);
        }
    }

    /// The transfer leg's session is gone (expired, or our refresh was
    /// answered 408/481 or not at all): the call ends on both sides.
    pub(super) fn transfer_session_gone(&mut self, now: Instant, id: CallId, why: &'static str) {
        self.metrics.session_timer_expired.inc();
        if why != "expired" {
            self.metrics
                .session_refreshes
                .with_label_values(&[why])
                .inc();
        }
        self.end_connected(now, id, true, true, CallOutcome::SessionExpired);
    }

    /// Refreshes the transfer leg: UPDATE without a body when the far end
    /// allows it, else a re-INVITE offering the same session.
    fn send_transfer_refresh(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(t) = call.transfer.as_ref() else {
            return;
        };
        // Only a re-INVITE carries our SDP (building it stamps the leg's
        // next version: never for a body-less UPDATE).
        let body = (!t.peer_update).then(|| b_sdp(&mut call.media));
        let Some(t) = call.transfer.as_mut() else {
            return;
        };
        let (Some(interval), Some(leg)) = (t.session, t.dialog.as_mut()) else {
            return;
        };
        let method = if t.peer_update {
            Method::Update
        } else {
            Method::Invite
        };
        leg.cseq += 1;
        let leg = leg.clone();
        t.refreshing = method == Method::Invite;
        let min_se = t.refresh_tries.min_se;
        let mut req = self.in_dialog(&leg, method);
        req.push("Contact", &dialog::contact(leg.flow));
        req.push("Supported", "timer");
        req.push("Session-Expires", &format!("{interval};refresher=uac"));
        req.push("Min-SE", &min_se.to_string());
        if let Some(body) = body {
            req.set_body(Some("application/sdp"), body);
        }
        self.send_request(now, leg.flow, req, ClientRef::TransferRefresh(id));
    }

    /// The far end's answer to our refresh of the transfer leg, read as
    /// for the caller's (`refresh_answer`).
    pub(super) fn on_transfer_refresh_response(&mut self, now: Instant, id: CallId, msg: &Message) {
        let dice = self.rng.next_u64();
        let Some(t) = self.calls.get_mut(&id).and_then(|c| c.transfer.as_mut()) else {
            return;
        };
        t.refreshing = false;
        if (200..300).contains(&msg.code())
            && let Some(leg) = t.dialog.clone().filter(|l| !l.answers(msg))
        {
            // Another dialog's 2xx: as for the caller's leg.
            let wait = t.refresh_tries.retry_in();
            let step = t.session_step;
            self.refresh_not_ours(now, &leg, msg);
            self.timers
                .push(Reverse((now + wait, id, CallTimer::TransferRefresh(step))));
            return;
        }
        let answer = refresh_answer(
            msg,
            &mut t.session,
            &mut t.we_refresh,
            &mut t.peer_update,
            &mut t.refresh_tries,
        );
        // Glare: a random 2.1–4 s (we chose this leg's Call-ID).
        let retry_in = match answer {
            RefreshAnswer::Retry if msg.code() == 491 => Some(t.refresh_tries.glare_in(dice, true)),
            RefreshAnswer::Retry => Some(t.refresh_tries.retry_in()),
            _ => None,
        };
        let step = t.session_step;
        match answer {
            RefreshAnswer::Refreshed => {
                if let Some(leg) = t.dialog.as_mut() {
                    leg.refresh_target(msg);
                }
                let leg = t.dialog.clone();
                if let Some(leg) = leg.filter(|_| msg.cseq_method == Method::Invite) {
                    self.send_ack_kept(now, &leg, msg);
                    self.refresh_answer_media(id, Side::B, leg.flow, msg);
                }
                self.transfer_session_armed(now, id);
            }
            RefreshAnswer::Again(_) => self.send_transfer_refresh(now, id),
            RefreshAnswer::Gone => {
                warn!(
                    code = msg.code(),
                    "the transfer leg's refresh answered: the session is gone"
                );
                self.transfer_session_gone(now, id, "gone");
                return;
            }
            RefreshAnswer::Retry => self.timers.push(Reverse((
                now + retry_in.unwrap_or(REFRESH_RETRY),
                id,
                CallTimer::TransferRefresh(step),
            ))),
        }
        self.metrics
            .session_refreshes
            .with_label_values(&[answer.label()])
            .inc();
    }

    /// A re-INVITE or UPDATE from the transfer's far end refreshes its
    /// session (RFC 4028 §9): `r`, our 2xx, says who refreshes next.
    pub(super) fn transfer_refreshed_by_peer(
        &mut self,
        now: Instant,
        id: CallId,
        msg: &Message,
        r: &mut Message,
    ) {
        let Some(t) = self.calls.get_mut(&id).and_then(|c| c.transfer.as_mut()) else {
            return;
        };
        if let Some(se) = session_timer::session_expires(msg)
            && (t.session.is_some() || msg.supports("timer"))
        {
            t.session = Some(se.interval.max(session_timer::MIN_SE));
            if let Some(who) = se.refresher {
                // In our answer to its request, `uas` is us.
                t.we_refresh = who == session_timer::Refresher::Uas;
            }
        }
        let Some(interval) = t.session else {
            return;
        };
        if t.we_refresh {
            r.push("Session-Expires", &format!("{interval};refresher=uas"));
        } else {
            r.push("Session-Expires", &format!("{interval};refresher=uac"));
            r.push("Require", "timer");
        }
        self.transfer_session_armed(now, id);
    }
}
