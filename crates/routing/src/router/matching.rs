//! Calls and operators meeting: waiting calls placed in their groups,
//! the best operator picked for a call and the best call for an operator,
//! offers and their outcomes, and the timers that age and overflow calls.

use super::*;

impl Router {
    pub(super) fn alloc_slot(&mut self) -> u32 {
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

    pub(super) fn free_slot(&mut self, s: u32) {
        let c = &mut self.calls[s as usize];
        // A call still placed would leave its group's and pools' waiting
        // counts one too high: callers unplace first.
        debug_assert!(
            c.status != CallStatus::Waiting || {
                let g = &self.groups[c.group as usize];
                !g.steps[c.step as usize]
                    .iter()
                    .any(|Reverse((.., slot, tk))| *slot == s && *tk == c.ticket)
            },
            "a placed call freed"
        );
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
                let extra = self.extra_id(r)?;
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
    pub(super) fn place(&mut self, s: u32) {
        let c = &mut self.calls[s as usize];
        c.ticket += 1;
        c.status = CallStatus::Waiting;
        let e = Reverse((c.class, c.key, c.seq, s, c.ticket));
        let (g, step) = (c.group as usize, c.step as usize);
        let group = &mut self.groups[g];
        group.steps[step].push(e);
        group.live[step] += 1;
        for &p in &group.pools[..=step] {
            self.tallies[p as usize].waiting += 1;
        }
        if group.steps[step].len() > 2 * group.live[step] as usize + 64 {
            let calls = &self.calls;
            group.steps[step].retain(|Reverse((_, _, _, s, tk))| {
                let c = &calls[*s as usize];
                c.status == CallStatus::Waiting && c.ticket == *tk
            });
        }
    }

    /// Takes a waiting call out of its heap (the entry goes stale).
    pub(super) fn unplace(&mut self, s: u32) {
        let c = &mut self.calls[s as usize];
        if c.status == CallStatus::Waiting {
            c.ticket += 1;
            let (g, step) = (c.group as usize, c.step as usize);
            let group = &mut self.groups[g];
            group.live[step] -= 1;
            for &p in &group.pools[..=step] {
                self.tallies[p as usize].waiting -= 1;
            }
        }
    }

    /// Picks an available operator from a pool for call slot `s`, skipping
    /// those the call already tried. The operator is
    /// taken on the board (CAS); stale entries met on the way are dropped.
    pub(super) fn pick(&mut self, pool: u32, s: u32) -> Option<u32> {
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
        if self.tallies[pool as usize].available == 0 {
            return None;
        }
        let p = &mut self.pools[pool as usize];
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
                    // A position is its operator's alone: available on
                    // the board now is valid, at the version seen.
                    let a = f.slots[pos as usize];
                    let seen = board.load(a as usize);
                    if seen.code != Code::Available {
                        f.set(pos, 0);
                        continue;
                    }
                    let v = seen.version;
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

    pub(super) fn pick_fifo(
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

    /// A new epoch for operator `a`: their timers armed before are stale.
    pub(super) fn new_epoch(&mut self, a: u32) -> u32 {
        let e = &mut self.epochs[a as usize];
        *e = e.wrapping_add(1);
        *e
    }

    /// Looks for operators for a waiting call among those it has not tried;
    /// offers if found. Returns whether an offer was made.
    pub(super) fn match_call(&mut self, t: i64, s: u32) -> bool {
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
    pub(super) fn offer(&mut self, t: i64, s: u32, a: u32) {
        let c = &mut self.calls[s as usize];
        c.status = CallStatus::Offered;
        c.offers.push(a);
        let (call, queue, waited) = (c.id, c.queue, t - c.enqueued);
        let epoch = self.new_epoch(a);
        let agent = &mut self.agents[a as usize];
        agent.queue_of_call = queue;
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
    pub(super) fn score(&self, t: i64, e: &WaitEntry, weight: f64) -> (u8, f64) {
        let Reverse((class, key, ..)) = *e;
        if class == URGENT {
            (URGENT, key as f64)
        } else {
            (NORMAL, -((t - key) as f64) * weight)
        }
    }

    /// Operator `a` just became available: find it the best call among the
    /// heads of the groups it serves.
    pub(super) fn match_agent(&mut self, t: i64, a: u32) {
        if self.agents[a as usize].state != AgentState::Available {
            return;
        }
        let Some(s) = self.best_call(t, a) else {
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

    /// The waiting call operator `a` should take next: the best-scored
    /// valid head among the groups and steps its pools serve.
    pub(super) fn best_call(&mut self, t: i64, a: u32) -> Option<u32> {
        // (score, group, step, entry)
        let mut best: Option<((u8, f64), u32, usize, WaitEntry)> = None;
        for mi in 0..self.agents[a as usize].memberships.len() {
            let m = self.agents[a as usize].memberships[mi];
            if self.tallies[m.pool as usize].waiting == 0 {
                continue;
            }
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
        best.map(|(_, _, _, Reverse((.., s, _)))| s)
    }

    /// The best valid entry of a step heap that operator `a` has not tried
    /// (looking up to `SCAN` deep); stale heads are dropped.
    pub(super) fn head_for(&mut self, g: u32, step: usize, a: u32) -> Option<WaitEntry> {
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

    /// The offer to `agent` ended and the call leaves with it, never
    /// offered again here: another node's call handed over to this node
    /// goes back to its own node. The operator is released as after any
    /// failed offer (a miss counts towards `max_no_answer`); others still
    /// reserved for the call are withdrawn.
    pub fn give_up(&mut self, now: Instant, call: CallId, agent: AgentId, outcome: OfferOutcome) {
        let t = self.at(now);
        if let Some(&s) = self.slot_of.get(&call) {
            self.unplace(s);
            self.free_offers(t, s, call, Some(agent.0));
        }
        self.release(t, agent.0, call, outcome);
    }

    /// Frees a call's slot and releases the operators still reserved for
    /// it (all but `keep`). The offers list goes back to the free slot so
    /// its capacity is reused: no allocation per call.
    pub(super) fn free_offers(&mut self, t: i64, s: u32, call: CallId, keep: Option<u32>) {
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

    /// Keeps `agent`'s reservation for `call` for `lease` from now (plus
    /// the usual grace) instead of the queue's ring timeout: a preview
    /// campaign's operator reads the contact before anything rings, and
    /// their phone rings with a fresh lease once they accept. Returns
    /// whether the operator was still reserved for that call.
    pub fn hold(&mut self, now: Instant, agent: AgentId, call: CallId, lease: Duration) -> bool {
        let t = self.at(now);
        let a = &self.agents[agent.0 as usize];
        if !matches!(a.state, AgentState::Reserved(c) | AgentState::Ringing(c) if c == call) {
            return false;
        }
        // A new epoch: the lease armed with the offer is stale from now.
        let epoch = self.new_epoch(agent.0);
        self.timers
            .arm(t, ns(lease + LEASE_GRACE), Timer::Lease(agent.0, epoch));
        true
    }

    /// The operator's phone rings (180 from its leg).
    pub fn ringing(&mut self, agent: AgentId, call: CallId) {
        if self.agents[agent.0 as usize].state == AgentState::Reserved(call) {
            self.set(agent.0, AgentState::Ringing(call));
        }
    }

    /// An operator reserved or ringing for `call` is released: available,
    /// or paused after `max_no_answer` misses in a row, or logged out.
    pub(super) fn release(&mut self, t: i64, a: u32, call: CallId, outcome: OfferOutcome) {
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
        // A new epoch: the offer's lease is stale from now, and is known
        // to be from `epochs` alone when it fires.
        self.new_epoch(a);
        let agent_data = &mut self.agents[a as usize];
        agent_data.missed = 0;
        agent_data.calls += 1;
        agent_data.answered_at = t;
        self.set(a, AgentState::OnCall(call));
        if let Some(&s) = self.slot_of.get(&call) {
            self.free_offers(t, s, call, Some(a));
        }
    }

    /// Reserves `agent`, available now, for `call` of `queue` outside the
    /// queues' matching (a transfer naming them): an `Offer` follows, with
    /// the queue's ring timeout as lease. `false` when they are not
    /// available (or another thread took them first). The call is not in
    /// the router: a failed offer only releases the operator.
    pub fn reserve_named(
        &mut self,
        now: Instant,
        agent: AgentId,
        call: CallId,
        queue: QueueId,
    ) -> bool {
        let t = self.at(now);
        let a = agent.0;
        if self.agents[a as usize].state != AgentState::Available {
            return false;
        }
        let seen = self.board.load(a as usize);
        if seen.code != Code::Available
            || self
                .board
                .take(a as usize, seen.version, Code::Reserved, 0)
                .is_err()
        {
            return false;
        }
        let epoch = self.new_epoch(a);
        self.agents[a as usize].queue_of_call = queue.0;
        self.account(a, AgentState::Available, AgentState::Reserved(call));
        let lease = self.queues[queue.0 as usize].settings.ring_timeout + LEASE_GRACE;
        self.timers.arm(t, ns(lease), Timer::Lease(a, epoch));
        self.out.push_back(Output::Offer(Decision {
            call,
            agent,
            queue,
            waited: Duration::ZERO,
        }));
        true
    }

    /// The operator talking on `from` goes on talking on `to` (an attended
    /// transfer hands a consultation's operator the caller's call): same
    /// state, same talk clock; `false` when they were not on `from`.
    pub fn move_call(&mut self, agent: AgentId, from: CallId, to: CallId) -> bool {
        let a = &mut self.agents[agent.0 as usize];
        if a.state != AgentState::OnCall(from) {
            return false;
        }
        // The board holds the state's code only: nothing changes there.
        a.state = AgentState::OnCall(to);
        true
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

    pub(super) fn end_call(&mut self, now: Instant, agent: AgentId, call: CallId, pause: bool) {
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
            let epoch = self.epochs[a as usize];
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
                // The epoch first: a stale timer is dropped without
                // reading the operator's record.
                Timer::WrapUp(a, epoch) if self.epochs[a as usize] == epoch => {
                    if self.agents[a as usize].state == AgentState::WrapUp {
                        self.make_available(due, a);
                    }
                }
                Timer::Lease(a, epoch) if self.epochs[a as usize] == epoch => {
                    if let AgentState::Reserved(call) | AgentState::Ringing(call) =
                        self.agents[a as usize].state
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
                Timer::WrapUp(..) | Timer::Lease(..) => {}
            }
        }
    }

    /// Opens the next overflow ring for a call (or all of them, urgently,
    /// for a fragile call reaching its guarantee).
    pub(super) fn advance(&mut self, t: i64, s: u32, seq: u64, urgent: bool) {
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

    /// The queue's recent handle time (talk and wrap-up, a moving average
    /// of its calls' ends): `None` before its first call ended.
    pub fn queue_handle_time(&self, id: QueueId) -> Option<Duration> {
        let aht = self.queues[id.0 as usize].aht;
        (aht > 0.0).then(|| Duration::from_nanos(aht as u64))
    }

    /// Number of distinct (queue, requirement) groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}
