//! End-to-end tests that boot real VMs (under TCG on our machines) and check from inside the
//! guest. Each test boots as few VMs as it can and checks many things in each.
//! They fail when QEMU or the images are missing, and skip only with FAIZE_SKIP_VM_TESTS=1.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{text, vm_tests_enabled, Env};

#[test]
fn run_passes_io_and_status_shares_the_project_and_forgets_the_rest() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let parent = tempfile::tempdir().unwrap();
    let project = parent.path().join("my proj ü'q");
    std::fs::create_dir(&project).unwrap();
    let p = project.to_str().unwrap();

    // One VM checks stdio, limits, devices, the share and the security of the share.
    let script = r#"
        read line; echo "stdin=$line"; echo "to-stderr" >&2
        echo "nproc=$(nproc)"; grep MemTotal /proc/meminfo
        echo "ifaces=$(ls /sys/class/net | tr '\n' ' ')"
        echo "pwd=$(pwd)"; echo "workspace=$(readlink /workspace)"; echo "user=$(id -un)"
        echo data > by-user.txt
        sudo sh -c 'echo x > by-root.txt'
        sudo touch /etc/faize-marker; touch "$HOME/home-marker"
        sudo mknod devnode c 1 3 2>/dev/null && echo mknod=ok || echo mknod=refused
        touch suid; sudo chmod 6755 suid
        exit 7
    "#;
    let out = env.run(&["run", "--cpus", "1", "--memory", "512M", "-p", p, "--", "sh", "-c", script], b"hello-stdin\n");
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(7), "stdout:\n{so}\nstderr:\n{se}");
    assert!(so.contains("stdin=hello-stdin"), "{so}");
    assert!(se.contains("to-stderr") && !so.contains("to-stderr"), "stdout and stderr must stay apart");
    assert!(so.contains("nproc=1\n"), "{so}");
    let mem_kib: u64 =
        so.lines().find(|l| l.starts_with("MemTotal")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((400_000..=524_288).contains(&mem_kib), "MemTotal {mem_kib} kB for --memory 512M");
    // No network device: loopback, and the dummy interface that carries the default route to
    // the agent's redirect (nothing leaves the VM through it).
    assert!(so.contains("ifaces=dummy0 lo \n"), "no network device may exist: {so}");
    assert!(so.contains(&format!("pwd={p}\n")), "{so}");
    assert!(so.contains(&format!("workspace={p}\n")), "{so}");
    assert!(so.contains("user=faize\n"), "{so}");
    assert!(so.contains("mknod=refused"), "guest root must not create device nodes in the project: {so}");
    let me = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    for f in ["by-user.txt", "by-root.txt", "suid"] {
        let m = std::fs::metadata(project.join(f)).unwrap_or_else(|e| panic!("{f} missing on the host: {e}"));
        assert_eq!((m.uid(), m.gid()), me, "{f} must be owned by the invoking user");
    }
    assert_eq!(std::fs::read_to_string(project.join("by-user.txt")).unwrap(), "data\n");
    assert_eq!(
        std::fs::metadata(project.join("suid")).unwrap().permissions().mode() & 0o7000,
        0,
        "setuid bit survived"
    );
    assert!(!project.join("devnode").exists());
    // A clean session leaves nothing behind but its record (for `faize ps --all`), its change
    // summary and its network audit log.
    for session in std::fs::read_dir(env.home.path().join("sessions")).unwrap().flatten() {
        let mut left: Vec<_> = std::fs::read_dir(session.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        left.sort();
        assert_eq!(
            left,
            ["changes.json", "lock", "net.jsonl", "state.json", "supervisor.log"],
            "left behind: {left:?}"
        );
    }
    assert!(se.contains("created   by-user.txt"), "the change summary lists new files: {se}");

    // The next session starts from a clean root and home; its timeout fires.
    let script = r#"test ! -e /etc/faize-marker && test ! -e "$HOME/home-marker" && echo clean; exec sleep 600"#;
    let started = Instant::now();
    let out = env.run(&["run", "-t", "4s", "-p", p, "--", "sh", "-c", script], b"");
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(so.contains("clean"), "writes outside the project must not survive a session: {so}{se}");
    assert_eq!(out.status.code(), Some(124), "{se}");
    assert!(se.contains("timed out after 4s"), "{se}");
    assert!(started.elapsed() < Duration::from_secs(120));
    let kept: Vec<_> = std::fs::read_dir(env.home.path().join("sessions"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("console.log").exists())
        .collect();
    assert_eq!(kept.len(), 1, "a timed-out session keeps its logs");
    assert!(!kept[0].path().join("scratch.img").exists(), "but not its scratch disk");

    // A command that does not exist: 127, like a shell, with a message.
    let out = env.run(&["run", "-p", p, "--", "no-such-command", "x"], b"");
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("no-such-command: command not found"), "{}", text(&out.stderr));
}

#[test]
fn claude_runs_in_the_agent_image() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let project = tempfile::tempdir().unwrap();
    let out = env.run(&["run", "-p", project.path().to_str().unwrap(), "--", "claude", "--version"], b"");
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    let pinned =
        include_str!("../../../resources/claude-code.version").lines().find(|l| !l.starts_with('#')).unwrap().trim();
    assert!(so.contains(pinned), "claude --version said {so:?}, expected {pinned}");
}

/// `faize start` on a pseudo-terminal, as a person would use it.
struct Terminal {
    master: std::fs::File,
    screen: Arc<Mutex<Vec<u8>>>,
    child: std::process::Child,
    slave: OwnedFd,
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

impl Terminal {
    fn start(env: &Env, args: &[&str]) -> Self {
        Self::start_with(env, args, &[])
    }

    /// With extra environment variables for faize (e.g. DISPLAY).
    fn start_with(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let ws = libc::winsize { ws_row: 30, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).unwrap();
        for fd in [&pty.master, &pty.slave] {
            use nix::fcntl::{fcntl, FcntlArg, FdFlag};
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        }
        let mut cmd = env.faize();
        cmd.args(args)
            .envs(vars.iter().copied())
            .env("TERM", "xterm")
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
        // SAFETY: setsid and ioctl are async-signal-safe; this runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (mut r, s) = (master.try_clone().unwrap(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { master, screen, child, slave: pty.slave }
    }

    fn screen(&self) -> String {
        text(&self.screen.lock().unwrap())
    }

    fn wait_for(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.screen().contains(needle) {
            assert!(start.elapsed() < limit, "waited {limit:?} for {needle:?}; screen:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: a valid pty master fd and a valid winsize.
        unsafe { set_winsize(self.master.as_raw_fd(), &ws) }.unwrap();
    }

    fn wait_exit(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Its last words may still be in the pty: let the reader take them all.
                for _ in 0..100 {
                    let mut pending: libc::c_int = 0;
                    // SAFETY: FIONREAD writes one int through a valid pointer; the fd is ours.
                    let ok = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::FIONREAD, &mut pending) } == 0;
                    if !ok || pending == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // ...and append what it read last.
                std::thread::sleep(Duration::from_millis(50));
                return s.code().unwrap_or(-1);
            }
            assert!(start.elapsed() < limit, "faize did not exit; screen:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn local_modes(&self) -> nix::sys::termios::LocalFlags {
        nix::sys::termios::tcgetattr(&self.slave).unwrap().local_flags
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A failed test must not leave a session running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn start_gives_the_program_a_real_terminal() {
    if !vm_tests_enabled() {
        return;
    }
    use nix::sys::termios::LocalFlags;
    let env = Env::new();
    let project = tempfile::tempdir().unwrap();
    let p = project.path().to_str().unwrap();
    let mut t = Terminal::start(&env, &["start", "--cpus", "1", "-p", p, "--", "bash", "--norc", "--noprofile", "-i"]);
    let cooked = t.local_modes();
    assert!(cooked.contains(LocalFlags::ICANON | LocalFlags::ECHO));

    t.wait_for("$ ", Duration::from_secs(120));
    assert!(!t.local_modes().contains(LocalFlags::ICANON), "the host terminal must be raw during the session");
    t.type_("tty; stty size\r");
    t.wait_for("30 100", Duration::from_secs(30));
    assert!(t.screen().contains("/dev/pts/"), "the guest must see a TTY: {}", t.screen());

    t.resize(40, 120);
    std::thread::sleep(Duration::from_millis(500));
    t.type_("stty size\r");
    t.wait_for("40 120", Duration::from_secs(30));

    t.type_("sleep 60\r");
    std::thread::sleep(Duration::from_secs(2));
    let interrupted = Instant::now();
    t.type_("\x03");
    t.type_("echo status=$?\r");
    t.wait_for("status=130", Duration::from_secs(30));
    assert!(interrupted.elapsed() < Duration::from_secs(30), "Ctrl+C must interrupt sleep");

    t.type_("exit 3\r");
    assert_eq!(t.wait_exit(Duration::from_secs(60)), 3, "{}", t.screen());
    assert_eq!(t.local_modes(), cooked, "the terminal must be restored");
}

/// `faize ps --json`, parsed.
fn ps(env: &Env) -> Vec<serde_json::Value> {
    let out = env.faize().args(["ps", "--all", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status_of(env: &Env, id_or_name: &str) -> String {
    let rows = ps(env);
    let row = rows
        .iter()
        .rev()
        .find(|r| r["id"] == id_or_name || r["name"] == id_or_name)
        .unwrap_or_else(|| panic!("{id_or_name} not in {rows:?}"));
    row["status"].as_str().unwrap().to_string()
}

/// Processes whose command line names the session (QEMU and the sidecars carry its folders).
fn processes_of(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = text(&cmd).replace('\0', " ");
            if cmd.contains(id) && !cmd.contains("faize-vm-test-probe") {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Waits until no process of the session is left; panics with them after `limit`.
fn wait_no_processes(id: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left = processes_of(id);
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "orphans of session {id} after {limit:?}: {left:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_detached(env: &Env, project: &str, args: &[&str], script: &str) -> String {
    let out = env
        .faize()
        .args(["start", "--detach", "--cpus", "1", "-p", project])
        .args(args)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 12, "start --detach prints the id: {id:?}");
    id
}

fn supervisor_pid(env: &Env, id: &str) -> i32 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.home.path().join("sessions").join(id).join("state.json")).unwrap())
            .unwrap();
    state["supervisor_pid"].as_i64().unwrap() as i32
}

fn supervisor_alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| text(&c).contains("__supervise"))
}

#[test]
fn sessions_outlive_their_terminal_and_are_managed_from_the_cli() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let project = tempfile::tempdir().unwrap();
    let p = project.path().to_str().unwrap();
    let ticker = "echo started; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done";

    // `~.` detaches: the terminal is restored and the session goes on.
    let mut t = Terminal::start(&env, &["start", "--name", "life", "--cpus", "1", "-p", p, "--", "sh", "-c", ticker]);
    let cooked = t.local_modes();
    t.wait_for("tick-2", Duration::from_secs(120));
    t.type_("\r~.");
    assert_eq!(t.wait_exit(Duration::from_secs(30)), 0, "{}", t.screen());
    assert!(t.screen().contains("faize attach"), "detaching says how to come back: {}", t.screen());
    assert_eq!(t.local_modes(), cooked, "the terminal must be restored");
    assert_eq!(status_of(&env, "life"), "running");
    let table = text(&env.faize().args(["ps"]).output().unwrap().stdout);
    assert!(table.lines().any(|l| l.contains("life") && l.contains("running") && l.contains(p)), "{table}");

    // attach shows the live program, redrawn at this terminal's size; a second attach is refused.
    let mut a = Terminal::start(&env, &["attach", "life"]);
    a.wait_for("tick-", Duration::from_secs(30));
    let seen = a.screen();
    let last = |s: &str| s.rsplit("tick-").next().and_then(|n| n.split_whitespace().next()?.parse::<u32>().ok());
    let first_tick = last(&seen).unwrap();
    a.wait_for(&format!("tick-{}", first_tick + 2), Duration::from_secs(30));
    let mut second = Terminal::start(&env, &["attach", "life"]);
    assert_eq!(second.wait_exit(Duration::from_secs(30)), 125);
    assert!(second.screen().contains("already has a terminal attached"), "{}", second.screen());

    // A closed terminal (SIGHUP) detaches; the session keeps running.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a.child.id() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    a.wait_exit(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&env, "life"), "running");

    // exec: as the agent's user, in the project, exit status passed through, stdin with -i.
    let out =
        env.faize().args(["exec", "life", "--", "sh", "-c", "echo \"$(whoami) $(pwd)\"; exit 5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("faize {p}"));
    let out = env.run(&["exec", "-i", "life", "--", "sh", "-c", "tr a-z A-Z"], b"piped in\n");
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "PIPED IN\n".to_string()), "{}", text(&out.stderr));

    // kill stops it gracefully; ps --all shows it killed; nothing is left running.
    let id = ps(&env).iter().find(|r| r["name"] == "life").unwrap()["id"].as_str().unwrap().to_string();
    let out = env.faize().args(["kill", "life"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(status_of(&env, &id), "killed");
    wait_no_processes(&id, Duration::from_secs(5));

    // kill -9 of a supervisor: QEMU and the sidecars follow within a second or two; ps: crashed.
    let crash = start_detached(&env, p, &[], "sleep 600");
    assert!(processes_of(&crash).len() >= 3, "QEMU and two sidecars: {:#?}", processes_of(&crash));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor_pid(&env, &crash)), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let gone = wait_no_processes(&crash, Duration::from_secs(3));
    assert_eq!(status_of(&env, &crash), "crashed", "after {gone:?}");

    // kill -9 of QEMU: the supervisor records why, cleans up and ends.
    let vm_dies = start_detached(&env, p, &[], "sleep 600");
    let qemu = processes_of(&vm_dies).into_iter().find(|l| l.contains("qemu-system")).expect("qemu");
    let qemu_pid: i32 = qemu.split(':').next().unwrap().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_no_processes(&vm_dies, Duration::from_secs(5));
    let start = Instant::now();
    let row = loop {
        let row = ps(&env).into_iter().find(|r| r["id"] == vm_dies.as_str()).unwrap();
        if row["status"] != "running" || start.elapsed() > Duration::from_secs(10) {
            break row;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row["status"], "crashed", "{row}");
    assert!(!supervisor_alive(supervisor_pid(&env, &vm_dies)), "the supervisor ends after cleaning up");
    assert!(row["reason"].as_str().unwrap().contains("VM stopped unexpectedly"), "{row}");

    // prune removes ended sessions and leaves running ones; --all --yes stops and removes all.
    let running = start_detached(&env, p, &[], "sleep 600");
    let out = env.faize().arg("prune").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("removed 3 ended sessions"), "{}", text(&out.stderr));
    assert_eq!(
        ps(&env).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect::<Vec<_>>(),
        std::slice::from_ref(&running)
    );
    let out = env.faize().args(["prune", "--all", "--yes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(ps(&env).is_empty(), "{:?}", ps(&env));
    wait_no_processes(&running, Duration::from_secs(5));
}

#[test]
fn sessions_side_by_side_cannot_see_each_other() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let projects: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, d) in projects.iter().enumerate() {
        std::fs::write(d.path().join("mine.txt"), format!("project-{i}")).unwrap();
    }
    let paths: Vec<String> = projects.iter().map(|d| d.path().to_str().unwrap().to_string()).collect();
    let children: Vec<_> = paths
        .iter()
        .map(|p| {
            let others: Vec<&String> = paths.iter().filter(|o| *o != p).collect();
            let script = format!(
                "cat mine.txt; echo; for o in {} {}; do test -e \"$o\" && echo SEES-$o; done; echo done",
                others[0], others[1]
            );
            env.faize()
                .args(["run", "--cpus", "1", "--memory", "512M", "-p", p, "--", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let so = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{so}{}", text(&out.stderr));
        assert_eq!(so, format!("project-{i}\ndone\n"), "session {i} saw: {so}");
    }
    let rows = ps(&env);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["status"] == "exited"), "{rows:?}");
}

#[test]
fn mounts_are_enforced_on_the_host_and_links_do_not_escape() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let (project, ro, rw) = (root.path().join("proj"), root.path().join("ro data"), root.path().join("rw:data"));
    for d in [&home.join(".ssh"), &project, &ro, &rw] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(home.join(".ssh/id_rsa"), "HOST-SECRET").unwrap();
    std::fs::write(ro.join("in-ro.txt"), "ro-content").unwrap();
    std::fs::write(root.path().join("notes.txt"), "file-content").unwrap();
    std::os::unix::fs::symlink(home.join(".ssh"), project.join("ssh-link")).unwrap();
    let ro_spec = format!("{}:/mnt/ro", ro.display());
    let rw_spec = format!("{}:/mnt/rw:rw", rw.display().to_string().replace(':', "\\:"));
    let file_spec = format!("{}:/mnt/notes.txt", root.path().join("notes.txt").display());
    let script = r#"
        echo "ro=$(cat /mnt/ro/in-ro.txt)"
        sudo sh -c 'echo x > /mnt/ro/new' 2>/dev/null && echo ro-write=ok || echo ro-write=refused
        sudo mount -o remount,rw /mnt/ro 2>/dev/null; sudo sh -c 'echo x > /mnt/ro/new2' 2>/dev/null && echo ro-remount-write=ok || echo ro-remount-write=refused
        echo hello > /mnt/rw/by-guest.txt && sudo sh -c 'echo root > /mnt/rw/by-root.txt' && echo rw-write=ok
        echo "file=$(cat /mnt/notes.txt)"
        sudo sh -c 'echo x >> /mnt/notes.txt' 2>/dev/null && echo file-write=ok || echo file-write=refused
        cat ssh-link/id_rsa 2>/dev/null && echo link=leaked || echo link=contained
    "#;
    let out = env
        .faize()
        .env("HOME", &home)
        .args(["run", "-p", project.to_str().unwrap(), "-m", &ro_spec, "-m", &rw_spec, "-m", &file_spec])
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    for want in [
        "ro=ro-content",
        "ro-write=refused",
        "ro-remount-write=refused",
        "rw-write=ok",
        "file=file-content",
        "file-write=refused",
        "link=contained",
    ] {
        assert!(so.contains(want), "expected {want}:\n{so}\n{se}");
    }
    assert!(!so.contains("HOST-SECRET"));
    assert!(!ro.join("new").exists() && !ro.join("new2").exists());
    let me = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    for f in ["by-guest.txt", "by-root.txt"] {
        let m = std::fs::metadata(rw.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), me, "{f}");
    }
    assert_eq!(std::fs::read_to_string(root.path().join("notes.txt")).unwrap(), "file-content");

    // A blocked mount is refused before anything starts.
    let out = env
        .faize()
        .env("HOME", &home)
        .args(["run", "-p", project.to_str().unwrap(), "-m", &home.join(".ssh").display().to_string(), "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("inside the blocked path"), "{}", text(&out.stderr));
}

#[test]
fn git_context_at_the_root_and_in_a_subfolder() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("mono repo");
    std::fs::create_dir_all(repo.join("pkg/app")).unwrap();
    let git = |dir: &std::path::Path, args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("pkg/app/main.txt"), "v1\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "first-commit"]);

    // At the repository root: the agent can commit, but not plant hooks, not even as root.
    std::fs::write(repo.join("gone.txt"), "bye").unwrap();
    std::fs::write(repo.join("edit.txt"), "one").unwrap();
    let script = r#"
        git log --oneline | grep -q first-commit && echo log=ok
        rm gone.txt; echo two >> edit.txt; echo new > new.txt
        git config core.fsmonitor 'echo planted'
        echo v2 > pkg/app/main.txt && git -c user.name=a -c user.email=a@b commit -qam from-the-vm && echo commit=ok
        sh -c 'echo evil > .git/hooks/pre-commit' 2>/dev/null && echo hook=written || echo hook=refused
        sudo sh -c 'echo evil > .git/hooks/pre-commit' 2>/dev/null && echo roothook=written || echo roothook=refused
    "#;
    let out = env.run(&["run", "-p", repo.to_str().unwrap(), "--", "sh", "-c", script], b"");
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}{}", text(&out.stderr));
    for want in ["log=ok", "commit=ok", "hook=refused", "roothook=refused"] {
        assert!(so.contains(want), "expected {want}: {so}{}", text(&out.stderr));
    }
    assert!(!repo.join(".git/hooks/pre-commit").exists());
    // The change summary: created, modified, deleted, and the .git/config edit flagged first.
    let se = text(&out.stderr);
    let flagged =
        se.find("! modified  .git/config").unwrap_or_else(|| panic!("the .git/config edit must be flagged: {se}"));
    for line in ["created   new.txt", "modified  edit.txt", "deleted   gone.txt"] {
        let at = se.find(line).unwrap_or_else(|| panic!("{line} missing: {se}"));
        assert!(flagged < at, "flagged changes come first: {se}");
    }
    let json = env.faize().args(["diff", "--json"]).output().unwrap();
    let saved: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let changes = saved["shares"][0]["changes"].as_array().unwrap();
    assert!(changes.iter().any(|c| c["path"] == ".git/config" && c["kind"] == "modified" && c["flag"].is_string()));
    assert!(changes.iter().any(|c| c["path"] == "gone.txt" && c["kind"] == "deleted"));
    let log = std::process::Command::new("git").args(["log", "--oneline"]).current_dir(&repo).output().unwrap();
    assert!(text(&log.stdout).contains("from-the-vm"), "the commit must reach the host");

    // In a subfolder: history is visible, the git folder is read-only.
    let app = repo.join("pkg/app");
    let script = r#"
        git log --oneline | grep -q from-the-vm && echo log=ok
        git diff --quiet HEAD && echo diff=clean
        sudo touch "$(git rev-parse --git-dir)/planted" 2>/dev/null && echo gitdir=written || echo gitdir=refused
    "#;
    let out = env.run(&["run", "-p", app.to_str().unwrap(), "--", "sh", "-c", script], b"");
    let so = text(&out.stdout);
    for want in ["log=ok", "diff=clean", "gitdir=refused"] {
        assert!(so.contains(want), "expected {want}: {so}{}", text(&out.stderr));
    }
    assert!(!repo.join(".git/planted").exists());
}

#[test]
fn agent_config_toolchain_and_credentials_across_sessions() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".claude/commands")).unwrap();
    std::fs::write(home.path().join(".claude/settings.json"), r#"{"model":"from-host"}"#).unwrap();
    std::fs::write(home.path().join(".claude/commands/review.md"), "review it").unwrap();
    std::fs::write(home.path().join(".claude.json"), r#"{"theme":"light-host","projects":{"/x":{}}}"#).unwrap();
    let p = project.path().to_str().unwrap();
    let run = |extra: &[&str], script: &str| {
        let out = env
            .faize()
            .env("HOME", home.path())
            .args(["run", "-p", p])
            .args(extra)
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let stored = env.home.path().join("credentials/claude.credentials.json");

    // A login inside a session that then times out is kept with persistence on...
    let (code, _, se) =
        run(&["--persist-credentials", "-t", "4s"], "echo TOKEN-A > ~/.claude/.credentials.json; exec sleep 600");
    assert_eq!(code, Some(124), "{se}");
    assert_eq!(std::fs::read_to_string(&stored).unwrap_or_default().trim(), "TOKEN-A", "{se}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);

    // ...and discarded with it off.
    let (code, so, se) = run(
        &["-t", "4s"],
        "cat ~/.claude/.credentials.json 2>/dev/null; echo TOKEN-B > ~/.claude/.credentials.json; exec sleep 600",
    );
    assert_eq!(code, Some(124), "{se}");
    assert!(!so.contains("TOKEN-A"), "without persistence the stored credentials are not used");
    assert_eq!(std::fs::read_to_string(&stored).unwrap().trim(), "TOKEN-A");

    // The next session with persistence starts from them, configured from the host's ~/.claude,
    // with the toolchain folder shared and on PATH.
    let script = r#"
        echo "creds=$(cat ~/.claude/.credentials.json)"
        echo "settings=$(cat ~/.claude/settings.json)"
        echo "command=$(cat ~/.claude/commands/review.md)"
        grep -q light-host ~/.claude.json && echo json=ok
        grep -q '"/x"' ~/.claude.json && echo json=leaks-history
        touch ~/.claude/session-state && echo state=writable
        echo 'echo tool-ran' > /opt/toolchain/bin/mytool && chmod +x /opt/toolchain/bin/mytool && mytool
    "#;
    let (code, so, se) = run(&["--persist-credentials"], script);
    assert_eq!(code, Some(0), "{so}{se}");
    for want in [
        "creds=TOKEN-A",
        "settings={\"model\":\"from-host\"}",
        "command=review it",
        "json=ok",
        "state=writable",
        "tool-ran",
    ] {
        assert!(so.contains(want), "expected {want}:\n{so}\n{se}");
    }
    assert!(!so.contains("leaks-history"));
    assert!(env.home.path().join("toolchain/bin/mytool").exists(), "the toolchain folder is shared");
    assert!(!home.path().join(".claude/session-state").exists(), "the host's ~/.claude is never written");
}

/// A static file server on the host's loopback, stopped when dropped.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    /// Serves `dir`; over TLS with `tls = Some((cert, key))`.
    fn start(dir: &std::path::Path, tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let wrap = match tls {
            Some((cert, key)) => format!(
                "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain({cert:?}, {key:?}); \
                 srv.socket = ctx.wrap_socket(srv.socket, server_side=True)"
            ),
            None => "pass".into(),
        };
        let program = format!(
            "import functools, http.server, ssl\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
             srv = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), h)\n{wrap}\nsrv.serve_forever()\n",
            dir = dir.display().to_string()
        );
        let child = std::process::Command::new("python3")
            .args(["-c", &program])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for the test server");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "test server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DNS server on the host's loopback that answers names an attacker controls with addresses
/// they should not reach (DNS rebinding): `rebind.test` → 127.0.0.1, `meta.test` →
/// 169.254.169.254; other names: NXDOMAIN. Stopped when dropped.
struct RebindingDns {
    child: std::process::Child,
    port: u16,
}

impl RebindingDns {
    fn start() -> Self {
        let program = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
answers = {b"rebind.test": "127.0.0.1", b"meta.test": "169.254.169.254"}
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]])
        i += 1 + q[i]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    ip = answers.get(b".".join(labels).lower())
    rr = b""
    if ip and qtype == 1:
        rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    flags = 0x8180 if ip else 0x8183
    s.sendto(q[:2] + struct.pack(">HHHHH", flags, 1, 1 if rr else 0, 0, 0) + q[12:i + 5] + rr, peer)
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", program])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for the test DNS server");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        RebindingDns { port: line.trim().parse().expect("the DNS server's port"), child }
    }
}

impl Drop for RebindingDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host's own address on its main interface (not loopback).
fn host_address() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.255:9").or_else(|_| probe.connect("8.8.8.8:53")).expect("a route off the host");
    probe.local_addr().unwrap().ip()
}

#[test]
fn the_network_allowlist_is_enforced_on_the_host() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("hello.txt"), "hello-from-host").unwrap();
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(www.path().join("big.bin"), &big).unwrap();
    let server = HttpServer::start(www.path(), None);
    let port = server.port;
    // A TLS server whose certificate only the guest is given: the session is end to end.
    let pki = tempfile::tempdir().unwrap();
    let (cert, key) = (pki.path().join("cert.pem"), pki.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=tls.test", "-addext", "subjectAltName=DNS:tls.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl: {}", text(&made.stderr));
    let tls_server = HttpServer::start(www.path(), Some((&cert, &key)));
    let tls_port = tls_server.port;
    let dns = RebindingDns::start();
    env.config(&format!(
        "network:\n  resolver: 127.0.0.1:{}\n  hosts:\n    allowed.test: 127.0.0.1\n    denied.test: 127.0.0.1\n    tls.test: 127.0.0.1\n    a.wild.test: 127.0.0.1\n    wild.test: 127.0.0.1\n",
        dns.port
    ));
    let host_ip = host_address();
    let project = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
        echo "get=$(curl -sS -m 30 http://allowed.test:{port}/hello.txt)"
        echo "tls=$(curl -sS -m 30 --cacert /mnt/ca.pem https://tls.test:{tls_port}/hello.txt)"
        echo "wild=$(curl -sS -m 30 http://a.wild.test:{port}/hello.txt)"
        curl -sS -m 10 http://wild.test:{port}/hello.txt >/dev/null 2>&1 || echo wild-apex=refused
        curl -sS -m 5 'http://[2606:4700::1111]/' >/dev/null 2>&1 || echo ipv6=refused
        python3 -c 'import socket; s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); s.settimeout(5); s.connect((2, 1026))' 2>/dev/null || echo other-vsock-port=refused
        echo "big=$(curl -sS -m 60 http://allowed.test:{port}/big.bin | sha256sum | cut -c1-16)"
        for i in 1 2 3 4 5 6; do curl -sS -m 60 -o /dev/null -w '%{{http_code}}\n' http://allowed.test:{port}/hello.txt & done | sort | uniq -c | awk '{{print "parallel=" $1 "x" $2}}'
        curl -sS -m 10 http://denied.test:{port}/hello.txt >/dev/null 2>&1 || echo denied-name=refused
        getent hosts denied.test >/dev/null || echo nxdomain=yes
        curl -sS -m 10 http://allowed.test:1/ >/dev/null 2>&1 || echo other-port=refused
        curl -sS -m 10 http://127.0.0.1:{port}/hello.txt >/dev/null 2>&1 || echo guest-loopback-is-not-the-host=yes
        curl -sS -m 10 http://169.254.169.254/ >/dev/null 2>&1 || echo metadata=refused
        curl -sS -m 10 http://rebind.test:{port}/hello.txt >/dev/null 2>&1 || echo rebind-loopback=refused
        curl -sS -m 10 http://meta.test/ >/dev/null 2>&1 || echo rebind-metadata=refused
        curl -sS -m 10 http://{host_ip}:{port}/hello.txt >/dev/null 2>&1 || echo host-address=refused
        python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(bytes(12), ("1.1.1.1", 53)); s.recv(512)' 2>/dev/null || echo outside-resolver=refused
        sudo nft flush ruleset
        curl -sS -m 5 http://93.184.216.34/ >/dev/null 2>&1 || echo flushed-root-bypass=refused
        sudo python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(bytes(12), ("1.1.1.1", 53)); s.recv(512)' 2>/dev/null || echo flushed-outside-resolver=refused
    "#
    );
    let ca = format!("{}:/mnt/ca.pem", cert.display());
    let (allow, allow_tls) = (format!("allowed.test:{port}"), format!("tls.test:{tls_port}"));
    let p = project.path().to_str().unwrap();
    let rebind = format!("rebind.test:{port}");
    let wild = format!("*.wild.test:{port}");
    let out = env.run(
        &["run", "-p", p, "-m", &ca, "-n", &allow, "-n", &allow_tls, "-n", &rebind, "-n", "meta.test", "-n", &wild]
            .into_iter()
            .chain(["--", "sh", "-c", &script])
            .collect::<Vec<_>>(),
        b"",
    );
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    let want_big = {
        use std::fmt::Write as _;
        let digest = std::process::Command::new("sha256sum").arg(www.path().join("big.bin")).output().unwrap();
        let mut s = String::new();
        let _ = write!(s, "{}", &text(&digest.stdout)[..16]);
        s
    };
    for want in [
        "get=hello-from-host".to_string(),
        "tls=hello-from-host".to_string(),
        "wild=hello-from-host".to_string(),
        "wild-apex=refused".to_string(),
        "ipv6=refused".to_string(),
        "other-vsock-port=refused".to_string(),
        format!("big={want_big}"),
        "parallel=6x200".to_string(),
        "denied-name=refused".to_string(),
        "nxdomain=yes".to_string(),
        "other-port=refused".to_string(),
        "guest-loopback-is-not-the-host=yes".to_string(),
        "metadata=refused".to_string(),
        "flushed-root-bypass=refused".to_string(),
        "rebind-loopback=refused".to_string(),
        "rebind-metadata=refused".to_string(),
        "host-address=refused".to_string(),
        "outside-resolver=refused".to_string(),
        "flushed-outside-resolver=refused".to_string(),
    ] {
        assert!(so.contains(&want), "expected {want}:\n{so}\n{se}");
    }
    // Every decision is in the host-written audit log, and the summary names what was denied.
    let log_path = std::fs::read_dir(env.home.path().join("sessions"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("net.jsonl"))
        .find(|p| p.exists())
        .expect("net.jsonl");
    let log = std::fs::read_to_string(log_path).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |event: &str, name: &str, decision: &str| {
        lines.iter().any(|e| e["event"] == event && e["name"] == name && e["decision"] == decision)
    };
    assert!(has("dns", "allowed.test", "allow") && has("connect", "allowed.test", "allow"), "{log}");
    assert!(has("dns", "denied.test", "deny"), "{log}");
    assert!(has("connect", "169.254.169.254", "deny"), "{log}");
    // Names the rules allow but the resolver points at forbidden addresses: refused by the host.
    let reason = |name: &str| {
        let e = lines.iter().find(|e| e["event"] == "connect" && e["name"] == name).expect(name);
        e["reason"].as_str().unwrap_or_default().to_string()
    };
    assert!(has("connect", "rebind.test", "deny") && reason("rebind.test").contains("127.0.0.1 is"), "{log}");
    assert!(has("connect", "meta.test", "deny") && reason("meta.test").contains("169.254.169.254 is"), "{log}");
    assert!(has("connect", &host_ip.to_string(), "deny"), "{log}");
    assert!(
        lines.iter().any(|e| e["event"] == "connect" && e["bytes_in"].as_u64().unwrap_or(0) > 20 << 20),
        "byte counts: {log}"
    );
    assert!(se.contains("denied denied.test"), "{se}");
    let logs = env.faize().args(["logs", "--net", &kept_id(&env)]).output().unwrap();
    assert!(text(&logs.stdout).contains("dns     deny   denied.test"), "{}", text(&logs.stdout));

    // A running session's policy changes without a restart. It starts with an empty list
    // (none); `all` does not reach a name the host resolves to its loopback; naming it does.
    let script = format!(
        r#"
        curl -sS -m 10 http://later.test:{port}/hello.txt >/dev/null 2>&1 || echo before=refused
        echo waiting
        while [ ! -e all-allowed ]; do sleep 0.2; done
        curl -sS -m 10 http://later.test:{port}/hello.txt >/dev/null 2>&1 || echo under-all=refused
        echo waiting-2
        for i in $(seq 1 60); do curl -sS -m 10 http://later.test:{port}/hello.txt 2>/dev/null && echo " after=ok" && exit 0; sleep 1; done
        exit 1
    "#
    );
    env.config("networks: []\nnetwork:\n  hosts:\n    later.test: 127.0.0.1\n");
    let sessions_before: Vec<_> =
        std::fs::read_dir(env.home.path().join("sessions")).unwrap().flatten().map(|e| e.file_name()).collect();
    let mut child = env
        .faize()
        .args(["run", "-p", project.path().to_str().unwrap(), "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut read_until = |marker: &str, seen: &mut String| {
        while !seen.contains(marker) {
            let mut line = String::new();
            assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "session ended early: {seen}");
            *seen += &line;
        }
    };
    read_until("waiting", &mut seen);
    let id = std::fs::read_dir(env.home.path().join("sessions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .find(|n| !sessions_before.contains(n))
        .expect("the running session's folder");
    let all = env.faize().args(["network", "allow", id.to_str().unwrap(), "all"]).output().unwrap();
    assert_eq!(all.status.code(), Some(0), "{}", text(&all.stderr));
    std::fs::write(project.path().join("all-allowed"), "").unwrap();
    read_until("waiting-2", &mut seen);
    let allow =
        env.faize().args(["network", "allow", id.to_str().unwrap(), &format!("later.test:{port}")]).output().unwrap();
    assert_eq!(allow.status.code(), Some(0), "{}", text(&allow.stderr));
    let bad = env.faize().args(["network", "allow", id.to_str().unwrap(), "*.com"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(125));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{seen}{rest}{}", text(&out.stderr));
    assert!(seen.contains("before=refused") && seen.contains("under-all=refused"), "{seen}");
    assert!(rest.contains("hello-from-host after=ok"), "{seen}{rest}");
    assert!(
        text(&out.stderr).contains("network: none (the config's networks: list allows nothing)"),
        "{}",
        text(&out.stderr)
    );
}

/// The id of the one session of `env` that kept a network log.
fn kept_id(env: &Env) -> String {
    let id = std::fs::read_dir(env.home.path().join("sessions"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("net.jsonl").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("a session");
    id
}

#[test]
fn claude_rebuild_bakes_in_extra_packages_and_a_failed_build_keeps_the_old_image() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    // Its own images folder: the shared images are never touched by this test.
    let images = tempfile::tempdir().unwrap();
    for f in ["vmlinux", "initramfs.cpio", "claude.erofs", "manifest.json"] {
        std::fs::copy(common::artifacts_dir().join(f), images.path().join(f)).unwrap();
    }
    let project = tempfile::tempdir().unwrap();
    let p = project.path().to_str().unwrap();
    let faize = |args: &[&str]| {
        env.faize().env("FAIZE_ARTIFACTS_DIR", images.path()).args(args).stdin(Stdio::null()).output().unwrap()
    };

    // A misspelled package: the build fails naming it (apt's own message), the old image stays.
    env.config("claude:\n  extra_deps: [faize-no-such-package]\n");
    let out = faize(&["claude", "rebuild"]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{se}");
    assert!(se.contains("faize-no-such-package"), "the failure names the package: {se}");
    let out = faize(&["run", "--image", "claude", "-p", p, "--", "sh", "-c", "command -v hello || echo no-hello"]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!((out.status.code(), so.as_str()), (Some(0), "no-hello\n"), "the old image still works: {se}");
    assert!(se.contains("claude.extra_deps changed since the claude image was built"), "{se}");

    // A real one: in the next session.
    env.config("claude:\n  extra_deps: [hello]\n");
    let out = faize(&["claude", "rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = faize(&["run", "--image", "claude", "-p", p, "--", "hello"]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!((out.status.code(), so.as_str()), (Some(0), "Hello, world!\n"), "{se}");
    assert!(!se.contains("extra_deps changed"), "{se}");
    let listing = text(&faize(&["artifacts"]).stdout);
    assert!(listing.lines().any(|l| l.starts_with("claude") && l.contains("extra-deps=hello")), "{listing}");
}

/// A virtual X display (Xvfb) with the host's clipboard tool, stopped when dropped.
/// A browser for `FAIZE_BROWSER` that appends each URL it is given to the second path.
fn stub_browser(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (stub, opened) = (dir.join("browser.sh"), dir.join("opened.txt"));
    std::fs::write(&stub, format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display())).unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    (stub, opened)
}

/// The requests log (URLs, callbacks, copies) of the first session of `env`.
fn requests_log(env: &Env) -> String {
    let id = ps(env)[0]["id"].as_str().unwrap().to_string();
    std::fs::read_to_string(env.home.path().join("sessions").join(id).join("requests.jsonl")).unwrap()
}

/// sha256 of `data`, its first 16 hex digits (as the guest scripts print them).
fn sha16(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x"), data).unwrap();
    text(&std::process::Command::new("sha256sum").arg(dir.path().join("x")).output().unwrap().stdout)[..16].to_string()
}

/// A BMP image of `w`×`h` pixels of one colour (24 bits, rows padded to 4 bytes).
fn bmp(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    for v in [size, 0, 54, 40] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * h, 2835, 2835, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for _ in 0..h {
        let mut line: Vec<u8> = (0..w).flat_map(|_| [rgb[2], rgb[1], rgb[0]]).collect();
        line.resize(row as usize, 0);
        b.extend_from_slice(&line);
    }
    b
}

struct Display {
    xvfb: std::process::Child,
    name: String,
}

impl Display {
    fn start() -> Self {
        let n = 90 + std::process::id() % 100;
        let name = format!(":{n}");
        let xvfb = std::process::Command::new("Xvfb")
            .args([&name, "-nolisten", "tcp", "-screen", "0", "640x480x24"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (./setup.sh installs it)");
        let start = Instant::now();
        while !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "Xvfb did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Display { xvfb, name }
    }

    /// Puts `data` on the clipboard as `mime` (xclip keeps serving it in the background).
    fn set(&self, mime: &str, data: &[u8]) {
        let mut c = std::process::Command::new("xclip")
            .args(["-selection", "clipboard", "-t", mime, "-i"])
            .env("DISPLAY", &self.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("xclip (./setup.sh installs it)");
        c.stdin.take().unwrap().write_all(data).unwrap();
        assert!(c.wait().unwrap().success());
    }

    fn get(&self) -> String {
        let out = std::process::Command::new("xclip")
            .args(["-selection", "clipboard", "-o"])
            .env("DISPLAY", &self.name)
            .output()
            .unwrap();
        text(&out.stdout)
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

#[test]
fn ctrl_v_hands_the_guest_the_host_clipboard_and_urls_go_through_the_host() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let display = Display::start();
    let project = tempfile::tempdir().unwrap();
    let p = project.path().to_str().unwrap();
    let (stub, opened) = stub_browser(project.path());
    // Bigger than one clipboard chunk (512 KiB) to the guest.
    let png: Vec<u8> = (0..700_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let want_png = sha16(&png);
    // Offered as BMP only: converted to PNG on the host.
    let bmp = bmp(5, 3, [10, 200, 30]);
    let want_bmp_png = sha16(&faize_host::clipboard::to_png(&bmp).unwrap());
    // A slow clipboard owner (each read takes a second; a PNG takes two reads): the key must not
    // wait for it (content first would show the key and the PNG well under 1.5 s apart), and
    // the guest's tools must wait for the content rather than serve the previous one.
    let slow_xclip = project.path().join("slow-xclip");
    std::fs::write(&slow_xclip, "#!/bin/sh\nsleep 1\nexec xclip \"$@\"\n").unwrap();
    std::fs::set_permissions(&slow_xclip, std::fs::Permissions::from_mode(0o755)).unwrap();
    display.set("image/png", &png);

    // Each step waits for one raw key (the Ctrl+V itself, which must reach the program); the
    // terminal is raw before the step says it is ready.
    let script = r#"
        key() { stty raw -echo; echo "$1"; k=$(dd bs=1 count=1 2>/dev/null | od -An -tx1 | tr -d ' '); stty sane; echo "key=$k"; }
        key ready-1
        echo "targets=$(xclip -selection clipboard -t TARGETS -o | tr '\n' ,)"
        echo "png=$(xclip -selection clipboard -t image/png -o | sha256sum | cut -c1-16)"
        echo "wl-types=$(wl-paste --list-types | tr '\n' ,)"
        wl-paste --type text/html >/dev/null 2>&1; echo "absent-type-rc=$?"
        key ready-2
        echo "text=$(xclip -selection clipboard -o)/$(xsel -b -o)/$(wl-paste)"
        key ready-3
        echo "bmp=$(xclip -selection clipboard -t TARGETS -o | tr '\n' ,)$(xclip -selection clipboard -t image/png -o | sha256sum | cut -c1-16)"
        key ready-4
        xclip -selection clipboard -t TARGETS -o >/dev/null 2>&1; echo "empty-rc=$?"
        wl-paste >/dev/null 2>&1; echo "wl-empty-rc=$?"
        echo guest-copy | xclip -selection clipboard -i; echo "copy-rc=$?"
        xdg-open 'https://evil.example/steal?x=1'; echo "evil-rc=$?"
        "$BROWSER" 'https://claude.ai/oauth/authorize?code=1'; echo "allowed-rc=$?"
        echo all-done
    "#;
    let stub_s = stub.to_str().unwrap();
    let mut t = Terminal::start_with(
        &env,
        &["start", "--cpus", "1", "-p", p, "--", "bash", "-c", script],
        &[("DISPLAY", &display.name), ("FAIZE_BROWSER", stub_s), ("FAIZE_XCLIP", slow_xclip.to_str().unwrap())],
    );
    t.wait_for("ready-1", Duration::from_secs(120));
    t.type_("\x16");
    t.wait_for("key=16", Duration::from_secs(30));
    let key_seen = Instant::now();
    t.wait_for("png=", Duration::from_secs(60));
    assert!(
        key_seen.elapsed() >= Duration::from_millis(1500),
        "the key reached the program before the (slow) clipboard, and xclip waited for it: {:?}",
        key_seen.elapsed()
    );
    t.wait_for("ready-2", Duration::from_secs(60));
    display.set("UTF8_STRING", "hello from the host".as_bytes());
    t.type_("\x16");
    t.wait_for("ready-3", Duration::from_secs(60));
    display.set("image/bmp", &bmp);
    t.type_("\x16");
    t.wait_for("ready-4", Duration::from_secs(60));
    display.set("UTF8_STRING", b"");
    t.type_("\x16");
    t.wait_for("all-done", Duration::from_secs(60));
    assert_eq!(t.wait_exit(Duration::from_secs(60)), 0, "{}", t.screen());
    let screen = t.screen();
    for want in [
        "key=16".to_string(),
        "targets=TARGETS,image/png,".to_string(),
        format!("png={want_png}"),
        "wl-types=image/png,".to_string(),
        "absent-type-rc=1".to_string(),
        "text=hello from the host/hello from the host/hello from the host".to_string(),
        format!("bmp=TARGETS,image/png,{want_bmp_png}"),
        "empty-rc=1".to_string(),
        "wl-empty-rc=1".to_string(),
        "copy-rc=0".to_string(),
        "evil-rc=0".to_string(),
        "allowed-rc=0".to_string(),
        "faize: the VM asks to open https://evil.example/steal?x=1".to_string(),
        "not opened (evil.example is not in open_urls)".to_string(),
    ] {
        assert!(screen.contains(&want), "expected {want:?}:\n{screen}");
    }
    assert_eq!(screen.matches("key=16").count(), 4, "{screen}");
    // Only the allowed URL reached the browser; the guest's copy did not reach the host.
    let start = Instant::now();
    while !opened.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&opened).unwrap(), "https://claude.ai/oauth/authorize?code=1\n");
    assert!(!display.get().contains("guest-copy"), "copy_to_host is off by default");
    let log = requests_log(&env);
    assert!(log.contains("\"decision\":\"shown\"") && log.contains("\"decision\":\"opened\""), "{log}");
    assert!(log.contains("\"event\":\"copy\""), "{log}");

    // No display at all: Ctrl+V still reaches the program, and nothing hangs.
    let mut t = Terminal::start(&env, &["start", "--cpus", "1", "-p", p, "--", "bash", "-c", script]);
    t.wait_for("ready-1", Duration::from_secs(120));
    let pressed = Instant::now();
    t.type_("\x16");
    t.wait_for("key=16", Duration::from_secs(30));
    assert!(pressed.elapsed() < Duration::from_secs(10));
    t.wait_for("absent-type-rc", Duration::from_secs(30));
    let after = t.screen().split("targets=").nth(1).unwrap_or_default().to_string();
    assert!(after.starts_with(['\r', '\n']), "the guest clipboard is empty: {}", t.screen());
}

/// Sends one HTTP request to the host's `127.0.0.1:port` and returns the reply (`None` when the
/// connection is refused).
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    Some(text(&reply))
}

#[test]
fn a_login_callback_reaches_the_guest_once_and_only_in_time() {
    if !vm_tests_enabled() {
        return;
    }
    let env = Env::new();
    let project = tempfile::tempdir().unwrap();
    let p = project.path().to_str().unwrap();
    let (stub, opened) = stub_browser(project.path());
    // A port free on the host; the guest's login program listens on the same one inside.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // A port some host program already uses: that login's callback cannot be awaited.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let script = format!(
        r#"
        python3 -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("guest got " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
' &
        until (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; do sleep 0.1; done
        xdg-open 'https://evil.example/login?redirect_uri=http%3A%2F%2Flocalhost%3A{other}%2Fcallback'
        xdg-open 'https://claude.ai/oauth/authorize?code=true&redirect_uri=http%3A%2F%2Flocalhost%3A{busy_port}%2Fcallback&state=busy'
        xdg-open 'https://claude.ai/oauth/authorize?code=true&redirect_uri=http%3A%2F%2Flocalhost%3A{port}%2Fcallback&state=one'
        echo flow-1
        while [ ! -e flow-2 ]; do sleep 0.2; done
        xdg-open 'https://claude.ai/oauth/authorize?code=true&redirect_uri=http%3A%2F%2Flocalhost%3A{other}%2Fcallback&state=replaced'
        xdg-open 'https://claude.ai/oauth/authorize?code=true&redirect_uri=http%3A%2F%2Flocalhost%3A{port}%2Fcallback&state=two'
        echo flow-2
        while [ ! -e done ]; do sleep 0.2; done
        echo all-done
    "#
    );
    let mut t = Terminal::start_with(
        &env,
        &["start", "--cpus", "1", "-p", p, "--", "bash", "-c", &script],
        &[("FAIZE_BROWSER", stub.to_str().unwrap()), ("FAIZE_CALLBACK_TIMEOUT", "5")],
    );
    t.wait_for("flow-1", Duration::from_secs(120));
    // The allowed login's callback: something else on that port is refused, then the browser's
    // request reaches the guest's server, and a second callback finds nothing listening.
    let wrong = http_get(port, "/elsewhere").expect("the host listens for the login's callback");
    assert_eq!(wrong, "", "a request for another path is closed unanswered");
    let reply = http_get(port, "/callback?code=abc&state=one").expect("the callback is accepted");
    assert!(reply.starts_with("HTTP/1.0 200") && reply.ends_with("guest got /callback?code=abc&state=one"), "{reply}");
    assert!(http_get(port, "/callback?code=again").is_none(), "a second callback is refused");
    assert!(http_get(other, "/callback").is_none(), "a URL that is not opened gets no callback");

    // A login started again replaces the one still waiting; the newer one's callback comes
    // after the time limit (5 s): refused.
    std::fs::write(project.path().join("flow-2"), "").unwrap();
    t.wait_for("flow-2", Duration::from_secs(60));
    assert!(http_get(other, "/callback").is_none(), "a replaced login no longer listens");
    std::thread::sleep(Duration::from_secs(8));
    assert!(http_get(port, "/callback?code=late").is_none(), "a callback after the time limit is refused");
    std::fs::write(project.path().join("done"), "").unwrap();
    t.wait_for("all-done", Duration::from_secs(60));
    assert_eq!(t.wait_exit(Duration::from_secs(60)), 0, "{}", t.screen());

    let urls = std::fs::read_to_string(&opened).unwrap();
    assert_eq!(urls.lines().count(), 4, "only the four claude.ai logins were opened: {urls}");
    let busy_notice =
        format!("the login's callback will not reach the VM: cannot listen on the host's 127.0.0.1:{busy_port}");
    assert!(t.screen().contains(&busy_notice), "a port in use is reported: {}", t.screen());
    drop(busy);
    let log = requests_log(&env);
    for want in [
        "\"decision\":\"listening\"",
        "\"decision\":\"passed to the guest\"",
        "a newer login replaced it",
        "\"decision\":\"not awaited\"",
        "no callback within 5 s",
    ] {
        assert!(log.contains(want), "expected {want} in the requests log:\n{log}");
    }
}
