//! Connected pairs of ports that move: to a thread, to a child process,
//! or over another connection; connected, each end sends and receives
//! typed messages.
//!
//! [`open`] makes two connected [`Port`]s. A `Port` is a plain owned value:
//! *move* it to a thread, [`pass_to`](Port::pass_to) a child process (which
//! takes it with [`Port::from_env`]), or send it over an existing
//! connection with [`Ipc::send_port`]. Once connected ([`Port::connect`]) or
//! transferred, the `Port` value is gone: "detached" is a compile-time fact.
//!
//! ```
//! # extern crate portpool_runtime as portpool;
//! use portpool::port;
//!
//! let (a, b) = port::open()?;
//! let peer = std::thread::spawn(move || -> std::io::Result<()> {
//!     let mut b = b.connect()?;
//!     let n: u32 = b.recv()?;
//!     b.send(&(n + 1))?;
//!     Ok(())
//! });
//! let mut a = a.connect()?;
//! a.send(&41u32)?;
//! assert_eq!(a.recv::<u32>()?, 42);
//! peer.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! For request/reply and picking messages, put a [`Link`](crate::link::Link)
//! on the connection; for jobs, use a [`Pool`](crate::pool::Pool).

#[cfg(target_os = "linux")]
mod buffer;
mod ipc;
mod poll;
mod receiver;
pub(crate) mod shared;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use crate::frame::Role;

/// The sentence a `Buffer` left on this thread when it refused to encode
/// or decode, if postcard's error `e` is that refusal (postcard keeps only
/// "custom error"). Taken: the next failure starts clean.
pub(crate) fn buffer_refusal(e: &postcard::Error) -> Option<String> {
    if !matches!(
        e,
        postcard::Error::SerdeSerCustom | postcard::Error::SerdeDeCustom
    ) {
        return None;
    }
    #[cfg(target_os = "linux")]
    return buffer::take_refusal();
    #[cfg(not(target_os = "linux"))]
    None
}

// The buffer scopes (see `buffer.rs`): used straight from there on
// Linux (no call in between on a job's path), and as no-ops elsewhere.
#[cfg(target_os = "linux")]
pub use buffer::{Buffer, MAX_BUFFERS_PER_MESSAGE, MAX_RECEIVED_BUFFER, MAX_RECEIVED_TOTAL};
#[cfg(target_os = "linux")]
pub(crate) use buffer::{
    checking as checking_buffers, collected as buffers_collected, collecting as collecting_buffers,
    outside as outside_buffers, providing as with_received_fds, uncollect as uncollect_buffers,
};
#[cfg(not(target_os = "linux"))]
pub(crate) use no_buffers::*;

/// Without `Buffer` (not Linux) the scopes only run what they are given.
#[cfg(not(target_os = "linux"))]
mod no_buffers {
    use std::os::fd::OwnedFd;

    pub(crate) fn checking_buffers<R>(check: impl FnOnce() -> R) -> R {
        check()
    }

    pub(crate) fn outside_buffers<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    pub(crate) fn collecting_buffers<R>(encode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
        (encode(), Vec::new())
    }

    pub(crate) fn with_received_fds<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
        drop(fds);
        decode()
    }

    pub(crate) fn buffers_collected() -> usize {
        0
    }

    pub(crate) fn uncollect_buffers(_keep: usize) {}
}
pub(crate) use ipc::encode_into;
pub use ipc::{Ipc, IpcReceiver, IpcSender, SendPortError};

use crate::error::HandshakeError;
use crate::frame;
use crate::sys;
use crate::transport::{self, Wait};

/// Environment variable through which a child finds the port its parent
/// passed it: `socket:<fd>@<parent pid>` or
/// `pipes:<incoming fd>,<outgoing fd>@<parent pid>`. The parent's pid stops
/// a grandchild that merely inherited the environment from taking an fd
/// number that means something else in it. A worker started through a
/// [launcher](crate::launch) gets `stdio:<its own pid>`: its port is its
/// stdin and stdout, and once it takes them, stdin reads `/dev/null` and
/// stdout writes to stderr.
pub const PORT_ENV: &str = "PORTPOOL_PORT";

/// Default time [`Port::connect`] waits for the peer's hello.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One end of a port pair, not yet connected: a socket, or a pair of pipes.
pub struct Port {
    fds: PortFds,
}

enum PortFds {
    Socket(OwnedFd),
    Pipes { incoming: OwnedFd, outgoing: OwnedFd },
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fds {
            PortFds::Socket(fd) => f.debug_struct("Port").field("socket", &fd.as_raw_fd()).finish(),
            PortFds::Pipes { incoming, outgoing } => f
                .debug_struct("Port")
                .field("incoming", &incoming.as_raw_fd())
                .field("outgoing", &outgoing.as_raw_fd())
                .finish(),
        }
    }
}

/// Opens a port pair over a Unix socket pair (close-on-exec): the default,
/// and the only flavor that can carry other ports.
pub fn open() -> io::Result<(Port, Port)> {
    let (a, b) = sys::socketpair()?;
    Ok((Port::from_socket(a), Port::from_socket(b)))
}

/// Opens a port pair over two pipes (close-on-exec), as used for workers
/// launched with their stdio as the port. Cannot carry other ports.
pub fn open_pipes() -> io::Result<(Port, Port)> {
    let (a_in, b_out) = sys::pipe()?;
    let (b_in, a_out) = sys::pipe()?;
    Ok((Port::from_fds(a_in, a_out), Port::from_fds(b_in, b_out)))
}

/// How [`Port::connect_with`] sets up a connection.
#[derive(Debug, Clone, Copy)]
#[must_use = "options do nothing until given to `Port::connect_with`"]
pub struct ConnectOptions {
    /// The role announced in our hello.
    pub role: Role,
    /// How long to wait for the peer's hello.
    pub timeout: Duration,
    /// Largest payload accepted and sent (default 256 MiB).
    pub max_frame_len: usize,
    /// How long a blocked receive spins before sleeping.
    pub spin: Duration,
    /// The codec announced in our hello; the peer must announce the same
    /// (default postcard; JSON for a [`Link`](crate::link::Link) with a
    /// peer in another language).
    pub codec: frame::Codec,
    /// Move the connection to shared memory when the peer can too (Linux,
    /// socket ports; see [`crate::transport`], "A shared-memory
    /// connection"). Off by default for a plain port, since its fd
    /// ([`std::os::fd::AsFd`]) then stops telling when a message
    /// waits; on when the environment says `PORTPOOL_TRANSPORT=shm`.
    /// Pools, links, subprocesses and services turn it on; the environment
    /// variable `PORTPOOL_TRANSPORT=socket` turns it off everywhere.
    pub shared_memory: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            role: Role::Peer,
            timeout: DEFAULT_CONNECT_TIMEOUT,
            max_frame_len: frame::DEFAULT_MAX_FRAME,
            spin: transport::DEFAULT_SPIN,
            codec: frame::Codec::Postcard,
            shared_memory: transport_env() == Some(false),
        }
    }
}

/// The environment variable that, set to `socket`, keeps every connection
/// of this process (and of the workers it starts) on its socket.
pub const TRANSPORT_ENV: &str = "PORTPOOL_TRANSPORT";

/// Whether this process may move connections to shared memory.
fn shared_memory_allowed() -> bool {
    cfg!(target_os = "linux") && transport_env() != Some(true)
}

/// What `PORTPOOL_TRANSPORT` says: `Some(true)` socket only, `Some(false)`
/// shared memory for plain ports too, `None` unset. A value it does not
/// know is said once in the log (warn) and ignored.
fn transport_env() -> Option<bool> {
    let v = std::env::var_os(TRANSPORT_ENV)?;
    match v.to_str().map(str::to_ascii_lowercase).as_deref() {
        Some("socket") => Some(true),
        Some("shm") => Some(false),
        _ => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                log::warn!("{TRANSPORT_ENV}={v:?} is neither \"socket\" nor \"shm\"; ignored");
            }
            None
        }
    }
}

/// A number that differs between two connecting processes (it picks who
/// makes a shared segment between equals).
fn hello_nonce() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u16
}

/// Set once the environment's port has been taken, so two `Port`s never
/// own the same fd.
static ENV_PORT_TAKEN: AtomicBool = AtomicBool::new(false);

/// Whether [`Port::from_env`] has given out this process's port.
pub(crate) fn env_port_taken() -> bool {
    // Acquire: pairs with the swap in `from_env`.
    ENV_PORT_TAKEN.load(Ordering::Acquire)
}

impl Port {
    /// A port over one end of a connected stream socket.
    pub fn from_socket(fd: OwnedFd) -> Port {
        Port {
            fds: PortFds::Socket(fd),
        }
    }

    /// A port over two byte-stream fds: frames are read from `incoming` and
    /// written to `outgoing` (pipes, or any stream fds).
    pub fn from_fds(incoming: OwnedFd, outgoing: OwnedFd) -> Port {
        Port {
            fds: PortFds::Pipes { incoming, outgoing },
        }
    }

    /// The fd frames are read from.
    pub fn incoming_fd(&self) -> BorrowedFd<'_> {
        match &self.fds {
            PortFds::Socket(fd) => fd.as_fd(),
            PortFds::Pipes { incoming, .. } => incoming.as_fd(),
        }
    }

    /// The fd frames are written to (the same as `incoming_fd` for a socket).
    pub fn outgoing_fd(&self) -> BorrowedFd<'_> {
        match &self.fds {
            PortFds::Socket(fd) => fd.as_fd(),
            PortFds::Pipes { outgoing, .. } => outgoing.as_fd(),
        }
    }

    /// Whether this port is a socket (and so can carry other ports).
    pub fn is_socket(&self) -> bool {
        matches!(self.fds, PortFds::Socket(_))
    }

    /// Whether this process was given a port by its parent: [`PORT_ENV`]
    /// is set, and set by this process's parent (not inherited from further up).
    pub fn in_env() -> bool {
        std::env::var(PORT_ENV)
            .ok()
            .and_then(|v| parse_env(&v))
            .is_some_and(|(kind, _, pid)| pid == expected_pid(&kind))
    }

    /// Takes the port this process's parent passed with [`Port::pass_to`].
    ///
    /// Succeeds once per process; later calls fail with `AlreadyExists`.
    /// Fails with `NotFound` if no port was passed, and with `InvalidData`
    /// if [`PORT_ENV`] is malformed or names fds that are not open.
    pub fn from_env() -> io::Result<Port> {
        let value = std::env::var(PORT_ENV).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{PORT_ENV} is not set: this process was not given a port"),
            )
        })?;
        let (kind, fds, ppid) = parse_env(&value).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{PORT_ENV}={value:?} is not `socket:<fd>@<pid>`, `pipes:<fd>,<fd>@<pid>` or \
                     `stdio:<pid>`"
                ),
            )
        })?;
        let expected = expected_pid(&kind);
        if ppid != expected {
            let what = match kind {
                EnvKind::Stdio => format!(
                    "{PORT_ENV} names stdio for pid {ppid}, but this is pid {expected}: the variable \
                     was inherited, and no port was passed here"
                ),
                _ => format!(
                    "{PORT_ENV} was set by pid {ppid} for its own child, but this process's parent is \
                     pid {expected}: the variable was inherited, and no port was passed here"
                ),
            };
            return Err(io::Error::new(io::ErrorKind::NotFound, what));
        }
        // AcqRel: the swap is the single point that grants ownership of the
        // inherited fds; no other data is published through it.
        if ENV_PORT_TAKEN.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the port from the environment was already taken",
            ));
        }
        let adopt = |fd: RawFd| {
            sys::adopt_inherited_fd(fd).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{PORT_ENV} names fd {fd}, which is not usable here: {e}"),
                )
            })
        };
        match kind {
            EnvKind::Socket => {
                let fd = adopt(fds[0])?;
                if sys::fd_kind(fd.as_fd())? != sys::FdKind::Socket {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{PORT_ENV} names fd {} as a socket, but it is not one", fds[0]),
                    ));
                }
                Ok(Port::from_socket(fd))
            }
            EnvKind::Pipes => {
                let incoming = adopt(fds[0])?;
                let outgoing = adopt(fds[1])?;
                Ok(Port::from_fds(incoming, outgoing))
            }
            EnvKind::Stdio => {
                let (incoming, outgoing) = sys::take_stdio()?;
                Ok(Port::from_fds(incoming, outgoing))
            }
        }
    }

    /// Hands this port to the child that `command` will spawn.
    ///
    /// The child inherits exactly the port's fds (and its stdio): every
    /// other fd above 2 is closed at `exec`, whatever its flags. The child
    /// takes the port with [`Port::from_env`]. One port per command; spawn
    /// the command once.
    ///
    /// The parent's copies of the fds are owned by `command` until it is
    /// dropped. Drop `command` right after spawning: while it lives, this
    /// process holds the child's end and will not see EOF when the child
    /// exits ([`Port::spawn`] does that for you).
    pub fn pass_to(self, command: &mut Command) -> io::Result<()> {
        if command.get_envs().any(|(k, v)| k == PORT_ENV && v.is_some()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this command already carries a port",
            ));
        }
        let me = std::process::id();
        let (value, fds) = match self.fds {
            PortFds::Socket(fd) => (format!("socket:{}@{me}", fd.as_raw_fd()), vec![fd]),
            PortFds::Pipes { incoming, outgoing } => (
                format!("pipes:{},{}@{me}", incoming.as_raw_fd(), outgoing.as_raw_fd()),
                vec![incoming, outgoing],
            ),
        };
        command.env(PORT_ENV, value);
        sys::inherit_only(command, fds);
        Ok(())
    }

    /// Passes this port to `command`'s child, spawns it, and closes the
    /// parent's copies of the port at once.
    pub fn spawn(self, mut command: Command) -> io::Result<std::process::Child> {
        self.pass_to(&mut command)?;
        let child = command.spawn();
        drop(command);
        child
    }

    /// Connects with default options: sends our hello and waits (up to
    /// [`DEFAULT_CONNECT_TIMEOUT`]) for the peer's, failing with a
    /// [`HandshakeError`] (inside the `io::Error`) if the peer is not a
    /// portpool port or speaks another protocol version.
    ///
    /// Both ends must connect at about the same time from different
    /// threads or processes: each waits for the other's hello.
    pub fn connect(self) -> io::Result<Ipc> {
        self.connect_with(ConnectOptions::default())
    }

    /// Connects with the given options (see [`Port::connect`]).
    pub fn connect_with(self, opts: ConnectOptions) -> io::Result<Ipc> {
        let on_socket = matches!(self.fds, PortFds::Socket(_));
        let (mut reader, mut writer) = match self.fds {
            PortFds::Socket(fd) => transport::over_socket(fd),
            PortFds::Pipes { incoming, outgoing } => transport::over_pipes(incoming, outgoing),
        };
        reader.set_max_frame_len(opts.max_frame_len);
        reader.set_spin(opts.spin);
        writer.set_max_frame_len(opts.max_frame_len);
        // A peer that already said hello and exited (it may have sent its
        // last messages too) refuses our hello with EPIPE. That is not yet a
        // failure: its hello and messages are still ours to read, and the
        // writer stays marked disconnected for later sends.
        let deadline = std::time::Instant::now().checked_add(opts.timeout);
        let mut ours = frame::Hello::with_codec(opts.role, opts.codec);
        ours.shared_memory = opts.shared_memory && on_socket && shared_memory_allowed();
        // Zero unless it matters: a peer built before the flags existed
        // refuses a hello whose bytes 12..16 are not zero.
        if ours.shared_memory {
            ours.nonce = hello_nonce();
        }
        match writer.write_raw(&ours.encode()) {
            Ok(()) | Err(crate::error::SendError::Disconnected) => {}
            Err(other) => return Err(other.into()),
        }
        let mut hello = [0u8; frame::HELLO_LEN];
        match reader.read_exact_raw(&mut hello, Wait::timeout(opts.timeout)) {
            Ok(true) => {}
            Ok(false) => return Err(HandshakeError::Timeout.into_io()),
            Err(e) if e.is_disconnected() => return Err(HandshakeError::Disconnected.into_io()),
            Err(e) => return Err(e.into()),
        }
        let peer = frame::Hello::decode(&hello).map_err(|e| HandshakeError::Hello(e).into_io())?;
        if peer.codec != opts.codec {
            let e = frame::HelloError::CodecMismatch {
                ours: opts.codec,
                theirs: peer.codec,
            };
            return Err(HandshakeError::Hello(e).into_io());
        }
        if let Some(create) = ours.shared_memory_maker(&peer) {
            // Both can: the maker offers a segment, the other accepts it or
            // says why not; either way both know where the bytes go next.
            let deadline = deadline.unwrap_or_else(|| std::time::Instant::now() + DEFAULT_CONNECT_TIMEOUT);
            if transport::upgrade_to_shm(&mut reader, &mut writer, create, deadline)? {
                log::debug!("connection moved to shared memory (this side made it: {create})");
            }
        }
        Ok(Ipc::new(reader, writer, peer))
    }

    /// The flavor byte and the fds that carry this port over `SCM_RIGHTS`.
    pub(crate) fn fds_for_sending(&self) -> (u8, Vec<BorrowedFd<'_>>) {
        match &self.fds {
            PortFds::Socket(fd) => (frame::PORT_FLAVOR_SOCKET, vec![fd.as_fd()]),
            PortFds::Pipes { incoming, outgoing } => {
                (frame::PORT_FLAVOR_PIPES, vec![incoming.as_fd(), outgoing.as_fd()])
            }
        }
    }

    pub(crate) fn from_received(flavor: u8, mut fds: Vec<OwnedFd>) -> Option<Port> {
        match (flavor, fds.len()) {
            (frame::PORT_FLAVOR_SOCKET, 1) => fds.pop().map(Port::from_socket),
            (frame::PORT_FLAVOR_PIPES, 2) => {
                let outgoing = fds.pop()?;
                let incoming = fds.pop()?;
                Some(Port::from_fds(incoming, outgoing))
            }
            _ => None,
        }
    }
}

enum EnvKind {
    Socket,
    Pipes,
    /// Stdin and stdout, given by a launcher (ssh, srun, a command prefix)
    /// that started this very process: `stdio:<pid>` names its own pid
    /// (the launcher's shell `exec`s it), so a child that inherits the
    /// variable is not fooled.
    Stdio,
}

/// The pid a [`PORT_ENV`] of this kind must name: the parent that passed
/// the fds, or, for stdio, this process.
fn expected_pid(kind: &EnvKind) -> u32 {
    match kind {
        EnvKind::Stdio => std::process::id(),
        EnvKind::Socket | EnvKind::Pipes => std::os::unix::process::parent_id(),
    }
}

/// Parses [`PORT_ENV`]: the kind, the fds, and the pid it names.
fn parse_env(value: &str) -> Option<(EnvKind, [RawFd; 2], u32)> {
    if let Some(pid) = value.strip_prefix("stdio:") {
        let pid: u32 = pid.parse().ok()?;
        return Some((EnvKind::Stdio, [0, 1], pid));
    }
    let (value, ppid) = value.rsplit_once('@')?;
    let ppid: u32 = ppid.parse().ok()?;
    if let Some(fd) = value.strip_prefix("socket:") {
        let fd: RawFd = fd.parse().ok()?;
        return (fd >= 0).then_some((EnvKind::Socket, [fd, fd], ppid));
    }
    let (a, b) = value.strip_prefix("pipes:")?.split_once(',')?;
    let (a, b): (RawFd, RawFd) = (a.parse().ok()?, b.parse().ok()?);
    (a >= 0 && b >= 0 && a != b).then_some((EnvKind::Pipes, [a, b], ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_value_parsing_rejects_nonsense() {
        assert!(matches!(
            parse_env("socket:5@42"),
            Some((EnvKind::Socket, [5, 5], 42))
        ));
        assert!(matches!(
            parse_env("pipes:5,6@7"),
            Some((EnvKind::Pipes, [5, 6], 7))
        ));
        assert!(matches!(
            parse_env("stdio:42"),
            Some((EnvKind::Stdio, [0, 1], 42))
        ));
        for bad in [
            "",
            "socket:",
            "socket:5",
            "socket:-1@1",
            "socket:x@1",
            "pipes:5@1",
            "pipes:5,5@1",
            "tcp:1@1",
            "socket:5@",
            "stdio:",
            "stdio:x",
            "stdio:1@2",
        ] {
            assert!(parse_env(bad).is_none(), "{bad}");
        }
    }
}
