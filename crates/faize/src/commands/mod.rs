//! One module per command; each takes parsed arguments and returns faize's exit code.

mod artifacts;
mod diff;
mod doctor;
mod logs;
mod network;
mod session;
mod sessions;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Start(args) => session::start(args),
        Command::Run(args) => session::run(args),
        Command::Artifacts { action } => artifacts::run(action),
        Command::Doctor => doctor::run(),
        Command::Diff { id, json } => diff::run(id.as_deref(), json),
        Command::Network { action } => network::run(action),
        Command::Logs { id, net } => logs::run(&id, net),
        Command::Ps { all, json } => sessions::ps(all, json),
        Command::Attach { id } => sessions::attach(&id),
        Command::Exec { id, interactive, tty, command } => sessions::exec(&id, interactive, tty, command),
        Command::Kill { ids, all, force, grace } => sessions::kill(&ids, all, force, grace),
        Command::Prune { all, artifacts, yes } => sessions::prune(all, artifacts, yes),
        Command::Claude { action: crate::cli::ClaudeAction::Rebuild } => artifacts::claude_rebuild(),
        Command::Supervise => Ok(faize_host::supervisor::main()),
    }
}
