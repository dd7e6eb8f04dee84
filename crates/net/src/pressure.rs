//! The node's own lag, the signal of overload: how long SIP messages wait
//! before the engine reads them. A message waits in two places: the
//! kernel's socket buffer (up to 4 MiB, thousands of INVITEs) and the
//! engine's input queue. A count of queued inputs sees only the second,
//! and past capacity the backlog builds in the first, so the readers
//! report how long their socket has been without a moment empty, and each
//! datagram carries the time it was read.
//!
//! Overload is declared when the lag passes
//! `sip.overload_lag_milliseconds` (50 ms by default: at 6,000 calls/s
//! offered the node reads ~50,000 messages a second, and a 4 MiB socket
//! buffer, about 2,500 of them with the kernel's overhead, fills in ~50 ms;
//! the limit must come before that, or the kernel drops what the node
//! would have answered) and lifted when it falls under half of it: new
//! INVITEs then get `503` with `Retry-After` (stateless, a fraction of a
//! call's cost) while everything else —
//! registrations, in-dialog requests, responses — goes on, so calls
//! already admitted complete and the backlog drains. SIP's own timer T1
//! (500 ms) bounds how long a message may wait before its sender repeats
//! it, but the socket buffer fills sooner at high rates: shedding starts
//! at 50 ms, so admitted calls are answered before anyone retransmits and
//! before the kernel drops anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use centralino_b2bua::Engine;
use tracing::warn;

use crate::metrics::NetMetrics;
use crate::sip::OVERLOAD_BACKLOG;

/// What one UDP reader tells the engine task about its socket.
#[derive(Debug)]
pub(crate) struct ReaderGauge {
    /// When the reader last found the socket empty, or was woken after
    /// it had (microseconds since [`Pressure`]'s epoch).
    empty_at: AtomicU64,
    /// The reader's last read found the socket empty and nothing came
    /// since: no backlog in the kernel.
    idle: AtomicBool,
}

/// The lag of the node's SIP input, shared by the readers (writers) and
/// the engine task (reader).
#[derive(Debug)]
pub(crate) struct Pressure {
    epoch: Instant,
    readers: std::sync::Mutex<Vec<Arc<ReaderGauge>>>,
    /// Datagrams the readers handed to the engine's queue that its task
    /// has not taken yet: the queue's depth in datagrams (a reader's batch
    /// is one input), bounded by [`MAX_QUEUED_DATAGRAMS`].
    queued: AtomicUsize,
}

/// Datagrams the readers may have in the engine's queue; a reader with a
/// batch that would pass it waits, and what comes meanwhile waits in the
/// kernel's buffer (the lag the overload signal sees).
pub(crate) const MAX_QUEUED_DATAGRAMS: usize = 65_536;

impl Pressure {
    pub(crate) fn new(epoch: Instant) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            readers: std::sync::Mutex::new(Vec::new()),
            queued: AtomicUsize::new(0),
        })
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// A gauge for a new reader, idle.
    pub(crate) fn reader(self: &Arc<Self>, now: Instant) -> Reader {
        let gauge = Arc::new(ReaderGauge {
            empty_at: AtomicU64::new(self.micros(now)),
            idle: AtomicBool::new(true),
        });
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(gauge.clone());
        Reader {
            pressure: self.clone(),
            gauge,
        }
    }

    /// The engine's task took a batch of `n` datagrams off its queue.
    pub(crate) fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Datagrams in the engine's queue.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// How long the oldest datagram still in a socket buffer may have
    /// waited: the longest time any reader's socket has gone without
    /// being empty.
    pub(crate) fn kernel_wait(&self, now: Instant) -> Duration {
        let now = self.micros(now);
        let readers = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = readers
            .iter()
            .filter(|g| !g.idle.load(Ordering::Relaxed))
            .map(|g| g.empty_at.load(Ordering::Relaxed))
            .min();
        oldest.map_or(Duration::ZERO, |t| {
            Duration::from_micros(now.saturating_sub(t))
        })
    }
}

/// One UDP reader's handle on its gauge.
#[derive(Debug)]
pub(crate) struct Reader {
    pressure: Arc<Pressure>,
    gauge: Arc<ReaderGauge>,
}

impl Reader {
    /// The socket turned readable: data arrived since it was last seen
    /// empty. An idle socket's wait starts now (its data is new).
    pub(crate) fn woken(&self, now: Instant) {
        if self.gauge.idle.swap(false, Ordering::Relaxed) {
            self.gauge
                .empty_at
                .store(self.pressure.micros(now), Ordering::Relaxed);
        }
    }

    /// Room for `n` more datagrams in the engine's queue, counted as
    /// queued once this returns `true`; `false` (nothing counted) while
    /// the queue holds [`MAX_QUEUED_DATAGRAMS`].
    pub(crate) fn reserve(&self, n: usize) -> bool {
        self.pressure
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q + n <= MAX_QUEUED_DATAGRAMS).then_some(q + n)
            })
            .is_ok()
    }

    /// A read found the socket empty: no backlog in the kernel.
    pub(crate) fn empty(&self, now: Instant) {
        self.gauge
            .empty_at
            .store(self.pressure.micros(now), Ordering::Relaxed);
        self.gauge.idle.store(true, Ordering::Relaxed);
    }
}

/// Overload with hysteresis, from the lag observed at each turn of the
/// engine task.
#[derive(Debug)]
pub(crate) struct Overload {
    on: bool,
    /// Lag past which new calls are refused.
    enter: Duration,
    /// Lag under which they are taken again (half of `enter`, so one
    /// slow turn near the limit does not flip it back and forth).
    leave: Duration,
}

impl Overload {
    pub(crate) fn new(enter: Duration) -> Self {
        Self {
            on: false,
            enter,
            leave: enter / 2,
        }
    }

    /// The lag now (the longer of the kernel's and the input queue's
    /// wait); `Some(state)` when the state changes.
    pub(crate) fn observe(&mut self, lag: Duration) -> Option<bool> {
        let next = if self.on {
            lag > self.leave
        } else {
            lag > self.enter
        };
        (next != self.on).then(|| {
            self.on = next;
            next
        })
    }

    pub(crate) fn on(&self) -> bool {
        self.on
    }
}

mod diag;

/// Counts, every second, what the kernel dropped on the SIP UDP sockets
/// bound to `ports` into `centralino_sip_udp_drops_total`. Read on a
/// blocking thread, never the engine's.
pub(crate) async fn watch_drops(ports: Vec<u16>, metrics: NetMetrics) {
    let ports = Arc::new(ports);
    let mut before = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let p = ports.clone();
        let Ok(Some(now)) = tokio::task::spawn_blocking(move || udp_drops(&p)).await else {
            continue;
        };
        if let Some(before) = before {
            let new = now.saturating_sub(before);
            if new > 0 {
                warn!(
                    dropped = new,
                    "the kernel dropped SIP datagrams: receive buffer full"
                );
                metrics.sip_udp_drops.inc_by(new);
            }
        }
        before = Some(now);
    }
}

/// Datagrams dropped by the kernel on sockets bound to `ports` (its
/// receive buffer was full), the counter `SO_RXQ_OVFL` reports per
/// datagram: asked of `sock_diag` for these ports only, or where that is
/// refused (a kernel without port filters, a sandbox) read from
/// `/proc/net/udp`, whose cost grows with every socket of the namespace.
pub(crate) fn udp_drops(ports: &[u16]) -> Option<u64> {
    match diag::udp_drops(ports) {
        Ok(n) => Some(n),
        Err(e) => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                warn!(error = %e, "sock_diag refused: SIP drops read from /proc/net/udp");
            }
            udp_drops_in_proc(ports)
        }
    }
}

/// The `drops` column of `/proc/net/udp` and `/proc/net/udp6` summed over
/// the sockets bound to `ports`; `None` where procfs is not there.
pub(crate) fn udp_drops_in_proc(ports: &[u16]) -> Option<u64> {
    let mut seen = false;
    let mut total = 0u64;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        seen = true;
        total += drops_in(&text, ports);
    }
    seen.then_some(total)
}

/// The sum of the `drops` column over the lines of a `/proc/net/udp`
/// table whose local port is one of `ports`.
fn drops_in(table: &str, ports: &[u16]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            if !ports.contains(&port) {
                return None;
            }
            fields.last()?.parse::<u64>().ok()
        })
        .sum()
}

/// Overload beginning again within this time is not logged again.
const LAG_LOG_EVERY: Duration = Duration::from_secs(10);
/// The engine task's view of its own lag (see `pressure`), and the
/// overload it declares from it.
pub(crate) struct InputLag {
    pub(crate) pressure: Arc<Pressure>,
    pub(crate) overload: Overload,
    /// The longest a datagram of the last batch waited in the input queue.
    pub(crate) queued: Duration,
    /// When overload was last logged, and how often it began since.
    pub(crate) logged: Option<Instant>,
    pub(crate) episodes: u64,
}

impl InputLag {
    /// A turn of the engine task begins: the lag (the longer of the last
    /// batch's queue wait and the sockets' backlog) is observed, and the
    /// engine told when overload starts or ends. A deep input queue is
    /// overload too, whatever its age.
    pub(crate) fn turn(
        &mut self,
        engine: &mut Engine,
        now: Instant,
        queued: usize,
        metrics: &NetMetrics,
    ) {
        let lag = std::mem::take(&mut self.queued).max(self.pressure.kernel_wait(now));
        metrics.sip_input_lag.observe(lag.as_secs_f64());
        if self.overload.observe(lag) == Some(true) {
            self.episodes += 1;
            // Once per episode of several flips, not at every flip.
            if self
                .logged
                .is_none_or(|t| now.duration_since(t) >= LAG_LOG_EVERY)
            {
                warn!(
                    lag_ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
                    times = self.episodes,
                    "SIP input lagging: new calls refused with 503 until it catches up"
                );
                self.logged = Some(now);
                self.episodes = 0;
            }
        }
        // Inputs and datagrams (a reader's batch is one input: counted
        // once more than its datagrams, at most 1/16 over).
        let deep = queued + self.pressure.queued() > OVERLOAD_BACKLOG;
        let overloaded = self.overload.on() || deep;
        metrics.sip_overloaded.set(i64::from(overloaded));
        engine.set_overloaded(overloaded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The readers keep at most `MAX_QUEUED_DATAGRAMS` datagrams in the
    /// engine's queue; what the engine takes makes room again.
    #[test]
    fn the_queue_holds_a_bounded_number_of_datagrams() {
        let t0 = Instant::now();
        let p = Pressure::new(t0);
        let (a, b) = (p.reader(t0), p.reader(t0));
        for _ in 0..MAX_QUEUED_DATAGRAMS / 16 {
            assert!(a.reserve(16));
        }
        assert_eq!(p.queued(), MAX_QUEUED_DATAGRAMS);
        assert!(!b.reserve(1), "full, whichever reader asks");
        assert_eq!(p.queued(), MAX_QUEUED_DATAGRAMS, "a refusal counts nothing");
        p.taken(16);
        assert!(!b.reserve(17));
        assert!(b.reserve(16));
        assert_eq!(p.queued(), MAX_QUEUED_DATAGRAMS);
    }

    #[test]
    fn a_socket_never_empty_since_its_wake_up_shows_its_wait() {
        let t0 = Instant::now();
        let p = Pressure::new(t0);
        let busy = p.reader(t0);
        let quiet = p.reader(t0);
        // Idle for a minute, then data: the wait starts at the wake-up,
        // not at the last empty read.
        let woke = t0 + Duration::from_secs(60);
        busy.woken(woke);
        assert_eq!(p.kernel_wait(woke), Duration::ZERO);
        assert_eq!(
            p.kernel_wait(woke + Duration::from_millis(150)),
            Duration::from_millis(150),
            "read from but never found empty"
        );
        // An idle socket adds nothing; found empty, the wait is over.
        quiet.empty(woke);
        busy.empty(woke + Duration::from_millis(200));
        assert_eq!(p.kernel_wait(woke + Duration::from_secs(1)), Duration::ZERO);
        // Woken again while not idle: the older start stands.
        busy.woken(woke + Duration::from_secs(2));
        busy.woken(woke + Duration::from_secs(3));
        assert_eq!(
            p.kernel_wait(woke + Duration::from_secs(4)),
            Duration::from_secs(2)
        );
    }

    /// The configured lag starts overload; half of it ends it.
    #[test]
    fn overload_starts_past_the_configured_lag_and_ends_under_half() {
        for ms in [50, 400] {
            let enter = Duration::from_millis(ms);
            let leave = enter / 2;
            let mut o = Overload::new(enter);
            assert_eq!(o.observe(enter), None, "not past it");
            assert_eq!(o.observe(enter + Duration::from_millis(1)), Some(true));
            assert_eq!(
                o.observe(leave + Duration::from_millis(1)),
                None,
                "still over half"
            );
            assert!(o.on());
            assert_eq!(o.observe(leave - Duration::from_millis(1)), Some(false));
            assert_eq!(o.observe(enter), None);
        }
    }

    #[test]
    fn drops_are_summed_over_our_ports_only() {
        // Two sockets on port 5060 (0x13C4, IPv4) and one elsewhere.
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 17
  2: 00000000:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 3
  3: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 99
  4: garbage";
        assert_eq!(drops_in(table, &[5060]), 20);
        assert_eq!(drops_in(table, &[5061]), 0);
    }
}
