//! The pipe flavor: one pipe each way (for stdio-launched workers, or any
//! pair of byte-stream fds that are not a socket). Cannot pass fds.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::ReadOutcome;
use crate::sys::{self, syscall};

/// Writes all of `bufs` in order. Returns the number of `writev` calls.
pub(super) fn write_all(fd: BorrowedFd<'_>, bufs: &[&[u8]]) -> io::Result<u64> {
    let mut calls = 0u64;
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut first = 0usize;
    while first < iov.len() {
        let cnt = (iov.len() - first).min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // The iovecs describe live slices of `bufs`.
        match syscall!(writev(fd.as_raw_fd(), iov[first..].as_ptr(), cnt)) {
            Ok(mut n) => {
                calls += 1;
                while n > 0 && first < iov.len() {
                    let len = iov[first].iov_len as isize;
                    if n >= len {
                        n -= len;
                        first += 1;
                    } else {
                        // SAFETY: `n < iov_len`: the advanced pointer stays in
                        // the same slice.
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

/// Writes what `fd` takes now: on a non-blocking pipe part of `buf` (0
/// when it is full), on a blocking one all of it.
pub(super) fn write_some(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // `buf` is readable memory of the given length.
        match syscall!(write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len())) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// Reads what is available without blocking into the spare capacity of
/// `buf` (at most `max` bytes). The pipe's own blocking mode is left alone (it may be shared with
/// another process), so readiness is asked of `poll` first.
pub(super) fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<ReadOutcome> {
    if !sys::poll_readable(fd, Some(std::time::Duration::ZERO))? {
        return Ok(ReadOutcome::WouldBlock);
    }
    let spare = buf.spare_capacity_mut();
    let n = max.min(spare.len());
    let spare = &mut spare[..n];
    loop {
        // `spare` is writable memory of the given length.
        match syscall!(read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len())) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => {
                let n = n as usize;
                // SAFETY: read initialised the first `n` bytes of the spare
                // capacity, and `n <= spare.len()`.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(ReadOutcome::Data(n));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) => return Err(e),
        }
    }
}
