//! `faize network presets`.

use anyhow::Result;
use faize_net::presets::{DEFAULT_RULES, PRESETS};

use crate::cli::NetworkAction;
use crate::printer;

pub fn run(action: NetworkAction) -> Result<i32> {
    match action {
        NetworkAction::Presets => {
            for p in PRESETS {
                let default = if DEFAULT_RULES.contains(&p.name) { " (default)" } else { "" };
                printer::out(&format!("{}{default}: {}", p.name, p.about));
                for h in p.hosts {
                    printer::out(&format!("    {h}"));
                }
            }
            printer::out("\nalso: all (the public internet), none, a domain, *.domain, an IP or CIDR, each with an optional :PORT");
            Ok(0)
        }
        NetworkAction::Allow { id, rule } => {
            faize_net::Policy::default().add(&rule)?;
            faize_host::control::send(&control_socket(&id)?, "allow", &rule)?;
            printer::notice(&format!("session {id} now allows {rule}"));
            Ok(0)
        }
        NetworkAction::Deny { id, rule } => {
            faize_host::control::send(&control_socket(&id)?, "deny", &rule)?;
            printer::notice(&format!("session {id} no longer allows {rule}"));
            Ok(0)
        }
    }
}

/// The control socket of the running session `query` (id, name or unique id prefix).
fn control_socket(query: &str) -> Result<std::path::PathBuf> {
    let home = faize_host::home::FaizeHome::from_env()?;
    let e = faize_host::state::find(&home, query)?;
    if !e.is_running() {
        anyhow::bail!(
            "session {} is not running ({}): network rules change only in a running session",
            e.state.id,
            e.status_text()
        );
    }
    Ok(faize_host::home::runtime_base().join(&e.state.id).join(faize_host::control::SOCKET))
}
