//! The guest's side of the clipboard and of opening URLs:
//! - the host's clipboard as of the user's last Ctrl+V, kept in [`GUEST_CLIPBOARD_DIR`] for the
//!   `xclip`, `xsel` and `wl-paste` shims (written by the host into `/usr/local/bin`);
//! - a service on the guest's loopback ([`GUEST_SERVICE_PORT`]) through which the `xdg-open`
//!   and `xclip -i` shims reach the host, which decides what to do with each request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use faize_protocol::{GuestMsg, GUEST_CLIPBOARD_DIR, GUEST_CLIPBOARD_PENDING, GUEST_SERVICE_PORT, MAX_CHUNK};

use crate::channel::Channel;

/// The largest copy a guest program can hand to the host.
const MAX_COPY: usize = MAX_CHUNK * 8;

/// The clipboard being received, then swapped in whole.
#[derive(Default)]
pub struct Staging {
    items: Vec<(String, Vec<u8>)>,
    generation: u64,
}

impl Staging {
    /// A new clipboard is coming: the shims wait for it from now on.
    pub fn clear(&mut self) {
        self.items.clear();
        let _ = std::fs::write(GUEST_CLIPBOARD_PENDING, b"");
    }

    pub fn add(&mut self, mime: String, chunk: Vec<u8>) {
        match self.items.iter_mut().find(|(m, _)| *m == mime) {
            Some((_, data)) => data.extend_from_slice(&chunk),
            None => self.items.push((mime, chunk)),
        }
    }

    /// Writes the staged content to a new folder and points [`GUEST_CLIPBOARD_DIR`] at it in one
    /// rename, so a shim never reads half of one clipboard and half of another.
    pub fn commit(&mut self) -> Result<(), String> {
        let done = self.swap_in();
        // Even when writing failed: the shims then serve the previous content rather than hang.
        let _ = std::fs::remove_file(GUEST_CLIPBOARD_PENDING);
        done
    }

    fn swap_in(&mut self) -> Result<(), String> {
        self.generation += 1;
        let link = Path::new(GUEST_CLIPBOARD_DIR);
        let base = link.parent().unwrap_or(Path::new("/run"));
        let dir = base.join(format!("clipboard.{}", self.generation));
        write_store(&dir, &self.items).map_err(|e| format!("writing the clipboard: {e}"))?;
        let tmp_link = base.join("clipboard.link");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&dir, &tmp_link).map_err(|e| format!("linking the clipboard: {e}"))?;
        std::fs::rename(&tmp_link, link).map_err(|e| format!("swapping the clipboard: {e}"))?;
        let old = base.join(format!("clipboard.{}", self.generation - 1));
        let _ = std::fs::remove_dir_all(old);
        self.items.clear();
        Ok(())
    }
}

fn write_store(dir: &PathBuf, items: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut types = String::new();
    for (i, (mime, data)) in items.iter().enumerate() {
        // A MIME type is one line; anything else from the host is dropped.
        if mime.is_empty() || mime.contains(['\n', '\r']) {
            continue;
        }
        std::fs::write(dir.join(i.to_string()), data)?;
        types += &format!("{mime}\n");
    }
    std::fs::write(dir.join("types"), types)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Serves the shims' requests for the VM's life.
pub fn serve(channel: Channel) {
    let Ok(listener) = TcpListener::bind(("127.0.0.1", GUEST_SERVICE_PORT)) else {
        eprintln!("faize-agent: cannot listen on 127.0.0.1:{GUEST_SERVICE_PORT}; xdg-open will not reach the host");
        return;
    };
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let channel = channel.clone();
            std::thread::spawn(move || {
                let reply = match handle(conn.try_clone(), &channel) {
                    Ok(()) => "ok\n".to_string(),
                    Err(e) => format!("error: {e}\n"),
                };
                let mut conn = conn;
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
}

/// `open URL` or `copy MIME LENGTH` followed by the data.
fn handle(conn: std::io::Result<std::net::TcpStream>, channel: &Channel) -> Result<(), String> {
    let conn = conn.map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(conn.take(MAX_COPY as u64 + 4096));
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches(['\n', '\r']);
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "open" if !rest.is_empty() && rest.len() <= 8192 => channel.send(&GuestMsg::OpenUrl { url: rest.to_string() }),
        "copy" => {
            let (mime, len) = rest.split_once(' ').ok_or("copy needs a type and a length")?;
            let len: usize = len.parse().map_err(|_| "bad length")?;
            if len > MAX_COPY {
                return Err(format!("copies are limited to {MAX_COPY} bytes"));
            }
            let mut data = vec![0u8; len];
            reader.read_exact(&mut data).map_err(|e| e.to_string())?;
            channel.send(&GuestMsg::Copy { mime: mime.to_string(), data })
        }
        _ => Err("unknown request: use `open URL` or `copy MIME LENGTH`".into()),
    }
}
