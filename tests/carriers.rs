//! Real carriers' habits (issue 18): Debian's Kamailio as the carrier's
//! SBC in front of the node. The carrier (SIPp on 127.0.0.4) speaks UDP to
//! the SBC (127.0.0.3), which record-routes (twice: the transport changes)
//! and reaches the node over TCP; the node knows only the SBC as its trunk.
//! Requests inside the call, from either side, must follow the route set
//! through the SBC, and the node must send its own on the connection the
//! SBC opened. `scripts/test` installs `kamailio`.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, NodeConfig, Scratch, Sipp, free_port, register, scenario};

const SBC_IP: &str = "127.0.0.3";
const CARRIER_IP: &str = "127.0.0.4";

/// Where Debian put Kamailio's modules (`/usr/lib/<multiarch>/kamailio`).
fn modules_dir() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("kamailio/modules"))
        .find(|d| d.join("tm.so").exists())
        .expect("Kamailio's modules (install Debian's kamailio)")
}

/// Kamailio as a record-routing stateful proxy: everything new goes to the
/// node over TCP; in-dialog requests follow their Route headers.
struct Sbc {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Sbc {
    fn start(scratch: &Scratch, node: &Node) -> Self {
        let port = free_port();
        let cfg = scratch.path("kamailio.cfg");
        std::fs::write(
            &cfg,
            format!(
                r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
listen=udp:{SBC_IP}:{port}
listen=tcp:{SBC_IP}:{port}
mpath="{modules}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "textopsx.so"
loadmodule "xlog.so"
modparam("rr", "enable_full_lr", 1)
request_route {{
  xlog("L_NOTICE", "sbc: $rm from $si/$pr\n");
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
  if (has_totag()) {{
    if (loose_route()) {{ t_relay(); exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    sl_send_reply("404", "Not here"); exit;
  }}
  if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  t_check_trans();
  record_route();
  $du = "sip:127.0.0.1:{node};transport=tcp";
  force_send_socket(tcp:{SBC_IP}:{port});
  t_relay();
}}
"#,
                node = node.sip_port,
                modules = modules_dir().display()
            ),
        )
        .expect("kamailio.cfg");
        let log = scratch.path("kamailio.log");
        let out = std::fs::File::create(&log).expect("kamailio log");
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "32", "-M", "8", "-w"])
            .arg(scratch.path(""))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn kamailio (install Debian's kamailio)");
        let mut sbc = Self { child, log, port };
        let start = Instant::now();
        while TcpStream::connect((SBC_IP, port)).is_err() {
            assert!(
                sbc.child.try_wait().ok().flatten().is_none()
                    && start.elapsed() < Duration::from_secs(15),
                "kamailio did not start:\n{}",
                sbc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sbc
    }

    fn addr(&self) -> String {
        format!("{SBC_IP}:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The requests it relayed: (method, source IP, protocol).
    fn relayed(&self) -> Vec<(String, String, String)> {
        self.log()
            .lines()
            .filter_map(|l| l.split("sbc: ").nth(1))
            .filter_map(|l| {
                let (method, rest) = l.split_once(" from ")?;
                let (ip, proto) = rest.trim().split_once('/')?;
                Some((method.to_owned(), ip.to_owned(), proto.to_owned()))
            })
            .collect()
    }
}

impl Drop for Sbc {
    fn drop(&mut self) {
        // SIGTERM: the main process takes its children down with it.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn calls_through_a_record_routing_sbc_over_tcp_end_from_either_side() {
    let scratch = Scratch::new("carrier-sbc");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            trunk_peers: vec![SBC_IP],
            agents: 1,
            ..NodeConfig::default()
        },
    );
    let sbc = Sbc::start(&scratch, &node);
    // The operator hangs up the first call; the carrier the second.
    let mut phone = Sipp::spawn(
        &scratch,
        "phone",
        &[
            "-sf",
            &scenario("agent_hangup.xml"),
            "-m",
            "1",
            "-d",
            "500",
            "-timeout",
            "60s",
        ],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    let mut carrier = Sipp::spawn_from(
        &scratch,
        "carrier",
        CARRIER_IP,
        &[
            &sbc.addr(),
            "-sf",
            &scenario("trunk_hangup_by_agent.xml"),
            "-s",
            "100",
            "-m",
            "1",
            "-timeout",
            "30s",
        ],
    );
    carrier.expect_success(Duration::from_secs(40));
    phone.expect_success(Duration::from_secs(10));
    let relayed = sbc.relayed();
    // The node reached the carrier only through the SBC, over the TCP
    // connection the SBC opened (the route set, not the carrier's Contact).
    assert!(
        relayed.contains(&("BYE".into(), "127.0.0.1".into(), "tcp".into())),
        "the node's BYE went through the SBC over TCP: {relayed:?}"
    );
    assert!(relayed.contains(&("INVITE".into(), CARRIER_IP.into(), "udp".into())));

    // The carrier hangs up: its BYE follows the route set to the node.
    let mut phone = Sipp::spawn(
        &scratch,
        "phone2",
        &[
            "-sf",
            &scenario("agent_answer.xml"),
            "-m",
            "1",
            "-timeout",
            "60s",
        ],
    );
    register(&scratch, &node, &[1001], phone.port, |u| format!("demo{u}"));
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    let mut carrier = Sipp::spawn_from(
        &scratch,
        "carrier2",
        CARRIER_IP,
        &[
            &sbc.addr(),
            "-sf",
            &scenario("trunk_call.xml"),
            "-s",
            "100",
            "-m",
            "1",
            "-d",
            "500",
            "-timeout",
            "30s",
        ],
    );
    carrier.expect_success(Duration::from_secs(40));
    phone.expect_success(Duration::from_secs(10));
    let byes_from_carrier = sbc
        .relayed()
        .iter()
        .filter(|r| r.0 == "BYE" && r.1 == CARRIER_IP)
        .count();
    assert_eq!(byes_from_carrier, 1, "{:?}", sbc.relayed());
    // Both calls ended on the node too.
    node.wait_metric("centralino_calls_active", Duration::from_secs(5), |v| {
        v == 0.0
    });
}
