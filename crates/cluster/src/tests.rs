//! The network's rules in virtual time.

// Tests may read the clock: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use crate::membership::{MAX_NODES, Refused};
use crate::*;

const S: Duration = Duration::from_secs(1);

fn queue(tenant: &str, name: &str, waiting: u32, available: u32) -> QueueSummary {
    QueueSummary {
        tenant: tenant.into(),
        queue: name.into(),
        waiting,
        oldest_wait_ms: u64::from(waiting) * 1000,
        expected_wait_seconds: 0,
        available,
        busy: 1,
        paused: 0,
        logged_out: 0,
    }
}

fn summary(node: &str, boot: u64, seq: u64, queues: Vec<QueueSummary>) -> Summary {
    Summary {
        node: node.into(),
        boot,
        seq,
        at_ms: 0,
        draining: false,
        queues,
    }
}

fn events(m: &mut Membership) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

#[test]
fn a_node_is_up_from_its_first_summary_and_down_after_three_silent_heartbeats() {
    let t0 = Instant::now();
    let mut m = Membership::new("roma-1", S);
    assert_eq!(m.up(), 1);
    assert_eq!(
        m.receive(t0, summary("roma-1", 1, 1, vec![])),
        Err(Refused::Own)
    );
    m.receive(t0, summary("milano-1", 7, 1, vec![])).unwrap();
    assert_eq!(events(&mut m), [Event::Up("milano-1".into())]);
    assert_eq!(m.poll_timeout(), Some(t0 + 3 * S));
    // Two heartbeats missed: still up.
    m.tick(t0 + 2 * S);
    assert!(events(&mut m).is_empty());
    m.receive(t0 + 2 * S, summary("milano-1", 7, 2, vec![]))
        .unwrap();
    // A late or repeated one changes nothing.
    assert_eq!(
        m.receive(t0 + 2 * S, summary("milano-1", 7, 2, vec![])),
        Err(Refused::Stale)
    );
    assert_eq!(
        m.receive(t0 + 2 * S, summary("milano-1", 7, 1, vec![])),
        Err(Refused::Stale)
    );
    m.tick(t0 + 5 * S - Duration::from_millis(1));
    assert_eq!(m.up(), 2);
    m.tick(t0 + 5 * S);
    assert_eq!(events(&mut m), [Event::Down("milano-1".into())]);
    assert_eq!((m.up(), m.down()), (1, 1));
    assert_eq!(m.poll_timeout(), None);
    // It comes back after a restart: a new boot, its sequence from 1.
    m.receive(t0 + 9 * S, summary("milano-1", 8, 1, vec![]))
        .unwrap();
    assert_eq!(events(&mut m), [Event::Up("milano-1".into())]);
    // A restart nobody saw as down is reported as one.
    m.receive(t0 + 10 * S, summary("milano-1", 9, 1, vec![]))
        .unwrap();
    assert_eq!(events(&mut m), [Event::Restarted("milano-1".into())]);
    let v: Vec<NodeView<'_>> = m.nodes(t0 + 10 * S).collect();
    assert_eq!(
        (v[0].node, v[0].up, v[0].silent),
        ("milano-1", true, Duration::ZERO)
    );
}

#[test]
fn a_queue_with_the_same_tenant_and_name_on_several_nodes_is_one() {
    let t0 = Instant::now();
    let mut m = Membership::new("roma-1", S);
    let mine = vec![
        queue("asl", "vaccini", 3, 0),
        queue("asl", "solo-roma", 1, 1),
    ];
    m.receive(
        t0,
        summary("milano-1", 1, 1, vec![queue("asl", "vaccini", 2, 5)]),
    )
    .unwrap();
    m.receive(
        t0,
        summary("napoli-1", 1, 1, vec![queue("altra", "vaccini", 9, 9)]),
    )
    .unwrap();
    let n = m.national(&mine);
    let vaccini = n
        .iter()
        .find(|q| q.tenant == "asl" && q.queue == "vaccini")
        .unwrap();
    assert_eq!(vaccini.nodes, ["roma-1", "milano-1"]);
    assert_eq!(
        (vaccini.waiting, vaccini.available, vaccini.oldest_wait_ms),
        (5, 5, 3000)
    );
    // Another firm's queue of the same name is another queue.
    assert_eq!(n.len(), 3);
    // A node down (or draining) no longer counts.
    m.tick(t0 + 3 * S);
    let n = m.national(&mine);
    let vaccini = n
        .iter()
        .find(|q| q.queue == "vaccini" && q.tenant == "asl")
        .unwrap();
    assert_eq!((vaccini.waiting, vaccini.available), (3, 0));
}

#[test]
fn summaries_are_bounded_on_the_wire_and_the_table_too() {
    let s = summary("milano-1", 1, 1, vec![queue("asl", "vaccini", 2, 5)]);
    assert_eq!(Summary::decode(&s.encode()).unwrap(), s);
    assert!(matches!(
        Summary::decode(b"{"),
        Err(WireError::Malformed(_))
    ));
    let mut bad = s.clone();
    bad.node = "milano 1; DROP".into();
    assert_eq!(
        Summary::decode(&bad.encode()),
        Err(WireError::BadName("node"))
    );
    let mut bad = s.clone();
    bad.queues[0].queue = String::new();
    assert_eq!(
        Summary::decode(&bad.encode()),
        Err(WireError::BadName("queue"))
    );
    let huge = vec![b' '; summary::MAX_SUMMARY_BYTES + 1];
    assert!(matches!(
        Summary::decode(&huge),
        Err(WireError::TooLarge(_))
    ));
    let unknown = br#"{"node":"a","boot":1,"seq":1,"at_ms":0,"draining":false,"queues":[],"x":1}"#;
    assert!(matches!(
        Summary::decode(unknown),
        Err(WireError::Malformed(_))
    ));
    // A flood of invented nodes stops at the table's bound.
    let t0 = Instant::now();
    let mut m = Membership::new("roma-1", S);
    for i in 0..MAX_NODES {
        m.receive(t0, summary(&format!("n{i}"), 1, 1, vec![]))
            .unwrap();
    }
    assert_eq!(
        m.receive(t0, summary("one-more", 1, 1, vec![])),
        Err(Refused::Full)
    );
}
