//! End to end: the real binary between SIPp as carrier trunk and SIPp as
//! operators' phones, on 127.0.0.1 with ephemeral ports.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch, Sipp, register, scenario};

fn users(n: u32) -> Vec<u32> {
    (1001..1001 + n).collect()
}

fn demo_password(u: u32) -> String {
    format!("demo{u}")
}

/// 1,000 calls at 50 calls/s, all answered, spread over all 20 operators.
#[test]
fn thousand_calls_spread_over_twenty_operators() {
    let scratch = Scratch::new("load");
    let node = Node::start(&scratch, &NodeConfig::default());
    let agents = Sipp::spawn(
        &scratch,
        "agents",
        &[
            "-sf",
            &scenario("agent_answer.xml"),
            "-trace_logs",
            "-timeout",
            "120s",
        ],
    );
    register(&scratch, &node, &users(20), agents.port, demo_password);
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(5),
        |v| v == 20.0,
    );

    let mut trunk = Sipp::spawn(
        &scratch,
        "trunk",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("trunk_call.xml"),
            "-s",
            "100",
            "-m",
            "1000",
            "-r",
            "50",
            "-d",
            "200",
            "-timeout",
            "90s",
        ],
    );
    trunk.expect_success(Duration::from_secs(100));

    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(&m, "centralino_calls_total{outcome=\"answered\"}"),
        1000.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(
            &m,
            "centralino_queue_dequeued_total{outcome=\"answered\",queue=\"info\"}"
        ),
        1000.0
    );
    let mut per_agent: HashMap<String, u32> = HashMap::new();
    for l in agents.log_lines() {
        if let Some(rest) = l.strip_prefix("answered INVITE sip:") {
            *per_agent
                .entry(rest.trim_end_matches('@').to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(per_agent.values().sum::<u32>(), 1000, "{per_agent:?}");
    assert_eq!(
        per_agent.len(),
        20,
        "every operator got calls: {per_agent:?}"
    );
    // Longest-idle with equal short calls keeps the spread tight.
    assert!(
        per_agent.values().all(|&n| (25..=75).contains(&n)),
        "{per_agent:?}"
    );
    // Privacy: the callers' numbers never reach the log unmasked.
    let logs = node.logs();
    assert!(!logs.contains("+3933300"), "unmasked number in the log");
}

/// A node with operator 1001 whose phone is SIPp running `phone` (with
/// `phone_args`), logged in and available.
fn one_operator(
    scratch: &Scratch,
    cfg: NodeConfig,
    phone: &str,
    phone_args: &[&str],
) -> (Node, Sipp) {
    let node = Node::start(scratch, &NodeConfig { agents: 1, ..cfg });
    let mut args = vec![
        "-sf".to_owned(),
        scenario(phone),
        "-timeout".to_owned(),
        "30s".to_owned(),
    ];
    args.extend(phone_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sipp = Sipp::spawn(scratch, "phone", &args);
    register(scratch, &node, &[1001], sipp.port, demo_password);
    wait_available(&node, 1.0);
    (node, sipp)
}

fn wait_available(node: &Node, n: f64) {
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(5),
        |v| v == n,
    );
}

/// The carrier trunk: SIPp running `trunk` towards DID 100.
fn trunk(scratch: &Scratch, node: &Node, trunk: &str, args: &[&str]) -> Sipp {
    crate::common::trunk_to(scratch, node, "trunk", trunk, args)
}

/// The caller cancels while the operator's phone rings: 487 to the caller,
/// CANCEL to the operator, who is available again.
#[test]
fn caller_cancel_while_ringing_cancels_the_operator_leg() {
    let scratch = Scratch::new("cancel");
    let cfg = NodeConfig {
        ring_timeout_seconds: 30,
        ..NodeConfig::default()
    };
    let (node, mut phone) = one_operator(&scratch, cfg, "agent_noanswer.xml", &["-m", "1"]);
    let mut caller = trunk(
        &scratch,
        &node,
        "trunk_cancel.xml",
        &["-m", "1", "-d", "1000"],
    );
    caller.expect_success(Duration::from_secs(40));
    phone.expect_success(Duration::from_secs(10));
    node.wait_metric(
        "centralino_calls_total{outcome=\"cancelled\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    wait_available(&node, 1.0);
}

/// The first operator does not answer within the ring timeout: the call
/// moves to the next one, who answers.
#[test]
fn no_answer_moves_the_call_to_the_next_operator() {
    let scratch = Scratch::new("noanswer");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 2,
            ring_timeout_seconds: 1,
            ..NodeConfig::default()
        },
    );
    let mut silent = Sipp::spawn(
        &scratch,
        "silent",
        &[
            "-sf",
            &scenario("agent_noanswer.xml"),
            "-m",
            "1",
            "-timeout",
            "30s",
        ],
    );
    let mut answering = Sipp::spawn(
        &scratch,
        "answering",
        &[
            "-sf",
            &scenario("agent_answer.xml"),
            "-m",
            "1",
            "-timeout",
            "30s",
        ],
    );
    // 1001 logs in first, so it is the longest idle and is offered the call first.
    register(&scratch, &node, &[1001], silent.port, demo_password);
    wait_available(&node, 1.0);
    register(&scratch, &node, &[1002], answering.port, demo_password);
    wait_available(&node, 2.0);
    let mut caller = trunk(&scratch, &node, "trunk_call.xml", &["-m", "1", "-d", "100"]);
    caller.expect_success(Duration::from_secs(40));
    silent.expect_success(Duration::from_secs(10));
    answering.expect_success(Duration::from_secs(10));
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(&m, "centralino_agent_offers_total{outcome=\"no_answer\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(&m, "centralino_agent_offers_total{outcome=\"answered\"}"),
        1.0,
        "{m}"
    );
}

/// The operator hangs up first: BYE reaches the caller.
#[test]
fn operator_bye_ends_the_caller_leg() {
    let scratch = Scratch::new("agentbye");
    let (node, mut phone) = one_operator(
        &scratch,
        NodeConfig::default(),
        "agent_hangup.xml",
        &["-m", "1", "-d", "300"],
    );
    let mut caller = trunk(&scratch, &node, "trunk_hangup_by_agent.xml", &["-m", "1"]);
    caller.expect_success(Duration::from_secs(40));
    phone.expect_success(Duration::from_secs(10));
    node.wait_metric("centralino_calls_active", Duration::from_secs(5), |v| {
        v == 0.0
    });
    wait_available(&node, 1.0);
}

/// Two callers, one operator: the second waits in the queue (ringback) and
/// is connected when the operator frees up.
#[test]
fn all_busy_caller_waits_then_connects() {
    let scratch = Scratch::new("busy");
    let (node, mut phone) = one_operator(
        &scratch,
        NodeConfig::default(),
        "agent_answer.xml",
        &["-m", "2"],
    );
    let mut caller = trunk(
        &scratch,
        &node,
        "trunk_call.xml",
        &["-m", "2", "-r", "10", "-d", "1500"],
    );
    caller.expect_success(Duration::from_secs(40));
    phone.expect_success(Duration::from_secs(10));
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(&m, "centralino_calls_total{outcome=\"answered\"}"),
        2.0,
        "{m}"
    );
    // The second caller waited for the first call (1.5 s) to end.
    let waited = crate::common::metric_in(
        &m,
        "centralino_queue_wait_duration_seconds_sum{queue=\"info\"}",
    );
    assert!(waited >= 1.0, "total queue wait {waited}");
}

/// An INVITE from an address that is no trunk peer: 403, and no operator
/// is ever called (no toll fraud, no state).
#[test]
fn invite_from_unknown_address_is_refused_without_b_leg() {
    let scratch = Scratch::new("untrusted");
    let cfg = NodeConfig {
        trunk_peers: vec!["192.0.2.10"],
        ..NodeConfig::default()
    };
    let (node, phone) = one_operator(&scratch, cfg, "agent_answer.xml", &[]);
    let mut caller = trunk(&scratch, &node, "trunk_refused.xml", &["-m", "3"]);
    caller.expect_success(Duration::from_secs(30));
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(
            &m,
            "centralino_sip_rejected_total{reason=\"untrusted_source\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(
            &m,
            "centralino_sip_requests_total{direction=\"out\",method=\"INVITE\"}"
        ),
        0.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(&m, "centralino_queue_enqueued_total{queue=\"info\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(&m, "centralino_calls_active"),
        0.0,
        "{m}"
    );
    assert!(phone.log_lines().is_empty());
}

/// A wrong password gets 403 and never registers the operator.
#[test]
fn wrong_password_is_refused_and_never_registered() {
    let scratch = Scratch::new("wrongpw");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 2,
            ..NodeConfig::default()
        },
    );
    let csv = scratch.path("wrong.csv");
    std::fs::write(
        &csv,
        "SEQUENTIAL\n1001;[authentication username=1001 password=not-demo];5999\n1002;[authentication username=1002 password=demo1001];5999\n",
    )
    .unwrap();
    let mut sipp = Sipp::spawn(
        &scratch,
        "wrong",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("register_wrong.xml"),
            "-inf",
            crate::common::path_str(&csv),
            "-m",
            "2",
            "-timeout",
            "20s",
        ],
    );
    sipp.expect_success(Duration::from_secs(30));
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(&m, "centralino_registrations_total{outcome=\"refused\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(&m, "centralino_registrations_total{outcome=\"ok\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(&m, "centralino_registered_agents"),
        0.0,
        "{m}"
    );
}

/// D4: password guessing against operator 1001 from another address
/// (127.0.0.2) bans that address for 1001 after 5 failures: even the right
/// password fails from there during the ban, while the operator's own phone
/// (127.0.0.1) registers normally.
#[test]
fn password_guessing_bans_the_guesser_not_the_operator() {
    let scratch = Scratch::new("bruteforce");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    );
    let guess = |label: &str, lines: &str, n: &str| {
        let csv = scratch.path(&format!("{label}.csv"));
        std::fs::write(&csv, format!("SEQUENTIAL\n{lines}")).unwrap();
        let mut sipp = Sipp::spawn_from(
            &scratch,
            label,
            "127.0.0.2",
            &[
                &node.sip_addr(),
                "-sf",
                &scenario("register_wrong.xml"),
                "-inf",
                crate::common::path_str(&csv),
                "-m",
                n,
                "-r",
                "20",
                "-timeout",
                "20s",
            ],
        );
        // Refused calls are failures for SIPp once banned (403 before any
        // challenge): only the node's counters matter here.
        let _ = sipp.wait(Duration::from_secs(30));
    };
    let wrong: String = (0..30)
        .map(|i| format!("1001;[authentication username=1001 password=guess{i}];5999\n"))
        .collect();
    guess("guesser", &wrong, "30");
    // An outcome never seen is not exposed: absent counts as 0 here.
    let registrations = |outcome: &str| {
        node.metric_or_zero(&format!(
            "centralino_registrations_total{{outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(
        (registrations("refused"), registrations("banned")),
        (5.0, 25.0)
    );
    assert_eq!(
        node.metric("centralino_auth_bans_total{scope=\"user\"}"),
        1.0
    );
    // The right password from the banned address still fails.
    guess(
        "guesser-right",
        "1001;[authentication username=1001 password=demo1001];5999\n",
        "1",
    );
    assert_eq!((registrations("banned"), registrations("ok")), (26.0, 0.0));
    // The operator's own phone is not locked out.
    register(&scratch, &node, &[1001], 5998, demo_password);
    reaches(&node, "centralino_registered_agents", 1.0, 5);
    reaches(&node, "centralino_auth_banned{scope=\"user\"}", 1.0, 5);
    assert!(
        node.logs()
            .contains("too many authentication failures: banned")
    );
}

/// The carrier trunk over TCP (one connection, Content-Length framing):
/// calls are answered and torn down as over UDP.
#[test]
fn calls_from_a_tcp_trunk() {
    let scratch = Scratch::new("tcptrunk");
    let (node, mut phone) = one_operator(
        &scratch,
        NodeConfig::default(),
        "agent_answer.xml",
        &["-m", "20"],
    );
    let mut caller = trunk(
        &scratch,
        &node,
        "trunk_call.xml",
        &["-t", "t1", "-m", "20", "-r", "10", "-d", "50"],
    );
    caller.expect_success(Duration::from_secs(40));
    phone.expect_success(Duration::from_secs(10));
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(&m, "centralino_calls_total{outcome=\"answered\"}"),
        20.0,
        "{m}"
    );
    assert_eq!(
        crate::common::metric_in(&m, "centralino_sip_retransmissions_total"),
        0.0,
        "{m}"
    );
}

/// A carrier using session timers (RFC 4028) talks to a real SIP stack's
/// parser: SIPp checks the 200 to its INVITE and to its refreshing UPDATE
/// carry `Session-Expires: 90;refresher=uac` (and `Require: timer`). What
/// happens when refreshes stop is the engine's test (virtual time).
#[test]
fn a_carrier_with_session_timers_gets_them_and_refreshes_by_update() {
    let scratch = Scratch::new("session-timer");
    let (node, mut phone) = one_operator(
        &scratch,
        NodeConfig::default(),
        "agent_answer.xml",
        &["-m", "1"],
    );
    let mut caller = trunk(&scratch, &node, "trunk_session_timer.xml", &["-m", "1"]);
    caller.expect_success(Duration::from_secs(30));
    phone.expect_success(Duration::from_secs(10));
    assert_eq!(node.metric("centralino_session_timer_expired_total"), 0.0);
}

/// A carrier that requires `100rel` (RFC 3262), played by SIPp: the 183
/// is reliable (`Require: 100rel`, an `RSeq` SIPp reads back into its
/// PRACK's `RAck`), the PRACK is answered, and the call then completes.
#[test]
fn a_carrier_requiring_100rel_gets_a_reliable_183_and_completes_after_its_prack() {
    let scratch = Scratch::new("100rel");
    let (node, mut phone) = one_operator(
        &scratch,
        NodeConfig::default(),
        "agent_answer.xml",
        &["-m", "1"],
    );
    let mut caller = trunk(&scratch, &node, "trunk_100rel.xml", &["-m", "1"]);
    caller.expect_success(Duration::from_secs(30));
    phone.expect_success(Duration::from_secs(10));
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(&m, "centralino_calls_total{outcome=\"answered\"}"),
        1.0,
        "{m}"
    );
}

/// A caller who withheld the number, delivered the way carriers do (RFC
/// 3325: anonymous From, the number in `P-Asserted-Identity`, `Privacy:
/// id`): the operator's phone (SIPp, checking its INVITE's From) is
/// offered the call from "Anonymous", and the call completes.
#[test]
fn a_withheld_number_reaches_the_operator_as_anonymous() {
    let scratch = Scratch::new("privacy");
    let (node, mut phone) = one_operator(
        &scratch,
        NodeConfig::default(),
        "agent_answer_anonymous.xml",
        &["-m", "1"],
    );
    let mut caller = trunk(&scratch, &node, "trunk_private.xml", &["-m", "1"]);
    caller.expect_success(Duration::from_secs(30));
    phone.expect_success(Duration::from_secs(10));
}

/// The log check every node runs at the end of its test (A12) finds a
/// full number and lets masked ones, ports and times through.
#[test]
fn the_log_check_finds_full_numbers_only() {
    assert!(crate::common::unmasked_number(
        "call queued caller=+393331234567 queue=info"
    ));
    assert!(crate::common::unmasked_number("number=+39061234 x"));
    for clean in [
        "call queued caller=******567 queue=info",
        "2026-11-30T12:59:40.535241Z INFO addr=127.0.0.1:54014",
        "+39 and nothing else",
        "+39123",
    ] {
        assert!(!crate::common::unmasked_number(clean), "{clean}");
    }
}

/// A phone that goes away without unregistering (SIPp exits, nothing
/// listens at its Contact) is found by OPTIONS (`registrar.qualify_seconds`)
/// and logged out, so calls stop ringing a dead phone.
#[test]
fn a_phone_gone_without_unregistering_is_logged_out_by_options() {
    let scratch = Scratch::new("qualify");
    let cfg = NodeConfig {
        agents: 1,
        ..NodeConfig::default()
    };
    let node = Node::start_toml(&scratch, |sip, http| {
        // T1 100 ms: an unanswered OPTIONS gives up after 6.4 s.
        cfg.toml(sip, http)
            .replacen("[sip]\n", "[sip]\nt1_milliseconds = 100\n", 1)
            + "\n[registrar]\nqualify_seconds = 5\n"
    });
    // register.xml registers 1001 and exits: its Contact is then dead.
    register(
        &scratch,
        &node,
        &[1001],
        crate::common::free_port(),
        demo_password,
    );
    reaches(&node, "centralino_registered_agents", 1.0, 5);
    reaches(&node, "centralino_agents_unreachable_total", 1.0, 20);
    reaches(&node, "centralino_registered_agents", 0.0, 5);
    assert!(node.logs().contains("does not answer OPTIONS: logged out"));
}

/// Waits (at most `secs`) until `series` reads `want`.
fn reaches(node: &Node, series: &str, want: f64, secs: u64) {
    node.wait_metric(series, Duration::from_secs(secs), |v| v == want);
}
