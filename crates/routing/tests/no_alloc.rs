//! The decision path does not allocate once warmed up: calls arrive, are
//! offered (every strategy, ring-all included), answered, ended, withdrawn
//! and time passes, with a counting allocator armed on this thread.

// Tests may read the clock and files: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use centralino_routing::{
    Attributes, CallSpec, Catalog, OfferOutcome, Output, QueueSettings, Requirement, Router,
    SplitMix64, Strategy,
};
use centralino_types::alloc_count::Counting;
use centralino_types::{AgentId, CallId, QueueId};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_routing_does_not_allocate() {
    let mut cat = Catalog::default();
    cat.tenant("t").unwrap();
    for k in 0..9 {
        cat.skill(&format!("s{k}")).unwrap();
    }
    let queues: Vec<QueueSettings> = (0..9u32)
        .map(|k| {
            let mut q = QueueSettings::new(&format!("q{k}"), QueueId(k), 0);
            q.requirement = Requirement::parse(&format!("s{k} >= 2"), &cat).unwrap();
            q.strategy = Strategy::EACH[k as usize];
            q.wrap_up = Duration::from_millis(300);
            q.max_waiting = 10_000;
            q
        })
        .collect();
    let mut rng = SplitMix64(9);
    let agents: Vec<(String, Attributes)> = (0..300u32)
        .map(|i| {
            let mut skills = Vec::new();
            for s in 0..9u16 {
                if rng.below(3) == 0 {
                    skills.push((s, 1 + rng.below(10) as u8));
                }
            }
            (
                format!("{i}"),
                Attributes {
                    skills,
                    ..Attributes::default()
                },
            )
        })
        .collect();
    let t0 = Instant::now();
    let mut r = Router::new(t0, queues, 1, agents);
    for a in 0..300 {
        r.login(t0, AgentId(a), false);
    }
    let mut on_call: VecDeque<(AgentId, CallId)> = VecDeque::with_capacity(1024);
    let spec = CallSpec::default();
    let mut now = t0;
    let mut counted = 0u64;
    let mut decisions = 0u64;
    for i in 0..60_000u64 {
        if i == 20_000 {
            Counting::arm();
        }
        now += Duration::from_millis(5);
        r.handle_timeout(now);
        // 100 calls/s against ~200/s of capacity: a steady state, not a
        // queue that grows (growth may allocate, by design).
        if i % 2 == 0 {
            r.enqueue(now, QueueId(rng.below(9)), CallId(i), &spec)
                .unwrap();
        }
        // Some callers give up, some offers are refused.
        if i % 14 == 0 {
            r.withdraw(now, CallId(i / 2));
        }
        while let Some(o) = r.poll_output() {
            if let Output::Offer(d) = o {
                decisions += 1;
                // Even operators refuse every 11th call: it moves on to
                // another operator (or waits for the retry delay).
                if d.call.0 % 11 == 0 && d.agent.0 % 2 == 0 {
                    r.offer_failed(now, d.call, d.agent, OfferOutcome::Rejected);
                } else if r.agent(d.agent).state == centralino_routing::AgentState::Reserved(d.call)
                {
                    r.answered(now, d.agent, d.call);
                    on_call.push_back((d.agent, d.call));
                }
            }
        }
        while on_call.len() > 200 {
            let (a, c) = on_call.pop_front().expect("non-empty");
            r.call_ended(now, a, c);
        }
        if i == 59_999 {
            counted = Counting::thread_count();
        }
    }
    Counting::disarm();
    assert!(decisions > 25_000, "the workload routes: {decisions}");
    // An allocation per decision would count tens of thousands here; what
    // remains are capacity high-water marks (a queue or a timer list
    // reaching a new peak, a reused slot's first refusal), which the
    // Vec-backed tables keep afterwards.
    assert!(
        counted < 40,
        "{counted} allocations in 40,000 steady-state cycles ({decisions} decisions)"
    );
}
