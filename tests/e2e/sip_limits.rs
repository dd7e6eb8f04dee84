//! Framing and size limits on the wire (TEST-MATRIX A5, A6): pipelined
//! messages on one TCP write, an oversize declared body, an oversize
//! datagram. The node refuses before buffering and keeps serving. Also
//! what NAT'd phones rely on: CRLF keep-alives answered on connections
//! (RFC 5626 §4.4.1), `received`/`rport` in responses (RFC 3581).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch};

fn options(i: usize, port: u16, transport: &str, extra: &str) -> String {
    format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bKpipe{i}\r\n\
From: <sip:probe@127.0.0.1>;tag=p{i}\r\nTo: <sip:127.0.0.1>\r\nCall-ID: pipe-{i}\r\nCSeq: 1 OPTIONS\r\n{extra}"
    )
}

fn udp_alive(node: &Node) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = options(9999, node.sip_port, "UDP", "Content-Length: 0\r\n\r\n");
    sock.send_to(msg.as_bytes(), node.sip_addr()).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("node still answers");
    assert!(buf[..n].starts_with(b"SIP/2.0 200"));
}

/// A node with one operator, and a TCP connection to it on which a
/// thread of its own writes `n` OPTIONS (`pipe-0`…) back to back, then
/// what `last` makes of the node's port, then half-closes if asked: the
/// caller reads meanwhile (TCP's flow control would stop a writer whose
/// answers nobody reads).
fn pipelined_to_a_node(
    name: &str,
    n: usize,
    last: impl FnOnce(u16) -> String,
    half_close: bool,
) -> (Scratch, Node, TcpStream, std::thread::JoinHandle<()>) {
    let scratch = Scratch::new(name);
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    );
    let s = TcpStream::connect(node.sip_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all: String = (0..n)
        .map(|i| options(i, node.sip_port, "TCP", "Content-Length: 0\r\n\r\n"))
        .collect();
    all.push_str(&last(node.sip_port));
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(all.as_bytes()).unwrap();
        if half_close {
            w.shutdown(std::net::Shutdown::Write).unwrap();
        }
    });
    (scratch, node, s, writer)
}

/// `n` OPTIONS written back to back on one TCP connection: each
/// answered, in order.
fn pipelined_messages_are_answered_in_order(name: &str, n: usize) {
    let (_scratch, _node, mut s, writer) = pipelined_to_a_node(name, n, |_| String::new(), false);
    let mut got = String::new();
    let mut buf = [0u8; 16384];
    // Answers counted as they come (a status line split across two reads
    // is counted once the second arrives).
    let (mut answers, mut counted) = (0, 0usize);
    while answers < n {
        let r = s.read(&mut buf).expect("answers");
        assert!(r > 0, "closed after {answers} answers");
        got.push_str(&String::from_utf8_lossy(&buf[..r]));
        // A match wholly in what was counted starts before this.
        let from = counted.saturating_sub("SIP/2.0 200".len() - 1);
        answers += got[from..].matches("SIP/2.0 200").count();
        counted = got.len();
    }
    writer.join().unwrap();
    let order: Vec<usize> = got
        .lines()
        .filter_map(|l| l.strip_prefix("Call-ID: pipe-"))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(order, (0..n).collect::<Vec<_>>());
}

#[test]
fn fifty_pipelined_messages_are_answered_in_order() {
    pipelined_messages_are_answered_in_order("pipeline", 50);
}

/// More than a connection may have in the engine's hands at once (1,024),
/// and far more answers than its writer's queue holds (256): the
/// connection's reading waits for its turns while its writing goes on,
/// and none is lost.
#[test]
fn three_thousand_pipelined_messages_are_all_answered_in_order() {
    pipelined_messages_are_answered_in_order("pipeline-3000", 3000);
}

/// Reads until the node closes the connection (a reset counts as the
/// close); the answers' Call-ID numbers in order, and the status lines.
fn answers_until_closed(s: &mut TcpStream) -> (Vec<usize>, Vec<String>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the node neither answered nor closed: {e}"),
        }
    }
    let got = String::from_utf8_lossy(&got);
    let order = got
        .lines()
        .filter_map(|l| l.strip_prefix("Call-ID: pipe-"))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let status = got
        .lines()
        .filter(|l| l.starts_with("SIP/2.0 "))
        .map(str::to_owned)
        .collect();
    (order, status)
}

/// A peer that half-closes right after pipelining (it has sent all it
/// will and reads on, as `shutdown(SHUT_WR)` says) gets the answer to
/// every request it wrote, in order, and then the node closes too. It
/// lost all but the first few when its end of stream closed the
/// connection at once.
#[test]
fn a_peer_that_half_closes_after_pipelining_gets_every_answer() {
    let n = 300;
    let (_scratch, node, mut s, writer) =
        pipelined_to_a_node("half-close", n, |_| String::new(), true);
    let (order, status) = answers_until_closed(&mut s);
    writer.join().unwrap();
    assert_eq!(order, (0..n).collect::<Vec<_>>());
    assert!(
        status.iter().all(|l| l.starts_with("SIP/2.0 200")),
        "{status:?}"
    );
    node.wait_metric(
        "centralino_sip_tcp_connections",
        Duration::from_secs(5),
        |v| v == 0.0,
    );
}

/// Requests pipelined before a message that breaks the framing (a
/// declared body past the cap, the first 20 KB of which follow) are all
/// answered, then the refusal, then the close: the connection waits for
/// the engine's answers to what it read (2 s at most) rather than a fixed
/// 500 ms, which an engine more than 500 ms behind did not meet, and it
/// reads and drops the body meanwhile (closed with it unread, the
/// connection would be reset and the answers not yet sent lost).
#[test]
fn requests_before_a_framing_error_are_answered_before_the_close() {
    let n = 300;
    let too_long =
        |port| options(n, port, "TCP", "Content-Length: 1000000\r\n\r\n") + &"x".repeat(20_000);
    let (_scratch, node, mut s, writer) =
        pipelined_to_a_node("fatal-after-pipeline", n, too_long, false);
    // Read only once the node has refused the message and closed:
    // whatever it sent waits in our buffer, unless a reset threw it away.
    node.wait_metric(
        "centralino_sip_parse_errors_total{reason=\"too_large\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    node.wait_metric(
        "centralino_sip_tcp_connections",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    let (order, status) = answers_until_closed(&mut s);
    writer.join().unwrap();
    assert_eq!(order, (0..=n).collect::<Vec<_>>());
    assert_eq!(status.len(), n + 1, "{status:?}");
    assert!(status[..n].iter().all(|l| l.starts_with("SIP/2.0 200")));
    assert!(status[n].starts_with("SIP/2.0 413"), "{}", status[n]);
}

/// `sip.max_tcp_connections`: past the cap a new connection is closed at
/// once and counted; a connection that ends gives its place back, and the
/// gauge follows (TEST-MATRIX A7: descriptors released).
#[test]
fn the_tcp_connection_cap_closes_the_next_and_gives_places_back() {
    let scratch = Scratch::new("tcp-cap");
    let cfg = NodeConfig {
        agents: 1,
        ..NodeConfig::default()
    };
    let node = Node::start_toml(&scratch, |sip, http| {
        cfg.toml(sip, http)
            .replacen("[sip]\n", "[sip]\nmax_tcp_connections = 3\n", 1)
    });
    let open = |i: usize| {
        let mut s = TcpStream::connect(node.sip_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(options(i, node.sip_port, "TCP", "Content-Length: 0\r\n\r\n").as_bytes())
            .unwrap();
        s
    };
    let answered = |s: &mut TcpStream| {
        let mut buf = [0u8; 4096];
        matches!(s.read(&mut buf), Ok(n) if n > 0 && buf[..n].starts_with(b"SIP/2.0 200"))
    };
    let gauge = "centralino_sip_tcp_connections";
    let mut held: Vec<TcpStream> = (0..3).map(open).collect();
    for s in &mut held {
        assert!(answered(s), "a connection under the cap is served");
    }
    node.wait_metric(gauge, Duration::from_secs(5), |v| v == 3.0);
    let mut fourth = open(3);
    assert!(!answered(&mut fourth), "past the cap: closed unanswered");
    assert_eq!(
        node.metric("centralino_sip_tcp_connections_refused_total"),
        1.0
    );
    // One ends: its place is taken again.
    drop(held.pop());
    node.wait_metric(gauge, Duration::from_secs(5), |v| v == 2.0);
    let mut again = open(4);
    assert!(answered(&mut again), "the place given back is served");
    held.push(again);
    drop(held);
    node.wait_metric(gauge, Duration::from_secs(5), |v| v == 0.0);
}

#[test]
fn oversize_declared_body_closes_the_connection_before_the_data() {
    let scratch = Scratch::new("oversize");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    );
    for declared in [65_537usize, 10 << 20, 1 << 30] {
        let mut s = TcpStream::connect(node.sip_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = options(
            declared,
            node.sip_port,
            "TCP",
            &format!("Content-Length: {declared}\r\n\r\n"),
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("connection not closed for Content-Length {declared}: {e}"),
            }
        }
        assert!(
            got.starts_with(b"SIP/2.0 413"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    // A header section that never ends is cut at the cap.
    let mut s = TcpStream::connect(node.sip_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut junk = options(1, node.sip_port, "TCP", "");
    while junk.len() < 70_000 {
        junk.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let _ = s.write_all(junk.as_bytes());
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "an endless header section must close the connection"
    );
    udp_alive(&node);
    assert!(node.metric("centralino_sip_parse_errors_total{reason=\"too_large\"}") >= 4.0);
}

#[test]
fn maximum_size_datagram_is_refused_and_counted() {
    let scratch = Scratch::new("bigudp");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The largest UDP payload over IPv4: a body beyond max_body_bytes.
    let head = options(
        1,
        node.sip_port,
        "UDP",
        "Content-Type: application/sdp\r\nContent-Length: ",
    );
    let body_len = 65_507 - head.len() - "65000\r\n\r\n".len();
    let mut bytes = format!("{head}{body_len}\r\n\r\n").into_bytes();
    bytes.resize(65_507, b'a');
    sock.send_to(&bytes, node.sip_addr()).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("a refusal");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(
        node.metric("centralino_sip_parse_errors_total{reason=\"body_too_large\"}"),
        1.0
    );
    // 1,000 headers: refused at the header cap.
    let mut many = options(2, node.sip_port, "UDP", "");
    for i in 0..1000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("Content-Length: 0\r\n\r\n");
    sock.send_to(many.as_bytes(), node.sip_addr()).unwrap();
    let (n, _) = sock.recv_from(&mut buf).expect("a refusal");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 400"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(
        node.metric("centralino_sip_parse_errors_total{reason=\"too_many_headers\"}"),
        1.0
    );
    udp_alive(&node);
}

#[test]
fn keepalives_are_answered_on_connections_and_responses_say_where_the_request_came_from() {
    let scratch = Scratch::new("keepalive");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    );
    // A double CRLF "ping" gets a CRLF "pong"; the connection then still
    // takes requests.
    let mut s = TcpStream::connect(node.sip_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = s.local_addr().unwrap();
    for _ in 0..3 {
        s.write_all(b"\r\n\r\n").unwrap();
        let mut pong = [0u8; 2];
        s.read_exact(&mut pong).expect("pong");
        assert_eq!(&pong, b"\r\n");
    }
    // A client behind NAT asking for rport: the response names the
    // address and port the node saw.
    let msg = options(1, node.sip_port, "TCP", "Content-Length: 0\r\n\r\n")
        .replace("branch=z9hG4bKpipe1", "branch=z9hG4bKpipe1;rport");
    s.write_all(msg.as_bytes()).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("\r\n\r\n") {
        let n = s.read(&mut buf).expect("answer");
        assert!(n > 0, "closed");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("SIP/2.0 200"), "{got}");
    let via = format!(
        "Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKpipe1;received=127.0.0.1;rport={}\r\n",
        local.port()
    );
    assert!(got.contains(&via), "{via} in:\n{got}");
    // On UDP a keep-alive is not answered (STUN would be); the node serves on.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    sock.send_to(b"\r\n\r\n", node.sip_addr()).unwrap();
    let mut buf = [0u8; 64];
    assert!(sock.recv_from(&mut buf).is_err(), "no answer on UDP");
    udp_alive(&node);
}

/// A site's network comes back: 1,200 operators' phones behind one NAT
/// address (127.0.0.7, not a trunk) re-register within about two seconds,
/// 2,400 REGISTER transactions where `sip.max_transactions_per_source`
/// keeps 1,024. Every one of them gets in (no 503), nothing is banned, and
/// the node's transaction table stays within the bound: past it, REGISTERs
/// are answered without a transaction.
#[test]
fn a_site_of_1200_phones_behind_one_address_re_registers_at_once() {
    let scratch = Scratch::new("storm");
    let operators = 1200u32;
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: operators,
            ..NodeConfig::default()
        },
    );
    let csv = scratch.path("site.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for u in 1001..1001 + operators {
        text.push_str(&format!(
            "{u};[authentication username={u} password=demo{u}];5999\n"
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let mut site = crate::common::Sipp::spawn_from(
        &scratch,
        "site",
        "127.0.0.7",
        &[
            &node.sip_addr(),
            "-sf",
            &crate::common::scenario("register.xml"),
            "-inf",
            crate::common::path_str(&csv),
            "-m",
            &operators.to_string(),
            "-r",
            "600",
            "-timeout",
            "60s",
        ],
    );
    site.expect_success(Duration::from_secs(90));
    // Gauges follow activity within 100 ms.
    node.wait_metric(
        "centralino_registered_agents",
        Duration::from_secs(5),
        |v| v == f64::from(operators),
    );
    let m = node.metrics();
    assert!(
        crate::common::metric_in(&m, "centralino_registrations_stateless_total") > 0.0,
        "the storm went past the bound: {m}"
    );
    for absent in [
        "centralino_sip_rejected_total{reason=\"source_busy\"}",
        "centralino_registrations_total{outcome=\"refused\"}",
    ] {
        assert_eq!(crate::common::series_in(&m, absent), None, "{absent}: {m}");
    }
    assert!(
        crate::common::metric_in(&m, "centralino_sip_transactions{side=\"server\"}") <= 1024.0,
        "{m}"
    );
}
