//! Owner-only modes for everything that holds personal data at rest: the
//! data directory, the database with its `-wal` and `-shm` files, the audit
//! key, the recordings. Directories are 0700 and files 0600 (never looser,
//! whatever the umask), so another account on the machine reads no
//! citizen's number.
//! Something found looser (made by an older version, restored from a
//! backup, created by hand) is tightened, with a warning.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use tracing::{error, warn};

/// Directories: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Files: the owner reads and writes.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) owner-only, or tightens an existing
/// one.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    tighten_or_warn(dir, DIR_MODE);
    Ok(())
}

/// Creates (or truncates) a file for writing, owner-only even when it
/// existed with another mode.
pub fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // `mode` applies to a new file only: one left behind keeps its own.
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Takes from an existing `path` every permission bit `mode` does not
/// have. The mode found, when it changed; nothing for a missing path.
pub fn tighten(path: &Path, mode: u32) -> io::Result<Option<u32>> {
    let found = match fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if found & !mode == 0 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(found & mode))?;
    Ok(Some(found))
}

/// [`tighten`], logged: a warning when it had to, an error when it could
/// not (the node goes on: refusing to start would stop the calls too).
pub fn tighten_or_warn(path: &Path, mode: u32) {
    match tighten(path, mode) {
        Ok(None) => {}
        Ok(Some(found)) => warn!(
            path = %path.display(),
            found = format_args!("{found:o}"),
            now = format_args!("{:o}", found & mode),
            "personal data was readable by others: permissions tightened to owner-only"
        ),
        Err(e) => error!(
            path = %path.display(),
            error = %e,
            "cannot make personal data owner-only: fix its owner and mode"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_created_owner_only_and_loose_ones_tightened() {
        let base = std::env::temp_dir().join(format!("centralino-owner-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("a").join("data");
        create_dir(&dir).unwrap();
        assert_eq!((mode(&base.join("a")), mode(&dir)), (0o700, 0o700));
        // Found world-readable: tightened, and said so.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("f");
        drop(create_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600, "an existing file is made owner-only too");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(tighten(&f, FILE_MODE).unwrap(), Some(0o664));
        assert_eq!(mode(&f), 0o600);
        assert_eq!(tighten(&f, FILE_MODE).unwrap(), None, "once");
        assert_eq!(tighten(&dir.join("missing"), FILE_MODE).unwrap(), None);
        let _ = fs::remove_dir_all(&base);
    }
}
