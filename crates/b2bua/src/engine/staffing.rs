//! The staffing advisor and the service figures' counters: each queue's
//! offered rate over the last 15 minutes and its recent handling time give,
//! by Erlang C — Erlang A once its callers' patience is measured — the
//! operators it needs for its service level (README, "Service figures");
//! the counters let PromQL compute the same figures as the reports.

use super::*;
use centralino_routing::staffing;

/// Minutes the offered rate is measured over.
const WINDOW_MINUTES: u64 = 15;
/// Erlang A's recommendation is made again this often per queue.
const ERLANG_A_EVERY: Duration = Duration::from_secs(15);
/// An Erlang A question unanswered this long (a driver that lost it) is
/// asked again.
const ERLANG_A_LOST: Duration = Duration::from_secs(60);
/// Callers the advisor lets give up at most, with Erlang A: its service
/// level alone would be met by letting impatient callers go.
const MAX_ABANDON: f64 = 0.05;
/// Abandons (after the short-abandon threshold) in the window before the
/// callers' patience is estimated and Erlang A used.
const MIN_ABANDONS: u32 = 10;

/// Visits offered per minute, the last [`WINDOW_MINUTES`] of them; and
/// per minute, the visits abandoned and every finished visit's wait (the
/// callers' patience, estimated from both).
#[derive(Debug, Default)]
pub(super) struct RateWindow {
    counts: [u32; WINDOW_MINUTES as usize],
    abandons: [u32; WINDOW_MINUTES as usize],
    waited_ms: [u64; WINDOW_MINUTES as usize],
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
            let slot = ((self.minute + m) % WINDOW_MINUTES) as usize;
            self.counts[slot] = 0;
            self.abandons[slot] = 0;
            self.waited_ms[slot] = 0;
        }
        self.minute = self.minute.max(minute);
        minute
    }

    pub(super) fn record(&mut self, now: Instant) {
        let minute = self.advance(now);
        let slot = &mut self.counts[(minute % WINDOW_MINUTES) as usize];
        *slot = slot.saturating_add(1);
    }

    /// A visit ended after waiting `wait`: abandoned (after the short
    /// threshold) or answered.
    pub(super) fn finished(&mut self, now: Instant, wait: Duration, abandoned: bool) {
        let slot = (self.advance(now) % WINDOW_MINUTES) as usize;
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.waited_ms[slot] = self.waited_ms[slot].saturating_add(ms);
        if abandoned {
            self.abandons[slot] = self.abandons[slot].saturating_add(1);
        }
    }

    /// The callers' mean patience, seconds, once the window holds
    /// [`MIN_ABANDONS`]: the time all callers waited over the abandons (the
    /// estimate of an exponential patience when the answered callers'
    /// waits are patience not used up).
    pub(super) fn patience(&mut self, now: Instant) -> Option<f64> {
        self.advance(now);
        let abandons: u32 = self.abandons.iter().sum();
        let waited: u64 = self.waited_ms.iter().sum();
        (abandons >= MIN_ABANDONS).then(|| waited as f64 / 1000.0 / f64::from(abandons))
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
        // Neither a consultation nor a callback or a campaign's call being
        // placed is the queue's inbound traffic (`queue_event`).
        if requeued || call.consult.is_some() || call.outbound().is_some() {
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
    pub(super) fn visit_answered(&mut self, now: Instant, call_id: CallId, wait: Duration) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if call.visit_answered || call.consult.is_some() || call.outbound().is_some() {
            return;
        }
        call.visit_answered = true;
        let queue = call.queue;
        if let Some(s) = self.queue_stats.get_mut(queue.0 as usize) {
            s.offered.finished(now, wait, false);
        }
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
    pub(super) fn visit_unanswered(
        &mut self,
        now: Instant,
        call: &Call,
        wait: Duration,
        outcome: CallOutcome,
    ) {
        if call.visit_answered
            || call.consult.is_some()
            || call.outbound().is_some()
            || !call.in_queue
        {
            return;
        }
        let Some(policy) = self.queues.get(call.queue.0 as usize) else {
            return;
        };
        // In whole milliseconds, as the queue log (and so the reports) has
        // it: a caller at 5.0004 s is a short abandon in both.
        let short = Duration::from_millis(wait.as_millis() as u64) <= policy.service.short_abandon;
        let gave_up = matches!(outcome, CallOutcome::Cancelled | CallOutcome::Abandoned);
        // Patience is what callers spend: a misdial hung up at once is
        // none, and neither is a wait the node cut short (max wait, a
        // callback taken) — those count as patience left unused.
        if let Some(s) = self.queue_stats.get_mut(call.queue.0 as usize) {
            s.offered.finished(now, wait, gave_up && !short);
        }
        let name = &self.router.queue(call.queue).name;
        match outcome {
            CallOutcome::Cancelled | CallOutcome::Abandoned => {
                let kind = if short { "short" } else { "after_short" };
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
    /// last 15 minutes' offered rate and its recent handling time; Erlang
    /// A once the window has seen enough callers give up to measure their
    /// patience), and how many of them are missing among those logged in
    /// and not on a break; set on its gauges too. Until the queue has
    /// measured a handling time (no operator has finished a call since the
    /// start: a line nobody answers), its `expected_handle_seconds` stands
    /// in, so the gap shows when it matters most.
    pub(super) fn staffing(&mut self, now: Instant, queue: QueueId) -> Option<(u32, u32)> {
        let policy = self.queues.get(queue.0 as usize)?;
        let service = policy.service;
        let measured = self.router.queue_handle_time(queue);
        let aht = measured.unwrap_or(service.expected_handle);
        let stats = self.queue_stats.get_mut(queue.0 as usize)?;
        let rate = stats.offered.rate(now);
        let patience = stats.offered.patience(now);
        stats
            .patience
            .set(patience.map_or(0, |p| p.round().min(i64::MAX as f64) as i64));
        let (aht, t, target) = (
            aht.as_secs_f64(),
            service.level.as_secs_f64(),
            service.target.min(0.999),
        );
        let c = staffing::agents_needed(rate, aht, t, target);
        let needed = match (patience, c) {
            // Erlang A integrates the queue's states: milliseconds for a
            // few hundred operators, up to a second at the national scale
            // (bounded: `ERLANG_A_WORK_MOST`). Never on this thread: the
            // driver runs it and answers by `staffing_computed`; until
            // then the last answer (or Erlang C's, more operators) stands.
            (Some(p), Some(c)) => {
                let due = stats
                    .erlang_a
                    .is_none_or(|(at, _)| now.saturating_duration_since(at) >= ERLANG_A_EVERY);
                let waiting = stats
                    .erlang_a_asked
                    .is_some_and(|at| now.saturating_duration_since(at) < ERLANG_A_LOST);
                if due && !waiting {
                    stats.erlang_a_asked = Some(now);
                    self.out.push_back(Output::Staffing(StaffingJob {
                        queue,
                        asked: now,
                        rate,
                        aht_seconds: aht,
                        patience_seconds: p,
                        t_seconds: t,
                        target,
                        max_abandon: MAX_ABANDON,
                        last: stats.erlang_a.map(|(_, n)| n),
                    }));
                }
                stats.erlang_a.map_or(c, |(_, n)| n)
            }
            _ => c.unwrap_or(staffing::MAX_AGENTS),
        };
        let a = self.router.queue_agents(queue);
        let short = needed.saturating_sub(a.available + a.busy);
        stats.agents_needed.set(i64::from(needed));
        stats.agents_short.set(i64::from(short));
        let name = &self.router.queue(queue).name;
        self.metrics
            .queue_sl_target
            .with_label_values(&[name])
            .set(service.target);
        // The live AHT as measured: the configured guess is not shown as
        // one (the rules take the largest over the nodes).
        self.metrics
            .queue_handle_time
            .with_label_values(&[name])
            .set(measured.map_or(0.0, |d| d.as_secs_f64()));
        Some((needed, short))
    }
}

impl Engine {
    /// The driver's answer to [`Output::Staffing`]: Erlang A's operators
    /// for `queue` as of `asked` (`None`: no answer within its bounds,
    /// Erlang C's count stays). The views and gauges show it at the next
    /// refresh, published at once.
    pub fn staffing_computed(
        &mut self,
        now: Instant,
        queue: QueueId,
        asked: Instant,
        needed: Option<u32>,
    ) {
        let Some(stats) = self.queue_stats.get_mut(queue.0 as usize) else {
            return;
        };
        if stats.erlang_a.is_some_and(|(at, _)| at > asked) {
            return; // an older question's answer
        }
        match needed {
            Some(n) => {
                stats.erlang_a = Some((asked, n));
                if stats.erlang_a_asked == Some(asked) {
                    stats.erlang_a_asked = None;
                }
            }
            // Past its bounds: Erlang C's count stands, and the question
            // stays marked as asked, for `ERLANG_A_LOST`, not every second.
            None => stats.erlang_a = None,
        }
        self.views_at = None;
        let soon = now + GAUGE_PERIOD;
        self.gauges_due = Some(self.gauges_due.map_or(soon, |d| d.min(soon)));
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

    /// Patience is the time every caller waited over those who gave up,
    /// known from ten abandons, forgotten with the window.
    #[test]
    fn patience_is_measured_from_ten_abandons() {
        let t0 = Instant::now();
        let mut w = RateWindow::default();
        for i in 0..9 {
            w.finished(t0 + Duration::from_secs(i), Duration::from_secs(40), true);
        }
        assert_eq!(w.patience(t0 + Duration::from_secs(10)), None);
        w.finished(t0 + Duration::from_secs(10), Duration::from_secs(40), true);
        // And 30 answered after 20 s each: 10 × 40 + 30 × 20 = 1,000 s
        // waited, 10 gave up: 100 s of patience.
        for i in 0..30 {
            w.finished(
                t0 + Duration::from_secs(11 + i),
                Duration::from_secs(20),
                false,
            );
        }
        let p = w.patience(t0 + Duration::from_secs(60)).unwrap();
        assert!((p - 100.0).abs() < 1e-9, "{p}");
        assert_eq!(w.patience(t0 + Duration::from_secs(3600)), None);
    }
}
