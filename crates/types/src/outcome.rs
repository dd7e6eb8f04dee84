//! How things end, named once: the engine decides with these, the call
//! records and the queue log store their names, and the metrics use the
//! same names as label values.

/// How a call ended: the call record's `outcome`, and the `outcome` label
/// of `centralino_calls_total` (for calls no operator answered) and of
/// `centralino_queue_dequeued_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// The caller hung up on the operator.
    CallerHangup,
    /// The operator hung up.
    AgentHangup,
    /// The caller hung up after an IVR answered, before an operator did.
    Abandoned,
    /// The caller gave up (CANCEL) before anything answered.
    Cancelled,
    /// The queue's `max_wait_seconds` passed.
    MaxWait,
    /// The queue's `max_waiting` was reached.
    QueueFull,
    /// The caller asked to be called back and hung up.
    CallbackRequested,
    /// The IVR flow hung up.
    IvrHangup,
    /// The IVR flow named a queue that does not exist.
    IvrNoQueue,
    /// The media plane could not take the call.
    MediaFailed,
    /// A leg's RTP stopped.
    MediaTimeout,
    /// An answer had no usable SDP.
    BadAnswer,
    /// The caller never acknowledged our 200 OK.
    NoAck,
    /// The caller never acknowledged a reliable provisional (RFC 3262).
    NoPrack,
    /// The session was not refreshed in time (RFC 4028).
    SessionExpired,
    /// The node shut down.
    Shutdown,
    /// The store could not record a callback's dialling.
    StoreFailed,
    /// A callback's citizen was busy.
    Busy,
    /// A callback's citizen did not answer.
    NoAnswer,
    /// A callback's call failed otherwise (refused, unreachable).
    Failed,
    /// A preview campaign's operator skipped the contact: nobody dialled.
    Skipped,
    /// Its campaign stopped, paused or left its window before the citizen
    /// was dialled.
    CampaignStopped,
    /// The national work stream could not be reached to fence a
    /// callback's dial: not dialled, back to pending.
    ClusterUnavailable,
    /// A callback another node took over (or whose record could not be
    /// trusted) before it was dialled here: let go, nothing recorded.
    CallbackMoved,
    /// An operator's consultation that ended in an attended transfer: its
    /// operator talks on with the caller, on the caller's own call.
    ConsultTransferred,
}

impl CallOutcome {
    /// Every outcome (for tests and documentation).
    pub const ALL: [Self; 25] = [
        Self::CallerHangup,
        Self::AgentHangup,
        Self::Abandoned,
        Self::Cancelled,
        Self::MaxWait,
        Self::QueueFull,
        Self::CallbackRequested,
        Self::IvrHangup,
        Self::IvrNoQueue,
        Self::MediaFailed,
        Self::MediaTimeout,
        Self::BadAnswer,
        Self::NoAck,
        Self::NoPrack,
        Self::SessionExpired,
        Self::Shutdown,
        Self::StoreFailed,
        Self::Busy,
        Self::NoAnswer,
        Self::Failed,
        Self::Skipped,
        Self::CampaignStopped,
        Self::ClusterUnavailable,
        Self::CallbackMoved,
        Self::ConsultTransferred,
    ];

    /// The name stored and used as a label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CallerHangup => "caller_hangup",
            Self::AgentHangup => "agent_hangup",
            Self::Abandoned => "abandoned",
            Self::Cancelled => "cancelled",
            Self::MaxWait => "max_wait",
            Self::QueueFull => "queue_full",
            Self::CallbackRequested => "callback_requested",
            Self::IvrHangup => "ivr_hangup",
            Self::IvrNoQueue => "ivr_no_queue",
            Self::MediaFailed => "media_failed",
            Self::MediaTimeout => "media_timeout",
            Self::BadAnswer => "bad_answer",
            Self::NoAck => "no_ack",
            Self::NoPrack => "no_prack",
            Self::SessionExpired => "session_expired",
            Self::Shutdown => "shutdown",
            Self::StoreFailed => "store_failed",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::CampaignStopped => "campaign_stopped",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::CallbackMoved => "callback_moved",
            Self::ConsultTransferred => "consult_transferred",
        }
    }
}

impl std::fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a call in its queue: the queue log's `event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueEvent {
    /// It entered the queue.
    Enter,
    /// It was offered to an operator.
    Offer,
    /// An operator answered.
    Connect,
    /// It went back to its place after an operator was lost.
    Requeue,
    /// The caller hung up while waiting.
    Abandon,
    /// `max_wait_seconds` passed.
    Timeout,
    /// The caller chose to be called back.
    Callback,
    /// It left the queue otherwise (full, shutdown, media).
    Exit,
    /// The IVR transferred it to an external number.
    Transfer,
    /// The queue could not serve it and passed it to another
    /// (`when_unserved = "overflow"`).
    Overflow,
}

impl QueueEvent {
    /// The name stored in the queue log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enter => "enter",
            Self::Offer => "offer",
            Self::Connect => "connect",
            Self::Requeue => "requeue",
            Self::Abandon => "abandon",
            Self::Timeout => "timeout",
            Self::Callback => "callback",
            Self::Exit => "exit",
            Self::Transfer => "transfer",
            Self::Overflow => "overflow",
        }
    }

    /// The event of a call that left its queue unanswered with `outcome`.
    pub const fn of_unanswered(outcome: CallOutcome) -> Self {
        match outcome {
            CallOutcome::Cancelled | CallOutcome::Abandoned => Self::Abandon,
            CallOutcome::MaxWait => Self::Timeout,
            CallOutcome::CallbackRequested => Self::Callback,
            _ => Self::Exit,
        }
    }
}

impl std::fmt::Display for QueueEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a callback's attempt ended without its citizen talking to an
/// operator: the store's `outcome`, the `outcome` label of
/// `centralino_callbacks_total`, and the keys of `callback_retries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallbackOutcome {
    /// The citizen was busy.
    Busy,
    /// The citizen did not answer.
    NoAnswer,
    /// The call failed otherwise.
    Failed,
    /// Reached, then nobody took them in time.
    NoOperator,
    /// Reached, then they hung up while waiting.
    Abandoned,
    /// The tenant's dial plan refuses the number.
    DialPlan,
    /// The tenant has no outbound trunk.
    NoOutboundTrunk,
    /// No RTP port was free.
    NoRtpPort,
    /// The callback names a queue this node does not have.
    UnknownQueue,
    /// A campaign's queue belongs to another firm than the campaign
    /// (never dialled through the other firm's trunk).
    OtherTenant,
    /// The store could not record the dialling.
    StoreFailed,
    /// The operator's side ended the attempt (`agent_hangup`,
    /// `media_timeout`...).
    Ended(CallOutcome),
}

impl CallbackOutcome {
    /// The name stored and used as a label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Failed => "failed",
            Self::NoOperator => "no_operator",
            Self::Abandoned => "abandoned",
            Self::DialPlan => "dial_plan",
            Self::NoOutboundTrunk => "no_outbound_trunk",
            Self::NoRtpPort => "no_rtp_port",
            Self::UnknownQueue => "unknown_queue",
            Self::OtherTenant => "other_tenant",
            Self::StoreFailed => "store_failed",
            Self::Ended(o) => o.as_str(),
        }
    }
}

impl From<CallOutcome> for CallbackOutcome {
    fn from(o: CallOutcome) -> Self {
        match o {
            CallOutcome::Busy => Self::Busy,
            CallOutcome::NoAnswer => Self::NoAnswer,
            CallOutcome::Failed => Self::Failed,
            CallOutcome::Abandoned => Self::Abandoned,
            CallOutcome::StoreFailed => Self::StoreFailed,
            o => Self::Ended(o),
        }
    }
}

impl std::fmt::Display for CallbackOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_snake_case_and_survive_the_callback_view() {
        let mut seen = std::collections::HashSet::new();
        for o in CallOutcome::ALL {
            let name = o.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            // A callback ended by the call keeps the call's name.
            assert_eq!(CallbackOutcome::from(o).as_str(), name);
        }
    }

    #[test]
    fn unanswered_calls_map_to_their_queue_events() {
        assert_eq!(
            QueueEvent::of_unanswered(CallOutcome::Cancelled),
            QueueEvent::Abandon
        );
        assert_eq!(
            QueueEvent::of_unanswered(CallOutcome::MaxWait),
            QueueEvent::Timeout
        );
        assert_eq!(
            QueueEvent::of_unanswered(CallOutcome::QueueFull),
            QueueEvent::Exit
        );
    }
}
