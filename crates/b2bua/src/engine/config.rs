//! The configuration as the engine holds it: construction and live
//! reload (every changed key applied, or the reload refused naming it).

use super::*;

/// Why the engine refused a new configuration (it keeps the one it has):
/// these shape the router's tables, so only a restart applies them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReloadRefused {
    /// The queues are not the running ones in their places (a new file
    /// read without the running configuration's seed).
    #[error("queues changed places: restart the node to apply")]
    Queues,
    /// A queue removed from the file still has calls waiting.
    #[error("queues[{queue}] removed while {waiting} calls wait in it: try again once it is empty")]
    QueueBusy {
        /// The queue's name.
        queue: String,
        /// Calls waiting (or being offered) in it.
        waiting: usize,
    },
    /// More queues added than the router has room for until a restart.
    #[error("queues: no room for more queues until a restart")]
    QueueRoom,
    /// More operators added than the node has room for until a restart.
    #[error("operators: at most {0} on this node until a restart")]
    Operators(usize),
    /// A name used before (skill, language, site) would change meaning:
    /// operators were reordered around a new name.
    #[error(
        "agents: a new skill, language or site renumbers the others: add it after the existing ones, or restart"
    )]
    Catalog,
    /// Tenants were added or removed.
    #[error("tenants changed: restart the node to apply")]
    Tenants,
    /// A queue's strategy, requirements or overflow rings changed.
    #[error("queues[{queue}].{field} changed: restart the node to apply")]
    QueueSetting {
        /// The queue's name.
        queue: String,
        /// `strategy`, `requirements` or `overflow`.
        field: &'static str,
    },
}

impl Engine {
    /// An engine for this configuration. `seed` must come from the OS's
    /// CSPRNG: it keys nonces, tags, branches and Call-IDs.
    pub fn new(config: &EngineConfig, metrics: Metrics, seed: [u8; 32], now: Instant) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let auth = DigestAuth::new(
            &config.sip.realm,
            config.sip.digest_algorithms.clone(),
            secret,
            config.nonce_lifetime,
        );
        let users = config
            .agents
            .iter()
            .map(|a| (a.username.clone(), a.credentials.clone()))
            .collect();
        let registrar = Registrar::new(config.registrar.clone(), auth, users);
        let router = Router::new(
            now,
            config.routing_queues(),
            config.tenants.len(),
            config.routing_agents(),
        );
        let agent_ids = config
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.username.clone(), AgentId(i as u32)))
            .collect();
        let states = |vec: &prometheus::IntGaugeVec, label: &str| -> Vec<IntGauge> {
            Code::ALL
                .iter()
                .map(|c| vec.with_label_values(&[label, c.label()]))
                .collect()
        };
        let queue_stats = config
            .queues
            .iter()
            .map(|q| queue_stats(&metrics, &q.routing.name))
            .collect();
        let tenant_gauges = config
            .tenants
            .iter()
            .map(|t| states(&metrics.agents, t))
            .collect();
        let tenant_seconds = config
            .tenants
            .iter()
            .map(|t| TenantTime {
                seconds: Code::ALL
                    .iter()
                    .map(|c| {
                        metrics
                            .agent_state_seconds
                            .with_label_values(&[t, c.label()])
                    })
                    .collect(),
                counts: [0; 7],
            })
            .collect();
        let mut engine = Self {
            limits: config.sip.limits.clone(),
            txn: Transactions::new(config.sip.timers),
            registrar,
            router,
            metrics,
            rng,
            trunks: Vec::new(),
            queues: Vec::new(),
            queue_stats,
            pacers: HashMap::new(),
            campaign_numbers: HashMap::new(),
            grants: centralino_cluster::Grants::default(),
            remote_pending: HashMap::new(),
            held: HashMap::new(),
            held_tokens: HashMap::new(),
            asking: None,
            lending: centralino_cluster::Lending::new(config.agreements.clone()),
            lent_elsewhere: Vec::new(),
            free_seen: Vec::new(),
            remote_groups: 0,
            retiring: std::collections::HashSet::new(),
            paced: Vec::new(),
            tenant_gauges,
            tenant_seconds,
            states_at: now,
            agent_ids,
            login_paused: config.login_paused,
            qualify: config.qualify,
            qualify_due: BinaryHeap::new(),
            qualify_scheduled: std::collections::HashSet::new(),
            signed_out: std::collections::HashSet::new(),
            phone_monitors: HashMap::new(),
            supervisor_phones: supervisor_phones(config),
            transfer_numbers: config.transfer_numbers.clone(),
            tenant_names: config.tenants.clone(),
            trunk_due: BinaryHeap::new(),
            max_calls: config.sip.max_calls,
            max_per_source: config.sip.max_transactions_per_source,
            admission: config
                .sip
                .max_calls_per_second
                .map(|r| (f64::from(r.get()), f64::from(r.get()), now)),
            user_agent: config.sip.user_agent.as_str().into(),
            prompts: Arc::new(Library::new()),
            codecs: config
                .media
                .codecs
                .iter()
                .map(|&pt| if pt == 8 { Law::Alaw } else { Law::Ulaw })
                .collect(),
            advertise: config.media.advertise_address,
            media_range: config.media.ports,
            queue_ids: queue_ids(config),
            catalog: config.catalog.clone(),
            wall: (now, 0),
            outbound_local: None,
            outbound_tls_local: None,
            conn_trunks: HashMap::new(),
            dial_plans: Vec::new(),
            callback_tone: announce::callback_tone(Law::Alaw),
            views_at: None,
            calls: SegMap::default(),
            by_a: SegMap::default(),
            by_b: SegMap::default(),
            client: SegMap::default(),
            acks: send::AckCache::new(config.sip.timers.t1),
            sip_counts: telemetry::SipCounts::new(),
            sent_by: HashMap::new(),
            timers: BinaryHeap::new(),
            next_call: 1,
            read_at: None,
            overloaded: false,
            draining: false,
            throttle_swept: now,
            shutting_down: false,
            gauges_due: None,
            out: VecDeque::new(),
            retrans_seen: 0,
            t1: config.sip.timers.t1,
            timeouts_seen: 0,
            stray_seen: 0,
        };
        engine.apply_policies(now, config);
        // Every gauge has its value from the start (20 operators logged
        // out, not an empty series until the first message).
        engine.refresh_gauges(now);
        engine
    }

    /// Takes a new configuration (SIGHUP, the reload API): trunks by name,
    /// DIDs, IVR flows, dial plans, operators' secrets and queues, queue
    /// settings, scripts, whispers and callback policies apply from the
    /// next event; calls in progress finish on the flow version and timers
    /// they started with. Queues, operators and tenants index the router's
    /// tables and a queue's strategy, requirements and rings shape its
    /// pools: a change there is refused (before anything is applied), and
    /// the node keeps its configuration. The caller checks first, with
    /// `centralino_config::reload`, that nothing else changed.
    pub fn reload(&mut self, now: Instant, config: &EngineConfig) -> Result<(), ReloadRefused> {
        // The running queues keep their places (the loader seeds the new
        // file with them): new ones come after, removed ones stay in their
        // place, retired.
        let running = self.router.queue_count();
        if config.queues.len() < running
            || (0..running)
                .any(|i| self.router.queue(QueueId(i as u32)).name != config.queues[i].routing.name)
        {
            return Err(ReloadRefused::Queues);
        }
        for (i, q) in config.queues.iter().enumerate().take(running) {
            // Every call that is in it or may come back to it (waiting for
            // its media ports, talking — a lost operator sends the caller
            // back —, being handed over, a callback on its way).
            let queue = QueueId(i as u32);
            let waiting = self
                .router
                .waiting_count(queue)
                .max(self.calls.values().filter(|c| c.queue == queue).count());
            if q.retired && !self.queues[i].retired && waiting > 0 {
                return Err(ReloadRefused::QueueBusy {
                    queue: q.routing.name.clone(),
                    waiting,
                });
            }
        }
        let added = config.queues.len() - running;
        if self.router.group_count() + added > centralino_routing::MAX_GROUPS {
            return Err(ReloadRefused::QueueRoom);
        }
        if !config.catalog.extends(&self.catalog) {
            return Err(ReloadRefused::Catalog);
        }
        let added = config
            .agents
            .iter()
            .filter(|a| !self.agent_ids.contains_key(&a.username))
            .count();
        if added > self.router.room() {
            return Err(ReloadRefused::Operators(self.router.board().len()));
        }
        if config.tenants.len() != self.tenant_gauges.len() {
            return Err(ReloadRefused::Tenants);
        }
        // All or nothing: every queue's new settings are checked before
        // the first is taken.
        for (i, q) in config.queues.iter().enumerate().take(running) {
            if q.retired {
                // Its old settings stay: nothing reaches it any more.
                continue;
            }
            let old = self.router.queue(QueueId(i as u32));
            let r = &q.routing;
            let field = if old.tenant != r.tenant {
                Some("tenant")
            } else if old.strategy != r.strategy {
                Some("strategy")
            } else if old.requirement != r.requirement {
                Some("requirements")
            } else if old.rings.len() != r.rings.len()
                || old.rings.iter().zip(&r.rings).any(|(a, b)| {
                    a.after != b.after || a.requirement != b.requirement || a.tenants != b.tenants
                })
            {
                Some("overflow")
            } else {
                None
            };
            if let Some(field) = field {
                return Err(ReloadRefused::QueueSetting {
                    queue: r.name.clone(),
                    field,
                });
            }
        }
        for (i, q) in config.queues.iter().enumerate() {
            if i >= running {
                // Room was checked above.
                if self.router.add_queue(q.routing.clone()).is_some() {
                    info!(queue = %q.routing.name, "queue added");
                    self.queue_stats
                        .push(queue_stats(&self.metrics, &q.routing.name));
                }
            } else if q.retired {
                if !self.queues[i].retired {
                    info!(queue = %q.routing.name, "queue removed (its place kept until a restart)");
                    remove_queue_series(&self.metrics, &q.routing.name);
                }
            } else {
                if self.queues[i].retired {
                    info!(queue = %q.routing.name, "queue added back");
                    // Its gauges left the page when it was removed.
                    self.queue_stats[i] = queue_stats(&self.metrics, &q.routing.name);
                }
                // Checked above: only what decisions read differs.
                let _ = self
                    .router
                    .update_queue(QueueId(i as u32), q.routing.clone());
            }
        }
        self.queue_ids = queue_ids(config);
        self.apply_operators(now, config);
        self.registrar.set_users(
            config
                .agents
                .iter()
                .map(|a| (a.username.clone(), a.credentials.clone()))
                .collect(),
        );
        self.apply_policies(now, config);
        self.rebucket(config);
        self.catalog = config.catalog.clone();
        self.pump(now);
        info!(
            flows = config.flows.len(),
            trunks = config.trunks.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// The answered-wait histogram's buckets follow the queues' new T,
    /// second T and short threshold (`_bucket` bounds at the configured T,
    /// so PromQL reads the service level from them exactly).
    fn rebucket(&mut self, config: &EngineConfig) {
        let thresholds: Vec<f64> = config
            .queues
            .iter()
            .flat_map(|q| {
                let s = &q.service;
                [s.level, s.level2, s.short_abandon]
            })
            .map(|d| d.as_secs_f64())
            .collect();
        if !self.metrics.rebucket_answered_wait(&thresholds) {
            return;
        }
        info!("answered-wait histogram made again for the queues' new thresholds");
        for q in config.queues.iter().filter(|q| !q.retired) {
            self.metrics
                .queue_answered_wait
                .with_label_values(&[&q.routing.name]);
        }
    }

    /// An operator's new attributes; a new firm is in the queue log
    /// (`firm`), so their time from then on is the new firm's.
    fn set_operator(
        &mut self,
        now: Instant,
        id: AgentId,
        attributes: centralino_routing::Attributes,
    ) {
        let moved = self.router.agent(id).attributes.tenant != attributes.tenant;
        self.router.set_attributes(now, id, attributes);
        if moved {
            self.agent_event(now, id, "firm", None);
        }
    }

    /// Operators added, changed and removed, live: a new one gets a slot
    /// on the board (an old one's, if they come back), a changed one new
    /// pools, a removed one is logged out (after the call they are on)
    /// and retired: in no pool and no count.
    fn apply_operators(&mut self, now: Instant, config: &EngineConfig) {
        let mut changed = false;
        for (name, attributes) in config.routing_agents() {
            match self.agent_ids.get(&name) {
                Some(&id) => {
                    if self.router.agent(id).attributes != attributes {
                        self.set_operator(now, id, attributes);
                    }
                }
                None => {
                    // Removed while on a call and back before it ended:
                    // the same slot, their retirement called off.
                    let router = &self.router;
                    if let Some(id) = self
                        .retiring
                        .iter()
                        .copied()
                        .find(|&id| router.agent(id).name == name)
                    {
                        self.retiring.remove(&id);
                        if self.router.agent(id).attributes != attributes {
                            self.set_operator(now, id, attributes);
                        }
                        info!(agent = %name, "operator added back before their call ended");
                        self.agent_ids.insert(name, id);
                        changed = true;
                        continue;
                    }
                    // Room was checked before anything was applied.
                    if let Some(id) = self.router.add_agent(&name, attributes) {
                        self.retiring.remove(&id);
                        info!(agent = %name, "operator added");
                        self.agent_ids.insert(name, id);
                        changed = true;
                    }
                }
            }
        }
        let kept: std::collections::HashSet<&str> =
            config.agents.iter().map(|a| a.username.as_str()).collect();
        let gone: Vec<(String, AgentId)> = self
            .agent_ids
            .iter()
            .filter(|(n, _)| !kept.contains(n.as_str()))
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        for (name, id) in gone {
            info!(agent = %name, "operator removed (after their call, if on one)");
            self.agent_ids.remove(&name);
            // As when their phone unregisters: a preview on their desk
            // goes to another operator.
            if let AgentState::Reserved(call) = self.router.agent(id).state {
                self.end_preview(now, call, id, OfferOutcome::Rejected);
            }
            self.router.logout(id);
            self.agent_event(now, id, "logout", None);
            self.agent_released(id);
            self.retiring.insert(id);
            changed = true;
        }
        self.retire_done();
        if changed {
            self.out.push_back(Output::AgentsChanged);
        }
    }

    /// Removed operators whose call has ended leave the router.
    pub(super) fn retire_done(&mut self) {
        if self.retiring.is_empty() {
            return;
        }
        let router = &mut self.router;
        self.retiring.retain(|&id| !router.retire(id));
    }

    /// Builds the per-trunk, per-tenant and per-queue tables from
    /// `config` (at start and at each reload). Trunks are matched by name
    /// across a reload: one found down stays down until it answers.
    pub(super) fn apply_policies(&mut self, now: Instant, config: &EngineConfig) {
        let was_down: HashMap<&str, bool> = self
            .trunks
            .iter()
            .map(|t| (t.name.as_str(), t.down))
            .collect();
        let trunks: Vec<TrunkPolicy> = config
            .trunks
            .iter()
            .map(|t| TrunkPolicy {
                name: t.name.clone(),
                tenant: t.tenant,
                peers: t.peers.clone(),
                dids: did_table(config, t),
                outbound: t.outbound,
                transport: if t.outbound_tls.is_some() {
                    Transport::Tls
                } else {
                    Transport::Udp
                },
                caller_id: t.caller_id.clone(),
                options: t.options,
                mtls: t.client_cert.is_some(),
                auth: t.auth.clone(),
                asserted_identity: t.asserted_identity,
                down: was_down.get(t.name.as_str()).copied().unwrap_or(false),
            })
            .collect();
        self.trunks = trunks;
        // Pings in flight name trunks by position: their answers are
        // dropped, and every trunk is asked again now.
        self.client
            .retain(|_, c| !matches!(c, ClientRef::TrunkPing(_)));
        self.trunk_due = self
            .trunks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.options.is_some())
            .map(|(i, _)| Reverse((now, TrunkId::at(i))))
            .collect();
        for t in &self.trunks {
            if t.outbound.is_some() {
                self.metrics
                    .trunk_up
                    .with_label_values(&[&t.name])
                    .set(i64::from(!t.down));
            }
        }
        self.dial_plans = config.dial_plans.clone();
        self.supervisor_phones = supervisor_phones(config);
        self.transfer_numbers = config.transfer_numbers.clone();
        self.tenant_names = config.tenants.clone();
        let queues = config
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueuePolicy {
                retired: q.retired,
                tenant: q.tenant,
                tenant_name: config
                    .tenants
                    .get(q.tenant.index())
                    .cloned()
                    .unwrap_or_default(),
                exit_status: q.exit_status,
                announce_every: q.announce_every,
                // Prompts are loaded by the driver, not named here.
                music: self.queues.get(i).and_then(|p| p.music.clone()),
                record: q.record,
                script: q
                    .script
                    .and_then(|i| config.scripts.get(i))
                    .map(|s| s.name.clone()),
                callback_key: q.callback_key,
                callback_offer: q.callback_offer_prompts.clone(),
                callback_confirm: q.callback_confirm_prompts.clone(),
                callback_number: q.callback_number.clone(),
                callback_max_attempts: q.callback_max_attempts,
                callback_retry: q.callback_retry,
                callback_retries: q.callback_retries.clone(),
                customer_first: q.callback_customer_first,
                whisper: q.whisper.clone(),
                callback_whisper: q.callback_whisper.clone(),
                service: q.service,
                when_unserved: q.when_unserved.clone(),
            })
            .collect();
        self.queues = queues;
    }
}

/// The queues by name (a retired one has none: nothing reaches it).
fn queue_ids(config: &EngineConfig) -> HashMap<String, QueueId> {
    config
        .queues
        .iter()
        .enumerate()
        .filter(|(_, q)| !q.retired)
        .map(|(i, q)| (q.routing.name.clone(), QueueId(i as u32)))
        .collect()
}

/// A queue's gauges; its service figures' series exist from the start at 0
/// (PromQL's sums of them would otherwise drop a queue until each had
/// moved once).
fn queue_stats(metrics: &Metrics, name: &str) -> QueueStats {
    metrics.queue_offered.with_label_values(&[name]);
    metrics.queue_answered.with_label_values(&[name]);
    metrics.queue_timed_out.with_label_values(&[name]);
    metrics.queue_callbacks.with_label_values(&[name]);
    for in_time in ["yes", "no", "none"] {
        metrics
            .queue_callbacks_kept
            .with_label_values(&[name, in_time]);
    }
    metrics.queue_overflowed.with_label_values(&[name]);
    metrics.queue_transferred.with_label_values(&[name]);
    metrics.queue_answered_wait.with_label_values(&[name]);
    for t in ["t", "t2"] {
        metrics.queue_answered_within.with_label_values(&[name, t]);
    }
    for k in ["short", "after_short"] {
        metrics.queue_abandoned.with_label_values(&[name, k]);
    }
    QueueStats {
        waiting: metrics.queue_calls.with_label_values(&[name]),
        oldest_wait: metrics.queue_oldest_wait.with_label_values(&[name]),
        agents: QueueAgents::default()
            .labelled()
            .iter()
            .map(|(l, _)| metrics.queue_agents.with_label_values(&[name, l]))
            .collect(),
        expected_wait: metrics.queue_ewt.with_label_values(&[name]),
        offered: staffing::RateWindow::default(),
        agents_needed: metrics.queue_agents_needed.with_label_values(&[name]),
        agents_short: metrics.queue_agents_short.with_label_values(&[name]),
        patience: metrics.queue_patience.with_label_values(&[name]),
        erlang_a: None,
        erlang_a_asked: None,
    }
}

/// A removed queue's series leave the metrics page.
fn remove_queue_series(metrics: &Metrics, name: &str) {
    let _ = metrics.queue_calls.remove_label_values(&[name]);
    let _ = metrics.queue_oldest_wait.remove_label_values(&[name]);
    let _ = metrics.queue_ewt.remove_label_values(&[name]);
    let _ = metrics.queue_agents_needed.remove_label_values(&[name]);
    let _ = metrics.queue_agents_short.remove_label_values(&[name]);
    let _ = metrics.queue_sl_target.remove_label_values(&[name]);
    let _ = metrics.queue_handle_time.remove_label_values(&[name]);
    let _ = metrics.queue_offered.remove_label_values(&[name]);
    let _ = metrics.queue_answered.remove_label_values(&[name]);
    let _ = metrics.queue_timed_out.remove_label_values(&[name]);
    let _ = metrics.queue_callbacks.remove_label_values(&[name]);
    for in_time in ["yes", "no", "none"] {
        let _ = metrics
            .queue_callbacks_kept
            .remove_label_values(&[name, in_time]);
    }
    let _ = metrics.queue_overflowed.remove_label_values(&[name]);
    let _ = metrics.queue_transferred.remove_label_values(&[name]);
    let _ = metrics.queue_answered_wait.remove_label_values(&[name]);
    for t in ["t", "t2"] {
        let _ = metrics
            .queue_answered_within
            .remove_label_values(&[name, t]);
    }
    for k in ["short", "after_short"] {
        let _ = metrics.queue_abandoned.remove_label_values(&[name, k]);
    }
    for (l, _) in QueueAgents::default().labelled() {
        let _ = metrics.queue_agents.remove_label_values(&[name, l]);
    }
}

/// A trunk's DIDs and where each goes.
fn did_table(config: &EngineConfig, trunk: &centralino_config::Trunk) -> DidTable {
    trunk
        .dids
        .iter()
        .map(|(d, did)| {
            let spec = Arc::new(did.spec.clone());
            let target = match did.target {
                DidTarget::Queue(q) => Target::Queue(QueueId(q as u32), spec),
                DidTarget::Flow(f) => Target::Flow(config.flows[f].clone(), spec),
            };
            (d.clone(), target)
        })
        .collect()
}

/// The SIP accounts whose phones may listen in, with their firm.
fn supervisor_phones(config: &EngineConfig) -> HashMap<String, TenantId> {
    config
        .supervisor_phones
        .iter()
        .enumerate()
        .flat_map(|(t, users)| users.iter().map(move |u| (u.clone(), TenantId(t as u32))))
        .collect()
}
