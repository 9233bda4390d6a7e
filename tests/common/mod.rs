//! Shared test support: spawning the fixture worker and proving that no
//! child is left behind.
#![allow(dead_code, unused_macros, unused_imports)] // each test binary uses its own subset

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use portpool::port::{self, Ipc, Port};

/// Generous bound for any wait on an event in a test.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// The fixture worker binary, built by cargo for the integration tests.
pub(crate) fn fixture(mode: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portpool-fixture"));
    c.arg(mode);
    c
}

/// A fixture child that must be gone when the test ends.
pub(crate) struct Fixture {
    pub(crate) child: Child,
}

impl Fixture {
    /// Spawns `command` with `port` passed to it.
    pub(crate) fn spawn(command: Command, port: Port) -> Fixture {
        let child = port.spawn(command).expect("spawn fixture");
        Fixture { child }
    }

    /// Spawns a fixture in `mode` and connects to it.
    pub(crate) fn connected(mode: &str) -> (Fixture, Ipc) {
        Self::connected_with(fixture(mode))
    }

    /// Spawns a fixture in `mode` and connects to it over its socket
    /// whatever `PORTPOOL_TRANSPORT` says (for what only a socket gives:
    /// an fd that is readable when a message waits).
    #[allow(dead_code)] // not every test binary uses it
    pub(crate) fn connected_on_socket(mode: &str) -> (Fixture, Ipc) {
        let (ours, theirs) = port::open().expect("open");
        let f = Fixture::spawn(fixture(mode), theirs);
        let opts = port::ConnectOptions {
            shared_memory: false,
            ..port::ConnectOptions::default()
        };
        let ipc = ours.connect_with(opts).expect("connect to fixture");
        (f, ipc)
    }

    /// Spawns `command` and connects to it.
    pub(crate) fn connected_with(command: Command) -> (Fixture, Ipc) {
        let (ours, theirs) = port::open().expect("open");
        let f = Fixture::spawn(command, theirs);
        let ipc = ours.connect().expect("connect to fixture");
        (f, ipc)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the child to exit, and returns its status.
    pub(crate) fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("fixture {} did not exit within {BOUND:?}", self.child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to the child.
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped
        // (we hold the Child), so the pid is not reused.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    /// Waits for exit and asserts that the process is gone (reaped, not a
    /// zombie, not running).
    pub(crate) fn assert_gone(mut self) -> std::process::ExitStatus {
        let st = self.wait();
        assert_pid_gone(self.child.id());
        st
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failing test must not leave its child behind either.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asserts that no process with `pid` exists any more (not even a zombie).
pub(crate) fn assert_pid_gone(pid: u32) {
    let path = format!("/proc/{pid}/stat");
    if let Ok(stat) = std::fs::read_to_string(&path) {
        // The pid may have been reused by an unrelated process; only ours
        // (a child of this test process) counts.
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        assert_ne!(ppid, std::process::id(), "child {pid} is still alive: {stat}");
    }
}

/// Polls `cond` until it holds; panics with `what` (and the bound) if it
/// does not within [`BOUND`]. For states no event announces (a pool's
/// counters); a poll, not a timing: it never asserts how long it took.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (bounded) until `pid`, which need not be our child, has exited:
/// no such process, or a zombie its parent has yet to reap.
pub(crate) fn wait_pid_gone(pid: u32) {
    let deadline = Instant::now() + BOUND;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .map(String::from)
            });
        match state.as_deref() {
            None | Some("Z") | Some("X") => return,
            Some(_) if Instant::now() > deadline => panic!("process {pid} is still alive"),
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A path that does not exist yet, unique to this test (its own directory,
/// so one test's clean-up never races another's gate); removed with its
/// directory when dropped.
pub(crate) struct GatePath(pub(crate) std::path::PathBuf);

impl GatePath {
    pub(crate) fn new(name: &str) -> GatePath {
        let dir = std::env::temp_dir().join(format!("portpool-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the gate's directory");
        let p = dir.join("gate");
        let _ = std::fs::remove_file(&p);
        GatePath(p)
    }

    /// Creates the file: handlers waiting on this gate go on.
    pub(crate) fn open(&self) {
        std::fs::write(&self.0, b"open").expect("open the gate");
    }
}

impl Drop for GatePath {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One test body run twice, as `<name>::threads` and `<name>::processes`,
/// with the including file's `Backend` enum.
macro_rules! both {
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            use super::*;
            fn body($backend: Backend) $body
            #[test]
            fn threads() {
                body(Backend::Threads)
            }
            #[test]
            fn processes() {
                body(Backend::Processes)
            }
        }
    };
}
pub(crate) use both;
