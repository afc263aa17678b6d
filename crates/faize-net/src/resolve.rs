//! How the proxy turns an allowed name into addresses: the host's own resolver (`getaddrinfo`,
//! so /etc/hosts, systemd-resolved and the rest apply), or one DNS server named by
//! `network.resolver`, asked directly over UDP (TCP when the answer is truncated).
//!
//! Whatever answers, the proxy checks every address against the policy afterwards: a resolver
//! that answers 127.0.0.1 or 169.254.169.254 for an allowed name gets nothing reached.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one question to a configured DNS server may take (tried twice over UDP).
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Default)]
pub enum Resolver {
    /// The host's resolver.
    #[default]
    System,
    /// `network.resolver`: this DNS server only.
    Server(SocketAddr),
}

impl Resolver {
    /// Parses `network.resolver`: an IP address with an optional port (`1.1.1.1`,
    /// `127.0.0.1:5353`, `[::1]:53`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Server(SocketAddr::new(ip, 53)));
        }
        text.parse::<SocketAddr>().map(Self::Server).map_err(|_| {
            format!("{text:?} is not a DNS server address: write an IP address, optionally with a port (1.1.1.1, 127.0.0.1:5353, [::1]:53)")
        })
    }

    /// The addresses of `name`, IPv4 first.
    pub async fn lookup(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match self {
            Self::System => tokio::net::lookup_host((name, port))
                .await
                .map(|a| a.collect())
                .map_err(|e| format!("cannot resolve {name}: {e}")),
            Self::Server(server) => {
                let mut addrs = Vec::new();
                for kind in [RecordType::A, RecordType::AAAA] {
                    addrs.extend(ask(*server, name, kind).await?.into_iter().map(|ip| SocketAddr::new(ip, port)));
                }
                Ok(addrs)
            }
        }
    }
}

/// Asks `server` for the `kind` records of `name`.
async fn ask(server: SocketAddr, name: &str, kind: RecordType) -> Result<Vec<IpAddr>, String> {
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    let id: u16 = rand_id();
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(fqdn, kind));
    let bytes = query.to_vec().map_err(|e| format!("encoding a DNS query for {name}: {e}"))?;
    let mut reply = None;
    for _ in 0..2 {
        match tokio::time::timeout(ASK_TIMEOUT, over_udp(server, &bytes, id)).await {
            Ok(Ok(r)) => {
                reply = Some(r);
                break;
            }
            Ok(Err(e)) => return Err(format!("asking {server} for {name}: {e}")),
            Err(_) => continue,
        }
    }
    let mut reply =
        reply.ok_or_else(|| format!("{server} did not answer for {name} within {ASK_TIMEOUT:?} (twice)"))?;
    if reply.metadata.truncation {
        reply = tokio::time::timeout(ASK_TIMEOUT, over_tcp(server, &bytes))
            .await
            .map_err(|_| format!("{server} did not answer over TCP for {name}"))?
            .map_err(|e| format!("asking {server} over TCP for {name}: {e}"))?;
    }
    match reply.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Err(format!("{server} says {name} does not exist")),
        code => return Err(format!("{server} answered {code} for {name}")),
    }
    Ok(reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) if kind == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) if kind == RecordType::AAAA => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect())
}

async fn over_udp(server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything that is not the answer to this question (wrong id, garbage) is ignored.
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.metadata.id == id && m.metadata.message_type == MessageType::Response {
                return Ok(m);
            }
        }
    }
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Message> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let n = s.read_u16().await? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Message::from_vec(&buf).map_err(std::io::Error::other)
}

/// A query id that an off-path spoofer cannot guess easily.
fn rand_id() -> u16 {
    use std::io::Read;
    let mut b = [0u8; 2];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.subsec_nanos() as u16;
    }
    u16::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_addresses_parse_or_say_what_to_write() {
        for (text, want) in [
            ("1.1.1.1", "1.1.1.1:53"),
            ("127.0.0.1:5353", "127.0.0.1:5353"),
            ("[::1]:53", "[::1]:53"),
            ("2606:4700::1111", "[2606:4700::1111]:53"),
        ] {
            match Resolver::parse(text).unwrap() {
                Resolver::Server(a) => assert_eq!(a.to_string(), want),
                Resolver::System => panic!("{text}"),
            }
        }
        for bad in ["dns.google", "1.1.1.1:99999", "", "udp://1.1.1.1"] {
            let e = Resolver::parse(bad).unwrap_err();
            assert!(e.contains("IP address"), "{e}");
        }
    }

    /// A DNS server on loopback answering every A question with 127.0.0.1 (what a rebinding
    /// attack looks like), and garbage before the real answer: the client takes the answer.
    #[tokio::test]
    async fn asks_the_configured_server() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                let q = Message::from_vec(&buf[..n]).unwrap();
                server.send_to(b"garbage", from).await.unwrap();
                let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                let question = q.queries[0].clone();
                if question.query_type() == RecordType::A {
                    r.answers.push(hickory_proto::rr::Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(hickory_proto::rr::rdata::A([127, 0, 0, 1].into())),
                    ));
                }
                r.queries.push(question);
                server.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        let got = Resolver::Server(addr).lookup("rebind.test", 443).await.unwrap();
        assert_eq!(got, vec!["127.0.0.1:443".parse().unwrap()]);
    }
}
