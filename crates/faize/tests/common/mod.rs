//! Helpers shared by the CLI and VM tests: the real `faize` binary in an isolated FAIZE_HOME.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A throw-away faize home; images come from the shared artifacts folder.
pub struct Env {
    pub home: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self { home: tempfile::tempdir().unwrap() }
    }

    /// `faize ARGS` with this home.
    pub fn faize(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_faize"));
        c.env("FAIZE_HOME", self.home.path()).env("FAIZE_ARTIFACTS_DIR", artifacts_dir()).env_remove("FAIZE_ACCEL");
        c
    }

    /// Runs `faize ARGS` with `stdin` and returns its output.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .faize()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting faize");
        let mut si = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    pub fn config(&self, text: &str) -> PathBuf {
        let p = self.home.path().join("config.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Env {
    /// A test, passing or failing, never leaves a session running.
    fn drop(&mut self) {
        let _ = self.faize().args(["kill", "--all", "--force"]).output();
    }
}

pub fn artifacts_dir() -> PathBuf {
    match std::env::var_os("FAIZE_ARTIFACTS_DIR") {
        Some(p) if !p.is_empty() => p.into(),
        _ => Path::new(&std::env::var_os("HOME").expect("HOME")).join(".faize/artifacts"),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Decides whether VM tests run: they skip only when FAIZE_SKIP_VM_TESTS=1 is set on purpose,
/// and fail with a clear message when QEMU or the images are missing.
pub fn vm_tests_enabled() -> bool {
    if std::env::var("FAIZE_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("FAIZE_SKIP_VM_TESTS=1: skipping a VM test");
        return false;
    }
    let env = Env::new();
    let out = env.faize().arg("artifacts").output().expect("running faize artifacts");
    let listing = text(&out.stdout);
    // The initramfs is rebuilt in milliseconds when the agent changes; the others take minutes.
    let ready = ["kernel", "claude"]
        .iter()
        .all(|k| listing.lines().any(|l| l.starts_with(k) && l.split_whitespace().nth(1) == Some("ready")));
    assert!(
        ready,
        "VM tests need the images in {}: run ./setup.sh (or set FAIZE_SKIP_VM_TESTS=1 to skip them on purpose)\n{listing}",
        artifacts_dir().display()
    );
    let doctor = env.faize().arg("doctor").output().unwrap();
    let d = text(&doctor.stdout);
    for tool in ["qemu-system-x86_64", "virtiofsd", "vhost-device-vsock"] {
        assert!(
            d.lines().any(|l| l.starts_with("ok") && l.contains(tool)),
            "VM tests need {tool}: run ./setup.sh (or set FAIZE_SKIP_VM_TESTS=1)\n{d}"
        );
    }
    true
}
