//! Presence: connections and flows, the registrar, OPTIONS qualify of
//! operators' phones and outbound trunks, and operator states as the desk
//! sees them.

use super::*;

/// How long a browser's binding lasts without its desk session saying
/// more: the desk unbinds it when its connection ends; this only bounds a
/// binding whose goodbye was lost.
const BROWSER_BINDING: Duration = Duration::from_secs(12 * 3600);

impl Engine {
    /// A stream connection opened; `trunks` names the trunks whose TLS
    /// client certificate it presented (empty: none, or not TLS).
    pub fn connection_opened(&mut self, conn: u64, trunks: Vec<String>) {
        if !trunks.is_empty() {
            self.conn_trunks.insert(conn, trunks.into());
        }
    }

    /// A stream connection closed: whatever it proved is forgotten.
    pub fn connection_closed(&mut self, conn: u64) {
        self.conn_trunks.remove(&conn);
    }

    /// The driver could not reach the carrier at `remote` over TLS
    /// (connect or handshake failed, e.g. a certificate without the
    /// trunk's `outbound_tls_name`): what waited for that connection never
    /// left. A transport error is a timeout for the TU (RFC 3261
    /// §8.1.3.1), so each request pending towards it fails now, as Timer B
    /// would fail it later: the callback goes on through the next trunk,
    /// the transfer to its fallback, the trunk is marked down. Their
    /// transactions still end at Timer B, with nothing left to tell.
    pub fn connection_failed(&mut self, now: Instant, remote: SocketAddr) {
        let over_tls = |f: Flow| f.transport == Transport::Tls && f.remote == remote;
        let keys: Vec<TxKey> = self
            .client
            .iter()
            .filter(|(_, what)| match what {
                ClientRef::Citizen(c) => self.calls.get(c).is_some_and(|c| over_tls(c.a_leg.flow)),
                ClientRef::Transfer(c) => self
                    .calls
                    .get(c)
                    .and_then(|c| c.transfer.as_ref()?.dialog.as_ref())
                    .is_some_and(|l| over_tls(l.flow)),
                ClientRef::TrunkPing(t) => self.outbound_flow(*t).is_some_and(over_tls),
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.on_client_timeout(now, key);
        }
        self.pump(now);
    }

    /// The UDP address calls are placed from (callbacks).
    pub fn set_outbound_local(&mut self, addr: SocketAddr) {
        self.outbound_local = Some(addr);
    }

    /// The TLS listener's address, named in what goes to TLS trunks.
    pub fn set_outbound_tls_local(&mut self, addr: SocketAddr) {
        self.outbound_tls_local = Some(addr);
    }

    /// Where requests to trunk `trunk`'s outbound side go: its address,
    /// over its transport, from our listener of that transport. Over TLS
    /// the connection is the driver's to open, reuse and reopen (`conn`
    /// 0: "the trunk's connection, whichever it is now"). `None`: the
    /// trunk takes no calls, or we have no listener for its transport.
    pub(super) fn outbound_flow(&self, trunk: TrunkId) -> Option<Flow> {
        let remote = self.trunks.get(trunk.index())?.outbound?;
        let transport = self.trunks[trunk.index()].transport;
        let local = match transport {
            Transport::Tls => self.outbound_tls_local?,
            _ => self.outbound_local?,
        };
        Some(Flow {
            transport,
            remote,
            local,
            conn: 0,
        })
    }

    /// Asks an outbound trunk whether it is there (OPTIONS to its outbound
    /// address); any answer, even 404 or 405, counts.
    pub(super) fn ping_trunk(&mut self, now: Instant, trunk: TrunkId) {
        let Some(every) = self.trunks.get(trunk.index()).and_then(|t| t.options) else {
            return;
        };
        self.trunk_due.push(Reverse((now + every, trunk)));
        let Some(flow) = self.outbound_flow(trunk) else {
            return;
        };
        let (remote, local) = (flow.remote, flow.local);
        let via = self.via(flow);
        let tag = self.token();
        let call_id = format!("{}@centralino", self.token());
        let target = match flow.transport {
            Transport::Tls => format!("sip:{remote};transport=tls"),
            _ => format!("sip:{remote}"),
        };
        let mut options = Message::new_request(
            Method::Options,
            &target,
            via,
            &format!("<sip:centralino@{local}>;tag={tag}"),
            &format!("<{target}>"),
            &call_id,
            1,
        );
        options.push_shared("User-Agent", self.user_agent.clone());
        self.send_request(now, flow, options, ClientRef::TrunkPing(trunk));
    }

    /// A trunk answered OPTIONS, or did not: marks it up or down.
    pub(super) fn trunk_seen(&mut self, trunk: TrunkId, up: bool) {
        let Some(t) = self.trunks.get_mut(trunk.index()) else {
            return;
        };
        if t.down == up {
            t.down = !up;
            let name = &t.name;
            if up {
                info!(trunk = %name, "outbound trunk answers OPTIONS again: up");
            } else {
                warn!(trunk = %name, "outbound trunk does not answer OPTIONS: down, callbacks skip it");
            }
            self.metrics
                .trunk_up
                .with_label_values(&[name])
                .set(i64::from(up));
        }
    }

    /// Asks an operator's phone whether it is there (OPTIONS), unless it is
    /// busy with a call (the call's media says that) or logged out (then
    /// no more asking until the next login).
    pub(super) fn qualify_agent(&mut self, now: Instant, agent: AgentId) {
        let Some(every) = self.qualify else {
            return;
        };
        let state = self.router.agent(agent).state;
        if state == AgentState::LoggedOut {
            self.qualify_scheduled.remove(&agent);
            return;
        }
        self.qualify_due.push(Reverse((now + every, agent)));
        if matches!(
            state,
            AgentState::Reserved(_) | AgentState::Ringing(_) | AgentState::OnCall(_)
        ) {
            return;
        }
        let name = self.router.agent(agent).name.clone();
        let Some(binding) = self.registrar.bindings(&name).first().cloned() else {
            return;
        };
        let flow = self.binding_flow(&binding);
        let via = self.via(flow);
        let tag = self.token();
        let call_id = format!("{}@centralino", self.token());
        let mut options = Message::new_request(
            Method::Options,
            &binding.contact,
            via,
            &format!("<sip:centralino@{}>;tag={tag}", flow.local),
            &format!("<{}>", binding.contact),
            &call_id,
            1,
        );
        for r in &binding.path {
            options.push("Route", r);
        }
        options.push_shared("User-Agent", self.user_agent.clone());
        self.send_request(now, flow, options, ClientRef::Qualify(agent));
    }

    /// Where a registered phone is reached: the host the REGISTER came
    /// from, never a host its Contact names (a Contact is the phone's own
    /// word, and `sip:00900123456@CARRIER` would make us dial for it).
    /// On UDP, a Contact naming that same host keeps its port (a phone
    /// that registers from one socket and listens on another); behind NAT
    /// (another host in the Contact), and on streams, the registering flow
    /// itself, as RFC 5626 has it. A destination that is a trunk's
    /// outbound address is never used: the registering flow is.
    pub(super) fn binding_flow(&self, binding: &centralino_sip::registrar::Binding) -> Flow {
        let flow = binding.flow;
        if flow.transport != Transport::Udp {
            return flow;
        }
        let Some(contact) = uri::host_port(&binding.contact).and_then(|hp| {
            hp.parse::<SocketAddr>().ok().or_else(|| {
                let host = hp.trim_start_matches('[').trim_end_matches(']');
                host.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 5060))
            })
        }) else {
            return flow;
        };
        let to_trunk = self.trunks.iter().any(|t| t.outbound == Some(contact));
        if contact.ip() == flow.remote.ip() && !to_trunk {
            Flow {
                remote: contact,
                ..flow
            }
        } else {
            flow
        }
    }

    /// A REGISTER through the registrar: its response, counted and logged.
    pub(super) fn register(&mut self, now: Instant, flow: Flow, msg: &Message) -> Message {
        let (resp, outcome) = self.registrar.handle_register(now, flow, msg);
        let label = match outcome {
            RegOutcome::Ok => "ok",
            RegOutcome::Challenged => "challenged",
            RegOutcome::Refused => "refused",
            RegOutcome::Invalid => "invalid",
            RegOutcome::Banned => "banned",
        };
        self.metrics.registrations.with_label_values(&[label]).inc();
        if outcome == RegOutcome::Refused {
            warn!(peer = %flow.remote.ip(), "REGISTER refused");
        }
        self.publish_bans();
        resp
    }

    /// The bans the registrar's throttle started: logged and counted.
    pub(super) fn publish_bans(&mut self) {
        let bans: Vec<_> = self.registrar.drain_bans().collect();
        for b in bans {
            warn!(
                peer = %b.address,
                user = %b.user,
                scope = b.scope.label(),
                seconds = b.length.as_secs(),
                "too many authentication failures: banned"
            );
            self.metrics
                .auth_bans
                .with_label_values(&[b.scope.label()])
                .inc();
        }
    }

    /// A browser desktop of operator `name` becomes (`on`) or stops being
    /// one of their phones: the node's WebRTC gateway answers for it on the
    /// flow returned (session `session`, one per desk connection). The
    /// desk's session proved who the operator is; no digest. `None`: no
    /// such operator. The flow's remote address is in the discard-only
    /// block (RFC 6666), one per session: never a trunk's, never counted
    /// with another desk's transactions.
    pub fn browser_phone(
        &mut self,
        now: Instant,
        name: &str,
        session: u64,
        on: bool,
    ) -> Option<Flow> {
        let local = self.outbound_local?;
        let flow = Flow {
            transport: Transport::Browser,
            remote: SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::from(
                    (0x0100u128 << 112) | u128::from(session),
                )),
                0,
            ),
            local,
            conn: session,
        };
        // One browser phone per operator: a new desk session replaces
        // the binding, never adds one (nor pushes a desk phone out).
        let contact = format!("sip:{name}@browser.invalid;transport=ws");
        let expires = if on { BROWSER_BINDING } else { Duration::ZERO };
        if !self
            .registrar
            .bind_trusted(now, name, &contact, flow, expires)
        {
            return None;
        }
        info!(agent = %name, on, "browser phone");
        self.pump(now);
        Some(flow)
    }

    /// An operator pauses (`paused`, with an optional reason) or resumes,
    /// from their desktop. Idempotent; refused while they are logged out or
    /// busy with a call (ringing, talking).
    pub fn set_agent_paused(
        &mut self,
        now: Instant,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<&'static str, AgentStateError> {
        let &id = self.agent_ids.get(name).ok_or(AgentStateError::Unknown)?;
        if self.signed_out.contains(&id) && !self.registrar.bindings(name).is_empty() {
            // Signed out with a phone registered: back to work.
            self.signed_out.remove(&id);
            self.out.push_back(Output::SignedOut {
                agent: name.to_owned(),
                out: false,
            });
            info!(agent = %name, paused, "operator signed in from the desktop");
            self.router.login(now, id, paused);
            self.agent_event(now, id, "login", None);
            if paused {
                self.agent_event(now, id, "pause", reason.clone());
            }
            self.pump(now);
        }
        if self.router.set_paused(now, id, paused) {
            info!(agent = %name, paused, "operator state changed from the desktop");
            let event = if paused { "pause" } else { "unpause" };
            self.agent_event(now, id, event, reason.filter(|_| paused));
            self.pump(now);
        }
        match (paused, self.router.agent(id).state) {
            (_, AgentState::LoggedOut) => Err(AgentStateError::LoggedOut),
            (_, AgentState::Paused(_)) => Ok("paused"),
            (true, _) => Err(AgentStateError::Busy),
            (false, AgentState::Available) => Ok("available"),
            (false, AgentState::WrapUp) => Ok("wrap_up"),
            // Resumed and at once offered a waiting call, or not paused.
            (false, AgentState::Reserved(_) | AgentState::Ringing(_)) => Ok("ringing"),
            (false, AgentState::OnCall(_)) => Ok("on_call"),
        }
    }

    /// An operator signs out of the service, from their desktop or by a
    /// supervisor of their firm: no call is offered to them from now (on a
    /// call or ringing: once it ends), whatever their phones do, until they
    /// make themselves available or paused again. A phone re-registering
    /// does not sign them back in: phones refresh by themselves, a person
    /// decides to work. Idempotent. Returns `"logged_out"`, or
    /// `"logging_out"` while a call is still theirs.
    pub fn sign_out_agent(
        &mut self,
        now: Instant,
        name: &str,
        reason: Option<String>,
    ) -> Result<&'static str, AgentStateError> {
        let &id = self.agent_ids.get(name).ok_or(AgentStateError::Unknown)?;
        if self.signed_out.insert(id) {
            info!(agent = %name, "operator signed out");
            self.out.push_back(Output::SignedOut {
                agent: name.to_owned(),
                out: true,
            });
            if self.router.agent(id).state != AgentState::LoggedOut {
                // A preview on their desk goes to another.
                if let AgentState::Reserved(call) = self.router.agent(id).state {
                    self.end_preview(now, call, id, OfferOutcome::Rejected);
                }
                self.router.logout(id);
                self.agent_event(now, id, "logout", reason);
            }
            self.pump(now);
        }
        Ok(match self.router.agent(id).state {
            AgentState::LoggedOut => "logged_out",
            _ => "logging_out",
        })
    }

    /// An operator event for the queue log and the metrics.
    pub(super) fn agent_event(
        &mut self,
        now: Instant,
        agent: AgentId,
        event: &'static str,
        reason: Option<String>,
    ) {
        self.metrics.agent_events.with_label_values(&[event]).inc();
        let a = self.router.agent(agent);
        let tenant = self
            .tenant_names
            .get(usize::from(a.attributes.tenant))
            .cloned()
            .unwrap_or_default();
        self.out.push_back(Output::Record(Record::Agent {
            at_ms: self.unix_ms_at(now),
            agent: a.name.clone(),
            tenant,
            event,
            reason,
        }));
    }

    /// The operator's desktop no longer shows the call.
    pub(super) fn agent_released(&mut self, agent: AgentId) {
        let name = self.router.agent(agent).name.clone();
        self.out.push_back(Output::AgentCall {
            agent: name,
            info: None,
        });
    }

    /// What the operator's desktop shows of `call`.
    pub(super) fn desk(&self, call: &Call, state: DeskState) -> AgentCall {
        AgentCall {
            state,
            call: call.record_id.clone(),
            queue: self.router.queue(call.queue).name.clone(),
            flow: call.run.as_ref().map(|r| r.flow().to_owned()),
            variables: match call.outbound().and_then(|o| o.campaign.as_ref()) {
                Some(c) => c.desk.clone(),
                None => {
                    let mut v = call
                        .run
                        .as_ref()
                        .map(|r| r.variables.clone())
                        .unwrap_or_default();
                    // A campaign's contact calling back: who they are.
                    if let Some(k) = &call.known {
                        v.extend(k.desk.iter().cloned());
                    }
                    v
                }
            },
            // A campaign's own script over its queue's.
            script: call
                .outbound()
                .and_then(|o| o.campaign.as_ref()?.script.clone())
                .or_else(|| self.queues[call.queue.0 as usize].script.clone()),
            callback: call
                .outbound()
                .filter(|o| o.campaign.is_none())
                .map(|o| o.id.clone()),
            campaign: call
                .outbound()
                .and_then(|o| o.campaign.as_ref())
                .map(|c| c.name.clone())
                .or_else(|| call.known.as_ref().map(|k| k.campaign.clone())),
            contact: call
                .outbound()
                .and_then(|o| o.campaign.as_ref())
                .map(|c| c.contact)
                .or_else(|| call.known.as_ref().map(|k| k.contact)),
            consultation: call.consult.is_some(),
        }
    }
}
