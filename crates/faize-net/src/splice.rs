//! Copying between two sockets without bringing the bytes into user space: each direction moves
//! data socket → pipe → socket with `splice(2)`, driven by tokio's readiness events. Half-close
//! is passed on (end of one direction shuts down writing on the other side), and the pipe gives
//! back-pressure: nothing more is read while the pipe still holds bytes the other side has not
//! taken.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// Bytes moved per `splice` call; the pipe is sized to hold them.
const CHUNK: usize = 1 << 20;

/// A tokio socket that can wait for readiness and try a non-blocking operation.
pub trait Socket: AsFd {
    fn ready_for(&self, interest: Interest) -> impl std::future::Future<Output = io::Result<()>>;
    fn attempt<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            async fn ready_for(&self, interest: Interest) -> io::Result<()> {
                self.ready(interest).await.map(drop)
            }
            fn attempt<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
                self.try_io(interest, f)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

/// Copies both ways until both directions have ended; returns the bytes moved `a → b` and
/// `b → a`. On an error in either direction both stop (the caller closes the sockets).
pub async fn copy_bidirectional(a: &impl Socket, b: &impl Socket) -> (u64, u64, Option<io::Error>) {
    for s in [a.as_fd(), b.as_fd()] {
        // Best effort (capped by net.core.wmem_max): a deeper send queue means fewer wake-ups.
        let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &CHUNK);
    }
    let (ab, ba) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = tokio::try_join!(pump(a, b, &ab), pump(b, a, &ba));
    (ab.into_inner(), ba.into_inner(), result.err())
}

/// One direction: `from` → pipe → `to`, then shuts down writing on `to`.
async fn pump(from: &impl Socket, to: &impl Socket, moved: &AtomicU64) -> io::Result<()> {
    let (pipe_out, pipe_in) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // Best effort: a pipe larger than the default 64 KiB means fewer wake-ups per megabyte.
    let _ = fcntl(pipe_in.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let mut held = 0usize;
    loop {
        if held == 0 {
            let n = transfer(from, Interest::READABLE, from.as_fd(), &pipe_in, flags).await?;
            if n == 0 {
                // The end of this direction: pass the half-close on (the other may go on).
                let _ = nix::sys::socket::shutdown(to.as_fd().as_raw_fd(), nix::sys::socket::Shutdown::Write);
                return Ok(());
            }
            held = n;
        } else {
            let n = transfer(to, Interest::WRITABLE, pipe_out.as_fd(), &to.as_fd(), flags).await?;
            held -= n;
            moved.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// One `splice` from `src` to `dst`, waiting on `socket` (the one of the two that is a socket)
/// until it is ready.
async fn transfer(
    socket: &impl Socket,
    interest: Interest,
    src: BorrowedFd<'_>,
    dst: &impl AsFd,
    flags: SpliceFFlags,
) -> io::Result<usize> {
    loop {
        socket.ready_for(interest).await?;
        match socket.attempt(interest, || Ok(splice(src, None, dst.as_fd(), None, CHUNK, flags)?)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes arrive intact both ways, half-close is passed on, and the counts are right.
    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            // The client has finished sending; answer with what came, reversed.
            got.reverse();
            s.write_all(&got).await.unwrap();
            got.len()
        });
        let (mut guest, proxy_side) = UnixStream::pair().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let copier = tokio::spawn(async move { copy_bidirectional(&proxy_side, &tcp).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        guest.write_all(&data).await.unwrap();
        guest.shutdown().await.unwrap();
        let mut back = Vec::new();
        guest.read_to_end(&mut back).await.unwrap();
        let mut want = data.clone();
        want.reverse();
        assert_eq!(back, want);
        assert_eq!(server.await.unwrap(), data.len());
        let (up, down, err) = copier.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!((up, down), (data.len() as u64, data.len() as u64));
    }
}
