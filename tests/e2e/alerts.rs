//! The Prometheus alert rules shipped in `config/prometheus/`: valid for
//! Prometheus (`promtool check rules`) and doing what they say on series
//! shaped like a node's (`promtool test rules`, Debian's `prometheus`
//! package, installed by `scripts/test`).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_fire_on_what_they_name() {
    promtool(&[
        "check",
        "rules",
        "centralino-alerts.yml",
        "centralino-rules.yml",
    ]);
    promtool(&["test", "rules", "centralino-alerts.test.yml"]);
    promtool(&["test", "rules", "centralino-rules.test.yml"]);
}
