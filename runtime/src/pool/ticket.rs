//! A submitted job's handle: its result, its progress, its cancellation.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;

use super::{Event, Outcome, Reply};
use crate::job::{Failure, Job, JobError, JobState, Side};
use crate::supervisor::monitor::Control;
use crate::util::recv_spin;

/// The result of a job, typed.
pub type JobResult<J> = Result<<J as Job>::Output, JobError<<J as Job>::Error>>;

/// A submitted job: wait for its result, read its progress messages,
/// cancel it.
#[must_use = "the ticket is the job's only way to report its result; `drop` it to ignore the result"]
pub struct Ticket<J: Job> {
    rx: Receiver<(u64, Event)>,
    state: Arc<JobState>,
    id: u64,
    control: Sender<Control>,
    progress: VecDeque<Vec<u8>>,
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
        Outcome::Failed(f) => Err(f.into_job_error()),
    }
}

impl<J: Job> Ticket<J> {
    pub(crate) fn new(id: u64, state: Arc<JobState>, control: Sender<Control>) -> (Ticket<J>, Reply) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Ticket {
                rx,
                state,
                id,
                control,
                progress: VecDeque::new(),
                done: None,
                _job: PhantomData,
            },
            Reply { tx, tag: 0 },
        )
    }

    /// Takes events until the outcome is in, or `deadline` passes.
    fn wait_for_outcome(&mut self, deadline: Option<Instant>) {
        if let Some(fast) = self.state.fast_reader() {
            // The job's worker holds only this job: read its answer here.
            let (rx, progress, done, state) = (&self.rx, &mut self.progress, &mut self.done, &self.state);
            fast.read_for(
                &mut || {
                    while let Ok((_, e)) = rx.try_recv() {
                        match e {
                            Event::Progress(p) => progress.push_back(p),
                            Event::Done(o) => *done = Some(o),
                        }
                    }
                    done.is_some() || state.settled_by_cancel()
                },
                deadline,
            );
        }
        while self.done.is_none() {
            if self.state.settled_by_cancel() {
                self.done = Some(Outcome::Failed(Failure::Cancelled));
                return;
            }
            match recv_spin(&self.rx, deadline) {
                Some((_, Event::Progress(p))) => self.progress.push_back(p),
                Some((_, Event::Done(o))) => self.done = Some(o),
                None => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
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

    /// The result if the job has finished; the ticket back otherwise.
    #[allow(clippy::result_large_err)] // the Err is this ticket, given back
    pub fn try_result(mut self) -> Result<JobResult<J>, Ticket<J>> {
        if self.state.settled_by_cancel() {
            return Ok(Err(JobError::Cancelled));
        }
        while let Ok((_, e)) = self.rx.try_recv() {
            match e {
                Event::Progress(p) => self.progress.push_back(p),
                Event::Done(o) => self.done = Some(o),
            }
        }
        match self.done.take() {
            Some(o) => Ok(typed::<J>(o)),
            None => Err(self),
        }
    }

    /// The next progress message already received, if any (never blocks).
    /// A message that does not decode as `P` is skipped and logged.
    pub fn try_progress<P: DeserializeOwned>(&mut self) -> Option<P> {
        while let Ok((_, e)) = self.rx.try_recv() {
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
            match recv_spin(&self.rx, None) {
                Some((_, Event::Progress(p))) => self.progress.push_back(p),
                Some((_, Event::Done(o))) => self.done = Some(o),
                None => self.wait_for_outcome(None),
            }
        }
    }

    fn pop_progress<P: DeserializeOwned>(&mut self) -> Option<P> {
        while let Some(bytes) = self.progress.pop_front() {
            match postcard::from_bytes(&bytes) {
                Ok(p) => return Some(p),
                Err(e) => log::warn!(
                    "skipping a progress message that is not a `{}`: {e}",
                    std::any::type_name::<P>()
                ),
            }
        }
        None
    }

    /// Cancels the job (scenario "cancel" in `supervisor/README.md`).
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
