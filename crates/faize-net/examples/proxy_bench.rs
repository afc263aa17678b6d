//! Benchmark of the host-side proxy alone, on loopback (issue 4):
//! - throughput of 1 GiB from a local server through the proxy vs directly;
//! - added connection latency (proxy request to reply, vs a direct TCP connect), median of 300;
//! - 1,000 connections opened at once through the proxy.
//!
//! Run: `cargo run --release -p faize-net --example proxy_bench`

#![allow(clippy::print_stdout)] // a benchmark prints its results

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use faize_net::proxy::{Limits, Proxy};
use faize_net::Policy;
use faize_protocol::net::{NetReply, NetRequest};
use faize_protocol::{encode_frame, FrameBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

const GIB: usize = 1 << 30;

/// A server: on `big` port it sends 1 GiB, on `small` it sends "hello".
async fn server(size: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    faize_net::proxy::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let big = server(GIB).await;
    let small = server(5).await;
    let rules = vec![format!("bench.test:{big}"), format!("bench.test:{small}")];
    let policy = Arc::new(RwLock::new(Policy::parse(Some(&rules)).unwrap()));
    let hosts = HashMap::from([("bench.test".to_string(), "127.0.0.1".parse().unwrap())]);
    let sock = dir.path().join("net.sock");
    let proxy = Arc::new(Proxy::new(policy, hosts, &dir.path().join("net.jsonl"), Limits::default()));
    tokio::spawn(proxy.serve(UnixListener::bind(&sock).unwrap()));

    for round in 1..=2 {
        let t = Instant::now();
        let n = drain(TcpStream::connect(("127.0.0.1", big)).await.unwrap()).await;
        let direct = t.elapsed();
        let t = Instant::now();
        let (s, early) = via_proxy(&sock, big).await;
        let m = early + drain(s).await;
        let proxied = t.elapsed();
        assert_eq!((n, m), (GIB, GIB));
        let gbps = |d: Duration| GIB as f64 / d.as_secs_f64() / (1 << 30) as f64;
        println!(
            "round {round}: 1 GiB direct {:.2} GiB/s, through the proxy {:.2} GiB/s = {:.0} % of direct",
            gbps(direct),
            gbps(proxied),
            100.0 * direct.as_secs_f64() / proxied.as_secs_f64()
        );
    }

    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let t = Instant::now();
        let s = TcpStream::connect(("127.0.0.1", small)).await.unwrap();
        direct.push(t.elapsed());
        drop(s);
        let t = Instant::now();
        let (s, _) = via_proxy(&sock, small).await;
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
            let sock = sock.clone();
            tokio::spawn(tokio::time::timeout(Duration::from_secs(20), async move {
                let (s, early) = via_proxy(&sock, small).await;
                early + drain(s).await
            }))
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if matches!(task.await, Ok(Ok(5))) {
            ok += 1;
        }
    }
    println!(
        "{n} concurrent connections through the proxy: {ok} succeeded in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}
