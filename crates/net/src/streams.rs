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
//! The runtime lives as long as the process (built by the binary next to
//! the engine's, dropped after it): a drain's last BYEs over TCP leave as
//! they did before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use centralino_sip::guard::StreamFramer;
use centralino_sip::txn::Flow;
use centralino_sip::{Limits, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::handle::EngineInput;
use crate::metrics::NetMetrics;

/// Idle time after which a TCP connection with no partial message is closed.
const TCP_IDLE: Duration = Duration::from_secs(900);

/// The streams' runtime: one worker per SIP I/O thread
/// (`sip.io_threads`, one per core by default), named `sip-stream-N`.
pub fn runtime(io_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let n = crate::sip_io::io_threads(io_threads);
    let next = AtomicUsize::new(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(n)
        .thread_name_fn(move || format!("sip-stream-{}", next.fetch_add(1, Ordering::Relaxed)))
        .enable_all()
        .build()
}

/// A listener bound now (so a taken port fails the start, and port 0
/// resolves), accepting on the streams' runtime.
pub(crate) fn listen(
    streams: &tokio::runtime::Handle,
    addr: SocketAddr,
    acceptor: Acceptor,
) -> std::io::Result<SocketAddr> {
    // As tokio's own `bind` makes it: address reuse, a backlog of 1,024
    // (std's is 128, short for phones reconnecting at once).
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    let listener = std::net::TcpListener::from(sock);
    let local = listener.local_addr()?;
    streams.spawn(async move {
        // Registered with the runtime that polls it: its readiness is
        // that runtime's work, not the engine's.
        match TcpListener::from_std(listener) {
            Ok(l) => tcp_acceptor(l, acceptor).await,
            Err(e) => warn!(addr = %local, error = %e, "SIP stream listener lost"),
        }
    });
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

async fn tcp_acceptor(listener: TcpListener, acceptor: Acceptor) {
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
        if open.load(Ordering::Relaxed) >= max {
            metrics.sip_tcp_refused.inc();
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        metrics.sip_tcp_connections.inc();
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
        let (tx, limits, metrics, open, tls) = (
            tx.clone(),
            limits.clone(),
            metrics.clone(),
            open.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
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
                    let handshake = tokio::time::timeout(
                        crate::tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
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
            open.fetch_sub(1, Ordering::Relaxed);
            metrics.sip_tcp_connections.dec();
        });
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
    pump_stream(stream, flow, tx, out_rx, limits, partial_timeout).await;
}

/// Messages queued for one stream connection's writer.
pub(crate) const STREAM_QUEUE: usize = 256;

/// Reads framed messages to the engine and writes its bytes, until the
/// peer, the idle timer or a framing error ends the connection.
async fn pump_stream<S>(
    stream: S,
    flow: Flow,
    tx: mpsc::Sender<EngineInput>,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    limits: Limits,
    partial_timeout: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut framer = StreamFramer::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut fatal = false;
    loop {
        let wait = if framer.buffered() > 0 {
            partial_timeout
        } else {
            TCP_IDLE
        };
        tokio::select! {
            r = tokio::time::timeout(wait, rd.read(&mut buf)) => {
                let n = match r {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                    Err(_) => {
                        debug!(peer = %flow.remote, partial = framer.buffered() > 0, "TCP connection timed out");
                        break;
                    }
                };
                framer.push(&buf[..n]);
                loop {
                    match framer.next_message(&limits) {
                        Ok(None) => break,
                        Ok(Some(f)) => {
                            if tx.send(EngineInput::Framed { flow, framed: Ok(f) }).await.is_err() {
                                return;
                            }
                        }
                        Err(rej) => {
                            let breaks = rej.error.breaks_framing();
                            let _ = tx.send(EngineInput::Framed { flow, framed: Err(rej) }).await;
                            if breaks {
                                fatal = true;
                                break;
                            }
                        }
                    }
                }
                if fatal {
                    break;
                }
            }
            Some(bytes) = out_rx.recv() => {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
    }
    if fatal {
        // Let the error response out before closing: framing is lost.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            if let Some(bytes) = out_rx.recv().await {
                let _ = wr.write_all(&bytes).await;
            }
        })
        .await;
    }
    let _ = wr.shutdown().await;
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
    out_rx: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<EngineInput>,
    limits: Limits,
    partial_timeout: Duration,
    metrics: NetMetrics,
) {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(remote).await?;
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
            pump_stream(stream, flow, tx.clone(), out_rx, limits, partial_timeout).await;
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
