//! One call walking a flow, sans-IO: keys and time come in, actions (play
//! these prompts, queue the call, hang up) go out. The flow is shared
//! (`Arc`): a call finishes on the version it started with, whatever is
//! reloaded meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::calendar::{UnixSeconds, civil_from_days, days_from_civil};
use crate::def::{Flow, Node, Test, Validate};

/// Transitions without a key press after which a run gives up (the
/// compiler refuses loops without input; this is the belt to its braces).
const MAX_STEPS: u32 = 1_000;

/// What the interpreter needs to know about the world.
pub trait Facts {
    /// Wall-clock time now.
    fn unix_now(&self) -> UnixSeconds;
    /// How long these prompts play.
    fn duration(&self, prompts: &[String]) -> Duration;
    /// Operators staffed (logged in, not paused) for the queue.
    fn staffed(&self, queue: &str) -> u32;
    /// The queue's expected wait for a new call.
    fn expected_wait(&self, queue: &str) -> Option<Duration>;
    /// Calls waiting in the queue.
    fn waiting(&self, queue: &str) -> u32;
}

/// What the call should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Play these prompts to the caller (replacing what plays).
    Play(Vec<String>),
    /// Queue the call; the flow is over.
    Enqueue {
        /// Queue name.
        queue: String,
        /// Requirements gathered on the way (`set`, `enqueue`), ANDed.
        requirements: Vec<String>,
        /// Priority.
        priority: i8,
        /// Fragile caller.
        fragile: bool,
    },
    /// Hang up; the flow is over.
    Hangup,
    /// Connect the caller to `number` through a trunk; answer with
    /// [`Run::transfer_result`] when it fails.
    Transfer {
        /// The number.
        number: String,
    },
    /// Store a callback for `queue` with the caller's number; answer with
    /// [`Run::callback_result`].
    Callback {
        /// The queue.
        queue: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Nothing pending (ended).
    Done,
    /// Prompts play until then; then `after`.
    Prompts(Instant, After),
    /// A key is awaited until then.
    Key(Instant),
    /// The callback is being stored.
    Store,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Go to the node's next.
    Next,
    /// Wait for a key.
    Listen,
    /// Replay the current node (after an invalid-input prompt).
    Replay,
    /// Hang up.
    Hangup,
}

/// A call in a flow.
#[derive(Debug)]
pub struct Run {
    flow: Arc<Flow>,
    at: usize,
    wait: Wait,
    /// Failed attempts at the current node.
    tries: u8,
    digits: String,
    /// Variables and collected answers, in order of setting.
    pub variables: Vec<(String, String)>,
    requirements: Vec<String>,
    priority: i8,
    fragile: bool,
    steps: u32,
}

impl Run {
    /// Starts `flow` at `now`; the first actions are in the result.
    pub fn start(flow: Arc<Flow>, now: Instant, facts: &dyn Facts) -> (Self, Vec<Action>) {
        let at = flow.start;
        let mut run = Self {
            flow,
            at,
            wait: Wait::Done,
            tries: 0,
            digits: String::new(),
            variables: Vec::new(),
            requirements: Vec::new(),
            priority: 0,
            fragile: false,
            steps: 0,
        };
        let mut out = Vec::new();
        run.enter(now, at, facts, &mut out);
        (run, out)
    }

    /// The flow's name.
    pub fn flow(&self) -> &str {
        &self.flow.name
    }

    /// The current node's name.
    pub fn node(&self) -> &str {
        &self.flow.names[self.at]
    }

    /// Whether the run is over (queued or hung up).
    pub fn done(&self) -> bool {
        self.wait == Wait::Done
    }

    /// The far end of a [`Action::Transfer`] did not answer: `on_fail`.
    pub fn transfer_result(&mut self, now: Instant, facts: &dyn Facts) -> Vec<Action> {
        let mut out = Vec::new();
        let flow = self.flow.clone();
        if self.wait == Wait::Store
            && let Node::Transfer { on_fail, .. } = &flow.nodes[self.at]
        {
            self.enter(now, *on_fail, facts, &mut out);
        }
        out
    }

    /// The store's answer to [`Action::Callback`]: stored (confirmation,
    /// then hang up) or not (`on_fail`).
    pub fn callback_result(
        &mut self,
        now: Instant,
        stored: bool,
        facts: &dyn Facts,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if self.wait != Wait::Store {
            return out;
        }
        let flow = self.flow.clone();
        let Node::Callback {
            confirm, on_fail, ..
        } = &flow.nodes[self.at]
        else {
            return out;
        };
        if stored {
            if confirm.is_empty() {
                self.wait = Wait::Done;
                out.push(Action::Hangup);
            } else {
                out.push(Action::Play(confirm.clone()));
                self.wait = Wait::Prompts(now + facts.duration(confirm), After::Hangup);
            }
        } else {
            self.enter(now, *on_fail, facts, &mut out);
        }
        out
    }

    /// When [`Self::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.wait {
            Wait::Done | Wait::Store => None,
            Wait::Prompts(t, _) | Wait::Key(t) => Some(t),
        }
    }

    /// Time passes.
    pub fn handle_timeout(&mut self, now: Instant, facts: &dyn Facts) -> Vec<Action> {
        let mut out = Vec::new();
        match self.wait {
            Wait::Prompts(t, after) if t <= now => match after {
                After::Next => {
                    let next = match &self.flow.nodes[self.at] {
                        Node::Play { next, .. } => *next,
                        _ => self.at,
                    };
                    self.enter(now, next, facts, &mut out);
                }
                After::Listen => self.listen(now),
                After::Replay => {
                    let at = self.at;
                    self.play_node(now, at, facts, &mut out);
                }
                After::Hangup => {
                    self.wait = Wait::Done;
                    out.push(Action::Hangup);
                }
            },
            Wait::Key(t) if t <= now => self.no_key(now, facts, &mut out),
            _ => {}
        }
        out
    }

    /// A key pressed by the caller.
    pub fn handle_digit(&mut self, now: Instant, digit: char, facts: &dyn Facts) -> Vec<Action> {
        let mut out = Vec::new();
        let listening = matches!(self.wait, Wait::Key(_) | Wait::Prompts(_, After::Listen));
        if !listening {
            // Keys during a plain prompt or an error message are ignored.
            return out;
        }
        self.steps = 0;
        let flow = self.flow.clone();
        match &flow.nodes[self.at] {
            Node::Menu { options, .. } => {
                if let Some(&(_, t)) = options.iter().find(|(k, _)| *k == digit) {
                    self.enter(now, t, facts, &mut out);
                } else {
                    self.invalid(now, facts, &mut out);
                }
            }
            Node::Callback {
                key,
                queue,
                on_fail,
                ..
            } => {
                if digit == *key {
                    // Waits for the store: nothing else happens meanwhile.
                    self.wait = Wait::Store;
                    out.push(Action::Callback {
                        queue: queue.clone(),
                    });
                } else {
                    self.enter(now, *on_fail, facts, &mut out);
                }
            }
            Node::Collect {
                variable,
                min,
                max,
                terminator,
                timeout,
                validate,
                next,
                ..
            } => {
                let end = Some(digit) == *terminator;
                if !end {
                    self.digits.push(digit);
                }
                if end || self.digits.len() >= usize::from(*max) {
                    let d = std::mem::take(&mut self.digits);
                    if d.len() >= usize::from(*min) && valid(*validate, &d) {
                        self.variables.push((variable.clone(), d));
                        self.enter(now, *next, facts, &mut out);
                    } else {
                        self.invalid(now, facts, &mut out);
                    }
                } else {
                    // Inter-digit timeout.
                    self.wait = Wait::Key(now + *timeout);
                }
            }
            _ => {}
        }
        out
    }

    fn listen(&mut self, now: Instant) {
        let timeout = match &self.flow.nodes[self.at] {
            Node::Menu { timeout, .. }
            | Node::Collect { timeout, .. }
            | Node::Callback { timeout, .. } => *timeout,
            _ => Duration::from_secs(5),
        };
        self.wait = Wait::Key(now + timeout);
    }

    /// The caller said nothing (or stopped mid-input).
    fn no_key(&mut self, now: Instant, facts: &dyn Facts, out: &mut Vec<Action>) {
        let flow = self.flow.clone();
        if let Node::Callback { on_fail, .. } = &flow.nodes[self.at] {
            // No answer to the offer.
            self.enter(now, *on_fail, facts, out);
            return;
        }
        if let Node::Collect {
            variable,
            min,
            validate,
            next,
            ..
        } = &flow.nodes[self.at]
            && !self.digits.is_empty()
        {
            // A pause after enough digits ends the input.
            let d = std::mem::take(&mut self.digits);
            if d.len() >= usize::from(*min) && valid(*validate, &d) {
                self.variables.push((variable.clone(), d));
                self.enter(now, *next, facts, out);
                return;
            }
        }
        self.invalid_or_retry(now, facts, out, false);
    }

    fn invalid(&mut self, now: Instant, facts: &dyn Facts, out: &mut Vec<Action>) {
        self.invalid_or_retry(now, facts, out, true);
    }

    fn invalid_or_retry(
        &mut self,
        now: Instant,
        facts: &dyn Facts,
        out: &mut Vec<Action>,
        wrong: bool,
    ) {
        self.digits.clear();
        let flow = self.flow.clone();
        let (retries, invalid, on_fail) = match &flow.nodes[self.at] {
            Node::Menu {
                retries,
                invalid,
                on_fail,
                ..
            }
            | Node::Collect {
                retries,
                invalid,
                on_fail,
                ..
            } => (*retries, invalid, *on_fail),
            _ => return,
        };
        self.tries += 1;
        if self.tries > retries {
            self.enter(now, on_fail, facts, out);
            return;
        }
        if wrong && !invalid.is_empty() {
            out.push(Action::Play(invalid.clone()));
            self.wait = Wait::Prompts(now + facts.duration(invalid), After::Replay);
        } else {
            let at = self.at;
            self.play_node(now, at, facts, out);
        }
    }

    /// Plays a menu's or collect's prompts, then listens.
    fn play_node(&mut self, now: Instant, at: usize, facts: &dyn Facts, out: &mut Vec<Action>) {
        let flow = self.flow.clone();
        let (Node::Menu { prompts, .. }
        | Node::Collect { prompts, .. }
        | Node::Callback { prompts, .. }) = &flow.nodes[at]
        else {
            return;
        };
        if prompts.is_empty() {
            self.listen(now);
        } else {
            out.push(Action::Play(prompts.clone()));
            self.wait = Wait::Prompts(now + facts.duration(prompts), After::Listen);
        }
    }

    /// Enters node `i`, following nodes that need no time.
    fn enter(&mut self, now: Instant, mut i: usize, facts: &dyn Facts, out: &mut Vec<Action>) {
        let flow = self.flow.clone();
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.wait = Wait::Done;
                out.push(Action::Hangup);
                return;
            }
            if i != self.at {
                self.tries = 0;
                self.digits.clear();
            }
            self.at = i;
            match &flow.nodes[i] {
                Node::Play { prompts, next } => {
                    if prompts.is_empty() {
                        i = *next;
                        continue;
                    }
                    out.push(Action::Play(prompts.clone()));
                    self.wait = Wait::Prompts(now + facts.duration(prompts), After::Next);
                    return;
                }
                Node::Menu { .. } | Node::Collect { .. } | Node::Callback { .. } => {
                    self.play_node(now, i, facts, out);
                    return;
                }
                Node::Condition {
                    test,
                    then,
                    otherwise,
                } => {
                    i = if self.test(test, facts) {
                        *then
                    } else {
                        *otherwise
                    };
                }
                Node::Set {
                    variables,
                    requirements,
                    priority,
                    fragile,
                    language,
                    next,
                } => {
                    self.variables.extend(variables.iter().cloned());
                    self.requirements.extend(requirements.iter().cloned());
                    if let Some(l) = language {
                        self.requirements.push(format!("lang == \"{l}\""));
                    }
                    if let Some(p) = priority {
                        self.priority = *p;
                    }
                    if let Some(f) = fragile {
                        self.fragile = *f;
                    }
                    i = *next;
                }
                Node::Enqueue {
                    queue,
                    requirements,
                    priority,
                } => {
                    let mut reqs = self.requirements.clone();
                    reqs.extend(requirements.iter().cloned());
                    out.push(Action::Enqueue {
                        queue: queue.clone(),
                        requirements: reqs,
                        priority: priority.unwrap_or(self.priority),
                        fragile: self.fragile,
                    });
                    self.wait = Wait::Done;
                    return;
                }
                Node::Transfer { number, .. } => {
                    // Waits for the far end; the engine reports a failure.
                    self.wait = Wait::Store;
                    out.push(Action::Transfer {
                        number: number.clone(),
                    });
                    return;
                }
                Node::Hangup { prompts } => {
                    if prompts.is_empty() {
                        self.wait = Wait::Done;
                        out.push(Action::Hangup);
                    } else {
                        out.push(Action::Play(prompts.clone()));
                        self.wait = Wait::Prompts(now + facts.duration(prompts), After::Hangup);
                    }
                    return;
                }
            }
        }
    }

    fn test(&self, test: &Test, facts: &dyn Facts) -> bool {
        match test {
            Test::Calendar(c) => c.open(facts.unix_now()),
            Test::Variable(name, value) => self
                .variables
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .is_some_and(|(_, v)| v == value),
            Test::Staffed(q, n) => facts.staffed(q) >= *n,
            Test::Wait(q, max) => facts.expected_wait(q).is_some_and(|w| w <= *max),
            Test::Waiting(q, max) => facts.waiting(q) <= *max,
        }
    }
}

/// Checks collected digits.
fn valid(v: Validate, d: &str) -> bool {
    match v {
        Validate::Digits => d.bytes().all(|b| b.is_ascii_digit()),
        Validate::Date => {
            if d.len() != 8 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            let (day, month, year): (u32, u32, i64) = (
                d[0..2].parse().unwrap_or(0),
                d[2..4].parse().unwrap_or(0),
                d[4..8].parse().unwrap_or(0),
            );
            (1900..=2100).contains(&year)
                && (1..=12).contains(&month)
                && (1..=31).contains(&day)
                && civil_from_days(days_from_civil(year, month, day)) == (year, month, day)
        }
    }
}
