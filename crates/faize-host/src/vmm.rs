//! The command lines of QEMU and its two vhost-user sidecars, built by pure functions from typed
//! specs. This is the seam to the VMM: nothing else in faize knows QEMU's flags.

use std::ffi::OsString;
use std::path::PathBuf;

use faize_protocol::{ROOT_DISK_SERIAL, SCRATCH_DISK_SERIAL};

use crate::accel::Accel;

/// One virtio-fs share as QEMU sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsDevice {
    pub tag: String,
    pub socket: PathBuf,
}

/// Everything that decides QEMU's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub root_image: PathBuf,
    pub scratch_disk: PathBuf,
    /// Where the kernel's console goes.
    pub console_log: PathBuf,
    pub vsock_socket: PathBuf,
    pub fs: Vec<FsDevice>,
    /// TSC frequency for TCG (the kernel hangs calibrating it otherwise).
    pub tsc_khz: Option<u64>,
}

/// The kernel command line.
pub fn kernel_cmdline(spec: &QemuSpec) -> String {
    let mut c = String::from("console=ttyS0 quiet loglevel=1 reboot=t panic=-1 rdinit=/init dummy.numdummies=1");
    c += &format!(" {}={}", faize_protocol::CMDLINE_MARKER, faize_protocol::PROTOCOL_VERSION);
    if spec.accel == Accel::Tcg {
        if let Some(khz) = spec.tsc_khz {
            c += &format!(" tsc_early_khz={khz}");
        }
    }
    c
}

/// QEMU's arguments (without the program name).
pub fn qemu_args(spec: &QemuSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: String| a.push(s.into());
    push("-M".into());
    push("microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem".into());
    match spec.accel {
        Accel::Kvm => {
            push("-accel".into());
            push("kvm".into());
            push("-cpu".into());
            push("host".into());
        }
        Accel::Tcg => {
            push("-accel".into());
            push("tcg".into());
            push("-cpu".into());
            push("max".into());
        }
    }
    push("-smp".into());
    push(spec.cpus.to_string());
    push("-m".into());
    push(format!("{}M", spec.memory_mib));
    // vhost-user devices need the guest's memory in shared memory.
    push("-object".into());
    push(format!("memory-backend-memfd,id=mem,size={}M,share=on", spec.memory_mib));
    for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
        push(flag.into());
    }
    // QEMU's own seccomp filter: no obsolete syscalls, no privilege changes, no new processes.
    push("-sandbox".into());
    push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into());
    push("-display".into());
    push("none".into());
    push("-global".into());
    push("virtio-mmio.force-legacy=false".into());
    push("-kernel".into());
    push(path(&spec.kernel));
    push("-initrd".into());
    push(path(&spec.initramfs));
    push("-append".into());
    push(kernel_cmdline(spec));
    push("-chardev".into());
    push(format!("file,id=console,path={}", escape(&spec.console_log)));
    push("-serial".into());
    push("chardev:console".into());
    push("-drive".into());
    push(format!("id=root,file={},format=raw,if=none,readonly=on", escape(&spec.root_image)));
    push("-device".into());
    push(format!("virtio-blk-device,drive=root,serial={ROOT_DISK_SERIAL}"));
    push("-drive".into());
    push(format!("id=scratch,file={},format=raw,if=none,cache=unsafe,discard=unmap", escape(&spec.scratch_disk)));
    push("-device".into());
    push(format!("virtio-blk-device,drive=scratch,serial={SCRATCH_DISK_SERIAL}"));
    push("-device".into());
    push("virtio-rng-device".into());
    push("-chardev".into());
    push(format!("socket,id=vsock,path={}", escape(&spec.vsock_socket)));
    push("-device".into());
    push("vhost-user-vsock-device,chardev=vsock".into());
    for fs in &spec.fs {
        push("-chardev".into());
        push(format!("socket,id={},path={}", fs.tag, escape(&fs.socket)));
        push("-device".into());
        // The tag goes to QEMU, never to virtiofsd (QEMU 7.1-8.0 crash on virtiofsd's --tag).
        push(format!("vhost-user-fs-device,chardev={},tag={}", fs.tag, fs.tag));
    }
    a
}

/// QEMU option values are comma-separated; a comma in a path is written twice.
fn escape(p: &std::path::Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One virtiofsd instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtiofsdSpec {
    pub socket: PathBuf,
    pub shared_dir: PathBuf,
    pub read_only: bool,
    /// The invoking host user and group: everything the guest creates is owned by them, and
    /// their files appear in the guest as the guest user's.
    pub host_uid: u32,
    pub host_gid: u32,
}

/// virtiofsd's arguments.
pub fn virtiofsd_args(spec: &VirtiofsdSpec) -> Vec<OsString> {
    let guest = faize_protocol::GUEST_UID;
    let mut a: Vec<OsString> = vec![
        format!("--socket-path={}", spec.socket.display()).into(),
        "--shared-dir".into(),
        spec.shared_dir.clone().into_os_string(),
        "--sandbox=namespace".into(),
        "--cache=auto".into(),
        "--inode-file-handles=never".into(),
        "--log-level=error".into(),
        // Without CAP_MKNOD and CAP_FSETID the guest cannot create device nodes, and written
        // files lose their setgid bit; setuid bits are stripped after the session (see session.rs).
        "--modcaps=-mknod:-fsetid".into(),
    ];
    for kind in ["uid", "gid"] {
        let host = if kind == "uid" { spec.host_uid } else { spec.host_gid };
        a.push(format!("--translate-{kind}=squash-guest:0:{host}:4294967295").into());
        a.push(format!("--translate-{kind}=host:{host}:{guest}:1").into());
    }
    if spec.read_only {
        a.push("--readonly".into());
    }
    a
}

/// vhost-device-vsock's arguments: guest connections to the host on port P arrive on the Unix
/// socket `<uds>_P`.
pub fn vhost_vsock_args(vhost_socket: &std::path::Path, uds: &std::path::Path) -> Vec<OsString> {
    vec![
        "--vm".into(),
        format!("guest-cid={},socket={},uds-path={}", faize_protocol::GUEST_CID, vhost_socket.display(), uds.display())
            .into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> QemuSpec {
        QemuSpec {
            accel,
            cpus: 2,
            memory_mib: 4096,
            kernel: "/a/vmlinux".into(),
            initramfs: "/a/initramfs.cpio".into(),
            root_image: "/a/claude,1.erofs".into(),
            scratch_disk: "/s/scratch.img".into(),
            console_log: "/s/console.log".into(),
            vsock_socket: "/r/vsock-vhost.sock".into(),
            fs: vec![FsDevice { tag: "fs0".into(), socket: "/r/fs0.sock".into() }],
            tsc_khz: Some(2_596_142),
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn tcg_command_line_snapshot() {
        let got = joined(&qemu_args(&spec(Accel::Tcg)));
        let want = "-M microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem \
            -accel tcg -cpu max -smp 2 -m 4096M -object memory-backend-memfd,id=mem,size=4096M,share=on \
            -nodefaults -no-user-config -no-reboot \
            -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -display none -global virtio-mmio.force-legacy=false \
            -kernel /a/vmlinux -initrd /a/initramfs.cpio \
            -append console=ttyS0 quiet loglevel=1 reboot=t panic=-1 rdinit=/init dummy.numdummies=1 faize.protocol=PROTO tsc_early_khz=2596142 \
            -chardev file,id=console,path=/s/console.log -serial chardev:console \
            -drive id=root,file=/a/claude,,1.erofs,format=raw,if=none,readonly=on \
            -device virtio-blk-device,drive=root,serial=faize-root \
            -drive id=scratch,file=/s/scratch.img,format=raw,if=none,cache=unsafe,discard=unmap \
            -device virtio-blk-device,drive=scratch,serial=faize-scratch -device virtio-rng-device \
            -chardev socket,id=vsock,path=/r/vsock-vhost.sock -device vhost-user-vsock-device,chardev=vsock \
            -chardev socket,id=fs0,path=/r/fs0.sock -device vhost-user-fs-device,chardev=fs0,tag=fs0";
        let want = want.replace("PROTO", &faize_protocol::PROTOCOL_VERSION.to_string());
        assert_eq!(got, want.split_whitespace().collect::<Vec<_>>().join(" "));
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_no_tsc_hint() {
        let got = joined(&qemu_args(&spec(Accel::Kvm)));
        assert!(got.contains("-accel kvm -cpu host"));
        assert!(!got.contains("tsc_early_khz"));
        assert!(!got.contains("-netdev") && !got.contains("virtio-net"), "the guest must have no network device");
    }

    #[test]
    fn virtiofsd_translates_ids_and_drops_caps() {
        let a = joined(&virtiofsd_args(&VirtiofsdSpec {
            socket: "/r/fs0.sock".into(),
            shared_dir: "/home/u/my proj".into(),
            read_only: true,
            host_uid: 1234,
            host_gid: 100,
        }));
        assert!(a.contains("--translate-uid=squash-guest:0:1234:4294967295 --translate-uid=host:1234:1000:1"));
        assert!(a.contains("--translate-gid=squash-guest:0:100:4294967295 --translate-gid=host:100:1000:1"));
        assert!(a.contains("--modcaps=-mknod:-fsetid"));
        assert!(a.ends_with("--readonly"));
        assert!(!a.contains("--tag"));
    }

    #[test]
    fn vsock_sidecar() {
        let a = joined(&vhost_vsock_args("/r/v.sock".as_ref(), "/r/vsock".as_ref()));
        assert_eq!(a, "--vm guest-cid=3,socket=/r/v.sock,uds-path=/r/vsock");
    }
}
