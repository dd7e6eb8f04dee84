//! Router behaviour, strategy by strategy, and random event sequences
//! checked against a brute-force reference.

// Tests may read the clock and files: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use centralino_types::{AgentId, CallId, QueueId};

use super::*;

const S: Duration = Duration::from_secs(1);

/// A small world: skills, languages, sites, two tenants.
fn catalog() -> Catalog {
    let mut c = Catalog::default();
    for s in ["vaccini", "triage", "psico"] {
        c.skill(s).unwrap();
    }
    for l in ["it", "en", "de"] {
        c.language(l).unwrap();
    }
    for s in ["roma", "napoli"] {
        c.site(s).unwrap();
    }
    for t in ["asl1", "asl2"] {
        c.tenant(t).unwrap();
    }
    for q in ["info", "triage", "other"] {
        c.queue(q).unwrap();
    }
    c
}

fn who(
    c: &Catalog,
    tenant: &str,
    site: &str,
    skills: &[(&str, u8)],
    langs: &[&str],
    queues: &[&str],
) -> Attributes {
    Attributes {
        tenant: c.tenant_id(tenant).unwrap(),
        site: c.site_id(site).unwrap(),
        skills: skills
            .iter()
            .map(|(s, l)| (c.skill_id(s).unwrap(), *l))
            .collect(),
        languages: langs
            .iter()
            .map(|l| 1u64 << c.language_id(l).unwrap())
            .sum(),
        queues: queues.iter().map(|q| c.queue_id(q).unwrap()).collect(),
    }
}

fn req(c: &Catalog, text: &str) -> Requirement {
    Requirement::parse(text, c).unwrap()
}

fn offers(r: &mut Router) -> Vec<Decision> {
    let mut v = Vec::new();
    while let Some(o) = r.poll_output() {
        if let Output::Offer(d) = o {
            v.push(d);
        }
    }
    v
}

fn one(r: &mut Router) -> Decision {
    let v = offers(r);
    assert_eq!(v.len(), 1, "{v:?}");
    v[0]
}

fn plain(n: usize) -> Vec<(String, Attributes)> {
    let c = catalog();
    (0..n)
        .map(|i| {
            (
                format!("{}", 1001 + i),
                who(&c, "asl1", "roma", &[], &[], &["info"]),
            )
        })
        .collect()
}

fn info() -> QueueSettings {
    QueueSettings::new("info", QueueId(0), 0)
}

fn spec() -> CallSpec {
    CallSpec::default()
}

/// One operator serves `n` calls one second apart from `from`: the call
/// ids in the order served.
fn serve(r: &mut Router, a: AgentId, from: Instant, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let d = one(r);
            let t = from + S * i as u32;
            r.answered(t, a, d.call);
            r.call_ended(t, a, d.call);
            d.call.0
        })
        .collect()
}

/// An operator freed while calls wait takes the next one straight from the
/// state they leave, never shown `Available`: out of wrap-up, and after an
/// offer that failed before ringing, whose time in state (the wallboard's)
/// restarts with the new offer.
#[test]
fn a_freed_operator_takes_a_waiting_call_without_passing_through_available() {
    let t0 = Instant::now();
    let mut q = info();
    q.wrap_up = 5 * S;
    let mut r = Router::new(t0, vec![q], 2, plain(1));
    let board = r.board();
    let a = AgentId(0);
    board.tick(1_000);
    r.login(t0, a, false);
    for call in 1..=3 {
        r.enqueue(t0, QueueId(0), CallId(call), &spec()).unwrap();
    }
    assert_eq!(one(&mut r).call, CallId(1));
    r.answered(t0 + S, a, CallId(1));
    r.call_ended(t0 + 2 * S, a, CallId(1));
    assert_eq!(r.agent(a).state, AgentState::WrapUp);
    let before = board.load(0).version;
    r.handle_timeout(t0 + 7 * S);
    assert_eq!(one(&mut r).call, CallId(2));
    assert_eq!(r.agent(a).state, AgentState::Reserved(CallId(2)));
    assert_eq!(board.load(0).code, Code::Reserved);
    assert_eq!(
        board.load(0).version,
        before + 1,
        "one change: never Available"
    );
    assert_eq!(r.queue_agents(QueueId(0)).available, 0);
    // Refused before ringing, 20 s later: call 3 at once, its own clock.
    board.tick(1_020);
    r.offer_failed(t0 + 8 * S, CallId(2), a, OfferOutcome::Rejected);
    assert_eq!(one(&mut r).call, CallId(3));
    assert_eq!(board.seconds_in_state(0, 1_020), Some(0));
    assert_eq!(r.check_waiting(), Ok(()));
    // Nobody left waiting: freed, they are available and indexed again.
    r.offer_failed(t0 + 9 * S, CallId(3), a, OfferOutcome::Rejected);
    assert!(offers(&mut r).is_empty());
    assert_eq!(r.agent(a).state, AgentState::Available);
    assert_eq!(r.queue_agents(QueueId(0)).available, 1);
    r.enqueue(t0 + 10 * S, QueueId(0), CallId(4), &spec())
        .unwrap();
    assert_eq!(one(&mut r).call, CallId(4));
}

#[test]
fn longest_idle_first_and_fifo() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 2, plain(2));
    let (a, b) = (AgentId(0), AgentId(1));
    r.login(t0 + S, b, false);
    r.login(t0 + 2 * S, a, false);
    r.enqueue(t0 + 3 * S, QueueId(0), CallId(1), &spec())
        .unwrap();
    let d1 = one(&mut r);
    assert_eq!((d1.call, d1.agent), (CallId(1), b));
    assert_eq!(r.agent(b).state, AgentState::Reserved(CallId(1)));
    r.enqueue(t0 + 3 * S, QueueId(0), CallId(2), &spec())
        .unwrap();
    let d2 = one(&mut r);
    assert_eq!((d2.call, d2.agent), (CallId(2), a));
    r.enqueue(t0 + 3 * S, QueueId(0), CallId(3), &spec())
        .unwrap();
    r.enqueue(t0 + 4 * S, QueueId(0), CallId(4), &spec())
        .unwrap();
    assert!(offers(&mut r).is_empty());
    assert_eq!(
        r.waiting(QueueId(0)).0,
        4,
        "offered calls count until answered"
    );
    // b frees up: FIFO gives it call 3.
    r.answered(t0 + 5 * S, b, CallId(1));
    r.call_ended(t0 + 6 * S, b, CallId(1));
    assert_eq!(one(&mut r).call, CallId(3));
}

/// A call lost with the operator's phone: the operator is paused (reason
/// on the board), not offered the next waiting call; resuming offers it.
#[test]
fn a_lost_call_pauses_its_operator_until_they_resume() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 1, plain(1));
    let a = AgentId(0);
    r.login(t0, a, false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, a);
    r.ringing(a, CallId(1));
    r.answered(t0 + S, a, CallId(1));
    r.enqueue(t0 + S, QueueId(0), CallId(2), &spec()).unwrap();
    r.call_lost(t0 + 2 * S, a, CallId(1));
    assert_eq!(r.agent(a).state, AgentState::Paused(PauseReason::MediaLost));
    assert_eq!(
        PauseReason::from_aux(r.board().load(0).aux),
        PauseReason::MediaLost
    );
    assert!(offers(&mut r).is_empty(), "no call for a dead phone");
    assert!(r.set_paused(t0 + 3 * S, a, false));
    assert_eq!(one(&mut r).call, CallId(2));
}

#[test]
fn no_answer_moves_on_and_pauses_after_max() {
    let t0 = Instant::now();
    let mut q = info();
    q.max_no_answer = 2;
    let mut r = Router::new(t0, vec![q], 2, plain(2));
    let (a, b) = (AgentId(0), AgentId(1));
    r.login(t0, a, false);
    r.login(t0 + Duration::from_millis(1), b, false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, a);
    r.ringing(a, CallId(1));
    assert_eq!(r.agent(a).state, AgentState::Ringing(CallId(1)));
    r.offer_failed(t0 + S, CallId(1), a, OfferOutcome::NoAnswer);
    assert_eq!(one(&mut r).agent, b, "the call moves to the next operator");
    r.offer_failed(t0 + 2 * S, CallId(1), b, OfferOutcome::NoAnswer);
    assert!(offers(&mut r).is_empty(), "everyone free tried it: wait");
    r.handle_timeout(t0 + 6 * S);
    assert!(offers(&mut r).is_empty());
    r.handle_timeout(t0 + 7 * S);
    assert_eq!(
        one(&mut r).agent,
        a,
        "after the retry delay: the longest idle"
    );
    r.offer_failed(t0 + 8 * S, CallId(1), a, OfferOutcome::NoAnswer);
    assert_eq!(r.agent(a).state, AgentState::Paused(PauseReason::NoAnswer));
    assert_eq!(one(&mut r).agent, b);
    // Busy (486) is not a miss, and is not re-rung at once either.
    r.offer_failed(t0 + 9 * S, CallId(1), b, OfferOutcome::Rejected);
    assert!(offers(&mut r).is_empty());
    assert_eq!(r.agent(b).missed, 1, "its miss at 2 s; 486 adds none");
    r.handle_timeout(t0 + 14 * S);
    assert_eq!(one(&mut r).agent, b);
    r.offer_failed(t0 + 15 * S, CallId(1), b, OfferOutcome::Withdrawn);
    assert_eq!(r.agent(b).state, AgentState::Available);
    assert_eq!(r.waiting(QueueId(0)).0, 0);
}

#[test]
fn wrap_up_then_available_and_pending_logout() {
    let t0 = Instant::now();
    let mut q = info();
    q.wrap_up = 5 * S;
    let mut r = Router::new(t0, vec![q], 2, plain(1));
    let a = AgentId(0);
    r.login(t0, a, false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    let d = one(&mut r);
    r.answered(t0, d.agent, d.call);
    r.call_ended(t0, a, CallId(1));
    assert_eq!(r.agent(a).state, AgentState::WrapUp);
    r.enqueue(t0, QueueId(0), CallId(2), &spec()).unwrap();
    assert!(offers(&mut r).is_empty());
    assert_eq!(r.poll_timeout(), Some(t0 + 5 * S));
    r.handle_timeout(t0 + 5 * S);
    let d = one(&mut r);
    assert_eq!(d.call, CallId(2));
    assert_eq!(d.waited, 5 * S);
    r.answered(t0 + 5 * S, a, CallId(2));
    r.logout(a);
    assert_eq!(
        r.agent(a).state,
        AgentState::OnCall(CallId(2)),
        "keeps the call"
    );
    r.call_ended(t0 + 6 * S, a, CallId(2));
    assert_eq!(r.agent(a).state, AgentState::LoggedOut);
}

/// An attended transfer: the consultation's operator goes on talking on
/// the caller's call, and its end is theirs; nobody else is moved.
#[test]
fn a_moved_call_is_the_operators_until_it_ends() {
    let t0 = Instant::now();
    let mut q = info();
    q.wrap_up = 5 * S;
    let mut r = Router::new(t0, vec![q], 2, plain(2));
    let (a, b) = (AgentId(0), AgentId(1));
    r.login(t0, a, false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    let d = one(&mut r);
    r.answered(t0, d.agent, d.call);
    r.login(t0, b, false);
    r.enqueue(t0, QueueId(0), CallId(2), &spec()).unwrap();
    let d = one(&mut r);
    assert_eq!(d.agent, b);
    r.answered(t0, b, CallId(2));
    assert!(!r.move_call(a, CallId(2), CallId(1)), "not a's call");
    assert!(r.move_call(b, CallId(2), CallId(1)));
    assert_eq!(r.agent(b).state, AgentState::OnCall(CallId(1)));
    r.call_ended(t0 + S, a, CallId(1));
    assert_eq!(r.agent(a).state, AgentState::WrapUp);
    // The consultation's own end no longer concerns b.
    r.call_ended(t0 + S, b, CallId(2));
    assert_eq!(r.agent(b).state, AgentState::OnCall(CallId(1)));
    r.call_ended(t0 + 2 * S, b, CallId(1));
    assert_eq!(r.agent(b).state, AgentState::WrapUp);
    assert_eq!(r.tenant_states(0).iter().sum::<u32>(), 2);
}

/// Two queues needing different skills and an operator with both: each
/// call goes only to operators who qualify, the shared one serves both.
#[test]
fn skills_route_calls_and_a_shared_operator_serves_both() {
    let c = catalog();
    let t0 = Instant::now();
    let mut vac = QueueSettings::new("info", QueueId(0), 0);
    vac.requirement = req(&c, "vaccini >= 5");
    let mut tri = QueueSettings::new("triage", QueueId(1), 0);
    tri.requirement = req(&c, "triage");
    let agents = vec![
        (
            "v".into(),
            who(&c, "asl1", "roma", &[("vaccini", 7)], &["it"], &[]),
        ),
        (
            "t".into(),
            who(&c, "asl1", "roma", &[("triage", 3)], &["it"], &[]),
        ),
        (
            "both".into(),
            who(
                &c,
                "asl1",
                "roma",
                &[("vaccini", 5), ("triage", 9)],
                &["it", "en"],
                &[],
            ),
        ),
        (
            "weak".into(),
            who(&c, "asl1", "roma", &[("vaccini", 4)], &["it"], &[]),
        ),
        (
            "other-tenant".into(),
            who(
                &c,
                "asl2",
                "roma",
                &[("vaccini", 9), ("triage", 9)],
                &["it"],
                &[],
            ),
        ),
    ];
    let mut r = Router::new(t0, vec![vac, tri], 2, agents);
    for i in 0..5 {
        r.login(t0 + Duration::from_millis(i), AgentId(i as u32), false);
    }
    assert_eq!(r.queue_agents(QueueId(0)).available, 2);
    assert_eq!(r.queue_agents(QueueId(1)).available, 2);
    assert_eq!(r.queue_agents(QueueId(1)).members, 2);
    r.enqueue(t0 + S, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(0));
    r.enqueue(t0 + S, QueueId(0), CallId(2), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(2), "the shared operator");
    r.enqueue(t0 + S, QueueId(1), CallId(3), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(1));
    r.enqueue(t0 + S, QueueId(1), CallId(4), &spec()).unwrap();
    r.enqueue(t0 + S, QueueId(0), CallId(5), &spec()).unwrap();
    assert!(
        offers(&mut r).is_empty(),
        "weak and other-tenant never qualify"
    );
    // A call with its own requirement (English speaker from the IVR).
    let en = CallSpec {
        requirement: Some(req(&c, r#"lang == "en""#)),
        ..CallSpec::default()
    };
    r.enqueue(t0 + 2 * S, QueueId(0), CallId(6), &en).unwrap();
    // The shared operator frees up: the oldest call it can take across both
    // queues is call 4 (triage, enqueued with 5 at the same instant but first).
    r.answered(t0 + 3 * S, AgentId(2), CallId(2));
    r.call_ended(t0 + 3 * S, AgentId(2), CallId(2));
    assert_eq!(one(&mut r).call, CallId(4));
    r.answered(t0 + 4 * S, AgentId(2), CallId(4));
    r.call_ended(t0 + 4 * S, AgentId(2), CallId(4));
    assert_eq!(one(&mut r).call, CallId(5));
    r.answered(t0 + 4 * S, AgentId(2), CallId(5));
    r.call_ended(t0 + 4 * S, AgentId(2), CallId(5));
    assert_eq!(one(&mut r).call, CallId(6));
    // v frees up: call 6 needs English, v has none; nothing for v.
    r.answered(t0 + 4 * S, AgentId(0), CallId(1));
    r.call_ended(t0 + 5 * S, AgentId(0), CallId(1));
    assert!(offers(&mut r).is_empty());
}

fn strategy_world(strategy: Strategy) -> (Router, Instant) {
    let c = catalog();
    let t0 = Instant::now();
    let mut q = QueueSettings::new("info", QueueId(0), 0);
    q.requirement = req(&c, "vaccini");
    q.strategy = strategy;
    let agents = (0..4u8)
        .map(|i| {
            (
                format!("a{i}"),
                who(
                    &c,
                    "asl1",
                    "roma",
                    &[("vaccini", [3, 9, 5, 9][usize::from(i)])],
                    &[],
                    &[],
                ),
            )
        })
        .collect();
    let mut r = Router::new(t0, vec![q], 2, agents);
    // Logged in in reverse order: a3 is the longest idle.
    for i in (0..4).rev() {
        r.login(
            t0 + Duration::from_millis(10 * (4 - i)),
            AgentId(i as u32),
            false,
        );
    }
    (r, t0)
}

/// Offer one call and release the operator (rejected): who was chosen.
fn pick_sequence(r: &mut Router, t0: Instant, n: u64) -> Vec<u32> {
    let mut seq = Vec::new();
    for i in 0..n {
        let t = t0 + S * (i as u32 + 1);
        r.enqueue(t, QueueId(0), CallId(i), &spec()).unwrap();
        let d = one(r);
        seq.push(d.agent.0);
        r.answered(t, d.agent, d.call);
        r.call_ended(
            t + Duration::from_millis(100 * u64::from(d.agent.0 + 1)),
            d.agent,
            d.call,
        );
    }
    seq
}

#[test]
fn strategies_choose_as_documented() {
    let (mut r, t0) = strategy_world(Strategy::LongestIdle);
    assert_eq!(pick_sequence(&mut r, t0, 4), [3, 2, 1, 0]);
    let (mut r, t0) = strategy_world(Strategy::MostProficient);
    // Level 9: a3 (longest idle) then a1; then 5 (a2); level 9 again.
    assert_eq!(pick_sequence(&mut r, t0, 4), [3, 1, 3, 1]);
    let (mut r, t0) = strategy_world(Strategy::Linear);
    assert_eq!(pick_sequence(&mut r, t0, 3), [0, 0, 0]);
    let (mut r, t0) = strategy_world(Strategy::RoundRobin);
    assert_eq!(pick_sequence(&mut r, t0, 6), [0, 1, 2, 3, 0, 1]);
    let (mut r, t0) = strategy_world(Strategy::FewestCalls);
    assert_eq!(pick_sequence(&mut r, t0, 5), [3, 2, 1, 0, 3]);
    let (mut r, t0) = strategy_world(Strategy::LeastTalkTime);
    // Talk time grows with the index (100 ms × (i + 1)): a0 talks least.
    // Then a0 (100 ms) and a1 (200 ms) tie: a1 has been idle longer.
    assert_eq!(pick_sequence(&mut r, t0, 6), [3, 2, 1, 0, 0, 1]);
    let (mut r, t0) = strategy_world(Strategy::Random);
    let seq = pick_sequence(&mut r, t0, 400);
    for a in 0..4 {
        let n = seq.iter().filter(|&&x| x == a).count();
        assert!(
            (60..140).contains(&n),
            "random: a{a} chosen {n} times of 400"
        );
    }
    let (mut r, t0) = strategy_world(Strategy::WeightedRandom);
    // Weights 3, 9, 5, 9 of 26: expected 300, 900, 500, 900.
    picked_about(&pick_sequence(&mut r, t0, 2600), [300, 900, 500, 900], 4);
}

/// Each operator `a` was picked `want[a]` times in `seq`, within
/// `want / slack`.
fn picked_about(seq: &[u32], want: [usize; 4], slack: usize) {
    for (a, want) in want.into_iter().enumerate() {
        let n = seq.iter().filter(|&&x| x as usize == a).count();
        assert!(
            n.abs_diff(want) < want / slack,
            "weighted: a{a} {n}, expected ~{want}"
        );
    }
}

/// A weighted pool weighs an operator by their level as it stands: new
/// attributes join them again with the new level (the pool keeps each
/// member's level beside their weight).
#[test]
fn weighted_random_follows_a_changed_level() {
    let c = catalog();
    let (mut r, t0) = strategy_world(Strategy::WeightedRandom);
    let level = |l: u8| who(&c, "asl1", "roma", &[("vaccini", l)], &[], &[]);
    r.set_attributes(t0, AgentId(0), level(9));
    r.set_attributes(t0, AgentId(1), level(1));
    // Weights 9, 1, 5, 9 of 24: expected 900, 100, 500, 900.
    picked_about(&pick_sequence(&mut r, t0, 2400), [900, 100, 500, 900], 3);
}

#[test]
fn ring_all_offers_many_and_the_first_answer_wins() {
    let (mut r, t0) = strategy_world(Strategy::RingAll(3));
    r.enqueue(t0 + S, QueueId(0), CallId(1), &spec()).unwrap();
    let v = offers(&mut r);
    let agents: Vec<u32> = v.iter().map(|d| d.agent.0).collect();
    assert_eq!(agents, [3, 2, 1]);
    r.offer_failed(t0 + S, CallId(1), AgentId(3), OfferOutcome::Rejected);
    assert!(offers(&mut r).is_empty(), "still ringing two");
    r.answered(t0 + 2 * S, AgentId(1), CallId(1));
    assert_eq!(r.agent(AgentId(1)).state, AgentState::OnCall(CallId(1)));
    assert_eq!(r.agent(AgentId(2)).state, AgentState::Available);
    assert_eq!(r.agent(AgentId(2)).missed, 0, "released, not a miss");
    assert_eq!(r.waiting(QueueId(0)).0, 0);
}

/// Bullseye: after 30 s the call may go to another site, after 60 s to the
/// partner tenant that signed an overflow agreement.
#[test]
fn overflow_rings_open_in_time() {
    let c = catalog();
    let t0 = Instant::now();
    let mut q = QueueSettings::new("info", QueueId(0), 0);
    q.requirement = req(&c, r#"vaccini >= 5 && site == "roma""#);
    q.rings = vec![
        Ring {
            after: 30 * S,
            requirement: req(&c, "vaccini >= 3"),
            tenants: vec![],
        },
        Ring {
            after: 60 * S,
            requirement: req(&c, "vaccini"),
            tenants: vec![1],
        },
    ];
    let agents = vec![
        (
            "napoli".into(),
            who(&c, "asl1", "napoli", &[("vaccini", 4)], &[], &[]),
        ),
        (
            "partner".into(),
            who(&c, "asl2", "roma", &[("vaccini", 9)], &[], &[]),
        ),
        (
            "nobody".into(),
            who(&c, "asl2", "roma", &[("triage", 9)], &[], &[]),
        ),
    ];
    let mut r = Router::new(t0, vec![q], 2, agents);
    for i in 0..3 {
        r.login(t0, AgentId(i), false);
    }
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    r.enqueue(t0 + S, QueueId(0), CallId(2), &spec()).unwrap();
    assert!(offers(&mut r).is_empty());
    assert_eq!(r.poll_timeout(), Some(t0 + 30 * S));
    r.handle_timeout(t0 + 30 * S);
    let d = one(&mut r);
    assert_eq!((d.call, d.agent), (CallId(1), AgentId(0)));
    r.answered(t0 + 30 * S, d.agent, d.call);
    r.handle_timeout(t0 + 31 * S);
    assert!(
        offers(&mut r).is_empty(),
        "call 2 is in ring 1, napoli is busy"
    );
    r.handle_timeout(t0 + 61 * S);
    let d = one(&mut r);
    assert_eq!((d.call, d.agent), (CallId(2), AgentId(1)));
    assert_eq!(d.waited, 60 * S);
}

/// Priority is a bounded head start: a priority-2 call (step 60 s) overtakes
/// calls that arrived less than 120 s before it, never older ones.
#[test]
fn priority_ages_with_a_bound() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 2, plain(1));
    let a = AgentId(0);
    let high = CallSpec {
        priority: 2,
        ..CallSpec::default()
    };
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    r.enqueue(t0 + 100 * S, QueueId(0), CallId(2), &spec())
        .unwrap();
    r.enqueue(t0 + 150 * S, QueueId(0), CallId(3), &high)
        .unwrap();
    r.login(t0 + 200 * S, a, false);
    let order = serve(&mut r, a, t0 + 201 * S, 3);
    // Call 3's virtual enqueue is 150 - 120 = 30 s: after call 1 (0 s),
    // before call 2 (100 s).
    assert_eq!(order, [1, 3, 2]);
}

/// A callback competes with live calls by the time its request was made:
/// not ahead of calls that waited longer, not behind calls that came later.
#[test]
fn callbacks_keep_the_time_of_their_request() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 2, plain(1));
    let a = AgentId(0);
    let asked_at = |secs| CallSpec {
        waited: Duration::from_secs(secs),
        ..CallSpec::default()
    };
    // Live calls arrive at 0 s and 100 s; at 150 s a callback asked for at
    // 50 s (waited 100 s) and one asked for at 140 s (waited 10 s) queue.
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    r.enqueue(t0 + 100 * S, QueueId(0), CallId(2), &spec())
        .unwrap();
    r.enqueue(t0 + 150 * S, QueueId(0), CallId(3), &asked_at(100))
        .unwrap();
    r.enqueue(t0 + 150 * S, QueueId(0), CallId(4), &asked_at(10))
        .unwrap();
    r.login(t0 + 200 * S, a, false);
    let order = serve(&mut r, a, t0 + 201 * S, 4);
    assert_eq!(
        order,
        [1, 3, 2, 4],
        "served in the order of asking: 0, 50, 100, 140 s"
    );
}

/// A fragile caller escalates before its guaranteed wait: ahead of every
/// normal call and into every overflow ring.
#[test]
fn fragile_calls_escalate_before_their_guarantee() {
    let c = catalog();
    let t0 = Instant::now();
    let mut q = QueueSettings::new("info", QueueId(0), 0);
    q.requirement = req(&c, r#"site == "roma""#);
    q.ring_timeout = 10 * S;
    q.fragile_max_wait = Some(60 * S);
    q.rings = vec![Ring {
        after: 600 * S,
        requirement: req(&c, "true"),
        tenants: vec![],
    }];
    let agents = vec![
        ("roma".into(), who(&c, "asl1", "roma", &[], &[], &[])),
        ("napoli".into(), who(&c, "asl1", "napoli", &[], &[], &[])),
    ];
    let mut r = Router::new(t0, vec![q], 2, agents);
    r.login(t0, AgentId(0), false);
    r.login(t0, AgentId(1), false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(0));
    r.answered(t0, AgentId(0), CallId(1));
    r.enqueue(t0 + S, QueueId(0), CallId(2), &spec()).unwrap();
    let fragile = CallSpec {
        fragile: true,
        ..CallSpec::default()
    };
    r.enqueue(t0 + 2 * S, QueueId(0), CallId(3), &fragile)
        .unwrap();
    assert!(offers(&mut r).is_empty());
    // 60 s guarantee - 10 s ring timeout: at 52 s every ring opens for it.
    r.handle_timeout(t0 + 51 * S);
    assert!(offers(&mut r).is_empty());
    r.handle_timeout(t0 + 52 * S);
    let d = one(&mut r);
    assert_eq!((d.call, d.agent), (CallId(3), AgentId(1)));
}

#[test]
fn a_lapsed_reservation_returns_the_call_to_its_place() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 2, plain(2));
    r.login(t0, AgentId(0), false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(0));
    r.enqueue(t0 + S, QueueId(0), CallId(2), &spec()).unwrap();
    // No answer, no failure report: the lease is ring timeout + 5 s.
    r.handle_timeout(t0 + 19 * S);
    assert!(r.poll_output().is_none());
    r.login(t0 + 19 * S, AgentId(1), false);
    assert_eq!(one(&mut r).call, CallId(2));
    r.handle_timeout(t0 + 20 * S);
    assert_eq!(
        r.poll_output(),
        Some(Output::Reclaimed {
            call: CallId(1),
            agent: AgentId(0)
        })
    );
    // Operator 0 missed it and is available again; call 1 has tried 0 and
    // nobody else is free: offered again after the retry delay.
    assert!(r.poll_output().is_none());
    assert_eq!(r.agent(AgentId(0)).missed, 1);
    r.handle_timeout(t0 + 25 * S);
    let d = one(&mut r);
    assert_eq!((d.call, d.agent), (CallId(1), AgentId(0)));
}

#[test]
fn a_held_reservation_outlives_the_ring_timeout_and_then_lapses() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 1, plain(1));
    r.login(t0, AgentId(0), false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(0));
    // Held for two minutes (a preview): the offer's lease is stale.
    assert!(r.hold(t0, AgentId(0), CallId(1), Duration::from_secs(120)));
    r.handle_timeout(t0 + 20 * S);
    assert!(r.poll_output().is_none());
    assert_eq!(r.agent(AgentId(0)).state, AgentState::Reserved(CallId(1)));
    r.handle_timeout(t0 + 125 * S);
    assert_eq!(
        r.poll_output(),
        Some(Output::Reclaimed {
            call: CallId(1),
            agent: AgentId(0)
        })
    );
    // Nobody else holds a call it is not reserved for.
    assert!(!r.hold(t0, AgentId(0), CallId(9), Duration::from_secs(1)));
}

/// An operator in two queues takes the call with the best aged wait,
/// weighted by queue weight.
#[test]
fn queue_weight_tilts_the_choice_across_queues() {
    let c = catalog();
    let t0 = Instant::now();
    let a = QueueSettings::new("info", QueueId(0), 0);
    let mut b = QueueSettings::new("triage", QueueId(1), 0);
    b.weight = 3.0;
    let agents = vec![(
        "x".into(),
        who(&c, "asl1", "roma", &[], &[], &["info", "triage"]),
    )];
    let mut r = Router::new(t0, vec![a, b], 2, agents);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    r.enqueue(t0 + 20 * S, QueueId(1), CallId(2), &spec())
        .unwrap();
    // At 40 s: info waited 40 s × 1, triage 20 s × 3 = 60.
    r.login(t0 + 40 * S, AgentId(0), false);
    assert_eq!(one(&mut r).call, CallId(2));
}

#[test]
fn estimates_position_and_wait() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 2, plain(2));
    r.login(t0, AgentId(0), false);
    r.login(t0, AgentId(1), false);
    for i in 0..2 {
        r.enqueue(t0, QueueId(0), CallId(i), &spec()).unwrap();
    }
    let ds = offers(&mut r);
    for d in &ds {
        r.answered(t0, d.agent, d.call);
    }
    for i in 2..6 {
        r.enqueue(t0 + S, QueueId(0), CallId(i), &spec()).unwrap();
    }
    let e = r.estimate(CallId(4)).unwrap();
    assert_eq!((e.position, e.staffed, e.wait), (3, 2, None));
    // One call of 100 s handled: 3 ahead-or-me × 100 s / 2 operators.
    r.call_ended(t0 + 100 * S, ds[0].agent, ds[0].call);
    let first = one(&mut r);
    assert_eq!(first.call, CallId(2));
    let e = r.estimate(CallId(4)).unwrap();
    assert_eq!(e.position, 2);
    assert_eq!(e.wait, Some(100 * S));
    assert!(r.estimate(CallId(99)).is_none());
    // A new arrival: 4 calls in the queue (one ringing) + itself, 2 staffed.
    assert_eq!(r.queue_estimate(QueueId(0)), Some(250 * S));
}

/// Another thread pauses an available operator through the board while
/// the router would pick it: the router skips it and takes the next one.
#[test]
fn external_taker_wins_and_the_router_moves_on() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 2, plain(2));
    r.login(t0, AgentId(0), false);
    r.login(t0 + S, AgentId(1), false);
    let board = r.board();
    let seen = board.load(0);
    assert_eq!(seen.code, Code::Available);
    board.take(0, seen.version, Code::Paused, 2).unwrap();
    // Not synced yet: the router's index still names 0, the board says no.
    r.enqueue(t0 + 2 * S, QueueId(0), CallId(1), &spec())
        .unwrap();
    assert_eq!(one(&mut r).agent, AgentId(1));
    // The taker reports it (the protocol); the router's view follows.
    r.sync_agent(AgentId(0));
    assert_eq!(
        r.agent(AgentId(0)).state,
        AgentState::Paused(PauseReason::Manual)
    );
    assert_eq!(r.tenant_states(0)[Code::Paused as usize], 1);
    r.set_paused(t0 + 3 * S, AgentId(0), false);
    r.enqueue(t0 + 3 * S, QueueId(0), CallId(2), &spec())
        .unwrap();
    assert_eq!(one(&mut r).agent, AgentId(0));
}

/// The same with every strategy: FIFO and heap entries are stale by
/// version, a Fenwick position (no version) by the board's state (the
/// pick reads the board, finds them paused and zeroes the position), so a
/// pick that meets the taken operator moves on.
#[test]
fn an_outside_taker_is_skipped_by_every_strategy() {
    for strategy in Strategy::EACH {
        let t0 = Instant::now();
        let mut q = info();
        q.strategy = strategy;
        let mut r = Router::new(t0, vec![q], 2, plain(2));
        r.login(t0, AgentId(0), false);
        r.login(t0 + S, AgentId(1), false);
        let board = r.board();
        let seen = board.load(0);
        board.take(0, seen.version, Code::Paused, 2).unwrap();
        r.enqueue(t0 + 2 * S, QueueId(0), CallId(1), &spec())
            .unwrap();
        let got = offers(&mut r);
        assert_eq!(got.len(), 1, "{strategy:?}");
        assert_eq!(got[0].agent, AgentId(1), "{strategy:?}");
        r.sync_agent(AgentId(0));
        assert_eq!(r.check_tallies(), Ok(()), "{strategy:?}");
        r.set_paused(t0 + 3 * S, AgentId(0), false);
        r.enqueue(t0 + 3 * S, QueueId(0), CallId(2), &spec())
            .unwrap();
        assert_eq!(one(&mut r).agent, AgentId(0), "{strategy:?}");
        assert_eq!(r.check_tallies(), Ok(()), "{strategy:?}");
    }
}

/// A Fenwick position freed by an edit goes to the next operator to join
/// while its old owner stays available elsewhere: a call finds neither the
/// old owner (no longer a member) nor the newcomer until they log in.
#[test]
fn a_reused_position_belongs_to_its_new_operator() {
    let c = catalog();
    let t0 = Instant::now();
    let mut q = QueueSettings::new("triage", QueueId(0), 0);
    q.requirement = req(&c, "vaccini");
    q.strategy = Strategy::Linear;
    let with = |skill: bool| {
        let skills: &[(&str, u8)] = if skill { &[("vaccini", 5)] } else { &[] };
        who(&c, "asl1", "roma", skills, &[], &[])
    };
    let agents = vec![("a0".to_owned(), with(true)), ("a1".to_owned(), with(true))];
    let mut r = Router::new(t0, vec![q], 1, agents);
    r.login(t0, AgentId(0), false);
    r.login(t0, AgentId(1), false);
    // a0 leaves the queue and stays available; c joins in a0's position.
    r.set_attributes(t0, AgentId(0), with(false));
    let c_id = r.add_agent("c", with(true)).unwrap();
    assert_eq!(r.index_entries(), 2, "c took a0's position, none added");
    assert_eq!(r.check_tallies(), Ok(()));
    r.enqueue(t0 + S, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(1));
    r.login(t0 + S, c_id, false);
    r.enqueue(t0 + 2 * S, QueueId(0), CallId(2), &spec())
        .unwrap();
    assert_eq!(one(&mut r).agent, c_id);
    assert_eq!(r.check_tallies(), Ok(()));
}

/// A most-proficient pool compacts the level it pushes to: an operator
/// offered and released ten thousand times leaves a bounded index.
#[test]
fn a_levels_pool_stays_bounded() {
    let t0 = Instant::now();
    let mut q = info();
    q.strategy = Strategy::MostProficient;
    let mut r = Router::new(t0, vec![q], 1, plain(2));
    r.login(t0, AgentId(0), false);
    r.login(t0, AgentId(1), false);
    for i in 0..10_000u64 {
        assert!(r.reserve_named(t0, AgentId(1), CallId(i), QueueId(0)));
        assert_eq!(offers(&mut r).len(), 1);
        r.offer_failed(t0, CallId(i), AgentId(1), OfferOutcome::Rejected);
    }
    // Two live operators: at most 2 × 2 + 64 entries.
    assert!(r.index_entries() <= 2 * 2 + 64, "{}", r.index_entries());
    assert_eq!(r.check_tallies(), Ok(()));
}

/// The counts per tenant follow an operator edited into another tenant.
#[test]
fn tenant_counts_follow_an_edited_operator() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 2, plain(1));
    let mut attrs = r.agent(AgentId(0)).attributes.clone();
    attrs.tenant = 1;
    r.set_attributes(t0, AgentId(0), attrs);
    r.login(t0, AgentId(0), false);
    assert_eq!(r.tenant_states(1)[Code::Available as usize], 1);
    r.set_paused(t0, AgentId(0), true);
    assert_eq!(r.tenant_states(1)[Code::Paused as usize], 1);
    assert_eq!(r.tenant_states(0).iter().sum::<u32>(), 0);
}

#[test]
fn attribute_changes_move_an_operator_between_pools() {
    let c = catalog();
    let t0 = Instant::now();
    let mut q = QueueSettings::new("info", QueueId(0), 0);
    q.requirement = req(&c, "triage");
    let agents = vec![("x".into(), who(&c, "asl1", "roma", &[], &[], &[]))];
    let mut r = Router::new(t0, vec![q], 2, agents);
    r.login(t0, AgentId(0), false);
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert!(offers(&mut r).is_empty());
    assert_eq!(r.queue_agents(QueueId(0)).members, 0);
    r.set_attributes(
        t0 + S,
        AgentId(0),
        who(&c, "asl1", "roma", &[("triage", 2)], &[], &[]),
    );
    assert_eq!(one(&mut r).call, CallId(1));
    let qa = r.queue_agents(QueueId(0));
    assert_eq!((qa.members, qa.busy, qa.available), (1, 1, 0));
}

#[test]
fn enqueue_refusals() {
    let t0 = Instant::now();
    let mut q = info();
    q.max_waiting = 1;
    let mut r = Router::new(t0, vec![q], 2, plain(1));
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(
        r.enqueue(t0, QueueId(0), CallId(1), &spec()),
        Err(EnqueueError::QueueFull)
    );
    r.withdraw(t0, CallId(1)).unwrap();
    r.enqueue(t0, QueueId(0), CallId(1), &spec()).unwrap();
    assert!(r.withdraw(t0, CallId(7)).is_none());
}

mod props {
    //! Random event sequences against a brute-force reference: the reference
    //! knows every operator's attributes and state, every waiting call's
    //! requirements, enqueue time, priority and tried set, and checks each
    //! decision and the whole state after every event.

    use std::collections::HashMap;

    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as PropStrategy;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Login(u32),
        Logout(u32),
        Pause(u32, bool),
        Enqueue(u32, i8, bool, bool),
        Withdraw(u64),
        Fail(u64, u8),
        Answer(u64),
        End(u64),
        Tick(u16),
        External(u32),
    }

    fn op() -> impl PropStrategy<Value = Op> {
        prop_oneof![
            (0u32..6).prop_map(Op::Login),
            (0u32..6).prop_map(Op::Logout),
            (0u32..6, any::<bool>()).prop_map(|(a, p)| Op::Pause(a, p)),
            (0u32..3, -2i8..3, any::<bool>(), any::<bool>())
                .prop_map(|(q, p, e, f)| Op::Enqueue(q, p, e, f)),
            (0u64..40).prop_map(Op::Withdraw),
            (0u64..40, 0u8..3).prop_map(|(c, o)| Op::Fail(c, o)),
            (0u64..40).prop_map(Op::Answer),
            (0u64..40).prop_map(Op::End),
            (0u16..20_000).prop_map(Op::Tick),
            (0u32..6).prop_map(Op::External),
        ]
    }

    struct RefCall {
        queue: u32,
        extra: Option<Requirement>,
        enq: Instant,
        key: f64,
        fragile: bool,
        tried: Vec<u32>,
        offered: Vec<u32>,
    }

    proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn decisions_match_the_reference(ops in proptest::collection::vec(op(), 1..250)) {
            let c = catalog();
            let t0 = Instant::now();
            let mut now = t0;
            // info: vaccini ≥ 3 in roma, then any site after 20 s, then the
            // partner tenant after 40 s; triage: skill triage (weight 2);
            // other: operators who list it, fragile guarantee 30 s.
            let mut q0 = QueueSettings::new("info", QueueId(0), 0);
            q0.requirement = req(&c, r#"vaccini >= 3 && site == "roma""#);
            q0.rings = vec![
                Ring { after: 20 * S, requirement: req(&c, "vaccini >= 3"), tenants: vec![] },
                Ring { after: 40 * S, requirement: req(&c, "vaccini"), tenants: vec![1] },
            ];
            q0.wrap_up = S;
            q0.ring_timeout = 5 * S;
            q0.priority_step = 10 * S;
            q0.fragile_max_wait = Some(15 * S);
            let mut q1 = QueueSettings::new("triage", QueueId(1), 0);
            q1.requirement = req(&c, "triage");
            q1.weight = 2.0;
            q1.ring_timeout = 5 * S;
            let mut q2 = QueueSettings::new("other", QueueId(2), 0);
            q2.ring_timeout = 5 * S;
            q2.fragile_max_wait = Some(30 * S);
            q2.priority_step = 5 * S;
            let queues = vec![q0, q1, q2];
            let agents: Vec<(String, Attributes)> = vec![
                who(&c, "asl1", "roma", &[("vaccini", 5)], &["it"], &["other"]),
                who(&c, "asl1", "napoli", &[("vaccini", 4), ("triage", 2)], &["it", "en"], &[]),
                who(&c, "asl2", "roma", &[("vaccini", 9)], &["en"], &[]),
                who(&c, "asl1", "roma", &[("triage", 7)], &["it"], &["other"]),
                who(&c, "asl1", "roma", &[("vaccini", 2), ("triage", 1)], &["de"], &[]),
                who(&c, "asl2", "napoli", &[("triage", 9)], &["it"], &[]),
            ]
            .into_iter()
            .enumerate()
            .map(|(i, a)| (format!("{i}"), a))
            .collect();
            let mut r = Router::new(t0, queues.clone(), 2, agents.clone());
            let en = req(&c, r#"lang == "en""#);
            // Reference state.
            let mut state: Vec<AgentState> = vec![AgentState::LoggedOut; agents.len()];
            let mut calls: HashMap<u64, RefCall> = HashMap::new();
            let mut connected: HashMap<u64, u32> = HashMap::new();
            let mut next = 0u64;
            // Whether operator `a` may take call `rc` at `now`: the innermost
            // ring open for the call that admits `a`, and the extra.
            let eligible = |rc: &RefCall, a: u32, now: Instant| -> bool {
                let q = &queues[rc.queue as usize];
                let waited = now - rc.enq;
                let urgent = rc.fragile
                    && q.fragile_max_wait.is_some_and(|m| waited >= m.saturating_sub(q.ring_timeout));
                let open = if urgent { q.rings.len() } else { q.rings.iter().filter(|r| waited >= r.after).count() };
                let attrs = &agents[a as usize].1;
                let tenant_ok = |extra: &[u16]| attrs.tenant == q.tenant || extra.contains(&attrs.tenant);
                let ring_ok = (0..=open).any(|i| {
                    if i == 0 { q.requirement.matches(attrs) && tenant_ok(&[]) }
                    else { let ring = &q.rings[i - 1]; ring.requirement.matches(attrs) && tenant_ok(&ring.tenants) }
                });
                ring_ok && rc.extra.as_ref().is_none_or(|e| e.matches(attrs))
            };
            let score = |rc: &RefCall, now: Instant| -> (u8, f64) {
                let q = &queues[rc.queue as usize];
                let waited = now - rc.enq;
                if rc.fragile && q.fragile_max_wait.is_some_and(|m| waited >= m.saturating_sub(q.ring_timeout)) {
                    (0, (rc.enq - t0).as_secs_f64() + q.fragile_max_wait.unwrap().as_secs_f64())
                } else {
                    (1, -((now - t0).as_secs_f64() - rc.key) * q.weight)
                }
            };
            for op in ops {
                let is_tick = matches!(op, Op::Tick(_));
                let mut decided: Vec<(u64, u32)> = Vec::new();
                match op {
                    Op::Login(a) => r.login(now, AgentId(a), false),
                    Op::Logout(a) => r.logout(AgentId(a)),
                    Op::Pause(a, p) => { r.set_paused(now, AgentId(a), p); }
                    Op::External(a) => {
                        let b = r.board();
                        let s = b.load(a as usize);
                        if b.take(a as usize, s.version, Code::Paused, 2).is_ok() {
                            r.sync_agent(AgentId(a));
                        }
                    }
                    Op::Enqueue(q, p, e, f) => {
                        let s = CallSpec { priority: i32::from(p), requirement: e.then(|| en.clone()), fragile: f, waited: Duration::ZERO };
                        if r.enqueue(now, QueueId(q), CallId(next), &s).is_ok() {
                            let step = queues[q as usize].priority_step.as_secs_f64();
                            calls.insert(next, RefCall {
                                queue: q, extra: s.requirement, enq: now,
                                key: (now - t0).as_secs_f64() - f64::from(p) * step,
                                fragile: f && queues[q as usize].fragile_max_wait.is_some(),
                                tried: vec![], offered: vec![],
                            });
                        }
                        next += 1;
                    }
                    Op::Withdraw(id) => {
                        if !connected.contains_key(&id) && calls.contains_key(&id) {
                            prop_assert!(r.withdraw(now, CallId(id)).is_some());
                            calls.remove(&id);
                        }
                    }
                    Op::Fail(id, o) => {
                        if let Some(rc) = calls.get_mut(&id) && let Some(&a) = rc.offered.first() {
                            let outcome = [OfferOutcome::NoAnswer, OfferOutcome::Rejected, OfferOutcome::Withdrawn][o as usize];
                            rc.offered.retain(|&x| x != a);
                            if outcome != OfferOutcome::Withdrawn && !rc.tried.contains(&a) { rc.tried.push(a); }
                            if outcome == OfferOutcome::Withdrawn && rc.offered.is_empty() { calls.remove(&id); }
                            r.offer_failed(now, CallId(id), AgentId(a), outcome);
                        }
                    }
                    Op::Answer(id) => {
                        if let Some(rc) = calls.get(&id) && let Some(&a) = rc.offered.first() {
                            r.answered(now, AgentId(a), CallId(id));
                            connected.insert(id, a);
                            calls.remove(&id);
                        }
                    }
                    Op::End(id) => {
                        if let Some(a) = connected.remove(&id) {
                            r.call_ended(now, AgentId(a), CallId(id));
                        }
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(u64::from(ms));
                        r.handle_timeout(now);
                    }
                }
                // Each offer: to an operator available before (or freed in
                // this op), who qualifies, for a call not offered to it.
                while let Some(o) = r.poll_output() {
                    match o {
                        Output::Offer(d) => {
                            let a = d.agent.0;
                            let rc = calls.get_mut(&d.call.0);
                            prop_assert!(rc.is_some(), "offer for an unknown call {:?}", d.call);
                            let rc = rc.unwrap();
                            prop_assert!(eligible(rc, a, now), "{:?} not eligible for {:?}", d.agent, d.call);
                            prop_assert!(!rc.offered.contains(&a));
                            rc.offered.push(a);
                            decided.push((d.call.0, a));
                        }
                        Output::Reclaimed { call, agent } => {
                            let rc = calls.get_mut(&call.0).expect("reclaimed a known call");
                            rc.offered.retain(|&x| x != agent.0);
                            if !rc.tried.contains(&agent.0) { rc.tried.push(agent.0); }
                        }
                    }
                }
                // Router and reference agree on who holds what.
                let mut held: HashMap<u64, Vec<u32>> = HashMap::new();
                for (i, a) in r.agents().iter().enumerate() {
                    state[i] = a.state;
                    match a.state {
                        AgentState::Reserved(c) | AgentState::Ringing(c) => held.entry(c.0).or_default().push(i as u32),
                        AgentState::OnCall(c) => prop_assert_eq!(connected.get(&c.0), Some(&(i as u32))),
                        _ => {}
                    }
                }
                for (id, rc) in &calls {
                    let mut h = held.remove(id).unwrap_or_default();
                    h.sort_unstable();
                    let mut o = rc.offered.clone();
                    o.sort_unstable();
                    prop_assert_eq!(h, o, "call {} offers", id);
                }
                prop_assert!(held.is_empty(), "operators held for unknown calls: {:?}", held);
                // Work conservation: no waiting call and untried qualifying
                // available operator left together.
                for (id, rc) in &calls {
                    if !rc.offered.is_empty() { continue; }
                    for (i, st) in state.iter().enumerate() {
                        if *st == AgentState::Available && !rc.tried.contains(&(i as u32)) {
                            prop_assert!(!eligible(rc, i as u32, now), "call {} waits while {} is free", id, i);
                        }
                    }
                }
                // Order: no call left waiting that the chosen operator could
                // have taken scores better than the call it was given. (Ticks
                // open rings one timer at a time, so they are exempt.)
                if !is_tick {
                    for &(id, a) in &decided {
                        let Some(chosen) = calls.get(&id) else { continue };
                        let sc = score(chosen, now);
                        for (other, rc) in &calls {
                            if *other == id || !rc.offered.is_empty() || rc.tried.contains(&a) || !eligible(rc, a, now) {
                                continue;
                            }
                            let so = score(rc, now);
                            prop_assert!(
                                !(so.0 < sc.0 || (so.0 == sc.0 && so.1 < sc.1 - 1e-6)),
                                "{} got call {} {:?} while call {} {:?} waits", a, id, sc, other, so
                            );
                        }
                    }
                }
                for id in calls.keys() {
                    prop_assert!(r.estimate(CallId(*id)).is_some());
                }
                // Pool counters agree with a recount.
                for (qi, q) in queues.iter().enumerate() {
                    let members: Vec<usize> = (0..agents.len())
                        .filter(|&i| q.requirement.within_tenants(&[q.tenant]).matches(&agents[i].1))
                        .collect();
                    let count = |f: &dyn Fn(&AgentState) -> bool| members.iter().filter(|&&i| f(&state[i])).count() as u32;
                    let qa = r.queue_agents(QueueId(qi as u32));
                    prop_assert_eq!(qa.members as usize, members.len());
                    prop_assert_eq!(qa.available, count(&|s| *s == AgentState::Available));
                    prop_assert_eq!(qa.paused, count(&|s| matches!(s, AgentState::Paused(_))));
                    prop_assert_eq!(qa.logged_out, count(&|s| *s == AgentState::LoggedOut));
                }
                prop_assert_eq!(r.check_waiting(), Ok(()));
                prop_assert_eq!(r.check_tallies(), Ok(()));
                // Per-tenant counts add up.
                let total: u32 = (0..2).map(|t| r.tenant_states(t).iter().sum::<u32>()).sum();
                prop_assert_eq!(total as usize, agents.len());
            }
        }
    }
}

/// Operators added live join the pools their attributes reach; a retired
/// one leaves every pool and count, and comes back in the same slot; the
/// board's room bounds how many can be added without a restart.
#[test]
fn operators_join_and_leave_live() {
    let t0 = Instant::now();
    let mut r = Router::new(
        t0,
        vec![QueueSettings::new("q", QueueId(0), 0)],
        1,
        Vec::new(),
    );
    assert_eq!(r.room(), router::board_capacity(0));
    let attrs = Attributes {
        queues: vec![0],
        ..Attributes::default()
    };
    let a = r.add_agent("1001", attrs.clone()).unwrap();
    assert_eq!(r.queue_agents(QueueId(0)).logged_out, 1);
    r.login(t0, a, false);
    assert_eq!(r.queue_agents(QueueId(0)).available, 1);
    assert!(!r.retire(a), "logged in: not yet");
    r.logout(a);
    assert!(r.retire(a));
    assert_eq!(r.queue_agents(QueueId(0)).logged_out, 0);
    assert_eq!(r.tenant_states(0).iter().sum::<u32>(), 0);
    r.login(t0, a, false);
    assert_eq!(r.queue_agents(QueueId(0)).available, 0, "retired: no login");
    assert_eq!(r.add_agent("1001", attrs.clone()), Some(a), "the same slot");
    assert_eq!(r.queue_agents(QueueId(0)).logged_out, 1);
    while r.room() > 0 {
        let n = r.agents().len();
        r.add_agent(&format!("x{n}"), attrs.clone()).unwrap();
    }
    assert_eq!(r.add_agent("one-too-many", attrs), None);
}

/// An operator whose attributes change again and again, in a queue whose
/// strategy keeps positions (linear), reuses their position: the pool does
/// not grow with each edit, and the operator keeps their place in order.
#[test]
fn edited_operators_reuse_their_pool_positions() {
    let t0 = Instant::now();
    let mut q = info();
    q.strategy = Strategy::Linear;
    let mut r = Router::new(t0, vec![q], 1, plain(3));
    let (a, b) = (AgentId(0), AgentId(1));
    for x in 0..3 {
        r.login(t0, AgentId(x), false);
    }
    let entries = r.index_entries();
    let mut attrs = r.agent(a).attributes.clone();
    for i in 0..500u32 {
        // Available or paused at the edit: both free the position.
        r.set_paused(t0, a, i % 2 == 1);
        attrs.site = (i % 2) as u16;
        r.set_attributes(t0, a, attrs.clone());
    }
    r.set_paused(t0, a, false);
    assert_eq!(r.index_entries(), entries);
    assert_eq!(r.check_tallies(), Ok(()));
    assert_eq!(r.queue_agents(QueueId(0)).available, 3);
    // Linear: a (first in configuration order) still comes first.
    r.enqueue(t0 + S, QueueId(0), CallId(1), &spec()).unwrap();
    assert_eq!(one(&mut r).agent, a);
    // Retired and added back: the same position again.
    r.set_paused(t0, b, true);
    r.logout(b);
    assert!(r.retire(b));
    let back = r.add_agent("1002", r.agent(b).attributes.clone()).unwrap();
    assert_eq!(back, b);
    assert_eq!(r.index_entries(), entries);
}

/// A queue added live gets the next id and reaches, at once, the
/// operators already given it; one given it afterwards joins with their
/// new attributes; calls in it are matched as in any other.
#[test]
fn a_queue_added_live_serves_its_operators_at_once() {
    let t0 = Instant::now();
    let mut r = Router::new(t0, vec![info()], 1, plain(2));
    let a = AgentId(0);
    let b = AgentId(1);
    r.login(t0, a, false);
    r.login(t0, b, false);
    let id = r
        .add_queue(QueueSettings::new("vaccini", QueueId(1), 0))
        .unwrap();
    assert_eq!(id, QueueId(1));
    assert_eq!(r.queue_count(), 2);
    assert_eq!(r.queue_agents(id).members, 0, "nobody has it yet");
    let mut attrs = r.agent(b).attributes.clone();
    attrs.queues.push(1);
    r.set_attributes(t0, b, attrs);
    assert_eq!(r.queue_agents(id).available, 1);
    r.enqueue(t0 + S, id, CallId(7), &spec()).unwrap();
    let d = one(&mut r);
    assert_eq!((d.call, d.agent), (CallId(7), b));
    // The old queue still serves its own.
    assert_eq!(r.queue_agents(QueueId(0)).members, 2);
}

/// A group made when its first call arrives (a call with a requirement of
/// its own) takes only the operators its rings admit: the queue's firm
/// and a ring's agreement firms, or every firm when the queue's
/// expression names firms itself. (Made from the firms' operators only,
/// it must find the same ones a scan of everyone would.)
#[test]
fn a_group_made_late_takes_the_firms_its_rings_admit() {
    let c = catalog();
    let t0 = Instant::now();
    let agents: Vec<(String, Attributes)> = vec![
        who(&c, "asl1", "roma", &[("vaccini", 5)], &["en"], &[]),
        who(&c, "asl2", "roma", &[("vaccini", 5)], &["en"], &[]),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, a)| (format!("{i}"), a))
    .collect();
    let en = CallSpec {
        requirement: Some(req(&c, r#"lang == "en""#)),
        ..spec()
    };
    // The queue of asl1: asl2's operator is never offered its call.
    let mut own = QueueSettings::new("info", QueueId(0), c.tenant_id("asl1").unwrap());
    own.requirement = req(&c, "vaccini");
    let mut r = Router::new(t0, vec![own.clone()], 2, agents.clone());
    r.login(t0, AgentId(1), false);
    r.enqueue(t0, QueueId(0), CallId(1), &en).unwrap();
    assert!(offers(&mut r).is_empty(), "asl2 is not asl1's");
    r.login(t0 + S, AgentId(0), false);
    assert_eq!(one(&mut r).agent, AgentId(0));
    // An agreement ring admits asl2: its operator joins the late group.
    let mut agreed = own.clone();
    agreed.rings = vec![Ring {
        after: Duration::ZERO,
        requirement: req(&c, "vaccini"),
        tenants: vec![c.tenant_id("asl2").unwrap()],
    }];
    let mut r = Router::new(t0, vec![agreed], 2, agents.clone());
    r.login(t0, AgentId(1), false);
    r.enqueue(t0, QueueId(0), CallId(1), &en).unwrap();
    r.handle_timeout(t0 + S);
    assert_eq!(one(&mut r).agent, AgentId(1));
    // An expression naming the firm itself: asl2's operator is tried too.
    let mut named = own;
    named.requirement = req(&c, r#"vaccini && tenant == "asl2""#);
    let mut r = Router::new(t0, vec![named], 2, agents);
    r.login(t0, AgentId(1), false);
    r.enqueue(t0, QueueId(0), CallId(1), &en).unwrap();
    assert_eq!(one(&mut r).agent, AgentId(1));
}

/// A late group reads the operators filed by firm, so the filing must
/// follow every change of firm (an edit; a retired operator added back
/// under another firm), and the pool must be joined in configuration
/// order whatever order the firms' lists give: `Linear` hunts by it.
#[test]
fn a_late_group_finds_operators_by_their_current_firm_in_order() {
    let c = catalog();
    let t0 = Instant::now();
    let v3 = |t: &str| who(&c, t, "roma", &[("vaccini", 3)], &["en"], &[]);
    let en = CallSpec {
        requirement: Some(req(&c, r#"lang == "en""#)),
        ..spec()
    };
    // Ring 0 wants level 5 (nobody); ring 1 admits asl2 at any level, so
    // one pool holds both firms' operators.
    let mut q = QueueSettings::new("info", QueueId(0), c.tenant_id("asl1").unwrap());
    q.strategy = Strategy::Linear;
    q.requirement = req(&c, "vaccini >= 5");
    q.rings = vec![Ring {
        after: Duration::ZERO,
        requirement: req(&c, "vaccini"),
        tenants: vec![c.tenant_id("asl2").unwrap()],
    }];
    // asl2's list holds 0 and 2, asl1's holds 1: read firm by firm they
    // come 1, 0, 2.
    let agents: Vec<(String, Attributes)> = ["asl2", "asl1", "asl2"]
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{i}"), v3(t)))
        .collect();
    let mut r = Router::new(t0, vec![q.clone()], 2, agents.clone());
    for a in 0..3 {
        r.login(t0, AgentId(a), false);
    }
    r.enqueue(t0, QueueId(0), CallId(1), &en).unwrap();
    r.handle_timeout(t0 + S);
    assert_eq!(one(&mut r).agent, AgentId(0), "configuration order");

    // Operator 0 moves to asl1 by an edit, 1 to asl2 and 2 to asl1 by
    // being retired and added back: asl1 is now 0 and 2, asl2 is 1.
    let moved = |q: &QueueSettings| {
        let mut r = Router::new(t0, vec![q.clone()], 2, agents.clone());
        r.set_attributes(t0, AgentId(0), v3("asl1"));
        for (a, t) in [(1, "asl2"), (2, "asl1")] {
            assert!(r.retire(AgentId(a)));
            assert_eq!(r.add_agent(&a.to_string(), v3(t)), Some(AgentId(a)));
        }
        for a in [1, 2, 0] {
            r.login(t0, AgentId(a), false);
        }
        r
    };
    // Only asl1's own ring: 0 and 2, in that order, and never 1.
    let mut own = q.clone();
    own.rings.clear();
    own.requirement = req(&c, "vaccini");
    let mut r = moved(&own);
    for (call, want) in [(1, 0), (2, 2)] {
        r.enqueue(t0, QueueId(0), CallId(call), &en).unwrap();
        assert_eq!(one(&mut r).agent, AgentId(want), "filed under asl1 now");
    }
    r.enqueue(t0, QueueId(0), CallId(3), &en).unwrap();
    assert!(offers(&mut r).is_empty(), "1 is asl2's");
    // Both firms (the first queue): each operator joins once, so the
    // three calls take the three of them and a fourth finds nobody.
    let mut r = moved(&q);
    let mut took = Vec::new();
    for call in 1..=4 {
        r.enqueue(t0, QueueId(0), CallId(call), &en).unwrap();
        r.handle_timeout(t0 + S);
        took.extend(offers(&mut r).into_iter().map(|d| d.agent.0));
    }
    assert_eq!(took, [0, 1, 2], "configuration order, once each");
}
