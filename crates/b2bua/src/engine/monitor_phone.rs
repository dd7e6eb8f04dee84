//! Supervisors listening in from a SIP phone: they dial `*7` (listen),
//! `*8` (whisper) or `*9` (barge) followed by the operator's username.
//! The phone must answer a digest challenge as one of the SIP accounts its
//! firm lists in `supervisor_phones`, and the operator must be of that
//! firm and talking; then the node answers with a port of its own and the
//! media plane mixes as for a browser (`centralino_media::monitor`). Either
//! side's BYE ends it; so does the end of the operator's conversation.
//! Only internal: a feature code never reaches a trunk.

use super::*;
use centralino_media::monitor::MonitorMode;
use centralino_sip::registrar::Auth;

use super::dialogs::{tag_of, transport_speaks_for};

/// A supervisor's phone on a call.
#[derive(Debug)]
pub(super) struct PhoneMonitor {
    /// The call listened to.
    pub(super) call: CallId,
    /// Their INVITE's server transaction, until answered.
    pub(super) key: TxKey,
    pub(super) invite: Box<Message>,
    /// Our dialog with the phone (we are its UAS).
    pub(super) leg: Leg,
    /// Their media and what they asked to do.
    pub(super) peer: Peer,
    pub(super) mode: MonitorMode,
    /// The supervisor's name on the call (`phone:USER`).
    pub(super) supervisor: String,
    pub(super) answered: bool,
    /// What our SDP to the phone names (address, port, `o=` session), once
    /// answered, and the digest and version of the last one sent: a
    /// re-INVITE gets it again, in the direction its offer asks
    /// (`answer::stamp`).
    pub(super) ours: Option<(IpAddr, u16, u64)>,
    pub(super) sent: Option<(u64, u64)>,
}

/// The feature code of a Request-URI: the mode and the operator.
pub(super) fn feature_code(msg: &Message) -> Option<(MonitorMode, String)> {
    let user = uri::user(msg.request_uri()?)?;
    // Phones write the star as it is or escaped (RFC 3261 §25: `*` is
    // unreserved, some phones escape it anyway).
    let rest = user
        .strip_prefix('*')
        .or_else(|| user.strip_prefix("%2A"))
        .or_else(|| user.strip_prefix("%2a"))?;
    let mut chars = rest.chars();
    let mode = match chars.next()? {
        '7' => MonitorMode::Listen,
        '8' => MonitorMode::Whisper,
        '9' => MonitorMode::Barge,
        _ => return None,
    };
    let agent = chars.as_str();
    (!agent.is_empty() && agent.len() <= 64).then(|| (mode, agent.to_owned()))
}

impl Engine {
    /// A phone's INVITE with a feature code (`precheck_invite` let it
    /// through for this): challenged, checked, answered once the plane
    /// holds a port for it.
    pub(super) fn phone_monitor_invite(
        &mut self,
        now: Instant,
        flow: Flow,
        msg: Box<Message>,
        mode: MonitorMode,
        agent: String,
    ) {
        let key = TxKey::of(&msg);
        let refuse = |this: &mut Self, code: u16, reason: &'static str| {
            this.metrics.sip_rejected.with_label_values(&[reason]).inc();
            let r = msg.response(code, reason_phrase(code), Some("mon"));
            this.respond(now, &key, &r);
        };
        let source = flow.remote.ip();
        let from = msg
            .header("From")
            .and_then(uri::parse_name_addr)
            .and_then(|n| uri::user(n.uri).map(str::to_owned))
            .unwrap_or_default();
        // The registrar's digest and its throttle: guesses here count as
        // REGISTER's do, and a banned source or user is refused unheard.
        let user = match self.registrar.authenticate(now, flow, &msg, &from) {
            Auth::Ok(user) => user,
            Auth::Challenge(r) => {
                self.respond(now, &key, &r);
                return;
            }
            Auth::Refused => {
                warn!(peer = %source, "a supervisor's INVITE with wrong credentials refused");
                refuse(self, 403, "monitor_auth_failed");
                self.publish_bans();
                return;
            }
            Auth::Malformed => return refuse(self, 400, "malformed_authorization"),
        };
        // A Call-ID that is a call's (or another dialog's) would let this
        // dialog's requests speak for that call: refused.
        if self.by_a.contains_key(msg.call_id.as_str())
            || self.by_b.contains_key(msg.call_id.as_str())
            || self.phone_monitors.contains_key(msg.call_id.as_str())
        {
            warn!(user = %user, "a supervisor's INVITE reusing a dialog's Call-ID refused");
            return refuse(self, 482, "monitor_call_id_in_use");
        }
        let Some(&tenant) = self.supervisor_phones.get(&user) else {
            warn!(user = %user, "a feature code from an account that is no supervisor's phone refused");
            return refuse(self, 403, "monitor_not_allowed");
        };
        let same_firm = self
            .agent_ids
            .get(&agent)
            .is_some_and(|&id| self.router.agent(id).attributes.tenant == tenant.0 as u16);
        if !same_firm {
            // Another firm's operator is as unknown as a missing one.
            return refuse(self, 404, "monitor_unknown_operator");
        }
        let Ok(audio) = sdp::parse(&msg.body) else {
            return refuse(self, 488, "monitor_no_offer");
        };
        let supervisor = format!("phone:{user}");
        let firm = self.tenant_names.get(tenant.index()).cloned();
        let target =
            match self.monitor_start(&agent, &supervisor, firm.as_deref().or(Some("")), mode) {
                Ok(t) => t,
                Err(MonitorError::Unknown) => return refuse(self, 404, "monitor_unknown_operator"),
                Err(MonitorError::Taken) => return refuse(self, 486, "monitor_taken"),
                Err(MonitorError::OtherFirm) => return refuse(self, 403, "monitor_not_allowed"),
                Err(_) => return refuse(self, 480, "monitor_not_talking"),
            };
        let peer_addr = SocketAddr::new(audio.addr, audio.port);
        let law = audio.choose(&target.laws);
        let refused = audio.port == 0
            || self
                .refused_media(peer_addr, source, flow.local.ip())
                .is_some();
        let (Some(law), false) = (law, refused) else {
            self.monitor_failed(target.call);
            return refuse(self, 488, "monitor_bad_offer");
        };
        let trying = msg.response(100, "Trying", None);
        self.respond(now, &key, &trying);
        let tag = self.token();
        let leg = Leg::from_request(&msg, &tag, flow);
        info!(call = %target.call, supervisor = %supervisor, operator = %agent, mode = mode.label(), "a supervisor's phone asks to join the call");
        // Their own earlier dial-in on this call, if any, ends here.
        self.end_phone_monitor(now, target.call);
        self.phone_monitors.insert(
            msg.call_id.to_string(),
            PhoneMonitor {
                call: target.call,
                key,
                peer: Peer {
                    addr: peer_addr,
                    law,
                    telephone_event: audio.telephone_event,
                    signalling: Some(source),
                    browser: false,
                },
                invite: msg,
                leg,
                mode,
                supervisor,
                answered: false,
                ours: None,
                sent: None,
            },
        );
        self.out.push_back(Output::Media(MediaCommand::MonitorPort {
            call: target.call,
        }));
    }

    /// The plane answered for a supervisor's phone: 200 with our SDP and
    /// their leg on the call, or 503.
    pub(super) fn monitor_port(&mut self, now: Instant, call_id: CallId, port: Option<u16>) {
        let Some(dialog) = self
            .phone_monitors
            .iter()
            .find(|(_, m)| m.call == call_id && !m.answered)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let sdp_ip = self.calls.get(&call_id).map(|c| c.media.sdp_ip);
        let (Some(port), Some(sdp_ip)) = (port, sdp_ip) else {
            if let Some(m) = self.phone_monitors.remove(&dialog) {
                self.monitor_failed(call_id);
                self.metrics
                    .sip_rejected
                    .with_label_values(&["monitor_no_port"])
                    .inc();
                let r = m.invite.response(503, reason_phrase(503), Some("mon"));
                self.respond(now, &m.key, &r);
            }
            return;
        };
        let session = self.rng.next_u64() >> 2;
        let Some(m) = self.phone_monitors.get_mut(&dialog) else {
            return;
        };
        m.answered = true;
        let tag = tag_of(&m.leg.local).unwrap_or_default().to_owned();
        let mut ok = m.invite.response(200, "OK", Some(&tag));
        ok.push("Contact", &dialog::contact(m.leg.flow));
        m.ours = Some((sdp_ip, port, session));
        let answer = phone_answer(m, Direction::SendRecv);
        ok.set_body(Some("application/sdp"), answer);
        let (key, peer, mode) = (m.key.clone(), m.peer, m.mode);
        self.respond(now, &key, &ok);
        self.monitor_joined_with(now, call_id, Some(peer.into()));
        debug!(call = %call_id, mode = mode.label(), "supervisor's phone answered");
    }

    /// A supervisor's phone pressed a key: `1` listen, `2` whisper, `3`
    /// barge (other keys do nothing). Counted and in the queue log as any
    /// change of mode.
    pub(super) fn monitor_digit(&mut self, now: Instant, call_id: CallId, digit: char) {
        let mode = match digit {
            '1' => MonitorMode::Listen,
            '2' => MonitorMode::Whisper,
            '3' => MonitorMode::Barge,
            _ => return,
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(m) = call
            .monitor
            .as_mut()
            .filter(|m| m.joined && m.supervisor.starts_with("phone:") && m.mode != mode)
        else {
            return;
        };
        m.mode = mode;
        let who = format!("{}:{}:{}", m.supervisor, mode.label(), call.record_id);
        let operator = call.b.as_ref().and_then(BLeg::agent);
        info!(call = %call_id, mode = mode.label(), "the supervisor's phone changed mode");
        self.metrics
            .monitors
            .with_label_values(&[mode.label()])
            .inc();
        self.out.push_back(Output::Media(MediaCommand::Monitor {
            call: call_id,
            mode: Some(mode),
            phone: None,
        }));
        if let Some(agent) = operator {
            self.agent_event(now, agent, "monitor", Some(who));
        }
        if let Some(pm) = self.phone_monitors.values_mut().find(|p| p.call == call_id) {
            pm.mode = mode;
        }
    }

    /// A BYE from a supervisor's phone: they leave the call. `false`: not
    /// one of theirs.
    pub(super) fn phone_monitor_bye(&mut self, now: Instant, key: &TxKey, msg: &Message) -> bool {
        let Some(m) = self.phone_monitors.remove(msg.call_id.as_str()) else {
            return false;
        };
        let r = msg.response(200, "OK", None);
        self.respond(now, key, &r);
        info!(call = %m.call, supervisor = %m.supervisor, "the supervisor's phone left the call");
        self.phone_supervisor_off(now, &m, "left");
        true
    }

    /// The conversation a supervisor's phone listens to is over (the call
    /// ended, the operator's leg went): the phone gets our BYE (480 if not
    /// answered yet).
    pub(super) fn end_phone_monitor(&mut self, now: Instant, call_id: CallId) {
        let Some(dialog) = self
            .phone_monitors
            .iter()
            .find(|(_, m)| m.call == call_id)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let Some(mut m) = self.phone_monitors.remove(&dialog) else {
            return;
        };
        if m.answered {
            self.send_bye(now, &mut m.leg);
        } else {
            let r = m.invite.response(480, reason_phrase(480), Some("mon"));
            self.respond(now, &m.key, &r);
        }
    }

    /// A request inside a supervisor's phone's dialog: BYE ends it, ACK
    /// is taken, a session refresh (re-INVITE, UPDATE) gets the same
    /// session again, OPTIONS 200; nothing else may act through this
    /// dialog (a REFER, INFO: 403). `false`: not one of theirs.
    pub(super) fn phone_monitor_request(
        &mut self,
        now: Instant,
        source: Flow,
        key: &TxKey,
        msg: &Message,
    ) -> bool {
        let Some(m) = self.phone_monitors.get(msg.call_id.as_str()) else {
            return false;
        };
        let r = match msg.method() {
            Method::Bye => return self.phone_monitor_bye(now, key, msg),
            Method::Ack => {
                // ACKs skip the ingress checks: only the phone's own ends
                // our 2xx's retransmissions.
                if self.phone_monitor_dialog(source, msg) == Some(true) {
                    self.txn.acknowledged(&msg.call_id, msg.cseq);
                }
                return true;
            }
            Method::Invite => {
                let mut ok = msg.response(200, "OK", None);
                ok.push("Contact", &dialog::contact(m.leg.flow));
                // A hold (their offer `sendonly` or `inactive`) is
                // answered `recvonly` or `inactive` (RFC 3264 §6.1), never
                // `sendrecv`; a re-INVITE without an offer gets ours.
                let direction =
                    sdp::parse(&msg.body).map_or(Direction::SendRecv, |a| a.direction.answer());
                let Some(m) = self.phone_monitors.get_mut(msg.call_id.as_str()) else {
                    return false;
                };
                ok.set_body(Some("application/sdp"), phone_answer(m, direction));
                ok
            }
            Method::Update | Method::Options => msg.response(200, "OK", None),
            _ => {
                self.metrics
                    .sip_rejected
                    .with_label_values(&["monitor_dialog_request"])
                    .inc();
                msg.response(403, reason_phrase(403), None)
            }
        };
        self.respond(now, key, &r);
        true
    }

    /// A CANCEL of a supervisor's phone's INVITE not answered yet: 487,
    /// and they are not on the call. `false`: none of theirs.
    pub(super) fn phone_monitor_cancel(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
    ) -> bool {
        let Some(m) = self.phone_monitors.get(msg.call_id.as_str()) else {
            return false;
        };
        let answered = m.answered;
        let r = msg.response(200, "OK", None);
        self.respond(now, key, &r);
        if !answered && let Some(m) = self.phone_monitors.remove(msg.call_id.as_str()) {
            self.monitor_failed(m.call);
            let r = m.invite.response(487, reason_phrase(487), Some("mon"));
            self.respond(now, &m.key, &r);
        }
        true
    }

    /// A supervisor's phone that never acknowledged our 200: off the call,
    /// and our BYE. `false`: none of theirs.
    pub(super) fn phone_monitor_no_ack(&mut self, now: Instant, call_id: &str) -> bool {
        let Some(mut m) = self.phone_monitors.remove(call_id) else {
            return false;
        };
        warn!(call = %m.call, supervisor = %m.supervisor, "a supervisor's phone never acknowledged: off the call");
        self.phone_supervisor_off(now, &m, "gone");
        self.send_bye(now, &mut m.leg);
        true
    }

    /// A supervisor's phone is off its call (`why`: left, gone): their
    /// place is free, their leg ends, the operator's queue log says so.
    fn phone_supervisor_off(&mut self, now: Instant, m: &PhoneMonitor, why: &str) {
        let Some(call) = self.calls.get_mut(&m.call) else {
            return;
        };
        if call
            .monitor
            .as_ref()
            .is_none_or(|x| x.supervisor != m.supervisor)
        {
            return;
        }
        call.monitor = None;
        let who = format!("{}:{why}:{}", m.supervisor, call.record_id);
        let operator = call.b.as_ref().and_then(BLeg::agent);
        self.out.push_back(Output::Media(MediaCommand::Monitor {
            call: m.call,
            mode: None,
            phone: None,
        }));
        if let Some(agent) = operator {
            self.agent_event(now, agent, "monitor", Some(who));
        }
    }

    /// Whether an in-dialog request is a supervisor's phone's, from its
    /// peer with our tag: `None` when the Call-ID is none of theirs.
    pub(super) fn phone_monitor_dialog(&self, source: Flow, msg: &Message) -> Option<bool> {
        let m = self.phone_monitors.get(msg.call_id.as_str())?;
        let ours = tag_of(&m.leg.local).is_some_and(|t| msg.to_tag.as_deref() == Some(t));
        let theirs = tag_of(&m.leg.remote).is_none_or(|t| msg.from_tag.as_deref() == Some(t));
        Some(
            ours && theirs
                && m.leg.flow.remote.ip() == source.remote.ip()
                && transport_speaks_for(m.leg.flow.transport, source.transport),
        )
    }
}

/// Our SDP to a supervisor's phone, in `direction`: the same address,
/// port, law and session as our answer, its version following what the
/// phone was last sent.
fn phone_answer(m: &mut PhoneMonitor, direction: Direction) -> Vec<u8> {
    let Some((addr, port, session)) = m.ours else {
        return Vec::new();
    };
    let formats = [m.peer.law.payload_type()];
    let local = Local {
        addr,
        port,
        formats: &formats,
        // Their keypad changes the mode: events accepted if offered.
        telephone_event: m.peer.telephone_event,
        direction,
        session,
        version: 0,
    };
    stamp(&mut m.sent, local)
}
