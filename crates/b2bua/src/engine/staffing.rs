//! The staffing advisor and the service figures' counters: each queue's
//! offered rate over the last 15 minutes and its recent handling time give,
//! by Erlang C, the operators it needs for its service level (README,
//! "Service figures"); the counters let PromQL compute the same figures as
//! the reports.

use super::*;
use centralino_routing::staffing;

/// Minutes the offered rate is measured over.
const WINDOW_MINUTES: u64 = 15;

/// Visits offered per minute, the last [`WINDOW_MINUTES`] of them.
#[derive(Debug, Default)]
pub(super) struct RateWindow {
    counts: [u32; WINDOW_MINUTES as usize],
    /// The first look, and the minute (since it) the last count is for.
    origin: Option<Instant>,
    minute: u64,
}

impl RateWindow {
    /// The minute `now` falls in, the buckets since the last look zeroed.
    fn advance(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let minute = now.saturating_duration_since(origin).as_secs() / 60;
        let stale = minute.saturating_sub(self.minute).min(WINDOW_MINUTES);
        for m in 1..=stale {
            self.counts[((self.minute + m) % WINDOW_MINUTES) as usize] = 0;
        }
        self.minute = self.minute.max(minute);
        minute
    }

    pub(super) fn record(&mut self, now: Instant) {
        let minute = self.advance(now);
        let slot = &mut self.counts[(minute % WINDOW_MINUTES) as usize];
        *slot = slot.saturating_add(1);
    }

    /// Calls per second over the window (over the time since the first
    /// look while it is younger, at least a minute).
    pub(super) fn rate(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let seen = self
            .origin
            .map_or(Duration::ZERO, |o| now.saturating_duration_since(o))
            .as_secs_f64()
            .clamp(60.0, (WINDOW_MINUTES * 60) as f64);
        f64::from(self.counts.iter().sum::<u32>()) / seen
    }
}

impl Engine {
    /// A visit to a queue starts (not a caller put back after losing their
    /// operator, not a consultation): offered.
    pub(super) fn visit_started(&mut self, now: Instant, call_id: CallId, queue: QueueId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let requeued = std::mem::take(&mut call.requeued);
        if requeued || call.consult.is_some() {
            return;
        }
        call.visit_answered = false;
        let name = &self.router.queue(queue).name;
        self.metrics.queue_offered.with_label_values(&[name]).inc();
        if let Some(s) = self.queue_stats.get_mut(queue.0 as usize) {
            s.offered.record(now);
        }
    }

    /// An operator answered the call's visit after `wait`: counted once
    /// per visit, within T and the second T or not.
    pub(super) fn visit_answered(&mut self, call_id: CallId, wait: Duration) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if call.visit_answered || call.consult.is_some() {
            return;
        }
        call.visit_answered = true;
        let queue = call.queue;
        let Some(policy) = self.queues.get(queue.0 as usize) else {
            return;
        };
        let name = &self.router.queue(queue).name;
        let m = &self.metrics;
        m.queue_answered.with_label_values(&[name]).inc();
        m.queue_answered_wait
            .with_label_values(&[name])
            .observe(wait.as_secs_f64());
        // In whole milliseconds, as the queue log (and so the reports) has it.
        let wait = Duration::from_millis(wait.as_millis() as u64);
        for (label, t) in [("t", policy.service.level), ("t2", policy.service.level2)] {
            if wait <= t {
                m.queue_answered_within
                    .with_label_values(&[name, label])
                    .inc();
            }
        }
    }

    /// A visit ended unanswered with `outcome` after `wait`: abandoned
    /// (short or not) or timed out.
    pub(super) fn visit_unanswered(&self, call: &Call, wait: Duration, outcome: CallOutcome) {
        if call.visit_answered || call.consult.is_some() || !call.in_queue {
            return;
        }
        let Some(policy) = self.queues.get(call.queue.0 as usize) else {
            return;
        };
        let name = &self.router.queue(call.queue).name;
        match outcome {
            CallOutcome::Cancelled | CallOutcome::Abandoned => {
                let kind = if wait <= policy.service.short_abandon {
                    "short"
                } else {
                    "after_short"
                };
                self.metrics
                    .queue_abandoned
                    .with_label_values(&[name, kind])
                    .inc();
            }
            CallOutcome::MaxWait => self
                .metrics
                .queue_timed_out
                .with_label_values(&[name])
                .inc(),
            CallOutcome::CallbackRequested => {
                self.metrics
                    .queue_callbacks
                    .with_label_values(&[name])
                    .inc();
            }
            _ => {}
        }
    }

    /// Operators `queue` needs now for its service level (Erlang C on the
    /// last 15 minutes' offered rate and its recent handling time), and
    /// how many of them are missing among those logged in and not on a
    /// break; set on its gauges too. `None` before any handling time is
    /// known.
    pub(super) fn staffing(&mut self, now: Instant, queue: QueueId) -> Option<(u32, u32)> {
        let policy = self.queues.get(queue.0 as usize)?;
        let service = policy.service;
        let aht = self.router.queue_handle_time(queue)?;
        let stats = self.queue_stats.get_mut(queue.0 as usize)?;
        let rate = stats.offered.rate(now);
        let needed = staffing::agents_needed(
            rate,
            aht.as_secs_f64(),
            service.level.as_secs_f64(),
            service.target.min(0.999),
        )
        .unwrap_or(staffing::MAX_AGENTS);
        let a = self.router.queue_agents(queue);
        let short = needed.saturating_sub(a.available + a.busy);
        stats.agents_needed.set(i64::from(needed));
        stats.agents_short.set(i64::from(short));
        let name = &self.router.queue(queue).name;
        self.metrics
            .queue_sl_target
            .with_label_values(&[name])
            .set(service.target);
        Some((needed, short))
    }
}

#[cfg(test)]
// Tests may read the clock: the engine itself takes `now` from its driver.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_last_fifteen_minutes() {
        let t0 = Instant::now();
        let mut w = RateWindow::default();
        assert_eq!(w.rate(t0), 0.0);
        for i in 0..60 {
            w.record(t0 + Duration::from_secs(i * 15));
        }
        // 60 calls in the window's first 899 s (younger than the window:
        // over the time seen).
        let at = t0 + Duration::from_secs(15 * 60 - 1);
        assert!((w.rate(at) - 60.0 / 899.0).abs() < 1e-9);
        // Ten minutes later only the last five minutes' 20 calls count.
        let later = t0 + Duration::from_secs(25 * 60 - 1);
        assert!(
            (w.rate(later) - 20.0 / 900.0).abs() < 1e-9,
            "{}",
            w.rate(later)
        );
        // An hour of silence: nothing.
        assert_eq!(w.rate(t0 + Duration::from_secs(3 * 3600)), 0.0);
        // Young: over at least a minute.
        let mut y = RateWindow::default();
        y.record(t0);
        assert!((y.rate(t0) - 1.0 / 60.0).abs() < 1e-9);
    }
}
