//! Integration tests of the SIP message layer: RFC 4475 torture messages
//! through the ingress guard, on datagram and stream framing.

// Tests may read the clock and files: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use centralino_sip::guard::{Framed, Limits, StreamFramer, parse_datagram};

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the guard must do with each message: `Ok` = accepted by the parser
/// (the element decides the answer), or the refusal and its reply status
/// (0 = dropped without a reply).
fn expected(name: &str) -> Result<(), (&'static str, u16)> {
    match name {
        "badaspec.dat" | "baddn.dat" | "quotbal.dat" | "regbadct.dat" => Err(("bad_address", 400)),
        "badbranch.dat" | "badinv01.dat" => Err(("bad_via", 400)),
        "badvers.dat" => Err(("bad_version", 505)),
        "bigcode.dat" => Err(("bad_status_code", 0)),
        "clerr.dat" | "ncl.dat" | "mcl01.dat" => Err(("bad_content_length", 400)),
        "escruri.dat" | "ltgtruri.dat" => Err(("bad_request_uri", 400)),
        "insuf.dat" => Err(("missing_header", 400)),
        "lwsruri.dat" | "lwsstart.dat" | "trws.dat" => Err(("bad_start_line", 400)),
        "mismatch01.dat" => Err(("cseq_mismatch", 400)),
        "mismatch02.dat" => Err(("cseq_mismatch", 501)),
        "multi01.dat" => Err(("repeated_header", 400)),
        "scalar02.dat" => Err(("bad_cseq", 400)),
        "scalarlg.dat" => Err(("bad_cseq", 0)),
        _ => Ok(()),
    }
}

fn all_vectors() -> Vec<String> {
    let dir = format!("{}/tests/vectors", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dat"))
        .collect();
    names.sort();
    names
}

#[test]
fn vectors_match_their_checksums() {
    let sums = String::from_utf8(vector("SHA256SUMS")).unwrap();
    let mut checked = 0;
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        let data = vector(name.trim());
        use sha2::Digest as _;
        let got: String = sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, sum, "{name} is not byte-exact (line ends rewritten?)");
        checked += 1;
    }
    assert_eq!(checked, 49);
    assert_eq!(all_vectors().len(), 49);
}

#[test]
fn rfc4475_verdicts_on_datagrams() {
    let limits = Limits::default();
    for name in all_vectors() {
        let got = parse_datagram(&vector(&name), &limits);
        match (expected(&name), got) {
            (Ok(()), Ok(Framed::Message(_))) => {}
            (Err((code, status)), Err(rej)) => {
                assert_eq!(rej.error.code(), code, "{name}");
                let reply = rej.reply.as_ref().map_or(0, |r| r.code());
                assert_eq!(reply, status, "{name}");
                if let Some(r) = rej.reply {
                    // The reply echoes only the mandatory headers, never input text elsewhere.
                    assert!(
                        r.headers.iter().all(|h| matches!(
                            &*h.name,
                            "Via" | "From" | "To" | "Call-ID" | "CSeq"
                        ))
                    );
                }
            }
            (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn dblreq_trailing_invite_is_ignored() {
    let Ok(Framed::Message(m)) = parse_datagram(&vector("dblreq.dat"), &Limits::default()) else {
        panic!("dblreq refused");
    };
    assert_eq!(m.method().as_str(), "REGISTER");
    assert!(m.body.is_empty());
}

#[test]
fn mpart01_binary_body_is_framed_by_content_length() {
    let Ok(Framed::Message(m)) = parse_datagram(&vector("mpart01.dat"), &Limits::default()) else {
        panic!("mpart01 refused");
    };
    assert_eq!(
        m.body.len(),
        m.header("Content-Length")
            .map_or(m.body.len(), |v| v.parse().unwrap())
    );
    assert!(m.body.contains(&0));
}

#[test]
fn rfc4475_on_a_stream_split_at_every_byte() {
    let limits = Limits::default();
    for name in ["wsinv.dat", "longreq.dat", "mpart01.dat", "intmeth.dat"] {
        let data = vector(name);
        let whole = parse_datagram(&data, &limits).ok();
        for split in [1, data.len() / 3, data.len() / 2, data.len() - 1] {
            let mut f = StreamFramer::default();
            f.push(&data[..split]);
            assert!(
                f.next_message(&limits).unwrap().is_none(),
                "{name} dispatched incomplete at {split}"
            );
            f.push(&data[split..]);
            let got = f.next_message(&limits).unwrap();
            match (&whole, got) {
                (Some(Framed::Message(a)), Some(Framed::Message(b))) => assert_eq!(a, &b, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}

#[test]
fn stream_framing_errors_close_the_connection() {
    let limits = Limits::default();
    for name in ["ncl.dat", "mcl01.dat"] {
        let mut f = StreamFramer::default();
        f.push(&vector(name));
        let err = f.next_message(&limits).unwrap_err();
        assert!(err.error.breaks_framing(), "{name}");
        assert_eq!(err.reply.map(|r| r.code()), Some(400), "{name}");
    }
    // clerr: Content-Length larger than the data means "wait for more".
    let mut f = StreamFramer::default();
    f.push(&vector("clerr.dat"));
    assert!(f.next_message(&limits).unwrap().is_none());
}

/// TEST-MATRIX A3 (CI size): a seeded mutator over the RFC 4475 corpus —
/// bit flips, byte replacement, truncation, duplication, insertion of CR/LF,
/// NUL, ':' and ';' — through datagram and stream framing. The property is
/// "no panic and every refusal carries a bounded reply".
#[test]
fn mutation_fuzz_never_panics() {
    let corpus: Vec<Vec<u8>> = all_vectors().iter().map(|n| vector(n)).collect();
    let limits = Limits::default();
    // xorshift64*: deterministic, seedable from the environment for reruns.
    let mut seed: u64 = std::env::var("CENTRALINO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    const SPECIAL: &[u8] = b"\r\n\0:;,<>\"\\ \t%@=";
    for _ in 0..20_000 {
        let base = &corpus[(next() % corpus.len() as u64) as usize];
        let mut m = base.clone();
        for _ in 0..=(next() % 4) {
            if m.is_empty() {
                break;
            }
            let pos = (next() % m.len() as u64) as usize;
            match next() % 6 {
                0 => m[pos] ^= 1 << (next() % 8),
                1 => m[pos] = SPECIAL[(next() % SPECIAL.len() as u64) as usize],
                2 => m.truncate(pos),
                3 => {
                    let end = (pos + (next() % 64) as usize).min(m.len());
                    let chunk = m[pos..end].to_vec();
                    m.splice(pos..pos, chunk);
                }
                4 => m.insert(pos, SPECIAL[(next() % SPECIAL.len() as u64) as usize]),
                _ => m[pos] = (next() & 0xff) as u8,
            }
        }
        if let Err(r) = parse_datagram(&m, &limits)
            && let Some(reply) = r.reply
        {
            assert!(reply.to_bytes().len() <= m.len() + 512);
        }
        let mut f = StreamFramer::default();
        f.push(&m);
        for _ in 0..4 {
            match f.next_message(&limits) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
