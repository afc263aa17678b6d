//! The user's terminal during an interactive session: raw mode that is always undone, the
//! window size, and the `~.` escape (after a newline, like ssh).

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use faize_protocol::WinSize;
use nix::sys::termios::{self, SetArg, Termios};

/// Puts a terminal in raw mode and restores it when dropped (also on error paths).
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("switching the terminal to raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &self.saved);
    }
}

nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);

/// The size of the terminal on `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<WinSize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid struct we pass.
    let ok = unsafe { get_winsize(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut ws) }.is_ok();
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some(WinSize { rows: ws.ws_row, cols: ws.ws_col })
}

/// What the escape filter found in a chunk of keyboard input.
#[derive(Debug, PartialEq, Eq)]
pub struct Filtered {
    /// Bytes to send to the program.
    pub data: Vec<u8>,
    /// The user typed `~.` after a newline: detach from the session.
    pub detach: bool,
}

/// Recognises `~.` at the start of a line; `~~` sends one `~`; any other `~x` passes unchanged.
#[derive(Debug)]
pub struct EscapeFilter {
    line_start: bool,
    tilde: bool,
}

impl Default for EscapeFilter {
    fn default() -> Self {
        Self { line_start: true, tilde: false }
    }
}

impl EscapeFilter {
    pub fn feed(&mut self, input: &[u8]) -> Filtered {
        let mut data = Vec::with_capacity(input.len());
        for &b in input {
            if self.tilde {
                self.tilde = false;
                match b {
                    b'.' => return Filtered { data, detach: true },
                    b'~' => {
                        data.push(b'~');
                        self.line_start = false;
                        continue;
                    }
                    _ => data.push(b'~'),
                }
            } else if self.line_start && b == b'~' {
                self.tilde = true;
                continue;
            }
            data.push(b);
            self.line_start = b == b'\r' || b == b'\n';
        }
        Filtered { data, detach: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        for c in chunks {
            let r = f.feed(c);
            out.extend(r.data);
            if r.detach {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn tilde_dot_after_newline_ends_the_session() {
        assert_eq!(run(&[b"ls\r~."]), (b"ls\r".to_vec(), true));
        assert_eq!(run(&[b"~."]), (vec![], true));
        assert_eq!(run(&[b"ls\r", b"~", b"."]), (b"ls\r".to_vec(), true));
    }

    #[test]
    fn other_tildes_pass_through() {
        assert_eq!(run(&[b"a~."]), (b"a~.".to_vec(), false));
        assert_eq!(run(&[b"\r~~."]), (b"\r~.".to_vec(), false));
        assert_eq!(run(&[b"\r~x"]), (b"\r~x".to_vec(), false));
        assert_eq!(run(&[b"cd ~/src\r"]), (b"cd ~/src\r".to_vec(), false));
        assert_eq!(run(&[b"\x03"]), (b"\x03".to_vec(), false));
    }
}

/// Finds the Ctrl+V keystrokes (byte 0x16) in keyboard input, leaving out bracketed pastes
/// (`ESC [200~` … `ESC [201~`): pasted text is passed through untouched.
#[derive(Debug, Default)]
pub struct PasteKeys {
    in_paste: bool,
    recent: Vec<u8>,
}

impl PasteKeys {
    /// The offsets in `input` of the Ctrl+V bytes the user typed.
    pub fn feed(&mut self, input: &[u8]) -> Vec<usize> {
        let mut keys = Vec::new();
        for (i, &b) in input.iter().enumerate() {
            self.recent.push(b);
            if self.recent.len() > 6 {
                self.recent.remove(0);
            }
            if self.recent.ends_with(b"\x1b[200~") {
                self.in_paste = true;
            } else if self.recent.ends_with(b"\x1b[201~") {
                self.in_paste = false;
            } else if b == 0x16 && !self.in_paste {
                keys.push(i);
            }
        }
        keys
    }
}

#[cfg(test)]
mod paste_tests {
    use super::PasteKeys;

    #[test]
    fn ctrl_v_is_found_outside_bracketed_pastes_even_across_reads() {
        let mut p = PasteKeys::default();
        assert_eq!(p.feed(b"ab\x16cd\x16"), [2, 5]);
        // A paste split over three reads, with a 0x16 inside: untouched.
        assert_eq!(p.feed(b"\x1b[20"), Vec::<usize>::new());
        assert_eq!(p.feed(b"0~x\x16y\x1b[2"), Vec::<usize>::new());
        assert_eq!(p.feed(b"01~\x16"), [3]);
    }
}
