//! Graceful shutdown (SIGTERM): the node stops taking calls (503 with
//! Retry-After, `/healthz` 503) while the calls in progress go on; it exits
//! by itself once they are over, or ends them at `sip.drain_seconds`, and
//! every call record is on disk before it exits. Real SIPp trunk and phone.

use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch, Sipp};

/// A node with `drain_seconds`, one operator whose SIPp phone answers at
/// once, and a call from the trunk (`trunk_scenario`, -d `talk_ms`) that
/// the operator is talking on when this returns.
fn node_with_a_call(
    scratch: &Scratch,
    drain_seconds: u64,
    trunk_scenario: &str,
    talk_ms: &str,
) -> (Node, Sipp, Sipp) {
    node_with_a_call_over(scratch, drain_seconds, trunk_scenario, talk_ms, "u1")
}

/// The same with the carrier on SIPp's transport `transport` (`u1` UDP,
/// `t1` one TCP connection).
fn node_with_a_call_over(
    scratch: &Scratch,
    drain_seconds: u64,
    trunk_scenario: &str,
    talk_ms: &str,
    transport: &str,
) -> (Node, Sipp, Sipp) {
    let cfg = NodeConfig {
        agents: 1,
        ..NodeConfig::default()
    };
    let node = Node::start_toml(scratch, |sip, http| {
        cfg.toml(sip, http).replacen(
            "[sip]\n",
            &format!("[sip]\ndrain_seconds = {drain_seconds}\n"),
            1,
        )
    });
    let phone = crate::common::one_answering_phone(scratch, &node);
    let trunk = crate::common::trunk_to(
        scratch,
        &node,
        "trunk",
        trunk_scenario,
        &["-m", "1", "-d", talk_ms, "-t", transport],
    );
    node.wait_metric(
        "centralino_agents{state=\"on_call\",tenant=\"demo\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    (node, phone, trunk)
}

/// The closed call records in the node's store: (outcome, agent).
fn cdrs(scratch: &Scratch) -> Vec<(Option<String>, Option<String>)> {
    let store = centralino_store::Store::open(&scratch.path("data").join("centralino.db"))
        .expect("the node's store");
    store
        .recent_cdrs(10)
        .expect("cdrs")
        .into_iter()
        .map(|c| (c.outcome, c.agent))
        .collect()
}

#[test]
fn sigterm_refuses_new_calls_and_waits_for_the_call_in_progress() {
    let scratch = Scratch::new("drain");
    let (mut node, mut phone, mut trunk) = node_with_a_call(&scratch, 30, "trunk_call.xml", "3000");
    node.terminate();
    // Load balancers see it first.
    let start = std::time::Instant::now();
    loop {
        let (code, body) = node.http_get("/healthz");
        if code == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "healthz: {code}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new call is refused with 503 (the carrier's next route takes it).
    let mut late = crate::common::trunk_to(&scratch, &node, "late", "trunk_call.xml", &["-m", "1"]);
    late.expect_success(Duration::from_secs(20));
    assert_eq!(
        node.metric("centralino_sip_rejected_total{reason=\"draining\"}"),
        1.0
    );
    // The call in progress ends as the caller wishes; then the node leaves.
    trunk.expect_success(Duration::from_secs(20));
    phone.expect_success(Duration::from_secs(10));
    let st = node.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    assert!(node.logs().contains("drained: no call left"));
    assert_eq!(
        cdrs(&scratch),
        [(Some("caller_hangup".into()), Some("1001".into()))],
        "the record of the call is on disk, closed normally"
    );
}

/// The caller would talk for a minute; the node, told to stop, gives it
/// 1 s: both legs get BYE (the carrier's on SIPp's `transport`), the node
/// exits, and the call's record is closed as `shutdown`.
fn the_drain_limit_ends_the_call(name: &str, transport: &str) {
    let scratch = Scratch::new(name);
    let (mut node, mut phone, mut trunk) =
        node_with_a_call_over(&scratch, 1, "trunk_hangup_by_agent.xml", "60000", transport);
    let over_tcp = if transport == "t1" { 1.0 } else { 0.0 };
    assert_eq!(node.metric("centralino_sip_tcp_connections"), over_tcp);
    node.terminate();
    trunk.expect_success(Duration::from_secs(15));
    phone.expect_success(Duration::from_secs(15));
    let st = node.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "{st:?}");
    assert_eq!(
        cdrs(&scratch),
        [(Some("shutdown".into()), Some("1001".into()))]
    );
}

#[test]
fn the_drain_limit_ends_the_calls_left_and_keeps_their_records() {
    the_drain_limit_ends_the_call("drain-limit", "u1");
}

/// The same over TCP: the node's BYE to the carrier leaves on the
/// carrier's connection, written by a stream thread after the engine has
/// ended its calls, before the process exits.
#[test]
fn the_drain_limit_ends_a_call_over_tcp_with_a_bye_on_its_connection() {
    the_drain_limit_ends_the_call("drain-tcp", "t1");
}
