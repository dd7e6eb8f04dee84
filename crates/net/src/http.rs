//! The HTTP endpoint: `/metrics`, `/healthz` and the API, on connections
//! accepted here and served by hyper's HTTP/1 (axum only routes), so that
//! every connection is bounded against slow and flooding clients:
//!
//! - its request head must arrive within `http.header_timeout_seconds`
//!   (hyper's timer, which also runs while a kept-alive connection waits
//!   for its next request);
//! - it is closed once the client has sent and read nothing for
//!   `http.idle_timeout_seconds` while no request is being handled, and a
//!   request body that stalls that long fails;
//! - at most `http.max_connections` are open (an upgraded WebSocket keeps
//!   its place until it closes); more are closed at once, counted;
//! - its head is buffered up to [`MAX_HEAD_BYTES`], its body up to
//!   `api::MAX_BODY`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::metrics::NetMetrics;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use centralino_config::HttpLimits;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::NetError;
use crate::health::{Health, Verdict};

/// Largest request head (request line and headers) buffered; hyper
/// answers a larger one 431. The API's heads are a few hundred bytes;
/// 8 KiB is hyper's floor.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections the kernel queues for the accept loop (tokio's default).
const LISTEN_BACKLOG: i32 = 1024;
/// When the node stops, requests in progress get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// At most one warning per this long for failing accepts (out of file
/// descriptors, say): the rest go to debug.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// `reason` labels of `centralino_http_timeouts_total`.
const TIMEOUT_HEADER: &str = "header";
const TIMEOUT_IDLE: &str = "idle";
const TIMEOUT_BODY: &str = "body";

/// The HTTP endpoint's runtime: the accept loop on the thread that runs
/// it (`http`), every connection — HTTPS handshake, requests, upgraded
/// WebSockets — on one worker per core (`http-N`, at most 16). On one
/// thread, 40,000 desktops reconnecting over HTTPS after a blip were
/// tens of seconds of public-key work in a row, `/healthz` and `/metrics`
/// waiting behind them.
///
/// The workers run 5 nice values below the process's: one HTTP thread
/// could take one core at most, and a storm on all of them now yields to
/// the engine, the media and the SIP threads (raising a nice value needs
/// no privilege).
pub fn http_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let next = AtomicUsize::new(0);
    // From the value of the thread building the runtime: a blocking-pool
    // thread started by a worker must not add 5 to the worker's.
    let nice = rustix::process::getpriority_process(None)
        .ok()
        .map(|base| (base + HTTP_NICE).min(19));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::sip_io::io_threads(0))
        .thread_name_fn(move || format!("http-{}", next.fetch_add(1, Ordering::Relaxed)))
        .on_thread_start(move || {
            if let Some(nice) = nice {
                let _ = crate::sip_io::set_thread_nice(nice);
            }
        })
        .enable_all()
        .build()
}

/// How much nicer than the process the HTTP workers are.
const HTTP_NICE: i32 = 5;

/// Binds the HTTP endpoint's socket, before its thread starts, so that a
/// taken port stops the node with its reason.
pub fn bind_http(addr: SocketAddr) -> Result<std::net::TcpListener, NetError> {
    bind_tcp(addr, false).map_err(|source| NetError::Bind { addr, source })
}

/// A non-blocking listening TCP socket on `addr`, as tokio's own `bind`
/// makes it: address reuse (a restarted node binds again while its old
/// connections linger in TIME_WAIT) and a backlog of 1,024 (std's 128 is
/// short for clients reconnecting at once); IPv6 only on an IPv6 address
/// when `only_v6`.
pub(crate) fn bind_tcp(addr: SocketAddr, only_v6: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if only_v6 && addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Serves `/metrics` (Prometheus text format), `/healthz` and the API on
/// `listener` until `stop` turns true (or its sender is dropped), then
/// gives the requests in progress [`SHUTDOWN_GRACE`] and returns.
///
/// `/healthz` answers `200 ok` while the node is healthy, else 503 with
/// the reason (`draining`, `starting`, `engine stalled`, `store down`,
/// `store stalled`): one line of plain text either way.
///
/// With `tls` (`http.tls_cert_file`), every connection is HTTPS: its
/// handshake must end within the head's timeout. `web` is what browsers
/// are told and who may open a WebSocket.
#[allow(clippy::too_many_arguments)]
pub async fn serve_http(
    listener: std::net::TcpListener,
    limits: HttpLimits,
    metrics: NetMetrics,
    api: Option<crate::api::Api>,
    health: Health,
    tls: Option<crate::web::TlsConfig>,
    web: crate::web::WebPolicy,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NetError> {
    let io = |source| NetError::Io {
        what: "http",
        source,
    };
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    info!(
        addr = %local,
        max_connections = limits.max_connections,
        https = tls.is_some(),
        "HTTP listening (/metrics, /healthz)"
    );
    let app = app(
        metrics.registry.clone(),
        api,
        health,
        web.metrics_token.clone(),
    )
    .layer(axum::middleware::from_fn_with_state(
        (Arc::new(web), metrics.clone()),
        crate::web::guard,
    ));
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    // Exposed at 0 from the start, so a rate() alert has a series.
    for reason in [TIMEOUT_HEADER, TIMEOUT_IDLE, TIMEOUT_BODY] {
        metrics.http_timeouts.with_label_values(&[reason]);
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    let mut warned: Option<Instant> = None;
    let told = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // The connection stays in the kernel's queue; try
                        // again a little later rather than spin.
                        if warned.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                            warn!(error = %e, "HTTP accept failed");
                            warned = Some(Instant::now());
                        } else {
                            debug!(error = %e, "HTTP accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    metrics.http_refused.inc();
                    debug!(%peer, "HTTP connection closed: http.max_connections are open");
                    drop(stream);
                    continue;
                };
                let slot = Slot::new(permit, metrics.http_connections.clone());
                let io = Tracked::new(stream, slot);
                let activity = io.activity.clone();
                let (http, app, metrics, told) = (http.clone(), app.clone(), metrics.clone(), told.clone());
                let idle = limits.idle_timeout;
                match tls.clone() {
                    None => {
                        conns.spawn(connection(io, activity, peer, http, app, idle, metrics, told));
                    }
                    Some(acceptor) => {
                        let handshake = limits.header_timeout;
                        conns.spawn(async move {
                            match tokio::time::timeout(handshake, acceptor.accept(io)).await {
                                Ok(Ok(tls)) => {
                                    connection(tls, activity, peer, http, app, idle, metrics, told).await;
                                }
                                Ok(Err(e)) => {
                                    metrics.http_tls_failures.inc();
                                    debug!(%peer, error = %e, "HTTPS handshake failed");
                                }
                                Err(_) => {
                                    metrics.http_timeouts.with_label_values(&[TIMEOUT_HEADER]).inc();
                                    debug!(%peer, "HTTPS handshake not done in time: connection closed");
                                }
                            }
                        });
                    }
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    // Each connection saw `stop` too: idle ones are closing, busy ones
    // finish their request first.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            open = conns.len(),
            "HTTP connections still busy at shutdown: closed"
        );
    }
    Ok(())
}

/// Returns once the endpoint is told to stop (or nobody can tell it any
/// more). The value seen is dropped here: a `watch` guard held across an
/// await would make the future `!Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The routes: `/metrics`, `/healthz`, the API's.
fn app(
    registry: Registry,
    api: Option<crate::api::Api>,
    health: Health,
    metrics_token: Option<String>,
) -> Router {
    let metrics_token = metrics_token.map(Arc::new);
    let mut app = Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let registry = registry.clone();
                let token = metrics_token.clone();
                async move {
                    // `http.metrics_token_file` (TEST-MATRIX D14): the
                    // node's figures name every firm, queue and trunk.
                    if let Some(token) = token
                        && !crate::api::bearer_is(&headers, &token)
                    {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
                            "metrics need the bearer token of http.metrics_token_file\n",
                        )
                            .into_response();
                    }
                    metrics(&registry).into_response()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let verdict = health.check(Instant::now().into_std());
                async move { healthz(verdict) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    if let Some(api) = api {
        // The operator's desktop needs the API: served with it.
        app = app.merge(api.router()).merge(crate::pages::router());
    }
    // Bodies larger than the API accepts are refused before they are read.
    app.layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY))
}

fn healthz(verdict: Verdict) -> impl IntoResponse + use<> {
    let code = if verdict == Verdict::Ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{}\n", verdict.as_str()))
}

/// Serves one connection until it ends, is upgraded (the WebSocket goes
/// on in its own task, holding the connection's [`Slot`]), times out or
/// the endpoint stops.
#[allow(clippy::too_many_arguments)]
async fn connection<IO>(
    io: IO,
    activity: Arc<Activity>,
    peer: SocketAddr,
    http: Arc<http1::Builder>,
    app: Router,
    idle: Duration,
    metrics: NetMetrics,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = PerConnection {
        app: TowerToHyperService::new(app),
        peer,
        activity: activity.clone(),
        idle,
        stalled: metrics.http_timeouts.with_label_values(&[TIMEOUT_BODY]),
    };
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let wait = activity.idle_wait(Instant::now(), idle);
        tokio::select! {
            ended = conn.as_mut() => {
                match ended {
                    Err(e) if e.is_timeout() => {
                        metrics.http_timeouts.with_label_values(&[TIMEOUT_HEADER]).inc();
                        debug!(%peer, "HTTP request head not received in time: connection closed");
                    }
                    Err(e) => debug!(%peer, error = %e, "HTTP connection ended"),
                    Ok(()) => {}
                }
                return;
            }
            () = tokio::time::sleep(wait) => {
                if activity.is_idle(Instant::now(), idle) {
                    metrics.http_timeouts.with_label_values(&[TIMEOUT_IDLE]).inc();
                    debug!(%peer, "HTTP connection idle: closed");
                    return;
                }
            }
            // A request was handled: the idle time counts from its last
            // byte, not from the next full period.
            () = activity.handled.notified() => {}
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The router as one connection's hyper service: each request carries the
/// peer's address (`ConnectInfo`, for per-address limits), a body that
/// fails when it stalls, and counts as in progress while it is handled.
struct PerConnection {
    app: TowerToHyperService<Router>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    idle: Duration,
    stalled: IntCounter,
}

impl hyper::service::Service<Request<Incoming>> for PerConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(|body| {
            Body::new(StallingBody {
                inner: body,
                limit: self.idle,
                timer: None,
                stalled: self.stalled.clone(),
            })
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let handling = Handling::enter(self.activity.clone());
        let response = self.app.call(req);
        Box::pin(async move {
            let response = response.await;
            drop(handling);
            response
        })
    }
}

/// A connection's activity: when bytes last moved either way and how many
/// requests are being handled.
struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last read or write of a byte.
    last_io: AtomicU64,
    handling: AtomicUsize,
    /// Told each time a request's handling ends.
    handled: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_io: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
            handled: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self, now: Instant) -> Duration {
        let last = self.opened + Duration::from_millis(self.last_io.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// Closed as idle: nothing moved for `idle` and no request is being
    /// handled (a handler at work is the node's wait, not the client's; a
    /// stalled body has its own timer).
    fn is_idle(&self, now: Instant, idle: Duration) -> bool {
        self.handling.load(Ordering::Relaxed) == 0 && self.silent_for(now) >= idle
    }

    /// How long until [`Activity::is_idle`] may first hold.
    fn idle_wait(&self, now: Instant, idle: Duration) -> Duration {
        if self.handling.load(Ordering::Relaxed) > 0 {
            idle
        } else {
            idle.saturating_sub(self.silent_for(now))
        }
    }
}

/// A request being handled (from its head to its response's start).
struct Handling(Arc<Activity>);

impl Handling {
    fn enter(activity: Arc<Activity>) -> Self {
        activity.handling.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
        self.0.handled.notify_one();
    }
}

/// A place under `http.max_connections`, and the gauge of open ones.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: IntGauge) -> Self {
        open.inc();
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An accepted stream that stamps its connection's [`Activity`] on every
/// byte read or written and holds its [`Slot`]: a WebSocket upgraded from
/// it takes the stream, and the slot, along.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl Tracked {
    fn new(stream: TcpStream, slot: Slot) -> Self {
        Self {
            stream,
            activity: Arc::new(Activity::new()),
            _slot: slot,
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A request body the client stopped sending.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
struct BodyStalled;

/// A request body that fails once the client has sent none of it for
/// `limit`: a handler waiting for it would otherwise hold its connection
/// (and its place under the cap) for as long as the client likes.
struct StallingBody {
    inner: Incoming,
    limit: Duration,
    /// Armed while a frame is awaited.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: IntCounter,
}

impl hyper::body::Body for StallingBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    this.stalled.inc();
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn metrics(registry: &Registry) -> impl IntoResponse + use<> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let encoder = TextEncoder::new();
    match encoder.encode(&registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            buf,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            b"metrics encoding failed\n".to_vec(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_connection_is_idle_only_when_silent_and_no_request_is_handled() {
        let idle = 10 * S;
        let a = Arc::new(Activity::new());
        let t0 = a.opened;
        // Silent since it opened.
        assert_eq!(a.idle_wait(t0 + 3 * S, idle), 7 * S);
        assert!(!a.is_idle(t0 + 9 * S, idle));
        assert!(a.is_idle(t0 + idle, idle));
        // A request in progress: the node's wait, never the client's.
        let handling = Handling::enter(a.clone());
        assert!(!a.is_idle(t0 + 60 * S, idle));
        assert_eq!(a.idle_wait(t0 + 60 * S, idle), idle);
        drop(handling);
        assert!(a.is_idle(t0 + 60 * S, idle));
        // A byte moved: the silence starts again.
        a.touch();
        let moved = Instant::now();
        assert!(!a.is_idle(moved + 9 * S, idle));
        assert!(a.is_idle(moved + idle, idle));
    }
}
