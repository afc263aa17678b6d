//! Small filesystem helpers: atomic writes and lock files.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Writes `data` to `path` through a temporary file, fsync and rename: readers see the old
/// content or the new, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// [`write_atomic`] with the file's permission bits (the temporary file has them from the start,
/// so private data is never readable by others, even for a moment).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    replace(path, data, mode, true)
}

/// Like [`write_atomic_mode`] but without waiting for the disk: readers still never see a mix,
/// and a power cut may lose the update. For state that is rewritten often and matters only
/// while the machine runs (a session's `state.json`; an fsync costs tens of milliseconds).
pub fn write_replace_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    replace(path, data, mode, false)
}

fn replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".{}.tmp.{}", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    if durable {
        f.sync_all()?;
    }
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Takes an exclusive lock on `path`, waiting for it; released when the value is dropped.
pub fn lock(path: &Path) -> Result<Flock<fs::File>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}
