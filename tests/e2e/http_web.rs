//! The HTTP endpoint as a browser meets it: HTTPS with the node's own
//! rustls when a certificate is configured (plain HTTP refused on that
//! port), security headers on every answer, and no WebSocket opened by
//! another site's page (cross-site WebSocket hijacking: TEST-MATRIX D).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch};
use crate::sip_tls::{Pki, certs, provider};
use rustls::pki_types::ServerName;

const SUPERVISOR: &str = "web-supervisor-token-0123456789";

/// `GET path` over TLS to 127.0.0.1:`port`, trusting `ca`: the whole
/// answer (head and body).
fn https_get(port: u16, ca: &std::path::Path, path: &str) -> String {
    let mut tls = tls_connect(port, ca);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("request over TLS");
    let mut out = Vec::new();
    // A close without TLS close_notify ends the read too.
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS connection to the node's HTTPS port, checked against `ca`.
fn tls_connect(
    port: u16,
    ca: &std::path::Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("127.0.0.1").expect("name"),
    )
    .expect("client");
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A node serving HTTPS with a certificate for 127.0.0.1 from a test CA,
/// `extra` appended to its configuration.
fn https_node(scratch: &Scratch, extra: &str) -> (Pki, Node) {
    let pki = Pki::new(scratch);
    pki.leaf("node", "ca", "IP:127.0.0.1");
    let node = Node::start_toml(scratch, |sip, http| {
        let toml = NodeConfig::default().toml(sip, http).replacen(
            &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"),
            &format!(
                "[http]\nlisten = \"127.0.0.1:{http}\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
                pki.s("node.pem"),
                pki.s("node.key")
            ),
            1,
        );
        format!("{toml}{extra}")
    });
    (pki, node)
}

#[test]
fn https_serves_the_api_with_security_headers_and_refuses_plain_http() {
    let scratch = Scratch::new("https");
    let (pki, node) = https_node(
        &scratch,
        &format!(
            "\n[[api.tokens]]\nname = \"sup\"\ntoken = \"{SUPERVISOR}\"\nrole = \"supervisor\"\n"
        ),
    );
    assert!(node.logs().contains("https=true"), "{}", node.logs());
    let answer = https_get(node.http_port, &pki.path("ca.pem"), "/healthz");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
    assert_eq!(
        header(&answer, "strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(header(&answer, "x-content-type-options"), Some("nosniff"));
    assert!(
        header(&answer, "content-security-policy")
            .is_some_and(|v| v.contains("frame-ancestors 'none'")),
        "{answer}"
    );
    // WSS: the supervisors' WebSocket over the same TLS, the token in the
    // header; the queues' view arrives at once.
    {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("wss://127.0.0.1:{}/api/v1/queues/events", node.http_port)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {SUPERVISOR}").parse().expect("header"),
        );
        let tls = tls_connect(node.http_port, &pki.path("ca.pem"));
        let (mut ws, answer) = tungstenite::client(req, tls).expect("a WebSocket over TLS");
        assert_eq!(answer.status(), 101);
        let first = ws.read().expect("the queues' view");
        let view: serde_json::Value =
            serde_json::from_str(first.to_text().expect("text")).expect("JSON");
        assert!(view["queues"].is_array() && view["seq"].is_u64(), "{view}");
        let _ = ws.close(None);
    }
    // Plain HTTP on the HTTPS port gets no answer of the API.
    let mut plain = TcpStream::connect(("127.0.0.1", node.http_port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(
        !String::from_utf8_lossy(&out).contains("200 OK"),
        "plain HTTP answered on the HTTPS port"
    );
    // Counted (the metrics page is HTTPS too).
    let start = std::time::Instant::now();
    loop {
        let page = https_get(node.http_port, &pki.path("ca.pem"), "/metrics");
        if crate::common::metric_in(&page, "centralino_http_tls_failures_total") >= 1.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{page}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// HTTPS handshakes run on the HTTP runtime's workers (`http-N`), not on
/// the thread that accepts (`http`): desktops reconnecting by the
/// thousand after a blip are public-key work spread over the cores, and
/// the accepting thread stays free. Two clients at once until the workers
/// have spent 0.6 s of CPU (bounded in time).
#[test]
fn https_handshakes_run_on_the_http_workers() {
    let scratch = Scratch::new("https-workers");
    let (pki, node) = https_node(&scratch, "");
    let pid = node.pid();
    let sample = || crate::sip_io::by_thread(pid, crate::sip_io::cpu_in);
    let before = sample();
    assert!(before.iter().any(|t| t.1 == "http"), "the http thread");
    // (the accepting thread's ticks, the workers') since `before`
    let spent = |now: &[(u32, String, u64)]| {
        let d = crate::sip_io::ticks_between(&before, now);
        (
            crate::sip_io::ticks_of(&d, |_, name| name == "http"),
            crate::sip_io::ticks_of(&d, |_, name| name.starts_with("http-")),
        )
    };
    let start = std::time::Instant::now();
    let (port, ca) = (node.http_port, pki.path("ca.pem"));
    let mut now = (0, 0);
    while now.1 < 60 && start.elapsed() < Duration::from_secs(60) {
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..25 {
                        let answer = https_get(port, &ca, "/healthz");
                        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                    }
                });
            }
        });
        now = spent(&sample());
    }
    let (accepting, workers) = now;
    assert!(
        workers >= 60,
        "HTTPS requests cost the workers {workers} ticks (the accepting thread {accepting})"
    );
    assert!(
        accepting * 2 <= workers,
        "HTTPS requests cost the accepting thread {accepting} ticks, the workers {workers}"
    );
}

#[test]
fn a_websocket_from_another_sites_page_is_refused() {
    use tungstenite::client::IntoClientRequest;
    let scratch = Scratch::new("ws-origin");
    let node = Node::start_toml(&scratch, |sip, http| {
        format!(
            "{}\n[[api.tokens]]\nname = \"sup\"\ntoken = \"{SUPERVISOR}\"\nrole = \"supervisor\"\n",
            NodeConfig::default().toml(sip, http)
        )
    });
    let open = |origin: Option<&str>| {
        let mut req = format!("ws://127.0.0.1:{}/api/v1/queues/events", node.http_port)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {SUPERVISOR}").parse().expect("header"),
        );
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", o.parse().expect("header"));
        }
        tungstenite::connect(req)
    };
    // Another site's page, with the supervisor's credentials.
    match open(Some("https://evil.example")) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!(
            "a cross-site WebSocket was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(node.metric("centralino_http_cross_origin_total"), 1.0);
    // The node's own origin, and a client that is not a browser, open it.
    let own = format!("http://127.0.0.1:{}", node.http_port);
    let (mut ws, _) = open(Some(&own)).expect("the node's own page opens its WebSocket");
    let _ = ws.close(None);
    let (mut ws, _) = open(None).expect("a non-browser client opens it");
    let _ = ws.close(None);
    // Every answer carries the security headers, over plain HTTP too.
    let mut plain = TcpStream::connect(("127.0.0.1", node.http_port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(b"GET /api/v1/queues HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    let _ = plain.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert_eq!(header(&out, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&out, "strict-transport-security"), None);
}

/// One raw HTTP/1.1 request to 127.0.0.1:`port` with extra header lines:
/// the whole answer.
fn raw(port: u16, method: &str, path: &str, headers: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The desktop's session is a cookie no script can read, sent to the API
/// only and never from another site (SameSite=Strict); the API takes it
/// like a bearer token, and refuses a change it authenticates when the
/// request comes from another site's page (cross-site request forgery).
#[test]
fn the_desk_session_is_an_http_only_cookie_and_refuses_other_sites() {
    let scratch = Scratch::new("desk-cookie");
    let node = Node::start(&scratch, &NodeConfig::default());
    let port = node.http_port;
    let login = raw(
        port,
        "POST",
        "/api/v1/login",
        "",
        r#"{"username": "1001", "password": "demo1001"}"#,
    );
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let cookie = header(&login, "set-cookie").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/api", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().expect("name=value").to_owned();
    // The cookie opens the operator's desk like the token.
    let desk = raw(
        port,
        "GET",
        "/api/v1/agents/1001/call",
        &format!("Cookie: {session}\r\n"),
        "",
    );
    // (404: the operator is on no call; a session refused would be 401.)
    assert!(desk.starts_with("HTTP/1.1 404"), "{desk}");
    assert!(desk.contains("no call for this operator now"), "{desk}");
    let anonymous = raw(port, "GET", "/api/v1/agents/1001/call", "", "");
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    // A change authenticated by the cookie, from another site's page:
    // refused before it reaches the API.
    let forged = raw(
        port,
        "POST",
        "/api/v1/agents/1001/state",
        &format!("Cookie: {session}\r\nOrigin: https://evil.example\r\n"),
        r#"{"state": "paused"}"#,
    );
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    // From the node's own page it reaches the API (409: the operator's
    // phone is not registered, so there is no break to take).
    let own = raw(
        port,
        "POST",
        "/api/v1/agents/1001/state",
        &format!("Cookie: {session}\r\nOrigin: http://127.0.0.1:{port}\r\n"),
        r#"{"state": "paused"}"#,
    );
    assert!(own.starts_with("HTTP/1.1 409"), "{own}");
}

/// TEST-MATRIX D14: with `http.metrics_token_file`, `/metrics` (which
/// names every firm, queue and trunk) answers only the bearer of that
/// token — not another API token, an administrator's included — while
/// `/healthz` stays open for load balancers.
#[test]
fn metrics_need_their_token_when_one_is_configured() {
    let scratch = Scratch::new("metrics-token");
    let file = scratch.path("metrics.token");
    let token = "metrics-scrape-token-0123456789abcdef";
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let cfg = NodeConfig::default();
    let admin = "metrics-test-admin-token-0123456789";
    let node = Node::start_toml(&scratch, |sip, http| {
        cfg.toml(sip, http).replacen(
            "[http]\n",
            &format!("[http]\nmetrics_token_file = \"{}\"\n", file.display()),
            1,
        ) + &format!("\n[[api.tokens]]\nname = \"admin\"\ntoken = \"{admin}\"\nrole = \"admin\"\n")
    });
    for (who, bearer) in [
        ("nobody", None),
        (
            "a wrong token",
            Some("metrics-scrape-token-0123456789abcdeX"),
        ),
        ("a prefix of it", Some("metrics-scrape-token")),
        ("an administrator's API token", Some(admin)),
    ] {
        let (code, body) = node.http("GET", "/metrics", bearer, None);
        assert_eq!(code, 401, "{who}: {body}");
        assert!(!body.contains("centralino_"), "{who}: {body}");
    }
    let (code, body) = node.http("GET", "/metrics", Some(token), None);
    assert_eq!(code, 200);
    assert!(body.contains("centralino_calls_active"), "{body}");
    assert_eq!(node.http_get("/healthz").0, 200);
}
