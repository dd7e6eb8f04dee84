//! The staffing advisor's Erlang A, on a thread of its own (it integrates
//! a queue's states: up to a second at the national scale, never on the
//! engine's thread).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use centralino_b2bua::StaffingJob;
use centralino_types::QueueId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::handle::EngineInput;

/// Questions not yet started: the latest per queue. A newer question
/// replaces an older one still waiting (its answer would be ignored as
/// older anyway), so however slow the thread, what waits is bounded by
/// the number of queues and nothing is computed twice.
#[derive(Default)]
struct Pending {
    jobs: HashMap<QueueId, StaffingJob>,
    /// The engine task is gone: the thread ends.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
}

/// The engine task's end of the staffing thread; dropping it ends the
/// thread once the question it is on is answered.
pub(crate) struct StaffingTx(Arc<Shared>);

impl StaffingTx {
    /// Hands a question over, replacing the same queue's if not started.
    pub(crate) fn ask(&self, job: StaffingJob) {
        let mut p = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if p.jobs.insert(job.queue, job).is_some() {
            debug!("an older staffing question replaced before it started");
        }
        drop(p);
        self.0.ready.notify_one();
    }

    /// Questions waiting now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .len()
    }
}

impl Drop for StaffingTx {
    fn drop(&mut self) {
        self.0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.0.ready.notify_one();
    }
}

/// The oldest question waiting, or `None` once the engine task is gone.
fn next(shared: &Shared) -> Option<StaffingJob> {
    let mut p = shared
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    loop {
        let oldest = p.jobs.values().min_by_key(|j| j.asked).map(|j| j.queue);
        if let Some(q) = oldest {
            return p.jobs.remove(&q);
        }
        if p.closed {
            return None;
        }
        p = shared.ready.wait(p).unwrap_or_else(PoisonError::into_inner);
    }
}

/// Starts the thread: questions one at a time, the answers back in the
/// engine's queue. `None` if it could not start (the engine keeps
/// Erlang C's counts).
pub(crate) fn worker(answers: mpsc::WeakSender<EngineInput>) -> Option<StaffingTx> {
    let shared = Arc::new(Shared::default());
    let theirs = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("staffing".into())
        .spawn(move || {
            crate::sip_io::background_thread();
            while let Some(job) = next(&theirs) {
                let needed = job.run();
                let Some(tx) = answers.upgrade() else { break };
                let job = Box::new(job);
                if tx
                    .blocking_send(EngineInput::Staffing { job, needed })
                    .is_err()
                {
                    warn!("the engine is gone: staffing answers stop");
                    break;
                }
            }
        });
    match spawned {
        Ok(_) => Some(StaffingTx(shared)),
        Err(e) => {
            warn!(error = %e, "no staffing thread: Erlang C only");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn job(queue: u32, asked: Instant) -> StaffingJob {
        StaffingJob {
            queue: QueueId(queue),
            asked,
            rate: 0.5,
            aht_seconds: 180.0,
            patience_seconds: 60.0,
            t_seconds: 20.0,
            target: 0.8,
            max_abandon: 0.05,
            last: None,
        }
    }

    /// A thread busy elsewhere never lets questions pile up: a queue's
    /// newer question replaces its waiting one, the oldest asked goes
    /// first, and the thread ends with the engine's end.
    #[test]
    fn questions_wait_one_per_queue_and_the_oldest_goes_first() {
        let shared = Arc::new(Shared::default());
        let tx = StaffingTx(shared.clone());
        let t0 = Instant::now();
        for i in 0..100u32 {
            tx.ask(job(1, t0 + Duration::from_secs(u64::from(i) + 10)));
            tx.ask(job(2, t0 + Duration::from_secs(u64::from(i))));
        }
        assert_eq!(tx.waiting(), 2);
        let first = next(&shared).unwrap();
        assert_eq!(first.queue, QueueId(2));
        assert_eq!(first.asked, t0 + Duration::from_secs(99));
        assert_eq!(next(&shared).unwrap().queue, QueueId(1));
        drop(tx);
        assert!(next(&shared).is_none());
    }
}
