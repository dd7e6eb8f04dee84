//! `[[queues]]`: one queue's settings, its routing and its callback
//! policy, validated against the names every section shares.

use super::*;

/// One `[[queues]]` entry (the `i`th), every problem added to `p`.
pub(crate) fn queue(
    names: &Names<'_>,
    scripts: &[Script],
    p: &mut Problems,
    (i, at): (usize, usize),
    q: &RawQueue,
) -> Queue {
    // `i`: its place among the queues (a reload keeps the running order);
    // `at`: its place in the file, for the problems' paths.
    let path = format!("queues[{at}]");
    if !valid_name(&q.name) {
        p.add(format!("{path}.name"), "must be 1-64 of [A-Za-z0-9_-]");
    }
    if names.queue_names[..i].contains(&q.name) {
        p.add(
            format!("{path}.name"),
            format!("duplicate queue {:?}", q.name),
        );
    }
    let tenant = names.tenant_of(p, format!("{path}.tenant"), &q.tenant);
    if q.strategy == "ring_all" && !(1..=16).contains(&q.ring_all_width) {
        p.add(format!("{path}.ring_all_width"), "must be in 1..=16");
    }
    let strategy = Strategy::from_name(&q.strategy, q.ring_all_width).unwrap_or_else(|| {
        p.add(
            format!("{path}.strategy"),
            format!("unknown strategy {:?} ({})", q.strategy, Strategy::NAMES),
        );
        Strategy::LongestIdle
    });
    nonzero(
        p,
        &format!("{path}.ring_timeout_seconds"),
        q.ring_timeout_seconds,
    );
    nonzero(
        p,
        &format!("{path}.max_no_answer"),
        u64::from(q.max_no_answer),
    );
    nonzero(p, &format!("{path}.max_wait_seconds"), q.max_wait_seconds);
    nonzero(p, &format!("{path}.max_waiting"), q.max_waiting as u64);
    if !(400..=699).contains(&q.exit_status) {
        p.add(
            format!("{path}.exit_status"),
            "must be a final error status in 400..=699",
        );
    }
    if !(q.weight.is_finite() && (0.01..=100.0).contains(&q.weight)) {
        p.add(format!("{path}.weight"), "must be in 0.01..=100");
    }
    if !(1..=3600).contains(&q.retry_seconds) {
        p.add(format!("{path}.retry_seconds"), "must be in 1..=3600");
    }
    if q.priority_step_seconds > 86_400 {
        p.add(
            format!("{path}.priority_step_seconds"),
            "must be at most 86400",
        );
    }
    if let Some(f) = q.fragile_max_wait_seconds
        && f <= q.ring_timeout_seconds
    {
        p.add(
            format!("{path}.fragile_max_wait_seconds"),
            "must exceed ring_timeout_seconds (fragile calls escalate one ring timeout before it)",
        );
    }
    let requirement = match &q.requirements {
        Some(text) => names
            .requirement(p, format!("{path}.requirements"), text)
            .unwrap_or_else(Requirement::any),
        None => Requirement::member_of(i as u32, &q.name),
    };
    let mut rings = Vec::new();
    let mut last_after = 0;
    for (j, r) in q.overflow.iter().enumerate() {
        let rp = format!("{path}.overflow[{j}]");
        if r.after_seconds <= last_after {
            p.add(
                format!("{rp}.after_seconds"),
                "must be greater than 0 and than the previous ring's",
            );
        }
        last_after = r.after_seconds;
        let requirement = names
            .requirement(p, format!("{rp}.requirements"), &r.requirements)
            .unwrap_or_else(Requirement::any);
        let mut ring_tenants = Vec::new();
        for (k, t) in r.tenants.iter().enumerate() {
            ring_tenants.push(names.tenant_of(p, format!("{rp}.tenants[{k}]"), t).0 as u16);
        }
        rings.push(Ring {
            after: Duration::from_secs(r.after_seconds),
            requirement,
            tenants: ring_tenants,
        });
    }
    if q.overflow.len() > 8 {
        p.add(format!("{path}.overflow"), "at most 8 rings");
    }
    if q.service_level_seconds == 0
        || q.service_level2_seconds < q.service_level_seconds
        || q.service_level2_seconds > 3600
    {
        p.add(
            format!("{path}.service_level_seconds"),
            "must be at least 1, and service_level2_seconds from it to 3600",
        );
    }
    if q.short_abandon_seconds >= q.service_level_seconds {
        p.add(
            format!("{path}.short_abandon_seconds"),
            "must be below service_level_seconds",
        );
    }
    if !(q.service_level_target.is_finite() && (0.01..=1.0).contains(&q.service_level_target)) {
        p.add(
            format!("{path}.service_level_target"),
            "must be in 0.01..=1",
        );
    }
    if !(1..=7200).contains(&q.expected_handle_seconds) {
        p.add(
            format!("{path}.expected_handle_seconds"),
            "must be in 1..=7200",
        );
    }
    if !(1..=10_080).contains(&q.callback_promise_minutes) {
        p.add(
            format!("{path}.callback_promise_minutes"),
            "must be in 1..=10080 (a week)",
        );
    }
    if !(1..=20).contains(&q.callback_max_attempts) {
        p.add(format!("{path}.callback_max_attempts"), "must be in 1..=20");
    }
    if !(10..=86_400).contains(&q.callback_retry_seconds) {
        p.add(
            format!("{path}.callback_retry_seconds"),
            "must be in 10..=86400",
        );
    }
    let none = Vec::new();
    let number = q.callback_number.as_ref();
    if let Some(n) = number {
        if !(1..=60).contains(&n.timeout_seconds) {
            p.add(
                format!("{path}.callback_number.timeout_seconds"),
                "must be in 1..=60",
            );
        }
        if q.callback_key.is_none() {
            p.add(
                format!("{path}.callback_number"),
                "needs callback_key (the key that asks for a callback)",
            );
        }
    }
    for (key, list) in [
        ("callback_offer_prompts", &q.callback_offer_prompts),
        ("callback_confirm_prompts", &q.callback_confirm_prompts),
        ("whisper", &q.whisper),
        (
            "callback_whisper",
            q.callback_whisper.as_ref().unwrap_or(&none),
        ),
        (
            "callback_number.read_prompts",
            number.map_or(&none, |n| &n.read_prompts),
        ),
        (
            "callback_number.confirm_prompts",
            number.map_or(&none, |n| &n.confirm_prompts),
        ),
        (
            "callback_number.enter_prompts",
            number.map_or(&none, |n| &n.enter_prompts),
        ),
    ] {
        if list.len() > 32 {
            p.add(format!("{path}.{key}"), "at most 32 prompts");
        }
        for (i, name) in list.iter().enumerate() {
            if !centralino_flows::def::prompt_name_ok(name) {
                p.add(
                    format!("{path}.{key}[{i}]"),
                    format!("not a prompt name: {name:?} (letters, digits, - _ . /, relative)"),
                );
            }
        }
    }
    if q.announce_seconds > 0 && q.announce_seconds < 10 {
        p.add(
            format!("{path}.announce_seconds"),
            "must be 0 (off) or at least 10",
        );
    }
    Queue {
        tenant,
        retired: false,
        exit_status: q.exit_status,
        announce_every: (q.announce_seconds > 0).then(|| Duration::from_secs(q.announce_seconds)),
        music_on_hold: q.music_on_hold.as_ref().map(PathBuf::from),
        record: q.record,
        script: q.script.as_ref().and_then(|name| {
            let found = scripts.iter().position(|s| &s.name == name);
            match found.and_then(|i| scripts[i].tenant.as_ref()) {
                None if found.is_none() => {
                    p.add(format!("{path}.script"), format!("unknown script {name:?}"))
                }
                // Another firm's script would reach this firm's desks.
                Some(owner) if names.tenants.get(tenant.index()) != Some(owner) => p.add(
                    format!("{path}.script"),
                    format!("script {name:?} belongs to tenant {owner:?}"),
                ),
                _ => {}
            }
            found
        }),
        callback_key: match q.callback_key.as_deref() {
            None => None,
            Some(k) => {
                let mut c = k.chars();
                match (c.next(), c.next()) {
                    (Some(d @ ('0'..='9' | '*' | '#')), None) => Some(d),
                    _ => {
                        p.add(format!("{path}.callback_key"), "one of 0-9, *, #");
                        None
                    }
                }
            }
        },
        callback_offer_prompts: q.callback_offer_prompts.clone(),
        callback_confirm_prompts: q.callback_confirm_prompts.clone(),
        whisper: q.whisper.clone(),
        callback_whisper: q.callback_whisper.clone(),
        callback_number: q.callback_number.as_ref().map(|n| CallbackNumber {
            read_prompts: n.read_prompts.clone(),
            confirm_prompts: n.confirm_prompts.clone(),
            enter_prompts: n.enter_prompts.clone(),
            timeout: Duration::from_secs(n.timeout_seconds),
        }),
        callback_hours: q.callback_hours.as_ref().map(|c| {
            let mut problems = Vec::new();
            let cal = centralino_flows::def::calendar(&path, c, &mut problems);
            for (k, m) in problems {
                p.add(k.replace(".calendar.", ".callback_hours."), m);
            }
            cal
        }),
        callback_max_attempts: q.callback_max_attempts,
        when_unserved: match (q.when_unserved.as_deref(), &q.overflow_queue) {
            (None | Some("callback"), None) => Unserved::Callback,
            (Some("hangup"), None) => Unserved::Hangup,
            (Some("overflow"), Some(to)) => {
                if !names.queue_names.contains(to) || *to == q.name {
                    p.add(
                        format!("{path}.overflow_queue"),
                        format!("{to:?} is no other queue"),
                    );
                }
                Unserved::Overflow(to.clone())
            }
            (Some("overflow"), None) => {
                p.add(
                    format!("{path}.overflow_queue"),
                    "required with when_unserved = \"overflow\"",
                );
                Unserved::Hangup
            }
            (_, Some(_)) => {
                p.add(
                    format!("{path}.overflow_queue"),
                    "only with when_unserved = \"overflow\"",
                );
                Unserved::Hangup
            }
            (Some(other), None) => {
                p.add(
                    format!("{path}.when_unserved"),
                    format!("unknown policy {other:?} (callback, overflow, hangup)"),
                );
                Unserved::Hangup
            }
        },
        service: ServiceTargets {
            level: Duration::from_secs(q.service_level_seconds),
            level2: Duration::from_secs(q.service_level2_seconds),
            short_abandon: Duration::from_secs(q.short_abandon_seconds),
            target: q.service_level_target,
            expected_handle: Duration::from_secs(q.expected_handle_seconds),
            callback_promise: Duration::from_secs(q.callback_promise_minutes * 60),
        },
        callback_retry: Duration::from_secs(q.callback_retry_seconds),
        callback_customer_first: match q.callback_mode.as_deref() {
            None | Some("agent_first") => false,
            Some("customer_first") => true,
            Some(other) => {
                p.add(
                    format!("{path}.callback_mode"),
                    format!("unknown mode {other:?} (agent_first, customer_first)"),
                );
                false
            }
        },
        callback_retries: q
            .callback_retries
            .iter()
            .filter_map(|(outcome, r)| {
                let rp = format!("{path}.callback_retries.{outcome}");
                if !["busy", "no_answer", "failed", "no_operator"].contains(&outcome.as_str()) {
                    p.add(rp, "one of busy, no_answer, failed, no_operator");
                    return None;
                }
                if !(1..=20).contains(&r.attempts) || !(10..=86_400).contains(&r.delay_seconds) {
                    p.add(rp, "attempts in 1..=20, delay_seconds in 10..=86400");
                    return None;
                }
                Some((
                    outcome.clone(),
                    r.attempts,
                    Duration::from_secs(r.delay_seconds),
                ))
            })
            .collect(),
        routing: QueueSettings {
            name: q.name.clone(),
            tenant: tenant.0 as u16,
            strategy,
            requirement,
            rings,
            ring_timeout: Duration::from_secs(q.ring_timeout_seconds),
            max_no_answer: q.max_no_answer,
            max_wait: Duration::from_secs(q.max_wait_seconds),
            wrap_up: Duration::from_secs(q.wrap_up_seconds),
            max_waiting: q.max_waiting,
            weight: q.weight,
            priority_step: Duration::from_secs(q.priority_step_seconds),
            fragile_max_wait: q.fragile_max_wait_seconds.map(Duration::from_secs),
            retry: Duration::from_secs(q.retry_seconds),
        },
    }
}

/// An overflow goes to a queue of the same firm (another firm's operators
/// are lent only under an agreement).
pub(crate) fn check_overflows(queues: &[Queue], p: &mut Problems) {
    for (i, q) in queues.iter().enumerate().filter(|(_, q)| !q.retired) {
        if let Unserved::Overflow(to) = &q.when_unserved
            && let Some(t) = queues.iter().find(|t| t.routing.name == *to && !t.retired)
            && t.tenant != q.tenant
        {
            p.add(
                format!("queues[{i}].overflow_queue"),
                format!("{to:?} is another firm's queue"),
            );
        }
    }
}

impl Config {
    /// Queues that can end a caller's call with nobody and no offer:
    /// `when_unserved = "hangup"` sends the queue's `exit_status` and
    /// nothing else; `"callback"` without `callback_number` cannot offer
    /// one to a caller whose number is withheld or outside the dial plan,
    /// nor can `"overflow"` when the other queue is full too.
    /// `check-config` prints these as warnings (each such call is counted
    /// in `centralino_dead_ends_total`).
    pub fn dead_end_warnings(&self) -> Vec<String> {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| !q.retired)
            .filter_map(|(i, q)| match &q.when_unserved {
                Unserved::Hangup => Some(format!(
                    "queues[{i}] ({}): when_unserved = \"hangup\": a caller who waits max_wait_seconds, finds max_waiting calls or nobody logged in is ended with {} and no callback offered (a dead end)",
                    q.routing.name, q.exit_status
                )),
                Unserved::Callback if q.callback_number.is_none() => Some(format!(
                    "queues[{i}] ({}): a caller it cannot serve is called back on their caller id; one whose number is withheld or outside the dial plan is ended with {} (a dead end): set callback_number so they can key one in",
                    q.routing.name, q.exit_status
                )),
                Unserved::Overflow(to) if q.callback_number.is_none() => Some(format!(
                    "queues[{i}] ({}): a caller it cannot serve goes to {to:?}; when that queue is full too, they are called back on their caller id, and one whose number is withheld or outside the dial plan is ended with {} (a dead end): set callback_number so they can key one in",
                    q.routing.name, q.exit_status
                )),
                _ => None,
            })
            .collect()
    }
}
