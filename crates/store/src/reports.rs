//! Queue reports from the queue log: the service figures README defines
//! ("Service figures"), per queue and interval.
//!
//! A call's stay in a queue (a *visit*) starts with its `enter` event and
//! lasts until the call enters another queue or ends; everything that
//! happens in the visit counts in the interval the visit started in, so an
//! interval's offered calls are the sum of what became of them (answered,
//! abandoned, timed out, called back...) however long they waited.

use rusqlite::params;

/// The operators' talk per segment, and the index a report walks by.
pub(crate) const MIGRATION: &str = "ALTER TABLE queue_log ADD COLUMN talk_ms INTEGER;
    CREATE INDEX queue_log_call ON queue_log (call, seq);";

/// Schema migration: an operator event names the operator's firm then
/// (their history is the firm's; a name may change firm).
pub(crate) const AGENT_FIRMS: &str = "ALTER TABLE queue_log ADD COLUMN tenant TEXT;";

use crate::{Store, StoreError};

/// Thresholds one queue's figures are measured against, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// T: answered within it (inclusive) counts for the service level.
    pub level_ms: i64,
    /// The second T (SL2).
    pub level2_ms: i64,
    /// A caller hanging up within it (inclusive) is a short abandon.
    pub short_abandon_ms: i64,
    /// The queue's wrap-up, part of the handling time.
    pub wrap_up_ms: i64,
}

/// One queue's figures for one interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    /// Interval start, Unix milliseconds.
    pub start_ms: i64,
    /// Queue name.
    pub queue: String,
    /// Calls that entered the queue (a transfer into it too; a caller put
    /// back after losing their operator is the same visit).
    pub offered: u64,
    /// Visits an operator answered (once per visit).
    pub answered: u64,
    /// Answered within T, and within the second T.
    pub answered_within: u64,
    /// Answered within the second T.
    pub answered_within2: u64,
    /// Callers who hung up while waiting, after the short threshold.
    pub abandoned: u64,
    /// Callers who hung up within the short threshold (left out of the
    /// service level and the abandon rate).
    pub short_abandoned: u64,
    /// Callers the queue ended at `max_wait_seconds`.
    pub timed_out: u64,
    /// Callers the queue ended otherwise (full, closed, the node stopping).
    pub exited: u64,
    /// Callers who asked to be called back while waiting.
    pub callbacks: u64,
    /// Calls the operator transferred elsewhere.
    pub transferred: u64,
    /// Callers the queue could not serve, passed to another queue
    /// (`when_unserved = "overflow"`).
    pub overflowed: u64,
    /// Callers put back in the queue after losing their operator.
    pub requeued: u64,
    /// Visits that ended unanswered, with no callback and no operator
    /// ever on the call (the citizen reached nobody).
    pub dead_ends: u64,
    /// Callbacks asked for in the interval, whatever the way (waiting in
    /// the queue, the IVR, the web, the API): counted by when they were
    /// asked for, as visits are by when they started.
    pub callbacks_requested: u64,
    /// Of those, kept: an operator talked to the citizen.
    pub callbacks_kept: u64,
    /// Of those, kept within the queue's promise.
    pub callbacks_kept_in_time: u64,
    /// Sum of the answered visits' waits.
    pub wait_answered_ms: i64,
    /// Operators' talk (hold included) in the queue's visits, and how many
    /// operator segments it is (`complete` events).
    pub talk_ms: i64,
    /// Operator segments completed.
    pub completed: u64,
    /// The queue's wrap-up (for the handling time).
    pub wrap_up_ms: i64,
}

impl QueueFigures {
    /// Answered within T over answered + abandoned (after the short
    /// threshold) + timed out + called back + overflowed: a caller the
    /// queue sent elsewhere was not answered within T either. `None`
    /// without any such call.
    pub fn service_level(&self) -> Option<f64> {
        ratio(self.answered_within, self.served_base())
    }

    /// As [`Self::service_level`] with the second T.
    pub fn service_level2(&self) -> Option<f64> {
        ratio(self.answered_within2, self.served_base())
    }

    fn served_base(&self) -> u64 {
        self.answered + self.abandoned + self.timed_out + self.callbacks + self.overflowed
    }

    /// Abandoned over offered, short abandons left out of both.
    pub fn abandon_rate(&self) -> Option<f64> {
        ratio(
            self.abandoned,
            self.offered.saturating_sub(self.short_abandoned),
        )
    }

    /// Average speed of answer: mean wait of the answered visits.
    pub fn asa_seconds(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.wait_answered_ms as f64 / 1000.0 / self.answered as f64)
    }

    /// Average handling time: talk (hold included) plus the queue's
    /// wrap-up, per operator segment.
    pub fn aht_seconds(&self) -> Option<f64> {
        (self.completed > 0).then(|| {
            (self.talk_ms as f64 / self.completed as f64 + self.wrap_up_ms as f64) / 1000.0
        })
    }
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// The report's bounds: `[from_ms, to_ms)` in steps of `interval_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First instant, Unix milliseconds.
    pub from_ms: i64,
    /// End (excluded).
    pub to_ms: i64,
    /// Interval length.
    pub interval_ms: i64,
}

/// What a queue's next interval will likely bring, from the same
/// interval of the days before.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// Queue name.
    pub queue: String,
    /// Calls expected (the mean of the days looked at; a day without a
    /// call for the queue counts 0).
    pub offered: f64,
    /// Mean handling time over those days' calls, when any completed.
    pub aht_seconds: Option<f64>,
    /// Days the store covers (its queue log began before that day's
    /// interval ended), which the mean is over.
    pub days: u32,
}

impl Store {
    /// The forecast of each queue for the interval `[from_ms, to_ms)`: the
    /// same interval on each of the `days` days before (24 hours apart:
    /// off by an hour across a daylight-saving change), averaged over the
    /// days the store covers. Empty when it covers none.
    pub fn forecast(
        &self,
        from_ms: i64,
        to_ms: i64,
        days: u32,
        thresholds: impl Fn(&str) -> Option<Thresholds>,
        fallback: Thresholds,
    ) -> Result<Vec<Forecast>, StoreError> {
        const DAY_MS: i64 = 86_400_000;
        let first: Option<i64> = self
            .conn
            .query_row("SELECT MIN(at) FROM queue_log", [], |r| r.get(0))?;
        let Some(first) = first else {
            return Ok(Vec::new());
        };
        let mut covered = 0u32;
        // Per queue: offered over the days, talk and segments for the AHT.
        let mut sums: Vec<(String, u64, i64, u64, i64)> = Vec::new();
        for d in 1..=i64::from(days) {
            let span = Span {
                from_ms: from_ms - d * DAY_MS,
                to_ms: to_ms - d * DAY_MS,
                interval_ms: to_ms - from_ms,
            };
            // A log begun later than that day's interval knows nothing
            // of it (begun within it, it knows its part).
            if first >= span.to_ms {
                break;
            }
            covered += 1;
            for f in self.queue_report(span, &thresholds, fallback)? {
                let i = match sums.iter().position(|s| s.0 == f.queue) {
                    Some(i) => i,
                    None => {
                        sums.push((f.queue.clone(), 0, 0, 0, f.wrap_up_ms));
                        sums.len() - 1
                    }
                };
                sums[i].1 += f.offered;
                sums[i].2 += f.talk_ms;
                sums[i].3 += f.completed;
            }
        }
        Ok(sums
            .into_iter()
            .map(
                |(queue, offered, talk_ms, completed, wrap_up_ms)| Forecast {
                    queue,
                    offered: offered as f64 / f64::from(covered.max(1)),
                    aht_seconds: (completed > 0)
                        .then(|| (talk_ms as f64 / completed as f64 + wrap_up_ms as f64) / 1000.0),
                    days: covered,
                },
            )
            .collect())
    }
}

/// One queue's callbacks not done yet (pending or being placed): the
/// supervisors' backlog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Queue name.
    pub queue: String,
    /// Callbacks waiting or being placed.
    pub open: u64,
    /// When the oldest of them was asked for (Unix seconds).
    pub oldest: i64,
}

/// At most this many intervals in one report (a year of hours): bounded
/// work for one request.
pub const MAX_INTERVALS: i64 = 9_000;

/// The row of `queue` for the interval of `span` holding `at_ms`, made
/// (empty) when it has none yet.
fn row_of(
    rows: &mut Vec<QueueFigures>,
    index: &mut std::collections::HashMap<(i64, String), usize>,
    span: Span,
    at_ms: i64,
    queue: &str,
    t: Thresholds,
) -> usize {
    let start = span.from_ms + (at_ms - span.from_ms) / span.interval_ms * span.interval_ms;
    *index.entry((start, queue.to_owned())).or_insert_with(|| {
        rows.push(QueueFigures {
            start_ms: start,
            queue: queue.to_owned(),
            wrap_up_ms: t.wrap_up_ms,
            ..QueueFigures::default()
        });
        rows.len() - 1
    })
}

/// A visit in progress while walking one call's events.
struct Visit {
    /// Index into the figures.
    at: usize,
    answered: bool,
    /// The last event was `requeue`: the next `enter` continues the visit.
    requeued: bool,
}

impl Store {
    /// The queue log of the calls entering a queue (`only` that one, when
    /// given) in `span`, as `simulate --replay` reads it: (Unix ms, call,
    /// queue, event) for every queue event of those calls (of that queue
    /// only, when given), in order — the timeouts, callbacks, overflows
    /// and exits too, and every `enter` of a call that entered more than
    /// once. Operators' logins and breaks are left out.
    pub fn replay_log(
        &self,
        span: Span,
        only: Option<&str>,
    ) -> Result<Vec<(i64, String, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT at, call, queue, event FROM queue_log
             WHERE call IN (SELECT call FROM queue_log WHERE event = 'enter' AND at >= ?1 AND at < ?2
                              AND (?3 IS NULL OR queue = ?3))
               AND (?3 IS NULL OR queue = ?3)
               AND event IN ('enter', 'offer', 'connect', 'complete', 'requeue', 'abandon',
                             'timeout', 'callback', 'overflow', 'exit', 'transfer')
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![span.from_ms, span.to_ms, only], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each queue's callbacks not done yet (by the status index; queues
    /// with none are left out).
    pub fn callback_backlog(&self) -> Result<Vec<Backlog>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT queue, COUNT(*), MIN(created_at) FROM callbacks
             WHERE status IN ('pending', 'in_progress') GROUP BY queue ORDER BY queue",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Backlog {
                queue: r.get(0)?,
                open: r.get::<_, i64>(1)?.max(0) as u64,
                oldest: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The figures of every queue with calls entering it in `span`, one
    /// row per queue and interval that had any (ordered by interval, then
    /// queue). `thresholds` gives a queue's; a queue it does not know (no
    /// longer configured) is reported with `fallback`.
    pub fn queue_report(
        &self,
        span: Span,
        thresholds: impl Fn(&str) -> Option<Thresholds>,
        fallback: Thresholds,
    ) -> Result<Vec<QueueFigures>, StoreError> {
        let mut rows: Vec<QueueFigures> = Vec::new();
        let mut index: std::collections::HashMap<(i64, String), usize> = Default::default();
        if span.interval_ms <= 0 || span.to_ms <= span.from_ms {
            return Ok(rows);
        }
        let mut stmt = self.conn.prepare(
            "SELECT q.call, q.at, q.queue, q.event, q.wait_ms, q.talk_ms FROM queue_log q
             WHERE q.call IN (SELECT call FROM queue_log WHERE event = 'enter' AND at >= ?1 AND at < ?2)
             ORDER BY q.call, q.seq",
        )?;
        let mut events = stmt.query(params![span.from_ms, span.to_ms])?;
        let mut call = String::new();
        let mut visit: Option<Visit> = None;
        // Per call: an operator answered it (in any queue) or a callback
        // was taken; a later unanswered end is then no dead end.
        let (mut reached, mut called_back) = (false, false);
        while let Some(row) = events.next()? {
            let id: String = row.get(0)?;
            let at: i64 = row.get(1)?;
            let queue: String = row.get(2)?;
            let event: String = row.get(3)?;
            let wait: i64 = row.get::<_, Option<i64>>(4)?.unwrap_or(0);
            let talk: i64 = row.get::<_, Option<i64>>(5)?.unwrap_or(0);
            if id != call {
                call = id;
                visit = None;
                reached = false;
                called_back = false;
            }
            if event == "enter" {
                if let Some(v) = visit
                    .as_mut()
                    .filter(|v| v.requeued && rows[v.at].queue == queue)
                {
                    v.requeued = false;
                    continue;
                }
                visit = None;
                if at < span.from_ms || at >= span.to_ms {
                    continue;
                }
                let t = thresholds(&queue).unwrap_or(fallback);
                let at_row = row_of(&mut rows, &mut index, span, at, &queue, t);
                rows[at_row].offered += 1;
                visit = Some(Visit {
                    at: at_row,
                    answered: false,
                    requeued: false,
                });
                continue;
            }
            let Some(v) = visit.as_mut().filter(|v| rows[v.at].queue == queue) else {
                // Not in a visit this report counts (another queue's event
                // before the call entered this one, or after it left).
                if event == "connect" {
                    reached = true;
                }
                continue;
            };
            let t = thresholds(&queue).unwrap_or(fallback);
            let f = &mut rows[v.at];
            v.requeued = false;
            let unanswered_end = match event.as_str() {
                "connect" => {
                    reached = true;
                    if !v.answered {
                        v.answered = true;
                        f.answered += 1;
                        f.wait_answered_ms += wait;
                        f.answered_within += u64::from(wait <= t.level_ms);
                        f.answered_within2 += u64::from(wait <= t.level2_ms);
                    }
                    false
                }
                "complete" => {
                    f.completed += 1;
                    f.talk_ms += talk;
                    false
                }
                // After an operator answered the visit (then lost their
                // phone): the caller was served; counted once, as answered.
                "abandon" | "timeout" | "exit" if v.answered => false,
                "abandon" => {
                    if wait <= t.short_abandon_ms {
                        f.short_abandoned += 1;
                    } else {
                        f.abandoned += 1;
                    }
                    true
                }
                "timeout" => {
                    f.timed_out += 1;
                    true
                }
                "exit" => {
                    f.exited += 1;
                    true
                }
                "callback" => {
                    f.callbacks += 1;
                    called_back = true;
                    false
                }
                "transfer" => {
                    f.transferred += 1;
                    false
                }
                "overflow" => {
                    f.overflowed += 1;
                    false
                }
                "requeue" => {
                    f.requeued += 1;
                    v.requeued = true;
                    false
                }
                _ => false,
            };
            if unanswered_end && !reached && !called_back {
                f.dead_ends += 1;
            }
        }
        rows.sort_by(|a, b| (a.start_ms, &a.queue).cmp(&(b.start_ms, &b.queue)));
        Ok(rows)
    }
}

impl Store {
    /// Adds the callbacks asked for in `span` to `rows` (a
    /// [`Store::queue_report`]'s): requested, kept, kept by the time they
    /// were promised by when asked for (one stored before promises were,
    /// by what `legacy_promise(queue, asked, not_before)` says). An
    /// interval with callbacks and no visit gets a row of its own
    /// (`thresholds` gives its wrap-up, `fallback` for a queue no longer
    /// configured). A callback moved to another node is that node's.
    pub fn add_callback_figures(
        &self,
        span: Span,
        rows: &mut Vec<QueueFigures>,
        legacy_promise: impl Fn(&str, i64, Option<i64>) -> Option<i64>,
        thresholds: impl Fn(&str) -> Option<Thresholds>,
        fallback: Thresholds,
    ) -> Result<(), StoreError> {
        if span.interval_ms <= 0 || span.to_ms <= span.from_ms {
            return Ok(());
        }
        let mut index: std::collections::HashMap<(i64, String), usize> = rows
            .iter()
            .enumerate()
            .map(|(i, f)| ((f.start_ms, f.queue.clone()), i))
            .collect();
        // Seconds in the table; the span in milliseconds (rounded out so
        // a second straddling a bound is looked at, then filtered).
        let mut stmt = self.conn.prepare(
            "SELECT queue, created_at, promised_by, status, updated_at, not_before FROM callbacks
             WHERE created_at >= ?1 AND created_at <= ?2 AND status != 'moved'",
        )?;
        let mut found = stmt.query(params![
            span.from_ms.div_euclid(1000),
            span.to_ms.div_euclid(1000)
        ])?;
        while let Some(row) = found.next()? {
            let queue: String = row.get(0)?;
            let asked: i64 = row.get(1)?;
            let promised_by: Option<i64> = row.get(2)?;
            let status: String = row.get(3)?;
            let updated: i64 = row.get(4)?;
            let not_before: Option<i64> = row.get(5)?;
            let at = asked.saturating_mul(1000);
            if at < span.from_ms || at >= span.to_ms {
                continue;
            }
            let t = thresholds(&queue).unwrap_or(fallback);
            let i = row_of(rows, &mut index, span, at, &queue, t);
            let f = &mut rows[i];
            f.callbacks_requested += 1;
            if status == "done" {
                f.callbacks_kept += 1;
                let promised_by = promised_by.or_else(|| legacy_promise(&queue, asked, not_before));
                if promised_by.is_some_and(|p| updated <= p) {
                    f.callbacks_kept_in_time += 1;
                }
            }
        }
        rows.sort_by(|a, b| (a.start_ms, &a.queue).cmp(&(b.start_ms, &b.queue)));
        Ok(())
    }
}

/// One operator's figures for one interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentFigures {
    /// Interval start, Unix milliseconds.
    pub start_ms: i64,
    /// The operator.
    pub agent: String,
    /// The firm these figures are of (`None`: events from before events
    /// named their firm).
    pub tenant: Option<String>,
    /// Logged in (a break included).
    pub logged_in_ms: i64,
    /// On a break, by reason (sorted by reason).
    pub paused_ms: Vec<(String, i64)>,
    /// Talk (hold included) of the operator segments that ended in it.
    pub talk_ms: i64,
    /// Operator segments that ended in it (calls talked).
    pub calls: u64,
}

/// How far before a report's start an operator's login is looked for:
/// a shift longer than this starts, for the report, at the span's start
/// minus it.
pub const AGENT_LOOKBACK_MS: i64 = 7 * 86_400_000;

/// Adds an operator's `[from, to)`, as firm `tenant`'s, to each interval
/// it overlaps, by the function given.
type AddSpan<'a> =
    dyn FnMut(&str, &Option<String>, i64, i64, &mut dyn FnMut(&mut AgentFigures, i64)) + 'a;

/// One operator's state while walking their events: since when logged in
/// and on a break, each for the firm they count for; and their last move
/// to another firm (when, and the firm before), for the calls answered
/// before it that end after it.
#[derive(Default)]
struct Shift {
    login: Option<(i64, Option<String>)>,
    pause: Option<(i64, String, Option<String>)>,
    moved: Option<(i64, Option<String>)>,
}

impl Store {
    /// Each operator's figures per interval of `span` (README "Service
    /// figures"): logged-in time, breaks by reason, talk and calls; a
    /// login or break still open ends at `now_ms` (or the span's end).
    /// Rows are per operator and firm: time logged in and on a break
    /// counts for the firm the operator had (a `firm` event, or any
    /// operator event naming another firm, ends the open shift for the
    /// old firm and goes on for the new one), a call for the firm of the
    /// shift it was taken in, else its queue's (`None`: events from
    /// before events named their firm).
    pub fn agent_report(&self, span: Span, now_ms: i64) -> Result<Vec<AgentFigures>, StoreError> {
        let mut rows: Vec<AgentFigures> = Vec::new();
        let mut index: std::collections::HashMap<(i64, String, Option<String>), usize> =
            Default::default();
        if span.interval_ms <= 0 || span.to_ms <= span.from_ms {
            return Ok(rows);
        }
        let end = span.to_ms.min(now_ms.max(span.from_ms));
        // A call's firm is its queue's, as bound (`queue_owners.rs`).
        let mut stmt = self.conn.prepare(
            "SELECT agent, at, event, reason, talk_ms,
                    COALESCE(tenant, (SELECT o.tenant FROM queue_owners o WHERE o.queue = queue_log.queue AND queue_log.queue != ''))
             FROM queue_log
             WHERE agent IS NOT NULL AND at >= ?1 AND at < ?2
               AND event IN ('login', 'logout', 'pause', 'unpause', 'firm', 'complete')
             ORDER BY agent, seq",
        )?;
        let mut events = stmt.query(params![span.from_ms - AGENT_LOOKBACK_MS, span.to_ms])?;
        // Adds `ms`-long pieces of [a, b) to each interval it overlaps.
        let mut add = |agent: &str,
                       tenant: &Option<String>,
                       a: i64,
                       b: i64,
                       f: &mut dyn FnMut(&mut AgentFigures, i64)| {
            let (a, b) = (a.max(span.from_ms), b.min(end));
            let mut t = a;
            while t < b {
                let start = span.from_ms + (t - span.from_ms) / span.interval_ms * span.interval_ms;
                let piece = (start + span.interval_ms).min(b) - t;
                let key = (start, agent.to_owned(), tenant.clone());
                let at = *index.entry(key).or_insert_with(|| {
                    rows.push(AgentFigures {
                        start_ms: start,
                        agent: agent.to_owned(),
                        tenant: tenant.clone(),
                        ..AgentFigures::default()
                    });
                    rows.len() - 1
                });
                f(&mut rows[at], piece);
                t += piece;
            }
        };
        let mut current = String::new();
        let mut shift = Shift::default();
        let close = |agent: &str, shift: &mut Shift, at: i64, add: &mut AddSpan<'_>| {
            if let Some((t, reason, tenant)) = shift.pause.take() {
                add(agent, &tenant, t, at, &mut |f, ms| paused(f, &reason, ms));
            }
            if let Some((t, tenant)) = shift.login.take() {
                add(agent, &tenant, t, at, &mut |f, ms| f.logged_in_ms += ms);
            }
        };
        while let Some(row) = events.next()? {
            let agent: String = row.get(0)?;
            let at: i64 = row.get(1)?;
            let event: String = row.get(2)?;
            let reason: Option<String> = row.get(3)?;
            let talk: Option<i64> = row.get(4)?;
            let tenant: Option<String> = row.get(5)?;
            if agent != current {
                close(&current, &mut shift, end, &mut add);
                shift.moved = None;
                current = agent.clone();
            }
            // An operator event naming another firm than the open shift's
            // (a reload moved the operator: `firm`; or a restart did, and
            // this is the next event): what was open ends for the old firm
            // there and goes on for the new one.
            let moved = event != "complete"
                && tenant.is_some()
                && shift.login.as_ref().is_some_and(|(_, t)| *t != tenant);
            if moved {
                let on_break = shift.pause.as_ref().map(|(_, r, _)| r.clone());
                let before = shift.login.as_ref().and_then(|(_, t)| t.clone());
                close(&agent, &mut shift, at, &mut add);
                shift.login = Some((at, tenant.clone()));
                shift.pause = on_break.map(|r| (at, r, tenant.clone()));
                shift.moved = Some((at, before));
            }
            match event.as_str() {
                "login" => {
                    shift.login.get_or_insert((at, tenant));
                }
                "logout" => close(&agent, &mut shift, at, &mut add),
                "pause" if shift.login.is_some() && shift.pause.is_none() => {
                    shift.pause = Some((at, reason.unwrap_or_default(), tenant));
                }
                "unpause" => {
                    if let Some((t, reason, tenant)) = shift.pause.take() {
                        add(&agent, &tenant, t, at, &mut |f, ms| paused(f, &reason, ms));
                    }
                }
                "complete" if at >= span.from_ms => {
                    let talk = talk.unwrap_or(0);
                    // The firm the operator worked for when they answered
                    // (a call lent to them by another firm's queue is
                    // their work); the queue's firm when no shift is open.
                    let answered = at - talk;
                    let firm = match (&shift.moved, &shift.login) {
                        (Some((m, Some(before))), _) if answered < *m => Some(before.clone()),
                        (_, Some((_, Some(t)))) => Some(t.clone()),
                        _ => tenant,
                    };
                    add(&agent, &firm, at, at + 1, &mut |f, _| {
                        f.calls += 1;
                        f.talk_ms += talk;
                    });
                }
                _ => {}
            }
        }
        close(&current, &mut shift, end, &mut add);
        rows.sort_by(|a, b| {
            (a.start_ms, &a.agent, &a.tenant).cmp(&(b.start_ms, &b.agent, &b.tenant))
        });
        Ok(rows)
    }
}

/// Adds `ms` of a break for `reason`.
fn paused(f: &mut AgentFigures, reason: &str, ms: i64) {
    match f.paused_ms.iter_mut().find(|(r, _)| r == reason) {
        Some((_, t)) => *t += ms,
        None => {
            f.paused_ms.push((reason.to_owned(), ms));
            f.paused_ms.sort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Record;
    use crate::tests::temp;
    use centralino_types::outcome::QueueEvent;

    const T0: i64 = 1_800_000_000_000;
    const S: i64 = 1_000;

    fn ev(call: &str, at: i64, queue: &str, event: QueueEvent, wait: i64) -> Record {
        Record::Queue {
            call: call.into(),
            at_ms: T0 + at,
            queue: queue.into(),
            event,
            agent: None,
            position: None,
            wait_ms: Some(wait),
        }
    }

    fn done(call: &str, at: i64, queue: &str, talk: i64) -> Record {
        Record::Complete {
            call: call.into(),
            at_ms: T0 + at,
            queue: queue.into(),
            agent: "1001".into(),
            talk_ms: talk,
        }
    }

    /// The next interval forecast from the same interval of the days
    /// before: calls averaged over the days the log covers (a day without
    /// the queue's calls counts 0), handling time over their calls.
    #[test]
    fn the_forecast_averages_the_same_interval_of_the_days_before() {
        use QueueEvent::*;
        const DAY: i64 = 86_400_000;
        let path = temp("forecast");
        let mut s = Store::open(&path).unwrap();
        // Today's interval is [T0 + 3 days, + 15 min). Three days back:
        // 3 calls of "info"; two days back: 1 (and one outside the
        // interval); yesterday: none for "info", 2 for "triage".
        let mut records = Vec::new();
        for (day, calls, queue) in [(-3, 3, "info"), (-2, 1, "info"), (-1, 2, "triage")] {
            for c in 0..calls {
                let at = 3 * DAY + day * DAY + c * 60 * S;
                let call = format!("d{day}c{c}{queue}");
                records.push(ev(&call, at, queue, Enter, 0));
                records.push(ev(&call, at + 5 * S, queue, Connect, 5 * S));
                records.push(done(&call, at + 125 * S, queue, 120 * S));
            }
        }
        records.push(ev(
            "late",
            3 * DAY - 2 * DAY + 20 * 60 * S,
            "info",
            Enter,
            0,
        ));
        s.write_records(&records).unwrap();
        let t = |_: &str| {
            Some(Thresholds {
                level_ms: 20_000,
                level2_ms: 60_000,
                short_abandon_ms: 5_000,
                wrap_up_ms: 10_000,
            })
        };
        let from = T0 + 3 * DAY;
        let mut f = s.forecast(from, from + 900 * S, 7, t, FALLBACK_T).unwrap();
        f.sort_by(|a, b| a.queue.cmp(&b.queue));
        // The log begins three days back: three days covered, not seven.
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!((f[0].queue.as_str(), f[0].days), ("info", 3));
        assert!((f[0].offered - 4.0 / 3.0).abs() < 1e-9, "{f:?}");
        assert_eq!(f[0].aht_seconds, Some(130.0));
        assert!((f[1].offered - 2.0 / 3.0).abs() < 1e-9, "{f:?}");
        // Nothing before the log: no forecast.
        assert!(
            s.forecast(T0 - 10 * DAY, T0 - 10 * DAY + 900 * S, 7, t, FALLBACK_T)
                .unwrap()
                .is_empty()
        );
    }

    /// Callbacks count in the interval they were asked for: requested,
    /// kept (done), kept by their promise; failed, pending and moved ones
    /// are not kept, and a moved one is the other node's.
    #[test]
    fn callbacks_are_counted_by_when_asked_kept_and_kept_in_time() {
        use crate::Status;
        let path = temp("report-callbacks");
        let mut s = Store::open(&path).unwrap();
        let t0 = T0 / 1000;
        // Promised within two hours of the request.
        let mut make = |id: &str, at: i64, status: Option<Status>, closed: i64| {
            let mut n = crate::tests::new(id, &format!("+39333000{id}"));
            n.created_at = Some(t0 + at);
            n.promised_by = Some(t0 + at + 7200);
            s.create_callback(&n, t0 + at).unwrap();
            if let Some(st) = status {
                s.set_status(id, st, Some("x"), t0 + closed).unwrap();
            }
        };
        // Asked in the first interval: one kept in 30 minutes, one after
        // three hours, one failed, one still pending, one moved away.
        make("1", 0, Some(Status::Done), 1800);
        make("2", 60, Some(Status::Done), 3 * 3600);
        make("3", 120, Some(Status::Failed), 600);
        make("4", 180, None, 0);
        make("5", 240, Some(Status::Moved), 300);
        // Asked in the second interval (no visit there): kept in time.
        make("6", 900, Some(Status::Done), 1000);
        // Outside the span.
        make("7", -10, Some(Status::Done), 10);
        let span = Span {
            from_ms: T0,
            to_ms: T0 + 1800 * S,
            interval_ms: 900 * S,
        };
        let mut rows = s.queue_report(span, |_| None, FALLBACK_T).unwrap();
        assert!(rows.is_empty());
        s.add_callback_figures(span, &mut rows, |_, _, _| None, |_| None, FALLBACK_T)
            .unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|f| {
                (
                    (f.start_ms - T0) / S,
                    f.queue.as_str(),
                    f.callbacks_requested,
                    f.callbacks_kept,
                    f.callbacks_kept_in_time,
                    f.offered,
                )
            })
            .collect();
        assert_eq!(
            got,
            [(0, "vaccini", 4, 2, 1, 0), (900, "vaccini", 1, 1, 1, 0)]
        );
        // A retry's new `not_before` does not move the promise.
        let mut n = crate::tests::new("r", "+393330009");
        n.promised_by = Some(t0 + 7200);
        s.create_callback(&n, t0).unwrap();
        s.set_status("r", Status::InProgress, None, t0 + 60)
            .unwrap();
        s.reschedule("r", t0 + 5 * 3600, "busy", t0 + 600).unwrap();
        let r = s.get_callback("r").unwrap().unwrap();
        assert_eq!(
            (r.not_before, r.promised_by),
            (Some(t0 + 5 * 3600), Some(t0 + 7200))
        );
    }

    const FALLBACK_T: Thresholds = Thresholds {
        level_ms: 20_000,
        level2_ms: 60_000,
        short_abandon_ms: 5_000,
        wrap_up_ms: 0,
    };

    /// Every figure against a queue log worked out by hand: T = 20 s
    /// (inclusive), T2 = 60 s, short abandons up to 5 s, wrap-up 10 s,
    /// 15-minute intervals.
    #[test]
    fn figures_match_a_hand_computed_queue_log() {
        use QueueEvent::*;
        let path = temp("report");
        let mut s = Store::open(&path).unwrap();
        s.write_records(&[
            // c1: answered in 10 s, 60 s of talk.
            ev("c1", 0, "info", Enter, 0),
            ev("c1", 10 * S, "info", Connect, 10 * S),
            done("c1", 70 * S, "info", 60 * S),
            // c2: answered exactly at T (within).
            ev("c2", S, "info", Enter, 0),
            ev("c2", 21 * S, "info", Connect, 20 * S),
            done("c2", 51 * S, "info", 30 * S),
            // c3: hangs up exactly at T: abandoned, a dead end.
            ev("c3", 2 * S, "info", Enter, 0),
            ev("c3", 22 * S, "info", Abandon, 20 * S),
            // c4: hangs up at 5 s: a short abandon (still a dead end).
            ev("c4", 3 * S, "info", Enter, 0),
            ev("c4", 8 * S, "info", Abandon, 5 * S),
            // c5: asks to be called back.
            ev("c5", 4 * S, "info", Enter, 0),
            ev("c5", 34 * S, "info", Callback, 30 * S),
            // c6: enters in the first interval, answered in the second
            // after 51 s (within T2 only): counted where it entered.
            ev("c6", 899 * S, "info", Enter, 0),
            ev("c6", 950 * S, "info", Connect, 51 * S),
            done("c6", 960 * S, "info", 10 * S),
            // c7: the second interval; ended by max_wait.
            ev("c7", 900 * S, "info", Enter, 0),
            ev("c7", 960 * S, "info", Timeout, 60 * S),
            // c8: answered, transferred to "second", abandoned there after
            // 40 s: no dead end (an operator talked to them).
            ev("c8", 100 * S, "info", Enter, 0),
            ev("c8", 102 * S, "info", Connect, 2 * S),
            done("c8", 107 * S, "info", 5 * S),
            ev("c8", 107 * S, "info", Transfer, 7 * S),
            ev("c8", 107 * S, "second", Enter, 0),
            ev("c8", 147 * S, "second", Abandon, 40 * S),
            // c9: answered, its operator's phone lost (requeued: the same
            // visit), answered again; two operator segments.
            ev("c9", 200 * S, "info", Enter, 0),
            ev("c9", 203 * S, "info", Connect, 3 * S),
            done("c9", 204 * S, "info", S),
            ev("c9", 204 * S, "info", Requeue, 4 * S),
            ev("c9", 204 * S, "info", Enter, 0),
            ev("c9", 208 * S, "info", Connect, 4 * S),
            done("c9", 210 * S, "info", 2 * S),
            // c10: entered before the report's span: left out, although
            // answered within it.
            ev("c10", -S, "info", Enter, 0),
            ev("c10", 5 * S, "info", Connect, 6 * S),
        ])
        .unwrap();
        let t = Thresholds {
            level_ms: 20 * S,
            level2_ms: 60 * S,
            short_abandon_ms: 5 * S,
            wrap_up_ms: 10 * S,
        };
        let span = Span {
            from_ms: T0,
            to_ms: T0 + 3_600 * S,
            interval_ms: 900 * S,
        };
        let rows = s.queue_report(span, |_| Some(t), t).unwrap();
        let keys: Vec<(i64, &str)> = rows
            .iter()
            .map(|r| (r.start_ms - T0, r.queue.as_str()))
            .collect();
        assert_eq!(keys, vec![(0, "info"), (0, "second"), (900 * S, "info")]);
        let info = &rows[0];
        assert_eq!(
            (
                info.offered,
                info.answered,
                info.answered_within,
                info.answered_within2
            ),
            (8, 5, 4, 5)
        );
        assert_eq!(
            (
                info.abandoned,
                info.short_abandoned,
                info.timed_out,
                info.callbacks
            ),
            (1, 1, 0, 1)
        );
        assert_eq!((info.transferred, info.requeued, info.dead_ends), (1, 1, 2));
        // Answered 5, abandoned 1, called back 1: 7 in the base.
        assert_eq!(info.service_level(), Some(4.0 / 7.0));
        assert_eq!(info.service_level2(), Some(5.0 / 7.0));
        assert_eq!(info.abandon_rate(), Some(1.0 / 7.0));
        assert_eq!(info.asa_seconds(), Some(86.0 / 5.0));
        assert_eq!(info.completed, 6);
        assert_eq!(info.aht_seconds(), Some(108.0 / 6.0 + 10.0));
        let second = &rows[1];
        assert_eq!(
            (second.offered, second.abandoned, second.dead_ends),
            (1, 1, 0)
        );
        assert_eq!(second.service_level(), Some(0.0));
        assert_eq!(second.aht_seconds(), None);
        let later = &rows[2];
        assert_eq!((later.offered, later.timed_out, later.dead_ends), (1, 1, 1));
        assert_eq!(later.asa_seconds(), None);
        // One interval for the hour: the same calls, summed.
        let hour = s
            .queue_report(
                Span {
                    interval_ms: 3_600 * S,
                    ..span
                },
                |_| Some(t),
                t,
            )
            .unwrap();
        assert_eq!(hour.len(), 2);
        assert_eq!((hour[0].offered, hour[0].dead_ends), (9, 3));
        // An empty or reversed span has nothing.
        let none = s
            .queue_report(Span { to_ms: T0, ..span }, |_| Some(t), t)
            .unwrap();
        assert!(none.is_empty());
        // A reader connection (the API's) sees the same and writes nothing.
        let reader = Store::open_reader(&path).unwrap();
        assert_eq!(reader.queue_report(span, |_| Some(t), t).unwrap(), rows);
        assert!(reader.conn.execute("DELETE FROM queue_log", []).is_err());
    }

    fn agent_ev(agent: &str, at: i64, event: &'static str, reason: Option<&str>) -> Record {
        Record::Agent {
            at_ms: T0 + at,
            agent: agent.into(),
            tenant: "asl".into(),
            event,
            reason: reason.map(Into::into),
        }
    }

    /// Operators' figures against a log worked out by hand: a shift begun
    /// before the span, a break, a call, a logout; a login still open at
    /// the end; one-hour intervals.
    #[test]
    fn agent_figures_match_a_hand_computed_log() {
        let path = temp("agents-report");
        let mut s = Store::open(&path).unwrap();
        // A call's firm is its queue's.
        s.bind_queues(&[("info".into(), "asl".into())], 0).unwrap();
        s.write_records(&[
            agent_ev("1001", -3_600 * S, "login", None),
            agent_ev("1001", 600 * S, "pause", Some("caffe")),
            agent_ev("1001", 1_200 * S, "unpause", None),
            done("c1", 1_800 * S, "info", 120 * S),
            agent_ev("1001", 3_000 * S, "logout", None),
            agent_ev("1002", 4_200 * S, "login", None),
            agent_ev("1002", 4_800 * S, "pause", Some("no_answer")),
        ])
        .unwrap();
        let span = Span {
            from_ms: T0,
            to_ms: T0 + 7_200 * S,
            interval_ms: 3_600 * S,
        };
        let rows = s.agent_report(span, T0 + 100_000 * S).unwrap();
        let first = rows
            .iter()
            .find(|r| r.agent == "1001" && r.start_ms == T0)
            .expect("1001's first hour");
        assert_eq!(
            first.logged_in_ms,
            3_000 * S,
            "from the span's start to the logout"
        );
        assert_eq!(first.paused_ms, vec![("caffe".to_owned(), 600 * S)]);
        assert_eq!((first.calls, first.talk_ms), (1, 120 * S));
        let second = rows
            .iter()
            .find(|r| r.agent == "1002" && r.start_ms == T0 + 3_600 * S)
            .expect("1002's second hour");
        assert_eq!(second.logged_in_ms, 3_000 * S, "still logged in at the end");
        assert_eq!(second.paused_ms, vec![("no_answer".to_owned(), 2_400 * S)]);
        assert_eq!(rows.len(), 2, "{rows:?}");
        // Open segments end now when now is before the span's end.
        let rows = s.agent_report(span, T0 + 5_400 * S).unwrap();
        let second = rows.iter().find(|r| r.agent == "1002").unwrap();
        assert_eq!(second.logged_in_ms, 1_200 * S);
        assert!(rows.iter().all(|r| r.tenant.as_deref() == Some("asl")));
    }

    /// An operator's figures for one firm: logged in, breaks, calls, talk.
    type Figures = (i64, Vec<(String, i64)>, u64, i64);

    /// Each firm's figures in the hour from `from` (ms after `T0`), the
    /// report asked at the hour's end.
    fn firms_hour(s: &Store, from: i64) -> std::collections::HashMap<String, Figures> {
        let span = Span {
            from_ms: T0 + from,
            to_ms: T0 + from + 3_600 * S,
            interval_ms: 3_600 * S,
        };
        s.agent_report(span, span.to_ms)
            .unwrap()
            .into_iter()
            .map(|r| {
                let figures = (r.logged_in_ms, r.paused_ms, r.calls, r.talk_ms);
                (r.tenant.unwrap_or_default(), figures)
            })
            .collect()
    }

    /// TEST-MATRIX D12: an operator's name moves to another firm (a
    /// reload, or a name provisioned again): what they did before is the
    /// first firm's, in rows of its own, and their calls count for their
    /// queues' firms.
    #[test]
    fn an_operators_history_stays_with_the_firm_they_had() {
        let path = temp("agents-firms");
        let mut s = Store::open(&path).unwrap();
        s.bind_queues(
            &[
                ("info".into(), "asl".into()),
                ("sportello".into(), "altra".into()),
            ],
            0,
        )
        .unwrap();
        let firm =
            |tenant: &str, at: i64, event: &'static str, reason: Option<&str>| Record::Agent {
                at_ms: T0 + at,
                agent: "1001".into(),
                tenant: tenant.into(),
                event,
                reason: reason.map(Into::into),
            };
        s.write_records(&[
            firm("asl", 0, "login", None),
            firm("asl", 600 * S, "pause", Some("caffe")),
            firm("asl", 900 * S, "unpause", None),
            done("c1", 1_000 * S, "info", 60 * S),
            firm("asl", 1_800 * S, "logout", None),
            firm("altra", 2_400 * S, "login", None),
            // A call of asl's queue lent to altra's operator: altra's work.
            done("c2", 3_000 * S, "info", 30 * S),
        ])
        .unwrap();
        let hour = firms_hour(&s, 0);
        assert_eq!(hour.len(), 2, "{hour:?}");
        assert_eq!(
            hour["asl"],
            (1_800 * S, vec![("caffe".to_owned(), 300 * S)], 1, 60 * S)
        );
        assert_eq!(hour["altra"], (1_200 * S, vec![], 1, 30 * S));
        // Moved live while logged in and on a break (a reload writes
        // `firm`): the open shift and break end for asl there and go on
        // for altra.
        s.write_records(&[
            firm("altra", 3_600 * S, "logout", None),
            firm("asl", 4_000 * S, "login", None),
            firm("asl", 4_600 * S, "pause", Some("pranzo")),
            firm("altra", 5_000 * S, "firm", None),
            firm("altra", 5_200 * S, "unpause", None),
            // Answered at 4,900 s, before the move, ended after it: asl's.
            done("c3", 5_400 * S, "info", 500 * S),
            // Answered after the move: altra's.
            done("c4", 5_800 * S, "info", 100 * S),
            firm("altra", 6_000 * S, "logout", None),
        ])
        .unwrap();
        let hour = firms_hour(&s, 3_600 * S);
        assert_eq!(
            hour["asl"],
            (1_000 * S, vec![("pranzo".to_owned(), 400 * S)], 1, 500 * S)
        );
        assert_eq!(
            hour["altra"],
            (1_000 * S, vec![("pranzo".to_owned(), 200 * S)], 1, 100 * S)
        );
    }
}
