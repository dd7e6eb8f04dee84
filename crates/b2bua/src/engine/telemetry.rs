//! What the engine tells ops and supervisors: gauges, queue views, the
//! board, queue events and counts of what it sends.

use super::*;

use std::cell::OnceCell;

use prometheus::IntCounter;

impl Engine {
    /// Sets every gauge from the current state (the engine does it at most
    /// every `GAUGE_PERIOD` after activity; tests call it directly).
    /// Whether a queue has an operator free now and had none at the last
    /// look.
    fn queue_became_free(&mut self) -> bool {
        let n = self.queue_stats.len();
        self.free_seen.resize(n, false);
        let mut news = false;
        for i in 0..n {
            let free = self.router.queue_agents(QueueId(i as u32)).available > 0;
            news |= free && !self.free_seen[i];
            self.free_seen[i] = free;
        }
        news
    }

    pub fn refresh_gauges(&mut self, now: Instant) {
        self.gauges_due = None;
        // In a national network, an operator free again in a queue that
        // had none is news for the other nodes' waiting calls: the views
        // go out now and the driver publishes this node's summary at
        // once, not at the next heartbeat.
        let news = self.asking.is_some() && self.queue_became_free();
        if news {
            self.views_at = None;
        }
        match self.views_at {
            Some(t) if now.saturating_duration_since(t) < VIEWS_PERIOD => {
                // Published less than a second ago: once more when the
                // second is over, so the last change is never left out.
                self.gauges_due = Some(t + VIEWS_PERIOD);
            }
            _ => {
                self.views_at = Some(now);
                let views = self.queue_views(now);
                self.out.push_back(Output::Queues(views));
                let campaigns = self.campaign_views(now);
                self.out.push_back(Output::Campaigns(campaigns));
                if news {
                    self.out.push_back(Output::ClusterNews);
                }
            }
        }
        for (i, q) in self.queue_stats.iter().enumerate() {
            if self.queues.get(i).is_some_and(|p| p.retired) {
                continue;
            }
            q.expected_wait.set(
                self.router
                    .queue_estimate(QueueId(i as u32))
                    .map_or(0, |d| d.as_secs() as i64),
            );
            let (n, first) = self.router.waiting(QueueId(i as u32));
            let n = n.saturating_sub(self.held_in(QueueId(i as u32)));
            q.waiting.set(n as i64);
            q.oldest_wait
                .set(first.map_or(0, |t| now.saturating_duration_since(t).as_secs() as i64));
            let counts = self.router.queue_agents(QueueId(i as u32)).labelled();
            for (g, (_, c)) in q.agents.iter().zip(counts) {
                g.set(i64::from(c));
            }
        }
        self.accrue_states(now);
        self.metrics
            .routing_groups
            .set(self.router.group_count() as i64);
        let stats = self.txn.stats();
        self.metrics
            .sip_retransmissions
            .inc_by(stats.retransmissions - self.retrans_seen);
        self.metrics
            .sip_transaction_timeouts
            .inc_by(stats.timeouts - self.timeouts_seen);
        self.metrics
            .sip_stray_responses
            .inc_by(stats.stray_responses - self.stray_seen);
        self.retrans_seen = stats.retransmissions;
        self.timeouts_seen = stats.timeouts;
        self.stray_seen = stats.stray_responses;
        let (s, c) = self.txn.len();
        self.metrics
            .sip_transactions
            .with_label_values(&["server"])
            .set(s as i64);
        self.metrics
            .sip_transactions
            .with_label_values(&["client"])
            .set(c as i64);
        self.metrics.calls_active.set(self.calls.len() as i64);
        self.metrics
            .registered_agents
            .set(self.registrar.registered() as i64);
        let (users, addresses) = self.registrar.banned_counts(now);
        self.metrics
            .auth_banned
            .with_label_values(&["user"])
            .set(users as i64);
        self.metrics
            .auth_banned
            .with_label_values(&["address"])
            .set(addresses as i64);
        if now.saturating_duration_since(self.throttle_swept) >= THROTTLE_SWEEP {
            self.throttle_swept = now;
            self.registrar.sweep_throttle(now);
        }
    }

    /// The operators' states per tenant (`centralino_agents`) and the time
    /// since the last call accrued at the counts then
    /// (`centralino_agent_state_seconds_total`): refreshes follow every
    /// change within GAUGE_PERIOD, so each change is placed to 100 ms; an
    /// idle engine comes here every STATES_TICK.
    pub(super) fn accrue_states(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.states_at).as_secs_f64();
        self.states_at = self.states_at.max(now);
        for (t, (agents, time)) in self
            .tenant_gauges
            .iter()
            .zip(self.tenant_seconds.iter_mut())
            .enumerate()
        {
            let counts = self.router.tenant_states(t);
            for (g, c) in agents.iter().zip(counts) {
                g.set(i64::from(c));
            }
            if elapsed > 0.0 {
                for (s, was) in time.seconds.iter().zip(time.counts) {
                    if was > 0 {
                        s.inc_by(f64::from(was) * elapsed);
                    }
                }
            }
            time.counts = counts;
        }
    }

    /// Callbacks each live queue can take now: operators available in its
    /// first ring less the callbacks already waiting for one (offered ones
    /// already hold their operator). The scheduler asks this through the
    /// engine's own input queue just before it claims, so every claim it
    /// sent before is counted here and no operator a call has taken since
    /// the last published view is claimed for: a callback claimed for
    /// nobody holds two RTP port pairs and spends an attempt. An operator
    /// free in the first ring of two queues counts in both.
    pub fn callback_rooms(&self) -> Vec<(String, u32)> {
        let mut callbacks_waiting = vec![0u32; self.queues.len()];
        for c in self.calls.values() {
            if c.outbound().is_some()
                && c.phase == Phase::Queued
                && let Some(n) = callbacks_waiting.get_mut(c.queue.0 as usize)
            {
                *n += 1;
            }
        }
        callbacks_waiting
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !self.queues.get(*i).is_some_and(|p| p.retired))
            .map(|(i, callbacks)| {
                let q = QueueId(i as u32);
                let available = self.router.queue_agents(q).available;
                (
                    self.router.queue(q).name.clone(),
                    available.saturating_sub(callbacks),
                )
            })
            .collect()
    }

    /// Every queue as a supervisor sees it now.
    pub fn queue_views(&mut self, now: Instant) -> Vec<QueueView> {
        let wall_now = self.unix_ms_at(now);
        let mut views = Vec::with_capacity(self.queues.len());
        for i in 0..self.queues.len() {
            if self.queues.get(i).is_some_and(|p| p.retired) {
                continue;
            }
            let q = QueueId(i as u32);
            let (waiting, first) = self.router.waiting(q);
            let waiting = waiting.saturating_sub(self.held_in(q));
            let agents = self.router.queue_agents(q);
            let staffing = self.staffing(now, q);
            views.push(QueueView {
                agents_needed: staffing.map(|(n, _)| n),
                agents_short: staffing.map_or(0, |(_, s)| s),
                name: self.router.queue(q).name.clone(),
                tenant: self
                    .queues
                    .get(i)
                    .map(|q| q.tenant_name.clone())
                    .unwrap_or_default(),
                waiting: waiting as u32,
                oldest_since_ms: first
                    .map(|t| wall_now - now.saturating_duration_since(t).as_millis() as i64),
                expected_wait_seconds: self.router.queue_estimate(q).map_or(0, |d| d.as_secs()),
                agents: agents.labelled(),
            });
        }
        views
    }

    /// The operators' shared state words and each operator's slot on it,
    /// for readers on other threads (desktops).
    pub fn board(
        &self,
    ) -> (
        Arc<centralino_routing::board::Board>,
        HashMap<String, usize>,
    ) {
        let slots = self
            .agent_ids
            .iter()
            .map(|(name, id)| (name.clone(), id.0 as usize))
            .collect();
        (self.router.board(), slots)
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Entries in every per-call table (calls, dialog indexes, client
    /// transactions, live transactions): all zero on an idle engine once
    /// the transaction timers have run, which tests use to prove no leak.
    pub fn table_sizes(&self) -> [usize; 5] {
        let (server, client) = self.txn.len();
        [
            self.calls.len(),
            self.by_a.len() + self.by_b.len(),
            self.client.len(),
            server,
            client,
        ]
    }

    /// A queue log event for a call.
    pub(super) fn queue_event(
        &mut self,
        now: Instant,
        call_id: CallId,
        event: QueueEvent,
        agent: Option<String>,
    ) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        if call.consult.is_some() {
            // An operator's consultation is no citizen's call: the
            // queue's figures leave it out.
            return;
        }
        if call.outbound().is_some() {
            // A callback or a campaign's call being placed is no visit to
            // the queue (it has figures of its own: callbacks requested,
            // kept, kept in time; campaign attempts): counted as offered
            // and answered at once, it would make the queue's service
            // level look better for calling people back. Its operator's
            // talk (`Record::Complete`) is still theirs, in the operators'
            // report.
            return;
        }
        let position = self.router.estimate(call_id).map(|e| e.position);
        let queue = self.router.queue(call.queue).name.clone();
        if event == QueueEvent::Transfer {
            // As the reports count it: one per `transfer` in the log.
            self.metrics
                .queue_transferred
                .with_label_values(&[&queue])
                .inc();
        }
        let record = Record::Queue {
            call: call.record_id.clone(),
            at_ms: self.unix_ms_at(now),
            queue,
            event,
            agent,
            position,
            wait_ms: Some(now.saturating_duration_since(call.enqueued).as_millis() as i64),
        };
        self.out.push_back(Output::Record(record));
    }

    /// The queue log's `complete` for the operator talking on `call`: their
    /// part of it is over at `now` (not for a consultation).
    pub(super) fn complete_record(&self, now: Instant, call: &Call) -> Option<Record> {
        let (since, agent) = call.connected.as_ref().filter(|_| call.consult.is_none())?;
        Some(Record::Complete {
            call: call.record_id.clone(),
            at_ms: self.unix_ms_at(now),
            queue: self.router.queue(call.queue).name.clone(),
            agent: agent.clone(),
            talk_ms: now.saturating_duration_since(*since).as_millis() as i64,
        })
    }

    pub(super) fn count_out(&self, msg: &Message) {
        self.sip_counts.count(&self.metrics, &msg.start, Way::Out);
    }
}

/// Which way a counted SIP message went (the `direction` label).
#[derive(Clone, Copy)]
pub(super) enum Way {
    In,
    Out,
}

/// The children of `centralino_sip_requests_total` and
/// `centralino_sip_responses_total`, each made at its first message (a
/// series appears once counted, as before) and kept: `with_label_values`
/// hashes the labels and takes the vector's lock, about 150 instructions
/// for each of the dozen messages a call counts (`cargo bench --bench
/// engine` under callgrind), against an index here.
pub(super) struct SipCounts {
    requests: [[OnceCell<IntCounter>; 2]; METHOD_LABELS],
    responses: [[OnceCell<IntCounter>; 2]; CODE_LABELS.len()],
}

/// Methods with a label of their own, and `other`.
const METHOD_LABELS: usize = 15;

fn method_index(m: &Method) -> usize {
    match m {
        Method::Invite => 0,
        Method::Ack => 1,
        Method::Bye => 2,
        Method::Cancel => 3,
        Method::Register => 4,
        Method::Options => 5,
        Method::Info => 6,
        Method::Update => 7,
        Method::Prack => 8,
        Method::Subscribe => 9,
        Method::Notify => 10,
        Method::Refer => 11,
        Method::Message => 12,
        Method::Publish => 13,
        Method::Other(_) => 14,
    }
}

impl SipCounts {
    pub(super) fn new() -> Self {
        Self {
            requests: [const { [const { OnceCell::new() }; 2] }; METHOD_LABELS],
            responses: [const { [const { OnceCell::new() }; 2] }; CODE_LABELS.len()],
        }
    }

    pub(super) fn count(&self, metrics: &Metrics, start: &StartLine, dir: Way) {
        let d = dir as usize;
        let label = ["in", "out"][d];
        match start {
            StartLine::Request { method, .. } => self.requests[method_index(method)][d]
                .get_or_init(|| {
                    metrics
                        .sip_requests
                        .with_label_values(&[method.label(), label])
                })
                .inc(),
            StartLine::Response { code, .. } => {
                let i = code_index(*code);
                self.responses[i][d]
                    .get_or_init(|| {
                        metrics
                            .sip_responses
                            .with_label_values(&[CODE_LABELS[i], label])
                    })
                    .inc();
            }
        }
    }
}

/// The `code` label's values: the codes a contact centre meets by name,
/// any other by its class (`0` beyond 6xx).
const CODE_LABELS: [&str; 24] = [
    "100", "180", "183", "200", "401", "403", "404", "407", "408", "480", "481", "486", "487",
    "488", "500", "503", "603", "0", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx",
];

fn code_index(code: u16) -> usize {
    match code {
        100 => 0,
        180 => 1,
        183 => 2,
        200 => 3,
        401 => 4,
        403 => 5,
        404 => 6,
        407 => 7,
        408 => 8,
        480 => 9,
        481 => 10,
        486 => 11,
        487 => 12,
        488 => 13,
        500 => 14,
        503 => 15,
        603 => 16,
        c if c < 700 => 17 + usize::from(c / 100),
        _ => 17,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels as `with_label_values` was given them before the
    /// children were kept: the oracle.
    fn code_label_before(code: u16) -> &'static str {
        const CODES: [&str; 7] = ["0", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];
        match code {
            100 => "100",
            180 => "180",
            183 => "183",
            200 => "200",
            401 => "401",
            403 => "403",
            404 => "404",
            407 => "407",
            408 => "408",
            480 => "480",
            481 => "481",
            486 => "486",
            487 => "487",
            488 => "488",
            500 => "500",
            503 => "503",
            603 => "603",
            c => CODES.get(usize::from(c / 100)).copied().unwrap_or("0"),
        }
    }

    #[test]
    fn kept_counters_count_the_series_the_labels_name() {
        let m = Metrics::new();
        let counts = SipCounts::new();
        for code in (0..=1000).chain([u16::MAX]) {
            let start = StartLine::Response {
                code,
                reason: "".into(),
            };
            counts.count(&m, &start, Way::In);
            counts.count(&m, &start, Way::Out);
            counts.count(&m, &start, Way::Out);
        }
        let mut expected: HashMap<&str, u64> = HashMap::new();
        for code in (0..=1000).chain([u16::MAX]) {
            *expected.entry(code_label_before(code)).or_default() += 1;
        }
        for (label, n) in &expected {
            assert_eq!(
                m.sip_responses.with_label_values(&[label, "in"]).get(),
                *n,
                "{label}"
            );
            assert_eq!(
                m.sip_responses.with_label_values(&[label, "out"]).get(),
                2 * n,
                "{label}"
            );
        }
        let methods = [
            Method::Invite,
            Method::Ack,
            Method::Bye,
            Method::Cancel,
            Method::Register,
            Method::Options,
            Method::Info,
            Method::Update,
            Method::Prack,
            Method::Subscribe,
            Method::Notify,
            Method::Refer,
            Method::Message,
            Method::Publish,
            Method::Other("FOO".into()),
            Method::Other("BAR".into()),
        ];
        for method in &methods {
            let start = StartLine::Request {
                method: method.clone(),
                uri: "sip:x@example.com".into(),
            };
            counts.count(&m, &start, Way::Out);
        }
        for method in &methods {
            let n = if method.label() == "other" { 2 } else { 1 };
            assert_eq!(
                m.sip_requests
                    .with_label_values(&[method.label(), "out"])
                    .get(),
                n,
                "{method}"
            );
            assert_eq!(
                m.sip_requests
                    .with_label_values(&[method.label(), "in"])
                    .get(),
                0
            );
        }
    }

    #[test]
    fn a_series_appears_only_once_counted() {
        let m = Metrics::new();
        let counts = SipCounts::new();
        counts.count(
            &m,
            &StartLine::Response {
                code: 486,
                reason: "".into(),
            },
            Way::In,
        );
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&m.registry.gather())
            .unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("centralino_sip_requests")
                    || l.starts_with("centralino_sip_responses")
            })
            .collect();
        assert_eq!(
            series,
            [r#"centralino_sip_responses_total{code="486",direction="in"} 1"#],
            "{text}"
        );
    }
}
