//! D6 (and the scanner side of D4/D5) with the real tools: Debian's
//! SIPVicious (`svmap`, `svwar`, `svcrack`) against a node on 127.0.0.1.
//! They announce themselves (`friendly-scanner`); the node drops them
//! without a word, so each finds nothing, and counts them.

use std::process::Command;

use crate::common::{Node, NodeConfig, Scratch};

/// Runs a SIPVicious tool against the node: what it printed.
fn sipvicious(tool: &str, node: &Node, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(tool)
        .args(args)
        .args(["-p", &node.sip_port.to_string(), "127.0.0.1"])
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (install Debian's sipvicious; scripts/test does)"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sipvicious_finds_nothing_and_is_counted() {
    let scratch = Scratch::new("scanners");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 2,
            ..NodeConfig::default()
        },
    );
    let map = sipvicious("svmap", &node, &[]);
    assert!(map.contains("found nothing"), "svmap: {map}");
    let war = sipvicious("svwar", &node, &["-e1000-1010", "-m", "REGISTER"]);
    assert!(war.contains("found nothing"), "svwar: {war}");
    let crack = sipvicious("svcrack", &node, &["-u1001", "-r1-100"]);
    assert!(crack.contains("found nothing"), "svcrack: {crack}");
    assert!(node.metric("centralino_sip_rejected_total{reason=\"scanner\"}") >= 3.0);
    // Nothing reached the registrar.
    assert_eq!(
        node.metric_or_zero("centralino_registrations_total{outcome=\"challenged\"}"),
        0.0
    );
}
