//! How many citizens to dial now.
//!
//! Progressive dials one citizen per free operator, never more. Predictive
//! dials ahead of free operators from the measured answer rate, but only
//! as far as the campaign's abandon budget allows: every line beyond the
//! free operators could, in the worst case, be answered with nobody to
//! take it, so the lines in excess of the free operators never outnumber
//! the abandons the cap still allows over the window
//! (`floor(cap × answered) − abandoned`). Abandons therefore stay within
//! the cap by construction, not by correction; with no budget left (at
//! the start, or at the cap) predictive dials exactly like progressive.
//!
//! The caveat is the sliding window itself: as answered calls age out of
//! it, abandons made earlier weigh more; the pacer then has no budget and
//! adds none.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Mode, Outcome};

/// A pacer's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PacerConfig {
    /// The campaign's mode.
    pub mode: Mode,
    /// Most abandoned calls per answered call over `window` (0.03: the UK
    /// Ofcom and US TSR limit).
    pub abandon_cap: f64,
    /// The window the cap is measured over.
    pub window: Duration,
    /// Most lines per free (or soon free) operator, whatever the answer
    /// rate says.
    pub max_ratio: f64,
    /// The answer rate assumed until `min_samples` dials are resolved.
    pub prior_answer_rate: f64,
    /// Resolved dials the answer rate is measured over (the latest ones).
    pub samples: usize,
    /// Resolved dials before the measured rate replaces the prior.
    pub min_samples: usize,
}

impl PacerConfig {
    /// The defaults for `mode`: a 3 % cap over 24 hours, at most 3 lines
    /// per operator, a 30 % answer rate assumed over the first 20 dials,
    /// measured over the last 200.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            abandon_cap: 0.03,
            window: Duration::from_secs(24 * 3600),
            max_ratio: 3.0,
            prior_answer_rate: 0.3,
            samples: 200,
            min_samples: 20,
        }
    }
}

/// What the pacer is told of the campaign's queue at a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Operators of the campaign's queue free now.
    pub free: u32,
    /// Operators expected to be free within a ring time (talking for
    /// about the measured handle time already): predictive counts on them
    /// for its target, never for its safety.
    pub soon_free: u32,
    /// The campaign's calls in progress that no operator has yet: dialled
    /// and ringing, answered and waiting, or (progressive) queued for an
    /// operator before dialling.
    pub lines: u32,
}

/// A decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Citizens to dial now.
    pub dial: u32,
    /// Dialled ahead of the free operators (predictive with budget left);
    /// `false`: one per free operator.
    pub ahead: bool,
}

/// The pacer of one campaign. Feed it every resolved dial
/// ([`Pacer::resolved`]), ask it at each turn ([`Pacer::decide`]).
#[derive(Debug)]
pub struct Pacer {
    config: PacerConfig,
    /// Answered calls in the window: when, and whether abandoned.
    answered: VecDeque<(Instant, bool)>,
    abandoned: usize,
    /// The latest resolved dials: answered (or abandoned) or not.
    recent: VecDeque<bool>,
    recent_answered: usize,
}

impl Pacer {
    /// A pacer with nothing measured yet.
    pub fn new(config: PacerConfig) -> Self {
        Self {
            config,
            answered: VecDeque::new(),
            abandoned: 0,
            recent: VecDeque::with_capacity(config.samples),
            recent_answered: 0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &PacerConfig {
        &self.config
    }

    /// A dial resolved at `now` with `outcome`. Outcomes that say nothing
    /// of the network's answer rate (an interrupted attempt, the
    /// operator's call-later) are ignored.
    pub fn resolved(&mut self, now: Instant, outcome: Outcome) {
        let answered = match outcome {
            Outcome::Answered | Outcome::Abandoned => true,
            Outcome::Busy | Outcome::NoAnswer | Outcome::Failed => false,
            Outcome::CallLater | Outcome::Interrupted => return,
        };
        if answered {
            let abandoned = outcome == Outcome::Abandoned;
            self.answered.push_back((now, abandoned));
            self.abandoned += usize::from(abandoned);
        }
        if self.recent.len() == self.config.samples.max(1)
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_answered -= usize::from(old);
        }
        self.recent.push_back(answered);
        self.recent_answered += usize::from(answered);
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, abandoned)) = self.answered.front() {
            if now.saturating_duration_since(at) < self.config.window {
                break;
            }
            self.answered.pop_front();
            self.abandoned -= usize::from(abandoned);
        }
    }

    /// Abandoned per answered call over the window (0 with none answered).
    pub fn abandon_rate(&mut self, now: Instant) -> f64 {
        self.expire(now);
        if self.answered.is_empty() {
            0.0
        } else {
            self.abandoned as f64 / self.answered.len() as f64
        }
    }

    /// Answered and abandoned calls in the window.
    pub fn window_counts(&mut self, now: Instant) -> (usize, usize) {
        self.expire(now);
        (self.answered.len(), self.abandoned)
    }

    /// The answer rate the pacer counts on: measured over the latest dials
    /// once there are enough, the prior before; never below 5 %.
    pub fn answer_rate(&self) -> f64 {
        let rate = if self.recent.len() < self.config.min_samples {
            self.config.prior_answer_rate
        } else {
            self.recent_answered as f64 / self.recent.len() as f64
        };
        rate.clamp(0.05, 1.0)
    }

    /// Abandons the cap still allows over the window: how many lines may
    /// exceed the free operators.
    pub fn budget(&mut self, now: Instant) -> u32 {
        self.expire(now);
        let allowed = (self.config.abandon_cap * self.answered.len() as f64 + 1e-9).floor();
        let allowed = if allowed.is_finite() {
            allowed as usize
        } else {
            0
        };
        u32::try_from(allowed.saturating_sub(self.abandoned)).unwrap_or(u32::MAX)
    }

    /// The mode it paces for.
    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// How many citizens to dial now.
    pub fn decide(&mut self, now: Instant, s: Snapshot) -> Decision {
        let one_each = Decision {
            dial: s.free.saturating_sub(s.lines),
            ahead: false,
        };
        match self.config.mode {
            // Preview claims like progressive: one contact per free
            // operator, shown on their desk before anyone is dialled.
            Mode::Preview | Mode::Progressive => one_each,
            Mode::Predictive => {
                let budget = self.budget(now);
                if budget == 0 {
                    return one_each;
                }
                let staff = f64::from(s.free.saturating_add(s.soon_free));
                let target = (staff / self.answer_rate())
                    .min(staff * self.config.max_ratio)
                    .ceil();
                let target = if target.is_finite() && target > 0.0 {
                    target.min(f64::from(u32::MAX)) as u32
                } else {
                    0
                };
                // Safety first: lines beyond the free operators within
                // the budget, whatever the target says.
                let safe = s.free.saturating_add(budget);
                let lines = target.min(safe).max(s.free);
                let dial = lines.saturating_sub(s.lines);
                Decision {
                    dial,
                    ahead: s.lines + dial > s.free,
                }
            }
        }
    }
}
