//! Operators managed live: an operator added to the file and reloaded
//! (SIGHUP) registers and takes a call without a restart; one removed
//! can no longer register.

use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch, Sipp, answering_phone, scenario, trunk_to};

#[test]
fn an_operator_added_by_a_reload_takes_a_call_without_a_restart() {
    let scratch = Scratch::new("operators-live");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    );
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
