//! Every fuzz target for a bounded time (CI): first with a fixed seed,
//! then with a random one, which is printed with the failing input.
//!
//! `CENTRALINO_FUZZ_SECONDS` (default 5) is each target's budget, split
//! between the two seeds; `CENTRALINO_FUZZ_SEED` replaces the random seed
//! (reproduction). A crashing input is written under the test's target
//! tmp dir and the test fails with its hex.

use std::time::Duration;

use centralino_fuzz::runner::{self, Options};

/// The fixed seed: every run explores at least this sequence.
const FIXED_SEED: u64 = 0x5EED_CE47_4A11_0000;

fn budget() -> Duration {
    let secs: f64 = std::env::var("CENTRALINO_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    std::env::var("CENTRALINO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| RandomState::new().hash_one(std::time::SystemTime::now()))
}

fn fuzz(name: &str) {
    let target = centralino_fuzz::target(name).expect("a known target");
    let half = budget() / 2;
    for seed in [FIXED_SEED, random_seed()] {
        let opts = Options {
            seed,
            time: half,
            // Debug build, two cores shared with the other tests.
            slow: Duration::from_secs(10),
            crash_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes")),
            ..Options::default()
        };
        let r = runner::fuzz(target, &opts);
        eprintln!(
            "{name}: seed {seed}: {} execs in {:.1?} ({:.0}/s), corpus {}, outcomes {}",
            r.execs,
            r.elapsed,
            r.per_second(),
            r.corpus,
            r.outcomes
        );
        assert!(r.execs > 0, "{name}: nothing ran");
        if let Some(c) = r.crashes.first() {
            panic!(
                "{name}: {:?} at execution {} with seed {seed} (CENTRALINO_FUZZ_SEED={seed}, or `fuzz {name} --seed {seed} --runs {}`)\n{}\n{}\n{}\nwritten to {:?}",
                c.kind,
                c.run,
                c.run,
                c.message,
                c.backtrace,
                runner::show(&c.input),
                c.path
            );
        }
    }
}

#[test]
fn sip() {
    fuzz("sip");
}

#[test]
fn sip_stream() {
    fuzz("sip_stream");
}

#[test]
fn sip_auth() {
    fuzz("sip_auth");
}

#[test]
fn sip_uri() {
    fuzz("sip_uri");
}

#[test]
fn sdp() {
    fuzz("sdp");
}

#[test]
fn rtp() {
    fuzz("rtp");
}

#[test]
fn dtmf() {
    fuzz("dtmf");
}

#[test]
fn wav() {
    fuzz("wav");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn flows() {
    fuzz("flows");
}

#[test]
fn requirement() {
    fuzz("requirement");
}

#[test]
fn api() {
    fuzz("api");
}

/// Every target has a test above, and seeds that run clean.
#[test]
fn every_target_is_tested_and_its_seeds_pass() {
    let here = include_str!("fuzz.rs");
    for t in centralino_fuzz::TARGETS {
        assert!(
            here.contains(&format!("fuzz(\"{}\")", t.name)),
            "{}: no test",
            t.name
        );
        let seeds = runner::seeds(t);
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        for s in &seeds {
            if let Err(p) = runner::execute(t, s) {
                panic!(
                    "{}: a seed panics: {}\n{}",
                    t.name,
                    p.message,
                    runner::show(s)
                );
            }
        }
    }
}

#[test]
fn hex_round_trips() {
    let v: Vec<u8> = (0..=255).collect();
    assert_eq!(runner::unhex(&runner::hex(&v)), Some(v));
}
