//! Call records into a real SQLite file (WAL, `synchronous = FULL`) that
//! already holds a day's calls, as the store thread writes them: a group
//! of 100 calls' records (start, queue enter, offer and connect, the
//! operator's complete, end) in one transaction. Two kinds of record id:
//! 128 random bits, as the engine made them before, and the wall clock's
//! milliseconds first, as it makes them now (`Engine::record_id`). The
//! indexes on the id (`cdr`'s key, the queue log's `(call, seq)`) take a
//! random id anywhere, so each group dirties a page per call all over
//! them; a growing id is appended at their right edge.
//!
//! `cargo bench --bench store` (`STORE_BENCH_CALLS` sets how many calls
//! the file holds first; 200,000 by default, a few minutes of a busy
//! node; a national day is millions).

// A bench reads the clock and writes files.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use centralino_store::{Record, Store};
use centralino_types::outcome::{CallOutcome, QueueEvent};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Calls per group (one transaction).
const GROUP: u64 = 100;

/// A record id: random (before) or growing with the time (now).
fn id(growing: bool, n: u64, at_ms: i64) -> String {
    // SplitMix64: random enough for index placement, reproducible.
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    if growing {
        format!("{:012x}{:016x}{:04x}", at_ms, next(), next() as u16)
    } else {
        format!("{:016x}{:016x}", next(), next())
    }
}

/// The records of calls `from..from + GROUP`, one every 0.5 ms.
fn group(growing: bool, from: u64) -> Vec<Record> {
    let mut out = Vec::with_capacity(6 * GROUP as usize);
    for n in from..from + GROUP {
        let at_ms = 1_780_000_000_000 + (n / 2) as i64;
        let id = id(growing, n, at_ms);
        let agent = format!("{}", 1001 + n % 800);
        out.push(Record::CallStarted {
            id: id.clone(),
            at_ms,
            caller: format!("+39347{:07}", n % 10_000_000),
            did: "800123456".into(),
        });
        for (event, agent) in [
            (QueueEvent::Enter, None),
            (QueueEvent::Offer, Some(agent.clone())),
            (QueueEvent::Connect, Some(agent.clone())),
        ] {
            out.push(Record::Queue {
                call: id.clone(),
                at_ms,
                queue: "info".into(),
                event,
                agent,
                position: Some(1),
                wait_ms: Some(0),
            });
        }
        out.push(Record::Complete {
            call: id.clone(),
            at_ms: at_ms + 100,
            queue: "info".into(),
            agent: agent.clone(),
            talk_ms: 100,
        });
        out.push(Record::CallEnded {
            id,
            at_ms: at_ms + 100,
            outcome: CallOutcome::CallerHangup,
            queue: Some("info".into()),
            agent: Some(agent),
            wait_ms: Some(0),
            talk_ms: Some(100),
            variables: None,
        });
    }
    out
}

struct Filled {
    store: Store,
    path: std::path::PathBuf,
    next: u64,
}

impl Drop for Filled {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
        }
    }
}

/// A store file holding `calls` calls' records with ids of that kind.
fn filled(growing: bool, calls: u64) -> Filled {
    let path = std::env::temp_dir().join(format!(
        "centralino-bench-records-{}-{}.db",
        if growing { "growing" } else { "random" },
        std::process::id()
    ));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    let mut store = Store::open(&path).expect("store");
    let mut next = 0;
    while next < calls {
        let g = group(growing, next);
        store
            .atomically(|s| s.write_records(&g))
            .expect("records written");
        next += GROUP;
    }
    Filled { store, path, next }
}

fn bench(c: &mut Criterion) {
    let calls = std::env::var("STORE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut g = c.benchmark_group("store_records");
    g.sample_size(20).measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(GROUP));
    for growing in [false, true] {
        let name = if growing { "growing_ids" } else { "random_ids" };
        let mut f = filled(growing, calls);
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let rec = group(growing, f.next);
                    f.next += GROUP;
                    rec
                },
                |rec| {
                    f.store
                        .atomically(|s| s.write_records(&rec))
                        .expect("records written");
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
