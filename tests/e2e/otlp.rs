//! Calls' spans to an OpenTelemetry collector (`[tracing] otlp_endpoint`),
//! off by default. No collector is packaged in Debian 12, so the test
//! plays one: an HTTP listener that takes OTLP/HTTP JSON posts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{Node, Scratch, trunk_to};

/// Takes posts on `listener` (until the test ends), sending each request
/// line and body to `out`; answers 200.
fn collector(listener: TcpListener, out: mpsc::Sender<(String, String)>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if out
                .send((
                    line.trim().to_owned(),
                    String::from_utf8_lossy(&body).into(),
                ))
                .is_err()
            {
                return;
            }
        }
    });
}

/// A caller gives up in queue `info`: the collector gets the call's span
/// (OTLP JSON: the resource's `service.name`, the span `call` with its id,
/// queue and outcome), and nothing of the caller's number.
#[test]
fn a_calls_span_reaches_the_collector_without_the_number() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("collector");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    collector(listener, tx);
    let scratch = Scratch::new("otlp");
    let node = Node::start_toml(&scratch, |sip, http| {
        format!(
            r#"[sip]
listen = ["127.0.0.1:{sip}"]

[http]
listen = "127.0.0.1:{http}"

[tracing]
otlp_endpoint = "http://127.0.0.1:{port}/collector"
service_name = "centralino-test"

[[tenants]]
name = "asl"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
dids = {{ "100" = "info" }}

[[queues]]
name = "info"
tenant = "asl"

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
queues = ["info"]
"#
        )
    });
    let mut caller = trunk_to(
        &scratch,
        &node,
        "gives-up",
        "trunk_cancel.xml",
        &["-m", "1", "-d", "1000"],
    );
    caller.expect_success(Duration::from_secs(20));
    let (line, body) = rx.recv_timeout(Duration::from_secs(20)).expect("a post");
    assert_eq!(line, "POST /collector/v1/traces HTTP/1.1");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let resource = &v["resourceSpans"][0];
    assert_eq!(
        resource["resource"]["attributes"][0]["value"]["stringValue"],
        "centralino-test"
    );
    let span = &resource["scopeSpans"][0]["spans"][0];
    assert_eq!(span["name"], "call");
    assert_eq!(span["traceId"].as_str().unwrap().len(), 32);
    let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(
        end >= start + 900_000_000,
        "the caller waited a second: {start}..{end}"
    );
    let attr = |k: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"]["stringValue"].as_str().unwrap().to_owned())
    };
    assert_eq!(attr("call").as_deref(), Some("c1"), "{span}");
    assert_eq!(attr("queue").as_deref(), Some("info"), "{span}");
    assert_eq!(attr("outcome").as_deref(), Some("cancelled"), "{span}");
    assert!(!body.contains("33300"), "no number leaves: {body}");
    node.wait_metric(
        "centralino_otlp_spans_total{outcome=\"sent\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
}
