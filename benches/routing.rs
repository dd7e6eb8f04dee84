//! The routing core at national scale: 40,000 operators in 50 tenants,
//! 500 skills (each operator 3–10 of its firm's skills, levels 1–10), 500
//! queues with mixed strategies, 10,000 waiting calls.
//!
//! `cargo bench --bench routing` runs the criterion groups, then prints
//! latency percentiles, a two-thread run and memory per operator.

use std::hint::black_box;
use std::time::{Duration, Instant};

use centralino_routing::{
    Attributes, CallSpec, Catalog, Output, QueueSettings, Requirement, Router, SplitMix64, Strategy,
};
use centralino_types::alloc_count::Counting;
use centralino_types::{AgentId, CallId, QueueId};
use criterion::{Criterion, criterion_group};

/// Counts live heap bytes and allocation calls (memory per operator, and
/// proof that a decision does not allocate).
#[global_allocator]
static GLOBAL: Counting = Counting;

const TENANTS: u32 = 50;
const SKILLS: u32 = 500;

/// Queue k needs skill k at level ≥ 3 and belongs to tenant k / 10; each
/// tenant's operators hold 3–10 of its 10 skills. `ring_all` false keeps
/// one offer per decision.
fn world(agents: u32, ring_all: bool) -> Router {
    world_with(agents, ring_all, Duration::ZERO)
}

/// The tenants, skills and language the worlds name.
fn catalog() -> Catalog {
    let mut cat = Catalog::default();
    for t in 0..TENANTS {
        cat.tenant(&format!("t{t}")).unwrap();
    }
    for s in 0..SKILLS {
        cat.skill(&format!("s{s}")).unwrap();
    }
    cat.language("it").unwrap();
    cat
}

/// [`world`] with each queue's wrap-up.
fn world_with(agents: u32, ring_all: bool, wrap_up: Duration) -> Router {
    let cat = catalog();
    let queues = (0..SKILLS)
        .map(|k| {
            let mut q = QueueSettings::new(&format!("q{k}"), QueueId(k), (k / 10) as u16);
            q.requirement = Requirement::parse(&format!("s{k} >= 3"), &cat).unwrap();
            let s = Strategy::EACH[(k % 9) as usize];
            q.strategy = if !ring_all && matches!(s, Strategy::RingAll(_)) {
                Strategy::LongestIdle
            } else {
                s
            };
            q.max_waiting = 1_000_000;
            q.ring_timeout = Duration::from_secs(15);
            q.wrap_up = wrap_up;
            q
        })
        .collect();
    let mut rng = SplitMix64(42);
    let ops = (0..agents)
        .map(|a| {
            let tenant = a % TENANTS;
            let n = 3 + rng.below(8);
            let mut skills: Vec<(u16, u8)> = Vec::new();
            while skills.len() < n as usize {
                let s = (tenant * 10 + rng.below(10)) as u16;
                if !skills.iter().any(|x| x.0 == s) {
                    skills.push((s, 1 + rng.below(10) as u8));
                }
            }
            (
                format!("op{a}"),
                Attributes {
                    tenant: tenant as u16,
                    site: 0,
                    skills,
                    languages: 1,
                    queues: vec![],
                },
            )
        })
        .collect();
    Router::new(Instant::now(), queues, TENANTS as usize, ops)
}

fn login_all(r: &mut Router, now: Instant) {
    for a in 0..r.agents().len() as u32 {
        r.login(now, AgentId(a), false);
    }
}

fn offers(r: &mut Router) -> usize {
    let mut n = 0;
    while let Some(o) = r.poll_output() {
        if let Output::Offer(d) = o {
            black_box(d);
            n += 1;
        }
    }
    n
}

/// Busy world: every operator on a call, `waiting` calls queued.
fn busy_world(agents: u32, waiting: usize, seed: u64) -> Busy {
    let mut r = world(agents, false);
    let now = Instant::now();
    login_all(&mut r, now);
    let mut rng = SplitMix64(7);
    let mut on_call = Vec::new();
    let mut call = 0u64;
    let spec = CallSpec::default();
    let mut queued = 0usize;
    // Enqueue until `waiting` calls find nobody (everyone eligible busy).
    while queued < waiting {
        call += 1;
        r.enqueue(now, QueueId(rng.below(SKILLS)), CallId(call), &spec)
            .unwrap();
        let mut got = false;
        while let Some(o) = r.poll_output() {
            if let Output::Offer(d) = o {
                r.answered(now, d.agent, d.call);
                on_call.push((d.agent, d.call));
                got = true;
            }
        }
        if !got {
            queued += 1;
        }
    }
    Busy {
        r,
        on_call,
        now,
        call,
        rng: SplitMix64(seed),
    }
}

/// One step of the busy world: a random operator ends its call (timed:
/// the decision on operator-available), answers what it is offered, and a
/// new call arrives so about `waiting` calls stay queued.
fn busy_step(b: &mut Busy) -> (Duration, bool) {
    let spec = CallSpec::default();
    let i = b.rng.below(b.on_call.len() as u32) as usize;
    let (agent, c) = b.on_call.swap_remove(i);
    let t = Instant::now();
    b.r.call_ended(b.now, agent, c);
    let d = b.r.poll_output();
    let took = t.elapsed();
    let decided = matches!(d, Some(Output::Offer(_)));
    if let Some(Output::Offer(d)) = d {
        b.r.answered(b.now, d.agent, d.call);
        b.on_call.push((d.agent, d.call));
    }
    b.call += 1;
    b.r.enqueue(b.now, QueueId(b.rng.below(SKILLS)), CallId(b.call), &spec)
        .unwrap();
    while let Some(o) = b.r.poll_output() {
        if let Output::Offer(d) = o {
            b.r.answered(b.now, d.agent, d.call);
            b.on_call.push((d.agent, d.call));
        }
    }
    (took, decided)
}

struct Busy {
    r: Router,
    on_call: Vec<(AgentId, CallId)>,
    now: Instant,
    call: u64,
    rng: SplitMix64,
}

fn benches(c: &mut Criterion) {
    let spec = CallSpec::default();
    let mut g = c.benchmark_group("routing");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(4));

    // Call arrival, every operator available: enqueue → offer, timed in
    // batches of 500 (no clock read per decision); the operators are freed
    // again untimed.
    let mut r = world(40_000, false);
    let now = Instant::now();
    login_all(&mut r, now);
    let mut rng = SplitMix64(1);
    let mut call = 0u64;
    let mut batch: Vec<(AgentId, CallId)> = Vec::with_capacity(500);
    g.bench_function("decision_on_arrival_40k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(500);
                left -= n;
                let t = Instant::now();
                for _ in 0..n {
                    call += 1;
                    r.enqueue(now, QueueId(rng.below(SKILLS)), CallId(call), &spec)
                        .unwrap();
                    match r.poll_output() {
                        Some(Output::Offer(d)) => batch.push((d.agent, d.call)),
                        other => panic!("expected an offer, got {other:?}"),
                    }
                }
                total += t.elapsed();
                for (a, c) in batch.drain(..) {
                    r.answered(now, a, c);
                    r.call_ended(now, a, c);
                }
            }
            total
        })
    });

    // Operator available, 10,000 calls waiting: call end → best call.
    let mut busy = busy_world(40_000, 10_000, 3);
    g.bench_function("decision_on_available_40k_10k_waiting", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| busy_step(&mut busy).0).sum())
    });

    // Operator state change: pause then resume (no call waiting for it).
    let mut r = world(40_000, false);
    login_all(&mut r, now);
    let mut a = 0u32;
    g.bench_function("state_change_pause_resume_40k", |b| {
        b.iter(|| {
            a = (a + 1) % 40_000;
            r.set_paused(now, AgentId(a), true);
            r.set_paused(now, AgentId(a), false);
        })
    });
    g.finish();
}

/// A call arrives and is offered, answered and ended at once: one
/// decision and three state changes. Returns the offers made.
fn arrive(r: &mut Router, now: Instant, q: QueueId, id: CallId) -> u64 {
    r.enqueue(now, q, id, &CallSpec::default()).unwrap();
    let mut n = 0;
    while let Some(o) = r.poll_output() {
        if let Output::Offer(d) = o {
            n += 1;
            r.answered(now, d.agent, d.call);
            r.call_ended(now, d.agent, d.call);
        }
    }
    n
}

/// What happens next in [`realistic`]'s virtual hour.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    /// The caller gives up, if still waiting.
    Abandon(CallId),
    /// The operator's call ends (wrap-up follows).
    End(AgentId, CallId),
}

/// The routing core in a realistic hour rather than the best case: 40,000
/// operators, the nine strategies (ring-all among them), calls arriving
/// as a Poisson stream for 90 % occupancy (300 s of talk, 10 s of wrap-up),
/// a third of them with a requirement of their own (a higher skill level,
/// as an IVR answer gives), callers who give up after 2 minutes on
/// average, and time advancing: operators are on calls and in wrap-up,
/// queues form and drain. Every router call that can make a decision (an
/// arrival, an end of wrap-up through the timers, a call ending) is timed
/// with its outputs, after a 15-minute warm-up.
fn realistic() -> Hour {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashSet};
    let cat = catalog();
    let mut r = world_with(40_000, true, Duration::from_secs(10));
    let t0 = Instant::now();
    login_all(&mut r, t0);
    // Two levels above the queue's for a third of the calls: 1,000 extra
    // (queue, requirement) groups, within the router's bound.
    let own: Vec<[Requirement; 2]> = (0..SKILLS)
        .map(|k| [5, 7].map(|l| Requirement::parse(&format!("s{k} >= {l}"), &cat).unwrap()))
        .collect();
    let mut rng = SplitMix64(2026);
    let exp = |rng: &mut SplitMix64, mean: f64| {
        let u = (f64::from(rng.below(1 << 30)) + 1.0) / f64::from(1u32 << 30);
        Duration::from_secs_f64(-mean * u.ln())
    };
    let rate = 0.9 * 40_000.0 / 310.0; // calls per second
    let hour = Duration::from_secs(3_600);
    let warm = Duration::from_secs(900);
    let mut events = BinaryHeap::new();
    events.push(Reverse((Duration::ZERO, Event::Arrival)));
    let mut answered: HashSet<CallId> = HashSet::new();
    let mut next_call = 0u64;
    let mut lat = Vec::with_capacity(2_000_000);
    let mut decisions = 0u64;
    let mut in_router = Duration::ZERO;
    let mut ends = 0u64;
    let mut digest = 0xCBF2_9CE4_8422_2325u64;
    // Runs one router call and its outputs: offers answered at once (the
    // first of a ring-all), their ends scheduled.
    let mut by_kind = [(0u64, 0u64); 3];
    let mut timed = |r: &mut Router,
                     at: Duration,
                     events: &mut BinaryHeap<Reverse<(Duration, Event)>>,
                     answered: &mut HashSet<CallId>,
                     rng: &mut SplitMix64,
                     kind: Kind,
                     f: &mut dyn FnMut(&mut Router)| {
        let now = t0 + at;
        let start = Instant::now();
        f(r);
        // Every offer is kept (and goes into the digest): a router call
        // making more than the array holds stops the bench.
        let mut offers: [Option<centralino_routing::Decision>; 32] = [None; 32];
        let mut n = 0;
        while let Some(o) = r.poll_output() {
            if let Output::Offer(d) = o {
                assert!(n < offers.len(), "more offers in one router call than kept");
                offers[n] = Some(d);
                n += 1;
            }
        }
        let took = start.elapsed();
        if at >= warm {
            if decisions == 0 {
                warmed_up();
            }
            lat.push(took.as_nanos() as u64);
            by_kind[kind as usize].0 += 1;
            by_kind[kind as usize].1 += took.as_nanos() as u64;
            in_router += took;
            decisions += 1;
        }
        for d in offers.into_iter().flatten() {
            digest =
                (digest ^ d.call.0 ^ (u64::from(d.agent.0) << 40)).wrapping_mul(0x100_0000_01B3);
            if answered.insert(d.call) {
                r.answered(now, d.agent, d.call);
                let talk = exp(rng, 300.0);
                events.push(Reverse((at + talk, Event::End(d.agent, d.call))));
            }
        }
    };
    while let Some(Reverse((at, ev))) = events.pop() {
        if at > hour {
            break;
        }
        // The router's own timers (wrap-up ending, ring timeouts) first.
        while let Some(t) = r.poll_timeout() {
            if t > t0 + at {
                break;
            }
            let tat = t.saturating_duration_since(t0);
            timed(
                &mut r,
                tat,
                &mut events,
                &mut answered,
                &mut rng,
                Kind::Timer,
                &mut |r| r.handle_timeout(t),
            );
        }
        let now = t0 + at;
        match ev {
            Event::Arrival => {
                next_call += 1;
                let call = CallId(next_call);
                let k = rng.below(SKILLS);
                let mut spec = CallSpec::default();
                if rng.below(3) == 0 {
                    spec.requirement = Some(own[k as usize][rng.below(2) as usize].clone());
                }
                timed(
                    &mut r,
                    at,
                    &mut events,
                    &mut answered,
                    &mut rng,
                    Kind::Arrival,
                    &mut |r| {
                        r.enqueue(now, QueueId(k), call, &spec).unwrap();
                    },
                );
                events.push(Reverse((at + exp(&mut rng, 120.0), Event::Abandon(call))));
                events.push(Reverse((at + exp(&mut rng, 1.0 / rate), Event::Arrival)));
            }
            Event::Abandon(call) => {
                if !answered.contains(&call) {
                    r.withdraw(now, call);
                }
            }
            Event::End(agent, call) => {
                ends += 1;
                answered.remove(&call);
                timed(
                    &mut r,
                    at,
                    &mut events,
                    &mut answered,
                    &mut rng,
                    Kind::End,
                    &mut |r| r.call_ended(now, agent, call),
                );
            }
        }
    }
    let busy = r.agents().len() as f64;
    let on_calls = events
        .iter()
        .filter(|Reverse((_, e))| matches!(e, Event::End(..)))
        .count() as f64;
    Hour {
        decisions,
        per_s: decisions as f64 / in_router.as_secs_f64(),
        percentiles: percentiles(lat),
        ends,
        on_call: on_calls / busy,
        digest,
        by_kind,
    }
}

/// Which router call [`realistic`] timed.
#[derive(Clone, Copy)]
enum Kind {
    /// `handle_timeout`: wrap-ups ending (the operator indexed in each of
    /// their pools, or offered a waiting call), ring and lease timers.
    Timer = 0,
    /// `enqueue`: a call arriving, mostly offered at once (90 % occupancy
    /// leaves operators free), ring-all making up to three offers.
    Arrival = 1,
    /// `call_ended`: the operator into wrap-up.
    End = 2,
}

/// What [`realistic`] measured.
struct Hour {
    /// Router calls timed (after the warm-up).
    decisions: u64,
    /// Their rate in router time.
    per_s: f64,
    /// p50, p99, p99.9 in ns.
    percentiles: (u64, u64, u64),
    /// Calls ended.
    ends: u64,
    /// Share of operators on a call at the end.
    on_call: f64,
    /// Every offer in order (call, operator): two builds that decide
    /// alike print the same digest.
    digest: u64,
    /// Per [`Kind`]: calls and total ns.
    by_kind: [(u64, u64); 3],
}

impl Hour {
    fn kinds(&self) -> String {
        let mean = |(n, ns): (u64, u64)| ns.checked_div(n).unwrap_or(0);
        let [t, a, e] = self.by_kind;
        format!(
            "timers {} (mean {} ns), arrivals {} (mean {} ns), call ends {} (mean {} ns)",
            t.0,
            mean(t),
            a.0,
            mean(a),
            e.0,
            mean(e)
        )
    }
}

/// Marks the end of [`realistic`]'s warm-up for profilers: e.g.
/// `valgrind --tool=callgrind --dump-after=routing::warmed_up` puts the
/// timed hour in a profile of its own.
#[inline(never)]
fn warmed_up() {
    black_box(());
}

fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (p(0.50), p(0.99), p(0.999))
}

fn report() {
    // For profiling (and A/B runs) of one part alone:
    // ROUTING_BENCH_ONLY=realistic|available|memory.
    let only = std::env::var("ROUTING_BENCH_ONLY").ok();
    if only.as_deref() == Some("realistic") {
        let h = realistic();
        let (decisions, per_s, digest) = (h.decisions, h.per_s, h.digest);
        let (p50, p99, p999) = h.percentiles;
        println!(
            "realistic hour: {decisions} router calls, {per_s:.0}/s; p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns; offers digest {digest:016x}; {}",
            h.kinds()
        );
        return;
    }
    if only.as_deref() == Some("memory") {
        memory();
        return;
    }
    if only.as_deref() == Some("available") {
        let mut busy = busy_world(40_000, 10_000, 5);
        let (mut total, mut lat) = (Duration::ZERO, Vec::with_capacity(200_000));
        for _ in 0..200_000 {
            let (took, _) = busy_step(&mut busy);
            total += took;
            lat.push(took.as_nanos() as u64);
        }
        let (p50, p99, p999) = percentiles(lat);
        println!(
            "available decision: {:.0}/s; p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns",
            200_000.0 / total.as_secs_f64()
        );
        return;
    }
    let spec = CallSpec::default();
    // Latency per decision on arrival (mixed strategies incl. ring-all).
    let mut r = world(40_000, true);
    let now = Instant::now();
    login_all(&mut r, now);
    let mut rng = SplitMix64(11);
    let n = 200_000;
    let mut lat = Vec::with_capacity(n);
    let allocs_before = Counting::allocations();
    let mut warm = 0;
    for i in 0..n as u64 {
        if i == 20_000 {
            warm = Counting::allocations();
        }
        let t = Instant::now();
        r.enqueue(now, QueueId(rng.below(SKILLS)), CallId(i), &spec)
            .unwrap();
        let mut first = None;
        while let Some(o) = r.poll_output() {
            if let Output::Offer(d) = o
                && first.is_none()
            {
                first = Some(d);
            }
        }
        lat.push(t.elapsed().as_nanos() as u64);
        let d = first.expect("an operator is free");
        r.answered(now, d.agent, d.call);
        r.call_ended(now, d.agent, d.call);
    }
    let _ = allocs_before;
    let steady_allocs = Counting::allocations() - warm;
    let (p50, p99, p999) = percentiles(lat);
    println!(
        "arrival decision, 40k operators, mixed strategies: p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns; \
         allocations after warm-up over {} cycles (enqueue, offer, answer, end): {steady_allocs}",
        n - 20_000
    );

    // Latency on operator available with 10k waiting.
    let mut busy = busy_world(40_000, 10_000, 5);
    let mut lat = Vec::with_capacity(n);
    let mut decided = 0u64;
    for _ in 0..n {
        let (took, d) = busy_step(&mut busy);
        lat.push(took.as_nanos() as u64);
        decided += u64::from(d);
    }
    let (p50, p99, p999) = percentiles(lat);
    println!(
        "available decision, 40k operators, ~10k waiting: p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns \
         ({decided} of {n} ends found a waiting call)"
    );

    // One core: the same arrival workload, throughput.
    let mut r = world(40_000, false);
    login_all(&mut r, now);
    let mut rng = SplitMix64(13);
    let m = 1_000_000u64;
    let t = Instant::now();
    let mut decisions = 0;
    for i in 0..m {
        decisions += arrive(&mut r, now, QueueId(rng.below(SKILLS)), CallId(i));
    }
    let one = decisions as f64 / t.elapsed().as_secs_f64();
    println!(
        "one thread: {one:.0} arrival decisions/s (each with answer and end: 3 state changes)"
    );

    // Two threads: SIP-side producers hand events to the router thread over
    // a lock-free channel (std mpsc); the router thread is the single
    // writer of its indexes.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, u64)>(65_536);
    let t = Instant::now();
    let router_thread = std::thread::spawn(move || {
        let mut r = world(40_000, false);
        let now = Instant::now();
        login_all(&mut r, now);
        let ready = Instant::now();
        let mut decisions = 0u64;
        while let Ok((q, id)) = rx.recv() {
            decisions += arrive(&mut r, now, QueueId(q), CallId(id));
        }
        (decisions, ready.elapsed())
    });
    let mut rng = SplitMix64(13);
    for i in 0..m {
        tx.send((rng.below(SKILLS), i)).unwrap();
    }
    drop(tx);
    let (decisions, busy) = router_thread.join().unwrap();
    let _ = t;
    println!(
        "two threads (producer → channel → router): {:.0} decisions/s",
        decisions as f64 / busy.as_secs_f64()
    );

    // The realistic hour (the figures above are the best case: every
    // call finds an operator at once, no call has requirements of its
    // own, time stands still).
    let h = realistic();
    let (decisions, per_s, ends, digest) = (h.decisions, h.per_s, h.ends, h.digest);
    let (p50, p99, p999) = h.percentiles;
    println!(
        "realistic hour, 40k operators (90 % occupancy, ring-all among the strategies, a third of \
         the calls with their own requirement, wrap-up, abandons, time advancing): {decisions} router \
         calls after warm-up, {per_s:.0}/s of router time on one core; p50 {p50} ns, p99 {p99} ns, \
         p99.9 {p999} ns; {ends} calls ended, {:.0} % of operators on a call at the end; offers \
         digest {digest:016x}; by kind: {}",
        h.on_call * 100.0,
        h.kinds()
    );
    memory();
    black_box(offers);
}

/// Memory per operator, all logged in, no call.
fn memory() {
    for agents in [40_000u32, 120_000] {
        let before = Counting::live_bytes();
        let mut r = world(agents, true);
        login_all(&mut r, Instant::now());
        let bytes = Counting::live_bytes() - before;
        println!(
            "memory: {agents} operators, 500 queues: {:.1} MiB, {:.0} bytes per operator",
            bytes as f64 / 1048576.0,
            bytes as f64 / f64::from(agents)
        );
        black_box(&r);
    }
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    // For profiling one criterion group alone.
    if std::env::var_os("ROUTING_BENCH_NO_REPORT").is_none() {
        report();
    }
}
