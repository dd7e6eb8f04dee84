//! `GET /api/v1/reports/queues`: each queue's service figures per interval,
//! from the store's queue log (README, "Service figures"), as JSON or as
//! CSV for spreadsheets (`Accept: text/csv`).

use std::fmt::Write as _;

use super::*;
use centralino_store::{AgentFigures, QueueFigures, Span, Thresholds};

/// Interval names and lengths (milliseconds).
const INTERVALS: [(&str, i64); 3] = [("15m", 900_000), ("1h", 3_600_000), ("1d", 86_400_000)];

/// A report's bounds as asked: `from`, `to` (RFC 3339), `interval`, and
/// `queue` (one only).
pub(crate) struct Asked {
    pub(crate) span: Span,
    pub(crate) interval: &'static str,
    /// The one queue (or operator) asked for.
    pub(crate) only: Option<String>,
}

/// Midnight in Rome of the day `now` (seconds) is in, as Unix seconds:
/// a report's default start ("today" for an Italian service).
pub(crate) fn rome_midnight(now: i64) -> i64 {
    let offset = centralino_flows::calendar::rome_offset(now);
    let local = now + offset;
    local - local.rem_euclid(86_400) - offset
}

/// Reads the query; a clear message for anything wrong.
pub(crate) fn asked(query: Option<&str>, now: i64) -> Result<Asked, String> {
    asked_for(query, now, "queue")
}

/// [`asked`], the one-row filter named `filter` (`queue`, `agent`).
fn asked_for(query: Option<&str>, now: i64, filter: &str) -> Result<Asked, String> {
    let (mut from, mut to, mut interval, mut queue) = (None, None, ("15m", 900_000), None);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // RFC 3339 offsets arrive as `%2B01:00` or, unescaped, as a space.
        let v = v.replace("%2B", "+").replace("%3A", ":").replace(' ', "+");
        match k {
            "from" => from = Some(parse_rfc3339(&v).ok_or("from: an RFC 3339 time")?),
            "to" => to = Some(parse_rfc3339(&v).ok_or("to: an RFC 3339 time")?),
            "interval" => {
                interval = *INTERVALS
                    .iter()
                    .find(|(n, _)| *n == v)
                    .ok_or("interval: one of 15m, 1h, 1d")?;
            }
            k if k == filter && (1..=64).contains(&v.len()) => queue = Some(v),
            k if k == filter => return Err(format!("{filter}: a name")),
            _ => {
                return Err(format!(
                    "unknown query parameter (from, to, interval, {filter})"
                ));
            }
        }
    }
    let from = from.unwrap_or_else(|| rome_midnight(now));
    let to = to.unwrap_or(from + 86_400);
    if to <= from {
        return Err("to must be after from".into());
    }
    let (name, step) = interval;
    let span = Span {
        from_ms: from * 1000,
        to_ms: to * 1000,
        interval_ms: step,
    };
    if (span.to_ms - span.from_ms) / step > centralino_store::MAX_INTERVALS {
        return Err(format!(
            "at most {} intervals in one report: a longer interval or a shorter span",
            centralino_store::MAX_INTERVALS
        ));
    }
    Ok(Asked {
        span,
        interval: name,
        only: queue,
    })
}

/// The columns, in order (CSV header and JSON keys).
pub(crate) const COLUMNS: [&str; 23] = [
    "start",
    "queue",
    "offered",
    "answered",
    "answered_within_t",
    "abandoned",
    "short_abandoned",
    "timed_out",
    "exited",
    "callbacks",
    "transferred",
    "overflowed",
    "requeued",
    "dead_ends",
    "callbacks_requested",
    "callbacks_kept",
    "callbacks_kept_in_time",
    "service_level",
    "service_level2",
    "abandon_rate",
    "asa_seconds",
    "aht_seconds",
    "service_level_seconds",
];

/// One row's values, as JSON (`null` where a ratio has no calls).
pub(crate) fn row(f: &QueueFigures, t: Thresholds) -> Vec<Value> {
    let round = |v: Option<f64>| v.map(|v| (v * 10_000.0).round() / 10_000.0);
    vec![
        json!(rfc3339(f.start_ms.div_euclid(1000))),
        json!(f.queue),
        json!(f.offered),
        json!(f.answered),
        json!(f.answered_within),
        json!(f.abandoned),
        json!(f.short_abandoned),
        json!(f.timed_out),
        json!(f.exited),
        json!(f.callbacks),
        json!(f.transferred),
        json!(f.overflowed),
        json!(f.requeued),
        json!(f.dead_ends),
        json!(f.callbacks_requested),
        json!(f.callbacks_kept),
        json!(f.callbacks_kept_in_time),
        json!(round(f.service_level())),
        json!(round(f.service_level2())),
        json!(round(f.abandon_rate())),
        json!(round(f.asa_seconds())),
        json!(round(f.aht_seconds())),
        json!(t.level_ms / 1000),
    ]
}

/// The figures as CSV (RFC 4180; every value is a number, a time or a
/// queue's name, so nothing needs quoting).
pub(crate) fn csv(rows: &[(QueueFigures, Thresholds)]) -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for (f, t) in rows {
        let line: Vec<String> = row(f, *t)
            .iter()
            .map(|v| match v {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Each configured queue's thresholds.
pub(crate) fn thresholds(config: &Config) -> HashMap<String, Thresholds> {
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    config
        .queues
        .iter()
        .map(|q| {
            let t = Thresholds {
                level_ms: ms(q.service.level),
                level2_ms: ms(q.service.level2),
                short_abandon_ms: ms(q.service.short_abandon),
                wrap_up_ms: ms(q.routing.wrap_up),
            };
            (q.routing.name.clone(), t)
        })
        .collect()
}

/// Each configured queue's callback promise (`callback_promise_minutes`
/// of its `callback_hours`): what a callback asked for through the API
/// is promised.
pub(crate) type Promises = HashMap<String, centralino_config::Queue>;

/// The queues' callback promises, from the configuration.
pub(crate) fn promises(config: &Config) -> Promises {
    config
        .queues
        .iter()
        .filter(|q| !q.retired)
        .map(|q| (q.routing.name.clone(), q.clone()))
        .collect()
}

/// Every figure of a queue report: the queue log's, then the callbacks'.
fn figures(
    store: &centralino_store::Store,
    span: Span,
    targets: &HashMap<String, Thresholds>,
    promises: &Promises,
) -> Result<Vec<QueueFigures>, StoreError> {
    let mut rows = store.queue_report(span, |q| targets.get(q).copied(), FALLBACK)?;
    // A callback stored before promises were kept: as the queue would
    // promise it now.
    let legacy = |q: &str, asked: i64, not_before: Option<i64>| {
        promises
            .get(q)
            .and_then(|q| q.callback_promised_by(asked, not_before))
    };
    store.add_callback_figures(
        span,
        &mut rows,
        legacy,
        |q| targets.get(q).copied(),
        FALLBACK,
    )?;
    Ok(rows)
}

/// `centralino report`: the same figures from a store file, for `query`
/// (the endpoint's parameters), as JSON or CSV.
pub fn report(
    store: &centralino_store::Store,
    config: &Config,
    query: &str,
    as_csv: bool,
) -> Result<String, String> {
    let a = asked(Some(query), unix_now())?;
    let targets = thresholds(config);
    let rows = figures(store, a.span, &targets, &promises(config)).map_err(|e| e.to_string())?;
    let rows: Vec<(QueueFigures, Thresholds)> = rows
        .into_iter()
        .filter(|f| a.only.as_deref().is_none_or(|q| q == f.queue))
        .map(|f| {
            let t = targets.get(&f.queue).copied().unwrap_or(FALLBACK);
            (f, t)
        })
        .collect();
    Ok(if as_csv {
        csv(&rows)
    } else {
        document(&a, &rows).to_string()
    })
}

/// The JSON answer.
fn document(a: &Asked, rows: &[(QueueFigures, Thresholds)]) -> Value {
    let intervals: Vec<Value> = rows
        .iter()
        .map(|(f, t)| {
            let values = row(f, *t);
            Value::Object(
                COLUMNS
                    .iter()
                    .zip(values)
                    .map(|(k, v)| ((*k).to_owned(), v))
                    .collect(),
            )
        })
        .collect();
    envelope(a, intervals)
}

/// A report's JSON: its bounds and its rows.
fn envelope(a: &Asked, intervals: Vec<Value>) -> Value {
    json!({
        "from": rfc3339(a.span.from_ms / 1000),
        "to": rfc3339(a.span.to_ms / 1000),
        "interval": a.interval,
        "intervals": intervals,
    })
}

/// A report as the client asked for it: CSV with `Accept: text/csv`, else
/// the JSON document.
fn answer(headers: &HeaderMap, csv: String, json: impl FnOnce() -> Value) -> Response {
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    if wants_csv {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv,
        )
            .into_response();
    }
    ok(StatusCode::OK, &json())
}

/// The operators' report as JSON rows (and CSV lines: breaks as
/// `reason=seconds` joined by `;`).
fn agent_rows(rows: &[AgentFigures]) -> (Vec<Value>, String) {
    let secs = |ms: i64| (ms as f64 / 1000.0 * 10.0).round() / 10.0;
    let mut csv = String::from(
        "start,agent,logged_in_seconds,paused_seconds,pauses,talk_seconds,calls,tenant\r\n",
    );
    let json = rows
        .iter()
        .map(|f| {
            let paused: i64 = f.paused_ms.iter().map(|(_, t)| t).sum();
            let pauses: serde_json::Map<String, Value> = f
                .paused_ms
                .iter()
                .map(|(r, t)| (r.clone(), json!(secs(*t))))
                .collect();
            let start = rfc3339(f.start_ms.div_euclid(1000));
            let flat: Vec<String> = f
                .paused_ms
                .iter()
                .map(|(r, t)| format!("{r}={}", secs(*t)))
                .collect();
            // Reasons come from desks: quoted, with any quote doubled.
            let _ = write!(
                csv,
                "{start},{},{},{},\"{}\",{},{},{}\r\n",
                f.agent,
                secs(f.logged_in_ms),
                secs(paused),
                flat.join(";").replace('"', "\"\""),
                secs(f.talk_ms),
                f.calls,
                f.tenant.as_deref().unwrap_or("")
            );
            json!({
                "start": start,
                "agent": f.agent,
                "logged_in_seconds": secs(f.logged_in_ms),
                "paused_seconds": secs(paused),
                "pauses": pauses,
                "talk_seconds": secs(f.talk_ms),
                "calls": f.calls,
                "tenant": f.tenant,
            })
        })
        .collect();
    (json, csv)
}

/// `centralino report --agents`: the operators' figures from a store
/// file, as JSON or CSV.
pub fn agents(
    store: &centralino_store::Store,
    query: &str,
    as_csv: bool,
) -> Result<String, String> {
    let a = asked(Some(query), unix_now())?;
    let rows = store
        .agent_report(a.span, unix_now_ms())
        .map_err(|e| e.to_string())?;
    let rows: Vec<AgentFigures> = rows
        .into_iter()
        .filter(|f| a.only.as_deref().is_none_or(|q| q == f.agent))
        .collect();
    let (json_rows, csv) = agent_rows(&rows);
    Ok(if as_csv {
        csv
    } else {
        envelope(&a, json_rows).to_string()
    })
}

/// `centralino report --replay`: the queue log of the calls entering a
/// queue in the span, as `simulate --replay` reads it (CSV
/// `seconds,call,queue,event`, seconds from the span's start).
pub fn replay(store: &centralino_store::Store, query: &str) -> Result<String, String> {
    let a = asked(Some(query), unix_now())?;
    let rows = store
        .replay_log(a.span, a.only.as_deref())
        .map_err(|e| e.to_string())?;
    let mut out = String::from("seconds,call,queue,event\n");
    for (at, call, queue, event) in rows {
        // A requeue's second `enter` may come before the span's start of
        // nothing; times are never negative.
        let t = (at - a.span.from_ms).max(0) as f64 / 1000.0;
        let _ = writeln!(out, "{t:.3},{call},{queue},{event}");
    }
    Ok(out)
}

/// `GET /api/v1/reports/agents`: each operator's logged-in time, breaks
/// by reason, talk and calls per interval (the same parameters, `agent`
/// for one operator); a firm's supervisor sees its own operators only.
pub(super) async fn agent_report(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (token, a) = match request(&api, &headers, query.as_deref(), "agent") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let live = api.live();
    let span = a.span;
    let Ok(rows) = api
        .read_store(move |s| s.agent_report(span, unix_now_ms()))
        .await
    else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
    };
    let rows: Vec<AgentFigures> = rows
        .into_iter()
        .filter(|f| {
            // A firm's rows are those of its time with the operator: a
            // name that changed firm keeps its past with the old firm.
            // Rows from before events named their firm go by the
            // operator's firm now.
            token.tenant.as_deref().is_none_or(|t| match &f.tenant {
                Some(ft) => ft == t,
                None => live
                    .agent_tenants
                    .iter()
                    .any(|(ag, at)| *ag == f.agent && at == t),
            }) && a.only.as_deref().is_none_or(|only| only == f.agent)
        })
        .collect();
    let (json_rows, csv) = agent_rows(&rows);
    answer(&headers, csv, || envelope(&a, json_rows))
}

/// A report request's token (admin or supervisor) and bounds, or the
/// answer refusing it.
fn request<'a>(
    api: &'a Api,
    headers: &HeaderMap,
    query: Option<&str>,
    filter: &str,
) -> Result<(Cow<'a, ApiToken>, Asked), Box<Response>> {
    let token = authorize(api, headers, Need::Supervisor)?;
    let a = asked_for(query, unix_now(), filter)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e)))?;
    Ok((token, a))
}

/// Thresholds for a queue no longer configured (its history stays).
pub(crate) const FALLBACK: Thresholds = Thresholds {
    level_ms: 20_000,
    level2_ms: 60_000,
    short_abandon_ms: 5_000,
    wrap_up_ms: 0,
};

pub(super) async fn queue_report(
    State(api): State<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (token, a) = match request(&api, &headers, query.as_deref(), "queue") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let live = api.live();
    // A firm's token sees its own queues only; a name it may not see is
    // as empty as one without calls.
    let visible = |q: &str| {
        token
            .tenant
            .as_deref()
            .is_none_or(|t| live.queues.get(q).is_some_and(|(qt, _)| qt == t))
            && a.only.as_deref().is_none_or(|only| only == q)
    };
    let (targets, promises) = (live.targets.clone(), live.promises.clone());
    let span = a.span;
    let Ok(rows) = api
        .read_store(move |s| figures(s, span, &targets, &promises))
        .await
    else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
    };
    let rows: Vec<(QueueFigures, Thresholds)> = rows
        .into_iter()
        .filter(|f| visible(&f.queue))
        .map(|f| {
            let t = live.targets.get(&f.queue).copied().unwrap_or(FALLBACK);
            (f, t)
        })
        .collect();
    answer(&headers, csv(&rows), || document(&a, &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_asked_with_clear_bounds() {
        // 2026-12-04 10:00 UTC: Rome is at +01:00, its midnight 23:00 UTC.
        let now = parse_rfc3339("2026-12-04T10:00:00Z").unwrap();
        let a = asked(None, now).unwrap();
        assert_eq!(
            rfc3339(a.span.from_ms / 1000),
            "2026-12-03T23:00:00Z",
            "today in Rome"
        );
        assert_eq!(a.span.to_ms - a.span.from_ms, 86_400_000);
        assert_eq!((a.interval, a.span.interval_ms), ("15m", 900_000));
        // Summer: +02:00.
        let july = parse_rfc3339("2026-07-01T12:00:00Z").unwrap();
        assert_eq!(rfc3339(rome_midnight(july)), "2026-06-30T22:00:00Z");
        let a = asked(
            Some("from=2026-12-01T00:00:00%2B01:00&to=2026-12-02T00:00:00Z&interval=1h&queue=info"),
            now,
        )
        .unwrap();
        assert_eq!(rfc3339(a.span.from_ms / 1000), "2026-11-30T23:00:00Z");
        assert_eq!((a.interval, a.only.as_deref()), ("1h", Some("info")));
        for (q, why) in [
            ("from=yesterday", "from"),
            ("interval=5m", "interval"),
            ("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "after"),
            (
                "from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
                "at most",
            ),
            ("limit=3", "unknown"),
        ] {
            let e = asked(Some(q), now).err().unwrap_or_default();
            assert!(e.contains(why), "{q}: {e}");
        }
    }
}
