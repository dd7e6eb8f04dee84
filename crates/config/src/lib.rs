//! Configuration: the raw TOML shape (unknown keys are errors), its
//! validation into typed settings, and the embedded default
//! (`config/centralino.toml`, compiled in).
//!
//! Parse, don't validate: runtime code only sees [`Config`], built by
//! [`Config::from_toml`], which reports *every* problem with its key path.
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub mod reload;

use centralino_routing::{
    Attributes, CallSpec, Catalog, QueueSettings, Requirement, Ring, Strategy,
};
use centralino_sip::Limits;
use centralino_sip::auth::{Algorithm, Credentials};
use centralino_sip::registrar::RegistrarConfig;
use centralino_sip::txn::TimerConfig;
use centralino_types::dialplan::{self, DialPlan};
use serde::Deserialize;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../../../config/centralino.toml");

/// One problem in a configuration, with the key path it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `queues[0].ring_timeout_seconds`
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not TOML, or a key or type the schema does not know.
    #[error("{0}")]
    Syntax(String),
    /// Valid TOML with invalid values: every problem found.
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    sip: RawSip,
    http: RawHttp,
    logging: RawLogging,
    registrar: RawRegistrar,
    media: RawMedia,
    api: RawApi,
    store: RawStore,
    notifications: RawNotifications,
    flows_dir: Option<String>,
    flows: Vec<centralino_flows::RawFlow>,
    /// Names of the files the last flows came from (not in the TOML).
    #[serde(skip)]
    flow_files: Vec<String>,
    scripts: Vec<RawScript>,
    tenants: Vec<RawTenant>,
    trunks: Vec<RawTrunk>,
    queues: Vec<RawQueue>,
    agents: Vec<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSip {
    listen: Vec<String>,
    transports: Vec<String>,
    realm: String,
    digest_algorithms: Vec<String>,
    digest_md5_user_agents: Vec<String>,
    t1_milliseconds: u64,
    t2_milliseconds: u64,
    t4_milliseconds: u64,
    max_message_bytes: usize,
    max_headers: usize,
    max_header_line_bytes: usize,
    max_body_bytes: usize,
    max_calls: usize,
    max_calls_per_second: u32,
    max_tcp_connections: usize,
    tcp_idle_timeout_seconds: u64,
    user_agent: String,
    drain_seconds: u64,
    max_transactions_per_source: usize,
    tls_listen: Vec<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
}

impl Default for RawSip {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            listen: vec!["127.0.0.1:5060".into()],
            transports: vec!["udp".into(), "tcp".into()],
            realm: "centralino".into(),
            digest_algorithms: vec!["SHA-256".into(), "MD5".into()],
            // baresip 1.0 (Debian 12) fails on a SHA-256 challenge even
            // with an MD5 one beside it (issue 18).
            digest_md5_user_agents: vec!["baresip".into()],
            t1_milliseconds: 500,
            t2_milliseconds: 4000,
            t4_milliseconds: 5000,
            max_message_bytes: l.max_message_bytes,
            max_headers: l.max_headers,
            max_header_line_bytes: l.max_header_line_bytes,
            max_body_bytes: l.max_body_bytes,
            max_calls: 10_000,
            max_calls_per_second: 0,
            max_tcp_connections: 4096,
            tcp_idle_timeout_seconds: 10,
            user_agent: "Centralino".into(),
            drain_seconds: 60,
            max_transactions_per_source: 1024,
            tls_listen: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    name: String,
    start: String,
    questions: BTreeMap<String, RawQuestion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuestion {
    text: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    answers: BTreeMap<String, String>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNotifications {
    url: Option<String>,
    token: Option<String>,
    ca_file: Option<String>,
    max_attempts: u32,
    retry_seconds: u64,
}

impl Default for RawNotifications {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            ca_file: None,
            max_attempts: 5,
            retry_seconds: 30,
        }
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    retention_days: u32,
    audit_key_file: Option<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            retention_days: 90,
            audit_key_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    tokens: Vec<RawToken>,
    session_hours: u32,
    session_key_file: Option<String>,
    callbacks_per_source_per_minute: u32,
    callbacks_per_number_per_day: u32,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            session_hours: 12,
            session_key_file: None,
            callbacks_per_source_per_minute: 120,
            callbacks_per_number_per_day: 5,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    token: String,
    role: String,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMedia {
    port_min: u16,
    port_max: u16,
    advertise_address: Option<String>,
    codecs: Vec<String>,
    latch: String,
    inactivity_timeout_seconds: u64,
    threads: usize,
    music_on_hold: Option<String>,
    sounds_dir: Option<String>,
    prompts_dir: Option<String>,
    recordings_dir: Option<String>,
}

impl Default for RawMedia {
    fn default() -> Self {
        Self {
            // 20,000 pairs: two per call, for sip.max_calls = 10,000.
            port_min: 20_000,
            port_max: 59_999,
            advertise_address: None,
            codecs: vec!["PCMA".into(), "PCMU".into()],
            latch: "symmetric".into(),
            inactivity_timeout_seconds: 60,
            threads: 0,
            music_on_hold: None,
            sounds_dir: Some(DEFAULT_SOUNDS.into()),
            prompts_dir: None,
            recordings_dir: None,
        }
    }
}

/// Where Debian's `asterisk-core-sounds-it-wav` puts the Italian prompts.
pub const DEFAULT_SOUNDS: &str = "/usr/share/asterisk/sounds/it";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    listen: String,
    header_timeout_seconds: u64,
    idle_timeout_seconds: u64,
    max_connections: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            header_timeout_seconds: 10,
            idle_timeout_seconds: 10,
            max_connections: 1024,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    unmask_numbers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRegistrar {
    min_expires_seconds: u64,
    max_expires_seconds: u64,
    default_expires_seconds: u64,
    max_contacts: usize,
    nonce_lifetime_seconds: u64,
    state_after_login: String,
    ban_after_user_failures: u32,
    ban_after_address_failures: u32,
    ban_seconds: u64,
    qualify_seconds: u64,
}

impl Default for RawRegistrar {
    fn default() -> Self {
        Self {
            min_expires_seconds: 60,
            max_expires_seconds: 3600,
            default_expires_seconds: 3600,
            max_contacts: 10,
            nonce_lifetime_seconds: 300,
            state_after_login: "available".into(),
            ban_after_user_failures: 5,
            ban_after_address_failures: 20,
            ban_seconds: 300,
            qualify_seconds: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    #[serde(default)]
    dial_plan: Option<RawDialPlan>,
    /// The digest algorithms this tenant's operators may use (a subset of
    /// `sip.digest_algorithms`; all of them when left out).
    #[serde(default)]
    digest_algorithms: Option<Vec<String>>,
}

/// `[tenants.dial_plan]`: what this tenant's trunks may dial. Every key
/// defaults to the Italian plan's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDialPlan {
    #[serde(default)]
    country_code: Option<String>,
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    block: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    name: String,
    tenant: String,
    peers: Vec<String>,
    #[serde(default)]
    outbound: Option<String>,
    #[serde(default)]
    caller_id: Option<String>,
    #[serde(default)]
    options_seconds: u64,
    #[serde(default)]
    dids: BTreeMap<String, RawDid>,
    #[serde(default)]
    tls_client_ca_file: Option<String>,
    #[serde(default)]
    tls_peer_names: Vec<String>,
    #[serde(default)]
    outbound_transport: Option<String>,
    #[serde(default)]
    outbound_tls_name: Option<String>,
    #[serde(default)]
    outbound_tls_ca_file: Option<String>,
    #[serde(default)]
    outbound_tls_cert_file: Option<String>,
    #[serde(default)]
    outbound_tls_key_file: Option<String>,
    #[serde(default)]
    auth_username: Option<String>,
    #[serde(default)]
    auth_password: Option<String>,
    #[serde(default = "default_asserted_identity")]
    asserted_identity: bool,
}

/// Carriers are in the node's trust domain by default (RFC 3325): they
/// are known by address or certificate already.
fn default_asserted_identity() -> bool {
    true
}

/// A DID maps to a queue name, or to a queue with what its callers need.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDid {
    Queue(String),
    Full(RawDidFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDidFull {
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    flow: Option<String>,
    #[serde(default)]
    requirements: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    fragile: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRing {
    after_seconds: u64,
    requirements: String,
    #[serde(default)]
    tenants: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: String,
    tenant: String,
    #[serde(default = "default_strategy")]
    strategy: String,
    #[serde(default = "default_ring")]
    ring_timeout_seconds: u64,
    #[serde(default = "default_no_answer")]
    max_no_answer: u32,
    #[serde(default = "default_max_wait")]
    max_wait_seconds: u64,
    #[serde(default)]
    wrap_up_seconds: u64,
    #[serde(default = "default_max_waiting")]
    max_waiting: usize,
    #[serde(default = "default_exit")]
    exit_status: u16,
    #[serde(default)]
    requirements: Option<String>,
    #[serde(default = "default_ring_all_width")]
    ring_all_width: u8,
    #[serde(default = "default_weight")]
    weight: f64,
    #[serde(default = "default_priority_step")]
    priority_step_seconds: u64,
    #[serde(default)]
    fragile_max_wait_seconds: Option<u64>,
    #[serde(default)]
    overflow: Vec<RawRing>,
    #[serde(default = "default_retry")]
    retry_seconds: u64,
    #[serde(default)]
    announce_seconds: u64,
    #[serde(default)]
    music_on_hold: Option<String>,
    #[serde(default)]
    record: bool,
    #[serde(default)]
    script: Option<String>,
    #[serde(default)]
    callback_key: Option<String>,
    #[serde(default)]
    callback_offer_prompts: Vec<String>,
    #[serde(default)]
    callback_confirm_prompts: Vec<String>,
    #[serde(default)]
    whisper: Vec<String>,
    #[serde(default)]
    callback_whisper: Option<Vec<String>>,
    #[serde(default)]
    callback_number: Option<RawCallbackNumber>,
    #[serde(default)]
    callback_hours: Option<centralino_flows::def::RawCalendar>,
    #[serde(default = "default_callback_attempts")]
    callback_max_attempts: u32,
    #[serde(default = "default_callback_retry")]
    callback_retry_seconds: u64,
    #[serde(default)]
    callback_retries: BTreeMap<String, RawRetry>,
    #[serde(default)]
    callback_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallbackNumber {
    #[serde(default)]
    read_prompts: Vec<String>,
    #[serde(default)]
    confirm_prompts: Vec<String>,
    #[serde(default)]
    enter_prompts: Vec<String>,
    #[serde(default = "default_number_timeout")]
    timeout_seconds: u64,
}

fn default_number_timeout() -> u64 {
    10
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

fn default_callback_attempts() -> u32 {
    3
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    delay_seconds: u64,
}

fn default_callback_retry() -> u64 {
    300
}

fn default_retry() -> u64 {
    5
}

fn default_ring_all_width() -> u8 {
    3
}
fn default_weight() -> f64 {
    1.0
}
fn default_priority_step() -> u64 {
    60
}

fn default_strategy() -> String {
    "longest_idle".into()
}
fn default_ring() -> u64 {
    15
}
fn default_no_answer() -> u32 {
    3
}
fn default_max_wait() -> u64 {
    300
}
fn default_max_waiting() -> usize {
    1000
}
fn default_exit() -> u16 {
    480
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    username: String,
    tenant: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ha1_md5: Option<String>,
    #[serde(default)]
    ha1_sha256: Option<String>,
    #[serde(default)]
    queues: Vec<String>,
    #[serde(default = "default_site")]
    site: String,
    #[serde(default)]
    skills: BTreeMap<String, u8>,
    #[serde(default)]
    languages: Vec<String>,
}

fn default_site() -> String {
    "default".into()
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
    /// Tenant index.
    pub tenant: usize,
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
    /// Tenant index.
    pub tenant: usize,
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
}

/// A guided conversation for operators: questions with branches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Name (queues refer to it).
    pub name: String,
    /// First question id.
    pub start: String,
    /// Questions by id.
    pub questions: BTreeMap<String, Question>,
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
    /// Tenant index.
    pub tenant: usize,
    /// Digest secrets.
    pub credentials: Credentials,
    /// Queue indices served.
    pub queues: Vec<usize>,
    /// Skills, languages, site: what requirements are matched against.
    pub attributes: Attributes,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// SIP.
    pub sip: SipConfig,
    /// HTTP listen address (metrics, health).
    pub http_listen: SocketAddr,
    /// HTTP connection timeouts and cap.
    pub http_limits: HttpLimits,
    /// Show full numbers in logs (off by default).
    pub unmask_numbers: bool,
    /// Registrar.
    pub registrar: RegistrarConfig,
    /// Nonce lifetime.
    pub nonce_lifetime: Duration,
    /// Operators start paused after login.
    pub login_paused: bool,
    /// OPTIONS to each idle operator's phone this often; one that does not
    /// answer is logged out (`None`: off).
    pub qualify: Option<Duration>,
    /// Media plane.
    pub media: MediaConfig,
    /// IVR flows, checked.
    pub flows: Vec<std::sync::Arc<centralino_flows::Flow>>,
    /// Operator scripts, checked.
    pub scripts: Vec<Script>,
    /// HTTP API bearer tokens.
    pub api_tokens: Vec<ApiToken>,
    /// Operators' desk logins (`POST /api/v1/login`).
    pub api_sessions: ApiSessions,
    /// Rate limits on callback requests through the API.
    pub callback_limits: CallbackLimits,
    /// Numbers in call records and finished callbacks are masked after
    /// this many days.
    pub retention_days: u32,
    /// The key of the audit chain (at least 32 secret bytes); `None`: the
    /// node's own `audit.key` in its data directory, created at first start.
    pub audit_key_file: Option<PathBuf>,
    /// The SMS hook, if configured.
    pub notifications: Option<Notifications>,
    /// Tenant names.
    pub tenants: Vec<String>,
    /// Each tenant's outbound dial plan (by tenant index): every number
    /// that leaves through one of its trunks passes it.
    pub dial_plans: Vec<DialPlan>,
    /// Trunks.
    pub trunks: Vec<Trunk>,
    /// Queues.
    pub queues: Vec<Queue>,
    /// Operators.
    pub agents: Vec<Agent>,
    /// Skill, language, site, tenant and queue names (for expressions
    /// given at run time, e.g. by the API).
    pub catalog: Catalog,
    /// The document it was read from (flow files under `flow_files`):
    /// [`reload::changed_keys`] compares two of them.
    pub source: toml::Table,
}

impl Config {
    /// Where the prompt `name` is found: `media.prompts_dir` first, then
    /// `media.sounds_dir` (`None` when neither has `name.wav`).
    pub fn find_prompt(&self, name: &str) -> Option<PathBuf> {
        [&self.media.prompts_dir, &self.media.sounds_dir]
            .into_iter()
            .flatten()
            .map(|d| d.join(format!("{name}.wav")))
            .find(|p| p.is_file())
    }

    /// Every prompt the IVR flows and the queues' virtual hold play, with
    /// the key path that names it.
    pub fn flow_prompts(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            for p in q
                .callback_offer_prompts
                .iter()
                .chain(&q.callback_confirm_prompts)
                .chain(&q.whisper)
                .chain(q.callback_whisper.iter().flatten())
                .chain(q.callback_number.iter().flat_map(|n| {
                    n.read_prompts
                        .iter()
                        .chain(&n.confirm_prompts)
                        .chain(&n.enter_prompts)
                }))
            {
                out.push((format!("queues[{i}]"), p.clone()));
            }
        }
        for (i, f) in self.flows.iter().enumerate() {
            for (k, node) in f.nodes.iter().enumerate() {
                for p in node.prompts() {
                    out.push((format!("flows[{i}].nodes.{}", f.names[k]), p.clone()));
                }
            }
        }
        out
    }

    /// The operators as the router takes them.
    pub fn routing_agents(&self) -> Vec<(String, Attributes)> {
        self.agents
            .iter()
            .map(|a| (a.username.clone(), a.attributes.clone()))
            .collect()
    }

    /// The queues as the router takes them.
    pub fn routing_queues(&self) -> Vec<QueueSettings> {
        self.queues.iter().map(|q| q.routing.clone()).collect()
    }
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// The TLS listener's settings: all of them with `tls` in `transports`,
/// none without. The files must be readable now, so a typo fails
/// `check-config` and the start, not the first carrier's handshake.
fn sip_tls(p: &mut Problems, raw: &RawSip, wanted: bool) -> Option<SipTls> {
    if !wanted {
        for (key, set) in [
            ("sip.tls_listen", !raw.tls_listen.is_empty()),
            ("sip.tls_cert_file", raw.tls_cert_file.is_some()),
            ("sip.tls_key_file", raw.tls_key_file.is_some()),
        ] {
            if set {
                p.add(key, "only with \"tls\" in sip.transports");
            }
        }
        return None;
    }
    let mut listen = Vec::new();
    if raw.tls_listen.is_empty() {
        p.add("sip.tls_listen", "needs at least one address for tls");
    }
    for (i, a) in raw.tls_listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => p.add(
                format!("sip.tls_listen[{i}]"),
                format!("not an ADDR:PORT: {a:?}"),
            ),
        }
    }
    let cert = readable_file(p, "sip.tls_cert_file", raw.tls_cert_file.as_deref(), true);
    let key = readable_file(p, "sip.tls_key_file", raw.tls_key_file.as_deref(), true);
    Some(SipTls {
        listen,
        cert_file: cert?,
        key_file: key?,
    })
}

/// A trunk's mTLS identity: a CA and the names its certificate may carry,
/// both or neither, and only where a TLS listener can receive it.
fn trunk_client_cert(
    p: &mut Problems,
    path: &str,
    t: &RawTrunk,
    listener: bool,
) -> Option<TrunkClientCert> {
    if t.tls_client_ca_file.is_none() && t.tls_peer_names.is_empty() {
        return None;
    }
    if !listener {
        p.add(
            format!("{path}.tls_peer_names"),
            "needs the TLS listener (\"tls\" in sip.transports)",
        );
    }
    if t.tls_peer_names.is_empty() {
        p.add(
            format!("{path}.tls_peer_names"),
            "needs at least one name with tls_client_ca_file",
        );
    }
    for (i, n) in t.tls_peer_names.iter().enumerate() {
        let valid = !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            p.add(
                format!("{path}.tls_peer_names[{i}]"),
                format!("not a DNS name: {n:?}"),
            );
        }
    }
    let ca = readable_file(
        p,
        &format!("{path}.tls_client_ca_file"),
        t.tls_client_ca_file.as_deref(),
        true,
    )?;
    Some(TrunkClientCert {
        ca_file: ca,
        peer_names: t
            .tls_peer_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
    })
}

/// How a trunk's outbound side is reached: UDP (the default) or TLS with
/// the name its certificate must carry. TLS needs our TLS listener: its
/// address is our Via and Contact, where the carrier reaches us back.
fn trunk_outbound_tls(
    p: &mut Problems,
    path: &str,
    t: &RawTrunk,
    listener: bool,
) -> Option<OutboundTls> {
    let tls = match t.outbound_transport.as_deref() {
        None | Some("udp") => false,
        Some("tls") => true,
        Some(other) => {
            p.add(
                format!("{path}.outbound_transport"),
                format!("unknown transport {other:?} (udp, tls)"),
            );
            return None;
        }
    };
    if !tls {
        for (key, set) in [
            ("outbound_tls_name", t.outbound_tls_name.is_some()),
            ("outbound_tls_ca_file", t.outbound_tls_ca_file.is_some()),
            ("outbound_tls_cert_file", t.outbound_tls_cert_file.is_some()),
            ("outbound_tls_key_file", t.outbound_tls_key_file.is_some()),
        ] {
            if set {
                p.add(
                    format!("{path}.{key}"),
                    "only with outbound_transport = \"tls\"",
                );
            }
        }
        return None;
    }
    if t.outbound.is_none() {
        p.add(
            format!("{path}.outbound_transport"),
            "only for a trunk with outbound",
        );
    }
    if !listener {
        p.add(
            format!("{path}.outbound_transport"),
            "needs the TLS listener (\"tls\" in sip.transports): the carrier answers there",
        );
    }
    let name = match t.outbound_tls_name.as_deref() {
        Some(n)
            if !n.is_empty()
                && n.len() <= 253
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)) =>
        {
            Some(n.to_ascii_lowercase())
        }
        Some(n) => {
            p.add(
                format!("{path}.outbound_tls_name"),
                format!("not a DNS name or IP address: {n:?}"),
            );
            None
        }
        None => {
            p.add(
                format!("{path}.outbound_tls_name"),
                "required with outbound_transport = \"tls\" (the name its certificate carries)",
            );
            None
        }
    };
    let ca = readable_file(
        p,
        &format!("{path}.outbound_tls_ca_file"),
        t.outbound_tls_ca_file.as_deref(),
        false,
    );
    let both = t.outbound_tls_cert_file.is_some() || t.outbound_tls_key_file.is_some();
    let cert = readable_file(
        p,
        &format!("{path}.outbound_tls_cert_file"),
        t.outbound_tls_cert_file.as_deref(),
        both,
    );
    let key = readable_file(
        p,
        &format!("{path}.outbound_tls_key_file"),
        t.outbound_tls_key_file.as_deref(),
        both,
    );
    Some(OutboundTls {
        name: name?,
        ca_file: ca,
        client_cert: cert.zip(key),
    })
}

/// A file named at `path` (required or not) that can be opened for
/// reading; a problem otherwise. Only the name is reported, never content.
fn readable_file(
    p: &mut Problems,
    path: &str,
    file: Option<&str>,
    required: bool,
) -> Option<PathBuf> {
    let Some(file) = file else {
        if required {
            p.add(path, "required");
        }
        return None;
    };
    match std::fs::File::open(file) {
        Ok(_) => Some(PathBuf::from(file)),
        Err(e) => {
            p.add(path, format!("cannot read {file:?}: {e}"));
            None
        }
    }
}

/// A list of digest algorithm tokens, each known one once.
fn digest_algorithms(p: &mut Problems, path: &str, list: &[String]) -> Vec<Algorithm> {
    let mut algs = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let alg = match a.as_str() {
            "SHA-256" => Algorithm::Sha256,
            "MD5" => Algorithm::Md5,
            other => {
                p.add(
                    format!("{path}[{i}]"),
                    format!("unknown algorithm {other:?} (SHA-256, MD5)"),
                );
                continue;
            }
        };
        if algs.contains(&alg) {
            p.add(format!("{path}[{i}]"), format!("{a} listed twice"));
        } else {
            algs.push(alg);
        }
    }
    algs
}

fn nonzero(p: &mut Problems, path: &str, v: u64) {
    if v == 0 {
        p.add(path, "must be greater than 0");
    }
}

fn hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::from_toml(DEFAULT_TOML)
    }

    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with_flows(text, &[])
    }

    /// The `flows_dir` a configuration names (relative to its own file),
    /// for the caller to read: the configuration crate does no I/O.
    pub fn flows_dir(text: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Only {
            flows_dir: Option<String>,
        }
        nesting_within(text, "").ok()?;
        let t: toml::Table = toml::from_str(text).ok()?;
        let only: Only = toml::Table::try_into(
            t.into_iter()
                .filter(|(k, _)| k == "flows_dir")
                .collect::<toml::Table>(),
        )
        .ok()?;
        only.flows_dir
    }

    /// Parses a configuration plus flows kept one per file (`(name,
    /// text)` pairs, e.g. `config/flows/*.toml`); a file's problems carry
    /// its name in their key path.
    pub fn from_toml_with_flows(
        text: &str,
        flow_files: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        nesting_within(text, "")?;
        for (name, body) in flow_files {
            nesting_within(body, name)?;
        }
        let mut raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        // The document as written, for a reload to tell what changed.
        let mut source: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut files = toml::Table::new();
        for (name, body) in flow_files {
            let flow: centralino_flows::RawFlow =
                toml::from_str(body).map_err(|e| ConfigError::Syntax(format!("{name}: {e}")))?;
            raw.flows.push(flow);
            raw.flow_files.push(name.clone());
            if let Ok(t) = toml::from_str::<toml::Table>(body) {
                files.insert(name.clone(), toml::Value::Table(t));
            }
        }
        if !files.is_empty() {
            source.insert("flow_files".into(), toml::Value::Table(files));
        }
        let mut config = Self::validate(raw)?;
        config.source = source;
        Ok(config)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut p = Problems(Vec::new());
        let mut listen = Vec::new();
        if raw.sip.listen.is_empty() {
            p.add("sip.listen", "needs at least one address");
        }
        for (i, a) in raw.sip.listen.iter().enumerate() {
            match a.parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => p.add(
                    format!("sip.listen[{i}]"),
                    format!("not an ADDR:PORT: {a:?}"),
                ),
            }
        }
        let mut transports = Vec::new();
        for (i, t) in raw.sip.transports.iter().enumerate() {
            match t.as_str() {
                "udp" => transports.push(ListenTransport::Udp),
                "tcp" => transports.push(ListenTransport::Tcp),
                "tls" => transports.push(ListenTransport::Tls),
                other => p.add(
                    format!("sip.transports[{i}]"),
                    format!("unknown transport {other:?} (udp, tcp, tls)"),
                ),
            }
        }
        if transports.is_empty() {
            p.add("sip.transports", "needs at least one of udp, tcp, tls");
        }
        let sip_tls = sip_tls(&mut p, &raw.sip, transports.contains(&ListenTransport::Tls));
        if raw.sip.realm.is_empty() || raw.sip.realm.contains(['"', '\\', '\r', '\n']) {
            p.add(
                "sip.realm",
                "must be non-empty, without quotes or line breaks",
            );
        }
        let algs = digest_algorithms(&mut p, "sip.digest_algorithms", &raw.sip.digest_algorithms);
        if algs.is_empty() {
            p.add("sip.digest_algorithms", "needs at least one algorithm");
        }
        for (i, ua) in raw.sip.digest_md5_user_agents.iter().enumerate() {
            if ua.is_empty()
                || ua.len() > 64
                || !ua.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            {
                p.add(
                    format!("sip.digest_md5_user_agents[{i}]"),
                    "must be 1-64 printable ASCII characters (a User-Agent prefix)",
                );
            }
        }
        nonzero(&mut p, "sip.t1_milliseconds", raw.sip.t1_milliseconds);
        if raw.sip.t2_milliseconds < raw.sip.t1_milliseconds {
            p.add("sip.t2_milliseconds", "must be at least t1_milliseconds");
        }
        nonzero(&mut p, "sip.t4_milliseconds", raw.sip.t4_milliseconds);
        if !(1024..=65_535).contains(&raw.sip.max_message_bytes) {
            p.add("sip.max_message_bytes", "must be in 1024..=65535");
        }
        if !(16..=1024).contains(&raw.sip.max_headers) {
            p.add("sip.max_headers", "must be in 16..=1024");
        }
        if !(256..=65_535).contains(&raw.sip.max_header_line_bytes) {
            p.add("sip.max_header_line_bytes", "must be in 256..=65535");
        }
        if raw.sip.max_body_bytes > raw.sip.max_message_bytes {
            p.add("sip.max_body_bytes", "must not exceed max_message_bytes");
        }
        nonzero(&mut p, "sip.max_calls", raw.sip.max_calls as u64);
        nonzero(
            &mut p,
            "sip.max_tcp_connections",
            raw.sip.max_tcp_connections as u64,
        );
        nonzero(
            &mut p,
            "sip.max_transactions_per_source",
            raw.sip.max_transactions_per_source as u64,
        );
        nonzero(
            &mut p,
            "sip.tcp_idle_timeout_seconds",
            raw.sip.tcp_idle_timeout_seconds,
        );
        if raw.sip.drain_seconds > 3600 {
            p.add("sip.drain_seconds", "must be in 0..=3600");
        }
        if raw.sip.user_agent.chars().any(char::is_control) {
            p.add("sip.user_agent", "must not contain control characters");
        }
        let http_listen = raw.http.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            p.add(
                "http.listen",
                format!("not an ADDR:PORT: {:?}", raw.http.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        if !(1..=300).contains(&raw.http.header_timeout_seconds) {
            p.add("http.header_timeout_seconds", "must be in 1..=300");
        }
        if !(1..=3600).contains(&raw.http.idle_timeout_seconds) {
            p.add("http.idle_timeout_seconds", "must be in 1..=3600");
        }
        if !(1..=100_000).contains(&raw.http.max_connections) {
            p.add("http.max_connections", "must be in 1..=100000");
        }

        let r = &raw.registrar;
        nonzero(
            &mut p,
            "registrar.min_expires_seconds",
            r.min_expires_seconds,
        );
        if r.qualify_seconds != 0 && !(5..=3600).contains(&r.qualify_seconds) {
            p.add(
                "registrar.qualify_seconds",
                "must be 0 (off) or in 5..=3600",
            );
        }
        if !(1..=86_400).contains(&r.ban_seconds) {
            p.add("registrar.ban_seconds", "must be in 1..=86400");
        }
        if r.max_expires_seconds < r.min_expires_seconds {
            p.add(
                "registrar.max_expires_seconds",
                "must be at least min_expires_seconds",
            );
        }
        if !(r.min_expires_seconds..=r.max_expires_seconds).contains(&r.default_expires_seconds) {
            p.add(
                "registrar.default_expires_seconds",
                "must be between min_expires_seconds and max_expires_seconds",
            );
        }
        nonzero(&mut p, "registrar.max_contacts", r.max_contacts as u64);
        nonzero(
            &mut p,
            "registrar.nonce_lifetime_seconds",
            r.nonce_lifetime_seconds,
        );
        let login_paused = match r.state_after_login.as_str() {
            "available" => false,
            "paused" => true,
            other => {
                p.add(
                    "registrar.state_after_login",
                    format!("unknown state {other:?} (available, paused)"),
                );
                false
            }
        };

        let mut tenants = Vec::new();
        let mut dial_plans = Vec::new();
        let mut tenant_algs = Vec::new();
        for (i, t) in raw.tenants.iter().enumerate() {
            tenant_algs.push(match &t.digest_algorithms {
                None => algs.clone(),
                Some(list) => {
                    let path = format!("tenants[{i}].digest_algorithms");
                    let mine = digest_algorithms(&mut p, &path, list);
                    let usable: Vec<Algorithm> =
                        algs.iter().copied().filter(|a| mine.contains(a)).collect();
                    if usable.is_empty() {
                        p.add(path, "none of them is in sip.digest_algorithms");
                    }
                    usable
                }
            });
            if !valid_name(&t.name) {
                p.add(
                    format!("tenants[{i}].name"),
                    "must be 1-64 of [A-Za-z0-9_-]",
                );
            }
            if tenants.contains(&t.name) {
                p.add(
                    format!("tenants[{i}].name"),
                    format!("duplicate tenant {:?}", t.name),
                );
            }
            tenants.push(t.name.clone());
            dial_plans.push(validate_dial_plan(
                &mut p,
                &format!("tenants[{i}].dial_plan"),
                t.dial_plan.as_ref(),
            ));
        }
        let tenant_of = |p: &mut Problems, path: String, name: &str| -> usize {
            tenants.iter().position(|t| t == name).unwrap_or_else(|| {
                p.add(path, format!("unknown tenant {name:?}"));
                0
            })
        };

        // Names first: requirement expressions are resolved against every
        // skill, language and site some operator has, so a typo is an error
        // here rather than a queue that waits for nobody.
        let mut catalog = Catalog::default();
        for t in &tenants {
            let _ = catalog.tenant(t);
        }
        let queue_names: Vec<String> = raw.queues.iter().map(|q| q.name.clone()).collect();
        for q in &queue_names {
            let _ = catalog.queue(q);
        }
        for (i, a) in raw.agents.iter().enumerate() {
            let path = format!("agents[{i}]");
            if !valid_name(&a.site) {
                p.add(format!("{path}.site"), "must be 1-64 of [A-Za-z0-9_-]");
            } else if catalog.site(&a.site).is_err() {
                p.add(format!("{path}.site"), "too many sites");
            }
            for (skill, level) in &a.skills {
                if !valid_name(skill) || is_keyword(skill) {
                    p.add(
                        format!("{path}.skills.{skill}"),
                        "a skill name is 1-64 of [A-Za-z0-9_-] and not lang, site, tenant, queue or true",
                    );
                } else if catalog.skill(skill).is_err() {
                    p.add(format!("{path}.skills.{skill}"), "too many skills");
                }
                if !(1..=10).contains(level) {
                    p.add(format!("{path}.skills.{skill}"), "level must be in 1..=10");
                }
            }
            for (j, l) in a.languages.iter().enumerate() {
                if !valid_name(l) {
                    p.add(
                        format!("{path}.languages[{j}]"),
                        "must be 1-64 of [A-Za-z0-9_-]",
                    );
                } else if let Err(e) = catalog.language(l) {
                    p.add(format!("{path}.languages[{j}]"), e.to_string());
                }
            }
        }
        let parse_req = |p: &mut Problems, path: String, text: &str| -> Option<Requirement> {
            match Requirement::parse(text, &catalog) {
                Ok(r) => Some(r),
                Err(e) => {
                    p.add(path, e.to_string());
                    None
                }
            }
        };

        let mut queues = Vec::new();
        let mut scripts: Vec<Script> = Vec::new();
        for (i, sc) in raw.scripts.iter().enumerate() {
            let path = format!("scripts[{i}]");
            if !valid_name(&sc.name) {
                p.add(format!("{path}.name"), "letters, digits, - and _ (1 to 64)");
            }
            if scripts.iter().any(|o| o.name == sc.name) {
                p.add(
                    format!("{path}.name"),
                    format!("duplicate script {:?}", sc.name),
                );
            }
            if sc.questions.len() > 200 {
                p.add(format!("{path}.questions"), "at most 200 questions");
            }
            if !sc.questions.contains_key(&sc.start) {
                p.add(
                    format!("{path}.start"),
                    format!("unknown question {:?}", sc.start),
                );
            }
            let mut questions = BTreeMap::new();
            for (id, q) in &sc.questions {
                let qp = format!("{path}.questions.{id}");
                if id == "end" || !valid_name(id) {
                    p.add(qp.clone(), "a question id is a name other than \"end\"");
                }
                if q.text.trim().is_empty() || q.text.len() > 500 {
                    p.add(format!("{qp}.text"), "1 to 500 characters");
                }
                let target_ok = |t: &str| t == "end" || sc.questions.contains_key(t);
                let kind = match q.kind.as_deref() {
                    None if !q.answers.is_empty() => QuestionKind::Choice,
                    Some("choice") => QuestionKind::Choice,
                    None | Some("text") => QuestionKind::Text,
                    Some("date") => QuestionKind::Date,
                    Some(k) => {
                        p.add(
                            format!("{qp}.kind"),
                            format!("unknown kind {k:?} (choice, text, date)"),
                        );
                        QuestionKind::Text
                    }
                };
                if kind == QuestionKind::Choice {
                    if q.answers.is_empty() {
                        p.add(
                            format!("{qp}.answers"),
                            "a choice needs at least one answer",
                        );
                    }
                    for (a, t) in &q.answers {
                        if !target_ok(t) {
                            p.add(
                                format!("{qp}.answers.{a:?}"),
                                format!("unknown question {t:?}"),
                            );
                        }
                    }
                } else if let Some(t) = &q.next
                    && !target_ok(t)
                {
                    p.add(format!("{qp}.next"), format!("unknown question {t:?}"));
                }
                questions.insert(
                    id.clone(),
                    Question {
                        text: q.text.clone(),
                        kind,
                        answers: q.answers.clone(),
                        next: q.next.clone().unwrap_or_else(|| "end".into()),
                    },
                );
            }
            // A script must end: no question may lead back to itself.
            let nexts = |q: &Question| -> Vec<String> {
                if q.kind == QuestionKind::Choice {
                    q.answers.values().cloned().collect()
                } else {
                    vec![q.next.clone()]
                }
            };
            for start in questions.keys() {
                let mut seen = HashSet::new();
                let mut stack = vec![start.clone()];
                let mut looped = false;
                while let Some(id) = stack.pop() {
                    let Some(q) = questions.get(&id) else {
                        continue;
                    };
                    for n in nexts(q) {
                        if &n == start {
                            looped = true;
                        }
                        if seen.insert(n.clone()) {
                            stack.push(n);
                        }
                    }
                }
                if looped {
                    p.add(
                        format!("{path}.questions.{start}"),
                        "the script loops back to this question",
                    );
                    break;
                }
            }
            scripts.push(Script {
                name: sc.name.clone(),
                start: sc.start.clone(),
                questions,
            });
        }
        for (i, q) in raw.queues.iter().enumerate() {
            let path = format!("queues[{i}]");
            if !valid_name(&q.name) {
                p.add(format!("{path}.name"), "must be 1-64 of [A-Za-z0-9_-]");
            }
            if queue_names[..i].contains(&q.name) {
                p.add(
                    format!("{path}.name"),
                    format!("duplicate queue {:?}", q.name),
                );
            }
            let tenant = tenant_of(&mut p, format!("{path}.tenant"), &q.tenant);
            if q.strategy == "ring_all" && !(1..=16).contains(&q.ring_all_width) {
                p.add(format!("{path}.ring_all_width"), "must be in 1..=16");
            }
            let strategy =
                Strategy::from_name(&q.strategy, q.ring_all_width).unwrap_or_else(|| {
                    p.add(
                        format!("{path}.strategy"),
                        format!("unknown strategy {:?} ({})", q.strategy, Strategy::NAMES),
                    );
                    Strategy::LongestIdle
                });
            nonzero(
                &mut p,
                &format!("{path}.ring_timeout_seconds"),
                q.ring_timeout_seconds,
            );
            nonzero(
                &mut p,
                &format!("{path}.max_no_answer"),
                u64::from(q.max_no_answer),
            );
            nonzero(
                &mut p,
                &format!("{path}.max_wait_seconds"),
                q.max_wait_seconds,
            );
            nonzero(&mut p, &format!("{path}.max_waiting"), q.max_waiting as u64);
            if !(400..=699).contains(&q.exit_status) {
                p.add(
                    format!("{path}.exit_status"),
                    "must be a final error status in 400..=699",
                );
            }
            if !(q.weight.is_finite() && (0.01..=100.0).contains(&q.weight)) {
                p.add(format!("{path}.weight"), "must be in 0.01..=100");
            }
            if !(1..=3600).contains(&q.retry_seconds) {
                p.add(format!("{path}.retry_seconds"), "must be in 1..=3600");
            }
            if q.priority_step_seconds > 86_400 {
                p.add(
                    format!("{path}.priority_step_seconds"),
                    "must be at most 86400",
                );
            }
            if let Some(f) = q.fragile_max_wait_seconds
                && f <= q.ring_timeout_seconds
            {
                p.add(
                    format!("{path}.fragile_max_wait_seconds"),
                    "must exceed ring_timeout_seconds (fragile calls escalate one ring timeout before it)",
                );
            }
            let requirement = match &q.requirements {
                Some(text) => parse_req(&mut p, format!("{path}.requirements"), text)
                    .unwrap_or_else(Requirement::any),
                None => Requirement::member_of(i as u32, &q.name),
            };
            let mut rings = Vec::new();
            let mut last_after = 0;
            for (j, r) in q.overflow.iter().enumerate() {
                let rp = format!("{path}.overflow[{j}]");
                if r.after_seconds <= last_after {
                    p.add(
                        format!("{rp}.after_seconds"),
                        "must be greater than 0 and than the previous ring's",
                    );
                }
                last_after = r.after_seconds;
                let requirement = parse_req(&mut p, format!("{rp}.requirements"), &r.requirements)
                    .unwrap_or_else(Requirement::any);
                let mut ring_tenants = Vec::new();
                for (k, t) in r.tenants.iter().enumerate() {
                    ring_tenants.push(tenant_of(&mut p, format!("{rp}.tenants[{k}]"), t) as u16);
                }
                rings.push(Ring {
                    after: Duration::from_secs(r.after_seconds),
                    requirement,
                    tenants: ring_tenants,
                });
            }
            if q.overflow.len() > 8 {
                p.add(format!("{path}.overflow"), "at most 8 rings");
            }
            if !(1..=20).contains(&q.callback_max_attempts) {
                p.add(format!("{path}.callback_max_attempts"), "must be in 1..=20");
            }
            if !(10..=86_400).contains(&q.callback_retry_seconds) {
                p.add(
                    format!("{path}.callback_retry_seconds"),
                    "must be in 10..=86400",
                );
            }
            let none = Vec::new();
            let number = q.callback_number.as_ref();
            if let Some(n) = number {
                if !(1..=60).contains(&n.timeout_seconds) {
                    p.add(
                        format!("{path}.callback_number.timeout_seconds"),
                        "must be in 1..=60",
                    );
                }
                if q.callback_key.is_none() {
                    p.add(
                        format!("{path}.callback_number"),
                        "needs callback_key (the key that asks for a callback)",
                    );
                }
            }
            for (key, list) in [
                ("callback_offer_prompts", &q.callback_offer_prompts),
                ("callback_confirm_prompts", &q.callback_confirm_prompts),
                ("whisper", &q.whisper),
                (
                    "callback_whisper",
                    q.callback_whisper.as_ref().unwrap_or(&none),
                ),
                (
                    "callback_number.read_prompts",
                    number.map_or(&none, |n| &n.read_prompts),
                ),
                (
                    "callback_number.confirm_prompts",
                    number.map_or(&none, |n| &n.confirm_prompts),
                ),
                (
                    "callback_number.enter_prompts",
                    number.map_or(&none, |n| &n.enter_prompts),
                ),
            ] {
                if list.len() > 32 {
                    p.add(format!("{path}.{key}"), "at most 32 prompts");
                }
                for (i, name) in list.iter().enumerate() {
                    if !centralino_flows::def::prompt_name_ok(name) {
                        p.add(
                            format!("{path}.{key}[{i}]"),
                            format!(
                                "not a prompt name: {name:?} (letters, digits, - _ . /, relative)"
                            ),
                        );
                    }
                }
            }
            if q.announce_seconds > 0 && q.announce_seconds < 10 {
                p.add(
                    format!("{path}.announce_seconds"),
                    "must be 0 (off) or at least 10",
                );
            }
            queues.push(Queue {
                tenant,
                exit_status: q.exit_status,
                announce_every: (q.announce_seconds > 0)
                    .then(|| Duration::from_secs(q.announce_seconds)),
                music_on_hold: q.music_on_hold.as_ref().map(PathBuf::from),
                record: q.record,
                script: q.script.as_ref().and_then(|name| {
                    let found = scripts.iter().position(|s| &s.name == name);
                    if found.is_none() {
                        p.add(format!("{path}.script"), format!("unknown script {name:?}"));
                    }
                    found
                }),
                callback_key: match q.callback_key.as_deref() {
                    None => None,
                    Some(k) => {
                        let mut c = k.chars();
                        match (c.next(), c.next()) {
                            (Some(d @ ('0'..='9' | '*' | '#')), None) => Some(d),
                            _ => {
                                p.add(format!("{path}.callback_key"), "one of 0-9, *, #");
                                None
                            }
                        }
                    }
                },
                callback_offer_prompts: q.callback_offer_prompts.clone(),
                callback_confirm_prompts: q.callback_confirm_prompts.clone(),
                whisper: q.whisper.clone(),
                callback_whisper: q.callback_whisper.clone(),
                callback_number: q.callback_number.as_ref().map(|n| CallbackNumber {
                    read_prompts: n.read_prompts.clone(),
                    confirm_prompts: n.confirm_prompts.clone(),
                    enter_prompts: n.enter_prompts.clone(),
                    timeout: Duration::from_secs(n.timeout_seconds),
                }),
                callback_hours: q.callback_hours.as_ref().map(|c| {
                    let mut problems = Vec::new();
                    let cal = centralino_flows::def::calendar(&path, c, &mut problems);
                    for (k, m) in problems {
                        p.add(k.replace(".calendar.", ".callback_hours."), m);
                    }
                    cal
                }),
                callback_max_attempts: q.callback_max_attempts,
                callback_retry: Duration::from_secs(q.callback_retry_seconds),
                callback_customer_first: match q.callback_mode.as_deref() {
                    None | Some("agent_first") => false,
                    Some("customer_first") => true,
                    Some(other) => {
                        p.add(
                            format!("{path}.callback_mode"),
                            format!("unknown mode {other:?} (agent_first, customer_first)"),
                        );
                        false
                    }
                },
                callback_retries: q
                    .callback_retries
                    .iter()
                    .filter_map(|(outcome, r)| {
                        let rp = format!("{path}.callback_retries.{outcome}");
                        if !["busy", "no_answer", "failed", "no_operator"]
                            .contains(&outcome.as_str())
                        {
                            p.add(rp, "one of busy, no_answer, failed, no_operator");
                            return None;
                        }
                        if !(1..=20).contains(&r.attempts)
                            || !(10..=86_400).contains(&r.delay_seconds)
                        {
                            p.add(rp, "attempts in 1..=20, delay_seconds in 10..=86400");
                            return None;
                        }
                        Some((
                            outcome.clone(),
                            r.attempts,
                            Duration::from_secs(r.delay_seconds),
                        ))
                    })
                    .collect(),
                routing: QueueSettings {
                    name: q.name.clone(),
                    tenant: tenant as u16,
                    strategy,
                    requirement,
                    rings,
                    ring_timeout: Duration::from_secs(q.ring_timeout_seconds),
                    max_no_answer: q.max_no_answer,
                    max_wait: Duration::from_secs(q.max_wait_seconds),
                    wrap_up: Duration::from_secs(q.wrap_up_seconds),
                    max_waiting: q.max_waiting,
                    weight: q.weight,
                    priority_step: Duration::from_secs(q.priority_step_seconds),
                    fragile_max_wait: q.fragile_max_wait_seconds.map(Duration::from_secs),
                    retry: Duration::from_secs(q.retry_seconds),
                },
            });
        }

        let mut trunks = Vec::new();
        let mut flows = Vec::new();
        let mut flow_names: Vec<String> = Vec::new();
        let inline = raw.flows.len() - raw.flow_files.len();
        for (i, f) in raw.flows.iter().enumerate() {
            let path = match i.checked_sub(inline) {
                Some(k) => raw.flow_files[k].clone(),
                None => format!("flows[{i}]"),
            };
            if !valid_name(&f.name) {
                p.add(format!("{path}.name"), "letters, digits, - and _ (1 to 64)");
            }
            if flow_names.contains(&f.name) {
                p.add(
                    format!("{path}.name"),
                    format!("duplicate flow {:?}", f.name),
                );
            }
            flow_names.push(f.name.clone());
            let ctx = centralino_flows::Context {
                catalog: &catalog,
                queues: &queue_names,
            };
            match centralino_flows::compile(&path, f, &ctx) {
                Ok(flow) => flows.push(std::sync::Arc::new(flow)),
                Err(problems) => {
                    for (k, m) in problems {
                        p.add(k, m);
                    }
                }
            }
        }
        for (i, t) in raw.trunks.iter().enumerate() {
            let path = format!("trunks[{i}]");
            if !valid_name(&t.name) {
                p.add(format!("{path}.name"), "must be 1-64 of [A-Za-z0-9_-]");
            }
            let tenant = tenant_of(&mut p, format!("{path}.tenant"), &t.tenant);
            let mut peers = Vec::new();
            for (j, a) in t.peers.iter().enumerate() {
                match a.parse::<IpAddr>() {
                    Ok(ip) => peers.push(ip),
                    Err(_) => p.add(
                        format!("{path}.peers[{j}]"),
                        format!("not an IP address: {a:?}"),
                    ),
                }
            }
            if peers.is_empty() {
                p.add(format!("{path}.peers"), "needs at least one address");
            }
            let mut dids = HashMap::new();
            for (did, target) in &t.dids {
                let dp = format!("{path}.dids.{did:?}");
                if did.is_empty() || !did.bytes().all(|b| b.is_ascii_digit() || b == b'+') {
                    p.add(dp.clone(), "a DID is digits, optionally with a leading +");
                }
                let (queue, spec) = match target {
                    RawDid::Queue(q) => (Some(q), CallSpec::default()),
                    RawDid::Full(f) => {
                        if !(-100..=100).contains(&f.priority) {
                            p.add(format!("{dp}.priority"), "must be in -100..=100");
                        }
                        let requirement = f
                            .requirements
                            .as_ref()
                            .and_then(|r| parse_req(&mut p, format!("{dp}.requirements"), r));
                        match (&f.queue, &f.flow) {
                            (Some(_), Some(_)) | (None, None) => {
                                p.add(dp.clone(), "needs exactly one of queue, flow");
                            }
                            (None, Some(name)) => {
                                match flow_names.iter().position(|n| n == name) {
                                    Some(fi) => {
                                        dids.insert(
                                            did.clone(),
                                            Did {
                                                target: DidTarget::Flow(fi),
                                                spec: CallSpec {
                                                    priority: f.priority,
                                                    requirement: requirement.clone(),
                                                    fragile: f.fragile,
                                                    waited: Duration::ZERO,
                                                },
                                            },
                                        );
                                    }
                                    None => p.add(
                                        format!("{dp}.flow"),
                                        format!("unknown flow {name:?}"),
                                    ),
                                }
                                continue;
                            }
                            (Some(_), None) => {}
                        }
                        (
                            f.queue.as_ref(),
                            CallSpec {
                                priority: f.priority,
                                requirement,
                                fragile: f.fragile,
                                waited: Duration::ZERO,
                            },
                        )
                    }
                };
                let Some(queue) = queue else { continue };
                match queue_names.iter().position(|q| q == queue) {
                    Some(qi) if queues[qi].tenant == tenant => {
                        dids.insert(
                            did.clone(),
                            Did {
                                target: DidTarget::Queue(qi),
                                spec,
                            },
                        );
                    }
                    Some(_) => p.add(dp, format!("queue {queue:?} belongs to another tenant")),
                    None => p.add(dp, format!("unknown queue {queue:?}")),
                }
            }
            let outbound = t.outbound.as_ref().and_then(|o| match o.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    p.add(
                        format!("{path}.outbound"),
                        format!("not an ADDR:PORT: {o:?}"),
                    );
                    None
                }
            });
            let caller_id = t.caller_id.clone().unwrap_or_else(|| "centralino".into());
            if caller_id.is_empty()
                || caller_id.len() > 32
                || !caller_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+')
            {
                p.add(format!("{path}.caller_id"), "digits (and +), at most 32");
            }
            if t.options_seconds != 0 {
                if !(5..=3600).contains(&t.options_seconds) {
                    p.add(
                        format!("{path}.options_seconds"),
                        "must be 0 (off) or in 5..=3600",
                    );
                } else if t.outbound.is_none() {
                    p.add(
                        format!("{path}.options_seconds"),
                        "only for a trunk with outbound",
                    );
                }
            }
            let client_cert = trunk_client_cert(&mut p, &path, t, sip_tls.is_some());
            let outbound_tls = trunk_outbound_tls(&mut p, &path, t, sip_tls.is_some());
            let auth = match (&t.auth_username, &t.auth_password) {
                (None, None) => None,
                (Some(u), Some(pw)) => {
                    // Both travel inside a quoted string of a header line.
                    let clean = |v: &str| {
                        !v.is_empty()
                            && v.len() <= 256
                            && !v.chars().any(|c| c.is_control() || c == '"' || c == '\\')
                    };
                    if !clean(u) {
                        p.add(
                            format!("{path}.auth_username"),
                            "1-256 characters, no quotes, backslashes or control characters",
                        );
                    }
                    if !clean(pw) {
                        p.add(
                            format!("{path}.auth_password"),
                            "1-256 characters, no quotes, backslashes or control characters",
                        );
                    }
                    if t.outbound.is_none() {
                        p.add(
                            format!("{path}.auth_username"),
                            "only for a trunk with outbound",
                        );
                    }
                    Some(TrunkAuth {
                        username: u.clone(),
                        password: pw.clone(),
                    })
                }
                (Some(_), None) => {
                    p.add(
                        format!("{path}.auth_password"),
                        "required with auth_username",
                    );
                    None
                }
                (None, Some(_)) => {
                    p.add(
                        format!("{path}.auth_username"),
                        "required with auth_password",
                    );
                    None
                }
            };
            trunks.push(Trunk {
                name: t.name.clone(),
                tenant,
                peers,
                dids,
                outbound,
                caller_id,
                options: (t.options_seconds > 0).then(|| Duration::from_secs(t.options_seconds)),
                client_cert,
                outbound_tls,
                auth,
                asserted_identity: t.asserted_identity,
            });
        }
        // A call is told to its trunk by (source address, DID): two trunks
        // behind one carrier SBC (one per tenant) are fine, as long as no
        // DID could belong to both.
        for (i, t) in trunks.iter().enumerate() {
            for (j, other) in trunks.iter().enumerate().skip(i + 1) {
                let shared = t.peers.iter().any(|a| other.peers.contains(a));
                let mut both: Vec<&String> = t
                    .dids
                    .keys()
                    .filter(|d| other.dids.contains_key(*d))
                    .collect();
                both.sort();
                if let (true, Some(did)) = (shared, both.first()) {
                    p.add(
                        format!("trunks[{j}].dids.{did:?}"),
                        format!(
                            "trunks {:?} and {:?} share a peer address and this DID: its calls could belong to either",
                            t.name, other.name
                        ),
                    );
                }
            }
        }
        // An IVR transfer leaves through the trunk's tenant's outbound
        // trunk: its number must pass that tenant's dial plan.
        for t in &trunks {
            let Some(plan) = dial_plans.get(t.tenant) else {
                continue;
            };
            for did in t.dids.values() {
                let DidTarget::Flow(fi) = did.target else {
                    continue;
                };
                let Some(flow) = flows.get(fi) else {
                    continue;
                };
                for (k, node) in flow.nodes.iter().enumerate() {
                    if let centralino_flows::Node::Transfer { number, .. } = node
                        && let Err(why) = plan.check(number)
                    {
                        p.add(
                            format!("flows.{}.nodes.{}.number", flow.name, flow.names[k]),
                            format!(
                                "tenant {:?}'s dial plan refuses it: {why}",
                                tenants[t.tenant]
                            ),
                        );
                    }
                }
            }
        }

        let mut agents = Vec::new();
        let mut seen = HashSet::new();
        for (i, a) in raw.agents.iter().enumerate() {
            let path = format!("agents[{i}]");
            if a.username.is_empty()
                || a.username.len() > 64
                || !a
                    .username
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                p.add(format!("{path}.username"), "must be 1-64 of [A-Za-z0-9._-]");
            }
            if !seen.insert(a.username.clone()) {
                p.add(
                    format!("{path}.username"),
                    format!("duplicate operator {:?}", a.username),
                );
            }
            let tenant = tenant_of(&mut p, format!("{path}.tenant"), &a.tenant);
            let credentials = match (&a.password, &a.ha1_md5, &a.ha1_sha256) {
                (Some(pw), None, None) if !pw.is_empty() => {
                    Credentials::from_password(&a.username, &raw.sip.realm, pw)
                }
                (None, md5, sha) if md5.is_some() || sha.is_some() => {
                    if md5.as_deref().is_some_and(|h| !hex_of_len(h, 32)) {
                        p.add(format!("{path}.ha1_md5"), "must be 32 hex digits");
                    }
                    if sha.as_deref().is_some_and(|h| !hex_of_len(h, 64)) {
                        p.add(format!("{path}.ha1_sha256"), "must be 64 hex digits");
                    }
                    Credentials {
                        ha1_md5: md5.as_ref().map(|h| h.to_ascii_lowercase()),
                        ha1_sha256: sha.as_ref().map(|h| h.to_ascii_lowercase()),
                    }
                }
                _ => {
                    p.add(
                        path.clone(),
                        "needs either a non-empty password or ha1_md5/ha1_sha256, not both",
                    );
                    Credentials::default()
                }
            };
            // A tenant that refuses an algorithm keeps no secret for it:
            // its operators are neither offered nor accepted with it.
            let mut credentials = credentials;
            let had_secret = credentials.ha1_md5.is_some() || credentials.ha1_sha256.is_some();
            // An empty list is already an error (sip.digest_algorithms, or
            // the tenant's): nothing to strip by it.
            let allowed = tenant_algs
                .get(tenant)
                .filter(|a| !a.is_empty())
                .map_or(&[Algorithm::Sha256, Algorithm::Md5][..], Vec::as_slice);
            if !allowed.contains(&Algorithm::Md5) {
                credentials.ha1_md5 = None;
            }
            if !allowed.contains(&Algorithm::Sha256) {
                credentials.ha1_sha256 = None;
            }
            if had_secret && credentials.ha1_md5.is_none() && credentials.ha1_sha256.is_none() {
                p.add(
                    path.clone(),
                    "has no secret for an algorithm its tenant's digest_algorithms allows",
                );
            }
            let mut qs = Vec::new();
            for (j, q) in a.queues.iter().enumerate() {
                match queue_names.iter().position(|n| n == q) {
                    Some(qi) if queues[qi].tenant == tenant => qs.push(qi),
                    Some(_) => p.add(
                        format!("{path}.queues[{j}]"),
                        format!("queue {q:?} belongs to another tenant"),
                    ),
                    None => p.add(
                        format!("{path}.queues[{j}]"),
                        format!("unknown queue {q:?}"),
                    ),
                }
            }
            let attributes = Attributes {
                tenant: tenant as u16,
                site: catalog.site_id(&a.site).unwrap_or(0),
                skills: a
                    .skills
                    .iter()
                    .filter_map(|(s, &l)| Some((catalog.skill_id(s)?, l.clamp(1, 10))))
                    .collect(),
                languages: a
                    .languages
                    .iter()
                    .filter_map(|l| catalog.language_id(l))
                    .fold(0u64, |m, l| m | (1 << l)),
                queues: qs.iter().map(|&q| q as u32).collect(),
            };
            agents.push(Agent {
                username: a.username.clone(),
                tenant,
                credentials,
                queues: qs,
                attributes,
            });
        }

        let media = validate_media(&mut p, &raw.media);
        let notifications = raw.notifications.url.as_ref().and_then(|url| {
            let n = &raw.notifications;
            if !(1..=50).contains(&n.max_attempts) {
                p.add("notifications.max_attempts", "must be in 1..=50");
            }
            if !(1..=86_400).contains(&n.retry_seconds) {
                p.add("notifications.retry_seconds", "must be in 1..=86400");
            }
            let (rest, https) = if let Some(r) = url.strip_prefix("https://") {
                (r, true)
            } else if let Some(r) = url.strip_prefix("http://") {
                (r, false)
            } else {
                p.add(
                    "notifications.url",
                    "https://HOST[:PORT]/PATH (or http:// to a relay on the firm's network)",
                );
                return None;
            };
            let (authority, path) = match rest.split_once('/') {
                Some((a, p)) => (a.to_owned(), format!("/{p}")),
                None => (rest.to_owned(), "/".to_owned()),
            };
            // The host without the port (IPv6 literals in brackets).
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, port)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
                    (h.to_owned(), Some(port))
                }
                _ => (authority.clone(), None),
            };
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
            if host.is_empty()
                || !port_ok
                || !url.bytes().all(|b| b.is_ascii_graphic())
                || authority.contains('@')
            {
                p.add(
                    "notifications.url",
                    "https://HOST[:PORT]/PATH: a host, an optional port, no credentials",
                );
                return None;
            }
            let addr = match port {
                Some(_) => authority.clone(),
                None if https => format!("{authority}:443"),
                None => format!("{authority}:80"),
            };
            if n.ca_file.is_some() && !https {
                p.add("notifications.ca_file", "only with an https:// url");
            }
            let tls = https.then(|| NotifyTls {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                ca_file: n.ca_file.as_ref().map(PathBuf::from),
            });
            Some(Notifications {
                url: url.clone(),
                tls,
                addr,
                path,
                token: n.token.clone(),
                max_attempts: n.max_attempts,
                retry: Duration::from_secs(n.retry_seconds),
            })
        });
        if !(1..=3650).contains(&raw.store.retention_days) {
            p.add("store.retention_days", "must be in 1..=3650");
        }
        if raw
            .store
            .audit_key_file
            .as_ref()
            .is_some_and(|f| f.is_empty())
        {
            p.add("store.audit_key_file", "must not be empty");
        }
        if raw.api.session_hours > 24 {
            p.add(
                "api.session_hours",
                "must be in 0..=24 (0 turns operator logins off)",
            );
        }
        if raw
            .api
            .session_key_file
            .as_ref()
            .is_some_and(|f| f.is_empty())
        {
            p.add("api.session_key_file", "must not be empty");
        }
        let mut api_tokens = Vec::new();
        for (i, t) in raw.api.tokens.iter().enumerate() {
            let path = format!("api.tokens[{i}]");
            if !valid_name(&t.name) {
                p.add(format!("{path}.name"), "letters, digits, - and _ (1 to 64)");
            }
            if t.token.len() < 16
                || t.token.len() > 256
                || !t.token.bytes().all(|b| b.is_ascii_graphic())
            {
                p.add(
                    format!("{path}.token"),
                    "16 to 256 printable characters without spaces",
                );
            }
            if raw.api.tokens[..i].iter().any(|o| o.token == t.token) {
                p.add(format!("{path}.token"), "used twice");
            }
            let role = match t.role.as_str() {
                "admin" => Role::Admin,
                "callbacks" => Role::Callbacks,
                "agent" => Role::Agent,
                "supervisor" => Role::Supervisor,
                other => {
                    p.add(
                        format!("{path}.role"),
                        format!("unknown role {other:?} (admin, callbacks, agent, supervisor)"),
                    );
                    Role::Admin
                }
            };
            match (role, &t.agent) {
                (Role::Agent, None) => {
                    p.add(format!("{path}.agent"), "an agent token names its operator");
                }
                (Role::Agent, Some(a)) if !raw.agents.iter().any(|r| &r.username == a) => {
                    p.add(format!("{path}.agent"), format!("unknown operator {a:?}"));
                }
                (Role::Admin | Role::Callbacks | Role::Supervisor, Some(_)) => {
                    p.add(format!("{path}.agent"), "only for role \"agent\"");
                }
                _ => {}
            }
            match (role, &t.tenant) {
                (Role::Supervisor | Role::Callbacks, Some(tn))
                    if !raw.tenants.iter().any(|r| &r.name == tn) =>
                {
                    p.add(format!("{path}.tenant"), format!("unknown tenant {tn:?}"));
                }
                (Role::Supervisor | Role::Callbacks, _) | (_, None) => {}
                (_, Some(_)) => {
                    p.add(
                        format!("{path}.tenant"),
                        "only for roles \"supervisor\" and \"callbacks\"",
                    );
                }
            }
            api_tokens.push(ApiToken {
                name: t.name.clone(),
                token: t.token.clone(),
                role,
                agent: t.agent.clone(),
                tenant: t.tenant.clone(),
            });
        }
        if media.recordings_dir.is_none() {
            for (i, q) in raw.queues.iter().enumerate() {
                if q.record {
                    p.add(
                        format!("queues[{i}].record"),
                        "needs media.recordings_dir (where the recordings go)",
                    );
                }
            }
        }
        if !p.0.is_empty() {
            return Err(ConfigError::Invalid(p.0));
        }
        Ok(Self {
            sip: SipConfig {
                listen,
                transports,
                realm: raw.sip.realm,
                digest_algorithms: algs,
                timers: TimerConfig {
                    t1: Duration::from_millis(raw.sip.t1_milliseconds),
                    t2: Duration::from_millis(raw.sip.t2_milliseconds),
                    t4: Duration::from_millis(raw.sip.t4_milliseconds),
                },
                limits: Limits {
                    max_message_bytes: raw.sip.max_message_bytes,
                    max_headers: raw.sip.max_headers,
                    max_header_line_bytes: raw.sip.max_header_line_bytes,
                    max_body_bytes: raw.sip.max_body_bytes,
                },
                max_calls: raw.sip.max_calls,
                max_calls_per_second: std::num::NonZeroU32::new(raw.sip.max_calls_per_second),
                max_tcp_connections: raw.sip.max_tcp_connections,
                max_transactions_per_source: raw.sip.max_transactions_per_source,
                tcp_idle_timeout: Duration::from_secs(raw.sip.tcp_idle_timeout_seconds),
                user_agent: raw.sip.user_agent,
                drain: Duration::from_secs(raw.sip.drain_seconds),
                tls: sip_tls,
            },
            http_listen,
            http_limits: HttpLimits {
                header_timeout: Duration::from_secs(raw.http.header_timeout_seconds),
                idle_timeout: Duration::from_secs(raw.http.idle_timeout_seconds),
                max_connections: raw.http.max_connections,
            },
            unmask_numbers: raw.logging.unmask_numbers,
            registrar: RegistrarConfig {
                min_expires: Duration::from_secs(r.min_expires_seconds),
                max_expires: Duration::from_secs(r.max_expires_seconds),
                default_expires: Duration::from_secs(r.default_expires_seconds),
                max_contacts: r.max_contacts,
                md5_user_agents: raw.sip.digest_md5_user_agents.clone(),
                throttle: centralino_sip::throttle::ThrottleConfig {
                    per_user: r.ban_after_user_failures,
                    per_address: r.ban_after_address_failures,
                    ban: Duration::from_secs(r.ban_seconds),
                },
            },
            nonce_lifetime: Duration::from_secs(r.nonce_lifetime_seconds),
            login_paused,
            qualify: (r.qualify_seconds > 0).then(|| Duration::from_secs(r.qualify_seconds)),
            media,
            flows,
            scripts,
            api_tokens,
            api_sessions: ApiSessions {
                hours: raw.api.session_hours,
                key_file: raw.api.session_key_file.map(PathBuf::from),
            },
            callback_limits: CallbackLimits {
                per_source_per_minute: raw.api.callbacks_per_source_per_minute,
                per_number_per_day: raw.api.callbacks_per_number_per_day,
            },
            retention_days: raw.store.retention_days,
            audit_key_file: raw.store.audit_key_file.map(PathBuf::from),
            notifications,
            tenants,
            dial_plans,
            trunks,
            queues,
            agents,
            catalog,
            source: toml::Table::new(),
        })
    }
}

/// A tenant's dial plan: the Italian one, with what the tenant changed.
fn validate_dial_plan(p: &mut Problems, path: &str, raw: Option<&RawDialPlan>) -> DialPlan {
    let mut plan = DialPlan::italy();
    let Some(raw) = raw else {
        return plan;
    };
    if let Some(cc) = &raw.country_code {
        if (1..=3).contains(&cc.len())
            && cc.bytes().all(|b| b.is_ascii_digit())
            && !cc.starts_with('0')
        {
            plan.country_code = cc.clone();
        } else {
            p.add(
                format!("{path}.country_code"),
                "1 to 3 digits, not starting with 0 (Italy: \"39\")",
            );
        }
    }
    for (key, list, target) in [
        ("allow", &raw.allow, &mut plan.allow),
        ("block", &raw.block, &mut plan.block),
    ] {
        let Some(list) = list else {
            continue;
        };
        for (i, prefix) in list.iter().enumerate() {
            if !dialplan::valid_prefix(prefix) {
                p.add(
                    format!("{path}.{key}[{i}]"),
                    "an E.164 prefix: + and 1 to 15 digits (e.g. \"+393\")",
                );
            }
        }
        target.clone_from(list);
    }
    if plan.allow.is_empty() {
        p.add(
            format!("{path}.allow"),
            "allows nothing: callbacks and transfers could never be dialled",
        );
    }
    plan
}

fn validate_media(p: &mut Problems, m: &RawMedia) -> MediaConfig {
    if m.port_min < 1024 || m.port_max < m.port_min || m.port_max - m.port_min < 3 {
        p.add(
            "media.port_min",
            "port_min..=port_max must lie above 1023 and hold at least two even/odd pairs",
        );
    }
    let advertise_address = m.advertise_address.as_ref().and_then(|a| match a.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            p.add(
                "media.advertise_address",
                format!("not an IP address: {a:?}"),
            );
            None
        }
    });
    let mut codecs = Vec::new();
    for (i, c) in m.codecs.iter().enumerate() {
        match c.to_ascii_uppercase().as_str() {
            "PCMU" if !codecs.contains(&0) => codecs.push(0),
            "PCMA" if !codecs.contains(&8) => codecs.push(8),
            "PCMU" | "PCMA" => p.add(format!("media.codecs[{i}]"), "listed twice"),
            _ => p.add(
                format!("media.codecs[{i}]"),
                format!("unsupported codec {c:?} (PCMU, PCMA)"),
            ),
        }
    }
    if m.codecs.is_empty() {
        p.add("media.codecs", "needs at least one of PCMU, PCMA");
    }
    let latch = match m.latch.as_str() {
        "symmetric" => LatchMode::Symmetric,
        "sdp_address" => LatchMode::SdpAddress,
        "first_packet" => LatchMode::FirstPacket,
        other => {
            p.add(
                "media.latch",
                format!("unknown latch mode {other:?} (symmetric, sdp_address, first_packet)"),
            );
            LatchMode::Symmetric
        }
    };
    if m.threads > 256 {
        p.add("media.threads", "at most 256 (0 = one per core)");
    }
    MediaConfig {
        ports: (m.port_min, m.port_max),
        advertise_address,
        codecs,
        latch,
        inactivity_timeout: (m.inactivity_timeout_seconds > 0)
            .then(|| Duration::from_secs(m.inactivity_timeout_seconds)),
        threads: m.threads,
        music_on_hold: m.music_on_hold.as_ref().map(PathBuf::from),
        sounds_dir: m
            .sounds_dir
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        prompts_dir: m
            .prompts_dir
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        recordings_dir: m
            .recordings_dir
            .as_ref()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    }
}

/// Arrays and inline tables nested deeper than this are refused before
/// parsing: the TOML parser recurses once per level, and a file of a few
/// kilobytes of `[[[[…` would overflow the stack (found by the fuzz
/// target `config`); no configuration nests more than a handful.
const MAX_NESTING: usize = 32;

/// `Err` when `text` nests arrays or inline tables deeper than
/// [`MAX_NESTING`] (brackets inside strings and comments do not count).
fn nesting_within(text: &str, name: &str) -> Result<(), ConfigError> {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    let mut comment = false;
    for &b in text.as_bytes() {
        if comment {
            comment = b != b'\n';
            continue;
        }
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' && q == b'"' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    if max > MAX_NESTING {
        let at = if name.is_empty() {
            String::new()
        } else {
            format!("{name}: ")
        };
        return Err(ConfigError::Syntax(format!(
            "{at}arrays or tables nested more than {MAX_NESTING} deep"
        )));
    }
    Ok(())
}

fn is_keyword(s: &str) -> bool {
    matches!(s, "lang" | "site" | "tenant" | "queue" | "true")
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `toml` is refused with a problem starting with `want`.
    fn refused(toml: &str, want: &str) {
        let ConfigError::Invalid(problems) = Config::from_toml(toml).unwrap_err() else {
            panic!("{want}: not an invalid configuration")
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want}: {text:#?}"
        );
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.agents.len(), 20);
        assert_eq!(c.agents[0].username, "1001");
        assert!(c.sip.listen.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(
            c.trunks[0].dids.get("100").map(|d| d.target),
            Some(DidTarget::Queue(0))
        );
    }

    const TWO_TENANTS: &str = r#"
[[tenants]]
name = "asl"
[tenants.dial_plan]
allow = ["+39", "+41"]
block = ["+3989"]

[[tenants]]
name = "regione"

[[trunks]]
name = "sbc-asl"
tenant = "asl"
peers = ["192.0.2.10"]
dids = { "100" = "q1" }

[[trunks]]
name = "sbc-regione"
tenant = "regione"
peers = ["192.0.2.10"]
dids = { "200" = "q2" }

[[queues]]
name = "q1"
tenant = "asl"

[[queues]]
name = "q2"
tenant = "regione"
"#;

    #[test]
    fn each_tenant_has_a_dial_plan_the_italian_one_by_default() {
        let c = Config::from_toml(TWO_TENANTS).unwrap();
        assert_eq!(c.dial_plans.len(), 2);
        assert_eq!(c.dial_plans[0].allow, ["+39", "+41"]);
        assert_eq!(c.dial_plans[0].block, ["+3989"]);
        assert_eq!(c.dial_plans[1], DialPlan::italy());
        assert!(Config::embedded().unwrap().dial_plans[0] == DialPlan::italy());
        refused(
            &TWO_TENANTS.replace(r#"allow = ["+39", "+41"]"#, r#"allow = ["39"]"#),
            "tenants[0].dial_plan.allow[0]: an E.164 prefix",
        );
        refused(
            &TWO_TENANTS.replace(r#"allow = ["+39", "+41"]"#, "allow = []"),
            "tenants[0].dial_plan.allow: allows nothing",
        );
        refused(
            &TWO_TENANTS.replace(r#"block = ["+3989"]"#, r#"country_code = "039""#),
            "tenants[0].dial_plan.country_code",
        );
    }

    #[test]
    fn a_tenant_that_refuses_md5_keeps_no_md5_secret_for_its_operators() {
        let toml = r#"
[[tenants]]
name = "asl"
digest_algorithms = ["SHA-256"]

[[tenants]]
name = "firm"

[[queues]]
name = "q1"
tenant = "asl"

[[agents]]
username = "1001"
tenant = "asl"
password = "secret-1001"
queues = ["q1"]

[[agents]]
username = "2001"
tenant = "firm"
password = "secret-2001"
"#;
        let c = Config::from_toml(toml).unwrap();
        assert!(c.agents[0].credentials.ha1_md5.is_none());
        assert!(c.agents[0].credentials.ha1_sha256.is_some());
        assert!(
            c.agents[1].credentials.ha1_md5.is_some(),
            "other tenants keep it"
        );
        assert_eq!(c.registrar.md5_user_agents, ["baresip"]);
        refused(
            &toml.replace(
                r#"password = "secret-1001""#,
                r#"ha1_md5 = "0123456789abcdef0123456789abcdef""#,
            ),
            "agents[0]: has no secret for an algorithm its tenant's digest_algorithms allows",
        );
        refused(
            &toml.replace(r#"["SHA-256"]"#, r#"["SHA-256", "SHA-256"]"#),
            "tenants[0].digest_algorithms[1]: SHA-256 listed twice",
        );
        refused(
            &format!("[sip]\ndigest_algorithms = [\"MD5\"]\n{toml}"),
            "tenants[0].digest_algorithms: none of them is in sip.digest_algorithms",
        );
        refused(
            &format!("[sip]\ndigest_md5_user_agents = [\"\"]\n{toml}"),
            "sip.digest_md5_user_agents[0]",
        );
    }

    #[test]
    fn two_trunks_behind_one_address_must_not_share_a_did() {
        // Two tenants behind one carrier SBC: told apart by DID.
        assert!(Config::from_toml(TWO_TENANTS).is_ok());
        refused(
            &TWO_TENANTS.replace(r#""200" = "q2""#, r#""100" = "q2""#),
            "trunks[1].dids.\"100\": trunks \"sbc-asl\" and \"sbc-regione\" share a peer address",
        );
    }

    #[test]
    fn an_ivr_transfer_to_a_number_the_dial_plan_refuses_is_an_error() {
        let toml = format!(
            "{}\n{}",
            TWO_TENANTS.replace(r#""200" = "q2""#, r#""200" = { flow = "menu" }"#),
            r#"
[[flows]]
name = "menu"
start = "out"
[flows.nodes.out]
type = "transfer"
number = "+39899123456"
on_fail = "bye"
[flows.nodes.bye]
type = "hangup"
"#
        );
        refused(
            &toml,
            "flows.menu.nodes.out.number: tenant \"regione\"'s dial plan refuses it",
        );
        assert!(Config::from_toml(&toml.replace("+39899123456", "+390612345678")).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_before_the_parser_recurses() {
        let deep = format!("x = {}1{}\n", "[".repeat(5000), "]".repeat(5000));
        let e = Config::from_toml(&deep).unwrap_err();
        assert!(e.to_string().contains("nested more than 32 deep"), "{e}");
        // Brackets in strings and comments are text.
        let text = format!(
            "# {}\n[sip]\nuser_agent = \"{}\"\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(Config::from_toml(&text).is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml("[sip]\nlisten_here = 1\n").unwrap_err();
        assert!(e.to_string().contains("listen_here"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
[sip]
listen = ["nope"]
t1_milliseconds = 0
[[tenants]]
name = "demo"
[[queues]]
name = "info"
tenant = "other"
ring_timeout_seconds = 0
[[trunks]]
name = "t"
tenant = "demo"
peers = ["x"]
dids = { "100" = "missing" }
[[agents]]
username = "1001"
tenant = "demo"
queues = ["info"]
"#;
        let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "sip.listen[0]",
            "sip.t1_milliseconds",
            "queues[0].tenant",
            "queues[0].ring_timeout_seconds",
            "trunks[0].peers[0]",
            "trunks[0].dids.\"100\"",
            "agents[0]",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    const SKILLED: &str = r#"
[[tenants]]
name = "asl1"
[[tenants]]
name = "asl2"
[[queues]]
name = "vaccini"
tenant = "asl1"
strategy = "most_proficient"
requirements = "vaccini >= 5 && lang == \"it\""
fragile_max_wait_seconds = 120
[[queues.overflow]]
after_seconds = 30
requirements = "vaccini >= 2"
[[queues.overflow]]
after_seconds = 90
requirements = "vaccini"
tenants = ["asl2"]
[[queues]]
name = "triage"
tenant = "asl1"
strategy = "ring_all"
ring_all_width = 2
requirements = "triage"
weight = 2.0
[[trunks]]
name = "t"
tenant = "asl1"
peers = ["127.0.0.1"]
dids = { "100" = "vaccini", "101" = { queue = "vaccini", requirements = "lang == \"en\"", priority = 3, fragile = true } }
[[agents]]
username = "1001"
password = "x"
tenant = "asl1"
site = "roma"
skills = { vaccini = 7, triage = 3 }
languages = ["it", "en"]
[[agents]]
username = "2001"
password = "x"
tenant = "asl2"
skills = { vaccini = 9 }
languages = ["it"]
"#;

    #[test]
    fn skills_queues_rings_and_dids_load() {
        let c = Config::from_toml(SKILLED).unwrap();
        let q = &c.queues[0].routing;
        assert_eq!(q.strategy, Strategy::MostProficient);
        assert_eq!(q.rings.len(), 2);
        assert_eq!(q.rings[1].tenants, vec![1]);
        assert_eq!(q.fragile_max_wait, Some(Duration::from_secs(120)));
        assert_eq!(c.queues[1].routing.strategy, Strategy::RingAll(2));
        let did = &c.trunks[0].dids["101"];
        assert_eq!(
            (did.target, did.spec.priority, did.spec.fragile),
            (DidTarget::Queue(0), 3, true)
        );
        assert!(did.spec.requirement.is_some());
        let a = &c.agents[0].attributes;
        assert!(q.requirement.matches(a));
        // The expression alone admits 2001 too; the router restricts ring 0
        // to the queue's tenant and ring 2 admits asl2 by agreement.
        assert!(q.requirement.matches(&c.agents[1].attributes));
        assert_eq!(c.agents[1].tenant, 1);
    }

    #[test]
    fn routing_errors_name_their_key() {
        let bad = SKILLED
            .replace("vaccini >= 5 &&", "vacini >= 5 &&")
            .replace("strategy = \"most_proficient\"", "strategy = \"fastest\"")
            .replace("after_seconds = 90", "after_seconds = 20")
            .replace("tenants = [\"asl2\"]", "tenants = [\"asl9\"]")
            .replace("ring_all_width = 2", "ring_all_width = 40")
            .replace("weight = 2.0", "weight = 0.0")
            .replace("priority = 3", "priority = 300")
            .replace(
                "skills = { vaccini = 9 }",
                "skills = { vaccini = 11, lang = 2 }",
            )
            .replace(
                "fragile_max_wait_seconds = 120",
                "fragile_max_wait_seconds = 10",
            )
            .replace("languages = [\"it\"]\n", "languages = [\"i t\"]\n");
        let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
            panic!("expected Invalid");
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "queues[0].requirements: at byte 0: unknown skill \"vacini\"",
            "queues[0].strategy: unknown strategy \"fastest\"",
            "queues[0].overflow[1].after_seconds",
            "queues[0].overflow[1].tenants[0]: unknown tenant \"asl9\"",
            "queues[0].fragile_max_wait_seconds",
            "queues[1].ring_all_width",
            "queues[1].weight",
            "trunks[0].dids.\"101\".priority",
            "agents[1].skills.vaccini: level must be in 1..=10",
            "agents[1].skills.lang",
            "agents[1].languages[0]",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "{want} missing from {text:#?}"
            );
        }
    }

    #[test]
    fn media_errors_name_their_key() {
        let text = r#"
[media]
port_min = 100
port_max = 50
advertise_address = "public"
codecs = ["PCMU", "G729", "PCMU"]
latch = "sometimes"
threads = 1000
[[tenants]]
name = "demo"
[[queues]]
name = "info"
tenant = "demo"
announce_seconds = 3
record = true
"#;
        let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "media.port_min",
            "media.advertise_address: not an IP address",
            "media.codecs[1]: unsupported codec \"G729\"",
            "media.codecs[2]: listed twice",
            "media.latch: unknown latch mode",
            "media.threads",
            "queues[0].announce_seconds",
            "queues[0].record: needs media.recordings_dir",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "{want} missing from {text:#?}"
            );
        }
        let ok = Config::from_toml(
            "[media]\nrecordings_dir = \"/tmp/r\"\ncodecs = [\"pcmu\"]\nlatch = \"first_packet\"\ninactivity_timeout_seconds = 0\n[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\nrecord = true\nannounce_seconds = 45\n",
        )
        .unwrap();
        assert_eq!(ok.media.codecs, [0]);
        assert_eq!(ok.media.latch, LatchMode::FirstPacket);
        assert_eq!(ok.media.inactivity_timeout, None);
        assert!(ok.queues[0].record);
        assert_eq!(ok.queues[0].announce_every, Some(Duration::from_secs(45)));
    }

    #[test]
    fn operator_scripts_are_checked() {
        let base =
            "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\nscript = \"S\"\n";
        let good = format!(
            "{base}[[scripts]]\nname = \"S\"\nstart = \"a\"\n[scripts.questions.a]\ntext = \"Prima dose?\"\nanswers = {{ \"si\" = \"b\", \"no\" = \"end\" }}\n[scripts.questions.b]\ntext = \"Data?\"\nkind = \"date\"\n"
        );
        let c = Config::from_toml(&good).unwrap();
        assert_eq!(c.queues[0].script, Some(0));
        assert_eq!(c.scripts[0].questions["a"].kind, QuestionKind::Choice);
        assert_eq!(c.scripts[0].questions["b"].next, "end");
        let bad = good
            .replace("\"no\" = \"end\"", "\"no\" = \"zz\"")
            .replace("kind = \"date\"", "kind = \"audio\"\nnext = \"a\"")
            .replace("script = \"S\"", "script = \"T\"");
        let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
            panic!()
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "scripts[0].questions.a.answers.\"no\": unknown question \"zz\"",
            "scripts[0].questions.b.kind: unknown kind \"audio\"",
            "scripts[0].questions.a: the script loops back",
            "queues[0].script: unknown script \"T\"",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "{want} missing from {text:#?}"
            );
        }
    }

    #[test]
    fn callback_hours_are_checked() {
        let base = "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\n";
        let good = format!(
            "{base}callback_hours = {{ days = [\"lun\", \"ven\"], hours = [\"08:00-18:00\"] }}\n"
        );
        let c = Config::from_toml(&good).unwrap();
        assert!(c.queues[0].callback_hours.is_some());
        let bad = good
            .replace("\"ven\"", "\"venerdi santo\"")
            .replace("08:00-18:00", "18:00-08:00");
        let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
            panic!()
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("queues[0].callback_hours.hours[0]")),
            "{text:?}"
        );
    }

    #[test]
    fn whispers_and_queue_prompts_are_checked() {
        let base = "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\n";
        let good = format!(
            "{base}whisper = [\"linea-triage\"]\ncallback_whisper = [\"richiamata\", \"it/linea-triage\"]\n"
        );
        let c = Config::from_toml(&good).unwrap();
        assert_eq!(c.queues[0].whisper, ["linea-triage"]);
        assert_eq!(
            c.queues[0].callback_whisper.as_deref(),
            Some(&["richiamata".to_owned(), "it/linea-triage".to_owned()][..])
        );
        let prompts: Vec<String> = c.flow_prompts().into_iter().map(|(_, n)| n).collect();
        assert!(prompts.contains(&"richiamata".to_owned()), "{prompts:?}");
        assert_eq!(
            Config::from_toml(base).unwrap().queues[0].callback_whisper,
            None
        );
        let bad = good
            .replace(
                "\"linea-triage\"]\ncallback",
                "\"../../etc/passwd\"]\ncallback",
            )
            .replace("\"richiamata\"", "\"\"");
        let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
            panic!()
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "queues[0].whisper[0]: not a prompt name",
            "queues[0].callback_whisper[0]",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "{want}: {text:#?}"
            );
        }
    }

    #[test]
    fn agent_tokens_name_a_known_operator() {
        let base = "[[tenants]]\nname = \"d\"\n[[agents]]\nusername = \"1001\"\npassword = \"demo1001\"\ntenant = \"d\"\n";
        let token = |role: &str, agent: &str| {
            format!(
                "{base}[[api.tokens]]\nname = \"t\"\ntoken = \"token-0123456789abcdef\"\nrole = \"{role}\"\n{agent}"
            )
        };
        let c = Config::from_toml(&token("supervisor", "tenant = \"d\"\n")).unwrap();
        assert_eq!(
            (c.api_tokens[0].role, c.api_tokens[0].tenant.as_deref()),
            (Role::Supervisor, Some("d"))
        );
        let c = Config::from_toml(&token("agent", "agent = \"1001\"\n")).unwrap();
        assert_eq!(c.api_tokens[0].role, Role::Agent);
        assert_eq!(c.api_tokens[0].agent.as_deref(), Some("1001"));
        for (toml, want) in [
            (
                token("agent", ""),
                "api.tokens[0].agent: an agent token names its operator",
            ),
            (
                token("agent", "agent = \"2002\"\n"),
                "api.tokens[0].agent: unknown operator \"2002\"",
            ),
            (
                token("callbacks", "agent = \"1001\"\n"),
                "api.tokens[0].agent: only for role \"agent\"",
            ),
            (
                token("boss", ""),
                "api.tokens[0].role: unknown role \"boss\"",
            ),
            (
                token("supervisor", "tenant = \"nessuno\"\n"),
                "api.tokens[0].tenant: unknown tenant \"nessuno\"",
            ),
            (
                token("agent", "agent = \"1001\"\ntenant = \"d\"\n"),
                "api.tokens[0].tenant: only for roles \"supervisor\" and \"callbacks\"",
            ),
            (
                token("callbacks", "tenant = \"nessuno\"\n"),
                "api.tokens[0].tenant: unknown tenant \"nessuno\"",
            ),
        ] {
            refused(&toml, want);
        }
    }

    #[test]
    fn trunk_options_need_an_outbound_side_and_a_sane_interval() {
        let base = "[[tenants]]\nname = \"d\"\n[[trunks]]\nname = \"t\"\ntenant = \"d\"\npeers = [\"192.0.2.10\"]\n";
        let c = Config::from_toml(&format!(
            "{base}outbound = \"192.0.2.10:5060\"\noptions_seconds = 30\n"
        ))
        .unwrap();
        assert_eq!(c.trunks[0].options, Some(Duration::from_secs(30)));
        for (extra, want) in [
            (
                "outbound = \"192.0.2.10:5060\"\noptions_seconds = 2\n",
                "trunks[0].options_seconds: must be 0 (off) or in 5..=3600",
            ),
            (
                "options_seconds = 30\n",
                "trunks[0].options_seconds: only for a trunk with outbound",
            ),
        ] {
            refused(&format!("{base}{extra}"), want);
        }
    }

    #[test]
    fn http_limits_are_bounded() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            c.http_limits,
            HttpLimits {
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(10),
                max_connections: 1024,
            }
        );
        let c = Config::from_toml(
            "[http]\nheader_timeout_seconds = 300\nidle_timeout_seconds = 1\nmax_connections = 1\n",
        )
        .unwrap();
        assert_eq!(c.http_limits.header_timeout, Duration::from_secs(300));
        assert_eq!(c.http_limits.idle_timeout, Duration::from_secs(1));
        assert_eq!(c.http_limits.max_connections, 1);
        for (toml, want) in [
            (
                "[http]\nheader_timeout_seconds = 0\n",
                "http.header_timeout_seconds: must be in 1..=300",
            ),
            (
                "[http]\nheader_timeout_seconds = 301\n",
                "http.header_timeout_seconds: must be in 1..=300",
            ),
            (
                "[http]\nidle_timeout_seconds = 0\n",
                "http.idle_timeout_seconds: must be in 1..=3600",
            ),
            (
                "[http]\nmax_connections = 0\n",
                "http.max_connections: must be in 1..=100000",
            ),
            (
                "[http]\nmax_connections = 100001\n",
                "http.max_connections: must be in 1..=100000",
            ),
        ] {
            refused(toml, want);
        }
    }

    #[test]
    fn tls_settings_come_together_and_name_readable_files() {
        // Any readable file will do for the check (contents are the
        // driver's business, at start).
        let file = env!("CARGO_MANIFEST_PATH");
        let sip = format!(
            "[sip]\ntransports = [\"udp\", \"tls\"]\ntls_listen = [\"127.0.0.1:5061\"]\ntls_cert_file = {file:?}\ntls_key_file = {file:?}\n"
        );
        let trunk = "[[tenants]]\nname = \"d\"\n[[trunks]]\nname = \"t\"\ntenant = \"d\"\npeers = [\"192.0.2.10\"]\n";
        let c = Config::from_toml(&format!(
            "{sip}{trunk}tls_client_ca_file = {file:?}\ntls_peer_names = [\"SBC.carrier.example\"]\n"
        ))
        .unwrap();
        let tls = c.sip.tls.expect("tls");
        assert_eq!(tls.listen, vec!["127.0.0.1:5061".parse().unwrap()]);
        let cc = c.trunks[0].client_cert.clone().expect("mtls");
        assert_eq!(cc.peer_names, vec!["sbc.carrier.example".to_owned()]);
        let c = Config::from_toml(&format!(
            "{sip}{trunk}outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\noutbound_tls_name = \"SBC.carrier.example\"\noutbound_tls_cert_file = {file:?}\noutbound_tls_key_file = {file:?}\n"
        ))
        .unwrap();
        let out = c.trunks[0].outbound_tls.clone().expect("outbound tls");
        assert_eq!(out.name, "sbc.carrier.example");
        assert_eq!(out.ca_file, None);
        assert!(out.client_cert.is_some());
        for (extra, want) in [
            (
                "outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\n".to_owned(),
                "trunks[0].outbound_tls_name: required",
            ),
            (
                "outbound_transport = \"tls\"\noutbound_tls_name = \"a.example\"\n".to_owned(),
                "trunks[0].outbound_transport: only for a trunk with outbound",
            ),
            (
                "outbound = \"192.0.2.10:5061\"\noutbound_transport = \"sctp\"\n".to_owned(),
                "trunks[0].outbound_transport: unknown transport",
            ),
            (
                "outbound = \"192.0.2.10:5061\"\noutbound_tls_name = \"a.example\"\n".to_owned(),
                "trunks[0].outbound_tls_name: only with outbound_transport",
            ),
            (
                format!(
                    "outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\noutbound_tls_name = \"a.example\"\noutbound_tls_cert_file = {file:?}\n"
                ),
                "trunks[0].outbound_tls_key_file: required",
            ),
        ] {
            refused(&format!("{sip}{trunk}{extra}"), want);
        }
        refused(
            &format!(
                "{trunk}outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\noutbound_tls_name = \"a.example\"\n"
            ),
            "trunks[0].outbound_transport: needs the TLS listener",
        );
        for (toml, want) in [
            (
                "[sip]\ntransports = [\"tls\"]\n".to_owned(),
                "sip.tls_listen: needs at least one address",
            ),
            (
                "[sip]\ntransports = [\"tls\"]\n".to_owned(),
                "sip.tls_cert_file: required",
            ),
            (
                "[sip]\ntls_listen = [\"127.0.0.1:5061\"]\n".to_owned(),
                "sip.tls_listen: only with \"tls\"",
            ),
            (
                format!(
                    "{sip}{trunk}tls_client_ca_file = \"/nonexistent.pem\"\ntls_peer_names = [\"a.example\"]\n"
                ),
                "trunks[0].tls_client_ca_file: cannot read",
            ),
            (
                format!("{sip}{trunk}tls_client_ca_file = {file:?}\n"),
                "trunks[0].tls_peer_names: needs at least one name",
            ),
            (
                format!("{trunk}tls_client_ca_file = {file:?}\ntls_peer_names = [\"a.example\"]\n"),
                "trunks[0].tls_peer_names: needs the TLS listener",
            ),
            (
                format!("{sip}{trunk}tls_client_ca_file = {file:?}\ntls_peer_names = [\"a b\"]\n"),
                "trunks[0].tls_peer_names[0]: not a DNS name",
            ),
        ] {
            refused(&toml, want);
        }
    }

    #[test]
    fn trunk_credentials_come_together_and_stay_out_of_debug() {
        let trunk = "[[tenants]]\nname = \"d\"\n[[trunks]]\nname = \"t\"\ntenant = \"d\"\npeers = [\"192.0.2.10\"]\n";
        let c = Config::from_toml(&format!(
            "{trunk}outbound = \"192.0.2.10:5060\"\nauth_username = \"u\"\nauth_password = \"sekrit\"\n"
        ))
        .unwrap();
        let auth = c.trunks[0].auth.clone().expect("auth");
        assert_eq!(auth.username, "u");
        assert!(!format!("{:?}", c.trunks[0]).contains("sekrit"));
        for (extra, want) in [
            (
                "outbound = \"192.0.2.10:5060\"\nauth_username = \"u\"\n",
                "trunks[0].auth_password: required with auth_username",
            ),
            (
                "auth_username = \"u\"\nauth_password = \"p\"\n",
                "trunks[0].auth_username: only for a trunk with outbound",
            ),
            (
                "outbound = \"192.0.2.10:5060\"\nauth_username = \"u\\\"\"\nauth_password = \"p\"\n",
                "trunks[0].auth_username: 1-256 characters",
            ),
        ] {
            refused(&format!("{trunk}{extra}"), want);
        }
    }

    #[test]
    fn desk_sessions_are_bounded() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            c.api_sessions,
            ApiSessions {
                hours: 12,
                key_file: None
            }
        );
        let c = Config::from_toml(
            "[api]\nsession_hours = 0\nsession_key_file = \"/etc/centralino/session.key\"\n",
        )
        .unwrap();
        assert_eq!(c.api_sessions.hours, 0);
        for (toml, want) in [
            (
                "[api]\nsession_hours = 25\n",
                "api.session_hours: must be in 0..=24",
            ),
            (
                "[api]\nsession_key_file = \"\"\n",
                "api.session_key_file: must not be empty",
            ),
        ] {
            refused(toml, want);
        }
    }

    #[test]
    fn the_audit_key_file_is_a_path_or_the_node_s_own() {
        assert_eq!(Config::from_toml("").unwrap().audit_key_file, None);
        let c =
            Config::from_toml("[store]\naudit_key_file = \"/etc/centralino/audit.key\"\n").unwrap();
        assert_eq!(
            c.audit_key_file,
            Some(PathBuf::from("/etc/centralino/audit.key"))
        );
        refused(
            "[store]\naudit_key_file = \"\"\n",
            "store.audit_key_file: must not be empty",
        );
    }

    #[test]
    fn the_callback_number_dialogue_is_checked() {
        let base = "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\n";
        let good = format!(
            "{base}callback_key = \"1\"\n[queues.callback_number]\nread_prompts = [\"il-numero\"]\nenter_prompts = [\"inserisca\"]\n"
        );
        let c = Config::from_toml(&good).unwrap();
        let n = c.queues[0].callback_number.as_ref().unwrap();
        assert_eq!(n.timeout, Duration::from_secs(10));
        assert_eq!(n.enter_prompts, ["inserisca"]);
        let bad = good
            .replace("callback_key = \"1\"\n", "")
            .replace("[\"inserisca\"]", "[\"../x\"]\ntimeout_seconds = 0");
        let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
            panic!()
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        for want in [
            "queues[0].callback_number: needs callback_key",
            "queues[0].callback_number.timeout_seconds: must be in 1..=60",
            "queues[0].callback_number.enter_prompts[0]: not a prompt name",
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "{want}: {text:#?}"
            );
        }
    }

    #[test]
    fn the_sms_hook_url_is_checked() {
        let hook = |lines: &str| format!("[notifications]\n{lines}\n");
        let c = Config::from_toml(&hook("url = \"https://sms.example.it/v1/send\"")).unwrap();
        let n = c.notifications.unwrap();
        assert_eq!(
            (n.addr.as_str(), n.path.as_str()),
            ("sms.example.it:443", "/v1/send")
        );
        assert_eq!(n.tls.unwrap().host, "sms.example.it");
        let c = Config::from_toml(&hook(
            "url = \"https://[::1]:8443/sms\"\nca_file = \"/etc/centralino/ca.pem\"",
        ))
        .unwrap();
        let n = c.notifications.unwrap();
        let tls = n.tls.unwrap();
        assert_eq!((n.addr.as_str(), tls.host.as_str()), ("[::1]:8443", "::1"));
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/centralino/ca.pem")));
        let c = Config::from_toml(&hook("url = \"http://10.0.0.5:8080/sms\"")).unwrap();
        assert!(c.notifications.unwrap().tls.is_none());
        for (lines, want) in [
            (
                "url = \"ftp://x/y\"",
                "notifications.url: https://HOST[:PORT]/PATH",
            ),
            (
                "url = \"https://u:p@x/y\"",
                "notifications.url: https://HOST[:PORT]/PATH",
            ),
            ("url = \"https://x:99999/y\"", "notifications.url"),
            (
                "url = \"http://x:80/y\"\nca_file = \"ca.pem\"",
                "notifications.ca_file: only with an https:// url",
            ),
        ] {
            let ConfigError::Invalid(problems) = Config::from_toml(&hook(lines)).unwrap_err()
            else {
                panic!("{lines}")
            };
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "{want}: {text:#?}"
            );
        }
    }

    #[test]
    fn the_drain_limit_is_bounded() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.sip.drain, Duration::from_secs(60));
        let c = Config::from_toml("[sip]\ndrain_seconds = 0\n").unwrap();
        assert_eq!(c.sip.drain, Duration::ZERO);
        let ConfigError::Invalid(problems) =
            Config::from_toml("[sip]\ndrain_seconds = 7200\n").unwrap_err()
        else {
            panic!()
        };
        assert!(problems[0].to_string().starts_with("sip.drain_seconds"));
    }

    #[test]
    fn brute_force_limits_are_read_and_checked() {
        let c = Config::from_toml("[registrar]\nban_after_user_failures = 3\nban_seconds = 600\n")
            .unwrap();
        assert_eq!(c.registrar.throttle.per_user, 3);
        assert_eq!(c.registrar.throttle.per_address, 20);
        assert_eq!(c.registrar.throttle.ban, Duration::from_secs(600));
        let ConfigError::Invalid(problems) =
            Config::from_toml("[registrar]\nban_seconds = 0\n").unwrap_err()
        else {
            panic!()
        };
        assert!(problems[0].to_string().starts_with("registrar.ban_seconds"));
        assert_eq!(Config::from_toml("").unwrap().qualify, None);
        let c = Config::from_toml("[registrar]\nqualify_seconds = 30\n").unwrap();
        assert_eq!(c.qualify, Some(Duration::from_secs(30)));
        let ConfigError::Invalid(problems) =
            Config::from_toml("[registrar]\nqualify_seconds = 2\n").unwrap_err()
        else {
            panic!()
        };
        assert!(
            problems[0]
                .to_string()
                .starts_with("registrar.qualify_seconds")
        );
    }
}
