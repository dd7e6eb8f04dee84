//! The receiving side of one anchored leg: which source address is
//! allowed to feed it (symmetric RTP with latching), and what happened to
//! every packet (counted, never a panic, never a hijack).

use std::net::SocketAddr;

use crate::dtmf::Detector;
use crate::rtp::{self, Packet};

/// How a leg learns its peer's real address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latch {
    /// Only packets from the SDP's IP address (any port, for NAT) are
    /// accepted; the first one fixes the port.
    SdpAddress,
    /// The first valid packet from anywhere fixes the address (peers
    /// behind NAT that put a private address in their SDP); later
    /// packets from elsewhere are dropped.
    FirstPacket,
}

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
            telephone_event,
            highest: None,
            detector: Detector::new(),
            stats: Stats::default(),
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
    pub fn update(&mut self, expected: SocketAddr, telephone_event: Option<u8>) {
        self.expected = expected;
        self.telephone_event = telephone_event;
        self.latched = None;
        self.highest = None;
    }

    /// One datagram from `from`.
    pub fn receive<'a>(&mut self, from: SocketAddr, data: &'a [u8]) -> Received<'a> {
        let Ok(p) = rtp::parse(data) else {
            self.stats.bad += 1;
            return Received::Dropped;
        };
        match self.latched {
            Some(a) if a != from => {
                self.stats.foreign += 1;
                return Received::Dropped;
            }
            Some(_) => {}
            None => {
                let allowed = match self.latch {
                    Latch::SdpAddress => from.ip() == self.expected.ip(),
                    Latch::FirstPacket => true,
                };
                if !allowed {
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
        let mut leg = Leg::new(Latch::SdpAddress, addr("192.0.2.5:40000"), Some(101));
        // A third party floods first: dropped, nothing latched.
        assert_eq!(
            leg.receive(addr("203.0.113.66:5000"), &pkt(1, 0, &[0; 160])),
            Received::Dropped
        );
        // The real peer, from another port (NAT): latched.
        assert!(matches!(
            leg.receive(addr("192.0.2.5:41000"), &pkt(2, 0, &[0; 160])),
            Received::Media(_)
        ));
        assert_eq!(leg.destination(), addr("192.0.2.5:41000"));
        // The third party again, even from the peer's IP: cannot hijack.
        assert_eq!(
            leg.receive(addr("192.0.2.5:40000"), &pkt(3, 0, &[0; 160])),
            Received::Dropped
        );
        // Loss, lateness, bad packets.
        assert!(matches!(
            leg.receive(addr("192.0.2.5:41000"), &pkt(5, 0, &[0; 160])),
            Received::Media(_)
        ));
        assert!(matches!(
            leg.receive(addr("192.0.2.5:41000"), &pkt(4, 0, &[0; 160])),
            Received::Media(_)
        ));
        assert_eq!(
            leg.receive(addr("192.0.2.5:41000"), &[0x80, 0, 1]),
            Received::Dropped
        );
        assert_eq!(
            leg.receive(addr("192.0.2.5:41000"), &[0x40; 20]),
            Received::Dropped
        );
        // A key press: reported once.
        let ev = [9u8, 10, 0, 0];
        assert!(matches!(
            leg.receive(addr("192.0.2.5:41000"), &pkt(6, 101, &ev)),
            Received::Dtmf(_, Some('9'))
        ));
        let mut same = pkt(7, 101, &ev);
        same[4..8].copy_from_slice(&(6u32 * 160).to_be_bytes());
        assert!(matches!(
            leg.receive(addr("192.0.2.5:41000"), &same),
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
        leg.update(addr("198.51.100.7:50000"), None);
        assert_eq!(
            leg.receive(addr("192.0.2.5:41000"), &pkt(8, 0, &[0; 160])),
            Received::Dropped
        );
        assert!(matches!(
            leg.receive(addr("198.51.100.7:50000"), &pkt(100, 0, &[0; 160])),
            Received::Media(_)
        ));
    }

    #[test]
    fn first_packet_latching_for_peers_behind_nat() {
        let mut leg = Leg::new(Latch::FirstPacket, addr("10.0.0.5:4000"), None);
        assert!(matches!(
            leg.receive(addr("203.0.113.9:6000"), &pkt(1, 8, &[0; 160])),
            Received::Media(_)
        ));
        assert_eq!(leg.destination(), addr("203.0.113.9:6000"));
        assert_eq!(
            leg.receive(addr("203.0.113.10:6000"), &pkt(2, 8, &[0; 160])),
            Received::Dropped
        );
    }

    proptest::proptest! {
        #[test]
        fn any_datagram_is_handled(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), port in 1u16..3) {
            let mut leg = Leg::new(Latch::SdpAddress, addr("127.0.0.1:1"), Some(101));
            let _ = leg.receive(SocketAddr::from(([127, 0, 0, 1], port)), &data);
            let s = leg.stats();
            proptest::prop_assert_eq!(s.packets + s.bad + s.foreign, 1);
        }
    }
}
