//! Requests inside a call's dialogs (ACK, re-INVITE, INFO, CANCEL, BYE):
//! matched by Call-ID, both tags and the dialog's peer, never by Call-ID
//! alone.

use super::*;

impl Engine {
    /// An ACK: after a late offer, the caller's ACK carries their answer
    /// and the media opens; after our offer in a 2xx to a re-INVITE
    /// without SDP, either side's ACK carries the answer.
    pub(super) fn on_ack(&mut self, now: Instant, source: Flow, msg: &Message) {
        // An ACK gets no answer, so one that is not the dialog's own is
        // dropped (counted): it could carry an SDP answer that moves media.
        // Only the dialog's own ACK ends our 2xx's retransmissions (a
        // stranger's would silence the offer it may carry); one of a
        // dialog gone has nothing left to protect.
        let call_id = match self.match_dialog(source, msg) {
            Ok(c) => c,
            Err("no_dialog") => {
                self.txn.acknowledged(&msg.call_id, msg.cseq);
                return;
            }
            Err(why) => {
                self.metrics.sip_rejected.with_label_values(&[why]).inc();
                return;
            }
        };
        self.txn.acknowledged(&msg.call_id, msg.cseq);
        let Some((_, side)) = self.dialog_side(msg) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let pending = &mut call.media.offered_in_2xx[side.index()];
        if pending
            .as_ref()
            .is_some_and(|(dialog, cseq)| *dialog == msg.call_id && *cseq == msg.cseq)
        {
            *pending = None;
            self.answer_in_ack(call_id, side, msg);
            return;
        }
        if side != Side::A {
            return;
        }
        if !call.media.late_offer || call.media.opened || !call.answered() {
            return;
        }
        let _span = call.span.clone().entered();
        let flow = call.a_leg.flow;
        let answer = self.usable_answer(&msg.body, flow);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some((law, audio)) = answer else {
            warn!("caller's ACK carries no usable SDP answer, hanging up");
            self.metrics
                .sdp_rejected
                .with_label_values(&["ack_answer"])
                .inc();
            self.end_connected(now, call_id, true, true, CallOutcome::BadAnswer);
            return;
        };
        call.media.a = Peer {
            addr: SocketAddr::new(audio.addr, audio.port),
            law,
            telephone_event: audio.telephone_event,
            signalling: Some(call.a_leg.flow.remote.ip()),
            // A browser operator's consultation: the gateway's answer
            // names the port where the media plane ends their leg.
            browser: flow.transport == Transport::Browser,
        };
        call.media.a_direction = audio.direction.answer();
        call.media.opened = true;
        let m = &call.media;
        self.out.push_back(Output::Media(MediaCommand::Open {
            call: call_id,
            ip: m.ip,
            a_port: m.a_port,
            b_port: m.b_port,
            a: m.a.into(),
        }));
        if let Some(b) = m.b {
            let record = self.queues[call.queue.0 as usize].record;
            self.out.push_back(Output::Media(MediaCommand::Bridge {
                call: call_id,
                b: b.into(),
                record,
            }));
        }
        if let Some(flow) = call.pending_flow.take() {
            self.run_flow(now, call_id, flow);
        }
    }

    /// The peer's answer, in its ACK, to the offer our 2xx made to its
    /// re-INVITE without SDP (a phone resuming from hold this way, a
    /// carrier's refresh): a law we offered (the one in use kept when the
    /// answer still has it) at an address media may go to; else the
    /// session goes on as it was (counted:
    /// `sdp_rejected{reason="ack_answer"}`).
    fn answer_in_ack(&mut self, call_id: CallId, side: Side, msg: &Message) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let flow = Self::leg_flow(call, msg, side);
        let current = match side {
            Side::A => Some(call.media.a),
            Side::B => call.media.b,
        };
        let (Some(flow), Some(current)) = (flow, current) else {
            return;
        };
        let prefer: Vec<Law> = std::iter::once(current.law)
            .chain(self.codecs.iter().copied())
            .collect();
        let answer = sdp::parse(&msg.body)
            .ok()
            .filter(|a| a.port != 0 && self.may_send_to(a, flow))
            .and_then(|a| {
                let law = if a.formats.contains(&current.law.payload_type()) {
                    current.law
                } else {
                    a.choose(&prefer)?
                };
                Some((a, law))
            });
        let Some((audio, law)) = answer else {
            warn!(
                side = side.label(),
                "ACK carries no usable answer to our offer; the session goes on as it was"
            );
            self.metrics
                .sdp_rejected
                .with_label_values(&["ack_answer"])
                .inc();
            return;
        };
        let held = audio.on_hold();
        let peer = Peer {
            addr: SocketAddr::new(audio.addr, audio.port),
            law,
            telephone_event: audio.telephone_event,
            ..current
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let _span = call.span.clone().entered();
        call.media.set_peer(side, peer, audio.direction.answer());
        info!(
            side = side.label(),
            held, "session changed by the answer in an ACK"
        );
        self.out.push_back(Output::Media(MediaCommand::Update {
            call: call_id,
            side,
            peer: peer.into(),
            held,
        }));
    }

    /// The flow of the leg `msg` is in, on `side` of `call`: the caller's,
    /// the answered transfer's to a number, or the operator's.
    fn leg_flow(call: &Call, msg: &Message, side: Side) -> Option<Flow> {
        match side {
            Side::A => Some(call.a_leg.flow),
            Side::B => Self::transfer_dialog(call, msg)
                .map(|l| l.flow)
                .or_else(|| call.b.as_ref().map(|b| b.flow)),
        }
    }

    /// Whether an in-dialog request belongs to a dialog of ours: Call-ID,
    /// our tag in To, the peer's tag in From (once we know it), and a source
    /// that is the dialog's peer. `Err` names the refusal (metric label):
    /// `no_dialog` when the Call-ID is unknown, `foreign_dialog` otherwise.
    pub(super) fn match_dialog(&self, source: Flow, msg: &Message) -> Result<CallId, &'static str> {
        let (call_id, on_a) = match (
            self.by_a.get(msg.call_id.as_str()),
            self.by_b.get(msg.call_id.as_str()),
        ) {
            (Some(&c), _) => (c, true),
            (None, Some(&c)) => (c, false),
            (None, None) => return Err("no_dialog"),
        };
        let call = self.calls.get(&call_id).ok_or("no_dialog")?;
        let ok = |local: &str, remote: Option<&str>, peer: Flow| {
            tag_of(local).is_some_and(|t| msg.to_tag.as_deref() == Some(t))
                && remote
                    .and_then(tag_of)
                    .is_none_or(|t| msg.from_tag.as_deref() == Some(t))
                && self.same_peer(peer, source)
        };
        let matched = if on_a {
            ok(
                &call.a_leg.local,
                Some(call.a_leg.remote.as_str()),
                call.a_leg.flow,
            )
        } else {
            let b_legs = call
                .forks
                .iter()
                .chain(&call.b)
                .filter(|b| b.call_id == msg.call_id);
            let transfer = call
                .transfer
                .as_ref()
                .filter(|t| t.call_id == msg.call_id)
                .and_then(|t| t.dialog.as_ref());
            b_legs.into_iter().any(|b| {
                let remote = b.dialog.as_ref().map(|d| d.remote.as_str());
                ok(&b.local, remote, b.flow)
            }) || transfer.is_some_and(|d| {
                let remote = (!d.remote.is_empty()).then_some(d.remote.as_str());
                ok(&d.local, remote, d.flow)
            })
        };
        if matched {
            Ok(call_id)
        } else {
            Err("foreign_dialog")
        }
    }

    /// Why a peer's SDP address (from signalling that came from `source`,
    /// answered on our `local` address) is not one we send media to:
    /// groups, reserved ranges, loopback from afar (`sdp::refused_address`),
    /// or our own media ports (a loop through the node). Counted and
    /// logged; the offer gets 488, an answer is unusable.
    pub(super) fn refused_media(
        &self,
        addr: SocketAddr,
        source: IpAddr,
        local: IpAddr,
    ) -> Option<&'static str> {
        let why = self.media_refusal(addr, source, local)?;
        self.metrics
            .sdp_rejected
            .with_label_values(&["bad_address"])
            .inc();
        Some(why)
    }

    /// An SDP answer from a leg's peer on `flow`, when it has audio in a
    /// codec of ours at an address media may go to (a refused address is
    /// counted).
    pub(super) fn usable_answer(&self, body: &[u8], flow: Flow) -> Option<(Law, sdp::Audio)> {
        sdp::parse(body)
            .ok()
            .filter(|a| a.port != 0)
            .and_then(|a| Some((a.choose(&self.codecs)?, a)))
            .filter(|(_, a)| self.may_send_to(a, flow))
    }

    /// Whether media may go where a peer's SDP on `flow` says (a refused
    /// address is counted). A browser's SDP is the node's own gateway
    /// naming the call's operator port, where it terminates the WebRTC
    /// leg (the browser's own SDP never reaches the engine).
    fn may_send_to(&self, a: &sdp::Audio, flow: Flow) -> bool {
        flow.transport == Transport::Browser
            || self
                .refused_media(
                    SocketAddr::new(a.addr, a.port),
                    flow.remote.ip(),
                    flow.local.ip(),
                )
                .is_none()
    }

    /// [`Self::refused_media`] without counting (the caller counts).
    pub(super) fn media_refusal(
        &self,
        addr: SocketAddr,
        source: IpAddr,
        local: IpAddr,
    ) -> Option<&'static str> {
        let why = sdp::refused_address(addr.ip(), source).or_else(|| {
            let ours = addr.ip() == local || Some(addr.ip()) == self.advertise;
            let in_range = (self.media_range.0..=self.media_range.1).contains(&addr.port());
            // A peer on this host legitimately shares our address.
            (ours && in_range && !source.is_loopback()).then_some("own_address")
        })?;
        warn!(peer = %source, reason = why, "SDP names an address media is never sent to");
        Some(why)
    }

    /// Whether a message on `source` may speak for a dialog (or a request)
    /// on `peer`: the same address, or another address of the same trunk
    /// (carriers answer from several SBCs), over a transport at least as
    /// hard to forge as the leg's ([`transport_speaks_for`]).
    pub(super) fn same_peer(&self, peer: Flow, source: Flow) -> bool {
        let (p, s) = (peer.remote.ip(), source.remote.ip());
        transport_speaks_for(peer.transport, source.transport)
            && (p == s
                || self
                    .trunks
                    .iter()
                    .any(|t| t.peers.contains(&p) && t.peers.contains(&s)))
    }

    /// The call and side an in-dialog request belongs to.
    pub(super) fn dialog_side(&self, msg: &Message) -> Option<(CallId, Side)> {
        if let Some(&c) = self.by_a.get(msg.call_id.as_str()) {
            return Some((c, Side::A));
        }
        let c = *self.by_b.get(msg.call_id.as_str())?;
        // Only the answered operator's dialog, or the answered leg of a
        // transfer to a number, carries media changes.
        let call = self.calls.get(&c)?;
        let answered = call.b.as_ref().is_some_and(|b| b.call_id == msg.call_id)
            || Self::transfer_dialog(call, msg).is_some();
        answered.then_some((c, Side::B))
    }

    /// The answered dialog of `call`'s transfer to a number, when `msg` is
    /// in it (its far end refreshes and changes media like an operator).
    pub(super) fn transfer_dialog<'a>(call: &'a Call, msg: &Message) -> Option<&'a Leg> {
        call.transfer
            .as_ref()
            .filter(|t| t.call_id == msg.call_id && t.invite.is_none())?
            .dialog
            .as_ref()
    }

    /// A re-INVITE or UPDATE: hold, resume, a new address or codec. Each
    /// side negotiates with Centralino alone (the media is anchored), so
    /// the other side never needs a re-INVITE.
    pub(super) fn on_reinvite(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let Some((call_id, side)) = self.dialog_side(msg) else {
            let r = msg.response(481, reason_phrase(481), None);
            self.respond(now, key, &r);
            return;
        };
        // Our own re-INVITE on this dialog still unanswered: a session
        // refresh (the caller's leg or a transfer's) or an attended
        // transfer's rejoin.
        // An UPDATE carrying an offer while our re-INVITE's offer is
        // outstanding is glare too (RFC 3311 §5.2); one without a body
        // (a session refresh) is not.
        let offer = *msg.method() == Method::Invite || !msg.body.is_empty();
        let ours_pending = self.calls.get(&call_id).is_some_and(|c| match side {
            Side::A => offer && c.refreshing,
            Side::B => {
                offer && c.rejoin.as_ref().is_some_and(|r| r.pending)
                    || offer
                        && Self::transfer_dialog(c, msg).is_some()
                        && c.transfer.as_ref().is_some_and(|t| t.refreshing)
            }
        });
        if ours_pending {
            // Glare with our own re-INVITE (RFC 3261 §14.2).
            let r = msg.response(491, reason_phrase(491), None);
            self.respond(now, key, &r);
            return;
        }
        let codecs = self.codecs.clone();
        // The address of a new offer must be one we may send to (the
        // request's source is the dialog's peer: checked before).
        let on_transfer = self
            .calls
            .get(&call_id)
            .and_then(|c| Self::transfer_dialog(c, msg))
            .map(|l| l.flow);
        let leg_flow = self
            .calls
            .get(&call_id)
            .and_then(|c| Self::leg_flow(c, msg, side));
        // A browser's re-INVITE is the node's gateway naming the call's
        // own operator port (where it ends the WebRTC leg).
        let bad_address = sdp::parse(&msg.body).ok().is_some_and(|a| {
            leg_flow.is_some_and(|f| {
                f.transport != Transport::Browser
                    && self
                        .refused_media(SocketAddr::new(a.addr, a.port), f.remote.ip(), f.local.ip())
                        .is_some()
            })
        });
        if (side == Side::A || on_transfer.is_some())
            && session_timer::session_expires(msg)
                .is_some_and(|se| se.interval < session_timer::MIN_SE)
        {
            let mut r = msg.response(422, reason_phrase(422), None);
            r.push("Min-SE", &session_timer::MIN_SE.to_string());
            self.respond(now, key, &r);
            return;
        }
        if bad_address {
            let r = msg.response(488, reason_phrase(488), None);
            self.respond(now, key, &r);
            return;
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let _span = call.span.clone().entered();
        if !msg.body.is_empty() {
            let current = match side {
                Side::A => Some(call.media.a.law),
                Side::B => call.media.b.map(|b| b.law),
            };
            // Keep the law in use when the peer still offers it.
            let prefer: Vec<Law> = current.into_iter().chain(codecs.iter().copied()).collect();
            let parsed = sdp::parse(&msg.body).ok().and_then(|a| {
                let law = if a.formats.contains(&current?.payload_type()) {
                    current?
                } else {
                    a.choose(&prefer)?
                };
                (a.port != 0).then_some((a, law))
            });
            let Some((audio, law)) = parsed else {
                self.metrics
                    .sdp_rejected
                    .with_label_values(&["reinvite"])
                    .inc();
                let r = msg.response(488, reason_phrase(488), None);
                self.respond(now, key, &r);
                return;
            };
            let held = audio.on_hold();
            let peer = Peer {
                addr: SocketAddr::new(audio.addr, audio.port),
                law,
                telephone_event: audio.telephone_event,
                signalling: leg_flow.map(|f| f.remote.ip()),
                browser: leg_flow.is_some_and(|f| f.transport == Transport::Browser),
            };
            call.media.set_peer(side, peer, audio.direction.answer());
            info!(side = side.label(), held, "session changed by re-INVITE");
            self.out.push_back(Output::Media(MediaCommand::Update {
                call: call_id,
                side,
                peer: peer.into(),
                held,
            }));
        }
        // A target refresh: the peer's new Contact for what follows.
        match side {
            Side::A => call.a_leg.refresh_target(msg),
            Side::B => {
                let on_transfer = call
                    .transfer
                    .as_mut()
                    .filter(|t| t.call_id == msg.call_id && t.invite.is_none())
                    .and_then(|t| t.dialog.as_mut());
                let operator = call
                    .b
                    .as_mut()
                    .filter(|b| b.call_id == msg.call_id)
                    .and_then(|b| b.dialog.as_mut());
                if let Some(leg) = on_transfer.or(operator) {
                    leg.refresh_target(msg);
                }
            }
        }
        let mut r = msg.response(200, "OK", None);
        r.push(
            "Contact",
            &dialog::contact(leg_flow.unwrap_or(call.a_leg.flow)),
        );
        // An answer to an offer, or our offer to a re-INVITE without one;
        // an UPDATE without an offer (a session refresh) gets none: a
        // 2xx to UPDATE carries an answer only (RFC 3311 §5.2). Built
        // only when sent: building it stamps the leg's next version.
        if msg.cseq_method == Method::Invite || !msg.body.is_empty() {
            let body = if msg.body.is_empty() {
                // Our offer; the peer's answer comes in the ACK.
                call.media.offered_in_2xx[side.index()] = Some((msg.call_id.to_string(), msg.cseq));
                reoffer(&mut call.media, &codecs, side)
            } else {
                match side {
                    Side::A => a_sdp(&mut call.media, &codecs),
                    Side::B => b_sdp(&mut call.media),
                }
            };
            r.set_body(Some("application/sdp"), body);
        }
        if on_transfer.is_some() {
            self.transfer_refreshed_by_peer(now, call_id, msg, &mut r);
            self.respond(now, key, &r);
            return;
        }
        if side == Side::A {
            // A re-INVITE or UPDATE from the caller refreshes its session
            // (with or without a new interval, RFC 4028 §9).
            if let Some(se) = session_timer::session_expires(msg)
                && (call.session_timer.is_some() || msg.supports("timer"))
            {
                call.session_timer = Some(se.interval.max(session_timer::MIN_SE));
                // Roles change only when the request names one: a
                // refresher refreshing keeps the job.
                if let Some(r) = se.refresher {
                    call.we_refresh = r == session_timer::Refresher::Uas;
                }
            }
            self.session_refreshed(now, call_id, &mut r);
        }
        self.respond(now, key, &r);
    }

    /// SIP INFO: key presses from phones and trunks that do not send
    /// RFC 4733 events (application/dtmf-relay, application/dtmf).
    pub(super) fn on_info(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let r = msg.response(200, "OK", None);
        self.respond(now, key, &r);
        let Some((call_id, side)) = self.dialog_side(msg) else {
            return;
        };
        let ct = msg
            .header("Content-Type")
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        let body = std::str::from_utf8(&msg.body).unwrap_or_default();
        let signal = match ct.as_deref() {
            Some("application/dtmf-relay") => body.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
            }),
            Some("application/dtmf") => Some(body.trim()),
            _ => None,
        };
        let digit = signal.and_then(|s| {
            let mut c = s.chars();
            let d = c.next()?.to_ascii_uppercase();
            (c.next().is_none() && matches!(d, '0'..='9' | '*' | '#' | 'A'..='D')).then_some(d)
        });
        if let Some(d) = digit {
            self.on_digit(now, call_id, side, d, "info");
            self.relay_info(now, call_id, side, msg);
            self.info_as_event(now, call_id, side, d);
        }
    }

    /// A key that came by SIP INFO from `side`, on a connected call whose
    /// other side takes no INFO (or no more) but negotiated
    /// telephone-event: the media plane sends it there as RFC 4733 events
    /// in that side's stream (an operator's INFO-only phone keying
    /// through a business's IVR on a callback), within the bounds of
    /// relayed INFO. A side with neither hears nothing of it.
    fn info_as_event(&mut self, now: Instant, call_id: CallId, side: Side, digit: char) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if call.phase != Phase::Connected || call.consult.is_some() {
            return;
        }
        let to = side.other();
        let (events, info) = takes_keys(call, to);
        // A phone that negotiated events sends its keys that way too (many
        // send both): its INFO converted, the far side would hear each key
        // twice. Only a sender without events is converted for.
        if !events || (info && !call.info_off[to.index()]) || takes_keys(call, side).0 {
            return;
        }
        if !relay_turn(call, now) {
            self.metrics
                .sip_rejected
                .with_label_values(&["info_relay_limited"])
                .inc();
            return;
        }
        debug!(to = to.label(), "key by INFO sent on as telephone events");
        self.out.push_back(Output::Media(MediaCommand::Key {
            call: call_id,
            side: to,
            digit,
        }));
        self.metrics
            .dtmf_converted
            .with_label_values(&["info_to_rfc4733"])
            .inc();
    }

    /// A key pressed by INFO while the call is connected reaches the
    /// other side as it came (an INFO with the same body in the other
    /// dialog): the caller keying an extension or a code to the operator,
    /// the operator's phone sending digits on to the carrier. Keys sent
    /// as RFC 4733 events are relayed by the media plane. Not towards a
    /// browser (its desktop has no INFO), nor during a consultation.
    fn relay_info(&mut self, now: Instant, call_id: CallId, side: Side, msg: &Message) {
        self.key_by_info(
            now,
            call_id,
            side,
            msg.header("Content-Type"),
            msg.body.clone(),
        );
    }

    /// A key that reached us from `side` as an RFC 4733 event, on a
    /// connected call whose other side negotiated no telephone-event (the
    /// media plane cannot pass it on) but takes INFO: sent to it by INFO
    /// (`application/dtmf-relay`), within the same bounds as relayed INFO.
    /// A phone without either hears nothing of it, as before.
    pub(super) fn event_by_info(&mut self, now: Instant, call_id: CallId, side: Side, digit: char) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let (events, info) = takes_keys(call, side.other());
        if events || !info {
            return;
        }
        let body = format!("Signal={digit}\r\nDuration=160\r\n").into_bytes();
        if self.key_by_info(now, call_id, side, Some("application/dtmf-relay"), body) {
            self.metrics
                .dtmf_converted
                .with_label_values(&["rfc4733_to_info"])
                .inc();
        }
    }

    /// Sends a key from `side` to the other side by INFO with this body;
    /// whether it went.
    fn key_by_info(
        &mut self,
        now: Instant,
        call_id: CallId,
        side: Side,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> bool {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return false;
        };
        if call.phase != Phase::Connected || call.consult.is_some() {
            return false;
        }
        let to = side.other();
        // Never to a side that did not say it takes INFO (RFC 6086 §4.2).
        let (_, takes_info) = takes_keys(call, to);
        if takes_info && !call.info_off[to.index()] && !relay_turn(call, now) {
            self.metrics
                .sip_rejected
                .with_label_values(&["info_relay_limited"])
                .inc();
            return false;
        }
        if !takes_info || call.info_off[to.index()] {
            return false;
        }
        let other = match side {
            Side::A => match call.transfer.as_mut() {
                Some(t) => t.dialog.as_mut(),
                None => call.b.as_mut().and_then(|b| b.dialog.as_mut()),
            },
            Side::B => Some(&mut call.a_leg),
        };
        let Some(leg) = other.filter(|l| l.flow.transport != Transport::Browser) else {
            return false;
        };
        leg.cseq += 1;
        let leg = leg.clone();
        let mut info = self.in_dialog(&leg, Method::Info);
        info.set_body(content_type, body);
        debug!(from = side.label(), "key press relayed by INFO");
        let dialog = leg.call_id.to_string();
        self.send_request(
            now,
            leg.flow,
            info,
            ClientRef::InfoRelay(call_id, to, dialog),
        );
        true
    }

    /// The final answer to a key press relayed by INFO to `to` (`None`:
    /// none came), counted; a side that says the dialog is gone (481,
    /// 408, RFC 5057 §5.1: the call itself ends by its BYE or its session
    /// timer, not by a key) or that it does not take INFO (405, 415, 469,
    /// 501) is sent no more.
    pub(super) fn info_relay_answered(
        &mut self,
        call_id: CallId,
        to: Side,
        dialog: &str,
        code: Option<u16>,
    ) {
        let outcome = match code {
            Some(200..=299) => "delivered",
            None | Some(408 | 481) => "gone",
            Some(405 | 415 | 469 | 501) => "not_taken",
            Some(_) => "refused",
        };
        if matches!(outcome, "gone" | "not_taken")
            && let Some(call) = self.calls.get_mut(&call_id)
        {
            // Only that side's leg as it is now: a late answer from the
            // phone of an operator who has since left the call says
            // nothing of the next one's.
            let current = match to {
                Side::A => Some(call.a_leg.call_id.as_str()),
                Side::B => match &call.transfer {
                    Some(t) => t.dialog.as_ref().map(|d| d.call_id.as_str()),
                    None => call
                        .b
                        .as_ref()
                        .and_then(|b| b.dialog.as_ref())
                        .map(|d| d.call_id.as_str()),
                },
            };
            if current == Some(dialog) {
                call.info_off[to.index()] = true;
                info!(
                    to = to.label(),
                    outcome, "keys by INFO no longer relayed to that side"
                );
            }
        }
        self.metrics
            .info_relayed
            .with_label_values(&[outcome])
            .inc();
    }

    pub(super) fn on_cancel(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let invite_key = TxKey {
            method: Method::Invite,
            ..TxKey::of(msg)
        };
        if !self.txn.has_server(&invite_key) {
            let r = msg.response(481, reason_phrase(481), None);
            self.respond(now, key, &r);
            return;
        }
        let r = msg.response(200, "OK", None);
        self.respond(now, key, &r);
        if self.txn.server_is_final(&invite_key) {
            return;
        }
        if let Some(&call_id) = self.by_a.get(msg.call_id.as_str()) {
            self.end_unanswered(now, call_id, 487, CallOutcome::Cancelled, true);
        }
    }

    pub(super) fn on_bye(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let from_a = self.by_a.get(msg.call_id.as_str()).copied();
        let from_b = self.by_b.get(msg.call_id.as_str()).copied();
        let Some(call_id) = from_a.or(from_b) else {
            let r = msg.response(481, reason_phrase(481), None);
            self.respond(now, key, &r);
            return;
        };
        let r = msg.response(200, "OK", None);
        self.respond(now, key, &r);
        let phase = self.calls.get(&call_id).map(|c| c.phase);
        match (phase, from_a.is_some()) {
            (Some(Phase::Connected), true) => {
                self.end_connected(now, call_id, false, true, CallOutcome::CallerHangup);
            }
            (Some(Phase::Connected), false) => {
                self.end_connected(now, call_id, true, false, CallOutcome::AgentHangup);
            }
            // BYE in an early dialog: the caller gave up (as with CANCEL).
            (Some(_), true) => {
                let answered = self.calls.get(&call_id).is_some_and(|c| c.answered());
                let outcome = if answered {
                    CallOutcome::Abandoned
                } else {
                    CallOutcome::Cancelled
                };
                self.end_unanswered(now, call_id, 487, outcome, true);
            }
            // The operator's phone ended its early dialog: offer failed.
            (Some(_), false) => {
                let b_call_id = msg.call_id.clone();
                self.b_leg_failed(
                    now,
                    call_id,
                    |b| b.call_id == b_call_id,
                    OfferOutcome::Rejected,
                );
            }
            (None, _) => {}
        }
    }

    pub(super) fn on_no_ack(&mut self, now: Instant, a_call_id: &str) {
        if self.phone_monitor_no_ack(now, a_call_id) {
            return;
        }
        if let Some(&call_id) = self.by_a.get(a_call_id) {
            warn!("caller never acknowledged the answer, hanging up");
            if self.calls.get(&call_id).map(|c| c.phase) == Some(Phase::Connected) {
                self.end_connected(now, call_id, true, true, CallOutcome::NoAck);
            } else {
                self.end_unanswered(now, call_id, 408, CallOutcome::NoAck, false);
            }
        }
    }

    pub(super) fn send_bye(&mut self, now: Instant, leg: &mut Leg) {
        leg.cseq += 1;
        let bye = self.in_dialog(leg, Method::Bye);
        self.send_request(now, leg.flow, bye, ClientRef::Other);
    }

    /// A request inside `leg`'s dialog with its current CSeq: to its
    /// remote target (its flow's address when it gave none), along its
    /// route set.
    pub(super) fn in_dialog(&mut self, leg: &Leg, method: Method) -> Message {
        let via = self.via(leg.flow);
        leg.request(method, via)
    }

    /// The ACK for a 2xx (a request of its own, §13.2.2.4).
    pub(super) fn send_ack(&mut self, leg: &Leg, resp: &Message) {
        let via = self.via(leg.flow);
        let ack = leg.ack(via, resp);
        self.send_stateless(leg.flow, &ack);
    }
}

/// Most keys relayed by INFO on one call, and the least time between two:
/// people key at most a few digits a second.
const INFO_RELAYS_MOST: u16 = 256;
const INFO_RELAY_SPACING: Duration = Duration::from_millis(80);

/// How `to`'s side of `call` takes keys: as RFC 4733 events (it
/// negotiated telephone-event), by SIP INFO (its `Allow` listed INFO).
fn takes_keys(call: &Call, to: Side) -> (bool, bool) {
    match to {
        Side::A => (call.media.a.telephone_event.is_some(), call.peer_info),
        Side::B => (
            call.media.b.is_some_and(|b| b.telephone_event.is_some()),
            call.b_info,
        ),
    }
}

/// Takes one of `call`'s turns of keys passed on at `now`: at most
/// [`INFO_RELAYS_MOST`] a call, [`INFO_RELAY_SPACING`] apart (people key
/// a few digits a second); `false` past them.
fn relay_turn(call: &mut Call, now: Instant) -> bool {
    let (relayed, last) = call.info_relays;
    if relayed >= INFO_RELAYS_MOST
        || last.is_some_and(|t| now.saturating_duration_since(t) < INFO_RELAY_SPACING)
    {
        return false;
    }
    call.info_relays = (relayed + 1, Some(now));
    true
}

/// The `tag` parameter of a From/To value the node already parsed (a
/// leg's: its own, or the peer's that the guard accepted).
pub(super) fn tag_of(header: &str) -> Option<&str> {
    uri::name_addr_param(header, "tag").flatten()
}

/// Whether a message that came over `source` may speak for a leg set up
/// over `leg`. A leg over TLS (chosen because it authenticates and hides
/// the dialog's identifiers) takes in-dialog messages over TLS only: a
/// UDP source address is forged with one datagram, and an ACK or a
/// re-INVITE needs no reply to do harm (move media, end a call). A
/// browser's leg only through the node's own gateway. A leg over UDP or
/// TCP takes either: a peer sends a request too large for UDP over TCP
/// and the small ones that follow (ACK, BYE) over UDP (RFC 3261 §18.1.1),
/// and plain TCP hides nothing UDP does not.
pub(super) fn transport_speaks_for(leg: Transport, source: Transport) -> bool {
    match leg {
        Transport::Udp | Transport::Tcp => source != Transport::Browser,
        Transport::Tls => source == Transport::Tls,
        Transport::Browser => source == Transport::Browser,
    }
}
