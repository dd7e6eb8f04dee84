//! When a campaign may call: its calendar (Europe/Rome), or any time.

use centralino_flows::calendar::{Calendar, rome_offset};

use crate::UnixSeconds;

/// How far ahead the next opening is looked for: past it (a calendar of
/// holidays only) the window counts as closed for good.
const HORIZON_DAYS: i64 = 400;

/// A campaign's calling window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window(pub Option<Calendar>);

impl Window {
    /// Whether a citizen may be dialled at `t`.
    pub fn open(&self, t: UnixSeconds) -> bool {
        self.0.as_ref().is_none_or(|c| c.open(t))
    }

    /// The first time at or after `t` when the window is open (to the
    /// second: `t` itself when open, else the start of an opening minute);
    /// `None` when it does not open within 400 days.
    pub fn next_open(&self, t: UnixSeconds) -> Option<UnixSeconds> {
        let Some(cal) = &self.0 else {
            return Some(t);
        };
        let first_start = cal.hours.iter().map(|&(a, _)| a).min()?;
        if cal.days & 0x7f == 0 {
            return None;
        }
        let mut t = t;
        // Each turn moves to the next range start of the day or to the
        // next day's first: bounded by the horizon.
        let turns = (cal.hours.len() as i64 + 1) * HORIZON_DAYS;
        for _ in 0..turns {
            if cal.open(t) {
                return Some(t);
            }
            let off = rome_offset(t);
            let local = t + off;
            let day = local.div_euclid(86_400);
            let minute = (local.rem_euclid(86_400) / 60) as u32;
            let next_local = match cal
                .hours
                .iter()
                .map(|&(a, _)| a)
                .filter(|&a| a > minute)
                .min()
            {
                Some(a) => day * 86_400 + i64::from(a) * 60,
                None => (day + 1) * 86_400 + i64::from(first_start) * 60,
            };
            // Local → UTC with the offset in force then (the change of
            // offset happens at night, far from any calling hour).
            let guess = next_local - off;
            let next = next_local - rome_offset(guess);
            t = if next > t { next } else { t + 60 };
        }
        None
    }
}
