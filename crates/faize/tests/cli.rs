//! The CLI's behaviour on bad input, without booting a VM: every error is precise, says what to
//! do, exits 125, and happens before any VM starts.

mod common;

use common::{text, Env};

fn fails_with(env: &Env, args: &[&str], needle: &str) {
    fails_with_vars(env, args, &[], needle);
}

/// As [`fails_with`], with extra environment variables for faize.
fn fails_with_vars(env: &Env, args: &[&str], vars: &[(&str, &str)], needle: &str) {
    let out = env.faize().args(args).envs(vars.iter().copied()).stdin(std::process::Stdio::null()).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
    assert!(err.starts_with("faize: "), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err}");
    // Nothing was started: no session folder.
    assert!(!env.home.path().join("sessions").exists(), "{args:?} created a session");
}

#[test]
fn bad_flags_are_refused_before_any_vm_starts() {
    let env = Env::new();
    fails_with(&env, &["run", "--memory", "lots", "--", "true"], "invalid size \"lots\"");
    fails_with(&env, &["run", "--memory", "1T", "--", "true"], "more than this host");
    fails_with(&env, &["run", "--cpus", "4096", "--", "true"], "use --cpus");
    fails_with(&env, &["run", "-t", "soon", "--", "true"], "invalid duration \"soon\"");
    fails_with(&env, &["run", "-p", "/no/such/project", "--", "true"], "/no/such/project does not exist");
    fails_with(&env, &["run", "--image", "alpine", "--", "true"], "unknown image");
    fails_with(&env, &["run"], "needs a command");
    fails_with(&env, &["start"], "needs a terminal");
}

#[test]
fn bad_config_is_refused_with_the_file_and_key() {
    let env = Env::new();
    env.config("defaults:\n  cpus: 1\n  memroy: 2GB\n");
    fails_with(&env, &["run", "--", "true"], "unknown field `memroy`");
    env.config("defaults:\n  memory: plenty\n");
    fails_with(&env, &["run", "--", "true"], "invalid size \"plenty\"");
    env.config("vm:\n  accel: hvf\n");
    fails_with(&env, &["run", "--", "true"], "kvm, tcg or auto");
    fails_with(&env, &["run", "--config", "/no/such/config.yaml", "--", "true"], "/no/such/config.yaml");
}

#[test]
fn bad_clipboard_and_login_settings_are_refused() {
    let env = Env::new();
    env.config("open_urls: [\"claude.ai/login\"]\n");
    fails_with(&env, &["run", "--", "true"], "open_urls: \"claude.ai/login\" is not a host name");
    env.config("clipboard:\n  copy_to_host: maybe\n");
    fails_with(&env, &["run", "--", "true"], "copy_to_host");
    env.config("");
    let bad_timeout = "FAIZE_CALLBACK_TIMEOUT=\"5m\" is not a whole number of seconds";
    fails_with_vars(&env, &["run", "--", "true"], &[("FAIZE_CALLBACK_TIMEOUT", "5m")], bad_timeout);
}

#[test]
fn missing_qemu_points_to_the_setup_command() {
    let env = Env::new();
    let out =
        env.faize().args(["run", "--", "true"]).env("FAIZE_QEMU", "").env("PATH", "/nonexistent").output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("qemu-system-x86_64 was not found") && err.contains("setup.sh"), "{err}");
}

#[test]
fn version_and_artifact_listing() {
    let env = Env::new();
    let out = env.faize().arg("--version").output().unwrap();
    assert_eq!(text(&out.stdout).trim(), format!("faize {}", env!("CARGO_PKG_VERSION")));
    let out = env.faize().args(["artifacts", "build", "everything"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("use kernel, rootfs, claude, initramfs or all"));
    let out = env.faize().arg("artifacts").env("FAIZE_ARTIFACTS_DIR", env.home.path().join("none")).output().unwrap();
    let listing = text(&out.stdout);
    for k in ["kernel", "rootfs", "claude", "initramfs"] {
        assert!(listing.lines().any(|l| l.starts_with(k) && l.contains("missing")), "{listing}");
    }
}

#[test]
fn a_failed_image_build_names_the_step_and_shows_its_output() {
    let env = Env::new();
    let art = env.home.path().join("art");
    let out = env
        .faize()
        .args(["artifacts", "build", "kernel"])
        .env("FAIZE_ARTIFACTS_DIR", &art)
        .env("FAIZE_KERNEL_SOURCE", "/nonexistent/linux-source.tar.xz")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("building the kernel image failed at step \"checking the kernel source\""), "{err}");
    assert!(err.contains("install the linux-source-6.1 package"), "the build's own output must be shown: {err}");
    assert!(err.contains("full log: "), "{err}");
    let left: Vec<_> = std::fs::read_dir(&art).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("vmlinux")), "no image, whole or partial: {left:?}");
}

#[test]
fn bad_mounts_and_blocked_paths_are_refused_before_any_vm_starts() {
    let env = Env::new();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::create_dir_all(h.join(".ssh")).unwrap();
    std::fs::create_dir_all(h.join("proj")).unwrap();
    std::fs::write(h.join("notes.txt"), "n").unwrap();
    let run = |args: &[&str]| {
        let out = env
            .faize()
            .env("HOME", h)
            .args(["run", "-p", h.join("proj").to_str().unwrap()])
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(!env.home.path().join("sessions").exists(), "{args:?} started a session");
        text(&out.stderr)
    };
    let ssh = h.join(".ssh").display().to_string();
    assert!(run(&["-m", &ssh]).contains("inside the blocked path"));
    assert!(run(&["-m", "~"]).contains("contains the blocked path"));
    assert!(run(&["-m", "/"]).contains("contains the blocked path"));
    assert!(run(&["-m", "~/nope"]).contains("does not exist"));
    assert!(run(&["-m", "~/proj:relative"]).contains("is not absolute"));
    assert!(run(&["-m", "~/proj:/etc"]).contains("system folder /etc"));
    assert!(run(&["-m", "~/proj:/mnt/../usr"]).contains("'..'"));
    assert!(run(&["-m", "~/notes.txt:rw"]).contains("only be mounted read-only"));
    assert!(run(&["-m", "~/proj:/mnt/a", "-m", "~/notes.txt:/mnt/a"]).contains("same target"));
    assert!(run(&["-m", "~/a:b:c:d"]).contains("\\:"));
    // The project itself is checked the same way.
    let out = env.faize().env("HOME", h).args(["run", "-p", h.to_str().unwrap(), "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("contains the blocked path"), "{}", text(&out.stderr));
    // So are the config's additions.
    env.config(&format!("blocked_paths:\n  - {}\n", h.join("proj").display()));
    let out = env
        .faize()
        .env("HOME", h)
        .args(["run", "-p", h.join("proj").to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("inside the blocked path"), "{}", text(&out.stderr));
}

#[test]
fn diff_without_sessions_says_so() {
    let env = Env::new();
    let out = env.faize().args(["diff"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("no change summary yet"), "{}", text(&out.stderr));
}

#[test]
fn network_presets_are_listed_and_bad_rules_refused() {
    let env = Env::new();
    let out = env.faize().args(["network", "presets"]).output().unwrap();
    let listing = text(&out.stdout);
    for p in [
        "npm (default)",
        "pypi (default)",
        "github (default)",
        "anthropic (default)",
        "openai",
        "bun",
        "debian",
        "crates",
        "go",
    ] {
        assert!(listing.contains(p), "{p} missing:\n{listing}");
    }
    assert!(listing.contains("codeload.github.com") && listing.contains("objects.githubusercontent.com"));
    env.config("networks:\n  - npm\n  - a.*.b\n");
    fails_with(&env, &["run", "--", "true"], "invalid network rule \"a.*.b\"");
    env.config("networks:\n  - example.com:70000\n");
    fails_with(&env, &["run", "--", "true"], "1 to 65535");
}

#[test]
fn session_commands_refuse_bad_input_and_unknown_sessions() {
    let env = Env::new();
    fails_with(&env, &["run", "--detach", "--", "true"], "cannot --detach");
    fails_with(&env, &["run", "--name", "a b", "--", "true"], "--name \"a b\"");
    fails_with(&env, &["run", "--name=.x", "--", "true"], "starting with a letter or digit");
    fails_with(&env, &["attach", "nosuch"], "no session \"nosuch\"");
    fails_with(&env, &["exec", "nosuch", "--", "true"], "no session \"nosuch\"");
    fails_with(&env, &["kill"], "say which sessions");
    fails_with(&env, &["network", "allow", "nosuch", "example.com"], "no session \"nosuch\"");
    env.config("claude:\n  extra_deps: ['curl; rm -rf /']\n");
    fails_with(&env, &["run", "--", "true"], "not a Debian package name");
    fails_with(&env, &["claude", "rebuild"], "not a Debian package name");
    // Nothing to list, stop or remove is not an error.
    std::fs::remove_file(env.home.path().join("config.yaml")).unwrap();
    for args in [&["ps"][..], &["ps", "--all", "--json"], &["kill", "--all"], &["prune"]] {
        let out = env.run(args, b"");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(text(&env.run(&["ps", "--json"], b"").stdout).trim(), "[]");
}
