//! SIP over TCP and TLS on threads of their own (`sip-stream-N`, a
//! multi-threaded runtime with one worker per I/O thread): accepting,
//! TLS handshakes and record encryption, reading, framing and writing,
//! for the listeners and for the node's TLS connections to carriers.
//!
//! On the engine's runtime these took the engine's thread: a handshake
//! is a few hundred microseconds of public-key work, so a thousand
//! phones reconnecting over TLS after a network blip (or a node's
//! restart) held every call's signalling for their duration, and the lag
//! signal then refused calls for a burst the engine had no part in. Here
//! the engine sees a stream as it sees a UDP reader: framed messages in
//! its queue (`EngineInput::Framed`), bytes out through the connection's
//! channel, `ConnOpen` / `ConnClosed` around them.
//!
//! The national network's client and the work stream's driver run on the
//! same threads (started inside [`StreamsHandle::enter`]): NATS over TLS
//! and the work stream's records, off the engine's thread too.
//!
//! The binary finishes the runtime after the engine's is gone
//! ([`Streams::finish`]): each connection then writes what the engine
//! gave it — a drain's last BYEs — and closes, within a bound (a
//! handshake or a dial to a carrier still under way can hold it that
//! long), before the runtime stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use centralino_sip::guard::StreamFramer;
use centralino_sip::txn::Flow;
use centralino_sip::{Limits, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::handle::EngineInput;
use crate::metrics::NetMetrics;

/// Idle time after which a TCP connection with no partial message is closed.
const TCP_IDLE: Duration = Duration::from_secs(900);

/// Messages of one connection the engine has not taken yet, at most: past
/// them the connection is not read (TCP's flow control then holds the
/// peer back), so no connection fills the engine's queue alone (a
/// sixty-fourth of it), while a carrier's trunk on one connection still
/// passes 20,000 messages a second at 50 ms of lag.
const IN_FLIGHT: usize = 1024;

/// The streams' runtime: one worker per SIP I/O thread (`sip.io_threads`,
/// one per core by default, in all: not per listen address), named
/// `sip-stream-N`; and the connections running on it.
pub struct Streams {
    runtime: tokio::runtime::Runtime,
    handle: StreamsHandle,
}

/// Where a listener or a connection is started.
#[derive(Clone)]
pub struct StreamsHandle {
    runtime: tokio::runtime::Handle,
    live: Arc<Live>,
}

/// Connections running, and a wake-up when none is left.
#[derive(Default)]
struct Live {
    n: AtomicUsize,
    idle: Notify,
}

/// One running connection, counted until its task ends (or is dropped).
struct Running(Arc<Live>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Streams {
    /// Starts the runtime's workers.
    pub fn start(io_threads: usize) -> std::io::Result<Self> {
        let n = crate::sip_io::io_threads(io_threads);
        let next = AtomicUsize::new(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .thread_name_fn(move || format!("sip-stream-{}", next.fetch_add(1, Ordering::Relaxed)))
            .enable_all()
            .build()?;
        let handle = StreamsHandle {
            runtime: runtime.handle().clone(),
            live: Arc::default(),
        };
        Ok(Self { runtime, handle })
    }

    pub fn handle(&self) -> StreamsHandle {
        self.handle.clone()
    }

    /// The engine is gone (its runtime dropped): each connection writes
    /// what it was given and closes; this waits for them, at most
    /// `within`, then stops the runtime (the national network's drivers,
    /// not waited for, with it).
    pub fn finish(self, within: Duration) {
        let live = self.handle.live.clone();
        self.runtime.block_on(async {
            let idle = async {
                loop {
                    let notified = live.idle.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if live.n.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    notified.await;
                }
            };
            if tokio::time::timeout(within, idle).await.is_err() {
                warn!(
                    connections = live.n.load(Ordering::Acquire),
                    "SIP stream connections still writing at exit"
                );
            }
        });
        self.runtime.shutdown_timeout(Duration::from_millis(100));
    }
}

impl StreamsHandle {
    /// Makes this runtime the current one: what the caller spawns with
    /// `tokio::spawn` meanwhile runs here.
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.runtime.enter()
    }

    /// Runs a connection's task, counted for [`Streams::finish`].
    pub(crate) fn connection(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.live.n.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.live.clone());
        self.runtime.spawn(async move {
            let _running = running;
            task.await;
        });
    }
}

/// A listener bound now (so a taken port fails the start, and port 0
/// resolves), accepting on the streams' runtime.
pub(crate) fn listen(
    streams: &StreamsHandle,
    addr: SocketAddr,
    acceptor: Acceptor,
) -> std::io::Result<SocketAddr> {
    // IPv6 only on an IPv6 address, as the UDP sockets are: `[::]` and
    // `0.0.0.0` can both be listened on, and no IPv4 peer arrives mapped
    // (`::ffff:a.b.c.d`) where trunk addresses are matched.
    let sock = crate::http::bind_tcp(addr, true)?;
    let listener = {
        // Registered with the stream runtime's reactor: its readiness is
        // that runtime's work, not the engine's.
        let _inside = streams.runtime.enter();
        TcpListener::from_std(sock)?
    };
    let local = listener.local_addr()?;
    let streams = streams.clone();
    streams
        .runtime
        .clone()
        .spawn(tcp_acceptor(listener, acceptor, streams));
    Ok(local)
}

/// One listener's settings.
pub(crate) struct Acceptor {
    pub(crate) tls: Option<(tokio_rustls::TlsAcceptor, crate::tls::PeerChecks)>,
    pub(crate) tx: mpsc::Sender<EngineInput>,
    pub(crate) limits: Limits,
    pub(crate) metrics: NetMetrics,
    pub(crate) next_conn: Arc<AtomicU64>,
    pub(crate) open: Arc<AtomicUsize>,
    pub(crate) max: usize,
    pub(crate) partial_timeout: Duration,
}

async fn tcp_acceptor(listener: TcpListener, acceptor: Acceptor, streams: StreamsHandle) {
    let Acceptor {
        tls,
        tx,
        limits,
        metrics,
        next_conn,
        open,
        max,
        partial_timeout,
    } = acceptor;
    let local = listener.local_addr().ok();
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Taken in one step: each listener accepts on a worker of its own.
        let taken = open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        if taken.is_err() {
            metrics.sip_tcp_refused.inc();
            drop(stream);
            continue;
        }
        let slot = Slot {
            open: open.clone(),
            metrics: metrics.clone(),
        };
        metrics.sip_tcp_connections.inc();
        // A 180 right after its 100 must not wait for the peer's delayed
        // acknowledgement (Nagle).
        let _ = stream.set_nodelay(true);
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let flow = Flow {
            transport: if tls.is_some() {
                Transport::Tls
            } else {
                Transport::Tcp
            },
            remote,
            local: local.unwrap_or(remote),
            conn,
        };
        let (tx, limits, metrics, tls) = (tx.clone(), limits.clone(), metrics.clone(), tls.clone());
        streams.connection(async move {
            let _slot = slot;
            match tls {
                None => {
                    stream_connection(
                        stream,
                        flow,
                        Vec::new(),
                        tx.clone(),
                        limits,
                        partial_timeout,
                    )
                    .await;
                    let _ = tx.send(EngineInput::ConnClosed { conn }).await;
                }
                Some((acceptor, checks)) => {
                    // No cap on handshakes at once: a turn would be held
                    // through the peer's round trips, and one silent
                    // client would hold it for the whole timeout.
                    let handshake =
                        tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            let trunks = checks.trunks_of(stream.get_ref().1.peer_certificates());
                            if !trunks.is_empty() {
                                debug!(peer = %remote, trunks = ?trunks, "TLS client certificate of a trunk");
                            }
                            stream_connection(
                                stream,
                                flow,
                                trunks,
                                tx.clone(),
                                limits,
                                partial_timeout,
                            )
                            .await;
                            let _ = tx.send(EngineInput::ConnClosed { conn }).await;
                        }
                        Ok(Err(e)) => handshake_failed(&metrics, "in", remote, &e),
                        Err(_) => handshake_timed_out(&metrics, "in", remote),
                    }
                }
            }
        });
    }
}

/// An accepted connection's place under `sip.max_tcp_connections`, given
/// back however its task ends.
struct Slot {
    open: Arc<AtomicUsize>,
    metrics: NetMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.sip_tcp_connections.dec();
    }
}

/// Counts (and logs at DEBUG: a scanner's probe is no news) a handshake
/// that failed.
fn handshake_failed(metrics: &NetMetrics, direction: &str, peer: SocketAddr, e: &std::io::Error) {
    let reason = crate::tls::failure_reason(e);
    debug!(%peer, direction, reason, error = %e, "TLS handshake failed");
    metrics
        .sip_tls_handshake_failures
        .with_label_values(&[direction, reason])
        .inc();
}

fn handshake_timed_out(metrics: &NetMetrics, direction: &str, peer: SocketAddr) {
    debug!(%peer, direction, "TLS handshake timed out");
    metrics
        .sip_tls_handshake_failures
        .with_label_values(&[direction, "timeout"])
        .inc();
}

/// One SIP stream (TCP, or TLS once its handshake is done): framed
/// messages in, the engine's bytes out, until either side ends it.
async fn stream_connection<S>(
    stream: S,
    flow: Flow,
    trunks: Vec<String>,
    tx: mpsc::Sender<EngineInput>,
    limits: Limits,
    partial_timeout: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let out = out_tx.downgrade();
    if tx
        .send(EngineInput::ConnOpen {
            conn: flow.conn,
            tx: out_tx,
            trunks,
        })
        .await
        .is_err()
    {
        return;
    }
    pump_stream(stream, flow, tx, (out, out_rx), limits, partial_timeout).await;
}

/// Messages queued for one stream connection's writer: twice what may be
/// in the engine's hands ([`IN_FLIGHT`]), so an engine catching up on a
/// backlog never finds a healthy connection's queue full (the engine
/// drops what does not fit; over TCP nobody repeats it). A channel takes
/// memory for what it holds, not for its bound.
pub(crate) const STREAM_QUEUE: usize = 2 * IN_FLIGHT;

/// The longest one write may wait for a peer that does not read: past
/// it the connection closes (and gives its place back) rather than stay
/// pinned.
const WRITE_WAIT: Duration = Duration::from_secs(32);

/// How long a connection that will read no more waits for the answers
/// to what it read: the engine's turn for each (under lag, longer than
/// any fixed grace), not a call's outcome. Then as long again, at most,
/// for the writer to write them: a peer that half-closed and does not
/// read gives its place back as soon.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// What a settled connection still reads and drops while its answers
/// leave (a refused message's body, say): closing with bytes unread is a
/// reset, which discards what was not sent yet. Past it, the reset.
const DISCARD_MAX: usize = 64 * 1024;

/// How a connection's reading ended.
enum End {
    /// A read failed or timed out, or the writer ended: close now.
    Closed,
    /// The peer has sent all it will (end of stream: it may have
    /// half-closed and still read), or the framing is lost after a
    /// rejection the engine answers: what was read gets its answers,
    /// then close.
    Settle,
    /// The engine is gone: what it queued is written, then close.
    EngineGone,
}

/// Reads framed messages to the engine and writes its bytes, until the
/// peer, the idle timer or a framing error ends the connection. Reading
/// and writing run side by side: a reader waiting for the engine (its
/// turns, a full queue) never holds back the answers to what it read.
async fn pump_stream<S>(
    stream: S,
    flow: Flow,
    tx: mpsc::Sender<EngineInput>,
    (out, mut out_rx): (mpsc::WeakSender<Vec<u8>>, mpsc::Receiver<Vec<u8>>),
    limits: Limits,
    partial_timeout: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    // The writer's end tells the reader; the reader's end tells the
    // writer when to stop (`notify_one` keeps the word for a waiter to
    // come); each write done tells a reader waiting for room.
    // `finish`: write what is queued, then end (`stop_writing` ends at
    // once, a write under way included).
    let (writer_done, stop_writing, finish, written) =
        (Notify::new(), Notify::new(), Notify::new(), Notify::new());
    let pace = Pace {
        out,
        written: &written,
        writer_done: &writer_done,
    };
    // Each message in the engine's hands holds one; the engine gives it
    // back once that message's answers are in the writer's queue.
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let reader = async {
        let end = read_stream(
            &mut rd,
            flow,
            &tx,
            limits,
            partial_timeout,
            &pace,
            &in_flight,
        )
        .await;
        match end {
            End::Closed => stop_writing.notify_one(),
            End::Settle => {
                // What the peer still sends is read and dropped until the
                // writer is done (a close with bytes unread would reset
                // the connection and lose the answers).
                let discard = discard(&mut rd, DISCARD_MAX);
                tokio::pin!(discard);
                let mut discarding = true;
                // Every turn back: every message read has been taken and
                // answered (a final answer that waits for a call, such
                // as an INVITE's, is not waited for). Shorter if the
                // writer ends; bounded for an engine far behind.
                let all =
                    tokio::time::timeout(SETTLE_WAIT, in_flight.acquire_many(IN_FLIGHT as u32));
                tokio::pin!(all);
                let mut writer_ended = false;
                loop {
                    tokio::select! {
                        r = &mut all => {
                            if r.is_err() {
                                debug!(peer = %flow.remote, "TCP connection closed before the engine answered all it read");
                            }
                            break;
                        }
                        () = writer_done.notified() => {
                            writer_ended = true;
                            break;
                        }
                        () = &mut discard, if discarding => discarding = false,
                    }
                }
                finish.notify_one();
                while !writer_ended {
                    tokio::select! {
                        () = writer_done.notified() => writer_ended = true,
                        () = &mut discard, if discarding => discarding = false,
                    }
                }
            }
            // The engine's writers are gone with it: the writer ends
            // once it has written what they left.
            End::EngineGone => {}
        }
    };
    let writer = async {
        // Once finishing: the time by which what is queued must be out.
        let mut finish_by = None;
        loop {
            let bytes = if finish_by.is_some() {
                // Only what is queued now: the engine keeps its sender
                // until it hears the connection closed.
                match out_rx.try_recv() {
                    Ok(bytes) => bytes,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    // What is queued goes first, even when told to stop.
                    biased;
                    bytes = out_rx.recv() => match bytes {
                        Some(bytes) => bytes,
                        // The engine is gone (it drops a connection's
                        // writer only then, or once the connection closed).
                        None => break,
                    },
                    () = stop_writing.notified() => break,
                    () = finish.notified() => {
                        finish_by = Some(tokio::time::Instant::now() + SETTLE_WAIT);
                        continue;
                    }
                }
            };
            // A write is cut short only to close: by the reader's end, a
            // peer that stopped reading, or the end of the time to finish.
            let until = finish_by.unwrap_or_else(|| tokio::time::Instant::now() + WRITE_WAIT);
            let write = tokio::time::timeout_at(until, wr.write_all(&bytes));
            let wrote = tokio::select! {
                r = write => matches!(r, Ok(Ok(()))),
                () = stop_writing.notified() => false,
            };
            written.notify_waiters();
            if !wrote {
                break;
            }
        }
        writer_done.notify_one();
        written.notify_waiters();
    };
    tokio::join!(reader, writer);
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// What the reader knows of the writer: how full its queue is, and when
/// it wrote or ended.
struct Pace<'a> {
    out: mpsc::WeakSender<Vec<u8>>,
    written: &'a Notify,
    writer_done: &'a Notify,
}

impl Pace<'_> {
    /// More than half the writer's queue waits: the peer reads slower
    /// than it asks.
    fn backed_up(&self) -> bool {
        self.out
            .upgrade()
            .is_some_and(|tx| tx.capacity() < STREAM_QUEUE / 2)
    }

    /// Waits while the writer is backed up; `false` once it has ended.
    async fn room(&self) -> bool {
        while self.backed_up() {
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if !self.backed_up() {
                break;
            }
            tokio::select! {
                () = written => {}
                () = self.writer_done.notified() => return false,
            }
        }
        true
    }
}

/// Reads and drops what a peer still sends once its connection is
/// settling, `max` bytes at most; ends at its end of stream or an error.
async fn discard<R>(rd: &mut R, max: usize)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut buf = [0u8; 4096];
    let mut left = max;
    while left > 0 {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The reading half of [`pump_stream`].
async fn read_stream<R>(
    rd: &mut R,
    flow: Flow,
    tx: &mpsc::Sender<EngineInput>,
    limits: Limits,
    partial_timeout: Duration,
    pace: &Pace<'_>,
    in_flight: &Arc<Semaphore>,
) -> End
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut framer = StreamFramer::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let wait = if framer.buffered() > 0 {
            partial_timeout
        } else {
            TCP_IDLE
        };
        let n = tokio::select! {
            r = tokio::time::timeout(wait, rd.read(&mut buf)) => match r {
                // The peer's end of stream: it may still read.
                Ok(Ok(0)) => return End::Settle,
                Ok(Err(_)) => return End::Closed,
                Ok(Ok(n)) => n,
                Err(_) => {
                    debug!(peer = %flow.remote, partial = framer.buffered() > 0, "TCP connection timed out");
                    return End::Closed;
                }
            },
            () = pace.writer_done.notified() => return End::Closed,
        };
        framer.push(&buf[..n]);
        loop {
            let (framed, fatal) = match framer.next_message(&limits) {
                Ok(None) => break,
                Ok(Some(f)) => (Ok(f), false),
                Err(rej) => {
                    let fatal = rej.error.breaks_framing();
                    (Err(rej), fatal)
                }
            };
            // A peer that does not read its answers is not read either
            // (TCP's flow control then holds it back, as before the
            // writer ran beside the reader).
            if !pace.room().await {
                return End::Closed;
            }
            // Rejections take a turn too: a stream of well-framed but
            // malformed messages is bounded like any other. (Never
            // closed: an error cannot come.)
            let Ok(turn) = in_flight.clone().acquire_owned().await else {
                return End::Closed;
            };
            let input = EngineInput::Framed { flow, framed, turn };
            if tx.send(input).await.is_err() {
                return End::EngineGone;
            }
            if fatal {
                return End::Settle;
            }
        }
    }
}

/// One TLS connection to a carrier: connect, handshake (bounded), then
/// the same stream pump as accepted connections; what arrives on it
/// (responses, the carrier's in-dialog requests) reaches the engine on
/// its flow, and the engine's answers go back on it.
#[allow(clippy::too_many_arguments)] // One connection's plumbing.
pub(crate) async fn tls_client(
    conn: u64,
    remote: SocketAddr,
    carrier: crate::tls::Carrier,
    out: (mpsc::WeakSender<Vec<u8>>, mpsc::Receiver<Vec<u8>>),
    tx: mpsc::Sender<EngineInput>,
    limits: Limits,
    partial_timeout: Duration,
    metrics: NetMetrics,
) {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(remote).await?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        let stream = carrier.connector.connect(carrier.name.clone(), tcp).await?;
        Ok::<_, std::io::Error>((stream, local))
    };
    match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok((stream, local))) => {
            info!(trunk = %carrier.trunk, peer = %remote, "TLS connection to the carrier open");
            let flow = Flow {
                transport: Transport::Tls,
                remote,
                local,
                conn,
            };
            pump_stream(stream, flow, tx.clone(), out, limits, partial_timeout).await;
        }
        Ok(Err(e)) => {
            warn!(trunk = %carrier.trunk, peer = %remote, error = %e, "TLS connection to the carrier failed");
            handshake_failed(&metrics, "out", remote, &e);
            let _ = tx.send(EngineInput::ConnFailed { remote }).await;
        }
        Err(_) => {
            warn!(trunk = %carrier.trunk, peer = %remote, "TLS connection to the carrier timed out");
            handshake_timed_out(&metrics, "out", remote);
            let _ = tx.send(EngineInput::ConnFailed { remote }).await;
        }
    }
    let _ = tx.send(EngineInput::ConnClosed { conn }).await;
}
