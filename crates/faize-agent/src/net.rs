//! The guest's side of the network allowlist. The VM has no network device: loopback and a dummy
//! default route only. nftables redirects every outgoing TCP connection to a listener of the
//! agent and drops all other outgoing traffic; DNS is answered by the agent on loopback. Every
//! name and connection is asked of the host over vsock, which decides, resolves and connects.
//! Root in the guest can change all of this, and gains nothing: packets have nowhere to go, and
//! the host decides again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Arc, Mutex};

use faize_protocol::net::{NetReply, NetRequest, NET_PORT, REDIRECT_PORT, SYNTHETIC_NET};
use faize_protocol::{encode_frame, read_frame, GUEST_PATH};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use crate::channel::vsock_connect;

const NFT_RULES: &str = "table inet faize {
  chain redirect_out {
    type nat hook output priority -100; policy accept;
    oifname \"lo\" return
    meta l4proto tcp redirect to :15001
  }
  chain filter_out {
    type filter hook output priority 0; policy drop;
    oifname \"lo\" accept
    ip daddr 127.0.0.0/8 accept
    ip6 daddr ::1 accept
  }
}
";

/// Names the DNS answerer handed out, both ways.
#[derive(Default)]
struct Names {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    next: u32,
}

impl Names {
    fn address_for(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_name.get(name) {
            return Some(*ip);
        }
        let (base, bits) = SYNTHETIC_NET;
        let size = 1u32 << (32 - bits);
        // .0 and .1 are skipped; the range has 131,070 usable addresses per boot.
        if self.next + 2 >= size {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + 2 + self.next);
        self.next += 1;
        self.by_name.insert(name.to_string(), ip);
        self.by_addr.insert(ip, name.to_string());
        Some(ip)
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out =
        Command::new(program).args(args).env("PATH", GUEST_PATH).output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Sets up the route and the redirect, and starts the DNS answerer and the redirect listener.
pub fn start() -> Result<(), String> {
    run("ip", &["link", "add", "dummy0", "type", "dummy"])?;
    run("ip", &["link", "set", "dummy0", "up"])?;
    // A source address for the default route (the redirect keeps it; replies come back to it).
    run("ip", &["addr", "add", "198.18.0.1/32", "dev", "dummy0"])?;
    run("ip", &["route", "add", "default", "dev", "dummy0"])?;
    std::fs::create_dir_all("/run/faize").map_err(|e| format!("mkdir /run/faize: {e}"))?;
    std::fs::write("/run/faize/nftables.conf", NFT_RULES).map_err(|e| format!("writing nftables rules: {e}"))?;
    run("nft", &["-f", "/run/faize/nftables.conf"])?;

    let names = Arc::new(Mutex::new(Names::default()));
    let dns = UdpSocket::bind("127.0.0.1:53").map_err(|e| format!("DNS on 127.0.0.1:53: {e}"))?;
    let n = names.clone();
    std::thread::spawn(move || serve_dns(dns, n));
    let listener =
        TcpListener::bind(("127.0.0.1", REDIRECT_PORT)).map_err(|e| format!("listening on {REDIRECT_PORT}: {e}"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let n = names.clone();
            std::thread::spawn(move || forward(stream, n));
        }
    });
    Ok(())
}

/// Asks the host; `None` when the host cannot be reached.
fn ask(request: &NetRequest) -> Option<(File, NetReply)> {
    let mut f = File::from(vsock_connect(NET_PORT).ok()?);
    f.write_all(&encode_frame(request)).ok()?;
    let reply = read_frame::<NetReply>(&mut f).ok()??;
    Some((f, reply))
}

fn serve_dns(socket: UdpSocket, names: Arc<Mutex<Names>>) {
    let mut buf = [0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        // Malformed questions get no answer at all.
        let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
        if let Some(answer) = answer(&query, &names) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

fn answer(query: &Message, names: &Mutex<Names>) -> Option<Vec<u8>> {
    let q = query.queries.first()?.clone();
    let mut reply = Message::new(query.metadata.id, MessageType::Response, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries.push(q.clone());
    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let allowed = matches!(ask(&NetRequest::Resolve { name: name.clone() }), Some((_, NetReply::Allowed)));
    if !allowed {
        reply.metadata.response_code = ResponseCode::NXDomain;
    } else if q.query_type() == RecordType::A {
        match names.lock().unwrap_or_else(|p| p.into_inner()).address_for(&name) {
            Some(ip) => {
                reply.answers.push(Record::from_rdata(q.name().clone(), 60, RData::A(A(ip))));
            }
            None => reply.metadata.response_code = ResponseCode::ServFail,
        }
    }
    // Allowed names have no IPv6 answer, so clients use IPv4.
    reply.to_vec().ok()
}

/// Carries one redirected connection to the host.
fn forward(tcp: TcpStream, names: Arc<Mutex<Names>>) {
    let Ok(dst) = nix::sys::socket::getsockopt(&tcp, nix::sys::socket::sockopt::OriginalDst) else { return };
    let ip = Ipv4Addr::from(u32::from_be(dst.sin_addr.s_addr));
    let port = u16::from_be(dst.sin_port);
    let host =
        names.lock().unwrap_or_else(|p| p.into_inner()).by_addr.get(&ip).cloned().unwrap_or_else(|| ip.to_string());
    let Some((host_conn, NetReply::Allowed)) = ask(&NetRequest::Connect { host, port }) else { return };
    splice(tcp, host_conn);
}

/// Copies both ways until each side ends, passing half-closes on.
fn splice(tcp: TcpStream, host: File) {
    let (Ok(mut tcp_r), Ok(mut host_r)) = (tcp.try_clone(), host.try_clone()) else { return };
    let (mut tcp_w, mut host_w) = (tcp, host);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut host_w);
        let _ = nix::sys::socket::shutdown(host_w.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match host_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tcp_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}
