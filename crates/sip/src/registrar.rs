//! The registrar for operators' phones (RFC 3261 §10.3), sans-IO.
//!
//! It answers REGISTER (after digest authentication), keeps each operator's
//! bindings with their expiry and the flow they came from, and reports when an
//! operator gains a first binding (login) or loses the last one (logout).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::auth::{Algorithm, Credentials, DigestAuth, Verdict};
use crate::message::Message;
use crate::segmap::SegMap;
use crate::throttle::{BanScope, Throttle, ThrottleConfig};
use crate::txn::Flow;
use crate::uri::{self, Scheme};

/// Registrar settings.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// Shortest accepted expiry (423 below it).
    pub min_expires: Duration,
    /// Longest granted expiry (longer requests are cut to it).
    pub max_expires: Duration,
    /// Expiry when the request names none.
    pub default_expires: Duration,
    /// Most bindings per operator.
    pub max_contacts: usize,
    /// Brute-force protection of the digest check.
    pub throttle: ThrottleConfig,
    /// `User-Agent` prefixes (case-insensitive) of phones that fail on a
    /// SHA-256 challenge instead of picking the MD5 one beside it: they
    /// are offered MD5 alone (where the operator may use it).
    pub md5_user_agents: Vec<String>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: Duration::from_secs(60),
            max_expires: Duration::from_secs(3600),
            default_expires: Duration::from_secs(3600),
            max_contacts: 10,
            throttle: ThrottleConfig::default(),
            md5_user_agents: vec!["baresip".into()],
        }
    }
}

/// One contact of an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The contact URI as registered (URI parameters kept).
    pub contact: String,
    /// Where the REGISTER came from: calls go back along this flow.
    pub flow: Flow,
    /// When it lapses.
    pub expires_at: Instant,
    /// Registered at, for "most recent first".
    pub registered_at: Instant,
    /// The `Path` the REGISTER came through (RFC 3327): the edge proxies
    /// requests to this contact must visit, as `Route` values in order.
    pub path: Vec<String>,
}

/// Most `Path` entries kept per binding (edge proxies in a row).
const MAX_PATH: usize = 8;
/// The longest `Path` entry kept.
const MAX_PATH_ENTRY: usize = 512;

/// A change of an operator's registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegEvent {
    /// First binding: the operator is reachable.
    Login(String),
    /// Last binding gone (unregister or expiry).
    Logout(String),
}

/// The outcome of a REGISTER, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegOutcome {
    /// 200 OK.
    Ok,
    /// 401 challenge.
    Challenged,
    /// 403 wrong credentials or AOR.
    Refused,
    /// 400/423 bad request.
    Invalid,
    /// 403 unheard: the source is banned after too many failures.
    Banned,
}

/// What [`Registrar::authenticate`] decided.
#[derive(Debug)]
pub enum Auth {
    /// Valid, as this user.
    Ok(String),
    /// Credentials to ask for: this 401.
    Challenge(Box<Message>),
    /// A wrong password, another account's, or a banned source or user:
    /// 403, the same for all.
    Refused,
    /// A malformed `Authorization` (400).
    Malformed,
}

/// A ban the registrar just started (for the log and the metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanStarted {
    /// One user from the address, or the whole address.
    pub scope: BanScope,
    /// The source address.
    pub address: IpAddr,
    /// The user the failing request named.
    pub user: String,
    /// How long.
    pub length: Duration,
}

/// Registrar state.
pub struct Registrar {
    cfg: RegistrarConfig,
    auth: DigestAuth,
    users: HashMap<String, Credentials>,
    /// Segmented as everything that grows with the traffic (see
    /// `segmap`): 120,000 operators registering after a restart.
    bindings: SegMap<String, Vec<Binding>>,
    /// When each operator's earliest binding lapses: exactly one entry per
    /// operator with bindings, kept in step by [`Self::rearm`] whenever
    /// those change. A heap with one push per REGISTER grew without bound
    /// under frequent refreshes (a pushed entry stays until its time comes,
    /// and a heap cannot drop one a refresh made obsolete); an ordered set
    /// can, so its size is [`Self::registered`] and `poll_timeout` never
    /// wakes the driver for a binding already refreshed.
    expiries: BTreeSet<(Instant, String)>,
    /// The entry each operator has in `expiries`, to find it again.
    armed: SegMap<String, Instant>,
    events: Vec<RegEvent>,
    throttle: Throttle,
    bans: Vec<BanStarted>,
    /// What each operator's phones answered with, by `User-Agent` (at most
    /// [`LEARNED_PER_USER`] per operator): a phone that did SHA-256 is
    /// offered SHA-256 alone from then on (nobody can talk it down to
    /// MD5), one that did MD5 gets MD5 at once.
    learned: SegMap<String, VecDeque<(String, Algorithm)>>,
    /// REGISTER dialogs (Call-ID) just offered several algorithms, to see
    /// a phone that comes back without an answer: it could not handle one
    /// of them, and is offered the last (MD5) alone: when, at which CSeq,
    /// and the entry's number in `offered_order`.
    offered_several: SegMap<String, (Instant, u32, u64)>,
    /// The same dialogs, oldest first, each with its entry's number: a
    /// dialog answered (so forgotten) and offered several again later is
    /// queued again under a new number, and its first entry, when it
    /// reaches the front, must not take the live one with it.
    offered_order: VecDeque<(u64, String)>,
    offered_next: u64,
    /// Most entries in `offered_order` ([`MAX_OFFERED`]; smaller in tests).
    max_offered: usize,
}

/// Phones remembered per operator (a desk phone, a softphone, a spare).
const LEARNED_PER_USER: usize = 4;
/// REGISTER dialogs remembered for the fallback challenge.
const MAX_OFFERED: usize = 65_536;
/// The longest `User-Agent` remembered.
const MAX_USER_AGENT: usize = 128;

impl Registrar {
    /// A registrar for these users (username → credentials).
    pub fn new(
        cfg: RegistrarConfig,
        auth: DigestAuth,
        users: HashMap<String, Credentials>,
    ) -> Self {
        Self {
            throttle: Throttle::new(cfg.throttle),
            cfg,
            auth,
            users,
            bindings: SegMap::default(),
            expiries: BTreeSet::new(),
            armed: SegMap::default(),
            events: Vec::new(),
            bans: Vec::new(),
            learned: SegMap::default(),
            offered_several: SegMap::default(),
            offered_order: VecDeque::new(),
            offered_next: 0,
            max_offered: MAX_OFFERED,
        }
    }

    /// The algorithms to challenge `user`'s REGISTER with, most preferred
    /// first. The policy, in order:
    /// 1. only those the operator has a secret for (a tenant that refuses
    ///    MD5 has no MD5 secret): an unknown user gets them all, like a
    ///    known one, so the challenge tells a scanner nothing;
    /// 2. what this operator's phone (`User-Agent`) answered with before;
    /// 3. MD5 alone for a `User-Agent` known to fail on SHA-256;
    /// 4. MD5 alone when this REGISTER dialog was just offered several
    ///    and came back unanswered (a phone we did not know of);
    /// 5. all of them, SHA-256 first (RFC 8760 §2.4).
    ///
    /// No step lets anyone but the phone itself lower what the phone is
    /// offered, and a nonce only takes the algorithms it was offered with.
    fn offer(&self, now: Instant, user: &str, req: &Message) -> Vec<Algorithm> {
        let configured = self.auth.algorithms();
        let mut base: Vec<Algorithm> = match self.users.get(user) {
            Some(c) => configured
                .iter()
                .copied()
                .filter(|&a| c.ha1(a).is_some())
                .collect(),
            None => configured.to_vec(),
        };
        if base.is_empty() {
            base = configured.to_vec();
        }
        if base.len() < 2 {
            return base;
        }
        let ua = user_agent(req);
        if let Some(alg) = self
            .learned
            .get(user)
            .and_then(|l| l.iter().find(|(u, _)| *u == ua))
            .map(|(_, a)| *a)
            .filter(|a| base.contains(a))
        {
            return vec![alg];
        }
        let lower = ua.to_ascii_lowercase();
        let hinted = self
            .cfg
            .md5_user_agents
            .iter()
            .any(|p| !p.is_empty() && lower.starts_with(&p.to_ascii_lowercase()));
        let unanswered = self
            .offered_several
            .get(&*req.call_id)
            .is_some_and(|&(at, cseq, _)| {
                // A new request (a retransmission is not the phone giving
                // up), while the challenge could still have been answered.
                req.cseq > cseq && now.saturating_duration_since(at) <= self.auth.lifetime()
            });
        if (hinted || unanswered) && base.contains(&Algorithm::Md5) {
            return vec![Algorithm::Md5];
        }
        base
    }

    /// Remembers what `user`'s phone answered with.
    fn learn(&mut self, user: &str, req: &Message, alg: Algorithm) {
        let ua = user_agent(req);
        let list = self
            .learned
            .get_or_insert_with(user.to_owned(), VecDeque::new);
        list.retain(|(u, _)| *u != ua);
        if list.len() >= LEARNED_PER_USER {
            list.pop_front();
        }
        list.push_back((ua, alg));
        self.offered_several.remove(&*req.call_id);
    }

    /// The live bindings of an operator, most recent first.
    pub fn bindings(&self, user: &str) -> &[Binding] {
        self.bindings.get(user).map_or(&[], Vec::as_slice)
    }

    /// Takes a new table of users' secrets (a reload): the next REGISTER
    /// is checked against it, so an old password stops working at once,
    /// and the bindings made with it are dropped (the operator is logged
    /// out until their phone registers with the new one): a password is
    /// changed because it leaked, and a phone registered with a stolen one
    /// must not keep being offered calls until its binding expires.
    pub fn set_users(&mut self, users: HashMap<String, Credentials>) {
        let secrets = |c: &Credentials| (c.ha1_md5.clone(), c.ha1_sha256.clone());
        let changed: Vec<String> = self
            .users
            .iter()
            .filter(|(u, c)| users.get(*u).map(secrets) != Some(secrets(c)))
            .map(|(u, _)| u.clone())
            .collect();
        // What a phone answered with is forgotten when its secrets change
        // (a tenant that now refuses MD5, a new password).
        for u in &changed {
            self.learned.remove(u);
        }
        self.users = users;
        for u in &changed {
            self.drop_bindings(u);
        }
    }

    /// Number of operators with at least one binding.
    pub fn registered(&self) -> usize {
        self.bindings.len()
    }

    /// Removes every binding of `user` (their phone stopped answering):
    /// the operator is logged out.
    pub fn drop_bindings(&mut self, user: &str) {
        if self.bindings.remove(user).is_some() {
            self.events.push(RegEvent::Logout(user.to_owned()));
        }
        self.rearm(user);
    }

    /// Puts `user`'s entry in `expiries` at their earliest binding's
    /// expiry, or removes it when they have none. Called after every
    /// change to `user`'s bindings.
    fn rearm(&mut self, user: &str) {
        if let Some(at) = self.armed.remove(user) {
            self.expiries.remove(&(at, user.to_owned()));
        }
        let next = self
            .bindings
            .get(user)
            .and_then(|list| list.iter().map(|b| b.expires_at).min());
        if let Some(at) = next {
            self.expiries.insert((at, user.to_owned()));
            self.armed.insert(user.to_owned(), at);
        }
    }

    /// Drains the bans started since the last call.
    pub fn drain_bans(&mut self) -> std::vec::Drain<'_, BanStarted> {
        self.bans.drain(..)
    }

    /// Bans in force: (user-from-address, whole address).
    pub fn banned_counts(&self, now: Instant) -> (usize, usize) {
        self.throttle.banned_counts(now)
    }

    /// Forgets idle failure counters (now and then).
    pub fn sweep_throttle(&mut self, now: Instant) {
        self.throttle.sweep(now);
    }

    /// Counts a failed authentication; records the bans it starts.
    fn failed(&mut self, now: Instant, flow: Flow, user: &str) {
        let address = flow.remote.ip();
        for (scope, length) in self.throttle.failure(now, address, user) {
            self.bans.push(BanStarted {
                scope,
                address,
                user: user.to_owned(),
                length,
            });
        }
    }

    /// Drains login/logout events.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, RegEvent> {
        self.events.drain(..)
    }

    /// The digest authenticator (also used for other requests that need auth).
    pub fn auth_mut(&mut self) -> &mut DigestAuth {
        &mut self.auth
    }

    /// Checks the credentials of a request from `source` against the
    /// operator table (only nonces challenged to `source` can pass).
    pub fn verify(&mut self, now: Instant, source: IpAddr, req: &Message) -> Verdict {
        let users = &self.users;
        let method = req.method().as_str().to_owned();
        self.auth.verify(
            now,
            source,
            &method,
            req.request_uri().unwrap_or_default(),
            req.headers_named("Authorization"),
            |u| users.get(u).cloned(),
        )
    }

    /// Authenticates a request other than REGISTER (an INVITE from an
    /// operator's phone) as `user` (its From), under the same throttle as
    /// REGISTER: a banned address or user is refused unheard, with the
    /// same 403 as a wrong password; a wrong digest, or another account's,
    /// counts as a failure (and may start a ban: see [`Self::drain_bans`]).
    pub fn authenticate(&mut self, now: Instant, flow: Flow, req: &Message, user: &str) -> Auth {
        let ip = flow.remote.ip();
        if self.throttle.banned(now, ip, user) {
            return Auth::Refused;
        }
        match self.verify(now, ip, req) {
            Verdict::Ok(u, _) if u == user => {
                self.throttle.success(ip, &u);
                Auth::Ok(u)
            }
            Verdict::Ok(..) | Verdict::Refuse => {
                self.failed(now, flow, user);
                Auth::Refused
            }
            v @ (Verdict::Challenge | Verdict::Stale) => Auth::Challenge(Box::new(
                self.challenge_user(now, ip, req, v == Verdict::Stale, user),
            )),
            Verdict::Malformed => Auth::Malformed,
        }
    }

    /// Answers a REGISTER that came in on `flow`.
    pub fn handle_register(
        &mut self,
        now: Instant,
        flow: Flow,
        req: &Message,
    ) -> (Message, RegOutcome) {
        let to = req.header("To").and_then(uri::parse_name_addr);
        let Some(to) =
            to.filter(|t| matches!(uri::classify(t.uri), Some(Scheme::Sip | Scheme::Sips)))
        else {
            return (
                req.response(400, "Bad Request", Some("reg")),
                RegOutcome::Invalid,
            );
        };
        let aor_user = uri::user(to.uri).unwrap_or_default().to_owned();
        if self.throttle.banned(now, flow.remote.ip(), &aor_user) {
            // Refused unheard: the same 403 as a wrong password, so a ban
            // tells a guesser nothing, and a right password fails too.
            return (
                req.response(403, "Forbidden", Some("reg")),
                RegOutcome::Banned,
            );
        }
        let user = match self.verify(now, flow.remote.ip(), req) {
            Verdict::Ok(u, alg) => {
                if u == aor_user {
                    self.learn(&u, req, alg);
                }
                u
            }
            // Neither says the password was wrong (a foreign, invented or
            // expired nonce, a replay, no qop): a fresh challenge, never
            // counted, so a blind sender cannot ban anybody.
            v @ (Verdict::Challenge | Verdict::Stale) => {
                let stale = v == Verdict::Stale;
                return (
                    self.challenge(now, flow.remote.ip(), req, stale),
                    RegOutcome::Challenged,
                );
            }
            // A wrong digest on a fresh nonce we sent to this address: the
            // one failure the throttle counts.
            Verdict::Refuse => {
                self.failed(now, flow, &aor_user);
                return (
                    req.response(403, "Forbidden", Some("reg")),
                    RegOutcome::Refused,
                );
            }
            Verdict::Malformed => {
                return (
                    req.response(400, "Bad Request", Some("reg")),
                    RegOutcome::Invalid,
                );
            }
        };
        if user != aor_user {
            self.failed(now, flow, &aor_user);
            return (
                req.response(403, "Forbidden", Some("reg")),
                RegOutcome::Refused,
            );
        }
        self.throttle.success(flow.remote.ip(), &user);

        let header_expires = req
            .header("Expires")
            .map(|e| parse_expires(e).unwrap_or(self.cfg.max_expires));
        let contacts: Vec<&str> = req
            .headers_named("Contact")
            .flat_map(uri::split_list)
            .collect();
        let was_registered = self.bindings.contains_key(&user);
        // The edge proxies it came through (RFC 3327). Each must be a
        // name-addr; more, or longer, than we keep is a bad request
        // rather than a path cut short.
        let path: Vec<String> = req
            .headers_named("Path")
            .flat_map(uri::split_list)
            .map(str::to_owned)
            .collect();
        if path.len() > MAX_PATH
            || path
                .iter()
                .any(|p| p.len() > MAX_PATH_ENTRY || uri::parse_name_addr(p).is_none())
        {
            return (
                req.response(400, "Bad Request", Some("reg")),
                RegOutcome::Invalid,
            );
        }

        if contacts.contains(&"*") {
            if contacts.len() != 1 || header_expires != Some(Duration::ZERO) {
                return (
                    req.response(400, "Bad Request", Some("reg")),
                    RegOutcome::Invalid,
                );
            }
            self.bindings.remove(&user);
        } else {
            // Every contact is checked before any binding changes, so a
            // REGISTER is applied whole or not at all: a 400 or 423 on a
            // later contact used to leave the earlier ones bound (and
            // without a Login event).
            let mut changes = Vec::with_capacity(contacts.len());
            for c in &contacts {
                let Some(na) = uri::parse_name_addr(c) else {
                    return (
                        req.response(400, "Bad Request", Some("reg")),
                        RegOutcome::Invalid,
                    );
                };
                let expires = match na.param("expires") {
                    Some(Some(v)) => parse_expires(v).unwrap_or(self.cfg.max_expires),
                    _ => header_expires.unwrap_or(self.cfg.default_expires),
                };
                if !expires.is_zero() && expires < self.cfg.min_expires {
                    let mut r = req.response(423, "Interval Too Brief", Some("reg"));
                    r.push("Min-Expires", &self.cfg.min_expires.as_secs().to_string());
                    return (r, RegOutcome::Invalid);
                }
                changes.push((na.uri, expires.min(self.cfg.max_expires)));
            }
            for (contact, expires) in changes {
                self.put(now, &user, contact, flow, expires, &path);
            }
        }
        self.changed(&user, was_registered);
        let mut resp = req.response(200, "OK", Some("reg"));
        for b in self.bindings(&user) {
            let left = b.expires_at.saturating_duration_since(now).as_secs();
            resp.push("Contact", &format!("<{}>;expires={left}", b.contact));
        }
        // The path is echoed to a UA that said it knows the extension
        // (RFC 3327 §5.3); it is used either way.
        if !path.is_empty() && req.supports("path") {
            for p in &path {
                resp.push("Path", p);
            }
        }
        (resp, RegOutcome::Ok)
    }

    /// Binds (`expires` non-zero) or unbinds `contact` for `user` without
    /// a digest: a browser desktop whose session the node authenticated
    /// itself (the operator's SIP credentials at the desk's log-in). The
    /// same events as a REGISTER. `false`: no such operator.
    pub fn bind_trusted(
        &mut self,
        now: Instant,
        user: &str,
        contact: &str,
        flow: Flow,
        expires: Duration,
    ) -> bool {
        if !self.users.contains_key(user) {
            return false;
        }
        let was_registered = self.bindings.contains_key(user);
        self.put(now, user, contact, flow, expires, &[]);
        self.changed(user, was_registered);
        true
    }

    /// Binds `contact` (newest first, the oldest dropped past
    /// `max_contacts`), or unbinds it when `expires` is zero.
    fn put(
        &mut self,
        now: Instant,
        user: &str,
        contact: &str,
        flow: Flow,
        expires: Duration,
        path: &[String],
    ) {
        let list = self.bindings.get_or_insert_with(user.to_owned(), Vec::new);
        list.retain(|b| b.contact != contact);
        if !expires.is_zero() {
            if list.len() >= self.cfg.max_contacts {
                list.pop();
            }
            list.insert(
                0,
                Binding {
                    contact: contact.to_owned(),
                    flow,
                    expires_at: now + expires,
                    registered_at: now,
                    path: path.to_vec(),
                },
            );
        }
        if list.is_empty() {
            self.bindings.remove(user);
        }
    }

    /// After `user`'s bindings changed: their expiry re-armed, and
    /// `Login`/`Logout` when they became (un)reachable.
    fn changed(&mut self, user: &str, was_registered: bool) {
        self.rearm(user);
        match (was_registered, self.bindings.contains_key(user)) {
            (false, true) => self.events.push(RegEvent::Login(user.to_owned())),
            (true, false) => self.events.push(RegEvent::Logout(user.to_owned())),
            _ => {}
        }
    }

    /// A 401 with a fresh challenge per algorithm [`Self::offer`] picks,
    /// for a request from `to` (only `to` may answer it).
    pub fn challenge(&mut self, now: Instant, to: IpAddr, req: &Message, stale: bool) -> Message {
        let user = req
            .header("To")
            .and_then(uri::parse_name_addr)
            .and_then(|t| uri::user(t.uri).map(str::to_owned))
            .unwrap_or_default();
        self.challenge_user(now, to, req, stale, &user)
    }

    /// [`Self::challenge`] for a request that names its user elsewhere
    /// than in `To` (an INVITE from an operator's phone: `From`).
    pub fn challenge_user(
        &mut self,
        now: Instant,
        to: IpAddr,
        req: &Message,
        stale: bool,
        user: &str,
    ) -> Message {
        let offer = self.offer(now, user, req);
        let mut r = req.response(401, "Unauthorized", Some("reg"));
        let challenges = self.auth.challenge_with(now, to, stale, &offer);
        if challenges.len() > 1 {
            let number = match self.offered_several.get(&*req.call_id) {
                Some(&(.., number)) => number,
                None => {
                    // The oldest entry goes, and its dialog with it only
                    // if it is that dialog's live entry.
                    if self.offered_order.len() >= self.max_offered
                        && let Some((number, old)) = self.offered_order.pop_front()
                        && self
                            .offered_several
                            .get(&old)
                            .is_some_and(|&(.., n)| n == number)
                    {
                        self.offered_several.remove(&old);
                    }
                    self.offered_next += 1;
                    self.offered_order
                        .push_back((self.offered_next, req.call_id.to_string()));
                    self.offered_next
                }
            };
            self.offered_several
                .insert(req.call_id.to_string(), (now, req.cseq, number));
        }
        for c in challenges {
            r.push("WWW-Authenticate", &c);
        }
        r
    }

    /// When bindings next lapse.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Removes lapsed bindings; emits `Logout` for operators left with none.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, user)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            if let Some(list) = self.bindings.get_mut(&user) {
                list.retain(|b| b.expires_at > now);
                if list.is_empty() {
                    self.bindings.remove(&user);
                    self.events.push(RegEvent::Logout(user.clone()));
                }
            }
            // Re-armed after `now` (what is left lapses later) or removed:
            // the loop ends.
            self.rearm(&user);
        }
    }
}

/// The request's `User-Agent`, cut to [`MAX_USER_AGENT`] bytes (on a
/// character boundary).
fn user_agent(req: &Message) -> String {
    let ua = req.header("User-Agent").unwrap_or_default().trim();
    let mut end = ua.len().min(MAX_USER_AGENT);
    while !ua.is_char_boundary(end) {
        end -= 1;
    }
    ua[..end].to_owned()
}

/// `delta-seconds`; absurdly large values (RFC 4475 scalar02) saturate.
fn parse_expires(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(
        v.parse::<u64>().unwrap_or(u64::MAX / 4),
    ))
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;
    use crate::auth::Algorithm;
    use crate::guard::{Framed, Limits, parse_datagram};
    use crate::message::Transport;
    use std::net::SocketAddr;

    const REALM: &str = "r";

    fn registrar() -> Registrar {
        let mut users = HashMap::new();
        users.insert(
            "1001".to_owned(),
            Credentials::from_password("1001", REALM, "pw"),
        );
        let auth = DigestAuth::new(
            REALM,
            vec![Algorithm::Md5],
            [1; 32],
            Duration::from_secs(300),
        );
        Registrar::new(RegistrarConfig::default(), auth, users)
    }

    /// The address the operators' phones register from (a call centre's
    /// NAT), and an attacker's.
    const NAT: &str = "192.0.2.21";
    const ATTACKER: &str = "198.51.100.66";

    fn flow() -> Flow {
        flow_from(NAT)
    }

    fn flow_from(ip: &str) -> Flow {
        Flow {
            transport: Transport::Udp,
            remote: SocketAddr::new(ip.parse().unwrap(), 5060),
            local: "192.0.2.1:5060".parse().unwrap(),
            conn: 0,
        }
    }

    /// A REGISTER for 1001 with `contacts`, `expires` and an optional
    /// `Authorization` line (with its CRLF).
    fn request(n: u32, contacts: &str, expires: Option<u32>, auth: &str) -> Box<Message> {
        request_as("1001", n, contacts, expires, auth)
    }

    fn request_as(
        user: &str,
        n: u32,
        contacts: &str,
        expires: Option<u32>,
        auth: &str,
    ) -> Box<Message> {
        let expires = expires
            .map(|e| format!("Expires: {e}\r\n"))
            .unwrap_or_default();
        let text = format!(
            "REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.21;branch=z9hG4bK{n}{}\r\nFrom: <sip:{user}@r>;tag=t\r\nTo: <sip:{user}@r>\r\nCall-ID: reg\r\nCSeq: {n} REGISTER\r\nContact: {contacts}\r\n{expires}{auth}Content-Length: 0\r\n\r\n",
            auth.len()
        );
        match parse_datagram(text.as_bytes(), &Limits::default()) {
            Ok(Framed::Message(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    /// The nonce of a 401's first challenge.
    fn nonce_of(challenge: &Message) -> String {
        assert_eq!(challenge.code(), 401);
        let www = challenge.header("WWW-Authenticate").unwrap();
        www.split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    }

    /// An MD5 `Authorization` line for 1001 with `password`; `qop` false
    /// gives the RFC 2069 form (no qop, cnonce or nc).
    fn authorization(nonce: &str, nc: u32, password: &str, qop: bool) -> String {
        authorization_as("1001", nonce, nc, password, qop)
    }

    fn authorization_as(user: &str, nonce: &str, nc: u32, password: &str, qop: bool) -> String {
        let ha1 = Algorithm::Md5.hex(&format!("{user}:{REALM}:{password}"));
        let ha2 = Algorithm::Md5.hex("REGISTER:sip:r");
        if qop {
            let resp = Algorithm::Md5.hex(&format!("{ha1}:{nonce}:{nc:08x}:cn:auth:{ha2}"));
            format!(
                "Authorization: Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:r\", response=\"{resp}\", algorithm=MD5, cnonce=\"cn\", qop=auth, nc={nc:08x}\r\n"
            )
        } else {
            let resp = Algorithm::Md5.hex(&format!("{ha1}:{nonce}:{ha2}"));
            format!(
                "Authorization: Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:r\", response=\"{resp}\", algorithm=MD5\r\n"
            )
        }
    }

    /// Sends REGISTER with `contacts` and `expires`, answering the challenge.
    fn register(
        r: &mut Registrar,
        now: Instant,
        n: u32,
        contacts: &str,
        expires: Option<u32>,
    ) -> Message {
        let (challenge, _) = r.handle_register(now, flow(), &request(n, contacts, expires, ""));
        let auth = authorization(&nonce_of(&challenge), 1, "pw", true);
        r.handle_register(now, flow(), &request(n, contacts, expires, &auth))
            .0
    }

    #[test]
    fn several_contacts_refresh_and_unregister() {
        let t0 = Instant::now();
        let mut r = registrar();
        let ok = register(
            &mut r,
            t0,
            1,
            "<sip:1001@192.0.2.21:5060>, <sip:1001@192.0.2.22:5060>;expires=120",
            None,
        );
        assert_eq!(ok.code(), 200);
        assert_eq!(r.bindings("1001").len(), 2);
        assert_eq!(
            r.drain_events().collect::<Vec<_>>(),
            vec![RegEvent::Login("1001".into())]
        );
        assert_eq!(ok.headers_named("Contact").count(), 2);

        // Refresh one: no second login, expiry moves.
        let t1 = t0 + Duration::from_secs(100);
        register(&mut r, t1, 2, "<sip:1001@192.0.2.22:5060>", Some(600));
        assert_eq!(r.drain_events().count(), 0);
        let b = r
            .bindings("1001")
            .iter()
            .find(|b| b.contact.ends_with("22:5060"))
            .unwrap();
        assert_eq!(b.expires_at, t1 + Duration::from_secs(600));

        // Remove one contact with expires=0: still logged in.
        register(&mut r, t1, 3, "<sip:1001@192.0.2.21:5060>;expires=0", None);
        assert_eq!(r.bindings("1001").len(), 1);
        assert_eq!(r.drain_events().count(), 0);

        // "*" with Expires: 0 removes everything: logout.
        let ok = register(&mut r, t1, 4, "*", Some(0));
        assert_eq!(ok.code(), 200);
        assert!(r.bindings("1001").is_empty());
        assert_eq!(
            r.drain_events().collect::<Vec<_>>(),
            vec![RegEvent::Logout("1001".into())]
        );
    }

    #[test]
    fn a_new_password_drops_the_bindings_made_with_the_old_one() {
        // An outside review found it: a phone registered with a leaked
        // password went on being offered calls until its binding expired.
        let t0 = Instant::now();
        let mut r = registrar();
        let ok = register(&mut r, t0, 1, "<sip:1001@192.0.2.21:5060>", None);
        assert_eq!(ok.code(), 200);
        let _ = r.drain_events().count();
        // The same secrets (a reload that changed something else): kept.
        let mut users = HashMap::new();
        users.insert(
            "1001".to_owned(),
            Credentials::from_password("1001", REALM, "pw"),
        );
        r.set_users(users.clone());
        assert_eq!(r.bindings("1001").len(), 1);
        assert_eq!(r.drain_events().count(), 0);
        // A new password: logged out at once.
        users.insert(
            "1001".to_owned(),
            Credentials::from_password("1001", REALM, "new"),
        );
        r.set_users(users);
        assert!(r.bindings("1001").is_empty());
        assert_eq!(
            r.drain_events().collect::<Vec<_>>(),
            vec![RegEvent::Logout("1001".into())]
        );
        assert_eq!(r.poll_timeout(), None, "no expiry left for it");
    }

    #[test]
    fn interval_too_brief_and_expiry() {
        let t0 = Instant::now();
        let mut r = registrar();
        let resp = register(&mut r, t0, 1, "<sip:1001@192.0.2.21:5060>", Some(10));
        assert_eq!(resp.code(), 423);
        assert_eq!(resp.header("Min-Expires"), Some("60"));
        let resp = register(&mut r, t0, 2, "<sip:1001@192.0.2.21:5060>", Some(99_999));
        assert_eq!(resp.code(), 200);
        assert!(
            resp.header("Contact").unwrap().ends_with("expires=3600"),
            "capped at max"
        );
        let _ = r.drain_events().count();
        r.handle_timeout(t0 + Duration::from_secs(3599));
        assert_eq!(r.bindings("1001").len(), 1);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(3600)));
        r.handle_timeout(t0 + Duration::from_secs(3600));
        assert!(r.bindings("1001").is_empty());
        assert_eq!(
            r.drain_events().collect::<Vec<_>>(),
            vec![RegEvent::Logout("1001".into())]
        );
    }

    #[test]
    fn star_without_zero_expires_is_refused() {
        let mut r = registrar();
        let resp = register(&mut r, Instant::now(), 1, "*", None);
        assert_eq!(resp.code(), 400);
    }

    #[test]
    fn a_replayed_authorization_registers_nothing_new() {
        let t0 = Instant::now();
        let mut r = registrar();
        let (challenge, _) =
            r.handle_register(t0, flow(), &request(1, "<sip:a@192.0.2.21>", None, ""));
        let nonce = nonce_of(&challenge);
        // The attack: one header without qop, sent again with other Contacts.
        let no_qop = authorization(&nonce, 1, "pw", false);
        for (n, contact) in [(2, "<sip:b@192.0.2.66>"), (3, "<sip:c@192.0.2.66>")] {
            let (resp, outcome) =
                r.handle_register(t0, flow(), &request(n, contact, None, &no_qop));
            assert_eq!(resp.code(), 401, "no qop: challenged, never accepted");
            assert_eq!(outcome, RegOutcome::Challenged);
        }
        assert!(r.bindings("1001").is_empty());
        // With qop the first use counts, the same header again does not.
        let with_qop = authorization(&nonce, 1, "pw", true);
        let (resp, _) = r.handle_register(
            t0,
            flow(),
            &request(4, "<sip:a@192.0.2.21>", None, &with_qop),
        );
        assert_eq!(resp.code(), 200);
        let (resp, _) = r.handle_register(
            t0,
            flow(),
            &request(5, "<sip:b@192.0.2.66>", None, &with_qop),
        );
        assert_ne!(resp.code(), 200, "replay refused");
        let contacts: Vec<_> = r
            .bindings("1001")
            .iter()
            .map(|b| b.contact.as_str())
            .collect();
        assert_eq!(contacts, ["sip:a@192.0.2.21"]);
        // A higher nonce-count on the same nonce is a new request.
        let next = authorization(&nonce, 2, "pw", true);
        let (resp, _) =
            r.handle_register(t0, flow(), &request(6, "<sip:a@192.0.2.21>", None, &next));
        assert_eq!(resp.code(), 200);
    }

    #[test]
    fn answers_without_qop_are_not_counted_as_failures() {
        let t0 = Instant::now();
        let mut r = registrar();
        for n in 0..25 {
            let (challenge, _) =
                r.handle_register(t0, flow(), &request(n, "<sip:a@192.0.2.21>", None, ""));
            let wrong = authorization(&nonce_of(&challenge), 1, "guess", false);
            let (resp, _) =
                r.handle_register(t0, flow(), &request(n, "<sip:a@192.0.2.21>", None, &wrong));
            assert_eq!(resp.code(), 401);
        }
        assert_eq!(r.drain_bans().count(), 0);
        assert_eq!(
            register(&mut r, t0, 99, "<sip:a@192.0.2.21>", None).code(),
            200
        );
    }

    const CONTACT: &str = "<sip:1001@192.0.2.21:5062>";

    /// TEST-MATRIX D20: blind guesses with invented nonces, from the NAT
    /// address, for the operator and for many users, past both limits.
    #[test]
    fn blind_failures_with_invented_nonces_ban_nobody() {
        let t0 = Instant::now();
        let mut r = registrar();
        for n in 0..40 {
            let invented = format!("{:032x}", n + 1);
            let (user, password) = if n % 2 == 0 {
                ("1001".to_owned(), "guess")
            } else {
                (format!("{}", 2000 + n), "guess")
            };
            let auth = authorization_as(&user, &invented, 1, password, true);
            let (resp, outcome) =
                r.handle_register(t0, flow(), &request_as(&user, n, CONTACT, None, &auth));
            assert_eq!((resp.code(), outcome), (401, RegOutcome::Challenged), "{n}");
            assert!(
                resp.header("WWW-Authenticate")
                    .unwrap()
                    .ends_with("stale=true")
            );
        }
        assert_eq!(r.drain_bans().count(), 0);
        assert_eq!(r.banned_counts(t0), (0, 0));
        assert_eq!(register(&mut r, t0, 99, CONTACT, None).code(), 200);
    }

    /// TEST-MATRIX D20: the attacker fetches real nonces at its own address
    /// and forges the NAT address as the source of its guesses.
    #[test]
    fn failures_on_nonces_issued_to_another_address_ban_nobody() {
        let t0 = Instant::now();
        let mut r = registrar();
        for n in 0..25 {
            let (challenge, _) =
                r.handle_register(t0, flow_from(ATTACKER), &request(n, CONTACT, None, ""));
            let wrong = authorization(&nonce_of(&challenge), 1, "guess", true);
            let (resp, outcome) = r.handle_register(t0, flow(), &request(n, CONTACT, None, &wrong));
            assert_eq!((resp.code(), outcome), (401, RegOutcome::Challenged), "{n}");
        }
        assert_eq!(r.drain_bans().count(), 0);
        assert_eq!(register(&mut r, t0, 99, CONTACT, None).code(), 200);
    }

    #[test]
    fn a_nonce_answered_from_another_address_is_stale() {
        let t0 = Instant::now();
        let mut r = registrar();
        let (challenge, _) = r.handle_register(t0, flow(), &request(1, CONTACT, None, ""));
        let right = authorization(&nonce_of(&challenge), 1, "pw", true);
        let (resp, _) =
            r.handle_register(t0, flow_from(ATTACKER), &request(2, CONTACT, None, &right));
        assert_eq!(resp.code(), 401);
        assert!(
            resp.header("WWW-Authenticate")
                .unwrap()
                .ends_with("stale=true")
        );
        assert!(r.bindings("1001").is_empty());
        let (resp, _) = r.handle_register(t0, flow(), &request(3, CONTACT, None, &right));
        assert_eq!(resp.code(), 200);
    }

    /// TEST-MATRIX D4: wrong passwords on nonces the guesser was sent
    /// still ban it, per user (5) and per address (20); the operator's
    /// own phone elsewhere is not affected.
    #[test]
    fn wrong_passwords_on_our_nonces_still_ban() {
        let t0 = Instant::now();
        let mut r = registrar();
        let mut bans = Vec::new();
        let mut last_nonce = String::new();
        for n in 0..5 {
            let (challenge, _) =
                r.handle_register(t0, flow_from(ATTACKER), &request(n, CONTACT, None, ""));
            last_nonce = nonce_of(&challenge);
            let wrong = authorization(&last_nonce, 1, "guess", true);
            let (resp, outcome) =
                r.handle_register(t0, flow_from(ATTACKER), &request(n, CONTACT, None, &wrong));
            assert_eq!((resp.code(), outcome), (403, RegOutcome::Refused));
            bans.extend(r.drain_bans());
        }
        assert_eq!(
            bans,
            [BanStarted {
                scope: BanScope::User,
                address: ATTACKER.parse().unwrap(),
                user: "1001".into(),
                length: Duration::from_secs(300),
            }]
        );
        // The right password during the ban still fails.
        let right = authorization(&last_nonce, 2, "pw", true);
        let (resp, outcome) =
            r.handle_register(t0, flow_from(ATTACKER), &request(9, CONTACT, None, &right));
        assert_eq!((resp.code(), outcome), (403, RegOutcome::Banned));
        assert_eq!(register(&mut r, t0, 10, CONTACT, None).code(), 200);
        // Twenty users guessed from one address: the address is banned.
        let other = "198.51.100.67";
        for n in 0..20 {
            let user = format!("{}", 2000 + n);
            let (challenge, _) = r.handle_register(
                t0,
                flow_from(other),
                &request_as(&user, n, CONTACT, None, ""),
            );
            let wrong = authorization_as(&user, &nonce_of(&challenge), 1, "guess", true);
            let (resp, _) = r.handle_register(
                t0,
                flow_from(other),
                &request_as(&user, n, CONTACT, None, &wrong),
            );
            assert_eq!(resp.code(), 403);
        }
        let bans: Vec<_> = r.drain_bans().map(|b| b.scope).collect();
        assert_eq!(bans, [BanScope::Address]);
    }

    #[test]
    fn a_register_with_one_bad_contact_changes_nothing() {
        let t0 = Instant::now();
        let mut r = registrar();
        let resp = register(
            &mut r,
            t0,
            1,
            "<sip:1001@192.0.2.21:5062>, <sip:1001@192.0.2.21:5064>;expires=10",
            None,
        );
        assert_eq!(resp.code(), 423);
        assert!(r.bindings("1001").is_empty());
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.drain_events().count(), 0);
    }

    #[test]
    fn ten_thousand_refreshes_keep_one_expiry_entry_and_expire_on_time() {
        let t0 = Instant::now();
        let mut r = registrar();
        let mut now = t0;
        for n in 0..10_000 {
            // As the engine drives it: timers first, then the REGISTER.
            r.handle_timeout(now);
            let resp = register(&mut r, now, n, CONTACT, Some(3600));
            assert_eq!(resp.code(), 200);
            assert!(
                r.expiries.len() <= 1,
                "{} entries after {n}",
                r.expiries.len()
            );
            now += Duration::from_millis(100);
        }
        let last = now - Duration::from_millis(100);
        assert_eq!(
            r.drain_events().collect::<Vec<_>>(),
            [RegEvent::Login("1001".into())]
        );
        assert_eq!(r.poll_timeout(), Some(last + Duration::from_secs(3600)));
        r.handle_timeout(last + Duration::from_secs(3599));
        assert_eq!(r.bindings("1001").len(), 1);
        assert_eq!(r.drain_events().count(), 0);
        r.handle_timeout(last + Duration::from_secs(3600));
        assert!(r.bindings("1001").is_empty());
        assert_eq!(
            r.drain_events().collect::<Vec<_>>(),
            [RegEvent::Logout("1001".into())]
        );
        assert_eq!((r.expiries.len(), r.poll_timeout()), (0, None));
    }

    #[test]
    fn each_binding_of_an_operator_lapses_at_its_own_time() {
        let t0 = Instant::now();
        let mut r = registrar();
        let two = "<sip:1001@192.0.2.21:5062>;expires=120, <sip:1001@192.0.2.21:5064>;expires=600";
        assert_eq!(register(&mut r, t0, 1, two, None).code(), 200);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(120)));
        r.handle_timeout(t0 + Duration::from_secs(120));
        let left: Vec<_> = r
            .bindings("1001")
            .iter()
            .map(|b| b.contact.as_str())
            .collect();
        assert_eq!(left, ["sip:1001@192.0.2.21:5064"]);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(600)));
        // Dropped by the engine (the phone stopped answering): nothing left to fire.
        r.drop_bindings("1001");
        assert_eq!(
            (r.expiries.len(), r.armed.len(), r.poll_timeout()),
            (0, 0, None)
        );
        let _ = r.drain_events().count();
        // Unregistered with "*": likewise.
        assert_eq!(register(&mut r, t0, 2, CONTACT, None).code(), 200);
        assert_eq!(register(&mut r, t0, 3, "*", Some(0)).code(), 200);
        assert_eq!(
            (r.expiries.len(), r.armed.len(), r.poll_timeout()),
            (0, 0, None)
        );
    }

    /// A registrar offering SHA-256 and MD5 (the default configuration),
    /// with 1001 (both secrets) and 2001 (SHA-256 only: a tenant that
    /// refuses MD5).
    fn registrar_both() -> Registrar {
        let mut users = HashMap::new();
        users.insert(
            "1001".to_owned(),
            Credentials::from_password("1001", REALM, "pw"),
        );
        let mut sha_only = Credentials::from_password("2001", REALM, "pw");
        sha_only.ha1_md5 = None;
        users.insert("2001".to_owned(), sha_only);
        let auth = DigestAuth::new(
            REALM,
            vec![Algorithm::Sha256, Algorithm::Md5],
            [1; 32],
            Duration::from_secs(300),
        );
        Registrar::new(RegistrarConfig::default(), auth, users)
    }

    /// A REGISTER as `user` from a phone calling itself `ua`.
    fn from_phone(user: &str, n: u32, ua: &str, auth: &str) -> Box<Message> {
        let text = format!(
            "REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.21;branch=z9hG4bK{n}\r\nFrom: <sip:{user}@r>;tag=t\r\nTo: <sip:{user}@r>\r\nCall-ID: reg-{}\r\nCSeq: {n} REGISTER\r\nUser-Agent: {ua}\r\nContact: <sip:{user}@192.0.2.21>\r\n{auth}Content-Length: 0\r\n\r\n",
            ua.len()
        );
        match parse_datagram(text.as_bytes(), &Limits::default()) {
            Ok(Framed::Message(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    /// The algorithms a 401 offers, in order.
    fn offered(resp: &Message) -> Vec<String> {
        assert_eq!(resp.code(), 401);
        resp.headers_named("WWW-Authenticate")
            .map(|w| {
                w.split("algorithm=")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// `alg`'s answer for `user` (password `pw`) to the first challenge.
    fn answer(user: &str, resp: &Message, alg: Algorithm, nc: u32) -> String {
        let nonce = nonce_of(resp);
        let ha1 = alg.hex(&format!("{user}:{REALM}:pw"));
        let ha2 = alg.hex("REGISTER:sip:r");
        let r = alg.hex(&format!("{ha1}:{nonce}:{nc:08x}:cn:auth:{ha2}"));
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:r\", response=\"{r}\", algorithm={}, cnonce=\"cn\", qop=auth, nc={nc:08x}\r\n",
            alg.token()
        )
    }

    #[test]
    fn a_phone_is_offered_what_it_can_answer_and_never_talked_down() {
        let t0 = Instant::now();
        let mut r = registrar_both();
        // An unknown phone: both, SHA-256 first. It answers SHA-256.
        let (c, _) = r.handle_register(t0, flow(), &from_phone("1001", 1, "Deskphone/2", ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
        let ok = answer("1001", &c, Algorithm::Sha256, 1);
        let (resp, _) = r.handle_register(t0, flow(), &from_phone("1001", 2, "Deskphone/2", &ok));
        assert_eq!(resp.code(), 200);
        // From then on SHA-256 alone; an MD5 answer to it is challenged
        // again (not a wrong password, not a registration).
        let (c, _) = r.handle_register(t0, flow(), &from_phone("1001", 3, "Deskphone/2", ""));
        assert_eq!(offered(&c), ["SHA-256"]);
        let md5 = answer("1001", &c, Algorithm::Md5, 1);
        let (resp, outcome) =
            r.handle_register(t0, flow(), &from_phone("1001", 4, "Deskphone/2", &md5));
        assert_eq!((resp.code(), outcome), (401, RegOutcome::Challenged));
        assert_eq!(offered(&resp), ["SHA-256"]);

        // A User-Agent known to fail on SHA-256 (baresip): MD5 alone.
        let ua = "baresip v1.0.0 (x86_64/linux)";
        let (c, _) = r.handle_register(t0, flow(), &from_phone("1001", 1, ua, ""));
        assert_eq!(offered(&c), ["MD5"]);
        let ok = answer("1001", &c, Algorithm::Md5, 1);
        let (resp, _) = r.handle_register(t0, flow(), &from_phone("1001", 2, ua, &ok));
        assert_eq!(resp.code(), 200);

        // An operator without an MD5 secret (the tenant refuses MD5) is
        // offered SHA-256 alone, whatever the phone says it is.
        let (c, _) = r.handle_register(t0, flow(), &from_phone("2001", 1, ua, ""));
        assert_eq!(offered(&c), ["SHA-256"]);
        let md5 = answer("2001", &c, Algorithm::Md5, 1);
        let (resp, _) = r.handle_register(t0, flow(), &from_phone("2001", 2, ua, &md5));
        assert_eq!(offered(&resp), ["SHA-256"], "never MD5");
        assert!(r.bindings("2001").is_empty());
        // An unknown user is offered what a known one with both secrets
        // is: the challenge tells a scanner nothing.
        let (c, _) = r.handle_register(t0, flow(), &from_phone("9999", 1, "Scan/1", ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
    }

    #[test]
    fn a_phone_that_comes_back_without_an_answer_is_offered_md5_alone() {
        let t0 = Instant::now();
        let mut r = registrar_both();
        let ua = "Quirky/1";
        let (c, _) = r.handle_register(t0, flow(), &from_phone("1001", 1, ua, ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
        // The same request again (a retransmission) changes nothing.
        let (c, _) = r.handle_register(t0, flow(), &from_phone("1001", 1, ua, ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
        // A new request in the same dialog without an answer: the phone
        // gave up on the pair. MD5 alone, and it registers.
        let later = t0 + Duration::from_secs(50);
        let (c, _) = r.handle_register(later, flow(), &from_phone("1001", 2, ua, ""));
        assert_eq!(offered(&c), ["MD5"]);
        let ok = answer("1001", &c, Algorithm::Md5, 1);
        let (resp, _) = r.handle_register(later, flow(), &from_phone("1001", 3, ua, &ok));
        assert_eq!(resp.code(), 200);
        // Remembered: its next registration is MD5 at once.
        let (c, _) = r.handle_register(later, flow(), &from_phone("1001", 4, ua, ""));
        assert_eq!(offered(&c), ["MD5"]);
        // New secrets (a reload) forget what was learned.
        let mut users = HashMap::new();
        users.insert(
            "1001".to_owned(),
            Credentials::from_password("1001", REALM, "new"),
        );
        r.set_users(users);
        let (c, _) = r.handle_register(later, flow(), &from_phone("1001", 9, "Other/1", ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
    }

    /// A dialog answered, then offered several again (another user on the
    /// same Call-ID) is queued twice; when its first entry is evicted the
    /// live one stays, and the phone still gets its MD5 fallback.
    #[test]
    fn an_evicted_old_entry_leaves_the_dialogs_live_one() {
        let t0 = Instant::now();
        let mut r = registrar_both();
        r.max_offered = 2;
        // Call-ID reg-8 (the helper names it by the User-Agent's length).
        let (c, _) = r.handle_register(t0, flow(), &from_phone("1001", 1, "Quirky/1", ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
        let ok = answer("1001", &c, Algorithm::Sha256, 1);
        let (resp, _) = r.handle_register(t0, flow(), &from_phone("1001", 2, "Quirky/1", &ok));
        assert_eq!(resp.code(), 200, "answered: the dialog is forgotten");
        // Another user on the same dialog is offered both again.
        let (c, _) = r.handle_register(t0, flow(), &from_phone("9999", 3, "Quirky/2", ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
        assert_eq!(r.offered_order.len(), 2, "queued twice");
        // A third dialog (reg-3) evicts the first entry, not the live one.
        let (c, _) = r.handle_register(t0, flow(), &from_phone("1001", 1, "Y/1", ""));
        assert_eq!(offered(&c), ["SHA-256", "MD5"]);
        assert_eq!(r.offered_order.len(), 2, "bounded");
        assert!(r.offered_several.contains_key("reg-8"));
        // reg-8 comes back without an answer: MD5 alone.
        let (c, _) = r.handle_register(t0, flow(), &from_phone("9999", 4, "Quirky/2", ""));
        assert_eq!(offered(&c), ["MD5"]);
        // A fourth dialog evicts reg-8's live entry: then it is forgotten.
        let _ = r.handle_register(t0, flow(), &from_phone("1001", 1, "Zz/1", ""));
        assert!(!r.offered_several.contains_key("reg-8"));
        assert!(r.offered_several.len() <= 2 && r.offered_order.len() <= 2);
    }

    #[test]
    fn a_register_through_edge_proxies_keeps_its_path_for_the_binding() {
        let t0 = Instant::now();
        let mut r = registrar();
        let path = "Path: <sip:edge1.example;lr>, <sip:edge2.example;lr>\r\n";
        let contact = "<sip:1001@10.0.0.9:5060>";
        let (challenge, _) = r.handle_register(t0, flow(), &request(1, contact, None, path));
        let auth = authorization(&nonce_of(&challenge), 1, "pw", true);
        let with = |extra: &str| format!("{path}{extra}{auth}");
        // Without `Supported: path` it is used, not echoed (RFC 3327 §5.3).
        let (ok, _) = r.handle_register(t0, flow(), &request(1, contact, None, &with("")));
        assert_eq!(ok.code(), 200);
        assert_eq!(ok.headers_named("Path").count(), 0);
        assert_eq!(
            r.bindings("1001")[0].path,
            ["<sip:edge1.example;lr>", "<sip:edge2.example;lr>"]
        );
        let auth2 = authorization(&nonce_of(&challenge), 2, "pw", true);
        let (ok, _) = r.handle_register(
            t0,
            flow(),
            &request(
                2,
                contact,
                None,
                &format!("{path}Supported: path\r\n{auth2}"),
            ),
        );
        assert_eq!(ok.headers_named("Path").count(), 2);
        // A path that is not a list of addresses, or too long, is refused
        // whole.
        let auth3 = authorization(&nonce_of(&challenge), 3, "pw", true);
        let (bad, _) = r.handle_register(
            t0,
            flow(),
            &request(
                3,
                contact,
                None,
                &format!("Path: not an address\r\n{auth3}"),
            ),
        );
        assert_eq!(bad.code(), 400);
        let many = format!("Path: {}\r\n", ["<sip:e;lr>"; 9].join(", "));
        let auth4 = authorization(&nonce_of(&challenge), 4, "pw", true);
        let (bad, _) = r.handle_register(
            t0,
            flow(),
            &request(4, contact, None, &format!("{many}{auth4}")),
        );
        assert_eq!(bad.code(), 400);
        assert_eq!(r.bindings("1001")[0].path.len(), 2, "unchanged");
    }
}
