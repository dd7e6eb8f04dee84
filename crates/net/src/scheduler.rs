//! The callback scheduler: claims due callbacks from the store, as many
//! as free operators can take, within each queue's callback hours, and
//! hands them to the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use centralino_b2bua::DueCallback;
use tokio::sync::mpsc;
use tracing::warn;

use crate::handle::EngineInput;

/// How often due callbacks are claimed from the store.
const CALLBACK_POLL: Duration = Duration::from_secs(1);
/// Most callbacks claimed at once.
const CALLBACK_BATCH: usize = 50;

/// Claims due callbacks and hands them to the engine, once a second.
pub(crate) async fn callback_scheduler(
    sink: centralino_store::service::RecordSink,
    tx: mpsc::Sender<EngineInput>,
    config: tokio::sync::watch::Receiver<Arc<centralino_config::Config>>,
    draining: Arc<AtomicBool>,
    work_ready: Option<(Arc<AtomicBool>, crate::work::Claims)>,
) {
    let mut tick = tokio::time::interval(CALLBACK_POLL);
    loop {
        tick.tick().await;
        // A node shutting down starts no callback: the next one (or this
        // one after its restart) takes them.
        if draining.load(Ordering::Relaxed) {
            continue;
        }
        // In a national network with the work stream, a callback is
        // dialled only while the stream can fence it (exactly once).
        if work_ready
            .as_ref()
            .is_some_and(|(r, _)| !r.load(Ordering::Relaxed))
        {
            continue;
        }
        // Citizens are called only within their queue's callback hours
        // (e.g. fragile people Mon-Fri 08:00-18:00, Europe/Rome).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // The running configuration's queues (a reload adds, retires and
        // changes their hours).
        let open: Vec<String> = config
            .borrow()
            .queues
            .iter()
            .filter(|q| !q.retired)
            .filter(|q| q.callback_hours.as_ref().is_none_or(|c| c.open(now)))
            .map(|q| q.routing.name.clone())
            .collect();
        if open.is_empty() {
            continue;
        }
        // Only as many as free operators can take, from queues that have
        // one: a callback claimed holds two RTP port pairs and spends an
        // attempt, so claiming for nobody starves live calls of ports.
        // The engine counts them now, not from its last published view
        // (up to a second old: an operator a call took since would be
        // claimed for); asked on its own input queue, after every claim
        // this task sent, so those are counted too. An operator free in
        // the first ring of two queues counts in each, as before: the
        // batch can then hold one callback more than people free, which
        // waits queued for the next.
        let (ask, answer) = tokio::sync::oneshot::channel();
        if tx.send(EngineInput::CallbackRooms(ask)).await.is_err() {
            return;
        }
        let Ok(rooms) = answer.await else {
            return;
        };
        let room: Vec<(String, usize)> = rooms
            .into_iter()
            .filter(|(q, r)| *r > 0 && open.contains(q))
            .map(|(q, r)| (q, r as usize))
            .collect();
        let limit: usize = room.iter().map(|(_, r)| r).sum();
        if limit == 0 {
            continue;
        }
        // The total bounds the store's scan too: it stops at that many.
        let due = match sink.claim_due(CALLBACK_BATCH.min(limit), room).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot read due callbacks");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        if let Some((_, claims)) = &work_ready {
            // Each claim's token (its version now, before the engine can
            // change it), for its fence and dial mark.
            let ids: Vec<String> = due.iter().map(|c| c.id.clone()).collect();
            match sink.handle().with(move |s| s.versions(&ids)).await {
                Ok(v) => claims.insert(v),
                Err(e) => warn!(error = %e, "cannot read the claimed callbacks' versions"),
            }
        }
        let due = due
            .into_iter()
            .map(|c| DueCallback {
                // One stored before promises were kept: as the queue
                // would promise it now.
                promised_unix: c.promised_by.or_else(|| {
                    promised_by(&config.borrow(), &c.queue, c.created_at, c.not_before)
                }),
                id: c.id,
                queue: c.queue,
                number: c.number,
                requirements: c.requirements,
                priority: c.priority,
                created_unix: c.created_at,
                attempt: c.attempts,
                campaign: None,
            })
            .collect();
        if tx.send(EngineInput::Callbacks(due)).await.is_err() {
            return;
        }
    }
}

/// By when a callback of `queue` asked for at `asked` (to be placed not
/// before `not_before`) is promised, as the configuration has the queue
/// (`callback_promise_minutes` of its `callback_hours`); `None` for a
/// queue it does not have, or a promise its hours cannot keep.
pub(crate) fn promised_by(
    config: &centralino_config::Config,
    queue: &str,
    asked: i64,
    not_before: Option<i64>,
) -> Option<i64> {
    config
        .queues
        .iter()
        .find(|q| !q.retired && q.routing.name == queue)?
        .callback_promised_by(asked, not_before)
}

/// How often the callbacks backlog is read for its gauges.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Keeps `centralino_queue_callbacks_open{queue}` and
/// `centralino_queue_callbacks_oldest_seconds{queue}` from the store's
/// backlog, read on a read-only connection of its own (a blocking
/// thread) so the writer's group commits never wait for it. A queue whose
/// callbacks are all done reads 0 (not absent), so an alert on the age
/// ends when they are.
pub(crate) async fn backlog_gauges(
    db: Arc<std::path::PathBuf>,
    metrics: crate::metrics::NetMetrics,
) {
    let mut tick = tokio::time::interval(BACKLOG_EVERY);
    let mut seen: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        let path = db.clone();
        let read = tokio::task::spawn_blocking(move || {
            centralino_store::Store::open_reader(&path)?.callback_backlog()
        })
        .await;
        let Ok(Ok(backlog)) = read else {
            // A store that cannot answer leaves the last figures: the
            // store's own metrics and alerts say why.
            continue;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        for q in &seen {
            if !backlog.iter().any(|b| &b.queue == q) {
                metrics.queue_callbacks_open.with_label_values(&[q]).set(0);
                metrics
                    .queue_callbacks_oldest
                    .with_label_values(&[q])
                    .set(0);
            }
        }
        for b in &backlog {
            metrics
                .queue_callbacks_open
                .with_label_values(&[&b.queue])
                .set(i64::try_from(b.open).unwrap_or(i64::MAX));
            metrics
                .queue_callbacks_oldest
                .with_label_values(&[&b.queue])
                .set((now - b.oldest).max(0));
            if !seen.contains(&b.queue) {
                seen.push(b.queue.clone());
            }
        }
    }
}
