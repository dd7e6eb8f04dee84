//! Never a dead end: what becomes of a caller a queue cannot serve
//! (`max_wait_seconds` reached, `max_waiting` full, nobody logged in), by
//! the queue's `when_unserved`: a callback offered (the number dialogue of
//! `callback_number`, else the caller id the dial plan accepts, stored at
//! once), another queue of the firm (a callback when that one is full
//! too), or, only where configured, the queue's exit status.

use super::*;
use centralino_config::Unserved;

/// How long a caller waits in a queue nobody is logged in to before the
/// queue's policy applies (time for an operator's phone to register).
pub(super) const NOBODY_GRACE: Duration = Duration::from_secs(30);

impl Engine {
    /// A caller `queue` cannot serve (`reason`: `max_wait`, `full`,
    /// `nobody`), ended with `outcome` when nothing else is possible.
    pub(super) fn unserved(
        &mut self,
        now: Instant,
        call_id: CallId,
        queue: QueueId,
        reason: &'static str,
        outcome: CallOutcome,
    ) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let policy = &self.queues[queue.0 as usize];
        let (when, status) = (policy.when_unserved.clone(), policy.exit_status);
        let dialogue = policy.callback_number.is_some();
        let name = self.router.queue(queue).name.clone();
        // A citizen calling in; a callback being placed or an operator's
        // consultation ends as before.
        let citizen = call.outbound().is_none() && call.consult.is_none();
        if citizen && (call.vhold.is_some() || call.callback_asked) {
            // Already asking for a callback (their own key, or an earlier
            // offer): that dialogue decides; if it comes to nothing, the
            // call ends then.
            if let Some(c) = self.calls.get_mut(&call_id) {
                c.unserved = true;
            }
            return;
        }
        let count = |this: &Self, action: &str| {
            this.metrics
                .unserved
                .with_label_values(&[&name, reason, action])
                .inc();
        };
        match when {
            Unserved::Overflow(ref to) if citizen && !call.overflowed => {
                let target = self
                    .queue_ids
                    .get(to)
                    .copied()
                    .filter(|q| self.router.has_room(*q));
                if let Some(target) = target {
                    count(self, "overflow");
                    let counted = call.in_queue;
                    if let Some(c) = self.calls.get_mut(&call_id) {
                        // Logged under the queue that could not serve it.
                        c.queue = queue;
                    }
                    if counted {
                        self.metrics
                            .queue_overflowed
                            .with_label_values(&[&name])
                            .inc();
                    }
                    info!(queue = %name, to = %to, reason, "caller not served here: overflow");
                    self.queue_event(now, call_id, QueueEvent::Overflow, None);
                    self.leave_queue(now, call_id);
                    let Some(call) = self.calls.get_mut(&call_id) else {
                        return;
                    };
                    call.overflowed = true;
                    // A new visit there (never the requeue of this one).
                    call.requeued = false;
                    let mut spec = (*call.spec).clone();
                    spec.waited += now.saturating_duration_since(call.enqueued);
                    call.spec = Arc::new(spec.clone());
                    self.enter_queue(now, call_id, target, &spec);
                    return;
                }
                // The other queue is full too (or gone): a callback rather
                // than a dead end, below.
                info!(queue = %name, to = %to, reason, "overflow queue full: a callback instead");
            }
            _ => {}
        }
        // A callback: the queue's policy, or an overflow that could not
        // happen (the other queue full, or the caller already passed on
        // once and unserved there too).
        match when {
            Unserved::Callback | Unserved::Overflow(_) if citizen => {
                let number = call.caller.clone();
                let usable = !call.private
                    && self
                        .dialable(self.queue_tenant(queue), &number, "virtual_hold")
                        .is_some();
                let heard = call.media.opened && reason != "full";
                if heard && dialogue {
                    count(self, "callback_offered");
                    info!(queue = %name, reason, "caller not served: a callback is offered");
                    if let Some(c) = self.calls.get_mut(&call_id) {
                        c.unserved = true;
                    }
                    let step = if usable {
                        Vhold::Confirm(number)
                    } else {
                        Vhold::Enter(String::new(), 0)
                    };
                    self.vhold_ask(now, call_id, step);
                    return;
                }
                if usable {
                    count(self, "callback");
                    info!(queue = %name, reason, "caller not served: called back on their number");
                    if let Some(c) = self.calls.get_mut(&call_id) {
                        c.unserved = true;
                        c.queue = queue;
                        // An IVR's caller refused by a full queue: the
                        // queue's confirmation ends the call, not the flow.
                        c.run = None;
                        if c.phase == Phase::Ivr {
                            c.phase = Phase::Queued;
                        }
                    }
                    self.vhold_store(call_id, number);
                    return;
                }
            }
            _ => {}
        }
        count(self, "hangup");
        info!(queue = %name, reason, "caller not served: queue exit");
        self.end_unanswered(now, call_id, status, outcome, false);
    }

    /// The call leaves its queue without an operator: withdrawn from the
    /// router, any operator ringing for it cancelled.
    pub(super) fn leave_queue(&mut self, now: Instant, call_id: CallId) {
        self.router.withdraw(now, call_id);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let forks: Vec<BLeg> = call.forks.drain(..).collect();
        call.phase = Phase::Queued;
        for b in forks {
            self.cancel_b(now, b);
        }
    }

    /// A callback offered to an unserved caller came to nothing (no number
    /// confirmed, or the store refused it): the queue's exit, a dead end.
    pub(super) fn unserved_failed(&mut self, now: Instant, call_id: CallId) -> bool {
        let Some(call) = self.calls.get(&call_id).filter(|c| c.unserved) else {
            return false;
        };
        let status = self.queues[call.queue.0 as usize].exit_status;
        self.end_unanswered(now, call_id, status, CallOutcome::MaxWait, false);
        true
    }

    /// Nobody is logged in to `queue` (every operator it reaches is
    /// logged out; one on a break is coming back).
    pub(super) fn nobody_in(&self, queue: QueueId) -> bool {
        let a = self.router.queue_agents(queue);
        a.available + a.busy + a.paused == 0
    }
}
