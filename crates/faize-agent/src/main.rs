//! `faize-agent`: the guest's PID 1. It runs a fixed list of phases, each in its own module:
//!
//! 1. [`system::early_mounts`]: /proc, /sys, /dev in the initramfs;
//! 2. [`channel::Channel::connect`]: the vsock control connection and the version handshake;
//! 3. [`system::switch_root`]: read-only image + writable layer as an overlay, then chroot into it;
//! 4. [`system::prepare`]: clock, hostname, loopback, shares, the unprivileged user;
//! 5. [`program::run`]: the program, in a pseudo-terminal or with pipes, until it exits;
//! 6. sync and report the exit status; the host then stops the VM.
//!
//! Any error ends in [`fatal`]: the reason goes to the console (and to the host when the channel
//! is up), then the VM is reset, which makes QEMU (`-no-reboot`) exit. The VM never hangs.

mod channel;
mod clipboard;
mod net;
mod program;
mod system;

use std::time::Duration;

use faize_protocol::{GuestMsg, HostMsg, PROTOCOL_VERSION};

use crate::channel::Channel;

/// Kernel parameter that makes the agent print [`PROBE_MARKER`] and power off at once.
const PROBE_PARAM: &str = "faize.probe";
const PROBE_MARKER: &str = "faize-agent: probe ready";

fn main() {
    std::panic::set_hook(Box::new(|info| fatal(None, &format!("panic: {info}"))));
    if std::process::id() != 1 {
        eprintln!("faize-agent: this is the init program of a faize VM and only runs as PID 1");
        std::process::exit(2);
    }
    let mut channel = None;
    if let Err(e) = run(&mut channel) {
        fatal(channel.as_ref(), &e);
    }
    system::power_off();
}

fn run(channel_slot: &mut Option<Channel>) -> Result<(), String> {
    system::early_mounts()?;
    if std::fs::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|w| w == PROBE_PARAM) {
        // Benchmarks boot the kernel and this initramfs alone to time a bare boot.
        eprintln!("{PROBE_MARKER}");
        return Ok(());
    }
    // The firewall rules load from the image while the host answers and the root is set up.
    system::mount_image()?;
    let rules = net::load_rules_in_background(system::IMAGE_ROOT);
    let channel = channel_slot.insert(Channel::connect()?);
    channel.send(&GuestMsg::Hello { version: PROTOCOL_VERSION, agent_version: env!("CARGO_PKG_VERSION").into() })?;
    let setup = match channel.recv()? {
        Some(HostMsg::Setup(s)) if s.version == PROTOCOL_VERSION => s,
        Some(HostMsg::Setup(s)) => {
            return Err(format!("host speaks protocol {} but this agent speaks {PROTOCOL_VERSION}", s.version))
        }
        Some(other) => return Err(format!("expected Setup, got {other:?}")),
        None => return Err("host closed the connection during the handshake".into()),
    };
    system::switch_root()?;
    system::prepare(&setup)?;
    // Without its redirect the VM simply has no network: nothing can leave it anyway.
    let no_network = |e: String| {
        let _ = channel.send(&GuestMsg::Stderr(format!("faize: the VM has no network: {e}\n").into_bytes()));
    };
    let network = net::start().map_err(no_network).is_ok();
    channel.send(&GuestMsg::Ready)?;

    let exec = match channel.recv()? {
        Some(HostMsg::Exec(e)) => e,
        Some(HostMsg::Shutdown { .. }) | None => return Ok(()),
        Some(other) => return Err(format!("expected Exec, got {other:?}")),
    };
    // The firewall rules load while the host sends the program; they are in place before it runs.
    match rules.wait() {
        Err(e) if network => no_network(e),
        _ => {}
    }
    clipboard::serve(channel.clone());
    let status = program::run(channel, exec)?;
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    channel.send(&GuestMsg::Exit(status))?;
    // The host stops the VM as soon as it has the status; wait for that, but not forever.
    channel.wait_for_close(Duration::from_secs(10));
    Ok(())
}

/// Reports an unrecoverable error and resets the VM.
fn fatal(channel: Option<&Channel>, msg: &str) -> ! {
    eprintln!("faize-agent: fatal: {msg}");
    if let Some(c) = channel {
        let _ = c.send(&GuestMsg::Fatal(msg.to_string()));
    }
    system::power_off()
}
