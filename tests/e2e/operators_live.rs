//! Operators and queues managed live: an operator added to the file and
//! reloaded (SIGHUP) registers and takes a call without a restart; one
//! removed can no longer register; a queue added with its DID and
//! operator takes calls at once, and leaves when removed.

use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch, Sipp, answering_phone, json, scenario, trunk_to};

#[test]
fn an_operator_added_by_a_reload_takes_a_call_without_a_restart() {
    let scratch = Scratch::new("operators-live");
    let node = one_operator_node(&scratch);
    let file = scratch.path("centralino.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    std::fs::write(
        &file,
        format!(
            "{text}\n[[agents]]\nusername = \"2001\"\npassword = \"demo2001\"\ntenant = \"demo\"\nqueues = [\"info\"]\nskills = {{ vaccini = 5 }}\n"
        ),
    )
    .expect("write");
    node.hangup_signal();
    node.wait_log("configuration reloaded", Duration::from_secs(5));
    assert!(node.logs().contains("operator added"));
    let phone = answering_phone(&scratch, &node, 2001);
    let mut trunk = trunk_to(
        &scratch,
        &node,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "500"],
    );
    trunk.expect_success(Duration::from_secs(30));
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"answered\"}"),
        1.0
    );
    assert_eq!(
        node.metric("centralino_config_reloads_total{outcome=\"applied\"}"),
        1.0
    );
    drop(phone);
    // Removed again: the operator's phone is refused from now on.
    std::fs::write(&file, &text).expect("write");
    node.hangup_signal();
    node.wait_log("operator removed", Duration::from_secs(5));
    let csv = scratch.path("users-again.csv");
    std::fs::write(
        &csv,
        "SEQUENTIAL\n2001;[authentication username=2001 password=demo2001];5099\n",
    )
    .expect("csv");
    let mut again = Sipp::spawn(
        &scratch,
        "again",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("register.xml"),
            "-inf",
            csv.to_str().expect("utf-8 path"),
            "-m",
            "1",
            "-timeout",
            "10s",
        ],
    );
    assert!(
        !again.wait(Duration::from_secs(20)).success(),
        "a removed operator cannot register"
    );
    assert_eq!(
        node.metric("centralino_agents{state=\"available\",tenant=\"demo\"}"),
        0.0
    );
}

const ADMIN: &str = "operators-admin-token";

fn node_with_admin(scratch: &Scratch) -> Node {
    Node::start_toml(scratch, |sip, http| {
        format!(
            "{}\n[[api.tokens]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n",
            NodeConfig {
                agents: 1,
                ..NodeConfig::default()
            }
            .toml(sip, http)
        )
    })
}

/// Operators provisioned through the API: added one by one or in bulk
/// (JSON or CSV, every refusal with its line), registered and offered a
/// call at once, their password changed and removed live; the file's own
/// operators are left alone; they are still there after a restart.
#[test]
fn operators_are_provisioned_through_the_api_without_a_restart() {
    let scratch = Scratch::new("operators-api");
    let node = node_with_admin(&scratch);
    let body = r#"[
        {"username": "3001", "password": "demo3001", "tenant": "demo", "queues": ["info"], "skills": {"vaccini": 7}, "languages": ["it"]},
        {"username": "3002", "password": "demo3002", "tenant": "demo", "queues": ["nessuna"]},
        {"username": "1001", "password": "demo1001", "tenant": "demo"},
        {"username": "3003", "password": "short", "tenant": "demo"}
    ]"#;
    let (code, text) = node.http("POST", "/api/v1/agents", Some(ADMIN), Some(body));
    assert_eq!(code, 201, "{text}");
    let v = json(&text);
    assert_eq!(v["accepted"], 1, "{v}");
    let lines: Vec<u64> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 4], "{v}");
    // A bulk CSV (what a firm's spreadsheet exports).
    let mut csv = String::from("username,password,tenant,queues,skills,languages,site\n");
    for i in 0..2000 {
        let _ = std::fmt::Write::write_fmt(
            &mut csv,
            format_args!(
                "{},pw-{i}-secret,demo,info,vaccini:{},it|en,roma\n",
                5000 + i,
                1 + i % 10
            ),
        );
    }
    let (code, text) = node.http_typed(
        "POST",
        "/api/v1/agents",
        Some(ADMIN),
        "text/csv",
        Some(&csv),
    );
    assert_eq!(code, 201, "{text}");
    assert_eq!(json(&text)["accepted"], 2000, "{text}");
    // 3001 registers and takes a call, no restart.
    let phone = Sipp::spawn(
        &scratch,
        "phone",
        &[
            "-sf",
            &scenario("agent_answer.xml"),
            "-m",
            "1",
            "-timeout",
            "60s",
        ],
    );
    crate::common::register(&scratch, &node, &[3001], phone.port, |u| format!("demo{u}"));
    let mut trunk = trunk_to(
        &scratch,
        &node,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "500"],
    );
    trunk.expect_success(Duration::from_secs(30));
    drop(phone);
    // A new password: the old one no longer logs in to the desk.
    let login = |pw: &str| {
        node.http(
            "POST",
            "/api/v1/login",
            None,
            Some(&format!(r#"{{"username": "3001", "password": "{pw}"}}"#)),
        )
        .0
    };
    assert_eq!(login("demo3001"), 200);
    let (code, text) = node.http(
        "PUT",
        "/api/v1/agents/3001",
        Some(ADMIN),
        Some(r#"{"password": "nuova-password", "tenant": "demo", "queues": ["info"]}"#),
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(login("demo3001"), 401);
    assert_eq!(login("nuova-password"), 200);
    // The file's operator is the file's; an unknown one is unknown.
    assert_eq!(
        node.http("DELETE", "/api/v1/agents/1001", Some(ADMIN), None)
            .0,
        409
    );
    assert_eq!(
        node.http("DELETE", "/api/v1/agents/9999", Some(ADMIN), None)
            .0,
        404
    );
    assert_eq!(
        node.http("DELETE", "/api/v1/agents/5000", Some(ADMIN), None)
            .0,
        204
    );
    let (_, agents) = node.http("GET", "/api/v1/agents", Some(ADMIN), None);
    assert!(!agents.contains("\"5000\"") && agents.contains("\"5001\""));
    // Without a token, or with garbage: refused, nothing kept.
    assert_eq!(node.http("POST", "/api/v1/agents", None, Some("[]")).0, 401);
    assert_eq!(
        node.http("POST", "/api/v1/agents", Some(ADMIN), Some("{"))
            .0,
        400
    );
    // After a restart: still there (the store), the file's too.
    let mut node = node;
    node.terminate();
    node.wait_exit(Duration::from_secs(20));
    drop(node);
    let node = node_with_admin(&scratch);
    let (_, agents) = node.http("GET", "/api/v1/agents", Some(ADMIN), None);
    for name in ["\"1001\"", "\"3001\"", "\"6999\""] {
        assert!(agents.contains(name), "{name} after a restart");
    }
    assert!(!agents.contains("\"5000\""));
    // The file takes a provisioned name: the file's wins, the node
    // starts and reloads (the provisioned one is left out).
    let file = scratch.path("centralino.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    std::fs::write(
        &file,
        format!(
            "{text}\n[[agents]]\nusername = \"6999\"\npassword = \"file-6999\"\ntenant = \"demo\"\n"
        ),
    )
    .expect("write");
    node.hangup_signal();
    node.wait_log("configuration reloaded", Duration::from_secs(10));
    assert!(node.logs().contains("the file's win"));
    assert_eq!(
        node.http("DELETE", "/api/v1/agents/6998", Some(ADMIN), None)
            .0,
        204
    );
}

#[test]
fn a_queue_added_by_a_reload_takes_calls_without_a_restart() {
    let scratch = Scratch::new("queues-live");
    let node = one_operator_node(&scratch);
    let file = scratch.path("centralino.toml");
    let text = std::fs::read_to_string(&file).expect("config");
    assert!(text.contains("dids = { \"100\" = \"info\" }"));
    let with = text.replace(
        "dids = { \"100\" = \"info\" }",
        "dids = { \"100\" = \"info\", \"200\" = \"vaccini\" }",
    ) + "\n[[queues]]\nname = \"vaccini\"\ntenant = \"demo\"\n\n[[agents]]\nusername = \"2001\"\npassword = \"demo2001\"\ntenant = \"demo\"\nqueues = [\"vaccini\"]\n";
    std::fs::write(&file, &with).expect("write");
    node.hangup_signal();
    node.wait_log("queue added", Duration::from_secs(5));
    let phone = answering_phone(&scratch, &node, 2001);
    let mut trunk = Sipp::spawn(
        &scratch,
        "trunk",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("trunk_call.xml"),
            "-s",
            "200",
            "-m",
            "1",
            "-d",
            "500",
            "-timeout",
            "30s",
        ],
    );
    trunk.expect_success(Duration::from_secs(30));
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"answered\"}"),
        1.0
    );
    assert_eq!(
        node.metric("centralino_queue_calls{queue=\"vaccini\"}"),
        0.0
    );
    drop(phone);
    // Removed (no call waits in it): its gauges leave the metrics page
    // (its counters stay: they are its history).
    std::fs::write(&file, &text).expect("write");
    node.hangup_signal();
    node.wait_log("queue removed", Duration::from_secs(5));
    let start = std::time::Instant::now();
    let gauges = |m: &str| {
        m.lines().any(|l| {
            (l.starts_with("centralino_queue_calls{") || l.starts_with("centralino_queue_agents{"))
                && l.contains("queue=\"vaccini\"")
        })
    };
    while gauges(&node.metrics()) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "vaccini's gauges still on the metrics page"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        node.metric("centralino_config_reloads_total{outcome=\"applied\"}"),
        2.0
    );
}

/// A node of the default test configuration with one operator (1001).
fn one_operator_node(scratch: &Scratch) -> Node {
    Node::start(
        scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    )
}
