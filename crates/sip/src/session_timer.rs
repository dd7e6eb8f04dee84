//! Session timers (RFC 4028), the parts a B2BUA answering calls needs:
//! reading `Session-Expires` and `Min-SE`, and knowing whether the peer
//! supports the `timer` extension. Carriers' SBCs use them to learn that a
//! call is still alive: a call whose refreshes stop (a side that crashed
//! without a BYE) is ended instead of being billed for hours.

use std::time::Duration;

use crate::message::Message;

/// The smallest session interval we accept (RFC 4028 §4: at least 90 s;
/// its recommended default).
pub const MIN_SE: u32 = 90;

/// The longest session interval we keep (a day): a peer's longer one (or
/// longer `Min-SE`) is read as a day, which a UAS may answer with (RFC
/// 4028 §9 lets it lower the interval) and which keeps every timer
/// within reach.
pub const MAX_SE: u32 = 86_400;

/// The interval we ask for on the calls we place (RFC 4028 §4
/// recommends 1800 s).
pub const DEFAULT_INTERVAL: u32 = 1800;

/// Which side refreshes the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    /// The side that sent the INVITE.
    Uac,
    /// The side that answered it.
    Uas,
}

/// A `Session-Expires` value: `delta-seconds *(;se-params)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionExpires {
    /// The session interval, seconds.
    pub interval: u32,
    /// The `refresher` parameter, when given.
    pub refresher: Option<Refresher>,
}

/// Parses a `Session-Expires` (or compact `x`) value; `None` when it is
/// not `delta-seconds` followed by parameters.
pub fn parse_session_expires(v: &str) -> Option<SessionExpires> {
    let mut parts = v.split(';');
    let interval = delta_seconds(parts.next()?)?;
    let mut refresher = None;
    for p in parts {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("refresher") {
            refresher = match value.trim().to_ascii_lowercase().as_str() {
                "uac" => Some(Refresher::Uac),
                "uas" => Some(Refresher::Uas),
                _ => return None,
            };
        }
    }
    Some(SessionExpires {
        interval,
        refresher,
    })
}

/// `delta-seconds`, saturating (RFC 4028 allows any 32-bit value).
fn delta_seconds(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().ok()?.min(u64::from(u32::MAX)) as u32)
}

/// The `Min-SE` of a request, if any and well formed (at most
/// [`MAX_SE`]).
pub fn min_se(msg: &Message) -> Option<u32> {
    msg.header("Min-SE")
        .and_then(|v| delta_seconds(v.split(';').next().unwrap_or(v)))
        .map(|v| v.min(MAX_SE))
}

/// The request's `Session-Expires`, if any and well formed (a compact
/// `x` was given its long name when parsed), its interval at most
/// [`MAX_SE`].
pub fn session_expires(msg: &Message) -> Option<SessionExpires> {
    msg.header("Session-Expires")
        .and_then(parse_session_expires)
        .map(|se| SessionExpires {
            interval: se.interval.min(MAX_SE),
            ..se
        })
}

/// When the side that does not refresh gives up on a session of
/// `interval` refreshed at time zero (RFC 4028 §10: before it expires, by
/// the smaller of 32 s and a third of the interval).
pub fn expiry(interval: u32) -> Duration {
    let i = u64::from(interval);
    Duration::from_secs(i - (i / 3).min(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_expires_values() {
        assert_eq!(
            parse_session_expires("1800;refresher=uac"),
            Some(SessionExpires {
                interval: 1800,
                refresher: Some(Refresher::Uac)
            })
        );
        assert_eq!(
            parse_session_expires(" 90 ; REFRESHER = UAS;x=y"),
            Some(SessionExpires {
                interval: 90,
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(parse_session_expires("600").unwrap().refresher, None);
        for bad in ["", "abc", "-5", "1800;refresher=both", "12345678901"] {
            assert_eq!(parse_session_expires(bad), None, "{bad}");
        }
        assert_eq!(
            parse_session_expires("9999999999").unwrap().interval,
            u32::MAX
        );
        // What a request says is read as at most a day.
        let msg = crate::parse_message(
            b"INVITE sip:a@x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKs\r\nFrom: <sip:b@y>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: s1\r\nCSeq: 1 INVITE\r\nSession-Expires: 9999999999;refresher=uac\r\nMin-SE: 4000000000\r\nContent-Length: 0\r\n\r\n",
            &crate::Limits::default(),
            true,
        )
        .unwrap();
        assert_eq!(
            session_expires(&msg),
            Some(SessionExpires {
                interval: MAX_SE,
                refresher: Some(Refresher::Uac)
            })
        );
        assert_eq!(min_se(&msg), Some(MAX_SE));
        assert_eq!(expiry(90), Duration::from_secs(60));
        assert_eq!(expiry(1800), Duration::from_secs(1768));
    }
}
