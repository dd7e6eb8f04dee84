//! Outbound campaigns at 100,000 contacts: contacts imported per second
//! into a real SQLite file (one transaction, WAL, `synchronous = FULL`),
//! contacts claimed for dialling, and pacer decisions per second with a
//! full window of outcomes.
//!
//! `cargo bench --bench campaigns`

use std::hint::black_box;
use std::time::{Duration, Instant};

use centralino_campaigns::pacer::{Pacer, PacerConfig, Snapshot};
use centralino_campaigns::{Mode, Outcome};
use centralino_store::{Campaign, CampaignStatus, Claim, NewContact, Store};
use criterion::{BatchSize, Criterion, Throughput, criterion_group};

const CONTACTS: u64 = 100_000;

fn contacts(n: u64) -> Vec<NewContact> {
    (0..n)
        .map(|i| NewContact {
            number: format!("+39347{i:07}"),
            name: Some(format!("Cittadino {i}")),
            priority: (i % 7) as i32,
            language: Some("it".into()),
            not_before: None,
            data: Some(format!("{{\"asl\": \"Roma {}\"}}", i % 6)),
        })
        .collect()
}

fn store(tag: &str) -> (Store, std::path::PathBuf) {
    let path =
        std::env::temp_dir().join(format!("centralino-bench-{tag}-{}.db", std::process::id()));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    let mut s = Store::open(&path).expect("store");
    s.create_campaign(&Campaign {
        id: "c".into(),
        name: "bench".into(),
        tenant: "asl".into(),
        spec: "{}".into(),
        source: "api".into(),
        status: CampaignStatus::Running,
        created_at: 0,
        updated_at: 0,
    })
    .expect("campaign");
    (s, path)
}

fn benches(c: &mut Criterion) {
    let list = contacts(CONTACTS);
    let mut g = c.benchmark_group("campaigns");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(CONTACTS));
    g.bench_function("import_100k_contacts", |b| {
        b.iter_batched(
            || store("import"),
            |(mut s, _)| s.import_contacts("c", black_box(&list), 0).expect("import"),
            BatchSize::PerIteration,
        );
    });
    // A predictive pacer with 100,000 outcomes in its window.
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::new(Mode::Predictive));
    for i in 0..CONTACTS {
        let o = match i % 10 {
            0..=2 => Outcome::Answered,
            3 => Outcome::Busy,
            _ => Outcome::NoAnswer,
        };
        p.resolved(t0, o);
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("pacer_decision", |b| {
        let mut free = 0u32;
        b.iter(|| {
            free = (free + 1) % 64;
            p.decide(
                t0,
                black_box(Snapshot {
                    free,
                    soon_free: 3,
                    lines: 10,
                }),
            )
        });
    });
    g.finish();
}

/// Claims of 10 (a pacer's ask for ten free operators) until a campaign of
/// 100,000 contacts is exhausted: each claim a transaction on disk. Not a
/// criterion loop: claims consume the contacts, so the count is bounded.
fn claims() {
    let (mut s, _path) = store("claim");
    s.import_contacts("c", &contacts(CONTACTS), 0)
        .expect("import");
    let mut times = Vec::with_capacity((CONTACTS / 10) as usize);
    loop {
        let t = Instant::now();
        let got = s
            .claim_contacts(Claim {
                campaign: "c",
                tenant: "asl",
                limit: 10,
                now: 1,
                day: 1,
                max_per_day: 3,
                tomorrow: 86_400,
            })
            .expect("claim");
        times.push(t.elapsed());
        if got.contacts.is_empty() {
            break;
        }
    }
    times.pop();
    times.sort_unstable();
    let total: Duration = times.iter().sum();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "claim 10 of 100,000: {} claims, {:.0} contacts/s, p50 {:?}, p99 {:?}",
        times.len(),
        (times.len() * 10) as f64 / total.as_secs_f64(),
        pct(50),
        pct(99)
    );
}

criterion_group!(campaigns, benches);

fn main() {
    campaigns();
    Criterion::default().configure_from_args().final_summary();
    claims();
}
