//! Erlang C staffing: how many operators a queue needs for its service
//! level, from the offered rate and the handling time (M/M/N: Poisson
//! arrivals, exponential handling, callers who never give up, which errs
//! on the side of more operators).

/// Most operators ever recommended for one queue (the national network's
/// size, with room): the search is bounded whatever the input.
pub const MAX_AGENTS: u32 = 200_000;

/// A strictly positive number (NaN is not).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// The probability that a call waits (Erlang C) with `agents` operators
/// and `traffic` Erlangs offered; 1 when the operators cannot keep up.
#[must_use]
pub fn erlang_c(agents: u32, traffic: f64) -> f64 {
    if !positive(traffic) {
        return 0.0;
    }
    let n = f64::from(agents);
    if n <= traffic {
        return 1.0;
    }
    // Erlang B by its recursion (stable at any size), then C from B.
    let mut b = 1.0;
    for k in 1..=agents {
        b = traffic * b / (f64::from(k) + traffic * b);
    }
    n * b / (n - traffic * (1.0 - b))
}

/// The share of calls answered within `t_seconds` with `agents`
/// operators, `traffic` Erlangs, `aht_seconds` of handling per call.
#[must_use]
pub fn service_level(agents: u32, traffic: f64, aht_seconds: f64, t_seconds: f64) -> f64 {
    if !positive(traffic) {
        return 1.0;
    }
    let n = f64::from(agents);
    if n <= traffic || !positive(aht_seconds) {
        return 0.0;
    }
    1.0 - erlang_c(agents, traffic) * (-(n - traffic) * t_seconds / aht_seconds).exp()
}

/// The mean wait of all calls (ASA), seconds; infinite when the operators
/// cannot keep up.
#[must_use]
pub fn average_speed_of_answer(agents: u32, traffic: f64, aht_seconds: f64) -> f64 {
    let n = f64::from(agents);
    if !positive(traffic) {
        return 0.0;
    }
    if n <= traffic {
        return f64::INFINITY;
    }
    erlang_c(agents, traffic) * aht_seconds / (n - traffic)
}

/// The fewest operators that answer `target` (0..1) of the calls within
/// `t_seconds`, for `rate` calls per second of `aht_seconds` each; 0
/// without traffic, `None` past [`MAX_AGENTS`] or for a meaningless input.
#[must_use]
pub fn agents_needed(rate: f64, aht_seconds: f64, t_seconds: f64, target: f64) -> Option<u32> {
    if !(rate >= 0.0 && aht_seconds >= 0.0 && t_seconds >= 0.0 && (0.0..1.0).contains(&target)) {
        return None;
    }
    let traffic = rate * aht_seconds;
    if traffic == 0.0 {
        return Some(0);
    }
    // Fewer than the traffic never keeps up; start just above it.
    let mut n = (traffic.floor() as u64 + 1).min(u64::from(MAX_AGENTS) + 1) as u32;
    while n <= MAX_AGENTS {
        if service_level(n, traffic, aht_seconds, t_seconds) >= target {
            return Some(n);
        }
        n += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-5
    }

    /// The textbook case (10 Erlangs: 100 calls in half an hour, 180 s
    /// each; 80 % within 20 s), to the published figures: 13 operators
    /// give 79.6 % and an ASA of 17.1 s, 14 give 88.8 %: 14 are needed.
    #[test]
    fn the_textbook_table() {
        for (n, c, sl, asa) in [
            (11, 0.682_118, 0.389_614, 122.7813),
            (12, 0.449_388, 0.640_158, 40.4449),
            (13, 0.285_270, 0.795_595, 17.1162),
            (14, 0.174_132, 0.888_350, 7.8359),
            (15, 0.102_042, 0.941_453, 3.6735),
        ] {
            assert!(
                close(erlang_c(n, 10.0), c),
                "C({n}) = {}",
                erlang_c(n, 10.0)
            );
            assert!(close(service_level(n, 10.0, 180.0, 20.0), sl), "SL({n})");
            let got = average_speed_of_answer(n, 10.0, 180.0);
            assert!((got - asa).abs() < 1e-3, "ASA({n}) = {got}");
        }
        assert_eq!(agents_needed(100.0 / 1800.0, 180.0, 20.0, 0.8), Some(14));
    }

    /// Other sizes, computed independently (Python, the same formulas):
    /// a small line, a large one, the national scale.
    #[test]
    fn sizes_from_one_operator_to_ten_thousand() {
        for (rate, aht, t, target, n) in [
            (0.01, 600.0, 60.0, 0.8, 9),
            (0.1, 240.0, 30.0, 0.9, 30),
            (1.0, 300.0, 20.0, 0.8, 312),
            (5.0, 180.0, 20.0, 0.8, 911),
            (50.0, 200.0, 20.0, 0.8, 10_015),
        ] {
            assert_eq!(agents_needed(rate, aht, t, target), Some(n), "{rate}/s");
        }
        assert_eq!(agents_needed(0.0, 180.0, 20.0, 0.8), Some(0));
        assert_eq!(agents_needed(1.0, 180.0, 20.0, 1.0), None, "never 100 %");
        assert_eq!(agents_needed(f64::NAN, 180.0, 20.0, 0.8), None);
        assert_eq!(agents_needed(1e9, 180.0, 20.0, 0.8), None, "bounded");
        assert_eq!(erlang_c(5, 5.0), 1.0, "no more operators than the traffic");
        assert_eq!(service_level(0, 0.0, 180.0, 20.0), 1.0);
    }
}
