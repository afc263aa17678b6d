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

/// Runs `nft -f -` on the rules (the one program the set-up starts: ~0.2 s under emulation),
/// from the image mounted at `image` (rules are global: where nft runs does not matter).
fn load_rules(image: &'static str) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("nft");
    // SAFETY: chroot and chdir are async-signal-safe; this runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(image)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    let mut child = cmd
        .args(["-f", "-"])
        .env("PATH", GUEST_PATH)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child.stdin.take().expect("piped").write_all(NFT_RULES.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Starts loading the firewall rules on a thread of its own, as soon as the image is mounted, so
/// it overlaps the handshake and the rest of the set-up.
pub fn load_rules_in_background(image: &'static str) -> Pending {
    Pending(std::thread::spawn(move || load_rules(image)))
}

/// The firewall rules, loading.
pub struct Pending(std::thread::JoinHandle<Result<(), String>>);

impl Pending {
    /// Waits until the rules are in place.
    pub fn wait(self) -> Result<(), String> {
        self.0.join().unwrap_or_else(|_| Err("the network set-up panicked".into()))
    }
}

/// Sets up the route (the kernel made `dummy0`: `dummy.numdummies=1`) and starts the DNS
/// answerer and the redirect listener.
pub fn start() -> Result<(), String> {
    interface_up("dummy0")?;
    set_address("dummy0", Ipv4Addr::new(198, 18, 0, 1))?;
    add_default_route("dummy0")?;

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

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    req
}

/// Runs one network ioctl on a throw-away socket.
fn ioctl<T>(request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: a plain socket and an ioctl whose argument type matches `request` (callers pass an
    // ifreq or an rtentry); the fd is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        let rc = libc::ioctl(fd, request, arg as *mut T);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(format!("{what}: {err}"));
        }
    }
    Ok(())
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the kernel reads it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Brings an interface up.
pub fn interface_up(name: &str) -> Result<(), String> {
    let mut req = ifreq(name);
    ioctl(libc::SIOCGIFFLAGS, &mut req, &format!("reading {name}'s flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("bringing {name} up"))
}

/// Gives an interface a /32 address.
fn set_address(name: &str, ip: Ipv4Addr) -> Result<(), String> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(libc::SIOCSIFADDR, &mut req, &format!("address of {name}"))?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::BROADCAST);
    ioctl(libc::SIOCSIFNETMASK, &mut req, &format!("netmask of {name}"))
}

/// Adds the default route through `dev`.
fn add_default_route(dev: &str) -> Result<(), String> {
    let mut name = std::ffi::CString::new(dev).map_err(|e| e.to_string())?.into_bytes_with_nul();
    // SAFETY: rtentry is plain data; all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_flags = libc::RTF_UP;
    rt.rt_dev = name.as_mut_ptr() as *mut libc::c_char;
    ioctl(libc::SIOCADDRT, &mut rt, "adding the default route")
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
        let allowed =
            |name: &str| matches!(ask(&NetRequest::Resolve { name: name.to_string() }), Some((_, NetReply::Allowed)));
        if let Some(answer) = answer(&query, &names, allowed) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

/// The reply to one question; `allowed` asks the host whether a name may be resolved.
fn answer(query: &Message, names: &Mutex<Names>, allowed: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let q = query.queries.first()?.clone();
    let mut reply = Message::new(query.metadata.id, MessageType::Response, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries.push(q.clone());
    let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if !allowed(&name) {
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

/// A login callback the host accepted for the guest's `127.0.0.1:port`: a new channel to the
/// host, announced with the token, joined to a new connection to that port. When nothing listens
/// there, the channel is closed and the host closes the callback.
pub fn inbound(token: u64, port: u16) {
    let Ok(fd) = vsock_connect(faize_protocol::CONTROL_PORT) else { return };
    let mut host = File::from(fd);
    let hello = encode_frame(&faize_protocol::GuestMsg::ExecChannel { token });
    if host.write_all(&hello).is_err() {
        return;
    }
    if let Ok(tcp) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
        splice(tcp, host);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::Name;
    use std::ops::Not;

    fn ask_for(names: &Mutex<Names>, name: &str, kind: RecordType) -> Message {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let wire = q.to_vec().unwrap();
        let q = Message::from_vec(&wire).unwrap();
        let reply = answer(&q, names, |n| n.ends_with("allowed.test")).expect("an answer");
        Message::from_vec(&reply).unwrap()
    }

    #[test]
    fn allowed_names_get_a_stable_synthetic_address_and_others_nxdomain() {
        let names = Mutex::new(Names::default());
        let a = ask_for(&names, "Www.Allowed.Test.", RecordType::A);
        assert_eq!((a.metadata.id, a.metadata.response_code), (7, ResponseCode::NoError));
        assert_eq!(a.queries.len(), 1, "the question is echoed");
        let ip = match &a.answers[..] {
            [r] => match &r.data {
                RData::A(A(ip)) => *ip,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(ip, Ipv4Addr::new(198, 18, 0, 2));
        // The same name (any case) gets the same address; the next name the next one.
        let again = ask_for(&names, "www.allowed.test.", RecordType::A);
        assert_eq!(again.answers[0].data, RData::A(A(ip)));
        let other = ask_for(&names, "api.allowed.test.", RecordType::A);
        assert_eq!(other.answers[0].data, RData::A(A(Ipv4Addr::new(198, 18, 0, 3))));
        assert_eq!(names.lock().unwrap().by_addr[&ip], "www.allowed.test");
        // IPv6: no address, no error, so clients use IPv4.
        let aaaa = ask_for(&names, "www.allowed.test.", RecordType::AAAA);
        assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0));
        // Denied names do not exist, whatever the type, and use no address.
        for kind in [RecordType::A, RecordType::AAAA, RecordType::TXT, RecordType::MX] {
            let no = ask_for(&names, "exfil.evil.test.", kind);
            assert_eq!((no.metadata.response_code, no.answers.len()), (ResponseCode::NXDomain, 0), "{kind}");
        }
        assert_eq!(names.lock().unwrap().by_name.len(), 2);
    }

    #[test]
    fn malformed_questions_get_no_answer() {
        let names = Mutex::new(Names::default());
        // No question at all.
        let empty = Message::new(1, MessageType::Query, OpCode::Query);
        assert!(answer(&empty, &names, |_| true).is_none());
        // Garbage either does not decode (dropped before `answer`) or asks nothing.
        for junk in [&b""[..], b"\x00", &[0xffu8; 11], &[0u8; 12], &[0u8; 40]] {
            assert!(Message::from_vec(junk).is_ok_and(|m| answer(&m, &names, |_| true).is_some()).not(), "{junk:?}");
        }
        assert!(names.lock().unwrap().by_name.is_empty());
    }

    #[test]
    fn the_synthetic_range_runs_out_cleanly() {
        let mut names = Names { next: (1 << 17) - 3, ..Names::default() };
        assert_eq!(names.address_for("last.test"), Some(Ipv4Addr::new(198, 19, 255, 255)));
        assert_eq!(names.address_for("one-too-many.test"), None);
        assert_eq!(names.address_for("last.test"), Some(Ipv4Addr::new(198, 19, 255, 255)));
    }
}
