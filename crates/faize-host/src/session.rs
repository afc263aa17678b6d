//! One session from start to end, run by its supervisor ([`crate::supervisor`]): the session
//! folder and scratch disk, the sidecars and QEMU, the conversation with the guest agent, the
//! attached terminal (if any, over [`crate::attach`]), `faize exec` programs, the timeout, and
//! the clean-up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use faize_net::proxy::Proxy;
use faize_protocol::net::NET_PORT;
use faize_protocol::{encode_frame, Exec, ExitStatus, FrameBuf, GuestMsg, HostMsg, Setup, WinSize, CONTROL_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::agent_config;
use crate::attach::{self, Frame, ToSupervisor, ToTerminal};
use crate::changes::{self, ShareChanges, Snapshot};
use crate::home::{find_program, vars, FaizeHome};
use crate::mounts::MountKind;
use crate::process::{self, tail, Helper};
use crate::shares;
use crate::spec::{credentials_dir, SessionSpec};
use crate::vmm::{self, QemuSpec};

/// The session's network audit log, in its folder.
pub const NET_LOG: &str = "net.jsonl";
/// The guest's requests to the host (URLs to open, copies), in the session folder.
pub const REQUESTS_LOG: &str = "requests.jsonl";
/// Clipboard content goes to the guest in pieces of this size.
const CLIPBOARD_CHUNK: usize = 512 * 1024;

/// Exit codes of faize itself (a program's own exit code is passed through unchanged).
pub mod exit_code {
    /// The session hit its timeout.
    pub const TIMEOUT: i32 = 124;
    /// faize failed (bad input, missing prerequisite, VM failure).
    pub const FAIZE_ERROR: i32 = 125;
}

/// How long the program gets between SIGTERM and SIGKILL when the session is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// From QEMU's start to the agent's handshake, and from there to ready.
const BOOT_LIMIT: Duration = Duration::from_secs(180);

/// The external programs a session needs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub vhost_vsock: PathBuf,
    pub mkfs_ext4: PathBuf,
}

impl Tools {
    /// Finds every tool or says which is missing and how to get it.
    pub fn find() -> Result<Self> {
        let need = |name: &str, var: &str, how: &str| {
            find_program(name, var)
                .ok_or_else(|| anyhow::anyhow!("{name} was not found on PATH: {how}, or run ./setup.sh"))
        };
        Ok(Self {
            qemu: need("qemu-system-x86_64", vars::QEMU, "install the qemu-system-x86 package")?,
            virtiofsd: need("virtiofsd", vars::VIRTIOFSD, "run `cargo install virtiofsd --version ~1.14`")?,
            vhost_vsock: need(
                "vhost-device-vsock",
                vars::VHOST_VSOCK,
                "run `cargo install vhost-device-vsock --version ~0.3`",
            )?,
            mkfs_ext4: find_program("mkfs.ext4", "FAIZE_MKFS_EXT4")
                .ok_or_else(|| anyhow::anyhow!("mkfs.ext4 was not found: install the e2fsprogs package"))?,
        })
    }
}

/// The image files a session boots.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Images {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub root: PathBuf,
}

/// Timestamps of the phases of a session, printed as JSON when `FAIZE_TIMINGS=1`.
#[derive(Debug)]
struct Timings {
    start: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Timings {
    fn mark(&mut self, what: &'static str) {
        self.marks.push((what, self.start.elapsed()));
    }
    /// The `faize-timings:` line, when `FAIZE_TIMINGS` is set.
    fn report(&self) -> String {
        if std::env::var_os("FAIZE_TIMINGS").is_none() {
            return String::new();
        }
        let fields: Vec<String> =
            self.marks.iter().map(|(k, d)| format!("\"{k}\":{:.1}", d.as_secs_f64() * 1000.0)).collect();
        format!("faize-timings: {{{}}}\n", fields.join(","))
    }
}

/// The session's folders: logs and scratch disk under `~/.faize/sessions/<id>`, sockets under a
/// short private runtime folder (Unix socket paths are limited to 108 bytes).
pub struct Dirs {
    pub session: PathBuf,
    pub runtime: PathBuf,
}

impl Dirs {
    pub fn create(home: &FaizeHome, id: &str) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let session = home.sessions().join(id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&session)
            .with_context(|| format!("creating {}", session.display()))?;
        let uid = nix::unistd::getuid().as_raw();
        let base = crate::home::runtime_base();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)
            .with_context(|| format!("creating {}", base.display()))?;
        let meta = std::fs::metadata(&base)?;
        if meta.uid() != uid || meta.mode() & 0o077 != 0 {
            bail!("{} is not a private folder of this user: remove it and try again", base.display());
        }
        let runtime = base.join(id);
        std::fs::create_dir(&runtime).with_context(|| format!("creating {}", runtime.display()))?;
        Ok(Self { session, runtime })
    }
}

/// What the supervisor knows of the user's terminal when the session starts.
#[derive(Debug, Clone, Default)]
pub struct TerminalInfo {
    /// The program's pseudo-terminal size (interactive sessions).
    pub tty: Option<WinSize>,
    /// TERM and COLORTERM.
    pub term_env: Vec<(String, String)>,
}

/// How a session ended, with faize's exit code and the text for the user.
#[derive(Debug)]
pub struct Outcome {
    pub status: crate::state::Status,
    pub code: i32,
    /// Why, when it was not the program's own choice.
    pub reason: Option<String>,
    /// The end-of-session report: change summary, denied names, errors.
    pub report: String,
}

/// What the supervisor records as the session goes.
pub trait Lifecycle {
    /// The program runs.
    fn running(&mut self);
    /// The session ended and is cleaned up (called before the terminal is told).
    fn ended(&mut self, outcome: &Outcome);
}

/// Runs a session to its end. `first` is the terminal that launched it, if it stays attached.
pub async fn run(launch: &Parts<'_>, first: Option<UnixStream>, lifecycle: &mut dyn Lifecycle) -> Outcome {
    let Parts { spec, home, dirs, .. } = *launch;
    let mut timings = Timings { start: Instant::now(), marks: Vec::new() };
    let mut helpers: Vec<Helper> = Vec::new();
    let mut report = String::new();
    faize_net::proxy::raise_fd_limit();
    // The change summary's baseline is taken while the VM boots; the guest sees the shares only
    // after it is complete.
    let roots = writable_roots(spec);
    let mut baseline = Baseline::Pending(spec.show_diff.then(|| {
        let roots = roots.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let snapshots = roots.iter().map(|r| Snapshot::take(r)).collect();
            (snapshots, started.elapsed())
        })
    }));
    let mut terminals = Terminals::new(first);
    let result = boot_and_run(launch, &mut helpers, &mut timings, &mut baseline, &mut terminals, lifecycle).await;
    // All at once, QEMU first (it holds the sidecars' sockets). The sidecars are reaped now (no
    // write reaches the shares after this); QEMU, which takes longest to release guest memory,
    // is reaped at the very end.
    for h in helpers.iter_mut().rev() {
        let _ = h.child.start_kill();
    }
    let qemu = helpers.pop_if(|h| h.name == "qemu");
    for h in helpers.iter_mut() {
        h.stop().await;
    }
    timings.mark("helpers_stopped");
    // One walk of each writable share after the VM: for the setuid sweep and the change summary.
    let since = timings.start_system();
    let walk_started = Instant::now();
    let toolchain = home.root.join("toolchain");
    let after: Vec<Snapshot> = roots.iter().map(|r| Snapshot::take(r)).collect();
    for (root, snapshot) in roots.iter().zip(&after).chain([(&toolchain, &Snapshot::take(&toolchain))]) {
        crate::sweep::strip_special_bits(root, snapshot, since);
    }
    report += &save_agent_credentials(spec, home, &dirs.session);
    if let Baseline::Taken(before, took) = baseline {
        timings.marks.push(("baseline_walk", took));
        let changes: Vec<ShareChanges> =
            roots.iter().zip(&before).zip(&after).map(|((root, b), a)| changes::diff(root, b, a)).collect();
        report += &changes::render(&changes).lines().map(|l| format!("faize: {l}\n")).collect::<String>();
        if let Err(e) = changes::save(&dirs.session, &spec.id, &changes) {
            report += &format!("faize: could not save the change summary: {e:#}\n");
        }
        timings.marks.push(("diff_walk", walk_started.elapsed()));
        timings.mark("changes_listed");
    }
    report += &report_denied(&dirs.session.join(NET_LOG));
    let _ = std::fs::remove_dir_all(&dirs.runtime);
    tidy_session_dir(&dirs.session, !matches!(result, Ok(Ending::Exited(_))));
    // QEMU got SIGKILL above and can no longer run; the kernel needs ~40 ms to release 4 GiB of
    // guest memory mappings. Reap it if it is already gone; otherwise do not wait: the kernel
    // finishes the release and init reaps it.
    if let Some(mut qemu) = qemu {
        let _ = tokio::time::timeout(Duration::from_millis(2), qemu.stop()).await;
    }
    timings.mark("done");
    report += &timings.report();
    use crate::state::Status;
    let outcome = match result {
        Ok(Ending::Exited(s)) => Outcome { status: Status::Exited, code: s.code, reason: None, report },
        Ok(Ending::Stopped(s, why)) => Outcome { status: Status::Killed, code: s.code, reason: Some(why), report },
        Ok(Ending::TimedOut) => {
            let t = crate::units::format_duration(spec.timeout.unwrap_or_default());
            Outcome {
                status: Status::TimedOut,
                code: exit_code::TIMEOUT,
                reason: Some(format!("timed out after {t}")),
                report,
            }
        }
        Err(e) => {
            let why = format!("session {} failed: {e:#}\nits logs are in {}", spec.id, dirs.session.display());
            report += &format!("faize: {why}\n");
            Outcome { status: Status::Crashed, code: exit_code::FAIZE_ERROR, reason: Some(why), report }
        }
    };
    lifecycle.ended(&outcome);
    terminals.end(outcome.code, &outcome.report).await;
    outcome
}

/// Lists the names the session was refused, each with the rule that would allow it.
fn report_denied(log: &Path) -> String {
    let Ok(entries) = faize_net::proxy::read_log(log) else { return String::new() };
    let mut denied: Vec<String> = entries
        .iter()
        .filter(|e| e["decision"] == "deny")
        .filter_map(|e| {
            let name = e["name"].as_str()?;
            Some(match e["port"].as_u64() {
                Some(p) if name.parse::<std::net::IpAddr>().is_ok() => format!("{name}:{p}"),
                _ => name.to_string(),
            })
        })
        .collect();
    denied.sort();
    denied.dedup();
    let mut out = String::new();
    for d in denied.iter().take(20) {
        out += &format!(
            "faize: network: denied {d} (to allow it, add `- {d}` under networks: in the config, or -n {d})\n"
        );
    }
    if denied.len() > 20 {
        out += &format!("faize: network: {} more denied; see {}\n", denied.len() - 20, log.display());
    }
    out
}

/// Empties the session folder at the end: a normal end keeps the state, the change summary (for
/// `faize diff`) and the network log; after a failure or a timeout, the logs stay too. The
/// folder itself stays until `faize prune`.
fn tidy_session_dir(dir: &Path, keep_logs: bool) {
    use crate::state::{LOCK_FILE, STATE_FILE};
    let keep = [changes::FILE, NET_LOG, REQUESTS_LOG, STATE_FILE, LOCK_FILE, crate::supervisor::LOG];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let log = name.to_string_lossy().ends_with(".log");
        if !(keep.iter().any(|k| name == *k) || keep_logs && log) {
            let p = entry.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

/// The change summary's starting point.
enum Baseline {
    Pending(Option<tokio::task::JoinHandle<(Vec<Snapshot>, Duration)>>),
    /// The snapshots and how long taking them took.
    Taken(Vec<Snapshot>, Duration),
}

impl Baseline {
    /// Waits for the snapshot (before the guest may touch the shares).
    async fn complete(&mut self) -> Result<()> {
        if let Baseline::Pending(task) = self {
            if let Some(task) = task.take() {
                let (snapshots, took) = task.await.context("taking the change summary's baseline")?;
                *self = Baseline::Taken(snapshots, took);
            }
        }
        Ok(())
    }
}

/// Host folders the guest can write to that belong to the user (the project, `rw` mounts and
/// git folders), for the change summary and the setuid sweep.
fn writable_roots(spec: &SessionSpec) -> Vec<PathBuf> {
    std::iter::once(spec.project.clone())
        .chain(spec.mounts.iter().filter(|m| !m.read_only && m.kind == MountKind::Dir).map(|m| m.source.clone()))
        .collect()
}

/// Keeps the agent's credentials if asked (whatever ended the session) and removes the staged
/// configuration; returns what to tell the user.
fn save_agent_credentials(spec: &SessionSpec, home: &FaizeHome, session: &Path) -> String {
    let staged = session.join(shares::AGENT_CONFIG_DIR);
    if !staged.exists() {
        return String::new();
    }
    let mut said = String::new();
    if spec.persist_credentials {
        let store = agent_config::stored_credentials(&credentials_dir(&home.root));
        match agent_config::save_credentials(&staged, &store) {
            Ok(true) => said = format!("faize: saved the agent's credentials to {}\n", store.display()),
            Ok(false) => {}
            Err(e) => said = format!("faize: could not save the agent's credentials: {e:#}\n"),
        }
    }
    let _ = std::fs::remove_dir_all(&staged);
    said
}

enum Ending {
    Exited(ExitStatus),
    /// Stopped by `faize kill` or a signal to the supervisor (the program's status, and why).
    Stopped(ExitStatus, String),
    TimedOut,
}

impl Timings {
    fn start_system(&self) -> SystemTime {
        SystemTime::now() - self.start.elapsed()
    }
}

/// What a session is started from.
pub struct Parts<'a> {
    pub spec: &'a SessionSpec,
    pub tools: &'a Tools,
    pub images: &'a Images,
    pub dirs: &'a Dirs,
    pub home: &'a FaizeHome,
    pub terminal: &'a TerminalInfo,
}

async fn boot_and_run(
    launch: &Parts<'_>,
    helpers: &mut Vec<Helper>,
    timings: &mut Timings,
    baseline: &mut Baseline,
    terminals: &mut Terminals,
    lifecycle: &mut dyn Lifecycle,
) -> Result<Ending> {
    let mut signals = Signals::new()?;
    let booted = tokio::select! {
        r = boot(launch, helpers, timings, baseline, terminals) => r?,
        sig = signals.next() => bail!("stopped by signal {sig} while the VM was starting"),
    };
    lifecycle.running();
    terminals.running(&launch.spec.id).await;
    let ending = relay(launch, terminals, booted, helpers, timings, &mut signals).await;
    ending.map_err(|e| anyhow::anyhow!(crash_report(launch.dirs, &format!("{e:#}"))))
}

/// Everything up to the program's start: scratch disk, sidecars, QEMU, handshake, setup, Exec.
async fn boot(
    launch: &Parts<'_>,
    helpers: &mut Vec<Helper>,
    timings: &mut Timings,
    baseline: &mut Baseline,
    terminals: &mut Terminals,
) -> Result<Booted> {
    let Parts { spec, tools, images, dirs, home, terminal } = *launch;
    let scratch = dirs.session.join("scratch.img");
    make_scratch_disk(&tools.mkfs_ext4, &scratch, spec.scratch_bytes)?;
    timings.mark("scratch_ready");

    let vhost_socket = dirs.runtime.join("vsock-vhost.sock");
    let uds = dirs.runtime.join("vsock");
    let listener_path = PathBuf::from(format!("{}_{CONTROL_PORT}", uds.display()));
    let listener =
        UnixListener::bind(&listener_path).with_context(|| format!("listening on {}", listener_path.display()))?;
    let vsock = process::spawn(
        "vhost-device-vsock",
        &tools.vhost_vsock,
        &vmm::vhost_vsock_args(&vhost_socket, &uds),
        &dirs.session.join("vsock.log"),
    )?;
    helpers.push(vsock);

    let plan = shares::plan(spec, home, &dirs.session)?;
    let started = shares::start(&plan, &tools.virtiofsd, &dirs.runtime, &dirs.session, helpers).await?;
    // Started before virtiofsd; by now it is almost always listening.
    helpers[0].wait_for_socket(&vhost_socket, Duration::from_secs(10)).await?;
    timings.mark("sidecars_ready");

    let qemu_spec = QemuSpec {
        accel: spec.accel.accel,
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        kernel: images.kernel.clone(),
        initramfs: images.initramfs.clone(),
        root_image: images.root.clone(),
        scratch_disk: scratch,
        console_log: dirs.session.join("console.log"),
        vsock_socket: vhost_socket,
        fs: started.devices,
        tsc_khz: spec.tsc_khz,
    };
    // The guest's network: every name and connection comes to this proxy over vsock.
    let net_path = PathBuf::from(format!("{}_{NET_PORT}", uds.display()));
    let net_listener = UnixListener::bind(&net_path).with_context(|| format!("listening on {}", net_path.display()))?;
    let policy = Arc::new(RwLock::new(spec.network.clone()));
    let proxy = Proxy::new(
        policy.clone(),
        spec.network_hosts.clone(),
        spec.network_resolver.clone(),
        &dirs.session.join(NET_LOG),
        spec.network_limits.clone(),
    );
    let proxy = Arc::new(proxy);
    tokio::spawn(proxy.clone().serve(net_listener));
    helpers.push(process::spawn("qemu", &tools.qemu, &vmm::qemu_args(&qemu_spec), &dirs.session.join("qemu.log"))?);
    timings.mark("qemu_spawned");
    let qemu = helpers.last_mut().expect("qemu was just added");
    let crash_report = |what: &str| crash_report(dirs, what);

    // The agent connects as soon as its kernel is up.
    let stream = tokio::select! {
        r = listener.accept() => r.context("accepting the guest agent's connection")?.0,
        s = qemu.child.wait() => bail!(crash_report(&format!("the VM stopped before its agent started ({})", s?))),
        _ = tokio::time::sleep(BOOT_LIMIT) => bail!(crash_report("the guest agent did not connect within 3 minutes")),
    };
    timings.mark("agent_connected");

    let (mut rd, mut wr) = stream.into_split();
    let mut frames = FrameBuf::default();
    // Handshake and setup; the guest is not trusted to answer in time.
    let hello = tokio::time::timeout(BOOT_LIMIT, next_guest_msg(&mut rd, &mut frames))
        .await
        .context("waiting for the agent's hello")??;
    match hello {
        Some(GuestMsg::Hello { version, .. }) if version == faize_protocol::PROTOCOL_VERSION => {}
        Some(GuestMsg::Hello { version, agent_version }) => bail!(
            "the guest agent {agent_version} speaks protocol {version}, this faize speaks {}: rebuild both with ./setup.sh",
            faize_protocol::PROTOCOL_VERSION
        ),
        other => bail!(crash_report(&format!("expected the agent's hello, got {other:?}"))),
    }
    let project = spec.project.to_str().expect("validated as UTF-8").to_string();
    let setup = Setup {
        version: faize_protocol::PROTOCOL_VERSION,
        clock_unix_nanos: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
        hostname: "faize".into(),
        shares: started.shares,
        binds: started.binds,
        writes: plan.writes,
        project: project.clone(),
    };
    baseline.complete().await?;
    wr.write_all(&encode_frame(&HostMsg::Setup(setup))).await?;
    loop {
        match tokio::time::timeout(BOOT_LIMIT, next_guest_msg(&mut rd, &mut frames))
            .await
            .context("waiting for the guest to get ready")??
        {
            Some(GuestMsg::Ready) => break,
            // Warnings from the agent's set-up (e.g. no network).
            Some(GuestMsg::Stderr(d)) => terminals.output(Frame::ErrData(d)).await,
            Some(GuestMsg::Fatal(m)) => bail!(crash_report(&format!("the guest could not start: {m}"))),
            other => bail!(crash_report(&format!("expected ready from the agent, got {other:?}"))),
        }
    }
    timings.mark("guest_ready");

    let tty = spec.interactive.then(|| terminal.tty.unwrap_or(WinSize { rows: 24, cols: 80 }));
    let exec = program(spec, spec.command.clone(), tty, &terminal.term_env);
    wr.write_all(&encode_frame(&HostMsg::Exec(exec))).await?;
    timings.mark("exec_sent");
    Ok(Booted { rd, wr, frames, guest_listener: listener, policy, proxy })
}

/// The session's connection to its guest once the program runs.
struct Booted {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    frames: FrameBuf,
    /// Stays open for `faize exec` channels.
    guest_listener: UnixListener,
    policy: Arc<RwLock<faize_net::Policy>>,
    proxy: Arc<Proxy>,
}

/// A program to run in the session: as the agent's user, in the project, with the session's
/// environment and the user's terminal type.
fn program(spec: &SessionSpec, argv: Vec<String>, tty: Option<WinSize>, term_env: &[(String, String)]) -> Exec {
    let mut env = vec![("FAIZE_SESSION".to_string(), spec.id.clone()), ("BROWSER".into(), "xdg-open".into())];
    env.extend(shares::toolchain_env());
    if tty.is_some() {
        env.extend(term_env.iter().filter(|(k, _)| k == "TERM" || k == "COLORTERM").cloned());
    }
    let cwd = spec.project.to_str().expect("validated as UTF-8").to_string();
    Exec { argv, env, cwd, tty }
}

/// An error message with the tails of QEMU's and the guest console's logs.
fn crash_report(dirs: &Dirs, what: &str) -> String {
    format!(
        "{what}\nQEMU said:\n{}\nthe guest console said:\n{}",
        tail(&dirs.session.join("qemu.log"), 10),
        tail(&dirs.session.join("console.log"), 20)
    )
}

/// The signals that stop a session. They are caught for the session's whole life, so none of
/// them kills faize before it has cleaned up.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM, SIGHUP or SIGINT.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
            _ = self.int.recv() => libc::SIGINT,
        }
    }
}

/// What the relay waits for besides the guest's frames.
enum Event {
    /// A frame from terminal `id`, or `None` when it went away.
    FromTerminal(u64, Option<Frame<ToSupervisor>>),
    /// A new connection on the attach socket, with its first request.
    Connected(UnixStream, ToSupervisor),
    /// The guest opened the exec channel for this token.
    ExecChannel(u64, UnixStream, FrameBuf),
    /// The guest did not open the channel of this exec (or callback) in time.
    ChannelExpired(u64),
    /// `faize kill`: stop the program with this grace.
    Stop(Duration),
    /// A login callback accepted on the host for the guest's `127.0.0.1:port`.
    Inbound(tokio::net::TcpStream, u16),
}

/// How much of the program's latest output is kept for the next terminal that attaches.
const RECENT_OUTPUT: usize = 64 * 1024;
/// A terminal that takes longer than this to accept output is detached (the session goes on).
const SLOW_TERMINAL: Duration = Duration::from_secs(30);

/// The terminal attached to the session's program (at most one), the program's recent output,
/// and the events of every connection.
pub struct Terminals {
    attached: Option<Attached>,
    next_id: u64,
    recent: std::collections::VecDeque<u8>,
    events: mpsc::Sender<Event>,
    inbox: mpsc::Receiver<Event>,
}

struct Attached {
    id: u64,
    out: mpsc::Sender<Frame<ToTerminal>>,
    writer: tokio::task::JoinHandle<()>,
}

impl Terminals {
    fn new(first: Option<UnixStream>) -> Self {
        let (events, inbox) = mpsc::channel(256);
        let mut t = Self { attached: None, next_id: 0, recent: Default::default(), events, inbox };
        if let Some(conn) = first {
            t.attach(conn);
        }
        t
    }

    /// Makes `conn` the attached terminal: its frames come in as events, ours go out in order.
    fn attach(&mut self, conn: UnixStream) {
        self.next_id += 1;
        let id = self.next_id;
        let (mut rd, wr) = conn.into_split();
        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                let frame = attach::read::<ToSupervisor>(&mut rd).await.ok().flatten();
                let end = frame.is_none();
                if events.send(Event::FromTerminal(id, frame)).await.is_err() || end {
                    break;
                }
            }
        });
        let (out, writer) = spawn_writer(wr);
        self.attached = Some(Attached { id, out, writer });
    }

    /// The program's output (and faize's notices) to the attached terminal, if any.
    async fn output(&mut self, frame: Frame<ToTerminal>) {
        if let Frame::Data(d) | Frame::ErrData(d) = &frame {
            self.recent.extend(d);
            let extra = self.recent.len().saturating_sub(RECENT_OUTPUT);
            self.recent.drain(..extra);
        }
        self.send(frame).await;
    }

    async fn send(&mut self, frame: Frame<ToTerminal>) {
        let Some(a) = &self.attached else { return };
        if !matches!(tokio::time::timeout(SLOW_TERMINAL, a.out.send(frame)).await, Ok(Ok(()))) {
            tracing::warn!("the attached terminal stopped reading; detached it");
            self.attached = None;
        }
    }

    async fn running(&mut self, id: &str) {
        self.send(Frame::Control(ToTerminal::Running { id: id.to_string() })).await;
    }

    /// Tells the attached terminal how the session ended and waits (briefly) until it has it.
    async fn end(&mut self, code: i32, report: &str) {
        self.send(Frame::Control(ToTerminal::Ended { code, report: report.to_string() })).await;
        if let Some(a) = self.attached.take() {
            drop(a.out);
            let _ = tokio::time::timeout(Duration::from_secs(2), a.writer).await;
        }
    }
}

/// A task writing frames to a terminal connection in order; it ends when the sender is dropped.
fn spawn_writer(mut wr: OwnedWriteHalf) -> (mpsc::Sender<Frame<ToTerminal>>, tokio::task::JoinHandle<()>) {
    let (out, mut queue) = mpsc::channel::<Frame<ToTerminal>>(256);
    let writer = tokio::spawn(async move {
        while let Some(f) = queue.recv().await {
            if attach::write(&mut wr, &f).await.is_err() {
                break;
            }
        }
    });
    (out, writer)
}

/// Reads the next frame from the guest; `None` when it closed the connection.
async fn next_guest_msg(rd: &mut (impl AsyncReadExt + Unpin), frames: &mut FrameBuf) -> Result<Option<GuestMsg>> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(m) = frames.next_frame::<GuestMsg>().context("garbled message from the guest agent")? {
            return Ok(Some(m));
        }
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        frames.extend(&buf[..n]);
    }
}

/// Accepts the guest's exec channels: a connection counts only if its first frame, within 10 s,
/// names an exec token (the relay checks the token).
fn serve_exec_channels(listener: UnixListener, events: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let mut frames = FrameBuf::default();
                let first = tokio::time::timeout(Duration::from_secs(10), next_guest_msg(&mut s, &mut frames)).await;
                if let Ok(Ok(Some(GuestMsg::ExecChannel { token }))) = first {
                    let _ = events.send(Event::ExecChannel(token, s, frames)).await;
                }
            });
        }
    });
}

/// Accepts terminals on the attach socket; each must send its request within 10 s.
fn serve_attach(listener: UnixListener, events: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let first = tokio::time::timeout(Duration::from_secs(10), attach::read::<ToSupervisor>(&mut s)).await;
                if let Ok(Ok(Some(Frame::Control(request)))) = first {
                    let _ = events.send(Event::Connected(s, request)).await;
                }
            });
        }
    });
}

/// Moves bytes between the guest's program and the attached terminal until the program exits;
/// serves attaches, execs and stops meanwhile.
async fn relay(
    launch: &Parts<'_>,
    terminals: &mut Terminals,
    booted: Booted,
    helpers: &mut [Helper],
    timings: &mut Timings,
    signals: &mut Signals,
) -> Result<Ending> {
    let (spec, dirs) = (launch.spec, launch.dirs);
    let Booted { mut rd, wr, mut frames, guest_listener, policy, proxy } = booted;
    // Writes to the guest go through one task so a slow guest never stalls this loop.
    let (to_guest, mut outbox) = mpsc::channel::<HostMsg>(64);
    let mut wr = wr;
    tokio::spawn(async move {
        while let Some(m) = outbox.recv().await {
            if wr.write_all(&encode_frame(&m)).await.is_err() {
                break;
            }
        }
    });
    serve_exec_channels(guest_listener, terminals.events.clone());
    let attach_path = attach::socket_path(&dirs.runtime);
    let attach_listener =
        UnixListener::bind(&attach_path).with_context(|| format!("listening on {}", attach_path.display()))?;
    serve_attach(attach_listener, terminals.events.clone());
    // `faize network allow|deny ID RULE` and `faize kill ID` reach the running session here.
    let control =
        UnixListener::bind(dirs.runtime.join(crate::control::SOCKET)).context("creating the control socket")?;
    let stops = terminals.events.clone();
    let on_stop = move |grace: Duration| {
        let _ = stops.try_send(Event::Stop(grace));
    };
    tokio::spawn(crate::control::serve(control, policy, proxy, Box::new(on_stop)));

    let host_requests = HostRequests {
        log: dirs.session.join(REQUESTS_LOG),
        spec,
        events: terminals.events.clone(),
        callback: Default::default(),
    };
    let mut stdin_open = true;
    // Between a terminal's ClipboardBegin and ClipboardEnd.
    let mut clipboard_open = false;
    let mut pending_execs: std::collections::HashMap<u64, (UnixStream, Exec)> = Default::default();
    let mut pending_inbound: std::collections::HashMap<u64, tokio::net::TcpStream> = Default::default();
    let mut buf = vec![0u8; 128 * 1024];
    let mut sidecar_check = tokio::time::interval(Duration::from_millis(500));
    let forever = Duration::from_secs(100 * 365 * 86400);
    let timeout = tokio::time::sleep(spec.timeout.unwrap_or(forever));
    tokio::pin!(timeout);
    let mut timed_out = false;
    // Set once a stop was asked for: past it, the VM is stopped without waiting for the program.
    let hard_stop = tokio::time::sleep(forever);
    tokio::pin!(hard_stop);
    let mut stopped: Option<String> = None;
    let (qemu, sidecars) = helpers.split_last_mut().expect("boot started QEMU");

    loop {
        // Every complete frame already received comes first.
        while let Some(msg) = frames.next_frame::<GuestMsg>().context("garbled message from the guest agent")? {
            match msg {
                GuestMsg::Stdout(d) => terminals.output(Frame::Data(d)).await,
                GuestMsg::Stderr(d) => terminals.output(Frame::ErrData(d)).await,
                GuestMsg::Exit(status) => {
                    timings.mark("exit_received");
                    return Ok(match (timed_out, stopped) {
                        (true, _) => Ending::TimedOut,
                        (false, Some(why)) => Ending::Stopped(status, why),
                        (false, None) => Ending::Exited(status),
                    });
                }
                GuestMsg::OpenUrl { url } => {
                    if let Some(notice) = host_requests.open_url(&url) {
                        terminals.output(Frame::ErrData(notice.into_bytes())).await;
                    }
                }
                GuestMsg::Copy { mime, data } => host_requests.copy(mime, data),
                GuestMsg::Fatal(m) => bail!("the guest agent failed: {m}"),
                other => bail!("unexpected message from the guest agent: {other:?}"),
            }
        }
        // The first stop asked for wins: the program gets SIGTERM, and past the grace (and 5 s
        // for the agent to report) the VM is stopped without waiting.
        let stop = |stopped: &mut Option<String>,
                    grace: Duration,
                    why: String,
                    hard_stop: std::pin::Pin<&mut tokio::time::Sleep>| {
            if stopped.is_none() {
                *stopped = Some(why);
                let _ = to_guest.try_send(HostMsg::Shutdown { grace_ms: grace.as_millis() as u32 });
                hard_stop.reset(tokio::time::Instant::now() + grace + Duration::from_secs(5));
            }
        };
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n.context("reading from the guest agent")?;
                if n == 0 {
                    // Usually because the VM or the vsock sidecar died: say which, once known.
                    if let Ok(s) = tokio::time::timeout(Duration::from_secs(2), qemu.child.wait()).await {
                        bail!("the VM stopped unexpectedly ({})", s?);
                    }
                    check_sidecars(sidecars)?;
                    bail!("the guest agent closed the connection before reporting an exit status");
                }
                frames.extend(&buf[..n]);
            }
            Some(event) = terminals.inbox.recv() => match event {
                Event::FromTerminal(id, frame) if terminals.attached.as_ref().is_some_and(|a| a.id == id) => match frame {
                    Some(Frame::Data(d)) => { let _ = to_guest.send(HostMsg::Stdin(d)).await; }
                    Some(Frame::Control(ToSupervisor::StdinEof)) => {
                        stdin_open = false;
                        let _ = to_guest.send(HostMsg::StdinEof).await;
                    }
                    Some(Frame::Control(ToSupervisor::Resize(size))) => { let _ = to_guest.send(HostMsg::Resize(size.into())).await; }
                    Some(Frame::Control(ToSupervisor::Signal { signal })) => { let _ = to_guest.send(HostMsg::Signal(signal)).await; }
                    Some(Frame::Control(ToSupervisor::ClipboardBegin)) => {
                        clipboard_open = true;
                        let _ = to_guest.send(HostMsg::ClipboardClear).await;
                    }
                    Some(Frame::Clip(mime, data)) => {
                        for chunk in data.chunks(CLIPBOARD_CHUNK) {
                            let _ = to_guest.send(HostMsg::ClipboardData { mime: mime.clone(), chunk: chunk.to_vec() }).await;
                        }
                    }
                    Some(Frame::Control(ToSupervisor::ClipboardEnd)) => {
                        clipboard_open = false;
                        let _ = to_guest.send(HostMsg::ClipboardCommit).await;
                    }
                    Some(Frame::Control(ToSupervisor::Note { text })) => eprintln!("{text}"),
                    Some(Frame::Control(ToSupervisor::Stop { grace_ms })) => {
                        stop(&mut stopped, Duration::from_millis(grace_ms.into()), "stopped from its terminal".into(), hard_stop.as_mut());
                    }
                    // Detached, or the terminal went away (closed, SIGHUP): the session goes on.
                    None | Some(Frame::Control(ToSupervisor::Detach)) => {
                        terminals.attached = None;
                        // A clipboard cut short: the guest's is emptied, and its shims stop waiting.
                        if std::mem::take(&mut clipboard_open) {
                            let _ = to_guest.send(HostMsg::ClipboardClear).await;
                            let _ = to_guest.send(HostMsg::ClipboardCommit).await;
                        }
                        if !spec.interactive && stdin_open {
                            stdin_open = false;
                            let _ = to_guest.send(HostMsg::StdinEof).await;
                        }
                    }
                    Some(_) => {}
                },
                Event::FromTerminal(..) => {}
                Event::Connected(conn, ToSupervisor::Attach { tty }) => {
                    if terminals.attached.is_some() {
                        refuse(conn, format!("session {} already has a terminal attached: detach it with ~. first", spec.id));
                    } else {
                        terminals.attach(conn);
                        terminals.running(&spec.id).await;
                        // What the program showed last, then a redraw at the new terminal's size
                        // (a size change is what makes full-screen programs repaint).
                        let recent: Vec<u8> = terminals.recent.iter().copied().collect();
                        terminals.send(Frame::Data(recent)).await;
                        if let (true, Some(size)) = (spec.interactive, tty) {
                            let nudge = WinSize { rows: size.rows.saturating_sub(1).max(1), cols: size.cols };
                            let _ = to_guest.send(HostMsg::Resize(nudge)).await;
                            let _ = to_guest.send(HostMsg::Resize(size.into())).await;
                        }
                    }
                }
                Event::Connected(conn, ToSupervisor::Exec { argv, tty, term_env }) => {
                    if argv.is_empty() {
                        refuse(conn, "faize exec needs a command".into());
                    } else {
                        let token = random_token();
                        pending_execs.insert(token, (conn, program(spec, argv, tty.map(Into::into), &term_env)));
                        let _ = to_guest.send(HostMsg::OpenExec { token }).await;
                        expire(token, &terminals.events);
                    }
                }
                Event::Inbound(conn, port) => {
                    let token = random_token();
                    pending_inbound.insert(token, conn);
                    let _ = to_guest.send(HostMsg::OpenInbound { token, port }).await;
                    expire(token, &terminals.events);
                }
                Event::Connected(conn, other) => refuse(conn, format!("unexpected first request {other:?}")),
                Event::ExecChannel(token, guest, rest) => {
                    if let Some((conn, exec)) = pending_execs.remove(&token) {
                        tokio::spawn(run_exec(conn, guest, rest, exec));
                    } else if let Some(conn) = pending_inbound.remove(&token) {
                        tokio::spawn(carry_inbound(guest, rest, conn));
                    }
                }
                Event::ChannelExpired(token) => {
                    if let Some((conn, _)) = pending_execs.remove(&token) {
                        refuse(conn, "the guest did not start the command within 10 s".into());
                    }
                    // An unanswered callback connection is simply closed.
                    pending_inbound.remove(&token);
                }
                Event::Stop(grace) => stop(&mut stopped, grace, "stopped by faize kill".into(), hard_stop.as_mut()),
            },
            sig = signals.next() => {
                // The supervisor has no terminal: SIGHUP means nothing to it.
                if sig != libc::SIGHUP {
                    stop(&mut stopped, STOP_GRACE, format!("stopped by signal {sig}"), hard_stop.as_mut());
                }
            }
            _ = &mut timeout, if !timed_out && spec.timeout.is_some() => {
                timed_out = true;
                let t = crate::units::format_duration(spec.timeout.unwrap_or_default());
                let notice = format!("\r\nfaize: session {} timed out after {t}; stopping it\r\n", spec.id);
                terminals.output(Frame::ErrData(notice.into_bytes())).await;
                stop(&mut stopped, STOP_GRACE, format!("timed out after {t}"), hard_stop.as_mut());
            }
            _ = &mut hard_stop, if stopped.is_some() => {
                let killed = ExitStatus { code: 128 + libc::SIGKILL, signal: libc::SIGKILL };
                return Ok(match (timed_out, stopped) {
                    (true, _) => Ending::TimedOut,
                    (false, why) => Ending::Stopped(killed, why.unwrap_or_default()),
                });
            }
            s = qemu.child.wait() => bail!("the VM stopped unexpectedly ({})", s?),
            _ = sidecar_check.tick() => check_sidecars(sidecars)?,
        }
    }
}

/// Fails, with the tail of its output, if a sidecar has ended.
fn check_sidecars(sidecars: &mut [crate::process::Helper]) -> Result<()> {
    for h in sidecars {
        if let Some(status) = h.child.try_wait()? {
            bail!("{} stopped unexpectedly ({status}); it said:\n{}", h.name, tail(&h.log, 10));
        }
    }
    Ok(())
}

/// What the guest asks of the host besides its program's I/O: opening URLs (with their login
/// callbacks) and copies to the clipboard. Each request and what was done is logged in the
/// session folder.
struct HostRequests<'a> {
    log: PathBuf,
    spec: &'a SessionSpec,
    events: mpsc::Sender<Event>,
    /// The login callback being awaited: one flow at a time, a newer login replaces it.
    callback: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

/// Appends one entry, with the time, to the session's requests log.
fn record_request(log: &Path, mut entry: serde_json::Value) {
    use std::io::Write;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    entry["time"] = ((now * 1000.0).round() / 1000.0).into();
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{entry}");
    }
}

impl HostRequests<'_> {
    /// Opens an allowed URL in the user's browser; returns what to show the user otherwise.
    fn open_url(&self, url: &str) -> Option<String> {
        use crate::clipboard::{decide_url, open_in_browser, UrlDecision};
        let shown = crate::clipboard::printable(url);
        let mut notice = None;
        let (decision, why) = match decide_url(url, &self.spec.open_urls) {
            UrlDecision::Open => {
                if let Err(e) = self.await_callback(url) {
                    record_request(
                        &self.log,
                        serde_json::json!({"event": "callback", "decision": "not awaited", "reason": e}),
                    );
                    notice = Some(format!("\r\nfaize: the login's callback will not reach the VM: {e}\r\n"));
                }
                match open_in_browser(url) {
                    Ok(()) => ("opened", None),
                    Err(e) => ("shown", Some(e)),
                }
            }
            UrlDecision::Show(why) => ("shown", Some(why)),
        };
        record_request(
            &self.log,
            serde_json::json!({"event": "open-url", "url": url, "decision": decision, "reason": why}),
        );
        if let Some(why) = why {
            let text = format!("\r\nfaize: the VM asks to open {shown}\r\nfaize: not opened ({why}); copy it into your browser if you trust it\r\n");
            notice = Some(notice.unwrap_or_default() + &text);
        }
        notice
    }

    /// When `url` is a login whose `redirect_uri` is on the loopback, listens on the host's side
    /// of that port for its one callback, which then goes to the same port in the guest.
    fn await_callback(&self, url: &str) -> Result<(), String> {
        let Some(target) = crate::callback::target(url) else { return Ok(()) };
        let mut current = self.callback.lock().expect("callback lock");
        // A login started again (the first browser tab closed, say): the newer flow wins.
        if let Some(older) = current.take().filter(|t| !t.is_finished()) {
            older.abort();
            record_request(
                &self.log,
                serde_json::json!({"event": "callback", "decision": "closed", "reason": "a newer login replaced it"}),
            );
        }
        let limit = self.spec.callback_limit;
        let listeners = crate::callback::listen(target.port)?;
        let port = target.port;
        record_request(
            &self.log,
            serde_json::json!({"event": "callback", "port": port, "path": target.path, "decision": "listening", "limit_s": limit.as_secs()}),
        );
        let (log, events) = (self.log.clone(), self.events.clone());
        let task = tokio::spawn(async move {
            match crate::callback::accept(listeners, &target.path, limit).await {
                Ok(conn) => {
                    record_request(
                        &log,
                        serde_json::json!({"event": "callback", "port": port, "decision": "passed to the guest"}),
                    );
                    let _ = events.send(Event::Inbound(conn, port)).await;
                }
                Err(e) => record_request(
                    &log,
                    serde_json::json!({"event": "callback", "port": port, "decision": "closed", "reason": e}),
                ),
            }
        });
        *current = Some(task.abort_handle());
        Ok(())
    }

    /// A copy made in the guest: to the host's clipboard only with `clipboard.copy_to_host`.
    fn copy(&self, mime: String, data: Vec<u8>) {
        let allowed = self.spec.copy_to_host;
        record_request(
            &self.log,
            serde_json::json!({"event": "copy", "mime": mime, "bytes": data.len(), "decision": if allowed { "copied" } else { "ignored (clipboard.copy_to_host is off)" }}),
        );
        if allowed {
            tokio::spawn(async move {
                if let Err(e) = crate::clipboard::write(&mime, data).await {
                    eprintln!("copying to the host's clipboard: {e}");
                }
            });
        }
    }
}

/// Refuses a terminal's request with a reason, then closes the connection.
fn refuse(conn: UnixStream, reason: String) {
    tokio::spawn(async move {
        let mut conn = conn;
        let _ = attach::write(&mut conn, &Frame::Control(ToTerminal::Refused { reason })).await;
    });
}

/// Ends a pending exec or callback whose channel the guest has not opened within 10 s.
fn expire(token: u64, events: &mpsc::Sender<Event>) {
    let events = events.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = events.send(Event::ChannelExpired(token)).await;
    });
}

/// A login callback accepted on the host, carried into the guest over its own channel.
/// Uses the network proxy's relay, as the guest's outgoing connections do.
async fn carry_inbound(guest: UnixStream, mut frames: FrameBuf, mut conn: tokio::net::TcpStream) {
    let early = frames.take_rest();
    if early.is_empty() || conn.write_all(&early).await.is_ok() {
        faize_net::splice::copy_bidirectional(&guest, &conn).await;
    }
}

fn random_token() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the kernel's random source");
    u64::from_ne_bytes(b)
}

/// One `faize exec`: relays between its terminal and its own channel to the guest until the
/// program exits. A terminal that goes away stops the program (SIGTERM, then SIGKILL after 2 s).
async fn run_exec(conn: UnixStream, guest: UnixStream, mut frames: FrameBuf, exec: Exec) {
    let (mut grd, mut gwr) = guest.into_split();
    let (mut crd, cwr) = conn.into_split();
    let (out, writer) = spawn_writer(cwr);
    let (input_tx, mut input) = mpsc::channel::<Option<Frame<ToSupervisor>>>(64);
    tokio::spawn(async move {
        loop {
            let frame = attach::read::<ToSupervisor>(&mut crd).await.ok().flatten();
            let end = frame.is_none();
            if input_tx.send(frame).await.is_err() || end {
                break;
            }
        }
    });
    if gwr.write_all(&encode_frame(&HostMsg::Exec(exec))).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut terminal_open = true;
    let code = 'relay: loop {
        loop {
            match frames.next_frame::<GuestMsg>() {
                Ok(Some(GuestMsg::Stdout(d))) => drop(out.send(Frame::Data(d)).await),
                Ok(Some(GuestMsg::Stderr(d))) => drop(out.send(Frame::ErrData(d)).await),
                Ok(Some(GuestMsg::Exit(s))) => break 'relay s.code,
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => break 'relay exit_code::FAIZE_ERROR,
            }
        }
        tokio::select! {
            n = grd.read(&mut buf) => match n {
                Ok(n) if n > 0 => frames.extend(&buf[..n]),
                _ => break exit_code::FAIZE_ERROR,
            },
            f = input.recv(), if terminal_open => {
                let msg = match f.flatten() {
                    Some(Frame::Data(d)) => Some(HostMsg::Stdin(d)),
                    Some(Frame::Control(ToSupervisor::StdinEof)) => Some(HostMsg::StdinEof),
                    Some(Frame::Control(ToSupervisor::Resize(s))) => Some(HostMsg::Resize(s.into())),
                    Some(Frame::Control(ToSupervisor::Signal { signal })) => Some(HostMsg::Signal(signal)),
                    Some(_) => None,
                    None => {
                        terminal_open = false;
                        Some(HostMsg::Shutdown { grace_ms: 2000 })
                    }
                };
                if let Some(m) = msg {
                    if gwr.write_all(&encode_frame(&m)).await.is_err() {
                        break exit_code::FAIZE_ERROR;
                    }
                }
            }
        }
    };
    let report = if code == exit_code::FAIZE_ERROR { "faize: the session ended while the command ran\n" } else { "" };
    let _ = out.send(Frame::Control(ToTerminal::Ended { code, report: report.into() })).await;
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Creates the sparse scratch disk with an empty ext4 filesystem (no journal: it is thrown away).
fn make_scratch_disk(mkfs: &Path, path: &Path, size: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size).with_context(|| format!("sizing {}", path.display()))?;
    drop(f);
    let out = std::process::Command::new(mkfs)
        .args(["-q", "-F", "-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=1,nodiscard", "-m", "0"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", mkfs.display()))?;
    if !out.status.success() {
        bail!("mkfs.ext4 failed on the scratch disk: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
