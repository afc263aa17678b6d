//! The messages of each direction and their field-by-field encoding.

use crate::codec::{put, DecodeError, Reader, Wire};

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// A virtio-fs share the agent mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// virtio-fs tag of the QEMU device.
    pub tag: String,
    /// Absolute path inside the guest.
    pub guest_path: String,
    /// Mount read-only in the guest (the host enforces it too).
    pub read_only: bool,
}

/// A folder or file inside a share, bind-mounted at `target` (read-only in the guest when
/// `read_only`; the host enforces it too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A small file the agent writes into the guest (after creating the user); files under the
/// guest user's home are owned by that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWrite {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Everything the agent needs to prepare the VM, sent once after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// The host's [`crate::PROTOCOL_VERSION`].
    pub version: u16,
    /// Host wall clock, nanoseconds since the Unix epoch.
    pub clock_unix_nanos: u64,
    pub hostname: String,
    /// Mounted in this order (parents before children).
    pub shares: Vec<Share>,
    /// Mounted after the shares.
    pub binds: Vec<Bind>,
    /// Written last.
    pub writes: Vec<FileWrite>,
    /// The project's path in the guest; [`crate::WORKSPACE_LINK`] points to it.
    pub project: String,
}

/// A program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub argv: Vec<String>,
    /// Extra environment, added to the agent's defaults (HOME, USER, PATH, ...).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// Run in a pseudo-terminal of this size; `None` means separate pipes.
    pub tty: Option<WinSize>,
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Shell-style code: the exit code, or 128 + signal.
    pub code: i32,
    /// The signal that killed it, or 0.
    pub signal: i32,
}

/// Host to guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg {
    Setup(Setup),
    Exec(Exec),
    Stdin(Vec<u8>),
    /// The host's input ended; the agent closes the program's stdin.
    StdinEof,
    Resize(WinSize),
    /// Deliver this signal to the program's process group.
    Signal(i32),
    /// Stop the program: SIGTERM, then SIGKILL after `grace_ms`; then exit as usual.
    Shutdown {
        grace_ms: u32,
    },
    /// Open another connection to [`crate::CONTROL_PORT`] for one more program (`faize exec`),
    /// starting it with [`GuestMsg::ExecChannel`] and this token.
    OpenExec {
        token: u64,
    },
    /// The host clipboard as of the user's last Ctrl+V follows (after the keystroke itself):
    /// forget what is being staged, and make the guest's readers wait for the commit.
    ClipboardClear,
    /// Part of one type of the clipboard's content (a type may come in several chunks).
    ClipboardData {
        mime: String,
        chunk: Vec<u8>,
    },
    /// The staged clipboard replaces the guest's, all at once (nothing staged: it is emptied).
    ClipboardCommit,
    /// A connection arrived for the guest's `127.0.0.1:port` (a login callback): connect to it,
    /// open a channel to [`crate::CONTROL_PORT`] starting with [`GuestMsg::ExecChannel`] and
    /// this token, and copy bytes both ways.
    OpenInbound {
        token: u64,
        port: u16,
    },
}

/// Guest to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMsg {
    /// First message on the connection.
    Hello {
        version: u16,
        agent_version: String,
    },
    /// Root filesystem, shares and user are in place.
    Ready,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The program ended; output is flushed and filesystems synced.
    Exit(ExitStatus),
    /// The agent cannot go on; it powers the VM off after sending this.
    Fatal(String),
    /// First message on a connection opened for [`HostMsg::OpenExec`]; the host then sends
    /// [`HostMsg::Exec`] on it and the conversation goes on as for the session's program.
    ExecChannel {
        token: u64,
    },
    /// A program in the guest asks the host to open this URL (`xdg-open`, `$BROWSER`).
    OpenUrl {
        url: String,
    },
    /// A program in the guest copied this (`xclip -i`); the host's clipboard takes it only when
    /// the user allowed it.
    Copy {
        mime: String,
        data: Vec<u8>,
    },
}

mod tag {
    pub const SETUP: u8 = 0x01;
    pub const EXEC: u8 = 0x02;
    pub const STDIN: u8 = 0x03;
    pub const STDIN_EOF: u8 = 0x04;
    pub const RESIZE: u8 = 0x05;
    pub const SIGNAL: u8 = 0x06;
    pub const SHUTDOWN: u8 = 0x07;
    pub const OPEN_EXEC: u8 = 0x08;
    pub const CLIPBOARD_CLEAR: u8 = 0x09;
    pub const CLIPBOARD_DATA: u8 = 0x0a;
    pub const CLIPBOARD_COMMIT: u8 = 0x0b;
    pub const OPEN_INBOUND: u8 = 0x0c;
    pub const HELLO: u8 = 0x81;
    pub const READY: u8 = 0x82;
    pub const STDOUT: u8 = 0x83;
    pub const STDERR: u8 = 0x84;
    pub const EXIT: u8 = 0x85;
    pub const FATAL: u8 = 0x86;
    pub const EXEC_CHANNEL: u8 = 0x87;
    pub const OPEN_URL: u8 = 0x88;
    pub const COPY: u8 = 0x89;
}

fn put_winsize(out: &mut Vec<u8>, w: WinSize) {
    put::u16(out, w.rows);
    put::u16(out, w.cols);
}

fn get_winsize(r: &mut Reader<'_>) -> Result<WinSize, DecodeError> {
    Ok(WinSize { rows: r.u16()?, cols: r.u16()? })
}

impl Wire for HostMsg {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            HostMsg::Setup(s) => {
                put::u8(out, tag::SETUP);
                put::u16(out, s.version);
                put::u64(out, s.clock_unix_nanos);
                put::str(out, &s.hostname);
                put::u32(out, s.shares.len() as u32);
                for share in &s.shares {
                    put::str(out, &share.tag);
                    put::str(out, &share.guest_path);
                    put::bool(out, share.read_only);
                }
                put::u32(out, s.binds.len() as u32);
                for b in &s.binds {
                    put::str(out, &b.source);
                    put::str(out, &b.target);
                    put::bool(out, b.read_only);
                }
                put::u32(out, s.writes.len() as u32);
                for w in &s.writes {
                    put::str(out, &w.path);
                    put::bytes(out, &w.data);
                    put::u32(out, w.mode);
                }
                put::str(out, &s.project);
            }
            HostMsg::Exec(e) => {
                put::u8(out, tag::EXEC);
                put::u32(out, e.argv.len() as u32);
                for a in &e.argv {
                    put::str(out, a);
                }
                put::u32(out, e.env.len() as u32);
                for (k, v) in &e.env {
                    put::str(out, k);
                    put::str(out, v);
                }
                put::str(out, &e.cwd);
                match e.tty {
                    None => put::u8(out, 0),
                    Some(w) => {
                        put::u8(out, 1);
                        put_winsize(out, w);
                    }
                }
            }
            HostMsg::Stdin(data) => {
                put::u8(out, tag::STDIN);
                put::bytes(out, data);
            }
            HostMsg::StdinEof => put::u8(out, tag::STDIN_EOF),
            HostMsg::Resize(w) => {
                put::u8(out, tag::RESIZE);
                put_winsize(out, *w);
            }
            HostMsg::Signal(sig) => {
                put::u8(out, tag::SIGNAL);
                put::i32(out, *sig);
            }
            HostMsg::Shutdown { grace_ms } => {
                put::u8(out, tag::SHUTDOWN);
                put::u32(out, *grace_ms);
            }
            HostMsg::OpenExec { token } => {
                put::u8(out, tag::OPEN_EXEC);
                put::u64(out, *token);
            }
            HostMsg::ClipboardClear => put::u8(out, tag::CLIPBOARD_CLEAR),
            HostMsg::ClipboardData { mime, chunk } => {
                put::u8(out, tag::CLIPBOARD_DATA);
                put::str(out, mime);
                put::bytes(out, chunk);
            }
            HostMsg::ClipboardCommit => put::u8(out, tag::CLIPBOARD_COMMIT),
            HostMsg::OpenInbound { token, port } => {
                put::u8(out, tag::OPEN_INBOUND);
                put::u64(out, *token);
                put::u16(out, *port);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            tag::SETUP => {
                let version = r.u16()?;
                let clock_unix_nanos = r.u64()?;
                let hostname = r.str()?;
                let n = r.count()?;
                let mut shares = Vec::with_capacity(n);
                for _ in 0..n {
                    shares.push(Share { tag: r.str()?, guest_path: r.str()?, read_only: r.bool()? });
                }
                let n = r.count()?;
                let mut binds = Vec::with_capacity(n);
                for _ in 0..n {
                    binds.push(Bind { source: r.str()?, target: r.str()?, read_only: r.bool()? });
                }
                let n = r.count()?;
                let mut writes = Vec::with_capacity(n);
                for _ in 0..n {
                    writes.push(FileWrite { path: r.str()?, data: r.bytes()?, mode: r.u32()? });
                }
                let project = r.str()?;
                HostMsg::Setup(Setup { version, clock_unix_nanos, hostname, shares, binds, writes, project })
            }
            tag::EXEC => {
                let n = r.count()?;
                let mut argv = Vec::with_capacity(n);
                for _ in 0..n {
                    argv.push(r.str()?);
                }
                let n = r.count()?;
                let mut env = Vec::with_capacity(n);
                for _ in 0..n {
                    env.push((r.str()?, r.str()?));
                }
                let cwd = r.str()?;
                let tty = match r.u8()? {
                    0 => None,
                    1 => Some(get_winsize(r)?),
                    _ => return Err(DecodeError::BadValue("tty option")),
                };
                HostMsg::Exec(Exec { argv, env, cwd, tty })
            }
            tag::STDIN => HostMsg::Stdin(r.bytes()?),
            tag::STDIN_EOF => HostMsg::StdinEof,
            tag::RESIZE => HostMsg::Resize(get_winsize(r)?),
            tag::SIGNAL => HostMsg::Signal(r.i32()?),
            tag::SHUTDOWN => HostMsg::Shutdown { grace_ms: r.u32()? },
            tag::OPEN_EXEC => HostMsg::OpenExec { token: r.u64()? },
            tag::CLIPBOARD_CLEAR => HostMsg::ClipboardClear,
            tag::CLIPBOARD_DATA => HostMsg::ClipboardData { mime: r.str()?, chunk: r.bytes()? },
            tag::CLIPBOARD_COMMIT => HostMsg::ClipboardCommit,
            tag::OPEN_INBOUND => HostMsg::OpenInbound { token: r.u64()?, port: r.u16()? },
            t => return Err(DecodeError::UnknownTag(t)),
        })
    }
}

impl Wire for GuestMsg {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GuestMsg::Hello { version, agent_version } => {
                put::u8(out, tag::HELLO);
                put::u16(out, *version);
                put::str(out, agent_version);
            }
            GuestMsg::Ready => put::u8(out, tag::READY),
            GuestMsg::Stdout(d) => {
                put::u8(out, tag::STDOUT);
                put::bytes(out, d);
            }
            GuestMsg::Stderr(d) => {
                put::u8(out, tag::STDERR);
                put::bytes(out, d);
            }
            GuestMsg::Exit(s) => {
                put::u8(out, tag::EXIT);
                put::i32(out, s.code);
                put::i32(out, s.signal);
            }
            GuestMsg::Fatal(m) => {
                put::u8(out, tag::FATAL);
                put::str(out, m);
            }
            GuestMsg::ExecChannel { token } => {
                put::u8(out, tag::EXEC_CHANNEL);
                put::u64(out, *token);
            }
            GuestMsg::OpenUrl { url } => {
                put::u8(out, tag::OPEN_URL);
                put::str(out, url);
            }
            GuestMsg::Copy { mime, data } => {
                put::u8(out, tag::COPY);
                put::str(out, mime);
                put::bytes(out, data);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            tag::HELLO => GuestMsg::Hello { version: r.u16()?, agent_version: r.str()? },
            tag::READY => GuestMsg::Ready,
            tag::STDOUT => GuestMsg::Stdout(r.bytes()?),
            tag::STDERR => GuestMsg::Stderr(r.bytes()?),
            tag::EXIT => GuestMsg::Exit(ExitStatus { code: r.i32()?, signal: r.i32()? }),
            tag::FATAL => GuestMsg::Fatal(r.str()?),
            tag::EXEC_CHANNEL => GuestMsg::ExecChannel { token: r.u64()? },
            tag::OPEN_URL => GuestMsg::OpenUrl { url: r.str()? },
            tag::COPY => GuestMsg::Copy { mime: r.str()?, data: r.bytes()? },
            t => return Err(DecodeError::UnknownTag(t)),
        })
    }
}

/// One sample of every message, in tag order: the round-trip and wire-snapshot tests use them,
/// and `docs/protocol.md` shows their encodings.
pub fn samples() -> (Vec<HostMsg>, Vec<GuestMsg>) {
    let host = vec![
        HostMsg::Setup(Setup {
            version: crate::PROTOCOL_VERSION,
            clock_unix_nanos: 1_700_000_000_123_456_789,
            hostname: "faize".into(),
            shares: vec![Share { tag: "fs0".into(), guest_path: "/run/faize/shares".into(), read_only: false }],
            binds: vec![Bind {
                source: "/run/faize/shares/0".into(),
                target: "/home/u/my proj".into(),
                read_only: false,
            }],
            writes: vec![FileWrite { path: "/home/faize/.claude.json".into(), data: b"{}".to_vec(), mode: 0o600 }],
            project: "/home/u/my proj".into(),
        }),
        HostMsg::Exec(Exec {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("TERM".into(), "xterm".into())],
            cwd: "/workspace".into(),
            tty: Some(WinSize { rows: 24, cols: 80 }),
        }),
        HostMsg::Stdin(b"ls\n".to_vec()),
        HostMsg::StdinEof,
        HostMsg::Resize(WinSize { rows: 50, cols: 132 }),
        HostMsg::Signal(2),
        HostMsg::Shutdown { grace_ms: 5000 },
        HostMsg::OpenExec { token: 0x0123_4567_89ab_cdef },
        HostMsg::ClipboardClear,
        HostMsg::ClipboardData { mime: "image/png".into(), chunk: vec![0x89, b'P', b'N', b'G'] },
        HostMsg::ClipboardCommit,
        HostMsg::OpenInbound { token: 0x0123_4567_89ab_cdef, port: 54545 },
    ];
    let guest = vec![
        GuestMsg::Hello { version: crate::PROTOCOL_VERSION, agent_version: "0.1.0".into() },
        GuestMsg::Ready,
        GuestMsg::Stdout(b"hi\n".to_vec()),
        GuestMsg::Stderr(b"oops\n".to_vec()),
        GuestMsg::Exit(ExitStatus { code: 130, signal: 2 }),
        GuestMsg::Fatal("cannot mount /dev/vda".into()),
        GuestMsg::ExecChannel { token: 0x0123_4567_89ab_cdef },
        GuestMsg::OpenUrl { url: "https://claude.ai/oauth/authorize?x=1".into() },
        GuestMsg::Copy { mime: "text/plain".into(), data: b"copied".to_vec() },
    ];
    (host, guest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_frame, encode_frame, read_frame, FrameBuf, MAX_FRAME_LEN};

    #[test]
    fn every_message_round_trips() {
        let (host, guest) = samples();
        for m in host {
            let f = encode_frame(&m);
            assert_eq!(decode_frame::<HostMsg>(&f[4..]).unwrap(), m);
            assert_eq!(read_frame::<HostMsg>(&mut &f[..]).unwrap(), Some(m));
        }
        for m in guest {
            let f = encode_frame(&m);
            assert_eq!(decode_frame::<GuestMsg>(&f[4..]).unwrap(), m);
        }
    }

    #[test]
    fn garbage_is_rejected_not_trusted() {
        assert_eq!(decode_frame::<HostMsg>(&[0x7f]), Err(DecodeError::UnknownTag(0x7f)));
        assert_eq!(decode_frame::<HostMsg>(&[]), Err(DecodeError::Truncated));
        // A list claiming four billion entries in a tiny frame.
        assert_eq!(decode_frame::<HostMsg>(&[0x02, 0xff, 0xff, 0xff, 0xff]), Err(DecodeError::Truncated));
        assert_eq!(decode_frame::<GuestMsg>(&[0x82, 0]), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(decode_frame::<GuestMsg>(&[0x83, 0, 0, 0, 2, 0xff]), Err(DecodeError::Truncated));
        assert_eq!(decode_frame::<GuestMsg>(&[0x86, 0, 0, 0, 1, 0xff]), Err(DecodeError::BadUtf8));
        let big = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(read_frame::<GuestMsg>(&mut &big[..]).is_err());
        assert_eq!(read_frame::<GuestMsg>(&mut &[][..]).unwrap(), None);
    }

    #[test]
    fn frame_buf_splits_a_stream_at_any_point() {
        let (_, guest) = samples();
        let stream: Vec<u8> = guest.iter().flat_map(encode_frame).collect();
        for step in [1, 3, 7, stream.len()] {
            let mut fb = FrameBuf::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                fb.extend(chunk);
                while let Some(m) = fb.next_frame::<GuestMsg>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, guest);
        }
    }
}
