//! `faize diff [ID] [--json]`: the change summary of an ended session, again.

use anyhow::Result;
use faize_host::changes;
use faize_host::home::FaizeHome;

use crate::printer;

pub fn run(id: Option<&str>, json: bool) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    // A name or an id prefix picks the session; without one, the latest.
    let id = id.map(|q| faize_host::state::find(&home, q).map(|e| e.state.id)).transpose()?;
    let saved = changes::load(&home.sessions(), id.as_deref())?;
    if json {
        printer::out(&serde_json::to_string_pretty(&saved)?);
    } else {
        printer::out(&format!("session {}", saved.session));
        for line in changes::render(&saved.shares).lines() {
            printer::out(line);
        }
    }
    Ok(0)
}
