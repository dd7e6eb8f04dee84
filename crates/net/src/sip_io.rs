//! SIP over UDP on every core (issue 16). Each UDP listen address is a
//! group of sockets bound with `SO_REUSEPORT`, one per I/O thread. The
//! kernel spreads the datagrams over the group by a hash of their
//! addresses, so one peer's datagrams always reach the same thread, in
//! the order they came. Each thread reads its socket and frames what it
//! reads through the guard (`parse_datagram`: the strict grammar and its
//! caps) before the engine sees it, so reading and parsing run on every
//! core while the engine keeps all state — calls, dialogs, transactions,
//! the registrar and the router, whose board has one writer — on its one
//! thread, and takes messages, not bytes.
//!
//! Sending leaves the engine's thread too: on loopback or a busy host a
//! `sendto` costs the sender the whole delivery (a quarter of the
//! engine's time under load, by `perf`), so the engine hands each
//! datagram to a sending thread (`sip-out-N`, one per socket of the
//! group, chosen by the peer's address so one peer's messages keep
//! their order) and goes on; a sending thread busy when more come takes
//! them without being woken.
//!
//! A port shared with `SO_REUSEPORT` is shared with any socket of the
//! same user that asks for it, which would let a second node started on
//! the same address take half the traffic instead of failing. So the
//! address is first bound alone: taken, the node refuses to start, as a
//! node without the option would; free, the group binds it at once.

use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use centralino_config::MAX_IO_THREADS;
use centralino_sip::Transport;
use centralino_sip::guard::{self, Framed, Limits};
use centralino_sip::txn::Flow;
use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::NetError;
use crate::handle::{Datagram, EngineInput};
use crate::metrics::NetMetrics;
use crate::pressure::Reader;

/// Asked of the kernel for each socket's buffers (it caps them at
/// `net.core.rmem_max` / `wmem_max`).
pub(crate) const UDP_BUFFER: usize = 4 << 20;

/// How long an I/O thread waits on an empty socket before it looks
/// whether the engine is still there (a stopped engine ends it).
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Datagrams a reader hands the engine at once, at most: read in a row
/// (the socket not yet empty), they cost the engine one wake-up instead of
/// one each, which an engine thread at real-time priority would otherwise
/// pay per datagram (it preempts its reader at each). The first of them
/// waits for the others' framing, a few microseconds each.
pub(crate) const READ_BATCH: usize = 16;

/// The longest a reader holds a datagram to batch it with the next ones
/// (16 reads and framings take ~50 µs): past it, what it holds goes.
const READ_HOLD: Duration = Duration::from_micros(200);

/// A reader's pause before it looks again for room in a queue holding
/// `MAX_QUEUED_DATAGRAMS` (the engine takes a few hundred meanwhile).
const FULL_PAUSE: Duration = Duration::from_millis(1);

/// A reader's pause after a receive error that is not a peer's ICMP.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// How long a sending thread waits for room in a full send buffer.
const SEND_WAIT: Duration = Duration::from_millis(100);

/// Attempts at binding a group on an ephemeral port another socket took
/// between the probe and the group.
const BIND_ATTEMPTS: usize = 5;

/// The I/O threads for `sip.io_threads`: as configured, or one per core.
pub(crate) fn io_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured.min(MAX_IO_THREADS);
    }
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_IO_THREADS)
}

/// `n` non-blocking UDP sockets on `addr`, one `SO_REUSEPORT` group (one
/// plain socket when `n` is 1). A port of 0 resolves to one free port,
/// which every socket of the group takes.
pub(crate) fn bind_group(addr: SocketAddr, n: usize) -> Result<Vec<UdpSocket>, NetError> {
    let err = |source| NetError::Bind { addr, source };
    if n <= 1 {
        return Ok(vec![bind_one(addr, false).map_err(err)?]);
    }
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        // Alone first: a port someone holds (with the option or not)
        // refuses this bind, and the node does not start.
        let probe = bind_one(addr, false).map_err(err)?;
        let port = probe.local_addr().map_err(err)?;
        drop(probe);
        match (0..n)
            .map(|_| bind_one(port, true))
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(group) => return Ok(group),
            // An ephemeral port another socket took between the probe and
            // the group: draw another.
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e);
            }
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(
        last.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into())
    ))
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    // Best effort: the kernel caps them.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    let got = sock.recv_buffer_size().unwrap_or(0);
    if got < UDP_BUFFER {
        debug!(%addr, bytes = got, "UDP receive buffer smaller than asked (raise net.core.rmem_max)");
    }
    Ok(sock.into())
}

/// What one I/O thread needs.
pub(crate) struct IoThread {
    pub(crate) sock: UdpSocket,
    pub(crate) local: SocketAddr,
    pub(crate) limits: Limits,
    pub(crate) tx: mpsc::Sender<EngineInput>,
    pub(crate) metrics: NetMetrics,
    pub(crate) gauge: Reader,
    /// The engine's `centralino_sip_parse_errors_total`: refusals that
    /// need no answer are counted and dropped here.
    pub(crate) parse_errors: prometheus::IntCounterVec,
}

impl IoThread {
    /// Starts the thread; it ends when the engine's queue closes.
    pub(crate) fn spawn(self, index: usize) -> Result<(), NetError> {
        std::thread::Builder::new()
            .name(format!("sip-io-{index}"))
            .spawn(move || {
                let read = self
                    .metrics
                    .sip_io_datagrams
                    .with_label_values(&[&index.to_string()]);
                self.run(&read);
                // Whatever ended it, a stopped reader must not hold the
                // lag signal at "busy" (that would refuse every call).
                self.gauge.empty(Instant::now());
            })
            .map(drop)
            .map_err(|source| NetError::Io {
                what: "cannot start a SIP I/O thread",
                source,
            })
    }

    fn run(&self, read: &prometheus::IntCounter) {
        let mut buf = vec![0u8; 65_536];
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, remote)) => {
                    let read_at = Instant::now();
                    read.inc();
                    let flow = Flow {
                        transport: Transport::Udp,
                        remote,
                        local: self.local,
                        conn: 0,
                    };
                    // The guard is fuzzed; should it still panic, one
                    // datagram is lost, not a reader (and a share of the
                    // peers with it).
                    let data = &buf[..n];
                    let framed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        // Sound: the guard only reads its inputs; a
                        // panic leaves nothing half-changed.
                        guard::parse_datagram(data, &self.limits)
                    }));
                    let framed = match framed {
                        Ok(Ok(Framed::Keepalive)) => continue,
                        Ok(Err(rej)) if rej.reply.is_none() => {
                            // Nothing to answer (a broken response, ACK
                            // or worse): counted, and the engine never
                            // sees it.
                            self.refused(rej.error.code(), remote);
                            continue;
                        }
                        Ok(framed) => framed,
                        Err(_) => {
                            self.refused("guard_panic", remote);
                            continue;
                        }
                    };
                    batch.push(Datagram {
                        flow,
                        framed,
                        read_at,
                    });
                    // Full, or held long enough (timed from the reads'
                    // own clock, no other): a reader preempted between
                    // two reads would otherwise hold what it read before
                    // (its wait counts in the lag, and the calls' latency).
                    let held = read_at.saturating_duration_since(batch[0].read_at) >= READ_HOLD;
                    if (batch.len() == READ_BATCH || held) && self.hand_over(&mut batch).is_none() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !batch.is_empty() {
                        match self.hand_over(&mut batch) {
                            None => return,
                            // It waited for room: what came meanwhile
                            // waited in the kernel, and is read before
                            // the socket counts as empty again.
                            Some(true) => continue,
                            Some(false) => {}
                        }
                    }
                    self.gauge.empty(Instant::now());
                    if !self.wait() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors surface here; they concern a peer, not
                    // the socket, so keep reading.
                    self.metrics.sip_udp_receive_errors.inc();
                    debug!(error = %e, "UDP receive error");
                    // What was read before it does not wait for the pause.
                    if !batch.is_empty() && self.hand_over(&mut batch).is_none() {
                        return;
                    }
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) {
                        // The host is short of memory or buffers: no spin.
                        std::thread::sleep(ERROR_PAUSE);
                    }
                }
            }
        }
    }

    /// Gives the engine what was read in a row: whether it had to wait
    /// for room, `None` once the engine is gone. A full queue (in inputs,
    /// or `MAX_QUEUED_DATAGRAMS` datagrams) holds this thread, and the
    /// datagrams wait in the kernel's buffer: the engine's lag, seen by
    /// the overload signal, not a loss here.
    fn hand_over(&self, batch: &mut Vec<Datagram>) -> Option<bool> {
        let mut waited = false;
        while !self.gauge.reserve(batch.len()) {
            if self.tx.is_closed() {
                return None;
            }
            waited = true;
            std::thread::sleep(FULL_PAUSE);
        }
        let full = std::mem::replace(batch, Vec::with_capacity(READ_BATCH));
        match self.tx.try_send(EngineInput::Datagrams(full)) {
            Ok(()) => Some(waited),
            Err(mpsc::error::TrySendError::Full(input)) => {
                self.tx.blocking_send(input).ok().map(|()| true)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }

    fn refused(&self, code: &str, remote: SocketAddr) {
        self.parse_errors.with_label_values(&[code]).inc();
        debug!(error_code = code, peer = %remote, "message refused by the guard");
    }

    /// Waits until the socket may have data; false once the engine is gone.
    fn wait(&self) -> bool {
        let timeout = Timespec {
            tv_sec: IDLE_CHECK.as_secs() as _,
            tv_nsec: IDLE_CHECK.subsec_nanos() as _,
        };
        loop {
            if self.tx.is_closed() {
                return false;
            }
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(0) => {}
                Ok(_) => {
                    self.gauge.woken(Instant::now());
                    return true;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    debug!(error = %e, "poll on a SIP socket failed");
                    std::thread::sleep(IDLE_CHECK);
                }
            }
        }
    }
}

/// Runs `task` after asking, from the thread that polls it (the engine's
/// runtime has one), for the nice value `sip.engine_nice`; `0` leaves it.
/// Every call's signalling waits for that thread, and the node's other
/// threads (store, staffing advisor, media, SIP I/O) preempted it for
/// milliseconds: at 3,500 calls/s on a 2-core VM, 72–83 % of the calls
/// were dispatched within 1 ms, 91–95 % with the thread at -10 (p99 still
/// 5–10 ms). A value not below the thread's own is left (it would give
/// the engine less than the rest); refused (no `CAP_SYS_NICE` or
/// `RLIMIT_NICE`), the node runs on at the process's priority and says
/// so.
///
/// Then `sip.engine_realtime_priority` (`0` leaves it): the thread under
/// the kernel's real-time round-robin scheduler. A nice value only
/// weighs the thread's share; a woken engine still waited for the thread
/// on its core to be preempted, up to the scheduler's granularity: 96 %
/// of the calls dispatched within 1 ms at 2,000 calls/s on 2 cores, p99
/// 2.5 ms. Under `SCHED_RR` it runs at once: 99.9 % within 1 ms, at the
/// same CPU per call once the readers hand their datagrams over in
/// batches (`READ_BATCH`; one at a time, the engine preempted its reader
/// at each, and the node spent a quarter more per call). The kernel keeps
/// 5 % of each second for the normal scheduler's threads
/// (`sched_rt_runtime_us`), and the node's heartbeat shows a stalled loop.
pub(crate) async fn at_nice<F: Future>(
    nice: i32,
    realtime: u8,
    granted: prometheus::IntGauge,
    task: F,
) -> F::Output {
    if nice != 0 {
        set_engine_nice(nice);
    }
    if realtime != 0 && set_engine_realtime(realtime) {
        granted.set(i64::from(realtime));
    }
    task.await
}

/// What `sip.engine_realtime_priority` does to the calling thread; `true`
/// if set.
fn set_engine_realtime(priority: u8) -> bool {
    match set_thread_round_robin(priority) {
        Ok(()) => {
            tracing::info!(
                priority,
                "engine thread under the real-time scheduler (SCHED_RR)"
            );
            true
        }
        Err(e) => {
            tracing::warn!(
                priority,
                error = %e,
                "cannot put the engine thread under the real-time scheduler \
                 (sip.engine_realtime_priority): it needs CAP_SYS_NICE or an RLIMIT_RTPRIO \
                 of at least the priority (systemd LimitRTPRIO=), and a real-time budget in \
                 the node's cgroup where the kernel keeps one; running under the normal one"
            );
            false
        }
    }
}

/// The kernel's `struct sched_param`: one `int` (a C library's own may
/// carry more fields, musl's does, which the system call ignores).
#[repr(C)]
struct SchedParam {
    sched_priority: libc::c_int,
}

/// Puts the calling thread under `SCHED_RR` at `priority`, with
/// `SCHED_RESET_ON_FORK`: threads it starts later (the staffing advisor,
/// the runtime's blocking pool) run under the normal scheduler.
/// rustix has no `sched_setscheduler`, and the C library's wrapper is no
/// system call on musl (it returns `ENOSYS` by design), hence the system
/// call itself.
#[allow(unsafe_code)]
fn set_thread_round_robin(priority: u8) -> std::io::Result<()> {
    let param = SchedParam {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: the system call reads one `struct sched_param` (an `int`)
    // through the pointer, which points at `param`, alive across the call;
    // pid 0 is the calling thread. It changes nothing of this process's
    // memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0 as libc::pid_t,
            libc::SCHED_RR | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What `sip.engine_nice` does to the calling thread; `true` if set.
fn set_engine_nice(nice: i32) -> bool {
    let Ok(base) = rustix::process::getpriority_process(None) else {
        return false;
    };
    if nice >= base {
        tracing::info!(
            nice,
            base,
            "sip.engine_nice is not below the engine thread's nice value: left"
        );
        return false;
    }
    match set_thread_nice(nice) {
        Ok(()) => {
            BASE_NICE.store(base, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(nice, "engine thread priority set");
            true
        }
        Err(e) => {
            tracing::warn!(
                nice,
                error = %e,
                "cannot set the engine thread's priority (sip.engine_nice): it needs \
                 CAP_SYS_NICE or a nice limit (systemd LimitNICE=); running at the process's"
            );
            false
        }
    }
}

/// The nice value the engine's thread had before `sip.engine_nice`
/// (`i32::MIN`: not changed).
static BASE_NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(i32::MIN);

/// Called first by a thread off the calls' path that the engine's thread
/// may start (the staffing advisor, the runtime's blocking pool): a new
/// thread inherits its creator's nice value, and the advisor's Erlang A at
/// the engine's priority would take back what the engine was given.
pub fn background_thread() {
    let base = BASE_NICE.load(std::sync::atomic::Ordering::Relaxed);
    if base != i32::MIN && rustix::process::getpriority_process(None).ok() != Some(base) {
        // Back up to the value from before: raising a nice value needs no
        // privilege.
        let _ = set_thread_nice(base);
    }
}

/// Sets the calling thread's nice value: on Linux `PRIO_PROCESS` with
/// `who = 0` names the calling thread, not the whole process.
pub(crate) fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    rustix::process::setpriority_process(None, nice)?;
    Ok(())
}

/// Batches waiting for one sending thread; beyond, their datagrams are
/// dropped as the kernel drops them when its send buffer is full (the
/// transactions' timers retransmit).
const SEND_QUEUE: usize = 1024;

/// Emptied batches kept for reuse (per address).
const SPARE_BATCHES: usize = 64;

/// Datagrams the engine hands over at most between two batches: a waking
/// costs half a `sendto`, so it is paid once per batch, not per datagram,
/// while a message waits at most for the engine to take this many inputs.
pub(crate) const SEND_BATCH_INPUTS: usize = 16;

type Batch = Vec<(SocketAddr, Vec<u8>)>;

/// The engine's side of a group's sending threads.
pub(crate) struct Senders {
    queues: Vec<std::sync::mpsc::SyncSender<Batch>>,
    pending: Vec<Batch>,
    /// Batches the sending threads emptied, kept with their capacity for
    /// the engine's next: no allocation per batch on the engine's thread.
    spare: std::sync::Arc<std::sync::Mutex<Vec<Batch>>>,
    metrics: NetMetrics,
    /// Each sending thread says here that it sent all it was given.
    done: std::sync::mpsc::Receiver<()>,
}

/// How long a node that stops waits for its last datagrams (the BYEs of a
/// drain's end) to leave.
const FINISH_WITHIN: Duration = Duration::from_secs(2);

impl Senders {
    /// One sending thread per socket (clones of the group's sockets).
    /// `first` numbers the threads after other addresses' (`sip-out-N`).
    pub(crate) fn spawn(
        socks: Vec<UdpSocket>,
        first: usize,
        metrics: &NetMetrics,
    ) -> Result<Self, NetError> {
        let mut queues = Vec::with_capacity(socks.len());
        let (done_tx, done) = std::sync::mpsc::channel();
        let spare = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for (i, sock) in socks.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(SEND_QUEUE);
            let m = metrics.clone();
            let done_tx = done_tx.clone();
            let spare = spare.clone();
            std::thread::Builder::new()
                .name(format!("sip-out-{}", first + i))
                .spawn(move || {
                    for mut batch in rx {
                        for (to, bytes) in batch.drain(..) {
                            if let Err(e) = send(&sock, &bytes, to) {
                                m.sip_udp_send_errors.inc();
                                debug!(error = %e, peer = %to, "UDP send failed");
                            }
                        }
                        let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
                        if spare.len() < SPARE_BATCHES {
                            spare.push(batch);
                        }
                    }
                    let _ = done_tx.send(());
                })
                .map_err(|source| NetError::Io {
                    what: "cannot start a SIP sending thread",
                    source,
                })?;
            queues.push(tx);
        }
        Ok(Self {
            pending: vec![Vec::new(); queues.len()],
            spare,
            queues,
            metrics: metrics.clone(),
            done,
        })
    }

    /// Keeps `bytes` for `to` until the next [`Senders::flush`].
    pub(crate) fn send(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        let n = self.pending.len().max(1);
        if let Some(p) = self.pending.get_mut(peer_hash(to) % n) {
            p.push((to, bytes));
        }
    }

    /// The node stops: what was kept leaves, and this returns once the
    /// sending threads sent everything (bounded by `FINISH_WITHIN`).
    pub(crate) fn finish(&mut self) {
        self.flush();
        let threads = self.queues.len();
        // Their queues closed, the threads end after the last batch.
        self.queues.clear();
        let until = Instant::now() + FINISH_WITHIN;
        for _ in 0..threads {
            let left = until.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                break;
            }
        }
    }

    /// Hands what was kept to the sending threads, never waiting.
    pub(crate) fn flush(&mut self) {
        for (q, p) in self.queues.iter().zip(&mut self.pending) {
            if p.is_empty() {
                continue;
            }
            let next = self
                .spare
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .unwrap_or_default();
            let batch = std::mem::replace(p, next);
            let n = batch.len();
            if q.try_send(batch).is_err() {
                self.metrics.sip_udp_send_errors.inc_by(n as u64);
                debug!(datagrams = n, "SIP sending queue full, datagrams dropped");
            }
        }
    }
}

/// One datagram; a full send buffer (the socket is non-blocking: its
/// reader shares it) is waited for, briefly, rather than the datagram lost.
fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
    match sock.send_to(bytes, to) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let timeout = Timespec {
                tv_sec: 0,
                tv_nsec: SEND_WAIT.subsec_nanos() as _,
            };
            let mut fds = [PollFd::new(sock, PollFlags::OUT)];
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            sock.send_to(bytes, to).map(drop)
        }
        r => r.map(drop),
    }
}

/// A cheap, stable spread of peers over the sending threads.
fn peer_hash(a: SocketAddr) -> usize {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => u32::from(v4),
        std::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
        }
    };
    (ip ^ u32::from(a.port()).wrapping_mul(0x9E37_79B1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the engine's thread asks for is its own: the test's thread
    /// keeps its value, a thread it starts inherits it (as Linux does)
    /// unless it is a background one, which goes back to the value from
    /// before. Lowering a nice value needs `CAP_SYS_NICE` (root has it);
    /// without it the thread stays as it was.
    #[test]
    fn the_nice_value_is_the_engine_threads_alone() {
        let nice = || rustix::process::getpriority_process(None).expect("getpriority");
        let before = nice();
        let (set, engine, inherited, background) = std::thread::spawn(move || {
            // The future runs where it is polled, after the value is set.
            block_on(at_nice(
                -20,
                0,
                prometheus::IntGauge::new("g", "g").expect("gauge"),
                async move {
                    let inherited = std::thread::spawn(nice).join().expect("thread");
                    let background = std::thread::spawn(move || {
                        background_thread();
                        nice()
                    })
                    .join()
                    .expect("thread");
                    (nice() != before, nice(), inherited, background)
                },
            ))
        })
        .join()
        .expect("thread");
        if set {
            assert_eq!(engine, -20);
            assert_eq!(inherited, -20, "Linux: a new thread inherits it");
        } else {
            // Unprivileged (or already at -20): nothing changed.
            assert_eq!((engine, inherited), (before, before));
        }
        assert_eq!(background, before, "a background thread is as before");
        assert_eq!(nice(), before, "the test's own thread is untouched");
        // Not below the thread's own: left.
        let left = std::thread::spawn(move || set_engine_nice(before))
            .join()
            .expect("thread");
        assert!(!left);
    }

    /// The real-time scheduler is the engine thread's alone: the test's
    /// thread, and a thread the engine's starts (`SCHED_RESET_ON_FORK`),
    /// run under the normal one. Where the kernel refuses `SCHED_RR`
    /// (no `CAP_SYS_NICE` nor `RLIMIT_RTPRIO`, a cgroup without a real-time
    /// budget) nothing changes.
    #[test]
    fn the_real_time_scheduler_is_the_engine_threads_alone() {
        let policy =
            || policy_of(&std::fs::read_to_string("/proc/thread-self/stat").expect("stat"));
        let before = policy();
        assert_eq!(before, (0, 0), "the test runs under the normal scheduler");
        let granted = prometheus::IntGauge::new("granted", "g").expect("gauge");
        let seen = granted.clone();
        let (engine, started) = std::thread::spawn(move || {
            block_on(at_nice(0, 7, granted, async move {
                let started = std::thread::spawn(policy).join().expect("thread");
                (policy(), started)
            }))
        })
        .join()
        .expect("thread");
        // Whether the kernel lets this process have it at all (CAP_SYS_NICE
        // in the initial user namespace, an RLIMIT_RTPRIO, a cgroup with a
        // real-time budget): a throw-away thread asks.
        let allowed = std::thread::spawn(|| set_thread_round_robin(7).is_ok())
            .join()
            .expect("thread");
        if allowed {
            assert_eq!(engine, (2, 7), "SCHED_RR at priority 7");
            assert_eq!(seen.get(), 7, "the gauge says so");
        } else {
            assert_eq!(engine, before, "refused: nothing changed");
            assert_eq!(seen.get(), 0, "the gauge says so");
        }
        assert_eq!(started, (0, 0), "a thread it starts: the normal scheduler");
        assert_eq!(policy(), before, "the test's own thread is untouched");
    }

    /// A reader hands over what it reads in a row in batches of at most
    /// `READ_BATCH`, in the order it came, and the rest once its socket is
    /// empty; each datagram keeps its own flow.
    #[test]
    fn a_reader_hands_over_its_datagrams_in_order_in_bounded_batches() {
        let sock = bind_one("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let local = sock.local_addr().expect("local");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
        let from = peer.local_addr().expect("peer address");
        const SENT: usize = 2 * READ_BATCH + 5;
        for n in 0..SENT {
            let options = format!(
                "OPTIONS sip:{local} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{n}\r\n\
                 From: <sip:a@{from}>;tag={n}\r\nTo: <sip:{local}>\r\nCall-ID: batch-{n}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            peer.send_to(options.as_bytes(), local).expect("send");
        }
        // All of them queued in the socket before the reader starts: it
        // reads them in a row.
        let (tx, mut rx) = mpsc::channel(64);
        let registry = prometheus::Registry::new();
        let now = Instant::now();
        IoThread {
            sock,
            local,
            limits: Limits::default(),
            tx,
            metrics: NetMetrics::new(&registry),
            gauge: crate::pressure::Pressure::new(now).reader(now),
            parse_errors: prometheus::IntCounterVec::new(
                prometheus::Opts::new("parse_errors", "refused"),
                &["reason"],
            )
            .expect("counter"),
        }
        .spawn(0)
        .expect("reader");
        let (mut sizes, mut call_ids) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        while call_ids.len() < SENT {
            let batch = match rx.try_recv() {
                Ok(EngineInput::Datagrams(batch)) => batch,
                Ok(_) => panic!("a batch of datagrams"),
                Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "{} of {SENT} read",
                        call_ids.len()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            sizes.push(batch.len());
            for d in batch {
                assert_eq!((d.flow.remote, d.flow.local), (from, local));
                let Ok(Framed::Message(m)) = d.framed else {
                    panic!("a framed OPTIONS")
                };
                call_ids.push(m.header("Call-ID").expect("Call-ID").to_owned());
            }
        }
        let want: Vec<String> = (0..SENT).map(|n| format!("batch-{n}")).collect();
        assert_eq!(call_ids, want, "in the order sent");
        assert!(
            sizes.iter().all(|&s| (1..=READ_BATCH).contains(&s)),
            "{sizes:?}"
        );
        // Queued before it started, they are read in a row (full batches
        // unless the kernel delivered some late, to a loaded machine's
        // ksoftirqd, or the reader was preempted past READ_HOLD): never
        // one input each.
        assert!(sizes.iter().any(|&s| s > 1), "read in a row: {sizes:?}");
    }

    /// (policy, real-time priority) of a `/proc/.../stat` line: fields 41
    /// and 40 (`proc(5)`), counted after the command's closing parenthesis.
    fn policy_of(stat: &str) -> (u32, u32) {
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let field = |n: usize| -> u32 {
            rest.split_whitespace()
                .nth(n - 3)
                .expect("field")
                .parse()
                .expect("a number")
        };
        (field(41), field(40))
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}
