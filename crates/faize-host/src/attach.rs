//! The conversation between a terminal side (`faize start`, `run`, `attach`, `exec`) and a
//! session's supervisor, over the Unix socket `attach.sock` in the session's private runtime
//! folder (or, for the process that launched the session, a socket pair).
//!
//! Frames: `u32 length (big-endian)`, a kind byte, the payload. Kind 1 and 2 carry raw bytes
//! (input to the program / its stdout, and its stderr); kind 3 one clipboard item (`u16` length
//! of the MIME type, the type, the data); kind 0 a JSON [`ToSupervisor`] or [`ToTerminal`]. At
//! most [`MAX_FRAME`] bytes; anything else ends the connection.

use std::path::PathBuf;

use anyhow::{bail, Result};
use faize_protocol::WinSize;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::session::Images;
use crate::spec::Request;

/// File name of the socket in the session's runtime folder.
pub const SOCKET: &str = "attach.sock";

/// Largest frame accepted (a clipboard image is the largest).
pub const MAX_FRAME: usize = crate::clipboard::MAX_ITEM + 1024;

const CONTROL: u8 = 0;
const DATA: u8 = 1;
const ERR_DATA: u8 = 2;
const CLIP: u8 = 3;

/// A terminal size as sent over this socket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Size {
    pub rows: u16,
    pub cols: u16,
}

impl From<WinSize> for Size {
    fn from(w: WinSize) -> Self {
        Size { rows: w.rows, cols: w.cols }
    }
}

impl From<Size> for WinSize {
    fn from(s: Size) -> Self {
        WinSize { rows: s.rows, cols: s.cols }
    }
}

/// What a new session is started from: sent once, first, by the launching process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    pub id: String,
    pub name: Option<String>,
    pub request: Request,
    pub images: Images,
    /// The terminal's size (interactive sessions; 24×80 when started detached without one).
    pub tty: Option<Size>,
    /// TERM and COLORTERM of the user's terminal.
    pub term_env: Vec<(String, String)>,
    /// Start in the background: the launcher leaves once the program runs.
    pub detach: bool,
}

/// Terminal side → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ToSupervisor {
    Launch(Box<Launch>),
    /// Take over the session's terminal (one at a time).
    Attach {
        tty: Option<Size>,
    },
    /// Run another program in the session (`faize exec`).
    Exec {
        argv: Vec<String>,
        tty: Option<Size>,
        term_env: Vec<(String, String)>,
    },
    StdinEof,
    Resize(Size),
    Signal {
        signal: i32,
    },
    /// End the session: the program gets SIGTERM, then SIGKILL after the grace.
    Stop {
        grace_ms: u32,
    },
    /// Leave; the session goes on.
    Detach,
    /// The user pressed Ctrl+V: the clipboard follows as [`Frame::Clip`] frames, then
    /// `ClipboardEnd`, then the keystroke.
    ClipboardBegin,
    ClipboardEnd,
    /// A line for the session's log (e.g. why the clipboard is unavailable).
    Note {
        text: String,
    },
}

/// Supervisor → terminal side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ToTerminal {
    /// The attach or exec was refused; the connection closes.
    Refused { reason: String },
    /// The program is running (after a launch, or right away on attach).
    Running { id: String },
    /// The program (of the session, or of this exec) ended: what to print and the exit code.
    Ended { code: i32, report: String },
}

/// One frame.
#[derive(Debug, Clone)]
pub enum Frame<C> {
    Control(C),
    /// Input (to the supervisor) or the program's output (to the terminal).
    Data(Vec<u8>),
    /// The program's standard error.
    ErrData(Vec<u8>),
    /// One clipboard item: MIME type and data.
    Clip(String, Vec<u8>),
}

/// Writes one frame.
pub async fn write<C: Serialize>(w: &mut (impl AsyncWrite + Unpin), frame: &Frame<C>) -> std::io::Result<()> {
    let (kind, body) = match frame {
        Frame::Control(c) => (CONTROL, serde_json::to_vec(c).map_err(std::io::Error::other)?),
        Frame::Data(d) => (DATA, d.clone()),
        Frame::ErrData(d) => (ERR_DATA, d.clone()),
        Frame::Clip(mime, d) => {
            let mut b = Vec::with_capacity(2 + mime.len() + d.len());
            b.extend_from_slice(&(mime.len() as u16).to_be_bytes());
            b.extend_from_slice(mime.as_bytes());
            b.extend_from_slice(d);
            (CLIP, b)
        }
    };
    let mut out = Vec::with_capacity(body.len() + 5);
    out.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    w.write_all(&out).await?;
    w.flush().await
}

/// Reads one frame; `None` at a clean end of the connection.
pub async fn read<C: for<'de> Deserialize<'de>>(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Frame<C>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        bail!("a frame of {len} bytes on the session socket (at most {MAX_FRAME})");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let data = body.split_off(1);
    Ok(Some(match body[0] {
        CONTROL => Frame::Control(serde_json::from_slice(&data)?),
        DATA => Frame::Data(data),
        ERR_DATA => Frame::ErrData(data),
        CLIP => {
            let n = u16::from_be_bytes([*data.first().unwrap_or(&0), *data.get(1).unwrap_or(&0)]) as usize;
            if data.len() < 2 + n {
                bail!("a truncated clipboard frame on the session socket");
            }
            let mime = String::from_utf8(data[2..2 + n].to_vec())?;
            Frame::Clip(mime, data[2 + n..].to_vec())
        }
        k => bail!("unknown frame kind {k} on the session socket"),
    }))
}

/// The attach socket of a session whose runtime folder is `runtime`.
pub fn socket_path(runtime: &std::path::Path) -> PathBuf {
    runtime.join(SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_refused() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        write(&mut a, &Frame::Control(ToSupervisor::Resize(Size { rows: 40, cols: 120 }))).await.unwrap();
        write::<ToSupervisor>(&mut a, &Frame::Data(b"ls\n".to_vec())).await.unwrap();
        write::<ToSupervisor>(&mut a, &Frame::ErrData(vec![0xff, 0])).await.unwrap();
        write::<ToSupervisor>(&mut a, &Frame::Clip("image/png".into(), vec![0x89, 0])).await.unwrap();
        match read::<ToSupervisor>(&mut b).await.unwrap() {
            Some(Frame::Control(ToSupervisor::Resize(s))) => assert_eq!((s.rows, s.cols), (40, 120)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(read::<ToSupervisor>(&mut b).await.unwrap(), Some(Frame::Data(d)) if d == b"ls\n"));
        assert!(matches!(read::<ToSupervisor>(&mut b).await.unwrap(), Some(Frame::ErrData(d)) if d == [0xff, 0]));
        assert!(
            matches!(read::<ToSupervisor>(&mut b).await.unwrap(), Some(Frame::Clip(m, d)) if m == "image/png" && d == [0x89, 0])
        );
        // Too long, unknown kind, not JSON: errors, not guesses.
        for bad in [
            [&((MAX_FRAME as u32 + 1).to_be_bytes())[..], &[0][..]].concat(),
            vec![0, 0, 0, 2, 9, 0],
            vec![0, 0, 0, 3, 0, b'{', b'x'],
            vec![0, 0, 0, 0],
            vec![0, 0, 0, 4, 3, 0, 9, b'x'],
        ] {
            let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
            a.write_all(&bad).await.unwrap();
            drop(a);
            assert!(read::<ToSupervisor>(&mut b).await.is_err(), "{bad:?}");
        }
        drop(a);
        assert!(read::<ToSupervisor>(&mut b).await.unwrap().is_none());
    }
}
