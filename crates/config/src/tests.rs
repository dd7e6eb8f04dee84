//! Validation of configurations, good and bad: every problem reported
//! with its key path.

use super::*;
use centralino_types::dialplan::Refusal;

/// `toml` is refused with a problem starting with `want`.
fn refused(toml: &str, want: &str) {
    let ConfigError::Invalid(problems) = Config::from_toml(toml).unwrap_err() else {
        panic!("{want}: not an invalid configuration")
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|t| t.starts_with(want)),
        "{want}: {text:#?}"
    );
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded().unwrap();
    assert_eq!(c.agents.len(), 20);
    assert_eq!(c.agents[0].username, "1001");
    assert!(c.sip.listen.iter().all(|a| a.ip().is_loopback()));
    assert_eq!(
        c.trunks[0].dids.get("100").map(|d| d.target),
        Some(DidTarget::Queue(0))
    );
}

const TWO_TENANTS: &str = r#"
[[tenants]]
name = "asl"
[tenants.dial_plan]
allow = ["+39", "+41"]
block = ["+3989"]

[[tenants]]
name = "regione"

[[trunks]]
name = "sbc-asl"
tenant = "asl"
peers = ["192.0.2.10"]
dids = { "100" = "q1" }

[[trunks]]
name = "sbc-regione"
tenant = "regione"
peers = ["192.0.2.10"]
dids = { "200" = "q2" }

[[queues]]
name = "q1"
tenant = "asl"

[[queues]]
name = "q2"
tenant = "regione"
"#;

#[test]
fn each_tenant_has_a_dial_plan_the_italian_one_by_default() {
    let c = Config::from_toml(TWO_TENANTS).unwrap();
    assert_eq!(c.dial_plans.len(), 2);
    assert_eq!(c.dial_plans[0].allow, ["+39", "+41"]);
    // A firm's own blocks add to Italy's, never replace them.
    assert_eq!(
        c.dial_plans[0].block,
        ["+3900", "+391", "+394", "+3970", "+3989"]
    );
    let widened = c.dial_plans[0].clone();
    for (number, want) in [
        // `+39 00…`: dialled abroad (Sierra Leone) by a carrier that
        // reads `+39` back as a national number.
        ("+390023276123456", Err(Refusal::Blocked)),
        ("+39144123456", Err(Refusal::Blocked)),
        ("+39166123456", Err(Refusal::Blocked)),
        ("+39899123456", Err(Refusal::Blocked)),
        ("+39061234567", Ok("+39061234567".to_owned())),
        ("+41441234567", Ok("+41441234567".to_owned())),
    ] {
        assert_eq!(widened.check(number), want, "{number}");
    }
    let extra = Config::from_toml(
        &TWO_TENANTS.replace(r#"block = ["+3989"]"#, r#"block = ["+3989", "+4190"]"#),
    )
    .unwrap();
    assert_eq!(
        extra.dial_plans[0].block.last().map(String::as_str),
        Some("+4190")
    );
    assert_eq!(
        extra.dial_plans[0].check("+41901234567"),
        Err(Refusal::Blocked)
    );
    assert_eq!(c.dial_plans[1], DialPlan::italy());
    assert!(Config::embedded().unwrap().dial_plans[0] == DialPlan::italy());
    refused(
        &TWO_TENANTS.replace(r#"allow = ["+39", "+41"]"#, r#"allow = ["39"]"#),
        "tenants[0].dial_plan.allow[0]: an E.164 prefix",
    );
    refused(
        &TWO_TENANTS.replace(r#"allow = ["+39", "+41"]"#, "allow = []"),
        "tenants[0].dial_plan.allow: allows nothing",
    );
    refused(
        &TWO_TENANTS.replace(r#"block = ["+3989"]"#, r#"country_code = "039""#),
        "tenants[0].dial_plan.country_code",
    );
}

#[test]
fn a_tenant_that_refuses_md5_keeps_no_md5_secret_for_its_operators() {
    let toml = r#"
[[tenants]]
name = "asl"
digest_algorithms = ["SHA-256"]

[[tenants]]
name = "firm"

[[queues]]
name = "q1"
tenant = "asl"

[[agents]]
username = "1001"
tenant = "asl"
password = "secret-1001"
queues = ["q1"]

[[agents]]
username = "2001"
tenant = "firm"
password = "secret-2001"
"#;
    let c = Config::from_toml(toml).unwrap();
    assert!(c.agents[0].credentials.ha1_md5.is_none());
    assert!(c.agents[0].credentials.ha1_sha256.is_some());
    assert!(
        c.agents[1].credentials.ha1_md5.is_some(),
        "other tenants keep it"
    );
    assert_eq!(c.registrar.md5_user_agents, ["baresip"]);
    refused(
        &toml.replace(
            r#"password = "secret-1001""#,
            r#"ha1_md5 = "0123456789abcdef0123456789abcdef""#,
        ),
        "agents[0]: has no secret for an algorithm its tenant's digest_algorithms allows",
    );
    refused(
        &toml.replace(r#"["SHA-256"]"#, r#"["SHA-256", "SHA-256"]"#),
        "tenants[0].digest_algorithms[1]: SHA-256 listed twice",
    );
    refused(
        &format!("[sip]\ndigest_algorithms = [\"MD5\"]\n{toml}"),
        "tenants[0].digest_algorithms: none of them is in sip.digest_algorithms",
    );
    refused(
        &format!("[sip]\ndigest_md5_user_agents = [\"\"]\n{toml}"),
        "sip.digest_md5_user_agents[0]",
    );
}

#[test]
fn two_trunks_behind_one_address_must_not_share_a_did() {
    // Two tenants behind one carrier SBC: told apart by DID.
    assert!(Config::from_toml(TWO_TENANTS).is_ok());
    refused(
        &TWO_TENANTS.replace(r#""200" = "q2""#, r#""100" = "q2""#),
        "trunks[1].dids.\"100\": trunks \"sbc-asl\" and \"sbc-regione\" share a peer address",
    );
}

#[test]
fn an_ivr_transfer_to_a_number_the_dial_plan_refuses_is_an_error() {
    let toml = format!(
        "{}\n{}",
        TWO_TENANTS.replace(r#""200" = "q2""#, r#""200" = { flow = "menu" }"#),
        r#"
[[flows]]
name = "menu"
start = "out"
[flows.nodes.out]
type = "transfer"
number = "+39899123456"
on_fail = "bye"
[flows.nodes.bye]
type = "hangup"
"#
    );
    refused(
        &toml,
        "flows.menu.nodes.out.number: tenant \"regione\"'s dial plan refuses it",
    );
    assert!(Config::from_toml(&toml.replace("+39899123456", "+390612345678")).is_ok());
}

/// A flow puts a trunk's callers, and their callbacks, only in queues of
/// the trunk's tenant, as a DID naming a queue does; a flow no trunk of
/// another tenant reaches may use that tenant's queues.
#[test]
fn a_flow_queues_a_trunks_callers_only_in_its_tenants_queues() {
    let flow = |node: &str| {
        format!(
            "{}\n[[flows]]\nname = \"menu\"\nstart = \"go\"\n[flows.nodes.go]\n{node}\n",
            TWO_TENANTS.replace(r#""200" = "q2""#, r#""200" = { flow = "menu" }"#),
        )
    };
    let enqueue = |q: &str| flow(&format!("type = \"enqueue\"\nqueue = \"{q}\""));
    assert!(Config::from_toml(&enqueue("q2")).is_ok());
    refused(
        &enqueue("q1"),
        "flows.menu.nodes.go.queue: queue \"q1\" belongs to tenant \"asl\", and trunk \"sbc-regione\" of tenant \"regione\" reaches this flow",
    );
    let callback = |q: &str| {
        flow(&format!(
            "type = \"callback\"\nprompts = [\"menu1\"]\nqueue = \"{q}\"\nconfirm_prompts = [\"menu2\"]\non_fail = \"bye\"\n[flows.nodes.bye]\ntype = \"hangup\""
        ))
    };
    assert!(Config::from_toml(&callback("q2")).is_ok());
    refused(
        &callback("q1"),
        "flows.menu.nodes.go.queue: queue \"q1\" belongs to tenant \"asl\"",
    );
    // A condition on another firm's queue figures, likewise.
    let condition = |q: &str| {
        flow(&format!(
            "type = \"condition\"\nqueue = \"{q}\"\nstaffed_at_least = 1\nthen = \"in\"\nelse = \"in\"\n[flows.nodes.in]\ntype = \"enqueue\"\nqueue = \"q2\""
        ))
    };
    assert!(Config::from_toml(&condition("q2")).is_ok());
    refused(
        &condition("q1"),
        "flows.menu.nodes.go.queue: queue \"q1\" belongs to tenant \"asl\"",
    );
    // Reached by asl's trunk too, regione's queue is refused for asl.
    let both = enqueue("q2").replace(r#""100" = "q1""#, r#""100" = { flow = "menu" }"#);
    refused(
        &both,
        "flows.menu.nodes.go.queue: queue \"q2\" belongs to tenant \"regione\", and trunk \"sbc-asl\" of tenant \"asl\"",
    );
    // Said once however many of the trunk's DIDs reach the flow.
    let twice = enqueue("q1").replace(
        r#""200" = { flow"#,
        r#""201" = { flow = "menu" }, "200" = { flow"#,
    );
    let e = Config::from_toml(&twice).unwrap_err().to_string();
    assert_eq!(e.matches("reaches this flow").count(), 1, "{e}");
    // A flow that does not compile is reported for itself, and no other
    // flow is checked in its place (a DID's flow index counts it).
    let broken = TWO_TENANTS
        .replace(r#""100" = "q1""#, r#""100" = { flow = "menu" }"#)
        .replace(r#""200" = "q2""#, r#""200" = { flow = "rotto" }"#)
        + "[[flows]]\nname = \"rotto\"\nstart = \"go\"\n[flows.nodes.go]\ntype = \"enqueue\"\nqueue = \"nessuna\"\n"
        + "[[flows]]\nname = \"menu\"\nstart = \"go\"\n[flows.nodes.go]\ntype = \"enqueue\"\nqueue = \"q1\"\n";
    let e = Config::from_toml(&broken).unwrap_err().to_string();
    assert!(e.contains("nessuna"), "{e}");
    assert!(!e.contains("reaches this flow"), "{e}");
}

#[test]
fn deep_nesting_is_refused_before_the_parser_recurses() {
    let deep = format!("x = {}1{}\n", "[".repeat(5000), "]".repeat(5000));
    let e = Config::from_toml(&deep).unwrap_err();
    assert!(e.to_string().contains("nested more than 32 deep"), "{e}");
    // Brackets in strings and comments are text.
    let text = format!(
        "# {}\n[sip]\nuser_agent = \"{}\"\n",
        "[".repeat(100),
        "{".repeat(100)
    );
    assert!(Config::from_toml(&text).is_ok());
}

#[test]
fn unknown_keys_are_errors() {
    let e = Config::from_toml("[sip]\nlisten_here = 1\n").unwrap_err();
    assert!(e.to_string().contains("listen_here"), "{e}");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = r#"
[sip]
listen = ["nope"]
t1_milliseconds = 0
[[tenants]]
name = "demo"
[[queues]]
name = "info"
tenant = "other"
ring_timeout_seconds = 0
[[trunks]]
name = "t"
tenant = "demo"
peers = ["x"]
dids = { "100" = "missing" }
[[agents]]
username = "1001"
tenant = "demo"
queues = ["info"]
"#;
    let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else {
        panic!("expected Invalid");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "sip.listen[0]",
        "sip.t1_milliseconds",
        "queues[0].tenant",
        "queues[0].ring_timeout_seconds",
        "trunks[0].peers[0]",
        "trunks[0].dids.\"100\"",
        "agents[0]",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
}

const SKILLED: &str = r#"
[[tenants]]
name = "asl1"
[[tenants]]
name = "asl2"
[[queues]]
name = "vaccini"
tenant = "asl1"
strategy = "most_proficient"
requirements = "vaccini >= 5 && lang == \"it\""
fragile_max_wait_seconds = 120
[[queues.overflow]]
after_seconds = 30
requirements = "vaccini >= 2"
[[queues.overflow]]
after_seconds = 90
requirements = "vaccini"
tenants = ["asl2"]
[[queues]]
name = "triage"
tenant = "asl1"
strategy = "ring_all"
ring_all_width = 2
requirements = "triage"
weight = 2.0
[[trunks]]
name = "t"
tenant = "asl1"
peers = ["127.0.0.1"]
dids = { "100" = "vaccini", "101" = { queue = "vaccini", requirements = "lang == \"en\"", priority = 3, fragile = true } }
[[agents]]
username = "1001"
password = "x"
tenant = "asl1"
site = "roma"
skills = { vaccini = 7, triage = 3 }
languages = ["it", "en"]
[[agents]]
username = "2001"
password = "x"
tenant = "asl2"
skills = { vaccini = 9 }
languages = ["it"]
"#;

#[test]
fn skills_queues_rings_and_dids_load() {
    let c = Config::from_toml(SKILLED).unwrap();
    let q = &c.queues[0].routing;
    assert_eq!(q.strategy, Strategy::MostProficient);
    assert_eq!(q.rings.len(), 2);
    assert_eq!(q.rings[1].tenants, vec![1]);
    assert_eq!(q.fragile_max_wait, Some(Duration::from_secs(120)));
    assert_eq!(c.queues[1].routing.strategy, Strategy::RingAll(2));
    let did = &c.trunks[0].dids["101"];
    assert_eq!(
        (did.target, did.spec.priority, did.spec.fragile),
        (DidTarget::Queue(0), 3, true)
    );
    assert!(did.spec.requirement.is_some());
    let a = &c.agents[0].attributes;
    assert!(q.requirement.matches(a));
    // The expression alone admits 2001 too; the router restricts ring 0
    // to the queue's tenant and ring 2 admits asl2 by agreement.
    assert!(q.requirement.matches(&c.agents[1].attributes));
    assert_eq!(c.agents[1].tenant, TenantId(1));
}

#[test]
fn routing_errors_name_their_key() {
    let bad = SKILLED
        .replace("vaccini >= 5 &&", "vacini >= 5 &&")
        .replace("strategy = \"most_proficient\"", "strategy = \"fastest\"")
        .replace("after_seconds = 90", "after_seconds = 20")
        .replace("tenants = [\"asl2\"]", "tenants = [\"asl9\"]")
        .replace("ring_all_width = 2", "ring_all_width = 40")
        .replace("weight = 2.0", "weight = 0.0")
        .replace("priority = 3", "priority = 300")
        .replace(
            "skills = { vaccini = 9 }",
            "skills = { vaccini = 11, lang = 2 }",
        )
        .replace(
            "fragile_max_wait_seconds = 120",
            "fragile_max_wait_seconds = 10",
        )
        .replace("languages = [\"it\"]\n", "languages = [\"i t\"]\n");
    let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
        panic!("expected Invalid");
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for want in [
        "queues[0].requirements: at byte 0: unknown skill \"vacini\"",
        "queues[0].strategy: unknown strategy \"fastest\"",
        "queues[0].overflow[1].after_seconds",
        "queues[0].overflow[1].tenants[0]: unknown tenant \"asl9\"",
        "queues[0].fragile_max_wait_seconds",
        "queues[1].ring_all_width",
        "queues[1].weight",
        "trunks[0].dids.\"101\".priority",
        "agents[1].skills.vaccini: level must be in 1..=10",
        "agents[1].skills.lang",
        "agents[1].languages[0]",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want} missing from {text:#?}"
        );
    }
}

#[test]
fn media_errors_name_their_key() {
    let text = r#"
[media]
port_min = 100
port_max = 50
advertise_address = "public"
codecs = ["PCMU", "G729", "PCMU"]
latch = "sometimes"
threads = 1000
[[tenants]]
name = "demo"
[[queues]]
name = "info"
tenant = "demo"
announce_seconds = 3
record = true
"#;
    let ConfigError::Invalid(problems) = Config::from_toml(text).unwrap_err() else {
        panic!("expected Invalid");
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for want in [
        "media.port_min",
        "media.advertise_address: not an IP address",
        "media.codecs[1]: unsupported codec \"G729\"",
        "media.codecs[2]: listed twice",
        "media.latch: unknown latch mode",
        "media.threads",
        "queues[0].announce_seconds",
        "queues[0].record: needs media.recordings_dir",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want} missing from {text:#?}"
        );
    }
    let ok = Config::from_toml(
            "[media]\nrecordings_dir = \"/tmp/r\"\ncodecs = [\"pcmu\"]\nlatch = \"first_packet\"\ninactivity_timeout_seconds = 0\n[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\nrecord = true\nannounce_seconds = 45\n",
        )
        .unwrap();
    assert_eq!(ok.media.codecs, [0]);
    assert_eq!(ok.media.latch, LatchMode::FirstPacket);
    assert_eq!(ok.media.inactivity_timeout, None);
    assert!(ok.queues[0].record);
    assert_eq!(ok.queues[0].announce_every, Some(Duration::from_secs(45)));
}

#[test]
fn operator_scripts_are_checked() {
    let base =
        "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\nscript = \"S\"\n";
    let good = format!(
        "{base}[[scripts]]\nname = \"S\"\nstart = \"a\"\n[scripts.questions.a]\ntext = \"Prima dose?\"\nanswers = {{ \"si\" = \"b\", \"no\" = \"end\" }}\n[scripts.questions.b]\ntext = \"Data?\"\nkind = \"date\"\n"
    );
    let c = Config::from_toml(&good).unwrap();
    assert_eq!(c.queues[0].script, Some(0));
    assert_eq!(c.scripts[0].questions["a"].kind, QuestionKind::Choice);
    assert_eq!(c.scripts[0].questions["b"].next, "end");
    let bad = good
        .replace("\"no\" = \"end\"", "\"no\" = \"zz\"")
        .replace("kind = \"date\"", "kind = \"audio\"\nnext = \"a\"")
        .replace("script = \"S\"", "script = \"T\"");
    let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
        panic!()
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for want in [
        "scripts[0].questions.a.answers.\"no\": unknown question \"zz\"",
        "scripts[0].questions.b.kind: unknown kind \"audio\"",
        "scripts[0].questions.a: the script loops back",
        "queues[0].script: unknown script \"T\"",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want} missing from {text:#?}"
        );
    }
    // A firm's own script: its queues may use it, another firm's may
    // not, and its firm must exist.
    let owned = good.replace("name = \"S\"\n", "name = \"S\"\ntenant = \"d\"\n");
    let c = Config::from_toml(&owned).unwrap();
    assert_eq!(c.scripts[0].tenant.as_deref(), Some("d"));
    assert_eq!(c.queues[0].script, Some(0));
    let other = owned.replacen(
        "[[queues]]",
        "[[tenants]]\nname = \"e\"\n[[queues]]\nname = \"q2\"\ntenant = \"e\"\nscript = \"S\"\n[[queues]]",
        1,
    );
    refused(
        &other,
        "queues[0].script: script \"S\" belongs to tenant \"d\"",
    );
    // Nor another firm's campaign in the configuration.
    let campaign = owned.replacen(
        "[[queues]]",
        "[[tenants]]\nname = \"e\"\n[[queues]]\nname = \"q2\"\ntenant = \"e\"\n\n[[campaigns]]\nname = \"c\"\nqueue = \"q2\"\nmode = \"preview\"\nscript = \"S\"\n\n[[queues]]",
        1,
    );
    refused(&campaign, "campaigns[0].script");
    Config::from_toml(&campaign.replace("queue = \"q2\"\nmode", "queue = \"q\"\nmode"))
        .expect("the owning firm's campaign may use it");
    refused(
        &owned.replace("tenant = \"d\"\nstart", "tenant = \"z\"\nstart"),
        "scripts[0].tenant",
    );
}

#[test]
fn callback_hours_are_checked() {
    let base = "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\n";
    let good = format!(
        "{base}callback_hours = {{ days = [\"lun\", \"ven\"], hours = [\"08:00-18:00\"] }}\n"
    );
    let c = Config::from_toml(&good).unwrap();
    assert!(c.queues[0].callback_hours.is_some());
    // Two hours (the default promise) asked on Friday 4 December 2026 at
    // 17:30 in Rome: half an hour on Friday, then Monday 08:00-09:30.
    assert_eq!(
        c.queues[0].callback_promised_by(1_796_401_800, None),
        Some(1_796_632_200)
    );
    // A citizen who chose Monday 08:00: two hours from then.
    assert_eq!(
        c.queues[0].callback_promised_by(1_796_401_800, Some(1_796_626_800)),
        Some(1_796_634_000)
    );
    let c = Config::from_toml(&format!(
        "{base}callback_promise_minutes = 30
"
    ))
    .unwrap();
    assert_eq!(c.queues[0].callback_promised_by(100, None), Some(1900));
    let ConfigError::Invalid(problems) = Config::from_toml(&format!(
        "{base}callback_promise_minutes = 0
expected_handle_seconds = 0
"
    ))
    .unwrap_err() else {
        panic!()
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    let bad = good
        .replace("\"ven\"", "\"venerdi santo\"")
        .replace("08:00-18:00", "18:00-08:00");
    let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
        panic!()
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("queues[0].callback_hours.hours[0]")),
        "{text:?}"
    );
}

#[test]
fn whispers_and_queue_prompts_are_checked() {
    let base = "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\n";
    let good = format!(
        "{base}whisper = [\"linea-triage\"]\ncallback_whisper = [\"richiamata\", \"it/linea-triage\"]\n"
    );
    let c = Config::from_toml(&good).unwrap();
    assert_eq!(c.queues[0].whisper, ["linea-triage"]);
    assert_eq!(
        c.queues[0].callback_whisper.as_deref(),
        Some(&["richiamata".to_owned(), "it/linea-triage".to_owned()][..])
    );
    let prompts: Vec<String> = c.flow_prompts().into_iter().map(|(_, n)| n).collect();
    assert!(prompts.contains(&"richiamata".to_owned()), "{prompts:?}");
    assert_eq!(
        Config::from_toml(base).unwrap().queues[0].callback_whisper,
        None
    );
    let bad = good
        .replace(
            "\"linea-triage\"]\ncallback",
            "\"../../etc/passwd\"]\ncallback",
        )
        .replace("\"richiamata\"", "\"\"");
    let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
        panic!()
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for want in [
        "queues[0].whisper[0]: not a prompt name",
        "queues[0].callback_whisper[0]",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want}: {text:#?}"
        );
    }
}

#[test]
fn a_token_name_is_used_once() {
    // The audit log and wallboard sessions name a token by its name.
    let toml = "[[api.tokens]]\nname = \"sala\"\ntoken = \"token-0123456789abcdef\"\nrole = \"supervisor\"\n\
                [[api.tokens]]\nname = \"sala\"\ntoken = \"other-0123456789abcdef\"\nrole = \"admin\"\n";
    refused(toml, "api.tokens[1].name: used twice");
}

#[test]
fn agent_tokens_name_a_known_operator() {
    let base = "[[tenants]]\nname = \"d\"\n[[agents]]\nusername = \"1001\"\npassword = \"demo1001\"\ntenant = \"d\"\n";
    let token = |role: &str, agent: &str| {
        format!(
            "{base}[[api.tokens]]\nname = \"t\"\ntoken = \"token-0123456789abcdef\"\nrole = \"{role}\"\n{agent}"
        )
    };
    let c = Config::from_toml(&token("supervisor", "tenant = \"d\"\n")).unwrap();
    assert_eq!(
        (c.api_tokens[0].role, c.api_tokens[0].tenant.as_deref()),
        (Role::Supervisor, Some("d"))
    );
    let c = Config::from_toml(&token("agent", "agent = \"1001\"\n")).unwrap();
    assert_eq!(c.api_tokens[0].role, Role::Agent);
    assert_eq!(c.api_tokens[0].agent.as_deref(), Some("1001"));
    for (toml, want) in [
        (
            token("agent", ""),
            "api.tokens[0].agent: an agent token names its operator",
        ),
        (
            token("agent", "agent = \"2002\"\n"),
            "api.tokens[0].agent: unknown operator \"2002\"",
        ),
        (
            token("callbacks", "agent = \"1001\"\n"),
            "api.tokens[0].agent: only for role \"agent\"",
        ),
        (
            token("boss", ""),
            "api.tokens[0].role: unknown role \"boss\"",
        ),
        (
            token("supervisor", "tenant = \"nessuno\"\n"),
            "api.tokens[0].tenant: unknown tenant \"nessuno\"",
        ),
        (
            token("agent", "agent = \"1001\"\ntenant = \"d\"\n"),
            "api.tokens[0].tenant: only for roles \"supervisor\" and \"callbacks\"",
        ),
        (
            token("callbacks", "tenant = \"nessuno\"\n"),
            "api.tokens[0].tenant: unknown tenant \"nessuno\"",
        ),
    ] {
        refused(&toml, want);
    }
}

#[test]
fn trunk_options_need_an_outbound_side_and_a_sane_interval() {
    let base = "[[tenants]]\nname = \"d\"\n[[trunks]]\nname = \"t\"\ntenant = \"d\"\npeers = [\"192.0.2.10\"]\n";
    let c = Config::from_toml(&format!(
        "{base}outbound = \"192.0.2.10:5060\"\noptions_seconds = 30\n"
    ))
    .unwrap();
    assert_eq!(c.trunks[0].options, Some(Duration::from_secs(30)));
    for (extra, want) in [
        (
            "outbound = \"192.0.2.10:5060\"\noptions_seconds = 2\n",
            "trunks[0].options_seconds: must be 0 (off) or in 5..=3600",
        ),
        (
            "options_seconds = 30\n",
            "trunks[0].options_seconds: only for a trunk with outbound",
        ),
    ] {
        refused(&format!("{base}{extra}"), want);
    }
}

#[test]
fn http_limits_are_bounded() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(
        c.http_limits,
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    );
    let c = Config::from_toml(
        "[http]\nheader_timeout_seconds = 300\nidle_timeout_seconds = 1\nmax_connections = 1\n",
    )
    .unwrap();
    assert_eq!(c.http_limits.header_timeout, Duration::from_secs(300));
    assert_eq!(c.http_limits.idle_timeout, Duration::from_secs(1));
    assert_eq!(c.http_limits.max_connections, 1);
    for (toml, want) in [
        (
            "[http]\nheader_timeout_seconds = 0\n",
            "http.header_timeout_seconds: must be in 1..=300",
        ),
        (
            "[http]\nheader_timeout_seconds = 301\n",
            "http.header_timeout_seconds: must be in 1..=300",
        ),
        (
            "[http]\nidle_timeout_seconds = 0\n",
            "http.idle_timeout_seconds: must be in 1..=3600",
        ),
        (
            "[http]\nmax_connections = 0\n",
            "http.max_connections: must be in 1..=100000",
        ),
        (
            "[http]\nmax_connections = 100001\n",
            "http.max_connections: must be in 1..=100000",
        ),
    ] {
        refused(toml, want);
    }
}

#[test]
fn the_metrics_token_file_must_be_readable() {
    refused(
        &DEFAULT_TOML.replacen(
            "[http]\n",
            "[http]\nmetrics_token_file = \"/nonexistent/metrics.token\"\n",
            1,
        ),
        "http.metrics_token_file",
    );
    let c = Config::from_toml(&DEFAULT_TOML.replacen(
        "[http]\n",
        "[http]\nmetrics_token_file = \"/dev/null\"\n",
        1,
    ))
    .unwrap();
    assert_eq!(
        c.http_web.metrics_token_file,
        Some(PathBuf::from("/dev/null"))
    );
}

#[test]
fn tls_settings_come_together_and_name_readable_files() {
    // Any readable file will do for the check (contents are the
    // driver's business, at start).
    let file = env!("CARGO_MANIFEST_PATH");
    let sip = format!(
        "[sip]\ntransports = [\"udp\", \"tls\"]\ntls_listen = [\"127.0.0.1:5061\"]\ntls_cert_file = {file:?}\ntls_key_file = {file:?}\n"
    );
    let trunk = "[[tenants]]\nname = \"d\"\n[[trunks]]\nname = \"t\"\ntenant = \"d\"\npeers = [\"192.0.2.10\"]\n";
    let c = Config::from_toml(&format!(
        "{sip}{trunk}tls_client_ca_file = {file:?}\ntls_peer_names = [\"SBC.carrier.example\"]\n"
    ))
    .unwrap();
    let tls = c.sip.tls.expect("tls");
    assert_eq!(tls.listen, vec!["127.0.0.1:5061".parse().unwrap()]);
    let cc = c.trunks[0].client_cert.clone().expect("mtls");
    assert_eq!(cc.peer_names, vec!["sbc.carrier.example".to_owned()]);
    let c = Config::from_toml(&format!(
            "{sip}{trunk}outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\noutbound_tls_name = \"SBC.carrier.example\"\noutbound_tls_cert_file = {file:?}\noutbound_tls_key_file = {file:?}\n"
        ))
        .unwrap();
    let out = c.trunks[0].outbound_tls.clone().expect("outbound tls");
    assert_eq!(out.name, "sbc.carrier.example");
    assert_eq!(out.ca_file, None);
    assert!(out.client_cert.is_some());
    for (extra, want) in [
        (
            "outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\n".to_owned(),
            "trunks[0].outbound_tls_name: required",
        ),
        (
            "outbound_transport = \"tls\"\noutbound_tls_name = \"a.example\"\n".to_owned(),
            "trunks[0].outbound_transport: only for a trunk with outbound",
        ),
        (
            "outbound = \"192.0.2.10:5061\"\noutbound_transport = \"sctp\"\n".to_owned(),
            "trunks[0].outbound_transport: unknown transport",
        ),
        (
            "outbound = \"192.0.2.10:5061\"\noutbound_tls_name = \"a.example\"\n".to_owned(),
            "trunks[0].outbound_tls_name: only with outbound_transport",
        ),
        (
            format!(
                "outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\noutbound_tls_name = \"a.example\"\noutbound_tls_cert_file = {file:?}\n"
            ),
            "trunks[0].outbound_tls_key_file: required",
        ),
    ] {
        refused(&format!("{sip}{trunk}{extra}"), want);
    }
    refused(
        &format!(
            "{trunk}outbound = \"192.0.2.10:5061\"\noutbound_transport = \"tls\"\noutbound_tls_name = \"a.example\"\n"
        ),
        "trunks[0].outbound_transport: needs the TLS listener",
    );
    for (toml, want) in [
        (
            "[sip]\ntransports = [\"tls\"]\n".to_owned(),
            "sip.tls_listen: needs at least one address",
        ),
        (
            "[sip]\ntransports = [\"tls\"]\n".to_owned(),
            "sip.tls_cert_file: required",
        ),
        (
            "[sip]\ntls_listen = [\"127.0.0.1:5061\"]\n".to_owned(),
            "sip.tls_listen: only with \"tls\"",
        ),
        (
            format!(
                "{sip}{trunk}tls_client_ca_file = \"/nonexistent.pem\"\ntls_peer_names = [\"a.example\"]\n"
            ),
            "trunks[0].tls_client_ca_file: cannot read",
        ),
        (
            format!("{sip}{trunk}tls_client_ca_file = {file:?}\n"),
            "trunks[0].tls_peer_names: needs at least one name",
        ),
        (
            format!("{trunk}tls_client_ca_file = {file:?}\ntls_peer_names = [\"a.example\"]\n"),
            "trunks[0].tls_peer_names: needs the TLS listener",
        ),
        (
            format!("{sip}{trunk}tls_client_ca_file = {file:?}\ntls_peer_names = [\"a b\"]\n"),
            "trunks[0].tls_peer_names[0]: not a DNS name",
        ),
    ] {
        refused(&toml, want);
    }
}

#[test]
fn trunk_credentials_come_together_and_stay_out_of_debug() {
    let trunk = "[[tenants]]\nname = \"d\"\n[[trunks]]\nname = \"t\"\ntenant = \"d\"\npeers = [\"192.0.2.10\"]\n";
    let c = Config::from_toml(&format!(
        "{trunk}outbound = \"192.0.2.10:5060\"\nauth_username = \"u\"\nauth_password = \"sekrit\"\n"
    ))
    .unwrap();
    let auth = c.trunks[0].auth.clone().expect("auth");
    assert_eq!(auth.username, "u");
    assert!(!format!("{:?}", c.trunks[0]).contains("sekrit"));
    for (extra, want) in [
        (
            "outbound = \"192.0.2.10:5060\"\nauth_username = \"u\"\n",
            "trunks[0].auth_password: required with auth_username",
        ),
        (
            "auth_username = \"u\"\nauth_password = \"p\"\n",
            "trunks[0].auth_username: only for a trunk with outbound",
        ),
        (
            "outbound = \"192.0.2.10:5060\"\nauth_username = \"u\\\"\"\nauth_password = \"p\"\n",
            "trunks[0].auth_username: 1-256 characters",
        ),
    ] {
        refused(&format!("{trunk}{extra}"), want);
    }
}

#[test]
fn desk_sessions_are_bounded() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(
        c.api_sessions,
        ApiSessions {
            hours: 12,
            key_file: None
        }
    );
    let c = Config::from_toml(
        "[api]\nsession_hours = 0\nsession_key_file = \"/etc/centralino/session.key\"\n",
    )
    .unwrap();
    assert_eq!(c.api_sessions.hours, 0);
    for (toml, want) in [
        (
            "[api]\nsession_hours = 25\n",
            "api.session_hours: must be in 0..=24",
        ),
        (
            "[api]\nsession_key_file = \"\"\n",
            "api.session_key_file: must not be empty",
        ),
    ] {
        refused(toml, want);
    }
}

#[test]
fn the_audit_key_file_is_a_path_or_the_node_s_own() {
    assert_eq!(Config::from_toml("").unwrap().audit_key_file, None);
    let c = Config::from_toml("[store]\naudit_key_file = \"/etc/centralino/audit.key\"\n").unwrap();
    assert_eq!(
        c.audit_key_file,
        Some(PathBuf::from("/etc/centralino/audit.key"))
    );
    refused(
        "[store]\naudit_key_file = \"\"\n",
        "store.audit_key_file: must not be empty",
    );
}

#[test]
fn the_callback_number_dialogue_is_checked() {
    let base = "[[tenants]]\nname = \"d\"\n[[queues]]\nname = \"q\"\ntenant = \"d\"\n";
    let good = format!(
        "{base}callback_key = \"1\"\n[queues.callback_number]\nread_prompts = [\"il-numero\"]\nenter_prompts = [\"inserisca\"]\n"
    );
    let c = Config::from_toml(&good).unwrap();
    let n = c.queues[0].callback_number.as_ref().unwrap();
    assert_eq!(n.timeout, Duration::from_secs(10));
    assert_eq!(n.enter_prompts, ["inserisca"]);
    let bad = good
        .replace("callback_key = \"1\"\n", "")
        .replace("[\"inserisca\"]", "[\"../x\"]\ntimeout_seconds = 0");
    let ConfigError::Invalid(problems) = Config::from_toml(&bad).unwrap_err() else {
        panic!()
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for want in [
        "queues[0].callback_number: needs callback_key",
        "queues[0].callback_number.timeout_seconds: must be in 1..=60",
        "queues[0].callback_number.enter_prompts[0]: not a prompt name",
    ] {
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want}: {text:#?}"
        );
    }
}

#[test]
fn the_sms_hook_url_is_checked() {
    let hook = |lines: &str| format!("[notifications]\n{lines}\n");
    let c = Config::from_toml(&hook("url = \"https://sms.example.it/v1/send\"")).unwrap();
    let n = c.notifications.unwrap();
    assert_eq!(
        (n.addr.as_str(), n.path.as_str()),
        ("sms.example.it:443", "/v1/send")
    );
    assert_eq!(n.tls.unwrap().host, "sms.example.it");
    let c = Config::from_toml(&hook(
        "url = \"https://[::1]:8443/sms\"\nca_file = \"/etc/centralino/ca.pem\"",
    ))
    .unwrap();
    let n = c.notifications.unwrap();
    let tls = n.tls.unwrap();
    assert_eq!((n.addr.as_str(), tls.host.as_str()), ("[::1]:8443", "::1"));
    assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/centralino/ca.pem")));
    let c = Config::from_toml(&hook("url = \"http://10.0.0.5:8080/sms\"")).unwrap();
    assert!(c.notifications.unwrap().tls.is_none());
    for (lines, want) in [
        (
            "url = \"ftp://x/y\"",
            "notifications.url: https://HOST[:PORT]/PATH",
        ),
        (
            "url = \"https://u:p@x/y\"",
            "notifications.url: https://HOST[:PORT]/PATH",
        ),
        ("url = \"https://x:99999/y\"", "notifications.url"),
        (
            "url = \"http://x:80/y\"\nca_file = \"ca.pem\"",
            "notifications.ca_file: only with an https:// url",
        ),
    ] {
        let ConfigError::Invalid(problems) = Config::from_toml(&hook(lines)).unwrap_err() else {
            panic!("{lines}")
        };
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.starts_with(want)),
            "{want}: {text:#?}"
        );
    }
}

#[test]
fn the_drain_limit_is_bounded() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.sip.drain, Duration::from_secs(60));
    let c = Config::from_toml("[sip]\ndrain_seconds = 0\n").unwrap();
    assert_eq!(c.sip.drain, Duration::ZERO);
    let ConfigError::Invalid(problems) =
        Config::from_toml("[sip]\ndrain_seconds = 7200\n").unwrap_err()
    else {
        panic!()
    };
    assert!(problems[0].to_string().starts_with("sip.drain_seconds"));
}

#[test]
fn brute_force_limits_are_read_and_checked() {
    let c =
        Config::from_toml("[registrar]\nban_after_user_failures = 3\nban_seconds = 600\n").unwrap();
    assert_eq!(c.registrar.throttle.per_user, 3);
    assert_eq!(c.registrar.throttle.per_address, 20);
    assert_eq!(c.registrar.throttle.ban, Duration::from_secs(600));
    let ConfigError::Invalid(problems) =
        Config::from_toml("[registrar]\nban_seconds = 0\n").unwrap_err()
    else {
        panic!()
    };
    assert!(problems[0].to_string().starts_with("registrar.ban_seconds"));
    assert_eq!(Config::from_toml("").unwrap().qualify, None);
    let c = Config::from_toml("[registrar]\nqualify_seconds = 30\n").unwrap();
    assert_eq!(c.qualify, Some(Duration::from_secs(30)));
    let ConfigError::Invalid(problems) =
        Config::from_toml("[registrar]\nqualify_seconds = 2\n").unwrap_err()
    else {
        panic!()
    };
    assert!(
        problems[0]
            .to_string()
            .starts_with("registrar.qualify_seconds")
    );
}

#[test]
fn campaigns_are_checked_like_the_api_checks_them() {
    let base = TWO_TENANTS.replace(
        "dids = { \"100\" = \"q1\" }",
        "dids = { \"100\" = \"q1\" }\noutbound = \"192.0.2.10:5060\"",
    );
    let good = format!(
        "{base}\n[outbound]\nmax_attempts_per_citizen_per_day = 2\n\n[[campaigns]]\nname = \"richiami-fragili\"\nqueue = \"q1\"\nmode = \"progressive\"\nfragile = true\ntrunk = \"sbc-asl\"\nwindows = {{ days = [\"lun\", \"ven\"], hours = [\"08:00-18:00\"] }}\n"
    );
    let c = Config::from_toml(&good).unwrap();
    assert_eq!(c.campaigns[0].tenant, "asl");
    assert_eq!(c.outbound.max_attempts_per_citizen_per_day, 2);
    // A fragile campaign that could abandon, an unknown queue, a trunk of
    // another tenant (or that cannot dial), a duplicate name.
    refused(
        &good.replace("mode = \"progressive\"", "mode = \"predictive\""),
        "campaigns[0].mode",
    );
    refused(
        &good.replace("queue = \"q1\"", "queue = \"q9\""),
        "campaigns[0].queue",
    );
    refused(
        &good.replace("trunk = \"sbc-asl\"", "trunk = \"sbc-regione\""),
        "campaigns[0].trunk",
    );
    refused(
        &format!(
            "{good}\n[[campaigns]]\nname = \"richiami-fragili\"\nqueue = \"q1\"\nmode = \"preview\"\n"
        ),
        "campaigns[1].name",
    );
    // Names are per tenant: another firm's campaign may bear the same.
    let c = Config::from_toml(&format!(
        "{good}\n[[campaigns]]\nname = \"richiami-fragili\"\nqueue = \"q2\"\nmode = \"preview\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.campaigns
            .iter()
            .map(|c| (c.tenant.as_str(), c.name.as_str()))
            .collect::<Vec<_>>(),
        [("asl", "richiami-fragili"), ("regione", "richiami-fragili")]
    );
    refused(
        &good.replace("\"lun\"", "\"funday\""),
        "campaigns[0].windows.days[0]",
    );
    refused(
        &good.replace("per_day = 2", "per_day = 0"),
        "outbound.max_attempts_per_citizen_per_day",
    );
}

#[test]
fn a_node_joins_the_national_network_with_cluster_and_runs_alone_without() {
    assert_eq!(Config::embedded().unwrap().cluster, None);
    let base = DEFAULT_TOML;
    let c = Config::from_toml(&format!(
        "{base}\n[cluster]\nnode = \"roma-1\"\nnats_url = [\"nats://127.0.0.1:4222\", \"tls://nats.asl.example:4443\"]\ntoken_file = \"/etc/centralino/nats.token\"\nkey_file = \"/etc/centralino/network.key\"\n"
    ))
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.node, "roma-1");
    assert_eq!(cluster.nats_urls.len(), 2);
    // A server off this host: the network's key is required (a NATS
    // credential alone is not a node); on loopback it is optional.
    for urls in [
        "\"tls://nats.asl.example:4443\"",
        "[\"nats://127.0.0.1:4222\", \"nats://10.0.0.6:4222\"]",
        "\"nats://[2001:db8::5]:4222\"",
    ] {
        refused(
            &format!(
                "{base}\n[cluster]\nnode = \"roma-1\"\nnats_url = {urls}\ntoken_file = \"/etc/centralino/nats.token\"\n"
            ),
            "cluster.key_file",
        );
    }
    // A loopback server but a SIP address other hosts' nodes reach: a
    // network beyond this host all the same.
    refused(
        &format!(
            "{base}\n[cluster]\nnode = \"roma-1\"\nnats_url = \"nats://127.0.0.1:4222\"\nsip_address = \"10.0.0.1:5060\"\n"
        ),
        "cluster.key_file",
    );
    for urls in [
        "\"nats://localhost:4222\"",
        "\"nats://[::1]:4222\"",
        "\"nats://127.0.0.2:4222\"",
    ] {
        Config::from_toml(&format!(
            "{base}\n[cluster]\nnode = \"roma-1\"\nnats_url = {urls}\n"
        ))
        .unwrap_or_else(|e| panic!("{urls}: {e}"));
    }
    for (cluster, want) in [
        (
            "node = \"roma 1\"\nnats_url = \"nats://127.0.0.1:4222\"",
            "cluster.node",
        ),
        (
            "node = \"roma-1\"\nnats_url = \"http://127.0.0.1:4222\"",
            "cluster.nats_url",
        ),
        (
            "node = \"roma-1\"\nnats_url = \"nats://user:secret@127.0.0.1:4222\"",
            "cluster.nats_url",
        ),
        (
            "node = \"roma-1\"\nnats_url = [\"nats://127.0.0.1:4222\", \"nats://127.0.0.1\"]",
            "cluster.nats_url[1]",
        ),
        ("node = \"roma-1\"\nnats_url = []", "cluster.nats_url"),
    ] {
        refused(&format!("{base}\n[cluster]\n{cluster}\n"), want);
    }
    let c = Config::from_toml(&format!(
        "{base}\n[cluster]\nnode = \"roma-1\"\nnats_url = \"nats://127.0.0.1:4222\"\npassword_file = \"/etc/centralino/nats.pass\"\nsip_address = \"10.0.0.1:5060\"\nkey_file = \"/etc/centralino/network.key\"\n"
    ))
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.sip_address, Some("10.0.0.1:5060".parse().unwrap()));
    assert!(cluster.password_file.is_some());
    for (cluster, want) in [
        (
            "node = \"roma-1\"\nnats_url = \"nats://127.0.0.1:4222\"\nsip_address = \"0.0.0.0:5060\"",
            "cluster.sip_address",
        ),
        (
            "node = \"roma-1\"\nnats_url = \"nats://127.0.0.1:4222\"\ntoken_file = \"a\"\npassword_file = \"b\"",
            "cluster.password_file",
        ),
    ] {
        refused(&format!("{base}\n[cluster]\n{cluster}\n"), want);
    }
    // Callbacks that outlive the node: on the work stream, sealed with a
    // key the nodes share; "local" (the default) keeps them in the store.
    assert_eq!(cluster.durability, Durability::Local);
    let c = Config::from_toml(&format!(
        "{base}\n[cluster]\nnode = \"roma-1\"\nnats_url = \"nats://127.0.0.1:4222\"\ndurability = \"jetstream\"\nkey_file = \"/etc/centralino/work.key\"\n"
    ))
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.durability, Durability::JetStream);
    assert!(cluster.key_file.is_some());
    for (cluster, want) in [
        (
            "node = \"roma-1\"\nnats_url = \"nats://127.0.0.1:4222\"\ndurability = \"jetstream\"",
            "cluster.key_file",
        ),
        (
            "node = \"roma-1\"\nnats_url = \"nats://127.0.0.1:4222\"\ndurability = \"postgres\"",
            "cluster.durability",
        ),
    ] {
        refused(&format!("{base}\n[cluster]\n{cluster}\n"), want);
    }
    // Without a server to join, the file does not parse.
    let err = Config::from_toml(&format!("{base}\n[cluster]\nnode = \"roma-1\"\n")).unwrap_err();
    assert!(err.to_string().contains("nats_url"), "{err}");
}

/// `[[agreements]]`: names, a capacity, one per pair of firms and queue,
/// only in a national network.
#[test]
fn agreements_between_firms_are_checked() {
    let base = DEFAULT_TOML;
    let cluster = "[cluster]\nnode = \"milano-1\"\nnats_url = \"nats://127.0.0.1:4222\"\n";
    let c = Config::from_toml(&format!(
        "{base}\n{cluster}\n[[agreements]]\nfrom = \"asl-roma\"\nto = \"demo\"\nqueues = [\"info\"]\nmax_concurrent = 2\nshare = 0.2\n"
    ))
    .unwrap();
    assert_eq!(c.agreements.len(), 1);
    assert_eq!(c.engine().agreements[0].max_concurrent, Some(2));
    for (agreement, want) in [
        (
            "from = \"asl-roma\"\nto = \"demo\"",
            "agreements[0].max_concurrent",
        ),
        (
            "from = \"asl-roma\"\nto = \"demo\"\nmax_concurrent = 0",
            "agreements[0].max_concurrent",
        ),
        (
            "from = \"asl-roma\"\nto = \"demo\"\nshare = 1.5",
            "agreements[0].share",
        ),
        (
            "from = \"demo\"\nto = \"demo\"\nshare = 0.5",
            "agreements[0].to",
        ),
        (
            "from = \"asl roma\"\nto = \"demo\"\nshare = 0.5",
            "agreements[0].from",
        ),
        (
            "from = \"a\"\nto = \"demo\"\nqueues = [\"x y\"]\nshare = 0.5",
            "agreements[0].queues[0]",
        ),
    ] {
        refused(
            &format!("{base}\n{cluster}\n[[agreements]]\n{agreement}\n"),
            want,
        );
    }
    // Two agreements for the same firms and queue.
    refused(
        &format!(
            "{base}\n{cluster}\n[[agreements]]\nfrom = \"a\"\nto = \"demo\"\nshare = 0.5\n\n[[agreements]]\nfrom = \"a\"\nto = \"demo\"\nqueues = [\"info\"]\nmax_concurrent = 1\n"
        ),
        "agreements[1].queues",
    );
    // Without a network there is nobody to lend to.
    refused(
        &format!("{base}\n[[agreements]]\nfrom = \"a\"\nto = \"demo\"\nshare = 0.5\n"),
        "agreements",
    );
}

/// A reload keeps the running queues in their places: the file's order
/// does not matter, new queues come after, a removed one stays in its
/// place, retired, and nothing may name it any more.
#[test]
fn a_reload_keeps_the_queues_in_their_places_and_retires_removed_ones() {
    let base = "[sip]\nlisten = [\"127.0.0.1:5060\"]\n\n[http]\nlisten = \"127.0.0.1:8080\"\n\n[[tenants]]\nname = \"demo\"\n";
    let queue = |n: &str| format!("\n[[queues]]\nname = \"{n}\"\ntenant = \"demo\"\n");
    let running = Config::from_toml(&format!("{base}{}{}", queue("a"), queue("b"))).unwrap();
    // Written in another order, with a new one first: a and b keep 0 and 1.
    let c = Config::from_toml_seeded(
        &format!("{base}{}{}{}", queue("new"), queue("b"), queue("a")),
        &[],
        &running.seed(),
    )
    .unwrap();
    let names: Vec<&str> = c.queues.iter().map(|q| q.routing.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "new"]);
    assert!(c.queues.iter().all(|q| !q.retired));
    // a removed: its place kept, retired.
    let c =
        Config::from_toml_seeded(&format!("{base}{}", queue("b")), &[], &running.seed()).unwrap();
    let names: Vec<&str> = c.queues.iter().map(|q| q.routing.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(c.queues[0].retired && !c.queues[1].retired);
    // Nothing names a removed queue (an operator here).
    let err = Config::from_toml_seeded(
        &format!("{base}{}\n[[agents]]\nusername = \"1001\"\npassword = \"demo1001\"\ntenant = \"demo\"\nqueues = [\"a\"]\n", queue("b")),
        &[],
        &running.seed(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("agents[0].queues[0]"), "{err}");
    // A problem is named by the queue's place in the file, not its place
    // among the queues.
    let err = Config::from_toml_seeded(
        &format!(
            "{base}{}\n[[queues]]\nname = \"a\"\ntenant = \"demo\"\nstrategy = \"nope\"\n",
            queue("b")
        ),
        &[],
        &running.seed(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("queues[1].strategy"), "{err}");
}

#[test]
fn a_tenants_supervisor_phones_are_its_own_operators_accounts() {
    let toml = r#"
[[tenants]]
name = "asl"
supervisor_phones = ["1001"]

[[tenants]]
name = "firm"

[[queues]]
name = "q1"
tenant = "asl"

[[agents]]
username = "1001"
tenant = "asl"
password = "secret-1001"
queues = ["q1"]

[[agents]]
username = "2001"
tenant = "firm"
password = "secret-2001"
"#;
    let c = Config::from_toml(toml).unwrap();
    assert_eq!(c.supervisor_phones, [vec!["1001".to_owned()], vec![]]);
    refused(
        &toml.replace(r#"["1001"]"#, r#"["9999"]"#),
        "tenants[0].supervisor_phones[0]: \"9999\" is not an operator's SIP account",
    );
    refused(
        &toml.replace(r#"["1001"]"#, r#"["2001"]"#),
        "tenants[0].supervisor_phones[0]: \"2001\" belongs to another tenant",
    );
    refused(
        &toml.replace(r#"["1001"]"#, r#"["1001", "1001"]"#),
        "tenants[0].supervisor_phones[1]: listed twice",
    );
    let with = |list: &str| {
        toml.replace(
            "supervisor_phones = [\"1001\"]",
            &format!("supervisor_phones = [\"1001\"]\ntransfer_numbers = {list}"),
        )
    };
    let c = Config::from_toml(&with(r#"["+39061"]"#)).unwrap();
    assert_eq!(c.transfer_numbers, [vec!["+39061".to_owned()], vec![]]);
    refused(
        &with(r#"["061"]"#),
        "tenants[0].transfer_numbers[0]: an E.164 prefix",
    );
}

#[test]
fn the_tracing_export_is_off_by_default_and_its_endpoint_checked() {
    assert_eq!(Config::from_toml("").unwrap().tracing, None);
    let t = |lines: &str| format!("[tracing]\n{lines}\n");
    let c = Config::from_toml(&t("otlp_endpoint = \"http://127.0.0.1\"")).unwrap();
    let tr = c.tracing.unwrap();
    assert_eq!(
        (tr.addr.as_str(), tr.path.as_str(), tr.service_name.as_str()),
        ("127.0.0.1:4318", "/v1/traces", "centralino")
    );
    let c = Config::from_toml(&t(
        "otlp_endpoint = \"http://[::1]:4000/otel/\"\nservice_name = \"nodo-roma.1\"",
    ))
    .unwrap();
    let tr = c.tracing.unwrap();
    assert_eq!(
        (tr.addr.as_str(), tr.host.as_str(), tr.path.as_str()),
        ("[::1]:4000", "[::1]:4000", "/otel/v1/traces")
    );
    let c = Config::from_toml(&t("otlp_endpoint = \"http://collector:80\"")).unwrap();
    assert_eq!(c.tracing.unwrap().host, "collector", "port 80 goes unsaid");
    for (lines, want) in [
        (
            "otlp_endpoint = \"https://otel.example.it\"",
            "tracing.otlp_endpoint: http://HOST",
        ),
        ("otlp_endpoint = \"http://u:p@x\"", "tracing.otlp_endpoint"),
        ("otlp_endpoint = \"http://x:0\"", "tracing.otlp_endpoint"),
        ("otlp_endpoint = \"http://\"", "tracing.otlp_endpoint"),
        (
            "otlp_endpoint = \"http://::1:4318\"",
            "tracing.otlp_endpoint",
        ),
        ("otlp_endpoint = \"http://[::1\"", "tracing.otlp_endpoint"),
        (
            "otlp_endpoint = \"http://a]b:4318\"",
            "tracing.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"http://x\"\nservice_name = \"due parole\"",
            "tracing.service_name: 1 to 64",
        ),
        ("sampling = 1", "unknown field `sampling`"),
    ] {
        let err = Config::from_toml(&t(lines)).unwrap_err().to_string();
        assert!(err.contains(want), "{lines}: {err}");
    }
}

/// Copies of a configuration (the engine's, the API's, the loader's) share
/// the document it was read from: with 120,000 provisioned operators it is
/// about 75 MB, and three copies of it put a node over 1 GiB.
#[test]
fn copies_of_a_configuration_share_its_source_document() {
    let c = Config::from_toml("").unwrap();
    let copy = c.clone();
    assert!(std::sync::Arc::ptr_eq(&c.source, &copy.source));
}

#[test]
fn the_engine_realtime_priority_is_a_real_time_priority() {
    assert_eq!(Config::embedded().unwrap().sip.engine_realtime_priority, 0);
    for good in [1u8, 50, 99] {
        let c = Config::from_toml(&format!("[sip]\nengine_realtime_priority = {good}\n")).unwrap();
        assert_eq!(c.sip.engine_realtime_priority, good);
    }
    for bad in ["100", "256", "4294967295"] {
        refused(
            &format!("[sip]\nengine_realtime_priority = {bad}\n"),
            "sip.engine_realtime_priority: must be in 0..=99 (0 = the normal scheduler)",
        );
    }
    // Not a number of the kind at all: refused by name too.
    let err = Config::from_toml("[sip]\nengine_realtime_priority = -1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("engine_realtime_priority"), "{err}");
}

#[test]
fn the_overload_lag_is_bounded() {
    let c = Config::embedded().unwrap();
    assert_eq!(c.sip.overload_lag, Duration::from_millis(50));
    for good in [10u64, 400, 500] {
        let c = Config::from_toml(&format!("[sip]\noverload_lag_milliseconds = {good}\n")).unwrap();
        assert_eq!(c.sip.overload_lag, Duration::from_millis(good));
    }
    for bad in ["0", "9", "501"] {
        refused(
            &format!("[sip]\noverload_lag_milliseconds = {bad}\n"),
            "sip.overload_lag_milliseconds: must be in 10..=500 (new calls are refused past this lag; past 500 ms peers retransmit first)",
        );
    }
}

#[test]
fn the_engine_nice_value_is_a_nice_value() {
    assert_eq!(Config::embedded().unwrap().sip.engine_nice, 0);
    let c = Config::from_toml("[sip]\nengine_nice = -10\n").unwrap();
    assert_eq!(c.sip.engine_nice, -10);
    assert_eq!(
        Config::from_toml("[sip]\nengine_nice = -20\n")
            .unwrap()
            .sip
            .engine_nice,
        -20
    );
    // Above the process's own it would give the engine less than the rest.
    for bad in ["-21", "1", "19", "-100000"] {
        refused(
            &format!("[sip]\nengine_nice = {bad}\n"),
            "sip.engine_nice: must be in -20..=0 (0 = the process's own priority)",
        );
    }
}
