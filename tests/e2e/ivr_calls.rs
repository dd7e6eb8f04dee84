//! IVR flows end to end: SIPp is the carrier trunk and keys in RFC 4733
//! digits from its own captures (`/usr/share/sip-tester/dtmf_2833_*.pcap`,
//! played with `play_pcap_audio`); SIPp phones are the operators. The
//! node's log and metrics say where each call went.

use std::path::Path;
use std::time::Duration;

use crate::common::{Node, Scratch, Sipp, media_trunk, register, scenario, wav};

/// A 0.3 s tone, so prompts end quickly.
fn beep(path: &Path) {
    let samples: Vec<i16> = (0..2400)
        .map(|i| ((f64::from(i) * 0.3).sin() * 4000.0) as i16)
        .collect();
    std::fs::write(path, wav(&samples)).expect("write prompt");
}

/// What a desk's WebSocket pushed after its first event, checked in
/// order (each sequence number the previous one's successor).
#[derive(Default)]
struct DeskLog {
    events: Vec<serde_json::Value>,
}

impl DeskLog {
    /// Reads events until one matches `done` (10 s at most).
    fn until(
        &mut self,
        rx: &std::sync::mpsc::Receiver<serde_json::Value>,
        done: impl Fn(&serde_json::Value) -> bool,
    ) {
        loop {
            let e = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("events so far: {:?}", self.events));
            let seq = e["seq"].as_u64().expect("seq");
            assert_eq!(seq, self.events.len() as u64 + 2, "{e}");
            let stop = done(&e);
            self.events.push(e);
            if stop {
                return;
            }
        }
    }
}

/// Operator 1003's own API token (role `agent`).
const DESK_1003: &str = "desk-1003-token-0123456789";
/// Operator 1001's (who takes no call with a script here).
const DESK_1001: &str = "desk-1001-token-0123456789";

fn config(sip: u16, http: u16, prompts: &Path) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[media]
prompts_dir = "{prompts}"

[[tenants]]
name = "asl"

# Another firm, with no queue here (its scripts are no asl operator's).
[[tenants]]
name = "altra"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
dids = {{ "800" = {{ flow = "vaccini" }}, "801" = {{ flow = "notte" }} }}

[[queues]]
name = "info"
tenant = "asl"
requirements = "info"
max_wait_seconds = 1

[[queues]]
name = "prenotazioni"
tenant = "asl"
requirements = "vaccini >= 5"
ring_timeout_seconds = 10
script = "prenotazione"

[[scripts]]
name = "prenotazione"
tenant = "asl"
start = "dose"
[scripts.questions.dose]
text = "Ha già ricevuto la prima dose?"
answers = {{ "si" = "data", "no" = "end" }}
[scripts.questions.data]
text = "In che data?"
kind = "date"

# A national script no call here uses.
[[scripts]]
name = "sintomi"
start = "febbre"
[scripts.questions.febbre]
text = "Ha febbre?"

[[api.tokens]]
name = "ops"
token = "desk-token-0123456789"
role = "admin"

[[api.tokens]]
name = "desk-1003"
token = "desk-1003-token-0123456789"
role = "agent"
agent = "1003"

[[api.tokens]]
name = "desk-1001"
token = "desk-1001-token-0123456789"
role = "agent"
agent = "1001"

# Level 1: 1 = vaccines, 2 = information. Level 2 (vaccines): 1 = Italian,
# 2 = English. Level 3: 3 = a fragile caller (booking for a disabled
# person), priority 5.
[[flows]]
name = "vaccini"
start = "l1"
[flows.nodes.l1]
type = "menu"
prompts = ["menu1"]
options = {{ "1" = "l2", "2" = "q-info" }}
timeout_seconds = 10
on_fail = "q-info"
[flows.nodes.l2]
type = "menu"
prompts = ["menu2"]
options = {{ "1" = "it", "2" = "en" }}
timeout_seconds = 10
on_fail = "q-info"
[flows.nodes.it]
type = "set"
language = "it"
next = "l3"
[flows.nodes.en]
type = "set"
language = "en"
next = "l3"
[flows.nodes.l3]
type = "menu"
prompts = ["menu3"]
options = {{ "3" = "fragile", "4" = "q-book" }}
timeout_seconds = 10
on_fail = "q-book"
[flows.nodes.fragile]
type = "set"
fragile = true
priority = 5
variables = {{ motivo = "disabile" }}
next = "q-book"
[flows.nodes.q-book]
type = "enqueue"
queue = "prenotazioni"
[flows.nodes.q-info]
type = "enqueue"
queue = "info"

# Nights and weekends: never open in this test.
[[flows]]
name = "notte"
start = "orari"
[flows.nodes.orari]
type = "condition"
calendar = {{ days = [], hours = ["08:00-18:00"] }}
then = "q-info"
else = "offerta"
[flows.nodes.offerta]
type = "callback"
prompts = ["menu1"]
queue = "info"
timeout_seconds = 2
confirm_prompts = ["menu2"]
on_fail = "chiuso"
[flows.nodes.chiuso]
type = "hangup"
prompts = ["chiuso"]
[flows.nodes.q-info]
type = "enqueue"
queue = "info"

# Vaccines but Italian only: must not get the English caller.
[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
skills = {{ vaccini = 9 }}
languages = ["it"]

# Vaccines in English, too little skill: must not get it either.
[[agents]]
username = "1002"
password = "demo1002"
tenant = "asl"
skills = {{ vaccini = 3 }}
languages = ["en"]

# The one who qualifies.
[[agents]]
username = "1003"
password = "demo1003"
tenant = "asl"
skills = {{ vaccini = 6, info = 1 }}
languages = ["it", "en"]
"#,
        prompts = prompts.display()
    )
}

/// A caller to DID 800 keying 1, 2, 3 (`trunk_ivr.xml`), on the line for
/// `talk_ms` after the keys.
fn ivr_trunk(scratch: &Scratch, node: &Node, talk_ms: &str) -> Sipp {
    media_trunk(scratch, node, "trunk", "trunk_ivr.xml", "800", talk_ms)
}

/// A second process on the same scratch (same data directory, same prompts).
fn node_again(scratch: &Scratch) -> Node {
    let prompts = scratch.path("prompts");
    Node::start_toml(scratch, |sip, http| config(sip, http, &prompts))
}

fn node(scratch: &Scratch) -> Node {
    node_with(scratch, |c| c)
}

/// A node on the test configuration, changed by `edit`.
fn node_with(scratch: &Scratch, edit: impl Fn(String) -> String) -> Node {
    let prompts = scratch.path("prompts");
    std::fs::create_dir_all(&prompts).expect("prompts dir");
    for p in ["menu1", "menu2", "menu3", "chiuso"] {
        beep(&prompts.join(format!("{p}.wav")));
    }
    Node::start_toml(scratch, |sip, http| edit(config(sip, http, &prompts)))
}

#[test]
fn a_caller_walks_three_levels_into_the_right_queue_with_the_right_needs() {
    let scratch = Scratch::new("ivr");
    let node = node(&scratch);
    let phones = Sipp::spawn(
        &scratch,
        "phones",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&scratch, &node, &[1001, 1002, 1003], phones.port, |u| {
        format!("demo{u}")
    });
    node.wait_metric(
        "centralino_queue_agents{queue=\"prenotazioni\",state=\"available\"}",
        Duration::from_secs(5),
        |v| v == 2.0,
    );
    // Operator 1003's desktop follows their desk (its own token); it may
    // not read another operator's desk nor the callbacks.
    let mine = Some(DESK_1003);
    let events = crate::common::desk_events(&node, "1003", DESK_1003);
    assert_eq!(
        events
            .recv_timeout(Duration::from_secs(5))
            .expect("first event"),
        serde_json::json!({ "event": "idle", "seq": 1 })
    );
    assert_eq!(
        node.http("GET", "/api/v1/agents/1001/call", mine, None).0,
        403
    );
    assert_eq!(node.http("GET", "/api/v1/callbacks", mine, None).0, 403);
    // A short break from the desktop, back before the call: both in the
    // queue log.
    let state = |body: &str| node.http("POST", "/api/v1/agents/1003/state", mine, Some(body));
    let (code, body) = state(r#"{"state": "paused", "reason": "pausa_caffe"}"#);
    assert_eq!(
        (code, crate::common::json(&body)["state"].clone()),
        (200, "paused".into()),
        "{body}"
    );
    // The desktop sees it: its own state comes from the board.
    let mut desk_log = DeskLog::default();
    desk_log.until(&events, |e| e["event"] == "agent" && e["state"] == "paused");
    let (code, body) = state(r#"{"state": "available"}"#);
    assert_eq!(
        (code, crate::common::json(&body)["state"].clone()),
        (200, "available".into()),
        "{body}"
    );
    node.wait_metric(
        "centralino_queue_agents{queue=\"prenotazioni\",state=\"available\"}",
        Duration::from_secs(5),
        |v| v == 2.0,
    );
    let mut trunk = ivr_trunk(&scratch, &node, "2000");
    // While the operator talks, their desktop can read the call: the IVR's
    // answers and the queue's script.
    let mut desk = None;
    while trunk.try_wait().is_none() {
        let (code, body) = node.http("GET", "/api/v1/agents/1003/call", mine, None);
        if code == 200 {
            desk = Some(crate::common::json(&body));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let desk = desk.expect("the operator's desktop saw the call");
    assert_eq!(desk["queue"], "prenotazioni");
    assert_eq!(desk["flow"], "vaccini");
    assert_eq!(desk["script"], "prenotazione");
    assert_eq!(desk["variables"]["motivo"], "disabile");
    trunk.expect_success(Duration::from_secs(45));
    // Over: nothing on the desktop any more.
    let (code, _) = node.http("GET", "/api/v1/agents/1003/call", mine, None);
    assert_eq!(code, 404);
    // The WebSocket pushed it all, in order (sequence numbers rising):
    // the call offered (with the IVR's answers and the script), connected,
    // idle; and, between them, the operator's own state from the board:
    // available, paused for the break (reason manual), then on the call.
    desk_log.until(&events, |e| e["event"] == "idle");
    let calls: Vec<&serde_json::Value> = desk_log
        .events
        .iter()
        .filter(|e| e["event"] != "agent")
        .collect();
    let seen: Vec<&str> = calls
        .iter()
        .map(|e| e["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(seen, ["offered", "connected", "idle"]);
    for e in &calls[..2] {
        assert_eq!(e["queue"], "prenotazioni");
        assert_eq!(e["flow"], "vaccini");
        assert_eq!(e["script"], "prenotazione");
        assert_eq!(e["variables"]["motivo"], "disabile");
        assert_eq!(e["call"], desk["call"]);
    }
    let states: Vec<(&str, Option<&str>)> = desk_log
        .events
        .iter()
        .filter(|e| e["event"] == "agent")
        .map(|e| (e["state"].as_str().unwrap_or(""), e["reason"].as_str()))
        .collect();
    assert_eq!(
        states[..2],
        [("available", None), ("paused", Some("manual"))]
    );
    assert!(states.contains(&("on_call", None)), "{states:?}");
    assert_eq!(node.metric("centralino_desk_connections"), 1.0);
    // 1 (vaccines), 2 (English), 3 (fragile): "prenotazioni", English
    // speakers with vaccini >= 5 only: 1003.
    let logs = node.logs();
    let answered: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("call answered"))
        .collect();
    assert_eq!(answered.len(), 1, "{logs}");
    assert!(
        answered[0].contains("agent=1003") && answered[0].contains("queue=prenotazioni"),
        "{}",
        answered[0]
    );
    let keys = logs
        .lines()
        .filter(|l| l.contains("key press received"))
        .count();
    assert_eq!(keys, 3, "each key once:\n{logs}");
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(
            &m,
            "centralino_flow_calls_total{flow=\"vaccini\",outcome=\"queued\"}"
        ),
        1.0
    );
    assert_eq!(
        crate::common::metric_in(&m, "centralino_dtmf_digits_total{source=\"rfc4733\"}"),
        3.0
    );
    assert!(!logs.contains("3933300"), "caller number unmasked");

    // The call record and the queue log in the store (SQLite, read here
    // as an operator's report would).
    let store = centralino_store::Store::open(&scratch.path("data").join("centralino.db"))
        .expect("the node's store");
    let start = std::time::Instant::now();
    let cdr = loop {
        let cdrs = store.recent_cdrs(10).expect("cdrs");
        if let Some(c) = cdrs.first().filter(|c| c.ended_at.is_some()) {
            break c.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no closed call record: {cdrs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(cdr.outcome.as_deref(), Some("caller_hangup"));
    assert_eq!(cdr.queue.as_deref(), Some("prenotazioni"));
    assert_eq!(cdr.agent.as_deref(), Some("1003"));
    assert!(
        cdr.caller.starts_with("+3933300"),
        "the store keeps the number until retention"
    );
    let events: Vec<String> = store
        .queue_events(&cdr.id)
        .expect("events")
        .into_iter()
        .map(|(e, q, a)| format!("{e} {q} {}", a.unwrap_or_default()))
        .collect();
    assert_eq!(
        events,
        [
            "enter prenotazioni ",
            "offer prenotazioni 1003",
            "connect prenotazioni 1003",
            "complete prenotazioni 1003",
        ]
    );
    let mut breaks = store.agent_events("1003").expect("agent events");
    breaks.retain(|(e, _)| e != "login");
    assert_eq!(
        breaks,
        [
            ("pause".to_owned(), Some("pausa_caffe".to_owned())),
            ("unpause".to_owned(), None)
        ]
    );

    // The operator's desktop reads the queue's script and stores the
    // answers with the call record (their own call: the last one).
    let token = mine;
    let (code, body) = node.http("GET", "/api/v1/scripts/prenotazione", token, None);
    assert_eq!(code, 200, "{body}");
    // Another operator, whose desk never had a call with that script,
    // does not know it, nor does 1003 know a script their calls did not
    // use; an admin reads any.
    let (code, _) = node.http("GET", "/api/v1/scripts/prenotazione", Some(DESK_1001), None);
    assert_eq!(code, 404);
    let (code, _) = node.http("GET", "/api/v1/scripts/sintomi", token, None);
    assert_eq!(code, 404);
    let (code, _) = node.http(
        "GET",
        "/api/v1/scripts/sintomi",
        Some("desk-token-0123456789"),
        None,
    );
    assert_eq!(code, 200);
    let (code, _) = node.http(
        "GET",
        "/api/v1/scripts/prenotazione",
        Some("desk-token-0123456789"),
        None,
    );
    assert_eq!(code, 200);
    assert!(
        body.contains("\"start\":\"dose\"") && body.contains("prima dose"),
        "{body}"
    );
    let (code, body) = node.http(
        "POST",
        &format!("/api/v1/calls/{}/answers", cdr.id),
        token,
        Some(r#"{"agent": "1003", "answers": {"dose": "si", "data": "12052021"}}"#),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        store.answers(&cdr.id).expect("answers"),
        [
            ("data".into(), "12052021".into()),
            ("dose".into(), "si".into())
        ]
    );
    let (code, _) = node.http(
        "POST",
        &format!("/api/v1/calls/{}/answers", cdr.id),
        token,
        Some(r#"{"agent": "1001", "answers": {"dose": "no"}}"#),
    );
    assert_eq!(code, 403, "not under another operator's name");
    let (code, _) = node.http(
        "POST",
        "/api/v1/calls/unknown/answers",
        token,
        Some(r#"{"answers": {"dose": "no"}}"#),
    );
    assert_eq!(code, 403, "not another operator's call");
    let (code, _) = node.http(
        "POST",
        "/api/v1/calls/unknown/answers",
        Some("desk-token-0123456789"),
        Some(r#"{"answers": {"dose": "no"}}"#),
    );
    assert_eq!(code, 404);
    // The audit log: operator 1003's desktop read this call's data once
    // by polling and once over the WebSocket (however often it polled),
    // and saved the answers.
    let start = std::time::Instant::now();
    loop {
        let log: Vec<(String, String, String, u16)> = store
            .audit_tail(100)
            .expect("audit")
            .into_iter()
            .map(|e| (e.actor, e.action, e.target, e.status))
            .collect();
        let count = |action: &str, status: u16| {
            log.iter()
                .filter(|(who, what, target, st)| {
                    who == "desk-1003" && what == action && *target == cdr.id && *st == status
                })
                .count()
        };
        if count("calls_answers", 403) == 1 {
            assert_eq!(count("agent_call", 200), 1, "{log:?}");
            assert_eq!(count("agent_events_call", 200), 1, "{log:?}");
            assert_eq!(count("calls_answers", 201), 1, "{log:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{log:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The chain holds over every entry, keyed with the audit key the node
    // created beside its database. The node may still be adding entries
    // (desktop reads) between two reads here: retried until two
    // consecutive reads agree, but a broken chain fails at once.
    let key = centralino_store::AuditKey::from_file(
        &scratch.path("data").join(centralino_store::AUDIT_KEY_FILE),
    )
    .expect("the node's audit key");
    let start = std::time::Instant::now();
    loop {
        let before = log_len(&store);
        let verified = store
            .verify_audit(&key)
            .expect("verify")
            .map(|chain| chain.entries);
        assert!(
            verified.is_ok(),
            "the audit chain is broken at {verified:?}"
        );
        if verified == Ok(before) && log_len(&store) == before {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{verified:?} vs {before}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A reload gives the name `prenotazione` to the other firm's script
    // (the queue now uses the national one): operator 1003's desk still
    // remembers the name from their call, but it is not their firm's.
    let file = scratch.path("centralino.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    let moved = text
        .replace("script = \"prenotazione\"", "script = \"sintomi\"")
        .replace(
            "name = \"prenotazione\"\ntenant = \"asl\"",
            "name = \"prenotazione\"\ntenant = \"altra\"",
        );
    assert_ne!(moved, text);
    std::fs::write(&file, moved).expect("write");
    node.hangup_signal();
    node.wait_log("configuration reloaded", Duration::from_secs(5));
    let (code, _) = node.http("GET", "/api/v1/scripts/prenotazione", token, None);
    assert_eq!(
        code, 404,
        "another firm's script under a name the desk kept"
    );
}

/// Entries in the node's audit log.
fn log_len(store: &centralino_store::Store) -> u64 {
    store.audit_tail(1000).expect("audit").len() as u64
}

#[test]
fn calls_in_progress_at_kill_9_are_closed_as_interrupted_on_restart() {
    let scratch = Scratch::new("ivr-kill");
    let mut node = node(&scratch);
    // Keys 1, 2, 3 into "prenotazioni" where nobody is logged in: waits.
    let _trunk = ivr_trunk(&scratch, &node, "60000");
    node.wait_metric(
        "centralino_queue_calls{queue=\"prenotazioni\"}",
        Duration::from_secs(15),
        |v| v == 1.0,
    );
    // Wait until the call's record is on disk (batches leave every 200 ms).
    let db = scratch.path("data").join("centralino.db");
    let store = centralino_store::Store::open(&db).expect("the node's store");
    let start = std::time::Instant::now();
    while store.recent_cdrs(10).expect("cdrs").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no call record written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(store);
    node.kill_hard();
    let node = node_again(&scratch);
    node.wait_log("closed as interrupted", Duration::from_secs(5));
    let store = centralino_store::Store::open(&db).expect("the node's store");
    let cdrs = store.recent_cdrs(10).expect("cdrs");
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0].outcome.as_deref(), Some("interrupted"));
    assert!(cdrs[0].ended_at.is_some());
    drop(node);
}

#[test]
fn outside_opening_hours_the_caller_hears_closed_and_is_hung_up_on() {
    let scratch = Scratch::new("ivr-closed");
    let node = node(&scratch);
    closed_call(&scratch, &node, "trunk");
    assert_eq!(
        node.metric("centralino_flow_calls_total{flow=\"notte\",outcome=\"hung_up\"}"),
        1.0
    );
    assert_eq!(
        node.metric_or_zero("centralino_queue_enqueued_total{queue=\"info\"}"),
        0.0
    );
    node.wait_metric("centralino_media_sessions", Duration::from_secs(5), |v| {
        v == 0.0
    });
}

fn closed_call(scratch: &Scratch, node: &Node, label: &str) {
    let mut trunk = media_trunk(scratch, node, label, "trunk_ivr_closed.xml", "801", "0");
    trunk.expect_success(Duration::from_secs(25));
}

#[test]
fn sighup_reloads_the_flows_for_new_calls() {
    let scratch = Scratch::new("ivr-reload");
    let node = node(&scratch);
    closed_call(&scratch, &node, "before");
    assert_eq!(
        node.metric("centralino_flow_calls_total{flow=\"notte\",outcome=\"hung_up\"}"),
        1.0
    );
    // Open every day, all day: the same DID now queues its callers (and
    // the queue's 1 s maximum wait ends the call with a BYE).
    let file = scratch.path("centralino.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    let open = text.replace(
        "calendar = { days = [], hours = [\"08:00-18:00\"] }",
        "calendar = { days = [\"lun\", \"mar\", \"mer\", \"gio\", \"ven\", \"sab\", \"dom\"], hours = [\"00:00-24:00\"] }",
    );
    assert_ne!(open, text);
    // First an invalid file: refused, the running configuration stays.
    std::fs::write(
        &file,
        open.replace("start = \"orari\"", "start = \"nowhere\""),
    )
    .expect("write");
    node.hangup_signal();
    node.wait_log("configuration not reloaded", Duration::from_secs(5));
    assert!(
        node.logs().contains("unknown node \"nowhere\""),
        "the problem is named"
    );
    std::fs::write(&file, open).expect("write");
    node.hangup_signal();
    node.wait_log("configuration reloaded", Duration::from_secs(5));
    closed_call(&scratch, &node, "after");
    assert_eq!(
        node.metric("centralino_flow_calls_total{flow=\"notte\",outcome=\"queued\"}"),
        1.0
    );
    assert_eq!(
        node.metric("centralino_config_reloads_total{outcome=\"applied\"}"),
        1.0
    );

    // The same through the API: applied, invalid (400, the problem named),
    // refused (409: a queue's strategy needs a restart).
    let token = Some("desk-token-0123456789");
    let (code, body) = node.http("POST", "/api/v1/config/reload", token, None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(crate::common::json(&body)["applied"], true);
    let text = std::fs::read_to_string(&file).expect("config");
    std::fs::write(
        &file,
        text.replace("start = \"orari\"", "start = \"nowhere\""),
    )
    .expect("write");
    let (code, body) = node.http("POST", "/api/v1/config/reload", token, None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown node"), "{body}");
    // A queue renamed is one removed and one added: applied live.
    let renamed = text
        .replace("name = \"info\"\n", "name = \"info2\"\n")
        .replace("queue = \"info\"", "queue = \"info2\"");
    std::fs::write(&file, &renamed).expect("write");
    let (code, body) = node.http("POST", "/api/v1/config/reload", token, None);
    assert_eq!(code, 200, "{body}");
    let changed = &crate::common::json(&body)["changed"];
    assert!(
        changed.as_array().is_some_and(
            |c| c.contains(&"queues[info2]".into()) && c.contains(&"queues[info]".into())
        ),
        "{body}"
    );
    // A queue's strategy shapes its pools: that needs a restart.
    std::fs::write(
        &file,
        renamed.replace(
            "name = \"info2\"\n",
            "name = \"info2\"\nstrategy = \"round_robin\"\n",
        ),
    )
    .expect("write");
    let (code, body) = node.http("POST", "/api/v1/config/reload", token, None);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("restart"), "{body}");
    assert_eq!(
        node.http("POST", "/api/v1/config/reload", None, None).0,
        401
    );
}

#[test]
fn outside_opening_hours_a_caller_accepts_a_callback_and_is_never_a_dead_end() {
    let scratch = Scratch::new("ivr-offer");
    let node = node(&scratch);
    let mut trunk = media_trunk(
        &scratch,
        &node,
        "trunk",
        "trunk_ivr_callback.xml",
        "801",
        "0",
    );
    trunk.expect_success(Duration::from_secs(25));
    let (code, body) = node.http(
        "GET",
        "/api/v1/callbacks?status=pending",
        Some("desk-token-0123456789"),
        None,
    );
    assert_eq!(code, 200);
    let list = crate::common::json(&body)["callbacks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(
        (list[0]["queue"].as_str(), list[0]["source"].as_str()),
        (Some("info"), Some("ivr"))
    );
    assert_eq!(list[0]["number"], "+39333001");
    assert_eq!(
        node.metric("centralino_callbacks_total{outcome=\"ivr_created\"}"),
        1.0
    );
    // The flow hangs up after the confirmation: the call ends as the
    // callback's request (an `ivr_hangup` would be a dead end; the node
    // then has no dead-end series at all).
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"callback_requested\"}"),
        1.0
    );
}

/// A node whose DID 802 runs flow `esterno`: a transfer to +390612345000
/// through the trunk's outbound address, the far end's SIPp on
/// `far_port`, hanging up when it fails.
fn transfer_node(scratch: &Scratch, far_port: u16) -> Node {
    node_with(scratch, |c| {
        c.replacen(
            "peers = [\"127.0.0.1\"]",
            &format!("peers = [\"127.0.0.1\"]\noutbound = \"127.0.0.1:{far_port}\""),
            1,
        )
        .replacen(
            "\"801\" = { flow = \"notte\" }",
            "\"801\" = { flow = \"notte\" }, \"802\" = { flow = \"esterno\" }",
            1,
        ) + "\n[[flows]]\nname = \"esterno\"\nstart = \"passa\"\n[flows.nodes.passa]\ntype = \"transfer\"\nnumber = \"+390612345000\"\non_fail = \"fine\"\n[flows.nodes.fine]\ntype = \"hangup\"\n"
    })
}

#[test]
fn an_ivr_transfer_reaches_an_external_number_through_the_trunk() {
    let scratch = Scratch::new("ivr-transfer");
    // The external number's phone, behind the carrier.
    let mut far = crate::common::far_end(&scratch, "far", "citizen_answer.xml", 1, "30s");
    let far_port = far.port;
    let node = transfer_node(&scratch, far_port);
    let mut caller = Sipp::spawn(
        &scratch,
        "caller",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("trunk_call.xml"),
            "-s",
            "802",
            "-m",
            "1",
            "-d",
            "1000",
            "-timeout",
            "30s",
        ],
    );
    caller.expect_success(Duration::from_secs(30));
    far.expect_success(Duration::from_secs(10));
    assert!(
        far.log_lines()
            .iter()
            .any(|l| l.contains("INVITE sip:+390612345000@")),
        "the external number was dialled"
    );
    assert_eq!(
        node.metric("centralino_flow_calls_total{flow=\"esterno\",outcome=\"transferred\"}"),
        1.0
    );
}

/// Issue 18: the far network's early media on a transfer. The number's
/// carrier answers 183 with SDP and 3 s of A-law audio, then 486: the
/// caller hears that audio (relayed from the transfer's port to the
/// caller's), then the flow's fallback hangs up on them.
#[test]
fn a_transfers_caller_hears_the_far_networks_early_media() {
    let scratch = Scratch::new("ivr-transfer-early");
    let mut far = crate::common::far_end(&scratch, "far", "citizen_early_media.xml", 1, "30s");
    let far_port = far.port;
    let node = transfer_node(&scratch, far_port);
    let mut caller = Sipp::spawn(
        &scratch,
        "caller",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("trunk_hangup_by_agent.xml"),
            "-s",
            "802",
            "-m",
            "1",
            "-timeout",
            "30s",
        ],
    );
    far.expect_success(Duration::from_secs(20));
    caller.expect_success(Duration::from_secs(10));
    assert_eq!(node.metric("centralino_transfer_early_media_total"), 1.0);
    // 3 s of audio is 150 packets; half of them proves the relay with
    // room for a loaded machine.
    let from_far = node.metric("centralino_rtp_packets_total{direction=\"in\",side=\"operator\"}");
    let to_caller = node.metric("centralino_rtp_packets_total{direction=\"out\",side=\"caller\"}");
    assert!(from_far > 75.0, "from the far network: {from_far}");
    assert!(to_caller > 75.0, "to the caller: {to_caller}");
}
