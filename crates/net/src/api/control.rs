//! Reloads: how a reload asked over HTTP or by SIGHUP reaches the engine,
//! and what it answers.

use super::*;

/// Reads the configuration again, names resolved over the running
/// configuration's catalog and its queues kept in their places (see
/// `Config::from_toml_seeded`).
pub type Loader = Arc<dyn Fn(&centralino_config::Seed) -> Result<Config, String> + Send + Sync>;

/// The reload's state: where the configuration is read from, and the one
/// running now (what a reload is compared with). One reload at a time.
#[derive(Clone)]
pub(super) struct Reloads(Arc<tokio::sync::Mutex<Control>>);

pub(super) struct Control {
    pub(super) loader: Loader,
    pub(super) current: Config,
}

impl Reloads {
    pub(super) fn new(loader: Loader, current: Config) -> Self {
        Self(Arc::new(tokio::sync::Mutex::new(Control {
            loader,
            current,
        })))
    }
}

/// Why a reload was not applied (nothing of it was).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is not a valid configuration.
    #[error("{0}")]
    Invalid(String),
    /// Keys a running node cannot apply changed.
    #[error("these keys need a restart: {}", .0.join(", "))]
    Restart(Vec<String>),
    /// It gives queues to other firms than the store knows them by.
    #[error("{}; give each such queue another name (a queue keeps its firm for the life of the database)", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    QueueOwners(Vec<centralino_store::OwnerConflict>),
    /// The store could not be asked.
    #[error("the store is unavailable: {0}")]
    Store(String),
    /// The engine refused it, or could not be reached.
    #[error(transparent)]
    Refused(crate::handle::EngineReloadError),
}

impl Api {
    /// Reads the configuration again and applies every key that changed,
    /// or nothing: a key the node cannot apply live refuses the whole
    /// reload, named. `Ok` lists the keys applied. One reload at a time.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let mut control = self.reload.0.lock().await;
        self.reload_held(&mut control).await
    }

    /// Takes the reload turn (no other reload, SIGHUP included, runs
    /// until it is dropped): what changes the store's operators holds it
    /// across its write, its reload and its undo.
    pub(super) async fn reload_turn(&self) -> tokio::sync::OwnedMutexGuard<Control> {
        self.reload.0.clone().lock_owned().await
    }

    /// [`Self::reload`], the turn already held.
    pub(super) async fn reload_held(
        &self,
        control: &mut Control,
    ) -> Result<Vec<String>, ReloadError> {
        let api = self;
        let loader = control.loader.clone();
        let seed = control.current.seed();
        let config = tokio::task::spawn_blocking(move || loader(&seed))
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
        // A queue a reload adds may carry a name the database knows as
        // another firm's (a queue of an earlier run): refused. New names
        // are bound before the engine takes them (never live unbound),
        // and forgotten again if it refuses.
        let queues = queue_owners(&config);
        let now = unix_now();
        let bound = match api.store.with(move |s| s.bind_queues(&queues, now)).await {
            Ok(bound) => bound,
            Err(e) => {
                if let ServiceError::Store(s) = &e
                    && let StoreError::QueueOwners(found) = &**s
                {
                    warn!(
                        queues = found.len(),
                        "reload refused: queues given to another firm than the store knows them by"
                    );
                    api.net.config_reloads.with_label_values(&["refused"]).inc();
                    return Err(ReloadError::QueueOwners(found.clone()));
                }
                warn!(error = %e, "reload refused: the store cannot bind its queues");
                api.net.config_reloads.with_label_values(&["refused"]).inc();
                return Err(ReloadError::Store(e.to_string()));
            }
        };
        // The desks of operators this reload moves to another firm (or
        // removes), as they stand before the engine applies it: what they
        // show now is the old firm's (TEST-MATRIX D12).
        let moved = left_their_firm(&api.live().agent_tenants, &agent_firms(&config));
        let marks = api.desks.marks(&moved);
        if let Err(e) = api.engine.reload(config.clone()).await {
            // Unanswered, it may have been applied: the names stay bound.
            let applied = matches!(e, crate::handle::EngineReloadError::NoAnswer);
            if !bound.is_empty() && !applied {
                let undo = api.store.with(move |s| s.unbind_queues(&bound, now)).await;
                if let Err(u) = undo {
                    // Bound to the firm the refused file gave them: the
                    // next start or reload naming them for another firm
                    // is refused, and says so.
                    warn!(error = %u, "queues of a refused reload stay bound");
                }
            }
            return Err(ReloadError::Refused(e));
        }
        api.desks.forget_last_calls(&marks);
        api.apply(&config);
        centralino_types::set_unmask_numbers(config.unmask_numbers);
        info!(keys = %changed.join(", "), "reload applied");
        control.current = config;
        Ok(changed)
    }
}
