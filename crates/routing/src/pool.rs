//! Indexes of available operators, one per pool (a queue's ring for one
//! requirement set), shaped by the queue's strategy.
//!
//! Entries carry the board version at which the operator became available;
//! an entry whose version no longer matches is stale and dropped when met
//! (lazy deletion), so leaving `Available` costs nothing here except for
//! the Fenwick-backed strategies, which zero the weight eagerly. Everything
//! is `Vec`-backed: after warm-up no decision allocates.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// An agent index and the board version it was available at.
pub(crate) type Entry = (u32, u32);

/// A Fenwick (binary indexed) tree of weights over member positions:
/// O(log n) update, prefix sum and weighted search. Serves linear,
/// round-robin, random and weighted-random selection with one structure.
#[derive(Default)]
pub(crate) struct Fenwick {
    tree: Vec<u64>,
    weight: Vec<u32>,
    /// Agent and version per position.
    pub(crate) slots: Vec<Entry>,
}

impl Fenwick {
    pub(crate) fn push(&mut self, agent: u32) -> u32 {
        self.slots.push((agent, 0));
        self.weight.push(0);
        self.tree.push(0);
        // Rebuild the new node from its children (positions are 1-based).
        let i = self.tree.len();
        let lsb = i & i.wrapping_neg();
        let mut sum = 0;
        let mut j = i - 1;
        while j > i - lsb {
            sum += self.tree[j - 1];
            j -= j & j.wrapping_neg();
        }
        self.tree[i - 1] = sum;
        (i - 1) as u32
    }

    pub(crate) fn set(&mut self, pos: u32, w: u32) {
        let p = pos as usize;
        let old = self.weight[p];
        if old == w {
            return;
        }
        self.weight[p] = w;
        let mut i = p + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] = self.tree[i - 1] + u64::from(w) - u64::from(old);
            i += i & i.wrapping_neg();
        }
    }

    pub(crate) fn weight(&self, pos: u32) -> u32 {
        self.weight[pos as usize]
    }

    /// Sum of weights of positions `< end`.
    pub(crate) fn prefix(&self, end: usize) -> u64 {
        let mut i = end;
        let mut s = 0;
        while i > 0 {
            s += self.tree[i - 1];
            i -= i & i.wrapping_neg();
        }
        s
    }

    pub(crate) fn total(&self) -> u64 {
        self.prefix(self.tree.len())
    }

    /// The position whose cumulative range holds `k` (`k < total`).
    pub(crate) fn find(&self, mut k: u64) -> u32 {
        let n = self.tree.len();
        let mut pos = 0usize;
        let mut step = n.next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next - 1] <= k {
                pos = next;
                k -= self.tree[next - 1];
            }
            step >>= 1;
        }
        pos as u32
    }

    /// The first position with weight at or after `from`, wrapping.
    pub(crate) fn first_from(&self, from: usize) -> Option<u32> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let before = self.prefix(from.min(self.tree.len()));
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
    /// Linear, round-robin, random, weighted random.
    Fenwick(Fenwick),
}

impl Index {
    /// Entries held, stale ones included.
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
    fn fenwick_matches_a_plain_array() {
        let mut f = Fenwick::default();
        let mut plain = Vec::new();
        let mut x = 12345u64;
        for i in 0..200u32 {
            f.push(i);
            plain.push(0u32);
            for _ in 0..3 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let p = (x >> 33) as usize % plain.len();
                let w = (x >> 20) as u32 % 4;
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
