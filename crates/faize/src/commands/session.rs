//! `faize start` and `faize run`: resolve the session, make sure the images exist, start its
//! supervisor (which boots the VM and owns it) and relay the terminal to it.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use faize_host::artifacts::{agent_binary, Artifacts, Kind};
use faize_host::attach::{self, Frame, Launch, ToSupervisor};
use faize_host::client::{self, Role};
use faize_host::home::FaizeHome;
use faize_host::session::{Images, Tools};
use faize_host::spec::{self, HostLimits, Request};
use faize_host::{state, supervisor};

use crate::cli::SessionArgs;
use crate::printer::{self, BuildProgress};

pub fn start(args: SessionArgs) -> Result<i32> {
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !terminal && !args.detach {
        bail!("faize start needs a terminal on stdin and stdout: use `faize run -- CMD` in scripts, or `faize start --detach`");
    }
    launch(args, true)
}

pub fn run(args: SessionArgs) -> Result<i32> {
    if args.command.is_empty() {
        bail!("faize run needs a command: faize run [FLAGS] -- CMD [ARGS...]");
    }
    if args.detach {
        bail!("faize run cannot --detach: its output would have nowhere to go; use `faize start --detach -- CMD`");
    }
    launch(args, false)
}

fn launch(args: SessionArgs, interactive: bool) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    if let Some(name) = &args.name {
        state::check_name(&home, name)?;
    }
    let request = Request {
        project: args.project,
        cpus: args.cpus,
        memory: args.memory,
        timeout: args.timeout,
        config: args.config,
        image: args.image,
        mounts: args.mounts,
        no_git_context: args.no_git_context,
        persist_credentials: args.persist_credentials,
        no_diff: args.no_diff,
        network: args.network,
        command: args.command,
        interactive,
    };
    // Resolved here to refuse bad input before anything starts (the supervisor resolves again).
    let spec = spec::resolve(&request, &home, &HostLimits::probe())?;
    for n in &spec.notices {
        printer::notice(n);
    }
    Tools::find()?;
    agent_binary()?;
    let artifacts = Artifacts::new(&home).with_extra_deps(spec.extra_deps.clone());
    artifacts
        .ensure(&[Kind::Kernel, spec.image, Kind::Initramfs], &BuildProgress::new())
        .context("preparing the VM images (./setup.sh builds them ahead of time)")?;
    if spec.image == Kind::Claude {
        if let Some(n) = artifacts.extra_deps_notice() {
            printer::notice(&n);
        }
    }
    let images = Images {
        kernel: artifacts.path(Kind::Kernel),
        initramfs: artifacts.path(Kind::Initramfs),
        root: artifacts.path(spec.image),
    };
    let launch = Launch {
        id: spec.id.clone(),
        name: args.name,
        request,
        images,
        tty: client::terminal_size(),
        term_env: client::term_env(),
        detach: args.detach,
    };
    let (supervisor, conn) = supervisor::spawn()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = rt.block_on(async {
        let mut conn = tokio::net::UnixStream::from_std({
            conn.set_nonblocking(true)?;
            conn
        })?;
        attach::write(&mut conn, &Frame::Control(ToSupervisor::Launch(Box::new(launch)))).await?;
        let role = if interactive { Role::Interactive } else { Role::Piped };
        client::relay(conn, role, &spec.id, args.detach).await
    });
    rt.shutdown_background();
    let code = code?;
    if args.detach {
        printer::out(&spec.id);
        printer::notice(&format!("session {} runs in the background: `faize attach {}` to use it", spec.id, spec.id));
    }
    // The supervisor is not waited for: it outlives this process when the terminal detaches,
    // and after the end it exits on its own (init reaps it).
    drop(supervisor);
    Ok(code)
}
