//! A supervisor listens in from the wallboard (Debian's Chromium, headless,
//! its fake microphone), then whispers to the operator, then barges in. The
//! caller and the operator are the test's own RTP sockets behind SIPp's
//! signalling, so what each hears is measured exactly: listening, the
//! supervisor's browser receives the caller's speech (SIPp's
//! `g711a.pcap`) as audio energy; whispering, the operator hears the
//! supervisor's tone and the caller hears nothing of it; barging, the
//! caller hears it too. Nobody else may join: another firm's supervisor, an
//! admin, a second supervisor of the same firm (TEST-MATRIX D).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use centralino_media::g711::Law;
use centralino_media::rtp::{self, Header};

use crate::browser::Browser;
use crate::common::{Node, Scratch, Sipp, pcap_rtp, register, scenario, trunk_call};

const SIPP_SHARE: &str = "/usr/share/sip-tester";
const SUPERVISOR: &str = "monitor-supervisor-token-0123456789";
const COLLEAGUE: &str = "monitor-colleague-token-0123456789";
const OTHER_FIRM: &str = "monitor-other-firm-token-0123456789";
const ADMIN: &str = "monitor-admin-token-0123456789";

fn config(sip: u16, http: u16) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[[api.tokens]]
name = "ops"
token = "{ADMIN}"
role = "admin"

[[api.tokens]]
name = "sala-asl"
token = "{SUPERVISOR}"
role = "supervisor"
tenant = "asl"

[[api.tokens]]
name = "sala-asl-2"
token = "{COLLEAGUE}"
role = "supervisor"
tenant = "asl"

[[api.tokens]]
name = "sala-altra"
token = "{OTHER_FIRM}"
role = "supervisor"
tenant = "altra"

[[tenants]]
name = "asl"
supervisor_phones = ["2001"]

[[tenants]]
name = "altra"

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

[[agents]]
username = "2001"
password = "demo2001"
tenant = "asl"
queues = ["info"]
"#
    )
}

/// Frames of sound, not silence, in a payload of `law`.
fn loud(law: Law, payload: &[u8]) -> bool {
    let sum: f64 = payload
        .iter()
        .map(|&b| f64::from(law.decode(b)).powi(2))
        .sum();
    (sum / payload.len().max(1) as f64).sqrt() > 300.0
}

/// The caller's and the operator's RTP endpoints (the test's sockets).
struct Ends {
    caller: UdpSocket,
    operator: UdpSocket,
    /// The node's caller port, learnt from its first packet to the caller.
    node_caller: Option<SocketAddr>,
    /// The node's operator port, from its offer to the operator's phone.
    node_operator: SocketAddr,
    seq: u16,
    speech: Vec<Vec<u8>>,
    /// A supervisor's phone (the test's socket), once it dialled in: the
    /// node's port for it and the payload type it sends, learnt from its
    /// first packet; the phone speaks a loud tone.
    supervisor: Option<(UdpSocket, Option<(SocketAddr, u8)>)>,
}

/// What each end heard during one [`Ends::talk`].
#[derive(Debug, Default)]
struct Heard {
    caller_packets: usize,
    caller_loud: usize,
    operator_packets: usize,
    operator_loud: usize,
    supervisor_packets: usize,
    supervisor_loud: usize,
}

impl Ends {
    /// Both ends send a frame every 20 ms for `dur` (the caller its speech
    /// when `speaks`, else silence; the operator silence) and count what
    /// they hear; stops early once `enough` holds.
    fn talk(&mut self, dur: Duration, speaks: bool, enough: impl Fn(&Heard) -> bool) -> Heard {
        let mut heard = Heard::default();
        let (end, mut next) = (Instant::now() + dur, Instant::now());
        let mut buf = [0u8; 2048];
        while Instant::now() < end && !enough(&heard) {
            while let Ok((n, from)) = self.caller.recv_from(&mut buf) {
                self.node_caller.get_or_insert(from);
                if let Ok(p) = rtp::parse(&buf[..n]) {
                    heard.caller_packets += 1;
                    heard.caller_loud += usize::from(loud(Law::Alaw, p.payload));
                }
            }
            while let Ok((n, _)) = self.operator.recv_from(&mut buf) {
                if let Ok(p) = rtp::parse(&buf[..n]) {
                    heard.operator_packets += 1;
                    heard.operator_loud += usize::from(loud(Law::Ulaw, p.payload));
                }
            }
            if let Some((sock, node)) = self.supervisor.as_mut() {
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if let Ok(p) = rtp::parse(&buf[..n]) {
                        let pt = p.header.payload_type;
                        node.get_or_insert((from, pt));
                        let law = if pt == 8 { Law::Alaw } else { Law::Ulaw };
                        heard.supervisor_packets += 1;
                        heard.supervisor_loud += usize::from(loud(law, p.payload));
                    }
                }
            }
            if Instant::now() >= next {
                next += Duration::from_millis(20);
                let seq = self.seq;
                self.seq = seq.wrapping_add(1);
                let frame = |pt: u8, ssrc: u32, payload: &[u8]| {
                    let h = Header {
                        marker: false,
                        payload_type: pt,
                        seq,
                        timestamp: u32::from(seq) * 160,
                        ssrc,
                    };
                    let mut out = vec![0u8; 12 + payload.len()];
                    rtp::write(&h, payload, &mut out).expect("fits");
                    out
                };
                let _ = self
                    .operator
                    .send_to(&frame(0, 0x0BE7, &[0xFF; 160]), self.node_operator);
                if let Some((sock, Some((to, pt)))) = self.supervisor.as_ref() {
                    let law = if *pt == 8 { Law::Alaw } else { Law::Ulaw };
                    // 400 Hz at a third of full scale.
                    let tone: Vec<u8> = (0..160)
                        .map(|i| {
                            let x = f64::from(i) * 2.0 * std::f64::consts::PI * 400.0 / 8000.0;
                            law.encode((x.sin() * 10_000.0) as i16)
                        })
                        .collect();
                    let _ = sock.send_to(&frame(*pt, 0x5005, &tone), *to);
                }
                if let Some(to) = self.node_caller {
                    let speech = &self.speech[usize::from(seq) % self.speech.len()];
                    let silence = [0xD5; 160];
                    let payload: &[u8] = if speaks { speech } else { &silence };
                    let _ = self.caller.send_to(&frame(8, 0xCA11E4, payload), to);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        heard
    }
}

/// The supervisor's browser stats: (packets received, audio energy).
fn monitor_stats(b: &mut Browser) -> (f64, f64) {
    let v = b.eval(
        "(async () => { const pc = window.centralinoMonitor && window.centralinoMonitor.pc; \
         if (!pc) return [0, 0]; let r = [0, 0]; \
         (await pc.getStats()).forEach(s => { \
           if (s.type === 'inbound-rtp' && s.kind === 'audio') { r[0] = s.packetsReceived || 0; r[1] = s.totalAudioEnergy || 0; } }); \
         return r; })()",
    );
    (v[0].as_f64().unwrap_or(0.0), v[1].as_f64().unwrap_or(0.0))
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("rtp socket");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

/// Operator 1001 on a SIPp phone whose media is the test's socket, in a
/// carrier's call (SIPp, the caller's media the test's socket too, hanging
/// up after `talk_ms`), bridged: (phone, trunk, both ends). `before_call`
/// runs once the operator is available, before the call comes.
fn talking(
    scratch: &Scratch,
    node: &Node,
    talk_ms: &str,
    before_call: impl FnOnce(),
) -> (Sipp, Sipp, Ends) {
    let (caller, operator) = (udp(), udp());
    let op_port = operator.local_addr().expect("addr").port().to_string();
    let phone = Sipp::spawn(
        scratch,
        "phone",
        &[
            "-sf",
            &scenario("agent_media.xml"),
            "-d",
            "0",
            "-m",
            "1",
            "-timeout",
            "90s",
            "-key",
            "operator_rtp",
            &op_port,
            "-key",
            "operator_ip",
            "127.0.0.1",
            "-trace_msg",
        ],
    );
    register(scratch, node, &[1001], phone.port, |u| format!("demo{u}"));
    let series = "centralino_queue_agents{queue=\"info\",state=\"available\"}";
    node.wait_metric(series, Duration::from_secs(5), |v| v == 1.0);
    before_call();

    let trunk = trunk_call(scratch, node, "trunk", "trunk_media.xml", &caller, talk_ms);
    // The node's offer to the operator names its operator port.
    let deadline = Instant::now() + Duration::from_secs(10);
    let node_operator = loop {
        let log = phone.messages();
        if let Some(port) = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))
            .and_then(|rest| rest.split(' ').next()?.parse::<u16>().ok())
        {
            break SocketAddr::from(([127, 0, 0, 1], port));
        }
        assert!(
            Instant::now() < deadline,
            "no offer to the operator:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let speech: Vec<Vec<u8>> = pcap_rtp(&format!("{SIPP_SHARE}/g711a.pcap"))
        .iter()
        .map(|p| rtp::parse(p).expect("rtp").payload.to_vec())
        .collect();
    let mut ends = Ends {
        caller,
        operator,
        node_caller: None,
        node_operator,
        seq: 1,
        speech,
        supervisor: None,
    };
    // The operator's silence reaches the caller: the call is bridged.
    let h = ends.talk(Duration::from_secs(10), true, |h| h.caller_packets >= 5);
    assert!(h.caller_packets >= 5, "bridged: {h:?}");

    (phone, trunk, ends)
}

#[test]
fn a_supervisor_listens_whispers_and_barges_in_from_the_wallboard_and_nobody_else_may() {
    let scratch = Scratch::new("monitor");
    let node = Node::start_toml(&scratch, config);
    // Nobody talks yet: nothing to join.
    let join = |token: &str, body: &str| {
        node.http(
            "POST",
            "/api/v1/agents/1001/monitor",
            Some(token),
            Some(body),
        )
        .0
    };
    let (mut phone, mut trunk, mut ends) = talking(&scratch, &node, "30000", || {
        assert_eq!(join(SUPERVISOR, r#"{"mode": "listen", "sdp": "v=0"}"#), 409);
    });

    // The supervisor opens the wallboard and listens, by keyboard.
    let mut b = Browser::start(&scratch);
    b.open(&format!("http://127.0.0.1:{}/wallboard", node.http_port));
    b.wait_for("document.activeElement.id === 'token'", "the token field");
    b.type_text(SUPERVISOR);
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('listen-1001') !== null",
        "the listen button of the talking operator",
    );
    b.tab_to("listen-1001");
    b.key("Enter", false);
    b.wait_for(
        "window.centralinoMonitor.pc && window.centralinoMonitor.pc.connectionState === 'connected'",
        "the supervisor's media connected",
    );
    assert_eq!(b.focused(), "mode-listen");
    let in_use = "centralino_rtp_ports{state=\"in_use\"}";
    assert_eq!(
        node.metric(in_use),
        3.0,
        "the call's two pairs and the supervisor's"
    );
    // The caller speaks; the supervisor hears it.
    let mut heard = (0.0, 0.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        ends.talk(Duration::from_millis(500), true, |_| false);
        heard = monitor_stats(&mut b);
        if heard.0 > 50.0 && heard.1 > 0.0 {
            break;
        }
    }
    assert!(
        heard.0 > 50.0 && heard.1 > 0.0,
        "the caller's speech reaches the supervisor (packets, energy): {heard:?}"
    );
    eprintln!(
        "supervisor listening: {} packets, audio energy {:.3}",
        heard.0, heard.1
    );
    // Listening, the supervisor's voice reaches nobody, even with the
    // page's microphone forced on (the node drops it, not the page).
    b.eval(
        "window.centralinoMonitor.stream.getAudioTracks().forEach(t => { t.enabled = true; }); true",
    );
    let h = ends.talk(Duration::from_secs(3), false, |_| false);
    assert_eq!(
        (h.caller_loud, h.operator_loud),
        (0, 0),
        "listening is silent: {h:?}"
    );

    // Nobody else joins, or takes over the supervisor's place.
    let offer = r#"{"mode": "listen", "sdp": "v=0"}"#;
    assert_eq!(join(OTHER_FIRM, offer), 403, "another firm's supervisor");
    assert_eq!(
        join(ADMIN, offer),
        403,
        "an admin configures, never listens"
    );
    assert_eq!(join(COLLEAGUE, offer), 409, "one supervisor per call");
    let patch = |token: &str, body: &str| {
        node.http(
            "PATCH",
            "/api/v1/agents/1001/monitor",
            Some(token),
            Some(body),
        )
        .0
    };
    assert_eq!(patch(COLLEAGUE, r#"{"mode": "barge"}"#), 409, "not theirs");
    assert_eq!(patch(SUPERVISOR, r#"{"mode": "shout"}"#), 400);
    assert_eq!(
        node.http(
            "DELETE",
            "/api/v1/agents/1001/monitor",
            Some(COLLEAGUE),
            None
        )
        .0,
        409
    );

    // Whispering: the operator hears the supervisor's tone, the caller
    // does not.
    b.tab_to("mode-whisper");
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('mode-whisper').getAttribute('aria-pressed') === 'true'",
        "whispering",
    );
    let h = ends.talk(Duration::from_secs(8), false, |h| h.operator_loud >= 3);
    assert!(
        h.operator_loud >= 3,
        "the operator hears the whisper: {h:?}"
    );
    assert!(
        h.caller_packets >= 10,
        "the caller still hears the operator's side: {h:?}"
    );
    assert_eq!(
        h.caller_loud, 0,
        "the caller hears nothing of the whisper: {h:?}"
    );
    let found = b.accessibility_violations();
    assert!(found.is_empty(), "wallboard while listening: {found:?}");
    b.screenshot(&scratch, "wallboard-monitor.png");

    // Barging: the caller hears the supervisor too.
    b.tab_to("mode-barge");
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('mode-barge').getAttribute('aria-pressed') === 'true'",
        "barging",
    );
    let h = ends.talk(Duration::from_secs(8), false, |h| {
        h.caller_loud >= 3 && h.operator_loud >= 3
    });
    assert!(
        h.caller_loud >= 3 && h.operator_loud >= 3,
        "both hear the supervisor: {h:?}"
    );

    // The supervisor leaves; the caller and the operator hear them no
    // more, and the place is free.
    b.tab_to("monitor-end");
    b.key("Enter", false);
    b.wait_for(
        "window.centralinoMonitor.pc === null && window.centralinoMonitor.ended === 'left'",
        "the supervisor left",
    );
    ends.talk(Duration::from_millis(300), false, |_| false);
    let h = ends.talk(Duration::from_secs(2), false, |_| false);
    assert_eq!((h.caller_loud, h.operator_loud), (0, 0), "gone: {h:?}");
    assert_eq!(patch(SUPERVISOR, r#"{"mode": "listen"}"#), 409);
    assert_eq!(
        node.metric(in_use),
        2.0,
        "the supervisor's port is given back"
    );
    for mode in ["listen", "whisper", "barge"] {
        assert_eq!(
            node.metric(&format!("centralino_monitors_total{{mode=\"{mode}\"}}")),
            1.0,
            "{mode}"
        );
    }
    // Each join, change of mode and leave is audited under the
    // supervisor's name, against the operator (the store's group commit
    // has them within a moment); the refused PATCH after leaving too.
    let store = centralino_store::Store::open(&scratch.path("data").join("centralino.db"))
        .expect("the node's store");
    let start = Instant::now();
    loop {
        let tail = store.audit_tail(200).expect("audit");
        let by = |action: &str, status: u16| {
            tail.iter()
                .filter(|e| {
                    e.actor == "sala-asl"
                        && e.action == action
                        && e.target == "1001"
                        && e.status == status
                })
                .count()
        };
        let seen = (
            by("agent_monitor", 200),
            by("agent_monitor_mode", 200),
            by("agent_monitor_end", 200),
            by("agent_monitor_mode", 409),
        );
        if seen.0 >= 1 && seen.1 >= 2 && seen.2 >= 1 && seen.3 >= 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "audit of the monitoring {seen:?}: {tail:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Listening again until the caller hangs up: the page says the
    // conversation ended, and every port is back in the pool.
    b.tab_to("listen-1001");
    b.key("Enter", false);
    b.wait_for(
        "window.centralinoMonitor.pc && window.centralinoMonitor.pc.connectionState === 'connected'",
        "listening again",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while trunk.try_wait().is_none() && Instant::now() < deadline {
        ends.talk(Duration::from_millis(500), true, |_| false);
    }
    for (name, sipp) in [("trunk", &mut trunk), ("phone", &mut phone)] {
        let st = sipp.wait(Duration::from_secs(30));
        assert!(st.success(), "{name} SIPp failed:\n{}", sipp.report());
    }
    b.wait_for(
        "window.centralinoMonitor.ended === 'ended' && document.getElementById('monitor').hidden",
        "the page says the conversation ended",
    );
    node.wait_metric(in_use, Duration::from_secs(5), |v| v == 0.0);
}

/// A supervisor whose browser vanishes mid-listen (its process killed: a
/// closed laptop, a lost network) is gone once its media stops: the node
/// gives the port back and the place is free for a colleague, while the
/// call goes on.
#[test]
fn a_supervisor_whose_browser_vanishes_frees_the_place() {
    let scratch = Scratch::new("monitor-vanish");
    let node = Node::start_toml(&scratch, config);
    let join = |token: &str| {
        node.http(
            "POST",
            "/api/v1/agents/1001/monitor",
            Some(token),
            Some(r#"{"mode": "listen", "sdp": "v=0"}"#),
        )
        .0
    };
    let (_phone, _trunk, mut ends) = talking(&scratch, &node, "50000", || {});
    let mut b = Browser::start(&scratch);
    b.open(&format!("http://127.0.0.1:{}/wallboard", node.http_port));
    b.wait_for("document.activeElement.id === 'token'", "the token field");
    b.type_text(SUPERVISOR);
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('listen-1001') !== null",
        "the listen button",
    );
    b.tab_to("listen-1001");
    b.key("Enter", false);
    b.wait_for(
        "window.centralinoMonitor.pc && window.centralinoMonitor.pc.connectionState === 'connected'",
        "the supervisor listening",
    );
    let in_use = "centralino_rtp_ports{state=\"in_use\"}";
    assert_eq!(node.metric(in_use), 3.0);
    assert_eq!(join(COLLEAGUE), 409, "taken while it listens");
    drop(b);
    // The caller and the operator go on talking meanwhile.
    let deadline = Instant::now() + Duration::from_secs(40);
    while node.metric(in_use) != 2.0 {
        assert!(
            Instant::now() < deadline,
            "the vanished supervisor's port is never given back"
        );
        ends.talk(Duration::from_millis(500), true, |_| false);
    }
    let code = join(COLLEAGUE);
    assert!(
        code != 409 && (400..500).contains(&code),
        "the place is free (only the test's empty offer is refused): {code}"
    );
    let h = ends.talk(Duration::from_secs(2), true, |h| h.caller_packets >= 5);
    assert!(h.caller_packets >= 5, "the call goes on: {h:?}");
}

/// From a SIP phone: the supervisor's account (its firm's
/// `supervisor_phones`) dials `*9` + operator, answers the digest
/// challenge, and barges in: it hears the caller's speech, and both the
/// caller and the operator hear its tone; its BYE ends it.
#[test]
fn a_supervisor_barges_in_from_a_sip_phone_by_feature_code() {
    let scratch = Scratch::new("monitor-phone");
    let node = Node::start_toml(&scratch, config);
    let (mut phone, mut trunk, mut ends) = talking(&scratch, &node, "20000", || {});
    let sup = udp();
    let sup_port = sup.local_addr().expect("addr").port().to_string();
    ends.supervisor = Some((sup, None));
    let mut supervisor = Sipp::spawn(
        &scratch,
        "supervisor",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("supervisor_phone.xml"),
            "-key",
            "code",
            "*91001",
            "-key",
            "sup_rtp",
            &sup_port,
            // SIPp digests "sip:HOST:PORT" unless told the Request-URI
            // (RFC 7616 §3.4.6: the node checks that `uri` is it).
            "-auth_uri",
            &format!("*91001@{}", node.sip_addr()),
            "-au",
            "2001",
            "-ap",
            "demo2001",
            "-d",
            "8000",
            "-m",
            "1",
            "-timeout",
            "60s",
            "-trace_msg",
        ],
    );
    let h = ends.talk(Duration::from_secs(8), true, |h| {
        h.supervisor_loud >= 5 && h.caller_loud >= 5 && h.operator_loud >= 5
    });
    assert!(
        h.supervisor_loud >= 5,
        "the supervisor's phone hears the caller: {h:?}\n{}\n{}",
        supervisor.messages(),
        node.logs()
    );
    assert!(
        h.caller_loud >= 5 && h.operator_loud >= 5,
        "both hear the supervisor's phone: {h:?}"
    );
    supervisor.expect_success(Duration::from_secs(30));
    assert_eq!(
        node.metric("centralino_monitors_total{mode=\"barge\"}"),
        1.0
    );
    // Gone: nobody hears the tone any more (the phone's socket keeps
    // sending to the port it had).
    ends.talk(Duration::from_millis(300), false, |_| false);
    let h = ends.talk(Duration::from_secs(2), false, |_| false);
    assert_eq!((h.caller_loud, h.operator_loud), (0, 0), "{h:?}");
    for (name, sipp) in [("trunk", &mut trunk), ("phone", &mut phone)] {
        let st = sipp.wait(Duration::from_secs(40));
        assert!(st.success(), "{name} SIPp failed:\n{}", sipp.report());
    }
}
