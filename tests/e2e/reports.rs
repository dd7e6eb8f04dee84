//! The queues' service figures (README, "Service figures") end to end:
//! SIPp callers who give up early, give up late and are answered; the
//! report endpoint (JSON and CSV, each firm its own queues),
//! `centralino report` on the same store, and a real Prometheus (Debian's)
//! scraping the node with the shipped recording rules all agree with what
//! happened.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Node, Prometheus, Scratch, Sipp, panel_queries, register, scenario, trunk_to};

const ADMIN: &str = "report-admin-token-0123456789";
const SUPERVISOR: &str = "report-supervisor-token-0123456789";
const OTHER_FIRM: &str = "report-other-firm-token-0123456789";

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
name = "sala-altra"
token = "{OTHER_FIRM}"
role = "supervisor"
tenant = "altra"

[[tenants]]
name = "asl"

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
wrap_up_seconds = 2

[[queues]]
name = "estranea"
tenant = "altra"

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
queues = ["info"]
"#
    )
}

#[test]
fn the_report_counts_each_callers_fate_for_its_firm_only() {
    let scratch = Scratch::new("reports");
    let node = Node::start_toml(&scratch, config);
    let prometheus = Prometheus::start(&scratch, &node);
    // Nobody logged in: one caller gives up after 1 s (a short abandon),
    // another after 7 s (abandoned). Neither reached anyone.
    let mut short = trunk_to(
        &scratch,
        &node,
        "short",
        "trunk_cancel.xml",
        &["-m", "1", "-d", "1000"],
    );
    let mut late = trunk_to(
        &scratch,
        &node,
        "late",
        "trunk_cancel.xml",
        &["-m", "1", "-d", "7000"],
    );
    short.expect_success(Duration::from_secs(20));
    late.expect_success(Duration::from_secs(20));
    // The operator logs in; a third caller is answered and talks 1 s.
    let mut phone = Sipp::spawn(
        &scratch,
        "phone",
        &["-sf", &scenario("agent_answer.xml"), "-m", "1"],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    let mut answered = trunk_to(
        &scratch,
        &node,
        "answered",
        "trunk_call.xml",
        &["-m", "1", "-d", "1000"],
    );
    answered.expect_success(Duration::from_secs(20));
    phone.expect_success(Duration::from_secs(10));
    // The store has it within a group commit. An hour either side of now:
    // one interval, whatever the time of day.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (from, to) = (
        centralino_types::time::rfc3339(now - 3600),
        centralino_types::time::rfc3339(now + 3600),
    );
    let path = format!("/api/v1/reports/queues?interval=1d&from={from}&to={to}");
    let path = path.as_str();
    let start = Instant::now();
    let row = loop {
        let (status, body) = node.http("GET", path, Some(ADMIN), None);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let rows = v["intervals"].as_array().cloned().unwrap_or_default();
        if let Some(r) = rows.first().filter(|r| r["aht_seconds"].is_number()) {
            assert_eq!(rows.len(), 1, "{v}");
            break r.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row["queue"], "info");
    for (key, want) in [
        ("offered", 3),
        ("answered", 1),
        ("answered_within_t", 1),
        ("abandoned", 1),
        ("short_abandoned", 1),
        ("timed_out", 0),
        ("dead_ends", 2),
    ] {
        assert_eq!(row[key], want, "{key}: {row}");
    }
    // One answered within T against one abandoned after the short
    // threshold; the short one left out of both ratios.
    assert_eq!(row["service_level"], 0.5, "{row}");
    assert_eq!(row["abandon_rate"], 0.5, "{row}");
    assert_eq!(row["service_level_seconds"], 20);
    let aht = row["aht_seconds"].as_f64().unwrap();
    assert!(
        (2.9..5.0).contains(&aht),
        // Each timed to the millisecond: a 999 ms talk is 1 s here.
        "1 s of talk and 2 s of wrap-up: {aht}"
    );
    // The firm's supervisor sees the same; another firm's sees nothing of it.
    let (_, body) = node.http("GET", path, Some(SUPERVISOR), None);
    assert!(body.contains("\"offered\":3"), "{body}");
    let (status, body) = node.http("GET", path, Some(OTHER_FIRM), None);
    assert_eq!((status, body.contains("info")), (200, false), "{body}");
    // CSV for a spreadsheet: the header, then the same row.
    let (status, csv) = node.http_accept(path, SUPERVISOR, "text/csv");
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[0].starts_with("start,queue,offered,answered,"),
        "{csv}"
    );
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(
        (fields[1], fields[2], fields[3]),
        ("info", "3", "1"),
        "{csv}"
    );
    // Bad bounds are refused with a reason.
    for (q, why) in [
        ("interval=5m", "interval"),
        ("from=ieri", "from"),
        ("limit=1", "unknown"),
    ] {
        let (status, body) = node.http(
            "GET",
            &format!("/api/v1/reports/queues?{q}"),
            Some(ADMIN),
            None,
        );
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(why), "{q}: {body}");
    }
    // `centralino report` on the same store says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("report")
        .arg("--data-dir")
        .arg(scratch.path("data"))
        .arg("--config")
        .arg(scratch.path("centralino.toml"))
        .args(["--interval", "1d", "--from", &from, "--to", &to])
        .output()
        .expect("centralino report");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["intervals"][0]["offered"], 3, "{v}");
    assert_eq!(v["intervals"][0]["service_level"], 0.5, "{v}");
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("report")
        .arg("--data-dir")
        .arg(scratch.path("nowhere"))
        .output()
        .expect("centralino report");
    assert_eq!(out.status.code(), Some(2));
    // The operators' report: 1001 logged in, talked one call.
    let path = format!("/api/v1/reports/agents?interval=1d&from={from}&to={to}");
    let (status, body) = node.http("GET", &path, Some(SUPERVISOR), None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let op = &v["intervals"][0];
    assert_eq!(
        (op["agent"].as_str(), op["calls"].as_u64()),
        (Some("1001"), Some(1)),
        "{v}"
    );
    assert!(op["talk_seconds"].as_f64().unwrap_or(0.0) >= 0.9, "{v}");
    assert!(op["logged_in_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    let (_, body) = node.http("GET", &path, Some(OTHER_FIRM), None);
    assert!(!body.contains("1001"), "another firm's supervisor: {body}");
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("report")
        .arg("--agents")
        .arg("--data-dir")
        .arg(scratch.path("data"))
        .args(["--interval", "1d", "--from", &from, "--to", &to, "--csv"])
        .output()
        .expect("centralino report --agents");
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("start,agent,logged_in_seconds"), "{csv}");
    assert!(csv.contains(",1001,"), "{csv}");
    // The queue log exported as `simulate --replay` reads it: the same
    // three callers replayed through the configured operators.
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("report")
        .arg("--replay")
        .arg("--data-dir")
        .arg(scratch.path("data"))
        .args(["--from", &from, "--to", &to])
        .output()
        .expect("centralino report --replay");
    assert!(out.status.success(), "{out:?}");
    let log = scratch.path("replay.csv");
    std::fs::write(&log, &out.stdout).expect("replay file");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("seconds,call,queue,event\n"), "{text}");
    assert!(
        text.lines().any(|l| l.ends_with(",info,complete")),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("simulate")
        .arg("--replay")
        .arg(&log)
        .arg("--config")
        .arg(scratch.path("centralino.toml"))
        .arg("--json")
        .output()
        .expect("centralino simulate --replay");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["queues"]["info"]["offered"], 3, "{v}");
    // Prometheus, from the node's counters with the shipped recording
    // rules: the same service level, abandon rate and ASA as the report.
    let asa = row["asa_seconds"].as_f64().expect("asa");
    let start = Instant::now();
    loop {
        let sl = prometheus.value("centralino:queue_service_level:ratio{queue=\"info\"}");
        let ab = prometheus.value("centralino:queue_abandon_rate:ratio{queue=\"info\"}");
        let mean = prometheus.value("centralino:queue_asa_seconds:mean{queue=\"info\"}");
        if let (Some(sl), Some(ab), Some(mean)) = (sl, ab, mean)
            && sl == 0.5
            && ab == 0.5
        {
            assert!((mean - asa).abs() < 0.01, "ASA {mean} against {asa}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Prometheus: service level {sl:?}, abandon rate {ab:?}, ASA {mean:?}\n{}",
            std::fs::read_to_string(scratch.path("prometheus").join("prometheus.log"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Every panel of the shipped Grafana dashboard has data here but the
    // kept callbacks' (no callback here: the next test has them) and the
    // campaigns' (`campaigns_dial` has them).
    let exprs = panel_queries(|e| !e.contains("callbacks_kept") && !e.contains("campaign"));
    assert!(exprs.len() >= 15, "{exprs:?}");
    prometheus.each_has_data(&exprs);
}

const UNSTAFFED_CITIZENS: u32 = 3;

fn unstaffed_config(sip: u16, http: u16, citizen_port: u16) -> String {
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

[[tenants]]
name = "asl"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
outbound = "127.0.0.1:{citizen_port}"
caller_id = "+39800123456"
dids = {{ "100" = "info" }}

[[queues]]
name = "info"
tenant = "asl"
max_wait_seconds = 3
when_unserved = "callback"
callback_promise_minutes = 60

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
queues = ["info"]
"#
    )
}

/// The hospital line of the seeds, half its operators quarantined: here
/// nobody is logged in at all. Every caller is offered — and given — a
/// callback on their number, none reaches a dead end, and the staffing
/// alert fires in a real Prometheus on the shipped rules (the line has
/// never measured a handling time: its expected one stands in). Then an
/// operator logs in and every callback is kept, in time; the report and
/// Prometheus (since the start and over 15 minutes) say the same.
#[test]
fn a_line_nobody_answers_calls_everyone_back_and_raises_the_staffing_alert() {
    let scratch = Scratch::new("unstaffed");
    let mut citizens = crate::common::far_end(
        &scratch,
        "citizens",
        "citizen_answer.xml",
        UNSTAFFED_CITIZENS,
        "90s",
    );
    let citizen_port = citizens.port;
    let node = Node::start_toml(&scratch, |sip, http| {
        unstaffed_config(sip, http, citizen_port)
    });
    let prometheus = Prometheus::start(&scratch, &node);
    // Scraped before the first call (the 15-minute figures are increases
    // between two scrapes: the counters' zero must have been seen).
    prometheus.wait_value("up{job=\"centralino\"}", |v| v == 1.0);
    prometheus.wait_value("centralino_queue_callbacks_total{queue=\"info\"}", |v| {
        v == 0.0
    });
    let n = UNSTAFFED_CITIZENS.to_string();
    let mut callers = trunk_to(
        &scratch,
        &node,
        "callers",
        "trunk_unserved.xml",
        &["-m", &n, "-r", &n],
    );
    callers.expect_success(Duration::from_secs(30));
    // Each number stored for a callback; no dead end.
    let (code, body) = node.http("GET", "/api/v1/callbacks?status=pending", Some(ADMIN), None);
    assert_eq!(code, 200, "{body}");
    let pending = crate::common::json(&body)["callbacks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(pending.len(), UNSTAFFED_CITIZENS as usize, "{body}");
    assert_eq!(
        node.metric(
            "centralino_unserved_total{action=\"callback\",queue=\"info\",reason=\"max_wait\"}"
        ),
        f64::from(UNSTAFFED_CITIZENS)
    );
    // The advisor counts with 180 s per call: operators needed, all
    // missing; the alert fires, on the national figure.
    let short = node.wait_metric(
        "centralino_queue_agents_short{queue=\"info\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    assert_eq!(
        short,
        node.metric("centralino_queue_agents_needed{queue=\"info\"}")
    );
    let firing =
        "ALERTS{alertname=\"CentralinoStaffingShort\",alertstate=\"firing\",queue=\"info\"}";
    prometheus.wait_value(firing, |v| v == 1.0);
    // No dead-end alert (evaluated with it, in the same second), and no
    // dead end counted anywhere.
    assert!(
        prometheus
            .query("ALERTS{alertname=\"CentralinoDeadEnds\"}")
            .is_some_and(|r| r.is_empty()),
        "no dead end"
    );
    assert_eq!(
        prometheus
            .value("sum(centralino_dead_ends_total)")
            .unwrap_or(0.0),
        0.0
    );
    // An operator logs in: the callbacks are placed one after the other
    // (agent first), each citizen answers and talks for a second.
    let phone = Sipp::spawn(
        &scratch,
        "phone",
        &[
            "-sf",
            &scenario("agent_hangup.xml"),
            "-d",
            "1000",
            "-m",
            &n,
            "-timeout",
            "90s",
        ],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    citizens.expect_success(Duration::from_secs(90));
    node.wait_metric(
        "centralino_queue_callbacks_kept_total{in_time=\"yes\",queue=\"info\"}",
        Duration::from_secs(10),
        |v| v == f64::from(UNSTAFFED_CITIZENS),
    );
    // The report: three offered, three called back, none a dead end, all
    // kept in time; service level 0 (nobody answered within T).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (from, to) = (
        centralino_types::time::rfc3339(now - 3600),
        centralino_types::time::rfc3339(now + 3600),
    );
    let path = format!("/api/v1/reports/queues?interval=1d&from={from}&to={to}");
    let start = Instant::now();
    let row = loop {
        let (status, body) = node.http("GET", &path, Some(ADMIN), None);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let row = v["intervals"][0].clone();
        if row["callbacks_kept"] == UNSTAFFED_CITIZENS {
            break row;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for (key, want) in [
        ("offered", UNSTAFFED_CITIZENS),
        ("answered", 0),
        ("callbacks", UNSTAFFED_CITIZENS),
        ("dead_ends", 0),
        ("callbacks_requested", UNSTAFFED_CITIZENS),
        ("callbacks_kept", UNSTAFFED_CITIZENS),
        ("callbacks_kept_in_time", UNSTAFFED_CITIZENS),
    ] {
        assert_eq!(row[key], want, "{key}: {row}");
    }
    assert_eq!(row["service_level"], 0.0, "{row}");
    // The queue log for `simulate --replay`, of queue info: the three
    // callers and how they left (a callback each), none of the callbacks'
    // own calls; replayed, three callers who left after their wait.
    let replay = |queue: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
            .arg("report")
            .arg("--replay")
            .arg("--data-dir")
            .arg(scratch.path("data"))
            .args(["--from", &from, "--to", &to, "--queue", queue])
            .output()
            .expect("centralino report --replay");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = replay("info");
    let events = |e: &str| text.lines().filter(|l| l.ends_with(e)).count();
    assert_eq!(
        (
            events(",info,enter"),
            events(",info,callback"),
            events(",connect")
        ),
        (3, 3, 0),
        "{text}"
    );
    assert_eq!(replay("altra").lines().count(), 1, "the header alone");
    let log = scratch.path("replay.csv");
    std::fs::write(&log, &text).expect("replay file");
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("simulate")
        .arg("--replay")
        .arg(&log)
        .arg("--config")
        .arg(scratch.path("centralino.toml"))
        .arg("--json")
        .output()
        .expect("centralino simulate --replay");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["queues"]["info"]["offered"], 3, "{v}");
    // Prometheus agrees, since the start and over the last 15 minutes.
    for q in [
        "centralino:queue_service_level:ratio{queue=\"info\"}",
        "centralino:queue_service_level:ratio_15m{queue=\"info\"}",
    ] {
        prometheus.wait_value(q, |v| v == 0.0);
    }
    for q in [
        "centralino:queue_callbacks_kept_in_time:ratio{queue=\"info\"}",
        "centralino:queue_callbacks_kept_in_time:ratio_15m{queue=\"info\"}",
    ] {
        prometheus.wait_value(q, |v| v == 1.0);
    }
    // The dashboard's kept-callbacks panels have their data.
    let exprs = panel_queries(|e| e.contains("callbacks_kept"));
    assert!(!exprs.is_empty());
    prometheus.each_has_data(&exprs);
}

/// The staffing forecast: a store holding three days of calls at the
/// coming 15 minutes (two a day for `info`, answered, 2 minutes of talk)
/// gives the supervisors' queue view and the metrics two calls expected,
/// and the operators Erlang C asks for them; a queue without history is
/// forecast none; another firm's supervisor does not see `info`.
#[test]
fn the_next_interval_is_forecast_from_the_days_before() {
    use centralino_types::outcome::QueueEvent;
    use centralino_types::record::Record;
    const DAY: i64 = 86_400_000;
    const INTERVAL: i64 = 900_000;
    let scratch = Scratch::new("forecast");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let next = (now / INTERVAL + 1) * INTERVAL;
    let mut records = Vec::new();
    // The same calls in the two coming intervals: the node may start in
    // the next one.
    for day in 1..=3 {
        for interval in 0..2 {
            for c in 0..2 {
                let at = next + interval * INTERVAL - day * DAY + c * 60_000 + 1_000;
                let call = format!("h{day}{interval}{c}");
                let q = |at_ms, event, wait_ms| Record::Queue {
                    call: call.clone(),
                    at_ms,
                    queue: "info".into(),
                    event,
                    agent: None,
                    position: None,
                    wait_ms,
                };
                records.push(q(at, QueueEvent::Enter, None));
                records.push(q(at + 4_000, QueueEvent::Connect, Some(4_000)));
                records.push(Record::Complete {
                    call: call.clone(),
                    at_ms: at + 124_000,
                    queue: "info".into(),
                    agent: "1001".into(),
                    talk_ms: 120_000,
                });
            }
        }
    }
    std::fs::create_dir_all(scratch.path("data")).unwrap();
    let mut store =
        centralino_store::Store::open(&scratch.path("data").join("centralino.db")).unwrap();
    store.write_records(&records).unwrap();
    drop(store);
    let node = Node::start_toml(&scratch, config);
    node.wait_metric(
        "centralino_queue_forecast_offered{queue=\"info\"}",
        Duration::from_secs(10),
        |v| v == 2.0,
    );
    // Two calls of 2 min + 2 s wrap-up in 15 min at 80 % within 20 s: one
    // operator does not, two do (Erlang C).
    assert_eq!(
        node.metric("centralino_queue_agents_forecast{queue=\"info\"}"),
        2.0
    );
    assert_eq!(
        node.metric("centralino_queue_forecast_offered{queue=\"estranea\"}"),
        0.0
    );
    let (code, body) = node.http("GET", "/api/v1/queues", Some(SUPERVISOR), None);
    assert_eq!(code, 200, "{body}");
    let v = crate::common::json(&body);
    let info = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "info")
        .expect("info")
        .clone();
    assert_eq!(info["forecast"]["offered"], 2.0, "{info}");
    assert_eq!(info["forecast"]["agents"], 2, "{info}");
    assert_eq!(info["forecast"]["days"], 3, "{info}");
    // The coming quarter of an hour, in RFC 3339.
    let start = info["forecast"]["start"].as_str().unwrap();
    assert!(
        start.len() == 20
            && start.ends_with(":00Z")
            && ["00", "15", "30", "45"].contains(&&start[14..16]),
        "{start}"
    );
    let (_, body) = node.http("GET", "/api/v1/queues", Some(OTHER_FIRM), None);
    assert!(!body.contains("\"info\""), "{body}");
}
