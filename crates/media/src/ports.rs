//! The node's RTP port pool: even ports of a configured range (RTCP on
//! port + 1), handed out least recently used first, and kept in quarantine
//! for a while after release so late packets of an ended call never reach
//! the next one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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
    free: VecDeque<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    hold: Duration,
    total: usize,
}

impl Ports {
    /// Even ports in `first..=last` (each with `port + 1` in range),
    /// quarantined for `hold` after release.
    pub fn new(first: u16, last: u16, hold: Duration) -> Result<Self, PortError> {
        let start = u32::from(first) + u32::from(first & 1);
        let free: VecDeque<u16> = (start..u32::from(last))
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

    /// An even port (RTP; RTCP is the next one).
    pub fn take(&mut self, now: Instant) -> Result<u16, PortError> {
        while let Some(&(t, p)) = self.quarantine.front() {
            if t > now {
                break;
            }
            self.quarantine.pop_front();
            self.free.push_back(p);
        }
        self.free.pop_front().ok_or(PortError::Exhausted)
    }

    /// Gives a port back; usable again after the quarantine.
    pub fn release(&mut self, now: Instant, port: u16) {
        self.quarantine.push_back((now + self.hold, port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_pairs_lru_and_quarantine() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(2);
        let mut p = Ports::new(20001, 20008, hold).unwrap();
        assert_eq!(p.capacity(), 3, "20002, 20004, 20006 (20008 has no 20009)");
        let a = p.take(t0).unwrap();
        let b = p.take(t0).unwrap();
        let c = p.take(t0).unwrap();
        assert_eq!((a, b, c), (20002, 20004, 20006));
        assert_eq!(p.take(t0), Err(PortError::Exhausted));
        p.release(t0, b);
        assert_eq!(
            p.take(t0 + Duration::from_secs(1)),
            Err(PortError::Exhausted),
            "quarantined"
        );
        assert_eq!(p.take(t0 + hold), Ok(b));
        assert_eq!(Ports::new(5, 5, hold).unwrap_err(), PortError::EmptyRange);
        assert_eq!(
            Ports::new(65535, 65535, hold).unwrap_err(),
            PortError::EmptyRange
        );
        assert_eq!(Ports::new(9, 2, hold).unwrap_err(), PortError::EmptyRange);
        assert_eq!(Ports::new(65534, 65535, hold).unwrap().take(t0), Ok(65534));
    }
}
