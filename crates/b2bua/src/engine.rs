use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use centralino_config::{Config, DidTarget};
use centralino_flows::{Action as FlowAction, Facts, Flow as IvrFlow, Run};
use centralino_media::announce::{self, Library};
use centralino_media::g711::Law;
use centralino_media::ports::Ports;
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
use centralino_sip::session_timer;
use centralino_sip::txn::{Flow, Transactions, TxKey, TxOutput};
use centralino_sip::uri::{self, Scheme};
use centralino_sip::{Limits, Message, Method, StartLine, Transport, Via};
use centralino_types::dialplan::DialPlan;
use centralino_types::record::Record;
use centralino_types::{AgentId, CallId, Masked, QueueId};
use prometheus::IntGauge;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tracing::{debug, info, warn};

use crate::media::{MediaCommand, MediaEvent, MediaPorts, PORT_QUARANTINE, Peer, PoolPorts};
use crate::metrics::Metrics;

/// Gauges lag activity by at most this much.
const GAUGE_PERIOD: Duration = Duration::from_millis(100);

/// RFC 3326 on the CANCEL to phones that lost a parallel ring: phones
/// then show no missed call (another phone or operator took it).
const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK";

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

/// What the engine asks its driver to do.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes along `flow`.
    Transmit {
        /// Destination and socket.
        flow: Flow,
        /// The serialised message.
        bytes: Vec<u8>,
    },
    /// Instruct the media plane.
    Media(MediaCommand),
    /// A call record or queue log event, for the store (batched there).
    Record(Record),
    /// Store a callback request (virtual hold); answer with
    /// [`Engine::callback_stored`] once it is durable, or not.
    StoreCallback {
        /// The call asking.
        call: CallId,
        /// Its queue.
        queue: String,
        /// The number to call back (the caller's).
        number: String,
        /// When the call entered the queue (Unix seconds): the request
        /// keeps its place.
        enqueued_unix: i64,
    },
    /// What an operator's desktop shows: the call offered to them (with
    /// the IVR's answers and the queue's script), or `None` once it is
    /// over for them.
    AgentCall {
        /// The operator.
        agent: String,
        /// The call, while offered or connected.
        info: Option<AgentCall>,
    },
    /// The queues as a supervisor sees them (at most once a second, after
    /// activity).
    Queues(Vec<QueueView>),
    /// A callback moved on: record it in the store.
    CallbackState {
        /// The callback's id in the store.
        id: String,
        /// What happened.
        state: CallbackState,
    },
}

/// One queue for the supervisor's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// The tenant (firm) it belongs to.
    pub tenant: String,
    /// Calls not yet answered (waiting or ringing an operator).
    pub waiting: u32,
    /// Wall clock (Unix ms) the oldest of them entered, if any: readers
    /// compute its wait at read time.
    pub oldest_since_ms: Option<i64>,
    /// Expected wait of a call arriving now, seconds.
    pub expected_wait_seconds: u64,
    /// Operators reached by its first ring: available, busy, paused,
    /// logged out.
    pub agents: [(&'static str, u32); 4],
    /// Callbacks the queue can take now: operators available in its first
    /// ring less the callbacks already waiting for one. The scheduler
    /// claims no more than this, so a booking rush does not hold RTP ports
    /// and spend attempts on callbacks nobody is free to take.
    pub callback_room: u32,
    /// Callbacks of this queue the engine has been handed since it
    /// started: the scheduler subtracts those it claimed that this view
    /// has not seen yet.
    pub callbacks_started: u64,
}

/// Where the operator is with the call on their desktop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeskState {
    /// Their phone rings.
    Offered,
    /// They answered.
    Connected,
}

impl DeskState {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Connected => "connected",
        }
    }
}

/// Why an operator's state cannot change as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentStateError {
    /// No such operator.
    #[error("no such operator")]
    Unknown,
    /// Not registered: a phone must log in first.
    #[error("the operator is logged out (their phone must register first)")]
    LoggedOut,
    /// Ringing or talking: pause after the call (wrap-up may be paused).
    #[error("the operator is on a call: pause during wrap-up or after it")]
    Busy,
}

/// The call an operator is offered or talking to, for their desktop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCall {
    /// Ringing or answered.
    pub state: DeskState,
    /// Call record id (answers are stored against it).
    pub call: String,
    /// Queue name.
    pub queue: String,
    /// The IVR flow the caller walked, if any.
    pub flow: Option<String>,
    /// What the caller chose and answered there.
    pub variables: Vec<(String, String)>,
    /// The queue's operator script.
    pub script: Option<String>,
    /// The callback being executed, if it is one.
    pub callback: Option<String>,
}

/// A callback the driver claimed from the store, to execute now.
#[derive(Clone, Debug)]
pub struct DueCallback {
    /// Id in the store.
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// The citizen's number.
    pub number: String,
    /// Extra requirements (an expression).
    pub requirements: Option<String>,
    /// Priority.
    pub priority: i32,
    /// When it was asked for (Unix seconds): it keeps that place.
    pub created_unix: i64,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
}

/// A callback's progress, for the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackState {
    /// An operator answered: the citizen is about to be dialled. The
    /// driver makes this durable and answers with
    /// [`Engine::callback_dialing`] before the INVITE leaves.
    Dialing {
        /// The call executing it.
        call: CallId,
    },
    /// The citizen answered.
    Done,
    /// Try again after `after` (busy, no answer, no operator, failure).
    Retry {
        /// Why this attempt failed.
        outcome: &'static str,
        /// When to try again.
        after: Duration,
    },
    /// No attempt left, or it cannot be executed.
    Failed {
        /// Why.
        outcome: &'static str,
    },
    /// The operator left before the citizen was dialled: back to pending
    /// at once, this attempt not counted (the citizen saw nothing of it),
    /// keeping the request's place.
    Requeue {
        /// Why the operator left (`agent_hangup`, `media_timeout`...).
        outcome: &'static str,
    },
}

/// What a trunk's peers must show besides their address.
#[derive(Clone, Debug)]
struct TrunkSecurity {
    /// The trunk's name (TLS verdicts name trunks).
    name: String,
    /// INVITEs only over a TLS connection that presented this trunk's
    /// client certificate (`tls_peer_names`).
    mtls: bool,
    /// How its outbound side is reached (UDP or TLS).
    outbound: Transport,
    /// What we answer its digest challenges with.
    auth: Option<centralino_config::TrunkAuth>,
    /// In our trust domain (RFC 3325): `P-Asserted-Identity` read from
    /// its INVITEs and sent on ours.
    asserted_identity: bool,
}

/// A call that is a callback being executed.
#[derive(Debug)]
struct Outbound {
    id: String,
    attempt: u32,
    /// Dial the citizen first, then queue them.
    customer_first: bool,
    /// The citizen's INVITE, while it rings.
    invite: Option<TxKey>,
    /// The citizen's INVITE has left: their phone may have rung.
    dialled: bool,
    /// The citizen answered.
    answered: bool,
    /// The outbound trunk dialled through (index in `trunk_out`).
    trunk: usize,
    /// Where the network's early media comes from (its 18x SDP), once the
    /// waiting operator was bridged to it.
    early_media: Option<SocketAddr>,
}

/// A call's anchored media as the signalling side knows it.
#[derive(Debug)]
struct CallMedia {
    /// Local address the ports are bound on.
    ip: IpAddr,
    /// Address written into SDP.
    sdp_ip: IpAddr,
    a_port: u16,
    b_port: u16,
    a: Peer,
    a_direction: Direction,
    b: Option<Peer>,
    b_direction: Direction,
    /// o= session id towards the caller (the operator gets id + 1).
    session: u64,
    version: u64,
    /// Key presses so far (for the call's flow).
    digits: String,
    /// The caller's INVITE had no SDP: our offer goes in the 200 OK and
    /// their answer comes in the ACK; the media opens then.
    late_offer: bool,
    /// The media plane has the call (`Open` sent).
    opened: bool,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BState {
    Calling,
    Ringing,
    Answered,
}

#[derive(Debug)]
struct BLeg {
    agent: AgentId,
    /// Offer number within the call (keys its ring timer).
    attempt: u32,
    invite_key: TxKey,
    call_id: String,
    local: String,
    flow: Flow,
    state: BState,
    dialog: Option<Leg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Answered, walking an IVR flow.
    Ivr,
    Queued,
    Offering,
    Connected,
}

struct Call {
    /// `call{call=…}`: every log line about the call carries it.
    span: tracing::Span,
    phase: Phase,
    queue: QueueId,
    enqueued: Instant,
    started: Instant,
    a_key: TxKey,
    a_invite: Box<Message>,
    a_tag: String,
    a_leg: Leg,
    caller: String,
    /// The caller asked not to be identified (RFC 3323/3325 `Privacy`):
    /// operators are offered the call from "anonymous"; the record keeps
    /// the number.
    private: bool,
    /// B-legs ringing (one, or several with ring-all).
    forks: Vec<BLeg>,
    /// The B-leg that answered.
    b: Option<BLeg>,
    attempt: u32,
    media: CallMedia,
    /// The caller's leg got its 200 OK (IVR calls are answered first).
    answered: bool,
    /// Entered a queue (queue metrics apply).
    in_queue: bool,
    /// What the DID asks of every call.
    spec: Arc<CallSpec>,
    /// The IVR walk, while it lasts.
    run: Option<Run>,
    /// A flow waiting for the media (late offer: it opens at the ACK).
    pending_flow: Option<Arc<IvrFlow>>,
    /// Call record id (unique across restarts).
    record_id: String,
    /// When an operator answered, and who.
    connected: Option<(Instant, String)>,
    /// The caller asked to be called back; the store has not answered yet.
    callback_asked: bool,
    /// Virtual hold's number dialogue in progress, and its step (stale
    /// timers carry an older step).
    vhold: Option<Vhold>,
    vhold_step: u32,
    /// Set when the call is a callback being executed (agent first).
    outbound: Option<Outbound>,
    /// An IVR transfer to an external number: its INVITE while it rings,
    /// its dialog once answered.
    transfer: Option<TransferLeg>,
    /// Whose call it is: the tenant of the trunk it came in on, or of the
    /// queue that calls back (its dial plan and outbound trunks apply).
    tenant: usize,
    /// The caller's session timer (RFC 4028), when its INVITE asked for
    /// one and supports the extension: the interval (seconds); the caller
    /// refreshes, and a call whose refreshes stop is ended. The step
    /// tells a stale expiry timer from the current one.
    session_timer: Option<u32>,
    session_step: u32,
    /// Centralino refreshes the session (RFC 4028: the caller asked for
    /// `refresher=uas`, a proxy set a timer the caller does not support,
    /// or a carrier answering our INVITE left it to us), by UPDATE when
    /// the peer allows it (`peer_update`), else by re-INVITE.
    we_refresh: bool,
    peer_update: bool,
    /// The caller required reliable provisional responses (RFC 3262).
    reliable: Option<Reliable>,
}

/// Reliable provisional responses towards a caller that requires them
/// (`Require: 100rel`, RFC 3262).
#[derive(Debug)]
struct Reliable {
    /// The next RSeq.
    next_rseq: u32,
    /// The one not yet acknowledged by a PRACK (only one at a time): its
    /// RSeq, the response, when it was first sent, the next interval.
    unacked: Option<(u32, Box<Message>, Instant, Duration)>,
    /// A 2xx that waits for the PRACK of a provisional that carried our
    /// SDP answer (§3: it may not overtake it).
    held_final: Option<Box<Message>>,
}

/// Virtual hold's number dialogue (queue `callback_number`).
#[derive(Debug)]
enum Vhold {
    /// The number read back: 1 confirms it, 2 keys in another.
    Confirm(String),
    /// Keying in another number (`#` ends it); attempts so far.
    Enter(String, u8),
}

/// Supervisor views are published at most this often.
const VIEWS_PERIOD: Duration = Duration::from_secs(1);

/// User-Agents of SIP scanners and toll-fraud tools (case-insensitive
/// substrings).
const SCANNERS: [&str; 9] = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "pplsip",
    "sundayddr",
    "iwar",
    "sip-scan",
    "smap",
];

/// Whether a User-Agent is a known scanner's (no allocation: it runs on
/// every request).
fn is_scanner(user_agent: &str) -> bool {
    let ua = user_agent.as_bytes();
    SCANNERS.iter().any(|s| {
        ua.windows(s.len())
            .any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
    })
}

/// How often idle authentication-failure counters are dropped.
const THROTTLE_SWEEP: Duration = Duration::from_secs(60);

/// Attempts at keying in a number before the caller keeps their place.
const VHOLD_TRIES: u8 = 3;

/// The far end of an IVR transfer.
#[derive(Debug)]
struct TransferLeg {
    call_id: String,
    invite: Option<TxKey>,
    dialog: Option<Leg>,
}

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
    TrunkPing(usize),
    /// Our session refresh (UPDATE or re-INVITE) on a call's caller leg.
    Refresh(CallId),
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
    trunks: Vec<(Vec<IpAddr>, DidTable)>,
    queue_exit: Vec<u16>,
    /// Per queue: waiting calls, oldest wait, operators by state, EWT.
    queue_gauges: Vec<(IntGauge, IntGauge, Vec<IntGauge>, IntGauge)>,
    /// Per tenant: operators by state.
    tenant_gauges: Vec<Vec<IntGauge>>,
    agent_ids: HashMap<String, AgentId>,
    login_paused: bool,
    /// OPTIONS to idle operators' phones this often (`None`: off).
    qualify: Option<Duration>,
    /// When each logged-in operator's phone is next asked.
    qualify_due: BinaryHeap<Reverse<(Instant, AgentId)>>,
    /// Operators with an entry in `qualify_due` (one chain each).
    qualify_scheduled: std::collections::HashSet<AgentId>,
    /// Outbound trunks found dead by OPTIONS (index in `trunk_out`):
    /// callbacks skip them, so a silent carrier does not cost each
    /// callback a Timer B wait before the next trunk.
    trunk_down: Vec<bool>,
    /// Each trunk's OPTIONS interval, and its name (metric label).
    trunk_ping: Vec<(Option<Duration>, String)>,
    trunk_due: BinaryHeap<Reverse<(Instant, usize)>>,
    max_calls: usize,
    /// Live server transactions allowed per non-trunk address.
    max_per_source: usize,
    /// Admission token bucket: (tokens, last refill) when a rate is set.
    admission: Option<(f64, f64, Instant)>,
    user_agent: String,
    ports: Box<dyn MediaPorts>,
    prompts: Arc<Library>,
    /// Music on hold per queue (the queue's own, else the node's).
    music: Vec<Option<Prompt>>,
    codecs: Vec<Law>,
    advertise: Option<IpAddr>,
    /// The RTP port range (a peer naming our own address in it loops).
    media_range: (u16, u16),
    announce_every: Vec<Option<Duration>>,
    /// Per queue: answered calls are recorded.
    record: Vec<bool>,
    /// Per queue: the operator script's name.
    scripts: Vec<Option<String>>,
    /// Per queue: virtual hold key, offer prompts, confirmation prompts.
    virtual_hold: Vec<(Option<char>, Vec<String>, Vec<String>)>,
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
    /// Per trunk: outbound address and caller id.
    trunk_out: Vec<(Option<SocketAddr>, String, usize)>,
    /// Per trunk: how its peers prove who they are.
    trunk_sec: Vec<TrunkSecurity>,
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
    /// Per queue: callbacks handed to the engine so far (views carry it).
    callbacks_started: Vec<u64>,
    /// Per queue: tenant, max attempts, retry delay.
    callback_policy: Vec<(usize, u32, Duration)>,
    /// Per queue: per-outcome attempts and delay.
    callback_retries: Vec<Vec<(String, u32, Duration)>>,
    /// Per queue: callbacks dial the citizen first.
    customer_first: Vec<bool>,
    /// Per queue: what the operator hears on answering, for calls and for
    /// callbacks (`None`: the built-in tone).
    whispers: Vec<(Vec<String>, Option<Vec<String>>)>,
    /// The built-in signal of a callback to the operator.
    callback_tone: Prompt,
    /// Per queue: its tenant's name (supervisor views).
    queue_tenants: Vec<String>,
    /// When the supervisor views were last published.
    views_at: Option<Instant>,
    /// Per queue: virtual hold confirms the number first.
    callback_number: Vec<Option<centralino_config::CallbackNumber>>,
    calls: HashMap<CallId, Call>,
    by_a: HashMap<String, CallId>,
    by_b: HashMap<String, CallId>,
    client: HashMap<TxKey, ClientRef>,
    timers: BinaryHeap<Reverse<(Instant, CallId, CallTimer)>>,
    next_call: u64,
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
    /// An engine for this configuration. `seed` must come from the OS's
    /// CSPRNG: it keys nonces, tags, branches and Call-IDs.
    pub fn new(config: &Config, metrics: Metrics, seed: [u8; 32], now: Instant) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let mut ports_seed = [0u8; 32];
        rng.fill_bytes(&mut ports_seed);
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
        let queue_states = |name: &str| -> Vec<IntGauge> {
            QueueAgents::default()
                .labelled()
                .iter()
                .map(|(l, _)| metrics.queue_agents.with_label_values(&[name, l]))
                .collect()
        };
        let queue_gauges = config
            .queues
            .iter()
            .map(|q| {
                let name = q.routing.name.as_str();
                (
                    metrics.queue_calls.with_label_values(&[name]),
                    metrics.queue_oldest_wait.with_label_values(&[name]),
                    queue_states(name),
                    metrics.queue_ewt.with_label_values(&[name]),
                )
            })
            .collect();
        let tenant_gauges = config
            .tenants
            .iter()
            .map(|t| states(&metrics.agents, t))
            .collect();
        let mut engine = Self {
            limits: config.sip.limits.clone(),
            txn: Transactions::new(config.sip.timers),
            registrar,
            router,
            metrics,
            rng,
            trunks: Vec::new(),
            queue_exit: Vec::new(),
            queue_gauges,
            tenant_gauges,
            agent_ids,
            login_paused: config.login_paused,
            qualify: config.qualify,
            qualify_due: BinaryHeap::new(),
            qualify_scheduled: std::collections::HashSet::new(),
            trunk_down: Vec::new(),
            trunk_ping: Vec::new(),
            trunk_due: BinaryHeap::new(),
            max_calls: config.sip.max_calls,
            max_per_source: config.sip.max_transactions_per_source,
            admission: config
                .sip
                .max_calls_per_second
                .map(|r| (f64::from(r.get()), f64::from(r.get()), now)),
            user_agent: config.sip.user_agent.clone(),
            ports: Box::new(PoolPorts(
                Ports::new(
                    config.media.ports.0,
                    config.media.ports.1,
                    PORT_QUARANTINE,
                    ports_seed,
                )
                .unwrap_or_else(|_| {
                    Ports::new(20_000, 29_999, PORT_QUARANTINE, ports_seed)
                        .expect("non-empty range")
                }),
            )),
            prompts: Arc::new(Library::new()),
            music: vec![None; config.queues.len()],
            codecs: config
                .media
                .codecs
                .iter()
                .map(|&pt| if pt == 8 { Law::Alaw } else { Law::Ulaw })
                .collect(),
            advertise: config.media.advertise_address,
            media_range: config.media.ports,
            announce_every: Vec::new(),
            record: Vec::new(),
            scripts: Vec::new(),
            virtual_hold: Vec::new(),
            queue_ids: config
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| (q.routing.name.clone(), QueueId(i as u32)))
                .collect(),
            catalog: config.catalog.clone(),
            wall: (now, 0),
            outbound_local: None,
            outbound_tls_local: None,
            trunk_out: Vec::new(),
            trunk_sec: Vec::new(),
            conn_trunks: HashMap::new(),
            dial_plans: Vec::new(),
            callbacks_started: vec![0; config.queues.len()],
            callback_policy: Vec::new(),
            callback_retries: Vec::new(),
            customer_first: Vec::new(),
            whispers: Vec::new(),
            callback_tone: announce::callback_tone(Law::Alaw),
            queue_tenants: config
                .queues
                .iter()
                .map(|q| config.tenants.get(q.tenant).cloned().unwrap_or_default())
                .collect(),
            views_at: None,
            callback_number: Vec::new(),
            calls: HashMap::new(),
            by_a: HashMap::new(),
            by_b: HashMap::new(),
            client: HashMap::new(),
            timers: BinaryHeap::new(),
            next_call: 1,
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
    pub fn reload(&mut self, now: Instant, config: &Config) -> Result<(), String> {
        let ours: Vec<String> = (0..self.router.queue_count())
            .map(|i| self.router.queue(QueueId(i as u32)).name.clone())
            .collect();
        let theirs: Vec<String> = config
            .queues
            .iter()
            .map(|q| q.routing.name.clone())
            .collect();
        if ours != theirs {
            return Err("queues changed: restart the node to apply".into());
        }
        if config.agents.len() != self.agent_ids.len()
            || config
                .agents
                .iter()
                .enumerate()
                .any(|(i, a)| self.agent_ids.get(&a.username) != Some(&AgentId(i as u32)))
        {
            return Err("operators changed: restart the node to apply".into());
        }
        if config.tenants.len() != self.tenant_gauges.len() {
            return Err("tenants changed: restart the node to apply".into());
        }
        // All or nothing: every queue's new settings are checked before
        // the first is taken.
        for (i, q) in config.queues.iter().enumerate() {
            let old = self.router.queue(QueueId(i as u32));
            let r = &q.routing;
            let field = if old.strategy != r.strategy {
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
                return Err(format!(
                    "queues[{}].{field} changed: restart the node to apply",
                    r.name
                ));
            }
        }
        for (i, q) in config.queues.iter().enumerate() {
            // Checked above: only what decisions read differs.
            let _ = self
                .router
                .update_queue(QueueId(i as u32), q.routing.clone());
        }
        for (i, (_, attributes)) in config.routing_agents().into_iter().enumerate() {
            if self.router.agent(AgentId(i as u32)).attributes != attributes {
                self.router
                    .set_attributes(now, AgentId(i as u32), attributes);
            }
        }
        self.registrar.set_users(
            config
                .agents
                .iter()
                .map(|a| (a.username.clone(), a.credentials.clone()))
                .collect(),
        );
        self.apply_policies(now, config);
        self.catalog = config.catalog.clone();
        self.pump(now);
        info!(
            flows = config.flows.len(),
            trunks = config.trunks.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Builds the per-trunk, per-tenant and per-queue tables from
    /// `config` (at start and at each reload). Trunks are matched by name
    /// across a reload: one found down stays down until it answers.
    fn apply_policies(&mut self, now: Instant, config: &Config) {
        let was_down: HashMap<String, bool> = self
            .trunk_ping
            .iter()
            .zip(&self.trunk_down)
            .map(|((_, name), down)| (name.clone(), *down))
            .collect();
        self.trunks = trunk_tables(config);
        self.trunk_out = config
            .trunks
            .iter()
            .map(|t| (t.outbound, t.caller_id.clone(), t.tenant))
            .collect();
        self.trunk_ping = config
            .trunks
            .iter()
            .map(|t| (t.options, t.name.clone()))
            .collect();
        self.trunk_sec = config
            .trunks
            .iter()
            .map(|t| TrunkSecurity {
                name: t.name.clone(),
                mtls: t.client_cert.is_some(),
                outbound: if t.outbound_tls.is_some() {
                    Transport::Tls
                } else {
                    Transport::Udp
                },
                auth: t.auth.clone(),
                asserted_identity: t.asserted_identity,
            })
            .collect();
        self.trunk_down = config
            .trunks
            .iter()
            .map(|t| was_down.get(&t.name).copied().unwrap_or(false))
            .collect();
        // Pings in flight name trunks by position: their answers are
        // dropped, and every trunk is asked again now.
        self.client
            .retain(|_, c| !matches!(c, ClientRef::TrunkPing(_)));
        self.trunk_due = config
            .trunks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.options.is_some())
            .map(|(i, _)| Reverse((now, i)))
            .collect();
        for (t, down) in config.trunks.iter().zip(&self.trunk_down) {
            if t.outbound.is_some() {
                self.metrics
                    .trunk_up
                    .with_label_values(&[&t.name])
                    .set(i64::from(!*down));
            }
        }
        self.dial_plans = config.dial_plans.clone();
        let queues = &config.queues;
        self.queue_exit = queues.iter().map(|q| q.exit_status).collect();
        self.announce_every = queues.iter().map(|q| q.announce_every).collect();
        self.record = queues.iter().map(|q| q.record).collect();
        self.scripts = queues
            .iter()
            .map(|q| {
                q.script
                    .and_then(|i| config.scripts.get(i))
                    .map(|s| s.name.clone())
            })
            .collect();
        self.virtual_hold = queues
            .iter()
            .map(|q| {
                (
                    q.callback_key,
                    q.callback_offer_prompts.clone(),
                    q.callback_confirm_prompts.clone(),
                )
            })
            .collect();
        self.callback_policy = queues
            .iter()
            .map(|q| (q.tenant, q.callback_max_attempts, q.callback_retry))
            .collect();
        self.callback_retries = queues.iter().map(|q| q.callback_retries.clone()).collect();
        self.customer_first = queues.iter().map(|q| q.callback_customer_first).collect();
        self.whispers = queues
            .iter()
            .map(|q| (q.whisper.clone(), q.callback_whisper.clone()))
            .collect();
        self.callback_number = queues.iter().map(|q| q.callback_number.clone()).collect();
    }

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
    fn outbound_flow(&self, trunk: usize) -> Option<Flow> {
        let remote = self.trunk_out.get(trunk)?.0?;
        let transport = self
            .trunk_sec
            .get(trunk)
            .map_or(Transport::Udp, |s| s.outbound);
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

    /// `number` in E.164 when it passes the dial plan of `tenant`, the
    /// only spelling a trunk is ever given (the plan reads a bare number
    /// as national, a carrier might not). Refusals are logged (masked)
    /// and counted with where the number came from.
    fn dialable(&self, tenant: usize, number: &str, via: &'static str) -> Option<String> {
        let plan = self.dial_plans.get(tenant);
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
    fn queue_tenant(&self, queue: QueueId) -> usize {
        self.callback_policy[queue.0 as usize].0
    }

    /// Starts executing a callback (agent first): it waits in its queue
    /// like a call that has waited since the request was made; when an
    /// operator answers, the citizen is dialled through the queue's
    /// tenant's outbound trunk.
    pub fn start_callback(&mut self, now: Instant, cb: DueCallback) {
        if let Some(n) = self
            .queue_ids
            .get(&cb.queue)
            .and_then(|q| self.callbacks_started.get_mut(q.0 as usize))
        {
            *n += 1;
        }
        let Some(&queue) = self.queue_ids.get(&cb.queue) else {
            self.callback_state(
                &cb.id,
                CallbackState::Failed {
                    outcome: "unknown_queue",
                },
            );
            return;
        };
        let tenant = self.queue_tenant(queue);
        if self.dialable(tenant, &cb.number, "callback").is_none() {
            // Stored before the plan said no (an older version, a reload):
            // never dialled, and no retry would change that.
            self.callback_state(
                &cb.id,
                CallbackState::Failed {
                    outcome: "dial_plan",
                },
            );
            return;
        }
        // The tenant's first outbound trunk that is not down (all down:
        // the first, in case the pings are wrong).
        let outbound = |j: &usize| self.trunk_out[*j].0.is_some() && self.trunk_out[*j].2 == tenant;
        let trunk = (0..self.trunk_out.len())
            .filter(outbound)
            .find(|&j| !self.trunk_down[j])
            .or_else(|| (0..self.trunk_out.len()).find(outbound));
        let Some(trunk) = trunk.filter(|&t| self.outbound_flow(t).is_some()) else {
            warn!(queue = %cb.queue, "no outbound trunk for callbacks");
            self.callback_state(
                &cb.id,
                CallbackState::Failed {
                    outcome: "no_outbound_trunk",
                },
            );
            return;
        };
        // The call's SIP side towards the citizen is filled in when we
        // dial; its media is anchored like any call's.
        let number = cb.number.clone();
        let Some((a_leg, invite, tag)) = self.citizen_leg(trunk, &number, "callback") else {
            self.callback_state(
                &cb.id,
                CallbackState::Failed {
                    outcome: "dial_plan",
                },
            );
            return;
        };
        let ip = a_leg.flow.local.ip();
        let Ok(a_port) = self.ports.take(now, ip) else {
            self.callback_retry(&cb, "no_rtp_port", queue);
            return;
        };
        let Ok(b_port) = self.ports.take(now, ip) else {
            self.ports.release(now, a_port);
            self.callback_retry(&cb, "no_rtp_port", queue);
            return;
        };
        let law = self.codecs.first().copied().unwrap_or(Law::Alaw);
        let media = CallMedia {
            ip,
            sdp_ip: self.advertise.unwrap_or(ip),
            a_port,
            b_port,
            a: Peer {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                law,
                telephone_event: None,
                signalling: None,
            },
            a_direction: Direction::SendRecv,
            b: None,
            b_direction: Direction::SendRecv,
            session: self.rng.next_u64() >> 2,
            version: 1,
            digits: String::new(),
            late_offer: false,
            opened: false,
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
        let span = tracing::info_span!("call", call = %id);
        let _entered = span.clone().entered();
        info!(number = %Masked(&number), queue = %cb.queue, attempt = cb.attempt, "callback: waiting for an operator");
        let record_id = format!("{}{}", self.token(), self.token());
        self.out.push_back(Output::Record(Record::CallStarted {
            id: record_id.clone(),
            at_ms: self.unix_ms_at(now),
            caller: number.clone(),
            did: format!("callback:{}", cb.id),
        }));
        let a_key = TxKey::of(&invite);
        self.calls.insert(
            id,
            Call {
                span,
                phase: Phase::Queued,
                queue,
                enqueued: now,
                started: now,
                a_key,
                a_leg,
                a_invite: Box::new(invite),
                a_tag: tag,
                caller: number,
                forks: Vec::new(),
                b: None,
                attempt: 0,
                media,
                // No response is owed to anyone: the call is ours.
                answered: true,
                in_queue: false,
                spec: Arc::new(spec.clone()),
                run: None,
                pending_flow: None,
                record_id,
                connected: None,
                callback_asked: false,
                vhold: None,
                vhold_step: 0,
                outbound: Some(Outbound {
                    id: cb.id.clone(),
                    attempt: cb.attempt,
                    customer_first: self.customer_first[queue.0 as usize],
                    invite: None,
                    dialled: false,
                    answered: false,
                    trunk,
                    early_media: None,
                }),
                transfer: None,
                tenant,
                session_timer: None,
                session_step: 0,
                we_refresh: false,
                peer_update: false,
                reliable: None,
                private: false,
            },
        );
        if self.customer_first[queue.0 as usize] {
            // Customer first: the citizen is dialled now (once the store
            // knows) and queued when they answer.
            self.callback_state(&cb.id, CallbackState::Dialing { call: id });
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
    fn citizen_leg(
        &mut self,
        trunk: usize,
        number: &str,
        via: &'static str,
    ) -> Option<(Leg, Message, String)> {
        let (_, caller_id, tenant) = self.trunk_out.get(trunk)?.clone();
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
        invite.push("Supported", "timer");
        invite.push(
            "Session-Expires",
            &session_timer::DEFAULT_INTERVAL.to_string(),
        );
        if self
            .trunk_sec
            .get(trunk)
            .is_some_and(|t| t.asserted_identity)
        {
            // The carrier presents the service's number (RFC 3325), whatever
            // it makes of our From.
            invite.push("P-Asserted-Identity", &format!("<sip:{caller_id}@{local}>"));
        }
        let leg = Leg {
            call_id,
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
    fn next_trunk(&mut self, now: Instant, call_id: CallId, reason: &'static str) -> bool {
        let Some(call) = self.calls.get(&call_id) else {
            return false;
        };
        let Some(o) = call.outbound.as_ref().filter(|o| !o.answered) else {
            return false;
        };
        let (from, tenant) = (o.trunk, self.trunk_out[o.trunk].2);
        let Some(next) = (from + 1..self.trunk_out.len()).find(|&j| {
            self.trunk_out[j].0.is_some() && self.trunk_out[j].2 == tenant && !self.trunk_down[j]
        }) else {
            return false;
        };
        let number = call.caller.clone();
        let Some((leg, invite, tag)) = self.citizen_leg(next, &number, "callback") else {
            return false;
        };
        let old = std::mem::replace(
            &mut self.calls.get_mut(&call_id).expect("looked up").a_leg,
            leg,
        );
        self.by_a.remove(&old.call_id);
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.a_key = TxKey::of(&invite);
            *call.a_invite = invite;
            call.a_tag = tag;
            if let Some(o) = call.outbound.as_mut() {
                o.trunk = next;
            }
        }
        warn!(
            reason,
            from = from,
            to = next,
            "outbound trunk failed: the callback goes on through the next one"
        );
        self.metrics
            .trunk_failovers
            .with_label_values(&[reason])
            .inc();
        self.callback_dialing(now, call_id, true);
        true
    }

    fn callback_state(&mut self, id: &str, state: CallbackState) {
        self.out.push_back(Output::CallbackState {
            id: id.to_owned(),
            state,
        });
    }

    /// A callback's attempt ended without reaching the citizen.
    fn outbound_failed(&mut self, o: &Outbound, queue: QueueId, outcome: &'static str) {
        if self.shutting_down {
            return;
        }
        self.metrics.callbacks.with_label_values(&[outcome]).inc();
        let id = o.id.clone();
        self.retry_or_fail(&id, o.attempt, queue, outcome);
    }

    /// Another attempt later, or failed when the outcome's (or the
    /// queue's) attempts are used up.
    fn retry_or_fail(&mut self, id: &str, attempt: u32, queue: QueueId, outcome: &'static str) {
        let (_, max, after) = self.callback_policy[queue.0 as usize];
        let (max, after) = self.callback_retries[queue.0 as usize]
            .iter()
            .find(|(o, _, _)| o == outcome)
            .map_or((max, after), |(_, m, a)| (*m, *a));
        let state = if attempt >= max {
            CallbackState::Failed { outcome }
        } else {
            CallbackState::Retry { outcome, after }
        };
        self.callback_state(id, state);
    }

    /// CANCEL for one of our INVITEs still ringing.
    fn cancel_client_invite(&mut self, now: Instant, key: &TxKey, flow: Flow) {
        self.cancel_with_reason(now, key, flow, None);
    }

    fn cancel_with_reason(&mut self, now: Instant, key: &TxKey, flow: Flow, reason: Option<&str>) {
        if let Some(inv) = self.txn.client_request(key) {
            let cancel = dialog::cancel(inv, reason);
            self.send_request(now, flow, cancel, ClientRef::Other);
        }
    }

    /// This attempt failed: another later, or the callback fails.
    fn callback_retry(&mut self, cb: &DueCallback, outcome: &'static str, queue: QueueId) {
        self.retry_or_fail(&cb.id, cb.attempt, queue, outcome);
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
            self.end_connected(now, call_id, false, true, "store_failed");
            self.pump(now);
            return;
        }
        let offer_body = offer(
            &call.media,
            &self.codecs,
            call.media.a_port,
            call.media.session,
        );
        let mut inv = (*call.a_invite).clone();
        inv.push("Contact", &dialog::contact(call.a_leg.flow));
        inv.push("User-Agent", &self.user_agent);
        inv.set_body(Some("application/sdp"), offer_body);
        let flow = call.a_leg.flow;
        let a_call_id = call.a_leg.call_id.clone();
        info!("callback: dialling the citizen");
        let key = self.send_request(now, flow, inv, ClientRef::Citizen(call_id));
        self.by_a.insert(a_call_id, call_id);
        if let Some(o) = self
            .calls
            .get_mut(&call_id)
            .and_then(|c| c.outbound.as_mut())
        {
            o.invite = Some(key);
            o.dialled = true;
        }
        self.pump(now);
    }

    /// A carrier's 18x with SDP while an operator waits for the citizen
    /// (agent first): the operator hears what the network plays (ringback,
    /// "the number is not reachable"), as on any phone, instead of
    /// silence. Customer first, nobody waits: nothing to bridge. The
    /// caller side's liveness is not judged before the answer (a 183 may
    /// bring no RTP at all).
    fn citizen_early_media(&mut self, call_id: CallId, msg: &Message) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let (Some(b), Some(out)) = (call.media.b, call.outbound.as_ref()) else {
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
            .outbound
            .as_mut()
            .is_some_and(|o| o.early_media.replace(addr).is_none());
        let peer = Peer {
            addr,
            law,
            telephone_event: audio.telephone_event,
            signalling: Some(flow.remote.ip()),
        };
        let cmd = citizen_peer(call_id, &mut call.media, peer);
        self.out.push_back(Output::Media(cmd));
        if first {
            // Not recorded: the conversation starts at the answer, whose
            // bridge turns recording on where the queue asks for it.
            self.out.push_back(Output::Media(MediaCommand::Bridge {
                call: call_id,
                b,
                record: false,
            }));
            info!("callback: the network's early media reaches the operator");
            self.metrics.callback_early_media.inc();
        }
    }

    /// A response from the citizen's side.
    fn on_citizen_response(&mut self, now: Instant, key: TxKey, call_id: CallId, msg: &Message) {
        let code = msg.code();
        let _span = self.call_span(call_id).entered();
        if code < 200 {
            if code > 100 && !msg.body.is_empty() {
                self.citizen_early_media(call_id, msg);
            }
            return;
        }
        self.client.remove(&key);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(out) = call.outbound.as_mut() else {
            return;
        };
        out.invite = None;
        if matches!(code, 401 | 407) {
            let flow = call.a_leg.flow;
            if let Some(retry) =
                self.authenticated_retry(now, &key, flow, msg, ClientRef::Citizen(call_id))
            {
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.a_key = retry.clone();
                    if let Some(o) = call.outbound.as_mut() {
                        o.invite = Some(retry);
                    }
                }
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if (200..300).contains(&code) {
            let leg = Leg::from_response(&call.a_leg.local, call.a_leg.flow, msg);
            let flow = call.a_leg.flow;
            let answer = sdp::parse(&msg.body)
                .ok()
                .filter(|a| a.port != 0)
                .and_then(|a| Some((a.choose(&self.codecs)?, a)));
            let answer = answer.filter(|(_, a)| {
                self.refused_media(
                    SocketAddr::new(a.addr, a.port),
                    flow.remote.ip(),
                    flow.local.ip(),
                )
                .is_none()
            });
            let Some(call) = self.calls.get_mut(&call_id) else {
                return;
            };
            call.a_leg = leg.clone();
            call.peer_update = allows_update(msg);
            if let Some(se) = session_timer::session_expires(msg) {
                // We offered a session timer: in the carrier's answer
                // `uac` is us.
                call.session_timer = Some(se.interval.max(session_timer::MIN_SE));
                call.we_refresh = se.refresher != Some(session_timer::Refresher::Uas);
            }
            self.send_ack(&leg, msg);
            self.session_armed(now, call_id);
            let Some((law, audio)) = answer else {
                warn!("the citizen's answer has no usable SDP");
                self.end_connected(now, call_id, true, true, "bad_answer");
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
            };
            let cmd = citizen_peer(call_id, &mut call.media, peer);
            self.out.push_back(Output::Media(cmd));
            if let Some(b) = call.media.b {
                let record = self.record[call.queue.0 as usize];
                self.out.push_back(Output::Media(MediaCommand::Bridge {
                    call: call_id,
                    b,
                    record,
                }));
            }
            let customer_first = call.outbound.as_ref().is_some_and(|o| o.customer_first);
            let id = call.outbound.as_mut().map(|o| {
                o.answered = true;
                o.id.clone()
            });
            if customer_first {
                // Reached: now they wait for an operator like any caller,
                // with the time of their request.
                let (queue, spec) = (call.queue, (*call.spec).clone());
                self.enter_queue(now, call_id, queue, &spec);
            }
            info!("callback: the citizen answered");
            self.metrics
                .callbacks
                .with_label_values(&["answered"])
                .inc();
            // Customer first: done only once an operator talks to them
            // (a citizen who gives up waiting is called again).
            if let Some(id) = id.filter(|_| !customer_first) {
                self.callback_state(&id, CallbackState::Done);
            }
            return;
        }
        if matches!(code, 500 | 502 | 503 | 504) && self.next_trunk(now, call_id, "5xx") {
            return;
        }
        let outcome = match code {
            486 | 600 | 603 => "busy",
            408 | 480 | 487 => "no_answer",
            _ => "failed",
        };
        info!(code, outcome, "callback: the citizen was not reached");
        self.end_connected(now, call_id, false, true, outcome);
    }

    /// A carrier challenged our INVITE (`resp` is its 401 or 407): when the
    /// trunk at `flow.remote` has credentials and this INVITE carried none,
    /// the same INVITE again (same Call-ID, tags and body; CSeq + 1, a new
    /// branch) with the answer (RFC 3261 §22.2), its key returned. `None`:
    /// no credentials, a second challenge, or one we cannot answer; the
    /// caller then treats the response as the failure it is.
    fn authenticated_retry(
        &mut self,
        now: Instant,
        key: &TxKey,
        flow: Flow,
        resp: &Message,
        what: ClientRef,
    ) -> Option<TxKey> {
        let trunk = self
            .trunk_out
            .iter()
            .position(|(out, _, _)| *out == Some(flow.remote))?;
        let auth = self.trunk_sec.get(trunk)?.auth.clone()?;
        let (asks, answers) = if resp.code() == 407 {
            ("Proxy-Authenticate", "Proxy-Authorization")
        } else {
            ("WWW-Authenticate", "Authorization")
        };
        let orig = self.txn.client_request(key)?.clone();
        if orig.header("Authorization").is_some() || orig.header("Proxy-Authorization").is_some() {
            warn!(trunk = %self.trunk_sec[trunk].name, "the carrier refused our credentials");
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
            warn!(trunk = %self.trunk_sec[trunk].name, "the carrier's challenge cannot be answered");
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
        info!(trunk = %self.trunk_sec[trunk].name, algorithm = challenge.algorithm.token(), "the carrier asked for credentials: INVITE sent again with them");
        self.metrics
            .trunk_auth
            .with_label_values(&["answered"])
            .inc();
        Some(self.send_request(now, flow, req, what))
    }

    /// The wall clock: Unix seconds at `now` (opening hours in flows).
    pub fn set_wall_clock(&mut self, now: Instant, unix: i64) {
        self.wall = (now, unix);
    }

    fn unix_ms_at(&self, now: Instant) -> i64 {
        self.wall.1 * 1000 + now.saturating_duration_since(self.wall.0).as_millis() as i64
    }

    /// A queue log event for a call.
    fn queue_event(
        &mut self,
        now: Instant,
        call_id: CallId,
        event: &'static str,
        agent: Option<String>,
    ) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let position = self.router.estimate(call_id).map(|e| e.position);
        let record = Record::Queue {
            call: call.record_id.clone(),
            at_ms: self.unix_ms_at(now),
            queue: self.router.queue(call.queue).name.clone(),
            event,
            agent,
            position,
            wait_ms: Some(now.saturating_duration_since(call.enqueued).as_millis() as i64),
        };
        self.out.push_back(Output::Record(record));
    }

    fn unix_at(&self, now: Instant) -> i64 {
        self.wall.1 + now.saturating_duration_since(self.wall.0).as_secs() as i64
    }

    /// Where RTP ports come from (the driver's allocator binds them).
    pub fn set_ports(&mut self, ports: Box<dyn MediaPorts>) {
        self.ports = ports;
    }

    /// The prompts (announcements) and the music on hold of each queue,
    /// loaded by the driver at start-up.
    pub fn set_prompts(&mut self, prompts: Arc<Library>, music: Vec<Option<Prompt>>) {
        self.prompts = prompts;
        self.music = music;
        self.music.resize(self.announce_every.len(), None);
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
    pub fn set_overloaded(&mut self, overloaded: bool) {
        if overloaded != self.overloaded {
            if overloaded {
                warn!("overloaded: refusing new calls with 503");
            } else {
                info!("load back to normal: accepting new calls");
            }
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
    }

    /// Graceful shutdown, last step (the drain's deadline): every call still
    /// here ends (BYE to answered legs, 503 to callers never answered),
    /// outcome `shutdown`. Callbacks are not retried or failed for it: the
    /// next start finds them in progress and recovers them.
    pub fn shutdown(&mut self, now: Instant) {
        self.draining = true;
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
                Some(Phase::Connected) => self.end_connected(now, id, true, true, "shutdown"),
                Some(_) => self.end_unanswered(now, id, 503, "shutdown", false),
                None => {}
            }
        }
        // The BYEs and responses leave through the transactions.
        self.pump(now);
    }

    /// Every queue as a supervisor sees it now.
    pub fn queue_views(&mut self, now: Instant) -> Vec<QueueView> {
        let wall_now = self.unix_ms_at(now);
        let mut views = Vec::with_capacity(self.queue_gauges.len());
        let mut callbacks_waiting = vec![0u32; self.queue_gauges.len()];
        for c in self.calls.values() {
            // Offered ones already hold their operator (not available).
            if c.outbound.is_some()
                && c.phase == Phase::Queued
                && let Some(n) = callbacks_waiting.get_mut(c.queue.0 as usize)
            {
                *n += 1;
            }
        }
        for (i, callbacks) in callbacks_waiting.into_iter().enumerate() {
            let q = QueueId(i as u32);
            let (waiting, first) = self.router.waiting(q);
            let agents = self.router.queue_agents(q);
            views.push(QueueView {
                callback_room: agents.available.saturating_sub(callbacks),
                callbacks_started: self.callbacks_started.get(i).copied().unwrap_or(0),
                name: self.router.queue(q).name.clone(),
                tenant: self.queue_tenants.get(i).cloned().unwrap_or_default(),
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

    /// The next output, until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
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
        self.pump(now);
    }

    /// Asks an outbound trunk whether it is there (OPTIONS to its outbound
    /// address); any answer, even 404 or 405, counts.
    fn ping_trunk(&mut self, now: Instant, trunk: usize) {
        let Some(every) = self.trunk_ping.get(trunk).and_then(|p| p.0) else {
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
        options.push("User-Agent", &self.user_agent);
        self.send_request(now, flow, options, ClientRef::TrunkPing(trunk));
    }

    /// A trunk answered OPTIONS, or did not: marks it up or down.
    fn trunk_seen(&mut self, trunk: usize, up: bool) {
        let Some(down) = self.trunk_down.get_mut(trunk) else {
            return;
        };
        if *down == up {
            *down = !up;
            let name = &self.trunk_ping[trunk].1;
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
    fn qualify_agent(&mut self, now: Instant, agent: AgentId) {
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
        options.push("User-Agent", &self.user_agent);
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
    fn binding_flow(&self, binding: &centralino_sip::registrar::Binding) -> Flow {
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
        let to_trunk = self
            .trunk_out
            .iter()
            .any(|(out, _, _)| *out == Some(contact));
        if contact.ip() == flow.remote.ip() && !to_trunk {
            Flow {
                remote: contact,
                ..flow
            }
        } else {
            flow
        }
    }

    fn token(&mut self) -> String {
        format!("{:016x}", self.rng.next_u64())
    }

    fn count_out(&self, msg: &Message) {
        match &msg.start {
            StartLine::Request { method, .. } => self
                .metrics
                .sip_requests
                .with_label_values(&[method.label(), "out"])
                .inc(),
            StartLine::Response { code, .. } => self
                .metrics
                .sip_responses
                .with_label_values(&[code_label(*code), "out"])
                .inc(),
        }
    }

    fn send_stateless(&mut self, flow: Flow, msg: &Message) {
        self.count_out(msg);
        self.out.push_back(Output::Transmit {
            flow,
            bytes: msg.to_bytes(),
        });
    }

    fn reject(
        &mut self,
        flow: Flow,
        req: &Message,
        code: u16,
        reason: &'static str,
        extra: &[(&'static str, &str)],
    ) {
        self.metrics.sip_rejected.with_label_values(&[reason]).inc();
        let tag = self.token();
        let mut r = req.response(code, reason_phrase(code), Some(&tag));
        for (n, v) in extra {
            r.push(n, v);
        }
        self.send_stateless(flow, &r);
    }

    fn respond(&mut self, now: Instant, key: &TxKey, resp: &Message) {
        self.count_out(resp);
        self.txn.respond(now, key, resp);
    }

    fn send_request(&mut self, now: Instant, flow: Flow, req: Message, what: ClientRef) -> TxKey {
        self.count_out(&req);
        let key = self.txn.send_request(now, flow, req);
        self.client.insert(key.clone(), what);
        key
    }

    fn via(&mut self, flow: Flow) -> Via {
        Via {
            transport: flow.transport.as_str().to_owned(),
            sent_by: flow.local.to_string(),
            branch: format!("z9hG4bK{}", self.token()),
        }
    }

    /// Our Contact towards a caller: `sips:` when their INVITE asked for a
    /// `sips:` Request-URI (over TLS, precheck made sure), as RFC 5630 §4.3
    /// wants, so the dialog stays secure end to end; the flow's otherwise.
    fn caller_contact(call: &Call) -> String {
        let sips = call.a_leg.flow.transport == Transport::Tls
            && call
                .a_invite
                .request_uri()
                .and_then(uri::classify)
                .is_some_and(|s| s == Scheme::Sips);
        if sips {
            format!("<sips:centralino@{}>", call.a_leg.flow.local)
        } else {
            dialog::contact(call.a_leg.flow)
        }
    }

    fn handle_message(&mut self, now: Instant, flow: Flow, mut msg: Box<Message>) {
        if msg.is_request() {
            // Every response we build for it then tells the client where
            // it was seen from (NAT: received/rport).
            msg.stamp_via(flow.remote);
        }
        match &msg.start {
            StartLine::Response { code, .. } => {
                self.metrics
                    .sip_responses
                    .with_label_values(&[code_label(*code), "in"])
                    .inc();
                self.txn.handle_response(now, msg);
            }
            StartLine::Request { method, .. } => {
                self.metrics
                    .sip_requests
                    .with_label_values(&[method.label(), "in"])
                    .inc();
                if *method != Method::Ack && !self.precheck(now, flow, &msg) {
                    return;
                }
                if *method == Method::Register
                    && self.txn.server_transactions_from(flow.remote.ip()) >= self.max_per_source
                    && self.txn.server_request(&TxKey::of(&msg)).is_none()
                {
                    // A site's phones re-registering at once after its
                    // network returns (one NAT address, hundreds of
                    // operators) are answered without a transaction: the
                    // registrar's nonces make that safe (a retransmission
                    // whose 200 was lost is a replay: a fresh challenge,
                    // never a failure), and nothing is kept per request.
                    self.metrics.registrations_stateless.inc();
                    let resp = self.register(now, flow, &msg);
                    self.send_stateless(flow, &resp);
                    return;
                }
                if *method != Method::Ack && !self.within_source_bound(flow, &msg) {
                    return;
                }
                self.txn.handle_request(now, flow, msg);
            }
        }
    }

    /// Each server transaction lingers after its answer (Timer J, 64·T1 on
    /// UDP), so one address could fill memory with cheap requests: past
    /// `sip.max_transactions_per_source` live ones, a new request from an
    /// address that is not a trunk peer gets 503 with no state kept
    /// (retransmissions of live ones still reach their transaction).
    fn within_source_bound(&mut self, flow: Flow, msg: &Message) -> bool {
        let ip = flow.remote.ip();
        if self.txn.server_transactions_from(ip) < self.max_per_source
            || self.txn.server_request(&TxKey::of(msg)).is_some()
            || self.trunks.iter().any(|(peers, _)| peers.contains(&ip))
        {
            return true;
        }
        warn!(peer = %ip, "too many transactions from one address: 503");
        self.reject(flow, msg, 503, "source_busy", &[("Retry-After", "30")]);
        false
    }

    /// Stateless checks before any transaction exists: anything refused here
    /// leaves no state behind (scanners, untrusted sources, bad requests).
    fn precheck(&mut self, now: Instant, flow: Flow, msg: &Message) -> bool {
        if msg.header("User-Agent").is_some_and(is_scanner) {
            // Dropped without a word: a scanner learns nothing is here, and
            // answering a flood would only amplify it.
            self.metrics
                .sip_rejected
                .with_label_values(&["scanner"])
                .inc();
            debug!(peer = %flow.remote.ip(), "scanner dropped");
            return false;
        }
        let method = msg.method().clone();
        let ruri = msg.request_uri().unwrap_or_default();
        if matches!(method, Method::Other(_)) {
            self.reject(flow, msg, 501, "unknown_method", &[("Allow", ALLOW)]);
            return false;
        }
        if uri::classify(ruri) == Some(Scheme::Other) {
            self.reject(flow, msg, 416, "unsupported_uri_scheme", &[]);
            return false;
        }
        if uri::classify(ruri) == Some(Scheme::Sips) && flow.transport != Transport::Tls {
            // A sips: Request-URI promises TLS on every hop (RFC 3261
            // §26.2.2, RFC 5630 §3.1.3): taking it over UDP or TCP would
            // quietly break that promise.
            self.reject(flow, msg, 416, "sips_not_over_tls", &[]);
            return false;
        }
        // Extensions we implement: session timers (RFC 4028) and reliable
        // provisional responses (RFC 3262).
        let required: Vec<String> = msg
            .headers_named("Require")
            .flat_map(uri::split_list)
            .filter(|o| {
                !o.is_empty()
                    && !o.eq_ignore_ascii_case("timer")
                    && !o.eq_ignore_ascii_case("100rel")
            })
            .map(str::to_owned)
            .collect();
        if !required.is_empty() && method != Method::Cancel {
            let list = required.join(", ");
            self.reject(flow, msg, 420, "bad_extension", &[("Unsupported", &list)]);
            return false;
        }
        if method == Method::Cancel
            && self
                .by_a
                .get(&msg.call_id)
                .and_then(|c| self.calls.get(c))
                .is_some_and(|c| !self.same_peer(c.a_leg.flow.remote.ip(), flow.remote.ip()))
        {
            // A CANCEL must come from where its INVITE came from (§9.2 also
            // wants the same branch; a stranger who learnt it is still a
            // stranger). Refused before any transaction: one kept would
            // make the caller's own CANCEL look like a merged request.
            warn!(peer = %flow.remote.ip(), "CANCEL from a stranger refused");
            self.reject(flow, msg, 481, "foreign_dialog", &[]);
            return false;
        }
        if msg.to_tag.is_some() && !matches!(method, Method::Register | Method::Options) {
            // In-dialog: the dialog must be ours, named by Call-ID and both
            // tags, and the request must come from that dialog's peer (the
            // trunk, or the operator's registered flow). A Call-ID alone is
            // no secret: it travels in every message and logs. (Some phones
            // put a To tag on REGISTER refreshes and OPTIONS keepalives:
            // those never need a dialog.)
            if method == Method::Cancel {
                return true;
            }
            if let Err(reason) = self.match_dialog(flow.remote.ip(), msg) {
                if reason == "foreign_dialog" {
                    warn!(peer = %flow.remote.ip(), method = method.as_str(), "in-dialog request refused: not from the dialog's peer or wrong tags");
                }
                self.reject(flow, msg, 481, reason, &[]);
                return false;
            }
            return true;
        }
        match method {
            Method::Invite => self.precheck_invite(now, flow, msg),
            Method::Register
                if self
                    .trunk_out
                    .iter()
                    .any(|(out, _, _)| *out == Some(flow.remote)) =>
            {
                // A carrier's own address never registers an operator: its
                // bindings would be rung through the carrier.
                warn!(peer = %flow.remote.ip(), "REGISTER from a trunk's outbound address refused");
                self.reject(flow, msg, 403, "trunk_register", &[]);
                false
            }
            Method::Register | Method::Options | Method::Cancel => true,
            Method::Bye => {
                self.reject(flow, msg, 481, "no_dialog", &[]);
                false
            }
            _ => {
                self.reject(flow, msg, 405, "method_not_allowed", &[("Allow", ALLOW)]);
                false
            }
        }
    }

    fn precheck_invite(&mut self, now: Instant, flow: Flow, msg: &Message) -> bool {
        if !self
            .trunks
            .iter()
            .any(|(peers, _)| peers.contains(&flow.remote.ip()))
        {
            // No toll fraud and no state for strangers: only trunk peers may
            // start calls, and only towards local DIDs.
            warn!(peer = %flow.remote.ip(), "INVITE from an untrusted address refused");
            self.reject(flow, msg, 403, "untrusted_source", &[]);
            return false;
        };
        if msg.max_forwards == Some(0) {
            self.reject(flow, msg, 483, "too_many_hops", &[]);
            return false;
        }
        if let Some(ct) = msg.header("Content-Type") {
            let mime = ct.split(';').next().unwrap_or_default().trim();
            if !mime.eq_ignore_ascii_case("application/sdp") {
                self.reject(
                    flow,
                    msg,
                    415,
                    "unsupported_media_type",
                    &[("Accept", "application/sdp")],
                );
                return false;
            }
        }
        let accepts: Vec<&str> = msg
            .headers_named("Accept")
            .flat_map(uri::split_list)
            .collect();
        if !accepts.is_empty()
            && !accepts.iter().any(|a| {
                let m = a.split(';').next().unwrap_or_default().trim();
                ["application/sdp", "application/*", "*/*"]
                    .iter()
                    .any(|ok| m.eq_ignore_ascii_case(ok))
            })
        {
            self.reject(
                flow,
                msg,
                406,
                "not_acceptable",
                &[("Accept", "application/sdp")],
            );
            return false;
        }
        if self.inbound(flow, msg).is_none() {
            if self.inbound_by_address(flow.remote.ip(), msg).is_some() {
                // Its address and DID name a trunk known by its client
                // certificate, and this connection did not present it: an
                // address alone proves nothing to such a trunk (D1).
                warn!(peer = %flow.remote.ip(), transport = flow.transport.as_str(), "INVITE for a certificate-authenticated trunk without its certificate refused");
                self.reject(flow, msg, 403, "trunk_not_authenticated", &[]);
                return false;
            }
            self.reject(flow, msg, 404, "unknown_did", &[]);
            return false;
        }
        if self.draining {
            // Another node (the carrier's next route) takes it.
            self.reject(flow, msg, 503, "draining", &[("Retry-After", "30")]);
            return false;
        }
        if self.overloaded || self.calls.len() >= self.max_calls || !self.admit(now) {
            self.reject(flow, msg, 503, "overload", &[("Retry-After", "5")]);
            return false;
        }
        true
    }

    /// Takes one token from the admission bucket (`sip.max_calls_per_second`):
    /// a steady rate with one second of burst.
    fn admit(&mut self, now: Instant) -> bool {
        let Some((tokens, rate, last)) = self.admission.as_mut() else {
            return true;
        };
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * *rate).min(*rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The trunk an INVITE from `source` came in on, and where its DID
    /// goes: a trunk is known by (source address, DID), so two trunks
    /// behind one carrier SBC (one per tenant) each get their own DIDs'
    /// calls (`check-config` refuses a DID two of them could claim).
    /// A trunk with `tls_peer_names` counts only over a TLS connection
    /// whose client certificate it accepted.
    fn inbound(&self, flow: Flow, msg: &Message) -> Option<(usize, Target)> {
        let proven = (flow.transport == Transport::Tls)
            .then(|| self.conn_trunks.get(&flow.conn))
            .flatten();
        self.inbound_where(flow.remote.ip(), msg, |i| {
            let sec = &self.trunk_sec[i];
            !sec.mtls || proven.is_some_and(|names| names.contains(&sec.name))
        })
    }

    /// The trunk an INVITE would belong to by its address and DID alone.
    fn inbound_by_address(&self, source: IpAddr, msg: &Message) -> Option<(usize, Target)> {
        self.inbound_where(source, msg, |_| true)
    }

    fn inbound_where(
        &self,
        source: IpAddr,
        msg: &Message,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<(usize, Target)> {
        let ruri = msg.request_uri()?;
        let did = match uri::classify(ruri)? {
            Scheme::Tel => ruri.split_once(':')?.1.split(';').next()?,
            _ => uri::user(ruri)?.split(';').next()?,
        };
        self.trunks
            .iter()
            .enumerate()
            .filter(|(i, (peers, _))| peers.contains(&source) && allowed(*i))
            .find_map(|(i, (_, dids))| Some((i, dids.get(did)?.clone())))
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

    /// Sets every gauge from the current state (the engine does it at most
    /// every `GAUGE_PERIOD` after activity; tests call it directly).
    pub fn refresh_gauges(&mut self, now: Instant) {
        self.gauges_due = None;
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
            }
        }
        for (i, (calls, oldest, agents, ewt)) in self.queue_gauges.iter().enumerate() {
            ewt.set(
                self.router
                    .queue_estimate(QueueId(i as u32))
                    .map_or(0, |d| d.as_secs() as i64),
            );
            let (n, first) = self.router.waiting(QueueId(i as u32));
            calls.set(n as i64);
            oldest.set(first.map_or(0, |t| now.saturating_duration_since(t).as_secs() as i64));
            let counts = self.router.queue_agents(QueueId(i as u32)).labelled();
            for (g, (_, c)) in agents.iter().zip(counts) {
                g.set(i64::from(c));
            }
        }
        for (t, agents) in self.tenant_gauges.iter().enumerate() {
            let counts = self.router.tenant_states(t);
            for (g, c) in agents.iter().zip(counts) {
                g.set(i64::from(c));
            }
        }
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

    /// A REGISTER through the registrar: its response, counted and logged.
    fn register(&mut self, now: Instant, flow: Flow, msg: &Message) -> Message {
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
        resp
    }

    fn on_request(&mut self, now: Instant, flow: Flow, msg: Box<Message>) {
        let key = TxKey::of(&msg);
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
            Method::Ack => self.on_ack(now, flow.remote.ip(), &msg),
            _ => {
                let r = msg.response(200, "OK", None);
                self.respond(now, &key, &r);
            }
        }
    }

    fn new_call(&mut self, now: Instant, flow: Flow, msg: Box<Message>) {
        let key = TxKey::of(&msg);
        let Some((trunk, target)) = self.inbound(flow, &msg) else {
            // precheck guarantees both; answer rather than leave the caller hanging.
            let r = msg.response(404, reason_phrase(404), Some("x"));
            self.respond(now, &key, &r);
            return;
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

        let id = CallId(self.next_call);
        self.next_call += 1;
        let a_tag = self.token();
        let from = msg.header("From").unwrap_or_default().to_owned();
        let to = msg.header("To").unwrap_or_default().to_owned();
        let asserted = self
            .trunk_sec
            .get(trunk)
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
        let caller = asserted
            .or_else(|| {
                uri::parse_name_addr(&from).and_then(|n| uri::user(n.uri).map(str::to_owned))
            })
            .unwrap_or_else(|| "anonymous".to_owned());
        let remote_target = msg
            .header("Contact")
            .and_then(uri::parse_name_addr)
            .map(|n| n.uri.to_owned())
            .unwrap_or_default();
        let a_leg = Leg {
            call_id: msg.call_id.clone(),
            local: format!("{to};tag={a_tag}"),
            remote: from,
            remote_target,
            route_set: msg
                .headers_named("Record-Route")
                .flat_map(uri::split_list)
                .map(str::to_owned)
                .collect(),
            cseq: 1,
            flow,
        };
        let span = tracing::info_span!("call", call = %id);
        let _entered = span.clone().entered();
        let media = match self.anchor(now, flow, &msg) {
            Ok(m) => m,
            Err((code, reason)) => {
                self.metrics.sdp_rejected.with_label_values(&[reason]).inc();
                self.metrics.calls.with_label_values(&[reason]).inc();
                warn!(reason, code, "call refused: media");
                let mut r = msg.response(code, reason_phrase(code), Some(&a_tag));
                if code == 488 {
                    r.push("Warning", "305 centralino \"Incompatible media format\"");
                } else {
                    r.push("Retry-After", "5");
                }
                self.respond(now, &key, &r);
                return;
            }
        };
        let (phase, spec) = match &target {
            Target::Queue(_, spec) => (Phase::Queued, spec.clone()),
            Target::Flow(_, spec) => (Phase::Ivr, spec.clone()),
        };
        let record_id = format!("{}{}", self.token(), self.token());
        let did = msg
            .request_uri()
            .and_then(|r| match uri::classify(r)? {
                Scheme::Tel => r
                    .split_once(':')
                    .map(|(_, d)| d.split(';').next().unwrap_or(d)),
                _ => uri::user(r),
            })
            .unwrap_or_default()
            .to_owned();
        self.out.push_back(Output::Record(Record::CallStarted {
            id: record_id.clone(),
            at_ms: self.unix_ms_at(now),
            caller: caller.clone(),
            did,
        }));
        self.by_a.insert(msg.call_id.clone(), id);
        self.calls.insert(
            id,
            Call {
                span,
                phase,
                queue: QueueId(0),
                enqueued: now,
                started: now,
                a_key: key,
                a_invite: msg,
                a_tag,
                a_leg,
                caller,
                forks: Vec::new(),
                b: None,
                attempt: 0,
                media,
                answered: false,
                in_queue: false,
                spec: spec.clone(),
                run: None,
                pending_flow: None,
                record_id,
                connected: None,
                callback_asked: false,
                vhold: None,
                vhold_step: 0,
                outbound: None,
                transfer: None,
                tenant: self.trunk_out.get(trunk).map_or(0, |t| t.2),
                session_timer,
                session_step: 0,
                we_refresh,
                peer_update,
                reliable,
                private,
            },
        );
        match target {
            Target::Queue(queue, _) => self.enter_queue(now, id, queue, &spec),
            Target::Flow(flow, _) => self.start_flow(now, id, flow),
        }
    }

    /// Puts a call in `queue` with `spec`: early media (music) for a call
    /// not answered yet, music on the open media for an answered one. A
    /// full queue ends the call with the queue's exit status (or a BYE).
    fn enter_queue(&mut self, now: Instant, id: CallId, queue: QueueId, spec: &CallSpec) {
        let qname = self.router.queue(queue).name.clone();
        if let Err(e) = self.router.enqueue(now, queue, id, spec) {
            let status = self.queue_exit[queue.0 as usize];
            warn!(queue = %qname, error = %e, "call refused by the router");
            self.end_unanswered(now, id, status, "queue_full", false);
            return;
        }
        let music = self.music[queue.0 as usize].clone();
        let announce = self.announce_every[queue.0 as usize];
        let max_wait = self.router.queue(queue).max_wait;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.queue = queue;
        call.in_queue = true;
        call.enqueued = now;
        call.phase = Phase::Queued;
        self.metrics
            .queue_enqueued
            .with_label_values(&[&qname])
            .inc();
        info!(caller = %Masked(&call.caller), queue = %qname, "call queued");
        if call.answered {
            // The caller is already connected to us (IVR): music now.
            if call.media.opened {
                self.out.push_back(Output::Media(MediaCommand::Play {
                    call: id,
                    prompts: Vec::new(),
                    music,
                }));
            }
        } else {
            let contact = Self::caller_contact(call);
            let media = &mut call.media;
            let progress = if media.late_offer {
                // No offer yet: no early media, the caller hears its own
                // ringback until the answer.
                let mut r = call.a_invite.response(180, "Ringing", Some(&call.a_tag));
                r.push("Contact", &contact);
                r
            } else {
                let mut r = call
                    .a_invite
                    .response(183, "Session Progress", Some(&call.a_tag));
                r.push("Contact", &contact);
                r.set_body(Some("application/sdp"), a_sdp(media, &self.codecs));
                r
            };
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
        self.timers
            .push(Reverse((now + max_wait, id, CallTimer::MaxWait)));
        if let Some(every) = announce {
            self.timers
                .push(Reverse((now + every, id, CallTimer::Announce)));
        }
        self.queue_event(now, id, "enter", None);
    }

    /// Answers a call for its IVR flow and starts the walk (at the ACK
    /// after a late offer, when the media exists).
    fn start_flow(&mut self, now: Instant, id: CallId, flow: Arc<IvrFlow>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        // Answered first: many trunks send the caller's keys only once
        // the call is answered.
        let mut ok = call.a_invite.response(200, "OK", Some(&call.a_tag));
        ok.push("Contact", &Self::caller_contact(call));
        ok.set_body(Some("application/sdp"), a_sdp(&call.media, &self.codecs));
        call.answered = true;
        self.session_refreshed(now, id, &mut ok);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let late = call.media.late_offer;
        if late {
            call.pending_flow = Some(flow.clone());
        } else {
            self.out
                .push_back(Output::Media(open_command(id, &mut call.media)));
        }
        self.final_ok(now, id, ok);
        self.metrics
            .flow_calls
            .with_label_values(&[&flow.name, "started"])
            .inc();
        if !late {
            self.run_flow(now, id, flow);
        }
    }

    fn run_flow(&mut self, now: Instant, id: CallId, flow: Arc<IvrFlow>) {
        let facts = facts!(self, now);
        let (run, actions) = Run::start(flow, now, &facts);
        if let Some(call) = self.calls.get_mut(&id) {
            info!(flow = run.flow(), "IVR flow started");
            call.run = Some(run);
        }
        self.flow_actions(now, id, actions);
    }

    /// Carries out what the flow asked, then arms its next deadline.
    fn flow_actions(&mut self, now: Instant, id: CallId, actions: Vec<FlowAction>) {
        for a in actions {
            match a {
                FlowAction::Play(names) => {
                    let mut prompts = Vec::with_capacity(names.len());
                    for n in &names {
                        match self.prompts.get(n) {
                            Some(p) => prompts.push(p.clone()),
                            None => debug!(prompt = %n, "prompt not loaded, skipped"),
                        }
                    }
                    self.out.push_back(Output::Media(MediaCommand::Play {
                        call: id,
                        prompts,
                        music: None,
                    }));
                }
                FlowAction::Enqueue {
                    queue,
                    requirements,
                    priority,
                    fragile,
                } => {
                    let Some(call) = self.calls.get_mut(&id) else {
                        return;
                    };
                    let flow_name = call.run.as_ref().map(|r| r.flow().to_owned());
                    let mut spec = (*call.spec).clone();
                    for r in &requirements {
                        // Checked when the configuration loaded.
                        match Requirement::parse(r, &self.catalog) {
                            Ok(req) => {
                                spec.requirement = Some(match &spec.requirement {
                                    Some(have) => have.and(&req),
                                    None => req,
                                });
                            }
                            Err(e) => {
                                warn!(requirement = %r, error = %e, "flow requirement ignored")
                            }
                        }
                    }
                    spec.priority = i32::from(priority).max(spec.priority);
                    spec.fragile |= fragile;
                    if let Some(f) = flow_name {
                        self.metrics
                            .flow_calls
                            .with_label_values(&[&f, "queued"])
                            .inc();
                    }
                    match self.queue_ids.get(&queue).copied() {
                        Some(q) => self.enter_queue(now, id, q, &spec),
                        None => self.end_unanswered(now, id, 480, "ivr_no_queue", false),
                    }
                }
                FlowAction::Transfer { number } => {
                    if !self.start_transfer(now, id, &number) {
                        self.transfer_failed(now, id);
                        return;
                    }
                }
                FlowAction::Callback { queue } => {
                    let tenant = self.queue_ids.get(&queue).map(|&q| self.queue_tenant(q));
                    let Some(call) = self.calls.get(&id) else {
                        return;
                    };
                    let caller = call.caller.clone();
                    // Stored in E.164 like the API's requests, so one
                    // citizen is one pending callback however spelled.
                    let e164 = tenant.and_then(|t| self.dialable(t, &caller, "ivr"));
                    let Some(call) = self.calls.get_mut(&id) else {
                        return;
                    };
                    if let Some(number) = e164 {
                        call.callback_asked = true;
                        info!(number = %Masked(&number), queue = %queue, "caller accepts a callback (IVR)");
                        let enqueued_unix = self.unix_at(now);
                        self.out.push_back(Output::StoreCallback {
                            call: id,
                            queue,
                            number,
                            enqueued_unix,
                        });
                    } else if let Some(mut run) = call.run.take() {
                        // No number to call back: the flow's fallback.
                        self.metrics
                            .callbacks
                            .with_label_values(&["no_number"])
                            .inc();
                        let facts = facts!(self, now);
                        let more = run.callback_result(now, false, &facts);
                        call.run = Some(run);
                        self.flow_actions(now, id, more);
                        return;
                    }
                }
                FlowAction::Hangup => {
                    if let Some(f) = self
                        .calls
                        .get(&id)
                        .and_then(|c| c.run.as_ref())
                        .map(|r| r.flow().to_owned())
                    {
                        self.metrics
                            .flow_calls
                            .with_label_values(&[&f, "hung_up"])
                            .inc();
                    }
                    self.end_unanswered(now, id, 480, "ivr_hangup", false);
                }
            }
        }
        if let Some(t) = self
            .calls
            .get(&id)
            .and_then(|c| c.run.as_ref())
            .and_then(Run::poll_timeout)
        {
            self.timers.push(Reverse((t, id, CallTimer::Flow)));
        }
    }

    /// Checks the caller's offer and takes two port pairs: the caller's
    /// media parameters, or the status and metric reason of a refusal.
    fn anchor(
        &mut self,
        now: Instant,
        flow: Flow,
        msg: &Message,
    ) -> Result<CallMedia, (u16, &'static str)> {
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
            let audio = sdp::parse(&msg.body).map_err(|_| (488, "malformed_sdp"))?;
            if audio.port == 0 {
                return Err((488, "no_audio"));
            }
            let law = audio.choose(&self.codecs).ok_or((488, "no_common_codec"))?;
            let addr = SocketAddr::new(audio.addr, audio.port);
            if self
                .media_refusal(addr, flow.remote.ip(), flow.local.ip())
                .is_some()
            {
                return Err((488, "bad_address"));
            }
            (addr, law, audio.telephone_event, audio.direction.answer())
        };
        let ip = flow.local.ip();
        let a_port = self.ports.take(now, ip).map_err(|_| (503, "no_rtp_port"))?;
        let Ok(b_port) = self.ports.take(now, ip) else {
            self.ports.release(now, a_port);
            return Err((503, "no_rtp_port"));
        };
        Ok(CallMedia {
            ip,
            sdp_ip: self.advertise.unwrap_or(ip),
            a_port,
            b_port,
            a: Peer {
                addr,
                law,
                telephone_event,
                signalling: Some(flow.remote.ip()),
            },
            a_direction: direction,
            b: None,
            b_direction: Direction::SendRecv,
            session: self.rng.next_u64() >> 2,
            version: 1,
            digits: String::new(),
            late_offer,
            opened: false,
        })
    }

    fn call_span(&self, id: CallId) -> tracing::Span {
        self.calls
            .get(&id)
            .map_or_else(tracing::Span::none, |c| c.span.clone())
    }

    /// Offers a call to an operator: every phone they registered (a desk
    /// phone and a softphone) rings at once, one B-leg each; the first to
    /// answer takes it, the others get CANCEL. The offer fails only when
    /// every phone has failed, or at the ring timeout.
    fn offer(&mut self, now: Instant, call_id: CallId, agent: AgentId) {
        let _span = self.call_span(call_id).entered();
        let name = self.router.agent(agent).name.clone();
        let bindings = self.registrar.bindings(&name).to_vec();
        if bindings.is_empty() {
            // Registered state and bindings disagree: log the operator out
            // and put the call back.
            self.router.logout(agent);
            self.offer_failed(now, call_id, agent, OfferOutcome::Rejected);
            return;
        }
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let desk = self.desk(call, DeskState::Offered);
        let queue = call.queue;
        self.out.push_back(Output::AgentCall {
            agent: name.clone(),
            info: Some(desk),
        });
        let attempt = call.attempt + 1;
        for binding in &bindings {
            let flow = self.binding_flow(binding);
            let via = self.via(flow);
            let b_call_id = format!("{}@centralino", self.token());
            let b_tag = self.token();
            let Some(call) = self.calls.get(&call_id) else {
                return;
            };
            let local_host = flow.local.to_string();
            let local = if call.private {
                format!("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag={b_tag}")
            } else {
                format!("<sip:{}@{local_host}>;tag={b_tag}", call.caller)
            };
            let to = format!("<{}>", binding.contact);
            let mut inv = Message::new_request(
                Method::Invite,
                &binding.contact,
                via,
                &local,
                &to,
                &b_call_id,
                1,
            );
            // Through the edge proxies it registered through (RFC 3327);
            // the flow is still the one the REGISTER came on (the first
            // of them), so a Path names nobody we would not send to.
            for r in &binding.path {
                inv.push("Route", r);
            }
            inv.push("Contact", &dialog::contact(flow));
            inv.push("User-Agent", &self.user_agent);
            // The call record id (operator answers are stored against it)
            // and the queue's operator script, for the operator's desktop.
            inv.push("X-Centralino-Call", &call.record_id);
            if let Some(o) = &call.outbound {
                // A callback: the operator's phone shows it before
                // answering (the citizen is dialled after the answer).
                inv.push("X-Centralino-Callback", &o.id);
            }
            if let Some(script) = &self.scripts[call.queue.0 as usize] {
                inv.push("X-Centralino-Script", script);
            }
            // What the caller chose and answered in the IVR travels with
            // the offer, for the operator's phone or desktop to show.
            if let Some(run) = &call.run {
                inv.push("X-Centralino-Flow", run.flow());
                for (name, value) in run.variables.iter().take(MAX_VARIABLE_HEADERS) {
                    inv.push("X-Centralino-Var", &format!("{name}={value}"));
                }
            }
            inv.set_body(Some("application/sdp"), b_offer(&call.media, &self.codecs));
            let key = self.send_request(now, flow, inv, ClientRef::BInvite(call_id));
            self.by_b.insert(b_call_id.clone(), call_id);
            let call = self.calls.get_mut(&call_id).expect("checked above");
            call.forks.push(BLeg {
                agent,
                attempt,
                invite_key: key,
                call_id: b_call_id,
                local,
                flow,
                state: BState::Calling,
                dialog: None,
            });
        }
        let ring = self.router.queue(queue).ring_timeout;
        let call = self.calls.get_mut(&call_id).expect("checked above");
        call.phase = Phase::Offering;
        call.attempt = attempt;
        debug!(agent = %name, phones = bindings.len(), "offering call");
        self.timers
            .push(Reverse((now + ring, call_id, CallTimer::Ring(attempt))));
        self.queue_event(now, call_id, "offer", Some(name));
    }

    /// A phone of `agent` is out of the offer (it refused, failed, timed
    /// out): the offer fails only once none of their phones rings.
    fn fork_gone(&mut self, now: Instant, call_id: CallId, agent: AgentId, outcome: OfferOutcome) {
        let still_ringing = self
            .calls
            .get(&call_id)
            .is_some_and(|c| c.forks.iter().any(|b| b.agent == agent));
        if still_ringing {
            return;
        }
        self.agent_released(agent);
        self.offer_failed(now, call_id, agent, outcome);
    }

    fn on_response(&mut self, now: Instant, key: TxKey, msg: Box<Message>) {
        let code = msg.code();
        match self.client.get(&key) {
            Some(ClientRef::BInvite(call)) => {
                let call = *call;
                self.on_b_invite_response(now, key, call, msg);
            }
            Some(ClientRef::Orphan { local, flow }) => {
                if (200..300).contains(&code) {
                    // The operator answered after we gave up: ACK and hang up.
                    let (local, flow) = (local.clone(), *flow);
                    let mut leg = Leg::from_response(&local, flow, &msg);
                    self.send_ack(&leg, &msg);
                    self.send_bye(now, &mut leg);
                }
                if code >= 200 {
                    self.client.remove(&key);
                }
            }
            Some(ClientRef::Citizen(call)) => {
                let call = *call;
                self.on_citizen_response(now, key, call, &msg);
            }
            Some(ClientRef::Transfer(call)) => {
                let call = *call;
                self.on_transfer_response(now, key, call, &msg);
            }
            Some(ClientRef::TrunkPing(trunk)) => {
                let trunk = *trunk;
                if code >= 200 {
                    self.client.remove(&key);
                    self.trunk_seen(trunk, true);
                }
            }
            Some(ClientRef::Refresh(call)) => {
                let call = *call;
                if code >= 200 {
                    self.client.remove(&key);
                    self.on_refresh_response(now, call, &msg);
                }
            }
            // Any answer, even 405 or 404, says the phone is there.
            Some(ClientRef::Other | ClientRef::Qualify(_)) | None => {
                if code >= 200 {
                    self.client.remove(&key);
                }
            }
        }
    }

    fn on_b_invite_response(
        &mut self,
        now: Instant,
        key: TxKey,
        call_id: CallId,
        msg: Box<Message>,
    ) {
        let _span = self.call_span(call_id).entered();
        let code = msg.code();
        // An answer we can use: a common codec, audio, and an address we
        // may send to.
        let fork_flow = self
            .calls
            .get(&call_id)
            .and_then(|c| c.forks.iter().find(|b| b.invite_key == key))
            .map(|b| b.flow);
        let usable_answer = (200..300).contains(&code)
            && fork_flow.is_some_and(|f| {
                b_answer(&msg, &self.codecs, f.remote.ip()).is_some_and(|(p, _)| {
                    self.refused_media(p.addr, f.remote.ip(), f.local.ip())
                        .is_none()
                })
            });
        let Some(call) = self.calls.get_mut(&call_id) else {
            self.client.remove(&key);
            return;
        };
        if let Some(b) = call.b.as_ref().filter(|b| b.invite_key == key) {
            // A retransmitted 2xx of the answered leg: our ACK was lost.
            if (200..300).contains(&code)
                && let Some(leg) = b.dialog.clone()
            {
                self.send_ack(&leg, &msg);
            }
            return;
        }
        let Some(i) = call.forks.iter().position(|b| b.invite_key == key) else {
            return;
        };
        let b = &mut call.forks[i];
        match code {
            100 => {}
            101..=199 => {
                if b.state == BState::Calling {
                    b.state = BState::Ringing;
                    // Idempotent: a second phone of the same operator
                    // ringing changes nothing.
                    self.router.ringing(b.agent, call_id);
                }
                // The operator's early media is not relayed: the caller
                // keeps hearing the queue's music until the answer.
            }
            200..=299 if !usable_answer => {
                // An answer we cannot use (no common codec, no audio):
                // acknowledge, hang up on that phone, try someone else.
                let b = call.forks.swap_remove(i);
                if call.forks.is_empty() {
                    call.phase = Phase::Queued;
                }
                let mut leg = Leg::from_response(&b.local, b.flow, &msg);
                self.client.remove(&key);
                self.by_b.remove(&b.call_id);
                self.send_ack(&leg, &msg);
                self.send_bye(now, &mut leg);
                self.metrics
                    .sdp_rejected
                    .with_label_values(&["operator_answer"])
                    .inc();
                warn!(agent = %self.router.agent(b.agent).name, "operator's SDP answer unusable, trying another operator");
                self.fork_gone(now, call_id, b.agent, OfferOutcome::Rejected);
            }
            200..=299 => {
                let mut b = call.forks.swap_remove(i);
                let losers: Vec<BLeg> = call.forks.drain(..).collect();
                let leg = Leg::from_response(&b.local, b.flow, &msg);
                b.state = BState::Answered;
                b.dialog = Some(leg.clone());
                let agent = b.agent;
                let b_from = b.flow.remote.ip();
                call.b = Some(b);
                call.phase = Phase::Connected;
                let (b_peer, b_direction) =
                    b_answer(&msg, &self.codecs, b_from).expect("checked by the guard arm");
                call.media.b = Some(b_peer);
                call.media.b_direction = b_direction;
                let whisper = whisper_prompts(
                    &self.whispers[call.queue.0 as usize],
                    call.outbound.is_some(),
                    &self.prompts,
                    &self.callback_tone,
                );
                if !whisper.is_empty() {
                    self.metrics
                        .whispers
                        .with_label_values(&[if call.outbound.is_some() {
                            "callback"
                        } else {
                            "call"
                        }])
                        .inc();
                }
                if call.media.opened {
                    if !whisper.is_empty() {
                        self.out.push_back(Output::Media(MediaCommand::Whisper {
                            call: call_id,
                            b: b_peer,
                            prompts: whisper,
                        }));
                    }
                    self.out.push_back(Output::Media(MediaCommand::Bridge {
                        call: call_id,
                        b: b_peer,
                        record: self.record[call.queue.0 as usize],
                    }));
                } else if call.outbound.as_ref().is_some_and(|o| !o.customer_first)
                    && !whisper.is_empty()
                {
                    // Agent first: the citizen is not dialled yet. The
                    // operator's side opens now for the whisper; the
                    // citizen's address comes with their answer.
                    let cmd = open_command(call_id, &mut call.media);
                    self.out.push_back(Output::Media(cmd));
                    self.out.push_back(Output::Media(MediaCommand::Whisper {
                        call: call_id,
                        b: b_peer,
                        prompts: whisper,
                    }));
                }
                let already_answered = std::mem::replace(&mut call.answered, true);
                let mut ok = call.a_invite.response(200, "OK", Some(&call.a_tag));
                ok.push("Contact", &Self::caller_contact(call));
                ok.set_body(Some("application/sdp"), a_sdp(&call.media, &self.codecs));
                if !already_answered {
                    self.session_refreshed(now, call_id, &mut ok);
                }
                let Some(call) = self.calls.get_mut(&call_id) else {
                    return;
                };
                let (queue, enqueued, started) = (call.queue, call.enqueued, call.started);
                self.send_ack(&leg, &msg);
                // The router releases the other ring-all operators itself.
                self.router.answered(now, agent, call_id);
                for l in losers {
                    // The winner's other phones stop ringing; their desk
                    // stays on the call.
                    let release = l.agent != agent;
                    self.cancel_fork(now, l, release, Some(COMPLETED_ELSEWHERE));
                }
                if !already_answered {
                    self.final_ok(now, call_id, ok);
                }
                if let Some(o) = self.calls.get(&call_id).and_then(|c| c.outbound.as_ref()) {
                    let (id, customer_first) = (o.id.clone(), o.customer_first);
                    if customer_first {
                        // Customer first: the citizen, reached, now talks
                        // to an operator.
                        self.callback_state(&id, CallbackState::Done);
                    } else {
                        // Agent first: the operator is there; the citizen
                        // is dialled once the store knows (never twice).
                        self.callback_state(&id, CallbackState::Dialing { call: call_id });
                    }
                }
                let qname = self.router.queue(queue).name.clone();
                self.metrics
                    .call_setup
                    .observe((now - started).as_secs_f64());
                self.metrics
                    .queue_wait
                    .with_label_values(&[&qname])
                    .observe((now - enqueued).as_secs_f64());
                self.metrics
                    .queue_dequeued
                    .with_label_values(&[&qname, "answered"])
                    .inc();
                self.metrics
                    .agent_offers
                    .with_label_values(&["answered"])
                    .inc();
                let name = self.router.agent(agent).name.clone();
                info!(agent = %name, queue = %qname, "call answered");
                if let Some(c) = self.calls.get_mut(&call_id) {
                    c.connected = Some((now, name.clone()));
                }
                if let Some(c) = self.calls.get(&call_id) {
                    let desk = self.desk(c, DeskState::Connected);
                    self.out.push_back(Output::AgentCall {
                        agent: name.clone(),
                        info: Some(desk),
                    });
                }
                self.queue_event(now, call_id, "connect", Some(name));
            }
            _ => {
                let b = call.forks.swap_remove(i);
                self.client.remove(&key);
                self.by_b.remove(&b.call_id);
                if call.forks.is_empty() {
                    call.phase = Phase::Queued;
                }
                let outcome = if matches!(code, 486 | 600 | 603) {
                    OfferOutcome::Rejected
                } else {
                    OfferOutcome::NoAnswer
                };
                self.metrics
                    .agent_offers
                    .with_label_values(&[if outcome == OfferOutcome::Rejected {
                        "rejected"
                    } else {
                        "failed"
                    }])
                    .inc();
                debug!(code, "operator's phone refused the call");
                self.fork_gone(now, call_id, b.agent, outcome);
            }
        }
    }

    fn on_client_timeout(&mut self, now: Instant, key: TxKey) {
        if let Some(ClientRef::Qualify(agent)) = self.client.get(&key) {
            let agent = *agent;
            self.client.remove(&key);
            let name = self.router.agent(agent).name.clone();
            warn!(agent = %name, "the operator's phone does not answer OPTIONS: logged out");
            self.metrics.agents_unreachable.inc();
            self.registrar.drop_bindings(&name);
            return;
        }
        if let Some(ClientRef::TrunkPing(trunk)) = self.client.get(&key) {
            let trunk = *trunk;
            self.client.remove(&key);
            self.trunk_seen(trunk, false);
            return;
        }
        if let Some(ClientRef::Refresh(call_id)) = self.client.get(&key) {
            // No answer to our refresh: as a 408 (RFC 4028 §10).
            let call_id = *call_id;
            self.client.remove(&key);
            warn!("session refresh unanswered: the session is gone");
            self.metrics.session_timer_expired.inc();
            self.metrics
                .session_refreshes
                .with_label_values(&["gone"])
                .inc();
            self.end_connected(now, call_id, true, true, "session_expired");
            return;
        }
        if let Some(ClientRef::Transfer(call_id)) = self.client.get(&key) {
            let call_id = *call_id;
            self.client.remove(&key);
            self.transfer_failed(now, call_id);
            return;
        }
        if let Some(ClientRef::Citizen(call_id)) = self.client.get(&key) {
            let call_id = *call_id;
            self.client.remove(&key);
            if let Some(o) = self
                .calls
                .get_mut(&call_id)
                .and_then(|c| c.outbound.as_mut())
            {
                o.invite = None;
            }
            // Not even a provisional answer: the trunk, not the citizen.
            if self.next_trunk(now, call_id, "timeout") {
                return;
            }
            self.end_connected(now, call_id, false, true, "no_answer");
            return;
        }
        if let Some(ClientRef::BInvite(call_id)) = self.client.remove(&key) {
            let Some(call) = self.calls.get_mut(&call_id) else {
                return;
            };
            if let Some(i) = call.forks.iter().position(|b| b.invite_key == key) {
                let b = call.forks.swap_remove(i);
                self.by_b.remove(&b.call_id);
                if call.forks.is_empty() {
                    call.phase = Phase::Queued;
                }
                self.metrics
                    .agent_offers
                    .with_label_values(&["no_answer"])
                    .inc();
                self.fork_gone(now, call_id, b.agent, OfferOutcome::NoAnswer);
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
                info!(agent = %self.router.agent(b.agent).name, "operator did not answer in time");
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
                let status = self.queue_exit[call.queue.0 as usize];
                info!("maximum wait reached, queue exit");
                self.end_unanswered(now, call_id, status, "max_wait", false);
            }
            CallTimer::Progress => {
                if call.phase == Phase::Connected || call.answered {
                    return;
                }
                let mut r = if call.media.late_offer {
                    call.a_invite.response(180, "Ringing", Some(&call.a_tag))
                } else {
                    let mut r = call
                        .a_invite
                        .response(183, "Session Progress", Some(&call.a_tag));
                    r.set_body(Some("application/sdp"), a_sdp(&call.media, &self.codecs));
                    r
                };
                r.push("Contact", &Self::caller_contact(call));
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
                    if rel.held_final.is_some() {
                        // An operator already answered: released by BYE.
                        let r = call
                            .a_invite
                            .response(500, reason_phrase(500), Some(&call.a_tag));
                        let a_key = call.a_key.clone();
                        self.respond(now, &a_key, &r);
                        self.end_connected(now, call_id, false, true, "no_prack");
                    } else {
                        self.end_unanswered(now, call_id, 500, "no_prack", false);
                    }
                    return;
                }
                *interval *= 2;
                // The last wait ends at 64·T1 exactly, when it is refused.
                let (r, next) = (r.clone(), (now + *interval).min(*first + 64 * t1));
                let a_key = call.a_key.clone();
                self.timers
                    .push(Reverse((next, call_id, CallTimer::Reliable(rseq))));
                self.respond(now, &a_key, &r);
            }
            CallTimer::CallbackDone => {
                self.end_unanswered(now, call_id, 480, "callback_requested", false);
            }
            CallTimer::SessionRefresh(step) => {
                if call.session_step != step || call.session_timer.is_none() || !call.we_refresh {
                    return;
                }
                self.send_refresh(now, call_id);
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
                    self.end_connected(now, call_id, true, true, "session_expired");
                } else {
                    self.end_unanswered(now, call_id, 408, "session_expired", false);
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
                if call.phase == Phase::Connected {
                    return;
                }
                let queue = call.queue;
                if let Some(every) = self.announce_every[queue.0 as usize] {
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

    /// Tells a waiting caller their position and expected wait, then the
    /// music resumes.
    fn announce(&mut self, call_id: CallId, queue: QueueId) {
        if !self.calls.get(&call_id).is_some_and(|c| c.media.opened) {
            // A late offer: no media towards the caller before the answer.
            return;
        }
        let Some(est) = self.router.estimate(call_id) else {
            return;
        };
        let position = est.position;
        let minutes = est
            .wait
            .map(|d| u32::try_from(d.as_secs().div_ceil(60)).unwrap_or(u32::MAX));
        let mut names = announce::position_and_wait(position, minutes);
        names.extend(self.virtual_hold[queue.0 as usize].1.iter().cloned());
        let Some(prompts) = self.prompts.sequence(&names) else {
            self.metrics
                .announcements
                .with_label_values(&["skipped"])
                .inc();
            debug!("announcement skipped: prompts not loaded");
            return;
        };
        self.metrics
            .announcements
            .with_label_values(&["played"])
            .inc();
        debug!(position, ?minutes, "announcing position and wait");
        self.out.push_back(Output::Media(MediaCommand::Play {
            call: call_id,
            prompts,
            music: self.music[queue.0 as usize].clone(),
        }));
    }

    /// The call's media is over: sockets closed, ports back to the pool.
    fn close_media(&mut self, now: Instant, call_id: CallId, media: &CallMedia) {
        self.out
            .push_back(Output::Media(MediaCommand::Close { call: call_id }));
        self.ports.release(now, media.a_port);
        self.ports.release(now, media.b_port);
    }

    /// A report from the media plane.
    pub fn handle_media(&mut self, now: Instant, event: MediaEvent) {
        match event {
            MediaEvent::Dtmf { call, side, digit } => {
                self.on_digit(now, call, side, digit, "rfc4733");
            }
            MediaEvent::Idle { call, side } => {
                let _span = self.call_span(call).entered();
                let early = self.calls.get(&call).is_some_and(|c| {
                    c.outbound.as_ref().is_some_and(|o| !o.answered) && side == Side::A
                });
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
                    self.end_connected(now, call, true, true, "media_timeout");
                }
            }
            MediaEvent::Failed { call } => {
                let _span = self.call_span(call).entered();
                warn!("media could not be set up, ending the call");
                match self.calls.get(&call).map(|c| c.phase) {
                    Some(Phase::Connected) => {
                        self.end_connected(now, call, true, true, "media_failed");
                    }
                    Some(_) => self.end_unanswered(now, call, 503, "media_failed", false),
                    None => {}
                }
            }
        }
        self.pump(now);
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
            call.callback_asked = false;
            let outcome = if stored { "ivr_created" } else { "ivr_failed" };
            self.metrics.callbacks.with_label_values(&[outcome]).inc();
            let facts = facts!(self, now);
            let actions = run.callback_result(now, stored, &facts);
            call.run = Some(run);
            self.flow_actions(now, call_id, actions);
            self.pump(now);
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
        let confirm = self.virtual_hold[call.queue.0 as usize].2.clone();
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

    /// One key press, from RTP or SIP INFO: kept for the call's flow.
    fn on_digit(
        &mut self,
        now: Instant,
        call_id: CallId,
        side: Side,
        digit: char,
        source: &'static str,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let _span = call.span.clone().entered();
        self.metrics.dtmf_digits.with_label_values(&[source]).inc();
        if call.media.digits.len() >= MAX_DIGITS {
            call.media.digits.remove(0);
        }
        call.media.digits.push(digit);
        // The digit itself only at debug: callers key in codes and dates.
        debug!(side = side.label(), source, %digit, "key press");
        info!(side = side.label(), source, "key press received");
        if side == Side::A
            && matches!(call.phase, Phase::Queued | Phase::Offering)
            && call.in_queue
            && !call.callback_asked
        {
            if call.vhold.is_some() {
                self.vhold_digit(now, call_id, digit);
                return;
            }
            if self.virtual_hold[call.queue.0 as usize].0 == Some(digit) {
                let number = call.caller.clone();
                let queue = call.queue;
                let usable = self
                    .dialable(self.queue_tenant(queue), &number, "virtual_hold")
                    .is_some();
                if self.callback_number[queue.0 as usize].is_some() {
                    info!("caller asks to be called back: confirming the number");
                    if usable {
                        self.vhold_ask(now, call_id, Vhold::Confirm(number));
                    } else {
                        self.vhold_ask(now, call_id, Vhold::Enter(String::new(), 0));
                    }
                } else if usable {
                    self.vhold_store(call_id, number);
                } else {
                    info!("callback asked without a usable caller number: the call stays queued");
                    self.metrics
                        .callbacks
                        .with_label_values(&["no_number"])
                        .inc();
                }
                return;
            }
        }
        if side == Side::A
            && let Some(mut run) = call.run.take()
        {
            let facts = facts!(self, now);
            let actions = run.handle_digit(now, digit, &facts);
            call.run = Some(run);
            self.flow_actions(now, call_id, actions);
        }
    }

    /// The operator's phone went silent mid-call (it died, lost its network):
    /// the caller is not left in dead air. The operator's leg gets BYE and
    /// they are paused (`media_lost`) until they resume; the caller hears
    /// the music again and goes back to the queue as if waiting since they
    /// first entered it (ahead of later callers), for the next operator.
    /// `false` when the call cannot go back (an IVR transfer).
    fn requeue_after_operator_loss(&mut self, now: Instant, call_id: CallId) -> bool {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return false;
        };
        if call.transfer.is_some() || call.b.is_none() || !call.media.opened {
            return false;
        }
        let Some(mut b) = call.b.take() else {
            return false;
        };
        let _span = call.span.clone().entered();
        let lost = call.connected.take().map(|(_, name)| name);
        // Waited so far, on top of what the call brought (a callback's time
        // since the request): it keeps its place.
        let mut spec = (*call.spec).clone();
        spec.waited += now.saturating_duration_since(call.enqueued);
        let queue = call.queue;
        call.media.b = None;
        call.media.b_direction = Direction::SendRecv;
        call.phase = Phase::Queued;
        self.by_b.remove(&b.call_id);
        self.client.remove(&b.invite_key);
        if let Some(mut leg) = b.dialog.take() {
            self.send_bye(now, &mut leg);
        }
        self.out
            .push_back(Output::Media(MediaCommand::Unbridge { call: call_id }));
        self.router.call_lost(now, b.agent, call_id);
        self.agent_released(b.agent);
        if matches!(self.router.agent(b.agent).state, AgentState::Paused(_)) {
            self.agent_event(now, b.agent, "pause", Some("media_lost".to_owned()));
        }
        warn!(agent = ?lost, "the operator's phone went silent: the caller goes back to the queue");
        self.metrics
            .calls_requeued
            .with_label_values(&["operator_media_lost"])
            .inc();
        self.queue_event(now, call_id, "requeue", lost);
        self.enter_queue(now, call_id, queue, &spec);
        true
    }

    /// The router's `offer_failed`, plus the queue log's pause when the
    /// miss made it pause the operator (`max_no_answer`).
    fn offer_failed(&mut self, now: Instant, call: CallId, agent: AgentId, outcome: OfferOutcome) {
        self.router.offer_failed(now, call, agent, outcome);
        if self.router.agent(agent).state == AgentState::Paused(PauseReason::NoAnswer) {
            self.agent_event(now, agent, "pause", Some("no_answer".to_owned()));
        }
    }

    /// An operator event for the queue log and the metrics.
    fn agent_event(
        &mut self,
        now: Instant,
        agent: AgentId,
        event: &'static str,
        reason: Option<String>,
    ) {
        self.metrics.agent_events.with_label_values(&[event]).inc();
        self.out.push_back(Output::Record(Record::Agent {
            at_ms: self.unix_ms_at(now),
            agent: self.router.agent(agent).name.clone(),
            event,
            reason,
        }));
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

    /// What the operator's desktop shows of `call`.
    fn desk(&self, call: &Call, state: DeskState) -> AgentCall {
        AgentCall {
            state,
            call: call.record_id.clone(),
            queue: self.router.queue(call.queue).name.clone(),
            flow: call.run.as_ref().map(|r| r.flow().to_owned()),
            variables: call
                .run
                .as_ref()
                .map(|r| r.variables.clone())
                .unwrap_or_default(),
            script: self.scripts[call.queue.0 as usize].clone(),
            callback: call.outbound.as_ref().map(|o| o.id.clone()),
        }
    }

    /// The operator's desktop no longer shows the call.
    fn agent_released(&mut self, agent: AgentId) {
        let name = self.router.agent(agent).name.clone();
        self.out.push_back(Output::AgentCall {
            agent: name,
            info: None,
        });
    }

    fn cancel_b(&mut self, now: Instant, b: BLeg) {
        self.cancel_fork(now, b, true, None);
    }

    /// CANCELs a ringing B-leg (a late 2xx gets ACK and BYE); `release`
    /// clears the operator's desk; `reason` goes in a `Reason` header
    /// (RFC 3326).
    fn cancel_fork(&mut self, now: Instant, b: BLeg, release: bool, reason: Option<&str>) {
        if release {
            self.agent_released(b.agent);
        }
        self.by_b.remove(&b.call_id);
        self.cancel_with_reason(now, &b.invite_key, b.flow, reason);
        self.client.insert(
            b.invite_key,
            ClientRef::Orphan {
                local: b.local,
                flow: b.flow,
            },
        );
    }

    /// Ends a call that never connected: the caller gets `status`.
    /// Ends a call no operator answered: the caller gets `status` (or,
    /// answered by an IVR flow, a BYE unless `caller_gone`).
    fn end_unanswered(
        &mut self,
        now: Instant,
        call_id: CallId,
        status: u16,
        outcome: &'static str,
        caller_gone: bool,
    ) {
        let _span = self.call_span(call_id).entered();
        let Some(mut call) = self.calls.remove(&call_id) else {
            return;
        };
        self.by_a.remove(&call.a_leg.call_id);
        self.close_media(now, call_id, &call.media);
        if let Some(mut t) = call.transfer.take() {
            // The caller left while the transfer rang.
            self.by_b.remove(&t.call_id);
            if let Some(key) = t.invite.take() {
                let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
                self.cancel_client_invite(now, &key, flow);
            }
        }
        if call.phase != Phase::Connected {
            // Releases every operator still ringing for it, too.
            self.router.withdraw(now, call_id);
            for b in call.forks.drain(..) {
                self.cancel_b(now, b);
            }
        }
        if let Some(o) = call.outbound.as_ref().filter(|o| o.answered) {
            // Customer first, reached and then lost while queued (they hung
            // up, or nobody took them in time): nobody spoke to them, so
            // the request is not done; it is tried again by the policy.
            let outcome = match outcome {
                "max_wait" | "queue_full" => "no_operator",
                _ => "abandoned",
            };
            self.outbound_failed(o, call.queue, outcome);
            if !caller_gone {
                self.send_bye(now, &mut call.a_leg);
            }
        } else if let Some(o) = &call.outbound {
            // A callback nobody took: nobody to hang up on; try later.
            let outcome = if outcome == "max_wait" {
                "no_operator"
            } else {
                outcome
            };
            self.outbound_failed(o, call.queue, outcome);
        } else if !call.answered {
            let r = call
                .a_invite
                .response(status, reason_phrase(status), Some(&call.a_tag));
            self.respond(now, &call.a_key, &r);
        } else if !caller_gone {
            self.send_bye(now, &mut call.a_leg);
        }
        if call.in_queue {
            let qname = self.router.queue(call.queue).name.clone();
            self.metrics
                .queue_wait
                .with_label_values(&[&qname])
                .observe((now - call.enqueued).as_secs_f64());
            self.metrics
                .queue_dequeued
                .with_label_values(&[&qname, outcome])
                .inc();
        }
        self.metrics.calls.with_label_values(&[outcome]).inc();
        info!(caller = %Masked(&call.caller), outcome, "call ended before answer");
        let at_ms = self.unix_ms_at(now);
        let wait_ms = call
            .in_queue
            .then(|| now.saturating_duration_since(call.enqueued).as_millis() as i64);
        let queue = call
            .in_queue
            .then(|| self.router.queue(call.queue).name.clone());
        if let Some(q) = &queue {
            let event = match outcome {
                "cancelled" | "abandoned" => "abandon",
                "max_wait" => "timeout",
                "callback_requested" => "callback",
                _ => "exit",
            };
            self.out.push_back(Output::Record(Record::Queue {
                call: call.record_id.clone(),
                at_ms,
                queue: q.clone(),
                event,
                agent: None,
                position: None,
                wait_ms,
            }));
        }
        self.out.push_back(Output::Record(Record::CallEnded {
            id: call.record_id.clone(),
            at_ms,
            outcome: outcome.to_owned(),
            queue,
            agent: None,
            wait_ms,
            talk_ms: None,
            variables: variables_of(&call),
        }));
    }

    /// The ACK of the caller's 2xx: after a late offer it carries the
    /// caller's answer, and the media opens.
    fn on_ack(&mut self, now: Instant, source: IpAddr, msg: &Message) {
        // An ACK gets no answer, so one that is not the caller's own is
        // dropped (counted): it could carry an SDP answer that moves media.
        let Some(&call_id) = self.by_a.get(&msg.call_id) else {
            return;
        };
        if self.match_dialog(source, msg).is_err() {
            self.metrics
                .sip_rejected
                .with_label_values(&["foreign_dialog"])
                .inc();
            return;
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if !call.media.late_offer || call.media.opened || !call.answered {
            return;
        }
        let _span = call.span.clone().entered();
        let flow = call.a_leg.flow;
        let answer = sdp::parse(&msg.body)
            .ok()
            .filter(|a| a.port != 0)
            .and_then(|a| Some((a.choose(&self.codecs)?, a)))
            .filter(|(_, a)| {
                self.refused_media(
                    SocketAddr::new(a.addr, a.port),
                    flow.remote.ip(),
                    flow.local.ip(),
                )
                .is_none()
            });
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some((law, audio)) = answer else {
            warn!("caller's ACK carries no usable SDP answer, hanging up");
            self.metrics
                .sdp_rejected
                .with_label_values(&["ack_answer"])
                .inc();
            self.end_connected(now, call_id, true, true, "bad_answer");
            return;
        };
        call.media.a = Peer {
            addr: SocketAddr::new(audio.addr, audio.port),
            law,
            telephone_event: audio.telephone_event,
            signalling: Some(call.a_leg.flow.remote.ip()),
        };
        call.media.a_direction = audio.direction.answer();
        call.media.version += 1;
        call.media.opened = true;
        let m = &call.media;
        self.out.push_back(Output::Media(MediaCommand::Open {
            call: call_id,
            ip: m.ip,
            a_port: m.a_port,
            b_port: m.b_port,
            a: m.a,
        }));
        if let Some(b) = m.b {
            let record = self.record[call.queue.0 as usize];
            self.out.push_back(Output::Media(MediaCommand::Bridge {
                call: call_id,
                b,
                record,
            }));
        }
        if let Some(flow) = call.pending_flow.take() {
            self.run_flow(now, call_id, flow);
        }
    }

    /// Whether an in-dialog request belongs to a dialog of ours: Call-ID,
    /// our tag in To, the peer's tag in From (once we know it), and a source
    /// that is the dialog's peer. `Err` names the refusal (metric label):
    /// `no_dialog` when the Call-ID is unknown, `foreign_dialog` otherwise.
    fn match_dialog(&self, source: IpAddr, msg: &Message) -> Result<CallId, &'static str> {
        let (call_id, on_a) = match (self.by_a.get(&msg.call_id), self.by_b.get(&msg.call_id)) {
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
                && self.same_peer(peer.remote.ip(), source)
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
    fn refused_media(
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

    /// [`Self::refused_media`] without counting (the caller counts).
    fn media_refusal(
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

    /// Whether `source` may speak for a dialog established with `peer`:
    /// the same address, or another address of the same trunk (carriers
    /// answer from several SBCs).
    fn same_peer(&self, peer: IpAddr, source: IpAddr) -> bool {
        peer == source
            || self
                .trunks
                .iter()
                .any(|(peers, _)| peers.contains(&peer) && peers.contains(&source))
    }

    /// The call and side an in-dialog request belongs to.
    fn dialog_side(&self, msg: &Message) -> Option<(CallId, Side)> {
        if let Some(&c) = self.by_a.get(&msg.call_id) {
            return Some((c, Side::A));
        }
        let c = *self.by_b.get(&msg.call_id)?;
        // Only the answered operator's dialog carries media changes.
        let answered = self.calls.get(&c)?.b.as_ref()?.call_id == msg.call_id;
        answered.then_some((c, Side::B))
    }

    /// A re-INVITE or UPDATE: hold, resume, a new address or codec. Each
    /// side negotiates with Centralino alone (the media is anchored), so
    /// the other side never needs a re-INVITE.
    fn on_reinvite(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let Some((call_id, side)) = self.dialog_side(msg) else {
            let r = msg.response(481, reason_phrase(481), None);
            self.respond(now, key, &r);
            return;
        };
        let codecs = self.codecs.clone();
        // The address of a new offer must be one we may send to (the
        // request's source is the dialog's peer: checked before).
        let leg_flow = self.calls.get(&call_id).and_then(|c| match side {
            Side::A => Some(c.a_leg.flow),
            Side::B => c.b.as_ref().map(|b| b.flow),
        });
        let bad_address = sdp::parse(&msg.body).ok().is_some_and(|a| {
            leg_flow.is_some_and(|f| {
                self.refused_media(SocketAddr::new(a.addr, a.port), f.remote.ip(), f.local.ip())
                    .is_some()
            })
        });
        if side == Side::A
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
            };
            match side {
                Side::A => {
                    call.media.a = peer;
                    call.media.a_direction = audio.direction.answer();
                }
                Side::B => {
                    call.media.b = Some(peer);
                    call.media.b_direction = audio.direction.answer();
                }
            }
            call.media.version += 1;
            info!(side = side.label(), held, "session changed by re-INVITE");
            self.out.push_back(Output::Media(MediaCommand::Update {
                call: call_id,
                side,
                peer,
                held,
            }));
        }
        let body = match side {
            Side::A => a_sdp(&call.media, &codecs),
            Side::B => b_sdp(&call.media),
        };
        let mut r = msg.response(200, "OK", None);
        r.push("Contact", &dialog::contact(call.a_leg.flow));
        r.set_body(Some("application/sdp"), body);
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
    fn on_info(&mut self, now: Instant, key: &TxKey, msg: &Message) {
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
        }
    }

    fn on_cancel(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let invite_key = TxKey {
            method: Method::Invite,
            ..TxKey::of(msg)
        };
        if self.txn.server_request(&invite_key).is_none() {
            let r = msg.response(481, reason_phrase(481), None);
            self.respond(now, key, &r);
            return;
        }
        let r = msg.response(200, "OK", None);
        self.respond(now, key, &r);
        if self.txn.server_is_final(&invite_key) {
            return;
        }
        if let Some(&call_id) = self.by_a.get(&msg.call_id) {
            self.end_unanswered(now, call_id, 487, "cancelled", true);
        }
    }

    fn on_bye(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let from_a = self.by_a.get(&msg.call_id).copied();
        let from_b = self.by_b.get(&msg.call_id).copied();
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
                self.end_connected(now, call_id, false, true, "caller_hangup");
            }
            (Some(Phase::Connected), false) => {
                self.end_connected(now, call_id, true, false, "agent_hangup");
            }
            // BYE in an early dialog: the caller gave up (as with CANCEL).
            (Some(_), true) => {
                let answered = self.calls.get(&call_id).is_some_and(|c| c.answered);
                let outcome = if answered { "abandoned" } else { "cancelled" };
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

    /// A ringing B-leg is gone without an answer: it is cancelled, the
    /// operator released and, when no other leg rings, the call returns to
    /// its place in the queue.
    fn b_leg_failed(
        &mut self,
        now: Instant,
        call_id: CallId,
        which: impl Fn(&BLeg) -> bool,
        outcome: OfferOutcome,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let (gone, kept): (Vec<BLeg>, Vec<BLeg>) = call.forks.drain(..).partition(|b| which(b));
        call.forks = kept;
        if call.forks.is_empty() && !gone.is_empty() {
            call.phase = Phase::Queued;
        }
        let mut agents: Vec<AgentId> = gone.iter().map(|b| b.agent).collect();
        agents.dedup();
        for b in gone {
            self.cancel_fork(now, b, false, None);
        }
        for agent in agents {
            self.fork_gone(now, call_id, agent, outcome);
        }
    }

    /// The router took a reservation back (its lease ran out before we
    /// reported anything): stop ringing that operator.
    fn reclaimed(&mut self, now: Instant, call_id: CallId, agent: AgentId) {
        let _span = self.call_span(call_id).entered();
        warn!(agent = %self.router.agent(agent).name, "reservation lapsed, offer withdrawn");
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let (gone, kept): (Vec<BLeg>, Vec<BLeg>) =
            call.forks.drain(..).partition(|b| b.agent == agent);
        call.forks = kept;
        if call.forks.is_empty() {
            call.phase = Phase::Queued;
        }
        let release = !gone.is_empty();
        for b in gone {
            self.cancel_fork(now, b, false, None);
        }
        if release {
            self.agent_released(agent);
        }
    }

    fn on_no_ack(&mut self, now: Instant, a_call_id: &str) {
        if let Some(&call_id) = self.by_a.get(a_call_id) {
            warn!("caller never acknowledged the answer, hanging up");
            if self.calls.get(&call_id).map(|c| c.phase) == Some(Phase::Connected) {
                self.end_connected(now, call_id, true, true, "no_ack");
            } else {
                self.end_unanswered(now, call_id, 408, "no_ack", false);
            }
        }
    }

    /// Ends a connected call, sending BYE to the legs asked for.
    fn end_connected(
        &mut self,
        now: Instant,
        call_id: CallId,
        bye_a: bool,
        bye_b: bool,
        outcome: &'static str,
    ) {
        let _span = self.call_span(call_id).entered();
        let Some(mut call) = self.calls.remove(&call_id) else {
            return;
        };
        self.by_a.remove(&call.a_leg.call_id);
        self.close_media(now, call_id, &call.media);
        if let Some(mut t) = call.transfer.take() {
            self.by_b.remove(&t.call_id);
            if let Some(key) = t.invite.take() {
                let flow = t.dialog.as_ref().map_or(call.a_leg.flow, |l| l.flow);
                self.cancel_client_invite(now, &key, flow);
            } else if let Some(mut leg) = t.dialog.take()
                && bye_b
            {
                self.send_bye(now, &mut leg);
            }
        }
        let citizen_reached = call.outbound.as_ref().is_none_or(|o| o.answered);
        if let Some(key) = call.outbound.as_mut().and_then(|o| o.invite.take()) {
            // The citizen's phone still rings: CANCEL it.
            self.cancel_client_invite(now, &key, call.a_leg.flow);
        }
        if bye_a && citizen_reached {
            self.send_bye(now, &mut call.a_leg);
        }
        if let Some(o) = &call.outbound
            && !o.answered
        {
            if o.dialled || outcome == "store_failed" {
                self.outbound_failed(o, call.queue, outcome);
            } else {
                // The operator hung up (or their phone died) during the
                // whisper, before the INVITE left: not the citizen's
                // attempt. Retrying only after `callback_retry_seconds`
                // would push them behind everyone who asked later.
                info!(
                    outcome,
                    "callback: the operator left before the citizen was dialled; back to pending"
                );
                self.metrics
                    .callbacks
                    .with_label_values(&["operator_left"])
                    .inc();
                let id = o.id.clone();
                self.callback_state(&id, CallbackState::Requeue { outcome });
            }
        }
        if let Some(b) = call.b.take() {
            self.by_b.remove(&b.call_id);
            // The INVITE's client transaction outlives the call (Timer M);
            // a 2xx retransmitted after this is simply ignored.
            self.client.remove(&b.invite_key);
            if let Some(mut leg) = b.dialog
                && bye_b
            {
                self.send_bye(now, &mut leg);
            }
            self.router.call_ended(now, b.agent, call_id);
            self.agent_released(b.agent);
        }
        self.metrics.calls.with_label_values(&["answered"]).inc();
        info!(
            outcome,
            duration_seconds = (now - call.started).as_secs(),
            "call ended"
        );
        let (talk_ms, agent) = match &call.connected {
            Some((t, a)) => (
                Some(now.saturating_duration_since(*t).as_millis() as i64),
                Some(a.clone()),
            ),
            None => (None, None),
        };
        let wait_ms = call
            .connected
            .as_ref()
            .map(|(t, _)| t.saturating_duration_since(call.enqueued).as_millis() as i64);
        self.out.push_back(Output::Record(Record::CallEnded {
            id: call.record_id.clone(),
            at_ms: self.unix_ms_at(now),
            outcome: outcome.to_owned(),
            queue: Some(self.router.queue(call.queue).name.clone()),
            agent,
            wait_ms,
            talk_ms,
            variables: variables_of(&call),
        }));
    }

    fn send_bye(&mut self, now: Instant, leg: &mut Leg) {
        leg.cseq += 1;
        let bye = self.in_dialog(leg, Method::Bye);
        self.send_request(now, leg.flow, bye, ClientRef::Other);
    }

    /// A request inside `leg`'s dialog with its current CSeq: to its
    /// remote target (its flow's address when it gave none), along its
    /// route set.
    fn in_dialog(&mut self, leg: &Leg, method: Method) -> Message {
        let via = self.via(leg.flow);
        leg.request(method, via)
    }

    /// The ACK for a 2xx (a request of its own, §13.2.2.4).
    fn send_ack(&mut self, leg: &Leg, resp: &Message) {
        let via = self.via(leg.flow);
        let ack = leg.ack(via, resp);
        self.send_stateless(leg.flow, &ack);
    }
}

/// The IVR's answers as `name=value` lines, for the call record.
fn variables_of(call: &Call) -> Option<String> {
    let run = call.run.as_ref()?;
    (!run.variables.is_empty()).then(|| {
        run.variables
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Each trunk's peers and DID table.
fn trunk_tables(config: &Config) -> Vec<(Vec<IpAddr>, DidTable)> {
    config
        .trunks
        .iter()
        .map(|t| {
            let dids = t
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
                .collect();
            (t.peers.clone(), dids)
        })
        .collect()
}

/// Opens a call's media (marks it opened).
/// What the operator hears on answering: the queue's whisper for calls,
/// its callback whisper (or the built-in tone) for callbacks; prompts not
/// loaded are left out.
fn whisper_prompts(
    (call, callback): &(Vec<String>, Option<Vec<String>>),
    is_callback: bool,
    lib: &Library,
    tone: &Prompt,
) -> Vec<Prompt> {
    match (is_callback, callback) {
        (true, None) => vec![tone.clone()],
        (true, Some(names)) => names_to_prompts(names, lib),
        (false, _) => names_to_prompts(call, lib),
    }
}

fn names_to_prompts(names: &[String], lib: &Library) -> Vec<Prompt> {
    names.iter().filter_map(|n| lib.get(n).cloned()).collect()
}

fn open_command(call: CallId, media: &mut CallMedia) -> MediaCommand {
    media.opened = true;
    MediaCommand::Open {
        call,
        ip: media.ip,
        a_port: media.a_port,
        b_port: media.b_port,
        a: media.a,
    }
}

/// Centralino's SDP towards the caller: our offer in the 200 OK after a
/// late offer, else the answer to theirs.
fn a_sdp(m: &CallMedia, codecs: &[Law]) -> Vec<u8> {
    if m.late_offer && !m.opened {
        return offer(m, codecs, m.a_port, m.session);
    }
    Local {
        addr: m.sdp_ip,
        port: m.a_port,
        formats: &[m.a.law.payload_type()],
        telephone_event: m.a.telephone_event,
        direction: m.a_direction,
        session: m.session,
        version: m.version,
    }
    .to_bytes()
}

/// Centralino's SDP towards the answered operator (re-INVITE answers).
fn b_sdp(m: &CallMedia) -> Vec<u8> {
    let Some(b) = m.b else {
        return Vec::new();
    };
    Local {
        addr: m.sdp_ip,
        port: m.b_port,
        formats: &[b.law.payload_type()],
        telephone_event: b.telephone_event,
        direction: m.b_direction,
        session: m.session + 1,
        version: m.version,
    }
    .to_bytes()
}

/// The offer to an operator: the caller's law first (no transcoding when
/// the phone takes it), then the others configured, and telephone-event.
fn b_offer(m: &CallMedia, codecs: &[Law]) -> Vec<u8> {
    offer(m, codecs, m.b_port, m.session + 1)
}

/// The citizen's side of a placed call learns its peer (early media or the
/// answer): opened now, or, already opened for the operator's whisper,
/// told its address.
fn citizen_peer(call_id: CallId, media: &mut CallMedia, peer: Peer) -> MediaCommand {
    media.a = peer;
    if media.opened {
        MediaCommand::Update {
            call: call_id,
            side: Side::A,
            peer,
            held: false,
        }
    } else {
        open_command(call_id, media)
    }
}

/// Whether a peer's request or answer lists UPDATE in its `Allow`.
fn allows_update(msg: &Message) -> bool {
    msg.headers_named("Allow")
        .flat_map(uri::split_list)
        .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
}

/// The caller a trusted carrier asserts (RFC 3325 `P-Asserted-Identity`,
/// one `sip:` and/or one `tel:` value): its telephone number, `tel:` first.
fn asserted_caller(msg: &Message) -> Option<String> {
    let uris: Vec<&str> = msg
        .headers_named("P-Asserted-Identity")
        .flat_map(uri::split_list)
        .take(2)
        .filter_map(|v| uri::parse_name_addr(v).map(|n| n.uri))
        .collect();
    let tel = uris
        .iter()
        .find(|u| u.len() > 4 && u[..4].eq_ignore_ascii_case("tel:"));
    tel.into_iter()
        .chain(uris.iter())
        .find_map(|u| uri::telephone_number(u))
        .map(str::to_owned)
}

/// Our offer from `port`: the caller's law (or the first configured) first.
fn offer(m: &CallMedia, codecs: &[Law], port: u16, session: u64) -> Vec<u8> {
    let mut formats = vec![m.a.law.payload_type()];
    formats.extend(
        codecs
            .iter()
            .map(|l| l.payload_type())
            .filter(|pt| *pt != m.a.law.payload_type()),
    );
    Local {
        addr: m.sdp_ip,
        port,
        formats: &formats,
        telephone_event: Some(TELEPHONE_EVENT),
        direction: Direction::SendRecv,
        session,
        version: 1,
    }
    .to_bytes()
}

/// An operator's answer (signalled from `from`): its media and the
/// direction we answer with.
fn b_answer(msg: &Message, codecs: &[Law], from: IpAddr) -> Option<(Peer, Direction)> {
    let a = sdp::parse(&msg.body).ok()?;
    if a.port == 0 {
        return None;
    }
    let law = a.choose(codecs)?;
    Some((
        Peer {
            addr: SocketAddr::new(a.addr, a.port),
            law,
            telephone_event: a.telephone_event,
            signalling: Some(from),
        },
        a.direction.answer(),
    ))
}

/// The `tag` parameter of a From/To value.
fn tag_of(header: &str) -> Option<&str> {
    uri::parse_name_addr(header)?.param("tag").flatten()
}

fn code_label(code: u16) -> &'static str {
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

mod session;
#[cfg(test)]
mod tests;
mod transfer;
mod vhold;
