//! The audio part of an SDP body (RFC 4566/3264), as much as an anchoring
//! B2BUA needs: where the peer wants RTP, which codecs it offers, its
//! direction (hold); and the rewrite that puts Centralino's address and
//! port in their place and keeps only the chosen codecs.
//!
//! In-house rather than a general SDP crate: the rewrite must keep every
//! other line byte for byte, and the audio subset is small. Bounded: the
//! body is already capped by the SIP guard; lines and formats are capped
//! here.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::g711::Law;

/// Most lines read.
pub const MAX_LINES: usize = 256;
/// Most payload formats read from the audio m= line.
pub const MAX_FORMATS: usize = 32;

/// Media direction (RFC 3264 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Both ways.
    SendRecv,
    /// The peer only sends (it puts us on hold).
    SendOnly,
    /// The peer only receives.
    RecvOnly,
    /// Neither.
    Inactive,
}

/// The first audio stream of a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audio {
    /// Connection address (media-level c= over session-level).
    pub addr: IpAddr,
    /// RTP port (0 = stream rejected).
    pub port: u16,
    /// Payload types in the peer's order of preference.
    pub formats: Vec<u8>,
    /// The telephone-event payload type, if offered.
    pub telephone_event: Option<u8>,
    /// Direction.
    pub direction: Direction,
}

/// Why a peer's SDP connection address is not one we send media to, or
/// `None` when it is. Media goes where the peer's SDP says, so an address
/// there is a request to send a stream: never to a multicast or broadcast
/// group, a reserved or "this network" range, nor to loopback unless the
/// signalling itself came from this host (RTP reflection, amplification).
/// The unspecified address is allowed: it is the RFC 2543 hold marker
/// (nothing is sent to it).
pub fn refused_address(addr: IpAddr, signalling_source: IpAddr) -> Option<&'static str> {
    let addr = addr.to_canonical();
    let source = signalling_source.to_canonical();
    if addr.is_unspecified() {
        return None;
    }
    if addr.is_multicast() {
        return Some("multicast");
    }
    if addr.is_loopback() && !source.is_loopback() {
        return Some("loopback");
    }
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_broadcast() {
                Some("broadcast")
            } else if o[0] == 0 || o[0] >= 240 {
                // 0.0.0.0/8 "this network", 240.0.0.0/4 reserved.
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(_) => None,
    }
}

impl Audio {
    /// The peer holds the call (sendonly, inactive, or the RFC 2543 c=0.0.0.0).
    pub fn on_hold(&self) -> bool {
        matches!(self.direction, Direction::SendOnly | Direction::Inactive)
            || self.addr.is_unspecified()
    }

    /// The first offered law Centralino can use, in the peer's order.
    pub fn choose(&self, supported: &[Law]) -> Option<Law> {
        self.formats
            .iter()
            .find_map(|&pt| supported.iter().copied().find(|l| l.payload_type() == pt))
    }
}

/// Why a body cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Not UTF-8, or more than `MAX_LINES` lines.
    #[error("malformed SDP")]
    Malformed,
    /// No audio m= line.
    #[error("no audio stream")]
    NoAudio,
    /// No usable c= address for the audio stream.
    #[error("no connection address")]
    NoAddress,
}

/// Reads the first audio stream.
pub fn parse(body: &[u8]) -> Result<Audio, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::Malformed)?;
    let mut session_addr = None;
    let mut audio: Option<Audio> = None;
    let mut media_addr = None;
    let mut in_audio = false;
    let mut session_dir = Direction::SendRecv;
    let mut media_dir = None;
    // Lines split by a byte loop, not `str::lines`: a search call per
    // short line was most of the parse, itself 7 % of the engine's
    // instructions per call (two SDPs each).
    let mut rest = text;
    for i in 0.. {
        if rest.is_empty() {
            break;
        }
        if i >= MAX_LINES {
            return Err(SdpError::Malformed);
        }
        let (line, next) = match rest.bytes().position(|b| b == b'\n') {
            // Sound: '\n' is ASCII, so both sides are whole characters.
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, ""),
        };
        rest = next;
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if audio.is_some() {
                // Only the first audio stream; stop at the next m= line.
                if in_audio {
                    in_audio = false;
                }
                continue;
            }
            let mut it = m.split(' ');
            if it.next() == Some("audio") {
                let port = it.next().and_then(|p| p.split('/').next()?.parse().ok());
                let _proto = it.next();
                let formats: Vec<u8> = it
                    .take(MAX_FORMATS)
                    .filter_map(|f| f.parse().ok())
                    .filter(|&pt: &u8| pt < 128)
                    .collect();
                audio = Some(Audio {
                    addr: IpAddr::from([0, 0, 0, 0]),
                    port: port.ok_or(SdpError::Malformed)?,
                    formats,
                    telephone_event: None,
                    direction: Direction::SendRecv,
                });
                in_audio = true;
            } else {
                in_audio = false;
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let addr = c
                .split(' ')
                .nth(2)
                .and_then(|a| a.split('/').next()?.parse().ok());
            if in_audio {
                media_addr = addr;
            } else if audio.is_none() {
                session_addr = addr;
            }
        } else if let Some(a) = line.strip_prefix("a=") {
            let dir = match a {
                "sendrecv" => Some(Direction::SendRecv),
                "sendonly" => Some(Direction::SendOnly),
                "recvonly" => Some(Direction::RecvOnly),
                "inactive" => Some(Direction::Inactive),
                _ => None,
            };
            if let Some(d) = dir {
                if in_audio {
                    media_dir = Some(d);
                } else if audio.is_none() {
                    session_dir = d;
                }
            }
            if in_audio
                && let Some(map) = a.strip_prefix("rtpmap:")
                && let Some((pt, enc)) = map.split_once(' ')
                && enc
                    .as_bytes()
                    .get(..16)
                    .is_some_and(|e| e.eq_ignore_ascii_case(b"telephone-event/"))
                && let (Ok(pt), Some(au)) = (pt.parse(), audio.as_mut())
            {
                au.telephone_event = Some(pt);
            }
        }
    }
    let mut audio = audio.ok_or(SdpError::NoAudio)?;
    audio.addr = media_addr.or(session_addr).ok_or(SdpError::NoAddress)?;
    audio.direction = media_dir.unwrap_or(session_dir);
    Ok(audio)
}

/// What Centralino says in its own SDP (an offer to an operator, or an
/// answer to a caller): one audio stream on its anchored address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Local<'a> {
    /// Address written in c= and o=.
    pub addr: IpAddr,
    /// RTP port.
    pub port: u16,
    /// G.711 payload types, preferred first.
    pub formats: &'a [u8],
    /// Telephone-event payload type, if any.
    pub telephone_event: Option<u8>,
    /// Direction.
    pub direction: Direction,
    /// o= session id (stable for the session).
    pub session: u64,
    /// o= version (incremented on every change).
    pub version: u64,
}

impl Local<'_> {
    /// The body, CRLF line ends. Written piece by piece rather than
    /// through `format!`: three of these per call were a twentieth of the
    /// engine's instructions (`cargo bench --bench engine`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let family: &[u8] = if self.addr.is_ipv4() {
            b"IP4 "
        } else {
            b"IP6 "
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"v=0\r\no=centralino ");
        push_decimal(&mut out, self.session);
        out.push(b' ');
        push_decimal(&mut out, self.version);
        out.extend_from_slice(b" IN ");
        out.extend_from_slice(family);
        push_addr(&mut out, self.addr);
        out.extend_from_slice(b"\r\ns=centralino\r\nc=IN ");
        out.extend_from_slice(family);
        push_addr(&mut out, self.addr);
        out.extend_from_slice(b"\r\nt=0 0\r\nm=audio ");
        push_decimal(&mut out, u64::from(self.port));
        out.extend_from_slice(b" RTP/AVP");
        for &pt in self.formats.iter().chain(self.telephone_event.as_ref()) {
            out.push(b' ');
            push_decimal(&mut out, u64::from(pt));
        }
        out.extend_from_slice(b"\r\n");
        for &pt in self.formats {
            out.extend_from_slice(b"a=rtpmap:");
            push_decimal(&mut out, u64::from(pt));
            out.extend_from_slice(if pt == 8 {
                b" PCMA/8000\r\n"
            } else {
                b" PCMU/8000\r\n"
            });
        }
        if let Some(pt) = self.telephone_event {
            out.extend_from_slice(b"a=rtpmap:");
            push_decimal(&mut out, u64::from(pt));
            out.extend_from_slice(b" telephone-event/8000\r\na=fmtp:");
            push_decimal(&mut out, u64::from(pt));
            out.extend_from_slice(b" 0-16\r\n");
        }
        out.extend_from_slice(b"a=ptime:20\r\n");
        out.extend_from_slice(match self.direction {
            Direction::SendRecv => b"a=sendrecv\r\n",
            Direction::SendOnly => b"a=sendonly\r\n",
            Direction::RecvOnly => b"a=recvonly\r\n",
            Direction::Inactive => b"a=inactive\r\n",
        });
        out
    }
}

/// `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// An address as `Display` writes it (IPv4 by hand, the rare IPv6
/// through the formatter).
fn push_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(o));
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

impl Direction {
    /// The direction that answers this one (RFC 3264 §6.1): a peer that
    /// only sends gets recvonly, and so on.
    pub fn answer(self) -> Self {
        match self {
            Self::SendRecv => Self::SendRecv,
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            Self::Inactive => Self::Inactive,
        }
    }
}

/// Rewrites a body for the other leg: every c= line and the audio port
/// become Centralino's `addr`/`port`, the audio formats become `formats`
/// (with their rtpmap/fmtp lines kept, the others dropped). Other lines are
/// kept as they are; line ends become CRLF.
pub fn rewrite(body: &[u8], addr: IpAddr, port: u16, formats: &[u8]) -> Result<Vec<u8>, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::Malformed)?;
    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(text.len() + 32);
    let mut in_audio = false;
    let mut done_audio = false;
    let keep = |pt: &str| pt.parse::<u8>().is_ok_and(|p| formats.contains(&p));
    for (i, line) in text.lines().enumerate() {
        if i >= MAX_LINES {
            return Err(SdpError::Malformed);
        }
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = !done_audio && m.starts_with("audio ");
            if in_audio {
                done_audio = true;
                let proto = m.split(' ').nth(2).unwrap_or("RTP/AVP");
                let _ = write!(out, "m=audio {port} {proto}");
                for f in formats {
                    let _ = write!(out, " {f}");
                }
                out.push_str("\r\n");
                continue;
            }
        } else if line.starts_with("c=") {
            let _ = write!(out, "c=IN {family} {addr}\r\n");
            continue;
        } else if in_audio
            && let Some(a) = line.strip_prefix("a=")
            && let Some(rest) = a
                .strip_prefix("rtpmap:")
                .or_else(|| a.strip_prefix("fmtp:"))
            && !keep(rest.split(' ').next().unwrap_or(""))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 40000 RTP/AVP 18 8 0 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 198.51.100.1\r\n";

    #[test]
    fn reads_the_audio_stream() {
        let a = parse(OFFER.as_bytes()).unwrap();
        assert_eq!(a.addr, "192.0.2.5".parse::<IpAddr>().unwrap());
        assert_eq!(a.port, 40000);
        assert_eq!(a.formats, [18, 8, 0, 101]);
        assert_eq!(a.telephone_event, Some(101));
        assert_eq!(a.direction, Direction::SendRecv);
        assert_eq!(
            a.choose(&[Law::Ulaw, Law::Alaw]),
            Some(Law::Alaw),
            "peer's order"
        );
        assert!(!a.on_hold());
        let hold = OFFER.replace("a=ptime:20", "a=sendonly");
        assert!(parse(hold.as_bytes()).unwrap().on_hold());
        let old_hold = OFFER.replace("c=IN IP4 192.0.2.5", "c=IN IP4 0.0.0.0");
        assert!(parse(old_hold.as_bytes()).unwrap().on_hold());
        let g729 = OFFER.replace("RTP/AVP 18 8 0 101", "RTP/AVP 18 101");
        assert_eq!(
            parse(g729.as_bytes())
                .unwrap()
                .choose(&[Law::Ulaw, Law::Alaw]),
            None
        );
    }

    #[test]
    fn rewrites_address_port_and_codecs_keeping_the_rest() {
        let out = rewrite(
            OFFER.as_bytes(),
            "203.0.113.9".parse().unwrap(),
            30000,
            &[8, 101],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("c=IN IP4 203.0.113.9\r\n"));
        assert!(!text.contains("192.0.2.5\r\nt="), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 8 101\r\n"));
        assert!(!text.contains("G729") && !text.contains("annexb"));
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"));
        assert!(
            text.contains("m=video 0 RTP/AVP 96\r\n"),
            "other streams kept"
        );
        assert!(
            text.starts_with("v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\n"),
            "o= untouched"
        );
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!((back.port, back.formats.clone()), (30000, vec![8, 101]));
        let v6 = rewrite(
            OFFER.as_bytes(),
            "2001:db8::1".parse().unwrap(),
            30000,
            &[0],
        )
        .unwrap();
        assert!(
            String::from_utf8(v6)
                .unwrap()
                .contains("c=IN IP6 2001:db8::1\r\n")
        );
    }

    #[test]
    fn bad_bodies() {
        assert_eq!(
            parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\n"),
            Err(SdpError::NoAudio)
        );
        assert_eq!(
            parse(b"v=0\r\nm=audio 1 RTP/AVP 0\r\n"),
            Err(SdpError::NoAddress)
        );
        assert_eq!(
            parse(b"v=0\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::Malformed)
        );
        assert_eq!(parse(&[0xFF, 0xFE]), Err(SdpError::Malformed));
        let many = "a=x\r\n".repeat(300);
        assert_eq!(parse(many.as_bytes()), Err(SdpError::Malformed));
    }

    /// The body as `format!` wrote it before `to_bytes` wrote it by hand.
    fn formatted(l: &Local<'_>) -> Vec<u8> {
        let family = if l.addr.is_ipv4() { "IP4" } else { "IP6" };
        let mut out = String::new();
        let _ = write!(
            out,
            "v=0\r\no=centralino {} {} IN {family} {}\r\ns=centralino\r\nc=IN {family} {}\r\nt=0 0\r\nm=audio {} RTP/AVP",
            l.session, l.version, l.addr, l.addr, l.port
        );
        for pt in l.formats.iter().chain(l.telephone_event.as_ref()) {
            let _ = write!(out, " {pt}");
        }
        out.push_str("\r\n");
        for &pt in l.formats {
            let name = if pt == 8 { "PCMA" } else { "PCMU" };
            let _ = write!(out, "a=rtpmap:{pt} {name}/8000\r\n");
        }
        if let Some(pt) = l.telephone_event {
            let _ = write!(
                out,
                "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-16\r\n"
            );
        }
        out.push_str("a=ptime:20\r\n");
        let _ = write!(
            out,
            "a={}\r\n",
            match l.direction {
                Direction::SendRecv => "sendrecv",
                Direction::SendOnly => "sendonly",
                Direction::RecvOnly => "recvonly",
                Direction::Inactive => "inactive",
            }
        );
        out.into_bytes()
    }

    /// The parse as it read lines before (`str::lines`): what the
    /// proptest below holds the byte loop to.
    fn parse_by_lines(body: &[u8]) -> Result<Audio, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::Malformed)?;
        let mut session_addr = None;
        let mut audio: Option<Audio> = None;
        let mut media_addr = None;
        let mut in_audio = false;
        let mut session_dir = Direction::SendRecv;
        let mut media_dir = None;
        for (i, line) in text.lines().enumerate() {
            if i >= MAX_LINES {
                return Err(SdpError::Malformed);
            }
            let line = line.trim_end_matches('\r');
            if let Some(m) = line.strip_prefix("m=") {
                if audio.is_some() {
                    // Only the first audio stream; stop at the next m= line.
                    if in_audio {
                        in_audio = false;
                    }
                    continue;
                }
                let mut it = m.split(' ');
                if it.next() == Some("audio") {
                    let port = it.next().and_then(|p| p.split('/').next()?.parse().ok());
                    let _proto = it.next();
                    let formats: Vec<u8> = it
                        .take(MAX_FORMATS)
                        .filter_map(|f| f.parse().ok())
                        .filter(|&pt: &u8| pt < 128)
                        .collect();
                    audio = Some(Audio {
                        addr: IpAddr::from([0, 0, 0, 0]),
                        port: port.ok_or(SdpError::Malformed)?,
                        formats,
                        telephone_event: None,
                        direction: Direction::SendRecv,
                    });
                    in_audio = true;
                } else {
                    in_audio = false;
                }
            } else if let Some(c) = line.strip_prefix("c=") {
                let addr = c
                    .split(' ')
                    .nth(2)
                    .and_then(|a| a.split('/').next()?.parse().ok());
                if in_audio {
                    media_addr = addr;
                } else if audio.is_none() {
                    session_addr = addr;
                }
            } else if let Some(a) = line.strip_prefix("a=") {
                let dir = match a {
                    "sendrecv" => Some(Direction::SendRecv),
                    "sendonly" => Some(Direction::SendOnly),
                    "recvonly" => Some(Direction::RecvOnly),
                    "inactive" => Some(Direction::Inactive),
                    _ => None,
                };
                if let Some(d) = dir {
                    if in_audio {
                        media_dir = Some(d);
                    } else if audio.is_none() {
                        session_dir = d;
                    }
                }
                if in_audio
                    && let Some(map) = a.strip_prefix("rtpmap:")
                    && let Some((pt, enc)) = map.split_once(' ')
                    && enc.to_ascii_lowercase().starts_with("telephone-event/")
                    && let (Ok(pt), Some(au)) = (pt.parse(), audio.as_mut())
                {
                    au.telephone_event = Some(pt);
                }
            }
        }
        let mut audio = audio.ok_or(SdpError::NoAudio)?;
        audio.addr = media_addr.or(session_addr).ok_or(SdpError::NoAddress)?;
        audio.direction = media_dir.unwrap_or(session_dir);
        Ok(audio)
    }

    #[test]
    fn the_line_cap_is_where_it_was() {
        for n in [MAX_LINES - 1, MAX_LINES, MAX_LINES + 1] {
            for end in ["", "\r\n"] {
                let mut body = String::from("c=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0");
                for _ in 2..n {
                    body.push_str("\r\na=x");
                }
                body.push_str(end);
                assert_eq!(
                    parse(body.as_bytes()),
                    parse_by_lines(body.as_bytes()),
                    "{n} lines, ending {end:?}"
                );
            }
        }
        let mut over = String::from("c=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0\n");
        over.push_str(&"a=x\n".repeat(MAX_LINES));
        assert_eq!(parse(over.as_bytes()), Err(SdpError::Malformed));
    }

    proptest::proptest! {
        /// Any text of SDP-like lines (line ends of every kind, stray
        /// carriage returns, rtpmaps in any case, non-ASCII) is read as
        /// the `str::lines` parse read it.
        #[test]
        fn the_byte_loop_reads_as_the_lines_did(
            lines in proptest::collection::vec(
                "(v=0|m=audio [0-9]{1,5}(/2)? RTP/AVP( [0-9]{1,3}){0,4}|m=video 9 RTP/AVP 31|c=IN IP(4|6) [0-9a-f.:]{1,16}(/[0-9])?|a=(sendrecv|sendonly|recvonly|inactive)|a=rtpmap:[0-9]{1,3} (telephone-event|TELEPHONE-Event|PCMU|é)/8000|[a-zé ]{0,6})",
                0..12,
            ),
            ends in proptest::collection::vec("(\r\n|\n|\r\r\n|\r|)", 12),
        ) {
            let mut body = String::new();
            for (l, e) in lines.iter().zip(&ends) {
                body.push_str(l);
                body.push_str(e);
            }
            proptest::prop_assert_eq!(parse(body.as_bytes()), parse_by_lines(body.as_bytes()), "{:?}", body);
        }

        /// The hand-written body is byte for byte what `format!` makes,
        /// for any address, port, formats, event, direction and numbers.
        #[test]
        fn local_body_is_what_format_writes(
            v4 in proptest::prelude::any::<[u8; 4]>(),
            v6 in proptest::prelude::any::<[u16; 8]>(),
            ipv6 in proptest::prelude::any::<bool>(),
            port in proptest::prelude::any::<u16>(),
            formats in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            te in proptest::option::of(proptest::prelude::any::<u8>()),
            dir in 0u8..4,
            session in proptest::prelude::any::<u64>(),
            version in proptest::prelude::any::<u64>(),
        ) {
            let addr = if ipv6 {
                IpAddr::from(std::net::Ipv6Addr::from(v6))
            } else {
                IpAddr::from(v4)
            };
            let direction = [Direction::SendRecv, Direction::SendOnly, Direction::RecvOnly, Direction::Inactive][dir as usize];
            let l = Local { addr, port, formats: &formats, telephone_event: te, direction, session, version };
            proptest::prop_assert_eq!(String::from_utf8(l.to_bytes()).unwrap(), String::from_utf8(formatted(&l)).unwrap());
        }

        #[test]
        fn never_panics(s in "(v=0|m=audio [0-9]{1,6} RTP/AVP [0-9 ]{0,12}|c=IN IP[46] [0-9a-f.:]{0,20}|a=[a-z:0-9 /-]{0,20}|\\r\\n){0,12}") {
            let _ = parse(s.as_bytes());
            let _ = rewrite(s.as_bytes(), "127.0.0.1".parse().unwrap(), 1, &[0]);
        }
    }

    #[test]
    fn local_description_parses_back() {
        let l = Local {
            addr: "192.0.2.1".parse().unwrap(),
            port: 20002,
            formats: &[8, 0],
            telephone_event: Some(101),
            direction: Direction::RecvOnly,
            session: 42,
            version: 2,
        };
        let a = parse(&l.to_bytes()).unwrap();
        assert_eq!(a.addr, l.addr);
        assert_eq!(a.port, 20002);
        assert_eq!(a.formats, [8, 0, 101]);
        assert_eq!(a.telephone_event, Some(101));
        assert_eq!(a.direction, Direction::RecvOnly);
        assert_eq!(a.choose(&[Law::Ulaw, Law::Alaw]), Some(Law::Alaw));
        let v6 = Local {
            addr: "::1".parse().unwrap(),
            telephone_event: None,
            ..l
        };
        let text = String::from_utf8(v6.to_bytes()).unwrap();
        assert!(text.contains("c=IN IP6 ::1\r\n") && !text.contains("telephone"));
        assert_eq!(Direction::SendOnly.answer(), Direction::RecvOnly);
    }

    #[test]
    fn media_is_never_sent_to_groups_reserved_ranges_or_loopback_from_afar() {
        let far: IpAddr = "198.51.100.7".parse().unwrap();
        let here: IpAddr = "127.0.0.1".parse().unwrap();
        for (addr, why) in [
            ("224.0.0.1", Some("multicast")),
            ("239.1.2.3", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("0.1.2.3", Some("reserved")),
            ("240.0.0.1", Some("reserved")),
            ("127.0.0.1", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:224.0.0.1", Some("multicast")),
            ("0.0.0.0", None),
            ("192.0.2.21", None),
            ("10.0.0.5", None),
            ("2001:db8::5", None),
        ] {
            assert_eq!(refused_address(addr.parse().unwrap(), far), why, "{addr}");
        }
        // A peer on this host (tests, a local SBC) may name loopback.
        assert_eq!(refused_address(here, here), None);
        assert_eq!(
            refused_address("::1".parse().unwrap(), "::1".parse().unwrap()),
            None
        );
    }
}
