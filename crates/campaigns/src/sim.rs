//! A campaign in virtual time, one-second steps: operators, citizens who
//! answer, are busy or do not answer, and the pacer between them. Sizes a
//! campaign before it starts (`centralino simulate --outbound`) and checks
//! the pacer's promises in tests.

use std::time::{Duration, Instant};

use crate::Outcome;
use crate::pacer::{Pacer, PacerConfig, Snapshot};

/// How long an answered citizen waits for an operator before hearing the
/// recorded message (predictive).
pub const ANSWER_GRACE: u64 = 2;

/// What is simulated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    /// The pacer's settings (its mode among them).
    pub pacer: PacerConfig,
    /// Operators working the campaign.
    pub operators: u32,
    /// Chance a dialled citizen answers.
    pub answer: f64,
    /// Chance a dialled citizen is busy (the rest do not answer).
    pub busy: f64,
    /// Seconds an answered citizen keeps an operator (talk and wrap-up).
    pub handle_seconds: u64,
    /// Seconds a citizen's phone rings before they answer (at most).
    pub ring_seconds: u64,
    /// Seconds before an unanswered call is given up.
    pub no_answer_seconds: u64,
    /// Simulated time.
    pub seconds: u64,
    /// Random seed.
    pub seed: u64,
}

/// What came of it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Report {
    /// Citizens dialled.
    pub attempts: u64,
    /// Answered (an operator took them).
    pub answered: u64,
    /// Answered with no operator within the grace: the recorded message.
    pub abandoned: u64,
    /// Abandoned per answered (`answered` + `abandoned`) call.
    pub abandon_rate: f64,
    /// Dials per hour.
    pub attempts_per_hour: f64,
    /// Share of the operators' time spent with citizens (talk and
    /// wrap-up; not the wait, progressive, while a reserved citizen's phone
    /// rings).
    pub occupancy: f64,
    /// The highest abandon rate the pacer measured at any step.
    pub worst_rate: f64,
}

/// SplitMix64: a few lines, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn upto(&mut self, n: u64) -> u64 {
        1 + self.next() % n.max(1)
    }
}

/// A dialled citizen.
struct Dial {
    /// When the network's answer comes (second).
    at: u64,
    outcome: Outcome,
    /// The operator reserved for it (progressive).
    operator: Option<usize>,
}

/// Runs the campaign.
pub fn simulate(c: &SimConfig) -> Report {
    // The one reading of the clock: an origin for virtual time, whose
    // value never matters (only differences from it do).
    #[allow(clippy::disallowed_methods)]
    let origin = Instant::now();
    let at = |s: u64| origin + Duration::from_secs(s);
    let mut rng = Rng(c.seed);
    let mut pacer = Pacer::new(c.pacer);
    // Each operator busy until (second); reserved ones until released.
    let mut busy_until = vec![0u64; c.operators as usize];
    let mut reserved = vec![false; c.operators as usize];
    let mut dials: Vec<Dial> = Vec::new();
    // Answered citizens waiting for an operator: since when.
    let mut waiting: Vec<u64> = Vec::new();
    let mut r = Report::default();
    let mut occupied = 0u64;
    for now in 0..c.seconds {
        // The network answers.
        let mut i = 0;
        while i < dials.len() {
            if dials[i].at > now {
                i += 1;
                continue;
            }
            let d = dials.swap_remove(i);
            match (d.outcome, d.operator) {
                (Outcome::Answered, Some(op)) => {
                    reserved[op] = false;
                    busy_until[op] = now + c.handle_seconds;
                    r.answered += 1;
                    pacer.resolved(at(now), Outcome::Answered);
                }
                (Outcome::Answered, None) => waiting.push(now),
                (other, op) => {
                    if let Some(op) = op {
                        reserved[op] = false;
                    }
                    pacer.resolved(at(now), other);
                }
            }
        }
        // Waiting citizens get a free operator, or the message.
        waiting.retain(|&since| {
            let free = (0..busy_until.len()).find(|&o| !reserved[o] && busy_until[o] <= now);
            match free {
                Some(o) => {
                    busy_until[o] = now + c.handle_seconds;
                    r.answered += 1;
                    pacer.resolved(at(now), Outcome::Answered);
                    false
                }
                None if now - since >= ANSWER_GRACE => {
                    r.abandoned += 1;
                    pacer.resolved(at(now), Outcome::Abandoned);
                    false
                }
                None => true,
            }
        });
        let rate = pacer.abandon_rate(at(now));
        r.worst_rate = r.worst_rate.max(rate);
        // The pacer's turn.
        let free: Vec<usize> = (0..busy_until.len())
            .filter(|&o| !reserved[o] && busy_until[o] <= now)
            .collect();
        let soon_free = busy_until
            .iter()
            .zip(&reserved)
            .filter(|&(&b, &res)| !res && b > now && b <= now + c.ring_seconds)
            .count() as u32;
        let lines = (dials.iter().filter(|d| d.operator.is_none()).count() + waiting.len()) as u32;
        let decision = pacer.decide(
            at(now),
            Snapshot {
                free: free.len() as u32,
                soon_free,
                lines,
            },
        );
        // Preview works as progressive once the operator accepts (the
        // reading time is not simulated).
        let progressive = c.pacer.mode.allowed_for_fragile();
        for k in 0..decision.dial as usize {
            let roll = rng.unit();
            let (outcome, after) = if roll < c.answer {
                (Outcome::Answered, rng.upto(c.ring_seconds))
            } else if roll < c.answer + c.busy {
                (Outcome::Busy, rng.upto(3))
            } else {
                (Outcome::NoAnswer, c.no_answer_seconds)
            };
            // Progressive reserves the operator it dials for.
            let operator = if progressive {
                let op = free.get(k).copied();
                if let Some(o) = op {
                    reserved[o] = true;
                }
                op
            } else {
                None
            };
            dials.push(Dial {
                at: now + after,
                outcome,
                operator,
            });
            r.attempts += 1;
        }
        occupied += busy_until
            .iter()
            .zip(&reserved)
            .filter(|&(&b, &res)| !res && b > now)
            .count() as u64;
    }
    let talked = r.answered + r.abandoned;
    r.abandon_rate = if talked == 0 {
        0.0
    } else {
        r.abandoned as f64 / talked as f64
    };
    r.attempts_per_hour = r.attempts as f64 * 3600.0 / c.seconds.max(1) as f64;
    r.occupancy = occupied as f64 / (u64::from(c.operators) * c.seconds).max(1) as f64;
    r
}
