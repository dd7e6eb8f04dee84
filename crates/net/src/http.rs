use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tracing::info;

use crate::health::{Health, Verdict};
use crate::sip::NetError;

/// Serves `/metrics` (Prometheus text format) and `/healthz` until the future
/// is dropped. Returns the bound address through `bound`.
///
/// `/healthz` answers `200 ok` while the node is healthy, else 503 with
/// the reason (`draining`, `starting`, `engine stalled`, `store down`,
/// `store stalled`): one line of plain text either way.
pub async fn serve_http(
    listen: SocketAddr,
    registry: Registry,
    api: Option<crate::api::Api>,
    health: Health,
    bound: tokio::sync::oneshot::Sender<SocketAddr>,
) -> Result<(), NetError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| NetError::Bind {
        addr: listen,
        source,
    })?;
    info!(addr = %local, "HTTP listening (/metrics, /healthz)");
    let _ = bound.send(local);
    let mut app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics(&registry) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let verdict = health.check(tokio::time::Instant::now().into_std());
                async move { healthz(verdict) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    if let Some(api) = api {
        app = app.merge(api.router());
    }
    // Bodies larger than the API accepts are refused before they are read.
    let app = app.layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY));
    // The peer's address reaches handlers (desk logins are throttled per
    // address).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|source| NetError::Io {
        what: "http",
        source,
    })
}

fn healthz(verdict: Verdict) -> impl IntoResponse + use<> {
    let code = if verdict == Verdict::Ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{}\n", verdict.as_str()))
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
