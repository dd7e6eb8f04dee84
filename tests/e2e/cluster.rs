//! The national network over a real `nats-server` (Debian's): two nodes
//! see each other and one national queue; with NATS down each keeps
//! taking and connecting its own calls; with NATS back the picture
//! returns; a node killed is marked down by the other within a few
//! heartbeats.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Node, NodeConfig, Scratch, Sipp, free_port, json, one_answering_phone, register, scenario,
    trunk_to,
};

const ADMIN: &str = "cluster-admin-token";

/// A `nats-server` on 127.0.0.1:`port`, stopped (by its PID) when dropped.
pub(crate) struct Nats(Child);

impl Nats {
    pub(crate) fn start(scratch: &Scratch, port: u16) -> Self {
        Self::start_args(scratch, port, &[])
    }

    /// One NATS user per node, each publishing only its own summaries
    /// and answers (the README's production layout).
    fn start_per_node(scratch: &Scratch, port: u16, nodes: &[&str]) -> Self {
        Self::start_per_node_with(scratch, port, nodes, false)
    }

    /// [`Self::start_per_node`]; with `jetstream`, JetStream on and each
    /// node also allowed the work stream's subjects and API (README's list).
    pub(crate) fn start_per_node_with(
        scratch: &Scratch,
        port: u16,
        nodes: &[&str],
        jetstream: bool,
    ) -> Self {
        let work = if jetstream {
            r#", "centralino.v1.work.cb.*", "centralino.v1.work.ct.*",
    "$JS.API.STREAM.INFO.CENTRALINO_WORK",
    "$JS.API.STREAM.CREATE.CENTRALINO_WORK", "$JS.API.STREAM.UPDATE.CENTRALINO_WORK",
    "$JS.API.STREAM.MSG.GET.CENTRALINO_WORK", "$JS.API.STREAM.PURGE.CENTRALINO_WORK",
    "$JS.API.CONSUMER.CREATE.CENTRALINO_WORK", "$JS.API.CONSUMER.DELETE.CENTRALINO_WORK.*",
    "$JS.API.CONSUMER.MSG.NEXT.CENTRALINO_WORK.*""#
        } else {
            ""
        };
        let users: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    r#"{{ user: "{n}", password: "pw-{n}", permissions: {{
  publish: ["centralino.v1.summary.{n}", "centralino.v1.offer.*", "centralino.v1.release.*"{work}],
  subscribe: ["centralino.v1.summary.*", "centralino.v1.offer.{n}", "centralino.v1.release.{n}", "_INBOX_{n}.>"],
  allow_responses: true }} }}"#
                )
            })
            .collect();
        let conf = scratch.path("nats.conf");
        let store = scratch.path("jetstream");
        let js = if jetstream {
            format!("jetstream {{ store_dir: {:?} }}\n", store.to_str().unwrap())
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "{js}authorization {{ users = [\n{}\n] }}\n",
                users.join(",\n")
            ),
        )
        .unwrap();
        Self::start_args(scratch, port, &["-c", conf.to_str().unwrap()])
    }

    pub(crate) fn start_args(scratch: &Scratch, port: u16, extra: &[&str]) -> Self {
        // Debian installs it in /usr/sbin, not always on a user's PATH.
        let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.path("nats.log")).unwrap())
            .spawn()
            .expect("nats-server (Debian's nats-server; scripts/test installs it)");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node(scratch: &Scratch, name: &str, nats: u16) -> Node {
    node_of(scratch, name, nats, "demo", 2, "")
}

/// A node of firm `tenant` with `agents` operators, and `extra` TOML.
fn node_of(
    scratch: &Scratch,
    name: &str,
    nats: u16,
    tenant: &str,
    agents: u32,
    extra: &str,
) -> Node {
    Node::start_toml(scratch, |sip, http| {
        let cfg = NodeConfig {
            agents,
            ..NodeConfig::default()
        };
        format!(
            "{}\n[[api.tokens]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\n[cluster]\nnode = \"{name}\"\nnats_url = \"nats://127.0.0.1:{nats}\"\n{extra}",
            cfg.toml(sip, http)
                .replace("\"demo\"", &format!("{tenant:?}"))
        )
    })
}

/// Waits until `pred` holds of this node's `GET /api/v1/cluster`.
pub(crate) fn wait_cluster(
    node: &Node,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (code, body) = node.http("GET", "/api/v1/cluster", Some(ADMIN), None);
        if code == 200 {
            let v = json(&body);
            if pred(&v) {
                return v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn peer_up(v: &serde_json::Value, name: &str) -> Option<bool> {
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == name)
        .and_then(|n| n["up"].as_bool())
}

#[test]
fn two_nodes_share_one_picture_and_keep_serving_without_nats() {
    let (sa, sb) = (Scratch::new("cluster-a"), Scratch::new("cluster-b"));
    let port = free_port();
    let mut nats = Nats::start(&sa, port);
    let a = node(&sa, "roma-1", port);
    let mut b = node(&sb, "milano-1", port);
    // Each sees the other, and the queue both have is one national queue.
    let v = wait_cluster(&a, "roma-1 sees milano-1", |v| {
        peer_up(v, "milano-1") == Some(true) && v["connected"] == true
    });
    assert_eq!(v["node"], "roma-1");
    let info = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["tenant"] == "demo" && q["queue"] == "info")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        info["nodes"],
        serde_json::json!(["roma-1", "milano-1"]),
        "{v}"
    );
    wait_cluster(&b, "milano-1 sees roma-1", |v| {
        peer_up(v, "roma-1") == Some(true)
    });
    assert_eq!(a.metric("centralino_cluster_nats_connected"), 1.0);
    // An operator of A logs in: the national picture counts them on B.
    let phone = one_answering_phone(&sa, &a);
    wait_cluster(&b, "the operator on roma-1 counts nationally", |v| {
        v["queues"][0]["agents"]["available"] == 1
    });
    // Another node (here a bare NATS client speaking for milano-1) offers
    // a waiting call: A's free operator is held for it, the same request
    // again gets the same grant, a release lets the operator go.
    let req = r#"{"id":"milano-1-7-1","from":"milano-1","tenant":"demo","queue":"info","requirements":null,"priority":0,"waited_ms":4000}"#;
    let reply = json(&nats_request(port, "centralino.v1.offer.roma-1", req));
    assert_eq!(reply["answer"], "granted", "{reply}");
    assert_eq!(reply["operator"], "1001", "{reply}");
    // The hand-over URI carries a secret of its own (128 bits), not the
    // asker's offer id: knowing one is no key to another's operator.
    let target = reply["target"].as_str().unwrap_or_default();
    let secret = target
        .strip_prefix("sip:offer-")
        .and_then(|t| t.strip_suffix(&format!("@127.0.0.1:{}", a.sip_port)))
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(secret.len(), 32, "{reply}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{reply}");
    a.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(5),
        |v| v == 0.0,
    );
    assert_eq!(
        json(&nats_request(port, "centralino.v1.offer.roma-1", req)),
        reply
    );
    // The same offer asking for its answer on another node's inbox: no
    // answer (a grant goes only to its asker).
    assert_eq!(
        nats_request_to(
            port,
            "_INBOX_napoli-1.e2e",
            "centralino.v1.offer.roma-1",
            &req.replace("milano-1-7-1", "milano-1-7-9"),
            Duration::from_secs(2)
        ),
        None
    );
    let other = req.replace("milano-1-7-1", "milano-1-7-2");
    let refused = json(&nats_request(port, "centralino.v1.offer.roma-1", &other));
    assert_eq!(
        (refused["answer"].as_str(), refused["reason"].as_str()),
        (Some("refused"), Some("no_operator")),
        "{refused}"
    );
    nats_publish(
        port,
        "centralino.v1.release.roma-1",
        r#"{"id":"milano-1-7-1","from":"milano-1"}"#,
    );
    a.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    assert_eq!(
        a.metric("centralino_cluster_offers_received_total{outcome=\"granted\"}"),
        1.0
    );
    // NATS goes away: A notices, and still takes and connects its calls.
    nats.stop();
    a.wait_metric(
        "centralino_cluster_nats_connected",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    let mut trunk = trunk_to(
        &sa,
        &a,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "500"],
    );
    trunk.expect_success(Duration::from_secs(30));
    drop(phone);
    assert_eq!(
        a.metric("centralino_calls_total{outcome=\"answered\"}"),
        1.0
    );
    // NATS back on the same address: the picture returns.
    let _nats = Nats::start(&sa, port);
    wait_cluster(&a, "roma-1 sees milano-1 again", |v| {
        peer_up(v, "milano-1") == Some(true) && v["connected"] == true
    });
    // B dies: A marks it down within a few heartbeats.
    b.kill_hard();
    let v = wait_cluster(&a, "milano-1 down", |v| {
        peer_up(v, "milano-1") == Some(false)
    });
    assert_eq!(
        v["queues"][0]["nodes"],
        serde_json::json!(["roma-1"]),
        "a node down no longer counts: {v}"
    );
    assert_eq!(
        a.metric("centralino_cluster_node_up{node=\"milano-1\"}"),
        0.0
    );
    // A node alone has no national picture.
    let alone = Scratch::new("cluster-alone");
    let c = Node::start_toml(&alone, |sip, http| {
        format!(
            "{}\n[[api.tokens]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n",
            NodeConfig::default().toml(sip, http)
        )
    });
    let (code, body) = c.http("GET", "/api/v1/cluster", Some(ADMIN), None);
    assert_eq!(code, 404, "{body}");
}

/// One national queue across two nodes of one firm: a call
/// arriving on roma-1, where nobody is logged in, is connected to the
/// operator logged in on milano-1 (offered over NATS, handed over by
/// SIP); roma-1 stays the caller's B2BUA. Its call record names the
/// operator and their node, milano-1's record and queue log carry
/// roma-1's record id.
#[test]
fn a_call_waiting_on_one_node_is_answered_by_another_nodes_operator() {
    let (sa, sb) = (Scratch::new("handover-a"), Scratch::new("handover-b"));
    let port = free_port();
    // Each node its own NATS user, allowed its own subjects only.
    let _nats = Nats::start_per_node(&sa, port, &["roma-1", "milano-1"]);
    let password = |scratch: &Scratch, n: &str| {
        let f = scratch.path("nats.pass");
        std::fs::write(&f, format!("pw-{n}\n")).unwrap();
        format!("password_file = {:?}\n", f.to_str().unwrap())
    };
    let a = node_of(&sa, "roma-1", port, "demo", 2, &password(&sa, "roma-1"));
    let b = node_of(&sb, "milano-1", port, "demo", 2, &password(&sb, "milano-1"));
    wait_cluster(&a, "roma-1 sees milano-1", |v| {
        peer_up(v, "milano-1") == Some(true)
    });
    // The caller waits on roma-1 first; then an operator logs in on
    // milano-1 and takes the call.
    let mut trunk = trunk_to(
        &sa,
        &a,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "500"],
    );
    a.wait_metric(
        "centralino_queue_calls{queue=\"info\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    let free = Instant::now();
    let _phone = one_answering_phone(&sb, &b);
    a.wait_metric(
        "centralino_cluster_handovers_total{outcome=\"connected\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    // Reported, not asserted (speed is measured, not tested): the news
    // of a free operator is published at once, not at the heartbeat.
    eprintln!(
        "operator registering on milano-1 -> call from roma-1 connected: {} ms (this machine, SIPp registration included)",
        free.elapsed().as_millis()
    );
    trunk.expect_success(Duration::from_secs(30));
    assert_eq!(
        b.metric("centralino_cluster_handovers_total{outcome=\"taken\"}"),
        1.0
    );
    assert!(a.metric("centralino_cluster_offers_sent_total{outcome=\"granted\"}") >= 1.0);
    assert_eq!(
        a.metric("centralino_calls_total{outcome=\"answered\"}"),
        1.0
    );
    // Both records, each in its node's store.
    let cdr = |scratch: &Scratch| {
        let store = centralino_store::Store::open(&scratch.path("data").join("centralino.db"))
            .expect("the node's store");
        let start = Instant::now();
        loop {
            let cdrs = store.recent_cdrs(10).expect("cdrs");
            if let Some(c) = cdrs.first().filter(|c| c.ended_at.is_some()) {
                break (store, c.clone());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{cdrs:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (_, on_a) = cdr(&sa);
    let (store_b, on_b) = cdr(&sb);
    assert_eq!(on_a.agent.as_deref(), Some("1001@milano-1"), "{on_a:?}");
    assert_eq!(on_b.agent.as_deref(), Some("1001"), "{on_b:?}");
    assert!(
        on_b.id.starts_with(&format!("{}-", on_a.id)),
        "{on_a:?} {on_b:?}"
    );
    let log = store_b.queue_events(&on_b.id).expect("queue log");
    assert!(
        log.iter()
            .any(|(e, q, who)| e == "connect" && q == "info" && who.as_deref() == Some("1001")),
        "{log:?}"
    );
}

/// Two firms under an agreement with `max_concurrent = 2`: three callers
/// of asl-roma wait on roma-1 (nobody there), milano-1 (firm demo) has
/// three operators free; two calls are lent at once, the third is not
/// (refused for capacity) until one of them ends; every caller is
/// answered in the end, and both firms' supervisors see the lending.
#[test]
fn an_agreement_lends_at_most_its_capacity_at_once() {
    let (sa, sb) = (Scratch::new("agreement-a"), Scratch::new("agreement-b"));
    let port = free_port();
    let _nats = Nats::start(&sa, port);
    let agreement = "\n[[agreements]]\nfrom = \"asl-roma\"\nto = \"demo\"\nqueues = [\"info\"]\nmax_concurrent = 2\n";
    let a = node_of(&sa, "roma-1", port, "asl-roma", 1, agreement);
    let b = node_of(&sb, "milano-1", port, "demo", 3, agreement);
    let phones = Sipp::spawn(
        &sb,
        "phones",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&sb, &b, &[1001, 1002, 1003], phones.port, |u| {
        format!("demo{u}")
    });
    wait_cluster(&a, "roma-1 sees milano-1's three free operators", |v| {
        v["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .any(|q| q["tenant"] == "demo" && q["agents"]["available"] == 3)
        })
    });
    // Three callers at once, each talking 4 s.
    let mut trunk = trunk_to(
        &sa,
        &a,
        "trunk",
        "trunk_call.xml",
        &["-m", "3", "-l", "3", "-r", "10", "-d", "4000"],
    );
    let v = wait_cluster(&b, "two calls lent", |v| v["lending"][0]["calls"] == 2);
    assert_eq!(
        v["lending"],
        serde_json::json!([{"borrower": "asl-roma", "lender": "demo", "calls": 2}])
    );
    b.wait_metric(
        "centralino_cluster_offers_received_total{outcome=\"capacity\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    assert_eq!(
        b.metric("centralino_agents{state=\"available\",tenant=\"demo\"}"),
        1.0,
        "the third operator stays free: the third call is not lent"
    );
    trunk.expect_success(Duration::from_secs(60));
    assert_eq!(
        a.metric("centralino_cluster_handovers_total{outcome=\"connected\"}"),
        3.0,
        "the third was lent once another ended"
    );
    drop(phones);
}

/// The lending node dies (kill -9) while its operator rings for a call
/// waiting on roma-1: the caller is not lost; the call goes back to its
/// place on roma-1 and is answered by the next operator free anywhere
/// (here one logging in on roma-1).
#[test]
fn a_lending_node_killed_mid_ring_sends_the_call_back_to_its_place() {
    let (sa, sb) = (Scratch::new("lender-dies-a"), Scratch::new("lender-dies-b"));
    let port = free_port();
    let _nats = Nats::start(&sa, port);
    let a = node(&sa, "roma-1", port);
    let mut b = node(&sb, "milano-1", port);
    let ringing = Sipp::spawn(
        &sb,
        "ringing",
        &["-sf", &scenario("agent_noanswer.xml"), "-timeout", "60s"],
    );
    register(&sb, &b, &[1001], ringing.port, |u| format!("demo{u}"));
    wait_cluster(&a, "roma-1 sees milano-1's free operator", |v| {
        v["queues"][0]["agents"]["available"] == 1
    });
    let mut trunk = trunk_to(
        &sa,
        &a,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "500"],
    );
    b.wait_metric(
        "centralino_cluster_handovers_total{outcome=\"taken\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    b.kill_hard();
    drop(ringing);
    a.wait_metric(
        "centralino_cluster_handovers_total{outcome=\"returned\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    let _phone = one_answering_phone(&sa, &a);
    trunk.expect_success(Duration::from_secs(30));
    assert_eq!(
        a.metric("centralino_calls_total{outcome=\"answered\"}"),
        1.0
    );
    assert_eq!(
        a.metric_or_zero("centralino_cluster_handovers_total{outcome=\"connected\"}"),
        0.0
    );
}

/// With the network's key (`cluster.key_file`), a NATS credential alone
/// is no node: a summary announcing free operators that is not signed
/// never enters the picture (so no call is ever handed to it), and an
/// unsigned offer gets no operator; the nodes, signing theirs, see each
/// other and hand calls over as before.
#[test]
fn without_the_networks_key_a_nats_client_is_no_node() {
    let (sa, sb) = (Scratch::new("keyed-a"), Scratch::new("keyed-b"));
    let port = free_port();
    let _nats = Nats::start(&sa, port);
    let key = sa.path("network.key");
    std::fs::write(&key, format!("{}\n", "3c".repeat(32))).unwrap();
    let keyed = format!("key_file = {:?}\n", key.to_str().unwrap());
    let a = node_of(&sa, "roma-1", port, "demo", 2, &keyed);
    let b = node_of(&sb, "milano-1", port, "demo", 2, &keyed);
    wait_cluster(&a, "roma-1 sees milano-1 (signed summaries)", |v| {
        peer_up(v, "milano-1") == Some(true)
    });
    let _phone = one_answering_phone(&sa, &a);
    // Planted: a node that is not one, announcing free operators.
    let forged = format!(
        r#"{{"node":"evil-1","boot":1,"seq":1,"at_ms":0,"draining":false,"queues":[{{"tenant":"demo","queue":"info","waiting":0,"oldest_wait_ms":0,"expected_wait_seconds":0,"available":50,"busy":0,"paused":0,"logged_out":0}}],"sip":"127.0.0.1:{}"}}"#,
        free_port()
    );
    for _ in 0..3 {
        nats_publish(port, "centralino.v1.summary.evil-1", &forged);
    }
    a.wait_metric(
        "centralino_cluster_summaries_total{outcome=\"refused\"}",
        Duration::from_secs(10),
        |v| v >= 3.0,
    );
    let v = wait_cluster(&a, "the picture", |_| true);
    assert_eq!(peer_up(&v, "evil-1"), None, "{v}");
    // An unsigned offer for roma-1's free operator: no answer at all.
    let req = r#"{"id":"evil-1-1-1","from":"milano-1","tenant":"demo","queue":"info","requirements":null,"priority":0,"waited_ms":4000}"#;
    assert_eq!(
        nats_request_within(
            port,
            "centralino.v1.offer.roma-1",
            req,
            Duration::from_secs(2)
        ),
        None
    );
    assert_eq!(
        a.metric("centralino_agents{state=\"available\",tenant=\"demo\"}"),
        1.0,
        "nobody held for it"
    );
    // The real nodes hand a call over: a caller waiting on milano-1 is
    // answered by roma-1's operator.
    let mut trunk = trunk_to(
        &sb,
        &b,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "500"],
    );
    trunk.expect_success(Duration::from_secs(30));
    assert_eq!(
        b.metric("centralino_cluster_handovers_total{outcome=\"connected\"}"),
        1.0
    );
}

/// A bare NATS client (the protocol's text form): publishes `payload` on
/// `subject` with a reply inbox and returns the first reply.
pub(crate) fn nats_request(port: u16, subject: &str, payload: &str) -> String {
    nats_request_within(port, subject, payload, Duration::from_secs(5)).expect("a reply within 5 s")
}

/// [`nats_request`], `None` when no reply comes within `limit`. The
/// answer is asked on milano-1's inbox (the offers these tests send speak
/// for milano-1: a node answers an offer only to its sender's own inbox).
pub(crate) fn nats_request_within(
    port: u16,
    subject: &str,
    payload: &str,
    limit: Duration,
) -> Option<String> {
    nats_request_to(port, "_INBOX_milano-1.e2e", subject, payload, limit)
}

/// A request answered on `inbox`.
pub(crate) fn nats_request_to(
    port: u16,
    inbox: &str,
    subject: &str,
    payload: &str,
    limit: Duration,
) -> Option<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    write!(
        s,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n{payload}\r\n",
        payload.len()
    )
    .unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        if line.starts_with("PING") {
            s.write_all(b"PONG\r\n").unwrap();
        } else if let Some(rest) = line
            .strip_prefix("MSG ")
            .and_then(|l| l.strip_prefix(inbox))
            .and_then(|l| l.strip_prefix(" 1 "))
        {
            let n: usize = rest.trim().parse().unwrap();
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body).unwrap();
            body.truncate(n);
            return Some(String::from_utf8(body).unwrap());
        }
    }
}

/// Publishes `payload` on `subject` (no reply), flushed by a PING.
pub(crate) fn nats_publish(port: u16, subject: &str, payload: &str) {
    nats_publish_bytes(port, subject, payload.as_bytes());
}

/// Publishes `payload` (bytes) on `subject` with a bare NATS client.
pub(crate) fn nats_publish_bytes(port: u16, subject: &str, payload: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    write!(
        s,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .unwrap();
    s.write_all(payload).unwrap();
    s.write_all(b"\r\nPING\r\n").unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("PONG") {
            return;
        }
    }
}
