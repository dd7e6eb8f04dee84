//! SIP over UDP read and parsed on several threads (`sip.io_threads`,
//! one `SO_REUSEPORT` socket each) and sent from as many: calls from many
//! peers spread over the threads and still complete whichever way they
//! end (the CANCEL and ACK of an INVITE, a BYE from either side), and a
//! second node on a taken address does not start.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Node, NodeConfig, Scratch, Sipp, register, scenario};

const THREADS: usize = 4;
/// Carriers calling at once, each from a port of its own: enough peers
/// that the kernel's hash puts them on more than one socket.
const TRUNKS: usize = 8;

fn node(scratch: &Scratch, agents: u32, ring_timeout_seconds: u64) -> Node {
    let cfg = NodeConfig {
        agents,
        ring_timeout_seconds,
        ..NodeConfig::default()
    };
    Node::start_toml(scratch, |sip, http| {
        cfg.toml(sip, http)
            .replacen("[sip]\n", &format!("[sip]\nio_threads = {THREADS}\n"), 1)
    })
}

/// `TRUNKS` operators on one SIPp phone running `phone` (its pauses
/// `phone_pause_ms`), then `TRUNKS` carriers each placing two calls with
/// `trunk` (its pauses `trunk_pause_ms`): every carrier's SIPp must
/// succeed, and no call may be left.
fn calls_end_cleanly(
    name: &str,
    phone: &str,
    phone_pause_ms: &str,
    trunk: &str,
    trunk_pause_ms: &str,
) -> Node {
    let scratch = Scratch::new(name);
    // An operator for every carrier: no call waits in the queue, so each
    // ends the way its scenario says.
    let agents = TRUNKS as u32;
    let node = node(&scratch, agents, 30);
    let mut phones = Sipp::spawn(
        &scratch,
        "phones",
        &[
            "-sf",
            &scenario(phone),
            "-d",
            phone_pause_ms,
            "-timeout",
            "60s",
        ],
    );
    let users: Vec<u32> = (1001..1001 + agents).collect();
    register(&scratch, &node, &users, phones.port, |u| format!("demo{u}"));
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(5),
        |v| v == f64::from(agents),
    );
    let mut trunks: Vec<Sipp> = (0..TRUNKS)
        .map(|i| {
            crate::common::trunk_to(
                &scratch,
                &node,
                &format!("trunk-{i}"),
                trunk,
                &["-m", "2", "-r", "1", "-d", trunk_pause_ms],
            )
        })
        .collect();
    for t in &mut trunks {
        t.expect_success(Duration::from_secs(60));
    }
    node.wait_metric("centralino_calls_active", Duration::from_secs(10), |v| {
        v == 0.0
    });
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(10),
        |v| v == f64::from(agents),
    );
    // The phones' SIPp takes calls until told to stop.
    let _ = phones.try_wait();
    node
}

/// How many I/O threads read something.
fn threads_used(node: &Node) -> usize {
    let m = node.metrics();
    (0..THREADS)
        .filter(|i| {
            crate::common::series_in(
                &m,
                &format!("centralino_sip_io_datagrams_total{{thread=\"{i}\"}}"),
            )
            .unwrap_or(0.0)
                > 0.0
        })
        .count()
}

#[test]
fn calls_from_many_carriers_spread_over_the_io_threads_and_the_caller_hangs_up() {
    let node = calls_end_cleanly(
        "sip-io-caller-bye",
        "agent_answer.xml",
        "0",
        "trunk_call.xml",
        "200",
    );
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"answered\"}"),
        (2 * TRUNKS) as f64
    );
    let used = threads_used(&node);
    assert!(
        used >= 2,
        "datagrams read by {used} of {THREADS} threads:\n{}",
        node.metrics()
    );
}

#[test]
fn the_operators_bye_reaches_callers_on_every_io_thread() {
    let node = calls_end_cleanly(
        "sip-io-operator-bye",
        "agent_hangup.xml",
        "200",
        "trunk_hangup_by_agent.xml",
        "0",
    );
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"answered\"}"),
        (2 * TRUNKS) as f64
    );
    assert!(threads_used(&node) >= 2);
}

/// A CANCEL comes from the peer that sent the INVITE, so it reaches the
/// thread that read the INVITE, after it: every ringing operator leg is
/// cancelled, none answered.
#[test]
fn cancels_from_many_carriers_reach_their_invites() {
    let node = calls_end_cleanly(
        "sip-io-cancel",
        "agent_noanswer.xml",
        "0",
        "trunk_cancel.xml",
        "500",
    );
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"cancelled\"}"),
        (2 * TRUNKS) as f64
    );
    assert_eq!(
        node.metric_or_zero("centralino_calls_total{outcome=\"answered\"}"),
        0.0
    );
    assert!(threads_used(&node) >= 2);
}

/// The nice value in `/proc/<pid>/task/<task>/stat` (field 19) of each
/// of the process's threads: (task id, name, nice). The main thread's id
/// is the process's.
fn nice_by_thread(pid: u32) -> Vec<(u32, String, i32)> {
    by_thread(pid, nice_in)
}

/// The scheduler of each of the process's threads: (task id, name,
/// (policy, real-time priority)); policy 2 is `SCHED_RR`.
fn scheduler_by_thread(pid: u32) -> Vec<(u32, String, (u32, u32))> {
    by_thread(pid, scheduler_in)
}

/// `field` of each of the process's threads' `stat` line.
pub(crate) fn by_thread<T>(pid: u32, field: fn(&str) -> T) -> Vec<(u32, String, T)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let (Ok(stat), Ok(name)) = (
            std::fs::read_to_string(path.join("stat")),
            std::fs::read_to_string(path.join("comm")),
        ) else {
            continue; // a thread that ended meanwhile
        };
        out.push((id, name.trim().to_owned(), field(&stat)));
    }
    out
}

/// User and system CPU ticks (fields 14 and 15, `proc(5)`) of a
/// `/proc/.../stat` line, counted after the command's closing parenthesis.
pub(crate) fn cpu_in(stat: &str) -> u64 {
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| rest[n - 3].parse::<u64>().expect("a number");
    field(14) + field(15)
}

/// Ticks each thread spent between two samples of [`by_thread`] with
/// [`cpu_in`], for the threads in both (one that ended or began between
/// them, e.g. a blocking pool's, is left out rather than miscounted).
pub(crate) fn ticks_between(
    before: &[(u32, String, u64)],
    after: &[(u32, String, u64)],
) -> Vec<(u32, String, u64)> {
    after
        .iter()
        .filter_map(|(id, name, t)| {
            let (_, _, t0) = before.iter().find(|b| b.0 == *id)?;
            Some((*id, name.clone(), t.saturating_sub(*t0)))
        })
        .collect()
}

/// The ticks of the threads `keep` (id, name) picks, summed.
pub(crate) fn ticks_of(spent: &[(u32, String, u64)], keep: impl Fn(u32, &str) -> bool) -> u64 {
    spent.iter().filter(|t| keep(t.0, &t.1)).map(|t| t.2).sum()
}

/// Policy and real-time priority (fields 41 and 40, `proc(5)`) of a
/// `/proc/.../stat` line, counted as `nice_in` does.
fn scheduler_in(stat: &str) -> (u32, u32) {
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| rest[n - 3].parse().expect("a number");
    (field(41), field(40))
}

/// The nice value (field 19) of a `/proc/.../stat` line: counted after the
/// name's closing parenthesis, from the state (field 3).
fn nice_in(stat: &str) -> i32 {
    let rest = stat.rsplit_once(')').expect("stat").1;
    let nice = rest.split_whitespace().nth(16).expect("nice");
    nice.parse().expect("a number")
}

/// A node of one operator with `sip_line` in its `[sip]` section, after
/// two calls from a SIPp trunk answered by a SIPp phone.
fn two_calls_with(scratch: &Scratch, sip_line: &str) -> Node {
    let cfg = NodeConfig {
        agents: 1,
        ..NodeConfig::default()
    };
    let node = Node::start_toml(scratch, |sip, http| {
        cfg.toml(sip, http)
            .replacen("[sip]\n", &format!("[sip]\n{sip_line}\n"), 1)
    });
    let mut phones = Sipp::spawn(
        scratch,
        "phones",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "60s"],
    );
    register(scratch, &node, &[1001], phones.port, |u| format!("demo{u}"));
    let mut trunk = crate::common::trunk_to(
        scratch,
        &node,
        "trunk",
        "trunk_call.xml",
        &["-m", "2", "-r", "1", "-d", "200"],
    );
    trunk.expect_success(Duration::from_secs(60));
    let _ = phones.try_wait();
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"answered\"}"),
        2.0
    );
    node
}

/// `sip.engine_nice`: the engine's thread (the process's main one) runs at
/// the value asked and every other thread, those started later included,
/// at the process's own, and calls go through; a node not allowed to
/// (not root, no `CAP_SYS_NICE`) says so and runs at the process's.
#[test]
fn the_engine_thread_alone_runs_at_the_nice_value_asked() {
    let scratch = Scratch::new("sip-io-engine-nice");
    let node = two_calls_with(&scratch, "engine_nice = -7");
    let pid = node.pid();
    // The node inherits the nice value of the thread that started it.
    let own = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").expect("stat"));
    // Refused without the privilege, or left when this test already runs
    // at -7 or lower.
    let logs = node.logs();
    let refused = logs.contains("cannot set the engine thread's priority")
        || logs.contains("is not below the engine thread's nice value");
    let want = if refused { own } else { -7 };
    let threads = nice_by_thread(pid);
    for (task, name, nice) in &threads {
        let engine = *task == pid;
        // The HTTP workers are 5 nicer than the process, by design.
        let expected = if engine {
            want
        } else if name.starts_with("http-") {
            (own + 5).min(19)
        } else {
            own
        };
        assert_eq!(
            *nice, expected,
            "{name} (engine: {engine}) at {nice}; every thread: {threads:?}"
        );
    }
    assert!(
        threads.iter().any(|(_, n, _)| n == "staffing"),
        "the staffing thread, started by the engine's: {threads:?}"
    );
}

/// `sip.engine_realtime_priority`: the engine's thread (the process's
/// main one) runs under `SCHED_RR` at the priority asked and every other
/// thread, those it starts later included (the staffing advisor), under
/// the normal scheduler, and calls go through; a node the kernel refuses
/// it says so and runs on.
#[test]
fn the_engine_thread_alone_runs_under_the_real_time_scheduler() {
    let scratch = Scratch::new("sip-io-engine-realtime");
    let node = two_calls_with(&scratch, "engine_realtime_priority = 3");
    let pid = node.pid();
    let refused = node
        .logs()
        .contains("cannot put the engine thread under the real-time scheduler");
    // Whether the kernel lets a process started from here have it at all
    // (CAP_SYS_NICE in the initial user namespace, an RLIMIT_RTPRIO, a
    // cgroup with a real-time budget): util-linux's `chrt` asks. Refused
    // only where it is refused too.
    let allowed = Command::new("chrt")
        .args(["-r", "3", "true"])
        .stderr(Stdio::null())
        .status()
        .expect("chrt (util-linux) runs")
        .success();
    assert_eq!(refused, !allowed, "refused: {refused}, allowed: {allowed}");
    assert_eq!(
        node.metric("centralino_engine_realtime_priority"),
        if refused { 0.0 } else { 3.0 }
    );
    let threads = scheduler_by_thread(pid);
    for (task, name, sched) in &threads {
        let engine = *task == pid;
        let expected = if engine && !refused { (2, 3) } else { (0, 0) };
        assert_eq!(
            *sched, expected,
            "{name} (engine: {engine}); every thread: {threads:?}"
        );
    }
    assert!(
        threads.iter().any(|(_, n, _)| n == "staffing"),
        "the staffing thread, started by the engine's: {threads:?}"
    );
}

/// A reader's batch reaches the engine whole: with the node frozen
/// (`SIGSTOP`) while a peer sends a burst of OPTIONS, its reader finds
/// them queued once thawed and hands them over in batches of 16, and the
/// engine answers every one, in the order sent. A burst is longer than
/// one turn of the engine task (256 inputs after the first): when the
/// reader keeps ahead of the engine, a turn ends inside a batch whose rest
/// must come before anything newer (taken out of order, a batch's rest
/// was lost in 2 of 3 single bursts), so there are several bursts. 300
/// datagrams fit a socket's buffer at the kernel's default `rmem_max`
/// (332 of them did).
#[test]
fn a_burst_read_in_a_row_is_answered_whole_and_in_order() {
    const BURST: usize = 300;
    const BURSTS: usize = 5;
    let scratch = Scratch::new("sip-io-burst");
    let node = node(&scratch, 1, 30);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Room for every answer even if this thread reads late.
    socket2::SockRef::from(&peer)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = node.sip_port;
    let mut buf = [0u8; 4096];
    for round in 0..BURSTS {
        node.freeze(true);
        for n in 0..BURST {
            let options = format!(
                "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKburst{round}x{n}\r\n\
                 From: <sip:probe@127.0.0.1>;tag=b{n}\r\nTo: <sip:127.0.0.1>\r\nCall-ID: burst-{round}-{n}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            peer.send_to(options.as_bytes(), node.sip_addr()).unwrap();
        }
        node.freeze(false);
        let mut answered = Vec::new();
        while answered.len() < BURST {
            let (n, _) = peer.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "burst {round}: {} of {BURST} answered ({e}); the node's socket drops: {}",
                    answered.len(),
                    node.metric_or_zero("centralino_sip_udp_drops_total")
                )
            });
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(text.starts_with("SIP/2.0 200"), "{text}");
            let call_id = text
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .expect("Call-ID");
            answered.push(call_id.to_owned());
        }
        let sent: Vec<String> = (0..BURST).map(|n| format!("burst-{round}-{n}")).collect();
        assert_eq!(answered, sent, "burst {round}");
    }
}

/// `SO_REUSEPORT` would let a second node on the same address share the
/// port silently; the address is bound alone first, so it fails instead.
#[test]
fn a_second_node_on_a_taken_address_does_not_start() {
    let scratch = Scratch::new("sip-io-taken");
    let first = node(&scratch, 1, 5);
    let second = Scratch::new("sip-io-taken-second");
    let conf = second.path("centralino.toml");
    let http = crate::common::free_port();
    std::fs::write(
        &conf,
        NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        }
        .toml(first.sip_port, http)
        .replacen("[sip]\n", &format!("[sip]\nio_threads = {THREADS}\n"), 1),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("serve")
        .arg("--config")
        .arg(&conf)
        .arg("--data-dir")
        .arg(second.path("data"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run centralino");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the second node started:\n{text}");
    assert!(
        text.contains(&first.sip_port.to_string()) && text.to_lowercase().contains("in use"),
        "{text}"
    );
    // The first goes on.
    assert_eq!(first.http_get("/healthz").0, 200);
}

/// Every series of `name`, summed over their labels.
fn sum_of(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn junk_from_many_peers_is_counted_by_the_io_threads_and_a_broken_request_still_gets_400() {
    let scratch = Scratch::new("sip-io-junk");
    let node = node(&scratch, 1, 30);
    // From many ports, so the junk lands on several threads: bytes that
    // are no SIP at all, and a response too broken to match anything.
    let peers: Vec<std::net::UdpSocket> = (0..TRUNKS)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for p in &peers {
        p.send_to(b"\x00\x01\x02 not sip at all\r\n\r\n", node.sip_addr())
            .unwrap();
        p.send_to(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", node.sip_addr())
            .unwrap();
    }
    let junk = (2 * TRUNKS) as f64;
    let start = std::time::Instant::now();
    while sum_of(&node.metrics(), "centralino_sip_parse_errors_total") < junk {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "junk not counted:\n{}",
            node.metrics()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    // A request the guard refuses is still answered (by the engine).
    // From a socket of its own: a junk datagram that looks enough like a
    // request gets its own 400, which would be read for this one's.
    let asker = &std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    asker
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = node.sip_port;
    let no_call_id = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKjunk\r\n\
         From: <sip:probe@127.0.0.1>;tag=j\r\nTo: <sip:127.0.0.1>\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    asker
        .send_to(no_call_id.as_bytes(), node.sip_addr())
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = asker.recv_from(&mut buf).expect("a refusal");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 400"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let m = node.metrics();
    assert_eq!(
        sum_of(&m, "centralino_sip_parse_errors_total"),
        junk + 1.0,
        "{m}"
    );
    assert!(threads_used(&node) >= 2, "{m}");
}
