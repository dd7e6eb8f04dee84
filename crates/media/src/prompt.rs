//! Prompts and music on hold: WAV files (PCM 8/16-bit, any rate, any
//! channel count) converted once, at load, into 20 ms G.711 frames; and
//! their paced playout with correct timestamps and marker bit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::g711::Law;
use crate::rtp::Header;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// Largest WAV file accepted.
pub const MAX_WAV_BYTES: usize = 64 << 20;
/// Longest prompt accepted.
pub const MAX_SECONDS: usize = 30 * 60;

/// Why a WAV file cannot be used, said for the operator who supplied it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// Not a RIFF/WAVE file, or a chunk runs past the end.
    #[error("not a valid RIFF/WAVE file: {0}")]
    Format(&'static str),
    /// A WAV encoding other than integer PCM 8/16-bit.
    #[error("unsupported encoding: {0} (use PCM 8 or 16 bit)")]
    Encoding(String),
    /// Too large or too long.
    #[error("too large: at most {MAX_WAV_BYTES} bytes and {MAX_SECONDS} seconds")]
    TooLarge,
}

/// A prompt ready to send: 20 ms frames in one law.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// The law the frames are encoded in.
    pub law: Law,
    /// Encoded frames, 160 bytes each.
    pub frames: Arc<[[u8; FRAME]]>,
}

fn u16le(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32le(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Decodes a WAV file to 8 kHz mono linear samples.
pub fn wav_to_8k(data: &[u8]) -> Result<Vec<i16>, WavError> {
    if data.len() > MAX_WAV_BYTES {
        return Err(WavError::TooLarge);
    }
    if data.len() < 12 || &data[..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Err(WavError::Format("no RIFF/WAVE header"));
    }
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    let mut pcm: Option<&[u8]> = None;
    let mut i = 12;
    while i + 8 <= data.len() {
        let id = &data[i..i + 4];
        let len = u32le(data, i + 4) as usize;
        let body = data
            .get(i + 8..i + 8 + len)
            .ok_or(WavError::Format("chunk runs past the end"))?;
        match id {
            b"fmt " => {
                if len < 16 {
                    return Err(WavError::Format("short fmt chunk"));
                }
                let mut tag = u16le(body, 0);
                if tag == 0xFFFE && len >= 26 {
                    // WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes.
                    tag = u16le(body, 24);
                }
                fmt = Some((tag, u16le(body, 2), u32le(body, 4), u16le(body, 14)));
            }
            b"data" => pcm = Some(body),
            _ => {}
        }
        // Chunks are padded to even length.
        i += 8 + len + (len & 1);
    }
    let (tag, channels, rate, bits) = fmt.ok_or(WavError::Format("no fmt chunk"))?;
    let pcm = pcm.ok_or(WavError::Format("no data chunk"))?;
    if tag != 1 {
        return Err(WavError::Encoding(format!("format tag {tag}")));
    }
    if !(bits == 8 || bits == 16) {
        return Err(WavError::Encoding(format!("{bits}-bit samples")));
    }
    if !(1..=8).contains(&channels) || !(4000..=192_000).contains(&rate) {
        return Err(WavError::Encoding(format!(
            "{channels} channels at {rate} Hz"
        )));
    }
    let width = usize::from(bits / 8) * usize::from(channels);
    let n = pcm.len() / width;
    if n / rate as usize > MAX_SECONDS {
        return Err(WavError::TooLarge);
    }
    // Mono by averaging the channels.
    let mono: Vec<i32> = pcm
        .chunks_exact(width)
        .map(|f| {
            let sum: i32 = (0..usize::from(channels))
                .map(|c| {
                    if bits == 8 {
                        (i32::from(f[c]) - 128) << 8
                    } else {
                        i32::from(i16::from_le_bytes([f[2 * c], f[2 * c + 1]]))
                    }
                })
                .sum();
            sum / i32::from(channels)
        })
        .collect();
    Ok(resample_to_8k(&mono, rate))
}

/// Averages each 1/8000 s window of the source (a box low-pass before
/// decimation; enough for speech and hold music on a telephone channel).
fn resample_to_8k(src: &[i32], rate: u32) -> Vec<i16> {
    if rate == 8000 {
        return src.iter().map(|&s| s as i16).collect();
    }
    let out_len = (src.len() as u64 * 8000 / u64::from(rate)) as usize;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let a = n as u64 * u64::from(rate) / 8000;
        let b = (((n as u64 + 1) * u64::from(rate)) / 8000).max(a + 1);
        let win = &src[a as usize..(b as usize).min(src.len())];
        let avg = win.iter().map(|&s| i64::from(s)).sum::<i64>() / win.len().max(1) as i64;
        out.push(avg.clamp(-32768, 32767) as i16);
    }
    out
}

impl Prompt {
    /// Loads a WAV file's bytes into frames of `law` (the last frame padded
    /// with silence).
    pub fn from_wav(data: &[u8], law: Law) -> Result<Self, WavError> {
        let samples = wav_to_8k(data)?;
        Ok(Self::from_samples(&samples, law))
    }

    /// Frames from 8 kHz linear samples.
    pub fn from_samples(samples: &[i16], law: Law) -> Self {
        let silence = law.encode(0);
        let frames: Vec<[u8; FRAME]> = samples
            .chunks(FRAME)
            .map(|c| {
                let mut f = [silence; FRAME];
                for (o, &s) in f.iter_mut().zip(c) {
                    *o = law.encode(s);
                }
                f
            })
            .collect();
        Self {
            law,
            frames: frames.into(),
        }
    }

    /// Duration.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(20 * self.frames.len() as u64)
    }
}

/// Most frames sent at once when the driver is late; beyond, the playout
/// skips ahead rather than bursting (a burst would overflow the far end's
/// jitter buffer).
const MAX_CATCH_UP: u32 = 3;

/// Paced playout of a prompt: one frame every 20 ms from `start`.
#[derive(Debug)]
pub struct Playout {
    prompt: Prompt,
    looped: bool,
    start: Instant,
    /// Frames sent (or skipped) so far.
    sent: u32,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl Playout {
    /// Starts at `start`; `looped` for music on hold.
    pub fn new(prompt: Prompt, looped: bool, start: Instant, ssrc: u32, seq: u16, ts: u32) -> Self {
        Self {
            prompt,
            looped,
            start,
            sent: 0,
            ssrc,
            seq,
            ts,
        }
    }

    fn due(&self, k: u32) -> Instant {
        self.start + Duration::from_millis(20 * u64::from(k))
    }

    fn finished(&self) -> bool {
        !self.looped && self.sent as usize >= self.prompt.frames.len()
    }

    /// The law of the frames.
    pub fn law(&self) -> Law {
        self.prompt.law
    }

    /// When the frame after the last one sent is due (the end, once a
    /// non-looped prompt has ended).
    pub fn end(&self) -> Instant {
        self.due(self.sent)
    }

    /// When the next frame is due; `None` once a non-looped prompt ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.finished() && !self.prompt.frames.is_empty()).then(|| self.due(self.sent))
    }

    /// The next frame due at `now`, with its header; call until `None`.
    pub fn poll_packet(&mut self, now: Instant) -> Option<(Header, &[u8; FRAME])> {
        if self.finished() || self.prompt.frames.is_empty() || self.due(self.sent) > now {
            return None;
        }
        // Late by more than the catch-up allowance: skip ahead, keeping the
        // timestamps in step with the wall clock.
        let behind = (now
            .saturating_duration_since(self.due(self.sent))
            .as_millis()
            / 20) as u32;
        if behind >= MAX_CATCH_UP {
            let skip = behind + 1 - MAX_CATCH_UP;
            self.sent += skip;
            self.ts = self.ts.wrapping_add(160 * skip);
            if self.finished() {
                return None;
            }
        }
        let n = self.prompt.frames.len();
        let frame = &self.prompt.frames[self.sent as usize % n];
        let h = Header {
            marker: self.sent == 0,
            payload_type: self.prompt.law.payload_type(),
            seq: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        };
        self.sent += 1;
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        Some((h, frame))
    }
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, bits: u16, samples: &[Vec<i16>]) -> Vec<u8> {
        let mut data = Vec::new();
        for s in samples {
            for &v in s {
                if bits == 16 {
                    data.extend_from_slice(&v.to_le_bytes());
                } else {
                    data.push(((i32::from(v) >> 8) + 128) as u8);
                }
            }
        }
        let mut w = Vec::new();
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        let block = channels * bits / 8;
        w.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        w.extend_from_slice(&block.to_le_bytes());
        w.extend_from_slice(&bits.to_le_bytes());
        w.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00"); // odd chunk, padded
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(&data);
        w
    }

    fn tone(rate: u32, hz: f64, seconds: f64) -> Vec<i16> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|i| {
                (10_000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    }

    fn crossings(s: &[i16]) -> usize {
        s.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    /// A 1 kHz tone at 44.1 kHz stereo (one channel silent), 16-bit, and at
    /// 22.05 kHz 8-bit mono: one second of 8 kHz audio, still 1 kHz, with
    /// the expected level.
    #[test]
    fn any_rate_and_layout_becomes_8k_mono() {
        let t = tone(44_100, 1000.0, 1.0);
        let stereo: Vec<Vec<i16>> = t.iter().map(|&v| vec![v, 0]).collect();
        let s = wav_to_8k(&wav(44_100, 2, 16, &stereo)).unwrap();
        assert_eq!(s.len(), 8000);
        assert!((1990..=2010).contains(&crossings(&s)), "{}", crossings(&s));
        let peak = s.iter().map(|v| i32::from(v.unsigned_abs())).max().unwrap();
        assert!(
            (4000..=5100).contains(&peak),
            "half of 10,000 after the downmix: {peak}"
        );
        let mono: Vec<Vec<i16>> = tone(22_050, 1000.0, 0.5)
            .into_iter()
            .map(|v| vec![v])
            .collect();
        let s = wav_to_8k(&wav(22_050, 1, 8, &mono)).unwrap();
        assert_eq!(s.len(), 4000);
        assert!((990..=1010).contains(&crossings(&s)));
        let p = Prompt::from_samples(&s, Law::Alaw);
        assert_eq!(p.frames.len(), 25);
        assert_eq!(p.duration(), Duration::from_millis(500));
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let good = wav(8000, 1, 16, &[vec![1], vec![2]]);
        assert!(wav_to_8k(&good).is_ok());
        assert!(matches!(
            wav_to_8k(b"RIFFxxxxWAVX"),
            Err(WavError::Format(_))
        ));
        assert!(matches!(
            wav_to_8k(&good[..good.len() - 1]),
            Err(WavError::Format(_))
        ));
        let mut float = good.clone();
        float[20] = 3; // IEEE float
        assert!(matches!(wav_to_8k(&float), Err(WavError::Encoding(_))));
        let mut bits24 = good.clone();
        bits24[34] = 24;
        assert!(matches!(wav_to_8k(&bits24), Err(WavError::Encoding(_))));
        let mut huge = good;
        huge[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(wav_to_8k(&huge), Err(WavError::Format(_))));
    }

    proptest::proptest! {
        #[test]
        fn wav_parser_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut d = b"RIFF\0\0\0\0WAVE".to_vec();
            d.extend(data);
            let _ = wav_to_8k(&d);
        }
    }

    #[test]
    fn playout_is_paced_and_loops() {
        let t0 = Instant::now();
        let p = Prompt::from_samples(&[100; 3 * FRAME], Law::Ulaw);
        let mut moh = Playout::new(p.clone(), true, t0, 5, 10, 1000);
        let (h, _) = moh.poll_packet(t0).unwrap();
        assert!(h.marker);
        assert_eq!((h.seq, h.timestamp, h.payload_type), (10, 1000, 0));
        assert!(moh.poll_packet(t0).is_none());
        assert_eq!(moh.poll_timeout(), Some(t0 + Duration::from_millis(20)));
        // 50 ms late: two frames due (20, 40 ms), sent back to back.
        let now = t0 + Duration::from_millis(50);
        let a = moh.poll_packet(now).unwrap().0;
        let b = moh.poll_packet(now).unwrap().0;
        assert!(moh.poll_packet(now).is_none());
        assert_eq!((a.timestamp, b.timestamp), (1160, 1320));
        assert!(!a.marker && !b.marker);
        // It loops: frame 3 is frame 0 again, timestamps keep going.
        let c = moh.poll_packet(t0 + Duration::from_millis(60)).unwrap().0;
        assert_eq!((c.seq, c.timestamp), (13, 1480));
        // One second late: skips ahead instead of bursting 50 frames.
        let late = t0 + Duration::from_millis(1060);
        let mut n = 0;
        let mut last = 0;
        while let Some((h, _)) = moh.poll_packet(late) {
            n += 1;
            last = h.timestamp;
        }
        assert_eq!(n, 3);
        assert_eq!(last, 1000 + 53 * 160, "timestamps follow the clock");
        // Not looped: ends.
        let mut once = Playout::new(p, false, t0, 5, 0, 0);
        let end = t0 + Duration::from_millis(40);
        let mut sent = 0;
        while once.poll_packet(end).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 3);
        assert_eq!(once.poll_timeout(), None);
    }
}
