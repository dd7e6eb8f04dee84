//! The attacks an outside review confirmed against an earlier version,
//! replayed against the real binary: a fake carrier listens behind an
//! outbound trunk on another loopback address (127.0.0.9) and must never
//! hear a request; a stranger (127.0.0.2) must never move media, end a
//! call or keep a revoked credential working. TEST-MATRIX D1, D2, D12,
//! D16, D17, D18, D21.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Node, NodeConfig, Scratch, Sipp, desk_events, json, register, scenario};

/// A UDP listener on `ip` that keeps every datagram it receives.
struct Listener {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Listener {
    fn on(ip: &str) -> Self {
        let sock = UdpSocket::bind((ip, 0)).expect("bind listener");
        let addr = sock.local_addr().expect("addr");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::downgrade(&got);
        std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            // Ends when the test drops the listener.
            while let Some(got) = keep.upgrade() {
                if let Ok(n) = sock.recv(&mut buf) {
                    got.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        });
        Self { addr, got }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    fn texts(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect()
    }
}

/// A hand-written SIP peer on one UDP socket.
struct Peer {
    sock: UdpSocket,
    to: SocketAddr,
}

impl Peer {
    fn on(ip: &str, node: &Node) -> Self {
        let sock = UdpSocket::bind((ip, 0)).expect("bind peer");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Self {
            sock,
            to: node.sip_addr().parse().expect("node address"),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }

    fn send(&self, text: &str) {
        let wire = text.replace("\r\n", "\n").replace('\n', "\r\n");
        self.sock.send_to(wire.as_bytes(), self.to).expect("send");
    }

    /// The next response with a final or given code (provisional ones
    /// skipped unless asked for).
    fn response(&self, want_provisional: bool) -> (u16, String) {
        let mut buf = [0u8; 65_536];
        loop {
            let n = self.sock.recv(&mut buf).expect("a response from the node");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(code) = text
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
            else {
                continue;
            };
            if code >= 200 || want_provisional {
                return (code, text);
            }
        }
    }

    /// Sends a request and returns the final response's code.
    fn ask(&self, text: &str) -> u16 {
        self.send(text);
        self.response(false).0
    }
}

/// A header's value in a message.
fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_default()
}

fn tag(value: &str) -> &str {
    value
        .split(";tag=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap_or_default()
}

/// An INVITE from `from` towards `ruri`, with an SDP offer for `rtp`.
fn invite(from: SocketAddr, ruri: &str, call_id: &str, rtp: SocketAddr, extra: &str) -> String {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 0\r\n",
        ip = rtp.ip(),
        port = rtp.port()
    );
    format!(
        "INVITE {ruri} SIP/2.0\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call_id}\nFrom: <sip:+390612345678@{ip}>;tag=c{call_id}\nTo: <{ruri}>\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContact: <sip:caller@{from}>\nMax-Forwards: 70\n{extra}Content-Type: application/sdp\nContent-Length: {}\n\n{sdp}",
        sdp.len(),
        ip = from.ip(),
    )
}

/// A configuration whose trunk also dials out, to `carrier`, with a
/// callbacks token for a web form.
fn with_carrier(cfg: &NodeConfig, carrier: SocketAddr) -> impl Fn(u16, u16) -> String + '_ {
    move |sip, http| {
        let mut text = cfg.toml(sip, http).replace(
            "dids = { \"100\" = \"info\" }",
            &format!(
                "dids = {{ \"100\" = \"info\" }}\noutbound = \"{carrier}\"\ncaller_id = \"+39800111222\""
            ),
        );
        let _ = write!(
            text,
            "\n[[api.tokens]]\nname = \"web\"\ntoken = \"web-form-token-0123456789\"\nrole = \"callbacks\"\n\n[[api.tokens]]\nname = \"admin\"\ntoken = \"admin-token-0123456789\"\nrole = \"admin\"\n"
        );
        text
    }
}

const WEB: Option<&str> = Some("web-form-token-0123456789");
const ADMIN: Option<&str> = Some("admin-token-0123456789");

/// The web form asks for a callback to each of `numbers` for `info`: each
/// refused by the dial plan with `403`.
fn web_form_is_refused(node: &Node, numbers: &[&str]) {
    for number in numbers {
        let (code, body) = node.http(
            "POST",
            "/api/v1/callbacks",
            WEB,
            Some(&format!(r#"{{"queue": "info", "number": "{number}"}}"#)),
        );
        assert_eq!(code, 403, "{number}: {body}");
        assert!(body.contains("dial plan"), "{body}");
    }
}

#[test]
fn no_toll_fraud_path_reaches_the_carrier() {
    let scratch = Scratch::new("attack-fraud");
    let carrier = Listener::on("127.0.0.9");
    let cfg = NodeConfig::default();
    let node = Node::start_toml(&scratch, with_carrier(&cfg, carrier.addr));

    // D18: the web form asks for premium, special and foreign numbers.
    web_form_is_refused(
        &node,
        &[
            "+39899123456",
            "+39144123456",
            "00900123456",
            "+88234123456",
            "0039166123456",
        ],
    );
    let (code, body) = node.http("GET", "/api/v1/callbacks", WEB, None);
    assert_eq!(code, 200);
    assert_eq!(
        json(&body)["callbacks"],
        serde_json::json!([]),
        "nothing stored"
    );

    // D1: a stranger's INVITEs towards outside numbers, in every spelling,
    // one with a Route at the carrier.
    let stranger = Peer::on("127.0.0.2", &node);
    let rtp = Listener::on("127.0.0.2");
    let host = node.sip_addr();
    for (i, ruri) in [
        format!("sip:00900123456@{host}"),
        format!("sip:+88234123456@{host}"),
        format!("sip:+390612345678@{host};user=phone"),
        "tel:+88234123456".to_owned(),
        format!("sip:00900123456@{host};maddr=127.0.0.9"),
    ]
    .iter()
    .enumerate()
    {
        let code = stranger.ask(&invite(
            stranger.addr(),
            ruri,
            &format!("fraud{i}"),
            rtp.addr,
            &format!("Route: <sip:{};lr>\n", carrier.addr),
        ));
        assert_eq!(code, 403, "{ruri}");
    }
    // D2: the trunk's own address asking for a number that is no DID.
    let trunk = Peer::on("127.0.0.1", &node);
    let code = trunk.ask(&invite(
        trunk.addr(),
        &format!("sip:00900123456@{host}"),
        "relay1",
        rtp.addr,
        "",
    ));
    assert_eq!(code, 404);

    // D17: an operator's Contact names the carrier and a premium number;
    // then a call is offered to that operator.
    let contact_scenario = scratch.path("register_carrier.xml");
    std::fs::write(
        &contact_scenario,
        std::fs::read_to_string(scenario("register.xml"))
            .expect("register.xml")
            .replace(
                "Contact: <sip:[field0]@[local_ip]:[field2]>",
                &format!("Contact: <sip:00900123456@{}>", carrier.addr),
            ),
    )
    .expect("scenario");
    let csv = scratch.path("carrier-users.csv");
    std::fs::write(
        &csv,
        "SEQUENTIAL\n1001;[authentication username=1001 password=demo1001];0\n",
    )
    .expect("csv");
    let mut reg = Sipp::spawn_from(
        &scratch,
        "register-carrier",
        "127.0.0.2",
        &[
            &host,
            "-sf",
            contact_scenario.to_str().expect("utf-8"),
            "-inf",
            csv.to_str().expect("utf-8"),
            "-m",
            "1",
            "-timeout",
            "20s",
        ],
    );
    reg.expect_success(Duration::from_secs(30));
    let offers = node.metric_or_zero("centralino_agent_offers_total{outcome=\"no_answer\"}");
    let caller = Peer::on("127.0.0.1", &node);
    caller.send(&invite(
        caller.addr(),
        &format!("sip:100@{host}"),
        "hijack-contact",
        rtp.addr,
        "",
    ));
    // The offer rings the registering flow (nobody answers there) until the
    // ring timeout: by then any INVITE to the carrier would have left.
    node.wait_metric(
        "centralino_agent_offers_total{outcome=\"no_answer\"}",
        Duration::from_secs(20),
        |v| v > offers,
    );
    assert_eq!(
        carrier.count(),
        0,
        "the carrier heard: {:?}",
        carrier.texts()
    );
    assert_eq!(
        node.metric("centralino_dial_plan_refused_total{reason=\"blocked\",via=\"api\"}"),
        3.0
    );
}

/// D18 for a firm with a dial plan of its own: its `block` list adds to
/// the Italian blocks. Listing one prefix had replaced them, and the web
/// form then stored (and the node dialled) a `+39 00…` number a carrier
/// reads back as `00…` abroad, and the old premium ranges.
#[test]
fn a_firms_own_blocks_keep_the_italian_ones() {
    let scratch = Scratch::new("attack-own-blocks");
    let carrier = Listener::on("127.0.0.9");
    let cfg = NodeConfig::default();
    let base = with_carrier(&cfg, carrier.addr);
    let node = Node::start_toml(&scratch, |sip, http| {
        base(sip, http).replacen(
            "[[tenants]]\nname = \"demo\"\n",
            "[[tenants]]\nname = \"demo\"\n[tenants.dial_plan]\nallow = [\"+39\", \"+41\"]\nblock = [\"+3988\"]\n",
            1,
        )
    });
    web_form_is_refused(
        &node,
        &[
            "+390023276123456",
            "+39144123456",
            "+39899123456",
            "+39881234567",
        ],
    );
    // What the firm widened is open: a Swiss number is taken.
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        WEB,
        Some(r#"{"queue": "info", "number": "+41441234567", "not_before": 4102444800}"#),
    );
    assert_eq!(code, 201, "{body}");
    let (_, body) = node.http("GET", "/api/v1/callbacks", WEB, None);
    let stored = json(&body)["callbacks"].as_array().expect("a list").len();
    assert_eq!(stored, 1, "only the allowed number stored: {body}");
    assert_eq!(
        node.metric("centralino_dial_plan_refused_total{reason=\"blocked\",via=\"api\"}"),
        4.0
    );
    assert_eq!(
        carrier.count(),
        0,
        "the carrier heard: {:?}",
        carrier.texts()
    );
}

#[test]
fn a_stranger_in_a_live_call_moves_no_media_and_ends_nothing() {
    let scratch = Scratch::new("attack-dialog");
    let node = Node::start(&scratch, &NodeConfig::default());
    // The operator's phone echoes what it hears, so the caller hears their
    // own packets back through both anchored legs while the call lives.
    let media_port = crate::common::sipp_media_port().to_string();
    let mut phone = Sipp::spawn(
        &scratch,
        "phone",
        &[
            "-sf",
            &scenario("agent_media.xml"),
            "-m",
            "1",
            "-d",
            "0",
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port,
            "-rtp_echo",
            "-key",
            "operator_rtp",
            &media_port,
            "-key",
            "operator_ip",
            "127.0.0.1",
            "-timeout",
            "60s",
        ],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );

    let trunk = Peer::on("127.0.0.1", &node);
    let caller_rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    caller_rtp
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let host = node.sip_addr();
    trunk.send(&invite(
        trunk.addr(),
        &format!("sip:100@{host}"),
        "live1",
        caller_rtp.local_addr().expect("addr"),
        "",
    ));
    let (code, ok) = trunk.response(false);
    assert_eq!(code, 200, "{ok}");
    let node_tag = tag(header(&ok, "To")).to_owned();
    let a_port: u16 = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("our SDP answer");
    trunk.send(&format!(
        "ACK sip:centralino@{host} SIP/2.0\nVia: SIP/2.0/UDP {};branch=z9hG4bKack1\nFrom: <sip:+390612345678@127.0.0.1>;tag=clive1\nTo: <sip:100@{host}>;tag={node_tag}\nCall-ID: live1\nCSeq: 1 ACK\nContent-Length: 0\n\n",
        trunk.addr()
    ));

    // The caller talks (A-law, 20 ms), and counts what comes back.
    let heard = Arc::new(AtomicUsize::new(0));
    let talking = Arc::new(AtomicUsize::new(1));
    let talker = {
        let sock = caller_rtp.try_clone().expect("clone");
        let (heard, talking) = (heard.clone(), talking.clone());
        let to: SocketAddr = format!("127.0.0.1:{a_port}").parse().expect("addr");
        std::thread::spawn(move || {
            let mut seq: u16 = 0;
            let mut buf = [0u8; 2048];
            while talking.load(Ordering::Relaxed) == 1 {
                let mut pkt = vec![0x80, 8];
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                pkt.extend_from_slice(&[0xd5; 160]);
                let _ = sock.send_to(&pkt, to);
                seq = seq.wrapping_add(1);
                let until = Instant::now() + Duration::from_millis(20);
                while Instant::now() < until {
                    sock.set_read_timeout(Some(
                        until
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(1)),
                    ))
                    .ok();
                    if sock.recv(&mut buf).is_ok() {
                        heard.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let wait_heard = |more: usize| {
        let target = heard.load(Ordering::Relaxed) + more;
        let start = Instant::now();
        while heard.load(Ordering::Relaxed) < target {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the caller stopped hearing the call ({} packets)",
                heard.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_heard(25);

    // D16: with the live call's Call-ID and both tags (sniffed), from
    // 127.0.0.2: a re-INVITE and an UPDATE moving the media to
    // 127.0.0.9, INFO digits, a BYE.
    let third = Listener::on("127.0.0.9");
    let stranger = Peer::on("127.0.0.2", &node);
    let sdp = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\nm=audio {} RTP/AVP 8\r\n",
        third.addr.port()
    );
    for (cseq, method, ct, body) in [
        (10, "INVITE", "application/sdp", sdp.as_str()),
        (11, "UPDATE", "application/sdp", sdp.as_str()),
        (
            12,
            "INFO",
            "application/dtmf-relay",
            "Signal=1\r\nDuration=160\r\n",
        ),
        (13, "BYE", "", ""),
    ] {
        let ct = if ct.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {ct}\n")
        };
        let code = stranger.ask(&format!(
            "{method} sip:centralino@{host} SIP/2.0\nVia: SIP/2.0/UDP {};branch=z9hG4bKs{cseq}\nFrom: <sip:+390612345678@127.0.0.1>;tag=clive1\nTo: <sip:100@{host}>;tag={node_tag}\nCall-ID: live1\nCSeq: {cseq} {method}\nContact: <sip:x@127.0.0.9>\n{ct}Content-Length: {}\n\n{body}",
            stranger.addr(),
            body.len()
        ));
        assert_eq!(code, 481, "{method} from a stranger");
    }
    // The call goes on: the caller keeps hearing it (50 packets, a
    // second), and not one packet went to the third address.
    wait_heard(50);
    assert_eq!(third.count(), 0, "media moved to a third address");
    assert_eq!(
        node.metric("centralino_sip_rejected_total{reason=\"foreign_dialog\"}"),
        4.0
    );
    assert_eq!(node.metric("centralino_calls_active"), 1.0);

    // The real caller hangs up: both legs end.
    let code = trunk.ask(&format!(
        "BYE sip:centralino@{host} SIP/2.0\nVia: SIP/2.0/UDP {};branch=z9hG4bKbye1\nFrom: <sip:+390612345678@127.0.0.1>;tag=clive1\nTo: <sip:100@{host}>;tag={node_tag}\nCall-ID: live1\nCSeq: 2 BYE\nContent-Length: 0\n\n",
        trunk.addr()
    ));
    assert_eq!(code, 200);
    talking.store(0, Ordering::Relaxed);
    talker.join().expect("talker");
    phone.expect_success(Duration::from_secs(20));
}

/// D21: what a reload says it applied is applied at once, and a key that
/// needs a restart refuses the whole reload, named.
#[test]
fn a_reload_revokes_tokens_and_passwords_at_once_or_refuses_naming_the_key() {
    let scratch = Scratch::new("attack-reload");
    let carrier = Listener::on("127.0.0.9");
    let cfg = NodeConfig::default();
    let node = Node::start_toml(&scratch, with_carrier(&cfg, carrier.addr));
    let login = |password: &str| {
        node.http(
            "POST",
            "/api/v1/login",
            None,
            Some(&format!(
                r#"{{"username": "1002", "password": "{password}"}}"#
            )),
        )
        .0
    };
    assert_eq!(login("demo1002"), 200);
    assert_eq!(node.http("GET", "/api/v1/callbacks", WEB, None).0, 200);
    // A desk session of 1002, and its desk's WebSocket open.
    let (code, body) = node.http(
        "POST",
        "/api/v1/login",
        None,
        Some(r#"{"username": "1002", "password": "demo1002"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let session = json(&body)["token"].as_str().expect("token").to_owned();
    let desk = desk_events(&node, "1002", &session);
    assert_eq!(
        desk.recv_timeout(Duration::from_secs(5))
            .expect("first event")["event"],
        "idle"
    );

    let file = scratch.path("centralino.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    // The web form's token removed, operator 1002's password changed.
    let revoked = text
        .replace(
            "[[api.tokens]]\nname = \"web\"\ntoken = \"web-form-token-0123456789\"\nrole = \"callbacks\"\n",
            "",
        )
        .replace("password = \"demo1002\"", "password = \"nuova-1002\"");
    assert_ne!(revoked, text);

    // First together with a key that needs a restart: nothing applies.
    std::fs::write(
        &file,
        revoked.replace("[sip]\n", "[media]\nport_min = 30000\n\n[sip]\n"),
    )
    .expect("write");
    let (code, body) = node.http("POST", "/api/v1/config/reload", ADMIN, None);
    assert_eq!(code, 409, "{body}");
    let v = json(&body);
    assert_eq!(v["applied"], false);
    assert_eq!(v["keys"], serde_json::json!(["media.port_min"]));
    assert_eq!(node.http("GET", "/api/v1/callbacks", WEB, None).0, 200);
    assert_eq!(login("demo1002"), 200, "nothing of it applied");

    // Then alone: applied, key by key, at once.
    std::fs::write(&file, &revoked).expect("write");
    let (code, body) = node.http("POST", "/api/v1/config/reload", ADMIN, None);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["applied"], true);
    assert_eq!(
        v["changed"],
        serde_json::json!(["agents[1002].password", "api.tokens[web]"])
    );
    assert_eq!(node.http("GET", "/api/v1/callbacks", WEB, None).0, 401);
    assert_eq!(login("demo1002"), 401);
    assert_eq!(login("nuova-1002"), 200);
    // Sessions issued with the old password end at once (an outside
    // review found they lasted their 12 hours), and so does the desk
    // WebSocket opened with one (it was checked only at the upgrade).
    assert_eq!(
        node.http("GET", "/api/v1/agents/1002/call", Some(&session), None)
            .0,
        401
    );
    let closed = loop {
        match desk.recv_timeout(Duration::from_secs(5)) {
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break false,
        }
    };
    assert!(closed, "the desk socket of a revoked session stays open");
    // The phone's REGISTER with the old password is refused, with the new
    // one accepted.
    let csv = scratch.path("old.csv");
    std::fs::write(
        &csv,
        "SEQUENTIAL\n1002;[authentication username=1002 password=demo1002];5999\n",
    )
    .expect("csv");
    let mut old = Sipp::spawn(
        &scratch,
        "register-old",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("register_wrong.xml"),
            "-inf",
            csv.to_str().expect("utf-8"),
            "-m",
            "1",
            "-timeout",
            "20s",
        ],
    );
    old.expect_success(Duration::from_secs(30));
    register(&scratch, &node, &[1002], 5999, |_| "nuova-1002".into());

    // SIGHUP says the same: a restart key is logged by name.
    let moved = revoked.replace(
        &format!("listen = \"127.0.0.1:{}\"", node.http_port),
        "listen = \"127.0.0.1:1\"",
    );
    assert_ne!(moved, revoked);
    std::fs::write(&file, moved).expect("write");
    node.hangup_signal();
    node.wait_log(
        "these keys need a restart: http.listen",
        Duration::from_secs(5),
    );
    assert_eq!(carrier.count(), 0);
}

/// D12: a web form's token of one firm neither sees nor touches another
/// firm's callbacks (their ids act as if they did not exist).
#[test]
fn a_tenant_s_callbacks_token_sees_and_touches_its_own_callbacks_only() {
    let scratch = Scratch::new("attack-tenant");
    let node = Node::start_toml(&scratch, |sip, http| {
        format!(
            r#"[sip]
listen = ["127.0.0.1:{sip}"]
[http]
listen = "127.0.0.1:{http}"
[[api.tokens]]
name = "admin"
token = "admin-token-0123456789"
role = "admin"
[[api.tokens]]
name = "asl-form"
token = "asl-form-token-0123456789"
role = "callbacks"
tenant = "asl"
[[tenants]]
name = "asl"
[[tenants]]
name = "regione"
[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
dids = {{ "100" = "vaccini" }}
[[queues]]
name = "vaccini"
tenant = "asl"
[[queues]]
name = "psicologi"
tenant = "regione"
"#
        )
    });
    let asl = Some("asl-form-token-0123456789");
    let create = |token, queue: &str, number: &str| {
        node.http(
            "POST",
            "/api/v1/callbacks",
            token,
            Some(&format!(r#"{{"queue": "{queue}", "number": "{number}"}}"#)),
        )
    };
    let (code, body) = create(ADMIN, "psicologi", "+393331234567");
    assert_eq!(code, 201, "{body}");
    let theirs = json(&body)["id"].as_str().expect("id").to_owned();
    let (code, body) = create(asl, "vaccini", "+393331234568");
    assert_eq!(code, 201, "{body}");
    let ours = json(&body)["id"].as_str().expect("id").to_owned();
    // Another firm's queue is unknown to this token.
    let (code, body) = create(asl, "psicologi", "+393331234569");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown queue"), "{body}");
    // The list holds this firm's callbacks only.
    let (_, body) = node.http("GET", "/api/v1/callbacks", asl, None);
    let ids: Vec<String> = json(&body)["callbacks"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, std::slice::from_ref(&ours));
    // Another firm's id: 404 to read, edit and cancel; nothing changes.
    let path = format!("/api/v1/callbacks/{theirs}");
    assert_eq!(node.http("GET", &path, asl, None).0, 404);
    assert_eq!(
        node.http("PATCH", &path, asl, Some(r#"{"priority": 50}"#))
            .0,
        404
    );
    assert_eq!(node.http("DELETE", &path, asl, None).0, 404);
    let (code, body) = node.http("GET", &path, ADMIN, None);
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(
        (v["status"].as_str(), v["priority"].as_i64()),
        (Some("pending"), Some(0))
    );
    // Its own: all of it works.
    let own = format!("/api/v1/callbacks/{ours}");
    assert_eq!(node.http("GET", &own, asl, None).0, 200);
    assert_eq!(node.http("DELETE", &own, asl, None).0, 200);
}
