//! Outbound campaigns through the API against the real binary: creation
//! checked key by key, contacts imported all or nothing (JSON and CSV),
//! the life of a campaign, tenants kept apart, do-not-call lists.

use crate::common::{Node, Scratch, json};

const ADMIN: &str = "demo-admin-token";
const SALA_ASL: &str = "supervisor-asl-token-0123";
const SALA_ALTRA: &str = "supervisor-altra-token-01";

fn config(sip: u16, http: u16) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{sip}"]

[http]
listen = "127.0.0.1:{http}"

[[api.tokens]]
name = "web"
token = "{ADMIN}"
role = "admin"

[[api.tokens]]
name = "sala-asl"
token = "{SALA_ASL}"
role = "supervisor"
tenant = "asl"

[[api.tokens]]
name = "sala-altra"
token = "{SALA_ALTRA}"
role = "supervisor"
tenant = "altra"

[[tenants]]
name = "asl"

[[tenants]]
name = "altra"

[[queues]]
name = "fragili"
tenant = "asl"

[[queues]]
name = "altra-info"
tenant = "altra"

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
queues = ["fragili"]

[[campaigns]]
name = "da-file"
queue = "fragili"
mode = "preview"

[[scripts]]
name = "consenso"
tenant = "asl"
start = "ok"
[scripts.questions.ok]
text = "Acconsente?"
"#
    )
}

#[test]
fn a_campaign_is_created_checked_filled_and_steered() {
    let scratch = Scratch::new("campaigns-api");
    let node = Node::start_toml(&scratch, config);
    let post =
        |path: &str, token: &str, body: &str| node.http("POST", path, Some(token), Some(body));

    // Refused, each with the key that is wrong and nothing stored.
    for (body, key) in [
        (
            r#"{"name": "x", "queue": "fragili", "mode": "predictive", "fragile": true}"#,
            "mode",
        ),
        (
            r#"{"name": "x", "queue": "nessuna", "mode": "progressive"}"#,
            "queue",
        ),
        (
            r#"{"name": "x", "queue": "fragili", "mode": "sometimes"}"#,
            "mode",
        ),
        (
            r#"{"name": "x", "queue": "fragili", "mode": "progressive", "windows": {"days": ["lun"], "hours": ["18:00-08:00"]}}"#,
            "windows.hours[0]",
        ),
        (
            r#"{"name": "x", "queue": "fragili", "mode": "predictive", "abandon_cap": 0.1}"#,
            "abandon_cap",
        ),
    ] {
        let (code, resp) = post("/api/v1/campaigns", ADMIN, body);
        assert_eq!(code, 422, "{body}: {resp}");
        let keys: Vec<String> = json(&resp)["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["key"].as_str().unwrap().to_owned())
            .collect();
        assert!(keys.contains(&key.to_owned()), "{key} in {resp}");
    }
    let (code, resp) = post(
        "/api/v1/campaigns",
        ADMIN,
        r#"{"name": "x", "queue": "fragili"}"#,
    );
    assert_eq!(code, 400, "{resp}");
    // Another tenant's supervisor may not create on this queue.
    let good = r#"{"name": "richiami-fragili", "queue": "fragili", "mode": "progressive", "fragile": true,
                  "windows": {"days": ["lun", "mar", "mer", "gio", "ven"], "hours": ["08:00-18:00"]}}"#;
    // Another tenant's supervisor may not create on this queue: to them it
    // does not exist (neither does its tenant).
    let (code, resp) = post("/api/v1/campaigns", SALA_ALTRA, good);
    assert_eq!(code, 422, "{resp}");
    assert_eq!(json(&resp)["problems"][0]["key"], "queue");
    assert!(!resp.contains("asl"), "{resp}");
    // Nobody presents a number the tenant's trunks do not carry.
    let (code, resp) = post(
        "/api/v1/campaigns",
        SALA_ASL,
        r#"{"name": "y", "queue": "fragili", "mode": "progressive", "caller_id": "+39800123456"}"#,
    );
    assert_eq!(code, 422, "{resp}");
    assert_eq!(json(&resp)["problems"][0]["key"], "caller_id");
    let (code, resp) = post("/api/v1/campaigns", SALA_ASL, good);
    assert_eq!(code, 201, "{resp}");
    let id = json(&resp)["id"].as_str().unwrap().to_owned();
    let (code, _) = post("/api/v1/campaigns", SALA_ASL, good);
    assert_eq!(code, 409, "the name is taken");
    // Names are per tenant: the other firm names its own the same, and
    // its second one gets the same 409, about its own.
    let altra = r#"{"name": "richiami-fragili", "queue": "altra-info", "mode": "preview"}"#;
    // Not with the other firm's own script: it would reach this firm's
    // desks (and it does not exist for them).
    let (code, resp) = post(
        "/api/v1/campaigns",
        SALA_ALTRA,
        r#"{"name": "c", "queue": "altra-info", "mode": "preview", "script": "consenso"}"#,
    );
    assert_eq!(code, 422, "{resp}");
    assert_eq!(json(&resp)["problems"][0]["key"], "script", "{resp}");
    let (code, resp) = post(
        "/api/v1/campaigns",
        SALA_ASL,
        r#"{"name": "c", "queue": "fragili", "mode": "preview", "script": "consenso"}"#,
    );
    assert_eq!(code, 201, "its own firm's campaign may use it: {resp}");
    let own_script = format!("/api/v1/campaigns/{}", json(&resp)["id"].as_str().unwrap());
    assert_eq!(
        node.http("DELETE", &own_script, Some(SALA_ASL), None).0,
        204
    );
    let (code, resp) = post("/api/v1/campaigns", SALA_ALTRA, altra);
    assert_eq!(code, 201, "{resp}");
    let altra_id = json(&resp)["id"].as_str().unwrap().to_owned();
    assert_ne!(altra_id, id);
    let (code, resp) = post("/api/v1/campaigns", SALA_ALTRA, altra);
    assert_eq!(code, 409, "{resp}");
    assert_eq!(
        json(&resp)["error"],
        "the tenant has a campaign named \"richiami-fragili\""
    );

    // The configuration's campaign is there too, as a draft; each firm
    // lists its own campaigns only.
    let listed = |token: &str| -> Vec<(String, String)> {
        let (code, resp) = node.http("GET", "/api/v1/campaigns", Some(token), None);
        assert_eq!(code, 200);
        json(&resp)["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let asl = listed(SALA_ASL);
    assert_eq!(asl.len(), 2, "{asl:?}");
    assert!(asl.iter().any(|(n, _)| n == "da-file"), "{asl:?}");
    assert!(
        asl.contains(&("richiami-fragili".to_owned(), id.clone())),
        "{asl:?}"
    );
    assert_eq!(
        listed(SALA_ALTRA),
        [("richiami-fragili".to_owned(), altra_id.clone())]
    );
    let path = format!("/api/v1/campaigns/{id}");
    let altra_path = format!("/api/v1/campaigns/{altra_id}");
    assert_eq!(node.http("GET", &path, Some(SALA_ALTRA), None).0, 403);
    assert_eq!(node.http("GET", &altra_path, Some(SALA_ASL), None).0, 403);
    assert_eq!(
        node.http("DELETE", &altra_path, Some(SALA_ASL), None).0,
        403
    );
    assert_eq!(
        node.http("DELETE", &altra_path, Some(SALA_ALTRA), None).0,
        204
    );
    assert!(listed(SALA_ALTRA).is_empty());

    // Contacts: one bad line refuses the whole request, with each line.
    let contacts = format!("{path}/contacts");
    let (code, resp) = post(
        &contacts,
        SALA_ASL,
        r#"[{"number": "+393331110001", "name": "Maria"}, {"number": "pizza"},
            {"number": "899123456"}, {"number": "3331110002", "nickname": "x"}]"#,
    );
    assert_eq!(code, 422, "{resp}");
    let rejected: Vec<u64> = json(&resp)["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, [2, 3, 4], "{resp}");
    assert_eq!(
        json(&node.http("GET", &path, Some(SALA_ASL), None).1)["contacts"]["total"],
        0
    );
    // Good ones: national spellings normalised, duplicates merged.
    let (code, resp) = post(
        &contacts,
        SALA_ASL,
        r#"[{"number": "+393331110001", "name": "Maria", "priority": 5},
            {"number": "3331110002", "language": "it", "data": {"asl": "Roma 1"}},
            {"number": "00393331110001", "name": "Maria Rossi"}]"#,
    );
    assert_eq!(code, 200, "{resp}");
    assert_eq!(
        (
            json(&resp)["accepted"].as_u64(),
            json(&resp)["added"].as_u64()
        ),
        (Some(3), Some(2))
    );
    // CSV with semicolons, a quoted name, a column that becomes data.
    let (code, resp) = node.http_typed(
        "POST",
        &contacts,
        Some(SALA_ASL),
        "text/csv; charset=utf-8",
        Some("number;name;reparto\n3331110003;\"Bianchi; Anna\";cardiologia\n+393331110002;;\n"),
    );
    assert_eq!(code, 200, "{resp}");
    assert_eq!(
        (
            json(&resp)["added"].as_u64(),
            json(&resp)["merged"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (code, resp) = node.http_typed(
        "POST",
        &contacts,
        Some(SALA_ASL),
        "text/csv",
        Some("number,name\n3331110004,Verdi\nnot-a-number,Neri\n"),
    );
    assert_eq!(code, 422, "{resp}");
    assert_eq!(json(&resp)["rejected"][0]["line"], 3);
    let (_, resp) = node.http(
        "GET",
        &format!("{contacts}?status=pending"),
        Some(SALA_ASL),
        None,
    );
    let list = json(&resp)["contacts"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3);
    // A supervisor sees the last 3 digits only; an admin the number.
    assert_eq!(list[0]["number"], "**********001");
    let (_, resp) = node.http("GET", &contacts, Some(ADMIN), None);
    assert_eq!(json(&resp)["contacts"][0]["number"], "+393331110001");
    assert_eq!(
        node.http(
            "GET",
            &format!("{contacts}?status=maybe"),
            Some(ADMIN),
            None
        )
        .0,
        400
    );
    // Past 100,000 items the body is refused as it is read.
    let many = format!("[{}0]", "0,".repeat(100_000));
    let (code, resp) = post(&contacts, SALA_ASL, &many);
    assert_eq!(code, 400, "{resp}");
    assert!(resp.contains("more than 100000"), "{resp}");

    // Life: start, pause, stop; a running campaign is not deleted.
    assert_eq!(post(&format!("{path}/start"), SALA_ASL, "").0, 200);
    let (code, resp) = post(&format!("{path}/start"), SALA_ASL, "");
    assert_eq!(code, 409, "{resp}");
    assert_eq!(node.http("DELETE", &path, Some(SALA_ASL), None).0, 409);
    let (_, resp) = node.http("GET", &path, Some(SALA_ASL), None);
    let c = json(&resp);
    assert_eq!(
        (c["status"].as_str(), c["contacts"]["total"].as_u64()),
        (Some("running"), Some(3))
    );
    assert_eq!(c["abandon_rate"], 0.0);
    assert_eq!(post(&format!("{path}/pause"), SALA_ASL, "").0, 200);
    assert_eq!(post(&format!("{path}/stop"), SALA_ASL, "").0, 200);
    let (code, _) = post(&contacts, SALA_ASL, r#"[{"number": "3331110009"}]"#);
    assert_eq!(code, 409, "a finished campaign takes no contacts");
    assert_eq!(node.http("DELETE", &path, Some(SALA_ALTRA), None).0, 403);
    assert_eq!(node.http("DELETE", &path, Some(SALA_ASL), None).0, 204);
    assert_eq!(node.http("GET", &path, Some(ADMIN), None).0, 404);
    assert_eq!(
        node.metric("centralino_campaign_contacts_rejected_total"),
        4.0
    );
}

#[test]
fn do_not_call_lists_are_per_tenant_and_national() {
    let scratch = Scratch::new("campaigns-dnc");
    let node = Node::start_toml(&scratch, config);
    let add = |token: &str, body: &str| node.http("POST", "/api/v1/dnc", Some(token), Some(body));
    assert_eq!(
        add(SALA_ASL, r#"{"number": "3331110001", "tenant": "asl"}"#).0,
        201
    );
    assert_eq!(
        add(SALA_ASL, r#"{"number": "+393331110001", "tenant": "asl"}"#).0,
        200
    );
    assert_eq!(
        add(SALA_ASL, r#"{"number": "3331110001", "tenant": "altra"}"#).0,
        403
    );
    assert_eq!(
        add(SALA_ASL, r#"{"number": "3331110001"}"#).0,
        403,
        "national: admins"
    );
    assert_eq!(add(ADMIN, r#"{"number": "3331110001"}"#).0, 201);
    assert_eq!(add(ADMIN, r#"{"number": "12"}"#).0, 400);
    let (code, resp) = node.http_typed(
        "POST",
        "/api/v1/dnc?tenant=asl",
        Some(SALA_ASL),
        "text/csv",
        Some("number\n3331110005\n3331110006\n"),
    );
    assert_eq!(code, 200, "{resp}");
    assert_eq!(json(&resp)["added"], 2);
    assert_eq!(
        node.http(
            "DELETE",
            "/api/v1/dnc/00393331110005?tenant=asl",
            Some(SALA_ASL),
            None
        )
        .0,
        204
    );
    assert_eq!(
        node.http(
            "DELETE",
            "/api/v1/dnc/+393331110005?tenant=asl",
            Some(SALA_ASL),
            None
        )
        .0,
        404
    );
    assert_eq!(
        node.metric("centralino_dnc_changes_total{change=\"added\"}"),
        4.0
    );
    // The audit log (kept for years, chained, never trimmed) names the
    // removal by the number's tag under the audit key, never the number:
    // whoever holds the key finds it with `--number`.
    let start = std::time::Instant::now();
    let text = loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_centralino"))
            .args([
                "audit",
                "--number",
                "+393331110005",
                "--tail",
                "100",
                "--data-dir",
            ])
            .arg(scratch.path("data"))
            .output()
            .expect("centralino audit");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.matches("\tdnc_delete\t").count() >= 2 {
            break text;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let tag = text.lines().next().unwrap_or_default();
    assert!(
        tag.len() == 20 && tag.starts_with("tel:"),
        "the number's tag first: {text}"
    );
    // Both removals (204, then 404), however the path spelled the number.
    let removals = text
        .lines()
        .filter(|l| l.contains(&format!("dnc_delete\t{tag}\t")))
        .count();
    assert_eq!(removals, 2, "{text}");
    assert!(!text.contains("3331110005"), "{text}");
}
