//! Real carriers' habits (issue 18): Debian's Kamailio as the carrier's
//! SBC in front of the node. The carrier (SIPp on 127.0.0.4) speaks UDP to
//! the SBC (127.0.0.3), which record-routes (twice: the transport changes)
//! and reaches the node over TCP; the node knows only the SBC as its trunk.
//! Requests inside the call, from either side, must follow the route set
//! through the SBC, and the node must send its own on the connection the
//! SBC opened. `scripts/test` installs `kamailio`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Node, NodeConfig, Scratch, Sipp, free_port, register, scenario};

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

/// Debian's Kamailio on `ip`, UDP and TCP, running `route` (the body of
/// its `request_route`; `$PORT` is its own port). Each request it takes
/// is logged as `sbc: METHOD from IP/PROTO`.
struct Kamailio {
    child: Child,
    log: PathBuf,
    ip: &'static str,
    port: u16,
}

impl Kamailio {
    fn start(scratch: &Scratch, name: &str, ip: &'static str, route: &str) -> Self {
        let port = free_port();
        let cfg = scratch.path(&format!("{name}.cfg"));
        std::fs::write(
            &cfg,
            format!(
                r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
listen=udp:{ip}:{port}
listen=tcp:{ip}:{port}
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
loadmodule "path.so"
modparam("rr", "enable_full_lr", 1)
request_route {{
  xlog("L_NOTICE", "sbc: $rm from $si/$pr\n");
  if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
{route}
}}
"#,
                modules = modules_dir().display(),
                route = route.replace("$PORT", &port.to_string())
            ),
        )
        .expect("kamailio.cfg");
        let log = scratch.path(&format!("{name}.log"));
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
        let mut sbc = Self {
            child,
            log,
            ip,
            port,
        };
        let start = Instant::now();
        while TcpStream::connect((ip, port)).is_err() {
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
        format!("{}:{}", self.ip, self.port)
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

impl Drop for Kamailio {
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

/// The carrier (SIPp on [`CARRIER_IP`]) placing one call to DID 100
/// through the SBC with `scenario_file`.
fn call_through_sbc(
    scratch: &Scratch,
    label: &str,
    sbc: &Kamailio,
    scenario_file: &str,
    extra: &[&str],
) -> Sipp {
    let (addr, sf) = (sbc.addr(), scenario(scenario_file));
    let mut args = vec![addr.as_str(), "-sf", sf.as_str(), "-s", "100", "-m", "1"];
    args.extend_from_slice(extra);
    Sipp::spawn_from(scratch, label, CARRIER_IP, &args)
}

/// A node whose one trunk is the SBC, with operator 1001, and the SBC.
fn node_behind_sbc(scratch: &Scratch) -> (Node, Kamailio) {
    let node = Node::start(
        scratch,
        &NodeConfig {
            trunk_peers: vec![SBC_IP],
            agents: 1,
            ..NodeConfig::default()
        },
    );
    let sbc = record_routing_sbc(scratch, &node);
    (node, sbc)
}

/// A record-routing SBC on [`SBC_IP`]: everything new goes to `node`
/// over TCP; in-dialog requests follow their Route headers.
fn record_routing_sbc(scratch: &Scratch, node: &Node) -> Kamailio {
    Kamailio::start(
        scratch,
        "sbc",
        SBC_IP,
        &format!(
            r#"  if (has_totag()) {{
    if (loose_route()) {{ t_relay(); exit; }}
    if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    sl_send_reply("404", "Not here"); exit;
  }}
  if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  t_check_trans();
  record_route();
  $du = "sip:127.0.0.1:{node};transport=tcp";
  force_send_socket(tcp:{SBC_IP}:$PORT);
  t_relay();"#,
            node = node.sip_port
        ),
    )
}

/// One carrier call (SIPp `scenario`, within `secs`) through the SBC to
/// an answering operator: the scratch (kept while the node runs), the
/// node, and what the SBC relayed.
fn one_call_through_sbc(
    name: &str,
    scenario: &str,
    secs: u64,
) -> (Scratch, Node, Vec<(String, String, String)>) {
    let scratch = Scratch::new(name);
    let (node, sbc) = node_behind_sbc(&scratch);
    let mut phone = crate::common::one_answering_phone(&scratch, &node);
    let timeout = format!("{secs}s");
    let mut carrier =
        call_through_sbc(&scratch, "carrier", &sbc, scenario, &["-timeout", &timeout]);
    carrier.expect_success(Duration::from_secs(secs));
    phone.expect_success(Duration::from_secs(10));
    let relayed = sbc.relayed();
    (scratch, node, relayed)
}

/// A carrier behind the SBC asks the node to refresh its session (RFC
/// 4028, `refresher=uas`, 90 s): the node's UPDATE at 45 s follows the
/// route set through the SBC over TCP to the carrier (SIPp, which checks
/// it and answers), and the call goes on (45 s of real time).
#[test]
fn a_session_the_node_refreshes_is_refreshed_through_the_sbc() {
    let (_scratch, node, relayed) = one_call_through_sbc(
        "carrier-sbc-refresh",
        "trunk_session_refreshed_by_node.xml",
        120,
    );
    assert!(
        relayed.contains(&("UPDATE".into(), "127.0.0.1".into(), "tcp".into())),
        "the node's UPDATE went through the SBC: {relayed:?}"
    );
    assert_eq!(
        node.metric("centralino_session_refreshes_total{outcome=\"refreshed\"}"),
        1.0
    );
}

/// A carrier behind the SBC that refreshes its session itself (RFC 4028,
/// `refresher=uac`, 90 s): the node's 200 leaves the refresh to it, and its
/// UPDATE through the SBC over TCP is answered with the same interval and
/// refresher (SIPp checks both), the call going on until the carrier's BYE.
#[test]
fn a_carriers_own_session_refresh_through_the_sbc_is_answered() {
    let (_scratch, node, relayed) = one_call_through_sbc(
        "carrier-sbc-own-refresh",
        "trunk_session_refreshed_by_carrier.xml",
        30,
    );
    assert!(
        relayed.contains(&("UPDATE".into(), CARRIER_IP.into(), "udp".into())),
        "the carrier's UPDATE went through the SBC: {relayed:?}"
    );
    assert_eq!(
        node.metric("centralino_calls_total{outcome=\"answered\"}"),
        1.0
    );
}

#[test]
fn calls_through_a_record_routing_sbc_over_tcp_end_from_either_side() {
    let scratch = Scratch::new("carrier-sbc");
    let (node, sbc) = node_behind_sbc(&scratch);
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
    let mut carrier = call_through_sbc(
        &scratch,
        "carrier",
        &sbc,
        "trunk_hangup_by_agent.xml",
        &["-timeout", "30s"],
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
    let mut carrier = call_through_sbc(
        &scratch,
        "carrier2",
        &sbc,
        "trunk_call.xml",
        &["-d", "500", "-timeout", "30s"],
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

const EDGE_IP: &str = "127.0.0.5";

/// Operators behind an edge proxy (RFC 3327): the REGISTER comes through
/// it with a `Path`, and the node's INVITE must go back through it (a
/// `Route` from the Path), not to the Contact the phone named.
#[test]
fn an_operator_registered_through_an_edge_proxy_is_rung_through_it() {
    let scratch = Scratch::new("edge-path");
    let node = Node::start(
        &scratch,
        &NodeConfig {
            agents: 1,
            ..NodeConfig::default()
        },
    );
    // The edge: REGISTERs to the node with our Path; requests carrying
    // our Route (the Path, then the route set) go on by Request-URI.
    let edge = Kamailio::start(
        &scratch,
        "edge",
        EDGE_IP,
        &format!(
            r#"  xlog("L_NOTICE", "edge: $rm ru=$ru route=$hdr(Route) path=$hdr(Path)\n");
  if (is_method("REGISTER")) {{
    add_path();
    $du = "sip:127.0.0.1:{node}";
    force_send_socket(udp:{EDGE_IP}:$PORT);
    t_relay(); exit;
  }}
  if (is_present_hf("Route")) {{
    # Ours (the Path, then the route set): consumed, then on by
    # Request-URI; loose_route() is false when nothing is left.
    loose_route();
    if (!has_totag()) {{ record_route(); }}
    t_relay(); exit;
  }}
  if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
  sl_send_reply("403", "Not through this edge"); exit;"#,
            node = node.sip_port
        ),
    );
    let mut phone = Sipp::spawn(
        &scratch,
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
    // The phone registers through the edge (its REGISTER goes there).
    register_via(&scratch, &edge.addr(), 1001, phone.port);
    node.wait_metric(
        "centralino_agents{state=\"available\",tenant=\"demo\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    let mut carrier = Sipp::spawn(
        &scratch,
        "carrier",
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("trunk_call.xml"),
            "-s",
            "100",
            "-m",
            "1",
            "-d",
            "300",
            "-timeout",
            "30s",
        ],
    );
    carrier.expect_success(Duration::from_secs(40));
    phone.expect_success(Duration::from_secs(10));
    let relayed = edge.relayed();
    for method in ["REGISTER", "INVITE", "ACK", "BYE"] {
        assert!(
            relayed.iter().any(|r| r.0 == method),
            "{method} went through the edge: {relayed:?}"
        );
    }
    assert!(
        relayed.contains(&("INVITE".into(), "127.0.0.1".into(), "udp".into())),
        "the node's INVITE reached the edge: {relayed:?}"
    );
}

/// Registers `user` (password `demo{user}`, Contact port `contact_port`
/// on 127.0.0.1) by sending the REGISTER to `via` instead of the node.
fn register_via(scratch: &Scratch, via: &str, user: u32, contact_port: u16) {
    let csv = scratch.path(&format!("users-{contact_port}.csv"));
    std::fs::write(
        &csv,
        format!("SEQUENTIAL\n{user};[authentication username={user} password=demo{user}];{contact_port}\n"),
    )
    .expect("csv");
    let mut sipp = Sipp::spawn(
        scratch,
        &format!("register-{contact_port}"),
        &[
            via,
            "-sf",
            &scenario("register.xml"),
            "-inf",
            csv.to_str().expect("utf-8 path"),
            "-m",
            "1",
            "-timeout",
            "20s",
        ],
    );
    sipp.expect_success(Duration::from_secs(30));
}
