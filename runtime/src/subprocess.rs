//! One child process to talk to and wait for: a [`Link`] to the child,
//! messages delivered to it first ([`SubprocessBuilder::ipc_input`]), and
//! at the end its exit status with every message it sent
//! ([`SubprocessOutput::ipc_output`]).
//!
//! ```no_run
//! # extern crate portpool_runtime as portpool;
//! use portpool::subprocess::Subprocess;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cmd = std::process::Command::new("my-child");
//! cmd.arg("--task");
//! let child = Subprocess::builder(cmd).ipc_input(vec!["lint".to_string()]).spawn()?;
//! child.send_message("and then build")?;              // the conversation API
//! let first: String = child.recv_message()?;
//! let out = child.wait()?;                            // exit status + every message
//! let all: Vec<String> = out.ipc_output();
//! # Ok(()) }
//! ```
//!
//! The child takes its end with [`Link::from_env`](crate::link::Link::from_env).

use std::fmt;
use std::ops::Deref;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::link::{Codec, Link, LinkError, Payload};
use crate::runtime::{RefCount, Runtime};
use crate::stderr::StderrTail;

type Input = Box<dyn FnOnce(&Link) -> Result<(), LinkError> + Send>;

/// Builds a [`Subprocess`] from a [`Command`].
#[must_use = "a builder does nothing until `.spawn()` is called"]
pub struct SubprocessBuilder {
    command: Command,
    input: Vec<Input>,
    codec: Codec,
    runtime: Option<Runtime>,
    quiet_stderr: bool,
}

impl fmt::Debug for SubprocessBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubprocessBuilder")
            .field("command", &self.command)
            .field("ipc_input", &self.input.len())
            .field("codec", &self.codec)
            .finish()
    }
}

impl SubprocessBuilder {
    /// Messages sent to the child before anything else .
    pub fn ipc_input<T: Serialize + Send + 'static>(mut self, messages: Vec<T>) -> Self {
        for m in messages {
            self.input.push(Box::new(move |l: &Link| l.send_message(&m)));
        }
        self
    }

    /// The codec of the conversation (default postcard; JSON for a child
    /// written in another language, see `docs/protocol.md`).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Whether the child's stderr is passed on to this process's stderr
    /// as it comes (default: yes). Either way its last lines are kept for
    /// [`SubprocessError::Failed`]'s `stderr`.
    pub fn forward_stderr(mut self, on: bool) -> Self {
        self.quiet_stderr = !on;
        self
    }

    /// The [`Runtime`] the subprocess belongs to (default
    /// [`Runtime::global`]); it keeps it alive until waited for, unless
    /// [`Subprocess::set_keep_alive`] says otherwise.
    pub fn runtime(mut self, rt: &Runtime) -> Self {
        self.runtime = Some(rt.clone());
        self
    }

    /// Starts the child with a port (its stderr is passed through, unless
    /// [`forward_stderr`](Self::forward_stderr) says not, and its last
    /// lines kept), connects, and sends the `ipc_input` messages.
    pub fn spawn(self) -> Result<Subprocess, SubprocessError> {
        let command = self.command;
        let program = command.get_program().to_string_lossy().into_owned();
        // (No process group of its own: like execa's child, a subprocess
        // belongs to its parent's terminal job.)
        let started = crate::child::start(
            command,
            &program,
            false,
            crate::child::Via::Inherit,
            crate::port::ConnectOptions {
                codec: self.codec,
                shared_memory: true,
                ..crate::port::ConnectOptions::default()
            },
            !self.quiet_stderr,
        );
        let (child, stderr, ipc) = match started {
            Ok(s) => (s.child, s.stderr, s.ipc),
            Err(crate::child::StartError::Spawn(e)) => {
                return Err(SubprocessError::Spawn(format!(
                    "could not start {program:?}: {e}"
                )));
            }
            Err(crate::child::StartError::Handshake {
                error, exit, stderr, ..
            }) => {
                return Err(SubprocessError::Failed {
                    status: exit,
                    reason: format!("{program:?} did not complete its handshake: {error}"),
                    ipc_output: Vec::new(),
                    stderr,
                });
            }
        };
        let mut link = Link::with_log(ipc, self.codec);
        // The subprocess's own ref stands for the link's.
        link.close_ref();
        for send in self.input {
            if let Err(e) = send(&link) {
                log::warn!("{program:?}: an ipc_input message was not sent: {e}");
            }
        }
        let rt = self.runtime.unwrap_or_else(|| Runtime::global().clone());
        Ok(Subprocess {
            child: Some(child),
            link,
            stderr,
            program,
            rt_ref: rt.new_ref(),
        })
    }
}

/// A running child process with a conversation to it. It dereferences to
/// its [`Link`]: `send_message`, `recv_message`, `messages`,
/// `send_message_strict`, `request`, `on_request` all work on it.
///
/// Dropping it without [`wait`](Self::wait) kills the child (SIGKILL) and
/// reaps it, so no zombie is left.
pub struct Subprocess {
    child: Option<Child>,
    link: Link,
    stderr: Arc<StderrTail>,
    program: String,
    rt_ref: RefCount,
}

impl fmt::Debug for Subprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subprocess")
            .field("program", &self.program)
            .field("pid", &self.id())
            .finish_non_exhaustive()
    }
}

impl Deref for Subprocess {
    type Target = Link;

    fn deref(&self) -> &Link {
        &self.link
    }
}

/// How a subprocess ended, with everything it sent.
#[derive(Debug, Clone)]
pub struct SubprocessOutput {
    /// Its exit status.
    pub status: ExitStatus,
    ipc: Vec<Payload>,
    /// The last lines it wrote to stderr.
    pub stderr: Vec<String>,
}

impl SubprocessOutput {
    /// Every message the child sent, in order, decoded as `T` (a message
    /// that does not decode as `T` is skipped). Messages taken with
    /// `recv_message` during the run are included.
    pub fn ipc_output<T: DeserializeOwned>(&self) -> Vec<T> {
        self.ipc.iter().filter_map(|p| p.decode_value().ok()).collect()
    }
}

/// Why a subprocess could not start, or how it failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubprocessError {
    /// It could not be started.
    Spawn(String),
    /// It exited unsuccessfully (or never completed its handshake).
    Failed {
        /// Its exit status, if it was reaped.
        status: Option<ExitStatus>,
        /// What went wrong, in words.
        reason: String,
        /// Every message it sent before failing.
        ipc_output: Vec<Payload>,
        /// The last lines it wrote to stderr.
        stderr: Vec<String>,
    },
}

impl SubprocessError {
    /// The messages a failed child sent, decoded as `T`.
    pub fn ipc_output<T: DeserializeOwned>(&self) -> Vec<T> {
        match self {
            SubprocessError::Failed { ipc_output, .. } => {
                ipc_output.iter().filter_map(|p| p.decode_value().ok()).collect()
            }
            SubprocessError::Spawn(_) => Vec::new(),
        }
    }
}

impl fmt::Display for SubprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubprocessError::Spawn(why) => f.write_str(why),
            SubprocessError::Failed {
                reason,
                ipc_output,
                stderr,
                ..
            } => {
                write!(f, "{reason}")?;
                if let Some(last) = stderr.last() {
                    write!(f, "; its stderr ended with: {last}")?;
                }
                if !ipc_output.is_empty() {
                    write!(f, "; it sent {} message(s)", ipc_output.len())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SubprocessError {}

impl Subprocess {
    /// Starts building a subprocess that runs `command`.
    pub fn builder(command: Command) -> SubprocessBuilder {
        SubprocessBuilder {
            command,
            input: Vec::new(),
            codec: Codec::Postcard,
            runtime: None,
            quiet_stderr: false,
        }
    }

    /// The child's process id.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The conversation with the child.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Sets whether this subprocess keeps its [`Runtime`]'s
    /// `run` from returning: `true` by default, `false` lets `run` return
    /// while it is alive (until it is waited for).
    pub fn set_keep_alive(&self, keep: bool) {
        self.rt_ref.set_keep_alive(keep);
    }

    /// Whether this subprocess keeps its runtime alive.
    pub fn keeps_alive(&self) -> bool {
        self.rt_ref.keeps_alive()
    }

    /// The old name of `set_keep_alive(true)`.
    #[deprecated(since = "0.1.0", note = "use `set_keep_alive(true)`")]
    pub fn ref_(&self) {
        self.set_keep_alive(true);
    }

    /// The old name of `set_keep_alive(false)`.
    #[deprecated(since = "0.1.0", note = "use `set_keep_alive(false)`")]
    pub fn unref(&self) {
        self.set_keep_alive(false);
    }

    /// The old name of [`keeps_alive`](Self::keeps_alive).
    #[deprecated(since = "0.1.0", note = "renamed `keeps_alive`")]
    pub fn has_ref(&self) -> bool {
        self.keeps_alive()
    }

    /// Closes this side of the conversation (the child reads EOF once it
    /// has read every message), waits for the child to exit and for the
    /// last of its messages; returns its status and every message it sent,
    /// or, if it failed, an error carrying the same and the tail of its
    /// stderr.
    pub fn wait(mut self) -> Result<SubprocessOutput, SubprocessError> {
        let Some(mut child) = self.child.take() else {
            return Err(SubprocessError::Spawn("already waited for".into()));
        };
        self.link.close_sending();
        let status = child.wait();
        // Its end of the port is closed now: the link sees EOF once it has
        // read every message.
        self.link.wait_closed();
        self.rt_ref.close();
        let ipc = self.link.received_raw();
        let stderr = self.stderr.wait_lines();
        match status {
            Ok(st) if st.success() => Ok(SubprocessOutput {
                status: st,
                ipc,
                stderr,
            }),
            Ok(st) => Err(SubprocessError::Failed {
                status: Some(st),
                reason: format!("{:?} failed: {}", self.program, crate::child::describe_status(st)),
                ipc_output: ipc,
                stderr,
            }),
            Err(e) => Err(SubprocessError::Failed {
                status: None,
                reason: format!("{:?} could not be waited for: {e}", self.program),
                ipc_output: ipc,
                stderr,
            }),
        }
    }
}

impl Drop for Subprocess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
