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
use std::sync::mpsc::{Sender, channel};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use centralino_b2bua::{AgentCall, DeskState, Metrics, QueueView};
use centralino_config::{ApiToken, Config};
use centralino_flows::calendar::{civil_from_days, days_from_civil};
use centralino_routing::{Catalog, Requirement};
use centralino_store::{Callback, Created, Edit, NewCallback, Patch, Status, Store, StoreError};
use centralino_types::Masked;
use centralino_types::dialplan::DialPlan;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::session::{SessionError, Sessions};

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 16 * 1024;

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum StoreReq {
    Records(Vec<centralino_store::Record>),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
    /// Who read or changed personal data (batched, chained).
    Audit(centralino_store::AuditEntry),
    Claim(i64, usize, Vec<String>, Reply<Vec<Callback>>),
    MarkDialed(String, i64, Reply<bool>),
    Finish(String, Status, &'static str, i64),
    Reschedule(String, i64, &'static str, i64),
    Requeue(String, &'static str, i64),
    DueNotifications(i64, Reply<Vec<centralino_store::Notification>>),
    NotificationAttempt(i64, bool, Option<String>, Option<i64>),
    Answers(
        String,
        Option<String>,
        Vec<(String, String)>,
        i64,
        Reply<bool>,
    ),
    Create(NewCallback, i64, Reply<Created>),
    Get(String, Reply<Option<Callback>>),
    /// Status, the queues to keep (all when `None`), limit.
    List(
        Option<Status>,
        Option<Vec<String>>,
        usize,
        Reply<Vec<Callback>>,
    ),
    Update(String, Patch, i64, Reply<Edit>),
    Cancel(String, i64, Reply<Edit>),
}

/// The store's thread.
#[derive(Clone)]
struct StoreHandle(Sender<StoreReq>);

/// Most requests applied in one transaction.
const GROUP_MAX: usize = 512;
/// Most writes kept in memory while the disk refuses them (disk full, I/O
/// errors): about an hour of a busy node's call records. Past it the
/// oldest are dropped, counted and logged.
const BACKLOG_MAX: usize = 200_000;
/// A write that failed on its own this many times (while the rest of its
/// group was committed) is not a disk problem: dropped, counted, logged.
const OWN_FAILURES_MAX: u32 = 5;
/// How soon a backlog is tried again when nothing else comes.
const BACKLOG_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// An answer sent once the group's transaction committed (or failed).
type Deferred = Box<dyn FnOnce(Result<(), &str>)>;

/// A write nobody waits for (call records, callback state changes,
/// notification attempts, audit entries): kept until it is on disk, so a
/// full or failing disk delays it instead of losing it.
struct Kept {
    req: StoreReq,
    /// Times it failed by itself (its group committed without it).
    own_failures: u32,
    /// It failed in this group.
    failed: bool,
}

/// The requests of one transaction and what is owed for them.
struct Group {
    /// The SMS hook is configured: changes it reports go to the outbox.
    notify: bool,
    replies: Vec<Deferred>,
    /// Writes nobody waits for, with how they went.
    kept: Vec<Kept>,
    /// Audit entries (and their own failures), written last in one
    /// chained batch.
    audit: Vec<(centralino_store::AuditEntry, u32)>,
    /// That batch failed in this group.
    audit_failed: bool,
    /// The chain's head after that batch, logged once committed.
    audit_head: Option<centralino_store::AuditHead>,
}

impl Group {
    fn new(notify: bool) -> Self {
        Self {
            notify,
            replies: Vec::new(),
            kept: Vec::new(),
            audit: Vec::new(),
            audit_failed: false,
            audit_head: None,
        }
    }

    /// Answers `r` with `v` after the commit, or with the commit's error.
    fn reply<T: 'static>(&mut self, r: Reply<T>, v: Result<T, StoreError>) {
        let v = v.map_err(|e| e.to_string());
        self.replies
            .push(Box::new(move |committed: Result<(), &str>| {
                let _ = r.send(committed.map_err(str::to_owned).and(v));
            }));
    }

    /// The SMS hook's outbox: written next to the change it reports (same
    /// transaction), sent by the notifier.
    fn outbox(&self, store: &mut Store, id: &str, event: &str) -> Result<(), StoreError> {
        if !self.notify {
            return Ok(());
        }
        if let Some(cb) = store.get_callback(id)? {
            // Delivery is at least once (a crash between the gateway's
            // answer and our mark sends it again): the key lets the
            // gateway drop a repeat.
            let payload = json!({
                "key": format!("{}:{event}:{}", cb.id, cb.attempts),
                "event": event,
                "callback": cb.id,
                "number": cb.number,
                "queue": cb.queue,
                "not_before": cb.not_before.map(rfc3339),
                "attempts": cb.attempts,
                "outcome": cb.outcome,
                "at": rfc3339(unix_now()),
            })
            .to_string();
            store.notify(id, event, &payload, unix_now())?;
        }
        Ok(())
    }

    /// Writes one request nobody waits for. Each store method is
    /// all-or-nothing on its own (savepoints), so a failure here undoes
    /// nothing else of the group.
    fn write(&self, store: &mut Store, req: &StoreReq) -> Result<(), StoreError> {
        match req {
            StoreReq::Requeue(id, outcome, now) => store.requeue(id, outcome, *now).map(drop),
            StoreReq::Finish(id, status, outcome, now) => store.atomically(|store| {
                store.set_status(id, *status, Some(outcome), *now)?;
                if *status == Status::Failed {
                    self.outbox(store, id, "failed")?;
                }
                Ok(())
            }),
            StoreReq::Reschedule(id, at, outcome, now) => store.reschedule(id, *at, outcome, *now),
            StoreReq::Records(batch) => store.write_records(batch),
            StoreReq::NotificationAttempt(seq, sent, error, retry_at) => {
                store.notification_attempt(*seq, *sent, error.as_deref(), *retry_at)
            }
            _ => Ok(()),
        }
    }

    /// Applies a write nobody waits for and keeps it until the commit says
    /// whether it is on disk.
    fn keep(&mut self, store: &mut Store, req: StoreReq, own_failures: u32) {
        let failed = match self.write(store, &req) {
            Ok(()) => false,
            Err(e) => {
                warn!(error = %e, write = req.kind(), "store write failed: kept to try again");
                true
            }
        };
        self.kept.push(Kept {
            req,
            own_failures,
            failed,
        });
    }

    /// Applies one request inside the group's transaction.
    fn apply(&mut self, store: &mut Store, req: StoreReq) {
        match req {
            StoreReq::Audit(e) => self.audit.push((e, 0)),
            StoreReq::Answers(call, agent, answers, now, r) => {
                let v = store.save_answers(&call, agent.as_deref(), &answers, now);
                self.reply(r, v);
            }
            StoreReq::Claim(now, limit, open, r) => {
                let open = |q: &str| open.iter().any(|o| o == q);
                let v = store.claim_due(now, limit, &open);
                self.reply(r, v);
            }
            StoreReq::MarkDialed(id, now, r) => {
                // The mark and its SMS "about to call" stand or fall
                // together: the engine dials only if both are durable.
                let v = store.atomically(|store| {
                    let m = store.mark_dialed(&id, now)?;
                    if m {
                        self.outbox(store, &id, "about_to_call")?;
                    }
                    Ok(m)
                });
                self.reply(r, v);
            }
            StoreReq::Flush(done) => {
                self.replies.push(Box::new(move |_| {
                    let _ = done.send(());
                }));
            }
            StoreReq::Create(n, now, r) => {
                // The request and its SMS "booked" stand or fall together.
                let v = store.atomically(|store| {
                    let c = store.create_callback(&n, now)?;
                    if let Created::New(cb) = &c {
                        self.outbox(store, &cb.id, "booked")?;
                    }
                    Ok(c)
                });
                self.reply(r, v);
            }
            StoreReq::DueNotifications(now, r) => {
                let v = store.due_notifications(now, 50);
                self.reply(r, v);
            }
            StoreReq::Get(id, r) => {
                let v = store.get_callback(&id);
                self.reply(r, v);
            }
            StoreReq::List(s, queues, limit, r) => {
                let v = store.list_callbacks(s, queues.as_deref(), limit);
                self.reply(r, v);
            }
            StoreReq::Update(id, p, now, r) => {
                let v = store.update_callback(&id, &p, now);
                self.reply(r, v);
            }
            StoreReq::Cancel(id, now, r) => {
                let v = store.set_status(&id, Status::Cancelled, Some("cancelled"), now);
                self.reply(r, v);
            }
            other @ (StoreReq::Requeue(..)
            | StoreReq::Finish(..)
            | StoreReq::Reschedule(..)
            | StoreReq::Records(_)
            | StoreReq::NotificationAttempt(..)) => self.keep(store, other, 0),
        }
    }

    /// The audit entries, last in the transaction (one chained batch).
    fn write_audit(&mut self, store: &mut Store) {
        if self.audit.is_empty() {
            return;
        }
        let entries: Vec<_> = self.audit.iter().map(|(e, _)| e.clone()).collect();
        match store.audit(&entries) {
            Ok(head) => self.audit_head = head,
            Err(e) => {
                warn!(error = %e, entries = entries.len(), "audit entries not written: kept to try again");
                self.audit_failed = true;
            }
        }
    }

    /// After the transaction: what must be written again. A failed commit
    /// keeps every write of the group (none is on disk); a commit keeps
    /// only those that failed by themselves, and drops one that keeps
    /// failing alone (not a disk problem: a bug to look at in the log).
    fn settle(
        self,
        committed: bool,
        backlog: &mut std::collections::VecDeque<Kept>,
        metrics: &Metrics,
    ) {
        for mut k in self.kept {
            if committed && !k.failed {
                continue;
            }
            if committed {
                k.own_failures += 1;
            }
            if k.own_failures >= OWN_FAILURES_MAX {
                metrics.store_dropped.inc();
                tracing::error!(
                    write = k.req.kind(),
                    "store write failed {OWN_FAILURES_MAX} times alone: dropped"
                );
                continue;
            }
            k.failed = false;
            backlog.push_back(k);
        }
        for (e, mut own) in self.audit {
            if committed && !self.audit_failed {
                continue;
            }
            if committed {
                own += 1;
            }
            if own >= OWN_FAILURES_MAX {
                metrics.store_dropped.inc();
                tracing::error!("audit entry failed {OWN_FAILURES_MAX} times alone: dropped");
                continue;
            }
            backlog.push_back(Kept {
                req: StoreReq::Audit(e),
                own_failures: own,
                failed: false,
            });
        }
        while backlog.len() > BACKLOG_MAX {
            if let Some(k) = backlog.pop_front() {
                metrics.store_dropped.inc();
                tracing::error!(
                    write = k.req.kind(),
                    "store backlog full: oldest write dropped"
                );
            }
        }
        metrics.store_backlog.set(backlog.len() as i64);
    }
}

impl StoreReq {
    /// A write nobody waits for, kept until the disk takes it.
    fn kept_when_unwritten(&self) -> bool {
        matches!(
            self,
            Self::Records(_)
                | Self::Audit(_)
                | Self::Finish(..)
                | Self::Reschedule(..)
                | Self::Requeue(..)
                | Self::NotificationAttempt(..)
        )
    }

    /// What a request is, for the log.
    fn kind(&self) -> &'static str {
        match self {
            Self::Records(_) => "records",
            Self::Flush(_) => "flush",
            Self::Audit(_) => "audit",
            Self::Claim(..) => "claim",
            Self::MarkDialed(..) => "mark_dialed",
            Self::Finish(..) => "finish",
            Self::Reschedule(..) => "reschedule",
            Self::Requeue(..) => "requeue",
            Self::DueNotifications(..) => "due_notifications",
            Self::NotificationAttempt(..) => "notification_attempt",
            Self::Answers(..) => "answers",
            Self::Create(..) => "create",
            Self::Get(..) => "get",
            Self::List(..) => "list",
            Self::Update(..) => "update",
            Self::Cancel(..) => "cancel",
        }
    }
}

impl StoreHandle {
    fn start(
        path: &Path,
        audit_key: centralino_store::AuditKey,
        retention_days: u32,
        notify: bool,
        metrics: Metrics,
        probe: crate::health::StoreProbe,
    ) -> Result<Self, ApiError> {
        // Opened here so a bad file stops the start with its reason.
        let mut store = Store::open_keyed(path, audit_key).map_err(ApiError::Store)?;
        match store.audit_key_fits() {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                "the audit key does not fit the audit log (another key file, or the log was changed): `centralino audit` will report it broken"
            ),
            Err(e) => warn!(error = %e, "cannot check the audit key against the audit log"),
        }
        // Calls in progress when the last process died: closed as such.
        match store.close_interrupted(unix_now() * 1000) {
            Ok(0) => {}
            Ok(n) => warn!(
                calls = n,
                "call records left open by a previous process closed as interrupted"
            ),
            Err(e) => warn!(error = %e, "cannot close interrupted call records"),
        }
        match store.recover_in_progress(unix_now()) {
            Ok((0, 0)) => {}
            Ok((back, cut)) => warn!(
                back_to_pending = back,
                interrupted = cut,
                "callbacks in progress at the last stop recovered (dialled ones are not dialled again)"
            ),
            Err(e) => warn!(error = %e, "cannot recover callbacks in progress"),
        }
        let retention = i64::from(retention_days) * 86_400_000;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                // `/healthz` sees this thread end, and each transaction
                // and backlog that lasts.
                let _running = probe.running();
                let mut next_retention = std::time::Instant::now();
                let mut backlog: std::collections::VecDeque<Kept> =
                    std::collections::VecDeque::new();
                loop {
                    if std::time::Instant::now() >= next_retention {
                        // Hourly: numbers older than the retention period
                        // are masked.
                        match store.anonymise_before(unix_now() * 1000 - retention) {
                            Ok(0) => {}
                            Ok(n) => info!(records = n, "numbers anonymised (retention)"),
                            Err(e) => warn!(error = %e, "anonymisation failed"),
                        }
                        // The WAL still holds the pages as they were before
                        // masking: copied in and emptied.
                        match store.checkpoint() {
                            Ok(true) => {}
                            Ok(false) => warn!(
                                "WAL checkpoint after retention kept busy by a reader: next hour"
                            ),
                            Err(e) => warn!(error = %e, "WAL checkpoint after retention failed"),
                        }
                        next_retention += std::time::Duration::from_secs(3600);
                    }
                    let wait = if backlog.is_empty() {
                        std::time::Duration::from_secs(60)
                    } else {
                        BACKLOG_RETRY
                    };
                    let mut reqs = Vec::new();
                    match rx.recv_timeout(wait) {
                        Ok(r) => reqs.push(r),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) if backlog.is_empty() => {
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            if !backlog.is_empty() {
                                tracing::error!(
                                    writes = backlog.len(),
                                    "store writes still refused by the disk at exit: lost"
                                );
                            }
                            break;
                        }
                    }
                    // Group commit: every request already waiting is
                    // applied in one transaction, one fsync for all. With
                    // a slow disk a burst (operators answering callbacks
                    // together, a web form's rush) costs one sync, not one
                    // each while the rest wait behind it. Nobody hears
                    // "done" before the commit.
                    while reqs.len() < GROUP_MAX {
                        match rx.try_recv() {
                            Ok(r) => reqs.push(r),
                            Err(_) => break,
                        }
                    }
                    metrics
                        .store_group
                        .observe((reqs.len() + backlog.len()) as f64);
                    let mut group = Group::new(notify);
                    let began = std::time::Instant::now();
                    probe.begin(began);
                    let committed = store.atomically(|store| {
                        // Writes kept from earlier groups first, in their
                        // order: a call's start before its end.
                        for k in backlog.drain(..) {
                            match k.req {
                                StoreReq::Audit(e) => group.audit.push((e, k.own_failures)),
                                req => group.keep(store, req, k.own_failures),
                            }
                        }
                        for req in reqs.drain(..) {
                            group.apply(store, req);
                        }
                        group.write_audit(store);
                        Ok(())
                    });
                    // The transaction could not even begin (the database
                    // locked by another process past the busy timeout):
                    // the writes nobody waits for are kept; whoever waits
                    // for an answer gets the error (their reply dropped).
                    for req in reqs.drain(..) {
                        if req.kept_when_unwritten() {
                            backlog.push_back(Kept {
                                req,
                                own_failures: 0,
                                failed: false,
                            });
                        }
                    }
                    metrics.store_commit.observe(began.elapsed().as_secs_f64());
                    let committed = committed.map_err(|e| {
                        metrics.store_errors.inc();
                        warn!(error = %e, "store transaction not committed");
                        e.to_string()
                    });
                    let replies = std::mem::take(&mut group.replies);
                    // On disk: the head goes to the log, so a tail cut from
                    // the file later shows (`centralino audit --expect-head`).
                    if let (Ok(()), Some(head)) = (&committed, group.audit_head.take()) {
                        info!(seq = head.seq, mac = %head.mac, "audit head");
                    }
                    group.settle(committed.is_ok(), &mut backlog, &metrics);
                    probe.end(std::time::Instant::now(), backlog.len());
                    for reply in replies {
                        reply(committed.as_ref().map(|_| ()).map_err(String::as_str));
                    }
                }
            })
            .map_err(ApiError::Thread)?;
        Ok(Self(tx))
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> StoreReq) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(make(tx))
            .map_err(|_| "the store is not running".to_owned())?;
        rx.await
            .map_err(|_| "the store stopped".to_owned())
            .and_then(|r| r)
    }
}

/// Sends the outbox to the SMS gateway: one POST per notification, retried
/// with a delay, a dead letter after the last attempt. Never on the call
/// path: a slow or dead gateway only delays SMS.
async fn notifier(
    store: StoreHandle,
    cfg: centralino_config::Notifications,
    tls: Option<tokio_rustls::TlsConnector>,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = unix_now();
        let Ok(due) = store.ask(|r| StoreReq::DueNotifications(now, r)).await else {
            continue;
        };
        for n in due {
            let result = post_json(&cfg, tls.as_ref(), &n.payload).await;
            let (sent, error) = match result {
                Ok(()) => (true, None),
                Err(e) => (false, Some(e)),
            };
            let retry_at = (!sent && n.attempts + 1 < cfg.max_attempts)
                .then(|| unix_now() + cfg.retry.as_secs() as i64);
            let outcome = match (sent, retry_at) {
                (true, _) => "sent",
                (false, Some(_)) => "retry",
                (false, None) => "dead_letter",
            };
            if outcome != "sent" {
                warn!(event = %n.event, error = ?error, outcome, "notification not delivered");
            }
            metrics
                .notifications
                .with_label_values(&[&n.event, outcome])
                .inc();
            let _ = store
                .0
                .send(StoreReq::NotificationAttempt(n.seq, sent, error, retry_at));
        }
    }
}

/// The TLS client of the SMS hook: the system's trusted CAs plus the
/// configured `ca_file`; rustls on aws-lc-rs, TLS 1.2 and 1.3 only.
fn tls_connector(
    tls: &centralino_config::NotifyTls,
) -> Result<tokio_rustls::TlsConnector, ApiError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if let Some(path) = &tls.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|e| ApiError::Tls(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ApiError::Tls(format!("{}: no certificate", path.display())));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ApiError::Tls(format!("{}: {e}", path.display())))?;
        }
    } else if added == 0 {
        return Err(ApiError::Tls(
            "no trusted CA: install ca-certificates or set notifications.ca_file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One HTTP/1.1 POST, over TLS for an `https://` gateway; `Ok` on a 2xx
/// answer.
async fn post_json(
    cfg: &centralino_config::Notifications,
    tls: Option<&tokio_rustls::TlsConnector>,
    body: &str,
) -> Result<(), String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&cfg.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match (&cfg.tls, tls) {
            (Some(t), Some(connector)) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(t.host.clone())
                    .map_err(|e| format!("tls: {e}"))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                exchange(stream, cfg, body).await
            }
            _ => exchange(tcp, cfg, body).await,
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), attempt)
        .await
        .map_err(|_| "timeout".to_owned())?
}

/// Writes the request and reads the status line.
async fn exchange<S>(
    mut s: S,
    cfg: &centralino_config::Notifications,
    body: &str,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = cfg
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        cfg.path,
        cfg.addr,
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        let k = s
            .read(&mut head[n..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    match line.get(9..12).and_then(|c| c.parse::<u16>().ok()) {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("gateway answered {c}")),
        None => Err("no HTTP answer".into()),
    }
}

/// Why the API cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The data directory cannot be created.
    #[error("data directory {0}: {1}")]
    Dir(std::path::PathBuf, std::io::Error),
    /// The database cannot be opened.
    #[error("store: {0}")]
    Store(StoreError),
    /// The store's thread cannot start.
    #[error("store thread: {0}")]
    Thread(std::io::Error),
    /// The SMS hook's TLS client cannot be set up (CA file).
    #[error("notifications TLS: {0}")]
    Tls(String),
    /// Desk sessions cannot be signed (key file).
    #[error("{0}")]
    Session(#[from] SessionError),
}

/// Hands call records and queue events to the store's thread (never
/// waits: the channel is unbounded and the writer batches).
#[derive(Clone)]
pub struct RecordSink(Sender<StoreReq>);

impl RecordSink {
    /// Queues a batch.
    pub fn send(&self, batch: Vec<centralino_store::Record>) {
        let _ = self.0.send(StoreReq::Records(batch));
    }

    /// Returns once every batch sent before is written (the store thread
    /// takes its requests in order).
    pub async fn flush(&self) {
        let (done, rx) = oneshot::channel();
        if self.0.send(StoreReq::Flush(done)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Claims callbacks due now (at most `limit`) of the queues in `open`.
    pub async fn claim_due(
        &self,
        limit: usize,
        open: Vec<String>,
    ) -> Result<Vec<Callback>, String> {
        let now = unix_now();
        StoreHandle(self.0.clone())
            .ask(|r| StoreReq::Claim(now, limit, open, r))
            .await
    }

    /// Makes "the citizen is being dialled" durable. The request is
    /// queued before this returns, so whatever the engine says of the same
    /// callback afterwards (a requeue) is applied after it.
    pub fn mark_dialed(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, String>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.0.send(StoreReq::MarkDialed(id, unix_now(), tx));
        async move {
            sent.map_err(|_| "the store is not running".to_owned())?;
            rx.await
                .map_err(|_| "the store stopped".to_owned())
                .and_then(|r| r)
        }
    }

    /// Puts a callback whose operator left before the citizen was dialled
    /// back to pending at once, without counting the attempt.
    pub fn requeue(&self, id: String, outcome: &'static str) {
        let _ = self.0.send(StoreReq::Requeue(id, outcome, unix_now()));
    }

    /// Records a callback's end (done or failed).
    pub fn finish(&self, id: String, status: Status, outcome: &'static str) {
        let _ = self
            .0
            .send(StoreReq::Finish(id, status, outcome, unix_now()));
    }

    /// Puts a callback back for another attempt `after` from now.
    pub fn reschedule(&self, id: String, after: std::time::Duration, outcome: &'static str) {
        let now = unix_now();
        let at = now + after.as_secs() as i64;
        let _ = self.0.send(StoreReq::Reschedule(id, at, outcome, now));
    }

    /// Stores a callback asked for during a call (virtual hold); returns
    /// once it is durable.
    pub async fn create_callback(
        &self,
        queue: String,
        number: String,
        enqueued_unix: i64,
    ) -> Result<Created, String> {
        let new = NewCallback {
            id: random_id(),
            queue,
            number,
            not_before: None,
            requirements: None,
            priority: 0,
            source: "ivr".into(),
            created_at: Some(enqueued_unix),
        };
        let now = unix_now();
        StoreHandle(self.0.clone())
            .ask(|r| StoreReq::Create(new, now, r))
            .await
    }
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
    /// The operators' SIP secrets (desk logins check them).
    credentials: HashMap<String, centralino_sip::auth::Credentials>,
    realm: String,
}

impl Live {
    fn of(config: &Config) -> Self {
        Self {
            tokens: config.api_tokens.clone(),
            queues: config
                .queues
                .iter()
                .map(|q| {
                    let tenant = config.tenants.get(q.tenant).cloned().unwrap_or_default();
                    let plan = config.dial_plans.get(q.tenant).cloned().unwrap_or_default();
                    (q.routing.name.clone(), (tenant, plan))
                })
                .collect(),
            catalog: config.catalog.clone(),
            scripts: config.scripts.clone(),
            credentials: config
                .agents
                .iter()
                .map(|a| (a.username.clone(), a.credentials.clone()))
                .collect(),
            realm: config.sip.realm.clone(),
        }
    }

    /// Whether a token limited to `tenant` may see a callback of `queue`.
    fn sees(&self, tenant: Option<&str>, queue: &str) -> bool {
        tenant.is_none_or(|t| self.queues.get(queue).is_some_and(|(qt, _)| qt == t))
    }
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
    live: Arc<std::sync::RwLock<Arc<Live>>>,
    limiter: Arc<std::sync::Mutex<CallbackLimiter>>,
    reload: ReloadSlot,
    desks: Desks,
    /// Configured operators (desks exist only for them).
    agents: Arc<HashSet<String>>,
    /// Each operator's tenant (supervisor views are per tenant).
    agent_tenants: Arc<Vec<(String, String)>>,
    /// Desk logins: the operators' SIP secrets, their realm, the signer
    /// and the brute-force throttle (shared with nothing else).
    logins: Arc<Logins>,
    sessions: Arc<Sessions>,
    metrics: Metrics,
    /// How the store's thread is doing (for `/healthz`).
    store_probe: crate::health::StoreProbe,
}

/// Every API route: its path, its methods, and the handlers. The router is
/// built from this table only, and `routes()` lists the same table for the
/// test that calls each route with no token, a wrong one and an expired
/// session (TEST-MATRIX D11): a route cannot be added without that test
/// calling it.
fn table() -> Vec<(&'static str, &'static [&'static str], MethodRouter<Api>)> {
    use axum::routing::post;
    vec![
        (
            "/api/v1/callbacks",
            &["GET", "POST"],
            get(list_callbacks).post(create_callback),
        ),
        (
            "/api/v1/callbacks/{id}",
            &["GET", "PATCH", "DELETE"],
            get(get_callback)
                .patch(patch_callback)
                .delete(delete_callback),
        ),
        ("/api/v1/scripts/{name}", &["GET"], get(get_script)),
        ("/api/v1/agents/{name}/call", &["GET"], get(get_agent_call)),
        ("/api/v1/agents/{name}/events", &["GET"], get(agent_events)),
        ("/api/v1/agents/{name}/state", &["POST"], post(agent_state)),
        ("/api/v1/queues", &["GET"], get(get_queues)),
        ("/api/v1/queues/events", &["GET"], get(queue_events)),
        ("/api/v1/agents", &["GET"], get(get_agents)),
        ("/api/v1/config/reload", &["POST"], post(reload_config)),
        ("/api/v1/login", &["POST"], post(login)),
        ("/api/v1/calls/{id}/answers", &["POST"], post(post_answers)),
    ]
}

/// The API's routes as (path, methods), for tests and documentation.
/// `POST /api/v1/login` is the only one that takes no token.
pub fn routes() -> Vec<(&'static str, &'static [&'static str])> {
    table().into_iter().map(|(p, m, _)| (p, m)).collect()
}

/// What `POST /api/v1/login` checks against.
struct Logins {
    throttle: std::sync::Mutex<centralino_sip::throttle::Throttle>,
}

/// What each operator's desktop shows, kept by the engine task. Desktops
/// follow it over a WebSocket; each operator's desk is a `watch` channel:
/// the latest state wins, so a slow desktop sees the current call, never a
/// backlog of stale ones, and the engine task never waits for a browser.
#[derive(Clone, Default)]
pub struct Desks {
    desks: Arc<std::sync::Mutex<HashMap<String, Desk>>>,
    /// (reader, call) pairs already in the audit log (bounded).
    read: Arc<std::sync::Mutex<HashSet<(String, String)>>>,
    /// The queues as supervisors see them, published by the engine task.
    queues: Arc<tokio::sync::watch::Sender<Arc<Vec<QueueView>>>>,
    /// The operators' state words (read lock-free) and each one's slot.
    board: Arc<std::sync::OnceLock<BoardView>>,
}

/// The routing board and each operator's slot on it.
type BoardView = (
    Arc<centralino_routing::board::Board>,
    HashMap<String, usize>,
);

struct Desk {
    /// The latest changes, oldest first, each with its number on this
    /// desk: a desktop a little behind still gets every transition
    /// (offered, connected, idle) in order. Bounded: one further behind
    /// gets the current state and how many it missed.
    events: std::collections::VecDeque<(u64, Option<AgentCall>)>,
    /// The newest event's number, for desktops to wait on.
    seq: tokio::sync::watch::Sender<u64>,
    /// The last call shown (an operator finishes the script after it).
    last_call: Option<String>,
}

/// Changes kept per desk for desktops that fall behind.
const DESK_EVENTS: usize = 64;

impl Desk {
    fn new() -> Self {
        Self {
            events: std::collections::VecDeque::from([(0, None)]),
            seq: tokio::sync::watch::Sender::new(0),
            last_call: None,
        }
    }

    fn newest(&self) -> (u64, Option<AgentCall>) {
        self.events.back().cloned().unwrap_or((0, None))
    }
}

/// What a desktop that has seen a desk up to some number gets next.
#[derive(Debug, PartialEq)]
enum Since {
    /// Every change after it, in order, and the newest number.
    Events(Vec<Option<AgentCall>>, u64),
    /// Too far behind: the current state, how many changes before it were
    /// not delivered one by one, and the newest number.
    Gap(Option<AgentCall>, u64, u64),
}

impl Desks {
    /// The engine's latest queue views.
    pub fn set_queues(&self, views: Vec<QueueView>) {
        self.queues.send_replace(Arc::new(views));
    }

    /// The latest queue views (one `Arc` per publication: the same one
    /// until the engine publishes again).
    pub fn queues(&self) -> Arc<Vec<QueueView>> {
        self.queues.borrow().clone()
    }

    /// Where desktops read their operator's state (available, paused...).
    pub fn set_board(
        &self,
        board: Arc<centralino_routing::board::Board>,
        slots: HashMap<String, usize>,
    ) {
        let _ = self.board.set((board, slots));
    }

    /// The operator's state now: its label and, paused, why.
    fn agent_state(&self, agent: &str) -> Option<(&'static str, Option<&'static str>)> {
        let (board, slots) = self.board.get()?;
        let slot = board.load(*slots.get(agent)?);
        let why = (slot.code == centralino_routing::Code::Paused)
            .then(|| centralino_routing::PauseReason::from_aux(slot.aux).label());
        Some((slot.code.label(), why))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Desk>> {
        self.desks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The engine's news for `agent`'s desk: a call offered or connected,
    /// or `None` once it is over for them.
    pub fn set(&self, agent: String, info: Option<AgentCall>) {
        let mut desks = self.lock();
        let desk = desks.entry(agent).or_insert_with(Desk::new);
        // Only a call they answered: a ringing phone gives no right to
        // the call's record.
        if let Some(i) = info.as_ref().filter(|i| i.state == DeskState::Connected) {
            desk.last_call = Some(i.call.clone());
        }
        let seq = desk.newest().0 + 1;
        desk.events.push_back((seq, info));
        while desk.events.len() > DESK_EVENTS {
            desk.events.pop_front();
        }
        desk.seq.send_replace(seq);
    }

    fn current(&self, agent: &str) -> Option<AgentCall> {
        self.lock().get(agent).and_then(|d| d.newest().1)
    }

    /// Follows `agent`'s desk (a configured operator: the caller checks):
    /// the newest change's number moves on each change.
    fn watch(&self, agent: &str) -> tokio::sync::watch::Receiver<u64> {
        self.lock()
            .entry(agent.to_owned())
            .or_insert_with(Desk::new)
            .seq
            .subscribe()
    }

    /// The newest change's number and the state it left, together.
    fn snapshot(&self, agent: &str) -> (u64, Option<AgentCall>) {
        self.lock().get(agent).map_or((0, None), Desk::newest)
    }

    /// What follows change number `seen` on `agent`'s desk.
    fn since(&self, agent: &str, seen: u64) -> Since {
        let desks = self.lock();
        let Some(desk) = desks.get(agent) else {
            return Since::Events(Vec::new(), seen);
        };
        let newest = desk.newest();
        let oldest = desk.events.front().map_or(0, |e| e.0);
        if seen + 1 < oldest {
            return Since::Gap(newest.1, newest.0 - seen - 1, newest.0);
        }
        let events = desk
            .events
            .iter()
            .filter(|(n, _)| *n > seen)
            .map(|(_, e)| e.clone())
            .collect();
        Since::Events(events, newest.0.max(seen))
    }

    /// Whether `reader` reads `call` for the first time (recently: the set
    /// is forgotten past 10,000 pairs, at worst auditing a read twice).
    fn first_read(&self, reader: &str, call: &str) -> bool {
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if read.len() >= 10_000 {
            read.clear();
        }
        read.insert((reader.to_owned(), call.to_owned()))
    }

    /// Whether `call` is the call `agent` talks on or last talked on.
    fn had_call(&self, agent: &str, call: &str) -> bool {
        self.lock()
            .get(agent)
            .is_some_and(|d| d.last_call.as_deref() == Some(call))
    }
}

/// Reads the configuration again (the binary knows where from).
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Where the API and SIGHUP find the reload once the SIP side runs, with
/// the configuration running now (what a reload is compared with).
#[derive(Clone, Default)]
pub struct ReloadSlot {
    control: Arc<tokio::sync::Mutex<Option<Control>>>,
    /// The engine's handle, also for pauses (never waits for a reload).
    engine: Arc<std::sync::Mutex<Option<crate::sip::Reloader>>>,
}

struct Control {
    loader: Loader,
    reloader: crate::sip::Reloader,
    current: Config,
}

/// Why a reload was not applied (nothing of it was).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The node is still starting.
    #[error("the node is not ready")]
    NotReady,
    /// The new file is not a valid configuration.
    #[error("{0}")]
    Invalid(String),
    /// Keys a running node cannot apply changed.
    #[error("these keys need a restart: {}", .0.join(", "))]
    Restart(Vec<String>),
    /// The engine refused it.
    #[error("{0}")]
    Refused(String),
}

impl ReloadSlot {
    /// Enables reloads (`POST /api/v1/config/reload`, SIGHUP) of a node
    /// running `current`.
    pub async fn enable(&self, loader: Loader, reloader: crate::sip::Reloader, current: Config) {
        *self
            .engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reloader.clone());
        *self.control.lock().await = Some(Control {
            loader,
            reloader,
            current,
        });
    }

    fn engine(&self) -> Option<crate::sip::Reloader> {
        self.engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the configuration again and applies every key that changed,
    /// or nothing: a key the node cannot apply live refuses the whole
    /// reload, named. `Ok` lists the keys applied. One reload at a time.
    pub async fn reload(&self, api: &Api) -> Result<Vec<String>, ReloadError> {
        let mut guard = self.control.lock().await;
        let control = guard.as_mut().ok_or(ReloadError::NotReady)?;
        let loader = control.loader.clone();
        let config = tokio::task::spawn_blocking(move || loader())
            .await
            .map_err(|_| ReloadError::Invalid("reading the configuration failed".into()))?
            .map_err(ReloadError::Invalid)?;
        let changed = centralino_config::reload::changed_keys(&control.current, &config);
        let mut restart = centralino_config::reload::needs_restart(&changed);
        let dials = |c: &Config| c.trunks.iter().any(|t| t.outbound.is_some());
        if dials(&config) && !dials(&control.current) {
            // The callback scheduler starts with a node that can dial.
            restart.push("trunks[].outbound (the first outbound trunk)".into());
        }
        if !restart.is_empty() {
            warn!(keys = %restart.join(", "), "reload refused: keys need a restart");
            api.metrics
                .config_reloads
                .with_label_values(&["refused"])
                .inc();
            return Err(ReloadError::Restart(restart));
        }
        control
            .reloader
            .reload(config.clone())
            .await
            .map_err(ReloadError::Refused)?;
        api.apply(&config);
        centralino_types::set_unmask_numbers(config.unmask_numbers);
        info!(keys = %changed.join(", "), "reload applied");
        control.current = config;
        Ok(changed)
    }
}

impl Api {
    /// Opens (or creates) `DIR/centralino.db`, the directory owner-only.
    pub fn start(config: &Config, data_dir: &Path, metrics: Metrics) -> Result<Self, ApiError> {
        centralino_store::owner_only::create_dir(data_dir)
            .map_err(|e| ApiError::Dir(data_dir.to_path_buf(), e))?;
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
            config.retention_days,
            config.notifications.is_some(),
            metrics.clone(),
            store_probe.clone(),
        )?;
        if let Some(n) = &config.notifications {
            let tls = n.tls.as_ref().map(tls_connector).transpose()?;
            tokio::spawn(notifier(store.clone(), n.clone(), tls, metrics.clone()));
        }
        info!(path = %path.display(), "store open");
        let sessions = Sessions::new(&config.api_sessions)?;
        let limits = config.callback_limits;
        Ok(Self {
            store,
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
            reload: ReloadSlot::default(),
            desks: Desks::default(),
            agents: Arc::new(config.agents.iter().map(|a| a.username.clone()).collect()),
            agent_tenants: Arc::new(
                config
                    .agents
                    .iter()
                    .map(|a| {
                        let tenant = config.tenants.get(a.tenant).cloned().unwrap_or_default();
                        (a.username.clone(), tenant)
                    })
                    .collect(),
            ),
            logins: Arc::new(Logins {
                throttle: std::sync::Mutex::new(centralino_sip::throttle::Throttle::new(
                    config.registrar.throttle,
                )),
            }),
            sessions: Arc::new(sessions),
            metrics,
            store_probe,
        })
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

    /// The operators' current calls (the engine task fills it).
    pub fn desks(&self) -> Desks {
        self.desks.clone()
    }

    /// The slot the binary fills to enable the reload endpoint.
    pub fn reload_slot(&self) -> ReloadSlot {
        self.reload.clone()
    }

    /// Where the engine's call records go.
    pub fn records(&self) -> RecordSink {
        RecordSink(self.store.0.clone())
    }

    /// The API's routes.
    pub fn router(self) -> Router {
        table()
            .into_iter()
            .fold(Router::new(), |r, (path, _, methods)| {
                r.route(path, methods)
            })
            .with_state(self)
    }

    fn count(&self, route: &str, code: StatusCode) {
        self.metrics
            .api_requests
            .with_label_values(&[route, code.as_str()])
            .inc();
    }

    /// Counts the request and writes who did it to the audit log (only
    /// requests with a known token: anonymous ones are only counted, so a
    /// flood cannot fill the disk). `target` is the record's id, never a
    /// phone number.
    fn done(&self, route: &str, token: Option<&str>, target: &str, code: StatusCode) {
        self.count(route, code);
        if let Some(actor) = token.and_then(|t| self.token_name(t)) {
            self.audit_as(&actor, route, target, code);
        }
    }

    /// An audit entry for a known actor (a token's name).
    fn audit_as(&self, actor: &str, action: &str, target: &str, code: StatusCode) {
        let _ = self
            .store
            .0
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
        if Sessions::is_session(token) {
            return self
                .sessions
                .verify(token, unix_now())
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

/// Constant-time comparison: a wrong token takes as long as a right one.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// What a request needs of its token.
#[derive(Clone, Copy, Debug)]
enum Need<'a> {
    /// Callbacks: admin and callbacks tokens.
    Callbacks,
    /// One operator's desk: admin, or that operator's own token.
    Desk(&'a str),
    /// Operator work (scripts, answers): admin and operator tokens.
    Operator,
    /// Queue and operator views: admin and supervisor tokens.
    Supervisor,
    /// Configuration: admin only.
    Admin,
}

/// The bearer token of `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).map(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim()
    })
}

fn authorize<'a>(
    api: &'a Api,
    headers: &HeaderMap,
    need: Need<'_>,
) -> Result<Cow<'a, ApiToken>, Box<Response>> {
    authorize_token(api, bearer(headers), need)
}

/// What a desk session may do: an `agent` token of that operator, named
/// `desk:USER` in logs and the audit.
fn session_token(agent: String) -> ApiToken {
    ApiToken {
        name: format!("desk:{agent}"),
        token: String::new(),
        role: centralino_config::Role::Agent,
        agent: Some(agent),
        tenant: None,
    }
}

/// 401 without a known token, 403 when its role may not do this.
fn authorize_token<'a>(
    api: &'a Api,
    token: Option<&str>,
    need: Need<'_>,
) -> Result<Cow<'a, ApiToken>, Box<Response>> {
    use centralino_config::Role;
    let Some(token) = token else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>",
        )));
    };
    let t = if Sessions::is_session(token) {
        // An operator's desk session: signed, never stored.
        let Some(agent) = api.sessions.verify(token, unix_now()) else {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "session expired or not valid: log in again",
            )));
        };
        session_token(agent)
    } else {
        // Every token is compared (constant time): which one matched
        // leaks nothing through timing.
        let live = api.live();
        let mut found = None;
        for t in &live.tokens {
            if same(t.token.as_bytes(), token.as_bytes()) {
                found = Some(t);
            }
        }
        let Some(t) = found else {
            warn!("API request with an unknown token refused");
            return Err(Box::new(error(StatusCode::UNAUTHORIZED, "unknown token")));
        };
        t.clone()
    };
    let allowed = match (t.role, need) {
        (Role::Admin, _)
        | (Role::Callbacks, Need::Callbacks)
        | (Role::Agent, Need::Operator)
        | (Role::Supervisor, Need::Supervisor) => true,
        (Role::Agent, Need::Desk(name)) => t.agent.as_deref() == Some(name),
        _ => false,
    };
    if allowed {
        Ok(Cow::Owned(t))
    } else {
        warn!(token = %t.name, ?need, "API request beyond the token's role refused");
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            match need {
                Need::Admin => "needs an admin token",
                Need::Desk(_) => "an operator's token reads that operator's desk only",
                _ => "this token's role may not do this",
            },
        )))
    }
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-12-01T09:00:00Z`.
fn rfc3339(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS` with `Z` or `±HH:MM` (fractions ignored).
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let (mo, d) = (u32::try_from(mo).ok()?, u32::try_from(d).ok()?);
    if !(1..=12).contains(&mo) || civil_from_days(days_from_civil(y, mo, d)) != (y, mo, d) {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

fn view(cb: &Callback) -> Value {
    json!({
        "id": cb.id,
        "queue": cb.queue,
        "number": cb.number,
        "status": cb.status.as_str(),
        "not_before": cb.not_before.map(rfc3339),
        "requirements": cb.requirements,
        "priority": cb.priority,
        "attempts": cb.attempts,
        "outcome": cb.outcome,
        "source": cb.source,
        "created_at": rfc3339(cb.created_at),
        "updated_at": rfc3339(cb.updated_at),
    })
}

/// A time: RFC 3339 text or Unix seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum When {
    Unix(i64),
    Text(String),
}

fn when(w: &When) -> Result<i64, String> {
    match w {
        When::Unix(t) if (0..=253_402_300_799).contains(t) => Ok(*t),
        When::Unix(_) => Err("not_before: out of range".into()),
        When::Text(s) => parse_rfc3339(s).ok_or_else(|| {
            format!(
                "not_before: not an RFC 3339 time (2026-12-01T09:00:00+01:00): {:?}",
                truncate(s)
            )
        }),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    queue: String,
    number: String,
    not_before: Option<When>,
    requirements: Option<String>,
    priority: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    not_before: Option<Option<When>>,
    priority: Option<i32>,
    #[serde(default, deserialize_with = "present")]
    requirements: Option<Option<String>>,
}

/// Tells a present `null` (clear) from an absent field (keep).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// E.164-like: an optional `+`, 6 to 15 digits.
fn valid_number(n: &str) -> bool {
    let digits = n.strip_prefix('+').unwrap_or(n);
    (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn check_requirements(api: &Api, r: &str) -> Result<(), String> {
    Requirement::parse(r, &api.live().catalog)
        .map(|_| ())
        .map_err(|e| format!("requirements: {e}"))
}

fn check_priority(p: i32) -> Result<(), String> {
    if (-100..=100).contains(&p) {
        Ok(())
    } else {
        Err("priority: must be in -100..=100".into())
    }
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

fn random_id() -> String {
    use rand::TryRngCore;
    let mut b = [0u8; 16];
    let _ = rand::rngs::OsRng.try_fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn create_callback(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = create(&api, peer, &headers, &body).await;
    api.done("callbacks_create", bearer(&headers), "", r.status());
    r
}

async fn create(api: &Api, peer: SocketAddr, headers: &HeaderMap, body: &Bytes) -> Response {
    let (token, b): (_, CreateBody) = match authorized_body(api, headers, body, Need::Callbacks) {
        Ok(tb) => tb,
        Err(r) => return *r,
    };
    let live = api.live();
    let mut problems = Vec::new();
    // A token of one tenant knows no other tenant's queues.
    let queue = live
        .queues
        .get(&b.queue)
        .filter(|_| live.sees(token.tenant.as_deref(), &b.queue));
    if queue.is_none() {
        problems.push(format!("queue: unknown queue {:?}", truncate(&b.queue)));
    }
    // The number is stored as the dial plan reads it (E.164), so what
    // was checked is what a trunk dials, and `0039…`, `+39…` and a
    // national spelling are one request for deduplication and limits.
    let mut e164 = None;
    if !valid_number(&b.number) {
        problems.push("number: an optional + and 6 to 15 digits".to_owned());
    } else if let Some((tenant, plan)) = queue {
        let why = match plan.check(&b.number) {
            Ok(n) => {
                e164 = Some(n);
                None
            }
            Err(why) => Some(why),
        };
        if let Some(why) = why {
            // TEST-MATRIX D18: refused before anything is stored or dialled.
            info!(number = %Masked(&b.number), tenant = %tenant, reason = why.label(), "callback refused by the dial plan");
            api.metrics
                .dial_plan_refused
                .with_label_values(&["api", why.label()])
                .inc();
            api.metrics
                .callbacks
                .with_label_values(&["dial_plan"])
                .inc();
            let problem = format!("number: refused by the dial plan: {why}");
            return ok(
                StatusCode::FORBIDDEN,
                &json!({ "error": problem, "problems": [problem] }),
            );
        }
    }
    let not_before = match b.not_before.as_ref().map(when).transpose() {
        Ok(t) => t,
        Err(e) => {
            problems.push(e);
            None
        }
    };
    if let Some(r) = &b.requirements
        && let Err(e) = check_requirements(api, r)
    {
        problems.push(e);
    }
    if let Err(e) = check_priority(b.priority.unwrap_or(0)) {
        problems.push(e);
    }
    if !problems.is_empty() {
        api.metrics.callbacks.with_label_values(&["rejected"]).inc();
        return ok(
            StatusCode::BAD_REQUEST,
            &json!({ "error": problems.join("; "), "problems": problems }),
        );
    }
    let number = e164.unwrap_or(b.number);
    if let Some(wait) = api.limited(peer, &number) {
        api.metrics
            .callbacks
            .with_label_values(&["rate_limited"])
            .inc();
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many callback requests from this client or for this number: try again later",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let new = NewCallback {
        id: random_id(),
        queue: b.queue,
        number,
        not_before,
        requirements: b.requirements,
        priority: b.priority.unwrap_or(0),
        source: "api".into(),
        created_at: None,
    };
    let now = unix_now();
    match api.store.ask(|r| StoreReq::Create(new, now, r)).await {
        Ok(Created::New(cb)) => {
            info!(id = %cb.id, queue = %cb.queue, number = %Masked(&cb.number), "callback requested");
            api.metrics.callbacks.with_label_values(&["created"]).inc();
            ok(StatusCode::CREATED, &view(&cb))
        }
        Ok(Created::Existing(cb)) => {
            api.metrics
                .callbacks
                .with_label_values(&["deduplicated"])
                .inc();
            let mut v = view(&cb);
            v["deduplicated"] = json!(true);
            ok(StatusCode::OK, &v)
        }
        Err(e) => {
            warn!(error = %e, "callback not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store cannot take the request now; retry",
            )
        }
    }
}

async fn get_callback(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let target = id.clone();
    let r = match authorize(&api, &headers, Need::Callbacks) {
        Err(r) => *r,
        Ok(token) => match api.store.ask(|r| StoreReq::Get(id, r)).await {
            Ok(Some(cb)) if api.live().sees(token.tenant.as_deref(), &cb.queue) => {
                ok(StatusCode::OK, &view(&cb))
            }
            // Another tenant's callback is as absent as one that never was.
            Ok(_) => error(StatusCode::NOT_FOUND, "no such callback"),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
        },
    };
    api.done("callbacks_get", bearer(&headers), &target, r.status());
    r
}

async fn list_callbacks(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let r = list(&api, &headers, query.as_deref()).await;
    api.done("callbacks_list", bearer(&headers), "", r.status());
    r
}

async fn list(api: &Api, headers: &HeaderMap, query: Option<&str>) -> Response {
    let token = match authorize(api, headers, Need::Callbacks) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // A tenant's token lists its tenant's queues only.
    let queues: Option<Vec<String>> = token.tenant.as_deref().map(|t| {
        api.live()
            .queues
            .iter()
            .filter(|(_, (qt, _))| qt == t)
            .map(|(q, _)| q.clone())
            .collect()
    });
    let mut status = None;
    let mut limit = 100;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("status", s)) => match Status::parse(s) {
                Some(s) => status = Some(s),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "status: one of pending, in_progress, done, failed, cancelled",
                    );
                }
            },
            Some(("limit", l)) => match l.parse::<usize>() {
                Ok(l) if (1..=centralino_store::MAX_LIST).contains(&l) => limit = l,
                _ => return error(StatusCode::BAD_REQUEST, "limit: 1 to 1000"),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "unknown query parameter (status, limit)",
                );
            }
        }
    }
    match api
        .store
        .ask(|r| StoreReq::List(status, queues, limit, r))
        .await
    {
        Ok(list) => {
            let items: Vec<Value> = list.iter().map(view).collect();
            ok(StatusCode::OK, &json!({ "callbacks": items }))
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    }
}

fn edited(api: &Api, e: Result<Edit, String>) -> Response {
    match e {
        Ok(Edit::Done(cb)) => ok(StatusCode::OK, &view(&cb)),
        Ok(Edit::NotFound) => error(StatusCode::NOT_FOUND, "no such callback"),
        Ok(Edit::NotPending(cb)) => {
            let mut v = json!({ "error": format!("the callback is {}: it can no longer change", cb.status.as_str()) });
            v["callback"] = view(&cb);
            ok(StatusCode::CONFLICT, &v)
        }
        Err(_) => {
            let _ = api;
            error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
        }
    }
}

async fn patch_callback(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let r = patch(&api, &headers, id.clone(), &body).await;
    api.done("callbacks_patch", bearer(&headers), &id, r.status());
    r
}

/// `Err(404)` unless the callback exists and the token's tenant (if it
/// has one) owns its queue: ids of other tenants' callbacks act on nothing
/// and reveal nothing (TEST-MATRIX D12).
async fn own_callback(api: &Api, token: &ApiToken, id: &str) -> Result<(), Response> {
    let Some(tenant) = token.tenant.as_deref() else {
        return Ok(());
    };
    let id = id.to_owned();
    match api.store.ask(|r| StoreReq::Get(id, r)).await {
        Ok(Some(cb)) if api.live().sees(Some(tenant), &cb.queue) => Ok(()),
        Ok(_) => Err(error(StatusCode::NOT_FOUND, "no such callback")),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is unavailable",
        )),
    }
}

async fn patch(api: &Api, headers: &HeaderMap, id: String, body: &Bytes) -> Response {
    let b: PatchBody = match authorized_body(api, headers, body, Need::Callbacks) {
        Ok((token, b)) => match own_callback(api, &token, &id).await {
            Ok(()) => b,
            Err(r) => return r,
        },
        Err(r) => return *r,
    };
    let not_before = match &b.not_before {
        None => None,
        Some(None) => Some(None),
        Some(Some(w)) => match when(w) {
            Ok(t) => Some(Some(t)),
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        },
    };
    if let Some(Some(r)) = &b.requirements
        && let Err(e) = check_requirements(api, r)
    {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    if let Some(p) = b.priority
        && let Err(e) = check_priority(p)
    {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let p = Patch {
        not_before,
        priority: b.priority,
        requirements: b.requirements,
    };
    let now = unix_now();
    let e = api.store.ask(|r| StoreReq::Update(id, p, now, r)).await;
    if matches!(e, Ok(Edit::Done(_))) {
        api.metrics.callbacks.with_label_values(&["updated"]).inc();
    }
    edited(api, e)
}

async fn delete_callback(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let target = id.clone();
    let token = match authorize(&api, &headers, Need::Callbacks) {
        Ok(t) => own_callback(&api, &t, &id).await.map(|()| t),
        Err(r) => Err(*r),
    };
    let r = match token {
        Err(r) => r,
        Ok(_) => {
            let now = unix_now();
            let e = api.store.ask(|r| StoreReq::Cancel(id, now, r)).await;
            if matches!(e, Ok(Edit::Done(_))) {
                api.metrics
                    .callbacks
                    .with_label_values(&["cancelled"])
                    .inc();
            }
            edited(&api, e)
        }
    };
    api.done("callbacks_delete", bearer(&headers), &target, r.status());
    r
}

/// What a desktop shows: the call with the IVR's answers, the script, the
/// callback.
fn desk_json(d: &AgentCall) -> Value {
    let variables: serde_json::Map<String, Value> = d
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "state": d.state.as_str(),
        "call": d.call,
        "queue": d.queue,
        "flow": d.flow,
        "variables": variables,
        "script": d.script,
        "callback": d.callback,
    })
}

async fn get_agent_call(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let r = match authorize(&api, &headers, Need::Desk(&name)) {
        Err(r) => *r,
        Ok(t) => match api.desks.current(&name) {
            None => error(StatusCode::NOT_FOUND, "no call for this operator now"),
            Some(d) => {
                // Desktops poll: each (reader, call) is audited once.
                if api.desks.first_read(&t.name, &d.call) {
                    api.audit_as(&t.name, "agent_call", &d.call, StatusCode::OK);
                }
                ok(StatusCode::OK, &desk_json(&d))
            }
        },
    };
    if r.status() == StatusCode::FORBIDDEN {
        // Someone tried another operator's desk: that is in the log.
        api.done("agent_call", bearer(&headers), &name, r.status());
        return r;
    }
    api.count("agent_call", r.status());
    r
}

/// Longest a desktop may take to accept one event before it is dropped.
const DESK_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a desktop's operator state is read from the board.
const DESK_STATE_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// Keep-alive towards desktops (and the proxies between).
const DESK_PING: std::time::Duration = std::time::Duration::from_secs(30);
/// Desktops only send control frames; anything larger is refused.
const DESK_MAX_MESSAGE: usize = 4096;

/// `GET /api/v1/agents/{name}/events`: a WebSocket that pushes the
/// operator's desk: the current state at once, then every change
/// (`offered`, `connected`, `idle`), each with a sequence number. Browsers
/// cannot set headers on a WebSocket: the token may come as
/// `?access_token=` (RFC 6750 §2.3).
async fn agent_events(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    RawQuery(query): RawQuery,
    upgrade: Upgrade,
) -> Response {
    let from_query = query_token(query.as_deref());
    let token = bearer(&headers).or(from_query.as_deref());
    let target = name.clone();
    let r = match authorize_token(&api, token, Need::Desk(&name)) {
        Err(r) => *r,
        Ok(_) if !api.agents.contains(&name) => error(StatusCode::NOT_FOUND, "no such operator"),
        Ok(t) => match upgrade {
            Err(e) => upgrade_required(&e),
            Ok(ws) => {
                let rx = api.desks.watch(&name);
                let gauge = api.metrics.desk_connections.clone();
                let (api2, actor) = (api.clone(), t.name.clone());
                ws.max_message_size(DESK_MAX_MESSAGE)
                    .max_frame_size(DESK_MAX_MESSAGE)
                    .on_upgrade(move |socket| async move {
                        gauge.inc();
                        desk_socket(socket, rx, api2, name, actor).await;
                        gauge.dec();
                    })
            }
        },
    };
    api.done("agent_events", token, &target, r.status());
    r
}

async fn desk_socket(
    mut socket: axum::extract::ws::WebSocket,
    mut rx: tokio::sync::watch::Receiver<u64>,
    api: Api,
    agent: String,
    actor: String,
) {
    let desks = api.desks.clone();
    // Each call whose data this desktop receives is in the audit log once.
    let mut audited: Option<String> = None;
    let mut audit = |d: Option<&AgentCall>| {
        if let Some(d) = d
            && audited.as_deref() != Some(d.call.as_str())
        {
            audited = Some(d.call.clone());
            api.audit_as(&actor, "agent_events_call", &d.call, StatusCode::OK);
        }
    };
    use axum::extract::ws::Message;
    let mut seq = 0u64;
    let mut ping = tokio::time::interval(DESK_PING);
    ping.tick().await;
    // The operator's own state is read from the board (lock-free) a few
    // times a second and pushed when it changes.
    let mut poll = tokio::time::interval(DESK_STATE_POLL);
    // The current state first, then every change after it.
    rx.borrow_and_update();
    let (mut seen, first) = desks.snapshot(&agent);
    audit(first.as_ref());
    let mut pending = vec![call_event(first.as_ref())];
    let mut shown_state = None;
    loop {
        for event in pending.drain(..) {
            if !send_seq(&mut socket, &mut seq, event).await {
                return;
            }
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                rx.borrow_and_update();
                match desks.since(&agent, seen) {
                    Since::Events(events, newest) => {
                        for e in &events {
                            audit(e.as_ref());
                            pending.push(call_event(e.as_ref()));
                        }
                        seen = newest;
                    }
                    Since::Gap(now, missed, newest) => {
                        audit(now.as_ref());
                        let mut e = call_event(now.as_ref());
                        e["missed"] = json!(missed);
                        pending.push(e);
                        seen = newest;
                    }
                }
            }
            _ = poll.tick() => {
                let now = desks.agent_state(&agent);
                if now.is_some() && now != shown_state {
                    shown_state = now;
                    if let Some((state, why)) = now {
                        pending.push(json!({ "event": "agent", "state": state, "reason": why }));
                    }
                }
            }
            msg = socket.recv() => match msg {
                // Pings are answered by the WebSocket layer; text from a
                // desktop means nothing here.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if !send_ws(&mut socket, Message::Ping(Bytes::new())).await {
                    return;
                }
            }
        }
    }
}

/// A desk's call event: `offered`/`connected` with the call, or `idle`.
fn call_event(d: Option<&AgentCall>) -> Value {
    d.map_or_else(
        || json!({ "event": "idle" }),
        |d| {
            let mut v = desk_json(d);
            v["event"] = json!(d.state.as_str());
            v
        },
    )
}

/// What a supervisor sees of the queues: their tenant's only when the
/// token names one.
fn queues_json(views: &[QueueView], tenant: Option<&str>) -> Value {
    let now = unix_now_ms();
    let queues: Vec<Value> = views
        .iter()
        .filter(|q| tenant.is_none_or(|t| q.tenant == t))
        .map(|q| {
            let agents: serde_json::Map<String, Value> = q
                .agents
                .iter()
                .map(|(label, n)| ((*label).to_owned(), json!(n)))
                .collect();
            json!({
                "name": q.name,
                "tenant": q.tenant,
                "waiting": q.waiting,
                "oldest_wait_seconds": q.oldest_since_ms.map_or(0, |t| (now - t).max(0) / 1000),
                "expected_wait_seconds": q.expected_wait_seconds,
                "agents": agents,
            })
        })
        .collect();
    json!({ "queues": queues })
}

/// `GET /api/v1/queues`: each queue's waiting calls, oldest wait, expected
/// wait and operators by state (supervisor and admin tokens; a supervisor
/// token with a tenant sees that tenant's queues only).
async fn get_queues(State(api): State<Api>, headers: HeaderMap) -> Response {
    let r = match authorize(&api, &headers, Need::Supervisor) {
        Err(r) => *r,
        Ok(t) => {
            let views = api.desks.queues.borrow().clone();
            ok(StatusCode::OK, &queues_json(&views, t.tenant.as_deref()))
        }
    };
    api.done("queues_get", bearer(&headers), "", r.status());
    r
}

/// `GET /api/v1/agents`: every operator's state now (read from the routing
/// board), per tenant as for the queues.
async fn get_agents(State(api): State<Api>, headers: HeaderMap) -> Response {
    let r = match authorize(&api, &headers, Need::Supervisor) {
        Err(r) => *r,
        Ok(t) => {
            let tenant = t.tenant.as_deref();
            let agents: Vec<Value> = api
                .agent_tenants
                .iter()
                .filter(|(_, at)| tenant.is_none_or(|t| at == t))
                .map(|(name, at)| {
                    let (state, reason) = api.desks.agent_state(name).unwrap_or(("unknown", None));
                    json!({ "agent": name, "tenant": at, "state": state, "reason": reason })
                })
                .collect();
            ok(StatusCode::OK, &json!({ "agents": agents }))
        }
    };
    api.done("agents_get", bearer(&headers), "", r.status());
    r
}

/// `GET /api/v1/queues/events`: a WebSocket pushing the queues view (as
/// `GET /api/v1/queues`, with a `seq`) at once and whenever it changes, at
/// most once a second. Token in the header or `?access_token=`.
async fn queue_events(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Upgrade,
) -> Response {
    let from_query = query_token(query.as_deref());
    let token = bearer(&headers).or(from_query.as_deref());
    let r = match authorize_token(&api, token, Need::Supervisor) {
        Err(r) => *r,
        Ok(t) => match upgrade {
            Err(e) => upgrade_required(&e),
            Ok(ws) => {
                let rx = api.desks.queues.subscribe();
                let tenant = t.tenant.clone();
                ws.max_message_size(DESK_MAX_MESSAGE)
                    .max_frame_size(DESK_MAX_MESSAGE)
                    .on_upgrade(move |socket| supervisor_socket(socket, rx, tenant))
            }
        },
    };
    api.done("queue_events", token, "", r.status());
    r
}

async fn supervisor_socket(
    mut socket: axum::extract::ws::WebSocket,
    mut rx: tokio::sync::watch::Receiver<Arc<Vec<QueueView>>>,
    tenant: Option<String>,
) {
    use axum::extract::ws::Message;
    let mut seq = 0u64;
    let mut ping = tokio::time::interval(DESK_PING);
    ping.tick().await;
    let mut views = rx.borrow_and_update().clone();
    loop {
        let event = queues_json(&views, tenant.as_deref());
        if !send_seq(&mut socket, &mut seq, event).await {
            return;
        }
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    views = rx.borrow_and_update().clone();
                    break;
                }
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => {
                    if !send_ws(&mut socket, Message::Ping(Bytes::new())).await {
                        return;
                    }
                }
            }
        }
    }
}

/// A WebSocket upgrade, or why the request is not one.
type Upgrade = Result<
    axum::extract::ws::WebSocketUpgrade,
    axum::extract::ws::rejection::WebSocketUpgradeRejection,
>;

fn upgrade_required(e: &axum::extract::ws::rejection::WebSocketUpgradeRejection) -> Response {
    error(
        StatusCode::UPGRADE_REQUIRED,
        &format!("a WebSocket upgrade is needed here ({e})"),
    )
}

/// Sends one message; `false` when the peer is gone or took longer than
/// [`DESK_SEND_TIMEOUT`] (the connection is then dropped).
async fn send_ws(
    socket: &mut axum::extract::ws::WebSocket,
    msg: axum::extract::ws::Message,
) -> bool {
    matches!(
        tokio::time::timeout(DESK_SEND_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Sends `event` as a text frame with the next sequence number.
async fn send_seq(
    socket: &mut axum::extract::ws::WebSocket,
    seq: &mut u64,
    mut event: Value,
) -> bool {
    *seq += 1;
    event["seq"] = json!(*seq);
    send_ws(
        socket,
        axum::extract::ws::Message::Text(event.to_string().into()),
    )
    .await
}

/// The `access_token` query parameter (browsers' WebSockets).
fn query_token(query: Option<&str>) -> Option<String> {
    query.and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("access_token="))
            .map(str::to_owned)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

/// `POST /api/v1/login` `{"username", "password"}` with an operator's SIP
/// credentials: `200 {"token", "agent", "expires_at"}`, a desk session for
/// that operator only (their desk, its WebSocket, scripts, answers, breaks).
/// Wrong credentials, or an unknown operator, get the same `401`; too many
/// failures from one address get `429` for the registrar's ban time, even
/// with the right password.
async fn login(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let (r, user) = check_login(&api, peer, &body);
    if let Some(user) = user.filter(|u| api.live().credentials.contains_key(u)) {
        // Who logged in, or tried to as whom: in the audit log.
        api.audit_as(
            &format!("desk:{user}"),
            "login",
            &peer.ip().to_string(),
            r.status(),
        );
    }
    api.count("login", r.status());
    r
}

fn check_login(api: &Api, peer: SocketAddr, body: &Bytes) -> (Response, Option<String>) {
    if !api.sessions.enabled() {
        return (
            error(
                StatusCode::NOT_FOUND,
                "operator logins are off (api.session_hours = 0)",
            ),
            None,
        );
    }
    let b: LoginBody = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return (*r, None),
    };
    if b.username.is_empty() || b.username.len() > 64 || b.password.len() > 256 {
        return (
            error(
                StatusCode::BAD_REQUEST,
                "username: 1 to 64 characters; password: at most 256",
            ),
            None,
        );
    }
    let now = std::time::Instant::now();
    let ip = peer.ip();
    let logins = &api.logins;
    let mut throttle = logins
        .throttle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if throttle.banned(now, ip, &b.username) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address: try again later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("300"));
        return (r, Some(b.username));
    }
    // An unknown operator costs the same SHA-256 HA1 and comparison as a
    // known one (a stored HA1 no password gives), so timing does not tell
    // which usernames exist.
    let unknown = centralino_sip::auth::Credentials {
        ha1_md5: None,
        ha1_sha256: Some("-".repeat(64)),
    };
    let live = api.live();
    let creds = live.credentials.get(&b.username);
    let right = creds
        .unwrap_or(&unknown)
        .matches_password(&b.username, &live.realm, &b.password)
        && creds.is_some();
    if !right {
        let bans = throttle.failure(now, ip, &b.username);
        drop(throttle);
        for (scope, time) in bans {
            warn!(%ip, scope = scope.label(), seconds = time.as_secs(), "desk login guessing: address banned");
        }
        warn!(%ip, "desk login refused: wrong username or password");
        return (
            error(StatusCode::UNAUTHORIZED, "wrong username or password"),
            Some(b.username),
        );
    }
    throttle.success(ip, &b.username);
    drop(throttle);
    let (token, expires) = api.sessions.issue(&b.username, unix_now());
    info!(agent = %b.username, "desk login");
    (
        ok(
            StatusCode::OK,
            &json!({
                "token": token,
                "agent": b.username,
                "expires_at": rfc3339(expires),
            }),
        ),
        Some(b.username),
    )
}

async fn agent_state(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let r = set_state(&api, &headers, name.clone(), &body).await;
    api.done("agent_state", bearer(&headers), &name, r.status());
    r
}

/// `POST /api/v1/agents/{name}/state` `{"state": "paused" | "available",
/// "reason"?}`: the operator's break from their desktop.
async fn set_state(api: &Api, headers: &HeaderMap, name: String, body: &Bytes) -> Response {
    use centralino_b2bua::AgentStateError;
    let b: StateBody = match authorized_body(api, headers, body, Need::Desk(&name)) {
        Ok((_, b)) => b,
        Err(r) => return *r,
    };
    let paused = match b.state.as_str() {
        "paused" => true,
        "available" => false,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "state: {:?} is neither \"paused\" nor \"available\"",
                    truncate(other)
                ),
            );
        }
    };
    if let Some(r) = &b.reason
        && (r.is_empty()
            || r.len() > 64
            || !r
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "reason: 1 to 64 letters, digits, - and _ (e.g. \"pausa_pranzo\")",
        );
    }
    let Some(engine) = api.reload.engine() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "not ready");
    };
    match engine.set_paused(name.clone(), paused, b.reason).await {
        Ok(state) => ok(StatusCode::OK, &json!({ "agent": name, "state": state })),
        Err(Some(AgentStateError::Unknown)) => error(StatusCode::NOT_FOUND, "no such operator"),
        Err(Some(e)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(None) => error(StatusCode::SERVICE_UNAVAILABLE, "the engine is not running"),
    }
}

async fn reload_config(State(api): State<Api>, headers: HeaderMap) -> Response {
    let r = reload(&api, &headers).await;
    api.done("config_reload", bearer(&headers), "", r.status());
    r
}

async fn reload(api: &Api, headers: &HeaderMap) -> Response {
    if let Err(r) = authorize(api, headers, Need::Admin) {
        return *r;
    }
    match api.reload.reload(api).await {
        Ok(changed) => ok(
            StatusCode::OK,
            &json!({ "applied": true, "changed": changed }),
        ),
        Err(ReloadError::NotReady) => error(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        Err(ReloadError::Invalid(problems)) => error(StatusCode::BAD_REQUEST, &problems),
        Err(ReloadError::Restart(keys)) => {
            let message = ReloadError::Restart(keys.clone()).to_string();
            ok(
                StatusCode::CONFLICT,
                &json!({ "applied": false, "error": message, "keys": keys }),
            )
        }
        Err(e @ ReloadError::Refused(_)) => ok(
            StatusCode::CONFLICT,
            &json!({ "applied": false, "error": e.to_string(), "keys": [] }),
        ),
    }
}

async fn get_script(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let r = match authorize(&api, &headers, Need::Operator) {
        Err(r) => *r,
        Ok(_) => match api.live().scripts.iter().find(|s| s.name == name) {
            None => error(StatusCode::NOT_FOUND, "no such script"),
            Some(s) => {
                let questions: serde_json::Map<String, Value> = s
                    .questions
                    .iter()
                    .map(|(id, q)| {
                        let mut v = json!({ "text": q.text, "kind": q.kind.as_str() });
                        if q.kind == centralino_config::QuestionKind::Choice {
                            v["answers"] = json!(q.answers);
                        } else {
                            v["next"] = json!(q.next);
                        }
                        (id.clone(), v)
                    })
                    .collect();
                ok(
                    StatusCode::OK,
                    &json!({ "name": s.name, "start": s.start, "questions": questions }),
                )
            }
        },
    };
    api.count("scripts_get", r.status());
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswersBody {
    agent: Option<String>,
    answers: std::collections::BTreeMap<String, String>,
}

async fn post_answers(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let r = answers(&api, &headers, id.clone(), &body).await;
    api.done("calls_answers", bearer(&headers), &id, r.status());
    r
}

async fn answers(api: &Api, headers: &HeaderMap, id: String, body: &Bytes) -> Response {
    let (token, mut b): (_, AnswersBody) = match authorized_body(api, headers, body, Need::Operator)
    {
        Ok(tb) => tb,
        Err(r) => return *r,
    };
    if token.role == centralino_config::Role::Agent {
        // An operator answers for their own calls only, under their name.
        let me = token.agent.clone().unwrap_or_default();
        if b.agent.as_ref().is_some_and(|a| *a != me) {
            return error(StatusCode::FORBIDDEN, "agent: not this token's operator");
        }
        if !api.desks.had_call(&me, &id) {
            return error(
                StatusCode::FORBIDDEN,
                "not a call of this token's operator (the current or the last one)",
            );
        }
        b.agent = Some(me);
    }
    if b.answers.is_empty() || b.answers.len() > 200 {
        return error(StatusCode::BAD_REQUEST, "answers: 1 to 200 question ids");
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    };
    if let Some(q) = b.answers.keys().find(|q| !name_ok(q)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("answers: {:?} is not a question id", truncate(q)),
        );
    }
    if b.answers.values().any(|a| a.len() > 1000) {
        return error(
            StatusCode::BAD_REQUEST,
            "answers: at most 1000 characters each",
        );
    }
    if b.agent.as_deref().is_some_and(|a| !name_ok(a)) {
        return error(StatusCode::BAD_REQUEST, "agent: not an operator name");
    }
    let list: Vec<(String, String)> = b.answers.into_iter().collect();
    let n = list.len();
    let now = unix_now() * 1000;
    match api
        .store
        .ask(|r| StoreReq::Answers(id.clone(), b.agent, list, now, r))
        .await
    {
        Ok(true) => ok(StatusCode::CREATED, &json!({ "call": id, "saved": n })),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such call"),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_desktop_behind_gets_every_transition_or_knows_what_it_missed() {
        let call = |state| AgentCall {
            state,
            call: "c1".into(),
            queue: "info".into(),
            flow: None,
            variables: Vec::new(),
            script: None,
            callback: None,
        };
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
                vec![
                    Some(call(DeskState::Offered)),
                    Some(call(DeskState::Connected)),
                    None
                ],
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
                Some(call(DeskState::Offered)),
                DESK_EVENTS as u64,
                3 + DESK_EVENTS as u64
            )
        );
        assert_eq!(desks.snapshot("1001").0, 3 + DESK_EVENTS as u64);
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
