//! `faize logs ID --net`: a session's network audit log, readably.

use anyhow::{bail, Result};
use faize_host::home::FaizeHome;
use faize_host::session::NET_LOG;

use crate::printer;

pub fn run(id: &str, net: bool) -> Result<i32> {
    if !net {
        bail!("say which log: --net (the network audit log)");
    }
    let home = FaizeHome::from_env()?;
    let dir = faize_host::state::find(&home, id)?.dir;
    if !dir.join(NET_LOG).exists() {
        bail!("session {id} has no network log (it made no DNS question or connection)");
    }
    for e in faize_net::proxy::read_log(&dir.join(NET_LOG))? {
        let s = |k: &str| e[k].as_str().map(str::to_string).or_else(|| e[k].as_u64().map(|n| n.to_string()));
        let target = match (s("name"), s("port")) {
            (Some(n), Some(p)) => format!("{n}:{p}"),
            (Some(n), None) => n,
            _ => s("rule").unwrap_or_default(),
        };
        let mut line = format!(
            "{:>14.3}  {:<7} {:<6} {target}",
            e["time"].as_f64().unwrap_or(0.0),
            s("event").unwrap_or_default(),
            s("decision").or_else(|| s("op")).unwrap_or_default()
        );
        if let Some(a) = s("address") {
            line += &format!(" -> {a}");
        }
        if let Some(r) = s("rule").filter(|_| e["event"] != "policy") {
            line += &format!("  rule {r}");
        }
        if let (Some(o), Some(i)) = (s("bytes_out"), s("bytes_in")) {
            line += &format!("  {o} B out, {i} B in, {} ms", s("duration_ms").unwrap_or_default());
        }
        if let Some(r) = s("reason") {
            line += &format!("  ({r})");
        }
        printer::out(&line);
    }
    Ok(0)
}
