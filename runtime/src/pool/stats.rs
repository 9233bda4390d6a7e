//! A snapshot of a pool's counters.

use std::collections::BTreeMap;
use std::time::Duration;

use super::metrics::RouteStats;

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Jobs waiting to run: in the queue, or (on a suspended thread pool)
    /// taken by a worker that waits for the resume to run them.
    pub queued: usize,
    /// Jobs a worker has taken and not finished.
    pub running: usize,
    /// Jobs finished with their output (or the handler's own error). A
    /// process worker's result counts here when it arrives: one the
    /// supervisor then cannot decode as the job's type still counts as
    /// done, while its ticket reports `JobError::Codec`.
    pub done: u64,
    /// Jobs that failed otherwise (panic, worker exit, coding, timeout,
    /// cancelled). Jobs refused at submit are not counted.
    pub failed: u64,
    /// Of `failed`, the jobs that were cancelled. A queued job counts when
    /// its turn comes (it is dropped then), a running one when its worker
    /// answers or is replaced; its ticket says `Cancelled` at once.
    pub cancelled: u64,
    /// The same, per worker.
    pub workers: Vec<WorkerStats>,
    /// Per job type (route name): queue-wait and run-time quantiles and
    /// counts, when the pool keeps metrics ([`PoolBuilder::metrics`](super::PoolBuilder::metrics)).
    /// One entry per route the pool's handlers serve: a job for a route
    /// they do not serve (it fails with `JobError::UnknownRoute`) counts
    /// in `failed` and in its worker's counts, not here, so the routes'
    /// counts may add up to less than the pool's.
    pub routes: BTreeMap<String, RouteStats>,
    /// The last 32 workers' exits and start failures, oldest first: why
    /// each was replaced (crash, recycle, leaving idle, shutdown).
    pub exits: Vec<WorkerExit>,
    /// How long ago the pool was built.
    pub age: Duration,
}

impl Stats {
    /// The share of the pool's life worker `w` spent running jobs (0 to
    /// 1; 0 without metrics).
    pub fn utilization(&self, w: usize) -> f64 {
        match self.workers.get(w) {
            Some(s) if !self.age.is_zero() => s.busy.as_secs_f64() / self.age.as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// A worker's exit (or failed start), as [`Stats::exits`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerExit {
    /// The worker's id.
    pub worker: usize,
    /// How it ended and why, as [`PoolEvent::WorkerExited`](crate::supervisor::PoolEvent::WorkerExited) says.
    pub status: String,
    /// Whether the pool ended it itself (a recycle, an idle worker, a
    /// shutdown); `false` for a crash or a failed start.
    pub expected: bool,
}

/// One worker's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// The worker's id.
    pub id: usize,
    /// Its process id (process workers; `None` while it restarts). For a
    /// worker started through a launcher, the launcher's (ssh's or srun's)
    /// process on this machine.
    pub pid: Option<u32>,
    /// Where it runs: `"thread"`, `"local"`, or its launcher, such as
    /// `"ssh me@node1"` or `"srun"` ([`Launcher`](crate::launch::Launcher)'s `Display`).
    pub launcher: String,
    /// What carries its jobs and results: `"shared memory"`, `"socket"`
    /// or `"pipes"` (a launcher's), `"in-process"` for a thread worker, and
    /// `""` while a process worker restarts
    /// ([`PoolBuilder::shared_memory`](super::PoolBuilder::shared_memory)).
    pub transport: &'static str,
    /// How many times this worker was replaced: restarts after a crash,
    /// and replacements the pool chose (a recycle, a worker ended for a
    /// stubborn cancelled job).
    pub restarts: u64,
    /// Jobs it finished.
    pub done: u64,
    /// Jobs that failed on it (cancelled ones it was running included:
    /// the pool's `failed` is the sum of these and of the jobs that failed
    /// before any worker ran them).
    pub failed: u64,
    /// Jobs it holds now.
    pub running: usize,
    /// Time it spent running jobs (with [`PoolBuilder::metrics`](super::PoolBuilder::metrics);
    /// a process worker's includes the trips to it and back, and a job it
    /// holds behind another counts from that one's answer).
    pub busy: Duration,
    /// Whether the slot has a worker (up, starting or restarting): `false`
    /// only on a scaling pool ([`PoolBuilder::min_workers`](super::PoolBuilder::min_workers)),
    /// for a slot whose worker left or is leaving.
    pub up: bool,
}
