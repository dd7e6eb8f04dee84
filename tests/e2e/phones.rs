//! Real phones (issue 18): the SIP stacks Debian ships, as operators on
//! the unchanged default configuration (only its listening ports moved to
//! free ones). `scripts/test` installs them.
//!
//! baresip 1.0 fails on a SHA-256 challenge even with an MD5 one beside
//! it; the default `sip.digest_md5_user_agents` offers it MD5 alone. Its
//! RTP is measured on both legs by the node's counters, and by the phone
//! itself: it dumps what it decodes (`sndfile` filter) and speaks a tone
//! (`aufile` source).

use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Node, Scratch, Sipp, free_port, scenario, sipp_media_port};
use centralino_media::g711::Law;
use centralino_media::rtp::{self, Header};

/// The embedded default configuration on free ports.
fn default_config(sip: u16, http: u16) -> String {
    centralino_config::DEFAULT_TOML
        .replace("127.0.0.1:5060", &format!("127.0.0.1:{sip}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
}

/// A 16-bit mono 8 kHz WAV of a 440 Hz tone, `seconds` long.
fn tone_wav(seconds: u32) -> Vec<u8> {
    let samples: Vec<i16> = (0..8000 * seconds)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            ((2.0 * std::f64::consts::PI * 440.0 * t).sin() * 8000.0) as i16
        })
        .collect();
    crate::common::wav(&samples)
}

/// baresip as operator `user` of the demo tenant: answers at once,
/// speaks `source` (a WAV), dumps what it hears into its directory.
struct Baresip {
    child: Child,
    dir: PathBuf,
    /// Its `ctrl_tcp` control port (commands of its `menu` module).
    ctrl: u16,
}

impl Baresip {
    fn start(scratch: &Scratch, node: &Node, user: u32, source: &Path) -> Self {
        Self::start_over(scratch, node, user, source, "")
    }

    /// As [`Baresip::start`], its account's URI with these parameters
    /// (`;transport=tcp`: it registers and takes its calls over TCP).
    fn start_over(scratch: &Scratch, node: &Node, user: u32, source: &Path, params: &str) -> Self {
        let dir = scratch.path(&format!("baresip-{user}"));
        std::fs::create_dir_all(&dir).expect("baresip dir");
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<sip:{user}@{}{params}>;auth_pass=demo{user};answermode=auto;regint=600\n",
                node.sip_addr()
            ),
        )
        .expect("accounts");
        // Loopback only: no traffic leaves the machine, and baresip's
        // SDP names 127.0.0.1 (the NAT case is media_calls.rs's).
        let ctrl = free_port();
        std::fs::write(
            dir.join("config"),
            format!(
                "sip_listen 127.0.0.1:{}\nnet_interface 127.0.0.1\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\nmodule_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl}\nsnd_path {}\naudio_player aubridge,heard\naudio_source aufile,{}\n",
                free_port(),
                dir.display(),
                source.display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join("baresip.log")).expect("log");
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn baresip (install Debian's baresip)");
        Self { child, dir, ctrl }
    }

    /// A command of baresip's `menu` module through `ctrl_tcp` (a
    /// netstring of JSON); its answer.
    fn command(&self, command: &str, params: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.ctrl)).expect("ctrl_tcp");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let json = format!(r#"{{"command":"{command}","params":"{params}","token":"t"}}"#);
        s.write_all(format!("{}:{json},", json.len()).as_bytes())
            .expect("command");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }

    /// Ends baresip with SIGTERM (it closes its recording) and waits.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The samples baresip decoded from what it received (its `sndfile`
    /// filter's `dump-*-dec.wav`).
    fn heard(&self) -> Vec<i16> {
        let dump = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"));
        dump.map(|p| wav_samples(&p)).unwrap_or_default()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The 16-bit samples of a WAV file's `data` chunk (none when it is not
/// one).
fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = &bytes[at + 8..];
        if &bytes[at..at + 4] == b"data" {
            // A recorder killed before it closed leaves the length unset.
            let n = if len == 0 {
                body.len()
            } else {
                len.min(body.len())
            };
            return body[..n]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    Vec::new()
}

/// The longest run of the caller's speech in what a phone heard (A-law
/// `SPEECH` decodes to one sample value).
fn longest_speech(heard: &[i16]) -> usize {
    let speech = Law::Alaw.decode(SPEECH);
    heard
        .split(|&s| s != speech)
        .map(<[i16]>::len)
        .max()
        .unwrap_or(0)
}

/// The caller's A-law byte: one sample value once decoded.
const SPEECH: u8 = 0x2A;

/// A citizen calls the demo line (DID 100, SIPp as the carrier) and talks
/// for 4 s from `caller` (the test is the citizen's RTP), then hangs up.
/// The audio address in the SDP of a response SIPp received (its
/// `-trace_msg` log in `dir`), once there is one.
fn node_media_address(dir: &Path) -> Option<std::net::SocketAddr> {
    let log = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("_messages.log"))?;
    let text = std::fs::read_to_string(log.path()).ok()?;
    text.split("message received").skip(1).find_map(|m| {
        let m = m.split("message sent").next()?;
        let ip = m.lines().find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?;
        let port = m
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))?
            .split(' ')
            .next()?;
        format!("{}:{port}", ip.trim()).parse().ok()
    })
}

fn talk(scratch: &Scratch, node: &Node, caller: &UdpSocket) {
    talk_for(scratch, node, caller, 4000);
}

/// As [`talk`], the caller staying `ms` milliseconds.
fn talk_for(scratch: &Scratch, node: &Node, caller: &UdpSocket, ms: u32) {
    caller
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let port = caller.local_addr().expect("addr").port().to_string();
    let mut trunk = Sipp::spawn(
        scratch,
        "trunk",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("trunk_media.xml"),
            "-s",
            "100",
            "-m",
            "1",
            "-d",
            &ms.to_string(),
            "-key",
            "caller_rtp",
            &port,
            "-timeout",
            "60s",
            "-trace_msg",
            // A key the operator's phone sends by SIP INFO is relayed to
            // the carrier: this one lets it be (a real carrier answers it;
            // SIPp would otherwise abort the call on a request its
            // scenario does not name).
            "-default_behaviors",
            "all,-abortunexp",
        ],
    );
    let (mut node_a, mut seq) = (None, 0u16);
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut next_send = Instant::now();
    while trunk.try_wait().is_none() && start.elapsed() < Duration::from_secs(30) {
        if let Ok((n, from)) = caller.recv_from(&mut buf) {
            node_a = Some(from);
            rtp::parse(&buf[..n]).expect("rtp to the caller");
        }
        if node_a.is_none() {
            // A phone that sends nothing (Twinkle on ALSA's null device)
            // leaves the caller nothing to answer: it speaks first, to the
            // address the node's SDP gave.
            node_a = node_media_address(&trunk.dir);
        }
        if let Some(to) = node_a
            && Instant::now() >= next_send
        {
            next_send += Duration::from_millis(20);
            let h = Header {
                marker: false,
                payload_type: 8,
                seq,
                timestamp: u32::from(seq) * 160,
                ssrc: 4242,
            };
            seq = seq.wrapping_add(1);
            let mut out = [0u8; 172];
            rtp::write(&h, &[SPEECH; 160], &mut out).expect("fits");
            caller.send_to(&out, to).expect("send");
        }
    }
    trunk.expect_success(Duration::from_secs(10));
}

#[test]
fn baresip_registers_on_the_default_configuration_and_talks_both_ways() {
    let scratch = Scratch::new("phone-baresip");
    let node = Node::start_toml(&scratch, default_config);
    let tone = scratch.path("tone.wav");
    std::fs::write(&tone, tone_wav(10)).expect("tone");
    let mut phone = Baresip::start(&scratch, &node, 1001, &tone);
    let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
    let start = Instant::now();
    while node.metric(available) < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "baresip never registered:\n{}",
            phone.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    talk(&scratch, &node, &caller);
    assert!(
        phone.log().contains("Call established"),
        "baresip answered:\n{}",
        phone.log()
    );
    phone.stop();
    // Both legs carried audio both ways (the node's own counters: 4 s of
    // 20 ms packets is 200 each way).
    for series in [
        "centralino_rtp_packets_total{direction=\"in\",side=\"operator\"}",
        "centralino_rtp_packets_total{direction=\"out\",side=\"operator\"}",
        "centralino_rtp_packets_total{direction=\"in\",side=\"caller\"}",
        "centralino_rtp_packets_total{direction=\"out\",side=\"caller\"}",
    ] {
        let n = node.metric(series);
        assert!(n > 100.0, "{series} = {n}");
    }
    assert_eq!(
        node.metric("centralino_rtp_dropped_total{reason=\"foreign_source\"}"),
        0.0
    );
    // The phone's own account: it heard the caller's speech (A-law 0x2A
    // decodes to one sample value: a run of at least a second of it).
    let heard = phone.heard();
    let longest = longest_speech(&heard);
    assert!(
        longest >= 8000,
        "baresip heard the caller: longest run of their speech {longest} samples of {}",
        heard.len()
    );
}

/// Issue 18: a phone over TCP. baresip registers over TCP on the default
/// configuration and is rung on the connection it registered on (the
/// node opens none of its own: one connection in the gauge before and
/// during the call), answers, and the caller hears it.
#[test]
fn baresip_over_tcp_is_rung_on_the_connection_it_registered_on() {
    let scratch = Scratch::new("phone-baresip-tcp");
    let node = Node::start_toml(&scratch, default_config);
    let tone = scratch.path("tone.wav");
    std::fs::write(&tone, tone_wav(10)).expect("tone");
    let mut phone = Baresip::start_over(&scratch, &node, 1001, &tone, ";transport=tcp");
    let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
    node.wait_metric(available, Duration::from_secs(15), |v| v >= 1.0);
    let connections = "centralino_sip_tcp_connections";
    assert_eq!(node.metric(connections), 1.0, "{}", phone.log());
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    talk(&scratch, &node, &caller);
    assert!(
        phone.log().contains("Call established"),
        "baresip answered:\n{}",
        phone.log()
    );
    assert_eq!(node.metric(connections), 1.0, "the call came on it");
    for series in [
        "centralino_rtp_packets_total{direction=\"in\",side=\"operator\"}",
        "centralino_rtp_packets_total{direction=\"out\",side=\"caller\"}",
    ] {
        let n = node.metric(series);
        assert!(n > 100.0, "{series} = {n}");
    }
    phone.stop();
}

/// linphonec (Linphone 5.1, Debian 12) as operator `user`: driven on its
/// standard input like a person at its prompt: files instead of a sound
/// card (it speaks `source`, records what it hears), auto-answer.
struct Linphone {
    child: Child,
    stdin: ChildStdin,
    dir: PathBuf,
}

impl Linphone {
    fn start(scratch: &Scratch, node: &Node, user: u32, source: &Path) -> Self {
        let dir = scratch.path(&format!("linphone-{user}"));
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".local/share/linphone")).expect("linphone home");
        std::fs::write(
            dir.join("linphonerc"),
            format!(
                "[sip]\nregister_only_when_network_is_up=0\nauto_net_state_mon=0\n[rtp]\naudio_rtp_port={}\n",
                sipp_media_port()
            ),
        )
        .expect("linphonerc");
        let log = std::fs::File::create(dir.join("linphonec.out")).expect("log");
        let mut child = Command::new("linphonec")
            .arg("-c")
            .arg(dir.join("linphonerc"))
            .args(["-d", "4", "-l"])
            .arg(dir.join("linphone.log"))
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn linphonec (install Debian's linphone-cli)");
        let stdin = child.stdin.take().expect("stdin");
        let mut phone = Self { child, stdin, dir };
        // Without a network monitor it opens no SIP port until told one.
        for cmd in [
            format!("ports sip {}", free_port()),
            "soundcard use files".to_owned(),
            format!("play {}", source.display()),
            format!("record {}", phone.dir.join("heard.wav").display()),
            "autoanswer enable".to_owned(),
            format!(
                "register sip:{user}@127.0.0.1 sip:{} demo{user}",
                node.sip_addr()
            ),
        ] {
            writeln!(phone.stdin, "{cmd}").expect("linphonec command");
        }
        phone
    }

    /// A linphonec command, as typed at its prompt.
    fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("linphonec command");
    }

    /// Whether linphonec reported call `id` connected.
    fn says_connected(&self, id: u32) -> bool {
        let out = std::fs::read_to_string(self.dir.join("linphonec.out")).unwrap_or_default();
        let call = format!("Call {id} with ");
        out.lines()
            .any(|l| l.contains(&call) && l.trim_end().ends_with("connected."))
    }

    fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("linphonec.out")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("linphone.log")).unwrap_or_default());
        s
    }

    fn stop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn linphone_registers_on_the_default_configuration_and_talks_both_ways() {
    let scratch = Scratch::new("phone-linphone");
    let node = Node::start_toml(&scratch, default_config);
    let tone = scratch.path("tone.wav");
    std::fs::write(&tone, tone_wav(10)).expect("tone");
    let mut phone = Linphone::start(&scratch, &node, 1001, &tone);
    let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
    let start = Instant::now();
    while node.metric(available) < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "linphone never registered:\n{}",
            phone.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A phone that can do SHA-256 is given it (and keeps it).
    assert!(
        phone
            .log()
            .lines()
            .any(|l| l.starts_with("Authorization:") && l.contains("algorithm=SHA-256")),
        "linphone answered the SHA-256 challenge:\n{}",
        phone.log()
    );
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    talk(&scratch, &node, &caller);
    phone.stop();
    for series in [
        "centralino_rtp_packets_total{direction=\"in\",side=\"operator\"}",
        "centralino_rtp_packets_total{direction=\"out\",side=\"operator\"}",
    ] {
        let n = node.metric(series);
        assert!(n > 100.0, "{series} = {n}\n{}", phone.log());
    }
    // Its own recording of the call holds the caller's speech.
    let heard = wav_samples(&phone.dir.join("heard.wav"));
    let longest = longest_speech(&heard);
    assert!(
        longest >= 8000,
        "linphone heard the caller: longest run {longest} of {} samples",
        heard.len()
    );
}

/// What an operator does from the phone during a call.
#[derive(Debug)]
enum Step {
    Hold,
    Resume,
    Key,
}

/// A caller talks to the operator (registered and available on `node`)
/// while the operator's phone, through `act`, holds the call, takes it
/// back and keys a digit; the node sees each in turn.
fn hold_resume_and_key(scratch: &Scratch, node: &Node, mut act: impl FnMut(Step)) {
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    std::thread::scope(|s| {
        s.spawn(|| talk_for(scratch, node, &caller, 8_000));
        let on_call = "centralino_agents{state=\"on_call\",tenant=\"demo\"}";
        node.wait_metric(on_call, Duration::from_secs(15), |v| v >= 1.0);
        for (step, seen) in [
            (
                Step::Hold,
                "session changed by re-INVITE side=\"operator\" held=true",
            ),
            (
                Step::Resume,
                "session changed by re-INVITE side=\"operator\" held=false",
            ),
            (Step::Key, "key press received side=\"operator\""),
        ] {
            act(step);
            node.wait_log(seen, Duration::from_secs(5));
        }
    });
}

/// One operator with a softphone (baresip, answering) and a second phone
/// (Linphone, ringing only), registered together: a call rings both; when
/// baresip answers, Linphone's ringing is cancelled, and the call is
/// baresip's.
#[test]
fn two_phones_of_one_operator_ring_together_and_the_loser_stops_ringing() {
    let scratch = Scratch::new("phone-two");
    let node = Node::start_toml(&scratch, default_config);
    let tone = scratch.path("tone.wav");
    std::fs::write(&tone, tone_wav(10)).expect("tone");
    let mut second = Linphone::start(&scratch, &node, 1001, &tone);
    second.command("autoanswer disable");
    let start = Instant::now();
    while !second.log().contains("[LinphoneRegistrationOk]") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "linphone never registered:\n{}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut first = Baresip::start(&scratch, &node, 1001, &tone);
    let start = Instant::now();
    while !first.log().contains("200 OK") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "baresip never registered:\n{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    talk(&scratch, &node, &caller);
    first.stop();
    second.stop();
    let log = second.log();
    assert!(
        log.contains("Receiving new incoming call"),
        "linphone rang:\n{log}"
    );
    // It was cancelled as answered elsewhere (RFC 3326), not left to
    // time out.
    assert!(
        log.contains("Reason: SIP;cause=200;text=\"Call completed elsewhere\""),
        "linphone was told:\n{log}"
    );
    // Linphone then ends it without error, not as a call it missed
    // (without the Reason it says "Not answered").
    assert!(log.contains("ended (No error)"), "{log}");
    let n = node.metric("centralino_rtp_packets_total{direction=\"in\",side=\"operator\"}");
    assert!(n > 100.0, "baresip talked: {n}");
}

/// The same from baresip, driven through its control port: `hold`,
/// `resume`, `sndcode`.
#[test]
fn baresip_holds_resumes_and_sends_a_digit_during_a_call() {
    let scratch = Scratch::new("phone-baresip-hold");
    let node = Node::start_toml(&scratch, default_config);
    let tone = scratch.path("tone.wav");
    std::fs::write(&tone, tone_wav(20)).expect("tone");
    let mut phone = Baresip::start(&scratch, &node, 1001, &tone);
    let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
    node.wait_metric(available, Duration::from_secs(15), |v| v >= 1.0);
    hold_resume_and_key(&scratch, &node, |step| {
        let answer = match step {
            Step::Hold => phone.command("hold", ""),
            Step::Resume => phone.command("resume", ""),
            Step::Key => phone.command("sndcode", "5"),
        };
        assert!(!answer.is_empty(), "baresip answered {step:?}");
    });
    phone.stop();
}

/// The operator puts the caller on hold from Linphone and takes them back
/// (re-INVITEs with `sendonly`, then `sendrecv`), then keys a digit
/// (RFC 4733 or INFO, whichever Linphone picks): the node sees each.
#[test]
fn linphone_holds_resumes_and_keys_a_digit_during_a_call() {
    let scratch = Scratch::new("phone-linphone-hold");
    let node = Node::start_toml(&scratch, default_config);
    let tone = scratch.path("tone.wav");
    std::fs::write(&tone, tone_wav(20)).expect("tone");
    let mut phone = Linphone::start(&scratch, &node, 1001, &tone);
    let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
    node.wait_metric(available, Duration::from_secs(15), |v| v >= 1.0);
    hold_resume_and_key(&scratch, &node, |step| {
        phone.command(match step {
            Step::Hold => "pause",
            Step::Resume => "resume",
            Step::Key => "5",
        });
    });
    phone.stop();
}

/// A node on the default configuration with MD5 only (SIPp, the colleague's
/// phone, computes MD5 only) and Linphone as operator 1001 speaking a
/// tone of `secs` seconds, registered and available.
fn linphone_beside_sipp(scratch: &Scratch, secs: u32) -> (Node, Linphone) {
    let node = Node::start_toml(scratch, |sip, http| {
        default_config(sip, http).replace(
            "digest_algorithms = [\"SHA-256\", \"MD5\"]",
            "digest_algorithms = [\"MD5\"]",
        )
    });
    let tone = scratch.path("tone.wav");
    std::fs::write(&tone, tone_wav(secs)).expect("tone");
    let phone = Linphone::start(scratch, &node, 1001, &tone);
    let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
    node.wait_metric(available, Duration::from_secs(15), |v| v >= 1.0);
    (node, phone)
}

/// An attended transfer from a real phone (RFC 5589 §7): Linphone as
/// operator 1001 talks to a caller, calls the queue `info` from the same
/// account (a consultation, challenged by digest), colleague 1002 (SIPp
/// signalling, the test's socket echoing what it hears) answers, and Linphone's `transfer 1 --to-call 2`
/// sends REFER with Replaces. The colleague's phone is moved onto the
/// caller's call by re-INVITE: the caller then hears their own voice back
/// from 1002; Linphone's two calls end; 1002 gets the caller's BYE.
#[test]
fn linphone_consults_a_colleague_and_hands_them_the_caller() {
    use crate::media_calls::{round_trip, speak};
    const SPEECH: u8 = 0x2A;
    let scratch = Scratch::new("phone-linphone-attended");
    let (node, mut phone) = linphone_beside_sipp(&scratch, 40);
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    caller
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut trunk = crate::common::trunk_call(
        &scratch,
        &node,
        "trunk",
        "trunk_media.xml",
        &caller,
        "25000",
    );
    let on_call = "centralino_agents{state=\"on_call\",tenant=\"demo\"}";
    let done = "centralino_transfers_total{outcome=\"done\",target=\"operator\"}";
    let echo = round_trip(SPEECH);
    #[derive(Debug, PartialEq)]
    enum Stage {
        Talking,
        Consulting,
        Transferring,
        Transferred,
    }
    let mut stage = Stage::Talking;
    let mut colleague = None;
    // The colleague's phone's media: sends back what it hears, to whoever
    // sent it (SIPp's -rtp_echo stops for good at the first send error,
    // such as the consultation's port closing under it).
    let colleague_rtp = UdpSocket::bind("127.0.0.1:0").expect("colleague rtp");
    colleague_rtp.set_nonblocking(true).expect("nonblocking");
    let colleague_port = colleague_rtp.local_addr().expect("addr").port().to_string();
    let (mut node_rtp, mut seq, mut echoed) = (None, 0u16, 0);
    let mut buf = [0u8; 2048];
    let (start, mut checked) = (Instant::now(), Instant::now());
    while trunk.try_wait().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{stage:?}: the caller never hung up\n{}",
            phone.log()
        );
        if let Ok((n, from)) = caller.recv_from(&mut buf) {
            node_rtp = Some(from);
            let p = rtp::parse(&buf[..n]).expect("rtp to the caller");
            if stage == Stage::Transferred && p.payload.iter().all(|b| *b == echo) {
                echoed += 1;
            }
        }
        if let Some(to) = node_rtp {
            speak(&caller, to, &mut seq, 77, SPEECH);
        }
        let mut heard = [0u8; 2048];
        while let Ok((n, from)) = colleague_rtp.recv_from(&mut heard) {
            let _ = colleague_rtp.send_to(&heard[..n], from);
        }
        // The node's figures, ten times a second.
        if checked.elapsed() < Duration::from_millis(100) {
            continue;
        }
        checked = Instant::now();
        match stage {
            Stage::Talking if node.metric(on_call) >= 1.0 => {
                // Linphone has the caller: its colleague logs in, and
                // Linphone calls the queue (holding the caller).
                let sipp = Sipp::spawn(
                    &scratch,
                    "colleague",
                    &[
                        "-sf",
                        &scenario("agent_answer_moved.xml"),
                        "-m",
                        "1",
                        "-timeout",
                        "60s",
                        "-key",
                        "operator_rtp",
                        &colleague_port,
                        "-trace_logs",
                    ],
                );
                crate::common::register(&scratch, &node, &[1002], sipp.port, |u| {
                    format!("demo{u}")
                });
                colleague = Some(sipp);
                // Linphone holds the caller before another call.
                phone.command("pause");
                phone.command(&format!("call sip:info@{}", node.sip_addr()));
                stage = Stage::Consulting;
            }
            // Linphone transfers only a call it has seen answered (else
            // "Wrong dialog state", and no REFER leaves): on a loaded
            // machine the node's answer is counted before Linphone has
            // read it.
            Stage::Consulting if node.metric(on_call) >= 2.0 && phone.says_connected(2) => {
                phone.command("transfer 1 --to-call 2");
                stage = Stage::Transferring;
            }
            Stage::Transferring if node.metric_or_zero(done) >= 1.0 => {
                stage = Stage::Transferred;
            }
            _ => {}
        }
    }
    trunk.expect_success(Duration::from_secs(5));
    assert_eq!(stage, Stage::Transferred, "{}", phone.log());
    let mut colleague = colleague.expect("the colleague's phone");
    colleague.expect_success(Duration::from_secs(10));
    assert!(
        echoed > 50,
        "the caller heard the colleague: {echoed} packets of their own voice back\n{}",
        phone.log()
    );
    let logs = node.logs();
    assert!(logs.contains("operator consults a queue"), "{logs}");
    assert!(
        logs.contains("attended transfer: the consulted operator takes the caller agent=1002"),
        "{logs}"
    );
    // Linphone's two calls are over; nothing is left on the node.
    node.wait_metric("centralino_calls_active", Duration::from_secs(5), |v| {
        v == 0.0
    });
    assert_eq!(node.metric(on_call), 0.0);
    phone.stop();
}

/// Issue 18: a blind transfer from a real phone. Linphone talks to a
/// carrier's caller and transfers them blind (`transfer 1 <uri>`: a
/// REFER without Replaces) to its colleague by name; the colleague's
/// SIPp phone gets the call and talks until the caller hangs up, and
/// Linphone's call ends.
#[test]
fn linphone_transfers_a_call_blind_to_a_colleague() {
    let scratch = Scratch::new("phone-linphone-blind");
    let (node, mut phone) = linphone_beside_sipp(&scratch, 20);
    let on_call = "centralino_agents{state=\"on_call\",tenant=\"demo\"}";
    let mut trunk = crate::common::trunk_to(
        &scratch,
        &node,
        "trunk",
        "trunk_call.xml",
        &["-m", "1", "-d", "8000"],
    );
    node.wait_metric(on_call, Duration::from_secs(15), |v| v >= 1.0);
    // Linphone has the caller: its colleague logs in (the one available).
    let mut colleague = crate::common::answering_phone(&scratch, &node, 1002);
    phone.command(&format!("transfer 1 sip:1002@{}", node.sip_addr()));
    node.wait_metric(
        "centralino_transfers_total{outcome=\"done\",target=\"operator\"}",
        Duration::from_secs(15),
        |v| v == 1.0,
    );
    trunk.expect_success(Duration::from_secs(20));
    colleague.expect_success(Duration::from_secs(10));
    node.wait_metric("centralino_calls_active", Duration::from_secs(5), |v| {
        v == 0.0
    });
    let logs = node.logs();
    assert!(
        logs.contains("operator transferred the call to a colleague"),
        "{logs}"
    );
    phone.stop();
}

/// twinkle-console (Twinkle 1.10, Debian 12) as operator `user`: its
/// profile and system settings in a home of its own, ALSA's `null` device
/// for sound (no sound card here: it hears into nothing and sends
/// silence), commands on its standard input.
struct Twinkle {
    child: Child,
    stdin: ChildStdin,
    home: PathBuf,
}

impl Twinkle {
    fn start(scratch: &Scratch, node: &Node, user: u32) -> Self {
        Self::with_profile(scratch, node, user, "")
    }

    /// As [`Twinkle::start`], with more lines in the user profile.
    fn with_profile(scratch: &Scratch, node: &Node, user: u32, extra: &str) -> Self {
        let home = scratch.path(&format!("twinkle-{user}"));
        let conf = home.join(".twinkle");
        std::fs::create_dir_all(&conf).expect("twinkle dir");
        let sip = node.sip_addr();
        std::fs::write(
            conf.join("op.cfg"),
            format!(
                "user_name={user}\nuser_domain=127.0.0.1\nauth_realm=centralino\nauth_name={user}\nauth_pass=demo{user}\noutbound_proxy={sip}\nall_requests_to_proxy=yes\nregistrar={sip}\nregister_at_startup=yes\nregistration_time=600\ncodecs=g711a,g711u\n{extra}"
            ),
        )
        .expect("profile");
        // RTP from the test tools' own range: an ephemeral port may sit in
        // a node's media range, and a Twinkle whose RTP port is taken
        // answers `100 Trying` and never `200` (ci168).
        let sip_port = free_port();
        let rtp_port = sipp_media_port();
        std::fs::write(
            conf.join("twinkle.sys"),
            format!(
                "dev_ringtone=alsa:null\ndev_speaker=alsa:null\ndev_mic=alsa:null\nsip_port={sip_port}\nrtp_port={rtp_port}\n"
            ),
        )
        .expect("system settings");
        // Auto answer from the start (its service file), not from a prompt
        // command Twinkle may read after it registered.
        std::fs::write(conf.join("op.svc"), "auto_answer=yes\n").expect("services");
        let log = std::fs::File::create(home.join("twinkle.out")).expect("log");
        let mut child = Command::new("twinkle-console")
            .arg("op.cfg")
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn twinkle-console (install Debian's twinkle-console)");
        let stdin = child.stdin.take().expect("stdin");
        Self { child, stdin, home }
    }

    /// A line on its command prompt.
    fn command(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("twinkle command");
    }

    fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.home.join("twinkle.out")).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.home.join(".twinkle/twinkle.log")).unwrap_or_default(),
        );
        s
    }

    /// Quits as a person would (it unregisters first), bounded.
    fn stop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Twinkle {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn twinkle_registers_on_the_default_configuration_answers_and_unregisters_on_quit() {
    let scratch = Scratch::new("phone-twinkle");
    let node = Node::start_toml(&scratch, default_config);
    let mut phone = Twinkle::start(&scratch, &node, 1001);
    let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
    let start = Instant::now();
    while node.metric(available) < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "twinkle never registered:\n{}",
            phone.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // An MD5-only phone that picks MD5 from the pair it is offered.
    assert!(
        phone
            .log()
            .lines()
            .any(|l| l.starts_with("Authorization:") && l.contains("algorithm=MD5")),
        "twinkle answered the MD5 challenge:\n{}",
        phone.log()
    );
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    talk(&scratch, &node, &caller);
    assert!(phone.log().contains("call established"), "{}", phone.log());
    // The caller's audio reached the phone. (With ALSA's null device for
    // a microphone Twinkle sends no RTP here, so its direction is
    // measured with baresip and Linphone.)
    let n = node.metric("centralino_rtp_packets_total{direction=\"out\",side=\"operator\"}");
    assert!(n > 100.0, "operator out = {n}\n{}", phone.log());
    // Quitting unregisters: the operator is logged out at once, not when
    // the binding would have lapsed.
    phone.stop();
    node.wait_metric(available, Duration::from_secs(5), |v| v == 0.0);
}

/// Twinkle's hold, both ways it knows (RFC 3264 `sendonly`, and the RFC
/// 2543 `c=0.0.0.0` older PBXs and phones still send), its retrieve, and a
/// key sent by SIP INFO (`dtmf_transport=info`: what a phone whose audio
/// path cannot carry RFC 4733 events does): the node sees each.
#[test]
fn twinkle_holds_both_ways_resumes_and_keys_a_digit_by_info() {
    for variant in ["rfc3264", "rfc2543"] {
        let scratch = Scratch::new(&format!("phone-twinkle-hold-{variant}"));
        let node = Node::start_toml(&scratch, default_config);
        let mut phone = Twinkle::with_profile(
            &scratch,
            &node,
            1001,
            &format!("hold_variant={variant}\ndtmf_transport=info\n"),
        );
        let available = "centralino_agents{state=\"available\",tenant=\"demo\"}";
        node.wait_metric(available, Duration::from_secs(15), |v| v >= 1.0);
        hold_resume_and_key(&scratch, &node, |step| {
            // Twinkle ignores a command while its last re-INVITE is still
            // open: each waits until the phone saw the one before it done.
            let (command, done_before) = match step {
                Step::Hold => ("hold", 0),
                Step::Resume => ("retrieve", 1),
                Step::Key => ("dtmf 5", 2),
            };
            let start = Instant::now();
            while phone.log().matches("re-INVITE successful").count() < done_before {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "twinkle's re-INVITE never completed:\n{}",
                    phone.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            phone.command(command);
        });
        let log = phone.log();
        if variant == "rfc2543" {
            assert!(log.contains("c=IN IP4 0.0.0.0"), "held the old way:\n{log}");
        } else {
            assert!(log.contains("a=sendonly"), "held with sendonly:\n{log}");
        }
        assert!(log.contains("INFO sip:"), "the key went by INFO:\n{log}");
        assert_eq!(
            node.metric("centralino_dtmf_digits_total{source=\"info\"}"),
            1.0
        );
        // Relayed to the carrier by INFO, as the phone sent it.
        assert_eq!(
            node.metric("centralino_sip_requests_total{direction=\"out\",method=\"INFO\"}"),
            1.0
        );
        phone.stop();
    }
}
