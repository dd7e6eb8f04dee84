//! The TOML as written: every table and key the schema knows (unknown
//! ones are errors), with the defaults of what may be left out. Only
//! validation reads these; the rest of Centralino sees [`crate::Config`].

use super::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) sip: RawSip,
    pub(super) http: RawHttp,
    pub(super) logging: RawLogging,
    pub(super) registrar: RawRegistrar,
    pub(super) media: RawMedia,
    pub(super) api: RawApi,
    pub(super) store: RawStore,
    pub(super) notifications: RawNotifications,
    pub(super) tracing: RawTracing,
    pub(super) flows_dir: Option<String>,
    pub(super) flows: Vec<centralino_flows::RawFlow>,
    /// Names of the files the last flows came from (not in the TOML).
    #[serde(skip)]
    pub(super) flow_files: Vec<String>,
    pub(super) scripts: Vec<RawScript>,
    pub(super) tenants: Vec<RawTenant>,
    pub(super) trunks: Vec<RawTrunk>,
    pub(super) queues: Vec<RawQueue>,
    pub(super) agents: Vec<RawAgent>,
    pub(super) campaigns: Vec<centralino_campaigns::spec::RawSpec>,
    pub(super) outbound: RawOutbound,
    pub(super) cluster: Option<cluster::RawCluster>,
    pub(super) agreements: Vec<cluster::RawAgreement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOutbound {
    pub(super) max_attempts_per_citizen_per_day: u32,
}

impl Default for RawOutbound {
    fn default() -> Self {
        Self {
            max_attempts_per_citizen_per_day: 3,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSip {
    pub(super) listen: Vec<String>,
    pub(super) transports: Vec<String>,
    pub(super) realm: String,
    pub(super) digest_algorithms: Vec<String>,
    pub(super) digest_md5_user_agents: Vec<String>,
    pub(super) t1_milliseconds: u64,
    pub(super) t2_milliseconds: u64,
    pub(super) t4_milliseconds: u64,
    pub(super) max_message_bytes: usize,
    pub(super) max_headers: usize,
    pub(super) max_header_line_bytes: usize,
    pub(super) max_body_bytes: usize,
    pub(super) max_calls: usize,
    pub(super) max_calls_per_second: u32,
    pub(super) io_threads: usize,
    pub(super) engine_nice: i32,
    pub(super) engine_realtime_priority: u32,
    pub(super) overload_lag_milliseconds: u64,
    pub(super) max_tcp_connections: usize,
    pub(super) tcp_idle_timeout_seconds: u64,
    pub(super) user_agent: String,
    pub(super) drain_seconds: u64,
    pub(super) max_transactions_per_source: usize,
    pub(super) tls_listen: Vec<String>,
    pub(super) tls_cert_file: Option<String>,
    pub(super) tls_key_file: Option<String>,
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
            io_threads: 0,
            engine_nice: 0,
            engine_realtime_priority: 0,
            overload_lag_milliseconds: 50,
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
pub(super) struct RawScript {
    pub(super) name: String,
    #[serde(default)]
    pub(super) tenant: Option<String>,
    pub(super) start: String,
    pub(super) questions: BTreeMap<String, RawQuestion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuestion {
    pub(super) text: String,
    #[serde(default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) answers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) next: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNotifications {
    pub(super) url: Option<String>,
    pub(super) token: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) max_attempts: u32,
    pub(super) retry_seconds: u64,
}

/// `[tracing]`: call spans to an OpenTelemetry collector (off when
/// `otlp_endpoint` is absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTracing {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) service_name: String,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "centralino".to_owned(),
        }
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) retention_days: u32,
    pub(super) audit_key_file: Option<String>,
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
pub(super) struct RawApi {
    pub(super) tokens: Vec<RawToken>,
    pub(super) session_hours: u32,
    pub(super) session_key_file: Option<String>,
    pub(super) callbacks_per_source_per_minute: u32,
    pub(super) callbacks_per_number_per_day: u32,
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
pub(super) struct RawToken {
    pub(super) name: String,
    pub(super) token: String,
    pub(super) role: String,
    #[serde(default)]
    pub(super) agent: Option<String>,
    #[serde(default)]
    pub(super) tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMedia {
    pub(super) port_min: u16,
    pub(super) port_max: u16,
    pub(super) advertise_address: Option<String>,
    pub(super) codecs: Vec<String>,
    pub(super) latch: String,
    pub(super) inactivity_timeout_seconds: u64,
    pub(super) threads: usize,
    pub(super) music_on_hold: Option<String>,
    pub(super) sounds_dir: Option<String>,
    pub(super) prompts_dir: Option<String>,
    pub(super) recordings_dir: Option<String>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    pub(super) listen: String,
    pub(super) header_timeout_seconds: u64,
    pub(super) idle_timeout_seconds: u64,
    pub(super) max_connections: usize,
    pub(super) tls_cert_file: Option<String>,
    pub(super) tls_key_file: Option<String>,
    pub(super) allowed_origins: Vec<String>,
    pub(super) metrics_token_file: Option<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            header_timeout_seconds: 10,
            idle_timeout_seconds: 10,
            max_connections: 1024,
            tls_cert_file: None,
            tls_key_file: None,
            allowed_origins: Vec::new(),
            metrics_token_file: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogging {
    pub(super) unmask_numbers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRegistrar {
    pub(super) min_expires_seconds: u64,
    pub(super) max_expires_seconds: u64,
    pub(super) default_expires_seconds: u64,
    pub(super) max_contacts: usize,
    pub(super) nonce_lifetime_seconds: u64,
    pub(super) state_after_login: String,
    pub(super) ban_after_user_failures: u32,
    pub(super) ban_after_address_failures: u32,
    pub(super) ban_seconds: u64,
    pub(super) qualify_seconds: u64,
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
pub(super) struct RawTenant {
    pub(super) name: String,
    #[serde(default)]
    pub(super) dial_plan: Option<RawDialPlan>,
    /// The digest algorithms this tenant's operators may use (a subset of
    /// `sip.digest_algorithms`; all of them when left out).
    #[serde(default)]
    pub(super) digest_algorithms: Option<Vec<String>>,
    /// SIP accounts of this tenant (its operators' usernames) whose phones
    /// may listen in on its operators' calls by feature code.
    #[serde(default)]
    pub(super) supervisor_phones: Vec<String>,
    /// E.164 prefixes operators may transfer this tenant's callers to
    /// (none when left out).
    #[serde(default)]
    pub(super) transfer_numbers: Vec<String>,
}

/// `[tenants.dial_plan]`: what this tenant's trunks may dial. Every key
/// defaults to the Italian plan's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDialPlan {
    #[serde(default)]
    pub(super) country_code: Option<String>,
    #[serde(default)]
    pub(super) allow: Option<Vec<String>>,
    #[serde(default)]
    pub(super) block: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrunk {
    pub(super) name: String,
    pub(super) tenant: String,
    pub(super) peers: Vec<String>,
    #[serde(default)]
    pub(super) outbound: Option<String>,
    #[serde(default)]
    pub(super) caller_id: Option<String>,
    #[serde(default)]
    pub(super) options_seconds: u64,
    #[serde(default)]
    pub(super) dids: BTreeMap<String, RawDid>,
    #[serde(default)]
    pub(super) tls_client_ca_file: Option<String>,
    #[serde(default)]
    pub(super) tls_peer_names: Vec<String>,
    #[serde(default)]
    pub(super) outbound_transport: Option<String>,
    #[serde(default)]
    pub(super) outbound_tls_name: Option<String>,
    #[serde(default)]
    pub(super) outbound_tls_ca_file: Option<String>,
    #[serde(default)]
    pub(super) outbound_tls_cert_file: Option<String>,
    #[serde(default)]
    pub(super) outbound_tls_key_file: Option<String>,
    #[serde(default)]
    pub(super) auth_username: Option<String>,
    #[serde(default)]
    pub(super) auth_password: Option<String>,
    #[serde(default = "default_asserted_identity")]
    pub(super) asserted_identity: bool,
}

/// Carriers are in the node's trust domain by default (RFC 3325): they
/// are known by address or certificate already.
pub(super) fn default_asserted_identity() -> bool {
    true
}

/// A DID maps to a queue name, or to a queue with what its callers need.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawDid {
    Queue(String),
    Full(RawDidFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDidFull {
    #[serde(default)]
    pub(super) queue: Option<String>,
    #[serde(default)]
    pub(super) flow: Option<String>,
    #[serde(default)]
    pub(super) requirements: Option<String>,
    #[serde(default)]
    pub(super) priority: i32,
    #[serde(default)]
    pub(super) fragile: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRing {
    pub(super) after_seconds: u64,
    pub(super) requirements: String,
    #[serde(default)]
    pub(super) tenants: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub(super) name: String,
    pub(super) tenant: String,
    #[serde(default = "default_strategy")]
    pub(super) strategy: String,
    #[serde(default = "default_ring")]
    pub(super) ring_timeout_seconds: u64,
    #[serde(default = "default_no_answer")]
    pub(super) max_no_answer: u32,
    #[serde(default = "default_max_wait")]
    pub(super) max_wait_seconds: u64,
    #[serde(default)]
    pub(super) wrap_up_seconds: u64,
    #[serde(default = "default_max_waiting")]
    pub(super) max_waiting: usize,
    #[serde(default = "default_exit")]
    pub(super) exit_status: u16,
    #[serde(default)]
    pub(super) requirements: Option<String>,
    #[serde(default = "default_ring_all_width")]
    pub(super) ring_all_width: u8,
    #[serde(default = "default_weight")]
    pub(super) weight: f64,
    #[serde(default = "default_priority_step")]
    pub(super) priority_step_seconds: u64,
    #[serde(default)]
    pub(super) fragile_max_wait_seconds: Option<u64>,
    #[serde(default)]
    pub(super) overflow: Vec<RawRing>,
    #[serde(default = "default_retry")]
    pub(super) retry_seconds: u64,
    #[serde(default)]
    pub(super) announce_seconds: u64,
    #[serde(default)]
    pub(super) music_on_hold: Option<String>,
    #[serde(default)]
    pub(super) record: bool,
    #[serde(default)]
    pub(super) script: Option<String>,
    #[serde(default)]
    pub(super) callback_key: Option<String>,
    #[serde(default)]
    pub(super) callback_offer_prompts: Vec<String>,
    #[serde(default)]
    pub(super) callback_confirm_prompts: Vec<String>,
    #[serde(default)]
    pub(super) whisper: Vec<String>,
    #[serde(default)]
    pub(super) callback_whisper: Option<Vec<String>>,
    #[serde(default)]
    pub(super) callback_number: Option<RawCallbackNumber>,
    #[serde(default)]
    pub(super) callback_hours: Option<centralino_flows::def::RawCalendar>,
    #[serde(default = "default_callback_attempts")]
    pub(super) callback_max_attempts: u32,
    #[serde(default = "default_callback_retry")]
    pub(super) callback_retry_seconds: u64,
    #[serde(default)]
    pub(super) callback_retries: BTreeMap<String, RawRetry>,
    #[serde(default)]
    pub(super) callback_mode: Option<String>,
    #[serde(default = "default_service_level")]
    pub(super) service_level_seconds: u64,
    #[serde(default = "default_service_level2")]
    pub(super) service_level2_seconds: u64,
    #[serde(default = "default_short_abandon")]
    pub(super) short_abandon_seconds: u64,
    #[serde(default = "default_service_level_target")]
    pub(super) service_level_target: f64,
    #[serde(default = "default_expected_handle")]
    pub(super) expected_handle_seconds: u64,
    #[serde(default = "default_callback_promise")]
    pub(super) callback_promise_minutes: u64,
    #[serde(default)]
    pub(super) when_unserved: Option<String>,
    #[serde(default)]
    pub(super) overflow_queue: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallbackNumber {
    #[serde(default)]
    pub(super) read_prompts: Vec<String>,
    #[serde(default)]
    pub(super) confirm_prompts: Vec<String>,
    #[serde(default)]
    pub(super) enter_prompts: Vec<String>,
    #[serde(default = "default_number_timeout")]
    pub(super) timeout_seconds: u64,
}

pub(super) fn default_number_timeout() -> u64 {
    10
}

pub(super) fn default_callback_attempts() -> u32 {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) attempts: u32,
    pub(super) delay_seconds: u64,
}

pub(super) fn default_callback_retry() -> u64 {
    300
}

pub(super) fn default_retry() -> u64 {
    5
}

pub(super) fn default_service_level() -> u64 {
    20
}

pub(super) fn default_service_level2() -> u64 {
    60
}

pub(super) fn default_short_abandon() -> u64 {
    5
}

pub(super) fn default_expected_handle() -> u64 {
    180
}

pub(super) fn default_callback_promise() -> u64 {
    120
}

pub(super) fn default_service_level_target() -> f64 {
    0.8
}

pub(super) fn default_ring_all_width() -> u8 {
    3
}

pub(super) fn default_weight() -> f64 {
    1.0
}

pub(super) fn default_priority_step() -> u64 {
    60
}

pub(super) fn default_strategy() -> String {
    "longest_idle".into()
}

pub(super) fn default_ring() -> u64 {
    15
}

pub(super) fn default_no_answer() -> u32 {
    3
}

pub(super) fn default_max_wait() -> u64 {
    300
}

pub(super) fn default_max_waiting() -> usize {
    1000
}

pub(super) fn default_exit() -> u16 {
    480
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) username: String,
    pub(super) tenant: String,
    #[serde(default)]
    pub(super) password: Option<String>,
    #[serde(default)]
    pub(super) ha1_md5: Option<String>,
    #[serde(default)]
    pub(super) ha1_sha256: Option<String>,
    #[serde(default)]
    pub(super) queues: Vec<String>,
    #[serde(default = "default_site")]
    pub(super) site: String,
    #[serde(default)]
    pub(super) skills: BTreeMap<String, u8>,
    #[serde(default)]
    pub(super) languages: Vec<String>,
}

pub(super) fn default_site() -> String {
    "default".into()
}
