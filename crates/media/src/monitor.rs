//! A supervisor on an answered call, sans-IO: they **listen** (hear the
//! caller and the operator mixed, say nothing), **whisper** (the operator
//! also hears them, the caller does not) or **barge** (both hear them).
//!
//! Mixing is done on the clocks already there, so nobody's audio waits for
//! a mixer: the supervisor's voice is added into the packets the relay
//! forwards to the operator (and to the caller when barging) as they pass,
//! and the supervisor's own stream is paced every 20 ms from what both
//! sides sent. Each source waits in a short bounded queue of decoded
//! samples ([`Fifo`]): a source that runs ahead of the clock that drains
//! it loses its oldest samples, so the delay it adds stays under
//! [`MAX_DELAY`] whatever the clocks' drift; one that runs behind is
//! padded with silence. No jitter buffer: on loopback and LANs the
//! arrival order is the playout order, and a late packet costs 20 ms of
//! the supervisor's audio, never the call's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::g711::Law;
use crate::leg::{Leg, Received, Stats};
use crate::prompt::FRAME;
use crate::rtp::{self, Header};

/// What the supervisor does on the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MonitorMode {
    /// Hears both sides; heard by nobody.
    Listen,
    /// Hears both sides; heard by the operator only (coaching).
    Whisper,
    /// Hears both sides; heard by both (joins the conversation).
    Barge,
}

impl MonitorMode {
    /// Every mode, in the order of how much the supervisor takes part.
    pub const ALL: [Self; 3] = [Self::Listen, Self::Whisper, Self::Barge];

    /// `"listen"`, `"whisper"` or `"barge"`: the API's word and the
    /// metrics' label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Listen => "listen",
            Self::Whisper => "whisper",
            Self::Barge => "barge",
        }
    }

    /// The mode named `s` (as [`Self::label`] writes it).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.label() == s)
    }

    /// Whether `side` (0 the caller, 1 the operator) hears the supervisor.
    fn heard_by(self, side: usize) -> bool {
        match self {
            Self::Listen => false,
            Self::Whisper => side == 1,
            Self::Barge => true,
        }
    }
}

/// The longest a source's samples wait to be mixed (a source running
/// ahead of the clock that drains it loses its oldest samples past it).
pub const MAX_DELAY: Duration = Duration::from_millis(120);
/// The longest payload the relay forwards (its buffer's size).
const MAX_PAYLOAD: usize = 1500;
/// [`MAX_DELAY`] in samples at 8 kHz.
const FIFO_SAMPLES: usize = 960;

/// Decoded samples of one source waiting to be mixed into another stream.
#[derive(Debug)]
pub(crate) struct Fifo(VecDeque<i16>);

impl Fifo {
    fn new() -> Self {
        Self(VecDeque::with_capacity(FIFO_SAMPLES))
    }

    /// A packet's payload in `law`, decoded; the oldest samples go when
    /// the queue would exceed [`MAX_DELAY`] (no allocation: the capacity
    /// is reserved once).
    pub(crate) fn push(&mut self, law: Law, payload: &[u8]) {
        let payload = &payload[payload.len().saturating_sub(FIFO_SAMPLES)..];
        let over = (self.0.len() + payload.len()).saturating_sub(FIFO_SAMPLES);
        self.0.drain(..over);
        self.0.extend(payload.iter().map(|&b| law.decode(b)));
    }

    /// Adds the next `out.len()` samples into `out` (silence past the
    /// queue's end).
    fn add_into(&mut self, out: &mut [i32]) {
        let n = out.len().min(self.0.len());
        for (o, s) in out.iter_mut().zip(self.0.drain(..n)) {
            *o += i32::from(s);
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A supervisor's leg on a call.
#[derive(Debug)]
pub(crate) struct Monitor {
    pub(crate) mode: MonitorMode,
    leg: Leg,
    law: Law,
    /// Our stream to the supervisor.
    ssrc: u32,
    seq: u16,
    ts: u32,
    first: bool,
    /// When the next frame to the supervisor is due.
    next: Instant,
    /// What the supervisor hears, per side (caller, operator).
    hears: [Fifo; 2],
    /// The supervisor's voice waiting for each side's next packet.
    speaks: [Fifo; 2],
    /// A frame of the supervisor's voice alone may go to a side this
    /// tick (one per side per 20 ms), its own numbering for it.
    pub(crate) voice_due: [bool; 2],
    voice: [(u16, u32); 2],
    /// The last key the supervisor pressed (RFC 4733), not yet taken.
    pub(crate) digit: Option<char>,
}

impl Monitor {
    pub(crate) fn new(
        now: Instant,
        mode: MonitorMode,
        leg: Leg,
        law: Law,
        seed: (u32, u16, u32),
    ) -> Self {
        Self {
            mode,
            leg,
            law,
            ssrc: seed.0,
            seq: seed.1,
            ts: seed.2,
            first: true,
            next: now,
            hears: [Fifo::new(), Fifo::new()],
            speaks: [Fifo::new(), Fifo::new()],
            voice_due: [false; 2],
            voice: [(seed.1, seed.2); 2],
            digit: None,
        }
    }

    pub(crate) fn set_mode(&mut self, mode: MonitorMode) {
        self.mode = mode;
        for side in 0..2 {
            if !mode.heard_by(side) {
                self.speaks[side].clear();
            }
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.leg.stats()
    }

    /// Side `side` sent `payload` (in `law`), relayed to the other side.
    pub(crate) fn heard(&mut self, side: usize, law: Law, payload: &[u8]) {
        self.hears[side].push(law, payload);
    }

    /// Whether the packets going to `side` carry the supervisor's voice.
    pub(crate) fn speaks_to(&self, side: usize) -> bool {
        self.mode.heard_by(side)
    }

    /// A packet relayed to `side`: its payload (in `from`) with the
    /// supervisor's voice added, written in `to` over the same bytes.
    pub(crate) fn mix_into(&mut self, side: usize, from: Law, to: Law, payload: &mut [u8]) {
        let mut mix = [0i32; MAX_PAYLOAD];
        let mix = &mut mix[..payload.len().min(MAX_PAYLOAD)];
        for (m, &b) in mix.iter_mut().zip(payload.iter()) {
            *m = i32::from(from.decode(b));
        }
        self.speaks[side].add_into(mix);
        for (b, &m) in payload.iter_mut().zip(mix.iter()) {
            *b = to.encode(clamp(m));
        }
    }

    /// A datagram from `from` on the supervisor's port: their voice, kept
    /// for the sides that hear them. Whether it was theirs.
    pub(crate) fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        match self.leg.receive(now, from, data) {
            Received::Media(p) if p.header.payload_type == self.law.payload_type() => {
                for side in 0..2 {
                    if self.mode.heard_by(side) {
                        self.speaks[side].push(self.law, p.payload);
                    }
                }
                true
            }
            Received::Dtmf(_, Some(digit)) => {
                self.digit = Some(digit);
                true
            }
            Received::Media(_) | Received::Dtmf(..) => true,
            Received::Dropped => false,
        }
    }

    /// A frame of the supervisor's voice alone for `side` (nothing is
    /// relayed to it now: on hold, or its peer silent), in `law`: the
    /// header's numbers (ssrc, seq, timestamp) and whether there was
    /// anything to say.
    pub(crate) fn voice_frame(
        &mut self,
        side: usize,
        law: Law,
        out: &mut [u8; FRAME],
    ) -> Option<(u32, u16, u32)> {
        if self.speaks[side].0.is_empty() {
            return None;
        }
        let mut mix = [0i32; FRAME];
        self.speaks[side].add_into(&mut mix);
        for (b, &m) in out.iter_mut().zip(mix.iter()) {
            *b = law.encode(clamp(m));
        }
        let (seq, ts) = self.voice[side];
        self.voice[side] = (seq.wrapping_add(1), ts.wrapping_add(FRAME as u32));
        Some((self.ssrc, seq, ts))
    }

    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// The supervisor's next frame if due at `now`: both sides mixed, in
    /// the supervisor's law, written into `buf`. A driver late by more
    /// than [`MAX_DELAY`] skips ahead rather than bursting.
    pub(crate) fn poll_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        if now < self.next {
            return None;
        }
        let period = Duration::from_millis(20);
        let late = now.saturating_duration_since(self.next);
        self.next = if late > MAX_DELAY {
            // Skipped ahead: the timestamps follow the time skipped, so
            // the supervisor's jitter buffer sees a gap, not a squeeze.
            let skipped = (late.as_micros() / 125) as u32;
            self.ts = self.ts.wrapping_add(skipped);
            now + period
        } else {
            self.next + period
        };
        self.voice_due = [true; 2];
        let mut mix = [0i32; FRAME];
        for side in &mut self.hears {
            side.add_into(&mut mix);
        }
        let mut payload = [0u8; FRAME];
        for (b, &m) in payload.iter_mut().zip(mix.iter()) {
            *b = self.law.encode(clamp(m));
        }
        let h = Header {
            marker: std::mem::take(&mut self.first),
            payload_type: self.law.payload_type(),
            seq: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        };
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        let to = self.leg.destination();
        let len = rtp::write(&h, &payload, buf)?;
        Some((to, len))
    }
}

fn clamp(s: i32) -> i16 {
    s.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

#[cfg(test)]
// Tests may read the clock: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;

    #[test]
    fn a_source_running_ahead_never_adds_more_than_the_bound() {
        let mut f = Fifo::new();
        for _ in 0..100 {
            f.push(Law::Ulaw, &[0x80; 160]);
        }
        assert_eq!(f.0.len(), FIFO_SAMPLES);
        // An oversized payload keeps its newest samples only.
        f.push(Law::Ulaw, &[0x80; 4000]);
        assert_eq!(f.0.len(), FIFO_SAMPLES);
        let mut out = [0i32; 2000];
        f.add_into(&mut out);
        assert!(f.0.is_empty());
        assert_eq!(out[1999], 0, "silence past the end");
    }

    #[test]
    fn modes_parse_and_say_who_hears_the_supervisor() {
        for m in MonitorMode::ALL {
            assert_eq!(MonitorMode::parse(m.label()), Some(m));
        }
        assert_eq!(MonitorMode::parse("LISTEN"), None);
        assert!(!MonitorMode::Listen.heard_by(0) && !MonitorMode::Listen.heard_by(1));
        assert!(!MonitorMode::Whisper.heard_by(0) && MonitorMode::Whisper.heard_by(1));
        assert!(MonitorMode::Barge.heard_by(0) && MonitorMode::Barge.heard_by(1));
    }
}
