//! `/healthz` tells the truth: `200 ok` while the engine beats and the
//! store writes, `503` with the reason otherwise. Here the disk refuses
//! every write for a while (`tests/fixtures/slow_fsync.c`'s
//! FSYNC_FAIL_WHILE): the node says `store stalled`, then `ok` again once
//! the disk is back. (Draining: `tests/e2e/drain.rs`; an engine that stops
//! beating and a store thread that ends: the unit tests of
//! `crates/net/src/health.rs`.)

use std::time::{Duration, Instant};

use crate::common::{Node, NodeConfig, Scratch};

const TOKEN: &str = "health-admin-token-0123";

/// Polls `/healthz` until it answers `want`, at most `limit`.
fn wait_health(node: &Node, want: (u16, &str), limit: Duration) {
    let start = Instant::now();
    loop {
        let (code, body) = node.http_get("/healthz");
        if (code, body.as_str()) == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "/healthz stayed {code} {body:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn healthz_reports_a_store_the_disk_refuses_and_its_recovery() {
    let scratch = Scratch::new("health-store");
    let flag = scratch.path("disk-fails");
    let mut env = crate::common::slow_disk(&scratch, 0);
    env.push(("FSYNC_FAIL_WHILE", flag.display().to_string()));
    let cfg = NodeConfig {
        agents: 1,
        ..NodeConfig::default()
    };
    let node = Node::start_toml_env(&scratch, "info", &env, |sip, http| {
        format!(
            "{}\n[[api.tokens]]\nname = \"ops\"\ntoken = \"{TOKEN}\"\nrole = \"admin\"\n",
            cfg.toml(sip, http)
        )
    });
    assert_eq!(node.http_get("/healthz"), (200, "ok\n".to_owned()));

    // The disk fails; a callback request is refused, and the audit entry
    // of that refusal (a write nobody waits for) waits in memory.
    std::fs::write(&flag, b"").unwrap();
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(r#"{"queue": "info", "number": "+393331230001"}"#),
    );
    assert_eq!(code, 503, "{body}");
    wait_health(&node, (503, "store stalled\n"), Duration::from_secs(20));
    // The metrics still answer, and say why.
    assert!(node.metric("centralino_store_backlog") >= 1.0);

    // The disk is back: the backlog is written, the node is healthy.
    std::fs::remove_file(&flag).unwrap();
    wait_health(&node, (200, "ok\n"), Duration::from_secs(10));
    assert_eq!(node.metric("centralino_store_backlog"), 0.0);
}
