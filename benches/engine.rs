//! One whole ACD call through the sans-IO engine, as `scripts/load` makes
//! them (issue 16: CPU per call): the trunk's INVITE, the call queued and
//! offered to a free operator, the phone's 200 and both ACKs, the
//! caller's BYE and the phone's 200 to ours, then virtual time advancing
//! 0.5 ms per call (2,000 calls/s) so lingering transactions end as they
//! would. Messages reach the engine already parsed, as the driver's I/O
//! threads hand them over, and only the engine's own calls are timed, so
//! the figure is the engine thread's work per call, without the VM's
//! sockets.
//!
//! `cargo bench --bench engine` prints the time per call and, once, the
//! engine's heap allocations per call (a counting allocator, armed only
//! around the engine's calls): allocation was a sixth of the engine
//! thread at 2,000 calls/s, so the count is what to watch.

// A bench reads the clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use centralino_b2bua::media::{MediaCommand, MediaEvent};
use centralino_b2bua::{Engine, Metrics, Output};
use centralino_config::Config;
use centralino_sip::auth::Algorithm;
use centralino_sip::guard::{Framed, Limits, parse_datagram};
use centralino_sip::txn::Flow;
use centralino_sip::{Message, Transport};
use centralino_types::alloc_count::Counting;
use criterion::{Criterion, criterion_group, criterion_main};

#[global_allocator]
static ALLOC: Counting = Counting;

const LOCAL: &str = "192.0.2.1:5060";
const TRUNK: &str = "192.0.2.10:5060";
const OPERATORS: usize = 100;

/// Virtual time between two calls: 2,000 calls/s.
const SPACING: Duration = Duration::from_micros(500);

const TRUNK_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const PHONE_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.21\r\ns=-\r\nc=IN IP4 192.0.2.21\r\nt=0 0\r\nm=audio 30000 RTP/AVP 8 0\r\n";

fn config() -> String {
    let mut c = String::from(
        r#"
[sip]
listen = ["192.0.2.1:5060"]
realm = "centralino"
digest_algorithms = ["MD5"]

[[tenants]]
name = "demo"

[[trunks]]
name = "carrier"
tenant = "demo"
peers = ["192.0.2.10"]
dids = { "100" = "info" }

[[queues]]
name = "info"
tenant = "demo"
wrap_up_seconds = 0
"#,
    );
    for i in 0..OPERATORS {
        let u = 1001 + i;
        let _ = write!(
            c,
            "\n[[agents]]\nusername = \"{u}\"\npassword = \"demo{u}\"\ntenant = \"demo\"\nqueues = [\"info\"]\n"
        );
    }
    c
}

/// The driver's part, and the clock of the engine's work.
struct Node {
    engine: Engine,
    now: Instant,
    next_port: u16,
    /// Time spent inside the engine's calls.
    busy: Duration,
    /// Heap allocations made inside the engine's calls (while the
    /// counting allocator is armed).
    allocs: u64,
    /// Datagrams the engine sent, parsed, with where to.
    sent: Vec<(SocketAddr, Message)>,
}

fn flow(remote: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: remote.parse().expect("address"),
        local: LOCAL.parse().expect("address"),
        conn: 0,
    }
}

fn parse(bytes: &[u8]) -> Box<Message> {
    match parse_datagram(bytes, &Limits::default()) {
        Ok(Framed::Message(m)) => m,
        other => panic!("unparsable: {other:?}"),
    }
}

impl Node {
    /// Runs one of the engine's calls, adding its time and allocations.
    fn timed<T>(&mut self, f: impl FnOnce(&mut Engine, Instant) -> T) -> T {
        let before = Counting::thread_count();
        let t = Instant::now();
        let r = f(&mut self.engine, self.now);
        self.busy += t.elapsed();
        self.allocs += Counting::thread_count() - before;
        r
    }

    fn new() -> Self {
        let config = Config::from_toml(&config()).expect("bench config");
        let now = Instant::now();
        let mut engine = Engine::new(&config.engine(), Metrics::new(), [7; 32], now);
        engine.set_wall_clock(now, 1_780_000_000);
        let mut node = Self {
            engine,
            now,
            next_port: 20_000,
            busy: Duration::ZERO,
            allocs: 0,
            sent: Vec::new(),
        };
        for i in 0..OPERATORS {
            node.register(&(1001 + i).to_string(), &format!("192.0.2.21:{}", 6000 + i));
        }
        node
    }

    /// Hands the engine one message from `from`, timed, and collects what
    /// it does about it (the media plane answers at once, timed too).
    fn deliver(&mut self, from: &str, wire: &[u8]) {
        let msg = parse(wire);
        let flow = flow(from);
        self.timed(|e, now| e.handle_framed(now, flow, Ok(Framed::Message(msg))));
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(o) = self.timed(|e, _| e.poll_output()) {
            match o {
                Output::Transmit { flow, bytes } => self.sent.push((flow.remote, *parse(&bytes))),
                Output::Media(MediaCommand::Reserve { call, .. }) => {
                    let (a_port, b_port) = (self.next_port, self.next_port + 2);
                    self.next_port = if self.next_port > 60_000 {
                        20_000
                    } else {
                        self.next_port + 4
                    };
                    let event = MediaEvent::Reserved {
                        call,
                        a_port,
                        b_port,
                    };
                    self.timed(|e, now| e.handle_media(now, event));
                }
                _ => {}
            }
        }
    }

    /// Moves virtual time on, firing the engine's timers.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.engine.poll_timeout() {
            if at > end {
                break;
            }
            self.now = at.max(self.now);
            self.timed(Engine::handle_timeout);
            self.drain();
        }
        self.now = end;
        self.sent.clear();
    }

    fn take(&mut self, to: &str, pick: impl Fn(&Message) -> bool) -> Message {
        let to: SocketAddr = to.parse().expect("address");
        let i = self
            .sent
            .iter()
            .position(|(a, m)| *a == to && pick(m))
            .unwrap_or_else(|| panic!("nothing such sent to {to}: {:?}", self.sent));
        self.sent.swap_remove(i).1
    }

    fn register(&mut self, user: &str, phone: &str) {
        let req = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bKr{user}{cseq}\r\nFrom: <sip:{user}@192.0.2.1>;tag=r{user}\r\nTo: <sip:{user}@192.0.2.1>\r\nCall-ID: reg-{user}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{phone}>\r\n{auth}Content-Length: 0\r\n\r\n"
            )
        };
        self.deliver(phone, req(1, "").as_bytes());
        let challenge = self.take(phone, |m| m.code() == 401);
        let www = challenge.header("WWW-Authenticate").expect("a challenge");
        let nonce = www
            .split("nonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a nonce");
        let alg = Algorithm::Md5;
        let ha1 = alg.hex(&format!("{user}:centralino:demo{user}"));
        let ha2 = alg.hex("REGISTER:sip:192.0.2.1");
        let resp = alg.hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        let auth = format!(
            "Authorization: Digest username=\"{user}\", realm=\"centralino\", nonce=\"{nonce}\", uri=\"sip:192.0.2.1\", response=\"{resp}\", algorithm=MD5, cnonce=\"c0ffee\", qop=auth, nc=00000001\r\n"
        );
        self.deliver(phone, req(2, &auth).as_bytes());
        let ok = self.take(phone, |m| m.code() == 200);
        assert_eq!(ok.code(), 200);
        self.sent.clear();
    }

    /// One call from the trunk's INVITE to the end of both dialogs.
    fn call(&mut self, n: u64) {
        let invite = format!(
            "INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKi{n}\r\nMax-Forwards: 69\r\nFrom: \"Cittadino\" <sip:+390612345678@192.0.2.10>;tag=a{n}\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: c{n}@192.0.2.10\r\nCSeq: 1 INVITE\r\nContact: <sip:+390612345678@{TRUNK}>\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\nSupported: replaces, timer\r\nUser-Agent: Carrier SBC 4.2\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
            TRUNK_SDP.len()
        );
        self.deliver(TRUNK, invite.as_bytes());
        let (phone, offer) = {
            let i = self
                .sent
                .iter()
                .position(|(_, m)| m.is_request() && m.method().as_str() == "INVITE")
                .unwrap_or_else(|| panic!("no operator offered: {:?}", self.sent));
            let (a, m) = self.sent.swap_remove(i);
            (a.to_string(), m)
        };
        let mut ok = offer.response(200, "OK", Some(&format!("b{n}")));
        ok.push("Contact", &format!("<sip:op@{phone}>"));
        ok.set_body(Some("application/sdp"), PHONE_SDP.as_bytes().to_vec());
        self.deliver(&phone, &ok.to_bytes());
        let answer = self.take(TRUNK, |m| m.code() == 200);
        let a_tag = answer.to_tag.clone().expect("our tag");
        let in_dialog = |method: &str, cseq: u32| {
            format!(
                "{method} sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bK{method}{n}\r\nMax-Forwards: 70\r\nFrom: \"Cittadino\" <sip:+390612345678@192.0.2.10>;tag=a{n}\r\nTo: <sip:100@192.0.2.1>;tag={a_tag}\r\nCall-ID: c{n}@192.0.2.10\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
            )
        };
        self.deliver(TRUNK, in_dialog("ACK", 1).as_bytes());
        self.deliver(TRUNK, in_dialog("BYE", 2).as_bytes());
        let bye = self.take(&phone, |m| m.is_request() && m.method().as_str() == "BYE");
        self.deliver(&phone, &bye.response(200, "OK", None).to_bytes());
        self.advance(SPACING);
    }
}

fn bench(c: &mut Criterion) {
    let mut node = Node::new();
    let mut n = 0u64;
    // Warm: the tables reach their steady size (transactions linger
    // 32 s of virtual time, 64,000 calls at this spacing). Fewer under a
    // profiler: `ENGINE_BENCH_WARM=3000 valgrind --tool=dhat ...`.
    let warm = std::env::var("ENGINE_BENCH_WARM")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(70_000);
    for _ in 0..warm {
        n += 1;
        node.call(n);
    }
    assert_eq!(node.engine.active_calls(), 0, "every call ended");

    // Allocations per call, inside the engine's calls only.
    const COUNTED: u64 = 2_000;
    Counting::arm();
    node.allocs = 0;
    for _ in 0..COUNTED {
        n += 1;
        node.call(n);
    }
    Counting::disarm();
    println!(
        "engine: {:.1} heap allocations per call (the harness's excluded)",
        node.allocs as f64 / COUNTED as f64
    );

    c.bench_function("engine_call", |b| {
        b.iter_custom(|iters| {
            node.busy = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                node.call(n);
            }
            node.busy
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
