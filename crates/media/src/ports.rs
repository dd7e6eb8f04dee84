//! The node's RTP port pool: even ports of a configured range (RTCP on
//! port + 1), handed out at random among the free ones, and kept in
//! quarantine for a while after release so late packets of an ended call
//! never reach the next one. Random, not sequential: with the next port
//! guessable, a stranger could send to it first and, where the leg latches
//! on the first packet, take the next caller's media.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Why the pool cannot be built or cannot give a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The range holds no even port with its odd neighbour.
    #[error("the RTP port range must hold at least one even/odd pair")]
    EmptyRange,
    /// Every port is in use or in quarantine: the call gets 503.
    #[error("no RTP port free")]
    Exhausted,
}

/// The pool.
#[derive(Debug)]
pub struct Ports {
    /// Free ports, in no order: a take swaps a random one out (O(1)).
    free: Vec<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    hold: Duration,
    total: usize,
    rng: StdRng,
}

impl Ports {
    /// Even ports in `first..=last` (each with `port + 1` in range),
    /// quarantined for `hold` after release, drawn with a generator keyed
    /// by `seed` (from the OS's CSPRNG in production).
    pub fn new(first: u16, last: u16, hold: Duration, seed: [u8; 32]) -> Result<Self, PortError> {
        let start = u32::from(first) + u32::from(first & 1);
        let free: Vec<u16> = (start..u32::from(last))
            .step_by(2)
            .map(|p| p as u16)
            .collect();
        if free.is_empty() {
            return Err(PortError::EmptyRange);
        }
        Ok(Self {
            total: free.len(),
            free,
            quarantine: VecDeque::new(),
            hold,
            rng: StdRng::from_seed(seed),
        })
    }

    /// Pairs in the pool.
    pub fn capacity(&self) -> usize {
        self.total
    }

    /// Pairs free now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Pairs given back and resting (quarantine), free again at the next
    /// [`Self::take`] after their rest.
    pub fn resting(&self) -> usize {
        self.quarantine.len()
    }

    /// An even port (RTP; RTCP is the next one).
    pub fn take(&mut self, now: Instant) -> Result<u16, PortError> {
        while let Some(&(t, p)) = self.quarantine.front() {
            if t > now {
                break;
            }
            self.quarantine.pop_front();
            self.free.push(p);
        }
        if self.free.is_empty() {
            return Err(PortError::Exhausted);
        }
        let i = self.rng.random_range(0..self.free.len());
        Ok(self.free.swap_remove(i))
    }

    /// Gives a port back; usable again after the quarantine.
    pub fn release(&mut self, now: Instant, port: u16) {
        self.quarantine.push_back((now + self.hold, port));
    }
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;

    #[test]
    fn even_pairs_at_random_and_quarantine() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(2);
        let mut p = Ports::new(20001, 20008, hold, [1; 32]).unwrap();
        assert_eq!(p.capacity(), 3, "20002, 20004, 20006 (20008 has no 20009)");
        let mut got = [
            p.take(t0).unwrap(),
            p.take(t0).unwrap(),
            p.take(t0).unwrap(),
        ];
        got.sort_unstable();
        assert_eq!(got, [20002, 20004, 20006], "each once");
        assert_eq!(p.take(t0), Err(PortError::Exhausted));
        p.release(t0, 20004);
        assert_eq!(
            p.take(t0 + Duration::from_secs(1)),
            Err(PortError::Exhausted),
            "quarantined"
        );
        assert_eq!(p.take(t0 + hold), Ok(20004));
        let seed = [0; 32];
        assert_eq!(
            Ports::new(5, 5, hold, seed).unwrap_err(),
            PortError::EmptyRange
        );
        assert_eq!(
            Ports::new(65535, 65535, hold, seed).unwrap_err(),
            PortError::EmptyRange
        );
        assert_eq!(
            Ports::new(9, 2, hold, seed).unwrap_err(),
            PortError::EmptyRange
        );
        assert_eq!(
            Ports::new(65534, 65535, hold, seed).unwrap().take(t0),
            Ok(65534)
        );
    }

    #[test]
    fn the_next_port_cannot_be_guessed_from_the_last() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(1);
        // 20,000 pairs, as a production range holds.
        let mut p = Ports::new(20_000, 59_999, hold, [7; 32]).unwrap();
        let taken: Vec<u16> = (0..1000).map(|_| p.take(t0).unwrap()).collect();
        let sequential = taken
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(2))
            .count();
        assert!(sequential < 5, "{sequential} of 999 steps were +2");
        let mut unique = taken.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 1000, "no port handed out twice while held");
        // Another node (another seed) draws another sequence.
        let mut q = Ports::new(20_000, 59_999, hold, [8; 32]).unwrap();
        let other: Vec<u16> = (0..10).map(|_| q.take(t0).unwrap()).collect();
        assert_ne!(other, taken[..10]);
        // Released ports rest, then come back; the pool drains and refills.
        for &port in &taken {
            p.release(t0, port);
        }
        let mut n = 0;
        while p.take(t0 + hold).is_ok() {
            n += 1;
        }
        assert_eq!(n, 20_000);
    }
}
