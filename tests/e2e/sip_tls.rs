//! SIP over TLS end to end (RFC 3261 §26; TEST-MATRIX D10, and D1 "same
//! behaviour over UDP, TCP, TLS"): the real binary with a TLS listener,
//! carriers played by Rust (rustls, the node's own stack; Debian's SIPp has
//! no TLS) and `openssl s_client`, operators' phones by SIPp over UDP.
//! Certificates are made per test by the `openssl` command.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Node, Scratch, free_port, one_answering_phone};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The DNS name in the carrier's certificate.
const CARRIER_NAME: &str = "sbc.carrier.example";

/// Test certificates: one CA, and leaves it signs.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(scratch: &Scratch) -> Self {
        let dir = scratch.path("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Self { dir };
        pki.ca("ca");
        pki
    }

    pub(crate) fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA `name.pem` / `name.key`.
    fn ca(&self, name: &str) {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ]);
    }

    /// A leaf `name.pem` / `name.key` signed by CA `ca`, with these SANs
    /// (`DNS:x`, `IP:y`), for servers and clients both.
    pub(crate) fn leaf(&self, name: &str, ca: &str, sans: &str) {
        let ext = format!("{name}.cnf");
        std::fs::write(
            self.path(&ext),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .expect("ext");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    pub(crate) fn s(&self, f: &str) -> String {
        self.path(f).to_string_lossy().into_owned()
    }
}

pub(crate) fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("pem")
        .collect::<Result<_, _>>()
        .expect("certs")
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).expect("key")
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// One SIP peer on a TLS stream (either end): whole messages in and out.
struct TlsSip<S: Read + Write> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> TlsSip<S> {
    fn send(&mut self, text: &str) {
        let wire = text.replace("\r\n", "\n").replace('\n', "\r\n");
        self.stream.write_all(wire.as_bytes()).expect("tls write");
        self.stream.flush().expect("tls flush");
    }

    /// The next whole message, `None` on end of stream or after `limit`.
    fn recv(&mut self, limit: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        (n.eq_ignore_ascii_case("content-length") || n == "l")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let msg: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    return Some(String::from_utf8_lossy(&msg).into_owned());
                }
            }
            // Keepalives (CRLF) between messages.
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if start.elapsed() > limit {
                return None;
            }
            let mut chunk = [0u8; 16_384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next final response (provisional ones skipped).
    fn final_response(&mut self, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            let msg = self.recv(left).expect("a response before the limit");
            if !msg.starts_with("SIP/2.0 1") {
                return msg;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

type ClientStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A carrier's TLS client towards the node's TLS port, trusting `ca`,
/// with `client` (cert, key) when given.
fn connect(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<TlsSip<ClientStream>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((c, k)) => builder
            .with_client_auth_cert(certs(c), key(k))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("127.0.0.1").expect("name"),
    )?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the TLS port");
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake now, so a refusal shows here.
    let start = Instant::now();
    while stream.conn.is_handshaking() {
        match stream.conn.complete_io(&mut stream.sock) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && start.elapsed() < Duration::from_secs(5) => {}
            Err(e) => {
                return Err(e
                    .into_inner()
                    .and_then(|i| i.downcast::<rustls::Error>().ok())
                    .map_or(rustls::Error::General("handshake".into()), |b| *b));
            }
        }
    }
    Ok(TlsSip {
        stream,
        buf: Vec::new(),
    })
}

/// A carrier's INVITE to DID 100 of the node at `port`, sent over
/// `transport` (`UDP`, `TLS`).
fn invite_text(transport: &str, port: u16, tag: &str) -> String {
    let lower = transport.to_ascii_lowercase();
    invite_to(
        transport,
        &format!("sip:100@127.0.0.1:{port};transport={lower}"),
        tag,
    )
}

/// The same INVITE to Request-URI `ruri`.
fn invite_to(transport: &str, ruri: &str, tag: &str) -> String {
    let sdp = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 40000 RTP/AVP 8 0\na=rtpmap:8 PCMA/8000\n";
    let sdp = sdp.replace('\n', "\r\n");
    let lower = transport.to_ascii_lowercase();
    format!(
        "INVITE {ruri} SIP/2.0\n\
         Via: SIP/2.0/{transport} 127.0.0.1:5061;branch=z9hG4bK-{tag}\n\
         Max-Forwards: 70\n\
         From: <sip:+39333000111@carrier.example>;tag=c{tag}\n\
         To: <sip:100@127.0.0.1>\n\
         Call-ID: {tag}@carrier\n\
         CSeq: 1 INVITE\n\
         Contact: <sip:+39333000111@127.0.0.1:5061;transport={lower}>\n\
         Content-Type: application/sdp\n\
         Content-Length: {}\n\n{sdp}",
        sdp.len()
    )
}

/// A call from the TLS carrier to DID 100: INVITE, the node's final
/// answer returned (ACKed when 200).
fn invite_over_tls<S: Read + Write>(sip: &mut TlsSip<S>, node_tls: u16, tag: &str) -> String {
    sip.send(&invite_text("TLS", node_tls, tag));
    let answer = sip.final_response(Duration::from_secs(20));
    if answer.starts_with("SIP/2.0 200") {
        let to = header(&answer, "To").expect("To");
        let contact = header(&answer, "Contact").expect("Contact");
        let target = contact
            .trim_start_matches('<')
            .split('>')
            .next()
            .expect("uri");
        sip.send(&format!(
            "ACK {target} SIP/2.0\n\
             Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-ack{tag}\n\
             Max-Forwards: 70\n\
             From: <sip:+39333000111@carrier.example>;tag=c{tag}\n\
             To: {to}\n\
             Call-ID: {tag}@carrier\n\
             CSeq: 1 ACK\n\
             Content-Length: 0\n\n"
        ));
    }
    answer
}

/// Ends the call `invite_over_tls` set up: the node's answer to BYE.
fn bye_over_tls<S: Read + Write>(sip: &mut TlsSip<S>, answer: &str, tag: &str) -> String {
    let to = header(answer, "To").expect("To");
    let contact = header(answer, "Contact").expect("Contact");
    let target = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("uri");
    sip.send(&format!(
        "BYE {target} SIP/2.0\n\
         Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-bye{tag}\n\
         Max-Forwards: 70\n\
         From: <sip:+39333000111@carrier.example>;tag=c{tag}\n\
         To: {to}\n\
         Call-ID: {tag}@carrier\n\
         CSeq: 2 BYE\n\
         Content-Length: 0\n\n"
    ));
    sip.final_response(Duration::from_secs(10))
}

/// The node's configuration: UDP for the operators, TLS for carriers;
/// `trunk` is the `[[trunks]]` table's extra lines.
fn tls_node(scratch: &Scratch, pki: &Pki, tls_port: u16, trunk: &str, extra: &str) -> Node {
    let (cert, key) = (pki.s("node.pem"), pki.s("node.key"));
    let trunk = trunk.to_owned();
    let extra = extra.to_owned();
    Node::start_toml(scratch, move |sip, http| {
        format!(
            r#"[sip]
listen = ["127.0.0.1:{sip}"]
transports = ["udp", "tls"]
tls_listen = ["127.0.0.1:{tls_port}"]
tls_cert_file = "{cert}"
tls_key_file = "{key}"
digest_algorithms = ["MD5"]
{extra}
[http]
listen = "127.0.0.1:{http}"

[[tenants]]
name = "demo"

[[trunks]]
name = "carrier"
tenant = "demo"
peers = ["127.0.0.1"]
dids = {{ "100" = "info" }}
{trunk}

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
    })
}

fn node_pki(scratch: &Scratch) -> Pki {
    let pki = Pki::new(scratch);
    pki.leaf("node", "ca", "IP:127.0.0.1,DNS:centralino.test");
    pki.leaf("carrier", "ca", &format!("DNS:{CARRIER_NAME},IP:127.0.0.1"));
    pki
}

/// A carrier reaches an operator over TLS: the call is answered on the
/// same connection (Contact `transport=tls`, our Via answered as sent),
/// and a BYE on that connection ends it for the operator too.
#[test]
fn tls_trunk_call_reaches_an_operator() {
    let scratch = Scratch::new("tls-call");
    let pki = node_pki(&scratch);
    let tls_port = free_port();
    let node = tls_node(&scratch, &pki, tls_port, "", "");
    node.wait_log("SIP listening on TLS", Duration::from_secs(5));
    let mut phone = one_answering_phone(&scratch, &node);
    let mut sip = connect(tls_port, &pki.path("ca.pem"), None).expect("handshake");
    let answer = invite_over_tls(&mut sip, tls_port, "t1");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let contact = header(&answer, "Contact").expect("Contact");
    assert!(contact.contains("transport=tls"), "{contact}");
    assert!(
        header(&answer, "Via").is_some_and(|v| v.starts_with("SIP/2.0/TLS")),
        "{answer}"
    );
    let bye = bye_over_tls(&mut sip, &answer, "t1");
    assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    phone.expect_success(Duration::from_secs(30));
    assert_eq!(
        node.metric("centralino_sip_requests_total{direction=\"in\",method=\"INVITE\"}"),
        1.0
    );
}

/// TLS handshakes run on the stream threads (`sip-stream-N`), not on the
/// engine's: phones reconnecting by the hundred after a network blip
/// must not hold every call's signalling. Handshakes until the stream
/// threads have spent 0.6 s of CPU on them (bounded in time); the
/// engine's thread (the main one) meanwhile only hears of each
/// connection opening and closing: about a sixth of that here, where the
/// handshakes on the engine's thread cost it everything (721 ticks for
/// 10,000, none on stream threads).
#[test]
fn tls_handshakes_run_on_the_stream_threads_not_the_engines() {
    let scratch = Scratch::new("tls-threads");
    let pki = node_pki(&scratch);
    let tls_port = free_port();
    let node = tls_node(&scratch, &pki, tls_port, "", "");
    node.wait_log("SIP listening on TLS", Duration::from_secs(5));
    let pid = node.pid();
    let sample = || crate::sip_io::by_thread(pid, crate::sip_io::cpu_in);
    let before = sample();
    // (engine's ticks, the stream threads' ticks) since `before`
    let spent = |now: &[(u32, String, u64)]| {
        let d = crate::sip_io::ticks_between(&before, now);
        (
            crate::sip_io::ticks_of(&d, |id, _| id == pid),
            crate::sip_io::ticks_of(&d, |_, name| name.starts_with("sip-stream-")),
        )
    };
    let mut now = (0, 0);
    let mut handshakes = 0;
    let start = Instant::now();
    while now.1 < 60 && start.elapsed() < Duration::from_secs(60) {
        for _ in 0..50 {
            drop(connect(tls_port, &pki.path("ca.pem"), None).expect("handshake"));
            handshakes += 1;
        }
        now = spent(&sample());
    }
    let (engine, streams) = now;
    assert!(
        streams >= 60,
        "{handshakes} handshakes cost the stream threads {streams} ticks (the engine's {engine})"
    );
    assert!(
        engine * 2 <= streams,
        "{handshakes} handshakes cost the engine's thread {engine} ticks, the stream threads {streams}"
    );
}

/// `openssl s_client` against the TLS port: exit status and what it says.
fn s_client(port: u16, ca: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(["-CAfile", &ca.to_string_lossy()])
        .args(["-verify_return_error", "-brief"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// D10: TLS 1.2 and 1.3 are accepted, TLS 1.1 and weak ciphers refused
/// (and counted), the certificate verifies against its CA.
#[test]
fn tls_posture_refuses_old_versions_and_weak_ciphers() {
    let scratch = Scratch::new("tls-posture");
    let pki = node_pki(&scratch);
    let tls_port = free_port();
    let node = tls_node(&scratch, &pki, tls_port, "", "");
    node.wait_log("SIP listening on TLS", Duration::from_secs(5));
    let ca = pki.path("ca.pem");
    for v in ["-tls1_2", "-tls1_3"] {
        let (ok, text) = s_client(tls_port, &ca, &[v]);
        assert!(ok, "{v} refused:\n{text}");
    }
    // SECLEVEL=0: Debian's client would not even offer these otherwise;
    // the refusal must be the node's.
    let (ok, text) = s_client(tls_port, &ca, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok, "TLS 1.1 accepted:\n{text}");
    for weak in ["NULL", "EXPORT", "RC4", "AES128-SHA"] {
        let (ok, text) = s_client(
            tls_port,
            &ca,
            &["-tls1_2", "-cipher", &format!("{weak}@SECLEVEL=0")],
        );
        assert!(!ok, "cipher {weak} accepted:\n{text}");
    }
    assert!(
        node.metric_or_zero(
            "centralino_sip_tls_handshake_failures_total{direction=\"in\",reason=\"incompatible\"}"
        ) >= 1.0,
        "{}",
        node.metrics()
    );
}

/// A TLS listener without its files is refused at start, naming the key.
#[test]
fn tls_needs_readable_certificate_and_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .args(["check-config"])
        .arg({
            let scratch = std::env::temp_dir().join(format!("centralino-tls-cfg-{}", free_port()));
            std::fs::write(
                &scratch,
                "[sip]\ntransports = [\"udp\", \"tls\"]\ntls_listen = [\"127.0.0.1:5061\"]\ntls_cert_file = \"/nonexistent/cert.pem\"\n",
            )
            .expect("write");
            scratch
        })
        .output()
        .expect("check-config");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("sip.tls_cert_file: cannot read"), "{text}");
    assert!(text.contains("sip.tls_key_file: required"), "{text}");
}

/// D1 over TLS: a trunk known by its client certificate takes INVITEs only
/// over TLS with that certificate. From its own address over UDP, over TLS
/// without a certificate, or with a certificate for another name: 403 and
/// no operator rung. A certificate from another CA fails the handshake.
/// With its certificate, the call connects.
#[test]
fn mtls_trunk_needs_its_certificate() {
    let scratch = Scratch::new("tls-mtls");
    let pki = node_pki(&scratch);
    pki.leaf("other", "ca", "DNS:other.example");
    pki.ca("rogue");
    pki.leaf("stranger", "rogue", &format!("DNS:{CARRIER_NAME}"));
    let tls_port = free_port();
    let trunk = format!(
        "tls_client_ca_file = \"{}\"\ntls_peer_names = [\"{CARRIER_NAME}\"]\n",
        pki.s("ca.pem")
    );
    let node = tls_node(&scratch, &pki, tls_port, &trunk, "");
    node.wait_log("SIP listening on TLS", Duration::from_secs(5));
    let mut phone = one_answering_phone(&scratch, &node);
    let refused = "centralino_sip_rejected_total{reason=\"trunk_not_authenticated\"}";

    // UDP, from the trunk's own address.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let wire = invite_text("UDP", node.sip_port, "u1")
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    udp.send_to(wire.as_bytes(), node.sip_addr()).expect("send");
    let mut buf = [0u8; 4096];
    let n = udp.recv(&mut buf).expect("an answer over UDP");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");

    // TLS without a client certificate.
    let mut anon = connect(tls_port, &pki.path("ca.pem"), None).expect("handshake");
    invite_expecting(&mut anon, tls_port, "a1", "403");

    // TLS with a certificate of the right CA for another name.
    let mut other = connect(
        tls_port,
        &pki.path("ca.pem"),
        Some((&pki.path("other.pem"), &pki.path("other.key"))),
    )
    .expect("handshake");
    invite_expecting(&mut other, tls_port, "o1", "403");
    assert_eq!(node.metric(refused), 3.0);

    // A certificate from another CA: no connection at all.
    if let Ok(mut s) = connect(
        tls_port,
        &pki.path("ca.pem"),
        Some((&pki.path("stranger.pem"), &pki.path("stranger.key"))),
    ) {
        // TLS 1.3: the client is done before the server's verdict, which
        // arrives as an alert on the first read.
        s.send(&invite_text("TLS", tls_port, "s1"));
        assert!(
            s.recv(Duration::from_secs(5)).is_none(),
            "the stranger was answered"
        );
    }
    node.wait_metric(
        "centralino_sip_tls_handshake_failures_total{direction=\"in\",reason=\"certificate\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    assert_eq!(
        node.metric("centralino_calls_active"),
        0.0,
        "a refused INVITE left a call"
    );

    // Its own certificate: the call reaches the operator.
    let mut carrier = connect(
        tls_port,
        &pki.path("ca.pem"),
        Some((&pki.path("carrier.pem"), &pki.path("carrier.key"))),
    )
    .expect("handshake");
    let answer = invite_over_tls(&mut carrier, tls_port, "c1");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let bye = bye_over_tls(&mut carrier, &answer, "c1");
    assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    phone.expect_success(Duration::from_secs(30));
    assert_eq!(node.metric(refused), 3.0);
}

/// Sends an INVITE over `sip` and asserts the final answer's code.
fn invite_expecting<S: Read + Write>(sip: &mut TlsSip<S>, port: u16, tag: &str, code: &str) {
    sip.send(&invite_text("TLS", port, tag));
    let answer = sip.final_response(Duration::from_secs(10));
    assert!(
        answer.starts_with(&format!("SIP/2.0 {code}")),
        "{tag}: {answer}"
    );
}

/// A carrier's SBC over TLS, played by rustls: it requires our client
/// certificate (chaining to the test CA), keeps every request it gets,
/// answers OPTIONS 200, answers an INVITE 200 and, once ACKed, hangs up
/// with a BYE on the same connection (the citizen ends the call).
struct TlsCarrier {
    port: u16,
    got: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TlsCarrier {
    fn start(pki: &Pki) -> Self {
        Self::start_with(pki, true)
    }

    /// `hangs_up`: the far end sends BYE once ACKed; else it waits for ours.
    fn start_with(pki: &Pki, hangs_up: bool) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&pki.path("ca.pem")) {
            roots.add(c).expect("root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&pki.path("carrier.pem")),
                key(&pki.path("carrier.key")),
            )
            .expect("server config");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind carrier");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = Arc::downgrade(&got);
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let Some(got) = keep.upgrade() else { return };
                let config = config.clone();
                std::thread::spawn(move || carrier_connection(tcp, config, port, hangs_up, &got));
            }
        });
        Self { port, got }
    }

    fn requests(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

fn carrier_connection(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    port: u16,
    hangs_up: bool,
    got: &std::sync::Mutex<Vec<String>>,
) {
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut sip = TlsSip {
        stream: rustls::StreamOwned::new(conn, tcp),
        buf: Vec::new(),
    };
    let mut invite: Option<String> = None;
    while let Some(msg) = sip.recv(Duration::from_secs(30)) {
        if msg.starts_with("SIP/2.0") {
            got.lock().unwrap().push(msg);
            continue;
        }
        got.lock().unwrap().push(msg.clone());
        let method = msg.split(' ').next().unwrap_or_default().to_owned();
        let reply = |code: &str, extra: &str, body: &str| {
            let mut r = format!("SIP/2.0 {code}\n");
            for h in ["Via", "From", "Call-ID", "CSeq"] {
                if let Some(v) = header(&msg, h) {
                    r.push_str(&format!("{h}: {v}\n"));
                }
            }
            let to = header(&msg, "To").unwrap_or_default();
            let to = if to.contains("tag=") {
                to.to_owned()
            } else {
                format!("{to};tag=carrier1")
            };
            r.push_str(&format!(
                "To: {to}\n{extra}Content-Length: {}\n\n{body}",
                body.len()
            ));
            r
        };
        match method.as_str() {
            "OPTIONS" | "BYE" => sip.send(&reply("200 OK", "", "")),
            "INVITE" => {
                let sdp = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40002 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
                let extra = format!(
                    "Contact: <sip:citizen@127.0.0.1:{port};transport=tls>\nContent-Type: application/sdp\n"
                );
                sip.send(&reply("200 OK", &extra, sdp));
                invite = Some(msg.clone());
            }
            "ACK" => {
                let Some(inv) = invite.take().filter(|_| hangs_up) else {
                    continue;
                };
                // The citizen hangs up: a BYE towards the node's Contact,
                // on this same connection.
                let contact = header(&inv, "Contact").unwrap_or_default();
                let target = contact
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or_default();
                let from = header(&inv, "From").unwrap_or_default();
                let to = header(&inv, "To").unwrap_or_default();
                let call_id = header(&inv, "Call-ID").unwrap_or_default();
                sip.send(&format!(
                    "BYE {target} SIP/2.0\n\
                     Via: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-cbye\n\
                     Max-Forwards: 70\n\
                     From: {to};tag=carrier1\n\
                     To: {from}\n\
                     Call-ID: {call_id}\n\
                     CSeq: 1 BYE\n\
                     Content-Length: 0\n\n"
                ));
            }
            _ => {}
        }
    }
}

/// Callbacks leave over TLS: the first trunk's carrier is reached under a
/// name its certificate does not carry, so the handshake fails (counted)
/// and the attempt fails over at once (no wait for Timer B), as from a
/// dead carrier, to the next trunk;
/// that one's carrier (which demands our client certificate) gets OPTIONS
/// pings and the INVITE over TLS, answers, and hangs up with a BYE on the
/// same connection; the operator's call ends with it.
#[test]
fn callback_over_tls_with_name_check_and_failover() {
    let scratch = Scratch::new("tls-callback");
    let pki = node_pki(&scratch);
    let good = TlsCarrier::start(&pki);
    let bad = TlsCarrier::start(&pki);
    let tls_port = free_port();
    let (ca, cert, key) = (pki.s("ca.pem"), pki.s("node.pem"), pki.s("node.key"));
    let trunks = format!(
        r#"
[[trunks]]
name = "wrongname"
tenant = "demo"
peers = ["127.0.0.9"]
outbound = "127.0.0.1:{bad}"
outbound_transport = "tls"
outbound_tls_name = "wrong.example"
outbound_tls_ca_file = "{ca}"
caller_id = "+39800123456"

[[trunks]]
name = "tlscarrier"
tenant = "demo"
peers = ["127.0.0.9"]
outbound = "127.0.0.1:{good}"
outbound_transport = "tls"
outbound_tls_name = "{CARRIER_NAME}"
outbound_tls_ca_file = "{ca}"
outbound_tls_cert_file = "{cert}"
outbound_tls_key_file = "{key}"
options_seconds = 5
caller_id = "+39800123456"

[[api.tokens]]
name = "desk"
token = "desk-token-0123456789"
role = "admin"
"#,
        bad = bad.port,
        good = good.port,
    );
    let node = tls_node(&scratch, &pki, tls_port, &trunks, "");
    let mut phone = one_answering_phone(&scratch, &node);
    let (code, body) = node.http(
        "POST",
        "/api/v1/callbacks",
        Some("desk-token-0123456789"),
        Some(r#"{"queue": "info", "number": "+393471234567"}"#),
    );
    assert_eq!(code, 201, "{body}");
    phone.expect_success(Duration::from_secs(60));
    node.wait_metric(
        "centralino_callbacks_total{outcome=\"answered\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    assert!(bad.requests().is_empty(), "{:?}", bad.requests());
    assert!(
        node.metric(
            "centralino_sip_tls_handshake_failures_total{direction=\"out\",reason=\"certificate\"}"
        ) >= 1.0
    );
    assert_eq!(
        node.metric("centralino_trunk_failovers_total{reason=\"timeout\"}"),
        1.0
    );
    // The failed handshake failed the attempt at once, not Timer B (32 s
    // at the default T1): no transaction has timed out yet.
    assert_eq!(
        node.metric("centralino_sip_transaction_timeouts_total"),
        0.0
    );
    let got = good.requests();
    assert!(got.iter().any(|m| m.starts_with("OPTIONS ")), "{got:?}");
    let invite = got
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("no INVITE: {got:?}"));
    assert!(
        invite.starts_with("INVITE sip:+393471234567@")
            && invite.lines().next().unwrap().contains("transport=tls"),
        "{invite}"
    );
    assert!(
        header(invite, "Via").is_some_and(|v| v.starts_with("SIP/2.0/TLS")),
        "{invite}"
    );
    assert!(
        header(invite, "Contact").is_some_and(|v| v.contains("transport=tls")),
        "{invite}"
    );
    assert!(got.iter().any(|m| m.starts_with("ACK ")), "{got:?}");
    assert!(
        got.iter()
            .any(|m| m.starts_with("SIP/2.0 200") && header(m, "CSeq") == Some("1 BYE")),
        "the node did not answer the carrier's BYE: {got:?}"
    );
}

/// RFC 5630: a `sips:` Request-URI over UDP is refused (416: taking it
/// would break its promise of TLS on every hop); over TLS it is taken, and
/// our Contact towards that caller is `sips:` too.
#[test]
fn sips_request_uri_needs_tls_and_gets_a_sips_contact() {
    let scratch = Scratch::new("tls-sips");
    let pki = node_pki(&scratch);
    let tls_port = free_port();
    let node = tls_node(&scratch, &pki, tls_port, "", "");
    node.wait_log("SIP listening on TLS", Duration::from_secs(5));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let wire = invite_to(
        "UDP",
        &format!("sips:100@127.0.0.1:{}", node.sip_port),
        "s1",
    )
    .replace("\r\n", "\n")
    .replace('\n', "\r\n");
    udp.send_to(wire.as_bytes(), node.sip_addr()).expect("send");
    let mut buf = [0u8; 4096];
    let n = udp.recv(&mut buf).expect("an answer over UDP");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("SIP/2.0 416"), "{answer}");
    assert_eq!(
        node.metric("centralino_sip_rejected_total{reason=\"sips_not_over_tls\"}"),
        1.0
    );

    // Over TLS: no operator is there, so the caller waits in the queue
    // and hears the progress answer, whose Contact is what we look at.
    let mut sip = connect(tls_port, &pki.path("ca.pem"), None).expect("handshake");
    sip.send(&invite_to(
        "TLS",
        &format!("sips:100@127.0.0.1:{tls_port}"),
        "s2",
    ));
    let contact = loop {
        let msg = sip
            .recv(Duration::from_secs(10))
            .expect("a progress answer over TLS");
        assert!(msg.starts_with("SIP/2.0 1"), "{msg}");
        if let Some(c) = header(&msg, "Contact") {
            break c.to_owned();
        }
    };
    assert!(contact.starts_with("<sips:centralino@"), "{contact}");
}

/// An IVR transfer leaves over TLS: the caller (SIPp over UDP) reaches a
/// flow that transfers to an external number through a trunk reached
/// over TLS; the carrier gets the INVITE on a verified connection, the
/// call is bridged, and the caller's BYE reaches the carrier as our BYE
/// on that connection.
#[test]
fn ivr_transfer_over_tls() {
    let scratch = Scratch::new("tls-transfer");
    let pki = node_pki(&scratch);
    let carrier = TlsCarrier::start_with(&pki, false);
    let tls_port = free_port();
    let ca = pki.s("ca.pem");
    let extra = format!(
        r#"
[[trunks]]
name = "ivr"
tenant = "demo"
peers = ["127.0.0.1"]
dids = {{ "802" = {{ flow = "esterno" }} }}
outbound = "127.0.0.1:{port}"
outbound_transport = "tls"
outbound_tls_name = "{CARRIER_NAME}"
outbound_tls_ca_file = "{ca}"
outbound_tls_cert_file = "{cert}"
outbound_tls_key_file = "{key}"

[[flows]]
name = "esterno"
start = "passa"
[flows.nodes.passa]
type = "transfer"
number = "+390612345000"
on_fail = "fine"
[flows.nodes.fine]
type = "hangup"
"#,
        port = carrier.port,
        cert = pki.s("node.pem"),
        key = pki.s("node.key"),
    );
    let node = tls_node(&scratch, &pki, tls_port, &extra, "");
    let mut caller = crate::common::Sipp::spawn(
        &scratch,
        "caller",
        &[
            &node.sip_addr(),
            "-sf",
            &crate::common::scenario("trunk_call.xml"),
            "-s",
            "802",
            "-m",
            "1",
            "-d",
            "1000",
            "-timeout",
            "30s",
        ],
    );
    caller.expect_success(Duration::from_secs(30));
    assert_eq!(
        node.metric("centralino_flow_calls_total{flow=\"esterno\",outcome=\"transferred\"}"),
        1.0
    );
    let start = Instant::now();
    while !carrier.requests().iter().any(|m| m.starts_with("BYE ")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no BYE at the carrier: {:?}",
            carrier.requests()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = carrier.requests();
    let invite = got
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("no INVITE: {got:?}"));
    assert!(invite.starts_with("INVITE sip:+390612345000@"), "{invite}");
    assert!(
        header(invite, "Via").is_some_and(|v| v.starts_with("SIP/2.0/TLS")),
        "{invite}"
    );
}
