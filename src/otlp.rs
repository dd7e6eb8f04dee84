//! Each call's span to an OpenTelemetry collector (OTLP over HTTP, JSON),
//! when `[tracing] otlp_endpoint` is configured; off by default.
//!
//! The engine opens one `call` span per call (its id; the queue and the
//! outcome recorded as they are known). A layer of the subscriber keeps
//! those fields and, when the span closes with the call, hands it to a
//! bounded queue; a task on the HTTP thread posts them in batches. Nothing
//! waits on the collector: a full queue drops spans (counted), a collector
//! that refuses or is away costs a log line and a count. Spans carry no
//! number and no caller: the call's id, its queue and how it ended.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use centralino_config::Tracing;
use prometheus::IntCounterVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::warn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Spans waiting for the exporter; more are dropped (counted).
const QUEUE: usize = 8_192;
/// Spans per request at most.
const BATCH: usize = 256;
/// Longest a span waits for its batch.
const FLUSH: Duration = Duration::from_secs(2);
/// Connecting, writing and reading the answer, each at most.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Fields kept per span, and their lengths: bounded whatever is recorded.
const MAX_FIELDS: usize = 16;
const MAX_VALUE: usize = 256;

/// A finished call span.
pub(crate) struct Finished {
    start_ns: u64,
    end_ns: u64,
    fields: Vec<(&'static str, String)>,
}

/// Where finished spans go once the configuration turned export on.
pub(crate) struct Export {
    tx: mpsc::Sender<Finished>,
    spans: IntCounterVec,
}

/// The layer's end of the export, set once the configuration is read.
pub(crate) type Sink = Arc<OnceLock<Export>>;

/// The subscriber layer keeping `call` spans.
pub(crate) struct CallSpans {
    pub(crate) sink: Sink,
}

/// An open span's fields and start.
struct Open {
    start_ns: u64,
    fields: Vec<(&'static str, String)>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

struct Fields<'a>(&'a mut Vec<(&'static str, String)>);

impl Fields<'_> {
    fn set(&mut self, name: &'static str, mut value: String) {
        value.truncate(value.floor_char_boundary(MAX_VALUE));
        if let Some(f) = self.0.iter_mut().find(|(n, _)| *n == name) {
            f.1 = value;
        } else if self.0.len() < MAX_FIELDS {
            self.0.push((name, value));
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for CallSpans
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "call" || self.sink.get().is_none() {
            return;
        }
        let mut open = Open {
            start_ns: now_ns(),
            fields: Vec::new(),
        };
        attrs.record(&mut Fields(&mut open.fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(open);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(open) = span.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(&mut open.fields));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let Some(export) = self.sink.get() else {
            return;
        };
        let done = Finished {
            start_ns: open.start_ns,
            end_ns: now_ns(),
            fields: open.fields,
        };
        if export.tx.try_send(done).is_err() {
            export.spans.with_label_values(&["dropped"]).inc();
        }
    }
}

/// Turns export on: spans closing from now on go to `config`'s collector,
/// counted in `spans` (`centralino_otlp_spans_total{outcome}`). Spawns the
/// exporter on the current runtime.
pub(crate) fn start(sink: &Sink, config: Tracing, spans: IntCounterVec) {
    let (tx, rx) = mpsc::channel(QUEUE);
    if sink
        .set(Export {
            tx,
            spans: spans.clone(),
        })
        .is_ok()
    {
        tokio::spawn(export(rx, config, spans));
    }
}

async fn export(mut rx: mpsc::Receiver<Finished>, config: Tracing, spans: IntCounterVec) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let flush = tokio::time::sleep(FLUSH);
        tokio::pin!(flush);
        while batch.len() < BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                () = &mut flush => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&config.service_name, &batch);
        batch.clear();
        match post(&config, &body).await {
            Ok(code) if (200..300).contains(&code) => {
                spans.with_label_values(&["sent"]).inc_by(n);
            }
            Ok(code) => {
                warn!(
                    code,
                    spans = n,
                    "the OpenTelemetry collector refused call spans"
                );
                spans.with_label_values(&["failed"]).inc_by(n);
            }
            Err(e) => {
                warn!(error = %e, spans = n, "the OpenTelemetry collector cannot be reached");
                spans.with_label_values(&["failed"]).inc_by(n);
            }
        }
    }
}

/// One POST, `Connection: close`; the answer's status code.
async fn post(config: &Tracing, body: &str) -> std::io::Result<u16> {
    let timed = |what| std::io::Error::new(std::io::ErrorKind::TimedOut, what);
    let mut conn = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(&config.addr))
        .await
        .map_err(|_| timed("connecting"))??;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: Centralino\r\n\r\n{body}",
        config.path,
        config.host,
        body.len()
    );
    tokio::time::timeout(TIMEOUT, conn.write_all(request.as_bytes()))
        .await
        .map_err(|_| timed("sending"))??;
    // The status line, `HTTP/1.1 200 OK`, however the answer is split
    // into reads; at most 256 bytes of it.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    let read_line = async {
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 256 {
            let n = conn.read(&mut buf[..256 - head.len()]).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(())
    };
    tokio::time::timeout(TIMEOUT, read_line)
        .await
        .map_err(|_| timed("waiting for the answer"))??;
    status_code(&head)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

/// The status code of an HTTP/1.x status line (up to its CRLF).
fn status_code(head: &[u8]) -> Option<u16> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let mut words = line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?;
    (code.len() == 3)
        .then(|| code.parse().ok())
        .flatten()
        .filter(|c| (100..600).contains(c))
}

/// A random 64-bit value (trace and span ids need uniqueness, not
/// secrecy: std's per-call random hasher keys give it).
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.finish()
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The OTLP/JSON request for `spans` (ExportTraceServiceRequest; ids in
/// hex, times in nanoseconds as strings, as the OTLP JSON mapping says).
fn encode(service: &str, spans: &[Finished]) -> String {
    let mut out = String::with_capacity(256 + spans.len() * 320);
    let _ = write!(
        out,
        "{{\"resourceSpans\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"service.name\",\"value\":{{\"stringValue\":{}}}}}]}},\"scopeSpans\":[{{\"scope\":{{\"name\":\"centralino\"}},\"spans\":[",
        quoted(service)
    );
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"traceId\":\"{:016x}{:016x}\",\"spanId\":\"{:016x}\",\"name\":\"call\",\"kind\":2,\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
            random(),
            random(),
            random(),
            s.start_ns,
            s.end_ns.max(s.start_ns)
        );
        for (j, (k, v)) in s.fields.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"key\":{},\"value\":{{\"stringValue\":{}}}}}",
                quoted(k),
                quoted(v)
            );
        }
        out.push_str("]}");
    }
    out.push_str("]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_comes_from_a_whole_status_line() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 OK\r\nContent-Length: 0"),
            Some(200)
        );
        assert_eq!(status_code(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        // Cut before its end (a short read): not yet an answer.
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b"SIP/2.0 200 OK\r\n"), None);
        assert_eq!(status_code(b"\r\n"), None);
    }

    #[test]
    fn the_request_is_otlp_json() {
        let spans = [Finished {
            start_ns: 1,
            end_ns: 2,
            fields: vec![("call", "c1".into()), ("queue", "in\"fo\n".into())],
        }];
        let body = encode("centralino", &spans);
        assert!(
            body.starts_with(
                "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\""
            ),
            "{body}"
        );
        assert!(
            body.contains(
                "\"name\":\"call\",\"kind\":2,\"startTimeUnixNano\":\"1\",\"endTimeUnixNano\":\"2\""
            ),
            "{body}"
        );
        assert!(
            body.contains("{\"key\":\"queue\",\"value\":{\"stringValue\":\"in\\\"fo\\u000a\"}}"),
            "{body}"
        );
        assert!(body.ends_with("]}]}]}]}"), "{body}");
        let a = body.split("\"traceId\":\"").nth(1).unwrap();
        assert!(a[..32].bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert_ne!(random(), random());
    }
}
