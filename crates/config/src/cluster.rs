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
    tls_ca_file: Option<String>,
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
    /// CA certificates for `tls://` servers (else the system's).
    pub tls_ca_file: Option<PathBuf>,
}

/// Most NATS URLs.
const MAX_URLS: usize = 16;

/// Checks `[cluster]`.
pub(super) fn cluster(raw: &RawCluster, p: &mut Problems) -> ClusterConfig {
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
    for (key, file) in [
        ("cluster.token_file", &raw.token_file),
        ("cluster.tls_ca_file", &raw.tls_ca_file),
    ] {
        if let Some(f) = file
            && f.is_empty()
        {
            p.add(key, "a file path");
        }
    }
    ClusterConfig {
        node: raw.node.clone(),
        nats_urls: urls,
        token_file: raw.token_file.as_ref().map(PathBuf::from),
        tls_ca_file: raw.tls_ca_file.as_ref().map(PathBuf::from),
    }
}
