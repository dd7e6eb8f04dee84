//! Callbacks that outlive their node (`[cluster] durability =
//! "jetstream"`): the driver of `centralino_cluster::work`. Every change
//! to a callback in this node's store is mirrored, within a fraction of a
//! second, as one record on the JetStream stream `CENTRALINO_WORK`, each
//! write conditional on the sequence of the previous one. When a node is
//! down, a live node of the same firm takes each of its open callbacks
//! over with the same compare-and-set: one node wins each. Before this
//! node dials a citizen it writes `dialing` the same way (the fence): a
//! node that was only cut off learns there that its callback moved, and
//! does not dial it. So each callback is dialled by one node, once.
//!
//! The price, said plainly: while this node cannot reach the stream, it
//! dials no callback (they wait, pending, nothing lost); inbound calls
//! and routing go on as alone. Exactly once and dialling through a
//! partition cannot both be had.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Context, ContextBuilder, PublishErrorKind};
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self as js, consumer};
use axum::body::Bytes;
use centralino_cluster::work::{
    self as w, CALLBACK_SUBJECTS, CallbackWork, Taken, Verdict, WorkRecord, WorkState,
};
use centralino_store::service::StoreHandle;
use centralino_store::{Callback, Kept, Mirrored, Status};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::api::Desks;
use crate::metrics::NetMetrics;

/// How often changed callbacks are mirrored.
const MIRROR_EVERY: Duration = Duration::from_millis(200);
/// Most callbacks mirrored per round.
const MIRROR_BATCH: usize = 256;
/// Longest wait for the stream's acknowledgement of a write.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the whole stream is read again for dead nodes' work, on top
/// of each node going down.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often this node writes all its open callbacks again (the stream
/// forgets records after `MAX_AGE`).
const REFRESH_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Records older than this leave the stream (a closed one is no longer
/// needed; an open one is written again daily).
const MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);
/// Most records read in one pass.
const MAX_SCAN: usize = 1_000_000;
/// Most fences waiting for the driver.
pub(crate) const FENCE_QUEUE: usize = 1024;

/// Asks whether this node may dial callback `id` now.
pub(crate) struct Fence {
    pub(crate) id: String,
    pub(crate) reply: oneshot::Sender<Fenced>,
}

/// The fence's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fenced {
    /// Written `dialing` on the stream: dial.
    Go,
    /// Another node took it over (now marked `moved` here), or it is no
    /// longer in progress here: do not dial.
    Gone,
    /// The stream cannot be reached: do not dial; it goes back to
    /// pending without counting the attempt.
    Unavailable,
}

/// Who is alive, as the cluster driver sees it each heartbeat.
#[derive(Clone, Debug, Default)]
pub(crate) struct Liveness {
    /// NATS connected.
    pub(crate) connected: bool,
    /// Connected long enough (three heartbeats) for the picture to hold
    /// every live node: only then is a silent node dead.
    pub(crate) settled: bool,
    /// The other nodes heard from recently.
    pub(crate) up: HashSet<String>,
    /// The nodes heard from once and silent now.
    pub(crate) down: BTreeSet<String>,
}

/// Liveness from the membership: settled once connected for four
/// heartbeats (a live node has been heard from by then).
pub(crate) fn liveness(
    m: &centralino_cluster::Membership,
    connected_for: Option<Duration>,
    now: Instant,
) -> Liveness {
    let mut l = Liveness {
        connected: connected_for.is_some(),
        settled: connected_for.is_some_and(|d| d >= crate::cluster::HEARTBEAT * 4),
        ..Liveness::default()
    };
    for v in m.nodes(now) {
        if v.up {
            l.up.insert(v.node.to_owned());
        } else {
            l.down.insert(v.node.to_owned());
        }
    }
    l
}

/// What the driver works with.
pub(crate) struct WorkLinks {
    pub(crate) store: StoreHandle,
    pub(crate) desks: Desks,
    pub(crate) metrics: NetMetrics,
    /// Callbacks may be claimed (the scheduler reads it).
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) fences: mpsc::Receiver<Fence>,
    /// Seals and opens records.
    pub(crate) key: Sealer,
}

/// The pieces made before the node's tasks start: the scheduler's flag
/// and the engine's fence sender, and the driver's end. Fails when the
/// key file cannot be used (the node does not start: a node that could
/// neither read nor seal records would hold its callbacks for ever).
pub(crate) fn links(
    key_file: &std::path::Path,
    store: StoreHandle,
    desks: Desks,
    metrics: NetMetrics,
) -> Result<(Arc<AtomicBool>, mpsc::Sender<Fence>, WorkLinks), crate::NetError> {
    let key = Sealer::from_file(key_file)?;
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(FENCE_QUEUE);
    Ok((
        ready.clone(),
        tx,
        WorkLinks {
            store,
            desks,
            metrics,
            ready,
            fences: rx,
            key,
        },
    ))
}

/// Seals records (AES-256-GCM, the subject as associated data, a random
/// nonce each): the NATS servers and anyone holding only a NATS
/// credential see no number, cannot plant a callback, and cannot move
/// one record onto another callback's subject.
pub(crate) struct Sealer(aws_lc_rs::aead::LessSafeKey);

/// The sealed form's first bytes (its version).
const SEALED: &[u8] = b"CW1";
const NONCE: usize = aws_lc_rs::aead::NONCE_LEN;

impl Sealer {
    fn from_file(file: &std::path::Path) -> Result<Self, crate::NetError> {
        let err = |reason: &str| crate::NetError::WorkKey {
            file: file.to_owned(),
            reason: reason.to_owned(),
        };
        let text = std::fs::read_to_string(file).map_err(|e| err(&e.to_string()))?;
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("64 hex digits (32 random bytes) expected"));
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &bytes)
            .map_err(|_| err("not an AES-256 key"))?;
        Ok(Self(aws_lc_rs::aead::LessSafeKey::new(key)))
    }

    fn seal(&self, subject: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut body = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(subject.as_bytes()),
                &mut body,
            )
            .ok()?;
        let mut out = Vec::with_capacity(SEALED.len() + NONCE + body.len());
        out.extend_from_slice(SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The record in `sealed` if this key sealed it for `subject`.
    fn open(&self, subject: &str, sealed: &[u8]) -> Option<WorkRecord> {
        let rest = sealed.strip_prefix(SEALED)?;
        if rest.len() < NONCE || rest.len() > w::MAX_RECORD_BYTES * 2 {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE);
        let nonce = aws_lc_rs::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(
                nonce,
                aws_lc_rs::aead::Aad::from(subject.as_bytes()),
                &mut body,
            )
            .ok()?;
        WorkRecord::decode(plain)
            .ok()
            .filter(|r| w::callback_subject(&r.callback.id).as_deref() == Some(subject))
    }
}

/// A write refused or impossible.
enum PutError {
    /// The subject moved on since the sequence we had.
    Conflict,
    /// The stream did not answer.
    Unavailable(String),
}

struct Driver {
    node: String,
    ctx: Context,
    stream: Option<Stream>,
    links: WorkLinks,
}

/// Runs the driver on `client` until the node stops.
pub(crate) async fn run(
    client: async_nats::Client,
    node: String,
    links: WorkLinks,
    mut liveness: watch::Receiver<Liveness>,
) {
    let ctx = ContextBuilder::new().timeout(ACK_TIMEOUT).build(client);
    let mut d = Driver {
        node,
        ctx,
        stream: None,
        links,
    };
    let mut tick = tokio::time::interval(MIRROR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconciled = false;
    let mut complained = false;
    let mut swept_down: BTreeSet<String> = BTreeSet::new();
    let mut sweep_at = Instant::now();
    let mut refresh_at = Instant::now() + REFRESH_EVERY;
    loop {
        tokio::select! {
            f = d.links.fences.recv() => {
                let Some(f) = f else { return };
                let answer = if d.links.ready.load(Ordering::Relaxed) {
                    d.fence(&f.id).await
                } else {
                    Fenced::Unavailable
                };
                d.count(match answer {
                    Fenced::Go => "fence_go",
                    Fenced::Gone => "fence_gone",
                    Fenced::Unavailable => "unavailable",
                });
                let _ = f.reply.send(answer);
            }
            _ = tick.tick() => {
                let live = liveness.borrow_and_update().clone();
                if !live.connected {
                    d.set_ready(false);
                    // What happened meanwhile is read again on return.
                    reconciled = false;
                    continue;
                }
                if d.stream.is_none() {
                    match d.ctx.get_or_create_stream(stream_config()).await {
                        Ok(s) => {
                            info!("national network: work stream {} ready", w::STREAM);
                            complained = false;
                            d.stream = Some(s);
                        }
                        Err(e) => {
                            if !complained {
                                warn!(error = %e, "national network: cannot open the work stream (is JetStream on?); callbacks wait");
                                complained = true;
                            }
                            d.count("unavailable");
                            continue;
                        }
                    }
                }
                if !reconciled {
                    match d.pass(&live).await {
                        Ok(()) => {
                            reconciled = true;
                            d.set_ready(true);
                            info!("national network: callbacks checked against the work stream");
                        }
                        Err(e) => {
                            warn!(error = %e, "national network: cannot read the work stream; callbacks wait");
                            d.count("unavailable");
                            continue;
                        }
                    }
                }
                if let Err(e) = d.mirror().await {
                    warn!(error = %e, "national network: cannot write the work stream");
                    d.count("unavailable");
                    d.set_ready(false);
                    reconciled = false;
                    continue;
                }
                let newly_down = live.down.iter().any(|n| !swept_down.contains(n));
                if live.settled && (newly_down || Instant::now() >= sweep_at) {
                    if let Err(e) = d.pass(&live).await {
                        warn!(error = %e, "national network: cannot read the work stream for dead nodes' callbacks");
                    }
                    swept_down = live.down.clone();
                    sweep_at = Instant::now() + SWEEP_EVERY;
                }
                if Instant::now() >= refresh_at {
                    refresh_at = Instant::now() + REFRESH_EVERY;
                    let _ = d.links.store.with(|s| s.remirror_open()).await;
                }
            }
        }
    }
}

fn stream_config() -> stream::Config {
    stream::Config {
        name: w::STREAM.to_owned(),
        subjects: vec![w::SUBJECTS.to_owned()],
        max_messages_per_subject: 1,
        max_messages: 10_000_000,
        max_age: MAX_AGE,
        max_message_size: i32::try_from(w::MAX_RECORD_BYTES).unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

impl Driver {
    fn count(&self, event: &str) {
        self.links
            .metrics
            .cluster_work
            .with_label_values(&[event])
            .inc();
    }

    fn set_ready(&self, ready: bool) {
        if self.links.ready.swap(ready, Ordering::Relaxed) != ready {
            self.links.metrics.cluster_work_ready.set(i64::from(ready));
            if !ready {
                warn!("national network: work stream unreachable; callbacks wait until it returns");
            }
        }
    }

    /// The record this node writes for `m` (`None`: not ours to write).
    fn record(&self, m: &Mirrored, tenants: &HashMap<String, String>) -> Option<WorkRecord> {
        let c = &m.callback;
        let state = match c.status {
            Status::Pending => WorkState::Pending,
            Status::InProgress if !m.dialed => WorkState::Pending,
            Status::InProgress => WorkState::Dialing,
            Status::Done | Status::Failed | Status::Cancelled => WorkState::Closed,
            Status::Moved => return None,
        };
        Some(WorkRecord {
            owner: self.node.clone(),
            tenant: tenants.get(&c.queue).cloned().unwrap_or_default(),
            state,
            callback: CallbackWork {
                id: c.id.clone(),
                queue: c.queue.clone(),
                number: (state != WorkState::Closed).then(|| c.number.clone()),
                not_before: c.not_before,
                requirements: c.requirements.clone(),
                priority: c.priority,
                attempts: c.attempts,
                created_at: c.created_at,
                source: c.source.clone(),
            },
        })
    }

    fn tenants(&self) -> HashMap<String, String> {
        self.links
            .desks
            .queues()
            .iter()
            .map(|q| (q.name.clone(), q.tenant.clone()))
            .collect()
    }

    /// Writes `record` if the subject's last sequence is still `expect`.
    async fn put(&self, record: &WorkRecord, expect: u64) -> Result<u64, PutError> {
        let Some(subject) = w::callback_subject(&record.callback.id) else {
            return Err(PutError::Conflict);
        };
        let sealed = self
            .links
            .key
            .seal(&subject, &record.encode())
            .ok_or_else(|| PutError::Unavailable("cannot seal".into()))?;
        let msg = js::message::PublishMessage::build()
            .payload(Bytes::from(sealed))
            .expected_last_subject_sequence(expect);
        let ack = self
            .ctx
            .send_publish(subject, msg)
            .await
            .map_err(|e| PutError::Unavailable(e.to_string()))?;
        match ack.await {
            Ok(a) => Ok(a.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(PutError::Conflict),
            Err(e) => Err(PutError::Unavailable(e.to_string())),
        }
    }

    /// The last record of callback `id` on the stream, with its
    /// sequence (`None`: none).
    async fn last(&self, id: &str) -> Result<Option<(u64, Option<WorkRecord>)>, String> {
        let (Some(stream), Some(subject)) = (&self.stream, w::callback_subject(id)) else {
            return Ok(None);
        };
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(Some((
                m.sequence,
                self.links.key.open(&subject, &m.payload),
            ))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Our write of `id` conflicted: who has it now? Another node: it is
    /// moved here. Still us (an acknowledgement lost): the next write is
    /// checked against what the stream has.
    async fn settle_conflict(&self, id: &str) -> Result<bool, String> {
        let now = centralino_store::service::unix_now();
        match self.last(id).await? {
            Some((_, Some(r))) if r.owner != self.node => {
                let (id, to) = (id.to_owned(), r.owner.clone());
                let moved = self
                    .links
                    .store
                    .with(move |s| s.set_moved(&id, &to, now))
                    .await
                    .map_err(|e| e.to_string())?;
                if moved {
                    warn!(callback = %short(&r.callback.id), to = %r.owner, "national network: callback taken over by another node; not dialled here");
                }
                self.count("moved_away");
                Ok(true)
            }
            found => {
                let seq = found.map_or(0, |(s, _)| s);
                let id = id.to_owned();
                self.links
                    .store
                    .with(move |s| s.set_mirror_seq(&id, seq))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(false)
            }
        }
    }

    /// Mirrors what changed since the last round.
    async fn mirror(&self) -> Result<(), String> {
        let changed = self
            .links
            .store
            .with(|s| s.unmirrored(MIRROR_BATCH))
            .await
            .map_err(|e| e.to_string())?;
        if changed.is_empty() {
            return Ok(());
        }
        let tenants = self.tenants();
        let mut done: Vec<(String, i64, u64)> = Vec::with_capacity(changed.len());
        let mut failure = None;
        for m in &changed {
            let Some(record) = self.record(m, &tenants) else {
                continue;
            };
            if w::callback_subject(&m.callback.id).is_none() {
                // Never an id the node makes; one from an old store is
                // left local.
                done.push((m.callback.id.clone(), m.version, m.seq.unwrap_or(0)));
                continue;
            }
            match self.put(&record, m.seq.unwrap_or(0)).await {
                Ok(seq) => {
                    done.push((m.callback.id.clone(), m.version, seq));
                    self.count("mirrored");
                }
                Err(PutError::Conflict) => {
                    self.settle_conflict(&m.callback.id).await?;
                }
                Err(PutError::Unavailable(e)) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !done.is_empty() {
            self.links
                .store
                .with(move |s| {
                    for (id, version, seq) in &done {
                        s.set_mirrored(id, *version, *seq)?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Before the citizen of callback `id` is dialled: writes `dialing`
    /// on the stream, conditional on this node's last record of it.
    async fn fence(&self, id: &str) -> Fenced {
        for _ in 0..2 {
            let key = id.to_owned();
            let Ok(Some(m)) = self.links.store.with(move |s| s.mirror_state(&key)).await else {
                return Fenced::Unavailable;
            };
            if m.callback.status != Status::InProgress || m.dialed {
                return Fenced::Gone;
            }
            let Some(mut record) = self.record(&m, &self.tenants()) else {
                return Fenced::Gone;
            };
            if w::callback_subject(id).is_none() {
                return Fenced::Go;
            }
            record.state = WorkState::Dialing;
            match self.put(&record, m.seq.unwrap_or(0)).await {
                Ok(seq) => {
                    let (key, version) = (id.to_owned(), m.version);
                    // The store's `dialed` follows (its change is mirrored
                    // again, the same record).
                    let _ = self
                        .links
                        .store
                        .with(move |s| s.set_mirrored(&key, version, seq))
                        .await;
                    return Fenced::Go;
                }
                Err(PutError::Conflict) => match self.settle_conflict(id).await {
                    Ok(true) => return Fenced::Gone,
                    Ok(false) => {}
                    Err(_) => return Fenced::Unavailable,
                },
                Err(PutError::Unavailable(_)) => return Fenced::Unavailable,
            }
        }
        Fenced::Unavailable
    }

    /// Reads the whole stream once: this node's own records its store
    /// lacks are kept, its open callbacks another node took are marked
    /// moved, and (once the picture is settled) dead nodes' open
    /// callbacks of this node's firms are taken over.
    async fn pass(&self, live: &Liveness) -> Result<(), String> {
        let records = self.scan().await?;
        let now = centralino_store::service::unix_now();
        let mine = self
            .links
            .store
            .with(|s| s.open_mirrored())
            .await
            .map_err(|e| e.to_string())?;
        let by_id: HashMap<&str, &(u64, WorkRecord)> = records
            .iter()
            .map(|r| (r.1.callback.id.as_str(), r))
            .collect();
        let mut moved = Vec::new();
        for (id, _) in &mine {
            if let Some((_, r)) = by_id.get(id.as_str())
                && r.owner != self.node
            {
                moved.push((id.clone(), r.owner.clone()));
            }
        }
        if !moved.is_empty() {
            let n = moved.len();
            self.links
                .store
                .with(move |s| {
                    for (id, to) in &moved {
                        s.set_moved(id, to, now)?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
            warn!(
                callbacks = n,
                "national network: callbacks taken over by other nodes while this one was away; not dialled here"
            );
            for _ in 0..n {
                self.count("moved_away");
            }
        }
        let queues = self.links.desks.queues();
        let serves = |tenant: &str, queue: &str| {
            queues.iter().any(|q| q.tenant == tenant && q.name == queue)
        };
        // Before the picture settles, everyone counts as alive.
        let up = |n: &str| !live.settled || live.up.contains(n);
        let (mut taken, mut adopted) = (0usize, 0usize);
        for (seq, record) in &records {
            let (keep, as_, event) = match w::verdict(record, &self.node, up, serves) {
                Verdict::Leave => continue,
                Verdict::Adopt(as_) => (*seq, as_, "adopted"),
                Verdict::TakeOver { record: r, as_ } => match self.put(&r, *seq).await {
                    Ok(new) => (new, as_, "taken_over"),
                    // Another node won it.
                    Err(PutError::Conflict) => continue,
                    Err(PutError::Unavailable(e)) => return Err(e),
                },
            };
            let cb = callback(&record.callback, now);
            let interrupted = as_ == Taken::Interrupted;
            let kept = self
                .links
                .store
                .with(move |s| s.keep_taken(&cb, interrupted, keep, now))
                .await
                .map_err(|e| e.to_string())?;
            match (kept, event) {
                (Kept::Known, _) => {}
                (Kept::Duplicate, _) => self.count("duplicate"),
                (Kept::New, "taken_over") => {
                    taken += 1;
                    info!(callback = %short(&record.callback.id), from = %record.owner, queue = %record.callback.queue, "national network: callback taken over from a node that is down");
                    self.count(event);
                }
                (Kept::New, _) => {
                    adopted += 1;
                    self.count(event);
                }
            }
        }
        if taken + adopted > 0 {
            info!(
                taken,
                adopted, "national network: callbacks kept from the work stream"
            );
        }
        Ok(())
    }

    /// Every callback record on the stream (the last of each), bounded.
    async fn scan(&self) -> Result<Vec<(u64, WorkRecord)>, String> {
        let Some(stream) = &self.stream else {
            return Ok(Vec::new());
        };
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: CALLBACK_SUBJECTS.to_owned(),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let mut out = Vec::new();
        let mut refused = 0u64;
        while pending > 0 && out.len() < MAX_SCAN {
            let mut batch = consumer
                .fetch()
                .max_messages(1000)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut got = 0;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| e.to_string())?;
                got += 1;
                let Ok(info) = m.info() else { continue };
                pending = info.pending;
                let seq = info.stream_sequence;
                match self.links.key.open(m.subject.as_str(), &m.payload) {
                    Some(r) => out.push((seq, r)),
                    None => refused += 1,
                }
            }
            if got == 0 {
                break;
            }
        }
        let _ = stream.delete_consumer(&name).await;
        for _ in 0..refused {
            self.count("refused");
        }
        Ok(out)
    }
}

/// A callback as the store keeps it, from its record.
fn callback(c: &CallbackWork, now: i64) -> Callback {
    Callback {
        id: c.id.clone(),
        queue: c.queue.clone(),
        number: c.number.clone().unwrap_or_default(),
        not_before: c.not_before,
        requirements: c.requirements.clone(),
        priority: c.priority,
        status: Status::Pending,
        attempts: c.attempts,
        outcome: None,
        source: c.source.clone(),
        created_at: c.created_at,
        updated_at: now,
    }
}

/// An id for the logs (enough to find it, not the whole key).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The engine wants to dial callback `id` (call `call`): the fence
/// first, then the store's `dialed`; the engine hears whether to dial.
pub(crate) fn dialing(
    fence: &mpsc::Sender<Fence>,
    sink: &centralino_store::service::RecordSink,
    engine: mpsc::WeakSender<crate::handle::EngineInput>,
    id: String,
    call: centralino_types::CallId,
) {
    let (fence, sink) = (fence.clone(), sink.clone());
    tokio::spawn(async move {
        let (tx, rx) = oneshot::channel();
        let asked = fence
            .send(Fence {
                id: id.clone(),
                reply: tx,
            })
            .await
            .is_ok();
        let answer = if asked {
            tokio::time::timeout(ACK_TIMEOUT * 3, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(Fenced::Unavailable)
        } else {
            Fenced::Unavailable
        };
        let input = match answer {
            Fenced::Go => crate::handle::EngineInput::CallbackDialing {
                call,
                recorded: sink.mark_dialed(id).await.unwrap_or(false),
            },
            Fenced::Gone => crate::handle::EngineInput::CallbackDialing {
                call,
                recorded: false,
            },
            // Not the citizen's attempt: back to pending at once.
            Fenced::Unavailable => crate::handle::EngineInput::CallbackHeld { call },
        };
        if let Some(tx) = engine.upgrade() {
            let _ = tx.send(input).await;
        }
    });
}
