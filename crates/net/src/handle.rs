//! The engine's control surface: the typed input its task reads (network
//! input, reloads, callbacks, drain, shutdown, pauses) and the handle the
//! rest of the node holds to send it. The API and `main` speak to the
//! engine through this module only, never through the SIP driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use centralino_b2bua::DueCallback;
use centralino_config::Config;
use centralino_sip::guard::{Framed, Rejection};
use centralino_sip::txn::Flow;
use tokio::sync::mpsc;

pub(crate) enum Input {
    Datagram {
        flow: Flow,
        data: Vec<u8>,
    },
    Framed {
        flow: Flow,
        framed: Result<Framed, Rejection>,
    },
    ConnOpen {
        conn: u64,
        tx: mpsc::Sender<Vec<u8>>,
        /// Trunks (by name) whose client certificate the connection
        /// presented: sent before its first message, on the same channel,
        /// so the engine knows who speaks before it reads a word.
        trunks: Vec<String>,
    },
    ConnClosed {
        conn: u64,
    },
    /// Our TLS connection to a carrier could not be opened: what was
    /// queued on it is lost.
    ConnFailed {
        remote: SocketAddr,
    },
    Reload(Box<Reload>),
    Callbacks(Vec<DueCallback>),
    /// Graceful shutdown: refuse new calls; say when none is left.
    Drain(tokio::sync::oneshot::Sender<()>),
    /// End every call, flush the records, stop.
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// An operator pauses or resumes from their desktop.
    Pause {
        agent: String,
        paused: bool,
        reason: Option<String>,
        reply:
            tokio::sync::oneshot::Sender<Result<&'static str, centralino_b2bua::AgentStateError>>,
    },
}

/// A new configuration for the engine, with its prompts already loaded.
pub(crate) struct Reload {
    /// Told whether the engine applied it.
    pub(crate) reply:
        Option<tokio::sync::oneshot::Sender<Result<(), centralino_b2bua::ReloadRefused>>>,
    pub(crate) config: Config,
    pub(crate) prompts: Arc<centralino_media::announce::Library>,
    pub(crate) music: Vec<Option<centralino_media::prompt::Prompt>>,
}

/// Why a configuration handed to the engine was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EngineReloadError {
    /// Loading the prompts it names failed (their task died).
    #[error("prompt loading failed")]
    Prompts,
    /// The engine task is gone.
    #[error("the engine is not running")]
    NotRunning,
    /// The engine dropped the request unanswered.
    #[error("the engine did not answer")]
    NoAnswer,
    /// The engine refused it and keeps its configuration.
    #[error(transparent)]
    Refused(centralino_b2bua::ReloadRefused),
}

/// Hands new configurations to a running node (SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    pub(crate) tx: mpsc::Sender<Input>,
    /// Set once a drain starts (the callback scheduler stops claiming).
    pub(crate) draining: Arc<AtomicBool>,
}

impl Reloader {
    /// Loads the prompts the configuration names (off the engine task)
    /// and hands it over; the engine applies what can change live.
    pub async fn reload(&self, config: Config) -> Result<(), EngineReloadError> {
        let loaded = tokio::task::spawn_blocking(move || {
            let (prompts, music) = crate::prompts::load(&config);
            (config, prompts, music)
        })
        .await
        .map_err(|_| EngineReloadError::Prompts)?;
        let (config, prompts, music) = loaded;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Input::Reload(Box::new(Reload {
                reply: Some(reply),
                config,
                prompts,
                music,
            })))
            .await
            .map_err(|_| EngineReloadError::NotRunning)?;
        answer
            .await
            .map_err(|_| EngineReloadError::NoAnswer)?
            .map_err(EngineReloadError::Refused)
    }

    /// Starts draining (new calls get 503, no callback is started); the
    /// answer comes once no call is left.
    pub async fn drain(&self) -> tokio::sync::oneshot::Receiver<()> {
        self.draining.store(true, Ordering::Relaxed);
        let (idle, rx) = tokio::sync::oneshot::channel();
        let _ = self.tx.send(Input::Drain(idle)).await;
        rx
    }

    /// Ends every call left, writes the call records out and stops the
    /// engine; returns once the store has them.
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let (done, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Input::Shutdown(done)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Pauses (with an optional reason) or resumes an operator: the state
    /// they are in after it, or why not. `Err(None)`: the engine is gone.
    pub async fn set_paused(
        &self,
        agent: String,
        paused: bool,
        reason: Option<String>,
    ) -> Result<&'static str, Option<centralino_b2bua::AgentStateError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Input::Pause {
                agent,
                paused,
                reason,
                reply,
            })
            .await
            .map_err(|_| None)?;
        answer.await.map_err(|_| None)?.map_err(Some)
    }
}
