//! Every host folder and file the guest sees: the project, the user's mounts, git's folders, the
//! toolchain folder, the agent's configuration and copies of single files, and how they reach the
//! guest.
//!
//! As root, one virtiofsd serves them all: it starts in a private mount namespace where each
//! share is bind-mounted under one folder (read-only ones with a read-only bind, and the folders
//! that must stay read-only inside writable shares, such as `.git/hooks`, likewise), so the host
//! kernel enforces every read-only rule. The guest mounts that one share at [`SHARES_DIR`] and
//! bind-mounts each numbered folder at its target. Without root, each folder gets its own
//! virtiofsd (`--readonly` where needed); QEMU's microvm has 8 device slots and 4 are taken, so at
//! most [`MAX_SEPARATE_SHARES`] folders can be shared that way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use faize_protocol::{Bind, FileWrite, Share, GUEST_PATH, GUEST_USER, SHARES_DIR, TOOLCHAIN_DIR};

use crate::agent_config;
use crate::home::FaizeHome;
use crate::mounts::MountKind;
use crate::process::{self, Helper, NsBind};
use crate::spec::{credentials_dir, SessionSpec};
use crate::vmm::{self, FsDevice, VirtiofsdSpec};

/// Folder of the session that holds the agent's configuration while it runs.
pub const AGENT_CONFIG_DIR: &str = "claude";

/// Folder of the session that holds the copies of single-file mounts.
const FILES_DIR: &str = "files";

/// Folders that can be shared without root (one virtiofsd and one device slot each).
pub const MAX_SEPARATE_SHARES: usize = 4;

/// One host folder shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
    /// Folders below `host` that stay read-only although the share is writable.
    pub read_only_inside: Vec<PathBuf>,
}

/// A single file, copied into the files share, bind-mounted read-only at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    pub share: usize,
    pub relative: String,
    pub target: String,
}

/// Everything to share, decided before any process starts.
#[derive(Debug)]
pub struct Plan {
    pub shares: Vec<ShareSpec>,
    pub files: Vec<FileCopy>,
    /// Small files the agent writes (the guest's `~/.claude.json`).
    pub writes: Vec<FileWrite>,
}

fn utf8(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8", p.display()))
}

fn share(host: PathBuf, guest: &str, read_only: bool) -> ShareSpec {
    ShareSpec { host, guest: guest.into(), read_only, read_only_inside: Vec::new() }
}

/// Decides the shares of a session, copying single files and staging the agent's configuration
/// into `session_dir`.
pub fn plan(spec: &SessionSpec, home: &FaizeHome, session_dir: &Path) -> Result<Plan> {
    let mut shares = vec![share(spec.project.clone(), &utf8(&spec.project)?, false)];

    let toolchain = home.root.join("toolchain");
    for sub in ["bin", "npm-cache", "pip-cache"] {
        std::fs::create_dir_all(toolchain.join(sub)).with_context(|| format!("creating {}", toolchain.display()))?;
    }
    shares.push(share(toolchain, TOOLCHAIN_DIR, false));

    let mut writes = guest_shims();
    if spec.image == crate::artifacts::Kind::Claude {
        let store = agent_config::stored_credentials(&credentials_dir(&home.root));
        let seed = if spec.persist_credentials && store.is_file() {
            store
        } else {
            spec.user_home.join(".claude").join(agent_config::CREDENTIALS_FILE)
        };
        let staged =
            agent_config::stage(&spec.user_home, &session_dir.join(AGENT_CONFIG_DIR), &spec.blocked, Some(&seed))?;
        for s in &staged.skipped {
            eprintln!("faize: left out of the agent's configuration: {s}");
        }
        let guest_home = format!("/home/{GUEST_USER}");
        shares.push(share(staged.dir, &format!("{guest_home}/.claude"), false));
        writes.push(FileWrite { path: format!("{guest_home}/.claude.json"), data: staged.claude_json, mode: 0o600 });
    }

    let mut copies = Vec::new();
    let files_dir = session_dir.join(FILES_DIR);
    for (i, m) in spec.mounts.iter().enumerate() {
        match m.kind {
            MountKind::Dir => shares.push(share(m.source.clone(), &utf8(&m.target)?, m.read_only)),
            MountKind::File => {
                let name = m.source.file_name().context("a file mount without a file name")?;
                let copy = files_dir.join(i.to_string()).join(name);
                std::fs::create_dir_all(copy.parent().expect("has a parent"))?;
                std::fs::copy(&m.source, &copy)
                    .with_context(|| format!("copying {} into the VM", m.source.display()))?;
                copies.push((format!("{i}/{}", name.to_string_lossy()), utf8(&m.target)?));
            }
        }
    }
    let mut files = Vec::new();
    if !copies.is_empty() {
        shares.push(share(files_dir, "", true));
        let idx = shares.len() - 1;
        files = copies.into_iter().map(|(relative, target)| FileCopy { share: idx, relative, target }).collect();
    }

    // Each protected folder goes to the writable share that holds it (the deepest one).
    for p in &spec.read_only_inside {
        if let Some(s) = shares
            .iter_mut()
            .filter(|s| !s.read_only && p.starts_with(&s.host))
            .max_by_key(|s| s.host.components().count())
        {
            s.read_only_inside.push(p.clone());
        }
    }
    Ok(Plan { shares, files, writes })
}

/// What the guest is told, and the devices QEMU gets.
#[derive(Debug)]
pub struct Started {
    pub devices: Vec<FsDevice>,
    pub shares: Vec<Share>,
    pub binds: Vec<Bind>,
}

/// The binds the agent makes: folders parents first, then files.
pub fn binds(plan: &Plan) -> Vec<Bind> {
    let mut dirs: Vec<Bind> = plan
        .shares
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.guest.is_empty())
        .map(|(i, s)| Bind { source: format!("{SHARES_DIR}/{i}"), target: s.guest.clone(), read_only: s.read_only })
        .collect();
    dirs.sort_by_key(|b| Path::new(&b.target).components().count());
    dirs.extend(plan.files.iter().map(|f| Bind {
        source: format!("{SHARES_DIR}/{}/{}", f.share, f.relative),
        target: f.target.clone(),
        read_only: true,
    }));
    dirs
}

/// Starts the virtiofsd process(es) and waits until they listen.
pub async fn start(
    plan: &Plan,
    virtiofsd: &Path,
    runtime: &Path,
    logs: &Path,
    helpers: &mut Vec<Helper>,
) -> Result<Started> {
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    let fs_spec = |socket: PathBuf, shared_dir: PathBuf, read_only: bool| VirtiofsdSpec {
        socket,
        shared_dir,
        read_only,
        host_uid: uid,
        host_gid: gid,
    };
    let first = helpers.len();
    let mut devices = Vec::new();
    let mut shares = Vec::new();
    if nix::unistd::geteuid().is_root() {
        let root = runtime.join("shares");
        let mut ns = Vec::new();
        for s in &plan.shares {
            for p in &s.read_only_inside {
                ns.push(NsBind { source: p.clone(), target: p.clone(), read_only: true, recursive: false });
            }
        }
        for (i, s) in plan.shares.iter().enumerate() {
            let target = root.join(i.to_string());
            std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
            ns.push(NsBind { source: s.host.clone(), target, read_only: s.read_only, recursive: true });
        }
        let socket = runtime.join("fs0.sock");
        helpers.push(process::spawn_with_binds(
            "virtiofsd",
            virtiofsd,
            &vmm::virtiofsd_args(&fs_spec(socket.clone(), root, false)),
            &logs.join("virtiofsd.log"),
            &ns,
        )?);
        devices.push(FsDevice { tag: "fs0".into(), socket });
        shares.push(Share { tag: "fs0".into(), guest_path: SHARES_DIR.into(), read_only: false });
    } else {
        if plan.shares.len() > MAX_SEPARATE_SHARES {
            bail!(
                "{} folders to share, but without root faize can share at most {MAX_SEPARATE_SHARES} \
                 (one VM device each): use fewer mounts, or run faize as root",
                plan.shares.len()
            );
        }
        for (i, s) in plan.shares.iter().enumerate() {
            let tag = format!("fs{i}");
            let socket = runtime.join(format!("{tag}.sock"));
            helpers.push(process::spawn(
                "virtiofsd",
                virtiofsd,
                &vmm::virtiofsd_args(&fs_spec(socket.clone(), s.host.clone(), s.read_only)),
                &logs.join(format!("virtiofsd-{tag}.log")),
            )?);
            devices.push(FsDevice { tag: tag.clone(), socket });
            shares.push(Share { tag, guest_path: format!("{SHARES_DIR}/{i}"), read_only: s.read_only });
        }
    }
    for (helper, device) in helpers[first..].iter_mut().zip(&devices) {
        helper.wait_for_socket(&device.socket, Duration::from_secs(10)).await.context("starting virtiofsd")?;
    }
    Ok(Started { devices, shares, binds: binds(plan) })
}

/// The clipboard and URL shims the guest gets in `/usr/local/bin` (ahead of `/usr/bin` on its
/// PATH): they talk to the agent, never to the host directly (`resources/guest/`).
fn guest_shims() -> Vec<FileWrite> {
    const SHIMS: [(&str, &str); 6] = [
        ("xclip", include_str!("../../../resources/guest/xclip")),
        ("xsel", include_str!("../../../resources/guest/xsel")),
        ("wl-paste", include_str!("../../../resources/guest/wl-paste")),
        ("wl-copy", include_str!("../../../resources/guest/wl-copy")),
        ("xdg-open", include_str!("../../../resources/guest/xdg-open")),
        ("open", include_str!("../../../resources/guest/xdg-open")),
    ];
    let mut writes: Vec<FileWrite> = SHIMS
        .iter()
        .map(|(name, text)| FileWrite {
            path: format!("/usr/local/bin/{name}"),
            data: text.as_bytes().to_vec(),
            mode: 0o755,
        })
        .collect();
    writes.push(FileWrite {
        path: "/usr/local/lib/faize-clipboard.sh".into(),
        data: include_bytes!("../../../resources/guest/faize-clipboard.sh").to_vec(),
        mode: 0o644,
    });
    writes
}

/// Environment that points installs and caches into the shared toolchain folder.
pub fn toolchain_env() -> Vec<(String, String)> {
    [
        ("PATH", format!("{TOOLCHAIN_DIR}/bin:{GUEST_PATH}")),
        ("NPM_CONFIG_PREFIX", TOOLCHAIN_DIR.to_string()),
        ("NPM_CONFIG_CACHE", format!("{TOOLCHAIN_DIR}/npm-cache")),
        ("PIP_CACHE_DIR", format!("{TOOLCHAIN_DIR}/pip-cache")),
        ("PYTHONUSERBASE", TOOLCHAIN_DIR.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_mount_parents_first_and_files_last() {
        let plan = Plan {
            shares: vec![
                share("/p/app".into(), "/p/app", false),
                share("/data".into(), "/mnt", true),
                share("/s/files".into(), "", true),
            ],
            files: vec![FileCopy { share: 2, relative: "0/notes.txt".into(), target: "/mnt/notes.txt".into() }],
            writes: vec![],
        };
        let b = binds(&plan);
        let got: Vec<(&str, &str, bool)> =
            b.iter().map(|b| (b.source.as_str(), b.target.as_str(), b.read_only)).collect();
        assert_eq!(
            got,
            vec![
                ("/run/faize/shares/1", "/mnt", true),
                ("/run/faize/shares/0", "/p/app", false),
                ("/run/faize/shares/2/0/notes.txt", "/mnt/notes.txt", true),
            ]
        );
    }
}
