//! Byte-level mutations, AFL "havoc" style: a few stacked edits per input
//! (bit flips, interesting bytes and numbers, inserts, deletes, clones,
//! splices with other corpus entries, whole-line edits for the text
//! protocols, and the target's dictionary tokens).

/// A small, fast, seedable generator (SplitMix64): the same seed gives the
/// same run, which is what makes a reported seed reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True once in `n` calls on average.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Bytes that sit on boundaries of the grammars and of integer types.
const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0xC0, 0xE0, 0xF0, b'\r', b'\n', b' ', b'\t', b':', b';',
    b',', b'=', b'"', b'\\', b'<', b'>', b'%', b'/', b'@', b'[', b']', b'{', b'}', b'.', b'-',
    b'0', b'9',
];

/// Decimal numbers at integer-type edges (and beyond any of them).
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "00",
    "0000000001",
    "127",
    "128",
    "255",
    "256",
    "32767",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "1e400",
    "-0",
    "0.5",
];

/// 16- and 32-bit values for binary fields (lengths, counts, offsets).
const INTERESTING_WORDS: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    12,
    16,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
];

/// Mutates inputs of one target.
#[derive(Clone, Copy, Debug)]
pub struct Mutator<'a> {
    /// Tokens of the target's grammar, inserted or written over the input.
    pub dict: &'a [&'a [u8]],
    /// Longest input produced.
    pub max_len: usize,
}

impl Mutator<'_> {
    /// Applies 1 to 16 stacked mutations to `input`; `corpus` feeds splices.
    pub fn mutate(&self, rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let rounds = 1 << rng.below(5);
        for _ in 0..rounds {
            self.one(rng, input, corpus);
        }
        input.truncate(self.max_len);
    }

    fn one(&self, rng: &mut Rng, v: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        if v.is_empty() {
            insert_random(rng, v);
            return;
        }
        match rng.below(20) {
            0 => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(v.len());
                v[i] = rng.byte();
            }
            2 | 3 => {
                let i = rng.below(v.len());
                v[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            4 => {
                let i = rng.below(v.len());
                let d = 1 + rng.below(35) as u8;
                v[i] = if rng.one_in(2) {
                    v[i].wrapping_add(d)
                } else {
                    v[i].wrapping_sub(d)
                };
            }
            5 => insert_random(rng, v),
            6 | 7 => {
                // Delete a range: mostly short, sometimes most of the input.
                let start = rng.below(v.len());
                let max = if rng.one_in(8) { v.len() } else { 16 };
                let n = 1 + rng.below(max.min(v.len() - start));
                v.drain(start..start + n);
            }
            8 => {
                // Clone a range of the input elsewhere in it.
                let (a, n) = range(rng, v.len(), 64);
                let chunk = v[a..a + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            9 => {
                // Repeat a short chunk many times: length caps, counts,
                // deep nesting.
                let (a, n) = range(rng, v.len(), 16);
                let times = [2, 8, 64, 1000, 10_000][rng.below(5)];
                let room = self.max_len.saturating_sub(v.len()) / n.max(1);
                let chunk = v[a..a + n].repeat(times.min(room).max(1));
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            10 | 11 => self.splice(rng, v, corpus),
            12..=14 => self.dictionary(rng, v),
            15 | 16 => number(rng, v),
            17 => lines(rng, v, corpus),
            18 => {
                // A binary word at a random offset, either byte order.
                let w = INTERESTING_WORDS[rng.below(INTERESTING_WORDS.len())];
                let bytes = if rng.one_in(2) {
                    w.to_be_bytes()
                } else {
                    w.to_le_bytes()
                };
                let width = if rng.one_in(2) { 2 } else { 4 };
                let bytes = &bytes[4 - width..];
                let at = rng.below(v.len());
                for (k, b) in bytes.iter().enumerate() {
                    if let Some(x) = v.get_mut(at + k) {
                        *x = *b;
                    }
                }
            }
            _ => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
        }
    }

    fn splice(&self, rng: &mut Rng, v: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let Some(other) = corpus.get(rng.below(corpus.len())) else {
            return;
        };
        if other.is_empty() {
            return;
        }
        if rng.one_in(2) {
            // Crossover: our head, their tail.
            let a = rng.below(v.len() + 1);
            let b = rng.below(other.len());
            v.truncate(a);
            v.extend_from_slice(&other[b..]);
        } else {
            // A chunk of theirs inserted into ours.
            let (b, n) = range(rng, other.len(), 256);
            let at = rng.below(v.len() + 1);
            v.splice(at..at, other[b..b + n].iter().copied());
        }
    }

    fn dictionary(&self, rng: &mut Rng, v: &mut Vec<u8>) {
        if self.dict.is_empty() {
            insert_random(rng, v);
            return;
        }
        let token = self.dict[rng.below(self.dict.len())];
        let at = rng.below(v.len() + 1);
        if rng.one_in(3) {
            let end = (at + token.len()).min(v.len());
            v.splice(at..end, token.iter().copied());
        } else {
            v.splice(at..at, token.iter().copied());
        }
    }
}

/// A range `(start, len)` of at most `max` bytes in `0..len` (`len > 0`).
fn range(rng: &mut Rng, len: usize, max: usize) -> (usize, usize) {
    let a = rng.below(len);
    let n = 1 + rng.below(max.min(len - a));
    (a, n)
}

fn insert_random(rng: &mut Rng, v: &mut Vec<u8>) {
    let at = rng.below(v.len() + 1);
    let n = 1 + rng.below(8);
    let same = rng.one_in(2);
    let b = rng.byte();
    let bytes: Vec<u8> = (0..n).map(|_| if same { b } else { rng.byte() }).collect();
    v.splice(at..at, bytes);
}

/// Replaces a run of decimal digits (the one at or after a random offset)
/// with an edge value, or nudges it by one.
fn number(rng: &mut Rng, v: &mut Vec<u8>) {
    let from = rng.below(v.len());
    let Some(start) = v[from..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|i| from + i)
    else {
        let at = rng.below(v.len() + 1);
        let n = NUMBERS[rng.below(NUMBERS.len())];
        v.splice(at..at, n.bytes());
        return;
    };
    let end = v[start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(v.len(), |i| start + i);
    let new = if rng.one_in(4) {
        let old: u128 = std::str::from_utf8(&v[start..end])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if rng.one_in(2) {
            old.wrapping_add(1).to_string()
        } else {
            old.saturating_sub(1).to_string()
        }
    } else {
        NUMBERS[rng.below(NUMBERS.len())].to_owned()
    };
    v.splice(start..end, new.bytes());
}

/// Whole-line edits (the SIP, SDP and TOML grammars are line based):
/// delete, duplicate or swap lines, or take a line from another entry.
fn lines(rng: &mut Rng, v: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let mut ls: Vec<Vec<u8>> = v
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    if ls.is_empty() {
        return;
    }
    let i = rng.below(ls.len());
    match rng.below(4) {
        0 => {
            ls.remove(i);
        }
        1 => {
            let l = ls[i].clone();
            ls.insert(rng.below(ls.len() + 1), l);
        }
        2 => {
            let j = rng.below(ls.len());
            ls.swap(i, j);
        }
        _ => {
            if let Some(other) = corpus.get(rng.below(corpus.len())) {
                let theirs: Vec<&[u8]> = other.split_inclusive(|&b| b == b'\n').collect();
                if let Some(l) = theirs.get(rng.below(theirs.len())) {
                    ls.insert(i, l.to_vec());
                }
            }
        }
    }
    *v = ls.concat();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mutations_and_lengths_are_capped() {
        let m = Mutator {
            dict: &[b"\r\n", b";tag="],
            max_len: 300,
        };
        let corpus = vec![b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let mut out = Vec::new();
            for _ in 0..2000 {
                let mut v = corpus[0].clone();
                m.mutate(&mut rng, &mut v, &corpus);
                assert!(v.len() <= 300);
                out.push(v);
            }
            out
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
