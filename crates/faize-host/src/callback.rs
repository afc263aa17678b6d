//! Login callbacks: when the guest opens a login URL whose `redirect_uri` is
//! `http://localhost:PORT/PATH`, the host listens on its own loopback (`127.0.0.1:PORT`, and
//! `[::1]:PORT` when it has IPv6) for that one flow.
//! The first connection that sends `GET /PATH` within the time limit is handed to the session,
//! which carries it into the guest's `127.0.0.1:PORT`; then the listener is closed. Connections
//! that send anything else (a browser's idle pre-connection, some other local client) are
//! closed and never reach the guest.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How long the host waits for the callback when `FAIZE_CALLBACK_TIMEOUT` is not set.
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(300);
/// How long one connection may take to send its request line.
const REQUEST_LINE_LIMIT: Duration = Duration::from_secs(10);

/// Where a login flow expects its callback: a port on the loopback and the request path.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Target {
    pub port: u16,
    pub path: String,
}

/// The callback of a login URL: its `redirect_uri` query parameter, when that is plain `http`
/// to `localhost`, `127.0.0.1` or `[::1]` with an explicit unprivileged port.
pub fn target(url: &str) -> Option<Target> {
    let url = url::Url::parse(url).ok()?;
    let (_, redirect) = url.query_pairs().find(|(k, _)| k == "redirect_uri")?;
    let redirect = url::Url::parse(&redirect).ok()?;
    let loopback = matches!(redirect.host_str()?, "localhost" | "127.0.0.1" | "[::1]");
    let port = redirect.port()?;
    (redirect.scheme() == "http" && loopback && port >= 1024)
        .then(|| Target { port, path: redirect.path().to_string() })
}

/// How long the host waits for a callback: `FAIZE_CALLBACK_TIMEOUT` seconds, or the default.
pub fn limit() -> Result<Duration, String> {
    match std::env::var("FAIZE_CALLBACK_TIMEOUT") {
        Err(_) => Ok(DEFAULT_LIMIT),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(format!("FAIZE_CALLBACK_TIMEOUT={v:?} is not a whole number of seconds above 0: set it like FAIZE_CALLBACK_TIMEOUT=300, or unset it")),
        },
    }
}

/// The host's loopback sockets for one callback port: 127.0.0.1, and ::1 where the host has
/// IPv6 (browsers may try `localhost` as either).
pub struct Listeners {
    v4: TcpListener,
    v6: Option<TcpListener>,
}

impl Listeners {
    async fn accept(&self) -> std::io::Result<TcpStream> {
        let v6 = async {
            match &self.v6 {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            c = self.v4.accept() => c.map(|(c, _)| c),
            c = v6 => c.map(|(c, _)| c),
        }
    }
}

/// Listens on the host's loopback at `port` (bound now, so a port in use is reported at once;
/// port 0 picks one, for tests).
pub fn listen(port: u16) -> Result<Listeners, String> {
    let bind = |ip: std::net::IpAddr, port: u16| -> std::io::Result<TcpListener> {
        let std = std::net::TcpListener::bind((ip, port))?;
        std.set_nonblocking(true)?;
        TcpListener::from_std(std)
    };
    let v4 = bind(std::net::Ipv4Addr::LOCALHOST.into(), port)
        .map_err(|e| format!("cannot listen on the host's 127.0.0.1:{port} for the login callback: {e}"))?;
    let port = v4.local_addr().map_err(|e| e.to_string())?.port();
    // No IPv6 on the host, or ::1 taken by someone else: 127.0.0.1 alone still serves.
    let v6 = bind(std::net::Ipv6Addr::LOCALHOST.into(), port).ok();
    Ok(Listeners { v4, v6 })
}

/// Waits for the one connection that asks for `path`; the listeners are closed when this returns.
/// Connections that ask for something else are counted in the error and closed.
pub async fn accept(listeners: Listeners, path: &str, limit: Duration) -> Result<TcpStream, String> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut checks = JoinSet::new();
    let mut refused = 0u32;
    loop {
        tokio::select! {
            conn = listeners.accept() => {
                if let Ok(conn) = conn {
                    let wanted = format!("GET {path}");
                    checks.spawn(async move {
                        let ok = tokio::time::timeout(REQUEST_LINE_LIMIT, asks_for(&conn, &wanted)).await == Ok(true);
                        ok.then_some(conn)
                    });
                }
            }
            Some(done) = checks.join_next() => match done {
                Ok(Some(conn)) => return Ok(conn),
                _ => refused += 1,
            },
            _ = &mut deadline => {
                let others = if refused > 0 { format!(" ({refused} other connections were refused)") } else { String::new() };
                return Err(format!("no callback within {} s{others}", limit.as_secs()));
            }
        }
    }
}

/// Whether the connection's request line starts with `wanted` followed by `?` or a space; the
/// bytes are only peeked at, so they still go to the guest.
async fn asks_for(conn: &TcpStream, wanted: &str) -> bool {
    let need = wanted.len() + 1;
    let mut buf = vec![0u8; need];
    loop {
        let n = match conn.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if !wanted.as_bytes().starts_with(&buf[..n.min(wanted.len())]) {
            return false;
        }
        if n == need {
            return matches!(buf[need - 1], b'?' | b' ');
        }
        // Part of the line is here: peek again once more may have arrived.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_plain_loopback_redirects_with_a_port_are_callbacks() {
        let at = |port, path: &str| Some(Target { port, path: path.into() });
        for (url, want) in [
            ("https://claude.ai/oauth/authorize?code=true&redirect_uri=http%3A%2F%2Flocalhost%3A54545%2Fcallback&state=x", at(54545, "/callback")),
            ("https://claude.ai/a?redirect_uri=http://127.0.0.1:8080", at(8080, "/")),
            ("https://claude.ai/a?redirect_uri=http://[::1]:8080/cb", at(8080, "/cb")),
            ("https://claude.ai/a?redirect_uri=https://localhost:8080/", None),
            ("https://claude.ai/a?redirect_uri=http://localhost/", None),
            ("https://claude.ai/a?redirect_uri=http://localhost:22/", None),
            ("https://claude.ai/a?redirect_uri=http://example.com:8080/", None),
            ("https://claude.ai/a?redirect_uri=http://localhost.example.com:8080/", None),
            ("https://claude.ai/a?redirect=http://localhost:8080/", None),
            ("https://claude.ai/a", None),
        ] {
            assert_eq!(target(url), want, "{url}");
        }
    }

    #[tokio::test]
    async fn only_the_first_request_for_the_path_gets_through() {
        let listeners = listen(0).unwrap_or_else(|_| panic!("cannot listen"));
        let port = listeners.v4.local_addr().unwrap().port();
        let has_v6 = listeners.v6.is_some();
        let waiting = tokio::spawn(async move { accept(listeners, "/callback", Duration::from_secs(5)).await });
        // An idle connection and a request for another path come first (over IPv6 when the
        // host has it); neither wins.
        let _idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let other_ip = if has_v6 { "::1" } else { "127.0.0.1" };
        let mut other = TcpStream::connect((other_ip, port)).await.unwrap();
        other.write_all(b"GET /callbackx HTTP/1.1\r\n\r\n").await.unwrap();
        // Closed unanswered (a reset, as its request was never read).
        let mut answer = Vec::new();
        let ended = other.read_to_end(&mut answer).await;
        assert!(answer.is_empty() && ended.map_or(true, |n| n == 0), "{answer:?}");
        let mut good = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        good.write_all(b"GET /callback?code=1 HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = waiting.await.unwrap().expect("the callback");
        let mut line = vec![0u8; 20];
        got.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET /callback?code=1");
        // The listeners are gone: the next callback is refused.
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        assert!(TcpStream::connect(("::1", port)).await.is_err());
    }

    #[tokio::test]
    async fn no_callback_in_time_is_an_error() {
        let listeners = listen(0).unwrap_or_else(|_| panic!("cannot listen"));
        let err = accept(listeners, "/", Duration::from_millis(100)).await.unwrap_err();
        assert!(err.contains("no callback within"), "{err}");
    }
}
