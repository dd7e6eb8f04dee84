//! What the engine tells its driver and the APIs: its outputs and the
//! views, desk states and campaign/callback records that travel with them.

use super::*;

/// What the engine asks its driver to do.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes along `flow`.
    Transmit {
        /// Destination and socket.
        flow: Flow,
        /// The serialised message.
        bytes: Vec<u8>,
    },
    /// Instruct the media plane.
    Media(MediaCommand),
    /// Offer a waiting call to another node (the national network): a
    /// NATS request; its answer comes back by `Engine::cluster_reply`
    /// (none in time: the engine's own timeout keeps the call here).
    ClusterOffer {
        /// The node asked.
        node: String,
        /// The offer.
        request: Box<centralino_cluster::OfferRequest>,
    },
    /// Operators were added or removed (a reload): the desks' view of
    /// the board (`Engine::board`) is out of date.
    AgentsChanged,
    /// An operator signed out of the service (`out`) or back in: the
    /// views say why they are logged out with a phone registered.
    SignedOut {
        /// The operator.
        agent: String,
        /// Signed out (or back in).
        out: bool,
    },
    /// An operator is free again in a queue that had none (the views just
    /// published say which): the other nodes should hear it now.
    ClusterNews,
    /// What this node lends now under agreements between firms, on
    /// every change: (borrower firm, lender firm, calls), for its summary
    /// and its supervisors.
    Lent(Vec<(String, String, u32)>),
    /// Tell `node` to let the operator it holds for offer `id` go.
    ClusterRelease {
        /// The node.
        node: String,
        /// The offer.
        id: String,
    },
    /// A call record or queue log event, for the store (batched there).
    Record(Record),
    /// Store a callback request (virtual hold); answer with
    /// [`Engine::callback_stored`] once it is durable, or not.
    StoreCallback {
        /// The call asking.
        call: CallId,
        /// Its queue.
        queue: String,
        /// The number to call back (the caller's).
        number: String,
        /// When the call entered the queue (Unix seconds): the request
        /// keeps its place.
        enqueued_unix: i64,
    },
    /// What an operator's desktop shows: the call offered to them (with
    /// the IVR's answers and the queue's script), or `None` once it is
    /// over for them.
    AgentCall {
        /// The operator.
        agent: String,
        /// The call, while offered or connected.
        info: Option<AgentCall>,
    },
    /// The queues as a supervisor sees them (at most once a second, after
    /// activity).
    Queues(Vec<QueueView>),
    /// Run the staffing advisor's Erlang A for a queue off the engine's
    /// thread (it integrates the queue's states: milliseconds to a second
    /// for a large queue) and give its answer to
    /// [`Engine::staffing_computed`]; one at a time is enough.
    Staffing(StaffingJob),
    /// The running campaigns as a supervisor sees them (with the queues).
    Campaigns(Vec<CampaignView>),
    /// A callback moved on: record it in the store.
    CallbackState {
        /// The callback's id in the store.
        id: String,
        /// What happened.
        state: CallbackState,
    },
    /// A call came in on a campaign's number with a caller the carrier
    /// asserted (P-Asserted-Identity of a trusted trunk): the driver looks
    /// them up among the campaign's contacts and, when found, answers with
    /// [`Engine::caller_known`].
    CallerLookup {
        /// The call.
        call: CallId,
        /// Its record id (the answer is matched against it).
        record: String,
        /// The running campaigns presenting the number called (ids, of
        /// the tenant whose trunk took the call).
        campaigns: Vec<String>,
        /// The caller, E.164.
        number: String,
    },
    /// A campaign's pacer wants this many more contacts: claim them (the
    /// claim is the attempt's durable mark) and hand them over with
    /// [`Engine::campaign_contacts`], even none.
    WantContacts {
        /// Campaign id.
        campaign: String,
        /// How many.
        count: u32,
    },
    /// A campaign contact's attempt moved on. `Dialing`: answer with
    /// [`Engine::callback_dialing`] (the claim already made the attempt
    /// durable); `Failed`: the attempt ended so (the campaign's retry
    /// policy decides what follows, never the engine); `Done`: reached;
    /// `Requeue`: the operator left before anyone was dialled.
    ContactState {
        /// Whose attempt.
        call: Box<CampaignCall>,
        /// The call record of the attempt, once it has one (operators'
        /// dispositions name it).
        record: Option<String>,
        /// What happened.
        state: CallbackState,
    },
}

/// One queue for the supervisor's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueView {
    /// Queue name.
    pub name: String,
    /// The tenant (firm) it belongs to.
    pub tenant: String,
    /// Calls not yet answered (waiting or ringing an operator).
    pub waiting: u32,
    /// Wall clock (Unix ms) the oldest of them entered, if any: readers
    /// compute its wait at read time.
    pub oldest_since_ms: Option<i64>,
    /// Expected wait of a call arriving now, seconds.
    pub expected_wait_seconds: u64,
    /// Operators reached by its first ring: available, busy, paused,
    /// logged out.
    pub agents: [(&'static str, u32); 4],
    /// Operators Erlang C asks for the queue's service level on the last
    /// 15 minutes' traffic (`None` before a handling time is known).
    pub agents_needed: Option<u32>,
    /// Of those, not available or busy in the queue now.
    pub agents_short: u32,
}

/// Where the operator is with the call on their desktop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeskState {
    /// A preview campaign's contact: the operator accepts or skips it
    /// before anyone is dialled.
    Preview,
    /// Their phone rings.
    Offered,
    /// They answered.
    Connected,
}

impl DeskState {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preview => "preview",
            Self::Offered => "offered",
            Self::Connected => "connected",
        }
    }
}

/// Why an operator's state cannot change as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentStateError {
    /// No such operator.
    #[error("no such operator")]
    Unknown,
    /// Not registered: a phone must log in first.
    #[error("the operator is logged out (their phone must register first)")]
    LoggedOut,
    /// Ringing or talking: pause after the call (wrap-up may be paused).
    #[error("the operator is on a call: pause during wrap-up or after it")]
    Busy,
}

/// Why an operator's answer to a preview is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreviewError {
    /// No such operator.
    #[error("no such operator")]
    Unknown,
    /// That contact is not on this operator's desk (never was, already
    /// answered, timed out, or the campaign's call ended).
    #[error("that contact is not on this operator's desk for preview")]
    NotShown,
}

/// The call an operator is offered or talking to, for their desktop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCall {
    /// Ringing or answered.
    pub state: DeskState,
    /// Call record id (answers are stored against it).
    pub call: String,
    /// Queue name.
    pub queue: String,
    /// The IVR flow the caller walked, if any.
    pub flow: Option<String>,
    /// What the caller chose and answered there.
    pub variables: Vec<(String, String)>,
    /// The queue's operator script.
    pub script: Option<String>,
    /// The callback being executed, if it is one.
    pub callback: Option<String>,
    /// The campaign placing it, if it is one (its contact's details are in
    /// `variables`).
    pub campaign: Option<String>,
    /// The campaign's contact id (a preview is accepted or skipped by it).
    pub contact: Option<i64>,
    /// An operator's consultation of a colleague or a queue (the consulted
    /// side's desk): not a citizen's call, so no outcome and not counted
    /// among the operator's calls.
    pub consultation: bool,
}

/// A callback the driver claimed from the store, to execute now.
#[derive(Clone, Debug)]
pub struct DueCallback {
    /// Id in the store.
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// The citizen's number.
    pub number: String,
    /// Extra requirements (an expression).
    pub requirements: Option<String>,
    /// Priority.
    pub priority: i32,
    /// When it was asked for (Unix seconds): it keeps that place.
    pub created_unix: i64,
    /// By when it was promised (Unix seconds: the queue's
    /// `callback_promise_minutes` of its callback hours from the request,
    /// or from the time the citizen chose); `None` for a campaign's call
    /// or a promise the calendar cannot keep.
    pub promised_unix: Option<i64>,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// Set when a campaign places the call, not a citizen's request.
    pub campaign: Option<Box<CampaignCall>>,
}

/// A campaign contact's attempt, as the engine places it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignCall {
    /// Campaign id.
    pub campaign: String,
    /// Campaign name (metric label, unique within its tenant).
    pub name: String,
    /// Its tenant's name (metric label).
    pub tenant: String,
    /// Contact id in the store.
    pub contact: i64,
    /// This attempt's number.
    pub attempt: u32,
    /// Earlier attempts that reached the network (the retry policy
    /// counts those, not skipped or withheld ones).
    pub dialled: u32,
    /// The number presented instead of the trunk's.
    pub caller_id: Option<String>,
    /// The outbound trunk tried first (by name).
    pub trunk: Option<String>,
    /// Predictive: the citizen is dialled first and waits for an operator.
    pub customer_first: bool,
    /// What the operator's desk shows of the contact (name, language,
    /// the attempt, the data imported with it).
    pub desk: Vec<(String, String)>,
    /// Preview mode: how long the operator has to accept or skip it.
    pub preview: Option<Duration>,
    /// The campaign's operator script (over the queue's).
    pub script: Option<String>,
}

/// A running campaign inside its calling window, as the scheduler hands
/// it to the engine each second.
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignRun {
    /// Campaign id.
    pub id: String,
    /// Name (metric label, unique within its tenant).
    pub name: String,
    /// Its tenant's name (metric label).
    pub tenant: String,
    /// The queue whose operators work it.
    pub queue: String,
    /// Its pacer's settings.
    pub pacer: centralino_campaigns::pacer::PacerConfig,
}

/// A callback's progress, for the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackState {
    /// An operator answered: the citizen is about to be dialled. The
    /// driver makes this durable and answers with
    /// [`Engine::callback_dialing`] before the INVITE leaves.
    Dialing {
        /// The call executing it.
        call: CallId,
    },
    /// The citizen answered.
    Done,
    /// Try again after `after` (busy, no answer, no operator, failure).
    Retry {
        /// Why this attempt failed.
        outcome: CallbackOutcome,
        /// When to try again.
        after: Duration,
    },
    /// No attempt left, or it cannot be executed.
    Failed {
        /// Why.
        outcome: CallbackOutcome,
    },
    /// The operator left before the citizen was dialled: back to pending
    /// at once, this attempt not counted (the citizen saw nothing of it),
    /// keeping the request's place.
    Requeue {
        /// Why the operator left (`agent_hangup`, `media_timeout`...).
        outcome: CallbackOutcome,
    },
}

/// One queue's Erlang A staffing question ([`Output::Staffing`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StaffingJob {
    /// The queue.
    pub queue: QueueId,
    /// When the engine asked (its answer is as of then).
    pub asked: Instant,
    /// Offered calls per second.
    pub rate: f64,
    /// Mean handling time, seconds.
    pub aht_seconds: f64,
    /// Callers' mean patience, seconds.
    pub patience_seconds: f64,
    /// The service level's threshold, seconds.
    pub t_seconds: f64,
    /// The share to answer within it.
    pub target: f64,
    /// The share of callers allowed to give up.
    pub max_abandon: f64,
    /// The last answer for this queue, tried first.
    pub last: Option<u32>,
}

impl StaffingJob {
    /// The operators needed, `None` when Erlang A has no answer within
    /// its bounds (the engine keeps Erlang C's).
    #[must_use]
    pub fn run(&self) -> Option<u32> {
        centralino_routing::staffing::agents_needed_a(
            self.rate,
            self.aht_seconds,
            self.patience_seconds,
            self.t_seconds,
            self.target,
            self.max_abandon,
            self.last,
        )
    }
}
