//! The ACD core: operators (agents) and their states, skills and
//! requirement expressions, queues with strategies, priorities with bounded
//! aging and overflow rings, reservations, and the decision of which
//! waiting call goes to which operator.
//!
//! Owns: agent state machine, pools of eligible operators, waiting calls,
//! strategies, estimates. Never does: I/O, clocks (time comes in as `now`),
//! SIP, threads.
//! Entry type: [`Router`]; events go in through its methods, offers come out
//! of [`Router::poll_output`]. Other threads read the [`board::Board`] and may
//! take available operators by compare-and-swap.
#![warn(missing_docs)]

pub mod board;
pub mod expr;
mod pool;
mod router;
pub mod sim;
pub mod staffing;

pub use board::Code;
pub use expr::{Attributes, Catalog, ExprError, Requirement};
pub use router::{
    Agent, AgentState, CallSpec, Decision, EnqueueError, Estimate, MAX_GROUPS, MAX_RING_ALL,
    OfferOutcome, Output, PauseReason, QueueAgents, QueueSettings, Ring, Router, Strategy,
};

/// SplitMix64: a small deterministic generator, for random selection
/// strategies, traffic generation and benches (not for secrets).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is below 2⁻³²).
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }

    /// Uniform in (0, 1].
    pub fn next_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponentially distributed with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.next_f64().ln()
    }
}

#[cfg(test)]
mod tests;
