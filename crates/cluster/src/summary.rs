//! What a node tells the others about itself each second, and its wire
//! form (JSON), read with every size bounded: a peer's bytes are network
//! input like any other.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest summary accepted (bytes).
pub const MAX_SUMMARY_BYTES: usize = 1 << 20;

/// Most queues one summary may carry.
pub const MAX_QUEUES: usize = 10_000;

/// One node's state, as it publishes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// The node's name (`[cluster] node`): 1 to 64 of `[A-Za-z0-9_.-]`.
    pub node: String,
    /// The node's start time (Unix ms), new at each start: its sequence
    /// starts again with it; an older boot than the last seen is a replay.
    pub boot: u64,
    /// Raised by one per summary of this boot.
    pub seq: u64,
    /// The sender's wall clock (Unix ms), for display only: membership
    /// runs on the receiver's clock.
    pub at_ms: i64,
    /// The node drains: it takes no new calls.
    pub draining: bool,
    /// Its queues.
    pub queues: Vec<QueueSummary>,
    /// Calls it has lent under agreements now: (borrower firm, lender
    /// firm, calls).
    #[serde(default)]
    pub lent: Vec<(String, String, u32)>,
    /// Where other nodes send the INVITE of a call handed over to it
    /// (`ip:port`, UDP); a node without one is never offered a call.
    #[serde(default)]
    pub sip: Option<SocketAddr>,
}

/// One queue of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSummary {
    /// The firm it belongs to.
    pub tenant: String,
    /// Its name.
    pub queue: String,
    /// Calls not yet answered.
    pub waiting: u32,
    /// The oldest one's wait (ms).
    pub oldest_wait_ms: u64,
    /// What a call arriving now can expect (seconds).
    pub expected_wait_seconds: u64,
    /// Operators its first ring reaches, by state.
    pub available: u32,
    /// See `available`.
    pub busy: u32,
    /// See `available`.
    pub paused: u32,
    /// See `available`.
    pub logged_out: u32,
}

/// Why a peer's summary is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Larger than [`MAX_SUMMARY_BYTES`].
    #[error("summary of {0} bytes, more than {MAX_SUMMARY_BYTES}")]
    TooLarge(usize),
    /// Not a summary.
    #[error("not a summary: {0}")]
    Malformed(String),
    /// A name that is no node's, tenant's or queue's.
    #[error("bad name in a summary: {0}")]
    BadName(&'static str),
    /// Too many queues.
    #[error("summary with {0} queues, more than {MAX_QUEUES}")]
    TooManyQueues(usize),
}

/// A name a node, tenant or queue may have on the wire (and as a metric
/// label): 1 to 64 letters, digits, `-`, `_`, `.`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Summary {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data: serialising it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a peer's summary, refusing what is too large, malformed or
    /// named beyond the rules.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_SUMMARY_BYTES {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let s: Self =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if !valid_name(&s.node) {
            return Err(WireError::BadName("node"));
        }
        if s.queues.len() > MAX_QUEUES {
            return Err(WireError::TooManyQueues(s.queues.len()));
        }
        if s.sip
            .is_some_and(|a| a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast())
        {
            return Err(WireError::BadName("sip"));
        }
        if s.lent.len() > MAX_QUEUES {
            return Err(WireError::TooManyQueues(s.lent.len()));
        }
        if s.lent
            .iter()
            .any(|(from, to, _)| !valid_name(from) || !valid_name(to))
        {
            return Err(WireError::BadName("tenant"));
        }
        for q in &s.queues {
            if !valid_name(&q.queue) {
                return Err(WireError::BadName("queue"));
            }
            // A queue without a tenant is the node's own default one.
            if !q.tenant.is_empty() && !valid_name(&q.tenant) {
                return Err(WireError::BadName("tenant"));
            }
        }
        Ok(s)
    }
}
