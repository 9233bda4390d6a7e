//! [`JobError`]: how a job ended when it did not end with its output.

use std::fmt;
use std::time::Duration;

use crate::task::{Failure, Side, TimeoutPhase};

/// How a job ended when it did not end with its output.
///
/// Its `Debug` is its `Display`: one sentence that says what happened to
/// the job and, where it helps, what to do. Match on the variants for the
/// details. Two errors compare equal when they say the same thing, so a
/// test can compare a result with the one it expects:
///
/// ```
/// # extern crate portpool_runtime as portpool;
/// use portpool::job::JobError;
/// let r: Result<u64, JobError<String>> = Err(JobError::Handler("too big".into()));
/// assert_eq!(r, Err(JobError::Handler("too big".to_string())));
/// assert_ne!(r, Err(JobError::Cancelled));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError<E> {
    /// The handler returned its own error.
    Handler(E),
    /// The handler panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The worker running the job exited before answering (it crashed,
    /// was killed, or exited). A job with retries left
    /// ([`PoolBuilder::retries`](crate::pool::PoolBuilder::retries),
    /// [`JobOptions::retries`](crate::pool::JobOptions::retries)) runs
    /// again on another worker instead; this is its error once it has
    /// none (by default a job has none).
    WorkerExited {
        /// The worker's id within its pool.
        worker: usize,
        /// Its process id (process workers).
        pid: Option<u32>,
        /// How it ended (exit code or signal), when known.
        status: Option<String>,
        /// The last lines the worker wrote to its stderr (oldest first, at
        /// most 20, each cut at 1000 bytes). A Rust backtrace's frames are
        /// left out, so they do not push out the lines that say what
        /// happened; they still reach this process's stderr with the rest
        /// (unless `forward_worker_stderr(false)`).
        stderr: Vec<String>,
    },
    /// The job ran out of time, waiting in the queue or running.
    TimedOut {
        /// Which deadline passed.
        phase: TimeoutPhase,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// No handler is registered for the job's route in the worker.
    UnknownRoute {
        /// The route name.
        route: String,
    },
    /// The job or its result could not be encoded or decoded.
    Codec {
        /// Where it failed.
        side: Side,
        /// What failed and why.
        reason: String,
    },
    /// The job was cancelled before it ran (or it returned after its
    /// cancellation without an output).
    Cancelled,
    /// The pool did not take the job (it is shutting down or failed).
    Rejected {
        /// Why.
        reason: String,
    },
}

impl<E: fmt::Debug + 'static> fmt::Display for JobError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Handler(e) => {
                // A string error (the common case) reads as itself, not
                // quoted and escaped as its Debug would.
                let any: &dyn std::any::Any = e;
                match (any.downcast_ref::<String>(), any.downcast_ref::<&'static str>()) {
                    (Some(s), _) => write!(f, "job failed: {s}"),
                    (_, Some(s)) => write!(f, "job failed: {s}"),
                    _ => write!(f, "job failed: {e:?}"),
                }
            }
            JobError::Panicked { message } => write!(f, "job panicked: {message}"),
            JobError::WorkerExited {
                worker,
                pid,
                status,
                stderr,
            } => {
                write!(f, "worker {worker}")?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                f.write_str(" exited before answering")?;
                if let Some(s) = status {
                    write!(f, ": {s}")?;
                }
                if let Some(last) = crate::stderr::last_meaningful(stderr) {
                    write!(f, "; its stderr ended with: {last}")?;
                }
                Ok(())
            }
            JobError::TimedOut { phase, after } => match phase {
                TimeoutPhase::Queue => write!(f, "job waited in the queue longer than {after:?}"),
                TimeoutPhase::Run => write!(f, "job ran longer than {after:?}"),
            },
            JobError::UnknownRoute { route } => write!(
                f,
                "no handler for route {route:?} in the worker: register its job type with \
                 Handlers::on (a jobs! function with Handlers::func) in the handlers the worker serves"
            ),
            JobError::Codec { side, reason } => write!(f, "coding error in the {side}: {reason}"),
            JobError::Cancelled => f.write_str("job was cancelled"),
            JobError::Rejected { reason } => write!(f, "job was rejected: {reason}"),
        }
    }
}

impl<E: fmt::Debug + 'static> fmt::Debug for JobError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<E: fmt::Debug + 'static> std::error::Error for JobError<E> {}

impl Failure {
    pub(crate) fn into_job_error<E>(self) -> JobError<E> {
        match self {
            Failure::Panicked(message) => JobError::Panicked { message },
            Failure::WorkerExited {
                worker,
                pid,
                status,
                stderr,
            } => JobError::WorkerExited {
                worker,
                pid,
                status,
                stderr,
            },
            Failure::TimedOut(phase, after) => JobError::TimedOut { phase, after },
            Failure::UnknownRoute(route) => JobError::UnknownRoute { route },
            Failure::Codec(side, reason) => JobError::Codec { side, reason },
            Failure::Cancelled => JobError::Cancelled,
            Failure::Rejected(reason) => JobError::Rejected { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)] // read through Debug only
    enum DiskError {
        Full { free: u64 },
    }

    #[test]
    fn a_string_error_reads_as_itself_and_others_as_their_debug() {
        assert_eq!(
            JobError::<String>::Handler("/x: No such file".into()).to_string(),
            "job failed: /x: No such file"
        );
        assert_eq!(
            JobError::<&'static str>::Handler("full").to_string(),
            "job failed: full"
        );
        assert_eq!(
            JobError::Handler(DiskError::Full { free: 0 }).to_string(),
            "job failed: Full { free: 0 }"
        );
    }
}
