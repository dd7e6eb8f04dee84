//! Groups and pools: the operators who can take a queue's calls (with an
//! extra requirement, per overflow ring), kept as indexes the matcher
//! scans without allocating.

use super::*;

impl Router {
    /// Interns a call requirement set (e.g. from an IVR or the API).
    pub(super) fn extra_id(&mut self, r: &Requirement) -> Result<u32, EnqueueError> {
        if let Some(&i) = self.extra_of.get(r.as_str()) {
            return Ok(i);
        }
        // A new requirement makes a new group: none once they are all
        // taken (the table of requirements stays bounded with them).
        if self.groups.len() >= MAX_GROUPS {
            return Err(EnqueueError::TooManyGroups);
        }
        let i = self.extras.len() as u32;
        self.extras.push(r.clone());
        self.extra_of.insert(r.as_str().to_owned(), i);
        Ok(i)
    }

    /// Whether calls of `queue` with requirement `r` have been seen here
    /// (their group exists): another node's call with a requirement this
    /// node never used is a new group, which only a bounded number of
    /// such calls may create.
    pub fn knows(&self, queue: QueueId, r: Option<&Requirement>) -> bool {
        match r {
            None => true,
            Some(r) => self
                .extra_of
                .get(r.as_str())
                .is_some_and(|&e| self.group_of.contains_key(&(queue.0, Some(e)))),
        }
    }

    /// The group of (queue, extra), created on first use.
    pub(super) fn group(&mut self, queue: u32, extra: Option<u32>) -> Result<u32, EnqueueError> {
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
                | Strategy::WeightedRandom => Index::Fenwick(Box::default()),
            };
            self.pools.push(Pool {
                index,
                strategy: settings.strategy,
                ring: r as u8,
                cursor: 0,
                group: g,
                weight: settings.weight,
                members: 0,
                staffed: 0,
                paused: 0,
            });
            self.tallies.push(Tally::default());
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
        // Only operators of the tenants the rings admit can match: each
        // ring's requirement is confined to them (`within_tenants`) unless
        // its expression names tenants itself, and then every operator is
        // tried. A new group (a queue's first call with an IVR answer's
        // requirement) evaluates its requirement once per candidate on
        // the engine's thread: at 40,000 operators in 50 firms, 800
        // instead of 40,000. Those candidates come from the operators
        // filed by tenant, so the other 39,200 are not even read (a cache
        // miss each: reading them all was most of a new group's cost).
        let s = &self.queues[queue as usize].settings;
        let tenants: Option<Vec<u16>> = (!s.requirement.names_tenants()
            && !s.rings.iter().any(|r| r.requirement.names_tenants()))
        .then(|| {
            std::iter::once(s.tenant)
                .chain(s.rings.iter().flat_map(|r| r.tenants.iter().copied()))
                .collect()
        });
        // The candidates in operator order, as a scan of every operator
        // would join them: a Fenwick pool's positions (hence `Linear`'s
        // hunt order) follow the order of joining.
        let candidates: Vec<u32> = match &tenants {
            Some(t) => {
                let last = self.of_tenant.len() - 1;
                let mut buckets: Vec<usize> = t.iter().map(|&x| usize::from(x).min(last)).collect();
                buckets.sort_unstable();
                buckets.dedup();
                let mut v: Vec<u32> = buckets
                    .iter()
                    .flat_map(|&b| self.of_tenant[b].iter().copied())
                    .collect();
                v.sort_unstable();
                // Each operator is filed once; should that ever break, a
                // second `join_group` would count them twice.
                v.dedup();
                v
            }
            None => (0..self.agents.len() as u32).collect(),
        };
        for a in candidates {
            let agent = &self.agents[a as usize];
            // A bucket past the last holds several tenants: checked again.
            let outside = tenants
                .as_ref()
                .is_some_and(|t| !t.contains(&agent.attributes.tenant));
            if !agent.retired && !outside {
                self.join_group(g, a);
            }
        }
        Ok(g)
    }

    /// The requirement of ring `r` of a group.
    pub(super) fn ring_requirement(&self, g: &Group, r: usize) -> Requirement {
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

    pub(super) fn join_group(&mut self, g: u32, a: u32) {
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
            // Weighted random weighs a member by their level, kept by the
            // pool from here on (their attributes change only through
            // `set_attributes`, which joins them again).
            Index::Fenwick(f) if p.strategy == Strategy::WeightedRandom => f.push(a, level),
            Index::Fenwick(f) => f.push(a, 1),
            Index::Levels(_) => u32::from(level),
            _ => 0,
        };
        let m = Membership { pool, pos };
        let agent = &mut self.agents[a as usize];
        agent.memberships.push(m);
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
            self.index_push(a, m, ver);
        }
    }

    pub(super) fn is_staffed(code: Code) -> bool {
        !matches!(code, Code::LoggedOut | Code::Paused)
    }

    pub(super) fn index_push(&mut self, a: u32, m: Membership, ver: u32) {
        let agent = &self.agents[a as usize];
        let p = &mut self.pools[m.pool as usize];
        let live = &mut self.tallies[m.pool as usize].available;
        *live += 1;
        let live = *live as usize;
        match &mut p.index {
            Index::Fifo(q) => q.push_back((a, ver)),
            Index::Levels(l) => l[m.pos as usize].push_back((a, ver)),
            Index::Heap(h) => {
                let metric = match p.strategy {
                    Strategy::LeastTalkTime => agent.talk.as_millis() as u64,
                    _ => u64::from(agent.calls),
                };
                h.push(Reverse((metric, agent.idle_since as u64, a, ver)));
            }
            Index::Fenwick(f) => f.enable(m.pos),
        }
        Self::compact(&self.board, p, m.pos, live);
    }

    /// Drops stale entries of the list just pushed to (the level `pos` of
    /// a levels pool) once they outnumber the pool's `live` ones (amortised
    /// O(1)). Only that list is read: summing a levels pool's eleven lists
    /// on every push was six cache lines each time. Each level is bounded
    /// alone, so a levels pool holds at most eleven times the bound.
    pub(super) fn compact(board: &Board, p: &mut Pool, pos: u32, live: usize) {
        let bound = 2 * live + 64;
        let valid = |&(a, v): &(u32, u32)| {
            let s = board.load(a as usize);
            s.code == Code::Available && s.version == v
        };
        match &mut p.index {
            Index::Fifo(q) if q.len() > bound => q.retain(valid),
            Index::Levels(l) if l[pos as usize].len() > bound => l[pos as usize].retain(valid),
            Index::Heap(h) if h.len() > bound => {
                h.retain(|Reverse((_, _, a, v))| valid(&(*a, *v)));
            }
            // Positions are reused, never stale beyond the members.
            _ => {}
        }
    }

    /// Bookkeeping when an operator enters `Available` (indexes, counts).
    pub(super) fn enter_available(&mut self, a: u32, ver: u32) {
        for i in 0..self.agents[a as usize].memberships.len() {
            let m = self.agents[a as usize].memberships[i];
            self.index_push(a, m, ver);
        }
    }

    /// Bookkeeping when an operator leaves `Available`.
    ///
    /// Index entries are left in place: stale (by version, or in a Fenwick
    /// pool by the board's state), they are dropped (or, in a Fenwick pool,
    /// zeroed) when a pick meets them, so taking an operator costs one
    /// counter per pool.
    pub(super) fn leave_available(&mut self, a: u32) {
        for m in &self.agents[a as usize].memberships {
            self.tallies[m.pool as usize].available -= 1;
        }
    }
}
