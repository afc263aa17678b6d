//! The coding agent's configuration inside the VM, built at start from the host's `~/.claude`
//! (which the VM never sees or writes), and its credentials.
//!
//! A per-session folder holds the guest's `~/.claude`: the host's settings, CLAUDE.md, commands,
//! agents, skills, output styles and plugins (with host paths rewritten to guest paths), and the
//! credentials to start from. It is shared read-write, so Claude Code keeps its session state
//! there; it is deleted when the session ends. Its `.credentials.json` is saved to
//! `~/.faize/credentials/` at the end of the session when persistence is on, whatever ended it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::mounts::Blocked;

/// What is copied from the host's `~/.claude`.
const COPIED: &[&str] =
    &["settings.json", "settings.local.json", "CLAUDE.md", "commands", "agents", "skills", "output-styles", "plugins"];

/// Keys of the host's `~/.claude.json` that carry over (no project history, no caches).
const JSON_KEYS: &[&str] = &[
    "hasCompletedOnboarding",
    "lastOnboardingVersion",
    "theme",
    "oauthAccount",
    "userID",
    "editorMode",
    "verbose",
    "preferredNotifChannel",
];

/// The credentials file Claude Code keeps in `~/.claude` on Linux.
pub const CREDENTIALS_FILE: &str = ".credentials.json";

/// The guest's home.
const GUEST_HOME: &str = "/home/faize";

/// The staged configuration.
#[derive(Debug)]
pub struct Staged {
    /// Shared read-write at the guest's `~/.claude`.
    pub dir: PathBuf,
    /// The guest's `~/.claude.json`.
    pub claude_json: Vec<u8>,
    /// What was left out, for the user.
    pub skipped: Vec<String>,
}

/// Where persisted credentials are kept.
pub fn stored_credentials(credentials_dir: &Path) -> PathBuf {
    credentials_dir.join("claude.credentials.json")
}

/// Builds the guest's `~/.claude` in `dir` from `user_home`'s.
pub fn stage(user_home: &Path, dir: &Path, blocked: &Blocked, credentials: Option<&Path>) -> Result<Staged> {
    let host_claude = user_home.join(".claude");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut skipped = Vec::new();
    let root = std::fs::canonicalize(&host_claude).unwrap_or_else(|_| host_claude.clone());
    for name in COPIED {
        let src = host_claude.join(name);
        if src.symlink_metadata().is_ok() {
            copy_checked(&src, &dir.join(name), &root, blocked, &mut skipped)?;
        }
    }
    // Plugin manifests name their folders by absolute host path.
    let host_prefix = host_claude.to_string_lossy().into_owned();
    let guest_prefix = format!("{GUEST_HOME}/.claude");
    rewrite_json_paths(&dir.join("plugins"), &host_prefix, &guest_prefix)?;
    if let Some(seed) = credentials.filter(|p| p.is_file()) {
        let target = dir.join(CREDENTIALS_FILE);
        std::fs::copy(seed, &target).with_context(|| format!("copying credentials from {}", seed.display()))?;
        set_mode(&target, 0o600)?;
    }
    let claude_json = guest_claude_json(&user_home.join(".claude.json"));
    Ok(Staged { dir: dir.to_path_buf(), claude_json, skipped })
}

/// The guest's `~/.claude.json`: a few keys of the host's, and no auto-update inside the image.
fn guest_claude_json(host: &Path) -> Vec<u8> {
    let mut out = serde_json::Map::new();
    if let Ok(serde_json::Value::Object(host)) =
        std::fs::read(host).map_err(|_| ()).and_then(|b| serde_json::from_slice(&b).map_err(|_| ()))
    {
        for key in JSON_KEYS {
            if let Some(v) = host.get(*key) {
                out.insert((*key).into(), v.clone());
            }
        }
    }
    out.insert("autoUpdates".into(), serde_json::Value::Bool(false));
    serde_json::to_vec_pretty(&out).expect("a JSON map serialises")
}

/// Copies a file or folder, following symlinks, but never from a blocked path outside `root`
/// (the host's `~/.claude`, which may itself sit in a blocked folder such as `/root`).
fn copy_checked(src: &Path, dst: &Path, root: &Path, blocked: &Blocked, skipped: &mut Vec<String>) -> Result<()> {
    let real = match std::fs::canonicalize(src) {
        Ok(r) => r,
        Err(_) => {
            skipped.push(format!("{} (a broken link)", src.display()));
            return Ok(());
        }
    };
    if !real.starts_with(root) {
        if let Err(e) = blocked.check("agent configuration", &real) {
            skipped.push(e.to_string());
            return Ok(());
        }
    }
    if real.is_dir() {
        std::fs::create_dir_all(dst)?;
        for entry in std::fs::read_dir(&real)? {
            let entry = entry?;
            copy_checked(&entry.path(), &dst.join(entry.file_name()), root, blocked, skipped)?;
        }
    } else if real.is_file() {
        std::fs::copy(&real, dst).with_context(|| format!("copying {}", real.display()))?;
    }
    Ok(())
}

fn rewrite_json_paths(dir: &Path, from: &str, to: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if text.contains(from) {
                std::fs::write(&p, text.replace(from, to)).with_context(|| format!("rewriting {}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// Saves the guest's credentials to `store` (mode 0600) if they exist and changed.
pub fn save_credentials(staged: &Path, store: &Path) -> Result<bool> {
    let Ok(new) = std::fs::read(staged.join(CREDENTIALS_FILE)) else { return Ok(false) };
    if std::fs::read(store).ok().as_deref() == Some(&new[..]) {
        return Ok(false);
    }
    let dir = store.parent().expect("a file in a folder");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    crate::fsutil::write_atomic_mode(store, &new, 0o600)
        .with_context(|| format!("saving credentials to {}", store.display()))?;
    Ok(true)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stages_the_host_config_without_history_or_blocked_links() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let claude = home.join(".claude");
        for sub in ["commands", "projects/-x", "plugins", ".ssh-x"] {
            std::fs::create_dir_all(claude.join(sub)).unwrap();
        }
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(home.join(".ssh/id_rsa"), "SECRET").unwrap();
        std::fs::write(claude.join("settings.json"), r#"{"model":"x"}"#).unwrap();
        std::fs::write(claude.join("commands/go.md"), "go").unwrap();
        std::os::unix::fs::symlink(home.join(".ssh/id_rsa"), claude.join("commands/key.md")).unwrap();
        std::fs::write(claude.join("projects/-x/history.jsonl"), "private").unwrap();
        let manifest = format!(r#"{{"path":"{}/plugins/repo"}}"#, claude.display());
        std::fs::write(claude.join("plugins/installed.json"), manifest).unwrap();
        std::fs::write(home.join(".claude.json"), r#"{"theme":"dark","projects":{"/a":{}},"userID":"u"}"#).unwrap();
        let creds = d.path().join("creds.json");
        std::fs::write(&creds, "TOKEN").unwrap();

        // The home itself in a blocked folder (like /root) must not stop the copy.
        let blocked = Blocked::new(&home, &[d.path().display().to_string()]);
        let dir = d.path().join("staged");
        let s = stage(&home, &dir, &blocked, Some(&creds)).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("settings.json")).unwrap(), r#"{"model":"x"}"#);
        assert_eq!(std::fs::read_to_string(dir.join("commands/go.md")).unwrap(), "go");
        assert!(!dir.join("commands/key.md").exists(), "a link into ~/.ssh must not be followed");
        assert!(s.skipped.iter().any(|m| m.contains(".ssh")), "{:?}", s.skipped);
        assert!(!dir.join("projects").exists(), "no history of other projects");
        assert!(std::fs::read_to_string(dir.join("plugins/installed.json"))
            .unwrap()
            .contains("/home/faize/.claude/plugins/repo"));
        let creds_mode = std::fs::metadata(dir.join(CREDENTIALS_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(creds_mode, 0o600);
        let json: serde_json::Value = serde_json::from_slice(&s.claude_json).unwrap();
        assert_eq!(json["theme"], "dark");
        assert_eq!(json["autoUpdates"], false);
        assert!(json.get("projects").is_none());
    }

    #[test]
    fn credentials_are_saved_private_and_only_when_changed() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("credentials/claude.credentials.json");
        assert!(!save_credentials(d.path(), &store).unwrap(), "nothing to save");
        std::fs::write(d.path().join(CREDENTIALS_FILE), "T1").unwrap();
        assert!(save_credentials(d.path(), &store).unwrap());
        assert_eq!(std::fs::read_to_string(&store).unwrap(), "T1");
        assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!save_credentials(d.path(), &store).unwrap(), "unchanged");
    }
}
