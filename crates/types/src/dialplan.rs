//! A tenant's outbound dial plan: which numbers Centralino may dial through
//! a trunk (callbacks from the API, the IVR and virtual hold, transfers,
//! campaigns). Every number is brought to E.164 first, so `0039…`, `+39…`
//! and a national `06…` are judged alike; then a blocked prefix refuses it,
//! and it must match an allowed prefix.
//!
//! The default plan is Italy's: geographic (`+390`) and mobile (`+393`)
//! numbers, with special, premium and dial-up ranges blocked even if a
//! tenant widens `allow`. International numbers are never dialled unless
//! a tenant allows their prefix. A paid trunk that dials what a caller
//! keyed in is the classic toll-fraud path; this is the one gate on it.

use std::fmt;

/// Prefixes the default plan blocks (E.164): `+3900`, no Italian number
/// (`00` is the international prefix: a carrier that turns `+39` back
/// into a national number would dial abroad, e.g. `00 232…` Sierra
/// Leone, a revenue-share favourite), short and special codes (`1xx`:
/// emergency, directory, old premium 144/166/178), operator services
/// (`4xx`), internet dial-up (`70x`) and premium rate (`89x`).
pub const ITALY_BLOCKED: [&str; 5] = ["+3900", "+391", "+394", "+3970", "+3989"];

/// Prefixes the default plan allows: Italian geographic and mobile numbers.
pub const ITALY_ALLOWED: [&str; 2] = ["+390", "+393"];

/// Why a number was refused (a bounded metric label with [`Self::label`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a phone number: an optional `+` and 6 to 15 digits.
    Malformed,
    /// On the blocked list (premium, special, dial-up...).
    Blocked,
    /// Outside every allowed prefix (international, unusual ranges).
    NotAllowed,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Blocked => "blocked",
            Self::NotAllowed => "not_allowed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "not a phone number (an optional + and 6 to 15 digits)",
            Self::Blocked => "a premium or special number the dial plan blocks",
            Self::NotAllowed => "outside the numbers the dial plan allows",
        })
    }
}

/// One tenant's dial plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialPlan {
    /// The country code national numbers belong to (`39`).
    pub country_code: String,
    /// E.164 prefixes (with `+`) a number must start with.
    pub allow: Vec<String>,
    /// E.164 prefixes (with `+`) refused even when allowed.
    pub block: Vec<String>,
}

impl Default for DialPlan {
    fn default() -> Self {
        Self::italy()
    }
}

impl DialPlan {
    /// Italian geographic and mobile numbers only.
    pub fn italy() -> Self {
        Self {
            country_code: "39".into(),
            allow: ITALY_ALLOWED.iter().map(|s| (*s).to_owned()).collect(),
            block: ITALY_BLOCKED.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The number in E.164 (`+` and digits) when the plan lets it be
    /// dialled.
    pub fn check(&self, number: &str) -> Result<String, Refusal> {
        let e164 = normalize(number, &self.country_code).ok_or(Refusal::Malformed)?;
        if self.block.iter().any(|p| e164.starts_with(p.as_str())) {
            return Err(Refusal::Blocked);
        }
        if !self.allow.iter().any(|p| e164.starts_with(p.as_str())) {
            return Err(Refusal::NotAllowed);
        }
        Ok(e164)
    }
}

/// Whether `p` is a usable prefix for `allow`/`block`: `+` and 1 to 15
/// digits.
pub fn valid_prefix(p: &str) -> bool {
    p.strip_prefix('+')
        .is_some_and(|d| (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `number` in E.164: `+CC…` as it is, `00CC…` as `+CC…`, anything else
/// as a national number of `country_code`. `None` unless it is an
/// optional `+` and 6 to 15 digits before and after.
pub fn normalize(number: &str, country_code: &str) -> Option<String> {
    let (plus, digits) = match number.strip_prefix('+') {
        Some(d) => (true, d),
        None => (false, number),
    };
    if !(6..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let e164 = if plus {
        format!("+{digits}")
    } else if let Some(intl) = digits.strip_prefix("00") {
        format!("+{intl}")
    } else {
        format!("+{country_code}{digits}")
    };
    let n = e164.len() - 1;
    (6..=15).contains(&n).then_some(e164)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_italian_plan_dials_geographic_and_mobile_numbers_in_any_spelling() {
        let plan = DialPlan::italy();
        for n in [
            "+390612345678",
            "00390612345678",
            "0612345678",
            "+393331234567",
            "3331234567",
        ] {
            assert!(plan.check(n).is_ok(), "{n}");
        }
        assert_eq!(plan.check("0612345678").unwrap(), "+390612345678");
        assert_eq!(plan.check("00393331234567").unwrap(), "+393331234567");
    }

    #[test]
    fn premium_special_and_foreign_numbers_are_refused() {
        let plan = DialPlan::italy();
        // TEST-MATRIX D18's numbers, in each spelling a caller could key.
        for n in [
            "+39899123456",
            "899123456",
            "0039899123456",
            "+39892123456",
            "+39144123456",
            "144123456",
            "+39166123456",
            "+39178123456",
            "+39412345678",
            "+39700123456",
            "112112112",
            // Abroad behind `+39` (an outside review's finding).
            "+390023276123456",
            "003900232761234",
        ] {
            assert_eq!(plan.check(n), Err(Refusal::Blocked), "{n}");
        }
        for n in [
            "00900123456",
            "+88234123456",
            "0088234123456",
            "+4420712345678",
            "+33123456789",
        ] {
            assert_eq!(plan.check(n), Err(Refusal::NotAllowed), "{n}");
        }
        for n in [
            "",
            "+",
            "12345",
            "+39 06 1234",
            "06-1234567",
            "1234567890123456",
            "+1234567890123456",
            "sip:1@x",
        ] {
            assert_eq!(plan.check(n), Err(Refusal::Malformed), "{n:?}");
        }
    }

    #[test]
    fn a_wider_plan_still_blocks_and_a_foreign_prefix_can_be_allowed() {
        let plan = DialPlan {
            allow: vec!["+39".into(), "+41".into()],
            ..DialPlan::italy()
        };
        assert_eq!(plan.check("+39899123456"), Err(Refusal::Blocked));
        assert!(plan.check("+41441234567").is_ok());
        assert!(plan.check("+39551234567").is_ok());
        assert_eq!(plan.check("+33123456789"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn prefixes_are_a_plus_and_digits() {
        assert!(valid_prefix("+39"));
        assert!(!valid_prefix("39"));
        assert!(!valid_prefix("+"));
        assert!(!valid_prefix("+3x"));
    }
}
