//! The OS calls under shared memory: sealed memfds, their mappings, and
//! datagram-socket doorbells (Linux). The shared-memory transport
//! (`transport/shm.rs`) is built on these and on nothing else of libc.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// Seals that make a memfd's size final: it can neither shrink (which
/// would make a peer's mapping fault) nor grow, and no seal can be added
/// or removed later.
pub(crate) const SEALS_SIZE: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Creates an anonymous memory file of `len` bytes (zeroed) that can be
/// sealed, close-on-exec. `name` shows in `/proc/<pid>/fd` only.
pub(crate) fn memfd_create(name: &std::ffi::CStr, len: u64) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // `name` is a NUL-terminated string that outlives the call.
    let fd = syscall!(memfd_create(name.as_ptr(), flags))?;
    // SAFETY: memfd_create just returned this fd; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memory file too large"))?;
    // `fd` is the memfd we own.
    syscall!(ftruncate(fd.as_raw_fd(), len))?;
    Ok(fd)
}

/// Adds `seals` to a memfd.
pub(crate) fn add_seals(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // `fd` is open (borrowed); F_ADD_SEALS takes an int argument.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals))?;
    Ok(())
}

/// The seals a memfd carries (an error if it is no memfd).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // `fd` is open (borrowed); F_GET_SEALS takes no argument.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_GET_SEALS))
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value for
    // fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // `fd` is open (borrowed) and `st` is a writable stat.
    syscall!(fstat(fd.as_raw_fd(), &mut st))?;
    u64::try_from(st.st_size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative file size"))
}

/// A shared mapping of a whole memory file, unmapped on drop. It hands out
/// a raw pointer only: memory another process may write is never made a
/// Rust reference (the transport copies bytes in and out through it).
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is an address range owned by this value; it has no
// thread affinity, and all access through its pointer is by atomics or by
// copies whose callers serialise themselves.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: `&Mapping` only gives out the pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, read-write or read-only. The caller
    /// has checked that the file is at least `len` long and cannot shrink
    /// (its seals), or a later access past its end would fault.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        Mapping::map_with(fd, len, writable, libc::MAP_SHARED)
    }

    /// Maps `len` bytes of a write-sealed file read-only and private: the
    /// content cannot change, and (unlike a shared mapping of a writable
    /// fd on kernels before 6.7) the kernel does not count it as one that
    /// could be made writable.
    pub(crate) fn map_sealed(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        Mapping::map_with(fd, len, false, libc::MAP_PRIVATE)
    }

    fn map_with(fd: BorrowedFd<'_>, len: usize, writable: bool, share: libc::c_int) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map 0 bytes"));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (address null), of
        // an open fd (borrowed); it overlaps no Rust object.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, share, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        if writable {
            dont_fork(p, len);
        }
        Ok(Mapping { ptr, len })
    }

    /// The first byte of the mapping.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

/// Keeps a writable shared mapping out of children forked from now on. A
/// child forked by another thread (to exec a program) holds a copy of
/// every mapping until its exec; a writable one makes the kernel refuse
/// to seal the file against writes (`EBUSY`), so a `Buffer` could not be
/// sent while some thread was spawning a process. No child needs these
/// pages: ours exec at once.
fn dont_fork(p: *mut libc::c_void, len: usize) {
    // SAFETY: `p..p+len` is a mapping this module just made and owns;
    // MADV_DONTFORK changes only what fork copies, not its content.
    let r = unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) };
    if r != 0 {
        log::debug!("madvise(MADV_DONTFORK): {}", io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `map` created, unmapped once; no
        // reference into it outlives this value (only raw pointers are
        // given out, and their users hold this mapping alive).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A memory file and its mapping, for `port::Buffer`: written in place
/// by its owner, then frozen (sealed read-only) before its fd leaves this
/// process; or a peer's frozen file, checked and mapped read-only.
#[derive(Debug)]
pub(crate) struct Region {
    fd: OwnedFd,
    /// `None` for an empty region (a 0-byte file cannot be mapped).
    map: Option<Mapping>,
    cap: usize,
    frozen: std::sync::atomic::AtomicBool,
    freezing: std::sync::Mutex<()>,
}

impl Region {
    /// A writable region of `cap` bytes (zeroed).
    pub(crate) fn new(cap: usize) -> io::Result<Region> {
        let fd = memfd_create(c"portpool-buffer", cap as u64)?;
        let map = if cap == 0 {
            None
        } else {
            Some(Mapping::map(fd.as_fd(), cap, true)?)
        };
        Ok(Region {
            fd,
            map,
            cap,
            frozen: std::sync::atomic::AtomicBool::new(false),
            freezing: std::sync::Mutex::new(()),
        })
    }

    /// A peer's region of `len` bytes, after checking that nobody can write,
    /// shrink or grow it any more (its seals) and that it holds `len` bytes.
    pub(crate) fn open_frozen(fd: OwnedFd, len: usize) -> Result<Region, String> {
        let need = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        let have = seals(fd.as_fd()).map_err(|e| format!("it is not a sealable memory file ({e})"))?;
        if have & need != need {
            return Err("its memory file is not sealed against writes and resizing".into());
        }
        let size = file_len(fd.as_fd()).map_err(|e| format!("cannot size it ({e})"))?;
        if size < len as u64 {
            return Err(format!("it says {len} bytes but its file holds {size}"));
        }
        let map = if len == 0 {
            None
        } else {
            Some(Mapping::map_sealed(fd.as_fd(), len).map_err(|e| format!("cannot map it ({e})"))?)
        };
        Ok(Region {
            fd,
            map,
            cap: len,
            frozen: std::sync::atomic::AtomicBool::new(true),
            freezing: std::sync::Mutex::new(()),
        })
    }

    /// Its size in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether it is sealed read-only.
    pub(crate) fn is_frozen(&self) -> bool {
        // Acquire: pairs with the Release store in `freeze`.
        self.frozen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The first `len` bytes (`len <= capacity`).
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        let len = len.min(self.cap);
        match &self.map {
            // SAFETY: the mapping is `cap >= len` bytes and lives as long as
            // `self`. Its bytes change only through `bytes_mut` (which needs
            // `&mut self`, so no shared slice is alive then) while the file
            // is ours alone; once frozen (ours, sealed before its fd left;
            // or a peer's, whose seals `open_frozen` checked) nobody can
            // write it or shrink it.
            Some(m) => unsafe { std::slice::from_raw_parts(m.as_ptr(), len) },
            None => &[],
        }
    }

    /// The first `len` bytes, writable; `None` once frozen.
    pub(crate) fn bytes_mut(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.is_frozen() {
            return None;
        }
        let len = len.min(self.cap);
        match &self.map {
            // SAFETY: as in `bytes`; `&mut self` makes this the only slice,
            // and an unfrozen file has not left this process.
            Some(m) => Some(unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), len) }),
            None => Some(&mut []),
        }
    }

    /// Grows an unfrozen region to `cap` bytes, keeping its content.
    pub(crate) fn grow(&mut self, cap: usize) -> io::Result<()> {
        if self.is_frozen() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the buffer is sealed",
            ));
        }
        let len = libc::off_t::try_from(cap)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
        // `fd` is our own memfd, not yet sealed.
        syscall!(ftruncate(self.fd.as_raw_fd(), len))?;
        self.map = Some(Mapping::map(self.fd.as_fd(), cap, true)?);
        self.cap = cap;
        Ok(())
    }

    /// Seals the region read-only at `len` bytes, once: the file is cut to
    /// `len` (nothing past it, written once and cut off, can reach a
    /// receiver), the writable mapping is replaced in place by a read-only
    /// one of the same pages (slices into its first `len` bytes stay valid
    /// and unchanged), then the file is sealed against writes and
    /// resizing, so a receiver can trust it. If sealing fails, the region
    /// is left as it was: writable, its size restored.
    pub(crate) fn freeze(&self, len: usize) -> io::Result<()> {
        let _g = self.freezing.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_frozen() {
            return Ok(());
        }
        let size = |n: usize| -> io::Result<()> {
            let n = libc::off_t::try_from(n).map_err(|_| io::Error::other("buffer too large"))?;
            // `fd` is our own memfd, not yet sealed.
            syscall!(ftruncate(self.fd.as_raw_fd(), n)).map(drop)
        };
        size(len.min(self.cap))?;
        if let Some(m) = &self.map {
            // The new mapping is made through a read-only open of the same
            // file: a shared mapping of a writable fd would still count as
            // writable, and the kernel would refuse the write seal (EBUSY).
            let ro = match std::fs::File::open(format!("/proc/self/fd/{}", self.fd.as_raw_fd())) {
                Ok(f) => f,
                Err(e) => {
                    size(self.cap)?;
                    return Err(e);
                }
            };
            self.remap(m, &ro, libc::PROT_READ);
            if let Err(e) = add_seals(self.fd.as_fd(), SEALS_SIZE | libc::F_SEAL_WRITE) {
                // Writable again, whole again: as if nothing happened.
                self.remap(m, &self.fd, libc::PROT_READ | libc::PROT_WRITE);
                size(self.cap)?;
                return Err(e);
            }
        } else {
            add_seals(self.fd.as_fd(), SEALS_SIZE | libc::F_SEAL_WRITE)?;
        }
        // Release: pairs with the Acquire loads in `is_frozen`.
        self.frozen.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Replaces our mapping `m` in place with one of `file` (the same
    /// memory file) with protection `prot`. Slices into `m` must stay
    /// valid, so a failure (the range could be left unmapped) aborts.
    fn remap(&self, m: &Mapping, file: &impl AsRawFd, prot: libc::c_int) {
        // SAFETY: MAP_FIXED over exactly the range our own mapping holds
        // (same address, same length), with the same file at offset 0: the
        // pages and their content stay; only the protection changes. No
        // `&mut` slice can be alive (the callers take `&self`).
        let p = unsafe {
            libc::mmap(
                m.as_ptr().cast(),
                self.cap,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            eprintln!(
                "portpool: could not remap a Buffer in place ({}); slices into it may dangle, aborting",
                io::Error::last_os_error()
            );
            std::process::abort();
        }
        if prot & libc::PROT_WRITE != 0 {
            // A new mapping: it does not inherit the old one's advice.
            dont_fork(p, self.cap);
        }
    }

    /// The memory file (to send, once frozen).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates a doorbell: a datagram socket pair, close-on-exec: `(ours, the
/// peer's)`. We sleep on ours; the peer rings it by sending on its end. A
/// socket, not an eventfd, because every ring and drain says "do not
/// block" in the call itself: a peer that shares a file description with
/// us (it holds the other end of a pair, never our end) cannot make either
/// block by changing flags.
pub(crate) fn doorbell() -> io::Result<(OwnedFd, OwnedFd)> {
    super::socketpair_of(libc::SOCK_DGRAM)
}

/// Rings a doorbell (one byte, never blocking). A full queue is rung
/// already; an fd that is no socket or whose other end is gone is an error.
pub(crate) fn ring(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = [1u8];
    loop {
        // `fd` is open (borrowed); we send the one byte of `one`.
        match syscall!(send(
            fd.as_raw_fd(),
            one.as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
        )) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Drains our doorbell without blocking (at most 64 rings at a time, so a
/// peer that rings without pause cannot keep us here).
pub(crate) fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    for _ in 0..64 {
        // `fd` is open (borrowed); we read at most 8 bytes into `buf`.
        let got = syscall!(recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT
        ));
        if !matches!(got, Ok(n) if n > 0) {
            return;
        }
    }
}

/// What [`poll_doorbell`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rang {
    /// The doorbell is readable.
    pub(crate) bell: bool,
    /// The peer shut its sending side down (or left).
    pub(crate) peer_done_sending: bool,
    /// The connection is gone both ways (the peer closed or died).
    pub(crate) hung_up: bool,
}

/// Sleeps until the doorbell `bell` is rung, the socket reports its peer's
/// end (`POLLRDHUP`, only while `watch_rdhup`; a hang-up of it or of the
/// doorbell always), or `timeout` passes (`None`: no limit).
pub(crate) fn poll_doorbell(
    bell: BorrowedFd<'_>,
    socket: BorrowedFd<'_>,
    watch_rdhup: bool,
    timeout: Option<Duration>,
) -> io::Result<Rang> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let ms = super::poll_timeout_ms(deadline);
        let mut fds = [
            libc::pollfd {
                fd: bell.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: if watch_rdhup { libc::POLLRDHUP } else { 0 },
                revents: 0,
            },
        ];
        // `fds` holds two valid pollfds and we pass a count of 2.
        match syscall!(poll(fds.as_mut_ptr(), 2, ms)) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Rang::default());
                }
            }
            Ok(_) => {
                if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                let s = fds[1].revents;
                // A doorbell in error (not a ring) ends the connection too.
                let hung_up = (s | fds[0].revents) & (libc::POLLHUP | libc::POLLERR) != 0;
                return Ok(Rang {
                    bell: fds[0].revents & libc::POLLIN != 0,
                    peer_done_sending: hung_up || s & libc::POLLRDHUP != 0,
                    hung_up,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_sealed_memfd_keeps_its_size_and_maps_shared() {
        let fd = memfd_create(c"portpool-test", 8192).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), 8192);
        add_seals(fd.as_fd(), SEALS_SIZE).unwrap();
        assert_eq!(seals(fd.as_fd()).unwrap() & SEALS_SIZE, SEALS_SIZE);
        // Shrinking is refused once sealed.
        // `fd` is the memfd we own.
        assert!(syscall!(ftruncate(fd.as_raw_fd(), 0)).is_err());
        let a = Mapping::map(fd.as_fd(), 8192, true).unwrap();
        let b = Mapping::map(fd.as_fd(), 8192, false).unwrap();
        // SAFETY: both mappings are 8192 bytes of the same file, alive here;
        // byte 100 is inside both, and no reference into them exists.
        unsafe {
            a.as_ptr().add(100).write_volatile(42);
            assert_eq!(b.as_ptr().add(100).read_volatile(), 42);
        }
    }

    #[test]
    fn a_frozen_memfd_cannot_be_mapped_writable() {
        let fd = memfd_create(c"portpool-test", 4096).unwrap();
        add_seals(fd.as_fd(), SEALS_SIZE | libc::F_SEAL_WRITE).unwrap();
        assert!(Mapping::map(fd.as_fd(), 4096, true).is_err());
        assert!(Mapping::map(fd.as_fd(), 4096, false).is_ok());
    }

    #[test]
    fn a_rung_doorbell_wakes_a_poll_until_drained() {
        let (a, _b) = crate::sys::socketpair().unwrap();
        let (bell, theirs) = doorbell().unwrap();
        let quiet = poll_doorbell(bell.as_fd(), a.as_fd(), true, Some(Duration::from_millis(1))).unwrap();
        assert_eq!(quiet, Rang::default());
        ring(theirs.as_fd()).unwrap();
        ring(theirs.as_fd()).unwrap();
        assert!(poll_doorbell(bell.as_fd(), a.as_fd(), true, None).unwrap().bell);
        drain(bell.as_fd());
        let drained = poll_doorbell(bell.as_fd(), a.as_fd(), true, Some(Duration::from_millis(1))).unwrap();
        assert!(!drained.bell);
    }

    #[test]
    fn a_peer_that_leaves_wakes_the_doorbell_poll() {
        let (a, b) = crate::sys::socketpair().unwrap();
        let (bell, _theirs) = doorbell().unwrap();
        drop(b);
        let r = poll_doorbell(bell.as_fd(), a.as_fd(), true, None).unwrap();
        assert!(r.peer_done_sending && r.hung_up && !r.bell);
    }
}

#[cfg(test)]
mod bell_tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_flooded_or_abandoned_doorbell_neither_blocks_nor_spins() {
        let (bell, theirs) = doorbell().unwrap();
        let (a, _b) = crate::sys::socketpair().unwrap();
        // Ringing a full queue returns at once.
        for _ in 0..100_000 {
            ring(theirs.as_fd()).unwrap();
        }
        // Draining takes a bounded bite; enough bites empty it.
        let mut bites = 0;
        while poll_doorbell(bell.as_fd(), a.as_fd(), true, Some(Duration::ZERO))
            .unwrap()
            .bell
        {
            drain(bell.as_fd());
            bites += 1;
            assert!(bites < 100_000, "the doorbell never drained");
        }
        // The other end gone: nothing to wake for (the connection's socket
        // tells the peer's end), so a poll sleeps rather than spins.
        drop(theirs);
        let r = poll_doorbell(bell.as_fd(), a.as_fd(), true, Some(Duration::from_millis(5))).unwrap();
        assert_eq!(r, Rang::default());
    }
}
