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

pub mod campaigns;
mod cluster;
mod problems;
mod queues;
mod raw;
pub mod reload;
mod sections;
mod seed;
mod settings;
mod trunks;

pub use cluster::{ClusterConfig, Durability};
use problems::*;
use queues::queue;
use raw::*;
use sections::*;
pub use seed::Seed;
use seed::order_queues;
pub use settings::*;
use trunks::{check_trunks, trunk};

use centralino_routing::{
    Attributes, CallSpec, Catalog, QueueSettings, Requirement, Ring, Strategy,
};
use centralino_sip::Limits;
use centralino_sip::auth::{Algorithm, Credentials};
use centralino_sip::registrar::RegistrarConfig;
use centralino_sip::txn::TimerConfig;
use centralino_types::TenantId;
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

/// Where Debian's `asterisk-core-sounds-it-wav` puts the Italian prompts.
pub const DEFAULT_SOUNDS: &str = "/usr/share/asterisk/sounds/it";

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// SIP.
    pub sip: SipConfig,
    /// HTTP listen address (metrics, health).
    pub http_listen: SocketAddr,
    /// HTTP connection timeouts and cap.
    pub http_limits: HttpLimits,
    /// HTTPS and the origins allowed to open WebSockets.
    pub http_web: HttpWeb,
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
    /// `[tracing]`: call spans to an OpenTelemetry collector, off by default.
    pub tracing: Option<Tracing>,
    /// Tenant names.
    pub tenants: Vec<String>,
    /// Each tenant's outbound dial plan (by tenant index): every number
    /// that leaves through one of its trunks passes it.
    pub dial_plans: Vec<DialPlan>,
    /// Each tenant's supervisors' SIP accounts (by tenant index): their
    /// phones may listen in on the tenant's operators (`*7`, `*8`, `*9`
    /// followed by the operator's username).
    pub supervisor_phones: Vec<Vec<String>>,
    /// Each tenant's E.164 prefixes its operators may transfer callers to
    /// (by tenant index; the dial plan applies as well).
    pub transfer_numbers: Vec<Vec<String>>,
    /// Trunks.
    pub trunks: Vec<Trunk>,
    /// Queues.
    pub queues: Vec<Queue>,
    /// Operators.
    pub agents: Vec<Agent>,
    /// Skill, language, site, tenant and queue names (for expressions
    /// given at run time, e.g. by the API).
    pub catalog: Catalog,
    /// Outbound campaigns defined in the file (more come through the API).
    pub campaigns: Vec<centralino_campaigns::spec::Spec>,
    /// The same campaigns as written (what the store keeps of each).
    pub raw_campaigns: Vec<centralino_campaigns::spec::RawSpec>,
    /// Limits across every campaign.
    pub outbound: campaigns::OutboundLimits,
    /// This node in a national network (`None`: alone).
    pub cluster: Option<ClusterConfig>,
    /// Agreements between firms to lend operators across the network.
    pub agreements: Vec<centralino_cluster::Agreement>,
    /// The document it was read from (flow files under `flow_files`):
    /// [`reload::changed_keys`] compares two of them. Shared by every
    /// copy of the configuration: with 120,000 provisioned operators it
    /// is about 75 MB, and the engine, the API and the loader each hold
    /// a `Config`.
    pub source: std::sync::Arc<toml::Table>,
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
        routing_agents(&self.agents)
    }

    /// The queues as the router takes them.
    pub fn routing_queues(&self) -> Vec<QueueSettings> {
        routing_queues(&self.queues)
    }

    /// The call engine's part.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            sip: self.sip.clone(),
            registrar: self.registrar.clone(),
            nonce_lifetime: self.nonce_lifetime,
            login_paused: self.login_paused,
            qualify: self.qualify,
            media: self.media.clone(),
            flows: self.flows.clone(),
            scripts: self.scripts.clone(),
            tenants: self.tenants.clone(),
            dial_plans: self.dial_plans.clone(),
            supervisor_phones: self.supervisor_phones.clone(),
            transfer_numbers: self.transfer_numbers.clone(),
            trunks: self.trunks.clone(),
            queues: self.queues.clone(),
            agents: self.agents.clone(),
            catalog: self.catalog.clone(),
            agreements: self.agreements.clone(),
        }
    }
}

fn routing_agents(agents: &[Agent]) -> Vec<(String, Attributes)> {
    agents
        .iter()
        .map(|a| (a.username.clone(), a.attributes.clone()))
        .collect()
}

fn routing_queues(queues: &[Queue]) -> Vec<QueueSettings> {
    queues.iter().map(|q| q.routing.clone()).collect()
}

/// What the call engine (`centralino-b2bua`) is configured with: SIP,
/// registrar, media, IVR, scripts, tenants and their dial plans, trunks,
/// queues and operators. Not the HTTP endpoint, API tokens and sessions,
/// the SMS hook, retention or the audit key: those belong to the drivers
/// and the store. Field meanings as in [`Config`].
#[derive(Clone, Debug)]
#[allow(missing_docs)] // Each field is documented on `Config`.
pub struct EngineConfig {
    pub sip: SipConfig,
    pub registrar: RegistrarConfig,
    pub nonce_lifetime: Duration,
    pub login_paused: bool,
    pub qualify: Option<Duration>,
    pub media: MediaConfig,
    pub flows: Vec<std::sync::Arc<centralino_flows::Flow>>,
    pub scripts: Vec<Script>,
    pub tenants: Vec<String>,
    pub dial_plans: Vec<DialPlan>,
    pub supervisor_phones: Vec<Vec<String>>,
    pub transfer_numbers: Vec<Vec<String>>,
    pub trunks: Vec<Trunk>,
    pub queues: Vec<Queue>,
    pub agents: Vec<Agent>,
    pub catalog: Catalog,
    pub agreements: Vec<centralino_cluster::Agreement>,
}

impl EngineConfig {
    /// The operators as the router takes them.
    pub fn routing_agents(&self) -> Vec<(String, Attributes)> {
        routing_agents(&self.agents)
    }

    /// The queues as the router takes them.
    pub fn routing_queues(&self) -> Vec<QueueSettings> {
        routing_queues(&self.queues)
    }
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
        Self::from_toml_seeded(text, flow_files, &Seed::default())
    }

    /// As [`Self::from_toml_with_flows`], for a reload: every name the
    /// running configuration resolved (skills, languages, sites) keeps its
    /// number in `seed`, the running one's catalog, and new names come
    /// after, so operators with new skills apply live; the running queues
    /// keep their places, new ones come after, and one the file no longer
    /// has stays in its place, retired (see [`Self::seed`]).
    pub fn from_toml_seeded(
        text: &str,
        flow_files: &[(String, String)],
        seed: &Seed,
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
        let mut config = Self::validate(raw, seed)?;
        config.source = std::sync::Arc::new(source);
        Ok(config)
    }

    fn validate(mut raw: RawConfig, seed: &Seed) -> Result<Self, ConfigError> {
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
        engine_threads(&mut p, &raw.sip);
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
        let http_web = http_web(&raw.http, &mut p);
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

        let (tenants, dial_plans, tenant_algs) = tenant_sections(&mut p, &raw.tenants, &algs);

        // Names first: requirement expressions are resolved against every
        // skill, language and site some operator has, so a typo is an error
        // here rather than a queue that waits for nobody.
        let mut catalog = seed.catalog.clone();
        for t in &tenants {
            let _ = catalog.tenant(t);
        }
        // A reload keeps the running queues' places (the router's ids);
        // one the file no longer has keeps its place, retired, with no
        // name anything can refer to.
        let places = order_queues(&mut raw.queues, &seed.queues);
        let queue_names: Vec<String> = raw
            .queues
            .iter()
            .zip(&places)
            .map(|(q, at)| at.map(|_| q.name.clone()).unwrap_or_default())
            .collect();
        for q in queue_names.iter().filter(|q| !q.is_empty()) {
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
        let names = Names {
            tenants: &tenants,
            catalog: &catalog,
            queue_names: &queue_names,
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
            if let Some(t) = &sc.tenant
                && !tenants.contains(t)
            {
                p.add(format!("{path}.tenant"), format!("unknown tenant {t:?}"));
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
                tenant: sc.tenant.clone(),
                start: sc.start.clone(),
                questions,
            });
        }
        for (i, (q, at)) in raw.queues.iter().zip(&places).enumerate() {
            match at {
                Some(at) => queues.push(queue(&names, &scripts, &mut p, (i, *at), q)),
                None => {
                    // Its settings as a bare queue: nothing reaches it.
                    let mut quiet = Problems(Vec::new());
                    let mut retired = queue(&names, &scripts, &mut quiet, (i, i), q);
                    retired.retired = true;
                    queues.push(retired);
                }
            }
        }
        queues::check_overflows(&queues, &mut p);

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
            trunks.push(trunk(
                &names,
                &queues,
                &flow_names,
                sip_tls.is_some(),
                &mut p,
                i,
                t,
            ));
        }
        check_trunks(
            &trunks,
            (flows.len() == raw.flows.len()).then_some(&flows[..]),
            &queues,
            &queue_names,
            &dial_plans,
            &tenants,
            &mut p,
        );

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
            let tenant = names.tenant_of(&mut p, format!("{path}.tenant"), &a.tenant);
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
                .get(tenant.index())
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
                match queue_names.iter().position(|n| !n.is_empty() && n == q) {
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
                tenant: tenant.0 as u16,
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

        let supervisor_phones = supervisor_phones(&mut p, &raw.tenants, &agents);
        let transfer_numbers = transfer_numbers(&mut p, &raw.tenants);
        let media = validate_media(&mut p, &raw.media);
        let tracing = tracing_section(&mut p, &raw.tracing);
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
            // The audit log and wallboard sessions name a token by its
            // name: one name, one token.
            if raw.api.tokens[..i].iter().any(|o| o.name == t.name) {
                p.add(format!("{path}.name"), "used twice");
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
            for (q, at) in raw.queues.iter().zip(&places) {
                if let (true, Some(i)) = (q.record, at) {
                    p.add(
                        format!("queues[{i}].record"),
                        "needs media.recordings_dir (where the recordings go)",
                    );
                }
            }
        }
        let campaigns = campaigns::campaigns(
            &raw.campaigns,
            &campaigns::Names {
                tenants: &tenants,
                queues: &queues,
                trunks: &trunks,
                scripts: &scripts,
            },
            &mut p,
        );
        let outbound = campaigns::outbound(&raw.outbound, &mut p);
        let cluster = raw
            .cluster
            .as_ref()
            .map(|c| cluster::cluster(c, listen.first().copied(), &mut p));
        let agreements = cluster::agreements(&raw.agreements, cluster.is_some(), &mut p);
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
                io_threads: raw.sip.io_threads,
                engine_nice: raw.sip.engine_nice,
                engine_realtime_priority: raw.sip.engine_realtime_priority as u8,
                overload_lag: Duration::from_millis(raw.sip.overload_lag_milliseconds),
                max_tcp_connections: raw.sip.max_tcp_connections,
                max_transactions_per_source: raw.sip.max_transactions_per_source,
                tcp_idle_timeout: Duration::from_secs(raw.sip.tcp_idle_timeout_seconds),
                user_agent: raw.sip.user_agent,
                drain: Duration::from_secs(raw.sip.drain_seconds),
                tls: sip_tls,
            },
            http_listen,
            http_web,
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
            tracing,
            tenants,
            dial_plans,
            supervisor_phones,
            transfer_numbers,
            trunks,
            queues,
            agents,
            catalog,
            campaigns,
            raw_campaigns: raw.campaigns,
            outbound,
            cluster,
            agreements,
            source: std::sync::Arc::default(),
        })
    }
}

#[cfg(test)]
mod tests;
