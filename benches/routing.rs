//! Baseline of the first router (linear scan per decision), the figure the
//! skill engine of the routing-core issue must beat.
//! `cargo bench --bench routing`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use centralino_routing::{QueueSettings, Router, Strategy};
use centralino_types::{CallId, QueueId};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn router(agents: u32, queues: u32) -> Router {
    let t0 = Instant::now();
    let settings = (0..queues)
        .map(|q| QueueSettings {
            name: format!("q{q}"),
            strategy: Strategy::LongestIdle,
            ring_timeout: Duration::from_secs(15),
            max_no_answer: 3,
            max_wait: Duration::from_secs(600),
            wrap_up: Duration::ZERO,
            max_waiting: usize::MAX,
        })
        .collect();
    let mut r = Router::new(settings);
    for a in 0..agents {
        let qs = (0..3).map(|k| QueueId((a * 7 + k * 13) % queues)).collect();
        let id = r.add_agent(t0, &format!("{a}"), qs);
        r.login(t0 + Duration::from_nanos(u64::from(a)), id, false);
    }
    r
}

/// One decision on call arrival with every operator available, then the
/// operator freed again (answer + end), so each iteration starts alike.
fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_on_arrival");
    group.sample_size(20);
    for agents in [1_000u32, 10_000, 40_000] {
        let mut r = router(agents, 500);
        let now = Instant::now() + Duration::from_secs(1);
        let mut call = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(agents), &agents, |b, _| {
            b.iter(|| {
                call += 1;
                let q = QueueId((call % 500) as u32);
                r.enqueue(now, q, CallId(call)).expect("unbounded queue");
                let d = r.poll_decision(now).expect("an operator is available");
                r.answered(d.agent, d.call);
                r.call_ended(now, d.agent, d.call, Duration::ZERO);
                black_box(d);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
