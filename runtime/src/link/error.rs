//! [`LinkError`]: why a conversation operation failed.

use std::fmt;

/// Why a conversation operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer closed the connection (or exited) cleanly; nothing more
    /// will arrive.
    Disconnected,
    /// A strict message found the peer not waiting for a message; it was
    /// not delivered.
    NotListening,
    /// The peer exited before acknowledging a strict message.
    PeerExited,
    /// Both sides sent a strict message to each other at once; neither is
    /// listening, so neither message was delivered.
    Deadlock,
    /// The request's deadline passed without a reply.
    Timeout,
    /// The peer answered the request with a failure, with its reason.
    Failed(String),
    /// A value could not be encoded or decoded.
    Codec(String),
    /// The connection broke (not a clean close), with why.
    Broken(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Disconnected => f.write_str("the peer disconnected"),
            LinkError::NotListening => f.write_str("the peer was not waiting for a message"),
            LinkError::PeerExited => f.write_str("the peer exited before receiving the message"),
            LinkError::Deadlock => f.write_str("both sides sent a strict message to each other at once"),
            LinkError::Timeout => f.write_str("no reply within the deadline"),
            LinkError::Failed(why) => write!(f, "the peer failed the request: {why}"),
            LinkError::Codec(why) => write!(f, "coding error: {why}"),
            LinkError::Broken(why) => write!(f, "the connection broke: {why}"),
        }
    }
}

impl std::error::Error for LinkError {}
