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
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::NetError;

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

/// The listener's configuration: the node's certificate; a client
/// certificate is asked for (never required: operators' phones and trunks
/// known by address connect without one) when a trunk is known by one.
/// A certificate that is presented must chain to one of those trunks'
/// CAs, or the handshake fails.
pub(crate) fn server_config(
    tls: &centralino_config::SipTls,
    trunks: &[centralino_config::Trunk],
) -> Result<(rustls::ServerConfig, PeerChecks), NetError> {
    let certs = load_certs(&tls.cert_file)?;
    let key = load_key(&tls.key_file)?;
    let checks = PeerChecks::new(trunks)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| NetError::tls(&tls.cert_file, e))?;
    let builder = match &checks.any {
        Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| NetError::tls(&tls.key_file, e))?;
    Ok((config, checks))
}

type ClientVerifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// Which trunks a TLS client's certificate speaks for.
#[derive(Clone)]
pub(crate) struct PeerChecks {
    /// The handshake's check: any of the trunks' CAs, or no certificate.
    any: Option<ClientVerifier>,
    /// Per trunk with `tls_peer_names`: its name, its CA's check, and the
    /// names its certificate may carry.
    trunks: Arc<[PeerCheck]>,
}

struct PeerCheck {
    trunk: String,
    verifier: ClientVerifier,
    names: Vec<ServerName<'static>>,
}

impl PeerChecks {
    fn new(trunks: &[centralino_config::Trunk]) -> Result<Self, NetError> {
        let mut all = rustls::RootCertStore::empty();
        let mut checks = Vec::new();
        let mut last = None;
        for t in trunks {
            let Some(cc) = &t.client_cert else { continue };
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(&cc.ca_file)? {
                roots
                    .add(c.clone())
                    .map_err(|e| NetError::tls(&cc.ca_file, e))?;
                all.add(c).map_err(|e| NetError::tls(&cc.ca_file, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| NetError::tls(&cc.ca_file, e))?;
            let names = cc
                .peer_names
                .iter()
                .filter_map(|n| ServerName::try_from(n.clone()).ok())
                .collect();
            checks.push(PeerCheck {
                trunk: t.name.clone(),
                verifier,
                names,
            });
            last = Some(cc.ca_file.clone());
        }
        let Some(last) = last else {
            return Ok(Self {
                any: None,
                trunks: Arc::new([]),
            });
        };
        let any =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(all), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| NetError::tls(&last, e))?;
        Ok(Self {
            any: Some(any),
            trunks: checks.into(),
        })
    }

    /// The trunks (by name) whose CA the client's chain verifies against
    /// and whose `tls_peer_names` its subjectAltName holds; empty for a
    /// client without a certificate. Done once per connection, after the
    /// handshake, so the engine gets a verdict and never a certificate.
    pub(crate) fn trunks_of(&self, chain: Option<&[CertificateDer<'_>]>) -> Vec<String> {
        let Some((leaf, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return Vec::new();
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
            return Vec::new();
        };
        let now = UnixTime::now();
        self.trunks
            .iter()
            .filter(|c| {
                c.verifier
                    .verify_client_cert(leaf, intermediates, now)
                    .is_ok()
                    && c.names
                        .iter()
                        .any(|n| cert.verify_is_valid_for_subject_name(n).is_ok())
            })
            .map(|c| c.trunk.clone())
            .collect()
    }
}

/// The client side towards one carrier: the verified name and our
/// connector (its roots, and our certificate when the trunk has one).
#[derive(Clone)]
pub(crate) struct Carrier {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) name: ServerName<'static>,
    /// The trunk's name (logs).
    pub(crate) trunk: String,
}

/// The client configuration of a trunk reached over TLS: its server
/// certificate must chain to `outbound_tls_ca_file` (else the system's
/// CAs) and carry `outbound_tls_name`.
pub(crate) fn carrier(
    trunk: &str,
    tls: &centralino_config::OutboundTls,
) -> Result<Carrier, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for c in load_certs(path)? {
                roots.add(c).map_err(|e| NetError::tls(path, e))?;
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(system.certs);
            if added == 0 {
                return Err(NetError::tls(
                    Path::new("outbound_tls_ca_file"),
                    format!("trunk {trunk:?}: no system CA found; set outbound_tls_ca_file"),
                ));
            }
        }
    }
    let name = ServerName::try_from(tls.name.clone())
        .map_err(|e| NetError::tls(Path::new("outbound_tls_name"), format!("{trunk:?}: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| NetError::tls(Path::new("outbound_tls_name"), e))?
        .with_root_certificates(roots);
    let config = match &tls.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| NetError::tls(key, e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Carrier {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
        trunk: trunk.to_owned(),
    })
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
