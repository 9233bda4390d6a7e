//! The send half: frames from any number of threads are appended to one
//! pending buffer, and whichever sender holds the flush lock writes all of
//! them in one call (README.md, "Coalescing concurrent senders").

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::WriteIo;
use super::frame::{self, HEADER_LEN, Header, Kind};
use crate::error::SendError;

/// Payloads at least this long skip the pending buffer and go to the kernel
/// straight from the caller's slice (no copy).
const DIRECT_WRITE: usize = 64 << 10;

// The write operations of the contract (mod.rs), beside their one caller.
impl WriteIo {
    /// Writes `bufs` completely; `fds` go with the first byte. Returns the
    /// number of write calls it took.
    fn write_all(&self, bufs: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<u64> {
        match self {
            WriteIo::Socket(fd) => super::socket::send_all(fd.as_fd(), bufs, fds),
            WriteIo::Pipe(fd) => {
                if !fds.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "file descriptors cannot be passed over a pipe",
                    ));
                }
                super::pipe::write_all(fd.as_fd(), bufs)
            }
            #[cfg(target_os = "linux")]
            WriteIo::Shm(w) => w.write_all(bufs, fds),
        }
    }

    /// Writes what the fd takes now: `Ok(n)`, 0 when it is full. A pipe
    /// in blocking mode (its mode may be shared with another process, so
    /// it is left alone) writes all; a non-blocking one writes part.
    fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteIo::Socket(fd) => super::socket::send_nonblocking(fd.as_fd(), buf),
            WriteIo::Pipe(fd) => super::pipe::write_some(fd.as_fd(), buf),
            #[cfg(target_os = "linux")]
            WriteIo::Shm(w) => w.write_some(buf),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            WriteIo::Socket(fd) => fd.as_fd(),
            WriteIo::Pipe(fd) => fd.as_fd(),
            #[cfg(target_os = "linux")]
            WriteIo::Shm(w) => w.conn().socket(),
        }
    }

    fn can_pass_fds(&self) -> bool {
        match self {
            WriteIo::Socket(_) => true,
            WriteIo::Pipe(_) => false,
            #[cfg(target_os = "linux")]
            WriteIo::Shm(_) => true,
        }
    }
}

/// Counters of a connection's send half.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Frames handed to the kernel.
    pub frames: u64,
    /// Write system calls made for them.
    pub writes: u64,
}

/// Frames appended but not yet written.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    /// Length of `buf` covering whole frames only: a sender that panicked
    /// mid-encode leaves a partial frame past it, which is cut off.
    committed: usize,
    /// Sequence number of the last frame appended.
    seq: u64,
}

#[derive(Debug, Default)]
struct Flush {
    /// Sequence number of the last frame handed to the kernel.
    written: u64,
    /// The buffer being written; swapped with `Pending::buf`.
    spare: Vec<u8>,
    /// Set once a write failed: every later send fails the same way.
    broken: Option<BrokenWrite>,
}

#[derive(Debug, Clone, Copy)]
enum BrokenWrite {
    Disconnected,
    Io(std::io::ErrorKind),
}

#[derive(Debug)]
struct Shared {
    io: WriteIo,
    limit: AtomicUsize,
    pending: Mutex<Pending>,
    flush: Mutex<Flush>,
    frames: AtomicU64,
    writes: AtomicU64,
}

/// The send half of a connection. Cloning it gives another handle to the
/// same connection; frames from all handles arrive in the order their
/// `append` calls took place.
#[derive(Debug, Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

/// Locks a mutex, ignoring poisoning: the state each lock guards is
/// repaired on entry (see `Pending::committed`).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Writer {
    pub(super) fn new(io: WriteIo) -> Writer {
        Writer {
            shared: Arc::new(Shared {
                io,
                limit: AtomicUsize::new(frame::DEFAULT_MAX_FRAME),
                pending: Mutex::new(Pending::default()),
                flush: Mutex::new(Flush::default()),
                frames: AtomicU64::new(0),
                writes: AtomicU64::new(0),
            }),
        }
    }

    /// Sets the largest payload this side will send.
    pub fn set_max_frame_len(&self, limit: usize) {
        // Relaxed: a plain setting, read on the next send; no other memory
        // depends on it.
        self.shared
            .limit
            .store(limit.min(frame::MAX_FRAME_LIMIT), Ordering::Relaxed);
    }

    /// The largest payload this side will send.
    pub fn max_frame_len(&self) -> usize {
        // Relaxed: see `set_max_frame_len`.
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Whether this connection can carry fds (a socket can, pipes cannot).
    pub fn can_pass_fds(&self) -> bool {
        self.shared.io.can_pass_fds()
    }

    /// The fd written to (for waiting until it takes more).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shared.io.fd()
    }

    /// Frames and write calls so far.
    pub fn stats(&self) -> SendStats {
        // Relaxed: statistics only.
        SendStats {
            frames: self.shared.frames.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
        }
    }

    /// Appends one frame whose payload `encode` writes into the given
    /// buffer, without writing it. Returns the frame's sequence number for
    /// [`flush_through`](Self::flush_through).
    pub fn append<E>(
        &self,
        kind: Kind,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<u64, AppendError<E>> {
        let limit = self.max_frame_len();
        let mut p = lock(&self.shared.pending);
        let start = p.committed;
        p.buf.truncate(start);
        p.buf.extend_from_slice(&[0; HEADER_LEN]);
        if let Err(e) = encode(&mut p.buf) {
            p.buf.truncate(start);
            return Err(AppendError::Encode(e));
        }
        let len = p.buf.len() - start - HEADER_LEN;
        if len > limit {
            p.buf.truncate(start);
            return Err(AppendError::TooLarge { len, limit });
        }
        p.buf[start..start + HEADER_LEN].copy_from_slice(&Header { len, kind }.encode());
        p.committed = p.buf.len();
        p.seq += 1;
        Ok(p.seq)
    }

    /// Returns once every frame up to `seq` has been handed to the kernel,
    /// writing them (and any appended after) itself if no other sender has.
    pub fn flush_through(&self, seq: u64) -> Result<(), SendError> {
        let mut f = lock(&self.shared.flush);
        if f.written >= seq {
            return Ok(());
        }
        self.write_pending(&mut f)
    }

    /// Writes every frame appended so far.
    pub fn flush(&self) -> Result<(), SendError> {
        let mut f = lock(&self.shared.flush);
        self.write_pending(&mut f)
    }

    /// Sends one frame now: appended and flushed, or for a long payload
    /// written straight from `payload` after whatever was pending. `fds`
    /// travel with the frame's first byte.
    pub fn send_frame(&self, kind: Kind, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        let limit = self.max_frame_len();
        if payload.len() > limit {
            return Err(SendError::TooLarge {
                len: payload.len(),
                limit,
            });
        }
        if fds.is_empty() && payload.len() < DIRECT_WRITE {
            let seq = self
                .append(kind, |buf| {
                    buf.extend_from_slice(payload);
                    Ok::<(), std::convert::Infallible>(())
                })
                .map_err(|e| match e {
                    AppendError::TooLarge { len, limit } => SendError::TooLarge { len, limit },
                    AppendError::Encode(never) => match never {},
                })?;
            return self.flush_through(seq);
        }
        if !fds.is_empty() && !self.can_pass_fds() {
            return Err(SendError::Unsupported("passing file descriptors over pipes"));
        }
        let mut f = lock(&self.shared.flush);
        self.write_pending(&mut f)?;
        let header = Header {
            len: payload.len(),
            kind,
        }
        .encode();
        let res = self.shared.io.write_all(&[&header, payload], fds);
        self.record(&mut f, res, 1)
    }

    /// Sends a message frame whose `fds` travel with it: a [`Kind::Fds`]
    /// frame carrying them, then the message, in one write after whatever
    /// was pending (so no other sender's frame comes between).
    pub fn send_message_with_fds(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        self.send_with_fds(payload, fds, None)
    }

    /// [`send_message_with_fds`](Self::send_message_with_fds) for a side
    /// that must not block writing while its peer writes to it (a worker's
    /// answer, README "Writing while the peer writes"): what was pending
    /// and the message's payload are written without blocking, calling
    /// `wait` whenever the connection is full, as
    /// [`flush_with`](Self::flush_with) does. Only the frames' heads, which
    /// the fds ride on, are written with a blocking write.
    pub fn send_message_with_fds_waiting(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        mut wait: impl FnMut() -> std::io::Result<()>,
    ) -> Result<(), SendError> {
        self.send_with_fds(payload, fds, Some(&mut wait))
    }

    fn send_with_fds(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        wait: Option<&mut dyn FnMut() -> std::io::Result<()>>,
    ) -> Result<(), SendError> {
        let limit = self.max_frame_len();
        if payload.len() > limit {
            return Err(SendError::TooLarge {
                len: payload.len(),
                limit,
            });
        }
        if !self.can_pass_fds() {
            return Err(SendError::Unsupported("passing file descriptors over pipes"));
        }
        let count = u8::try_from(fds.len())
            .ok()
            .filter(|&n| usize::from(n) <= super::MAX_FDS_PER_FRAME)
            .ok_or(SendError::Unsupported(
                "more than 250 buffers (MAX_BUFFERS_PER_MESSAGE) in one message: send them in several \
                 messages (in a pool, several jobs)",
            ))?;
        // The fds frame (header, count) and the message's header, then its payload.
        let mut head = [0u8; 2 * HEADER_LEN + 1];
        head[..HEADER_LEN].copy_from_slice(
            &Header {
                len: 1,
                kind: Kind::Fds,
            }
            .encode(),
        );
        head[HEADER_LEN] = count;
        let message = Header {
            len: payload.len(),
            kind: Kind::Message,
        };
        head[HEADER_LEN + 1..].copy_from_slice(&message.encode());
        let mut f = lock(&self.shared.flush);
        let Some(wait) = wait else {
            self.write_pending(&mut f)?;
            let res = self.shared.io.write_all(&[&head, payload], fds);
            return self.record(&mut f, res, 2);
        };
        self.write_pending_waiting(&mut f, &mut *wait)?;
        let res = self
            .shared
            .io
            .write_all(&[&head], fds)
            .and_then(|calls| Ok(calls + self.write_some_waiting(payload, &mut *wait)?));
        self.record(&mut f, res, 2)
    }

    /// Writes `bytes` without blocking in the kernel, calling `wait` while
    /// the connection is full; returns the write calls it took.
    fn write_some_waiting(
        &self,
        bytes: &[u8],
        wait: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let mut off = 0;
        let mut calls = 0u64;
        while off < bytes.len() {
            match self.shared.io.write_some(&bytes[off..])? {
                0 => wait()?,
                n => {
                    off += n;
                    calls += 1;
                }
            }
        }
        Ok(calls)
    }

    /// Writes every frame pending, as [`flush_with`](Self::flush_with).
    fn write_pending_waiting(
        &self,
        f: &mut Flush,
        wait: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<(), SendError> {
        let (upto, frames) = self.take_pending(f)?;
        let res = self.write_some_waiting(&f.spare, wait);
        f.spare.clear();
        if frames == 0 {
            return res.map(drop).map_err(SendError::from_io);
        }
        self.record(f, res, frames)?;
        f.written = upto;
        Ok(())
    }

    /// Writes every frame appended so far without ever blocking in the
    /// kernel: when the socket is full it calls `wait`, which must return
    /// once the socket may take more, and may do other work meanwhile (a
    /// worker reads its incoming jobs there, so that two peers writing to
    /// each other cannot both block; README: "Writing while the peer
    /// writes"). Over pipes this is `flush`.
    pub fn flush_with(&self, mut wait: impl FnMut() -> std::io::Result<()>) -> Result<(), SendError> {
        let mut f = lock(&self.shared.flush);
        self.write_pending_waiting(&mut f, &mut wait)
    }

    /// Writes raw bytes (the handshake hello) after whatever was pending.
    pub(crate) fn write_raw(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.write_raw_with_fds(bytes, &[])
    }

    /// Writes raw bytes with `fds` attached to the first (the handshake's
    /// move to shared memory).
    pub(crate) fn write_raw_with_fds(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), SendError> {
        let mut f = lock(&self.shared.flush);
        self.write_pending(&mut f)?;
        let res = self.shared.io.write_all(&[bytes], fds);
        self.record(&mut f, res, 0)
    }

    /// Writes to `io` from now on. Only while this is the one handle on the
    /// connection (during the handshake).
    pub(crate) fn set_io(&mut self, io: WriteIo) -> std::io::Result<()> {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => {
                shared.io = io;
                Ok(())
            }
            None => Err(std::io::Error::other("the connection's writer is shared already")),
        }
    }

    /// Moves the pending frames (whole ones only) into `f.spare` for
    /// writing. Returns the last sequence number taken and how many frames
    /// that is, or the error of an earlier failed write.
    fn take_pending(&self, f: &mut Flush) -> Result<(u64, u64), SendError> {
        if let Some(b) = f.broken {
            return Err(b.into());
        }
        let mut p = lock(&self.shared.pending);
        let committed = p.committed;
        p.buf.truncate(committed);
        std::mem::swap(&mut p.buf, &mut f.spare);
        p.committed = 0;
        Ok((p.seq, p.seq - f.written))
    }

    /// Swaps out the pending frames and writes them. Called with the flush
    /// lock held, so writes never interleave.
    fn write_pending(&self, f: &mut Flush) -> Result<(), SendError> {
        let (upto, frames) = self.take_pending(f)?;
        if f.spare.is_empty() {
            f.written = upto;
            return Ok(());
        }
        let res = self.shared.io.write_all(&[&f.spare], &[]);
        f.spare.clear();
        self.record(f, res, frames)?;
        f.written = upto;
        Ok(())
    }

    fn record(&self, f: &mut Flush, res: std::io::Result<u64>, frames: u64) -> Result<(), SendError> {
        match res {
            Ok(calls) => {
                // Relaxed: statistics only.
                self.shared.writes.fetch_add(calls, Ordering::Relaxed);
                self.shared.frames.fetch_add(frames, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let err = SendError::from_io(e);
                f.broken = Some(match &err {
                    SendError::Disconnected => BrokenWrite::Disconnected,
                    SendError::Io(e) => BrokenWrite::Io(e.kind()),
                    _ => BrokenWrite::Io(std::io::ErrorKind::Other),
                });
                Err(err)
            }
        }
    }
}

impl From<BrokenWrite> for SendError {
    fn from(b: BrokenWrite) -> SendError {
        match b {
            BrokenWrite::Disconnected => SendError::Disconnected,
            BrokenWrite::Io(kind) => SendError::Io(std::io::Error::new(
                kind,
                "connection unusable after an earlier write error",
            )),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Frames fed but never flushed still go out: a peer must not lose
        // what `feed` accepted because the sender forgot `flush`.
        let p = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        let committed = p.committed;
        if committed > 0 && self.flush.get_mut().map_or(true, |f| f.broken.is_none()) {
            let _ = self.io.write_all(&[&p.buf[..committed]], &[]);
        }
        // Tell the peer nothing more is coming even if another handle (a
        // reader sharing the socket) keeps the fd open.
        if let WriteIo::Socket(fd) = &self.io {
            crate::sys::shutdown_write(fd.as_fd());
        }
    }
}

/// Why [`Writer::append`] refused a frame. Nothing was appended.
#[derive(Debug)]
pub enum AppendError<E> {
    /// The payload encoder failed.
    Encode(E),
    /// The payload is longer than the limit.
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}
