//! The HTTP endpoint against slow and flooding clients (`[http]`
//! header_timeout_seconds, idle_timeout_seconds, max_connections): a
//! request head that never completes is cut at the header timeout, a
//! silent keep-alive and a stalled body at the idle timeout, connections
//! past the cap are closed at once while the others work, and `/metrics`
//! and the API answer during a slowloris below the cap. Raw TCP on
//! 127.0.0.1 against the real binary.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Node, NodeConfig, Scratch};

const TOKEN: &str = "http-limits-admin-token-0123";

/// A node with one operator, an admin token and `http` added to `[http]`.
fn node(scratch: &Scratch, http: &str) -> Node {
    let cfg = NodeConfig {
        agents: 1,
        ..NodeConfig::default()
    };
    Node::start_toml(scratch, |sip, port| {
        format!(
            "{}\n[[api.tokens]]\nname = \"ops\"\ntoken = \"{TOKEN}\"\nrole = \"admin\"\n",
            cfg.toml(sip, port)
                .replacen("[http]\n", &format!("[http]\n{http}"), 1)
        )
    })
}

fn connect(node: &Node) -> TcpStream {
    TcpStream::connect(("127.0.0.1", node.http_port)).expect("connect http")
}

/// Reads (and drops) whatever comes until the node closes the connection:
/// false if it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let Some(left) = limit.checked_sub(start.elapsed()).filter(|l| !l.is_zero()) else {
            return false;
        };
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// One request on a connection kept alive: (status, body).
fn request(s: &mut TcpStream, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"
    )
    .expect("write");
    response(s)
}

/// One response (Content-Length framed): (status, body).
fn response(s: &mut TcpStream) -> (u16, String) {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let (head, mut body) = loop {
        let n = s.read(&mut buf).expect("a response");
        assert!(n > 0, "closed before a response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((h, b)) = text.split_once("\r\n\r\n") {
            break (h.to_owned(), b.to_owned());
        }
    };
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("Content-Length");
    while body.len() < len {
        let n = s.read(&mut buf).expect("the body");
        assert!(n > 0, "closed in the body");
        body.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (status, body)
}

fn series(metrics: &str, name: &str) -> f64 {
    crate::common::series_in(metrics, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn a_request_head_that_never_completes_is_cut_at_the_header_timeout() {
    let scratch = Scratch::new("http-header");
    // The idle timeout is far away: only the header timeout can act.
    let node = node(
        &scratch,
        "header_timeout_seconds = 2\nidle_timeout_seconds = 600\n",
    );
    // Half a request line, then nothing.
    let mut half = connect(&node);
    half.write_all(b"GET /metr").unwrap();
    // A header line every 200 ms, never the blank line: never silent,
    // never done.
    let drip = connect(&node);
    let mut writer = drip.try_clone().unwrap();
    let dripping = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for i in 0..100 {
            if writer
                .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut drip = drip;
    assert!(
        closed_within(&mut half, Duration::from_secs(10)),
        "a half-sent request line must be cut"
    );
    assert!(
        closed_within(&mut drip, Duration::from_secs(10)),
        "a head dripping line by line must be cut"
    );
    drop(drip);
    dripping.join().unwrap();
    assert_eq!(
        node.metric("centralino_http_timeouts_total{reason=\"header\"}"),
        2.0
    );
    assert_eq!(node.http_get("/healthz"), (200, "ok\n".to_owned()));
}

#[test]
fn connections_past_the_cap_are_closed_at_once_while_the_others_work() {
    let scratch = Scratch::new("http-cap");
    let node = node(
        &scratch,
        "max_connections = 4\nheader_timeout_seconds = 60\nidle_timeout_seconds = 60\n",
    );
    // Four connections, each served once (so each holds its place).
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect(&node)).collect();
    for s in &mut held {
        assert_eq!(request(s, "GET", "/healthz", None).0, 200);
    }
    // The fifth is closed before a byte is read.
    let mut fifth = connect(&node);
    let _ = fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(
        closed_within(&mut fifth, Duration::from_secs(10)),
        "past the cap"
    );
    // The four still work: the metrics and an API call over them.
    let (code, metrics) = request(&mut held[0], "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(series(&metrics, "centralino_http_connections"), 4.0);
    assert_eq!(
        series(&metrics, "centralino_http_connections_refused_total"),
        1.0
    );
    assert_eq!(
        request(&mut held[1], "GET", "/api/v1/queues", Some(TOKEN)).0,
        200
    );
    // One leaves: its place is free again.
    drop(held.pop());
    let start = Instant::now();
    while series(
        &request(&mut held[0], "GET", "/metrics", None).1,
        "centralino_http_connections",
    ) > 3.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the place stays taken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut another = connect(&node);
    assert_eq!(request(&mut another, "GET", "/healthz", None).0, 200);
    let (_, metrics) = request(&mut held[0], "GET", "/metrics", None);
    assert_eq!(
        series(&metrics, "centralino_http_connections_refused_total"),
        1.0
    );
}

#[test]
fn metrics_and_the_api_answer_during_a_slowloris_below_the_cap() {
    let scratch = Scratch::new("http-slowloris");
    const SLOW: usize = 40;
    let node = node(
        &scratch,
        "max_connections = 64\nheader_timeout_seconds = 5\nidle_timeout_seconds = 600\n",
    );
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|i| {
            let mut s = connect(&node);
            write!(
                s,
                "POST /api/v1/callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{i}: "
            )
            .unwrap();
            s
        })
        .collect();
    // Every slow connection is open (and this one): the endpoint still
    // answers, on fresh connections.
    let metrics = node.metrics();
    assert_eq!(
        series(&metrics, "centralino_http_connections"),
        (SLOW + 1) as f64
    );
    let (code, body) = node.http("GET", "/api/v1/queues", Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(node.http_get("/healthz").0, 200);
    // Each is cut at the header timeout; none is left.
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(15)),
            "a slow head stays"
        );
    }
    assert_eq!(
        node.metric("centralino_http_timeouts_total{reason=\"header\"}"),
        SLOW as f64
    );
    // The scrape's own connection; the last one's close may still be on
    // its way to the endpoint (ci247 read 2 once).
    node.wait_metric("centralino_http_connections", Duration::from_secs(5), |v| {
        v == 1.0
    });
    assert_eq!(
        node.metric("centralino_http_connections_refused_total"),
        0.0
    );
}

#[test]
fn silent_keep_alives_and_stalled_bodies_are_closed_at_the_idle_timeout() {
    let scratch = Scratch::new("http-idle");
    // The header timeout is far away: only the idle timeout can act.
    let node = node(
        &scratch,
        "header_timeout_seconds = 300\nidle_timeout_seconds = 1\n",
    );
    // An operator's desk WebSocket: upgraded, out of the idle timer's hands.
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/agents/1001/events",
        node.http_port
    );
    let mut ws = crate::common::ws_connect(&url, TOKEN);
    let first = ws.read().expect("the desk's current state");
    assert!(first.is_text(), "{first:?}");

    // A keep-alive connection, served once, then silent.
    let mut kept = connect(&node);
    assert_eq!(request(&mut kept, "GET", "/healthz", None).0, 200);
    assert!(
        closed_within(&mut kept, Duration::from_secs(10)),
        "an idle keep-alive must be closed"
    );

    // A body that stops: the request fails, the connection closes.
    let mut stalled = connect(&node);
    write!(
        stalled,
        "POST /api/v1/callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"queue\": \"info\""
    )
    .unwrap();
    assert_eq!(response(&mut stalled).0, 400);
    assert!(closed_within(&mut stalled, Duration::from_secs(10)));

    // The desk, silent all along, still answers.
    ws.send(tungstenite::Message::Ping(b"still there".to_vec().into()))
        .expect("ping");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    loop {
        match ws.read().expect("the desk's WebSocket stays open") {
            tungstenite::Message::Pong(p) => {
                assert_eq!(&p[..], b"still there");
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(
        node.metric("centralino_http_timeouts_total{reason=\"idle\"}"),
        1.0
    );
    assert_eq!(
        node.metric("centralino_http_timeouts_total{reason=\"body\"}"),
        1.0
    );
    assert_eq!(node.metric("centralino_desk_connections"), 1.0);
}
