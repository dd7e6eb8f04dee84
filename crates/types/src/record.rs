//! Events for the call records (CDR) and the queue event log: emitted by
//! the engine, written in batches by the store.

/// One event for the call records or the queue log, written in batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A call arrived.
    CallStarted {
        /// Unique across restarts.
        id: String,
        /// Unix milliseconds.
        at_ms: i64,
        /// The caller's number (anonymised after the retention period).
        caller: String,
        /// The number dialled.
        did: String,
    },
    /// A queue event: enter, offer, connect, abandon, timeout, exit.
    Queue {
        /// The call's record id.
        call: String,
        /// Unix milliseconds.
        at_ms: i64,
        /// Queue name.
        queue: String,
        /// What happened.
        event: crate::outcome::QueueEvent,
        /// The operator concerned.
        agent: Option<String>,
        /// Position in the queue when it happened.
        position: Option<u32>,
        /// Time waited so far.
        wait_ms: Option<i64>,
    },
    /// An operator's part of a call is over (the call ended, or they
    /// transferred it, or their phone was lost): the queue log's
    /// `complete`, with their talk (hold included).
    Complete {
        /// The call's record id.
        call: String,
        /// Unix milliseconds.
        at_ms: i64,
        /// The queue the call was answered from.
        queue: String,
        /// The operator.
        agent: String,
        /// From their answer to now.
        talk_ms: i64,
    },
    /// An operator event for the queue log: login, logout, pause, unpause.
    Agent {
        /// Unix milliseconds.
        at_ms: i64,
        /// The operator.
        agent: String,
        /// Their firm when it happened: an operator's history is their
        /// firm's, and a name may change firm (a reload, or a name
        /// provisioned again).
        tenant: String,
        /// What happened.
        event: &'static str,
        /// Why (a pause's reason: `no_answer`, or the desktop's).
        reason: Option<String>,
    },
    /// A call ended.
    CallEnded {
        /// The call's record id.
        id: String,
        /// Unix milliseconds.
        at_ms: i64,
        /// How it ended.
        outcome: crate::outcome::CallOutcome,
        /// Queue, if it entered one.
        queue: Option<String>,
        /// The operator who talked, if any.
        agent: Option<String>,
        /// Time in queue.
        wait_ms: Option<i64>,
        /// Time talking.
        talk_ms: Option<i64>,
        /// IVR answers, `name=value` lines.
        variables: Option<String>,
    },
}
