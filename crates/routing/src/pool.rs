//! Indexes of available operators, one per pool (a queue's ring for one
//! requirement set), shaped by the queue's strategy.
//!
//! FIFO and heap entries carry the board version at which the operator
//! became available; an entry whose version no longer matches is stale and
//! dropped when met (lazy deletion), so leaving `Available` costs nothing
//! here. A Fenwick position is its operator's alone and carries no
//! version: stale while the board does not say `Available`, it keeps its
//! weight until a pick meets it and zeroes it (or the operator is retired
//! or their attributes change). Everything is `Vec`-backed: after warm-up
//! no decision allocates.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// An agent index and the board version it was available at.
pub(crate) type Entry = (u32, u32);

/// Weights over member positions with O(log n) update, prefix sum and
/// weighted search: serves linear, round-robin, random and weighted-random
/// selection with one structure.
///
/// A Fenwick (binary indexed) tree over blocks of 64 positions, with one
/// bit per position saying its weight is not zero: a pool of 420 operators
/// has a tree of 7 sums instead of 420, so an update touches at most 3
/// of them and a pool's index stays in a few cache lines. Each block keeps
/// its tree node and its bits side by side (16 bytes, about four blocks a
/// cache line), and per-position weights exist only once a weight (or
/// level) above 1 was set or pushed (weighted random): otherwise a
/// position weighs what its bit says, and indexing an operator writes one
/// block and the tree nodes above it (and, weighted, its weight), not a
/// slot and four arrays. Inside a block, a search selects the bit
/// directly while every weight is 0 or 1, else it walks the block's set
/// bits.
#[derive(Default)]
#[repr(C, align(64))]
pub(crate) struct Fenwick {
    /// The operator at each position. No version: a position is its
    /// operator's alone while they are members, so "available on the
    /// board now" is what its bit must mean, and indexing an operator
    /// writes only the block (a slot per push was a cache miss each).
    pub(crate) slots: Vec<u32>,
    blocks: Vec<Block>,
    total: u64,
    /// Some weight above 1 was ever set or pushed (weighted random):
    /// `weight` holds every position's weight from then on.
    weighted: bool,
    /// Per position, once `weighted`: its weight now, and the weight
    /// [`Self::enable`] gives it (its level, recorded at [`Self::push`]).
    /// Side by side, so indexing an operator reads its level on the line
    /// it writes its weight to: reading the level from the operator's
    /// skills was a cache miss per weighted pool each time they became
    /// available.
    weight: Vec<[u8; 2]>,
    /// Positions of operators who left the pool (retired, or new
    /// attributes), weight 0, for the next to join: an operator edited
    /// many times does not grow the pool.
    free: Vec<u32>,
}

/// 64 positions of a [`Fenwick`].
#[derive(Clone, Copy, Default)]
struct Block {
    /// The Fenwick tree node of this block (1-based index `b + 1`: the sum
    /// of blocks `(b + 1 - lsb(b + 1), b]`).
    sum: u64,
    /// Bit `i`: position `64 b + i` weighs something.
    bits: u64,
}

/// Position of the `k`-th (0-based) set bit of `x` (`k < x.count_ones()`).
fn select(mut x: u64, mut k: u32) -> u32 {
    let mut pos = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        let low = (x & ((1u64 << shift) - 1)).count_ones();
        if k >= low {
            k -= low;
            x >>= shift;
            pos += shift;
        }
    }
    pos
}

impl Fenwick {
    /// A new member at weight 0; [`Self::enable`] gives them `level`
    /// (at least 1).
    pub(crate) fn push(&mut self, agent: u32, level: u8) -> u32 {
        let level = level.max(1);
        if level > 1 && !self.weighted {
            self.weigh();
        }
        if let Some(pos) = self.free.pop() {
            self.slots[pos as usize] = agent;
            if self.weighted {
                self.weight[pos as usize][1] = level;
            }
            return pos;
        }
        let pos = self.slots.len();
        self.slots.push(agent);
        if self.weighted {
            self.weight.push([0, level]);
        }
        if pos / 64 == self.blocks.len() {
            self.blocks.push(Block::default());
            // Build the new node from its children (1-based).
            let i = self.blocks.len();
            let lsb = i & i.wrapping_neg();
            let mut sum = 0;
            let mut j = i - 1;
            while j > i - lsb {
                sum += self.blocks[j - 1].sum;
                j -= j & j.wrapping_neg();
            }
            self.blocks[i - 1].sum = sum;
        }
        pos as u32
    }

    /// The operator at `pos` left the pool: weight 0, the position free
    /// for the next [`Self::push`] (last freed, first reused: an operator
    /// whose attributes change and who stays in the pool gets their place
    /// back).
    pub(crate) fn release(&mut self, pos: u32) {
        self.set(pos, 0);
        self.free.push(pos);
    }

    /// Sets a position's weight (levels are at most 10; clamped to 255).
    pub(crate) fn set(&mut self, pos: u32, w: u32) {
        let p = pos as usize;
        let w = u8::try_from(w).unwrap_or(u8::MAX);
        if w > 1 && !self.weighted {
            self.weigh();
        }
        let old = self.weight(pos) as u8;
        if old == w {
            return;
        }
        if self.weighted {
            self.weight[p][0] = w;
        }
        let bit = 1u64 << (p % 64);
        let block = &mut self.blocks[p / 64].bits;
        if w == 0 {
            *block &= !bit;
        } else {
            *block |= bit;
        }
        self.total = self.total + u64::from(w) - u64::from(old);
        let mut i = p / 64 + 1;
        while i <= self.blocks.len() {
            let node = &mut self.blocks[i - 1].sum;
            *node = *node + u64::from(w) - u64::from(old);
            i += i & i.wrapping_neg();
        }
    }

    /// Gives a member the weight they were pushed with (1 unweighted).
    pub(crate) fn enable(&mut self, pos: u32) {
        let w = if self.weighted {
            self.weight[pos as usize][1]
        } else {
            1
        };
        self.set(pos, u32::from(w));
    }

    /// From bits to weights, once: every weight is its bit so far, and
    /// every level so far is 1 (none above was pushed or set).
    fn weigh(&mut self) {
        self.weighted = true;
        self.weight = (0..self.slots.len())
            .map(|i| [u8::from(self.blocks[i / 64].bits >> (i % 64) & 1 == 1), 1])
            .collect();
    }

    pub(crate) fn weight(&self, pos: u32) -> u32 {
        let p = pos as usize;
        if self.weighted {
            u32::from(self.weight[p][0])
        } else {
            (self.blocks[p / 64].bits >> (p % 64) & 1) as u32
        }
    }

    /// Sum of the weights of a block's positions whose bit is in `mask`.
    fn block_sum(&self, block: usize, mask: u64) -> u64 {
        let mut x = self.blocks[block].bits & mask;
        if !self.weighted {
            return u64::from(x.count_ones());
        }
        let mut s = 0;
        while x != 0 {
            s += u64::from(self.weight[block * 64 + x.trailing_zeros() as usize][0]);
            x &= x - 1;
        }
        s
    }

    /// Sum of weights of positions `< end`.
    pub(crate) fn prefix(&self, end: usize) -> u64 {
        let mut i = end / 64;
        let mut s = 0;
        while i > 0 {
            s += self.blocks[i - 1].sum;
            i -= i & i.wrapping_neg();
        }
        if !end.is_multiple_of(64) {
            s += self.block_sum(end / 64, (1u64 << (end % 64)) - 1);
        }
        s
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The position whose cumulative range holds `k` (`k < total`).
    pub(crate) fn find(&self, mut k: u64) -> u32 {
        let n = self.blocks.len();
        if n == 0 {
            return 0;
        }
        let mut block = 0usize;
        let mut step = n.next_power_of_two();
        while step > 0 {
            let next = block + step;
            if next <= n && self.blocks[next - 1].sum <= k {
                block = next;
                k -= self.blocks[next - 1].sum;
            }
            step >>= 1;
        }
        let block = block.min(n - 1);
        let mut x = self.blocks[block].bits;
        if !self.weighted {
            // Within the block, k < its count of set bits.
            return (block * 64) as u32 + select(x, k as u32);
        }
        while x != 0 {
            let i = x.trailing_zeros() as usize;
            let w = u64::from(self.weight[block * 64 + i][0]);
            if k < w {
                return (block * 64 + i) as u32;
            }
            k -= w;
            x &= x - 1;
        }
        // Unreachable while k < total; the last position keeps callers safe.
        self.slots.len().saturating_sub(1) as u32
    }

    /// The first position with weight at or after `from`, wrapping.
    pub(crate) fn first_from(&self, from: usize) -> Option<u32> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let before = self.prefix(from.min(self.slots.len()));
        Some(if before < total {
            self.find(before)
        } else {
            self.find(0)
        })
    }
}

/// How a pool keeps its available operators.
pub(crate) enum Index {
    /// Longest idle (and ring-all): a FIFO in the order operators became
    /// available, which is idle-since order because time is monotonic.
    Fifo(VecDeque<Entry>),
    /// Most proficient: one FIFO per level of the queue's main skill.
    Levels(Box<[VecDeque<Entry>; 11]>),
    /// Least talk time / fewest calls: a min-heap on (metric, seq).
    Heap(BinaryHeap<Reverse<(u64, u64, u32, u32)>>),
    /// Linear, round-robin, random, weighted random (boxed: the other
    /// indexes are a few words, and the pool's first cache line holds
    /// the index).
    Fenwick(Box<Fenwick>),
}

impl Index {
    /// Entries held, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Fifo(q) => q.len(),
            Self::Levels(l) => l.iter().map(VecDeque::len).sum(),
            Self::Heap(h) => h.len(),
            Self::Fenwick(f) => f.slots.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_finds_each_set_bit() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bits: Vec<u32> = (0..64).filter(|&i| x >> i & 1 == 1).collect();
            for (k, &want) in bits.iter().enumerate() {
                assert_eq!(select(x, k as u32), want);
            }
        }
    }

    #[test]
    fn released_positions_are_reused_last_first() {
        let mut f = Fenwick::default();
        for a in 0..70 {
            f.push(a, 1);
        }
        f.set(3, 1);
        f.set(65, 1);
        f.release(3);
        f.release(65);
        assert_eq!(f.total(), 0);
        assert_eq!(f.push(100, 1), 65);
        assert_eq!(f.push(101, 1), 3);
        assert_eq!(f.push(102, 1), 70, "none free: a new position");
        f.set(3, 1);
        assert_eq!(f.first_from(0), Some(3));
        assert_eq!(f.slots[3], 101);
    }

    /// `enable` gives each member the level it was pushed with: 1 before
    /// any level above, its own after; a reused position takes its new
    /// member's level.
    #[test]
    fn enable_gives_the_level_pushed() {
        let mut f = Fenwick::default();
        for a in 0..70 {
            f.push(a, 1);
        }
        f.enable(3);
        assert_eq!(f.weight(3), 1);
        assert_eq!(f.push(70, 4), 70, "a level above 1 makes the pool weighted");
        f.enable(70);
        f.enable(65);
        assert_eq!((f.weight(3), f.weight(65), f.weight(70)), (1, 1, 4));
        assert_eq!(f.total(), 6);
        assert_eq!(f.prefix(71), 6);
        f.release(70);
        assert_eq!(f.push(71, 0), 70, "the freed position, level at least 1");
        f.enable(70);
        assert_eq!(f.weight(70), 1);
        f.release(65);
        assert_eq!(f.push(72, 9), 65);
        f.enable(65);
        assert_eq!(f.weight(65), 9);
        assert_eq!(f.total(), 11);
        assert_eq!(f.find(2), 65, "positions 3, 65: 1 + 9");
    }

    /// Bits become weights once, over several blocks: sums, searches and
    /// positions pushed or reused afterwards agree with a plain array.
    #[test]
    fn many_bits_become_weights_exactly() {
        let mut f = Fenwick::default();
        let mut plain = vec![0u32; 200];
        for i in 0..200 {
            f.push(i, 1);
        }
        for p in (0..200).step_by(3) {
            f.set(p, 1);
            plain[p as usize] = 1;
        }
        f.set(130, 4);
        plain[130] = 4;
        assert_eq!(f.total(), 71);
        let check = |f: &Fenwick, plain: &[u32]| {
            let total: u64 = plain.iter().map(|&w| u64::from(w)).sum();
            assert_eq!(f.total(), total);
            for end in 0..=plain.len() {
                let want: u64 = plain[..end].iter().map(|&w| u64::from(w)).sum();
                assert_eq!(f.prefix(end), want, "prefix {end}");
            }
            for k in 0..total {
                let mut acc = 0;
                let want = plain.iter().position(|&w| {
                    acc += u64::from(w);
                    acc > k
                });
                assert_eq!(Some(f.find(k) as usize), want, "find {k}");
            }
            for (p, &w) in plain.iter().enumerate() {
                assert_eq!(f.weight(p as u32), w);
            }
        };
        check(&f, &plain);
        for i in 200..260 {
            f.push(i, 1);
            plain.push(0);
        }
        f.set(257, 2);
        plain[257] = 2;
        f.release(3);
        plain[3] = 0;
        assert_eq!(f.push(999, 1), 3, "the freed position");
        assert_eq!(f.weight(3), 0);
        check(&f, &plain);
    }

    #[test]
    fn fenwick_matches_a_plain_array() {
        // Weights 0..=3 (the weighted walk), then 0..=1 (bit selection).
        for max in [4u64, 2] {
            fenwick_against_plain(max);
        }
    }

    fn fenwick_against_plain(max: u64) {
        let mut f = Fenwick::default();
        let mut plain = Vec::new();
        let mut x = 12345u64;
        for i in 0..300u32 {
            f.push(i, 1);
            plain.push(0u32);
            for _ in 0..3 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let p = (x >> 33) as usize % plain.len();
                let w = ((x >> 20) % max) as u32;
                f.set(p as u32, w);
                plain[p] = w;
            }
            let total: u64 = plain.iter().map(|&w| u64::from(w)).sum();
            assert_eq!(f.total(), total);
            for k in (0..total).step_by(7) {
                let mut acc = 0;
                let want = plain
                    .iter()
                    .position(|&w| {
                        acc += u64::from(w);
                        acc > k
                    })
                    .unwrap();
                assert_eq!(f.find(k) as usize, want);
            }
            let from = (x >> 40) as usize % plain.len();
            let want = (from..plain.len())
                .chain(0..from)
                .find(|&p| plain[p] > 0)
                .map(|p| p as u32);
            assert_eq!(f.first_from(from), want);
        }
    }
}
