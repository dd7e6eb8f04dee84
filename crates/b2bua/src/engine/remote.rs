//! Calls of other nodes offered to this node's operators (the national
//! network, the lending side): the router picks an operator for the
//! offer exactly as for a call of its own (same order, same board CAS:
//! it stays the only writer), under a placeholder call id; the offer is
//! granted with a lease, and the operator is let go when the lease ends
//! or the asking node releases it. Only an operator free now is granted:
//! the call waits on its own node, never here.

use centralino_cluster::offer::{Decision, OfferReply, OfferRequest, Refusal};

use super::*;

/// Router groups other nodes' calls may create (requirements this node's
/// own calls never used), at most.
const MAX_REMOTE_GROUPS: usize = 256;

/// An operator held for another node's call.
#[derive(Clone, Debug)]
pub(super) struct Held {
    /// The placeholder the router reserved the operator for (the call's
    /// id here once handed over).
    pub(super) call: CallId,
    /// The node that asked.
    pub(super) from: String,
    /// Where its INVITE must come from (its published SIP address).
    pub(super) peer: SocketAddr,
    /// The queue it was held in.
    pub(super) queue: QueueId,
    /// The secret of its hand-over URI.
    pub(super) token: String,
    /// What the call needs (as offered).
    pub(super) spec: Arc<CallSpec>,
    /// Another firm's call under an agreement: (borrower, lender).
    pub(super) lent: Option<(String, String)>,
}

/// Another node's call arriving for the operator held for it.
pub(super) struct Claimed {
    pub(super) call: CallId,
    pub(super) agent: AgentId,
    pub(super) queue: QueueId,
    pub(super) spec: Arc<CallSpec>,
    pub(super) lent: Option<(String, String)>,
}

impl Engine {
    /// Node `req.from` offers one of its waiting calls; `target` is this
    /// node's SIP address for the hand-over (`sip:offer-SECRET@target`,
    /// the secret unguessable: the URI is the only key to the operator),
    /// `peer` the asking node's published SIP address, the only source
    /// its INVITE is taken from.
    pub fn remote_offer(
        &mut self,
        now: Instant,
        req: &OfferRequest,
        target: &str,
        peer: Option<SocketAddr>,
    ) -> OfferReply {
        if let Decision::Repeat(r) = self.grants.request(req) {
            return r;
        }
        let refuse = |e: &mut Self, reason: Refusal| {
            e.metrics
                .cluster_offers_in
                .with_label_values(&[refusal_label(reason)])
                .inc();
            e.grants.refused(now, req, reason)
        };
        if self.draining || self.shutting_down {
            return refuse(self, Refusal::Draining);
        }
        let Some(peer) = peer else {
            return refuse(self, Refusal::UnknownNode);
        };
        let Some(&queue) = self.queue_ids.get(&req.queue) else {
            return refuse(self, Refusal::UnknownQueue);
        };
        // One national queue is one firm's: another firm's call needs an
        // agreement, within its capacity (national for `max_concurrent`,
        // this node's operators for `share`).
        let lender = self.queues[queue.0 as usize].tenant_name.clone();
        let lent = (lender != req.tenant).then(|| (req.tenant.clone(), lender.clone()));
        if let Some((from, to)) = &lent {
            let agents = self.router.queue_agents(queue);
            let logged_in = agents.available + agents.busy + agents.paused;
            let elsewhere = self
                .lent_elsewhere
                .iter()
                .filter(|(f, t, _)| f == from && t == to)
                .fold(0u32, |n, (_, _, k)| n.saturating_add(*k));
            if let Err(reason) = self
                .lending
                .may_lend(from, to, &req.queue, logged_in, elsewhere)
            {
                return refuse(self, reason);
            }
        }
        let requirement = match &req.requirements {
            None => None,
            Some(r) => match Requirement::parse(r, &self.catalog) {
                Ok(r) => Some(r),
                // Names this node's operators do not have: nobody here.
                Err(_) => return refuse(self, Refusal::NoOperator),
            },
        };
        // Requirements this node's own calls never used make new router
        // groups: only so many for other nodes (groups are for good).
        let new_group = !self.router.knows(queue, requirement.as_ref());
        if new_group && self.remote_groups >= MAX_REMOTE_GROUPS {
            return refuse(self, Refusal::NoOperator);
        }
        let spec = CallSpec {
            priority: req.priority,
            requirement,
            fragile: false,
            waited: Duration::from_millis(req.waited_ms),
        };
        let call = CallId(self.next_call);
        self.next_call += 1;
        self.remote_pending.insert(call, None);
        if self.router.enqueue(now, queue, call, &spec).is_err() {
            self.remote_pending.remove(&call);
            return refuse(self, Refusal::NoOperator);
        }
        if new_group {
            self.remote_groups += 1;
        }
        // An operator free now is offered it at once (in `pump`).
        self.pump(now);
        let agent = self.remote_pending.remove(&call).flatten();
        let Some(agent) = agent else {
            self.router.withdraw(now, call);
            return refuse(self, Refusal::NoOperator);
        };
        self.router
            .hold(now, agent, call, centralino_cluster::offer::LEASE);
        let token = format!("{}{}", self.token(), self.token());
        let operator = self.router.agent(agent).name.clone();
        let reply = self.grants.granted(
            now,
            req,
            agent.0,
            format!("sip:offer-{token}@{target}"),
            operator,
        );
        self.held_tokens.insert(token.clone(), req.id.clone());
        self.held.insert(
            req.id.clone(),
            Held {
                call,
                from: req.from.clone(),
                peer,
                queue,
                token,
                spec: Arc::new(spec),
                lent: lent.clone(),
            },
        );
        if let Some((from, to)) = &lent {
            self.lending.start(from, to);
            self.lending_changed();
        }
        self.metrics
            .cluster_offers_in
            .with_label_values(&["granted"])
            .inc();
        info!(from = %req.from, queue = %req.queue, agent = %self.router.agent(agent).name, "an operator held for another node's call");
        reply
    }

    /// The router offered a placeholder of a remote offer to `agent`:
    /// noted (no phone rings: the asking node hands the call over).
    /// Returns whether `call` was one.
    /// One operator per offer: a ring-all queue reserves several for one
    /// call, the others are let go at once (no miss counted).
    pub(super) fn remote_reserved(&mut self, now: Instant, call: CallId, agent: AgentId) -> bool {
        match self.remote_pending.get_mut(&call) {
            Some(slot @ None) => {
                *slot = Some(agent);
                true
            }
            Some(Some(_)) => {
                self.router
                    .offer_failed(now, call, agent, OfferOutcome::Withdrawn);
                true
            }
            None => false,
        }
    }

    /// A claimed hand-over refused before it became a call (its INVITE
    /// asked for a session interval too small, or its media was
    /// unusable): the operator is free again and the lending ends.
    pub(super) fn unclaim(&mut self, now: Instant, claimed: &Claimed) {
        self.router.withdraw(now, claimed.call);
        self.lent_ended(claimed.lent.as_ref());
        self.metrics
            .cluster_handovers
            .with_label_values(&["sent_back"])
            .inc();
    }

    /// Node `from` no longer wants offer `id`: its operator is let go.
    pub fn remote_release(&mut self, now: Instant, id: &str, from: &str) {
        if self.grants.release(now, id, from).is_some() {
            self.let_go(now, id, "released");
        }
    }

    /// Leases that ended unclaimed (and this node's own offers not
    /// answered in time).
    pub(super) fn remote_timeouts(&mut self, now: Instant) {
        self.asking_timeouts(now);
        for (id, _) in self.grants.handle_timeout(now) {
            self.let_go(now, &id, "lapsed");
        }
    }

    fn let_go(&mut self, now: Instant, id: &str, how: &'static str) {
        if let Some(h) = self.held.remove(id) {
            self.held_tokens.remove(&h.token);
            self.lent_ended(h.lent.as_ref());
            info!(from = %h.from, how, "an operator held for another node is free again");
            self.router.withdraw(now, h.call);
            self.metrics
                .cluster_offers_in
                .with_label_values(&[how])
                .inc();
            self.pump(now);
        }
    }
}

impl Engine {
    /// The held operator an INVITE's Request-URI names (`offer-SECRET`),
    /// when it comes from the node it was granted to.
    pub(super) fn handover_for(&self, source: IpAddr, msg: &Message) -> Option<&Held> {
        let user = uri::user(msg.request_uri()?)?;
        let token = user.strip_prefix("offer-")?;
        let h = self.held.get(self.held_tokens.get(token)?)?;
        (h.peer.ip() == source).then_some(h)
    }

    /// Takes the grant an INVITE names: its operator is this call's now.
    pub(super) fn claim_handover(
        &mut self,
        now: Instant,
        source: IpAddr,
        msg: &Message,
    ) -> Option<Claimed> {
        let id = self
            .held_tokens
            .get(uri::user(msg.request_uri()?)?.strip_prefix("offer-")?)?
            .clone();
        let h = self.held.get(&id).filter(|h| h.peer.ip() == source)?;
        let agent = self.grants.claim(now, &id, &h.from)?;
        let h = self.held.remove(&id)?;
        self.held_tokens.remove(&h.token);
        self.metrics
            .cluster_handovers
            .with_label_values(&["taken"])
            .inc();
        info!(from = %h.from, agent = %self.router.agent(AgentId(agent)).name, "another node's call for the operator held for it");
        Some(Claimed {
            call: h.call,
            agent: AgentId(agent),
            queue: h.queue,
            spec: h.spec,
            lent: h.lent,
        })
    }

    /// Another node's call has its ports here: its operator, still held
    /// for it, rings (with the queue's ring timeout); the caller's node
    /// hears nothing of ours until the answer (it plays its own music).
    pub(super) fn handover_reserved(
        &mut self,
        now: Instant,
        call_id: CallId,
        agent: AgentId,
        queue: QueueId,
    ) {
        let ring = self.router.queue(queue).ring_timeout;
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.queue = queue;
        call.phase = Phase::Offering;
        // The media opens now, so the answer bridges at once.
        let open = open_command(call_id, &mut call.media);
        self.out.push_back(Output::Media(open));
        // The hold outlives the ring timer: the offer ends by our timer
        // (and goes back to its node), never by the router taking the
        // operator back underneath it.
        if !self
            .router
            .hold(now, agent, call_id, ring + Duration::from_secs(2))
        {
            warn!("the operator held for another node's call is gone: back to its node");
            self.end_unanswered(now, call_id, 480, CallOutcome::NoAnswer, false);
            return;
        }
        self.invite_operator(now, call_id, agent);
    }

    /// The operator held here did not take another node's call: it goes
    /// back to its node (480), which puts it back in its place there;
    /// the miss counts for the operator as any other.
    pub(super) fn lent_call_failed(
        &mut self,
        now: Instant,
        call: CallId,
        agent: AgentId,
        outcome: OfferOutcome,
    ) {
        self.router.give_up(now, call, agent, outcome);
        if self.router.agent(agent).state == AgentState::Paused(PauseReason::NoAnswer) {
            self.agent_event(now, agent, "pause", Some("no_answer".to_owned()));
        }
        self.metrics
            .cluster_handovers
            .with_label_values(&["sent_back"])
            .inc();
        info!("not taken here: the call goes back to its node");
        self.end_unanswered(now, call, 480, CallOutcome::NoAnswer, false);
    }

    /// A call lent under an agreement ended (or its grant did).
    pub(super) fn lent_ended(&mut self, lent: Option<&(String, String)>) {
        if let Some((from, to)) = lent {
            self.lending.end(from, to);
            self.lending_changed();
        }
    }

    fn lending_changed(&mut self) {
        self.out.push_back(Output::Lent(self.lending.current()));
    }

    /// Placeholders of other nodes' calls in `queue`: the router counts
    /// them among its calls, but they wait on their own node.
    pub(super) fn held_in(&self, queue: QueueId) -> usize {
        self.held.values().filter(|h| h.queue == queue).count()
    }
}

fn refusal_label(r: Refusal) -> &'static str {
    match r {
        Refusal::NoOperator => "no_operator",
        Refusal::UnknownQueue => "unknown_queue",
        Refusal::NoAgreement => "no_agreement",
        Refusal::Capacity => "capacity",
        Refusal::Draining => "draining",
        Refusal::UnknownNode => "unknown_node",
    }
}
