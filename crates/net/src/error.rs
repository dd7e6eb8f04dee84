//! Why the node's network side cannot start or go on.

use std::net::SocketAddr;

/// A driver failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The OS random source failed.
    #[error("cannot read the OS random source")]
    Random,
    /// An I/O failure outside a connection.
    #[error("{what}: {source}")]
    Io {
        /// Which part.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS certificate, key or setting the node cannot use.
    #[error("TLS: {file}: {reason}")]
    Tls {
        /// The file concerned.
        file: std::path::PathBuf,
        /// Why (rustls' or the PEM parser's words; never key material).
        reason: String,
    },
    /// The national network's key cannot be used.
    #[error("cluster.key_file {file}: {reason}")]
    NetworkKey {
        /// The file.
        file: std::path::PathBuf,
        /// Why (never the key).
        reason: String,
    },
}
