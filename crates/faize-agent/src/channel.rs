//! The vsock control connection to the host: framed messages in both directions.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faize_protocol::{encode_frame, read_frame, GuestMsg, HostMsg, CONTROL_PORT, HOST_CID};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

/// A connection whose writing half can be shared between threads.
#[derive(Clone)]
pub struct Channel {
    writer: Arc<Mutex<File>>,
    reader: Arc<Mutex<File>>,
}

impl Channel {
    /// Connects to the host, retrying briefly while the vsock device settles.
    pub fn connect() -> Result<Self, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match try_connect() {
                Ok(fd) => {
                    let file = File::from(fd);
                    let reader = file.try_clone().map_err(|e| format!("dup vsock: {e}"))?;
                    return Ok(Self { writer: Arc::new(Mutex::new(file)), reader: Arc::new(Mutex::new(reader)) });
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("cannot reach the host on vsock port {CONTROL_PORT}: {e}")),
            }
        }
    }

    /// Sends one message (whole frames only, even with several writer threads).
    pub fn send(&self, msg: &GuestMsg) -> Result<(), String> {
        let frame = encode_frame(msg);
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(&frame).map_err(|e| format!("sending to host: {e}"))
    }

    /// Receives one message; `None` when the host closed the connection.
    pub fn recv(&self) -> Result<Option<HostMsg>, String> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        read_frame(&mut *r).map_err(|e| format!("reading from host: {e}"))
    }

    /// Blocks until the host closes the connection or `limit` passes.
    pub fn wait_for_close(&self, limit: Duration) {
        let this = self.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = this.reader.lock().unwrap_or_else(|p| p.into_inner());
            let mut buf = [0u8; 256];
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(limit);
    }
}

fn try_connect() -> nix::Result<OwnedFd> {
    vsock_connect(CONTROL_PORT)
}

/// Opens a vsock stream to the host on `port`.
pub fn vsock_connect(port: u32) -> nix::Result<OwnedFd> {
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &VsockAddr::new(HOST_CID, port))?;
    Ok(fd)
}
