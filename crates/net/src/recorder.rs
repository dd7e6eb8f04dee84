//! Call recordings on disk, off the media threads: they hand mixed audio
//! to one writer thread through a bounded channel (never blocking: a full
//! channel drops audio and counts it). A recording is written as
//! `NAME.wav.partial` with a placeholder header and renamed `NAME.wav`
//! once its header is complete; a `.wav.partial` found at start-up belongs
//! to a process that died mid-call: its header is repaired from the file
//! length and it becomes `NAME.partial.wav`.
//!
//! Names carry the time and the node's call number, never a phone number.
//! The directory is 0700 and the files 0600 (`owner_only`): they are the
//! citizens' voices.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::metrics::NetMetrics;
use centralino_media::record::{repaired_header, wav_header};
use centralino_store::owner_only;
use tracing::{info, warn};

/// Messages queued to the writer: at one per second per recorded call, a
/// node with 4,096 recorded calls fills it in about four seconds of a
/// stalled disk.
const QUEUE: usize = 16_384;

pub(crate) enum RecMsg {
    Open { id: u64, name: String },
    Data { id: u64, samples: Vec<i16> },
    Close { id: u64 },
}

/// The media threads' handle on the writer.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: SyncSender<RecMsg>,
    metrics: NetMetrics,
}

impl Recorder {
    /// Repairs what a previous process left, then starts the writer.
    pub(crate) fn start(dir: PathBuf, metrics: NetMetrics) -> std::io::Result<Self> {
        owner_only::create_dir(&dir)?;
        recover(&dir, &metrics);
        let (tx, rx) = sync_channel(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || writer(&dir, &rx, &m))?;
        Ok(Self { tx, metrics })
    }

    /// Queues a message; `false` (and counted) when the writer is behind.
    pub(crate) fn send(&self, msg: RecMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics
                    .recordings
                    .with_label_values(&["dropped_audio"])
                    .inc();
                false
            }
        }
    }
}

/// Fixes and renames every `.wav.partial` of `dir`, and makes every
/// recording owner-only (an older version wrote them world-readable).
pub(crate) fn recover(dir: &Path, metrics: &NetMetrics) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut tightened = 0u64;
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_file()) {
            match owner_only::tighten(&path, owner_only::FILE_MODE) {
                Ok(None) => {}
                Ok(Some(_)) => tightened += 1,
                Err(err) => {
                    warn!(file = %path.display(), error = %err, "cannot make a recording owner-only");
                }
            }
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".wav.partial") else {
            continue;
        };
        let fixed = (|| -> std::io::Result<PathBuf> {
            let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = f.metadata()?.len();
            let (header, keep) = repaired_header(len).ok_or(std::io::ErrorKind::InvalidData)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&header)?;
            f.set_len(keep)?;
            f.sync_all()?;
            let to = dir.join(format!("{stem}.partial.wav"));
            std::fs::rename(&path, &to)?;
            Ok(to)
        })();
        match fixed {
            Ok(to) => {
                warn!(file = %to.display(), "recording interrupted by a restart, kept as partial");
                metrics
                    .recordings
                    .with_label_values(&["recovered_partial"])
                    .inc();
            }
            Err(err) => {
                warn!(file = %path.display(), error = %err, "cannot repair an interrupted recording");
                metrics.recordings.with_label_values(&["failed"]).inc();
            }
        }
    }
    if tightened > 0 {
        // One line, not one per file: thousands of recordings may be found.
        warn!(
            dir = %dir.display(),
            files = tightened,
            "recordings were readable by others: permissions tightened to owner-only"
        );
    }
}

struct Open {
    file: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
}

fn writer(dir: &Path, rx: &Receiver<RecMsg>, metrics: &NetMetrics) {
    let mut open: HashMap<u64, Open> = HashMap::new();
    let fail = |what: &str, path: &Path, e: &std::io::Error| {
        warn!(file = %path.display(), error = %e, "{what}");
        metrics.recordings.with_label_values(&["failed"]).inc();
    };
    while let Ok(msg) = rx.recv() {
        match msg {
            RecMsg::Open { id, name } => {
                let path = dir.join(format!("{name}.wav.partial"));
                let created = owner_only::create_file(&path).and_then(|f| {
                    let mut w = BufWriter::new(f);
                    w.write_all(&wav_header(0))?;
                    // The header reaches the disk at once, so a crash
                    // leaves a file recover() can recognise.
                    w.flush()?;
                    Ok(w)
                });
                match created {
                    Ok(file) => {
                        open.insert(
                            id,
                            Open {
                                file,
                                path,
                                bytes: 0,
                            },
                        );
                    }
                    Err(e) => fail("cannot create a recording", &path, &e),
                }
            }
            RecMsg::Data { id, samples } => {
                let Some(o) = open.get_mut(&id) else { continue };
                let mut buf = Vec::with_capacity(samples.len() * 2);
                for s in samples {
                    buf.extend_from_slice(&s.to_le_bytes());
                }
                if let Err(e) = o.file.write_all(&buf).and_then(|()| o.file.flush()) {
                    fail("cannot write a recording", &o.path, &e);
                    open.remove(&id);
                    continue;
                }
                o.bytes += buf.len() as u64;
            }
            RecMsg::Close { id } => {
                let Some(mut o) = open.remove(&id) else {
                    continue;
                };
                let done = (|| -> std::io::Result<PathBuf> {
                    o.file.flush()?;
                    let f = o.file.get_mut();
                    let data = u32::try_from(o.bytes).unwrap_or(u32::MAX - 1);
                    f.seek(SeekFrom::Start(0))?;
                    f.write_all(&wav_header(data))?;
                    f.sync_all()?;
                    let name = o.path.to_string_lossy();
                    let to = PathBuf::from(name.trim_end_matches(".partial").to_owned());
                    std::fs::rename(&o.path, &to)?;
                    Ok(to)
                })();
                match done {
                    Ok(to) => {
                        info!(
                            file = %to.display(),
                            seconds = o.bytes / 16_000,
                            "recording complete"
                        );
                        metrics.recordings.with_label_values(&["completed"]).inc();
                    }
                    Err(e) => fail("cannot close a recording", &o.path, &e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_recording_is_a_wav_and_a_dead_one_is_recovered() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = std::env::temp_dir().join(format!("centralino-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Left world-readable by an older version: tightened at start.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let metrics = NetMetrics::new(&prometheus::Registry::new());
        let rec = Recorder::start(dir.clone(), metrics.clone()).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert!(rec.send(RecMsg::Open {
            id: 1,
            name: "t-1".into()
        }));
        assert!(rec.send(RecMsg::Data {
            id: 1,
            samples: vec![1000; 8000]
        }));
        assert!(rec.send(RecMsg::Close { id: 1 }));
        let done = dir.join("t-1.wav");
        let start = std::time::Instant::now();
        while !done.exists() {
            assert!(start.elapsed().as_secs() < 5, "never closed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(mode(&done), 0o600, "a citizen's voice, the owner's only");
        let data = std::fs::read(&done).unwrap();
        let samples = centralino_media::prompt::wav_to_8k(&data).unwrap();
        assert_eq!(samples.len(), 8000);
        // A process died mid-call: header with placeholder sizes, data cut.
        let mut partial = wav_header(0).to_vec();
        partial.extend(std::iter::repeat_n([0x10, 0x00], 4000).flatten());
        partial.push(1);
        std::fs::write(dir.join("t-2.wav.partial"), &partial).unwrap();
        std::fs::set_permissions(
            dir.join("t-2.wav.partial"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        recover(&dir, &metrics);
        assert_eq!(mode(&dir.join("t-2.partial.wav")), 0o600);
        let kept = std::fs::read(dir.join("t-2.partial.wav")).unwrap();
        assert_eq!(
            centralino_media::prompt::wav_to_8k(&kept).unwrap(),
            vec![16; 4000]
        );
        assert!(!dir.join("t-2.wav.partial").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
