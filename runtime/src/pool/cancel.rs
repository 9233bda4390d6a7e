//! `CancelToken`: one switch that cancels every job carrying it (scenario
//! "cancel" in `supervisor/README.md`), queued or running, on any pool.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::supervisor::monitor::Control;
use crate::task::{Failure, JobState, Reply};
use crate::util::lock;

/// Cancels every job submitted with it, like calling
/// [`Ticket::cancel`](super::Ticket::cancel) on each: a queued job is
/// dropped without running, a running one gets the graded cancel (its
/// handler sees [`Context::is_cancelled`](crate::job::Context::is_cancelled);
/// a process worker that does not return within the pool's
/// `cancel_grace` is replaced). Each such job ends with
/// [`JobError::Cancelled`](crate::job::JobError::Cancelled).
///
/// Cheap to clone: clones share one switch. Give it with
/// [`JobOptions::cancel_token`](super::JobOptions::cancel_token) or to a
/// map with [`Map::cancel_token`](super::Map::cancel_token). A job
/// submitted with a token already cancelled is refused at once and handed
/// back ([`SubmitError::Cancelled`](super::SubmitError::Cancelled)).
///
/// A cancelled job that was still queued keeps its place in the queue
/// (and counts towards the queue limit) until a worker reaches it; it is
/// then dropped without running, and `stats()` counts it as cancelled from
/// that moment. Its ticket answers `Cancelled` at once.
///
/// The cancel settles the job's outcome when it is made: a running job
/// whose handler then ends normally (it did not look at the flag, or
/// finished first) still answers `Cancelled`, and its result is dropped.
/// `Cancelled` says the job's outcome was given up, not that its handler
/// did not run: side effects a handler has made stay made.
///
/// ```
/// # extern crate portpool_runtime as portpool;
/// # use portpool::{job::{Handlers, Job, JobError}, pool::{CancelToken, JobOptions, Pool}};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Wait;
/// # impl Job for Wait { type Output = (); type Error = String; const NAME: &'static str = "wait"; }
/// let pool = Pool::builder()
///     .threads(1)
///     .handlers(Handlers::new().on::<Wait>(|_, cx| {
///         while !cx.is_cancelled() {
///             std::thread::sleep(std::time::Duration::from_millis(1));
///         }
///         Ok(())
///     }))
///     .build()?;
/// let token = CancelToken::new();
/// let tickets: Vec<_> = (0..3)
///     .map(|_| pool.submit_with(Wait, JobOptions::new().cancel_token(&token)))
///     .collect::<Result<_, _>>()?;
/// token.cancel(); // one running, two queued: all three end
/// for t in tickets {
///     assert!(matches!(t.wait(), Err(JobError::Cancelled)));
/// }
/// assert!(pool.submit_with(Wait, JobOptions::new().cancel_token(&token)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Every job given this token and not known to be settled.
    jobs: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    jobs: Vec<Carrier>,
    /// Length after the last sweep of settled jobs (the next sweep comes
    /// when the list has doubled, so a long-lived token stays small).
    swept: usize,
}

/// A job that carries the token: how to cancel it.
pub(crate) struct Carrier {
    id: u64,
    state: Arc<JobState>,
    reply: Reply,
    control: Sender<Control>,
}

impl Carrier {
    /// What `Ticket::cancel` does, plus telling the waiter (a ticket or a
    /// map blocked on its channel) that the outcome is in.
    pub(crate) fn cancel(&self) {
        self.state.cancel();
        if self.state.settle_by_cancel() {
            // One outcome per task: a ticket's, or a map's whole chunk.
            self.reply.fail(Failure::Cancelled);
            // The pool finds the job where it runs, if it runs.
            let _ = self.control.send(Control::Cancel { id: self.id });
        }
    }
}

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Cancels every job that carries this token, now and from now on.
    /// Calling it again does nothing.
    pub fn cancel(&self) {
        let jobs = {
            let mut reg = lock(&self.0.jobs);
            // Release: pairs with the Acquire load in `is_cancelled`; set
            // under the lock, so a job registered after it sees it.
            self.0.cancelled.store(true, Ordering::Release);
            reg.swept = 0;
            std::mem::take(&mut reg.jobs)
        };
        for c in &jobs {
            c.cancel();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the Release store in `cancel`.
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Records task `id` (its state and where its outcome goes) as
    /// carrying this token; `Err` gives it back, ready to cancel, if the
    /// token is already cancelled (the task must not go).
    pub(crate) fn carry(
        &self,
        id: u64,
        state: &Arc<JobState>,
        reply: &Reply,
        control: &Sender<Control>,
    ) -> Result<(), Carrier> {
        self.register(Carrier {
            id,
            state: state.clone(),
            reply: reply.clone(),
            control: control.clone(),
        })
    }

    fn register(&self, c: Carrier) -> Result<(), Carrier> {
        let mut reg = lock(&self.0.jobs);
        if self.0.cancelled.load(Ordering::Acquire) {
            return Err(c);
        }
        if reg.jobs.len() >= 2 * reg.swept.max(16) {
            reg.jobs.retain(|c| !c.state.is_settled());
            reg.swept = reg.jobs.len();
        }
        reg.jobs.push(c);
        Ok(())
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl PartialEq for CancelToken {
    /// Two tokens are equal when they are clones of one another.
    fn eq(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CancelToken {}
