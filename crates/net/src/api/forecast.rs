//! The staffing forecast: each queue's next 15 minutes from the same
//! interval of the days before (the store's queue log), and the operators
//! Erlang C asks for that at the queue's service level target. Read on a
//! read-only connection once a minute; the supervisor view and
//! `centralino_queue_forecast_offered` / `centralino_queue_agents_forecast`
//! show it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::Api;
use super::reports::FALLBACK;

/// Interval forecast (the advisor's and the reports' 15 minutes).
const INTERVAL_MS: i64 = 900_000;
/// Days looked back.
const DAYS: u32 = 7;
/// How often the forecast is made again.
const EVERY: Duration = Duration::from_secs(60);

/// One queue's next interval.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Next {
    /// When it starts, Unix seconds.
    pub start_unix: i64,
    /// Calls expected in it.
    pub offered: f64,
    /// Operators Erlang C asks for them (none without a handling time
    /// measured on those days).
    pub agents: Option<u32>,
    /// Days the mean is over.
    pub days: u32,
}

/// The latest forecasts, by queue.
pub(crate) type Forecasts = Arc<RwLock<HashMap<String, Next>>>;

/// Makes the forecast once a minute, for the 15 minutes after the current
/// ones.
pub(super) async fn run(api: Api) {
    let mut tick = tokio::time::interval(EVERY);
    // The queues whose gauges are on the metrics page: a queue a reload
    // removed leaves it.
    let mut shown: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let from = (now_ms / INTERVAL_MS + 1) * INTERVAL_MS;
        let live = api.live();
        let targets = live.targets.clone();
        let Ok(rows) = api
            .read_store(move |s| {
                s.forecast(
                    from,
                    from + INTERVAL_MS,
                    DAYS,
                    |q| targets.get(q).copied(),
                    FALLBACK,
                )
            })
            .await
        else {
            continue;
        };
        let mut next = HashMap::with_capacity(rows.len());
        for f in rows {
            // Only the running configuration's queues.
            let Some(&(target, t_seconds)) = live.service.get(&f.queue) else {
                continue;
            };
            let rate = f.offered / (INTERVAL_MS as f64 / 1000.0);
            // 100 % is a valid target that no finite staff meets: staffed
            // for 99.9 %, as the live advisor does.
            let agents = f.aht_seconds.and_then(|aht| {
                centralino_routing::staffing::agents_needed(rate, aht, t_seconds, target.min(0.999))
            });
            api.net
                .queue_forecast_offered
                .with_label_values(&[&f.queue])
                .set(f.offered);
            api.net
                .queue_agents_forecast
                .with_label_values(&[&f.queue])
                .set(agents.map_or(0, i64::from));
            next.insert(
                f.queue,
                Next {
                    start_unix: from / 1000,
                    offered: f.offered,
                    agents,
                    days: f.days,
                },
            );
        }
        // A queue without calls on those days is forecast none.
        for q in live.service.keys().filter(|q| !next.contains_key(*q)) {
            api.net
                .queue_forecast_offered
                .with_label_values(&[q])
                .set(0.0);
            api.net.queue_agents_forecast.with_label_values(&[q]).set(0);
        }
        shown.retain(|q| {
            let kept = live.service.contains_key(q);
            if !kept {
                let _ = api.net.queue_forecast_offered.remove_label_values(&[q]);
                let _ = api.net.queue_agents_forecast.remove_label_values(&[q]);
            }
            kept
        });
        shown.extend(live.service.keys().cloned());
        *api.forecasts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
    }
}
