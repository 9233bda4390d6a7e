//! The framing under every connection: length-prefixed frames over a
//! socket or a pair of pipes, with a size limit a peer cannot talk past.
//! Most programs never use it directly; its limits and wire format are
//! told here and in the scenarios below.
//!
//! # The contract every flavor provides
//!
//! | operation | socket (`socket.rs`) | pipes (`pipe.rs`) |
//! |---|---|---|
//! | write a list of slices completely, in order, handling partial writes, `EINTR`, `EAGAIN` | `sendmsg` | `writev` |
//! | attach fds to the first byte of a write | `SCM_RIGHTS` | unsupported |
//! | read what is there without blocking, collecting fds that arrive | `recvmsg(MSG_DONTWAIT)` | `poll(0)` + `read` |
//! | wait until readable, with an optional timeout | `poll` | `poll` |
//!
//! On top of that contract, [`Reader`] splits frames off a buffer (spinning
//! briefly, then sleeping in `poll`), and [`Writer`] coalesces frames from
//! any number of threads into as few writes as it can. `frame.rs` holds the
//! wire format; `README.md` beside this file explains framing, coalescing
//! and fd passing as named scenarios.
//!
//! Not for: encoding values (the port layer does that) or deciding who
//! talks to whom.
#![doc = include_str!("README.md")]

/// The wire format: a pure module of its own below the transport and its
/// errors (`crate::frame`), shown here where users look for it.
#[doc(inline)]
pub use crate::frame;
#[allow(unsafe_code)] // the OS layer: read/write on pipes into spare capacity
mod pipe;
mod reader;
#[allow(unsafe_code)] // the OS layer: sendmsg/recvmsg with SCM_RIGHTS
mod socket;
mod writer;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

pub use reader::{Reader, Wait};
pub use writer::{AppendError, SendStats, Writer};

/// Most fds one frame may carry (a pipe-pair port carries two).
pub(crate) const MAX_FDS_PER_FRAME: usize = 2;

/// Default time a blocked receive spins (polling without sleeping) before
/// it sleeps in the kernel. Long enough to cover a round trip between two
/// busy processes on this class of machine, short enough that an idle
/// connection costs nothing measurable.
pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// What a non-blocking read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// This many bytes were appended.
    Data(usize),
    /// Nothing is there now.
    WouldBlock,
    /// The peer closed its end.
    Eof,
}

/// The read side of a connection: a socket (shared with the write side) or
/// the read end of a pipe.
#[derive(Debug)]
pub(crate) enum ReadIo {
    Socket(Arc<OwnedFd>),
    Pipe(OwnedFd),
}

/// The write side of a connection.
#[derive(Debug)]
pub(crate) enum WriteIo {
    Socket(Arc<OwnedFd>),
    Pipe(OwnedFd),
}

impl ReadIo {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            ReadIo::Socket(fd) => fd.as_fd(),
            ReadIo::Pipe(fd) => fd.as_fd(),
        }
    }

    /// Appends at most `max` bytes (and any fds) without blocking.
    fn read_nonblocking(
        &self,
        buf: &mut Vec<u8>,
        max: usize,
        fds: &mut VecDeque<OwnedFd>,
    ) -> io::Result<ReadOutcome> {
        match self {
            ReadIo::Socket(fd) => socket::recv_nonblocking(fd.as_fd(), buf, max, fds),
            ReadIo::Pipe(fd) => pipe::read_nonblocking(fd.as_fd(), buf, max),
        }
    }
}

impl WriteIo {
    /// Writes `bufs` completely; `fds` go with the first byte. Returns the
    /// number of write calls it took.
    fn write_all(&self, bufs: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<u64> {
        match self {
            WriteIo::Socket(fd) => socket::send_all(fd.as_fd(), bufs, fds),
            WriteIo::Pipe(fd) => {
                if !fds.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "file descriptors cannot be passed over a pipe",
                    ));
                }
                pipe::write_all(fd.as_fd(), bufs)
            }
        }
    }

    /// Writes what the fd takes now: `Ok(n)`, 0 when it is full. A pipe
    /// in blocking mode (its mode may be shared with another process, so
    /// it is left alone) writes all; a non-blocking one writes part.
    fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteIo::Socket(fd) => socket::send_nonblocking(fd.as_fd(), buf),
            WriteIo::Pipe(fd) => pipe::write_some(fd.as_fd(), buf),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            WriteIo::Socket(fd) => fd.as_fd(),
            WriteIo::Pipe(fd) => fd.as_fd(),
        }
    }

    fn can_pass_fds(&self) -> bool {
        matches!(self, WriteIo::Socket(_))
    }
}

/// Builds the two halves of a connection over a socket (both directions on
/// one fd).
pub(crate) fn over_socket(fd: OwnedFd) -> (Reader, Writer) {
    let fd = Arc::new(fd);
    (
        Reader::new(ReadIo::Socket(fd.clone())),
        Writer::new(WriteIo::Socket(fd)),
    )
}

/// Builds the two halves of a connection over a pair of pipes.
pub(crate) fn over_pipes(incoming: OwnedFd, outgoing: OwnedFd) -> (Reader, Writer) {
    (
        Reader::new(ReadIo::Pipe(incoming)),
        Writer::new(WriteIo::Pipe(outgoing)),
    )
}
