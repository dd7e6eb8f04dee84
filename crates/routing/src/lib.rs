//! The ACD core: operators (agents) and their states, queues, and the
//! decision of which waiting call goes to which operator.
//!
//! Owns: agent state machine, queue order, the matching strategy.
//! Never does: I/O, clocks (time comes in as `now`), SIP.
//! Entry type: [`Router`]; events go in through its methods, decisions come
//! out of [`Router::poll_decision`].
//!
//! This first engine is single-owner (one task drives it, so it needs no lock)
//! and scans operators linearly per decision; the skill-based, lock-free
//! engine for 40,000 operators replaces the internals behind this interface.
#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use centralino_types::{AgentId, CallId, QueueId};

pub mod sim;

/// How a queue chooses among available operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The operator idle the longest (default).
    LongestIdle,
}

/// A queue's routing settings.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// Name (a metric label).
    pub name: String,
    /// Strategy.
    pub strategy: Strategy,
    /// How long an operator's phone rings before the next one is tried.
    pub ring_timeout: Duration,
    /// Consecutive missed offers before the operator is paused.
    pub max_no_answer: u32,
    /// Longest wait before the queue's exit.
    pub max_wait: Duration,
    /// Wrap-up after each call (blocks the operator in every queue).
    pub wrap_up: Duration,
    /// Most waiting calls; more are refused.
    pub max_waiting: usize,
}

/// An operator's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// Not registered or logged off.
    LoggedOut,
    /// Ready for a call.
    Available,
    /// A call is being offered (the phone rings).
    Ringing(CallId),
    /// Talking.
    OnCall(CallId),
    /// After-call work until the instant.
    WrapUp(Instant),
    /// Paused with a reason.
    Paused(PauseReason),
}

impl AgentState {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::LoggedOut => "logged_out",
            Self::Available => "available",
            Self::Ringing(_) => "ringing",
            Self::OnCall(_) => "on_call",
            Self::WrapUp(_) => "wrap_up",
            Self::Paused(_) => "paused",
        }
    }

    /// All labels, for initialising gauges.
    pub const LABELS: [&'static str; 6] = [
        "logged_out",
        "available",
        "ringing",
        "on_call",
        "wrap_up",
        "paused",
    ];
}

/// Why an operator is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseReason {
    /// Too many unanswered offers in a row.
    NoAnswer,
    /// Logged in paused by configuration or by the operator.
    Manual,
}

/// An operator as the router sees it.
#[derive(Clone, Debug)]
pub struct Agent {
    /// Username (never a metric label).
    pub name: String,
    /// Queues served.
    pub queues: Vec<QueueId>,
    /// Current state.
    pub state: AgentState,
    /// Since when available, for longest-idle.
    pub idle_since: Instant,
    /// Consecutive missed offers.
    pub missed: u32,
    /// Bumped on every transition.
    pub version: u64,
}

struct Waiting {
    call: CallId,
    enqueued: Instant,
    tried: HashSet<AgentId>,
}

struct Queue {
    settings: QueueSettings,
    waiting: VecDeque<Waiting>,
}

/// A routing decision: offer `call` to `agent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The waiting call.
    pub call: CallId,
    /// The chosen operator, now `Ringing`.
    pub agent: AgentId,
    /// The queue it waited in.
    pub queue: QueueId,
    /// How long it waited.
    pub waited: Duration,
}

/// Why an offer ended without a connected call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferOutcome {
    /// Ring timeout or no response.
    NoAnswer,
    /// Busy or declined.
    Rejected,
    /// The caller left while ringing: not the operator's fault.
    Withdrawn,
}

/// Refusal to queue a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue holds `max_waiting` calls.
    QueueFull,
}

/// A state transition, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Who.
    pub agent: AgentId,
    /// From.
    pub from: AgentState,
    /// To.
    pub to: AgentState,
}

/// The router. Single owner; every method is O(operators) at worst.
pub struct Router {
    agents: Vec<Agent>,
    queues: Vec<Queue>,
    transitions: Vec<Transition>,
    /// Wrap-up ends, earliest first; stale entries (the operator left
    /// wrap-up otherwise) are skipped when popped.
    wrap_ups: BinaryHeap<Reverse<(Instant, AgentId)>>,
}

impl Router {
    /// A router over these queues; operators are added with [`Self::add_agent`].
    pub fn new(queues: Vec<QueueSettings>) -> Self {
        Self {
            agents: Vec::new(),
            queues: queues
                .into_iter()
                .map(|settings| Queue {
                    settings,
                    waiting: VecDeque::new(),
                })
                .collect(),
            transitions: Vec::new(),
            wrap_ups: BinaryHeap::new(),
        }
    }

    /// Adds a logged-out operator serving `queues`.
    pub fn add_agent(&mut self, now: Instant, name: &str, queues: Vec<QueueId>) -> AgentId {
        let id = AgentId(self.agents.len() as u32);
        self.agents.push(Agent {
            name: name.to_owned(),
            queues,
            state: AgentState::LoggedOut,
            idle_since: now,
            missed: 0,
            version: 0,
        });
        id
    }

    /// An operator by id.
    pub fn agent(&self, id: AgentId) -> &Agent {
        &self.agents[id.0 as usize]
    }

    /// All operators.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// A queue's settings.
    pub fn queue(&self, id: QueueId) -> &QueueSettings {
        &self.queues[id.0 as usize].settings
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Calls waiting in a queue, and the oldest enqueue time.
    pub fn waiting(&self, id: QueueId) -> (usize, Option<Instant>) {
        let q = &self.queues[id.0 as usize];
        // Waiting calls stay ordered by enqueue time (offer_failed puts a
        // call back at its place), so the oldest is the front.
        (q.waiting.len(), q.waiting.front().map(|w| w.enqueued))
    }

    /// Drains state transitions since the last call.
    pub fn drain_transitions(&mut self) -> std::vec::Drain<'_, Transition> {
        self.transitions.drain(..)
    }

    fn set(&mut self, id: AgentId, to: AgentState) {
        let a = &mut self.agents[id.0 as usize];
        if a.state == to {
            return;
        }
        let from = a.state;
        a.state = to;
        a.version += 1;
        self.transitions.push(Transition {
            agent: id,
            from,
            to,
        });
    }

    /// Registration gained: the operator becomes available (or paused).
    /// Idempotent: an operator already logged in keeps its state.
    pub fn login(&mut self, now: Instant, id: AgentId, paused: bool) {
        if self.agent(id).state != AgentState::LoggedOut {
            return;
        }
        let a = &mut self.agents[id.0 as usize];
        a.idle_since = now;
        a.missed = 0;
        let to = if paused {
            AgentState::Paused(PauseReason::Manual)
        } else {
            AgentState::Available
        };
        self.set(id, to);
    }

    /// Registration lost. A ringing or talking operator keeps the call; the
    /// state becomes logged-out when it ends.
    pub fn logout(&mut self, id: AgentId) {
        match self.agent(id).state {
            AgentState::Ringing(_) | AgentState::OnCall(_) => {}
            _ => self.set(id, AgentState::LoggedOut),
        }
    }

    /// Pauses or resumes an operator.
    pub fn set_paused(&mut self, now: Instant, id: AgentId, paused: bool) {
        match (self.agent(id).state, paused) {
            (AgentState::Available | AgentState::WrapUp(_), true) => {
                self.set(id, AgentState::Paused(PauseReason::Manual));
            }
            (AgentState::Paused(_), false) => {
                let a = &mut self.agents[id.0 as usize];
                a.missed = 0;
                a.idle_since = now;
                self.set(id, AgentState::Available);
            }
            _ => {}
        }
    }

    /// Queues a call. Decisions follow from [`Self::poll_decision`].
    pub fn enqueue(
        &mut self,
        now: Instant,
        queue: QueueId,
        call: CallId,
    ) -> Result<(), EnqueueError> {
        let q = &mut self.queues[queue.0 as usize];
        if q.waiting.len() >= q.settings.max_waiting {
            return Err(EnqueueError::QueueFull);
        }
        q.waiting.push_back(Waiting {
            call,
            enqueued: now,
            tried: HashSet::new(),
        });
        Ok(())
    }

    /// Removes a waiting call (caller hung up, or max wait reached).
    /// Returns how long it waited, if it was waiting.
    pub fn withdraw(&mut self, now: Instant, queue: QueueId, call: CallId) -> Option<Duration> {
        let q = &mut self.queues[queue.0 as usize];
        let pos = q.waiting.iter().position(|w| w.call == call)?;
        q.waiting.remove(pos).map(|w| now - w.enqueued)
    }

    /// The offer to `agent` ended without an answer: the call returns to the
    /// head of its queue (keeping its place) and the operator to available,
    /// or to paused after `max_no_answer` misses in a row.
    pub fn offer_failed(
        &mut self,
        now: Instant,
        queue: QueueId,
        call: CallId,
        enqueued: Instant,
        agent: AgentId,
        outcome: OfferOutcome,
    ) {
        let max_no_answer = self.queues[queue.0 as usize].settings.max_no_answer;
        if outcome != OfferOutcome::Withdrawn {
            let q = &mut self.queues[queue.0 as usize];
            let mut tried = HashSet::new();
            tried.insert(agent);
            // Back at its place by enqueue time (FIFO within the queue).
            let pos = q
                .waiting
                .iter()
                .position(|w| w.enqueued > enqueued)
                .unwrap_or(q.waiting.len());
            q.waiting.insert(
                pos,
                Waiting {
                    call,
                    enqueued,
                    tried,
                },
            );
        }
        let a = &mut self.agents[agent.0 as usize];
        if a.state != AgentState::Ringing(call) {
            return;
        }
        if outcome == OfferOutcome::NoAnswer {
            a.missed += 1;
        }
        a.idle_since = now;
        let to = if a.missed >= max_no_answer.max(1) && outcome == OfferOutcome::NoAnswer {
            AgentState::Paused(PauseReason::NoAnswer)
        } else {
            AgentState::Available
        };
        self.set(agent, to);
    }

    /// The operator answered.
    pub fn answered(&mut self, agent: AgentId, call: CallId) {
        if self.agent(agent).state == AgentState::Ringing(call) {
            self.agents[agent.0 as usize].missed = 0;
            self.set(agent, AgentState::OnCall(call));
        }
    }

    /// The call ended: wrap-up for `wrap_up`, then available.
    pub fn call_ended(&mut self, now: Instant, agent: AgentId, call: CallId, wrap_up: Duration) {
        if self.agent(agent).state != AgentState::OnCall(call) {
            return;
        }
        self.agents[agent.0 as usize].idle_since = now + wrap_up;
        if wrap_up.is_zero() {
            self.set(agent, AgentState::Available);
        } else {
            self.set(agent, AgentState::WrapUp(now + wrap_up));
            self.wrap_ups.push(Reverse((now + wrap_up, agent)));
        }
    }

    /// The earliest wrap-up end (stale entries may make it early: a call to
    /// [`Self::handle_timeout`] then just drops them).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wrap_ups.peek().map(|Reverse((t, _))| *t)
    }

    /// Ends wrap-ups due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, agent))) = self.wrap_ups.peek() {
            if t > now {
                break;
            }
            self.wrap_ups.pop();
            if self.agent(agent).state == AgentState::WrapUp(t) {
                self.set(agent, AgentState::Available);
            }
        }
    }

    /// The next offer to make, if any waiting call has an available operator.
    /// The oldest call across queues goes first; within a queue, FIFO; the
    /// operator is the longest idle among those not yet tried for this call.
    #[must_use]
    pub fn poll_decision(&mut self, now: Instant) -> Option<Decision> {
        let mut best: Option<(Instant, usize, usize, AgentId)> = None;
        for (qi, q) in self.queues.iter().enumerate() {
            let qid = QueueId(qi as u32);
            for (wi, w) in q.waiting.iter().enumerate() {
                if best.is_some_and(|(t, ..)| t <= w.enqueued) {
                    break;
                }
                let pick = |skip_tried: bool| {
                    self.agents
                        .iter()
                        .enumerate()
                        .filter(|(i, a)| {
                            a.state == AgentState::Available
                                && a.queues.contains(&qid)
                                && !(skip_tried && w.tried.contains(&AgentId(*i as u32)))
                        })
                        .min_by_key(|(i, a)| (a.idle_since, *i))
                        .map(|(i, _)| AgentId(i as u32))
                };
                if let Some(agent) = pick(true).or_else(|| pick(false)) {
                    best = Some((w.enqueued, qi, wi, agent));
                    break;
                }
            }
        }
        let (enqueued, qi, wi, agent) = best?;
        let w = self.queues[qi].waiting.remove(wi)?;
        self.set(agent, AgentState::Ringing(w.call));
        Some(Decision {
            call: w.call,
            agent,
            queue: QueueId(qi as u32),
            waited: now - enqueued,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str) -> QueueSettings {
        QueueSettings {
            name: name.into(),
            strategy: Strategy::LongestIdle,
            ring_timeout: Duration::from_secs(15),
            max_no_answer: 2,
            max_wait: Duration::from_secs(300),
            wrap_up: Duration::ZERO,
            max_waiting: 10,
        }
    }

    #[test]
    fn longest_idle_first_and_fifo() {
        let t0 = Instant::now();
        let mut r = Router::new(vec![settings("info")]);
        let a = r.add_agent(t0, "1001", vec![QueueId(0)]);
        let b = r.add_agent(t0, "1002", vec![QueueId(0)]);
        r.login(t0 + Duration::from_secs(2), a, false);
        r.login(t0 + Duration::from_secs(1), b, false);
        r.enqueue(t0, QueueId(0), CallId(1)).unwrap();
        r.enqueue(t0 + Duration::from_secs(1), QueueId(0), CallId(2))
            .unwrap();
        let d1 = r.poll_decision(t0).unwrap();
        assert_eq!((d1.call, d1.agent), (CallId(1), b));
        let d2 = r.poll_decision(t0).unwrap();
        assert_eq!((d2.call, d2.agent), (CallId(2), a));
        assert!(r.poll_decision(t0).is_none());
    }

    #[test]
    fn no_answer_moves_on_and_pauses_after_max() {
        let t0 = Instant::now();
        let mut r = Router::new(vec![settings("info")]);
        let a = r.add_agent(t0, "1001", vec![QueueId(0)]);
        let b = r.add_agent(t0, "1002", vec![QueueId(0)]);
        r.login(t0, a, false);
        r.login(t0 + Duration::from_millis(1), b, false);
        r.enqueue(t0, QueueId(0), CallId(1)).unwrap();
        let d = r.poll_decision(t0).unwrap();
        assert_eq!(d.agent, a);
        r.offer_failed(t0, QueueId(0), CallId(1), t0, a, OfferOutcome::NoAnswer);
        let d = r.poll_decision(t0).unwrap();
        assert_eq!(d.agent, b, "the call moves to the next operator");
        r.offer_failed(t0, QueueId(0), CallId(1), t0, b, OfferOutcome::NoAnswer);
        let d = r.poll_decision(t0).unwrap();
        assert_eq!(d.agent, a, "everyone tried: retry from the longest idle");
        r.offer_failed(t0, QueueId(0), CallId(1), t0, a, OfferOutcome::NoAnswer);
        assert_eq!(r.agent(a).state, AgentState::Paused(PauseReason::NoAnswer));
    }

    #[test]
    fn wrap_up_then_available() {
        let t0 = Instant::now();
        let mut r = Router::new(vec![settings("info")]);
        let a = r.add_agent(t0, "1001", vec![QueueId(0)]);
        r.login(t0, a, false);
        r.enqueue(t0, QueueId(0), CallId(1)).unwrap();
        let d = r.poll_decision(t0).unwrap();
        r.answered(d.agent, d.call);
        r.call_ended(t0, a, CallId(1), Duration::from_secs(5));
        assert!(matches!(r.agent(a).state, AgentState::WrapUp(_)));
        r.enqueue(t0, QueueId(0), CallId(2)).unwrap();
        assert!(r.poll_decision(t0).is_none());
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        r.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(
            r.poll_decision(t0 + Duration::from_secs(5)).unwrap().call,
            CallId(2)
        );
    }
}

#[cfg(test)]
mod props {
    use std::collections::HashMap;

    use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as PropStrategy;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Login(u32),
        Logout(u32),
        Pause(u32, bool),
        Enqueue(u32),
        Withdraw(u64),
        Decide,
        Fail(u64, u8),
        Answer(u64),
        End(u64),
        Tick(u16),
    }

    fn op() -> impl PropStrategy<Value = Op> {
        prop_oneof![
            (0u32..5).prop_map(Op::Login),
            (0u32..5).prop_map(Op::Logout),
            (0u32..5, any::<bool>()).prop_map(|(a, p)| Op::Pause(a, p)),
            (0u32..2).prop_map(Op::Enqueue),
            (0u64..30).prop_map(Op::Withdraw),
            Just(Op::Decide),
            Just(Op::Decide),
            (0u64..30, 0u8..3).prop_map(|(c, o)| Op::Fail(c, o)),
            (0u64..30).prop_map(Op::Answer),
            (0u64..30).prop_map(Op::End),
            (0u16..5000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Random event sequences: a call is offered only to an available
        /// operator of its queue, no operator ever holds two calls, a call
        /// is never both waiting and offered, and FIFO holds within a queue.
        #[test]
        fn routing_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let q = |name: &str| QueueSettings {
                name: name.into(),
                strategy: Strategy::LongestIdle,
                ring_timeout: Duration::from_secs(5),
                max_no_answer: 2,
                max_wait: Duration::from_secs(60),
                wrap_up: Duration::from_secs(1),
                max_waiting: 10,
            };
            let mut r = Router::new(vec![q("a"), q("b")]);
            for i in 0..5u32 {
                let queues = match i % 3 { 0 => vec![QueueId(0)], 1 => vec![QueueId(1)], _ => vec![QueueId(0), QueueId(1)] };
                r.add_agent(t0, &format!("{i}"), queues);
            }
            let mut next_call = 0u64;
            let mut queue_of: HashMap<u64, (QueueId, Instant)> = HashMap::new();
            let mut offered: HashMap<u64, AgentId> = HashMap::new();
            let mut connected: HashMap<u64, AgentId> = HashMap::new();
            for op in ops {
                match op {
                    Op::Login(a) => r.login(now, AgentId(a), false),
                    Op::Logout(a) => r.logout(AgentId(a)),
                    Op::Pause(a, p) => r.set_paused(now, AgentId(a), p),
                    Op::Enqueue(qi) => {
                        if r.enqueue(now, QueueId(qi), CallId(next_call)).is_ok() {
                            queue_of.insert(next_call, (QueueId(qi), now));
                        }
                        next_call += 1;
                    }
                    Op::Withdraw(c) => {
                        if let Some((qid, _)) = queue_of.get(&c)
                            && r.withdraw(now, *qid, CallId(c)).is_some()
                        {
                            queue_of.remove(&c);
                        }
                    }
                    Op::Decide => {
                        let before: Vec<AgentState> = r.agents().iter().map(|a| a.state).collect();
                        if let Some(d) = r.poll_decision(now) {
                            let (qid, enq) = queue_of[&d.call.0];
                            prop_assert_eq!(qid, d.queue);
                            prop_assert_eq!(before[d.agent.0 as usize], AgentState::Available);
                            prop_assert!(r.agent(d.agent).queues.contains(&d.queue));
                            prop_assert!(!offered.contains_key(&d.call.0));
                            // FIFO: nothing older waits in the same queue.
                            let (_, oldest) = r.waiting(d.queue);
                            prop_assert!(oldest.is_none_or(|o| o >= enq));
                            offered.insert(d.call.0, d.agent);
                        }
                    }
                    Op::Fail(c, o) => {
                        if let Some(agent) = offered.remove(&c) {
                            let outcome = [OfferOutcome::NoAnswer, OfferOutcome::Rejected, OfferOutcome::Withdrawn][o as usize];
                            let (qid, enq) = queue_of[&c];
                            r.offer_failed(now, qid, CallId(c), enq, agent, outcome);
                            if outcome == OfferOutcome::Withdrawn {
                                queue_of.remove(&c);
                            }
                        }
                    }
                    Op::Answer(c) => {
                        if let Some(agent) = offered.remove(&c) {
                            r.answered(agent, CallId(c));
                            connected.insert(c, agent);
                        }
                    }
                    Op::End(c) => {
                        if let Some(agent) = connected.remove(&c) {
                            r.call_ended(now, agent, CallId(c), Duration::from_secs(1));
                            queue_of.remove(&c);
                        }
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(u64::from(ms));
                        r.handle_timeout(now);
                    }
                }
                // No operator holds two calls; states match the offers.
                let mut held: HashMap<CallId, AgentId> = HashMap::new();
                for (i, a) in r.agents().iter().enumerate() {
                    if let AgentState::Ringing(c) | AgentState::OnCall(c) = a.state {
                        prop_assert!(held.insert(c, AgentId(i as u32)).is_none(), "call {c} held twice");
                    }
                }
                for (c, a) in offered.iter().chain(connected.iter()) {
                    prop_assert_eq!(held.get(&CallId(*c)), Some(a));
                }
                prop_assert_eq!(held.len(), offered.len() + connected.len());
            }
        }
    }
}
