//! Git context: when the project is inside a repository, the guest sees what `git` needs.
//!
//! - Project in a subfolder of a repository: the repository's git folder is shared read-only at
//!   its own absolute path (history and status work; nothing can be written).
//! - Project at the repository root: `.git` is part of the project share and writable, so the
//!   agent can commit, but its `hooks` folder is made read-only on the host (a read-only bind
//!   mount in virtiofsd's private mount namespace), so nothing planted there runs on the host.
//!   That needs root; otherwise `.git` is shared read-only instead and the user is told.
//! - Worktrees and submodules (`.git` is a file naming the real git folder) share the folders
//!   it names, and the `.git` file itself is copied in read-only.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What to share for git.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GitShares {
    /// Folders shared at their own absolute paths; `true` when writable.
    pub folders: Vec<(PathBuf, bool)>,
    /// `.git` files (worktrees, submodules) outside the project, copied in read-only.
    pub files: Vec<PathBuf>,
    /// Folders made read-only inside writable shares (the hooks).
    pub read_only_inside: Vec<PathBuf>,
    /// The repository root, for the user's information.
    pub root: Option<PathBuf>,
    /// Said to the user (e.g. why `.git` is read-only).
    pub notice: Option<String>,
}

/// The git folder a `.git` entry stands for, and the common folder behind a worktree.
fn git_dirs(dot_git: &Path) -> Result<Vec<PathBuf>> {
    if dot_git.is_dir() {
        return Ok(vec![std::fs::canonicalize(dot_git)?]);
    }
    let text = std::fs::read_to_string(dot_git).with_context(|| format!("reading {}", dot_git.display()))?;
    let target = text
        .lines()
        .find_map(|l| l.strip_prefix("gitdir:"))
        .map(str::trim)
        .with_context(|| format!("{} is not a gitdir link", dot_git.display()))?;
    let base = dot_git.parent().unwrap_or(Path::new("/"));
    let git_dir = std::fs::canonicalize(base.join(target))
        .with_context(|| format!("{} points to {target}, which does not exist", dot_git.display()))?;
    let mut dirs = vec![git_dir.clone()];
    if let Ok(common) = std::fs::read_to_string(git_dir.join("commondir")) {
        let common = std::fs::canonicalize(git_dir.join(common.trim()))?;
        if !git_dir.starts_with(&common) {
            dirs.push(common);
        } else {
            dirs = vec![common];
        }
    }
    Ok(dirs)
}

/// Finds the repository around `project` and decides what to share.
pub fn detect(project: &Path, can_protect_hooks: bool) -> Result<GitShares> {
    let Some(root) = project.ancestors().find(|d| d.join(".git").exists()) else {
        return Ok(GitShares::default());
    };
    let dot_git = root.join(".git");
    let dirs = git_dirs(&dot_git)?;
    let mut out = GitShares { root: Some(root.to_path_buf()), ..Default::default() };
    let at_root = root == project;
    let writable = at_root && can_protect_hooks;
    if at_root && !can_protect_hooks {
        out.notice = Some(
            "the project's .git is shared read-only: protecting .git/hooks from the VM needs root, so commits \
             are not possible in the VM"
                .into(),
        );
    }
    for dir in dirs {
        let inside_project = dir.starts_with(project);
        if writable {
            let hooks = hooks_dir(&dir);
            if hooks.exists() || std::fs::create_dir_all(&hooks).is_ok() {
                out.read_only_inside.push(hooks);
            }
            if !inside_project {
                out.folders.push((dir, true));
            }
        } else {
            out.folders.push((dir, false));
        }
    }
    if dot_git.is_file() && !dot_git.starts_with(project) {
        out.files.push(dot_git);
    }
    Ok(out)
}

fn hooks_dir(git_dir: &Path) -> PathBuf {
    git_dir.join("hooks")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "protocol.file.allow=always",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn no_repository_no_shares() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(detect(d.path(), true).unwrap(), GitShares::default());
    }

    #[test]
    fn subfolder_shares_git_read_only_and_root_protects_hooks() {
        let d = tempfile::tempdir().unwrap();
        let repo = std::fs::canonicalize(d.path()).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::create_dir_all(repo.join("pkg/app")).unwrap();
        let sub = detect(&repo.join("pkg/app"), true).unwrap();
        assert_eq!(sub.folders, vec![(repo.join(".git"), false)]);
        assert!(sub.read_only_inside.is_empty());

        let root = detect(&repo, true).unwrap();
        assert!(root.folders.is_empty(), "the .git of the project is in the project share");
        assert_eq!(root.read_only_inside, vec![repo.join(".git/hooks")]);

        let unprivileged = detect(&repo, false).unwrap();
        assert_eq!(unprivileged.folders, vec![(repo.join(".git"), false)]);
        assert!(unprivileged.notice.is_some());
    }

    #[test]
    fn worktrees_share_the_common_git_folder_and_copy_the_link() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        let main = base.join("main");
        std::fs::create_dir(&main).unwrap();
        git(&main, &["init", "-q"]);
        git(&main, &["commit", "-q", "--allow-empty", "-m", "first"]);
        git(&main, &["worktree", "add", "-q", "../wt"]);
        std::fs::create_dir(base.join("wt/sub")).unwrap();
        let s = detect(&base.join("wt/sub"), true).unwrap();
        assert_eq!(s.folders, vec![(main.join(".git"), false)]);
        assert_eq!(s.files, vec![base.join("wt/.git")]);
        let s = detect(&base.join("wt"), true).unwrap();
        assert_eq!(s.folders, vec![(main.join(".git"), true)]);
        assert_eq!(s.read_only_inside, vec![main.join(".git/hooks")]);
    }
}
