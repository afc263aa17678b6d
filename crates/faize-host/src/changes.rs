//! What a session did to the user's files: a snapshot of every writable share before the VM
//! starts, another after it stops, and the difference, with the changes that could act on the
//! host later (git hooks and config, editor and CI config, new executables) listed first and
//! marked. Large generated trees (`node_modules`, `target`, ...) are summarised, never hidden.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Folders whose content is summarised as one line.
const BULKY: &[&str] =
    &["node_modules", "target", ".venv", "venv", "__pycache__", "dist", "build", ".next", ".cache", ".gradle"];

/// What one file looked like.
#[derive(Debug, Clone, Copy)]
struct Meta {
    size: u64,
    mtime_ns: i128,
    mode: u32,
    /// Status change time, seconds (not compared: it is for the setuid sweep).
    ctime: i64,
}

impl PartialEq for Meta {
    fn eq(&self, o: &Self) -> bool {
        (self.size, self.mtime_ns, self.mode) == (o.size, o.mtime_ns, o.mode)
    }
}

impl Eq for Meta {}

/// Every file (and symlink) below a root, by relative path.
#[derive(Debug, Default)]
pub struct Snapshot {
    files: HashMap<PathBuf, Meta>,
}

impl Snapshot {
    /// Walks `root` without following symlinks or leaving its filesystem.
    pub fn take(root: &Path) -> Self {
        let mut files = HashMap::new();
        let dev = std::fs::metadata(root).map(|m| m.dev()).ok();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(root.join(&rel)) else { continue };
            for entry in entries.flatten() {
                let Ok(m) = entry.metadata() else { continue };
                let path = rel.join(entry.file_name());
                if m.is_dir() {
                    if Some(m.dev()) == dev {
                        stack.push(path);
                    }
                } else {
                    let mtime_ns = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
                    files.insert(path, Meta { size: m.len(), mtime_ns, mode: m.mode(), ctime: m.ctime() });
                }
            }
        }
        Self { files }
    }

    /// Regular files (relative paths) with their mode, whose status changed at or after `since`
    /// (Unix seconds).
    pub fn changed_files_since(&self, since: i64) -> impl Iterator<Item = (&Path, u32)> {
        self.files
            .iter()
            .filter(move |(_, m)| m.mode & 0o170000 == 0o100000 && m.ctime >= since)
            .map(|(p, m)| (p.as_path(), m.mode))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Created,
    Modified,
    Deleted,
}

/// One line of the summary: a file, or a bulky folder summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: Kind,
    /// Relative to the share; a summarised folder ends with `/`.
    pub path: String,
    /// Size after (created, modified) or before (deleted), in bytes; for a folder, the total.
    pub size: u64,
    /// Number of files, for a summarised folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
    /// Why this change deserves attention, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
}

/// The changes in one share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareChanges {
    pub root: PathBuf,
    pub changes: Vec<Change>,
}

/// Why a change could act on the host later, if it could.
fn flag_for(path: &Path, kind: Kind, before: Option<Meta>, after: Option<Meta>) -> Option<String> {
    let p = path.to_string_lossy();
    let rules: &[(&str, &str)] = &[
        (".git/hooks/", "git hook: runs on the host at the next git command"),
        (".git/config", "git config: can run programs on the host (core.hooksPath, core.fsmonitor, ...)"),
        (".claude/", "agent configuration of the project"),
        (".vscode/", "editor configuration: can run tasks on the host"),
        (".envrc", "direnv: runs in your shell"),
        (".github/workflows/", "CI workflow"),
    ];
    for (prefix, why) in rules {
        if p.starts_with(prefix) || (!prefix.ends_with('/') && p == *prefix) || p.contains(&format!("/{prefix}")) {
            return Some((*why).to_string());
        }
    }
    let exec = |m: Option<Meta>| m.is_some_and(|m| m.mode & 0o111 != 0 && m.mode & 0o170000 == 0o100000);
    if kind != Kind::Deleted && exec(after) && !exec(before) {
        return Some("new executable".into());
    }
    None
}

/// The bulky folder a path lies in, if any (`a/node_modules/x/y` → `a/node_modules`).
fn bulky_parent(path: &Path) -> Option<PathBuf> {
    let mut acc = PathBuf::new();
    for c in path.parent()?.components() {
        acc.push(c);
        if BULKY.iter().any(|b| c.as_os_str() == *b) || acc == Path::new(".git") {
            return Some(acc);
        }
    }
    None
}

/// The difference between two snapshots of `root`: flagged changes first, then by path.
pub fn diff(root: &Path, before: &Snapshot, after: &Snapshot) -> ShareChanges {
    let mut out = Vec::new();
    let mut bulky: HashMap<(PathBuf, Kind), (usize, u64)> = HashMap::new();
    let mut record = |kind: Kind, path: &Path, b: Option<Meta>, a: Option<Meta>| {
        let size = a.or(b).map(|m| m.size).unwrap_or(0);
        let flag = flag_for(path, kind, b, a);
        match (flag, bulky_parent(path)) {
            (None, Some(folder)) => {
                let e = bulky.entry((folder, kind)).or_default();
                e.0 += 1;
                e.1 += size;
            }
            (flag, _) => out.push(Change { kind, path: path.to_string_lossy().into_owned(), size, files: None, flag }),
        }
    };
    for (path, a) in &after.files {
        match before.files.get(path) {
            None => record(Kind::Created, path, None, Some(*a)),
            Some(b) if b != a => record(Kind::Modified, path, Some(*b), Some(*a)),
            Some(_) => {}
        }
    }
    for (path, b) in &before.files {
        if !after.files.contains_key(path) {
            record(Kind::Deleted, path, Some(*b), None);
        }
    }
    for ((folder, kind), (n, size)) in bulky {
        out.push(Change { kind, path: format!("{}/", folder.display()), size, files: Some(n), flag: None });
    }
    out.sort_by(|a, b| b.flag.is_some().cmp(&a.flag.is_some()).then_with(|| a.path.cmp(&b.path)));
    ShareChanges { root: root.to_path_buf(), changes: out }
}

/// File in the session folder that keeps the summary for `faize diff`.
pub const FILE: &str = "changes.json";

/// The saved summary of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub session: String,
    pub shares: Vec<ShareChanges>,
}

/// Saves the summary in the session folder.
pub fn save(session_dir: &Path, id: &str, shares: &[ShareChanges]) -> anyhow::Result<()> {
    let saved = Saved { session: id.into(), shares: shares.to_vec() };
    crate::fsutil::write_atomic(&session_dir.join(FILE), &serde_json::to_vec_pretty(&saved)?)
}

/// Loads the summary of session `id` (a unique prefix is enough), or of the latest session.
pub fn load(sessions: &Path, id: Option<&str>) -> anyhow::Result<Saved> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(sessions)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| id.is_none_or(|id| e.file_name().to_string_lossy().starts_with(id)))
        .filter_map(|e| {
            let f = e.path().join(FILE);
            Some((std::fs::metadata(&f).ok()?.modified().ok()?, f))
        })
        .collect();
    found.sort();
    match (id, found.len()) {
        (_, 0) => anyhow::bail!(
            "no change summary {}: sessions keep one after they end (unless run with --no-diff)",
            id.map(|i| format!("for session {i}")).unwrap_or_else(|| "yet".into())
        ),
        (Some(id), n) if n > 1 => anyhow::bail!("{id} matches {n} sessions: give more of the id"),
        _ => {}
    }
    let path = &found.last().expect("one").1;
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{} is not valid: {e}", path.display()))
}

/// The summary as people read it.
pub fn render(shares: &[ShareChanges]) -> String {
    let mut s = String::new();
    for share in shares {
        if share.changes.is_empty() {
            continue;
        }
        s += &format!("changes in {}:\n", share.root.display());
        for c in &share.changes {
            let kind = match c.kind {
                Kind::Created => "created ",
                Kind::Modified => "modified",
                Kind::Deleted => "deleted ",
            };
            let mark = if c.flag.is_some() { "!" } else { " " };
            let size = crate::units::format_size(c.size);
            let detail = match (c.files, &c.flag) {
                (Some(n), _) => format!("{n} files, {size}"),
                (None, Some(why)) => format!("{size}  <- {why}"),
                (None, None) => size,
            };
            s += &format!("  {mark} {kind}  {}  {detail}\n", c.path);
        }
        let count = |k: Kind| share.changes.iter().filter(|c| c.kind == k).map(|c| c.files.unwrap_or(1)).sum::<usize>();
        s += &format!(
            "  {} created, {} modified, {} deleted; {} to review (marked !)\n",
            count(Kind::Created),
            count(Kind::Modified),
            count(Kind::Deleted),
            share.changes.iter().filter(|c| c.flag.is_some()).count()
        );
    }
    if s.is_empty() {
        s = "no changes in the shared folders\n".into();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_modified_deleted_flagged_and_summarised() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in [".git/hooks", "src", "node_modules/a"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(r.join(".git/config"), "[core]\n").unwrap();
        std::fs::write(r.join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(r.join("old.txt"), "bye").unwrap();
        let before = Snapshot::take(r);
        assert_eq!(before.len(), 3);

        std::fs::write(r.join(".git/config"), "[core]\n\tfsmonitor = evil\n").unwrap();
        std::fs::write(r.join(".git/hooks/pre-commit"), "evil").unwrap();
        std::fs::write(r.join("src/main.rs"), "fn main() { changed(); }").unwrap();
        std::fs::remove_file(r.join("old.txt")).unwrap();
        std::fs::write(r.join("new.txt"), "hello").unwrap();
        std::fs::write(r.join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(r.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        for i in 0..50 {
            std::fs::write(r.join(format!("node_modules/a/f{i}.js")), "x").unwrap();
        }
        let c = diff(r, &before, &Snapshot::take(r));
        let lines: Vec<(Kind, &str, bool)> =
            c.changes.iter().map(|c| (c.kind, c.path.as_str(), c.flag.is_some())).collect();
        assert_eq!(
            lines,
            vec![
                (Kind::Modified, ".git/config", true),
                (Kind::Created, ".git/hooks/pre-commit", true),
                (Kind::Created, "run.sh", true),
                (Kind::Created, "new.txt", false),
                (Kind::Created, "node_modules/", false),
                (Kind::Deleted, "old.txt", false),
                (Kind::Modified, "src/main.rs", false),
            ]
        );
        assert_eq!(c.changes.iter().find(|c| c.path == "node_modules/").unwrap().files, Some(50));
        let text = render(&[c]);
        assert!(text.contains("! modified  .git/config"), "{text}");
        assert!(text.contains("node_modules/  50 files"), "{text}");
        assert!(text.contains("53 created, 2 modified, 1 deleted; 3 to review"), "{text}");
    }

    #[test]
    fn nothing_changed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "a").unwrap();
        let s = Snapshot::take(d.path());
        let c = diff(d.path(), &s, &Snapshot::take(d.path()));
        assert!(c.changes.is_empty());
        assert_eq!(render(&[c]), "no changes in the shared folders\n");
    }
}
