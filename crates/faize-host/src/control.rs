//! A running session's control socket: `faize network allow|deny ID RULE` change its network
//! policy without a restart, `faize kill ID` stops it. One JSON request per line
//! (`{"op": "allow"|"deny", "rule": "..."}` or `{"op": "stop", "grace_ms": N}`), one JSON answer
//! per line (`{"ok": true}` or `{"ok": false, "error": "..."}`). The socket lives in the
//! session's private runtime folder (mode 0700).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use faize_net::proxy::Proxy;
use faize_net::Policy;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// File name of the socket in the session's runtime folder.
pub const SOCKET: &str = "control.sock";

/// Longest request accepted.
const MAX_REQUEST: usize = 4096;

/// Called with the grace period when a stop is asked for.
pub type OnStop = Box<dyn Fn(Duration) + Send + Sync>;

/// Serves control requests for the session's life.
pub async fn serve(listener: UnixListener, policy: Arc<RwLock<Policy>>, proxy: Arc<Proxy>, on_stop: OnStop) {
    let on_stop = Arc::new(on_stop);
    while let Ok((stream, _)) = listener.accept().await {
        let (policy, proxy, on_stop) = (policy.clone(), proxy.clone(), on_stop.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match apply(&line, &policy) {
                Ok(Applied::Stop(grace)) => {
                    on_stop(grace);
                    serde_json::json!({"ok": true})
                }
                Ok(Applied::Policy(op, rule)) => {
                    proxy.log(serde_json::json!({"event": "policy", "op": op, "rule": rule}));
                    serde_json::json!({"ok": true})
                }
                Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
            };
            let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

enum Applied {
    Policy(String, String),
    Stop(Duration),
}

fn apply(line: &str, policy: &RwLock<Policy>) -> Result<Applied> {
    let req: serde_json::Value = serde_json::from_str(line).context("the request is not JSON")?;
    if req["op"] == "stop" {
        let grace = req["grace_ms"].as_u64().context("stop needs grace_ms")?;
        return Ok(Applied::Stop(Duration::from_millis(grace.min(3_600_000))));
    }
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
    Ok(Applied::Policy(op.to_string(), rule.to_string()))
}

/// Sends one policy change to a running session.
pub fn send(socket: &Path, op: &str, rule: &str) -> Result<()> {
    request(socket, &serde_json::json!({"op": op, "rule": rule}))
}

/// Asks a running session to stop, giving its program `grace` after SIGTERM.
pub fn stop(socket: &Path, grace: Duration) -> Result<()> {
    request(socket, &serde_json::json!({"op": "stop", "grace_ms": grace.as_millis() as u64}))
}

fn request(socket: &Path, body: &serde_json::Value) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to the session at {}", socket.display()))?;
    writeln!(s, "{body}")?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    let answer: serde_json::Value = serde_json::from_str(&line).context("the session's answer is not JSON")?;
    if answer["ok"] != true {
        bail!("{}", answer["error"].as_str().unwrap_or("the session refused the change"));
    }
    Ok(())
}
