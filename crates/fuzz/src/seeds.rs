//! Seeds made in code or read from the repository's own test material
//! (the RFC 4475 torture messages of `crates/sip/tests/vectors`, the
//! embedded configuration). Files under `crates/fuzz/corpus/<target>/`
//! are added by the runner.

use std::path::Path;
use std::time::Instant;

use centralino_media::g711::Law;
use centralino_media::rtp::{self, Header};
use centralino_media::sdp::{Direction, Local};
use centralino_sip::auth::Algorithm;

use crate::targets::{AUTH_REALM, auth_fixture};

/// The RFC 4475 messages (read from the source tree; none when absent).
pub fn sip_vectors() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sip/tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "dat"));
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

const INVITE: &str = "INVITE sip:100@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::10]:5070;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:100@127.0.0.1>\r\n\
From: \"Mario\" <sip:+393331234567@192.0.2.1>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+393331234567@[2001:db8::10]:5070>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

const MESSAGES: &[&str] = &[
    INVITE,
    "REGISTER sip:centralino SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.7:5070;branch=z9hG4bK-reg1\r\nMax-Forwards: 70\r\nFrom: <sip:1001@centralino>;tag=a1\r\nTo: <sip:1001@centralino>\r\nCall-ID: reg-1@192.0.2.7\r\nCSeq: 2 REGISTER\r\nContact: <sip:1001@192.0.2.7:5070>;expires=3600, <sip:1001@192.0.2.8>;q=0.5\r\nAuthorization: Digest username=\"1001\", realm=\"centralino\", nonce=\"abc\", uri=\"sip:centralino\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5\r\nExpires: 3600\r\nl: 0\r\n\r\n",
    "SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;received=192.0.2.1\r\nf: <sip:a@h>;tag=1\r\nt: <sip:b@h>;tag=2\r\ni: x@y\r\nCSeq: 1 INVITE\r\nm: <sip:b@192.0.2.2>\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nl: 0\r\n\r\n",
    "ACK sip:b@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x@y\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n\r\n",
    "BYE sip:b@192.0.2.2 SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK3\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>;tag=2\nCall-ID: x@y\nCSeq: 2 BYE\n\n",
    "CANCEL sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP h:5070;branch=z9hG4bK776asdhds\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: a84b4c76e66710@pc33\r\nCSeq: 314159 CANCEL\r\nContent-Length: 0\r\n\r\n",
    "INFO sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK9\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x@y\r\nCSeq: 3 INFO\r\nContent-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n",
    "OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK4\r\nFrom: sip:a@h;tag=1\r\nTo: sip:h\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\nSubject: folded\r\n  over two lines\r\n\r\n",
    "\r\n\r\n",
    "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK5\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x@y\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"centralino\", nonce=\"n\", algorithm=SHA-256, qop=\"auth\"\r\nContent-Length: 0\r\n\r\n",
];

/// SIP messages: the torture vectors and a few of every kind the node sees.
pub fn sip() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = MESSAGES.iter().map(|m| m.as_bytes().to_vec()).collect();
    out.extend(sip_vectors());
    out
}

/// Stream seeds: each message behind the control bytes of the stream
/// target (whole, byte by byte, small pieces, MTU pieces, tight caps),
/// and pipelined pairs.
pub fn sip_stream() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for m in sip() {
        out.push([&[0u8][..], &m].concat());
    }
    for (ctl, m) in [
        (1u8, INVITE),
        (0x0A, MESSAGES[1]),
        (3, MESSAGES[2]),
        (0x80, INVITE),
    ] {
        out.push([&[ctl][..], m.as_bytes(), b"\r\n\r\n", m.as_bytes()].concat());
    }
    out
}

/// A digest answer of user 1001 to the auth target's challenge.
fn answer(alg: Algorithm, nonce: &str, nc: &str, qop: bool) -> String {
    let uri = "sip:centralino";
    let ha1 = alg.hex(&format!("1001:{AUTH_REALM}:demo1001"));
    let ha2 = alg.hex(&format!("REGISTER:{uri}"));
    let (resp, tail) = if qop {
        (
            alg.hex(&format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}")),
            format!(", cnonce=\"c0ffee\", qop=auth, nc={nc}"),
        )
    } else {
        (alg.hex(&format!("{ha1}:{nonce}:{ha2}")), String::new())
    };
    format!(
        "Digest username=\"1001\", realm=\"{AUTH_REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}{tail}",
        alg.token()
    )
}

/// Authorization values: valid answers (SHA-256, MD5, with and without
/// qop) to the target's own nonce, and the odd ones of the vectors.
pub fn sip_auth() -> Vec<Vec<u8>> {
    let (_, nonce) = auth_fixture(Instant::now());
    let mut out: Vec<Vec<u8>> = vec![
        answer(Algorithm::Sha256, &nonce, "00000001", true),
        answer(Algorithm::Md5, &nonce, "0000000a", true),
        answer(Algorithm::Md5, &nonce, "", false),
        format!(
            "{}\n{}",
            answer(Algorithm::Sha256, &nonce, "00000002", true),
            answer(Algorithm::Md5, &nonce, "00000003", true)
        ),
        "NoOneKnowsThisScheme opaque-data=here".to_owned(),
        "Digest username=\"a\\\"b\", realm=\"centralino\", nonce=\"\", uri=\"sip:x\", response=\"\"".to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    out.extend(header_values(&["Authorization", "Proxy-Authorization"]));
    out
}

/// The values of the named headers in the torture vectors.
fn header_values(names: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in sip_vectors() {
        let text = String::from_utf8_lossy(&v);
        for line in text.lines() {
            if let Some((n, value)) = line.split_once(':')
                && names.iter().any(|w| n.trim().eq_ignore_ascii_case(w))
            {
                out.push(value.trim().as_bytes().to_vec());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Addresses: From, To, Contact, Route values of the vectors and more.
pub fn sip_uri() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        "\"Mario Rossi\" <sip:+393331234567@192.0.2.1;user=phone>;tag=1928301774",
        "<sips:1001@[2001:db8::1]:5061;transport=tcp>;expires=60;q=0.7",
        "sip:1001@centralino;tag=x",
        "tel:+390612345678;phone-context=+39",
        "*",
        "<sip:a@h>, \"b, c\" <sip:b@h>, sip:c@h",
        "Anonymous <sip:anonymous@anonymous.invalid>;tag=\"quoted\"",
        "<sip:%41lice@h?subject=x&priority=urgent>",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    out.extend(header_values(&[
        "From",
        "f",
        "To",
        "t",
        "Contact",
        "m",
        "Route",
        "Record-Route",
    ]));
    out
}

/// SDP bodies: our own offers (IPv4, IPv6, hold), a peer's, and the
/// bodies of the vectors.
pub fn sdp() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (addr, dir, te) in [
        ("192.0.2.1", Direction::SendRecv, Some(101)),
        ("2001:db8::1", Direction::SendOnly, None),
        ("0.0.0.0", Direction::Inactive, Some(96)),
    ] {
        let local = Local {
            addr: addr
                .parse()
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
            port: 20_002,
            formats: &[8, 0],
            telephone_event: te,
            direction: dir,
            session: 42,
            version: 2,
        };
        out.push(local.to_bytes());
    }
    out.push(b"v=0\r\no=- 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\nm=audio 40000 RTP/AVP 18 8 0 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 198.51.100.1\r\n".to_vec());
    out.push(b"v=0\no=x 2 3 IN IP6 ::1\ns= \nc=IN IP6 ::1/127\nt=0 0\na=recvonly\nm=audio 5004/2 RTP/SAVP 0\nm=audio 6000 RTP/AVP 8\n".to_vec());
    for m in sip_vectors() {
        if let Some(at) = m.windows(4).position(|w| w == b"\r\n\r\n")
            && m[at + 4..].starts_with(b"v=0")
        {
            out.push(m[at + 4..].to_vec());
        }
    }
    out
}

fn packet(marker: bool, pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        marker,
        payload_type: pt,
        seq,
        timestamp: ts,
        ssrc: 0x1234_5678,
    };
    let mut buf = vec![0u8; rtp::HEADER_LEN + payload.len()];
    let n = rtp::write(&h, payload, &mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// One datagram record of the rtp target: `[ctl][len][bytes]`.
pub fn record(ctl: u8, dgram: &[u8]) -> Vec<u8> {
    let len = u8::try_from(dgram.len()).unwrap_or(0);
    let mut v = vec![ctl, len];
    v.extend_from_slice(dgram);
    v
}

/// RTP: audio both ways, a key press as RFC 4733 events, a stranger's
/// packet, the header options (CSRCs, extension, padding), an RTCP
/// report on the RTP port.
pub fn rtp() -> Vec<Vec<u8>> {
    let alaw = [Law::Alaw.encode(1000); 160];
    let ulaw = [Law::Ulaw.encode(-1000); 160];
    let mut call = Vec::new();
    for i in 0..4u16 {
        call.extend(record(
            0x08,
            &packet(i == 0, 8, 100 + i, 160 * u32::from(i), &alaw),
        ));
        call.extend(record(
            0x0B,
            &packet(i == 0, 0, 7 + i, 160 * u32::from(i), &ulaw),
        ));
    }
    for (k, (end, dur)) in [(false, 0u16), (false, 160), (true, 320), (true, 320)]
        .iter()
        .enumerate()
    {
        let ev = [5, (u8::from(*end) << 7) | 10, (dur >> 8) as u8, *dur as u8];
        call.extend(record(0x08, &packet(k == 0, 101, 104 + k as u16, 640, &ev)));
    }
    call.extend(record(0x04, &packet(false, 8, 999, 0, &alaw[..20])));
    let mut csrc = packet(false, 8, 1, 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
    csrc[0] |= 2;
    let mut ext = packet(false, 0, 2, 2, &[0xBE, 0xDE, 0, 1, 1, 2, 3, 4, 9, 9]);
    ext[0] |= 0x10;
    let mut pad = packet(false, 8, 3, 3, &[1, 2, 3, 0, 0, 4]);
    pad[0] |= 0x20;
    let rtcp = vec![
        0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut out = vec![call];
    for p in [csrc, ext, pad, rtcp] {
        out.push(record(0, &p));
        out.push(p);
    }
    out
}

/// RFC 4733: a key press with its redundant end packets, a long press
/// across timestamp segments, a reordered packet.
pub fn dtmf() -> Vec<Vec<u8>> {
    let rec = |ts: u32, code: u8, end: bool, dur: u16| {
        let mut v = ts.to_be_bytes().to_vec();
        v.extend_from_slice(&[code, (u8::from(end) << 7) | 10]);
        v.extend_from_slice(&dur.to_be_bytes());
        v
    };
    vec![
        [
            rec(1000, 5, false, 0),
            rec(1000, 5, false, 160),
            rec(1000, 5, true, 480),
            rec(1000, 5, true, 480),
            rec(3000, 11, false, 160),
            rec(1000, 5, true, 480),
        ]
        .concat(),
        [
            rec(0, 3, false, 65535),
            rec(65535, 3, false, 8000),
            rec(65535, 3, true, 9000),
            rec(90_000, 16, false, 0),
        ]
        .concat(),
    ]
}

/// A RIFF/WAVE file of PCM samples.
fn wav_file(tag: u16, channels: u16, rate: u32, bits: u16, frames: usize) -> Vec<u8> {
    let width = usize::from(bits / 8) * usize::from(channels);
    let data: Vec<u8> = (0..frames * width).map(|i| (i * 37) as u8).collect();
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&tag.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate * width as u32).to_le_bytes());
    fmt.extend_from_slice(&(width as u16).to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    if tag == 0xFFFE {
        fmt.extend_from_slice(&[22, 0, 16, 0, 4, 0, 0, 0, 1, 0]);
        fmt.extend_from_slice(&[0; 14]);
    }
    let mut out = b"RIFF\0\0\0\0WAVE".to_vec();
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    out.extend_from_slice(&fmt);
    out.extend_from_slice(b"LIST\x03\0\0\0abc\0");
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    let riff = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    out
}

/// WAV prompts: 8 kHz mono 16-bit, 44.1 kHz stereo 16-bit, 8-bit,
/// WAVE_FORMAT_EXTENSIBLE.
pub fn wav() -> Vec<Vec<u8>> {
    vec![
        wav_file(1, 1, 8000, 16, 200),
        wav_file(1, 2, 44_100, 16, 300),
        wav_file(1, 1, 11_025, 8, 100),
        wav_file(0xFFFE, 1, 16_000, 16, 50),
        wav_file(3, 1, 8000, 32, 10),
    ]
}

/// The embedded configuration (the rest is in `corpus/config/`).
pub fn config() -> Vec<Vec<u8>> {
    vec![centralino_config::DEFAULT_TOML.as_bytes().to_vec()]
}

/// Flows are all in `corpus/flows/`.
pub fn flows() -> Vec<Vec<u8>> {
    Vec::new()
}

/// Requirement expressions over the target's catalog.
pub fn requirement() -> Vec<Vec<u8>> {
    [
        "true",
        "vaccini",
        "vaccini >= 5 && lang == \"it\"",
        "!(triage < 3) || site != \"roma\"",
        "((info == 10)) && tenant == \"demo\" && queue == \"vaccini\"",
        "lang==\"en\"||lang==\"de\"",
        "!!!true",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// API bodies, each behind its kind byte (see `centralino_net::fuzz_api_body`).
pub fn api() -> Vec<Vec<u8>> {
    [
        (0u8, r#"{"queue":"info","number":"+393331234567","not_before":"2026-12-01T09:00:00+01:00","requirements":"vaccini >= 2","priority":5}"#),
        (0, r#"{"queue":"info","number":"0612345678","not_before":1796000000}"#),
        (0, r#"{"queue":"nope","number":"12","priority":1000,"not_before":"2026-02-30T25:00:00Z"}"#),
        (1, r#"{"not_before":null,"priority":-100,"requirements":null}"#),
        (1, r#"{"not_before":"2026-12-01T09:00:00.123Z","requirements":"lang == \"it\""}"#),
        (2, r#"{"username":"1001","password":"demo1001"}"#),
        (2, r#"{"username":"","password":""}"#),
        (3, r#"{"state":"paused","reason":"pausa_pranzo"}"#),
        (3, r#"{"state":"available"}"#),
        (4, r#"{"agent":"1001","answers":{"a":"si","b":"01012000"}}"#),
    ]
    .iter()
    .map(|(k, b)| [&[*k][..], b.as_bytes()].concat())
    .collect()
}
