//! Fixed-window counters per key (a client address, a phone number), with
//! a bounded key table: what keeps one web client or one number from
//! using the callback API as a free dialler.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most `limit` events per key per `window`.
#[derive(Debug)]
pub(crate) struct WindowLimiter<K> {
    limit: u32,
    window: Duration,
    max_keys: usize,
    counts: HashMap<K, (Instant, u32)>,
}

/// What the limiter said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Counted; go on.
    Allowed,
    /// Over the limit: retry after this long.
    Limited(Duration),
}

impl<K: Hash + Eq> WindowLimiter<K> {
    /// `limit == 0` allows everything. The table holds at most `max_keys`
    /// keys: when it is full of live windows a new key is refused (a flood
    /// of distinct keys must not evict the windows that hold it back).
    pub(crate) fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit,
            window,
            max_keys,
            counts: HashMap::new(),
        }
    }

    /// A new limit (a reload): the counts so far stay.
    pub(crate) fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
    }

    /// Counts one event for `key` at `now`.
    pub(crate) fn check(&mut self, now: Instant, key: K) -> Verdict {
        if self.limit == 0 {
            return Verdict::Allowed;
        }
        if !self.counts.contains_key(&key) && self.counts.len() >= self.max_keys {
            let window = self.window;
            self.counts
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if self.counts.len() >= self.max_keys {
                return Verdict::Limited(self.window);
            }
        }
        let entry = self.counts.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left = self
                .window
                .saturating_sub(now.saturating_duration_since(entry.0));
            return Verdict::Limited(left.max(Duration::from_secs(1)));
        }
        entry.1 += 1;
        Verdict::Allowed
    }

    /// Keys held (bounded by `max_keys`).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_limit_per_window_then_waits() {
        let t0 = Instant::now();
        let mut l = WindowLimiter::new(3, Duration::from_secs(60), 10);
        for _ in 0..3 {
            assert_eq!(l.check(t0, "a"), Verdict::Allowed);
        }
        assert_eq!(
            l.check(t0 + Duration::from_secs(20), "a"),
            Verdict::Limited(Duration::from_secs(40))
        );
        assert_eq!(l.check(t0, "b"), Verdict::Allowed, "other keys unaffected");
        assert_eq!(l.check(t0 + Duration::from_secs(60), "a"), Verdict::Allowed);
    }

    #[test]
    fn the_table_is_bounded_and_a_flood_of_new_keys_is_refused_not_evicting() {
        let t0 = Instant::now();
        let mut l = WindowLimiter::new(1, Duration::from_secs(60), 100);
        for k in 0..100u32 {
            assert_eq!(l.check(t0, k), Verdict::Allowed);
        }
        assert!(matches!(l.check(t0, 1000), Verdict::Limited(_)));
        assert_eq!(l.len(), 100);
        assert!(matches!(l.check(t0, 5), Verdict::Limited(_)), "still held");
        // Once the windows are over, room is made.
        assert_eq!(
            l.check(t0 + Duration::from_secs(61), 1000),
            Verdict::Allowed
        );
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn zero_is_off() {
        let mut l = WindowLimiter::new(0, Duration::from_secs(1), 1);
        for k in 0..10 {
            assert_eq!(l.check(Instant::now(), k), Verdict::Allowed);
        }
    }
}
