//! Where faize keeps things on the host, and the environment variables that move them.

use std::path::{Path, PathBuf};

/// Environment variables faize reads, each named once here.
pub mod vars {
    /// Replaces `~/.faize` (config, images, sessions).
    pub const HOME: &str = "FAIZE_HOME";
    /// Replaces `$FAIZE_HOME/artifacts` (tests share one set of images across homes).
    pub const ARTIFACTS: &str = "FAIZE_ARTIFACTS_DIR";
    /// Forces the accelerator: `kvm` or `tcg`.
    pub const ACCEL: &str = "FAIZE_ACCEL";
    /// Path of the static guest agent binary.
    pub const AGENT_BIN: &str = "FAIZE_AGENT_BIN";
    /// Paths of the external programs, when not on PATH.
    pub const QEMU: &str = "FAIZE_QEMU";
    pub const VIRTIOFSD: &str = "FAIZE_VIRTIOFSD";
    pub const VHOST_VSOCK: &str = "FAIZE_VHOST_VSOCK";
    /// Set to 1 to skip the VM tests on purpose.
    pub const SKIP_VM_TESTS: &str = "FAIZE_SKIP_VM_TESTS";
}

/// The faize folder and its parts.
#[derive(Debug, Clone)]
pub struct FaizeHome {
    pub root: PathBuf,
    pub artifacts: PathBuf,
}

impl FaizeHome {
    /// Resolves `FAIZE_HOME` (default `~/.faize`) and `FAIZE_ARTIFACTS_DIR`.
    pub fn from_env() -> anyhow::Result<Self> {
        let root = match std::env::var_os(vars::HOME) {
            Some(p) if !p.is_empty() => absolute(Path::new(&p))?,
            _ => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("neither FAIZE_HOME nor HOME is set: set one of them"))?;
                Path::new(&home).join(".faize")
            }
        };
        let artifacts = match std::env::var_os(vars::ARTIFACTS) {
            Some(p) if !p.is_empty() => absolute(Path::new(&p))?,
            _ => root.join("artifacts"),
        };
        Ok(Self { root, artifacts })
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    pub fn sessions(&self) -> PathBuf {
        self.root.join("sessions")
    }

    /// Build trees kept between image builds (the unpacked kernel source).
    pub fn build_cache(&self) -> PathBuf {
        self.root.join("cache")
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

/// Finds an external program: the override variable, then PATH, `~/.cargo/bin`, `/usr/sbin`, `/sbin`.
pub fn find_program(name: &str, override_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(override_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The folder holding running sessions' sockets: `$XDG_RUNTIME_DIR/faize`, else
/// `/tmp/faize-<uid>` (short paths: Unix socket paths are limited to 108 bytes).
pub fn runtime_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_dir()) {
        Some(p) => p.join("faize"),
        None => PathBuf::from(format!("/tmp/faize-{}", nix::unistd::getuid().as_raw())),
    }
}
