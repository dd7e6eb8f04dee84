//! What a reload changes, key by key, and which keys a running node can
//! apply. A reload that answers "applied" must have applied everything
//! that differs: the node compares the new file with the running one and
//! refuses the reload, naming each key, when any of them needs a restart.

use toml::Value;

use crate::Config;

/// Keys a running node applies, as `section.key` with `[]` for the element
/// of a list (`queues[].ring_timeout_seconds`); a key also covers every
/// key under it. Everything else needs a restart.
const LIVE: &[&str] = &[
    // API bearer tokens (a removed one is refused from the next request).
    "api.tokens",
    "api.callbacks_per_source_per_minute",
    "api.callbacks_per_number_per_day",
    // Operators: added, removed (after their call), their secrets (SIP
    // digest and desk logins), queues, skills, languages, site, tenant.
    // A new name used before existing ones are renumbered: the engine
    // refuses that reload.
    "agents",
    // Trunks by name: peers, DIDs, outbound address, caller id, OPTIONS;
    // added and removed ones too.
    "trunks",
    "tenants[].dial_plan",
    // Applied with the operators' secrets (a refused algorithm's are dropped).
    "tenants[].digest_algorithms",
    "tenants[].supervisor_phones",
    "tenants[].transfer_numbers",
    "flows",
    "flows_dir",
    "flow_files",
    "scripts",
    // Queue settings read at each decision (calls in progress keep the
    // timers already armed).
    "queues[].ring_timeout_seconds",
    "queues[].max_no_answer",
    "queues[].max_wait_seconds",
    "queues[].wrap_up_seconds",
    "queues[].max_waiting",
    "queues[].exit_status",
    "queues[].weight",
    "queues[].priority_step_seconds",
    "queues[].fragile_max_wait_seconds",
    "queues[].retry_seconds",
    "queues[].announce_seconds",
    "queues[].music_on_hold",
    "queues[].record",
    "queues[].script",
    "queues[].callback_key",
    "queues[].callback_offer_prompts",
    "queues[].callback_confirm_prompts",
    "queues[].whisper",
    "queues[].callback_whisper",
    "queues[].callback_number",
    "queues[].callback_max_attempts",
    "queues[].callback_retry_seconds",
    "queues[].callback_retries",
    "queues[].callback_mode",
    // Read by the callback scheduler from the running configuration.
    "queues[].callback_hours",
    // Read by reports and the staffing figures from the running
    // configuration (the wait histogram's buckets follow at a restart).
    "queues[].service_level_seconds",
    "queues[].service_level2_seconds",
    "queues[].short_abandon_seconds",
    "queues[].service_level_target",
    "queues[].expected_handle_seconds",
    "queues[].callback_promise_minutes",
    // Read when a caller cannot be served.
    "queues[].when_unserved",
    "queues[].overflow_queue",
    "logging.unmask_numbers",
    "campaigns",
    "outbound",
];

/// Every key whose value differs between the running configuration and a
/// new one, sorted by section (then removed keys). List
/// elements with a `name` (or `username`) are matched by it, so a trunk
/// added in the middle changes that trunk only: `trunks[carrier-b]`.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    diff_table("", &old.source, &new.source, &mut out);
    out
}

/// Whole list elements a running node adds and removes (their own keys
/// follow [`LIVE`]): a queue added takes calls at once; one removed takes
/// no new call (the engine refuses the reload while calls wait in it).
const LIVE_ELEMENTS: &[&str] = &["queues[]"];

/// Keys under a [`LIVE`] key that still need a restart: the TLS driver
/// builds its certificate checks once, at start.
const RESTART: &[&str] = &[
    "trunks[].tls_client_ca_file",
    "trunks[].tls_peer_names",
    "trunks[].outbound_transport",
    "trunks[].outbound_tls_name",
    "trunks[].outbound_tls_ca_file",
    "trunks[].outbound_tls_cert_file",
    "trunks[].outbound_tls_key_file",
];

/// Whether a running node applies a change of `key` (a path from
/// [`changed_keys`]).
pub fn applies_live(key: &str) -> bool {
    let pattern = without_selectors(key);
    if RESTART.contains(&pattern.as_str()) {
        return false;
    }
    if LIVE_ELEMENTS.contains(&pattern.as_str()) {
        return true;
    }
    LIVE.iter().any(|live| {
        pattern == *live
            || pattern
                .strip_prefix(live)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// The keys of `changed` a running node cannot apply.
pub fn needs_restart(changed: &[String]) -> Vec<String> {
    changed
        .iter()
        .filter(|k| !applies_live(k))
        .cloned()
        .collect()
}

/// The keys of a change from `old` to `new` that need a restart: those of
/// [`needs_restart`], and the `outbound` of a trunk reached over TLS in
/// either (its carrier connection, with its name and client certificate,
/// is set up at start: moving its address live would send calls nowhere,
/// or through another trunk's connection).
pub fn restart_keys(old: &Config, new: &Config, changed: &[String]) -> Vec<String> {
    let mut keys = needs_restart(changed);
    for k in changed {
        let Some(name) = k
            .strip_prefix("trunks[")
            .and_then(|r| r.strip_suffix("].outbound"))
        else {
            continue;
        };
        if tls_trunk(old, name) || tls_trunk(new, name) {
            keys.push(k.clone());
        }
    }
    keys
}

/// Whether trunk `name` reaches its carrier over TLS, as written.
fn tls_trunk(c: &Config, name: &str) -> bool {
    let Some(Value::Array(trunks)) = c.source.get("trunks") else {
        return false;
    };
    trunks.iter().filter_map(Value::as_table).any(|t| {
        t.get("name").and_then(Value::as_str) == Some(name)
            && t.get("outbound_transport").and_then(Value::as_str) == Some("tls")
    })
}

/// A list element added or removed whole: its key, then each of its keys
/// that needs a restart.
fn element(key: &str, v: &Value, out: &mut Vec<String>) {
    out.push(key.to_owned());
    if let Some(t) = v.as_table() {
        for k in t.keys() {
            let sub = format!("{key}.{k}");
            if RESTART.contains(&without_selectors(&sub).as_str()) {
                out.push(sub);
            }
        }
    }
}

/// `queues[info].record` → `queues[].record`.
fn without_selectors(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0u32;
    for c in key.chars() {
        match c {
            '[' => {
                if depth == 0 {
                    out.push('[');
                }
                depth += 1;
            }
            ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    out.push(']');
                }
            }
            _ if depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn diff_table(path: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in new {
        diff_value(&join(path, k), old.get(k), Some(v), out);
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            diff_value(&join(path, k), Some(v), None, out);
        }
    }
}

/// A list element's identity: its `name` or `username`.
fn ident(v: &Value) -> Option<&str> {
    let t = v.as_table()?;
    t.get("name")
        .or_else(|| t.get("username"))
        .and_then(Value::as_str)
}

fn diff_value(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    match (old, new) {
        (Some(Value::Table(a)), Some(Value::Table(b))) => diff_table(path, a, b, out),
        // A section added or removed whole: its keys, each by name.
        (None, Some(Value::Table(b))) => diff_table(path, &toml::Table::new(), b, out),
        (Some(Value::Table(a)), None) => diff_table(path, a, &toml::Table::new(), out),
        (Some(Value::Array(a)), Some(Value::Array(b)))
            if a.iter().chain(b).all(|v| ident(v).is_some()) =>
        {
            // By name, through maps: 40,000 operators are compared in
            // linear time.
            let before: std::collections::HashMap<&str, &Value> =
                a.iter().filter_map(|v| Some((ident(v)?, v))).collect();
            let after: std::collections::HashSet<&str> = b.iter().filter_map(ident).collect();
            for v in b {
                let id = ident(v).unwrap_or_default();
                let key = format!("{path}[{id}]");
                match before.get(id).copied() {
                    Some(before) => diff_value(&key, Some(before), Some(v), out),
                    // A new element is one change, named by its name, with
                    // any key of it a running node cannot take (a trunk
                    // added with TLS settings needs a restart).
                    None => element(&key, v, out),
                }
            }
            for v in a {
                let id = ident(v).unwrap_or_default();
                if !after.contains(id) {
                    element(&format!("{path}[{id}]"), v, out);
                }
            }
        }
        (a, b) if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[sip]
listen = ["127.0.0.1:5060"]
[logging]
unmask_numbers = false
[[api.tokens]]
name = "admin"
token = "a-long-admin-token"
role = "admin"
[[tenants]]
name = "demo"
[[trunks]]
name = "carrier"
tenant = "demo"
peers = ["192.0.2.10"]
dids = { "100" = "info" }
[[queues]]
name = "info"
tenant = "demo"
[[agents]]
username = "1001"
password = "demo1001"
tenant = "demo"
queues = ["info"]
"#;

    fn diff(new: &str) -> Vec<String> {
        let old = Config::from_toml(BASE).unwrap();
        let new = Config::from_toml(new).unwrap();
        changed_keys(&old, &new)
    }

    #[test]
    fn trunk_tls_keys_need_a_restart_while_other_trunk_keys_apply_live() {
        assert!(applies_live("trunks[carrier].outbound"));
        assert!(!applies_live("trunks[carrier].tls_peer_names"));
        assert!(!applies_live("trunks[carrier].tls_client_ca_file"));
    }

    #[test]
    fn a_trunk_added_with_tls_settings_needs_a_restart_one_without_does_not() {
        let plain = format!(
            "{BASE}\n[[trunks]]\nname = \"second\"\ntenant = \"demo\"\npeers = [\"192.0.2.11\"]\n"
        );
        assert!(needs_restart(&diff(&plain)).is_empty());
        let old = Config::from_toml(BASE).unwrap();
        let mut new = Config::from_toml(&plain).unwrap();
        // As a file with TLS keys would read (their validation needs files).
        if let Some(Value::Array(trunks)) =
            std::sync::Arc::make_mut(&mut new.source).get_mut("trunks")
            && let Some(Value::Table(t)) = trunks.last_mut()
        {
            t.insert("outbound_transport".into(), Value::String("tls".into()));
        }
        assert_eq!(
            needs_restart(&changed_keys(&old, &new)),
            ["trunks[second].outbound_transport"]
        );
    }

    #[test]
    fn a_tls_trunks_outbound_address_needs_a_restart_a_plain_ones_does_not() {
        // An outside review found it: the reload said applied while the
        // driver's TLS connection stayed at the old address.
        let trunk = |addr: &str| {
            format!(
                "{BASE}\n[[trunks]]\nname = \"second\"\ntenant = \"demo\"\npeers = [\"192.0.2.11\"]\noutbound = \"{addr}\"\n"
            )
        };
        let old = Config::from_toml(&trunk("192.0.2.11:5061")).unwrap();
        let new = Config::from_toml(&trunk("192.0.2.12:5061")).unwrap();
        let changed = changed_keys(&old, &new);
        assert_eq!(changed, ["trunks[second].outbound"]);
        assert!(restart_keys(&old, &new, &changed).is_empty(), "plain: live");
        let (mut old, mut new) = (old, new);
        // As files with TLS keys would read (their validation needs files).
        for c in [&mut old, &mut new] {
            if let Some(Value::Array(trunks)) =
                std::sync::Arc::make_mut(&mut c.source).get_mut("trunks")
                && let Some(Value::Table(t)) = trunks.last_mut()
            {
                t.insert("outbound_transport".into(), Value::String("tls".into()));
            }
        }
        assert_eq!(
            restart_keys(&old, &new, &changed),
            ["trunks[second].outbound"]
        );
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(diff(BASE).is_empty());
    }

    #[test]
    fn each_change_is_named_by_its_key_and_list_elements_by_name() {
        let new = BASE
            .replace("demo1001", "nuova-password")
            .replace("[[queues]]\nname = \"info\"\ntenant = \"demo\"", "[[queues]]\nname = \"info\"\ntenant = \"demo\"\nring_timeout_seconds = 20\nstrategy = \"round_robin\"")
            .replace("listen = [\"127.0.0.1:5060\"]", "listen = [\"127.0.0.1:5070\"]")
            + "\n[[trunks]]\nname = \"second\"\ntenant = \"demo\"\npeers = [\"192.0.2.11\"]\n";
        let keys = diff(&new);
        assert_eq!(
            keys,
            [
                "agents[1001].password",
                "queues[info].ring_timeout_seconds",
                "queues[info].strategy",
                "sip.listen",
                "trunks[second]",
            ]
        );
        assert_eq!(
            needs_restart(&keys),
            ["queues[info].strategy", "sip.listen"]
        );
    }

    #[test]
    fn tokens_passwords_trunks_and_queue_timers_apply_live_listeners_and_strategy_do_not() {
        for live in [
            "api.tokens[admin]",
            "api.tokens[admin].token",
            "agents[1001].password",
            "trunks[carrier].peers",
            "trunks[new]",
            "tenants[demo].dial_plan.allow",
            "queues[info].wrap_up_seconds",
            "queues[info].callback_retries.busy.attempts",
            "flows[menu].nodes.start.prompts",
            "logging.unmask_numbers",
            "agents[2001]",
            "agents[1001].tenant",
            "agents[1001].skills",
            // A queue added or removed (the engine checks the rest).
            "queues[new]",
            "queues[info].callback_hours",
        ] {
            assert!(applies_live(live), "{live}");
        }
        for restart in [
            "sip.listen",
            "http.listen",
            "media.port_min",
            "queues[info].strategy",
            "queues[new].strategy",
            "tenants[other]",
            "api.session_key_file",
            "api.tokensx",
            "store.retention_days",
        ] {
            assert!(!applies_live(restart), "{restart}");
        }
    }
}
