//! End to end with skills: two queues needing different skills, an
//! operator who has both, and a DID whose callers need English. SIPp is the
//! carrier trunk and the operators' phones; the node's log says who
//! answered which queue.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::{Node, Scratch, Sipp, register, scenario};

fn config(sip: u16, http: u16) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{sip}"]
digest_algorithms = ["MD5"]

[http]
listen = "127.0.0.1:{http}"

[[tenants]]
name = "asl"

[[trunks]]
name = "carrier"
tenant = "asl"
peers = ["127.0.0.1"]
dids = {{ "100" = "vaccini", "101" = "triage", "102" = {{ queue = "vaccini", requirements = 'lang == "en"' }} }}

[[queues]]
name = "vaccini"
tenant = "asl"
requirements = "vaccini >= 5"
ring_timeout_seconds = 5

[[queues]]
name = "triage"
tenant = "asl"
requirements = "triage"
strategy = "most_proficient"
ring_timeout_seconds = 5

[[agents]]
username = "1001"
password = "demo1001"
tenant = "asl"
skills = {{ vaccini = 7 }}
languages = ["it"]

[[agents]]
username = "1002"
password = "demo1002"
tenant = "asl"
skills = {{ triage = 4 }}
languages = ["it"]

[[agents]]
username = "1003"
password = "demo1003"
tenant = "asl"
skills = {{ vaccini = 6, triage = 8 }}
languages = ["it", "en"]

[[agents]]
username = "1004"
password = "demo1004"
tenant = "asl"
skills = {{ vaccini = 3 }}
languages = ["en"]
"#
    )
}

fn trunk(scratch: &Scratch, node: &Node, did: &str, calls: &str) -> Sipp {
    Sipp::spawn(
        scratch,
        &format!("trunk-{did}"),
        &[
            &node.sip_addr(),
            "-sf",
            &scenario("trunk_call.xml"),
            "-s",
            did,
            "-m",
            calls,
            "-r",
            "10",
            "-d",
            "300",
            "-timeout",
            "60s",
        ],
    )
}

#[test]
fn skills_choose_the_operators_and_a_shared_operator_serves_both_queues() {
    let scratch = Scratch::new("skills");
    let node = Node::start_toml(&scratch, config);
    let phones = Sipp::spawn(
        &scratch,
        "phones",
        &["-sf", &scenario("agent_answer.xml"), "-timeout", "90s"],
    );
    register(
        &scratch,
        &node,
        &[1001, 1002, 1003, 1004],
        phones.port,
        |u| format!("demo{u}"),
    );
    // Each queue reaches two operators (1004's levels are too low).
    for q in ["vaccini", "triage"] {
        node.wait_metric(
            &format!("centralino_queue_agents{{queue=\"{q}\",state=\"available\"}}"),
            Duration::from_secs(5),
            |v| v == 2.0,
        );
    }
    let mut t100 = trunk(&scratch, &node, "100", "20");
    let mut t101 = trunk(&scratch, &node, "101", "20");
    t100.expect_success(Duration::from_secs(70));
    t101.expect_success(Duration::from_secs(70));
    let mut t102 = trunk(&scratch, &node, "102", "5");
    t102.expect_success(Duration::from_secs(70));

    // (queue, agent) of every answered call, in order.
    let answered: Vec<(String, String)> = node
        .logs()
        .lines()
        .filter(|l| l.contains("call answered"))
        .map(|l| {
            // The event's own field: the last one of that name (the
            // call's span, before it, names the queue too).
            let field = |k: &str| {
                l.split_whitespace()
                    .filter_map(|w| w.strip_prefix(k))
                    .next_back()
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("queue="), field("agent="))
        })
        .collect();
    assert_eq!(answered.len(), 45, "{answered:?}");
    let mut served: HashMap<&str, HashSet<String>> = HashMap::new();
    for (q, a) in &answered[..40] {
        served.entry(q).or_default().insert(a.clone());
    }
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<HashSet<_>>();
    assert_eq!(served["vaccini"], set(&["1001", "1003"]), "{served:?}");
    assert_eq!(served["triage"], set(&["1002", "1003"]), "{served:?}");
    // The English callers (DID 102, the last 5): 1003 is the only qualified
    // English speaker; 1004 speaks English but has vaccini 3 < 5.
    let english: HashSet<String> = answered[40..].iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(english, set(&["1003"]));
    let m = node.metrics();
    assert_eq!(
        crate::common::metric_in(&m, "centralino_routing_groups"),
        3.0,
        "two plain groups and the English one: {m}"
    );
}
