//! `faize ps`, `attach`, `exec`, `kill` and `prune`: sessions after their start. Each finds
//! sessions through `faize_host::state` (liveness checked on the lock, not read from disk) and
//! talks to a running one through its supervisor's sockets.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use faize_host::attach::{self, Frame, ToSupervisor};
use faize_host::client::{self, Role};
use faize_host::home::{runtime_base, FaizeHome};
use faize_host::state::{self, Entry};
use faize_host::supervisor;
use faize_host::units::format_size;

use crate::printer;

pub fn ps(all: bool, json: bool) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let entries: Vec<Entry> = state::list(&home).into_iter().filter(|e| all || e.is_running()).collect();
    if json {
        let rows: Vec<serde_json::Value> = entries.iter().map(json_row).collect();
        printer::out(&serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    printer::out(&format!(
        "{:<12}  {:<12}  {:<30}  {:<11}  {:>4}  {:>7}  {:<19}  {:>9}",
        "ID", "NAME", "PROJECT", "STATUS", "CPUS", "MEMORY", "STARTED", "TIME LEFT"
    ));
    for e in &entries {
        let s = &e.state;
        printer::out(&format!(
            "{:<12}  {:<12}  {:<30}  {:<11}  {:>4}  {:>7}  {:<19}  {:>9}",
            s.id,
            s.name.as_deref().unwrap_or("-"),
            shorten(&s.project.display().to_string(), 30),
            e.status_text(),
            s.cpus,
            format_size(s.memory_mib << 20),
            local_time(s.started_unix),
            e.time_left().map(|t| faize_host::units::format_duration(Duration::from_secs(t))).unwrap_or("-".into())
        ));
    }
    if entries.is_empty() && !all {
        printer::notice("no running sessions (`faize ps --all` shows ended ones too)");
    }
    Ok(0)
}

/// One session as `ps --json` prints it (the fields are documented in the README).
fn json_row(e: &Entry) -> serde_json::Value {
    let s = &e.state;
    serde_json::json!({
        "id": s.id,
        "name": s.name,
        "project": s.project,
        "command": s.command,
        "status": e.status(),
        "exit_code": s.exit_code,
        "reason": s.reason,
        "cpus": s.cpus,
        "memory_mib": s.memory_mib,
        "started": s.started_unix,
        "ended": s.ended_unix,
        "timeout_secs": s.timeout_secs,
        "time_left_secs": e.time_left(),
        "supervisor_pid": e.is_running().then_some(s.supervisor_pid),
    })
}

fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    format!("…{}", s.chars().skip(n - max + 1).collect::<String>())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn local_time(unix: u64) -> String {
    let (days, secs) = (unix / 86400, unix % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The running session `query` names, or an error saying what it is instead.
fn running(home: &FaizeHome, query: &str) -> Result<Entry> {
    let e = state::find(home, query)?;
    if !e.is_running() {
        bail!("session {} is not running ({}): `faize ps --all` lists sessions", e.state.id, e.status_text());
    }
    Ok(e)
}

fn runtime_socket(e: &Entry, name: &str) -> std::path::PathBuf {
    runtime_base().join(&e.state.id).join(name)
}

pub fn attach(query: &str) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let e = running(&home, query)?;
    let role = if e.state.interactive { Role::Interactive } else { Role::Piped };
    if role == Role::Interactive && !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        bail!("session {} runs in a terminal: attach to it from a terminal", e.state.id);
    }
    let id = e.state.id.clone();
    let socket = runtime_socket(&e, attach::SOCKET);
    block_on(async move {
        let mut conn = client::connect(&socket, &id).await?;
        attach::write(&mut conn, &Frame::Control(ToSupervisor::Attach { tty: client::terminal_size() })).await?;
        client::relay(conn, role, &id, false).await
    })
}

pub fn exec(query: &str, interactive: bool, tty: bool, command: Vec<String>) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let e = running(&home, query)?;
    if tty && !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        bail!("faize exec -t needs a terminal on stdin and stdout: leave out -t in scripts");
    }
    let id = e.state.id.clone();
    let socket = runtime_socket(&e, attach::SOCKET);
    block_on(async move {
        let mut conn = client::connect(&socket, &id).await?;
        let size =
            if tty { Some(client::terminal_size().unwrap_or(attach::Size { rows: 24, cols: 80 })) } else { None };
        let request = ToSupervisor::Exec { argv: command, tty: size, term_env: client::term_env() };
        attach::write(&mut conn, &Frame::Control(request)).await?;
        // The relay enters raw mode once the command runs; exec has no Running message, so
        // enter it here.
        let _raw = if tty { Some(faize_host::terminal::RawMode::enter()?) } else { None };
        client::relay(conn, Role::Exec { tty, stdin: interactive || tty }, &id, false).await
    })
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}

pub fn kill(queries: &[String], all: bool, force: bool, grace: u64) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let targets: Vec<Entry> = if all {
        state::list(&home).into_iter().filter(Entry::is_running).collect()
    } else {
        if queries.is_empty() {
            bail!("say which sessions to stop: faize kill ID... (or --all)");
        }
        queries.iter().map(|q| running(&home, q)).collect::<Result<_>>()?
    };
    let grace = Duration::from_secs(grace);
    let mut failed = 0;
    for e in &targets {
        match supervisor::stop(e, force, grace) {
            Ok(took) => printer::notice(&format!("stopped session {} in {:.1} s", e.state.id, took.as_secs_f64())),
            Err(err) => {
                failed += 1;
                printer::error(&err.context(format!("stopping session {}", e.state.id)));
            }
        }
    }
    if targets.is_empty() {
        printer::notice("no running sessions");
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

pub fn prune(all: bool, artifacts: bool, yes: bool) -> Result<i32> {
    let home = FaizeHome::from_env()?;
    let entries = state::list(&home);
    let running: Vec<&Entry> = entries.iter().filter(|e| e.is_running()).collect();
    if all && !running.is_empty() {
        if !yes {
            if !std::io::stdin().is_terminal() {
                bail!("{} sessions are running: add --yes to stop and remove them", running.len());
            }
            eprint!("faize: stop and remove {} running sessions? [y/N] ", running.len());
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                printer::notice("nothing removed");
                return Ok(1);
            }
        }
        for e in &running {
            supervisor::stop(e, false, faize_host::session::STOP_GRACE)?;
        }
    }
    let mut freed = 0u64;
    let mut removed = 0;
    // Session folders, including ones without a state file (left by older versions).
    for dir in std::fs::read_dir(home.sessions()).into_iter().flatten().flatten().map(|d| d.path()) {
        if state::supervised(&dir) {
            continue; // running: never removed without being stopped first
        }
        freed += disk_usage(&dir);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        let _ = std::fs::remove_dir_all(runtime_base().join(dir.file_name().unwrap_or_default()));
        removed += 1;
    }
    let mut what = format!("removed {removed} ended sessions");
    if artifacts {
        let dir = &home.artifacts;
        if dir.exists() {
            freed += disk_usage(dir);
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            what += " and the images";
        }
    }
    let kept = state::list(&home).iter().filter(|e| e.is_running()).count();
    printer::notice(&format!(
        "{what}, freed {}{}",
        format_size(freed),
        match kept {
            0 => String::new(),
            n => format!("; {n} running sessions kept"),
        }
    ));
    Ok(0)
}

/// Bytes a folder takes on disk (sparse files count what they use).
fn disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| disk_usage(&e.path())).sum::<u64>()
}
