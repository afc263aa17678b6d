//! Framing and the primitive encodings (see the crate docs for the format).

use std::io::{self, Read};

use crate::MAX_FRAME_LEN;

/// Why bytes could not be turned into a message.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame (or a field inside it) ended early.
    Truncated,
    /// The frame declares more than [`MAX_FRAME_LEN`] bytes.
    TooLarge(usize),
    /// The tag byte names no message of this direction.
    UnknownTag(u8),
    /// A `str` field is not UTF-8.
    BadUtf8,
    /// An enum-like field holds a value out of range.
    BadValue(&'static str),
    /// The message ended before the frame did.
    TrailingBytes(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => write!(f, "frame truncated"),
            Self::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {MAX_FRAME_LEN}-byte limit"),
            Self::UnknownTag(t) => write!(f, "unknown message tag {t}"),
            Self::BadUtf8 => write!(f, "string field is not UTF-8"),
            Self::BadValue(what) => write!(f, "invalid value for {what}"),
            Self::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for io::Error {
    fn from(e: DecodeError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A message that can be put on the wire.
pub trait Wire: Sized {
    /// Appends tag and fields to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one message from a frame body.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Encodes `msg` as a complete frame, length prefix included.
pub fn encode_frame<M: Wire>(msg: &M) -> Vec<u8> {
    let mut out = vec![0; 4];
    msg.encode(&mut out);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Decodes one frame body (without its length prefix).
pub fn decode_frame<M: Wire>(body: &[u8]) -> Result<M, DecodeError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(body.len()));
    }
    let mut r = Reader { buf: body };
    let msg = M::decode(&mut r)?;
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(r.buf.len()));
    }
    Ok(msg)
}

/// Reads one frame from a blocking reader; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame<M: Wire>(r: &mut impl Read) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(len).into());
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(decode_frame(&body)?))
}

/// Accumulates bytes from a non-blocking source and yields whole frames (used by the async host).
#[derive(Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// Adds bytes just read.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the bytes received after the last complete frame (when the stream switches from
    /// frames to raw bytes).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Takes the next complete frame, if there is one.
    pub fn next_frame<M: Wire>(&mut self) -> Result<Option<M>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = decode_frame(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }
}

/// Cursor over a frame body.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue("bool")),
        }
    }
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub(crate) fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError::BadUtf8)
    }
    /// Reads a count and checks it against what is left, so a hostile count cannot make the
    /// decoder reserve gigabytes: each item takes at least one byte.
    pub(crate) fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
}

/// Primitive writers matching [`Reader`].
pub(crate) mod put {
    pub fn u8(out: &mut Vec<u8>, v: u8) {
        out.push(v);
    }
    pub fn u16(out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i32(out: &mut Vec<u8>, v: i32) {
        u32(out, v as u32);
    }
    pub fn u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bool(out: &mut Vec<u8>, v: bool) {
        out.push(v as u8);
    }
    pub fn bytes(out: &mut Vec<u8>, v: &[u8]) {
        u32(out, v.len() as u32);
        out.extend_from_slice(v);
    }
    pub fn str(out: &mut Vec<u8>, v: &str) {
        bytes(out, v.as_bytes());
    }
}
