//! RTP packets (RFC 3550): a bounded parser that never panics, and a
//! writer for the fixed header.

/// The fixed header.
pub const HEADER_LEN: usize = 12;

/// The fields Centralino reads and rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Marker bit (start of a talkspurt or of an event).
    pub marker: bool,
    /// Payload type, 0..=127.
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// A parsed packet: header and payload (CSRCs, extension and padding
/// skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Header.
    pub header: Header,
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Why a datagram is not an RTP packet we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than its headers say.
    #[error("truncated")]
    Truncated,
    /// Version is not 2.
    #[error("not RTP version 2")]
    Version,
    /// Padding longer than the payload, or zero.
    #[error("bad padding")]
    Padding,
    /// An RTCP packet (RFC 5761 payload types 72–76) on the RTP port.
    #[error("RTCP, not RTP")]
    Rtcp,
}

impl RtpError {
    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Version => "version",
            Self::Padding => "padding",
            Self::Rtcp => "rtcp",
        }
    }
}

/// Parses one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, RtpError> {
    if buf.len() < HEADER_LEN {
        return Err(RtpError::Truncated);
    }
    if buf[0] >> 6 != 2 {
        return Err(RtpError::Version);
    }
    let pt = buf[1] & 0x7F;
    if (72..=76).contains(&pt) {
        return Err(RtpError::Rtcp);
    }
    let csrc = usize::from(buf[0] & 0x0F);
    let mut start = HEADER_LEN + 4 * csrc;
    if buf.len() < start {
        return Err(RtpError::Truncated);
    }
    if buf[0] & 0x10 != 0 {
        // Extension: 16-bit profile, 16-bit length in 32-bit words.
        let ext = buf.get(start + 2..start + 4).ok_or(RtpError::Truncated)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        if buf.len() < start {
            return Err(RtpError::Truncated);
        }
    }
    let mut end = buf.len();
    if buf[0] & 0x20 != 0 {
        let pad = usize::from(buf[end - 1]);
        if pad == 0 || pad > end - start {
            return Err(RtpError::Padding);
        }
        end -= pad;
    }
    Ok(Packet {
        header: Header {
            marker: buf[1] & 0x80 != 0,
            payload_type: pt,
            seq: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        },
        payload: &buf[start..end],
    })
}

/// Writes a packet (no CSRC, extension or padding) into `out`; returns its
/// length, or `None` if `out` is too small.
pub fn write(h: &Header, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let len = HEADER_LEN + payload.len();
    let out = out.get_mut(..len)?;
    out[0] = 0x80;
    out[1] = (u8::from(h.marker) << 7) | (h.payload_type & 0x7F);
    out[2..4].copy_from_slice(&h.seq.to_be_bytes());
    out[4..8].copy_from_slice(&h.timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&h.ssrc.to_be_bytes());
    out[12..].copy_from_slice(payload);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse() {
        let h = Header {
            marker: true,
            payload_type: 8,
            seq: 65535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 42,
        };
        let mut buf = [0u8; 200];
        let n = write(&h, &[1, 2, 3], &mut buf).unwrap();
        let p = parse(&buf[..n]).unwrap();
        assert_eq!((p.header, p.payload), (h, &[1u8, 2, 3][..]));
        assert_eq!(write(&h, &[0; 300], &mut buf), None);
    }

    #[test]
    fn bad_packets_are_refused() {
        let mut ok = [0u8; 20];
        ok[0] = 0x80;
        assert!(parse(&ok).is_ok());
        assert_eq!(parse(&ok[..11]), Err(RtpError::Truncated));
        let mut v1 = ok;
        v1[0] = 0x40;
        assert_eq!(parse(&v1), Err(RtpError::Version));
        let mut csrc = ok;
        csrc[0] = 0x8F; // 15 CSRCs = 60 bytes > 20
        assert_eq!(parse(&csrc), Err(RtpError::Truncated));
        let mut ext = ok;
        ext[0] = 0x90;
        ext[14] = 0xFF; // extension of 65,280 words
        assert_eq!(parse(&ext), Err(RtpError::Truncated));
        let mut pad = ok;
        pad[0] = 0xA0;
        pad[19] = 9; // 9 > 8 payload bytes
        assert_eq!(parse(&pad), Err(RtpError::Padding));
        pad[19] = 8;
        assert_eq!(parse(&pad).unwrap().payload.len(), 0);
        let mut rtcp = ok;
        rtcp[1] = 200; // SR: 200 & 0x7F = 72
        assert_eq!(parse(&rtcp), Err(RtpError::Rtcp));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(p) = parse(&data) {
                proptest::prop_assert!(p.payload.len() <= data.len() - HEADER_LEN);
            }
        }
    }
}
