//! The store as a service: one thread owns the database; requests come
//! over a channel and are applied by group commit (many requests, one
//! transaction, one fsync); writes nobody waits for are kept in a backlog
//! that survives a slow or failing disk. [`StoreHandle`] is how async
//! code asks it; [`RecordSink`] is what the SIP side writes call records
//! and callback progress to.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::{AuditKey, Callback, Created, Edit, NewCallback, Patch, Status, Store, StoreError};
use centralino_types::time::rfc3339;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Where the service reports how it goes (`/healthz` watches it).
pub trait Watch: Send + 'static {
    /// The service's thread ended (a panic unwinds through this too).
    fn stopped(&self);
    /// A transaction starts.
    fn begin(&self, now: Instant);
    /// The transaction is over; `backlog` writes the disk refused wait for
    /// the next one.
    fn end(&self, now: Instant, backlog: usize);
}

/// Calls [`Watch::stopped`] when dropped: held by the service's thread.
struct Running<W: Watch>(W);

impl<W: Watch> Drop for Running<W> {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

/// The service's metrics (in the node's one registry).
#[derive(Clone)]
pub struct StoreMetrics {
    /// `centralino_store_errors_total`: transactions not committed.
    pub errors: IntCounter,
    /// `centralino_store_group_requests`: requests applied per
    /// transaction (group commit: a slow disk makes groups larger).
    pub group: Histogram,
    /// `centralino_store_backlog`: writes nobody waits for (records,
    /// callback state, audit) kept in memory because the disk refused
    /// them; written again each second.
    pub backlog: IntGauge,
    /// `centralino_store_dropped_total`: kept writes given up (backlog
    /// full, or failing alone).
    pub dropped: IntCounter,
    /// `centralino_store_commit_seconds`: time of one transaction, fsync
    /// included.
    pub commit: Histogram,
}

impl StoreMetrics {
    /// Registers the service's metrics in `registry`.
    ///
    /// # Panics
    /// When `registry` already has them (a programming error).
    pub fn new(registry: &Registry) -> Self {
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric registered once");
            m
        }
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric")
        };
        Self {
            errors: reg(
                registry,
                IntCounter::new(
                    "centralino_store_errors_total",
                    "Store writes that failed (records, callback state, audit)",
                )
                .expect("valid metric"),
            ),
            group: reg(
                registry,
                histogram(
                    "centralino_store_group_requests",
                    "Requests applied in one store transaction",
                    vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                ),
            ),
            backlog: reg(
                registry,
                IntGauge::new(
                    "centralino_store_backlog",
                    "Store writes kept in memory until the disk takes them",
                )
                .expect("valid metric"),
            ),
            dropped: reg(
                registry,
                IntCounter::new(
                    "centralino_store_dropped_total",
                    "Kept store writes given up (backlog full or failing alone)",
                )
                .expect("valid metric"),
            ),
            commit: reg(
                registry,
                histogram(
                    "centralino_store_commit_seconds",
                    "Duration of one store transaction, fsync included",
                    vec![
                        0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                    ],
                ),
            ),
        }
    }
}

/// Where a request's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

/// Why the store's service did not do what it was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store failed it: the request's own error, or the commit of the
    /// group it was in (shared by every request of that group).
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The store's thread is not running.
    #[error("the store is not running")]
    NotRunning,
    /// The store's thread stopped before answering.
    #[error("the store stopped")]
    Stopped,
}

/// What the service is asked.
#[allow(missing_docs)] // Each variant is named by the store method it calls.
pub enum StoreReq {
    Records(Vec<crate::Record>),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
    /// Who read or changed personal data (batched, chained).
    Audit(crate::AuditEntry),
    Claim(i64, usize, Vec<(String, usize)>, Reply<Vec<Callback>>),
    MarkDialed(String, i64, Reply<bool>),
    Finish(String, Status, &'static str, i64),
    Reschedule(String, i64, &'static str, i64),
    Requeue(String, &'static str, i64),
    DueNotifications(i64, Reply<Vec<crate::Notification>>),
    NotificationAttempt(i64, bool, Option<String>, Option<i64>),
    Answers(
        String,
        Option<String>,
        Vec<(String, String)>,
        i64,
        bool,
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
    /// Any work on the store, run inside the group's transaction; what it
    /// returns is called once the commit is known (see
    /// [`StoreHandle::with`]).
    Job(Job),
}

/// Work on the store: runs in the group's transaction and returns the
/// answer to give once the commit is known.
pub type Job = Box<dyn FnOnce(&mut Store) -> Deferred + Send>;

/// The store's thread, asked from async code.
#[derive(Clone)]
pub struct StoreHandle(Sender<StoreReq>);

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
pub type Deferred = Box<dyn FnOnce(Result<(), &ServiceError>)>;

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
    audit: Vec<(crate::AuditEntry, u32)>,
    /// That batch failed in this group.
    audit_failed: bool,
    /// The chain's head after that batch, logged once committed.
    audit_head: Option<crate::AuditHead>,
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
        let v = v.map_err(|e| ServiceError::Store(Arc::new(e)));
        self.replies
            .push(Box::new(move |committed: Result<(), &ServiceError>| {
                let _ = r.send(committed.map_err(Clone::clone).and(v));
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
                // Only a callback that was still open here tells the
                // citizen (one taken over by another node is that node's).
                let changed = store.set_status(id, *status, Some(outcome), *now)?;
                if *status == Status::Failed && matches!(changed, Edit::Done(_)) {
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
            StoreReq::Answers(call, agent, answers, now, vouched, r) => {
                let v = store.save_answers(&call, agent.as_deref(), &answers, now, vouched);
                self.reply(r, v);
            }
            StoreReq::Claim(now, limit, mut room, r) => {
                let v = store.claim_due(now, limit, &mut |q| within_room(&mut room, q));
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
            StoreReq::Job(job) => {
                let answer = job(store);
                self.replies.push(answer);
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
        metrics: &StoreMetrics,
    ) {
        for mut k in self.kept {
            if committed && !k.failed {
                continue;
            }
            if committed {
                k.own_failures += 1;
            }
            if k.own_failures >= OWN_FAILURES_MAX {
                metrics.dropped.inc();
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
                metrics.dropped.inc();
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
                metrics.dropped.inc();
                tracing::error!(
                    write = k.req.kind(),
                    "store backlog full: oldest write dropped"
                );
            }
        }
        metrics.backlog.set(backlog.len() as i64);
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
            Self::Job(_) => "job",
        }
    }
}

impl StoreHandle {
    /// Opens the database at `path` (a bad file stops the start with its
    /// reason), closes what the last process left in progress, and starts
    /// the service's thread. `notify`: changes the SMS hook reports go to
    /// its outbox. `queues` (name, firm): the configuration's queues,
    /// bound to their firms here; one the database knows as another
    /// firm's stops the start ([`StoreError::QueueOwners`]).
    pub fn start(
        path: &Path,
        audit_key: AuditKey,
        queues: &[(String, String)],
        retention_days: u32,
        notify: bool,
        metrics: StoreMetrics,
        watch: impl Watch,
    ) -> Result<Self, StoreError> {
        let mut store = Store::open_keyed(path, audit_key)?;
        let bound = store.bind_queues(queues, unix_now())?;
        if !bound.is_empty() {
            info!(
                queues = bound.len(),
                "queues bound to their firms in the store"
            );
        }
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
        match store.recover_campaign_attempts(unix_now()) {
            Ok(0) => {}
            Ok(n) => warn!(
                attempts = n,
                "campaign attempts in progress at the last stop closed as interrupted (retried as new attempts)"
            ),
            Err(e) => warn!(error = %e, "cannot recover campaign attempts"),
        }
        let retention = i64::from(retention_days) * 86_400_000;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                // `/healthz` sees this thread end, and each transaction
                // and backlog that lasts.
                let watch = Running(watch);
                let mut next_retention = Instant::now();
                let mut backlog: std::collections::VecDeque<Kept> =
                    std::collections::VecDeque::new();
                loop {
                    if Instant::now() >= next_retention {
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
                    metrics.group.observe((reqs.len() + backlog.len()) as f64);
                    let mut group = Group::new(notify);
                    let began = Instant::now();
                    watch.0.begin(began);
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
                    metrics.commit.observe(began.elapsed().as_secs_f64());
                    let committed = committed.map_err(|e| {
                        metrics.errors.inc();
                        warn!(error = %e, "store transaction not committed");
                        ServiceError::Store(Arc::new(e))
                    });
                    let replies = std::mem::take(&mut group.replies);
                    // On disk: the head goes to the log, so a tail cut from
                    // the file later shows (`centralino audit --expect-head`).
                    if let (Ok(()), Some(head)) = (&committed, group.audit_head.take()) {
                        info!(seq = head.seq, mac = %head.mac, "audit head");
                    }
                    group.settle(committed.is_ok(), &mut backlog, &metrics);
                    watch.0.end(Instant::now(), backlog.len());
                    for reply in replies {
                        reply(committed.as_ref().map(|_| ()));
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Self(tx))
    }

    /// Sends a request nobody waits for.
    pub fn send(&self, req: StoreReq) {
        let _ = self.0.send(req);
    }

    /// The sink the SIP side writes to.
    pub fn records(&self) -> RecordSink {
        RecordSink(self.0.clone())
    }

    /// Runs `f` on the store, all or nothing (a savepoint inside a group's
    /// transaction), and answers once the group committed. New work needs
    /// no new request kind.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.ask(|r: Reply<T>| {
            StoreReq::Job(Box::new(move |store: &mut Store| {
                // All or nothing inside the group (a savepoint): a job that
                // fails half-way leaves nothing of itself in the commit.
                let v = store
                    .atomically(f)
                    .map_err(|e| ServiceError::Store(Arc::new(e)));
                Box::new(move |committed: Result<(), &ServiceError>| {
                    let _ = r.send(committed.map_err(Clone::clone).and(v));
                }) as Deferred
            }))
        })
        .await
    }

    /// Runs `f` on the store without waiting; a failure is logged with
    /// `what`.
    pub fn spawn_job(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Store) -> Result<(), StoreError> + Send + 'static,
    ) {
        self.send(StoreReq::Job(Box::new(move |store: &mut Store| {
            let v = store.atomically(f);
            Box::new(move |committed: Result<(), &ServiceError>| {
                if let Err(e) = v {
                    warn!(error = %e, what, "store job failed");
                } else if let Err(e) = committed {
                    warn!(error = %e, what, "store job not committed");
                }
            }) as Deferred
        })));
    }

    /// Asks and waits for the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> StoreReq) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(make(tx))
            .map_err(|_| ServiceError::NotRunning)?;
        rx.await.map_err(|_| ServiceError::Stopped).and_then(|r| r)
    }
}

/// Hands call records and queue events to the store's thread (never
/// waits: the channel is unbounded and the writer batches).
#[derive(Clone)]
pub struct RecordSink(Sender<StoreReq>);

impl RecordSink {
    /// The service behind the sink, for any other work.
    pub fn handle(&self) -> StoreHandle {
        StoreHandle(self.0.clone())
    }

    /// Queues a batch.
    pub fn send(&self, batch: Vec<crate::Record>) {
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

    /// Claims callbacks due now (at most `limit`), of the queues in
    /// `room` only, and no more of each than its room.
    pub async fn claim_due(
        &self,
        limit: usize,
        room: Vec<(String, usize)>,
    ) -> Result<Vec<Callback>, ServiceError> {
        let now = unix_now();
        StoreHandle(self.0.clone())
            .ask(|r| StoreReq::Claim(now, limit, room, r))
            .await
    }

    /// Makes "the citizen is being dialled" durable. The request is
    /// queued before this returns, so whatever the engine says of the same
    /// callback afterwards (a requeue) is applied after it.
    pub fn mark_dialed(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, ServiceError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.0.send(StoreReq::MarkDialed(id, unix_now(), tx));
        async move {
            sent.map_err(|_| ServiceError::NotRunning)?;
            rx.await.map_err(|_| ServiceError::Stopped).and_then(|r| r)
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
        id: String,
        queue: String,
        number: String,
        enqueued_unix: i64,
        promised_by: Option<i64>,
    ) -> Result<Created, ServiceError> {
        let new = NewCallback {
            id,
            queue,
            number,
            not_before: None,
            requirements: None,
            priority: 0,
            source: "ivr".into(),
            created_at: Some(enqueued_unix),
            promised_by,
        };
        let now = unix_now();
        StoreHandle(self.0.clone())
            .ask(|r| StoreReq::Create(new, now, r))
            .await
    }
}

/// Whether one more callback of `queue` fits in `room` (queues and how
/// many each can take; a queue not listed takes none), counting it if so.
pub(crate) fn within_room(room: &mut [(String, usize)], queue: &str) -> bool {
    room.iter_mut()
        .find(|(q, _)| q == queue)
        .is_some_and(|(_, n)| {
            let free = *n > 0;
            *n = n.saturating_sub(1);
            free
        })
}
