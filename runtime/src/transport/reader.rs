//! The receive half: splits frames off a buffer, spinning briefly and then
//! sleeping while it waits (README.md, "Waiting for a frame").

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::frame::{self, HEADER_LEN, Header, HeaderError, Kind};
use super::{DEFAULT_SPIN, ReadIo, ReadOutcome};
use crate::error::{ProtocolError, RecvError};
use crate::sys;

/// Spare room kept for each read: small frames batch into one `recvmsg`.
const READ_CHUNK: usize = 64 << 10;

/// A frame up to this long gets its whole buffer as soon as its header
/// arrives; a longer one grows with the bytes that actually arrive, so a
/// lying length never costs more than this (README.md, "An untrusted length").
const EAGER_ALLOC: usize = 4 << 20;

/// After a frame, a buffer larger than this is given back to the allocator.
const SHRINK_ABOVE: usize = 16 << 20;

/// Messages at least this long are read straight into the caller's buffer
/// by [`Reader::recv_message_into`].
const DIRECT_READ: usize = 256 << 10;

/// How long a receive on shared memory spins before it starts yielding
/// (a round trip with a busy peer on another core takes well under it).
const PURE_SPIN: Duration = Duration::from_micros(5);

/// Most received fds held before the frames that own them are read.
const MAX_QUEUED_FDS: usize = 64;

// The read operations of the contract (mod.rs), beside their one caller.
impl ReadIo {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            ReadIo::Socket(fd) => fd.as_fd(),
            ReadIo::Pipe(fd) => fd.as_fd(),
            #[cfg(target_os = "linux")]
            ReadIo::Shm(r) => r.conn().socket(),
        }
    }

    /// Appends at most `max` bytes (and any fds) without blocking.
    fn read_nonblocking(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        fds: &mut VecDeque<OwnedFd>,
    ) -> io::Result<ReadOutcome> {
        match self {
            ReadIo::Socket(fd) => super::socket::recv_nonblocking(fd.as_fd(), buf, max, fds),
            ReadIo::Pipe(fd) => super::pipe::read_nonblocking(fd.as_fd(), buf, max),
            #[cfg(target_os = "linux")]
            ReadIo::Shm(r) => r.read_nonblocking(buf, max, fds),
        }
    }

    /// Whether a read try costs a load rather than a system call.
    fn tries_are_loads(&self) -> bool {
        match self {
            #[cfg(target_os = "linux")]
            ReadIo::Shm(_) => true,
            _ => false,
        }
    }

    /// Sleeps until there is something to read, or `deadline`.
    fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            ReadIo::Shm(r) => r.conn().wait_readable(deadline).map(drop),
            _ => {
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                sys::poll_readable(self.fd(), timeout).map(drop)
            }
        }
    }

    /// Sleeps until there is something to read here or room to write on
    /// `write` (the other half of this connection). Returns whether it may
    /// be readable.
    fn wait_read_or_write(&self, write: BorrowedFd<'_>) -> io::Result<bool> {
        match self {
            #[cfg(target_os = "linux")]
            ReadIo::Shm(r) => r.conn().wait_read_or_write().map(|()| true),
            _ => sys::poll_read_or_write(self.fd(), write).map(|(readable, _)| readable),
        }
    }
}

/// How long a receive may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Do not wait: only what is already there.
    Now,
    /// Wait until this instant at most.
    Until(Instant),
    /// Wait as long as it takes (the peer may still close its end).
    Forever,
}

impl Wait {
    /// A wait of at most `d` from now.
    pub fn timeout(d: Duration) -> Wait {
        match Instant::now().checked_add(d) {
            Some(t) => Wait::Until(t),
            None => Wait::Forever,
        }
    }
}

#[derive(Debug)]
enum State {
    Open,
    /// The peer closed its end; frames still buffered are delivered first.
    Eof,
    /// A fatal error happened; every later call reports it.
    Broken(String),
}

/// The receive half of a connection.
#[derive(Debug)]
pub struct Reader {
    io: ReadIo,
    /// Unread bytes are `buf[head..]`.
    buf: Vec<u8>,
    head: usize,
    fds: VecDeque<OwnedFd>,
    limit: usize,
    spin: Duration,
    state: State,
    /// Header of the complete frame at `head`, once `next_frame` found one.
    current: Option<Header>,
}

impl Reader {
    pub(super) fn new(io: ReadIo) -> Reader {
        Reader {
            io,
            buf: Vec::new(),
            head: 0,
            fds: VecDeque::new(),
            limit: frame::DEFAULT_MAX_FRAME,
            spin: DEFAULT_SPIN,
            state: State::Open,
            current: None,
        }
    }

    /// Sets the largest payload accepted (at most [`frame::MAX_FRAME_LIMIT`]).
    pub fn set_max_frame_len(&mut self, limit: usize) {
        self.limit = limit.min(frame::MAX_FRAME_LIMIT);
    }

    /// The largest payload accepted.
    pub fn max_frame_len(&self) -> usize {
        self.limit
    }

    /// Sets how long a blocked receive spins before it sleeps.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// How long a blocked receive spins before it sleeps.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    /// Reads exactly `out.len()` raw bytes (the handshake), waiting as told.
    /// Returns `Ok(false)` if the wait ended first. Bytes already buffered
    /// are used first; anything read beyond stays buffered for frames.
    pub(crate) fn read_exact_raw(&mut self, out: &mut [u8], wait: Wait) -> Result<bool, RecvError> {
        let mut spin_start = None;
        while self.buf.len() - self.head < out.len() {
            if matches!(self.state, State::Eof) {
                return Err(RecvError::Disconnected);
            }
            self.reserve(out.len());
            if !self.read_more(wait, &mut spin_start)? {
                return Ok(false);
            }
        }
        out.copy_from_slice(&self.buf[self.head..self.head + out.len()]);
        self.head += out.len();
        Ok(true)
    }

    /// Whether a complete frame is already buffered (no system call).
    pub fn has_buffered_frame(&mut self) -> bool {
        if self.current.is_some() {
            return true;
        }
        match frame::split_frame(&self.buf[self.head..], self.limit) {
            Ok(Some(f)) => {
                self.current = Some(f.header);
                true
            }
            _ => false,
        }
    }

    /// Makes sure a complete frame is at the front and returns its header,
    /// without consuming it. `Ok(None)`: none arrived within `wait`.
    pub fn next_frame(&mut self, wait: Wait) -> Result<Option<Header>, RecvError> {
        if let Some(h) = self.current {
            return Ok(Some(h));
        }
        let mut spin_start = None;
        loop {
            self.check_broken()?;
            let unread = &self.buf[self.head..];
            // The header is decoded once: it says whether the frame is
            // whole, and if not, how much to wait for.
            let need = match Header::decode(unread, self.limit) {
                Ok(Some(h)) if unread.len() - HEADER_LEN >= h.len => {
                    self.current = Some(h);
                    return Ok(Some(h));
                }
                Ok(Some(h)) => HEADER_LEN + h.len,
                Ok(None) => HEADER_LEN,
                Err(e) => return Err(self.fail(e)),
            };
            if matches!(self.state, State::Eof) {
                return Err(self.at_eof(need));
            }
            self.reserve(need);
            if !self.read_more(wait, &mut spin_start)? {
                return Ok(None);
            }
        }
    }

    /// The fd this reader reads from.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.fd()
    }

    /// A duplicate of the fd this reader reads from (for a shared-memory
    /// connection, its socket).
    pub(crate) fn dup_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.io.fd().try_clone_to_owned()
    }

    /// A handle to sleep on until this connection has something to read,
    /// without holding the reader.
    pub(crate) fn wait_handle(&self) -> io::Result<super::WaitHandle> {
        match &self.io {
            #[cfg(target_os = "linux")]
            ReadIo::Shm(r) => Ok(super::WaitHandle::Shm(r.conn().clone())),
            _ => Ok(super::WaitHandle::Fd(self.dup_fd()?)),
        }
    }

    /// Which kind of connection this is: "socket", "pipes" or "shared memory".
    pub(crate) fn flavor(&self) -> &'static str {
        match &self.io {
            ReadIo::Socket(_) => "socket",
            ReadIo::Pipe(_) => "pipes",
            #[cfg(target_os = "linux")]
            ReadIo::Shm(_) => "shared memory",
        }
    }

    /// The socket under a socket connection (to move it to shared memory).
    pub(crate) fn socket(&self) -> Option<std::sync::Arc<OwnedFd>> {
        match &self.io {
            ReadIo::Socket(fd) => Some(fd.clone()),
            _ => None,
        }
    }

    /// Takes the bytes buffered but not consumed (after a raw handshake).
    pub(crate) fn take_raw_leftover(&mut self) -> Vec<u8> {
        let rest = self.buf[self.head..].to_vec();
        self.buf.clear();
        self.head = 0;
        rest
    }

    /// Reads from `io` from now on.
    pub(crate) fn set_io(&mut self, io: ReadIo) {
        self.io = io;
    }

    /// Waits until this connection is readable or writable; if it is
    /// readable, reads what is there into the buffer (to be received
    /// later). For a writer that must keep reading while it waits to write.
    pub fn buffer_while_waiting_to_write(&mut self, write: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        let readable = self.io.wait_read_or_write(write)?;
        if readable && matches!(self.state, State::Open) {
            self.reserve(READ_CHUNK);
            if self
                .io
                .read_nonblocking(&mut self.buf, usize::MAX, &mut self.fds)?
                == ReadOutcome::Eof
            {
                self.state = State::Eof;
            }
        }
        Ok(())
    }

    /// The payload of the frame `next_frame` returned.
    pub fn payload(&self) -> &[u8] {
        match self.current {
            Some(h) => &self.buf[self.head + HEADER_LEN..self.head + HEADER_LEN + h.len],
            None => &[],
        }
    }

    /// Drops the frame `next_frame` returned.
    pub fn consume(&mut self) {
        if let Some(h) = self.current.take() {
            self.head += HEADER_LEN + h.len;
            if self.head == self.buf.len() {
                self.buf.clear();
                self.head = 0;
                if self.buf.capacity() > SHRINK_ABOVE {
                    self.buf.shrink_to(READ_CHUNK);
                }
            }
        }
    }

    /// Takes `n` received fds, in arrival order. They arrive with the first
    /// byte of the frame that carries them, so they are queued by the time
    /// that frame is complete.
    pub fn take_fds(&mut self, n: usize) -> Option<Vec<OwnedFd>> {
        #[cfg(target_os = "linux")]
        if let (ReadIo::Shm(r), true) = (&mut self.io, self.fds.len() < n) {
            // On shared memory the fds wait on the socket until asked for.
            if let Err(e) = r.pull_fds(n, &mut self.fds) {
                self.state = State::Broken(e.to_string());
                return None;
            }
        }
        if self.fds.len() < n {
            return None;
        }
        Some(self.fds.drain(..n).collect())
    }

    /// The error for a later call once a fatal error broke the connection.
    fn check_broken(&self) -> Result<(), RecvError> {
        match &self.state {
            State::Broken(why) => Err(RecvError::Protocol(ProtocolError::new(format!(
                "connection unusable after an earlier error: {why}"
            )))),
            _ => Ok(()),
        }
    }

    /// The error once the peer closed its end and no whole frame is left:
    /// `Disconnected` at a frame boundary, `Truncated` inside a frame that
    /// should have been `expected` bytes long. Drops the partial bytes.
    fn at_eof(&mut self, expected: usize) -> RecvError {
        let received = self.buf.len() - self.head;
        self.buf.clear();
        self.head = 0;
        if received == 0 {
            RecvError::Disconnected
        } else {
            RecvError::Truncated { expected, received }
        }
    }

    /// Records a fatal framing error and returns it.
    fn fail(&mut self, e: HeaderError) -> RecvError {
        self.state = State::Broken(e.to_string());
        match e {
            HeaderError::TooLarge { len, limit } => RecvError::TooLarge { len, limit },
            HeaderError::UnknownKind(_) => RecvError::Protocol(ProtocolError::new(e.to_string())),
        }
    }

    /// Makes room to read, so that the frame starting at `head`, `need`
    /// bytes long, can fit once its bytes arrive.
    fn reserve(&mut self, need: usize) {
        let have = self.buf.len() - self.head;
        if self.head > 0 && self.buf.capacity() - self.head < need.max(have + READ_CHUNK) {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        // Trust an announced length only up to EAGER_ALLOC; past that, at
        // most double what has really arrived.
        let target = if need <= EAGER_ALLOC {
            need
        } else {
            need.min(EAGER_ALLOC.max(have.saturating_mul(2)))
        };
        let want = target.max(have + READ_CHUNK.min(self.limit + HEADER_LEN));
        let total = self.head + want;
        if total > self.buf.capacity() {
            self.buf.reserve_exact(total - self.buf.len());
        }
    }

    /// Reads more bytes into the buffer, waiting as told: spin for the spin
    /// budget, then sleep in `poll`. Returns `Ok(false)` when the wait ran
    /// out with nothing read; `Ok(true)` when bytes or EOF arrived.
    fn read_more(&mut self, wait: Wait, spin_start: &mut Option<Instant>) -> Result<bool, RecvError> {
        let mut buf = std::mem::take(&mut self.buf);
        let res = self.read_into(&mut buf, usize::MAX, wait, spin_start);
        self.buf = buf;
        res
    }

    /// Receives the next message's payload into `out` (replacing its
    /// contents), blocking until it is complete. A long payload is read from
    /// the kernel straight into `out`, with no copy through the buffer
    /// (README.md, "A long message"). Returns the payload length.
    pub fn recv_message_into(&mut self, out: &mut Vec<u8>) -> Result<usize, RecvError> {
        if self.current.is_none() {
            let h = self.wait_header()?;
            let start = self.head + HEADER_LEN;
            if h.kind == Kind::Message && h.len >= DIRECT_READ && self.buf.len() - start < h.len {
                return self.read_direct(h, out);
            }
        }
        match self.next_frame(Wait::Forever)? {
            Some(h) if h.kind == Kind::Message => {
                out.clear();
                out.extend_from_slice(self.payload());
                self.consume();
                Ok(h.len)
            }
            Some(h) => Err(RecvError::Unexpected {
                expected: Kind::Message,
                found: h.kind,
            }),
            None => Err(RecvError::Protocol(ProtocolError::new(
                "a blocking receive returned nothing",
            ))),
        }
    }

    /// Blocks until a whole frame header is buffered at `head`.
    fn wait_header(&mut self) -> Result<Header, RecvError> {
        let mut spin_start = None;
        loop {
            self.check_broken()?;
            match Header::decode(&self.buf[self.head..], self.limit) {
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
            if matches!(self.state, State::Eof) {
                return Err(self.at_eof(HEADER_LEN));
            }
            self.reserve(HEADER_LEN);
            self.read_more(Wait::Forever, &mut spin_start)?;
        }
    }

    /// Moves the buffered part of a long message into `out` and reads the
    /// rest straight into it, never past the frame's end.
    fn read_direct(&mut self, h: Header, out: &mut Vec<u8>) -> Result<usize, RecvError> {
        let start = self.head + HEADER_LEN;
        out.clear();
        let have = self.buf.len() - start;
        out.reserve_exact(h.len.min(EAGER_ALLOC).max(have));
        out.extend_from_slice(&self.buf[start..]);
        self.buf.clear();
        self.head = 0;
        let mut spin_start = None;
        while out.len() < h.len {
            if matches!(self.state, State::Eof) {
                let received = HEADER_LEN + out.len();
                out.clear();
                return Err(RecvError::Truncated {
                    expected: HEADER_LEN + h.len,
                    received,
                });
            }
            if out.capacity() == out.len() {
                // Grow with what has arrived, not with what was announced.
                let more = (h.len - out.len()).min(out.len().max(EAGER_ALLOC));
                out.reserve_exact(more);
            }
            let remaining = h.len - out.len();
            if let Err(e) = self.read_into(out, remaining, Wait::Forever, &mut spin_start) {
                out.clear();
                self.state = State::Broken(format!("failed in the middle of a frame: {e}"));
                return Err(e);
            }
        }
        Ok(h.len)
    }

    /// Reads at most `max` more bytes into `target`, waiting as told: spin
    /// for the spin budget, then sleep in `poll` (README.md, "Waiting for a
    /// frame"). `Ok(false)`: the wait ran out with nothing read.
    fn read_into(
        &mut self,
        target: &mut Vec<u8>,
        max: usize,
        wait: Wait,
        spin_start: &mut Option<Instant>,
    ) -> Result<bool, RecvError> {
        let mut tries = 0u32;
        loop {
            match self.io.read_nonblocking(target, max, &mut self.fds) {
                Ok(ReadOutcome::Data(_)) => {
                    if self.fds.len() > MAX_QUEUED_FDS {
                        self.fds.clear();
                        self.state = State::Broken("peer sent more fds than its frames carry".into());
                        return Err(RecvError::Protocol(ProtocolError::new(
                            "peer sent more file descriptors than its frames carry",
                        )));
                    }
                    return Ok(true);
                }
                Ok(ReadOutcome::Eof) => {
                    self.state = State::Eof;
                    return Ok(true);
                }
                Ok(ReadOutcome::WouldBlock) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.state = State::Broken(e.to_string());
                    return Err(RecvError::Protocol(ProtocolError::new(e.to_string())));
                }
                Err(e) => {
                    let err = RecvError::from_io(e);
                    if matches!(err, RecvError::Disconnected) {
                        self.state = State::Eof;
                        return Ok(true);
                    }
                    return Err(err);
                }
            }
            let deadline = match wait {
                Wait::Now => return Ok(false),
                Wait::Until(d) => Some(d),
                Wait::Forever => None,
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(false);
            }
            // Phase 1: spin (README.md, "Waiting for a frame"). Every
            // other try yields, so a peer sharing this core gets to run and
            // answer, while a peer on the other core is not kept waiting on
            // a yield after each try.
            let start = *spin_start.get_or_insert(now);
            let spun = now.duration_since(start);
            if spun < self.spin {
                tries = tries.wrapping_add(1);
                // A try on shared memory is a load, not a system call: the
                // first microseconds spin without yielding, since a peer on
                // the other core answers within them.
                if spun < PURE_SPIN && self.io.tries_are_loads() {
                    std::hint::spin_loop();
                } else if tries % 2 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            // Phase 2: sleep until readable or the deadline.
            self.io.wait_readable(deadline).map_err(RecvError::from_io)?;
        }
    }
}
