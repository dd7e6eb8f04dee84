//! The engine driven in virtual time with hand-written peers: every message
//! it sends is parsed back and checked.

// Tests may read the clock and files: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use centralino_config::Config;
use centralino_sip::auth::Algorithm;
use centralino_sip::guard::{Framed, Limits, parse_datagram};
use centralino_sip::txn::Flow;
use centralino_sip::{Message, Transport};
use centralino_types::outcome::{CallOutcome, CallbackOutcome, QueueEvent};

use centralino_media::g711::Law;
use centralino_media::ports::Ports;
use centralino_media::sdp;
use centralino_types::CallId;

use std::sync::Arc;

use centralino_media::announce::{self, Library};
use centralino_media::prompt::Prompt;
use centralino_media::relay::Side;

use super::session::glare_wait;
use super::{
    AgentStateError, CallbackState, CampaignCall, CampaignRun, DueCallback, Engine, Output,
    RefreshAnswer, RefreshTries, refresh_answer,
};
use crate::Metrics;
use crate::media::{MediaCommand, MediaEvent};
use centralino_types::record::Record;

const CONFIG: &str = r#"
[sip]
listen = ["192.0.2.1:5060"]
realm = "centralino"
digest_algorithms = ["SHA-256", "MD5"]

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
ring_timeout_seconds = 2
max_no_answer = 1
max_wait_seconds = 10
# Most tests look at the exit itself; the policies have tests of their own.
when_unserved = "hangup"
wrap_up_seconds = 3

[[agents]]
username = "1001"
password = "demo1001"
tenant = "demo"
queues = ["info"]

[[agents]]
username = "1002"
password = "demo1002"
tenant = "demo"
queues = ["info"]
"#;

struct Harness {
    engine: Engine,
    /// The last campaign views published.
    campaign_views: Option<Vec<crate::CampaignView>>,
    /// Callers to look up among a campaign's contacts.
    lookups: Vec<(CallId, String, Vec<String>, String)>,
    /// Media instructions, in order.
    media: Vec<MediaCommand>,
    /// Call records and queue events, in order.
    records: Vec<Record>,
    /// Callback progress reports, in order.
    callbacks: Vec<(String, CallbackState)>,
    /// Campaign attempts' progress, and the contacts pacers asked for.
    contacts: Vec<(CampaignCall, CallbackState)>,
    wants: Vec<(String, u32)>,
    /// What the operators' desktops were told, in order.
    desks: Vec<(String, Option<crate::AgentCall>)>,
    /// The last supervisor view published.
    views: Option<Vec<crate::QueueView>>,
    /// Erlang A questions the engine asked (answered at once).
    staffing: Vec<crate::StaffingJob>,
    metrics: Metrics,
    now: Instant,
    local: SocketAddr,
    /// The driver's part: the port pool that answers `Reserve`, and the
    /// ports each call holds until its `Close`.
    ports: Ports,
    held: HashMap<CallId, [u16; 2]>,
    /// The plane has no port to give (`Reserve` answered `Failed`).
    no_ports: bool,
    /// Offers and releases for the national network's driver.
    cluster: Vec<Output>,
}

fn flow(remote: &str) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: remote.parse().unwrap(),
        local: "192.0.2.1:5060".parse().unwrap(),
        conn: 0,
    }
}

const TRUNK: &str = "192.0.2.10:5060";
const PHONE1: &str = "192.0.2.21:5062";
const PHONE2: &str = "192.0.2.22:5062";

fn parse(bytes: &[u8]) -> Message {
    match parse_datagram(bytes, &Limits::default()) {
        Ok(Framed::Message(m)) => *m,
        other => panic!(
            "engine sent an unparsable message: {other:?}\n{}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(CONFIG)
    }

    fn with(config: &str) -> Self {
        let config = Config::from_toml(config).unwrap();
        let metrics = Metrics::new();
        let now = Instant::now();
        let engine = Engine::new(&config.engine(), metrics.clone(), [9; 32], now);
        let (lo, hi) = config.media.ports;
        Self {
            engine,
            media: Vec::new(),
            records: Vec::new(),
            callbacks: Vec::new(),
            contacts: Vec::new(),
            wants: Vec::new(),
            desks: Vec::new(),
            views: None,
            staffing: Vec::new(),
            campaign_views: None,
            lookups: Vec::new(),
            metrics,
            now,
            local: "192.0.2.1:5060".parse().unwrap(),
            ports: Ports::new(lo, hi, Duration::from_secs(1), [5; 32]).unwrap(),
            held: HashMap::new(),
            no_ports: false,
            cluster: Vec::new(),
        }
    }

    /// The default configuration with an outbound trunk (the carrier at
    /// `TRUNK`, caller ID `+39800111222`), reached from 192.0.2.1.
    fn with_outbound_trunk() -> Self {
        let mut h = Self::with(&outbound_trunks("\ncaller_id = \"+39800111222\"", false));
        h.engine
            .set_outbound_local("192.0.2.1:5060".parse().unwrap());
        h
    }

    fn send(&mut self, from: &str, text: &str) -> Vec<(SocketAddr, Message)> {
        let wire = if text.contains('\r') {
            text.to_owned()
        } else {
            text.replace('\n', "\r\n")
        };
        self.engine
            .handle_datagram(self.now, flow(from), wire.as_bytes());
        self.drain()
    }

    fn drain(&mut self) -> Vec<(SocketAddr, Message)> {
        let mut out = Vec::new();
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Transmit { flow, bytes } => {
                    assert_eq!(flow.local, self.local);
                    out.push((flow.remote, parse(&bytes)));
                }
                Output::Media(MediaCommand::Reserve { call, .. }) => self.reserve(call),
                Output::Media(m) => {
                    if let MediaCommand::Close { call } = m
                        && let Some(pair) = self.held.remove(&call)
                    {
                        for p in pair {
                            self.ports.release(self.now, p);
                        }
                    }
                    self.media.push(m);
                }
                Output::Record(r) => self.records.push(r),
                Output::StoreCallback { .. } => panic!("a callback request nobody expected"),
                Output::CallbackState { id, state } => self.callbacks.push((id, state)),
                Output::ContactState { call, state, .. } => self.contacts.push((*call, state)),
                Output::WantContacts { campaign, count } => self.wants.push((campaign, count)),
                Output::AgentCall { agent, info } => self.desks.push((agent, info)),
                Output::Queues(v) => self.views = Some(v),
                // As the driver's staffing thread does, at once.
                Output::Staffing(job) => {
                    let needed = job.run();
                    self.staffing.push(job.clone());
                    self.engine
                        .staffing_computed(self.now, job.queue, job.asked, needed);
                }
                Output::Campaigns(v) => self.campaign_views = Some(v),
                Output::CallerLookup {
                    call,
                    record,
                    campaigns,
                    number,
                } => self.lookups.push((call, record, campaigns, number)),
                o @ (Output::ClusterOffer { .. }
                | Output::ClusterRelease { .. }
                | Output::Lent(_)
                | Output::ClusterNews
                | Output::AgentsChanged
                | Output::SignedOut { .. }) => {
                    self.cluster.push(o);
                }
            }
        }
        out
    }

    /// The ids of the call records begun, in order.
    fn record_ids(&self) -> Vec<String> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::CallStarted { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Call records begun (`CallStarted`).
    fn calls_started(&self) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(r, Record::CallStarted { .. }))
            .count()
    }

    /// Answers a `Reserve` as the driver does: two pairs from the pool, or
    /// `Failed` when it has none left.
    fn reserve(&mut self, call: CallId) {
        let event = match (self.ports.take(self.now), self.ports.take(self.now)) {
            (Ok(a_port), Ok(b_port)) if !self.no_ports => {
                self.held.insert(call, [a_port, b_port]);
                MediaEvent::Reserved {
                    call,
                    a_port,
                    b_port,
                }
            }
            (a, b) => {
                for p in [a, b].into_iter().flatten() {
                    self.ports.release(self.now, p);
                }
                MediaEvent::Failed { call }
            }
        };
        self.engine.handle_media(self.now, event);
    }

    /// Advances virtual time, firing every timer on the way.
    fn advance(&mut self, d: Duration) -> Vec<(SocketAddr, Message)> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.engine.poll_timeout() {
            if t > end {
                break;
            }
            self.now = t.max(self.now);
            self.engine.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = end;
        out
    }

    fn gauge(&mut self, series: &str) -> i64 {
        self.engine.refresh_gauges(self.now);
        let families = self.metrics.registry.gather();
        for f in families {
            for m in f.get_metric() {
                let labels: Vec<String> = m
                    .get_label()
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect();
                let name = if labels.is_empty() {
                    f.name().to_owned()
                } else {
                    format!("{}{{{}}}", f.name(), labels.join(","))
                };
                if name == series {
                    return m.get_gauge().get_value() as i64 + m.get_counter().get_value() as i64;
                }
            }
        }
        0
    }

    fn register(&mut self, user: &str, phone: &str, alg: Algorithm) {
        self.register_contact(user, phone, &format!("sip:{user}@{phone}"), alg);
    }

    /// Registers from `phone` with a Contact of the phone's choosing; the
    /// authenticated REGISTER that succeeded.
    fn register_contact(
        &mut self,
        user: &str,
        phone: &str,
        contact: &str,
        alg: Algorithm,
    ) -> String {
        self.register_with(user, phone, contact, alg, "", 1)
    }

    /// The phone's binding removed (`Expires: 0`): the operator logs out.
    fn unregister(&mut self, user: &str, phone: &str) {
        let contact = format!("sip:{user}@{phone}");
        self.register_with(user, phone, &contact, Algorithm::Md5, "Expires: 0\n", 3);
    }

    /// A REGISTER with `extra` headers, CSeq from `cseq`, through the
    /// digest challenge; the authenticated request that succeeded.
    fn register_with(
        &mut self,
        user: &str,
        phone: &str,
        contact: &str,
        alg: Algorithm,
        extra: &str,
        cseq: u32,
    ) -> String {
        let first = cseq;
        let req = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP {phone};branch=z9hG4bKr{user}{cseq}\nFrom: <sip:{user}@192.0.2.1>;tag=r{user}\nTo: <sip:{user}@192.0.2.1>\nCall-ID: reg-{user}-{phone}\nCSeq: {cseq} REGISTER\nContact: <{contact}>\n{extra}{auth}Content-Length: 0\n\n"
            )
        };
        let out = self.send(phone, &req(first, ""));
        assert_eq!(out[0].1.code(), 401);
        let challenge = out[0]
            .1
            .headers_named("WWW-Authenticate")
            .find(|c| c.contains(&format!("algorithm={}", alg.token())))
            .unwrap()
            .to_owned();
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let auth = authorization(
            alg,
            user,
            &format!("demo{user}"),
            "REGISTER",
            "sip:192.0.2.1",
            nonce,
        ) + "\n";
        let authenticated = req(first + 1, &auth);
        let out = self.send(phone, &authenticated);
        assert_eq!(out[0].1.code(), 200, "{:?}", out[0].1);
        authenticated
    }

    fn invite(&mut self, call: &str) -> Vec<(SocketAddr, Message)> {
        self.invite_sdp(call, TRUNK_SDP)
    }

    fn invite_sdp(&mut self, call: &str, sdp: &str) -> Vec<(SocketAddr, Message)> {
        self.send(
            TRUNK,
            &format!(
                "INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bK{call}\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=a{call}\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            ),
        )
    }
}

/// An `Authorization` header (no line end) answering `nonce` for `user`
/// with `password`, for `method` on `uri`.
fn authorization(
    alg: Algorithm,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
) -> String {
    let ha1 = alg.hex(&format!("{user}:centralino:{password}"));
    let ha2 = alg.hex(&format!("{method}:{uri}"));
    let resp = alg.hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"{user}\", realm=\"centralino\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}, cnonce=\"c0ffee\", qop=auth, nc=00000001",
        alg.token()
    )
}

/// The carrier's offer: A-law preferred, µ-law, telephone-event.
const TRUNK_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
/// A phone's answer: µ-law only.
const PHONE_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.21\r\ns=-\r\nc=IN IP4 192.0.2.21\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";

fn response_to(req: &Message, code: u16, to_tag: &str) -> String {
    let mut r = req.response(code, "X", Some(to_tag));
    r.push("Contact", "<sip:phone@192.0.2.21:5062>");
    if code == 200 && req.is_request() && *req.method() == centralino_sip::Method::Invite {
        // As desk phones and softphones say: INFO taken.
        r.push("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO");
        r.set_body(Some("application/sdp"), PHONE_SDP.as_bytes().to_vec());
    }
    String::from_utf8(r.to_bytes()).unwrap()
}

/// A bodiless request the trunk sends in call `call`'s dialog: the
/// caller's From (tag `from_tag`), our To (DID `did`, tag `a_tag`).
fn trunk_in_dialog(
    method: &str,
    call: &str,
    from_tag: &str,
    did: &str,
    a_tag: &str,
    cseq: u32,
    branch: &str,
) -> String {
    format!(
        "{method} sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bK{branch}\r\nFrom: <sip:+390612345678@192.0.2.10>;tag={from_tag}\r\nTo: <sip:{did}@192.0.2.1>;tag={a_tag}\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn codes(out: &[(SocketAddr, Message)], to: &str) -> Vec<u16> {
    out.iter()
        .filter(|(a, _)| a.to_string() == to)
        .map(|(_, m)| m.code())
        .collect()
}

/// BYEs to `to`, their UDP retransmissions counted once.
fn distinct_byes(out: &[(SocketAddr, Message)], to: &str) -> usize {
    requests(out, to, "BYE")
        .iter()
        .map(|m| m.via.branch.clone())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

fn requests<'a>(out: &'a [(SocketAddr, Message)], to: &str, method: &str) -> Vec<&'a Message> {
    out.iter()
        .filter(|(a, m)| a.to_string() == to && m.is_request() && m.method().as_str() == method)
        .map(|(_, m)| m)
        .collect()
}

/// The engine binds nothing: it asks the plane for ports and names them
/// in an SDP only once the plane holds them; a plane with none left
/// refuses the call as before (503, `Retry-After`), with no record.
#[test]
fn a_call_names_ports_only_once_the_media_plane_holds_them() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Sha256);
    h.no_ports = true;
    let out = h.invite("c1");
    assert_eq!(codes(&out, TRUNK), vec![100, 503]);
    let refusal = &out.iter().find(|(_, m)| m.code() == 503).unwrap().1;
    assert_eq!(refusal.header("Retry-After"), Some("5"));
    assert_eq!(h.calls_started(), 0, "{:?}", h.records);
    assert!(h.media.is_empty(), "{:?}", h.media);
    assert!(requests(&out, PHONE1, "INVITE").is_empty());
    assert_eq!(h.metrics.calls.with_label_values(&["no_rtp_port"]).get(), 1);
    h.no_ports = false;
    let out = h.invite("c2");
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
    let progress = &out.iter().find(|(_, m)| m.code() == 183).unwrap().1;
    let held = h.held.values().next().copied().unwrap();
    assert_eq!(sdp::parse(&progress.body).unwrap().port, held[0]);
    let inv = requests(&out, PHONE1, "INVITE")[0];
    assert_eq!(sdp::parse(&inv.body).unwrap().port, held[1]);
    assert_eq!(h.calls_started(), 1);
}

#[test]
fn answered_call_bridges_and_caller_bye_ends_both_legs() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Sha256);
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 1);
    let out = h.invite("c1");
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
    // Early media: our anchored answer, A-law as the carrier prefers.
    let progress = out.iter().find(|(_, m)| m.code() == 183).unwrap().1.clone();
    let ours = sdp::parse(&progress.body).unwrap();
    assert_eq!(
        (ours.addr.to_string(), ours.formats.clone()),
        ("192.0.2.1".to_owned(), vec![8, 101])
    );
    let Some(MediaCommand::Open {
        a_port, b_port, a, ..
    }) = h.media.first()
    else {
        panic!("{:?}", h.media)
    };
    assert_eq!(ours.port, *a_port);
    assert_eq!(
        (a.rtp().unwrap().addr.to_string(), a.rtp().unwrap().law),
        ("192.0.2.10:40000".to_owned(), Law::Alaw)
    );
    let b_port = *b_port;
    assert!(
        matches!(h.media[1], MediaCommand::Play { .. }),
        "music on hold"
    );
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert_eq!(inv.request_uri(), Some("sip:1001@192.0.2.21:5062"));
    // The operator is offered the caller's law first, from the B port.
    let offer = sdp::parse(&inv.body).unwrap();
    assert_eq!(
        (offer.port, offer.formats.clone()),
        (b_port, vec![8, 0, 101])
    );
    assert!(
        inv.header("From").unwrap().contains("+390612345678"),
        "caller id reaches the operator"
    );

    let out = h.send(PHONE1, &response_to(&inv, 180, "b1"));
    assert!(out.is_empty(), "ringback already sent");
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(requests(&out, PHONE1, "ACK").len(), 1);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    assert_eq!(
        ok.body, progress.body,
        "the same session as the early media"
    );
    let Some(MediaCommand::Bridge { b, record, .. }) = h.media.last() else {
        panic!("{:?}", h.media)
    };
    assert_eq!(
        (b.rtp().unwrap().addr.to_string(), b.rtp().unwrap().law),
        ("192.0.2.21:30000".to_owned(), Law::Ulaw),
        "transcoded"
    );
    assert!(!record, "the queue does not record");
    let a_tag = ok.to_tag.clone().unwrap();
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);

    // A retransmitted 200 from the phone is re-ACKed, nothing else.
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(out.len(), 1);
    assert_eq!(requests(&out, PHONE1, "ACK").len(), 1);

    let ack = trunk_in_dialog("ACK", "c1", "ac1", "100", &a_tag, 1, "ack1");
    assert!(h.send(TRUNK, &ack).is_empty());
    let bye = trunk_in_dialog("BYE", "c1", "ac1", "100", &a_tag, 2, "bye1");
    let out = h.send(TRUNK, &bye);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    let bye_b = requests(&out, PHONE1, "BYE");
    assert_eq!(bye_b.len(), 1);
    assert_eq!(bye_b[0].to_tag.as_deref(), Some("b1"));
    let bye_b_msg = bye_b[0].clone();
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(h.gauge("centralino_agents{state=wrap_up,tenant=demo}"), 1);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 1);
    // The BYE to the phone is answered; after the timers, nothing is left.
    h.send(
        PHONE1,
        &String::from_utf8(bye_b_msg.response(200, "OK", None).to_bytes()).unwrap(),
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.engine.table_sizes(), [0; 5]);
}

#[test]
fn gauges_are_set_from_the_start() {
    let h = Harness::new();
    // Read without refreshing: what a scrape sees before any message.
    let families = h.metrics.registry.gather();
    let logged_out = families
        .iter()
        .find(|f| f.name() == "centralino_queue_agents")
        .and_then(|f| {
            f.get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == "logged_out"))
        })
        .map(|m| m.get_gauge().get_value());
    assert_eq!(logged_out, Some(2.0));
}

#[test]
fn retransmitted_invite_creates_one_call() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let first = h.invite("c2");
    assert_eq!(requests(&first, PHONE1, "INVITE").len(), 1);
    let again = h.invite("c2");
    assert_eq!(
        codes(&again, TRUNK),
        vec![183],
        "retransmission answered with the last response"
    );
    assert!(requests(&again, PHONE1, "INVITE").is_empty());
    assert_eq!(h.engine.active_calls(), 1);
}

#[test]
fn no_answer_moves_to_next_operator_and_pauses_the_first() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Sha256);
    h.advance(Duration::from_millis(10));
    h.register("1002", PHONE2, Algorithm::Sha256);
    let out = h.invite("c3");
    let inv1 = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv1, 180, "p1"));
    let out = h.advance(Duration::from_secs(2));
    assert_eq!(requests(&out, PHONE1, "CANCEL").len(), 1);
    assert_eq!(requests(&out, PHONE2, "INVITE").len(), 1);
    // max_no_answer = 1: the first operator is paused.
    assert_eq!(h.gauge("centralino_agents{state=paused,tenant=demo}"), 1);
    // The first phone answers late: the engine ACKs and hangs up that leg.
    let out = h.send(PHONE1, &response_to(&inv1, 200, "p1"));
    assert_eq!(requests(&out, PHONE1, "ACK").len(), 1);
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    assert!(codes(&out, TRUNK).is_empty());
    assert_eq!(
        agent_events(&h, "1001"),
        [("login", None), ("pause", Some("no_answer"))],
        "the queue log says why"
    );
}

/// The operator's own events in the queue log: (event, reason).
fn agent_events<'a>(h: &'a Harness, name: &str) -> Vec<(&'static str, Option<&'a str>)> {
    h.records
        .iter()
        .filter_map(|r| match r {
            Record::Agent {
                agent,
                event,
                reason,
                ..
            } if agent == name => Some((*event, reason.as_deref())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_operator_pauses_and_resumes_from_the_desktop_and_the_queue_log_says_so() {
    let mut h = Harness::new();
    assert_eq!(
        h.engine.set_agent_paused(h.now, "1001", true, None),
        Err(AgentStateError::LoggedOut)
    );
    assert_eq!(
        h.engine.set_agent_paused(h.now, "9999", true, None),
        Err(AgentStateError::Unknown)
    );
    h.register("1001", PHONE1, Algorithm::Md5);
    assert_eq!(
        h.engine
            .set_agent_paused(h.now, "1001", true, Some("pausa_pranzo".into())),
        Ok("paused")
    );
    assert_eq!(
        h.engine.set_agent_paused(h.now, "1001", true, None),
        Ok("paused"),
        "idempotent"
    );
    // A call arrives: nobody takes it while the only operator is paused.
    let out = h.invite("p1");
    assert!(requests(&out, PHONE1, "INVITE").is_empty());
    // Back from the break: the waiting call is offered at once.
    assert_eq!(
        h.engine.set_agent_paused(h.now, "1001", false, None),
        Ok("ringing")
    );
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert_eq!(
        h.engine.set_agent_paused(h.now, "1001", true, None),
        Err(AgentStateError::Busy),
        "not while the phone rings"
    );
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(
        agent_events(&h, "1001"),
        [
            ("login", None),
            ("pause", Some("pausa_pranzo")),
            ("unpause", None)
        ]
    );
    assert_eq!(h.gauge("centralino_agent_events_total{event=pause}"), 1);
}

#[test]
fn busy_operator_moves_the_call_on() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.advance(Duration::from_millis(10));
    h.register("1002", PHONE2, Algorithm::Md5);
    let out = h.invite("c4");
    let inv1 = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv1, 486, "p1"));
    assert_eq!(
        requests(&out, PHONE1, "ACK").len(),
        1,
        "non-2xx ACKed by the transaction"
    );
    assert_eq!(requests(&out, PHONE2, "INVITE").len(), 1);
}

#[test]
fn caller_cancel_while_ringing() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("c5");
    let inv1 = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv1, 180, "p1"));
    let cancel = format!(
        "CANCEL sip:100@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKc5\nFrom: <sip:+390612345678@192.0.2.10>;tag=ac5\nTo: <sip:100@192.0.2.1>\nCall-ID: c5\nCSeq: 1 CANCEL\nContent-Length: 0\n\n"
    );
    let out = h.send(TRUNK, &cancel);
    assert_eq!(codes(&out, TRUNK), vec![200, 487]);
    assert_eq!(requests(&out, PHONE1, "CANCEL").len(), 1);
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.gauge("centralino_agents{state=available,tenant=demo}"),
        1,
        "not the operator's fault"
    );
    // The phone confirms the CANCEL and ends its INVITE with 487.
    let cancel_b = requests(&out, PHONE1, "CANCEL")[0].clone();
    h.send(
        PHONE1,
        &String::from_utf8(cancel_b.response(200, "OK", None).to_bytes()).unwrap(),
    );
    h.send(PHONE1, &response_to(&inv1, 487, "p1"));
    h.advance(Duration::from_secs(40));
    assert_eq!(h.engine.table_sizes(), [0; 5]);
}

#[test]
fn max_wait_sends_the_queue_exit() {
    let mut h = Harness::new();
    let out = h.invite("c6");
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
    assert_eq!(h.gauge("centralino_queue_calls{queue=info}"), 1);
    let out = h.advance(Duration::from_secs(10));
    assert_eq!(codes(&out, TRUNK), vec![480]);
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(h.gauge("centralino_queue_calls{queue=info}"), 0);
    // Nobody answered, no callback: a dead end, counted.
    assert_eq!(
        h.gauge("centralino_dead_ends_total{queue=info,reason=max_wait}"),
        1
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.engine.table_sizes(), [0; 5]);
}

#[test]
fn unacknowledged_answer_is_torn_down_after_64_t1() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("c7");
    let inv1 = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv1, 200, "p1"));
    let out = h.advance(Duration::from_secs(33));
    let oks = codes(&out, TRUNK).into_iter().filter(|c| *c == 200).count();
    assert!(oks >= 5, "2xx retransmitted until Timer L ({oks})");
    // One BYE per leg (UDP retransmissions of it share its branch).
    for peer in [TRUNK, PHONE1] {
        let byes = requests(&out, peer, "BYE");
        assert!(!byes.is_empty(), "no BYE to {peer}");
        assert!(
            byes.iter().all(|b| b.via.branch == byes[0].via.branch),
            "more than one BYE to {peer}"
        );
    }
    assert_eq!(h.engine.active_calls(), 0);
}

#[test]
fn untrusted_invite_leaves_no_state() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let server_txns = h.gauge("centralino_sip_transactions{side=server}");
    let out = h.send(
        "198.51.100.7:5060",
        "INVITE sip:+88234123456@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKx\nFrom: <sip:a@198.51.100.7>;tag=x\nTo: <sip:+88234123456@192.0.2.1>\nCall-ID: fraud\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.code(), 403);
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.gauge("centralino_sip_transactions{side=server}"),
        server_txns
    );
    // A trunk peer calling a number that is no DID gets 404, not a trunk leg.
    let out = h.send(
        TRUNK,
        &format!("INVITE sip:+88234123456@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKy\nFrom: <sip:a@192.0.2.10>;tag=y\nTo: <sip:+88234123456@192.0.2.1>\nCall-ID: relay\nCSeq: 1 INVITE\nContent-Length: 0\n\n"),
    );
    assert_eq!(codes(&out, TRUNK), vec![404]);
    assert_eq!(out.len(), 1);
}

/// A trunk known by its TLS client certificate: its INVITE counts only on
/// a TLS connection the driver said proved that trunk, and only while that
/// connection is open; elsewhere 403 with no state.
#[test]
fn certificate_trunk_invites_need_a_proven_connection() {
    // The engine never reads these files; validation needs readable ones.
    let file = env!("CARGO_MANIFEST_PATH");
    let config = CONFIG
        .replacen(
            "[sip]\n",
            &format!("[sip]\ntransports = [\"udp\", \"tls\"]\ntls_listen = [\"192.0.2.1:5061\"]\ntls_cert_file = {file:?}\ntls_key_file = {file:?}\n"),
            1,
        )
        .replacen(
            "dids = { \"100\" = \"info\" }\n",
            &format!("dids = {{ \"100\" = \"info\" }}\ntls_client_ca_file = {file:?}\ntls_peer_names = [\"sbc.carrier.example\"]\n"),
            1,
        );
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    let tls = |conn: u64| Flow {
        transport: Transport::Tls,
        remote: TRUNK.parse().unwrap(),
        // The harness checks every message leaves from one address; the
        // engine does not care which listener a flow names.
        local: "192.0.2.1:5060".parse().unwrap(),
        conn,
    };
    let invite = |call: &str| {
        format!(
            "INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TLS {TRUNK};branch=z9hG4bK{call}\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=a{call}\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK};transport=tls>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
            TRUNK_SDP.len()
        )
    };
    let send = |h: &mut Harness, flow: Flow, call: &str| {
        let framed = parse_datagram(invite(call).as_bytes(), &Limits::default());
        h.engine.handle_framed(h.now, flow, framed);
        h.drain()
    };
    // From its address over UDP, and over TLS without its certificate.
    let out = h.send(TRUNK, &invite("udp"));
    assert_eq!(codes(&out, TRUNK), vec![403]);
    let out = send(&mut h, tls(7), "anon");
    assert_eq!(codes(&out, TRUNK), vec![403]);
    // Another trunk's certificate proves nothing for this one.
    h.engine.connection_opened(8, vec!["other".to_owned()]);
    let out = send(&mut h, tls(8), "other");
    assert_eq!(codes(&out, TRUNK), vec![403]);
    assert_eq!(h.engine.active_calls(), 0);
    // Its own: the call is taken.
    h.engine.connection_opened(9, vec!["carrier".to_owned()]);
    let out = send(&mut h, tls(9), "proven");
    assert!(
        codes(&out, TRUNK).contains(&100),
        "{:?}",
        codes(&out, TRUNK)
    );
    assert_eq!(h.engine.active_calls(), 1);
    // Once that connection is gone, its id proves nothing any more.
    h.engine.connection_closed(9);
    let out = send(&mut h, tls(9), "stale");
    assert_eq!(codes(&out, TRUNK), vec![403]);
    assert_eq!(h.engine.active_calls(), 1);
}

/// A leg over TLS takes its in-dialog requests over TLS only: a UDP
/// datagram (or a TCP segment) from the carrier's address with the
/// dialog's Call-ID and tags neither ends the call nor moves its media;
/// the carrier's BYE on a new TLS connection does. A leg over TCP takes a
/// BYE over UDP (RFC 3261 §18.1.1: a large INVITE over TCP, the small
/// requests after it over UDP).
#[test]
fn a_call_over_tls_ignores_the_same_dialog_over_udp_or_tcp() {
    for transport in [Transport::Tls, Transport::Tcp] {
        let mut h = Harness::new();
        h.register("1001", PHONE1, Algorithm::Md5);
        let over = |transport: Transport, conn: u64| Flow {
            transport,
            remote: TRUNK.parse().unwrap(),
            local: "192.0.2.1:5060".parse().unwrap(),
            conn,
        };
        let via = |t: Transport| match t {
            Transport::Tcp => "SIP/2.0/TCP",
            _ => "SIP/2.0/TLS",
        };
        let feed = |h: &mut Harness, flow: Flow, text: &str| {
            let text = text.replace("SIP/2.0/UDP", via(flow.transport));
            let framed = parse_datagram(text.as_bytes(), &Limits::default());
            h.engine.handle_framed(h.now, flow, framed);
            h.drain()
        };
        let out = feed(&mut h, over(transport, 1), &invite_with(""));
        let inv = requests(&out, PHONE1, "INVITE")[0].clone();
        let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
        let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
        let a_tag = ok.to_tag.clone().unwrap();
        feed(
            &mut h,
            over(transport, 1),
            &in_dialog("ACK", TRUNK, "am1", &a_tag, 1, ""),
        );
        if transport == Transport::Tcp {
            let out = h.send(TRUNK, &in_dialog("BYE", TRUNK, "am1", &a_tag, 2, ""));
            assert_eq!(codes(&out, TRUNK), vec![200]);
            assert_eq!(h.engine.active_calls(), 0);
            continue;
        }
        let media = h.media.len();
        let moved = TRUNK_SDP.replace("40000", "40100");
        let out = h.send(TRUNK, &in_dialog("INVITE", TRUNK, "am1", &a_tag, 2, &moved));
        assert_eq!(codes(&out, TRUNK), vec![481]);
        let out = h.send(TRUNK, &in_dialog("BYE", TRUNK, "am1", &a_tag, 3, ""));
        assert_eq!(codes(&out, TRUNK), vec![481]);
        let out = feed(
            &mut h,
            over(Transport::Tcp, 2),
            &in_dialog("BYE", TRUNK, "am1", &a_tag, 4, ""),
        );
        assert_eq!(codes(&out, TRUNK), vec![481]);
        assert_eq!(h.media.len(), media, "no media moved");
        assert_eq!(h.engine.active_calls(), 1);
        assert_eq!(
            h.gauge("centralino_sip_rejected_total{reason=foreign_dialog}"),
            3
        );
        let out = feed(
            &mut h,
            over(Transport::Tls, 3),
            &in_dialog("BYE", TRUNK, "am1", &a_tag, 5, ""),
        );
        assert_eq!(codes(&out, TRUNK), vec![200]);
        assert_eq!(h.engine.active_calls(), 0);
    }
}

#[test]
fn unregister_logs_the_operator_out() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    assert_eq!(h.gauge("centralino_registered_agents"), 1);
    // Bindings lapse after max expiry (3600 s): the operator is logged out.
    h.advance(Duration::from_secs(3601));
    assert_eq!(h.gauge("centralino_registered_agents"), 0);
    assert_eq!(
        h.gauge("centralino_agents{state=logged_out,tenant=demo}"),
        2
    );
}

/// Mutated messages through the whole engine, from the trunk, a phone and a
/// stranger, with time moving: no panic, and once the timers have run no
/// call, dialog or transaction is left behind.
#[test]
fn mutated_input_never_panics_or_leaks() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sip/tests/vectors");
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let invite = format!(
        "INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKfz\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=fz\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: fz\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    );
    corpus.push(invite.into_bytes());
    let mut seed: u64 = 0x0DDB_1A5E_5BAD_5EED;
    let mut next = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let peers = [TRUNK, PHONE1, "198.51.100.7:5060"];
    for i in 0..5_000u32 {
        let mut m = corpus[(next() % corpus.len() as u64) as usize].clone();
        let pos = (next() % m.len() as u64) as usize;
        match next() % 4 {
            0 => m[pos] ^= 1 << (next() % 8),
            1 => m.truncate(pos),
            2 => m.insert(pos, b"\r\n:;<>\"@"[(next() % 8) as usize]),
            _ => {
                // Unique branches and Call-IDs so mutants become new calls.
                let text = String::from_utf8_lossy(&m).replace("z9hG4bK", &format!("z9hG4bK{i}x"));
                m = text
                    .replace("Call-ID: ", &format!("Call-ID: {i}"))
                    .into_bytes();
            }
        }
        let from = peers[(next() % 3) as usize];
        h.engine.handle_datagram(h.now, flow(from), &m);
        while let Some(o) = h.engine.poll_output() {
            if let Output::Media(MediaCommand::Reserve { call, .. }) = o {
                h.reserve(call);
            }
        }
        if i % 100 == 0 {
            h.advance(Duration::from_millis(700));
        }
    }
    // Calls still waiting hit max_wait; everything else times out.
    h.advance(Duration::from_secs(400));
    assert_eq!(
        h.engine.table_sizes(),
        [0; 5],
        "calls, indexes, client refs, transactions"
    );
}

#[test]
fn caller_bye_in_early_dialog_releases_the_ringing_operator() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("c8");
    let ringing = out.iter().find(|(_, m)| m.code() == 183).unwrap().1.clone();
    let a_tag = ringing.to_tag.clone().unwrap();
    let inv1 = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv1, 180, "p1"));
    let bye = trunk_in_dialog("BYE", "c8", "ac8", "100", &a_tag, 2, "ebye");
    let out = h.send(TRUNK, &bye);
    assert_eq!(codes(&out, TRUNK), vec![200, 487]);
    assert_eq!(requests(&out, PHONE1, "CANCEL").len(), 1);
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 1);
    assert_eq!(h.engine.active_calls(), 0);
}

#[test]
fn overload_refuses_new_calls_but_keeps_registrations() {
    let mut h = Harness::new();
    h.engine.set_overloaded(true);
    let out = h.invite("c9");
    assert_eq!(codes(&out, TRUNK), vec![503]);
    assert_eq!(out[0].1.header("Retry-After"), Some("5"));
    h.register("1001", PHONE1, Algorithm::Md5);
    h.engine.set_overloaded(false);
    let out = h.invite("c10");
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
}

#[test]
fn admission_rate_limits_new_calls() {
    let text = CONFIG.replace(
        "digest_algorithms = [\"SHA-256\", \"MD5\"]",
        "digest_algorithms = [\"MD5\"]\nmax_calls_per_second = 2",
    );
    let config = Config::from_toml(&text).unwrap();
    let mut h = Harness::new();
    h.engine = Engine::new(&config.engine(), h.metrics.clone(), [3; 32], h.now);
    let admitted = |h: &mut Harness, id: &str| codes(&h.invite(id), TRUNK).first() == Some(&100);
    assert!(admitted(&mut h, "r1"));
    assert!(admitted(&mut h, "r2"));
    assert!(
        !admitted(&mut h, "r3"),
        "third call in the same second refused"
    );
    h.advance(Duration::from_millis(500));
    assert!(admitted(&mut h, "r4"), "half a second refills one token");
    assert!(!admitted(&mut h, "r5"));
}

/// Ring-all: both phones ring, the first 200 wins, the other phone gets a
/// CANCEL and its operator is free again at once; everything drains.
/// A ring-all queue (width 2) with operators 1001 and 1002 logged in.
fn ring_all_two() -> Harness {
    let config = CONFIG.replace(
        "ring_timeout_seconds = 2",
        "ring_timeout_seconds = 2\nstrategy = \"ring_all\"\nring_all_width = 2",
    );
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1002", PHONE2, Algorithm::Md5);
    h
}

#[test]
fn ring_all_forks_and_the_first_answer_wins() {
    let mut h = ring_all_two();
    let out = h.invite("c9");
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
    let inv1 = requests(&out, PHONE1, "INVITE")[0].clone();
    let inv2 = requests(&out, PHONE2, "INVITE")[0].clone();
    assert_ne!(inv1.call_id, inv2.call_id, "one B-leg per phone");
    h.send(PHONE1, &response_to(&inv1, 180, "p1"));
    h.send(PHONE2, &response_to(&inv2, 180, "p2"));
    let out = h.send(PHONE2, &response_to(&inv2, 200, "p2"));
    assert_eq!(requests(&out, PHONE2, "ACK").len(), 1);
    assert_eq!(requests(&out, PHONE1, "CANCEL").len(), 1);
    // RFC 3326: the losing phone shows no missed call.
    assert_eq!(
        requests(&out, PHONE1, "CANCEL")[0].header("Reason"),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    assert_eq!(codes(&out, TRUNK), vec![200]);
    let answered = out.clone();
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 1);
    assert_eq!(
        h.gauge("centralino_agents{state=paused,tenant=demo}"),
        0,
        "the losing operator did not miss a call"
    );
    // The cancelled phone answers the CANCEL and ends its INVITE with 487.
    let cancel = requests(&out, PHONE1, "CANCEL")[0].clone();
    h.send(
        PHONE1,
        &String::from_utf8(cancel.response(200, "OK", None).to_bytes()).unwrap(),
    );
    let out = h.send(PHONE1, &response_to(&inv1, 487, "p1"));
    assert_eq!(requests(&out, PHONE1, "ACK").len(), 1);
    // Caller hangs up: the winner's leg gets the BYE.
    let a_tag = answered
        .iter()
        .find(|(to, m)| to.to_string() == TRUNK && m.code() == 200)
        .and_then(|(_, m)| m.to_tag.clone())
        .unwrap();
    let bye = trunk_in_dialog("BYE", "c9", "ac9", "100", &a_tag, 2, "bye9");
    let out = h.send(TRUNK, &bye);
    let bye_b = requests(&out, PHONE2, "BYE");
    assert_eq!(bye_b.len(), 1);
    let bye_b = bye_b[0].clone();
    h.send(
        PHONE2,
        &String::from_utf8(bye_b.response(200, "OK", None).to_bytes()).unwrap(),
    );
    h.advance(Duration::from_secs(40));
    assert_eq!(h.engine.table_sizes(), [0; 5]);
}

#[test]
fn offers_without_a_common_codec_get_488_and_leave_nothing() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let g729 = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40000 RTP/AVP 18\r\n";
    let out = h.invite_sdp("n1", g729);
    assert_eq!(codes(&out, TRUNK), vec![100, 488]);
    let refusal = &out.iter().find(|(_, m)| m.code() == 488).unwrap().1;
    assert!(refusal.header("Warning").unwrap().starts_with("305 "));
    for (call, body) in [
        ("n2", "garbage"),
        (
            "n3",
            "v=0\r\nc=IN IP4 192.0.2.10\r\nm=audio 0 RTP/AVP 0\r\n",
        ),
    ] {
        let out = h.invite_sdp(call, body);
        assert_eq!(codes(&out, TRUNK), vec![100, 488], "{body}");
    }
    assert!(
        requests(&out, PHONE1, "INVITE").is_empty(),
        "no operator rung"
    );
    assert!(h.media.is_empty(), "no port taken, no media");
    assert_eq!(
        h.gauge("centralino_sdp_rejected_total{reason=no_common_codec}"),
        1
    );
    assert_eq!(
        h.gauge("centralino_sdp_rejected_total{reason=malformed_sdp}"),
        1
    );
    assert_eq!(h.gauge("centralino_sdp_rejected_total{reason=no_audio}"), 1);
    assert_eq!(h.engine.active_calls(), 0);
}

/// A connected call: (harness, the caller's 200 OK, the phone's INVITE).
fn connected() -> (Harness, Message, Message) {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    (h, ok, inv)
}

#[test]
fn reinvite_hold_and_resume_are_answered_without_touching_the_other_leg() {
    let (mut h, ok, _) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let reinvite = |cseq: u32, dir: &str| {
        let sdp = format!(
            "v=0\r\no=- 1 {cseq} IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40002 RTP/AVP 8\r\na={dir}\r\n"
        );
        format!(
            "INVITE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKre{cseq}\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=am1\r\nTo: <sip:100@192.0.2.1>;tag={a_tag}\r\nCall-ID: m1\r\nCSeq: {cseq} INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    let out = h.send(TRUNK, &reinvite(2, "sendonly"));
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert!(
        requests(&out, PHONE1, "INVITE").is_empty(),
        "the operator's leg is untouched"
    );
    let answer = sdp::parse(&out[0].1.body).unwrap();
    assert_eq!(answer.direction, sdp::Direction::RecvOnly);
    let Some(MediaCommand::Update {
        side, peer, held, ..
    }) = h.media.last()
    else {
        panic!("{:?}", h.media)
    };
    assert_eq!(
        (*side, peer.rtp().unwrap().addr.port(), *held),
        (Side::A, 40002, true)
    );
    let out = h.send(TRUNK, &reinvite(3, "sendrecv"));
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert!(matches!(
        h.media.last(),
        Some(MediaCommand::Update { held: false, .. })
    ));
    // `inactive` (neither side sends) holds too, answered inactive.
    let out = h.send(TRUNK, &reinvite(4, "inactive"));
    let answer = sdp::parse(&out[0].1.body).unwrap();
    assert_eq!(answer.direction, sdp::Direction::Inactive);
    assert!(matches!(
        h.media.last(),
        Some(MediaCommand::Update { held: true, .. })
    ));
    let out = h.send(TRUNK, &reinvite(5, "sendrecv"));
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert!(matches!(
        h.media.last(),
        Some(MediaCommand::Update { held: false, .. })
    ));
}

/// A re-INVITE without SDP (a phone resuming this way, a carrier's
/// refresh) gets our offer in the 200, always `sendrecv`; the peer's
/// answer comes in the ACK of that CSeq and moves the media (RFC 3261
/// §14.2, RFC 3264 §8), on either side. An answer at a refused address or
/// without the law in use changes nothing (counted); an ACK from a
/// stranger with the right tags is dropped (counted).
#[test]
fn a_reinvite_without_sdp_gets_our_offer_and_the_answer_in_its_ack_moves_the_media() {
    let (mut h, ok, inv) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let reinvite = |cseq: u32, sdp: &str| in_dialog("INVITE", TRUNK, "am1", &a_tag, cseq, sdp);
    let ack = |from: &str, cseq: u32, sdp: &str| in_dialog("ACK", from, "am1", &a_tag, cseq, sdp);
    let last_update = |media: &[MediaCommand]| match media.last() {
        Some(MediaCommand::Update {
            side, peer, held, ..
        }) => (*side, peer.rtp().unwrap().addr.port(), *held),
        other => panic!("{other:?}"),
    };
    let last_law = |media: &[MediaCommand]| match media.last() {
        Some(MediaCommand::Update { peer, .. }) => peer.rtp().unwrap().law,
        other => panic!("{other:?}"),
    };
    let caller_sdp = |port: u16, dir: &str| {
        format!(
            "v=0\r\no=- 1 {port} IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na={dir}\r\n"
        )
    };
    // The caller holds the operator: we answer recvonly.
    let out = h.send(TRUNK, &reinvite(2, &caller_sdp(40002, "sendonly")));
    assert_eq!(codes(&out, TRUNK), vec![200]);
    let held_version = sdp_version(&out[0].1.body);
    assert!(matches!(
        h.media.last(),
        Some(MediaCommand::Update { held: true, .. })
    ));
    // It resumes by a re-INVITE without SDP: our offer, not our hold's
    // answer echoed (recvonly would keep the call held).
    let out = h.send(TRUNK, &reinvite(3, ""));
    let offer = &out.iter().find(|(_, m)| m.code() == 200).expect("200").1;
    let sent = sdp::parse(&offer.body).unwrap();
    assert_eq!(sent.direction, sdp::Direction::SendRecv, "{offer:?}");
    // Built as for a new call (RFC 3261 §14.2): the law in use first,
    // then the others, telephone-event; a new SDP, a new version.
    assert_eq!(sent.formats[..2], [8, 0], "{offer:?}");
    assert!(sent.telephone_event.is_some());
    assert_eq!(sdp_version(&offer.body), held_version + 1);
    let updates = h.media.len();
    // An ACK of another CSeq carries no answer to that offer.
    h.send(TRUNK, &ack(TRUNK, 2, &caller_sdp(40004, "sendrecv")));
    assert_eq!(h.media.len(), updates, "{:?}", h.media);
    // A stranger's ACK with the dialog's tags and CSeq moves nothing.
    h.send(STRANGER, &ack(STRANGER, 3, &caller_sdp(40004, "sendrecv")));
    assert_eq!(h.media.len(), updates, "{:?}", h.media);
    assert_eq!(
        h.gauge("centralino_sip_rejected_total{reason=foreign_dialog}"),
        1
    );
    // The caller's own ACK: the answer, at a new port, sendrecv.
    h.send(TRUNK, &ack(TRUNK, 3, &caller_sdp(40004, "sendrecv")));
    assert_eq!(last_update(&h.media), (Side::A, 40004, false));
    // Taken once: the ACK again (a retransmission) changes nothing.
    let updates = h.media.len();
    h.send(TRUNK, &ack(TRUNK, 3, &caller_sdp(40006, "sendonly")));
    assert_eq!(h.media.len(), updates);
    // An answer naming a multicast group: refused, the session as it was.
    h.send(TRUNK, &reinvite(4, ""));
    let group = caller_sdp(40008, "sendrecv").replace("c=IN IP4 192.0.2.10", "c=IN IP4 224.0.0.1");
    h.send(TRUNK, &ack(TRUNK, 4, &group));
    assert_eq!(h.media.len(), updates, "{:?}", h.media);
    // One with a law we did not offer (G.729), and an ACK with none.
    h.send(TRUNK, &reinvite(5, ""));
    let other_law = caller_sdp(40010, "sendrecv").replace("RTP/AVP 8", "RTP/AVP 18");
    h.send(TRUNK, &ack(TRUNK, 5, &other_law));
    h.send(TRUNK, &reinvite(6, ""));
    h.send(TRUNK, &ack(TRUNK, 6, ""));
    assert_eq!(h.media.len(), updates, "{:?}", h.media);
    assert_eq!(
        h.gauge("centralino_sdp_rejected_total{reason=ack_answer}"),
        3
    );
    assert_eq!(h.engine.active_calls(), 1, "the call goes on");
    // The caller moves to the other law we offered: taken.
    h.send(TRUNK, &reinvite(7, ""));
    let mu = caller_sdp(40012, "sendrecv").replace("RTP/AVP 8", "RTP/AVP 0");
    h.send(TRUNK, &ack(TRUNK, 7, &mu));
    assert_eq!(last_update(&h.media), (Side::A, 40012, false));
    assert_eq!(last_law(&h.media), Law::Ulaw);

    // The operator's phone: the same, on its own leg.
    let phone = |method: &str, cseq: u32, sdp: &str| {
        let from = format!("{};tag=b1", inv.header("To").unwrap());
        let to = inv.header("From").unwrap();
        request_in(PHONE1, method, cseq, &from, to, &inv.call_id, "", sdp)
    };
    let out = h.send(PHONE1, &phone("INVITE", 2, ""));
    let offer = &out.iter().find(|(_, m)| m.code() == 200).expect("200").1;
    let sent = sdp::parse(&offer.body).unwrap();
    assert_eq!(sent.direction, sdp::Direction::SendRecv);
    assert_eq!(sent.formats[0], 0, "the phone's law first: {offer:?}");
    // The caller's dialog's ACK of that CSeq is not the phone's answer.
    let updates = h.media.len();
    h.send(TRUNK, &ack(TRUNK, 2, &caller_sdp(40014, "sendrecv")));
    assert_eq!(h.media.len(), updates, "{:?}", h.media);
    let hold = PHONE_SDP.replace("30000", "30002") + "a=sendonly\r\n";
    h.send(PHONE1, &phone("ACK", 2, &hold));
    assert_eq!(last_update(&h.media), (Side::B, 30002, true));
}

/// Our 2xx to an INVITE goes on until the dialog's own ACK: a stranger's
/// ACK naming its Call-ID, tags and CSeq does not silence it (it may carry
/// our offer), and the ACK of the dialog's peer does.
#[test]
fn only_the_dialogs_own_ack_ends_our_2xx_retransmissions() {
    let (mut h, ok, _) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    h.send(TRUNK, &in_dialog("ACK", TRUNK, "am1", &a_tag, 1, ""));
    h.send(TRUNK, &in_dialog("INVITE", TRUNK, "am1", &a_tag, 2, ""));
    h.send(STRANGER, &in_dialog("ACK", STRANGER, "am1", &a_tag, 2, ""));
    let out = h.advance(Duration::from_millis(600));
    let again = |out: &[(SocketAddr, Message)]| {
        out.iter()
            .filter(|(a, m)| a.to_string() == TRUNK && m.code() == 200 && m.cseq == 2)
            .count()
    };
    assert_eq!(again(&out), 1, "T1: the 200 again: {out:?}");
    h.send(TRUNK, &in_dialog("ACK", TRUNK, "am1", &a_tag, 2, ""));
    let out = h.advance(Duration::from_secs(40));
    assert_eq!(again(&out), 0, "{out:?}");
    assert_eq!(h.engine.active_calls(), 1, "acknowledged: no Timer L");
}

/// The `o=` version of our SDP: its third field.
fn sdp_version(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body);
    let o = text
        .lines()
        .find(|l| l.starts_with("o="))
        .expect("an o= line");
    o.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Each leg's SDP has its own version (RFC 3264 §8: raised by one when
/// what we send that leg changes, the same when nothing does): the
/// caller's hold and resume move the caller's version only; the
/// operator's hold then is the operator leg's first change.
#[test]
fn each_legs_sdp_version_moves_with_its_own_changes_only() {
    let (mut h, ok, inv) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let first = sdp_version(&ok.body);
    let caller = |cseq: u32, dir: &str| {
        let sdp = format!(
            "v=0\r\no=- 1 {cseq} IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40002 RTP/AVP 8\r\na={dir}\r\n"
        );
        in_dialog("INVITE", TRUNK, "am1", &a_tag, cseq, &sdp)
    };
    let answer = |out: &[(SocketAddr, Message)], to: &str| {
        let to: SocketAddr = to.parse().unwrap();
        let ok = out
            .iter()
            .find(|(a, m)| *a == to && m.code() == 200)
            .expect("a 200")
            .1
            .clone();
        sdp_version(&ok.body)
    };
    let out = h.send(TRUNK, &caller(2, "sendonly"));
    assert_eq!(answer(&out, TRUNK), first + 1);
    let out = h.send(TRUNK, &caller(3, "sendrecv"));
    assert_eq!(answer(&out, TRUNK), first + 2);
    // An UPDATE without an offer (a refresh) is answered without SDP
    // (RFC 3311 §5.2), and moves no version.
    let out = h.send(TRUNK, &in_dialog("UPDATE", TRUNK, "am1", &a_tag, 4, ""));
    let ok = &out.iter().find(|(_, m)| m.code() == 200).expect("200").1;
    assert!(ok.body.is_empty(), "{ok:?}");
    let out = h.send(TRUNK, &caller(5, "sendrecv"));
    assert_eq!(answer(&out, TRUNK), first + 2);
    let phone = |cseq: u32, sdp: &str| {
        format!(
            "INVITE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE1};branch=z9hG4bKph{cseq}\r\nFrom: {};tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:phone@{PHONE1}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            inv.header("To").unwrap(),
            inv.header("From").unwrap(),
            inv.call_id,
            sdp.len()
        )
    };
    // The operator's phone refreshes with the same SDP: our answer names
    // the one law chosen, where our offer named every one: version 2.
    let out = h.send(PHONE1, &phone(2, PHONE_SDP));
    assert_eq!(answer(&out, PHONE1), 2, "{out:?}");
    let out = h.send(PHONE1, &phone(3, PHONE_SDP));
    assert_eq!(answer(&out, PHONE1), 2, "nothing changed: {out:?}");
    // It holds the caller: its leg's next version, whatever the caller's.
    let hold = PHONE_SDP.to_owned() + "a=sendonly\r\n";
    let out = h.send(PHONE1, &phone(4, &hold));
    assert_eq!(answer(&out, PHONE1), 3, "{out:?}");
    let out = h.send(PHONE1, &phone(5, &hold));
    assert_eq!(answer(&out, PHONE1), 3, "{out:?}");
    // A phone whose first re-INVITE is a hold: the next version after
    // our offer (1), not one skipped.
    let (mut h, _, inv) = connected();
    let hold_first = format!(
        "INVITE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE1};branch=z9hG4bKhf\r\nFrom: {};tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 INVITE\r\nContact: <sip:phone@{PHONE1}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold}",
        inv.header("To").unwrap(),
        inv.header("From").unwrap(),
        inv.call_id,
        hold.len()
    );
    assert_eq!(sdp_version(&inv.body), 1, "our offer");
    // A body-less UPDATE first (a refresh: no SDP sent, no version used).
    let update = format!(
        "UPDATE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE1};branch=z9hG4bKup\r\nFrom: {};tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 UPDATE\r\nContact: <sip:phone@{PHONE1}>\r\nContent-Length: 0\r\n\r\n",
        inv.header("To").unwrap(),
        inv.header("From").unwrap(),
        inv.call_id,
    );
    let out = h.send(PHONE1, &update);
    let ok = &out.iter().find(|(_, m)| m.code() == 200).expect("200").1;
    assert!(ok.body.is_empty(), "{ok:?}");
    let out = h.send(
        PHONE1,
        &hold_first.replace("CSeq: 2 INVITE", "CSeq: 3 INVITE"),
    );
    assert_eq!(answer(&out, PHONE1), 2, "{out:?}");
}

/// A key the caller sends as an RFC 4733 event reaches an operator's phone
/// that negotiated no telephone-event but lists INFO in its `Allow` by
/// INFO; a phone with neither gets nothing; the caller's side negotiated
/// events, so the operator's keys are left to the media plane.
#[test]
fn an_rfc4733_key_reaches_a_phone_without_events_by_info() {
    for (allow, want) in [
        ("INVITE, ACK, BYE, CANCEL, INFO", 1),
        ("INVITE, ACK, BYE, CANCEL", 0),
    ] {
        let mut h = Harness::new();
        h.register("1001", PHONE1, Algorithm::Md5);
        let out = h.invite("m1");
        let inv = requests(&out, PHONE1, "INVITE")[0].clone();
        let ok = response_to(&inv, 200, "b1").replacen(
            "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO",
            allow,
            1,
        );
        h.send(PHONE1, &ok);
        let call = CallId(1);
        h.engine.handle_media(
            h.now,
            MediaEvent::Dtmf {
                call,
                side: Side::A,
                digit: '7',
            },
        );
        let out = h.drain();
        let infos = requests(&out, PHONE1, "INFO");
        assert_eq!(infos.len(), want, "{allow:?}: {out:?}");
        if want == 1 {
            assert_eq!(
                infos[0].header("Content-Type"),
                Some("application/dtmf-relay")
            );
            assert_eq!(infos[0].body, b"Signal=7\r\nDuration=160\r\n");
            assert_eq!(infos[0].call_id, inv.call_id);
        }
        assert_eq!(
            h.gauge("centralino_dtmf_converted_total{direction=rfc4733_to_info}"),
            want as i64
        );
        assert_eq!(h.engine.calls[&call].media.digits, "7");
        // The operator's key as an event: the caller negotiated events.
        h.advance(Duration::from_secs(1));
        h.engine.handle_media(
            h.now,
            MediaEvent::Dtmf {
                call,
                side: Side::B,
                digit: '1',
            },
        );
        assert!(requests(&h.drain(), TRUNK, "INFO").is_empty());
    }
}

/// The answers to keys relayed by INFO are counted; a phone that says the
/// dialog is gone (481) or that it takes no INFO (501) is sent no more.
#[test]
fn a_phone_that_refuses_relayed_info_is_sent_no_more() {
    for (code, outcome) in [(481u16, "gone"), (501, "not_taken")] {
        let (mut h, ok, _) = connected();
        let a_tag = ok.to_tag.clone().unwrap();
        let key = |cseq: u32| {
            in_dialog(
                "INFO",
                TRUNK,
                "am1",
                &a_tag,
                cseq,
                "Signal=5\r\nDuration=160\r\n",
            )
        };
        let out = h.send(TRUNK, &key(5));
        let relayed = requests(&out, PHONE1, "INFO");
        assert_eq!(relayed.len(), 1, "{out:?}");
        h.send(PHONE1, &response_to(relayed[0], 200, "b1"));
        assert_eq!(
            h.gauge("centralino_info_relayed_total{outcome=delivered}"),
            1
        );
        h.advance(Duration::from_secs(1));
        let out = h.send(TRUNK, &key(6));
        let relayed = requests(&out, PHONE1, "INFO");
        assert_eq!(relayed.len(), 1, "{out:?}");
        h.send(PHONE1, &response_to(relayed[0], code, "b1"));
        assert_eq!(
            h.gauge(&format!(
                "centralino_info_relayed_total{{outcome={outcome}}}"
            )),
            1
        );
        h.advance(Duration::from_secs(1));
        let out = h.send(TRUNK, &key(7));
        assert_eq!(
            codes(&out, TRUNK),
            vec![200],
            "the caller's key is still taken"
        );
        assert!(requests(&out, PHONE1, "INFO").is_empty(), "{out:?}");
        assert_eq!(h.engine.active_calls(), 1, "a key does not end the call");
    }
}

#[test]
fn info_digits_and_rtp_digits_reach_the_call_and_silence_ends_it() {
    let (mut h, ok, inv) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let info = format!(
        "INFO sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKinfo\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=am1\r\nTo: <sip:100@192.0.2.1>;tag={a_tag}\r\nCall-ID: m1\r\nCSeq: 5 INFO\r\nContent-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n"
    );
    let out = h.send(TRUNK, &info);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    // Relayed to the operator's phone as it came, in its dialog.
    let relayed = requests(&out, PHONE1, "INFO");
    assert_eq!(relayed.len(), 1, "{out:?}");
    assert_eq!(relayed[0].call_id, inv.call_id);
    assert_eq!(
        relayed[0].header("Content-Type"),
        Some("application/dtmf-relay")
    );
    assert_eq!(relayed[0].body, b"Signal=5\r\nDuration=160\r\n");
    // Not a key: answered, counted as nothing, not relayed.
    let junk = info
        .replace("z9hG4bKinfo", "z9hG4bKinfo2")
        .replace("CSeq: 5", "CSeq: 6")
        .replace("Signal=5\r\n", "Signal=X\r\n");
    let out = h.send(TRUNK, &junk);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert!(requests(&out, PHONE1, "INFO").is_empty(), "{out:?}");
    let call = CallId(1);
    h.engine.handle_media(
        h.now,
        MediaEvent::Dtmf {
            call,
            side: Side::A,
            digit: '7',
        },
    );
    assert_eq!(h.engine.calls[&call].media.digits, "57");
    assert_eq!(h.gauge("centralino_dtmf_digits_total{source=info}"), 1);
    assert_eq!(h.gauge("centralino_dtmf_digits_total{source=rfc4733}"), 1);
    // A second operator logs in (nothing waits for them yet).
    h.register("1002", PHONE2, Algorithm::Md5);
    // The operator's phone died: no RTP. The caller is not left in dead
    // air: the phone gets BYE, its operator is paused, the caller hears
    // the music again, back in the queue; the caller's silence (side A)
    // would end the call.
    h.engine.handle_media(
        h.now,
        MediaEvent::Idle {
            call,
            side: Side::B,
        },
    );
    let out = h.drain();
    assert!(requests(&out, TRUNK, "BYE").is_empty());
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    // Ahead of anyone else: the next operator is offered it at once.
    let inv2 = requests(&out, PHONE2, "INVITE")[0].clone();
    let n = h.media.len();
    assert!(
        matches!(
            &h.media[n - 2..n],
            [MediaCommand::Unbridge { .. }, MediaCommand::Play { .. }]
        ),
        "{:?}",
        &h.media
    );
    assert_eq!(h.engine.active_calls(), 1);
    assert_eq!(h.gauge("centralino_media_timeouts_total{side=operator}"), 1);
    assert_eq!(
        h.gauge("centralino_calls_requeued_total{reason=operator_media_lost}"),
        1
    );
    assert_eq!(h.gauge("centralino_agents{state=paused,tenant=demo}"), 1);
    assert!(h.records.iter().any(|r| matches!(
        r,
        Record::Queue { event: QueueEvent::Requeue, agent: Some(a), .. } if a == "1001"
    )));
    assert!(h.records.iter().any(|r| matches!(
        r,
        Record::Agent { event: "pause", reason: Some(why), .. } if why == "media_lost"
    )));
    // The next operator takes the caller, already answered: no second 200.
    let out = h.send(PHONE2, &response_to(&inv2, 200, "b2"));
    assert!(codes(&out, TRUNK).is_empty());
    assert!(matches!(h.media.last(), Some(MediaCommand::Bridge { .. })));
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);
    // Now the caller goes silent: that ends the call.
    h.engine.handle_media(
        h.now,
        MediaEvent::Idle {
            call,
            side: Side::A,
        },
    );
    let out = h.drain();
    assert_eq!(requests(&out, TRUNK, "BYE").len(), 1);
    assert_eq!(requests(&out, PHONE2, "BYE").len(), 1);
    assert_eq!(h.engine.active_calls(), 0);
    let _ = inv;
}

#[test]
fn waiting_callers_hear_position_and_wait_in_italian_then_music() {
    let config = CONFIG.replace(
        "wrap_up_seconds = 3",
        "wrap_up_seconds = 3\nannounce_seconds = 20\nmax_wait_seconds = 100",
    );
    let config = config.replace("max_wait_seconds = 10\n", "");
    let mut h = Harness::with(&config);
    let mut lib = Library::new();
    for name in announce::prompt_names() {
        lib.insert(name, Prompt::from_samples(&[100; 160], Law::Alaw));
    }
    let music = announce::builtin_music(Law::Alaw);
    h.engine.set_prompts(Arc::new(lib), vec![Some(music)]);
    h.invite("w1");
    h.invite("w2");
    h.media.clear();
    let out = h.advance(Duration::from_secs(20));
    assert!(out.is_empty(), "{out:?}");
    let plays: Vec<usize> = h
        .media
        .iter()
        .map(|m| match m {
            MediaCommand::Play { prompts, music, .. } => {
                assert!(music.is_some(), "music resumes");
                prompts.len()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    // "Lei è il prossimo … grazie" (2) and "ci sono 2 chiamate … grazie" (4):
    // nobody staffed, so no wait is said.
    assert_eq!(plays, [2, 4]);
    assert_eq!(h.gauge("centralino_announcements_total{outcome=played}"), 2);
    // Without the Italian prompts the announcement is skipped, counted.
    let mut h = Harness::with(&config);
    h.invite("w3");
    h.media.clear();
    h.advance(Duration::from_secs(20));
    assert!(h.media.is_empty());
    assert_eq!(
        h.gauge("centralino_announcements_total{outcome=skipped}"),
        1
    );
}

#[test]
fn late_offer_gets_our_offer_in_the_200_and_media_opens_at_the_ack() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite_sdp("lo", "");
    assert_eq!(
        codes(&out, TRUNK),
        vec![100, 180],
        "no offer: no early media"
    );
    assert!(h.media.is_empty());
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let ours = sdp::parse(&ok.body).unwrap();
    assert_eq!(ours.formats, [8, 0, 101], "our offer: both laws and events");
    assert!(
        h.media.is_empty(),
        "nothing opens before the caller's answer"
    );
    let a_tag = ok.to_tag.clone().unwrap();
    let answer = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 41000 RTP/AVP 0\r\n";
    let ack = format!(
        "ACK sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKlo\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=alo\r\nTo: <sip:100@192.0.2.1>;tag={a_tag}\r\nCall-ID: lo\r\nCSeq: 1 ACK\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    );
    assert!(h.send(TRUNK, &ack).is_empty());
    let Some(MediaCommand::Open { a, .. }) = h.media.first() else {
        panic!("{:?}", h.media)
    };
    assert_eq!(
        (a.rtp().unwrap().addr.port(), a.rtp().unwrap().law),
        (41000, Law::Ulaw)
    );
    assert!(matches!(h.media.get(1), Some(MediaCommand::Bridge { .. })));
}

const IVR: &str = r#"
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
dids = { "100" = "info", "800" = { flow = "vaccini" }, "801" = { flow = "chiuso" } }

[[queues]]
name = "info"
tenant = "demo"
ring_timeout_seconds = 2
max_wait_seconds = 30

[[queues]]
name = "triage"
tenant = "demo"
requirements = "triage"
ring_timeout_seconds = 2
script = "domande-triage"

[[scripts]]
name = "domande-triage"
start = "febbre"
[scripts.questions.febbre]
text = "Ha febbre?"
answers = { "si" = "end", "no" = "end" }

[[flows]]
name = "vaccini"
start = "menu"
[flows.nodes.menu]
type = "menu"
prompts = ["menu"]
options = { "1" = "info", "2" = "why" }
on_fail = "info"
[flows.nodes.why]
type = "set"
variables = { motivo = "triage", urgenza = "alta" }
next = "triage"
[flows.nodes.info]
type = "enqueue"
queue = "info"
[flows.nodes.triage]
type = "enqueue"
queue = "triage"
priority = 3

[[flows]]
name = "chiuso"
start = "orari"
[flows.nodes.orari]
type = "condition"
calendar = { days = ["lun"], hours = ["08:00-09:00"] }
then = "info"
else = "bye"
[flows.nodes.info]
type = "enqueue"
queue = "info"
[flows.nodes.bye]
type = "hangup"
prompts = ["chiuso"]

[[agents]]
username = "1001"
password = "demo1001"
tenant = "demo"
queues = ["info"]

[[agents]]
username = "1002"
password = "demo1002"
tenant = "demo"
skills = { triage = 5 }
"#;

fn ivr_harness() -> Harness {
    let mut h = Harness::with(IVR);
    let mut lib = Library::new();
    for name in ["menu", "chiuso"] {
        lib.insert(name, Prompt::from_samples(&[100; 1600], Law::Alaw));
    }
    h.engine.set_prompts(Arc::new(lib), vec![None, None]);
    h
}

fn invite_did(h: &mut Harness, did: &str, call: &str) -> Vec<(SocketAddr, Message)> {
    h.send(
        TRUNK,
        &format!(
            "INVITE sip:{did}@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bK{call}\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=a{call}\r\nTo: <sip:{did}@192.0.2.1>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
            TRUNK_SDP.len()
        ),
    )
}

#[test]
fn an_ivr_call_is_answered_walks_the_menu_and_reaches_the_right_operator() {
    let mut h = ivr_harness();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1002", PHONE2, Algorithm::Md5);
    let out = invite_did(&mut h, "800", "i1");
    // Answered at once, media open, the menu plays; nobody is rung yet.
    assert_eq!(codes(&out, TRUNK), vec![100, 200]);
    assert!(
        requests(&out, PHONE1, "INVITE").is_empty() && requests(&out, PHONE2, "INVITE").is_empty()
    );
    assert!(matches!(h.media[0], MediaCommand::Open { .. }));
    let Some(MediaCommand::Play { prompts, music, .. }) = h.media.get(1) else {
        panic!("{:?}", h.media)
    };
    assert_eq!((prompts.len(), music.is_none()), (1, true));
    assert_eq!(
        h.gauge("centralino_flow_calls_total{flow=vaccini,outcome=started}"),
        1
    );
    // The caller presses 2: triage, which only 1002 may take.
    let call = CallId(1);
    h.engine.handle_media(
        h.now,
        MediaEvent::Dtmf {
            call,
            side: Side::A,
            digit: '2',
        },
    );
    let out = h.drain();
    assert_eq!(
        requests(&out, PHONE2, "INVITE").len(),
        1,
        "the triage operator is rung"
    );
    assert!(requests(&out, PHONE1, "INVITE").is_empty());
    assert!(codes(&out, TRUNK).is_empty(), "no second final response");
    assert!(matches!(
        h.media.last(),
        Some(MediaCommand::Play { music: None, .. }) | Some(MediaCommand::Play { .. })
    ));
    let inv = requests(&out, PHONE2, "INVITE")[0].clone();
    assert_eq!(inv.header("X-Centralino-Flow"), Some("vaccini"));
    assert_eq!(inv.header("X-Centralino-Script"), Some("domande-triage"));
    let (agent, Some(desk)) = h.desks.last().cloned().unwrap() else {
        panic!("{:?}", h.desks)
    };
    assert_eq!(agent, "1002");
    assert_eq!(
        (
            desk.queue.as_str(),
            desk.flow.as_deref(),
            desk.script.as_deref()
        ),
        ("triage", Some("vaccini"), Some("domande-triage"))
    );
    assert_eq!(desk.variables.len(), 2);
    let Some(Record::CallStarted { id, .. }) = h
        .records
        .iter()
        .find(|r| matches!(r, Record::CallStarted { .. }))
    else {
        panic!("{:?}", h.records)
    };
    assert_eq!(inv.header("X-Centralino-Call"), Some(id.as_str()));
    let vars: Vec<&str> = inv.headers_named("X-Centralino-Var").collect();
    assert_eq!(
        vars,
        ["motivo=triage", "urgenza=alta"],
        "the IVR answers reach the operator"
    );
    let out = h.send(PHONE2, &response_to(&inv, 200, "b2"));
    assert_eq!(requests(&out, PHONE2, "ACK").len(), 1);
    assert!(
        codes(&out, TRUNK).is_empty(),
        "the caller was answered by the IVR already"
    );
    assert!(matches!(h.media.last(), Some(MediaCommand::Bridge { .. })));
    assert_eq!(
        h.gauge("centralino_flow_calls_total{flow=vaccini,outcome=queued}"),
        1
    );
    // The call record and the queue log, in order.
    let kinds: Vec<String> = h
        .records
        .iter()
        .filter_map(|r| match r {
            Record::CallStarted { did, caller, .. } => Some(format!("start {did} {caller}")),
            Record::Queue {
                event,
                queue,
                agent,
                ..
            } => Some(format!(
                "{event} {queue} {}",
                agent.as_deref().unwrap_or("-")
            )),
            Record::CallEnded { outcome, .. } => Some(format!("end {outcome}")),
            Record::Complete { queue, agent, .. } => Some(format!("complete {queue} {agent}")),
            Record::Agent { .. } => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "start 800 +390612345678",
            "enter triage -",
            "offer triage 1002",
            "connect triage 1002"
        ]
    );
}

#[test]
fn outside_hours_the_flow_plays_closed_and_hangs_up() {
    let mut h = ivr_harness();
    // Wall clock: a Tuesday (1 December 2026, 10:00 UTC): closed.
    h.engine.set_wall_clock(h.now, 1_796_119_200);
    let out = invite_did(&mut h, "801", "c1");
    assert_eq!(codes(&out, TRUNK), vec![100, 200]);
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let a_tag = ok.to_tag.clone().unwrap();
    let ack = trunk_in_dialog("ACK", "c1", "ac1", "801", &a_tag, 1, "ackc1");
    h.send(TRUNK, &ack);
    // The closed prompt lasts 200 ms; then BYE.
    let out = h.advance(Duration::from_millis(250));
    let bye = requests(&out, TRUNK, "BYE");
    assert_eq!(bye.len(), 1, "{out:?}");
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.gauge("centralino_flow_calls_total{flow=chiuso,outcome=hung_up}"),
        1
    );
    assert_eq!(h.gauge("centralino_queue_enqueued_total{queue=info}"), 0);
}

#[test]
fn a_caller_who_hangs_up_after_the_ivr_leaves_the_queue() {
    let mut h = ivr_harness();
    let out = invite_did(&mut h, "800", "q1");
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let a_tag = ok.to_tag.clone().unwrap();
    let call = CallId(1);
    h.engine.handle_media(
        h.now,
        MediaEvent::Dtmf {
            call,
            side: Side::A,
            digit: '1',
        },
    );
    h.drain();
    assert_eq!(h.gauge("centralino_queue_calls{queue=info}"), 1);
    let bye = trunk_in_dialog("BYE", "q1", "aq1", "800", &a_tag, 2, "byeq1");
    let out = h.send(TRUNK, &bye);
    assert_eq!(
        codes(&out, TRUNK),
        vec![200],
        "only the BYE's answer, no 487"
    );
    assert_eq!(h.gauge("centralino_queue_calls{queue=info}"), 0);
    assert_eq!(h.gauge("centralino_calls_total{outcome=abandoned}"), 1);
    assert!(matches!(h.media.last(), Some(MediaCommand::Close { .. })));
    h.advance(Duration::from_secs(40));
    assert_eq!(h.engine.table_sizes(), [0; 5]);
}

/// The answered-wait histogram of queue `info`: its bucket bounds and
/// its count.
fn answered_wait(h: &Harness) -> (Vec<f64>, u64) {
    let families = h.metrics.registry.gather();
    let f = families
        .iter()
        .find(|f| f.name() == "centralino_queue_answered_wait_seconds")
        .expect("the histogram");
    let m = f
        .get_metric()
        .iter()
        .find(|m| m.get_label().iter().any(|l| l.value() == "info"))
        .expect("the queue's series, at 0 from the start");
    let hist = m.get_histogram();
    let bounds = hist.get_bucket().iter().map(|b| b.upper_bound()).collect();
    (bounds, hist.get_sample_count())
}

/// A reload giving a queue another T (or second T, or short threshold)
/// gives the answered-wait histogram a bucket there at once (issue 17:
/// `_bucket` bounds at the configured T), and the queue's series is on
/// the page from then, as at start; the same thresholds again change
/// nothing.
#[test]
fn a_reload_with_a_new_service_level_threshold_adds_its_bucket() {
    let mut h = Harness::new();
    assert!(!answered_wait(&h).0.contains(&45.0));
    let t45 = CONFIG.replace(
        "wrap_up_seconds = 3\n",
        "wrap_up_seconds = 3\nservice_level_seconds = 45\nshort_abandon_seconds = 7\n",
    );
    h.engine
        .reload(h.now, &Config::from_toml(&t45).unwrap().engine())
        .unwrap();
    let (bounds, answered) = answered_wait(&h);
    assert_eq!(answered, 0);
    assert!(
        bounds.contains(&45.0) && bounds.contains(&7.0),
        "{bounds:?}"
    );
    // Observed into the new buckets.
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(answered_wait(&h).1, 1);
    h.engine
        .reload(h.now, &Config::from_toml(&t45).unwrap().engine())
        .unwrap();
    assert_eq!(answered_wait(&h).1, 1, "the same thresholds: kept");
}

/// A flow's queue must be the call's tenant's as the configuration
/// stands now: a call keeps its flow across reloads, and a later reload
/// may give the queue's name to another firm (D12).
#[test]
fn a_flow_reaches_only_its_calls_tenants_queues() {
    let config = IVR.replacen(
        "[[flows]]",
        "[[tenants]]\nname = \"altra\"\n\n[[queues]]\nname = \"estranea\"\ntenant = \"altra\"\n\n[[flows]]",
        1,
    );
    let mut h = Harness::with(&config);
    let (demo, altra) = (centralino_types::TenantId(0), centralino_types::TenantId(1));
    let info = h.engine.queue_ids["info"];
    let estranea = h.engine.queue_ids["estranea"];
    assert_eq!(h.engine.queue_tenant(estranea), altra);
    assert_eq!(h.engine.flow_queue(demo, "info"), Some(info));
    assert_eq!(h.engine.flow_queue(altra, "estranea"), Some(estranea));
    assert_eq!(
        h.engine.flow_queue(demo, "estranea"),
        None,
        "another firm's queue"
    );
    assert_eq!(
        h.engine.flow_queue(altra, "info"),
        None,
        "another firm's queue"
    );
    assert_eq!(h.engine.flow_queue(demo, "nessuna"), None);
    h.drain();
}

#[test]
fn a_reload_changes_new_calls_while_calls_in_progress_keep_their_flow() {
    let mut h = ivr_harness();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1002", PHONE2, Algorithm::Md5);
    // Call 1 starts on the old flow (2 = triage).
    invite_did(&mut h, "800", "r1");
    // The new flow sends 2 to the info queue instead.
    let new = Config::from_toml(&IVR.replace(
        r#"options = { "1" = "info", "2" = "why" }"#,
        r#"options = { "1" = "why", "2" = "info" }"#,
    ))
    .unwrap();
    h.engine.reload(h.now, &new.engine()).unwrap();
    invite_did(&mut h, "800", "r2");
    let (c1, c2) = (CallId(1), CallId(2));
    h.engine.handle_media(
        h.now,
        MediaEvent::Dtmf {
            call: c1,
            side: Side::A,
            digit: '2',
        },
    );
    let out = h.drain();
    assert_eq!(
        requests(&out, PHONE2, "INVITE").len(),
        1,
        "old flow: triage"
    );
    h.engine.handle_media(
        h.now,
        MediaEvent::Dtmf {
            call: c2,
            side: Side::A,
            digit: '2',
        },
    );
    let out = h.drain();
    assert_eq!(requests(&out, PHONE1, "INVITE").len(), 1, "new flow: info");
    // Queues cannot change live.
    let renamed = Config::from_toml(
        &IVR.replace(r#"name = "triage""#, r#"name = "triagex""#)
            .replace("queue = \"triage\"", "queue = \"triagex\""),
    )
    .unwrap();
    assert!(
        h.engine
            .reload(h.now, &renamed.engine())
            .unwrap_err()
            .to_string()
            .contains("restart")
    );
}

#[test]
fn virtual_hold_stores_a_callback_then_frees_the_caller_and_keeps_the_place_on_failure() {
    let config = CONFIG.replace(
        "wrap_up_seconds = 3",
        "wrap_up_seconds = 3\ncallback_key = \"1\"\ncallback_confirm_prompts = [\"grazie\"]",
    );
    let mut h = Harness::with(&config);
    let mut lib = Library::new();
    lib.insert("grazie", Prompt::from_samples(&[100; 800], Law::Alaw));
    h.engine.set_prompts(Arc::new(lib), vec![None]);
    h.engine.set_wall_clock(h.now, 1_796_119_200);
    h.invite("v1");
    h.drain();
    let call = CallId(1);
    assert_eq!(h.gauge("centralino_queue_calls{queue=info}"), 1);
    // The store fails: the caller keeps the place.
    h.engine.handle_media(
        h.now,
        MediaEvent::Dtmf {
            call,
            side: Side::A,
            digit: '1',
        },
    );
    let stored = |h: &mut Harness| {
        let mut asked = Vec::new();
        while let Some(o) = h.engine.poll_output() {
            if let Output::StoreCallback {
                number,
                enqueued_unix,
                queue,
                ..
            } = o
            {
                asked.push((number, enqueued_unix, queue));
            }
        }
        asked
    };
    assert_eq!(
        stored(&mut h),
        [("+390612345678".to_owned(), 1_796_119_200, "info".to_owned())]
    );
    h.engine.callback_stored(h.now, call, false);
    assert_eq!(
        h.gauge("centralino_queue_calls{queue=info}"),
        1,
        "still waiting"
    );
    // Again, and this time it is durable: out of the queue, the
    // confirmation plays, then the call ends.
    h.now += Duration::from_secs(30);
    h.engine.handle_media(
        h.now,
        MediaEvent::Dtmf {
            call,
            side: Side::A,
            digit: '1',
        },
    );
    let asked = stored(&mut h);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].1, 1_796_119_200, "the original enqueue time");
    h.engine.callback_stored(h.now, call, true);
    h.drain();
    assert_eq!(h.gauge("centralino_queue_calls{queue=info}"), 0);
    assert!(
        matches!(h.media.last(), Some(MediaCommand::Play { prompts, .. }) if prompts.len() == 1)
    );
    let out = h.advance(Duration::from_millis(150));
    assert_eq!(
        codes(&out, TRUNK),
        vec![480],
        "the call ends after the confirmation"
    );
    assert_eq!(
        h.gauge("centralino_callbacks_total{outcome=ivr_created}"),
        1
    );
    assert_eq!(h.engine.active_calls(), 0);
    // The flow's hangup after a stored callback is the callback's request,
    // not a dead end.
    assert_eq!(
        h.gauge("centralino_dead_ends_total{queue=,reason=ivr_hangup}"),
        0
    );
    assert_eq!(
        h.gauge("centralino_calls_total{outcome=callback_requested}"),
        1
    );
}

#[test]
fn a_callback_reserves_an_operator_then_dials_the_citizen_and_retries_when_busy() {
    let config = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\" }\noutbound = \"192.0.2.10:5060\"\ncaller_id = \"+39800111222\"",
    )
    .replace(
        "wrap_up_seconds = 3",
        "wrap_up_seconds = 3\ncallback_retries = { busy = { attempts = 2, delay_seconds = 60 } }",
    );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.engine.set_wall_clock(h.now, 1_796_119_200);
    h.register("1001", PHONE1, Algorithm::Md5);
    let due = |id: &str, attempt| DueCallback {
        id: id.into(),
        queue: "info".into(),
        number: "+393331112223".into(),
        requirements: None,
        priority: 0,
        created_unix: 1_796_119_200 - 600,
        // Promised within a minute of now: cb1 is kept in time.
        promised_unix: Some(1_796_119_200 + 60),
        attempt,
        campaign: None,
    };
    // No port for the first try: nobody is called, the attempt is
    // retried by the queue's policy, nothing recorded.
    h.no_ports = true;
    h.engine.start_callback(h.now, due("cb0", 1));
    let out = h.drain();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.calls_started(), 0, "{:?}", h.records);
    assert!(
        matches!(
            h.callbacks.last(),
            Some((id, CallbackState::Retry { outcome: CallbackOutcome::NoRtpPort, .. })) if id == "cb0"
        ),
        "{:?}",
        h.callbacks
    );
    h.no_ports = false;
    h.engine.start_callback(h.now, due("cb1", 1));
    let out = h.drain();
    // Agent first: the operator is called; the citizen not yet.
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    assert_eq!(inv.header("X-Centralino-Callback"), Some("cb1"));
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(requests(&out, PHONE1, "ACK").len(), 1);
    assert!(
        requests(&out, TRUNK, "INVITE").is_empty(),
        "not before the store knows"
    );
    // The operator hears the callback signal while the citizen is dialled
    // (no recorded whisper: the built-in tone); no bridge yet.
    let n = h.media.len();
    let [
        MediaCommand::Open { .. },
        MediaCommand::Whisper { b, prompts, .. },
    ] = &h.media[n - 2..]
    else {
        panic!("{:?}", h.media)
    };
    assert_eq!(b.rtp().unwrap().addr.to_string(), "192.0.2.21:30000");
    // Its RTP may also come from where it registered from (symmetric).
    assert_eq!(
        b.rtp().unwrap().signalling,
        Some(PHONE1.parse::<SocketAddr>().unwrap().ip())
    );
    assert_eq!(prompts.len(), 1);
    assert!(prompts[0].duration() >= Duration::from_millis(500));
    assert_eq!(h.gauge("centralino_whispers_total{kind=callback}"), 1);
    let Some((id, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    assert_eq!(id, "cb1");
    h.engine.callback_dialing(h.now, call, true);
    let out = h.drain();
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    assert_eq!(
        dial.request_uri(),
        Some("sip:+393331112223@192.0.2.10:5060")
    );
    assert!(dial.header("From").unwrap().contains("+39800111222"));
    let offer = sdp::parse(&dial.body).unwrap();
    assert_eq!(
        offer.formats,
        [8, 0, 101],
        "our offer from the caller-side port"
    );
    // The citizen answers: media opens and bridges, the callback is done.
    let mut ok = dial.response(200, "OK", Some("cit"));
    ok.push("Contact", "<sip:cittadino@192.0.2.10:5060>");
    ok.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
    let out = h.send(TRUNK, &String::from_utf8(ok.to_bytes()).unwrap());
    assert_eq!(requests(&out, TRUNK, "ACK").len(), 1);
    let n = h.media.len();
    let [
        MediaCommand::Update {
            side: Side::A,
            peer,
            held: false,
            ..
        },
        MediaCommand::Bridge { .. },
    ] = &h.media[n - 2..]
    else {
        panic!(
            "the citizen's side learns its address, then the bridge: {:?}",
            h.media
        )
    };
    assert_eq!(peer.rtp().unwrap().addr.to_string(), "192.0.2.10:40000");
    assert_eq!(
        h.callbacks.last().unwrap(),
        &("cb1".to_owned(), CallbackState::Done)
    );
    assert_eq!(
        h.gauge("centralino_queue_callbacks_kept_total{in_time=yes,queue=info}"),
        1
    );
    // The citizen hangs up: the operator gets BYE.
    let bye = format!(
        "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKcbye\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        ok.header("To").unwrap(),
        dial.header("From").unwrap(),
        dial.call_id
    );
    let out = h.send(TRUNK, &bye);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    assert_eq!(h.engine.active_calls(), 0);

    // Busy (its own policy: 2 attempts, 60 s apart): retry, then failed.
    h.advance(Duration::from_secs(10));
    for (attempt, want) in [
        (
            1,
            CallbackState::Retry {
                outcome: CallbackOutcome::Busy,
                after: Duration::from_secs(60),
            },
        ),
        (
            2,
            CallbackState::Failed {
                outcome: CallbackOutcome::Busy,
            },
        ),
    ] {
        h.engine.start_callback(h.now, due("cb2", attempt));
        let out = h.drain();
        let inv = requests(&out, PHONE1, "INVITE")[0].clone();
        h.send(PHONE1, &response_to(&inv, 200, &format!("b{attempt}")));
        let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
            panic!()
        };
        h.engine.callback_dialing(h.now, call, true);
        let out = h.drain();
        let dial = requests(&out, TRUNK, "INVITE")[0].clone();
        let busy = dial.response(486, "Busy Here", Some("x"));
        let out = h.send(TRUNK, &String::from_utf8(busy.to_bytes()).unwrap());
        assert_eq!(
            requests(&out, PHONE1, "BYE").len(),
            1,
            "the operator is let go"
        );
        assert_eq!(h.callbacks.last().unwrap(), &("cb2".to_owned(), want));
        h.advance(Duration::from_secs(10));
    }
    // Busy twice: not kept, in time or not.
    assert_eq!(
        h.gauge("centralino_queue_callbacks_kept_total{in_time=yes,queue=info}")
            + h.gauge("centralino_queue_callbacks_kept_total{in_time=no,queue=info}"),
        1
    );
}

#[test]
fn an_operator_gone_before_the_citizen_is_dialled_gives_the_callback_back_uncounted() {
    let config = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\" }\noutbound = \"192.0.2.10:5060\"",
    );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    let due = |id: &str| DueCallback {
        id: id.into(),
        queue: "info".into(),
        number: "+393331112225".into(),
        requirements: None,
        priority: 0,
        created_unix: 0,
        promised_unix: None,
        attempt: 1,
        campaign: None,
    };
    let bye_from_phone = |inv: &Message, tag: &str, branch: &str| {
        format!(
            "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE1};branch={branch}\r\nFrom: {};tag={tag}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            inv.header("To").unwrap(),
            inv.header("From").unwrap(),
            inv.call_id
        )
    };
    // The operator hangs up during the callback signal, while the store
    // is still making "being dialled" durable (a slow disk).
    h.engine.start_callback(h.now, due("cb1"));
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    let out = h.send(PHONE1, &bye_from_phone(&inv, "b1", "z9hG4bKop1"));
    assert_eq!(codes(&out, PHONE1), vec![200]);
    assert_eq!(
        h.callbacks.last().unwrap(),
        &(
            "cb1".to_owned(),
            CallbackState::Requeue {
                outcome: CallbackOutcome::Ended(CallOutcome::AgentHangup)
            }
        ),
        "back to pending at once, the attempt not counted"
    );
    assert_eq!(
        h.gauge("centralino_callbacks_total{outcome=operator_left}"),
        1
    );
    // The store's late answer dials nobody: no operator is there.
    h.engine.callback_dialing(h.now, call, true);
    assert!(requests(&h.drain(), TRUNK, "INVITE").is_empty());
    assert_eq!(h.engine.active_calls(), 0);

    // Once the citizen's phone rings it was an attempt: CANCEL, and the
    // queue's retry policy.
    h.advance(Duration::from_secs(10));
    h.engine.start_callback(h.now, due("cb2"));
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b2"));
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!()
    };
    h.engine.callback_dialing(h.now, call, true);
    assert_eq!(requests(&h.drain(), TRUNK, "INVITE").len(), 1);
    let out = h.send(PHONE1, &bye_from_phone(&inv, "b2", "z9hG4bKop2"));
    assert_eq!(requests(&out, TRUNK, "CANCEL").len(), 1);
    assert!(matches!(
        h.callbacks.last().unwrap(),
        (id, CallbackState::Retry { outcome: CallbackOutcome::Ended(CallOutcome::AgentHangup), .. }) if id == "cb2"
    ));
}

/// Operator 1001 has answered callback `cb1` (agent first): the engine
/// waits for the driver's word to dial.
fn callback_at_its_dial() -> (Harness, CallId) {
    let config = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\" }\noutbound = \"192.0.2.10:5060\"",
    );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    h.engine.start_callback(
        h.now,
        DueCallback {
            id: "cb1".into(),
            queue: "info".into(),
            number: "+393331112225".into(),
            requirements: None,
            priority: 0,
            created_unix: 0,
            promised_unix: None,
            attempt: 1,
            campaign: None,
        },
    );
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    (h, call)
}

/// In a national network the dial is fenced on the work stream first;
/// the stream unreachable, the citizen is not dialled, the operator is
/// let go, and the callback goes back to pending with its attempt given
/// back.
#[test]
fn a_callback_the_work_stream_cannot_fence_is_not_dialled_and_not_counted() {
    let (mut h, call) = callback_at_its_dial();
    h.engine.callback_held(h.now, call);
    let out = h.drain();
    assert!(requests(&out, TRUNK, "INVITE").is_empty(), "nobody dialled");
    assert_eq!(
        requests(&out, PHONE1, "BYE").len(),
        1,
        "the operator let go"
    );
    assert_eq!(
        h.callbacks.last().unwrap(),
        &(
            "cb1".to_owned(),
            CallbackState::Requeue {
                outcome: CallbackOutcome::Ended(CallOutcome::ClusterUnavailable)
            }
        )
    );
    assert_eq!(h.engine.active_calls(), 0);
}

/// The work stream says another node owns the callback now: the operator
/// is let go, nobody is dialled, and nothing is said of the callback here
/// (no retry, no failure, no message to the citizen).
#[test]
fn a_callback_another_node_took_is_let_go_without_a_word() {
    let (mut h, call) = callback_at_its_dial();
    let before = h.callbacks.len();
    h.engine.callback_gone(h.now, call);
    let out = h.drain();
    assert!(requests(&out, TRUNK, "INVITE").is_empty(), "nobody dialled");
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    assert_eq!(h.callbacks.len(), before, "no state: {:?}", h.callbacks);
    assert_eq!(h.engine.active_calls(), 0);
}

/// Callback `id` for `number` (agent first): operator 1001 answers with
/// `tag`, the store marks it dialled; what the engine sent then.
fn callback_dialled(
    h: &mut Harness,
    id: &str,
    number: &str,
    tag: &str,
) -> Vec<(SocketAddr, Message)> {
    h.engine.start_callback(
        h.now,
        DueCallback {
            id: id.into(),
            queue: "info".into(),
            number: number.into(),
            requirements: None,
            priority: 0,
            created_unix: 0,
            promised_unix: None,
            attempt: 1,
            campaign: None,
        },
    );
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, tag));
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    h.engine.callback_dialing(h.now, call, true);
    h.drain()
}

/// The carrier of the backup outbound trunk.
const BACKUP: &str = "192.0.2.11:5060";

/// The test configuration with an outbound trunk to `TRUNK` (`extra`
/// lines added to it), and with `backup` a second one of the same tenant
/// to `BACKUP` after it.
fn outbound_trunks(extra: &str, backup: bool) -> String {
    let second = if backup {
        "\n\n[[trunks]]\nname = \"backup\"\ntenant = \"demo\"\npeers = [\"192.0.2.11\"]\noutbound = \"192.0.2.11:5060\""
    } else {
        ""
    };
    CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        &format!("dids = {{ \"100\" = \"info\" }}\noutbound = \"192.0.2.10:5060\"{extra}{second}"),
    )
}

/// `from` answers `req` with 503 (a carrier that cannot take it).
fn unavailable(
    h: &mut Harness,
    from: &str,
    req: &Message,
    tag: &str,
) -> Vec<(SocketAddr, Message)> {
    let down = req.response(503, "Service Unavailable", Some(tag));
    h.send(from, &String::from_utf8(down.to_bytes()).unwrap())
}

#[test]
fn a_failing_outbound_trunk_hands_the_callback_to_the_next_one() {
    let mut h = Harness::with(&outbound_trunks("", true));
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    // Each callback: the operator answers, the store marks it dialled, the
    // primary carrier answers 503; returns the INVITE sent to the backup.
    let dial = |h: &mut Harness, id: &str, tag: &str| {
        let out = callback_dialled(h, id, "+393331112226", tag);
        let first = requests(&out, TRUNK, "INVITE")[0].clone();
        let out = unavailable(h, TRUNK, &first, "x");
        assert_eq!(requests(&out, TRUNK, "ACK").len(), 1, "the 503 is ACKed");
        assert!(
            requests(&out, PHONE1, "BYE").is_empty(),
            "the operator waits on"
        );
        let second = requests(&out, BACKUP, "INVITE")[0].clone();
        assert_eq!(
            second.request_uri(),
            Some("sip:+393331112226@192.0.2.11:5060")
        );
        assert_ne!(second.call_id, first.call_id, "a new dialog");
        assert!(sdp::parse(&second.body).is_ok(), "with our offer");
        second
    };
    // The backup is down too: no trunk left, the attempt failed.
    let second = dial(&mut h, "cb1", "b1");
    let out = unavailable(&mut h, BACKUP, &second, "y");
    assert_eq!(
        requests(&out, PHONE1, "BYE").len(),
        1,
        "the operator is let go"
    );
    assert!(matches!(
        h.callbacks.last().unwrap(),
        (id, CallbackState::Retry { outcome: CallbackOutcome::Failed, .. }) if id == "cb1"
    ));
    // The backup answers: the citizen is reached in the same attempt.
    h.advance(Duration::from_secs(10));
    let second = dial(&mut h, "cb2", "b2");
    let mut ok = second.response(200, "OK", Some("cit"));
    ok.push("Contact", "<sip:cittadino@192.0.2.11:5060>");
    ok.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
    let out = h.send(BACKUP, &String::from_utf8(ok.to_bytes()).unwrap());
    assert_eq!(requests(&out, BACKUP, "ACK").len(), 1);
    assert_eq!(
        h.callbacks.last().unwrap(),
        &("cb2".to_owned(), CallbackState::Done)
    );
    assert_eq!(h.gauge("centralino_trunk_failovers_total{reason=5xx}"), 2);
}

#[test]
fn a_callback_whose_trunk_a_reload_removed_fails_over_without_a_crash() {
    // An outside review found it: the failover read the tenant from the
    // trunk's position, which a reload may have removed (a panic that
    // ends the engine) or handed to another tenant's trunk.
    let mut h = Harness::with(&outbound_trunks("", true));
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = callback_dialled(&mut h, "cb1", "+393331112226", "b1");
    let first = requests(&out, TRUNK, "INVITE")[0].clone();
    let out = unavailable(&mut h, TRUNK, &first, "x");
    let second = requests(&out, BACKUP, "INVITE")[0].clone();
    // The backup trunk leaves the configuration while it rings.
    let primary = Config::from_toml(&outbound_trunks("", false)).unwrap();
    h.engine.reload(h.now, &primary.engine()).unwrap();
    let out = unavailable(&mut h, BACKUP, &second, "y");
    assert_eq!(
        requests(&out, PHONE1, "BYE").len(),
        1,
        "the operator is let go"
    );
    assert!(matches!(
        h.callbacks.last().unwrap(),
        (id, CallbackState::Retry { outcome: CallbackOutcome::Failed, .. }) if id == "cb1"
    ));
}

#[test]
fn a_trunk_silent_to_options_is_skipped_until_it_answers_again() {
    let mut h = Harness::with(&outbound_trunks("\noptions_seconds = 5", true));
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    assert_eq!(h.gauge("centralino_trunk_up{trunk=carrier}"), 1);
    // The primary carrier answers no OPTIONS: down after Timer B.
    let out = h.advance(Duration::from_secs(40));
    let pings = requests(&out, TRUNK, "OPTIONS");
    assert!(pings.len() >= 7, "every 5 s: {}", pings.len());
    assert_eq!(pings[0].request_uri(), Some("sip:192.0.2.10:5060"));
    assert!(requests(&out, BACKUP, "OPTIONS").is_empty(), "not asked");
    assert_eq!(h.gauge("centralino_trunk_up{trunk=carrier}"), 0);
    let callback =
        |h: &mut Harness, id: &str, tag: &str| callback_dialled(h, id, "+393331112228", tag);
    // A callback now goes straight to the backup: no Timer B wait first.
    let out = callback(&mut h, "cb1", "b1");
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    let inv = requests(&out, BACKUP, "INVITE")[0].clone();
    let busy = inv.response(486, "Busy Here", Some("x"));
    h.send(BACKUP, &String::from_utf8(busy.to_bytes()).unwrap());
    // The carrier answers a ping again (even 405): up, used first again.
    let out = h.advance(Duration::from_secs(5));
    let ping = requests(&out, TRUNK, "OPTIONS")[0].clone();
    let answer = ping.response(405, "Method Not Allowed", Some("p"));
    h.send(TRUNK, &String::from_utf8(answer.to_bytes()).unwrap());
    assert_eq!(h.gauge("centralino_trunk_up{trunk=carrier}"), 1);
    let out = callback(&mut h, "cb2", "b2");
    assert_eq!(requests(&out, TRUNK, "INVITE").len(), 1);
    assert!(requests(&out, BACKUP, "INVITE").is_empty());
}

#[test]
fn customer_first_dials_the_citizen_then_queues_them_for_an_operator() {
    let config = CONFIG
        .replace(
            "dids = { \"100\" = \"info\" }",
            "dids = { \"100\" = \"info\" }\noutbound = \"192.0.2.10:5060\"",
        )
        .replace(
            "wrap_up_seconds = 3",
            "wrap_up_seconds = 3\ncallback_mode = \"customer_first\"",
        );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    h.engine.start_callback(
        h.now,
        DueCallback {
            id: "cf1".into(),
            queue: "info".into(),
            number: "+393331112224".into(),
            requirements: None,
            priority: 0,
            created_unix: 0,
            promised_unix: None,
            attempt: 1,
            campaign: None,
        },
    );
    let out = h.drain();
    assert!(
        requests(&out, PHONE1, "INVITE").is_empty(),
        "no operator first"
    );
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    h.engine.callback_dialing(h.now, call, true);
    let out = h.drain();
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    let mut ok = dial.response(200, "OK", Some("cit"));
    ok.push("Contact", "<sip:cittadino@192.0.2.10:5060>");
    ok.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
    let out = h.send(TRUNK, &String::from_utf8(ok.to_bytes()).unwrap());
    assert_eq!(requests(&out, TRUNK, "ACK").len(), 1);
    assert!(
        !h.callbacks.iter().any(|(_, s)| *s == CallbackState::Done),
        "reached is not done: nobody has spoken to them yet"
    );
    // Reached: queued with music, then offered to the operator.
    assert!(
        h.media
            .iter()
            .any(|m| matches!(m, MediaCommand::Open { .. }))
            && matches!(h.media.last(), Some(MediaCommand::Play { .. })),
        "{:?}",
        h.media
    );
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let dialing_before = h.callbacks.len();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(requests(&out, PHONE1, "ACK").len(), 1);
    assert!(matches!(h.media.last(), Some(MediaCommand::Bridge { .. })));
    assert_eq!(
        &h.callbacks[dialing_before..],
        &[("cf1".to_owned(), CallbackState::Done)],
        "done once an operator talks to them, and not dialled again"
    );
    assert!(requests(&out, TRUNK, "INVITE").is_empty());

    // A second citizen, reached, hangs up while waiting for an operator
    // (1001 is busy): the request is tried again, not marked done.
    h.engine.start_callback(
        h.now,
        DueCallback {
            id: "cf2".into(),
            queue: "info".into(),
            number: "+393331112229".into(),
            requirements: None,
            priority: 0,
            created_unix: 0,
            promised_unix: None,
            attempt: 1,
            campaign: None,
        },
    );
    h.drain();
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    h.engine.callback_dialing(h.now, call, true);
    let out = h.drain();
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    let mut ok = dial.response(200, "OK", Some("cit2"));
    ok.push("Contact", "<sip:cittadino@192.0.2.10:5060>");
    ok.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
    h.send(TRUNK, &String::from_utf8(ok.to_bytes()).unwrap());
    let bye = format!(
        "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKcf2bye\r\nFrom: <sip:+393331112229@192.0.2.10>;tag=cit2\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n",
        dial.header("From").unwrap(),
        dial.call_id
    );
    let out = h.send(TRUNK, &bye);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert!(
        matches!(
            h.callbacks.last(),
            Some((id, CallbackState::Retry { outcome: CallbackOutcome::Abandoned, .. })) if id == "cf2"
        ),
        "{:?}",
        h.callbacks
    );
}

/// The IVR configuration with DID 802 transferring to +390612345000
/// through the outbound trunk 192.0.2.10:5070, hanging up (with
/// `hangup`'s extra line) when that fails.
fn transfer_flow_config(hangup: &str) -> String {
    IVR.replace(
        r#"dids = { "100" = "info", "800" = { flow = "vaccini" }, "801" = { flow = "chiuso" } }"#,
        r#"dids = { "100" = "info", "800" = { flow = "vaccini" }, "801" = { flow = "chiuso" }, "802" = { flow = "esterno" } }
outbound = "192.0.2.10:5070""#,
    )
    .replacen(
        "[[agents]]",
        &format!(
            r#"[[flows]]
name = "esterno"
start = "passa"
[flows.nodes.passa]
type = "transfer"
number = "+390612345000"
on_fail = "scusa"
[flows.nodes.scusa]
type = "hangup"
{hangup}

[[agents]]"#
        ),
        1,
    )
}

#[test]
fn an_ivr_transfer_connects_the_caller_to_an_external_number_or_falls_back() {
    let config = transfer_flow_config(r#"prompts = ["chiuso"]"#);
    for answer in [200u16, 486] {
        let mut h = Harness::with(&config);
        let mut lib = Library::new();
        lib.insert("chiuso", Prompt::from_samples(&[100; 800], Law::Alaw));
        h.engine.set_prompts(Arc::new(lib), vec![None, None]);
        h.engine
            .set_outbound_local("192.0.2.1:5060".parse().unwrap());
        let out = invite_did(&mut h, "802", &format!("t{answer}"));
        let dial = requests(&out, "192.0.2.10:5070", "INVITE")[0].clone();
        assert_eq!(
            dial.request_uri(),
            Some("sip:+390612345000@192.0.2.10:5070")
        );
        // The leg keeps a session timer of its own (RFC 4028).
        assert_eq!(dial.header("Session-Expires"), Some("1800"));
        assert_eq!(dial.header("Supported"), Some("timer, 100rel"));
        // The far network's ringback (a 183 with SDP): the caller hears it.
        let mut early = dial.response(183, "Session Progress", Some("far"));
        early.push("Contact", "<sip:far@192.0.2.10:5070>");
        early.set_body(Some("application/sdp"), PHONE_SDP.as_bytes().to_vec());
        let early = String::from_utf8(early.to_bytes()).unwrap();
        h.send("192.0.2.10:5070", &early);
        let Some(MediaCommand::Bridge { b, record, .. }) = h.media.last() else {
            panic!("{:?}", h.media)
        };
        assert_eq!(b.rtp().unwrap().addr.port(), 30000);
        assert!(!record, "early media is not recorded");
        let bridged = h.media.len();
        h.send("192.0.2.10:5070", &early);
        assert_eq!(h.media.len(), bridged, "the same 183 again: nothing new");
        assert_eq!(h.gauge("centralino_transfer_early_media_total"), 1);
        let mut r = dial.response(answer, "X", Some("far"));
        r.push("Contact", "<sip:far@192.0.2.10:5070>");
        if answer == 200 {
            r.set_body(Some("application/sdp"), PHONE_SDP.as_bytes().to_vec());
        }
        let out = h.send("192.0.2.10:5070", &String::from_utf8(r.to_bytes()).unwrap());
        if answer == 200 {
            assert_eq!(requests(&out, "192.0.2.10:5070", "ACK").len(), 1);
            assert!(matches!(h.media.last(), Some(MediaCommand::Bridge { .. })));
            assert_eq!(
                h.gauge("centralino_flow_calls_total{flow=esterno,outcome=transferred}"),
                1
            );
            assert!(
                h.records.iter().any(|r| matches!(
                    r,
                    Record::Queue { event: QueueEvent::Transfer, queue, .. } if queue.is_empty()
                )),
                "the queue log keeps the transfer"
            );
            // The far end hangs up: the caller gets BYE.
            let bye = format!(
                "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKfarbye\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
                r.header("To").unwrap(),
                dial.header("From").unwrap(),
                dial.call_id
            );
            let out = h.send("192.0.2.10:5070", &bye);
            assert_eq!(requests(&out, TRUNK, "BYE").len(), 1);
            assert_eq!(h.engine.active_calls(), 0);
        } else {
            // Busy: the caller is taken off the far network's media, the
            // flow's fallback plays, then the caller gets BYE.
            assert!(
                matches!(
                    h.media[bridged..],
                    [MediaCommand::Unbridge { .. }, .., MediaCommand::Play { .. }]
                ),
                "{:?}",
                &h.media[bridged..]
            );
            let out = h.advance(Duration::from_millis(150));
            assert_eq!(requests(&out, TRUNK, "BYE").len(), 1, "{out:?}");
        }
    }
}

/// A transfer's far end answering reliably (RFC 3262): its 183 with SDP
/// is PRACKed in the early dialog, and its 200 without SDP confirms that
/// answer: the caller is bridged to it, not hung up on.
#[test]
fn a_transfer_answered_in_a_reliable_183_connects_on_a_200_without_sdp() {
    let config = transfer_flow_config("");
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    let out = invite_did(&mut h, "802", "rel");
    let far = "192.0.2.10:5070";
    let dial = requests(&out, far, "INVITE")[0].clone();
    let mut early = dial.response(183, "Session Progress", Some("far"));
    early.push("Contact", "<sip:far@192.0.2.10:5070>");
    early.push("Require", "100rel");
    early.push("RSeq", "1");
    early.set_body(Some("application/sdp"), PHONE_SDP.as_bytes().to_vec());
    let out = h.send(far, &String::from_utf8(early.to_bytes()).unwrap());
    let prack = requests(&out, far, "PRACK");
    assert_eq!(prack.len(), 1, "{out:?}");
    assert_eq!(prack[0].header("RAck"), Some("1 1 INVITE"));
    let mut ok = dial.response(200, "OK", Some("far"));
    ok.push("Contact", "<sip:far@192.0.2.10:5070>");
    let out = h.send(far, &String::from_utf8(ok.to_bytes()).unwrap());
    assert_eq!(requests(&out, far, "ACK").len(), 1, "{out:?}");
    assert!(requests(&out, TRUNK, "BYE").is_empty(), "{out:?}");
    let Some(MediaCommand::Bridge { b, .. }) = h.media.last() else {
        panic!("{:?}", h.media)
    };
    assert_eq!(b.rtp().unwrap().addr.port(), 30000);
    assert_eq!(
        h.gauge("centralino_flow_calls_total{flow=esterno,outcome=transferred}"),
        1
    );
}

/// The ACK of `ok` (a 2xx to an INVITE) from the peer at `from`.
fn ack_of(from: &str, ok: &Message) -> String {
    format!(
        "ACK sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKack{}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        ok.cseq,
        ok.header("From").unwrap(),
        ok.header("To").unwrap(),
        ok.call_id,
        ok.cseq
    )
}

/// The leg of an IVR transfer to a number, answered by a carrier: its
/// session timer is kept apart from the caller's (we refresh when the
/// carrier leaves it to us), the carrier's own re-INVITEs and UPDATEs on
/// that leg are answered, not refused as unknown dialogs, and a carrier
/// that stops refreshing ends the call on both sides.
#[test]
fn an_ivr_transfers_leg_is_refreshed_answered_and_ended_when_its_refreshes_stop() {
    let config = transfer_flow_config("");
    const FAR: &str = "192.0.2.10:5070";
    for we_refresh in [true, false] {
        let mut h = Harness::with(&config);
        h.engine
            .set_outbound_local("192.0.2.1:5060".parse().unwrap());
        let out = invite_did(&mut h, "802", &format!("s{we_refresh}"));
        let answered = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
        h.send(TRUNK, &ack_of(TRUNK, &answered));
        let dial = requests(&out, FAR, "INVITE")[0].clone();
        let mut ok = dial.response(200, "OK", Some("far"));
        ok.push("Contact", &format!("<sip:far@{FAR}>"));
        ok.push("Allow", "INVITE, ACK, BYE, UPDATE");
        let who = if we_refresh { "uac" } else { "uas" };
        ok.push("Session-Expires", &format!("600;refresher={who}"));
        ok.push("Require", "timer");
        ok.set_body(Some("application/sdp"), PHONE_SDP.as_bytes().to_vec());
        let out = h.send(FAR, &String::from_utf8(ok.to_bytes()).unwrap());
        assert_eq!(requests(&out, FAR, "ACK").len(), 1, "{out:?}");
        let far_request = |method: &str, cseq: u32, headers: &str, body: &str| {
            let (from, to) = (ok.header("To").unwrap(), dial.header("From").unwrap());
            request_in(FAR, method, cseq, from, to, &dial.call_id, headers, body)
        };
        // The carrier holds the caller (a re-INVITE with `sendonly`):
        // answered with our SDP for that leg, the media told.
        let hold = PHONE_SDP.replace("o=- 1 1", "o=- 1 2") + "a=sendonly\r\n";
        let out = h.send(FAR, &far_request("INVITE", 2, "", &hold));
        assert_eq!(codes(&out, FAR), vec![200], "{out:?}");
        h.send(FAR, &ack_of(FAR, &out[0].1));
        assert!(matches!(
            h.media.last(),
            Some(MediaCommand::Update {
                held: true,
                side: Side::B,
                ..
            })
        ));
        if we_refresh {
            // Half the interval: our UPDATE on that leg, not the caller's.
            let out = h.advance(Duration::from_secs(300));
            let update = requests(&out, FAR, "UPDATE");
            assert_eq!(update.len(), 1, "{out:?}");
            assert_eq!(update[0].call_id, dial.call_id);
            assert_eq!(update[0].to_tag.as_deref(), Some("far"));
            assert_eq!(
                update[0].header("Session-Expires"),
                Some("600;refresher=uac")
            );
            assert!(requests(&out, TRUNK, "UPDATE").is_empty());
            let done = update[0].response(200, "OK", Some("far"));
            h.send(FAR, &String::from_utf8(done.to_bytes()).unwrap());
            let out = h.advance(Duration::from_secs(300));
            let update = requests(&out, FAR, "UPDATE");
            assert_eq!(update.len(), 1, "refreshed again: {out:?}");
            // This time the carrier has lost the call.
            let gone = update[0].response(481, "Gone", Some("far"));
            let out = h.send(FAR, &String::from_utf8(gone.to_bytes()).unwrap());
            assert_eq!(requests(&out, TRUNK, "BYE").len(), 1, "{out:?}");
        } else {
            // The carrier refreshes by UPDATE: answered, the expiry rearmed.
            let out = h.advance(Duration::from_secs(290));
            assert!(requests(&out, FAR, "UPDATE").is_empty());
            let out = h.send(
                FAR,
                &far_request(
                    "UPDATE",
                    3,
                    "Supported: timer\r\nSession-Expires: 600;refresher=uac\r\n",
                    "",
                ),
            );
            let r = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
            assert_eq!(r.header("Session-Expires"), Some("600;refresher=uac"));
            let out = h.advance(Duration::from_secs(500));
            assert!(requests(&out, TRUNK, "BYE").is_empty(), "kept: {out:?}");
            assert_eq!(h.engine.active_calls(), 1);
            // Then nothing more: the call ends on both sides.
            // (The BYEs are repeated until answered.)
            let out = h.advance(Duration::from_secs(120));
            assert!(!requests(&out, TRUNK, "BYE").is_empty(), "{out:?}");
            assert!(!requests(&out, FAR, "BYE").is_empty(), "{out:?}");
        }
        assert_eq!(h.engine.active_calls(), 0);
        assert_eq!(h.gauge("centralino_session_timer_expired_total"), 1);
    }
}

#[test]
fn the_operator_hears_the_queue_whisper_before_the_bridge() {
    let config = CONFIG.replace(
        "wrap_up_seconds = 3",
        "wrap_up_seconds = 3\nwhisper = [\"linea-info\", \"missing\"]",
    );
    let mut h = Harness::with(&config);
    let mut lib = Library::new();
    lib.insert("linea-info", announce::builtin_music(Law::Alaw));
    h.engine.set_prompts(Arc::new(lib), vec![None]);
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("w1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let n = h.media.len();
    let [
        MediaCommand::Whisper { prompts, .. },
        MediaCommand::Bridge { .. },
    ] = &h.media[n - 2..]
    else {
        panic!("{:?}", h.media)
    };
    assert_eq!(prompts.len(), 1, "a prompt that is not loaded is left out");
    assert_eq!(h.gauge("centralino_whispers_total{kind=call}"), 1);
}

#[test]
fn virtual_hold_reads_the_number_back_and_takes_another_one() {
    let config = CONFIG.replace(
        "wrap_up_seconds = 3",
        "wrap_up_seconds = 3\ncallback_key = \"1\"\n[queues.callback_number]\nread_prompts = [\"il-numero\"]\nconfirm_prompts = [\"conferma\"]\nenter_prompts = [\"inserisca\"]\ntimeout_seconds = 5",
    );
    let mut h = Harness::with(&config);
    let mut lib = Library::new();
    for (name, n) in [("il-numero", 800), ("conferma", 800), ("inserisca", 1600)] {
        lib.insert(name, Prompt::from_samples(&vec![100; n], Law::Alaw));
    }
    for d in 0..=9 {
        lib.insert(
            format!("digits/{d}"),
            Prompt::from_samples(&[d * 10; 800], Law::Alaw),
        );
    }
    h.engine.set_prompts(
        Arc::new(lib),
        vec![Some(announce::builtin_music(Law::Alaw))],
    );
    h.invite("n1");
    h.drain();
    let call = CallId(1);
    // A key: the numbers asked to be stored (media commands kept).
    let key = |h: &mut Harness, call, digit| {
        h.engine.handle_media(
            h.now,
            MediaEvent::Dtmf {
                call,
                side: Side::A,
                digit,
            },
        );
        let mut numbers = Vec::new();
        while let Some(o) = h.engine.poll_output() {
            match o {
                Output::StoreCallback { number, .. } => numbers.push(number),
                Output::Media(m) => h.media.push(m),
                _ => {}
            }
        }
        numbers
    };
    let played = |h: &Harness| match h.media.last() {
        Some(MediaCommand::Play { prompts, music, .. }) => (prompts.len(), music.is_some()),
        other => panic!("{other:?}"),
    };
    // 1: the caller id is read back (prompt, 12 digits, confirmation).
    assert!(
        key(&mut h, call, '1').is_empty(),
        "nothing stored before the answer"
    );
    assert_eq!(played(&h), (1 + 12 + 1, true), "then the music again");
    // 2: another number. Keys 3 4 7, silence (too short: asked again),
    // then 3 4 7 1 2 3 4 5 6 7 #.
    key(&mut h, call, '2');
    assert_eq!(played(&h), (1, true));
    for d in ['3', '4', '7'] {
        key(&mut h, call, d);
    }
    h.advance(Duration::from_secs(6));
    assert_eq!(played(&h), (1, true), "asked again after the pause");
    // A premium number keyed in (TEST-MATRIX D18) is asked again like a
    // mistyped one: never read back, never stored.
    for d in "899123456#".chars() {
        assert!(key(&mut h, call, d).is_empty());
    }
    assert_eq!(
        played(&h),
        (1, true),
        "asked again: the dial plan refuses it"
    );
    assert_eq!(
        h.gauge("centralino_dial_plan_refused_total{reason=blocked,via=virtual_hold}"),
        1
    );
    for d in "3471234567#".chars() {
        assert!(key(&mut h, call, d).is_empty());
    }
    assert_eq!(played(&h), (1 + 10 + 1, true), "the new number read back");
    // 9 is not an answer; 1 confirms.
    assert!(key(&mut h, call, '9').is_empty());
    // Read back as keyed, stored as the dial plan reads it.
    assert_eq!(key(&mut h, call, '1'), ["+393471234567"]);
    assert_eq!(
        h.gauge("centralino_callbacks_total{outcome=number_confirmed}"),
        1
    );
    h.engine.callback_stored(h.now, call, true);
    h.drain();
    assert_eq!(h.gauge("centralino_queue_calls{queue=info}"), 0);

    // A second caller stays silent at the confirmation: no callback, the
    // place is kept, the music resumes.
    h.invite("n2");
    h.drain();
    assert!(key(&mut h, CallId(2), '1').is_empty());
    // The read-back lasts 1.4 s, then 5 s for the answer.
    h.advance(Duration::from_secs(7));
    assert_eq!(played(&h), (0, true));
    assert_eq!(h.gauge("centralino_callbacks_total{outcome=no_number}"), 1);
    assert_eq!(
        h.gauge("centralino_queue_calls{queue=info}"),
        1,
        "still waiting"
    );
}

#[test]
fn draining_refuses_new_calls_and_shutdown_ends_the_rest_without_failing_callbacks() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("d1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    // A callback waits in the queue (nobody free).
    h.engine.start_callback(
        h.now,
        DueCallback {
            id: "cb".into(),
            queue: "info".into(),
            number: "+393331112223".into(),
            requirements: None,
            priority: 0,
            created_unix: 0,
            promised_unix: None,
            attempt: 1,
            campaign: None,
        },
    );
    h.drain();
    // And a citizen waiting for an operator.
    h.invite("dw");
    assert_eq!(h.gauge("centralino_draining"), 0);
    h.engine.set_draining();
    // Said at once, before any new call is refused (the alert's signal).
    assert_eq!(h.gauge("centralino_draining"), 1);
    let out = h.invite("d2");
    assert_eq!(codes(&out, TRUNK), vec![503]);
    let refused = out.iter().find(|(_, m)| m.code() == 503).unwrap();
    assert_eq!(refused.1.header("Retry-After"), Some("30"));
    assert_eq!(
        h.engine.active_calls(),
        3,
        "the call, the waiting caller and the callback go on"
    );
    h.callbacks.clear();
    h.engine.shutdown(h.now);
    let out = h.drain();
    assert_eq!(requests(&out, TRUNK, "BYE").len(), 1);
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    assert_eq!(h.engine.active_calls(), 0);
    assert!(
        h.callbacks.is_empty(),
        "the callback is left for the next start: {:?}",
        h.callbacks
    );
    assert!(h.records.iter().any(|r| matches!(
        r,
        Record::CallEnded { outcome, .. } if *outcome == CallOutcome::Shutdown
    )));
    // The waiting citizen reached nobody: a dead end, in the metric as in
    // the queue log the reports read (`exit`); the callback being placed
    // is no visit and no dead end.
    assert_eq!(
        h.gauge("centralino_dead_ends_total{queue=info,reason=shutdown}"),
        1
    );
    let exits = h
        .records
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::Queue {
                    event: QueueEvent::Exit,
                    ..
                }
            )
        })
        .count();
    assert_eq!(exits, 1, "{:?}", h.records);
}

#[test]
fn supervisors_see_each_queue_waiting_calls_oldest_wait_and_operators() {
    let mut h = Harness::new();
    h.engine.set_wall_clock(h.now, 1_796_119_200);
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("s1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    h.invite("s2");
    h.now += Duration::from_secs(5);
    let views = h.engine.queue_views(h.now);
    assert_eq!(views.len(), 1);
    let q = &views[0];
    assert_eq!((q.name.as_str(), q.tenant.as_str()), ("info", "demo"));
    assert_eq!(q.waiting, 1, "the second call waits");
    assert_eq!(q.oldest_since_ms, Some(1_796_119_200_000));
    assert_eq!(
        q.agents,
        [
            ("available", 0),
            ("busy", 1),
            ("paused", 0),
            ("logged_out", 1)
        ]
    );
    // Published with the gauges, at most once a second.
    h.advance(Duration::from_millis(200));
    assert!(h.views.is_some());
}

#[test]
fn scanners_are_dropped_without_an_answer_or_state() {
    let mut h = Harness::new();
    for ua in [
        "friendly-scanner",
        "sipvicious 0.3.4",
        "VaxSIPUserAgent/3.1",
        "pplsip",
    ] {
        for method in ["OPTIONS", "REGISTER", "INVITE"] {
            let req = format!(
                "{method} sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKscan{method}\r\nFrom: <sip:100@203.0.113.9>;tag=s\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: scan-{method}\r\nCSeq: 1 {method}\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n"
            );
            let out = h.send("203.0.113.9:5060", &req);
            assert!(out.is_empty(), "{ua} {method}: {out:?}");
        }
    }
    assert_eq!(h.gauge("centralino_sip_rejected_total{reason=scanner}"), 12);
    assert_eq!(h.engine.active_calls(), 0);
    // A real phone with an ordinary User-Agent is answered.
    let out = h.send(
        "203.0.113.9:5060",
        "OPTIONS sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKok\r\nFrom: <sip:x@203.0.113.9>;tag=s\r\nTo: <sip:192.0.2.1>\r\nCall-ID: ok\r\nCSeq: 1 OPTIONS\r\nUser-Agent: Yealink SIP-T46U\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(out.len(), 1);
}

#[test]
fn a_phone_that_stops_answering_options_is_logged_out() {
    let config = format!("{CONFIG}\n[registrar]\nqualify_seconds = 10\n");
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.advance(Duration::from_secs(10));
    let options = requests(&out, PHONE1, "OPTIONS");
    assert_eq!(options.len(), 1, "asked after 10 s");
    h.send(PHONE1, &response_to(options[0], 200, "q1"));
    // While the operator talks, the phone is not asked (media says it).
    let out = h.invite("q");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let a_tag = ok.to_tag.clone().unwrap();
    let out = h.advance(Duration::from_secs(10));
    assert!(requests(&out, PHONE1, "OPTIONS").is_empty());
    let bye = trunk_in_dialog("BYE", "q", "aq", "100", &a_tag, 2, "qbye");
    assert_eq!(codes(&h.send(TRUNK, &bye), TRUNK), vec![200]);
    // Idle again (after wrap-up): asked, and this time silent.
    let mut asked = 0;
    for _ in 0..50 {
        let out = h.advance(Duration::from_secs(1));
        asked += requests(&out, PHONE1, "OPTIONS").len();
    }
    assert!(asked >= 1, "asked again once idle");
    assert_eq!(h.gauge("centralino_agents_unreachable_total"), 1);
    assert_eq!(
        h.gauge("centralino_agents{state=logged_out,tenant=demo}"),
        2
    );
    assert!(h.records.iter().any(|r| matches!(
        r,
        Record::Agent { event: "logout", agent, .. } if agent == "1001"
    )));
}

/// A stranger on the network (not a trunk peer, not a registered phone).
const STRANGER: &str = "192.0.2.66:5060";

/// An in-dialog request of the connected call `m1` (see [`connected`]):
/// `method` with the caller's tags unless given others.
fn in_dialog(
    method: &str,
    from: &str,
    from_tag: &str,
    to_tag: &str,
    cseq: u32,
    body: &str,
) -> String {
    let ct = if body.is_empty() {
        String::new()
    } else if method == "INFO" {
        "Content-Type: application/dtmf-relay\r\n".to_owned()
    } else {
        "Content-Type: application/sdp\r\n".to_owned()
    };
    format!(
        "{method} sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKd{method}{cseq}\r\nFrom: <sip:+390612345678@192.0.2.10>;tag={from_tag}\r\nTo: <sip:100@192.0.2.1>;tag={to_tag}\r\nCall-ID: m1\r\nCSeq: {cseq} {method}\r\nContact: <sip:x@{from}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A request from `peer` in the dialog named by its `From`, `To` and
/// Call-ID, with `headers` (each ending in CRLF) and an SDP `body`.
#[allow(clippy::too_many_arguments)]
fn request_in(
    peer: &str,
    method: &str,
    cseq: u32,
    from: &str,
    to: &str,
    call_id: &str,
    headers: &str,
    body: &str,
) -> String {
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch=z9hG4bKin{method}{cseq}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:peer@{peer}>\r\n{headers}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn in_dialog_requests_from_a_stranger_or_with_wrong_tags_get_481_and_change_nothing() {
    // TEST-MATRIX D16: a live call's Call-ID is no secret.
    let (mut h, ok, inv) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let media_before = h.media.len();
    let hijack = "v=0\r\no=- 1 2 IN IP4 192.0.2.66\r\ns=-\r\nc=IN IP4 192.0.2.66\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\n";
    let tries = [
        // From a stranger, with the right tags (learnt by sniffing).
        (STRANGER, "INVITE", "am1", a_tag.as_str(), hijack),
        (STRANGER, "UPDATE", "am1", a_tag.as_str(), hijack),
        (
            STRANGER,
            "INFO",
            "am1",
            a_tag.as_str(),
            "Signal=5\r\nDuration=160\r\n",
        ),
        (STRANGER, "BYE", "am1", a_tag.as_str(), ""),
        // From the trunk's own address with invented tags.
        (TRUNK, "INVITE", "am1", "invented", hijack),
        (TRUNK, "INVITE", "other", a_tag.as_str(), hijack),
        (TRUNK, "BYE", "am1", "invented", ""),
    ];
    for (i, (from, method, from_tag, to_tag, body)) in tries.into_iter().enumerate() {
        let out = h.send(
            from,
            &in_dialog(method, from, from_tag, to_tag, 10 + i as u32, body),
        );
        assert_eq!(codes(&out, from), vec![481], "{method} from {from}");
        assert_eq!(out.len(), 1, "nothing else is sent: {out:?}");
    }
    // An ACK carrying an SDP answer from a stranger is dropped unanswered.
    let out = h.send(
        STRANGER,
        &in_dialog("ACK", STRANGER, "am1", &a_tag, 1, hijack),
    );
    assert!(out.is_empty());
    assert_eq!(
        h.media.len(),
        media_before,
        "no media moved: {:?}",
        &h.media[media_before..]
    );
    assert_eq!(h.engine.active_calls(), 1, "the call goes on");
    assert_eq!(
        h.gauge("centralino_sip_rejected_total{reason=foreign_dialog}"),
        8
    );
    // The operator's dialog is guarded the same way: a BYE with the B-leg's
    // Call-ID and tags from a stranger ends nothing.
    let b_bye = format!(
        "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {STRANGER};branch=z9hG4bKbb\r\nFrom: <sip:phone@192.0.2.21>;tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
        inv.header("From").unwrap(),
        inv.call_id
    );
    let out = h.send(STRANGER, &b_bye);
    assert_eq!(codes(&out, STRANGER), vec![481]);
    assert_eq!(h.engine.active_calls(), 1);
    // The real peers still can: the caller's re-INVITE is answered, and the
    // operator's BYE ends the call.
    let out = h.send(
        TRUNK,
        &in_dialog("INVITE", TRUNK, "am1", &a_tag, 30, TRUNK_SDP),
    );
    assert_eq!(codes(&out, TRUNK), vec![200]);
    let out = h.send(PHONE1, &b_bye.replace(STRANGER, PHONE1));
    assert_eq!(codes(&out, PHONE1), vec![200]);
    assert_eq!(requests(&out, TRUNK, "BYE").len(), 1);
    assert_eq!(h.engine.active_calls(), 0);
}

#[test]
fn a_cancel_from_a_stranger_leaves_the_call_ringing() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.invite("k1");
    let cancel = |from: &str| {
        format!(
            "CANCEL sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKk1\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=ak1\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: k1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let out = h.send(STRANGER, &cancel(STRANGER));
    assert_eq!(codes(&out, STRANGER), vec![481]);
    assert_eq!(h.engine.active_calls(), 1);
    let out = h.send(TRUNK, &cancel(TRUNK));
    assert_eq!(codes(&out, TRUNK), vec![200, 487]);
    assert_eq!(h.engine.active_calls(), 0);
}

#[test]
fn a_contact_naming_another_host_is_rung_only_through_the_registering_flow() {
    // TEST-MATRIX D17: the Contact names the carrier and a premium number.
    let mut h = Harness::new();
    h.register_contact(
        "1001",
        PHONE1,
        "sip:00900123456@192.0.2.10:5060",
        Algorithm::Md5,
    );
    let out = h.invite("h1");
    let to_phone = requests(&out, PHONE1, "INVITE");
    assert_eq!(
        to_phone.len(),
        1,
        "the offer goes to the phone's flow: {out:?}"
    );
    assert!(
        out.iter()
            .all(|(a, m)| a.to_string() != TRUNK || !m.is_request()),
        "no request reaches the carrier: {out:?}"
    );
}

#[test]
fn a_callback_to_a_number_the_dial_plan_refuses_fails_without_any_invite() {
    // TEST-MATRIX D18: stored before the plan said no (older version,
    // reload), or put in the store by hand: still never dialled.
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    for (i, number) in ["+39899123456", "00900123456", "+88234123456", "144123456"]
        .into_iter()
        .enumerate()
    {
        h.engine.start_callback(
            h.now,
            DueCallback {
                id: format!("fraud{i}"),
                queue: "info".into(),
                number: number.into(),
                requirements: None,
                priority: 0,
                created_unix: 0,
                promised_unix: None,
                attempt: 1,
                campaign: None,
            },
        );
        let out = h.drain();
        assert!(out.is_empty(), "{number}: nothing sent: {out:?}");
        assert!(
            matches!(
                h.callbacks.last(),
                Some((id, CallbackState::Failed { outcome: CallbackOutcome::DialPlan })) if *id == format!("fraud{i}")
            ),
            "{number}: {:?}",
            h.callbacks
        );
    }
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.gauge("centralino_dial_plan_refused_total{reason=blocked,via=callback}")
            + h.gauge("centralino_dial_plan_refused_total{reason=not_allowed,via=callback}"),
        4
    );
}

#[test]
fn a_trunk_is_given_the_number_the_dial_plan_read_in_e164() {
    // A bare number is read as national: the carrier gets `+39` and the
    // digits, never the raw string it might read as another country
    // (`39899…` as +39 899, premium; `33…` as France).
    for (number, dialled) in [
        ("3331112223", "+393331112223"),
        ("00393331112223", "+393331112223"),
        ("39899123456", "+3939899123456"),
        ("0612345678", "+390612345678"),
    ] {
        let mut h = Harness::with_outbound_trunk();
        h.register("1001", PHONE1, Algorithm::Md5);
        let out = callback_dialled(&mut h, "n1", number, "b1");
        let dial = requests(&out, TRUNK, "INVITE")[0].clone();
        let uri = format!("sip:{dialled}@192.0.2.10:5060");
        assert_eq!(dial.request_uri(), Some(uri.as_str()), "{number}");
        assert_eq!(dial.header("To"), Some(format!("<{uri}>").as_str()));
    }
}

/// A first attempt of a callback to +393331112223 from queue `info`.
fn info_callback(id: &str) -> DueCallback {
    DueCallback {
        id: id.into(),
        queue: "info".into(),
        number: "+393331112223".into(),
        requirements: None,
        priority: 0,
        created_unix: 0,
        promised_unix: None,
        attempt: 1,
        campaign: None,
    }
}

#[test]
fn a_callback_reaching_a_draining_node_goes_back_to_pending_untouched() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.engine.set_draining();
    h.engine.start_callback(h.now, info_callback("late"));
    let out = h.drain();
    assert!(requests(&out, PHONE1, "INVITE").is_empty(), "{out:?}");
    assert!(requests(&out, TRUNK, "INVITE").is_empty(), "{out:?}");
    assert_eq!(
        h.callbacks.last(),
        Some(&(
            "late".to_owned(),
            CallbackState::Requeue {
                outcome: CallbackOutcome::Ended(CallOutcome::Shutdown)
            }
        )),
        "back to pending, the attempt given back"
    );
    assert_eq!(
        h.engine.callback_rooms()[0].1,
        1,
        "nothing queued for the operator"
    );
}

#[test]
fn the_callback_room_is_the_free_operators_less_the_callbacks_waiting() {
    let mut h = Harness::with_outbound_trunk();
    let room = |h: &mut Harness| {
        let rooms = h.engine.callback_rooms();
        assert_eq!(rooms[0].0, "info");
        rooms[0].1
    };
    assert_eq!(room(&mut h), 0, "nobody logged in: nothing to claim");
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1002", PHONE2, Algorithm::Md5);
    assert_eq!(room(&mut h), 2);
    let due = info_callback;
    // One callback rings 1001: one operator left, one room.
    h.engine.start_callback(h.now, due("r1"));
    h.drain();
    assert_eq!(room(&mut h), 1);
    // A live caller takes 1002: no room, although nothing waits.
    h.invite("live");
    assert_eq!(room(&mut h), 0);
}

#[test]
fn every_phone_of_an_operator_rings_and_the_first_to_answer_takes_the_call() {
    let mut h = Harness::new();
    // A desk phone and a softphone for 1001 (1002 logged out).
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1001", PHONE2, Algorithm::Md5);
    let out = h.invite("p1");
    let desk = requests(&out, PHONE1, "INVITE")[0].clone();
    let soft = requests(&out, PHONE2, "INVITE")[0].clone();
    assert_eq!(h.desks.len(), 1, "one offer on the desktop: {:?}", h.desks);
    // The desk phone refuses: the softphone still rings, the offer stands.
    h.send(PHONE2, &response_to(&soft, 180, "s1"));
    let out = h.send(PHONE1, &response_to(&desk, 486, "d1"));
    assert!(requests(&out, PHONE2, "CANCEL").is_empty(), "{out:?}");
    assert_eq!(h.gauge("centralino_agents{state=ringing,tenant=demo}"), 1);
    // The softphone answers: connected.
    let out = h.send(PHONE2, &response_to(&soft, 200, "s1"));
    assert_eq!(requests(&out, PHONE2, "ACK").len(), 1);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    let a_tag = out[0..]
        .iter()
        .find(|(_, m)| m.code() == 200)
        .and_then(|(_, m)| m.to_tag.clone())
        .unwrap();
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);
    assert!(
        matches!(h.desks.last(), Some((a, Some(d))) if a == "1001" && d.state == crate::DeskState::Connected),
        "{:?}",
        h.desks
    );

    // The caller hangs up; after the wrap-up, the next call: both ring,
    // the desk phone answers, the softphone gets CANCEL and the desktop
    // never shows the call gone.
    let out = h.send(TRUNK, &in_dialog_of("p1", "BYE", &a_tag));
    assert_eq!(
        requests(&out, PHONE2, "BYE").len(),
        1,
        "the phone that answered"
    );
    h.advance(Duration::from_secs(5));
    let out = h.invite("p2");
    let desk = requests(&out, PHONE1, "INVITE")[0].clone();
    assert_eq!(requests(&out, PHONE2, "INVITE").len(), 1);
    let desks_before = h.desks.len();
    let out = h.send(PHONE1, &response_to(&desk, 200, "d2"));
    assert_eq!(requests(&out, PHONE2, "CANCEL").len(), 1);
    assert!(
        h.desks[desks_before..].iter().all(|(_, d)| d.is_some()),
        "{:?}",
        &h.desks[desks_before..]
    );
    let a_tag = out
        .iter()
        .find(|(_, m)| m.code() == 200)
        .and_then(|(_, m)| m.to_tag.clone())
        .unwrap();
    h.send(TRUNK, &in_dialog_of("p2", "BYE", &a_tag));

    // Nobody answers: at the ring timeout both phones get CANCEL, one
    // missed offer is counted, and the call goes back to its place.
    h.advance(Duration::from_secs(5));
    let out = h.invite("p3");
    assert_eq!(requests(&out, PHONE1, "INVITE").len(), 1);
    assert_eq!(requests(&out, PHONE2, "INVITE").len(), 1);
    let missed = h.gauge("centralino_agent_offers_total{outcome=no_answer}");
    let out = h.advance(Duration::from_secs(2));
    assert_eq!(requests(&out, PHONE1, "CANCEL").len(), 1);
    assert_eq!(requests(&out, PHONE2, "CANCEL").len(), 1);
    assert_eq!(
        h.gauge("centralino_agent_offers_total{outcome=no_answer}"),
        missed + 1
    );
}

/// A request of the caller in call `call` (from [`Harness::invite`]).
fn in_dialog_of(call: &str, method: &str, a_tag: &str) -> String {
    format!(
        "{method} sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bK{call}{method}\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=a{call}\r\nTo: <sip:100@192.0.2.1>;tag={a_tag}\r\nCall-ID: {call}\r\nCSeq: 9 {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn one_address_keeps_a_bounded_number_of_server_transactions() {
    let config = CONFIG.replace(
        "digest_algorithms = [\"SHA-256\", \"MD5\"]",
        "digest_algorithms = [\"SHA-256\", \"MD5\"]\nmax_transactions_per_source = 3",
    );
    let mut h = Harness::with(&config);
    let options = |from: &str, n: u32| {
        format!(
            "OPTIONS sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKopt{n}\r\nFrom: <sip:x@{from}>;tag=o{n}\r\nTo: <sip:192.0.2.1>\r\nCall-ID: opt{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for n in 0..3 {
        assert_eq!(
            codes(&h.send(STRANGER, &options(STRANGER, n)), STRANGER),
            vec![200]
        );
    }
    let server = h.gauge("centralino_sip_transactions{side=server}");
    assert_eq!(
        codes(&h.send(STRANGER, &options(STRANGER, 3)), STRANGER),
        vec![503]
    );
    assert_eq!(
        h.gauge("centralino_sip_transactions{side=server}"),
        server,
        "refused without state"
    );
    assert_eq!(
        h.gauge("centralino_sip_rejected_total{reason=source_busy}"),
        1
    );
    // A retransmission of a live one is answered again, from its
    // transaction; the trunk is not bounded by it; others are unaffected.
    assert_eq!(
        codes(&h.send(STRANGER, &options(STRANGER, 0)), STRANGER),
        vec![200]
    );
    for n in 10..15 {
        assert_eq!(codes(&h.send(TRUNK, &options(TRUNK, n)), TRUNK), vec![200]);
    }
    assert_eq!(
        codes(&h.send(PHONE1, &options(PHONE1, 20)), PHONE1),
        vec![200]
    );
    // Once the transactions end (Timer J), the address may ask again.
    h.advance(Duration::from_secs(40));
    assert_eq!(
        codes(&h.send(STRANGER, &options(STRANGER, 4)), STRANGER),
        vec![200]
    );
}

#[test]
fn a_site_re_registering_past_the_source_bound_is_answered_without_state() {
    // A call centre's NAT: hundreds of phones behind one address come
    // back at once. The bound keeps refusing other requests from it, but
    // REGISTERs are answered statelessly, so every operator gets back in.
    let config = CONFIG.replace(
        "digest_algorithms = [\"SHA-256\", \"MD5\"]",
        "digest_algorithms = [\"SHA-256\", \"MD5\"]\nmax_transactions_per_source = 3",
    );
    let mut h = Harness::with(&config);
    let options = |n: u32| {
        format!(
            "OPTIONS sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE1};branch=z9hG4bKopt{n}\r\nFrom: <sip:x@{PHONE1}>;tag=o{n}\r\nTo: <sip:192.0.2.1>\r\nCall-ID: opt{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for n in 0..3 {
        assert_eq!(codes(&h.send(PHONE1, &options(n)), PHONE1), vec![200]);
    }
    let server = h.gauge("centralino_sip_transactions{side=server}");
    let authenticated = h.register_contact(
        "1001",
        PHONE1,
        &format!("sip:1001@{PHONE1}"),
        Algorithm::Sha256,
    );
    h.register("1002", PHONE1, Algorithm::Md5);
    assert_eq!(h.gauge("centralino_registered_agents"), 2);
    assert_eq!(h.gauge("centralino_registrations_stateless_total"), 4);
    assert_eq!(
        h.gauge("centralino_sip_transactions{side=server}"),
        server,
        "no state kept"
    );
    // The authenticated REGISTER again (its 200 lost): a replay, so a
    // fresh challenge, never a failure nor a second binding.
    let out = h.send(PHONE1, &authenticated);
    assert_eq!(codes(&out, PHONE1), vec![401]);
    assert!(
        out[0]
            .1
            .headers_named("WWW-Authenticate")
            .all(|c| c.contains("stale=true"))
    );
    assert_eq!(
        h.gauge("centralino_registrations_total{outcome=refused}"),
        0
    );
    assert_eq!(h.engine.registrar.bindings("1001").len(), 1);
    // Other requests from the address are still bounded.
    assert_eq!(codes(&h.send(PHONE1, &options(9)), PHONE1), vec![503]);
}

#[test]
fn media_is_never_sent_to_groups_loopback_from_afar_or_the_node_itself() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let sdp_at = |ip: &str, port: u16| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 0\r\n"
        )
    };
    for (i, (ip, port)) in [
        ("224.0.0.1", 40000),
        ("255.255.255.255", 40000),
        ("127.0.0.1", 40000),
        ("0.1.2.3", 40000),
        // The node's own address, in its RTP range: a loop.
        ("192.0.2.1", 30000),
    ]
    .into_iter()
    .enumerate()
    {
        let out = h.invite_sdp(&format!("bad{i}"), &sdp_at(ip, port));
        assert_eq!(codes(&out, TRUNK), vec![100, 488], "{ip}:{port}");
        assert!(requests(&out, PHONE1, "INVITE").is_empty());
    }
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.gauge("centralino_sdp_rejected_total{reason=bad_address}"),
        5
    );

    // A re-INVITE moving a live call's media to a broadcast address: 488,
    // the media stays where it is.
    let (mut h, ok, _) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let media = h.media.len();
    let out = h.send(
        TRUNK,
        &in_dialog(
            "INVITE",
            TRUNK,
            "am1",
            &a_tag,
            5,
            &sdp_at("255.255.255.255", 40002),
        ),
    );
    assert_eq!(codes(&out, TRUNK), vec![488]);
    assert_eq!(h.media.len(), media, "{:?}", &h.media[media..]);
}

/// D21, key by key at the engine: what a reload says it applied is what
/// the next call meets.
#[test]
fn a_reload_applies_queue_timers_exit_status_dial_plans_trunks_and_passwords() {
    let base = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\" }\noutbound = \"192.0.2.10:5060\"\ncaller_id = \"+39800111222\"",
    );
    let mut h = Harness::with(&base);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    let due = |id: &str, number: &str| DueCallback {
        id: id.into(),
        queue: "info".into(),
        number: number.into(),
        requirements: None,
        priority: 0,
        created_unix: 0,
        promised_unix: None,
        attempt: 1,
        campaign: None,
    };
    // Before: Swiss numbers are outside the Italian plan.
    h.engine.start_callback(h.now, due("ch1", "+41441234567"));
    h.drain();
    assert!(matches!(
        h.callbacks.last(),
        Some((
            _,
            CallbackState::Failed {
                outcome: CallbackOutcome::DialPlan
            }
        ))
    ));
    let changed = base
        // Queue: a longer ring and another exit status.
        .replace(
            "ring_timeout_seconds = 2",
            "ring_timeout_seconds = 6\nexit_status = 486",
        )
        .replace("max_wait_seconds = 10", "max_wait_seconds = 1")
        // The tenant now also dials Switzerland.
        .replace(
            "[[tenants]]\nname = \"demo\"",
            "[[tenants]]\nname = \"demo\"\n[tenants.dial_plan]\nallow = [\"+39\", \"+41\"]",
        )
        // The trunk dials out through another address.
        .replace(
            "outbound = \"192.0.2.10:5060\"",
            "outbound = \"192.0.2.11:5060\"",
        )
        // 1002's password changes.
        .replace("password = \"demo1002\"", "password = \"nuova1002\"");
    h.engine
        .reload(h.now, &Config::from_toml(&changed).unwrap().engine())
        .unwrap();
    // The dial plan and the trunk's new address: the Swiss callback rings
    // 1001, then leaves for 192.0.2.11.
    h.engine.start_callback(h.now, due("ch2", "+41441234567"));
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    h.engine.callback_dialing(h.now, call, true);
    let out = h.drain();
    assert_eq!(
        requests(&out, "192.0.2.11:5060", "INVITE").len(),
        1,
        "{out:?}"
    );
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    // The queue's new maximum wait and exit status: a caller who waits
    // (1001 is busy) gets 486 after a second.
    let out = h.invite("x1");
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
    let out = h.advance(Duration::from_secs(2));
    let exit = codes(&out, TRUNK);
    assert!(
        !exit.is_empty() && exit.iter().all(|&c| c == 486),
        "the new exit status (retransmitted until the ACK): {exit:?}"
    );
    // The old password of 1002 is refused, the new one accepted.
    let register = |h: &mut Harness, password: &str, n: u32| {
        let req = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP {PHONE2};branch=z9hG4bKpw{n}{cseq}\nFrom: <sip:1002@192.0.2.1>;tag=pw{n}\nTo: <sip:1002@192.0.2.1>\nCall-ID: pw{n}\nCSeq: {cseq} REGISTER\nContact: <sip:1002@{PHONE2}>\n{auth}Content-Length: 0\n\n"
            )
        };
        let out = h.send(PHONE2, &req(1, ""));
        let challenge = out[0]
            .1
            .headers_named("WWW-Authenticate")
            .find(|c| c.contains("algorithm=MD5"))
            .unwrap()
            .to_owned();
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let alg = Algorithm::Md5;
        let ha1 = alg.hex(&format!("1002:centralino:{password}"));
        let ha2 = alg.hex("REGISTER:sip:192.0.2.1");
        let resp = alg.hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        let auth = format!(
            "Authorization: Digest username=\"1002\", realm=\"centralino\", nonce=\"{nonce}\", uri=\"sip:192.0.2.1\", response=\"{resp}\", algorithm=MD5, cnonce=\"c0ffee\", qop=auth, nc=00000001\n"
        );
        h.send(PHONE2, &req(2, &auth))[0].1.code()
    };
    assert_eq!(register(&mut h, "demo1002", 1), 403);
    assert_eq!(register(&mut h, "nuova1002", 2), 200);
}

/// The carrier's INVITE for call `m1` with `extra` header lines.
fn invite_with(extra: &str) -> String {
    format!(
        "INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKm1\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=am1\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: m1\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
        TRUNK_SDP.len()
    )
}

/// A carrier call with `extra` headers answered by operator 1001: the
/// harness and the carrier's 200.
fn connected_with(extra: &str) -> (Harness, Message) {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(TRUNK, &invite_with(extra));
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let ok = out
        .iter()
        .find(|(a, m)| a.to_string() == TRUNK && m.code() == 200)
        .expect("the carrier's 200")
        .1
        .clone();
    let a_tag = ok.to_tag.clone().unwrap();
    h.send(TRUNK, &in_dialog("ACK", TRUNK, "am1", &a_tag, 1, ""));
    (h, ok)
}

#[test]
fn a_session_timer_is_kept_by_the_callers_refreshes_and_ends_the_call_without_them() {
    // RFC 4028: the carrier asks for 120 s and refreshes (refresher=uac).
    let (mut h, ok) = connected_with("Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n");
    assert_eq!(ok.header("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(ok.header("Require"), Some("timer"));
    let a_tag = ok.to_tag.clone().unwrap();
    // A refresh by UPDATE (no body) at 60 s, answered with the interval.
    let out = h.advance(Duration::from_secs(60));
    assert!(requests(&out, TRUNK, "BYE").is_empty());
    let refresh = in_dialog("UPDATE", TRUNK, "am1", &a_tag, 2, "")
        .replace("Contact:", "Session-Expires: 120\r\nContact:");
    let out = h.send(TRUNK, &refresh);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    let r = &out[0].1;
    assert_eq!(r.header("Session-Expires"), Some("120;refresher=uac"));
    // 88 s after the first answer (120 − 32) nothing happens: refreshed.
    let out = h.advance(Duration::from_secs(60));
    assert!(requests(&out, TRUNK, "BYE").is_empty(), "{out:?}");
    assert_eq!(h.engine.active_calls(), 1);
    // 88 s after the refresh with no other one: both sides are let go.
    let out = h.advance(Duration::from_secs(30));
    // One BYE each (retransmitted: nobody answers them here).
    assert_eq!(
        (distinct_byes(&out, TRUNK), distinct_byes(&out, PHONE1)),
        (1, 1),
        "{out:?}"
    );
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(h.gauge("centralino_session_timer_expired_total"), 1);
}

#[test]
fn a_session_interval_below_ninety_seconds_is_refused_with_our_minimum() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(
        TRUNK,
        &invite_with("Supported: timer\r\nSession-Expires: 60\r\n"),
    );
    assert_eq!(codes(&out, TRUNK), vec![422]);
    assert_eq!(out[0].1.header("Min-SE"), Some("90"));
    assert!(requests(&out, PHONE1, "INVITE").is_empty());
    assert_eq!(h.engine.active_calls(), 0);
    // `Require: timer` is an extension we implement: no 420.
    let out = h.send(
        TRUNK,
        &invite_with("Require: timer\r\nSession-Expires: 1800\r\n")
            .replace("z9hG4bKm1", "z9hG4bKm2")
            .replace("Call-ID: m1", "Call-ID: m2"),
    );
    assert_eq!(requests(&out, PHONE1, "INVITE").len(), 1, "{out:?}");
}

#[test]
fn a_proxys_session_timer_on_a_caller_without_support_is_refreshed_by_us() {
    // RFC 4028 §9 table 2: a Session-Expires (a proxy's) on the INVITE of
    // a caller that does not support the extension makes us the
    // refresher. The caller allows no UPDATE: we re-INVITE with the same
    // session at half the interval; a 481 to it means the caller's side
    // is gone, and the operator is released.
    let (mut h, ok) = connected_with("Session-Expires: 120\r\n");
    assert_eq!(ok.header("Session-Expires"), Some("120;refresher=uas"));
    assert_eq!(ok.header("Require"), None);
    let out = h.advance(Duration::from_secs(60));
    let refresh = requests(&out, TRUNK, "INVITE");
    assert_eq!(refresh.len(), 1, "{out:?}");
    let refresh = refresh[0].clone();
    assert_eq!(refresh.header("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(
        refresh.body, ok.body,
        "the same session, nothing renegotiated"
    );
    assert_eq!(
        refresh.to_tag.as_deref(),
        Some("am1"),
        "in the caller's dialog"
    );
    let out = h.send(TRUNK, &response_to(&refresh, 200, "am1"));
    let acks = requests(&out, TRUNK, "ACK");
    assert_eq!(acks.len(), 1, "{out:?}");
    let ack = acks[0].to_bytes();
    // Our ACK lost: the caller's side retransmits its 200, and gets the
    // same ACK again (not a refresh counted twice, not silence).
    let out = h.send(TRUNK, &response_to(&refresh, 200, "am1"));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(requests(&out, TRUNK, "ACK")[0].to_bytes(), ack);
    assert_eq!(h.engine.acks.len(), 1);
    // The next one, 60 s later, finds the caller's dialog gone.
    let out = h.advance(Duration::from_secs(60));
    let again = requests(&out, TRUNK, "INVITE");
    assert_eq!(again.len(), 1, "{out:?}");
    assert!(again[0].cseq > refresh.cseq);
    let out = h.send(TRUNK, &response_to(again[0], 481, "am1"));
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1, "{out:?}");
    assert!(requests(&out, TRUNK, "BYE").is_empty(), "no dialog to end");
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.gauge("centralino_session_refreshes_total{outcome=refreshed}"),
        1
    );
    assert_eq!(
        h.gauge("centralino_session_refreshes_total{outcome=gone}"),
        1
    );
}

#[test]
fn a_caller_asking_us_to_refresh_gets_updates_falls_back_to_reinvite_and_a_silent_one_is_let_go() {
    let (mut h, ok) = connected_with(
        "Supported: timer\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\nSession-Expires: 90;refresher=uas\r\n",
    );
    assert_eq!(ok.header("Session-Expires"), Some("90;refresher=uas"));
    // At 45 s: an UPDATE without a body.
    let out = h.advance(Duration::from_secs(45));
    let update = requests(&out, TRUNK, "UPDATE");
    assert_eq!(update.len(), 1, "{out:?}");
    assert!(update[0].body.is_empty());
    assert_eq!(
        update[0].header("Session-Expires"),
        Some("90;refresher=uac")
    );
    // Refused as unknown after all: a re-INVITE at once.
    let out = h.send(TRUNK, &response_to(update[0], 501, "am1"));
    let reinvite = requests(&out, TRUNK, "INVITE");
    assert_eq!(reinvite.len(), 1, "{out:?}");
    // It asks for a longer interval (422): again, with its Min-SE.
    let mut too_small = reinvite[0].response(422, "Session Interval Too Small", Some("am1"));
    too_small.push("Min-SE", "300");
    let out = h.send(TRUNK, &String::from_utf8(too_small.to_bytes()).unwrap());
    let reinvite = requests(&out, TRUNK, "INVITE");
    assert_eq!(reinvite.len(), 1, "{out:?}");
    assert_eq!(
        reinvite[0].header("Session-Expires"),
        Some("300;refresher=uac")
    );
    // Then the caller goes silent: the refresh is never answered, and the
    // call ends on both sides.
    let out = h.advance(Duration::from_secs(60));
    // One BYE each (retransmitted: nobody answers them here).
    assert_eq!(
        (distinct_byes(&out, TRUNK), distinct_byes(&out, PHONE1)),
        (1, 1),
        "{out:?}"
    );
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.gauge("centralino_session_refreshes_total{outcome=gone}"),
        1
    );
}

#[test]
fn a_callback_offers_a_session_timer_and_refreshes_when_the_carrier_leaves_it_to_us() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.engine.start_callback(
        h.now,
        DueCallback {
            id: "st".into(),
            queue: "info".into(),
            number: "3331112223".into(),
            requirements: None,
            priority: 0,
            created_unix: 0,
            promised_unix: None,
            attempt: 1,
            campaign: None,
        },
    );
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let Some((_, CallbackState::Dialing { call })) = h.callbacks.last().cloned() else {
        panic!("{:?}", h.callbacks)
    };
    h.engine.callback_dialing(h.now, call, true);
    let out = h.drain();
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    assert_eq!(dial.header("Supported"), Some("timer, 100rel"));
    assert_eq!(dial.header("Session-Expires"), Some("1800"));
    // The carrier answers: refresher=uac (us), UPDATE allowed.
    let mut ok = dial.response(200, "OK", Some("c1"));
    ok.push("Contact", &format!("<sip:citizen@{TRUNK}>"));
    ok.push("Allow", "INVITE, ACK, BYE, UPDATE");
    ok.push("Session-Expires", "600;refresher=uac");
    ok.push("Require", "timer");
    ok.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
    let out = h.send(TRUNK, &String::from_utf8(ok.to_bytes()).unwrap());
    assert_eq!(requests(&out, TRUNK, "ACK").len(), 1, "{out:?}");
    let out = h.advance(Duration::from_secs(300));
    let update = requests(&out, TRUNK, "UPDATE");
    assert_eq!(update.len(), 1, "{out:?}");
    assert_eq!(update[0].to_tag.as_deref(), Some("c1"));
    let mut done = update[0].response(200, "OK", Some("c1"));
    done.push("Session-Expires", "600;refresher=uac");
    h.send(TRUNK, &String::from_utf8(done.to_bytes()).unwrap());
    let out = h.advance(Duration::from_secs(300));
    assert_eq!(requests(&out, TRUNK, "UPDATE").len(), 1, "{out:?}");
    assert_eq!(h.engine.active_calls(), 1);
}

/// A carrier that sends its ringing and early media reliably (RFC 3262,
/// `Require: 100rel`, which our INVITE says it supports) gets a PRACK for
/// each, in the early dialog, naming its RSeq and the INVITE's CSeq; a
/// repeated one is not PRACKed again, one out of order not at all; the
/// dialog's requests after the 2xx go on above the PRACKs' CSeqs.
#[test]
fn a_callback_pracks_the_carriers_reliable_provisional_responses() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = callback_dialled(&mut h, "rel", "3331112223", "b1");
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    let provisional = |code: u16, rseq: u32, sdp: bool| {
        let mut r = dial.response(code, "X", Some("c1"));
        r.push("Contact", &format!("<sip:citizen@{TRUNK}>"));
        r.push("Record-Route", "<sip:sbc.carrier.example;lr>");
        r.push("Require", "100rel");
        r.push("RSeq", &rseq.to_string());
        if sdp {
            r.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
        }
        String::from_utf8(r.to_bytes()).unwrap()
    };
    let out = h.send(TRUNK, &provisional(183, 7, true));
    let prack = requests(&out, TRUNK, "PRACK");
    assert_eq!(prack.len(), 1, "{out:?}");
    assert_eq!(prack[0].header("RAck"), Some("7 1 INVITE"));
    assert_eq!(prack[0].cseq, 2);
    assert_eq!(prack[0].to_tag.as_deref(), Some("c1"));
    assert_eq!(
        prack[0].header("Route"),
        Some("<sip:sbc.carrier.example;lr>")
    );
    assert_eq!(prack[0].call_id, dial.call_id);
    // The same 183 again (our PRACK crossed it): not PRACKed twice, and
    // not processed further (RFC 3262 §4).
    // (At another media port: taken, it would move the early media.)
    let media = h.media.len();
    let out = h.send(TRUNK, &provisional(183, 7, true).replace("40000", "40002"));
    assert!(requests(&out, TRUNK, "PRACK").is_empty(), "{out:?}");
    assert_eq!(h.media.len(), media, "{:?}", &h.media[media..]);
    // One skipping an RSeq: discarded (the carrier repeats the one
    // before it).
    let out = h.send(TRUNK, &provisional(180, 9, false));
    assert!(requests(&out, TRUNK, "PRACK").is_empty(), "{out:?}");
    let out = h.send(TRUNK, &provisional(180, 8, false));
    let prack = requests(&out, TRUNK, "PRACK");
    assert_eq!(prack[0].header("RAck"), Some("8 1 INVITE"));
    assert_eq!(prack[0].cseq, 3);
    // Not reliable: nothing to PRACK.
    let out = h.send(TRUNK, &response_to(&dial, 180, "c1"));
    assert!(requests(&out, TRUNK, "PRACK").is_empty(), "{out:?}");
    // The 200 carries no SDP: the reliable 183's was the answer (RFC 3261
    // §13.2.1), and the call goes on with it.
    let mut ok = dial.response(200, "OK", Some("c1"));
    ok.push("Contact", &format!("<sip:citizen@{TRUNK}>"));
    ok.push("Allow", "INVITE, ACK, BYE, UPDATE, PRACK");
    ok.push("Session-Expires", "90;refresher=uac");
    ok.push("Require", "timer");
    let media = h.media.len();
    let out = h.send(TRUNK, &String::from_utf8(ok.to_bytes()).unwrap());
    assert_eq!(requests(&out, TRUNK, "ACK").len(), 1, "{out:?}");
    assert!(requests(&out, TRUNK, "BYE").is_empty(), "{out:?}");
    assert_eq!(h.engine.active_calls(), 1);
    assert!(
        h.media[media..].iter().any(|c| matches!(c,
            MediaCommand::Update { side: Side::A, peer, .. } | MediaCommand::Open { a: peer, .. }
                if peer.rtp().unwrap().addr.to_string() == "192.0.2.10:40000")),
        "{:?}",
        h.media
    );
    // Our session refresh, the dialog's next request: above the PRACKs.
    let out = h.advance(Duration::from_secs(45));
    let update = requests(&out, TRUNK, "UPDATE");
    assert_eq!(update.len(), 1, "{out:?}");
    assert_eq!(update[0].cseq, 4);
}

/// A PRACK from the carrier for call `m1` naming `rack`.
fn prack(a_tag: &str, cseq: u32, rack: &str) -> String {
    in_dialog("PRACK", TRUNK, "am1", a_tag, cseq, "")
        .replace("Contact:", &format!("RAck: {rack}\r\nContact:"))
        .replace(
            "z9hG4bKdPRACK",
            &format!("z9hG4bKp{}", rack.replace(' ', "")),
        )
}

#[test]
fn a_carrier_requiring_100rel_gets_reliable_progress_and_the_answer_after_its_prack() {
    // RFC 3262: early media in a reliable 183, retransmitted until the
    // PRACK; the 2xx may not overtake the 183 that carried our SDP.
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(
        TRUNK,
        &invite_with("Supported: 100rel\r\nRequire: 100rel\r\n"),
    );
    assert_eq!(codes(&out, TRUNK), vec![100, 183], "no 420: {out:?}");
    let progress = out.iter().find(|(_, m)| m.code() == 183).unwrap().1.clone();
    assert_eq!(progress.header("Require"), Some("100rel"));
    let rseq: u32 = progress.header("RSeq").unwrap().parse().unwrap();
    assert!((1..1 << 31).contains(&rseq));
    let a_tag = progress.to_tag.clone().unwrap();
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();

    // Not acknowledged: the same 183 again after T1, then 2·T1.
    let out = h.advance(Duration::from_millis(1600));
    let again: Vec<_> = out
        .iter()
        .filter(|(a, m)| a.to_string() == TRUNK && m.code() == 183)
        .map(|(_, m)| m.header("RSeq").unwrap().to_owned())
        .collect();
    assert_eq!(again, vec![rseq.to_string(), rseq.to_string()]);

    // The operator answers: the 2xx waits for the PRACK.
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(requests(&out, PHONE1, "ACK").len(), 1);
    assert!(
        codes(&out, TRUNK).is_empty(),
        "2xx overtook the 183: {out:?}"
    );

    // A PRACK for another RSeq or another INVITE matches nothing.
    for rack in [format!("{} 1 INVITE", rseq + 1), format!("{rseq} 7 INVITE")] {
        let out = h.send(TRUNK, &prack(&a_tag, 2, &rack));
        assert_eq!(codes(&out, TRUNK), vec![481], "{rack}");
    }
    // The right one: 200 to the PRACK, then the held 2xx.
    let out = h.send(TRUNK, &prack(&a_tag, 3, &format!("{rseq} 1 INVITE")));
    assert_eq!(codes(&out, TRUNK), vec![200, 200]);
    let ok = out.last().unwrap().1.clone();
    assert_eq!(ok.cseq, 1, "the INVITE's 2xx");
    assert_eq!(ok.body, progress.body, "the session of the early media");
    // Its retransmission is answered by the transaction, as before.
    let out = h.send(TRUNK, &prack(&a_tag, 3, &format!("{rseq} 1 INVITE")));
    assert_eq!(codes(&out, TRUNK), vec![200]);
    h.send(TRUNK, &in_dialog("ACK", TRUNK, "am1", &a_tag, 1, ""));
    // Acknowledged: no more 183.
    let out = h.advance(Duration::from_secs(5));
    assert!(codes(&out, TRUNK).iter().all(|c| *c != 183), "{out:?}");
    assert_eq!(h.engine.active_calls(), 1);
}

#[test]
fn a_reliable_183_never_acknowledged_refuses_the_call_after_64_t1() {
    // A queue that lets callers wait longer than 64·T1.
    let mut h = Harness::with(&CONFIG.replace("max_wait_seconds = 10", "max_wait_seconds = 100"));
    let out = h.send(TRUNK, &invite_with("Require: 100rel\r\n"));
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
    let out = h.advance(Duration::from_secs(9));
    let sent = codes(&out, TRUNK);
    assert!(sent.iter().all(|c| *c == 183), "{sent:?}");
    // T1 = 500 ms: 0.5, 1.5, 3.5, 7.5 s.
    assert_eq!(sent.len(), 4, "{sent:?}");
    let out = h.advance(Duration::from_secs(24));
    assert_eq!(codes(&out, TRUNK).last(), Some(&500), "{out:?}");
    assert_eq!(h.engine.active_calls(), 0);
}

#[test]
fn a_held_answer_without_prack_releases_the_operator() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(TRUNK, &invite_with("Require: 100rel\r\n"));
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let out = h.advance(Duration::from_secs(33));
    assert_eq!(codes(&out, TRUNK).last(), Some(&500), "{out:?}");
    // One BYE (its UDP retransmissions share its branch).
    let byes = requests(&out, PHONE1, "BYE");
    assert!(!byes.is_empty(), "{out:?}");
    assert!(byes.iter().all(|b| b.via.branch == byes[0].via.branch));
    assert_eq!(h.engine.active_calls(), 0);
}

#[test]
fn a_late_offer_requiring_100rel_gets_no_provisional_without_an_offer() {
    // §5: a reliable provisional to an INVITE without an offer must carry
    // one; ours is in the 2xx, so only the 100 goes out before it.
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let invite = invite_with("Require: 100rel\r\n");
    let head = invite.split("Content-Type").next().unwrap();
    let out = h.send(TRUNK, &format!("{head}Content-Length: 0\r\n\r\n"));
    assert_eq!(codes(&out, TRUNK), vec![100], "{out:?}");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(codes(&out, TRUNK), vec![200], "{out:?}");
}

/// The caller the operator's INVITE and the call record show for an
/// INVITE from the carrier with `extra` headers (From: +390612345678).
fn presented(config: &str, extra: &str) -> (String, String) {
    let mut h = Harness::with(config);
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(TRUNK, &invite_with(extra));
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let recorded = h
        .records
        .iter()
        .find_map(|r| match r {
            Record::CallStarted { caller, .. } => Some(caller.clone()),
            _ => None,
        })
        .unwrap();
    (inv.header("From").unwrap().to_owned(), recorded)
}

#[test]
fn a_trusted_carriers_asserted_identity_is_the_caller_and_privacy_hides_it_from_operators() {
    // RFC 3325: the number the network vouches for, `tel:` preferred.
    let (from, recorded) = presented(
        CONFIG,
        "P-Asserted-Identity: <sip:+393331234567@192.0.2.10;user=phone>, <tel:+393331234567>\r\n",
    );
    assert!(from.starts_with("<sip:+393331234567@"), "{from}");
    assert_eq!(recorded, "+393331234567");
    // Privacy: id: the operator is offered an anonymous call; the record
    // (masked in logs) keeps who called.
    let (from, recorded) = presented(
        CONFIG,
        "P-Asserted-Identity: <tel:+393331234567>\r\nPrivacy: id\r\n",
    );
    assert!(
        from.starts_with("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag="),
        "{from}"
    );
    assert!(!from.contains("3331234567") && !from.contains("0612345678"));
    assert_eq!(recorded, "+393331234567");
    // What is not a telephone number is not taken: the From stays.
    for junk in [
        "<sip:operator@192.0.2.10>",
        "<tel:+39-333-1234567>",
        "<sip:1@x>",
        "garbage",
    ] {
        let (from, recorded) = presented(CONFIG, &format!("P-Asserted-Identity: {junk}\r\n"));
        assert!(from.starts_with("<sip:+390612345678@"), "{junk}: {from}");
        assert_eq!(recorded, "+390612345678", "{junk}");
    }
}

#[test]
fn an_untrusted_carriers_asserted_identity_is_ignored() {
    let config = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\" }\nasserted_identity = false",
    );
    let (from, recorded) = presented(&config, "P-Asserted-Identity: <tel:+393331234567>\r\n");
    assert!(from.starts_with("<sip:+390612345678@"), "{from}");
    assert_eq!(recorded, "+390612345678");
}

#[test]
fn a_callback_asserts_the_services_number_to_a_trusted_carrier_only() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = callback_dialled(&mut h, "p1", "3331112223", "b1");
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    assert_eq!(
        dial.header("P-Asserted-Identity"),
        Some("<sip:+39800111222@192.0.2.1:5060>")
    );
    let config = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\" }\noutbound = \"192.0.2.10:5060\"\ncaller_id = \"+39800111222\"\nasserted_identity = false",
    );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = callback_dialled(&mut h, "p2", "3331112223", "b2");
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    assert_eq!(dial.header("P-Asserted-Identity"), None);
}

/// A message from `tests/captures`, its `{{placeholders}}` filled in.
fn capture(name: &str, fill: &[(&str, &str)]) -> String {
    let path = format!("{}/../../tests/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (key, value) in fill {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    assert!(!text.contains("{{"), "{name}: a placeholder left");
    text
}

#[test]
fn captured_sbc_invite_with_record_route_100rel_timer_and_asserted_identity() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(TRUNK, &capture("sbc_invite_100rel_record_route.sip", &[]));
    assert_eq!(codes(&out, TRUNK), vec![100, 183], "{out:?}");
    let progress = out.iter().find(|(_, m)| m.code() == 183).unwrap().1.clone();
    let route = "<sip:192.0.2.10;lr;ftag=as3f2a91c8;did=c41.a2b1>";
    assert_eq!(progress.header("Record-Route"), Some(route));
    assert_eq!(progress.header("Require"), Some("100rel"));
    let rseq = progress.header("RSeq").unwrap().to_owned();
    // The SBC's G.729 and A-law offer: A-law, its preference we speak.
    let ours = sdp::parse(&progress.body).unwrap();
    assert_eq!(ours.formats, vec![8, 101]);
    // The operator sees the asserted number.
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert!(
        inv.header("From").unwrap().contains("+390612345678"),
        "{inv:?}"
    );
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert!(codes(&out, TRUNK).is_empty(), "held for the PRACK");
    let a_tag = progress.to_tag.clone().unwrap();
    let prack = format!(
        "PRACK sip:centralino@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKprack1\r\nRoute: {route}\r\nFrom: <sip:+390612345678@ims.carrier.example;user=phone>;tag=as3f2a91c8\r\nTo: <sip:+39800123456@ims.carrier.example;user=phone>;tag={a_tag}\r\nCall-ID: 2b9c1e7a-41f0-4d2c-9e51-0c7d8a3f6b12@10.20.30.40\r\nCSeq: 103 PRACK\r\nRAck: {rseq} 102 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = h.send(TRUNK, &prack);
    assert_eq!(codes(&out, TRUNK), vec![200, 200], "{out:?}");
    let ok = out.last().unwrap().1.clone();
    assert_eq!(ok.header("Record-Route"), Some(route));
    assert_eq!(ok.header("Session-Expires"), Some("1800;refresher=uac"));
    assert_eq!(ok.header("Require"), Some("timer"));
    // Its gateway refreshes by UPDATE through the route: answered, kept.
    let out = h.send(
        TRUNK,
        &capture(
            "carrier_update_session_refresh.sip",
            &[("route", route), ("to_tag", &a_tag)],
        ),
    );
    assert_eq!(codes(&out, TRUNK), vec![200], "{out:?}");
    assert_eq!(
        out[0].1.header("Session-Expires"),
        Some("1800;refresher=uac")
    );
    assert_eq!(h.engine.active_calls(), 1);
}

#[test]
fn captured_phone_reinvite_moving_its_media_with_a_new_sdp_version() {
    let (mut h, _, inv) = connected();
    let reinvite = capture(
        "phone_reinvite_new_address.sip",
        &[
            ("target", "sip:centralino@192.0.2.1:5060"),
            ("from_tag", "b1"),
            ("to_tag", inv.from_tag.as_deref().unwrap()),
            ("call_id", &inv.call_id),
        ],
    );
    let out = h.send(PHONE1, &reinvite);
    assert_eq!(codes(&out, PHONE1), vec![200], "{out:?}");
    assert!(
        requests(&out, TRUNK, "INVITE").is_empty(),
        "the caller's leg is untouched"
    );
    let Some(MediaCommand::Update {
        side, peer, held, ..
    }) = h.media.last()
    else {
        panic!("{:?}", h.media)
    };
    assert_eq!(
        (
            *side,
            peer.rtp().unwrap().addr.to_string(),
            peer.rtp().unwrap().law,
            *held
        ),
        (Side::B, "192.0.2.22:11800".to_owned(), Law::Ulaw, false)
    );
}

/// Twinkle 1.10.2's own messages, taken from its log in
/// `tests/e2e/phones.rs` (addresses moved to the documentation range):
/// a hold the RFC 2543 way (`c=0.0.0.0`, no direction attribute) and a
/// key by INFO (`application/dtmf-relay`).
#[test]
fn captured_twinkle_hold_with_a_null_address_and_a_key_by_info() {
    let (mut h, _, inv) = connected();
    let fill = [
        ("target", "sip:centralino@192.0.2.1:5060"),
        ("from_tag", "b1"),
        ("to_tag", inv.from_tag.as_deref().unwrap()),
        ("call_id", inv.call_id.as_str()),
    ];
    let out = h.send(PHONE1, &capture("twinkle_hold_rfc2543.sip", &fill));
    assert_eq!(codes(&out, PHONE1), vec![200], "{out:?}");
    assert!(matches!(
        h.media.last(),
        Some(MediaCommand::Update {
            side: Side::B,
            held: true,
            ..
        })
    ));
    let out = h.send(PHONE1, &capture("twinkle_info_dtmf.sip", &fill));
    assert_eq!(codes(&out, PHONE1), vec![200], "{out:?}");
    assert_eq!(h.gauge("centralino_dtmf_digits_total{source=info}"), 1);
    // This carrier's INVITE listed no INFO in `Allow`: the key is not
    // sent on to it (RFC 6086 §4.2).
    assert!(requests(&out, TRUNK, "INFO").is_empty(), "{out:?}");
}

/// A carrier that allows INFO gets the operator's keys, in the caller's
/// dialog; keys faster than a person presses them are not relayed.
/// Twinkle's captured INFO (key 5) from operator 1001's phone in the
/// dialog of our INVITE `inv` (answered with tag `b1`), with CSeq `cseq`.
fn phone_key_by_info(inv: &Message, cseq: u32) -> String {
    capture(
        "twinkle_info_dtmf.sip",
        &[
            ("target", "sip:centralino@192.0.2.1:5060"),
            ("from_tag", "b1"),
            ("to_tag", inv.from_tag.as_deref().unwrap()),
            ("call_id", inv.call_id.as_str()),
        ],
    )
    .replace("CSeq: 95", &format!("CSeq: {cseq}"))
    .replace("z9hG4bKlywddxhv", &format!("z9hG4bKkey{cseq}"))
}

#[test]
fn the_operators_keys_by_info_reach_a_carrier_that_allows_info_at_a_human_pace() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(
        TRUNK,
        &invite_with("Allow: INVITE, ACK, CANCEL, BYE, INFO\r\n"),
    );
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let info = |cseq: u32| phone_key_by_info(&inv, cseq);
    let out = h.send(PHONE1, &info(95));
    let relayed = requests(&out, TRUNK, "INFO");
    assert_eq!(relayed.len(), 1, "{out:?}");
    assert_eq!(relayed[0].call_id, "m1");
    assert_eq!(relayed[0].body, b"Signal=5\r\nDuration=100\r\n");
    // At once again: answered, not relayed.
    let out = h.send(PHONE1, &info(96));
    assert_eq!(codes(&out, PHONE1), vec![200]);
    assert!(requests(&out, TRUNK, "INFO").is_empty(), "{out:?}");
    assert_eq!(
        h.gauge("centralino_sip_rejected_total{reason=info_relay_limited}"),
        1
    );
    h.advance(Duration::from_millis(100));
    let out = h.send(PHONE1, &info(97));
    assert_eq!(requests(&out, TRUNK, "INFO").len(), 1, "{out:?}");
}

/// The operator's INFO-only phone keys on a call whose carrier listed no
/// INFO but negotiated telephone-event: the media plane is told to send
/// the key in the caller's stream as RFC 4733 events, within the same
/// pace as relayed INFO, and no INFO goes to the carrier.
#[test]
fn an_info_key_reaches_a_carrier_without_info_as_telephone_events() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.send(TRUNK, &invite_with(""));
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let info = |cseq: u32| phone_key_by_info(&inv, cseq);
    let keys = |h: &Harness| {
        h.media
            .iter()
            .filter_map(|c| match c {
                MediaCommand::Key { side, digit, .. } => Some((*side, *digit)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let out = h.send(PHONE1, &info(95));
    assert_eq!(codes(&out, PHONE1), vec![200]);
    assert!(requests(&out, TRUNK, "INFO").is_empty(), "{out:?}");
    assert_eq!(keys(&h), vec![(Side::A, '5')]);
    assert_eq!(
        h.gauge("centralino_dtmf_converted_total{direction=info_to_rfc4733}"),
        1
    );
    // At once again: beyond a human pace, not sent.
    h.send(PHONE1, &info(96));
    assert_eq!(keys(&h).len(), 1);
    h.advance(Duration::from_millis(100));
    h.send(PHONE1, &info(97));
    assert_eq!(keys(&h).len(), 2);
}

#[test]
fn a_waiting_operator_hears_the_networks_early_media_until_the_citizen_answers_or_not() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = callback_dialled(&mut h, "em", "3331112223", "b1");
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    let before = h.media.len();
    // The network rings the citizen and plays its ringback (183 + SDP).
    let mut progress = dial.response(183, "Session Progress", Some("c1"));
    progress.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
    let progress = String::from_utf8(progress.to_bytes()).unwrap();
    h.send(TRUNK, &progress);
    let early = &h.media[before..];
    assert!(
        early.iter().any(|c| matches!(c,
            MediaCommand::Update { side: Side::A, peer, .. } if peer.rtp().unwrap().addr.to_string() == "192.0.2.10:40000")),
        "{early:?}"
    );
    assert!(
        early
            .iter()
            .any(|c| matches!(c, MediaCommand::Bridge { record: false, .. })),
        "{early:?}"
    );
    assert_eq!(h.gauge("centralino_callback_early_media_total"), 1);
    // The same 183 again changes nothing.
    let seen = h.media.len();
    h.send(TRUNK, &progress);
    assert_eq!(h.media.len(), seen);
    // Silent early media is no reason to end the call before the answer.
    let call = h.engine.calls.keys().next().copied().unwrap();
    h.engine.handle_media(
        h.now,
        MediaEvent::Idle {
            call,
            side: Side::A,
        },
    );
    assert_eq!(h.engine.active_calls(), 1);
    // Then the citizen is busy: the attempt ends as any busy one.
    let busy = dial.response(486, "Busy Here", Some("c1"));
    h.send(TRUNK, &String::from_utf8(busy.to_bytes()).unwrap());
    assert_eq!(h.engine.active_calls(), 0);
    assert!(
        matches!(
            h.callbacks.last(),
            Some((
                _,
                CallbackState::Failed { .. } | CallbackState::Retry { .. }
            ))
        ),
        "{:?}",
        h.callbacks
    );
}

/// A campaign contact's attempt 1 in queue `info`, as the driver hands it.
fn campaign_due(
    campaign: &str,
    name: &str,
    contact: i64,
    number: impl Into<String>,
    customer_first: bool,
    caller_id: Option<String>,
) -> DueCallback {
    DueCallback {
        id: format!("contact:{contact}"),
        queue: "info".into(),
        number: number.into(),
        requirements: None,
        priority: 0,
        created_unix: 0,
        promised_unix: None,
        attempt: 1,
        campaign: Some(Box::new(CampaignCall {
            campaign: campaign.into(),
            name: name.into(),
            tenant: "demo".into(),
            contact,
            attempt: 1,
            dialled: 0,
            caller_id,
            trunk: None,
            customer_first,
            desk: Vec::new(),
            preview: None,
            script: None,
        })),
    }
}

/// Two firms' campaigns of the same name are two series; one stopping
/// takes its own series away and leaves the other's.
#[test]
fn same_named_campaigns_of_two_firms_are_two_series() {
    let mut h = Harness::with_outbound_trunk();
    h.engine.set_wall_clock(h.now, 1_796_119_200);
    let run = |id: &str, tenant: &str| CampaignRun {
        id: id.into(),
        name: "richiami".into(),
        tenant: tenant.into(),
        queue: "info".into(),
        pacer: centralino_campaigns::pacer::PacerConfig::new(
            centralino_campaigns::Mode::Progressive,
        ),
    };
    let series = |h: &Harness| -> Vec<String> {
        let mut v: Vec<String> = h
            .metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "centralino_campaign_lines")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                m.get_label()
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        v.sort();
        v
    };
    h.engine
        .campaign_tick(h.now, &[run("c1", "demo"), run("c2", "altra")]);
    h.drain();
    assert_eq!(
        series(&h),
        [
            "campaign=richiami,tenant=altra",
            "campaign=richiami,tenant=demo"
        ]
    );
    h.engine.campaign_tick(h.now, &[run("c1", "demo")]);
    h.drain();
    assert_eq!(series(&h), ["campaign=richiami,tenant=demo"]);
}

/// A progressive campaign: one contact per free operator, the operator
/// reserved before the citizen is dialled with the campaign's caller ID;
/// a busy citizen goes back to the campaign (its policy decides), and the
/// pacer asks for no more while a claim is out.
#[test]
fn a_progressive_campaign_dials_one_citizen_per_free_operator() {
    let mut h = Harness::with_outbound_trunk();
    h.engine.set_wall_clock(h.now, 1_796_119_200);
    h.register("1001", PHONE1, Algorithm::Md5);
    let run = CampaignRun {
        id: "c1".into(),
        name: "richiami".into(),
        tenant: "demo".into(),
        queue: "info".into(),
        pacer: centralino_campaigns::pacer::PacerConfig::new(
            centralino_campaigns::Mode::Progressive,
        ),
    };
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.drain();
    assert_eq!(
        h.wants,
        [("c1".to_owned(), 1)],
        "one free operator, one contact"
    );
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.drain();
    assert_eq!(h.wants.len(), 1, "no second claim while one is out");
    let contact = CampaignCall {
        campaign: "c1".into(),
        name: "richiami".into(),
        tenant: "demo".into(),
        contact: 7,
        attempt: 1,
        dialled: 0,
        caller_id: Some("+39800999000".into()),
        trunk: None,
        customer_first: false,
        desk: Vec::new(),
        preview: None,
        script: None,
    };
    h.engine.campaign_contacts(
        h.now,
        "c1",
        vec![DueCallback {
            id: "contact:7".into(),
            queue: "info".into(),
            number: "+393331112223".into(),
            requirements: None,
            priority: 0,
            created_unix: 1_796_119_200,
            promised_unix: None,
            attempt: 1,
            campaign: Some(Box::new(contact.clone())),
        }],
    );
    let out = h.drain();
    // The operator first, shown which campaign; nobody dialled yet.
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert_eq!(inv.header("X-Centralino-Campaign"), Some("richiami"));
    assert_eq!(inv.header("X-Centralino-Callback"), None);
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let Some((c, CallbackState::Dialing { call })) = h.contacts.last().cloned() else {
        panic!("{:?}", h.contacts)
    };
    assert_eq!(c, contact);
    assert!(h.callbacks.is_empty(), "a campaign is not a callback");
    h.engine.callback_dialing(h.now, call, true);
    let out = h.drain();
    let dial = requests(&out, TRUNK, "INVITE")[0].clone();
    assert!(
        dial.header("From").unwrap().contains("+39800999000"),
        "the campaign's caller ID"
    );
    // Busy: the attempt ends so; the campaign (not the queue) decides.
    let busy = dial.response(486, "Busy Here", Some("cit"));
    h.send(TRUNK, &String::from_utf8(busy.to_bytes()).unwrap());
    assert_eq!(
        h.contacts.last().map(|(_, s)| s.clone()),
        Some(CallbackState::Failed {
            outcome: CallbackOutcome::Busy
        })
    );
    assert_eq!(
        h.gauge("centralino_campaign_attempts_total{campaign=richiami,outcome=busy,tenant=demo}"),
        1
    );
    // The claim came back: the pacer may ask again (the operator is in
    // wrap-up, so not yet).
    h.advance(Duration::from_secs(10));
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.drain();
    assert_eq!(h.wants.len(), 2, "{:?}", h.wants);
    // A stopped campaign (no longer listed) asks for nothing.
    h.engine.campaign_tick(h.now, &[]);
    h.drain();
    assert_eq!(h.wants.len(), 2);
}

/// A campaign's own mode decides who is called first, never the queue's
/// callback mode: a progressive (fragile) campaign on a queue whose
/// callbacks are customer first still reserves the operator first.
#[test]
fn a_progressive_campaign_is_agent_first_whatever_the_queues_callback_mode() {
    let config = outbound_trunks("", false).replace(
        "wrap_up_seconds = 3",
        "wrap_up_seconds = 3\ncallback_mode = \"customer_first\"",
    );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    let run = CampaignRun {
        id: "c1".into(),
        name: "fragili".into(),
        tenant: "demo".into(),
        queue: "info".into(),
        pacer: centralino_campaigns::pacer::PacerConfig::new(
            centralino_campaigns::Mode::Progressive,
        ),
    };
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.drain();
    h.engine.campaign_contacts(
        h.now,
        "c1",
        vec![campaign_due(
            "c1",
            "fragili",
            1,
            "+393331112223",
            false,
            None,
        )],
    );
    let out = h.drain();
    assert_eq!(
        requests(&out, PHONE1, "INVITE").len(),
        1,
        "the operator first"
    );
    assert!(
        requests(&out, TRUNK, "INVITE").is_empty(),
        "nobody dialled yet"
    );
    // Contacts arriving for a campaign that stopped meanwhile go back.
    h.engine.campaign_tick(h.now, &[]);
    h.engine.campaign_contacts(
        h.now,
        "c1",
        vec![campaign_due(
            "c1",
            "fragili",
            2,
            "+393331112224",
            false,
            None,
        )],
    );
    h.drain();
    assert!(matches!(
        h.contacts.last(),
        Some((c, CallbackState::Requeue { .. })) if c.contact == 2
    ));
}

/// Predictive: the citizen is dialled first; one whose operator does not
/// take them within 2 s hears the message and is let go (abandoned,
/// counted); one taken in time is done.
#[test]
fn a_predictive_citizen_nobody_takes_within_two_seconds_hears_the_message_and_is_abandoned() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    let run = CampaignRun {
        id: "p1".into(),
        name: "promemoria".into(),
        tenant: "demo".into(),
        queue: "info".into(),
        pacer: centralino_campaigns::pacer::PacerConfig::new(
            centralino_campaigns::Mode::Predictive,
        ),
    };
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.drain();
    let contact = |n: i64| {
        vec![campaign_due(
            "p1",
            "promemoria",
            n,
            format!("+39333111222{n}"),
            true,
            None,
        )]
    };
    // The citizen answers; the operator's phone rings and rings.
    let answered = |h: &mut Harness, n: i64| {
        h.engine.campaign_contacts(h.now, "p1", contact(n));
        let out = h.drain();
        assert!(requests(&out, PHONE1, "INVITE").is_empty(), "citizen first");
        let Some((_, CallbackState::Dialing { call })) = h.contacts.last().cloned() else {
            panic!("{:?}", h.contacts)
        };
        h.engine.callback_dialing(h.now, call, true);
        let out = h.drain();
        let dial = requests(&out, TRUNK, "INVITE")[0].clone();
        let mut ok = dial.response(200, "OK", Some("cit"));
        ok.push("Contact", "<sip:cittadino@192.0.2.10:5060>");
        ok.set_body(Some("application/sdp"), TRUNK_SDP.as_bytes().to_vec());
        let out = h.send(TRUNK, &String::from_utf8(ok.to_bytes()).unwrap());
        let (phone, inv) = [PHONE1, PHONE2]
            .into_iter()
            .find_map(|p| {
                requests(&out, p, "INVITE")
                    .first()
                    .map(|m| (p, (*m).clone()))
            })
            .expect("an operator is offered the citizen");
        (phone, inv, dial)
    };
    let (_, inv, _) = answered(&mut h, 1);
    let out = h.advance(Duration::from_millis(2100));
    assert_eq!(
        requests(&out, PHONE1, "CANCEL").len(),
        1,
        "the operator stops ringing"
    );
    assert!(
        matches!(h.media.last(), Some(MediaCommand::Play { music: None, .. })),
        "the message, no music: {:?}",
        h.media
    );
    let out = h.advance(Duration::from_secs(5));
    assert_eq!(distinct_byes(&out, TRUNK), 1, "then goodbye");
    assert_eq!(
        h.contacts.last().map(|(_, s)| s.clone()),
        Some(CallbackState::Failed {
            outcome: CallbackOutcome::Abandoned
        })
    );
    assert_eq!(
        h.gauge(
            "centralino_campaign_attempts_total{campaign=promemoria,outcome=abandoned,tenant=demo}"
        ),
        1
    );
    // The operator's phone gave up ringing; the next citizen is taken in
    // time: done, no message.
    h.send(PHONE1, &response_to(&inv, 487, "b1"));
    h.register("1002", PHONE2, Algorithm::Md5);
    h.advance(Duration::from_secs(10));
    let (phone, inv, _) = answered(&mut h, 2);
    let out = h.send(phone, &response_to(&inv, 200, "b2"));
    assert_eq!(requests(&out, phone, "ACK").len(), 1);
    h.advance(Duration::from_secs(3));
    assert_eq!(
        h.contacts.last().map(|(_, s)| s.clone()),
        Some(CallbackState::Done)
    );
}

/// A CANCEL read in the same batch as its INVITE, before the media plane
/// answered `Reserve`: the call existed, so its record has a start and an
/// end (as before the media boundary), and the late `Reserved` is ignored.
#[test]
fn a_call_cancelled_before_its_ports_are_held_is_recorded_started_and_ended() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Sha256);
    let before = h.records.len();
    // The INVITE, without letting the harness answer Reserve yet.
    let head = |method: &str| {
        format!(
            "{method} sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKc9\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=ac9\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: c9\r\nCSeq: 1 {method}\r\n"
        )
    };
    let invite = format!(
        "{}Contact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
        head("INVITE"),
        TRUNK_SDP.len()
    );
    h.engine
        .handle_datagram(h.now, flow(TRUNK), invite.as_bytes());
    let mut reserve = None;
    while let Some(o) = h.engine.poll_output() {
        if let Output::Media(MediaCommand::Reserve { call, .. }) = o {
            reserve = Some(call);
        }
    }
    let call = reserve.expect("the engine asked for ports");
    let cancel = format!("{}Content-Length: 0\r\n\r\n", head("CANCEL"));
    h.engine
        .handle_datagram(h.now, flow(TRUNK), cancel.as_bytes());
    h.drain();
    // The plane's answer arrives after the call is gone: nothing happens.
    h.engine.handle_media(
        h.now,
        MediaEvent::Reserved {
            call,
            a_port: 20_000,
            b_port: 20_002,
        },
    );
    h.drain();
    let kinds: Vec<&str> = h.records[before..]
        .iter()
        .filter_map(|r| match r {
            Record::CallStarted { .. } => Some("started"),
            Record::CallEnded { .. } => Some("ended"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["started", "ended"], "{:?}", &h.records[before..]);
    assert_eq!(h.engine.active_calls(), 0);
}

/// A preview campaign's contact in the call.
fn preview_due(contact: i64, number: &str) -> DueCallback {
    let mut due = campaign_due("v1", "anteprima", contact, number, false, None);
    if let Some(c) = due.campaign.as_mut() {
        c.preview = Some(Duration::from_secs(60));
        c.desk = vec![("contact".into(), "Maria Rossi".into())];
        c.script = Some("anteprima".into());
    }
    due
}

/// Preview: the contact goes on a free operator's desk and nothing rings
/// and nobody is dialled until they accept (then their phone rings, and
/// the citizen is dialled once they answer); an answer naming another
/// contact is refused; a preview left unanswered goes to another
/// operator and counts as a missed offer; a skip ends the attempt with
/// nobody dialled and frees the operator.
#[test]
fn a_preview_contact_is_dialled_only_once_its_operator_accepts_it() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1002", PHONE2, Algorithm::Md5);
    let run = CampaignRun {
        id: "v1".into(),
        name: "anteprima".into(),
        tenant: "demo".into(),
        queue: "info".into(),
        pacer: centralino_campaigns::pacer::PacerConfig::new(centralino_campaigns::Mode::Preview),
    };
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.drain();
    assert_eq!(
        h.wants,
        [("v1".to_owned(), 2)],
        "one contact per free operator"
    );
    h.engine
        .campaign_contacts(h.now, "v1", vec![preview_due(7, "+393331112223")]);
    let out = h.drain();
    assert!(
        out.iter()
            .all(|(_, m)| !(m.is_request() && *m.method() == centralino_sip::Method::Invite)),
        "nothing rings: {out:?}"
    );
    let Some((first, Some(desk))) = h.desks.last().cloned() else {
        panic!("{:?}", h.desks)
    };
    assert_eq!(desk.state, crate::DeskState::Preview);
    assert_eq!(desk.contact, Some(7));
    assert_eq!(desk.campaign.as_deref(), Some("anteprima"));
    assert_eq!(
        desk.script.as_deref(),
        Some("anteprima"),
        "the campaign's script"
    );
    assert!(
        desk.variables
            .contains(&("contact".into(), "Maria Rossi".into()))
    );
    // The supervisors' line: one operator reading one of its contacts.
    let view = h.engine.campaign_views(h.now);
    assert_eq!(view.len(), 1);
    assert_eq!(
        (view[0].name.as_str(), view[0].mode, view[0].tenant.as_str()),
        ("anteprima", "preview", "demo")
    );
    assert_eq!(
        (
            view[0].previews,
            view[0].lines,
            view[0].ringing,
            view[0].talking
        ),
        (1, 0, 0, 0)
    );
    let other = if first == "1001" { "1002" } else { "1001" };
    let (first_phone, other_phone) = if first == "1001" {
        (PHONE1, PHONE2)
    } else {
        (PHONE2, PHONE1)
    };
    // Past the queue's ring timeout and the router's lease: still theirs.
    let out = h.advance(Duration::from_secs(20));
    assert!(
        out.iter()
            .all(|(_, m)| !(m.is_request() && *m.method() == centralino_sip::Method::Invite))
    );
    assert_eq!(
        h.desks.last().map(|(a, d)| (a.as_str(), d.is_some())),
        Some((first.as_str(), true))
    );
    // Answers for a contact not on the desk, or from another operator.
    assert_eq!(
        h.engine.preview_decision(h.now, &first, 8, true),
        Err(crate::PreviewError::NotShown)
    );
    assert_eq!(
        h.engine.preview_decision(h.now, other, 7, true),
        Err(crate::PreviewError::NotShown)
    );
    assert_eq!(
        h.engine.preview_decision(h.now, "9999", 7, true),
        Err(crate::PreviewError::Unknown)
    );
    assert!(h.contacts.is_empty());
    // Accepted: their phone rings; the citizen only once they answer.
    assert_eq!(h.engine.preview_decision(h.now, &first, 7, true), Ok(()));
    let out = h.drain();
    let inv = requests(&out, first_phone, "INVITE")[0].clone();
    assert_eq!(inv.header("X-Centralino-Script"), Some("anteprima"));
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    assert_eq!(
        h.engine.preview_decision(h.now, &first, 7, false),
        Err(crate::PreviewError::NotShown),
        "answered once"
    );
    h.send(first_phone, &response_to(&inv, 200, "b1"));
    assert!(
        matches!(h.contacts.last(), Some((c, CallbackState::Dialing { .. })) if c.contact == 7)
    );
    let view = h.engine.campaign_views(h.now);
    assert_eq!((view[0].previews, view[0].talking), (0, 1));

    // A second contact, on the other operator's desk: left unanswered.
    h.engine
        .campaign_contacts(h.now, "v1", vec![preview_due(8, "+393331112224")]);
    h.drain();
    assert!(matches!(h.desks.last(), Some((a, Some(d))) if a == other && d.contact == Some(8)));
    h.advance(Duration::from_secs(61));
    assert!(
        h.desks.iter().any(|(a, d)| a == other && d.is_none()),
        "the expired preview left the desk: {:?}",
        h.desks
    );
    assert_eq!(
        h.gauge(
            "centralino_campaign_previews_total{campaign=anteprima,outcome=expired,tenant=demo}"
        ),
        1
    );
    assert_eq!(
        h.gauge("centralino_agent_offers_total{outcome=no_answer}"),
        1
    );
    // One miss pauses them here (`max_no_answer = 1`), as an unanswered
    // phone would; back at their desk, the contact comes back to them
    // after the queue's retry (nobody else is free).
    let id = h.engine.agent_ids[other];
    assert_eq!(
        h.engine.router.agent(id).state,
        centralino_routing::AgentState::Paused(centralino_routing::PauseReason::NoAnswer)
    );
    assert_eq!(
        h.engine.set_agent_paused(h.now, other, false, None),
        Ok("available")
    );
    h.advance(Duration::from_secs(5));
    assert!(
        matches!(h.desks.last(), Some((a, Some(d))) if a == other && d.contact == Some(8)),
        "{:?}",
        h.desks
    );
    // Skipped: nobody dialled, the attempt is no attempt, they are free.
    assert_eq!(h.engine.preview_decision(h.now, other, 8, false), Ok(()));
    let out = h.drain();
    assert!(requests(&out, other_phone, "INVITE").is_empty());
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    assert!(matches!(
        h.contacts.last(),
        Some((c, CallbackState::Requeue { outcome: CallbackOutcome::Ended(CallOutcome::Skipped) })) if c.contact == 8
    ));
    assert_eq!(h.desks.last(), Some(&(other.to_owned(), None)));
    assert_eq!(
        h.gauge(
            "centralino_campaign_previews_total{campaign=anteprima,outcome=skipped,tenant=demo}"
        ),
        1
    );
    assert_eq!(
        h.gauge(
            "centralino_campaign_previews_total{campaign=anteprima,outcome=accepted,tenant=demo}"
        ),
        1
    );
    let id = h.engine.agent_ids[other];
    assert_eq!(
        h.engine.router.agent(id).state,
        centralino_routing::AgentState::Available
    );
}

/// A call to a running campaign's number from a caller the carrier
/// asserts is looked up among the campaign's contacts (routing stays the
/// DID's), and once found the operator's desk shows the campaign and the
/// contact; an answer for another record changes nothing; a caller with
/// only a From (anyone can write one), or of another tenant's campaign,
/// is not looked up.
#[test]
fn a_caller_to_a_campaigns_number_is_looked_up_and_their_contact_reaches_the_desk() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    h.engine.set_campaign_numbers(vec![
        ("100".into(), "c1".into(), "info".into()),
        ("100".into(), "other".into(), "no-such-queue".into()),
    ]);
    let pai = "P-Asserted-Identity: <sip:+390612345678@192.0.2.10>\r\n";
    let out = h.send(TRUNK, &invite_with(pai));
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert_eq!(inv.header("X-Centralino-Campaign"), None, "not known yet");
    let (call, record, campaigns, number) = h.lookups.last().cloned().expect("a lookup");
    assert_eq!(campaigns, ["c1"], "only the trunk's tenant's campaigns");
    assert_eq!(number, "+390612345678");
    let desks = h.desks.len();
    h.engine
        .caller_known(call, "another-record", "c".into(), 1, Vec::new());
    h.drain();
    assert_eq!(h.desks.len(), desks, "another record: nothing changes");
    h.engine.caller_known(
        call,
        &record,
        "richiami-fragili".into(),
        9,
        vec![("contact".into(), "Carla".into())],
    );
    h.drain();
    let Some((agent, Some(desk))) = h.desks.last().cloned() else {
        panic!("{:?}", h.desks)
    };
    assert_eq!(agent, "1001");
    assert_eq!(
        (desk.state, desk.campaign.as_deref(), desk.contact),
        (crate::DeskState::Offered, Some("richiami-fragili"), Some(9))
    );
    assert!(desk.variables.contains(&("contact".into(), "Carla".into())));
    assert_eq!(
        h.gauge("centralino_campaign_callers_total{campaign=richiami-fragili,tenant=demo}"),
        1
    );
    // Only a From: not looked up.
    let before = h.lookups.len();
    h.invite("c2");
    assert_eq!(h.lookups.len(), before);
}

/// A preview on a ring-all queue is held by one operator (the others the
/// router offered it to are let go at once); an operator whose phone
/// logs out loses the preview to another; a stopped campaign takes back
/// the preview nobody accepted; a contact no operator took within the
/// queue's wait goes back to its campaign undialled (not an abandon).
#[test]
fn a_preview_is_one_operators_and_goes_back_when_they_leave_or_the_campaign_stops() {
    let config = outbound_trunks("", false).replace(
        "ring_timeout_seconds = 2",
        "ring_timeout_seconds = 2\nstrategy = \"ring_all\"\nring_all_width = 2",
    );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1002", PHONE2, Algorithm::Md5);
    let run = CampaignRun {
        id: "v1".into(),
        name: "anteprima".into(),
        tenant: "demo".into(),
        queue: "info".into(),
        pacer: centralino_campaigns::pacer::PacerConfig::new(centralino_campaigns::Mode::Preview),
    };
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.engine
        .campaign_contacts(h.now, "v1", vec![preview_due(7, "+393331112223")]);
    let out = h.drain();
    assert!(out.iter().all(|(_, m)| !m.is_request()), "nothing rings");
    let shown: Vec<&String> = h
        .desks
        .iter()
        .filter(|(_, d)| d.is_some())
        .map(|(a, _)| a)
        .collect();
    assert_eq!(shown.len(), 1, "one desk shows it: {:?}", h.desks);
    let holder = shown[0].clone();
    let other = if holder == "1001" { "1002" } else { "1001" };
    let available = |h: &Harness, name: &str| {
        h.engine.router.agent(h.engine.agent_ids[name]).state
            == centralino_routing::AgentState::Available
    };
    assert!(available(&h, other), "the other operator is let go at once");
    // The holder's phone unregisters: the preview goes to the other.
    let phone = if holder == "1001" { PHONE1 } else { PHONE2 };
    h.unregister(&holder, phone);
    assert!(h.desks.iter().any(|(a, d)| a == &holder && d.is_none()));
    assert!(
        matches!(h.desks.last(), Some((a, Some(d))) if a == other && d.contact == Some(7)),
        "{:?}",
        h.desks
    );
    // The campaign stops: the preview nobody accepted goes back.
    h.engine.campaign_tick(h.now, &[]);
    h.drain();
    assert_eq!(h.desks.last(), Some(&(other.to_owned(), None)));
    assert!(available(&h, other));
    assert!(matches!(
        h.contacts.last(),
        Some((c, CallbackState::Requeue { outcome: CallbackOutcome::Ended(CallOutcome::CampaignStopped) })) if c.contact == 7
    ));
    // Nobody free within the queue's wait (10 s): back undialled.
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.engine.set_agent_paused(h.now, other, true, None).unwrap();
    h.engine
        .campaign_contacts(h.now, "v1", vec![preview_due(8, "+393331112224")]);
    h.drain();
    h.advance(Duration::from_secs(11));
    assert!(
        matches!(
            h.contacts.last(),
            Some((c, CallbackState::Requeue { outcome: CallbackOutcome::Ended(CallOutcome::MaxWait) })) if c.contact == 8
        ),
        "{:?}",
        h.contacts.last()
    );
    assert_eq!(
        h.gauge(
            "centralino_campaign_attempts_total{campaign=anteprima,outcome=abandoned,tenant=demo}"
        ),
        0
    );
}

/// The asking node's published SIP address.
const PEER: &str = "192.0.2.30:5060";

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

fn remote_request(id: &str, queue: &str, tenant: &str) -> centralino_cluster::OfferRequest {
    centralino_cluster::OfferRequest {
        id: id.into(),
        from: "roma-1".into(),
        tenant: tenant.into(),
        queue: queue.into(),
        requirements: None,
        priority: 0,
        waited_ms: 20_000,
        sent_ms: None,
    }
}

/// Another node offers a waiting call: a free operator is held for it by
/// the router (no phone rings), the same request again gets the same
/// grant, and the lease or a release lets the operator go; with nobody
/// free, another firm's call, an unknown queue: refused, nothing held.
#[test]
fn another_nodes_call_holds_a_free_operator_for_its_lease_only() {
    use centralino_cluster::{OfferReply, Refusal};
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let id = h.engine.agent_ids["1001"];
    let req = remote_request("roma-1-1-1", "info", "demo");
    let reply = h
        .engine
        .remote_offer(h.now, &req, "127.0.0.2:5060", Some(peer()));
    let OfferReply::Granted {
        target, operator, ..
    } = &reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(operator, "1001");
    let secret = target
        .strip_prefix("sip:offer-")
        .and_then(|t| t.strip_suffix("@127.0.0.2:5060"))
        .unwrap();
    assert_eq!(secret.len(), 32, "a secret of its own, not the offer id");
    let out = h.drain();
    assert!(out.iter().all(|(_, m)| !m.is_request()), "nothing rings");
    assert!(matches!(
        h.engine.router.agent(id).state,
        centralino_routing::AgentState::Reserved(_)
    ));
    assert_eq!(
        h.engine
            .remote_offer(h.now, &req, "127.0.0.2:5060", Some(peer())),
        reply
    );
    // Held: a second offer finds nobody; a local call waits.
    let second = remote_request("roma-1-1-2", "info", "demo");
    assert!(matches!(
        h.engine.remote_offer(h.now, &second, "x", Some(peer())),
        OfferReply::Refused {
            reason: Refusal::NoOperator,
            ..
        }
    ));
    assert_eq!(
        h.engine.router.waiting_count(centralino_types::QueueId(0)),
        1,
        "the held one only: the refused one left nothing queued"
    );
    // The router counts the placeholder; the queue's gauge (and the views
    // and summaries) do not: that call waits on its own node.
    assert_eq!(
        h.gauge("centralino_queue_calls{queue=info}"),
        0,
        "another node's call waits there, not here"
    );
    // The lease ends unclaimed: the operator is free again.
    h.advance(centralino_cluster::offer::LEASE);
    assert_eq!(
        h.engine.router.agent(id).state,
        centralino_routing::AgentState::Available
    );
    // Again, then released by the asking node (the call went elsewhere).
    let third = remote_request("roma-1-1-3", "info", "demo");
    assert!(matches!(
        h.engine.remote_offer(h.now, &third, "x", Some(peer())),
        OfferReply::Granted { .. }
    ));
    h.engine.remote_release(h.now, "roma-1-1-3", "napoli-1");
    assert!(
        matches!(
            h.engine.router.agent(id).state,
            centralino_routing::AgentState::Reserved(_)
        ),
        "only the asking node releases"
    );
    h.engine.remote_release(h.now, "roma-1-1-3", "roma-1");
    assert_eq!(
        h.engine.router.agent(id).state,
        centralino_routing::AgentState::Available
    );
    for (req, reason) in [
        (
            remote_request("r-4", "info", "altra-ditta"),
            Refusal::NoAgreement,
        ),
        (
            remote_request("r-5", "nessuna", "demo"),
            Refusal::UnknownQueue,
        ),
    ] {
        assert!(matches!(
            h.engine.remote_offer(h.now, &req, "x", Some(peer())),
            OfferReply::Refused { reason: r, .. } if r == reason
        ));
    }
    assert_eq!(
        h.gauge("centralino_cluster_offers_received_total{outcome=granted}"),
        2
    );
    assert_eq!(
        h.gauge("centralino_cluster_offers_received_total{outcome=lapsed}"),
        1
    );
}

/// The asking node's offer, as its INVITE of a hand-over carries it.
const PEER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nt=0 0\r\nm=audio 41000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// The INVITE a node sends for a grant: to `user` (`offer-SECRET`),
/// from `from`.
fn handover_invite(call: &str, user: &str, from: &str) -> String {
    format!(
        "INVITE sip:{user}@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call}\r\nFrom: <sip:+390612345678@{from}>;tag=a{call}\r\nTo: <sip:{user}@192.0.2.1:5060>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:roma@{from}>\r\nX-Centralino-Call: abc123\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{PEER_SDP}",
        PEER_SDP.len()
    )
}

/// A grant's hand-over URI user part (`offer-SECRET`).
fn granted_user(reply: &centralino_cluster::OfferReply) -> String {
    let centralino_cluster::OfferReply::Granted { target, .. } = reply else {
        panic!("{reply:?}")
    };
    let user = target.strip_prefix("sip:").unwrap().split('@').next();
    user.unwrap().to_owned()
}

/// The lending side of a hand-over: only the asking node's INVITE
/// naming the grant's secret reaches the held operator (a guessed
/// secret, or the right one from another address, is a stranger's
/// INVITE: 403, nothing kept); the operator's answer is the call's,
/// recorded under the asking node's record id; an operator who does not
/// take it sends the call back to its node (480) and is free again.
#[test]
fn another_nodes_invite_for_its_grant_rings_the_held_operator_only() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let reply = h.engine.remote_offer(
        h.now,
        &remote_request("roma-1-1-1", "info", "demo"),
        "192.0.2.1:5060",
        Some(peer()),
    );
    let user = granted_user(&reply);
    let out = h.send(
        "192.0.2.99:5060",
        &handover_invite("h0", &user, "192.0.2.99:5060"),
    );
    assert_eq!(
        codes(&out, "192.0.2.99:5060"),
        vec![403],
        "the right secret from a stranger"
    );
    let guessed = format!("offer-{}", "0".repeat(32));
    let out = h.send(PEER, &handover_invite("h1", &guessed, PEER));
    assert_eq!(codes(&out, PEER), vec![403], "a guessed secret");
    assert_eq!(h.engine.active_calls(), 0);
    let out = h.send(PEER, &handover_invite("h2", &user, PEER));
    assert_eq!(codes(&out, PEER), vec![100]);
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert!(inv.header("From").unwrap().contains("+390612345678"));
    let record = inv.header("X-Centralino-Call").unwrap().to_owned();
    assert!(record.starts_with("abc123-"), "{record}");
    assert_eq!(
        h.gauge("centralino_cluster_handovers_total{outcome=taken}"),
        1
    );
    // The same secret again (a replayed INVITE with another Call-ID): the
    // grant is spent.
    let out = h.send(PEER, &handover_invite("h3", &user, PEER));
    assert_eq!(codes(&out, PEER), vec![403]);
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(codes(&out, PEER), vec![200]);
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let a_tag = ok.to_tag.clone().unwrap();
    let bye = format!(
        "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch=z9hG4bKbye2\r\nFrom: <sip:+390612345678@{PEER}>;tag=ah2\r\nTo: <sip:{user}@192.0.2.1:5060>;tag={a_tag}\r\nCall-ID: h2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = h.send(PEER, &bye);
    assert_eq!(codes(&out, PEER), vec![200]);
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    assert!(h.records.iter().any(|r| matches!(r,
        Record::CallEnded { id, agent: Some(a), .. } if *id == record && a == "1001")));
    h.advance(Duration::from_secs(5));
    // Again; the operator refuses: the call goes back to its node.
    let reply = h.engine.remote_offer(
        h.now,
        &remote_request("roma-1-1-2", "info", "demo"),
        "192.0.2.1:5060",
        Some(peer()),
    );
    let user = granted_user(&reply);
    let out = h.send(PEER, &handover_invite("h4", &user, PEER));
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 486, "b2"));
    assert_eq!(codes(&out, PEER), vec![480]);
    assert_eq!(h.engine.active_calls(), 0);
    assert_eq!(
        h.engine.router.waiting_count(centralino_types::QueueId(0)),
        0,
        "it never waits here"
    );
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 1);
    assert_eq!(
        h.gauge("centralino_cluster_handovers_total{outcome=sent_back}"),
        1
    );
    // Claimed, then refused before it is a call (a session interval
    // below ours): the operator is free at once, not at the lease's end.
    let reply = h.engine.remote_offer(
        h.now,
        &remote_request("roma-1-1-3", "info", "demo"),
        "192.0.2.1:5060",
        Some(peer()),
    );
    let user = granted_user(&reply);
    let short = handover_invite("h5", &user, PEER).replace(
        "Contact:",
        "Supported: timer\r\nSession-Expires: 30\r\nContact:",
    );
    let out = h.send(PEER, &short);
    assert_eq!(codes(&out, PEER), vec![422]);
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 1);
    // A redelivered request for a spent grant gets no second operator.
    assert!(matches!(
        h.engine.remote_offer(
            h.now,
            &remote_request("roma-1-1-3", "info", "demo"),
            "192.0.2.1:5060",
            Some(peer()),
        ),
        centralino_cluster::OfferReply::Refused { .. }
    ));
}

/// The asking side: a call waiting with nobody free here is offered to
/// the node that reports an operator free in the same queue; its grant
/// sends the call's INVITE to that node's published address only (a
/// grant naming another address is let go); an operator there who does
/// not take it puts the call back in its place here; one who does is
/// the call's operator, named with their node in the record.
#[test]
fn a_waiting_call_is_offered_to_a_node_with_an_operator_free_and_handed_over() {
    use centralino_cluster::{OfferReply, OfferRequest, PeerQueue};
    let mut h = Harness::new();
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.engine.join_cluster("roma-1");
    let out = h.invite("c1");
    assert_eq!(codes(&out, TRUNK), vec![100, 183]);
    let node_b: SocketAddr = "192.0.2.40:5060".parse().unwrap();
    let peers = vec![PeerQueue {
        node: "milano-1".into(),
        sip: node_b,
        tenant: "demo".into(),
        queue: "info".into(),
        available: 1,
    }];
    let offer = |h: &mut Harness| -> OfferRequest {
        h.engine.cluster_peers(h.now, peers.clone(), Vec::new());
        h.drain();
        match h.cluster.pop() {
            Some(Output::ClusterOffer { node, request }) => {
                assert_eq!(node, "milano-1");
                assert_eq!(
                    (request.queue.as_str(), request.tenant.as_str()),
                    ("info", "demo")
                );
                *request
            }
            other => panic!("{other:?}"),
        }
    };
    let req = offer(&mut h);
    // Offered once at a time: another heartbeat offers nothing more.
    h.engine.cluster_peers(h.now, peers.clone(), Vec::new());
    h.drain();
    assert!(h.cluster.is_empty(), "{:?}", h.cluster);
    let grant = |id: &str, at: &str| OfferReply::Granted {
        id: id.into(),
        target: format!("sip:offer-{}@{at}", "ab".repeat(16)),
        lease_ms: 5000,
        operator: "2001".into(),
    };
    h.engine
        .cluster_reply(h.now, "milano-1", grant(&req.id, "192.0.2.40:5060"));
    let out = h.drain();
    let inv = requests(&out, "192.0.2.40:5060", "INVITE")[0].clone();
    assert!(inv.request_uri().unwrap().starts_with("sip:offer-abab"));
    assert_eq!(
        h.engine.router.waiting_count(centralino_types::QueueId(0)),
        0
    );
    // Ringing there, then refused: back in its place here.
    h.send("192.0.2.40:5060", &response_to(&inv, 180, "r1"));
    let out = h.send("192.0.2.40:5060", &response_to(&inv, 480, "r1"));
    assert_eq!(
        codes(&out, TRUNK),
        Vec::<u16>::new(),
        "the caller still waits"
    );
    assert_eq!(
        h.engine.router.waiting_count(centralino_types::QueueId(0)),
        1
    );
    assert_eq!(
        h.gauge("centralino_cluster_handovers_total{outcome=returned}"),
        1
    );
    // Not offered to the same node again at once (whoever refused there
    // would ring again): after the queue's ring time and a pause.
    h.engine.cluster_peers(h.now, peers.clone(), Vec::new());
    h.drain();
    assert!(h.cluster.is_empty(), "{:?}", h.cluster);
    h.advance(Duration::from_secs(2 + 2 + 5));
    // A grant naming an address the node never published: let go.
    let req = offer(&mut h);
    h.engine
        .cluster_reply(h.now, "milano-1", grant(&req.id, "192.0.2.66:5060"));
    let out = h.drain();
    assert!(requests(&out, "192.0.2.66:5060", "INVITE").is_empty());
    assert!(matches!(h.cluster.pop(), Some(Output::ClusterRelease { id, .. }) if id == req.id));
    // No answer in time: the call keeps its place; offered again.
    let req = offer(&mut h);
    h.advance(centralino_cluster::offer::REPLY_TIMEOUT);
    assert_eq!(
        h.gauge("centralino_cluster_offers_sent_total{outcome=timed_out}"),
        1
    );
    h.engine
        .cluster_reply(h.now, "milano-1", grant(&req.id, "192.0.2.40:5060"));
    h.drain();
    assert!(
        matches!(h.cluster.pop(), Some(Output::ClusterRelease { id, .. }) if id == req.id),
        "a late grant is let go"
    );
    let req = offer(&mut h);
    h.engine
        .cluster_reply(h.now, "milano-1", grant(&req.id, "192.0.2.40:5060"));
    let out = h.drain();
    let inv = requests(&out, "192.0.2.40:5060", "INVITE")[0].clone();
    let mut ok = inv.response(200, "OK", Some("r2"));
    ok.push("Contact", "<sip:offer@192.0.2.40:5060>");
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.40\r\ns=-\r\nc=IN IP4 192.0.2.40\r\nt=0 0\r\nm=audio 42000 RTP/AVP 8\r\n";
    ok.set_body(Some("application/sdp"), sdp.as_bytes().to_vec());
    let out = h.send(
        "192.0.2.40:5060",
        &String::from_utf8(ok.to_bytes()).unwrap(),
    );
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert_eq!(requests(&out, "192.0.2.40:5060", "ACK").len(), 1);
    assert_eq!(
        h.gauge("centralino_cluster_handovers_total{outcome=connected}"),
        1
    );
    let a_tag = out
        .iter()
        .find(|(_, m)| m.code() == 200)
        .and_then(|(_, m)| m.to_tag.clone())
        .unwrap();
    let bye = trunk_in_dialog("BYE", "c1", "ac1", "100", &a_tag, 2, "bye1");
    let out = h.send(TRUNK, &bye);
    assert_eq!(requests(&out, "192.0.2.40:5060", "BYE").len(), 1);
    assert!(h.records.iter().any(|r| matches!(r,
        Record::CallEnded { agent: Some(a), .. } if a == "2001@milano-1")));
}

/// Another firm's calls are lent only under an agreement, within its
/// `max_concurrent` counted nationally (what other nodes report lent
/// counts too); what this node lends is published on every change.
#[test]
fn another_firms_calls_are_lent_under_an_agreement_within_its_capacity() {
    use centralino_cluster::{OfferReply, Refusal};
    let config = format!(
        "{CONFIG}\n[cluster]\nnode = \"milano-1\"\nnats_url = \"nats://127.0.0.1:4222\"\nkey_file = \"/etc/centralino/network.key\"\n\n[[agreements]]\nfrom = \"asl-roma\"\nto = \"demo\"\nqueues = [\"info\"]\nmax_concurrent = 1\n"
    );
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    h.register("1002", PHONE2, Algorithm::Md5);
    let offer = |h: &mut Harness, id: &str, tenant: &str| {
        h.engine.remote_offer(
            h.now,
            &remote_request(id, "info", tenant),
            "x",
            Some(peer()),
        )
    };
    assert!(matches!(
        offer(&mut h, "r-1", "asl-napoli"),
        OfferReply::Refused {
            reason: Refusal::NoAgreement,
            ..
        }
    ));
    assert!(matches!(
        offer(&mut h, "r-2", "asl-roma"),
        OfferReply::Granted { .. }
    ));
    h.drain();
    assert!(
        h.cluster.iter().any(|o| matches!(o, Output::Lent(v)
            if v == &[("asl-roma".to_owned(), "demo".to_owned(), 1)])),
        "{:?}",
        h.cluster
    );
    // The second at once: the capacity is used, one operator still free.
    assert!(matches!(
        offer(&mut h, "r-3", "asl-roma"),
        OfferReply::Refused {
            reason: Refusal::Capacity,
            ..
        }
    ));
    // The same firm's own call needs no agreement.
    assert!(matches!(
        offer(&mut h, "r-4", "demo"),
        OfferReply::Granted { .. }
    ));
    h.engine.remote_release(h.now, "r-4", "roma-1");
    h.engine.remote_release(h.now, "r-2", "roma-1");
    h.drain();
    assert!(matches!(h.cluster.last(), Some(Output::Lent(v)) if v.is_empty()));
    // Another node of the lender has one lent already: national cap.
    h.engine.cluster_peers(
        h.now,
        Vec::new(),
        vec![("asl-roma".into(), "demo".into(), 1)],
    );
    assert!(matches!(
        offer(&mut h, "r-5", "asl-roma"),
        OfferReply::Refused {
            reason: Refusal::Capacity,
            ..
        }
    ));
    h.engine.cluster_peers(h.now, Vec::new(), Vec::new());
    assert!(matches!(
        offer(&mut h, "r-6", "asl-roma"),
        OfferReply::Granted { .. }
    ));
    assert_eq!(
        h.gauge("centralino_cluster_offers_received_total{outcome=capacity}"),
        2
    );
}

/// In a national network, an operator free where a queue had none is
/// news for the other nodes: the views go out at once with
/// `ClusterNews` (the driver publishes the summary then); no news while
/// nothing changes, none for a node alone.
#[test]
fn an_operator_free_again_is_news_for_the_network() {
    let news = |h: &Harness| {
        h.cluster
            .iter()
            .filter(|o| matches!(o, Output::ClusterNews))
            .count()
    };
    let mut alone = Harness::new();
    alone.register("1001", PHONE1, Algorithm::Md5);
    alone.advance(Duration::from_secs(2));
    assert_eq!(news(&alone), 0);
    let mut h = Harness::new();
    h.engine.join_cluster("milano-1");
    h.advance(Duration::from_secs(2));
    assert_eq!(news(&h), 0, "nobody free yet");
    h.register("1001", PHONE1, Algorithm::Md5);
    h.advance(Duration::from_millis(200));
    assert_eq!(news(&h), 1);
    h.register("1002", PHONE2, Algorithm::Md5);
    h.advance(Duration::from_secs(2));
    assert_eq!(news(&h), 1, "a second one free is no news");
}

/// A ring-all queue reserves several operators for one call: for another
/// node's offer one is held, the others are free again at once.
#[test]
fn a_ring_all_queue_holds_one_operator_for_another_nodes_call() {
    let mut h = ring_all_two();
    let reply = h.engine.remote_offer(
        h.now,
        &remote_request("roma-1-9-1", "info", "demo"),
        "192.0.2.1:5060",
        Some(peer()),
    );
    assert!(matches!(
        reply,
        centralino_cluster::OfferReply::Granted { .. }
    ));
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 1);
    // The lease ends: nobody is left reserved, nobody paused.
    h.advance(centralino_cluster::offer::LEASE + Duration::from_secs(6));
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 2);
}

/// Operators added and removed by a reload, without a restart: a new
/// one registers and takes calls at once; one removed during a call
/// keeps it and leaves when it ends (out of every count, their phone
/// refused from then on); added again, they get their slot back.
#[test]
fn operators_are_added_and_removed_by_a_reload_without_a_restart() {
    let mut h = Harness::new();
    let extra = "\n[[agents]]\nusername = \"1003\"\npassword = \"demo1003\"\ntenant = \"demo\"\nqueues = [\"info\"]\n";
    let with_1003 = Config::from_toml(&format!("{CONFIG}{extra}")).unwrap();
    h.engine.reload(h.now, &with_1003.engine()).unwrap();
    h.drain();
    assert!(h.cluster.iter().any(|o| matches!(o, Output::AgentsChanged)));
    assert_eq!(
        h.gauge("centralino_agents{state=logged_out,tenant=demo}"),
        3
    );
    h.register("1003", PHONE1, Algorithm::Md5);
    let out = h.invite("c1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(codes(&out, TRUNK), vec![200]);
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);
    // Removed while on the call: the call goes on.
    let without = Config::from_toml(CONFIG).unwrap();
    h.engine.reload(h.now, &without.engine()).unwrap();
    h.drain();
    assert_eq!(h.engine.active_calls(), 1);
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let a_tag = ok.to_tag.clone().unwrap();
    let bye = trunk_in_dialog("BYE", "c1", "ac1", "100", &a_tag, 2, "bye1");
    h.send(TRUNK, &bye);
    h.advance(Duration::from_secs(5));
    // Gone from every count, and a call now finds nobody.
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 0);
    assert_eq!(
        h.gauge("centralino_agents{state=logged_out,tenant=demo}"),
        2
    );
    assert_eq!(h.gauge("centralino_agents{state=available,tenant=demo}"), 0);
    let out = h.invite("c2");
    assert!(requests(&out, PHONE1, "INVITE").is_empty());
    // Added again: their old slot, their phone registers anew.
    h.engine.reload(h.now, &with_1003.engine()).unwrap();
    // (A new REGISTER: the first one's transaction still lingers.)
    let contact = format!("sip:1003@{PHONE1}");
    h.register_with("1003", PHONE1, &contact, Algorithm::Md5, "", 5);
    assert_eq!(h.engine.router.agents().len(), 3, "the same slot");
    let id = h.engine.agent_ids["1003"];
    assert!(
        matches!(
            h.engine.router.agent(id).state,
            centralino_routing::AgentState::Reserved(_)
                | centralino_routing::AgentState::Ringing(_)
        ),
        "the waiting call goes to them"
    );
}

/// Removed during a call and added back before it ends: the same slot,
/// never a second one (they would be offered calls while talking).
#[test]
fn an_operator_added_back_during_their_call_keeps_their_slot() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("c1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let id = h.engine.agent_ids["1001"];
    let without = CONFIG.replace(
        "[[agents]]\nusername = \"1001\"\npassword = \"demo1001\"\ntenant = \"demo\"\nqueues = [\"info\"]\n",
        "",
    );
    assert_ne!(without, CONFIG);
    h.engine
        .reload(h.now, &Config::from_toml(&without).unwrap().engine())
        .unwrap();
    h.engine
        .reload(h.now, &Config::from_toml(CONFIG).unwrap().engine())
        .unwrap();
    assert_eq!(h.engine.agent_ids["1001"], id, "the same slot");
    assert_eq!(h.engine.router.agents().len(), 2, "no second slot");
    assert!(matches!(
        h.engine.router.agent(id).state,
        centralino_routing::AgentState::OnCall(_)
    ));
}

/// Queues added and removed by a reload, without a restart: a new queue
/// with its DID and operator takes calls at once; one removed while a
/// call waits in it is refused (named, with the count) until it is empty,
/// then leaves every view and DID; added back, it gets its place again.
#[test]
fn queues_are_added_and_removed_by_a_reload_without_a_restart() {
    let mut h = Harness::new();
    let running = Config::from_toml(CONFIG).unwrap();
    let with = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\", \"200\" = \"vaccini\" }",
    ) + "\n[[queues]]\nname = \"vaccini\"\ntenant = \"demo\"\nmax_wait_seconds = 5\nwhen_unserved = \"hangup\"\n\n[[agents]]\nusername = \"1003\"\npassword = \"demo1003\"\ntenant = \"demo\"\nqueues = [\"vaccini\"]\n";
    let with = Config::from_toml_seeded(&with, &[], &running.seed()).unwrap();
    h.engine.reload(h.now, &with.engine()).unwrap();
    assert_eq!(h.engine.queue_ids["vaccini"], centralino_types::QueueId(1));
    let names = |h: &mut Harness| -> Vec<String> {
        let now = h.now;
        h.engine
            .queue_views(now)
            .into_iter()
            .map(|v| v.name)
            .collect()
    };
    assert_eq!(names(&mut h), ["info", "vaccini"]);
    // Its operator registers and takes its first call at once.
    h.register("1003", PHONE2, Algorithm::Md5);
    let out = invite_did(&mut h, "200", "v1");
    let inv = requests(&out, PHONE2, "INVITE")[0].clone();
    let out = h.send(PHONE2, &response_to(&inv, 200, "b1"));
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let a_tag = ok.to_tag.clone().unwrap();
    assert_eq!(h.gauge("centralino_agents{state=on_call,tenant=demo}"), 1);
    // A second call waits (the operator is busy).
    invite_did(&mut h, "200", "v2");
    assert_eq!(
        h.engine.router.waiting_count(centralino_types::QueueId(1)),
        1
    );
    // Removed while it waits: refused, named.
    let without = Config::from_toml_seeded(CONFIG, &[], &with.seed()).unwrap();
    assert!(without.queues[1].retired);
    assert!(matches!(
        h.engine.reload(h.now, &without.engine()),
        Err(crate::ReloadRefused::QueueBusy { ref queue, waiting: 2 }) if queue == "vaccini"
    ));
    // The waiting caller reaches the queue's maximum wait and leaves; the
    // call on the operator is still in the queue's hands (a lost operator
    // would send it back): still refused.
    h.advance(Duration::from_secs(6));
    assert_eq!(
        h.engine.router.waiting_count(centralino_types::QueueId(1)),
        0
    );
    assert!(matches!(
        h.engine.reload(h.now, &without.engine()),
        Err(crate::ReloadRefused::QueueBusy { waiting: 1, .. })
    ));
    let bye = trunk_in_dialog("BYE", "v1", "av1", "200", &a_tag, 2, "byev1");
    h.send(TRUNK, &bye);
    h.advance(Duration::from_secs(1));
    h.engine.reload(h.now, &without.engine()).unwrap();
    assert_eq!(names(&mut h), ["info"]);
    assert!(!h.engine.queue_ids.contains_key("vaccini"));
    // Its DID reaches nothing now.
    let out = invite_did(&mut h, "200", "v3");
    assert!(requests(&out, PHONE2, "INVITE").is_empty());
    assert!(
        codes(&out, TRUNK).iter().any(|&c| c >= 400),
        "{:?}",
        codes(&out, TRUNK)
    );
    // Added back: the same place.
    let again = CONFIG.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\", \"200\" = \"vaccini\" }",
    ) + "\n[[queues]]\nname = \"vaccini\"\ntenant = \"demo\"\n";
    let again = Config::from_toml_seeded(&again, &[], &without.seed()).unwrap();
    assert!(!again.queues[1].retired);
    h.engine.reload(h.now, &again.engine()).unwrap();
    assert_eq!(h.engine.queue_ids["vaccini"], centralino_types::QueueId(1));
    assert_eq!(names(&mut h), ["info", "vaccini"]);
}

/// The node's own dispatch latency is measured for calls that find an
/// operator free (INVITE in, its media ports reserved, operator's INVITE
/// out); a call that waits for an operator is not in it (its wait is the
/// queue's, counted there).
#[test]
fn dispatch_latency_counts_calls_offered_as_they_arrive_only() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("d1");
    assert_eq!(requests(&out, PHONE1, "INVITE").len(), 1);
    assert_eq!(h.metrics.dispatch.get_sample_count(), 1);
    // The operator is busy ringing: the next call waits, then is offered
    // to the other operator when they register.
    h.invite("d2");
    h.advance(Duration::from_secs(1));
    h.register("1002", PHONE2, Algorithm::Md5);
    let id = h.engine.agent_ids["1002"];
    assert!(
        matches!(
            h.engine.router.agent(id).state,
            centralino_routing::AgentState::Reserved(_)
                | centralino_routing::AgentState::Ringing(_)
        ),
        "the waiting call was offered to 1002"
    );
    assert_eq!(
        h.metrics.dispatch.get_sample_count(),
        1,
        "a call that waited"
    );
}

/// The dispatch latency counts from when the driver read the INVITE off
/// its socket: the wait in the engine's input queue is the node's too.
#[test]
fn dispatch_latency_counts_from_the_read_of_the_invite() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let invite = format!(
        "INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKq1\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=aq1\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: q1\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
        TRUNK_SDP.len()
    );
    let read_at = h.now;
    h.now += Duration::from_millis(3);
    h.engine
        .handle_datagram_read(h.now, read_at, flow(TRUNK), invite.as_bytes());
    let out = h.drain();
    assert_eq!(requests(&out, PHONE1, "INVITE").len(), 1);
    assert_eq!(h.metrics.dispatch.get_sample_count(), 1);
    let sum = h.metrics.dispatch.get_sample_sum();
    assert!(
        (0.003..0.004).contains(&sum),
        "counted from the read: {sum}"
    );
}

/// TEST-MATRIX D rows: a transfer is the operator's alone, and never dials
/// a number. The caller's REFER is refused; the operator's to a number, to
/// a URI that is no queue, or with Replaces, changes nothing.
#[test]
fn a_callers_refer_and_an_operators_refer_to_a_number_are_refused() {
    let (mut h, ok, inv) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let caller_refer = in_dialog("REFER", TRUNK, "am1", &a_tag, 20, "").replace(
        "Content-Length: 0",
        "Refer-To: <sip:+393330000000@192.0.2.10>\r\nContent-Length: 0",
    );
    let out = h.send(TRUNK, &caller_refer);
    assert_eq!(codes(&out, TRUNK), vec![403]);
    assert_eq!(out.len(), 1, "nothing else is sent: {out:?}");
    let b_refer = |cseq: u32, to: &str| operator_refer(&inv, cseq, to);
    for (i, to) in [
        "<sip:+393330000000@192.0.2.1>",
        "<tel:+393330000000>",
        "<sip:nowhere@192.0.2.1>",
        "<sip:info@192.0.2.1?Replaces=x%40y%3Bto-tag%3D1%3Bfrom-tag%3D2>",
    ]
    .into_iter()
    .enumerate()
    {
        let out = h.send(PHONE1, &b_refer(40 + i as u32, to));
        let got = codes(&out, PHONE1);
        assert_eq!(got, vec![403], "{to}");
        assert_eq!(out.len(), 1, "{to}: nothing else is sent: {out:?}");
    }
    assert_eq!(h.engine.active_calls(), 1, "the call goes on");
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=refused,target=external}"),
        2
    );
}

/// The demo configuration with a second queue, "secondo" (DID 200, `extra`
/// settings), where 1002 works instead of "info".
fn secondo_config(extra: &str) -> String {
    CONFIG
        .replace(
            "dids = { \"100\" = \"info\" }",
            "dids = { \"100\" = \"info\", \"200\" = \"secondo\" }",
        )
        .replace(
            "[[agents]]\nusername = \"1002\"",
            &format!("[[queues]]\nname = \"secondo\"\ntenant = \"demo\"\n{extra}\n[[agents]]\nusername = \"1002\""),
        )
        .replace(
            "password = \"demo1002\"\ntenant = \"demo\"\nqueues = [\"info\"]",
            "password = \"demo1002\"\ntenant = \"demo\"\nqueues = [\"secondo\"]",
        )
}

/// A second citizen (call m2) calls "secondo" (DID 200).
fn call_secondo(h: &mut Harness) {
    let sdp = TRUNK_SDP;
    h.send(
        TRUNK,
        &format!(
            "INVITE sip:200@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKm2\r\nFrom: <sip:+390612345679@192.0.2.10>;tag=am2\r\nTo: <sip:200@192.0.2.1>\r\nCall-ID: m2\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    );
}

/// A blind transfer to a queue with room: 202, NOTIFY of success, BYE to
/// the operator (wrap-up), and the caller offered to that queue's
/// operator; to a full queue: 503, and the operator keeps the caller.
#[test]
fn an_operator_transfers_to_a_queue_with_room_and_never_into_a_full_one() {
    let config = secondo_config("max_waiting = 1\n");
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let refer = |cseq: u32| operator_refer(&inv, cseq, "<sip:secondo@192.0.2.1>");
    // Another caller fills "secondo" (nobody there to take them).
    call_secondo(&mut h);
    let out = h.send(PHONE1, &refer(10));
    assert_eq!(codes(&out, PHONE1), vec![503], "full: {out:?}");
    assert!(
        requests(&out, PHONE1, "BYE").is_empty(),
        "the operator keeps the caller"
    );
    // The other caller hangs up: room again.
    h.send(
        TRUNK,
        &format!(
            "CANCEL sip:200@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKm2\r\nFrom: <sip:+390612345679@192.0.2.10>;tag=am2\r\nTo: <sip:200@192.0.2.1>\r\nCall-ID: m2\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    h.register("1002", PHONE2, Algorithm::Md5);
    let out = h.send(PHONE1, &refer(11));
    // 202, then our NOTIFY and BYE (requests: no status code).
    assert_eq!(codes(&out, PHONE1), vec![202, 0, 0]);
    let notify = requests(&out, PHONE1, "NOTIFY");
    assert_eq!(notify.len(), 1, "{out:?}");
    assert_eq!(notify[0].body, b"SIP/2.0 200 OK\r\n");
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    let offered = requests(&out, PHONE2, "INVITE");
    assert_eq!(
        offered.len(),
        1,
        "the colleague in secondo is offered the call"
    );
    assert_eq!(
        offered[0].header("X-Centralino-Call"),
        inv.header("X-Centralino-Call")
    );
    assert_eq!(h.engine.active_calls(), 1);
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=done,target=queue}"),
        1
    );
    // Out of the queue it was answered in, as the reports count it.
    assert_eq!(h.gauge("centralino_queue_transferred_total{queue=info}"), 1);
}

/// Issue 15: a caller transferred blind to another queue keeps their
/// place there: they wait as if since they first entered a queue, so a
/// caller who came to that queue later, while they talked, is served after
/// them.
#[test]
fn a_caller_transferred_to_a_queue_goes_ahead_of_those_who_called_later() {
    let config = secondo_config("");
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    // The colleague of "secondo" is on a break for now.
    h.register("1002", PHONE2, Algorithm::Md5);
    assert_eq!(
        h.engine.set_agent_paused(h.now, "1002", true, None),
        Ok("paused")
    );
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
    let a_tag = ok.to_tag.clone().unwrap();
    h.send(TRUNK, &in_dialog("ACK", TRUNK, "am1", &a_tag, 1, ""));
    h.advance(Duration::from_secs(30));
    // A second citizen calls "secondo" while the first talks; nobody is
    // there to take them.
    call_secondo(&mut h);
    h.advance(Duration::from_secs(5));
    let out = h.send(PHONE1, &operator_refer(&inv, 10, "<sip:secondo@192.0.2.1>"));
    assert_eq!(codes(&out, PHONE1)[0], 202, "{out:?}");
    // The colleague comes back: the transferred caller first.
    assert_eq!(
        h.engine.set_agent_paused(h.now, "1002", false, None),
        Ok("ringing")
    );
    let out = h.drain();
    let offered = requests(&out, PHONE2, "INVITE");
    assert_eq!(offered.len(), 1, "one offer at a time");
    assert_eq!(
        offered[0].header("X-Centralino-Call"),
        inv.header("X-Centralino-Call"),
        "the transferred caller, who called first, is served first"
    );
}

/// A caller who hangs up after a transfer, before the next operator
/// answers, talked to someone: the record names the first operator and no
/// dead end is counted.
#[test]
fn a_caller_leaving_after_a_transfer_is_no_dead_end_and_keeps_the_first_operator() {
    let (mut h, ok, inv) = connected();
    let a_tag = ok.to_tag.clone().unwrap();
    let refer = operator_refer(&inv, 5, "<sip:info@192.0.2.1>");
    let out = h.send(PHONE1, &refer);
    assert_eq!(codes(&out, PHONE1)[0], 202);
    h.send(TRUNK, &in_dialog("BYE", TRUNK, "am1", &a_tag, 50, ""));
    assert_eq!(h.engine.active_calls(), 0);
    let ended = h
        .records
        .iter()
        .find_map(|r| match r {
            Record::CallEnded { agent, outcome, .. } => Some((agent.clone(), *outcome)),
            _ => None,
        })
        .expect("the call's record");
    assert_eq!(ended.0.as_deref(), Some("1001"), "{ended:?}");
    // Every dead-end series, whatever its labels.
    let dead: f64 = h
        .metrics
        .registry
        .gather()
        .iter()
        .filter(|f| f.name() == "centralino_dead_ends_total")
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
        .sum();
    assert_eq!(
        dead, 0.0,
        "a caller who talked to an operator is no dead end"
    );
}

/// The discard-only block names browsers' flows: the same address from the
/// network (a forged IPv6 source) is dropped unanswered and counted.
#[test]
fn a_datagram_forged_from_a_browsers_address_is_dropped() {
    let mut h = Harness::new();
    let forged = "[100::7]:5060";
    let out = h.send(
        forged,
        "OPTIONS sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP [100::7]:5060;branch=z9hG4bKf1\r\nFrom: <sip:x@[100::7]>;tag=f\r\nTo: <sip:centralino@192.0.2.1>\r\nCall-ID: forged\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        h.gauge("centralino_sip_rejected_total{reason=forged_source}"),
        1
    );
    // Any other source is answered.
    let out = h.send(
        STRANGER,
        &format!("OPTIONS sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {STRANGER};branch=z9hG4bKf2\r\nFrom: <sip:x@192.0.2.66>;tag=f\r\nTo: <sip:centralino@192.0.2.1>\r\nCall-ID: ok\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!(codes(&out, STRANGER), vec![200]);
}

/// An operator lent to another firm (an overflow ring open to their firm)
/// talks with that firm's citizen: the engine lets only that firm's
/// supervisors join (the API and phones also require the operator's firm,
/// so in practice a supervisor of every firm), never the operator's own
/// firm's (an outside review found the operator's firm decided, letting
/// the lending firm listen to the other's citizens).
#[test]
fn a_lent_operators_call_is_joined_by_the_calls_firm_only() {
    use super::MonitorError;
    use centralino_media::monitor::MonitorMode;
    let config = CONFIG.replace(
        "wrap_up_seconds = 3\n",
        "wrap_up_seconds = 3\n[[queues.overflow]]\nafter_seconds = 1\nrequirements = \"lend\"\ntenants = [\"asl2\"]\n",
    ) + "\n[[tenants]]\nname = \"asl2\"\n\n[[agents]]\nusername = \"2001\"\npassword = \"demo2001\"\ntenant = \"asl2\"\nskills = { lend = 1 }\n";
    let mut h = Harness::with(&config);
    h.register("2001", PHONE2, Algorithm::Md5);
    let mut out = h.invite("lent1");
    out.extend(h.advance(Duration::from_secs(2)));
    let inv = requests(&out, PHONE2, "INVITE")
        .first()
        .map(|m| (*m).clone())
        .expect("the overflow ring offers the call to the lent operator");
    h.send(PHONE2, &response_to(&inv, 200, "b1"));
    assert_eq!(
        h.engine
            .monitor_start("2001", "sup-asl2", Some("asl2"), MonitorMode::Listen),
        Err(MonitorError::OtherFirm),
        "the operator's firm is not the call's"
    );
    h.engine
        .monitor_start("2001", "sup-demo", Some("demo"), MonitorMode::Listen)
        .expect("the call's firm's supervisor joins");
}

/// A call lent this node's operator under a national agreement runs in
/// the lending firm's queue here, but its citizen is the borrowing
/// firm's: the lending firm's supervisors may not join it.
#[test]
fn a_call_lent_under_an_agreement_is_not_the_lending_firms_to_join() {
    use super::MonitorError;
    use centralino_media::monitor::MonitorMode;
    let config = format!(
        "{CONFIG}\n[cluster]\nnode = \"milano-1\"\nnats_url = \"nats://127.0.0.1:4222\"\nkey_file = \"/etc/centralino/network.key\"\n\n[[agreements]]\nfrom = \"asl-roma\"\nto = \"demo\"\nqueues = [\"info\"]\nmax_concurrent = 1\n"
    );
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    let reply = h.engine.remote_offer(
        h.now,
        &remote_request("roma-1-9-9", "info", "asl-roma"),
        "192.0.2.1:5060",
        Some(peer()),
    );
    let user = granted_user(&reply);
    let out = h.send(PEER, &handover_invite("lent-h1", &user, PEER));
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    assert_eq!(
        h.engine
            .monitor_start("1001", "sup-demo", Some("demo"), MonitorMode::Listen),
        Err(MonitorError::OtherFirm),
        "the lending firm's supervisor"
    );
    h.engine
        .monitor_start("1001", "sup-roma", Some("asl-roma"), MonitorMode::Listen)
        .expect("the borrowing firm's, as far as the engine goes");
}

/// A supervisor joins an operator's conversation only while they talk, one
/// at a time; only they change mode or leave; the operator's leg going
/// (a transfer, a requeue) ends their place on the call.
#[test]
fn a_supervisor_joins_a_talking_operators_call_alone_and_leaves_with_the_operator() {
    use super::MonitorError;
    use centralino_media::monitor::MonitorMode;
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    assert_eq!(
        h.engine
            .monitor_start("1001", "sup", None, MonitorMode::Listen),
        Err(MonitorError::NotTalking),
        "idle: nothing to join"
    );
    assert_eq!(
        h.engine
            .monitor_start("9999", "sup", None, MonitorMode::Listen),
        Err(MonitorError::Unknown)
    );
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    assert_eq!(
        h.engine
            .monitor_start("1001", "sup", None, MonitorMode::Listen),
        Err(MonitorError::NotTalking),
        "ringing: nothing to join"
    );
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let target = h
        .engine
        .monitor_start("1001", "sup", None, MonitorMode::Listen)
        .expect("talking");
    assert_eq!(
        Some(target.record.as_str()),
        inv.header("X-Centralino-Call")
    );
    assert_eq!(
        target.laws,
        vec![Law::Alaw, Law::Ulaw],
        "the caller's law first"
    );
    assert_eq!(
        h.engine
            .monitor_start("1001", "other", None, MonitorMode::Barge),
        Err(MonitorError::Taken),
        "one supervisor per call"
    );
    // Their leg could not be made: the place is free again.
    h.engine.monitor_failed(target.call);
    let target = h
        .engine
        .monitor_start("1001", "sup", None, MonitorMode::Listen)
        .expect("free again");
    h.drain();
    h.media.clear();
    h.engine.monitor_joined(h.now, target.call);
    h.drain();
    assert!(
        matches!(
            h.media.as_slice(),
            [MediaCommand::Monitor { call, mode: Some(MonitorMode::Listen), phone: None }] if *call == target.call
        ),
        "{:?}",
        h.media
    );
    assert_eq!(
        h.engine
            .monitor_set(h.now, "1001", "other", Some(MonitorMode::Barge)),
        Err(MonitorError::NotJoined),
        "another supervisor cannot take over the mode"
    );
    assert_eq!(
        h.engine
            .monitor_set(h.now, "1001", "sup", Some(MonitorMode::Whisper))
            .ok()
            .as_deref(),
        inv.header("X-Centralino-Call")
    );
    assert_eq!(h.gauge("centralino_monitors_total{mode=listen}"), 1);
    assert_eq!(h.gauge("centralino_monitors_total{mode=whisper}"), 1);
    // The operator transfers the call: the supervisor's place goes with
    // the operator's leg.
    let refer = operator_refer(&inv, 5, "<sip:info@192.0.2.1>");
    let out = h.send(PHONE1, &refer);
    assert_eq!(codes(&out, PHONE1)[0], 202);
    assert!(
        h.media
            .iter()
            .any(|m| matches!(m, MediaCommand::Unbridge { call } if *call == target.call))
    );
    assert_eq!(
        h.engine.monitor_set(h.now, "1001", "sup", None),
        Err(MonitorError::NotJoined)
    );
}

/// Operator 1001's REFER (CSeq `cseq`) of the call `inv` offered them, to
/// `refer_to` (a name-addr, `<...>`).
fn operator_refer(inv: &Message, cseq: u32, refer_to: &str) -> String {
    format!(
        "REFER sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE1};branch=z9hG4bKr{cseq}\r\nFrom: {};tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} REFER\r\nRefer-To: {refer_to}\r\nContent-Length: 0\r\n\r\n",
        inv.header("To").unwrap(),
        inv.header("From").unwrap(),
        inv.call_id
    )
}

/// An operator signed out (end of shift, or by a supervisor) is offered
/// nothing, and their phone registering again does not sign them back in;
/// "available" from the desk does. Signed out during a call, they finish
/// it first.
#[test]
fn a_signed_out_operator_stays_out_whatever_their_phone_does_until_they_sign_in() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    assert_eq!(
        h.engine.sign_out_agent(h.now, "9999", None),
        Err(AgentStateError::Unknown)
    );
    assert_eq!(
        h.engine
            .sign_out_agent(h.now, "1001", Some("fine_turno".into())),
        Ok("logged_out")
    );
    h.drain();
    assert!(
        h.records.iter().any(|r| matches!(r, Record::Agent { event: "logout", reason: Some(r), .. } if r == "fine_turno")),
        "in the queue log"
    );
    let out = h.invite("m1");
    assert!(
        requests(&out, PHONE1, "INVITE").is_empty(),
        "nothing offered"
    );
    // The phone unregisters and registers again: still signed out.
    h.unregister("1001", PHONE1);
    let contact = format!("sip:1001@{PHONE1}");
    h.register_with("1001", PHONE1, &contact, Algorithm::Md5, "", 5);
    assert_eq!(h.engine.registrar.bindings("1001").len(), 1);
    let out = h.drain();
    assert!(requests(&out, PHONE1, "INVITE").is_empty(), "{out:?}");
    assert_eq!(
        h.engine.router.agent(h.engine.agent_ids["1001"]).state,
        centralino_routing::AgentState::LoggedOut
    );
    // Back from the desk: the waiting caller is offered at once.
    assert_eq!(
        h.engine.set_agent_paused(h.now, "1001", false, None),
        Ok("ringing")
    );
    let out = h.drain();
    let inv = requests(&out, PHONE1, "INVITE");
    assert_eq!(inv.len(), 1, "{out:?}");
    h.send(PHONE1, &response_to(inv[0], 200, "b1"));
    // Signed out while talking: after the call.
    assert_eq!(
        h.engine.sign_out_agent(h.now, "1001", None),
        Ok("logging_out")
    );
    h.send(
        PHONE1,
        &format!(
            "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE1};branch=z9hG4bKbye1\r\nFrom: {};tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n",
            inv[0].header("To").unwrap(),
            inv[0].header("From").unwrap(),
            inv[0].call_id
        ),
    );
    assert_eq!(h.engine.active_calls(), 0);
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.engine.router.agent(h.engine.agent_ids["1001"]).state,
        centralino_routing::AgentState::LoggedOut,
        "out after the call and its wrap-up"
    );
}

/// A supervisor's phone dials `*7` + operator: challenged, checked against
/// its firm's `supervisor_phones`, answered on a port of its own with the
/// operator's conversation; its BYE ends it, and the end of the call sends
/// it ours. Any other account, a wrong password, an unknown operator:
/// refused, nothing joined.
#[test]
fn a_supervisors_phone_listens_in_by_feature_code_and_nobody_else_can() {
    use centralino_media::monitor::MonitorMode;
    use centralino_sip::auth::Algorithm;
    let config = CONFIG
        .replace(
            "[[tenants]]\nname = \"demo\"",
            "[[tenants]]\nname = \"demo\"\nsupervisor_phones = [\"1002\"]",
        )
        .replace(
            "[[agents]]\nusername = \"1002\"",
            "[[agents]]\nusername = \"1003\"\npassword = \"demo1003\"\ntenant = \"demo\"\nqueues = [\"info\"]\n\n[[agents]]\nusername = \"1002\"",
        );
    let config = with_other_firm(&config);
    let mut h = Harness::with(&config);
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let caller_tag = out
        .iter()
        .find(|(_, m)| m.code() == 200)
        .and_then(|(_, m)| m.to_tag.clone())
        .expect("the caller's 200");
    let dial = |h: &mut Harness, id: &str, user: &str, pass: &str, code: &str| {
        let out = dial_feature(h, id, user, pass, code);
        assert_eq!(codes(&out.0, PHONE2), vec![401], "{:?}", out.0);
        out.1.expect("an authenticated try")
    };
    // Not a supervisor's phone, a wrong password, an unknown operator.
    let out = dial(&mut h, "x1", "1003", "demo1003", "*71001");
    assert_eq!(codes(&out, PHONE2).last(), Some(&403));
    let out = dial(&mut h, "x2", "1002", "wrong", "*71001");
    assert_eq!(codes(&out, PHONE2).last(), Some(&403));
    let out = dial(&mut h, "x3", "1002", "demo1002", "*79999");
    assert_eq!(codes(&out, PHONE2).last(), Some(&404));
    assert!(h.media.is_empty(), "nothing joined: {:?}", h.media);
    // Another firm's operator is as unknown as a missing one.
    let out = dial(&mut h, "x4", "1002", "demo1002", "*72001");
    assert_eq!(codes(&out, PHONE2).last(), Some(&404));
    // A Call-ID that is the operator's dialog's: its requests would speak
    // for the call. Refused.
    let out = dial(&mut h, &inv.call_id.clone(), "1002", "demo1002", "*71001");
    assert_eq!(codes(&out, PHONE2).last(), Some(&482));
    assert!(h.media.is_empty(), "nothing joined: {:?}", h.media);
    // Cancelled before the node answers: 487, and the place is free.
    let out = dial(&mut h, "c1", "1002", "demo1002", "*71001");
    assert_eq!(codes(&out, PHONE2), vec![100]);
    let out = h.send(
        PHONE2,
        &format!(
            "CANCEL sip:*71001@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE2};branch=z9hG4bKc12\r\nFrom: <sip:1002@192.0.2.1>;tag=sc1\r\nTo: <sip:*71001@192.0.2.1>\r\nCall-ID: c1\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(codes(&out, PHONE2), vec![200, 487], "{out:?}");
    assert!(
        h.engine
            .monitor_start("1001", "sala", None, MonitorMode::Listen)
            .is_ok(),
        "the place is free again"
    );
    let call = h.engine.calls.keys().copied().next().expect("the call");
    h.engine.monitor_failed(call);
    h.drain();

    // The supervisor's phone: a port asked for, then 200 with it.
    let out = dial(&mut h, "s1", "1002", "demo1002", "*71001");
    assert_eq!(codes(&out, PHONE2), vec![100]);
    let call = match h.media.as_slice() {
        [MediaCommand::MonitorPort { call }] => *call,
        other => panic!("{other:?}"),
    };
    h.engine.handle_media(
        h.now,
        MediaEvent::MonitorPort {
            call,
            port: Some(42_000),
        },
    );
    let out = h.drain();
    assert_eq!(codes(&out, PHONE2), vec![200]);
    assert!(out[0].1.to_tag.is_some(), "our tag");
    let answer = sdp::parse(&out[0].1.body).expect("our SDP");
    assert_eq!(answer.port, 42_000);
    assert!(matches!(
        h.media.last(),
        Some(MediaCommand::Monitor {
            mode: Some(MonitorMode::Listen),
            phone: Some(_),
            ..
        })
    ));
    assert!(
        h.records.iter().any(|r| matches!(r, Record::Agent { agent, event: "monitor", reason: Some(w), .. } if agent == "1001" && w.starts_with("phone:1002:listen:"))),
        "the operator's queue log says who listened"
    );
    // The phone's keypad: 2 whispers, 9 does nothing.
    h.media.clear();
    h.engine
        .handle_media(h.now, MediaEvent::MonitorDigit { call, digit: '2' });
    h.engine
        .handle_media(h.now, MediaEvent::MonitorDigit { call, digit: '9' });
    h.drain();
    assert!(
        matches!(
            h.media.as_slice(),
            [MediaCommand::Monitor {
                mode: Some(MonitorMode::Whisper),
                ..
            }]
        ),
        "{:?}",
        h.media
    );
    assert!(h.records.iter().any(|r| matches!(r, Record::Agent { event: "monitor", reason: Some(w), .. } if w.starts_with("phone:1002:whisper:"))));
    // Another supervisor finds the place taken.
    assert_eq!(
        h.engine
            .monitor_start("1001", "sala", None, MonitorMode::Listen),
        Err(super::MonitorError::Taken)
    );
    // The same phone dialling again takes its own place back: its first
    // dialog gets our BYE.
    let out = dial(&mut h, "s2", "1002", "demo1002", "*71001");
    assert_eq!(codes(&out, PHONE2), vec![100, 0], "100, and our BYE");
    let byes = requests(&out, PHONE2, "BYE");
    assert_eq!(byes.len(), 1, "{out:?}");
    assert_eq!(byes[0].call_id, "s1");
    h.engine.handle_media(
        h.now,
        MediaEvent::MonitorPort {
            call,
            port: Some(42_004),
        },
    );
    let out = h.drain();
    assert_eq!(codes(&out, PHONE2), vec![200]);
    let tag = out[0].1.to_tag.clone().expect("our tag");
    // Nothing acts on the call through their dialog: a REFER is refused,
    // a session refresh gets the same session and moves no media.
    let in_dialog = |method: &str, cseq: u32, tag: &str, extra: &str| {
        format!(
            "{method} sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE2};branch=z9hG4bKd{cseq}\r\nFrom: <sip:1002@192.0.2.1>;tag=ss2\r\nTo: <sip:*71001@192.0.2.1>;tag={tag}\r\nCall-ID: s2\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    h.media.clear();
    let out = h.send(
        PHONE2,
        &in_dialog("REFER", 4, &tag, "Refer-To: <tel:+39061234567>\r\n"),
    );
    assert_eq!(codes(&out, PHONE2), vec![403]);
    let out = h.send(PHONE2, &in_dialog("INVITE", 5, &tag, ""));
    assert_eq!(codes(&out, PHONE2), vec![200]);
    assert_eq!(sdp::parse(&out[0].1.body).expect("our SDP").port, 42_004);
    assert_eq!(sdp_version(&out[0].1.body), 1, "the same SDP");
    assert!(h.media.is_empty(), "no media change: {:?}", h.media);
    // The phone holds (sendonly): answered recvonly, never sendrecv (RFC
    // 3264 §6.1), the next version; resumed, sendrecv again and the next.
    let reinvite = |cseq: u32, dir: &str| {
        let sdp = format!(
            "v=0\r\no=- 1 {cseq} IN IP4 192.0.2.22\r\ns=-\r\nc=IN IP4 192.0.2.22\r\nt=0 0\r\nm=audio 32000 RTP/AVP 0\r\na={dir}\r\n"
        );
        in_dialog("INVITE", cseq, &tag, "Content-Type: application/sdp\r\n").replace(
            "Content-Length: 0\r\n\r\n",
            &format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()),
        )
    };
    for (cseq, dir, want, version) in [
        (6, "sendonly", sdp::Direction::RecvOnly, 2),
        (7, "sendrecv", sdp::Direction::SendRecv, 3),
    ] {
        let out = h.send(PHONE2, &reinvite(cseq, dir));
        assert_eq!(codes(&out, PHONE2), vec![200], "{out:?}");
        let ours = sdp::parse(&out[0].1.body).expect("our SDP");
        assert_eq!(
            (ours.direction, sdp_version(&out[0].1.body)),
            (want, version)
        );
    }
    assert!(requests(&out, PHONE1, "BYE").is_empty());
    // Their BYE: they leave.
    let bye = |id: &str, code: &str, tag: &str| {
        format!(
            "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE2};branch=z9hG4bKbye{id}\r\nFrom: <sip:1002@192.0.2.1>;tag=s{id}\r\nTo: <sip:{code}@192.0.2.1>;tag={tag}\r\nCall-ID: {id}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    h.media.clear();
    let out = h.send(PHONE2, &bye("s2", "*71001", "forged"));
    assert_eq!(codes(&out, PHONE2), vec![481], "our tag or nothing");
    let out = h.send(PHONE2, &bye("s2", "*71001", &tag));
    assert_eq!(codes(&out, PHONE2), vec![200]);
    assert!(matches!(
        h.media.as_slice(),
        [MediaCommand::Monitor { mode: None, .. }]
    ));
    // Barging from the phone; the caller hangs up: the phone gets our BYE.
    let out = dial(&mut h, "s3", "1002", "demo1002", "*91001");
    assert_eq!(codes(&out, PHONE2), vec![100]);
    h.engine.handle_media(
        h.now,
        MediaEvent::MonitorPort {
            call,
            port: Some(42_002),
        },
    );
    let out = h.drain();
    assert_eq!(codes(&out, PHONE2), vec![200]);
    let trunk_ok = h
        .records
        .iter()
        .any(|r| matches!(r, Record::Agent { event: "monitor", reason: Some(w), .. } if w.starts_with("phone:1002:barge:")));
    assert!(trunk_ok);
    let out = h.send(
        TRUNK,
        &format!(
            "BYE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKtb1\r\nFrom: <sip:+390612345678@192.0.2.10>;tag=am1\r\nTo: <sip:100@192.0.2.1>;tag={}\r\nCall-ID: m1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            caller_tag
        ),
    );
    assert_eq!(h.engine.active_calls(), 0);
    let byes = requests(&out, PHONE2, "BYE");
    assert_eq!(byes.len(), 1, "the supervisor's phone is hung up: {out:?}");
    assert_eq!(byes[0].call_id, "s3");
}

/// An operator's REFER to a number goes out only where the call's firm
/// lists the prefix in `transfer_numbers` and its dial plan lets it out:
/// then the operator's leg ends and the caller is put through by the
/// firm's outbound trunk; anything else is 403 and dials nothing. A number
/// that does not answer puts the caller back in their queue.
#[test]
fn an_operator_transfers_to_a_number_only_where_the_firm_allows_it() {
    let config = outbound_trunks("", false).replace(
        "[[tenants]]\nname = \"demo\"",
        "[[tenants]]\nname = \"demo\"\ntransfer_numbers = [\"+39061\", \"+39899\"]",
    );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    let out = h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let caller_tag = out
        .iter()
        .find(|(_, m)| m.code() == 200)
        .and_then(|(_, m)| m.to_tag.clone())
        .expect("the caller's 200");
    // The caller's own REFER to an allowed number: a citizen never makes
    // the node place a call.
    let out = h.send(
        TRUNK,
        &in_dialog("REFER", TRUNK, "am1", &caller_tag, 7, "").replace(
            "Content-Length: 0",
            "Refer-To: <tel:+39061234567>\r\nContent-Length: 0",
        ),
    );
    assert_eq!(codes(&out, TRUNK), vec![403]);
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    let refer = |cseq: u32, to: &str| operator_refer(&inv, cseq, &format!("<{to}>"));
    // Milan: the dial plan would let it out, the firm's list does not;
    // a premium number: listed, but the dial plan blocks it.
    // And a local number of another context (RFC 3966), not guessed as
    // a national one.
    for (cseq, to) in [
        (10, "tel:+39021234567"),
        (11, "sip:+39899123456@192.0.2.1"),
        (13, "tel:061234567;phone-context=+41"),
    ] {
        let out = h.send(PHONE1, &refer(cseq, to));
        assert_eq!(codes(&out, PHONE1), vec![403], "{to}: {out:?}");
        assert!(requests(&out, TRUNK, "INVITE").is_empty(), "{to}");
    }
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=refused,target=external}"),
        3
    );
    // Rome's switchboard: allowed.
    let out = h.send(PHONE1, &refer(12, "tel:+39-06-1234567"));
    assert_eq!(codes(&out, PHONE1), vec![202, 0, 0], "{out:?}");
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    let dialled = requests(&out, TRUNK, "INVITE");
    assert_eq!(dialled.len(), 1, "{out:?}");
    assert!(
        dialled[0]
            .request_uri()
            .unwrap()
            .starts_with("sip:+39061234567@"),
        "{:?}",
        dialled[0].request_uri()
    );
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=done,target=external}"),
        1
    );
    // Busy: the caller waits in "info" again, offered to the next free
    // operator (1001 after their wrap-up).
    let out = unavailable(&mut h, TRUNK, dialled[0], "n1");
    assert_eq!(requests(&out, TRUNK, "ACK").len(), 1);
    assert_eq!(h.engine.active_calls(), 1, "the caller is not cut off");
    let out = h.advance(Duration::from_secs(5));
    let offers: std::collections::HashSet<String> = requests(&out, PHONE1, "INVITE")
        .iter()
        .map(|m| m.call_id.to_string())
        .collect();
    assert_eq!(offers.len(), 1, "offered again once the operator is free");
}

/// Guessing a supervisor's password through feature codes is throttled as
/// REGISTER is: after five wrong answers the account is banned from that
/// address, and even the right password is refused, with the same 403.
#[test]
fn guessing_a_supervisors_password_by_feature_code_is_banned() {
    let config = CONFIG.replace(
        "[[tenants]]\nname = \"demo\"",
        "[[tenants]]\nname = \"demo\"\nsupervisor_phones = [\"1002\"]",
    );
    let mut h = Harness::with(&config);
    let try_password = |h: &mut Harness, i: u32, pass: &str| {
        let (first, second) = dial_feature(h, &format!("g{i}"), "1002", pass, "*71001");
        codes(second.as_ref().unwrap_or(&first), PHONE2)
            .last()
            .copied()
    };
    for i in 0..5 {
        assert_eq!(try_password(&mut h, i, "guess"), Some(403), "try {i}");
    }
    assert_eq!(
        try_password(&mut h, 9, "demo1002"),
        Some(403),
        "banned: the right password fails too"
    );
    assert!(h.gauge("centralino_auth_bans_total{scope=user}") >= 1);
}

/// What the engine sent, by destination.
type Sent = Vec<(SocketAddr, Message)>;

/// A supervisor's phone at `PHONE2` dials `code` as `user` with `pass`
/// (Call-ID `id`): the first answer, and the answer to the authenticated
/// INVITE when the first was a challenge (MD5).
fn dial_feature(
    h: &mut Harness,
    id: &str,
    user: &str,
    pass: &str,
    code: &str,
) -> (Sent, Option<Sent>) {
    dial_from(h, PHONE2, id, user, pass, code)
}

/// A phone at `phone` calls `target` as `user`: its INVITE, and when
/// challenged, its INVITE with credentials (`pass`).
fn dial_from(
    h: &mut Harness,
    phone: &str,
    id: &str,
    user: &str,
    pass: &str,
    target: &str,
) -> (Sent, Option<Sent>) {
    let ip = phone.split(':').next().unwrap_or_default();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 32000 RTP/AVP 0 8\r\n"
    );
    // The branch and tag from the Call-ID's token characters.
    let b: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let req = |cseq: u32, auth: &str| {
        format!(
            "INVITE sip:{target}@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK{b}{cseq}\r\nFrom: <sip:{user}@192.0.2.1>;tag=s{b}\r\nTo: <sip:{target}@192.0.2.1>\r\nCall-ID: {id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:{user}@{phone}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    let first = h.send(phone, &req(1, ""));
    let Some(nonce) = first
        .first()
        .and_then(|(_, m)| {
            m.headers_named("WWW-Authenticate")
                .find(|c| c.contains("algorithm=MD5"))
        })
        .and_then(|c| c.split("nonce=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
    else {
        return (first, None);
    };
    let auth = authorization(
        Algorithm::Md5,
        user,
        pass,
        "INVITE",
        &format!("sip:{target}@192.0.2.1"),
        &nonce,
    ) + "\r\n";
    h.media.clear();
    let second = h.send(phone, &req(2, &auth));
    (first, Some(second))
}

/// A caller who came through an IVR flow into the queue, transferred by
/// the operator to a number that does not answer, waits in the queue
/// again: the flow is over, the operator's transfer decides (no dead end).
#[test]
fn an_ivr_routed_caller_whose_number_transfer_fails_waits_in_the_queue_again() {
    let config = IVR
        .replace(
            r#"dids = { "100" = "info", "800" = { flow = "vaccini" }, "801" = { flow = "chiuso" } }"#,
            r#"dids = { "100" = "info", "800" = { flow = "vaccini" }, "801" = { flow = "chiuso" }, "803" = { flow = "diretto" } }
outbound = "192.0.2.10:5070""#,
        )
        .replace(
            "[[tenants]]\nname = \"demo\"",
            "[[tenants]]\nname = \"demo\"\ntransfer_numbers = [\"+39061\"]",
        )
        .replacen(
            "[[agents]]",
            r#"[[flows]]
name = "diretto"
start = "motivo"
[flows.nodes.motivo]
type = "set"
variables = { motivo = "prenotazione" }
next = "coda"
[flows.nodes.coda]
type = "enqueue"
queue = "info"

[[agents]]"#,
            1,
        );
    let mut h = Harness::with(&config);
    h.engine
        .set_outbound_local("192.0.2.1:5060".parse().unwrap());
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = invite_did(&mut h, "803", "d1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    let refer = operator_refer(&inv, 9, "<tel:+39061234567>");
    let out = h.send(PHONE1, &refer);
    assert_eq!(codes(&out, PHONE1)[0], 202);
    let dialled = requests(&out, "192.0.2.10:5070", "INVITE")[0].clone();
    let busy = dialled.response(486, "Busy Here", Some("far"));
    h.send(
        "192.0.2.10:5070",
        &String::from_utf8(busy.to_bytes()).unwrap(),
    );
    assert_eq!(h.engine.active_calls(), 1, "the caller is not cut off");
    let out = h.advance(Duration::from_secs(5));
    let again = requests(&out, PHONE1, "INVITE");
    assert!(!again.is_empty(), "offered again once the operator is free");
    assert_eq!(
        again[0].header("X-Centralino-Call"),
        inv.header("X-Centralino-Call"),
        "the same call, its record kept"
    );
}

/// A reload that takes a supervisor's right away takes them off the call
/// at once: an API token gone (or of another firm now), a phone's account
/// no longer in `supervisor_phones` (its phone gets our BYE).
#[test]
fn a_reload_takes_off_the_call_a_supervisor_no_longer_allowed() {
    use centralino_media::monitor::MonitorMode;
    let with_phone = CONFIG.replace(
        "[[tenants]]\nname = \"demo\"",
        "[[tenants]]\nname = \"demo\"\nsupervisor_phones = [\"1002\"]",
    );
    let (mut h, _) = talking(&with_phone);
    // A browser supervisor: still allowed, then not.
    let target = h
        .engine
        .monitor_start("1001", "sala", None, MonitorMode::Listen)
        .expect("talking");
    h.engine.monitor_joined(h.now, target.call);
    assert_eq!(
        h.engine
            .revalidate_monitors(h.now, |n, f| n == "sala" && f == "demo"),
        0
    );
    h.drain();
    h.media.clear();
    assert_eq!(h.engine.revalidate_monitors(h.now, |_, _| false), 1);
    h.drain();
    assert!(matches!(
        h.media.as_slice(),
        [MediaCommand::Monitor { mode: None, .. }]
    ));
    assert!(h.records.iter().any(|r| matches!(r, Record::Agent { event: "monitor", reason: Some(w), .. } if w.starts_with("sala:revoked:"))));
    // A phone: its account leaves `supervisor_phones`.
    let (_, joined) = dial_feature(&mut h, "p1", "1002", "demo1002", "*71001");
    assert_eq!(codes(&joined.expect("authenticated"), PHONE2), vec![100]);
    h.engine.handle_media(
        h.now,
        MediaEvent::MonitorPort {
            call: target.call,
            port: Some(42_010),
        },
    );
    let out = h.drain();
    assert_eq!(codes(&out, PHONE2), vec![200]);
    let config = Config::from_toml(CONFIG).unwrap();
    h.engine.reload(h.now, &config.engine()).expect("reload");
    assert_eq!(h.engine.revalidate_monitors(h.now, |_, _| true), 1);
    let out = h.drain();
    assert_eq!(
        requests(&out, PHONE2, "BYE").len(),
        1,
        "the phone is hung up"
    );
    assert_eq!(h.engine.active_calls(), 1, "the conversation goes on");
}

/// A consultation's 200 and its Call-ID's ACK from the phone at `phone`
/// (tag `s` + the Call-ID's token characters, as `dial_from` writes).
fn ack_consult(h: &mut Harness, phone: &str, id: &str, ok: &Message) {
    let b: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    h.send(
        phone,
        &format!(
            "ACK sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bKack{b}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {id}\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n",
            ok.header("From").unwrap(),
            ok.header("To").unwrap(),
        ),
    );
}

/// The Refer-To of an attended transfer naming dialog `id` (the node's
/// tag `ours`, the phone's `s` + id).
fn replaces(id: &str, ours: &str) -> String {
    let b: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("<sip:info@192.0.2.1?Replaces={id}%3Bto-tag%3D{ours}%3Bfrom-tag%3Ds{b}>")
}

/// Operator 1001 talks to a caller; their phone consults the queue
/// (challenged, as 1001); colleague 1002 answers the consultation.
/// Returns the caller's INVITE to 1001, the consultation's 200 to 1001's
/// phone, and 1002's INVITE of it.
fn consulting(h: &mut Harness) -> (Message, Message, Message) {
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    h.register("1002", PHONE2, Algorithm::Md5);
    let (first, second) = dial_from(h, PHONE1, "k1", "1001", "demo1001", "info");
    assert_eq!(codes(&first, PHONE1), vec![401], "{first:?}");
    let out = second.expect("an authenticated try");
    let offered = requests(&out, PHONE2, "INVITE");
    assert_eq!(offered.len(), 1, "the colleague is offered it: {out:?}");
    let b_inv = offered[0].clone();
    assert!(
        b_inv.header("From").unwrap().contains("1001"),
        "from the consulting operator"
    );
    let out = h.send(PHONE2, &response_to(&b_inv, 200, "b2"));
    let ok = out
        .iter()
        .find(|(to, m)| m.code() == 200 && to.to_string() == PHONE1)
        .expect("the consultation answered")
        .1
        .clone();
    ack_consult(h, PHONE1, "k1", &ok);
    (inv, ok, b_inv)
}

/// An attended transfer from a SIP phone (RFC 5589 §7): the REFER with
/// Replaces hands 1002 the caller. 1002's phone gets a re-INVITE to the
/// caller's operator port in the law it speaks; 1001 gets NOTIFY of success
/// and BYE on both dialogs and goes to wrap-up; the consultation's record
/// says how it ended; the caller's call ends later with 1002.
#[test]
fn an_operator_consults_a_colleague_then_hands_them_the_caller() {
    let mut h = Harness::new();
    let (inv, ok, b_inv) = consulting(&mut h);
    assert_eq!(h.engine.active_calls(), 2);
    // The colleague's desk shows a consultation: no citizen's call of
    // theirs (not counted, no outcome); the caller's call on 1001's is not.
    let desk = |agent: &str| {
        h.desks
            .iter()
            .rev()
            .find_map(|(a, i)| (a == agent).then_some(i.clone()).flatten())
            .expect("a desk event")
    };
    assert!(desk("1002").consultation, "{:?}", desk("1002"));
    assert!(!desk("1001").consultation, "{:?}", desk("1001"));
    let caller_call = *h.engine.by_a.get("m1").expect("the caller's call");
    let b_port = h.engine.calls[&caller_call].media.b_port;
    h.media.clear();
    let ours = ok.to_tag.clone().unwrap();
    let out = h.send(PHONE1, &operator_refer(&inv, 11, &replaces("k1", &ours)));
    assert_eq!(codes(&out, PHONE1)[0], 202, "{out:?}");
    assert_eq!(requests(&out, PHONE1, "NOTIFY").len(), 1);
    let byes = requests(&out, PHONE1, "BYE");
    let mut ended: Vec<&str> = byes.iter().map(|m| m.call_id.as_str()).collect();
    let mut expected = vec!["k1", inv.call_id.as_str()];
    ended.sort_unstable();
    expected.sort_unstable();
    assert_eq!(ended, expected, "both of 1001's dialogs end");
    let reinvite = requests(&out, PHONE2, "INVITE");
    assert_eq!(reinvite.len(), 1, "{out:?}");
    assert_eq!(reinvite[0].call_id, b_inv.call_id, "in 1002's own dialog");
    assert!(reinvite[0].to_tag.is_some());
    let offer = sdp::parse(&reinvite[0].body).expect("our offer");
    assert_eq!(offer.port, b_port, "the caller's operator port");
    assert_eq!(offer.formats.len(), 1, "the law 1002 already speaks");
    assert!(
        h.media
            .iter()
            .any(|m| matches!(m, MediaCommand::Bridge { call, .. } if *call == caller_call)),
        "{:?}",
        h.media
    );
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=done,target=operator}"),
        1
    );
    assert_eq!(h.engine.active_calls(), 1, "the consultation is over");
    assert!(
        h.records.iter().any(|r| matches!(r, Record::CallEnded { outcome: CallOutcome::ConsultTransferred, agent: Some(a), .. } if a == "1002")),
        "the consultation's record"
    );
    let states: Vec<_> = ["1001", "1002"]
        .iter()
        .map(|n| h.engine.router.agent(h.engine.agent_ids[*n]).state)
        .collect();
    assert_eq!(
        states,
        vec![
            centralino_routing::AgentState::WrapUp,
            centralino_routing::AgentState::OnCall(caller_call)
        ]
    );
    // 1002's phone takes the new session: acknowledged, its media moved.
    h.media.clear();
    let out = h.send(PHONE2, &response_to(reinvite[0], 200, "b2"));
    assert_eq!(requests(&out, PHONE2, "ACK").len(), 1, "{out:?}");
    assert!(
        matches!(h.media.as_slice(), [MediaCommand::Update { call, side: Side::B, held: false, .. }] if *call == caller_call),
        "{:?}",
        h.media
    );
    // The caller hangs up: 1002 gets the BYE, the record names them.
    let a_tag = h.engine.calls[&caller_call].a_leg.local.clone();
    let a_tag = super::dialogs::tag_of(&a_tag).unwrap().to_owned();
    let out = h.send(TRUNK, &in_dialog("BYE", TRUNK, "am1", &a_tag, 30, ""));
    assert_eq!(requests(&out, PHONE2, "BYE").len(), 1, "{out:?}");
    assert!(requests(&out, PHONE1, "BYE").is_empty());
    assert!(
        h.records.iter().any(|r| matches!(r, Record::CallEnded { outcome: CallOutcome::CallerHangup, agent: Some(a), .. } if a == "1002")),
        "{:?}",
        h.records
    );
}

/// TEST-MATRIX D rows for attended transfer: a consultation needs the
/// operator's own credentials and a caller on the line; a REFER joins a
/// caller only to that operator's own answered consultation, named with
/// both its tags. Each refusal leaves both calls as they were.
#[test]
fn an_attended_transfer_joins_only_the_operators_own_answered_consultation() {
    let mut h = Harness::new();
    // From where no operator's phone is registered (a carrier's address,
    // a stranger): no challenge, no transaction, as before.
    let (first, _) = dial_from(&mut h, TRUNK, "t1", "1001", "demo1001", "info");
    assert_eq!(codes(&first, TRUNK), vec![404], "{first:?}");
    let (first, _) = dial_from(&mut h, PHONE2, "n0", "1002", "demo1002", "info");
    assert_eq!(codes(&first, PHONE2), vec![403], "{first:?}");
    let (inv, ok, _) = consulting(&mut h);
    // 1002 talks to no caller (only to 1001's consultation): none of
    // their own.
    let (_, second) = dial_from(&mut h, PHONE2, "n1", "1002", "demo1002", "info");
    assert_eq!(codes(&second.unwrap(), PHONE2).last(), Some(&403));
    let ours = ok.to_tag.clone().unwrap();
    // A wrong password, a second consultation, a Call-ID in use.
    let (_, second) = dial_from(&mut h, PHONE1, "n2", "1001", "wrong", "info");
    assert_eq!(codes(&second.unwrap(), PHONE1).last(), Some(&403));
    let (_, second) = dial_from(&mut h, PHONE1, "n3", "1001", "demo1001", "info");
    assert_eq!(codes(&second.unwrap(), PHONE1).last(), Some(&486));
    let (_, second) = dial_from(&mut h, PHONE1, "m1", "1001", "demo1001", "info");
    assert_eq!(codes(&second.unwrap(), PHONE1).last(), Some(&482));
    // REFERs naming the caller's own dialog, the consultation with a wrong
    // tag, a dialog that does not exist, or only an early one.
    let a_tag = ok.to_tag.clone().unwrap();
    let caller_call = *h.engine.by_a.get("m1").unwrap();
    let trunk_tag = super::dialogs::tag_of(&h.engine.calls[&caller_call].a_leg.local)
        .unwrap()
        .to_owned();
    for (i, to) in [
        format!("<sip:info@192.0.2.1?Replaces=m1%3Bto-tag%3D{trunk_tag}%3Bfrom-tag%3Dam1>"),
        replaces("k1", "wrong"),
        format!("<sip:info@192.0.2.1?Replaces=k1%3Bto-tag%3D{a_tag}%3Bfrom-tag%3Dother>"),
        replaces("nothere", &a_tag),
        format!("<sip:info@192.0.2.1?Replaces=k1%3Bto-tag%3D{ours}%3Bfrom-tag%3Dsk1%3Bearly-only>"),
        "<sip:info@192.0.2.1?Replaces=k1>".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let out = h.send(PHONE1, &operator_refer(&inv, 20 + i as u32, to));
        let got = codes(&out, PHONE1);
        assert!(got == vec![403] || got == vec![400], "{to}: {got:?}");
        assert_eq!(out.len(), 1, "{to}: nothing else is sent: {out:?}");
    }
    assert_eq!(h.engine.active_calls(), 2, "both calls go on");
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=refused,target=operator}"),
        6
    );
    // The caller cannot transfer anyone, with Replaces or not.
    let caller_refer = in_dialog("REFER", TRUNK, "am1", &trunk_tag, 40, "").replace(
        "Content-Length: 0",
        &format!("Refer-To: {}\r\nContent-Length: 0", replaces("k1", &ours)),
    );
    let out = h.send(TRUNK, &caller_refer);
    assert_eq!(codes(&out, TRUNK), vec![403]);
    assert_eq!(h.engine.active_calls(), 2);
}

/// The consulted operator's phone refuses our re-INVITE: they cannot hear
/// the caller, so the caller waits in the queue again (ahead of later
/// callers) and 1002's leg is hung up.
#[test]
fn a_consulted_phone_refusing_the_callers_media_sends_the_caller_back_to_the_queue() {
    let mut h = Harness::new();
    let (inv, ok, _) = consulting(&mut h);
    let ours = ok.to_tag.clone().unwrap();
    let out = h.send(PHONE1, &operator_refer(&inv, 11, &replaces("k1", &ours)));
    let reinvite = requests(&out, PHONE2, "INVITE")[0].clone();
    let out = h.send(PHONE2, &response_to(&reinvite, 488, "b2"));
    assert_eq!(requests(&out, PHONE2, "BYE").len(), 1, "{out:?}");
    let caller_call = *h.engine.by_a.get("m1").unwrap();
    assert_eq!(h.engine.calls[&caller_call].phase, super::Phase::Queued);
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=failed,target=operator}"),
        1
    );
}

/// Glare while our re-INVITE moves the colleague (RFC 3261 §14): their own
/// re-INVITE or REFER meanwhile gets `491`; their `491` to ours is tried
/// again 2.1 to 4 s later, and its 200 then moves the media. A 200 repeated
/// after that is acknowledged again.
#[test]
fn a_glare_with_the_colleagues_phone_is_tried_again() {
    let mut h = Harness::new();
    let (inv, ok, b_inv) = consulting(&mut h);
    let ours = ok.to_tag.clone().unwrap();
    let out = h.send(PHONE1, &operator_refer(&inv, 11, &replaces("k1", &ours)));
    let reinvite = requests(&out, PHONE2, "INVITE")[0].clone();
    // The colleague's phone holds at the same moment.
    let their = format!(
        "INVITE sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE2};branch=z9hG4bKglare\r\nFrom: {};tag=b2\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 9 INVITE\r\nContact: <sip:1002@{PHONE2}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
        b_inv.header("To").unwrap(),
        b_inv.header("From").unwrap(),
        b_inv.call_id,
        TRUNK_SDP.len()
    );
    let out = h.send(PHONE2, &their);
    assert_eq!(codes(&out, PHONE2), vec![491], "{out:?}");
    let refer = format!(
        "REFER sip:centralino@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE2};branch=z9hG4bKgref\r\nFrom: {};tag=b2\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 10 REFER\r\nRefer-To: <sip:info@192.0.2.1>\r\nContent-Length: 0\r\n\r\n",
        b_inv.header("To").unwrap(),
        b_inv.header("From").unwrap(),
        b_inv.call_id,
    );
    let out = h.send(PHONE2, &refer);
    assert_eq!(codes(&out, PHONE2), vec![491], "{out:?}");
    // Their phone answers ours with 491: no BYE, no requeue; again later.
    let out = h.send(PHONE2, &response_to(&reinvite, 491, "b2"));
    assert!(requests(&out, PHONE2, "BYE").is_empty(), "{out:?}");
    let caller_call = *h.engine.by_a.get("m1").unwrap();
    assert_eq!(h.engine.calls[&caller_call].phase, super::Phase::Connected);
    let out = h.advance(Duration::from_secs(2));
    assert!(
        requests(&out, PHONE2, "INVITE").is_empty(),
        "not before 2.1 s"
    );
    let out = h.advance(Duration::from_secs(2));
    // Sent again (with its own retransmissions over UDP): one request.
    let again = requests(&out, PHONE2, "INVITE");
    assert!(!again.is_empty(), "{out:?}");
    assert!(again.iter().all(|m| m.cseq == again[0].cseq));
    let again = again[0].clone();
    assert!(again.cseq > reinvite.cseq);
    h.media.clear();
    let ok200 = response_to(&again, 200, "b2");
    let out = h.send(PHONE2, &ok200);
    assert_eq!(requests(&out, PHONE2, "ACK").len(), 1);
    assert!(matches!(h.media.as_slice(), [MediaCommand::Update { .. }]));
    // Our ACK was lost: the repeated 200 is acknowledged again, nothing else.
    h.media.clear();
    let out = h.send(PHONE2, &ok200);
    assert_eq!(requests(&out, PHONE2, "ACK").len(), 1, "{out:?}");
    assert!(h.media.is_empty());
    // Now the colleague may hold.
    let out = h.send(
        PHONE2,
        &their
            .replace("CSeq: 9", "CSeq: 19")
            .replace("glare", "glare2"),
    );
    assert_eq!(codes(&out, PHONE2), vec![200], "{out:?}");
}

/// The callback requests the engine asks the store for (the harness's
/// `drain` refuses them): fires due timers at `h.now` first.
fn callbacks_asked(h: &mut Harness) -> Vec<String> {
    h.engine.handle_timeout(h.now);
    let mut asked = Vec::new();
    while let Some(o) = h.engine.poll_output() {
        if let Output::StoreCallback { number, .. } = o {
            asked.push(number);
        }
    }
    asked
}

/// Never a dead end (the default policy, no number dialogue configured):
/// a caller the queue cannot serve within `max_wait_seconds` is called
/// back on their number; the call ends as a callback request and no dead
/// end is counted.
#[test]
fn an_unserved_caller_is_called_back_instead_of_dropped() {
    let mut h = Harness::with(&CONFIG.replace("when_unserved = \"hangup\"\n", ""));
    h.register("1001", PHONE1, Algorithm::Md5);
    // 1001 is busy with another caller: nobody answers this one.
    let out = h.invite("busy");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    h.send(
        TRUNK,
        &format!(
            "INVITE sip:100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKu1\r\nFrom: <sip:+390612345679@192.0.2.10>;tag=au1\r\nTo: <sip:100@192.0.2.1>\r\nCall-ID: u1\r\nCSeq: 1 INVITE\r\nContact: <sip:trunk@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{TRUNK_SDP}",
            TRUNK_SDP.len()
        ),
    );
    h.advance(Duration::from_secs(9));
    h.now += Duration::from_secs(2);
    assert_eq!(callbacks_asked(&mut h), ["+390612345679"]);
    let call = *h.engine.by_a.get("u1").expect("still there until stored");
    h.engine.callback_stored(h.now, call, true);
    let out = h.advance(Duration::from_secs(1));
    assert!(codes(&out, TRUNK).contains(&480), "{out:?}");
    assert!(h.records.iter().any(|r| matches!(
        r,
        Record::CallEnded {
            outcome: CallOutcome::CallbackRequested,
            ..
        }
    )));
    assert_eq!(
        h.gauge("centralino_unserved_total{action=callback,queue=info,reason=max_wait}"),
        1
    );
    assert_eq!(
        h.gauge("centralino_dead_ends_total{queue=info,reason=max_wait}"),
        0
    );
}

/// `when_unserved = "overflow"`: at `max_wait_seconds` the caller moves to
/// the firm's other queue, once, keeping their wait; its operator is
/// offered the call; the queue log says so (not a dead end).
#[test]
fn an_unserved_caller_overflows_to_the_firms_other_queue() {
    let config = CONFIG
        .replace(
            "when_unserved = \"hangup\"",
            "when_unserved = \"overflow\"\noverflow_queue = \"secondo\"",
        )
        .replace(
            "[[agents]]\nusername = \"1002\"",
            "[[queues]]\nname = \"secondo\"\ntenant = \"demo\"\nwhen_unserved = \"hangup\"\n\n[[agents]]\nusername = \"1002\"",
        )
        .replace(
            "password = \"demo1002\"\ntenant = \"demo\"\nqueues = [\"info\"]",
            "password = \"demo1002\"\ntenant = \"demo\"\nqueues = [\"secondo\"]",
        );
    let mut h = Harness::with(&config);
    // Only 1002 (queue secondo) is there.
    h.register("1002", PHONE2, Algorithm::Md5);
    let out = h.invite("o1");
    assert!(
        requests(&out, PHONE2, "INVITE").is_empty(),
        "not secondo's caller"
    );
    let out = h.advance(Duration::from_secs(11));
    // One INVITE (with its retransmissions over UDP).
    let offered = requests(&out, PHONE2, "INVITE");
    assert!(!offered.is_empty(), "{out:?}");
    assert!(offered.iter().all(|m| m.call_id == offered[0].call_id));
    assert!(!codes(&out, TRUNK).contains(&480));
    assert!(h.records.iter().any(|r| matches!(
        r,
        Record::Queue { event: QueueEvent::Overflow, queue, .. } if queue == "info"
    )));
    // Its early media goes on: opened once, the new queue's music on it.
    let opens = h
        .media
        .iter()
        .filter(|m| matches!(m, MediaCommand::Open { .. }))
        .count();
    assert_eq!(opens, 1, "{:?}", h.media);
    assert_eq!(
        h.gauge("centralino_unserved_total{action=overflow,queue=info,reason=max_wait}"),
        1
    );
}

/// An overflow whose queue is full too ends in a callback, not a dead
/// end: the first caller passes to `secondo` (room for one), the second
/// finds it full at its maximum wait and is called back on their number.
#[test]
fn an_overflow_to_a_full_queue_becomes_a_callback() {
    let config = CONFIG
        .replace(
            "when_unserved = \"hangup\"",
            "when_unserved = \"overflow\"\noverflow_queue = \"secondo\"",
        )
        .replace(
            "[[agents]]\nusername = \"1002\"",
            "[[queues]]\nname = \"secondo\"\ntenant = \"demo\"\nmax_waiting = 1\n\n[[agents]]\nusername = \"1002\"",
        );
    let mut h = Harness::with(&config);
    h.invite("f1");
    h.advance(Duration::from_secs(1));
    h.invite("f2");
    h.advance(Duration::from_secs(9));
    h.now += Duration::from_millis(500);
    assert!(callbacks_asked(&mut h).is_empty());
    assert_eq!(
        h.gauge("centralino_unserved_total{action=overflow,queue=info,reason=max_wait}"),
        1
    );
    h.now += Duration::from_secs(1);
    assert_eq!(callbacks_asked(&mut h), ["+390612345678"]);
    assert_eq!(
        h.gauge("centralino_unserved_total{action=callback,queue=info,reason=max_wait}"),
        1
    );
    assert_eq!(
        h.gauge("centralino_dead_ends_total{queue=info,reason=max_wait}"),
        0
    );
}

/// Nobody logged in to the queue: the policy applies after a grace of 30 s
/// (time for a phone to register) rather than at `max_wait_seconds`; a
/// caller whose number is withheld cannot be called back and is the only
/// dead end, counted.
#[test]
fn with_nobody_logged_in_the_policy_applies_within_half_a_minute() {
    let config = CONFIG
        .replace("when_unserved = \"hangup\"\n", "")
        .replace("max_wait_seconds = 10", "max_wait_seconds = 300");
    let mut h = Harness::with(&config);
    h.invite("n1");
    h.advance(Duration::from_secs(29));
    assert!(callbacks_asked(&mut h).is_empty(), "not before the grace");
    h.now += Duration::from_secs(2);
    assert_eq!(callbacks_asked(&mut h), ["+390612345678"]);
    assert_eq!(
        h.gauge("centralino_unserved_total{action=callback,queue=info,reason=nobody}"),
        1
    );
    // A withheld number: nothing to call back, the queue's exit.
    let mut h = Harness::with(&config);
    h.send(TRUNK, &invite_with("Privacy: id\r\n"));
    h.advance(Duration::from_secs(29));
    let out = h.advance(Duration::from_secs(2));
    assert!(codes(&out, TRUNK).contains(&480), "{out:?}");
    assert_eq!(
        h.gauge("centralino_unserved_total{action=hangup,queue=info,reason=nobody}"),
        1
    );
}

/// A blind transfer to a colleague by name (`Refer-To: <sip:1002@...>`):
/// their phone rings for the caller, who hears the music meanwhile; a
/// colleague who is not available is refused (`486`, the operator keeps
/// the caller), another firm's operator is unknown (`403`); a colleague
/// who does not answer sends the caller back to the queue.
#[test]
fn an_operator_transfers_blind_to_a_colleague_by_name() {
    let config = with_other_firm(CONFIG);
    let (mut h, inv) = talking(&config);
    // 1002 is not logged in yet; 2001 is another firm's.
    let out = h.send(PHONE1, &operator_refer(&inv, 10, "<sip:1002@192.0.2.1>"));
    assert_eq!(codes(&out, PHONE1), vec![486], "{out:?}");
    let out = h.send(PHONE1, &operator_refer(&inv, 11, "<sip:2001@192.0.2.1>"));
    assert_eq!(codes(&out, PHONE1), vec![403], "{out:?}");
    assert!(
        requests(&out, PHONE1, "BYE").is_empty(),
        "1001 keeps the caller"
    );
    h.register("1002", PHONE2, Algorithm::Md5);
    let out = h.send(PHONE1, &operator_refer(&inv, 12, "<sip:1002@192.0.2.1>"));
    assert_eq!(codes(&out, PHONE1)[0], 202, "{out:?}");
    assert_eq!(requests(&out, PHONE1, "BYE").len(), 1);
    let offered = requests(&out, PHONE2, "INVITE");
    assert!(!offered.is_empty(), "1002's phone rings: {out:?}");
    let b_inv = offered[0].clone();
    assert_eq!(
        b_inv.header("X-Centralino-Call"),
        inv.header("X-Centralino-Call"),
        "the same call, with its context"
    );
    assert_eq!(
        h.gauge("centralino_transfers_total{outcome=done,target=operator}"),
        1
    );
    // 1002 does not answer within the ring timeout: back in the queue,
    // where 1001 (after wrap-up) takes it.
    let out = h.advance(Duration::from_secs(6));
    let again = requests(&out, PHONE1, "INVITE");
    assert!(
        !again.is_empty(),
        "the caller waits in the queue again: {out:?}"
    );
    assert_eq!(h.engine.active_calls(), 1);
}

/// A harness on `config` where operator 1001 answered a carrier's call:
/// the harness and the INVITE 1001's phone got.
fn talking(config: &str) -> (Harness, Message) {
    let mut h = Harness::with(config);
    h.register("1001", PHONE1, Algorithm::Md5);
    let out = h.invite("m1");
    let inv = requests(&out, PHONE1, "INVITE")[0].clone();
    h.send(PHONE1, &response_to(&inv, 200, "b1"));
    (h, inv)
}

/// A consultation of a colleague by name (`INVITE sip:1002@...` from the
/// operator's phone): 1002's phone rings directly, whatever the queues;
/// then the attended transfer hands them the caller as with a queue. A
/// colleague not available is `486`; another firm's operator `404`.
#[test]
fn an_operator_consults_a_colleague_by_name_then_hands_them_the_caller() {
    let config = with_other_firm(CONFIG);
    let (mut h, inv) = talking(&config);
    let (_, second) = dial_from(&mut h, PHONE1, "c0", "1001", "demo1001", "1002");
    assert_eq!(
        codes(&second.unwrap(), PHONE1).last(),
        Some(&486),
        "1002 is not logged in"
    );
    let (_, second) = dial_from(&mut h, PHONE1, "c1", "1001", "demo1001", "2001");
    assert_eq!(
        codes(&second.unwrap(), PHONE1).last(),
        Some(&404),
        "another firm's"
    );
    h.register("1002", PHONE2, Algorithm::Md5);
    let (_, second) = dial_from(&mut h, PHONE1, "k1", "1001", "demo1001", "1002");
    let out = second.unwrap();
    let offered = requests(&out, PHONE2, "INVITE");
    assert!(!offered.is_empty(), "1002's phone rings: {out:?}");
    let b_inv = offered[0].clone();
    let out = h.send(PHONE2, &response_to(&b_inv, 200, "b2"));
    let ok = out
        .iter()
        .find(|(to, m)| m.code() == 200 && to.to_string() == PHONE1)
        .expect("the consultation answered")
        .1
        .clone();
    ack_consult(&mut h, PHONE1, "k1", &ok);
    let ours = ok.to_tag.clone().unwrap();
    let out = h.send(PHONE1, &operator_refer(&inv, 11, &replaces("k1", &ours)));
    assert_eq!(codes(&out, PHONE1)[0], 202, "{out:?}");
    assert_eq!(
        requests(&out, PHONE2, "INVITE").len(),
        1,
        "moved by re-INVITE"
    );
    let caller_call = *h.engine.by_a.get("m1").unwrap();
    assert_eq!(
        h.engine.router.agent(h.engine.agent_ids["1002"]).state,
        centralino_routing::AgentState::OnCall(caller_call)
    );
}

/// `config` with another firm, `altra`, and its operator 2001.
fn with_other_firm(config: &str) -> String {
    config.replace(
        "[[trunks]]",
        "[[tenants]]\nname = \"altra\"\n\n[[agents]]\nusername = \"2001\"\npassword = \"demo2001\"\ntenant = \"altra\"\n\n[[trunks]]",
    )
}

/// The staffing advisor turns to Erlang A once ten callers gave up after
/// the short-abandon threshold, but never on the engine's thread: it asks
/// the driver (one question per queue at a time, every 15 s) and shows the
/// answer; until then, Erlang C's count.
#[test]
fn erlang_a_is_asked_of_the_driver_every_fifteen_seconds_and_its_answer_shown() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    // One call of two minutes: the queue's handling time.
    let answer = |h: &mut Harness, call: &str| {
        let out = h.invite(call);
        let inv = requests(&out, PHONE1, "INVITE")[0].clone();
        let out = h.send(PHONE1, &response_to(&inv, 200, &format!("b{call}")));
        let ok = out.iter().find(|(_, m)| m.code() == 200).unwrap().1.clone();
        let a_tag = ok.to_tag.clone().unwrap();
        let ack = trunk_in_dialog("ACK", call, &format!("a{call}"), "100", &a_tag, 1, "ack");
        h.send(TRUNK, &ack);
        a_tag
    };
    let tag = answer(&mut h, "x0");
    h.advance(Duration::from_secs(120));
    h.send(
        TRUNK,
        &trunk_in_dialog("BYE", "x0", "ax0", "100", &tag, 2, "bye0"),
    );
    h.advance(Duration::from_secs(4));
    // The operator busy again; ten callers wait 6 s (past the short
    // threshold) and hang up.
    answer(&mut h, "x1");
    for i in 0..10 {
        h.invite(&format!("w{i}"));
    }
    h.advance(Duration::from_secs(6));
    assert!(h.staffing.is_empty(), "no patience measured yet");
    for i in 0..10 {
        let cancel = format!(
            "CANCEL sip:100@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKw{i}\nFrom: <sip:+390612345678@192.0.2.10>;tag=aw{i}\nTo: <sip:100@192.0.2.1>\nCall-ID: w{i}\nCSeq: 1 CANCEL\nContent-Length: 0\n\n"
        );
        assert_eq!(codes(&h.send(TRUNK, &cancel), TRUNK), vec![200, 487]);
    }
    h.advance(Duration::from_secs(2));
    assert_eq!(h.staffing.len(), 1, "{:?}", h.staffing);
    let job = h.staffing[0].clone();
    assert!(
        (job.patience_seconds - 6.0).abs() < 0.5,
        "the time waited over the abandons: {job:?}"
    );
    assert!(
        job.aht_seconds > 120.0 && job.max_abandon == 0.05,
        "{job:?}"
    );
    // The handling time it counts with is on the metrics page.
    assert_eq!(
        h.gauge("centralino_queue_handle_time_seconds{queue=info}"),
        job.aht_seconds as i64
    );
    let erlang_c = centralino_routing::staffing::agents_needed(
        job.rate,
        job.aht_seconds,
        job.t_seconds,
        job.target,
    )
    .unwrap();
    let needed = job.run().unwrap();
    assert_eq!(
        h.gauge("centralino_queue_agents_needed{queue=info}"),
        i64::from(needed)
    );
    // Not asked again within 15 s; then again, with the window's figures.
    h.advance(Duration::from_secs(10));
    assert_eq!(h.staffing.len(), 1);
    h.advance(Duration::from_secs(6));
    assert_eq!(h.staffing.len(), 2);
    // An answer older than the one shown changes nothing; no answer
    // (past Erlang A's bounds) leaves Erlang C's count.
    let queue = job.queue;
    let second = h.staffing[1].clone();
    let needed2 = second.run().unwrap();
    assert_eq!(
        h.gauge("centralino_queue_agents_needed{queue=info}"),
        i64::from(needed2)
    );
    h.engine
        .staffing_computed(h.now, queue, job.asked, Some(needed2 + 7));
    assert_eq!(
        h.gauge("centralino_queue_agents_needed{queue=info}"),
        i64::from(needed2)
    );
    h.engine.staffing_computed(h.now, queue, second.asked, None);
    let erlang_c2 = centralino_routing::staffing::agents_needed(
        second.rate,
        second.aht_seconds,
        second.t_seconds,
        second.target,
    )
    .unwrap();
    assert_eq!(
        h.gauge("centralino_queue_agents_needed{queue=info}"),
        i64::from(erlang_c2)
    );
    // Callers this impatient (6 s) would leave more than 5 % of them at
    // Erlang C's count: Erlang A asks for more.
    assert!(
        needed > erlang_c && needed2 > erlang_c2,
        "{erlang_c} {needed} {erlang_c2} {needed2}"
    );
}

/// A 422 to our refresh that asks for nothing larger (no Min-SE, or one
/// not above our interval) is not answered by a resend at once, which a
/// broken far end would turn into a storm; a larger Min-SE is, capped at
/// a day, and so is a 2xx's interval.
#[test]
fn a_too_small_answer_without_a_larger_minimum_is_retried_later_not_at_once() {
    let mut tries = RefreshTries::default();
    let mut answer = |code: u16, extra: &str, interval: &mut Option<u32>| {
        let text = format!(
            "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKr\r\nFrom: <sip:a@192.0.2.1>;tag=x\r\nTo: <sip:b@192.0.2.10>;tag=y\r\nCall-ID: r1\r\nCSeq: 3 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        let (mut we, mut upd) = (true, false);
        let a = refresh_answer(
            &parse(text.as_bytes()),
            interval,
            &mut we,
            &mut upd,
            &mut tries,
        );
        (a, tries.min_se)
    };
    let mut interval = Some(300);
    assert_eq!(answer(422, "", &mut interval), (RefreshAnswer::Retry, 90));
    assert_eq!(
        answer(422, "Min-SE: 300\r\n", &mut interval),
        (RefreshAnswer::Retry, 90)
    );
    assert_eq!(interval, Some(300));
    assert_eq!(
        answer(422, "Min-SE: 600\r\n", &mut interval),
        (RefreshAnswer::Again("too_small"), 600)
    );
    assert_eq!(interval, Some(600));
    assert_eq!(
        answer(422, "Min-SE: 4000000000\r\n", &mut interval),
        (RefreshAnswer::Again("too_small"), 86_400)
    );
    assert_eq!(interval, Some(86_400));
    assert_eq!(
        answer(422, "Min-SE: 4000000000\r\n", &mut interval),
        (RefreshAnswer::Retry, 86_400)
    );
    let mut interval = Some(300);
    assert_eq!(
        answer(
            200,
            "Session-Expires: 4000000000;refresher=uac\r\n",
            &mut interval
        ),
        (RefreshAnswer::Refreshed, 86_400)
    );
    assert_eq!(interval, Some(86_400));
}

/// The carrier answers our refresh re-INVITE from a new media address
/// (its SBC moved the call): the relay follows it; an answer naming an
/// address we may not send to, or without the law in use, moves nothing.
#[test]
fn a_refresh_answer_that_moves_the_carriers_media_is_followed_within_the_checks() {
    let (mut h, _) = connected_with("Session-Expires: 120\r\n");
    let answer_with = |h: &mut Harness, sdp: &str| {
        let out = h.advance(Duration::from_secs(60));
        let refresh = requests(&out, TRUNK, "INVITE")[0].clone();
        let mut r = refresh.response(200, "OK", Some("am1"));
        r.push("Contact", &format!("<sip:trunk@{TRUNK}>"));
        r.set_body(Some("application/sdp"), sdp.as_bytes().to_vec());
        h.media.clear();
        let out = h.send(TRUNK, &String::from_utf8(r.to_bytes()).unwrap());
        assert_eq!(requests(&out, TRUNK, "ACK").len(), 1, "{out:?}");
    };
    // Moved within the carrier's network: followed.
    answer_with(
        &mut h,
        &TRUNK_SDP
            .replace("192.0.2.10", "192.0.2.11")
            .replace("40000", "41000"),
    );
    assert!(
        matches!(
            h.media.as_slice(),
            [MediaCommand::Update { side: Side::A, peer, held: false, .. }]
                if peer.rtp().unwrap().addr.to_string() == "192.0.2.11:41000"
        ),
        "{:?}",
        h.media
    );
    // To a multicast address: refused, counted, the media stays.
    answer_with(
        &mut h,
        &TRUNK_SDP.replace("c=IN IP4 192.0.2.10", "c=IN IP4 224.0.0.1"),
    );
    assert!(h.media.is_empty(), "{:?}", h.media);
    // Without the law in use (A-law): refused too.
    answer_with(
        &mut h,
        &TRUNK_SDP.replace("RTP/AVP 8 0 101", "RTP/AVP 0 101"),
    );
    assert!(h.media.is_empty(), "{:?}", h.media);
    assert_eq!(h.gauge("centralino_sdp_rejected_total{reason=refresh}"), 2);
    // The same address, now holding us (sendonly) and with another
    // telephone-event type: both followed though nothing moved.
    let holding = format!(
        "{}a=sendonly\r\n",
        TRUNK_SDP
            .replace("192.0.2.10", "192.0.2.11")
            .replace("40000", "41000")
            .replace("8 0 101", "8 0 96")
            .replace("101 telephone", "96 telephone")
    );
    answer_with(&mut h, &holding);
    assert!(
        matches!(
            h.media.as_slice(),
            [MediaCommand::Update { side: Side::A, peer, held: true, .. }]
                if peer.rtp().unwrap().addr.to_string() == "192.0.2.11:41000"
                    && peer.rtp().unwrap().telephone_event == Some(96)
        ),
        "{:?}",
        h.media
    );
    // Nothing new: nothing sent to the media plane.
    answer_with(&mut h, &holding);
    assert!(h.media.is_empty(), "{:?}", h.media);
    assert_eq!(
        h.gauge("centralino_session_refreshes_total{outcome=refreshed}"),
        5
    );
}

/// Glare (RFC 3261 §14.2): the caller's re-INVITE while our refresh
/// re-INVITE is unanswered gets 491; an UPDATE does not (ours carries no
/// offer), and once ours is answered the caller's re-INVITE is taken.
#[test]
fn a_callers_reinvite_during_our_refresh_reinvite_gets_491_then_goes_through() {
    let (mut h, ok) = connected_with("Session-Expires: 120\r\n");
    let a_tag = ok.to_tag.clone().unwrap();
    let out = h.advance(Duration::from_secs(60));
    let refresh = requests(&out, TRUNK, "INVITE")[0].clone();
    let out = h.send(
        TRUNK,
        &in_dialog("INVITE", TRUNK, "am1", &a_tag, 5, TRUNK_SDP),
    );
    assert_eq!(codes(&out, TRUNK), vec![491], "{out:?}");
    let out = h.send(TRUNK, &in_dialog("UPDATE", TRUNK, "am1", &a_tag, 6, ""));
    assert_eq!(codes(&out, TRUNK), vec![200], "{out:?}");
    // An UPDATE with an offer while ours is outstanding is glare too
    // (RFC 3311 §5.2).
    let out = h.send(
        TRUNK,
        &in_dialog("UPDATE", TRUNK, "am1", &a_tag, 7, TRUNK_SDP),
    );
    assert_eq!(codes(&out, TRUNK), vec![491], "{out:?}");
    let mut r = refresh.response(200, "OK", Some("am1"));
    r.push("Contact", &format!("<sip:trunk@{TRUNK}>"));
    h.send(TRUNK, &String::from_utf8(r.to_bytes()).unwrap());
    let out = h.send(
        TRUNK,
        &in_dialog("INVITE", TRUNK, "am1", &a_tag, 8, TRUNK_SDP),
    );
    assert_eq!(codes(&out, TRUNK), vec![200], "{out:?}");
}

/// The answer to our refresh re-INVITE is taken only from the carrier
/// and only for its dialog: one from a stranger (who saw or guessed the
/// branch) is dropped unanswered; one with another To tag is ACKed, never
/// hung up, and counts as a refusal; neither moves the media, the target,
/// the interval or the refresher. The real answer retransmitted after
/// that is ACKed, never hung up.
#[test]
fn a_refresh_answer_from_a_stranger_or_another_dialog_moves_nothing() {
    let (mut h, _) = connected_with("Session-Expires: 120\r\n");
    let out = h.advance(Duration::from_secs(60));
    let refresh = requests(&out, TRUNK, "INVITE")[0].clone();
    let mut r = refresh.response(200, "OK", Some("am1"));
    r.push("Contact", "<sip:hijack@192.0.2.66:5060>");
    r.set_body(
        Some("application/sdp"),
        TRUNK_SDP.replace("192.0.2.10", "192.0.2.66").into_bytes(),
    );
    let genuine = String::from_utf8(r.to_bytes()).unwrap();
    h.media.clear();
    let out = h.send(STRANGER, &genuine);
    assert!(out.is_empty(), "{out:?}");
    assert!(h.media.is_empty(), "{:?}", h.media);
    assert_eq!(
        h.gauge("centralino_sip_rejected_total{reason=foreign_response}"),
        1
    );
    // From the carrier, but for another dialog (To tag), asking for
    // another interval and refresher: ACKed, never hung up (it carries
    // the live call's Call-ID), and nothing of ours moves.
    let forked = genuine.replace(";tag=am1", ";tag=fork9").replace(
        "Content-Type:",
        "Session-Expires: 3600;refresher=uas\r\nContent-Type:",
    );
    assert_ne!(forked, genuine);
    let out = h.send(TRUNK, &forked);
    let (acks, byes) = (requests(&out, TRUNK, "ACK"), requests(&out, TRUNK, "BYE"));
    assert_eq!((acks.len(), byes.len()), (1, 0), "{out:?}");
    assert!(acks[0].header("To").unwrap().contains("tag=fork9"));
    assert!(h.media.is_empty(), "{:?}", h.media);
    assert_eq!(
        h.gauge("centralino_sdp_rejected_total{reason=refresh_foreign_dialog}"),
        1
    );
    // The dialog's own answer then: ACKed, the call kept.
    let out = h.send(TRUNK, &genuine);
    assert_eq!(requests(&out, TRUNK, "ACK").len(), 1, "{out:?}");
    assert!(requests(&out, TRUNK, "BYE").is_empty(), "{out:?}");
    assert!(requests(&out, PHONE1, "BYE").is_empty(), "{out:?}");
    // The other dialog's answer again: its ACK again, no second BYE.
    let out = h.send(TRUNK, &forked);
    assert_eq!(requests(&out, TRUNK, "ACK").len(), 1, "{out:?}");
    assert!(requests(&out, TRUNK, "BYE").is_empty(), "{out:?}");
    // The foreign answer counted as a refusal: the refresh is tried
    // again 2 s later, to the carrier's target (not the Contact either
    // answer named), with our interval and ourselves as refresher.
    let out = h.advance(Duration::from_millis(2_100));
    let next = requests(&out, TRUNK, "INVITE");
    assert_eq!(next.len(), 1, "{out:?}");
    assert!(!next[0].request_uri().unwrap().contains("hijack"));
    assert_eq!(next[0].header("Session-Expires"), Some("120;refresher=uac"));
    assert!(requests(&out, STRANGER, "INVITE").is_empty());
}

/// A carrier refusing our refreshes (503) is asked again 2 s later, then
/// 4, then 8: not every 2 s until the session lapses. A 422 raises the
/// interval, and every refresh from then on carries its `Min-SE`
/// (RFC 4028 §7.4).
#[test]
fn refused_refreshes_back_off_and_a_422s_minimum_is_carried() {
    let (mut h, _) = connected_with("Session-Expires: 120\r\n");
    let out = h.advance(Duration::from_secs(60));
    let mut refresh = requests(&out, TRUNK, "INVITE")[0].clone();
    assert_eq!(refresh.header("Min-SE"), Some("90"));
    for wait in [2, 4, 8] {
        let r = refresh.response(503, "Service Unavailable", Some("am1"));
        h.send(TRUNK, &String::from_utf8(r.to_bytes()).unwrap());
        let out = h.advance(Duration::from_secs(wait - 1));
        assert!(requests(&out, TRUNK, "INVITE").is_empty(), "{wait}");
        let out = h.advance(Duration::from_secs(1));
        let again = requests(&out, TRUNK, "INVITE");
        assert_eq!(again.len(), 1, "again after {wait} s");
        refresh = again[0].clone();
    }
    // Glare (491) is no refusal: again within RFC 3261's random 0-2 s
    // (the carrier chose this call's Call-ID), and the next refusal
    // still waits 16 s, not 32.
    let r = refresh.response(491, "Request Pending", Some("am1"));
    h.send(TRUNK, &String::from_utf8(r.to_bytes()).unwrap());
    let out = h.advance(Duration::from_millis(2_010));
    let again = requests(&out, TRUNK, "INVITE");
    assert!(!again.is_empty(), "again within 2 s of the 491");
    refresh = again[0].clone();
    let r = refresh.response(503, "Service Unavailable", Some("am1"));
    h.send(TRUNK, &String::from_utf8(r.to_bytes()).unwrap());
    let out = h.advance(Duration::from_secs(15));
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    let out = h.advance(Duration::from_secs(1));
    let again = requests(&out, TRUNK, "INVITE");
    assert_eq!(again.len(), 1, "again after 16 s");
    refresh = again[0].clone();
    let mut r = refresh.response(422, "Session Interval Too Small", Some("am1"));
    r.push("Min-SE", "200");
    let out = h.send(TRUNK, &String::from_utf8(r.to_bytes()).unwrap());
    let again = requests(&out, TRUNK, "INVITE");
    assert_eq!(again.len(), 1, "{out:?}");
    assert_eq!(again[0].header("Min-SE"), Some("200"));
    assert_eq!(
        again[0].header("Session-Expires"),
        Some("200;refresher=uac")
    );
    // Answered: the next refresh, half the interval later, still says so.
    let mut ok = again[0].response(200, "OK", Some("am1"));
    ok.push("Session-Expires", "200;refresher=uac");
    h.send(TRUNK, &String::from_utf8(ok.to_bytes()).unwrap());
    let out = h.advance(Duration::from_secs(100));
    let next = requests(&out, TRUNK, "INVITE");
    assert_eq!(next.len(), 1, "{out:?}");
    assert_eq!(next[0].header("Min-SE"), Some("200"));
}

/// A re-INVITE is a target refresh (RFC 3261 §12.2.2): the caller's new
/// Contact is where our next in-dialog request is addressed (its
/// Request-URI; it still leaves along the caller's flow).
#[test]
fn a_callers_reinvite_with_a_new_contact_moves_the_target_of_our_next_request() {
    let (mut h, ok) = connected_with("Session-Expires: 120\r\n");
    let a_tag = ok.to_tag.clone().unwrap();
    let reinvite = in_dialog("INVITE", TRUNK, "am1", &a_tag, 5, TRUNK_SDP).replace(
        &format!("Contact: <sip:x@{TRUNK}>"),
        "Contact: <sip:moved@192.0.2.10:5090>",
    );
    assert!(reinvite.contains("sip:moved@"));
    let out = h.send(TRUNK, &reinvite);
    assert_eq!(codes(&out, TRUNK), vec![200]);
    h.send(TRUNK, &in_dialog("ACK", TRUNK, "am1", &a_tag, 5, ""));
    let out = h.advance(Duration::from_secs(60));
    let refresh = requests(&out, TRUNK, "INVITE");
    assert_eq!(refresh.len(), 1, "{} messages out", out.len());
    assert_eq!(refresh[0].request_uri(), Some("sip:moved@192.0.2.10:5090"));
}

/// The operators' time in each state is counted (the integral of
/// `centralino_agents`, to the engine's refresh), so occupancy over any
/// window is a ratio of counters in PromQL, not of sampled gauges: 30 s
/// on a call, 3 s of wrap-up, then available.
#[test]
fn operators_time_in_each_state_is_counted_for_exact_occupancy() {
    let (mut h, ok) = connected_with("");
    let a_tag = ok.to_tag.clone().unwrap();
    let seconds = |h: &mut Harness, state: &str| {
        h.gauge(&format!(
            "centralino_agent_state_seconds_total{{state={state},tenant=demo}}"
        ))
    };
    let available_before = seconds(&mut h, "available");
    h.advance(Duration::from_secs(30));
    let on_call = seconds(&mut h, "on_call");
    assert!((29..=30).contains(&on_call), "{on_call}");
    let out = h.send(TRUNK, &in_dialog("BYE", TRUNK, "am1", &a_tag, 2, ""));
    assert_eq!(codes(&out, TRUNK), vec![200]);
    h.advance(Duration::from_secs(20));
    let wrap_up = seconds(&mut h, "wrap_up");
    assert!((2..=3).contains(&wrap_up), "{wrap_up}");
    assert_eq!(seconds(&mut h, "on_call"), on_call, "no longer on a call");
    let available = seconds(&mut h, "available") - available_before;
    assert!((16..=18).contains(&available), "{available}");
    // The other operator of the configuration is logged out all along.
    let logged_out = seconds(&mut h, "logged_out");
    assert!((49..=50).contains(&logged_out), "{logged_out}");
}

/// RFC 3261 §14.1's wait after a 491: 2.1-4 s for the side that chose
/// the Call-ID, 0-2 s for the other, in 10 ms steps.
#[test]
fn a_glares_wait_is_random_within_the_rfcs_bounds() {
    for dice in (0..5_000u64).chain([u64::MAX, u64::MAX - 1]) {
        let ours = glare_wait(dice, true);
        assert!(
            ours >= Duration::from_millis(2_100) && ours <= Duration::from_secs(4),
            "{ours:?}"
        );
        let theirs = glare_wait(dice, false);
        assert!(theirs <= Duration::from_secs(2), "{theirs:?}");
        assert_eq!(ours.as_millis() % 10, 0);
    }
    assert_ne!(glare_wait(1, false), glare_wait(2, false));
    // Three 491s in a row are glare; the fourth on is a refusal: 2 s,
    // then 4 s... A 2xx starts over.
    let mut tries = RefreshTries::default();
    for _ in 0..3 {
        assert!(tries.glare_in(7, true) >= Duration::from_millis(2_100));
    }
    assert_eq!(tries.glare_in(7, true), Duration::from_secs(2));
    assert_eq!(tries.glare_in(7, true), Duration::from_secs(4));
    let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n";
    let ok = parse(ok.as_bytes());
    let (mut interval, mut we, mut upd) = (Some(90), true, false);
    refresh_answer(&ok, &mut interval, &mut we, &mut upd, &mut tries);
    assert_eq!((tries.failures, tries.glares), (0, 0));
    assert!(tries.glare_in(7, false) <= Duration::from_secs(2));
}

/// The caller's own `Min-SE` (RFC 4028 §7.4) is carried by our refreshes.
#[test]
fn our_refreshes_carry_the_callers_min_se() {
    let (mut h, _) = connected_with("Session-Expires: 300\r\nMin-SE: 240\r\n");
    let out = h.advance(Duration::from_secs(150));
    let refresh = requests(&out, TRUNK, "INVITE");
    assert_eq!(refresh.len(), 1, "{out:?}");
    assert_eq!(refresh[0].header("Min-SE"), Some("240"));
}

/// A line nobody answers has never measured a handling time: the advisor
/// counts with the queue's `expected_handle_seconds` (180 s by default),
/// so the operators it lacks show — and alert — from the first callers,
/// not after the first call an operator finishes.
#[test]
fn a_queue_nobody_ever_answered_is_staffed_from_its_expected_handling_time() {
    let mut h = Harness::new();
    assert_eq!(h.gauge("centralino_queue_agents_needed{queue=info}"), 0);
    for i in 0..20 {
        h.invite(&format!("n{i}"));
    }
    h.advance(Duration::from_secs(2));
    // 20 calls in the window's first minute, 180 s each, 80 % within 20 s.
    let needed = centralino_routing::staffing::agents_needed(20.0 / 60.0, 180.0, 20.0, 0.8)
        .expect("within bounds");
    assert!(needed >= 60, "{needed}");
    assert_eq!(
        h.gauge("centralino_queue_agents_needed{queue=info}"),
        i64::from(needed)
    );
    assert_eq!(
        h.gauge("centralino_queue_agents_short{queue=info}"),
        i64::from(needed),
        "nobody logged in: all of them missing"
    );
    // Not shown as the measured handling time.
    assert_eq!(
        h.gauge("centralino_queue_handle_time_seconds{queue=info}"),
        0
    );
}

#[test]
fn call_record_ids_grow_with_time_and_stay_unguessable() {
    let mut h = Harness::new();
    h.engine.set_wall_clock(h.now, 1_780_000_000);
    h.invite("first");
    h.advance(Duration::from_millis(3));
    h.invite("second");
    let ids = h.record_ids();
    assert_eq!(ids.len(), 2, "{:?}", h.records);
    for id in &ids {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    // The first 12 digits are the wall clock's milliseconds: the indexes
    // on the id are appended to, not written all over.
    assert_eq!(&ids[0][..12], &format!("{:012x}", 1_780_000_000_000u64));
    assert_eq!(&ids[1][..12], &format!("{:012x}", 1_780_000_000_003u64));
    assert!(ids[0] < ids[1]);
    // The rest is random: two calls in the same millisecond differ.
    h.invite("third");
    let third = h.record_ids().pop().unwrap();
    assert_eq!(&third[..12], &ids[1][..12]);
    assert_ne!(third, ids[1]);
}

#[test]
fn branches_carry_the_cookie_and_sixteen_hex_digits() {
    assert_eq!(
        &*super::send::branch(0x0123_4567_89ab_cdef),
        "z9hG4bK0123456789abcdef"
    );
    assert_eq!(&*super::send::branch(0), "z9hG4bK0000000000000000");
    assert_eq!(&*super::send::branch(u64::MAX), "z9hG4bKffffffffffffffff");
}

/// `allows` splits an `Allow` list on commas; on token lists (what RFC
/// 3261 §20.5 allows there) it answers as the quote-aware list splitter it
/// replaced did.
#[test]
fn allow_lists_are_read_as_the_list_splitter_read_them() {
    let by_split_list = |msg: &Message, method: &str| {
        msg.headers_named("Allow")
            .flat_map(centralino_sip::uri::split_list)
            .any(|m| m.trim().eq_ignore_ascii_case(method))
    };
    for allow in [
        "",
        "Allow: INVITE, ACK, CANCEL, BYE, UPDATE\r\n",
        "Allow: INVITE,UPDATE,INFO\r\n",
        "Allow: invite , update\t, info \r\n",
        "Allow: UPDATEX, XINFO, UPDAT\r\n",
        "Allow: INVITE\r\nAllow: INFO\r\n",
        "Allow: ,,UPDATE,,\r\n",
        "Allow: \r\n",
    ] {
        let Ok(Framed::Message(msg)) =
            parse_datagram(invite_with(allow).as_bytes(), &Limits::default())
        else {
            panic!("the INVITE with {allow:?} parses");
        };
        for method in ["UPDATE", "INFO", "update", "BYE", "X"] {
            assert_eq!(
                super::ingress::allows(&msg, method),
                by_split_list(&msg, method),
                "{allow:?} {method}"
            );
        }
    }
}

/// A campaign's contact is never dialled through a queue of another firm
/// (the store keeps a queue with its firm; this is the engine's own
/// backstop): failed `other_tenant`, no INVITE to anyone.
#[test]
fn a_campaign_contact_never_goes_out_through_another_firms_queue() {
    let mut h = Harness::with_outbound_trunk();
    h.register("1001", PHONE1, Algorithm::Md5);
    let run = CampaignRun {
        id: "c1".into(),
        name: "fragili".into(),
        tenant: "demo".into(),
        queue: "info".into(),
        pacer: centralino_campaigns::pacer::PacerConfig::new(
            centralino_campaigns::Mode::Progressive,
        ),
    };
    h.engine.campaign_tick(h.now, std::slice::from_ref(&run));
    h.drain();
    let mut due = campaign_due("c1", "fragili", 1, "+393331112223", false, None);
    if let Some(c) = due.campaign.as_mut() {
        c.tenant = "altra".into();
    }
    h.engine.campaign_contacts(h.now, "c1", vec![due]);
    let out = h.drain();
    assert!(requests(&out, PHONE1, "INVITE").is_empty());
    assert!(requests(&out, TRUNK, "INVITE").is_empty());
    assert!(
        matches!(
            h.contacts.last(),
            Some((c, CallbackState::Failed { outcome: CallbackOutcome::OtherTenant })) if c.contact == 1
        ),
        "{:?}",
        h.contacts
    );
}

/// An operator's events name their firm at the time (their history is
/// the firm's, and a name may change firm: TEST-MATRIX D12).
#[test]
fn operator_events_name_the_operators_firm() {
    let mut h = Harness::new();
    h.register("1001", PHONE1, Algorithm::Md5);
    let login = h.records.iter().find_map(|r| match r {
        Record::Agent {
            agent,
            tenant,
            event: "login",
            ..
        } if agent == "1001" => Some(tenant.clone()),
        _ => None,
    });
    assert_eq!(login.as_deref(), Some("demo"), "{:?}", h.records);
}

/// A reload that moves an operator to another firm says so in the queue
/// log (`firm`, naming the new firm): their time from then on is the new
/// firm's, not the old one's.
#[test]
fn a_reload_moving_an_operator_to_another_firm_writes_it_in_the_queue_log() {
    let two = format!("{CONFIG}\n[[tenants]]\nname = \"altra\"\n");
    let mut h = Harness::with(&two);
    h.register("1001", PHONE1, Algorithm::Md5);
    h.drain();
    let firm_events = |h: &Harness| -> Vec<String> {
        h.records
            .iter()
            .filter_map(|r| match r {
                Record::Agent {
                    agent,
                    tenant,
                    event: "firm",
                    ..
                } if agent == "1001" => Some(tenant.clone()),
                _ => None,
            })
            .collect()
    };
    let moved = two.replace(
        "password = \"demo1001\"\ntenant = \"demo\"\nqueues = [\"info\"]",
        "password = \"demo1001\"\ntenant = \"altra\"\nqueues = []",
    );
    assert_ne!(moved, two);
    for _ in 0..2 {
        h.engine
            .reload(h.now, &Config::from_toml(&moved).unwrap().engine())
            .unwrap();
        h.drain();
    }
    // Once: the second reload changes nothing.
    assert_eq!(firm_events(&h), ["altra"]);
}
