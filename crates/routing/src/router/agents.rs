//! Operators' states as the router keeps them: login, pause, attributes,
//! and the counts per queue and tenant that follow each change.

use super::*;

impl Router {
    /// Moves an operator to `to`, keeping the board, the indexes and the
    /// counts in step. Returns the new board slot.
    pub(super) fn set(&mut self, a: u32, to: AgentState) -> Slot {
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

    pub(super) fn account(&mut self, a: u32, from: AgentState, to: AgentState) {
        let (fc, tc) = (from.code(), to.code());
        let agent = &mut self.agents[a as usize];
        agent.state = to;
        if fc == tc && from == to {
            return;
        }
        let tenant = usize::from(agent.tenant).min(self.by_tenant.len() - 1);
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
    pub(super) fn make_available(&mut self, t: i64, a: u32) {
        if self.agents[a as usize].logout_pending {
            self.agents[a as usize].logout_pending = false;
            self.set(a, AgentState::LoggedOut);
            return;
        }
        self.agents[a as usize].idle_since = t;
        // A call already waiting for them is offered straight from the
        // state they leave (wrap-up, a call, a missed offer): the decision
        // `match_agent` would make once they were available, without
        // indexing them in each of their pools only for every entry to go
        // stale at once. While calls queue (the rush hour) that is every
        // release: 1.20 → 1.85 M decisions/s with 10,000 calls waiting
        // (`ROUTING_BENCH_ONLY=available`). Their board word never says
        // `Available` meanwhile, so no other thread can take them in
        // between.
        let was_available = self.agents[a as usize].state == AgentState::Available;
        if !was_available && let Some(s) = self.best_call(t, a) {
            let seen = self.board.load(a as usize);
            // As in `set`: the router owns this transition; a word changed
            // by another thread in between does not overrule it.
            if let Err(cur) = self.board.transition(a as usize, seen, Code::Reserved, 0) {
                let _ = self.board.transition(a as usize, cur, Code::Reserved, 0);
            }
            if seen.code == Code::Reserved {
                // A new offer (the last one failed before ringing): its
                // time on the wallboard starts now, as it did when the
                // operator passed through `Available` in between.
                self.board.restamp(a as usize);
            }
            self.unplace(s);
            self.offer(t, s, a);
            return;
        }
        let slot = self.set(a, AgentState::Available);
        self.enter_available(a, slot.version);
        // Nothing waits for them (just searched) unless they were already
        // available.
        if was_available {
            self.match_agent(t, a);
        }
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

    /// A new operator, logged out, in every pool its attributes reach (an
    /// operator of that name removed before gets their old slot back).
    /// `None`: the board is full (see [`board_capacity`]).
    pub fn add_agent(&mut self, name: &str, mut attributes: Attributes) -> Option<AgentId> {
        normalise(&mut attributes);
        let last = self.by_tenant.len() - 1;
        let tenant = usize::from(attributes.tenant).min(last);
        let a = match self.retired.remove(name) {
            Some(a) => {
                let before = usize::from(self.agents[a as usize].attributes.tenant).min(last);
                self.move_tenant(a, before, tenant);
                a as usize
            }
            None => {
                if self.agents.len() >= self.board.len() {
                    return None;
                }
                self.of_tenant[tenant].push(self.agents.len() as u32);
                self.agents
                    .push(Agent::new(name.to_owned(), attributes.clone()));
                self.epochs.push(0);
                self.agents.len() - 1
            }
        };
        let agent = &mut self.agents[a];
        agent.retired = false;
        agent.tenant = attributes.tenant;
        agent.attributes = attributes;
        self.by_tenant[tenant][Code::LoggedOut as usize] += 1;
        for g in 0..self.groups.len() {
            self.join_group(g as u32, a as u32);
        }
        Some(AgentId(a as u32))
    }

    /// Files operator `a` under tenant bucket `after` instead of `before`
    /// (a rare configuration change: a linear scan of one tenant's list).
    fn move_tenant(&mut self, a: u32, before: usize, after: usize) {
        if before != after {
            self.of_tenant[before].retain(|&x| x != a);
            self.of_tenant[after].push(a);
        }
    }

    /// Removes a logged-out operator (taken out of the configuration):
    /// out of every pool and count, never offered a call. Returns `false`
    /// while they are still logged in or on a call (the caller logs them
    /// out first and tries again once they are logged out).
    pub fn retire(&mut self, id: AgentId) -> bool {
        let a = id.0 as usize;
        if self.agents[a].retired {
            return true;
        }
        if self.agents[a].state != AgentState::LoggedOut {
            return false;
        }
        for m in std::mem::take(&mut self.agents[a].memberships) {
            let p = &mut self.pools[m.pool as usize];
            p.members -= 1;
            if let Index::Fenwick(f) = &mut p.index {
                f.release(m.pos);
            }
        }
        let tenant = usize::from(self.agents[a].attributes.tenant).min(self.by_tenant.len() - 1);
        self.by_tenant[tenant][Code::LoggedOut as usize] -= 1;
        self.agents[a].retired = true;
        self.agents[a].logout_pending = false;
        self.retired.insert(self.agents[a].name.clone(), id.0);
        true
    }

    /// Registration gained: the operator becomes available (or paused).
    /// Idempotent.
    pub fn login(&mut self, now: Instant, id: AgentId, paused: bool) {
        let t = self.at(now);
        let agent = &mut self.agents[id.0 as usize];
        if agent.retired {
            return;
        }
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
                self.tallies[m.pool as usize].available -= 1;
            }
            // Whatever their state: a stale weight is zeroed here rather
            // than by a pick, as the position goes to the next to join.
            if let Index::Fenwick(f) = &mut p.index {
                f.release(m.pos);
            }
        }
        let tenants = self.by_tenant.len() - 1;
        let before = usize::from(self.agents[a as usize].attributes.tenant).min(tenants);
        let after = usize::from(attributes.tenant).min(tenants);
        self.by_tenant[before][code as usize] -= 1;
        self.by_tenant[after][code as usize] += 1;
        self.move_tenant(a, before, after);
        if code == Code::Available {
            // A new version makes every old index entry stale.
            let s = self.board.load(a as usize);
            let _ = self.board.transition(a as usize, s, Code::Available, 0);
        }
        self.agents[a as usize].tenant = attributes.tenant;
        self.agents[a as usize].attributes = attributes;
        for g in 0..self.groups.len() {
            self.join_group(g as u32, a);
        }
        if code == Code::Available {
            self.match_agent(t, a);
        }
    }
}
