//! The `faize` command line. Each command is a small file under `commands/` that calls
//! `faize-host`; user-facing output goes through `printer`.

mod cli;
mod commands;
mod printer;

use std::process::ExitCode;

use clap::Parser;
use faize_host::session::exit_code;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let filter = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FAIZE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match commands::dispatch(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            printer::error(&e);
            ExitCode::from(exit_code::FAIZE_ERROR as u8)
        }
    }
}
