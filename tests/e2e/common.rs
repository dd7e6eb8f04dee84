//! Shared harness for the end-to-end tests: starts the real `centralino`
//! binary and real SIPp on 127.0.0.1 with ephemeral ports, and stops exactly
//! the processes it started (by PID, on drop).
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A base of four consecutive ports for one SIPp's RTP (audio, video and
/// their RTCP), above the nodes' RTP range, the kernel's ephemeral ports
/// and the media flood test's own node range (61000-61199), never the same
/// twice at once in this test process.
pub(crate) fn sipp_media_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed) % 900;
    61_200 + 4 * k
}

/// A port for one SIPp's SIP socket, above the kernel's ephemeral ports
/// and the media ports below: a port `free_port` found free can be taken
/// by another test's socket before SIPp binds it (SIPp then exits with
/// errno 98); these are handed out by this process alone, each once in
/// 500 spawns (a SIPp runs a minute at most).
fn sipp_sip_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    65_000 + NEXT.fetch_add(1, Ordering::Relaxed) % 500
}

/// A port free on 127.0.0.1 for both UDP and TCP at the time of the call.
pub(crate) fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "centralino-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    pub(crate) fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Settings of a test node's configuration.
pub(crate) struct NodeConfig {
    pub trunk_peers: Vec<&'static str>,
    pub agents: u32,
    pub ring_timeout_seconds: u64,
    pub wrap_up_seconds: u64,
    pub max_wait_seconds: u64,
    pub max_no_answer: u32,
    pub digest: &'static str,
    pub tcp_idle_timeout_seconds: u64,
    /// Also listen on [::1] (same port number when free).
    pub ipv6: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            trunk_peers: vec!["127.0.0.1"],
            agents: 20,
            ring_timeout_seconds: 5,
            wrap_up_seconds: 0,
            max_wait_seconds: 60,
            max_no_answer: 3,
            // SIPp 3.6 computes MD5 only and answers the first challenge.
            digest: r#"["MD5"]"#,
            tcp_idle_timeout_seconds: 2,
            ipv6: false,
        }
    }
}

impl NodeConfig {
    pub(crate) fn toml(&self, sip_port: u16, http_port: u16) -> String {
        let peers: Vec<String> = self.trunk_peers.iter().map(|p| format!("{p:?}")).collect();
        let v6 = if self.ipv6 {
            format!(", \"[::1]:{sip_port}\"")
        } else {
            String::new()
        };
        let mut s = format!(
            r#"[sip]
listen = ["127.0.0.1:{sip_port}"{v6}]
realm = "centralino"
digest_algorithms = {digest}
tcp_idle_timeout_seconds = {idle}

[http]
listen = "127.0.0.1:{http_port}"

[[tenants]]
name = "demo"

[[trunks]]
name = "carrier"
tenant = "demo"
peers = [{peers}]
dids = {{ "100" = "info" }}

[[queues]]
name = "info"
tenant = "demo"
ring_timeout_seconds = {ring}
max_no_answer = {mna}
max_wait_seconds = {max_wait}
wrap_up_seconds = {wrap}
"#,
            digest = self.digest,
            idle = self.tcp_idle_timeout_seconds,
            peers = peers.join(", "),
            ring = self.ring_timeout_seconds,
            mna = self.max_no_answer,
            max_wait = self.max_wait_seconds,
            wrap = self.wrap_up_seconds,
        );
        for i in 0..self.agents {
            let u = 1001 + i;
            let _ = write!(
                s,
                "\n[[agents]]\nusername = \"{u}\"\npassword = \"demo{u}\"\ntenant = \"demo\"\nqueues = [\"info\"]\n"
            );
        }
        s
    }
}

/// A test node sheds new calls only past 400 ms of lag (50 by default):
/// the suite runs many nodes and SIPps at once on two cores, where a node
/// can wait its turn for 70 ms without being overloaded, and a trunk
/// scenario takes the `503` it would get as an answer, losing the call
/// the test counts. A configuration that sets the lag keeps its own.
fn patient(toml: String) -> String {
    let set = toml
        .lines()
        .any(|l| l.trim_start().starts_with("overload_lag_milliseconds"));
    if set {
        toml
    } else if let Some(rest) = toml.strip_prefix("[sip]\n") {
        format!("[sip]\noverload_lag_milliseconds = 400\n{rest}")
    } else if toml.contains("\n[sip]\n") {
        toml.replacen("\n[sip]\n", "\n[sip]\noverload_lag_milliseconds = 400\n", 1)
    } else {
        assert!(
            !toml.contains("[sip]"),
            "a [sip] header the harness cannot read"
        );
        format!("{toml}\n[sip]\noverload_lag_milliseconds = 400\n")
    }
}

/// A running `centralino serve`.
pub(crate) struct Node {
    child: Child,
    pub sip_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
    /// The address its SIP listens on (127.0.0.1 unless the test's
    /// configuration says otherwise: see [`Node::on_host`]).
    pub sip_host: &'static str,
}

impl Node {
    pub(crate) fn start(scratch: &Scratch, cfg: &NodeConfig) -> Self {
        Self::start_toml(scratch, |sip, http| cfg.toml(sip, http))
    }

    /// A node on a configuration written by `toml(sip_port, http_port)`.
    pub(crate) fn start_toml(scratch: &Scratch, toml: impl Fn(u16, u16) -> String) -> Self {
        Self::start_toml_log(scratch, "info", toml)
    }

    /// The same with a log filter (`CENTRALINO_LOG`).
    pub(crate) fn start_toml_log(
        scratch: &Scratch,
        filter: &str,
        toml: impl Fn(u16, u16) -> String,
    ) -> Self {
        Self::start_toml_env(scratch, filter, &[], toml)
    }

    /// The same with extra environment variables (`LD_PRELOAD`...).
    pub(crate) fn start_toml_env(
        scratch: &Scratch,
        filter: &str,
        env: &[(&str, String)],
        toml: impl Fn(u16, u16) -> String,
    ) -> Self {
        // A free port can be taken by a parallel test between the probe
        // and the node's bind: a node that exits before it is ready is
        // started again on other ports.
        for _ in 0..3 {
            if let Some(node) = Self::try_start(scratch, filter, env, &toml) {
                return node;
            }
        }
        panic!(
            "centralino did not start:\n{}",
            std::fs::read_to_string(scratch.path("centralino.log")).unwrap_or_default()
        );
    }

    fn try_start(
        scratch: &Scratch,
        filter: &str,
        env: &[(&str, String)],
        toml: &impl Fn(u16, u16) -> String,
    ) -> Option<Self> {
        let sip_port = free_port();
        let http_port = free_port();
        let conf = scratch.path("centralino.toml");
        std::fs::write(&conf, patient(toml(sip_port, http_port))).expect("write config");
        let log = scratch.path("centralino.log");
        let out = std::fs::File::create(&log).expect("log file");
        // `CENTRALINO_TEST_SLOW_FSYNC_US=40000 cargo test` runs every node
        // on a slow disk: the suite must pass that way too.
        let slow = std::env::var("CENTRALINO_TEST_SLOW_FSYNC_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|_| !env.iter().any(|(k, _)| *k == "LD_PRELOAD"))
            .map(|us| slow_disk(scratch, us))
            .unwrap_or_default();
        let child = Command::new(env!("CARGO_BIN_EXE_centralino"))
            .arg("serve")
            .arg("--config")
            .arg(&conf)
            .arg("--data-dir")
            .arg(scratch.path("data"))
            .env("CENTRALINO_LOG", filter)
            .env("NO_COLOR", "1")
            .envs(env.iter().chain(&slow).map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn centralino");
        let mut node = Self {
            child,
            sip_port,
            http_port,
            log,
            sip_host: "127.0.0.1",
        };
        let start = Instant::now();
        while !node.logs().contains("centralino ready") {
            if !node.is_running() {
                return None;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "centralino not ready:\n{}",
                node.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(node)
    }

    pub(crate) fn sip_addr(&self) -> String {
        format!("{}:{}", self.sip_host, self.sip_port)
    }

    /// The node's configuration listens for SIP on `host` (another
    /// loopback address, 127.0.0.2...): phones and trunks go there.
    pub(crate) fn on_host(mut self, host: &'static str) -> Self {
        self.sip_host = host;
        self
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` (the node reports readiness there).
    pub(crate) fn wait_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.logs().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET a path on the HTTP endpoint: (status, body).
    pub(crate) fn http_get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, None, None)
    }

    /// An HTTP request with an optional bearer token and JSON body:
    /// (status, body).
    pub(crate) fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        self.http_typed(method, path, token, "application/json", body)
    }

    /// The same with the body's `Content-Type`.
    pub(crate) fn http_typed(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        self.http_with(method, path, token, content_type, "", body)
    }

    /// A GET with an `Accept` header.
    pub(crate) fn http_accept(&self, path: &str, token: &str, accept: &str) -> (u16, String) {
        let extra = format!("Accept: {accept}\r\n");
        self.http_with("GET", path, Some(token), "", &extra, None)
    }

    /// Any request: `extra` header lines (each ending in CRLF).
    fn http_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        extra: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).expect("connect http");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}");
        if let Some(t) = token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            let _ = write!(
                req,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read http");
        let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    pub(crate) fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200);
        body
    }

    /// The value of one series (`name{labels}` exactly as exposed, labels
    /// in name order). A series that is not exposed fails the test (a
    /// misspelt name or label must not pass as 0): use
    /// [`Node::metric_or_zero`] where absence is an answer.
    pub(crate) fn metric(&self, series: &str) -> f64 {
        let text = self.metrics();
        series_in(&text, series).unwrap_or_else(|| {
            let name = series.split('{').next().unwrap_or(series);
            let similar: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
            panic!("no series {series} in /metrics; {name} has: {similar:#?}")
        })
    }

    /// The value of one series, 0 when it is not exposed (yet): a counter
    /// whose labels have not been used, a gauge not set.
    pub(crate) fn metric_or_zero(&self, series: &str) -> f64 {
        metric_in(&self.metrics(), series)
    }

    /// Polls a series until `pred` holds, bounded by `limit`.
    pub(crate) fn wait_metric(
        &self,
        series: &str,
        limit: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let start = Instant::now();
        loop {
            let v = self.metric_or_zero(series);
            if pred(v) {
                return v;
            }
            assert!(start.elapsed() < limit, "{series} stayed at {v}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The node's process id (its main thread runs the engine).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (reload the configuration) to this node's process.
    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the node: a process
    /// alive but silent, as a partition or a paused VM leaves it.
    pub(crate) fn freeze(&self, frozen: bool) {
        let st = Command::new("kill")
            .arg(if frozen { "-STOP" } else { "-CONT" })
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -STOP/-CONT failed");
    }

    pub(crate) fn hangup_signal(&self) {
        let st = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -HUP failed");
    }

    /// Sends SIGTERM (graceful shutdown: drain) to this node's process.
    pub(crate) fn terminate(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit by itself (at most `limit`).
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "the node did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: no chance to clean up, as in a crash.
    pub(crate) fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A12, in every test that starts a node: no phone number reaches
        // the log unmasked (the tests' numbers are all Italian, +39...).
        if !std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| unmasked_number(l)) {
                panic!("an unmasked phone number in the node's log:\n{line}");
            }
        }
    }
}

/// Whether `line` holds a full phone number: `+39` and 6 or more digits.
pub(crate) fn unmasked_number(line: &str) -> bool {
    line.match_indices("+39")
        .any(|(i, _)| line[i + 3..].bytes().take_while(u8::is_ascii_digit).count() >= 6)
}

/// A series' value in a Prometheus text exposition, 0 if absent.
pub(crate) fn metric_in(text: &str, series: &str) -> f64 {
    series_in(text, series).unwrap_or(0.0)
}

/// A series' value in a Prometheus text exposition, if exposed.
pub(crate) fn series_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// A SIPp process.
pub(crate) struct Sipp {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

/// The environment that gives a node a slow disk: `tests/fixtures/
/// slow_fsync.c` built with the system C compiler (the one Rust links
/// with) and preloaded, so every fsync waits `micros` first.
pub(crate) fn slow_disk(scratch: &Scratch, micros: u32) -> Vec<(&'static str, String)> {
    let lib = scratch.path("slow_fsync.so");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(format!(
            "{}/tests/fixtures/slow_fsync.c",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("-ldl")
        .status()
        .expect("cc (the C compiler Rust links with)");
    assert!(st.success(), "cc failed to build the slow-disk shim");
    vec![
        ("LD_PRELOAD", lib.display().to_string()),
        ("SLOW_FSYNC_US", micros.to_string()),
    ]
}

pub(crate) fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

impl Sipp {
    /// The messages it exchanged (run with `-trace_msg`).
    pub(crate) fn messages(&self) -> String {
        std::fs::read_dir(&self.dir)
            .expect("sipp dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("_messages.log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    }

    /// Starts SIPp with `args` (scenario, -m, -r ...) on an ephemeral port,
    /// in its own working directory (SIPp writes its logs there).
    pub(crate) fn spawn(scratch: &Scratch, label: &str, args: &[&str]) -> Self {
        Self::spawn_from(scratch, label, "127.0.0.1", args)
    }

    /// As [`Sipp::spawn`], from another loopback address (127.0.0.0/8 is
    /// all loopback on Linux: a second "host" without a namespace).
    pub(crate) fn spawn_from(scratch: &Scratch, label: &str, ip: &str, args: &[&str]) -> Self {
        let port = sipp_sip_port();
        // SIPp binds its audio and video RTP sockets at start; left to
        // itself it picks them near its SIP port, in the range where every
        // node's RTP ports (20000-59999) and the kernel's ephemeral ports
        // live, and a test running beside it can take one first. Above
        // both (61000-64999), each SIPp of this test process its own four.
        let media_port = sipp_media_port().to_string();
        let media: &[&str] = if args.contains(&"-mp") {
            &[]
        } else {
            &["-mp", &media_port]
        };
        let dir = scratch.path(label);
        std::fs::create_dir_all(&dir).expect("sipp dir");
        let out = std::fs::File::create(dir.join("stdout.txt")).expect("sipp out");
        let child = Command::new("sipp")
            .current_dir(&dir)
            .args(args)
            .args(media)
            .args([
                "-i",
                ip,
                "-p",
                &port.to_string(),
                "-nostdin",
                // SIPp's default socket buffers drop datagrams in bursts;
                // the failures would look like the node's.
                "-buff_size",
                "1048576",
                "-trace_err",
                "-trace_stat",
                "-fd",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn sipp (install Debian's sip-tester)");
        Self { child, port, dir }
    }

    /// Waits for SIPp to exit by itself (its -timeout bounds the run).
    pub(crate) fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("wait sipp") {
                return st;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("SIPp ran over {limit:?}:\n{}", self.report());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if SIPp has exited.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait sipp")
    }

    /// Asserts a clean exit (every call succeeded).
    pub(crate) fn expect_success(&mut self, limit: Duration) {
        let st = self.wait(limit);
        assert!(st.success(), "SIPp failed ({st}):\n{}", self.report());
    }

    /// Everything SIPp wrote: its screen, errors and logs.
    pub(crate) fn report(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log" || x == "txt") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: String = text
                        .chars()
                        .rev()
                        .take(4000)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    let _ = writeln!(out, "== {}\n{tail}", p.display());
                }
            }
        }
        out
    }

    /// Lines of the `-trace_logs` file.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with("_logs.log") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    lines.extend(text.lines().map(str::to_owned));
                }
            }
        }
        lines
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers operators `users` with digest auth, their Contact pointing at
/// `contact_port` (the SIPp that plays their phones). Panics unless all succeed.
pub(crate) fn register(
    scratch: &Scratch,
    node: &Node,
    users: &[u32],
    contact_port: u16,
    password: impl Fn(u32) -> String,
) {
    let csv = scratch.path(&format!("users-{contact_port}.csv"));
    let mut text = String::from("SEQUENTIAL\n");
    for u in users {
        let _ = writeln!(
            text,
            "{u};[authentication username={u} password={}];{contact_port}",
            password(*u)
        );
    }
    std::fs::write(&csv, text).expect("csv");
    let n = users.len().to_string();
    let mut sipp = Sipp::spawn(
        scratch,
        &format!("register-{contact_port}"),
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("register.xml"),
            "-inf",
            csv.to_str().expect("utf-8 path"),
            "-m",
            &n,
            "-r",
            "50",
            "-timeout",
            "20s",
        ],
    );
    sipp.expect_success(Duration::from_secs(30));
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The RTP packets of a pcap file (Ethernet/IPv4/UDP, as SIPp ships them).
pub(crate) fn pcap_rtp(path: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (install Debian's sip-tester; scripts/test does)"));
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[i + 8..i + 12].try_into().expect("4 bytes")) as usize;
        let pkt = &data[i + 16..(i + 16 + incl).min(data.len())];
        if pkt.len() > 42 {
            out.push(pkt[42..].to_vec());
        }
        i += 16 + incl;
    }
    out
}

/// A 16-bit mono 8 kHz WAV file of `samples`.
pub(crate) fn wav(samples: &[i16]) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&16000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(&data);
    w
}

/// A SIPp trunk placing one call to `did` with `scenario_file`, its RTP on a
/// free port of 127.0.0.1 (for `play_pcap_audio`), `-d pause_ms`.
pub(crate) fn media_trunk(
    scratch: &Scratch,
    node: &Node,
    label: &str,
    scenario_file: &str,
    did: &str,
    pause_ms: &str,
) -> Sipp {
    let media_port = sipp_media_port().to_string();
    Sipp::spawn(
        scratch,
        label,
        &[
            &node.sip_addr(),
            "-sf",
            &scenario(scenario_file),
            "-s",
            did,
            "-m",
            "1",
            "-d",
            pause_ms,
            "-mi",
            "127.0.0.1",
            "-mp",
            &media_port,
            "-timeout",
            "60s",
        ],
    )
}

/// A JSON body, or a panic that shows it.
pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A local stand-in for the firm's SMS gateway: answers 204 (the first
/// request 500 when `fail_first`); returns the bodies received.
pub(crate) fn gateway(fail_first: bool) -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("gateway");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut c) = conn else { return };
            c.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head and the declared body.
            loop {
                let n = c.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        let status = if i == 0 && fail_first {
                            "500 Internal Server Error"
                        } else {
                            "204 No Content"
                        };
                        let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                        if tx.send(body.to_owned()).is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    });
    (port, rx)
}

/// A WebSocket to the node with `token` in the `Authorization` header (the
/// node takes no token in a URL).
pub(crate) fn ws_connect(
    url: &str,
    token: &str,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>> {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("a WebSocket URL");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    tungstenite::connect(req).expect("the WebSocket").0
}

/// Follows an operator's desk over its WebSocket
/// (`/api/v1/agents/{agent}/events`): each event, as JSON,
/// arrives on the receiver; the thread ends when the node closes.
pub(crate) fn desk_events(
    node: &Node,
    agent: &str,
    token: &str,
) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/agents/{agent}/events",
        node.http_port
    );
    let mut ws = ws_connect(&url, token);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(msg) = ws.read() {
            if let tungstenite::Message::Text(t) = msg
                && tx.send(json(t.as_str())).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// A caller's keypad at the RTP level: each key is SIPp's own RFC 4733
/// capture (`dtmf_2833_*.pcap`: payloads and markers) sent with this
/// phone's sequence numbers, timestamps and SSRC, so presses in any order
/// and repeated keys are new events (SIPp replaying its captures is not).
pub(crate) struct Keypad {
    seq: u16,
    ts: u32,
}

impl Keypad {
    pub(crate) fn new() -> Self {
        Self { seq: 100, ts: 8000 }
    }

    /// Presses `key` (0-9, *, #) towards `to` from `sock`.
    pub(crate) fn press(&mut self, sock: &UdpSocket, to: std::net::SocketAddr, key: char) {
        use centralino_media::rtp;
        let name = match key {
            '#' => "pound".to_owned(),
            '*' => "star".to_owned(),
            d => d.to_string(),
        };
        for pkt in pcap_rtp(&format!("/usr/share/sip-tester/dtmf_2833_{name}.pcap")) {
            let p = rtp::parse(&pkt).expect("dtmf rtp");
            let h = rtp::Header {
                marker: p.header.marker,
                payload_type: 101,
                seq: self.seq,
                timestamp: self.ts,
                ssrc: 0x00C0_FFEE,
            };
            self.seq = self.seq.wrapping_add(1);
            let mut out = vec![0u8; 12 + p.payload.len()];
            rtp::write(&h, p.payload, &mut out).expect("fits");
            sock.send_to(&out, to).expect("send rtp");
        }
        // The next event starts later (RFC 4733: a new timestamp).
        self.ts = self.ts.wrapping_add(4000);
    }
}

/// An HTTPS gateway (tests/fixtures/https_gateway.py: Python's TLS) with a
/// certificate for 127.0.0.1 from a test CA made by the `openssl` command.
/// Stopped when dropped.
pub(crate) struct HttpsGateway {
    child: Child,
    pub port: u16,
    /// The CA that signed its certificate (PEM).
    pub ca: PathBuf,
    /// Each POST as "authorization\tbody".
    pub posts: std::sync::mpsc::Receiver<String>,
}

impl Drop for HttpsGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn https_gateway(scratch: &Scratch) -> HttpsGateway {
    use std::io::BufRead;
    let dir = scratch.path("gateway-tls");
    std::fs::create_dir_all(&dir).expect("tls dir");
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for args in [
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=centralino-test-ca",
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &path("gw.key"),
                "-out",
                &path("gw.csr"),
                "-subj",
                "/CN=gateway",
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            &path("gw.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-out",
            &path("gw.pem"),
            "-days",
            "2",
            "-extfile",
            &path("ext.cnf"),
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/https_gateway.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([path("gw.pem"), path("gw.key")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.strip_prefix("ready ")?.trim().parse().ok())
        .expect("the gateway says ready PORT");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    HttpsGateway {
        child,
        port,
        ca: dir.join("ca.pem"),
        posts: rx,
    }
}

/// The carrier trunk: SIPp running `scenario_file` towards DID 100 of
/// `node`, with `args` added (`-m`, `-d`, ...).
/// A SIPp UAS behind the carrier running `scenario_file` for `calls`
/// calls, logging what it logs (`-trace_logs`): a citizen's phone, a
/// carrier that is down.
pub(crate) fn far_end(
    scratch: &Scratch,
    label: &str,
    scenario_file: &str,
    calls: u32,
    timeout: &str,
) -> Sipp {
    Sipp::spawn(
        scratch,
        label,
        &[
            "-sf",
            &scenario(scenario_file),
            "-m",
            &calls.to_string(),
            "-trace_logs",
            "-timeout",
            timeout,
        ],
    )
}

/// Operator 1001's SIPp phone, answering one call at once, registered
/// and available (tenant `demo` of [`NodeConfig`]) when this returns.
pub(crate) fn one_answering_phone(scratch: &Scratch, node: &Node) -> Sipp {
    answering_phone(scratch, node, 1001)
}

/// Operator `user` (password `demo<user>`) registered from a SIPp phone
/// that answers one call; returns once they are available.
pub(crate) fn answering_phone(scratch: &Scratch, node: &Node, user: u32) -> Sipp {
    let phone = Sipp::spawn(
        scratch,
        "phone",
        &[
            "-sf",
            &scenario("agent_answer.xml"),
            "-m",
            "1",
            "-timeout",
            "60s",
        ],
    );
    register(scratch, node, &[user], phone.port, |u| format!("demo{u}"));
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(5),
        |v| v == 1.0,
    );
    phone
}

pub(crate) fn trunk_to(
    scratch: &Scratch,
    node: &Node,
    label: &str,
    scenario_file: &str,
    args: &[&str],
) -> Sipp {
    let addr = node.sip_addr();
    let sf = scenario(scenario_file);
    let mut all = vec![
        addr.as_str(),
        "-sf",
        sf.as_str(),
        "-s",
        "100",
        "-timeout",
        "60s",
    ];
    all.extend_from_slice(args);
    Sipp::spawn(scratch, label, &all)
}

/// A carrier call to DID 100 (SIPp `scenario`) whose caller's RTP
/// endpoint is `caller`; `pause_ms` is the scenario's -d.
pub(crate) fn trunk_call(
    scratch: &Scratch,
    node: &Node,
    label: &str,
    scenario_name: &str,
    caller: &UdpSocket,
    pause_ms: &str,
) -> Sipp {
    trunk_call_from(
        scratch,
        node,
        label,
        &scenario(scenario_name),
        caller,
        pause_ms,
    )
}

/// As [`trunk_call`], with a scenario file anywhere (a variant a test
/// wrote into its scratch directory).
pub(crate) fn trunk_call_from(
    scratch: &Scratch,
    node: &Node,
    label: &str,
    scenario_path: &str,
    caller: &UdpSocket,
    pause_ms: &str,
) -> Sipp {
    let port = caller.local_addr().expect("addr").port().to_string();
    Sipp::spawn(
        scratch,
        label,
        &[
            &node.sip_addr(),
            "-sf",
            scenario_path,
            "-s",
            "100",
            "-m",
            "1",
            "-d",
            pause_ms,
            "-key",
            "caller_rtp",
            &port,
            "-timeout",
            "60s",
        ],
    )
}

/// Debian's Prometheus scraping `node` every second, evaluating
/// `config/prometheus/centralino-rules.yml` and the alerts of
/// `centralino-alerts.yml` every second (the rules' one-minute interval
/// and the alerts' `for` durations shortened to a second for the test;
/// their expressions as shipped), on 127.0.0.1.
pub(crate) struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    pub(crate) fn start(scratch: &Scratch, node: &Node) -> Self {
        let dir = scratch.path("prometheus");
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/prometheus/centralino-rules.yml"
        ))
        .expect("the shipped rules")
        .replace("interval: 1m", "interval: 1s");
        std::fs::write(dir.join("rules.yml"), rules).expect("rules");
        let alerts = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/prometheus/centralino-alerts.yml"
        ))
        .expect("the shipped alerts");
        let alerts: String = alerts
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("for: ") {
                    format!("{}for: 1s\n", &l[..l.len() - l.trim_start().len()])
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(dir.join("alerts.yml"), alerts).expect("alerts");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml, alerts.yml]\nscrape_configs:\n  - job_name: centralino\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
                node.http_port
            ),
        )
        .expect("prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .current_dir(&dir)
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; scripts/test installs it)");
        Self { child, port }
    }

    /// The value of an instant query's first sample, if it has one.
    pub(crate) fn value(&self, query: &str) -> Option<f64> {
        self.query(query)?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// An instant query's samples (`None` when Prometheus cannot answer).
    pub(crate) fn query(&self, query: &str) -> Option<Vec<serde_json::Value>> {
        let encoded: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let body = resp.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped Grafana dashboard's queries that `keep` keeps, its
/// `$queue` variable set to all queues (Grafana itself is not packaged by
/// Debian: its queries are run as it would run them).
pub(crate) fn panel_queries(keep: impl Fn(&str) -> bool) -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/grafana/centralino-dashboard.json"
        ))
        .expect("the dashboard"),
    )
    .expect("dashboard JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace("$queue", ".*")))
        .filter(|e| keep(e))
        .collect()
}

impl Prometheus {
    /// Each query returns a sample within 20 s.
    pub(crate) fn each_has_data(&self, exprs: &[String]) {
        for expr in exprs {
            let start = Instant::now();
            while self.query(expr).is_none_or(|r| r.is_empty()) {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "the panel's query has no data: {expr}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }

    /// Waits (30 s at most) until `query` has a sample for which `pred`
    /// holds; its value.
    pub(crate) fn wait_value(&self, query: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let start = Instant::now();
        loop {
            if let Some(v) = self.value(query).filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus: {query} = {:?}",
                self.value(query)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
