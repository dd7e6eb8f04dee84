//! `centralino check-config FILE`: every problem with its key path.

use std::process::Command;

use crate::common::Scratch;

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_default_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/centralino.toml");
    let (code, stdout, _) = check(&path);
    assert_eq!(code, 0);
    assert!(stdout.contains("20 operator(s)"), "{stdout}");
}

#[test]
fn every_problem_is_listed_with_its_key_path() {
    let scratch = Scratch::new("checkconfig");
    let path = scratch.path("bad.toml");
    std::fs::write(
        &path,
        r#"
[sip]
listen = ["127.0.0.1:99999"]
digest_algorithms = ["SHA-1"]
[[tenants]]
name = "demo"
[[queues]]
name = "info"
tenant = "demo"
max_wait_seconds = 0
exit_status = 200
[[agents]]
username = "1001"
tenant = "nobody"
password = "x"
queues = ["sales"]
"#,
    )
    .unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 1, "{stderr}");
    for path in [
        "sip.listen[0]",
        "sip.digest_algorithms[0]",
        "queues[0].max_wait_seconds",
        "queues[0].exit_status",
        "agents[0].tenant",
        "agents[0].queues[0]",
    ] {
        assert!(stderr.contains(path), "{path} missing:\n{stderr}");
    }
    assert!(stderr.contains("7 problem(s)"), "{stderr}");
}

#[test]
fn unknown_keys_are_refused() {
    let scratch = Scratch::new("checkconfig-unknown");
    let path = scratch.path("typo.toml");
    std::fs::write(
        &path,
        "[sip]\nlisten = [\"127.0.0.1:5060\"]\nring_timeout = 5\n",
    )
    .unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 1);
    assert!(stderr.contains("ring_timeout"), "{stderr}");
}

#[test]
fn flows_may_live_one_per_file_and_their_problems_name_the_file() {
    let scratch = Scratch::new("checkflows");
    let dir = scratch.path("flows");
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = scratch.path("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(prompts.join("benvenuto.wav"), crate::common::wav(&[0; 800])).unwrap();
    let main = scratch.path("centralino.toml");
    std::fs::write(
        &main,
        format!(
            "flows_dir = \"flows\"\n[media]\nprompts_dir = \"{}\"\n[[tenants]]\nname = \"asl\"\n[[queues]]\nname = \"info\"\ntenant = \"asl\"\n[[trunks]]\nname = \"t\"\ntenant = \"asl\"\npeers = [\"127.0.0.1\"]\ndids = {{ \"800\" = {{ flow = \"benvenuto\" }} }}\n",
            prompts.display()
        ),
    )
    .unwrap();
    let good = "name = \"benvenuto\"\nstart = \"ciao\"\n[nodes.ciao]\ntype = \"play\"\nprompts = [\"benvenuto\"]\nnext = \"coda\"\n[nodes.coda]\ntype = \"enqueue\"\nqueue = \"info\"\n";
    std::fs::write(dir.join("benvenuto.toml"), good).unwrap();
    let (code, stdout, stderr) = check(&main);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 flow(s)"), "{stdout}");
    // A broken file: the problem names it; a missing prompt is found too.
    std::fs::write(
        dir.join("benvenuto.toml"),
        good.replace("next = \"coda\"", "next = \"nowhere\""),
    )
    .unwrap();
    let (code, _, stderr) = check(&main);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("benvenuto.toml.nodes.ciao.next: unknown node \"nowhere\""),
        "{stderr}"
    );
    std::fs::write(
        dir.join("benvenuto.toml"),
        good.replace("[\"benvenuto\"]", "[\"assente\"]"),
    )
    .unwrap();
    let (code, _, stderr) = check(&main);
    assert_eq!(code, 1);
    assert!(stderr.contains("prompt \"assente\" not found"), "{stderr}");
}

/// A queue that can end a caller's call with nobody and no offer is named
/// as a warning (the file stays valid): one configured to hang up, and
/// one that calls back on the caller id without a number dialogue (a
/// withheld number ends there); one with the dialogue is not.
#[test]
fn a_queue_that_can_end_a_call_without_an_offer_is_warned_about() {
    let scratch = Scratch::new("checkconfig-deadend");
    let path = scratch.path("q.toml");
    std::fs::write(
        &path,
        r#"
[[tenants]]
name = "demo"
[[queues]]
name = "info"
tenant = "demo"
when_unserved = "hangup"
[[queues]]
name = "automatica"
tenant = "demo"
[[queues]]
name = "richiamate"
tenant = "demo"
callback_key = "1"
[queues.callback_number]
[[queues]]
name = "trabocco"
tenant = "demo"
when_unserved = "overflow"
overflow_queue = "richiamate"
"#,
    )
    .unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: queues[0] (info)") && stderr.contains("dead end"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: queues[1] (automatica)") && stderr.contains("withheld"),
        "{stderr}"
    );
    assert!(!stderr.contains("queues[2] (richiamate)"), "{stderr}");
    // An overflow whose queue is full too falls back to a callback on
    // the caller id: the same gap.
    assert!(
        stderr.contains("warning: queues[3] (trabocco)")
            && stderr.contains("full too")
            && stderr.contains("withheld"),
        "{stderr}"
    );
    // An overflow must name another queue of the firm.
    std::fs::write(
        &path,
        "[[tenants]]\nname = \"demo\"\n[[tenants]]\nname = \"altra\"\n[[queues]]\nname = \"info\"\ntenant = \"demo\"\nwhen_unserved = \"overflow\"\noverflow_queue = \"fuori\"\n[[queues]]\nname = \"fuori\"\ntenant = \"altra\"\nwhen_unserved = \"overflow\"\n",
    )
    .unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("queues[0].overflow_queue"), "{stderr}");
    assert!(stderr.contains("another firm"), "{stderr}");
    assert!(
        stderr.contains("queues[1].overflow_queue: required"),
        "{stderr}"
    );
}
