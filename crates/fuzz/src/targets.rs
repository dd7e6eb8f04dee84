//! One function per parser. Each takes arbitrary bytes, must never panic,
//! and returns a fingerprint of the outcome (which verdict, which fields
//! came out) that the runner uses to keep inputs that reached something
//! new. Where a parser has a property cheap to state, it is checked too
//! (a message the SIP guard accepted parses again after serialisation).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use centralino_flows::calendar::UnixSeconds;
use centralino_flows::{Context, Facts, RawFlow, Run};
use centralino_media::g711::{self, Law};
use centralino_media::leg::{Latch, Leg};
use centralino_media::relay::{self, CallMedia, Side};
use centralino_media::{dtmf, prompt, rtp, sdp};
use centralino_routing::{Catalog, Requirement};
use centralino_sip::auth::{self, Algorithm, Credentials, DigestAuth};
use centralino_sip::{Framed, Limits, Message, StreamFramer, parse_datagram, parse_message, uri};

/// Hashes the parts of an outcome.
fn fp(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Small values in coarse buckets (0, 1, 2-3, 4-7, ...), so a count does
/// not make every input look new.
fn bucket(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

/// Caps so small that ordinary inputs reach them.
fn tight_limits() -> Limits {
    Limits {
        max_message_bytes: 600,
        max_headers: 8,
        max_header_line_bytes: 80,
        max_body_bytes: 64,
    }
}

/// Caps for re-parsing our own serialisation (compact header names grow
/// into long ones, so the original caps could refuse it).
fn roomy_limits() -> Limits {
    Limits {
        max_message_bytes: 1 << 22,
        max_headers: 1 << 16,
        max_header_line_bytes: 1 << 22,
        max_body_bytes: 1 << 22,
    }
}

/// A message the guard accepted must serialise into one it accepts again,
/// with the same essential fields (the B2BUA relays and answers from them).
fn check_round_trip(m: &Message) -> u64 {
    let bytes = m.to_bytes();
    let again = match parse_message(&bytes, &roomy_limits(), false) {
        Ok(a) => a,
        Err(r) => panic!(
            "accepted message does not parse after serialisation ({:?}): {:?}",
            r.error,
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(again.start, m.start, "start line changed");
    assert_eq!(again.call_id, m.call_id, "Call-ID changed");
    assert_eq!(
        (again.cseq, &again.cseq_method),
        (m.cseq, &m.cseq_method),
        "CSeq changed"
    );
    assert_eq!(
        (&again.from_tag, &again.to_tag),
        (&m.from_tag, &m.to_tag),
        "tags changed"
    );
    assert_eq!(again.via, m.via, "top Via changed");
    assert_eq!(again.body, m.body, "body changed");
    assert_eq!(again.headers, m.headers, "headers changed");
    fp((
        "msg",
        m.method().label(),
        m.code() / 100,
        bucket(m.headers.len()),
        bucket(m.body.len()),
        m.from_tag.is_some(),
        m.to_tag.is_some(),
        m.max_forwards.is_some(),
        m.via.branch.starts_with("rfc2543."),
    ))
}

fn framed_outcome(r: &Result<Framed, centralino_sip::guard::Rejection>) -> u64 {
    match r {
        Ok(Framed::Keepalive) => fp("keepalive"),
        Ok(Framed::Message(m)) => check_round_trip(m),
        Err(rej) => {
            if let Some(reply) = &rej.reply {
                // The refusal is sent back as it is: it must serialise.
                let _ = reply.to_bytes();
            }
            fp((
                "refused",
                std::mem::discriminant(&rej.error),
                rej.reply.as_ref().map(|r| r.code()),
            ))
        }
    }
}

/// SIP over UDP: [`parse_datagram`] under the default caps and under tight
/// ones; accepted messages must survive serialisation.
pub fn sip(data: &[u8]) -> u64 {
    let a = framed_outcome(&parse_datagram(data, &Limits::default()));
    let b = framed_outcome(&parse_datagram(data, &tight_limits()));
    fp((a, b))
}

/// SIP over TCP: the bytes after the first go through a [`StreamFramer`]
/// in pieces (the first byte picks the piece size and the caps), every
/// complete message taken out as the driver does. The framer must hold
/// no more than `max_message_bytes` when it asks for more data, and always
/// make progress.
pub fn sip_stream(data: &[u8]) -> u64 {
    let (&ctl, rest) = data.split_first().unwrap_or((&0, &[]));
    let piece = match ctl & 3 {
        0 => rest.len().max(1),
        1 => 1,
        2 => 1 + usize::from(ctl >> 2),
        _ => 1400,
    };
    let limits = if ctl & 0x80 != 0 {
        tight_limits()
    } else {
        Limits::default()
    };
    let mut framer = StreamFramer::default();
    // The distinct outcomes, not their sequence: a stream of many
    // messages must not look new for its order alone.
    let mut outcomes = vec![fp(ctl & 0x83)];
    'stream: for chunk in rest.chunks(piece) {
        framer.push(chunk);
        for step in 0.. {
            assert!(step <= rest.len() + 1, "the framer makes no progress");
            let before = framer.buffered();
            match framer.next_message(&limits) {
                Ok(None) => {
                    assert!(
                        framer.buffered() <= limits.max_message_bytes,
                        "framer holds {} bytes, over the {} cap",
                        framer.buffered(),
                        limits.max_message_bytes
                    );
                    break;
                }
                Ok(Some(f)) => {
                    assert!(framer.buffered() < before, "a frame consumed nothing");
                    outcomes.push(framed_outcome(&Ok(f)));
                }
                Err(rej) => {
                    let breaks = rej.error.breaks_framing();
                    outcomes.push(framed_outcome(&Err(rej)));
                    if breaks {
                        // The driver closes the connection.
                        break 'stream;
                    }
                }
            }
        }
    }
    outcomes.sort_unstable();
    outcomes.dedup();
    fp(outcomes)
}

/// The fixed secret of the auth target: its first nonce is known, so the
/// seeds can carry valid answers and mutations reach the checks behind
/// the parse.
pub const AUTH_SECRET: [u8; 32] = [7; 32];
/// The realm of the auth target.
pub const AUTH_REALM: &str = "centralino";
/// The address the auth target's nonce was issued to (and answered from).
pub const AUTH_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 21));

/// A digest authenticator in the auth target's state, with the nonce of
/// its one challenge.
pub fn auth_fixture(now: Instant) -> (DigestAuth, String) {
    let mut a = DigestAuth::new(
        AUTH_REALM,
        vec![Algorithm::Sha256, Algorithm::Md5],
        AUTH_SECRET,
        Duration::from_secs(300),
    );
    let ch = a.challenge(now, AUTH_CLIENT, false);
    let nonce = ch[0]
        .split("nonce=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_owned();
    (a, nonce)
}

/// Digest credentials: [`auth::parse_authorization`] on the text, then the
/// registrar's whole check ([`DigestAuth::verify`]) with one or two
/// Authorization values (split at the first line break).
pub fn sip_auth(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let parsed = auth::parse_authorization(&text);
    let now = Instant::now();
    let (mut a, _) = auth_fixture(now);
    let values: Vec<&str> = text.splitn(2, '\n').collect();
    let lookup =
        |u: &str| (u == "1001").then(|| Credentials::from_password(u, AUTH_REALM, "demo1001"));
    let verdict = a.verify(
        now,
        AUTH_CLIENT,
        "REGISTER",
        "sip:centralino",
        values.iter().copied(),
        lookup,
    );
    // A replay of the same values must never be accepted twice.
    let again = a.verify(
        now,
        AUTH_CLIENT,
        "REGISTER",
        "sip:centralino",
        values.iter().copied(),
        lookup,
    );
    if let auth::Verdict::Ok(..) = verdict {
        assert!(
            !matches!(again, auth::Verdict::Ok(..)),
            "the same nonce-count was accepted twice"
        );
    }
    fp((
        parsed.as_ref().map(|d| {
            (
                d.algorithm.is_some(),
                d.qop.is_some(),
                d.nc.is_some(),
                d.cnonce.is_some(),
            )
        }),
        std::mem::discriminant(&verdict),
    ))
}

/// Addresses and URIs: [`uri::parse_name_addr`] on the value and on each
/// element of it as a list, plus the URI helpers the B2BUA routes with.
pub fn sip_uri(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    for v in std::iter::once(&*text).chain(uri::split_list(&text)) {
        let na = uri::parse_name_addr(v);
        let _ = uri::name_addr_param(v, "tag");
        // The guard's readings without a parameter list agree with it on
        // every value, refused ones included.
        assert_eq!(
            uri::is_name_addr(v),
            na.is_some(),
            "is_name_addr differs from parse_name_addr on {v:?}"
        );
        assert_eq!(
            uri::name_addr_tag(v),
            na.as_ref().map(|n| n.param("tag")),
            "name_addr_tag differs from parse_name_addr on {v:?}"
        );
        if let Some(na) = &na {
            if na.uri != "*" {
                assert!(
                    uri::classify(na.uri).is_some(),
                    "parse_name_addr kept a URI that classify refuses: {:?}",
                    na.uri
                );
            }
            let _ = (na.param("tag"), na.param("expires"), na.display);
            // The light reading (dialog tags) agrees wherever the full
            // parse accepts.
            for name in ["tag", "expires", "lr"] {
                assert_eq!(
                    uri::name_addr_param(v, name),
                    na.param(name),
                    "name_addr_param differs from parse_name_addr on {v:?}"
                );
            }
            let _ = (uri::user(na.uri), uri::host_port(na.uri));
        }
        out.push((
            na.as_ref()
                .map(|n| (n.display.is_some(), bucket(n.params.len()))),
            uri::classify(v).map(|s| s as u8),
        ));
        if out.len() > 8 {
            break;
        }
    }
    out.sort_unstable();
    out.dedup();
    let first = uri::first_of_list(&text);
    assert!(text.contains(first), "first_of_list invented text");
    let _ = (
        uri::has_headers(&text),
        uri::user(&text),
        uri::host_port(&text),
        uri::parse_params(&text).map(|p| p.len()),
    );
    fp(out)
}

/// SDP: [`sdp::parse`] and the rewrite for the other leg (IPv4 and IPv6).
/// A body that parses must, once rewritten, parse to Centralino's address,
/// port and formats.
pub fn sdp(data: &[u8]) -> u64 {
    let parsed = sdp::parse(data);
    let ours: [(IpAddr, u16); 2] = [
        (IpAddr::from([203, 0, 113, 9]), 30_000),
        (
            "2001:db8::9".parse().unwrap_or(IpAddr::from([0; 16])),
            30_002,
        ),
    ];
    let formats = [8, 0, 101];
    for (addr, port) in ours {
        let rewritten = sdp::rewrite(data, addr, port, &formats);
        if parsed.is_ok() {
            let body = rewritten.expect("a body that parses must rewrite");
            let back = sdp::parse(&body).unwrap_or_else(|e| {
                panic!(
                    "rewritten body does not parse ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            assert_eq!(
                (back.addr, back.port, back.formats.as_slice()),
                (addr, port, &formats[..]),
                "rewrite lost our address, port or formats"
            );
        }
    }
    match &parsed {
        Ok(a) => fp((
            "audio",
            bucket(a.formats.len()),
            a.telephone_event.is_some(),
            a.on_hold(),
            a.choose(&[Law::Alaw, Law::Ulaw]).is_some(),
            a.addr.is_ipv4(),
            a.port == 0,
        )),
        Err(e) => fp(("error", *e as u8)),
    }
}

/// RTP: the input as one datagram ([`rtp::parse`]), then as a stream of
/// datagrams through a bridged, recording call (both legs, transcoding,
/// RFC 4733 events, latching). Each datagram is `[ctl][len][len bytes]`:
/// `ctl` bit 0 picks the side, bits 1-2 the source address, `len` 0 means
/// the rest of the input; bits 3-7 advance the clock.
pub fn rtp(data: &[u8]) -> u64 {
    let single = match rtp::parse(data) {
        Ok(p) => {
            assert!(p.payload.len() + rtp::HEADER_LEN <= data.len());
            let mut payload = p.payload.to_vec();
            g711::transcode(Law::Alaw, Law::Ulaw, &mut payload);
            fp((
                p.header.payload_type,
                bucket(p.payload.len()),
                p.header.marker,
            ))
        }
        Err(e) => fp(e.label()),
    };
    let t0 = Instant::now();
    let caller: SocketAddr = SocketAddr::from(([192, 0, 2, 5], 40_000));
    let agent: SocketAddr = SocketAddr::from(([192, 0, 2, 21], 30_000));
    let stranger: SocketAddr = SocketAddr::from(([203, 0, 113, 9], 1));
    let mut call = CallMedia::new(
        t0,
        Leg::new(Latch::SdpAddress, caller, Some(101)),
        Law::Alaw,
        [(1, 2, 3), (4, 5, 6)],
    );
    call.bridge(Leg::new(Latch::FirstPacket, agent, Some(96)), Law::Ulaw);
    call.record(t0);
    let mut buf = [0u8; 1500];
    let mut now = t0;
    let mut rest = data;
    let mut outcome = Vec::new();
    let mut recorded = Vec::new();
    while let [ctl, len, tail @ ..] = rest {
        let n = if *len == 0 {
            tail.len()
        } else {
            usize::from(*len).min(tail.len())
        };
        let (dgram, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(u64::from(ctl >> 3) * 5);
        let side = if ctl & 1 == 0 { Side::A } else { Side::B };
        let from = match (ctl >> 1) & 3 {
            0 => caller,
            1 => agent,
            2 => stranger,
            _ => SocketAddr::from(([192, 0, 2, 5], 40_002)),
        };
        let action = call.receive(now, side, from, dgram, &mut buf);
        match action {
            relay::Action::Send { len, .. } => {
                assert!(len <= buf.len());
                assert!(rtp::parse(&buf[..len]).is_ok(), "we relay invalid RTP");
                outcome.push(1u8);
            }
            relay::Action::Dtmf { digit, relay } => {
                assert!(
                    matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D'),
                    "not a DTMF key: {digit:?}"
                );
                if let Some((_, len)) = relay {
                    assert!(len <= buf.len());
                    assert!(rtp::parse(&buf[..len]).is_ok(), "we relay an invalid event");
                }
                outcome.push(2);
            }
            relay::Action::None => outcome.push(0),
        }
        call.take_recording(now, Duration::from_millis(200), &mut recorded);
        if outcome.len() >= 64 {
            break;
        }
    }
    call.finish_recording(now, &mut recorded);
    // Which actions happened, not their order (the order alone would
    // make nearly every stream look new).
    let datagrams = outcome.len();
    outcome.sort_unstable();
    outcome.dedup();
    fp((single, outcome, bucket(datagrams)))
}

/// RFC 4733 events: [`dtmf::parse`] on the input, then the detector fed
/// records of 8 bytes (RTP timestamp, big-endian, and a 4-byte payload).
/// Each report is a DTMF character.
pub fn dtmf(data: &[u8]) -> u64 {
    let first = dtmf::parse(data).map(|e| (e.end, dtmf::digit(e.code).is_some()));
    let mut d = dtmf::Detector::new();
    let mut digits = 0usize;
    for rec in data.chunks_exact(8) {
        let ts = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        if let Some(c) = d.push(ts, &rec[4..]) {
            assert!(
                matches!(c, '0'..='9' | '*' | '#' | 'A'..='D'),
                "not a DTMF key: {c:?}"
            );
            digits += 1;
        }
    }
    fp((first.ok(), bucket(digits)))
}

/// A WAV prompt as the node loads it from `sounds_dir`/`prompts_dir`
/// ([`prompt::Prompt::from_wav`]): frames of 160 bytes, bounded length.
pub fn wav(data: &[u8]) -> u64 {
    match prompt::Prompt::from_wav(data, Law::Alaw) {
        Ok(p) => {
            assert!(
                p.frames.len() <= prompt::MAX_SECONDS * 50 + 1,
                "a prompt longer than MAX_SECONDS"
            );
            fp(("ok", bucket(p.frames.len())))
        }
        // The message says which check refused (chunk, fmt, encoding).
        Err(e) => fp(("err", message_shape(&e.to_string()))),
    }
}

/// A stable feature of an error text: its last line up to the first
/// quoted part, without digits (positions and the input's own names
/// would make every input new).
fn message_shape(text: &str) -> u64 {
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let head = last.split(['"', '`', '\'']).next().unwrap_or_default();
    fp(head
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(80)
        .collect::<String>())
}

/// The configuration: [`centralino_config::Config::from_toml`] (syntax,
/// then every validation), `Config::flows_dir`, and on success the
/// derived views the node builds from it.
pub fn config(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let _ = centralino_config::Config::flows_dir(&text);
    match centralino_config::Config::from_toml(&text) {
        Ok(c) => {
            let prompts = c.flow_prompts();
            let agents = c.routing_agents();
            let queues = c.routing_queues();
            fp((
                "ok",
                bucket(prompts.len()),
                bucket(agents.len()),
                bucket(queues.len()),
                bucket(c.flows.len()),
            ))
        }
        Err(centralino_config::ConfigError::Invalid(problems)) => {
            let mut keys: Vec<String> = problems
                .iter()
                .map(|p| {
                    p.path
                        .split(['[', '.'])
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            keys.sort();
            keys.dedup();
            fp(("invalid", keys))
        }
        Err(e) => fp(("error", message_shape(&e.to_string()))),
    }
}

/// Names the flows target and the requirement target resolve against.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut c = Catalog::default();
        for s in ["vaccini", "triage", "info"] {
            let _ = c.skill(s);
        }
        for l in ["it", "en", "de"] {
            let _ = c.language(l);
        }
        let _ = c.site("roma");
        let _ = c.tenant("demo");
        for q in ["vaccini", "info"] {
            let _ = c.queue(q);
        }
        c
    })
}

struct World {
    unix: UnixSeconds,
    staffed: u32,
}

impl Facts for World {
    fn unix_now(&self) -> UnixSeconds {
        self.unix
    }
    fn duration(&self, prompts: &[String]) -> Duration {
        Duration::from_secs(prompts.len() as u64 * 2)
    }
    fn staffed(&self, _: &str) -> u32 {
        self.staffed
    }
    fn expected_wait(&self, _: &str) -> Option<Duration> {
        (self.staffed > 0).then(|| Duration::from_secs(90))
    }
    fn waiting(&self, _: &str) -> u32 {
        self.staffed * 3
    }
}

/// An IVR flow file (`config/flows/*.toml`): parsed as the configuration
/// loader does, compiled against a fixed catalog, and when it compiles,
/// walked by a call whose keys come from the input's bytes (timeouts,
/// failed transfers and callbacks in between).
pub fn flows(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let raw: RawFlow = match toml::from_str(&text) {
        Ok(r) => r,
        Err(e) => return fp(("syntax", message_shape(&e.to_string()))),
    };
    let queues = ["vaccini".to_owned(), "info".to_owned()];
    let ctx = Context {
        catalog: catalog(),
        queues: &queues,
    };
    let flow = match centralino_flows::compile("flows[0]", &raw, &ctx) {
        Ok(f) => Arc::new(f),
        Err(problems) => {
            // What is wrong, without the names (which are the input's).
            let mut kinds: Vec<u64> = problems.iter().map(|(_, m)| message_shape(m)).collect();
            kinds.sort_unstable();
            kinds.dedup();
            return fp(("invalid", kinds));
        }
    };
    let h = fp(data);
    let world = World {
        // A time in the last week of November 2026 that the input picks
        // (opening hours or not).
        unix: 1_796_000_000 + (h % (7 * 86_400)) as i64,
        staffed: (h >> 32) as u32 % 3,
    };
    let mut now = Instant::now();
    let (mut run, first) = Run::start(flow, now, &world);
    let mut actions = vec![first.len()];
    const KEYS: &[u8; 12] = b"0123456789*#";
    for step in 0..96usize {
        if run.done() {
            break;
        }
        let b = data[step % data.len().max(1)];
        let out = match b % 5 {
            0 | 1 => run.handle_digit(now, char::from(KEYS[usize::from(b) % 12]), &world),
            2 => match run.poll_timeout() {
                Some(t) => {
                    now = now.max(t);
                    run.handle_timeout(now, &world)
                }
                None => run.callback_result(now, b & 8 != 0, &world),
            },
            3 => run.transfer_result(now, &world),
            _ => run.callback_result(now, b & 16 != 0, &world),
        };
        let _ = (run.node(), run.flow());
        actions.push(out.len());
    }
    fp(("ran", run.done(), bucket(actions.len())))
}

/// A requirement expression as a queue, a DID, a flow or the API's
/// `requirements` field gives it ([`Requirement::parse`]).
pub fn requirement(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    match Requirement::parse(&text, catalog()) {
        Ok(r) => {
            let both = r.and(&Requirement::any());
            let _ = (r.primary_skill(), both.as_str().len(), r.to_string());
            fp(("ok", r.primary_skill().is_some()))
        }
        Err(e) => {
            assert!(
                e.at <= text.len(),
                "error offset {} past the end ({})",
                e.at,
                text.len()
            );
            // Without the quoted names, which are the input's.
            fp(("err", message_shape(&e.message)))
        }
    }
}

/// The HTTP API's JSON bodies: the first byte picks the body (create or
/// patch a callback, desk login, operator state, script answers), the
/// rest is the body, run through the handlers' own parsing and checks
/// (`centralino_net::fuzz_api_body`: no store, token or engine).
pub fn api(data: &[u8]) -> u64 {
    let (&kind, body) = data.split_first().unwrap_or((&0, &[]));
    let accepted = centralino_net::fuzz_api_body(kind, body);
    fp((kind % 5, accepted, json_shape(body)))
}

/// The shape of a JSON body (the handlers' verdict alone has two values,
/// too few to tell the runner which inputs got further): the syntax
/// error's kind, or the known fields present and the type of each value.
fn json_shape(body: &[u8]) -> u64 {
    use serde_json::Value;
    const KNOWN: &[&str] = &[
        "queue",
        "number",
        "not_before",
        "requirements",
        "priority",
        "username",
        "password",
        "state",
        "reason",
        "agent",
        "answers",
    ];
    let kind = |v: &Value| match v {
        Value::Null => 0u8,
        Value::Bool(_) => 1,
        Value::Number(n) if n.is_i64() => 2,
        Value::Number(_) => 3,
        Value::String(_) => 4,
        Value::Array(_) => 5,
        Value::Object(_) => 6,
    };
    match serde_json::from_slice::<Value>(body) {
        Err(e) => fp((
            "json error",
            e.classify() as u8,
            message_shape(&e.to_string()),
        )),
        Ok(Value::Object(m)) => {
            let mut fields: Vec<(&str, u8)> = m
                .iter()
                .map(|(k, v)| {
                    (
                        KNOWN.iter().find(|n| *n == k).copied().unwrap_or("?"),
                        kind(v),
                    )
                })
                .collect();
            fields.sort_unstable();
            fields.dedup();
            fp(fields)
        }
        Ok(v) => fp(("json", kind(&v))),
    }
}
