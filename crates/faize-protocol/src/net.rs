//! The network channel: every DNS question and outgoing TCP connection of the guest is asked of
//! the host on its own vsock connection to [`NET_PORT`]. A connection starts with one
//! [`NetRequest`] frame and gets one [`NetReply`] frame; after an allowed `Connect`, the
//! connection carries the TCP stream's bytes both ways, unframed.

use crate::codec::{put, DecodeError, Reader, Wire};

/// Host vsock port of the network channel.
pub const NET_PORT: u32 = 1025;

/// Guest loopback port to which nftables redirects every outgoing TCP connection.
pub const REDIRECT_PORT: u16 = 15001;

/// Guest network the agent's DNS answers come from (198.18.0.0/15): each allowed name gets an
/// address there, which the agent maps back to the name.
pub const SYNTHETIC_NET: ([u8; 4], u8) = ([198, 18, 0, 0], 15);

/// Guest to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetRequest {
    /// May this name be used? (A DNS question.)
    Resolve { name: String },
    /// Connect to `host` (a name, or a literal IPv4/IPv6 address) on `port`.
    Connect { host: String, port: u16 },
}

/// Host to guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetReply {
    Allowed,
    Denied { reason: String },
}

mod tag {
    pub const RESOLVE: u8 = 0x10;
    pub const CONNECT: u8 = 0x11;
    pub const ALLOWED: u8 = 0x90;
    pub const DENIED: u8 = 0x91;
}

impl Wire for NetRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NetRequest::Resolve { name } => {
                put::u8(out, tag::RESOLVE);
                put::str(out, name);
            }
            NetRequest::Connect { host, port } => {
                put::u8(out, tag::CONNECT);
                put::str(out, host);
                put::u16(out, *port);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            tag::RESOLVE => NetRequest::Resolve { name: r.str()? },
            tag::CONNECT => NetRequest::Connect { host: r.str()?, port: r.u16()? },
            t => return Err(DecodeError::UnknownTag(t)),
        })
    }
}

impl Wire for NetReply {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NetReply::Allowed => put::u8(out, tag::ALLOWED),
            NetReply::Denied { reason } => {
                put::u8(out, tag::DENIED);
                put::str(out, reason);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            tag::ALLOWED => NetReply::Allowed,
            tag::DENIED => NetReply::Denied { reason: r.str()? },
            t => return Err(DecodeError::UnknownTag(t)),
        })
    }
}

/// One sample of each, for the round-trip and wire-snapshot tests.
pub fn net_samples() -> (Vec<NetRequest>, Vec<NetReply>) {
    (
        vec![
            NetRequest::Resolve { name: "registry.npmjs.org".into() },
            NetRequest::Connect { host: "api.anthropic.com".into(), port: 443 },
        ],
        vec![NetReply::Allowed, NetReply::Denied { reason: "no rule allows evil.example".into() }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_frame, encode_frame};

    #[test]
    fn round_trips_and_rejects_garbage() {
        let (reqs, replies) = net_samples();
        for m in reqs {
            assert_eq!(decode_frame::<NetRequest>(&encode_frame(&m)[4..]).unwrap(), m);
        }
        for m in replies {
            assert_eq!(decode_frame::<NetReply>(&encode_frame(&m)[4..]).unwrap(), m);
        }
        assert!(decode_frame::<NetRequest>(&[0x11, 0, 0, 0, 1, b'a']).is_err());
        assert!(decode_frame::<NetRequest>(&[0x01]).is_err());
    }
}
