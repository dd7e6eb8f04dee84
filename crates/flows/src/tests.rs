//! Flows compiled from TOML and walked in virtual time.

// Tests may read the clock and files: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use centralino_routing::Catalog;

use crate::calendar::days_from_civil;
use crate::def::{Context, RawFlow, compile};
use crate::run::{Action, Facts, Run};

const TREE: &str = r#"
name = "vaccini"
start = "orari"

[nodes.orari]
type = "condition"
calendar = { days = ["lun", "mar", "mer", "gio", "ven"], hours = ["08:00-18:00"], holidays = ["12-25"] }
then = "benvenuto"
else = "chiuso"

[nodes.benvenuto]
type = "play"
prompts = ["benvenuto"]
next = "menu"

[nodes.menu]
type = "menu"
prompts = ["menu-principale"]
options = { "1" = "prenota", "2" = "info", "3" = "nascita" }
timeout_seconds = 5
retries = 2
invalid_prompts = ["scelta-non-valida"]
on_fail = "coda-info"

[nodes.prenota]
type = "set"
requirements = "vaccini >= 5"
priority = 2
variables = { motivo = "prenotazione" }
next = "coda-vaccini"

[nodes.info]
type = "set"
language = "it"
next = "coda-info"

[nodes.nascita]
type = "collect"
prompts = ["data-di-nascita"]
variable = "nascita"
min_digits = 8
max_digits = 8
validate = "date"
retries = 1
invalid_prompts = ["data-non-valida"]
next = "fragile"
on_fail = "coda-info"

[nodes.fragile]
type = "set"
fragile = true
next = "coda-vaccini"

[nodes.coda-vaccini]
type = "enqueue"
queue = "vaccini"

[nodes.coda-info]
type = "enqueue"
queue = "info"

[nodes.chiuso]
type = "hangup"
prompts = ["chiuso"]
"#;

fn ctx_catalog() -> Catalog {
    let mut c = Catalog::default();
    c.skill("vaccini").unwrap();
    c.language("it").unwrap();
    c
}

fn compiled(text: &str) -> Result<crate::Flow, Vec<(String, String)>> {
    let raw: RawFlow = toml::from_str(text).expect("toml");
    let cat = ctx_catalog();
    let queues = vec!["vaccini".to_owned(), "info".to_owned()];
    compile(
        "flows[0]",
        &raw,
        &Context {
            catalog: &cat,
            queues: &queues,
        },
    )
}

struct World {
    unix: i64,
}

impl Facts for World {
    fn unix_now(&self) -> i64 {
        self.unix
    }
    fn duration(&self, prompts: &[String]) -> Duration {
        Duration::from_secs(prompts.len() as u64 * 2)
    }
    fn staffed(&self, _: &str) -> u32 {
        3
    }
    fn expected_wait(&self, _: &str) -> Option<Duration> {
        Some(Duration::from_secs(90))
    }
    fn waiting(&self, _: &str) -> u32 {
        7
    }
}

/// Monday 30 November 2026, 10:00 in Rome.
fn open_hours() -> World {
    World {
        unix: days_from_civil(2026, 11, 30) * 86_400 + 9 * 3600,
    }
}

fn play(names: &[&str]) -> Action {
    Action::Play(names.iter().map(|s| (*s).to_owned()).collect())
}

/// Drives the run to its next action batch, firing timers on the way.
fn advance(run: &mut Run, now: &mut Instant, d: Duration, w: &World) -> Vec<Action> {
    let end = *now + d;
    let mut out = Vec::new();
    while let Some(t) = run.poll_timeout() {
        if t > end {
            break;
        }
        *now = t;
        out.extend(run.handle_timeout(t, w));
    }
    *now = end;
    out
}

#[test]
fn a_caller_walks_the_tree_into_the_right_queue() {
    let flow = Arc::new(compiled(TREE).unwrap());
    let w = open_hours();
    let mut now = Instant::now();
    let (mut run, out) = Run::start(flow.clone(), now, &w);
    assert_eq!(out, [play(&["benvenuto"])], "open: welcome");
    // Keys during the welcome are ignored.
    assert!(run.handle_digit(now, '1', &w).is_empty());
    let out = advance(&mut run, &mut now, Duration::from_secs(2), &w);
    assert_eq!(out, [play(&["menu-principale"])]);
    // Barge-in: a key while the menu plays counts.
    let out = run.handle_digit(now, '1', &w);
    assert_eq!(
        out,
        [Action::Enqueue {
            queue: "vaccini".into(),
            requirements: vec!["vaccini >= 5".into()],
            priority: 2,
            fragile: false,
        }]
    );
    assert!(run.done());
    assert_eq!(run.variables, [("motivo".into(), "prenotazione".into())]);

    // Option 2 adds the language requirement.
    let (mut run, _) = Run::start(flow, now, &w);
    advance(&mut run, &mut now, Duration::from_secs(2), &w);
    let out = run.handle_digit(now, '2', &w);
    assert_eq!(
        out,
        [Action::Enqueue {
            queue: "info".into(),
            requirements: vec!["lang == \"it\"".into()],
            priority: 0,
            fragile: false,
        }]
    );
}

#[test]
fn wrong_keys_and_silence_use_the_retries_then_the_fallback() {
    let flow = Arc::new(compiled(TREE).unwrap());
    let w = open_hours();
    let mut now = Instant::now();
    let (mut run, _) = Run::start(flow, now, &w);
    advance(&mut run, &mut now, Duration::from_secs(4), &w);
    // Wrong key: the invalid-input prompt, then the menu again.
    assert_eq!(
        run.handle_digit(now, '9', &w),
        [play(&["scelta-non-valida"])]
    );
    let out = advance(&mut run, &mut now, Duration::from_secs(2), &w);
    assert_eq!(out, [play(&["menu-principale"])]);
    // Silence: the menu once more (second retry), then the fallback queue.
    let out = advance(&mut run, &mut now, Duration::from_secs(7), &w);
    assert_eq!(out, [play(&["menu-principale"])]);
    let out = advance(&mut run, &mut now, Duration::from_secs(7), &w);
    assert!(
        matches!(&out[..], [Action::Enqueue { queue, .. }] if queue == "info"),
        "{out:?}"
    );
}

#[test]
fn collected_dates_are_validated() {
    let flow = Arc::new(compiled(TREE).unwrap());
    let w = open_hours();
    let mut now = Instant::now();
    let (mut run, _) = Run::start(flow.clone(), now, &w);
    advance(&mut run, &mut now, Duration::from_secs(2), &w);
    assert_eq!(run.handle_digit(now, '3', &w), [play(&["data-di-nascita"])]);
    // 31 February: not a date.
    let mut out = Vec::new();
    for d in "31021950".chars() {
        out = run.handle_digit(now, d, &w);
    }
    assert_eq!(out, [play(&["data-non-valida"])]);
    advance(&mut run, &mut now, Duration::from_secs(4), &w);
    for d in "2802195".chars() {
        assert!(run.handle_digit(now, d, &w).is_empty());
    }
    let out = run.handle_digit(now, '0', &w);
    assert_eq!(
        out,
        [Action::Enqueue {
            queue: "vaccini".into(),
            requirements: vec![],
            priority: 0,
            fragile: true,
        }]
    );
    assert_eq!(run.variables, [("nascita".into(), "28021950".into())]);

    // Too few digits then a pause: invalid; again: retries run out.
    let (mut run, _) = Run::start(flow, now, &w);
    advance(&mut run, &mut now, Duration::from_secs(2), &w);
    run.handle_digit(now, '3', &w);
    advance(&mut run, &mut now, Duration::from_secs(2), &w);
    run.handle_digit(now, '1', &w);
    let out = advance(&mut run, &mut now, Duration::from_secs(6), &w);
    assert_eq!(
        out,
        [play(&["data-di-nascita"])],
        "silence replays the prompt"
    );
    let out = advance(&mut run, &mut now, Duration::from_secs(10), &w);
    assert!(
        matches!(&out[..], [Action::Enqueue { queue, .. }] if queue == "info"),
        "{out:?}"
    );
}

#[test]
fn outside_opening_hours_the_caller_hears_closed_and_the_call_ends() {
    let flow = Arc::new(compiled(TREE).unwrap());
    // Saturday, then Christmas Day (a Friday), then 18:00 on a Monday.
    for (y, m, d, h) in [(2026, 12, 5, 10), (2026, 12, 25, 10), (2026, 11, 30, 17)] {
        let w = World {
            unix: days_from_civil(y, m, d) * 86_400 + h * 3600,
        };
        let mut now = Instant::now();
        let (mut run, out) = Run::start(flow.clone(), now, &w);
        assert_eq!(out, [play(&["chiuso"])], "{y}-{m}-{d} {h}:00 UTC");
        let out = advance(&mut run, &mut now, Duration::from_secs(2), &w);
        assert_eq!(out, [Action::Hangup]);
        assert!(run.done());
    }
}

#[test]
fn live_queue_facts_and_variables_branch() {
    let text = r#"
name = "f"
start = "staffed"
[nodes.staffed]
type = "condition"
queue = "info"
staffed_at_least = 3
then = "wait"
else = "bye"
[nodes.wait]
type = "condition"
queue = "info"
wait_at_most_seconds = 60
then = "q"
else = "crowd"
[nodes.crowd]
type = "condition"
queue = "info"
waiting_at_most = 7
then = "var"
else = "bye"
[nodes.var]
type = "set"
variables = { x = "1" }
next = "check"
[nodes.check]
type = "condition"
variable = "x"
equals = "1"
then = "q"
else = "bye"
[nodes.q]
type = "enqueue"
queue = "info"
[nodes.bye]
type = "hangup"
"#;
    let flow = Arc::new(compiled(text).unwrap());
    // 3 staffed (≥ 3), wait 90 s (> 60), 7 waiting (≤ 7), x == 1: queued.
    let (_, out) = Run::start(flow, Instant::now(), &open_hours());
    assert!(
        matches!(&out[..], [Action::Enqueue { queue, .. }] if queue == "info"),
        "{out:?}"
    );
}

#[test]
fn every_error_class_is_reported_with_its_key_path() {
    let bad = r#"
name = "f"
start = "nowhere"
[nodes.a]
type = "menu"
options = { "1" = "b", "x" = "a", "2" = "ghost" }
on_fail = "a"
timeout_seconds = 0
[nodes.b]
type = "play"
prompts = ["../etc/passwd"]
next = "c"
[nodes.c]
type = "enqueue"
queue = "nessuna"
requirements = "vacini > 2"
[nodes.d]
type = "collect"
variable = "v"
min_digits = 5
max_digits = 2
terminator = "5"
validate = "iban"
next = "c"
on_fail = "c"
[nodes.e]
type = "condition"
then = "c"
else = "c"
[nodes.f]
type = "teleport"
[nodes.g]
type = "set"
language = "klingon"
priority = 120
next = "c"
"#;
    let problems = compiled(bad).unwrap_err();
    let text: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
    for want in [
        "flows[0].start: unknown node \"nowhere\"",
        "flows[0].nodes.a.options.\"x\": a key is one of",
        "flows[0].nodes.a.options.\"2\": unknown node \"ghost\"",
        "flows[0].nodes.a.timeout_seconds",
        "flows[0].nodes.b.prompts[0]: not a prompt name",
        "flows[0].nodes.c.queue: unknown queue \"nessuna\"",
        "flows[0].nodes.c.requirements",
        "flows[0].nodes.d.max_digits",
        "flows[0].nodes.d.terminator",
        "flows[0].nodes.d.validate: unknown check \"iban\"",
        "flows[0].nodes.e: a condition tests exactly one of",
        "flows[0].nodes.f.type: unknown node type \"teleport\"",
        "flows[0].nodes.g.language: no operator speaks \"klingon\"",
        "flows[0].nodes.g.priority",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want} missing from {text:#?}"
        );
    }

    // Graph errors: unreachable nodes, a loop without input, no way out.
    let graph = r#"
name = "g"
start = "a"
[nodes.a]
type = "play"
prompts = ["x"]
next = "b"
[nodes.b]
type = "condition"
variable = "v"
equals = "1"
then = "a"
else = "m"
[nodes.m]
type = "menu"
options = { "1" = "m" }
on_fail = "m"
[nodes.lost]
type = "hangup"
"#;
    let problems = compiled(graph).unwrap_err();
    let text: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
    for want in [
        "flows[0].nodes.lost: unreachable from start",
        "flows[0].nodes.a: loop that waits for no key: a -> b -> a",
        "flows[0].nodes.m: no way out",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want} missing from {text:#?}"
        );
    }
}

#[test]
fn a_callback_offer_stores_on_the_key_and_falls_back_otherwise() {
    let text = r#"
name = "notte"
start = "offerta"
[nodes.offerta]
type = "callback"
prompts = ["premi-1"]
queue = "info"
confirm_prompts = ["ti-richiameremo"]
on_fail = "ciao"
[nodes.ciao]
type = "hangup"
prompts = ["arrivederci"]
"#;
    let flow = Arc::new(compiled(text).unwrap());
    let w = open_hours();
    let mut now = Instant::now();
    let (mut run, out) = Run::start(flow.clone(), now, &w);
    assert_eq!(out, [play(&["premi-1"])]);
    // The key: store it, nothing else until the store answers.
    let out = run.handle_digit(now, '1', &w);
    assert_eq!(
        out,
        [Action::Callback {
            queue: "info".into()
        }]
    );
    assert_eq!(run.poll_timeout(), None);
    let out = run.callback_result(now, true, &w);
    assert_eq!(out, [play(&["ti-richiameremo"])]);
    let out = advance(&mut run, &mut now, Duration::from_secs(2), &w);
    assert_eq!(out, [Action::Hangup]);
    // A store failure, another key, silence: the fallback.
    let (mut run, _) = Run::start(flow.clone(), now, &w);
    run.handle_digit(now, '1', &w);
    assert_eq!(
        run.callback_result(now, false, &w),
        [play(&["arrivederci"])]
    );
    let (mut run, _) = Run::start(flow.clone(), now, &w);
    assert_eq!(run.handle_digit(now, '7', &w), [play(&["arrivederci"])]);
    let (mut run, _) = Run::start(flow, now, &w);
    let out = advance(&mut run, &mut now, Duration::from_secs(8), &w);
    assert_eq!(out, [play(&["arrivederci"])]);
}
