//! What every HTTP answer carries for a browser, and who may open a
//! WebSocket: HTTPS with rustls when `http.tls_cert_file` is set (the
//! same aws-lc-rs provider as SIP over TLS), security headers on every
//! response, and an Origin check on every WebSocket handshake, so a page
//! on another site cannot open an operator's or supervisor's socket with
//! their credentials (cross-site WebSocket hijacking).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use tokio_rustls::rustls;

use crate::error::NetError;
use crate::metrics::NetMetrics;

/// The HTTP listener's TLS configuration.
pub type TlsConfig = Arc<rustls::ServerConfig>;

/// The HTTP listener's TLS configuration (HTTP/1.1 only, TLS 1.2 and 1.3).
pub fn tls_config(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<TlsConfig, NetError> {
    let certs = crate::tls::load_certs(cert_file)?;
    let key = crate::tls::load_key(key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(crate::tls::VERSIONS)
        .map_err(|e| NetError::tls(cert_file, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| NetError::tls(key_file, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who may open a WebSocket, and whether the endpoint is HTTPS.
#[derive(Clone, Debug, Default)]
pub struct WebPolicy {
    /// Served over TLS: `Strict-Transport-Security` is sent.
    pub tls: bool,
    /// Origins allowed besides the endpoint's own (`http.allowed_origins`,
    /// e.g. a desktop served from another host of the firm).
    pub origins: Vec<String>,
    /// The bearer token `/metrics` asks for (`http.metrics_token_file`);
    /// `None`: open.
    pub metrics_token: Option<String>,
}

impl WebPolicy {
    /// The policy of `[http]` for an endpoint on `listen` (HTTPS or not):
    /// `/metrics`'s token read from its file, or none (open), with a
    /// warning when the endpoint is reachable beyond loopback.
    pub fn new(
        http: &centralino_config::HttpWeb,
        listen: std::net::SocketAddr,
        tls: bool,
    ) -> Result<Self, String> {
        let metrics_token = match &http.metrics_token_file {
            Some(file) => Some(metrics_token(file)?),
            None => {
                if !listen.ip().is_loopback() {
                    tracing::warn!(listen = %listen, "/metrics is open to whoever reaches http.listen: set http.metrics_token_file (the figures name every firm, queue and trunk)");
                }
                None
            }
        };
        Ok(Self {
            tls,
            origins: http.allowed_origins.clone(),
            metrics_token,
        })
    }
}

/// The token in `file` for `/metrics` (`http.metrics_token_file`): its
/// content without surrounding white space, at least 16 bytes of printable
/// ASCII without spaces (what goes in an `Authorization` header).
fn metrics_token(file: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("http.metrics_token_file {}: {e}", file.display()))?;
    let token = text.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "http.metrics_token_file {}: at least 16 printable characters without spaces (e.g. `openssl rand -hex 32`)",
            file.display()
        ));
    }
    Ok(token.to_owned())
}

impl WebPolicy {
    /// Whether a WebSocket handshake with these headers may proceed: no
    /// `Origin` (not a browser: nothing to hijack), the endpoint's own
    /// origin (the `Host` it was asked for, with the endpoint's scheme),
    /// or one configured.
    pub fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return true;
        }
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let scheme = if self.tls { "https" } else { "http" };
        origin
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|h| h.eq_ignore_ascii_case(host))
    }
}

/// The security headers every response carries. The API answers JSON and
/// plain text only: nothing may be framed, sniffed or loaded from it.
fn secure(headers: &mut HeaderMap, tls: bool) {
    let set = |h: &mut HeaderMap, name: header::HeaderName, v: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(v));
    };
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    set(headers, header::CACHE_CONTROL, "no-store");
    if tls {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000",
        );
    }
}

/// Over HTTPS, every cookie set travels over HTTPS only.
fn secure_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if cookies.is_empty() {
        return;
    }
    headers.remove(header::SET_COOKIE);
    for c in cookies {
        let secured = match c.to_str() {
            Ok(t) if !t.to_ascii_lowercase().contains("; secure") => {
                HeaderValue::from_str(&format!("{t}; Secure")).unwrap_or(c)
            }
            _ => c,
        };
        headers.append(header::SET_COOKIE, secured);
    }
}

/// The guard in front of every route.
pub(crate) async fn guard(
    State((policy, metrics)): State<(Arc<WebPolicy>, NetMetrics)>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    // A request the browser authenticates by itself (the session cookie,
    // no Authorization header) that changes something: only from the
    // node's own pages (defence besides the cookie's SameSite=Strict).
    let unsafe_method = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let by_cookie = !req.headers().contains_key(header::AUTHORIZATION)
        && crate::api::session_cookie(req.headers()).is_some();
    let mut resp = if (upgrade || (unsafe_method && by_cookie)) && !policy.origin_ok(req.headers())
    {
        metrics.http_cross_origin.inc();
        tracing::warn!(path = %path_for_log(req.uri().path()), websocket = upgrade, "request from another site's page refused (Origin not allowed)");
        (
            StatusCode::FORBIDDEN,
            "cross-site request refused: Origin not allowed (http.allowed_origins)\n",
        )
            .into_response()
    } else {
        next.run(req).await
    };
    if policy.tls {
        secure_cookies(resp.headers_mut());
    }
    secure(resp.headers_mut(), policy.tls);
    resp
}

/// A request's path for a log line: a segment holding six digits or more
/// (a phone number, `/api/v1/dnc/+39…`, however it is encoded: `%2B39…`)
/// masked like every number in the logs.
fn path_for_log(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.bytes().filter(u8::is_ascii_digit).count() >= 6 {
                centralino_types::Masked(seg).to_string()
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn a_number_in_a_logged_path_is_masked() {
        assert_eq!(
            path_for_log("/api/v1/dnc/+393331234567"),
            "/api/v1/dnc/**********567"
        );
        assert_eq!(
            path_for_log("/api/v1/dnc/%2B393331234567"),
            "/api/v1/dnc/************567"
        );
        assert_eq!(
            path_for_log("/api/v1/agents/1001/monitor"),
            "/api/v1/agents/1001/monitor"
        );
    }

    #[test]
    fn only_the_endpoints_own_origin_or_a_configured_one_opens_a_websocket() {
        let http = WebPolicy::default();
        assert!(
            http.origin_ok(&headers(None, "127.0.0.1:8080")),
            "not a browser"
        );
        assert!(http.origin_ok(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")));
        assert!(!http.origin_ok(&headers(Some("http://evil.example"), "127.0.0.1:8080")));
        assert!(!http.origin_ok(&headers(Some("http://127.0.0.1:8081"), "127.0.0.1:8080")));
        assert!(!http.origin_ok(&headers(Some("null"), "127.0.0.1:8080")));
        // A look-alike host is not the host.
        assert!(!http.origin_ok(&headers(
            Some("http://127.0.0.1:8080.evil.example"),
            "127.0.0.1:8080"
        )));
        let https = WebPolicy {
            tls: true,
            origins: vec!["https://desk.asl.example".into()],
            metrics_token: None,
        };
        assert!(
            !https.origin_ok(&headers(Some("http://cc.example"), "cc.example")),
            "scheme"
        );
        assert!(https.origin_ok(&headers(Some("https://cc.example"), "cc.example")));
        assert!(https.origin_ok(&headers(Some("https://desk.asl.example"), "cc.example")));
    }

    #[test]
    fn every_response_carries_the_security_headers() {
        let mut h = HeaderMap::new();
        secure(&mut h, true);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        assert!(h.contains_key(header::STRICT_TRANSPORT_SECURITY));
        let mut h = HeaderMap::new();
        secure(&mut h, false);
        assert!(!h.contains_key(header::STRICT_TRANSPORT_SECURITY));
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("centralino_session=x; Path=/api; HttpOnly"),
        );
        secure_cookies(&mut h);
        assert_eq!(
            h[header::SET_COOKIE],
            "centralino_session=x; Path=/api; HttpOnly; Secure"
        );
    }
}
