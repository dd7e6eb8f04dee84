//! What `/healthz` reports: whether the parts of a node that serve calls
//! and requests are alive and moving, read from atomics their threads
//! update (the HTTP thread never waits on the engine or the store to
//! answer, so a stalled part cannot stall its own health check).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A part that has not moved for this long is reported stalled. The
/// engine beats every second ([`Heartbeat`]); a store transaction or a
/// backlog of refused writes lasting this long means the disk is not
/// taking writes (the busy timeout on a locked database alone is 5 s).
pub(crate) const STALE: Duration = Duration::from_secs(5);

/// What `/healthz` answers, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The node is shutting down: send it nothing new.
    Draining,
    /// The engine task has not started yet.
    Starting,
    /// The engine task has not beaten for [`STALE`] (blocked, or gone).
    EngineStalled,
    /// The store's thread is gone.
    StoreDown,
    /// One store transaction, or writes the disk keeps refusing, for
    /// [`STALE`].
    StoreStalled,
    /// Everything moves.
    Ok,
}

impl Verdict {
    /// The body `/healthz` answers with (short text, newline-terminated).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::Starting => "starting",
            Self::EngineStalled => "engine stalled",
            Self::StoreDown => "store down",
            Self::StoreStalled => "store stalled",
            Self::Ok => "ok",
        }
    }
}

/// Milliseconds since `epoch`, plus one so that 0 means "never".
fn stamp(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// How long ago a stamp was taken; `None` for "never".
fn age(epoch: Instant, stamp: u64, now: Instant) -> Option<Duration> {
    let at = stamp.checked_sub(1)?;
    let since = now.saturating_duration_since(epoch);
    Some(since.saturating_sub(Duration::from_millis(at)))
}

/// The engine task's sign of life: it beats on every tick of its loop; a
/// loop that stops turning stops beating.
#[derive(Clone)]
pub struct Heartbeat(Arc<Beat>);

struct Beat {
    epoch: Instant,
    /// [`stamp`] of the last beat; 0 before the first.
    last: AtomicU64,
}

impl Heartbeat {
    /// A heart that has not beaten yet.
    pub fn new() -> Self {
        Self(Arc::new(Beat {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }))
    }

    /// The owner is alive at `now`.
    pub fn beat(&self, now: Instant) {
        self.0
            .last
            .store(stamp(self.0.epoch, now), Ordering::Relaxed);
    }

    /// Since the last beat; `None` before the first.
    fn age(&self, now: Instant) -> Option<Duration> {
        age(self.0.epoch, self.0.last.load(Ordering::Relaxed), now)
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

/// The store thread's state as it works: alive, in a transaction since,
/// holding writes the disk refused since.
#[derive(Clone)]
pub struct StoreProbe(Arc<StoreState>);

struct StoreState {
    epoch: Instant,
    alive: AtomicBool,
    /// [`stamp`] of the start of the transaction in progress; 0 if none.
    busy_since: AtomicU64,
    /// [`stamp`] of when the backlog of refused writes last became
    /// non-empty; 0 while it is empty.
    unwritten_since: AtomicU64,
}

impl StoreProbe {
    /// A store whose thread is about to start.
    pub(crate) fn new() -> Self {
        Self(Arc::new(StoreState {
            epoch: Instant::now(),
            alive: AtomicBool::new(true),
            busy_since: AtomicU64::new(0),
            unwritten_since: AtomicU64::new(0),
        }))
    }

    fn verdict(&self, now: Instant) -> Verdict {
        let s = &self.0;
        if !s.alive.load(Ordering::Relaxed) {
            return Verdict::StoreDown;
        }
        let stuck = |at: &AtomicU64| {
            age(s.epoch, at.load(Ordering::Relaxed), now).is_some_and(|a| a >= STALE)
        };
        if stuck(&s.busy_since) || stuck(&s.unwritten_since) {
            return Verdict::StoreStalled;
        }
        Verdict::Ok
    }
}

/// The store's thread reports here: its end, each transaction, and the
/// writes the disk refused.
impl centralino_store::service::Watch for StoreProbe {
    fn stopped(&self) {
        self.0.alive.store(false, Ordering::Relaxed);
    }

    fn begin(&self, now: Instant) {
        self.0
            .busy_since
            .store(stamp(self.0.epoch, now), Ordering::Relaxed);
    }

    fn end(&self, now: Instant, backlog: usize) {
        let s = &self.0;
        s.busy_since.store(0, Ordering::Relaxed);
        if backlog == 0 {
            s.unwritten_since.store(0, Ordering::Relaxed);
        } else if s.unwritten_since.load(Ordering::Relaxed) == 0 {
            s.unwritten_since
                .store(stamp(s.epoch, now), Ordering::Relaxed);
        }
    }
}

/// Everything `/healthz` looks at.
#[derive(Clone)]
pub struct Health {
    draining: Arc<AtomicBool>,
    engine: Heartbeat,
    store: Option<StoreProbe>,
}

impl Health {
    /// Health of a node that drains when `draining` is set, whose engine
    /// beats `engine` and whose store (if it has one) reports to `store`.
    pub fn new(draining: Arc<AtomicBool>, engine: Heartbeat, store: Option<StoreProbe>) -> Self {
        Self {
            draining,
            engine,
            store,
        }
    }

    /// The node's state at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        if self.draining.load(Ordering::Relaxed) {
            return Verdict::Draining;
        }
        match self.engine.age(now) {
            None => return Verdict::Starting,
            Some(a) if a >= STALE => return Verdict::EngineStalled,
            Some(_) => {}
        }
        self.store.as_ref().map_or(Verdict::Ok, |s| s.verdict(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use centralino_store::service::Watch;

    const S: Duration = Duration::from_secs(1);

    fn node() -> (Health, Arc<AtomicBool>, Heartbeat, StoreProbe, Instant) {
        let draining = Arc::new(AtomicBool::new(false));
        let beat = Heartbeat::new();
        let store = StoreProbe::new();
        let health = Health::new(draining.clone(), beat.clone(), Some(store.clone()));
        (health, draining, beat, store, Instant::now())
    }

    #[test]
    fn an_engine_that_stops_beating_is_stalled() {
        let (h, _, beat, _, t0) = node();
        assert_eq!(h.check(t0), Verdict::Starting);
        beat.beat(t0);
        assert_eq!(h.check(t0 + 4 * S), Verdict::Ok);
        assert_eq!(h.check(t0 + STALE), Verdict::EngineStalled);
        beat.beat(t0 + 6 * S);
        assert_eq!(h.check(t0 + 7 * S), Verdict::Ok);
    }

    #[test]
    fn a_store_thread_that_ends_is_down() {
        let (h, _, beat, store, t0) = node();
        beat.beat(t0);
        assert_eq!(h.check(t0), Verdict::Ok);
        store.stopped();
        assert_eq!(h.check(t0), Verdict::StoreDown);
        assert_eq!(Verdict::StoreDown.as_str(), "store down");
    }

    #[test]
    fn a_long_transaction_or_refused_writes_stall_the_store() {
        let (h, _, beat, store, t0) = node();
        // One transaction that does not end (a hung disk).
        store.begin(t0);
        beat.beat(t0 + 4 * S);
        assert_eq!(h.check(t0 + 4 * S), Verdict::Ok);
        beat.beat(t0 + 5 * S);
        assert_eq!(h.check(t0 + 5 * S), Verdict::StoreStalled);
        // It ends, but the disk refused its writes: still stalled once
        // they have waited long enough, through further failed retries.
        store.end(t0 + 6 * S, 3);
        beat.beat(t0 + 8 * S);
        assert_eq!(h.check(t0 + 8 * S), Verdict::Ok);
        store.begin(t0 + 10 * S);
        store.end(t0 + 10 * S, 3);
        beat.beat(t0 + 11 * S);
        assert_eq!(h.check(t0 + 11 * S), Verdict::StoreStalled);
        // The disk takes them.
        store.begin(t0 + 12 * S);
        store.end(t0 + 12 * S, 0);
        beat.beat(t0 + 12 * S);
        assert_eq!(h.check(t0 + 12 * S), Verdict::Ok);
    }

    #[test]
    fn draining_comes_first() {
        let (h, draining, beat, store, t0) = node();
        beat.beat(t0);
        store.stopped();
        draining.store(true, Ordering::Relaxed);
        assert_eq!(h.check(t0 + 60 * S), Verdict::Draining);
        assert_eq!(h.check(t0).as_str(), "draining");
    }
}
