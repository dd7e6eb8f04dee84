//! RTP port pairs bound ahead of the calls that take them, on a thread of
//! their own (`media-bind`). Binding a call's four sockets — `socket()`
//! and `bind()` each — was 7–13 % of the engine thread at 2,000 calls/s
//! (`perf`); taken from here a pair costs the engine two empty reads.
//!
//! Bounded on purpose (see ARCHITECTURE "RTP sockets bound a few ahead"):
//! only a few dozen pairs per address wait, drawn from the pool at random
//! like any other, so the ports a stranger can fill before a call are few
//! and unknown. A waiting pair that received anything before its call took
//! it is not used: its sockets close and its ports rest, so nothing sent
//! to a port before its SDP named it can reach a call.
//!
//! An ended call's pairs stay with the media thread that served it, in its
//! epoll set, read and emptied there while they rest, and come back here
//! as tickets ([`Ticket`]) after `PORT_QUARANTINE` of silence
//! ([`super::kept`]; ARCHITECTURE "RTP pairs kept by their media thread").

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::debug;

use std::time::Instant;

use super::kept::{Kept, READY, Socks, TAKEN};
use super::{MediaPlane, Pair, bind_pair};

/// Pairs kept bound per address (the most a stranger can find bound
/// before their calls, and hold in kernel buffers by spraying them).
pub(super) const TARGET: usize = 64;
/// Asked for again when fewer than this many are bound or on their way:
/// one wake-up of the binding thread per `TARGET - LOW` pairs or more,
/// and `LOW` pairs of slack (12 ms of calls at 2,000 calls/s) for that
/// thread to be scheduled: with 32, a busy 2-core VM left ~5 % of the
/// pairs to be bound on the engine's thread at the call (`perf`; now
/// counted, `centralino_rtp_pairs_bound_at_call_total`).
const LOW: usize = 48;
/// Most pairs held per address, bound ahead and back from calls: a
/// call's pairs come back only below it. Enough for the pairs of 4,000
/// calls a second through their rest (two each); 16,384 descriptors.
pub(super) const MAX_HELD: usize = 8192;

/// Most held pairs let go per [`TRIM_EVERY`] once calls take fewer: the
/// thousands kept through a rush (4,500 after 10 s at 2,000 calls/s) go
/// within seconds, a batch at a time for their media threads to close;
/// the engine's thread only sends the word.
const TRIM: usize = 512;
/// How often held pairs beyond the demand are let go: the engine's turns
/// come at least once a second (its heartbeat).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The pairs (two descriptors each) that calls and held pairs may have
/// open together before ended calls' pairs stop coming back: three
/// quarters of the descriptors this process may open, so a rush of calls
/// (which take held pairs first), connections and files keep theirs. A
/// 20,000-descriptor limit lets a node at 4,000 calls a second fail
/// binds with `EMFILE` otherwise.
fn pair_budget() -> usize {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    nofile.map_or(usize::MAX, |n| {
        usize::try_from(n / 8 * 3).unwrap_or(usize::MAX)
    })
}
/// The pool must hold at least this many pairs for any to be bound
/// ahead: a small range (tests of exhaustion, a lab) keeps the exact
/// behaviour of binding at the call, every port in the pool.
const MIN_POOL: usize = 2048;

/// A pair a media thread keeps, rested and quiet, ready for a call on
/// that thread.
pub(super) struct Ticket {
    pub(super) port: u16,
    /// Its place among the thread's pairs.
    pub(super) pid: u32,
    /// [`READY`] until the plane takes it ([`TAKEN`]) or the thread hears
    /// anything on it first ([`super::kept::STALE`]: it lets it go, and
    /// the plane closes it with this ticket).
    pub(super) state: Arc<AtomicU8>,
    /// Its RTP socket, shared with its thread.
    pub(super) rtp: Arc<std::net::UdpSocket>,
}

#[derive(Default)]
pub(super) struct Shared {
    /// Pairs bound ahead in the order bound, taken oldest first so none
    /// waits for long.
    pub(super) ready: HashMap<IpAddr, VecDeque<(u16, Pair)>>,
    /// Pairs back from ended calls after their rest, per media thread and
    /// address, each placed at random among them by its thread.
    pub(super) kept: HashMap<(usize, IpAddr), VecDeque<Ticket>>,
    /// Ports another process holds: back to the pool.
    pub(super) failed: Vec<(IpAddr, u16)>,
    /// Ports the plane expected back whose sockets a media thread closed
    /// instead (a browser's leg was on them): back to the pool.
    pub(super) closed: Vec<(IpAddr, u16)>,
    /// Ports of kept pairs a media thread closed after the plane let them
    /// go (no longer counted as held): back to the pool.
    pub(super) let_go: Vec<u16>,
    /// A batch the thread emptied, for the plane's next: no allocation
    /// per batch (one of this size made glibc consolidate its free lists
    /// on the engine's thread).
    spare: Vec<(IpAddr, u16)>,
}

/// The plane's side.
pub(super) struct Ahead {
    to_bind: Sender<Vec<(IpAddr, u16)>>,
    pub(super) shared: Arc<Mutex<Shared>>,
    /// Ports taken from the pool for each address and not yet handed to a
    /// call: asked, being bound, or ready.
    asked: HashMap<IpAddr, usize>,
    /// Ended calls' pairs for each address expected back or resting: held,
    /// but not ready, so not counted in `asked` (the pairs bound ahead
    /// stay the slack while they rest).
    back: HashMap<IpAddr, usize>,
    /// Asked this turn, sent at [`Ahead::flush`].
    batch: Vec<(IpAddr, u16)>,
    /// Pairs in calls and held, at most ([`pair_budget`]).
    budget: usize,
    /// Pairs calls took in the last whole second and in this one (since
    /// `window`): how many ended calls' pairs are worth keeping.
    demand: usize,
    taken: usize,
    window: Instant,
    /// Whether a call takes a kept pair or one bound ahead (xorshift).
    rng: u64,
    /// Whether ended calls' pairs come back at all: not where the relay
    /// latches on the first packet (`media.latch = "first_packet"`),
    /// since a peer of a port's last call knows it will serve again.
    keep: bool,
    /// When the pairs held beyond the calls' demand are next closed.
    trim_at: Instant,
    /// Most let go each time ([`TRIM`]; smaller in tests).
    trim: usize,
}

/// What [`Ahead::trim`] gives back to the pool.
#[derive(Default)]
pub(super) struct Trimmed {
    /// Ports to release.
    pub(super) release: Vec<u16>,
    /// Ports another process holds (a bind failed): to rest again.
    pub(super) busy: Vec<u16>,
    /// Kept pairs let go, for their media threads to close (their ports
    /// come back through [`Shared::let_go`]).
    pub(super) close: Vec<Kept>,
}

/// What [`Ahead::take`] found.
pub(super) enum Taken {
    /// A pair for the call.
    Pair(u16, Socks),
    /// Bound ahead and something was sent to it: closed, the port to
    /// rest.
    Touched(u16),
    /// Kept, and something waits on it, sent before the take: for its
    /// thread to close, unused.
    Heard(Kept),
    /// Kept, and its thread heard something on it after its rest (and
    /// counted it): closed here with its ticket, the port to rest.
    Stale(u16),
    None,
}

impl Ahead {
    /// The binding thread, when the pool is large enough to spare pairs.
    pub(super) fn start(pool_pairs: usize, seed: u64, keep: bool) -> std::io::Result<Option<Self>> {
        if pool_pairs < MIN_POOL {
            return Ok(None);
        }
        let (to_bind, rx) = channel::<Vec<(IpAddr, u16)>>();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("media-bind".into())
            .spawn(move || {
                for mut batch in rx {
                    let mut bound = Vec::with_capacity(batch.len());
                    let mut failed = Vec::new();
                    for (ip, port) in batch.drain(..) {
                        match bind_pair(ip, port) {
                            Ok(pair) => bound.push((ip, port, pair)),
                            Err(e) => {
                                debug!(port, error = %e, "RTP port busy, skipped");
                                failed.push((ip, port));
                            }
                        }
                    }
                    let mut s = theirs.lock().unwrap_or_else(PoisonError::into_inner);
                    for (ip, port, pair) in bound {
                        s.ready.entry(ip).or_default().push_back((port, pair));
                    }
                    s.failed.extend(failed);
                    if batch.capacity() > 0 {
                        s.spare = batch;
                    }
                }
            })?;
        Ok(Some(Self {
            to_bind,
            shared,
            asked: HashMap::new(),
            back: HashMap::new(),
            batch: Vec::new(),
            budget: pair_budget(),
            demand: 0,
            taken: 0,
            window: Instant::now(),
            rng: seed | 1,
            keep,
            trim_at: Instant::now(),
            trim: TRIM,
        }))
    }

    /// A pair for a call on media thread `thread` (`None`: a supervisor's
    /// port, bound ahead only), if one is ready: one that thread keeps or
    /// one bound ahead on `ip`, chosen at random in proportion to how many
    /// of each wait (so the last call's peer cannot tell when its port
    /// serves again); `failed` gets the ports the binding thread could not
    /// bind, `closed` those of pairs that did not come back from their call
    /// or that a media thread closed (all to release).
    pub(super) fn take(
        &mut self,
        now: Instant,
        thread: Option<usize>,
        ip: IpAddr,
        failed: &mut Vec<u16>,
        closed: &mut Vec<u16>,
    ) -> Taken {
        let roll = self.next();
        let (got, lost, gone) = {
            let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            let s = &mut *s;
            closed.append(&mut s.let_go);
            let lost = std::mem::take(&mut s.failed);
            let gone = std::mem::take(&mut s.closed);
            let fresh = s.ready.get(&ip).map_or(0, VecDeque::len) as u64;
            let kept = thread
                .and_then(|t| s.kept.get_mut(&(t, ip)))
                .filter(|k| !k.is_empty());
            let got = match kept {
                Some(k) if fresh == 0 || roll % (k.len() as u64 + fresh) < k.len() as u64 => {
                    k.pop_front().map(Err)
                }
                _ => s.ready.get_mut(&ip).and_then(VecDeque::pop_front).map(Ok),
            };
            (got, lost, gone)
        };
        for (at, port) in lost {
            self.done(at);
            failed.push(port);
        }
        for (at, port) in gone {
            Self::less(&mut self.back, at);
            closed.push(port);
        }
        // Asking starts with the first call on an address.
        self.asked.entry(ip).or_default();
        if let Some(Ok(_)) = &got {
            self.done(ip);
        }
        if got.is_some() {
            self.taken += 1;
        }
        self.roll(now);
        match got {
            Some(Ok((port, pair))) if pair.is_quiet() => Taken::Pair(port, Socks::Fresh(pair)),
            Some(Ok((port, _))) => Taken::Touched(port),
            // Its thread had read nothing on it since its rest, or it
            // would have marked it stale first. From here on the thread
            // leaves whatever comes to the call; what came before and it
            // had not read yet waits on the socket, and one look tells
            // (RTCP is never relayed: not looked at).
            Some(Err(t)) => {
                Self::less(&mut self.back, ip);
                let taken = t
                    .state
                    .compare_exchange(READY, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if !taken {
                    return Taken::Stale(t.port);
                }
                let mut b = [0u8; 1];
                let quiet = matches!(t.rtp.peek_from(&mut b),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                let k = Kept {
                    thread: thread.unwrap_or(0),
                    port: t.port,
                    pid: t.pid,
                    state: t.state,
                    rtp: t.rtp,
                };
                if quiet {
                    Taken::Pair(k.port, Socks::Kept(k))
                } else {
                    Taken::Heard(k)
                }
            }
            None => Taken::None,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Starts a new second of counting the pairs calls take.
    fn roll(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.window);
        if since >= std::time::Duration::from_secs(1) {
            self.demand = if since < std::time::Duration::from_secs(2) {
                self.taken
            } else {
                0
            };
            self.taken = 0;
            self.window = now;
        }
    }

    fn done(&mut self, ip: IpAddr) {
        Self::less(&mut self.asked, ip);
    }

    fn less(counts: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
        if let Some(n) = counts.get_mut(&ip) {
            *n = n.saturating_sub(1);
        }
    }

    /// The addresses calls took pairs on, and how many more ports to
    /// take from the pool for each now.
    pub(super) fn wanted(&self) -> impl Iterator<Item = (IpAddr, usize)> + '_ {
        self.asked
            .iter()
            .map(|(&ip, &asked)| (ip, if asked < LOW { TARGET - asked } else { 0 }))
            .filter(|&(_, n)| n > 0)
    }

    /// Queues `port` (taken from the pool) to be bound on `ip`.
    pub(super) fn ask(&mut self, ip: IpAddr, port: u16) {
        *self.asked.entry(ip).or_default() += 1;
        self.batch.push((ip, port));
    }

    /// Whether an ending call's pairs on `ip` (two) are to come back,
    /// with `in_calls` pairs in calls now: they are counted as held from
    /// now, until a call takes them or a media thread reports them closed.
    /// Only as many as calls take (one and a half seconds of the last
    /// second's), so a busy hour's end leaves no thousands of idle
    /// sockets open, and within the descriptor budget, calls first.
    pub(super) fn expect_back(&mut self, now: Instant, ip: IpAddr, in_calls: usize) -> bool {
        self.roll(now);
        let held = self.held();
        if !self.keep
            || held + 2 + in_calls > self.budget
            || held + 2 > TARGET * self.asked.len().max(1) + self.demand * 3 / 2
        {
            return false;
        }
        let ready = self.asked.get(&ip).copied().unwrap_or(0);
        let back = self.back.entry(ip).or_default();
        if ready + *back + 2 > MAX_HELD {
            return false;
        }
        *back += 2;
        true
    }

    /// Every [`TRIM_EVERY`]: lets go of the ended calls' pairs held beyond
    /// what calls take now (the bound [`Ahead::expect_back`] keeps, the
    /// pairs bound ahead on each address aside), those ready after their
    /// rest, at most [`TRIM`], for their media threads to close. Gives the
    /// ports to release, and those of pairs that failed to bind or closed
    /// elsewhere (`take` collects them otherwise, and an idle node takes
    /// nothing). Without it the pairs kept through a rush stayed open
    /// (descriptors, ports out of the pool) until calls came back.
    pub(super) fn trim(&mut self, now: Instant) -> Trimmed {
        let mut out = Trimmed::default();
        if now < self.trim_at {
            return out;
        }
        self.trim_at = now + TRIM_EVERY;
        self.roll(now);
        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &mut *s;
        for (ip, port) in std::mem::take(&mut s.failed) {
            Self::less(&mut self.asked, ip);
            out.busy.push(port);
        }
        for (ip, port) in std::mem::take(&mut s.closed) {
            Self::less(&mut self.back, ip);
            out.release.push(port);
        }
        out.release.append(&mut s.let_go);
        // Stale tickets close here (their threads let them go), so none
        // keeps its socket and port for longer than this.
        for (&(_, ip), kept) in &mut s.kept {
            kept.retain(|t| {
                let stale = t.state.load(Ordering::Acquire) == super::kept::STALE;
                if stale {
                    Self::less(&mut self.back, ip);
                    out.release.push(t.port);
                }
                !stale
            });
        }
        let bound = TARGET * self.asked.len().max(1) + self.demand * 3 / 2;
        let mut excess = self.held().saturating_sub(bound).min(self.trim);
        for (&(thread, ip), kept) in &mut s.kept {
            while excess > 0
                && let Some(t) = kept.pop_front()
            {
                Self::less(&mut self.back, ip);
                excess -= 1;
                // Heard by its thread since: it let it go, closed here.
                if t.state
                    .compare_exchange(READY, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    out.close.push(Kept {
                        thread,
                        port: t.port,
                        pid: t.pid,
                        state: t.state,
                        rtp: t.rtp,
                    });
                } else {
                    out.release.push(t.port);
                }
            }
        }
        if !out.close.is_empty() {
            debug!(
                pairs = out.close.len(),
                "RTP pairs held beyond the calls' demand let go"
            );
        }
        out
    }

    /// Ports taken from the pool and not in a call: the pool's gauge.
    pub(super) fn held(&self) -> usize {
        self.asked.values().sum::<usize>() + self.back.values().sum::<usize>()
    }

    /// Hands the turn's asks to the thread (one wake-up).
    pub(super) fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let spare = std::mem::take(
            &mut self
                .shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .spare,
        );
        let batch = std::mem::replace(&mut self.batch, spare);
        // The thread ends only with the plane; should it be gone, the
        // ports stay counted as asked and the plane binds at the call.
        let _ = self.to_bind.send(batch);
    }
}

impl Pair {
    /// Nothing waits on either socket.
    pub(super) fn is_quiet(&self) -> bool {
        let empty = |s: &std::net::UdpSocket| {
            let mut b = [0u8; 1];
            matches!(s.peek_from(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        };
        empty(&self.rtp) && empty(&self.rtcp)
    }
}

impl MediaPlane {
    /// A pair ready on `ip` and untouched, for a call on media thread
    /// `thread` (`None`: bound ahead only).
    pub(super) fn bound_ahead(
        &mut self,
        now: Instant,
        thread: Option<usize>,
        ip: IpAddr,
    ) -> Option<(u16, Socks)> {
        self.ahead.as_ref()?;
        let (mut failed, mut closed) = (Vec::new(), Vec::new());
        let got = loop {
            let ahead = self.ahead.as_mut()?;
            match ahead.take(now, thread, ip, &mut failed, &mut closed) {
                Taken::Pair(port, socks) => break Some((port, socks)),
                Taken::Touched(port) => {
                    self.metrics
                        .rtp_dropped
                        .with_label_values(&["stale_port"])
                        .inc();
                    self.pool.release(now, port);
                }
                Taken::Heard(kept) => {
                    self.metrics
                        .rtp_dropped
                        .with_label_values(&["stale_port"])
                        .inc();
                    self.close_kept(now, kept);
                }
                // Counted by its thread.
                Taken::Stale(port) => self.pool.release(now, port),
                Taken::None => break None,
            }
        };
        for port in failed {
            self.port_busy(now, port);
        }
        for port in closed {
            self.pool.release(now, port);
        }
        got
    }

    /// Asks the binding thread for pairs to replace those calls took
    /// (part of [`MediaPlane::flush`]).
    pub(super) fn bind_ahead(&mut self) {
        let Some(ahead) = self.ahead.as_mut() else {
            return;
        };
        let now = Instant::now();
        let idle = ahead.trim(now);
        for kept in idle.close {
            self.close_kept(now, kept);
        }
        if !idle.release.is_empty() || !idle.busy.is_empty() {
            for port in idle.release {
                self.pool.release(now, port);
            }
            for port in idle.busy {
                self.port_busy(now, port);
            }
            self.gauges();
        }
        let Some(ahead) = self.ahead.as_mut() else {
            return;
        };
        let wanted: Vec<_> = ahead.wanted().collect();
        if wanted.is_empty() {
            return;
        }
        'ips: for (ip, n) in wanted {
            for _ in 0..n {
                let Ok(port) = self.pool.take(now) else {
                    break 'ips;
                };
                ahead.ask(ip, port);
            }
        }
        ahead.flush();
        self.gauges();
    }
}

/// A media thread's way to give an ended call's pairs back (the plane
/// said they are expected, [`Ahead::expect_back`]).
#[derive(Clone)]
pub(super) struct Returns(pub(super) Arc<Mutex<Shared>>);

impl Returns {
    /// Pairs rested and quiet on media thread `thread`, each placed at a
    /// random place among those it keeps on their address (`place` gives
    /// a random number).
    pub(super) fn ready(
        &self,
        thread: usize,
        pairs: impl Iterator<Item = (IpAddr, Ticket)>,
        mut place: impl FnMut() -> u64,
    ) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (ip, t) in pairs {
            let kept = s.kept.entry((thread, ip)).or_default();
            let at = (place() % (kept.len() as u64 + 1)) as usize;
            // O(1): to the back, then swapped with a random place.
            kept.push_back(t);
            let last = kept.len() - 1;
            kept.swap(at, last);
        }
    }

    /// Ports of kept pairs a media thread closed after the plane let
    /// them go: to the pool.
    pub(super) fn let_go(&self, port: u16) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.let_go.push(port);
    }

    /// Ports whose pairs were held (expected back, resting or kept) but
    /// closed: no longer held, to the pool.
    pub(super) fn gone(&self, ip: IpAddr, ports: impl IntoIterator<Item = u16>) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.closed.extend(ports.into_iter().map(|p| (ip, p)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ended call's pairs come back only within the descriptor budget
    /// (calls first) and the per-address cap; those expected count as held.
    fn ahead() -> Ahead {
        Ahead {
            to_bind: channel().0,
            shared: Arc::default(),
            asked: HashMap::new(),
            back: HashMap::new(),
            batch: Vec::new(),
            budget: usize::MAX,
            demand: 0,
            taken: 0,
            window: Instant::now(),
            rng: 1,
            keep: true,
            trim_at: Instant::now(),
            trim: TRIM,
        }
    }

    fn ticket(port: u16, state: u8) -> Ticket {
        Ticket {
            port,
            pid: u32::from(port),
            state: Arc::new(AtomicU8::new(state)),
            rtp: Arc::new({
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.set_nonblocking(true).expect("nonblocking");
                s
            }),
        }
    }

    /// A call takes a pair its own media thread keeps, once, and never one
    /// that thread heard anything on after its rest (stale: closed with
    /// its ticket), nor one with a datagram waiting that the thread had not
    /// read yet (sent before the take: back to its thread to close); a
    /// supervisor's port or another thread's call never takes it.
    #[test]
    fn a_kept_pair_serves_its_threads_next_call_unless_it_was_heard() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let mut ahead = ahead();
        ahead.back.insert(ip, 3);
        let early = ticket(1002, READY);
        let to = early.rtp.local_addr().expect("addr");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
        peer.send_to(b"before", to).expect("send");
        let mut b = [0u8; 8];
        early.rtp.peek_from(&mut b).expect("queued");
        {
            let mut s = ahead.shared.lock().unwrap_or_else(PoisonError::into_inner);
            let kept = s.kept.entry((1, ip)).or_default();
            kept.push_back(ticket(1000, super::super::kept::STALE));
            kept.push_back(early);
            kept.push_back(ticket(1004, READY));
        }
        let (mut failed, mut closed) = (Vec::new(), Vec::new());
        let now = Instant::now();
        let mut take =
            |ahead: &mut Ahead, thread| ahead.take(now, thread, ip, &mut failed, &mut closed);
        for thread in [None, Some(0)] {
            assert!(matches!(take(&mut ahead, thread), Taken::None));
        }
        assert!(matches!(take(&mut ahead, Some(1)), Taken::Stale(1000)));
        let Taken::Heard(k) = take(&mut ahead, Some(1)) else {
            panic!("the datagram sent before the take is seen");
        };
        assert_eq!((k.port, k.state.load(Ordering::Acquire)), (1002, TAKEN));
        let Taken::Pair(1004, Socks::Kept(k)) = take(&mut ahead, Some(1)) else {
            panic!("the quiet kept pair is served");
        };
        assert_eq!((k.thread, k.pid, k.port), (1, 1004, 1004));
        assert_eq!(
            k.state.load(Ordering::Acquire),
            TAKEN,
            "its thread leaves it to the call"
        );
        assert!(matches!(take(&mut ahead, Some(1)), Taken::None));
        assert_eq!(ahead.held(), 0, "none is held any more");
        assert!(failed.is_empty() && closed.is_empty());
    }

    /// After a rush, the pairs kept for it are let go a batch at a time
    /// down to what calls take now, for their threads to close; those
    /// bound ahead stay, and ports that failed, closed elsewhere or were
    /// closed by a thread go back too, the node idle or not.
    #[test]
    fn pairs_held_beyond_the_demand_are_let_go_once_calls_take_fewer() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let pair = || Pair {
            rtp: std::net::UdpSocket::bind((ip, 0)).expect("bind"),
            rtcp: std::net::UdpSocket::bind((ip, 0)).expect("bind"),
        };
        let trim = 8;
        let mut ahead = Ahead { trim, ..ahead() };
        let t0 = Instant::now();
        // Calls took 1,000 pairs in the last second: everything is kept.
        ahead.window = t0 - std::time::Duration::from_millis(1500);
        ahead.taken = 1000;
        let kept_n = 100 + trim as u16;
        {
            let mut s = ahead.shared.lock().unwrap_or_else(PoisonError::into_inner);
            let ready = s.ready.entry(ip).or_default();
            for port in 0..3 {
                ready.push_back((port, pair()));
            }
            let kept = s.kept.entry((1, ip)).or_default();
            for port in 1000..1000 + kept_n {
                kept.push_back(ticket(port, READY));
            }
            // One its thread heard and closed.
            s.kept.get_mut(&(1, ip)).unwrap()[0]
                .state
                .store(super::super::kept::STALE, Ordering::Release);
            s.failed.push((ip, 7));
            s.closed.push((ip, 9));
            s.let_go.push(11);
        }
        ahead.asked.insert(ip, 3 + 1);
        ahead.back.insert(ip, kept_n as usize + 1);
        let first = ahead.trim(t0);
        assert_eq!(
            (first.busy, first.release),
            (vec![7], vec![9, 11, 1000]),
            "the stale one closed at once"
        );
        assert!(first.close.is_empty());
        let held = 3 + kept_n as usize - 1;
        assert_eq!(ahead.held(), held, "within 1.5 s of demand");
        // No call for two seconds more: the excess over the slack goes, at
        // most a batch each time.
        let mut t = t0 + std::time::Duration::from_secs(2);
        let second = ahead.trim(t);
        assert_eq!(second.close.len(), trim, "the stale one skipped");
        assert!(second.close.iter().all(|k| k.port != 1000));
        assert!(
            second
                .close
                .iter()
                .all(|k| k.state.load(Ordering::Acquire) == TAKEN)
        );
        assert!(ahead.trim(t).close.is_empty(), "a batch per TRIM_EVERY");
        let mut let_go = trim;
        for _ in 0..100 {
            t += TRIM_EVERY;
            let next = ahead.trim(t);
            let n = next.close.len();
            assert!(n <= trim, "at most a batch");
            let_go += n;
            if n == 0 {
                break;
            }
        }
        assert_eq!(let_go, held - TARGET, "down to the slack");
        assert_eq!(ahead.held(), TARGET);
        let s = ahead.shared.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(s.ready[&ip].len(), 3, "the pairs bound ahead stay");
    }

    #[test]
    fn pairs_come_back_within_the_budget_calls_first() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let mut ahead = Ahead {
            budget: 10,
            ..ahead()
        };
        let now = ahead.window;
        ahead.asked.insert(ip, 0);
        assert!(ahead.expect_back(now, ip, 4));
        assert_eq!(ahead.held(), 2);
        // Pairs coming back are no pairs ready: binding ahead goes on.
        assert_eq!(ahead.wanted().collect::<Vec<_>>(), [(ip, TARGET)]);
        assert!(
            ahead.expect_back(now, ip, 6),
            "2 held + 2 + 6 in calls = 10"
        );
        assert!(
            !ahead.expect_back(now, ip, 5),
            "4 held + 2 + 5 in calls > 10"
        );
        assert_eq!(ahead.held(), 4, "refused ones are not counted");
        ahead.budget = usize::MAX;
        ahead.asked.insert(ip, MAX_HELD - 1);
        ahead.demand = MAX_HELD;
        assert!(!ahead.expect_back(now, ip, 0), "the per-address cap");
        let other = IpAddr::from([127, 0, 0, 2]);
        assert!(ahead.expect_back(now, other, 0));
        // No call took a pair for two seconds: none more comes back
        // beyond the pairs bound ahead.
        ahead.asked.clear();
        ahead.asked.insert(ip, TARGET);
        assert!(!ahead.expect_back(now + std::time::Duration::from_secs(3), ip, 0));
        assert_eq!(ahead.demand, 0);
        // A relay latching on the first packet keeps none.
        ahead.asked.clear();
        ahead.demand = MAX_HELD;
        ahead.keep = false;
        assert!(!ahead.expect_back(ahead.window, ip, 0));
    }
}
