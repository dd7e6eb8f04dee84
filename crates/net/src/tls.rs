//! SIP over TLS (RFC 3261 §26): the rustls configurations of the listener
//! and of the connections towards carriers, on the node's one crypto stack
//! (rustls 0.23 on aws-lc-rs, the provider named explicitly so no second
//! backend is ever picked up by a feature elsewhere in the tree).
//!
//! Posture (TEST-MATRIX D10): TLS 1.2 and 1.3 only, and aws-lc-rs' default
//! cipher suites (AEAD only: AES-GCM and ChaCha20-Poly1305; no NULL, EXPORT,
//! RC4 or CBC suite exists in the provider to be enabled by mistake).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::sip::NetError;

/// Longest a TLS handshake may take, in either direction: a peer that
/// opens a connection and says nothing holds a connection slot only this
/// long (the stream's own idle timer starts after it).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The only versions offered or accepted.
pub(crate) static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// aws-lc-rs with its default (strong) cipher suites and key exchanges.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate of a PEM file (leaf first for a chain).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| NetError::tls(path, e))?;
    if certs.is_empty() {
        return Err(NetError::tls(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, NetError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| NetError::tls(path, e))
}

/// The listener's configuration: the node's certificate, and no client
/// certificate asked for.
pub(crate) fn server_config(
    tls: &centralino_config::SipTls,
) -> Result<rustls::ServerConfig, NetError> {
    let certs = load_certs(&tls.cert_file)?;
    let key = load_key(&tls.key_file)?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| NetError::tls(&tls.cert_file, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| NetError::tls(&tls.key_file, e))
}

/// Why a handshake failed, as a bounded metric label.
pub(crate) fn failure_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "io";
    };
    match tls {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::CertificateExpired
            | rustls::AlertDescription::CertificateRevoked,
        ) => "certificate",
        rustls::Error::PeerIncompatible(_)
        | rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion
            | rustls::AlertDescription::HandshakeFailure
            | rustls::AlertDescription::InsufficientSecurity,
        ) => "incompatible",
        _ => "protocol",
    }
}
