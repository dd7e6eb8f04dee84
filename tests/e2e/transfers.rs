//! Operators' transfers from a SIP phone (SIPp): blind to another queue
//! of the firm (REFER), where a colleague's phone gets the call with its
//! context; a number the firm allows (`transfer_numbers`), reached
//! through the carrier; and what must be refused: any other number
//! (nothing reaches the carrier), another firm's queue, a name that is no
//! queue. (A caller's own REFER is refused too: `engine::tests`,
//! `a_callers_refer_...`.)

use std::time::Duration;

use crate::common::{Node, Scratch, Sipp, register, scenario, trunk_to};

fn config(sip: u16, http: u16, carrier_out: u16) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[[tenants]]
name = "asl"

[[tenants]]
name = "altra"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
outbound = "127.0.0.1:{carrier_out}"
dids = {{ "100" = {{ flow = "vaccini" }} }}

[[queues]]
name = "info"
tenant = "asl"

[[queues]]
name = "secondo"
tenant = "asl"

[[queues]]
name = "estranea"
tenant = "altra"

[[flows]]
name = "vaccini"
start = "motivo"
[flows.nodes.motivo]
type = "set"
variables = {{ motivo = "prenotazione" }}
next = "coda"
[flows.nodes.coda]
type = "enqueue"
queue = "info"

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
queues = ["info"]

[[agents]]
username = "1002"
password = "demo1002"
tenant = "asl"
queues = ["secondo"]

[[agents]]
username = "2001"
password = "demo2001"
tenant = "altra"
queues = ["estranea"]
"#
    )
}

/// Operator `user`'s phone running `scenario_file` (talking `ms`), and
/// registered.
fn phone(scratch: &Scratch, node: &Node, user: u32, file: &str, ms: &str, extra: &[&str]) -> Sipp {
    let mut args = vec![
        "-sf",
        file,
        "-d",
        ms,
        "-m",
        "1",
        "-timeout",
        "60s",
        "-trace_msg",
    ];
    args.extend_from_slice(extra);
    let sipp = Sipp::spawn(scratch, &format!("phone-{user}"), &args);
    register(scratch, node, &[user], sipp.port, |u| format!("demo{u}"));
    sipp
}

#[test]
fn an_operator_transfers_a_call_blind_to_a_queue_and_a_colleague_gets_it_with_its_context() {
    blind_transfer("secondo", "queue");
}

/// The same to a colleague by name (`Refer-To: <sip:1002@...>`): their
/// phone rings for the caller, whatever their queues.
#[test]
fn an_operator_transfers_a_call_blind_to_a_colleague_by_name() {
    blind_transfer("1002", "operator");
}

/// Operator 1001 transfers blind to `target` (a queue or a colleague);
/// colleague 1002 gets the call with its context; `kind` is the metric's
/// target label.
fn blind_transfer(target: &str, kind: &str) {
    let scratch = Scratch::new(&format!("transfer-{kind}"));
    let node = Node::start_toml(&scratch, |s, h| config(s, h, 9));
    let refer = scenario("agent_refer.xml");
    let hangup = scenario("agent_hangup.xml");
    let mut first = phone(
        &scratch,
        &node,
        1001,
        &refer,
        "1000",
        &["-key", "refer_to", target],
    );
    let mut colleague = phone(&scratch, &node, 1002, &hangup, "1500", &[]);
    // The caller stays on the line until the colleague hangs up.
    let mut caller = trunk_to(
        &scratch,
        &node,
        "caller",
        "trunk_hangup_by_agent.xml",
        &["-m", "1"],
    );
    for (name, sipp) in [
        ("first", &mut first),
        ("colleague", &mut colleague),
        ("caller", &mut caller),
    ] {
        let st = sipp.wait(Duration::from_secs(40));
        assert!(st.success(), "{name} SIPp failed:\n{}", sipp.report());
    }
    assert_eq!(
        node.metric(&format!(
            "centralino_transfers_total{{outcome=\"done\",target=\"{kind}\"}}"
        )),
        1.0
    );
    if kind == "queue" {
        assert_eq!(
            node.metric("centralino_calls_requeued_total{reason=\"transfer\"}"),
            1.0
        );
    }
    // The same call record and the IVR's answers reach the colleague.
    let to_first = first.messages();
    let to_colleague = colleague.messages();
    let record = |log: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix("X-Centralino-Call: "))
            .map(str::trim)
            .map(str::to_owned)
    };
    assert!(record(&to_first).is_some(), "{to_first}");
    assert_eq!(record(&to_first), record(&to_colleague), "{to_colleague}");
    assert!(
        to_colleague.contains("X-Centralino-Var: motivo=prenotazione"),
        "{to_colleague}"
    );
    assert!(
        to_first.contains("Subscription-State: terminated"),
        "{to_first}"
    );
}

#[test]
fn transfers_to_a_number_or_another_firms_queue_are_refused_and_dial_nothing() {
    let scratch = Scratch::new("transfer-refused");
    // The carrier's outbound side: whatever the node would dial arrives
    // here.
    let carrier = std::net::UdpSocket::bind("127.0.0.1:0").expect("carrier");
    let port = carrier.local_addr().expect("addr").port();
    let node = Node::start_toml(&scratch, |s, h| config(s, h, port));
    let refer = scenario("agent_refer.xml");
    for target in ["+393331234567", "estranea", "nessuna"] {
        let mut op = phone(
            &scratch,
            &node,
            1001,
            &refer,
            "500",
            &["-key", "refer_to", target],
        );
        let mut caller = trunk_to(
            &scratch,
            &node,
            "caller",
            "trunk_hangup_by_agent.xml",
            &["-m", "1"],
        );
        for (name, sipp) in [("operator", &mut op), ("caller", &mut caller)] {
            let st = sipp.wait(Duration::from_secs(40));
            assert!(
                st.success(),
                "{target}: {name} SIPp failed:\n{}",
                sipp.report()
            );
        }
        // Wrap-up over: available again for the next round.
        let start = std::time::Instant::now();
        while node.metric("centralino_queue_agents{queue=\"info\",state=\"available\"}") < 1.0 {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "1001 never available again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(
        node.metric("centralino_transfers_total{outcome=\"refused\",target=\"external\"}"),
        1.0
    );
    assert_eq!(
        node.metric("centralino_transfers_total{outcome=\"refused\",target=\"unknown\"}"),
        2.0
    );
    // Nothing reached the carrier's outbound side.
    carrier.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    assert!(
        carrier.recv_from(&mut buf).is_err(),
        "the node sent the carrier: {}",
        String::from_utf8_lossy(&buf)
    );
}

/// A number the firm lets its operators transfer to (`transfer_numbers`,
/// within its dial plan): the operator's REFER puts the caller through the
/// carrier to it; the operator's leg ends.
#[test]
fn a_transfer_to_a_number_the_firm_allows_reaches_it_through_the_carrier() {
    let scratch = Scratch::new("transfer-number");
    // The carrier's outbound side: the number answers there.
    let mut carrier = Sipp::spawn(
        &scratch,
        "carrier",
        &[
            "-sf",
            &scenario("citizen_answer.xml"),
            "-m",
            "1",
            "-timeout",
            "60s",
            "-trace_logs",
        ],
    );
    let port = carrier.port;
    let node = Node::start_toml(&scratch, |s, h| {
        config(s, h, port).replace(
            "[[tenants]]\nname = \"asl\"\n",
            "[[tenants]]\nname = \"asl\"\ntransfer_numbers = [\"+39061\"]\n",
        )
    });
    let mut op = phone(
        &scratch,
        &node,
        1001,
        &scenario("agent_refer.xml"),
        "500",
        &["-key", "refer_to", "+39061234567"],
    );
    // The caller talks to the number, then hangs up.
    let mut caller = trunk_to(
        &scratch,
        &node,
        "caller",
        "trunk_call.xml",
        &["-m", "1", "-d", "6000"],
    );
    for (name, sipp) in [
        ("operator", &mut op),
        ("caller", &mut caller),
        ("carrier", &mut carrier),
    ] {
        let st = sipp.wait(Duration::from_secs(40));
        assert!(st.success(), "{name} SIPp failed:\n{}", sipp.report());
    }
    assert!(
        carrier.report().contains("called INVITE sip:+39061234567@"),
        "{}",
        carrier.report()
    );
    assert_eq!(
        node.metric("centralino_transfers_total{outcome=\"done\",target=\"external\"}"),
        1.0
    );
}
