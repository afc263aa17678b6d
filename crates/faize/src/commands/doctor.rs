//! `faize doctor`.

use anyhow::Result;
use faize_host::home::FaizeHome;

use crate::printer;

pub fn run() -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let checks = faize_host::doctor::run(&home);
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &checks {
        let mark = match (c.ok, c.optional) {
            (true, _) => "ok  ",
            (false, true) => "note",
            (false, false) => "FAIL",
        };
        printer::out(&format!("{mark} {:width$}  {}", c.name, c.detail));
    }
    let failed = checks.iter().filter(|c| !c.ok && !c.optional).count();
    if failed > 0 {
        printer::out(&format!("\n{failed} problem(s): ./setup.sh installs and builds everything"));
        return Ok(1);
    }
    Ok(0)
}
