//! Callbacks and campaign contacts that outlive their node (`[cluster]
//! durability = "jetstream"`): the driver of `centralino_cluster::work`.
//! Every change to a callback or a contact in this node's store is
//! mirrored (`item`), within a fraction of a
//! second, as one record on the JetStream stream `CENTRALINO_WORK`, each
//! write conditional on the sequence of the previous one and naming it
//! (so a record replayed later is told from a real one). When a node has
//! been silent for `takeover_after_seconds`, a live node of the same firm
//! that can dial takes each of its open callbacks over with the same
//! compare-and-set: one node wins each. Before this node dials a citizen
//! it writes `dialing` the same way (the fence): a node that was only cut
//! off learns there that its callback moved, and does not dial it. A
//! record that cannot be read or trusted never makes a node dial: its
//! callback is kept as `failed`, outcome `unconfirmed`, for a person. So
//! each callback is dialled by one node, at most once. A campaign contact
//! goes the same way to a node running a campaign of the same firm and
//! name; one whose attempt was cut short by its node's death is retried
//! there (its attempt counted), as after a crash on one node; the fence
//! for each attempt's dial is in `fence`.
//!
//! The price, said plainly: while this node cannot reach the stream, it
//! dials no callback (they wait, pending, nothing lost); inbound calls
//! and routing go on as alone. Exactly once and dialling through a
//! partition cannot both be had.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Context, ContextBuilder, PublishErrorKind};
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self as js, consumer};
use axum::body::Bytes;
use centralino_cluster::work::{self as w, ContactWork, Taken, Verdict, WorkRecord, WorkState};
use centralino_store::service::{StoreHandle, unix_now};
use centralino_store::{ContactStatus, Kept, Status};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::api::Desks;
use crate::metrics::NetMetrics;

mod fence;
mod item;

use fence::Target;
pub(crate) use fence::{Claims, Fence, Fenced, dialing, fence_contact};
use item::{Item, Key, callback, taken_contact};

/// How often changed callbacks are mirrored.
const MIRROR_EVERY: Duration = Duration::from_millis(200);
/// Most callbacks mirrored per round.
const MIRROR_BATCH: usize = 256;
/// Longest wait for the stream's acknowledgement of a write.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the whole stream is read again for dead nodes' work, on top
/// of each node passing `takeover_after_seconds` of silence.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// An open callback not written for this long is written again (the
/// stream forgets records after `MAX_AGE`); checked every `REFRESH_EVERY`.
const REFRESH_AFTER: i64 = 24 * 3600;
const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// Records older than this leave the stream (a closed one is no longer
/// needed; an open one is written again daily).
const MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);
/// Records kept per callback: the last and the one before it, so a
/// record's `prev` can be checked against its real predecessor.
const PER_SUBJECT: i64 = 2;
/// Longest wait before trying the stream again after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most messages read in one pass.
const MAX_SCAN: usize = 2_000_000;
/// Most fences waiting for the driver.
pub(crate) const FENCE_QUEUE: usize = 1024;

/// Who is alive, as the cluster driver sees it each heartbeat.
#[derive(Clone, Debug, Default)]
pub(crate) struct Liveness {
    /// Connected to NATS for this long (`None`: not connected).
    connected_for: Option<Duration>,
    /// Each node heard from once: how long it has been silent.
    silent: HashMap<String, Duration>,
}

/// Liveness from the membership.
pub(crate) fn liveness(
    m: &centralino_cluster::Membership,
    connected_for: Option<Duration>,
    now: Instant,
) -> Liveness {
    Liveness {
        connected_for,
        silent: m
            .nodes(now)
            .map(|v| (v.node.to_owned(), v.silent))
            .collect(),
    }
}

impl Liveness {
    /// Nodes silent for `after` or more.
    fn dead(&self, after: Duration) -> BTreeSet<String> {
        self.silent
            .keys()
            .filter(|n| !self.up(n, after))
            .cloned()
            .collect()
    }

    /// Whether node `n` is alive for its work: heard from within `after`,
    /// or silent only while this node itself could not hear anyone (a
    /// node back from its own outage has heard nobody for as long; the
    /// others are not dead for that). One never heard from is alive until
    /// this node has been connected `after`.
    fn up(&self, n: &str, after: Duration) -> bool {
        let connected = self.connected_for.unwrap_or_default();
        match self.silent.get(n) {
            Some(s) => (*s).min(connected) < after,
            None => connected < after,
        }
    }

    /// Connected long enough that a node never heard from is not alive.
    fn settled(&self, after: Duration) -> bool {
        self.connected_for.is_some_and(|d| d >= after)
    }
}

/// What the driver works with.
pub(crate) struct WorkLinks {
    store: StoreHandle,
    desks: Desks,
    metrics: NetMetrics,
    /// Callbacks may be claimed (the scheduler reads it).
    ready: Arc<AtomicBool>,
    fences: mpsc::Receiver<Fence>,
    key: Arc<crate::netkey::NetworkKey>,
    /// This node places calls (an outbound trunk): only such a node takes
    /// another's callbacks over.
    can_dial: bool,
    /// A node silent this long is dead for its callbacks.
    takeover_after: Duration,
}

/// The driver's side of the node's work stream, made before the node's
/// tasks start, and what the node keeps: the scheduler's flag, the
/// engine's fence sender, the claims' tokens.
pub(crate) struct Work {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) fence: mpsc::Sender<Fence>,
    pub(crate) claims: Claims,
    pub(crate) links: WorkLinks,
}

/// `key`: the network's key (its sealing half seals the records).
pub(crate) fn links(
    config: &centralino_config::ClusterConfig,
    key: Arc<crate::netkey::NetworkKey>,
    store: StoreHandle,
    desks: Desks,
    metrics: NetMetrics,
    can_dial: bool,
) -> Work {
    let ready = Arc::new(AtomicBool::new(false));
    let (fence, rx) = mpsc::channel(FENCE_QUEUE);
    Work {
        ready: ready.clone(),
        fence,
        claims: Claims::default(),
        links: WorkLinks {
            store,
            desks,
            metrics,
            ready,
            fences: rx,
            key,
            can_dial,
            takeover_after: config.takeover_after,
        },
    }
}

/// A write refused or impossible.
enum PutError {
    /// The subject moved on since the sequence we had.
    Conflict,
    /// The stream did not answer.
    Unavailable(String),
}

/// A callback's last record, as far as this node can trust it.
enum Last {
    /// The stream has none.
    None,
    /// One this node cannot open, or one that does not follow its
    /// predecessor (replayed): never acted on.
    Untrusted,
    /// Its record at that sequence.
    Record(u64, Box<WorkRecord>),
}

/// What a refused write of ours leaves to do.
enum Settled {
    /// The stream has our own open record at another sequence (an
    /// acknowledgement lost): write again next round.
    Retry,
    /// Not ours to write any more (moved or unconfirmed).
    Stop,
}

/// What the mirror loop and the fence task share.
struct Shared {
    node: String,
    ctx: Context,
    store: StoreHandle,
    desks: Desks,
    metrics: NetMetrics,
    key: Arc<crate::netkey::NetworkKey>,
    ready: Arc<AtomicBool>,
    can_dial: bool,
}

/// Runs the driver on `client` until the node stops.
pub(crate) async fn run(
    client: async_nats::Client,
    node: String,
    links: WorkLinks,
    liveness: watch::Receiver<Liveness>,
) {
    let WorkLinks {
        store,
        desks,
        metrics,
        ready,
        fences,
        key,
        can_dial,
        takeover_after,
    } = links;
    let d = Arc::new(Shared {
        node,
        ctx: ContextBuilder::new().timeout(ACK_TIMEOUT).build(client),
        store,
        desks,
        metrics,
        key,
        ready,
        can_dial,
    });
    // Fences on their own task: a long pass never holds up a dial.
    tokio::spawn(fence_task(d.clone(), fences));
    let mut tick = tokio::time::interval(MIRROR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut opened, mut reconciled, mut complained) = (false, false, false);
    let mut swept: BTreeSet<String> = BTreeSet::new();
    let mut sweep_at = Instant::now();
    let mut refresh_at = Instant::now();
    // After a failure, the next try waits longer each time (up to
    // `MAX_BACKOFF`): a stream refusing every write (a permission missing,
    // a full disk) is not read whole five times a second.
    let (mut failures, mut retry_at) = (0u32, Instant::now());
    let failed = |failures: &mut u32| {
        *failures = failures.saturating_add(1);
        Instant::now() + (MIRROR_EVERY * 2u32.saturating_pow((*failures).min(8))).min(MAX_BACKOFF)
    };
    loop {
        tick.tick().await;
        // The network's driver is gone (the node is stopping): what it
        // last said of the others is no ground to mirror or take over on.
        if liveness.has_changed().is_err() {
            d.set_ready(false);
            return;
        }
        let live = liveness.borrow().clone();
        if live.connected_for.is_none() {
            d.set_ready(false);
            // What happened meanwhile is read again on return.
            reconciled = false;
            continue;
        }
        if Instant::now() < retry_at {
            continue;
        }
        if !opened {
            match d.open_stream().await {
                Ok(()) => {
                    info!("national network: work stream {} ready", w::STREAM);
                    (opened, complained) = (true, false);
                }
                Err(e) => {
                    if !complained {
                        warn!(error = %e, "national network: cannot open the work stream (is JetStream on?); callbacks wait");
                        complained = true;
                    }
                    d.count("unavailable");
                    retry_at = failed(&mut failures);
                    continue;
                }
            }
        }
        if !reconciled {
            match d.pass(&live, takeover_after).await {
                Ok(()) => {
                    reconciled = true;
                    d.set_ready(true);
                    info!("national network: callbacks checked against the work stream");
                }
                Err(e) => {
                    warn!(error = %e, "national network: cannot read the work stream; callbacks wait");
                    d.count("unavailable");
                    // The stream itself may be gone: opened again.
                    opened = false;
                    retry_at = failed(&mut failures);
                    continue;
                }
            }
        }
        if let Err(e) = d.mirror().await {
            warn!(error = %e, "national network: cannot write the work stream; callbacks wait");
            d.count("unavailable");
            d.set_ready(false);
            (opened, reconciled) = (false, false);
            retry_at = failed(&mut failures);
            continue;
        }
        failures = 0;
        let dead = live.dead(takeover_after);
        let newly_dead = dead.iter().any(|n| !swept.contains(n));
        if live.settled(takeover_after) && (newly_dead || Instant::now() >= sweep_at) {
            match d.pass(&live, takeover_after).await {
                Ok(()) => {
                    swept = dead;
                    sweep_at = Instant::now() + SWEEP_EVERY;
                }
                Err(e) => {
                    warn!(error = %e, "national network: cannot read the work stream for dead nodes' callbacks");
                    sweep_at = Instant::now() + Duration::from_secs(5);
                }
            }
        }
        if Instant::now() >= refresh_at {
            refresh_at = Instant::now() + REFRESH_EVERY;
            let before = unix_now() - REFRESH_AFTER;
            let _ = d
                .store
                .with(move |s| Ok(s.refresh_mirror(before)? + s.refresh_contacts_mirror(before)?))
                .await;
        }
    }
}

async fn fence_task(d: Arc<Shared>, mut fences: mpsc::Receiver<Fence>) {
    while let Some(f) = fences.recv().await {
        // Its dial gave up waiting: nothing is written for it.
        if f.reply.is_closed() {
            continue;
        }
        let ready = d.ready.load(Ordering::Relaxed);
        let answer = match f.target {
            Target::Callback {
                id,
                version: Some(v),
            } if ready => d.fence(&id, v).await,
            Target::Contact { contact, attempt } if ready => {
                d.fence_contact(contact, attempt).await
            }
            // Not ready, or no token: the claim is older than this driver
            // knows.
            _ => Fenced::Unavailable,
        };
        d.count(match answer {
            Fenced::Go(_) => "fence_go",
            Fenced::Gone => "fence_gone",
            Fenced::Unavailable => "unavailable",
        });
        let _ = f.reply.send(answer);
    }
}

fn stream_config() -> stream::Config {
    stream::Config {
        name: w::STREAM.to_owned(),
        subjects: vec![w::SUBJECTS.to_owned()],
        max_messages_per_subject: PER_SUBJECT,
        max_messages: 10_000_000,
        max_age: MAX_AGE,
        max_message_size: i32::try_from(w::MAX_RECORD_BYTES * 2).unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

impl Shared {
    fn count(&self, event: &str) {
        self.metrics.cluster_work.with_label_values(&[event]).inc();
    }

    fn set_ready(&self, ready: bool) {
        if self.ready.swap(ready, Ordering::Relaxed) != ready {
            self.metrics.cluster_work_ready.set(i64::from(ready));
            if !ready {
                warn!("national network: work stream unreachable; callbacks wait until it returns");
            }
        }
    }

    /// Opens the stream, creating it if no node has yet; one whose
    /// settings someone weakened (one record per callback, no age) is put
    /// back to what the checks need.
    async fn open_stream(&self) -> Result<(), String> {
        let want = stream_config();
        let s = self
            .ctx
            .get_or_create_stream(want.clone())
            .await
            .map_err(|e| e.to_string())?;
        let have = &s.cached_info().config;
        if have.max_messages_per_subject != want.max_messages_per_subject
            || have.subjects != want.subjects
            || have.max_age != want.max_age
        {
            warn!(
                stream = w::STREAM,
                "national network: the work stream's settings differ from what the checks need; setting them again"
            );
            self.ctx
                .update_stream(want)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn stream(&self) -> Result<Stream<()>, String> {
        self.ctx
            .get_stream_no_info(w::STREAM)
            .await
            .map_err(|e| e.to_string())
    }

    /// The record this node writes for `item` (`None`: not ours to write).
    fn record(&self, item: &Item, tenants: &HashMap<String, String>) -> Option<WorkRecord> {
        item.record(&self.node, tenants)
    }

    fn tenants(&self) -> HashMap<String, String> {
        self.desks
            .queues()
            .iter()
            .map(|q| (q.name.clone(), q.tenant.clone()))
            .collect()
    }

    /// Writes `record` over sequence `expect` (the subject's last), naming
    /// it in the record.
    async fn put(&self, record: &WorkRecord, expect: u64) -> Result<u64, PutError> {
        let Some(subject) = record.subject() else {
            return Err(PutError::Conflict);
        };
        let mut record = record.clone();
        record.prev = expect;
        let sealed = self
            .key
            .sealer()
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

    /// The last record of `key`, checked against the one before it.
    async fn last(&self, key: &Key) -> Result<Last, String> {
        let Some(subject) = key.subject() else {
            return Ok(Last::Untrusted);
        };
        let stream = self.stream().await?;
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(Last::None),
            Err(e) => return Err(e.to_string()),
        };
        let first = stream
            .raw_message_builder()
            .sequence(1)
            .next_by_subject(subject.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let before = (first.sequence < last.sequence).then_some(first.sequence);
        Ok(match self.key.sealer().open(&subject, &last.payload) {
            Some(r) if w::chained(&r, last.sequence, before) => {
                Last::Record(last.sequence, Box::new(r))
            }
            _ => {
                self.count("refused");
                Last::Untrusted
            }
        })
    }

    /// Our write of `m` was refused: who has it now? Another node: moved
    /// here. Still us, open (an acknowledgement lost): write again. Gone
    /// (the stream lost it) while we wrote it recently: write it again
    /// from nothing. Anything else (unreadable, replayed, our own record
    /// closed while the row is open, gone long ago): the row is never
    /// dialled, kept `unconfirmed` for a person.
    async fn settle_conflict(&self, m: &Item) -> Result<Settled, String> {
        let now = unix_now();
        let key = m.key();
        let open = m.open();
        let found = self.last(&key).await?;
        match found {
            Last::Record(_, r) if r.owner != self.node => {
                let (to, k) = (r.owner.clone(), key.clone());
                if self
                    .store
                    .with(move |s| k.set_moved(s, &to, now))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    warn!(kind = key.kind(), id = %short(key.id()), to = %r.owner, "national network: work taken over by another node; not dialled here");
                } else if m.done() {
                    // Reached here while another node took it over (this
                    // one was cut off, its call went on): the result stays
                    // here, the new owner may call the citizen again.
                    warn!(kind = key.kind(), id = %short(key.id()), to = %r.owner, "national network: a result reached here after the work moved to another node; it stays here");
                    self.count("result_after_move");
                }
                self.count("moved_away");
                Ok(Settled::Stop)
            }
            Last::Record(seq, r) if r.state != WorkState::Closed || !open => {
                self.store
                    .with(move |s| key.set_mirror_seq(s, seq))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Settled::Retry)
            }
            Last::None
                if m.mirrored_at().is_some_and(|t| {
                    now - t < i64::try_from(MAX_AGE.as_secs()).unwrap_or(0) - REFRESH_AFTER
                }) =>
            {
                // Only the stream itself lost it (deleted, purged): a
                // takeover would have left its own record.
                self.store
                    .with(move |s| key.set_mirror_seq(s, 0))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Settled::Retry)
            }
            _ => {
                let k = key.clone();
                if self
                    .store
                    .with(move |s| k.set_unconfirmed(s, now))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    warn!(kind = key.kind(), id = %short(key.id()), "national network: the work stream's record is missing or cannot be trusted; not dialled (failed, unconfirmed)");
                    self.count("unconfirmed");
                }
                Ok(Settled::Stop)
            }
        }
    }

    /// After a closed record: the subject's earlier records (they name a
    /// citizen) leave the stream. Best effort: they leave anyway with age.
    async fn forget_before(&self, record: &WorkRecord) {
        let Some(subject) = record.subject() else {
            return;
        };
        let Ok(stream) = self.stream().await else {
            return;
        };
        if let Err(e) = stream.purge().filter(subject).keep(1).await {
            self.count("purge_failed");
            tracing::debug!(error = %e, "national network: a closed record's predecessors stay until they age out");
        }
    }

    /// Mirrors what changed since the last round: callbacks, contacts,
    /// and the records of contacts deleted here, closed.
    async fn mirror(&self) -> Result<(), String> {
        let today = crate::campaigns::rome_day(unix_now()).0;
        let (callbacks, contacts) = self
            .store
            .with(move |s| {
                Ok((
                    s.unmirrored(MIRROR_BATCH)?,
                    s.unmirrored_contacts(MIRROR_BATCH, today)?,
                ))
            })
            .await
            .map_err(|e| e.to_string())?;
        let items: Vec<Item> = callbacks
            .into_iter()
            .map(Item::Callback)
            .chain(contacts.into_iter().map(Item::Contact))
            .collect();
        if !items.is_empty() {
            self.mirror_items(&items).await?;
        }
        self.close_tombstones().await
    }

    async fn mirror_items(&self, items: &[Item]) -> Result<(), String> {
        let tenants = self.tenants();
        let now = unix_now();
        let mut done: Vec<(Key, i64, u64)> = Vec::with_capacity(items.len());
        let mut failure = None;
        for m in items {
            let Some(record) = self.record(m, &tenants) else {
                continue;
            };
            let key = m.key();
            if key.subject().is_none() {
                // Never an id the node makes; one from an old store stays
                // local.
                let _ = self.store.with(move |s| key.stop_mirroring(s)).await;
                continue;
            }
            match self.put(&record, m.seq().unwrap_or(0)).await {
                Ok(seq) => {
                    if record.state == WorkState::Closed {
                        self.forget_before(&record).await;
                    }
                    done.push((key, m.version(), seq));
                    self.count("mirrored");
                }
                Err(PutError::Conflict) => {
                    if let Err(e) = self.settle_conflict(m).await {
                        failure = Some(e);
                        break;
                    }
                }
                Err(PutError::Unavailable(e)) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !done.is_empty() {
            self.store
                .with(move |s| {
                    for (key, version, seq) in &done {
                        key.set_mirrored(s, *version, *seq, now)?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Contacts deleted here (their campaign deleted) or not kept after a
    /// takeover: their records are closed, or a node would take them over
    /// and call a citizen the firm removed. A record another node wrote
    /// since is that node's: left to it.
    async fn close_tombstones(&self) -> Result<(), String> {
        let graves = self
            .store
            .with(|s| s.tombstones(MIRROR_BATCH))
            .await
            .map_err(|e| e.to_string())?;
        for t in graves {
            let record = WorkRecord {
                prev: 0,
                owner: self.node.clone(),
                tenant: t.tenant.clone(),
                state: WorkState::Closed,
                callback: None,
                contact: Some(ContactWork {
                    id: t.work_id.clone(),
                    campaign: t.campaign.clone(),
                    number: None,
                    name: None,
                    priority: 0,
                    language: None,
                    data: None,
                    attempts: 0,
                    dialled: 0,
                    next_at: 0,
                    last_outcome: Some("deleted".into()),
                    dnc: false,
                    day: None,
                    held: false,
                }),
            };
            match self.put(&record, t.seq).await {
                Ok(_) => {
                    self.count("closed");
                    self.forget_before(&record).await;
                }
                Err(PutError::Conflict) => match self.last(&Key::Contact(t.work_id.clone())).await?
                {
                    // Still open (ours, an acknowledgement lost; or taken
                    // over by another node while this one was cut off):
                    // closed at that sequence next round, whoever owns
                    // it now. The firm removed the citizen here; a node
                    // holding the contact finds it moved and stops.
                    Last::Record(seq, r) if r.state != WorkState::Closed => {
                        let id = t.work_id.clone();
                        let (campaign, tenant) = (t.campaign.clone(), t.tenant.clone());
                        self.store
                            .with(move |s| s.bury(&id, seq, &campaign, &tenant))
                            .await
                            .map_err(|e| e.to_string())?;
                        continue;
                    }
                    _ => {}
                },
                Err(PutError::Unavailable(e)) => return Err(e),
            }
            let id = t.work_id.clone();
            self.store
                .with(move |s| s.drop_tombstone(&id))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Before the citizen of callback `id` (claimed at `version`) is
    /// dialled: writes `dialing` on the stream, conditional on this node's
    /// last record of it.
    async fn fence(&self, id: &str, version: i64) -> Fenced {
        for _ in 0..2 {
            let key = id.to_owned();
            let Ok(Some(m)) = self.store.with(move |s| s.mirror_state(&key)).await else {
                return Fenced::Unavailable;
            };
            if m.callback.status != Status::InProgress || m.dialed || m.version != version {
                return Fenced::Gone;
            }
            if w::callback_subject(id).is_none() {
                return Fenced::Go(version);
            }
            match self.write_dialing(Item::Callback(m)).await {
                Some(Fenced::Go(_)) => return Fenced::Go(version),
                Some(answer) => return answer,
                None => {}
            }
        }
        Fenced::Unavailable
    }

    /// Before attempt `attempt` of campaign contact `contact` dials: the
    /// same fence (the attempt number is the claim's token).
    async fn fence_contact(&self, contact: i64, attempt: u32) -> Fenced {
        let today = crate::campaigns::rome_day(unix_now()).0;
        for _ in 0..2 {
            let Ok(Some(m)) = self
                .store
                .with(move |s| s.contact_for_fence(contact, today))
                .await
            else {
                return Fenced::Unavailable;
            };
            if m.status != ContactStatus::InProgress || m.contact.attempts != attempt || !m.open() {
                return Fenced::Gone;
            }
            if let Some(answer) = self.write_dialing(Item::Contact(m)).await {
                return answer;
            }
        }
        Fenced::Unavailable
    }

    /// Writes `item` as being dialled over this node's last record of it.
    /// `None`: our own record moved on (an acknowledgement lost): ask
    /// again.
    async fn write_dialing(&self, item: Item) -> Option<Fenced> {
        let Some(mut record) = self.record(&item, &self.tenants()) else {
            return Some(Fenced::Gone);
        };
        record.state = WorkState::Dialing;
        match self.put(&record, item.seq().unwrap_or(0)).await {
            Ok(seq) => {
                let (key, version, now) = (item.key(), item.version(), unix_now());
                // The dial mark follows (its change is mirrored again:
                // the same record).
                let _ = self
                    .store
                    .with(move |s| key.set_mirrored(s, version, seq, now))
                    .await;
                Some(Fenced::Go(version))
            }
            Err(PutError::Conflict) => match self.settle_conflict(&item).await {
                Ok(Settled::Stop) => Some(Fenced::Gone),
                Ok(Settled::Retry) => None,
                Err(_) => Some(Fenced::Unavailable),
            },
            Err(PutError::Unavailable(_)) => Some(Fenced::Unavailable),
        }
    }

    /// Reads the whole stream once: this node's own records its store
    /// lacks are kept, its open callbacks another node took are marked
    /// moved, and (once the picture is settled) the open callbacks of
    /// nodes silent for `after` are taken over, if this node serves their
    /// firm's queue and can dial.
    async fn pass(&self, live: &Liveness, after: Duration) -> Result<(), String> {
        let records = self.scan().await?;
        let now = unix_now();
        let (mine, mine_contacts, campaigns) = self
            .store
            .with(|s| {
                Ok((
                    s.open_mirrored()?,
                    s.open_mirrored_contacts()?,
                    s.campaigns_taking_contacts()?,
                ))
            })
            .await
            .map_err(|e| e.to_string())?;
        let by_subject: HashMap<String, &(u64, WorkRecord)> = records
            .iter()
            .filter_map(|r| Some((r.1.subject()?, r)))
            .collect();
        let open_here: Vec<Key> = mine
            .into_iter()
            .map(|(id, _)| Key::Callback(id))
            .chain(mine_contacts.into_iter().map(Key::Contact))
            .collect();
        // This node's own open rows need nothing from a pass (their next
        // write is checked anyway); only records its store lacks or has
        // closed are adopted.
        let known: std::collections::HashSet<String> =
            open_here.iter().filter_map(Key::subject).collect();
        let moved: Vec<(Key, String)> = open_here
            .into_iter()
            .filter_map(|key| {
                let (_, r) = by_subject.get(&key.subject()?)?;
                (r.owner != self.node).then(|| (key, r.owner.clone()))
            })
            .collect();
        if !moved.is_empty() {
            let n = moved.len();
            self.store
                .with(move |s| {
                    for (key, to) in &moved {
                        key.set_moved(s, to, now)?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
            warn!(
                items = n,
                "national network: callbacks or contacts taken over by other nodes while this one was away; not dialled here"
            );
            for _ in 0..n {
                self.count("moved_away");
            }
        }
        let queues = self.desks.queues();
        let serves = |r: &WorkRecord| {
            self.can_dial
                && match (&r.callback, &r.contact) {
                    (Some(c), _) => queues
                        .iter()
                        .any(|q| q.tenant == r.tenant && q.name == c.queue),
                    (None, Some(k)) => campaigns
                        .iter()
                        .any(|(t, n)| *t == r.tenant && *n == k.campaign),
                    (None, None) => false,
                }
        };
        let up = |n: &str| live.up(n, after);
        let (mut taken, mut adopted) = (0usize, 0usize);
        for (i, (seq, record)) in records.iter().enumerate() {
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            let (keep, as_, event) = match w::verdict(record, &self.node, up, serves) {
                Verdict::Leave => continue,
                Verdict::Adopt(_) if record.subject().is_some_and(|s| known.contains(&s)) => {
                    continue;
                }
                Verdict::Adopt(as_) => (*seq, as_, "adopted"),
                Verdict::TakeOver { record: r, as_ } => match self.put(&r, *seq).await {
                    Ok(new) => (new, as_, "taken_over"),
                    // Another node won it.
                    Err(PutError::Conflict) => continue,
                    Err(PutError::Unavailable(e)) => return Err(e),
                },
            };
            let interrupted = as_ == Taken::Interrupted;
            let kept = match (&record.callback, &record.contact) {
                (Some(c), _) => {
                    let cb = callback(c, now);
                    let tenant = record.tenant.clone();
                    self.store
                        .with(move |s| s.keep_taken(&cb, &tenant, interrupted, keep, now))
                        .await
                }
                (None, Some(k)) => {
                    let k = taken_contact(k, &record.tenant);
                    self.store
                        .with(move |s| s.keep_taken_contact(&k, interrupted, keep, now))
                        .await
                }
                (None, None) => continue,
            }
            .map_err(|e| e.to_string())?;
            match (kept, event) {
                (Kept::Known, _) => {}
                (Kept::Duplicate, _) => self.count("duplicate"),
                // Its queue's name is another firm's here (this node's
                // store lost or replaced, the name given to another firm):
                // never that firm's to dial. Left open on the stream for a
                // person, or for a node of its firm once this one is gone.
                (Kept::OtherFirm, _) => {
                    if let Some(c) = &record.callback {
                        warn!(callback = %short(&c.id), queue = %c.queue, tenant = %record.tenant, "national network: a callback on the stream names a queue that is another firm's here; not kept");
                    }
                    self.count("other_tenant");
                }
                (Kept::New, "taken_over") => {
                    taken += 1;
                    match (&record.callback, &record.contact) {
                        (Some(c), _) => {
                            info!(callback = %short(&c.id), from = %record.owner, queue = %c.queue, "national network: callback taken over from a node that is down");
                        }
                        (_, Some(k)) => {
                            info!(contact = %short(&k.id), from = %record.owner, campaign = %k.campaign, "national network: campaign contact taken over from a node that is down");
                        }
                        _ => {}
                    }
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
                adopted, "national network: work kept from the work stream"
            );
        }
        Ok(())
    }

    /// Every callback's last record on the stream that this node can open
    /// and that follows its predecessor, with its sequence; at most
    /// `MAX_SCAN` messages read (every one counts, readable or not).
    async fn scan(&self) -> Result<Vec<(u64, WorkRecord)>, String> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: w::SUBJECTS.to_owned(),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        // Per subject: the last message (sequence, payload) and the
        // sequence of the one before it.
        let mut by_subject: HashMap<String, (u64, Bytes, Option<u64>)> = HashMap::new();
        let mut read = 0usize;
        while pending > 0 && read < MAX_SCAN {
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
                read += 1;
                let Ok(info) = m.info() else { continue };
                pending = info.pending;
                let seq = info.stream_sequence;
                let e = by_subject
                    .entry(m.subject.to_string())
                    .or_insert((0, Bytes::new(), None));
                if e.0 != 0 {
                    e.2 = Some(e.0);
                }
                e.0 = seq;
                e.1 = m.payload.clone();
            }
            if got == 0 {
                break;
            }
        }
        let _ = stream.delete_consumer(&name).await;
        if read >= MAX_SCAN {
            warn!(
                read,
                "national network: the work stream holds more records than one pass reads"
            );
        }
        let mut out = Vec::with_capacity(by_subject.len());
        for (i, (subject, (seq, payload, before))) in by_subject.into_iter().enumerate() {
            match self.key.sealer().open(&subject, &payload) {
                Some(r) if w::chained(&r, seq, before) => out.push((seq, r)),
                _ => self.count("refused"),
            }
            // Up to two million records opened in a row: the thread is
            // shared with SIP streams (`crate::streams`), so they get
            // their turns.
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
        }
        Ok(out)
    }
}

/// Records a pass opens or weighs between two yields of its thread.
const YIELD_EVERY: usize = 1024;

/// An id for the logs (enough to find it, not the whole key).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(connected: Option<u64>, silent: &[(&str, u64)]) -> Liveness {
        Liveness {
            connected_for: connected.map(Duration::from_secs),
            silent: silent
                .iter()
                .map(|(n, s)| ((*n).to_owned(), Duration::from_secs(*s)))
                .collect(),
        }
    }

    #[test]
    fn a_node_back_from_its_own_outage_finds_nobody_dead_for_it() {
        let after = Duration::from_secs(30);
        // Connected all along: the silent one is dead, the other alive.
        let l = live(Some(600), &[("milano-1", 45), ("napoli-1", 1)]);
        assert_eq!(
            l.dead(after).into_iter().collect::<Vec<_>>(),
            vec!["milano-1".to_owned()]
        );
        // Back after five minutes away: everyone has been silent that
        // long, but only as long as this node could not hear them.
        let l = live(Some(2), &[("milano-1", 300), ("napoli-1", 300)]);
        assert!(l.dead(after).is_empty());
        assert!(l.up("milano-1", after));
        // Still silent once this node has been back `after`: dead.
        let l = live(Some(31), &[("milano-1", 331)]);
        assert!(!l.up("milano-1", after));
        // Never heard from: alive until this node has been connected long
        // enough to have heard it.
        let l = live(Some(10), &[]);
        assert!(l.up("roma-1", after));
        assert!(!live(Some(30), &[]).up("roma-1", after));
    }
}
