//! The socket flavor: one `AF_UNIX` stream socket carries both directions
//! and can pass fds (`SCM_RIGHTS`). The default for every port pair.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::{MAX_FDS_PER_FRAME, ReadOutcome};
use crate::sys::{self, syscall};

/// Control buffer for one `recvmsg`: room for `MAX_FDS_PER_FRAME` fds and
/// the header (`CMSG_SPACE(250 * 4)` is 1016 bytes), aligned for `cmsghdr`.
type CmsgBuf = [u64; CMSG_WORDS];
const CMSG_WORDS: usize = 128;
const _: () = assert!(CMSG_WORDS * 8 >= 16 + MAX_FDS_PER_FRAME * 4);

/// Writes all of `bufs` (in order) to the socket, attaching `fds` to the
/// first byte. Handles partial writes, `EINTR` and `EAGAIN`. Returns the
/// number of `sendmsg` calls it took.
pub(super) fn send_all(fd: BorrowedFd<'_>, bufs: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<u64> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS_PER_FRAME} fds ride on one frame"),
        ));
    }
    let mut iov: [libc::iovec; 3] = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; 3];
    assert!(bufs.len() <= iov.len(), "at most three slices per write");
    let mut n_iov = 0;
    for b in bufs.iter().filter(|b| !b.is_empty()) {
        iov[n_iov] = libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        };
        n_iov += 1;
    }
    let mut first = 0usize;
    let mut cmsg: CmsgBuf = [0; CMSG_WORDS];
    let mut fds_pending = !fds.is_empty();
    let mut calls = 0u64;
    while first < n_iov {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = iov[first..].as_mut_ptr();
        msg.msg_iovlen = (n_iov - first) as _;
        if fds_pending {
            let payload = (fds.len() * mem::size_of::<RawFd>()) as libc::c_uint;
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
            // (Checked, not assumed: the writes below rely on it.)
            if space > mem::size_of::<CmsgBuf>() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the fds do not fit in the control buffer",
                ));
            }
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `cmsg`, which is at least
            // `space` bytes (checked above) and aligned for cmsghdr;
            // CMSG_FIRSTHDR only reads msg's control fields.
            let hdr = unsafe { libc::CMSG_FIRSTHDR(&msg) };
            if hdr.is_null() {
                return Err(io::Error::other("no room for a control message header"));
            }
            // SAFETY: `hdr` is non-null (checked above) and points at the
            // start of `cmsg`, which holds at least one header (`space` is
            // at least CMSG_SPACE(0)); we own `cmsg` exclusively here.
            unsafe {
                (*hdr).cmsg_level = libc::SOL_SOCKET;
                (*hdr).cmsg_type = libc::SCM_RIGHTS;
                (*hdr).cmsg_len = libc::CMSG_LEN(payload) as _;
            }
            // SAFETY: CMSG_DATA of a header inside `cmsg` points at its
            // payload, which has room for `fds.len()` ints (CMSG_SPACE above).
            let data = unsafe { libc::CMSG_DATA(hdr) } as *mut RawFd;
            for (i, f) in fds.iter().enumerate() {
                // SAFETY: `i < fds.len()`, within the payload; unaligned
                // writes are allowed for any address.
                unsafe { ptr::write_unaligned(data.add(i), f.as_raw_fd()) };
            }
        }
        // `msg` describes valid iovecs over live slices and a valid control
        // buffer; MSG_NOSIGNAL turns a closed peer into EPIPE, not SIGPIPE.
        match syscall!(sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)) {
            Ok(mut n) => {
                calls += 1;
                fds_pending = false;
                // Skip what was written.
                while n > 0 && first < n_iov {
                    let len = iov[first].iov_len as isize;
                    if n >= len {
                        n -= len;
                        first += 1;
                    } else {
                        // SAFETY: `n < iov_len`, so the advanced pointer stays
                        // inside the same slice.
                        iov[first].iov_base = unsafe { iov[first].iov_base.cast::<u8>().offset(n) }.cast();
                        iov[first].iov_len -= n as usize;
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sys::poll_writable(fd, None)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(calls)
}

/// Writes as much of `buf` as the socket takes now, without blocking.
/// `Ok(0)` for a non-empty `buf` means the socket is full.
pub(super) fn send_nonblocking(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // `buf` is a live slice of the given length; MSG_NOSIGNAL turns a
        // closed peer into EPIPE.
        match syscall!(send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
        )) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// Reads what is available without blocking into the spare capacity of
/// `buf` (at most `max` bytes), queueing any fds that arrive with it.
pub(super) fn recv_nonblocking(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<ReadOutcome> {
    let spare = buf.spare_capacity_mut();
    let n = max.min(spare.len());
    let spare = &mut spare[..n];
    debug_assert!(!spare.is_empty());
    let mut iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    let mut cmsg: CmsgBuf = [0; CMSG_WORDS];
    loop {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of::<CmsgBuf>() as _;
        // `msg` points at the spare capacity of `buf` (writable, uninit is
        // fine for the kernel) and at `cmsg`.
        let res = syscall!(recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC
        ));
        match res {
            Ok(n) => {
                let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
                collect_fds(&msg, fds);
                if truncated {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "file descriptors sent with a frame were cut off: the peer attached more than a \
                         frame may carry, or this process is at its open-file limit (RLIMIT_NOFILE)",
                    ));
                }
                if n == 0 {
                    return Ok(ReadOutcome::Eof);
                }
                let n = n as usize;
                // SAFETY: the kernel initialised the first `n` bytes of the
                // spare capacity, and `n <= spare.len()`.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(ReadOutcome::Data(n));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) => return Err(e),
        }
    }
}

/// Wraps every fd in `msg`'s `SCM_RIGHTS` control messages into an
/// [`OwnedFd`] so none leaks, whatever happens next.
fn collect_fds(msg: &libc::msghdr, out: &mut VecDeque<OwnedFd>) {
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR reads only its
    // control fields.
    let mut hdr = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !hdr.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/NXTHDR lies within
        // the control buffer the kernel filled.
        let h = unsafe { &*hdr };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let base = unsafe { libc::CMSG_LEN(0) } as usize;
            let n = (h.cmsg_len as usize).saturating_sub(base) / mem::size_of::<RawFd>();
            // SAFETY: the payload of this header holds `n` ints.
            let data = unsafe { libc::CMSG_DATA(hdr) } as *const RawFd;
            for i in 0..n {
                // SAFETY: `i < n`, inside the payload; read unaligned.
                let raw = unsafe { ptr::read_unaligned(data.add(i)) };
                // SAFETY: the kernel just installed `raw` in our table for
                // us; nothing else owns it.
                out.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `msg` and `hdr` come from the same filled buffer.
        hdr = unsafe { libc::CMSG_NXTHDR(msg, hdr) };
    }
}
