//! Starting a child process with a port, and ending one: the one spawn
//! sequence that a pool's process workers, a `Service`'s process and a
//! `Subprocess` share (port, piped stderr followed into a tail, an own
//! process group if asked, the handshake; on failure a moment to exit,
//! then SIGKILL, reap and the stderr tail), and how an exit is described.
//!
//! Not for: what the child does once connected (the pool, the service and
//! the subprocess each speak to it in their own way).

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::port::{self, ConnectOptions, Ipc};
use crate::stderr::StderrTail;

/// Environment variable that tells a re-run executable it is worker N.
pub const WORKER_ID_ENV: &str = "PORTPOOL_WORKER_ID";

/// Environment variable that tells a worker its supervisor sends it a
/// second port, for a conversation beside its jobs
/// ([`PoolBuilder::worker_links`](crate::pool::PoolBuilder::worker_links)).
pub const WORKER_LINK_ENV: &str = "PORTPOOL_WORKER_LINK";

/// How long a child that failed before it served may take to exit on its
/// own (writing why to its stderr) before it is killed.
const FAIL_GRACE: Duration = Duration::from_millis(500);

/// A child that started and completed its handshake.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) stderr: Arc<StderrTail>,
    pub(crate) ipc: Ipc,
}

/// Why a child did not start.
pub(crate) enum StartError {
    /// No port, no process, or no stderr reader: nothing runs.
    Spawn(std::io::Error),
    /// It ran but did not complete its handshake; it has been reaped.
    Handshake {
        pid: u32,
        error: std::io::Error,
        /// "exit code 1", "signal 9 (SIGKILL)", or why it could not be waited for.
        status: String,
        /// Its exit status, if it could be reaped.
        exit: Option<ExitStatus>,
        stderr: Vec<String>,
    },
}

/// Gives `to` the variables set or removed on `from`, and its directory
/// (`Command` is not `Clone`).
pub(crate) fn copy_env_and_dir(from: &Command, to: &mut Command) {
    for (k, v) in from.get_envs() {
        match v {
            Some(v) => to.env(k, v),
            None => to.env_remove(k),
        };
    }
    if let Some(d) = from.get_current_dir() {
        to.current_dir(d);
    }
}

/// How the child gets its port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A socket it inherits ([`port::Port::pass_to`]).
    Inherit,
    /// Its stdin and stdout (a launcher such as ssh carries them on).
    Stdio,
}

/// Spawns `command` with a port (stderr piped and followed under
/// `label`, its lines passed on to ours with `forward_stderr`; a process
/// group of its own with `own_group`), and connects to it with `opts`.
pub(crate) fn start(
    mut command: Command,
    label: &str,
    own_group: bool,
    via: Via,
    opts: ConnectOptions,
    forward_stderr: bool,
) -> Result<Started, StartError> {
    // A child is a pool's worker only if its caller says so: this process
    // may itself be one, and its own worker variables must not make a
    // Subprocess or a Service of it look like a worker too.
    for var in [WORKER_ID_ENV, WORKER_LINK_ENV] {
        if !command.get_envs().any(|(k, _)| k == var) {
            command.env_remove(var);
        }
    }
    command.stderr(Stdio::piped());
    if own_group {
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
    }
    let (ours, mut child) = match via {
        Via::Inherit => {
            let (ours, theirs) = port::open().map_err(StartError::Spawn)?;
            (ours, theirs.spawn(command).map_err(StartError::Spawn)?)
        }
        Via::Stdio => {
            command.stdin(Stdio::piped()).stdout(Stdio::piped());
            let mut child = command.spawn().map_err(StartError::Spawn)?;
            match (child.stdout.take(), child.stdin.take()) {
                (Some(out), Some(inp)) => (port::Port::from_fds(out.into(), inp.into()), child),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(StartError::Spawn(std::io::Error::other(
                        "the child's stdio was not piped",
                    )));
                }
            }
        }
    };
    let pid = child.id();
    let stderr = match StderrTail::follow(&mut child, label, forward_stderr) {
        Ok(t) => t,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::Spawn(e));
        }
    };
    match ours.connect_with(opts) {
        Ok(ipc) => Ok(Started {
            child,
            pid,
            stderr,
            ipc,
        }),
        Err(error) => {
            let (exit, status) = end(child);
            Err(StartError::Handshake {
                pid,
                error,
                status,
                exit,
                stderr: stderr.wait_lines(),
            })
        }
    }
}

/// Ends a child that failed before it served: a moment to exit on its own
/// (with its reason on its stderr), then SIGKILL; reaps it. Returns how it
/// ended and its stderr tail.
pub(crate) fn give_up(child: Child, stderr: &StderrTail) -> (String, Vec<String>) {
    let (_, status) = end(child);
    (status, stderr.wait_lines())
}

/// [`give_up`] without the stderr: the exit status and its description.
fn end(mut child: Child) -> (Option<ExitStatus>, String) {
    match wait_or_kill(&mut child, FAIL_GRACE) {
        Ok((st, false)) => (Some(st), describe_status(st)),
        // Our own SIGKILL says nothing about the child: say who sent it.
        Ok((st, true)) => (
            Some(st),
            "still running after the failure, so the supervisor killed it".into(),
        ),
        Err(e) => (None, format!("could not be waited for: {e}")),
    }
}

/// Waits up to `grace` for `child` to exit, then kills it (SIGKILL) and
/// reaps it. Returns its status and whether it had to be killed.
pub(crate) fn wait_or_kill(child: &mut Child, grace: Duration) -> std::io::Result<(ExitStatus, bool)> {
    let deadline = Instant::now() + grace;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok((st, false));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait().map(|st| (st, true));
        }
        // An exiting child sends no event we can wait on here (no pidfd on
        // every kernel we support): poll its status, briefly.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// "exit code 3" or "signal 9 (SIGKILL)".
pub(crate) fn describe_status(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = st.code() {
        return format!("exit code {code}");
    }
    match st.signal() {
        Some(sig) => format!("signal {sig} ({})", signal_name(sig)),
        None => format!("{st}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}
