//! IPv6: the node listens on [::1]; requests over IPv6 are answered with
//! their IPv6 Via intact, and an IPv6 trunk peer's INVITE is routed.

use std::net::UdpSocket;
use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch};

fn exchange(sock: &UdpSocket, to: &str, msg: &str) -> String {
    sock.send_to(msg.replace('\n', "\r\n").as_bytes(), to)
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let Ok((n, _)) = sock.recv_from(&mut buf) else {
        panic!("no answer over IPv6 from {to}");
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn answers_over_ipv6_with_bracketed_via() {
    if UdpSocket::bind("[::1]:0").is_err() {
        // The kernel has no IPv6 loopback: say so rather than pass silently.
        panic!("IPv6 loopback unavailable on this machine; the IPv6 test cannot run");
    }
    let scratch = Scratch::new("ipv6");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            ipv6: true,
            trunk_peers: vec!["::1"],
            agents: 1,
            ..NodeConfig::default()
        },
    );
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = sock.local_addr().unwrap();
    let to = format!("[::1]:{}", node.sip_port);

    let resp = exchange(
        &sock,
        &to,
        &format!(
            "OPTIONS sip:[::1]:{p} SIP/2.0\nVia: SIP/2.0/UDP {me};branch=z9hG4bKv6\nFrom: <sip:probe@[2001:db8::10]:5070>;tag=1\nTo: <sip:[::1]:{p}>\nCall-ID: v6-options\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
            p = node.sip_port
        ),
    );
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert!(
        resp.contains(&format!("Via: SIP/2.0/UDP {me};branch=z9hG4bKv6")),
        "{resp}"
    );
    assert!(resp.contains("<sip:probe@[2001:db8::10]:5070>"), "{resp}");

    // An INVITE from the IPv6 trunk peer enters the queue (100, then 180).
    let invite = format!(
        "INVITE sip:100@[::1]:{p} SIP/2.0\nVia: SIP/2.0/UDP {me};branch=z9hG4bKv6inv\nFrom: <sip:+390612345678@[::1]>;tag=2\nTo: <sip:100@[::1]:{p}>\nCall-ID: v6-invite\nCSeq: 1 INVITE\nContact: <sip:trunk@{me}>\nContent-Length: 0\n\n",
        p = node.sip_port
    );
    let first = exchange(&sock, &to, &invite);
    assert!(first.starts_with("SIP/2.0 100"), "{first}");
    let mut buf = vec![0u8; 65_536];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    let ringing = String::from_utf8_lossy(&buf[..n]);
    assert!(ringing.starts_with("SIP/2.0 180"), "{ringing}");
    assert!(
        ringing.contains(&format!(
            "Contact: <sip:centralino@[::1]:{}>",
            node.sip_port
        )),
        "{ringing}"
    );
    node.wait_metric(
        "centralino_queue_calls{queue=\"info\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
}
