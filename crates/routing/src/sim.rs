//! Routing as code: the real [`Router`] against synthetic traffic in virtual
//! time (Poisson arrivals, exponential handle and patience times), and the
//! Erlang C formulas it is checked against.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use centralino_types::{AgentId, CallId, QueueId};

use crate::{QueueSettings, Router};

/// Traffic to simulate.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Calls to generate (over all queues).
    pub calls: u64,
    /// Arrivals per second, over all queues (split evenly).
    pub rate: f64,
    /// Mean handle time, seconds.
    pub aht_seconds: f64,
    /// Mean patience before abandoning, seconds; `None` = never abandons.
    pub patience_seconds: Option<f64>,
    /// Answered within this many seconds counts towards the service level.
    pub service_level_seconds: f64,
    /// Seed of the deterministic generator.
    pub seed: u64,
}

/// Results of one queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueReport {
    /// Calls that arrived.
    pub offered: u64,
    /// Calls answered.
    pub answered: u64,
    /// Calls that gave up waiting.
    pub abandoned: u64,
    /// Answered within the service-level threshold / answered + abandoned.
    pub service_level: f64,
    /// Average speed of answer (wait of answered calls), seconds.
    pub asa_seconds: f64,
    /// Abandoned / offered.
    pub abandon_rate: f64,
    /// Busy time of the queue's operators / their available time.
    pub occupancy: f64,
}

/// SplitMix64: small, deterministic, good enough for traffic generation.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 53 random bits in (0, 1].
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.next_f64().ln()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival(u32),
    Done(u64),
    GiveUp(u64),
    /// A wrap-up ended: waiting calls may move.
    Wake,
}

/// Runs the simulation: every operator (name, queues) logged in at start.
pub fn simulate(
    queues: &[QueueSettings],
    agents: &[(String, Vec<QueueId>)],
    traffic: &Traffic,
) -> Vec<QueueReport> {
    let t0 = Instant::now();
    let at = |s: f64| t0 + Duration::from_secs_f64(s.max(0.0));
    let mut router = Router::new(queues.to_vec());
    for (name, qs) in agents {
        let id = router.add_agent(t0, name, qs.clone());
        router.login(t0, id, false);
    }
    let mut rng = Rng(traffic.seed);
    let nq = queues.len().max(1);
    let per_queue_rate = traffic.rate / nq as f64;
    let mut events: BinaryHeap<Reverse<(u64, Event)>> = BinaryHeap::new();
    // Virtual time in nanoseconds keeps the heap ordering exact.
    let ns = |s: f64| (s * 1e9) as u64;
    for q in 0..nq as u32 {
        events.push(Reverse((
            ns(rng.exp(1.0 / per_queue_rate)),
            Event::Arrival(q),
        )));
    }
    let mut generated = 0u64;
    let mut waiting: HashMap<u64, (QueueId, f64)> = HashMap::new();
    let mut reports = vec![QueueReport::default(); nq];
    let mut within = vec![0u64; nq];
    let mut wait_sum = vec![0.0f64; nq];
    let mut busy = vec![0.0f64; agents.len()];
    let mut serving: HashMap<u64, (AgentId, f64, QueueId)> = HashMap::new();
    let mut end = 0.0f64;
    while let Some(Reverse((t_ns, ev))) = events.pop() {
        let now_s = t_ns as f64 / 1e9;
        end = now_s;
        let now = at(now_s);
        router.handle_timeout(now);
        match ev {
            Event::Arrival(q) => {
                if generated >= traffic.calls {
                    continue;
                }
                let id = generated;
                generated += 1;
                let qid = QueueId(q);
                reports[q as usize].offered += 1;
                if router.enqueue(now, qid, CallId(id)).is_ok() {
                    waiting.insert(id, (qid, now_s));
                    if let Some(p) = traffic.patience_seconds {
                        events.push(Reverse((ns(now_s + rng.exp(p)), Event::GiveUp(id))));
                    }
                } else {
                    reports[q as usize].abandoned += 1;
                }
                events.push(Reverse((
                    ns(now_s + rng.exp(1.0 / per_queue_rate)),
                    Event::Arrival(q),
                )));
            }
            Event::Done(id) => {
                if let Some((a, started, qid)) = serving.remove(&id) {
                    busy[a.0 as usize] += now_s - started;
                    let wrap = router.queue(qid).wrap_up;
                    router.call_ended(now, a, CallId(id), wrap);
                    if !wrap.is_zero() {
                        events.push(Reverse((ns(now_s + wrap.as_secs_f64()), Event::Wake)));
                    }
                }
            }
            Event::Wake => {}
            Event::GiveUp(id) => {
                if let Some((qid, _)) = waiting.get(&id).copied()
                    && router.withdraw(now, qid, CallId(id)).is_some()
                {
                    waiting.remove(&id);
                    reports[qid.0 as usize].abandoned += 1;
                }
            }
        }
        while let Some(d) = router.poll_decision(now) {
            let Some((qid, arrived)) = waiting.remove(&d.call.0) else {
                continue;
            };
            router.answered(d.agent, d.call);
            let q = qid.0 as usize;
            let wait = now_s - arrived;
            reports[q].answered += 1;
            wait_sum[q] += wait;
            if wait <= traffic.service_level_seconds {
                within[q] += 1;
            }
            serving.insert(d.call.0, (d.agent, now_s, qid));
            let done = now_s + rng.exp(traffic.aht_seconds);
            events.push(Reverse((ns(done), Event::Done(d.call.0))));
        }
    }
    for (q, r) in reports.iter_mut().enumerate() {
        let finished = r.answered + r.abandoned;
        r.service_level = if finished == 0 {
            0.0
        } else {
            within[q] as f64 / finished as f64
        };
        r.asa_seconds = if r.answered == 0 {
            0.0
        } else {
            wait_sum[q] / r.answered as f64
        };
        r.abandon_rate = if r.offered == 0 {
            0.0
        } else {
            r.abandoned as f64 / r.offered as f64
        };
        let members: Vec<usize> = agents
            .iter()
            .enumerate()
            .filter(|(_, (_, qs))| qs.contains(&QueueId(q as u32)))
            .map(|(i, _)| i)
            .collect();
        let capacity = members.len() as f64 * end;
        r.occupancy = if capacity > 0.0 {
            members.iter().map(|&i| busy[i]).sum::<f64>() / capacity
        } else {
            0.0
        };
    }
    reports
}

/// Erlang C: the probability that a call waits, with `n` operators and
/// `a` erlangs of offered traffic (`a < n`).
pub fn erlang_c(n: u32, a: f64) -> f64 {
    // Erlang B by the stable recurrence, then C from B.
    let mut b = 1.0;
    for k in 1..=n {
        b = a * b / (f64::from(k) + a * b);
    }
    let rho = a / f64::from(n);
    b / (1.0 - rho + rho * b)
}

/// Erlang C service level: P(wait ≤ t).
pub fn erlang_c_service_level(n: u32, a: f64, aht: f64, t: f64) -> f64 {
    1.0 - erlang_c(n, a) * (-(f64::from(n) - a) * t / aht).exp()
}

/// Erlang C average speed of answer (over all calls), seconds.
pub fn erlang_c_asa(n: u32, a: f64, aht: f64) -> f64 {
    erlang_c(n, a) * aht / (f64::from(n) - a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    fn queue() -> QueueSettings {
        QueueSettings {
            name: "q".into(),
            strategy: Strategy::LongestIdle,
            ring_timeout: Duration::from_secs(15),
            max_no_answer: 3,
            max_wait: Duration::from_secs(3600),
            wrap_up: Duration::ZERO,
            max_waiting: usize::MAX,
        }
    }

    #[test]
    fn erlang_c_reference_values() {
        // Textbook: 10 agents, 8 erlangs → P(wait) ≈ 0.4092.
        assert!((erlang_c(10, 8.0) - 0.4092).abs() < 1e-3);
        // 1 agent: P(wait) = rho.
        assert!((erlang_c(1, 0.5) - 0.5).abs() < 1e-12);
    }

    /// The engine and the estimator agree: single skill, no abandonment,
    /// 85 % occupancy, service level within 2 percentage points of Erlang C
    /// and ASA within 10 % (+0.5 s).
    #[test]
    fn simulated_service_matches_erlang_c() {
        for (n, calls) in [(10u32, 300_000u64), (50, 400_000), (200, 200_000)] {
            let aht = 180.0;
            let a = 0.85 * f64::from(n);
            let traffic = Traffic {
                calls,
                rate: a / aht,
                aht_seconds: aht,
                patience_seconds: None,
                service_level_seconds: 20.0,
                seed: 7 + u64::from(n),
            };
            let agents: Vec<(String, Vec<QueueId>)> =
                (0..n).map(|i| (format!("{i}"), vec![QueueId(0)])).collect();
            let r = &simulate(&[queue()], &agents, &traffic)[0];
            let sl = erlang_c_service_level(n, a, aht, 20.0);
            let asa = erlang_c_asa(n, a, aht);
            assert_eq!(r.offered, calls);
            assert_eq!(r.answered, calls);
            assert!(
                (r.service_level - sl).abs() < 0.02,
                "n={n}: simulated SL {:.4} vs Erlang C {sl:.4}",
                r.service_level
            );
            // ASA converges slowly at high occupancy; tiny ASAs (200
            // operators) are compared in absolute terms.
            assert!(
                (r.asa_seconds - asa).abs() < 0.10 * asa + 0.5,
                "n={n}: simulated ASA {:.2} vs Erlang C {asa:.2}",
                r.asa_seconds
            );
            assert!(
                (r.occupancy - 0.85).abs() < 0.03,
                "n={n}: occupancy {:.3}",
                r.occupancy
            );
        }
    }

    #[test]
    fn impatient_callers_abandon() {
        let traffic = Traffic {
            calls: 5_000,
            rate: 2.0,
            aht_seconds: 60.0,
            patience_seconds: Some(30.0),
            service_level_seconds: 20.0,
            seed: 1,
        };
        // 2 calls/s × 60 s = 120 erlangs on 50 operators: heavy abandonment.
        let agents: Vec<(String, Vec<QueueId>)> = (0..50)
            .map(|i| (format!("{i}"), vec![QueueId(0)]))
            .collect();
        let r = &simulate(&[queue()], &agents, &traffic)[0];
        assert_eq!(r.answered + r.abandoned, r.offered);
        assert!(r.abandon_rate > 0.3, "{r:?}");
        assert!(r.occupancy > 0.9, "{r:?}");
    }
}
