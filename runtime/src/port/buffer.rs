//! [`Buffer`]: bytes that cross to another process without a copy, as a
//! sealed memory file whose fd travels beside the message (Linux).
//!
//! Sending a value seals every `Buffer` in it (read-only from then on) and
//! attaches their fds to the message's frame; its encoding holds only an
//! index among those fds and a length. The receiver checks each file's
//! seals and size and maps it read-only, so a plain `&[u8]` over it is
//! sound: nobody, the sender included, can change or shrink it any more.
//! Within one process (a thread pool's job) a `Buffer` simply moves.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::Error as _;
use serde::ser::Error as _;

use crate::sys::shm::Region;

/// Why a Buffer cannot be encoded here.
const NOT_HERE: &str = "a Buffer travels only in a message for a connection that passes fds (a socket or \
     shared-memory port: Ipc messages; a Link's messages, requests and replies; a process pool's jobs \
     and results), where its memory file goes beside the message; not over pipes, as JSON or into a file";

/// The largest `Buffer` a peer may send (1 GiB).
pub const MAX_RECEIVED_BUFFER: usize = 1 << 30;

/// The most bytes of received `Buffer`s this process holds mapped at once
/// (8 GiB): a peer cannot make us pin more.
pub const MAX_RECEIVED_TOTAL: u64 = 8 << 30;

/// The most buffers one message (a job, a result, a chunk of a `map`'s
/// jobs or of their results) carries.
pub const MAX_BUFFERS_PER_MESSAGE: usize = crate::transport::MAX_FDS_PER_FRAME;

/// Bytes of received buffers mapped now.
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Where buffers being encoded put their files.
enum Sink {
    /// Into the message: collected here, in order.
    Collect(Vec<OwnedFd>),
    /// Nowhere: the encoding is only checked (a process pool's submit),
    /// and the buffer is neither sealed nor its file taken.
    Check,
}

thread_local! {
    /// While a message is encoded for a connection that passes fds: the
    /// fds of the buffers in it, in order.
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
    /// While a received message is decoded: the fds that came with it.
    static SOURCE: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

thread_local! {
    /// Why the last buffer encoded or decoded on this thread was refused
    /// (serde formats keep only "custom error"; the connection reports this).
    static REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records why a buffer was refused and returns it for serde.
fn refuse(why: String) -> String {
    REFUSED.with(|r| *r.borrow_mut() = Some(why.clone()));
    why
}

/// Why the last buffer on this thread was refused, if one was since the
/// last call.
pub(crate) fn take_refusal() -> Option<String> {
    REFUSED.with(|r| r.borrow_mut().take())
}

/// Runs `encode` with buffers allowed to attach their fds; returns its
/// result and those fds.
pub(crate) fn collecting<R>(encode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    REFUSED.with(|r| r.borrow_mut().take());
    // Restored on the way out, even if a Serialize impl panics.
    let mut guard = RestoreSink(Some(SINK.with(|s| s.replace(Some(Sink::Collect(Vec::new()))))));
    let r = encode();
    let outer = guard.0.take().unwrap_or_default();
    let fds = match SINK.with(|s| s.replace(outer)) {
        Some(Sink::Collect(fds)) => fds,
        _ => Vec::new(),
    };
    (r, fds)
}

/// How many files the encoding under way has collected so far (0 when
/// none is collecting): a chunk's encoder marks where each job starts.
pub(crate) fn collected() -> usize {
    SINK.with(|s| match &*s.borrow() {
        Some(Sink::Collect(fds)) => fds.len(),
        _ => 0,
    })
}

/// Forgets (closes) the files collected past the first `keep`: those of a
/// job whose bytes were cut off again, so the frame carries only files
/// its bytes name.
pub(crate) fn uncollect(keep: usize) {
    SINK.with(|s| {
        if let Some(Sink::Collect(fds)) = &mut *s.borrow_mut() {
            fds.truncate(keep);
        }
    });
}

/// Restores the outer sink on the way out, even if a Serialize panics.
struct RestoreSink(Option<Option<Sink>>);

impl Drop for RestoreSink {
    fn drop(&mut self) {
        if let Some(outer) = self.0.take() {
            SINK.with(|s| s.replace(outer));
        }
    }
}

/// Restores the outer source on the way out (closing the fds nobody
/// took), even if a Deserialize panics.
struct RestoreSource(Option<Option<Vec<Option<OwnedFd>>>>);

impl Drop for RestoreSource {
    fn drop(&mut self) {
        if let Some(outer) = self.0.take() {
            SOURCE.with(|s| s.replace(outer));
        }
    }
}

/// Runs `f` with no buffer scope active (the job's sink and source are set
/// aside and put back after): a handler's own encodes and decodes inside a
/// job's decode and result encode are its own.
pub(crate) fn outside<R>(f: impl FnOnce() -> R) -> R {
    let _sink = RestoreSink(Some(SINK.with(|s| s.replace(None))));
    let _source = RestoreSource(Some(SOURCE.with(|s| s.replace(None))));
    f()
}

/// Runs `check` with buffers encoding as they would in a message, but
/// neither sealed nor their files taken (a process pool checks at submit
/// that a job will encode).
pub(crate) fn checking<R>(check: impl FnOnce() -> R) -> R {
    REFUSED.with(|r| r.borrow_mut().take());
    let _guard = RestoreSink(Some(SINK.with(|s| s.replace(Some(Sink::Check)))));
    check()
}

/// Runs `decode` with `fds` (those that came with the message) for its
/// buffers to take; any it leaves are closed.
pub(crate) fn providing<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
    REFUSED.with(|r| r.borrow_mut().take());
    // Restored on the way out (closing what is left), even on a panic.
    let _guard = RestoreSource(Some(
        SOURCE.with(|s| s.replace(Some(fds.into_iter().map(Some).collect()))),
    ));
    decode()
}

/// Bytes in shared memory that move to another process without a copy.
///
/// Fill it in place ([`as_mut`](Self::as_mut), [`resize`](Self::resize),
/// or [`std::io::Write`], which grows it), then send it as (part of) any
/// message: [`IpcSender::send`](crate::port::IpcSender::send) seals it and
/// passes its memory file with the frame; the receiver maps the same pages
/// read-only. After sending, the sender's copy is read-only too (writes
/// fail). It reads as a `&[u8]` everywhere ([`Deref`](std::ops::Deref)).
/// Encoding seals it, whether or not the send then succeeds (a send to a
/// peer that left still seals it); a value that cannot be encoded where
/// it goes leaves it writable.
///
/// ```
/// # extern crate portpool_runtime as portpool;
/// use std::io::Write;
/// use portpool::port::{self, Buffer};
///
/// let (a, b) = port::open()?;
/// let peer = std::thread::spawn(move || -> Result<usize, portpool::error::RecvError> {
///     let mut b = b.connect().expect("connect");
///     let got: (String, Buffer) = b.recv()?;
///     Ok(got.1.iter().filter(|&&x| x == 7).count())
/// });
/// let a = a.connect()?;
/// let mut buf = Buffer::with_capacity(1 << 20)?;
/// buf.write_all(&[7u8; 1 << 20])?;
/// a.send(&("image", &buf))?;
/// assert!(buf.as_mut().is_err(), "sent: sealed");
/// assert_eq!(peer.join().unwrap()?, 1 << 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// It crosses connections that pass fds: socket ports, and through them
/// shared-memory ones, not pipes (a launcher's workers). A thread pool's
/// jobs carry it by moving it; a process pool's jobs (submitted or in a
/// `map`'s chunks) carry it to the worker like a message, and a handler
/// can return one the same way; so do a [`Link`](crate::link::Link)'s
/// messages, requests and replies. Encoding one anywhere else (over
/// pipes, as JSON, into a file) fails with an error that says so.
/// One message carries at most [`MAX_BUFFERS_PER_MESSAGE`]; a `map`
/// keeps its chunks under that. A receiver refuses a buffer
/// over [`MAX_RECEIVED_BUFFER`], or past [`MAX_RECEIVED_TOTAL`] held at
/// once, or whose file is not sealed.
pub struct Buffer {
    region: Region,
    len: usize,
    /// Bytes past this were never exposed: still the file's zeros.
    touched: usize,
    /// Counted in `RECEIVED` (a peer's).
    received: bool,
}

impl Buffer {
    /// An empty buffer with room for `capacity` bytes (one memory file).
    pub fn with_capacity(capacity: usize) -> io::Result<Buffer> {
        Ok(Buffer {
            region: Region::new(capacity)?,
            len: 0,
            touched: 0,
            received: false,
        })
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> io::Result<Buffer> {
        let mut b = Buffer::with_capacity(len)?;
        b.len = len;
        b.touched = len;
        Ok(b)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many bytes it can hold before it grows.
    pub fn capacity(&self) -> usize {
        self.region.capacity()
    }

    /// Whether it is read-only: sent, or received.
    pub fn is_sealed(&self) -> bool {
        self.region.is_frozen()
    }

    /// Its bytes, to fill in place; an error once it is sealed.
    pub fn as_mut(&mut self) -> io::Result<&mut [u8]> {
        let len = self.len;
        self.region.bytes_mut(len).ok_or_else(sealed)
    }

    /// Makes it `len` bytes long, growing its memory if needed; bytes past
    /// the old length are zero. An error once it is sealed.
    pub fn resize(&mut self, len: usize) -> io::Result<()> {
        if self.is_sealed() {
            return Err(sealed());
        }
        if len > self.capacity() {
            self.region.grow(len)?;
        }
        // Bytes once exposed and cut off are zeroed again; past those the
        // file is still zero (a fresh file, or grown by ftruncate).
        let dirty = len.min(self.touched);
        if dirty > self.len {
            let old = self.len;
            if let Some(b) = self.region.bytes_mut(dirty) {
                b[old..].fill(0);
            }
        }
        self.len = len;
        self.touched = self.touched.max(len);
        Ok(())
    }
}

fn sealed() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the buffer is sealed (it was sent or received): its bytes are read-only",
    )
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.region.bytes(self.len)
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl io::Write for Buffer {
    /// Appends, doubling its memory when full; an error once sealed.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.is_sealed() {
            return Err(sealed());
        }
        let end = self
            .len
            .checked_add(data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
        if end > self.capacity() {
            self.region
                .grow(end.max(self.capacity().saturating_mul(2)).max(4096))?;
        }
        let start = self.len;
        let dst = self.region.bytes_mut(end).ok_or_else(sealed)?;
        dst[start..].copy_from_slice(data);
        self.len = end;
        self.touched = self.touched.max(end);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("len", &self.len)
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.received {
            // Relaxed: a budget, not an order.
            RECEIVED.fetch_sub(self.len as u64, Ordering::Relaxed);
        }
    }
}

/// What a buffer's encoding says: which of the message's fds, how long.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "Buffer")]
struct Wire {
    fd: u32,
    len: u64,
}

impl serde::Serialize for Buffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.len > MAX_RECEIVED_BUFFER {
            let why = format!(
                "a Buffer of {} bytes is over the {MAX_RECEIVED_BUFFER} bytes a receiver takes",
                self.len
            );
            return Err(S::Error::custom(refuse(why)));
        }
        let index = SINK.with(|sink| -> Result<u32, String> {
            let mut sink = sink.borrow_mut();
            let fds = match sink.as_mut() {
                None => return Err(NOT_HERE.into()),
                Some(Sink::Check) => return Ok(0),
                Some(Sink::Collect(fds)) => fds,
            };
            self.region
                .freeze(self.len)
                .map_err(|e| format!("cannot seal the buffer: {e}"))?;
            let fd = self
                .region
                .fd()
                .try_clone_to_owned()
                .map_err(|e| format!("cannot pass the buffer's file: {e}"))?;
            fds.push(fd);
            Ok((fds.len() - 1) as u32)
        });
        let index = index.map_err(|why| S::Error::custom(refuse(why)))?;
        Wire {
            fd: index,
            len: self.len as u64,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Buffer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Buffer, D::Error> {
        if SOURCE.with(|s| s.borrow().is_none()) {
            return Err(D::Error::custom(refuse(
                "a Buffer is decoded only from a message received with Ipc::recv (or IpcReceiver::recv), \
                 which brings its memory file; not from JSON, a file or bytes alone"
                    .into(),
            )));
        }
        let w = Wire::deserialize(d)?;
        let len = usize::try_from(w.len)
            .ok()
            .filter(|&l| l <= MAX_RECEIVED_BUFFER)
            .ok_or_else(|| {
                D::Error::custom(refuse(format!(
                    "a Buffer of {} bytes is over the limit of {MAX_RECEIVED_BUFFER}",
                    w.len
                )))
            })?;
        let fd = SOURCE
            .with(|src| {
                src.borrow_mut()
                    .as_mut()
                    .and_then(|fds| fds.get_mut(w.fd as usize))
                    .and_then(Option::take)
            })
            .ok_or_else(|| {
                D::Error::custom(refuse("a Buffer whose file did not come with the message".into()))
            })?;
        // Relaxed: a budget, not an order (checked and added at once).
        let total = RECEIVED.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        if total > MAX_RECEIVED_TOTAL {
            RECEIVED.fetch_sub(len as u64, Ordering::Relaxed);
            return Err(D::Error::custom(refuse(format!(
                "received Buffers would hold {total} bytes mapped, over the limit of {MAX_RECEIVED_TOTAL}"
            ))));
        }
        match Region::open_frozen(fd, len) {
            Ok(region) => Ok(Buffer {
                region,
                len,
                touched: len,
                received: true,
            }),
            Err(why) => {
                RECEIVED.fetch_sub(len as u64, Ordering::Relaxed);
                Err(D::Error::custom(refuse(format!("refused a Buffer: {why}"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a buffer that says `fd` 0 holds `len` bytes, with `fds`.
    fn receive(len: u64, fds: Vec<OwnedFd>) -> Result<Buffer, String> {
        let wire = postcard::to_allocvec(&Wire { fd: 0, len }).unwrap();
        providing(fds, || postcard::from_bytes::<Buffer>(&wire))
            .map_err(|_| take_refusal().unwrap_or_else(|| "no reason".into()))
    }

    #[test]
    fn a_file_that_anyone_can_still_write_is_refused() {
        let loose = crate::sys::shm::memfd_create(c"portpool-test", 4096).unwrap();
        let e = receive(100, vec![loose]).unwrap_err();
        assert!(e.contains("not sealed"), "{e}");
    }

    #[test]
    fn a_buffer_longer_than_its_file_or_the_limit_or_without_a_file_is_refused() {
        let b = Buffer::zeroed(4096).unwrap();
        b.region.freeze(4096).unwrap();
        let fd = b.region.fd().try_clone_to_owned().unwrap();
        let e = receive(8192, vec![fd]).unwrap_err();
        assert!(e.contains("file holds 4096"), "{e}");
        let e = receive(MAX_RECEIVED_BUFFER as u64 + 1, Vec::new()).unwrap_err();
        assert!(e.contains("over the limit"), "{e}");
        let e = receive(10, Vec::new()).unwrap_err();
        assert!(e.contains("did not come"), "{e}");
        // A good one is read-only and counted while it lives.
        let fd = b.region.fd().try_clone_to_owned().unwrap();
        let got = receive(4096, vec![fd]).unwrap();
        assert!(got.is_sealed() && got.len() == 4096 && got.iter().all(|&x| x == 0));
    }

    #[test]
    fn bytes_cut_off_before_sending_do_not_go_with_the_file() {
        use std::io::Write;
        let mut b = Buffer::with_capacity(0).unwrap();
        b.write_all(&[9u8; 8192]).unwrap();
        b.resize(100).unwrap();
        b.region.freeze(b.len).unwrap();
        assert_eq!(crate::sys::shm::file_len(b.region.fd()).unwrap(), 100);
        assert!(b.iter().all(|&x| x == 9));
    }

    #[test]
    fn a_buffer_grows_as_it_is_written_and_reads_back() {
        use std::io::Write;
        let mut b = Buffer::with_capacity(0).unwrap();
        for i in 0..10_000u32 {
            b.write_all(&i.to_le_bytes()).unwrap();
        }
        assert_eq!(b.len(), 40_000);
        assert!(
            b.chunks(4)
                .enumerate()
                .all(|(i, c)| c == (i as u32).to_le_bytes())
        );
        b.resize(50_000).unwrap();
        assert!(b[40_000..].iter().all(|&x| x == 0));
    }
}
