//! The receiving side of one anchored leg: which source address is
//! allowed to feed it (symmetric RTP with latching), and what happened to
//! every packet (counted, never a panic, never a hijack).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::dtmf::Detector;
use crate::rtp::{self, Packet};

/// How a leg learns its peer's real address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latch {
    /// Symmetric RTP: packets from the SDP's IP address or from the IP the
    /// leg's signalling comes from (the registered phone's flow, the
    /// carrier's SBC), any port, are accepted; the first one fixes the
    /// address. Phones behind NAT or on a multi-homed host put an address
    /// in their SDP that is not the one their RTP comes from; the
    /// signalling's source is, and only the peer that authenticated (or
    /// the trunk) signals from there.
    Symmetric,
    /// Only packets from the SDP's IP address (any port, for NAT) are
    /// accepted; the first one fixes the port.
    SdpAddress,
    /// The first valid packet from anywhere fixes the address (peers
    /// behind NAT that put a private address in their SDP); later
    /// packets from elsewhere are dropped.
    FirstPacket,
}

/// Packets in a row from another allowed address that move the latch.
const RELATCH_AFTER: u8 = 3;
/// How long the latched address must have been silent before another
/// allowed one can take its place.
const RELATCH_SILENCE: Duration = Duration::from_secs(1);

/// Per-direction counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets accepted.
    pub packets: u64,
    /// Payload bytes accepted.
    pub bytes: u64,
    /// Sequence numbers not (yet) seen: gaps, less the late arrivals that
    /// filled them.
    pub lost: u64,
    /// Packets older than the highest sequence seen (late or duplicated).
    pub late: u64,
    /// Datagrams that are not valid RTP.
    pub bad: u64,
    /// Packets from an address other than the latched or allowed one.
    pub foreign: u64,
}

/// What to do with a received datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Relay this packet to the other leg.
    Media(Packet<'a>),
    /// A telephone-event packet (relayed as an event, never as audio), with
    /// the digit when this packet starts a key press.
    Dtmf(Packet<'a>, Option<char>),
    /// Dropped and counted.
    Dropped,
}

/// One leg's receive state.
#[derive(Debug)]
pub struct Leg {
    latch: Latch,
    /// The SDP's address for the leg.
    expected: SocketAddr,
    latched: Option<SocketAddr>,
    /// The IP the leg's signalling comes from ([`Latch::Symmetric`]).
    signalling: Option<IpAddr>,
    /// When the latched address was last heard.
    heard: Option<Instant>,
    /// Another allowed address sending while the latched one is silent:
    /// after [`RELATCH_AFTER`] packets in a row from it, with the latched
    /// address silent for [`RELATCH_SILENCE`], the latch moves there (a
    /// NAT that rebound the phone's port, a phone that reopened its
    /// socket). Never while the peer still sends: a colleague behind the
    /// same NAT cannot take over a live stream.
    candidate: Option<(SocketAddr, u8)>,
    /// The stream of the phone this port served before (an operator
    /// moved on by a transfer or a lost phone): still arriving, it may
    /// never latch the next one's leg, even from the same address as them
    /// (one office behind one NAT).
    refused: Option<SocketAddr>,
    telephone_event: Option<u8>,
    highest: Option<u16>,
    detector: Detector,
    stats: Stats,
}

impl Leg {
    /// A leg expecting RTP from `expected` (its SDP), with the negotiated
    /// telephone-event payload type.
    pub fn new(latch: Latch, expected: SocketAddr, telephone_event: Option<u8>) -> Self {
        Self {
            latch,
            expected,
            latched: None,
            signalling: None,
            heard: None,
            candidate: None,
            refused: None,
            telephone_event,
            highest: None,
            detector: Detector::new(),
            stats: Stats::default(),
        }
    }

    /// The IP the leg's signalling comes from: with
    /// [`Latch::Symmetric`], RTP from it is the peer's too.
    #[must_use]
    pub fn signalled_from(mut self, ip: Option<IpAddr>) -> Self {
        self.signalling = ip;
        self
    }

    /// Refuses RTP from `from` (the previous phone's stream on this
    /// port), unless it is this leg's own SDP address.
    #[must_use]
    pub fn refusing(mut self, from: Option<SocketAddr>) -> Self {
        self.refused = from.filter(|f| *f != self.expected);
        self
    }

    /// The address the leg latched, if any.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// Whether RTP from `from` may be this leg's peer (before or instead
    /// of the latched address).
    fn allowed(&self, from: SocketAddr) -> bool {
        match self.latch {
            Latch::Symmetric => {
                from.ip() == self.expected.ip() || Some(from.ip()) == self.signalling
            }
            Latch::SdpAddress => from.ip() == self.expected.ip(),
            Latch::FirstPacket => true,
        }
    }

    /// The negotiated telephone-event payload type.
    pub fn telephone_event(&self) -> Option<u8> {
        self.telephone_event
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Where to send RTP for this leg: the latched address once known,
    /// else the SDP's.
    pub fn destination(&self) -> SocketAddr {
        self.latched.unwrap_or(self.expected)
    }

    /// The peer sent a new SDP (re-INVITE): new expected address, and the
    /// latch starts over.
    pub fn update(
        &mut self,
        expected: SocketAddr,
        signalling: Option<IpAddr>,
        telephone_event: Option<u8>,
    ) {
        self.expected = expected;
        if signalling.is_some() {
            self.signalling = signalling;
        }
        self.telephone_event = telephone_event;
        self.latched = None;
        self.heard = None;
        self.candidate = None;
        self.highest = None;
    }

    /// One datagram from `from`, received at `now`.
    pub fn receive<'a>(&mut self, now: Instant, from: SocketAddr, data: &'a [u8]) -> Received<'a> {
        let Ok(p) = rtp::parse(data) else {
            self.stats.bad += 1;
            return Received::Dropped;
        };
        if Some(from) == self.refused {
            self.stats.foreign += 1;
            return Received::Dropped;
        }
        match self.latched {
            Some(a) if a != from => {
                // Never from anywhere with `FirstPacket`: its first packet
                // could have come from anybody, so nobody else may move it.
                let silent = self
                    .heard
                    .is_none_or(|t| now.saturating_duration_since(t) >= RELATCH_SILENCE);
                let moves = self.latch != Latch::FirstPacket && silent && self.allowed(from) && {
                    let n = match self.candidate {
                        Some((c, n)) if c == from => n + 1,
                        _ => 1,
                    };
                    self.candidate = Some((from, n));
                    n >= RELATCH_AFTER
                };
                if !moves {
                    self.stats.foreign += 1;
                    return Received::Dropped;
                }
                self.latched = Some(from);
                self.candidate = None;
            }
            Some(_) => {
                self.candidate = None;
            }
            None => {
                if !self.allowed(from) {
                    self.stats.foreign += 1;
                    return Received::Dropped;
                }
                self.latched = Some(from);
            }
        }
        match self.highest {
            None => self.highest = Some(p.header.seq),
            Some(h) => {
                let d = p.header.seq.wrapping_sub(h);
                if d == 0 {
                    self.stats.late += 1;
                } else if d > u16::MAX / 2 {
                    // Reordered: it was counted lost when the gap opened.
                    self.stats.late += 1;
                    self.stats.lost = self.stats.lost.saturating_sub(1);
                } else {
                    self.stats.lost += u64::from(d - 1);
                    self.highest = Some(p.header.seq);
                }
            }
        }
        self.heard = Some(now);
        self.stats.packets += 1;
        self.stats.bytes += p.payload.len() as u64;
        if Some(p.header.payload_type) == self.telephone_event {
            let digit = self.detector.push(p.header.timestamp, p.payload);
            return Received::Dtmf(p, digit);
        }
        Received::Media(p)
    }
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;
    use crate::rtp::{Header, write};

    fn pkt(seq: u16, pt: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 12 + payload.len()];
        write(
            &Header {
                marker: false,
                payload_type: pt,
                seq,
                timestamp: u32::from(seq) * 160,
                ssrc: 1,
            },
            payload,
            &mut b,
        );
        b
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn latches_on_the_sdp_address_and_refuses_a_third_party() {
        let t0 = Instant::now();
        let mut leg = Leg::new(Latch::SdpAddress, addr("192.0.2.5:40000"), Some(101));
        // A third party floods first: dropped, nothing latched.
        assert_eq!(
            leg.receive(t0, addr("203.0.113.66:5000"), &pkt(1, 0, &[0; 160])),
            Received::Dropped
        );
        // The real peer, from another port (NAT): latched.
        assert!(matches!(
            leg.receive(t0, addr("192.0.2.5:41000"), &pkt(2, 0, &[0; 160])),
            Received::Media(_)
        ));
        assert_eq!(leg.destination(), addr("192.0.2.5:41000"));
        // The third party again, even from the peer's IP: cannot hijack.
        assert_eq!(
            leg.receive(t0, addr("192.0.2.5:40000"), &pkt(3, 0, &[0; 160])),
            Received::Dropped
        );
        // Loss, lateness, bad packets.
        assert!(matches!(
            leg.receive(t0, addr("192.0.2.5:41000"), &pkt(5, 0, &[0; 160])),
            Received::Media(_)
        ));
        assert!(matches!(
            leg.receive(t0, addr("192.0.2.5:41000"), &pkt(4, 0, &[0; 160])),
            Received::Media(_)
        ));
        assert_eq!(
            leg.receive(t0, addr("192.0.2.5:41000"), &[0x80, 0, 1]),
            Received::Dropped
        );
        assert_eq!(
            leg.receive(t0, addr("192.0.2.5:41000"), &[0x40; 20]),
            Received::Dropped
        );
        // A key press: reported once.
        let ev = [9u8, 10, 0, 0];
        assert!(matches!(
            leg.receive(t0, addr("192.0.2.5:41000"), &pkt(6, 101, &ev)),
            Received::Dtmf(_, Some('9'))
        ));
        let mut same = pkt(7, 101, &ev);
        same[4..8].copy_from_slice(&(6u32 * 160).to_be_bytes());
        assert!(matches!(
            leg.receive(t0, addr("192.0.2.5:41000"), &same),
            Received::Dtmf(_, None)
        ));
        let s = leg.stats();
        assert_eq!(
            (s.packets, s.lost, s.late, s.bad, s.foreign),
            (5, 1, 1, 2, 2),
            "{s:?}"
        );
        assert_eq!(s.bytes, 3 * 160 + 8);
        // Re-INVITE: new address, latch again.
        leg.update(addr("198.51.100.7:50000"), None, None);
        assert_eq!(
            leg.receive(t0, addr("192.0.2.5:41000"), &pkt(8, 0, &[0; 160])),
            Received::Dropped
        );
        assert!(matches!(
            leg.receive(t0, addr("198.51.100.7:50000"), &pkt(100, 0, &[0; 160])),
            Received::Media(_)
        ));
    }

    #[test]
    fn first_packet_latching_for_peers_behind_nat() {
        let t0 = Instant::now();
        let mut leg = Leg::new(Latch::FirstPacket, addr("10.0.0.5:4000"), None);
        assert!(matches!(
            leg.receive(t0, addr("203.0.113.9:6000"), &pkt(1, 8, &[0; 160])),
            Received::Media(_)
        ));
        assert_eq!(leg.destination(), addr("203.0.113.9:6000"));
        assert_eq!(
            leg.receive(t0, addr("203.0.113.10:6000"), &pkt(2, 8, &[0; 160])),
            Received::Dropped
        );
    }

    #[test]
    fn symmetric_latching_takes_the_signalling_source_and_no_stranger() {
        // A phone whose SDP names its other interface, sending from the
        // address it registered from (NAT, a multi-homed PC).
        let t0 = Instant::now();
        let mut leg = Leg::new(Latch::Symmetric, addr("10.1.2.3:4000"), None)
            .signalled_from(Some("192.0.2.21".parse().unwrap()));
        let media = |leg: &mut Leg, t, from: &str, seq| {
            matches!(
                leg.receive(t, addr(from), &pkt(seq, 0, &[0; 160])),
                Received::Media(_)
            )
        };
        assert!(
            !media(&mut leg, t0, "203.0.113.66:5000", 1),
            "a stranger first"
        );
        assert!(media(&mut leg, t0, "192.0.2.21:7078", 2));
        assert_eq!(leg.destination(), addr("192.0.2.21:7078"));
        // Another port of the same NAT while the phone talks: never, in
        // any number (a colleague behind the same NAT).
        let t = t0 + Duration::from_millis(20);
        for seq in 3..10 {
            assert!(!media(&mut leg, t, "192.0.2.21:9999", seq));
            assert!(media(&mut leg, t, "192.0.2.21:7078", seq));
        }
        // The phone falls silent (its NAT mapping changed) and the same
        // address sends from a new port: after a second of silence and
        // three packets in a row, the latch moves there.
        let t = t0 + Duration::from_secs(2);
        assert!(!media(&mut leg, t, "192.0.2.21:7100", 20));
        assert!(!media(&mut leg, t, "192.0.2.21:7100", 21));
        assert!(media(&mut leg, t, "192.0.2.21:7100", 22));
        assert_eq!(leg.destination(), addr("192.0.2.21:7100"));
        // A stranger never, silent peer or not.
        let t = t0 + Duration::from_secs(10);
        for seq in 30..40 {
            assert!(!media(&mut leg, t, "203.0.113.66:5000", seq));
        }
        assert_eq!(leg.destination(), addr("192.0.2.21:7100"));
        // The SDP's own address is the peer's too.
        let mut leg = Leg::new(Latch::Symmetric, addr("10.1.2.3:4000"), None)
            .signalled_from(Some("192.0.2.21".parse().unwrap()));
        assert!(media(&mut leg, t0, "10.1.2.3:4002", 1));
        // Without a signalling address it is `SdpAddress`.
        let mut leg = Leg::new(Latch::Symmetric, addr("10.1.2.3:4000"), None);
        assert!(!media(&mut leg, t0, "192.0.2.21:7078", 1));
    }

    #[test]
    fn first_packet_latching_never_moves() {
        let t0 = Instant::now();
        let mut leg = Leg::new(Latch::FirstPacket, addr("10.0.0.5:4000"), None);
        assert!(matches!(
            leg.receive(t0, addr("203.0.113.9:6000"), &pkt(1, 8, &[0; 160])),
            Received::Media(_)
        ));
        let later = t0 + Duration::from_secs(5);
        for seq in 2..10 {
            assert_eq!(
                leg.receive(later, addr("203.0.113.10:6000"), &pkt(seq, 8, &[0; 160])),
                Received::Dropped
            );
        }
        assert_eq!(leg.destination(), addr("203.0.113.9:6000"));
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_is_handled(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), port in 1u16..3) {
            let t0 = Instant::now();
            let mut leg = Leg::new(Latch::SdpAddress, addr("127.0.0.1:1"), Some(101));
            let _ = leg.receive(t0, SocketAddr::from(([127, 0, 0, 1], port)), &data);
            let s = leg.stats();
            proptest::prop_assert_eq!(s.packets + s.bad + s.foreign, 1);
        }
    }
}
