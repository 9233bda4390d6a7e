//! A connection's receiving fd, for polling from a loop of one's own.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use super::{Ipc, IpcReceiver};

/// The fd a connection receives on, to poll for readability from a loop
/// of one's own (`poll`, `epoll`, mio, an async reactor): a socket, or
/// the incoming pipe of a pipe pair.
///
/// Readiness means bytes arrived, not that one frame did, and one read
/// may take in several frames: after the fd polls readable, call
/// `try_recv` until it says `Empty` (or the connection ended) before polling
/// again. Only poll it: reading, writing or changing its flags yourself
/// corrupts the connection's framing.
impl AsFd for IpcReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.fd()
    }
}

/// See [`AsFd` for `IpcReceiver`](IpcReceiver#impl-AsFd-for-IpcReceiver).
impl AsRawFd for IpcReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// The fd the connection receives on: see
/// [`AsFd` for `IpcReceiver`](IpcReceiver#impl-AsFd-for-IpcReceiver).
impl AsFd for Ipc {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

/// See [`AsFd` for `IpcReceiver`](IpcReceiver#impl-AsFd-for-IpcReceiver).
impl AsRawFd for Ipc {
    fn as_raw_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }
}
