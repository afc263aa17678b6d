//! Running the session's program as the unprivileged user, in a pseudo-terminal or with pipes,
//! and relaying its input, output, window size and signals until it exits.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use faize_protocol::{
    Exec, ExitStatus, GuestMsg, HostMsg, WinSize, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, GUEST_PATH, GUEST_UID, GUEST_USER,
    MAX_CHUNK,
};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::channel::Channel;

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

/// How long output may keep coming after the program exits (background children holding the
/// terminal open must not hold the session).
const DRAIN_LIMIT: Duration = Duration::from_millis(300);

fn winsize(w: WinSize) -> libc::winsize {
    libc::winsize { ws_row: w.rows, ws_col: w.cols, ws_xpixel: 0, ws_ypixel: 0 }
}

/// Where the program's input goes.
enum Input {
    Pty(File),
    Pipe(Option<std::process::ChildStdin>),
}

/// Runs `exec` to completion and returns its status.
pub fn run(channel: &Channel, exec: Exec) -> Result<ExitStatus, String> {
    let Some(program) = exec.argv.first().cloned() else {
        return Err("Exec with an empty argv".into());
    };
    let home = format!("/home/{GUEST_USER}");
    let mut cmd = Command::new(&program);
    cmd.args(&exec.argv[1..])
        .env_clear()
        .env("HOME", &home)
        .env("USER", GUEST_USER)
        .env("LOGNAME", GUEST_USER)
        .env("SHELL", "/bin/bash")
        .env("PATH", GUEST_PATH)
        .env("LANG", "C.UTF-8")
        // The project is its own mount; git must look past it for the repository's .git.
        .env("GIT_DISCOVERY_ACROSS_FILESYSTEM", "1")
        .envs(exec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&exec.cwd)
        .uid(GUEST_UID)
        .gid(GUEST_UID);

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut readers = 0;
    let (child, input) = match exec.tty {
        Some(size) => {
            let pty = nix::pty::openpty(Some(&winsize(size)), None).map_err(|e| format!("openpty: {e}"))?;
            set_cloexec(&pty.master)?;
            let slave: OwnedFd = pty.slave;
            cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(dup(&slave)?);
            // SAFETY: setsid and ioctl are async-signal-safe; this runs in the forked child.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => return Ok(report_spawn_error(channel, &program, e)),
            };
            drop(slave);
            drop(cmd);
            let master = File::from(pty.master);
            let out = master.try_clone().map_err(|e| format!("dup pty: {e}"))?;
            spawn_reader(channel.clone(), out, GuestMsg::Stdout, done_tx.clone());
            readers += 1;
            (child, Input::Pty(master))
        }
        None => {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => return Ok(report_spawn_error(channel, &program, e)),
            };
            let stdin = child.stdin.take();
            if let Some(o) = child.stdout.take() {
                spawn_reader(channel.clone(), o, GuestMsg::Stdout, done_tx.clone());
                readers += 1;
            }
            if let Some(e) = child.stderr.take() {
                spawn_reader(channel.clone(), e, GuestMsg::Stderr, done_tx.clone());
                readers += 1;
            }
            (child, Input::Pipe(stdin))
        }
    };
    drop(done_tx);
    let pid = Pid::from_raw(child.id() as i32);
    spawn_control(channel.clone(), input, pid);

    let status = reap_until(pid)?;
    let deadline = std::time::Instant::now() + DRAIN_LIMIT;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(status)
}

/// Reaps every child (PID 1 inherits orphans) until `pid` exits, and returns its status.
fn reap_until(pid: Pid) -> Result<ExitStatus, String> {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(ExitStatus { code, signal: 0 }),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                return Ok(ExitStatus { code: 128 + sig as i32, signal: sig as i32 })
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
}

fn report_spawn_error(channel: &Channel, program: &str, e: std::io::Error) -> ExitStatus {
    let (code, what) = match e.kind() {
        ErrorKind::NotFound => (EXIT_NOT_FOUND, "command not found".to_string()),
        ErrorKind::PermissionDenied => (EXIT_CANNOT_EXEC, "permission denied".to_string()),
        _ => (EXIT_CANNOT_EXEC, e.to_string()),
    };
    let _ = channel.send(&GuestMsg::Stderr(format!("faize: {program}: {what}\n").into_bytes()));
    ExitStatus { code, signal: 0 }
}

/// Copies one output stream to the host until end of file.
fn spawn_reader(
    channel: Channel,
    mut src: impl Read + Send + 'static,
    wrap: fn(Vec<u8>) -> GuestMsg,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if channel.send(&wrap(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EIO: the last holder of the terminal's other side closed it.
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

/// Applies the host's input, resize, signal and shutdown messages while the program runs.
fn spawn_control(channel: Channel, mut input: Input, pid: Pid) {
    std::thread::spawn(move || {
        while let Ok(Some(msg)) = channel.recv() {
            match msg {
                HostMsg::Stdin(data) => {
                    let res = match &mut input {
                        Input::Pty(m) => m.write_all(&data),
                        Input::Pipe(Some(p)) => p.write_all(&data),
                        Input::Pipe(None) => Ok(()),
                    };
                    if res.is_err() {
                        if let Input::Pipe(p) = &mut input {
                            *p = None;
                        }
                    }
                }
                HostMsg::StdinEof => match &mut input {
                    Input::Pipe(p) => *p = None,
                    // A terminal has no end of input of its own; send the EOF character.
                    Input::Pty(m) => {
                        let _ = m.write_all(&[4]);
                    }
                },
                HostMsg::Resize(w) => {
                    if let Input::Pty(m) = &input {
                        // SAFETY: the fd is a live pty master and the pointer is to a valid winsize.
                        let _ = unsafe { set_winsize(m.as_raw_fd(), &winsize(w)) };
                    }
                }
                HostMsg::Signal(sig) => {
                    if let Ok(sig) = Signal::try_from(sig) {
                        let _ = killpg(pid, sig);
                    }
                }
                HostMsg::Shutdown { grace_ms } => {
                    let _ = killpg(pid, Signal::SIGTERM);
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(grace_ms.into()));
                        let _ = killpg(pid, Signal::SIGKILL);
                    });
                }
                HostMsg::Setup(_) | HostMsg::Exec(_) => {
                    let _ = channel.send(&GuestMsg::Stderr(b"faize-agent: ignoring an unexpected message\n".to_vec()));
                }
            }
        }
    });
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, String> {
    fd.try_clone().map_err(|e| format!("dup: {e}"))
}

fn set_cloexec(fd: &OwnedFd) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(|_| ()).map_err(|e| format!("fcntl: {e}"))
}
