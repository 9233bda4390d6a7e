//! The two halves' io on shared memory: this side's consumer of the
//! peer's ring (`ShmRead`) and producer into its own (`ShmWrite`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::*;
use crate::transport::ReadOutcome;
use crate::util::lock;

/// This side's consumer of the peer's ring (the read half's io).
#[derive(Debug)]
pub(crate) struct ShmRead {
    pub(super) conn: Arc<Conn>,
    head: u64,
    /// The peer's tail as last loaded and checked.
    tail: u64,
    /// Carriers taken from the socket so far.
    carriers: u64,
}

impl ShmRead {
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// Appends at most `max` bytes without blocking; fds the frames carry
    /// are pulled from the socket first.
    pub(crate) fn read_nonblocking(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        _fds: &mut VecDeque<OwnedFd>,
    ) -> io::Result<ReadOutcome> {
        let c = &*self.conn;
        let seg = &c.seg;
        let ring = c.input();
        // Acquire: pairs with `shutdown_read`.
        if c.closed_here.load(Ordering::Acquire) {
            return Ok(ReadOutcome::Eof);
        }
        // The end is looked at before the tail: whatever the peer published
        // before it closed is then seen by the load below.
        // Acquire: pairs with the producer's Release store and the poller's.
        let done = c.peer_done.load(Ordering::Acquire)
            || seg.word64(ring, PRODUCER_CLOSED).load(Ordering::Acquire) != 0;
        let spare = buf.capacity() - buf.len();
        let want = max.min(spare) as u64;
        if self.tail - self.head < want {
            // Less than wanted in the cached view: look at the peer's tail
            // (a cache line it writes; not loaded while enough is known).
            // Acquire: the bytes up to the tail are published with it.
            let tail = seg.word64(ring, TAIL).load(Ordering::Acquire);
            if tail.checked_sub(self.head).is_none_or(|n| n > c.cap(ring)) {
                return Err(corrupt("ring position"));
            }
            self.tail = tail;
        }
        let avail = self.tail - self.head;
        if avail == 0 {
            return Ok(if done {
                ReadOutcome::Eof
            } else {
                ReadOutcome::WouldBlock
            });
        }
        // (Fds wait on the socket until their frame asks: `pull_fds`.)
        let n = (avail as usize).min(max).min(spare);
        if n == 0 {
            return Ok(ReadOutcome::WouldBlock);
        }
        seg.copy_out(ring, self.head, n, buf);
        self.head += n as u64;
        // Release: the space is free for the producer once it sees this.
        seg.word64(ring, HEAD).store(self.head, Ordering::Release);
        c.read_pos.store(self.head, Ordering::Relaxed);
        c.wake_peer(seg.word32(ring, WRITER_WAITING));
        Ok(ReadOutcome::Data(n))
    }
}

impl ShmRead {
    /// Takes fd carriers off the socket, one at a time, until `fds` holds
    /// `need` or the peer has sent no more (its count in shared memory):
    /// only when a frame that owns fds is read, so however many frames
    /// with fds the peer queues, we hold only the fds of the one at hand.
    pub(crate) fn pull_fds(&mut self, need: usize, fds: &mut VecDeque<OwnedFd>) -> io::Result<()> {
        let c = &*self.conn;
        // Acquire: a carrier counted before its frame's bytes were
        // published is in our socket by the time we read the frame.
        let sent = c.seg.word64(c.input(), CARRIERS).load(Ordering::Acquire);
        if sent < self.carriers {
            return Err(corrupt("count of fd carriers"));
        }
        let mut byte = Vec::with_capacity(1);
        while fds.len() < need && self.carriers < sent {
            byte.clear();
            match crate::transport::socket::recv_nonblocking(c.socket.as_fd(), &mut byte, 1, fds)? {
                ReadOutcome::Data(_) if byte == [CARRIER] => self.carriers += 1,
                ReadOutcome::Data(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer sent bytes on the socket of a shared-memory connection",
                    ));
                }
                // Not there: the frame that needs them will say so.
                ReadOutcome::WouldBlock => return Ok(()),
                ReadOutcome::Eof => {
                    c.peer_done.store(true, Ordering::Release);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl Drop for ShmRead {
    fn drop(&mut self) {
        // The peer's writer, blocked on a full ring, fails instead of
        // waiting for a reader that is gone (a socket's EPIPE).
        let ring = self.conn.input();
        // Release: seen by the peer's `write_ready`.
        self.conn
            .seg
            .word64(ring, CONSUMER_CLOSED)
            .store(1, Ordering::Release);
        self.conn.wake_peer(self.conn.seg.word32(ring, WRITER_WAITING));
    }
}

/// What the producer keeps privately.
#[derive(Debug)]
struct Produce {
    tail: u64,
    /// The peer's head as last loaded and checked.
    head: u64,
    carriers: u64,
}

/// This side's producer into its ring (the write half's io).
#[derive(Debug)]
pub(crate) struct ShmWrite {
    pub(super) conn: Arc<Conn>,
    state: Mutex<Produce>,
}

impl ShmWrite {
    /// Room in the ring now, reloading (and checking) the peer's head only
    /// when the cached one says there is less than `want`.
    fn free(&self, p: &mut Produce, want: usize) -> io::Result<u64> {
        let c = &*self.conn;
        let cap = c.cap(c.out);
        if cap - (p.tail - p.head) < want as u64 {
            // Acquire: the consumer is done with the space it released.
            let head = c.seg.word64(c.out, HEAD).load(Ordering::Acquire);
            // Positions only grow and never wrap: a head past our tail (even
            // one that wrapping arithmetic would call close) is a lie.
            if p.tail.checked_sub(head).is_none_or(|used| used > cap) {
                return Err(corrupt("ring position"));
            }
            p.head = head;
        }
        Ok(cap - (p.tail - p.head))
    }

    /// Copies as much of `src` as fits, without publishing.
    fn put(&self, p: &mut Produce, src: &[u8]) -> io::Result<usize> {
        let n = (self.free(p, src.len())? as usize).min(src.len());
        if n > 0 {
            self.conn.seg.copy_in(self.conn.out, p.tail, &src[..n]);
            p.tail += n as u64;
        }
        Ok(n)
    }

    /// Publishes what `put` copied and wakes the peer if it sleeps.
    fn publish(&self, p: &Produce) {
        let c = &*self.conn;
        // Release: the bytes before the tail are visible with it.
        c.seg.word64(c.out, TAIL).store(p.tail, Ordering::Release);
        c.write_pos.store(p.tail, Ordering::Relaxed);
        c.wake_peer(c.seg.word32(c.out, READER_WAITING));
    }

    fn gone(&self) -> bool {
        let c = &*self.conn;
        // Acquire: pairs with the poller's and the consumer's Release stores.
        c.hung_up.load(Ordering::Acquire) || c.seg.word64(c.out, CONSUMER_CLOSED).load(Ordering::Acquire) != 0
    }

    /// Writes `bufs` completely (waiting for room when the ring is full);
    /// `fds` go first, on the socket, with one carrier byte.
    pub(crate) fn write_all(&self, bufs: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<u64> {
        let c = &*self.conn;
        let mut p = lock(&self.state);
        if self.gone() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !fds.is_empty() {
            crate::transport::socket::send_all(c.socket.as_fd(), &[&[CARRIER]], fds)?;
            p.carriers += 1;
            // Release, before the frame's bytes are published: a reader
            // that sees them sees this count, and the kernel has the fds.
            c.seg.word64(c.out, CARRIERS).store(p.carriers, Ordering::Release);
        }
        let writing = c.seg.word32(c.out, WRITER_WAITING);
        for buf in bufs {
            let mut off = 0;
            while off < buf.len() {
                let n = self.put(&mut p, &buf[off..])?;
                off += n;
                if n == 0 {
                    // Full: let the reader see what is there, then wait.
                    self.publish(&p);
                    // Relaxed: ordered by the fence in `wait`.
                    c.wait(&|| c.write_ready(), &|| writing.store(1, Ordering::Relaxed), None)?;
                    if self.gone() {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                }
            }
        }
        self.publish(&p);
        Ok(1)
    }

    /// Writes what fits now; 0 when the ring is full.
    pub(crate) fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        let mut p = lock(&self.state);
        if self.gone() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = self.put(&mut p, buf)?;
        if n > 0 {
            self.publish(&p);
        }
        Ok(n)
    }

    /// The connection both halves share.
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for ShmWrite {
    fn drop(&mut self) {
        // The reader drains what is published, then sees the end.
        let c = &*self.conn;
        // Release: after every publish; the reader looks at it first.
        c.seg.word64(c.out, PRODUCER_CLOSED).store(1, Ordering::Release);
        c.wake_peer(c.seg.word32(c.out, READER_WAITING));
        crate::sys::shutdown_write(c.socket.as_fd());
    }
}

impl ShmRead {
    pub(super) fn new(conn: Arc<Conn>, carriers: u64) -> ShmRead {
        ShmRead {
            conn,
            head: 0,
            tail: 0,
            carriers,
        }
    }
}

impl ShmWrite {
    pub(super) fn new(conn: Arc<Conn>) -> ShmWrite {
        ShmWrite {
            conn,
            state: Mutex::new(Produce {
                tail: 0,
                head: 0,
                carriers: 0,
            }),
        }
    }
}
