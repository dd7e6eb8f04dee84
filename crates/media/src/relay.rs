//! One anchored call's media: two legs, each with its receive state and
//! its outgoing stream; packets from one leg are relayed to the other with
//! the header rewritten (one SSRC per direction, continuous numbering) and
//! the payload transcoded when the legs negotiated different laws. Writes
//! into the caller's buffer: no allocation per packet.

use std::net::SocketAddr;

use crate::g711::{self, Law};
use crate::leg::{Leg, Received, Stats};
use crate::rtp::{self, HEADER_LEN};
use crate::stream::Outgoing;

/// Which side of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The caller (trunk).
    A,
    /// The operator.
    B,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
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
    /// A key press on this side.
    Dtmf(char),
    /// Nothing to send.
    None,
}

/// A bridged call's media.
#[derive(Debug)]
pub struct Bridge {
    legs: [Leg; 2],
    laws: [Law; 2],
    out: [Outgoing; 2],
    /// While on hold (either side), media is not relayed.
    held: bool,
}

impl Bridge {
    /// Two legs with their negotiated laws; `ssrc`/`seq`/`ts` seed the
    /// outgoing stream of each side (random in production).
    pub fn new(a: (Leg, Law), b: (Leg, Law), seeds: [(u32, u16, u32); 2]) -> Self {
        Self {
            legs: [a.0, b.0],
            laws: [a.1, b.1],
            out: seeds.map(|(s, q, t)| Outgoing::new(s, q, t)),
            held: false,
        }
    }

    /// Hold (re-INVITE with sendonly/inactive) or resume.
    pub fn set_held(&mut self, held: bool) {
        self.held = held;
    }

    /// Counters of what a side sent us.
    pub fn stats(&self, side: Side) -> Stats {
        self.legs[side.index()].stats()
    }

    /// A datagram from `from` on `side`'s socket. A relayed packet is
    /// written into `buf` (at least 12 + payload bytes; 1,500 is enough for
    /// anything accepted).
    pub fn receive(&mut self, side: Side, from: SocketAddr, data: &[u8], buf: &mut [u8]) -> Action {
        let (from_law, to_law) = (self.laws[side.index()], self.laws[side.other().index()]);
        let to = self.legs[side.other().index()].destination();
        let p = match self.legs[side.index()].receive(from, data) {
            Received::Media(p) => p,
            Received::Dtmf(Some(c)) => return Action::Dtmf(c),
            Received::Dtmf(None) | Received::Dropped => return Action::None,
        };
        if self.held || p.header.payload_type != from_law.payload_type() {
            // Comfort noise and unknown payloads are not relayed.
            return Action::None;
        }
        let samples = p.payload.len() as u32;
        let Some(mut h) =
            self.out[side.other().index()].rewrite(side.index() as u32, &p.header, samples)
        else {
            return Action::None;
        };
        h.payload_type = to_law.payload_type();
        let Some(len) = rtp::write(&h, p.payload, buf) else {
            return Action::None;
        };
        g711::transcode(from_law, to_law, &mut buf[HEADER_LEN..len]);
        Action::Send { to, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leg::Latch;
    use crate::rtp::Header;

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

    #[test]
    fn relays_with_rewrite_and_transcoding() {
        let a_addr: SocketAddr = "192.0.2.5:40000".parse().unwrap();
        let b_addr: SocketAddr = "192.0.2.21:30000".parse().unwrap();
        let mut br = Bridge::new(
            (Leg::new(Latch::SdpAddress, a_addr, Some(101)), Law::Alaw),
            (Leg::new(Latch::SdpAddress, b_addr, None), Law::Ulaw),
            [(1, 0, 0), (2, 500, 8000)],
        );
        let mut buf = [0u8; 1500];
        let alaw: Vec<u8> = (0..160).map(|i| Law::Alaw.encode(i * 100)).collect();
        let act = br.receive(Side::A, a_addr, &pkt(10, 8, &alaw), &mut buf);
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
        // The caller's key press is an event, not relayed.
        assert_eq!(
            br.receive(Side::A, a_addr, &pkt(11, 101, &[4, 10, 0, 0]), &mut buf),
            Action::Dtmf('4')
        );
        // On hold nothing goes through; a stranger never does.
        br.set_held(true);
        assert_eq!(
            br.receive(Side::A, a_addr, &pkt(12, 8, &alaw), &mut buf),
            Action::None
        );
        br.set_held(false);
        let stranger: SocketAddr = "203.0.113.1:1".parse().unwrap();
        assert_eq!(
            br.receive(Side::A, stranger, &pkt(13, 8, &alaw), &mut buf),
            Action::None
        );
        assert_eq!(br.stats(Side::A).foreign, 1);
        // The operator's audio flows back, A-law towards the caller.
        let ulaw = [0xFFu8; 160];
        let Action::Send { to, len } = br.receive(Side::B, b_addr, &pkt(7, 0, &ulaw), &mut buf)
        else {
            panic!()
        };
        assert_eq!(to, a_addr);
        let back = rtp::parse(&buf[..len]).unwrap();
        assert_eq!((back.header.payload_type, back.header.ssrc), (8, 1));
        assert!(back.payload.iter().all(|&b| b == Law::Alaw.encode(0)));
    }
}
