//! The errors of sending and receiving on a connection, one type per
//! operation (as crossbeam-channel has), so each says only what can
//! happen there.
//!
//! "The peer went away" becomes [`SendError::Disconnected`] or
//! [`RecvError::Disconnected`] in exactly one place: `is_disconnect` (crate-private).

use std::error::Error;
use std::fmt;
use std::io;

use crate::frame::{HelloError, Kind};

/// Whether an OS error means the peer closed its end. The one place where
/// errno values become "disconnected".
pub(crate) fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// A value could not be encoded for sending.
#[derive(Debug)]
pub struct EncodeError {
    pub(crate) type_name: &'static str,
    pub(crate) source: postcard::Error,
    /// What the value's own Serialize said, when postcard keeps only
    /// "custom error" (a `Buffer` that cannot go this way).
    pub(crate) detail: Option<String>,
}

impl EncodeError {
    /// The Rust type that failed to encode.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "could not encode a `{}`: {d}", self.type_name),
            None => write!(f, "could not encode a `{}`: {}", self.type_name, self.source),
        }
    }
}

impl Error for EncodeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// A received message could not be decoded as the requested type. The
/// message is consumed; the connection stays usable.
#[derive(Debug)]
pub struct DecodeError {
    pub(crate) type_name: &'static str,
    pub(crate) len: usize,
    pub(crate) reason: String,
}

impl DecodeError {
    /// The Rust type that was asked for.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Length of the message that failed to decode.
    pub fn message_len(&self) -> usize {
        self.len
    }

    /// Why decoding failed.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not decode a {}-byte message as `{}`: {}",
            self.len, self.type_name, self.reason
        )
    }
}

impl Error for DecodeError {}

/// The peer broke the protocol. The connection is unusable afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub(crate) what: String,
}

impl ProtocolError {
    pub(crate) fn new(what: impl Into<String>) -> ProtocolError {
        ProtocolError { what: what.into() }
    }

    /// What the peer did wrong.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol violation: {}", self.what)
    }
}

impl Error for ProtocolError {}

/// Why [`send`](crate::port::Ipc::send) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The peer closed its end; nothing more can be sent.
    Disconnected,
    /// The encoded message is longer than the connection's frame limit.
    /// Nothing was sent.
    TooLarge {
        /// Encoded length in bytes.
        len: usize,
        /// The connection's limit.
        limit: usize,
    },
    /// The value could not be encoded. Nothing was sent.
    Encode(EncodeError),
    /// The connection cannot do this (for example, passing a port over pipes).
    Unsupported(&'static str),
    /// Any other OS error. The connection is unusable afterwards.
    Io(io::Error),
}

impl SendError {
    pub(crate) fn from_io(e: io::Error) -> SendError {
        if is_disconnect(&e) {
            SendError::Disconnected
        } else {
            SendError::Io(e)
        }
    }

    /// Whether the peer is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendError::Disconnected)
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected => f.write_str("sending on a disconnected port"),
            SendError::TooLarge { len, limit } => write!(
                f,
                "message of {len} bytes exceeds the connection's frame limit of {limit} bytes"
            ),
            SendError::Encode(e) => e.fmt(f),
            SendError::Unsupported(what) => write!(f, "unsupported on this connection: {what}"),
            SendError::Io(e) => write!(f, "send failed: {e}"),
        }
    }
}

impl Error for SendError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            SendError::Encode(e) => Some(e),
            SendError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SendError> for io::Error {
    fn from(e: SendError) -> io::Error {
        match e {
            SendError::Io(e) => e,
            SendError::Disconnected => io::Error::new(io::ErrorKind::BrokenPipe, e),
            SendError::Unsupported(_) => io::Error::new(io::ErrorKind::Unsupported, e),
            _ => io::Error::new(io::ErrorKind::InvalidInput, e),
        }
    }
}

/// Why [`recv`](crate::port::Ipc::recv) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer closed its end and every message it sent has been received.
    Disconnected,
    /// The peer announced a frame longer than this connection accepts.
    /// Nothing was allocated for it; the connection is unusable afterwards.
    TooLarge {
        /// The announced length.
        len: u64,
        /// The connection's limit.
        limit: usize,
    },
    /// The peer closed its end in the middle of a frame.
    Truncated {
        /// Bytes the frame (header included) should have had.
        expected: usize,
        /// Bytes that arrived.
        received: usize,
    },
    /// The message arrived but is not a valid encoding of the requested type.
    /// It is consumed; the connection stays usable.
    Decode(DecodeError),
    /// The next frame is of another kind (a port where a message was
    /// expected, or the reverse). It is left in place for the right call.
    Unexpected {
        /// What the call wanted.
        expected: Kind,
        /// What is next on the connection.
        found: Kind,
    },
    /// The peer broke the protocol; the connection is unusable afterwards.
    Protocol(ProtocolError),
    /// Any other OS error.
    Io(io::Error),
}

impl RecvError {
    pub(crate) fn from_io(e: io::Error) -> RecvError {
        if is_disconnect(&e) {
            RecvError::Disconnected
        } else {
            RecvError::Io(e)
        }
    }

    /// Whether the peer is gone (cleanly, or in the middle of a frame).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvError::Disconnected | RecvError::Truncated { .. })
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str("receiving on a disconnected port"),
            RecvError::TooLarge { len, limit } => write!(
                f,
                "peer announced a frame of {len} bytes, over the connection's limit of {limit} bytes"
            ),
            RecvError::Truncated { expected, received } => write!(
                f,
                "peer closed the connection in the middle of a frame ({received} of {expected} bytes arrived)"
            ),
            RecvError::Decode(e) => e.fmt(f),
            RecvError::Unexpected { expected, found } => {
                write!(f, "expected a {expected} frame, but the next frame is a {found}")
            }
            RecvError::Protocol(e) => e.fmt(f),
            RecvError::Io(e) => write!(f, "receive failed: {e}"),
        }
    }
}

impl Error for RecvError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RecvError::Decode(e) => Some(e),
            RecvError::Protocol(e) => Some(e),
            RecvError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RecvError> for io::Error {
    fn from(e: RecvError) -> io::Error {
        match e {
            RecvError::Io(e) => e,
            RecvError::Disconnected | RecvError::Truncated { .. } => {
                io::Error::new(io::ErrorKind::UnexpectedEof, e)
            }
            _ => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// Why [`try_recv`](crate::port::Ipc::try_recv) returned no message.
#[derive(Debug)]
pub enum TryRecvError {
    /// No complete message is there yet.
    Empty,
    /// Receiving failed (see [`RecvError`]).
    Recv(RecvError),
}

impl TryRecvError {
    /// Whether the peer is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TryRecvError::Recv(e) if e.is_disconnected())
    }
}

impl From<RecvError> for TryRecvError {
    fn from(e: RecvError) -> Self {
        TryRecvError::Recv(e)
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no message is waiting"),
            TryRecvError::Recv(e) => e.fmt(f),
        }
    }
}

impl Error for TryRecvError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TryRecvError::Recv(e) => Some(e),
            TryRecvError::Empty => None,
        }
    }
}

/// Why [`recv_timeout`](crate::port::Ipc::recv_timeout) returned no message.
#[derive(Debug)]
pub enum RecvTimeoutError {
    /// No complete message arrived in time.
    Timeout,
    /// Receiving failed (see [`RecvError`]).
    Recv(RecvError),
}

impl RecvTimeoutError {
    /// Whether the peer is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvTimeoutError::Recv(e) if e.is_disconnected())
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> Self {
        RecvTimeoutError::Recv(e)
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting for a message"),
            RecvTimeoutError::Recv(e) => e.fmt(f),
        }
    }
}

impl Error for RecvTimeoutError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RecvTimeoutError::Recv(e) => Some(e),
            RecvTimeoutError::Timeout => None,
        }
    }
}

/// Why [`Port::connect`](crate::port::Port::connect) failed. Carried inside
/// the returned [`io::Error`]; get it back with [`HandshakeError::from_io`].
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's hello was refused: not a portpool peer, another protocol
    /// version, or a malformed hello.
    Hello(HelloError),
    /// The peer closed its end before completing its hello.
    Disconnected,
    /// The peer did not send its hello in time.
    Timeout,
}

impl HandshakeError {
    /// The handshake error inside an [`io::Error`] returned by `connect`, if any.
    pub fn from_io(e: &io::Error) -> Option<&HandshakeError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<HandshakeError>())
    }

    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            HandshakeError::Hello(_) => io::ErrorKind::InvalidData,
            HandshakeError::Disconnected => io::ErrorKind::UnexpectedEof,
            HandshakeError::Timeout => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, self)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Hello(e) => write!(f, "handshake failed: {e}"),
            HandshakeError::Disconnected => {
                f.write_str("handshake failed: the peer closed its end before saying hello")
            }
            HandshakeError::Timeout => f.write_str("handshake failed: the peer did not say hello in time"),
        }
    }
}

impl Error for HandshakeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            HandshakeError::Hello(e) => Some(e),
            _ => None,
        }
    }
}
