//! `faize start` and `faize run`: resolve the session, make sure the images exist, boot.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use faize_host::artifacts::{agent_binary, Artifacts, Kind};
use faize_host::home::FaizeHome;
use faize_host::session::{self, Images, Tools};
use faize_host::spec::{self, HostLimits, Request};

use crate::cli::SessionArgs;
use crate::printer::{self, BuildProgress};

pub fn start(args: SessionArgs) -> Result<i32> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        bail!("faize start needs a terminal on stdin and stdout: use `faize run -- CMD` in scripts");
    }
    launch(args, true)
}

pub fn run(args: SessionArgs) -> Result<i32> {
    if args.command.is_empty() {
        bail!("faize run needs a command: faize run [FLAGS] -- CMD [ARGS...]");
    }
    launch(args, false)
}

fn launch(args: SessionArgs, interactive: bool) -> Result<i32> {
    let home = FaizeHome::from_env()?;
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
    let spec = spec::resolve(&request, &home, &HostLimits::probe())?;
    for n in &spec.notices {
        printer::notice(n);
    }
    let tools = Tools::find()?;
    agent_binary()?;
    let artifacts = Artifacts::new(&home);
    artifacts
        .ensure(&[Kind::Kernel, spec.image, Kind::Initramfs], &BuildProgress::new())
        .context("preparing the VM images (./setup.sh builds them ahead of time)")?;
    let images = Images {
        kernel: artifacts.path(Kind::Kernel),
        initramfs: artifacts.path(Kind::Initramfs),
        root: artifacts.path(spec.image),
    };
    // A current-thread runtime: helper processes are spawned from this thread, and their
    // parent-death signal is tied to it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = rt.block_on(session::run(&spec, &home, &tools, &images));
    rt.shutdown_background();
    code
}
