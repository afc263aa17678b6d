//! One session from start to end: the session folder and scratch disk, the sidecars and QEMU,
//! the conversation with the guest agent, the user's terminal, the timeout, and the clean-up.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use faize_net::proxy::Proxy;
use faize_protocol::net::NET_PORT;
use faize_protocol::{encode_frame, Exec, ExitStatus, FrameBuf, GuestMsg, HostMsg, Setup, CONTROL_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::agent_config;
use crate::changes::{self, ShareChanges, Snapshot};
use crate::home::{find_program, vars, FaizeHome};
use crate::mounts::MountKind;
use crate::process::{self, tail, Helper};
use crate::shares;
use crate::spec::{credentials_dir, SessionSpec};
use crate::terminal::{window_size, EscapeFilter, RawMode};
use crate::vmm::{self, QemuSpec};

/// The session's network audit log, in its folder.
pub const NET_LOG: &str = "net.jsonl";

/// Exit codes of faize itself (a program's own exit code is passed through unchanged).
pub mod exit_code {
    /// The session hit its timeout.
    pub const TIMEOUT: i32 = 124;
    /// faize failed (bad input, missing prerequisite, VM failure).
    pub const FAIZE_ERROR: i32 = 125;
}

/// How long the program gets between SIGTERM and SIGKILL when the session is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The same after `~.`, where the user wants out now.
const ESCAPE_GRACE: Duration = Duration::from_secs(2);
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
#[derive(Debug, Clone)]
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
    fn report(&self) {
        if std::env::var_os("FAIZE_TIMINGS").is_some() {
            let fields: Vec<String> =
                self.marks.iter().map(|(k, d)| format!("\"{k}\":{:.1}", d.as_secs_f64() * 1000.0)).collect();
            eprintln!("faize-timings: {{{}}}", fields.join(","));
        }
    }
}

/// The session's folders: logs and scratch disk under `~/.faize/sessions/<id>`, sockets under a
/// short private runtime folder (Unix socket paths are limited to 108 bytes).
struct Dirs {
    session: PathBuf,
    runtime: PathBuf,
}

impl Dirs {
    fn create(home: &FaizeHome, id: &str) -> Result<Self> {
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

/// Runs a session to its end and returns faize's exit code.
pub async fn run(spec: &SessionSpec, home: &FaizeHome, tools: &Tools, images: &Images) -> Result<i32> {
    let mut timings = Timings { start: Instant::now(), marks: Vec::new() };
    let dirs = Dirs::create(home, &spec.id)?;
    let mut helpers: Vec<Helper> = Vec::new();
    let mut signals = Signals::new()?;
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
    let launch = Launch { spec, tools, images, dirs: &dirs, home };
    let result = boot_and_run(&launch, &mut helpers, &mut timings, &mut signals, &mut baseline).await;
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
    save_agent_credentials(spec, home, &dirs.session);
    if let Baseline::Taken(before, took) = baseline {
        timings.marks.push(("baseline_walk", took));
        let changes: Vec<ShareChanges> =
            roots.iter().zip(&before).zip(&after).map(|((root, b), a)| changes::diff(root, b, a)).collect();
        eprint!("{}", changes::render(&changes).lines().map(|l| format!("faize: {l}\n")).collect::<String>());
        if let Err(e) = changes::save(&dirs.session, &spec.id, &changes) {
            eprintln!("faize: could not save the change summary: {e:#}");
        }
        timings.marks.push(("diff_walk", walk_started.elapsed()));
        timings.mark("changes_listed");
    }
    report_denied(&dirs.session.join(NET_LOG));
    let _ = std::fs::remove_dir_all(&dirs.runtime);
    tidy_session_dir(&dirs.session, !matches!(result, Ok(Ending::Exited(_))));
    // QEMU got SIGKILL above and can no longer run; the kernel needs ~40 ms to release 4 GiB of
    // guest memory mappings. Reap it if it is already gone; otherwise do not make the user wait:
    // the kernel finishes the release and init reaps it.
    if let Some(mut qemu) = qemu {
        let _ = tokio::time::timeout(Duration::from_millis(2), qemu.stop()).await;
    }
    timings.mark("done");
    timings.report();
    match result {
        Ok(Ending::Exited(s)) => Ok(s.code),
        Ok(Ending::TimedOut) => Ok(exit_code::TIMEOUT),
        Err(e) => Err(e.context(format!("session {} failed; its logs are in {}", spec.id, dirs.session.display()))),
    }
}

/// Lists the names the session was refused, each with the rule that would allow it.
fn report_denied(log: &Path) {
    let Ok(entries) = faize_net::proxy::read_log(log) else { return };
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
    for d in denied.iter().take(20) {
        eprintln!("faize: network: denied {d} (to allow it, add `- {d}` under networks: in the config, or -n {d})");
    }
    if denied.len() > 20 {
        eprintln!("faize: network: {} more denied; see {}", denied.len() - 20, log.display());
    }
}

/// Empties the session folder at the end: a normal end keeps only the change summary (for
/// `faize diff`); after a failure or a timeout, the logs stay too.
fn tidy_session_dir(dir: &Path, keep_logs: bool) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let log = name.to_string_lossy().ends_with(".log");
        if name != changes::FILE && name != NET_LOG && !(keep_logs && log) {
            let p = entry.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
    let _ = std::fs::remove_dir(dir); // only if empty
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
/// configuration.
fn save_agent_credentials(spec: &SessionSpec, home: &FaizeHome, session: &Path) {
    let staged = session.join(shares::AGENT_CONFIG_DIR);
    if !staged.exists() {
        return;
    }
    if spec.persist_credentials {
        let store = agent_config::stored_credentials(&credentials_dir(&home.root));
        match agent_config::save_credentials(&staged, &store) {
            Ok(true) => eprintln!("faize: saved the agent's credentials to {}", store.display()),
            Ok(false) => {}
            Err(e) => eprintln!("faize: could not save the agent's credentials: {e:#}"),
        }
    }
    let _ = std::fs::remove_dir_all(&staged);
}

enum Ending {
    Exited(ExitStatus),
    TimedOut,
}

impl Timings {
    fn start_system(&self) -> SystemTime {
        SystemTime::now() - self.start.elapsed()
    }
}

/// What a session is started from.
struct Launch<'a> {
    spec: &'a SessionSpec,
    tools: &'a Tools,
    images: &'a Images,
    dirs: &'a Dirs,
    home: &'a FaizeHome,
}

async fn boot_and_run(
    launch: &Launch<'_>,
    helpers: &mut Vec<Helper>,
    timings: &mut Timings,
    signals: &mut Signals,
    baseline: &mut Baseline,
) -> Result<Ending> {
    let (spec, dirs) = (launch.spec, launch.dirs);
    let (rd, wr, frames) = tokio::select! {
        r = boot(launch, helpers, timings, baseline) => r?,
        sig = signals.next() => bail!("stopped by signal {sig} while the VM was starting"),
    };
    let raw = if spec.interactive { Some(RawMode::enter()?) } else { None };
    let qemu = helpers.last_mut().expect("boot started QEMU");
    let ending = relay(spec, rd, wr, frames, qemu, timings, signals).await;
    drop(raw);
    ending.map_err(|e| anyhow::anyhow!(crash_report(dirs, &format!("{e:#}"))))
}

/// Everything up to the program's start: scratch disk, sidecars, QEMU, handshake, setup, Exec.
async fn boot(
    launch: &Launch<'_>,
    helpers: &mut Vec<Helper>,
    timings: &mut Timings,
    baseline: &mut Baseline,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, FrameBuf)> {
    let Launch { spec, tools, images, dirs, home } = *launch;
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
    // `faize network allow|deny ID RULE` reach the running session here.
    let control =
        UnixListener::bind(dirs.runtime.join(crate::control::SOCKET)).context("creating the control socket")?;
    tokio::spawn(crate::control::serve(control, policy, proxy));
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
    drop(listener);
    let _ = std::fs::remove_file(&listener_path);
    timings.mark("agent_connected");

    let (mut rd, mut wr) = stream.into_split();
    let mut frames = FrameBuf::default();
    let mut buf = vec![0u8; 128 * 1024];
    // Handshake and setup; the guest is not trusted to answer in time.
    let mut next_msg =
        async |rd: &mut tokio::net::unix::OwnedReadHalf, frames: &mut FrameBuf| -> Result<Option<GuestMsg>> {
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
        };
    let hello = tokio::time::timeout(BOOT_LIMIT, next_msg(&mut rd, &mut frames))
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
        match tokio::time::timeout(BOOT_LIMIT, next_msg(&mut rd, &mut frames))
            .await
            .context("waiting for the guest to get ready")??
        {
            Some(GuestMsg::Ready) => break,
            // Warnings from the agent's set-up (e.g. no network).
            Some(GuestMsg::Stderr(d)) => eprint!("{}", String::from_utf8_lossy(&d)),
            Some(GuestMsg::Fatal(m)) => bail!(crash_report(&format!("the guest could not start: {m}"))),
            other => bail!(crash_report(&format!("expected ready from the agent, got {other:?}"))),
        }
    }
    timings.mark("guest_ready");

    let tty_size = if spec.interactive {
        window_size(std::io::stdout().as_fd()).or(Some(faize_protocol::WinSize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let mut env = vec![("FAIZE_SESSION".to_string(), spec.id.clone())];
    env.extend(shares::toolchain_env());
    if spec.interactive {
        for key in ["TERM", "COLORTERM"] {
            if let Ok(v) = std::env::var(key) {
                env.push((key.into(), v));
            }
        }
    }
    let exec = Exec { argv: spec.command.clone(), env, cwd: project, tty: tty_size };
    wr.write_all(&encode_frame(&HostMsg::Exec(exec))).await?;
    timings.mark("exec_sent");
    Ok((rd, wr, frames))
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

/// What the main loop waits on besides the guest.
enum Input {
    Data(Vec<u8>),
    Eof,
}

/// Moves bytes between the user and the program until the program exits.
async fn relay(
    spec: &SessionSpec,
    mut rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    mut frames: FrameBuf,
    qemu: &mut Helper,
    timings: &mut Timings,
    signals: &mut Signals,
) -> Result<Ending> {
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
    let mut input = spawn_stdin_reader();
    let mut stdin_open = true;
    let mut winch = signal(SignalKind::window_change())?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut escape = EscapeFilter::default();
    let mut stdout_open = true;
    let mut buf = vec![0u8; 128 * 1024];

    let timeout = tokio::time::sleep(spec.timeout.unwrap_or(Duration::from_secs(100 * 365 * 86400)));
    tokio::pin!(timeout);
    let mut timed_out = false;
    // Set once a stop was asked for: past it, the VM is stopped without waiting for the program.
    let hard_stop = tokio::time::sleep(Duration::from_secs(100 * 365 * 86400));
    tokio::pin!(hard_stop);
    let mut stopping = false;
    let stop =
        |grace: Duration, hard_stop: std::pin::Pin<&mut tokio::time::Sleep>, to_guest: &mpsc::Sender<HostMsg>| {
            let _ = to_guest.try_send(HostMsg::Shutdown { grace_ms: grace.as_millis() as u32 });
            hard_stop.reset(tokio::time::Instant::now() + grace + Duration::from_secs(5));
        };

    loop {
        // Every complete frame already received comes first.
        while let Some(msg) = frames.next_frame::<GuestMsg>().context("garbled message from the guest agent")? {
            match msg {
                GuestMsg::Stdout(d) if stdout_open => {
                    if let Err(e) = write_flush(&mut stdout, &d).await {
                        if e.kind() != std::io::ErrorKind::BrokenPipe {
                            return Err(anyhow::Error::new(e).context("writing the program's output"));
                        }
                        // Our reader went away (`faize run ... | head`): the program gets SIGPIPE,
                        // as it would in a local pipeline.
                        stdout_open = false;
                        let _ = to_guest.send(HostMsg::Signal(libc::SIGPIPE)).await;
                    }
                }
                GuestMsg::Stdout(_) => {}
                GuestMsg::Stderr(d) => {
                    let _ = write_flush(&mut stderr, &d).await;
                }
                GuestMsg::Exit(status) => {
                    timings.mark("exit_received");
                    return Ok(if timed_out { Ending::TimedOut } else { Ending::Exited(status) });
                }
                GuestMsg::Fatal(m) => bail!("the guest agent failed: {m}"),
                other => bail!("unexpected message from the guest agent: {other:?}"),
            }
        }
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n.context("reading from the guest agent")?;
                if n == 0 {
                    bail!("the guest agent closed the connection before reporting an exit status");
                }
                frames.extend(&buf[..n]);
            }
            i = input.recv(), if stdin_open => match i {
                Some(Input::Data(d)) if spec.interactive => {
                    let f = escape.feed(&d);
                    if !f.data.is_empty() {
                        let _ = to_guest.send(HostMsg::Stdin(f.data)).await;
                    }
                    if f.end_session && !stopping {
                        stopping = true;
                        stop(ESCAPE_GRACE, hard_stop.as_mut(), &to_guest);
                    }
                }
                Some(Input::Data(d)) => { let _ = to_guest.send(HostMsg::Stdin(d)).await; }
                Some(Input::Eof) | None => {
                    stdin_open = false;
                    if !spec.interactive {
                        let _ = to_guest.send(HostMsg::StdinEof).await;
                    }
                }
            },
            _ = winch.recv(), if spec.interactive => {
                if let Some(size) = window_size(std::io::stdout().as_fd()) {
                    let _ = to_guest.send(HostMsg::Resize(size)).await;
                }
            }
            sig = signals.next() => {
                if sig == libc::SIGINT {
                    // Ctrl+C of a non-interactive run goes to the program, as in a local shell.
                    let _ = to_guest.send(HostMsg::Signal(libc::SIGINT)).await;
                } else if !stopping {
                    stopping = true;
                    stop(STOP_GRACE, hard_stop.as_mut(), &to_guest);
                }
            }
            _ = &mut timeout, if !timed_out && spec.timeout.is_some() => {
                timed_out = true;
                let t = crate::units::format_duration(spec.timeout.unwrap_or_default());
                let _ = stderr.write_all(format!("\r\nfaize: session {} timed out after {t}; stopping it\r\n", spec.id).as_bytes()).await;
                if !stopping {
                    stopping = true;
                    stop(STOP_GRACE, hard_stop.as_mut(), &to_guest);
                }
            }
            _ = &mut hard_stop, if stopping => {
                return Ok(if timed_out { Ending::TimedOut } else { Ending::Exited(ExitStatus { code: 128 + libc::SIGKILL, signal: libc::SIGKILL }) });
            }
            s = qemu.child.wait() => bail!("the VM stopped unexpectedly ({})", s?),
        }
    }
}

async fn write_flush(w: &mut (impl AsyncWriteExt + Unpin), data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// Reads the user's input on a plain thread (a blocking read must not hold up the runtime's
/// shutdown) and hands it to the session loop.
fn spawn_stdin_reader() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; faize_protocol::MAX_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Input::Eof);
                    break;
                }
                Ok(n) => {
                    if tx.blocking_send(Input::Data(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    break;
                }
            }
        }
    });
    rx
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
