//! Brute-force protection for digest authentication (REGISTER): failures
//! are counted per (source address, user) and per source address in fixed
//! one-minute windows; past a limit the key is banned, doubling on each
//! ban after the first (up to a day). A banned request is refused before
//! its credentials are checked, so a right password during the ban still
//! fails. Keys are per address: an attacker guessing operator 1001's
//! password from one address never locks 1001 out of their own phone.
//! Only proven failures are counted: a wrong digest on a fresh nonce that
//! was sent to the failing address (see [`crate::auth`]), so a blind or
//! spoofed sender cannot start a ban.
//!
//! Sans-IO: time comes in as `now`. Memory is bounded: at most
//! [`MAX_TRACKED`] keys; expired ones are swept first, and past the bound
//! new (address, user) pairs are no longer tracked (the per-address
//! counter still is, so a flood of user names still bans its source).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failure window.
const WINDOW: Duration = Duration::from_secs(60);
/// Longest ban.
const MAX_BAN: Duration = Duration::from_secs(24 * 3600);
/// Most keys tracked per table.
pub const MAX_TRACKED: usize = 65_536;

/// Limits; a zero limit disables that key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures per minute from one address for one user before a ban.
    pub per_user: u32,
    /// Failures per minute from one address (any users) before a ban.
    pub per_address: u32,
    /// First ban; each later one of the same key doubles it.
    pub ban: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_user: 5,
            per_address: 20,
            ban: Duration::from_secs(300),
        }
    }
}

/// What a ban covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanScope {
    /// One user from one address.
    User,
    /// Every user from one address.
    Address,
}

impl BanScope {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Address => "address",
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    window_start: Option<Instant>,
    failures: u32,
    banned_until: Option<Instant>,
    /// Bans so far (the next one lasts `ban × 2^bans`).
    bans: u32,
}

impl Entry {
    /// Counts a failure at `now`; `Some(duration)` when it starts a ban.
    fn fail(&mut self, now: Instant, limit: u32, ban: Duration) -> Option<Duration> {
        if limit == 0 {
            return None;
        }
        match self.window_start {
            Some(s) if now.saturating_duration_since(s) < WINDOW => self.failures += 1,
            _ => {
                self.window_start = Some(now);
                self.failures = 1;
            }
        }
        if self.failures < limit {
            return None;
        }
        let length = ban.saturating_mul(1u32 << self.bans.min(16)).min(MAX_BAN);
        self.bans += 1;
        self.failures = 0;
        self.window_start = None;
        self.banned_until = Some(now + length);
        Some(length)
    }

    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|u| now < u)
    }

    /// Nothing worth keeping: no ban in force, no recent failure. A key
    /// that was banned is kept a day, so a repeat offender's ban doubles.
    fn idle(&self, now: Instant) -> bool {
        let window_over = self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW);
        let ban_forgotten = self
            .banned_until
            .is_none_or(|u| now.saturating_duration_since(u) >= MAX_BAN);
        window_over && ban_forgotten
    }
}

/// The failure counters and bans.
#[derive(Debug)]
pub struct Throttle {
    cfg: ThrottleConfig,
    users: HashMap<(IpAddr, String), Entry>,
    addresses: HashMap<IpAddr, Entry>,
    /// Last sweep forced by a full table: at most one a second, so a flood
    /// of new keys costs no full scan per request.
    full_swept: Option<Instant>,
}

impl Throttle {
    /// Empty counters.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            users: HashMap::new(),
            addresses: HashMap::new(),
            full_swept: None,
        }
    }

    /// Whether a request from `ip` for `user` is refused unheard.
    pub fn banned(&self, now: Instant, ip: IpAddr, user: &str) -> bool {
        self.addresses.get(&ip).is_some_and(|e| e.banned(now))
            || self
                .users
                .get(&(ip, user.to_owned()))
                .is_some_and(|e| e.banned(now))
    }

    /// A failed authentication from `ip` for `user`: the bans it starts.
    pub fn failure(&mut self, now: Instant, ip: IpAddr, user: &str) -> Vec<(BanScope, Duration)> {
        let mut started = Vec::new();
        let (per_user, per_address, ban) = (self.cfg.per_user, self.cfg.per_address, self.cfg.ban);
        let full = self.addresses.len() >= MAX_TRACKED || self.users.len() >= MAX_TRACKED;
        if full
            && self
                .full_swept
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.full_swept = Some(now);
            self.sweep(now);
        }
        if self.addresses.len() < MAX_TRACKED || self.addresses.contains_key(&ip) {
            let e = self.addresses.entry(ip).or_default();
            if let Some(d) = e.fail(now, per_address, ban) {
                started.push((BanScope::Address, d));
            }
        }
        let key = (ip, user.to_owned());
        if self.users.len() < MAX_TRACKED || self.users.contains_key(&key) {
            let e = self.users.entry(key).or_default();
            if let Some(d) = e.fail(now, per_user, ban) {
                started.push((BanScope::User, d));
            }
        }
        started
    }

    /// A successful authentication: that pair's failures are forgotten
    /// (its ban history stays).
    pub fn success(&mut self, ip: IpAddr, user: &str) {
        if let Some(e) = self.users.get_mut(&(ip, user.to_owned())) {
            e.failures = 0;
            e.window_start = None;
        }
    }

    /// Bans in force now, per scope (for the gauges).
    pub fn banned_counts(&self, now: Instant) -> (usize, usize) {
        (
            self.users.values().filter(|e| e.banned(now)).count(),
            self.addresses.values().filter(|e| e.banned(now)).count(),
        )
    }

    /// Drops what is no longer needed (call now and then).
    pub fn sweep(&mut self, now: Instant) {
        self.users.retain(|_, e| !e.idle(now));
        self.addresses.retain(|_, e| !e.idle(now));
    }

    /// Keys tracked (tests).
    pub fn tracked(&self) -> usize {
        self.users.len() + self.addresses.len()
    }
}

#[cfg(test)]
// Tests may read the clock and files: the crate itself stays sans-IO.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
mod tests {
    use super::*;

    const ATTACKER: &str = "192.0.2.66";
    const OPERATOR: &str = "192.0.2.21";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_wrong_passwords_ban_that_user_from_that_address_only() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleConfig::default());
        for i in 0..4 {
            assert!(
                t.failure(t0, ip(ATTACKER), "1001").is_empty(),
                "failure {i}"
            );
            assert!(!t.banned(t0, ip(ATTACKER), "1001"));
        }
        assert_eq!(
            t.failure(t0, ip(ATTACKER), "1001"),
            [(BanScope::User, Duration::from_secs(300))]
        );
        assert!(t.banned(t0, ip(ATTACKER), "1001"));
        // The operator's own phone, elsewhere, and other users are not.
        assert!(!t.banned(t0, ip(OPERATOR), "1001"));
        assert!(!t.banned(t0, ip(ATTACKER), "1002"));
        // Over after five minutes; the next ban doubles.
        let later = t0 + Duration::from_secs(301);
        assert!(!t.banned(later, ip(ATTACKER), "1001"));
        for _ in 0..4 {
            t.failure(later, ip(ATTACKER), "1001");
        }
        assert_eq!(
            t.failure(later, ip(ATTACKER), "1001"),
            [(BanScope::User, Duration::from_secs(600))]
        );
    }

    #[test]
    fn twenty_failures_over_many_users_ban_the_address() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleConfig::default());
        let mut bans = Vec::new();
        for u in 0..20 {
            bans.extend(t.failure(t0, ip(ATTACKER), &format!("{}", 1000 + u)));
        }
        assert_eq!(bans, [(BanScope::Address, Duration::from_secs(300))]);
        assert!(t.banned(t0, ip(ATTACKER), "1050"), "any user from there");
        assert!(!t.banned(t0, ip(OPERATOR), "1050"));
        assert_eq!(t.banned_counts(t0), (0, 1));
    }

    #[test]
    fn failures_spread_over_minutes_or_cleared_by_success_never_ban() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleConfig::default());
        for m in 0..10u64 {
            let now = t0 + Duration::from_secs(61 * m);
            for _ in 0..4 {
                assert!(t.failure(now, ip(OPERATOR), "1001").is_empty());
            }
        }
        // A phone with a stale password that then gets it right.
        for _ in 0..4 {
            t.failure(t0, ip(OPERATOR), "1002");
        }
        t.success(ip(OPERATOR), "1002");
        assert!(t.failure(t0, ip(OPERATOR), "1002").is_empty());
        // Disabled limits never ban.
        let mut off = Throttle::new(ThrottleConfig {
            per_user: 0,
            per_address: 0,
            ban: Duration::from_secs(300),
        });
        for _ in 0..100 {
            assert!(off.failure(t0, ip(ATTACKER), "1001").is_empty());
        }
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses_and_names() {
        let t0 = Instant::now();
        let mut t = Throttle::new(ThrottleConfig::default());
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            t.failure(t0, addr, &format!("u{i}"));
        }
        assert!(t.tracked() <= 2 * MAX_TRACKED);
        // A minute later everything is idle and goes.
        t.sweep(t0 + WINDOW);
        assert_eq!(t.tracked(), 0);
    }
}
