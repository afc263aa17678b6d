//! One typed description of a session, resolved from flags, then the environment, then the
//! config file, then defaults. Everything is validated here, before any VM starts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::accel::{self, AccelChoice};
use crate::artifacts::Kind;
use crate::config::Config;
use crate::git;
use crate::home::{vars, FaizeHome};
use crate::mounts::{self, Blocked, Mount, MountKind};
use crate::units::{format_size, parse_duration, parse_size};

/// Defaults, as in the original tool's README.
pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY: &str = "4GB";
pub const DEFAULT_TIMEOUT: &str = "2h";
pub const DEFAULT_SCRATCH: &str = "16GiB";
/// Smallest memory a session may have (Claude Code alone needs more than this).
pub const MIN_MEMORY_MIB: u64 = 256;

/// What the command line asked for; `None` means "not given".
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub project: Option<PathBuf>,
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    pub timeout: Option<String>,
    pub config: Option<PathBuf>,
    pub image: Option<String>,
    /// `-m` specs, as given.
    pub mounts: Vec<String>,
    /// `--no-git-context`.
    pub no_git_context: bool,
    /// `--persist-credentials`.
    pub persist_credentials: bool,
    /// `--no-diff`.
    pub no_diff: bool,
    /// `-n/--network` rules; when given, they replace the config's `networks:`.
    pub network: Vec<String>,
    /// Empty: run the agent (`claude`).
    pub command: Vec<String>,
    pub interactive: bool,
}

/// A fully resolved, validated session.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub id: String,
    pub project: PathBuf,
    /// Extra shares (the user's and git's), checked; parents before children.
    pub mounts: Vec<Mount>,
    /// Folders inside writable shares that the host keeps read-only (`.git/hooks`).
    pub read_only_inside: Vec<PathBuf>,
    /// The invoking user's home (the agent's configuration is built from its `~/.claude`).
    pub user_home: PathBuf,
    /// Save the agent's credentials when the session ends, and start from them next time.
    pub persist_credentials: bool,
    /// The blocked paths (built-in and configured), for everything faize copies in.
    pub blocked: Blocked,
    /// Print (and keep) the summary of changes to the writable shares at the end.
    pub show_diff: bool,
    /// The network allowlist (`-n`, else `networks:`, else the default presets), validated.
    pub network: faize_net::Policy,
    /// `claude.extra_deps`: Debian packages the claude image should hold.
    pub extra_deps: Vec<String>,
    /// `open_urls`: hosts whose https URLs the guest may open in the user's browser.
    pub open_urls: Vec<String>,
    /// `clipboard.copy_to_host`.
    pub copy_to_host: bool,
    /// How long a login callback is awaited (`FAIZE_CALLBACK_TIMEOUT`).
    pub callback_limit: Duration,
    /// `network.hosts`: names mapped to addresses explicitly.
    pub network_hosts: std::collections::HashMap<String, std::net::IpAddr>,
    /// `network.resolver`: where the proxy resolves names.
    pub network_resolver: faize_net::resolve::Resolver,
    pub network_limits: faize_net::proxy::Limits,
    pub cpus: u32,
    pub memory_mib: u64,
    pub timeout: Option<Duration>,
    pub scratch_bytes: u64,
    pub accel: AccelChoice,
    pub tsc_khz: Option<u64>,
    pub image: Kind,
    pub command: Vec<String>,
    pub interactive: bool,
    /// Things the user should know (settings accepted but not acted on).
    pub notices: Vec<String>,
}

/// Facts about the host that limits are checked against.
#[derive(Debug, Clone)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl HostLimits {
    pub fn probe() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kib| kib / 1024)
            .unwrap_or(u64::MAX);
        Self { cpus, memory_mib }
    }
}

/// Resolves and validates a request.
pub fn resolve(req: &Request, home: &FaizeHome, host: &HostLimits) -> Result<SessionSpec> {
    let (config_path, required) = match &req.config {
        Some(p) => (p.clone(), true),
        None => (home.config_file(), false),
    };
    let config = Config::load(&config_path, required)?;
    let user_home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| "/".into());
    let ctx = HostContext {
        limits: host.clone(),
        accel_env: std::env::var(vars::ACCEL).ok(),
        facts: accel::probe(),
        user_home,
        faize_root: home.root.clone(),
    };
    resolve_with(req, &config, &ctx)
}

/// What the resolution reads from the host, gathered in one place so tests can set it.
#[derive(Debug, Clone)]
pub struct HostContext {
    pub limits: HostLimits,
    pub accel_env: Option<String>,
    pub facts: accel::HostFacts,
    pub user_home: PathBuf,
    /// `~/.faize`: its credentials folder is never shared.
    pub faize_root: PathBuf,
}

/// The part of [`resolve`] that tests can drive.
pub fn resolve_with(req: &Request, config: &Config, ctx: &HostContext) -> Result<SessionSpec> {
    let (host, facts, user_home) = (&ctx.limits, &ctx.facts, ctx.user_home.as_path());
    let cpus = req.cpus.or(config.defaults.cpus).unwrap_or(DEFAULT_CPUS);
    if cpus == 0 {
        bail!("cpus must be at least 1");
    }
    if cpus > host.cpus {
        bail!("{cpus} cpus requested but this host has {}: use --cpus {} or fewer", host.cpus, host.cpus);
    }

    let memory_text = pick(&req.memory, &config.defaults.memory, DEFAULT_MEMORY);
    let memory = parse_size(&memory_text).context("memory")?;
    if !memory.is_multiple_of(1 << 20) {
        bail!("memory {memory_text:?} is not a whole number of MiB: use e.g. 512M or 4GiB");
    }
    let memory_mib = memory >> 20;
    if memory_mib < MIN_MEMORY_MIB {
        bail!("memory {memory_text:?} is too small: a session needs at least {MIN_MEMORY_MIB}MiB");
    }
    if memory_mib > host.memory_mib {
        bail!(
            "memory {memory_text:?} is more than this host's {}: ask for less with --memory",
            format_size(host.memory_mib << 20)
        );
    }

    let timeout_text = pick(&req.timeout, &config.defaults.timeout, DEFAULT_TIMEOUT);
    let timeout = parse_duration(&timeout_text).context("timeout")?;

    let scratch_text = pick(&None, &config.vm.scratch_size, DEFAULT_SCRATCH);
    let scratch_bytes = parse_size(&scratch_text).context("vm.scratch_size")?;
    if scratch_bytes < 64 << 20 {
        bail!("vm.scratch_size {scratch_text:?} is too small: use at least 64MiB");
    }

    let forced = ctx.accel_env.as_deref().filter(|s| !s.is_empty()).or(config.vm.accel.as_deref());
    let accel = accel::choose(forced, facts).map_err(anyhow::Error::msg)?;

    let project = match &req.project {
        Some(p) => p.clone(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let project = std::fs::canonicalize(&project).with_context(|| {
        format!("project directory {} does not exist: pass an existing folder with -p", project.display())
    })?;
    if !project.is_dir() {
        bail!("project {} is not a directory: pass a folder with -p", project.display());
    }
    if project.to_str().is_none() {
        bail!("project path {} is not valid UTF-8: rename it or pick another folder", project.display());
    }
    let mut blocked_extra = config.blocked_paths.clone();
    blocked_extra.push(credentials_dir(&ctx.faize_root).display().to_string());
    let blocked = Blocked::new(user_home, &blocked_extra);
    mounts::check_project(&project, &blocked)?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let requests = config
        .claude
        .auto_mounts
        .iter()
        .map(|m| mounts::parse(m).with_context(|| "in claude.auto_mounts of the config"))
        .chain(req.mounts.iter().map(|m| mounts::parse(m).map_err(anyhow::Error::from)))
        .collect::<Result<Vec<_>>>()?;
    let mut mounts = mounts::resolve(&requests, &project, &blocked, user_home, &cwd)?;
    let mut notices = Vec::new();
    let mut read_only_inside = Vec::new();
    if !req.no_git_context && config.claude.git_context != Some(false) {
        let is_root = nix::unistd::geteuid().is_root();
        match git::detect(&project, is_root) {
            Ok(g) => {
                notices.extend(g.notice.clone());
                add_git_shares(g, &mut mounts, &mut read_only_inside, &blocked, &mut notices);
            }
            Err(e) => notices.push(format!("no git context: {e:#}")),
        }
    }
    for m in &mounts {
        if m.source.to_str().is_none() || m.target.to_str().is_none() {
            bail!("mount {} is not valid UTF-8: rename it or pick another folder", m.source.display());
        }
    }

    let image = match req.image.as_deref() {
        None | Some("claude") => Kind::Claude,
        Some("rootfs") => Kind::Rootfs,
        Some(other) => bail!("unknown image {other:?}: use claude (the default) or rootfs"),
    };
    let command = if req.command.is_empty() { vec!["claude".to_string()] } else { req.command.clone() };
    if image == Kind::Rootfs && command[0] == "claude" {
        bail!("the rootfs image has no claude: use the default image or give a command after --");
    }

    let (network, source) = if req.network.is_empty() {
        (
            faize_net::Policy::parse(config.networks.as_deref()).context("in networks: of the config")?,
            "the config's networks: list",
        )
    } else {
        (faize_net::Policy::parse(Some(&req.network))?, "-n")
    };
    if network.is_none() {
        notices.push(format!("network: none ({source} allows nothing): the VM cannot reach any host"));
    }
    let mut network_hosts = std::collections::HashMap::new();
    for (name, addr) in &config.network.hosts {
        let ip = addr.parse().map_err(|_| {
            anyhow::anyhow!("network.hosts: {addr:?} (for {name}) is not an IP address: write e.g. 127.0.0.1")
        })?;
        network_hosts.insert(name.trim_end_matches('.').to_ascii_lowercase(), ip);
    }
    let mut network_limits = faize_net::proxy::Limits::default();
    if let Some(n) = config.network.max_connections {
        if n == 0 {
            bail!("network.max_connections must be at least 1");
        }
        network_limits.max_connections = n;
    }
    if let Some(t) = &config.network.connect_timeout {
        network_limits.connect_timeout =
            parse_duration(&t.0).context("network.connect_timeout")?.context("network.connect_timeout cannot be 0")?;
    }
    let network_resolver = match &config.network.resolver {
        Some(text) => {
            faize_net::resolve::Resolver::parse(text).map_err(|e| anyhow::anyhow!("network.resolver: {e}"))?
        }
        None => faize_net::resolve::Resolver::System,
    };
    let extra_deps = config.extra_deps().map_err(anyhow::Error::msg)?;
    let callback_limit = crate::callback::limit().map_err(anyhow::Error::msg)?;
    let open_urls = match &config.open_urls {
        Some(hosts) => {
            for h in hosts {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                if bare.is_empty() || !bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                    bail!("open_urls: {h:?} is not a host name: write e.g. claude.ai or *.example.com");
                }
            }
            hosts.clone()
        }
        None => crate::clipboard::DEFAULT_OPEN_URLS.map(String::from).to_vec(),
    };
    if accel.accel == accel::Accel::Tcg && forced.is_none() {
        notices.push(format!("using the TCG emulator (slow): {}", accel.reason));
    }

    Ok(SessionSpec {
        id: new_id(),
        project,
        mounts,
        read_only_inside,
        user_home: user_home.to_path_buf(),
        persist_credentials: req.persist_credentials || config.claude.persist_credentials == Some(true),
        blocked,
        show_diff: !req.no_diff && config.claude.show_diff != Some(false),
        network,
        extra_deps,
        open_urls,
        copy_to_host: config.clipboard.copy_to_host,
        callback_limit,
        network_hosts,
        network_resolver,
        network_limits,
        cpus,
        memory_mib,
        timeout,
        scratch_bytes,
        accel,
        tsc_khz: facts.tsc_khz,
        image,
        command,
        interactive: req.interactive,
        notices,
    })
}

/// Where persisted credentials live; never shared with a VM.
pub fn credentials_dir(faize_root: &std::path::Path) -> PathBuf {
    faize_root.join("credentials")
}

/// Adds git's folders and files as mounts at their own paths, unless a rule forbids it (then the
/// user is told and that part is left out).
fn add_git_shares(
    g: git::GitShares,
    mounts: &mut Vec<Mount>,
    read_only_inside: &mut Vec<PathBuf>,
    blocked: &Blocked,
    notices: &mut Vec<String>,
) {
    let entries = g
        .folders
        .into_iter()
        .map(|(p, rw)| (p, !rw, MountKind::Dir))
        .chain(g.files.into_iter().map(|p| (p, true, MountKind::File)));
    for (path, read_only, kind) in entries {
        let problem = blocked
            .check("the git folder", &path)
            .err()
            .map(|e| e.to_string())
            .or_else(|| mounts::target_problem(&path).map(|r| format!("the git folder {} {r}", path.display())));
        if let Some(p) = problem {
            notices.push(format!("no git context: {p}"));
            return;
        }
        if !mounts.iter().any(|m| m.target == path) {
            mounts.push(Mount { source: path.clone(), target: path, read_only, kind });
        }
    }
    read_only_inside.extend(g.read_only_inside);
    mounts.sort_by_key(|m| m.target.components().count());
}

/// The flag's value, else the config's, else the default.
fn pick(flag: &Option<String>, config: &Option<crate::config::Scalar>, default: &str) -> String {
    flag.clone().or_else(|| config.as_ref().map(|s| s.0.clone())).unwrap_or_else(|| default.into())
}

/// 12 random hex characters.
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).expect("the kernel's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLimits {
        HostLimits { cpus: 2, memory_mib: 24 * 1024 }
    }

    fn facts() -> accel::HostFacts {
        accel::HostFacts { cpu_flags_virt: false, kvm_usable: true, tsc_khz: Some(2_000_000) }
    }

    fn req() -> Request {
        Request { project: Some(std::env::temp_dir()), ..Default::default() }
    }

    fn ctx(accel_env: Option<&str>) -> HostContext {
        HostContext {
            limits: host(),
            accel_env: accel_env.map(str::to_string),
            facts: facts(),
            user_home: "/nonexistent-home".into(),
            faize_root: "/nonexistent-home/.faize".into(),
        }
    }

    fn resolve(r: &Request, c: &str) -> Result<SessionSpec> {
        resolve_with(r, &Config::parse(c).unwrap(), &ctx(None))
    }

    #[test]
    fn defaults_match_the_original() {
        let s = resolve(&req(), "").unwrap();
        assert_eq!((s.cpus, s.memory_mib, s.timeout), (2, 4096, Some(Duration::from_secs(7200))));
        assert_eq!(s.command, vec!["claude"]);
        assert_eq!(s.image, Kind::Claude);
        assert_eq!(s.accel.accel, accel::Accel::Tcg);
        assert_eq!(s.id.len(), 12);
    }

    #[test]
    fn flags_beat_config() {
        let c = "defaults:\n  cpus: 1\n  memory: 1GiB\n  timeout: 0\n";
        let s = resolve(&req(), c).unwrap();
        assert_eq!((s.cpus, s.memory_mib, s.timeout), (1, 1024, None));
        let r = Request { cpus: Some(2), memory: Some("512M".into()), timeout: Some("90m".into()), ..req() };
        let s = resolve(&r, c).unwrap();
        assert_eq!((s.cpus, s.memory_mib, s.timeout), (2, 512, Some(Duration::from_secs(5400))));
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        let e = |r: Request| format!("{:#}", resolve(&r, "").unwrap_err());
        assert!(e(Request { cpus: Some(3), ..req() }).contains("this host has 2"));
        assert!(e(Request { cpus: Some(0), ..req() }).contains("at least 1"));
        assert!(e(Request { memory: Some("lots".into()), ..req() }).contains("invalid size \"lots\""));
        assert!(e(Request { memory: Some("100M".into()), ..req() }).contains("at least 256MiB"));
        assert!(e(Request { memory: Some("64G".into()), ..req() }).contains("more than this host"));
        assert!(e(Request { timeout: Some("soon".into()), ..req() }).contains("invalid duration"));
        assert!(e(Request { project: Some("/no/such/dir".into()), ..req() }).contains("does not exist"));
        assert!(e(Request { image: Some("alpine".into()), ..req() }).contains("unknown image"));
        let bad = resolve(&req(), "networks:\n  - npm\n  - '*.com'\n").unwrap_err();
        assert!(format!("{bad:#}").contains("invalid network rule \"*.com\""), "{bad:#}");
        let c = Config::parse("vm:\n  accel: hvf\n").unwrap();
        assert!(resolve_with(&req(), &c, &ctx(None)).is_err());
    }

    #[test]
    fn accel_env_beats_config() {
        let c = Config::parse("vm:\n  accel: kvm\n").unwrap();
        let s = resolve_with(&req(), &c, &ctx(Some("tcg"))).unwrap();
        assert_eq!(s.accel.accel, accel::Accel::Tcg);
        let s = resolve_with(&req(), &c, &ctx(None)).unwrap();
        assert_eq!(s.accel.accel, accel::Accel::Kvm);
    }
}
