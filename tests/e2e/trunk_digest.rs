//! Digest towards carriers (RFC 3261 §22.2): a carrier that challenges our
//! INVITE gets it once more with our credentials (same Call-ID, CSeq + 1,
//! a new branch), and a second challenge ends the attempt. The carrier is
//! a hand-written UDP peer that checks the answer itself.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Node, Scratch, one_answering_phone};
use centralino_sip::auth::{Algorithm, parse_authorization};

const TOKEN: &str = "desk-token-0123456789";
const USER: &str = "centralino-asl";
const PASSWORD: &str = "s3cret-Pa55-never-logged";

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A carrier that answers every INVITE with a 401 (SHA-256 offered
/// beside MD5, qop=auth) and keeps the INVITEs.
fn challenging_carrier() -> (u16, Arc<Mutex<Vec<String>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind carrier");
    let port = sock.local_addr().expect("addr").port();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::downgrade(&got);
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Some(got) = keep.upgrade() {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !msg.starts_with("INVITE ") {
                continue;
            }
            got.lock().unwrap().push(msg.clone());
            let mut r = "SIP/2.0 401 Unauthorized\r\n".to_owned();
            for h in ["Via", "From", "Call-ID", "CSeq"] {
                if let Some(v) = header(&msg, h) {
                    r.push_str(&format!("{h}: {v}\r\n"));
                }
            }
            let to = header(&msg, "To").unwrap_or_default();
            r.push_str(&format!("To: {to};tag=carrier401\r\n"));
            r.push_str("WWW-Authenticate: Digest realm=\"carrier.example\", nonce=\"n0nce-1\", qop=\"auth\", algorithm=MD5\r\n");
            r.push_str("WWW-Authenticate: Digest realm=\"carrier.example\", nonce=\"n0nce-1\", qop=\"auth\", algorithm=SHA-256, opaque=\"op4que\"\r\n");
            r.push_str("Content-Length: 0\r\n\r\n");
            let _ = sock.send_to(r.as_bytes(), from);
        }
    });
    (port, got)
}

/// The callback's INVITE is challenged: it goes again once, with a
/// correct SHA-256 answer (the stronger algorithm offered), same Call-ID,
/// CSeq + 1 and a new branch; challenged again, it is not sent a third
/// time and the attempt fails as any refusal does. The password never
/// reaches the log.
#[test]
fn challenged_invite_is_sent_again_once_with_credentials() {
    let scratch = Scratch::new("trunk-digest");
    let (carrier, got) = challenging_carrier();
    let node = Node::start_toml_log(&scratch, "debug", |sip, http| {
        format!(
            r#"[sip]
listen = ["127.0.0.1:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[[api.tokens]]
name = "desk"
token = "{TOKEN}"
role = "admin"

[[tenants]]
name = "demo"

[[trunks]]
name = "carrier"
tenant = "demo"
peers = ["127.0.0.9"]
outbound = "127.0.0.1:{carrier}"
caller_id = "+39800123456"
auth_username = "{USER}"
auth_password = "{PASSWORD}"

[[queues]]
name = "info"
tenant = "demo"
ring_timeout_seconds = 10

[[agents]]
username = "1001"
password = "demo1001"
tenant = "demo"
queues = ["info"]
"#
        )
    });
    let mut phone = one_answering_phone(&scratch, &node);
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some(TOKEN),
        Some(r#"{"queue": "info", "number": "+393471234567"}"#),
    );
    assert_eq!(code, 201, "{body}");
    // The operator answers, the citizen's INVITE is refused twice, the
    // operator is hung up on.
    phone.expect_success(Duration::from_secs(30));
    node.wait_metric(
        "centralino_trunk_auth_total{outcome=\"refused\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    assert_eq!(
        node.metric("centralino_trunk_auth_total{outcome=\"answered\"}"),
        1.0
    );
    let invites = got.lock().unwrap().clone();
    assert_eq!(invites.len(), 2, "{invites:#?}");
    let (first, second) = (&invites[0], &invites[1]);
    assert!(header(first, "Authorization").is_none(), "{first}");
    assert_eq!(header(first, "Call-ID"), header(second, "Call-ID"));
    assert_eq!(header(first, "CSeq"), Some("1 INVITE"));
    assert_eq!(header(second, "CSeq"), Some("2 INVITE"));
    let branch = |m: &str| {
        header(m, "Via")
            .and_then(|v| v.split("branch=").nth(1))
            .map(str::to_owned)
    };
    assert_ne!(branch(first), branch(second));
    assert_eq!(
        first.split("\r\n\r\n").nth(1),
        second.split("\r\n\r\n").nth(1),
        "the same offer"
    );
    let auth = header(second, "Authorization").expect("credentials on the second INVITE");
    let d = parse_authorization(auth).expect("digest");
    assert_eq!(d.username, USER);
    assert_eq!(d.realm, "carrier.example");
    assert_eq!(d.algorithm.as_deref(), Some("SHA-256"));
    assert_eq!(d.qop.as_deref(), Some("auth"));
    assert_eq!(d.nc.as_deref(), Some("00000001"));
    assert!(auth.contains("opaque=\"op4que\""), "{auth}");
    let cnonce = d.cnonce.expect("cnonce");
    let ruri = second.split(' ').nth(1).expect("request uri");
    assert_eq!(d.uri, ruri);
    let h = |s: &str| Algorithm::Sha256.hex(s);
    let ha1 = h(&format!("{USER}:carrier.example:{PASSWORD}"));
    let ha2 = h(&format!("INVITE:{ruri}"));
    assert_eq!(
        d.response,
        h(&format!("{ha1}:n0nce-1:00000001:{cnonce}:auth:{ha2}"))
    );
    assert!(!node.logs().contains(PASSWORD), "the password was logged");
}
