//! A submitted job's handle: its result, its progress, its cancellation.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;

use super::{Event, Outcome, Reply};
use crate::job::{Failure, Job, JobError, JobState, Side};
use crate::supervisor::monitor::Control;
use crate::task::{Empty, Inbox};

/// The result of a job, typed.
pub type JobResult<J> = Result<<J as Job>::Output, JobError<<J as Job>::Error>>;

/// A submitted job: wait for its result, read its progress messages,
/// cancel it.
#[must_use = "the ticket is the job's only way to report its result; `drop` it to ignore the result"]
pub struct Ticket<J: Job> {
    inbox: Inbox,
    state: Arc<JobState>,
    id: u64,
    control: Sender<Control>,
    progress: VecDeque<crate::task::Progress>,
    done: Option<Outcome>,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> fmt::Debug for Ticket<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("route", &J::NAME)
            .field("finished", &self.done.is_some())
            .finish_non_exhaustive()
    }
}

/// Decodes a process worker's answer for a `J` job; the error says which
/// type would not decode and why.
#[inline]
pub(crate) fn decode_result<J: Job>(bytes: &[u8]) -> Result<Result<J::Output, J::Error>, String> {
    postcard::from_bytes::<Result<J::Output, J::Error>>(bytes).map_err(|e| result_failure::<J>(bytes, e))
}

#[cold]
#[inline(never)]
fn result_failure<J: Job>(bytes: &[u8], e: postcard::Error) -> String {
    // Which half failed: the output or the error type.
    let ty = match bytes.first() {
        Some(0) => std::any::type_name::<J::Output>(),
        Some(1) => std::any::type_name::<J::Error>(),
        _ => std::any::type_name::<Result<J::Output, J::Error>>(),
    };
    format!(
        "the supervisor could not read the result of a `{}` job: {}",
        J::NAME,
        crate::codec::decode_failure_named(ty, &e)
    )
}

/// Turns an untyped outcome into the job's typed result.
pub(crate) fn typed<J: Job>(outcome: Outcome) -> JobResult<J> {
    match outcome {
        Outcome::Value(v) => match v.downcast::<Result<J::Output, J::Error>>() {
            Ok(r) => r.map_err(JobError::Handler),
            Err(_) => Err(JobError::Codec {
                side: Side::Supervisor,
                reason: format!(
                    "a thread worker returned something other than a `{}` result",
                    J::NAME
                ),
            }),
        },
        Outcome::Bytes(b) => decode_result::<J>(&b)
            .map_err(|reason| JobError::Codec {
                side: Side::Supervisor,
                reason,
            })?
            .map_err(JobError::Handler),
        // A result with buffers: they take their files as it decodes.
        Outcome::BytesFds(b, fds) => crate::port::with_received_fds(fds, || typed::<J>(Outcome::Bytes(b))),
        Outcome::Json(r) => decode_json_result::<J>(&r)
            .map_err(|reason| JobError::Codec {
                side: Side::Supervisor,
                reason,
            })?
            .map_err(JobError::Handler),
        Outcome::JsonChunk(..) | Outcome::JsonOk(..) => Err(JobError::Codec {
            side: Side::Supervisor,
            reason: format!("a `{}` job was answered as a chunk", J::NAME),
        }),
        Outcome::Failed(f) => Err(f.into_job_error()),
    }
}

/// Decodes a JSON worker's answer for a `J` job as its output or its
/// error; the error says which type would not decode, and what came.
pub(crate) fn decode_json_result<J: Job>(
    r: &crate::task::JsonResult,
) -> Result<Result<J::Output, J::Error>, String> {
    let failed = |ty: &str, what: &str, e: serde_json::Error| {
        format!(
            "the supervisor could not read the {what} of a `{}` job from its JSON worker as a `{ty}`: {e} \
             (the worker sent {})",
            J::NAME,
            String::from_utf8_lossy(&r.json[..r.json.len().min(200)])
        )
    };
    if r.err {
        serde_json::from_slice::<J::Error>(&r.json)
            .map(Err)
            .map_err(|e| failed(std::any::type_name::<J::Error>(), "error", e))
    } else {
        serde_json::from_slice::<J::Output>(&r.json)
            .map(Ok)
            .map_err(|e| failed(std::any::type_name::<J::Output>(), "output", e))
    }
}

impl<J: Job> Ticket<J> {
    pub(crate) fn new(id: u64, state: Arc<JobState>, control: Sender<Control>) -> (Ticket<J>, Reply) {
        let (inbox, reply) = Inbox::new();
        (
            Ticket {
                inbox,
                state,
                id,
                control,
                progress: VecDeque::new(),
                done: None,
                _job: PhantomData,
            },
            reply,
        )
    }

    /// Takes events until the outcome is in, or `deadline` passes.
    fn wait_for_outcome(&mut self, deadline: Option<Instant>) {
        if let Some(fast) = self.state.fast_reader() {
            // The job's worker holds only this job: read its answer here.
            // Once the job is settled (by this read, a timer, a cancel),
            // its outcome is in the mailbox or about to be; the loop below
            // takes it with any progress messages before it.
            fast.read_for(&self.state, deadline);
        }
        while self.done.is_none() {
            if self.state.settled_by_cancel() {
                self.done = Some(Outcome::Failed(Failure::Cancelled));
                return;
            }
            match self.inbox.recv_spin(deadline) {
                Ok((_, Event::Progress(p))) => self.progress.push_back(p),
                Ok((_, Event::Done(o))) => self.done = Some(o),
                Err(Empty::Now) => return,
                Err(Empty::Closed) => {
                    // Every path that drops a job's reply sends its outcome
                    // first; a closed channel without one is a bug, reported
                    // instead of hanging.
                    self.done = Some(Outcome::Failed(Failure::Rejected(
                        "the pool dropped the job without an outcome".into(),
                    )));
                }
            }
        }
    }

    /// Blocks until the job has finished and returns its result.
    pub fn wait(mut self) -> JobResult<J> {
        self.wait_for_outcome(None);
        match self.done.take() {
            Some(o) => typed::<J>(o),
            None => Err(JobError::Rejected {
                reason: "no outcome".into(),
            }),
        }
    }

    /// Waits at most `timeout`; gives the ticket back if the job is not done.
    #[allow(clippy::result_large_err)] // the Err is this ticket, given back
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<JobResult<J>, Ticket<J>> {
        self.wait_for_outcome(crate::util::deadline(timeout));
        match self.done.take() {
            Some(o) => Ok(typed::<J>(o)),
            None => Err(self),
        }
    }

    /// The result if the job has finished (never blocks); the ticket back
    /// otherwise, to wait on or ask again.
    #[allow(clippy::result_large_err)] // the Err is this ticket, given back
    pub fn try_wait(mut self) -> Result<JobResult<J>, Ticket<J>> {
        match self.poll_outcome() {
            Some(o) => Ok(typed::<J>(o)),
            None => Err(self),
        }
    }

    /// The old name of [`try_wait`](Self::try_wait).
    #[deprecated(since = "0.1.0", note = "renamed `try_wait`, in the `wait` family")]
    #[allow(clippy::result_large_err)] // the Err is this ticket, given back
    pub fn try_result(self) -> Result<JobResult<J>, Ticket<J>> {
        self.try_wait()
    }

    /// Takes what the channel holds, without blocking; the outcome if it
    /// is in.
    fn poll_outcome(&mut self) -> Option<Outcome> {
        if self.state.settled_by_cancel() {
            return Some(Outcome::Failed(Failure::Cancelled));
        }
        loop {
            match self.inbox.try_recv() {
                Ok((_, Event::Progress(p))) => self.progress.push_back(p),
                Ok((_, Event::Done(o))) => self.done = Some(o),
                Err(Empty::Now) => break,
                Err(Empty::Closed) => {
                    if self.done.is_none() {
                        // As in `wait_for_outcome`: a bug, reported.
                        self.done = Some(Outcome::Failed(Failure::Rejected(
                            "the pool dropped the job without an outcome".into(),
                        )));
                    }
                    break;
                }
            }
        }
        self.done.take()
    }

    /// The next progress message already received, if any (never blocks).
    /// A message that does not decode as `P` is skipped and logged.
    pub fn try_progress<P: DeserializeOwned>(&mut self) -> Option<P> {
        while let Ok((_, e)) = self.inbox.try_recv() {
            match e {
                Event::Progress(p) => self.progress.push_back(p),
                Event::Done(o) => self.done = Some(o),
            }
        }
        self.pop_progress()
    }

    /// Blocks until the next progress message, or returns `None` once the
    /// job has finished and every progress message has been read.
    pub fn recv_progress<P: DeserializeOwned>(&mut self) -> Option<P> {
        loop {
            if let Some(p) = self.pop_progress() {
                return Some(p);
            }
            if self.done.is_some() {
                return None;
            }
            match self.inbox.recv_spin(None) {
                Ok((_, Event::Progress(p))) => self.progress.push_back(p),
                Ok((_, Event::Done(o))) => self.done = Some(o),
                Err(_) => self.wait_for_outcome(None),
            }
        }
    }

    fn pop_progress<P: DeserializeOwned>(&mut self) -> Option<P> {
        while let Some(p) = self.progress.pop_front() {
            let decoded = if p.json {
                serde_json::from_slice(&p.bytes).map_err(|e| e.to_string())
            } else {
                // The whole message, as the port's typed receive takes it:
                // a value that decodes from its first bytes only is another
                // type's (a `String` read as a `u32` is its length).
                match postcard::take_from_bytes(&p.bytes) {
                    Ok((v, [])) => Ok(v),
                    Ok((_, rest)) => Err(format!("{} bytes left over after the value", rest.len())),
                    Err(e) => Err(e.to_string()),
                }
            };
            match decoded {
                Ok(p) => return Some(p),
                Err(e) => log::warn!(
                    "skipping a progress message that is not a `{}`: {e}",
                    std::any::type_name::<P>()
                ),
            }
        }
        None
    }

    /// Cancels the job (the "Cancel" scenario in [`crate::supervisor`]).
    ///
    /// Unless it has already finished, its result is now
    /// [`JobError::Cancelled`]. A job still queued is dropped when its turn
    /// comes, without reaching a worker. A running handler sees
    /// [`Context::is_cancelled`](crate::job::Context::is_cancelled) turn
    /// true; if it has not returned within the pool's
    /// [`cancel_grace`](super::PoolBuilder::cancel_grace), its process
    /// worker is killed and replaced (jobs it held for others go back to
    /// the queue), or its thread worker is abandoned and replaced.
    pub fn cancel(&self) {
        self.state.cancel();
        if self.state.settle_by_cancel() {
            // The pool finds the job where it runs, if it runs.
            let _ = self.control.send(Control::Cancel { id: self.id });
        }
    }

    /// The job's id within its pool.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// An awaited [`Ticket`]: `ticket.await` gives the job's result, from any
/// executor (tokio, async-std, `futures::executor`, ...).
///
/// No thread of an executor waits: the pool thread that settles the job
/// (a worker's answer, its death, a timeout, a cancel) wakes the task.
/// Dropping the future before it is ready cancels the job, as
/// [`Ticket::cancel`] does; so a web handler whose client went away, or
/// a `select!` that took another branch, leaves no work behind.
/// Progress messages are not yielded (read them with
/// [`Ticket::recv_progress`] before awaiting, if they matter).
#[must_use = "futures do nothing unless awaited; dropping this one cancels its job"]
pub struct TicketFuture<J: Job> {
    ticket: Option<Ticket<J>>,
}

impl<J: Job> fmt::Debug for TicketFuture<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketFuture")
            .field("route", &J::NAME)
            .field("finished", &self.ticket.is_none())
            .finish()
    }
}

impl<J: Job> IntoFuture for Ticket<J> {
    type Output = JobResult<J>;
    type IntoFuture = TicketFuture<J>;

    fn into_future(self) -> TicketFuture<J> {
        TicketFuture { ticket: Some(self) }
    }
}

impl<J: Job> Future for TicketFuture<J> {
    type Output = JobResult<J>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<JobResult<J>> {
        let Some(t) = self.ticket.as_mut() else {
            panic!("a TicketFuture was polled after it returned its result");
        };
        let mut outcome = t.poll_outcome();
        if outcome.is_none() {
            t.inbox.wake_slot().register(cx.waker());
            // Looked at again after registering: an event sent before the
            // waker was in place is seen here (`WakeSlot`).
            outcome = t.poll_outcome();
        }
        match outcome {
            Some(o) => {
                if let Some(t) = self.ticket.take() {
                    t.inbox.wake_slot().clear();
                }
                Poll::Ready(typed::<J>(o))
            }
            None => Poll::Pending,
        }
    }
}

impl<J: Job> Drop for TicketFuture<J> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.inbox.wake_slot().clear();
            t.cancel();
        }
    }
}
