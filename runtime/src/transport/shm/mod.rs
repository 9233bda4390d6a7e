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

//!
//! This file holds the segment (`Segment`: layout, making, checking,
//! copying in and out) and the waiting (`Conn`); `ring.rs` the two halves'
//! io, `setup.rs` the move from the socket, `harness.rs` the fuzz harness
//! and the tests.

mod harness;
#[cfg(all(test, loom))]
mod loom_model;
mod ring;
mod setup;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::sys::shm::{self as os, Mapping};
use crate::util::lock;

pub(crate) use harness::hostile_peer;
pub(crate) use ring::{ShmRead, ShmWrite};
pub(crate) use setup::upgrade;

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

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer wrote an impossible {what}"),
    )
}
