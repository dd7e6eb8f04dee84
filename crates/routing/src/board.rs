//! The agent board: one atomic word per operator holding its state and a
//! version, the source of truth for exclusivity.
//!
//! The router is the only writer of its indexes, but it is not the only
//! party that takes operators out of `Available`: the API pauses them from
//! an HTTP task, a federation link reserves them for another node. Those
//! parties never lock the router; they compare-and-swap the operator's word
//! from the exact `(version, Available)` they saw. The router does the same
//! when it reserves, so of two racing takers exactly one wins and the loser
//! sees the new version. Readers (wallboard, metrics) load the word.
//!
//! Word layout: `version:u32 | state:u8 | aux:u8 | 0:u16`.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// An operator's state code on the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// Not registered, or logged off.
    LoggedOut = 0,
    /// Ready for a call.
    Available = 1,
    /// Chosen for a call; the phone is about to ring.
    Reserved = 2,
    /// The phone rings.
    Ringing = 3,
    /// Talking.
    OnCall = 4,
    /// After-call work.
    WrapUp = 5,
    /// Paused (the aux byte says why).
    Paused = 6,
}

impl Code {
    /// All codes, in label order.
    pub const ALL: [Self; 7] = [
        Self::LoggedOut,
        Self::Available,
        Self::Reserved,
        Self::Ringing,
        Self::OnCall,
        Self::WrapUp,
        Self::Paused,
    ];

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::LoggedOut => "logged_out",
            Self::Available => "available",
            Self::Reserved => "reserved",
            Self::Ringing => "ringing",
            Self::OnCall => "on_call",
            Self::WrapUp => "wrap_up",
            Self::Paused => "paused",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Available,
            2 => Self::Reserved,
            3 => Self::Ringing,
            4 => Self::OnCall,
            5 => Self::WrapUp,
            6 => Self::Paused,
            _ => Self::LoggedOut,
        }
    }
}

/// One load of an operator's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Bumped by every transition.
    pub version: u32,
    /// State.
    pub code: Code,
    /// State detail (the pause reason).
    pub aux: u8,
}

impl Slot {
    fn pack(self) -> u64 {
        (u64::from(self.version) << 32)
            | (u64::from(self.code as u8) << 24)
            | (u64::from(self.aux) << 16)
    }

    fn unpack(w: u64) -> Self {
        Self {
            version: (w >> 32) as u32,
            code: Code::from_u8((w >> 24) as u8),
            aux: (w >> 16) as u8,
        }
    }
}

/// One word per operator.
pub struct Board {
    words: Box<[AtomicU64]>,
}

impl Board {
    /// `n` operators, all logged out at version 0.
    pub fn new(n: usize) -> Self {
        Self {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Number of operators.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The current word.
    pub fn load(&self, agent: usize) -> Slot {
        Slot::unpack(self.words[agent].load(Ordering::Acquire))
    }

    /// Moves `agent` from exactly `seen` to `(code, aux)`, bumping the
    /// version. On failure returns what is there now.
    pub fn transition(&self, agent: usize, seen: Slot, code: Code, aux: u8) -> Result<Slot, Slot> {
        let next = Slot {
            version: seen.version.wrapping_add(1),
            code,
            aux,
        };
        self.words[agent]
            .compare_exchange(
                seen.pack(),
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| next)
            .map_err(Slot::unpack)
    }

    /// Takes an available operator seen at `version` (reservation, or a
    /// pause from another thread). Exactly one of racing takers succeeds.
    pub fn take(&self, agent: usize, version: u32, code: Code, aux: u8) -> Result<Slot, Slot> {
        let seen = Slot {
            version,
            code: Code::Available,
            aux: 0,
        };
        self.transition(agent, seen, code, aux)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn take_is_exclusive_and_versioned() {
        let b = Board::new(1);
        let s0 = b.load(0);
        let avail = b.transition(0, s0, Code::Available, 0).unwrap();
        assert_eq!(avail.version, 1);
        let won = b.take(0, avail.version, Code::Reserved, 0).unwrap();
        assert_eq!(won.version, 2);
        let lost = b.take(0, avail.version, Code::Paused, 1).unwrap_err();
        assert_eq!(lost, won);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// The router reserving and the API pausing the same available
    /// operator at once: exactly one wins, in every interleaving, and the
    /// version moves by exactly one.
    #[test]
    fn racing_takers_exactly_one_wins() {
        loom::model(|| {
            let b = Arc::new(Board::new(1));
            let s0 = b.load(0);
            let avail = b.transition(0, s0, Code::Available, 0).unwrap();
            let b1 = b.clone();
            let t = loom::thread::spawn(move || b1.take(0, avail.version, Code::Paused, 1).is_ok());
            let router = b.take(0, avail.version, Code::Reserved, 0).is_ok();
            let api = t.join().unwrap();
            assert!(router ^ api, "router {router} api {api}");
            let end = b.load(0);
            assert_eq!(end.version, avail.version + 1);
            assert_eq!(end.code, if router { Code::Reserved } else { Code::Paused });
        });
    }

    /// ABA: the router reserves and releases (available again at a new
    /// version) while the API still holds the version it saw before: the
    /// stale taker must fail even though the state reads `Available` again.
    #[test]
    fn stale_version_never_takes() {
        loom::model(|| {
            let b = Arc::new(Board::new(1));
            let s0 = b.load(0);
            let avail = b.transition(0, s0, Code::Available, 0).unwrap();
            let b1 = b.clone();
            let t = loom::thread::spawn(move || {
                let r = b1.take(0, avail.version, Code::Reserved, 0);
                if let Ok(res) = r {
                    b1.transition(0, res, Code::Available, 0).unwrap();
                }
                r.is_ok()
            });
            let api = b.take(0, avail.version, Code::Paused, 1).is_ok();
            let router = t.join().unwrap();
            assert!(router ^ api, "router {router} api {api}");
        });
    }
}
