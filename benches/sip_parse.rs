//! Parsing and transaction handling of a typical trunk INVITE, through the
//! pure cores (repeatable on 2 cores). `cargo bench --bench sip_parse`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use centralino_sip::Transport;
use centralino_sip::guard::{Framed, Limits, parse_datagram};
use centralino_sip::txn::{Flow, TimerConfig, Transactions, TxKey};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const INVITE: &str = "INVITE sip:100@192.0.2.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---8a5c2b9f;rport\r\n\
Max-Forwards: 69\r\n\
Contact: <sip:+390612345678@192.0.2.10:5060>\r\n\
To: <sip:100@192.0.2.1>\r\n\
From: \"Cittadino\" <sip:+390612345678@192.0.2.10>;tag=a73kszlfl\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Type: application/sdp\r\n\
Supported: replaces, timer\r\n\
User-Agent: Carrier SBC 4.2\r\n\
Content-Length: 143\r\n\
\r\n\
v=0\r\n\
o=- 3964838129 3964838129 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 10000 RTP/AVP 8 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n";

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let data = INVITE.as_bytes();
    assert!(matches!(
        parse_datagram(data, &limits),
        Ok(Framed::Message(_))
    ));

    c.bench_function("guard_parse_trunk_invite", |b| {
        b.iter(|| black_box(parse_datagram(black_box(data), &limits)).is_ok())
    });

    let flow = Flow {
        transport: Transport::Udp,
        remote: "192.0.2.10:5060".parse::<SocketAddr>().unwrap(),
        local: "192.0.2.1:5060".parse::<SocketAddr>().unwrap(),
        conn: 0,
    };
    let parse = || {
        let Ok(Framed::Message(msg)) = parse_datagram(data, &limits) else {
            unreachable!("checked above")
        };
        msg
    };
    c.bench_function("parse_txn_100_trying", |b| {
        let now = Instant::now();
        b.iter_batched(
            || Transactions::new(TimerConfig::default()),
            |mut txn| {
                let msg = parse();
                let key = TxKey::of(&msg);
                let trying = msg.response(100, "Trying", None);
                txn.handle_request(now, flow, msg);
                txn.respond(now, &key, &trying);
                while let Some(o) = txn.poll_output() {
                    black_box(o);
                }
                txn
            },
            BatchSize::SmallInput,
        );
    });

    // A whole INVITE on each side, with the timers its transactions arm
    // and fire: received, answered 200 (two timers), its ACK taken by the
    // TU (`acknowledged`), expired; sent (two timers), answered 200 (one
    // more), expired. Every retransmission timer is stale when it fires
    // (the 2xx and the ACK stopped them): what it measures is arming,
    // firing and the lookups, with parsing and the messages' copies.
    c.bench_function("txn_invite_both_sides_with_timers", |b| {
        let now = Instant::now();
        b.iter_batched(
            || Transactions::new(TimerConfig::default()),
            |mut txn| {
                let msg = parse();
                let key = TxKey::of(&msg);
                let ok = msg.response(200, "OK", Some("b2b"));
                let sent = (*msg).clone();
                txn.handle_request(now, flow, msg);
                txn.respond(now, &key, &ok.clone());
                txn.acknowledged(&ok.call_id, ok.cseq);
                txn.send_request(now, flow, sent);
                txn.handle_response(now, Box::new(ok));
                txn.handle_timeout(now + std::time::Duration::from_secs(64));
                while let Some(o) = txn.poll_output() {
                    black_box(o);
                }
                assert!(txn.is_empty());
                txn
            },
            BatchSize::SmallInput,
        );
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
