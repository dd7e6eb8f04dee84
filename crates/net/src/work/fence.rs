//! The fence before a dial: the engine (a callback) or the campaigns'
//! driver (a contact) asks the work driver to write `dialing` on the
//! stream for this very claim; only then is the citizen dialled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use centralino_store::service::unix_now;
use tokio::sync::{mpsc, oneshot};

use super::ACK_TIMEOUT;

/// Most claims whose token waits for their dial.
const MAX_CLAIMS: usize = 100_000;

/// Each claimed callback's version at its claim, by id: the token its
/// fence and dial mark act on (a claim requeued and claimed again is
/// another claim). Written by the scheduler, taken at the dial.
#[derive(Clone, Default)]
pub(crate) struct Claims(Arc<Mutex<HashMap<String, i64>>>);

impl Claims {
    pub(crate) fn insert(&self, tokens: Vec<(String, i64)>) {
        if let Ok(mut c) = self.0.lock() {
            if c.len() + tokens.len() > MAX_CLAIMS {
                // Claims that never reached a dial (failed, no operator):
                // forgotten; a dial without its token is not fenced (held).
                c.clear();
            }
            c.extend(tokens);
        }
    }

    pub(super) fn take(&self, id: &str) -> Option<i64> {
        self.0.lock().ok().and_then(|mut c| c.remove(id))
    }
}

/// Asks whether this node may dial callback `id` (claimed at `version`),
/// or attempt `attempt` of campaign contact `contact` (its local id).
pub(crate) struct Fence {
    pub(super) target: Target,
    pub(super) reply: oneshot::Sender<Fenced>,
}

/// What a fence is for.
pub(super) enum Target {
    Callback { id: String, version: Option<i64> },
    Contact { contact: i64, attempt: u32 },
}

/// The fence's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fenced {
    /// Written `dialing` on the stream: dial (after marking that claim).
    Go(i64),
    /// Another node took it over (now `moved` here), its record cannot be
    /// trusted (now `failed`, `unconfirmed`), or the claim is no longer
    /// the one asking: do not dial, say nothing of it.
    Gone,
    /// The stream cannot be reached: do not dial; it goes back to
    /// pending without counting the attempt.
    Unavailable,
}

/// The engine wants to dial callback `id` (call `call`): the fence
/// first (for this claim: its token taken now, in order with the claims),
/// then the store's dial mark for the same claim; the engine hears
/// whether to dial, to give the callback back uncounted, or to let it go.
pub(crate) fn dialing(
    fence: &mpsc::Sender<Fence>,
    claims: &Claims,
    sink: &centralino_store::service::RecordSink,
    engine: mpsc::WeakSender<crate::handle::EngineInput>,
    id: String,
    call: centralino_types::CallId,
) {
    use crate::handle::EngineInput;
    let version = claims.take(&id);
    let (fence, store) = (fence.clone(), sink.handle());
    tokio::spawn(async move {
        let (tx, rx) = oneshot::channel();
        let asked = fence
            .send(Fence {
                target: Target::Callback {
                    id: id.clone(),
                    version,
                },
                reply: tx,
            })
            .await
            .is_ok();
        let answer = if asked {
            tokio::time::timeout(ACK_TIMEOUT * 3, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(Fenced::Unavailable)
        } else {
            Fenced::Unavailable
        };
        let input = match answer {
            Fenced::Go(v) => {
                let now = unix_now();
                let recorded = store
                    .with(move |s| s.mark_dialed_if(&id, v, now))
                    .await
                    .unwrap_or(false);
                EngineInput::CallbackDialing { call, recorded }
            }
            Fenced::Gone => EngineInput::CallbackGone { call },
            // Not the citizen's attempt: back to pending at once.
            Fenced::Unavailable => EngineInput::CallbackHeld { call },
        };
        if let Some(tx) = engine.upgrade() {
            let _ = tx.send(input).await;
        }
    });
}

/// Asks the fence whether attempt `attempt` of campaign contact `contact`
/// may dial: `Go` once `dialing` is written on the stream for it; any
/// other answer, it is not dialled.
pub(crate) async fn fence_contact(
    fence: &mpsc::Sender<Fence>,
    contact: i64,
    attempt: u32,
) -> Fenced {
    let (tx, rx) = oneshot::channel();
    let asked = fence
        .send(Fence {
            target: Target::Contact { contact, attempt },
            reply: tx,
        })
        .await
        .is_ok();
    if !asked {
        return Fenced::Unavailable;
    }
    tokio::time::timeout(ACK_TIMEOUT * 3, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(Fenced::Unavailable)
}
