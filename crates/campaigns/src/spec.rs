//! A campaign as configured (`[[campaigns]]`) or created through the API
//! (`POST /api/v1/campaigns`): one schema, one validation, the same
//! messages with the key that is wrong.

use std::time::Duration;

use centralino_flows::def::{RawCalendar, calendar};
use serde::{Deserialize, Serialize};

use crate::{Mode, Retry, RetryPolicy, Window};

/// Most disposition codes a campaign adds to the five built in.
pub const MAX_EXTRA_CODES: usize = 20;

/// How long a preview campaign's operator has for a contact, by default.
pub const DEFAULT_PREVIEW_SECONDS: u64 = 120;

/// The dispositions every campaign knows.
pub const BUILTIN_CODES: [&str; 5] = [
    "booked",
    "refused",
    "wrong_number",
    "call_later",
    "no_contact",
];

/// A campaign as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    name: String,
    queue: String,
    mode: String,
    #[serde(default)]
    fragile: bool,
    windows: Option<RawCalendar>,
    trunk: Option<String>,
    caller_id: Option<String>,
    #[serde(default)]
    retries: RawRetries,
    abandon_cap: Option<f64>,
    #[serde(default)]
    priority: i32,
    script: Option<String>,
    #[serde(default)]
    dispositions: Vec<String>,
    preview_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRetries {
    busy: Option<RawRetry>,
    no_answer: Option<RawRetry>,
    failed: Option<RawRetry>,
    call_later: Option<RawRetry>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: u32,
    delay_seconds: u64,
}

/// What a campaign's names must resolve against: the node's queues,
/// outbound trunks and scripts.
pub trait Known {
    /// The tenant of queue `name`, if it exists.
    fn queue_tenant(&self, name: &str) -> Option<String>;
    /// The tenant of outbound trunk `name`, if it exists and can dial.
    fn outbound_trunk_tenant(&self, name: &str) -> Option<String>;
    /// Whether `tenant`'s campaigns may use script `name`: it exists and
    /// is national or that tenant's (another firm's script would reach
    /// this firm's desks).
    fn script(&self, tenant: &str, name: &str) -> bool;
    /// Whether `tenant` may present `number`: one of its trunks' caller
    /// IDs or DIDs, which an admin configured (never another tenant's).
    fn presentable(&self, tenant: &str, number: &str) -> bool;
}

/// A valid campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// Its name (unique on the node; a metric label, so bounded).
    pub name: String,
    /// The tenant whose queue works it.
    pub tenant: String,
    /// The queue whose operators and skills work it.
    pub queue: String,
    /// How it dials.
    pub mode: Mode,
    /// Fragile citizens: never predictive.
    pub fragile: bool,
    /// When it may call.
    pub window: Window,
    /// The outbound trunk first tried (`None`: the tenant's first).
    pub trunk: Option<String>,
    /// The number presented (`None`: the trunk's).
    pub caller_id: Option<String>,
    /// Retries by outcome.
    pub retries: RetryPolicy,
    /// Most abandoned per answered call (predictive).
    pub abandon_cap: f64,
    /// Priority of its calls in the queue (-100..=100).
    pub priority: i32,
    /// The operators' script.
    pub script: Option<String>,
    /// Disposition codes beyond the five built in.
    pub extra_codes: Vec<String>,
    /// Preview: how long an operator has to accept or skip a contact
    /// before it goes to another (and the miss counts as a no answer).
    pub preview: Duration,
}

impl RawSpec {
    /// The name as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operator script as written, if any.
    pub fn script(&self) -> Option<&str> {
        self.script.as_deref()
    }
}

impl Spec {
    /// Whether `code` is a disposition this campaign takes.
    pub fn takes_code(&self, code: &str) -> bool {
        BUILTIN_CODES.contains(&code) || self.extra_codes.iter().any(|c| c == code)
    }
}

/// A name a metric label and a log may carry: 1 to 64 letters, digits,
/// `-`, `_`, `.`.
fn label_safe(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks `raw`; problems come as (key under `path`, message).
pub fn validate(
    path: &str,
    raw: &RawSpec,
    known: &dyn Known,
) -> Result<Spec, Vec<(String, String)>> {
    let mut p: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, m: String| p.push((format!("{path}{k}"), m));
    if !label_safe(&raw.name) {
        add(
            "name",
            "1 to 64 letters, digits, '-', '_' or '.' (it names the campaign in metrics)".into(),
        );
    }
    let tenant = known.queue_tenant(&raw.queue).unwrap_or_else(|| {
        add("queue", format!("no queue named {:?}", raw.queue));
        String::new()
    });
    let mode = Mode::parse(&raw.mode).unwrap_or_else(|| {
        add(
            "mode",
            format!(
                "unknown mode {:?} (preview, progressive, predictive)",
                raw.mode
            ),
        );
        Mode::Progressive
    });
    if raw.fragile && !mode.allowed_for_fragile() {
        add(
            "mode",
            format!(
                "a fragile campaign is preview or progressive, never {} (no citizen may answer to silence)",
                mode.as_str()
            ),
        );
    }
    if raw.fragile && raw.windows.is_none() {
        add(
            "windows",
            "a fragile campaign needs calling windows (e.g. days lun-ven, hours 08:00-18:00)"
                .into(),
        );
    }
    let window = Window(raw.windows.as_ref().map(|c| {
        let mut problems = Vec::new();
        let cal = calendar(&format!("{path}windows"), c, &mut problems);
        for (k, m) in problems {
            p.push((k.replace(".calendar.", "."), m));
        }
        cal
    }));
    let mut add = |k: &str, m: String| p.push((format!("{path}{k}"), m));
    if let Some(t) = &raw.trunk {
        match known.outbound_trunk_tenant(t) {
            None => add("trunk", format!("no outbound trunk named {t:?}")),
            Some(owner) if !tenant.is_empty() && owner != tenant => add(
                "trunk",
                format!("trunk {t:?} belongs to tenant {owner:?}, the queue to {tenant:?}"),
            ),
            Some(_) => {}
        }
    }
    if let Some(c) = &raw.caller_id {
        let digits = c.strip_prefix('+').unwrap_or(c);
        if !(4..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            add("caller_id", "4 to 15 digits, optionally after '+'".into());
        } else if !tenant.is_empty() && !known.presentable(&tenant, c) {
            // Carriers trust what we assert: a tenant presents only the
            // numbers configured on its own trunks.
            add(
                "caller_id",
                "not a caller ID or DID of the tenant's trunks (an admin configures those)".into(),
            );
        }
    }
    let mut retries = RetryPolicy::default();
    for (key, raw_retry, slot) in [
        ("busy", raw.retries.busy, &mut retries.busy),
        ("no_answer", raw.retries.no_answer, &mut retries.no_answer),
        ("failed", raw.retries.failed, &mut retries.failed),
        (
            "call_later",
            raw.retries.call_later,
            &mut retries.call_later,
        ),
    ] {
        let Some(r) = raw_retry else { continue };
        if !(1..=20).contains(&r.attempts) {
            add(
                &format!("retries.{key}.attempts"),
                "must be in 1..=20".into(),
            );
        }
        if !(60..=7 * 86_400).contains(&r.delay_seconds) {
            add(
                &format!("retries.{key}.delay_seconds"),
                "must be in 60..=604800 (a minute to a week)".into(),
            );
        }
        *slot = Retry {
            attempts: r.attempts,
            delay: Duration::from_secs(r.delay_seconds),
        };
    }
    let abandon_cap = raw.abandon_cap.unwrap_or(0.03);
    if !(0.0..=0.03).contains(&abandon_cap) {
        add(
            "abandon_cap",
            "must be in 0..=0.03 (3 % of answered calls is the legal limit)".into(),
        );
    }
    if !(-100..=100).contains(&raw.priority) {
        add("priority", "must be in -100..=100".into());
    }
    // Without a known queue there is no tenant to check it for (the
    // queue's own problem is reported).
    if let Some(s) = &raw.script
        && !tenant.is_empty()
        && !known.script(&tenant, s)
    {
        add("script", format!("no script named {s:?}"));
    }
    if raw.dispositions.len() > MAX_EXTRA_CODES {
        add(
            "dispositions",
            format!("at most {MAX_EXTRA_CODES} codes beyond the five built in"),
        );
    }
    for (i, c) in raw.dispositions.iter().enumerate() {
        if !label_safe(c) || BUILTIN_CODES.contains(&c.as_str()) {
            add(
                &format!("dispositions[{i}]"),
                format!("{c:?}: 1 to 64 letters, digits, '-', '_', '.', not a built-in code"),
            );
        }
    }
    let preview = raw.preview_seconds.unwrap_or(DEFAULT_PREVIEW_SECONDS);
    if !(10..=900).contains(&preview) {
        add(
            "preview_seconds",
            "must be in 10..=900 (how long an operator reads a contact)".into(),
        );
    } else if raw.preview_seconds.is_some() && mode != Mode::Preview {
        add("preview_seconds", "only a preview campaign has one".into());
    }
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Spec {
        name: raw.name.clone(),
        tenant,
        queue: raw.queue.clone(),
        mode,
        fragile: raw.fragile,
        window,
        trunk: raw.trunk.clone(),
        caller_id: raw.caller_id.clone(),
        retries,
        abandon_cap,
        priority: raw.priority,
        script: raw.script.clone(),
        extra_codes: raw.dispositions.clone(),
        preview: Duration::from_secs(preview),
    })
}
