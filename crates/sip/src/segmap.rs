//! A hash map in segments, so that growing it never stops the engine for
//! long.
//!
//! A hash table doubles when it fills and moves every entry at once. The
//! transaction tables hold everything of the last 32 s (RFC 3261): ~60,000
//! entries 15 s into 2,000 calls a second, ~230,000 at 3,500 in steady
//! state. On this VM a `HashMap` of such entries took 13 ms to double at
//! 28,000 entries, 29 ms at 57,000 and 110 ms at 230,000 (hashing each key
//! again, faulting in the new table), and the engine's thread did nothing
//! else meanwhile: under `scripts/load --rate 2000` 0.3–0.5 % of the calls
//! waited 25–50 ms for an operator's INVITE and the lag signal refused
//! some with 503. Here the entries are spread over [`SEGMENTS`] tables by
//! their hash, each growing on its own: the same total work, in pieces a
//! [`SEGMENTS`]th the size.
//!
//! Each key is hashed once per lookup (`hashbrown`'s `HashTable` takes the
//! hash), with the same hasher a `HashMap` would use: SipHash for keys a
//! peer chooses, [`crate::OwnKeys`] for the node's own.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};

use hashbrown::HashTable;

/// Segments per map: the longest growth is this many times shorter than
/// one table's. A map's 256 empty tables are 8 KiB.
pub const SEGMENTS: usize = 256;

/// The segment is read from the hash's bits from this one up.
const SHIFT: u32 = 40;

// `hashbrown` places an entry by the hash's low bits and tags it with the
// top seven (57–63). The segment's bits must be neither: taken from the
// low bits, each segment's entries would crowd into 1/256 of its buckets;
// from the top ones, they would share their tags and every probe would
// compare keys. (A table reaches bit 40 only at 2^40 buckets.)
const _: () = assert!(SEGMENTS.is_power_of_two() && SHIFT + SEGMENTS.trailing_zeros() <= 57);

/// A map of `K` to `V` in [`SEGMENTS`] tables; the subset of `HashMap`'s
/// interface the transaction layer uses.
pub struct SegMap<K, V, S = RandomState> {
    hasher: S,
    segments: Box<[HashTable<(K, V)>]>,
    len: usize,
}

impl<K, V, S: Default> Default for SegMap<K, V, S> {
    fn default() -> Self {
        Self {
            hasher: S::default(),
            segments: (0..SEGMENTS).map(|_| HashTable::new()).collect(),
            len: 0,
        }
    }
}

/// The segment of a hash: bits the tables themselves barely use (they
/// place by the low bits and tag by the top seven), so the entries of one
/// segment still spread over their table and differ in their tags.
fn segment(hash: u64) -> usize {
    (hash >> SHIFT) as usize % SEGMENTS
}

impl<K: Hash + Eq, V, S: BuildHasher> SegMap<K, V, S> {
    fn locate<Q>(&self, key: &Q) -> (u64, usize)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        (hash, segment(hash))
    }

    /// Entries in the map.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, s) = self.locate(key);
        self.segments[s]
            .find(hash, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    /// The value of `key`, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, s) = self.locate(key);
        self.segments[s]
            .find_mut(hash, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` is in the map.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaced (the key
    /// already there is kept, as `HashMap::insert` does).
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let (hash, s) = self.locate(&key);
        let hasher = &self.hasher;
        match self.segments[s].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(&mut e.get_mut().1, value))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// The value of `key`, made by `make` first if it has none (what
    /// `HashMap`'s `entry(key).or_insert_with(make)` gives).
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let (hash, s) = self.locate(&key);
        let hasher = &self.hasher;
        match self.segments[s].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            hashbrown::hash_table::Entry::Occupied(e) => &mut e.into_mut().1,
            hashbrown::hash_table::Entry::Vacant(e) => {
                // Counted once it is in: a `make` that panics leaves
                // `len` true.
                let v = &mut e.insert((key, make())).into_mut().1;
                self.len += 1;
                v
            }
        }
    }

    /// Takes `key` out; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, s) = self.locate(key);
        let entry = self.segments[s]
            .find_entry(hash, |(k, _)| k.borrow() == key)
            .ok()?;
        let ((_, v), _) = entry.remove();
        self.len -= 1;
        Some(v)
    }

    /// Keeps only the entries `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for t in self.segments.iter_mut() {
            // Counted as they go, so a `keep` that panics leaves `len` true.
            let len = &mut self.len;
            t.retain(|(k, v)| {
                let kept = keep(k, v);
                if !kept {
                    *len -= 1;
                }
                kept
            });
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.segments
            .iter()
            .flat_map(|t| t.iter().map(|(k, v)| (k, v)))
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.segments.iter().flat_map(|t| t.iter().map(|(k, _)| k))
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.segments.iter().flat_map(|t| t.iter().map(|(_, v)| v))
    }

    /// The largest segment's entries: about what one growth moves at
    /// most.
    pub fn largest_segment(&self) -> usize {
        self.segments.iter().map(HashTable::len).max().unwrap_or(0)
    }
}

impl<K, Q, V, S> std::ops::Index<&Q> for SegMap<K, V, S>
where
    K: Hash + Eq + Borrow<Q>,
    Q: Hash + Eq + ?Sized,
    S: BuildHasher,
{
    type Output = V;

    /// As `HashMap`'s: panics when `key` is absent (tests and invariants).
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry found for key")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
        Retain(u8),
        GetOrInsert(u16, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (0u16..600, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            5 => (0u16..600).prop_map(Op::Remove),
            5 => (0u16..600).prop_map(Op::Get),
            1 => (2u8..9).prop_map(Op::Retain),
            3 => (0u16..600, any::<u32>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
        ]
    }

    proptest! {
        /// Whatever the sequence, the map answers as std's `HashMap`.
        #[test]
        fn behaves_as_a_hash_map(ops in proptest::collection::vec(op(), 0..3000)) {
            let mut seg: SegMap<String, u32> = SegMap::default();
            let mut std: HashMap<String, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(seg.insert(k.to_string(), v), std.insert(k.to_string(), v));
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(seg.remove(k.to_string().as_str()), std.remove(k.to_string().as_str()));
                    }
                    Op::GetOrInsert(k, v) => {
                        let mut made = false;
                        let got = seg.get_or_insert_with(k.to_string(), || {
                            made = true;
                            v
                        });
                        *got = got.wrapping_add(1);
                        let got = *got;
                        let absent = !std.contains_key(&k.to_string());
                        let want = std.entry(k.to_string()).or_insert(v);
                        *want = want.wrapping_add(1);
                        prop_assert_eq!(got, *want);
                        prop_assert_eq!(made, absent, "made only when absent");
                    }
                    Op::Retain(m) => {
                        seg.retain(|k, v| v.wrapping_add(k.len() as u32) % u32::from(m) != 0);
                        std.retain(|k, v| v.wrapping_add(k.len() as u32) % u32::from(m) != 0);
                    }
                    Op::Get(k) => {
                        let k = k.to_string();
                        prop_assert_eq!(seg.get(k.as_str()), std.get(&k));
                        prop_assert_eq!(seg.contains_key(k.as_str()), std.contains_key(&k));
                        if let Some(v) = std.get_mut(&k) {
                            *v = v.wrapping_add(1);
                            let s = seg.get_mut(k.as_str()).unwrap();
                            *s = s.wrapping_add(1);
                            prop_assert_eq!(seg[k.as_str()], *v);
                        } else {
                            prop_assert!(seg.get_mut(k.as_str()).is_none());
                        }
                    }
                }
                prop_assert_eq!(seg.len(), std.len());
                prop_assert_eq!(seg.is_empty(), std.is_empty());
            }
            let mut keys: Vec<&String> = seg.keys().collect();
            keys.sort();
            let mut want: Vec<&String> = std.keys().collect();
            want.sort();
            prop_assert_eq!(keys, want);
            let mut pairs: Vec<(&String, &u32)> = seg.iter().collect();
            pairs.sort();
            let mut want: Vec<(&String, &u32)> = std.iter().collect();
            want.sort();
            prop_assert_eq!(pairs, want);
            let sum: u64 = seg.values().map(|&v| u64::from(v)).sum();
            prop_assert_eq!(sum, std.values().map(|&v| u64::from(v)).sum::<u64>());
        }
    }

    /// The entries spread over the segments: none holds more than a few
    /// times its share, so no growth moves much more than a
    /// [`SEGMENTS`]th of the map.
    #[test]
    fn entries_spread_over_the_segments() {
        let mut m: SegMap<String, ()> = SegMap::default();
        let n = 200_000;
        for i in 0..n {
            m.insert(format!("z9hG4bK-{i}"), ());
        }
        assert_eq!(m.len(), n);
        let share = n / SEGMENTS;
        assert!(
            m.largest_segment() < 2 * share,
            "largest segment {} against a share of {share}",
            m.largest_segment()
        );
        // Large tables answer as small ones: half taken out again.
        for i in (0..n).step_by(2) {
            assert_eq!(m.remove(format!("z9hG4bK-{i}").as_str()), Some(()));
        }
        assert_eq!(m.len(), n / 2);
        assert!((0..n).all(|i| m.contains_key(format!("z9hG4bK-{i}").as_str()) == (i % 2 == 1)));
        assert_eq!(m.keys().count(), n / 2);
        let mut v: SegMap<u64, (), crate::OwnKeys> = SegMap::default();
        for i in 0..n as u64 {
            v.insert(i, ());
        }
        assert!(v.largest_segment() < 2 * share);
    }

    /// A replaced value keeps the key first inserted, as `HashMap` does
    /// (the transaction layer's keys are shared with its timers).
    #[test]
    fn insert_keeps_the_first_key() {
        use std::sync::Arc;
        let mut m: SegMap<Arc<str>, u8> = SegMap::default();
        let first: Arc<str> = Arc::from("k");
        m.insert(first.clone(), 1);
        assert_eq!(m.insert(Arc::from("k"), 2), Some(1));
        let kept = m.keys().next().unwrap();
        assert!(Arc::ptr_eq(kept, &first));
        assert_eq!(m.get("k"), Some(&2));
    }
}
