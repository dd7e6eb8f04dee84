//! The SMS gateway client: a callback's confirmation sent over HTTPS (or
//! plain HTTP on loopback for tests) from the store's outbox.

use super::*;

/// Sends the outbox to the SMS gateway: one POST per notification, retried
/// with a delay, a dead letter after the last attempt. Never on the call
/// path: a slow or dead gateway only delays SMS.
pub(super) async fn notifier(
    store: StoreHandle,
    cfg: centralino_config::Notifications,
    tls: Option<tokio_rustls::TlsConnector>,
    metrics: NetMetrics,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = unix_now();
        let Ok(due) = store.ask(|r| StoreReq::DueNotifications(now, r)).await else {
            continue;
        };
        for n in due {
            let result = post_json(&cfg, tls.as_ref(), &n.payload).await;
            let (sent, error) = match result {
                Ok(()) => (true, None),
                Err(e) => (false, Some(e)),
            };
            let retry_at = (!sent && n.attempts + 1 < cfg.max_attempts)
                .then(|| unix_now() + cfg.retry.as_secs() as i64);
            let outcome = match (sent, retry_at) {
                (true, _) => "sent",
                (false, Some(_)) => "retry",
                (false, None) => "dead_letter",
            };
            if outcome != "sent" {
                warn!(event = %n.event, error = ?error, outcome, "notification not delivered");
            }
            metrics
                .notifications
                .with_label_values(&[&n.event, outcome])
                .inc();
            store.send(StoreReq::NotificationAttempt(n.seq, sent, error, retry_at));
        }
    }
}

/// The TLS client of the SMS hook: the system's trusted CAs plus the
/// configured `ca_file`; rustls on aws-lc-rs, TLS 1.2 and 1.3 only.
pub(super) fn tls_connector(
    tls: &centralino_config::NotifyTls,
) -> Result<tokio_rustls::TlsConnector, ApiError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if let Some(path) = &tls.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|e| ApiError::Tls(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ApiError::Tls(format!("{}: no certificate", path.display())));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ApiError::Tls(format!("{}: {e}", path.display())))?;
        }
    } else if added == 0 {
        return Err(ApiError::Tls(
            "no trusted CA: install ca-certificates or set notifications.ca_file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One HTTP/1.1 POST, over TLS for an `https://` gateway; `Ok` on a 2xx
/// answer.
pub(super) async fn post_json(
    cfg: &centralino_config::Notifications,
    tls: Option<&tokio_rustls::TlsConnector>,
    body: &str,
) -> Result<(), String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&cfg.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match (&cfg.tls, tls) {
            (Some(t), Some(connector)) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(t.host.clone())
                    .map_err(|e| format!("tls: {e}"))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                exchange(stream, cfg, body).await
            }
            _ => exchange(tcp, cfg, body).await,
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), attempt)
        .await
        .map_err(|_| "timeout".to_owned())?
}

/// Writes the request and reads the status line.
pub(super) async fn exchange<S>(
    mut s: S,
    cfg: &centralino_config::Notifications,
    body: &str,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = cfg
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        cfg.path,
        cfg.addr,
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        let k = s
            .read(&mut head[n..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    match line.get(9..12).and_then(|c| c.parse::<u16>().ok()) {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("gateway answered {c}")),
        None => Err("no HTTP answer".into()),
    }
}
