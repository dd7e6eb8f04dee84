//! `centralino simulate`: the routing core in virtual time, as a user runs it.

use std::process::Command;

use crate::common::Scratch;

#[test]
fn json_report_per_queue() {
    let scratch = Scratch::new("simulate");
    let conf = scratch.path("sim.toml");
    let mut text = String::from(
        "[[tenants]]\nname = \"asl\"\n[[queues]]\nname = \"vaccini\"\ntenant = \"asl\"\n[[queues]]\nname = \"triage\"\ntenant = \"asl\"\n",
    );
    for i in 0..12 {
        let q = if i % 2 == 0 {
            "\"vaccini\""
        } else {
            "\"vaccini\", \"triage\""
        };
        text.push_str(&format!(
            "[[agents]]\nusername = \"op{i}\"\npassword = \"x\"\ntenant = \"asl\"\nqueues = [{q}]\n"
        ));
    }
    std::fs::write(&conf, text).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_centralino"))
            .args(["simulate", "--config", crate::common::path_str(&conf)])
            .args(["--calls", "4000", "--rate", "0.05", "--aht", "180"])
            .args(["--patience", "120", "--seed", "3", "--json"])
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(json.starts_with("{\"queues\": {\"vaccini\": {"), "{json}");
    for key in [
        "offered",
        "answered",
        "abandoned",
        "service_level",
        "asa_seconds",
        "abandon_rate",
        "occupancy",
    ] {
        assert_eq!(
            json.matches(&format!("\"{key}\": ")).count(),
            2,
            "{key} in {json}"
        );
    }
    let offered: u64 = json
        .split("\"offered\": ")
        .skip(1)
        .map(|s| s.split(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(offered, 4000);
    // Same seed, same result: the simulation is deterministic.
    let again = run();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), json);
}

#[test]
fn bad_traffic_parameters_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .args(["simulate", "--rate=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}

#[test]
fn replays_a_queue_event_log() {
    let scratch = Scratch::new("replay");
    let log = scratch.path("queue.csv");
    std::fs::write(
        &log,
        "seconds,call,queue,event\n0,a,info,enter\n1,a,info,connect\n91,a,info,complete\n\
         2,b,info,enter\n40,b,info,abandon\n3,c,info,enter\n",
    )
    .unwrap();
    let run = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_centralino"))
            .args([
                "simulate",
                "--replay",
                crate::common::path_str(path),
                "--json",
            ])
            .output()
            .unwrap()
    };
    // The embedded demo: 20 operators, so every caller is answered at once.
    let out = run(&log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(
        json.contains("\"offered\": 3, \"answered\": 3, \"abandoned\": 0"),
        "{json}"
    );
    assert!(json.contains("\"asa_seconds\": 0.000000"), "{json}");

    std::fs::write(&log, "seconds,call,queue,event\n0,a,nope,enter\n").unwrap();
    let out = run(&log);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: unknown queue \"nope\""), "{err}");
}

/// `centralino simulate --outbound`: a firm sizes a campaign before it
/// starts; predictive dials more than progressive at a low answer rate and
/// stays under the cap; nonsense is refused with the flag named.
#[test]
fn outbound_sizing_per_mode() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_centralino"))
            .args(["simulate", "--outbound"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--operators",
        "20",
        "--answer",
        "0.3",
        "--hours",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (prog, pred) = (&v["outbound"]["progressive"], &v["outbound"]["predictive"]);
    assert_eq!(prog["abandoned"], 0);
    assert!(pred["attempts"].as_u64() > prog["attempts"].as_u64(), "{v}");
    assert!(pred["abandon_rate"].as_f64().unwrap() <= 0.03, "{v}");
    let out = run(&["--operators", "20", "--answer", "0.8", "--busy", "0.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--answer plus --busy"));
    let out = run(&["--operators", "20", "--abandon-cap", "0.1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--abandon-cap"));
}

/// `--day`: the advisor staffs each interval of a day whose rate varies
/// and the day is simulated with that staffing; bad input is refused with
/// the option named.
#[test]
fn a_day_staffed_as_the_advisor_says() {
    let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
        .args(["simulate", "--day", "0.05,0.3,0.6,0.3,0.05", "--days", "4"])
        .args(["--aht", "180", "--target", "0.8", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let intervals = v["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 5);
    let needed: Vec<u64> = intervals
        .iter()
        .map(|i| i["needed"].as_u64().unwrap())
        .collect();
    // Staffing follows the rate; after a fall the last interval's stay.
    assert!(needed[2] > needed[1] && needed[1] > needed[0], "{needed:?}");
    assert_eq!(intervals[3]["agents"], intervals[2]["needed"]);
    assert_eq!(intervals[4]["agents"], intervals[3]["needed"]);
    for i in intervals {
        assert_eq!(i["start"].as_str().unwrap().len(), 6, "{i}");
        assert!(i["predicted"].as_f64().unwrap() >= 0.8, "{i}");
    }
    assert!(v["service_level"].as_f64().unwrap() >= 0.78, "{v}");
    for (bad, says) in [
        (vec!["--day", "1,x"], "--day"),
        (vec!["--day", "1", "--target", "80"], "--target"),
        (
            vec!["--day", "1", "--interval-minutes", "0"],
            "--interval-minutes",
        ),
        (vec!["--day", "1000", "--days", "100"], "20 million"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_centralino"))
            .arg("simulate")
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
