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
            faize_host::control::send(&faize_host::control::find(&id)?, "allow", &rule)?;
            printer::notice(&format!("session {id} now allows {rule}"));
            Ok(0)
        }
        NetworkAction::Deny { id, rule } => {
            faize_host::control::send(&faize_host::control::find(&id)?, "deny", &rule)?;
            printer::notice(&format!("session {id} no longer allows {rule}"));
            Ok(0)
        }
    }
}
