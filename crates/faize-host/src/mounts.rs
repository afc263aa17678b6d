//! Host folders and files the VM may see: `-m SRC[:DST][:ro|rw]` parsing, the blocked paths
//! that can never be shared, and the checks every share (the project included) must pass before
//! any VM starts.
//!
//! Syntax: `SRC`, `SRC:ro|rw`, `SRC:DST`, `SRC:DST:ro|rw`; read-only unless `rw`. A `:` inside a
//! path is written `\:` and a backslash `\\`. `~` and `~/...` mean the home folder; a relative
//! SRC is taken from the current folder. DST defaults to SRC's resolved absolute path.

use std::path::{Component, Path, PathBuf};

/// Host paths that can never be shared, whatever the configuration says (it can only add).
pub const BUILTIN_BLOCKED: &[&str] = &[
    "~/.ssh",
    "~/.aws",
    "~/.config/gcloud",
    "~/.azure",
    "~/.kube",
    "~/.gnupg",
    "~/.password-store",
    "~/.docker/config.json",
    "~/.netrc",
    "~/.npmrc",
    "~/.pypirc",
    "~/.git-credentials",
    "~/.config/git/credentials",
    "~/.config/gh",
    "~/.config/hub",
    "~/.cargo/credentials.toml",
    "~/.cargo/credentials",
    "~/.local/share/keyrings",
    "~/.mozilla",
    "~/.config/google-chrome",
    "~/.config/chromium",
    "~/.m2/settings.xml",
    "~/.gradle/gradle.properties",
    "~/.vault-token",
    "~/.terraform.d/credentials.tfrc.json",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/root",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd",
    "/run/podman",
    "/var/run/libvirt",
];

/// Guest folders a share may not be, contain, or sit inside: covering them would break or
/// subvert the guest.
pub const SYSTEM_TARGETS: &[&str] =
    &["/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin", "/sys", "/usr"];

/// Guest folders a share may not be or contain (sitting inside them is fine): `/var` holds
/// the guest's state, but `/var/www` is a reasonable place for a project.
pub const COVER_ONLY_TARGETS: &[&str] = &["/var", "/home/faize"];

/// Paths faize itself uses in the guest.
pub const AGENT_TARGETS: &[&str] = &["/workspace", "/opt/toolchain"];

/// Why a mount or the project was refused. Every message names the path, the rule and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    #[error("invalid mount {spec:?}: {reason}")]
    Syntax { spec: String, reason: String },
    #[error("{what} {path} does not exist: check the path")]
    Missing { what: String, path: PathBuf },
    #[error("cannot resolve {what} {path}: {reason}")]
    Resolve { what: String, path: PathBuf, reason: String },
    #[error("{what} {path} is inside the blocked path {blocked}, which is never shared: share another folder")]
    InsideBlocked { what: String, path: PathBuf, blocked: PathBuf },
    #[error(
        "{what} {path} contains the blocked path(s) {list}, which are never shared: share a narrower folder inside it"
    )]
    ContainsBlocked { what: String, path: PathBuf, list: String },
    #[error("mount target {target} {reason}: pick another target with SRC:DST, e.g. /mnt/data")]
    BadTarget { target: PathBuf, reason: String },
    #[error("{what} is at {target}, which is not allowed: it {reason}; share a folder that lives elsewhere")]
    BadProject { what: String, target: PathBuf, reason: String },
    #[error("two shares have the same target {target}: give one of them another target with SRC:DST")]
    Duplicate { target: PathBuf },
    #[error(
        "{path} is a file: a single file can only be mounted read-only; to write to it, mount its folder with :rw"
    )]
    ReadWriteFile { path: PathBuf },
}

/// A mount as written by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    pub source: String,
    pub target: Option<String>,
    pub read_only: bool,
}

/// Whether a share is a folder (its own virtiofsd) or a single file (copied in at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Dir,
    File,
}

/// A checked mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Resolved (symlinks followed) host path.
    pub source: PathBuf,
    /// Absolute guest path.
    pub target: PathBuf,
    pub read_only: bool,
    pub kind: MountKind,
}

/// Splits `spec` on unescaped colons.
fn split_spec(spec: &str) -> Result<Vec<String>, MountError> {
    let mut parts = vec![String::new()];
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (':' | '\\')) => parts.last_mut().expect("one part").push(n),
                _ => {
                    return Err(MountError::Syntax {
                        spec: spec.into(),
                        reason: "a backslash must be followed by : or \\".into(),
                    })
                }
            },
            ':' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    Ok(parts)
}

/// Parses `SRC[:DST][:ro|rw]`.
pub fn parse(spec: &str) -> Result<MountRequest, MountError> {
    let err = |reason: &str| MountError::Syntax { spec: spec.into(), reason: reason.into() };
    let parts = split_spec(spec)?;
    let access = |s: &str| match s {
        "ro" => Ok(true),
        "rw" => Ok(false),
        _ => Err(err("the access mode must be ro or rw")),
    };
    let (source, target, read_only) = match parts.as_slice() {
        [s] => (s.clone(), None, true),
        [s, m] if m == "ro" || m == "rw" => (s.clone(), None, access(m)?),
        [s, d] => (s.clone(), Some(d.clone()), true),
        [s, d, m] => (s.clone(), Some(d.clone()), access(m)?),
        _ => return Err(err("too many ':'; write a ':' that is part of a path as \\:")),
    };
    if source.is_empty() {
        return Err(err("the source is empty"));
    }
    if target.as_deref() == Some("") {
        return Err(err("the target is empty"));
    }
    if source.contains('\n') || target.as_deref().is_some_and(|t| t.contains('\n')) {
        return Err(err("paths with a newline are not supported"));
    }
    Ok(MountRequest { source, target, read_only })
}

/// Expands `~` and makes a path absolute (lexically; symlinks are resolved later).
pub fn expand(path: &str, home: &Path, cwd: &Path) -> PathBuf {
    let p = if path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        PathBuf::from(path)
    };
    if p.is_absolute() {
        p
    } else {
        cwd.join(p)
    }
}

/// Resolves symlinks, with errors that say what went wrong.
fn resolve_source(what: &str, path: &Path) -> Result<PathBuf, MountError> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(MountError::Missing { what: what.into(), path: path.into() })
        }
        Err(e) => Err(MountError::Resolve { what: what.into(), path: path.into(), reason: e.to_string() }),
    }
}

/// The blocked paths, both as written (expanded) and with symlinks resolved.
#[derive(Debug, Clone)]
pub struct Blocked {
    entries: Vec<PathBuf>,
}

impl Blocked {
    /// The built-in list plus `extra` (from the config); `~` is `home`.
    pub fn new(home: &Path, extra: &[String]) -> Self {
        let mut entries = Vec::new();
        for raw in BUILTIN_BLOCKED.iter().copied().chain(extra.iter().map(String::as_str)) {
            let p = expand(raw, home, Path::new("/"));
            if let Ok(real) = std::fs::canonicalize(&p) {
                if real != p {
                    entries.push(real);
                }
            }
            entries.push(normalize(&p));
        }
        entries.sort();
        entries.dedup();
        Self { entries }
    }

    /// Refuses a resolved host path that is, is inside, or contains a blocked path.
    pub fn check(&self, what: &str, path: &Path) -> Result<(), MountError> {
        let ci = case_insensitive(path);
        if let Some(b) = self.entries.iter().find(|b| inside(path, b, ci)) {
            return Err(MountError::InsideBlocked { what: what.into(), path: path.into(), blocked: b.clone() });
        }
        // Existing ones first: they are the ones the user will recognise.
        let mut found: Vec<&PathBuf> = self.entries.iter().filter(|b| inside(b, path, ci)).collect();
        found.sort_by_key(|b| !b.exists());
        let contained: Vec<String> = found.iter().map(|b| b.display().to_string()).collect();
        if !contained.is_empty() {
            let mut list = contained.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if contained.len() > 5 {
                list += &format!(" and {} more", contained.len() - 5);
            }
            return Err(MountError::ContainsBlocked { what: what.into(), path: path.into(), list });
        }
        Ok(())
    }
}

/// `path` equals `base` or lies below it, by whole components.
fn inside(path: &Path, base: &Path, case_insensitive: bool) -> bool {
    if case_insensitive {
        let lower = |p: &Path| PathBuf::from(p.to_string_lossy().to_lowercase());
        lower(path).starts_with(lower(base))
    } else {
        path.starts_with(base)
    }
}

/// Whether the filesystem holding `path` ignores case: looks the path up with its case swapped.
fn case_insensitive(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let s = path.to_string_lossy();
    let swapped: String =
        s.chars().map(|c| if c.is_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect();
    if swapped == s {
        return false;
    }
    match (std::fs::metadata(path), std::fs::metadata(&swapped)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes `.` and trailing slashes; keeps `..` (targets refuse it).
fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// Why `target` is not a place a share can go in the guest, if it is not.
pub fn target_problem(target: &Path) -> Option<String> {
    if !target.is_absolute() {
        return Some("is not absolute".into());
    }
    if target.components().any(|c| matches!(c, Component::ParentDir)) {
        return Some("contains '..'".into());
    }
    let t = normalize(target);
    if t == Path::new("/") {
        return Some("would cover the whole guest".into());
    }
    for s in SYSTEM_TARGETS {
        if Path::new(s).starts_with(&t) {
            return Some(format!("would cover the system folder {s}"));
        }
        if t.starts_with(s) {
            return Some(format!("is inside the system folder {s}"));
        }
    }
    for s in COVER_ONLY_TARGETS {
        if Path::new(s).starts_with(&t) {
            return Some(format!("would cover {s}"));
        }
    }
    for s in AGENT_TARGETS {
        if Path::new(s).starts_with(&t) || t.starts_with(s) {
            return Some(format!("would clash with faize's own {s}"));
        }
    }
    None
}

/// Checks the project (already resolved) against the blocked paths and the target rules.
pub fn check_project(project: &Path, blocked: &Blocked) -> Result<(), MountError> {
    blocked.check("the project", project)?;
    if let Some(reason) = target_problem(project) {
        return Err(MountError::BadProject { what: "the project".into(), target: project.into(), reason });
    }
    Ok(())
}

/// Resolves and checks the user's mounts; `project` is already checked.
pub fn resolve(
    requests: &[MountRequest],
    project: &Path,
    blocked: &Blocked,
    home: &Path,
    cwd: &Path,
) -> Result<Vec<Mount>, MountError> {
    let mut mounts: Vec<Mount> = Vec::new();
    for req in requests {
        let what = format!("mount source {}", req.source);
        let given = expand(&req.source, home, cwd);
        let source = resolve_source(&what, &given)?;
        blocked.check("mount source", &source)?;
        let kind = if source.is_dir() { MountKind::Dir } else { MountKind::File };
        if kind == MountKind::File && !req.read_only {
            return Err(MountError::ReadWriteFile { path: source });
        }
        let target = match &req.target {
            Some(t) => PathBuf::from(t),
            None => source.clone(),
        };
        if let Some(reason) = target_problem(&target) {
            return Err(MountError::BadTarget { target, reason });
        }
        let target = normalize(&target);
        if target == project || mounts.iter().any(|m| m.target == target) {
            return Err(MountError::Duplicate { target });
        }
        if project.starts_with(&target) {
            return Err(MountError::BadTarget { target, reason: "would hide the project".into() });
        }
        mounts.push(Mount { source, target, read_only: req.read_only, kind });
    }
    // Parents before children, so nested targets mount in the right order.
    mounts.sort_by_key(|m| m.target.components().count());
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct World {
        _dir: tempfile::TempDir,
        home: PathBuf,
        project: PathBuf,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(dir.path()).unwrap().join("home");
        for d in
            [".ssh", "code/app", "data/sub", ".config/gh", ".config/other", "dir:with:colons", "with space", "proj"]
        {
            std::fs::create_dir_all(home.join(d)).unwrap();
        }
        std::fs::write(home.join(".ssh/id_rsa"), "key").unwrap();
        std::fs::write(home.join("notes.txt"), "n").unwrap();
        symlink("data", home.join("docs")).unwrap();
        symlink("../../.ssh", home.join("code/app/link-to-ssh")).unwrap();
        symlink("loop2", home.join("loop1")).unwrap();
        symlink("loop1", home.join("loop2")).unwrap();
        let project = home.join("proj");
        World { _dir: dir, home, project }
    }

    fn run(w: &World, specs: &[&str], extra_blocked: &[&str]) -> Result<Vec<Mount>, MountError> {
        let extra: Vec<String> = extra_blocked.iter().map(|s| s.to_string()).collect();
        let blocked = Blocked::new(&w.home, &extra);
        let reqs: Vec<MountRequest> = specs.iter().map(|s| parse(s)).collect::<Result<_, _>>()?;
        resolve(&reqs, &w.project, &blocked, &w.home, &w.home)
    }

    /// What a case expects: the mount's target and access, or a word of the error.
    enum Want {
        Ok(&'static str, bool),
        OkFile,
        Err(&'static str),
    }

    #[test]
    fn table_of_mount_and_blocked_path_cases() {
        use Want::*;
        let w = world();
        let h = w.home.display().to_string();
        let cases: Vec<(&str, Vec<&str>, Want)> = vec![
            ("plain folder is read-only at its own path", vec!["~/code/app"], Ok("~/code/app", true)),
            ("rw", vec!["~/code/app:rw"], Ok("~/code/app", false)),
            ("explicit ro", vec!["~/code/app:ro"], Ok("~/code/app", true)),
            ("target", vec!["~/data:/mnt/data"], Ok("/mnt/data", true)),
            ("target and rw", vec!["~/data:/mnt/data:rw"], Ok("/mnt/data", false)),
            ("bad mode", vec!["~/data:/mnt/data:wr"], Err("ro or rw")),
            ("too many colons", vec!["~/a:b:c:d"], Err("too many ':'")),
            ("escaped colons", vec!["~/dir\\:with\\:colons"], Ok("~/dir:with:colons", true)),
            ("escaped colons and target", vec!["~/dir\\:with\\:colons:/mnt/c:rw"], Ok("/mnt/c", false)),
            ("bad escape", vec!["~/a\\b"], Err("backslash")),
            ("empty source", vec![":/mnt/x"], Err("source is empty")),
            ("empty target", vec!["~/data::ro"], Err("target is empty")),
            ("newline", vec!["~/da\nta"], Err("newline")),
            ("spaces", vec!["~/with space:/mnt/with space"], Ok("/mnt/with space", true)),
            ("relative source from the current folder", vec!["code/app"], Ok("~/code/app", true)),
            ("trailing slash on the source", vec!["~/code/app/"], Ok("~/code/app", true)),
            ("trailing slash on the target", vec!["~/data:/mnt/data/"], Ok("/mnt/data", true)),
            ("symlink resolved", vec!["~/docs"], Ok("~/data", true)),
            ("blocked folder", vec!["~/.ssh"], Err("inside the blocked path")),
            ("file in a blocked folder", vec!["~/.ssh/id_rsa"], Err("inside the blocked path")),
            ("symlink into a blocked folder", vec!["~/code/app/link-to-ssh"], Err("inside the blocked path")),
            ("home contains blocked paths", vec!["~"], Err("contains the blocked path")),
            ("root contains blocked paths", vec!["/"], Err("contains the blocked path")),
            ("parent of a blocked path", vec!["~/.config"], Err("/.config/gh")),
            ("sibling of a blocked path", vec!["~/.config/other"], Ok("~/.config/other", true)),
            ("blocked by the config", vec!["~/data"], Err("inside the blocked path")),
            ("/etc/shadow", vec!["/etc/shadow"], Err("blocked path /etc/shadow")),
            ("/etc contains /etc/shadow", vec!["/etc"], Err("contains the blocked path")),
            ("missing source", vec!["~/nope"], Err("does not exist")),
            ("symlink loop", vec!["~/loop1"], Err("symbolic links")),
            ("read-only file", vec!["~/notes.txt"], OkFile),
            ("read-write file", vec!["~/notes.txt:rw"], Err("only be mounted read-only")),
            ("relative target", vec!["~/code/app:mnt/x"], Err("is not absolute")),
            ("dot-dot target", vec!["~/code/app:/mnt/../etc"], Err("contains '..'")),
            ("target /", vec!["~/code/app:/"], Err("whole guest")),
            ("target /etc", vec!["~/code/app:/etc"], Err("system folder /etc")),
            ("target inside /usr", vec!["~/code/app:/usr/local/bin"], Err("inside the system folder /usr")),
            ("target /lib64", vec!["~/code/app:/lib64"], Err("system folder /lib64")),
            ("target /var", vec!["~/code/app:/var"], Err("would cover /var")),
            ("target inside /var", vec!["~/code/app:/var/www"], Ok("/var/www", true)),
            ("target /workspace", vec!["~/code/app:/workspace"], Err("/workspace")),
            ("target inside the toolchain", vec!["~/code/app:/opt/toolchain/x"], Err("/opt/toolchain")),
            ("target the agent's home", vec!["~/code/app:/home/faize"], Err("would cover /home/faize")),
            ("target inside the agent's home", vec!["~/code/app:/home/faize/data"], Ok("/home/faize/data", true)),
            ("duplicate target", vec!["~/data:/mnt/x", "~/code/app:/mnt/x"], Err("same target /mnt/x")),
            ("target is the project", vec!["~/data:~/proj"], Err("same target")),
            ("target above the project", vec!["~/data:~"], Err("hide the project")),
        ];
        assert!(cases.len() >= 40);
        for (name, specs, want) in cases {
            let specs: Vec<String> = specs.iter().map(|s| s.replace(":~", &format!(":{h}"))).collect();
            let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
            let extra: &[&str] = if name == "blocked by the config" { &["~/data"] } else { &[] };
            let got = run(&w, &specs, extra);
            match (want, got) {
                (Ok(target, ro), Result::Ok(m)) => {
                    let last = m.iter().find(|m| specs.len() == 1 || m.target == Path::new(target)).unwrap();
                    assert_eq!(last.target, PathBuf::from(target.replace('~', &h)), "{name}");
                    assert_eq!(last.read_only, ro, "{name}");
                    assert_eq!(last.kind, MountKind::Dir, "{name}");
                }
                (OkFile, Result::Ok(m)) => assert_eq!((m[0].kind, m[0].read_only), (MountKind::File, true), "{name}"),
                (Err(word), Result::Err(e)) => assert!(e.to_string().contains(word), "{name}: {e}"),
                (_, got) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn the_project_is_checked_both_ways() {
        let w = world();
        let blocked = Blocked::new(&w.home, &[]);
        assert!(check_project(&w.project, &blocked).is_ok());
        let e = check_project(&w.home, &blocked).unwrap_err().to_string();
        assert!(e.contains("contains the blocked path") && e.contains(".ssh"), "{e}");
        let e = check_project(&w.home.join(".ssh"), &blocked).unwrap_err().to_string();
        assert!(e.contains("inside the blocked path"), "{e}");
        let e = check_project(Path::new("/usr/src/app"), &blocked).unwrap_err().to_string();
        assert!(e.contains("inside the system folder /usr"), "{e}");
    }

    #[test]
    fn case_insensitive_matching_compares_lowercase() {
        assert!(inside(Path::new("/Users/A/.SSH/id"), Path::new("/users/a/.ssh"), true));
        assert!(!inside(Path::new("/Users/A/.SSH/id"), Path::new("/users/a/.ssh"), false));
        assert!(!inside(Path::new("/home/a/.sshx"), Path::new("/home/a/.ssh"), true));
        // Our test filesystem is case-sensitive: the probe must say so.
        assert!(!case_insensitive(&std::env::temp_dir()));
    }

    #[test]
    fn nested_targets_mount_parents_first() {
        let w = world();
        let m = run(&w, &["~/data/sub:/mnt/a/b", "~/data:/mnt/a"], &[]).unwrap();
        assert_eq!(m[0].target, PathBuf::from("/mnt/a"));
        assert_eq!(m[1].target, PathBuf::from("/mnt/a/b"));
    }
}
