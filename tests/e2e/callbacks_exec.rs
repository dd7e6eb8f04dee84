//! Callbacks executed agent first against real SIPp peers: operators'
//! phones and a "citizen" behind the carrier. 100 requests acknowledged,
//! `kill -9` before any ran, restart on a slow disk: each number is
//! called exactly once.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{Node, Scratch, Sipp, json, register, scenario};

const TOKEN: &str = "desk-token-0123456789";

fn config(sip: u16, http: u16, citizen_port: u16, sms_port: u16) -> String {
    let mut s = format!(
        r#"[notifications]
url = "http://127.0.0.1:{sms_port}/sms"
retry_seconds = 1

[sip]
listen = ["127.0.0.1:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[[api.tokens]]
name = "desk"
token = "{TOKEN}"
role = "admin"

[[tenants]]
name = "asl"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
outbound = "127.0.0.1:{citizen_port}"
caller_id = "+39800123456"
dids = {{ "100" = "richiamate" }}

[[queues]]
name = "richiamate"
tenant = "asl"
ring_timeout_seconds = 10
max_wait_seconds = 600
"#
    );
    for u in 1001..=1020 {
        s.push_str(&format!(
            "\n[[agents]]\nusername = \"{u}\"\npassword = \"demo{u}\"\ntenant = \"asl\"\nqueues = [\"richiamate\"]\n"
        ));
    }
    s
}

#[test]
fn acknowledged_callbacks_are_each_executed_exactly_once_across_a_kill_9() {
    let scratch = Scratch::new("cb-exec");
    let mut citizen =
        crate::common::far_end(&scratch, "citizen", "citizen_answer.xml", 100, "120s");
    let citizen_port = citizen.port;
    let (sms_port, sms) = crate::common::gateway(false);
    let mut node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, citizen_port, sms_port)
    });
    // 100 requests while no operator is logged in: nothing is claimed
    // (nobody could take them; a claimed callback holds RTP ports).
    for i in 0..100 {
        let (code, body) = node.http(
            "POST",
            "/api/v1/callbacks",
            Some(TOKEN),
            Some(&format!(
                r#"{{"queue": "richiamate", "number": "+39347{i:07}"}}"#
            )),
        );
        assert_eq!(code, 201, "{body}");
    }
    // Twenty operators log in whose phones ring and never answer: twenty
    // callbacks are claimed (one per free operator, not all 100) and ring,
    // none dialled, when the node dies.
    let ringing = Sipp::spawn(
        &scratch,
        "ringing",
        &["-sf", &scenario("agent_noanswer.xml"), "-timeout", "60s"],
    );
    let users: Vec<u32> = (1001..=1020).collect();
    register(&scratch, &node, &users, ringing.port, |u| {
        format!("demo{u}")
    });
    node.wait_metric(
        "centralino_queue_calls{queue=\"richiamate\"}",
        Duration::from_secs(10),
        |v| v == 20.0,
    );
    let in_progress = |node: &Node| {
        let (_, body) = node.http(
            "GET",
            "/api/v1/callbacks?status=in_progress&limit=1000",
            Some(TOKEN),
            None,
        );
        json(&body)["callbacks"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(in_progress(&node), 20, "claimed for free operators only");
    node.kill_hard();
    drop(ringing);

    // A new process on the same store: nothing was dialled, so all 100
    // go back to pending and run once operators log in. Its disk is slow
    // (40 ms per fsync, a congested network volume): twenty operators
    // answer together and each citizen must still be dialled while their
    // operator waits, exactly once (the store commits in groups).
    let node = Node::start_toml_env(
        &scratch,
        "info",
        &crate::common::slow_disk(&scratch, 40_000),
        |sip, http| config(sip, http, citizen_port, sms_port),
    );
    let phones = Sipp::spawn(
        &scratch,
        "phones",
        &[
            "-sf",
            &scenario("agent_hangup.xml"),
            // Past the callback signal (0.6 s), so each operator talks to
            // the citizen: one who hangs up before the citizen is dialled
            // gives the callback back (engine tests), and on a slow disk
            // that would make this test measure fsync latency.
            "-d",
            "1000",
            "-timeout",
            "120s",
        ],
    );
    register(&scratch, &node, &users, phones.port, |u| format!("demo{u}"));
    citizen.expect_success(Duration::from_secs(120));

    let mut called: HashMap<String, u32> = HashMap::new();
    for line in citizen.log_lines() {
        // "called INVITE sip:+393470000001@"
        if let Some(n) = line
            .split("called INVITE sip:")
            .nth(1)
            .and_then(|r| r.split('@').next())
        {
            *called.entry(n.trim().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(called.len(), 100, "every number called: {}", called.len());
    assert!(called.values().all(|&n| n == 1), "each exactly once");

    let done = |node: &Node| {
        let (_, body) = node.http(
            "GET",
            "/api/v1/callbacks?status=done&limit=1000",
            Some(TOKEN),
            None,
        );
        json(&body)["callbacks"].as_array().map_or(0, Vec::len)
    };
    let start = std::time::Instant::now();
    while done(&node) < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} done",
            done(&node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = node.http("GET", "/api/v1/callbacks?status=pending", Some(TOKEN), None);
    assert_eq!(json(&body)["callbacks"].as_array().unwrap().len(), 0);
    // The disk was slow indeed: some transactions took 40 ms or more.
    let commits = node.metric("centralino_store_commit_seconds_count");
    let fast = node.metric("centralino_store_commit_seconds_bucket{le=\"0.02\"}");
    assert!(commits > fast, "{commits} commits, {fast} under 20 ms");
    // Each operator heard the callback signal (the queue records no
    // whisper: the built-in tone) on their phone's media port.
    assert_eq!(
        node.metric("centralino_whispers_total{kind=\"callback\"}"),
        100.0
    );

    // The SMS gateway heard of every booking and every call about to be
    // placed, across the crash (the outbox is in the store). Delivery is at
    // least once: a repeat carries the same key.
    let mut keys: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    let count = |k: &HashMap<String, std::collections::HashSet<String>>, e: &str| {
        k.get(e).map_or(0, std::collections::HashSet::len)
    };
    let start = std::time::Instant::now();
    while count(&keys, "booked") < 100 || count(&keys, "about_to_call") < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "booked {}, about to call {}",
            count(&keys, "booked"),
            count(&keys, "about_to_call")
        );
        if let Ok(body) = sms.recv_timeout(Duration::from_millis(200)) {
            let v = json(&body);
            let event = v["event"].as_str().unwrap_or_default().to_owned();
            let key = v["key"].as_str().unwrap_or_default().to_owned();
            keys.entry(event).or_default().insert(key);
        }
    }
}

/// Operator 1001's SIPp phone, answering one call and hanging up after a
/// second, registered; then a callback to `number` asked of the node.
/// The phone (kept running by the caller) and the API's answer.
fn callback_for(scratch: &Scratch, node: &Node, number: &str) -> (Sipp, String) {
    let phones = Sipp::spawn(
        scratch,
        "phones",
        &[
            "-sf",
            &scenario("agent_hangup.xml"),
            "-m",
            "1",
            "-d",
            "1000",
            "-timeout",
            "60s",
        ],
    );
    register(scratch, node, &[1001], phones.port, |u| format!("demo{u}"));
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(&format!(
            r#"{{"queue": "richiamate", "number": "{number}"}}"#
        )),
    );
    assert_eq!(code, 201, "{body}");
    (phones, body)
}

/// TEST-MATRIX C6 for callbacks: the tenant's first outbound trunk answers
/// 503 (a SIPp carrier that is down); the same attempt goes out through the
/// next trunk at once and the citizen is reached, while the operator waits.
#[test]
fn a_carrier_down_hands_the_callback_to_the_next_trunk() {
    let scratch = Scratch::new("cb-failover");
    let mut down = crate::common::far_end(&scratch, "down", "trunk_down.xml", 1, "60s");
    let mut citizen = crate::common::far_end(&scratch, "citizen", "citizen_answer.xml", 1, "60s");
    let (sms_port, _sms) = crate::common::gateway(false);
    let down_port = down.port;
    let node = Node::start_toml(&scratch, |sip, http| {
        // The carrier that is down comes first: it is the primary.
        config(sip, http, citizen.port, sms_port).replacen(
            "[[trunks]]",
            &format!(
                "[[trunks]]\nname = \"primario\"\ntenant = \"asl\"\npeers = [\"127.0.0.3\"]\noutbound = \"127.0.0.1:{down_port}\"\n\n[[trunks]]"
            ),
            1,
        )
    });
    let (_phones, body) = callback_for(&scratch, &node, "+393471234567");
    down.expect_success(Duration::from_secs(30));
    citizen.expect_success(Duration::from_secs(30));
    let tried = |s: &Sipp, word: &str| {
        s.log_lines()
            .iter()
            .filter(|l| l.contains(&format!("{word} INVITE sip:+393471234567@")))
            .count()
    };
    assert_eq!((tried(&down, "refused"), tried(&citizen, "called")), (1, 1));
    node.wait_metric(
        "centralino_trunk_failovers_total{reason=\"5xx\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    let start = std::time::Instant::now();
    loop {
        let (_, b) = node.http("GET", &format!("/api/v1/callbacks/{id}"), Some(TOKEN), None);
        if json(&b)["status"] == "done" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{b}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 18: a carrier that sends its early media reliably (RFC 3262).
/// The callback's INVITE says it supports `100rel`; the carrier's 183
/// (`Require: 100rel`, `RSeq: 1`, SDP) gets the node's PRACK naming it and
/// the INVITE's CSeq; the citizen answers, talks with the operator, and
/// the BYE when the operator hangs up takes a CSeq above the PRACK's.
#[test]
fn a_carrier_sending_reliable_early_media_gets_its_prack() {
    let scratch = Scratch::new("cb-100rel");
    let mut citizen = crate::common::far_end(&scratch, "citizen", "citizen_reliable.xml", 1, "60s");
    let (sms_port, _sms) = crate::common::gateway(false);
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, citizen.port, sms_port)
    });
    let (_phones, _) = callback_for(&scratch, &node, "+393471234568");
    citizen.expect_success(Duration::from_secs(30));
    let logged = |word: &str| {
        citizen
            .log_lines()
            .iter()
            .find_map(|l| {
                let rest = l.split_once(word)?.1;
                rest.split_whitespace().next()?.parse::<u32>().ok()
            })
            .unwrap_or_else(|| panic!("no {word:?} in {:?}", citizen.log_lines()))
    };
    let (prack, bye) = (logged("PRACK "), logged("BYE "));
    assert!(bye > prack, "BYE CSeq {bye} after PRACK CSeq {prack}");
    assert!(
        citizen
            .log_lines()
            .iter()
            .any(|l| l.contains("acknowledging") && l.trim_end().ends_with(" 1 1 INVITE")),
        "{:?}",
        citizen.log_lines()
    );
    node.wait_metric(
        "centralino_callbacks_total{outcome=\"answered\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
}

/// A callback whose citizen's network plays early media (183 + SDP and
/// 3 s of audio) before the line turns out busy: the waiting operator
/// hears it (what reaches the operator is more than the 0.6 s callback
/// signal), and the attempt ends as busy, to be tried again.
#[test]
fn a_waiting_operator_hears_the_networks_early_media() {
    let scratch = Scratch::new("cb-early");
    let mut citizen =
        crate::common::far_end(&scratch, "citizen", "citizen_early_media.xml", 1, "60s");
    let (sms_port, _sms) = crate::common::gateway(false);
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, citizen.port, sms_port)
    });
    let phone = Sipp::spawn(
        &scratch,
        "phone",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(r#"{"queue": "richiamate", "number": "+393470000001"}"#),
    );
    assert_eq!(code, 201, "{body}");
    citizen.expect_success(Duration::from_secs(30));
    node.wait_metric(
        "centralino_callbacks_total{outcome=\"busy\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    let heard = node.metric("centralino_rtp_packets_total{direction=\"in\",side=\"caller\"}");
    let relayed = node.metric("centralino_rtp_packets_total{direction=\"out\",side=\"operator\"}");
    // 3 s of early media is 150 packets; the callback signal alone is 30.
    // Twice the signal proves the network's audio got through, with room
    // for a loaded machine opening the media a moment late.
    assert!(heard > 60.0, "from the network: {heard}");
    assert!(relayed > 60.0, "to the operator: {relayed}");
    assert_eq!(node.metric("centralino_callback_early_media_total"), 1.0);
}
