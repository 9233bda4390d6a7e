//! The pool: workers (threads, or processes started from this program or
//! another) that run the jobs you submit with the [`Handlers`] you gave.
//!
//! One API, two backends with the same semantics:
//!
//! - `Pool::builder().threads(n)`: jobs move through crossbeam channels as
//!   Rust values, never serialized.
//! - `Pool::builder().processes(n)`: each worker is a child process with a
//!   port; jobs and results cross it as postcard frames, several in flight
//!   per worker ([`PoolBuilder::inflight_per_worker`]).
//!
//! Every submitted job ends in exactly one outcome, delivered to its
//! [`Ticket`] (or to the [`Map`] iterator that submitted it). What happens
//! on crashes, timeouts, cancellation and shutdown is told case by case
//! in [`crate::supervisor`].

mod builder;
mod cancel;
mod encode;
mod errors;
mod func;
mod guard;
mod inner;
mod map;
mod metrics;
mod options;
mod processes;
mod ranked;
mod scale;

mod state;
mod stats;
#[cfg(feature = "futures")]
mod stream;
mod threads;
mod ticket;

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError as ChanTrySendError};

use crate::error::SendError;
use crate::job::{Failure, Handlers, Job, JobState};
use crate::port::IpcSender;
use crate::runtime::{RefCount, Runtime};
use crate::supervisor::monitor::{self, Control, Graces, MonitorHandle, Supervised};
use crate::supervisor::{PoolEvent, RestartPolicy, Shutdown, ShutdownMode, ShutdownReport, TERM_GRACE};

pub use crate::serve::serve;
pub use func::FnInputs;
pub use map::Map;
pub use metrics::{Quantiles, RouteStats};
pub use processes::{WORKER_ID_ENV, WORKER_LINK_ENV};
#[cfg(feature = "futures")]
pub use stream::MapStream;
pub use ticket::{JobResult, Ticket, TicketFuture};

pub(crate) use crate::util::lock;

pub(crate) use crate::task::{Event, FastRead, Outcome, Reply};

pub(crate) use builder::FORGOT_SERVE_IF_WORKER;
pub use builder::{DEFAULT_CANCEL_GRACE, DEFAULT_IDLE_TIMEOUT, DEFAULT_PRIORITY_AGING, PoolBuilder};
pub use cancel::CancelToken;
pub(crate) use encode::*;
pub use errors::{BuildError, SubmitError, SubmitTimeoutError, TrySubmitError};
pub(crate) use inner::*;
pub use options::{IntoCommand, JobOptions};
pub(crate) use state::*;
pub use stats::{Stats, WorkerExit, WorkerStats};

/// A pool of workers. Dropping it shuts it down gracefully (running and
/// queued jobs finish first), bounded by [`Shutdown::default`]'s deadline.
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field(
                "kind",
                &match self.inner.backend {
                    Backend::Threads(_) => "threads",
                    Backend::Processes(_) => "processes",
                },
            )
            .finish_non_exhaustive()
    }
}

/// A job made ready to queue.
enum Prepared<J: Job> {
    /// Its ticket already holds its outcome (a failure): nothing to queue.
    Settled(Ticket<J>),
    /// Its ticket and its task.
    Ready(Ticket<J>, Task),
}

impl Pool {
    /// Starts building a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.core.counters.len()
    }

    /// Whether jobs of type `J` have a run timeout (then `map` sends them
    /// one per task, so each has its own).
    pub(crate) fn times_out<J: Job>(&self) -> bool {
        self.inner.core.limits(J::NAME).0.is_some()
    }

    /// Jobs of a chunk that failed before they were queued are on the
    /// pool's books too.
    fn count_holes(&self, n: usize) {
        // Relaxed: statistics only.
        self.inner
            .core
            .failed_elsewhere
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Starts the queue-wait clock of `t`, if it has one.
    fn watch_queue(&self, t: &Task) {
        self.watch_queue_for(t, None);
    }

    fn watch_queue_for(&self, t: &Task, over: Option<Duration>) {
        if let Some(after) = over.or(self.inner.core.config.queue_timeout) {
            let _ = self.inner.core.control.send(Control::QueueDeadline {
                state: t.state.clone(),
                reply: t.reply.clone(),
                jobs: t.jobs(),
                after,
            });
        }
    }

    /// Makes `job`'s ticket and task and hands the task to `enqueue`. A job
    /// for a process pool is checked first (it must encode and fit in a
    /// frame; the check allocates nothing): if it cannot go, its ticket
    /// holds that failure at once and nothing is queued, whether or not it
    /// would have waited. When `enqueue` refuses the task, the job is given
    /// back with its reason.
    fn enqueue<J: Job, E>(
        &self,
        job: J,
        opts: &JobOptions,
        enqueue: impl FnOnce(&Self, Work) -> Result<(), (Work, E)>,
    ) -> Result<Ticket<J>, (J, E)> {
        let check = matches!(self.inner.backend, Backend::Processes(_));
        let (ticket, task) = match self.prepare(job, opts, check) {
            Prepared::Settled(ticket) => return Ok(ticket),
            Prepared::Ready(ticket, task) => (ticket, task),
        };
        self.watch_queue_for(&task, opts.queue_timeout);
        match enqueue(self, Work::Task(task)) {
            Ok(()) => {
                if self.inner.core.config.on_event.is_some() {
                    self.inner.core.note_enqueued();
                }
                self.inner.after_enqueue();
                Ok(ticket)
            }
            Err((work, e)) => {
                // Claimed, so its queue timer neither settles nor counts
                // a job that is given back.
                if let Work::Task(t) = &work {
                    t.state.settle();
                }
                let job = match work {
                    Work::Task(t) => match t.into_value::<J>() {
                        Some(j) => j,
                        None => unreachable!("a task built from a J holds a J"),
                    },
                    Work::Stop | Work::Wake => unreachable!("only tasks are submitted"),
                };
                Err((job, e))
            }
        }
    }

    /// Makes `job`'s ticket and task. A job that cannot go (its route is
    /// not served; with `check`, it will not encode or fit in a frame) gets
    /// a ticket that already holds its failure.
    fn prepare<J: Job>(&self, job: J, opts: &JobOptions, check: bool) -> Prepared<J> {
        let core = &self.inner.core;
        let state = JobState::new();
        if core.config.metrics {
            core.metrics_for::<J>(&state);
        }
        // Relaxed: ids only need to be unique.
        let id = core.next_id.fetch_add(1, Ordering::Relaxed);
        let (ticket, reply) = Ticket::new(id, state.clone(), core.control.clone());
        if let Some(token) = &opts.cancel {
            if token.carry(id, &state, &reply, &core.control).is_err() {
                // Cancelled since `submit_with` looked: the job never goes.
                core.deliver_failure(&state, &reply, 1, Failure::Cancelled, None);
                return Prepared::Settled(ticket);
            }
        }
        if let Err(f) = self.check_route::<J>() {
            core.deliver_failure(&state, &reply, 1, f, None);
            return Prepared::Settled(ticket);
        }
        let json = core.config.job_codec == crate::frame::Codec::Json;
        if check {
            let checked = if json {
                check_encodes_json(&job)
            } else {
                check_encodes(&job)
            };
            if let Err(f) = checked {
                core.deliver_failure(&state, &reply, 1, f, None);
                return Prepared::Settled(ticket);
            }
        }
        let (timeout, retries) = core.limits(J::NAME);
        let task = Task {
            id,
            route: J::NAME,
            job: Payload::Value(Box::new(job)),
            send_job: if json { send_job_json::<J> } else { send_job::<J> },
            reply,
            state,
            batch: None,
            timeout: opts.timeout.or(timeout),
            retries: opts.retries.unwrap_or(retries),
            priority: opts.priority,
            seq: 0,
        };
        Prepared::Ready(ticket, task)
    }

    /// On a process pool, whether the workers serve `J`'s route with `J`'s
    /// types (from the route table each worker announces at start).
    fn check_route<J: Job>(&self) -> Result<(), Failure> {
        match &self.inner.backend {
            Backend::Processes(p) => p.check_route::<J>(),
            Backend::Threads(_) => Ok(()),
        }
    }

    /// Submits a job, blocking while the queue is full.
    ///
    /// On a process pool the job is checked now (it must encode and fit in
    /// a frame) and encoded into its worker's port at dispatch: a job that
    /// will not encode gets a ticket whose result is that error at once,
    /// even on a busy pool, and nothing is sent. (A thread pool never
    /// encodes jobs.)
    pub fn submit<J: Job>(&self, job: J) -> Result<Ticket<J>, SubmitError<J>> {
        self.submit_with(job, JobOptions::default())
    }

    /// Submits a job with its own timeout, queue-wait deadline or retries
    /// (see [`submit`](Self::submit)).
    ///
    /// A job whose [`CancelToken`] is already cancelled is refused
    /// ([`SubmitError::Cancelled`]).
    pub fn submit_with<J: Job>(&self, job: J, opts: JobOptions) -> Result<Ticket<J>, SubmitError<J>> {
        match self.inner.refusal() {
            Some(Refusal::Closed) => return Err(SubmitError::Closed(job)),
            Some(Refusal::Failed(why)) => return Err(SubmitError::Failed(job, why)),
            None => {}
        }
        if opts.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(SubmitError::Cancelled(job));
        }
        self.enqueue(job, &opts, |me, w| me.send_blocking(w, None).map_err(|w| (w, ())))
            .map_err(|(job, ())| self.closed_error(job))
    }

    /// The error for a job refused because the pool closed meanwhile.
    fn closed_error<J>(&self, job: J) -> SubmitError<J> {
        match self.inner.core.failure() {
            Some(why) => SubmitError::Failed(job, why),
            None => SubmitError::Closed(job),
        }
    }

    /// Submits a job if the queue has room (with a queue limit of 0: if a
    /// worker can take it now), or gives it back.
    #[allow(clippy::result_large_err)] // the closure's Err gives the task back
    pub fn try_submit<J: Job>(&self, job: J) -> Result<Ticket<J>, TrySubmitError<J>> {
        match self.inner.refusal() {
            Some(Refusal::Closed) => return Err(TrySubmitError::Closed(job)),
            Some(Refusal::Failed(why)) => return Err(TrySubmitError::Failed(job, why)),
            None => {}
        }
        self.enqueue(job, &JobOptions::default(), |me, w| me.send_now(w))
            .map_err(|(job, full)| {
                if full {
                    TrySubmitError::Full(job)
                } else {
                    match self.inner.core.failure() {
                        Some(why) => TrySubmitError::Failed(job, why),
                        None => TrySubmitError::Closed(job),
                    }
                }
            })
    }

    /// Submits a job, waiting at most `timeout` for room in the queue.
    pub fn submit_timeout<J: Job>(
        &self,
        job: J,
        timeout: Duration,
    ) -> Result<Ticket<J>, SubmitTimeoutError<J>> {
        match self.inner.refusal() {
            Some(Refusal::Closed) => return Err(SubmitTimeoutError::Closed(job)),
            Some(Refusal::Failed(why)) => return Err(SubmitTimeoutError::Failed(job, why)),
            None => {}
        }
        let deadline = crate::util::deadline(timeout);
        self.enqueue(job, &JobOptions::default(), |me, w| {
            me.send_blocking(w, deadline).map_err(|w| (w, ()))
        })
        .map_err(|(job, ())| {
            if self.inner.refusal().is_some() {
                match self.inner.core.failure() {
                    Some(why) => SubmitTimeoutError::Failed(job, why),
                    None => SubmitTimeoutError::Closed(job),
                }
            } else {
                SubmitTimeoutError::Timeout(job)
            }
        })
    }

    /// Puts `w` in the queue without waiting. `Err(true)`: full.
    #[allow(clippy::result_large_err)] // the Err gives the task back, as crossbeam's try_send does
    fn send_now(&self, w: Work) -> Result<(), (Work, bool)> {
        let core = &self.inner.core;
        if core.queue_limit == 0 {
            if let Backend::Processes(p) = &self.inner.backend {
                return p.dispatch_now(w).map_err(|w| (w, true));
            }
        }
        self.ranked(w, |w| match core.queue_tx.try_send(w) {
            Ok(()) => Ok(()),
            Err(ChanTrySendError::Full(w)) => Err((w, true)),
            Err(ChanTrySendError::Disconnected(w)) => Err((w, false)),
        })
    }

    /// Queues `w` with `send`; for a task of priority above 0, `send`
    /// queues its wake and the task goes into the heap (module `ranked`).
    /// If the wake cannot go, the task is given back.
    #[allow(clippy::result_large_err)] // the Err gives the task back
    fn ranked<E>(&self, w: Work, send: impl FnOnce(Work) -> Result<(), (Work, E)>) -> Result<(), (Work, E)> {
        let core = &self.inner.core;
        let t = match w {
            // Without a queue (limit 0) nothing waits to be reordered, and
            // the submitter must return once a worker has its job.
            Work::Task(t) if t.priority > 0 && core.queue_limit > 0 => t,
            w => return send(w),
        };
        let priority = t.priority;
        // Room first, then the job: it becomes runnable only once its
        // submitter is past the queue's backpressure (a submitter waiting
        // for room while its own job runs could wait on that very job).
        if let Err((_, e)) = send(Work::Wake) {
            return Err((Work::Task(t), e));
        }
        core.ranked.push(t, priority);
        // A thread worker that took that wake before the push, found
        // nothing and went to sleep: an empty queue means one may sleep,
        // so one more wake (a full queue means none sleeps; a process
        // pool's `kick` after the enqueue finds the job).
        if matches!(self.inner.backend, Backend::Threads(_)) && core.queue_rx.is_empty() {
            let _ = core.queue_tx.try_send(Work::Wake);
        }
        Ok(())
    }

    /// Puts `w` in the queue, waiting for room until `deadline` (or
    /// forever). Gives it back if the pool closed or the deadline passed.
    fn send_blocking(&self, w: Work, deadline: Option<Instant>) -> Result<(), Work> {
        let core = &self.inner.core;
        if core.queue_limit == 0 {
            if let Backend::Processes(p) = &self.inner.backend {
                return p.dispatch_blocking(w, deadline, || self.inner.refusal().is_some());
            }
        }
        let sent = self.ranked(w, |w| match deadline {
            None => core.queue_tx.send(w).map_err(|e| (e.0, ())),
            Some(d) => core
                .queue_tx
                .send_deadline(w, d)
                .map_err(|e| (e.into_inner(), ())),
        });
        sent.map_err(|(w, ())| w)
    }

    /// Runs every job of `jobs` and yields the results in input order.
    /// Pulls from `jobs` lazily, keeping a bounded number in flight, so an
    /// endless iterator works and a slow job does not make memory grow.
    pub fn map<J: Job, I: IntoIterator<Item = J>>(&self, jobs: I) -> Map<'_, J, I::IntoIter> {
        Map::new(self, jobs.into_iter(), self.inner.window, true)
    }

    /// Like [`map`](Self::map), but yields results as they finish.
    pub fn map_unordered<J: Job, I: IntoIterator<Item = J>>(&self, jobs: I) -> Map<'_, J, I::IntoIter> {
        Map::new(self, jobs.into_iter(), self.inner.window, false)
    }

    /// Runs `job` once on every worker and returns the results in worker
    /// order. On a scaling pool ([`PoolBuilder::min_workers`]), once on
    /// every worker up at the time.
    pub fn broadcast<J: Job + Clone>(
        &self,
        job: J,
    ) -> Vec<Result<J::Output, crate::job::JobError<J::Error>>> {
        if let Some(r) = self.inner.refusal() {
            let f = r.failure();
            return (0..self.workers())
                .map(|_| Err(f.clone().into_job_error()))
                .collect();
        }
        // On a scaling pool, the workers up now; none leaves meanwhile.
        let scale = self.inner.core.scale.as_ref();
        let decide = scale.map(scale::Scale::decide);
        let targets =
            (0..self.workers()).filter(|w| scale.is_none_or(|s| s.state(*w) == scale::SlotState::Up));
        let tickets: Vec<Ticket<J>> = targets
            .map(
                |w| match self.prepare(job.clone(), &JobOptions::default(), false) {
                    Prepared::Settled(ticket) => ticket,
                    Prepared::Ready(ticket, task) => {
                        match &self.inner.backend {
                            Backend::Threads(t) => t.send_to(w, task),
                            Backend::Processes(p) => p.send_to(w, task),
                        }
                        ticket
                    }
                },
            )
            .collect();
        drop(decide);
        tickets.into_iter().map(Ticket::wait).collect()
    }

    /// Whether the queue is at its limit ([`PoolEvent::Saturated`]
    /// says when it becomes so): `submit` would wait and `try_submit` give
    /// the job back. With a queue limit of 0, whether no worker is free.
    pub fn is_saturated(&self) -> bool {
        let core = &self.inner.core;
        if core.queue_limit == 0 {
            return self.inner.full();
        }
        core.queue_rx.len() >= core.queue_limit
    }

    /// Waits until no job is queued or running, at most `timeout`; returns
    /// whether the pool went idle. Jobs submitted meanwhile count too.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = crate::util::deadline(timeout);
        let core = &self.inner.core;
        // Held jobs (module `threads`) are read before and after the
        // running counts: a job moving between the two is seen in one.
        core.idle.wait_until(deadline, || {
            !core.has_queued() && !self.inner.busy() && core.held.load(Ordering::SeqCst) == 0
        })
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        let slots = match &self.inner.backend {
            Backend::Threads(t) => t
                .restarts()
                .into_iter()
                .map(|r| (None, r, "thread".to_string(), "in-process"))
                .collect(),
            Backend::Processes(p) => p.slot_stats(),
        };
        let core = &self.inner.core;
        let states = core.scale.as_ref().map(scale::Scale::states);
        // Relaxed: a snapshot of statistics; nothing else is read through them.
        let workers: Vec<WorkerStats> = core
            .counters
            .iter()
            .enumerate()
            .map(|(id, c)| {
                let (pid, restarts, launcher, transport) = slots.get(id).cloned().unwrap_or_default();
                WorkerStats {
                    id,
                    pid,
                    restarts,
                    launcher,
                    transport,
                    done: c.done.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                    running: c.running.load(Ordering::Relaxed),
                    busy: Duration::from_nanos(c.busy_ns.load(Ordering::Relaxed)),
                    up: states
                        .as_ref()
                        .is_none_or(|s| s.get(id) == Some(&scale::SlotState::Up)),
                }
            })
            .collect();
        Stats {
            queued: core.queue_rx.len()
                + core.requeued.load(Ordering::Relaxed)
                + core.held.load(Ordering::Relaxed),
            running: workers.iter().map(|w| w.running).sum(),
            done: workers.iter().map(|w| w.done).sum(),
            failed: workers.iter().map(|w| w.failed).sum::<u64>()
                + core.failed_elsewhere.load(Ordering::Relaxed),
            cancelled: core.cancelled.load(Ordering::Relaxed),
            workers,
            routes: core
                .metrics
                .get()
                .map(metrics::Metrics::snapshot)
                .unwrap_or_default(),
            exits: lock(&core.exits).iter().cloned().collect(),
            age: core.born.elapsed(),
        }
    }

    /// The conversation with process worker `w` (its current process), when
    /// the pool was built with [`worker_links`](PoolBuilder::worker_links).
    /// `None` for thread pools, without worker links, or while the worker
    /// restarts. A replacement worker has a new link.
    pub fn worker_link(&self, w: usize) -> Option<Arc<crate::link::Link>> {
        match &self.inner.backend {
            Backend::Processes(p) => p.link(w),
            Backend::Threads(_) => None,
        }
    }

    /// Why the pool failed, if it did (its restart limit was reached; the
    /// reason names the last exit or start failure).
    pub fn failure(&self) -> Option<String> {
        self.inner.core.failure()
    }

    /// Stops dispatching: queued jobs wait (nothing is lost), running ones
    /// finish, the workers' suspend hooks run. [`resume`](Self::resume)
    /// reverses it. A [`Runtime`]'s `suspend` does this for its pools.
    pub fn suspend(&self) {
        self.inner.suspend();
    }

    /// Resumes dispatching after [`suspend`](Self::suspend).
    pub fn resume(&self) {
        self.inner.resume();
    }

    /// Shuts the pool down (see [`Shutdown`]) and reports what it did.
    /// After it returns no worker process, zombie or worker thread of this
    /// pool is left (except thread workers stuck in a handler past the
    /// deadline, counted in the report). Calling it again returns the same
    /// report. `Drop` calls it with [`Shutdown::default`].
    pub fn shutdown(&self, how: Shutdown) -> ShutdownReport {
        self.inner.shutdown(how)
    }

    /// Sets whether the pool keeps its [`Runtime`]'s
    /// `run` from returning: `true` by default, `false` lets `run` return
    /// while it is alive (until it shuts down).
    pub fn set_keep_alive(&self, keep: bool) {
        self.inner.rt_ref.set_keep_alive(keep);
    }

    /// Whether the pool keeps its runtime alive.
    pub fn keeps_alive(&self) -> bool {
        self.inner.rt_ref.keeps_alive()
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
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.shutdown(Shutdown::default());
    }
}
