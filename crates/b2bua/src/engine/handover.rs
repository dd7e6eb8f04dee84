//! Calls of this node served by another node's operators (the national
//! network, the asking side). A call waiting here is offered to a node
//! whose summary shows the same queue (same firm and name: one national
//! queue) with operators free, calls in the order this node's router
//! serves them; on a grant the call leaves this router and one B-leg
//! goes to that node's hand-over URI, which rings the operator held
//! there. This node stays the caller's B2BUA (their dialog and media
//! stay anchored here, so their CDR is this node's); if the other
//! node's operator does not take the call, it goes back to its place
//! here with its wait. A grant may only send the INVITE to the address
//! that node published: a peer cannot point this node at a carrier.

use centralino_cluster::PeerQueue;
use centralino_cluster::offer::{OfferReply, Outcome, Outgoing};

use super::*;

/// Margin over the queue's ring timeout before this node gives up on
/// another node's operator: the lending node's own ring timer (the same
/// queue's) fires first and answers 480, which is the cleaner ending.
const REMOTE_RING_MARGIN: Duration = Duration::from_secs(2);

/// Most nodes whose hand-over address is remembered.
const MAX_SIPS: usize = 1024;

/// This node as an asker.
pub(super) struct Asking {
    pub(super) out: Outgoing,
    /// The other nodes' queues with operators free, as last reported.
    peers: Vec<PeerQueue>,
    /// Each node's hand-over address, from its summaries.
    sips: HashMap<String, SocketAddr>,
    /// Calls handed over to a node, until when that node is not offered
    /// them again.
    tried: HashMap<(CallId, String), Instant>,
}

impl Engine {
    /// This node is `node` in a national network: it offers its waiting
    /// calls to the others (their answers come in
    /// [`Self::cluster_reply`]).
    pub fn join_cluster(&mut self, node: &str) {
        let boot = self.rng.next_u64();
        self.asking = Some(Box::new(Asking {
            out: Outgoing::new(node, boot),
            peers: Vec::new(),
            sips: HashMap::new(),
            tried: HashMap::new(),
        }));
    }

    /// The other nodes' queues with operators free now: waiting calls of
    /// the same queues are offered to them.
    /// `lent_elsewhere`: what the other nodes report lent under
    /// agreements (borrower, lender, calls), for this node's capacity
    /// checks.
    pub fn cluster_peers(
        &mut self,
        now: Instant,
        peers: Vec<PeerQueue>,
        lent_elsewhere: Vec<(String, String, u32)>,
    ) {
        self.lent_elsewhere = lent_elsewhere;
        let Some(a) = self.asking.as_mut() else {
            return;
        };
        if a.sips.len() > MAX_SIPS {
            a.sips.clear();
        }
        for p in &peers {
            a.sips.insert(p.node.clone(), p.sip);
        }
        a.peers = peers;
        self.offer_out(now);
    }

    /// Offers waiting calls to the nodes with operators free for them:
    /// per node and queue at most as many calls as it has operators
    /// free, oldest (by the router's virtual time) first.
    fn offer_out(&mut self, now: Instant) {
        let Some(a) = self.asking.as_ref() else {
            return;
        };
        if a.peers.is_empty() || self.draining || self.shutting_down {
            return;
        }
        let peers = a.peers.clone();
        if let Some(a) = self.asking.as_mut() {
            a.tried.retain(|_, until| *until > now);
        }
        let mut waiting: HashMap<QueueId, Vec<(Instant, CallId)>> = HashMap::new();
        for p in &peers {
            // The same firm's queue, or another firm's under an
            // agreement (the lending node checks its capacity).
            if let Some(&q) = self.queue_ids.get(&p.queue)
                && self
                    .lending
                    .covers(&self.queues[q.0 as usize].tenant_name, &p.tenant, &p.queue)
            {
                waiting.entry(q).or_default();
            }
        }
        if waiting.is_empty() {
            return;
        }
        for (&id, c) in self.calls.iter() {
            if !Self::offerable(c) {
                continue;
            }
            if let Some(v) = waiting.get_mut(&c.queue) {
                // The router's order: enqueue time, less the wait the call
                // brought and its priority's head start.
                let step = self.router.queue(c.queue).priority_step;
                let p = c.spec.priority.clamp(-100, 100);
                let base = c.enqueued.checked_sub(c.spec.waited).unwrap_or(c.enqueued);
                let head = step * p.unsigned_abs();
                let virtual_since = if p >= 0 {
                    base.checked_sub(head).unwrap_or(base)
                } else {
                    base + head
                };
                v.push((virtual_since, id));
            }
        }
        for v in waiting.values_mut() {
            v.sort();
        }
        for p in peers {
            let Some(&q) = self.queue_ids.get(&p.queue) else {
                continue;
            };
            if !self
                .lending
                .covers(&self.queues[q.0 as usize].tenant_name, &p.tenant, &p.queue)
            {
                continue;
            }
            let Some(v) = waiting.get_mut(&q) else {
                continue;
            };
            let mut budget = p.available;
            let mut i = 0;
            while budget > 0 && i < v.len() {
                if self.offer_call(now, v[i].1, &p) {
                    v.remove(i);
                    budget -= 1;
                } else {
                    i += 1;
                }
            }
        }
    }

    /// A call another node's operator may take: a caller waiting in a
    /// queue (a callback or campaign call is dialled by this node's own
    /// operators: the citizen is not on the line yet).
    fn offerable(c: &Call) -> bool {
        c.phase == Phase::Queued
            && c.in_queue
            && c.inbound().is_some()
            && c.transfer.is_none()
            && c.vhold.is_none()
            && !c.callback_asked
            && !c.handed_over
    }

    fn offer_call(&mut self, now: Instant, call_id: CallId, p: &PeerQueue) -> bool {
        let Some(c) = self.calls.get(&call_id) else {
            return false;
        };
        let requirements = c.spec.requirement.as_ref().map(ToString::to_string);
        let waited = now.saturating_duration_since(c.enqueued) + c.spec.waited;
        let (priority, tenant) = (
            c.spec.priority,
            self.queues[c.queue.0 as usize].tenant_name.clone(),
        );
        let Some(a) = self.asking.as_mut() else {
            return false;
        };
        if a.tried.contains_key(&(call_id, p.node.clone())) {
            return false;
        }
        let Some(req) = a.out.offer(
            now,
            call_id.0,
            &p.node,
            &tenant,
            &p.queue,
            requirements,
            priority,
            waited,
        ) else {
            return false;
        };
        self.metrics
            .cluster_offers_out
            .with_label_values(&["sent"])
            .inc();
        debug!(call = %call_id, node = %p.node, "call offered to another node");
        self.out.push_back(Output::ClusterOffer {
            node: p.node.clone(),
            request: Box::new(req),
        });
        true
    }

    /// Node `node` answered one of this node's offers.
    pub fn cluster_reply(&mut self, now: Instant, node: &str, reply: OfferReply) {
        let Some(a) = self.asking.as_mut() else {
            return;
        };
        if let Some(outcome) = a.out.reply(now, node, reply) {
            self.offer_outcome(now, outcome);
        }
        self.pump(now);
    }

    /// Offers not answered in time: their calls stay in their place.
    pub(super) fn asking_timeouts(&mut self, now: Instant) {
        let Some(a) = self.asking.as_mut() else {
            return;
        };
        for o in a.out.handle_timeout(now) {
            self.offer_outcome(now, o);
        }
    }

    /// The call left (it ended): a grant for it that comes later is let
    /// go.
    pub(super) fn offer_withdrawn(&mut self, now: Instant, call_id: CallId) {
        if let Some(a) = self.asking.as_mut() {
            a.out.withdraw(now, call_id.0);
            a.tried.retain(|(c, _), _| *c != call_id);
        }
    }

    fn offer_outcome(&mut self, now: Instant, outcome: Outcome) {
        let label = match outcome {
            Outcome::Granted {
                call,
                node,
                target,
                id,
                operator,
                ..
            } => {
                self.granted(now, CallId(call), node, &target, id, operator);
                return;
            }
            Outcome::Refused { .. } => "refused",
            Outcome::TimedOut { node, .. } => {
                debug!(%node, "offer not answered in time: the call keeps its place");
                "timed_out"
            }
            Outcome::Release { node, id } => {
                self.out.push_back(Output::ClusterRelease { node, id });
                "released"
            }
        };
        self.metrics
            .cluster_offers_out
            .with_label_values(&[label])
            .inc();
    }

    /// `node` holds `operator` for `call_id`: the call leaves this
    /// router and its INVITE goes to `target`, if it still waits and the
    /// target is that node's published address; else the grant is let go.
    fn granted(
        &mut self,
        now: Instant,
        call_id: CallId,
        node: String,
        target: &str,
        id: String,
        operator: String,
    ) {
        let published = self
            .asking
            .as_ref()
            .and_then(|a| a.sips.get(&node))
            .copied();
        let dest = uri::host_port(target).and_then(|hp| hp.parse::<SocketAddr>().ok());
        let waiting = self.calls.get(&call_id).is_some_and(Self::offerable);
        let local = self.outbound_local;
        let (Some(dest), Some(local), true) =
            (dest.filter(|d| Some(*d) == published), local, waiting)
        else {
            if dest.is_some() && dest != published {
                warn!(%node, "a grant names another address than the node published: let go");
            }
            self.metrics
                .cluster_offers_out
                .with_label_values(&["released"])
                .inc();
            self.out.push_back(Output::ClusterRelease { node, id });
            return;
        };
        self.metrics
            .cluster_offers_out
            .with_label_values(&["granted"])
            .inc();
        let _span = self.call_span(call_id).entered();
        self.router.withdraw(now, call_id);
        let flow = Flow {
            transport: Transport::Udp,
            remote: dest,
            local,
            conn: 0,
        };
        let Some((inv, b_call_id, from)) =
            self.operator_invite(call_id, target, &format!("<{target}>"), flow, &[])
        else {
            return;
        };
        let key = self.send_request(now, flow, inv, ClientRef::BInvite(call_id));
        self.by_b.insert(b_call_id.clone(), call_id);
        let name = format!("{operator}@{node}");
        let node_name = node.clone();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let attempt = call.attempt + 1;
        call.forks.push(BLeg {
            op: Operator::Remote(Box::new(Lent { node, operator })),
            attempt,
            invite_key: key,
            call_id: b_call_id,
            local: from,
            flow,
            state: BState::Calling,
            dialog: None,
        });
        call.phase = Phase::Offering;
        call.attempt = attempt;
        let ring = self.router.queue(call.queue).ring_timeout + REMOTE_RING_MARGIN;
        // That node is not offered the call again before the ring time
        // and the queue's retry delay: whoever refused there would ring
        // again at once (its router does not know who refused before).
        let again = now + ring + self.router.queue(call.queue).retry;
        if let Some(a) = self.asking.as_mut() {
            a.tried.insert((call_id, node_name), again);
        }
        info!(agent = %name, offer = %id, "call handed over to another node's operator");
        self.timers
            .push(Reverse((now + ring, call_id, CallTimer::Ring(attempt))));
        self.queue_event(now, call_id, QueueEvent::Offer, Some(name));
    }

    /// Another node's operator did not take the call (refused, no
    /// answer, that node gone): it goes back to its place here, its wait
    /// kept, for the next operator of any node.
    pub(super) fn handover_failed(&mut self, now: Instant, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if !call.forks.is_empty() || call.b.is_some() {
            return;
        }
        let _span = call.span.clone().entered();
        call.phase = Phase::Queued;
        let mut spec = (*call.spec).clone();
        spec.waited += now.saturating_duration_since(call.enqueued);
        let queue = call.queue;
        self.metrics
            .cluster_handovers
            .with_label_values(&["returned"])
            .inc();
        warn!("another node's operator did not take the call: back to its place here");
        if let Err(e) = self.router.enqueue(now, queue, call_id, &spec) {
            warn!(error = %e, "the call could not go back to its queue");
            let status = self.queues[queue.0 as usize].exit_status;
            self.end_unanswered(now, call_id, status, CallOutcome::QueueFull, false);
        }
    }
}
