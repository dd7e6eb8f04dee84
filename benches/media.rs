//! The media relay's per-packet cost, sans-IO: one 20 ms G.711 packet
//! received on a leg, checked, rewritten and written for the other leg
//! (same law, and transcoded A-law → µ-law); and what a call's RTP pair
//! costs the engine's thread: bound at the call (two sockets bound, and
//! closed here too) or taken bound ahead (two empty peeks, as
//! `net::media::ahead` checks a pair before a call uses it).
//! `cargo bench --bench media`.

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use centralino_media::g711::Law;
use centralino_media::leg::{Latch, Leg};
use centralino_media::relay::{Action, CallMedia, Side};
use centralino_media::rtp::{self, Header};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bridge(b_law: Law) -> (CallMedia, SocketAddr) {
    let a: SocketAddr = "192.0.2.5:40000".parse().unwrap();
    let b: SocketAddr = "192.0.2.21:30000".parse().unwrap();
    let mut m = CallMedia::new(
        Instant::now(),
        Leg::new(Latch::SdpAddress, a, Some(101)),
        Law::Alaw,
        [(1, 0, 0), (2, 0, 0)],
    );
    m.bridge(Leg::new(Latch::SdpAddress, b, None), b_law);
    (m, a)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    for (name, law) in [("same_law", Law::Alaw), ("transcode_a_to_u", Law::Ulaw)] {
        let (mut br, from) = bridge(law);
        let mut pkt = [0u8; 172];
        let mut out = [0u8; 1500];
        let mut seq = 0u16;
        let now = Instant::now();
        g.bench_function(name, |bch| {
            bch.iter(|| {
                seq = seq.wrapping_add(1);
                let h = Header {
                    marker: false,
                    payload_type: 8,
                    seq,
                    timestamp: u32::from(seq) * 160,
                    ssrc: 9,
                };
                rtp::write(&h, &[0xD5; 160], &mut pkt);
                let a = br.receive(now, Side::A, from, &pkt, &mut out);
                assert!(matches!(a, Action::Send { .. }));
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn rtp_pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp_pair");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bind_at_the_call", |bch| {
        bch.iter(|| {
            let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
            rtp.set_nonblocking(true).unwrap();
            rtcp.set_nonblocking(true).unwrap();
            black_box((rtp, rtcp))
        })
    });
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    rtp.set_nonblocking(true).unwrap();
    rtcp.set_nonblocking(true).unwrap();
    g.bench_function("taken_bound_ahead", |bch| {
        bch.iter(|| {
            let quiet = |s: &UdpSocket| {
                let mut b = [0u8; 1];
                matches!(s.peek_from(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            };
            black_box(quiet(&rtp) && quiet(&rtcp))
        })
    });
    g.finish();
}

criterion_group!(benches, bench, rtp_pair);
criterion_main!(benches);
