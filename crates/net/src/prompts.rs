//! Loads the prompts once at start-up: the Italian announcement set from
//! `media.sounds_dir`, the node's music on hold and each queue's. A file
//! that cannot be used is reported with its path and skipped: the node
//! still starts (built-in music, announcements off), because a missing
//! sound must never stop the phones.

use std::path::Path;
use std::sync::Arc;

use centralino_config::Config;
use centralino_media::announce::{self, Library};
use centralino_media::g711::Law;
use centralino_media::prompt::Prompt;
use tracing::{info, warn};

/// The law prompts are stored in: Italian trunks speak A-law; a µ-law leg
/// gets them through the cross table at send time.
const STORE_LAW: Law = Law::Alaw;

fn load_wav(path: &Path) -> Option<Prompt> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read a prompt");
            return None;
        }
    };
    match Prompt::from_wav(&data, STORE_LAW) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot use a prompt");
            None
        }
    }
}

/// The announcement library and the music of each queue.
pub(crate) fn load(config: &Config) -> (Arc<Library>, Vec<Option<Prompt>>) {
    let mut lib = Library::new();
    let announcing = config.queues.iter().any(|q| q.announce_every.is_some());
    if let Some(dir) = &config.media.sounds_dir {
        let names = announce::prompt_names();
        let mut missing = 0;
        for name in &names {
            let path = dir.join(format!("{name}.wav"));
            if !path.exists() {
                missing += 1;
                continue;
            }
            if let Some(p) = load_wav(&path) {
                lib.insert(name.clone(), p);
            }
        }
        if missing > 0 && announcing {
            warn!(
                dir = %dir.display(),
                missing,
                "Italian prompts missing: announcements are skipped (install asterisk-core-sounds-it-wav)"
            );
        }
    }
    // The IVR flows' prompts: the site's own first, then the sound set.
    let mut missing = 0;
    for (path, name) in config.flow_prompts() {
        if lib.get(&name).is_some() {
            continue;
        }
        match config.find_prompt(&name) {
            Some(file) => {
                if let Some(p) = load_wav(&file) {
                    lib.insert(name, p);
                }
            }
            None => {
                missing += 1;
                warn!(key = %path, prompt = %name, "IVR prompt not found (media.prompts_dir, media.sounds_dir): silence instead");
            }
        }
    }
    if missing > 0 {
        warn!(
            missing,
            "IVR prompts missing; `centralino check-config` lists them"
        );
    }
    let node_music = config
        .media
        .music_on_hold
        .as_deref()
        .and_then(load_wav)
        .unwrap_or_else(|| announce::builtin_music(STORE_LAW));
    let music = config
        .queues
        .iter()
        .map(|q| {
            Some(
                q.music_on_hold
                    .as_deref()
                    .and_then(load_wav)
                    .unwrap_or_else(|| node_music.clone()),
            )
        })
        .collect();
    info!(
        prompts = lib.len(),
        music_seconds = node_music.duration().as_secs(),
        "prompts loaded"
    );
    (Arc::new(lib), music)
}
