//! The validated settings each part of Centralino reads (besides
//! [`crate::Config`] itself, which holds them).

use super::*;

/// `[tracing]`: each call's span exported to an OpenTelemetry collector
/// (OTLP over HTTP, JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracing {
    /// The collector's `host:port`, where the spans are posted.
    pub addr: String,
    /// Its host and port (unless 80), for the `Host` header.
    pub host: String,
    /// The request path: the endpoint's own path and `/v1/traces`.
    pub path: String,
    /// `service.name` of the spans' resource.
    pub service_name: String,
}

/// The SMS hook: an HTTP POST per callback event to the firm's gateway.
#[derive(Clone, Debug)]
pub struct Notifications {
    /// `https://host[:port]/path` (or `http://` to a gateway or relay on
    /// the firm's network).
    pub url: String,
    /// HTTPS: the name the gateway's certificate must carry (host name or
    /// IP address) and an extra CA file to trust (PEM) beside the system's.
    pub tls: Option<NotifyTls>,
    /// Host and port to connect to.
    pub addr: String,
    /// Path of the request.
    pub path: String,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Attempts before a notification becomes a dead letter.
    pub max_attempts: u32,
    /// Wait between attempts.
    pub retry: Duration,
}

/// How the SMS hook checks the gateway's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyTls {
    /// Name checked against the certificate (and sent as SNI).
    pub host: String,
    /// PEM certificates trusted in addition to the system's store.
    pub ca_file: Option<PathBuf>,
}

/// Virtual hold asks the caller to confirm the number to call back, or to
/// key in another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackNumber {
    /// Played before the number is read back digit by digit.
    pub read_prompts: Vec<String>,
    /// Played after it: 1 confirms, 2 keys in another number.
    pub confirm_prompts: Vec<String>,
    /// Asks for another number, ended by `#`.
    pub enter_prompts: Vec<String>,
    /// Wait for a key after the prompts (and between digits).
    pub timeout: Duration,
}

/// Transport of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenTransport {
    /// UDP
    Udp,
    /// TCP
    Tcp,
    /// TLS over TCP (RFC 3261 §26), on `sip.tls_listen`.
    Tls,
}

/// The TLS listener: where, and the node's certificate.
#[derive(Clone, Debug)]
pub struct SipTls {
    /// Addresses served over TLS (5061 by convention).
    pub listen: Vec<SocketAddr>,
    /// The node's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// Most SIP I/O threads (`sip.io_threads`): past a few, the engine's one
/// thread is the limit, not reading and parsing.
pub const MAX_IO_THREADS: usize = 16;

/// SIP settings.
#[derive(Clone, Debug)]
pub struct SipConfig {
    /// Addresses served, each on every transport of `transports`.
    pub listen: Vec<SocketAddr>,
    /// Transports served.
    pub transports: Vec<ListenTransport>,
    /// Digest realm.
    pub realm: String,
    /// Digest algorithms offered, preferred first.
    pub digest_algorithms: Vec<Algorithm>,
    /// Transaction timers.
    pub timers: TimerConfig,
    /// Ingress guard caps.
    pub limits: Limits,
    /// Most concurrent calls; above it new INVITEs get 503.
    pub max_calls: usize,
    /// Most new calls per second (token bucket, one second of burst);
    /// `None` = no limit. Above it new INVITEs get 503.
    pub max_calls_per_second: Option<std::num::NonZeroU32>,
    /// Threads that read and parse SIP over UDP, each with a socket
    /// of its own on every UDP listen address (`SO_REUSEPORT`); `0` = one
    /// per core, at most [`MAX_IO_THREADS`].
    pub io_threads: usize,
    /// The nice value the engine's thread asks for (`-20..=19`; `0` =
    /// left as the process's). Every call's signalling waits for that one
    /// thread: on a busy host a lower value (more CPU share, preempted
    /// less by the store, the staffing advisor or other processes) keeps
    /// dispatch in the millisecond. Below the process's own it needs
    /// `CAP_SYS_NICE` or `RLIMIT_NICE` (systemd `LimitNICE=`); refused,
    /// the node says so and runs on.
    pub engine_nice: i32,
    /// The engine's thread under the kernel's real-time round-robin
    /// scheduler (`SCHED_RR`) at this priority (`1..=99`; `0` = the normal
    /// scheduler). A woken engine then runs at once instead of waiting
    /// for the thread on its core to be preempted: the dispatch latency's
    /// p99 under 1 ms. It needs `CAP_SYS_NICE` or `RLIMIT_RTPRIO`
    /// (systemd `LimitRTPRIO=`); refused, the node says so and runs on.
    pub engine_realtime_priority: u8,
    /// The node's own lag (how long SIP input waits before the engine
    /// reads it) past which new calls are refused with `503` and
    /// `Retry-After`; taken again under half of it. 50 ms sheds before a
    /// 4 MiB socket buffer fills at 6,000 calls/s offered and long before
    /// SIP's T1 (500 ms) makes peers repeat themselves.
    pub overload_lag: Duration,
    /// Most TCP connections.
    pub max_tcp_connections: usize,
    /// Most live server transactions from one address that is not a trunk
    /// peer (each lingers ~32 s after its answer on UDP); beyond, 503.
    pub max_transactions_per_source: usize,
    /// A TCP connection idle (or stuck in a partial message) this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Server / User-Agent header value.
    pub user_agent: String,
    /// On SIGTERM, how long calls in progress may go on (new ones get 503)
    /// before the rest are ended and the node exits.
    pub drain: Duration,
    /// The TLS listener, when `transports` has `tls`.
    pub tls: Option<SipTls>,
}

/// A carrier trunk.
#[derive(Clone, Debug)]
pub struct Trunk {
    /// Name (a metric label).
    pub name: String,
    /// Tenant (its index in `Config::tenants`).
    pub tenant: TenantId,
    /// Addresses INVITEs are accepted from.
    pub peers: Vec<IpAddr>,
    /// DID → where its calls go.
    pub dids: HashMap<String, Did>,
    /// Where outbound calls (callbacks) are sent, if this trunk takes them.
    pub outbound: Option<SocketAddr>,
    /// The number callbacks show (the service's toll-free number).
    pub caller_id: String,
    /// How often the outbound side is asked OPTIONS (down when it
    /// answers nothing; skipped while down); `None`: never.
    pub options: Option<Duration>,
    /// Set: the trunk is known by its TLS client certificate, and its
    /// INVITEs are taken only over a TLS connection that presented one.
    pub client_cert: Option<TrunkClientCert>,
    /// Set: calls and OPTIONS to `outbound` go over TLS, not UDP.
    pub outbound_tls: Option<OutboundTls>,
    /// Set: a 401/407 from the carrier to our INVITE is answered once
    /// with these (RFC 3261 §22.2).
    pub auth: Option<TrunkAuth>,
    /// The carrier is in our trust domain (RFC 3325): the caller is the
    /// `P-Asserted-Identity` of its INVITEs (with its `Privacy`), and ours
    /// assert `caller_id` to it.
    pub asserted_identity: bool,
}

/// What we answer a carrier's digest challenge with.
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkAuth {
    /// The username the carrier gave us.
    pub username: String,
    /// The password (never in `Debug`, logs or the API).
    pub password: String,
}

impl fmt::Debug for TrunkAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrunkAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the node reaches a trunk's outbound side over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundTls {
    /// The name the carrier's certificate must carry (DNS name or IP).
    pub name: String,
    /// The CAs (PEM) its certificate must chain to; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// Our client certificate chain and key (PEM), for carriers that ask.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// How a trunk's TLS client certificate is recognised (mTLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkClientCert {
    /// The CA (PEM, one or more certificates) the certificate must chain to.
    pub ca_file: PathBuf,
    /// DNS names, one of which the certificate's subjectAltName must hold.
    pub peer_names: Vec<String>,
}

/// Where a DID's calls go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DidTarget {
    /// Straight into this queue (index).
    Queue(usize),
    /// Through this IVR flow (index into [`Config::flows`]).
    Flow(usize),
}

/// Where a DID's calls go and what they need.
#[derive(Clone, Debug)]
pub struct Did {
    /// Queue or flow.
    pub target: DidTarget,
    /// Requirements, priority, fragile flag of its calls.
    pub spec: CallSpec,
}

/// A queue: routing settings plus what the B2BUA needs.
#[derive(Clone, Debug)]
pub struct Queue {
    /// Tenant (its index in `Config::tenants`).
    pub tenant: TenantId,
    /// Removed from the file while the node runs: it keeps its place (the
    /// router's queue ids do not move) until a restart, takes no call and
    /// is shown nowhere.
    pub retired: bool,
    /// Routing settings.
    pub routing: QueueSettings,
    /// Final response when `max_wait` passes or the queue is full.
    pub exit_status: u16,
    /// Position and expected wait are announced this often to waiting
    /// callers (`None` = never).
    pub announce_every: Option<Duration>,
    /// This queue's music on hold (a WAV path), else the node's.
    pub music_on_hold: Option<PathBuf>,
    /// Answered calls are recorded (both legs mixed) under
    /// `media.recordings_dir`.
    pub record: bool,
    /// The operator script shown with this queue's calls (index into
    /// [`Config::scripts`]).
    pub script: Option<usize>,
    /// Virtual hold: this key while waiting asks to be called back (the
    /// request keeps the original enqueue time).
    pub callback_key: Option<char>,
    /// Played after each announcement when `callback_key` is set ("press
    /// 1 to be called back").
    pub callback_offer_prompts: Vec<String>,
    /// Played once the callback is stored, before the call ends.
    pub callback_confirm_prompts: Vec<String>,
    /// Played to the operator when they answer, before the bridge (the
    /// caller hears the music meanwhile): the line's context.
    pub whisper: Vec<String>,
    /// Played to the operator who answers a callback, while the citizen is
    /// dialled; `None`: a built-in two-tone signal.
    pub callback_whisper: Option<Vec<String>>,
    /// Virtual hold confirms the number (or takes another) before storing
    /// the callback; `None`: the caller id is used as it is.
    pub callback_number: Option<CallbackNumber>,
    /// When callbacks of this queue may be placed (Europe/Rome); any time
    /// when `None`.
    pub callback_hours: Option<centralino_flows::calendar::Calendar>,
    /// Dial attempts per callback before it fails.
    pub callback_max_attempts: u32,
    /// Wait between attempts (busy, no answer, failure).
    pub callback_retry: Duration,
    /// Customer first: dial the citizen, then queue them (else agent
    /// first: reserve an operator, then dial).
    pub callback_customer_first: bool,
    /// Per outcome (`busy`, `no_answer`, `failed`, `no_operator`): the
    /// attempts after which it fails and the wait before the next.
    pub callback_retries: Vec<(String, u32, Duration)>,
    /// What the queue's service figures are measured against (README,
    /// "Service figures").
    pub service: ServiceTargets,
    /// What becomes of a caller it cannot serve (`max_wait_seconds`
    /// reached, `max_waiting` full, nobody logged in).
    pub when_unserved: Unserved,
}

impl Queue {
    /// By when a callback asked for at `asked` (Unix seconds; to be
    /// placed not before `not_before`) is promised: the queue's
    /// `callback_promise_minutes` of its callback hours from the later
    /// of the two. `None` when the hours cannot keep it (not open that
    /// long within 62 days).
    pub fn callback_promised_by(&self, asked: i64, not_before: Option<i64>) -> Option<i64> {
        let from = not_before.map_or(asked, |n| n.max(asked));
        let open_for = self.service.callback_promise.as_secs() as i64;
        match &self.callback_hours {
            Some(hours) => hours.after_open(from, open_for),
            None => Some(from + open_for),
        }
    }
}

/// A queue's policy for callers it cannot serve (README, "Never a dead
/// end").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unserved {
    /// Offer a callback: the number confirmed by the caller with the
    /// queue's `callback_number` dialogue, else the caller id the dial
    /// plan accepts, stored at once. The default.
    Callback,
    /// Into another queue of the same firm (once per call), keeping the
    /// wait.
    Overflow(String),
    /// The queue's `exit_status`, as configured: the only dead end.
    Hangup,
}

/// A queue's service level thresholds: answered within `level` (and
/// `level2`) of entering the queue, callers hanging up within
/// `short_abandon` left out, `target` the share to reach.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServiceTargets {
    /// T of the service level.
    pub level: Duration,
    /// The second T (SL2).
    pub level2: Duration,
    /// Callers who hang up within this are short abandons.
    pub short_abandon: Duration,
    /// The service level to reach (0..1).
    pub target: f64,
    /// The handling time the staffing advisor assumes before the queue
    /// has measured one (no call completed since the start).
    pub expected_handle: Duration,
    /// How soon (in the queue's `callback_hours`) a callback is promised:
    /// kept in time when an operator talks to the citizen within it.
    pub callback_promise: Duration,
}

/// A guided conversation for operators: questions with branches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Name (queues refer to it).
    pub name: String,
    /// The firm whose queues and campaigns alone may use it; `None`: a
    /// national script any firm's may use.
    pub tenant: Option<String>,
    /// First question id.
    pub start: String,
    /// Questions by id.
    pub questions: BTreeMap<String, Question>,
}

impl Script {
    /// Whether `tenant`'s queues and campaigns may use it: a national
    /// script, or that tenant's own.
    pub fn serves(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

/// One question of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// What the operator asks.
    pub text: String,
    /// `choice` (answers → next), `text` or `date` (then `next`).
    pub kind: QuestionKind,
    /// For `choice`: answer → next question id, or `end`.
    pub answers: BTreeMap<String, String>,
    /// For `text` and `date`: the next question id, or `end`.
    pub next: String,
}

/// How a question is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuestionKind {
    /// One of the listed answers.
    Choice,
    /// Free text.
    Text,
    /// A date.
    Date,
}

impl QuestionKind {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Choice => "choice",
            Self::Text => "text",
            Self::Date => "date",
        }
    }
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Create and read callbacks (a web form's backend).
    Callbacks,
    /// One operator's desktop: their own call and events, scripts, the
    /// answers of their own calls.
    Agent,
    /// A supervisor's view: queues and operators' states (of one tenant
    /// when `tenant` is set).
    Supervisor,
}

/// A bearer token of the HTTP API.
#[derive(Clone, Debug)]
pub struct ApiToken {
    /// Who holds it (logs, never the token).
    pub name: String,
    /// The secret.
    pub token: String,
    /// What it may do.
    pub role: Role,
    /// The operator an `agent` token belongs to.
    pub agent: Option<String>,
    /// The tenant a `supervisor` or `callbacks` token sees and acts on
    /// (all when `None`).
    pub tenant: Option<String>,
}

/// Desk sessions: an operator logs in with their SIP username and password
/// and gets a signed token for their own desk, valid `hours`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSessions {
    /// How long a session token is valid; `0` turns logins off.
    pub hours: u32,
    /// A file of at least 32 secret bytes that signs the tokens: nodes
    /// sharing it accept each other's sessions, and sessions survive a
    /// restart. Without it each process draws its own key.
    pub key_file: Option<PathBuf>,
}

/// Bounds on `POST /api/v1/callbacks` (0 turns one off): a web form is
/// a door to a paid trunk, so neither one client nor one number may use
/// it without limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallbackLimits {
    /// Requests per client address per minute.
    pub per_source_per_minute: u32,
    /// Requests per number (E.164) per day.
    pub per_number_per_day: u32,
}

/// Bounds on the HTTP endpoint's connections (`[http]`), against clients
/// that are slow on purpose or open connections without end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's head (request line and headers) must arrive within
    /// this, counted from when the connection opens or its previous
    /// response was sent.
    pub header_timeout: Duration,
    /// A connection on which the client sends nothing and reads nothing
    /// this long, while no request is being handled, is closed (an idle
    /// keep-alive, a stalled head); a request body that stalls this long
    /// fails.
    pub idle_timeout: Duration,
    /// Open connections (WebSockets included); more are closed at once.
    pub max_connections: usize,
}

/// What the HTTP endpoint offers browsers (`[http]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpWeb {
    /// HTTPS (and WSS): certificate chain and key files (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Origins (`https://host[:port]`) allowed to open WebSockets besides
    /// the endpoint's own.
    pub allowed_origins: Vec<String>,
    /// A file holding the bearer token `/metrics` asks for (TEST-MATRIX
    /// D14); `None`: `/metrics` open to whoever reaches `http.listen`.
    pub metrics_token_file: Option<PathBuf>,
}

/// How a leg learns its peer's real RTP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatchMode {
    /// From the SDP's IP address or the IP the leg signals from (the
    /// registered phone's, the carrier's SBC), any port: symmetric RTP,
    /// for phones behind NAT and multi-homed PCs. The default.
    Symmetric,
    /// Only from the SDP's IP address (any port: NAT rewrites ports).
    SdpAddress,
    /// From the first packet, wherever it comes from (peers behind NAT
    /// that put a private address in their SDP).
    FirstPacket,
}

/// The media plane.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// RTP port range (even ports for RTP, RTCP on the next one).
    pub ports: (u16, u16),
    /// Address written into SDP instead of the local one (NAT).
    pub advertise_address: Option<IpAddr>,
    /// Codecs by preference, as payload types (0 = PCMU, 8 = PCMA).
    pub codecs: Vec<u8>,
    /// Latching.
    pub latch: LatchMode,
    /// A bridged leg silent this long ends the call (`None` = never).
    pub inactivity_timeout: Option<Duration>,
    /// Media threads (one per core when 0).
    pub threads: usize,
    /// Music on hold (a WAV file); built-in music when `None`.
    pub music_on_hold: Option<PathBuf>,
    /// Directory of the Italian prompts (digits/, queue-*.wav).
    pub sounds_dir: Option<PathBuf>,
    /// The site's own prompts (IVR flows), looked up before `sounds_dir`.
    pub prompts_dir: Option<PathBuf>,
    /// Where recordings are written (required by queues with `record`).
    pub recordings_dir: Option<PathBuf>,
}

/// An operator account.
#[derive(Clone, Debug)]
pub struct Agent {
    /// SIP username.
    pub username: String,
    /// Tenant (its index in `Config::tenants`).
    pub tenant: TenantId,
    /// Digest secrets.
    pub credentials: Credentials,
    /// Queue indices served.
    pub queues: Vec<usize>,
    /// Skills, languages, site: what requirements are matched against.
    pub attributes: Attributes,
}
