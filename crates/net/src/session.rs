//! Operators' desk sessions: after a login with their SIP credentials an
//! operator holds a signed token for their own desk, `cs1.USER.EXPIRES.MAC`
//! (MAC = HMAC-SHA256 over the rest and the operator's current SIP
//! secret, hex: a new password ends every session issued with the old
//! one, at once). Nothing is stored: any node with
//! the same key checks it, and 40,000 operators need no token in the
//! configuration. Time is passed in, so the rules are tested without a
//! clock.

use aws_lc_rs::hmac;

/// Prefix and version of an operator's session (bound to their SIP
/// secret).
pub(crate) const OPERATOR: &str = "cs1";
/// Prefix of a session opened with an API token (a supervisor's wallboard:
/// `cs2.TOKEN-NAME.EXPIRES.MAC`, bound to the token's value, so a changed
/// token ends its sessions).
pub(crate) const TOKEN: &str = "cs2";
/// Shortest key accepted from a file.
pub(crate) const MIN_KEY: usize = 32;

/// Why a session key cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The key file cannot be read.
    #[error("session key file {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
    /// The key file holds too few bytes.
    #[error("session key file {0}: at least {MIN_KEY} bytes of secret needed, found {1}")]
    Short(std::path::PathBuf, usize),
    /// The system's random source failed.
    #[error("no random key: {0}")]
    Random(String),
}

/// Issues and checks session tokens.
pub(crate) struct Sessions {
    key: hmac::Key,
    /// Validity of a new token, in seconds; 0 = logins off.
    ttl: i64,
    /// Operators who logged out, with the expiry of the token they logged
    /// out with: every token of theirs expiring no later is refused (this
    /// process only, until it restarts: tokens are stored nowhere).
    logged_out: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl Sessions {
    /// From the configuration: the key file's bytes (trailing white space
    /// ignored), or a random key of this process.
    pub(crate) fn new(cfg: &centralino_config::ApiSessions) -> Result<Self, SessionError> {
        let key = match &cfg.key_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| SessionError::Read(path.clone(), e))?;
                let secret = bytes.trim_ascii_end();
                if secret.len() < MIN_KEY {
                    return Err(SessionError::Short(path.clone(), secret.len()));
                }
                hmac::Key::new(hmac::HMAC_SHA256, secret)
            }
            None => hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
                .map_err(|e| SessionError::Random(e.to_string()))?,
        };
        Ok(Self {
            key,
            ttl: i64::from(cfg.hours) * 3600,
            logged_out: std::sync::Mutex::default(),
        })
    }

    /// Logins are on.
    pub(crate) fn enabled(&self) -> bool {
        self.ttl > 0
    }

    /// A token for `agent`, whose SIP secret is now `secret` (its HA1s),
    /// issued at `now` (Unix seconds), and when it expires.
    pub(crate) fn issue(&self, agent: &str, secret: &[u8], now: i64) -> (String, i64) {
        self.issue_as(OPERATOR, agent, secret, now)
    }

    /// A session of `kind` ([`OPERATOR`], [`TOKEN`]) for `who`.
    pub(crate) fn issue_as(&self, kind: &str, who: &str, secret: &[u8], now: i64) -> (String, i64) {
        // Later than any token of theirs logged out (a login in the same
        // second as a logout is not born revoked).
        let revoked = self.revoked(kind, who).unwrap_or(i64::MIN);
        let expires = (now + self.ttl).max(revoked.saturating_add(1));
        let body = format!("{kind}.{who}.{expires}");
        let mac = hmac::sign(&self.key, &Self::signed(&body, secret));
        (format!("{body}.{}", hex(mac.as_ref())), expires)
    }

    /// What the MAC covers: the token's text, then the operator's secret
    /// (never in the token: a changed password changes every MAC).
    fn signed(body: &str, secret: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(body.len() + 1 + secret.len());
        m.extend_from_slice(body.as_bytes());
        m.push(0);
        m.extend_from_slice(secret);
        m
    }

    /// Whether `token` looks like a session token (not a configured one).
    pub(crate) fn is_session(token: &str) -> bool {
        token.starts_with("cs1.") || token.starts_with("cs2.")
    }

    /// The kind of session `token` is, if one.
    fn kind_of(token: &str) -> Option<&'static str> {
        [OPERATOR, TOKEN]
            .into_iter()
            .find(|k| token.strip_prefix(k).is_some_and(|r| r.starts_with('.')))
    }

    /// The operator a valid, unexpired token at `now` belongs to;
    /// `secret_of` gives an operator's current SIP secret (`None`: no
    /// such operator).
    pub(crate) fn verify(
        &self,
        token: &str,
        now: i64,
        secret_of: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<String> {
        self.verify_as(OPERATOR, token, now, secret_of)
    }

    /// Who a valid, unexpired session of `kind` belongs to.
    pub(crate) fn verify_as(
        &self,
        kind: &str,
        token: &str,
        now: i64,
        secret_of: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<String> {
        if !self.enabled() || token.len() > 256 {
            return None;
        }
        let (body, mac) = token.rsplit_once('.')?;
        let mac = unhex(mac)?;
        let rest = body.strip_prefix(kind)?.strip_prefix('.')?;
        let (agent, expires) = rest.rsplit_once('.')?;
        let secret = secret_of(agent)?;
        // Constant time, by aws-lc.
        hmac::verify(&self.key, &Self::signed(body, &secret), &mac).ok()?;
        let expires: i64 = expires.parse().ok()?;
        let revoked = self.revoked(kind, agent).is_some_and(|r| expires <= r);
        (now < expires && !agent.is_empty() && !revoked).then(|| agent.to_owned())
    }

    /// Logs the session `token` out (it is valid at `now`): it and every
    /// earlier token of its operator are refused from now on. Returns the
    /// operator.
    pub(crate) fn log_out(
        &self,
        token: &str,
        now: i64,
        secret_of: impl Fn(&str, &str) -> Option<Vec<u8>>,
    ) -> Option<String> {
        let kind = Self::kind_of(token)?;
        let agent = self.verify_as(kind, token, now, |who| secret_of(kind, who))?;
        let expires: i64 = token
            .rsplit_once('.')
            .and_then(|(body, _)| body.rsplit_once('.'))
            .and_then(|(_, e)| e.parse().ok())?;
        let mut out = self
            .logged_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Entries whose tokens have all expired are of no use (bounded by
        // the operators who logged out within one session's life).
        out.retain(|_, e| *e > now);
        let e = out.entry(format!("{kind}.{agent}")).or_insert(expires);
        *e = (*e).max(expires);
        Some(agent)
    }

    fn revoked(&self, kind: &str, who: &str) -> Option<i64> {
        self.logged_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&format!("{kind}.{who}"))
            .copied()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hex digits (at most 128) to bytes; anything else (a sign, an odd
/// length) is `None`.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operator's secret, for these tests.
    fn secret(_: &str) -> Option<Vec<u8>> {
        Some(b"ha1".to_vec())
    }

    fn sessions(hours: u32, key_file: Option<std::path::PathBuf>) -> Sessions {
        Sessions::new(&centralino_config::ApiSessions { hours, key_file }).unwrap()
    }

    #[test]
    fn logging_out_ends_that_session_and_earlier_ones_not_the_next_login() {
        let s = sessions(12, None);
        let (first, _) = s.issue("1001", b"ha1", 1_000);
        let (second, _) = s.issue("1001", b"ha1", 2_000);
        let (other, _) = s.issue("1002", b"ha1", 2_000);
        let secret2 = |_: &str, a: &str| secret(a);
        assert_eq!(s.log_out(&second, 2_500, secret2).as_deref(), Some("1001"));
        assert_eq!(s.verify(&second, 2_501, secret), None);
        assert_eq!(s.verify(&first, 2_501, secret), None, "an earlier one too");
        assert_eq!(s.verify(&other, 2_501, secret).as_deref(), Some("1002"));
        // A login in the same second is not born logged out.
        let (again, _) = s.issue("1001", b"ha1", 2_500);
        assert_eq!(s.verify(&again, 2_501, secret).as_deref(), Some("1001"));
        // Only a valid session logs out.
        assert_eq!(s.log_out("cs1.1002.99999.00", 2_500, secret2), None);
        // A wallboard's session of a token named like an operator is
        // another session.
        let (board, _) = s.issue_as(TOKEN, "1002", b"tok", 2_000);
        assert_eq!(
            s.verify_as(TOKEN, &board, 2_501, |_| Some(b"tok".to_vec()))
                .as_deref(),
            Some("1002")
        );
        assert_eq!(s.verify(&board, 2_501, secret), None, "not an operator's");
        assert!(
            s.log_out(&board, 2_600, |_, _| Some(b"tok".to_vec()))
                .is_some()
        );
        assert_eq!(s.verify(&other, 2_601, secret).as_deref(), Some("1002"));
        assert_eq!(s.verify(&other, 2_501, secret).as_deref(), Some("1002"));
    }

    #[test]
    fn a_token_names_its_operator_until_it_expires() {
        let s = sessions(12, None);
        let (t, exp) = s.issue("1001", b"ha1", 1_000);
        assert_eq!(exp, 1_000 + 12 * 3600);
        assert!(Sessions::is_session(&t));
        assert_eq!(s.verify(&t, 1_001, secret).as_deref(), Some("1001"));
        assert_eq!(s.verify(&t, exp, secret), None, "expired");
        // A new password (another secret) ends it at once; so does the
        // operator's removal.
        assert_eq!(s.verify(&t, 1_001, |_| Some(b"new".to_vec())), None);
        assert_eq!(s.verify(&t, 1_001, |_| None), None);
        // Another operator's name, another expiry, another byte of MAC.
        let forged = t.replacen("1001", "1002", 1);
        assert_eq!(s.verify(&forged, 1_001, secret), None);
        let later = t.replacen(&exp.to_string(), &(exp + 3600).to_string(), 1);
        assert_eq!(s.verify(&later, 1_001, secret), None);
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            s.verify(&String::from_utf8(flipped).unwrap(), 1_001, secret),
            None
        );
        // Another process's key (no shared file) does not accept it.
        assert_eq!(sessions(12, None).verify(&t, 1_001, secret), None);
        for junk in [
            "",
            "cs1",
            "cs1..",
            "cs1.1001.x.00",
            "cs1.1001.99999999999.zz",
            "Bearer",
        ] {
            assert_eq!(s.verify(junk, 1_001, secret), None, "{junk:?}");
        }
    }

    #[test]
    fn nodes_sharing_a_key_file_accept_each_others_sessions() {
        let dir = std::env::temp_dir().join(format!("centralino-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        let (a, b) = (
            sessions(1, Some(key.clone())),
            sessions(1, Some(key.clone())),
        );
        let (t, _) = a.issue("1001", b"ha1", 0);
        assert_eq!(b.verify(&t, 10, secret).as_deref(), Some("1001"));
        std::fs::write(&key, "short").unwrap();
        let e = Sessions::new(&centralino_config::ApiSessions {
            hours: 1,
            key_file: Some(key.clone()),
        });
        assert!(matches!(e, Err(SessionError::Short(_, 5))));
        let off = sessions(0, None);
        assert!(!off.enabled());
        assert_eq!(off.verify(&off.issue("1001", b"ha1", 0).0, 0, secret), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
