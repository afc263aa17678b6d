//! Turning a bare kernel into the session's machine: mounts, the overlay root, clock, hostname,
//! loopback, the virtio-fs shares and the unprivileged user.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use faize_protocol::{Setup, GUEST_UID, GUEST_USER, ROOT_DISK_SERIAL, SCRATCH_DISK_SERIAL, WORKSPACE_LINK};
use nix::mount::{mount, MsFlags};
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

const NEW_ROOT: &str = "/newroot";
const LOWER: &str = "/lower";
const SCRATCH: &str = "/scratch";

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| format!("mount {fstype} {src} on {target}: {e}"))
}

/// Mounts the kernel filesystems the initramfs needs.
pub fn early_mounts() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    Ok(())
}

/// Puts the writable layer over the read-only image (mounted by [`mount_image`]) and makes it
/// the root.
/// Mounts the read-only root image (before the handshake, so programs from it can start early).
pub fn mount_image() -> Result<(), String> {
    mount_fs(&disk_by_serial(ROOT_DISK_SERIAL)?, LOWER, "erofs", MsFlags::MS_RDONLY, None)
}

/// The mounted root image, for programs started before the root switch.
pub const IMAGE_ROOT: &str = LOWER;

pub fn switch_root() -> Result<(), String> {
    mount_fs(&disk_by_serial(SCRATCH_DISK_SERIAL)?, SCRATCH, "ext4", MsFlags::MS_NOATIME | MsFlags::MS_NOSUID, None)?;
    for d in ["upper", "work"] {
        fs::create_dir_all(format!("{SCRATCH}/{d}")).map_err(|e| format!("mkdir {SCRATCH}/{d}: {e}"))?;
    }
    let opts = format!("lowerdir={LOWER},upperdir={SCRATCH}/upper,workdir={SCRATCH}/work");
    mount_fs("overlay", NEW_ROOT, "overlay", MsFlags::empty(), Some(&opts))?;
    for d in ["dev", "proc", "sys"] {
        let target = format!("{NEW_ROOT}/{d}");
        fs::create_dir_all(&target).map_err(|e| format!("mkdir {target}: {e}"))?;
        mount(Some(format!("/{d}").as_str()), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| format!("move /{d} into the new root: {e}"))?;
    }
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move new root to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// The device node of the virtio disk with this serial (the order of devices is not fixed).
fn disk_by_serial(serial: &str) -> Result<String, String> {
    let entries = fs::read_dir("/sys/block").map_err(|e| format!("listing /sys/block: {e}"))?;
    for entry in entries.flatten() {
        let found = fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim() == serial {
            return Ok(format!("/dev/{}", entry.file_name().to_string_lossy()));
        }
    }
    Err(format!("no disk with serial {serial} (is the VM started by faize?)"))
}

/// Everything after the root switch that depends on the host's setup message.
pub fn prepare(setup: &Setup) -> Result<(), String> {
    let secs = (setup.clock_unix_nanos / 1_000_000_000) as i64;
    let nanos = (setup.clock_unix_nanos % 1_000_000_000) as i64;
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::new(secs, nanos))
        .map_err(|e| format!("setting the clock: {e}"))?;
    nix::unistd::sethostname(&setup.hostname).map_err(|e| format!("sethostname: {e}"))?;

    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("devpts", "/dev/pts", "devpts", nosuid | MsFlags::MS_NOEXEC, Some("mode=0620,ptmxmode=0666,gid=5"))?;
    mount_fs("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"))?;
    mount_fs("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755"))?;
    crate::net::interface_up("lo")?;

    for share in &setup.shares {
        let mut flags = nosuid;
        if share.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount_fs(&share.tag, &share.guest_path, "virtiofs", flags, None)?;
    }
    for b in &setup.binds {
        bind(&b.source, &b.target, b.read_only)?;
    }
    if setup.project != WORKSPACE_LINK {
        let _ = fs::remove_dir(WORKSPACE_LINK);
        std::os::unix::fs::symlink(&setup.project, WORKSPACE_LINK)
            .map_err(|e| format!("symlink {WORKSPACE_LINK}: {e}"))?;
    }
    create_user()?;
    for w in &setup.writes {
        write_file(&w.path, &w.data, w.mode)?;
    }
    Ok(())
}

/// Writes one file from the host; under the user's home it belongs to the user.
fn write_file(path: &str, data: &[u8], mode: u32) -> Result<(), String> {
    let p = Path::new(path);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(p)
        .map_err(|e| format!("writing {path}: {e}"))?;
    f.write_all(data).map_err(|e| format!("writing {path}: {e}"))?;
    if p.starts_with(format!("/home/{GUEST_USER}")) {
        chown(p, Some(GUEST_UID), Some(GUEST_UID)).map_err(|e| format!("chown {path}: {e}"))?;
    }
    Ok(())
}

/// Makes a folder or file of a share visible at `target`.
fn bind(source: &str, target: &str, read_only: bool) -> Result<(), String> {
    let is_dir = Path::new(source).is_dir();
    if is_dir {
        fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    } else {
        if let Some(parent) = Path::new(target).parent() {
            fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        if !Path::new(target).exists() {
            fs::File::create(target).map_err(|e| format!("creating mount point {target}: {e}"))?;
        }
    }
    let rec = if is_dir { MsFlags::MS_REC } else { MsFlags::empty() };
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)
        .map_err(|e| format!("bind {source} on {target}: {e}"))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| format!("remount {target}: {e}"))
}

/// Adds the unprivileged user (passwordless sudo inside the VM, home on the writable layer).
fn create_user() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let home = format!("/home/{GUEST_USER}");
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with(&format!("{GUEST_USER}:"))) {
        append("/etc/passwd", &format!("{GUEST_USER}:x:{GUEST_UID}:{GUEST_UID}:faize agent:{home}:/bin/bash\n"))?;
        append("/etc/group", &format!("{GUEST_USER}:x:{GUEST_UID}:\n"))?;
        append("/etc/shadow", &format!("{GUEST_USER}:*:19000:0:99999:7:::\n"))?;
    }
    // The images carry these already; writing them only when they differ saves copy-ups.
    ensure_file("/etc/sudoers.d/faize", &format!("{GUEST_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"), 0o440)?;
    // Shared files may belong to other users than the guest's; git must not refuse them.
    ensure_file("/etc/gitconfig", "[safe]\n\tdirectory = *\n", 0o644)?;
    match fs::metadata(&home) {
        Ok(m) if m.is_dir() && m.uid() == GUEST_UID && m.gid() == GUEST_UID => {}
        _ => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&home)
                .map_err(|e| format!("mkdir {home}: {e}"))?;
            chown(&home, Some(GUEST_UID), Some(GUEST_UID)).map_err(|e| format!("chown {home}: {e}"))?;
            fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {home}: {e}"))?;
        }
    }
    Ok(())
}

/// Writes `path` unless it already holds exactly `content`.
fn ensure_file(path: &str, content: &str, mode: u32) -> Result<(), String> {
    if fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    write_file(path, content.as_bytes(), mode)
}

fn append(path: impl AsRef<Path>, line: &str) -> Result<(), String> {
    let path = path.as_ref();
    let mut f = fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(line.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Resets the VM; with `reboot=t` and QEMU's `-no-reboot` this ends QEMU at once.
pub fn power_off() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
