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

    let status = reaper::wait(pid);
    let deadline = std::time::Instant::now() + DRAIN_LIMIT;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(status)
}

/// PID 1 reaps every child (orphans included) on one thread and hands each program's status to
/// whoever waits for it, so several programs (the session's and `faize exec`'s) can run at once.
/// It starts with the first program, after the set-up's own commands have been waited for.
mod reaper {
    use std::collections::HashMap;
    use std::sync::{Condvar, Mutex, Once};

    use faize_protocol::ExitStatus;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::Pid;

    /// Statuses not claimed yet (orphans' never are: the map is emptied when it gets this big).
    const UNCLAIMED_LIMIT: usize = 65_536;

    static EXITED: Mutex<Option<HashMap<i32, ExitStatus>>> = Mutex::new(None);
    static CHANGED: Condvar = Condvar::new();
    static START: Once = Once::new();

    /// Waits until `pid` (a child of this process) has exited and returns its status.
    pub fn wait(pid: Pid) -> ExitStatus {
        START.call_once(|| {
            std::thread::spawn(reap);
        });
        CHANGED.notify_all();
        let mut exited = EXITED.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = exited.get_or_insert_default().remove(&pid.as_raw()) {
                return s;
            }
            exited = CHANGED.wait(exited).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn reap() {
        loop {
            let (pid, status) = match waitpid(None::<Pid>, None) {
                Ok(WaitStatus::Exited(p, code)) => (p, ExitStatus { code, signal: 0 }),
                Ok(WaitStatus::Signaled(p, sig, _)) => (p, ExitStatus { code: 128 + sig as i32, signal: sig as i32 }),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                // No child at the moment: wait until a program is started.
                Err(_) => {
                    let exited = EXITED.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = CHANGED.wait_timeout(exited, std::time::Duration::from_millis(200));
                    continue;
                }
            };
            let mut exited = EXITED.lock().unwrap_or_else(|p| p.into_inner());
            let map = exited.get_or_insert_default();
            if map.len() >= UNCLAIMED_LIMIT {
                map.clear();
            }
            map.insert(pid.as_raw(), status);
            CHANGED.notify_all();
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
        let mut clipboard = crate::clipboard::Staging::default();
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
                HostMsg::OpenExec { token } => {
                    std::thread::spawn(move || exec_channel(token));
                }
                HostMsg::OpenInbound { token, port } => {
                    std::thread::spawn(move || crate::net::inbound(token, port));
                }
                // Applied before the next message (the Ctrl+V that follows) reaches the program.
                HostMsg::ClipboardClear => clipboard.clear(),
                HostMsg::ClipboardData { mime, chunk } => clipboard.add(mime, chunk),
                HostMsg::ClipboardCommit => {
                    if let Err(e) = clipboard.commit() {
                        let _ = channel.send(&GuestMsg::Stderr(format!("faize-agent: {e}\n").into_bytes()));
                    }
                }
                HostMsg::Setup(_) | HostMsg::Exec(_) => {
                    let _ = channel.send(&GuestMsg::Stderr(b"faize-agent: ignoring an unexpected message\n".to_vec()));
                }
            }
        }
    });
}

/// One `faize exec`: a new connection to the host, the program it sends, its exit status.
fn exec_channel(token: u64) {
    let Ok(channel) = Channel::connect() else { return };
    if channel.send(&GuestMsg::ExecChannel { token }).is_err() {
        return;
    }
    let exec = match channel.recv() {
        Ok(Some(HostMsg::Exec(e))) => e,
        _ => return,
    };
    let status = match run(&channel, exec) {
        Ok(s) => s,
        Err(e) => {
            let _ = channel.send(&GuestMsg::Stderr(format!("faize-agent: {e}\n").into_bytes()));
            ExitStatus { code: EXIT_CANNOT_EXEC, signal: 0 }
        }
    };
    let _ = channel.send(&GuestMsg::Exit(status));
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, String> {
    fd.try_clone().map_err(|e| format!("dup: {e}"))
}

fn set_cloexec(fd: &OwnedFd) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(|_| ()).map_err(|e| format!("fcntl: {e}"))
}
