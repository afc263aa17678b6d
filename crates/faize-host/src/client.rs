//! The terminal side of a session (`faize start`, `run`, `attach`, `exec`): it relays the user's
//! terminal to the session's supervisor ([`crate::attach`]) and back, and never holds the
//! session's life: leaving (`~.`, a closed terminal) detaches, and the session goes on.

use std::os::fd::AsFd;

use anyhow::{bail, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::attach::{self, Frame, Size, ToSupervisor, ToTerminal};
use crate::terminal::{window_size, EscapeFilter, PasteKeys, RawMode};

/// What this terminal is to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The session's own program, in a terminal (`start`, `attach` of such a session): raw mode,
    /// resizes, `~.` detaches.
    Interactive,
    /// The session's own program with pipes (`run`): stdin, stdout and stderr pass through.
    Piped,
    /// `faize exec`: with a terminal or not; leaving stops the command.
    Exec { tty: bool, stdin: bool },
}

/// The user's terminal size, if stdout is a terminal.
pub fn terminal_size() -> Option<Size> {
    window_size(std::io::stdout().as_fd()).map(Into::into)
}

/// TERM and COLORTERM of the user's environment.
pub fn term_env() -> Vec<(String, String)> {
    ["TERM", "COLORTERM"].iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect()
}

/// Connects to the attach socket of a running session.
pub async fn connect(socket: &std::path::Path, id: &str) -> Result<UnixStream> {
    match UnixStream::connect(socket).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::ConnectionRefused => {
            bail!("session {id} is not accepting terminals (still starting, or ending): try again in a moment")
        }
        Err(e) => bail!("connecting to session {id}: {e}"),
    }
}

/// Relays until the program ends (returns its exit code) or the user detaches (returns 0).
/// `detach_when_running`: leave as soon as the program runs (`start --detach`).
pub async fn relay(conn: UnixStream, role: Role, id: &str, detach_when_running: bool) -> Result<i32> {
    let (mut rd, mut wr) = conn.into_split();
    let (frames_tx, mut frames) = mpsc::channel::<Result<Option<Frame<ToTerminal>>>>(64);
    tokio::spawn(async move {
        loop {
            let f = attach::read::<ToTerminal>(&mut rd).await;
            let end = !matches!(f, Ok(Some(_)));
            if frames_tx.send(f).await.is_err() || end {
                break;
            }
        }
    });
    let interactive_tty = matches!(role, Role::Interactive | Role::Exec { tty: true, .. });
    let reads_stdin = !matches!(role, Role::Exec { stdin: false, .. });
    if !reads_stdin {
        attach::write(&mut wr, &Frame::Control(ToSupervisor::StdinEof)).await?;
    }
    let mut raw = None;
    let mut input = if reads_stdin && !detach_when_running { Some(spawn_stdin_reader()) } else { None };
    let mut winch = signal(SignalKind::window_change())?;
    let (mut term, mut hup, mut int) =
        (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?, signal(SignalKind::interrupt())?);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut stdout_open = true;
    let mut escape = EscapeFilter::default();
    let mut paste_keys = PasteKeys::default();
    let mut clipboard_unavailable_noted = false;
    // The clipboard being read for the last Ctrl+V, whose key has already gone.
    let mut reading: Option<tokio::task::JoinHandle<Clipboard>> = None;
    let mut interrupted = false;
    let send = async |wr: &mut tokio::net::unix::OwnedWriteHalf, m: ToSupervisor| {
        // The supervisor going away shows up on the reading side.
        let _ = attach::write(wr, &Frame::Control(m)).await;
    };

    loop {
        tokio::select! {
            f = frames.recv() => match f {
                Some(Ok(Some(Frame::Data(d)))) => {
                    if stdout_open && write_flush(&mut stdout, &d).await.is_err() {
                        // Our reader went away (`faize run ... | head`): the program gets SIGPIPE,
                        // as it would in a local pipeline.
                        stdout_open = false;
                        send(&mut wr, ToSupervisor::Signal { signal: libc::SIGPIPE }).await;
                    }
                }
                Some(Ok(Some(Frame::ErrData(d)))) => {
                    let _ = write_flush(&mut stderr, &d).await;
                }
                Some(Ok(Some(Frame::Clip(..)))) => {}
                Some(Ok(Some(Frame::Control(ToTerminal::Running { .. })))) => {
                    if detach_when_running {
                        send(&mut wr, ToSupervisor::Detach).await;
                        return Ok(0);
                    }
                    if interactive_tty && raw.is_none() {
                        raw = Some(RawMode::enter()?);
                    }
                }
                Some(Ok(Some(Frame::Control(ToTerminal::Refused { reason })))) => bail!("{reason}"),
                Some(Ok(Some(Frame::Control(ToTerminal::Ended { code, report })))) => {
                    drop(raw.take());
                    let _ = write_flush(&mut stderr, report.as_bytes()).await;
                    return Ok(code);
                }
                Some(Err(e)) => bail!("talking to session {id}: {e:#}"),
                Some(Ok(None)) | None => {
                    drop(raw.take());
                    bail!("the supervisor of session {id} went away: `faize ps --all` shows how it ended");
                }
            },
            Some(read) = async { Some(reading.as_mut()?.await) } => {
                reading = None;
                finish_paste(&mut wr, read.unwrap_or_default()).await;
            }
            i = recv_input(&mut input) => match i {
                Some(d) if role == Role::Interactive => {
                    let f = escape.feed(&d);
                    // Each Ctrl+V the user types hands the guest the clipboard with it.
                    let mut from = 0;
                    for key in paste_keys.feed(&f.data) {
                        if key > from {
                            let _ = attach::write(&mut wr, &Frame::<ToSupervisor>::Data(f.data[from..key].to_vec())).await;
                        }
                        if let Some(previous) = reading.take() {
                            finish_paste(&mut wr, previous.await.unwrap_or_default()).await;
                        }
                        reading = paste(&mut wr, f.data[key], &mut clipboard_unavailable_noted).await;
                        from = key + 1;
                    }
                    if from < f.data.len() {
                        let _ = attach::write(&mut wr, &Frame::<ToSupervisor>::Data(f.data[from..].to_vec())).await;
                    }
                    if f.detach {
                        send(&mut wr, ToSupervisor::Detach).await;
                        drop(raw.take());
                        eprintln!("\r\nfaize: detached from session {id}; it goes on. `faize attach {id}` returns to it, `faize kill {id}` stops it.");
                        return Ok(0);
                    }
                }
                Some(d) => { let _ = attach::write(&mut wr, &Frame::<ToSupervisor>::Data(d)).await; }
                None => {
                    input = None;
                    // A terminal has no end of input of its own.
                    if !interactive_tty {
                        send(&mut wr, ToSupervisor::StdinEof).await;
                    }
                }
            },
            _ = winch.recv(), if interactive_tty => {
                if let Some(size) = terminal_size() {
                    send(&mut wr, ToSupervisor::Resize(size)).await;
                }
            }
            // A closed terminal detaches: the session's work goes on.
            _ = hup.recv() => {
                send(&mut wr, ToSupervisor::Detach).await;
                return Ok(128 + libc::SIGHUP);
            }
            _ = term.recv() => {
                if matches!(role, Role::Exec { .. }) {
                    send(&mut wr, ToSupervisor::Signal { signal: libc::SIGTERM }).await;
                } else {
                    send(&mut wr, ToSupervisor::Stop { grace_ms: crate::session::STOP_GRACE.as_millis() as u32 }).await;
                }
            }
            _ = int.recv() => {
                // Ctrl+C goes to the program, as in a local shell; a second one stops the session.
                if interrupted && !matches!(role, Role::Exec { .. }) {
                    send(&mut wr, ToSupervisor::Stop { grace_ms: crate::session::STOP_GRACE.as_millis() as u32 }).await;
                } else {
                    send(&mut wr, ToSupervisor::Signal { signal: libc::SIGINT }).await;
                }
                interrupted = true;
            }
        }
    }
}

/// The host clipboard's content: (MIME type, data).
type Clipboard = Vec<(String, Vec<u8>)>;

/// Sends a Ctrl+V keystroke and starts reading the host clipboard for it. The guest is told a
/// new clipboard is coming, then gets the keystroke at once; the content follows when read
/// ([`finish_paste`]). So the program sees the key without waiting for the clipboard owner or
/// for a large image to cross into the VM, and the guest's `xclip`/`wl-paste` wait until the
/// content is complete: they never serve the previous one. Without a clipboard (no display) only
/// the key is sent, and the reason goes to the session's log once.
async fn paste(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    key: u8,
    noted: &mut bool,
) -> Option<tokio::task::JoinHandle<Clipboard>> {
    let key = Frame::<ToSupervisor>::Data(vec![key]);
    let tool = match crate::clipboard::tool() {
        Ok(tool) => tool,
        Err(why) => {
            if !*noted {
                *noted = true;
                let text = format!("clipboard: {why}; Ctrl+V passes through unchanged");
                let _ = attach::write(wr, &Frame::Control(ToSupervisor::Note { text })).await;
            }
            let _ = attach::write(wr, &key).await;
            return None;
        }
    };
    let _ = attach::write(wr, &Frame::Control(ToSupervisor::ClipboardBegin)).await;
    let _ = attach::write(wr, &key).await;
    Some(tokio::spawn(crate::clipboard::read(tool)))
}

/// Sends the clipboard read for the last Ctrl+V, completing it in the guest.
async fn finish_paste(wr: &mut tokio::net::unix::OwnedWriteHalf, items: Clipboard) {
    for (mime, data) in items {
        let _ = attach::write::<ToSupervisor>(wr, &Frame::Clip(mime, data)).await;
    }
    let _ = attach::write(wr, &Frame::Control(ToSupervisor::ClipboardEnd)).await;
}

async fn recv_input(input: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match input {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn write_flush(w: &mut (impl AsyncWriteExt + Unpin), data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}

/// Reads the user's input on a plain thread (a blocking read must not hold up the runtime's
/// shutdown); the channel closes at end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; faize_protocol::MAX_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}
