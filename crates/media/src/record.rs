//! Call recording, sans-IO: both legs mixed into one 8 kHz mono stream,
//! and the WAV framing of the file it is written to (header written
//! first with placeholder sizes, fixed when the call ends, repairable
//! when the process died mid-call).
//!
//! Alignment: each side's packets are placed by their RTP timestamps
//! (gaps from lost packets stay silent), anchored at the arrival time of
//! the side's first packet, so a side that starts talking late is not
//! shifted against the other.

use crate::g711::Law;

/// Samples per second.
pub const RATE: u32 = 8000;
/// Bytes of the WAV header written by [`wav_header`].
pub const HEADER_LEN: usize = 44;
/// Largest jump between two packets of a side taken as a gap; beyond it
/// (a new stream after a re-INVITE, a wild timestamp) the side re-anchors
/// on arrival time.
const MAX_GAP: u32 = RATE * 2;
/// Most samples a side may hold ahead of what was taken: the writer takes
/// every second, 500 ms behind; this leaves room for jitter and gaps but
/// not for a peer whose timestamps run ahead of the clock.
const MAX_PENDING: usize = RATE as usize * 10;

#[derive(Debug, Default)]
struct Track {
    /// Sample index (from the recording's start) of the next expected
    /// sample, with the RTP timestamp it corresponds to.
    next: Option<(u64, u32)>,
    /// Samples from `Mixer::flushed` onwards.
    pending: Vec<i32>,
}

/// Mixes two sides into one stream.
#[derive(Debug, Default)]
pub struct Mixer {
    tracks: [Track; 2],
    /// Samples already taken.
    flushed: u64,
}

impl Mixer {
    /// An empty mix starting at sample 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A packet of `side` (0 or 1) with RTP timestamp `ts`, arrived when
    /// the recording was `arrival` samples old, carrying `payload` in `law`.
    pub fn push(&mut self, side: usize, arrival: u64, ts: u32, law: Law, payload: &[u8]) {
        let flushed = self.flushed;
        let t = &mut self.tracks[side & 1];
        // A packet is placed by its timestamp only while that keeps it
        // within a gap of its arrival: timestamps that leap or creep ahead
        // would carry the cursor (and the buffer) away from real time, and
        // a clock paused during hold would put every packet after it in
        // the past, written already. Either way the side re-anchors on
        // arrival, as for a new stream.
        let placed = t.next.and_then(|(pos, expected)| {
            let d = ts.wrapping_sub(expected);
            if d < MAX_GAP {
                let at = pos + u64::from(d);
                (at.abs_diff(arrival) <= u64::from(MAX_GAP)).then_some(at)
            } else if d > u32::MAX - MAX_GAP {
                // Late packet: its place is behind the cursor.
                let back = u64::from(expected.wrapping_sub(ts));
                Some(pos.saturating_sub(back))
            } else {
                None
            }
        });
        let at = match placed {
            Some(at) => at,
            None => {
                t.next = None;
                arrival
            }
        };
        let end = at + payload.len() as u64;
        if t.next.is_none_or(|(pos, _)| end > pos) {
            t.next = Some((end, ts.wrapping_add(payload.len() as u32)));
        }
        if end <= flushed {
            // Too late: that part of the file is written.
            return;
        }
        let skip = flushed.saturating_sub(at) as usize;
        let start = (at.max(flushed) - flushed) as usize;
        let need = start + payload.len() - skip;
        if need > MAX_PENDING {
            // Far ahead of what the writer took (it stalled): dropped
            // rather than held; the recording gets silence there.
            return;
        }
        if t.pending.len() < need {
            t.pending.resize(need, 0);
        }
        for (o, &b) in t.pending[start..need].iter_mut().zip(&payload[skip..]) {
            *o = i32::from(law.decode(b));
        }
    }

    /// The mix of every sample before `upto` not yet taken (silence where
    /// neither side sent anything), appended to `out`.
    pub fn take(&mut self, upto: u64, out: &mut Vec<i16>) {
        let n = upto.saturating_sub(self.flushed) as usize;
        out.reserve(n);
        for i in 0..n {
            let s: i32 = self
                .tracks
                .iter()
                .map(|t| t.pending.get(i).copied().unwrap_or(0))
                .sum();
            out.push(s.clamp(-32768, 32767) as i16);
        }
        for t in &mut self.tracks {
            let k = n.min(t.pending.len());
            t.pending.drain(..k);
        }
        self.flushed += n as u64;
    }

    /// Samples taken so far.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }
}

/// A 16-bit mono 8 kHz WAV header for `data_bytes` of samples.
pub fn wav_header(data_bytes: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_bytes.saturating_add(36).to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&1u16.to_le_bytes());
    h[24..28].copy_from_slice(&RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(RATE * 2).to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// The header a file of `file_len` bytes should have once its writer is
/// gone (the process died): sizes from the length, a trailing odd byte
/// dropped. `None` when the file is too short to be one of ours.
pub fn repaired_header(file_len: u64) -> Option<([u8; HEADER_LEN], u64)> {
    let data = file_len.checked_sub(HEADER_LEN as u64)? & !1;
    let data = u32::try_from(data).unwrap_or(u32::MAX - 1);
    Some((wav_header(data), HEADER_LEN as u64 + u64::from(data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::wav_to_8k;

    fn tone(level: i16) -> Vec<u8> {
        vec![Law::Ulaw.encode(level); 160]
    }

    #[test]
    fn timestamps_that_leap_ahead_hold_no_more_than_a_bounded_buffer() {
        let mut m = Mixer::new();
        let mut out = Vec::new();
        // A hostile peer: each packet's timestamp leaps almost two seconds
        // (under the gap taken as loss) while packets arrive every 20 ms.
        for k in 0..5_000u32 {
            m.push(
                0,
                u64::from(k) * 160,
                k.wrapping_mul(15_999),
                Law::Ulaw,
                &tone(1000),
            );
            let held = m.tracks[0].pending.len();
            assert!(held <= MAX_PENDING, "{held} samples held at packet {k}");
            if k % 50 == 49 {
                // The writer takes once a second, 500 ms behind.
                m.take((u64::from(k) * 160).saturating_sub(4000), &mut out);
            }
        }
        // The mix goes on: the other side is still recorded.
        m.push(1, 5_000 * 160, 7, Law::Ulaw, &tone(500));
        m.take(5_001 * 160, &mut out);
        assert_eq!(out.len(), 5_001 * 160);
        assert!(out[5_000 * 160..].iter().any(|&s| s != 0));
    }

    #[test]
    fn a_clock_paused_during_hold_is_heard_on_resume() {
        let mut m = Mixer::new();
        let mut out = Vec::new();
        // One second of speech, then a 10 s hold during which the phone's
        // clock stopped: it resumes with the next timestamp.
        for k in 0..50u32 {
            m.push(0, u64::from(k) * 160, k * 160, Law::Ulaw, &tone(1000));
        }
        // The writer goes on taking every second, half a second behind.
        for second in 1..=10u64 {
            m.take(second * 8_000 + 4_000, &mut out);
        }
        for k in 0..50u32 {
            let arrival = 88_000 + u64::from(k) * 160;
            m.push(0, arrival, (50 + k) * 160, Law::Ulaw, &tone(1000));
        }
        m.take(96_000, &mut out);
        let after_hold = &out[88_000..96_000];
        assert!(
            after_hold.iter().filter(|&&s| s != 0).count() > 7_000,
            "the speech after the hold is recorded"
        );
    }

    #[test]
    fn both_sides_are_mixed_in_time() {
        let mut m = Mixer::new();
        // The caller from the start, the operator from 40 ms on.
        for k in 0..10u32 {
            m.push(
                0,
                u64::from(k) * 160,
                1000 + k * 160,
                Law::Ulaw,
                &tone(1000),
            );
        }
        for k in 0..8u32 {
            // Operator packets arrive a little late (jitter), in RTP time.
            m.push(
                1,
                320 + u64::from(k) * 160 + 30,
                9_000 + k * 160,
                Law::Ulaw,
                &tone(500),
            );
        }
        let mut out = Vec::new();
        m.take(1600, &mut out);
        assert_eq!(out.len(), 1600);
        let a = i32::from(Law::Ulaw.decode(Law::Ulaw.encode(1000)));
        let b = i32::from(Law::Ulaw.decode(Law::Ulaw.encode(500)));
        assert!(
            out[..350].iter().all(|&s| i32::from(s) == a),
            "caller alone"
        );
        assert!(
            out[350..1600].iter().all(|&s| i32::from(s) == a + b),
            "both"
        );
        // The operator's last 30 samples, then silence.
        m.take(1700, &mut out);
        assert!(out[1600..1630].iter().all(|&s| i32::from(s) == b));
        assert!(out[1630..].iter().all(|&s| s == 0));
        assert_eq!(m.flushed(), 1700);
    }

    #[test]
    fn lost_packets_leave_silence_and_late_ones_fill_their_place() {
        let mut m = Mixer::new();
        m.push(0, 0, 0, Law::Alaw, &[Law::Alaw.encode(800); 160]);
        // Packet 1 lost for now, packet 2 on time.
        m.push(0, 320, 320, Law::Alaw, &[Law::Alaw.encode(800); 160]);
        // Packet 1 arrives late, before the flush.
        m.push(0, 400, 160, Law::Alaw, &[Law::Alaw.encode(-800); 160]);
        let mut out = Vec::new();
        m.take(480, &mut out);
        assert!(
            out[160..320].iter().all(|&s| s < 0),
            "late packet in its slot"
        );
        assert!(out[320..480].iter().all(|&s| s > 0));
        // A packet older than what is written is dropped, not misplaced.
        m.push(0, 500, 0, Law::Alaw, &[Law::Alaw.encode(100); 160]);
        m.take(640, &mut out);
        assert!(out[480..].iter().all(|&s| s == 0));
        // A wild timestamp jump re-anchors on arrival time.
        m.push(0, 700, 3_000_000, Law::Alaw, &[Law::Alaw.encode(800); 160]);
        m.take(860, &mut out);
        assert!(out[640..700].iter().all(|&s| s == 0));
        assert!(out[700..860].iter().all(|&s| s > 0));
    }

    #[test]
    fn headers_describe_the_data_and_a_dead_writer_is_repaired() {
        let samples: Vec<i16> = (0..800).map(|i| (i * 10) as i16).collect();
        let mut file = wav_header(1600).to_vec();
        file.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        assert_eq!(wav_to_8k(&file).unwrap(), samples);
        // Written with a placeholder (0), cut mid-sample by a crash.
        let mut partial = wav_header(0).to_vec();
        partial.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        partial.push(0x7F);
        let (h, len) = repaired_header(partial.len() as u64).unwrap();
        partial[..HEADER_LEN].copy_from_slice(&h);
        partial.truncate(len as usize);
        assert_eq!(wav_to_8k(&partial).unwrap(), samples);
        assert!(repaired_header(10).is_none());
    }
}
