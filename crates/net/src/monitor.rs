//! Supervisors joining operators' calls from the wallboard: the engine
//! task's side of `POST/PATCH/DELETE /api/v1/agents/{name}/monitor`. The
//! engine says whether the supervisor may join (and on which call), the
//! media plane makes their WebRTC leg on a port of its own, and the
//! engine's `Monitor` command puts it on the call, in order with the
//! call's other media commands.

use std::time::Instant;

use centralino_b2bua::{Engine, MonitorError};
use centralino_media::monitor::MonitorMode;
use centralino_media::webrtc::WebRtcError;
use tokio::sync::oneshot;
use tracing::warn;

use crate::media::MediaPlane;

/// A supervisor's request, for the engine task.
pub enum MonitorIn {
    /// Join operator `agent`'s conversation in `mode` with the browser's
    /// SDP `offer`.
    Start {
        /// The operator.
        agent: String,
        /// The supervisor's token name.
        supervisor: String,
        /// The supervisor's firm (`None`: every firm's).
        firm: Option<String>,
        /// Listen, whisper, barge.
        mode: MonitorMode,
        /// The browser's SDP offer.
        offer: String,
        /// The call and the SDP answer, or why not.
        reply: oneshot::Sender<Result<Joined, MonitorRefused>>,
    },
    /// Change mode (`Some`) or leave (`None`).
    Set {
        /// The operator.
        agent: String,
        /// The supervisor's token name.
        supervisor: String,
        /// The new mode.
        mode: Option<MonitorMode>,
        /// The call's record id, or why not.
        reply: oneshot::Sender<Result<String, MonitorRefused>>,
    },
}

/// A supervisor on a call.
#[derive(Debug)]
pub struct Joined {
    /// The call's record id.
    pub record: String,
    /// The SDP answer for their browser.
    pub sdp: String,
}

/// Why a supervisor's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum MonitorRefused {
    /// The engine's rules (who, which call).
    #[error(transparent)]
    Engine(#[from] MonitorError),
    /// The browser's offer cannot be answered.
    #[error(transparent)]
    Offer(WebRtcError),
    /// The node cannot make the leg now (no port, no certificate).
    #[error("{0}")]
    Unavailable(String),
}

/// Carries out one request in the engine task.
pub(crate) fn input(engine: &mut Engine, plane: &mut MediaPlane, now: Instant, m: MonitorIn) {
    match m {
        MonitorIn::Start {
            agent,
            supervisor,
            firm,
            mode,
            offer,
            reply,
        } => {
            let result = engine
                .monitor_start(&agent, &supervisor, firm.as_deref(), mode)
                .map_err(MonitorRefused::from)
                .and_then(|target| {
                    match plane.monitor_browser(target.call, target.sdp_ip, &offer, &target.laws) {
                        Ok((_, sdp)) => {
                            engine.monitor_joined(now, target.call);
                            Ok(Joined {
                                record: target.record,
                                sdp,
                            })
                        }
                        Err(e) => {
                            engine.monitor_failed(target.call);
                            warn!(supervisor = %supervisor, error = %e, "a supervisor's browser could not join");
                            Err(match e {
                                WebRtcError::Certificate | WebRtcError::Refused(_) => {
                                    MonitorRefused::Unavailable(e.to_string())
                                }
                                e => MonitorRefused::Offer(e),
                            })
                        }
                    }
                });
            let _ = reply.send(result);
        }
        MonitorIn::Set {
            agent,
            supervisor,
            mode,
            reply,
        } => {
            let _ = reply.send(
                engine
                    .monitor_set(now, &agent, &supervisor, mode)
                    .map_err(MonitorRefused::from),
            );
        }
    }
}
