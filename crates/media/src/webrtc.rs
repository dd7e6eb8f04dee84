//! A browser operator's leg: WebRTC (ICE-lite, DTLS-SRTP) on the call's
//! operator port, sans-IO, through str0m. The leg turns the browser's
//! encrypted audio into plain RTP packets for [`crate::relay::CallMedia`]
//! and plain RTP from it into SRTP for the browser, so the relay, the
//! whisper, the recording and the liveness checks are the same for a SIP
//! phone and a browser.
//!
//! G.711 only (PCMU first, then PCMA): the trunk side is G.711, so the
//! browser's leg needs no transcoding and no jitter buffer; Opus would
//! need both.
//!
//! The node is ICE-lite (RFC 8445 §2.5): it has one host candidate, the
//! operator port, and answers the browser's checks; the browser, always
//! the controlling agent, picks the pair. Its address is learned from its
//! STUN checks (authenticated with the ICE credentials exchanged over the
//! desk's session), so nothing on the port is accepted before the browser
//! proved it holds the credentials of this call's SDP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
pub use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::g711::Law;
use crate::rtp::{self, Header};

/// Longest browser SDP offer accepted (Chromium's audio-only offer is
/// about 3 KB with every codec listed).
pub const MAX_OFFER: usize = 16 * 1024;
/// Most outputs taken from one poll (a bound against a peer that makes
/// str0m produce without end; in practice a handful).
const MAX_OUTPUTS: usize = 256;

/// Why a browser's offer is refused.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    /// Longer than [`MAX_OFFER`].
    #[error("the offer is longer than {MAX_OFFER} bytes")]
    TooLong,
    /// Not an SDP str0m can read.
    #[error("the offer is not a valid SDP: {0}")]
    Sdp(String),
    /// No audio in G.711 that we can answer.
    #[error("the offer has no audio in PCMU or PCMA")]
    NoAudio,
    /// str0m refused it (e.g. no DTLS fingerprint).
    #[error("the offer cannot be answered: {0}")]
    Refused(String),
    /// No DTLS certificate could be made.
    #[error("no DTLS certificate")]
    Certificate,
}

/// A DTLS certificate for the node's WebRTC legs: made once (a key pair
/// per call would cost a signature key generation per call), shared by
/// every leg; the browser pins its fingerprint from our answer.
pub fn certificate() -> Result<DtlsCert, WebRtcError> {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or(WebRtcError::Certificate)
}

/// What the leg produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// Send these bytes to the browser from the leg's port.
    Transmit {
        /// Destination (the browser's address, as ICE chose it).
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A plain RTP packet of the browser's audio, `len` bytes at the start
    /// of the caller's buffer, for the relay (payload type as the leg's
    /// law, our own SSRC and sequence).
    Audio {
        /// Bytes written.
        len: usize,
    },
    /// ICE and DTLS are up: audio can flow.
    Connected,
    /// The browser is gone (ICE disconnected or the DTLS session closed).
    Disconnected,
}

/// A browser's media leg.
pub struct BrowserLeg {
    rtc: Rtc,
    mid: Option<Mid>,
    /// Our payload type for the negotiated law, in the browser's numbering.
    pt: Option<Pt>,
    law: Law,
    /// The plain RTP stream handed to the relay.
    ssrc: u32,
    seq: u16,
    /// Where str0m wants to be woken.
    timeout: Instant,
    connected: bool,
    /// DTLS came up once: ICE that comes back after a disconnection (a
    /// network blip) connects the leg again, keys and all.
    secured: bool,
    /// Wallclock of our first packet to the browser and its timestamp:
    /// str0m wants a wallclock per frame (for RTCP sender reports).
    origin: Option<(Instant, u32)>,
    /// Packets counted per direction (to the browser, from it).
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for BrowserLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLeg")
            .field("law", &self.law)
            .field("connected", &self.connected)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl BrowserLeg {
    /// Answers a browser's `offer` for a leg on `local` (the operator
    /// port as bound, our host candidate; `advertised`, the address the
    /// node names in SDP behind NAT, is a second one for the same socket),
    /// in one of `laws` (the call's). Returns the leg and the SDP answer.
    pub fn accept(
        now: Instant,
        local: SocketAddr,
        advertised: Option<SocketAddr>,
        offer: &str,
        cert: &DtlsCert,
        ssrc: u32,
        laws: &[Law],
    ) -> Result<(Self, String), WebRtcError> {
        if offer.len() > MAX_OFFER {
            return Err(WebRtcError::TooLong);
        }
        let offer_text = offer;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| WebRtcError::Sdp(e.to_string()))?;
        if !laws.contains(&Law::Ulaw) && !laws.contains(&Law::Alaw) {
            return Err(WebRtcError::NoAudio);
        }
        let mut rtc = RtcConfig::new()
            .set_ice_lite(true)
            .set_dtls_cert(cert.clone())
            .clear_codecs()
            .enable_pcmu(laws.contains(&Law::Ulaw), false)
            .enable_pcma(laws.contains(&Law::Alaw), false)
            // Audio only, packet by packet: no reordering wait (the relay
            // forwards in arrival order, as for a phone).
            .set_reordering_size_audio(0)
            .build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| WebRtcError::Refused(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        if let Some(public) = advertised.filter(|a| *a != local) {
            // The same socket seen from outside: str0m maps it back to
            // the host candidate (its base).
            let c = Candidate::server_reflexive(public, local, "udp")
                .map_err(|e| WebRtcError::Refused(e.to_string()))?;
            rtc.add_local_candidate(c);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| WebRtcError::Refused(e.to_string()))?;
        let mut leg = Self {
            rtc,
            mid: None,
            pt: None,
            law: Law::Ulaw,
            ssrc,
            seq: (ssrc >> 16) as u16,
            timeout: now,
            connected: false,
            secured: false,
            origin: None,
            sent: 0,
            received: 0,
        };
        // The offer's audio and its codec: the first of ours the browser
        // offered, in our order (PCMU, then PCMA). (str0m tells of media
        // only once connected; the answer is needed before.)
        while let Ok(out) = leg.rtc.poll_output() {
            if let Output::Timeout(t) = out {
                leg.timeout = t;
                break;
            }
        }
        let mid = first_audio_mid(offer_text)
            .map(Mid::from)
            .filter(|m| leg.rtc.media(*m).is_some())
            .ok_or(WebRtcError::NoAudio)?;
        let params = leg
            .rtc
            .media(mid)
            .filter(|m| m.direction() != Direction::Inactive)
            .map(|m| m.remote_pts().to_vec())
            .unwrap_or_default();
        let writer = leg.rtc.writer(mid).ok_or(WebRtcError::NoAudio)?;
        let chosen = writer
            .payload_params()
            .filter(|p| params.is_empty() || params.contains(&p.pt()))
            .find_map(|p| match p.spec().codec {
                Codec::PCMU => Some((p.pt(), Law::Ulaw)),
                Codec::PCMA => Some((p.pt(), Law::Alaw)),
                _ => None,
            });
        let (pt, law) = chosen.ok_or(WebRtcError::NoAudio)?;
        leg.mid = Some(mid);
        leg.pt = Some(pt);
        leg.law = law;
        Ok((leg, answer.to_sdp_string()))
    }

    /// The law the browser's audio is in.
    pub fn law(&self) -> Law {
        self.law
    }

    /// Whether ICE and DTLS are up.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Packets sent to the browser and received from it.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent, self.received)
    }

    /// When [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Instant {
        self.timeout
    }

    /// Whether a datagram from `from` to `local` belongs to this leg
    /// (STUN with our credentials, DTLS, SRTP of this session); the rest
    /// is dropped unread by the caller and counted.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(contents) = data.try_into() else {
            return false;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: local,
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            return false;
        }
        // An error here is the peer's (a bad DTLS record): str0m has
        // dropped it; the session goes on or ends by its own timers.
        let _ = self.rtc.handle_input(input);
        true
    }

    /// Time passes for str0m's timers (ICE consent, DTLS, RTCP).
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = self.rtc.handle_input(Input::Timeout(now));
    }

    /// A plain RTP packet from the relay (a caller's audio, the whisper,
    /// music) for the browser. Dropped before the browser is connected,
    /// or if it is not audio in the leg's law.
    pub fn send_rtp(&mut self, now: Instant, packet: &[u8]) {
        let (Some(mid), Some(pt), true) = (self.mid, self.pt, self.connected) else {
            return;
        };
        let Ok(p) = rtp::parse(packet) else {
            return;
        };
        if p.header.payload_type != self.law.payload_type() {
            return;
        }
        let (start, ts0) = *self.origin.get_or_insert((now, p.header.timestamp));
        // Wallclock from the stream's own timestamps (8 kHz), so the
        // sender reports match the audio however the packets were paced.
        let elapsed = p.header.timestamp.wrapping_sub(ts0);
        let wallclock = start + Duration::from_micros(u64::from(elapsed) * 125);
        let time = MediaTime::new(u64::from(p.header.timestamp), Frequency::EIGHT_KHZ);
        if let Some(w) = self.rtc.writer(mid)
            && w.write(pt, wallclock, time, p.payload.to_vec()).is_ok()
        {
            self.sent += 1;
        }
    }

    /// Drains str0m: datagrams to send, the browser's audio as plain RTP
    /// (written into `buf`), connection changes; each handed to `each`.
    pub fn poll(&mut self, buf: &mut [u8], mut each: impl FnMut(Polled, &[u8])) {
        for _ in 0..MAX_OUTPUTS {
            // An error: a session str0m gave up on; nothing more comes out.
            let Ok(out) = self.rtc.poll_output() else {
                if self.connected {
                    self.connected = false;
                    each(Polled::Disconnected, buf);
                }
                self.timeout += Duration::from_secs(3600);
                return;
            };
            match out {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
                Output::Transmit(t) => each(
                    Polled::Transmit {
                        to: t.destination,
                        bytes: t.contents.to_vec(),
                    },
                    buf,
                ),
                Output::Event(Event::Connected) => {
                    (self.connected, self.secured) = (true, true);
                    each(Polled::Connected, buf);
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Connected | IceConnectionState::Completed,
                )) if self.secured && !self.connected => {
                    self.connected = true;
                    each(Polled::Connected, buf);
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    if self.connected {
                        self.connected = false;
                        each(Polled::Disconnected, buf);
                    }
                }
                Output::Event(Event::MediaData(d)) => {
                    if Some(d.pt) != self.pt {
                        continue;
                    }
                    self.seq = self.seq.wrapping_add(1);
                    let h = Header {
                        marker: false,
                        payload_type: self.law.payload_type(),
                        seq: self.seq,
                        timestamp: d.time.numer() as u32,
                        ssrc: self.ssrc,
                    };
                    if let Some(len) = rtp::write(&h, &d.data, buf) {
                        self.received += 1;
                        each(Polled::Audio { len }, buf);
                    }
                }
                Output::Event(_) => {}
            }
        }
    }
}

/// The `a=mid` of the offer's first audio section.
fn first_audio_mid(sdp: &str) -> Option<&str> {
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_audio {
                return None;
            }
            in_audio = m.starts_with("audio ");
        } else if in_audio && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(mid.trim()).filter(|m| !m.is_empty() && m.len() <= 16);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;
    use str0m::change::SdpAnswer;
    use str0m::media::MediaKind;

    const BROWSER: &str = "127.0.0.1:40000";
    const NODE: &str = "127.0.0.1:20000";

    /// A browser (a full, controlling str0m agent) and our leg, with the
    /// datagrams carried in memory.
    struct Pair {
        browser: Rtc,
        leg: BrowserLeg,
        now: Instant,
        /// The browser's audio mid.
        mid: Mid,
        /// Audio the browser received (payloads).
        heard: Vec<Vec<u8>>,
        /// Plain RTP the leg handed to the relay.
        relayed: Vec<Vec<u8>>,
        connected: bool,
        /// The network between them is down: datagrams are lost.
        cut: bool,
    }

    fn pair(codecs: fn(RtcConfig) -> RtcConfig) -> Result<Pair, WebRtcError> {
        let now = Instant::now();
        let mut browser = codecs(RtcConfig::new().clear_codecs()).build(now);
        browser.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
        let mut change = browser.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let cert = certificate().unwrap();
        let (leg, answer) = BrowserLeg::accept(
            now,
            NODE.parse().unwrap(),
            None,
            &offer.to_sdp_string(),
            &cert,
            7,
            &[Law::Ulaw, Law::Alaw],
        )?;
        browser
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        Ok(Pair {
            browser,
            leg,
            now,
            mid,
            heard: Vec::new(),
            relayed: Vec::new(),
            connected: false,
            cut: false,
        })
    }

    impl Pair {
        /// Runs both for `ms` of simulated time, 5 ms a step.
        fn run(&mut self, ms: u64) {
            for _ in 0..ms / 5 {
                self.now += Duration::from_millis(5);
                let _ = self.browser.handle_input(Input::Timeout(self.now));
                self.leg.handle_timeout(self.now);
                self.exchange();
            }
        }

        fn exchange(&mut self) {
            for _ in 0..50 {
                let mut to_leg = Vec::new();
                while let Ok(out) = self.browser.poll_output() {
                    match out {
                        Output::Timeout(_) => break,
                        Output::Transmit(t) => to_leg.push(t.contents.to_vec()),
                        Output::Event(Event::MediaData(d)) => self.heard.push(d.data.to_vec()),
                        Output::Event(_) => {}
                    }
                }
                let mut to_browser = Vec::new();
                let mut buf = [0u8; 1500];
                let (relayed, connected) = (&mut self.relayed, &mut self.connected);
                self.leg.poll(&mut buf, |p, b| match p {
                    Polled::Transmit { bytes, .. } => to_browser.push(bytes),
                    Polled::Audio { len } => relayed.push(b[..len].to_vec()),
                    Polled::Connected => *connected = true,
                    Polled::Disconnected => *connected = false,
                });
                if to_leg.is_empty() && to_browser.is_empty() || self.cut {
                    return;
                }
                for d in to_leg {
                    let (from, local) = (BROWSER.parse().unwrap(), NODE.parse().unwrap());
                    assert!(self.leg.receive(self.now, from, local, &d));
                }
                for d in to_browser {
                    let input = Input::Receive(
                        self.now,
                        Receive {
                            proto: Protocol::Udp,
                            source: NODE.parse().unwrap(),
                            destination: BROWSER.parse().unwrap(),
                            contents: d.as_slice().try_into().unwrap(),
                        },
                    );
                    let _ = self.browser.handle_input(input);
                }
            }
        }
    }

    #[test]
    fn a_browser_connects_and_audio_flows_both_ways() {
        let mut p = pair(|c| c.enable_opus(true, false).enable_pcmu(true, false)).unwrap();
        assert_eq!(p.leg.law(), Law::Ulaw);
        p.run(2000);
        assert!(p.connected, "ICE and DTLS up");
        assert!(p.leg.connected());

        // The browser speaks: the relay gets plain PCMU RTP of our stream.
        let pt = p
            .browser
            .writer(p.mid)
            .unwrap()
            .payload_params()
            .find(|x| x.spec().codec == Codec::PCMU)
            .unwrap()
            .pt();
        for i in 0..5u64 {
            let w = p.browser.writer(p.mid).unwrap();
            let t = MediaTime::new(i * 160, Frequency::EIGHT_KHZ);
            w.write(pt, p.now, t, vec![0x55u8; 160]).unwrap();
            p.run(20);
        }
        assert_eq!(p.relayed.len(), 5, "every frame relayed");
        let first = rtp::parse(&p.relayed[0]).unwrap();
        assert_eq!((first.header.payload_type, first.header.ssrc), (0, 7));
        assert_eq!(first.payload, &[0x55u8; 160][..]);

        // The caller speaks: the browser hears it decrypted.
        for i in 0..5u16 {
            let mut buf = [0u8; 200];
            let h = Header {
                marker: i == 0,
                payload_type: 0,
                seq: i,
                timestamp: u32::from(i) * 160,
                ssrc: 99,
            };
            let n = rtp::write(&h, &[0x2Au8; 160], &mut buf).unwrap();
            p.leg.send_rtp(p.now, &buf[..n]);
            p.run(20);
        }
        assert!(p.heard.len() >= 4, "heard {}", p.heard.len());
        assert!(p.heard.iter().all(|d| d == &[0x2Au8; 160]));
        assert_eq!(p.leg.counts().0, 5);
    }

    /// A network blip long enough for ICE to call the browser gone, then
    /// back: the leg is connected again and carries audio (the media plane
    /// requeues a held caller on a leg that stays disconnected).
    #[test]
    fn a_leg_disconnected_by_a_blip_connects_again_when_ice_comes_back() {
        let mut p = pair(|c| c.enable_pcmu(true, false)).unwrap();
        p.run(2000);
        assert!(p.connected);
        p.cut = true;
        let mut waited = 0;
        while p.connected && waited < 60_000 {
            p.run(500);
            waited += 500;
        }
        assert!(
            !p.connected,
            "disconnected after {waited} ms without traffic"
        );
        p.cut = false;
        p.run(10_000);
        assert!(p.connected && p.leg.connected(), "connected again");
        let before = p.heard.len();
        for i in 0..5u16 {
            let mut buf = [0u8; 200];
            let h = Header {
                marker: false,
                payload_type: 0,
                seq: 100 + i,
                timestamp: u32::from(100 + i) * 160,
                ssrc: 99,
            };
            let n = rtp::write(&h, &[0x2Au8; 160], &mut buf).unwrap();
            p.leg.send_rtp(p.now, &buf[..n]);
            p.run(20);
        }
        assert!(p.heard.len() > before, "audio flows again");
    }

    #[test]
    fn a_law_only_browser_gets_pcma_and_opus_only_is_refused() {
        let p = pair(|c| c.enable_pcma(true, false)).unwrap();
        assert_eq!(p.leg.law(), Law::Alaw);
        assert!(matches!(
            pair(|c| c.enable_opus(true, false)),
            Err(WebRtcError::NoAudio | WebRtcError::Refused(_))
        ));
    }

    #[test]
    fn strangers_and_garbage_are_not_accepted() {
        let mut p = pair(|c| c.enable_pcmu(true, false)).unwrap();
        let from: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let local = NODE.parse().unwrap();
        // Plain RTP (not SRTP of this session), junk, empty, oversize.
        let mut buf = [0u8; 200];
        let h = Header {
            marker: false,
            payload_type: 0,
            seq: 1,
            timestamp: 0,
            ssrc: 1,
        };
        let n = rtp::write(&h, &[0u8; 160], &mut buf).unwrap();
        for d in [&buf[..n], &[0xFFu8; 40][..], &[][..], &[0u8; 3000][..]] {
            assert!(!p.leg.receive(p.now, from, local, d));
        }
        p.run(100);
        assert!(p.relayed.is_empty(), "nothing of theirs reaches the relay");
        // A bad offer is an error, not a panic.
        let cert = certificate().unwrap();
        for bad in ["", "v=0\r\n", &"a".repeat(MAX_OFFER + 1)] {
            let laws = [Law::Ulaw];
            assert!(BrowserLeg::accept(p.now, local, None, bad, &cert, 1, &laws).is_err());
        }
    }
}
