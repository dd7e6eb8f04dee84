//! Flow definitions as written in the configuration, and their compilation
//! into a checked graph: every problem is reported with its key path
//! (unknown targets, unreachable nodes, loops that wait for no input,
//! nodes with no way out, bad values).

use std::collections::BTreeMap;
use std::time::Duration;

use centralino_routing::{Catalog, Requirement};
use serde::Deserialize;

use crate::calendar::{Calendar, Holiday, parse_day, parse_hours};

/// Most nodes in one flow.
pub const MAX_NODES: usize = 256;
/// Most prompts a node plays.
pub const MAX_PROMPTS: usize = 32;

/// One flow as written (`[[flows]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    /// Name (DIDs refer to it).
    pub name: String,
    /// The first node.
    pub start: String,
    /// Nodes by name.
    pub nodes: BTreeMap<String, RawNode>,
}

/// A node as written; `type` picks the kind.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    prompts: Vec<String>,
    next: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, String>,
    timeout_seconds: Option<u64>,
    retries: Option<u8>,
    #[serde(default)]
    invalid_prompts: Vec<String>,
    on_fail: Option<String>,
    variable: Option<String>,
    min_digits: Option<u8>,
    max_digits: Option<u8>,
    terminator: Option<String>,
    validate: Option<String>,
    // condition
    calendar: Option<RawCalendar>,
    equals: Option<String>,
    queue: Option<String>,
    staffed_at_least: Option<u32>,
    wait_at_most_seconds: Option<u64>,
    waiting_at_most: Option<u32>,
    then: Option<String>,
    #[serde(rename = "else")]
    otherwise: Option<String>,
    // set / enqueue
    #[serde(default)]
    variables: BTreeMap<String, String>,
    requirements: Option<String>,
    priority: Option<i8>,
    fragile: Option<bool>,
    language: Option<String>,
    // transfer
    number: Option<String>,
    // callback
    key: Option<String>,
    #[serde(default)]
    confirm_prompts: Vec<String>,
}

/// Opening hours as written.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCalendar {
    days: Vec<String>,
    hours: Vec<String>,
    #[serde(default)]
    holidays: Vec<String>,
}

/// How collected digits are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validate {
    /// Any digits within the length bounds.
    Digits,
    /// A real calendar date written DDMMYYYY.
    Date,
}

/// What a condition tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// Open now (Europe/Rome).
    Calendar(Calendar),
    /// A variable has this value.
    Variable(String, String),
    /// At least this many operators staffed in the queue.
    Staffed(String, u32),
    /// The queue's expected wait is at most this.
    Wait(String, Duration),
    /// At most this many calls waiting in the queue.
    Waiting(String, u32),
}

/// A compiled node; targets are indices into [`Flow::nodes`].
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// Play prompts, then go on.
    Play {
        /// Prompts.
        prompts: Vec<String>,
        /// Next node.
        next: usize,
    },
    /// Play prompts and wait for one key.
    Menu {
        /// Prompts.
        prompts: Vec<String>,
        /// Key → node.
        options: Vec<(char, usize)>,
        /// Wait after the prompts.
        timeout: Duration,
        /// Replays after a timeout or a wrong key.
        retries: u8,
        /// Played after a wrong key.
        invalid: Vec<String>,
        /// Where to go when retries run out.
        on_fail: usize,
    },
    /// Play prompts and collect digits into a variable.
    Collect {
        /// Prompts.
        prompts: Vec<String>,
        /// Variable set.
        variable: String,
        /// Fewest digits.
        min: u8,
        /// Most digits (collection ends there).
        max: u8,
        /// Ends the input early.
        terminator: Option<char>,
        /// Wait for each key.
        timeout: Duration,
        /// Check.
        validate: Validate,
        /// Attempts after the first.
        retries: u8,
        /// Played after invalid input.
        invalid: Vec<String>,
        /// On valid input.
        next: usize,
        /// When retries run out.
        on_fail: usize,
    },
    /// Branch.
    Condition {
        /// The test.
        test: Test,
        /// When true.
        then: usize,
        /// When false.
        otherwise: usize,
    },
    /// Set variables and what the call needs.
    Set {
        /// Variables.
        variables: Vec<(String, String)>,
        /// Extra requirement (already checked against the catalog).
        requirements: Option<String>,
        /// Priority.
        priority: Option<i8>,
        /// Fragile caller.
        fragile: Option<bool>,
        /// Language the operator must speak.
        language: Option<String>,
        /// Next node.
        next: usize,
    },
    /// Queue the call (the flow ends).
    Enqueue {
        /// Queue name.
        queue: String,
        /// Extra requirement.
        requirements: Option<String>,
        /// Priority.
        priority: Option<i8>,
    },
    /// Play prompts and hang up.
    Hangup {
        /// Prompts.
        prompts: Vec<String>,
    },
    /// Connect the caller to an external number through a trunk; the flow
    /// ends when it answers, goes to `on_fail` when it does not.
    Transfer {
        /// The number.
        number: String,
        /// When the far end does not answer or refuses.
        on_fail: usize,
    },
    /// Offer a callback: `key` stores it for `queue` (the caller's
    /// number), plays the confirmation and hangs up; anything else, or a
    /// store that cannot take it, goes to `on_fail`.
    Callback {
        /// The offer.
        prompts: Vec<String>,
        /// The key that accepts.
        key: char,
        /// The queue whose operators will call back.
        queue: String,
        /// Wait for the key after the offer.
        timeout: Duration,
        /// Played once stored, before hanging up.
        confirm: Vec<String>,
        /// When refused, silent, or not stored.
        on_fail: usize,
    },
}

impl Node {
    /// Whether the node waits for the caller's keys.
    fn takes_input(&self) -> bool {
        matches!(
            self,
            Self::Menu { .. } | Self::Collect { .. } | Self::Callback { .. }
        )
    }

    fn targets(&self) -> Vec<usize> {
        match self {
            Self::Play { next, .. } | Self::Set { next, .. } => vec![*next],
            Self::Menu {
                options, on_fail, ..
            } => options.iter().map(|(_, t)| *t).chain([*on_fail]).collect(),
            Self::Collect { next, on_fail, .. } => vec![*next, *on_fail],
            Self::Condition {
                then, otherwise, ..
            } => vec![*then, *otherwise],
            Self::Callback { on_fail, .. } | Self::Transfer { on_fail, .. } => vec![*on_fail],
            Self::Enqueue { .. } | Self::Hangup { .. } => Vec::new(),
        }
    }

    /// The prompts the node plays (for the missing-prompt check).
    pub fn prompts(&self) -> impl Iterator<Item = &String> {
        let (a, b): (&[String], &[String]) = match self {
            Self::Play { prompts, .. } | Self::Hangup { prompts } => (prompts, &[]),
            Self::Callback {
                prompts, confirm, ..
            } => (prompts, confirm),
            Self::Menu {
                prompts, invalid, ..
            }
            | Self::Collect {
                prompts, invalid, ..
            } => (prompts, invalid),
            _ => (&[], &[]),
        };
        a.iter().chain(b)
    }
}

/// A checked flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    /// Name.
    pub name: String,
    /// Node names, by index (for logs and errors).
    pub names: Vec<String>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// First node.
    pub start: usize,
}

/// What compilation checks names against.
pub struct Context<'a> {
    /// Skills, languages, sites, tenants, queues.
    pub catalog: &'a Catalog,
    /// Queue names.
    pub queues: &'a [String],
}

/// A problem and where it is.
pub type Problem = (String, String);

/// Compiles `raw`; `path` is its key path (`flows[0]`).
pub fn compile(path: &str, raw: &RawFlow, ctx: &Context<'_>) -> Result<Flow, Vec<Problem>> {
    let mut p: Vec<Problem> = Vec::new();
    let names: Vec<String> = raw.nodes.keys().cloned().collect();
    let index = |n: &str| names.iter().position(|k| k == n);
    if raw.nodes.len() > MAX_NODES {
        p.push((
            format!("{path}.nodes"),
            format!("at most {MAX_NODES} nodes"),
        ));
    }
    let start = index(&raw.start).unwrap_or_else(|| {
        p.push((
            format!("{path}.start"),
            format!("unknown node {:?}", raw.start),
        ));
        0
    });
    let mut nodes = Vec::with_capacity(raw.nodes.len());
    for (name, n) in &raw.nodes {
        let np = format!("{path}.nodes.{name}");
        nodes.push(compile_node(&np, n, &index, ctx, &mut p));
    }
    if raw.nodes.is_empty() {
        p.push((format!("{path}.nodes"), "no nodes".into()));
    }
    if !p.is_empty() {
        return Err(p);
    }
    let flow = Flow {
        name: raw.name.clone(),
        names,
        nodes,
        start,
    };
    check_graph(path, &flow, &mut p);
    if p.is_empty() { Ok(flow) } else { Err(p) }
}

fn compile_node(
    np: &str,
    n: &RawNode,
    index: &dyn Fn(&str) -> Option<usize>,
    ctx: &Context<'_>,
    p: &mut Vec<Problem>,
) -> Node {
    let next = |p: &mut Vec<Problem>, key: &str, v: &Option<String>| match v {
        None => {
            p.push((format!("{np}.{key}"), "missing".into()));
            0
        }
        Some(t) => index(t).unwrap_or_else(|| {
            p.push((format!("{np}.{key}"), format!("unknown node {t:?}")));
            0
        }),
    };
    if n.prompts.len() > MAX_PROMPTS || n.invalid_prompts.len() > MAX_PROMPTS {
        p.push((
            format!("{np}.prompts"),
            format!("at most {MAX_PROMPTS} prompts"),
        ));
    }
    for (i, pr) in n.prompts.iter().chain(&n.invalid_prompts).enumerate() {
        if !prompt_name_ok(pr) {
            p.push((
                format!("{np}.prompts[{i}]"),
                format!("not a prompt name: {pr:?} (letters, digits, - _ . /, relative)"),
            ));
        }
    }
    let timeout = |p: &mut Vec<Problem>, default: u64| {
        let t = n.timeout_seconds.unwrap_or(default);
        if !(1..=120).contains(&t) {
            p.push((format!("{np}.timeout_seconds"), "must be in 1..=120".into()));
        }
        Duration::from_secs(t)
    };
    let retries = |p: &mut Vec<Problem>| {
        let r = n.retries.unwrap_or(2);
        if r > 9 {
            p.push((format!("{np}.retries"), "must be in 0..=9".into()));
        }
        r
    };
    let requirement = |p: &mut Vec<Problem>, r: &Option<String>| -> Option<String> {
        let r = r.as_ref()?;
        if let Err(e) = Requirement::parse(r, ctx.catalog) {
            p.push((format!("{np}.requirements"), e.to_string()));
        }
        Some(r.clone())
    };
    let known_queue = |p: &mut Vec<Problem>, q: &Option<String>| -> String {
        match q {
            Some(q) if !q.is_empty() && ctx.queues.contains(q) => q.clone(),
            Some(q) => {
                p.push((format!("{np}.queue"), format!("unknown queue {q:?}")));
                q.clone()
            }
            None => {
                p.push((format!("{np}.queue"), "missing".into()));
                String::new()
            }
        }
    };
    match n.kind.as_str() {
        "play" => Node::Play {
            prompts: n.prompts.clone(),
            next: next(p, "next", &n.next),
        },
        "menu" => {
            let mut options = Vec::new();
            for (k, t) in &n.options {
                let mut chars = k.chars();
                match (chars.next(), chars.next()) {
                    (Some(c @ ('0'..='9' | '*' | '#')), None) => {
                        options.push((c, next(p, &format!("options.\"{k}\""), &Some(t.clone()))));
                    }
                    _ => p.push((
                        format!("{np}.options.\"{k}\""),
                        "a key is one of 0-9, *, #".into(),
                    )),
                }
            }
            if options.is_empty() {
                p.push((
                    format!("{np}.options"),
                    "a menu needs at least one option".into(),
                ));
            }
            Node::Menu {
                prompts: n.prompts.clone(),
                options,
                timeout: timeout(p, 5),
                retries: retries(p),
                invalid: n.invalid_prompts.clone(),
                on_fail: next(p, "on_fail", &n.on_fail),
            }
        }
        "collect" => {
            let (min, max) = (n.min_digits.unwrap_or(1), n.max_digits.unwrap_or(16));
            if min == 0 || max < min || max > 32 {
                p.push((
                    format!("{np}.max_digits"),
                    "need 1 <= min_digits <= max_digits <= 32".into(),
                ));
            }
            let terminator = match n.terminator.as_deref() {
                None => None,
                Some("#") => Some('#'),
                Some("*") => Some('*'),
                Some(_) => {
                    p.push((format!("{np}.terminator"), "\"#\" or \"*\"".into()));
                    None
                }
            };
            let validate = match n.validate.as_deref() {
                None | Some("digits") => Validate::Digits,
                Some("date") => Validate::Date,
                Some(v) => {
                    p.push((
                        format!("{np}.validate"),
                        format!("unknown check {v:?} (digits, date)"),
                    ));
                    Validate::Digits
                }
            };
            let variable = n.variable.clone().unwrap_or_else(|| {
                p.push((format!("{np}.variable"), "missing".into()));
                String::new()
            });
            Node::Collect {
                prompts: n.prompts.clone(),
                variable,
                min,
                max,
                terminator,
                timeout: timeout(p, 5),
                validate,
                retries: retries(p),
                invalid: n.invalid_prompts.clone(),
                next: next(p, "next", &n.next),
                on_fail: next(p, "on_fail", &n.on_fail),
            }
        }
        "condition" => {
            let mut tests = Vec::new();
            if let Some(c) = &n.calendar {
                tests.push(Test::Calendar(calendar(np, c, p)));
            }
            if let (Some(v), Some(e)) = (&n.variable, &n.equals) {
                tests.push(Test::Variable(v.clone(), e.clone()));
            }
            if let Some(s) = n.staffed_at_least {
                tests.push(Test::Staffed(known_queue(p, &n.queue), s));
            }
            if let Some(w) = n.wait_at_most_seconds {
                tests.push(Test::Wait(known_queue(p, &n.queue), Duration::from_secs(w)));
            }
            if let Some(w) = n.waiting_at_most {
                tests.push(Test::Waiting(known_queue(p, &n.queue), w));
            }
            if tests.len() != 1 {
                p.push((
                    np.to_owned(),
                    "a condition tests exactly one of: calendar, variable + equals, staffed_at_least, wait_at_most_seconds, waiting_at_most (with queue)".into(),
                ));
            }
            Node::Condition {
                test: tests.pop().unwrap_or(Test::Waiting(String::new(), 0)),
                then: next(p, "then", &n.then),
                otherwise: next(p, "else", &n.otherwise),
            }
        }
        "set" => {
            if let Some(pr) = n.priority
                && !(-100..=100).contains(&pr)
            {
                p.push((format!("{np}.priority"), "must be in -100..=100".into()));
            }
            if let Some(l) = &n.language
                && ctx.catalog.language_id(l).is_none()
            {
                p.push((
                    format!("{np}.language"),
                    format!("no operator speaks {l:?}"),
                ));
            }
            Node::Set {
                variables: n.variables.clone().into_iter().collect(),
                requirements: requirement(p, &n.requirements),
                priority: n.priority,
                fragile: n.fragile,
                language: n.language.clone(),
                next: next(p, "next", &n.next),
            }
        }
        "enqueue" => Node::Enqueue {
            queue: known_queue(p, &n.queue),
            requirements: requirement(p, &n.requirements),
            priority: n.priority,
        },
        "hangup" => Node::Hangup {
            prompts: n.prompts.clone(),
        },
        "transfer" => {
            let number = n.number.clone().unwrap_or_default();
            let digits = number.strip_prefix('+').unwrap_or(&number);
            if !(3..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                p.push((
                    format!("{np}.number"),
                    "an optional + and 3 to 15 digits".into(),
                ));
            }
            Node::Transfer {
                number,
                on_fail: next(p, "on_fail", &n.on_fail),
            }
        }
        "callback" => {
            let key = match n.key.as_deref().unwrap_or("1") {
                k if k.len() == 1 && matches!(k.as_bytes()[0], b'0'..=b'9' | b'*' | b'#') => {
                    char::from(k.as_bytes()[0])
                }
                _ => {
                    p.push((format!("{np}.key"), "one of 0-9, *, #".into()));
                    '1'
                }
            };
            for (i, pr) in n.confirm_prompts.iter().enumerate() {
                if pr.is_empty() || pr.starts_with('/') || pr.contains("..") {
                    p.push((
                        format!("{np}.confirm_prompts[{i}]"),
                        "not a prompt name".into(),
                    ));
                }
            }
            Node::Callback {
                prompts: n.prompts.clone(),
                key,
                queue: known_queue(p, &n.queue),
                timeout: timeout(p, 5),
                confirm: n.confirm_prompts.clone(),
                on_fail: next(p, "on_fail", &n.on_fail),
            }
        }
        other => {
            p.push((
                format!("{np}.type"),
                format!(
                    "unknown node type {other:?} (play, menu, collect, condition, set, enqueue, hangup, callback, transfer)"
                ),
            ));
            Node::Hangup {
                prompts: Vec::new(),
            }
        }
    }
}

/// Checks a calendar as written (`np` is its key path's prefix).
pub fn calendar(np: &str, c: &RawCalendar, p: &mut Vec<Problem>) -> Calendar {
    let mut cal = Calendar::default();
    for (i, d) in c.days.iter().enumerate() {
        match parse_day(d) {
            Some(k) => cal.days |= 1 << k,
            None => p.push((
                format!("{np}.calendar.days[{i}]"),
                format!("not a weekday: {d:?}"),
            )),
        }
    }
    for (i, h) in c.hours.iter().enumerate() {
        match parse_hours(h) {
            Some(r) => cal.hours.push(r),
            None => p.push((
                format!("{np}.calendar.hours[{i}]"),
                format!("not HH:MM-HH:MM: {h:?}"),
            )),
        }
    }
    for (i, h) in c.holidays.iter().enumerate() {
        match Holiday::parse(h) {
            Some(x) => cal.holidays.push(x),
            None => p.push((
                format!("{np}.calendar.holidays[{i}]"),
                format!("not MM-DD or YYYY-MM-DD: {h:?}"),
            )),
        }
    }
    cal
}

/// Reachability, loops without input, and a way out from every node.
fn check_graph(path: &str, flow: &Flow, p: &mut Vec<Problem>) {
    let n = flow.nodes.len();
    let mut reached = vec![false; n];
    let mut stack = vec![flow.start];
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut reached[i], true) {
            stack.extend(flow.nodes[i].targets());
        }
    }
    for (i, r) in reached.iter().enumerate() {
        if !r {
            p.push((
                format!("{path}.nodes.{}", flow.names[i]),
                "unreachable from start".into(),
            ));
        }
    }
    // A cycle through nodes that never wait for a key would spin forever.
    let mut state = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    fn visit(
        i: usize,
        flow: &Flow,
        state: &mut [u8],
        trail: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        if flow.nodes[i].takes_input() {
            return None;
        }
        match state[i] {
            1 => {
                let from = trail.iter().position(|&t| t == i).unwrap_or(0);
                let mut cycle = trail[from..].to_vec();
                cycle.push(i);
                return Some(cycle);
            }
            2 => return None,
            _ => {}
        }
        state[i] = 1;
        trail.push(i);
        for t in flow.nodes[i].targets() {
            if let Some(c) = visit(t, flow, state, trail) {
                return Some(c);
            }
        }
        trail.pop();
        state[i] = 2;
        None
    }
    for i in 0..n {
        if state[i] == 0
            && let Some(cycle) = visit(i, flow, &mut state, &mut Vec::new())
        {
            let names: Vec<&str> = cycle.iter().map(|&c| flow.names[c].as_str()).collect();
            p.push((
                format!("{path}.nodes.{}", flow.names[cycle[0]]),
                format!("loop that waits for no key: {}", names.join(" -> ")),
            ));
            break;
        }
    }
    // Every node must be able to reach an end (enqueue or hang up).
    let mut exits: Vec<bool> = flow
        .nodes
        .iter()
        .map(|x| {
            matches!(
                x,
                Node::Enqueue { .. }
                    | Node::Hangup { .. }
                    | Node::Callback { .. }
                    | Node::Transfer { .. }
            )
        })
        .collect();
    loop {
        let mut changed = false;
        for i in 0..n {
            if !exits[i] && flow.nodes[i].targets().iter().any(|&t| exits[t]) {
                exits[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for i in 0..n {
        if reached[i] && !exits[i] {
            p.push((
                format!("{path}.nodes.{}", flow.names[i]),
                "no way out: no enqueue or hangup can be reached from here".into(),
            ));
        }
    }
}

/// A prompt name is a relative path under the prompt directories: letters,
/// digits, `-`, `_`, `.`, `/`, no empty or `..` component (it cannot leave
/// them).
pub fn prompt_name_ok(pr: &str) -> bool {
    !(pr.is_empty()
        || pr.len() > 128
        || pr.starts_with('/')
        || pr.split('/').any(|c| c == ".." || c.is_empty())
        || !pr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_/.".contains(&b)))
}
