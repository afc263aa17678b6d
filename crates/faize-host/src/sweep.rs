//! After a session: remove setuid/setgid bits that the guest put on files in read-write shares.
//! virtiofsd cannot refuse a guest's chmod by the file's owner, so this is enforced on the host
//! once the VM is gone. Only files whose status changed during the session are touched.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

const SPECIAL: u32 = 0o6000;

/// Strips the bits and returns the paths it fixed (also reported on stderr).
pub fn strip_special_bits(root: &Path, since: SystemTime) -> Vec<std::path::PathBuf> {
    let since = since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0) - 1;
    let mut fixed = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && meta.mode() & SPECIAL != 0 && meta.ctime() >= since {
                let mode = meta.mode() & 0o7777 & !SPECIAL;
                if std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode)).is_ok() {
                    fixed.push(entry.path());
                }
            }
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

    #[test]
    fn new_setuid_files_lose_the_bit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/evil");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let fixed = strip_special_bits(dir.path(), SystemTime::now() - std::time::Duration::from_secs(5));
        assert_eq!(fixed, vec![f.clone()]);
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o755);
        // Files older than the session are left alone.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(strip_special_bits(dir.path(), SystemTime::now() + std::time::Duration::from_secs(60)).is_empty());
    }
}
