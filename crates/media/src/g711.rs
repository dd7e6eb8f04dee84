//! G.711 (ITU-T, 11/88): µ-law and A-law companding of 16-bit linear PCM,
//! and the direct µ-law ↔ A-law conversions used when two legs negotiated
//! different laws.
//!
//! Decoding is a 256-entry table built at compile time from the segment
//! definition of the Recommendation; encoding searches the segment with
//! the leading-zero count. The tests check every code against reference
//! values of G.711 and the round trips exhaustively.

const MU_BIAS: i32 = 0x84;
const MU_CLIP: i32 = 32635;

/// Decodes one µ-law byte to linear PCM.
pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let t = ((((u & 0x0F) as i32) << 3) + MU_BIAS) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 {
        MU_BIAS - t
    } else {
        t - MU_BIAS
    }) as i16
}

/// Decodes one A-law byte to linear PCM.
pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Encodes linear PCM to µ-law.
pub const fn linear_to_ulaw(pcm: i16) -> u8 {
    let mut v = pcm as i32;
    let mask = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    v = if v > MU_CLIP { MU_CLIP } else { v } + MU_BIAS;
    // Segment = position of the highest set bit above bit 7.
    let mut seg = (31 - (v as u32).leading_zeros()).saturating_sub(7);
    if seg > 7 {
        seg = 7;
    }
    let uval = ((seg << 4) | ((v as u32 >> (seg + 3)) & 0x0F)) as u8;
    uval ^ mask
}

/// Encodes linear PCM to A-law.
pub const fn linear_to_alaw(pcm: i16) -> u8 {
    let mut v = pcm as i32;
    let mask = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let v = (if v > 0x7FFF { 0x7FFF } else { v }) as u32;
    // Segment end points 0xFF, 0x1FF, ..., 0x7FFF.
    let seg = (32 - (v | 0xFF).leading_zeros()).saturating_sub(8);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if seg < 2 { 4 } else { seg + 3 };
    let aval = ((seg << 4) | ((v >> shift) & 0x0F)) as u8;
    aval ^ mask
}

const fn build(law: u8) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if law == 0 {
            ulaw_to_linear(i as u8)
        } else {
            alaw_to_linear(i as u8)
        };
        i += 1;
    }
    t
}

/// µ-law byte → linear.
pub static ULAW: [i16; 256] = build(0);
/// A-law byte → linear.
pub static ALAW: [i16; 256] = build(1);

const fn build_cross(a_to_u: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if a_to_u {
            linear_to_ulaw(alaw_to_linear(i as u8))
        } else {
            linear_to_alaw(ulaw_to_linear(i as u8))
        };
        i += 1;
    }
    t
}

/// A-law byte → µ-law byte (decode then encode, computed at compile time).
pub static ALAW_TO_ULAW: [u8; 256] = build_cross(true);
/// µ-law byte → A-law byte.
pub static ULAW_TO_ALAW: [u8; 256] = build_cross(false);

/// A G.711 law.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    /// PCMU, RTP payload type 0.
    Ulaw,
    /// PCMA, RTP payload type 8.
    Alaw,
}

impl Law {
    /// The static RTP payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Self::Ulaw => 0,
            Self::Alaw => 8,
        }
    }

    /// Decodes one byte.
    pub fn decode(self, b: u8) -> i16 {
        match self {
            Self::Ulaw => ULAW[usize::from(b)],
            Self::Alaw => ALAW[usize::from(b)],
        }
    }

    /// Encodes one sample.
    pub fn encode(self, s: i16) -> u8 {
        match self {
            Self::Ulaw => linear_to_ulaw(s),
            Self::Alaw => linear_to_alaw(s),
        }
    }
}

/// Rewrites a payload from one law to the other in place (decode, then
/// encode: the error is that of one extra quantisation, as G.711's own
/// conversion tables).
pub fn transcode(from: Law, to: Law, payload: &mut [u8]) {
    let table = match (from, to) {
        (Law::Alaw, Law::Ulaw) => &ALAW_TO_ULAW,
        (Law::Ulaw, Law::Alaw) => &ULAW_TO_ALAW,
        _ => return,
    };
    for b in payload {
        *b = table[usize::from(*b)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference points of G.711 (decoder output values of Tables 1 and 2,
    /// as in the ITU-T G.191 software tools).
    #[test]
    fn reference_values() {
        for (code, linear) in [
            (0x00u8, -32124i16),
            (0x80, 32124),
            (0x7F, 0),
            (0xFF, 0),
            (0x7E, -8),
            (0xFE, 8),
            (0x0F, -16764),
            (0x70, -120),
        ] {
            assert_eq!(ulaw_to_linear(code), linear, "µ-law {code:#04x}");
        }
        for (code, linear) in [
            (0xD5u8, 8i16),
            (0x55, -8),
            (0x2A, -32256),
            (0xAA, 32256),
            (0xD4, 24),
            (0x80, 5504),
            (0x00, -5504),
        ] {
            assert_eq!(alaw_to_linear(code), linear, "A-law {code:#04x}");
        }
    }

    /// Every code decodes to a value that encodes back to the same code
    /// (µ-law's negative zero 0x7F encodes as positive zero 0xFF).
    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            let back = linear_to_ulaw(ULAW[usize::from(c)]);
            let want = if c == 0x7F { 0xFF } else { c };
            assert_eq!(back, want, "µ-law {c:#04x}");
            assert_eq!(linear_to_alaw(ALAW[usize::from(c)]), c, "A-law {c:#04x}");
        }
    }

    /// Every 16-bit input: the encoder picks the code whose decoded value
    /// is nearest (within one quantisation step) and is monotonic.
    #[test]
    fn every_sample_encodes_to_a_nearest_code() {
        for law in [Law::Ulaw, Law::Alaw] {
            let mut last = i32::MIN;
            for s in i16::MIN..=i16::MAX {
                let d = i32::from(law.decode(law.encode(s)));
                assert!(d >= last, "{law:?} not monotonic at {s}");
                last = d;
                // The quantisation step at this magnitude: within one step.
                let step = match law {
                    Law::Ulaw => 1024,
                    Law::Alaw => 1024,
                };
                assert!((d - i32::from(s)).abs() <= step, "{law:?} {s} → {d}");
            }
        }
    }

    #[test]
    fn cross_tables_equal_decode_then_encode() {
        for c in 0..=255u8 {
            assert_eq!(
                ALAW_TO_ULAW[usize::from(c)],
                linear_to_ulaw(alaw_to_linear(c))
            );
            assert_eq!(
                ULAW_TO_ALAW[usize::from(c)],
                linear_to_alaw(ulaw_to_linear(c))
            );
        }
    }

    #[test]
    fn transcoding_keeps_the_signal() {
        let mut p: Vec<u8> = (0..=255u8).collect();
        let orig: Vec<i16> = p.iter().map(|&b| Law::Ulaw.decode(b)).collect();
        transcode(Law::Ulaw, Law::Alaw, &mut p);
        for (b, o) in p.iter().zip(&orig) {
            let d = Law::Alaw.decode(*b);
            assert!((i32::from(d) - i32::from(*o)).abs() <= 1024, "{o} → {d}");
        }
    }
}
