//! Supervisors on operators' calls: listen, whisper, barge. The engine
//! decides who may join which call (the operator must be talking, one
//! supervisor per call, only the one who joined changes or ends it) and
//! keeps it on the call; the media plane mixes (see
//! `centralino_media::monitor`). The supervisor's media leg is made by the
//! driver between [`Engine::monitor_start`] and [`Engine::monitor_joined`],
//! so its order with the call's other media commands is the engine's.

use super::*;
use centralino_media::monitor::MonitorMode;

/// A supervisor on a call.
#[derive(Clone, Debug)]
pub(super) struct Monitoring {
    /// Their token's name (the audit's "who").
    pub(super) supervisor: String,
    pub(super) mode: MonitorMode,
    /// The media plane has their leg (`Monitor` sent).
    pub(super) joined: bool,
}

/// The call a supervisor may join, for the driver to make their leg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorTarget {
    /// The call.
    pub call: CallId,
    /// Its record id (what the desk and the CDR call it).
    pub record: String,
    /// The address the call's SDP names (behind NAT, the advertised one).
    pub sdp_ip: IpAddr,
    /// The laws the supervisor's leg may use, the caller's first (no
    /// transcoding on the way to the trunk).
    pub laws: Vec<Law>,
}

/// Why a supervisor cannot join, change or leave a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// No such operator.
    #[error("no such operator")]
    Unknown,
    /// Not talking (ringing, idle, paused...): nothing to join.
    #[error("the operator is not in a conversation")]
    NotTalking,
    /// Another supervisor is on the call.
    #[error("another supervisor is already on this call")]
    Taken,
    /// Nobody (or somebody else) is on the call for this supervisor.
    #[error("you are not on this operator's call")]
    NotJoined,
    /// The operator is talking on another firm's call (lent to it by an
    /// overflow ring or a national agreement): its supervisors' alone.
    #[error("the operator's call is another firm's")]
    OtherFirm,
}

impl Engine {
    /// The firm whose citizen is on `call`: the borrowing firm's for a
    /// call lent this node's operator under a national agreement (the
    /// call itself runs in the lending firm's queue here), else the
    /// call's own.
    fn call_firm<'a>(&'a self, call: &'a Call) -> &'a str {
        match &call.lent {
            Some(lent) => lent.0.as_str(),
            None => self
                .tenant_names
                .get(call.tenant.index())
                .map_or("", String::as_str),
        }
    }

    /// The call operator `agent` is talking on, if any.
    fn talking_call(&self, agent: &str) -> Result<CallId, MonitorError> {
        let &id = self.agent_ids.get(agent).ok_or(MonitorError::Unknown)?;
        match self.router.agent(id).state {
            AgentState::OnCall(call)
                if self
                    .calls
                    .get(&call)
                    .is_some_and(|c| c.b.is_some() && c.media.opened) =>
            {
                Ok(call)
            }
            _ => Err(MonitorError::NotTalking),
        }
    }

    /// Supervisor `supervisor` of firm `firm` (`None`: every firm's, an
    /// administrator) asks to join operator `agent`'s conversation in
    /// `mode`: the call, for the driver to make their leg, then
    /// [`Self::monitor_joined`] (or [`Self::monitor_failed`]). The call's
    /// firm decides, not the operator's: an operator lent to another firm
    /// talks with that firm's citizen.
    pub fn monitor_start(
        &mut self,
        agent: &str,
        supervisor: &str,
        firm: Option<&str>,
        mode: MonitorMode,
    ) -> Result<MonitorTarget, MonitorError> {
        let call_id = self.talking_call(agent)?;
        if let Some(firm) = firm {
            let call_firm = self.calls.get(&call_id).map_or("", |c| self.call_firm(c));
            if call_firm != firm {
                warn!(supervisor = %supervisor, call = %call_id, "a supervisor asked to join another firm's call, refused");
                return Err(MonitorError::OtherFirm);
            }
        }
        let call = self
            .calls
            .get_mut(&call_id)
            .ok_or(MonitorError::NotTalking)?;
        // The same supervisor joining again takes their own place back
        // (a closed tab, a second try): their old leg ends with it.
        if call
            .monitor
            .as_ref()
            .is_some_and(|m| m.supervisor != supervisor)
        {
            return Err(MonitorError::Taken);
        }
        call.monitor = Some(Monitoring {
            supervisor: supervisor.to_owned(),
            mode,
            joined: false,
        });
        let first = call.media.a.law;
        let other = match first {
            Law::Alaw => Law::Ulaw,
            Law::Ulaw => Law::Alaw,
        };
        Ok(MonitorTarget {
            call: call_id,
            record: call.record_id.clone(),
            sdp_ip: call.media.sdp_ip,
            laws: vec![first, other],
        })
    }

    /// The supervisor's leg is ready in the media plane: they are on the
    /// call from now (counted, logged for the audit).
    pub fn monitor_joined(&mut self, now: Instant, call_id: CallId) {
        self.monitor_joined_with(now, call_id, None);
    }

    /// [`Self::monitor_joined`], with a supervisor's phone's media.
    pub(super) fn monitor_joined_with(
        &mut self,
        now: Instant,
        call_id: CallId,
        phone: Option<crate::media::Remote>,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(m) = call.monitor.as_mut().filter(|m| !m.joined) else {
            return;
        };
        m.joined = true;
        let mode = m.mode;
        self.metrics
            .monitors
            .with_label_values(&[mode.label()])
            .inc();
        let span = call.span.clone();
        let _g = span.enter();
        info!(
            supervisor = %m.supervisor,
            operator = ?call.connected.as_ref().map(|(_, n)| n),
            mode = mode.label(),
            "a supervisor joined the call"
        );
        // The operator's queue log keeps who listened, how, and to which
        // call: the audit trail the firm answers to.
        let who = format!("{}:{}:{}", m.supervisor, mode.label(), call.record_id);
        let operator = call.b.as_ref().and_then(BLeg::agent);
        self.out.push_back(Output::Media(MediaCommand::Monitor {
            call: call_id,
            mode: Some(mode),
            phone,
        }));
        if let Some(agent) = operator {
            self.agent_event(now, agent, "monitor", Some(who));
        }
    }

    /// The media plane ended a supervisor's leg by itself (their browser
    /// went): they are off the call.
    pub(super) fn monitor_gone(&mut self, now: Instant, call_id: CallId) {
        if let Some(who) = self.take_supervisor_off(now, call_id, "gone") {
            info!(call = %call_id, supervisor = %who, "the supervisor's browser went: off the call");
        }
    }

    /// Takes the supervisor on `call_id` off it (`why`: gone, revoked):
    /// their leg ends, the operator's queue log says so. Returns who.
    fn take_supervisor_off(&mut self, now: Instant, call_id: CallId, why: &str) -> Option<String> {
        let call = self.calls.get_mut(&call_id)?;
        let m = call.monitor.take()?;
        let who = format!("{}:{why}:{}", m.supervisor, call.record_id);
        let operator = call.b.as_ref().and_then(BLeg::agent);
        self.out.push_back(Output::Media(MediaCommand::Monitor {
            call: call_id,
            mode: None,
            phone: None,
        }));
        if let Some(agent) = operator {
            self.agent_event(now, agent, "monitor", Some(who));
        }
        Some(m.supervisor)
    }

    /// The supervisor's leg could not be made: they are not on the call
    /// (an earlier leg of theirs this join was to replace ends too).
    pub fn monitor_failed(&mut self, call_id: CallId) {
        if let Some(call) = self.calls.get_mut(&call_id)
            && call.monitor.as_ref().is_some_and(|m| !m.joined)
        {
            call.monitor = None;
            self.out.push_back(Output::Media(MediaCommand::Monitor {
                call: call_id,
                mode: None,
                phone: None,
            }));
        }
    }

    /// Supervisor `supervisor`, on operator `agent`'s call, changes mode
    /// (`Some`) or leaves (`None`). Returns the call's record id.
    pub fn monitor_set(
        &mut self,
        now: Instant,
        agent: &str,
        supervisor: &str,
        mode: Option<MonitorMode>,
    ) -> Result<String, MonitorError> {
        let call_id = self.talking_call(agent).map_err(|e| match e {
            MonitorError::NotTalking => MonitorError::NotJoined,
            e => e,
        })?;
        let call = self
            .calls
            .get_mut(&call_id)
            .ok_or(MonitorError::NotJoined)?;
        let Some(m) = call
            .monitor
            .as_mut()
            .filter(|m| m.joined && m.supervisor == supervisor)
        else {
            return Err(MonitorError::NotJoined);
        };
        let span = call.span.clone();
        let _g = span.enter();
        let what = mode.map_or("left", MonitorMode::label);
        let changed = mode != Some(m.mode);
        match mode {
            Some(mode) => {
                if m.mode != mode {
                    m.mode = mode;
                    self.metrics
                        .monitors
                        .with_label_values(&[mode.label()])
                        .inc();
                    info!(
                        supervisor,
                        mode = mode.label(),
                        "the supervisor changed mode"
                    );
                }
            }
            None => {
                info!(supervisor, "the supervisor left the call");
                call.monitor = None;
            }
        }
        let record = call.record_id.clone();
        let operator = call.b.as_ref().and_then(BLeg::agent);
        self.out.push_back(Output::Media(MediaCommand::Monitor {
            call: call_id,
            mode,
            phone: None,
        }));
        if let (true, Some(agent)) = (changed, operator) {
            self.agent_event(
                now,
                agent,
                "monitor",
                Some(format!("{supervisor}:{what}:{record}")),
            );
        }
        Ok(record)
    }

    /// After a reload: every supervisor still on a call must still be
    /// allowed there. `allowed(name, firm)` says whether the API token
    /// `name` may still listen to `firm`'s operators; a phone's account
    /// must still be in that firm's `supervisor_phones`. The others are
    /// taken off (their leg ends, a phone gets our BYE, the queue log
    /// says `revoked`). Returns how many.
    pub fn revalidate_monitors(
        &mut self,
        now: Instant,
        allowed: impl Fn(&str, &str) -> bool,
    ) -> usize {
        let mut revoked = Vec::new();
        for (&id, call) in self.calls.iter() {
            let Some(m) = call.monitor.as_ref() else {
                continue;
            };
            let firm = self.call_firm(call);
            let ok = match m.supervisor.strip_prefix("phone:") {
                // A lent call's firm is on another node: no phone here.
                Some(user) => {
                    call.lent.is_none() && self.supervisor_phones.get(user) == Some(&call.tenant)
                }
                None => allowed(&m.supervisor, firm),
            };
            if !ok {
                revoked.push(id);
            }
        }
        for &id in &revoked {
            if let Some(who) = self.take_supervisor_off(now, id, "revoked") {
                warn!(call = %id, supervisor = %who, "a supervisor no longer allowed is taken off the call");
            }
            self.end_phone_monitor(now, id);
        }
        if !revoked.is_empty() {
            // Our BYEs leave through the transaction layer.
            self.pump(now);
        }
        revoked.len()
    }
}
