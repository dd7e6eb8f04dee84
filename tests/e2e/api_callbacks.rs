//! The callbacks API ("Ti chiamiamo noi") against the real binary: bearer
//! tokens, validation with clear messages, de-duplication, edits, and
//! durability: 100 acknowledged requests survive `kill -9`.

use std::time::Duration;

use crate::common::{Node, Scratch, json, media_trunk, wav};
use serde_json::Value;

const TOKEN: &str = "demo-admin-token";

fn config(sip: u16, http: u16) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{sip}"]

[http]
listen = "127.0.0.1:{http}"

[[api.tokens]]
name = "web"
token = "{TOKEN}"
role = "admin"

[[api.tokens]]
name = "form"
token = "web-form-token-0123456789"
role = "callbacks"

[[api.tokens]]
name = "desk-1001"
token = "desk-1001-token-0123456789"
role = "agent"
agent = "1001"

[[api.tokens]]
name = "sala-asl"
token = "supervisor-asl-token-0123"
role = "supervisor"
tenant = "asl"

[[api.tokens]]
name = "sala-altra"
token = "supervisor-altra-token-01"
role = "supervisor"
tenant = "altra"

[[tenants]]
name = "asl"

[[tenants]]
name = "altra"

[[queues]]
name = "altra-info"
tenant = "altra"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
dids = {{ "100" = "vaccini" }}

[[queues]]
name = "vaccini"
tenant = "asl"

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
queues = ["vaccini"]
languages = ["it"]
"#
    )
}

#[test]
fn callbacks_are_created_validated_deduplicated_edited_and_cancelled() {
    let scratch = Scratch::new("api");
    let node = Node::start_toml(&scratch, config);
    let post = |body: &str| node.http("POST", "/api/v1/callbacks", Some(TOKEN), Some(body));

    // No token, a wrong token.
    let (code, body) = node.http("POST", "/api/v1/callbacks", None, Some("{}"));
    assert_eq!(code, 401, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("Bearer"));
    let (code, _) = node.http("GET", "/api/v1/callbacks", Some("wrong-token-123456"), None);
    assert_eq!(code, 401);

    // Created: 201 with an id, pending.
    let (code, body) = post(
        r#"{"queue": "vaccini", "number": "+393331234567", "not_before": "2026-12-01T09:00:00+01:00", "requirements": "lang == \"it\"", "priority": 2}"#,
    );
    assert_eq!(code, 201, "{body}");
    let cb = json(&body);
    let id = cb["id"].as_str().unwrap().to_owned();
    assert_eq!(cb["status"], "pending");
    assert_eq!(cb["not_before"], "2026-12-01T08:00:00Z");
    assert_eq!(cb["priority"], 2);

    // The same number for the same queue while pending: the same request.
    let (code, body) = post(r#"{"queue": "vaccini", "number": "+393331234567"}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["id"], id.as_str());
    assert_eq!(json(&body)["deduplicated"], true);
    // Stored as the dial plan reads it (E.164, what the trunk will dial):
    // the national and `00` spellings are the same request.
    for spelling in ["3331234567", "00393331234567"] {
        let (code, body) = post(&format!(
            r#"{{"queue": "vaccini", "number": "{spelling}"}}"#
        ));
        assert_eq!(code, 200, "{spelling}: {body}");
        assert_eq!(json(&body)["id"], id.as_str());
        assert_eq!(json(&body)["number"], "+393331234567");
    }

    // Every invalid field named, no state.
    for (bad, says) in [
        (
            r#"{"queue": "nessuna", "number": "+393331234567"}"#,
            "queue: unknown queue",
        ),
        (r#"{"queue": "vaccini", "number": "333-12"}"#, "number:"),
        (
            r#"{"queue": "vaccini", "number": "+393331234568", "not_before": "domani"}"#,
            "not_before:",
        ),
        (
            r#"{"queue": "vaccini", "number": "+393331234568", "requirements": "klingon > 3"}"#,
            "requirements:",
        ),
        (
            r#"{"queue": "vaccini", "number": "+393331234568", "priority": 1000}"#,
            "priority:",
        ),
        (
            r#"{"queue": "vaccini", "number": "+393331234568", "colour": "red"}"#,
            "invalid JSON body",
        ),
        (r#"{"queue": "vaccini""#, "invalid JSON body"),
    ] {
        let (code, body) = post(bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(
            json(&body)["error"].as_str().unwrap().contains(says),
            "{bad}: {body}"
        );
    }
    let huge = format!(
        r#"{{"queue": "vaccini", "number": "{}"}}"#,
        "1".repeat(20_000)
    );
    assert_eq!(post(&huge).0, 413);

    // Read, list, edit, cancel.
    let (code, body) = node.http("GET", &format!("/api/v1/callbacks/{id}"), Some(TOKEN), None);
    assert_eq!(
        (code, json(&body)["status"].clone()),
        (200, "pending".into())
    );
    assert_eq!(
        node.http("GET", "/api/v1/callbacks/nope", Some(TOKEN), None)
            .0,
        404
    );
    let (code, body) = node.http("GET", "/api/v1/callbacks?status=pending", Some(TOKEN), None);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["callbacks"].as_array().unwrap().len(), 1);
    assert_eq!(
        node.http("GET", "/api/v1/callbacks?status=maybe", Some(TOKEN), None)
            .0,
        400
    );
    let (code, body) = node.http(
        "PATCH",
        &format!("/api/v1/callbacks/{id}"),
        Some(TOKEN),
        Some(r#"{"not_before": null, "priority": 5}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            json(&body)["not_before"].clone(),
            json(&body)["priority"].clone()
        ),
        (Value::Null, 5.into())
    );
    let (code, body) = node.http(
        "DELETE",
        &format!("/api/v1/callbacks/{id}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(
        (code, json(&body)["status"].clone()),
        (200, "cancelled".into())
    );
    // A cancelled request cannot change; the number may ask again.
    let (code, _) = node.http(
        "PATCH",
        &format!("/api/v1/callbacks/{id}"),
        Some(TOKEN),
        Some(r#"{"priority": 1}"#),
    );
    assert_eq!(code, 409);
    assert_eq!(
        post(r#"{"queue": "vaccini", "number": "+393331234567"}"#).0,
        201
    );
    assert_eq!(
        node.metric("centralino_callbacks_total{outcome=\"rejected\"}"),
        5.0
    );
    // The backlog's gauges, read from the store every few seconds: the
    // one request open (the cancelled one is done).
    node.wait_metric(
        "centralino_queue_callbacks_open{queue=\"vaccini\"}",
        Duration::from_secs(15),
        |v| v == 1.0,
    );
    let age = node.metric("centralino_queue_callbacks_oldest_seconds{queue=\"vaccini\"}");
    assert!((0.0..60.0).contains(&age), "asked for moments ago: {age}");
    let logs = node.logs();
    assert!(!logs.contains("3331234567"), "numbers masked in the log");
}

/// Each role reaches what it is for: the web form's token the callbacks
/// only, an operator's token their own desk, scripts and calls; the desk's
/// WebSocket refuses what is not a WebSocket, an unknown operator, another
/// operator's token.
#[test]
fn an_operator_logs_in_with_their_sip_password_and_reaches_their_own_desk_only() {
    let scratch = Scratch::new("api-login");
    let node = Node::start_toml(&scratch, config);
    let login = |user: &str, password: &str| {
        node.http(
            "POST",
            "/api/v1/login",
            None,
            Some(&format!(
                r#"{{"username": "{user}", "password": "{password}"}}"#
            )),
        )
    };
    let (code, body) = login("1001", "demo1001");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["agent"], "1001");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // Their own desk: authorised (no call now); anything else: 403.
    let (code, body) = node.http("GET", "/api/v1/agents/1001/call", Some(&token), None);
    assert_eq!(code, 404, "{body}");
    for path in [
        "/api/v1/agents/1002/call",
        "/api/v1/callbacks",
        "/api/v1/queues",
    ] {
        let (code, body) = node.http("GET", path, Some(&token), None);
        assert_eq!(code, 403, "{path}: {body}");
    }
    let (code, _) = node.http(
        "POST",
        "/api/v1/agents/1001/state",
        Some(&token),
        Some(r#"{"state": "paused"}"#),
    );
    assert_eq!(
        code, 409,
        "logged out of SIP: no break to take, but authorised"
    );
    // A token edited by hand is refused.
    let forged = token.replacen("1001", "1002", 1);
    let (code, body) = node.http("GET", "/api/v1/agents/1002/call", Some(&forged), None);
    assert_eq!((code, body.contains("log in again")), (401, true), "{body}");

    // A wrong password and an unknown operator get the same answer.
    let wrong = login("1001", "guess");
    let unknown = login("9999", "demo1001");
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong, unknown);
    let (code, body) = node.http(
        "POST",
        "/api/v1/login",
        None,
        Some(r#"{"username": "1001"}"#),
    );
    assert_eq!(code, 400, "{body}");
    // Guessing: after the registrar's 5 failures (one was above) the
    // address is banned, and even the right password is refused.
    for _ in 0..4 {
        assert_eq!(login("1001", "guess").0, 401);
    }
    let (code, body) = login("1001", "demo1001");
    assert_eq!(code, 429, "{body}");
    // The session given before the guessing still works.
    let (code, _) = node.http("GET", "/api/v1/agents/1001/call", Some(&token), None);
    assert_eq!(code, 404);
    assert_eq!(
        node.metric("centralino_api_requests_total{code=\"401\",route=\"login\"}"),
        6.0
    );

    // Who logged in, and what their session read, is in the audit log
    // (a clean stop writes what is still on its way to the disk).
    let mut node = node;
    node.terminate();
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    drop(node);
    let store = centralino_store::Store::open(&scratch.path("data").join("centralino.db"))
        .expect("the node's store");
    let audit: Vec<(String, String, u16)> = store
        .audit_tail(100)
        .expect("audit")
        .into_iter()
        .map(|e| (e.actor, e.action, e.status))
        .collect();
    for want in [
        ("desk:1001", "login", 200),
        ("desk:1001", "agent_call", 403),
        ("desk:1001", "agent_state", 409),
        ("desk:1001", "login", 401),
        ("desk:1001", "login", 429),
    ] {
        assert!(
            audit
                .iter()
                .any(|(a, r, c)| (a.as_str(), r.as_str(), *c) == want),
            "{want:?} in {audit:?}"
        );
    }
}

#[test]
fn tokens_reach_only_what_their_role_is_for() {
    let scratch = Scratch::new("api-roles");
    let node = Node::start_toml(&scratch, config);
    let form = Some("web-form-token-0123456789");
    let desk = Some("desk-1001-token-0123456789");
    for (method, path, token, want) in [
        ("GET", "/api/v1/callbacks", form, 200),
        ("GET", "/api/v1/agents/1001/call", form, 403),
        ("POST", "/api/v1/config/reload", form, 403),
        ("GET", "/api/v1/callbacks", desk, 403),
        ("GET", "/api/v1/agents/1001/call", desk, 404),
        ("GET", "/api/v1/agents/1002/call", desk, 403),
        ("GET", "/api/v1/scripts/nessuno", desk, 404),
        ("POST", "/api/v1/config/reload", desk, 403),
        ("GET", "/api/v1/agents/1001/call", Some(TOKEN), 404),
        // Not a WebSocket upgrade, another operator, nobody, no token.
        ("GET", "/api/v1/agents/1001/events", desk, 426),
        ("GET", "/api/v1/agents/1002/events", desk, 403),
        ("GET", "/api/v1/agents/9999/events", Some(TOKEN), 404),
        ("GET", "/api/v1/agents/1001/events", None, 401),
    ] {
        let (code, body) = node.http(method, path, token, None);
        assert_eq!(code, want, "{method} {path} {token:?}: {body}");
        if code >= 400 {
            assert!(json(&body)["error"].is_string(), "{body}");
        }
    }
    // The operator's break: checked, and refused while logged out.
    for (body, token, want) in [
        (r#"{"state": "paused"}"#, desk, 409),
        (r#"{"state": "asleep"}"#, desk, 400),
        (r#"{"state": "paused", "reason": "no spaces"}"#, desk, 400),
        (r#"{"state": "paused"}"#, form, 403),
    ] {
        let (code, text) = node.http("POST", "/api/v1/agents/1001/state", token, Some(body));
        assert_eq!(code, want, "{body}: {text}");
    }
    let (code, _) = node.http(
        "POST",
        "/api/v1/agents/9999/state",
        Some(TOKEN),
        Some(r#"{"state": "paused"}"#),
    );
    assert_eq!(code, 404);
    // A HEAD is answered by the GET handler: counted and audited as the
    // GET (an outside review found HEAD went unrecorded).
    let (code, _) = node.http("HEAD", "/api/v1/agents/1003/call", desk, None);
    assert_eq!(code, 403);
    // A browser's WebSocket: the token in the query; the current state
    // comes at once.
    let events = crate::common::desk_events(&node, "1001", "desk-1001-token-0123456789");
    let first = events.recv_timeout(Duration::from_secs(5)).expect("event");
    assert_eq!(first["event"], "idle");
    node.wait_metric("centralino_desk_connections", Duration::from_secs(5), |v| {
        v == 1.0
    });
    assert!(
        node.metric("centralino_api_requests_total{code=\"403\",route=\"agent_events\"}") >= 1.0
    );
    // The audit log names who did what, by token name (never the token),
    // refusals included; anonymous requests are not in it. `centralino
    // audit` checks the chain while the node runs.
    let audit = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_centralino"))
            .args(["audit", "--tail", "100", "--data-dir"])
            .arg(scratch.path("data"))
            .output()
            .expect("centralino audit");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let start = std::time::Instant::now();
    let (code, text) = loop {
        let (code, text) = audit();
        if text.contains("desk-1001\tagent_events\t1001\t101") {
            break (code, text);
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "{text}");
    for want in [
        "form\tcallbacks_list\t\t200",
        "form\tagent_call\t",
        "desk-1001\tagent_state\t1001\t409",
        "web\tagent_state\t9999\t404",
        "desk-1001\tagent_call\t1003\t403",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    assert!(text.contains("audit log intact"), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains("token-0123456789"));
}

/// The `seq:mac` of the head the node logged after entry `seq`.
fn logged_head(node: &Node, seq: u64) -> String {
    let needle = format!("audit head seq={seq} mac=");
    node.wait_log(&needle, Duration::from_secs(5));
    let logs = node.logs();
    let at = logs.find(&needle).expect("logged") + needle.len();
    format!("{seq}:{}", &logs[at..at + 64])
}

#[test]
fn the_audit_log_is_keyed_its_files_owner_only_and_a_cut_tail_caught_by_the_logged_head() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("api-audit-head");
    let data = scratch.path("data");
    let audit = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_centralino"))
            .arg("audit")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .env_remove("CENTRALINO_CONFIG")
            .output()
            .expect("centralino audit");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let list = |node: &Node| {
        let (code, body) = node.http("GET", "/api/v1/callbacks", Some(TOKEN), None);
        assert_eq!(code, 200, "{body}");
    };
    let mut node = Node::start_toml(&scratch, config);
    assert!(
        node.logs()
            .contains("audit key created beside the database"),
        "{}",
        node.logs()
    );
    for _ in 0..3 {
        list(&node);
    }
    let third = logged_head(&node, 3);
    // Owner-only: the directory, the database with its WAL and SHM (the
    // node is running), the key.
    let mode = |f: &str| {
        std::fs::metadata(data.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for f in [
        "centralino.db",
        "centralino.db-wal",
        "centralino.db-shm",
        "audit.key",
    ] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    let key = std::fs::read_to_string(data.join("audit.key")).expect("key");
    assert!(!node.logs().contains(key.trim()), "the key is never logged");
    let (code, text) = audit(&["--expect-head", &third]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("audit log intact: 3 entries"), "{text}");

    // Across a restart: the same key, the chain goes on.
    node.terminate();
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    drop(node);
    let mut node = Node::start_toml(&scratch, config);
    assert!(
        !node.logs().contains("audit key created"),
        "{}",
        node.logs()
    );
    list(&node);
    let fourth = logged_head(&node, 4);
    let conf = scratch.path("centralino.toml");
    let (code, text) = audit(&[
        "--config",
        conf.to_str().expect("utf-8"),
        "--expect-head",
        &third,
        "--expect-head",
        &fourth,
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("audit log intact: 4 entries"), "{text}");
    // Another key: broken.
    let other = scratch.path("other.key");
    std::fs::write(&other, "0123456789abcdef0123456789abcdef\n").expect("key");
    let (code, text) = audit(&["--key-file", other.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("BROKEN"), "{text}");
    node.terminate();
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    drop(node);

    // Someone with the file removes the last entry: the rest is a valid
    // chain, and only the head from the log shows what is missing.
    let db = rusqlite::Connection::open(data.join("centralino.db")).expect("db");
    db.execute_batch("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 4;")
        .expect("cut");
    drop(db);
    let (code, text) = audit(&[]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = audit(&["--expect-head", &fourth]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("audit log CUT: the node logged entry 4 and the log ends at entry 3"),
        "{text}"
    );
    // Not a head: refused with what is expected.
    let (code, text) = audit(&["--expect-head", "4"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("expected N:HEX"), "{text}");
}

#[test]
fn acknowledged_callbacks_survive_kill_9() {
    let scratch = Scratch::new("api-kill");
    let mut node = Node::start_toml(&scratch, config);
    let mut ids = Vec::new();
    for i in 0..100 {
        let (code, body) = node.http(
            "POST",
            "/api/v1/callbacks",
            Some(TOKEN),
            Some(&format!(
                r#"{{"queue": "vaccini", "number": "+39333{i:07}"}}"#
            )),
        );
        assert_eq!(code, 201, "{body}");
        ids.push(json(&body)["id"].as_str().unwrap().to_owned());
    }
    node.kill_hard();
    // Same data directory (the scratch's), new process.
    let node = Node::start_toml(&scratch, config);
    let (code, body) = node.http(
        "GET",
        "/api/v1/callbacks?status=pending&limit=1000",
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200);
    let listed: Vec<String> = json(&body)["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    let mut want = ids.clone();
    want.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(
        got, want,
        "every acknowledged request is still pending, once"
    );
    node.wait_metric("centralino_calls_active", Duration::from_secs(1), |v| {
        v == 0.0
    });
}

/// A node whose queue "vaccini" offers virtual hold on key 1, with
/// `extra` queue settings; its prompts are short tones.
fn vhold_node(scratch: &Scratch, extra: &str) -> Node {
    let prompts = scratch.path("prompts");
    std::fs::create_dir_all(&prompts).expect("prompts dir");
    for name in ["richiamata", "il-numero", "conferma", "inserisca"] {
        std::fs::write(prompts.join(format!("{name}.wav")), wav(&[300; 2400])).expect("prompt");
    }
    Node::start_toml(scratch, |sip, http| {
        config(sip, http)
            .replacen(
                "[[api.tokens]]",
                &format!("[media]\nprompts_dir = \"{}\"\n\n[[api.tokens]]", prompts.display()),
                1,
            )
            .replace(
                "name = \"vaccini\"\ntenant = \"asl\"\n",
                &format!("name = \"vaccini\"\ntenant = \"asl\"\ncallback_key = \"1\"\ncallback_confirm_prompts = [\"richiamata\"]\n{extra}"),
            )
    })
}

/// The pending callbacks' (number, source, queue).
fn pending(node: &Node) -> Vec<(String, String, String)> {
    let (code, body) = node.http("GET", "/api/v1/callbacks?status=pending", Some(TOKEN), None);
    assert_eq!(code, 200);
    json(&body)["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let f = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (f("number"), f("source"), f("queue"))
        })
        .collect()
}

#[test]
fn a_waiting_caller_who_presses_1_is_called_back_and_keeps_the_place() {
    let scratch = Scratch::new("api-vhold");
    let node = vhold_node(&scratch, "");
    let mut trunk = media_trunk(
        &scratch,
        &node,
        "trunk",
        "trunk_virtual_hold.xml",
        "100",
        "0",
    );
    trunk.expect_success(Duration::from_secs(25));
    assert_eq!(
        pending(&node),
        [("+39333001".into(), "ivr".into(), "vaccini".into())]
    );
    node.wait_metric(
        "centralino_queue_calls{queue=\"vaccini\"}",
        Duration::from_secs(5),
        |v| v == 0.0,
    );
}

/// With `callback_number`, the caller hears their number read back and
/// may key in another (the caller id is a landline; they want the mobile).
/// The test is the caller's phone at the RTP level and keys: 1 (call me
/// back), 2 (another number), 3471234567#, 1 (confirmed).
#[test]
fn a_waiting_caller_keys_in_another_number_for_the_callback() {
    let scratch = Scratch::new("api-vhold-number");
    let node = vhold_node(
        &scratch,
        "[queues.callback_number]\nread_prompts = [\"il-numero\"]\nconfirm_prompts = [\"conferma\"]\nenter_prompts = [\"inserisca\"]\n",
    );
    let phone = std::net::UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    phone
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let port = phone.local_addr().expect("addr").port().to_string();
    let mut trunk = crate::common::Sipp::spawn(
        &scratch,
        "trunk",
        &[
            &node.sip_addr(),
            "-sf",
            &crate::common::scenario("trunk_virtual_hold_keys.xml"),
            "-s",
            "100",
            "-m",
            "1",
            "-key",
            "caller_rtp",
            &port,
            "-timeout",
            "30s",
        ],
    );
    // The node's RTP address: where the music comes from.
    let mut buf = [0u8; 2048];
    let start = std::time::Instant::now();
    let node_rtp = loop {
        assert!(start.elapsed() < Duration::from_secs(10), "no music");
        if let Ok((_, from)) = phone.recv_from(&mut buf) {
            break from;
        }
    };
    let mut keypad = crate::common::Keypad::new();
    for (keys, pause_ms) in [("1", 300), ("2", 1500), ("3471234567#", 300), ("1", 1000)] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        for k in keys.chars() {
            keypad.press(&phone, node_rtp, k);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    trunk.expect_success(Duration::from_secs(20));
    assert_eq!(
        pending(&node),
        // Stored as the dial plan reads the keyed number (national).
        [("+393471234567".into(), "ivr".into(), "vaccini".into())]
    );
    assert_eq!(
        node.metric("centralino_callbacks_total{outcome=\"number_confirmed\"}"),
        1.0
    );
}

/// A node whose SMS hook posts to `port` (retry after 1 s, `attempts`),
/// with one callback booked for `number`: (node, the booking's answer).
fn node_with_hook(scratch: &Scratch, port: u16, attempts: u32, number: &str) -> (Node, String) {
    node_with_hook_at(
        scratch,
        &format!("url = \"http://127.0.0.1:{port}/sms\"\nmax_attempts = {attempts}"),
        number,
    )
}

/// The same with `hook` as the `[notifications]` table's own lines.
fn node_with_hook_at(scratch: &Scratch, hook: &str, number: &str) -> (Node, String) {
    let node = Node::start_toml(scratch, |sip, http| {
        format!(
            "{}\n[notifications]\n{hook}\ntoken = \"gw-secret\"\nretry_seconds = 1\n",
            config(sip, http)
        )
    });
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(&format!(r#"{{"queue": "vaccini", "number": "{number}"}}"#)),
    );
    assert_eq!(code, 201, "{body}");
    (node, body)
}

#[test]
fn the_sms_hook_is_told_of_each_booking_retried_and_never_lost() {
    let scratch = Scratch::new("api-sms");
    let (port, bodies) = crate::common::gateway(true);
    let (node, body) = node_with_hook(&scratch, port, 3, "+393331234567");
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    // Refused once (500), delivered on the retry.
    for attempt in 0..2 {
        let got = bodies
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("attempt {attempt} never reached the gateway"));
        let v = json(&got);
        assert_eq!(
            (v["event"].as_str(), v["callback"].as_str()),
            (Some("booked"), Some(id.as_str()))
        );
        assert_eq!(v["number"], "+393331234567");
    }
    node.wait_metric(
        "centralino_notifications_total{event=\"booked\",outcome=\"sent\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    assert_eq!(
        node.metric("centralino_notifications_total{event=\"booked\",outcome=\"retry\"}"),
        1.0
    );
    // A gateway that never answers: the notification becomes a dead
    // letter after the last attempt, kept in the store.
    drop(bodies);
    let dead_port = crate::common::free_port();
    let scratch2 = Scratch::new("api-sms-dead");
    let (node2, _) = node_with_hook(&scratch2, dead_port, 2, "+393337654321");
    node2.wait_metric(
        "centralino_notifications_total{event=\"booked\",outcome=\"dead_letter\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    // The metric counts the attempt; its record reaches the disk with the
    // store's next commit.
    let store =
        centralino_store::Store::open(&scratch2.path("data").join("centralino.db")).unwrap();
    let start = std::time::Instant::now();
    loop {
        let n = store.notifications().unwrap();
        if n == [("booked".to_owned(), "dead".to_owned())] {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{n:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The SMS hook over HTTPS to a gateway whose certificate comes from the
/// firm's own CA (`ca_file`); without that CA the certificate is not
/// trusted and nothing is sent (retried, then a dead letter).
#[test]
fn the_sms_hook_speaks_https_and_trusts_only_known_certificates() {
    let scratch = Scratch::new("api-sms-https");
    let gw = crate::common::https_gateway(&scratch);
    let (port, ca, posts) = (gw.port, &gw.ca, &gw.posts);
    let (node, body) = node_with_hook_at(
        &scratch,
        &format!(
            "url = \"https://127.0.0.1:{port}/sms\"\nca_file = \"{}\"",
            ca.display()
        ),
        "+393331234567",
    );
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    let line = posts
        .recv_timeout(Duration::from_secs(10))
        .expect("the booking reached the HTTPS gateway");
    let (auth, payload) = line.split_once('\t').expect("auth and body");
    assert_eq!(auth, "Bearer gw-secret");
    let v = json(payload);
    assert_eq!(
        (v["event"].as_str(), v["callback"].as_str()),
        (Some("booked"), Some(id.as_str()))
    );
    drop(node);

    // The system's CAs only: the gateway's certificate is refused.
    let scratch2 = Scratch::new("api-sms-https-untrusted");
    let (node2, _) = node_with_hook_at(
        &scratch2,
        &format!("url = \"https://127.0.0.1:{port}/sms\"\nmax_attempts = 2"),
        "+393337654321",
    );
    node2.wait_metric(
        "centralino_notifications_total{event=\"booked\",outcome=\"dead_letter\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    assert!(
        posts.try_recv().is_err(),
        "nothing reached a gateway we do not trust"
    );
    assert!(node2.logs().contains("tls"), "the log says why");
}

/// The supervisor's view: each tenant's supervisor sees their own queues
/// and operators only (D12), pushed over a WebSocket too; operators' and
/// web forms' tokens see none of it.
#[test]
fn supervisors_see_their_own_tenant_only() {
    let scratch = Scratch::new("api-supervisor");
    let node = Node::start_toml(&scratch, config);
    let asl = Some("supervisor-asl-token-0123");
    let altra = Some("supervisor-altra-token-01");
    let names = |token| {
        let (code, body) = node.http("GET", "/api/v1/queues", token, None);
        assert_eq!(code, 200, "{body}");
        json(&body)["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(asl), ["vaccini"]);
    assert_eq!(names(altra), ["altra-info"]);
    assert_eq!(names(Some(TOKEN)), ["altra-info", "vaccini"], "admin: all");
    // The callbacks not done yet, per queue (the wallboard's backlog).
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(r#"{"queue": "vaccini", "number": "+393331234567"}"#),
    );
    assert_eq!(code, 201, "{body}");
    let (_, body) = node.http("GET", "/api/v1/queues", asl, None);
    let vaccini = &json(&body)["queues"][0];
    assert_eq!(vaccini["callbacks_open"], 1, "{body}");
    assert!(
        vaccini["callbacks_oldest_seconds"].as_i64().is_some(),
        "{body}"
    );
    let (_, body) = node.http("GET", "/api/v1/queues", altra, None);
    assert_eq!(json(&body)["queues"][0]["callbacks_open"], 0, "{body}");
    for token in ["desk-1001-token-0123456789", "web-form-token-0123456789"] {
        assert_eq!(node.http("GET", "/api/v1/queues", Some(token), None).0, 403);
        assert_eq!(node.http("GET", "/api/v1/agents", Some(token), None).0, 403);
    }
    let (_, body) = node.http("GET", "/api/v1/agents", asl, None);
    assert_eq!(
        json(&body)["agents"],
        serde_json::json!([{ "agent": "1001", "tenant": "asl", "state": "logged_out", "reason": null, "seconds_in_state": null }])
    );
    let (_, body) = node.http("GET", "/api/v1/agents", altra, None);
    assert_eq!(json(&body)["agents"], serde_json::json!([]));
    // The wall board follows over a WebSocket: a caller waiting in
    // "vaccini" shows up there (nobody is logged in to answer).
    let url = format!("ws://127.0.0.1:{}/api/v1/queues/events", node.http_port);
    // A token in the URL is refused: URLs end up in proxies' logs.
    let in_url = format!("{url}?access_token=supervisor-asl-token-0123");
    match tungstenite::connect(in_url) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!(
            "a token in the URL must be refused: {:?}",
            other.map(|_| ())
        ),
    }
    let mut ws = crate::common::ws_connect(&url, "supervisor-asl-token-0123");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    let mut next = || loop {
        if let tungstenite::Message::Text(t) = ws.read().expect("an event within 10 s") {
            return json(t.as_str());
        }
    };
    let first = next();
    assert_eq!(first["queues"][0]["waiting"], 0);
    assert_eq!(first["queues"].as_array().map(Vec::len), Some(1));
    let _trunk = crate::common::trunk_to(&scratch, &node, "trunk", "trunk_call.xml", &["-m", "1"]);
    let waiting = loop {
        let e = next();
        if e["queues"][0]["waiting"] == 1 {
            break e;
        }
    };
    assert_eq!(waiting["queues"][0]["name"], "vaccini");
    assert!(waiting["seq"].as_u64() > first["seq"].as_u64());
    assert!(
        waiting["queues"][0]["oldest_wait_seconds"]
            .as_u64()
            .is_some()
    );
}

/// TEST-MATRIX D11: every route of the API (the router is built from
/// `centralino_net::routes()`, so a new route is in this test by
/// construction) refuses a request with no token, an unknown token, a
/// desk session that expired and one signed with another key, with `401`.
/// Only the login takes none.
#[test]
fn every_route_refuses_missing_unknown_expired_and_forged_tokens() {
    use aws_lc_rs::hmac;
    let scratch = Scratch::new("api-d11");
    let key = b"0123456789abcdef0123456789abcdef";
    std::fs::write(scratch.path("session.key"), key).unwrap();
    let key_file = scratch.path("session.key");
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http).replacen(
            "[[api.tokens]]",
            &format!(
                "[api]\nsession_key_file = \"{}\"\n\n[[api.tokens]]",
                key_file.display()
            ),
            1,
        )
    });
    // The MAC covers the token's text and the operator's current secret
    // (their HA1s): a new password ends their sessions.
    let secret = {
        let c = centralino_sip::auth::Credentials::from_password("1001", "centralino", "demo1001");
        format!(
            "{}:{}",
            c.ha1_md5.unwrap_or_default(),
            c.ha1_sha256.unwrap_or_default()
        )
    };
    let sign = |key: &[u8], agent: &str, expires: i64| {
        let body = format!("cs1.{agent}.{expires}");
        let signed = [body.as_bytes(), b"\0", secret.as_bytes()].concat();
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &signed);
        let hex: String = mac.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{body}.{hex}")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The key file is honoured: a session signed with it, still valid,
    // reaches the operator's desk.
    let valid = sign(key, "1001", now + 600);
    let (code, _) = node.http("GET", "/api/v1/agents/1001/call", Some(&valid), None);
    assert_eq!(code, 404, "authorised, no call now");
    let expired = sign(key, "1001", now - 1);
    let forged = sign(b"another-key-another-key-another-", "1001", now + 600);
    let routes = centralino_net::routes();
    assert!(routes.len() >= 12, "{routes:?}");
    let mut calls = 0;
    for (path, methods) in routes {
        let path = path.replace("{name}", "1001").replace("{id}", "x");
        for method in methods {
            let body = (*method != "GET" && *method != "DELETE").then_some("{}");
            if path == "/api/v1/openapi.json" {
                // Public: the API's description, the routes of this very
                // table (checked in `api::openapi`).
                let (code, doc) = node.http(method, &path, None, None);
                assert_eq!(code, 200, "{doc}");
                let file = scratch.path("openapi.json");
                std::fs::write(&file, &doc).expect("write the document");
                // The specification's own validator (scripts/test installs
                // it) agrees it is OpenAPI 3.1.
                let validator = std::env::var("CENTRALINO_OPENAPI_VALIDATOR")
                    .unwrap_or_else(|_| "openapi-spec-validator".into());
                let out = std::process::Command::new(&validator)
                    .arg(&file)
                    .output()
                    .unwrap_or_else(|e| panic!("{validator} (scripts/test installs it): {e}"));
                assert!(
                    out.status.success(),
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let doc = json(&doc);
                assert_eq!(doc["openapi"], "3.1.0");
                for (p, ms) in centralino_net::routes() {
                    for m in ms {
                        let op = &doc["paths"][p][m.to_ascii_lowercase()];
                        assert!(op["operationId"].is_string(), "{m} {p} not described");
                    }
                }
                continue;
            }
            if path == "/api/v1/login" && *method != "GET" {
                // Public: logging in (an empty body is a bad request, not
                // a session) and logging out (clears one's own cookie).
                let want = if *method == "POST" { 400 } else { 204 };
                assert_eq!(node.http(method, &path, None, body).0, want);
                continue;
            }
            for token in [
                None,
                Some("no-such-token-0123456789"),
                Some(&expired[..]),
                Some(&forged[..]),
            ] {
                let (code, resp) = node.http(method, &path, token, body);
                assert_eq!(code, 401, "{method} {path} with {token:?}: {resp}");
                calls += 1;
            }
        }
    }
    assert!(calls >= 4 * 14, "{calls} refusals");
    let m = node.metrics();
    assert!(
        m.lines()
            .filter(|l| l.starts_with("centralino_api_requests_total{code=\"401\""))
            .count()
            >= 12,
        "every route counted its refusals"
    );
}

/// `centralino ARGS` to its end (a start refused ends at once): exit code
/// and stderr. A process still running after 30 s is killed and fails.
fn run_to_end(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_centralino"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn centralino");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("centralino {args:?} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// TEST-MATRIX D12 across restarts: a queue's callbacks and records name
/// the queue, so a queue keeps its firm for the life of the store. A start
/// or a reload giving it to another firm is refused (firm B's operators
/// would dial firm A's pending callbacks through B's trunk); the move is
/// made on purpose, with the node stopped and nothing of A waiting.
#[test]
fn a_queue_keeps_its_firm_across_restarts_unless_moved_on_purpose() {
    let scratch = Scratch::new("api-owners");
    let data = scratch.path("data");
    // `vaccini` and everything serving it moved to `altra`; `altra-info`
    // left out (bound to `altra` by the first start all the same).
    let moved = |sip: u16, http: u16| {
        config(sip, http)
            .replace("tenant = \"asl\"\npeers", "tenant = \"altra\"\npeers")
            .replace(
                "name = \"vaccini\"\ntenant = \"asl\"",
                "name = \"vaccini\"\ntenant = \"altra\"",
            )
            .replace(
                "password = \"demo1001\"\ntenant = \"asl\"",
                "password = \"demo1001\"\ntenant = \"altra\"",
            )
            .replace(
                "[[queues]]\nname = \"altra-info\"\ntenant = \"altra\"\n",
                "",
            )
    };
    let conf = scratch.path("moved.toml");
    std::fs::write(
        &conf,
        moved(crate::common::free_port(), crate::common::free_port()),
    )
    .unwrap();
    let rebind = |history: bool| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "rebind-queue".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--config".as_ref(),
            conf.as_os_str(),
            "--queue".as_ref(),
            "vaccini".as_ref(),
            "--tenant".as_ref(),
            "altra".as_ref(),
        ];
        if history {
            args.push("--with-history".as_ref());
        }
        run_to_end(&args)
    };
    let mut node = Node::start_toml(&scratch, config);
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(r#"{"queue": "vaccini", "number": "+393331234567"}"#),
    );
    assert_eq!(code, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    // Never under a running node.
    let (code, text) = rebind(true);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("in use by another Centralino"), "{text}");
    node.kill_hard();

    // Restarted with `vaccini` given to `altra`: refused, named.
    let (code, text) = run_to_end(&[
        "serve".as_ref(),
        "--config".as_ref(),
        conf.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains(r#"queue "vaccini" belongs to tenant "asl" in this database"#)
            && text.contains(r#"not "altra""#)
            && text.contains("rebind-queue"),
        "{text}"
    );
    // Moving it on purpose is refused while asl's callback waits.
    let (code, text) = rebind(true);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("1 callbacks pending or in progress for tenant \"asl\""),
        "{text}"
    );

    // asl's node again: its callback is still there, still asl's.
    let node = Node::start_toml(&scratch, config);
    let (code, body) = node.http("GET", &format!("/api/v1/callbacks/{id}"), Some(TOKEN), None);
    assert_eq!(
        (code, json(&body)["status"].clone()),
        (200, "pending".into()),
        "{body}"
    );
    let (code, body) = node.http(
        "DELETE",
        &format!("/api/v1/callbacks/{id}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200, "{body}");
    drop(node);

    // The cancelled callback is asl's history: it goes only on purpose.
    let (code, text) = rebind(false);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--with-history"), "{text}");
    let (code, text) = rebind(true);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("moved from tenant \"asl\" to \"altra\""),
        "{text}"
    );
    let (code, text) = run_to_end(&[
        "audit".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--tail".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("rebind_queue\tqueue:vaccini:asl->altra:with_history"),
        "{text}"
    );

    // altra's node starts; a reload that gives `altra-info` (bound to
    // altra by the first start, absent here) to asl is refused, named.
    let node = Node::start_toml(&scratch, moved);
    let file = scratch.path("centralino.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    // With it, a new queue `sportello` for asl: the refused reload binds
    // none of its names, so `sportello` can then go to altra.
    let extra = |tenant: &str, sportello: &str| {
        format!(
            "{text}\n[[queues]]\nname = \"altra-info\"\ntenant = \"{tenant}\"\n\n[[queues]]\nname = \"sportello\"\ntenant = \"{sportello}\"\n"
        )
    };
    std::fs::write(&file, extra("asl", "asl")).unwrap();
    let (code, body) = node.http("POST", "/api/v1/config/reload", Some(TOKEN), None);
    assert_eq!(code, 409, "{body}");
    let v = json(&body);
    assert_eq!(v["applied"], false);
    assert_eq!(v["queues"], serde_json::json!(["altra-info"]));
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("belongs to tenant \"altra\""),
        "{body}"
    );
    assert_eq!(
        node.metric("centralino_config_reloads_total{outcome=\"refused\"}"),
        1.0
    );
    // Given back to its own firm: applied.
    std::fs::write(&file, extra("altra", "altra")).unwrap();
    let (code, body) = node.http("POST", "/api/v1/config/reload", Some(TOKEN), None);
    assert_eq!(code, 200, "{body}");
}
