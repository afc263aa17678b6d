//! The contract between the host (`faize`) and the guest agent (`faize-agent`): the messages
//! they exchange over vsock, their binary encoding, and every constant both sides must agree on.
//!
//! # Wire format
//! A stream of frames. Each frame is `len: u32 BE` followed by `len` bytes: a one-byte message
//! tag, then the message's fields in order. Integers are big-endian; `bytes` and `str` are a
//! `u32 BE` length then the data (`str` is UTF-8); a `list` is a `u32 BE` count then the items;
//! an `option` is a `u8` (0 = none, 1 = some) then the value. A frame longer than
//! [`MAX_FRAME_LEN`] is an error, and so is a frame with bytes left over after its message.
//! `docs/protocol.md` and `tests/wire.snap` record the encoding of every message.
//!
//! # Conversation
//! 1. The agent connects to the host ([`HOST_CID`], [`CONTROL_PORT`]) and sends [`GuestMsg::Hello`].
//! 2. The host checks the version and answers [`HostMsg::Setup`] (or closes the connection).
//! 3. The agent prepares the root filesystem, shares and user, then sends [`GuestMsg::Ready`].
//! 4. The host sends [`HostMsg::Exec`]; the program's output comes back as [`GuestMsg::Stdout`] and
//!    [`GuestMsg::Stderr`]; input goes in as [`HostMsg::Stdin`], window sizes as [`HostMsg::Resize`].
//! 5. When the program ends, the agent flushes its output, syncs the filesystems and sends
//!    [`GuestMsg::Exit`]. The host then stops the VM. [`HostMsg::Shutdown`] asks the agent to stop
//!    the program early (SIGTERM, then SIGKILL after the grace period).

mod codec;
mod messages;
pub mod net;

pub use codec::{decode_frame, encode_frame, read_frame, DecodeError, FrameBuf, Wire};
pub use messages::*;

/// Version of this protocol; both sides must speak exactly the same one.
pub const PROTOCOL_VERSION: u16 = 8;

/// Largest frame accepted in either direction (length prefix excluded).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Largest chunk of terminal or pipe data put in one message.
pub const MAX_CHUNK: usize = 64 * 1024;

/// vsock context id of the host, as seen from the guest.
pub const HOST_CID: u32 = 2;

/// vsock context id given to the guest.
pub const GUEST_CID: u32 = 3;

/// Host vsock port on which the agent opens the control connection.
pub const CONTROL_PORT: u32 = 1024;

/// Kernel command-line parameter that tells the agent it runs under faize (value: protocol version).
pub const CMDLINE_MARKER: &str = "faize.protocol";

/// virtio-blk serial of the read-only root image; the agent finds its disk by it.
pub const ROOT_DISK_SERIAL: &str = "faize-root";

/// virtio-blk serial of the per-session scratch disk that holds the writable layer.
pub const SCRATCH_DISK_SERIAL: &str = "faize-scratch";

/// Where the agent makes the project visible besides its own absolute path.
pub const WORKSPACE_LINK: &str = "/workspace";

/// Name of the unprivileged user the program runs as inside the VM.
pub const GUEST_USER: &str = "faize";

/// User and group id of [`GUEST_USER`]; virtiofsd maps them to the invoking host user.
pub const GUEST_UID: u32 = 1000;

/// The agent's service for the guest's shims (`xdg-open`, `xclip -i`), on the guest's loopback:
/// one request per connection, `open URL` or `copy MIME LENGTH` then the data.
pub const GUEST_SERVICE_PORT: u16 = 15002;
/// Where the agent keeps the clipboard synced at the last Ctrl+V: `types` (one MIME type per
/// line) and the data of line N in the file `N`.
pub const GUEST_CLIPBOARD_DIR: &str = "/run/faize/clipboard";
/// Present from ClipboardClear to ClipboardCommit: the shims wait while it exists.
pub const GUEST_CLIPBOARD_PENDING: &str = "/run/faize/clipboard.pending";
/// The guest's PATH. The host's toolchain folder comes first when it is shared.
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `~/.faize/toolchain` is shared, read-write.
pub const TOOLCHAIN_DIR: &str = "/opt/toolchain";

/// Where the agent mounts the virtio-fs shares; each shared folder is a numbered folder below
/// it, bind-mounted at its target.
pub const SHARES_DIR: &str = "/run/faize/shares";

/// Exit code the agent reports when the program could not be found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Exit code the agent reports when the program exists but could not be run.
pub const EXIT_CANNOT_EXEC: i32 = 126;
