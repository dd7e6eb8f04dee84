//! Calls of other nodes offered to this node's operators (the national
//! network, the lending side): the router picks an operator for the
//! offer exactly as for a call of its own (same order, same board CAS:
//! it stays the only writer), under a placeholder call id; the offer is
//! granted with a lease, and the operator is let go when the lease ends
//! or the asking node releases it. Only an operator free now is granted:
//! the call waits on its own node, never here.

use centralino_cluster::offer::{Decision, OfferReply, OfferRequest, Refusal};

use super::*;

/// An operator held for another node's call.
#[derive(Clone, Debug)]
pub(super) struct Held {
    /// The placeholder the router reserved the operator for.
    pub(super) call: CallId,
    /// The node that asked.
    pub(super) from: String,
    /// The queue it was held in.
    pub(super) queue: QueueId,
}

impl Engine {
    /// Node `req.from` offers one of its waiting calls; `target` is this
    /// node's SIP address for the hand-over (`sip:offer-ID@target`).
    pub fn remote_offer(&mut self, now: Instant, req: &OfferRequest, target: &str) -> OfferReply {
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
        let Some(&queue) = self.queue_ids.get(&req.queue) else {
            return refuse(self, Refusal::UnknownQueue);
        };
        // One national queue is one firm's: another firm's call needs an
        // agreement (not granted here yet).
        if self.queues[queue.0 as usize].tenant_name != req.tenant {
            return refuse(self, Refusal::NoAgreement);
        }
        let requirement = match &req.requirements {
            None => None,
            Some(r) => match Requirement::parse(r, &self.catalog) {
                Ok(r) => Some(r),
                // Names this node's operators do not have: nobody here.
                Err(_) => return refuse(self, Refusal::NoOperator),
            },
        };
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
        // An operator free now is offered it at once (in `pump`).
        self.pump(now);
        let agent = self.remote_pending.remove(&call).flatten();
        let Some(agent) = agent else {
            self.router.withdraw(now, call);
            return refuse(self, Refusal::NoOperator);
        };
        self.router
            .hold(now, agent, call, centralino_cluster::offer::LEASE);
        let reply =
            self.grants
                .granted(now, req, agent.0, format!("sip:offer-{}@{target}", req.id));
        self.held.insert(
            req.id.clone(),
            Held {
                call,
                from: req.from.clone(),
                queue,
            },
        );
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
    pub(super) fn remote_reserved(&mut self, call: CallId, agent: AgentId) -> bool {
        match self.remote_pending.get_mut(&call) {
            Some(slot) => {
                *slot = Some(agent);
                true
            }
            None => false,
        }
    }

    /// Node `from` no longer wants offer `id`: its operator is let go.
    pub fn remote_release(&mut self, now: Instant, id: &str, from: &str) {
        if self.grants.release(id, from).is_some() {
            self.let_go(now, id, "released");
        }
    }

    /// Leases that ended unclaimed.
    pub(super) fn remote_timeouts(&mut self, now: Instant) {
        for (id, _) in self.grants.handle_timeout(now) {
            self.let_go(now, &id, "lapsed");
        }
    }

    fn let_go(&mut self, now: Instant, id: &str, how: &'static str) {
        if let Some(h) = self.held.remove(id) {
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
    }
}
