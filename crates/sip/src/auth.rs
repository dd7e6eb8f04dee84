//! Digest authentication (RFC 3261 §22, RFC 7616 algorithms as RFC 8760
//! brings them to SIP): SHA-256 preferred, MD5 accepted for older phones.
//!
//! Nonces are a keyed hash of a process secret and a counter, so they cannot
//! be predicted; each is remembered with its issue time and the highest
//! nonce-count seen, so a replay is never accepted, and old nonces expire
//! with `stale=true`. `qop=auth` is required, so every response carries a
//! nonce-count. The table is bounded: the oldest nonces are forgotten first.
//!
//! Each nonce is bound to the address it was sent to. Only a response on a
//! nonce that is ours, fresh and issued to the address it comes from can be
//! a [`Verdict::Refuse`] (the failure the throttle counts towards a ban):
//! the challenge went to that address, so a blind or spoofed sender never
//! saw the nonce, and its guesses end as [`Verdict::Stale`] before any hash
//! is computed. Otherwise anyone could send twenty wrong digests with
//! invented nonces and a forged source to ban every operator behind a call
//! centre's NAT.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
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

    /// The stored HA1 for `alg`, if this user has one.
    pub fn ha1(&self, alg: Algorithm) -> Option<&str> {
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
    /// algorithm (MD5 when absent, accepted only where MD5 is configured)
    pub algorithm: Option<String>,
    /// cnonce
    pub cnonce: Option<String>,
    /// qop (only `auth` is accepted)
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

/// A server's challenge (`WWW-Authenticate` or `Proxy-Authenticate`), as
/// a client answers it (RFC 3261 §22.2, RFC 8760): a carrier asking us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// realm
    pub realm: String,
    /// nonce
    pub nonce: String,
    /// opaque, returned as is
    pub opaque: Option<String>,
    /// The algorithm asked for (MD5 when absent).
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (then cnonce and nc are sent).
    pub qop_auth: bool,
}

/// Parses a Digest challenge. `None` when malformed, not Digest, or not
/// answerable by us (an algorithm we lack, or only `qop=auth-int`).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let v = value.trim();
    let (scheme, rest) = v.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let (mut realm, mut nonce, mut opaque, mut algorithm, mut qop) = (None, None, None, None, None);
    for item in split_list(rest) {
        let (name, value) = item.split_once('=')?;
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(inner) => inner.strip_suffix('"')?,
            None => value,
        };
        // Echoed into our Authorization: bounded, and never able to
        // close the quoted string or the header line.
        if value.len() > 1024 || value.contains(['"', '\\', '\r', '\n']) {
            return None;
        }
        match name.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_owned()),
            "nonce" => nonce = Some(value.to_owned()),
            "opaque" => opaque = Some(value.to_owned()),
            "algorithm" => algorithm = Some(Algorithm::from_token(value)?),
            "qop" => qop = Some(value.to_owned()),
            _ => {}
        }
    }
    let qop_auth = match qop {
        None => false,
        Some(q) => {
            if !q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                return None;
            }
            true
        }
    };
    Some(Challenge {
        realm: realm?,
        nonce: nonce?,
        opaque,
        algorithm: algorithm.unwrap_or(Algorithm::Md5),
        qop_auth,
    })
}

/// The credentials value (for `Authorization` or `Proxy-Authorization`)
/// answering `challenge` for a `method` request to `uri`: the response
/// is H(HA1:nonce:nc:cnonce:auth:HA2) with qop, H(HA1:nonce:HA2) without,
/// in the challenge's algorithm. `nc` is the count of requests made with
/// this nonce (1 for the first).
pub fn answer_challenge(
    challenge: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let alg = challenge.algorithm;
    let ha1 = alg.hex(&format!("{username}:{}:{password}", challenge.realm));
    let ha2 = alg.hex(&format!("{method}:{uri}"));
    let nonce = &challenge.nonce;
    let mut out = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{nonce}\", uri=\"{uri}\"",
        challenge.realm
    );
    if challenge.qop_auth {
        let nc = format!("{nc:08x}");
        let response = alg.hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        out.push_str(&format!(
            ", response=\"{response}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
            alg.token()
        ));
    } else {
        let response = alg.hex(&format!("{ha1}:{nonce}:{ha2}"));
        out.push_str(&format!(
            ", response=\"{response}\", algorithm={}",
            alg.token()
        ));
    }
    if let Some(opaque) = &challenge.opaque {
        out.push_str(&format!(", opaque=\"{opaque}\""));
    }
    out
}

/// The verdict on a request's credentials. Only [`Self::Refuse`] says the
/// password was wrong; the others say nothing about it and must not count
/// towards a ban.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: the authenticated username, and the algorithm it answered
    /// with (what the registrar remembers of the phone).
    Ok(String, Algorithm),
    /// No usable credentials (none for our realm, no `qop=auth`, an
    /// algorithm we do not offer): challenge (401).
    Challenge,
    /// The nonce is not one we issued to this address, or it expired, or
    /// its nonce-count was already used (a replay): challenge again with
    /// `stale=true`. Decided before the digest is checked.
    Stale,
    /// A wrong digest, or an unknown user, on a fresh nonce we issued to
    /// this address: refuse (403).
    Refuse,
    /// The Authorization header is malformed, or its `uri` is not the
    /// Request-URI (400, RFC 7616 §3.4.6).
    Malformed,
}

struct NonceState {
    issued: Instant,
    /// The address the challenge was sent to (canonical form).
    client: IpAddr,
    last_nc: u32,
    /// The algorithms the challenge offered: only these may answer it, so
    /// a nonce sent with SHA-256 alone never takes an MD5 response.
    offered: Vec<Algorithm>,
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
    /// HA1s no password gives, hashed for an unknown user (or one without
    /// a secret for the algorithm) so the work and the verdict match a
    /// wrong password's: no user enumeration. Computed once.
    dummy: Credentials,
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
            dummy: Credentials::from_password("\u{0}", realm, "\u{0}"),
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How long a nonce can be answered.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The configured algorithms, most preferred first.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// A fresh challenge offering every configured algorithm: see
    /// [`Self::challenge_with`].
    pub fn challenge(&mut self, now: Instant, client: IpAddr, stale: bool) -> Vec<String> {
        let all = self.algorithms.clone();
        self.challenge_with(now, client, stale, &all)
    }

    /// A fresh challenge for a request from `client` (the address the 401
    /// goes to, which alone may answer it): one `WWW-Authenticate` value per
    /// algorithm of `offer` that is configured, in the configured order
    /// (most preferred first, RFC 8760 §2.4). An `offer` with none of them
    /// offers them all. Only the offered algorithms may answer the nonce.
    ///
    /// Bound to the IP, not the port or transport: NATs rebind ports and
    /// some phones answer a UDP challenge over TCP.
    pub fn challenge_with(
        &mut self,
        now: Instant,
        client: IpAddr,
        stale: bool,
        offer: &[Algorithm],
    ) -> Vec<String> {
        let mut offered: Vec<Algorithm> = self
            .algorithms
            .iter()
            .copied()
            .filter(|a| offer.contains(a))
            .collect();
        if offered.is_empty() {
            offered.clone_from(&self.algorithms);
        }
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
                client: client.to_canonical(),
                last_nc: 0,
                offered: offered.clone(),
            },
        );
        offered
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

    /// Checks the `Authorization` values of a request from `source`.
    /// `lookup` returns the user's credentials; unknown users are checked
    /// against a dummy so the answer and the work done look the same (no
    /// user enumeration).
    ///
    /// Order matters: everything that needs no secret (syntax, qop,
    /// algorithm, uri, then the nonce: ours, fresh, issued to `source`)
    /// comes first and never yields [`Verdict::Refuse`]; only then is the
    /// digest computed and compared in constant time.
    pub fn verify<'a>(
        &mut self,
        now: Instant,
        source: IpAddr,
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
        // qop=auth is required. Without it (RFC 2069 style) the response
        // carries no nonce-count, so nothing tells a replay of a captured
        // header from a new request: the same Authorization would register
        // any Contact again. A phone that answered so (or with auth-int,
        // which we do not offer) is simply challenged again: it is not a
        // wrong password, so it is not counted towards a ban.
        let Some(qop) = d.qop.as_deref().filter(|q| q.eq_ignore_ascii_case("auth")) else {
            return Verdict::Challenge;
        };
        // With qop, cnonce and nc are mandatory (RFC 7616 §3.4).
        let (Some(cnonce), Some(nc_text)) = (d.cnonce.as_deref(), d.nc.as_deref()) else {
            return Verdict::Malformed;
        };
        let Some(nc) = parse_nc(nc_text) else {
            return Verdict::Malformed;
        };
        // An absent algorithm means MD5 (RFC 7616 §3.4), and MD5 is only
        // good when configured: a site that allows SHA-256 alone must not
        // take an MD5 answer because the phone left the token out. Any
        // algorithm we did not offer gets a fresh challenge listing ours.
        let alg = match d.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(t) => match Algorithm::from_token(t) {
                Some(a) => a,
                None => return Verdict::Challenge,
            },
        };
        if !self.algorithms.contains(&alg) {
            return Verdict::Challenge;
        }
        // A digest for another Request-URI is a bad request (RFC 7616
        // §3.4.6), not a wrong password: a captured header replayed in
        // another request must not count towards a ban.
        if !uri_matches(&d.uri, request_uri) {
            return Verdict::Malformed;
        }
        // The nonce must be ours, fresh and issued to this address before
        // the digest means anything (module doc: blind lock-out).
        let Some(state) = self.nonces.get(&d.nonce) else {
            return Verdict::Stale;
        };
        if now.saturating_duration_since(state.issued) > self.lifetime
            || state.client != source.to_canonical()
        {
            return Verdict::Stale;
        }
        // Not offered with this nonce (a phone pinned to SHA-256, a tenant
        // without MD5): a new challenge, never a wrong password.
        if !state.offered.contains(&alg) {
            return Verdict::Challenge;
        }
        let last_nc = state.last_nc;
        let creds = lookup(&d.username);
        let stored = creds.as_ref().and_then(|c| c.ha1(alg));
        let known = stored.is_some();
        let ha1 = match stored {
            Some(h) => h,
            // `from_password` sets both HA1s, so the default never happens.
            None => self.dummy.ha1(alg).unwrap_or_default(),
        };
        let ha2 = alg.hex(&format!("{method}:{}", d.uri));
        let expected = alg.hex(&format!("{ha1}:{}:{nc_text}:{cnonce}:{qop}:{ha2}", d.nonce));
        let digest_ok = constant_time_eq(
            expected.as_bytes(),
            d.response.to_ascii_lowercase().as_bytes(),
        );
        if !digest_ok || !known {
            return Verdict::Refuse;
        }
        // Strictly increasing per nonce: a replayed header is never
        // accepted twice. Stale, not Refuse: the digest is right, so the
        // sender is the phone resending or someone replaying a captured
        // request (possibly with a forged source), neither of which may
        // ban the operator; a fresh nonce is useless without the password.
        if nc <= last_nc {
            return Verdict::Stale;
        }
        if let Some(state) = self.nonces.get_mut(&d.nonce) {
            state.last_nc = nc;
        }
        Verdict::Ok(d.username, alg)
    }
}

/// `nc-value = 8LHEX` (RFC 7616 §3.4): exactly eight hex digits, so one
/// count has one spelling (`u32::from_str_radix` alone would take `+1`).
fn parse_nc(text: &str) -> Option<u32> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
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
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    /// RFC 2617 §3.5's worked example (MD5, qop=auth).
    #[test]
    fn answer_matches_rfc2617_example() {
        let ch = parse_challenge(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .expect("challenge");
        assert_eq!(ch.algorithm, Algorithm::Md5);
        assert!(ch.qop_auth);
        let v = answer_challenge(
            &ch,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
        );
        assert!(
            v.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{v}"
        );
        assert!(v.contains("nc=00000001"), "{v}");
        assert!(v.contains(r#"cnonce="0a4f113b""#), "{v}");
        assert!(
            v.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#),
            "{v}"
        );
    }

    /// RFC 7616 §3.9.1's worked example (SHA-256, qop=auth).
    #[test]
    fn answer_matches_rfc7616_sha256_example() {
        let ch = parse_challenge(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .expect("challenge");
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        let v = answer_challenge(
            &ch,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        assert!(
            v.contains(
                r#"response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1""#
            ),
            "{v}"
        );
        assert!(v.contains("algorithm=SHA-256"), "{v}");
    }

    /// Without qop: the RFC 2069 form, and our own verifier accepts it.
    #[test]
    fn answer_without_qop_passes_our_verifier_form() {
        let ch = parse_challenge(r#"Digest realm="r", nonce="n""#).expect("challenge");
        assert!(!ch.qop_auth);
        let v = answer_challenge(&ch, "u", "p", "INVITE", "sip:1@h", "c", 1);
        let d = parse_authorization(&v).expect("parses back");
        let ha1 = Algorithm::Md5.hex("u:r:p");
        let ha2 = Algorithm::Md5.hex("INVITE:sip:1@h");
        assert_eq!(d.response, Algorithm::Md5.hex(&format!("{ha1}:n:{ha2}")));
        assert_eq!(d.qop, None);
        assert!(!v.contains("cnonce"), "{v}");
    }

    /// Challenges we cannot or must not answer.
    #[test]
    fn unanswerable_challenges_are_refused() {
        for bad in [
            r#"Basic realm="r""#,
            r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#,
            r#"Digest realm="r", nonce="n", qop="auth-int""#,
            r#"Digest nonce="n""#,
            "Digest realm=\"r\", nonce=\"a\\\"b\"",
        ] {
            assert_eq!(parse_challenge(bad), None, "{bad}");
        }
    }

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

    /// The phone the challenges go to, and another address.
    const PHONE: &str = "192.0.2.21";
    const OTHER: &str = "198.51.100.7";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn auth(algorithms: Vec<Algorithm>) -> DigestAuth {
        DigestAuth::new("r", algorithms, [7; 32], Duration::from_secs(300))
    }

    fn answer(alg: Algorithm, nonce: &str, nc: &str, password: &str, uri: &str) -> String {
        answer_as("1001", alg, nonce, nc, password, uri)
    }

    fn answer_as(
        user: &str,
        alg: Algorithm,
        nonce: &str,
        nc: &str,
        password: &str,
        uri: &str,
    ) -> String {
        let ha1 = alg.hex(&format!("{user}:r:{password}"));
        let ha2 = alg.hex(&format!("REGISTER:{uri}"));
        let resp = alg.hex(&format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"r\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm={}, cnonce=\"abc\", qop=auth, nc={nc}",
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

    /// The verdict on a REGISTER to `sip:r` from `from` carrying `header`.
    fn check(a: &mut DigestAuth, now: Instant, from: &str, header: &str) -> Verdict {
        a.verify(
            now,
            ip(from),
            "REGISTER",
            "sip:r",
            [header].into_iter(),
            lookup,
        )
    }

    #[test]
    fn sha256_and_md5_replay_and_stale() {
        let t0 = Instant::now();
        let mut a = auth(vec![Algorithm::Sha256, Algorithm::Md5]);
        let ch = a.challenge(t0, ip(PHONE), false);
        assert!(ch[0].contains("algorithm=SHA-256"));
        let n = nonce_of(&ch[0]);
        for (alg, nc) in [
            (Algorithm::Sha256, "00000001"),
            (Algorithm::Md5, "00000002"),
        ] {
            let h = answer(alg, &n, nc, "demo1001", "sip:r");
            assert_eq!(
                check(&mut a, t0, PHONE, &h),
                Verdict::Ok("1001".into(), alg)
            );
            // A replay: fresh challenge, never accepted, never a failure.
            assert_eq!(check(&mut a, t0, PHONE, &h), Verdict::Stale, "replay");
        }
        let wrong = answer(Algorithm::Sha256, &n, "00000009", "nope", "sip:r");
        assert_eq!(check(&mut a, t0, PHONE, &wrong), Verdict::Refuse);
        let wrong_uri = answer(Algorithm::Sha256, &n, "0000000a", "demo1001", "sip:other");
        assert_eq!(check(&mut a, t0, PHONE, &wrong_uri), Verdict::Malformed);
        let late = answer(Algorithm::Sha256, &n, "0000000b", "demo1001", "sip:r");
        let later = t0 + Duration::from_secs(301);
        assert_eq!(check(&mut a, later, PHONE, &late), Verdict::Stale);
        assert!(a.challenge(later, ip(PHONE), true)[0].ends_with("stale=true"));
        assert_eq!(
            check(&mut a, t0, PHONE, "Digest username=\"x"),
            Verdict::Malformed
        );
        assert_eq!(
            a.verify(t0, ip(PHONE), "REGISTER", "sip:r", [].into_iter(), lookup),
            Verdict::Challenge
        );
    }

    #[test]
    fn only_a_fresh_nonce_issued_to_the_sender_can_end_in_refuse() {
        let t0 = Instant::now();
        let mut a = auth(vec![Algorithm::Md5]);
        let n = nonce_of(&a.challenge(t0, ip(PHONE), false)[0]);
        let right = |nc| answer(Algorithm::Md5, &n, nc, "demo1001", "sip:r");
        let wrong = |nc| answer(Algorithm::Md5, &n, nc, "guess", "sip:r");
        // Issued to PHONE, answered from OTHER: stale, right or wrong.
        assert_eq!(check(&mut a, t0, OTHER, &right("00000001")), Verdict::Stale);
        assert_eq!(check(&mut a, t0, OTHER, &wrong("00000002")), Verdict::Stale);
        // A nonce we never issued, and one past its lifetime: stale.
        let invented = answer(
            Algorithm::Md5,
            "0123456789abcdef0123456789abcdef",
            "00000001",
            "guess",
            "sip:r",
        );
        assert_eq!(check(&mut a, t0, PHONE, &invented), Verdict::Stale);
        let late = t0 + Duration::from_secs(301);
        assert_eq!(
            check(&mut a, late, PHONE, &wrong("00000003")),
            Verdict::Stale
        );
        // From PHONE, in time: a wrong password is a refusal, and an
        // unknown user gets exactly the same verdict.
        assert_eq!(
            check(&mut a, t0, PHONE, &wrong("00000004")),
            Verdict::Refuse
        );
        let nobody = answer_as("9999", Algorithm::Md5, &n, "00000005", "demo1001", "sip:r");
        assert_eq!(check(&mut a, t0, PHONE, &nobody), Verdict::Refuse);
        // None of that used the nonce up for its phone.
        assert_eq!(
            check(&mut a, t0, PHONE, &right("00000006")),
            Verdict::Ok("1001".into(), Algorithm::Md5)
        );
        // The binding is to the IP: an IPv4-mapped IPv6 source is the same.
        assert_eq!(
            check(&mut a, t0, "::ffff:192.0.2.21", &right("00000007")),
            Verdict::Ok("1001".into(), Algorithm::Md5)
        );
    }

    #[test]
    fn only_qop_auth_is_accepted() {
        let t0 = Instant::now();
        let mut a = auth(vec![Algorithm::Md5]);
        let n = nonce_of(&a.challenge(t0, ip(PHONE), false)[0]);
        let ha1 = Algorithm::Md5.hex("1001:r:demo1001");
        let ha2 = Algorithm::Md5.hex("REGISTER:sip:r");
        // RFC 2069 (no qop): right password, yet never accepted, however often.
        let rfc2069 = format!(
            "Digest username=\"1001\", realm=\"r\", nonce=\"{n}\", uri=\"sip:r\", response=\"{}\"",
            Algorithm::Md5.hex(&format!("{ha1}:{n}:{ha2}"))
        );
        for _ in 0..3 {
            assert_eq!(check(&mut a, t0, PHONE, &rfc2069), Verdict::Challenge);
        }
        // auth-int (not offered): challenged too.
        let int = answer(Algorithm::Md5, &n, "00000001", "demo1001", "sip:r")
            .replace("qop=auth", "qop=auth-int");
        assert_eq!(check(&mut a, t0, PHONE, &int), Verdict::Challenge);
        // qop=auth without nc, or an nc that is not 8LHEX: malformed.
        let ok = answer(Algorithm::Md5, &n, "00000001", "demo1001", "sip:r");
        for bad in [
            ok.replace(", nc=00000001", ""),
            ok.replace("nc=00000001", "nc=+0000001"),
        ] {
            assert_eq!(check(&mut a, t0, PHONE, &bad), Verdict::Malformed);
        }
        // The nonce was not used up by any of them.
        assert_eq!(
            check(&mut a, t0, PHONE, &ok),
            Verdict::Ok("1001".into(), Algorithm::Md5)
        );
    }

    #[test]
    fn an_absent_algorithm_is_md5_and_only_where_md5_is_configured() {
        let t0 = Instant::now();
        // The MD5 answer with its `algorithm=MD5` token left out.
        let bare = |n: &str, nc: &str| {
            answer(Algorithm::Md5, n, nc, "demo1001", "sip:r").replace(", algorithm=MD5", "")
        };
        // SHA-256 only: neither the bare nor the explicit MD5 answer passes.
        let mut sha = auth(vec![Algorithm::Sha256]);
        let n = nonce_of(&sha.challenge(t0, ip(PHONE), false)[0]);
        assert_eq!(
            check(&mut sha, t0, PHONE, &bare(&n, "00000001")),
            Verdict::Challenge,
            "downgrade"
        );
        let md5 = answer(Algorithm::Md5, &n, "00000002", "demo1001", "sip:r");
        assert_eq!(
            check(&mut sha, t0, PHONE, &md5),
            Verdict::Challenge,
            "not configured"
        );
        let unknown = answer(Algorithm::Sha256, &n, "00000003", "demo1001", "sip:r")
            .replace("algorithm=SHA-256", "algorithm=SHA-512-256");
        assert_eq!(
            check(&mut sha, t0, PHONE, &unknown),
            Verdict::Challenge,
            "not offered"
        );
        let right = answer(Algorithm::Sha256, &n, "00000004", "demo1001", "sip:r");
        assert_eq!(
            check(&mut sha, t0, PHONE, &right),
            Verdict::Ok("1001".into(), Algorithm::Sha256)
        );
        // With MD5 configured the bare answer is MD5 and passes.
        let mut both = auth(vec![Algorithm::Sha256, Algorithm::Md5]);
        let n = nonce_of(&both.challenge(t0, ip(PHONE), false)[0]);
        assert_eq!(
            check(&mut both, t0, PHONE, &bare(&n, "00000001")),
            Verdict::Ok("1001".into(), Algorithm::Md5)
        );
    }
}
