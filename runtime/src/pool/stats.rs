//! A snapshot of a pool's counters.

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Jobs a worker has taken and not finished.
    pub running: usize,
    /// Jobs finished with their output (or the handler's own error).
    pub done: u64,
    /// Jobs that failed otherwise (panic, worker exit, coding, timeout,
    /// cancelled).
    pub failed: u64,
    /// Of `failed`, the jobs that were cancelled.
    pub cancelled: u64,
    /// The same, per worker.
    pub workers: Vec<WorkerStats>,
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
    /// How many times this worker was replaced: restarts after a crash,
    /// and replacements the pool chose (a recycle, a worker ended for a
    /// stubborn cancelled job).
    pub restarts: u64,
    /// Jobs it finished.
    pub done: u64,
    /// Jobs that failed on it.
    pub failed: u64,
    /// Jobs it holds now.
    pub running: usize,
    /// Whether the slot has a worker (up, starting or restarting): `false`
    /// only on a scaling pool ([`PoolBuilder::min_workers`](super::PoolBuilder::min_workers)),
    /// for a slot whose worker left or is leaving.
    pub up: bool,
}
