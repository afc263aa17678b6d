//! A session's supervisor: `faize` re-executed as the hidden subcommand `faize __supervise` by
//! `start` and `run`. It is the session: it owns QEMU, the sidecars, the network proxy, the
//! timeout and the session folder, and it outlives the terminal that started it (it runs in its
//! own session, without a controlling terminal). Its configuration comes over a socket pair
//! inherited as descriptor 3 (a [`Launch`] frame), never through argv; the same socket then
//! carries the launching terminal's conversation ([`crate::attach`]).
//!
//! The session folder holds `state.json` (written atomically at each change) and `lock` (held
//! for the supervisor's life), so `faize ps` can tell a running session from a crashed one. If
//! the supervisor dies, QEMU and the sidecars die with it (their parent-death signal).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::net::UnixStream;

use crate::attach::{self, Frame, Launch, ToSupervisor, ToTerminal};
use crate::home::FaizeHome;
use crate::session::{self, Dirs, TerminalInfo, Tools};
use crate::spec::{self, HostLimits};
use crate::state::{self, SessionState, Status};

/// The hidden subcommand that runs a supervisor.
pub const SUBCOMMAND: &str = "__supervise";
/// The descriptor the launch socket has in the supervisor.
const LAUNCH_FD: i32 = 3;
/// The supervisor's own log, in the session folder.
pub const LOG: &str = "supervisor.log";

/// Starts a supervisor; returns it and the launching terminal's end of its socket, on which the
/// [`Launch`] goes first.
pub fn spawn() -> Result<(std::process::Child, std::os::unix::net::UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("creating the supervisor's socket")?;
    let exe = std::env::current_exe().context("finding the faize binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(SUBCOMMAND).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let fd = theirs.as_raw_fd();
    // SAFETY: setsid, dup2 and fcntl are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: the terminal's hang-up and keyboard signals never reach it.
            nix::unistd::setsid()?;
            if fd == LAUNCH_FD {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
            } else if libc::dup2(fd, LAUNCH_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the session's supervisor")?;
    drop(theirs);
    Ok((child, ours))
}

/// The supervisor process: runs one session and returns the process's exit code.
pub fn main() -> i32 {
    // SAFETY: descriptor 3 was set up by `spawn` and nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(LAUNCH_FD) };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(_) => return session::exit_code::FAIZE_ERROR,
    };
    // A current-thread runtime: helper processes are spawned from this thread, and their
    // parent-death signal is tied to it.
    let code = rt.block_on(supervise(fd));
    rt.shutdown_background();
    code
}

async fn supervise(fd: OwnedFd) -> i32 {
    let conn = std::os::unix::net::UnixStream::from(fd);
    let Ok(mut conn) = conn.set_nonblocking(true).and_then(|_| UnixStream::from_std(conn)) else {
        return session::exit_code::FAIZE_ERROR;
    };
    let launch = match attach::read::<ToSupervisor>(&mut conn).await {
        Ok(Some(Frame::Control(ToSupervisor::Launch(l)))) => *l,
        _ => return session::exit_code::FAIZE_ERROR,
    };
    let prepared = match prepare(&launch) {
        Ok(p) => p,
        Err(e) => {
            let report = format!("faize: {e:#}\n");
            let ended = ToTerminal::Ended { code: session::exit_code::FAIZE_ERROR, report };
            let _ = attach::write(&mut conn, &Frame::Control(ended)).await;
            return session::exit_code::FAIZE_ERROR;
        }
    };
    let Prepared { spec, home, tools, dirs, _lock, state } = prepared;
    let terminal = TerminalInfo { tty: launch.tty.map(Into::into), term_env: launch.term_env.clone() };
    let mut record = Record { state, dir: dirs.session.clone() };
    let parts = session::Parts {
        spec: &spec,
        tools: &tools,
        images: &launch.images,
        dirs: &dirs,
        home: &home,
        terminal: &terminal,
    };
    let outcome = session::run(&parts, Some(conn), &mut record).await;
    eprint!("{}", outcome.report);
    outcome.code
}

/// The session's state file, kept current.
struct Record {
    state: SessionState,
    dir: std::path::PathBuf,
}

impl Record {
    fn save(&self) {
        if let Err(e) = self.state.save(&self.dir) {
            eprintln!("saving the session's state: {e:#}");
        }
    }
}

impl session::Lifecycle for Record {
    fn running(&mut self) {
        self.state.status = Status::Running;
        self.save();
    }

    fn ended(&mut self, outcome: &session::Outcome) {
        self.state.end(outcome.status, outcome.code, outcome.reason.clone());
        self.save();
    }
}

struct Prepared {
    spec: spec::SessionSpec,
    home: FaizeHome,
    tools: Tools,
    dirs: Dirs,
    _lock: nix::fcntl::Flock<std::fs::File>,
    state: SessionState,
}

/// Everything before the VM: the spec (resolved again from the same request: the supervisor
/// trusts nothing it did not check itself), the folders, the lock, the first state, the log.
fn prepare(launch: &Launch) -> Result<Prepared> {
    let home = FaizeHome::from_env()?;
    let mut spec = spec::resolve(&launch.request, &home, &HostLimits::probe())?;
    spec.id = launch.id.clone();
    let tools = Tools::find()?;
    let dirs = Dirs::create(&home, &spec.id)?;
    let lock = state::hold_lock(&dirs.session)?;
    redirect_stderr(&dirs.session.join(LOG))?;
    let state = SessionState {
        id: spec.id.clone(),
        name: launch.name.clone(),
        project: spec.project.clone(),
        command: spec.command.clone(),
        interactive: spec.interactive,
        supervisor_pid: std::process::id(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        started_unix: state::now_unix(),
        timeout_secs: spec.timeout.map(|t| t.as_secs()),
        status: Status::Starting,
        exit_code: None,
        ended_unix: None,
        reason: None,
    };
    state.save(&dirs.session)?;
    Ok(Prepared { spec, home, tools, dirs, _lock: lock, state })
}

/// The supervisor's standard error goes to its log in the session folder.
fn redirect_stderr(path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    nix::unistd::dup2(f.as_raw_fd(), 2).context("redirecting the supervisor's output")?;
    Ok(())
}

/// Stops one session and waits until its supervisor is gone; returns how long that took.
/// Graceful: the program gets SIGTERM and `grace`, then the supervisor forces it. `force`, or a
/// supervisor that does not answer, gets SIGKILL (QEMU and the sidecars follow it).
pub fn stop(e: &state::Entry, force: bool, grace: Duration) -> Result<Duration> {
    let started = Instant::now();
    let control = crate::home::runtime_base().join(&e.state.id).join(crate::control::SOCKET);
    let asked = !force && crate::control::stop(&control, grace).is_ok();
    // The supervisor's own deadline is the grace plus 5 s; then it cleans up.
    let patience = if asked { grace + Duration::from_secs(20) } else { Duration::ZERO };
    if wait_unlocked(&e.dir, patience) {
        return Ok(started.elapsed());
    }
    kill_supervisor(e)?;
    if !wait_unlocked(&e.dir, Duration::from_secs(5)) {
        bail!("its supervisor (pid {}) is still running", e.state.supervisor_pid);
    }
    // The supervisor could not record the end itself, nor clean up.
    let mut s = e.state.clone();
    s.end(state::Status::Killed, 128 + libc::SIGKILL, Some("killed with faize kill --force".into()));
    s.save(&e.dir)?;
    let _ = std::fs::remove_dir_all(crate::home::runtime_base().join(&e.state.id));
    let _ = std::fs::remove_file(e.dir.join("scratch.img"));
    Ok(started.elapsed())
}

/// SIGKILL to the supervisor, after checking that the pid is still that supervisor.
fn kill_supervisor(e: &state::Entry) -> Result<()> {
    let pid = e.state.supervisor_pid;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !cmdline.split(|b| *b == 0).any(|a| a == SUBCOMMAND.as_bytes()) {
        bail!("process {pid} is not this session's supervisor any more; its lock is held by something else");
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
        .with_context(|| format!("killing the supervisor (pid {pid})"))
}

/// Waits until no supervisor holds the session's lock; false if `limit` passed first.
pub fn wait_unlocked(dir: &std::path::Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !state::supervised(dir) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
