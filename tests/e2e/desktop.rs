//! The operator's desktop in a real browser (Debian's Chromium, headless),
//! driven with the keyboard alone: an operator logs in with their SIP
//! credentials, a carrier's call arrives through an IVR path and their SIP
//! phone (SIPp) answers it; the page shows the call with the IVR's
//! answers, the queue's script is answered on the page and saved, the
//! operator takes a break and logs out. The session never reaches the
//! page's script (an HttpOnly cookie), and the page loads only what the
//! node serves.

use std::time::Duration;

use crate::browser::Browser;
use crate::common::{Node, Scratch, Sipp, json, register, scenario, trunk_to};

const ADMIN: &str = "desktop-admin-token";
const SUPERVISOR: &str = "supervisor-token-0123456789";

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
name = "sala-roma"
token = "{SUPERVISOR}"
role = "supervisor"

[[api.tokens]]
name = "sala-altra"
token = "other-firm-supervisor-0123456789"
role = "supervisor"
tenant = "altra"

[[api.tokens]]
name = "modulo-web"
token = "callbacks-token-0123456789"
role = "callbacks"

[[tenants]]
name = "asl"

[[tenants]]
name = "altra"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
dids = {{ "100" = {{ flow = "vaccini" }} }}

[[queues]]
name = "prenotazioni"
tenant = "asl"
ring_timeout_seconds = 10
script = "prenotazione"

[[scripts]]
name = "prenotazione"
start = "dose"
[scripts.questions.dose]
text = "Ha già ricevuto la prima dose?"
answers = {{ "si" = "centro", "no" = "end" }}
[scripts.questions.centro]
text = "In quale centro vaccinale?"
kind = "text"

[[flows]]
name = "vaccini"
start = "motivo"
[flows.nodes.motivo]
type = "set"
variables = {{ motivo = "prenotazione", lingua = "<b>it</b>" }}
next = "coda"
[flows.nodes.coda]
type = "enqueue"
queue = "prenotazioni"

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
queues = ["prenotazioni"]

[[agents]]
username = "1002"
password = "demo1002"
tenant = "asl"
queues = ["prenotazioni"]
"#
    )
}

#[test]
fn an_operator_works_a_call_from_the_desktop_with_the_keyboard_alone() {
    let scratch = Scratch::new("desktop");
    let node = Node::start_toml(&scratch, config);
    // The operator's phone answers and hangs up after 8 s.
    let phone = Sipp::spawn(
        &scratch,
        "phone",
        &[
            "-sf",
            &scenario("agent_hangup.xml"),
            "-d",
            "8000",
            "-timeout",
            "60s",
        ],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));

    let mut b = Browser::start(&scratch);
    b.open(&format!("http://127.0.0.1:{}/", node.http_port));
    // Italian first; the login form has the focus; no serious
    // accessibility violation (axe-core, WCAG 2 A and AA).
    assert_eq!(b.eval("document.documentElement.lang"), "it");
    let found = b.accessibility_violations();
    assert!(found.is_empty(), "login page: {found:?}");
    b.wait_for(
        "document.activeElement.id === 'username'",
        "focus on the user name",
    );
    b.type_text("1001");
    b.key("Tab", false);
    assert_eq!(b.focused(), "password");
    b.type_text("wrong-password");
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('login-error').textContent.includes('errati')",
        "a wrong password is told",
    );
    b.tab_to("password");
    b.type_text("demo1001");
    b.key("Enter", false);
    b.wait_for(
        "!document.getElementById('desk').hidden",
        "the desk after login",
    );
    assert_eq!(b.eval("document.getElementById('who').textContent"), "1001");
    // The session is a cookie no script reads, sent to the API only,
    // never from another site; and the page never saw the token.
    let cookie = b.session_cookie().expect("the session cookie");
    assert_eq!(
        (&cookie["httpOnly"], &cookie["sameSite"], &cookie["path"]),
        (
            &serde_json::json!(true),
            &serde_json::json!("Strict"),
            &serde_json::json!("/api")
        )
    );
    let token = cookie["value"].as_str().unwrap().to_owned();
    assert!(token.starts_with("cs1.1001."), "{token}");
    b.wait_for(
        "document.getElementById('state').dataset.state === 'available'",
        "the operator available (their phone registered)",
    );
    // The page loads only the node's own script and style.
    let csp = b.eval("fetch('/').then(r => r.headers.get('content-security-policy'))");
    assert!(
        csp.as_str().is_some_and(
            |c| c.contains("script-src 'self'") && c.contains("frame-ancestors 'none'")
        ),
        "{csp}"
    );

    // A citizen calls; the IVR sets the reason; the phone answers.
    let mut caller = trunk_to(
        &scratch,
        &node,
        "caller",
        "trunk_hangup_by_agent.xml",
        &["-m", "1"],
    );
    b.wait_for(
        "document.getElementById('call-state').textContent === 'In conversazione'",
        "the call on the desk",
    );
    let info = b.eval("document.getElementById('call-info').innerText");
    let info = info.as_str().unwrap_or_default();
    assert!(
        info.contains("prenotazioni") && info.contains("prenotazione"),
        "{info}"
    );
    // A caller's data is text, never markup.
    assert!(info.contains("<b>it</b>"), "{info}");
    // The operator's own queue on the desk, from their figures.
    b.wait_for(
        "[...document.querySelectorAll('#figures tbody th')].some(th => th.textContent === 'prenotazioni')",
        "the operator's queue in their figures",
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#call-info b').length"),
        0
    );
    // The script, answered with the keyboard: Tab to the answers, an
    // arrow to choose, Tab to "Avanti", Enter.
    b.wait_for(
        "document.querySelector('#script-form legend')?.textContent === 'Ha già ricevuto la prima dose?'",
        "the script's first question",
    );
    b.tab_to_radio();
    assert_eq!(
        b.eval("document.querySelectorAll('input[name=answer]:checked').length"),
        0,
        "nothing chosen for the operator"
    );
    // A radio group is one Tab stop; the arrows choose within it.
    b.key("ArrowDown", false);
    if b.eval("document.querySelector('input[name=answer]:checked')?.value") != "si" {
        b.key("ArrowDown", false);
    }
    assert_eq!(
        b.eval("document.querySelector('input[name=answer]:checked').value"),
        "si"
    );
    b.tab_to("next");
    b.key("Enter", false);
    b.wait_for(
        "document.querySelector('#script-form legend')?.textContent === 'In quale centro vaccinale?'",
        "the branch for 'si'",
    );
    // The focus follows the next question.
    assert_eq!(b.focused(), "answer");
    b.type_text("Roma, Nuvola");
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('script-status').textContent === 'Script completato'",
        "the script done",
    );
    let call = b.eval("desk.work.call").as_str().unwrap().to_owned();
    let found = b.accessibility_violations();
    assert!(found.is_empty(), "desk with a call: {found:?}");
    b.screenshot(&scratch, "desktop-call.png");
    caller.expect_success(Duration::from_secs(30));
    b.wait_for(
        "document.getElementById('call-state').textContent.startsWith('Chiamata terminata')",
        "the call ended, its script still on the desk",
    );
    // The answers are stored with the call record.
    // The call's outcome, by keyboard, in wrap-up: an inbound call's codes.
    assert_eq!(
        b.eval("document.getElementById('disposition-h').textContent"),
        "Esito della chiamata"
    );
    b.tab_to("code");
    for _ in 0..4 {
        if b.eval("document.getElementById('code').value") == "information" {
            break;
        }
        b.key("ArrowDown", false);
    }
    assert_eq!(
        b.eval("document.getElementById('code').value"),
        "information"
    );
    b.tab_to("note");
    b.type_text("Orari del centro");
    b.tab_to("save-disposition");
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('disposition-status').textContent === 'Esito registrato'",
        "the outcome saved",
    );
    // A campaign's code is no inbound call's outcome.
    let (status, body) = node.http(
        "POST",
        &format!("/api/v1/calls/{call}/disposition"),
        Some(&token),
        Some(r#"{"code": "call_later"}"#),
    );
    assert_eq!(status, 422, "{body}");
    // Their calls today: this one (the page asks every 5 s).
    b.wait_for(
        "document.getElementById('today-calls').textContent === '1'",
        "one call today on the desk",
    );
    let (status, body) = node.http("GET", "/api/v1/agents/1001/figures", Some(&token), None);
    assert_eq!(status, 200, "{body}");
    let figures = json(&body);
    assert_eq!(figures["today"]["calls"], 1, "{figures}");
    assert_eq!(figures["queues"][0]["name"], "prenotazioni", "{figures}");
    // An operator reads their own figures only (1002 is a colleague: a
    // refusal, not an unknown name).
    let (status, body) = node.http("GET", "/api/v1/agents/1002/figures", Some(&token), None);
    assert_eq!(status, 403, "{body}");
    let store = centralino_store::Store::open(&scratch.path("data").join("centralino.db"))
        .expect("the node's store");
    assert_eq!(
        store.answers(&call).expect("answers"),
        [
            ("@disposition".to_owned(), "information".to_owned()),
            ("@note".to_owned(), "Orari del centro".to_owned()),
            ("centro".to_owned(), "Roma, Nuvola".to_owned()),
            ("dose".to_owned(), "si".to_owned())
        ]
    );
    // A supervisor reads them back (audited); another firm's supervisor
    // cannot even tell the call exists; an operator's session reads none.
    let path = format!("/api/v1/calls/{call}/answers");
    let (status, body) = node.http("GET", &path, Some(SUPERVISOR), None);
    assert_eq!(status, 200, "{body}");
    let read = json(&body);
    assert_eq!(
        (&read["queue"], &read["answers"]["centro"], &read["outcome"]),
        (
            &serde_json::json!("prenotazioni"),
            &serde_json::json!("Roma, Nuvola"),
            &serde_json::json!({"code": "information", "note": "Orari del centro"})
        ),
        "{read}"
    );
    assert!(read["answers"].get("@disposition").is_none(), "{read}");
    assert_eq!(
        node.http("GET", &path, Some("other-firm-supervisor-0123456789"), None)
            .0,
        404
    );
    assert_eq!(node.http("GET", &path, Some(&token), None).0, 403);

    // A break, by keyboard, once the page allows one (the desk's state
    // leaves on_call by its WebSocket, later on a loaded machine); the
    // routing board has it.
    b.wait_for(
        "!document.getElementById('pause').disabled",
        "a break allowed after the call",
    );
    b.tab_to("pause");
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('state').dataset.state === 'paused'",
        "the break on the page",
    );
    let (_, body) = node.http("GET", "/api/v1/agents", Some(ADMIN), None);
    let agents = json(&body);
    let me = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "1001")
        .cloned()
        .unwrap();
    assert_eq!(
        (me["state"].as_str(), me["reason"].as_str()),
        (Some("paused"), Some("manual"))
    );
    // Time in state counts from the break, not from the node's start (the
    // node has been up through a whole call by now).
    let in_state = me["seconds_in_state"].as_u64().expect("seconds_in_state");
    assert!(in_state <= 5, "{me}");
    // English on request.
    b.tab_to("lang");
    b.key("Enter", false);
    assert_eq!(
        b.eval("document.getElementById('state').textContent"),
        "On a break"
    );
    assert_eq!(b.eval("document.documentElement.lang"), "en");
    // Logging out clears the session: the API no longer knows the page.
    b.tab_to("logout");
    b.key("Enter", false);
    b.wait_for(
        "!document.getElementById('login').hidden",
        "the login form again",
    );
    assert_eq!(
        b.eval("fetch('/api/v1/login').then(r => r.status)"),
        401,
        "no session left in the browser"
    );
    // Nothing of the citizen is left on the screen.
    assert_eq!(
        b.eval("document.getElementById('call-info').children.length"),
        0
    );
    // The session's token itself is logged out on the node.
    assert_eq!(node.http("GET", "/api/v1/login", Some(&token), None).0, 401);
    drop(phone);
}

impl Browser {
    /// Tabs to the script's first answer (a radio button).
    fn tab_to_radio(&mut self) {
        for _ in 0..30 {
            if self.eval("document.activeElement?.type === 'radio'") == true {
                return;
            }
            self.key("Tab", false);
        }
        panic!("the script's answers are not reachable with Tab");
    }
}

/// The supervisors' wallboard, by keyboard: a supervisor's token opens it
/// (a callbacks token does not), a citizen waiting with nobody logged in
/// shows in the queue's row as it happens, the operator's state in the
/// operators' table; no serious accessibility violation.
#[test]
fn a_supervisor_watches_the_queues_live_on_the_wallboard() {
    let scratch = Scratch::new("wallboard");
    let node = Node::start_toml(&scratch, config);
    let mut b = Browser::start(&scratch);
    b.open(&format!("http://127.0.0.1:{}/wallboard", node.http_port));
    b.wait_for(
        "document.activeElement.id === 'token'",
        "focus on the token",
    );
    let found = b.accessibility_violations();
    assert!(found.is_empty(), "wallboard login: {found:?}");
    b.type_text("callbacks-token-0123456789");
    b.key("Enter", false);
    b.wait_for(
        "document.getElementById('login-error').textContent.includes('supervisore')",
        "a callbacks token is not a supervisor's",
    );
    // Nor is an admin's: its rights never sit in a wall screen's cookie.
    assert_eq!(
        node.http(
            "POST",
            "/api/v1/login",
            None,
            Some(&format!(r#"{{"token": "{ADMIN}"}}"#))
        )
        .0,
        403
    );
    b.tab_to("token");
    b.type_text(SUPERVISOR);
    b.key("Enter", false);
    b.wait_for("!document.getElementById('board').hidden", "the board");
    assert_eq!(
        b.eval("document.getElementById('who').textContent"),
        "sala-roma"
    );
    let cookie = b.session_cookie().expect("the session cookie");
    let session = cookie["value"].as_str().unwrap().to_owned();
    assert!(session.starts_with("cs2.sala-roma."), "{session}");
    assert!(
        !session.contains(SUPERVISOR),
        "the token itself is not the cookie"
    );
    // Nobody logged in: a citizen waits, and the board shows it.
    // The citizen waits 5 s, then hangs up.
    let mut caller = trunk_to(
        &scratch,
        &node,
        "caller",
        "trunk_call.xml",
        &["-m", "1", "-d", "7000"],
    );
    b.wait_for(
        "[...document.querySelectorAll('#queues tbody tr')].some(r => r.cells[0].textContent === 'prenotazioni' && r.cells[2].textContent === '1')",
        "the waiting citizen on the board",
    );
    b.wait_for(
        "[...document.querySelectorAll('#agents tbody tr')].some(r => r.cells[0].textContent === '1001' && r.cells[2].textContent === 'Non registrato')",
        "the operator's state",
    );
    // Nobody to answer: the staffing advisor's alarm, above the table and
    // on the queue's row (a sign, not colour alone).
    b.wait_for(
        "document.getElementById('alarms').textContent.includes('prenotazioni')",
        "the staffing alarm",
    );
    b.wait_for(
        "[...document.querySelectorAll('#queues tbody tr')].some(r => r.cells[0].textContent === 'prenotazioni' && r.cells[9].classList.contains('alarm') && r.cells[9].textContent.startsWith('⚠'))",
        "the queue's row marked short",
    );
    // Logged out since the node started: how long is not known ("—").
    assert_eq!(
        b.eval("[...document.querySelectorAll('#agents tbody tr')].find(r => r.cells[0].textContent === '1001').cells[4].textContent"),
        "—"
    );
    let found = b.accessibility_violations();
    assert!(found.is_empty(), "wallboard: {found:?}");
    b.screenshot(&scratch, "wallboard.png");
    // The operator logs in on their phone; the supervisor puts them on a
    // break and back, by keyboard, audited under the supervisor's token.
    caller.expect_success(Duration::from_secs(30));
    // Today's figures (the page asks once a minute; asked again here):
    // the citizen who gave up after 7 s is an abandon, and no callback
    // is waiting.
    let today = "[...document.querySelectorAll('#queues tbody tr')].some(r => r.cells[0].textContent === 'prenotazioni' && r.cells[11].textContent === '100.0 %' && r.cells[10].textContent.endsWith('%') && r.cells[12].textContent === '0')";
    let start = std::time::Instant::now();
    while b.eval(&format!("Boolean({today})")) != serde_json::json!(true) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "today's figures: {}",
            b.eval("document.getElementById('queues').innerText")
        );
        b.eval("today()");
        std::thread::sleep(Duration::from_millis(300));
    }
    let phone = Sipp::spawn(
        &scratch,
        "phone",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    b.wait_for(
        "document.getElementById('do-pause-1001') !== null",
        "the break button",
    );
    b.tab_to("do-pause-1001");
    b.key("Enter", false);
    b.wait_for(
        "[...document.querySelectorAll('#agents tbody tr')].some(r => r.cells[0].textContent === '1001' && r.cells[2].textContent === 'In pausa')",
        "the operator on a break",
    );
    // Time in state from the break (m:ss, under a minute).
    b.wait_for(
        "[...document.querySelectorAll('#agents tbody tr')].some(r => r.cells[0].textContent === '1001' && /^0:[0-5]\\d$/.test(r.cells[4].textContent))",
        "the operator's time in state",
    );
    b.tab_to("do-resume-1001");
    b.key("Enter", false);
    b.wait_for(
        "[...document.querySelectorAll('#agents tbody tr')].some(r => r.cells[0].textContent === '1001' && r.cells[2].textContent === 'Disponibile')",
        "the operator available again",
    );
    // End of shift, by the supervisor: signed out, and the phone
    // registering again does not bring them back; Disponibile does.
    b.tab_to("do-signout-1001");
    b.key("Enter", false);
    let signed_out = "[...document.querySelectorAll('#agents tbody tr')].some(r => r.cells[0].textContent === '1001' && r.cells[2].textContent === 'Non registrato' && r.cells[3].textContent === 'fuori servizio')";
    b.wait_for(signed_out, "the operator signed out");
    // The gauges are sampled (the page is pushed at once): seen out there
    // too before the phone registers again.
    node.wait_metric(
        "centralino_queue_agents{queue=\"prenotazioni\",state=\"available\"}",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    assert_eq!(
        node.metric("centralino_queue_agents{queue=\"prenotazioni\",state=\"available\"}"),
        0.0,
        "the phone registered again, the operator still out"
    );
    b.wait_for(signed_out, "still signed out");
    b.tab_to("do-resume-1001");
    b.key("Enter", false);
    b.wait_for(
        "[...document.querySelectorAll('#agents tbody tr')].some(r => r.cells[0].textContent === '1001' && r.cells[2].textContent === 'Disponibile')",
        "the operator back in service",
    );
    // Each of the supervisor's actions is in the audit log under their
    // token's name (the store's group commit has it within a moment).
    let store = centralino_store::Store::open(&scratch.path("data").join("centralino.db"))
        .expect("the node's store");
    let start = std::time::Instant::now();
    loop {
        let tail = store.audit_tail(100).expect("audit");
        let forced = tail
            .iter()
            .filter(|e| {
                e.actor == "sala-roma" && e.status == 200 && e.action.contains("agent_state")
            })
            .count();
        if forced == 4 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{tail:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Another firm's supervisor cannot.
    assert_eq!(
        node.http(
            "POST",
            "/api/v1/agents/1001/state",
            Some("other-firm-supervisor-0123456789"),
            Some(r#"{"state": "paused"}"#)
        )
        .0,
        403
    );
    // The session has the supervisor's rights, no more.
    assert_eq!(
        node.http("GET", "/api/v1/queues", Some(&session), None).0,
        200
    );
    assert_eq!(
        node.http("POST", "/api/v1/config/reload", Some(&session), Some(""))
            .0,
        403
    );
    b.tab_to("logout");
    b.key("Enter", false);
    b.wait_for(
        "!document.getElementById('login').hidden",
        "the login form again",
    );
    assert_eq!(
        node.http("GET", "/api/v1/queues", Some(&session), None).0,
        401
    );
}
