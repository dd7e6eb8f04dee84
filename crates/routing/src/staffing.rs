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

/// Longest queue Erlang A follows, past which its probabilities are
/// dropped (they are far below any figure shown by then).
const MAX_QUEUE: usize = 200_000;

/// Most work one Erlang A evaluation does (queue states × integration
/// steps, about 10 ns each): past it, no answer (the caller falls back to
/// Erlang C) rather than seconds of CPU for a long threshold over a long
/// queue.
pub const ERLANG_A_WORK_MOST: usize = 20_000_000;

/// What Erlang A (M/M/N+M) gives a queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErlangA {
    /// Calls answered within the threshold, over all calls (every caller
    /// is answered or gives up: answered and abandoned).
    pub service_level: f64,
    /// Calls whose caller gives up before an operator answers.
    pub abandon_rate: f64,
}

/// Erlang A: callers give up after an exponential patience of mean
/// `patience_seconds`; `agents` operators, `rate` calls per second of
/// `aht_seconds` each, answered within `t_seconds` or not. Unlike
/// Erlang C it has an answer when the operators cannot keep up (the
/// impatient leave), and it asks for fewer operators when callers do
/// leave. A caller finding `j` others waiting is answered once `j + 1`
/// operators free up or callers ahead leave, before its own patience
/// runs out: that chance within `t` is integrated for every `j` at once.
/// `None` when that would take more than [`ERLANG_A_WORK_MOST`].
#[must_use]
pub fn erlang_a(
    agents: u32,
    rate: f64,
    aht_seconds: f64,
    patience_seconds: f64,
    t_seconds: f64,
) -> Option<ErlangA> {
    if !positive(rate) {
        return Some(ErlangA {
            service_level: 1.0,
            abandon_rate: 0.0,
        });
    }
    if !(positive(aht_seconds) && positive(patience_seconds) && t_seconds >= 0.0) || agents == 0 {
        return Some(ErlangA {
            service_level: 0.0,
            abandon_rate: 1.0,
        });
    }
    let (mu, theta) = (1.0 / aht_seconds, 1.0 / patience_seconds);
    let n = agents as usize;
    let served = f64::from(agents) * mu;
    // The states' probabilities (k calls in the system), as logarithms
    // (n! and a^n overflow long before the national scale), up to where
    // the queue's tail no longer counts.
    let mut ln = Vec::with_capacity(n + 64);
    ln.push(0.0f64);
    for k in 1..=n {
        ln.push(ln[k - 1] + (rate / (k as f64 * mu)).ln());
    }
    let mut peak = ln.iter().copied().fold(f64::MIN, f64::max);
    let mut j = 0usize;
    loop {
        let next = ln[n + j] + (rate / (served + (j + 1) as f64 * theta)).ln();
        peak = peak.max(next);
        if (next < peak - 40.0 && next < ln[n + j]) || j >= MAX_QUEUE {
            break;
        }
        ln.push(next);
        j += 1;
    }
    let p: Vec<f64> = ln.iter().map(|l| (l - peak).exp()).collect();
    let total: f64 = p.iter().sum();
    let queue = p.len() - n; // states n.. : 0..queue callers ahead
    // u[j]: chance a caller with j ahead is answered within the time
    // integrated so far; d/dt by the backward equations, RK4.
    let fastest = served + queue as f64 * theta + theta;
    // Two steps per fastest transition keep RK4 stable (h·λ = 0.5, far
    // inside its 2.78): never fewer, or the answer would be noise; too
    // many for the work bound is no answer (the cast saturates).
    let steps = ((t_seconds * fastest * 2.0).ceil() as usize).max(16);
    if t_seconds > 0.0 && queue.saturating_mul(steps) > ERLANG_A_WORK_MOST {
        return None;
    }
    let h = t_seconds / steps as f64;
    let deriv = |u: &[f64], out: &mut [f64]| {
        for j in 0..u.len() {
            let ahead = if j == 0 { 1.0 } else { u[j - 1] };
            out[j] = (served + j as f64 * theta) * (ahead - u[j]) - theta * u[j];
        }
    };
    let mut u = vec![0.0f64; queue];
    if t_seconds > 0.0 {
        let (mut k1, mut k2, mut k3, mut k4) = (
            vec![0.0; queue],
            vec![0.0; queue],
            vec![0.0; queue],
            vec![0.0; queue],
        );
        let mut tmp = vec![0.0; queue];
        for _ in 0..steps {
            deriv(&u, &mut k1);
            for j in 0..queue {
                tmp[j] = u[j] + 0.5 * h * k1[j];
            }
            deriv(&tmp, &mut k2);
            for j in 0..queue {
                tmp[j] = u[j] + 0.5 * h * k2[j];
            }
            deriv(&tmp, &mut k3);
            for j in 0..queue {
                tmp[j] = u[j] + h * k3[j];
            }
            deriv(&tmp, &mut k4);
            for j in 0..queue {
                u[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j]);
            }
        }
    }
    let at_once: f64 = p[..n].iter().sum();
    let waited: f64 = p[n..].iter().zip(&u).map(|(p, u)| p * u).sum();
    // Callers leave at θ each while waiting: θ·E[queue] per second, over
    // the arrivals.
    let queued: f64 = p[n..].iter().enumerate().map(|(j, p)| j as f64 * p).sum();
    Some(ErlangA {
        service_level: ((at_once + waited) / total).clamp(0.0, 1.0),
        abandon_rate: (theta * queued / total / rate).clamp(0.0, 1.0),
    })
}

/// The fewest operators that answer `target` of the calls within
/// `t_seconds` and lose at most `max_abandon` of them, when callers give
/// up after `patience_seconds` on average (Erlang A). The abandon bound
/// matters: with impatient callers the service level alone is met by
/// letting a good share of them go (at 10,000 Erlangs and 2 minutes of
/// patience, 8,637 operators answer 80 % within 20 s while 14 % give up);
/// and on a small line Erlang C's count can still lose more than the
/// bound (6 Erlangs, 30 s of patience, 60 s threshold: 5.9 %), so the
/// search goes past it then. `None` as [`agents_needed`], or when an
/// evaluation is past [`ERLANG_A_WORK_MOST`].
///
/// `last`, the previous answer for the same queue, is tried first:
/// traffic moves little between two questions 15 s apart, so two
/// evaluations (`last` meets the targets, one fewer does not) usually
/// answer instead of a whole search (up to ~36 at the national scale).
/// The answer is the same either way.
#[must_use]
pub fn agents_needed_a(
    rate: f64,
    aht_seconds: f64,
    patience_seconds: f64,
    t_seconds: f64,
    target: f64,
    max_abandon: f64,
    last: Option<u32>,
) -> Option<u32> {
    if !positive(patience_seconds) || !(0.0..=1.0).contains(&max_abandon) {
        return None;
    }
    let upper = agents_needed(rate, aht_seconds, t_seconds, target)?;
    if upper == 0 {
        return Some(0);
    }
    let meets = |n: u32| -> Option<bool> {
        let a = erlang_a(n, rate, aht_seconds, patience_seconds, t_seconds)?;
        Some(a.service_level >= target && a.abandon_rate <= max_abandon)
    };
    // A hint past the work bound (an old, larger count) is no reason to
    // give up: the search below may still answer.
    if let Some(h) = last.filter(|&h| h > 0 && h < MAX_AGENTS)
        && meets(h) == Some(true)
        && meets(h - 1) == Some(false)
    {
        return Some(h);
    }
    // Both figures improve with the operators. Erlang C's count usually
    // meets them (the impatient leave the queue shorter); when it does
    // not, look above it, doubling the step.
    let mut hi = upper;
    let mut lo = 0u32;
    let mut step = 1u32;
    while !meets(hi)? {
        if hi >= MAX_AGENTS {
            return None;
        }
        lo = hi;
        hi = hi.saturating_add(step).min(MAX_AGENTS);
        step = step.saturating_mul(2);
    }
    // Answered calls are at most what the operators can handle: fewer
    // than traffic × (1 − max_abandon) of them lose more than the bound.
    let traffic = rate * aht_seconds;
    let floor = ((traffic * (1.0 - max_abandon)).ceil() as u64).saturating_sub(1);
    lo = lo.max(floor.min(u64::from(hi.saturating_sub(1))) as u32);
    // The smallest between: by bisection.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if meets(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The previous answer as a hint changes how fast, never what: right,
    /// too high, too low or absurd, the same count comes back.
    #[test]
    fn erlang_a_near_its_last_answer_answers_the_same() {
        for (rate, aht, patience, t) in [(0.5, 180.0, 60.0, 20.0), (3.0, 240.0, 30.0, 60.0)] {
            let plain = agents_needed_a(rate, aht, patience, t, 0.8, 0.05, None).unwrap();
            for last in [
                None,
                Some(plain),
                Some(plain + 5),
                Some(plain.saturating_sub(3)),
                Some(1),
                Some(MAX_AGENTS - 1),
                Some(u32::MAX),
            ] {
                assert_eq!(
                    agents_needed_a(rate, aht, patience, t, 0.8, 0.05, last),
                    Some(plain),
                    "{rate} {last:?}"
                );
            }
        }
    }

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

    /// Erlang A: with callers who never give up it is Erlang C; with
    /// impatient ones it needs fewer operators, and it still answers
    /// when the operators cannot keep up.
    #[test]
    fn erlang_a_meets_erlang_c_and_asks_for_less_when_callers_leave() {
        for n in [11u32, 13, 14, 20] {
            let c = service_level(n, 10.0, 180.0, 20.0);
            let a = erlang_a(n, 10.0 / 180.0, 180.0, 1e9, 20.0).unwrap();
            assert!(
                (a.service_level - c).abs() < 1e-4,
                "n={n}: A {a:?} vs C {c}"
            );
            assert!(a.abandon_rate < 1e-4, "{a:?}");
        }
        let rate = 100.0 / 1800.0;
        assert_eq!(agents_needed(rate, 180.0, 20.0, 0.8), Some(14));
        let a = agents_needed_a(rate, 180.0, 60.0, 20.0, 0.8, 0.05, None).unwrap();
        assert!(a <= 14, "{a}");
        // Over capacity (12 Erlangs on 10): Erlang C has no answer; the
        // impatient leave, at least the traffic the operators cannot take.
        assert_eq!(service_level(10, 12.0, 180.0, 20.0), 0.0);
        let over = erlang_a(10, 12.0 / 180.0, 180.0, 60.0, 20.0).unwrap();
        assert!(
            over.service_level > 0.0 && over.service_level < 0.8,
            "{over:?}"
        );
        assert!(over.abandon_rate > 1.0 - 10.0 / 12.0, "{over:?}");
        assert_eq!(
            erlang_a(0, 1.0, 180.0, 60.0, 20.0).unwrap().service_level,
            0.0
        );
        assert_eq!(
            erlang_a(5, 0.0, 180.0, 60.0, 20.0).unwrap().service_level,
            1.0
        );
        assert_eq!(
            agents_needed_a(rate, 180.0, 0.0, 20.0, 0.8, 0.05, None),
            None
        );
        // The national scale, bounded and quick: the service level alone
        // lets 14 % go; 5 % at most asks for more.
        let loose = agents_needed_a(50.0, 200.0, 120.0, 20.0, 0.8, 1.0, None).unwrap();
        assert_eq!(loose, 8_637);
        let l = erlang_a(loose, 50.0, 200.0, 120.0, 20.0).unwrap();
        assert!(l.abandon_rate > 0.13, "{l:?}");
        let kept = agents_needed_a(50.0, 200.0, 120.0, 20.0, 0.8, 0.05, None).unwrap();
        assert!(kept > loose && kept <= 10_015, "{kept}");
        assert!(
            erlang_a(kept, 50.0, 200.0, 120.0, 20.0)
                .unwrap()
                .abandon_rate
                <= 0.05
        );
    }

    /// A small line with impatient callers: Erlang C's count (6
    /// Erlangs: 0.02 calls/s of 300 s, 80 % within 60 s) still loses
    /// 5.9 % of them with 30 s of patience, so the advisor asks for more,
    /// the fewest that lose at most 5 %; and the search never runs away.
    #[test]
    fn erlang_a_looks_past_erlang_c_when_too_many_would_leave() {
        let (rate, aht, patience, t) = (0.02, 300.0, 30.0, 60.0);
        let c = agents_needed(rate, aht, t, 0.8).unwrap();
        let at_c = erlang_a(c, rate, aht, patience, t).unwrap();
        assert!(at_c.abandon_rate > 0.05, "{c}: {at_c:?}");
        let a = agents_needed_a(rate, aht, patience, t, 0.8, 0.05, None).unwrap();
        assert!(a > c, "{a} vs {c}");
        let got = erlang_a(a, rate, aht, patience, t).unwrap();
        assert!(
            got.abandon_rate <= 0.05 && got.service_level >= 0.8,
            "{got:?}"
        );
        let fewer = erlang_a(a - 1, rate, aht, patience, t).unwrap();
        assert!(
            fewer.abandon_rate > 0.05 || fewer.service_level < 0.8,
            "{fewer:?}"
        );
        // 3 Erlangs, very impatient callers: about 10 % leave at Erlang C's count.
        let c3 = agents_needed(0.01, 300.0, 60.0, 0.8).unwrap();
        let at_c3 = erlang_a(c3, 0.01, 300.0, 10.0, 60.0).unwrap();
        assert!(at_c3.abandon_rate > 0.05, "{c3}: {at_c3:?}");
        let a3 = agents_needed_a(0.01, 300.0, 10.0, 60.0, 0.8, 0.05, None).unwrap();
        assert!(a3 > c3);
        let got3 = erlang_a(a3, 0.01, 300.0, 10.0, 60.0).unwrap();
        assert!(got3.abandon_rate <= 0.05, "{got3:?}");
    }

    /// Erlang A's work is bounded: a long threshold over a long queue is
    /// refused (Erlang C then stands) instead of seconds of CPU.
    #[test]
    fn erlang_a_refuses_work_past_its_bound() {
        // 9,990 Erlangs on 10,000 operators, patient callers, a 10-minute
        // threshold: thousands of queue states × tens of thousands of steps.
        assert_eq!(
            erlang_a(10_000, 9_990.0 / 300.0, 300.0, 3_600.0, 600.0),
            None
        );
        assert!(erlang_a(1_000, 900.0 / 300.0, 300.0, 120.0, 20.0).is_some());
        // Fast service and a long threshold: over a million RK4 steps
        // for stability. Never fewer (a clamped step is unstable, its
        // answer noise): computed in full within the bound, or none.
        let fast = erlang_a(10_000, 100.0, 10.0, 60.0, 600.0).expect("within the work bound");
        assert!(fast.service_level > 0.999, "{fast:?}");
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
