//! Who is in the network and what each node reported last: a node is up
//! from its first summary and down once silent for [`MISSED`] heartbeats;
//! a restarted node (a new `boot`) starts its sequence again. The
//! national picture of a queue sums the nodes that are up.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::summary::{QueueSummary, Summary};

/// Heartbeats a node may miss before it is marked down.
pub const MISSED: u32 = 3;

/// Most nodes kept (a national network is tens of nodes; a flood of
/// invented names must not grow the table).
pub const MAX_NODES: usize = 1024;

/// A change in the network, for the log and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node was heard from (first time, or again after being down).
    Up(String),
    /// A node fell silent.
    Down(String),
    /// A node started again (a new boot) without being seen down.
    Restarted(String),
}

/// What one receiver knows of one node.
#[derive(Clone, Debug)]
struct Peer {
    boot: u64,
    seq: u64,
    last_seen: Instant,
    up: bool,
    summary: Summary,
}

/// A node as the national view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView<'a> {
    /// Its name.
    pub node: &'a str,
    /// Heard from within [`MISSED`] heartbeats.
    pub up: bool,
    /// Since its last summary.
    pub silent: Duration,
    /// Its last summary.
    pub summary: &'a Summary,
}

/// A queue across the network: the sum over the nodes that are up (this
/// one included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NationalQueue {
    /// The firm.
    pub tenant: String,
    /// The queue.
    pub queue: String,
    /// Nodes that have it, by name.
    pub nodes: Vec<String>,
    /// Calls waiting everywhere.
    pub waiting: u32,
    /// The oldest wait anywhere (ms).
    pub oldest_wait_ms: u64,
    /// Operators by state, everywhere.
    pub available: u32,
    /// See `available`.
    pub busy: u32,
    /// See `available`.
    pub paused: u32,
    /// See `available`.
    pub logged_out: u32,
}

/// A queue of another node with operators free now, and where that node
/// takes hand-overs: what this node may offer its waiting calls to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerQueue {
    /// The node.
    pub node: String,
    /// Its SIP address for hand-overs.
    pub sip: SocketAddr,
    /// The firm.
    pub tenant: String,
    /// The queue.
    pub queue: String,
    /// Operators free there now (as last reported).
    pub available: u32,
}

/// Why a summary was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Our own, echoed back by the server.
    Own,
    /// Older than one already taken (same boot, not a higher sequence).
    Stale,
    /// A new node while [`MAX_NODES`] are known.
    Full,
}

/// The network as one node sees it.
#[derive(Debug)]
pub struct Membership {
    me: String,
    heartbeat: Duration,
    peers: BTreeMap<String, Peer>,
    events: VecDeque<Event>,
}

impl Membership {
    /// `me` is this node's name; summaries are expected every
    /// `heartbeat`.
    pub fn new(me: &str, heartbeat: Duration) -> Self {
        Self {
            me: me.to_owned(),
            heartbeat,
            peers: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    /// A peer's summary, received at `now`.
    pub fn receive(&mut self, now: Instant, s: Summary) -> Result<(), Refused> {
        if s.node == self.me {
            return Err(Refused::Own);
        }
        let full = self.peers.len() >= MAX_NODES;
        match self.peers.get_mut(&s.node) {
            Some(p) => {
                // A boot is its start time: an older one is a replay of a
                // past life, never a restart.
                if s.boot < p.boot || (p.boot == s.boot && s.seq <= p.seq) {
                    return Err(Refused::Stale);
                }
                if p.boot != s.boot && p.up {
                    self.events.push_back(Event::Restarted(s.node.clone()));
                }
                if !p.up {
                    self.events.push_back(Event::Up(s.node.clone()));
                }
                p.boot = s.boot;
                p.seq = s.seq;
                p.last_seen = now;
                p.up = true;
                p.summary = s;
            }
            None if full => return Err(Refused::Full),
            None => {
                self.events.push_back(Event::Up(s.node.clone()));
                self.peers.insert(
                    s.node.clone(),
                    Peer {
                        boot: s.boot,
                        seq: s.seq,
                        last_seen: now,
                        up: true,
                        summary: s,
                    },
                );
            }
        }
        Ok(())
    }

    /// Marks down the nodes silent for [`MISSED`] heartbeats.
    pub fn tick(&mut self, now: Instant) {
        let limit = self.heartbeat * MISSED;
        for (name, p) in &mut self.peers {
            if p.up && now.saturating_duration_since(p.last_seen) >= limit {
                p.up = false;
                self.events.push_back(Event::Down(name.clone()));
            }
        }
    }

    /// When [`Membership::tick`] may next change something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let limit = self.heartbeat * MISSED;
        self.peers
            .values()
            .filter(|p| p.up)
            .map(|p| p.last_seen + limit)
            .min()
    }

    /// The next change, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Every node heard from (this one excluded), by name.
    pub fn nodes(&self, now: Instant) -> impl Iterator<Item = NodeView<'_>> {
        self.peers.iter().map(move |(name, p)| NodeView {
            node: name,
            up: p.up,
            silent: now.saturating_duration_since(p.last_seen),
            summary: &p.summary,
        })
    }

    /// Calls of firm `from` that the other nodes up report lent to firm
    /// `to` (agreements are counted nationally).
    pub fn lent_elsewhere(&self, from: &str, to: &str) -> u32 {
        self.peers
            .values()
            .filter(|p| p.up)
            .flat_map(|p| &p.summary.lent)
            .filter(|(f, t, _)| f == from && t == to)
            .fold(0u32, |n, (_, _, k)| n.saturating_add(*k))
    }

    /// The other nodes' queues with operators free now, on nodes up,
    /// not draining and taking hand-overs.
    pub fn offerable(&self) -> Vec<PeerQueue> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up && !p.summary.draining)
            .filter_map(|(n, p)| Some((n, p.summary.sip?, &p.summary.queues)))
            .flat_map(|(n, sip, queues)| {
                queues
                    .iter()
                    .filter(|q| q.available > 0)
                    .map(move |q| PeerQueue {
                        node: n.clone(),
                        sip,
                        tenant: q.tenant.clone(),
                        queue: q.queue.clone(),
                        available: q.available,
                    })
            })
            .collect()
    }

    /// Whether node `node`'s last summary lists a queue of firm `tenant`.
    pub fn serves(&self, node: &str, tenant: &str) -> bool {
        self.peers
            .get(node)
            .is_some_and(|p| p.summary.queues.iter().any(|q| q.tenant == tenant))
    }

    /// Where node `node` (up) sends and takes hand-overs.
    pub fn sip_of(&self, node: &str) -> Option<SocketAddr> {
        self.peers.get(node).filter(|p| p.up)?.summary.sip
    }

    /// What the other nodes up report lent, summed by (borrower,
    /// lender).
    pub fn lent_all(&self) -> Vec<(String, String, u32)> {
        let mut by: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        for (f, t, k) in self
            .peers
            .values()
            .filter(|p| p.up)
            .flat_map(|p| &p.summary.lent)
        {
            let n = by.entry((f.as_str(), t.as_str())).or_default();
            *n = n.saturating_add(*k);
        }
        by.into_iter()
            .map(|((f, t), n)| (f.to_owned(), t.to_owned(), n))
            .collect()
    }

    /// Nodes up, this one included.
    pub fn up(&self) -> usize {
        1 + self.peers.values().filter(|p| p.up).count()
    }

    /// Nodes known and down.
    pub fn down(&self) -> usize {
        self.peers.values().filter(|p| !p.up).count()
    }

    /// Each queue across the nodes that are up, this one's `mine`
    /// included, by (tenant, queue).
    pub fn national(&self, mine: &[QueueSummary]) -> Vec<NationalQueue> {
        let mut by: HashMap<(&str, &str), NationalQueue> = HashMap::new();
        let own = std::iter::once((self.me.as_str(), mine));
        let others = self
            .peers
            .iter()
            .filter(|(_, p)| p.up && !p.summary.draining)
            .map(|(n, p)| (n.as_str(), p.summary.queues.as_slice()));
        for (node, queues) in own.chain(others) {
            for q in queues {
                let n = by
                    .entry((q.tenant.as_str(), q.queue.as_str()))
                    .or_insert_with(|| NationalQueue {
                        tenant: q.tenant.clone(),
                        queue: q.queue.clone(),
                        ..NationalQueue::default()
                    });
                n.nodes.push(node.to_owned());
                n.waiting = n.waiting.saturating_add(q.waiting);
                n.oldest_wait_ms = n.oldest_wait_ms.max(q.oldest_wait_ms);
                n.available = n.available.saturating_add(q.available);
                n.busy = n.busy.saturating_add(q.busy);
                n.paused = n.paused.saturating_add(q.paused);
                n.logged_out = n.logged_out.saturating_add(q.logged_out);
            }
        }
        let mut v: Vec<NationalQueue> = by.into_values().collect();
        v.sort_by(|a, b| (&a.tenant, &a.queue).cmp(&(&b.tenant, &b.queue)));
        v
    }
}
