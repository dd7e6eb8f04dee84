//! Real-UDP media load on loopback: N bridged G.711 calls, 20 ms packets
//! both ways, through Centralino's media plane (its real threads and
//! sockets, driven in-process) or through rtpengine (userspace, driven over
//! its ng control protocol). Prints packets relayed, loss, added latency
//! and jitter, and the relay's CPU time per packet, read from /proc: the
//! packets per second one core of the relay sustains.
//!
//! ```text
//! cargo bench --bench rtp_load -- [--calls N] [--seconds S] [--target centralino|rtpengine]
//! ```
//!
//! rtpengine: Debian's `rtpengine-daemon`; started here with `--table=-1`
//! (no kernel forwarding) and one thread, stopped at the end.
//!
//! Bounded: at most 5,000 calls and 60 seconds.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use centralino_b2bua::media::{MediaCommand, MediaEvent, Peer};
use centralino_config::Config;
use centralino_media::g711::Law;
use centralino_media::rtp::{self, Header};
use centralino_net::MediaPlane;
use centralino_net::NetMetrics;
use centralino_types::CallId;

const PTIME: Duration = Duration::from_millis(20);
/// Generator sockets per side: calls share them (the relay latches each
/// call's own port pair; the generator only needs to receive).
const GEN_SOCKETS: usize = 16;

struct Args {
    calls: usize,
    seconds: u64,
    target: String,
}

fn args() -> Args {
    let mut a = Args {
        calls: 1000,
        seconds: 10,
        target: "centralino".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--calls" => a.calls = v.parse().expect("--calls N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--target" => a.target = v,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!((1..=5000).contains(&a.calls), "--calls 1..=5000");
    assert!((2..=60).contains(&a.seconds), "--seconds 2..=60");
    a
}

/// Where the generator sends each call's packets: (relay address for the
/// A side, relay address for the B side).
type Routes = Vec<(SocketAddr, SocketAddr)>;

/// CPU ticks (user + system) of a thread or process from /proc.
fn cpu_ticks(stat_path: &str) -> u64 {
    let s = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime
    // and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(14) + n(15)
}

fn media_thread_stat() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("media-") {
            out.push(p.join("stat").display().to_string());
        }
    }
    out
}

struct Relay {
    routes: Routes,
    stat: Vec<String>,
    _keep: Box<dyn std::any::Any>,
}

fn centralino(gen_a: &[SocketAddr], gen_b: &[SocketAddr], calls: usize) -> Relay {
    let config = Config::from_toml(
        "[media]\nthreads = 1\nport_min = 30000\nport_max = 49999\ninactivity_timeout_seconds = 0\n",
    )
    .expect("config");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut plane = MediaPlane::start(
        &config.media,
        NetMetrics::new(&centralino_b2bua::Metrics::new().registry),
        tx,
    )
    .expect("media plane");
    let ip = IpAddr::from([127, 0, 0, 1]);
    let mut routes = Vec::with_capacity(calls);
    for i in 0..calls {
        let call = CallId(i as u64 + 1);
        let Some(MediaEvent::Reserved { a_port, b_port, .. }) =
            plane.command(MediaCommand::Reserve { call, ip })
        else {
            panic!("no ports for call {i}")
        };
        let peer = |addr| Peer {
            addr,
            law: Law::Ulaw,
            telephone_event: None,
            signalling: None,
            browser: false,
        };
        let a = peer(gen_a[i % GEN_SOCKETS]);
        for cmd in [
            MediaCommand::Open {
                call,
                ip,
                a_port,
                b_port,
                a: a.into(),
            },
            MediaCommand::Bridge {
                call,
                b: peer(gen_b[i % GEN_SOCKETS]).into(),
                record: false,
            },
        ] {
            assert!(plane.command(cmd).is_none(), "command refused");
        }
        routes.push((SocketAddr::new(ip, a_port), SocketAddr::new(ip, b_port)));
    }
    plane.flush();
    // Let the media thread take the commands before traffic starts.
    std::thread::sleep(Duration::from_millis(300));
    Relay {
        routes,
        stat: media_thread_stat(),
        _keep: Box::new((plane, rx)),
    }
}

/// A bencoded ng message from string pairs.
fn bencode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = b"d".to_vec();
    for (k, v) in pairs {
        out.extend(format!("{}:{k}{}:", k.len(), v.len()).bytes());
        out.extend(v.bytes());
    }
    out.push(b'e');
    out
}

/// The `m=audio` port of the SDP inside an ng reply.
fn reply_port(reply: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(reply);
    assert!(text.contains("6:result2:ok"), "rtpengine refused: {text}");
    text.split("m=audio ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no port in {text}"))
}

struct Rtpengine(Child);

impl Drop for Rtpengine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rtpengine(gen_a: &[SocketAddr], gen_b: &[SocketAddr], calls: usize) -> Relay {
    let ctl = UdpSocket::bind("127.0.0.1:0").expect("ng socket");
    let ng_port = {
        let s = UdpSocket::bind("127.0.0.1:0").expect("probe");
        s.local_addr().expect("addr").port()
    };
    let child = Command::new("rtpengine")
        .args([
            "--foreground",
            "--table=-1",
            "--interface=127.0.0.1",
            &format!("--listen-ng=127.0.0.1:{ng_port}"),
            "--port-min=50000",
            "--port-max=59999",
            "--num-threads=1",
            "--log-stderr",
            "--log-level=3",
            "--pidfile=/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rtpengine (apt-get install rtpengine-daemon)");
    let pid = child.id();
    let guard = Rtpengine(child);
    ctl.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let ng = SocketAddr::from(([127, 0, 0, 1], ng_port));
    let mut seq = 0u64;
    let mut request = |pairs: &[(&str, &str)]| -> Vec<u8> {
        seq += 1;
        let cookie = format!("c{seq} ");
        let mut msg = cookie.clone().into_bytes();
        msg.extend(bencode(pairs));
        let mut buf = vec![0u8; 65536];
        for _ in 0..50 {
            ctl.send_to(&msg, ng).expect("ng send");
            if let Ok((n, _)) = ctl.recv_from(&mut buf)
                && buf[..n].starts_with(cookie.as_bytes())
            {
                return buf[cookie.len()..n].to_vec();
            }
        }
        panic!("rtpengine does not answer on {ng}");
    };
    let sdp = |a: SocketAddr| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            a.port()
        )
    };
    let mut routes = Vec::with_capacity(calls);
    for i in 0..calls {
        let (ga, gb) = (gen_a[i % GEN_SOCKETS], gen_b[i % GEN_SOCKETS]);
        let call_id = format!("load-{i}");
        // The offer comes from A: rtpengine's reply is what B must use.
        let b_side = reply_port(&request(&[
            ("command", "offer"),
            ("call-id", &call_id),
            ("from-tag", "a"),
            ("sdp", &sdp(ga)),
        ]));
        let a_side = reply_port(&request(&[
            ("command", "answer"),
            ("call-id", &call_id),
            ("from-tag", "a"),
            ("to-tag", "b"),
            ("sdp", &sdp(gb)),
        ]));
        routes.push((
            SocketAddr::from(([127, 0, 0, 1], a_side)),
            SocketAddr::from(([127, 0, 0, 1], b_side)),
        ));
    }
    Relay {
        routes,
        stat: vec![format!("/proc/{pid}/stat")],
        _keep: Box::new(guard),
    }
}

/// Per call and direction: received count and RFC 3550 jitter state.
#[derive(Clone, Copy, Default)]
struct Flow {
    received: u64,
    last_transit: Option<i64>,
    jitter: f64,
}

fn main() {
    let args = args();
    let _ = centralino_net::descriptors::raise_open_file_limit();
    let bind = || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("generator socket");
        s.set_nonblocking(true).expect("nonblocking");
        s
    };
    let gen_a: Vec<UdpSocket> = (0..GEN_SOCKETS).map(|_| bind()).collect();
    let gen_b: Vec<UdpSocket> = (0..GEN_SOCKETS).map(|_| bind()).collect();
    let addrs = |v: &[UdpSocket]| -> Vec<SocketAddr> {
        v.iter().map(|s| s.local_addr().expect("addr")).collect()
    };
    let (aa, ba) = (addrs(&gen_a), addrs(&gen_b));
    let relay = match args.target.as_str() {
        "centralino" => centralino(&aa, &ba, args.calls),
        "rtpengine" => rtpengine(&aa, &ba, args.calls),
        // The harness alone: each side sends straight to the other.
        "direct" => Relay {
            routes: (0..args.calls)
                .map(|i| (ba[i % GEN_SOCKETS], aa[i % GEN_SOCKETS]))
                .collect(),
            stat: Vec::new(),
            _keep: Box::new(()),
        },
        other => panic!("--target centralino|rtpengine|direct, not {other}"),
    };
    let routes = Arc::new(relay.routes.clone());
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Receiver: every generator socket, via poll on nonblocking sockets.
    let recv_socks: Vec<(usize, UdpSocket)> = gen_a
        .iter()
        .map(|s| (1, s.try_clone().expect("clone")))
        .chain(gen_b.iter().map(|s| (0, s.try_clone().expect("clone"))))
        .collect();
    let rstop = stop.clone();
    let calls = args.calls;
    let receiver = std::thread::spawn(move || {
        // Index 0: A → B direction (received on B sockets), 1: B → A.
        let mut flows = vec![[Flow::default(); 2]; calls];
        let mut latency_us: Vec<u32> = Vec::with_capacity(1 << 20);
        let mut buf = [0u8; 2048];
        while !rstop.load(Ordering::Relaxed) {
            let mut idle = true;
            for (dir, s) in &recv_socks {
                loop {
                    let n = match s.recv_from(&mut buf) {
                        Ok((n, _)) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => continue,
                    };
                    idle = false;
                    let Ok(p) = rtp::parse(&buf[..n]) else {
                        continue;
                    };
                    if p.payload.len() < 12 {
                        continue;
                    }
                    let call = u32::from_le_bytes(p.payload[0..4].try_into().expect("4")) as usize;
                    let sent_ns = u64::from_le_bytes(p.payload[4..12].try_into().expect("8"));
                    let now_ns = epoch.elapsed().as_nanos() as u64;
                    if call >= calls {
                        continue;
                    }
                    // Only what the sender counted: sent after the first
                    // second (warm-up).
                    if sent_ns < 1_000_000_000 {
                        continue;
                    }
                    let f = &mut flows[call][*dir];
                    f.received += 1;
                    let transit = now_ns as i64 - sent_ns as i64;
                    if let Some(last) = f.last_transit {
                        let d = (transit - last).abs() as f64;
                        f.jitter += (d - f.jitter) / 16.0;
                    }
                    f.last_transit = Some(transit);
                    latency_us.push((transit / 1000).clamp(0, u32::MAX as i64) as u32);
                }
            }
            if idle {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        (flows, latency_us)
    });

    // Sender: each call sends one packet each way every 20 ms, calls
    // spread evenly over the period.
    let total = Duration::from_secs(args.seconds);
    let mut seq = vec![0u16; args.calls];
    let mut sent_measured = 0u64;
    let mut next = vec![Duration::ZERO; args.calls];
    for (i, n) in next.iter_mut().enumerate() {
        *n = PTIME * i as u32 / args.calls as u32;
    }
    let mut payload = [0xFFu8; 160];
    let mut pkt = [0u8; 172];
    let mut cpu_start: Option<(u64, Instant)> = None;
    let mut order: Vec<usize> = (0..args.calls).collect();
    order.sort_by_key(|&i| next[i]);
    let mut cursor = 0;
    loop {
        let t = epoch.elapsed();
        if t >= total {
            break;
        }
        if cpu_start.is_none() && t >= Duration::from_secs(1) {
            let ticks = relay.stat.iter().map(|p| cpu_ticks(p)).sum();
            cpu_start = Some((ticks, Instant::now()));
        }
        // Send what is due, in schedule order (every call once per period).
        let mut sent_any = false;
        for _ in 0..args.calls {
            let i = order[cursor];
            if next[i] > t {
                break;
            }
            sent_any = true;
            let now_ns = epoch.elapsed().as_nanos() as u64;
            payload[0..4].copy_from_slice(&(i as u32).to_le_bytes());
            payload[4..12].copy_from_slice(&now_ns.to_le_bytes());
            let h = Header {
                marker: seq[i] == 0,
                payload_type: 0,
                seq: seq[i],
                timestamp: u32::from(seq[i]) * 160,
                ssrc: 0x1000 + i as u32,
            };
            seq[i] = seq[i].wrapping_add(1);
            let len = rtp::write(&h, &payload, &mut pkt).expect("fits");
            let (ra, rb) = routes[i];
            let _ = gen_a[i % GEN_SOCKETS].send_to(&pkt[..len], ra);
            let _ = gen_b[i % GEN_SOCKETS].send_to(&pkt[..len], rb);
            if now_ns >= 1_000_000_000 {
                sent_measured += 2;
            }
            next[i] += PTIME;
            cursor = (cursor + 1) % args.calls;
        }
        if !sent_any {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let (ticks0, t0) = cpu_start.expect("ran over a second");
    let ticks1: u64 = relay.stat.iter().map(|p| cpu_ticks(p)).sum();
    let wall = t0.elapsed().as_secs_f64();
    // Let the last packets arrive.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (flows, mut lat) = receiver.join().expect("receiver");

    let received: u64 = flows.iter().flatten().map(|f| f.received).sum();
    let loss = 1.0 - received as f64 / sent_measured.max(1) as f64;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    // Nanoseconds to milliseconds.
    let mut jit: Vec<f64> = flows.iter().flatten().map(|f| f.jitter / 1e6).collect();
    jit.sort_by(f64::total_cmp);
    let jpct = |p: f64| {
        jit.get(((jit.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    let cpu_seconds = (ticks1 - ticks0) as f64 / 100.0;
    let relayed_per_s = received as f64 / wall;
    let per_core = if cpu_seconds > 0.0 {
        received as f64 / cpu_seconds
    } else {
        f64::NAN
    };
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "{target:<10} calls {calls:>5}  offered {offered:>8.0} pkt/s  relayed {relayed:>8.0} pkt/s  loss {loss:>6.3} %  \
         latency p50 {p50} µs p99 {p99} µs  jitter (RFC 3550) median {j50:.3} ms p99 {j99:.3} ms  \
         relay CPU {cpu:>5.1} % of a core  => {per_core:>9.0} pkt/s per core",
        target = args.target,
        calls = args.calls,
        offered = sent_measured as f64 / wall,
        relayed = relayed_per_s,
        loss = loss * 100.0,
        p50 = pct(0.5),
        p99 = pct(0.99),
        j50 = jpct(0.5),
        j99 = jpct(0.99),
        cpu = cpu_seconds / wall * 100.0,
    );
    println!(
        "machine: {} cores, {machine}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
