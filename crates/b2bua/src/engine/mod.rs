use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use centralino_config::{DidTarget, EngineConfig};
use centralino_flows::{Action as FlowAction, Facts, Flow as IvrFlow, Run};
use centralino_media::announce::{self, Library};
use centralino_media::g711::Law;
use centralino_media::prompt::Prompt;
use centralino_media::relay::Side;
use centralino_media::sdp::{self, Direction, Local};
use std::sync::Arc;

use centralino_routing::{
    AgentState, CallSpec, Catalog, Code, OfferOutcome, Output as RouteOutput, PauseReason,
    QueueAgents, Requirement, Router,
};
use centralino_sip::auth::{self, DigestAuth};
use centralino_sip::dialog::{self, Leg};
use centralino_sip::guard::{self, Framed, Rejection, reason_phrase};
use centralino_sip::registrar::{RegEvent, RegOutcome, Registrar};
use centralino_sip::segmap::SegMap;
use centralino_sip::session_timer;
use centralino_sip::txn::{Flow, Transactions, TxKey, TxOutput};
use centralino_sip::uri::{self, Scheme};
use centralino_sip::{Limits, Message, Method, OwnKeys, StartLine, Transport, Value, Via};
use centralino_types::dialplan::DialPlan;
use centralino_types::outcome::{CallOutcome, CallbackOutcome, QueueEvent};
use centralino_types::record::Record;
use centralino_types::{AgentId, CallId, Masked, QueueId, TenantId, TrunkId};
use prometheus::IntGauge;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tracing::{debug, info, warn};

use crate::media::{MediaCommand, MediaEvent, Peer};
use crate::metrics::Metrics;

/// Gauges lag activity by at most this much.
const GAUGE_PERIOD: Duration = Duration::from_millis(100);

/// RFC 3326 on the CANCEL to phones that lost a parallel ring: phones
/// then show no missed call (another phone or operator took it).
const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, REFER";

/// A non-100 provisional response is repeated this often while a call
/// waits, so proxies on the path never time the INVITE out (RFC 3261
/// §13.3.1.1: at least every minute).
const PROGRESS_REFRESH: Duration = Duration::from_secs(60);

/// The telephone-event payload type Centralino offers to operators.
const TELEPHONE_EVENT: u8 = 101;

/// Digits kept per call for its flow; older ones are dropped.
const MAX_DIGITS: usize = 64;

/// IVR answers copied into the operator's INVITE, at most.
const MAX_VARIABLE_HEADERS: usize = 16;

/// One trunk as the engine uses it, from its `[[trunks]]` entry (one
/// table indexed by the trunk's position; rebuilt at each reload).
#[derive(Debug)]
struct TrunkPolicy {
    /// Its name: metric label, TLS verdicts, and a trunk's identity across
    /// a reload.
    name: String,
    /// Whose trunk it is (its dial plan applies to what it dials).
    tenant: TenantId,
    /// The addresses its INVITEs come from.
    peers: Vec<IpAddr>,
    /// Its DIDs and where each goes.
    dids: DidTable,
    /// Where calls we place through it go (`None`: inbound only).
    outbound: Option<SocketAddr>,
    /// How its outbound side is reached (UDP or TLS).
    transport: Transport,
    /// The caller id our calls through it show.
    caller_id: String,
    /// Its OPTIONS interval (`None`: not pinged).
    options: Option<Duration>,
    /// INVITEs only over a TLS connection that presented this trunk's
    /// client certificate (`tls_peer_names`).
    mtls: bool,
    /// What we answer its digest challenges with.
    auth: Option<centralino_config::TrunkAuth>,
    /// In our trust domain (RFC 3325): `P-Asserted-Identity` read from
    /// its INVITEs and sent on ours.
    asserted_identity: bool,
    /// Found dead by OPTIONS: callbacks skip it, so a silent carrier does
    /// not cost each callback a Timer B wait before the next trunk. Kept
    /// across a reload by name: one found down stays down until it answers.
    down: bool,
}

impl TrunkPolicy {
    /// Whether calls of `tenant` may leave through it.
    fn dials_for(&self, tenant: TenantId) -> bool {
        self.outbound.is_some() && self.tenant == tenant
    }
}

/// What the engine does with one queue's calls, from its `[[queues]]`
/// entry (one table indexed by `QueueId`; rebuilt at each reload).
#[derive(Debug)]
struct QueuePolicy {
    /// Removed by a reload: its place kept, nothing reaches it, shown
    /// nowhere.
    retired: bool,
    /// Whose queue it is (its dial plan and trunks call back).
    tenant: TenantId,
    /// The tenant's name (supervisor views).
    tenant_name: String,
    /// The status a caller gets when the queue gives up on them.
    exit_status: u16,
    /// Position and expected wait are spoken this often.
    announce_every: Option<Duration>,
    /// Music on hold (the queue's own, else the node's; set with the
    /// prompts, kept across reloads).
    music: Option<Prompt>,
    /// Answered calls are recorded.
    record: bool,
    /// The operator script's name.
    script: Option<String>,
    /// Virtual hold: the key that asks for a callback, the prompts that
    /// offer it and those that confirm it.
    callback_key: Option<char>,
    callback_offer: Vec<String>,
    callback_confirm: Vec<String>,
    /// Virtual hold confirms the number first.
    callback_number: Option<centralino_config::CallbackNumber>,
    /// Callback attempts at most, and the delay between them, unless an
    /// outcome has its own (`callback_retries`).
    callback_max_attempts: u32,
    callback_retry: Duration,
    callback_retries: Vec<(String, u32, Duration)>,
    /// Callbacks dial the citizen first.
    customer_first: bool,
    /// What the operator hears on answering, for calls and for callbacks
    /// (`None`: the built-in tone).
    whisper: Vec<String>,
    callback_whisper: Option<Vec<String>>,
    /// What its service figures are measured against.
    service: centralino_config::ServiceTargets,
    /// What becomes of a caller it cannot serve.
    when_unserved: centralino_config::Unserved,
}

/// One queue's live gauges and counts.
struct QueueStats {
    waiting: IntGauge,
    oldest_wait: IntGauge,
    /// Operators by state.
    agents: Vec<IntGauge>,
    expected_wait: IntGauge,
    /// Visits offered, the last 15 minutes (the staffing advisor's rate).
    offered: staffing::RateWindow,
    /// The staffing advisor's figures.
    agents_needed: IntGauge,
    agents_short: IntGauge,
    /// The callers' mean patience the advisor measured (0: not yet).
    patience: IntGauge,
    /// Erlang A's last recommendation and when it was asked for.
    erlang_a: Option<(Instant, u32)>,
    /// When Erlang A was last asked of the driver, while unanswered.
    erlang_a_asked: Option<Instant>,
}

/// Where a DID's calls go first, with what they need.
#[derive(Clone, Debug)]
enum Target {
    /// Straight into a queue.
    Queue(QueueId, Arc<CallSpec>),
    /// Through an IVR flow (answered first); the spec is ANDed with what
    /// the flow adds.
    Flow(Arc<IvrFlow>, Arc<CallSpec>),
}

/// A trunk's DIDs.
type DidTable = HashMap<String, Target>;

/// Supervisor views are published at most this often.
const VIEWS_PERIOD: Duration = Duration::from_secs(1);
/// The longest an idle engine goes without accruing its operators' time
/// per state (`centralino_agent_state_seconds_total`).
const STATES_TICK: Duration = Duration::from_secs(5);

/// A tenant's operator-seconds by state (`Code::ALL` order), and the
/// counts they accrue at until the next refresh.
struct TenantTime {
    seconds: Vec<prometheus::Counter>,
    counts: [u32; 7],
}

/// How often idle authentication-failure counters are dropped.
const THROTTLE_SWEEP: Duration = Duration::from_secs(60);

/// Attempts at keying in a number before the caller keeps their place.
const VHOLD_TRIES: u8 = 3;

/// The interpreter's view of the engine, from disjoint fields (usable
/// while a call is borrowed from the call table).
macro_rules! facts {
    ($e:ident, $now:expr) => {
        EngineFacts {
            router: &$e.router,
            prompts: &$e.prompts,
            queues: &$e.queue_ids,
            unix: $e.wall.1 + $now.saturating_duration_since($e.wall.0).as_secs() as i64,
        }
    };
}

/// What the IVR interpreter sees of the engine.
struct EngineFacts<'a> {
    router: &'a Router,
    prompts: &'a Library,
    queues: &'a HashMap<String, QueueId>,
    unix: i64,
}

impl Facts for EngineFacts<'_> {
    fn unix_now(&self) -> i64 {
        self.unix
    }

    fn duration(&self, prompts: &[String]) -> Duration {
        prompts
            .iter()
            .filter_map(|p| self.prompts.get(p))
            .map(Prompt::duration)
            .sum()
    }

    fn staffed(&self, queue: &str) -> u32 {
        self.queues.get(queue).map_or(0, |&q| {
            let a = self.router.queue_agents(q);
            a.available + a.busy
        })
    }

    fn expected_wait(&self, queue: &str) -> Option<Duration> {
        self.router.queue_estimate(*self.queues.get(queue)?)
    }

    fn waiting(&self, queue: &str) -> u32 {
        self.queues
            .get(queue)
            .map_or(0, |&q| self.router.waiting_count(q) as u32)
    }
}

/// What a client transaction belongs to.
enum ClientRef {
    /// The INVITE of a call's current B-leg.
    BInvite(CallId),
    /// The INVITE of a B-leg we gave up on: a late 2xx gets ACK and BYE.
    Orphan { local: String, flow: Flow },
    /// The INVITE to the citizen of a callback.
    Citizen(CallId),
    /// The INVITE of an IVR transfer to an external number.
    Transfer(CallId),
    /// OPTIONS to an idle operator's phone: no answer logs them out.
    Qualify(AgentId),
    /// OPTIONS to an outbound trunk: no answer marks it down.
    TrunkPing(TrunkId),
    /// Our session refresh (UPDATE or re-INVITE) on a call's caller leg.
    Refresh(CallId),
    /// Our session refresh on the leg of a transfer to a number.
    TransferRefresh(CallId),
    /// Our re-INVITE moving an attended transfer's consulted operator
    /// (the B-leg whose Call-ID this is) onto the caller's call.
    Rejoin(CallId, String),
    /// A key press relayed by INFO to a call's `Side`, in the dialog
    /// with this Call-ID (that side's leg then).
    InfoRelay(CallId, Side, String),
    /// BYE, CANCEL: the answer changes nothing.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum CallTimer {
    Ring(u32),
    MaxWait,
    /// Position and expected wait, spoken to a waiting caller.
    Announce,
    /// The 183 repeated while waiting.
    Progress,
    /// The IVR flow's next deadline (prompt end, key timeout).
    Flow,
    /// The callback confirmation has played: end the call.
    CallbackDone,
    /// A predictive campaign's citizen answered this long ago: an
    /// operator must have them by now.
    AnswerGrace,
    /// The message to a citizen nobody could take has played: end the call.
    AbandonDone,
    /// A preview's operator neither accepted nor skipped in time (the
    /// offer it was armed for).
    Preview(u32),
    /// Virtual hold's number dialogue waited long enough for a key (the
    /// step it was armed for).
    Vhold(u32),
    /// The caller's session was not refreshed in time (the step it was
    /// armed for).
    SessionExpired(u32),
    /// A reliable provisional response (its RSeq) is due again.
    Reliable(u32),
    /// Our refresh of the session is due (the step it was armed for).
    SessionRefresh(u32),
    /// Our attended transfer's re-INVITE is due again after a glare
    /// (`491`; the try it was armed for).
    Rejoin(u32),
    /// Nobody was logged in to the queue the call entered: its policy for
    /// unserved callers applies unless someone came since.
    Nobody,
    /// The transfer leg's session was not refreshed in time, or our
    /// refresh of it is due (the step each was armed for).
    TransferExpired(u32),
    TransferRefresh(u32),
}

/// The B2BUA with its registrar and router: one owner, no locks.
///
/// Drive loop: feed network input with [`Engine::handle_datagram`] or
/// [`Engine::handle_framed`], call [`Engine::handle_timeout`] when
/// [`Engine::poll_timeout`] is due, and after each call drain
/// [`Engine::poll_output`] until `None`.
pub struct Engine {
    limits: Limits,
    txn: Transactions,
    registrar: Registrar,
    router: Router,
    metrics: Metrics,
    rng: StdRng,
    /// Per trunk (by position in the configuration).
    trunks: Vec<TrunkPolicy>,
    /// Per queue (by `QueueId`): what to do with its calls, and its gauges.
    queues: Vec<QueuePolicy>,
    queue_stats: Vec<QueueStats>,
    /// Each running campaign inside its window, by id: its pacer and
    /// what the supervisors' view names it by.
    pacers: HashMap<String, Paced>,
    /// Campaigns' numbers (their caller IDs): the running campaigns
    /// presenting each, with their queues.
    campaign_numbers: HashMap<String, Vec<(String, String)>>,
    /// Other nodes' offers: the grants (leases), the placeholders the
    /// router is matching now, and each held operator's placeholder.
    grants: centralino_cluster::Grants,
    remote_pending: HashMap<CallId, Option<AgentId>>,
    held: HashMap<String, remote::Held>,
    /// Each held operator's offer id by the secret its hand-over URI
    /// carries (`sip:offer-SECRET@...`).
    held_tokens: HashMap<String, String>,
    /// The asking side: offers out, the other nodes' free operators.
    asking: Option<Box<handover::Asking>>,
    /// Agreements between firms: what this node lends now.
    lending: centralino_cluster::Lending,
    /// What the other nodes report lent: (borrower, lender, calls).
    lent_elsewhere: Vec<(String, String, u32)>,
    /// Each queue had an operator free at the last gauge refresh.
    free_seen: Vec<bool>,
    /// Router groups other nodes' offers created.
    remote_groups: usize,
    /// Operators removed from the configuration, still on a call.
    retiring: std::collections::HashSet<AgentId>,
    /// Campaign attempts resolved since the last tick, for the pacers.
    paced: Vec<(String, centralino_campaigns::Outcome)>,
    /// Per tenant: operators by state.
    tenant_gauges: Vec<Vec<IntGauge>>,
    /// Per tenant, the time its operators spent in each state so far.
    tenant_seconds: Vec<TenantTime>,
    /// When `tenant_seconds` was last brought up to date.
    states_at: Instant,
    agent_ids: HashMap<String, AgentId>,
    login_paused: bool,
    /// OPTIONS to idle operators' phones this often (`None`: off).
    qualify: Option<Duration>,
    /// When each logged-in operator's phone is next asked.
    qualify_due: BinaryHeap<Reverse<(Instant, AgentId)>>,
    /// Operators with an entry in `qualify_due` (one chain each).
    /// Operators signed out of the service (their desk, a supervisor):
    /// their phones may stay registered, no call is offered to them until
    /// they make themselves available or paused again.
    signed_out: std::collections::HashSet<AgentId>,
    /// Supervisors' phones on calls, by their dialog's Call-ID.
    phone_monitors: HashMap<String, PhoneMonitor>,
    /// The SIP accounts whose phones may listen in, and their firm.
    supervisor_phones: HashMap<String, TenantId>,
    /// Each tenant's prefixes its operators may transfer callers to.
    transfer_numbers: Vec<Vec<String>>,
    /// Tenant names, by index.
    tenant_names: Vec<String>,
    qualify_scheduled: std::collections::HashSet<AgentId>,
    trunk_due: BinaryHeap<Reverse<(Instant, TrunkId)>>,
    max_calls: usize,
    /// Live server transactions allowed per non-trunk address.
    max_per_source: usize,
    /// Admission token bucket: (tokens, last refill) when a rate is set.
    admission: Option<(f64, f64, Instant)>,
    /// Our User-Agent, one buffer every request shares.
    user_agent: Value,
    prompts: Arc<Library>,
    codecs: Vec<Law>,
    advertise: Option<IpAddr>,
    /// The RTP port range (a peer naming our own address in it loops).
    media_range: (u16, u16),
    /// Queue ids by name (flows name their queues).
    queue_ids: HashMap<String, QueueId>,
    catalog: Catalog,
    /// Wall clock: Unix seconds at an instant (the driver sets it).
    wall: (Instant, i64),
    /// Our UDP SIP address, for calls we place (the driver sets it).
    outbound_local: Option<SocketAddr>,
    /// Our TLS listener's address: Via and Contact of what we send to a
    /// trunk over TLS (the driver opens the connection itself).
    outbound_tls_local: Option<SocketAddr>,
    /// TLS connections whose client certificate a trunk's CA and names
    /// accepted, with those trunks' names. The driver says so once per
    /// connection, before its first message (`connection_opened`), rather
    /// than in every `Flow`: `Flow` stays a small `Copy` key, a verdict by
    /// name survives a reload that reorders trunks, and a connection's
    /// identity cannot differ between two of its messages. At most one
    /// entry per open connection (the driver's `max_tcp_connections`).
    conn_trunks: HashMap<u64, Box<[String]>>,
    /// Per tenant: what its trunks may dial.
    dial_plans: Vec<DialPlan>,
    /// The built-in signal of a callback to the operator.
    callback_tone: Prompt,
    /// When the supervisor views were last published.
    views_at: Option<Instant>,
    // Keyed by our own call numbers, B-leg Call-IDs and branches: the
    // faster hash (`OwnKeys`). `by_a` is keyed by the caller's Call-ID.
    // The tables that grow with the calls are segmented (see
    // `centralino_sip::segmap`): at 40,000 calls one table's doubling
    // would stop the engine for tens of milliseconds.
    calls: SegMap<CallId, Call, OwnKeys>,
    by_a: SegMap<String, CallId>,
    by_b: SegMap<String, CallId, OwnKeys>,
    client: SegMap<TxKey, ClientRef, OwnKeys>,
    /// ACKs sent for 2xx answers whose client transaction is forgotten at
    /// the answer, to send again on a retransmitted 2xx.
    acks: send::AckCache,
    /// The SIP message counters' children, kept (`telemetry::SipCounts`).
    sip_counts: telemetry::SipCounts,
    /// The text of each local address our Vias name, made once.
    sent_by: HashMap<SocketAddr, Arc<str>>,
    timers: BinaryHeap<Reverse<(Instant, CallId, CallTimer)>>,
    next_call: u64,
    /// When the driver read the datagram being handled (its clock): the
    /// dispatch latency of a call it starts counts from there.
    read_at: Option<Instant>,
    /// Set by the driver when its input backlog is deep: new calls are
    /// refused with 503 so the calls in progress keep their latency.
    overloaded: bool,
    /// Draining for a shutdown: new calls get 503.
    draining: bool,
    /// When idle authentication-failure counters were last dropped.
    throttle_swept: Instant,
    /// Ending every call for the shutdown: callbacks are left for the next
    /// start (never retried or failed for it).
    shutting_down: bool,
    /// When the gauges are next sampled (after activity).
    gauges_due: Option<Instant>,
    out: VecDeque<Output>,
    retrans_seen: u64,
    /// RFC 3261's T1: reliable provisional responses are retransmitted
    /// from it (RFC 3262 §3).
    t1: Duration,
    timeouts_seen: u64,
    stray_seen: u64,
}

impl Engine {
    /// The wall clock: Unix seconds at `now` (opening hours in flows).
    pub fn set_wall_clock(&mut self, now: Instant, unix: i64) {
        self.wall = (now, unix);
    }

    fn unix_ms_at(&self, now: Instant) -> i64 {
        self.wall.1 * 1000 + now.saturating_duration_since(self.wall.0).as_millis() as i64
    }

    fn unix_at(&self, now: Instant) -> i64 {
        self.wall.1 + now.saturating_duration_since(self.wall.0).as_secs() as i64
    }

    /// The prompts (announcements) and the music on hold of each queue,
    /// loaded by the driver at start-up.
    pub fn set_prompts(&mut self, prompts: Arc<Library>, music: Vec<Option<Prompt>>) {
        self.prompts = prompts;
        let mut music = music.into_iter();
        for q in &mut self.queues {
            q.music = music.next().flatten();
        }
    }

    /// The metrics (the driver counts its own events there).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The guard's limits (the driver frames TCP with them).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Load shedding: while `true`, new INVITEs get 503 with Retry-After
    /// (stateless, cheap); REGISTER, in-dialog requests and responses are
    /// still handled, so calls in progress complete.
    /// The driver logs the changes (it knows why, and keeps a flapping
    /// signal from filling the log).
    pub fn set_overloaded(&mut self, overloaded: bool) {
        if overloaded != self.overloaded {
            debug!(overloaded, "admission of new calls changed");
        }
        self.overloaded = overloaded;
    }

    /// Calls in progress.
    /// Graceful shutdown, first step: new calls get 503 with Retry-After
    /// (the carrier routes them to another node); calls in progress,
    /// queued ones included, go on; registrations keep working.
    pub fn set_draining(&mut self) {
        if !self.draining {
            warn!(
                calls = self.calls.len(),
                "draining: new calls refused with 503"
            );
        }
        self.draining = true;
        self.metrics.draining.set(1);
    }

    /// Graceful shutdown, last step (the drain's deadline): every call still
    /// here ends (BYE to answered legs, 503 to callers never answered),
    /// outcome `shutdown`. Callbacks are not retried or failed for it: the
    /// next start finds them in progress and recovers them.
    pub fn shutdown(&mut self, now: Instant) {
        self.draining = true;
        self.metrics.draining.set(1);
        self.shutting_down = true;
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        if !ids.is_empty() {
            warn!(
                calls = ids.len(),
                "drain deadline: ending the calls still in progress"
            );
        }
        for id in ids {
            match self.calls.get(&id).map(|c| c.phase) {
                Some(Phase::Connected) => {
                    self.end_connected(now, id, true, true, CallOutcome::Shutdown)
                }
                Some(_) => self.end_unanswered(now, id, 503, CallOutcome::Shutdown, false),
                None => {}
            }
        }
        // The BYEs and responses leave through the transactions.
        self.pump(now);
    }

    /// The next output, until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Moves the operators' board clock to `unix` seconds, the system's
    /// wall clock as its readers (the API) see it: the driver calls it once
    /// per turn, before the turn's inputs, so every change of state made in
    /// the turn is stamped with its second (the wallboard's time in state).
    pub fn tick_clock(&self, unix: i64) {
        self.router.tick_board(unix);
    }

    /// When [`Self::handle_timeout`] must next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.txn.poll_timeout(),
            self.registrar.poll_timeout(),
            self.router.poll_timeout(),
            self.timers.peek().map(|Reverse((t, _, _))| *t),
            self.qualify_due.peek().map(|Reverse((t, _))| *t),
            self.trunk_due.peek().map(|Reverse((t, _))| *t),
            self.gauges_due,
            Some(self.states_at + STATES_TICK),
            self.grants.poll_timeout(),
            self.asking.as_ref().and_then(|a| a.out.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One UDP datagram.
    pub fn handle_datagram(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        let r = guard::parse_datagram(data, &self.limits);
        self.handle_framed(now, flow, r);
    }

    /// As [`Engine::handle_datagram`], for a datagram the driver read at
    /// `read_at` (before `now`): a call it starts measures its dispatch
    /// latency (`centralino_dispatch_seconds`) from then, its wait in
    /// the driver's queue included.
    pub fn handle_datagram_read(
        &mut self,
        now: Instant,
        read_at: Instant,
        flow: Flow,
        data: &[u8],
    ) {
        let framed = guard::parse_datagram(data, &self.limits);
        self.handle_framed_read(now, read_at, flow, framed);
    }

    /// As [`Engine::handle_datagram_read`], for a datagram its reader
    /// already framed (the driver's I/O threads parse off the engine's
    /// thread).
    pub fn handle_framed_read(
        &mut self,
        now: Instant,
        read_at: Instant,
        flow: Flow,
        framed: Result<Framed, Rejection>,
    ) {
        self.read_at = Some(read_at.min(now));
        self.handle_framed(now, flow, framed);
        self.read_at = None;
    }

    /// One framed message (or refusal) from a stream or a datagram.
    pub fn handle_framed(&mut self, now: Instant, flow: Flow, framed: Result<Framed, Rejection>) {
        match framed {
            // RFC 5626 §4.4.1: a CRLFCRLF "ping" on a connection gets a
            // CRLF "pong", which is how a phone behind NAT knows its flow
            // (and the mapping) still works. On UDP nothing answers it.
            Ok(Framed::Keepalive) => {
                if flow.transport.is_reliable() {
                    self.out.push_back(Output::Transmit {
                        flow,
                        bytes: b"\r\n".to_vec(),
                    });
                }
            }
            Ok(Framed::Message(msg)) => self.handle_message(now, flow, msg),
            Err(rej) => {
                self.metrics
                    .sip_parse_errors
                    .with_label_values(&[rej.error.code()])
                    .inc();
                debug!(error_code = rej.error.code(), peer = %flow.remote, "message refused by the guard");
                if let Some(reply) = rej.reply {
                    self.send_stateless(flow, &reply);
                }
            }
        }
        self.pump(now);
    }

    /// Fires timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.gauges_due.is_some_and(|t| t <= now) {
            self.refresh_gauges(now);
        } else if now >= self.states_at + STATES_TICK {
            // Idle: only the operators' time accrues (no views pushed
            // to the desks when nothing changed).
            self.accrue_states(now);
        }
        self.txn.handle_timeout(now);
        self.registrar.handle_timeout(now);
        self.router.handle_timeout(now);
        while let Some(Reverse((at, call, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.call_timer(now, call, timer);
            self.drain_txn(now);
        }
        while let Some(Reverse((at, agent))) = self.qualify_due.peek().copied() {
            if at > now {
                break;
            }
            self.qualify_due.pop();
            self.qualify_agent(now, agent);
        }
        while let Some(Reverse((at, trunk))) = self.trunk_due.peek().copied() {
            if at > now {
                break;
            }
            self.trunk_due.pop();
            self.ping_trunk(now, trunk);
        }
        self.remote_timeouts(now);
        self.pump(now);
    }

    /// Dispatches transaction outputs and routing decisions until quiet.
    fn pump(&mut self, now: Instant) {
        loop {
            self.drain_txn(now);
            let events: Vec<RegEvent> = self.registrar.drain_events().collect();
            for e in &events {
                match e {
                    RegEvent::Login(user) => {
                        if let Some(&id) = self.agent_ids.get(user) {
                            if self.signed_out.contains(&id) {
                                // A phone registers by itself; a person
                                // decides to work (from the desk).
                                info!(agent = %user, "phone registered; the operator stays signed out");
                                continue;
                            }
                            info!(agent = %user, "operator logged in");
                            self.router.login(now, id, self.login_paused);
                            self.agent_event(now, id, "login", None);
                            if let Some(every) = self.qualify
                                && self.qualify_scheduled.insert(id)
                            {
                                self.qualify_due.push(Reverse((now + every, id)));
                            }
                            if self.login_paused {
                                self.agent_event(now, id, "pause", Some("login".to_owned()));
                            }
                        }
                    }
                    RegEvent::Logout(user) => {
                        if let Some(&id) = self.agent_ids.get(user) {
                            info!(agent = %user, "operator logged out");
                            // A preview on their desk goes to another.
                            if let AgentState::Reserved(call) = self.router.agent(id).state {
                                self.end_preview(now, call, id, OfferOutcome::Rejected);
                            }
                            self.router.logout(id);
                            self.agent_event(now, id, "logout", None);
                        }
                    }
                }
            }
            let mut progressed = !events.is_empty();
            while let Some(o) = self.router.poll_output() {
                progressed = true;
                match o {
                    RouteOutput::Offer(d) => self.offer(now, d.call, d.agent),
                    RouteOutput::Reclaimed { call, agent } => self.reclaimed(now, call, agent),
                }
            }
            if !progressed {
                break;
            }
        }
        self.retire_done();
        // Gauges are sampled, not updated per message: with hundreds of
        // queues and tenants a refresh is thousands of atomic stores, which
        // would cost more than the call itself at thousands of calls/s.
        let soon = now + GAUGE_PERIOD;
        self.gauges_due = Some(self.gauges_due.map_or(soon, |d| d.min(soon)));
    }

    fn drain_txn(&mut self, now: Instant) {
        while let Some(o) = self.txn.poll_output() {
            match o {
                TxOutput::Transmit { flow, bytes } => {
                    self.out.push_back(Output::Transmit { flow, bytes })
                }
                TxOutput::Request { flow, msg } => self.on_request(now, flow, msg),
                TxOutput::Response { key, msg } => self.on_response(now, key, msg),
                TxOutput::Timeout { key } => self.on_client_timeout(now, key),
                TxOutput::NoAck { call_id, .. } => self.on_no_ack(now, &call_id),
            }
        }
    }

    fn call_timer(&mut self, now: Instant, call_id: CallId, timer: CallTimer) {
        let _span = self.call_span(call_id).entered();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        match timer {
            CallTimer::Ring(attempt) => {
                let Some(b) = call.forks.iter().find(|b| b.attempt == attempt) else {
                    return;
                };
                let name = offering::leg_name(&self.router, b);
                info!(agent = %name, "operator did not answer in time");
                self.metrics
                    .agent_offers
                    .with_label_values(&["no_answer"])
                    .inc();
                self.b_leg_failed(
                    now,
                    call_id,
                    |b| b.attempt == attempt,
                    OfferOutcome::NoAnswer,
                );
            }
            CallTimer::MaxWait => {
                // Connected, or re-queued since (a new wait started then).
                if call.phase == Phase::Connected
                    || now.saturating_duration_since(call.enqueued)
                        < self.router.queue(call.queue).max_wait
                {
                    return;
                }
                if call.preview.is_some_and(|p| {
                    matches!(self.router.agent(p.agent).state,
                        AgentState::Reserved(c) | AgentState::Ringing(c) if c == call_id)
                }) {
                    // An operator holds the contact (reading it, or their
                    // phone rings after they accepted): nobody waits. Looked
                    // at again after another preview's time.
                    let again = call
                        .outbound()
                        .and_then(|o| o.campaign.as_ref()?.preview)
                        .unwrap_or(Duration::from_secs(60));
                    self.timers
                        .push(Reverse((now + again, call_id, CallTimer::MaxWait)));
                    return;
                }
                if call.unserved {
                    // Already offered something (a callback dialogue).
                    return;
                }
                info!("maximum wait reached");
                let queue = call.queue;
                self.unserved(now, call_id, queue, "max_wait", CallOutcome::MaxWait);
            }
            CallTimer::Progress => {
                let Some(inbound) = call.inbound().filter(|i| !i.answered) else {
                    return;
                };
                if call.phase == Phase::Connected {
                    return;
                }
                let mut r = if call.media.late_offer {
                    inbound.response(180, "Ringing")
                } else {
                    let mut r = inbound.response(183, "Session Progress");
                    r.set_body(
                        Some("application/sdp"),
                        a_sdp(&mut call.media, &self.codecs),
                    );
                    r
                };
                r.push_shared("Contact", Self::caller_contact(call));
                self.timers.push(Reverse((
                    now + PROGRESS_REFRESH,
                    call_id,
                    CallTimer::Progress,
                )));
                self.provisional(now, call_id, r);
            }
            CallTimer::Reliable(rseq) => {
                let t1 = self.t1;
                let Some(rel) = call.reliable.as_mut() else {
                    return;
                };
                let Some((sent, r, first, interval)) = rel.unacked.as_mut() else {
                    return;
                };
                if *sent != rseq {
                    return;
                }
                if now.saturating_duration_since(*first) >= 64 * t1 {
                    // §3: no PRACK for 64·T1: the INVITE is refused.
                    warn!("no PRACK for a reliable provisional response: call refused");
                    let held = rel.held_final.is_some();
                    if let Some(i) = call.inbound().filter(|_| held) {
                        // An operator already answered: released by BYE.
                        let (key, r) = (i.key.clone(), i.response(500, reason_phrase(500)));
                        self.respond(now, &key, &r);
                        self.end_connected(now, call_id, false, true, CallOutcome::NoPrack);
                    } else {
                        self.end_unanswered(now, call_id, 500, CallOutcome::NoPrack, false);
                    }
                    return;
                }
                *interval *= 2;
                // The last wait ends at 64·T1 exactly, when it is refused.
                let (r, next) = (r.clone(), (now + *interval).min(*first + 64 * t1));
                let Some(key) = call.inbound().map(|i| i.key.clone()) else {
                    return;
                };
                self.timers
                    .push(Reverse((next, call_id, CallTimer::Reliable(rseq))));
                self.respond(now, &key, &r);
            }
            CallTimer::CallbackDone => {
                self.end_unanswered(now, call_id, 480, CallOutcome::CallbackRequested, false);
            }
            CallTimer::AnswerGrace => {
                if matches!(call.phase, Phase::Queued | Phase::Offering) {
                    self.abandon_answered(now, call_id);
                }
            }
            CallTimer::AbandonDone => {
                self.end_unanswered(now, call_id, 480, CallOutcome::Abandoned, false);
            }
            CallTimer::Preview(attempt) => self.preview_expired(now, call_id, attempt),
            CallTimer::SessionRefresh(step) => {
                if call.session_step != step || call.session_timer.is_none() || !call.we_refresh {
                    return;
                }
                self.send_refresh(now, call_id);
            }
            CallTimer::TransferExpired(step) => self.transfer_session_expired(now, call_id, step),
            CallTimer::TransferRefresh(step) => self.transfer_refresh_due(now, call_id, step),
            CallTimer::Nobody => {
                let queue = call.queue;
                if call.phase == Phase::Queued && call.in_queue && self.nobody_in(queue) {
                    self.unserved(now, call_id, queue, "nobody", CallOutcome::MaxWait);
                }
            }
            CallTimer::Rejoin(attempt) => {
                if call
                    .rejoin
                    .as_ref()
                    .is_some_and(|r| r.pending && r.attempt == attempt)
                {
                    self.send_rejoin(now, call_id);
                }
            }
            CallTimer::SessionExpired(step) => {
                if call.session_step != step || call.session_timer.is_none() {
                    return;
                }
                // RFC 4028 §10: the refresher went quiet (a carrier that
                // lost the call without a BYE); both sides are let go.
                warn!("session timer expired: the caller's side stopped refreshing");
                self.metrics.session_timer_expired.inc();
                if call.phase == Phase::Connected {
                    self.end_connected(now, call_id, true, true, CallOutcome::SessionExpired);
                } else {
                    self.end_unanswered(now, call_id, 408, CallOutcome::SessionExpired, false);
                }
            }
            CallTimer::Flow => {
                let Some(mut run) = call.run.take() else {
                    return;
                };
                let facts = facts!(self, now);
                let actions = run.handle_timeout(now, &facts);
                call.run = Some(run);
                self.flow_actions(now, call_id, actions);
            }
            CallTimer::Announce => {
                // Only while waiting (not over a confirmation or the
                // message to an abandoned citizen).
                if !matches!(call.phase, Phase::Queued | Phase::Offering) {
                    return;
                }
                let queue = call.queue;
                if let Some(every) = self.queues[queue.0 as usize].announce_every {
                    self.timers
                        .push(Reverse((now + every, call_id, CallTimer::Announce)));
                }
                // Not over the number dialogue.
                if call.vhold.is_none() {
                    self.announce(call_id, queue);
                }
            }
            CallTimer::Vhold(step) => {
                if step == call.vhold_step && matches!(call.phase, Phase::Queued | Phase::Offering)
                {
                    self.vhold_timeout(now, call_id);
                }
            }
        }
    }

    /// A report from the media plane.
    pub fn handle_media(&mut self, now: Instant, event: MediaEvent) {
        match event {
            MediaEvent::Dtmf { call, side, digit } => {
                self.on_digit(now, call, side, digit, "rfc4733");
                self.event_by_info(now, call, side, digit);
            }
            MediaEvent::Idle { call, side } => {
                let _span = self.call_span(call).entered();
                let early = self
                    .calls
                    .get(&call)
                    .is_some_and(|c| c.outbound().is_some_and(|o| !o.answered) && side == Side::A);
                if early {
                    // Early media may fall silent while the phone rings;
                    // the answer's bridge starts the liveness clock anew.
                    return;
                }
                if self.calls.get(&call).map(|c| c.phase) == Some(Phase::Connected) {
                    self.metrics
                        .media_timeouts
                        .with_label_values(&[side.label()])
                        .inc();
                    if side == Side::B && self.requeue_after_operator_loss(now, call) {
                        return self.pump(now);
                    }
                    warn!(
                        side = side.label(),
                        "no RTP from a bridged leg, ending the call"
                    );
                    self.end_connected(now, call, true, true, CallOutcome::MediaTimeout);
                }
            }
            MediaEvent::Reserved {
                call,
                a_port,
                b_port,
            } => {
                let _span = self.call_span(call).entered();
                self.media_reserved(now, call, a_port, b_port);
            }
            MediaEvent::MonitorPort { call, port } => self.monitor_port(now, call, port),
            MediaEvent::MonitorGone { call } => self.monitor_gone(now, call),
            MediaEvent::MonitorDigit { call, digit } => self.monitor_digit(now, call, digit),
            MediaEvent::Failed { call }
                if self.calls.get(&call).is_some_and(|c| c.opening.is_some()) =>
            {
                self.media_unavailable(now, call);
            }
            MediaEvent::Failed { call } => {
                let _span = self.call_span(call).entered();
                warn!("media could not be set up, ending the call");
                match self.calls.get(&call).map(|c| c.phase) {
                    Some(Phase::Connected) => {
                        self.end_connected(now, call, true, true, CallOutcome::MediaFailed);
                    }
                    Some(_) => self.end_unanswered(now, call, 503, CallOutcome::MediaFailed, false),
                    None => {}
                }
            }
        }
        self.pump(now);
    }
}

// One `impl Engine` per concern, in the layout of quinn-proto's
// `connection/`; declared after `facts!`, which some of them use.
mod answer;
mod call;
mod callbacks;
mod campaigns;
pub use campaigns::CampaignView;
mod config;
mod consult;
mod handover;
mod remote;
pub use config::ReloadRefused;
mod dialogs;
mod ingress;
mod io;
pub use io::*;
mod ivr;
mod monitor;
mod monitor_phone;
pub use monitor::{MonitorError, MonitorTarget};
mod offering;
mod presence;
mod refer;
mod send;
mod session;
mod setup;
mod staffing;
mod teardown;
mod telemetry;
#[cfg(test)]
mod tests;
mod transfer;
mod unserved;
mod vhold;

use answer::{
    a_sdp, b_answer, b_offer, b_sdp, citizen_peer, open_command, reoffer, sdp_offer, stamp, stamped,
};
use call::*;
use campaigns::Paced;
use ingress::{allows, allows_update, asserted_caller};
use ivr::{names_to_prompts, variables_of, whisper_prompts};
use monitor::Monitoring;
use monitor_phone::PhoneMonitor;
use session::{REFRESH_RETRY, RefreshAnswer, RefreshTries, refresh_answer};
