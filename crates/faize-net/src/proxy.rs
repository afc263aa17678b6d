//! The host side of the guest's network: every DNS question and TCP connection of the guest
//! arrives here over vsock ([`faize_protocol::net`]). The proxy decides again (the guest is not
//! trusted), resolves names itself, refuses forbidden addresses, connects, copies bytes both ways
//! and appends every decision to the session's audit log (`net.jsonl`), which only the host
//! writes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use faize_protocol::net::{NetReply, NetRequest};
use faize_protocol::{encode_frame, FrameBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::policy::{Decision, Policy};
use crate::resolve::Resolver;

/// The name that reaches the host's loopback, for the ports a rule names.
pub const HOST_ALIAS: &str = "host.faize.internal";

/// Raises this process's open-file limit to its hard limit (a proxy holds two descriptors per
/// connection).
pub fn raise_fd_limit() {
    let mut lim = libc_rlimit();
    if lim.0 < lim.1 {
        lim.0 = lim.1;
        set_rlimit(lim);
    }
}

fn libc_rlimit() -> (u64, u64) {
    let mut r = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

fn set_rlimit((cur, max): (u64, u64)) {
    let r = nix::libc::rlimit { rlim_cur: cur, rlim_max: max };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &r) };
}

/// Limits that keep one guest from exhausting the host.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), max_connections: 4096 }
    }
}

/// One session's proxy.
pub struct Proxy {
    policy: Arc<RwLock<Policy>>,
    /// Names mapped to addresses explicitly (`network.hosts`); used instead of DNS.
    hosts: HashMap<String, IpAddr>,
    /// Where other names are resolved (`network.resolver`, else the host's resolver).
    resolver: Resolver,
    log: Mutex<Option<std::fs::File>>,
    limits: Limits,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Proxy {
    pub fn new(
        policy: Arc<RwLock<Policy>>,
        hosts: HashMap<String, IpAddr>,
        resolver: Resolver,
        log: &Path,
        limits: Limits,
    ) -> Self {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).ok();
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let mut hosts = hosts;
        hosts.entry(HOST_ALIAS.into()).or_insert(IpAddr::from([127, 0, 0, 1]));
        Self { policy, hosts, resolver, log: Mutex::new(file), limits, slots }
    }

    /// Serves guest connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors or memory: wait for connections to end, never stop.
                    self.log(serde_json::json!({"event": "limit", "reason": format!("accepting: {e}")}));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.log(serde_json::json!({"event": "limit", "reason": format!("more than {} connections at once", self.limits.max_connections)}));
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.handle(stream).await;
                drop(permit);
            });
        }
    }

    async fn handle(&self, mut guest: UnixStream) {
        let (request, early) = match read_request(&mut guest).await {
            Ok(r) => r,
            Err(e) => {
                self.log(serde_json::json!({"event": "bad-request", "error": e}));
                return;
            }
        };
        match request {
            NetRequest::Resolve { name } => {
                let d = self.policy.read().expect("policy lock").decide_name(&name, None);
                self.log(serde_json::json!({"event": "dns", "name": name, "decision": word(&d), "rule": d.rule, "reason": d.reason}));
                let _ = reply(&mut guest, &d).await;
            }
            NetRequest::Connect { host, port } => self.connect(guest, host, port, early).await,
        }
    }

    /// `early`: bytes the guest sent after its request, before the reply; they go first.
    async fn connect(&self, mut guest: UnixStream, host: String, port: u16, early: Vec<u8>) {
        let started = Instant::now();
        let mut entry = serde_json::json!({"event": "connect", "name": host, "port": port});
        let (decision, target) = self.decide(&host, port).await;
        entry["decision"] = word(&decision).into();
        entry["rule"] = decision.rule.clone().into();
        if !decision.allowed {
            entry["reason"] = decision.reason.clone().into();
            self.log(entry);
            let _ = reply(&mut guest, &decision).await;
            return;
        }
        let addr = target.expect("an allowed connection has an address");
        entry["address"] = addr.ip().to_string().into();
        let tcp = match tokio::time::timeout(self.limits.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return self.fail(guest, entry, format!("connecting to {addr}: {e}")).await,
            Err(_) => {
                return self
                    .fail(guest, entry, format!("no answer from {addr} within {:?}", self.limits.connect_timeout))
                    .await
            }
        };
        if reply(&mut guest, &decision).await.is_err() {
            return;
        }
        let mut tcp = tcp;
        if !early.is_empty() && tcp.write_all(&early).await.is_err() {
            return;
        }
        let (up, down, error) = crate::splice::copy_bidirectional(&guest, &tcp).await;
        if let Some(e) = error {
            entry["error"] = e.to_string().into();
        }
        entry["bytes_out"] = up.into();
        entry["bytes_in"] = down.into();
        entry["duration_ms"] = (started.elapsed().as_millis() as u64).into();
        self.log(entry);
    }

    async fn fail(&self, mut guest: UnixStream, mut entry: serde_json::Value, why: String) {
        entry["decision"] = "error".into();
        entry["reason"] = why.clone().into();
        self.log(entry);
        let _ = reply(&mut guest, &Decision { allowed: false, rule: None, reason: Some(why) }).await;
    }

    /// Decides on `host:port` and finds the address to connect to.
    async fn decide(&self, host: &str, port: u16) -> (Decision, Option<SocketAddr>) {
        if let Ok(ip) = host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            let d = self.policy.read().expect("policy lock").decide_address(ip, port, None);
            return (d, Some(SocketAddr::new(ip, port)));
        }
        let by_name = self.policy.read().expect("policy lock").decide_name(host, Some(port));
        if !by_name.allowed {
            return (by_name, None);
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ip) = self.hosts.get(&name) {
            // Mapped explicitly by the user: trusted as written, private addresses included, when
            // a rule names the name; `all` alone does not open private addresses this way. The
            // host's own loopback alias needs a rule naming the port.
            if name == HOST_ALIAS && by_name.rule.as_deref().is_none_or(|r| !r.contains(':')) {
                let why = format!("{HOST_ALIAS} needs a rule naming the port, e.g. {HOST_ALIAS}:{port}");
                return (Decision { allowed: false, rule: None, reason: Some(why) }, None);
            }
            if by_name.rule.as_deref() == Some("all") {
                let d = self.policy.read().expect("policy lock").decide_address(*ip, port, Some(&by_name));
                return (d, Some(SocketAddr::new(*ip, port)));
            }
            return (by_name, Some(SocketAddr::new(*ip, port)));
        }
        let addrs = match self.resolver.lookup(&name, port).await {
            Ok(a) => a,
            Err(why) => return (Decision { allowed: false, rule: None, reason: Some(why) }, None),
        };
        let mut last = Decision { allowed: false, rule: None, reason: Some(format!("{name} has no address")) };
        for a in addrs {
            let d = self.policy.read().expect("policy lock").decide_address(a.ip(), port, Some(&by_name));
            if d.allowed {
                return (d, Some(a));
            }
            last = d;
        }
        (last, None)
    }

    /// Appends one entry to the audit log, with the time.
    pub fn log(&self, mut entry: serde_json::Value) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        entry["time"] = ((now * 1000.0).round() / 1000.0).into();
        if let Some(f) = self.log.lock().expect("log lock").as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{entry}");
        }
    }
}

fn word(d: &Decision) -> &'static str {
    if d.allowed {
        "allow"
    } else {
        "deny"
    }
}

/// Reads the one request frame, with a deadline (a guest that never sends must not hold a slot),
/// and whatever came after it.
async fn read_request(s: &mut UnixStream) -> Result<(NetRequest, Vec<u8>), String> {
    let mut frames = FrameBuf::default();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            if let Some(r) = frames.next_frame::<NetRequest>().map_err(|e| e.to_string())? {
                return Ok((r, frames.take_rest()));
            }
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before a request".to_string());
            }
            frames.extend(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.map_err(|_| "no request within 10 s".to_string())?
}

async fn reply(s: &mut UnixStream, d: &Decision) -> std::io::Result<()> {
    let r =
        if d.allowed { NetReply::Allowed } else { NetReply::Denied { reason: d.reason.clone().unwrap_or_default() } };
    s.write_all(&encode_frame(&r)).await
}

/// Reads an audit log back, one JSON value per line (for `faize logs --net`).
pub fn read_log(path: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    Ok(std::fs::read_to_string(path)?.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(rules: &[&str], log: &Path) -> Proxy {
        let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        let policy = Arc::new(RwLock::new(Policy::parse(Some(&rules)).unwrap()));
        let hosts = HashMap::from([
            ("db.test".to_string(), IpAddr::from([127, 0, 0, 1])),
            ("lan.test".to_string(), IpAddr::from([10, 1, 2, 3])),
        ]);
        Proxy::new(policy, hosts, Resolver::System, log, Limits::default())
    }

    #[tokio::test]
    async fn mapped_names_reach_private_addresses_only_when_a_rule_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("net.jsonl");
        let named = proxy(&["db.test:5432", "*.other.test"], &log);
        assert!(named.decide("db.test", 5432).await.0.allowed);
        assert!(!named.decide("db.test", 22).await.0.allowed);
        assert!(!named.decide("lan.test", 80).await.0.allowed);
        // `all` is the public internet: names mapped to loopback or private addresses stay shut.
        let all = proxy(&["all"], &log);
        for (name, port) in [("db.test", 5432), ("lan.test", 80), ("host.faize.internal", 8080)] {
            let (d, _) = all.decide(name, port).await;
            assert!(!d.allowed, "{name}:{port} under all: {d:?}");
        }
        assert!(all.decide("10.1.2.3", 80).await.0.reason.unwrap().contains("only a rule naming the address"));
        let both = proxy(&["all", "lan.test"], &log);
        assert!(both.decide("lan.test", 80).await.0.allowed);
        assert!(!both.decide("db.test", 5432).await.0.allowed);
    }
}
