//! The per-job cell and the untyped outcome: what every party that may
//! end a job (a worker's answer, its death, a timer, a cancel, the
//! shutdown) shares, without the job's types.
//!
//! - [`JobState`]: a cancel flag, a "dispatched" flag and the one-shot
//!   settle latch (scenario "one outcome" in `supervisor/README.md`).
//! - [`Failure`]: an outcome that is not the handler's own result.
//! - [`Outcome`], [`Event`] and [`Reply`]: how a finished job's result
//!   travels back to its ticket or map.
//!
//! - [`Inbox`] (module `mailbox`): where a ticket's or map's events wait.
//!
//! Not for: typed results (the job layer turns these into `JobError<E>`)
//! or deciding who settles (the pool and the supervisor do).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod mailbox;

pub(crate) use mailbox::{Empty, Inbox, Reply};

/// How a finished job's result travels back, without its types.
pub(crate) enum Outcome {
    /// `Box<Result<J::Output, J::Error>>` from a thread worker.
    Value(Box<dyn Any + Send>),
    /// postcard bytes of `Result<J::Output, J::Error>` from a process worker.
    Bytes(Vec<u8>),
    /// The same, with the files of the `Buffer`s in it.
    BytesFds(Vec<u8>, Vec<std::os::fd::OwnedFd>),
    /// A result from a worker that speaks JSON (`proto::json`).
    Json(JsonResult),
    /// A chunk's answer from a JSON worker: how long it ran (ns), and each
    /// job's result or failure.
    JsonChunk(u64, Vec<Result<JsonResult, Failure>>),
    /// A chunk's answer from a JSON worker whose every job succeeded: how
    /// long it ran (ns), and the JSON array of the outputs.
    JsonOk(u64, Vec<u8>),
    /// Anything else.
    Failed(Failure),
}

/// A job's result from a JSON worker, still as JSON text: its output, or
/// (`err`) the handler's error, decoded as the job's types by its ticket.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct JsonResult {
    pub(crate) err: bool,
    pub(crate) json: Vec<u8>,
}

/// A progress message's bytes: postcard, or JSON from a JSON worker.
pub(crate) struct Progress {
    pub(crate) json: bool,
    pub(crate) bytes: Vec<u8>,
}

/// What a job's submitter hears.
pub(crate) enum Event {
    /// A progress message.
    Progress(Progress),
    /// The job's one outcome.
    Done(Outcome),
}

/// A process worker whose port a ticket's own thread may read while it
/// waits for its job (ARCHITECTURE.md, "a lone job's waiter reads its
/// answer").
pub(crate) trait FastRead: Send + Sync {
    /// Reads the port, handling what comes, until `job` is settled (its
    /// outcome is then in its mailbox, or about to be, from whoever settled
    /// it) or `deadline` passes, or until reading here stops making sense;
    /// the caller then takes its events from the mailbox as usual.
    fn read_for(&self, job: &JobState, deadline: Option<Instant>);
}

/// A submitted job's shared state: its cancellation flag, whether it was
/// taken from the queue, and who settled its one outcome.
#[derive(Default)]
pub(crate) struct JobState {
    cancelled: AtomicBool,
    dispatched: AtomicBool,
    /// It started on its worker (a thread took it; a process worker holds
    /// no job sent before it). Kept for jobs with a clock: a process job
    /// without a run timeout or a queue-wait deadline is never marked.
    started: AtomicBool,
    /// A queue-wait deadline watches it (told to the monitor at submit).
    watched: AtomicBool,
    settled: AtomicU8,
    /// The process worker that holds this job as its only one, if so
    /// (weak: a ticket kept after its worker ended must not keep the
    /// worker's port open).
    fast: std::sync::OnceLock<std::sync::Weak<dyn FastRead>>,
    /// Its route's metrics index plus one (0: none kept).
    route: AtomicU16,
    /// Pools that keep metrics: when it was submitted, then (once a
    /// worker took it) when it started, as the pool's clock counts (0:
    /// none).
    clock: AtomicU64,
}

impl fmt::Debug for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobState")
            .field("cancelled", &self.is_cancelled())
            .field("settled", &self.is_settled())
            .finish_non_exhaustive()
    }
}

const OPEN: u8 = 0;
const SETTLED: u8 = 1;
const SETTLED_BY_CANCEL: u8 = 2;

impl JobState {
    pub(crate) fn new() -> Arc<JobState> {
        Arc::new(JobState::default())
    }

    /// Records the index of the job's route metrics (the pool's
    /// `Metrics::index`).
    pub(crate) fn set_route(&self, i: u16) {
        // Relaxed: set before the job is shared with any other thread.
        self.route.store(i.saturating_add(1), Ordering::Relaxed);
    }

    /// Sets the job's metrics clock (see `clock`).
    pub(crate) fn set_clock(&self, at: u64) {
        // Relaxed: read by the worker that took the job, after the queue
        // (or the port's pending map) handed it over, which orders it.
        self.clock.store(at, Ordering::Relaxed);
    }

    /// The job's metrics clock.
    pub(crate) fn clock(&self) -> u64 {
        // Relaxed: see `set_clock`.
        self.clock.load(Ordering::Relaxed)
    }

    /// The index of the job's route metrics, if kept.
    pub(crate) fn route(&self) -> Option<u16> {
        // Relaxed: see `set_route`.
        self.route.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Records the process worker that holds this job alone.
    pub(crate) fn set_fast_reader(&self, w: std::sync::Weak<dyn FastRead>) {
        let _ = self.fast.set(w);
    }

    /// The process worker that held this job alone when it was dispatched,
    /// if it is still there.
    pub(crate) fn fast_reader(&self) -> Option<Arc<dyn FastRead>> {
        self.fast.get().and_then(std::sync::Weak::upgrade)
    }

    /// Sets the cancellation flag a running handler polls.
    pub(crate) fn cancel(&self) {
        // Release: pairs with the Acquire load in `is_cancelled`.
        self.cancelled.store(true, Ordering::Release);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the Release store in `cancel`.
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the job as taken from the queue by a worker.
    pub(crate) fn mark_dispatched(&self) {
        // Release/Acquire: only this flag is communicated.
        self.dispatched.store(true, Ordering::Release);
    }

    pub(crate) fn is_dispatched(&self) -> bool {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Marks the job as started on its worker (its queue wait is over).
    pub(crate) fn mark_started(&self) {
        // Release/Acquire: only this flag is communicated.
        self.started.store(true, Ordering::Release);
    }

    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Records that a queue-wait deadline watches the job.
    pub(crate) fn mark_watched(&self) {
        // Relaxed: set before the job is queued, which publishes it.
        self.watched.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_watched(&self) -> bool {
        // Relaxed: see `mark_watched`.
        self.watched.load(Ordering::Relaxed)
    }

    /// Claims the right to deliver the job's outcome. Exactly one caller
    /// ever gets `true` (scenario "one outcome" in `supervisor/README.md`).
    pub(crate) fn settle(&self) -> bool {
        // AcqRel: the winner's outcome is the one the ticket sees.
        self.settled
            .compare_exchange(OPEN, SETTLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Claims the outcome for the ticket's own `cancel`: the ticket then
    /// reports `Cancelled` without waiting for the pool.
    pub(crate) fn settle_by_cancel(&self) -> bool {
        self.settled
            .compare_exchange(OPEN, SETTLED_BY_CANCEL, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire) != OPEN
    }

    pub(crate) fn settled_by_cancel(&self) -> bool {
        self.settled.load(Ordering::Acquire) == SETTLED_BY_CANCEL
    }
}

/// Which side of a process boundary a coding failure happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    /// In the supervisor (encoding a job, decoding a result).
    Supervisor,
    /// In the worker (decoding a job, encoding a result).
    Worker,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Supervisor => "supervisor",
            Side::Worker => "worker",
        })
    }
}

/// Which of a job's deadlines passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimeoutPhase {
    /// It waited in the queue past its queue-wait deadline and never ran.
    Queue,
    /// It ran past its run timeout, counted from when it started on a worker.
    Run,
}

/// An outcome that is not the handler's own result, without the job's
/// types: what the pool's plumbing carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Failure {
    Panicked(String),
    WorkerExited {
        worker: usize,
        pid: Option<u32>,
        status: Option<String>,
        stderr: Vec<String>,
    },
    TimedOut(TimeoutPhase, Duration),
    UnknownRoute(String),
    Codec(Side, String),
    Cancelled,
    Rejected(String),
}
