// Tests may read the clock: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use centralino_flows::calendar::{Calendar, Holiday, days_from_civil};
use proptest::prelude::*;

use crate::pacer::{Pacer, PacerConfig, Snapshot};
use crate::sim::{SimConfig, simulate};
use crate::{Mode, Next, Outcome, RetryPolicy, Window};

/// Monday to Friday 08:00–18:00, Christmas closed: the fragile citizens'
/// line of the mission.
fn weekdays() -> Window {
    Window(Some(Calendar {
        days: 0b001_1111,
        hours: vec![(8 * 60, 18 * 60)],
        holidays: vec![Holiday::Yearly(12, 25)],
    }))
}

/// Unix time of a Rome local time in winter (UTC+1).
fn rome_winter(y: i64, m: u32, d: u32, h: i64, min: i64) -> i64 {
    days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 - 3600
}

#[test]
fn the_window_opens_to_the_second() {
    let w = weekdays();
    // Friday 4 December 2026, 17:59:59 Rome: open; 18:00:00: closed.
    let friday = rome_winter(2026, 12, 4, 17, 59) + 59;
    assert!(w.open(friday));
    assert!(!w.open(friday + 1));
    assert_eq!(w.next_open(friday), Some(friday));
    // Closed at 18:00 Friday: next is Monday 7 December 08:00:00.
    let monday = rome_winter(2026, 12, 7, 8, 0);
    assert_eq!(w.next_open(friday + 1), Some(monday));
    assert!(!w.open(monday - 1));
    assert!(w.open(monday));
    // Thursday 24 December at 20:00: Christmas is closed, so Saturday and
    // Sunday too: Monday 28th at 08:00.
    let eve = rome_winter(2026, 12, 24, 20, 0);
    assert_eq!(w.next_open(eve), Some(rome_winter(2026, 12, 28, 8, 0)));
    // Summer time: 08:00 Rome is 06:00 UTC on Monday 6 July 2026.
    let july = days_from_civil(2026, 7, 6) * 86_400;
    assert_eq!(w.next_open(july), Some(july + 6 * 3600));
    // No calendar: any time; a calendar of no days: never.
    assert_eq!(Window::default().next_open(friday + 1), Some(friday + 1));
    let never = Window(Some(Calendar {
        days: 0,
        hours: vec![(0, 1440)],
        holidays: Vec::new(),
    }));
    assert_eq!(never.next_open(friday), None);
}

#[test]
fn retries_follow_the_outcome_inside_the_window() {
    let p = RetryPolicy::default();
    let w = weekdays();
    let monday_nine = rome_winter(2026, 12, 7, 9, 0);
    assert_eq!(
        p.next(Outcome::Answered, 1, monday_nine, None, &w),
        Next::Done
    );
    // Busy: half an hour later, up to three attempts.
    assert_eq!(
        p.next(Outcome::Busy, 1, monday_nine, None, &w),
        Next::Retry {
            at: monday_nine + 1800
        }
    );
    assert_eq!(
        p.next(Outcome::Busy, 3, monday_nine, None, &w),
        Next::Exhausted
    );
    // No answer at 17:00: two hours later is closed, so the next morning.
    let five = rome_winter(2026, 12, 7, 17, 0);
    assert_eq!(
        p.next(Outcome::NoAnswer, 1, five, None, &w),
        Next::Retry {
            at: rome_winter(2026, 12, 8, 8, 0)
        }
    );
    // An abandoned citizen is retried like one who did not answer.
    assert_eq!(
        p.next(Outcome::Abandoned, 1, five, None, &w),
        p.next(Outcome::NoAnswer, 1, five, None, &w)
    );
    // Call later at a time the operator named, moved into the window.
    let asked = rome_winter(2026, 12, 8, 7, 30);
    assert_eq!(
        p.next(Outcome::CallLater, 1, monday_nine, Some(asked), &w),
        Next::Retry {
            at: rome_winter(2026, 12, 8, 8, 0)
        }
    );
    // Interrupted by a stop: again as soon as the window allows.
    assert_eq!(
        p.next(Outcome::Interrupted, 7, monday_nine, None, &w),
        Next::Retry { at: monday_nine }
    );
}

#[test]
fn outcomes_and_modes_round_trip_and_fragile_campaigns_never_predict() {
    for o in Outcome::ALL {
        assert_eq!(Outcome::parse(o.as_str()), Some(o));
    }
    for m in [Mode::Preview, Mode::Progressive, Mode::Predictive] {
        assert_eq!(Mode::parse(m.as_str()), Some(m));
    }
    assert!(!Mode::Predictive.allowed_for_fragile());
    assert!(Mode::Progressive.allowed_for_fragile());
    assert!(Mode::Preview.allowed_for_fragile());
}

#[test]
fn predictive_starts_progressive_and_dials_ahead_only_within_its_budget() {
    let t0 = Instant::now();
    let mut p = Pacer::new(PacerConfig::new(Mode::Predictive));
    let s = Snapshot {
        free: 10,
        soon_free: 0,
        lines: 0,
    };
    // Nothing answered yet: no budget, one line per free operator.
    let d = p.decide(t0, s);
    assert_eq!((d.dial, d.ahead), (10, false));
    // 100 answered, none abandoned: 3 abandons allowed, so at most 3
    // lines beyond the 10 free operators, whatever the answer rate says.
    for _ in 0..100 {
        p.resolved(t0, Outcome::Answered);
    }
    for _ in 0..200 {
        p.resolved(t0, Outcome::NoAnswer);
    }
    assert_eq!(p.budget(t0), 3);
    let d = p.decide(t0, s);
    assert_eq!((d.dial, d.ahead), (13, true));
    // Lines already out count.
    let d = p.decide(t0, Snapshot { lines: 12, ..s });
    assert_eq!(d.dial, 1);
    // At the cap: back to one per operator.
    for _ in 0..3 {
        p.resolved(t0, Outcome::Abandoned);
    }
    assert_eq!(p.budget(t0), 0);
    assert_eq!(p.decide(t0, s).dial, 10);
    // The window moves on: the abandons age out with the answers.
    let later = t0 + Duration::from_secs(24 * 3600);
    assert_eq!(p.abandon_rate(later), 0.0);
    // Progressive and preview never dial ahead.
    let mut prog = Pacer::new(PacerConfig::new(Mode::Progressive));
    assert_eq!(prog.decide(t0, Snapshot { lines: 4, ..s }).dial, 6);
    // Preview: one contact per free operator (each reads it on the desk
    // before anything is dialled), never ahead.
    let mut preview = Pacer::new(PacerConfig::new(Mode::Preview));
    let d = preview.decide(t0, Snapshot { lines: 4, ..s });
    assert_eq!((d.dial, d.ahead), (6, false));
}

fn sim(mode: Mode, answer: f64, operators: u32, seed: u64) -> SimConfig {
    SimConfig {
        pacer: PacerConfig::new(mode),
        operators,
        answer,
        busy: (1.0 - answer) / 3.0,
        handle_seconds: 180,
        ring_seconds: 15,
        no_answer_seconds: 25,
        seconds: 4 * 3600,
        seed,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Over answer rates from 10 to 90 %, predictive never goes above the
    /// cap, at any moment of the window; progressive never abandons.
    #[test]
    fn predictive_stays_under_the_cap_and_progressive_never_abandons(
        answer in 0.10f64..0.90,
        operators in 2u32..40,
        seed in any::<u64>(),
    ) {
        let r = simulate(&sim(Mode::Predictive, answer, operators, seed));
        prop_assert!(r.worst_rate <= 0.03 + 1e-9, "{r:?}");
        prop_assert!(r.abandon_rate <= 0.03 + 1e-9, "{r:?}");
        let r = simulate(&sim(Mode::Progressive, answer, operators, seed));
        prop_assert_eq!(r.abandoned, 0, "{:?}", r);
    }
}

#[test]
fn predictive_dials_more_than_progressive_at_a_low_answer_rate() {
    let prog = simulate(&sim(Mode::Progressive, 0.3, 20, 7));
    let pred = simulate(&sim(Mode::Predictive, 0.3, 20, 7));
    assert!(pred.attempts > prog.attempts, "{prog:?} {pred:?}");
    assert!(pred.occupancy > prog.occupancy, "{prog:?} {pred:?}");
    assert!(pred.abandon_rate <= 0.03, "{pred:?}");
}

struct Node;

impl crate::spec::Known for Node {
    fn queue_tenant(&self, name: &str) -> Option<String> {
        match name {
            "fragili" | "prenotazioni" => Some("asl".into()),
            "altro" => Some("ditta".into()),
            _ => None,
        }
    }

    fn outbound_trunk_tenant(&self, name: &str) -> Option<String> {
        match name {
            "primario" => Some("asl".into()),
            "ditta" => Some("ditta".into()),
            _ => None,
        }
    }

    /// `triage` is national, `consenso-asl` the asl firm's own.
    fn script(&self, tenant: &str, name: &str) -> bool {
        name == "triage" || (name == "consenso-asl" && tenant == "asl")
    }

    fn presentable(&self, tenant: &str, number: &str) -> bool {
        tenant == "asl" && number == "+39800111222"
    }
}

fn spec(json: &str) -> Result<crate::spec::Spec, Vec<(String, String)>> {
    let raw: crate::spec::RawSpec = serde_json::from_str(json).unwrap();
    crate::spec::validate("", &raw, &Node)
}

#[test]
fn a_campaign_is_checked_key_by_key() {
    let s = spec(
        r#"{"name": "richiami-fragili", "queue": "fragili", "mode": "progressive", "fragile": true,
            "windows": {"days": ["lun", "mar", "mer", "gio", "ven"], "hours": ["08:00-18:00"]},
            "trunk": "primario", "caller_id": "+39800111222",
            "retries": {"busy": {"attempts": 5, "delay_seconds": 600}},
            "script": "triage", "dispositions": ["richiamare_medico"]}"#,
    )
    .unwrap();
    assert_eq!(s.tenant, "asl");
    assert_eq!(s.retries.busy.attempts, 5);
    assert_eq!(s.retries.no_answer, RetryPolicy::default().no_answer);
    assert!(s.takes_code("booked") && s.takes_code("richiamare_medico"));
    assert!(!s.takes_code("altro"));
    assert!(s.window.0.is_some());
    // A fragile campaign in predictive mode, an unknown queue, another
    // tenant's trunk, a bad window, a cap above the law: each named.
    let e = spec(
        r#"{"name": "x y", "queue": "nessuna", "mode": "predictive", "fragile": true,
            "windows": {"days": ["funday"], "hours": ["08:00-18:00"]},
            "trunk": "ditta", "abandon_cap": 0.05, "caller_id": "abc",
            "retries": {"busy": {"attempts": 0, "delay_seconds": 5}}, "script": "nope",
            "dispositions": ["booked"]}"#,
    )
    .unwrap_err();
    let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "name",
        "queue",
        "mode",
        "windows.days[0]",
        "caller_id",
        "retries.busy.attempts",
        "retries.busy.delay_seconds",
        "abandon_cap",
        "dispositions[0]",
    ] {
        assert!(keys.contains(&k), "{k} missing from {e:?}");
    }
    // A script is checked for the queue's firm: with no queue, only the
    // queue is named; with one, an unknown script is.
    assert!(!keys.contains(&"script"), "{e:?}");
    let e = spec(r#"{"name": "a", "queue": "fragili", "mode": "preview", "script": "nope"}"#)
        .unwrap_err();
    assert_eq!(e[0].0, "script", "{e:?}");
    let e = spec(r#"{"name": "a", "queue": "fragili", "mode": "progressive", "fragile": true}"#)
        .unwrap_err();
    assert_eq!(
        e[0].0, "windows",
        "a fragile campaign never calls at any hour: {e:?}"
    );
    let e = spec(r#"{"name": "a", "queue": "fragili", "mode": "progressive", "trunk": "ditta"}"#)
        .unwrap_err();
    assert!(e[0].1.contains("tenant"), "{e:?}");
    // Another tenant's number is not presented.
    let e = spec(
        r#"{"name": "a", "queue": "altro", "mode": "progressive", "caller_id": "+39800111222"}"#,
    )
    .unwrap_err();
    assert_eq!(e[0].0, "caller_id", "{e:?}");
    // A firm's own script is its campaigns' alone.
    spec(r#"{"name": "a", "queue": "fragili", "mode": "preview", "script": "consenso-asl"}"#)
        .unwrap();
    let e = spec(r#"{"name": "a", "queue": "altro", "mode": "preview", "script": "consenso-asl"}"#)
        .unwrap_err();
    assert_eq!(e[0].0, "script", "{e:?}");
}
