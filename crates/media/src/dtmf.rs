//! RFC 4733 telephone events: each key press reported exactly once,
//! whatever the sender's redundancy (repeated packets, three end packets)
//! or the network's losses (a lost end packet, a lost first packet).

/// One telephone-event payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Event code (0–9, 10 `*`, 11 `#`, 12–15 A–D, others non-DTMF).
    pub code: u8,
    /// End bit.
    pub end: bool,
    /// Volume (−dBm0).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

/// A payload that is not a telephone event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("telephone-event payload must be at least 4 bytes")]
pub struct EventError;

/// Parses the first event of a payload (RFC 4733 §2.3; redundant events of
/// RFC 2198 are not used by telephony senders here).
pub fn parse(payload: &[u8]) -> Result<Event, EventError> {
    let p = payload.get(..4).ok_or(EventError)?;
    Ok(Event {
        code: p[0],
        end: p[1] & 0x80 != 0,
        volume: p[1] & 0x3F,
        duration: u16::from_be_bytes([p[2], p[3]]),
    })
}

/// The DTMF character of an event code.
pub fn digit(code: u8) -> Option<char> {
    Some(match code {
        0..=9 => char::from(b'0' + code),
        10 => '*',
        11 => '#',
        12..=15 => char::from(b'A' + code - 12),
        _ => return None,
    })
}

/// The event code of a DTMF character (`0`–`9`, `*`, `#`, `A`–`D`).
pub fn code(digit: char) -> Option<u8> {
    Some(match digit {
        '0'..='9' => digit as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => digit as u8 - b'A' + 12,
        _ => return None,
    })
}

/// One telephone-event payload (RFC 4733 §2.3): the event, the end bit,
/// the volume (−dBm0, 0–63) and the duration so far.
pub fn payload(e: Event) -> [u8; 4] {
    let [d0, d1] = e.duration.to_be_bytes();
    [e.code, u8::from(e.end) << 7 | (e.volume & 0x3F), d0, d1]
}

/// Reports each key press once. One detector per receiving leg.
#[derive(Debug, Default)]
pub struct Detector {
    /// (timestamp, code, ended, duration) of the current event.
    current: Option<(u32, u8, bool, u16)>,
}

impl Detector {
    /// A new detector.
    pub fn new() -> Self {
        Self::default()
    }

    /// One received packet (`timestamp` from its RTP header). Returns the
    /// digit when this packet starts a new key press.
    pub fn push(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let e = parse(payload).ok()?;
        if let Some((ts, code, ended, duration)) = self.current {
            if ts == timestamp {
                // The same event again (update, or a repeated end packet).
                self.current = Some((ts, code, ended || e.end, duration.max(e.duration)));
                return None;
            }
            // A long event continues with a new timestamp once its duration
            // overflows 16 bits (RFC 4733 §2.5.2.1): same code, not ended,
            // starting where the previous segment stopped.
            let gap = timestamp.wrapping_sub(ts);
            if code == e.code && !ended && gap <= u32::from(duration) + 1 && gap > 0 {
                self.current = Some((timestamp, code, e.end, e.duration));
                return None;
            }
            // Older than the current event (reordered): ignore.
            if gap > u32::MAX / 2 {
                return None;
            }
        }
        self.current = Some((timestamp, e.code, e.end, e.duration));
        digit(e.code)
    }
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_payloads_round_trip_through_the_parser() {
        for d in "0123456789*#ABCD".chars() {
            let code = code(d).unwrap();
            assert_eq!(digit(code), Some(d));
            let e = Event {
                code,
                end: code.is_multiple_of(2),
                volume: 10,
                duration: 800,
            };
            assert_eq!(parse(&payload(e)), Ok(e));
        }
        assert_eq!(code('E'), None);
        assert_eq!(code('a'), None);
    }

    fn ev(code: u8, end: bool, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [code, (u8::from(end) << 7) | 10, d[0], d[1]]
    }

    #[test]
    fn one_report_per_press_despite_redundancy_and_loss() {
        let mut d = Detector::new();
        let mut got = String::new();
        let mut feed = |ts: u32, p: [u8; 4]| {
            if let Some(c) = d.push(ts, &p) {
                got.push(c);
            }
        };
        // '5': updates, then the end packet three times.
        for dur in [0, 160, 320, 480] {
            feed(1000, ev(5, false, dur));
        }
        for _ in 0..3 {
            feed(1000, ev(5, true, 640));
        }
        // '5' again: a new press, new timestamp.
        feed(3000, ev(5, false, 0));
        // Its end packets are all lost; '#' follows.
        feed(5000, ev(11, false, 160));
        feed(5000, ev(11, true, 800));
        // First packet of '7' lost: the first we see still starts it.
        feed(7000, ev(7, false, 480));
        // A reordered packet of the previous '#': ignored.
        feed(5000, ev(11, true, 800));
        // Non-DTMF event (flash, 16): not a digit.
        feed(9000, ev(16, false, 0));
        assert_eq!(got, "55#7");
        assert_eq!(d.push(1, &[1, 2]), None, "short payload");
    }

    #[test]
    fn a_long_press_across_timestamp_segments_is_one_digit() {
        let mut d = Detector::new();
        assert_eq!(d.push(0, &ev(3, false, 65535)), Some('3'));
        assert_eq!(d.push(65535, &ev(3, false, 8000)), None);
        assert_eq!(d.push(65535, &ev(3, true, 9000)), None);
        assert_eq!(d.push(90_000, &ev(3, false, 0)), Some('3'));
    }

    /// Reads the RTP packets out of an Ethernet/IPv4/UDP pcap.
    fn pcap_rtp(path: &str) -> Vec<Vec<u8>> {
        let data = std::fs::read(path).unwrap_or_else(|e| {
            panic!("{path}: {e} (install Debian's sip-tester; scripts/test does)")
        });
        assert_eq!(&data[..4], &[0xD4, 0xC3, 0xB2, 0xA1], "little-endian pcap");
        let mut out = Vec::new();
        let mut off = 24;
        while off + 16 <= data.len() {
            let incl = u32::from_le_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
            let frame = &data[off + 16..off + 16 + incl];
            off += 16 + incl;
            let ihl = usize::from(frame[14] & 0x0F) * 4;
            out.push(frame[14 + ihl + 8..].to_vec());
        }
        out
    }

    /// SIPp's own RFC 4733 captures (what its `play_pcap_audio` sends):
    /// each file is one key, reported exactly once.
    #[test]
    fn sipp_dtmf_captures_give_one_digit_each() {
        for (file, want) in [
            ("0", '0'),
            ("1", '1'),
            ("2", '2'),
            ("3", '3'),
            ("4", '4'),
            ("5", '5'),
            ("6", '6'),
            ("7", '7'),
            ("8", '8'),
            ("9", '9'),
            ("star", '*'),
            ("pound", '#'),
        ] {
            let mut d = Detector::new();
            let mut got = Vec::new();
            let packets = pcap_rtp(&format!("/usr/share/sip-tester/dtmf_2833_{file}.pcap"));
            assert!(!packets.is_empty());
            for p in &packets {
                let rtp = crate::rtp::parse(p).unwrap();
                got.extend(d.push(rtp.header.timestamp, rtp.payload));
            }
            assert_eq!(got, vec![want], "{file}");
        }
    }
}
