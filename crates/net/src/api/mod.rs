//! The HTTP API: `/api/v1/callbacks` ("Ti chiamiamo noi" requests from a
//! web form or an operator desk). Bearer tokens from the configuration;
//! every input checked with a message that says what is wrong; a `201` is
//! sent only once the request is on disk (the store commits with
//! `synchronous = FULL` before it answers).
//!
//! One thread owns the SQLite store; handlers talk to it over a channel, so
//! a slow disk never blocks the engine's thread.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use centralino_b2bua::{AgentCall, CampaignView, DeskState, Metrics, QueueView};
use centralino_config::{ApiToken, Config};
use centralino_routing::{Catalog, Requirement};
use centralino_store::service::{RecordSink, ServiceError, StoreHandle, StoreReq};
use centralino_store::{Callback, Created, Edit, NewCallback, Patch, Status, StoreError};
use centralino_types::Masked;
use centralino_types::dialplan::DialPlan;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::metrics::NetMetrics;
use crate::session::{SessionError, Sessions};

// One file per concern; what they share is imported here and reaches
// each of them through `use super::*`.
mod admin;
mod auth;
mod callbacks;
mod campaigns;
mod control;
mod csv;
mod desk;
mod desks;
mod forecast;
mod login;
mod monitor;
mod openapi;
mod operators;
mod reports;
mod scripts;
mod sms;
mod supervisor;
mod time;
mod ws;

use control::Reloads;
pub use control::{Loader, ReloadError};
pub use desks::Desks;
pub use reports::{
    agents as agent_report_text, replay as replay_log_text, report as queue_report_text,
};

use admin::*;
use auth::*;
pub(crate) use auth::{bearer_is, session_cookie};
pub(crate) use callbacks::random_id;
use callbacks::*;
use campaigns::*;
use csv::*;
use desk::*;
use desks::*;
use login::*;
use operators::*;
use scripts::*;
use sms::*;
use supervisor::*;
use time::*;
use ws::*;

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The data directory cannot be created.
    #[error("data directory {0}: {1}")]
    Dir(std::path::PathBuf, std::io::Error),
    /// The database cannot be opened, or its thread started.
    #[error("store: {0}")]
    Store(StoreError),
    /// The SMS hook's TLS client cannot be set up (CA file).
    #[error("notifications TLS: {0}")]
    Tls(String),
    /// Desk sessions cannot be signed (key file).
    #[error("{0}")]
    Session(#[from] SessionError),
}

/// What the API serves from the configuration: swapped whole by a
/// reload, so a request sees one version from its first check to its
/// answer, and a removed token or an old password stops working at once.
struct Live {
    tokens: Vec<ApiToken>,
    /// Queue name → its tenant's name and dial plan.
    queues: HashMap<String, (String, DialPlan)>,
    catalog: Catalog,
    scripts: Vec<centralino_config::Script>,
    /// Outbound trunks (name → tenant): what a campaign may dial through.
    outbound_trunks: HashMap<String, String>,
    /// The numbers each tenant may present (its trunks' caller IDs and
    /// DIDs).
    presentable: HashMap<String, HashSet<String>>,
    /// The operators' SIP secrets (desk logins check them).
    credentials: HashMap<String, centralino_sip::auth::Credentials>,
    realm: String,
    /// Configured operators (desks exist only for them).
    agents: HashSet<String>,
    /// The tenants' names.
    tenants: HashSet<String>,
    /// Each operator's tenant (supervisor views are per tenant).
    agent_tenants: Vec<(String, String)>,
    /// Each operator's queues (their desktop's figures).
    agent_queues: HashMap<String, Vec<String>>,
    /// Each queue's service thresholds (reports).
    targets: Arc<HashMap<String, centralino_store::Thresholds>>,
    /// Each queue's callback promise (reports).
    promises: Arc<reports::Promises>,
    /// Each running queue's service level target and T (seconds): what
    /// the forecast's operators are counted for.
    service: HashMap<String, (f64, f64)>,
}

impl Live {
    fn of(config: &Config) -> Self {
        Self {
            tokens: config.api_tokens.clone(),
            queues: config
                .queues
                .iter()
                // A queue removed by a reload: nothing may name it.
                .filter(|q| !q.retired)
                .map(|q| {
                    let tenant = firm(config, q.tenant);
                    let plan = config
                        .dial_plans
                        .get(q.tenant.index())
                        .cloned()
                        .unwrap_or_default();
                    (q.routing.name.clone(), (tenant, plan))
                })
                .collect(),
            targets: Arc::new(reports::thresholds(config)),
            promises: Arc::new(reports::promises(config)),
            service: config
                .queues
                .iter()
                .filter(|q| !q.retired)
                .map(|q| {
                    let s = &q.service;
                    (q.routing.name.clone(), (s.target, s.level.as_secs_f64()))
                })
                .collect(),
            catalog: config.catalog.clone(),
            scripts: config.scripts.clone(),
            outbound_trunks: config
                .trunks
                .iter()
                .filter(|t| t.outbound.is_some())
                .map(|t| (t.name.clone(), firm(config, t.tenant)))
                .collect(),
            presentable: {
                let mut m: HashMap<String, HashSet<String>> = HashMap::new();
                for t in &config.trunks {
                    let tenant = firm(config, t.tenant);
                    let set = m.entry(tenant).or_default();
                    set.insert(t.caller_id.clone());
                    set.extend(t.dids.keys().cloned());
                }
                m
            },
            credentials: config
                .agents
                .iter()
                .map(|a| (a.username.clone(), a.credentials.clone()))
                .collect(),
            realm: config.sip.realm.clone(),
            agents: config.agents.iter().map(|a| a.username.clone()).collect(),
            tenants: config.tenants.iter().cloned().collect(),
            agent_queues: config
                .agents
                .iter()
                .map(|a| {
                    let queues = a
                        .queues
                        .iter()
                        .filter_map(|&q| config.queues.get(q))
                        .filter(|q| !q.retired)
                        .map(|q| q.routing.name.clone())
                        .collect();
                    (a.username.clone(), queues)
                })
                .collect(),
            agent_tenants: agent_firms(config),
        }
    }

    /// What an operator's desk sessions are bound to: their SIP secret as
    /// configured now (`None`: no such operator).
    /// What a session of `kind` for `who` is bound to: an operator's SIP
    /// secret, or a wallboard token's value (its SHA-256: a changed token
    /// ends its sessions). Only supervisor tokens open one: an admin's
    /// rights never sit in a wall screen's cookie.
    fn session_secret_for(&self, kind: &str, who: &str) -> Option<Vec<u8>> {
        if kind == crate::session::TOKEN {
            let t = self
                .tokens
                .iter()
                .find(|t| t.name == who && t.role == centralino_config::Role::Supervisor)?;
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.token.as_bytes());
            Some(d.as_ref().to_vec())
        } else {
            self.session_secret(who)
        }
    }

    fn session_secret(&self, agent: &str) -> Option<Vec<u8>> {
        let c = self.credentials.get(agent)?;
        let (md5, sha) = (c.ha1_md5.as_deref(), c.ha1_sha256.as_deref());
        Some(format!("{}:{}", md5.unwrap_or(""), sha.unwrap_or("")).into_bytes())
    }

    /// Whether a token limited to `tenant` may see a callback of `queue`.
    fn sees(&self, tenant: Option<&str>, queue: &str) -> bool {
        tenant.is_none_or(|t| self.queues.get(queue).is_some_and(|(qt, _)| qt == t))
    }
}

/// The name of firm `t` of `config`.
fn firm(config: &Config, t: centralino_types::TenantId) -> String {
    config.tenants.get(t.index()).cloned().unwrap_or_default()
}

/// The configuration's queues with their firms (name, tenant), those a
/// reload removed left out: what the store binds (`queue_owners.rs`).
pub(crate) fn queue_owners(config: &Config) -> Vec<(String, String)> {
    config
        .queues
        .iter()
        .filter(|q| !q.retired)
        .map(|q| (q.routing.name.clone(), firm(config, q.tenant)))
        .collect()
}

/// Each operator of `config` with their firm.
fn agent_firms(config: &Config) -> Vec<(String, String)> {
    config
        .agents
        .iter()
        .map(|a| (a.username.clone(), firm(config, a.tenant)))
        .collect()
}

/// The operators of `old` (name, firm) whose firm `new` changes or who
/// are gone from it.
fn left_their_firm(old: &[(String, String)], new: &[(String, String)]) -> Vec<String> {
    let now: HashMap<&str, &str> = new.iter().map(|(a, t)| (a.as_str(), t.as_str())).collect();
    old.iter()
        .filter(|(a, t)| now.get(a.as_str()) != Some(&t.as_str()))
        .map(|(a, _)| a.clone())
        .collect()
}

/// Per-client and per-number bounds on callback requests.
struct CallbackLimiter {
    per_source: crate::limits::WindowLimiter<std::net::IpAddr>,
    per_number: crate::limits::WindowLimiter<String>,
}

/// What the API needs.
#[derive(Clone)]
pub struct Api {
    store: StoreHandle,
    /// The database file, for reports on a reader connection of their own.
    db: Arc<std::path::PathBuf>,
    live: Arc<std::sync::RwLock<Arc<Live>>>,
    limiter: Arc<std::sync::Mutex<CallbackLimiter>>,
    reload: Reloads,
    /// The engine's queue (pauses, reloads).
    engine: crate::handle::EngineHandle,
    /// Imports (contacts, do-not-call lists) run one at a time.
    imports: Arc<tokio::sync::Semaphore>,
    desks: Desks,
    /// Desk logins: the operators' SIP secrets, their realm, the signer
    /// and the brute-force throttle (shared with nothing else).
    logins: Arc<Logins>,
    sessions: Arc<Sessions>,
    /// The engine's metrics the API counts in (callbacks, dial plan).
    metrics: Metrics,
    /// The API's, the store's and the desks' own.
    net: NetMetrics,
    /// How the store's thread is doing (for `/healthz`).
    store_probe: crate::health::StoreProbe,
    /// The latest staffing forecast per queue (`forecast`).
    forecasts: forecast::Forecasts,
    /// The data directory's lock, held while the node lives (one node
    /// per directory; `rebind-queue` waits for it to stop).
    _dir_lock: Arc<std::fs::File>,
}

/// Every API route: its path, its methods, and the handlers. The router is
/// built from this table only, and `routes()` lists the same table for the
/// test that calls each route with no token, a wrong one and an expired
/// session (TEST-MATRIX D11): a route cannot be added without that test
/// calling it.
fn table() -> Vec<Route> {
    use axum::routing::post;
    let route = |path, methods, names, audit, handler| Route {
        path,
        methods,
        names,
        audit,
        handler,
    };
    vec![
        route(
            "/api/v1/callbacks",
            &["GET", "POST"],
            &["callbacks_list", "callbacks_create"],
            Audit::Bearer,
            get(list_callbacks).post(create_callback),
        ),
        route(
            "/api/v1/callbacks/{id}",
            &["GET", "PATCH", "DELETE"],
            &["callbacks_get", "callbacks_patch", "callbacks_delete"],
            Audit::Bearer,
            get(get_callback)
                .patch(patch_callback)
                .delete(delete_callback),
        ),
        route(
            "/api/v1/scripts/{name}",
            &["GET"],
            &["scripts_get"],
            Audit::CountOnly,
            get(get_script),
        ),
        route(
            "/api/v1/agents/{name}/call",
            &["GET"],
            &["agent_call"],
            Audit::Refusals,
            get(get_agent_call),
        ),
        route(
            "/api/v1/agents/{name}/figures",
            &["GET"],
            &["agent_figures"],
            Audit::Refusals,
            get(get_agent_figures),
        ),
        route(
            "/api/v1/agents/{name}/events",
            &["GET"],
            &["agent_events"],
            Audit::Bearer,
            get(agent_events),
        ),
        route(
            "/api/v1/agents/{name}/state",
            &["POST"],
            &["agent_state"],
            Audit::Bearer,
            post(agent_state),
        ),
        route(
            "/api/v1/agents/{name}/preview",
            &["POST"],
            &["agent_preview"],
            Audit::Bearer,
            post(agent_preview),
        ),
        route(
            "/api/v1/agents/{name}/monitor",
            &["POST", "PATCH", "DELETE"],
            &["agent_monitor", "agent_monitor_mode", "agent_monitor_end"],
            Audit::Bearer,
            post(monitor::monitor_start)
                .patch(monitor::monitor_patch)
                .delete(monitor::monitor_delete),
        ),
        route(
            "/api/v1/queues",
            &["GET"],
            &["queues_get"],
            Audit::Bearer,
            get(get_queues),
        ),
        route(
            "/api/v1/reports/queues",
            &["GET"],
            &["reports_queues"],
            Audit::Bearer,
            get(reports::queue_report),
        ),
        route(
            "/api/v1/reports/agents",
            &["GET"],
            &["reports_agents"],
            Audit::Bearer,
            get(reports::agent_report),
        ),
        route(
            "/api/v1/queues/events",
            &["GET"],
            &["queue_events"],
            Audit::Bearer,
            get(queue_events),
        ),
        route(
            "/api/v1/agents",
            &["GET", "POST"],
            &["agents_get", "agents_create"],
            Audit::Bearer,
            get(get_agents).post(agents_create),
        ),
        route(
            "/api/v1/agents/{name}",
            &["PUT", "DELETE"],
            &["agent_put", "agent_delete"],
            Audit::Bearer,
            axum::routing::put(agent_put).delete(agent_delete),
        ),
        route(
            "/api/v1/cluster",
            &["GET"],
            &["cluster_get"],
            Audit::Bearer,
            get(get_cluster),
        ),
        route(
            "/api/v1/config/reload",
            &["POST"],
            &["config_reload"],
            Audit::Bearer,
            post(reload_config),
        ),
        // Counted only: the handler audits the user name tried.
        route(
            "/api/v1/login",
            &["GET", "POST", "DELETE"],
            &["login_whoami", "login", "logout"],
            Audit::CountOnly,
            get(whoami).post(login).delete(logout),
        ),
        route(
            "/api/v1/campaigns",
            &["GET", "POST"],
            &["campaigns_list", "campaigns_create"],
            Audit::Bearer,
            get(campaigns_list).post(campaigns_create),
        ),
        route(
            "/api/v1/campaigns/{id}",
            &["GET", "DELETE"],
            &["campaigns_get", "campaigns_delete"],
            Audit::Bearer,
            get(campaign_get).delete(campaign_delete),
        ),
        route(
            "/api/v1/campaigns/{id}/start",
            &["POST"],
            &["campaigns_start"],
            Audit::Bearer,
            post(campaign_start),
        ),
        route(
            "/api/v1/campaigns/{id}/pause",
            &["POST"],
            &["campaigns_pause"],
            Audit::Bearer,
            post(campaign_pause),
        ),
        route(
            "/api/v1/campaigns/{id}/stop",
            &["POST"],
            &["campaigns_stop"],
            Audit::Bearer,
            post(campaign_stop),
        ),
        route(
            "/api/v1/campaigns/{id}/contacts",
            &["GET", "POST"],
            &["campaign_contacts_list", "campaign_contacts_import"],
            Audit::Bearer,
            get(contacts_list).post(contacts_import),
        ),
        route(
            "/api/v1/dnc",
            &["POST"],
            &["dnc_add"],
            Audit::Bearer,
            post(dnc_add),
        ),
        route(
            "/api/v1/dnc/{number}",
            &["DELETE"],
            &["dnc_delete"],
            Audit::Bearer,
            axum::routing::delete(dnc_delete),
        ),
        route(
            "/api/v1/calls/{id}/disposition",
            &["POST"],
            &["calls_disposition"],
            Audit::Bearer,
            post(post_disposition),
        ),
        route(
            "/api/v1/calls/{id}/answers",
            &["GET", "POST"],
            &["calls_answers_get", "calls_answers"],
            Audit::Bearer,
            get(get_answers).post(post_answers),
        ),
        route(
            "/api/v1/openapi.json",
            &["GET"],
            &["openapi"],
            Audit::CountOnly,
            get(openapi::get_openapi),
        ),
    ]
}

/// The API's routes as (path, methods), for tests and documentation.
/// `POST /api/v1/login` is the only one that takes no token.
pub fn routes() -> Vec<(&'static str, &'static [&'static str])> {
    table().into_iter().map(|r| (r.path, r.methods)).collect()
}

/// What `POST /api/v1/login` checks against.
struct Logins {
    throttle: std::sync::Mutex<centralino_sip::throttle::Throttle>,
}

impl Api {
    /// Opens (or creates) `DIR/centralino.db`, the directory owner-only.
    /// `engine` is the engine's queue (it may start later: what is sent
    /// waits); `loader` reads the configuration again for a reload.
    pub fn start(
        config: &Config,
        data_dir: &Path,
        metrics: Metrics,
        net: NetMetrics,
        engine: crate::handle::EngineHandle,
        loader: Loader,
    ) -> Result<Self, ApiError> {
        centralino_store::owner_only::create_dir(data_dir)
            .map_err(|e| ApiError::Dir(data_dir.to_path_buf(), e))?;
        let dir_lock = centralino_store::lock_data_dir(data_dir).map_err(ApiError::Store)?;
        let path = data_dir.join("centralino.db");
        let audit_key = match &config.audit_key_file {
            Some(file) => centralino_store::AuditKey::from_file(file).map_err(ApiError::Store)?,
            None => {
                let (key, created) = centralino_store::AuditKey::load_or_create(data_dir)
                    .map_err(ApiError::Store)?;
                if created {
                    warn!(
                        file = %data_dir.join(centralino_store::AUDIT_KEY_FILE).display(),
                        "audit key created beside the database: in production keep it elsewhere (store.audit_key_file), out of reach of whoever can change the database"
                    );
                }
                key
            }
        };
        let store_probe = crate::health::StoreProbe::new();
        let store = StoreHandle::start(
            &path,
            audit_key,
            &queue_owners(config),
            config.retention_days,
            config.notifications.is_some(),
            net.store.clone(),
            store_probe.clone(),
        )
        .map_err(ApiError::Store)?;
        if let Some(n) = &config.notifications {
            let tls = n.tls.as_ref().map(tls_connector).transpose()?;
            tokio::spawn(notifier(store.clone(), n.clone(), tls, net.clone()));
        }
        info!(path = %path.display(), "store open");
        tokio::spawn(crate::scheduler::backlog_gauges(
            Arc::new(path.clone()),
            net.clone(),
        ));
        let sessions = Sessions::new(&config.api_sessions)?;
        let limits = config.callback_limits;
        let api = Self {
            _dir_lock: Arc::new(dir_lock),
            store,
            db: Arc::new(path.clone()),
            live: Arc::new(std::sync::RwLock::new(Arc::new(Live::of(config)))),
            limiter: Arc::new(std::sync::Mutex::new(CallbackLimiter {
                per_source: crate::limits::WindowLimiter::new(
                    limits.per_source_per_minute,
                    std::time::Duration::from_secs(60),
                    100_000,
                ),
                per_number: crate::limits::WindowLimiter::new(
                    limits.per_number_per_day,
                    std::time::Duration::from_secs(86_400),
                    1_000_000,
                ),
            })),
            reload: Reloads::new(loader, config.clone()),
            engine,
            imports: Arc::new(tokio::sync::Semaphore::new(1)),
            desks: Desks::default(),
            logins: Arc::new(Logins {
                throttle: std::sync::Mutex::new(centralino_sip::throttle::Throttle::new(
                    config.registrar.throttle,
                )),
            }),
            sessions: Arc::new(sessions),
            metrics,
            net,
            store_probe,
            forecasts: forecast::Forecasts::default(),
        };
        api.store_config_campaigns(config);
        tokio::spawn(forecast::run(api.clone()));
        Ok(api)
    }

    /// Runs `f` on a read-only connection of its own on a blocking thread
    /// (reports): the writer's group commits are never held up by it.
    async fn read_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&centralino_store::Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let store = centralino_store::Store::open_reader(&path)?;
            f(&store)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Thread(std::io::Error::other(e.to_string()))))
    }

    /// How the store's thread is doing, for `/healthz`.
    pub fn store_probe(&self) -> crate::health::StoreProbe {
        self.store_probe.clone()
    }

    /// Counts a callback request from `peer` for `number` against the
    /// limits: `Some(wait)` when either is used up. The number is counted
    /// in E.164, so `0039…` and `+39…` share one allowance.
    fn limited(&self, peer: SocketAddr, number: &str) -> Option<std::time::Duration> {
        use crate::limits::Verdict;
        let now = std::time::Instant::now();
        let key = centralino_types::dialplan::normalize(number, "39")
            .unwrap_or_else(|| number.to_owned());
        let mut l = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let source = l.per_source.check(now, peer.ip());
        let number = match source {
            Verdict::Allowed => l.per_number.check(now, key),
            limited => limited,
        };
        match (source, number) {
            (Verdict::Limited(w), _) | (_, Verdict::Limited(w)) => {
                warn!(peer = %peer.ip(), "callback request over the rate limit");
                Some(w)
            }
            _ => None,
        }
    }

    /// The configuration the API serves now.
    fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Serves `config` from the next request on (a reload the engine
    /// accepted): tokens, desk passwords, queues' tenants and dial plans,
    /// scripts, the callback limits.
    pub fn apply(&self, config: &Config) {
        self.store_config_campaigns(config);
        let live = Arc::new(Live::of(config));
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
        let mut limiter = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        limiter
            .per_source
            .set_limit(config.callback_limits.per_source_per_minute);
        limiter
            .per_number
            .set_limit(config.callback_limits.per_number_per_day);
    }

    /// The campaigns of the configuration, into the store (by tenant and
    /// name: a new definition replaces the old, status and contacts stay).
    fn store_config_campaigns(&self, config: &Config) {
        let now = unix_now();
        let list: Vec<centralino_store::Campaign> = config
            .campaigns
            .iter()
            .zip(&config.raw_campaigns)
            .map(|(spec, raw)| centralino_store::Campaign {
                id: random_id(),
                name: spec.name.clone(),
                tenant: spec.tenant.clone(),
                spec: serde_json::to_string(raw).unwrap_or_default(),
                source: "config".into(),
                status: centralino_store::CampaignStatus::Draft,
                created_at: now,
                updated_at: now,
            })
            .collect();
        if list.is_empty() {
            return;
        }
        self.store.spawn_job("config campaigns", move |s| {
            s.atomically(|s| {
                for c in &list {
                    if !s.upsert_config_campaign(c)? {
                        tracing::error!(
                            campaign = %c.name,
                            tenant = %c.tenant,
                            "[[campaigns]]: the tenant has a campaign of that name that the configuration did not make: not applied"
                        );
                    }
                }
                Ok(())
            })
        });
    }

    /// The operators' current calls (the engine task fills it).
    pub fn desks(&self) -> Desks {
        self.desks.clone()
    }

    /// Where the engine's call records go.
    pub fn records(&self) -> RecordSink {
        self.store.records()
    }

    /// The API's routes.
    pub fn router(self) -> Router {
        let api = self.clone();
        table()
            .into_iter()
            .fold(Router::new(), |router, r| {
                // Counting and auditing wrap each route, so no handler can
                // forget them.
                let audited = Audited {
                    api: api.clone(),
                    methods: r.methods,
                    names: r.names,
                    audit: r.audit,
                };
                router.route(
                    r.path,
                    r.handler
                        .layer(axum::middleware::from_fn_with_state(audited, audited_route)),
                )
            })
            .with_state(self)
    }

    fn count(&self, route: &str, code: StatusCode) {
        self.net
            .api_requests
            .with_label_values(&[route, code.as_str()])
            .inc();
    }

    /// Counts the request and writes who did it to the audit log (only
    /// requests with a known token: anonymous ones are only counted, so a
    /// flood cannot fill the disk). `target` is the record's id; a phone
    /// number only behind `centralino_store::NUMBER_TARGET`, for the store
    /// to write as its keyed tag.
    fn done(&self, route: &str, token: Option<&str>, target: &str, code: StatusCode) {
        self.count(route, code);
        if let Some(actor) = token.and_then(|t| self.token_name(t)) {
            self.audit_as(&actor, route, target, code);
        }
    }

    /// An audit entry for a known actor (a token's name).
    fn audit_as(&self, actor: &str, action: &str, target: &str, code: StatusCode) {
        self.store
            .send(StoreReq::Audit(centralino_store::AuditEntry {
                at: unix_now_ms(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: truncate(target),
                status: code.as_u16(),
            }));
    }

    /// The name of the token presented (compared in constant time).
    fn token_name(&self, token: &str) -> Option<String> {
        if token.starts_with("cs2.") {
            // A wallboard session: audited under its token's name.
            let live = self.live();
            return self
                .sessions
                .verify_as(crate::session::TOKEN, token, unix_now(), |n| {
                    live.session_secret_for(crate::session::TOKEN, n)
                });
        }
        if Sessions::is_session(token) {
            let live = self.live();
            return self
                .sessions
                .verify(token, unix_now(), |a| live.session_secret(a))
                .map(|a| session_token(a).name);
        }
        let mut found = None;
        for t in &self.live().tokens {
            if same(t.token.as_bytes(), token.as_bytes()) {
                found = Some(t.name.clone());
            }
        }
        found
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    let mut r = (code, json_body(&json!({ "error": message }))).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn json_body(v: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v}\n"),
    )
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, json_body(v)).into_response()
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Box<Response>> {
    if body.len() > MAX_BODY {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than 16 KiB",
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field and the position.
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON body: {e}"),
        ))
    })
}

/// A request's token checked, then its JSON body read.
fn authorized_body<'a, T: for<'de> Deserialize<'de>>(
    api: &'a Api,
    headers: &HeaderMap,
    body: &Bytes,
    need: Need<'_>,
) -> Result<(Cow<'a, ApiToken>, T), Box<Response>> {
    let token = authorize(api, headers, need)?;
    Ok((token, parse_body(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_a_route_answers_is_counted_under_its_name_head_as_get() {
        for r in table() {
            for (m, n) in r.methods.iter().zip(r.names) {
                assert_eq!(route_name(r.methods, r.names, m), Some(*n), "{}", r.path);
            }
            assert_eq!(r.methods.len(), r.names.len(), "{}", r.path);
            if r.methods.contains(&"GET") {
                let get = route_name(r.methods, r.names, "GET");
                assert_eq!(route_name(r.methods, r.names, "HEAD"), get, "{}", r.path);
            }
        }
        assert_eq!(
            route_name(&["GET", "POST"], &["list", "create"], "DELETE"),
            None
        );
    }

    #[test]
    fn times_round_trip_and_bad_ones_are_refused() {
        assert_eq!(
            parse_rfc3339("2026-12-01T09:00:00+01:00"),
            Some(1_796_112_000)
        );
        assert_eq!(parse_rfc3339("2026-12-01T08:00:00Z"), Some(1_796_112_000));
        assert_eq!(
            parse_rfc3339("2026-12-01T08:00:00.250Z"),
            Some(1_796_112_000)
        );
        assert_eq!(rfc3339(1_796_112_000), "2026-12-01T08:00:00Z");
        for bad in [
            "2026-02-30T08:00:00Z",
            "2026-12-01 8:00",
            "2026-12-01T25:00:00Z",
            "2026-12-01T08:00:00+1",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert!(valid_number("+393331234567") && valid_number("0612345678"));
        assert!(
            !valid_number("+39 333")
                && !valid_number("12345")
                && !valid_number("+3933312345678901")
        );
        assert!(same(b"demo-admin-token", b"demo-admin-token"));
        assert!(!same(b"demo-admin-token", b"demo-admin-tokeN") && !same(b"a", b"ab"));
    }

    #[test]
    fn a_supervisor_sees_their_tenants_campaign_lines_with_contact_counts() {
        let line = |id: &str, tenant: &str| CampaignView {
            id: id.into(),
            name: format!("c-{id}"),
            queue: "info".into(),
            tenant: tenant.into(),
            mode: "progressive",
            lines: 2,
            previews: 0,
            ringing: 1,
            talking: 3,
            answered: 40,
            abandoned: 1,
            abandon_rate: 0.025,
        };
        let desks = Desks::default();
        let mut rx = desks.campaigns.subscribe();
        desks.set_campaigns(vec![line("a", "asl"), line("b", "other")]);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // The same view again wakes no supervisor socket.
        desks.set_campaigns(vec![line("a", "asl"), line("b", "other")]);
        assert!(!rx.has_changed().unwrap());
        desks.set_campaign_progress(HashMap::from([(
            "a".to_owned(),
            vec![("pending", 7), ("done", 5)],
        )]));
        let v = campaigns_json(&desks, Some("asl"));
        assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
        assert_eq!(
            (
                &v[0]["name"],
                &v[0]["talking"],
                &v[0]["contacts"]["pending"]
            ),
            (&json!("c-a"), &json!(3), &json!(7))
        );
        assert_eq!(campaigns_json(&desks, None).as_array().unwrap().len(), 2);
    }

    /// A desk's news of call `id` in queue "info", nothing else set.
    fn agent_call(id: &str, state: DeskState) -> AgentCall {
        AgentCall {
            state,
            call: id.into(),
            queue: "info".into(),
            flow: None,
            variables: Vec::new(),
            script: None,
            callback: None,
            campaign: None,
            contact: None,
            consultation: false,
        }
    }

    #[test]
    fn an_operators_calls_today_count_answers_and_talk_and_start_again_each_day() {
        use std::time::{Duration, Instant};
        let call = agent_call;
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut today = Today::default();
        // Offered only (declined or unanswered): not a call of theirs.
        today.news(Some(&call("c1", DeskState::Offered)), 1, s(0));
        today.news(None, 1, s(5));
        assert_eq!(today.at(1, s(5)), (0, Duration::ZERO));
        // Answered at 10 s; the same call's news again counts once.
        today.news(Some(&call("c2", DeskState::Offered)), 1, s(8));
        today.news(Some(&call("c2", DeskState::Connected)), 1, s(10));
        today.news(Some(&call("c2", DeskState::Connected)), 1, s(20));
        assert_eq!(today.at(1, s(40)), (1, Duration::from_secs(30)));
        // Over at 70 s; wrap-up adds nothing.
        today.news(None, 1, s(70));
        assert_eq!(today.at(1, s(100)), (1, Duration::from_secs(60)));
        // Straight into another call (a takeover, a transfer back).
        today.news(Some(&call("c3", DeskState::Connected)), 1, s(100));
        today.news(Some(&call("c4", DeskState::Connected)), 1, s(110));
        today.news(None, 1, s(115));
        assert_eq!(today.at(1, s(200)), (3, Duration::from_secs(75)));
        // A call answered before midnight counts for its own day: the new
        // day starts empty, and the next call counts there.
        today.news(Some(&call("c5", DeskState::Connected)), 1, s(300));
        assert_eq!(today.at(1, s(310)), (4, Duration::from_secs(85)));
        assert_eq!(today.at(2, s(310)), (0, Duration::ZERO));
        today.news(None, 2, s(320));
        assert_eq!(today.at(2, s(330)), (0, Duration::ZERO));
        today.news(Some(&call("c6", DeskState::Connected)), 2, s(330));
        assert_eq!(today.at(2, s(340)), (1, Duration::from_secs(10)));
        // A colleague's consultation answered is no call of theirs.
        today.news(None, 2, s(345));
        let consulted = AgentCall {
            consultation: true,
            ..call("k1", DeskState::Connected)
        };
        today.news(Some(&consulted), 2, s(350));
        today.news(None, 2, s(400));
        assert_eq!(today.at(2, s(400)), (1, Duration::from_secs(15)));
        // A day with no news yet reads as empty.
        assert_eq!(today.at(3, s(400)), (0, Duration::ZERO));
    }

    /// A name that moves to another firm (or goes) loses its last call:
    /// its desk under the new firm cannot answer the old firm's script
    /// or disposition that call.
    #[test]
    fn an_operator_who_changes_firm_loses_the_last_call() {
        let pair = |a: &str, t: &str| (a.to_owned(), t.to_owned());
        let old = [
            pair("1001", "asl"),
            pair("1002", "asl"),
            pair("1003", "asl"),
        ];
        let new = [pair("1001", "altra"), pair("1002", "asl")];
        assert_eq!(left_their_firm(&old, &new), ["1001", "1003"]);
        let desks = Desks::default();
        desks.set(
            "1001".into(),
            Some(AgentCall {
                script: Some("vaccini".into()),
                ..agent_call("c1", DeskState::Connected)
            }),
        );
        desks.set("1001".into(), None);
        desks.set("1001".into(), Some(agent_call("c3", DeskState::Offered)));
        desks.set("1002".into(), Some(agent_call("c2", DeskState::Connected)));
        assert!(desks.had_call("1001", "c1"));
        let marks = desks.marks(&left_their_firm(&old, &new));
        // A call the engine offers under the new firm in the reload's own
        // turn, before the desks hear of the move: not barred.
        desks.set("1001".into(), Some(agent_call("c5", DeskState::Offered)));
        desks.forget_last_calls(&marks);
        assert!(!desks.had_call("1001", "c1"));
        assert!(!desks.may_read_script("1001", "vaccini"));
        assert!(desks.had_call("1002", "c2"));
        // The call ringing at the move, answered after it, or the first
        // call told again, is still the old firm's.
        desks.set("1001".into(), Some(agent_call("c3", DeskState::Connected)));
        desks.set("1001".into(), Some(agent_call("c1", DeskState::Connected)));
        assert!(!desks.had_call("1001", "c3") && !desks.had_call("1001", "c1"));
        // A new call under the new firm is theirs.
        desks.set("1001".into(), Some(agent_call("c4", DeskState::Connected)));
        assert!(desks.had_call("1001", "c4"));
        desks.set("1001".into(), Some(agent_call("c5", DeskState::Connected)));
        assert!(desks.had_call("1001", "c5"));
    }

    #[test]
    fn a_desktop_behind_gets_every_transition_or_knows_what_it_missed() {
        let call = |state| agent_call("c1", state);
        let shown = |state| Some(Arc::new(call(state)));
        let desks = Desks::default();
        let mut rx = desks.watch("1001");
        assert_eq!(desks.snapshot("1001"), (0, None));
        // Offered, answered and over before the desktop's task runs: the
        // three arrive, in order.
        desks.set("1001".into(), Some(call(DeskState::Offered)));
        desks.set("1001".into(), Some(call(DeskState::Connected)));
        desks.set("1001".into(), None);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
        assert_eq!(
            desks.since("1001", 0),
            Since::Events(
                vec![shown(DeskState::Offered), shown(DeskState::Connected), None],
                3
            )
        );
        assert_eq!(desks.since("1001", 3), Since::Events(Vec::new(), 3));
        // Far behind (a frozen browser): the current state and the count.
        for _ in 0..DESK_EVENTS {
            desks.set("1001".into(), Some(call(DeskState::Offered)));
        }
        assert_eq!(
            desks.since("1001", 2),
            Since::Gap(
                shown(DeskState::Offered),
                DESK_EVENTS as u64,
                3 + DESK_EVENTS as u64
            )
        );
        assert_eq!(desks.snapshot("1001").0, 3 + DESK_EVENTS as u64);
    }

    /// An operator may read the scripts of the calls their desk showed:
    /// the one offered, the one they talk on, the last one they talked on
    /// however many changes later; never another.
    #[test]
    fn a_desk_reads_the_scripts_of_its_own_calls_only() {
        let desks = Desks::default();
        let with_script = |call: &str, state, script: &str| AgentCall {
            script: Some(script.into()),
            ..agent_call(call, state)
        };
        assert!(!desks.may_read_script("1001", "vaccini"), "no desk yet");
        desks.set(
            "1001".into(),
            Some(with_script("c1", DeskState::Offered, "vaccini")),
        );
        assert!(desks.may_read_script("1001", "vaccini"));
        assert!(!desks.may_read_script("1001", "triage"));
        assert!(!desks.may_read_script("1002", "vaccini"), "another desk");
        desks.set(
            "1001".into(),
            Some(with_script("c2", DeskState::Connected, "triage")),
        );
        desks.set("1001".into(), None);
        // A busy day later, the last call's script is still theirs (they
        // finish it in wrap-up); the one only offered long ago is not.
        for _ in 0..DESK_EVENTS {
            desks.set("1001".into(), Some(agent_call("c3", DeskState::Offered)));
        }
        assert!(desks.may_read_script("1001", "triage"));
        assert!(!desks.may_read_script("1001", "vaccini"));
    }

    #[test]
    fn a_desk_keeps_a_few_changes_whatever_its_operators_day() {
        let desks = Desks::default();
        // A day's calls: three changes each.
        for i in 0..200 {
            let c = agent_call(&format!("c{i}"), DeskState::Offered);
            desks.set("1001".into(), Some(c.clone()));
            desks.set(
                "1001".into(),
                Some(AgentCall {
                    state: DeskState::Connected,
                    ..c
                }),
            );
            desks.set("1001".into(), None);
        }
        {
            let all = desks.lock();
            let desk = &all["1001"];
            assert_eq!(desk.events.len(), DESK_EVENTS);
            // Never grown past its first buffer.
            assert!(desk.events.capacity() < 2 * DESK_EVENTS);
            assert_eq!(desk.newest_seq(), 600);
        }
        // The last call's three changes are still there for a desktop
        // that saw the one before.
        match desks.since("1001", 597) {
            Since::Events(e, 600) => {
                assert_eq!(e.len(), 3);
                assert_eq!(e[0].as_ref().map(|c| c.call.as_str()), Some("c199"));
            }
            other => panic!("{other:?}"),
        }
        // Two desktops of one operator read the same call, not copies.
        desks.set("1001".into(), Some(agent_call("c200", DeskState::Offered)));
        let (a, b) = (desks.snapshot("1001").1, desks.current("1001"));
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
    }
}

/// Fuzzing entry point (`crates/fuzz`): a request body through its
/// handler's parsing and checks, without a store, token or engine.
/// `kind % 5`: 0 create a callback, 1 patch one, 2 desk login, 3 operator
/// state, 4 script answers. True when the body would reach the store.
#[doc(hidden)]
#[allow(clippy::items_after_test_module)]
pub fn fuzz_api_body(kind: u8, data: &[u8]) -> bool {
    static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    let catalog = CATALOG.get_or_init(|| {
        let mut c = Catalog::default();
        let _ = (c.skill("vaccini"), c.language("it"), c.tenant("demo"));
        let _ = c.queue("info");
        c
    });
    let body = Bytes::copy_from_slice(data);
    let req_ok = |r: &str| Requirement::parse(r, catalog).is_ok();
    let time_ok = |w: &When| when(w).map(rfc3339).is_ok();
    match kind % 5 {
        0 => parse_body::<CreateBody>(&body).is_ok_and(|b| {
            let _ = truncate(&b.queue);
            valid_number(&b.number)
                & b.not_before.as_ref().is_none_or(time_ok)
                & b.requirements.as_deref().is_none_or(req_ok)
                & check_priority(b.priority.unwrap_or(0)).is_ok()
        }),
        1 => parse_body::<PatchBody>(&body).is_ok_and(|b| {
            b.not_before
                .as_ref()
                .is_none_or(|w| w.as_ref().is_none_or(time_ok))
                & b.requirements
                    .as_ref()
                    .is_none_or(|r| r.as_deref().is_none_or(req_ok))
                & b.priority.is_none_or(|p| check_priority(p).is_ok())
        }),
        2 => parse_body::<LoginBody>(&body).is_ok(),
        3 => parse_body::<StateBody>(&body).is_ok(),
        _ => parse_body::<AnswersBody>(&body).is_ok(),
    }
}
