//! A running session's control socket: `faize network allow|deny ID RULE` change its network
//! policy without a restart. One JSON request per line (`{"op": "allow"|"deny", "rule": "..."}`),
//! one JSON answer per line (`{"ok": true}` or `{"ok": false, "error": "..."}`). The socket lives
//! in the session's private runtime folder (mode 0700).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use faize_net::proxy::Proxy;
use faize_net::Policy;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// File name of the socket in the session's runtime folder.
pub const SOCKET: &str = "control.sock";

/// Longest request accepted.
const MAX_REQUEST: usize = 4096;

/// Serves control requests for the session's life.
pub async fn serve(listener: UnixListener, policy: Arc<RwLock<Policy>>, proxy: Arc<Proxy>) {
    while let Ok((stream, _)) = listener.accept().await {
        let (policy, proxy) = (policy.clone(), proxy.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match apply(&line, &policy) {
                Ok((op, rule)) => {
                    proxy.log(serde_json::json!({"event": "policy", "op": op, "rule": rule}));
                    serde_json::json!({"ok": true})
                }
                Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
            };
            let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

fn apply(line: &str, policy: &RwLock<Policy>) -> Result<(String, String)> {
    let req: serde_json::Value = serde_json::from_str(line).context("the request is not JSON")?;
    let (Some(op), Some(rule)) = (req["op"].as_str(), req["rule"].as_str()) else {
        bail!("a request needs op and rule");
    };
    let mut p = policy.write().expect("policy lock");
    match op {
        "allow" => p.add(rule)?,
        "deny" => {
            if !p.remove(rule) {
                bail!("no rule {rule:?} in this session's policy (rules are removed as they were written)");
            }
        }
        _ => bail!("unknown op {op:?}: use allow or deny"),
    }
    Ok((op.to_string(), rule.to_string()))
}

/// Finds the control socket of the running session `id` (a unique prefix is enough).
pub fn find(id: &str) -> Result<PathBuf> {
    let base = crate::home::runtime_base();
    let found: Vec<PathBuf> = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(id))
        .map(|e| e.path().join(SOCKET))
        .filter(|p| p.exists())
        .collect();
    match found.len() {
        0 => bail!("no running session {id}: check the id (the session must still be running)"),
        1 => Ok(found.into_iter().next().expect("one")),
        n => bail!("{id} matches {n} running sessions: give more of the id"),
    }
}

/// Sends one request to a running session.
pub fn send(socket: &Path, op: &str, rule: &str) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to the session at {}", socket.display()))?;
    writeln!(s, "{}", serde_json::json!({"op": op, "rule": rule}))?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    let answer: serde_json::Value = serde_json::from_str(&line).context("the session's answer is not JSON")?;
    if answer["ok"] != true {
        bail!("{}", answer["error"].as_str().unwrap_or("the session refused the change"));
    }
    Ok(())
}
