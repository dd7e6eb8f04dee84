//! Digest authentication (RFC 3261 §22, RFC 7616 algorithms as RFC 8760
//! brings them to SIP): SHA-256 preferred, MD5 accepted for older phones.
//!
//! Nonces are a keyed hash of a process secret and a counter, so they cannot
//! be predicted; each is remembered with its issue time and the highest
//! nonce-count seen, which refuses replays and expires old nonces with
//! `stale=true`. The table is bounded: the oldest nonces are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::uri::split_list;

/// A digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `SHA-256` (RFC 8760), preferred.
    Sha256,
    /// `MD5`, for phones that know nothing else.
    Md5,
}

impl Algorithm {
    /// The `algorithm=` token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA-256",
            Self::Md5 => "MD5",
        }
    }

    fn from_token(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("SHA-256") {
            Some(Self::Sha256)
        } else if s.eq_ignore_ascii_case("MD5") {
            Some(Self::Md5)
        } else {
            None
        }
    }

    /// Lower-case hex hash of `data`.
    pub fn hex(self, data: &str) -> String {
        match self {
            Self::Sha256 => hex(&Sha256::digest(data.as_bytes())),
            Self::Md5 => hex(&Md5::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// Stored secrets of one user: HA1 = H(username:realm:password) per algorithm.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// HA1 for MD5, lower-case hex.
    pub ha1_md5: Option<String>,
    /// HA1 for SHA-256, lower-case hex.
    pub ha1_sha256: Option<String>,
}

impl Credentials {
    /// Derives both HA1 values from a clear password.
    pub fn from_password(username: &str, realm: &str, password: &str) -> Self {
        let a1 = format!("{username}:{realm}:{password}");
        Self {
            ha1_md5: Some(Algorithm::Md5.hex(&a1)),
            ha1_sha256: Some(Algorithm::Sha256.hex(&a1)),
        }
    }

    /// Whether `password` is this user's: its HA1 compared (in constant
    /// time) with the stored one, SHA-256 when stored, else MD5. Lets
    /// other logins (an operator's desk) use the SIP secret without a
    /// second password store.
    pub fn matches_password(&self, username: &str, realm: &str, password: &str) -> bool {
        let a1 = format!("{username}:{realm}:{password}");
        [Algorithm::Sha256, Algorithm::Md5]
            .into_iter()
            .find_map(|alg| Some((alg, self.ha1(alg)?)))
            .is_some_and(|(alg, stored)| {
                constant_time_eq(alg.hex(&a1).as_bytes(), stored.as_bytes())
            })
    }

    fn ha1(&self, alg: Algorithm) -> Option<&str> {
        match alg {
            Algorithm::Md5 => self.ha1_md5.as_deref(),
            Algorithm::Sha256 => self.ha1_sha256.as_deref(),
        }
    }
}

/// The parameters of an `Authorization: Digest ...` header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestResponse {
    /// username
    pub username: String,
    /// realm
    pub realm: String,
    /// nonce
    pub nonce: String,
    /// uri
    pub uri: String,
    /// response
    pub response: String,
    /// algorithm (MD5 when absent)
    pub algorithm: Option<String>,
    /// cnonce
    pub cnonce: Option<String>,
    /// qop
    pub qop: Option<String>,
    /// nc
    pub nc: Option<String>,
}

/// Parses a Digest credentials value. `None` when malformed or not Digest.
pub fn parse_authorization(value: &str) -> Option<DigestResponse> {
    let v = value.trim();
    let (scheme, rest) = v.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut d = DigestResponse::default();
    let mut seen = 0u16;
    for item in split_list(rest) {
        let (name, value) = item.split_once('=')?;
        let name = name.trim();
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(inner) => inner.strip_suffix('"')?,
            None => value,
        };
        if value.len() > 1024 {
            return None;
        }
        let (slot, bit) = match name.to_ascii_lowercase().as_str() {
            "username" => (&mut d.username, 1),
            "realm" => (&mut d.realm, 2),
            "nonce" => (&mut d.nonce, 4),
            "uri" => (&mut d.uri, 8),
            "response" => (&mut d.response, 16),
            "algorithm" => {
                d.algorithm = Some(value.to_owned());
                continue;
            }
            "cnonce" => {
                d.cnonce = Some(value.to_owned());
                continue;
            }
            "qop" => {
                d.qop = Some(value.to_owned());
                continue;
            }
            "nc" => {
                d.nc = Some(value.to_owned());
                continue;
            }
            _ => continue,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        *slot = value.to_owned();
    }
    (seen == 31).then_some(d)
}

/// The verdict on a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: the authenticated username.
    Ok(String),
    /// No usable credentials: challenge (401).
    Challenge,
    /// The digest was right but the nonce expired or is unknown: challenge
    /// again with `stale=true`.
    Stale,
    /// Wrong digest, replayed nonce-count, wrong realm or uri: refuse (403).
    Refuse,
    /// The Authorization header is malformed (400).
    Malformed,
}

struct NonceState {
    issued: Instant,
    last_nc: u32,
}

/// Issues challenges and checks credentials for one realm.
pub struct DigestAuth {
    realm: String,
    algorithms: Vec<Algorithm>,
    secret: [u8; 32],
    counter: u64,
    lifetime: Duration,
    nonces: HashMap<String, NonceState>,
    order: VecDeque<String>,
    max_nonces: usize,
}

impl DigestAuth {
    /// `secret` must come from a CSPRNG (the driver reads the OS's).
    pub fn new(
        realm: &str,
        algorithms: Vec<Algorithm>,
        secret: [u8; 32],
        lifetime: Duration,
    ) -> Self {
        Self {
            realm: realm.to_owned(),
            algorithms,
            secret,
            counter: 0,
            lifetime,
            nonces: HashMap::new(),
            order: VecDeque::new(),
            max_nonces: 65_536,
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A fresh challenge: one `WWW-Authenticate` value per algorithm, most
    /// preferred first (RFC 8760 §2.4).
    pub fn challenge(&mut self, now: Instant, stale: bool) -> Vec<String> {
        self.counter += 1;
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(self.counter.to_be_bytes());
        let nonce = hex(&h.finalize()[..16]);
        if self.order.len() >= self.max_nonces
            && let Some(old) = self.order.pop_front()
        {
            self.nonces.remove(&old);
        }
        self.order.push_back(nonce.clone());
        self.nonces.insert(
            nonce.clone(),
            NonceState {
                issued: now,
                last_nc: 0,
            },
        );
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    a.token(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks the `Authorization` values of a request. `lookup` returns the
    /// user's credentials; unknown users are checked against a dummy so the
    /// answer and the work done look the same (no user enumeration).
    pub fn verify<'a>(
        &mut self,
        now: Instant,
        method: &str,
        request_uri: &str,
        authorizations: impl Iterator<Item = &'a str>,
        lookup: impl Fn(&str) -> Option<Credentials>,
    ) -> Verdict {
        let mut found = None;
        for a in authorizations {
            let scheme = a.trim().split([' ', '\t']).next().unwrap_or_default();
            if !scheme.eq_ignore_ascii_case("Digest") {
                // Another scheme (RFC 4475 regaut01): challenge with ours.
                continue;
            }
            let Some(d) = parse_authorization(a) else {
                return Verdict::Malformed;
            };
            if d.realm == self.realm {
                if found.is_some() {
                    return Verdict::Malformed;
                }
                found = Some(d);
            }
        }
        let Some(d) = found else {
            return Verdict::Challenge;
        };
        let alg = match d.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(t) => match Algorithm::from_token(t) {
                Some(a) if self.algorithms.contains(&a) => a,
                _ => return Verdict::Challenge,
            },
        };
        let creds = lookup(&d.username);
        let dummy = Credentials::from_password("\u{0}", &self.realm, "\u{0}");
        let known = creds.is_some();
        let creds = creds.unwrap_or(dummy);
        let Some(ha1) = creds.ha1(alg) else {
            return Verdict::Refuse;
        };
        let ha2 = alg.hex(&format!("{method}:{}", d.uri));
        let expected = match (&d.qop, &d.cnonce, &d.nc) {
            (Some(q), Some(cn), Some(nc)) if q.eq_ignore_ascii_case("auth") => {
                alg.hex(&format!("{ha1}:{}:{nc}:{cn}:{q}:{ha2}", d.nonce))
            }
            (None, _, _) => alg.hex(&format!("{ha1}:{}:{ha2}", d.nonce)),
            _ => return Verdict::Malformed,
        };
        let digest_ok = constant_time_eq(
            expected.as_bytes(),
            d.response.to_ascii_lowercase().as_bytes(),
        );
        if !digest_ok || !known || !uri_matches(&d.uri, request_uri) {
            return Verdict::Refuse;
        }
        let Some(state) = self.nonces.get_mut(&d.nonce) else {
            return Verdict::Stale;
        };
        if now.duration_since(state.issued) > self.lifetime {
            return Verdict::Stale;
        }
        let nc = match &d.nc {
            Some(nc) => match u32::from_str_radix(nc, 16) {
                Ok(n) => n,
                Err(_) => return Verdict::Malformed,
            },
            // Without qop there is no nonce-count: a nonce is single-use.
            // Its second use (a replay, or a phone that keeps the nonce) is
            // challenged afresh, like an expired nonce.
            None if state.last_nc == 0 => 1,
            None => return Verdict::Stale,
        };
        if nc <= state.last_nc {
            return Verdict::Refuse;
        }
        state.last_nc = nc;
        Verdict::Ok(d.username)
    }
}

/// The digest `uri` must name the Request-URI (RFC 7616 §3.4.6). Compared
/// loosely on case, since phones differ in how they print the host.
fn uri_matches(digest_uri: &str, request_uri: &str) -> bool {
    digest_uri.eq_ignore_ascii_case(request_uri)
}

/// Compares without an early exit, so timing does not reveal the prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_matches_the_stored_ha1_of_either_algorithm() {
        let c = Credentials::from_password("1001", "centralino", "demo1001");
        assert!(c.matches_password("1001", "centralino", "demo1001"));
        assert!(!c.matches_password("1001", "centralino", "demo1002"));
        assert!(!c.matches_password("1002", "centralino", "demo1001"));
        let md5_only = Credentials {
            ha1_md5: c.ha1_md5.clone(),
            ha1_sha256: None,
        };
        assert!(md5_only.matches_password("1001", "centralino", "demo1001"));
        assert!(!Credentials::default().matches_password("1001", "centralino", ""));
        // The stand-in for an unknown user: hashed like a real one, never
        // matched (no hex digest is all dashes).
        let nobody = Credentials {
            ha1_md5: None,
            ha1_sha256: Some("-".repeat(64)),
        };
        assert!(!nobody.matches_password("9999", "centralino", "demo1001"));
    }

    use super::*;

    fn answer(alg: Algorithm, nonce: &str, nc: &str, password: &str, uri: &str) -> String {
        let ha1 = alg.hex(&format!("1001:r:{password}"));
        let ha2 = alg.hex(&format!("REGISTER:{uri}"));
        let resp = alg.hex(&format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}"));
        format!(
            "Digest username=\"1001\", realm=\"r\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}, cnonce=\"abc\", qop=auth, nc={nc}",
            alg.token()
        )
    }

    fn nonce_of(ch: &str) -> String {
        ch.split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    }

    fn lookup(u: &str) -> Option<Credentials> {
        (u == "1001").then(|| Credentials::from_password("1001", "r", "demo1001"))
    }

    #[test]
    fn sha256_and_md5_replay_and_stale() {
        let t0 = Instant::now();
        let mut a = DigestAuth::new(
            "r",
            vec![Algorithm::Sha256, Algorithm::Md5],
            [7; 32],
            Duration::from_secs(300),
        );
        let ch = a.challenge(t0, false);
        assert!(ch[0].contains("algorithm=SHA-256"));
        let n = nonce_of(&ch[0]);
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let nc = if alg == Algorithm::Sha256 {
                "00000001"
            } else {
                "00000002"
            };
            let h = answer(alg, &n, nc, "demo1001", "sip:r");
            assert_eq!(
                a.verify(t0, "REGISTER", "sip:r", [h.as_str()].into_iter(), lookup),
                Verdict::Ok("1001".into())
            );
            assert_eq!(
                a.verify(t0, "REGISTER", "sip:r", [h.as_str()].into_iter(), lookup),
                Verdict::Refuse,
                "replay"
            );
        }
        let wrong = answer(Algorithm::Sha256, &n, "00000009", "nope", "sip:r");
        assert_eq!(
            a.verify(
                t0,
                "REGISTER",
                "sip:r",
                [wrong.as_str()].into_iter(),
                lookup
            ),
            Verdict::Refuse
        );
        let wrong_uri = answer(Algorithm::Sha256, &n, "0000000a", "demo1001", "sip:other");
        assert_eq!(
            a.verify(
                t0,
                "REGISTER",
                "sip:r",
                [wrong_uri.as_str()].into_iter(),
                lookup
            ),
            Verdict::Refuse
        );
        let late = answer(Algorithm::Sha256, &n, "0000000b", "demo1001", "sip:r");
        let later = t0 + Duration::from_secs(301);
        assert_eq!(
            a.verify(
                later,
                "REGISTER",
                "sip:r",
                [late.as_str()].into_iter(),
                lookup
            ),
            Verdict::Stale
        );
        assert!(a.challenge(later, true)[0].ends_with("stale=true"));
        assert_eq!(
            a.verify(
                t0,
                "REGISTER",
                "sip:r",
                ["Digest username=\"x"].into_iter(),
                lookup
            ),
            Verdict::Malformed
        );
        assert_eq!(
            a.verify(t0, "REGISTER", "sip:r", [].into_iter(), lookup),
            Verdict::Challenge
        );
    }

    /// Found by the fuzz target `sip_auth`: an answer without qop (RFC
    /// 2069 style, no nonce-count) was accepted again and again while its
    /// nonce lived, so a captured REGISTER could be replayed for minutes.
    #[test]
    fn an_answer_without_qop_is_single_use() {
        let t0 = Instant::now();
        let mut a = DigestAuth::new("r", vec![Algorithm::Md5], [7; 32], Duration::from_secs(300));
        let n = nonce_of(&a.challenge(t0, false)[0]);
        let ha1 = Algorithm::Md5.hex("1001:r:demo1001");
        let ha2 = Algorithm::Md5.hex("REGISTER:sip:r");
        let resp = Algorithm::Md5.hex(&format!("{ha1}:{n}:{ha2}"));
        let h = format!(
            "Digest username=\"1001\", realm=\"r\", nonce=\"{n}\", uri=\"sip:r\", response=\"{resp}\", algorithm=MD5"
        );
        let verify = |a: &mut DigestAuth| {
            a.verify(t0, "REGISTER", "sip:r", [h.as_str()].into_iter(), lookup)
        };
        assert_eq!(verify(&mut a), Verdict::Ok("1001".into()));
        assert_eq!(verify(&mut a), Verdict::Stale, "replay");
        assert_eq!(verify(&mut a), Verdict::Stale, "replay");
    }
}
