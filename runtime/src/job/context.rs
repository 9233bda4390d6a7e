//! What a handler gets besides its job: a [`Context`].

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::task::{Event, JobState, Reply};

/// The worker side of a process worker's port, as a running handler sees
/// it (the worker's serve loop implements it): cancels that arrived for a
/// job, and a way to send its progress.
pub(crate) trait RemoteJob: Send + Sync {
    /// Whether the supervisor cancelled job `id` (looks at the port now
    /// and then).
    fn is_cancelled(&self, id: u64) -> bool;
    /// Sends a progress message of job `id` to the supervisor.
    fn progress(&self, id: u64, payload: Vec<u8>);
}

/// Where a handler's progress messages go.
#[derive(Clone)]
pub(crate) enum ProgressSink {
    /// Straight to the submitter's channel (thread workers).
    Channel(Reply),
    /// To the process worker's supervisor, tagged with the job id.
    Remote(Arc<dyn RemoteJob>, u64),
    /// Nowhere: nobody listens (jobs of a `map`).
    Discard,
    /// Nowhere, but the context holds the chunk's reply until the thread
    /// worker takes it back (`into_parts`) to answer with.
    Held(Reply),
}

/// Where a handler learns that its job was cancelled.
#[derive(Clone)]
pub(crate) enum CancelSource {
    /// Not cancellable (a service call).
    Never,
    /// The job's own state (thread workers share it with the ticket).
    Flag(Arc<JobState>),
    /// A process worker: cancel frames arrive on the port while the handler runs.
    Remote(Arc<dyn RemoteJob>, u64),
}

/// What a handler gets besides its job: which worker runs it, whether the
/// job was cancelled, and a way to report progress to the submitter.
pub struct Context {
    worker_id: usize,
    cancel: CancelSource,
    progress: ProgressSink,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("worker_id", &self.worker_id)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(worker_id: usize, cancel: CancelSource, progress: ProgressSink) -> Context {
        Context {
            worker_id,
            cancel,
            progress,
        }
    }

    /// Its cancel source and progress sink back: a thread worker lends a
    /// job's state and reply to the handler's context this way instead of
    /// cloning them (each clone is an atomic on lines the job's waiter
    /// reads).
    pub(crate) fn into_parts(self) -> (CancelSource, ProgressSink) {
        (self.cancel, self.progress)
    }

    /// The id of the worker running this job (0-based within its pool).
    pub fn worker_id(&self) -> usize {
        self.worker_id
    }

    /// Whether this job was cancelled (by its ticket, by its run timeout or
    /// by an immediate shutdown). A handler doing long work should check
    /// this now and then and return early when it is set: past the pool's
    /// grace period a process worker that has not returned is killed, and a
    /// thread worker is abandoned.
    ///
    /// In a process worker this looks at the port for a cancel message
    /// (at most about once a millisecond), so it is cheap to call often.
    pub fn is_cancelled(&self) -> bool {
        match &self.cancel {
            CancelSource::Never => false,
            CancelSource::Flag(s) => s.is_cancelled(),
            CancelSource::Remote(w, id) => w.is_cancelled(*id),
        }
    }

    /// Sends a progress message to whoever holds this job's ticket. It
    /// arrives before the job's result. Messages that cannot be encoded are
    /// dropped (and logged).
    ///
    /// The ticket keeps messages until they are read (or it is dropped),
    /// however many come: a job that sends many should have a reader. A
    /// job run by [`Pool::map`](crate::pool::Pool::map) has no ticket; its
    /// progress is dropped.
    pub fn progress<P: Serialize + ?Sized>(&self, msg: &P) {
        let payload = match postcard::to_allocvec(msg) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("dropping a progress message that could not be encoded: {e}");
                return;
            }
        };
        match &self.progress {
            ProgressSink::Channel(reply) => reply.send(Event::Progress(crate::task::Progress {
                json: false,
                bytes: payload,
            })),
            ProgressSink::Discard | ProgressSink::Held(_) => {}
            ProgressSink::Remote(w, id) => w.progress(*id, payload),
        }
    }
}
