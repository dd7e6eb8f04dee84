//! The network's rules in virtual time.

// Tests may read the clock: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use crate::membership::{MAX_NODES, Refused};
use crate::offer::{Decision, Grants, OfferReply, OfferRequest, Outcome, Outgoing, Refusal};
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
        lent: Vec::new(),
        sip: None,
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
    // A summary of a past life (an older boot), replayed: refused, the
    // node is not taken back to it.
    assert_eq!(
        m.receive(t0 + 10 * S, summary("milano-1", 8, 50, vec![])),
        Err(Refused::Stale)
    );
    assert!(events(&mut m).is_empty());
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

fn request(out: &mut Outgoing, now: Instant, call: u64) -> OfferRequest {
    out.offer(now, call, "milano-1", "asl", "vaccini", None, 0, 30 * S)
        .expect("an offer")
}

/// Node A asks node B for call 7 and B grants; the INVITE claims the
/// operator once; a second request for the same offer (a lost reply,
/// retried) gets the same grant and no second operator.
#[test]
fn an_offer_is_granted_once_and_claimed_once() {
    let t0 = Instant::now();
    let mut a = Outgoing::new("roma-1", 0xb007);
    let mut b = Grants::default();
    let req = request(&mut a, t0, 7);
    assert!(req.id.starts_with("roma-1-b007-"));
    assert_eq!(req.waited_ms, 30_000);
    assert_eq!(
        a.offer(t0, 7, "napoli-1", "asl", "vaccini", None, 0, S),
        None,
        "one offer per call at a time"
    );
    assert_eq!(b.request(&req), Decision::Reserve);
    let reply = b.granted(
        t0,
        &req,
        42,
        "sip:offer@127.0.0.2:5060".into(),
        "1001".into(),
    );
    // The reply is lost; A's retry of the same request: the same grant.
    assert_eq!(b.request(&req), Decision::Repeat(reply.clone()));
    assert_eq!(b.held(), 1);
    let Some(Outcome::Granted {
        call,
        target,
        id,
        until,
        ..
    }) = a.reply(t0, "milano-1", reply.clone())
    else {
        panic!("a grant")
    };
    assert_eq!((call, target.as_str()), (7, "sip:offer@127.0.0.2:5060"));
    assert_eq!(until, t0 + offer::LEASE);
    // A duplicate grant is not a second one: released.
    assert_eq!(
        a.reply(t0, "milano-1", reply),
        Some(Outcome::Release {
            node: "milano-1".into(),
            id: id.clone()
        })
    );
    // Only the node asked may claim it, once.
    assert_eq!(b.claim(t0 + S, &id, "napoli-1"), None);
    assert_eq!(b.claim(t0 + S, &id, "roma-1"), Some(42));
    assert_eq!(b.claim(t0 + S, &id, "roma-1"), None);
    assert_eq!(b.held(), 0);
}

/// A reply lost for good: the call returns to its place at the timeout,
/// and a grant arriving after that is released, never taken; B's lease
/// frees the operator if nobody claims it.
#[test]
fn a_lost_reply_times_out_a_late_grant_is_released_and_a_lease_lapses() {
    let t0 = Instant::now();
    let mut a = Outgoing::new("roma-1", 1);
    let mut b = Grants::default();
    let req = request(&mut a, t0, 7);
    assert_eq!(a.poll_timeout(), Some(t0 + offer::REPLY_TIMEOUT));
    assert!(
        a.handle_timeout(t0 + offer::REPLY_TIMEOUT - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(
        a.handle_timeout(t0 + offer::REPLY_TIMEOUT),
        [Outcome::TimedOut {
            call: 7,
            node: "milano-1".into()
        }]
    );
    assert!(a.is_empty());
    // B answers late.
    let late = b.granted(t0 + S, &req, 42, "sip:x@b".into(), "1001".into());
    assert_eq!(
        a.reply(t0 + S, "milano-1", late),
        Some(Outcome::Release {
            node: "milano-1".into(),
            id: req.id.clone()
        })
    );
    assert_eq!(b.release(t0, &req.id, "roma-1"), Some(42));
    assert_eq!(b.release(t0, &req.id, "roma-1"), None);
    // The same request again (a redelivery): refused, never a second
    // operator for a spent grant.
    assert!(matches!(
        b.request(&req),
        Decision::Repeat(OfferReply::Refused { .. })
    ));
    // Another grant nobody claims: the lease frees its operator.
    let req2 = request(&mut a, t0 + S, 8);
    b.granted(t0 + S, &req2, 43, "sip:x@b".into(), "1001".into());
    assert_eq!(b.poll_timeout(), Some(t0 + S + offer::LEASE));
    assert!(
        b.handle_timeout(t0 + S + offer::LEASE - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(
        b.handle_timeout(t0 + S + offer::LEASE),
        [(req2.id.clone(), 43)]
    );
    assert_eq!(b.claim(t0 + 7 * S, &req2.id, "roma-1"), None, "lapsed");
    // A refusal is remembered for a repeated request, and reported once.
    let req3 = request(&mut a, t0 + 8 * S, 9);
    let no = b.refused(t0 + 8 * S, &req3, Refusal::NoOperator);
    assert_eq!(b.request(&req3), Decision::Repeat(no.clone()));
    assert_eq!(
        a.reply(t0 + 8 * S, "milano-1", no.clone()),
        Some(Outcome::Refused {
            call: 9,
            node: "milano-1".into(),
            reason: Refusal::NoOperator
        })
    );
    assert_eq!(a.reply(t0 + 8 * S, "milano-1", no), None);
    // A reply from a node not asked is nobody's.
    let req4 = request(&mut a, t0 + 9 * S, 10);
    let spoof = OfferReply::Granted {
        id: req4.id.clone(),
        target: "sip:evil@x".into(),
        lease_ms: 5000,
        operator: String::new(),
    };
    assert_eq!(a.reply(t0 + 9 * S, "napoli-1", spoof), None);
    // The call leaves: its offer is withdrawn, a grant after is released.
    a.withdraw(t0 + 9 * S, 10);
    let g = b.granted(t0 + 9 * S, &req4, 44, "sip:x@b".into(), "1001".into());
    assert!(matches!(
        a.reply(t0 + 9 * S, "milano-1", g),
        Some(Outcome::Release { .. })
    ));
}

/// Another firm's call only under an agreement, within its capacity,
/// counted nationally; the same firm needs none.
#[test]
fn firms_lend_only_under_an_agreement_within_its_capacity() {
    let mut l = Lending::new(vec![
        Agreement {
            from: "asl-roma".into(),
            to: "call-milano".into(),
            queues: vec!["vaccini".into()],
            max_concurrent: Some(2),
            share: None,
        },
        Agreement {
            from: "asl-napoli".into(),
            to: "call-milano".into(),
            queues: Vec::new(),
            max_concurrent: None,
            share: Some(0.2),
        },
    ]);
    assert_eq!(l.may_lend("call-milano", "call-milano", "x", 0, 0), Ok(()));
    assert_eq!(
        l.may_lend("asl-roma", "call-milano", "triage", 10, 0),
        Err(Refusal::NoAgreement),
        "not a queue of the agreement"
    );
    assert_eq!(
        l.may_lend("call-milano", "asl-roma", "vaccini", 10, 0),
        Err(Refusal::NoAgreement),
        "agreements lend one way"
    );
    assert_eq!(
        l.may_lend("asl-roma", "call-milano", "vaccini", 10, 0),
        Ok(())
    );
    l.start("asl-roma", "call-milano");
    l.start("asl-roma", "call-milano");
    // The third simultaneous call is not lent.
    assert_eq!(
        l.may_lend("asl-roma", "call-milano", "vaccini", 10, 0),
        Err(Refusal::Capacity)
    );
    l.end("asl-roma", "call-milano");
    assert_eq!(
        l.may_lend("asl-roma", "call-milano", "vaccini", 10, 0),
        Ok(())
    );
    // One more lent on another node of the lender: the cap is national.
    assert_eq!(
        l.may_lend("asl-roma", "call-milano", "vaccini", 10, 1),
        Err(Refusal::Capacity)
    );
    // A share: 20 % of 10 operators is 2 calls.
    l.start("asl-napoli", "call-milano");
    assert_eq!(l.may_lend("asl-napoli", "call-milano", "x", 10, 0), Ok(()));
    l.start("asl-napoli", "call-milano");
    assert_eq!(
        l.may_lend("asl-napoli", "call-milano", "x", 10, 0),
        Err(Refusal::Capacity)
    );
    assert_eq!(
        l.current(),
        [
            ("asl-napoli".to_owned(), "call-milano".to_owned(), 2),
            ("asl-roma".to_owned(), "call-milano".to_owned(), 1)
        ]
    );
    // What other nodes report lent counts here too.
    let t0 = Instant::now();
    let mut m = Membership::new("roma-1", S);
    let mut s = summary("milano-1", 1, 1, Vec::new());
    s.lent = vec![("asl-roma".into(), "call-milano".into(), 3)];
    m.receive(t0, Summary::decode(&s.encode()).unwrap())
        .unwrap();
    assert_eq!(m.lent_elsewhere("asl-roma", "call-milano"), 3);
    assert_eq!(m.lent_elsewhere("asl-napoli", "call-milano"), 0);
}

#[test]
fn offer_requests_are_bounded_on_the_wire() {
    let t0 = Instant::now();
    let mut a = Outgoing::new("roma-1", 1);
    let req = request(&mut a, t0, 1);
    assert_eq!(OfferRequest::decode(&req.encode()).unwrap(), req);
    let mut bad = req.clone();
    bad.queue = "x y".into();
    assert_eq!(
        OfferRequest::decode(&bad.encode()),
        Err(WireError::BadName("queue"))
    );
    let mut bad = req.clone();
    bad.id = "a\r\nb".into();
    assert_eq!(
        OfferRequest::decode(&bad.encode()),
        Err(WireError::BadName("id"))
    );
    let mut bad = req;
    bad.requirements = Some("x".repeat(2000));
    assert!(OfferRequest::decode(&bad.encode()).is_err());
    assert!(matches!(
        OfferRequest::decode(&vec![b'x'; offer::MAX_REQUEST_BYTES + 1]),
        Err(WireError::TooLarge(_))
    ));
    assert!(offer::Release::decode(br#"{"id":"x","from":"roma-1"}"#).is_ok());
    assert!(offer::Release::decode(br#"{"id":"x"}"#).is_err());
}
