//! What is known of each session, kept in its folder `~/.faize/sessions/<id>/`:
//! - `state.json`, written atomically by the supervisor at each change (starting, running, ended);
//! - `lock`, locked by the supervisor for its whole life. A session whose state says it is
//!   running but whose lock is free has lost its supervisor: it crashed. `faize ps` checks the
//!   lock of every session, so what it shows is what is true, not what was last written.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::home::FaizeHome;

pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Starting,
    Running,
    Exited,
    TimedOut,
    Killed,
    Crashed,
}

/// The recorded state of one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionState {
    pub id: String,
    pub name: Option<String>,
    pub project: PathBuf,
    pub command: Vec<String>,
    pub interactive: bool,
    pub supervisor_pid: u32,
    pub cpus: u32,
    pub memory_mib: u64,
    pub started_unix: u64,
    pub timeout_secs: Option<u64>,
    pub status: Status,
    /// The program's exit code (or faize's: 124 timed out, 125 failed).
    pub exit_code: Option<i32>,
    pub ended_unix: Option<u64>,
    /// Why it ended, when that was not the program's own choice.
    pub reason: Option<String>,
}

impl SessionState {
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        crate::fsutil::write_replace_mode(&dir.join(STATE_FILE), &json, 0o600)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// Marks the end.
    pub fn end(&mut self, status: Status, code: i32, reason: Option<String>) {
        self.status = status;
        self.exit_code = Some(code);
        self.ended_unix = Some(now_unix());
        self.reason = reason;
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Held by the supervisor for the session's life (the descriptor is close-on-exec, so QEMU and
/// the sidecars never inherit it).
pub fn hold_lock(dir: &Path) -> Result<Flock<std::fs::File>> {
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| anyhow::anyhow!("{} is locked by another process: {e}", path.display()))
}

/// Whether a supervisor holds the session's lock right now.
pub fn supervised(dir: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(dir.join(LOCK_FILE)) else { return false };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// One session as found on disk, with its liveness checked.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub state: SessionState,
    /// A supervisor holds the lock.
    pub alive: bool,
}

impl Entry {
    /// The status as it really is: a "running" session without its supervisor crashed.
    pub fn status(&self) -> Status {
        match self.state.status {
            Status::Starting | Status::Running if !self.alive => Status::Crashed,
            s => s,
        }
    }

    pub fn is_running(&self) -> bool {
        self.alive && matches!(self.state.status, Status::Starting | Status::Running)
    }

    /// `running`, `exited(0)`, `timed out`, `killed`, `crashed`.
    pub fn status_text(&self) -> String {
        match self.status() {
            Status::Starting => "starting".into(),
            Status::Running => "running".into(),
            Status::Exited => format!("exited({})", self.state.exit_code.unwrap_or(0)),
            Status::TimedOut => "timed out".into(),
            Status::Killed => "killed".into(),
            Status::Crashed => "crashed".into(),
        }
    }

    /// Seconds until the timeout, for a running session that has one.
    pub fn time_left(&self) -> Option<u64> {
        let t = self.state.timeout_secs?;
        self.is_running().then(|| (self.state.started_unix + t).saturating_sub(now_unix()))
    }
}

/// Every session with a state file, oldest first.
pub fn list(home: &FaizeHome) -> Vec<Entry> {
    let mut out: Vec<Entry> = std::fs::read_dir(home.sessions())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let state = SessionState::load(&dir).ok()?;
            let alive = supervised(&dir);
            Some(Entry { dir, state, alive })
        })
        .collect();
    out.sort_by(|a, b| a.state.started_unix.cmp(&b.state.started_unix).then(a.state.id.cmp(&b.state.id)));
    out
}

/// Finds one session by id, name, or a unique prefix of its id.
pub fn find(home: &FaizeHome, query: &str) -> Result<Entry> {
    let all = list(home);
    if let Some(e) = all.iter().find(|e| e.state.id == query) {
        return Ok(e.clone());
    }
    // A name: the running session of that name, else the newest one that had it.
    let named: Vec<&Entry> = all.iter().filter(|e| e.state.name.as_deref() == Some(query)).collect();
    if let Some(e) = named.iter().find(|e| e.is_running()).or(named.last()) {
        return Ok((*e).clone());
    }
    let by_prefix: Vec<&Entry> = all.iter().filter(|e| e.state.id.starts_with(query)).collect();
    match by_prefix.as_slice() {
        [one] if !query.is_empty() => Ok((*one).clone()),
        [] | [_] => bail!("no session {query:?}: `faize ps --all` lists them by id and name"),
        many => bail!(
            "{query:?} matches {} sessions ({}): give more of the id",
            many.len(),
            many.iter().map(|e| e.state.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Checks a `--name`: letters, digits, `-`, `_`, `.`, at most 64, not starting with a symbol,
/// and not the name of a running session.
pub fn check_name(home: &FaizeHome, name: &str) -> Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if name.is_empty() || name.len() > 64 || !ok_chars || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        bail!("--name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit");
    }
    if let Some(e) = list(home).into_iter().find(|e| e.is_running() && e.state.name.as_deref() == Some(name)) {
        bail!("a running session is already named {name:?} ({}): choose another name", e.state.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, name: Option<&str>, status: Status, started: u64) -> SessionState {
        SessionState {
            id: id.into(),
            name: name.map(Into::into),
            project: "/p".into(),
            command: vec![],
            interactive: false,
            supervisor_pid: 1,
            cpus: 2,
            memory_mib: 512,
            started_unix: started,
            timeout_secs: Some(3600),
            status,
            exit_code: None,
            ended_unix: None,
            reason: None,
        }
    }

    #[test]
    fn liveness_comes_from_the_lock_and_lookups_are_unambiguous() {
        let root = tempfile::tempdir().unwrap();
        let home = FaizeHome { root: root.path().to_path_buf(), artifacts: root.path().join("artifacts") };
        let mk = |s: SessionState| {
            let dir = home.sessions().join(&s.id);
            std::fs::create_dir_all(&dir).unwrap();
            s.save(&dir).unwrap();
            dir
        };
        let live = mk(state("aa11", Some("web"), Status::Running, 1));
        let _lock = hold_lock(&live).unwrap();
        assert!(hold_lock(&live).is_err(), "one supervisor per session");
        mk(state("aa22", None, Status::Running, 2)); // its supervisor is gone
        mk(state("bb33", Some("web"), Status::Exited, 3));
        let all = list(&home);
        assert_eq!(all.iter().map(|e| e.status_text()).collect::<Vec<_>>(), ["running", "crashed", "exited(0)"]);
        assert!(all[0].time_left().is_some() && all[1].time_left().is_none());
        assert_eq!(find(&home, "web").unwrap().state.id, "aa11", "the running one of a name");
        assert_eq!(find(&home, "bb").unwrap().state.id, "bb33");
        assert_eq!(find(&home, "aa22").unwrap().state.id, "aa22");
        assert!(find(&home, "aa").unwrap_err().to_string().contains("matches 2 sessions"));
        assert!(find(&home, "zz").unwrap_err().to_string().contains("no session"));
        assert!(check_name(&home, "web").unwrap_err().to_string().contains("already named"));
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(&home, bad).is_err(), "{bad:?}");
        }
        check_name(&home, "api-2.dev_x").unwrap();
    }
}
