//! The shared-memory flavor (Linux): two byte rings, one per direction,
//! in one sealed memfd that both processes map; the socket stays beside
//! them for passing fds and for telling when the peer is gone (README.md,
//! "A shared-memory connection").
//!
//! The rings carry exactly the byte stream a socket would, so framing,
//! limits and coalescing above are unchanged. The peer is untrusted: each
//! side keeps its own position and the geometry in private memory, loads
//! the peer's position only to check it (`0 <= tail - head <= capacity`,
//! else the connection breaks), and copies ring bytes out before anything
//! looks at them: no Rust reference into the mapping is ever formed.
//!
//! Waiting: spin (in the `Reader`), then announce "I wait" in a shared
//! flag, fence, look again, and sleep in one `poll` on this side's doorbell (a datagram socket)
//! and the socket. The peer, after publishing, fences, reads the flag and
//! only if it is set rings our doorbell. One thread per process sleeps in
//! the kernel for a connection; others wait on a condvar it signals
//! (`Conn::wait`). With both sides busy no system call happens.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{ReadOutcome, Reader, Wait, Writer};
use crate::sys::shm::{self as os, Mapping};
use crate::util::lock;

/// The first bytes of a segment (a sanity check of the mapping only: the
/// geometry comes from the offer and is kept privately).
const SEGMENT_MAGIC: [u8; 8] = *b"PPSHMSEG";

/// The segment layout this build writes and reads.
pub(crate) const LAYOUT_VERSION: u32 = 1;

/// Bytes before the rings' data: the header and both control blocks.
const HEADER_LEN: usize = 4096;

/// Each direction's ring capacity (a power of two).
pub(crate) const DEFAULT_RING: usize = 256 << 10;

/// The smallest and largest ring capacity a peer may offer.
const MIN_RING: usize = 4 << 10;
const MAX_RING: usize = 64 << 20;

/// Where each ring's control block starts (ring 0 is written by the side
/// that created the segment).
const CONTROL: [usize; 2] = [256, 640];

// Offsets inside a control block, one 128-byte line per writer so the
// producer's and the consumer's hot words never share a cache line.
/// Line P (written by the producer): the position it has published.
const TAIL: usize = 0;
/// Line P: the producer closed its end (1).
const PRODUCER_CLOSED: usize = 8;
/// Line P: how many fd carriers it has sent on the socket.
const CARRIERS: usize = 16;
/// Line C (written by the consumer): the position it has read up to.
const HEAD: usize = 128;
/// Line C: the consumer closed its end (1).
const CONSUMER_CLOSED: usize = 136;
/// Line W: the consumer sleeps until data comes (1; cleared by the producer).
const READER_WAITING: usize = 256;
/// Line W: the producer sleeps until space frees (1; cleared by the consumer).
const WRITER_WAITING: usize = 260;

/// The one byte sent on the socket with each frame that carries fds.
const CARRIER: u8 = 0xFD;

/// The offer, the answers and "no offer", each this long on the socket.
pub(crate) const SETUP_LEN: usize = 24;
const OFFER: [u8; 8] = *b"PPSHMOFR";
const NO_OFFER: [u8; 8] = *b"PPSHMNON";
const ACCEPT: [u8; 8] = *b"PPSHMACK";
const REFUSE: [u8; 8] = *b"PPSHMNAK";

/// What one side says while the connection moves to shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// A segment with these ring capacities (ring 0, ring 1); the memfd and
    /// the offerer's doorbell travel with it.
    Offer { version: u32, caps: [u32; 2] },
    /// The offerer could not make a segment: stay on the socket.
    NoOffer,
    /// Accepted; the accepter's doorbell travels with it.
    Accept,
    /// Refused: stay on the socket.
    Refuse,
}

impl Setup {
    /// The bytes of this message.
    pub(crate) fn encode(&self) -> [u8; SETUP_LEN] {
        let mut b = [0u8; SETUP_LEN];
        let tag = match self {
            Setup::Offer { version, caps } => {
                b[8..12].copy_from_slice(&version.to_le_bytes());
                b[12..16].copy_from_slice(&caps[0].to_le_bytes());
                b[16..20].copy_from_slice(&caps[1].to_le_bytes());
                OFFER
            }
            Setup::NoOffer => NO_OFFER,
            Setup::Accept => ACCEPT,
            Setup::Refuse => REFUSE,
        };
        b[..8].copy_from_slice(&tag);
        b
    }

    /// Parses a message; `None` if it is none of them.
    pub(crate) fn decode(b: &[u8; SETUP_LEN]) -> Option<Setup> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let tag: [u8; 8] = b[..8].try_into().ok()?;
        match tag {
            OFFER => Some(Setup::Offer {
                version: word(8),
                caps: [word(12), word(16)],
            }),
            NO_OFFER => Some(Setup::NoOffer),
            ACCEPT => Some(Setup::Accept),
            REFUSE => Some(Setup::Refuse),
            _ => None,
        }
    }
}

/// Whether `cap` is a ring capacity we accept from a peer.
fn valid_capacity(cap: u32) -> bool {
    let cap = cap as usize;
    cap.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&cap)
}

/// The mapped segment: both rings and their control blocks.
#[derive(Debug)]
pub(crate) struct Segment {
    map: Mapping,
    caps: [usize; 2],
}

impl Segment {
    fn total(caps: [usize; 2]) -> usize {
        HEADER_LEN + caps[0] + caps[1]
    }

    /// Makes a new segment with two rings of `cap` bytes; returns it and
    /// the memfd to send to the peer (sealed: its size is final).
    pub(crate) fn create(cap: usize) -> io::Result<(Segment, OwnedFd)> {
        let caps = [cap, cap];
        let fd = os::memfd_create(c"portpool-shm", Segment::total(caps) as u64)?;
        os::add_seals(fd.as_fd(), os::SEALS_SIZE)?;
        let map = Mapping::map(fd.as_fd(), Segment::total(caps), true)?;
        let mut header = [0u8; 24];
        header[..8].copy_from_slice(&SEGMENT_MAGIC);
        header[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(cap as u32).to_le_bytes());
        header[16..20].copy_from_slice(&(cap as u32).to_le_bytes());
        // SAFETY: the mapping is at least HEADER_LEN (4096) bytes, so the
        // 24 header bytes are inside it; nobody else has the fd yet.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_ptr(), header.len()) };
        Ok((Segment { map, caps }, fd))
    }

    /// Maps a segment a peer offered, after checking everything it says:
    /// the layout version, both capacities, the file's size and its seals
    /// (so it can never shrink under our mapping), and the header.
    pub(crate) fn open(fd: &OwnedFd, version: u32, caps: [u32; 2]) -> Result<Segment, String> {
        if version != LAYOUT_VERSION {
            return Err(format!(
                "segment layout {version}, this side knows {LAYOUT_VERSION}"
            ));
        }
        if !caps.iter().all(|&c| valid_capacity(c)) {
            return Err(format!(
                "ring capacities {caps:?} are not powers of two in 4 KiB..64 MiB"
            ));
        }
        let caps = [caps[0] as usize, caps[1] as usize];
        let total = Segment::total(caps);
        let len = os::file_len(fd.as_fd()).map_err(|e| format!("cannot size the segment: {e}"))?;
        if len != total as u64 {
            return Err(format!("the segment is {len} bytes, its rings need {total}"));
        }
        let seals = os::seals(fd.as_fd()).map_err(|e| format!("the segment is not a sealable memfd: {e}"))?;
        let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals & need != need {
            return Err("the segment's size is not sealed".into());
        }
        let map =
            Mapping::map(fd.as_fd(), total, true).map_err(|e| format!("cannot map the segment: {e}"))?;
        let mut header = [0u8; 24];
        // SAFETY: the mapping is `total` > 24 bytes long; the bytes are
        // copied out, never referenced.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), header.as_mut_ptr(), header.len()) };
        if header[..8] != SEGMENT_MAGIC {
            return Err("the segment does not start with its magic".into());
        }
        Ok(Segment { map, caps })
    }

    fn word64(&self, ring: usize, off: usize) -> &AtomicU64 {
        // SAFETY: CONTROL[ring] + off is below HEADER_LEN, inside the
        // mapping, and 8-aligned (the mapping is page-aligned, the offsets
        // are multiples of 8). The reference lives no longer than `self`,
        // which keeps the mapping. Both processes touch these words only
        // with atomic instructions; a peer that does otherwise can only
        // give us wrong numbers, which are checked where they are used.
        unsafe { &*self.map.as_ptr().add(CONTROL[ring] + off).cast::<AtomicU64>() }
    }

    fn word32(&self, ring: usize, off: usize) -> &AtomicU32 {
        // SAFETY: as in `word64`, with 4-byte alignment.
        unsafe { &*self.map.as_ptr().add(CONTROL[ring] + off).cast::<AtomicU32>() }
    }

    fn data(&self, ring: usize) -> *mut u8 {
        let off = HEADER_LEN + if ring == 0 { 0 } else { self.caps[0] };
        // SAFETY: `off` plus the ring's capacity is the mapping's length
        // at most (`Segment::total`).
        unsafe { self.map.as_ptr().add(off) }
    }

    /// Copies `src` into ring `ring` at position `pos` (wrapping). The
    /// caller (the ring's producer) has checked that the space is free.
    fn copy_in(&self, ring: usize, pos: u64, src: &[u8]) {
        let cap = self.caps[ring];
        let at = (pos as usize) & (cap - 1);
        let first = src.len().min(cap - at);
        let base = self.data(ring);
        // SAFETY: `at + first <= cap` and `src.len() - first <= at`, so
        // both copies stay inside the ring's `cap` bytes; `src` is private
        // memory that cannot overlap the mapping. The peer does not touch
        // this free space until we publish it, if it follows the protocol;
        // if it does not, the race is on memory it shares with us on
        // purpose and harms only the bytes it will read (see `copy_out`).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(at), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), base, src.len() - first);
        }
    }

    /// Appends `n` bytes of ring `ring` from position `pos` to `dst`
    /// (wrapping). The caller (the consumer) has checked they are published
    /// and that `dst` has room.
    ///
    /// This is the one place ring bytes are read: they are copied, never
    /// referenced, and the bytes are only interpreted after the copy. A
    /// peer that follows the protocol does not write published bytes
    /// before we release them; one that does can only make the copy
    /// garbage, which the frame checks above then reject.
    fn copy_out(&self, ring: usize, pos: u64, n: usize, dst: &mut Vec<u8>) {
        let cap = self.caps[ring];
        let at = (pos as usize) & (cap - 1);
        let first = n.min(cap - at);
        let base = self.data(ring);
        debug_assert!(dst.capacity() - dst.len() >= n);
        // SAFETY: the bounds are as in `copy_in`; `dst` has `n` bytes of
        // spare capacity (the caller's check), which the copies fill before
        // `set_len` exposes them. A peer that follows the protocol does not
        // write published bytes before we release them. One that does races
        // with this copy: in Rust's model a data race on memory another
        // process writes, which this design accepts (as the unsafe-code
        // guidelines' advice for untrusted shared memory does, with
        // volatile copies as the stricter choice); the bytes land in private
        // memory and are only used after the frame checks, so a wrong value
        // is garbage that the checks refuse, never an access out of bounds.
        unsafe {
            let out = dst.as_mut_ptr().add(dst.len());
            std::ptr::copy_nonoverlapping(base.add(at), out, first);
            std::ptr::copy_nonoverlapping(base, out.add(first), n - first);
            dst.set_len(dst.len() + n);
        }
    }
}

/// One thread sleeping in the kernel for this side of a connection.
#[derive(Debug, Default)]
struct Sleep {
    polling: bool,
    /// Bumped each time the polling thread wakes.
    generation: u64,
}

/// What both halves of this side share: the segment, the doorbells, the
/// socket, and what the sleeping thread learned.
#[derive(Debug)]
pub(crate) struct Conn {
    seg: Segment,
    /// The ring this side writes; it reads the other.
    out: usize,
    socket: Arc<OwnedFd>,
    /// Ours: the peer rings it, we sleep on it.
    bell: OwnedFd,
    /// The other end of ours, to wake our own sleeper (`shutdown_read`).
    self_bell: OwnedFd,
    /// The peer's: we ring it.
    peer_bell: OwnedFd,
    sleep: Mutex<Sleep>,
    woke: Condvar,
    /// The peer shut its sending side down or left (seen on the socket).
    peer_done: AtomicBool,
    /// The connection is gone both ways.
    hung_up: AtomicBool,
    /// This side stopped reading (`shutdown_read`).
    closed_here: AtomicBool,
    /// Our consumer's position (its private copy, for waiters without it).
    read_pos: AtomicU64,
    /// Our producer's position (likewise).
    write_pos: AtomicU64,
}

impl Conn {
    fn input(&self) -> usize {
        1 - self.out
    }

    fn cap(&self, ring: usize) -> u64 {
        self.seg.caps[ring] as u64
    }

    /// Rings the peer's doorbell if its flag says it sleeps (after a
    /// publish or a release). The fence pairs with the waiter's, so either
    /// it sees our position or we see its flag.
    fn wake_peer(&self, flag: &AtomicU32) {
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fences; the swap decides who rings.
        if flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0 {
            if let Err(e) = os::ring(self.peer_bell.as_fd()) {
                log::debug!("shared-memory connection: cannot ring the peer ({e})");
            }
        }
    }

    /// Whether a reader would find something: bytes, the end, or an error.
    fn read_ready(&self) -> bool {
        let i = self.input();
        // Acquire: pairs with the flags' and the tail's Release stores.
        self.closed_here.load(Ordering::Acquire)
            || self.peer_done.load(Ordering::Acquire)
            || self.seg.word64(i, PRODUCER_CLOSED).load(Ordering::Acquire) != 0
            || self.seg.word64(i, TAIL).load(Ordering::Acquire) != self.read_pos.load(Ordering::Relaxed)
    }

    /// Whether a writer would find room (or an error to report).
    fn write_ready(&self) -> bool {
        let o = self.out;
        // Acquire: pairs with the consumer's Release stores.
        let head = self.seg.word64(o, HEAD).load(Ordering::Acquire);
        // A head past our tail, or further behind than the ring holds, is a
        // lie: "ready", so the writer goes on to the check that reports it.
        let used = self.write_pos.load(Ordering::Relaxed).checked_sub(head);
        used.is_none_or(|used| used != self.cap(o))
            || self.hung_up.load(Ordering::Acquire)
            || self.seg.word64(o, CONSUMER_CLOSED).load(Ordering::Acquire) != 0
    }

    /// Waits until `ready()`, announcing with `announce` before each look
    /// that precedes a sleep, or until `deadline`. Returns whether ready.
    fn wait(
        &self,
        ready: &dyn Fn() -> bool,
        announce: &dyn Fn(),
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        loop {
            if ready() {
                return Ok(true);
            }
            // Read before the announcement: if the sleeping thread wakes
            // after it, the generation differs and we look again instead of
            // waiting for a wake that already happened.
            let seen = lock(&self.sleep).generation;
            announce();
            fence(Ordering::SeqCst);
            if ready() {
                return Ok(true);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    Some(d - now)
                }
            };
            let mut s = lock(&self.sleep);
            if s.generation != seen {
                continue;
            }
            if s.polling {
                // Another thread sleeps in the kernel for this side; it
                // wakes every waiter when it returns.
                let _s = match timeout {
                    None => self.woke.wait(s).unwrap_or_else(|p| p.into_inner()),
                    Some(t) => self
                        .woke
                        .wait_timeout(s, t)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0),
                };
                continue;
            }
            s.polling = true;
            drop(s);
            // Acquire: a side already seen done is not watched again (the
            // socket would stay readable and the poll would spin).
            let watch = !self.peer_done.load(Ordering::Acquire);
            let res = os::poll_doorbell(self.bell.as_fd(), self.socket.as_fd(), watch, timeout);
            if let Ok(rang) = &res {
                if rang.bell {
                    os::drain(self.bell.as_fd());
                }
                if rang.peer_done_sending {
                    // Release: seen by `read_ready` and the readers' end check.
                    self.peer_done.store(true, Ordering::Release);
                }
                if rang.hung_up {
                    self.hung_up.store(true, Ordering::Release);
                }
            }
            let mut s = lock(&self.sleep);
            s.polling = false;
            s.generation = s.generation.wrapping_add(1);
            self.woke.notify_all();
            drop(s);
            res?;
        }
    }

    /// Waits until a reader would find something (see [`Conn::read_ready`]).
    pub(crate) fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let flag = self.seg.word32(self.input(), READER_WAITING);
        // Relaxed: ordered by the fence in `wait`.
        self.wait(
            &|| self.read_ready(),
            &|| flag.store(1, Ordering::Relaxed),
            deadline,
        )
    }

    /// Waits until a reader would find something or a writer room.
    pub(crate) fn wait_read_or_write(&self) -> io::Result<()> {
        let r = self.seg.word32(self.input(), READER_WAITING);
        let w = self.seg.word32(self.out, WRITER_WAITING);
        self.wait(
            &|| self.read_ready() || self.write_ready(),
            // Relaxed: ordered by the fence in `wait`.
            &|| {
                r.store(1, Ordering::Relaxed);
                w.store(1, Ordering::Relaxed);
            },
            None,
        )
        .map(drop)
    }

    /// Stops reading on this side: every waiter and reader sees the end at
    /// once, and the peer's writer is told (as a socket's `SHUT_RD`).
    pub(crate) fn shutdown_read(&self) {
        // Release: seen by `read_ready`.
        self.closed_here.store(true, Ordering::Release);
        let i = self.input();
        self.seg.word64(i, CONSUMER_CLOSED).store(1, Ordering::Release);
        self.wake_peer(self.seg.word32(i, WRITER_WAITING));
        if let Err(e) = os::ring(self.self_bell.as_fd()) {
            log::debug!("shared-memory connection: cannot wake our own sleeper ({e})");
        }
        crate::sys::shutdown_read(self.socket.as_fd());
    }

    /// The socket beside the rings.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer wrote an impossible {what}"),
    )
}

/// This side's consumer of the peer's ring (the read half's io).
#[derive(Debug)]
pub(crate) struct ShmRead {
    conn: Arc<Conn>,
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
            match super::socket::recv_nonblocking(c.socket.as_fd(), &mut byte, 1, fds)? {
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
    conn: Arc<Conn>,
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
            super::socket::send_all(c.socket.as_fd(), &[&[CARRIER]], fds)?;
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

/// Moves a freshly connected socket connection (hellos exchanged) onto
/// shared memory, if both sides manage: `create` says whether this side
/// makes the segment. `Ok(false)`: it stays on the socket (the other side
/// could not, or refused, and both know). An error: the connection broke
/// during the move.
pub(crate) fn upgrade(
    reader: &mut Reader,
    writer: &mut Writer,
    create: bool,
    deadline: Instant,
) -> io::Result<bool> {
    let Some(socket) = reader.socket() else {
        return Ok(false);
    };
    let wait = Wait::Until(deadline);
    if create {
        let made = Segment::create(DEFAULT_RING).and_then(|(seg, fd)| Ok((seg, fd, os::doorbell()?)));
        let (seg, memfd, (bell, bell_theirs)) = match made {
            Ok(m) => m,
            Err(e) => {
                log::debug!("shared memory unavailable ({e}); staying on the socket");
                writer.write_raw_with_fds(&Setup::NoOffer.encode(), &[])?;
                return Ok(false);
            }
        };
        let offer = Setup::Offer {
            version: LAYOUT_VERSION,
            caps: [seg.caps[0] as u32, seg.caps[1] as u32],
        };
        writer.write_raw_with_fds(&offer.encode(), &[memfd.as_fd(), bell_theirs.as_fd()])?;
        drop(memfd);
        let answer = read_setup(reader, wait)?;
        match answer {
            Setup::Accept => {
                let peer_bell = reader
                    .take_fds(1)
                    .and_then(|mut v| v.pop())
                    .ok_or_else(|| setup_error("the peer accepted shared memory without its doorbell"))?;
                switch(reader, writer, seg, 0, socket, (bell, bell_theirs), peer_bell)?;
                Ok(true)
            }
            Setup::Refuse => Ok(false),
            other => Err(setup_error(&format!(
                "expected an answer to the shared-memory offer, got {other:?}"
            ))),
        }
    } else {
        let offer = read_setup(reader, wait)?;
        let (version, caps) = match offer {
            Setup::NoOffer => return Ok(false),
            Setup::Offer { version, caps } => (version, caps),
            other => {
                return Err(setup_error(&format!(
                    "expected a shared-memory offer, got {other:?}"
                )));
            }
        };
        let accepted = reader
            .take_fds(2)
            .ok_or_else(|| "the offer came without its memfd and doorbell".to_string())
            .and_then(|mut fds| {
                let peer_bell = fds.pop().ok_or("no doorbell")?;
                let memfd = fds.pop().ok_or("no memfd")?;
                let seg = Segment::open(&memfd, version, caps)?;
                let bell = os::doorbell().map_err(|e| format!("cannot make a doorbell: {e}"))?;
                Ok((seg, peer_bell, bell))
            });
        match accepted {
            Ok((seg, peer_bell, bell)) => {
                writer.write_raw_with_fds(&Setup::Accept.encode(), &[bell.1.as_fd()])?;
                switch(reader, writer, seg, 1, socket, bell, peer_bell)?;
                Ok(true)
            }
            Err(why) => {
                log::warn!("refused the peer's shared-memory offer: {why}; staying on the socket");
                writer.write_raw_with_fds(&Setup::Refuse.encode(), &[])?;
                Ok(false)
            }
        }
    }
}

fn setup_error(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("moving to shared memory: {why}"),
    )
}

fn read_setup(reader: &mut Reader, wait: Wait) -> io::Result<Setup> {
    let mut b = [0u8; SETUP_LEN];
    match reader.read_exact_raw(&mut b, wait) {
        Ok(true) => {}
        Ok(false) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "moving to shared memory: the peer did not answer in time",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Setup::decode(&b).ok_or_else(|| setup_error("the peer sent something that is no setup message"))
}

/// Both halves move to the rings.
fn switch(
    reader: &mut Reader,
    writer: &mut Writer,
    seg: Segment,
    out: usize,
    socket: Arc<OwnedFd>,
    bell: (OwnedFd, OwnedFd),
    peer_bell: OwnedFd,
) -> io::Result<()> {
    let conn = Conn::new(seg, out, socket, bell, peer_bell);
    // Carriers the peer sent right after its answer may already sit in the
    // reader's buffer (their fds in its queue): they count as taken.
    let leftover = reader.take_raw_leftover();
    if leftover.iter().any(|&b| b != CARRIER) {
        return Err(setup_error(
            "the peer sent bytes on the socket after moving to shared memory",
        ));
    }
    reader.set_io(super::ReadIo::Shm(ShmRead::new(
        conn.clone(),
        leftover.len() as u64,
    )));
    writer.set_io(super::WriteIo::Shm(ShmWrite::new(conn)))
}

impl Conn {
    fn new(
        seg: Segment,
        out: usize,
        socket: Arc<OwnedFd>,
        bell: (OwnedFd, OwnedFd),
        peer_bell: OwnedFd,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            seg,
            out,
            socket,
            bell: bell.0,
            self_bell: bell.1,
            peer_bell,
            sleep: Mutex::new(Sleep::default()),
            woke: Condvar::new(),
            peer_done: AtomicBool::new(false),
            hung_up: AtomicBool::new(false),
            closed_here: AtomicBool::new(false),
            read_pos: AtomicU64::new(0),
            write_pos: AtomicU64::new(0),
        })
    }
}

impl ShmRead {
    fn new(conn: Arc<Conn>, carriers: u64) -> ShmRead {
        ShmRead {
            conn,
            head: 0,
            tail: 0,
            carriers,
        }
    }
}

impl ShmWrite {
    fn new(conn: Arc<Conn>) -> ShmWrite {
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

/// Both sides of one connection in this process, rings of `cap` bytes:
/// (the maker's read and write halves, the accepter's).
fn pair(cap: usize) -> io::Result<(ShmRead, ShmWrite, ShmRead, ShmWrite)> {
    let (a, b) = crate::sys::socketpair()?;
    let (seg_a, memfd) = Segment::create(cap)?;
    let seg_b = Segment::open(&memfd, LAYOUT_VERSION, [cap as u32, cap as u32]).map_err(io::Error::other)?;
    let (bell_a, bell_b) = (os::doorbell()?, os::doorbell()?);
    let (ring_a, ring_b) = (bell_a.1.try_clone()?, bell_b.1.try_clone()?);
    let a = Conn::new(seg_a, 0, Arc::new(a), bell_a, ring_b);
    let b = Conn::new(seg_b, 1, Arc::new(b), bell_b, ring_a);
    Ok((
        ShmRead::new(a.clone(), 0),
        ShmWrite::new(a),
        ShmRead::new(b.clone(), 0),
        ShmWrite::new(b),
    ))
}

/// The fuzz harness (`fuzz/fuzz_targets/shm_ring.rs`, and a test that
/// replays generated scripts): a hostile peer writes whatever the script
/// says into the shared mapping (positions, flags, counts, bytes) between
/// steps of our reader (framing included) and our writer. Nothing it does
/// may make our side panic, hang or allocate past its frame limit; an
/// impossible position must end in an error.
pub(crate) fn hostile_peer(script: &[u8]) {
    const CAP: usize = 4096;
    let Ok((ra, wa, _rb, wb)) = pair(CAP) else { return };
    let peer = wb.conn.clone();
    let mut reader = Reader::new(super::ReadIo::Shm(ra));
    reader.set_max_frame_len(64 << 10);
    reader.set_spin(std::time::Duration::ZERO);
    let writer = Writer::new(super::WriteIo::Shm(wa));
    let mut s = script.iter().copied();
    let word = |s: &mut dyn Iterator<Item = u8>| {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = s.next().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    while let Some(op) = s.next() {
        let seg = &peer.seg;
        match op % 8 {
            // The positions and counts our side reads from the peer's lines.
            0 => seg.word64(1, TAIL).store(word(&mut s), Ordering::Release),
            1 => seg.word64(0, HEAD).store(word(&mut s), Ordering::Release),
            2 => seg.word64(1, CARRIERS).store(word(&mut s), Ordering::Release),
            3 => {
                let v = u32::from(s.next().unwrap_or(0));
                match v % 4 {
                    0 => seg
                        .word64(1, PRODUCER_CLOSED)
                        .store(u64::from(v), Ordering::Release),
                    1 => seg
                        .word64(0, CONSUMER_CLOSED)
                        .store(u64::from(v), Ordering::Release),
                    2 => seg.word32(1, READER_WAITING).store(v, Ordering::Release),
                    _ => seg.word32(0, WRITER_WAITING).store(v, Ordering::Release),
                }
            }
            // Bytes anywhere in the ring it writes.
            4 => {
                let at = u64::from(s.next().unwrap_or(0)) << 4;
                let n = usize::from(s.next().unwrap_or(0));
                let bytes: Vec<u8> = (&mut s).take(n).collect();
                seg.copy_in(1, at, &bytes);
            }
            // Our reader takes what it finds, frame by frame, never waiting.
            5 => {
                if let Ok(Some(_)) = reader.next_frame(Wait::Now) {
                    let _ = reader.payload().len();
                    let _ = reader.take_fds(1);
                    reader.consume();
                }
            }
            // Our writer writes what fits now.
            6 => {
                let n = usize::from(s.next().unwrap_or(0)) * 8;
                let _ = writer.append(super::frame::Kind::Message, |buf| {
                    buf.resize(buf.len() + n, 0);
                    Ok::<(), ()>(())
                });
                // (Never waits: a full ring ends the flush.)
                let _ = writer.flush_with(|| Err(io::ErrorKind::WouldBlock.into()));
            }
            // The peer also writes by the protocol, to reach deeper states.
            _ => {
                let n = usize::from(s.next().unwrap_or(0));
                let mut frame = Vec::new();
                super::frame::encode_frame(super::frame::Kind::Message, &vec![9u8; n], &mut frame);
                let _ = wb.write_some(&frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(cap: usize) -> (ShmRead, ShmWrite, ShmRead, ShmWrite) {
        super::pair(cap).unwrap()
    }

    proptest! {
        /// The fuzz target's harness over generated scripts: no panic, no
        /// hang, whatever the peer writes.
        #[test]
        fn a_hostile_peer_never_breaks_more_than_its_connection(script in proptest::collection::vec(any::<u8>(), 0..600)) {
            hostile_peer(&script);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The producer writes what fits of this many bytes.
        Write(usize),
        /// The consumer reads at most this many (into a buffer with room
        /// for at most `room`).
        Read { max: usize, room: usize },
    }

    fn op(cap: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3 * cap).prop_map(Op::Write),
            (1..2 * cap, 1..2 * cap).prop_map(|(max, room)| Op::Read { max, room }),
        ]
    }

    proptest! {
        /// Random writes and reads of random sizes, against a `VecDeque`:
        /// the same bytes in the same order, never more than the capacity
        /// in flight, wrapping at every offset.
        #[test]
        fn the_ring_is_a_fifo_of_bytes(cap_shift in 12u32..14, ops in proptest::collection::vec(op(16 << 10), 1..80)) {
            let cap = 1usize << cap_shift;
            let (_ra, wa, mut rb, _wb) = pair(cap);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u8;
            let mut fds = VecDeque::new();
            for op in ops {
                match op {
                    Op::Write(n) => {
                        let bytes: Vec<u8> = (0..n).map(|i| next.wrapping_add(i as u8)).collect();
                        let took = wa.write_some(&bytes).unwrap();
                        prop_assert!(took <= n);
                        prop_assert!(model.len() + took <= cap, "more than the capacity in flight");
                        if took < n {
                            prop_assert_eq!(model.len() + took, cap, "a short write with room left");
                        }
                        model.extend(&bytes[..took]);
                        next = next.wrapping_add(took as u8);
                    }
                    Op::Read { max, room } => {
                        let mut buf = Vec::with_capacity(room);
                        let room = buf.capacity();
                        match rb.read_nonblocking(&mut buf, max, &mut fds).unwrap() {
                            ReadOutcome::Data(n) => {
                                prop_assert_eq!(n, buf.len());
                                prop_assert_eq!(n, model.len().min(max).min(room));
                                let want: Vec<u8> = model.drain(..n).collect();
                                prop_assert_eq!(buf, want);
                            }
                            ReadOutcome::WouldBlock => prop_assert!(model.is_empty()),
                            ReadOutcome::Eof => prop_assert!(false, "an end nobody made"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_closed_producer_is_an_end_after_its_bytes() {
        let (_ra, wa, mut rb, _wb) = pair(4096);
        assert_eq!(wa.write_some(b"last words").unwrap(), 10);
        drop(wa);
        let mut buf = Vec::with_capacity(64);
        let mut fds = VecDeque::new();
        assert_eq!(
            rb.read_nonblocking(&mut buf, 64, &mut fds).unwrap(),
            ReadOutcome::Data(10)
        );
        assert_eq!(
            rb.read_nonblocking(&mut buf, 64, &mut fds).unwrap(),
            ReadOutcome::Eof
        );
    }

    #[test]
    fn a_closed_consumer_fails_the_writer() {
        let (_ra, wa, rb, _wb) = pair(4096);
        drop(rb);
        assert_eq!(wa.write_some(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn setup_messages_round_trip_and_garbage_is_none() {
        for m in [
            Setup::Offer {
                version: 1,
                caps: [4096, 1 << 20],
            },
            Setup::NoOffer,
            Setup::Accept,
            Setup::Refuse,
        ] {
            assert_eq!(Setup::decode(&m.encode()), Some(m));
        }
        assert_eq!(Setup::decode(&[7u8; SETUP_LEN]), None);
    }

    #[test]
    fn an_offer_with_bad_geometry_or_no_seals_is_refused() {
        let (_seg, fd) = Segment::create(DEFAULT_RING).unwrap();
        let cap = DEFAULT_RING as u32;
        assert!(Segment::open(&fd, LAYOUT_VERSION, [cap, cap]).is_ok());
        assert!(Segment::open(&fd, LAYOUT_VERSION + 1, [cap, cap]).is_err());
        assert!(Segment::open(&fd, LAYOUT_VERSION, [cap, cap / 2]).is_err());
        assert!(Segment::open(&fd, LAYOUT_VERSION, [cap + 1, cap]).is_err());
        assert!(Segment::open(&fd, LAYOUT_VERSION, [1 << 30, cap]).is_err());
        // A memfd of the right size whose size is not sealed.
        let total = Segment::total([DEFAULT_RING, DEFAULT_RING]) as u64;
        let loose = os::memfd_create(c"portpool-test", total).unwrap();
        let e = Segment::open(&loose, LAYOUT_VERSION, [cap, cap]).unwrap_err();
        assert!(e.contains("not sealed"), "{e}");
    }
}
