//! Outbound campaigns, sans-IO: what a campaign is (its mode, calling
//! windows and retry policy), what an attempt's outcome makes of a contact,
//! and the [`pacer::Pacer`] that decides how many citizens to dial now.
//!
//! Owns: the rules. Never does: I/O, storage or a clock; the wall clock
//! comes in as Unix seconds, the pacer's time as `Instant`s the caller
//! passes (virtual time in tests).
#![warn(missing_docs)]

pub mod pacer;
pub mod sim;
pub mod spec;
mod window;

use std::time::Duration;

pub use window::Window;

/// Seconds since the Unix epoch (UTC).
pub type UnixSeconds = i64;

/// How a campaign reaches citizens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The operator sees the contact first and accepts (or skips) it
    /// before anyone is dialled.
    Preview,
    /// An operator is reserved first, then exactly one citizen is dialled
    /// for them: nobody can answer to silence.
    Progressive,
    /// Dials ahead of free operators from the measured answer rate, within
    /// an abandon cap.
    Predictive,
}

impl Mode {
    /// Parses the configuration and API spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "preview" => Some(Self::Preview),
            "progressive" => Some(Self::Progressive),
            "predictive" => Some(Self::Predictive),
            _ => None,
        }
    }

    /// The configuration and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preview => "preview",
            Self::Progressive => "progressive",
            Self::Predictive => "predictive",
        }
    }

    /// Whether a campaign for fragile citizens may use it: never one that
    /// can let a citizen answer to silence.
    pub fn allowed_for_fragile(self) -> bool {
        matches!(self, Self::Preview | Self::Progressive)
    }
}

/// How one attempt to reach a contact ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The citizen answered and talked to an operator.
    Answered,
    /// Busy (486, 600).
    Busy,
    /// Rang out, or no answer in time (408, 480, our ring timeout).
    NoAnswer,
    /// The network refused the call (other 4xx–6xx, no trunk left).
    Failed,
    /// The citizen answered and no operator was free within the limit:
    /// they heard the recorded message (predictive only).
    Abandoned,
    /// The operator's disposition asks for another call at a time.
    CallLater,
    /// The node stopped during the attempt (found at the next start).
    Interrupted,
}

impl Outcome {
    /// Every outcome, for metric labels.
    pub const ALL: [Self; 7] = [
        Self::Answered,
        Self::Busy,
        Self::NoAnswer,
        Self::Failed,
        Self::Abandoned,
        Self::CallLater,
        Self::Interrupted,
    ];

    /// The name in records, the API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
            Self::CallLater => "call_later",
            Self::Interrupted => "interrupted",
        }
    }

    /// Parses [`Outcome::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Retries after one kind of outcome: up to `attempts` attempts in all,
/// `delay` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Most attempts a contact gets when its last one ended this way.
    pub attempts: u32,
    /// Least time before the next attempt.
    pub delay: Duration,
}

/// A campaign's retries by outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// After a busy line.
    pub busy: Retry,
    /// After no answer.
    pub no_answer: Retry,
    /// After a network failure.
    pub failed: Retry,
    /// After the operator's "call later" (the time asked wins when given).
    pub call_later: Retry,
}

impl Default for RetryPolicy {
    /// Three tries at a busy line half an hour apart, three at no answer
    /// two hours apart, two after a failure an hour apart, three call-laters.
    fn default() -> Self {
        let r = |attempts, minutes: u64| Retry {
            attempts,
            delay: Duration::from_secs(minutes * 60),
        };
        Self {
            busy: r(3, 30),
            no_answer: r(3, 120),
            failed: r(2, 60),
            call_later: r(3, 60),
        }
    }
}

/// What becomes of a contact after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Reached: nothing more to do.
    Done,
    /// Another attempt, not before this time (inside the calling window).
    Retry {
        /// Earliest Unix time of the next attempt.
        at: UnixSeconds,
    },
    /// Out of attempts, or the window never opens again.
    Exhausted,
}

impl RetryPolicy {
    /// What follows an attempt that ended in `outcome`, the contact's
    /// `attempts`th (counting this one), at `now`; `asked` is the time an
    /// operator's "call later" named. An interrupted attempt is retried at
    /// once and not counted against the limit of any outcome (the caller
    /// does not count it), an abandoned one like no answer: the citizen
    /// heard a message, not an operator.
    pub fn next(
        &self,
        outcome: Outcome,
        attempts: u32,
        now: UnixSeconds,
        asked: Option<UnixSeconds>,
        window: &Window,
    ) -> Next {
        let retry = match outcome {
            Outcome::Answered => return Next::Done,
            Outcome::Interrupted => {
                return window
                    .next_open(now)
                    .map_or(Next::Exhausted, |at| Next::Retry { at });
            }
            Outcome::Busy => self.busy,
            Outcome::NoAnswer | Outcome::Abandoned => self.no_answer,
            Outcome::Failed => self.failed,
            Outcome::CallLater => self.call_later,
        };
        if attempts >= retry.attempts {
            return Next::Exhausted;
        }
        let earliest = now.saturating_add(retry.delay.as_secs() as i64);
        let wanted = match (outcome, asked) {
            (Outcome::CallLater, Some(at)) => at.max(now),
            _ => earliest,
        };
        window
            .next_open(wanted)
            .map_or(Next::Exhausted, |at| Next::Retry { at })
    }
}

#[cfg(test)]
mod tests;
