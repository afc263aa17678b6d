//! `faize doctor`: checks each prerequisite and says how to fix what is missing.

use crate::accel;
use crate::artifacts::{Artifacts, State};
use crate::home::{find_program, vars, FaizeHome};
use crate::spec::HostLimits;

/// One check's result.
#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Not needed to run sessions: a missing one is a note, not a failure.
    pub optional: bool,
    /// What was found, or how to fix it.
    pub detail: String,
}

/// Runs every check.
pub fn run(home: &FaizeHome) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check =
        |name: &str, ok: bool, detail: String| checks.push(Check { name: name.into(), ok, optional: false, detail });
    for (prog, var, fix) in [
        ("qemu-system-x86_64", vars::QEMU, "apt-get install qemu-system-x86"),
        ("virtiofsd", vars::VIRTIOFSD, "cargo install virtiofsd --version ~1.14"),
        ("vhost-device-vsock", vars::VHOST_VSOCK, "cargo install vhost-device-vsock --version ~0.3"),
        ("mkfs.ext4", "FAIZE_MKFS_EXT4", "apt-get install e2fsprogs"),
    ] {
        match find_program(prog, var) {
            Some(p) => check(prog, true, p.display().to_string()),
            None => check(prog, false, format!("not found: run `{fix}` (or ./setup.sh)")),
        }
    }
    let facts = accel::probe();
    match accel::choose(std::env::var(vars::ACCEL).ok().as_deref(), &facts) {
        Ok(c) => check("accelerator", true, format!("{} ({})", c.accel, c.reason)),
        Err(e) => check("accelerator", false, e),
    }
    let host = HostLimits::probe();
    check(
        "memory",
        host.memory_mib >= 4096,
        format!("{} MiB on the host; the default session takes 4096 MiB (use --memory for less)", host.memory_mib),
    );
    match crate::artifacts::agent_binary() {
        Ok(p) => check("faize-agent", true, p.display().to_string()),
        Err(e) => check("faize-agent", false, format!("{e:#}")),
    }
    match Artifacts::new(home).states() {
        Ok(states) => {
            for (kind, state) in states {
                let (ok, detail) = match state {
                    State::Ready(e) => (true, format!("{} ({} MiB)", e.file, e.size >> 20)),
                    // The initramfs only wraps the agent: it is rebuilt in milliseconds at start.
                    State::Stale(_) | State::Missing if kind == crate::artifacts::Kind::Initramfs => {
                        (true, "rebuilt from the agent at the next start".into())
                    }
                    State::Stale(_) => (false, format!("out of date: run `faize artifacts build {kind}`")),
                    State::Missing => (false, format!("missing: run `faize artifacts build {kind}`")),
                };
                check(&format!("image {kind}"), ok, detail);
            }
        }
        Err(e) => check("images", false, format!("{e:#}")),
    }
    checks.extend(optional());
    checks
}

/// What sessions can do without: the clipboard (Ctrl+V then passes through) and a browser
/// (URLs are then printed for the user to open).
fn optional() -> Vec<Check> {
    let check = |name: &str, found: Result<String, String>| {
        let ok = found.is_ok();
        Check { name: name.into(), ok, optional: true, detail: found.unwrap_or_else(|e| e) }
    };
    vec![
        check(
            "clipboard",
            crate::clipboard::tool()
                .map(|t| t.to_string())
                .map_err(|e| format!("{e}: Ctrl+V passes through unchanged")),
        ),
        check(
            "browser",
            crate::clipboard::browser()
                .map(|p| p.display().to_string())
                .map_err(|e| format!("{e}: URLs from the VM are printed for you to open")),
        ),
    ]
}
