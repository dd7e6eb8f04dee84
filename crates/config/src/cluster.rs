//! `[cluster]`: this node in a national network over NATS. Without the
//! section the node runs alone, as the embedded default does.

use std::path::PathBuf;

use serde::Deserialize;

use crate::problems::Problems;

/// `[cluster]` as written.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    node: String,
    nats_url: OneOrMany,
    token_file: Option<String>,
    password_file: Option<String>,
    tls_ca_file: Option<String>,
    sip_address: Option<String>,
    durability: Option<String>,
    key_file: Option<String>,
    takeover_after_seconds: Option<u64>,
}

/// `[[agreements]]` as written.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgreement {
    from: String,
    to: String,
    #[serde(default)]
    queues: Vec<String>,
    max_concurrent: Option<u32>,
    share: Option<f64>,
}

/// One URL or several.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// This node in the national network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Its name among the nodes (a metric label): 1 to 64 of
    /// `[A-Za-z0-9_.-]`.
    pub node: String,
    /// The NATS servers (`nats://host:port` or `tls://host:port`); the
    /// client tries them in turn.
    pub nats_urls: Vec<String>,
    /// A file holding the NATS token, if the servers want one.
    pub token_file: Option<PathBuf>,
    /// A file holding this node's own NATS password (user: the node's
    /// name), for servers that give each node its own user and subjects.
    pub password_file: Option<PathBuf>,
    /// CA certificates for `tls://` servers (else the system's).
    pub tls_ca_file: Option<PathBuf>,
    /// Where the other nodes send the calls they hand over (`ip:port`,
    /// UDP); by default the first UDP listener's address.
    pub sip_address: Option<std::net::SocketAddr>,
    /// Where callbacks outlive this node.
    pub durability: Durability,
    /// A file holding the network's key (32 random bytes, 64 hex digits),
    /// the same on every node, never sent: it authenticates every message
    /// between the nodes and seals the callback records of the work
    /// stream. Needed with `durability = "jetstream"`; without it the
    /// messages go unauthenticated (a NATS credential is a node).
    pub key_file: Option<PathBuf>,
    /// A node silent this long is dead for its callbacks: the others take
    /// them over (`takeover_after_seconds`, default 30).
    pub takeover_after: std::time::Duration,
}

/// Where a node's callbacks outlive it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// In this node's store only: they wait for it to come back.
    #[default]
    Local,
    /// Also mirrored on the NATS JetStream stream `CENTRALINO_WORK`: a
    /// node of the same firm takes them over when this one is down,
    /// exactly once (needs JetStream on the NATS servers).
    JetStream,
}

/// Most NATS URLs.
const MAX_URLS: usize = 16;

/// `localhost`, or a loopback address (IPv6 in brackets).
fn loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks `[cluster]`; `sip_listen` is the first SIP listen address (the
/// `sip_address` other nodes reach by default).
pub(super) fn cluster(
    raw: &RawCluster,
    sip_listen: Option<std::net::SocketAddr>,
    p: &mut Problems,
) -> ClusterConfig {
    if !centralino_cluster::summary::valid_name(&raw.node) {
        p.add(
            "cluster.node",
            "1 to 64 letters, digits, '-', '_' or '.' (it names the node to the others and in metrics)",
        );
    }
    let urls = match &raw.nats_url {
        OneOrMany::One(u) => vec![u.clone()],
        OneOrMany::Many(v) => v.clone(),
    };
    if urls.is_empty() || urls.len() > MAX_URLS {
        p.add("cluster.nats_url", format!("1 to {MAX_URLS} URLs"));
    }
    for (i, u) in urls.iter().enumerate() {
        let key = if urls.len() == 1 {
            "cluster.nats_url".to_owned()
        } else {
            format!("cluster.nats_url[{i}]")
        };
        let Some((scheme, rest)) = u.split_once("://") else {
            p.add(key, "nats://host:port or tls://host:port");
            continue;
        };
        if !matches!(scheme, "nats" | "tls") {
            p.add(key, format!("scheme {scheme:?}: nats or tls"));
            continue;
        }
        // Host and port only: credentials belong in token_file, never in
        // a URL that ends up in logs.
        let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['@', '/', '?', '#'])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            p.add(
                key,
                "host:port after the scheme, no user or password (use token_file)",
            );
        }
    }
    // Off this host, the network's key is what makes a node a node: a
    // NATS credential alone (or none) would let any client announce free
    // operators and be handed citizens' calls, or grant another node's.
    // On loopback (one machine's nodes, the tests) it stays optional.
    let off_host = urls.iter().any(|u| {
        u.split_once("://")
            .and_then(|(_, rest)| rest.rsplit_once(':'))
            .is_some_and(|(host, _)| !loopback_host(host))
    });
    // Other hosts' nodes reaching this one's SIP make a network that spans
    // machines, whatever the NATS URL says.
    let sip_off_host = raw
        .sip_address
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .or(sip_listen)
        .is_some_and(|a| !a.ip().is_loopback());
    if (off_host || sip_off_host) && raw.key_file.is_none() {
        p.add(
            "cluster.key_file",
            "a network beyond this host (a NATS server or a sip_address off loopback) needs the network's key (32 random bytes as 64 hex digits, the same on every node, e.g. `openssl rand -hex 32`): without it any NATS client could pose as a node and be handed citizens' calls",
        );
    }
    if raw.token_file.is_some() && raw.password_file.is_some() {
        p.add(
            "cluster.password_file",
            "token_file or password_file, not both",
        );
    }
    let sip_address =
        raw.sip_address
            .as_ref()
            .and_then(|a| match a.parse::<std::net::SocketAddr>() {
                Ok(s) if s.port() != 0 && !s.ip().is_unspecified() && !s.ip().is_multicast() => {
                    Some(s)
                }
                _ => {
                    p.add(
                    "cluster.sip_address",
                    "ip:port the other nodes reach this node's SIP on (not 0.0.0.0, not port 0)",
                );
                    None
                }
            });
    for (key, file) in [
        ("cluster.token_file", &raw.token_file),
        ("cluster.password_file", &raw.password_file),
        ("cluster.tls_ca_file", &raw.tls_ca_file),
        ("cluster.key_file", &raw.key_file),
    ] {
        if let Some(f) = file
            && f.is_empty()
        {
            p.add(key, "a file path");
        }
    }
    let durability = match raw.durability.as_deref() {
        None | Some("local") => Durability::Local,
        Some("jetstream") => Durability::JetStream,
        Some(other) => {
            p.add(
                "cluster.durability",
                format!("{other:?}: \"local\" (callbacks wait for this node) or \"jetstream\" (another node of the firm takes them over)"),
            );
            Durability::Local
        }
    };
    if durability == Durability::JetStream && raw.key_file.is_none() {
        p.add(
            "cluster.key_file",
            "durability = \"jetstream\" needs a key file shared by the nodes (32 random bytes as 64 hex digits, e.g. `openssl rand -hex 32`): callback records are sealed with it, so the NATS servers never see a citizen's number and nobody without it can plant one",
        );
    }
    let takeover_after = raw.takeover_after_seconds.unwrap_or(30);
    if !(3..=3600).contains(&takeover_after) {
        p.add(
            "cluster.takeover_after_seconds",
            "3 to 3600 (how long a node is silent before its callbacks are taken over)",
        );
    }
    ClusterConfig {
        node: raw.node.clone(),
        durability,
        takeover_after: std::time::Duration::from_secs(takeover_after),
        key_file: raw.key_file.as_ref().map(PathBuf::from),
        nats_urls: urls,
        token_file: raw.token_file.as_ref().map(PathBuf::from),
        password_file: raw.password_file.as_ref().map(PathBuf::from),
        tls_ca_file: raw.tls_ca_file.as_ref().map(PathBuf::from),
        sip_address,
    }
}

/// Most agreements.
const MAX_AGREEMENTS: usize = 4096;

/// Checks `[[agreements]]`: firm names, queue names, a capacity, one
/// agreement per pair of firms and queue.
pub(super) fn agreements(
    raw: &[RawAgreement],
    clustered: bool,
    p: &mut Problems,
) -> Vec<centralino_cluster::Agreement> {
    use centralino_cluster::summary::valid_name;
    if !raw.is_empty() && !clustered {
        p.add(
            "agreements",
            "agreements lend operators across the national network: they need [cluster]",
        );
    }
    if raw.len() > MAX_AGREEMENTS {
        p.add("agreements", format!("at most {MAX_AGREEMENTS}"));
    }
    let mut seen: Vec<(&str, &str, &str)> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let key = |k: &str| format!("agreements[{i}].{k}");
        for (k, v) in [("from", &a.from), ("to", &a.to)] {
            if !valid_name(v) {
                p.add(
                    key(k),
                    "a firm's tenant name: 1 to 64 letters, digits, '-', '_' or '.'",
                );
            }
        }
        if a.from == a.to {
            p.add(
                key("to"),
                "another firm than `from` (a firm's own nodes need no agreement)",
            );
        }
        if a.queues.len() > 1024 {
            p.add(key("queues"), "at most 1,024 queues");
        }
        for (j, q) in a.queues.iter().enumerate() {
            if !valid_name(q) {
                p.add(format!("agreements[{i}].queues[{j}]"), "a queue name");
            }
        }
        if a.max_concurrent.is_none() && a.share.is_none() {
            p.add(
                key("max_concurrent"),
                "an agreement needs a capacity: max_concurrent and/or share",
            );
        }
        if a.max_concurrent == Some(0) {
            p.add(key("max_concurrent"), "at least 1");
        }
        if a.share.is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
            p.add(
                key("share"),
                "a fraction of the lending firm's operators, above 0 and at most 1",
            );
        }
        let queues: Vec<&str> = if a.queues.is_empty() {
            vec!["*"]
        } else {
            a.queues.iter().map(String::as_str).collect()
        };
        for q in queues {
            let clash = seen.iter().any(|(f, t, sq)| {
                *f == a.from && *t == a.to && (*sq == q || *sq == "*" || q == "*")
            });
            if clash {
                p.add(
                    key("queues"),
                    format!("{} already lends to {} for queue {q}: one agreement per pair of firms and queue", a.to, a.from),
                );
            }
            seen.push((&a.from, &a.to, q));
        }
    }
    raw.iter()
        .map(|a| centralino_cluster::Agreement {
            from: a.from.clone(),
            to: a.to.clone(),
            queues: a.queues.clone(),
            max_concurrent: a.max_concurrent,
            share: a.share,
        })
        .collect()
}
