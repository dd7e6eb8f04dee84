//! End to end media: SIPp is the carrier trunk (signalling) and the
//! operator's phone (`-rtp_echo`: it sends back whatever it hears); this
//! test is the caller's phone at the RTP level, so it can check what the
//! caller hears. It plays SIPp's own captures: `g711a.pcap` as speech and
//! `dtmf_2833_*.pcap` as key presses.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    Node, Scratch, Sipp, metric_in, pcap_rtp, register, scenario, sipp_media_port, trunk_call, wav,
};
use centralino_media::g711::Law;
use centralino_media::prompt::{Prompt, wav_to_8k};
use centralino_media::rtp::{self, Header};

const SIPP_SHARE: &str = "/usr/share/sip-tester";

/// A-law → µ-law → A-law, as the bytes come back from a µ-law phone that
/// echoes them (the node transcodes both ways).
pub(crate) fn round_trip(b: u8) -> u8 {
    Law::Alaw.encode(Law::Ulaw.decode(Law::Ulaw.encode(Law::Alaw.decode(b))))
}

fn config(sip: u16, http: u16, music: &Path, recordings: &Path) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[media]
music_on_hold = "{music}"
recordings_dir = "{recordings}"

[[tenants]]
name = "demo"

[[trunks]]
name = "carrier"
tenant = "demo"
peers = ["127.0.0.1"]
dids = {{ "100" = "info" }}

[[queues]]
name = "info"
tenant = "demo"
ring_timeout_seconds = 15
record = true

[[agents]]
username = "1001"
password = "demo1001"
tenant = "demo"
queues = ["info"]
"#,
        music = music.display(),
        recordings = recordings.display()
    )
}

/// The recordings in `dir` whose names end with `suffix`.
fn recordings_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The operator's phone (SIPp, `agent_media.xml`), ringing `ring_ms`
/// before it answers, echoing RTP when `echo`; registered as 1001 and
/// available when this returns.
fn operator_phone(scratch: &Scratch, node: &Node, ring_ms: &str, echo: bool) -> Sipp {
    operator_phone_at(scratch, node, ring_ms, echo, sipp_media_port(), 1001)
}

/// As [`operator_phone`] for operator `user`, the phone's SDP naming
/// `media_port` (SIPp's own when `echo`, else any socket, such as the
/// test's); returns once one more operator of "info" is available.
fn operator_phone_at(
    scratch: &Scratch,
    node: &Node,
    ring_ms: &str,
    echo: bool,
    media_port: u16,
    user: u32,
) -> Sipp {
    operator_phone_sdp(scratch, node, ring_ms, echo, "127.0.0.1", media_port, user)
}

/// As [`operator_phone_at`], the phone's SDP naming `sdp_ip`.
fn operator_phone_sdp(
    scratch: &Scratch,
    node: &Node,
    ring_ms: &str,
    echo: bool,
    sdp_ip: &str,
    media_port: u16,
    user: u32,
) -> Sipp {
    let series = "centralino_queue_agents{queue=\"info\",state=\"available\"}";
    let available = node.metric(series) + 1.0;
    let media_port = media_port.to_string();
    let mut args = vec![
        "-sf".to_owned(),
        scenario("agent_media.xml"),
        "-d".to_owned(),
        ring_ms.to_owned(),
        "-m".to_owned(),
        "1".to_owned(),
        "-timeout".to_owned(),
        "60s".to_owned(),
        "-key".to_owned(),
        "operator_rtp".to_owned(),
        media_port.clone(),
        "-key".to_owned(),
        "operator_ip".to_owned(),
        sdp_ip.to_owned(),
    ];
    if echo {
        for a in ["-mi", "127.0.0.1", "-mp", &media_port, "-rtp_echo"] {
            args.push(a.to_owned());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let phone = Sipp::spawn(scratch, &format!("phone{user}"), &args);
    register(scratch, node, &[user], phone.port, |u| format!("demo{u}"));
    node.wait_metric(series, Duration::from_secs(5), |v| v == available);
    phone
}

/// One A-law frame of `byte` from the caller's socket (then the next
/// sequence number).
pub(crate) fn speak(caller: &UdpSocket, to: SocketAddr, seq: &mut u16, ssrc: u32, byte: u8) {
    let h = Header {
        marker: false,
        payload_type: 8,
        seq: *seq,
        timestamp: u32::from(*seq) * 160,
        ssrc,
    };
    *seq = seq.wrapping_add(1);
    let mut out = [0u8; 172];
    rtp::write(&h, &[byte; 160], &mut out).expect("fits");
    caller.send_to(&out, to).expect("send");
}

/// What the caller received.
#[derive(Debug, PartialEq)]
enum Heard {
    Music(usize),
    Echo(usize),
    Other,
}

#[test]
fn caller_hears_music_then_the_operator_and_each_key_is_reported_once() {
    let scratch = Scratch::new("media");
    // The music: a one-second sweep, so every 20 ms frame is distinct.
    let samples: Vec<i16> = (0..8000)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            ((2.0 * std::f64::consts::PI * (300.0 * t + 600.0 * t * t)).sin() * 8000.0) as i16
        })
        .collect();
    let music_path = scratch.path("music.wav");
    std::fs::write(&music_path, wav(&samples)).expect("write music");
    // What the node must send, byte for byte (it stores prompts in A-law
    // and the caller speaks A-law).
    let music = Prompt::from_samples(&samples, Law::Alaw);
    let music_index: HashMap<&[u8], usize> = music
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| (&f[..], i))
        .collect();
    assert_eq!(music_index.len(), music.frames.len(), "distinct frames");

    let recordings = scratch.path("recordings");
    let node = Node::start_toml_log(&scratch, "info,centralino_b2bua=debug", |sip, http| {
        config(sip, http, &music_path, &recordings)
    });
    let phone = operator_phone(&scratch, &node, "3000", true);

    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut trunk = trunk_call(&scratch, &node, "trunk", "trunk_media.xml", &caller, "3000");

    // The caller's phone: speech from g711a.pcap every 20 ms (our own
    // seq/ts/ssrc), the four key presses from SIPp's DTMF captures while
    // waiting, some garbage, and a third party trying to butt in.
    let speech: Vec<Vec<u8>> = pcap_rtp(&format!("{SIPP_SHARE}/g711a.pcap"))
        .iter()
        .map(|p| rtp::parse(p).expect("rtp").payload.to_vec())
        .collect();
    let keys = [('1', "1"), ('5', "5"), ('9', "9"), ('#', "pound")];
    let key_packets: Vec<Vec<Vec<u8>>> = keys
        .iter()
        .map(|(_, f)| pcap_rtp(&format!("{SIPP_SHARE}/dtmf_2833_{f}.pcap")))
        .collect();
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("stranger");
    stranger
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");

    let mut node_rtp: Option<SocketAddr> = None;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut heard: Vec<(Header, Heard)> = Vec::new();
    let (mut seq, mut ts) = (1000u16, 50_000u32);
    let mut next_send = Instant::now();
    let mut started: Option<Instant> = None;
    let mut keys_sent = 0;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    let send = |sock: &UdpSocket, to: SocketAddr, h: Header, payload: &[u8]| {
        let mut out = vec![0u8; 12 + payload.len()];
        rtp::write(&h, payload, &mut out).expect("fits");
        sock.send_to(&out, to).expect("send rtp");
    };
    let echo_expected: Vec<Vec<u8>> = speech
        .iter()
        .map(|p| p.iter().map(|&b| round_trip(b)).collect())
        .collect();
    loop {
        assert!(Instant::now() < deadline, "the call never ended");
        if let Some(st) = trunk.try_wait() {
            assert!(st.success(), "trunk SIPp failed:\n{}", trunk.report());
            break;
        }
        if let Ok((n, from)) = caller.recv_from(&mut buf) {
            let p = rtp::parse(&buf[..n]).expect("the node sends valid RTP");
            node_rtp.get_or_insert(from);
            assert_eq!(Some(from), node_rtp, "one source: the anchored port");
            let what = if let Some(&i) = music_index.get(p.payload) {
                Heard::Music(i)
            } else if let Some(i) = echo_expected.iter().position(|e| e[..] == *p.payload) {
                Heard::Echo(i)
            } else {
                Heard::Other
            };
            heard.push((p.header, what));
        }
        let Some(to) = node_rtp else { continue };
        let now = Instant::now();
        let t0 = *started.get_or_insert(now);
        if now < next_send {
            continue;
        }
        next_send += Duration::from_millis(30);
        // Key presses while waiting (0.3 s apart), from the captures: their
        // payloads and markers, our seq and timestamps.
        if keys_sent < keys.len() && now - t0 >= Duration::from_millis(300 * (keys_sent as u64 + 1))
        {
            for pkt in &key_packets[keys_sent] {
                let p = rtp::parse(pkt).expect("dtmf rtp");
                let h = Header {
                    marker: p.header.marker,
                    payload_type: 101,
                    seq,
                    timestamp: ts,
                    ssrc: 0xCA11E4,
                };
                seq = seq.wrapping_add(1);
                send(&caller, to, h, p.payload);
            }
            keys_sent += 1;
            // Garbage from the caller: wrong version, truncated, CSRC count
            // past the end. A stranger's valid packet must not latch.
            for bad in [
                &[0x40u8; 20][..],
                &[0x80, 8, 0],
                &[0x8F, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
            ] {
                caller.send_to(bad, to).expect("send");
            }
            let h = Header {
                marker: false,
                payload_type: 8,
                seq: 1,
                timestamp: 1,
                ssrc: 666,
            };
            send(&stranger, to, h, &[0x55; 160]);
            continue;
        }
        let i = sent.len() % speech.len();
        let h = Header {
            marker: sent.is_empty(),
            payload_type: 8,
            seq,
            timestamp: ts,
            ssrc: 0xCA11E4,
        };
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(speech[i].len() as u32);
        send(&caller, to, h, &speech[i]);
        sent.push(speech[i].clone());
    }
    let mut phone = phone;
    phone.expect_success(Duration::from_secs(20));

    // 1. While waiting: the music, frame after frame, as one stream.
    let first_echo = heard
        .iter()
        .position(|(_, w)| matches!(w, Heard::Echo(_)))
        .unwrap_or_else(|| panic!("the operator never reached the caller: {heard:?}"));
    let waiting = &heard[..first_echo];
    assert!(waiting.len() >= 100, "{} music packets", waiting.len());
    let n = music.frames.len();
    let Heard::Music(k0) = waiting[0].1 else {
        panic!("first packet is not music: {:?}", waiting[0])
    };
    // Frame after frame, as one stream. A media thread running late skips
    // frames rather than bursting (at most 3 caught up): then the
    // timestamp jumps by exactly the frames skipped, the sequence number
    // does not.
    let mut skipped = 0;
    for (j, pair) in waiting.windows(2).enumerate() {
        let ((h0, w0), (h1, w1)) = (&pair[0], &pair[1]);
        let (Heard::Music(k0), Heard::Music(k1)) = (w0, w1) else {
            panic!("not music at {j}: {w1:?}")
        };
        assert_eq!(h1.ssrc, h0.ssrc);
        assert_eq!(h1.seq, h0.seq.wrapping_add(1), "seq {j}");
        let frames = h1.timestamp.wrapping_sub(h0.timestamp) / 160;
        assert!(frames >= 1 && h1.timestamp.wrapping_sub(h0.timestamp) % 160 == 0);
        assert_eq!(
            (k0 + frames as usize) % n,
            *k1,
            "frame {j}: the audio follows the clock"
        );
        skipped += frames as usize - 1;
        assert!(!h1.marker, "marker only at the start");
        assert_eq!(h1.payload_type, 8);
    }
    assert!(waiting[0].0.marker);
    assert!(
        skipped * 20 < waiting.len(),
        "{skipped} frames skipped of {}",
        waiting.len()
    );
    let _ = k0;
    // 2. Then the operator's side: our speech, through µ-law and back, in
    // the same stream (same SSRC, next sequence number, marker).
    let (h, _) = &heard[first_echo];
    assert_eq!(h.ssrc, waiting[0].0.ssrc, "one SSRC across sources");
    assert_eq!(h.seq, waiting[waiting.len() - 1].0.seq.wrapping_add(1));
    assert!(h.marker, "marker where the source changed");
    let echoes: Vec<usize> = heard[first_echo..]
        .iter()
        .filter_map(|(_, w)| match w {
            Heard::Echo(i) => Some(*i),
            _ => None,
        })
        .collect();
    assert!(echoes.len() >= 50, "{} echoed packets", echoes.len());
    assert!(
        echoes.windows(2).all(|w| w[1] == (w[0] + 1) % speech.len()),
        "the echo comes back in order: {echoes:?}"
    );
    assert!(
        heard[first_echo..]
            .iter()
            .all(|(_, w)| !matches!(w, Heard::Music(_))),
        "no music after the answer"
    );

    // 3. Each key once, in order (the digits are only logged at debug).
    let logs = node.logs();
    let digits: String = logs
        .lines()
        .filter(|l| l.contains("key press") && l.contains("caller"))
        .filter_map(|l| l.split("digit=").nth(1)?.chars().next())
        .collect();
    assert_eq!(digits, "159#", "{logs}");
    let m = node.wait_metric(
        "centralino_rtp_dropped_total{reason=\"bad_packet\"}",
        Duration::from_secs(5),
        |v| v >= 12.0,
    );
    assert_eq!(m, 12.0, "three bad packets after each of four keys");
    let text = node.metrics();
    assert_eq!(
        metric_in(&text, "centralino_dtmf_digits_total{source=\"rfc4733\"}"),
        4.0
    );
    assert_eq!(
        metric_in(
            &text,
            "centralino_rtp_dropped_total{reason=\"foreign_source\"}"
        ),
        4.0,
        "{text}"
    );
    let mut b = [0u8; 64];
    assert!(
        stranger.recv_from(&mut b).is_err(),
        "the stranger got nothing"
    );
    // Everything released.
    node.wait_metric("centralino_media_sessions", Duration::from_secs(5), |v| {
        v == 0.0
    });
    assert!(
        !logs.contains("+393330"),
        "caller number unmasked in the log"
    );

    // 4. The conversation was recorded: one WAV, as long as the bridged
    // part of the call, holding the caller's speech (and its echo).
    node.wait_log("recording complete", Duration::from_secs(5));
    let files = recordings_in(&recordings, ".wav");
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("call-") && !name.contains("3933300"),
        "{name}"
    );
    let audio = wav_to_8k(&std::fs::read(&files[0]).unwrap()).unwrap();
    let seconds = audio.len() as f64 / 8000.0;
    assert!((2.0..6.0).contains(&seconds), "{seconds} s recorded");
    let loud = audio.iter().filter(|s| s.unsigned_abs() > 500).count();
    assert!(
        loud > audio.len() / 10,
        "speech in the recording: {loud} loud samples"
    );
    assert!(recordings_in(&recordings, ".partial").is_empty());
}

#[test]
fn a_recording_interrupted_by_kill_9_is_kept_as_partial_on_restart() {
    let scratch = Scratch::new("media-kill");
    let music_path = scratch.path("music.wav");
    std::fs::write(&music_path, wav(&[100; 8000])).expect("write music");
    let recordings = scratch.path("recordings");
    let mut node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, &music_path, &recordings)
    });
    let _phone = operator_phone(&scratch, &node, "100", true);
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    let _trunk = trunk_call(
        &scratch,
        &node,
        "trunk",
        "trunk_media.xml",
        &caller,
        "60000",
    );
    // Wait until more than a second of audio is on disk, then crash.
    let start = Instant::now();
    loop {
        let partial = recordings_in(&recordings, ".wav.partial");
        if partial
            .first()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() > 44 + 16_000)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no recording in progress:\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.kill_hard();
    assert_eq!(recordings_in(&recordings, ".wav.partial").len(), 1);

    // A new process on the same directory repairs and renames it.
    let scratch2 = Scratch::new("media-kill-restart");
    let node2 = Node::start_toml(&scratch2, |sip, http| {
        config(sip, http, &music_path, &recordings)
    });
    node2.wait_log("kept as partial", Duration::from_secs(5));
    assert!(recordings_in(&recordings, ".wav.partial").is_empty());
    let kept = recordings_in(&recordings, ".partial.wav");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let audio = wav_to_8k(&std::fs::read(&kept[0]).unwrap()).expect("a valid WAV");
    assert!(audio.len() >= 8000, "{} samples kept", audio.len());
    assert_eq!(
        node2.metric("centralino_recordings_total{outcome=\"recovered_partial\"}"),
        1.0
    );
}

/// Frames of the Italian prompts `names` (Debian's asterisk-core-sounds-it-wav),
/// as the node stores and sends them to an A-law caller.
fn italian(names: &[&str]) -> Vec<[u8; 160]> {
    let dir = centralino_config::DEFAULT_SOUNDS;
    names
        .iter()
        .flat_map(|n| {
            let path = format!("{dir}/{n}.wav");
            let data = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{path}: {e} (install asterisk-core-sounds-it-wav; scripts/test does)")
            });
            Prompt::from_wav(&data, Law::Alaw)
                .expect("a usable prompt")
                .frames
                .to_vec()
        })
        .collect()
}

#[test]
fn waiting_callers_hear_their_position_in_italian_between_the_music() {
    let scratch = Scratch::new("media-announce");
    let music_path = scratch.path("music.wav");
    std::fs::write(&music_path, wav(&[100; 8000])).expect("write music");
    let recordings = scratch.path("recordings");
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, &music_path, &recordings)
            .replace("record = true", "announce_seconds = 10")
    });
    // Two callers, nobody to answer: the first is next, the second has
    // one call before it.
    let sockets: Vec<UdpSocket> = (0..2)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            s
        })
        .collect();
    let mut trunks = Vec::new();
    for (i, s) in sockets.iter().enumerate() {
        trunks.push(trunk_call(
            &scratch,
            &node,
            &format!("trunk{i}"),
            "trunk_media_cancel.xml",
            s,
            "18000",
        ));
        node.wait_metric(
            "centralino_queue_calls{queue=\"info\"}",
            Duration::from_secs(5),
            |v| v == i as f64 + 1.0,
        );
    }
    let mut heard: Vec<Vec<[u8; 160]>> = vec![Vec::new(); 2];
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    while trunks.iter_mut().any(|t| t.try_wait().is_none()) {
        assert!(Instant::now() < deadline, "callers never gave up");
        for (i, s) in sockets.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                let p = rtp::parse(&buf[..n]).expect("valid RTP");
                if let Ok(f) = <[u8; 160]>::try_from(p.payload) {
                    heard[i].push(f);
                }
            }
        }
    }
    for t in &mut trunks {
        t.expect_success(Duration::from_secs(5));
    }
    // The prompt's frames in order; a media thread running late may skip
    // a few (it never bursts), so up to 10 % may be missing.
    let contains = |hay: &[[u8; 160]], needle: &[[u8; 160]]| {
        let Some(start) = hay.iter().position(|f| *f == needle[0]) else {
            return false;
        };
        let (mut j, mut found) = (0, 0);
        for f in &hay[start..] {
            if j >= needle.len() {
                break;
            }
            if let Some(k) = needle[j..needle.len().min(j + 5)]
                .iter()
                .position(|e| e == f)
            {
                j += k + 1;
                found += 1;
            }
        }
        j >= needle.len() - 1 && found * 10 >= needle.len() * 9
    };
    // "Lei è il prossimo … grazie per l'attesa"; nobody is staffed, so no
    // wait is said.
    let first = italian(&["queue-youarenext", "queue-thankyou"]);
    assert!(heard[0].len() > 500, "{} frames", heard[0].len());
    let pos = |hay: &[[u8; 160]], f: &[u8; 160]| hay.iter().position(|h| h == f);
    assert!(
        contains(&heard[0], &first),
        "the first caller's announcement: first frame at {:?}, last at {:?}, of {}; played {}",
        pos(&heard[0], &first[0]),
        pos(&heard[0], &first[first.len() - 1]),
        heard[0].len(),
        node.metric("centralino_announcements_total{outcome=\"played\"}")
    );
    // "Ci sono 2 chiamate in attesa prima di lei … grazie".
    let second = italian(&[
        "queue-thereare",
        "digits/2",
        "queue-callswaiting",
        "queue-thankyou",
    ]);
    assert!(
        contains(&heard[1], &second),
        "the second caller's announcement"
    );
    assert!(!contains(&heard[1], &first));
    assert_eq!(
        node.metric("centralino_announcements_total{outcome=\"played\"}"),
        2.0
    );
}

/// An operator's phone that dies mid-call (answers, then sends no RTP)
/// does not leave the caller in dead air: after the inactivity timeout the
/// phone gets BYE, its operator is paused, the caller hears the music
/// again and is the next call answered, by another operator.
#[test]
fn a_silent_operator_phone_sends_the_caller_back_to_the_queue_for_the_next_operator() {
    let scratch = Scratch::new("media-silent");
    let music_path = scratch.path("music.wav");
    std::fs::write(&music_path, wav(&[100; 8000])).expect("write music");
    let recordings = scratch.path("recordings");
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, &music_path, &recordings)
            .replace("[media]\n", "[media]\ninactivity_timeout_seconds = 2\n")
            + "\n[[agents]]\nusername = \"1002\"\npassword = \"demo1002\"\ntenant = \"demo\"\nqueues = [\"info\"]\n"
    });
    // 1001's phone answers but never sends RTP (no -rtp_echo): dead media.
    // It logs in first, so it is the longest idle and is offered the call.
    let mut dead = operator_phone_at(&scratch, &node, "100", false, sipp_media_port(), 1001);
    let mut alive = operator_phone_at(&scratch, &node, "100", true, sipp_media_port(), 1002);
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut trunk = trunk_call(
        &scratch,
        &node,
        "trunk",
        "trunk_media.xml",
        &caller,
        "10000",
    );
    const SPEECH: u8 = 0x2A;
    let echo = round_trip(SPEECH);
    // The caller keeps talking; what comes back: music, then (nothing
    // from the dead phone), music again, then their own voice from 1002.
    let mut node_rtp = None;
    let mut buf = [0u8; 2048];
    let mut seq = 0u16;
    let (mut music_after_loss, mut echoed) = (0, 0);
    let start = Instant::now();
    while trunk.try_wait().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "never hung up");
        if let Ok((n, from)) = caller.recv_from(&mut buf) {
            node_rtp = Some(from);
            let p = rtp::parse(&buf[..n]).expect("rtp to the caller");
            let requeued = node
                .metric_or_zero("centralino_calls_requeued_total{reason=\"operator_media_lost\"}");
            if p.payload[0] == echo {
                echoed += 1;
            } else if requeued > 0.0 && echoed == 0 {
                music_after_loss += 1;
            }
        }
        if let Some(to) = node_rtp {
            speak(&caller, to, &mut seq, 77, SPEECH);
        }
    }
    trunk.expect_success(Duration::from_secs(5));
    dead.expect_success(Duration::from_secs(10));
    alive.expect_success(Duration::from_secs(10));
    assert!(music_after_loss > 0, "the music came back after the loss");
    assert!(echoed > 50, "then the next operator's audio: {echoed}");
    assert_eq!(
        node.metric("centralino_media_timeouts_total{side=\"operator\"}"),
        1.0
    );
    let logs = node.logs();
    assert!(logs.contains("call answered agent=1002"), "{logs}");
    // The operator with the dead phone stays paused until they resume.
    assert_eq!(
        node.metric("centralino_queue_agents{queue=\"info\",state=\"paused\"}"),
        1.0
    );
    node.wait_metric("centralino_calls_active", Duration::from_secs(5), |v| {
        v == 0.0
    });
}

#[test]
fn floods_to_the_media_ports_never_disturb_a_call() {
    let scratch = Scratch::new("media-flood");
    let music_path = scratch.path("music.wav");
    // One distinct value per frame, so a skipped or repeated frame shows.
    let samples: Vec<i16> = (0..8000).map(|i| ((i / 160) * 300 - 7000) as i16).collect();
    std::fs::write(&music_path, wav(&samples)).expect("write music");
    let recordings = scratch.path("recordings");
    // A range of its own: the flood must not reach other tests' nodes.
    let (first, last) = (61_000u16, 61_199u16);
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, &music_path, &recordings).replace(
            "[media]\n",
            &format!("[media]\nport_min = {first}\nport_max = {last}\n"),
        )
    });
    let flood = UdpSocket::bind("127.0.0.1:0").expect("flood socket");
    let garbage = [0x80u8, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xD5, 0xD5];
    let flood_all = |except: Option<u16>| {
        for _ in 0..10 {
            for port in first..=last {
                if Some(port) != except {
                    let _ = flood.send_to(&garbage, ("127.0.0.1", port));
                }
            }
        }
    };
    // Before any call nothing is bound: the kernel drops it all.
    flood_all(None);
    assert_eq!(node.http_get("/healthz").0, 200);

    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut trunk = trunk_call(
        &scratch,
        &node,
        "trunk",
        "trunk_media_cancel.xml",
        &caller,
        "3000",
    );
    let mut buf = [0u8; 2048];
    let mut heard: Vec<Header> = Vec::new();
    let mut flooded = false;
    while trunk.try_wait().is_none() {
        if let Ok((n, from)) = caller.recv_from(&mut buf) {
            heard.push(rtp::parse(&buf[..n]).expect("valid RTP").header);
            // Mid-call, every other port of the range: the operator's
            // port (bound, nobody answered yet), the RTCP ports, the rest.
            if heard.len() == 50 && !flooded {
                flood_all(Some(from.port()));
                flooded = true;
            }
        }
    }
    trunk.expect_success(Duration::from_secs(5));
    assert!(heard.len() > 100, "{} packets", heard.len());
    assert!(
        heard
            .windows(2)
            .all(|w| w[1].seq == w[0].seq.wrapping_add(1) && w[1].ssrc == w[0].ssrc),
        "the music went on, one stream, nothing lost"
    );
    // What reached the call's own sockets was dropped and counted.
    node.wait_metric(
        "centralino_rtp_dropped_total{reason=\"before_bridge\"}",
        Duration::from_secs(5),
        |v| v >= 10.0,
    );
    assert!(node.metric("centralino_rtp_dropped_total{reason=\"rtcp_ignored\"}") >= 10.0);
    assert_eq!(node.http_get("/healthz").0, 200);
}

/// The queue's whisper: once the operator answers they hear the line's
/// context on their own stream (the test is the phone's RTP endpoint)
/// while the caller keeps hearing the music; only then are they bridged,
/// and the caller's voice follows on the same stream.
#[test]
fn the_operator_hears_the_whisper_then_the_caller() {
    let scratch = Scratch::new("media-whisper");
    let music_path = scratch.path("music.wav");
    std::fs::write(&music_path, wav(&[100; 8000])).expect("write music");
    let prompts = scratch.path("prompts");
    std::fs::create_dir_all(&prompts).expect("prompts dir");
    // 0.5 s of a steady level: 25 frames, all the same byte.
    let whisper_wav = wav(&[3000; 4000]);
    std::fs::write(prompts.join("contesto.wav"), &whisper_wav).expect("write prompt");
    let expected: Vec<u8> = Prompt::from_wav(&whisper_wav, Law::Alaw)
        .expect("prompt")
        .frames
        .iter()
        .map(|f| Law::Ulaw.encode(Law::Alaw.decode(f[0])))
        .collect();
    let recordings = scratch.path("recordings");
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, &music_path, &recordings)
            .replace("record = true", "whisper = [\"contesto\"]")
            .replace(
                "[media]\n",
                &format!("[media]\nprompts_dir = \"{}\"\n", prompts.display()),
            )
    });
    let op = UdpSocket::bind("127.0.0.1:0").expect("operator rtp");
    op.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut phone = operator_phone_at(
        &scratch,
        &node,
        "300",
        false,
        op.local_addr().expect("addr").port(),
        1001,
    );
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut trunk = trunk_call(&scratch, &node, "trunk", "trunk_media.xml", &caller, "3000");
    const SPEECH: u8 = 0x2A;
    let speech_ulaw = Law::Ulaw.encode(Law::Alaw.decode(SPEECH));
    let (mut node_a, mut seq) = (None, 0u16);
    let mut heard = Vec::new(); // what the operator got: (seq, ssrc, first byte)
    let mut caller_music_after_answer = 0;
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut next_send = Instant::now();
    while trunk.try_wait().is_none() && start.elapsed() < Duration::from_secs(20) {
        if let Ok((n, from)) = caller.recv_from(&mut buf) {
            node_a = Some(from);
            let p = rtp::parse(&buf[..n]).expect("rtp to the caller");
            if !heard.is_empty() && p.payload[0] != SPEECH {
                caller_music_after_answer += 1;
            }
        }
        if let Ok((n, _)) = op.recv_from(&mut buf) {
            let p = rtp::parse(&buf[..n]).expect("rtp to the operator");
            heard.push((p.header.seq, p.header.ssrc, p.payload[0]));
        }
        // The caller speaks all along, every 20 ms.
        if let Some(to) = node_a
            && Instant::now() >= next_send
        {
            next_send += Duration::from_millis(20);
            speak(&caller, to, &mut seq, 4242, SPEECH);
        }
    }
    trunk.expect_success(Duration::from_secs(10));
    phone.expect_success(Duration::from_secs(10));
    let bytes: Vec<u8> = heard.iter().map(|h| h.2).collect();
    let first_speech = bytes
        .iter()
        .position(|&b| b == speech_ulaw)
        .expect("the caller was heard after the whisper");
    let whisper = &bytes[..first_speech];
    // The playout may skip a late frame under load; the order holds.
    assert!(
        whisper.len() * 10 >= expected.len() * 9 && whisper.iter().all(|&b| b == expected[0]),
        "the whisper first, whole: {whisper:?} (expected {} × {:#x})",
        expected.len(),
        expected[0]
    );
    assert!(
        bytes[first_speech..].iter().all(|&b| b == speech_ulaw),
        "then only the caller"
    );
    let ssrcs: std::collections::HashSet<u32> = heard.iter().map(|h| h.1).collect();
    assert_eq!(ssrcs.len(), 1, "one stream for the operator");
    for w in heard.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0.wrapping_add(1),
            "consecutive sequence numbers"
        );
    }
    assert!(
        caller_music_after_answer > 0,
        "the caller kept hearing the music during the whisper"
    );
    assert_eq!(node.metric("centralino_whispers_total{kind=\"call\"}"), 1.0);
}

/// A phone behind NAT (or on a multi-homed PC): its SDP names 127.0.0.5,
/// its RTP comes from 127.0.0.1 (where it registered from) on another
/// port. With the default `latch = "symmetric"` both directions flow, to
/// the address it sends from; a stranger on 127.0.0.9 is never heard and
/// never sent anything (issue 18, TEST-MATRIX D1). With `sdp_address` the
/// operator hears nothing (checked by hand: this test then fails).
#[test]
fn a_phone_behind_nat_is_heard_and_hears_at_the_address_it_sends_from() {
    let scratch = Scratch::new("media-nat");
    let music_path = scratch.path("music.wav");
    std::fs::write(&music_path, wav(&[100; 8000])).expect("write music");
    let recordings = scratch.path("recordings");
    let node = Node::start_toml(&scratch, |sip, http| {
        config(sip, http, &music_path, &recordings).replace("record = true", "record = false")
    });
    // Where the SDP says the phone is: only to learn the node's port.
    let advertised = UdpSocket::bind("127.0.0.5:0").expect("the SDP's address");
    advertised
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    // Where the phone's RTP really comes from.
    let op = UdpSocket::bind("127.0.0.1:0").expect("operator rtp");
    op.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let stranger = UdpSocket::bind("127.0.0.9:0").expect("stranger");
    stranger
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let mut phone = operator_phone_sdp(
        &scratch,
        &node,
        "100",
        false,
        "127.0.0.5",
        advertised.local_addr().expect("addr").port(),
        1001,
    );
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut trunk = trunk_call(&scratch, &node, "trunk", "trunk_media.xml", &caller, "3000");
    const CALLER: u8 = 0x2A;
    const OPERATOR: u8 = 0x5D;
    const STRANGER: u8 = 0x11;
    let caller_ulaw = Law::Ulaw.encode(Law::Alaw.decode(CALLER));
    let operator_alaw = Law::Alaw.encode(Law::Ulaw.decode(OPERATOR));
    let stranger_alaw = Law::Alaw.encode(Law::Ulaw.decode(STRANGER));
    let (mut node_a, mut node_b) = (None, None);
    let (mut seq_a, mut seq_b, mut seq_s) = (0u16, 0u16, 0u16);
    let (mut op_heard, mut caller_heard, mut caller_heard_stranger, mut stranger_got) =
        (0, 0, 0, 0);
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut next_send = Instant::now();
    while trunk.try_wait().is_none() && start.elapsed() < Duration::from_secs(20) {
        if let Ok((n, from)) = caller.recv_from(&mut buf) {
            node_a = Some(from);
            let p = rtp::parse(&buf[..n]).expect("rtp to the caller");
            if p.payload[0] == operator_alaw {
                caller_heard += 1;
            } else if p.payload[0] == stranger_alaw {
                caller_heard_stranger += 1;
            }
        }
        if let Ok((_, from)) = advertised.recv_from(&mut buf) {
            node_b = Some(from);
        }
        if let Ok((n, _)) = op.recv_from(&mut buf) {
            let p = rtp::parse(&buf[..n]).expect("rtp to the operator");
            if p.payload[0] == caller_ulaw {
                op_heard += 1;
            }
        }
        if stranger.recv_from(&mut buf).is_ok() {
            stranger_got += 1;
        }
        if Instant::now() >= next_send {
            next_send += Duration::from_millis(20);
            if let Some(to) = node_a {
                speak(&caller, to, &mut seq_a, 4242, CALLER);
            }
            if let Some(to) = node_b {
                // µ-law (the phone's answer) from the real address; the
                // stranger sends to the same port all along.
                let mut out = [0u8; 172];
                for (sock, seq, byte, ssrc) in [
                    (&op, &mut seq_b, OPERATOR, 77),
                    (&stranger, &mut seq_s, STRANGER, 66),
                ] {
                    let h = Header {
                        marker: false,
                        payload_type: 0,
                        seq: *seq,
                        timestamp: u32::from(*seq) * 160,
                        ssrc,
                    };
                    *seq = seq.wrapping_add(1);
                    rtp::write(&h, &[byte; 160], &mut out).expect("fits");
                    sock.send_to(&out, to).expect("send");
                }
            }
        }
    }
    trunk.expect_success(Duration::from_secs(10));
    phone.expect_success(Duration::from_secs(10));
    assert!(node_b.is_some(), "the node sent to the SDP's address first");
    assert!(
        op_heard > 20,
        "the operator heard the caller at the address it sends from: {op_heard}"
    );
    assert!(
        caller_heard > 20,
        "the caller heard the operator's RTP from its real address: {caller_heard}"
    );
    assert_eq!(caller_heard_stranger, 0, "and never the stranger");
    assert_eq!(stranger_got, 0, "nothing was ever sent to the stranger");
    assert!(
        node.metric("centralino_rtp_dropped_total{reason=\"foreign_source\"}") > 20.0,
        "the stranger's packets were dropped"
    );
}

/// A caller's key sent as an RFC 4733 event during the conversation reaches
/// an operator's phone that negotiated no telephone-event but takes INFO:
/// SIPp as both, the carrier playing its own DTMF capture, the phone
/// checking the INFO it gets (`application/dtmf-relay`, `Signal=1`).
/// A node with music on hold, and operator 1001's SIPp phone running
/// `phone_scenario` for one call, registered and available.
fn node_and_phone(scratch: &Scratch, phone_scenario: &str) -> (Node, Sipp) {
    let music = scratch.path("music.wav");
    std::fs::write(&music, wav(&[100; 8000])).expect("music");
    let node = Node::start_toml(scratch, |sip, http| {
        config(sip, http, &music, &scratch.path("recordings"))
    });
    let phone = Sipp::spawn(
        scratch,
        "phone",
        &[
            "-sf",
            &scenario(phone_scenario),
            "-m",
            "1",
            "-timeout",
            "30s",
        ],
    );
    register(scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    node.wait_metric(
        "centralino_queue_agents{queue=\"info\",state=\"available\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    (node, phone)
}

/// Issue 18: a phone that holds by a re-INVITE without SDP (some desk
/// phones): the node's 200 carries its offer (SIPp checks `sendrecv` and
/// µ-law, the law in use, first), and the phone's `sendonly` answer in
/// the ACK holds the call (the media plane told, as the node logs).
#[test]
fn a_phones_reinvite_without_sdp_gets_an_offer_and_its_ack_answer_holds_the_call() {
    let scratch = Scratch::new("reinvite-no-sdp");
    let (node, mut phone) = node_and_phone(&scratch, "agent_reinvite_no_sdp.xml");
    let mut trunk = crate::common::trunk_to(
        &scratch,
        &node,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "3000"],
    );
    trunk.expect_success(Duration::from_secs(30));
    phone.expect_success(Duration::from_secs(10));
    let logs = node.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("session changed by the answer in an ACK"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("held=true"), "{line}");
}

/// Issue 15: hold and resume from a SIP phone. The operator's phone (SIPp)
/// re-INVITEs `sendonly` a second after answering (SIPp checks the node's
/// `recvonly` answer), the caller hears the queue's music while held; 2.5 s
/// later it re-INVITEs `sendrecv` (answered `sendrecv`, checked) and the
/// music stops: the phone sends no audio, so the caller hears nothing more
/// until they hang up 7 s after the answer.
#[test]
fn a_phone_holds_and_resumes_by_reinvite_and_the_caller_hears_music_only_meanwhile() {
    let scratch = Scratch::new("hold-resume");
    let (node, mut phone) = node_and_phone(&scratch, "agent_hold_resume.xml");
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut trunk = trunk_call(&scratch, &node, "trunk", "trunk_media.xml", &caller, "7000");
    // When each packet reaches the caller, until the caller hangs up.
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        if let Ok((n, _)) = caller.recv_from(&mut buf)
            && rtp::parse(&buf[..n]).is_ok()
        {
            arrivals.push(Instant::now());
        }
        if trunk.try_wait().is_some() {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "the caller's call never ended");
    };
    trunk.expect_success(Duration::from_secs(5));
    phone.expect_success(Duration::from_secs(10));
    // 2.5 s held: about 125 packets of music (20 ms each).
    assert!(
        arrivals.len() >= 60,
        "the held caller hears the music: {} packets",
        arrivals.len()
    );
    // The music is one run of packets (20 ms apart) as long as the hold,
    // 2.5 s: not the whole call, not a few early packets.
    let mut runs = vec![(arrivals[0], arrivals[0])];
    for &t in &arrivals[1..] {
        let run = runs.last_mut().expect("one run");
        if t - run.1 < Duration::from_millis(200) {
            run.1 = t;
        } else {
            runs.push((t, t));
        }
    }
    let longest = runs.iter().map(|(a, b)| *b - *a).max().expect("a run");
    assert!(
        longest >= Duration::from_millis(2000) && longest <= Duration::from_millis(3200),
        "music only while held: runs {:?}",
        runs.iter().map(|(a, b)| *b - *a).collect::<Vec<_>>()
    );
    let last = arrivals[arrivals.len() - 1];
    assert!(
        ended - last >= Duration::from_millis(1500),
        "resumed, the music stopped {:?} before the caller hung up",
        ended - last
    );
    let logs = node.logs();
    let held: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("session changed by re-INVITE"))
        .collect();
    assert!(
        held.len() == 2 && held[0].contains("held=true") && held[1].contains("held=false"),
        "{held:?}"
    );
}

/// Issue 18: the other way. An operator's phone that keys only by SIP
/// INFO presses 7 on a call whose carrier negotiated telephone-event but
/// lists no INFO: the caller's RTP socket (the test's) receives the key
/// as RFC 4733 events in the caller's stream (same SSRC as the audio,
/// the offered payload type 101, event 7, the end packet).
#[test]
fn an_operators_key_by_info_reaches_the_caller_as_telephone_events() {
    let scratch = Scratch::new("info-to-events");
    let (node, mut phone) = node_and_phone(&scratch, "agent_sends_key_by_info.xml");
    // The carrier of trunk_media.xml without INFO in its Allow.
    let no_info = scratch.path("trunk_media_no_info.xml");
    let text = std::fs::read_to_string(scenario("trunk_media.xml")).expect("scenario");
    let without = text.replace(
        "Allow: INVITE, ACK, CANCEL, BYE, INFO",
        "Allow: INVITE, ACK, CANCEL, BYE",
    );
    assert_ne!(text, without);
    std::fs::write(&no_info, without).expect("scenario");
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut trunk = crate::common::trunk_call_from(
        &scratch,
        &node,
        "trunk",
        no_info.to_str().expect("utf-8"),
        &caller,
        "3000",
    );
    let mut buf = [0u8; 2048];
    let mut ssrcs = std::collections::HashSet::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while trunk.try_wait().is_none() && Instant::now() < deadline {
        let Ok((n, _)) = caller.recv_from(&mut buf) else {
            continue;
        };
        let Ok(p) = rtp::parse(&buf[..n]) else {
            continue;
        };
        ssrcs.insert(p.header.ssrc);
        if p.header.payload_type == 101 {
            events.push((p.header.marker, p.payload.to_vec()));
        }
    }
    trunk.expect_success(Duration::from_secs(10));
    phone.expect_success(Duration::from_secs(10));
    assert_eq!(ssrcs.len(), 1, "one stream to the caller: {ssrcs:?}");
    assert!(events.len() >= 5, "{events:?}");
    assert!(events[0].0, "the marker on the event's first packet");
    assert!(events.iter().all(|(_, p)| p[0] == 7), "{events:?}");
    assert!(
        events.iter().any(|(_, p)| p[1] & 0x80 != 0),
        "an end packet"
    );
    assert_eq!(
        node.metric("centralino_dtmf_converted_total{direction=\"info_to_rfc4733\"}"),
        1.0
    );
}

#[test]
fn a_callers_rfc4733_key_reaches_a_phone_without_events_by_info() {
    let scratch = Scratch::new("key-by-info");
    let (node, mut phone) = node_and_phone(&scratch, "agent_info_keys.xml");
    let mut trunk = crate::common::trunk_to(
        &scratch,
        &node,
        "trunk",
        "trunk_key_connected.xml",
        &["-m", "1"],
    );
    trunk.expect_success(Duration::from_secs(30));
    phone.expect_success(Duration::from_secs(10));
    assert_eq!(
        node.metric("centralino_dtmf_converted_total{direction=\"rfc4733_to_info\"}"),
        1.0
    );
}
