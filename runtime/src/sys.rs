//! The OS layer's small helpers: the one place where `-1`/errno becomes an
//! [`io::Error`], raw fds become [`OwnedFd`], and process-level calls
//! (fd inheritance for a child, parent-death signal) are made.
//!
//! Nothing above the transport and port modules calls libc directly.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Calls a libc function and turns a `-1` return into the thread's errno as
/// an [`io::Error`] (mio's `syscall!`).
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: every call site passes arguments that satisfy the libc
        // function's contract; each one says why just above the macro use.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

#[cfg(target_os = "linux")]
pub(crate) mod shm;

/// Creates a connected `AF_UNIX` stream socket pair, both ends close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair_of(libc::SOCK_STREAM)
}

/// Creates a connected `AF_UNIX` socket pair of type `kind` (stream or
/// datagram), both ends close-on-exec.
pub(crate) fn socketpair_of(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // `fds` is a valid out-array of two ints.
    syscall!(socketpair(
        libc::AF_UNIX,
        kind | libc::SOCK_CLOEXEC,
        0,
        fds.as_mut_ptr()
    ))?;
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody
    // else; wrapping them at once makes them close exactly once.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Creates a pipe, both ends close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // `fds` is a valid out-array of two ints.
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What an fd refers to, as far as the transport cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    Socket,
    Fifo,
    Other,
}

/// Reports what `fd` refers to.
pub(crate) fn fd_kind(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // `fd` is open (it is borrowed) and `st` is a valid out-pointer.
    syscall!(fstat(fd.as_raw_fd(), &mut st))?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => FdKind::Socket,
        libc::S_IFIFO => FdKind::Fifo,
        _ => FdKind::Other,
    })
}

/// Sets or clears close-on-exec on `fd`.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // F_GETFD/F_SETFD only touch the descriptor flags of `fd`.
    let flags = syscall!(fcntl(fd, libc::F_GETFD))?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    if new != flags {
        syscall!(fcntl(fd, libc::F_SETFD, new))?;
    }
    Ok(())
}

/// Takes ownership of an fd number inherited from a parent process, after
/// checking that it is open and marking it close-on-exec so it does not leak
/// further.
///
/// The caller guarantees that nothing else in this process owns `fd`
/// (`Port::from_env` takes the environment's port only once, and only when
/// the variable was set by this process's own parent, so an fd number
/// inherited in the environment from further up is never adopted).
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    set_cloexec(fd, true)?;
    // SAFETY: fcntl just succeeded on `fd`, so it is open; the caller
    // guarantees no other owner exists, so this OwnedFd closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` is readable (or hung up), or `timeout` passes.
/// `None` waits without limit. Returns whether it became ready.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    poll_one(fd, libc::POLLIN, timeout)
}

/// Waits until `fd` is writable (or hung up), or `timeout` passes.
pub(crate) fn poll_writable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    poll_one(fd, libc::POLLOUT, timeout)
}

/// Waits until `read` is readable or `write` is writable (or either hung
/// up); they may be the same fd (a socket). Returns `(readable, writable)`.
pub(crate) fn poll_read_or_write(read: BorrowedFd<'_>, write: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    let same = read.as_raw_fd() == write.as_raw_fd();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: read.as_raw_fd(),
                events: if same {
                    libc::POLLIN | libc::POLLOUT
                } else {
                    libc::POLLIN
                },
                revents: 0,
            },
            libc::pollfd {
                fd: write.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            },
        ];
        let count: libc::nfds_t = if same { 1 } else { 2 };
        // `fds` holds two valid pollfds and we pass a count of at most 2.
        match syscall!(poll(fds.as_mut_ptr(), count, -1)) {
            Ok(_) => {
                let used = &fds[..count as usize];
                if used.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                let hup = |p: &libc::pollfd| p.revents & (libc::POLLHUP | libc::POLLERR) != 0;
                let w = &used[used.len() - 1];
                return Ok((
                    used[0].revents & libc::POLLIN != 0 || hup(&used[0]),
                    w.revents & libc::POLLOUT != 0 || hup(w),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The timeout argument of `poll` for `deadline` (`-1`: none), rounded
/// up so that a 100 µs wait does not become a busy 0 ms poll.
pub(crate) fn poll_timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            left.as_micros().div_ceil(1000).min(libc::c_int::MAX as u128) as libc::c_int
        }
    }
}

fn poll_one(fd: BorrowedFd<'_>, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let ms = poll_timeout_ms(deadline);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // `pfd` is one valid pollfd and we pass a count of 1.
        match syscall!(poll(&mut pfd, 1, ms)) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => {
                if pfd.revents & libc::POLLNVAL != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Runs in a forked child before `exec` (from `Command::pre_exec`): makes
/// exactly `keep` inheritable and marks every other fd above stdio
/// close-on-exec, so the new program sees stdio and its port and nothing else.
///
/// Only async-signal-safe calls are made (close_range, fcntl, getrlimit).
pub(crate) fn restrict_inherited_fds(keep: &[RawFd]) -> io::Result<()> {
    let mut sorted = [RawFd::MAX; 2];
    let n = keep.len().min(2);
    sorted[..n].copy_from_slice(&keep[..n]);
    sorted[..n].sort_unstable();
    // Ranges between the kept fds: [3, k0-1], [k0+1, k1-1], [k1+1, max].
    let mut lo: RawFd = 3;
    for &k in sorted[..n].iter().chain(std::iter::once(&RawFd::MAX)) {
        if k >= lo {
            let hi = if k == RawFd::MAX { RawFd::MAX } else { k - 1 };
            if hi >= lo {
                cloexec_range(lo, hi)?;
            }
            lo = k.saturating_add(1);
        }
    }
    for &k in &keep[..n] {
        set_cloexec(k, false)?;
    }
    Ok(())
}

fn cloexec_range(lo: RawFd, hi: RawFd) -> io::Result<()> {
    // close_range(2) with CLOSE_RANGE_CLOEXEC (Linux 5.11+) marks the whole
    // range in one call. The range bounds are plain integers.
    let res = syscall!(syscall(
        libc::SYS_close_range,
        lo as libc::c_uint,
        hi as libc::c_uint,
        libc::CLOSE_RANGE_CLOEXEC as libc::c_uint
    ));
    match res {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            // Older kernels: walk the descriptor table up to the limit.
            // SAFETY: `rlimit` is plain old data; all-zero is a valid value.
            let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
            // `rl` is a valid out-pointer.
            syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut rl))?;
            let max = (rl.rlim_cur.min(1 << 20) as RawFd).min(hi.saturating_add(1));
            for fd in lo..max {
                match set_cloexec(fd, true) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBADF) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Asks the kernel to send `signal` to this process when the thread that
/// spawned it exits (Linux `PR_SET_PDEATHSIG`). A no-op elsewhere.
///
/// Returns `Ok(false)` when the parent is already gone (the caller should
/// exit), `Ok(true)` otherwise.
pub fn set_parent_death_signal(signal: i32) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getppid has no preconditions.
        let before = unsafe { libc::getppid() };
        // PR_SET_PDEATHSIG takes a signal number; the other args are unused.
        syscall!(prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0))?;
        // SAFETY: getppid has no preconditions.
        let after = unsafe { libc::getppid() };
        // If the parent died before prctl took effect we were reparented.
        Ok(before == after && after != 1)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = signal;
        Ok(true)
    }
}

/// [`set_parent_death_signal`] with SIGKILL: what a worker asks for, since
/// a worker whose supervisor is gone has nothing to finish.
pub fn set_parent_death_kill() -> io::Result<bool> {
    set_parent_death_signal(libc::SIGKILL)
}

/// Shuts down the write direction of a socket: the peer reads EOF once it
/// has read what was sent, even while this process keeps the fd open.
pub(crate) fn shutdown_write(fd: BorrowedFd<'_>) {
    // `fd` is open (borrowed). Failure (e.g. ENOTCONN after the peer left)
    // changes nothing for us, so it is ignored.
    let _ = syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_WR));
}

/// Shuts down the read direction of a socket: every reader of it, on any
/// fd, sees the end at once. Not a socket (a pipe): nothing happens.
pub(crate) fn shutdown_read(fd: BorrowedFd<'_>) {
    // `fd` is open (borrowed). ENOTSOCK (a pipe) or ENOTCONN change
    // nothing for us, so they are ignored.
    let _ = syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_RD));
}

/// Arranges for the child of `command` to inherit exactly `fds` (besides
/// stdio): in the forked child, just before `exec`, every other fd above 2
/// is marked close-on-exec and `fds` are made inheritable. `fds` stay open
/// in this process until `command` is dropped.
pub(crate) fn inherit_only(command: &mut std::process::Command, fds: Vec<OwnedFd>) {
    use std::os::unix::process::CommandExt;
    let mut keep = [-1 as RawFd; 2];
    let n = fds.len().min(2);
    for (slot, fd) in keep.iter_mut().zip(&fds) {
        *slot = fd.as_raw_fd();
    }
    let hook = move || {
        // Holding `fds` here keeps them open until the command is dropped.
        let _owned = &fds;
        restrict_inherited_fds(&keep[..n])
    };
    // SAFETY: the hook runs in the forked child before exec. It only makes
    // async-signal-safe calls (close_range, fcntl, getrlimit), takes no
    // locks and does not allocate.
    unsafe { command.pre_exec(hook) };
}

/// Sends `signal` to `child`. The caller must not have reaped it (no
/// successful `wait`/`try_wait`), so its pid cannot belong to another
/// process yet.
pub(crate) fn signal_child(child: &std::process::Child, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // kill(2) with the pid of our own unreaped child (see above).
    syscall!(kill(pid, signal))?;
    Ok(())
}

/// Takes this process's stdin and stdout as a port's two fds (a worker
/// started through a launcher): each is moved to a new close-on-exec fd
/// above 2, stdin becomes `/dev/null`, and stdout becomes a copy of
/// stderr, so that what a handler prints can no longer reach the stream.
/// Returns `(incoming, outgoing)`.
pub(crate) fn take_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let dup_above = |fd: RawFd| -> io::Result<OwnedFd> {
        // F_DUPFD_CLOEXEC on an fd of ours; no memory is passed.
        let new = syscall!(fcntl(fd, libc::F_DUPFD_CLOEXEC, 3))?;
        // SAFETY: fcntl just returned `new`, a fresh fd nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    };
    let incoming = dup_above(libc::STDIN_FILENO)?;
    let outgoing = dup_above(libc::STDOUT_FILENO)?;
    // Our copy of stdout's pipe is its only user in this process and was
    // exec'd into (no other process shares the open file): writes may be
    // non-blocking, so a worker can read jobs while its answers wait for
    // room (`Ipc::flush_reading`).
    set_nonblocking(outgoing.as_fd())?;
    let null = std::fs::File::open("/dev/null")?;
    // dup2 onto the standard fds: they stay open (now other files), so no
    // Rust owner of fd 0 or 1 sees a closed fd.
    syscall!(dup2(null.as_raw_fd(), libc::STDIN_FILENO))?;
    syscall!(dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO))?;
    Ok((incoming, outgoing))
}

/// Sets O_NONBLOCK on `fd`.
fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // F_GETFL/F_SETFL on an open fd; no memory is passed.
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    Ok(())
}

/// Blocks until the peer of either fd is gone: the read end of a pipe
/// whose writers all closed (POLLHUP), or the write end of a pipe whose
/// reader closed (POLLERR). Reads and writes nothing.
pub(crate) fn wait_hangup(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // Events 0: poll reports only hang-ups and errors, never data.
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: 0,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: 0,
                revents: 0,
            },
        ];
        // `fds` is an array of two valid pollfds and we pass a count of 2.
        match syscall!(poll(fds.as_mut_ptr(), 2, -1)) {
            Ok(0) => {}
            Ok(_) => {
                if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The resident memory of process `pid`, in bytes (`/proc/<pid>/statm`).
pub(crate) fn resident_bytes(pid: u32) -> io::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc statm"))?;
    Ok(pages.saturating_mul(page_size()))
}

/// The size of a memory page.
fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Makes the child that `command` spawns start with an address-space
/// limit of `bytes` (`RLIMIT_AS`): an allocation past it fails (a Rust
/// program then aborts, saying "memory allocation of N bytes failed").
pub(crate) fn limit_address_space(command: &mut std::process::Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    let hook = move || {
        // `lim` is a valid rlimit on this closure's stack.
        syscall!(setrlimit(libc::RLIMIT_AS, &lim))?;
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and makes one
    // async-signal-safe call (setrlimit); it takes no locks and does not
    // allocate.
    unsafe { command.pre_exec(hook) };
}
