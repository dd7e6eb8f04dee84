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
use crate::pool::Index;

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
///
/// Laid out by hand (`repr(C)`): what the router reads and writes on every
/// offer, answer, end and wrap-up, and the tenant, fill the first cache
/// line, the pool memberships follow in the second and third (their
/// length word at byte 64, fifteen inline at 72–191, more on the heap);
/// the attributes and the name, read when pools are made, come last. At
/// 40,000 operators the table is far larger than a core's cache, so each
/// line an event touches is a likely miss (the realistic routing hour's
/// cost is those misses). Hence:
/// - fifteen memberships inline, not eight: an operator in a dozen pools
///   (the realistic hour's) kept them on the heap, one more miss, and a
///   dependent one, each time they were taken or freed; fifteen, not
///   sixteen, because then the length word comes first (checked by a
///   test: the order of the `SmallVec`'s fields is rustc's), in the line
///   paired with the hot one, where with sixteen it came after them, in
///   a fourth line;
/// - aligned to 128 bytes (384 in all, 256 before, 104 of them padding):
///   the first two lines are one aligned pair, which the cores fetch
///   together (the adjacent line prefetcher), so the length and the
///   first seven memberships come with the hot line.
///
/// With the timers told stale by `Router::epochs` and the weighted pools'
/// levels kept by the pool: +6 % to +15 % router calls/s on the realistic
/// hour in nine interleaved pairs, median +12 %, with sixteen inline; the
/// final fifteen, not told apart from sixteen, median +7.5 % and +9 % in
/// two later series on a noisier VM (README, performance); 128 bytes
/// more per operator (15 MB at 120,000).
#[derive(Clone, Debug)]
#[repr(C, align(128))]
pub struct Agent {
    /// Current state.
    pub state: AgentState,
    idle_since: i64,
    answered_at: i64,
    /// Talk time since start.
    pub talk: Duration,
    queue_of_call: u32,
    /// Calls answered since start.
    pub calls: u32,
    /// Consecutive missed offers.
    pub missed: u32,
    /// `attributes.tenant`, at the end of the first line: the counts
    /// per tenant change with every state.
    tenant: u16,
    logout_pending: bool,
    /// Removed from the configuration: logged out for good, in no pool
    /// and no count, until an operator of the same name is added again.
    pub(super) retired: bool,
    memberships: SmallVec<[Membership; 15]>,
    /// Skills, languages, site, tenant, listed queues.
    pub attributes: Attributes,
    /// Username (never a metric label).
    pub name: String,
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

/// Laid out by hand (`repr(C)`) so what indexing an operator and picking
/// one read (the index, the strategy, the cursor) share the first cache
/// line; the counters of members by state follow. The two counters every
/// freed operator reads in each of its pools live in [`Tally`].
#[repr(C, align(64))]
struct Pool {
    index: Index,
    /// Copied from the queue and group: a decision reads one struct.
    strategy: Strategy,
    ring: u8,
    cursor: u32,
    group: u32,
    weight: f64,
    /// Members, and among them: staffed (logged in, not paused), paused.
    members: u32,
    staffed: u32,
    paused: u32,
}

/// The counters of a pool that operators' state changes read and write
/// in each of their pools (about twelve per operator at 40,000
/// operators with a third of calls asking for a skill level): kept
/// apart from [`Pool`] in one dense array, 8 bytes a pool, so a freed
/// operator's check of its pools for waiting calls and the counts kept
/// when they become available or are taken touch a few cache lines
/// instead of one line per pool.
#[derive(Clone, Copy, Default)]
struct Tally {
    /// Members available now.
    available: u32,
    /// Live waiting calls this pool's operators may take (those of its
    /// group at steps `ring..`): an operator freed while none waits is
    /// indexed without reading the group.
    waiting: u32,
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
    /// Each operator's epoch, bumped per offer and answer: a lease or
    /// wrap-up timer armed in another epoch is stale. Apart from
    /// [`Agent`], 4 bytes each (160 KB at 40,000): most timers met are
    /// leases an answer made stale, and telling so from the operator's
    /// record was a cache miss each (most of `handle_timeout`'s own time).
    epochs: Vec<u32>,
    queues: Vec<Queue>,
    groups: Vec<Group>,
    group_of: IdMap<(u32, Option<u32>), u32>,
    /// The group of each queue without a call requirement (the common case,
    /// no hashing).
    plain_group: Vec<u32>,
    pools: Vec<Pool>,
    /// Per pool, as `pools`.
    tallies: Vec<Tally>,
    extras: Vec<Requirement>,
    extra_of: HashMap<String, u32>,
    calls: Vec<CallSlot>,
    free: Vec<u32>,
    slot_of: IdMap<CallId, u32>,
    seq: u64,
    timers: Timers,
    out: VecDeque<Output>,
    by_tenant: Vec<[u32; 7]>,
    /// The operators of each tenant (clamped as in `by_tenant`), retired
    /// ones included: a new group visits only the tenants its rings admit
    /// instead of every operator.
    of_tenant: Vec<Vec<u32>>,
    scratch: Vec<WaitEntry>,
    skip_heap: Vec<Reverse<(u64, u64, u32, u32)>>,
    skip_pos: Vec<(u32, u32)>,
    rng: SplitMix64,
    /// Retired operators' slots by name (one added again gets theirs).
    retired: HashMap<String, u32>,
}

#[cfg(test)]
impl Router {
    /// Entries held by every pool's index, stale ones included.
    pub(crate) fn index_entries(&self) -> usize {
        self.pools.iter().map(|p| p.index.len()).sum()
    }

    /// Each pool's `available` tally equals a recount of its members whose
    /// state is `Available`.
    pub(crate) fn check_tallies(&self) -> Result<(), String> {
        let mut count = vec![0u32; self.pools.len()];
        for a in &self.agents {
            if a.state == AgentState::Available {
                for m in &a.memberships {
                    count[m.pool as usize] += 1;
                }
            }
        }
        for (p, (t, want)) in self.tallies.iter().zip(count).enumerate() {
            if t.available != want {
                return Err(format!("pool {p}: available {} but {want}", t.available));
            }
        }
        Ok(())
    }

    /// Each group's live count per step equals its valid heap entries, and
    /// each pool's `waiting` equals its group's live calls at steps it
    /// serves (what lets a freed operator skip a pool unread).
    pub(crate) fn check_waiting(&self) -> Result<(), String> {
        for (gi, g) in self.groups.iter().enumerate() {
            for (step, heap) in g.steps.iter().enumerate() {
                let valid = heap
                    .iter()
                    .filter(|Reverse((.., s, tk))| {
                        let c = &self.calls[*s as usize];
                        c.status == CallStatus::Waiting && c.ticket == *tk
                    })
                    .count();
                if valid != g.live[step] as usize {
                    return Err(format!(
                        "group {gi} step {step}: live {} but {valid} valid",
                        g.live[step]
                    ));
                }
            }
            for (ring, &p) in g.pools.iter().enumerate() {
                let want: u32 = g.live[ring..].iter().sum();
                let got = self.tallies[p as usize].waiting;
                if got != want {
                    return Err(format!(
                        "group {gi} ring {ring}: waiting {got}, live {want}"
                    ));
                }
            }
        }
        Ok(())
    }
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

impl Agent {
    /// A logged-out operator in no pool yet.
    pub(super) fn new(name: String, attributes: Attributes) -> Self {
        Self {
            state: AgentState::LoggedOut,
            idle_since: 0,
            answered_at: 0,
            talk: Duration::ZERO,
            queue_of_call: 0,
            calls: 0,
            missed: 0,
            tenant: attributes.tenant,
            logout_pending: false,
            retired: false,
            memberships: SmallVec::new(),
            attributes,
            name,
        }
    }
}

// The layout `Agent` is written for: the hot fields and the tenant in
// the first line, the memberships starting the second (the first line's
// pair; where their length word sits, the `layout` test checks), six
// lines in all.
const _: () = assert!(std::mem::offset_of!(Agent, tenant) < 64);
const _: () = assert!(std::mem::offset_of!(Agent, memberships) == 64);
const _: () = assert!(size_of::<Agent>() == 384);

/// Board words for `n` configured operators: room for operators added
/// live (as many again, at least 65,536 more: a firm's whole staff
/// imported at once); beyond that, a restart. A cell is 16 bytes.
pub(crate) fn board_capacity(n: usize) -> usize {
    n.saturating_add(n.max(ROOM))
}

/// Operators that can always be added live.
const ROOM: usize = 65_536;

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
            board: Arc::new(Board::new(board_capacity(agents.len()))),
            agents: Vec::with_capacity(agents.len()),
            epochs: Vec::with_capacity(agents.len()),
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
            tallies: Vec::new(),
            extras: Vec::new(),
            extra_of: HashMap::new(),
            calls: Vec::new(),
            free: Vec::new(),
            slot_of: IdMap::default(),
            seq: 0,
            timers: Timers::default(),
            out: VecDeque::new(),
            by_tenant: vec![[0; 7]; tenants.max(1)],
            of_tenant: vec![Vec::new(); tenants.max(1)],
            scratch: Vec::with_capacity(SCAN),
            skip_heap: Vec::with_capacity(SCAN + 1),
            skip_pos: Vec::with_capacity(SCAN + 1),
            rng: SplitMix64(0x5EED_0FCE_474A_1100),
            retired: HashMap::new(),
        };
        for (name, mut attributes) in agents {
            normalise(&mut attributes);
            let tenant = usize::from(attributes.tenant).min(r.by_tenant.len() - 1);
            r.by_tenant[tenant][Code::LoggedOut as usize] += 1;
            r.of_tenant[tenant].push(r.agents.len() as u32);
            r.agents.push(Agent::new(name, attributes));
            r.epochs.push(0);
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

    /// Operators that can still be added without a restart.
    pub fn room(&self) -> usize {
        self.board.len().saturating_sub(self.agents.len())
    }

    /// The shared board (atomic state per operator), for readers and for
    /// other threads that take operators out of `Available`.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// Moves the board's coarse clock (time in state) to `unix` seconds.
    pub fn tick_board(&self, unix: i64) {
        self.board.tick(unix);
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

    /// Adds a queue (a reload): it gets the next id, its first group
    /// exists at once with every operator it reaches (operators given it
    /// by a later `set_attributes` join then). `None`: too many groups.
    pub fn add_queue(&mut self, settings: QueueSettings) -> Option<QueueId> {
        let id = u32::try_from(self.queues.len()).ok()?;
        self.queues.push(Queue {
            settings,
            arrivals: VecDeque::new(),
            count: 0,
            aht: 0.0,
        });
        match self.group(id, None) {
            Ok(g) => {
                self.plain_group.push(g);
                Some(QueueId(id))
            }
            Err(_) => {
                self.queues.pop();
                None
            }
        }
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Whether queue `id` takes one more call (below its `max_waiting`).
    pub fn has_room(&self, id: QueueId) -> bool {
        let q = &self.queues[id.0 as usize];
        (q.count as usize) < q.settings.max_waiting
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
        let available = self.tallies[g.pools[0] as usize].available;
        QueueAgents {
            members: p.members,
            available,
            busy: p.staffed - available,
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
}

// One `impl Router` per concern; the tables and types stay here.
mod agents;
mod matching;
mod pools;

#[cfg(test)]
mod layout {
    use super::*;

    /// What the const asserts cannot see: the order rustc gives the
    /// `SmallVec`'s own fields. Its length word comes first, at byte 64,
    /// so every walk of the memberships reads it in the line paired with
    /// the hot one, and the fifteen inline memberships fill bytes 72–191.
    #[test]
    fn the_memberships_length_is_in_the_hot_pair() {
        let a = Agent::new("x".into(), Attributes::default());
        let base = &raw const a as usize;
        assert_eq!(size_of_val(&a.memberships), 128);
        assert_eq!(a.memberships.as_ptr() as usize - base, 72);
    }
}
