//! Starting the session's helper processes (QEMU, virtiofsd, vhost-device-vsock) so that they
//! die with faize, logging their output to the session folder, and explaining their failures.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// A helper process and where its output goes.
pub struct Helper {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

/// Starts `program` with its stdout and stderr in `log`. The child gets SIGKILL if faize dies
/// (the parent-death signal is tied to the spawning thread: faize spawns from its main thread).
pub fn spawn(name: &'static str, program: &Path, args: &[OsString], log: &Path) -> Result<Helper> {
    spawn_with_binds(name, program, args, log, &[])
}

/// A bind mount made in a helper's private mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsBind {
    pub source: PathBuf,
    pub target: PathBuf,
    /// Read-only for the helper: the host kernel refuses it (and the guest it serves) any write.
    pub read_only: bool,
    /// Carry the mounts below `source` along (read-only binds never do, so nothing below them
    /// stays writable).
    pub recursive: bool,
}

/// Like [`spawn`], but the child first enters a private mount namespace and makes `binds`, in
/// order. Nothing changes in faize's own namespace. Needs root (CAP_SYS_ADMIN).
pub fn spawn_with_binds(
    name: &'static str,
    program: &Path,
    args: &[OsString],
    log: &Path,
    binds: &[NsBind],
) -> Result<Helper> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte");
    let binds: Vec<(std::ffi::CString, std::ffi::CString, bool, bool)> =
        binds.iter().map(|b| Ok((c(&b.source)?, c(&b.target)?, b.read_only, b.recursive))).collect::<Result<_>>()?;
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    // SAFETY: prctl, close_range, unshare and mount are async-signal-safe system calls that touch
    // only the child; the C strings were built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Whatever faize inherited (a terminal, a pipe) must not reach the helper: mark every
            // descriptor past stdio close-on-exec.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !binds.is_empty() {
                let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                let null = std::ptr::null::<libc::c_char>();
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
                for (source, target, read_only, recursive) in &binds {
                    let rec = if *recursive && !*read_only { libc::MS_REC } else { 0 };
                    check(libc::mount(source.as_ptr(), target.as_ptr(), null, libc::MS_BIND | rec, std::ptr::null()))?;
                    if *read_only {
                        let flags =
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                        check(libc::mount(null, target.as_ptr(), null, flags, std::ptr::null()))?;
                    }
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {name} ({})", program.display()))?;
    Ok(Helper { name, child, log: log.to_path_buf() })
}

impl Helper {
    /// Waits until `socket` exists, failing early with the helper's output if it exits.
    pub async fn wait_for_socket(&mut self, socket: &Path, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before it was ready:\n{}", self.name, tail(&self.log, 15));
            }
            if Instant::now() > deadline {
                bail!("{} did not create {} within {limit:?}:\n{}", self.name, socket.display(), tail(&self.log, 15));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Kills the helper and reaps it.
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The last `n` lines of a log file, indented, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("  ({} is empty)", path.display());
    }
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}
