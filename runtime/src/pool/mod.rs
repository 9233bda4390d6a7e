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
mod submit;
use submit::Prepared;
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

impl Pool {
    /// Starts building a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.core.counters.len()
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
    /// every worker up at the time. On a suspended pool the copies wait for
    /// the resume (on both backends), so this blocks until then.
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
