//! The images a VM boots from: kernel, root images and initramfs. Each is built locally from
//! inputs kept in the repository (`resources/`, embedded in the binary), written to a temporary
//! file, renamed into place, and recorded in `manifest.json` with the hash of its inputs, so a
//! change of inputs triggers a rebuild and a half-written image is never used.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::home::{vars, FaizeHome};

const KERNEL_BUILD: &str = include_str!("../../../resources/kernel/build.sh");
const KERNEL_CONFIG: &str = include_str!("../../../resources/kernel/microvm.config");
const ROOTFS_BUILD: &str = include_str!("../../../resources/rootfs/build.sh");
const ROOTFS_PACKAGES: &str = include_str!("../../../resources/rootfs/packages.txt");
const CLAUDE_VERSION_FILE: &str = include_str!("../../../resources/claude-code.version");
const KERNEL_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";

/// A build script from `resources/` and the data file beside it, as embedded in the binary.
struct BuildScript {
    folder: &'static str,
    script: &'static str,
    data: (&'static str, &'static str),
}

const KERNEL_SCRIPT: BuildScript =
    BuildScript { folder: "kernel", script: KERNEL_BUILD, data: ("microvm.config", KERNEL_CONFIG) };
const ROOTFS_SCRIPT: BuildScript =
    BuildScript { folder: "rootfs", script: ROOTFS_BUILD, data: ("packages.txt", ROOTFS_PACKAGES) };

/// The pinned Claude Code version.
pub fn claude_version() -> &'static str {
    CLAUDE_VERSION_FILE.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("")
}

/// One kind of image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Kernel,
    Rootfs,
    Claude,
    Initramfs,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Kernel, Kind::Rootfs, Kind::Claude, Kind::Initramfs];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::Rootfs => "rootfs",
            Kind::Claude => "claude",
            Kind::Initramfs => "initramfs",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Kernel => "vmlinux",
            Kind::Rootfs => "rootfs.erofs",
            Kind::Claude => "claude.erofs",
            Kind::Initramfs => "initramfs.cpio",
        }
    }

    /// Parses a name given on the command line.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the manifest records of one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub file: String,
    pub inputs_hash: String,
    pub sha256: String,
    pub size: u64,
    pub built_at: u64,
    pub build_seconds: f64,
    pub versions: BTreeMap<String, String>,
}

type Manifest = BTreeMap<String, Entry>;

/// The state of one image.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Missing,
    /// Built from other inputs than the current ones.
    Stale(Entry),
    Ready(Entry),
}

/// The artifacts folder.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    cache: PathBuf,
    /// `claude.extra_deps`, baked into the claude image when it is built.
    extra_deps: Vec<String>,
}

/// The manifest's record of the extra packages in the claude image.
const EXTRA_DEPS: &str = "extra-deps";

/// Where the static guest agent is: `FAIZE_AGENT_BIN`, where the set-up script builds it
/// (`target/x86_64-unknown-linux-gnu/release`), or next to the faize binary. A dynamically
/// linked build cannot be PID 1 of the VM and is skipped.
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(vars::AGENT_BIN).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !is_static_elf(&p)? {
            bail!("{} ({}) is not a static executable: build it with ./setup.sh", p.display(), vars::AGENT_BIN);
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the faize binary")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join("../x86_64-unknown-linux-gnu/release/faize-agent"),
        dir.join("../../x86_64-unknown-linux-gnu/release/faize-agent"),
        dir.join("faize-agent"),
    ];
    for c in &candidates {
        if c.is_file() && is_static_elf(c)? {
            return Ok(c.clone());
        }
    }
    bail!(
        "the static guest agent binary was not found next to {}: run ./setup.sh, or set {} to a static faize-agent",
        exe.display(),
        vars::AGENT_BIN
    )
}

/// True for an x86-64 ELF executable without an interpreter (statically linked).
fn is_static_elf(path: &Path) -> Result<bool> {
    let b = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return Ok(false);
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(t) = b.get(o..o + 4) else { return Ok(false) };
        if u32::from_le_bytes(t.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Artifacts {
    pub fn new(home: &FaizeHome) -> Self {
        Self { dir: home.artifacts.clone(), cache: home.build_cache(), extra_deps: Vec::new() }
    }

    /// The claude image gets these Debian packages when it is built (checked names, sorted).
    pub fn with_extra_deps(mut self, deps: Vec<String>) -> Self {
        self.extra_deps = deps;
        self
    }

    /// When the claude image was built with other extra packages than the config asks for now,
    /// what to tell the user. (A change does not rebuild the image by itself: that takes minutes.)
    pub fn extra_deps_notice(&self) -> Option<String> {
        let manifest = self.read_manifest().ok()?;
        let built = manifest.get(Kind::Claude.name())?.versions.get(EXTRA_DEPS).cloned().unwrap_or_default();
        let wanted = self.extra_deps.join(",");
        (built != wanted).then(|| {
            let show = |s: &str| if s.is_empty() { "none".to_string() } else { s.replace(',', ", ") };
            format!(
                "claude.extra_deps changed since the claude image was built (image: {}; config: {}): run `faize claude rebuild` to bake them in",
                show(&built),
                show(&wanted)
            )
        })
    }

    pub fn path(&self, kind: Kind) -> PathBuf {
        self.dir.join(kind.file_name())
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    fn read_manifest(&self) -> Result<Manifest> {
        match fs::read(self.manifest_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is corrupt: remove it to rebuild", self.manifest_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.manifest_path().display())),
        }
    }

    fn write_manifest(&self, m: &Manifest) -> Result<()> {
        crate::fsutil::write_atomic(&self.manifest_path(), &serde_json::to_vec_pretty(m)?)
    }

    /// The hash of what an image is built from, and the versions worth recording.
    fn inputs(&self, kind: Kind) -> Result<(String, BTreeMap<String, String>)> {
        let mut h = Sha256::new();
        let mut versions = BTreeMap::new();
        h.update(kind.name());
        match kind {
            Kind::Kernel => {
                h.update(KERNEL_BUILD);
                h.update(KERNEL_CONFIG);
                // The source package's identity, cheaply: its size and modification time.
                let meta = fs::metadata(KERNEL_SOURCE).ok();
                let id = meta.map(|m| format!("{}-{}", m.size(), m.mtime())).unwrap_or_else(|| "absent".into());
                h.update(&id);
                versions.insert("linux-source".into(), "6.1".into());
            }
            Kind::Rootfs | Kind::Claude => {
                h.update(ROOTFS_BUILD);
                h.update(ROOTFS_PACKAGES);
                versions.insert("debian".into(), "bookworm".into());
                if kind == Kind::Claude {
                    h.update(claude_version());
                    versions.insert("claude-code".into(), claude_version().into());
                    // Recorded, not hashed: a change is reported, and `faize claude rebuild`
                    // acts on it.
                    if !self.extra_deps.is_empty() {
                        versions.insert(EXTRA_DEPS.into(), self.extra_deps.join(","));
                    }
                }
            }
            Kind::Initramfs => {
                let agent = agent_binary()?;
                let bytes = fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
                h.update(&bytes);
                versions.insert("faize-agent".into(), env!("CARGO_PKG_VERSION").into());
            }
        }
        Ok((hex(&h.finalize()), versions))
    }

    /// The state of every image.
    pub fn states(&self) -> Result<Vec<(Kind, State)>> {
        let manifest = self.read_manifest()?;
        Kind::ALL.into_iter().map(|k| Ok((k, self.state_in(&manifest, k)?))).collect()
    }

    fn state_in(&self, manifest: &Manifest, kind: Kind) -> Result<State> {
        let Some(entry) = manifest.get(kind.name()) else { return Ok(State::Missing) };
        let on_disk = fs::metadata(self.path(kind)).map(|m| m.len()).ok();
        if on_disk != Some(entry.size) {
            return Ok(State::Missing);
        }
        let (hash, _) = self.inputs(kind)?;
        Ok(if hash == entry.inputs_hash { State::Ready(entry.clone()) } else { State::Stale(entry.clone()) })
    }

    /// Makes sure the given images exist and are current, building what is not.
    pub fn ensure(&self, kinds: &[Kind], progress: &dyn Progress) -> Result<()> {
        let manifest = self.read_manifest()?;
        let needed: Vec<Kind> =
            kinds.iter().copied().filter(|k| !matches!(self.state_in(&manifest, *k), Ok(State::Ready(_)))).collect();
        for k in needed {
            self.build(k, progress, false)?;
        }
        Ok(())
    }

    /// Builds one image even if it is up to date.
    pub fn rebuild(&self, kind: Kind, progress: &dyn Progress) -> Result<()> {
        self.build(kind, progress, true)
    }

    /// Builds one image, replacing any previous one.
    fn build(&self, kind: Kind, progress: &dyn Progress, force: bool) -> Result<()> {
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let _lock = crate::fsutil::lock(&self.dir.join(".build.lock"))?;
        // Another process may have built it while we waited for the lock.
        if !force && matches!(self.state_in(&self.read_manifest()?, kind)?, State::Ready(_)) {
            return Ok(());
        }
        let (inputs_hash, versions) = self.inputs(kind)?;
        let final_path = self.path(kind);
        let tmp = self.dir.join(format!(".{}.partial", kind.file_name()));
        let _ = fs::remove_file(&tmp);
        let started = Instant::now();
        progress.start(kind);
        let result = match kind {
            Kind::Initramfs => self.build_initramfs(&tmp),
            Kind::Kernel => self.run_script(kind, &KERNEL_SCRIPT, &[], &tmp, progress),
            Kind::Rootfs => self.run_script(kind, &ROOTFS_SCRIPT, &[], &tmp, progress),
            Kind::Claude => {
                let args: Vec<&str> =
                    std::iter::once(claude_version()).chain(self.extra_deps.iter().map(String::as_str)).collect();
                self.run_script(kind, &ROOTFS_SCRIPT, &args, &tmp, progress)
            }
        };
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            progress.finish(kind, false);
            return Err(e);
        }
        let sha256 = sha256_file(&tmp)?;
        let size = fs::metadata(&tmp)?.len();
        fs::rename(&tmp, &final_path).with_context(|| format!("moving the new {kind} image into place"))?;
        let mut manifest = self.read_manifest()?;
        manifest.insert(
            kind.name().into(),
            Entry {
                file: kind.file_name().into(),
                inputs_hash,
                sha256,
                size,
                built_at: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                build_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                versions,
            },
        );
        self.write_manifest(&manifest)?;
        progress.finish(kind, true);
        Ok(())
    }

    fn build_initramfs(&self, out: &Path) -> Result<()> {
        let agent = agent_binary()?;
        let bytes = fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
        let mut f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        crate::initramfs::write(&mut f, &bytes)?;
        f.sync_all()?;
        Ok(())
    }

    /// Runs a build script from `resources/` and streams its "step:" lines to `progress`.
    fn run_script(
        &self,
        kind: Kind,
        script: &BuildScript,
        extra_args: &[&str],
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let scripts = self.cache.join("resources").join(script.folder);
        fs::create_dir_all(&scripts)?;
        fs::write(scripts.join("build.sh"), script.script)?;
        fs::write(scripts.join(script.data.0), script.data.1)?;
        let work = self.cache.join(kind.name());
        let log_path = self.cache.join(format!("{kind}-build.log"));
        let mut log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new("bash");
        cmd.arg(scripts.join("build.sh")).arg(out).arg(&work);
        cmd.args(extra_args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running bash for the image build")?;
        // Merge stderr into the same stream so the log keeps the order.
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let tx2 = tx.clone();
        let stdout = child.stdout.take().expect("piped");
        let t1 = std::thread::spawn(move || forward_lines(stdout, tx));
        let t2 = std::thread::spawn(move || forward_lines(stderr, tx2));
        let mut step = String::from("starting");
        let mut tail: std::collections::VecDeque<String> = Default::default();
        for line in rx {
            let _ = writeln!(log, "{line}");
            if let Some(s) = line.strip_prefix("step: ") {
                step = s.to_string();
                progress.step(kind, s);
            } else if let Some(p) = line.strip_prefix("progress: ") {
                progress.detail(kind, p.trim());
            } else {
                tail.push_back(line);
                if tail.len() > 25 {
                    tail.pop_front();
                }
            }
        }
        let _ = (t1.join(), t2.join());
        let status = child.wait()?;
        if !status.success() {
            let tail: Vec<String> = tail.into_iter().collect();
            bail!(
                "building the {kind} image failed at step \"{step}\" ({status}); last output:\n{}\nfull log: {}",
                tail.join("\n"),
                log_path.display()
            );
        }
        if !out.is_file() {
            bail!("the {kind} build finished without producing {}; full log: {}", out.display(), log_path.display());
        }
        Ok(())
    }
}

fn forward_lines(r: impl Read, tx: std::sync::mpsc::Sender<String>) {
    for line in BufReader::new(r).lines() {
        let Ok(line) = line else { break };
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// Receives progress of image builds (the CLI shows it with indicatif).
pub trait Progress {
    fn start(&self, kind: Kind);
    fn step(&self, kind: Kind, step: &str);
    fn detail(&self, kind: Kind, detail: &str);
    fn finish(&self, kind: Kind, ok: bool);
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_static_executables_can_be_the_agent() {
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap(), "/bin/sh is dynamic");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&f).unwrap());
    }

    #[test]
    fn claude_version_is_pinned() {
        let v = claude_version();
        assert!(v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u32>().is_ok()), "{v}");
    }

    #[test]
    fn a_changed_input_makes_an_image_stale() {
        let dir = tempfile::tempdir().unwrap();
        let home = FaizeHome { root: dir.path().into(), artifacts: dir.path().join("a") };
        let a = Artifacts::new(&home);
        fs::create_dir_all(&a.dir).unwrap();
        fs::write(a.path(Kind::Rootfs), b"image").unwrap();
        let (hash, versions) = a.inputs(Kind::Rootfs).unwrap();
        let entry = Entry {
            file: "rootfs.erofs".into(),
            inputs_hash: hash,
            sha256: String::new(),
            size: 5,
            built_at: 0,
            build_seconds: 0.0,
            versions,
        };
        let mut m = Manifest::new();
        m.insert("rootfs".into(), entry.clone());
        assert_eq!(a.state_in(&m, Kind::Rootfs).unwrap(), State::Ready(entry.clone()));
        m.get_mut("rootfs").unwrap().inputs_hash = "old".into();
        assert!(matches!(a.state_in(&m, Kind::Rootfs).unwrap(), State::Stale(_)));
        fs::write(a.path(Kind::Rootfs), b"half").unwrap();
        assert_eq!(a.state_in(&m, Kind::Rootfs).unwrap(), State::Missing);
        assert_eq!(a.state_in(&m, Kind::Kernel).unwrap(), State::Missing);
    }
}
