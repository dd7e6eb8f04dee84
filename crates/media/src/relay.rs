//! One anchored call's media, sans-IO: the caller's leg from the start,
//! the operator's leg once bridged. Before the bridge the caller hears
//! prompts and music on hold (paced playout); after it, packets from one
//! leg are relayed to the other with the header rewritten (one SSRC per
//! direction, continuous numbering across every source) and the payload
//! transcoded when the legs negotiated different laws. Telephone events
//! are reported once per key press and relayed as events when the other
//! leg negotiated them. Writes into the caller's buffer: no allocation per
//! packet.
//!
//! A whisper (the context of the call, played to the operator once they
//! answer) comes between the two: the operator hears it on their own
//! stream while the caller still hears the music; the bridge waits for its
//! end, so neither hears the other before the operator knows who calls.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::g711::{self, Law};
use crate::leg::{Leg, Received, Stats};
use crate::monitor::{Monitor, MonitorMode};
use crate::prompt::{FRAME, Playout, Prompt};
use crate::record::{Mixer, RATE};
use crate::rtp::{self, HEADER_LEN, Header};
use crate::stream::Outgoing;

/// Which side of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller (trunk).
    A,
    /// The operator.
    B,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// 0 for A, 1 for B.
    pub fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }

    /// `"caller"` or `"operator"`, for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::A => "caller",
            Self::B => "operator",
        }
    }
}

/// What the driver does after a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the first `len` bytes of the buffer to `to` from the other
    /// side's socket.
    Send {
        /// Destination.
        to: SocketAddr,
        /// Bytes written.
        len: usize,
    },
    /// A key press on this side (the event may also have been relayed:
    /// then `relay` holds what to send, as for `Send`).
    Dtmf {
        /// The key.
        digit: char,
        /// The event packet to send to the other side, if any.
        relay: Option<(SocketAddr, usize)>,
    },
    /// Nothing to send.
    None,
}

/// Source ids for the outgoing streams (any distinct numbers: a change of
/// source sets the marker bit and restarts the timestamp mapping).
const FROM_PEER: u32 = 0;
/// The supervisor's voice alone (playout sources count up from 1).
const FROM_MONITOR: u32 = u32::MAX;
/// One 20 ms frame.
const FRAME_TIME: Duration = Duration::from_millis(20);

/// A key sent as RFC 4733 events: this many packets of the tone, 20 ms
/// apart (100 ms, what phones send for a short press), then the end
/// packet three times (RFC 4733 §2.5.1.4: end packets are repeated).
const KEY_PACKETS: u16 = 5;
const KEY_ENDS: u16 = 3;
/// Keys waiting their turn towards one side, at most.
const KEYS_QUEUED: usize = 16;
/// Their volume (−dBm0), as phones send.
const KEY_VOLUME: u8 = 10;

/// A key being sent to one side as RFC 4733 events.
#[derive(Debug)]
struct KeyOut {
    code: u8,
    /// When its first packet was due.
    start: Instant,
    /// Packets sent so far.
    sent: u16,
    /// Its source id in the side's outgoing stream (one per key: each
    /// starts a new event, with its own timestamp and the marker bit).
    source: u32,
}

/// A side fed by relayed packets this recently hears the supervisor mixed
/// into them; longer without (hold, a silent peer), in frames of its own.
const FED: Duration = Duration::from_millis(60);

/// What a side hears before the bridge: the caller's prompts and music,
/// the operator's whisper.
#[derive(Debug, Default)]
struct Playback {
    /// Prompts still to play after the current one.
    queue: Vec<Prompt>,
    next: usize,
    /// Looped once the prompts are done.
    music: Option<Prompt>,
    current: Option<Playout>,
}

/// One call's media.
#[derive(Debug)]
pub struct CallMedia {
    legs: [Option<Leg>; 2],
    laws: [Law; 2],
    out: [Outgoing; 2],
    /// Last packet accepted per side (liveness).
    last_rx: [Instant; 2],
    /// Relaying between the legs (else playback to the caller).
    bridged: bool,
    /// The operator hears the whisper (`playback[1]`); nothing relayed.
    whispering: bool,
    /// The bridge was asked for during the whisper: done at its end.
    bridge_pending: bool,
    /// Each side's hold (caller, operator): nothing is relayed while
    /// either holds. Per side, so a carrier's session refresh (sendrecv)
    /// never ends the operator's hold.
    held: [bool; 2],
    /// The caller hears the music because the operator holds them.
    held_by_operator: bool,
    /// Per side: the caller's prompts and music, the operator's whisper.
    playback: [Playback; 2],
    /// Distinct source id per playout.
    sources: u32,
    /// Recording: the mix and when it started.
    recording: Option<(Mixer, Instant)>,
    /// Datagrams on the operator's port before the bridge.
    unexpected: u64,
    /// A supervisor on the bridged call.
    monitor: Option<Monitor>,
    /// When a relayed packet last went to each side.
    last_out: [Option<Instant>; 2],
    /// Where the previous operator's phone sent from: refused to the next
    /// operator's leg on this port.
    gone: Option<SocketAddr>,
    /// Per side: keys to send as RFC 4733 events (they came by SIP INFO
    /// from the other side), and the one being sent. While a key is sent
    /// to a side, what is relayed to it is not: one stream, one timeline.
    keys: [std::collections::VecDeque<u8>; 2],
    key_out: [Option<KeyOut>; 2],
}

impl CallMedia {
    /// The caller's leg with its negotiated law; `seeds` (ssrc, seq, ts)
    /// start the outgoing stream of each side (random in production,
    /// RFC 3550 §5.1).
    pub fn new(now: Instant, a: Leg, a_law: Law, seeds: [(u32, u16, u32); 2]) -> Self {
        Self {
            legs: [Some(a), None],
            laws: [a_law, a_law],
            out: seeds.map(|(s, q, t)| Outgoing::new(s, q, t)),
            last_rx: [now; 2],
            bridged: false,
            whispering: false,
            bridge_pending: false,
            held: [false; 2],
            held_by_operator: false,
            playback: [Playback::default(), Playback::default()],
            sources: FROM_PEER,
            recording: None,
            unexpected: 0,
            monitor: None,
            last_out: [None; 2],
            gone: None,
            keys: Default::default(),
            key_out: [None, None],
        }
    }

    /// Sends `digit` to `side` as RFC 4733 telephone events in its
    /// outgoing stream (its negotiated payload type), after the keys
    /// already waiting. `false` (nothing sent) when the side negotiated no
    /// telephone-event, is not connected, or `digit` is not a DTMF key,
    /// or too many keys wait.
    pub fn send_key(&mut self, now: Instant, side: Side, digit: char) -> bool {
        let i = side.index();
        // As relayed media: nothing while either side holds.
        let ready = self.bridged
            && !self.held.contains(&true)
            && self.legs[i]
                .as_ref()
                .is_some_and(|l| l.telephone_event().is_some());
        let Some(code) = crate::dtmf::code(digit).filter(|_| ready) else {
            return false;
        };
        if self.keys[i].len() >= KEYS_QUEUED {
            return false;
        }
        self.keys[i].push_back(code);
        if self.key_out[i].is_none() {
            self.next_key(side, now);
        }
        true
    }

    /// The next waiting key of `side` starts at `start`.
    fn next_key(&mut self, side: Side, start: Instant) {
        let i = side.index();
        self.key_out[i] = self.keys[i].pop_front().map(|code| {
            self.sources = self.sources.wrapping_add(1).max(1);
            KeyOut {
                code,
                start,
                sent: 0,
                source: self.sources,
            }
        });
    }

    /// When the next key packet is due, on either side.
    fn key_due(&self) -> Option<Instant> {
        self.key_out
            .iter()
            .flatten()
            .map(|k| k.start + FRAME_TIME * u32::from(k.sent))
            .min()
    }

    /// The next RFC 4733 packet due at `now` (see [`Self::send_key`]):
    /// the side whose socket sends it, where to, its length in `buf`. Call
    /// until `None`.
    pub fn poll_key(&mut self, now: Instant, buf: &mut [u8]) -> Option<(Side, SocketAddr, usize)> {
        for side in [Side::A, Side::B] {
            let i = side.index();
            if self.held.contains(&true) {
                // A hold came: the keys go with the media they replace.
                self.key_out[i] = None;
                self.keys[i].clear();
                continue;
            }
            let Some(k) = self.key_out[i].as_mut() else {
                continue;
            };
            let due = k.start + FRAME_TIME * u32::from(k.sent);
            if due > now {
                continue;
            }
            let (code, sent, source) = (k.code, k.sent, k.source);
            k.sent += 1;
            if k.sent == KEY_PACKETS + KEY_ENDS {
                self.next_key(side, due + FRAME_TIME);
            }
            let Some(leg) = self.legs[i].as_ref() else {
                self.key_out[i] = None;
                self.keys[i].clear();
                continue;
            };
            let (to, pt) = (leg.destination(), leg.telephone_event());
            let Some(pt) = pt.filter(|_| !nowhere(to)) else {
                continue;
            };
            let end = sent >= KEY_PACKETS;
            let duration = FRAME as u16 * (sent.min(KEY_PACKETS - 1) + 1);
            let payload = crate::dtmf::payload(crate::dtmf::Event {
                code,
                end,
                volume: KEY_VOLUME,
                duration,
            });
            // Every packet of one key has the key's timestamp (the
            // source's own never moves); the next source starts after
            // the time the key's packets took, so the stream keeps up
            // with the clock.
            let src = Header {
                marker: sent == 0,
                payload_type: pt,
                seq: sent.wrapping_add(1),
                timestamp: 0,
                ssrc: source,
            };
            let samples = FRAME as u32 * u32::from(KEY_PACKETS + KEY_ENDS);
            let Some(mut h) = self.out[i].rewrite(source, &src, samples) else {
                continue;
            };
            h.payload_type = pt;
            let len = rtp::write(&h, &payload, buf)?;
            self.last_out[i] = Some(now);
            return Some((side, to, len));
        }
        None
    }

    /// Datagrams that reached the operator's port before the bridge
    /// (dropped).
    pub fn unexpected(&self) -> u64 {
        self.unexpected
    }

    /// Starts recording both legs (mixed) from `now`.
    pub fn record(&mut self, now: Instant) {
        self.recording = Some((Mixer::new(), now));
    }

    /// Whether the call is being recorded.
    pub fn recording(&self) -> bool {
        self.recording.is_some()
    }

    /// The recorded mix up to `slack` before `now` (late packets still
    /// find their place within it), appended to `out`.
    pub fn take_recording(&mut self, now: Instant, slack: Duration, out: &mut Vec<i16>) {
        if let Some((m, start)) = self.recording.as_mut() {
            let upto = samples_since(*start, now.checked_sub(slack).unwrap_or(*start));
            m.take(upto, out);
        }
    }

    /// Everything recorded so far (at the end of the call).
    pub fn finish_recording(&mut self, now: Instant, out: &mut Vec<i16>) {
        if let Some((mut m, start)) = self.recording.take() {
            m.take(samples_since(start, now), out);
        }
    }

    /// Plays `prompts` to the caller from `now`, then `music` in a loop
    /// (nothing when `None`). Replaces what was playing. Ignored once
    /// bridged.
    pub fn play(&mut self, now: Instant, prompts: Vec<Prompt>, music: Option<Prompt>) {
        if self.bridged {
            return;
        }
        self.playback[0] = Playback {
            queue: prompts,
            next: 0,
            music,
            current: None,
        };
        self.advance(Side::A, now);
    }

    /// The operator answered: they hear `prompts` (the call's context) on
    /// their leg from `now` while the caller keeps hearing the music. A
    /// [`bridge`](Self::bridge) asked for meanwhile waits for the end.
    pub fn whisper(&mut self, now: Instant, b: Leg, b_law: Law, prompts: Vec<Prompt>) {
        if self.bridged {
            return;
        }
        self.legs[1] = Some(b);
        self.laws[1] = b_law;
        self.playback[1] = Playback {
            queue: prompts,
            next: 0,
            music: None,
            current: None,
        };
        self.whispering = true;
        self.advance(Side::B, now);
    }

    /// Whether the operator is hearing a whisper.
    pub fn whispering(&self) -> bool {
        self.whispering
    }

    /// Starts the next prompt (or the music) of `side` at `start`; the end
    /// of the operator's whisper lets a pending bridge happen.
    fn advance(&mut self, side: Side, start: Instant) {
        let pb = &mut self.playback[side.index()];
        while pb.queue.get(pb.next).is_some_and(|p| p.frames.is_empty()) {
            pb.next += 1;
        }
        let (prompt, looped) = if let Some(p) = pb.queue.get(pb.next) {
            pb.next += 1;
            (p.clone(), false)
        } else if let Some(m) = pb.music.as_ref().filter(|m| !m.frames.is_empty()) {
            (m.clone(), true)
        } else {
            pb.current = None;
            if side == Side::B && std::mem::take(&mut self.whispering) && self.bridge_pending {
                self.connect();
                // Held during the whisper: the caller's music starts now.
                self.hold_music(start);
            }
            return;
        };
        self.sources = self.sources.wrapping_add(1).max(1);
        pb.current = Some(Playout::new(prompt, looped, start, self.sources, 0, 0));
    }

    /// Connects the operator's leg: playback stops, media is relayed. During
    /// a whisper the leg it latched is kept and the bridge waits for the
    /// whisper's end.
    pub fn bridge(&mut self, b: Leg, b_law: Law) {
        if self.whispering {
            self.bridge_pending = true;
            return;
        }
        self.legs[1] = Some(b.refusing(self.gone));
        self.laws[1] = b_law;
        self.connect();
    }

    /// [`Self::bridge`] at `now`: a hold the operator asked for before
    /// the bridge starts the caller's music at once.
    pub fn bridge_at(&mut self, now: Instant, b: Leg, b_law: Law) {
        self.bridge(b, b_law);
        self.hold_music(now);
    }

    /// The operator's leg is gone (their phone went silent): back to
    /// playback for the caller, whose stream goes on (same SSRC, marker at
    /// the change); the next operator's bridge continues it again.
    pub fn unbridge(&mut self) {
        if let Some(from) = self.legs[1].as_ref().and_then(Leg::latched) {
            self.gone = Some(from);
        }
        self.legs[1] = None;
        self.bridged = false;
        self.whispering = false;
        self.bridge_pending = false;
        self.held = [false; 2];
        self.held_by_operator = false;
        self.playback[1] = Playback::default();
        // The supervisor was on that operator's conversation.
        self.monitor = None;
        // Keys go to a connected side only.
        self.keys = Default::default();
        self.key_out = [None, None];
    }

    /// A supervisor joins the bridged call from `now` in `mode`, on their
    /// own `leg` and `law`, with `seed` (ssrc, seq, ts) for the stream
    /// they hear. Replaces another supervisor's. `false` (nothing done)
    /// before the operator answered: there is no conversation to join yet
    /// (during the operator's whisper they hear silence until the bridge).
    pub fn monitor(
        &mut self,
        now: Instant,
        mode: MonitorMode,
        leg: Leg,
        law: Law,
        seed: (u32, u16, u32),
    ) -> bool {
        if self.legs[1].is_none() {
            return false;
        }
        self.monitor = Some(Monitor::new(now, mode, leg, law, seed));
        true
    }

    /// The supervisor's new mode (`None`: they leave).
    pub fn set_monitor(&mut self, mode: Option<MonitorMode>) {
        match (mode, self.monitor.as_mut()) {
            (None, _) => self.monitor = None,
            (Some(mode), Some(m)) => m.set_mode(mode),
            (Some(_), None) => {}
        }
    }

    /// What the supervisor on the call does, if one is.
    pub fn monitoring(&self) -> Option<MonitorMode> {
        self.monitor.as_ref().map(|m| m.mode)
    }

    /// Counters of what the supervisor sent.
    pub fn monitor_stats(&self) -> Stats {
        self.monitor
            .as_ref()
            .map(Monitor::stats)
            .unwrap_or_default()
    }

    /// A datagram from `from` on the supervisor's port at `now`: their
    /// voice for whoever hears them. Whether it was theirs.
    pub fn receive_monitor(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        self.monitor
            .as_mut()
            .is_some_and(|m| m.receive(now, from, data))
    }

    /// The key the supervisor last pressed on their phone (RFC 4733), once:
    /// their phone's keypad changes the mode.
    pub fn take_monitor_digit(&mut self) -> Option<char> {
        self.monitor.as_mut()?.digit.take()
    }

    /// The supervisor's voice alone, for a side that hears them and gets
    /// no relayed packet to carry it now (the operator holding the caller,
    /// a peer silent between words): at most one frame per side per 20 ms,
    /// due at `now`. The caller held by the operator hears the music, not
    /// the supervisor. Call until `None`.
    pub fn poll_monitor_voice(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(Side, SocketAddr, usize)> {
        let m = self.monitor.as_mut()?;
        for side in [Side::B, Side::A] {
            let i = side.index();
            if !std::mem::take(&mut m.voice_due[i]) || !m.speaks_to(i) {
                continue;
            }
            let fed = self.last_out[i].is_some_and(|t| now.saturating_duration_since(t) < FED);
            if fed || (side == Side::A && self.held_by_operator) {
                continue;
            }
            let Some(to) = self.legs[i].as_ref().map(Leg::destination) else {
                continue;
            };
            if nowhere(to) {
                continue;
            }
            let law = self.laws[i];
            let mut payload = [0u8; FRAME];
            let Some((ssrc, seq, timestamp)) = m.voice_frame(i, law, &mut payload) else {
                continue;
            };
            let h = Header {
                marker: false,
                payload_type: law.payload_type(),
                seq,
                timestamp,
                ssrc,
            };
            let Some(out) = self.out[i].rewrite(FROM_MONITOR, &h, FRAME as u32) else {
                continue;
            };
            let out = Header {
                payload_type: law.payload_type(),
                ..out
            };
            let len = rtp::write(&out, &payload, buf)?;
            return Some((side, to, len));
        }
        None
    }

    /// The supervisor's next frame (the caller and the operator mixed),
    /// due at `now`, to send from the supervisor's port. Call until `None`.
    pub fn poll_monitor(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        // Bounded: a late driver skips ahead inside `poll_packet`.
        for _ in 0..8 {
            let (to, len) = self.monitor.as_mut()?.poll_packet(now, buf)?;
            if !nowhere(to) {
                return Some((to, len));
            }
        }
        None
    }

    fn connect(&mut self) {
        self.bridged = true;
        self.bridge_pending = false;
        self.playback[0].current = None;
        self.playback[1].current = None;
    }

    /// Whether the legs are bridged.
    pub fn bridged(&self) -> bool {
        self.bridged
    }

    /// `side` holds the call (re-INVITE with sendonly, inactive or the
    /// 0.0.0.0 marker) or resumes it. Nothing is relayed while held; a
    /// caller the operator holds hears the music (the queue's), from its
    /// start, until the operator resumes.
    pub fn set_held(&mut self, now: Instant, side: Side, held: bool) {
        self.held[side.index()] = held;
        self.hold_music(now);
    }

    /// The caller's music while the operator holds them once bridged
    /// (a hold during the whisper starts it at the bridge).
    fn hold_music(&mut self, now: Instant) {
        let music = self.held[Side::B.index()] && self.bridged;
        if music != self.held_by_operator {
            self.held_by_operator = music;
            let pb = &mut self.playback[0];
            // No prompt left from the queue: the music only.
            pb.next = pb.queue.len();
            pb.current = None;
            if music {
                self.advance(Side::A, now);
            }
        }
    }

    /// Whether `side` hears playback now: before the bridge, or the caller
    /// while the operator holds them.
    fn plays_to(&self, side: Side) -> bool {
        !self.bridged || (side == Side::A && self.held_by_operator)
    }

    /// A side's peer sent a new SDP (re-INVITE): new address, event type
    /// and law; latch again.
    pub fn update(
        &mut self,
        side: Side,
        expected: SocketAddr,
        signalling: Option<IpAddr>,
        telephone_event: Option<u8>,
        law: Law,
    ) {
        if let Some(leg) = self.legs[side.index()].as_mut() {
            leg.update(expected, signalling, telephone_event);
            self.laws[side.index()] = law;
            // What this side sends next may restart its numbering. (While
            // a key is sent to the other side, the key is the stream's
            // source: the peer's next packet after it is a new one anyway,
            // and a restart now would split the key into two presses.)
            let o = side.other().index();
            if self.key_out[o].is_none() {
                self.out[o].restart_source();
            }
        }
    }

    /// Restarts the liveness clock of both sides (at the answer, after a
    /// re-INVITE): silence is measured from there.
    pub fn touch(&mut self, now: Instant) {
        self.last_rx = [now; 2];
    }

    /// Counters of what a side sent us (zero for a side not yet there).
    pub fn stats(&self, side: Side) -> Stats {
        self.legs[side.index()]
            .as_ref()
            .map(Leg::stats)
            .unwrap_or_default()
    }

    /// The side that has sent nothing for `timeout` (the caller only once
    /// bridged: many trunks send no RTP during early media). On hold the
    /// holding side may legitimately stay silent: nothing is reported.
    pub fn idle_side(&self, now: Instant, timeout: Duration) -> Option<Side> {
        if self.held.contains(&true) || !self.bridged {
            return None;
        }
        [Side::A, Side::B]
            .into_iter()
            .find(|s| now.saturating_duration_since(self.last_rx[s.index()]) >= timeout)
    }

    /// When the next playout frame is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = |side: Side| {
            let pb = &self.playback[side.index()];
            pb.current
                .as_ref()
                .filter(|_| self.plays_to(side))
                .and_then(Playout::poll_timeout)
        };
        [
            due(Side::A),
            due(Side::B),
            self.monitor.as_ref().map(Monitor::poll_timeout),
            self.key_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next playout packet due at `now`, written into `buf` (at least
    /// 172 bytes): where to send it from the caller's socket, and its
    /// length. Call until `None`.
    pub fn poll_packet(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        self.poll_side(Side::A, now, buf)
    }

    /// The next whisper packet due at `now` for the operator, to send from
    /// the operator's socket. Call until `None`.
    pub fn poll_whisper(&mut self, now: Instant, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        if !self.whispering {
            return None;
        }
        self.poll_side(Side::B, now, buf)
    }

    fn poll_side(
        &mut self,
        side: Side,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        if !self.plays_to(side) {
            return None;
        }
        let i = side.index();
        let to = self.legs[i].as_ref()?.destination();
        if nowhere(to) {
            // The playout keeps its time and skips ahead once the peer
            // gives an address.
            return None;
        }
        // Bounded: each turn starts the next prompt (skipped ones included).
        for _ in 0..=self.playback[i].queue.len() + 1 {
            let current = self.playback[i].current.as_mut()?;
            let law = current.law();
            let Some((h, frame)) = current.poll_packet(now) else {
                if current.poll_timeout().is_some() {
                    return None;
                }
                // Ended while the driver was late: go on from now.
                self.advance(side, now);
                continue;
            };
            let out = self.out[i].rewrite(h.ssrc, &h, FRAME as u32);
            let pt = self.laws[i].payload_type();
            let written = out.and_then(|out| {
                let out = Header {
                    payload_type: pt,
                    ..out
                };
                rtp::write(&out, frame, buf)
            });
            if current.poll_timeout().is_none() {
                // The next prompt starts right after this one's last frame.
                let end = current.end();
                self.advance(side, end);
            }
            let len = written?;
            g711::transcode(law, self.laws[i], &mut buf[HEADER_LEN..len]);
            return Some((to, len));
        }
        None
    }

    /// A datagram from `from` on `side`'s socket, at `now`. A relayed
    /// packet is written into `buf` (1,500 bytes is enough for anything
    /// accepted).
    pub fn receive(
        &mut self,
        now: Instant,
        side: Side,
        from: SocketAddr,
        data: &[u8],
        buf: &mut [u8],
    ) -> Action {
        let (i, o) = (side.index(), side.other().index());
        let Some(leg) = self.legs[i].as_mut() else {
            // The operator's port before anyone answered: nobody may send.
            self.unexpected += 1;
            return Action::None;
        };
        let received = leg.receive(now, from, data);
        if !matches!(received, Received::Dropped) {
            self.last_rx[i] = now;
        }
        let relaying = self.bridged && !self.held.contains(&true);
        match received {
            Received::Dropped => Action::None,
            Received::Dtmf(p, digit) => {
                // Not into a key being sent to that side.
                let relaying = relaying && self.key_out[o].is_none();
                let relay = match (relaying, self.legs[o].as_ref()) {
                    (true, Some(other)) => other.telephone_event().and_then(|pt| {
                        let to = other.destination();
                        if nowhere(to) {
                            return None;
                        }
                        let mut h = self.out[o].rewrite(FROM_PEER, &p.header, 0)?;
                        h.payload_type = pt;
                        rtp::write(&h, p.payload, buf).map(|len| (to, len))
                    }),
                    _ => None,
                };
                match (digit, relay) {
                    (Some(digit), relay) => Action::Dtmf { digit, relay },
                    (None, Some((to, len))) => Action::Send { to, len },
                    (None, None) => Action::None,
                }
            }
            Received::Media(p) => {
                let Some(other) = self.legs[o].as_ref() else {
                    return Action::None;
                };
                let (from_law, to_law) = (self.laws[i], self.laws[o]);
                if !relaying || p.header.payload_type != from_law.payload_type() {
                    // Comfort noise and unknown payloads are not relayed.
                    return Action::None;
                }
                if let Some((m, start)) = self.recording.as_mut() {
                    m.push(
                        i,
                        samples_since(*start, now),
                        p.header.timestamp,
                        from_law,
                        p.payload,
                    );
                }
                if let Some(m) = self.monitor.as_mut() {
                    m.heard(i, from_law, p.payload);
                }
                if self.key_out[o].is_some() {
                    // A key is being sent to that side in its stream.
                    return Action::None;
                }
                let to = other.destination();
                if nowhere(to) {
                    return Action::None;
                }
                let samples = p.payload.len() as u32;
                let Some(mut h) = self.out[o].rewrite(FROM_PEER, &p.header, samples) else {
                    return Action::None;
                };
                h.payload_type = to_law.payload_type();
                let Some(len) = rtp::write(&h, p.payload, buf) else {
                    return Action::None;
                };
                match self.monitor.as_mut().filter(|m| m.speaks_to(o)) {
                    Some(m) => m.mix_into(o, from_law, to_law, &mut buf[HEADER_LEN..len]),
                    None => g711::transcode(from_law, to_law, &mut buf[HEADER_LEN..len]),
                }
                self.last_out[o] = Some(now);
                Action::Send { to, len }
            }
        }
    }
}

/// The hold marker (c=0.0.0.0, RFC 2543) or the placeholder of an offer
/// still to come: "send nothing", never a destination (to Linux, 0.0.0.0
/// is this host).
fn nowhere(to: SocketAddr) -> bool {
    to.ip().to_canonical().is_unspecified() || to.port() == 0
}

fn samples_since(start: Instant, now: Instant) -> u64 {
    (now.saturating_duration_since(start).as_micros() as u64) * u64::from(RATE) / 1_000_000
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;
    use crate::leg::Latch;

    fn pkt(seq: u16, pt: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 12 + payload.len()];
        let h = Header {
            marker: false,
            payload_type: pt,
            seq,
            timestamp: u32::from(seq) * 160,
            ssrc: 99,
        };
        rtp::write(&h, payload, &mut b);
        b
    }

    fn prompt(byte: u8, frames: usize, law: Law) -> Prompt {
        Prompt {
            law,
            frames: vec![[byte; FRAME]; frames].into(),
        }
    }

    const A: &str = "192.0.2.5:40000";
    const B: &str = "192.0.2.21:30000";

    /// A call from `A` (caller law `a_law`, telephone-event `a_event`,
    /// first seeds `seed_a`): (media, caller address, operator address).
    fn call(
        a_law: Law,
        a_event: Option<u8>,
        seed_a: (u32, u16, u32),
    ) -> (CallMedia, SocketAddr, SocketAddr) {
        let (a, b) = (A.parse().unwrap(), B.parse().unwrap());
        let seeds = [seed_a, (seed_a.0 + 1, 500, 8000)];
        let m = CallMedia::new(
            Instant::now(),
            Leg::new(Latch::SdpAddress, a, a_event),
            a_law,
            seeds,
        );
        (m, a, b)
    }

    #[test]
    fn relays_with_rewrite_and_transcoding() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, Some(101), (1, 0, 0));
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw);
        let mut buf = [0u8; 1500];
        let alaw: Vec<u8> = (0..160).map(|i| Law::Alaw.encode(i * 100)).collect();
        let act = m.receive(t0, Side::A, a_addr, &pkt(10, 8, &alaw), &mut buf);
        let Action::Send { to, len } = act else {
            panic!("{act:?}");
        };
        assert_eq!((to, len), (b_addr, 172));
        let out = rtp::parse(&buf[..len]).unwrap();
        assert_eq!(out.header.payload_type, 0, "µ-law towards the operator");
        assert_eq!(
            (out.header.ssrc, out.header.seq, out.header.timestamp),
            (2, 500, 8000)
        );
        assert!(out.header.marker, "first packet of the stream");
        for (i, &b) in out.payload.iter().enumerate() {
            let want = i32::from(Law::Alaw.decode(alaw[i]));
            assert!((i32::from(Law::Ulaw.decode(b)) - want).abs() <= 1024);
        }
        // The caller's key press is an event, reported once; the operator
        // negotiated no telephone-event, so nothing is relayed.
        assert_eq!(
            m.receive(t0, Side::A, a_addr, &pkt(11, 101, &[4, 10, 0, 0]), &mut buf),
            Action::Dtmf {
                digit: '4',
                relay: None
            }
        );
        // On hold nothing goes through; a stranger never does.
        m.set_held(t0, Side::A, true);
        assert_eq!(
            m.receive(t0, Side::A, a_addr, &pkt(12, 8, &alaw), &mut buf),
            Action::None
        );
        m.set_held(t0, Side::A, false);
        let stranger: SocketAddr = "203.0.113.1:1".parse().unwrap();
        assert_eq!(
            m.receive(t0, Side::A, stranger, &pkt(13, 8, &alaw), &mut buf),
            Action::None
        );
        assert_eq!(m.stats(Side::A).foreign, 1);
        // The operator's audio flows back, A-law towards the caller.
        let ulaw = [0xFFu8; 160];
        let Action::Send { to, len } = m.receive(t0, Side::B, b_addr, &pkt(7, 0, &ulaw), &mut buf)
        else {
            panic!()
        };
        assert_eq!(to, a_addr);
        let back = rtp::parse(&buf[..len]).unwrap();
        assert_eq!((back.header.payload_type, back.header.ssrc), (8, 1));
        assert!(back.payload.iter().all(|&b| b == Law::Alaw.encode(0)));
    }

    #[test]
    fn a_phone_that_restarts_its_numbering_after_a_reinvite_is_heard_at_once() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Ulaw, None, (1, 0, 0));
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw);
        let mut buf = [0u8; 1500];
        let voice = [0x55u8; 160];
        for seq in 40_000..40_010 {
            let act = m.receive(t0, Side::B, b_addr, &pkt(seq, 0, &voice), &mut buf);
            assert!(matches!(act, Action::Send { .. }), "{act:?}");
        }
        // Hold and resume by re-INVITE: the phone starts again from 1.
        m.update(Side::B, b_addr, None, None, Law::Ulaw);
        let act = m.receive(t0, Side::B, b_addr, &pkt(1, 0, &voice), &mut buf);
        let Action::Send { to, len } = act else {
            panic!("muted after the re-INVITE: {act:?}")
        };
        assert_eq!(to, a_addr);
        assert!(rtp::parse(&buf[..len]).unwrap().header.marker);
    }

    #[test]
    fn prompts_then_music_then_operator_in_one_stream() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Ulaw, Some(101), (7, 65534, 1000));
        // Two announcement prompts (one in A-law: transcoded), then music.
        m.play(
            t0,
            vec![prompt(0x11, 2, Law::Ulaw), prompt(0xD5, 1, Law::Alaw)],
            Some(prompt(0x33, 2, Law::Ulaw)),
        );
        let mut buf = [0u8; 1500];
        let mut got = Vec::new();
        let mut now = t0;
        for _ in 0..7 {
            assert_eq!(m.poll_timeout(), Some(now), "one frame every 20 ms");
            let (to, len) = m.poll_packet(now, &mut buf).unwrap();
            assert_eq!(to, a_addr);
            assert!(m.poll_packet(now, &mut buf).is_none(), "paced");
            let p = rtp::parse(&buf[..len]).unwrap();
            got.push((p.header, p.payload[0]));
            now += Duration::from_millis(20);
        }
        let bytes: Vec<u8> = got.iter().map(|(_, b)| *b).collect();
        assert_eq!(
            bytes,
            [
                0x11,
                0x11,
                Law::Ulaw.encode(Law::Alaw.decode(0xD5)),
                0x33,
                0x33,
                0x33,
                0x33
            ],
            "prompts in order (A-law silence became µ-law silence), then music looped"
        );
        let seqs: Vec<u16> = got.iter().map(|(h, _)| h.seq).collect();
        assert_eq!(seqs, [65534, 65535, 0, 1, 2, 3, 4]);
        let ts: Vec<u32> = got.iter().map(|(h, _)| h.timestamp).collect();
        assert_eq!(ts, [1000, 1160, 1320, 1480, 1640, 1800, 1960]);
        let markers: Vec<bool> = got.iter().map(|(h, _)| h.marker).collect();
        assert_eq!(
            markers,
            [true, false, true, true, false, false, false],
            "marker where the source changes"
        );
        assert!(got.iter().all(|(h, _)| h.ssrc == 7 && h.payload_type == 0));
        // An announcement interrupts the music, and music resumes.
        m.play(
            now,
            vec![prompt(0x44, 1, Law::Ulaw)],
            Some(prompt(0x33, 2, Law::Ulaw)),
        );
        let (_, len) = m.poll_packet(now, &mut buf).unwrap();
        assert_eq!(rtp::parse(&buf[..len]).unwrap().payload[0], 0x44);
        now += Duration::from_millis(20);
        // The operator answers: playback stops, their audio continues the
        // same stream towards the caller.
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, Some(96)), Law::Ulaw);
        assert!(m.poll_timeout().is_none() && m.poll_packet(now, &mut buf).is_none());
        let Action::Send { len, .. } =
            m.receive(now, Side::B, b_addr, &pkt(4000, 0, &[0x55; 160]), &mut buf)
        else {
            panic!()
        };
        let h = rtp::parse(&buf[..len]).unwrap().header;
        assert_eq!((h.ssrc, h.seq, h.timestamp, h.marker), (7, 6, 2280, true));
        // The caller's key press reaches the operator as an event with the
        // operator's payload type.
        let act = m.receive(now, Side::A, a_addr, &pkt(1, 101, &[1, 10, 0, 0]), &mut buf);
        let Action::Dtmf {
            digit: '1',
            relay: Some((to, len)),
        } = act
        else {
            panic!("{act:?}")
        };
        assert_eq!(to, b_addr);
        let ev = rtp::parse(&buf[..len]).unwrap();
        assert_eq!((ev.header.payload_type, ev.header.ssrc), (96, 8));
        assert_eq!(ev.payload, [1, 10, 0, 0]);
    }

    #[test]
    fn the_operator_hears_the_whisper_before_the_bridge() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, Some(101), (7, 100, 1000));
        m.play(t0, Vec::new(), Some(prompt(0x33, 2, Law::Alaw)));
        // The operator (µ-law) answers: two whisper frames for them, the
        // music goes on for the caller, nobody is relayed yet.
        m.whisper(
            t0,
            Leg::new(Latch::SdpAddress, b_addr, Some(96)),
            Law::Ulaw,
            vec![prompt(0xD5, 2, Law::Alaw)],
        );
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, Some(96)), Law::Ulaw);
        assert!(m.whispering() && !m.bridged(), "the bridge waits");
        let mut buf = [0u8; 1500];
        let mut now = t0;
        let mut whisper = Vec::new();
        for _ in 0..2 {
            assert_eq!(m.poll_timeout(), Some(now));
            let (to, len) = m.poll_packet(now, &mut buf).unwrap();
            assert_eq!(to, a_addr, "the caller keeps the music");
            assert_eq!(rtp::parse(&buf[..len]).unwrap().payload[0], 0x33);
            let act = m.receive(now, Side::A, a_addr, &pkt(1, 8, &[0x11; 160]), &mut buf);
            assert_eq!(act, Action::None, "the caller is not heard yet");
            let act = m.receive(now, Side::B, b_addr, &pkt(1, 0, &[0x22; 160]), &mut buf);
            assert_eq!(act, Action::None, "nor the operator");
            let (to, len) = m.poll_whisper(now, &mut buf).unwrap();
            assert_eq!(to, b_addr);
            let p = rtp::parse(&buf[..len]).unwrap();
            whisper.push((
                p.header.ssrc,
                p.header.seq,
                p.header.payload_type,
                p.payload[0],
            ));
            now += Duration::from_millis(20);
        }
        let silence = Law::Ulaw.encode(Law::Alaw.decode(0xD5));
        assert_eq!(
            whisper,
            [(8, 500, 0, silence), (8, 501, 0, silence)],
            "the operator's stream, transcoded to their law"
        );
        // The whisper is over: bridged, the caller's speech reaches the
        // operator on the same stream.
        assert!(m.bridged() && !m.whispering());
        assert!(m.poll_packet(now, &mut buf).is_none() && m.poll_whisper(now, &mut buf).is_none());
        let Action::Send { to, len } =
            m.receive(now, Side::A, a_addr, &pkt(2, 8, &[0xD5; 160]), &mut buf)
        else {
            panic!()
        };
        assert_eq!(to, b_addr);
        let h = rtp::parse(&buf[..len]).unwrap().header;
        assert_eq!((h.ssrc, h.seq, h.marker), (8, 502, true));
    }

    #[test]
    fn unbridged_the_caller_hears_music_again_then_the_next_operator() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, None, (7, 100, 1000));
        let b = |addr| Leg::new(Latch::SdpAddress, addr, None);
        m.bridge(b(b_addr), Law::Alaw);
        let mut buf = [0u8; 1500];
        let Action::Send { len, .. } =
            m.receive(t0, Side::B, b_addr, &pkt(1, 8, &[0x55; 160]), &mut buf)
        else {
            panic!()
        };
        let first = rtp::parse(&buf[..len]).unwrap().header;
        // The operator's phone died: music again, on the same stream.
        m.unbridge();
        assert!(!m.bridged());
        m.play(t0, Vec::new(), Some(prompt(0x33, 2, Law::Alaw)));
        let (to, len) = m.poll_packet(t0, &mut buf).unwrap();
        let music = rtp::parse(&buf[..len]).unwrap();
        assert_eq!(to, a_addr);
        assert_eq!(music.payload[0], 0x33);
        assert_eq!(
            (music.header.ssrc, music.header.seq, music.header.marker),
            (first.ssrc, first.seq.wrapping_add(1), true)
        );
        // The dead phone's packets reach nobody now.
        let act = m.receive(t0, Side::B, b_addr, &pkt(2, 8, &[0x55; 160]), &mut buf);
        assert_eq!(act, Action::None);
        // The next operator, from another address.
        let next: SocketAddr = "192.0.2.22:30000".parse().unwrap();
        m.bridge(b(next), Law::Alaw);
        let Action::Send { to, .. } =
            m.receive(t0, Side::A, a_addr, &pkt(3, 8, &[0x11; 160]), &mut buf)
        else {
            panic!()
        };
        assert_eq!(to, next);
    }

    /// An operator moved onto a port another phone served (an attended
    /// transfer), both behind one address: the old phone's stream, still
    /// arriving, never takes the new leg's latch.
    #[test]
    fn the_previous_phones_stream_never_latches_the_next_operator() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, None, (7, 100, 1000));
        let b = |addr| Leg::new(Latch::SdpAddress, addr, None);
        m.bridge(b(b_addr), Law::Alaw);
        let mut buf = [0u8; 1500];
        assert!(matches!(
            m.receive(t0, Side::B, b_addr, &pkt(1, 8, &[0x55; 160]), &mut buf),
            Action::Send { .. }
        ));
        m.unbridge();
        // The colleague: same IP, another port.
        let next = SocketAddr::new(b_addr.ip(), b_addr.port() + 2);
        m.bridge(b(next), Law::Alaw);
        for seq in 2..40 {
            let act = m.receive(t0, Side::B, b_addr, &pkt(seq, 8, &[0x55; 160]), &mut buf);
            assert_eq!(act, Action::None, "the old phone's packet {seq}");
        }
        let Action::Send { to, .. } =
            m.receive(t0, Side::A, a_addr, &pkt(3, 8, &[0x11; 160]), &mut buf)
        else {
            panic!()
        };
        assert_eq!(to, next, "the caller's voice goes to the colleague");
        assert!(matches!(
            m.receive(t0, Side::B, next, &pkt(100, 8, &[0x66; 160]), &mut buf),
            Action::Send { .. }
        ));
    }

    #[test]
    fn a_caller_the_operator_holds_hears_the_music_until_resumed() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, None, (7, 100, 1000));
        m.play(
            t0,
            vec![prompt(0x11, 1, Law::Alaw)],
            Some(prompt(0x33, 2, Law::Alaw)),
        );
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Alaw);
        let mut buf = [0u8; 1500];
        assert_eq!(m.poll_timeout(), None, "bridged: no playback");
        // The operator holds: the caller hears the music (not the
        // prompt again), nothing of the operator's side is relayed.
        m.set_held(t0, Side::B, true);
        let (to, len) = m.poll_packet(t0, &mut buf).expect("music");
        assert_eq!(
            (to, rtp::parse(&buf[..len]).unwrap().payload[0]),
            (a_addr, 0x33)
        );
        let act = m.receive(t0, Side::B, b_addr, &pkt(1, 8, &[0x55; 160]), &mut buf);
        assert_eq!(act, Action::None);
        // Resumed: the music stops, the operator is heard again.
        m.set_held(t0, Side::B, false);
        assert_eq!(m.poll_packet(t0 + Duration::from_secs(1), &mut buf), None);
        let act = m.receive(t0, Side::B, b_addr, &pkt(2, 8, &[0x55; 160]), &mut buf);
        assert!(matches!(act, Action::Send { to, .. } if to == a_addr));
        // A caller who holds hears nothing from us.
        m.set_held(t0, Side::A, true);
        assert_eq!(m.poll_packet(t0 + Duration::from_secs(2), &mut buf), None);
    }

    #[test]
    fn a_hold_during_the_whisper_plays_music_from_the_bridge_and_a_refresh_keeps_it() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, None, (7, 100, 1000));
        m.play(t0, Vec::new(), Some(prompt(0x33, 2, Law::Alaw)));
        m.set_held(t0, Side::B, true);
        m.bridge_at(t0, Leg::new(Latch::SdpAddress, b_addr, None), Law::Alaw);
        let mut buf = [0u8; 1500];
        let (to, len) = m.poll_packet(t0, &mut buf).expect("music at the bridge");
        assert_eq!(
            (to, rtp::parse(&buf[..len]).unwrap().payload[0]),
            (a_addr, 0x33)
        );
        // The carrier refreshes its session (sendrecv): still on hold.
        m.set_held(t0, Side::A, false);
        assert!(m.poll_timeout().is_some(), "the music goes on");
        let act = m.receive(t0, Side::B, b_addr, &pkt(1, 8, &[0x55; 160]), &mut buf);
        assert_eq!(act, Action::None, "the operator's side is not heard");
    }

    #[test]
    fn a_whisper_with_no_bridge_asked_leaves_the_operator_waiting() {
        let t0 = Instant::now();
        let (mut m, _, b_addr) = call(Law::Alaw, None, (7, 100, 1000));
        let b = || Leg::new(Latch::SdpAddress, b_addr, None);
        m.whisper(t0, b(), Law::Alaw, vec![prompt(0x44, 1, Law::Alaw)]);
        let mut buf = [0u8; 1500];
        assert!(m.poll_whisper(t0, &mut buf).is_some());
        assert!(!m.whispering() && !m.bridged(), "over, and no bridge yet");
        // The callback's citizen answers later: bridged at once.
        m.bridge(b(), Law::Alaw);
        assert!(m.bridged());
        // An empty whisper is no whisper.
        let (mut m, _, _) = call(Law::Alaw, None, (7, 100, 1000));
        m.whisper(t0, b(), Law::Alaw, Vec::new());
        m.bridge(b(), Law::Alaw);
        assert!(m.bridged());
    }

    #[test]
    fn a_recorded_call_mixes_what_both_sides_said() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, None, (1, 0, 0));
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw);
        m.record(t0);
        assert!(m.recording());
        let mut buf = [0u8; 1500];
        for k in 0..50u16 {
            let now = t0 + Duration::from_millis(20 * u64::from(k));
            m.receive(
                now,
                Side::A,
                a_addr,
                &pkt(k, 8, &[Law::Alaw.encode(1000); 160]),
                &mut buf,
            );
            m.receive(
                now,
                Side::B,
                b_addr,
                &pkt(k, 0, &[Law::Ulaw.encode(-300); 160]),
                &mut buf,
            );
        }
        let mut out = Vec::new();
        let end = t0 + Duration::from_secs(1);
        m.take_recording(end, Duration::from_millis(500), &mut out);
        assert_eq!(out.len(), 4000, "half a second behind");
        m.finish_recording(end, &mut out);
        assert_eq!(out.len(), 8000);
        assert!(!m.recording());
        let want = i32::from(Law::Alaw.decode(Law::Alaw.encode(1000)))
            + i32::from(Law::Ulaw.decode(Law::Ulaw.encode(-300)));
        assert!(
            out.iter().all(|&s| i32::from(s) == want),
            "both legs in every sample"
        );
    }

    /// What the other side gets for one packet numbered `seq` from
    /// `from`: (seq, timestamp, marker) as relayed, `None` if dropped.
    fn relayed(
        m: &mut CallMedia,
        from: SocketAddr,
        side: Side,
        seq: u16,
    ) -> Option<(u16, u32, bool)> {
        let mut buf = [0u8; 1500];
        match m.receive(
            Instant::now(),
            side,
            from,
            &pkt(seq, 0, &[0xFF; 160]),
            &mut buf,
        ) {
            Action::Send { len, .. } => {
                let h = rtp::parse(&buf[..len]).unwrap().header;
                Some((h.seq, h.timestamp, h.marker))
            }
            _ => None,
        }
    }

    /// A key that came by SIP INFO from the caller goes to the operator
    /// as RFC 4733 events in the operator's stream: five packets of the
    /// tone 20 ms apart, then the end three times, one timestamp, the
    /// marker on the first, the operator's telephone-event type; the
    /// caller's voice is not relayed to the operator meanwhile and goes
    /// on after the key, past its duration. A side without
    /// telephone-event gets no key.
    #[test]
    fn a_key_is_sent_as_telephone_events_in_the_sides_stream() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Ulaw, None, (1, 0, 0));
        assert!(!m.send_key(t0, Side::B, '5'), "not connected yet");
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, Some(96)), Law::Ulaw);
        assert!(!m.send_key(t0, Side::A, '5'), "the caller has no events");
        assert!(!m.send_key(t0, Side::B, 'x'));
        let before = relayed(&mut m, a_addr, Side::A, 1).expect("voice relayed");
        assert!(m.send_key(t0, Side::B, '5'));
        assert!(m.send_key(t0, Side::B, '#'), "queued behind the first");
        let mut buf = [0u8; 1500];
        let mut got = Vec::new();
        let mut now = t0;
        while got.len() < 16 {
            assert!(m.poll_timeout().is_some_and(|t| t <= now + FRAME_TIME));
            while let Some((side, to, len)) = m.poll_key(now, &mut buf) {
                assert_eq!((side, to), (Side::B, b_addr));
                let p = rtp::parse(&buf[..len]).unwrap();
                let e = crate::dtmf::parse(p.payload).unwrap();
                got.push((p.header, e));
            }
            if now == t0 {
                // During the key the caller's voice is not relayed to
                // the operator, and the caller's re-INVITE (a session
                // refresh) does not split the key into two presses.
                assert_eq!(relayed(&mut m, a_addr, Side::A, 2), None);
                m.update(Side::A, a_addr, None, None, Law::Ulaw);
            }
            now += FRAME_TIME;
        }
        assert!(m.poll_key(now + FRAME_TIME * 10, &mut buf).is_none());
        let (five, pound) = got.split_at(8);
        for (k, (h, e)) in five.iter().enumerate() {
            assert_eq!(h.payload_type, 96);
            assert_eq!(h.marker, k == 0);
            assert_eq!(h.seq, five[0].0.seq.wrapping_add(k as u16));
            assert_eq!(h.timestamp, five[0].0.timestamp);
            assert_eq!((e.code, e.end), (5, k >= 5));
            assert_eq!(e.duration, 160 * (k.min(4) as u16 + 1));
        }
        assert_eq!(five[0].0.seq, before.0.wrapping_add(1), "one stream");
        assert!(five[0].0.timestamp > before.1);
        assert_eq!(pound[0].1.code, 11);
        assert!(pound[0].0.marker);
        // The next key after the time the first one's packets took.
        assert_eq!(pound[0].0.timestamp, five[0].0.timestamp + 1280);
        // The voice goes on after the keys, in the same stream.
        let after = relayed(&mut m, a_addr, Side::A, 3).expect("relayed again");
        assert_eq!(after.0, pound[7].0.seq.wrapping_add(1));
        assert!(after.1 >= pound[0].0.timestamp + 1280 && after.2);
        // A hold stops a key at once, and none is taken while held.
        assert!(m.send_key(now, Side::B, '1'));
        m.set_held(now, Side::B, true);
        assert!(m.poll_key(now, &mut buf).is_none());
        assert!(!m.send_key(now, Side::B, '1'));
    }

    #[test]
    fn nothing_is_sent_to_the_hold_marker() {
        let t0 = Instant::now();
        let hold: SocketAddr = "0.0.0.0:40000".parse().unwrap();
        let (b_addr, mut buf) = (B.parse().unwrap(), [0u8; 1500]);
        // A caller on hold from the start hears no music: none is sent.
        let mut m = CallMedia::new(
            t0,
            Leg::new(Latch::SdpAddress, hold, None),
            Law::Ulaw,
            [(1, 0, 0), (2, 0, 0)],
        );
        m.play(t0, Vec::new(), Some(prompt(0x33, 2, Law::Ulaw)));
        assert_eq!(m.poll_packet(t0, &mut buf), None);
        // Bridged, the operator resumes with c=0.0.0.0 while the caller
        // still talks: nothing goes to 0.0.0.0 (this host, to Linux).
        let (mut m, a_addr, _) = call(Law::Ulaw, None, (1, 0, 0));
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw);
        m.update(Side::B, hold, None, None, Law::Ulaw);
        assert_eq!(relayed(&mut m, a_addr, Side::A, 1), None);
        let mapped: SocketAddr = "[::ffff:0.0.0.0]:40000".parse().unwrap();
        m.update(Side::B, mapped, None, None, Law::Ulaw);
        assert_eq!(relayed(&mut m, a_addr, Side::A, 2), None);
        // A real address again: heard.
        m.update(Side::B, b_addr, None, None, Law::Ulaw);
        assert!(relayed(&mut m, a_addr, Side::A, 3).is_some());
    }

    #[test]
    fn silence_is_reported_per_side_once_bridged() {
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Ulaw, None, (1, 0, 0));
        let timeout = Duration::from_secs(30);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(m.idle_side(later, timeout), None, "early media: no check");
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw);
        let mut buf = [0u8; 1500];
        m.receive(later, Side::A, a_addr, &pkt(1, 0, &[0; 160]), &mut buf);
        assert_eq!(m.idle_side(later, timeout), Some(Side::B));
        m.receive(later, Side::B, b_addr, &pkt(1, 0, &[0; 160]), &mut buf);
        assert_eq!(m.idle_side(later, timeout), None);
        // Packets from a stranger do not keep a dead leg alive.
        let t = later + timeout;
        m.receive(
            t,
            Side::B,
            "203.0.113.1:9".parse().unwrap(),
            &pkt(2, 0, &[0; 160]),
            &mut buf,
        );
        assert_eq!(m.idle_side(t, timeout), Some(Side::A));
        m.set_held(t, Side::A, true);
        assert_eq!(m.idle_side(t, timeout), None, "on hold");
    }

    /// The decoded samples of what `side`'s packet carried to the other.
    fn heard_by_other(
        m: &mut CallMedia,
        t: Instant,
        side: Side,
        from: SocketAddr,
        law: Law,
        v: i16,
    ) -> Vec<i32> {
        let mut buf = [0u8; 1500];
        let seq = 100 + m.stats(side).packets as u16;
        let act = m.receive(
            t,
            side,
            from,
            &pkt(seq, law.payload_type(), &[law.encode(v); 160]),
            &mut buf,
        );
        let Action::Send { len, .. } = act else {
            panic!("{act:?}");
        };
        let p = rtp::parse(&buf[..len]).unwrap();
        let out = if side == Side::A {
            Law::Ulaw
        } else {
            Law::Alaw
        };
        p.payload
            .iter()
            .map(|&b| i32::from(out.decode(b)))
            .collect()
    }

    #[test]
    fn a_supervisor_listens_then_whispers_to_the_operator_then_barges_in() {
        use crate::monitor::MonitorMode;
        let t0 = Instant::now();
        let (mut m, a_addr, b_addr) = call(Law::Alaw, None, (1, 0, 0));
        let s_addr: SocketAddr = "192.0.2.30:50000".parse().unwrap();
        let s_leg = || Leg::new(Latch::SdpAddress, s_addr, None);
        assert!(
            !m.monitor(t0, MonitorMode::Listen, s_leg(), Law::Ulaw, (7, 0, 0)),
            "nothing to join before the bridge"
        );
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw);
        assert!(m.monitor(t0, MonitorMode::Listen, s_leg(), Law::Ulaw, (7, 0, 0)));
        assert_eq!(m.monitoring(), Some(MonitorMode::Listen));
        let close =
            |got: &[i32], want: i32| got.iter().all(|&s| (s - want).abs() <= want.abs() / 8 + 16);

        // Listening: the supervisor hears both sides mixed, paced.
        let caller = heard_by_other(&mut m, t0, Side::A, a_addr, Law::Alaw, 1000);
        assert!(
            close(&caller, 1000),
            "the operator hears the caller as ever"
        );
        heard_by_other(&mut m, t0, Side::B, b_addr, Law::Ulaw, 2000);
        assert_eq!(
            m.poll_timeout(),
            Some(t0),
            "the supervisor's first frame is due"
        );
        let mut buf = [0u8; 1500];
        let (to, len) = m.poll_monitor(t0, &mut buf).expect("a frame");
        assert_eq!(to, s_addr);
        let p = rtp::parse(&buf[..len]).unwrap();
        assert_eq!(
            (p.header.ssrc, p.header.payload_type, p.header.marker),
            (7, 0, true)
        );
        let mix: Vec<i32> = p
            .payload
            .iter()
            .map(|&b| i32::from(Law::Ulaw.decode(b)))
            .collect();
        assert!(
            close(&mix, 3000),
            "both sides in the supervisor's frame: {:?}",
            &mix[..4]
        );
        assert_eq!(m.poll_monitor(t0, &mut buf), None, "one frame per 20 ms");
        let t1 = t0 + Duration::from_millis(20);
        let p = m
            .poll_monitor(t1, &mut buf)
            .map(|(_, len)| rtp::parse(&buf[..len]).unwrap().header);
        assert_eq!(
            p.map(|h| (h.seq, h.timestamp, h.marker)),
            Some((1, 160, false))
        );

        // Listening, the supervisor's voice reaches nobody.
        let voice = |m: &mut CallMedia, seq: u16| {
            assert!(m.receive_monitor(t1, s_addr, &pkt(seq, 0, &[Law::Ulaw.encode(4000); 160])));
        };
        voice(&mut m, 1);
        assert!(close(
            &heard_by_other(&mut m, t1, Side::A, a_addr, Law::Alaw, 0),
            0
        ));
        assert!(close(
            &heard_by_other(&mut m, t1, Side::B, b_addr, Law::Ulaw, 0),
            0
        ));
        // A stranger on the supervisor's port is not the supervisor.
        assert!(!m.receive_monitor(
            t1,
            "192.0.2.99:50000".parse().unwrap(),
            &pkt(2, 0, &[0; 160])
        ));

        // Whispering: the operator hears the caller and the supervisor;
        // the caller hears the operator only.
        m.set_monitor(Some(MonitorMode::Whisper));
        voice(&mut m, 3);
        voice(&mut m, 4);
        assert!(close(
            &heard_by_other(&mut m, t1, Side::A, a_addr, Law::Alaw, 500),
            4500
        ));
        assert!(close(
            &heard_by_other(&mut m, t1, Side::B, b_addr, Law::Ulaw, 500),
            500
        ));

        // Barging: both hear the supervisor.
        m.set_monitor(Some(MonitorMode::Barge));
        voice(&mut m, 5);
        assert!(close(
            &heard_by_other(&mut m, t1, Side::A, a_addr, Law::Alaw, 0),
            4000
        ));
        assert!(close(
            &heard_by_other(&mut m, t1, Side::B, b_addr, Law::Ulaw, 0),
            4000
        ));
        // Spoken once, heard once: nothing left for the caller's next
        // packet.
        assert!(close(
            &heard_by_other(&mut m, t1, Side::B, b_addr, Law::Ulaw, 0),
            0
        ));

        // The operator holds the caller: nothing is relayed, yet the
        // operator hears the supervisor whisper, in frames of its own
        // (the caller hears the music, not the supervisor).
        m.set_monitor(Some(MonitorMode::Whisper));
        m.set_held(t1, Side::B, true);
        let t2 = t1 + Duration::from_millis(200);
        voice(&mut m, 6);
        assert!(m.poll_monitor(t2, &mut buf).is_some());
        let (side, to, len) = m
            .poll_monitor_voice(t2, &mut buf)
            .expect("a frame for the operator");
        assert_eq!((side, to), (Side::B, b_addr));
        let p = rtp::parse(&buf[..len]).unwrap();
        assert_eq!(p.header.payload_type, 0, "in the operator's law");
        let got: Vec<i32> = p
            .payload
            .iter()
            .map(|&b| i32::from(Law::Ulaw.decode(b)))
            .collect();
        assert!(close(&got, 4000), "{:?}", &got[..4]);
        assert_eq!(m.poll_monitor_voice(t2, &mut buf), None, "one per 20 ms");
        m.set_held(t1, Side::B, false);

        // Leaving, or the operator's leg going, ends the supervisor's leg.
        m.set_monitor(None);
        assert_eq!(m.monitoring(), None);
        assert!(m.monitor(t1, MonitorMode::Listen, s_leg(), Law::Ulaw, (7, 0, 0)));
        m.unbridge();
        assert_eq!(m.monitoring(), None);
        assert_eq!(m.poll_monitor(t1 + Duration::from_secs(1), &mut buf), None);
    }

    #[test]
    fn a_supervisors_key_press_is_reported_once() {
        use crate::monitor::MonitorMode;
        let t0 = Instant::now();
        let (mut m, _, b_addr) = call(Law::Alaw, None, (1, 0, 0));
        m.bridge(Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw);
        let s_addr: SocketAddr = "192.0.2.30:50000".parse().unwrap();
        let leg = Leg::new(Latch::SdpAddress, s_addr, Some(101));
        assert!(m.monitor(t0, MonitorMode::Listen, leg, Law::Ulaw, (7, 0, 0)));
        assert_eq!(m.take_monitor_digit(), None);
        // Key 3 (RFC 4733 event 3), sent three times as phones do.
        for seq in 1..=3 {
            assert!(m.receive_monitor(t0, s_addr, &pkt(seq, 101, &[3, 10, 0, 160])));
        }
        assert_eq!(m.take_monitor_digit(), Some('3'));
        assert_eq!(m.take_monitor_digit(), None, "once");
    }
}
