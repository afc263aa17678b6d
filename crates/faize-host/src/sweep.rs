//! After a session: remove setuid/setgid bits that the guest put on files in read-write shares.
//! virtiofsd cannot refuse a guest's chmod by the file's owner, so this is enforced on the host
//! once the VM is gone. Only files whose status changed during the session are touched.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::changes::Snapshot;

const SPECIAL: u32 = 0o6000;

/// Strips the bits from files of `snapshot` (taken of `root` after the VM stopped) and returns
/// the paths it fixed (also reported on stderr).
pub fn strip_special_bits(root: &Path, snapshot: &Snapshot, since: SystemTime) -> Vec<PathBuf> {
    let since = since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0) - 1;
    let mut fixed = Vec::new();
    for (rel, mode) in snapshot.changed_files_since(since).filter(|(_, mode)| mode & SPECIAL != 0) {
        let path = root.join(rel);
        if std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777 & !SPECIAL)).is_ok() {
            fixed.push(path);
        }
    }
    for p in &fixed {
        eprintln!("faize: removed a setuid/setgid bit the VM set on {}", p.display());
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn new_setuid_files_lose_the_bit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/evil");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let snap = || Snapshot::take(dir.path());
        let fixed = strip_special_bits(dir.path(), &snap(), SystemTime::now() - std::time::Duration::from_secs(5));
        assert_eq!(fixed, vec![f.clone()]);
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o755);
        // Files older than the session are left alone.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(
            strip_special_bits(dir.path(), &snap(), SystemTime::now() + std::time::Duration::from_secs(60)).is_empty()
        );
    }
}
