//! Preview campaigns through the real wire: the contact goes on the
//! operator's desk (over the API) and nobody is dialled until the
//! operator accepts it; a skipped contact is not dialled at all and waits
//! for later; only the accepted one reaches the carrier (SIPp).

use std::time::{Duration, Instant};

use crate::campaigns_dial::{called_numbers, campaign_id, config};
use crate::common::{Node, Scratch, Sipp, json, register, scenario};

const ADMIN: &str = "demo-admin-token";
const DESK: &str = "desk-1001-token-0123456789";
const OTHER_DESK: &str = "desk-1002-token-0123456789";

/// The operators' desk tokens and a preview campaign on the same queue.
fn preview_config(sip: u16, http: u16, citizens: u16, closed_today: &str) -> String {
    config(sip, http, citizens, closed_today).replacen(
        "[[tenants]]",
        &format!(
            "[[api.tokens]]\nname = \"desk-1001\"\ntoken = \"{DESK}\"\nrole = \"agent\"\nagent = \"1001\"\n\n\
             [[api.tokens]]\nname = \"desk-1002\"\ntoken = \"{OTHER_DESK}\"\nrole = \"agent\"\nagent = \"1002\"\n\n\
             [[campaigns]]\nname = \"anteprima\"\nqueue = \"fragili\"\nmode = \"preview\"\nfragile = true\n\
             preview_seconds = 60\ncaller_id = \"+39800999000\"\n\
             windows = {{ days = [\"lun\", \"mar\", \"mer\", \"gio\", \"ven\", \"sab\", \"dom\"], hours = [\"00:00-24:00\"] }}\n\n\
             [[tenants]]"
        ),
        1,
    )
}

/// The operator's desk once it shows a preview (the JSON of
/// `GET /api/v1/agents/1001/call`).
fn wait_preview(node: &Node, not: Option<i64>) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (code, body) = node.http("GET", "/api/v1/agents/1001/call", Some(DESK), None);
        if code == 200 {
            let d = json(&body);
            if d["state"] == "preview" && d["contact"].as_i64() != not {
                return d;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no preview on the desk: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_preview_contact_is_dialled_only_after_the_operator_accepts_it() {
    let scratch = Scratch::new("campaign-preview");
    let citizen = crate::common::far_end(&scratch, "citizen", "citizen_answer.xml", 1, "60s");
    let port = citizen.port;
    let node = Node::start_toml(&scratch, |sip, http| {
        preview_config(sip, http, port, "2000-01-01")
    });
    let id = campaign_id(&node, "anteprima");
    let (code, body) = node.http(
        "POST",
        &format!("/api/v1/campaigns/{id}/contacts"),
        Some(ADMIN),
        Some(
            r#"[{"number": "+393470000011", "name": "Anna", "data": {"note": "sorda, parlare piano"}},
                {"number": "+393470000012", "name": "Bruno"}]"#,
        ),
    );
    assert_eq!(code, 200, "{body}");
    let phone = Sipp::spawn(
        &scratch,
        "phone",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    let start_campaign = node.http(
        "POST",
        &format!("/api/v1/campaigns/{id}/start"),
        Some(ADMIN),
        Some(""),
    );
    assert_eq!(start_campaign.0, 200, "{}", start_campaign.1);
    let first = wait_preview(&node, None);
    assert_eq!(first["campaign"], "anteprima", "{first}");
    let name = first["variables"]["contact"].as_str().unwrap().to_owned();
    let (skip_number, take_number) = if name == "Anna" {
        ("+393470000011", "+393470000012")
    } else {
        ("+393470000012", "+393470000011")
    };
    // The number is masked on the desk: the last three digits only.
    let shown = first["variables"]["number"].as_str().unwrap();
    assert!(
        shown.ends_with(&skip_number[10..]) && !shown.contains("347000"),
        "{first}"
    );
    let contact = first["contact"].as_i64().unwrap();
    // The supervisors' view has the campaign's line: one operator reading.
    let start = Instant::now();
    loop {
        let (_, body) = node.http("GET", "/api/v1/queues", Some(ADMIN), None);
        let view = json(&body);
        let line = view["campaigns"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "anteprima").cloned());
        if let Some(line) = line
            && line["previews"] == 1
        {
            assert_eq!(
                (line["mode"].as_str(), line["queue"].as_str()),
                (Some("preview"), Some("fragili")),
                "{line}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no campaign line: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let path = "/api/v1/agents/1001/preview";
    let answer = |token: &str, body: String| node.http("POST", path, Some(token), Some(&body));
    // Bad answers: another operator's token, an unknown action, a contact
    // not on the desk. Nobody is dialled meanwhile.
    let body = format!(r#"{{"contact": {contact}, "action": "skip"}}"#);
    assert_eq!(answer(OTHER_DESK, body.clone()).0, 403);
    let (code, text) = answer(
        DESK,
        format!(r#"{{"contact": {contact}, "action": "dial"}}"#),
    );
    assert_eq!(code, 400, "{text}");
    let (code, text) = answer(
        DESK,
        format!(r#"{{"contact": {}, "action": "accept"}}"#, contact + 1000),
    );
    assert_eq!(code, 409, "{text}");
    assert!(
        called_numbers(&citizen).is_empty(),
        "nobody dialled before an accept"
    );
    // Skipped: nobody dialled; the same answer again is refused.
    let (code, text) = answer(DESK, body.clone());
    assert_eq!(code, 200, "{text}");
    assert_eq!(answer(DESK, body).0, 409);
    // The other contact comes next; accepted, the phone rings, the
    // operator answers and the citizen is dialled.
    let second = wait_preview(&node, Some(contact));
    let other = second["contact"].as_i64().unwrap();
    let (code, text) = answer(
        DESK,
        format!(r#"{{"contact": {other}, "action": "accept"}}"#),
    );
    assert_eq!(code, 200, "{text}");
    let start = Instant::now();
    let called = loop {
        let called = called_numbers(&citizen);
        if !called.is_empty() {
            break called;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the accepted contact was never dialled"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(called.get(take_number), Some(&1), "{called:?}");
    assert_eq!(
        called.get(skip_number),
        None,
        "the skipped contact is never dialled"
    );
    // The skipped contact waits for later (its attempt ended `skipped`).
    let (_, body) = node.http(
        "GET",
        &format!("/api/v1/campaigns/{id}/contacts"),
        Some(ADMIN),
        None,
    );
    let contacts = json(&body)["contacts"].as_array().unwrap().clone();
    let skipped = contacts
        .iter()
        .find(|c| c["id"].as_i64() == Some(contact))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        (skipped["status"].as_str(), skipped["last_outcome"].as_str()),
        (Some("pending"), Some("skipped")),
        "{body}"
    );
    assert_eq!(
        node.metric(
            "centralino_campaign_previews_total{campaign=\"anteprima\",outcome=\"skipped\",tenant=\"asl\"}"
        ),
        1.0
    );
    drop(phone);
}

/// A citizen calls the campaign's number back (SIPp as the carrier, the
/// caller asserted by P-Asserted-Identity; the DID routes to the
/// campaign's queue): the operator's desk shows whose call it is (the
/// campaign, the contact), and the operator's disposition on that inbound
/// call closes the contact, so the campaign calls them no more.
#[test]
fn a_contact_calling_the_campaigns_number_is_on_the_operators_desk() {
    let scratch = Scratch::new("campaign-caller");
    // The campaign presenting +39800999000 is closed today (a holiday):
    // it dials nobody while its citizens call it back.
    let today = crate::campaigns_dial::rome_today();
    let node = Node::start_toml(&scratch, |sip, http| {
        preview_config(sip, http, crate::common::free_port(), &today)
            .replacen(
                "caller_id = \"+39800999000\"\nwindows",
                "caller_id = \"+39800123456\"\nwindows",
                1,
            )
            .replacen(
                "name = \"chiusa-oggi\"\nqueue = \"fragili\"",
                "name = \"chiusa-oggi\"\nqueue = \"fragili\"\ncaller_id = \"+39800999000\"",
                1,
            )
    });
    let closed = "chiusa-oggi";
    let id = campaign_id(&node, closed);
    // SIPp's first call comes from +39333001.
    let (code, body) = node.http(
        "POST",
        &format!("/api/v1/campaigns/{id}/contacts"),
        Some(ADMIN),
        Some(r#"[{"number": "+39333001", "name": "Carla", "data": {"medico": "dott. Bianchi"}}]"#),
    );
    assert_eq!(code, 200, "{body}");
    let start = node.http(
        "POST",
        &format!("/api/v1/campaigns/{id}/start"),
        Some(ADMIN),
        Some(""),
    );
    assert_eq!(start.0, 200, "{}", start.1);
    let phone = Sipp::spawn(
        &scratch,
        "phone",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    // The scheduler hands the engine the campaign's number within a second.
    node.wait_log("campaign numbers known", Duration::from_secs(10));
    // The carrier asserts who calls (P-Asserted-Identity, RFC 3325): a
    // From alone is never looked up.
    let plain = std::fs::read_to_string(scenario("trunk_call.xml")).unwrap();
    let from = "      From: \"Cittadino\" <sip:+3933300[call_number]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n";
    assert!(plain.contains(from));
    let asserted = plain.replacen(
        from,
        &format!("{from}      P-Asserted-Identity: <sip:+3933300[call_number]@[local_ip]>\n"),
        1,
    );
    let with_pai = scratch.path("trunk_call_pai.xml");
    std::fs::write(&with_pai, asserted).unwrap();
    let mut citizen = Sipp::spawn(
        &scratch,
        "citizen",
        &[
            &node.sip_addr(),
            "-sf",
            with_pai.to_str().unwrap(),
            "-s",
            "+39800999000",
            "-m",
            "1",
            "-d",
            "8000",
            "-timeout",
            "30s",
        ],
    );
    let begun = Instant::now();
    let desk = loop {
        let (code, body) = node.http("GET", "/api/v1/agents/1001/call", Some(DESK), None);
        if code == 200 {
            let d = json(&body);
            if d["state"] == "connected" && d["campaign"] == closed {
                break d;
            }
        }
        assert!(
            begun.elapsed() < Duration::from_secs(20),
            "the desk never showed the contact: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (
            desk["variables"]["contact"].as_str(),
            desk["variables"]["medico"].as_str()
        ),
        (Some("Carla"), Some("dott. Bianchi")),
        "{desk}"
    );
    let contact = desk["contact"].as_i64().unwrap();
    let call = desk["call"].as_str().unwrap().to_owned();
    // Booked on the inbound call: the contact is done.
    let (code, body) = node.http(
        "POST",
        &format!("/api/v1/calls/{call}/disposition"),
        Some(DESK),
        Some(r#"{"code": "booked", "note": "ha richiamato lei"}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "done", "{body}");
    let (_, body) = node.http(
        "GET",
        &format!("/api/v1/campaigns/{id}/contacts"),
        Some(ADMIN),
        None,
    );
    let c = &json(&body)["contacts"][0];
    assert_eq!(
        (
            c["id"].as_i64(),
            c["status"].as_str(),
            c["disposition"].as_str()
        ),
        (Some(contact), Some("done"), Some("booked")),
        "{body}"
    );
    citizen.expect_success(Duration::from_secs(30));
    assert_eq!(
        node.metric("centralino_campaign_callers_total{campaign=\"chiusa-oggi\",tenant=\"asl\"}"),
        1.0
    );
    drop(phone);
}
