//! One module per command; each takes parsed arguments and returns faize's exit code.

mod artifacts;
mod diff;
mod doctor;
mod logs;
mod network;
mod session;

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
    }
}
