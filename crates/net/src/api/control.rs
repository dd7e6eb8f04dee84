//! The reload slot: how a reload asked over HTTP or by SIGHUP reaches the
//! engine, and what it answers.

use super::*;

/// Reads the configuration again (the binary knows where from).
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Where the API and SIGHUP find the reload once the SIP side runs, with
/// the configuration running now (what a reload is compared with).
#[derive(Clone, Default)]
pub struct ReloadSlot {
    pub(super) control: Arc<tokio::sync::Mutex<Option<Control>>>,
    /// The engine's handle, also for pauses (never waits for a reload).
    pub(super) engine: Arc<std::sync::Mutex<Option<crate::handle::Reloader>>>,
}

pub(super) struct Control {
    pub(super) loader: Loader,
    pub(super) reloader: crate::handle::Reloader,
    pub(super) current: Config,
}

/// Why a reload was not applied (nothing of it was).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The node is still starting.
    #[error("the node is not ready")]
    NotReady,
    /// The new file is not a valid configuration.
    #[error("{0}")]
    Invalid(String),
    /// Keys a running node cannot apply changed.
    #[error("these keys need a restart: {}", .0.join(", "))]
    Restart(Vec<String>),
    /// The engine refused it, or could not be reached.
    #[error(transparent)]
    Refused(crate::handle::EngineReloadError),
}

impl ReloadSlot {
    /// Enables reloads (`POST /api/v1/config/reload`, SIGHUP) of a node
    /// running `current`.
    pub async fn enable(&self, loader: Loader, reloader: crate::handle::Reloader, current: Config) {
        *self
            .engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reloader.clone());
        *self.control.lock().await = Some(Control {
            loader,
            reloader,
            current,
        });
    }

    pub(super) fn engine(&self) -> Option<crate::handle::Reloader> {
        self.engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the configuration again and applies every key that changed,
    /// or nothing: a key the node cannot apply live refuses the whole
    /// reload, named. `Ok` lists the keys applied. One reload at a time.
    pub async fn reload(&self, api: &Api) -> Result<Vec<String>, ReloadError> {
        let mut guard = self.control.lock().await;
        let control = guard.as_mut().ok_or(ReloadError::NotReady)?;
        let loader = control.loader.clone();
        let config = tokio::task::spawn_blocking(move || loader())
            .await
            .map_err(|_| ReloadError::Invalid("reading the configuration failed".into()))?
            .map_err(ReloadError::Invalid)?;
        let changed = centralino_config::reload::changed_keys(&control.current, &config);
        let mut restart =
            centralino_config::reload::restart_keys(&control.current, &config, &changed);
        let dials = |c: &Config| c.trunks.iter().any(|t| t.outbound.is_some());
        if dials(&config) && !dials(&control.current) {
            // The callback scheduler starts with a node that can dial.
            restart.push("trunks[].outbound (the first outbound trunk)".into());
        }
        if !restart.is_empty() {
            warn!(keys = %restart.join(", "), "reload refused: keys need a restart");
            api.net.config_reloads.with_label_values(&["refused"]).inc();
            return Err(ReloadError::Restart(restart));
        }
        control
            .reloader
            .reload(config.clone())
            .await
            .map_err(ReloadError::Refused)?;
        api.apply(&config);
        centralino_types::set_unmask_numbers(config.unmask_numbers);
        info!(keys = %changed.join(", "), "reload applied");
        control.current = config;
        Ok(changed)
    }
}
