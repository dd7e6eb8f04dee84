//! The router: operators, queues, pools and waiting calls, and the two
//! decisions (a call arrives; an operator becomes available).
//!
//! Shape of the indexes:
//! - a **group** is a queue plus the call's own requirement set (most calls
//!   have none); it holds the waiting calls, one min-heap per overflow step,
//!   keyed by (urgency, virtual enqueue time, sequence);
//! - a **pool** is one ring of a group: the operators whose *innermost*
//!   matching ring is that ring. Membership is computed once when the group
//!   is created (O(operators), bounded number of groups) and kept when an
//!   operator's attributes change, so a decision never evaluates an
//!   expression.
//!
//! A call at step `s` may take operators of rings `0..=s` (inner first); an
//! operator of ring `r` may take calls at steps `r..`. Priority ages: a
//! call's virtual enqueue time is its enqueue time minus `priority ×
//! priority_step`, so a higher priority is worth a bounded head start and
//! never starves anyone (a low-priority call is overtaken only by calls that
//! arrived less than the head start after it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use centralino_types::{AgentId, CallId, QueueId};

use smallvec::SmallVec;

use crate::SplitMix64;
use crate::board::{Board, Code, Slot};
use crate::expr::{Attributes, Requirement};
use crate::pool::{Fenwick, Index};

/// How a queue chooses among eligible available operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The operator idle the longest (default).
    LongestIdle,
    /// The highest level of the queue's main skill; ties: longest idle.
    MostProficient,
    /// The least talk time since start; ties: longest idle.
    LeastTalkTime,
    /// The fewest calls answered since start; ties: longest idle.
    FewestCalls,
    /// The next available operator after the last one chosen, in
    /// configuration order.
    RoundRobin,
    /// The first available operator in configuration order (top-down).
    Linear,
    /// Uniformly at random.
    Random,
    /// At random, weighted by the level of the queue's main skill.
    WeightedRandom,
    /// Offer to up to this many operators at once (longest idle first);
    /// the first to answer wins, the others are released.
    RingAll(u8),
}

impl Strategy {
    /// One of each (ring-all 3 wide), for tests and benches.
    pub const EACH: [Self; 9] = [
        Self::LongestIdle,
        Self::MostProficient,
        Self::LeastTalkTime,
        Self::FewestCalls,
        Self::RoundRobin,
        Self::Linear,
        Self::Random,
        Self::WeightedRandom,
        Self::RingAll(3),
    ];

    /// Config names, for errors.
    pub const NAMES: &'static str = "longest_idle, most_proficient, least_talk_time, fewest_calls, round_robin, linear, random, weighted_random, ring_all";

    /// Parses a config name (`ring_all` offers to `ring_all_width`).
    pub fn from_name(name: &str, ring_all_width: u8) -> Option<Self> {
        Some(match name {
            "longest_idle" => Self::LongestIdle,
            "most_proficient" => Self::MostProficient,
            "least_talk_time" => Self::LeastTalkTime,
            "fewest_calls" => Self::FewestCalls,
            "round_robin" => Self::RoundRobin,
            "linear" => Self::Linear,
            "random" => Self::Random,
            "weighted_random" => Self::WeightedRandom,
            "ring_all" => Self::RingAll(ring_all_width.max(1)),
            _ => return None,
        })
    }
}

/// An overflow ring: after `after` of waiting, operators matching
/// `requirement` (in the queue's tenant or `tenants`) may take the call too.
#[derive(Clone, Debug)]
pub struct Ring {
    /// Wait after which the ring opens.
    pub after: Duration,
    /// Who qualifies in this ring (replaces the queue's requirement).
    pub requirement: Requirement,
    /// Other tenants admitted by an overflow agreement.
    pub tenants: Vec<u16>,
}

/// A queue's routing settings.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// Name (a metric label).
    pub name: String,
    /// Tenant index.
    pub tenant: u16,
    /// Strategy.
    pub strategy: Strategy,
    /// Who may take its calls (ring 0), always within the queue's tenant
    /// unless the expression names tenants itself.
    pub requirement: Requirement,
    /// Overflow rings, by increasing `after`.
    pub rings: Vec<Ring>,
    /// How long an operator's phone rings before the next one is tried.
    pub ring_timeout: Duration,
    /// Consecutive missed offers before the operator is paused.
    pub max_no_answer: u32,
    /// Longest wait before the queue's exit.
    pub max_wait: Duration,
    /// Wrap-up after each call (blocks the operator in every queue).
    pub wrap_up: Duration,
    /// Most calls in the queue (waiting or being offered).
    pub max_waiting: usize,
    /// Weight against the operator's other queues (1.0 = neutral).
    pub weight: f64,
    /// What one point of priority is worth in waiting time.
    pub priority_step: Duration,
    /// A fragile caller's guaranteed maximum wait; `None` = no guarantee.
    pub fragile_max_wait: Option<Duration>,
    /// When every free operator has tried a call, how long before they are
    /// offered it again.
    pub retry: Duration,
}

impl QueueSettings {
    /// Defaults for a queue served by operators who list it.
    pub fn new(name: &str, id: QueueId, tenant: u16) -> Self {
        Self {
            name: name.to_owned(),
            tenant,
            strategy: Strategy::LongestIdle,
            requirement: Requirement::member_of(id.0, name),
            rings: Vec::new(),
            ring_timeout: Duration::from_secs(15),
            max_no_answer: 3,
            max_wait: Duration::from_secs(300),
            wrap_up: Duration::ZERO,
            max_waiting: 1000,
            weight: 1.0,
            priority_step: Duration::from_secs(60),
            fragile_max_wait: None,
            retry: Duration::from_secs(5),
        }
    }
}

/// What a call asks for beyond its queue.
#[derive(Clone, Debug, Default)]
pub struct CallSpec {
    /// Higher is served earlier (each point is worth the queue's
    /// `priority_step` of waiting). Clamped to ±100.
    pub priority: i32,
    /// Extra requirements (e.g. language chosen in the IVR).
    pub requirement: Option<Requirement>,
    /// A fragile caller: the queue's `fragile_max_wait` applies.
    pub fragile: bool,
    /// Time already waited elsewhere (a callback keeps the time its
    /// request was made): it counts in the queue order like any wait.
    pub waited: Duration,
}

/// Why an operator is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseReason {
    /// Too many unanswered offers in a row.
    NoAnswer,
    /// Logged in paused by configuration or by the operator.
    Manual,
    /// Their phone went silent during a call (dead, off the network).
    MediaLost,
}

impl PauseReason {
    fn aux(self) -> u8 {
        match self {
            Self::NoAnswer => 1,
            Self::Manual => 2,
            Self::MediaLost => 3,
        }
    }

    /// The reason stored in a board slot's aux byte.
    pub fn from_aux(aux: u8) -> Self {
        match aux {
            1 => Self::NoAnswer,
            3 => Self::MediaLost,
            _ => Self::Manual,
        }
    }

    /// A bounded label (desktops, logs).
    pub fn label(self) -> &'static str {
        match self {
            Self::NoAnswer => "no_answer",
            Self::Manual => "manual",
            Self::MediaLost => "media_lost",
        }
    }
}

/// An operator's state as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// Not registered or logged off.
    LoggedOut,
    /// Ready for a call.
    Available,
    /// Chosen for a call, not yet ringing.
    Reserved(CallId),
    /// A call is being offered (the phone rings).
    Ringing(CallId),
    /// Talking.
    OnCall(CallId),
    /// After-call work.
    WrapUp,
    /// Paused with a reason.
    Paused(PauseReason),
}

impl AgentState {
    /// The board code.
    pub fn code(&self) -> Code {
        match self {
            Self::LoggedOut => Code::LoggedOut,
            Self::Available => Code::Available,
            Self::Reserved(_) => Code::Reserved,
            Self::Ringing(_) => Code::Ringing,
            Self::OnCall(_) => Code::OnCall,
            Self::WrapUp => Code::WrapUp,
            Self::Paused(_) => Code::Paused,
        }
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        self.code().label()
    }
}

/// An operator as the router sees it.
#[derive(Clone, Debug)]
pub struct Agent {
    /// Username (never a metric label).
    pub name: String,
    /// Skills, languages, site, tenant, listed queues.
    pub attributes: Attributes,
    /// Current state.
    pub state: AgentState,
    /// Consecutive missed offers.
    pub missed: u32,
    /// Calls answered since start.
    pub calls: u32,
    /// Talk time since start.
    pub talk: Duration,
    idle_since: i64,
    answered_at: i64,
    logout_pending: bool,
    /// Bumped per offer, so a stale lease or wrap-up timer is recognised.
    epoch: u32,
    queue_of_call: u32,
    memberships: SmallVec<[Membership; 8]>,
}

#[derive(Clone, Copy, Debug)]
struct Membership {
    pool: u32,
    /// Position in a Fenwick pool, level in a levels pool.
    pos: u32,
}

/// A routing decision: offer `call` to `agent` (now `Reserved`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The waiting call.
    pub call: CallId,
    /// The chosen operator.
    pub agent: AgentId,
    /// The queue it waited in.
    pub queue: QueueId,
    /// How long it waited.
    pub waited: Duration,
}

/// What the router asks of its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Ring this operator for this call.
    Offer(Decision),
    /// The reservation's lease ran out without an answer or a failure
    /// report: the router took the call back; stop ringing the operator.
    Reclaimed {
        /// The call, waiting again at its place.
        call: CallId,
        /// The operator released.
        agent: AgentId,
    },
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The queue holds `max_waiting` calls.
    #[error("queue full")]
    QueueFull,
    /// The call id is already known.
    #[error("call already routed")]
    Duplicate,
    /// Too many distinct call requirement sets.
    #[error("too many distinct requirement sets")]
    TooManyGroups,
}

/// Operators of a queue by coarse state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueAgents {
    /// Operators the queue reaches in its first ring.
    pub members: u32,
    /// Ready for a call.
    pub available: u32,
    /// Reserved, ringing, talking or in wrap-up.
    pub busy: u32,
    /// Paused.
    pub paused: u32,
    /// Logged out.
    pub logged_out: u32,
}

impl QueueAgents {
    /// `(label, count)` pairs for metrics.
    pub fn labelled(&self) -> [(&'static str, u32); 4] {
        [
            ("available", self.available),
            ("busy", self.busy),
            ("paused", self.paused),
            ("logged_out", self.logged_out),
        ]
    }
}

/// Position and estimated wait of a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// 1 = next to be served among calls competing for the same operators.
    pub position: u32,
    /// Operators who could take it (logged in, not paused).
    pub staffed: u32,
    /// Expected wait from now; `None` before any handle time is known or
    /// while nobody is staffed.
    pub wait: Option<Duration>,
}

/// Most operators rung at once by ring-all.
pub const MAX_RING_ALL: usize = 16;
/// Most distinct (queue, call requirement) groups.
pub const MAX_GROUPS: usize = 4096;
/// How deep a decision looks past calls or operators it must skip (tried).
const SCAN: usize = 64;
/// Extra time a reservation lives beyond the queue's ring timeout.
const LEASE_GRACE: Duration = Duration::from_secs(5);

const URGENT: u8 = 0;
const NORMAL: u8 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CallStatus {
    Free,
    Waiting,
    Offered,
}

struct CallSlot {
    id: CallId,
    status: CallStatus,
    /// Bumped whenever the call is (re)placed in a heap or leaves it:
    /// heap entries with another ticket are stale.
    ticket: u64,
    queue: u32,
    group: u32,
    step: u8,
    class: u8,
    key: i64,
    seq: u64,
    enqueued: i64,
    fragile: bool,
    tried: Vec<u32>,
    offers: Vec<u32>,
    retries: u32,
}

/// A heap entry: (class, key, seq, slot, ticket); min first.
type WaitEntry = Reverse<(u8, i64, u64, u32, u64)>;

struct Group {
    queue: u32,
    /// Call requirement index, if any.
    extra: Option<u32>,
    /// Pool per ring.
    pools: Vec<u32>,
    /// Requirement per ring (tenant restriction and call extra included).
    reqs: Vec<Requirement>,
    /// Waiting calls per step.
    steps: Vec<BinaryHeap<WaitEntry>>,
    live: Vec<u32>,
    /// The skill whose level ranks operators (most proficient, weighted).
    primary: Option<u16>,
}

struct Pool {
    group: u32,
    ring: u8,
    /// Copied from the queue and group: a decision reads one struct.
    strategy: Strategy,
    weight: f64,
    primary: Option<u16>,
    index: Index,
    /// Members, and among them: staffed (logged in, not paused),
    /// available, paused.
    members: u32,
    staffed: u32,
    available: u32,
    paused: u32,
    cursor: u32,
}

struct Queue {
    settings: QueueSettings,
    /// Every call in the queue (waiting or offered) in arrival order:
    /// (enqueued, slot, seq); stale once the slot's seq differs.
    arrivals: VecDeque<(i64, u32, u64)>,
    count: u32,
    /// Recent handle time (EWMA), ns; 0 = unknown.
    aht: f64,
}

/// Most distinct delays with their own FIFO; more go to a heap.
const TIMER_LISTS: usize = 64;

/// Timers whose delay is fixed per kind and queue (ring timeout, wrap-up,
/// ring openings, fragile guarantee): one FIFO per distinct delay keeps
/// deadlines in order because time is monotonic, so arming is O(1) and the
/// next deadline is the minimum of a few fronts. Delays beyond
/// `TIMER_LISTS` distinct values share a heap.
#[derive(Default)]
struct Timers {
    lists: Vec<(i64, VecDeque<(i64, Timer)>)>,
    heap: BinaryHeap<Reverse<(i64, Timer)>>,
}

impl Timers {
    fn arm(&mut self, now: i64, delay: i64, timer: Timer) {
        let due = now.saturating_add(delay);
        let i = match self.lists.iter().position(|(d, _)| *d == delay) {
            Some(i) => i,
            None if self.lists.len() < TIMER_LISTS => {
                self.lists.push((delay, VecDeque::new()));
                self.lists.len() - 1
            }
            None => {
                self.heap.push(Reverse((due, timer)));
                return;
            }
        };
        let list = &mut self.lists[i].1;
        // Never out of order, even if a caller's clock stepped back.
        let due = list.back().map_or(due, |&(b, _)| due.max(b));
        list.push_back((due, timer));
    }

    fn next(&self) -> Option<i64> {
        let lists = self
            .lists
            .iter()
            .filter_map(|(_, l)| l.front().map(|e| e.0));
        lists
            .chain(self.heap.peek().map(|Reverse((t, _))| *t))
            .min()
    }

    fn pop_due(&mut self, now: i64) -> Option<(i64, Timer)> {
        let mut best: Option<(i64, usize)> = None;
        for (i, (_, l)) in self.lists.iter().enumerate() {
            if let Some(&(t, _)) = l.front()
                && t <= now
                && best.is_none_or(|(b, _)| t < b)
            {
                best = Some((t, i));
            }
        }
        if let Some(&Reverse((t, timer))) = self.heap.peek()
            && t <= now
            && best.is_none_or(|(b, _)| t < b)
        {
            self.heap.pop();
            return Some((t, timer));
        }
        let (_, i) = best?;
        self.lists[i].1.pop_front()
    }
}

impl Queue {
    /// Drops departed calls from the front of the arrival list (amortised
    /// O(1)): the front is then the oldest call still in the queue.
    fn trim_arrivals(&mut self, calls: &[CallSlot]) {
        while let Some(&(_, slot, seq)) = self.arrivals.front() {
            let c = &calls[slot as usize];
            if c.status != CallStatus::Free && c.seq == seq {
                break;
            }
            self.arrivals.pop_front();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Step(u32, u64),
    Fragile(u32, u64),
    WrapUp(u32, u32),
    Lease(u32, u32),
    Retry(u32, u64, u32),
}

/// The router. One owner drives it (`&mut self`); other threads read the
/// [`Board`] and may take available operators with a compare-and-swap,
/// reporting it with [`Router::sync_agent`].
pub struct Router {
    t0: Instant,
    last: i64,
    board: Arc<Board>,
    agents: Vec<Agent>,
    queues: Vec<Queue>,
    groups: Vec<Group>,
    group_of: IdMap<(u32, Option<u32>), u32>,
    /// The group of each queue without a call requirement (the common case,
    /// no hashing).
    plain_group: Vec<u32>,
    pools: Vec<Pool>,
    extras: Vec<Requirement>,
    extra_of: HashMap<String, u32>,
    calls: Vec<CallSlot>,
    free: Vec<u32>,
    slot_of: IdMap<CallId, u32>,
    seq: u64,
    timers: Timers,
    out: VecDeque<Output>,
    by_tenant: Vec<[u32; 7]>,
    scratch: Vec<WaitEntry>,
    skip_heap: Vec<Reverse<(u64, u64, u32, u32)>>,
    skip_pos: Vec<(u32, u32)>,
    rng: SplitMix64,
}

/// Multiplicative hashing for the router's integer keys: SipHash's DoS
/// resistance is not needed for ids the node assigns itself, and it cost a
/// measurable share of each decision.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

fn normalise(a: &mut Attributes) {
    a.skills.sort_unstable();
    a.skills.dedup_by_key(|s| s.0);
    a.queues.sort_unstable();
    a.queues.dedup();
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Router {
    /// A router over these queues and operators (all logged out).
    /// `tenants` is the number of tenants.
    pub fn new(
        now: Instant,
        queues: Vec<QueueSettings>,
        tenants: usize,
        agents: Vec<(String, Attributes)>,
    ) -> Self {
        let mut r = Self {
            t0: now,
            last: 0,
            board: Arc::new(Board::new(agents.len())),
            agents: Vec::with_capacity(agents.len()),
            queues: queues
                .into_iter()
                .map(|settings| Queue {
                    settings,
                    arrivals: VecDeque::new(),
                    count: 0,
                    aht: 0.0,
                })
                .collect(),
            groups: Vec::new(),
            group_of: IdMap::default(),
            plain_group: Vec::new(),
            pools: Vec::new(),
            extras: Vec::new(),
            extra_of: HashMap::new(),
            calls: Vec::new(),
            free: Vec::new(),
            slot_of: IdMap::default(),
            seq: 0,
            timers: Timers::default(),
            out: VecDeque::new(),
            by_tenant: vec![[0; 7]; tenants.max(1)],
            scratch: Vec::with_capacity(SCAN),
            skip_heap: Vec::with_capacity(SCAN + 1),
            skip_pos: Vec::with_capacity(SCAN + 1),
            rng: SplitMix64(0x5EED_0FCE_474A_1100),
        };
        for (name, mut attributes) in agents {
            normalise(&mut attributes);
            let tenant = usize::from(attributes.tenant).min(r.by_tenant.len() - 1);
            r.by_tenant[tenant][Code::LoggedOut as usize] += 1;
            r.agents.push(Agent {
                name,
                attributes,
                state: AgentState::LoggedOut,
                missed: 0,
                calls: 0,
                talk: Duration::ZERO,
                idle_since: 0,
                answered_at: 0,
                logout_pending: false,
                epoch: 0,
                queue_of_call: 0,
                memberships: SmallVec::new(),
            });
        }
        // The plain group of every queue exists from the start, so the
        // per-queue counts cover every operator a queue reaches.
        for q in 0..r.queues.len() as u32 {
            let g = r.group(q, None).expect("fewer queues than MAX_GROUPS");
            r.plain_group.push(g);
        }
        r
    }

    fn at(&mut self, now: Instant) -> i64 {
        // Time never runs backwards inside the router: FIFO pools rely on it.
        let t = ns(now.saturating_duration_since(self.t0));
        self.last = self.last.max(t);
        self.last
    }

    fn instant(&self, t: i64) -> Instant {
        self.t0 + Duration::from_nanos(t.max(0) as u64)
    }

    /// The shared board (atomic state per operator), for readers and for
    /// other threads that take operators out of `Available`.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
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

    /// Takes new settings for a queue (a reload): what each decision and
    /// each new timer reads (ring timeout, wrap-up, waits, limits, weight,
    /// priority step, fragile guarantee, retry) applies from the next
    /// event; timers already armed keep their deadline. The name, tenant,
    /// strategy, requirement and rings shape the queue's groups and pools:
    /// a change there is refused, naming the first that differs.
    pub fn update_queue(&mut self, id: QueueId, new: QueueSettings) -> Result<(), &'static str> {
        let q = self.queues.get_mut(id.0 as usize).ok_or("no such queue")?;
        let old = &q.settings;
        let same_rings = old.rings.len() == new.rings.len()
            && old.rings.iter().zip(&new.rings).all(|(a, b)| {
                a.after == b.after && a.requirement == b.requirement && a.tenants == b.tenants
            });
        let shape = if old.name != new.name {
            Some("name")
        } else if old.tenant != new.tenant {
            Some("tenant")
        } else if old.strategy != new.strategy {
            Some("strategy")
        } else if old.requirement != new.requirement {
            Some("requirements")
        } else if !same_rings {
            Some("overflow")
        } else {
            None
        };
        if let Some(field) = shape {
            return Err(field);
        }
        q.settings = new;
        Ok(())
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Calls in a queue, waiting or being offered (read-only).
    pub fn waiting_count(&self, id: QueueId) -> usize {
        self.queues[id.0 as usize].count as usize
    }

    /// Calls in a queue (waiting or being offered) and the oldest enqueue
    /// time among them.
    pub fn waiting(&mut self, id: QueueId) -> (usize, Option<Instant>) {
        let q = &mut self.queues[id.0 as usize];
        q.trim_arrivals(&self.calls);
        let oldest = q.arrivals.front().map(|&(t, ..)| t);
        (q.count as usize, oldest.map(|t| self.instant(t)))
    }

    /// Operators a queue reaches in its first ring, by coarse state. Read
    /// from the pool's counters: nothing is counted per queue on the
    /// decision path.
    pub fn queue_agents(&self, id: QueueId) -> QueueAgents {
        let g = &self.groups[self.plain_group[id.0 as usize] as usize];
        let p = &self.pools[g.pools[0] as usize];
        QueueAgents {
            members: p.members,
            available: p.available,
            busy: p.staffed - p.available,
            paused: p.paused,
            logged_out: p.members - p.staffed - p.paused,
        }
    }

    /// Operators per state in a tenant.
    pub fn tenant_states(&self, tenant: usize) -> [u32; 7] {
        self.by_tenant.get(tenant).copied().unwrap_or_default()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Interns a call requirement set (e.g. from an IVR or the API).
    fn extra_id(&mut self, r: &Requirement) -> u32 {
        if let Some(&i) = self.extra_of.get(r.as_str()) {
            return i;
        }
        let i = self.extras.len() as u32;
        self.extras.push(r.clone());
        self.extra_of.insert(r.as_str().to_owned(), i);
        i
    }

    /// The group of (queue, extra), created on first use.
    fn group(&mut self, queue: u32, extra: Option<u32>) -> Result<u32, EnqueueError> {
        if let Some(&g) = self.group_of.get(&(queue, extra)) {
            return Ok(g);
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(EnqueueError::TooManyGroups);
        }
        let settings = &self.queues[queue as usize].settings;
        let rings = 1 + settings.rings.len();
        let g = self.groups.len() as u32;
        let primary = settings
            .requirement
            .primary_skill()
            .or_else(|| extra.and_then(|e| self.extras[e as usize].primary_skill()));
        let mut pools = Vec::with_capacity(rings);
        for r in 0..rings {
            pools.push(self.pools.len() as u32);
            let index = match settings.strategy {
                Strategy::LongestIdle | Strategy::RingAll(_) => Index::Fifo(VecDeque::new()),
                Strategy::MostProficient => Index::Levels(Box::default()),
                Strategy::LeastTalkTime | Strategy::FewestCalls => Index::Heap(BinaryHeap::new()),
                Strategy::RoundRobin
                | Strategy::Linear
                | Strategy::Random
                | Strategy::WeightedRandom => Index::Fenwick(Fenwick::default()),
            };
            self.pools.push(Pool {
                group: g,
                ring: r as u8,
                strategy: settings.strategy,
                weight: settings.weight,
                primary,
                index,
                members: 0,
                staffed: 0,
                available: 0,
                paused: 0,
                cursor: 0,
            });
        }
        let mut group = Group {
            queue,
            extra,
            pools,
            reqs: Vec::new(),
            steps: (0..rings).map(|_| BinaryHeap::new()).collect(),
            live: vec![0; rings],
            primary,
        };
        group.reqs = (0..rings)
            .map(|r| self.ring_requirement(&group, r))
            .collect();
        self.groups.push(group);
        self.group_of.insert((queue, extra), g);
        for a in 0..self.agents.len() as u32 {
            self.join_group(g, a);
        }
        Ok(g)
    }

    /// The requirement of ring `r` of a group.
    fn ring_requirement(&self, g: &Group, r: usize) -> Requirement {
        let s = &self.queues[g.queue as usize].settings;
        let base = if r == 0 {
            s.requirement.within_tenants(&[s.tenant])
        } else {
            let ring = &s.rings[r - 1];
            let mut tenants = vec![s.tenant];
            tenants.extend_from_slice(&ring.tenants);
            ring.requirement.within_tenants(&tenants)
        };
        match g.extra {
            Some(e) => base.and(&self.extras[e as usize]),
            None => base,
        }
    }

    fn join_group(&mut self, g: u32, a: u32) {
        let group = &self.groups[g as usize];
        let rings = group.pools.len();
        let attrs = &self.agents[a as usize].attributes;
        let Some(r) = (0..rings).find(|&r| group.reqs[r].matches(attrs)) else {
            return;
        };
        let pool = group.pools[r];
        let level = group.primary.map_or(1, |s| attrs.level(s)).max(1);
        let p = &mut self.pools[pool as usize];
        let pos = match &mut p.index {
            Index::Fenwick(f) => f.push(a),
            Index::Levels(_) => u32::from(level),
            _ => 0,
        };
        let agent = &mut self.agents[a as usize];
        agent.memberships.push(Membership { pool, pos });
        let code = agent.state.code();
        let p = &mut self.pools[pool as usize];
        p.members += 1;
        if Self::is_staffed(code) {
            p.staffed += 1;
        }
        if code == Code::Paused {
            p.paused += 1;
        }
        if code == Code::Available {
            let ver = self.board.load(a as usize).version;
            self.index_push(a, Membership { pool, pos }, ver);
        }
    }

    fn is_staffed(code: Code) -> bool {
        !matches!(code, Code::LoggedOut | Code::Paused)
    }

    fn index_push(&mut self, a: u32, m: Membership, ver: u32) {
        let agent = &self.agents[a as usize];
        let idle = agent.idle_since as u64;
        let p = &mut self.pools[m.pool as usize];
        let (strategy, group_primary) = (p.strategy, p.primary);
        let metric = match strategy {
            Strategy::LeastTalkTime => agent.talk.as_millis() as u64,
            _ => u64::from(agent.calls),
        };
        let weight = match strategy {
            Strategy::WeightedRandom => u32::from(
                group_primary
                    .map_or(1, |s| agent.attributes.level(s))
                    .max(1),
            ),
            _ => 1,
        };
        p.available += 1;
        match &mut p.index {
            Index::Fifo(q) => q.push_back((a, ver)),
            Index::Levels(l) => l[m.pos as usize].push_back((a, ver)),
            Index::Heap(h) => h.push(Reverse((metric, idle, a, ver))),
            Index::Fenwick(f) => {
                f.slots[m.pos as usize] = (a, ver);
                f.set(m.pos, weight);
            }
        }
        Self::compact(&self.board, p);
    }

    /// Drops stale entries once they outnumber live ones (amortised O(1)).
    fn compact(board: &Board, p: &mut Pool) {
        let live = p.available as usize;
        if p.index.len() <= 2 * live + 64 {
            return;
        }
        let valid = |&(a, v): &(u32, u32)| {
            let s = board.load(a as usize);
            s.code == Code::Available && s.version == v
        };
        match &mut p.index {
            Index::Fifo(q) => q.retain(valid),
            Index::Levels(l) => l.iter_mut().for_each(|q| q.retain(valid)),
            Index::Heap(h) => h.retain(|Reverse((_, _, a, v))| valid(&(*a, *v))),
            Index::Fenwick(_) => {}
        }
    }

    /// Bookkeeping when an operator enters `Available` (indexes, counts).
    fn enter_available(&mut self, a: u32, ver: u32) {
        for i in 0..self.agents[a as usize].memberships.len() {
            let m = self.agents[a as usize].memberships[i];
            self.index_push(a, m, ver);
        }
    }

    /// Bookkeeping when an operator leaves `Available`.
    ///
    /// Index entries are left in place: stale by version, they are dropped
    /// (or, in a Fenwick pool, zeroed) when a pick meets them, so taking an
    /// operator costs one counter per pool.
    fn leave_available(&mut self, a: u32) {
        for m in &self.agents[a as usize].memberships {
            self.pools[m.pool as usize].available -= 1;
        }
    }

    /// Moves an operator to `to`, keeping the board, the indexes and the
    /// counts in step. Returns the new board slot.
    fn set(&mut self, a: u32, to: AgentState) -> Slot {
        let from = self.agents[a as usize].state;
        let seen = self.board.load(a as usize);
        let aux = match to {
            AgentState::Paused(r) => r.aux(),
            _ => 0,
        };
        let now_slot = match self.board.transition(a as usize, seen, to.code(), aux) {
            Ok(s) => s,
            // The router owns every transition except taking an available
            // operator; a failure here means another thread took it between
            // our load and our store. The router's decision stands: apply it
            // over what is there now (`cur`).
            Err(cur) => self
                .board
                .transition(a as usize, cur, to.code(), aux)
                .unwrap_or(cur),
        };
        self.account(a, from, to);
        now_slot
    }

    fn account(&mut self, a: u32, from: AgentState, to: AgentState) {
        let (fc, tc) = (from.code(), to.code());
        let agent = &mut self.agents[a as usize];
        agent.state = to;
        if fc == tc && from == to {
            return;
        }
        let tenant = usize::from(agent.attributes.tenant).min(self.by_tenant.len() - 1);
        self.by_tenant[tenant][fc as usize] -= 1;
        self.by_tenant[tenant][tc as usize] += 1;
        // Pool counters change only on login, logout and pause, not on
        // the reserve/answer/end cycle.
        let staffed_change = Self::is_staffed(fc) != Self::is_staffed(tc);
        let paused_change = (fc == Code::Paused) != (tc == Code::Paused);
        if staffed_change || paused_change {
            for m in &agent.memberships {
                let p = &mut self.pools[m.pool as usize];
                if staffed_change {
                    if Self::is_staffed(tc) {
                        p.staffed += 1;
                    } else {
                        p.staffed -= 1;
                    }
                }
                if paused_change {
                    if tc == Code::Paused {
                        p.paused += 1;
                    } else {
                        p.paused -= 1;
                    }
                }
            }
        }
        if fc == Code::Available && tc != Code::Available {
            self.leave_available(a);
        }
    }

    /// Makes an operator available now and looks for a call for it.
    fn make_available(&mut self, t: i64, a: u32) {
        if self.agents[a as usize].logout_pending {
            self.agents[a as usize].logout_pending = false;
            self.set(a, AgentState::LoggedOut);
            return;
        }
        self.agents[a as usize].idle_since = t;
        let slot = self.set(a, AgentState::Available);
        self.enter_available(a, slot.version);
        self.match_agent(t, a);
    }

    /// Another thread changed an operator's board word (e.g. paused it
    /// from the API): bring the router's view in line.
    pub fn sync_agent(&mut self, id: AgentId) {
        let a = id.0;
        let s = self.board.load(a as usize);
        let from = self.agents[a as usize].state;
        if s.code == from.code() {
            return;
        }
        let to = match s.code {
            Code::LoggedOut => AgentState::LoggedOut,
            Code::Available => AgentState::Available,
            Code::Paused => AgentState::Paused(PauseReason::from_aux(s.aux)),
            // Only `Available → LoggedOut | Paused` is allowed from outside;
            // anything else is left to the router's own transitions.
            _ => return,
        };
        self.account(a, from, to);
        if to == AgentState::Available {
            self.enter_available(a, s.version);
            let t = self.last;
            self.match_agent(t, a);
        }
    }

    /// Registration gained: the operator becomes available (or paused).
    /// Idempotent.
    pub fn login(&mut self, now: Instant, id: AgentId, paused: bool) {
        let t = self.at(now);
        let agent = &mut self.agents[id.0 as usize];
        agent.logout_pending = false;
        if agent.state != AgentState::LoggedOut {
            return;
        }
        agent.missed = 0;
        agent.idle_since = t;
        if paused {
            self.set(id.0, AgentState::Paused(PauseReason::Manual));
        } else {
            self.make_available(t, id.0);
        }
    }

    /// Registration lost. A reserved, ringing or talking operator keeps the
    /// call and is logged out when it ends. Idempotent.
    pub fn logout(&mut self, id: AgentId) {
        match self.agents[id.0 as usize].state {
            AgentState::Reserved(_) | AgentState::Ringing(_) | AgentState::OnCall(_) => {
                self.agents[id.0 as usize].logout_pending = true;
            }
            AgentState::LoggedOut => {}
            _ => {
                self.set(id.0, AgentState::LoggedOut);
            }
        }
    }

    /// Pauses or resumes an operator. Returns whether anything changed.
    pub fn set_paused(&mut self, now: Instant, id: AgentId, paused: bool) -> bool {
        let t = self.at(now);
        match (self.agents[id.0 as usize].state, paused) {
            (AgentState::Available | AgentState::WrapUp, true) => {
                self.set(id.0, AgentState::Paused(PauseReason::Manual));
                true
            }
            (AgentState::Paused(_), false) => {
                self.agents[id.0 as usize].missed = 0;
                self.make_available(t, id.0);
                true
            }
            _ => false,
        }
    }

    /// Replaces an operator's attributes (skills, languages, site, tenant,
    /// queues): its pool memberships are recomputed.
    pub fn set_attributes(&mut self, now: Instant, id: AgentId, mut attributes: Attributes) {
        let t = self.at(now);
        let a = id.0;
        normalise(&mut attributes);
        let code = self.agents[a as usize].state.code();
        for m in std::mem::take(&mut self.agents[a as usize].memberships) {
            let p = &mut self.pools[m.pool as usize];
            p.members -= 1;
            if Self::is_staffed(code) {
                p.staffed -= 1;
            }
            if code == Code::Paused {
                p.paused -= 1;
            }
            if code == Code::Available {
                p.available -= 1;
                if let Index::Fenwick(f) = &mut p.index {
                    f.set(m.pos, 0);
                }
            }
        }
        let tenants = self.by_tenant.len() - 1;
        let before = usize::from(self.agents[a as usize].attributes.tenant).min(tenants);
        let after = usize::from(attributes.tenant).min(tenants);
        self.by_tenant[before][code as usize] -= 1;
        self.by_tenant[after][code as usize] += 1;
        if code == Code::Available {
            // A new version makes every old index entry stale.
            let s = self.board.load(a as usize);
            let _ = self.board.transition(a as usize, s, Code::Available, 0);
        }
        self.agents[a as usize].attributes = attributes;
        for g in 0..self.groups.len() {
            self.join_group(g as u32, a);
        }
        if code == Code::Available {
            self.match_agent(t, a);
        }
    }

    fn alloc_slot(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        self.calls.push(CallSlot {
            id: CallId(0),
            status: CallStatus::Free,
            ticket: 0,
            queue: 0,
            group: 0,
            step: 0,
            class: NORMAL,
            key: 0,
            seq: 0,
            enqueued: 0,
            fragile: false,
            tried: Vec::new(),
            offers: Vec::new(),
            retries: 0,
        });
        (self.calls.len() - 1) as u32
    }

    fn free_slot(&mut self, s: u32) {
        let c = &mut self.calls[s as usize];
        let q = c.queue as usize;
        c.status = CallStatus::Free;
        c.ticket += 1;
        c.tried.clear();
        c.offers.clear();
        let id = c.id;
        self.queues[q].count -= 1;
        self.slot_of.remove(&id);
        self.free.push(s);
    }

    /// Queues a call. Offers follow through [`Self::poll_output`].
    pub fn enqueue(
        &mut self,
        now: Instant,
        queue: QueueId,
        call: CallId,
        spec: &CallSpec,
    ) -> Result<(), EnqueueError> {
        let t = self.at(now);
        let qi = queue.0;
        let q = &self.queues[qi as usize];
        if q.count as usize >= q.settings.max_waiting {
            return Err(EnqueueError::QueueFull);
        }
        if self.slot_of.contains_key(&call) {
            return Err(EnqueueError::Duplicate);
        }
        let group = match &spec.requirement {
            None => self.plain_group[qi as usize],
            Some(r) => {
                let extra = self.extra_id(r);
                self.group(qi, Some(extra))?
            }
        };
        let settings = &self.queues[qi as usize].settings;
        let priority = i64::from(spec.priority.clamp(-100, 100));
        let key = t
            .saturating_sub(priority.saturating_mul(ns(settings.priority_step)))
            .saturating_sub(ns(spec.waited));
        let fragile = spec.fragile && settings.fragile_max_wait.is_some();
        let ring_timeout = settings.ring_timeout;
        let first_ring = settings.rings.first().map(|r| r.after);
        let fragile_in = settings
            .fragile_max_wait
            .map(|m| ns(m.saturating_sub(ring_timeout)));
        self.seq += 1;
        let seq = self.seq;
        let s = self.alloc_slot();
        let c = &mut self.calls[s as usize];
        c.id = call;
        c.status = CallStatus::Waiting;
        c.queue = qi;
        c.group = group;
        c.step = 0;
        c.class = NORMAL;
        c.key = key;
        c.seq = seq;
        c.enqueued = t;
        c.fragile = fragile;
        self.slot_of.insert(call, s);
        let qd = &mut self.queues[qi as usize];
        qd.count += 1;
        qd.arrivals.push_back((t, s, seq));
        // Trimmed on every arrival too, so the list stays as long as the
        // queue even if nobody reads the oldest wait.
        qd.trim_arrivals(&self.calls);
        if let Some(after) = first_ring {
            self.timers.arm(t, ns(after), Timer::Step(s, seq));
        }
        if fragile && let Some(delay) = fragile_in {
            self.timers.arm(t, delay, Timer::Fragile(s, seq));
        }
        if !self.match_call(t, s) {
            self.place(s);
        }
        Ok(())
    }

    /// Puts a waiting call in its step's heap.
    fn place(&mut self, s: u32) {
        let c = &mut self.calls[s as usize];
        c.ticket += 1;
        c.status = CallStatus::Waiting;
        let e = Reverse((c.class, c.key, c.seq, s, c.ticket));
        let (g, step) = (c.group as usize, c.step as usize);
        let group = &mut self.groups[g];
        group.steps[step].push(e);
        group.live[step] += 1;
        if group.steps[step].len() > 2 * group.live[step] as usize + 64 {
            let calls = &self.calls;
            group.steps[step].retain(|Reverse((_, _, _, s, tk))| {
                let c = &calls[*s as usize];
                c.status == CallStatus::Waiting && c.ticket == *tk
            });
        }
    }

    /// Takes a waiting call out of its heap (the entry goes stale).
    fn unplace(&mut self, s: u32) {
        let c = &mut self.calls[s as usize];
        if c.status == CallStatus::Waiting {
            c.ticket += 1;
            let (g, step) = (c.group as usize, c.step as usize);
            self.groups[g].live[step] -= 1;
        }
    }

    /// Picks an available operator from a pool for call slot `s`, skipping
    /// those the call already tried. The operator is
    /// taken on the board (CAS); stale entries met on the way are dropped.
    fn pick(&mut self, pool: u32, s: u32) -> Option<u32> {
        let board: &Board = &self.board;
        let rng = &mut self.rng;
        // Reused scratch for operators set aside (tried): no allocation.
        let skip_heap = &mut self.skip_heap;
        let skip_pos = &mut self.skip_pos;
        let tried = &self.calls[s as usize].tried;
        let ok = |a: u32| !tried.contains(&a);
        let valid = |a: u32, v: u32| {
            let b = board.load(a as usize);
            b.code == Code::Available && b.version == v
        };
        let p = &mut self.pools[pool as usize];
        if p.available == 0 {
            return None;
        }
        let strategy = p.strategy;
        let chosen = match &mut p.index {
            Index::Fifo(q) => Self::pick_fifo(q, &valid, &ok),
            Index::Levels(l) => l
                .iter_mut()
                .rev()
                .find_map(|q| Self::pick_fifo(q, &valid, &ok)),
            Index::Heap(h) => {
                let mut chosen = None;
                let skipped = &mut *skip_heap;
                while let Some(&Reverse(e)) = h.peek() {
                    let (_, _, a, v) = e;
                    if !valid(a, v) {
                        h.pop();
                        continue;
                    }
                    if ok(a) {
                        h.pop();
                        chosen = Some((a, v));
                        break;
                    }
                    if skipped.len() >= SCAN {
                        break;
                    }
                    h.pop();
                    skipped.push(Reverse(e));
                }
                h.extend(skipped.drain(..));
                chosen
            }
            Index::Fenwick(f) => {
                let mut chosen = None;
                let skipped = &mut *skip_pos;
                loop {
                    let pos = match strategy {
                        Strategy::Linear => f.first_from(0),
                        Strategy::RoundRobin => f.first_from(p.cursor as usize),
                        _ => {
                            let total = f.total();
                            if total == 0 {
                                None
                            } else {
                                Some(f.find(rng.next_u64() % total))
                            }
                        }
                    };
                    let Some(pos) = pos else { break };
                    let (a, v) = f.slots[pos as usize];
                    if !valid(a, v) {
                        f.set(pos, 0);
                        continue;
                    }
                    if !ok(a) {
                        if skipped.len() >= SCAN {
                            break;
                        }
                        skipped.push((pos, f.weight(pos)));
                        f.set(pos, 0);
                        continue;
                    }
                    p.cursor = pos + 1;
                    chosen = Some((a, v));
                    break;
                }
                for (pos, w) in skipped.drain(..) {
                    f.set(pos, w);
                }
                chosen
            }
        };
        let (a, v) = chosen?;
        match self.board.take(a as usize, v, Code::Reserved, 0) {
            Ok(_) => Some(a),
            Err(_) => {
                // Taken by another thread in between: learn it, try again.
                self.sync_agent(AgentId(a));
                self.pick(pool, s)
            }
        }
    }

    fn pick_fifo(
        q: &mut VecDeque<(u32, u32)>,
        valid: &impl Fn(u32, u32) -> bool,
        ok: &impl Fn(u32) -> bool,
    ) -> Option<(u32, u32)> {
        let mut i = 0;
        let mut skipped = 0;
        while i < q.len() {
            let (a, v) = q[i];
            if !valid(a, v) {
                if i == 0 {
                    q.pop_front();
                } else {
                    q.remove(i);
                }
                continue;
            }
            if ok(a) {
                return if i == 0 { q.pop_front() } else { q.remove(i) };
            }
            skipped += 1;
            if skipped >= SCAN {
                return None;
            }
            i += 1;
        }
        None
    }

    /// Looks for operators for a waiting call among those it has not tried;
    /// offers if found. Returns whether an offer was made.
    fn match_call(&mut self, t: i64, s: u32) -> bool {
        let c = &self.calls[s as usize];
        let group = c.group as usize;
        let step = c.step as usize;
        let want = match self.queues[c.queue as usize].settings.strategy {
            Strategy::RingAll(n) => usize::from(n).min(MAX_RING_ALL),
            _ => 1,
        };
        // A fixed array: a decision allocates nothing.
        let mut got = [0u32; MAX_RING_ALL];
        let mut n = 0;
        for r in 0..=step {
            let pool = self.groups[group].pools[r];
            while n < want {
                match self.pick(pool, s) {
                    Some(a) => {
                        got[n] = a;
                        n += 1;
                    }
                    None => break,
                }
            }
        }
        for &a in &got[..n] {
            self.offer(t, s, a);
        }
        n > 0
    }

    /// The operator `a` is taken on the board already; record the offer.
    fn offer(&mut self, t: i64, s: u32, a: u32) {
        let c = &mut self.calls[s as usize];
        c.status = CallStatus::Offered;
        c.offers.push(a);
        let (call, queue, waited) = (c.id, c.queue, t - c.enqueued);
        let agent = &mut self.agents[a as usize];
        agent.epoch = agent.epoch.wrapping_add(1);
        agent.queue_of_call = queue;
        let epoch = agent.epoch;
        let from = agent.state;
        // The board already says Reserved (taken by CAS in `pick`).
        self.account(a, from, AgentState::Reserved(call));
        let lease = self.queues[queue as usize].settings.ring_timeout + LEASE_GRACE;
        self.timers.arm(t, ns(lease), Timer::Lease(a, epoch));
        self.out.push_back(Output::Offer(Decision {
            call,
            agent: AgentId(a),
            queue: QueueId(queue),
            waited: Duration::from_nanos(waited.max(0) as u64),
        }));
    }

    /// Effective score of a waiting call for an operator: lower is better.
    fn score(&self, t: i64, e: &WaitEntry, weight: f64) -> (u8, f64) {
        let Reverse((class, key, ..)) = *e;
        if class == URGENT {
            (URGENT, key as f64)
        } else {
            (NORMAL, -((t - key) as f64) * weight)
        }
    }

    /// Operator `a` just became available: find it the best call among the
    /// heads of the groups it serves.
    fn match_agent(&mut self, t: i64, a: u32) {
        if self.agents[a as usize].state != AgentState::Available {
            return;
        }
        // (score, group, step, entry)
        let mut best: Option<((u8, f64), u32, usize, WaitEntry)> = None;
        for mi in 0..self.agents[a as usize].memberships.len() {
            let m = self.agents[a as usize].memberships[mi];
            let (g, ring, weight) = {
                let p = &self.pools[m.pool as usize];
                (p.group, usize::from(p.ring), p.weight)
            };
            for step in ring..self.groups[g as usize].steps.len() {
                if self.groups[g as usize].live[step] == 0 {
                    continue;
                }
                let Some(e) = self.head_for(g, step, a) else {
                    continue;
                };
                let sc = self.score(t, &e, weight);
                let better = match &best {
                    None => true,
                    Some((b, _, _, be)) => {
                        sc.0 < b.0
                            || (sc.0 == b.0 && sc.1 < b.1)
                            || (sc.0 == b.0 && sc.1 == b.1 && e.0.2 < be.0.2)
                    }
                };
                if better {
                    best = Some((sc, g, step, e));
                }
            }
        }
        let Some((_, _, _, Reverse((.., s, _)))) = best else {
            return;
        };
        let v = self.board.load(a as usize).version;
        if self.board.take(a as usize, v, Code::Reserved, 0).is_err() {
            self.sync_agent(AgentId(a));
            return;
        }
        self.unplace(s);
        self.offer(t, s, a);
    }

    /// The best valid entry of a step heap that operator `a` has not tried
    /// (looking up to `SCAN` deep); stale heads are dropped.
    fn head_for(&mut self, g: u32, step: usize, a: u32) -> Option<WaitEntry> {
        let calls = &self.calls;
        let heap = &mut self.groups[g as usize].steps[step];
        let mut found = None;
        self.scratch.clear();
        while let Some(&e) = heap.peek() {
            let Reverse((_, _, _, s, tk)) = e;
            let c = &calls[s as usize];
            if c.status != CallStatus::Waiting || c.ticket != tk {
                heap.pop();
                continue;
            }
            if !c.tried.contains(&a) {
                found = Some(e);
                break;
            }
            if self.scratch.len() >= SCAN {
                break;
            }
            heap.pop();
            self.scratch.push(e);
        }
        heap.extend(self.scratch.drain(..));
        found
    }

    /// Removes a call (caller hung up, or max wait reached), waiting or
    /// being offered; operators ringing for it are released. Returns how
    /// long it waited.
    pub fn withdraw(&mut self, now: Instant, call: CallId) -> Option<Duration> {
        let t = self.at(now);
        let &s = self.slot_of.get(&call)?;
        let waited = t - self.calls[s as usize].enqueued;
        self.unplace(s);
        self.free_offers(t, s, call, None);
        Some(Duration::from_nanos(waited.max(0) as u64))
    }

    /// Frees a call's slot and releases the operators still reserved for
    /// it (all but `keep`). The offers list goes back to the free slot so
    /// its capacity is reused: no allocation per call.
    fn free_offers(&mut self, t: i64, s: u32, call: CallId, keep: Option<u32>) {
        let mut offers = std::mem::take(&mut self.calls[s as usize].offers);
        self.free_slot(s);
        for &o in &offers {
            if Some(o) != keep {
                self.release(t, o, call, OfferOutcome::Withdrawn);
            }
        }
        offers.clear();
        self.calls[s as usize].offers = offers;
    }

    /// The operator's phone rings (180 from its leg).
    pub fn ringing(&mut self, agent: AgentId, call: CallId) {
        if self.agents[agent.0 as usize].state == AgentState::Reserved(call) {
            self.set(agent.0, AgentState::Ringing(call));
        }
    }

    /// An operator reserved or ringing for `call` is released: available,
    /// or paused after `max_no_answer` misses in a row, or logged out.
    fn release(&mut self, t: i64, a: u32, call: CallId, outcome: OfferOutcome) {
        let agent = &mut self.agents[a as usize];
        if !matches!(agent.state, AgentState::Reserved(c) | AgentState::Ringing(c) if c == call) {
            return;
        }
        if outcome == OfferOutcome::NoAnswer {
            agent.missed += 1;
        }
        let max = self.queues[agent.queue_of_call as usize]
            .settings
            .max_no_answer
            .max(1);
        if outcome == OfferOutcome::NoAnswer && agent.missed >= max && !agent.logout_pending {
            self.set(a, AgentState::Paused(PauseReason::NoAnswer));
        } else {
            self.make_available(t, a);
        }
    }

    /// The offer to `agent` ended without an answer. The call returns to
    /// its place (same virtual enqueue time) unless the caller withdrew or
    /// other operators still ring for it (ring-all).
    pub fn offer_failed(
        &mut self,
        now: Instant,
        call: CallId,
        agent: AgentId,
        outcome: OfferOutcome,
    ) {
        let t = self.at(now);
        let a = agent.0;
        let Some(&s) = self.slot_of.get(&call) else {
            self.release(t, a, call, outcome);
            return;
        };
        let c = &mut self.calls[s as usize];
        let Some(i) = c.offers.iter().position(|&x| x == a) else {
            return;
        };
        c.offers.swap_remove(i);
        if outcome != OfferOutcome::Withdrawn && !c.tried.contains(&a) {
            c.tried.push(a);
        }
        let last = c.offers.is_empty();
        if outcome == OfferOutcome::Withdrawn && last {
            self.free_slot(s);
            self.release(t, a, call, outcome);
            return;
        }
        if last {
            // Back in its heap first, so the released operator's own
            // search sees it (and skips it: it is in `tried`).
            self.place(s);
        }
        self.release(t, a, call, outcome);
        if last
            && self.calls[s as usize].status == CallStatus::Waiting
            && self.calls[s as usize].id == call
        {
            self.unplace(s);
            if !self.match_call(t, s) {
                self.place(s);
                // Everyone free has tried it: retry them after the queue's
                // delay, not at once (an operator refusing with 486 would
                // otherwise be re-rung in a tight loop).
                let c = &mut self.calls[s as usize];
                c.retries = c.retries.wrapping_add(1);
                let (seq, n) = (c.seq, c.retries);
                let delay = ns(self.queues[c.queue as usize].settings.retry);
                self.timers.arm(t, delay, Timer::Retry(s, seq, n));
            }
        }
    }

    /// The operator answered: the call leaves the router; other operators
    /// ringing for it (ring-all) are released.
    pub fn answered(&mut self, now: Instant, agent: AgentId, call: CallId) {
        let t = self.at(now);
        let a = agent.0;
        if !matches!(self.agents[a as usize].state, AgentState::Reserved(c) | AgentState::Ringing(c) if c == call)
        {
            return;
        }
        let agent_data = &mut self.agents[a as usize];
        agent_data.missed = 0;
        agent_data.calls += 1;
        agent_data.answered_at = t;
        self.set(a, AgentState::OnCall(call));
        if let Some(&s) = self.slot_of.get(&call) {
            self.free_offers(t, s, call, Some(a));
        }
    }

    /// The call ended: wrap-up (the queue's), then available.
    pub fn call_ended(&mut self, now: Instant, agent: AgentId, call: CallId) {
        self.end_call(now, agent, call, false);
    }

    /// The call was lost with the operator's phone (no media): the
    /// operator is paused, never offered another call on a dead phone; they
    /// resume themselves.
    pub fn call_lost(&mut self, now: Instant, agent: AgentId, call: CallId) {
        self.end_call(now, agent, call, true);
    }

    fn end_call(&mut self, now: Instant, agent: AgentId, call: CallId, pause: bool) {
        let t = self.at(now);
        let a = agent.0;
        if self.agents[a as usize].state != AgentState::OnCall(call) {
            return;
        }
        let ag = &mut self.agents[a as usize];
        let talk = (t - ag.answered_at).max(0);
        ag.talk += Duration::from_nanos(talk as u64);
        let q = &mut self.queues[ag.queue_of_call as usize];
        // Handle time EWMA for the wait estimate (talk + wrap-up).
        let handle = talk as f64 + ns(q.settings.wrap_up) as f64;
        q.aht = if q.aht == 0.0 {
            handle
        } else {
            0.9 * q.aht + 0.1 * handle
        };
        let wrap = q.settings.wrap_up;
        if ag.logout_pending || (wrap.is_zero() && !pause) {
            self.make_available(t, a);
        } else if pause {
            self.set(a, AgentState::Paused(PauseReason::MediaLost));
        } else {
            let epoch = ag.epoch;
            self.set(a, AgentState::WrapUp);
            self.timers.arm(t, ns(wrap), Timer::WrapUp(a, epoch));
        }
    }

    /// The earliest timer (stale entries may make it early: a call to
    /// [`Self::handle_timeout`] then just drops them).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next().map(|t| self.instant(t))
    }

    /// Fires timers due at `now`: wrap-up ends, overflow steps, fragile
    /// escalations, reservation leases.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.at(now);
        while let Some((due, timer)) = self.timers.pop_due(t) {
            match timer {
                Timer::WrapUp(a, epoch) => {
                    let ag = &self.agents[a as usize];
                    if ag.state == AgentState::WrapUp && ag.epoch == epoch {
                        self.make_available(due, a);
                    }
                }
                Timer::Lease(a, epoch) => {
                    let ag = &self.agents[a as usize];
                    if let AgentState::Reserved(call) | AgentState::Ringing(call) = ag.state
                        && ag.epoch == epoch
                    {
                        self.out.push_back(Output::Reclaimed {
                            call,
                            agent: AgentId(a),
                        });
                        self.offer_failed(now, call, AgentId(a), OfferOutcome::NoAnswer);
                    }
                }
                Timer::Step(s, seq) => self.advance(t, s, seq, false),
                Timer::Retry(s, seq, n) => {
                    let c = &mut self.calls[s as usize];
                    if c.status == CallStatus::Waiting && c.seq == seq && c.retries == n {
                        c.tried.clear();
                        self.unplace(s);
                        if !self.match_call(t, s) {
                            self.place(s);
                        }
                    }
                }
                Timer::Fragile(s, seq) => self.advance(t, s, seq, true),
            }
        }
    }

    /// Opens the next overflow ring for a call (or all of them, urgently,
    /// for a fragile call reaching its guarantee).
    fn advance(&mut self, t: i64, s: u32, seq: u64, urgent: bool) {
        let c = &self.calls[s as usize];
        if c.status == CallStatus::Free || c.seq != seq {
            return;
        }
        let settings = &self.queues[c.queue as usize].settings;
        let last = settings.rings.len() as u8;
        let next_step = if urgent { last } else { (c.step + 1).min(last) };
        // Armed from now (not from the due time) so every timer list stays
        // in deadline order; a late driver delays the next ring as much.
        let next_timer = settings
            .rings
            .get(usize::from(next_step))
            .map(|r| (c.enqueued + ns(r.after) - t).max(0));
        let deadline = c.enqueued + settings.fragile_max_wait.map_or(0, ns);
        let waiting = c.status == CallStatus::Waiting;
        if waiting {
            self.unplace(s);
        }
        let c = &mut self.calls[s as usize];
        c.step = c.step.max(next_step);
        if urgent {
            c.class = URGENT;
            c.key = deadline;
        }
        if !urgent && let Some(delay) = next_timer {
            self.timers.arm(t, delay, Timer::Step(s, seq));
        }
        if waiting && !self.match_call(t, s) {
            self.place(s);
        }
    }

    /// Position and expected wait of a waiting call. O(calls in its group):
    /// for announcements and the API, not the decision path.
    pub fn estimate(&self, call: CallId) -> Option<Estimate> {
        let &s = self.slot_of.get(&call)?;
        let c = &self.calls[s as usize];
        let g = &self.groups[c.group as usize];
        let me = (c.class, c.key, c.seq);
        let mut ahead = 0u32;
        for heap in &g.steps {
            for Reverse((class, key, seq, slot, tk)) in heap.iter() {
                let o = &self.calls[*slot as usize];
                if o.status == CallStatus::Waiting && o.ticket == *tk && (*class, *key, *seq) < me {
                    ahead += 1;
                }
            }
        }
        let staffed: u32 = g.pools[..=usize::from(c.step)]
            .iter()
            .map(|&p| self.pools[p as usize].staffed)
            .sum();
        let aht = self.queues[c.queue as usize].aht;
        let wait = (aht > 0.0 && staffed > 0).then(|| {
            Duration::from_nanos((f64::from(ahead + 1) * aht / f64::from(staffed)) as u64)
        });
        Some(Estimate {
            position: ahead + 1,
            staffed,
            wait,
        })
    }

    /// Expected wait of a call arriving now in a queue without extra
    /// requirements: (calls in the queue + 1) × recent handle time / staffed
    /// operators of its first ring. O(1), for a gauge and announcements;
    /// `None` before any handle time is known or while nobody is staffed.
    pub fn queue_estimate(&self, id: QueueId) -> Option<Duration> {
        let q = &self.queues[id.0 as usize];
        let a = self.queue_agents(id);
        let staffed = a.available + a.busy;
        (q.aht > 0.0 && staffed > 0).then(|| {
            Duration::from_nanos((f64::from(q.count + 1) * q.aht / f64::from(staffed)) as u64)
        })
    }

    /// Number of distinct (queue, requirement) groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}
