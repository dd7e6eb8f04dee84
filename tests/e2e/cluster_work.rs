//! Three nodes of one firm on 127.0.0.1, 127.0.0.2 and 127.0.0.3, a real
//! `nats-server` with JetStream, `durability = "jetstream"`: node B dies
//! (kill -9) in the middle of a call; A's waiting caller stays queued and
//! is answered by C's operator once one is free; B's pending callbacks
//! are taken over by C and each citizen is called exactly once; B, back,
//! finds them moved and calls nobody.

use std::collections::HashMap;
use std::time::Duration;

use crate::cluster::{Nats, peer_up, wait_cluster};
use crate::common::{Node, Scratch, Sipp, free_port, json, register, scenario, trunk_to};

const ADMIN: &str = "cluster-admin-token";

/// The firm's campaign, defined on each of its nodes.
const CAMPAIGN: &str = "richiami-fragili";

/// A node of firm `asl` named `name`, SIP on `host`; `callbacks`: it has
/// the callback queue `richiamate`.
fn config(
    name: &str,
    host: &str,
    nats: u16,
    citizen: u16,
    callbacks: bool,
) -> impl Fn(u16, u16) -> String {
    let (name, host) = (name.to_owned(), host.to_owned());
    // One key for the network's nodes: records on the stream are sealed.
    let key = std::env::temp_dir().join(format!("centralino-work-{}.key", std::process::id()));
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    move |sip, http| {
        let (queues, richiamate) = if callbacks {
            (
                "\"info\", \"richiamate\"",
                "\n[[queues]]\nname = \"richiamate\"\ntenant = \"asl\"\nring_timeout_seconds = 10\n",
            )
        } else {
            ("\"info\"", "")
        };
        let mut s = format!(
            r#"[sip]
listen = ["{host}:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[[api.tokens]]
name = "admin"
token = "{ADMIN}"
role = "admin"

[[tenants]]
name = "asl"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
outbound = "127.0.0.1:{citizen}"
caller_id = "+39800123456"
dids = {{ "100" = "info" }}

[[queues]]
name = "info"
tenant = "asl"
ring_timeout_seconds = 10
max_wait_seconds = 600
{richiamate}
[[campaigns]]
name = "{CAMPAIGN}"
queue = "info"
mode = "progressive"
windows = {{ days = ["lun", "mar", "mer", "gio", "ven", "sab", "dom"], hours = ["00:00-24:00"] }}

[cluster]
node = "{name}"
nats_url = "nats://127.0.0.1:{nats}"
durability = "jetstream"
key_file = {key:?}
takeover_after_seconds = 3
"#
        );
        for u in 1001..=1003 {
            s.push_str(&format!(
                "\n[[agents]]\nusername = \"{u}\"\npassword = \"demo{u}\"\ntenant = \"asl\"\nqueues = [{queues}]\n"
            ));
        }
        s
    }
}

fn callbacks(node: &Node, status: &str) -> Vec<serde_json::Value> {
    listed(
        node,
        &format!("/api/v1/callbacks?status={status}&limit=1000"),
        "callbacks",
    )
}

/// The array `key` of what `GET path` answers.
fn listed(node: &Node, path: &str, key: &str) -> Vec<serde_json::Value> {
    let (code, body) = node.http("GET", path, Some(ADMIN), None);
    assert_eq!(code, 200, "{body}");
    json(&body)[key].as_array().cloned().unwrap_or_default()
}

fn wait_callbacks(node: &Node, status: &str, n: usize) {
    let start = std::time::Instant::now();
    while callbacks(node, status).len() != n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{status}: {} of {n}\n{}",
            callbacks(node, status).len(),
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dead_nodes_callbacks_are_called_once_by_another_node_and_its_waiting_callers_are_served() {
    let (sa, sb, sc) = (
        Scratch::new("work-a"),
        Scratch::new("work-b"),
        Scratch::new("work-c"),
    );
    let port = free_port();
    let _nats = jetstream(&sa, port);
    let mut citizen = crate::common::far_end(&sa, "citizen", "citizen_answer.xml", 3, "120s");
    let a = node(&sa, "roma-1", "127.0.0.1", port, citizen.port, false);
    let mut b = node(&sb, "milano-1", "127.0.0.2", port, citizen.port, true);
    let c = node(&sc, "napoli-1", "127.0.0.3", port, citizen.port, true);
    wait_cluster(&a, "roma-1 sees the two others", |v| {
        peer_up(v, "milano-1") == Some(true) && peer_up(v, "napoli-1") == Some(true)
    });

    // B's one operator takes a call that arrived on A (handed over), and
    // is on it when B dies.
    let b_phone = Sipp::spawn(
        &sb,
        "phone",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "120s"],
    );
    register(&sb, &b, &[1001], b_phone.port, |u| format!("demo{u}"));
    let first = trunk_to(
        &sa,
        &a,
        "first",
        "trunk_call.xml",
        &["-m", "1", "-d", "60000"],
    );
    b.wait_metric(
        "centralino_cluster_handovers_total{outcome=\"taken\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    // Three citizens ask B to be called back; its operator is busy, so
    // none is claimed. Each is on the work stream before B dies.
    for i in 1..=3 {
        let (code, body) = b.http(
            "POST",
            "/api/v1/callbacks",
            Some(ADMIN),
            Some(&format!(
                r#"{{"queue": "richiamate", "number": "+3934700000{i}"}}"#
            )),
        );
        assert_eq!(code, 201, "{body}");
    }
    b.wait_metric(
        "centralino_cluster_work_total{event=\"mirrored\"}",
        Duration::from_secs(10),
        |v| v >= 3.0,
    );
    assert_eq!(callbacks(&b, "pending").len(), 3);
    // A second caller waits on A: nobody is free anywhere.
    let mut second = trunk_to(&sa, &a, "second", "trunk_hangup_by_agent.xml", &["-m", "1"]);
    a.wait_metric(
        "centralino_queue_calls{queue=\"info\"}",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );

    b.kill_hard();
    drop(b_phone);
    drop(first);
    wait_cluster(&a, "roma-1 marks milano-1 down", |v| {
        peer_up(v, "milano-1") == Some(false)
    });
    // The caller waiting on A is still there, in its place.
    assert!(a.metric("centralino_queue_calls{queue=\"info\"}") >= 1.0);

    // Operators log in on C: A's caller is answered there, and C calls
    // B's three citizens back, each once.
    let c_phones = talking_phones(&sc, &c, &[1001, 1002]);
    second.expect_success(Duration::from_secs(60));
    citizen.expect_success(Duration::from_secs(60));
    wait_callbacks(&c, "done", 3);
    assert_eq!(
        c.metric("centralino_cluster_work_total{event=\"taken_over\"}"),
        3.0
    );
    assert_eq!(
        a.metric_or_zero("centralino_cluster_work_total{event=\"taken_over\"}"),
        0.0,
        "roma-1 has no callback queue: not its firm's work to take"
    );
    let mut called: HashMap<String, u32> = HashMap::new();
    for line in citizen.log_lines() {
        if let Some(n) = line
            .split("called INVITE sip:")
            .nth(1)
            .and_then(|r| r.split('@').next())
        {
            *called.entry(n.trim().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(called.len(), 3, "{called:?}");
    assert!(called.values().all(|&n| n == 1), "{called:?}");

    // B comes back on its own store, its operator free: its three
    // callbacks were taken over, so it marks them moved and calls nobody.
    let b = node(&sb, "milano-1", "127.0.0.2", port, citizen.port, true);
    let moved = callbacks(&b, "moved");
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert!(
        moved.iter().all(|m| m["outcome"] == "moved_to:napoli-1"),
        "{moved:?}"
    );
    assert!(callbacks(&b, "pending").is_empty());
    assert!(callbacks(&b, "in_progress").is_empty());
    drop(c_phones);
}

/// Anyone holding only a NATS credential writes a record that claims
/// another node owns a callback: it is not sealed with the network's key,
/// so it moves nothing; but the node can no longer confirm the callback is
/// its own, so it dials nobody: the callback is kept `failed`, outcome
/// `unconfirmed`, for a person (never a second call, never a call placed
/// on a stranger's word).
#[test]
fn a_record_planted_without_the_key_moves_nothing_and_dials_nobody() {
    let sb = Scratch::new("work-planted");
    let port = free_port();
    let _nats = jetstream(&sb, port);
    let citizen = crate::common::far_end(&sb, "citizen", "citizen_answer.xml", 1, "120s");
    let b = node(&sb, "milano-1", "127.0.0.1", port, citizen.port, true);
    let id = ask_callback(&b, "+393470000009");
    b.wait_metric(
        "centralino_cluster_work_total{event=\"mirrored\"}",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    let record = format!(
        r#"{{"owner":"napoli-1","tenant":"asl","state":"pending","callback":{{"id":"{id}","queue":"richiamate","number":"+393470000009","not_before":null,"requirements":null,"priority":0,"attempts":0,"created_at":1,"source":"api"}}}}"#
    );
    crate::cluster::nats_publish(port, &format!("centralino.v1.work.cb.{id}"), &record);
    let _phones = talking_phones(&sb, &b, &[1001]);
    wait_callbacks(&b, "failed", 1);
    let failed = callbacks(&b, "failed");
    assert_eq!(failed[0]["outcome"], "unconfirmed", "{failed:?}");
    assert!(b.metric("centralino_cluster_work_total{event=\"unconfirmed\"}") >= 1.0);
    assert_eq!(
        b.metric_or_zero("centralino_cluster_work_total{event=\"moved_away\"}"),
        0.0
    );
    assert!(
        !citizen
            .log_lines()
            .iter()
            .any(|l| l.contains("called INVITE")),
        "the citizen's phone must not ring"
    );
    b.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"asl\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
}

/// Node B is frozen (SIGSTOP: alive, silent, as a partition leaves it)
/// with a callback pending; C takes it over and calls the citizen. B,
/// thawed, with an operator free, finds at its first write (or at the
/// fence before the dial) that the callback moved: the citizen's phone
/// rings once in all.
#[test]
fn a_callback_taken_over_while_its_node_was_frozen_is_never_dialled_there() {
    let (sb, sc) = (Scratch::new("work-frozen-b"), Scratch::new("work-frozen-c"));
    let port = free_port();
    let _nats = jetstream(&sb, port);
    let mut citizen = crate::common::far_end(&sb, "citizen", "citizen_answer.xml", 1, "120s");
    let b = node(&sb, "milano-1", "127.0.0.2", port, citizen.port, true);
    let c = node(&sc, "napoli-1", "127.0.0.3", port, citizen.port, true);
    wait_cluster(&c, "napoli-1 sees milano-1", |v| {
        peer_up(v, "milano-1") == Some(true)
    });
    ask_callback(&b, "+393470000007");
    b.wait_metric(
        "centralino_cluster_work_total{event=\"mirrored\"}",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    b.freeze(true);
    wait_cluster(&c, "napoli-1 marks milano-1 down", |v| {
        peer_up(v, "milano-1") == Some(false)
    });
    c.wait_metric(
        "centralino_cluster_work_total{event=\"taken_over\"}",
        Duration::from_secs(90),
        |v| v == 1.0,
    );
    let _c_phone = talking_phones(&sc, &c, &[1001]);
    citizen.expect_success(Duration::from_secs(30));
    wait_callbacks(&c, "done", 1);
    // B thaws; its operator is free: the callback is found moved.
    b.freeze(false);
    let b_phone = Sipp::spawn(
        &sb,
        "phones",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&sb, &b, &[1001], b_phone.port, |u| format!("demo{u}"));
    wait_callbacks(&b, "moved", 1);
    assert_eq!(callbacks(&b, "moved")[0]["outcome"], "moved_to:napoli-1");
    assert!(callbacks(&b, "pending").is_empty());
    assert_eq!(
        citizen
            .log_lines()
            .iter()
            .filter(|l| l.contains("called INVITE"))
            .count(),
        1,
        "the citizen's phone rang once"
    );
}

/// B's campaign has five contacts, one of them on the national
/// do-not-call list; nobody is logged in on B, so none is claimed. B dies
/// (kill -9): C, running the same campaign, takes the five over and calls
/// the four it may, each once, and never the listed one. B, back on its
/// own store, finds them moved and calls nobody.
#[test]
fn a_dead_nodes_campaign_contacts_are_called_once_by_another_node() {
    let (sb, sc) = (
        Scratch::new("work-contacts-b"),
        Scratch::new("work-contacts-c"),
    );
    let port = free_port();
    let _nats = jetstream(&sb, port);
    let mut citizens = crate::common::far_end(&sb, "citizens", "citizen_answer.xml", 4, "120s");
    let mut b = node(&sb, "milano-1", "127.0.0.2", port, citizens.port, true);
    let c = node(&sc, "napoli-1", "127.0.0.3", port, citizens.port, true);
    wait_cluster(&c, "napoli-1 sees milano-1", |v| {
        peer_up(v, "milano-1") == Some(true)
    });
    let listed = "+393470000105";
    let (code, body) = b.http(
        "POST",
        "/api/v1/dnc",
        Some(ADMIN),
        Some(&format!(r#"{{"number": "{listed}"}}"#)),
    );
    assert_eq!(code, 201, "{body}");
    let numbers: Vec<String> = (1..=5).map(|i| format!("+39347000010{i}")).collect();
    let (on_b, on_c) = running_on_both(&b, &c, &numbers);
    assert_eq!(contacts(&b, &on_b, "pending").len(), 5);
    // A second campaign, on both nodes, whose two contacts B's firm
    // deletes with it: closed on the stream, C never takes them.
    let removed = ["+393470000301", "+393470000302"];
    let temp_b = temporary_campaign(&b);
    temporary_campaign(&c);
    let (code, body) = b.http(
        "POST",
        &format!("/api/v1/campaigns/{temp_b}/contacts"),
        Some(ADMIN),
        Some(&format!(
            r#"[{{"number": "{}"}}, {{"number": "{}"}}]"#,
            removed[0], removed[1]
        )),
    );
    assert_eq!(code, 200, "{body}");
    b.wait_metric(
        "centralino_cluster_work_total{event=\"mirrored\"}",
        Duration::from_secs(10),
        |v| v >= 7.0,
    );
    for (method, path) in [
        ("POST", format!("/api/v1/campaigns/{temp_b}/pause")),
        ("DELETE", format!("/api/v1/campaigns/{temp_b}")),
    ] {
        let (code, body) = b.http(method, &path, Some(ADMIN), Some(""));
        assert!(code == 200 || code == 204, "{method} {path}: {code} {body}");
    }
    b.wait_metric(
        "centralino_cluster_work_total{event=\"closed\"}",
        Duration::from_secs(10),
        |v| v >= 2.0,
    );

    b.kill_hard();
    taken_over(&c, 5);
    let c_phones = talking_phones(&sc, &c, &[1001, 1002]);
    citizens.expect_success(Duration::from_secs(60));
    let start = std::time::Instant::now();
    while contacts(&c, &on_c, "done").len() != 4 || contacts(&c, &on_c, "dnc").len() != 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let called = crate::campaigns_dial::called_numbers(&citizens);
    assert_eq!(called.len(), 4, "{called:?}");
    assert!(called.values().all(|&n| n == 1), "{called:?}");
    assert!(!called.contains_key(listed), "{called:?}");
    assert_eq!(
        c.metric("centralino_cluster_work_total{event=\"taken_over\"}"),
        5.0,
        "the deleted campaign's contacts stay closed"
    );

    // B comes back: its five contacts were taken over; none is dialled.
    let b = node(&sb, "milano-1", "127.0.0.2", port, citizens.port, true);
    let moved = contacts(&b, &on_b, "moved");
    assert_eq!(moved.len(), 5, "{moved:?}");
    assert!(
        moved
            .iter()
            .all(|m| m["last_outcome"] == "moved_to:napoli-1"),
        "{moved:?}"
    );
    assert!(contacts(&b, &on_b, "pending").is_empty());
    drop(c_phones);
}

/// B's two contacts are taken over by C while B is frozen (SIGSTOP) and
/// called there; B thaws, an operator of its logs in: its campaign would
/// dial them, but the work stream says they moved (the claim's dial is
/// fenced there), so nobody is called twice.
#[test]
fn campaign_contacts_taken_over_while_their_node_was_frozen_are_never_dialled_there() {
    let (sb, sc) = (
        Scratch::new("work-contacts-frozen-b"),
        Scratch::new("work-contacts-frozen-c"),
    );
    let port = free_port();
    let _nats = jetstream(&sb, port);
    let mut citizens = crate::common::far_end(&sb, "citizens", "citizen_answer.xml", 2, "120s");
    let b = node(&sb, "milano-1", "127.0.0.2", port, citizens.port, true);
    let c = node(&sc, "napoli-1", "127.0.0.3", port, citizens.port, true);
    wait_cluster(&c, "napoli-1 sees milano-1", |v| {
        peer_up(v, "milano-1") == Some(true)
    });
    let numbers = ["+393470000201".to_owned(), "+393470000202".to_owned()];
    let (on_b, on_c) = running_on_both(&b, &c, &numbers);
    b.freeze(true);
    taken_over(&c, 2);
    let _c_phone = talking_phones(&sc, &c, &[1001]);
    citizens.expect_success(Duration::from_secs(60));
    let start = std::time::Instant::now();
    while contacts(&c, &on_c, "done").len() != 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    // B thaws with an operator free: its contacts are found moved.
    b.freeze(false);
    let b_phone = Sipp::spawn(
        &sb,
        "phones",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&sb, &b, &[1001], b_phone.port, |u| format!("demo{u}"));
    let start = std::time::Instant::now();
    while contacts(&b, &on_b, "moved").len() != 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", b.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Moved is final: B's pacer claims only pending contacts, and a claim
    // made before B learnt it was refused at its fence.
    b.wait_metric(
        "centralino_cluster_work_total{event=\"moved_away\"}",
        Duration::from_secs(10),
        |v| v >= 2.0,
    );
    assert!(contacts(&b, &on_b, "pending").is_empty());
    assert!(contacts(&b, &on_b, "in_progress").is_empty());
    let called = crate::campaigns_dial::called_numbers(&citizens);
    assert_eq!(called.len(), 2, "{called:?}");
    assert!(called.values().all(|&n| n == 1), "{called:?}");
}

/// `numbers` imported into the firm's campaign on `b`, the campaign
/// started on `b` and `c`, each contact on the work stream: the campaign's
/// id on each.
fn running_on_both(b: &Node, c: &Node, numbers: &[String]) -> (String, String) {
    let (on_b, on_c) = (campaign_of(b), campaign_of(c));
    // Started before the import: each contact's one mirrored record says
    // its campaign runs (a record mirrored while it was still a draft,
    // its node frozen before the start's version left, is rightly never
    // taken over).
    for (n, id) in [(b, &on_b), (c, &on_c)] {
        let (code, body) = n.http(
            "POST",
            &format!("/api/v1/campaigns/{id}/start"),
            Some(ADMIN),
            Some(""),
        );
        assert_eq!(code, 200, "{body}");
    }
    let list: Vec<String> = numbers
        .iter()
        .map(|n| format!(r#"{{"number": "{n}"}}"#))
        .collect();
    let (code, body) = b.http(
        "POST",
        &format!("/api/v1/campaigns/{on_b}/contacts"),
        Some(ADMIN),
        Some(&format!("[{}]", list.join(","))),
    );
    assert_eq!(code, 200, "{body}");
    b.wait_metric(
        "centralino_cluster_work_total{event=\"mirrored\"}",
        Duration::from_secs(10),
        |v| v >= numbers.len() as f64,
    );
    (on_b, on_c)
}

/// `c` marks milano-1 down and takes `n` records of it over.
fn taken_over(c: &Node, n: usize) {
    wait_cluster(c, "napoli-1 marks milano-1 down", |v| {
        peer_up(v, "milano-1") == Some(false)
    });
    c.wait_metric(
        "centralino_cluster_work_total{event=\"taken_over\"}",
        Duration::from_secs(90),
        |v| v == n as f64,
    );
}

/// A campaign `temporanea` made through the API on `node`, started: its id.
fn temporary_campaign(node: &Node) -> String {
    let (code, body) = node.http(
        "POST",
        "/api/v1/campaigns",
        Some(ADMIN),
        Some(
            r#"{"name": "temporanea", "queue": "info", "mode": "progressive",
                "windows": {"days": ["lun", "mar", "mer", "gio", "ven", "sab", "dom"], "hours": ["00:00-24:00"]}}"#,
        ),
    );
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    let (code, body) = node.http(
        "POST",
        &format!("/api/v1/campaigns/{id}/start"),
        Some(ADMIN),
        Some(""),
    );
    assert_eq!(code, 200, "{body}");
    id
}

/// The NATS server goes away for longer than `takeover_after_seconds`
/// and comes back: C has heard nobody for that long, but that was its own
/// outage, not B's death. B stays frozen a moment longer, so when C
/// checks the stream on its return, B has still not spoken: C takes none
/// of B's callbacks or contacts over (it waits for B as long as it waits
/// for a node it never heard from).
#[test]
fn a_nats_outage_longer_than_the_takeover_time_moves_no_work() {
    let (sb, sc) = (Scratch::new("work-outage-b"), Scratch::new("work-outage-c"));
    let port = free_port();
    let nats = jetstream(&sb, port);
    let citizens = crate::common::far_end(&sb, "citizens", "citizen_answer.xml", 1, "60s");
    let slower = |scratch: &Scratch, name: &str, host: &'static str| {
        let cfg = config(name, host, port, citizens.port, true);
        let n = Node::start_toml(scratch, move |sip, http| {
            cfg(sip, http).replace(
                "takeover_after_seconds = 3\n",
                "takeover_after_seconds = 6\n",
            )
        })
        .on_host(host);
        n.wait_metric(
            "centralino_cluster_work_ready",
            Duration::from_secs(15),
            |v| v == 1.0,
        );
        n
    };
    let b = slower(&sb, "milano-1", "127.0.0.2");
    let c = slower(&sc, "napoli-1", "127.0.0.3");
    wait_cluster(&c, "napoli-1 sees milano-1", |v| {
        peer_up(v, "milano-1") == Some(true)
    });
    ask_callback(&b, "+393470000401");
    running_on_both(&b, &c, &["+393470000402".to_owned()]);
    drop(nats);
    b.freeze(true);
    wait_cluster(
        &c,
        "napoli-1 has heard nothing from milano-1 for 8 s",
        |v| silent_seconds(v, "milano-1").is_some_and(|s| s >= 8),
    );
    assert_eq!(c.metric("centralino_cluster_work_ready"), 0.0);
    let _nats = jetstream(&sb, port);
    c.wait_metric(
        "centralino_cluster_work_ready",
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    assert_eq!(
        c.metric_or_zero("centralino_cluster_work_total{event=\"taken_over\"}"),
        0.0,
        "{}",
        c.logs()
    );
    b.freeze(false);
}

fn silent_seconds(v: &serde_json::Value, name: &str) -> Option<u64> {
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == name)
        .and_then(|n| n["silent_seconds"].as_u64())
}

/// The id of the firm's campaign on `node`.
fn campaign_of(node: &Node) -> String {
    listed(node, "/api/v1/campaigns", "campaigns")
        .iter()
        .find(|c| c["name"] == CAMPAIGN)
        .and_then(|c| c["id"].as_str())
        .unwrap_or_else(|| panic!("no campaign {CAMPAIGN}"))
        .to_owned()
}

fn contacts(node: &Node, campaign: &str, status: &str) -> Vec<serde_json::Value> {
    listed(
        node,
        &format!("/api/v1/campaigns/{campaign}/contacts?status={status}"),
        "contacts",
    )
}

fn ask_callback(node: &Node, number: &str) -> String {
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(ADMIN),
        Some(&format!(
            r#"{{"queue": "richiamate", "number": "{number}"}}"#
        )),
    );
    assert_eq!(code, 201, "{body}");
    json(&body)["id"].as_str().unwrap().to_owned()
}

/// A `nats-server` with JetStream, its store in the scratch directory.
fn jetstream(scratch: &Scratch, port: u16) -> Nats {
    let store = scratch.path("jetstream");
    Nats::start_args(scratch, port, &["-js", "-sd", store.to_str().unwrap()])
}

/// Operators `users` of `node` on SIPp phones that answer every call,
/// talk a second and hang up.
fn talking_phones(scratch: &Scratch, node: &Node, users: &[u32]) -> Sipp {
    let phones = Sipp::spawn(
        scratch,
        "phones",
        &[
            "-sf",
            &scenario("agent_hangup.xml"),
            "-d",
            "1000",
            "-timeout",
            "120s",
        ],
    );
    register(scratch, node, users, phones.port, |u| format!("demo{u}"));
    phones
}

/// A node of [`config`] whose SIP listens on `host`, its work stream
/// ready (read and writable) when this returns.
fn node(
    scratch: &Scratch,
    name: &str,
    host: &'static str,
    nats: u16,
    citizen: u16,
    callbacks: bool,
) -> Node {
    let n = Node::start_toml(scratch, config(name, host, nats, citizen, callbacks)).on_host(host);
    n.wait_metric(
        "centralino_cluster_work_ready",
        Duration::from_secs(15),
        |v| v == 1.0,
    );
    n
}

/// A callback done on B leaves its closed record on the stream; someone
/// holding a NATS credential replays B's first (open) record of it, then
/// B dies: the replayed record does not follow its predecessor, so C
/// refuses it and the citizen is not called again.
#[test]
fn a_replayed_record_makes_no_node_call_again() {
    let (sb, sc) = (Scratch::new("work-replay-b"), Scratch::new("work-replay-c"));
    let port = free_port();
    let _nats = jetstream(&sb, port);
    let mut citizen = crate::common::far_end(&sb, "citizen", "citizen_answer.xml", 1, "120s");
    let mut b = node(&sb, "milano-1", "127.0.0.2", port, citizen.port, true);
    let c = node(&sc, "napoli-1", "127.0.0.3", port, citizen.port, true);
    let _c_phones = talking_phones(&sc, &c, &[1001]);
    let id = ask_callback(&b, "+393470000005");
    let subject = format!("centralino.v1.work.cb.{id}");
    let first = wait_record(port, &subject);
    // B's operator logs in and calls the citizen back.
    let _b_phones = talking_phones(&sb, &b, &[1001]);
    citizen.expect_success(Duration::from_secs(30));
    wait_callbacks(&b, "done", 1);
    let store = centralino_store::Store::open(&sb.path("data").join("centralino.db")).unwrap();
    let start = std::time::Instant::now();
    while !store.unmirrored(10).unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the closed record is written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::cluster::nats_publish_bytes(port, &subject, &first);
    b.kill_hard();
    c.wait_metric(
        "centralino_cluster_work_total{event=\"refused\"}",
        Duration::from_secs(30),
        |v| v >= 1.0,
    );
    assert_eq!(
        c.metric_or_zero("centralino_cluster_work_total{event=\"taken_over\"}"),
        0.0
    );
    assert!(callbacks(&c, "pending").is_empty());
    assert!(callbacks(&c, "done").is_empty());
}

/// B dies (kill -9) while its citizen's phone rings: C keeps the callback
/// as failed, `interrupted` (the citizen may have answered), never dials
/// it; B, restarted, finds it closed elsewhere, stops writing it (no
/// endless retry), and dials nobody.
#[test]
fn a_node_killed_mid_dial_leaves_its_callback_to_a_person_not_to_a_second_dial() {
    let (sb, sc) = (
        Scratch::new("work-middial-b"),
        Scratch::new("work-middial-c"),
    );
    let port = free_port();
    let _nats = jetstream(&sb, port);
    // The citizen's phone rings and nobody answers.
    let citizen = Sipp::spawn(
        &sb,
        "citizen",
        &["-sf", &scenario("agent_noanswer.xml"), "-timeout", "120s"],
    );
    let mut b = node(&sb, "milano-1", "127.0.0.2", port, citizen.port, true);
    let c = node(&sc, "napoli-1", "127.0.0.3", port, citizen.port, true);
    let _c_phones = talking_phones(&sc, &c, &[1001]);
    let id = ask_callback(&b, "+393470000004");
    let b_phones = talking_phones(&sb, &b, &[1001]);
    b.wait_metric(
        "centralino_cluster_work_total{event=\"fence_go\"}",
        Duration::from_secs(30),
        |v| v >= 1.0,
    );
    b.kill_hard();
    drop(b_phones);
    wait_callbacks(&c, "failed", 1);
    let failed = callbacks(&c, "failed");
    assert_eq!(failed[0]["id"], id.as_str());
    assert_eq!(failed[0]["outcome"], "interrupted", "{failed:?}");
    assert_eq!(
        c.metric_or_zero("centralino_cluster_work_total{event=\"fence_go\"}"),
        0.0,
        "never dialled by C"
    );
    let b = node(&sb, "milano-1", "127.0.0.2", port, citizen.port, true);
    b.wait_metric(
        "centralino_cluster_work_total{event=\"moved_away\"}",
        Duration::from_secs(15),
        |v| v >= 1.0,
    );
    let store = centralino_store::Store::open(&sb.path("data").join("centralino.db")).unwrap();
    assert!(
        store.unmirrored(10).unwrap().is_empty(),
        "B no longer writes a callback C holds"
    );
    assert!(callbacks(&b, "pending").is_empty());
    assert!(callbacks(&b, "in_progress").is_empty());
}

/// Waits for the work stream's last record on `subject` and returns its
/// sealed bytes (as an attacker holding a node's NATS credential could).
fn wait_record(port: u16, subject: &str) -> Vec<u8> {
    use base64::Engine as _;
    let start = std::time::Instant::now();
    loop {
        let reply = crate::cluster::nats_request(
            port,
            "$JS.API.STREAM.MSG.GET.CENTRALINO_WORK",
            &format!(r#"{{"last_by_subj":"{subject}"}}"#),
        );
        if let Some(data) = json(&reply)["message"]["data"].as_str() {
            return base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{reply}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// README's per-node NATS permissions, JetStream's subjects included, are
/// enough: two nodes, each its own NATS user allowed only its own subjects
/// and the work stream's, open the stream, read it, and mirror a callback.
#[test]
fn the_readmes_per_node_permissions_are_enough_for_the_work_stream() {
    let (sa, sb) = (Scratch::new("work-perms-a"), Scratch::new("work-perms-b"));
    let port = free_port();
    let _nats = Nats::start_per_node_with(&sa, port, &["roma-1", "milano-1"], true);
    let citizen = crate::common::far_end(&sa, "citizen", "citizen_answer.xml", 1, "60s");
    let password = |scratch: &Scratch, n: &str| {
        let f = scratch.path("nats.pass");
        std::fs::write(&f, format!("pw-{n}\n")).unwrap();
        f
    };
    let with_user = |scratch: &Scratch, name: &str, host: &'static str| {
        let f = password(scratch, name);
        let cfg = config(name, host, port, citizen.port, true);
        let n = Node::start_toml(scratch, move |sip, http| {
            cfg(sip, http).replace(
                "takeover_after_seconds = 3\n",
                &format!(
                    "takeover_after_seconds = 3\npassword_file = {:?}\n",
                    f.to_str().unwrap()
                ),
            )
        })
        .on_host(host);
        n.wait_metric(
            "centralino_cluster_work_ready",
            Duration::from_secs(15),
            |v| v == 1.0,
        );
        n
    };
    let a = with_user(&sa, "roma-1", "127.0.0.1");
    let b = with_user(&sb, "milano-1", "127.0.0.2");
    wait_cluster(&a, "roma-1 sees milano-1", |v| {
        peer_up(v, "milano-1") == Some(true)
    });
    ask_callback(&b, "+393470000003");
    let (code, body) = b.http(
        "POST",
        &format!("/api/v1/campaigns/{}/contacts", campaign_of(&b)),
        Some(ADMIN),
        Some(r#"[{"number": "+393470000004"}]"#),
    );
    assert_eq!(code, 200, "{body}");
    b.wait_metric(
        "centralino_cluster_work_total{event=\"mirrored\"}",
        Duration::from_secs(10),
        |v| v >= 2.0,
    );
    assert_eq!(
        b.metric_or_zero("centralino_cluster_work_total{event=\"unavailable\"}"),
        0.0
    );
}

/// TEST-MATRIX D12 on the national network: milano-1's store is lost and
/// the node comes back on a fresh one whose configuration gives its
/// callback queue to another firm. Its own record of firm asl's pending
/// callback is still on the stream; the new store binds `richiamate` to
/// `altra`, so the record is not kept (`other_tenant`), and altra's
/// operator, free, never calls asl's citizen.
#[test]
fn a_nodes_own_callback_is_never_kept_in_another_firms_queue_of_that_name() {
    let (sb, sb2) = (Scratch::new("work-firm-b"), Scratch::new("work-firm-b2"));
    let port = free_port();
    let _nats = jetstream(&sb, port);
    let citizen = crate::common::far_end(&sb, "citizen", "citizen_answer.xml", 1, "120s");
    let mut b = node(&sb, "milano-1", "127.0.0.1", port, citizen.port, true);
    ask_callback(&b, "+393470000011");
    b.wait_metric(
        "centralino_cluster_work_total{event=\"mirrored\"}",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    b.kill_hard();
    let asl = config("milano-1", "127.0.0.1", port, citizen.port, true);
    let altra = move |sip, http| {
        asl(sip, http)
            .replace("name = \"asl\"", "name = \"altra\"")
            .replace("tenant = \"asl\"", "tenant = \"altra\"")
    };
    let b = Node::start_toml(&sb2, altra);
    b.wait_metric(
        "centralino_cluster_work_total{event=\"other_tenant\"}",
        Duration::from_secs(15),
        |v| v >= 1.0,
    );
    assert_eq!(
        b.metric_or_zero("centralino_cluster_work_total{event=\"adopted\"}"),
        0.0
    );
    let _phones = talking_phones(&sb2, &b, &[1001]);
    b.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"altra\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    // Nothing of it in the store, whatever its status: nothing to dial.
    assert!(listed(&b, "/api/v1/callbacks?limit=1000", "callbacks").is_empty());
    assert!(
        !citizen
            .log_lines()
            .iter()
            .any(|l| l.contains("called INVITE")),
        "the citizen's phone must not ring"
    );
}
