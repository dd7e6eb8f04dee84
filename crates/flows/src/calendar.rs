//! Opening hours in Europe/Rome: weekdays, time ranges and holidays,
//! evaluated on a Unix time. The Italian offset is computed from the EU
//! rule (CET, CEST from the last Sunday of March 01:00 UTC to the last
//! Sunday of October 01:00 UTC), so no time-zone database is needed.

/// Seconds since the Unix epoch (UTC).
pub type UnixSeconds = i64;

pub use centralino_types::time::{civil_from_days, days_from_civil};

/// 0 = Monday … 6 = Sunday.
fn weekday(days: i64) -> u32 {
    // 1970-01-01 was a Thursday.
    (days + 3).rem_euclid(7) as u32
}

/// The last Sunday of `month` in `year`, as days since the epoch.
fn last_sunday(year: i64, month: u32) -> i64 {
    let last = days_from_civil(year, month + 1, 1) - 1;
    last - i64::from(weekday(last) + 1) % 7
}

/// Europe/Rome's offset from UTC at `t`, in seconds.
pub fn rome_offset(t: UnixSeconds) -> i64 {
    let (y, _, _) = civil_from_days(t.div_euclid(86_400));
    let start = last_sunday(y, 3) * 86_400 + 3600;
    let end = last_sunday(y, 10) * 86_400 + 3600;
    if (start..end).contains(&t) {
        7200
    } else {
        3600
    }
}

/// Local time in Rome: (year, month, day, weekday 0 = Monday, minute of day).
pub fn rome_local(t: UnixSeconds) -> (i64, u32, u32, u32, u32) {
    let local = t + rome_offset(t);
    let days = local.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        weekday(days),
        (local.rem_euclid(86_400) / 60) as u32,
    )
}

/// A closed day: every year (`MM-DD`) or once (`YYYY-MM-DD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holiday {
    /// Every year on this month and day.
    Yearly(u32, u32),
    /// This date only.
    Once(i64, u32, u32),
}

impl Holiday {
    /// Parses `MM-DD` or `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split('-').collect();
        let num = |p: &str| {
            p.parse::<u32>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
        };
        let valid = |m: u32, d: u32| (1..=12).contains(&m) && (1..=31).contains(&d);
        match parts.as_slice() {
            [m, d] => {
                let (m, d) = (num(m)?, num(d)?);
                valid(m, d).then_some(Self::Yearly(m, d))
            }
            [y, m, d] if y.len() == 4 => {
                let (y, m, d) = (i64::from(num(y)?), num(m)?, num(d)?);
                (valid(m, d) && civil_from_days(days_from_civil(y, m, d)) == (y, m, d))
                    .then_some(Self::Once(y, m, d))
            }
            _ => None,
        }
    }

    fn matches(self, y: i64, m: u32, d: u32) -> bool {
        match self {
            Self::Yearly(hm, hd) => (hm, hd) == (m, d),
            Self::Once(hy, hm, hd) => (hy, hm, hd) == (y, m, d),
        }
    }
}

/// Opening hours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calendar {
    /// Bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Minute-of-day ranges, start inclusive, end exclusive.
    pub hours: Vec<(u32, u32)>,
    /// Closed days.
    pub holidays: Vec<Holiday>,
}

impl Calendar {
    /// Whether the service is open at `t`.
    pub fn open(&self, t: UnixSeconds) -> bool {
        let (y, m, d, wd, minute) = rome_local(t);
        self.days & (1 << wd) != 0
            && self.hours.iter().any(|&(a, b)| (a..b).contains(&minute))
            && !self.holidays.iter().any(|h| h.matches(y, m, d))
    }
}

/// Days [`Calendar::after_open`] looks through: a calendar open less
/// than this often keeps no promise.
const LOOK_AHEAD_DAYS: i64 = 62;

/// A local day (days since the epoch on the Rome clock) as one or two
/// stretches of one offset each: `(from, offset)` pairs, the second
/// beginning at the clocks' change (01:00 UTC on the last Sunday of March
/// and of October) when the day has one.
fn day_offsets(day: i64) -> [(UnixSeconds, i64); 2] {
    let (y, _, _) = civil_from_days(day);
    let noon = day * 86_400 + 11 * 3600;
    let after = rome_offset(noon);
    if day == last_sunday(y, 3) || day == last_sunday(y, 10) {
        let change = day * 86_400 + 3600;
        [(i64::MIN, rome_offset(change - 1)), (change, after)]
    } else {
        [(i64::MIN, after), (i64::MIN, after)]
    }
}

impl Calendar {
    /// The instant by which the service has been open `open_for` seconds
    /// since `from`: what a promise such as "we call you back within two
    /// hours" means when it is made on a Friday evening. Day by day over
    /// the opening ranges (a few steps a day, whatever the promise), the
    /// same instants as [`Calendar::open`] says are open. `None` when the
    /// calendar is not open that long within 62 days.
    pub fn after_open(&self, from: UnixSeconds, open_for: UnixSeconds) -> Option<UnixSeconds> {
        let mut left = open_for.max(0);
        if left == 0 {
            return Some(from);
        }
        // The day's ranges in order, overlapping ones merged: no second
        // is counted twice.
        let mut ranges = self.hours.clone();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let first = (from + rome_offset(from)).div_euclid(86_400);
        for day in first..=first + LOOK_AHEAD_DAYS {
            let (y, m, d) = civil_from_days(day);
            if self.days & (1 << weekday(day)) == 0
                || self.holidays.iter().any(|h| h.matches(y, m, d))
            {
                continue;
            }
            // On the days the clocks change, a range is open by the local
            // clock on either side of the change (an hour skipped, or
            // lived twice), exactly as `open` says.
            let [(_, before), (change, after)] = day_offsets(day);
            let segments = if change == i64::MIN {
                [(before, i64::MIN, i64::MAX), (before, 0, 0)]
            } else {
                [(before, i64::MIN, change), (after, change, i64::MAX)]
            };
            // The day's open stretches in time order (in the hour lived
            // twice, a later range's first part may come before an earlier
            // range's second).
            let mut pieces: Vec<(UnixSeconds, UnixSeconds)> = Vec::with_capacity(merged.len() * 2);
            for &(a, b) in &merged {
                let (la, lb) = (
                    day * 86_400 + i64::from(a) * 60,
                    day * 86_400 + i64::from(b) * 60,
                );
                for (offset, lo, hi) in segments {
                    let start = (la - offset).max(lo).max(from);
                    let end = (lb - offset).min(hi);
                    if start < end {
                        pieces.push((start, end));
                    }
                }
            }
            pieces.sort_unstable();
            for (start, end) in pieces {
                if end - start >= left {
                    return Some(start + left);
                }
                left -= end - start;
            }
        }
        None
    }
}

/// Parses a weekday name (Italian or English, 3 letters suffice).
pub fn parse_day(s: &str) -> Option<u32> {
    let s = s.to_ascii_lowercase();
    let names = [
        ["mon", "lun"],
        ["tue", "mar"],
        ["wed", "mer"],
        ["thu", "gio"],
        ["fri", "ven"],
        ["sat", "sab"],
        ["sun", "dom"],
    ];
    names
        .iter()
        .position(|n| n.iter().any(|p| s.starts_with(p)))
        .map(|i| i as u32)
}

/// Parses `HH:MM-HH:MM` into minute-of-day bounds (end may be 24:00).
pub fn parse_hours(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let hm = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        // `then`, not `then_some`: the minute count of an out-of-range
        // hour must not be computed (it overflows).
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then(|| h * 60 + m)
    };
    let (a, b) = (hm(a)?, hm(b)?);
    (a < b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(y: i64, m: u32, d: u32, hh: i64, mm: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60
    }

    #[test]
    fn dates_round_trip() {
        for days in -800_000..800_000i64 {
            if days % 997 == 0 {
                let (y, m, d) = civil_from_days(days);
                assert_eq!(days_from_civil(y, m, d), days);
            }
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(weekday(days_from_civil(2026, 11, 30)), 0, "a Monday");
    }

    #[test]
    fn rome_switches_to_summer_time_on_the_eu_dates() {
        // 2026: 29 March and 25 October, at 01:00 UTC.
        assert_eq!(rome_offset(unix(2026, 3, 29, 0, 59)), 3600);
        assert_eq!(rome_offset(unix(2026, 3, 29, 1, 0)), 7200);
        assert_eq!(rome_offset(unix(2026, 10, 25, 0, 59)), 7200);
        assert_eq!(rome_offset(unix(2026, 10, 25, 1, 0)), 3600);
        // 07:30 UTC in July is 09:30 in Rome.
        let (_, _, _, _, minute) = rome_local(unix(2026, 7, 15, 7, 30));
        assert_eq!(minute, 9 * 60 + 30);
    }

    #[test]
    fn weekday_hours_and_holidays() {
        let cal = Calendar {
            days: 0b001_1111,
            hours: vec![parse_hours("08:00-18:00").unwrap()],
            holidays: vec![
                Holiday::parse("12-25").unwrap(),
                Holiday::parse("2026-12-07").unwrap(),
            ],
        };
        // Monday 30 Nov 2026, 08:00 Rome = 07:00 UTC (winter).
        assert!(!cal.open(unix(2026, 11, 30, 6, 59)));
        assert!(cal.open(unix(2026, 11, 30, 7, 0)));
        assert!(cal.open(unix(2026, 11, 30, 16, 59)));
        assert!(
            !cal.open(unix(2026, 11, 30, 17, 0)),
            "18:00 in Rome: closed"
        );
        // Saturday 5 Dec, a holiday Monday 7 Dec, and Christmas (a Friday).
        assert!(!cal.open(unix(2026, 12, 5, 10, 0)));
        assert!(!cal.open(unix(2026, 12, 7, 10, 0)));
        assert!(cal.open(unix(2026, 12, 8, 10, 0)));
        assert!(!cal.open(unix(2026, 12, 25, 10, 0)));
        // Two open hours from Friday 4 Dec 17:30 in Rome: half an hour
        // on Friday, then from Tuesday 08:00 (Monday 7 Dec is closed):
        // 09:30 on Tuesday.
        assert_eq!(
            cal.after_open(unix(2026, 12, 4, 16, 30) + 17, 7200),
            Some(unix(2026, 12, 8, 8, 30) + 17)
        );
        // Within the day, exactly on the clock.
        assert_eq!(
            cal.after_open(unix(2026, 11, 30, 8, 0), 3600),
            Some(unix(2026, 11, 30, 9, 0))
        );
        assert_eq!(
            cal.after_open(unix(2026, 11, 30, 8, 0), 0),
            Some(unix(2026, 11, 30, 8, 0))
        );
        let never = Calendar {
            days: 0,
            ..cal.clone()
        };
        assert_eq!(never.after_open(unix(2026, 11, 30, 8, 0), 60), None);
        // Across the change to summer time (Sunday 29 March 2026): two
        // hours from Friday 27 March 17:30 (CET, 16:30 UTC) end on Monday
        // 30 March at 09:30 CEST, 07:30 UTC.
        assert_eq!(
            cal.after_open(unix(2026, 3, 27, 16, 30), 7200),
            Some(unix(2026, 3, 30, 7, 30))
        );
    }

    /// The day-by-day walk agrees with `open` second by second (minute by
    /// minute here): a reference walk over many starts and promises, with
    /// split and overlapping ranges, weekends, holidays and both changes
    /// of the clocks.
    #[test]
    fn after_open_agrees_with_open_minute_by_minute() {
        fn reference(cal: &Calendar, from: i64, open_for: i64) -> Option<i64> {
            let (mut left, mut t) = (open_for, from);
            while left > 0 {
                if t - from > 40 * 86_400 {
                    return None;
                }
                let step = 60 - t.rem_euclid(60);
                if cal.open(t) {
                    if left <= step {
                        return Some(t + left);
                    }
                    left -= step;
                }
                t += step;
            }
            Some(t)
        }
        let weekdays = Calendar {
            days: 0b001_1111,
            hours: vec![
                parse_hours("08:00-13:00").unwrap(),
                parse_hours("12:30-13:30").unwrap(),
                parse_hours("14:00-18:00").unwrap(),
            ],
            holidays: vec![Holiday::parse("04-06").unwrap()],
        };
        // Sundays only, and across the night the clocks change (two
        // ranges around the hour lived twice).
        let nights = Calendar {
            days: 0b100_0000,
            hours: vec![
                parse_hours("00:30-02:30").unwrap(),
                parse_hours("02:45-04:00").unwrap(),
                parse_hours("20:00-24:00").unwrap(),
            ],
            holidays: Vec::new(),
        };
        let mut x: u64 = 7;
        for i in 0..800 {
            let cal = if i % 2 == 0 { &weekdays } else { &nights };
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // Starts around both clock changes of 2026 and in between.
            let base = [
                unix(2026, 3, 25, 0, 0),
                unix(2026, 10, 22, 0, 0),
                unix(2026, 6, 1, 0, 0),
            ][(x >> 60) as usize % 3];
            let from = base + ((x >> 20) % (8 * 86_400)) as i64;
            // At most a few weeks of either calendar's hours.
            let most = if i % 2 == 0 { 3 * 86_400 } else { 10 * 3600 };
            let open_for = ((x >> 8) % most) as i64;
            assert_eq!(
                cal.after_open(from, open_for),
                reference(cal, from, open_for),
                "from {from}, open for {open_for}"
            );
        }
        assert_eq!(parse_day("Gio"), Some(3));
        assert_eq!(parse_day("sunday"), Some(6));
        assert_eq!(parse_hours("18:00-08:00"), None);
        assert_eq!(parse_hours("00:00-24:00"), Some((0, 1440)));
        assert_eq!(Holiday::parse("2026-02-30"), None);
        assert_eq!(Holiday::parse("13-01"), None);
    }

    /// Found by the fuzz target `config` (a queue's `callback_hours`):
    /// an hour near `u32::MAX` overflowed computing minutes that the range
    /// check then refused (a panic with overflow checks on).
    #[test]
    fn huge_hours_are_refused_without_overflow() {
        assert_eq!(parse_hours("4294967295:00-18:00"), None);
        assert_eq!(parse_hours("08:00-94967295:0"), None);
        assert_eq!(parse_hours("08:00-24:4294967295"), None);
        assert_eq!(parse_hours("24:00-24:00"), None);
    }
}
