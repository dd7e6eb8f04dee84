//! The disk refuses writes for a while (TEST-MATRIX C7, the embedded
//! store's case): every fsync fails with EIO while a flag file exists
//! (`tests/fixtures/slow_fsync.c`, preloaded). Calls go on; a new callback
//! is refused with 503 (never acknowledged unless durable); the call's
//! record is kept in memory and reaches the disk once it works again.

use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch};

const TOKEN: &str = "outage-admin-token-0123";

#[test]
fn a_failing_disk_delays_call_records_and_refuses_callbacks_but_loses_nothing() {
    let scratch = Scratch::new("outage");
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
    let mut phone = crate::common::one_answering_phone(&scratch, &node);
    let book = || {
        node.http(
            "POST",
            "/api/v1/callbacks",
            Some(TOKEN),
            Some(r#"{"queue": "info", "number": "+393331230001"}"#),
        )
    };

    // The disk fails.
    std::fs::write(&flag, b"").unwrap();
    let (code, body) = book();
    assert_eq!(code, 503, "not acknowledged unless durable: {body}");
    assert!(body.contains("store"), "{body}");
    // A call all the same: the trunk's caller talks to operator 1001.
    let mut trunk = crate::common::trunk_to(
        &scratch,
        &node,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "500"],
    );
    trunk.expect_success(Duration::from_secs(30));
    phone.expect_success(Duration::from_secs(30));
    // Its record waits in memory.
    node.wait_metric("centralino_store_backlog", Duration::from_secs(10), |v| {
        v >= 1.0
    });
    assert!(node.metric("centralino_store_errors_total") >= 1.0);
    let db = scratch.path("data").join("centralino.db");
    let cdrs = || {
        centralino_store::Store::open(&db)
            .and_then(|s| s.recent_cdrs(10))
            .expect("the node's store")
    };
    assert!(cdrs().is_empty(), "nothing reached the disk");

    // The disk is back: the record is written, the backlog empties, and
    // callbacks are taken again.
    std::fs::remove_file(&flag).unwrap();
    node.wait_metric("centralino_store_backlog", Duration::from_secs(10), |v| {
        v == 0.0
    });
    let start = std::time::Instant::now();
    let cdr = loop {
        if let Some(c) = cdrs().into_iter().find(|c| c.ended_at.is_some()) {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", cdrs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(cdr.agent.as_deref(), Some("1001"));
    assert_eq!(cdr.outcome.as_deref(), Some("caller_hangup"));
    assert_eq!(node.metric_or_zero("centralino_store_dropped_total"), 0.0);
    let (code, body) = book();
    assert_eq!(code, 201, "{body}");

    // Another process holds the database's write lock for 12 s, past the
    // busy timeout (5 s) twice: the node's transactions cannot even begin.
    // The request is refused (at 5 s); the audit entry of that refusal (a
    // write nobody waits for, whose own transaction fails to begin at
    // 10 s) is kept and written once the lock is gone.
    let (held, locked) = std::sync::mpsc::channel();
    let holder = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut other = centralino_store::Store::open(&db).expect("a second opener");
            other
                .atomically(|_| {
                    held.send(()).unwrap();
                    std::thread::sleep(Duration::from_secs(12));
                    Ok(())
                })
                .expect("the lock held and released");
        })
    };
    locked.recv().unwrap();
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(r#"{"queue": "info", "number": "+393331230002"}"#),
    );
    assert_eq!(code, 503, "{body}");
    holder.join().unwrap();
    let refusals = || {
        centralino_store::Store::open(&db)
            .and_then(|s| s.audit_tail(100))
            .expect("audit")
            .into_iter()
            .filter(|e| e.actor == "ops" && e.action == "callbacks_create" && e.status == 503)
            .count()
    };
    let start = std::time::Instant::now();
    // Both refusals, the failing disk's and the lock's, are in the log.
    while refusals() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", refusals());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.metric_or_zero("centralino_store_dropped_total"), 0.0);
}
