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
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // the OS layer: the rings in a mapping both processes write
mod shm;
#[allow(unsafe_code)] // the OS layer: sendmsg/recvmsg with SCM_RIGHTS
mod socket;
mod writer;

use std::os::fd::OwnedFd;
use std::sync::Arc;

pub use reader::{Reader, Wait};
pub use writer::{AppendError, SendStats, Writer};

/// Most fds one frame may carry (a pipe-pair port carries two; a message,
/// one per `Buffer` in it): one `sendmsg` takes at most 253 (the kernel's
/// `SCM_MAX_FD`), and a map's chunk of jobs that each return a buffer
/// needs many.
pub(crate) const MAX_FDS_PER_FRAME: usize = 250;

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
    /// The peer's ring in shared memory (the socket stays beside it).
    #[cfg(target_os = "linux")]
    Shm(shm::ShmRead),
}

/// The write side of a connection.
#[derive(Debug)]
pub(crate) enum WriteIo {
    Socket(Arc<OwnedFd>),
    Pipe(OwnedFd),
    /// Our ring in shared memory.
    #[cfg(target_os = "linux")]
    Shm(shm::ShmWrite),
}

/// A way to sleep until a connection has something to read, without
/// holding its [`Reader`] (a background reader sleeps on it while another
/// thread may take the reader at any moment).
#[derive(Debug)]
pub(crate) enum WaitHandle {
    /// A duplicate of a socket's or a pipe's fd: readable means readable.
    Fd(OwnedFd),
    /// A shared-memory connection: its doorbell and flags.
    #[cfg(target_os = "linux")]
    Shm(Arc<shm::Conn>),
}

impl WaitHandle {
    /// Sleeps until the connection has something to read (or has ended).
    pub(crate) fn wait(&self) -> std::io::Result<()> {
        match self {
            WaitHandle::Fd(fd) => crate::sys::poll_readable(std::os::fd::AsFd::as_fd(fd), None).map(drop),
            #[cfg(target_os = "linux")]
            WaitHandle::Shm(conn) => conn.wait_readable(None).map(drop),
        }
    }

    /// Shuts the reading side down, so whoever sleeps on it or reads sees
    /// the end at once (a pipe: nothing happens).
    pub(crate) fn shutdown_read(&self) {
        match self {
            WaitHandle::Fd(fd) => crate::sys::shutdown_read(std::os::fd::AsFd::as_fd(fd)),
            #[cfg(target_os = "linux")]
            WaitHandle::Shm(conn) => conn.shutdown_read(),
        }
    }
}

/// The shared-memory fuzz harness (`crate::fuzzing`).
#[cfg(target_os = "linux")]
pub(crate) fn shm_hostile_peer(script: &[u8]) {
    shm::hostile_peer(script);
}

/// Moves a connection whose hellos were just exchanged onto shared memory
/// (Linux, socket connections only); `create`: this side makes the
/// segment, the other accepts it. `Ok(false)`: it stays on the socket, as
/// both sides know. Elsewhere it always stays.
pub(crate) fn upgrade_to_shm(
    reader: &mut Reader,
    writer: &mut Writer,
    create: bool,
    deadline: std::time::Instant,
) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        shm::upgrade(reader, writer, create, deadline)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (reader, writer, create, deadline);
        Ok(false)
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
