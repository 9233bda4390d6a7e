//! The wire format: the handshake hello and the frame header.
//!
//! Everything here is pure (no I/O), so the fuzzer and the property tests
//! drive it directly. See `README.md` beside this file for the format.

use std::fmt;

/// The eight bytes every portpool connection starts with.
pub const MAGIC: [u8; 8] = *b"PORTPOOL";

/// The protocol version this build speaks. Peers must speak the same one.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bit 0 of the hello's flags byte: the sender can use shared memory.
const SHM_FLAG: u8 = 1;

/// Length of the hello each side sends first.
pub const HELLO_LEN: usize = 16;

/// Length of a frame header: `u32` little-endian payload length, then a kind byte.
pub const HEADER_LEN: usize = 5;

/// Default largest payload a connection accepts: 256 MiB.
pub const DEFAULT_MAX_FRAME: usize = 256 << 20;

/// The largest limit that can be configured: the header's `u32` length.
pub const MAX_FRAME_LIMIT: usize = u32::MAX as usize;

/// What a peer says it is in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// A plain peer: either end of a port pair used directly.
    Peer = 0,
    /// A supervisor talking to its worker.
    Supervisor = 1,
    /// A worker talking to its supervisor.
    Worker = 2,
}

impl Role {
    /// The role for a wire byte, if it names one.
    pub fn from_byte(b: u8) -> Option<Role> {
        match b {
            0 => Some(Role::Peer),
            1 => Some(Role::Supervisor),
            2 => Some(Role::Worker),
            _ => None,
        }
    }
}

/// How the values in a connection's frames are encoded, announced by
/// both sides in their hellos (byte 11): a mismatch fails the handshake
/// on both sides with an error naming both, rather than frames neither
/// side can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Codec {
    /// postcard: compact, Rust to Rust (the default).
    #[default]
    Postcard = 0,
    /// JSON text, one object per frame, for peers in other languages
    /// (`docs/protocol.md`).
    Json = 1,
}

impl Codec {
    /// The codec for a hello byte, if it names one.
    pub fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Postcard),
            1 => Some(Codec::Json),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Postcard => "postcard",
            Codec::Json => "JSON",
        })
    }
}

/// The first bytes on every connection, sent by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's role.
    pub role: Role,
    /// The codec the sender's frames use.
    pub codec: Codec,
    /// The sender can move this connection to shared memory (byte 12, bit
    /// 0). It moves when both sides can: the supervisor, or else the side
    /// with the larger `nonce`, makes the segment (equal nonces: it stays).
    pub shared_memory: bool,
    /// A random number that picks who makes the segment between equals
    /// (bytes 13..15, little-endian).
    pub nonce: u16,
}

/// Why a peer's hello was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// The bytes do not start with [`MAGIC`]: the peer is not a portpool port.
    BadMagic {
        /// The first eight bytes that arrived instead.
        found: [u8; 8],
    },
    /// The peer speaks another protocol version.
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The role byte names no role.
    UnknownRole(u8),
    /// The codec byte names no codec.
    UnknownCodec(u8),
    /// The peer encodes its frames with another codec.
    CodecMismatch {
        /// Our codec.
        ours: Codec,
        /// The peer's.
        theirs: Codec,
    },
    /// Reserved bytes were not zero.
    Reserved,
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloError::BadMagic { found } => write!(
                f,
                "peer is not a portpool port: expected magic {:?}, got {:?}",
                String::from_utf8_lossy(&MAGIC),
                String::from_utf8_lossy(found)
            ),
            HelloError::VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}"
            ),
            HelloError::UnknownRole(r) => write!(f, "peer sent unknown role byte {r}"),
            HelloError::UnknownCodec(c) => write!(f, "peer sent unknown codec byte {c}"),
            HelloError::CodecMismatch { ours, theirs } => write!(
                f,
                "codec mismatch: the peer encodes its frames as {theirs}, this side as {ours}"
            ),
            HelloError::Reserved => f.write_str("peer's hello has non-zero reserved bytes"),
        }
    }
}

impl std::error::Error for HelloError {}

impl Hello {
    /// Our hello in the given role, with postcard frames.
    pub fn ours(role: Role) -> Hello {
        Hello::with_codec(role, Codec::Postcard)
    }

    /// Our hello in the given role and codec.
    pub fn with_codec(role: Role, codec: Codec) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role,
            codec,
            shared_memory: false,
            nonce: 0,
        }
    }

    /// Whether this connection moves to shared memory, and if so whether
    /// the side that sent `self` makes the segment: `Some(true)` it makes
    /// it, `Some(false)` the peer does, `None` it stays on the socket.
    pub fn shared_memory_maker(&self, peer: &Hello) -> Option<bool> {
        if !(self.shared_memory && peer.shared_memory) {
            return None;
        }
        match (self.role, peer.role) {
            (Role::Supervisor, r) if r != Role::Supervisor => Some(true),
            (r, Role::Supervisor) if r != Role::Supervisor => Some(false),
            _ if self.nonce == peer.nonce => None,
            _ => Some(self.nonce > peer.nonce),
        }
    }

    /// Encodes the hello: magic, version (u16 LE), role, codec, a flags
    /// byte (bit 0: shared memory), the nonce (u16 LE), a reserved zero byte.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10] = self.role as u8;
        b[11] = self.codec as u8;
        b[12] = u8::from(self.shared_memory);
        b[13..15].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }

    /// Parses and checks a peer's hello against our protocol version.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, HelloError> {
        let mut found = [0u8; 8];
        found.copy_from_slice(&b[..8]);
        if found != MAGIC {
            return Err(HelloError::BadMagic { found });
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != PROTOCOL_VERSION {
            return Err(HelloError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let role = Role::from_byte(b[10]).ok_or(HelloError::UnknownRole(b[10]))?;
        let codec = Codec::from_byte(b[11]).ok_or(HelloError::UnknownCodec(b[11]))?;
        if b[12] & !SHM_FLAG != 0 || b[15] != 0 {
            return Err(HelloError::Reserved);
        }
        Ok(Hello {
            version,
            role,
            codec,
            shared_memory: b[12] & SHM_FLAG != 0,
            nonce: u16::from_le_bytes([b[13], b[14]]),
        })
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// An encoded message (postcard by default) or raw bytes.
    Message = 1,
    /// A transferred port: a one-byte payload naming its flavor, its fds
    /// attached with `SCM_RIGHTS` to the frame's first byte.
    Port = 2,
    /// The fds of the message frame that follows (the files of its
    /// [`Buffer`](crate::port::Buffer)s): a one-byte payload, their count,
    /// the fds attached to the frame's first byte. Both frames go in one write.
    Fds = 3,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Message => "message",
            Kind::Port => "port",
            Kind::Fds => "fds",
        })
    }
}

/// Payload byte of a [`Kind::Port`] frame: a socket port, one fd attached.
pub const PORT_FLAVOR_SOCKET: u8 = 0;
/// Payload byte of a [`Kind::Port`] frame: a pipe-pair port, two fds attached (read, write).
pub const PORT_FLAVOR_PIPES: u8 = 1;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes (the header not included).
    pub len: usize,
    /// What the payload is.
    pub kind: Kind,
}

/// Why a frame header was refused. Each one leaves the stream unusable,
/// except that none of them allocates anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The announced payload is longer than this connection accepts.
    TooLarge {
        /// The announced length.
        len: u64,
        /// The connection's limit.
        limit: usize,
    },
    /// The kind byte names no frame kind.
    UnknownKind(u8),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooLarge { len, limit } => {
                write!(f, "frame of {len} bytes exceeds the limit of {limit} bytes")
            }
            HeaderError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
        }
    }
}

impl std::error::Error for HeaderError {}

impl Header {
    /// Encodes a header.
    ///
    /// # Panics
    /// If `len` does not fit in a `u32`; callers check the limit first.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let len = u32::try_from(self.len).expect("frame length checked against limit");
        let l = len.to_le_bytes();
        [l[0], l[1], l[2], l[3], self.kind as u8]
    }

    /// Decodes a header from the start of `buf`, checking it against `limit`.
    /// `Ok(None)` means fewer than [`HEADER_LEN`] bytes are there yet.
    pub fn decode(buf: &[u8], limit: usize) -> Result<Option<Header>, HeaderError> {
        let Some(h) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if len as u64 > limit as u64 {
            return Err(HeaderError::TooLarge {
                len: len as u64,
                limit,
            });
        }
        let kind = match h[4] {
            1 => Kind::Message,
            2 => Kind::Port,
            3 => Kind::Fds,
            k => return Err(HeaderError::UnknownKind(k)),
        };
        Ok(Some(Header {
            len: len as usize,
            kind,
        }))
    }
}

/// A complete frame found at the front of a buffer by [`split_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split<'a> {
    /// The frame's header.
    pub header: Header,
    /// The frame's payload.
    pub payload: &'a [u8],
    /// Bytes the whole frame took (header and payload).
    pub used: usize,
}

/// Splits complete frames off the front of a byte buffer: the pure core of
/// the receive path. Returns the first frame, or `Ok(None)` if it is not
/// complete yet.
pub fn split_frame(buf: &[u8], limit: usize) -> Result<Option<Split<'_>>, HeaderError> {
    let Some(header) = Header::decode(buf, limit)? else {
        return Ok(None);
    };
    let used = HEADER_LEN + header.len;
    Ok(buf.get(HEADER_LEN..used).map(|payload| Split {
        header,
        payload,
        used,
    }))
}

/// Appends one frame (header and payload) to `out`.
pub fn encode_frame(kind: Kind, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(
        &Header {
            len: payload.len(),
            kind,
        }
        .encode(),
    );
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_names_both_versions() {
        let h = Hello::ours(Role::Worker);
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let mut other = h.encode();
        other[8..10].copy_from_slice(&7u16.to_le_bytes());
        let err = Hello::decode(&other).unwrap_err();
        assert_eq!(
            err,
            HelloError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 7
            }
        );
        let text = err.to_string();
        assert!(text.contains("version 1") && text.contains("version 7"), "{text}");
    }

    #[test]
    fn header_over_limit_is_refused_before_anything_else() {
        let b = [0xff, 0xff, 0xff, 0xff, 1];
        assert_eq!(
            Header::decode(&b, DEFAULT_MAX_FRAME),
            Err(HeaderError::TooLarge {
                len: u32::MAX as u64,
                limit: DEFAULT_MAX_FRAME
            })
        );
    }

    #[test]
    fn split_frame_waits_for_whole_frame() {
        let mut buf = Vec::new();
        encode_frame(Kind::Message, b"hello", &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(split_frame(&buf[..cut], 64), Ok(None));
        }
        let f = split_frame(&buf, 64).unwrap().unwrap();
        assert_eq!(
            (f.header.kind, f.payload, f.used),
            (Kind::Message, &b"hello"[..], buf.len())
        );
    }
}
