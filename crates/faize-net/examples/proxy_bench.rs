//! Benchmark of the host-side proxy alone, on loopback (issue 4):
//! - throughput of 1 GiB from a local server through the proxy vs directly;
//! - added connection latency (proxy request to reply, vs a direct TCP connect), median of 300;
//! - 1,000 connections opened at once through the proxy.
//!
//! The local servers, the proxy and the clients each run on their own single-threaded runtime in
//! their own OS thread (the proxy runs that way in a session's supervisor), so the kernel shares
//! the machine's cores between them as it would between separate processes.
//!
//! Run: `cargo run --release -p faize-net --example proxy_bench` (`CONNECTIONS=N` to change the
//! 1,000).

#![allow(clippy::print_stdout)] // a benchmark prints its results

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use faize_net::proxy::{Limits, Proxy};
use faize_net::resolve::Resolver;
use faize_net::Policy;
use faize_protocol::net::{NetReply, NetRequest};
use faize_protocol::{encode_frame, FrameBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

const GIB: usize = 1 << 30;

/// A server that sends `size` bytes to each connection and closes it. Its accept queue holds
/// 4,096 connections (tokio's default of 128 overflows under the burst of 1,000, and the kernel
/// then retransmits SYN-ACKs for seconds: a limit of the test server, not of the proxy).
async fn server(size: usize) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = socket.listen(4096).unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 1 << 20];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    port
}

/// Opens a proxied connection; returns it and the data bytes that came with the reply.
async fn via_proxy(sock: &std::path::Path, port: u16) -> (UnixStream, usize) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(&encode_frame(&NetRequest::Connect { host: "bench.test".into(), port })).await.unwrap();
    let mut fb = FrameBuf::default();
    let mut buf = [0u8; 256];
    loop {
        if let Some(r) = fb.next_frame::<NetReply>().unwrap() {
            assert_eq!(r, NetReply::Allowed);
            return (s, fb.take_rest().len());
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "proxy closed");
        fb.extend(&buf[..n]);
    }
}

async fn drain(mut r: impl AsyncReadExt + Unpin) -> usize {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `f` on a new single-threaded runtime in a new OS thread; returns what its setup returned.
fn on_own_thread<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    setup: impl FnOnce() -> F + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            tx.send(setup().await).unwrap();
            std::future::pending::<()>().await
        });
    });
    rx.recv().unwrap()
}

fn main() {
    faize_net::proxy::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let (big, small) = on_own_thread(|| async { (server(GIB).await, server(5).await) });
    let sock = dir.path().join("net.sock");
    {
        let (sock, log) = (sock.clone(), dir.path().join("net.jsonl"));
        on_own_thread(move || async move {
            let rules = vec![format!("bench.test:{big}"), format!("bench.test:{small}")];
            let policy = Arc::new(RwLock::new(Policy::parse(Some(&rules)).unwrap()));
            let hosts = HashMap::from([("bench.test".to_string(), "127.0.0.1".parse().unwrap())]);
            let proxy = Arc::new(Proxy::new(policy, hosts, Resolver::System, &log, Limits::default()));
            tokio::spawn(proxy.serve(UnixListener::bind(&sock).unwrap()));
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(clients(&sock, big, small));
}

async fn clients(sock: &std::path::Path, big: u16, small: u16) {
    let mut ratios = Vec::new();
    for round in 1..=5 {
        let t = Instant::now();
        let n = drain(TcpStream::connect(("127.0.0.1", big)).await.unwrap()).await;
        let direct = t.elapsed();
        let t = Instant::now();
        let (s, early) = via_proxy(sock, big).await;
        let m = early + drain(s).await;
        let proxied = t.elapsed();
        assert_eq!((n, m), (GIB, GIB));
        let gbps = |d: Duration| GIB as f64 / d.as_secs_f64() / (1 << 30) as f64;
        ratios.push(direct.as_secs_f64() / proxied.as_secs_f64());
        println!(
            "round {round}: 1 GiB direct {:.2} GiB/s, through the proxy {:.2} GiB/s = {:.0} % of direct",
            gbps(direct),
            gbps(proxied),
            100.0 * direct.as_secs_f64() / proxied.as_secs_f64()
        );
    }

    ratios.sort_by(f64::total_cmp);
    println!("median of 5 rounds: the proxy moves {:.0} % of direct", 100.0 * ratios[2]);

    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        let s = TcpStream::connect(("127.0.0.1", small)).await.unwrap();
        direct.push(t.elapsed());
        drop(s);
        let t = Instant::now();
        let (s, _) = via_proxy(sock, small).await;
        proxied.push(t.elapsed());
        drop(s);
    }
    let (d, p) = (median(direct), median(proxied));
    println!(
        "connection set-up, median of 300: direct {:.0} us, through the proxy {:.0} us (added {:.0} us)",
        d.as_secs_f64() * 1e6,
        p.as_secs_f64() * 1e6,
        (p.saturating_sub(d)).as_secs_f64() * 1e6
    );

    let t = Instant::now();
    let n: usize = std::env::var("CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let sock = sock.to_owned();
            tokio::spawn(tokio::time::timeout(Duration::from_secs(20), async move {
                let (s, early) = via_proxy(&sock, small).await;
                early + drain(s).await
            }))
        })
        .collect();
    let (mut ok, mut slowest) = (0, Duration::ZERO);
    for task in tasks {
        if matches!(task.await, Ok(Ok(5))) {
            ok += 1;
            slowest = t.elapsed();
        }
    }
    println!(
        "{n} concurrent connections through the proxy: {ok} succeeded, the last after {:.0} ms",
        slowest.as_secs_f64() * 1e3
    );
}
