//! The media hot path does not allocate: a bridged call relays packets
//! both ways (transcoding, a third party's packets, DTMF events relayed,
//! a supervisor barging in)
//! and a waiting call's music is paced out, with a counting allocator
//! armed on this thread after warm-up.

// Tests may read the clock and files: the crate itself stays sans-IO.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use centralino_media::announce::builtin_music;
use centralino_media::g711::Law;
use centralino_media::leg::{Latch, Leg};
use centralino_media::monitor::MonitorMode;
use centralino_media::relay::{Action, CallMedia, Side};
use centralino_media::rtp::{self, Header};
use centralino_types::alloc_count::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

fn packet(buf: &mut [u8], seq: u16, pt: u8, payload: &[u8]) -> usize {
    let h = Header {
        marker: false,
        payload_type: pt,
        seq,
        timestamp: u32::from(seq) * 160,
        ssrc: 42,
    };
    rtp::write(&h, payload, buf).expect("fits")
}

#[test]
fn relay_and_playout_do_not_allocate() {
    let t0 = Instant::now();
    let a: SocketAddr = "192.0.2.5:40000".parse().unwrap();
    let b: SocketAddr = "192.0.2.21:30000".parse().unwrap();
    let stranger: SocketAddr = "203.0.113.9:1".parse().unwrap();
    let mut bridged = CallMedia::new(
        t0,
        Leg::new(Latch::SdpAddress, a, Some(101)),
        Law::Alaw,
        [(1, 2, 3), (4, 5, 6)],
    );
    bridged.bridge(Leg::new(Latch::SdpAddress, b, Some(96)), Law::Ulaw);
    // A supervisor barging in: their voice mixed into both directions,
    // both sides mixed for them.
    let sup: SocketAddr = "192.0.2.30:50000".parse().unwrap();
    assert!(bridged.monitor(
        t0,
        MonitorMode::Barge,
        Leg::new(Latch::SdpAddress, sup, None),
        Law::Alaw,
        (13, 14, 15),
    ));
    let mut waiting = CallMedia::new(
        t0,
        Leg::new(Latch::SdpAddress, a, None),
        Law::Ulaw,
        [(7, 8, 9), (10, 11, 12)],
    );
    waiting.play(t0, Vec::new(), Some(builtin_music(Law::Alaw)));
    let (mut inbuf, mut outbuf) = ([0u8; 1500], [0u8; 1500]);
    let (mut relayed, mut played, mut digits, mut heard) = (0u64, 0u64, 0u64, 0u64);
    let mut now = t0;
    for i in 0..20_000u16 {
        if i == 1_000 {
            Counting::arm();
        }
        now += Duration::from_millis(20);
        let n = packet(&mut inbuf, i, 8, &[0xD5; 160]);
        if let Action::Send { .. } = bridged.receive(now, Side::A, a, &inbuf[..n], &mut outbuf) {
            relayed += 1;
        }
        let n = packet(&mut inbuf, i, 0, &[0xFF; 160]);
        if let Action::Send { .. } = bridged.receive(now, Side::B, b, &inbuf[..n], &mut outbuf) {
            relayed += 1;
        }
        let n = packet(&mut inbuf, i, 8, &[0x55; 160]);
        bridged.receive_monitor(now, sup, &inbuf[..n]);
        while bridged.poll_monitor(now, &mut outbuf).is_some() {
            heard += 1;
        }
        let n = packet(&mut inbuf, i, 8, &[0xD5; 160]);
        bridged.receive(now, Side::A, stranger, &inbuf[..n], &mut outbuf);
        bridged.receive(now, Side::B, b, &inbuf[..7], &mut outbuf);
        if i % 50 == 0 {
            let n = packet(&mut inbuf, i, 101, &[(i / 50 % 10) as u8, 0x0A, 0, 160]);
            if let Action::Dtmf { .. } = bridged.receive(now, Side::A, a, &inbuf[..n], &mut outbuf)
            {
                digits += 1;
            }
        }
        while waiting.poll_packet(now, &mut outbuf).is_some() {
            played += 1;
        }
    }
    let count = Counting::disarm();
    assert!(
        relayed >= 39_000 && played >= 19_000 && digits >= 390 && heard >= 19_000,
        "{relayed} {played} {digits} {heard}"
    );
    assert_eq!(count, 0, "allocations on the media path");
}
