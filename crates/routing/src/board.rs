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
//!
//! Beside each word, in the same cell, the operator's time of their last
//! change of state or reason, in whole Unix seconds of a coarse clock the
//! engine moves once per turn (`tick`): the wallboard's "time in state",
//! with no clock read on the router's path (and none at all here:
//! sans-IO).

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};
// Not part of the exclusivity protocol (a reading for people), so plain
// atomics even under loom.
use std::sync::atomic::AtomicU32;

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
    cells: Box<[Cell]>,
    /// Unix seconds, moved forward by [`Board::tick`].
    clock: AtomicU32,
}

/// An operator's word and time of change side by side: a transition
/// writes both, and at 40,000 operators each is a likely cache miss, so
/// one line instead of two (16 bytes: four operators a line).
#[repr(C, align(16))]
struct Cell {
    word: AtomicU64,
    /// `clock` when their state or reason last changed.
    since: AtomicU32,
}

impl Board {
    /// `n` operators, all logged out at version 0.
    pub fn new(n: usize) -> Self {
        Self {
            cells: (0..n)
                .map(|_| Cell {
                    word: AtomicU64::new(0),
                    since: AtomicU32::new(0),
                })
                .collect(),
            clock: AtomicU32::new(0),
        }
    }

    /// Moves the coarse clock to `unix` seconds (never back). The engine
    /// calls it once per turn, so a transition made in the turn is stamped
    /// with the turn's second.
    pub fn tick(&self, unix: i64) {
        let now = u32::try_from(unix.max(0)).unwrap_or(u32::MAX);
        self.clock.fetch_max(now, Ordering::Relaxed);
    }

    /// Seconds from `agent`'s last change of state or reason to `unix`
    /// (the reader's clock; 0 if it is behind the change); `None` for an
    /// operator unchanged since the board was made (logged out since the
    /// start: how long is not known here).
    pub fn seconds_in_state(&self, agent: usize, unix: i64) -> Option<u32> {
        let since = self.cells[agent].since.load(Ordering::Relaxed);
        (since > 0).then(|| {
            u32::try_from(unix.max(0))
                .unwrap_or(u32::MAX)
                .saturating_sub(since)
        })
    }

    /// Number of operators.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The current word.
    pub fn load(&self, agent: usize) -> Slot {
        Slot::unpack(self.cells[agent].word.load(Ordering::Acquire))
    }

    /// Moves `agent` from exactly `seen` to `(code, aux)`, bumping the
    /// version. On failure returns what is there now.
    pub fn transition(&self, agent: usize, seen: Slot, code: Code, aux: u8) -> Result<Slot, Slot> {
        let next = Slot {
            version: seen.version.wrapping_add(1),
            code,
            aux,
        };
        self.cells[agent]
            .word
            .compare_exchange(
                seen.pack(),
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| {
                if (seen.code, seen.aux) != (code, aux) {
                    let now = self.clock.load(Ordering::Relaxed);
                    self.cells[agent].since.store(now, Ordering::Relaxed);
                }
                next
            })
            .map_err(Slot::unpack)
    }

    /// Restarts the operator's time in state without a change of state: a
    /// new offer made to an operator still reserved by the last one.
    pub fn restamp(&self, agent: usize) {
        let now = self.clock.load(Ordering::Relaxed);
        self.cells[agent].since.store(now, Ordering::Relaxed);
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

    #[test]
    fn time_in_state_counts_from_the_last_change_of_state_or_reason() {
        let b = Board::new(2);
        b.tick(1_000);
        let avail = b.transition(0, b.load(0), Code::Available, 0).unwrap();
        assert_eq!(b.seconds_in_state(0, 1_060), Some(60));
        // A taker that loses changes nothing; a new version in the same
        // state and reason does not restart the time either.
        b.tick(1_030);
        let again = b.transition(0, avail, Code::Available, 0).unwrap();
        assert!(b.transition(0, avail, Code::Paused, 1).is_err());
        assert_eq!(b.seconds_in_state(0, 1_060), Some(60));
        // Another reason is another state.
        let paused = b.transition(0, again, Code::Paused, 1).unwrap();
        assert_eq!(b.seconds_in_state(0, 1_060), Some(30));
        // The clock never goes back.
        b.tick(900);
        b.transition(0, paused, Code::Paused, 2).unwrap();
        assert_eq!(b.seconds_in_state(0, 1_060), Some(30));
        // Never changed: not known.
        assert_eq!(b.seconds_in_state(1, 1_060), None);
        // A reader whose clock is behind the change reads 0.
        assert_eq!(b.seconds_in_state(0, 1_000), Some(0));
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
