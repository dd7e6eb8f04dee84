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
//! An ended call's pairs come back here bound, connected to themselves
//! while they rest (nothing from anyone else reaches them), and serve
//! again after `PORT_QUARANTINE` (ARCHITECTURE "RTP sockets bound a few
//! ahead, and a call's pairs kept").

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::debug;

use std::time::Instant;

use super::{MediaPlane, PORT_QUARANTINE, Pair, bind_pair};

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
/// within seconds, a thousand descriptors at a time for the binding
/// thread to close; the engine's thread only moves them.
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

#[derive(Default)]
pub(super) struct Shared {
    /// Pairs bound ahead in the order bound, taken oldest first so none
    /// waits for long; ended calls' pairs after their rest among them at
    /// random places (`true`), still connected to themselves until a call
    /// takes them.
    pub(super) ready: HashMap<IpAddr, VecDeque<(u16, Pair, bool)>>,
    /// Ports another process holds: back to the pool.
    pub(super) failed: Vec<(IpAddr, u16)>,
    /// Pairs back from ended calls, in the order they came back, resting
    /// [`PORT_QUARANTINE`] before they join `ready`.
    pub(super) resting: VecDeque<Resting>,
    /// Ports the plane expected back whose sockets a media thread closed
    /// instead (a browser's leg was on them): back to the pool.
    pub(super) closed: Vec<(IpAddr, u16)>,
    /// A batch the thread emptied, for the plane's next: no allocation
    /// per batch (one of this size made glibc consolidate its free lists
    /// on the engine's thread).
    spare: Vec<(IpAddr, u16)>,
    /// Held pairs the plane let go ([`Ahead::trim`]), for the thread to
    /// close.
    to_close: Vec<Pair>,
}

/// A pair back from its call, resting.
pub(super) struct Resting {
    pub(super) since: Instant,
    pub(super) ip: IpAddr,
    pub(super) port: u16,
    pub(super) pair: Pair,
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
    /// Where a rested pair goes among the ready ones (xorshift).
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
}

/// What [`Ahead::take`] found.
pub(super) enum Taken {
    /// A pair, and how many datagrams that reached it after its last call
    /// were dropped.
    Pair(u16, Pair, u32),
    /// Bound ahead and something was sent to it, or back from a call and
    /// still receiving when taken: closed, the port to rest.
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
                        s.ready
                            .entry(ip)
                            .or_default()
                            .push_back((port, pair, false));
                    }
                    s.failed.extend(failed);
                    if batch.capacity() > 0 {
                        s.spare = batch;
                    }
                    // Pairs the plane no longer holds close here, off the
                    // engine's thread, out of the lock.
                    let closing = std::mem::take(&mut s.to_close);
                    drop(s);
                    drop(closing);
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

    /// A pair bound ahead on `ip`, if one is ready; `failed` gets the
    /// ports the thread could not bind, `closed` those of pairs that did
    /// not come back from their call (both to release).
    pub(super) fn take(
        &mut self,
        now: Instant,
        ip: IpAddr,
        failed: &mut Vec<u16>,
        closed: &mut Vec<u16>,
    ) -> Taken {
        let (got, lost, gone) = {
            let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            let s = &mut *s;
            // Rested long enough: late packets of their last call had
            // their time (what came is read and dropped when a call takes
            // the pair). Placed at random among the ready ones, so a
            // peer of the last call cannot tell when its port serves
            // again; they stay connected to themselves until then.
            while let Some(r) = s.resting.front()
                && now.saturating_duration_since(r.since) >= PORT_QUARANTINE
                && let Some(r) = s.resting.pop_front()
            {
                let ready = s.ready.entry(r.ip).or_default();
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                let at = (self.rng % (ready.len() as u64 + 1)) as usize;
                // O(1): to the back, then swapped with a random place.
                ready.push_back((r.port, r.pair, true));
                let last = ready.len() - 1;
                ready.swap(at, last);
                *self.asked.entry(r.ip).or_default() += 1;
                Self::less(&mut self.back, r.ip);
            }
            let lost = std::mem::take(&mut s.failed);
            let gone = std::mem::take(&mut s.closed);
            (
                s.ready.get_mut(&ip).and_then(VecDeque::pop_front),
                lost,
                gone,
            )
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
        if got.is_some() {
            self.done(ip);
            self.taken += 1;
        }
        self.roll(now);
        match got {
            Some((port, pair, false)) if pair.is_quiet() => Taken::Pair(port, pair, 0),
            // Back from a call: open to every sender again, then whatever
            // reached it before it was connected to itself (its last
            // call's peer still sending) is read and dropped, never by
            // the next call. Still not quiet after that: someone is
            // sending to it right now, and it is not used.
            Some((port, pair, true)) => {
                let open = [&pair.rtp, &pair.rtcp]
                    .iter()
                    .all(|k| rustix::net::connect_unspec(k).is_ok());
                match pair.drain() {
                    // Both reads ended empty just now: quiet (asking
                    // again was two more system calls on the engine's
                    // thread per pair, for the same answer).
                    Some(0) if open => Taken::Pair(port, pair, 0),
                    Some(late) if open && pair.is_quiet() => Taken::Pair(port, pair, late),
                    _ => Taken::Stale(port),
                }
            }
            Some((port, ..)) => Taken::Stale(port),
            None => Taken::None,
        }
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
    /// pairs bound ahead on each address aside), resting ones first, at
    /// most [`TRIM`]; their sockets close on the binding thread. Gives the
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
        for (ip, port) in std::mem::take(&mut s.failed) {
            Self::less(&mut self.asked, ip);
            out.busy.push(port);
        }
        for (ip, port) in std::mem::take(&mut s.closed) {
            Self::less(&mut self.back, ip);
            out.release.push(port);
        }
        let bound = TARGET * self.asked.len().max(1) + self.demand * 3 / 2;
        let mut excess = self.held().saturating_sub(bound).min(self.trim);
        let mut closing = Vec::new();
        while excess > 0
            && let Some(r) = s.resting.pop_front()
        {
            Self::less(&mut self.back, r.ip);
            out.release.push(r.port);
            closing.push(r.pair);
            excess -= 1;
        }
        for (&ip, ready) in &mut s.ready {
            // Those bound ahead stay: they are the slack, not the excess.
            if excess == 0 || !ready.iter().any(|&(_, _, kept)| kept) {
                continue;
            }
            // Rotated in place: the order and the buffer kept (no
            // allocation on the engine's thread).
            for _ in 0..ready.len() {
                let Some((port, pair, kept)) = ready.pop_front() else {
                    break;
                };
                if kept && excess > 0 {
                    Self::less(&mut self.asked, ip);
                    out.release.push(port);
                    closing.push(pair);
                    excess -= 1;
                } else {
                    ready.push_back((port, pair, kept));
                }
            }
        }
        if !closing.is_empty() {
            debug!(
                pairs = closing.len(),
                "RTP pairs held beyond the calls' demand let go"
            );
            s.to_close.append(&mut closing);
            // An empty batch wakes the thread to close them; should it be
            // gone, they close here (their ports go back to the pool).
            if self.to_bind.send(Vec::new()).is_err() {
                closing = std::mem::take(&mut s.to_close);
            }
            drop(s);
            drop(closing);
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

    /// Reads and drops what waits on both sockets (a few datagrams at
    /// most: they rested connected to themselves); `None` if a read
    /// failed otherwise or more kept coming.
    fn drain(&self) -> Option<u32> {
        let mut b = [0u8; 1];
        let mut n = 0;
        for s in [&self.rtp, &self.rtcp] {
            for i in 0.. {
                match s.recv_from(&mut b) {
                    Ok(_) if i < 16 => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    _ => return None,
                }
            }
        }
        Some(n)
    }
}

impl MediaPlane {
    /// A pair bound ahead on `ip`, if one is ready and untouched.
    pub(super) fn bound_ahead(&mut self, now: Instant, ip: IpAddr) -> Option<(u16, Pair)> {
        let ahead = self.ahead.as_mut()?;
        let (mut failed, mut closed) = (Vec::new(), Vec::new());
        let got = loop {
            match ahead.take(now, ip, &mut failed, &mut closed) {
                Taken::Pair(port, pair, late) => {
                    if late > 0 {
                        self.metrics
                            .rtp_dropped
                            .with_label_values(&["after_call"])
                            .inc_by(u64::from(late));
                    }
                    break Some((port, pair));
                }
                Taken::Stale(port) => {
                    self.metrics
                        .rtp_dropped
                        .with_label_values(&["stale_port"])
                        .inc();
                    self.pool.release(now, port);
                }
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
    /// Takes back a call's sockets (A-RTP, A-RTCP, B-RTP, B-RTCP, already
    /// out of the thread's epoll set), bound on `ip` at `ports` (A, B) as
    /// the plane reserved them; with `reusable` false (a browser's leg was
    /// on them) they close and only their ports go back.
    pub(super) fn give(
        &self,
        now: Instant,
        (ip, ports): (IpAddr, [u16; 2]),
        socks: [std::net::UdpSocket; 4],
        reusable: bool,
    ) {
        // Connected to itself while it rests and waits, a socket is
        // delivered nothing from anyone else (the kernel matches a
        // connected UDP socket on the sender's address): no stranger can
        // fill its buffer, however many are held. Even an empty socket
        // takes one datagram of any size, so thousands of open ones would
        // have let a sprayer hold gigabytes of the host's UDP memory.
        // Each socket's own address is the one the plane bound it on
        // (`bind_pair`: the RTP port, RTCP above it), not asked again.
        let own_ip = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        let own = [ports[0], ports[0] + 1, ports[1], ports[1] + 1];
        let connected = reusable
            && socks
                .iter()
                .zip(own)
                .all(|(k, port)| k.connect(std::net::SocketAddr::new(own_ip, port)).is_ok());
        if !connected {
            drop(socks);
            return self.gone(ip, ports);
        }
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let [a_rtp, a_rtcp, b_rtp, b_rtcp] = socks;
        for (port, rtp, rtcp) in [(ports[0], a_rtp, a_rtcp), (ports[1], b_rtp, b_rtcp)] {
            s.resting.push_back(Resting {
                since: now,
                ip,
                port,
                pair: Pair { rtp, rtcp },
            });
        }
    }

    /// Ports whose pairs were expected back but closed: to the pool.
    pub(super) fn gone(&self, ip: IpAddr, ports: [u16; 2]) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.closed.extend(ports.map(|p| (ip, p)));
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

    /// A kept pair is opened again when taken; what its last call's peer
    /// sent before it was connected to itself is read, dropped and
    /// counted, and a pair that had nothing waiting is taken at once.
    #[test]
    fn a_kept_pair_is_opened_and_emptied_when_a_call_takes_it() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let peer = std::net::UdpSocket::bind((ip, 0)).expect("peer");
        let mut ahead = ahead();
        let mut kept = Vec::new();
        for late in [0usize, 1] {
            let (port, pair) = (0..64)
                .find_map(|_| {
                    let p = std::net::UdpSocket::bind((ip, 0)).ok()?;
                    let port = p.local_addr().ok()?.port();
                    drop(p);
                    (port % 2 == 0 && port < u16::MAX)
                        .then(|| bind_pair(ip, port).ok().map(|pair| (port, pair)))
                        .flatten()
                })
                .expect("a free pair");
            for _ in 0..late {
                peer.send_to(b"late", (ip, port)).expect("send");
            }
            // Queued before the socket is connected to itself (a datagram
            // still on its way after that would be refused).
            let until = Instant::now() + std::time::Duration::from_secs(5);
            while late > 0 && pair.is_quiet() {
                assert!(Instant::now() < until, "the late datagram arrives");
                std::thread::yield_now();
            }
            // What the media thread does at the call's end.
            for (k, p) in [(&pair.rtp, port), (&pair.rtcp, port + 1)] {
                k.connect((ip, p)).expect("connect to itself");
            }
            kept.push((port, late));
            let mut s = ahead.shared.lock().unwrap_or_else(PoisonError::into_inner);
            s.ready.entry(ip).or_default().push_back((port, pair, true));
        }
        for (port, late) in kept {
            let (mut failed, mut closed) = (Vec::new(), Vec::new());
            let Taken::Pair(got, pair, dropped) =
                ahead.take(Instant::now(), ip, &mut failed, &mut closed)
            else {
                panic!("the kept pair on {port} is served");
            };
            assert_eq!((got, dropped as usize), (port, late));
            assert!(pair.rtp.peer_addr().is_err(), "open to every sender again");
            assert!(pair.is_quiet(), "nothing of before waits for the call");
        }
    }

    /// After a rush, the pairs kept for it are let go a batch at a time
    /// down to what calls take now, resting ones first, for the binding
    /// thread to close; those bound ahead stay, and ports that failed or
    /// closed elsewhere go back too, the node idle or not.
    #[test]
    fn pairs_held_beyond_the_demand_are_let_go_once_calls_take_fewer() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let pair = || Pair {
            rtp: std::net::UdpSocket::bind((ip, 0)).expect("bind"),
            rtcp: std::net::UdpSocket::bind((ip, 0)).expect("bind"),
        };
        // A small batch: the test's sockets stay under a 1,024 limit.
        let trim = 8;
        // The binding thread's side: woken to close what is let go.
        let (to_bind, woken) = channel();
        let mut ahead = Ahead {
            trim,
            to_bind,
            ..ahead()
        };
        let t0 = Instant::now();
        // Calls took 1,000 pairs in the last second: everything is kept.
        ahead.window = t0 - std::time::Duration::from_millis(1500);
        ahead.taken = 1000;
        {
            let mut s = ahead.shared.lock().unwrap_or_else(PoisonError::into_inner);
            let ready = s.ready.entry(ip).or_default();
            for port in 0..3 {
                ready.push_back((port, pair(), false));
            }
            for port in 100..100 + TARGET as u16 {
                ready.push_back((port, pair(), true));
            }
            for port in 1000..1100 + trim as u16 {
                s.resting.push_back(Resting {
                    since: t0,
                    ip,
                    port,
                    pair: pair(),
                });
            }
            s.failed.push((ip, 7));
            s.closed.push((ip, 9));
        }
        ahead.asked.insert(ip, 3 + TARGET + 1);
        ahead.back.insert(ip, trim + 100 + 1);
        let first = ahead.trim(t0);
        assert_eq!((first.busy, first.release), (vec![7], vec![9]));
        assert_eq!(
            ahead.held(),
            3 + TARGET + trim + 100,
            "within 1.5 s of demand"
        );
        // No call for two seconds more: the excess over the slack goes, at
        // most a batch each time, resting pairs first.
        let mut t = t0 + std::time::Duration::from_secs(2);
        let second = ahead.trim(t);
        assert_eq!(second.release.len(), trim);
        assert!(
            second
                .release
                .iter()
                .all(|p| (1000..1100 + trim as u16).contains(p))
        );
        assert!(ahead.trim(t).release.is_empty(), "a batch per TRIM_EVERY");
        let mut released = trim;
        for _ in 0..100 {
            t += TRIM_EVERY;
            let next = ahead.trim(t).release.len();
            assert!(next <= trim, "at most a batch");
            released += next;
            if next == 0 {
                break;
            }
        }
        assert_eq!(released, trim + 100 + 3, "down to the slack");
        assert_eq!(ahead.held(), TARGET);
        let wakes: Vec<_> = woken.try_iter().collect();
        assert!(
            !wakes.is_empty() && wakes.iter().all(Vec::is_empty),
            "the thread is woken with nothing to bind: {wakes:?}"
        );
        let s = ahead.shared.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(s.resting.is_empty());
        assert_eq!(
            s.to_close.len(),
            trim + 100 + 3,
            "closed by the binding thread"
        );
        let ready = &s.ready[&ip];
        assert_eq!(ready.len(), TARGET);
        assert_eq!(
            ready.iter().filter(|(_, _, kept)| !kept).count(),
            3,
            "the pairs bound ahead stay"
        );
        drop(s);
        t += TRIM_EVERY;
        assert!(ahead.trim(t).release.is_empty());
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
