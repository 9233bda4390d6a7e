//! Layers 5–6: pools of thread or process workers running [`Handlers`].
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
//! [`Ticket`] (or to the [`Map`] iterator that submitted it).
//!
//! Not for: restarting crashed workers, timeouts or signals (the
//! supervisor and lifecycle layers).

mod map;
mod processes;
mod serve;
mod threads;
mod ticket;
pub(crate) mod wire;

use std::any::Any;
use std::fmt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError as ChanTrySendError};

use crate::error::SendError;
use crate::job::{Failure, Handlers, Job};
use crate::port::IpcSender;

pub use map::Map;
pub use processes::WORKER_ID_ENV;
pub use serve::serve;
pub use ticket::{JobResult, Ticket};

/// How a finished job's result travels back, without its types.
pub(crate) enum Outcome {
    /// `Box<Result<J::Output, J::Error>>` from a thread worker.
    Value(Box<dyn Any + Send>),
    /// postcard bytes of `Result<J::Output, J::Error>` from a process worker.
    Bytes(Vec<u8>),
    /// Anything else.
    Failed(Failure),
}

/// What a job's submitter hears.
pub(crate) enum Event {
    /// A progress message (postcard bytes).
    Progress(Vec<u8>),
    /// The job's one outcome.
    Done(Outcome),
}

/// Where a job's events go: a channel, with a tag telling the jobs that
/// share it apart (a `map` uses one channel for all its jobs).
#[derive(Clone)]
pub(crate) struct Reply {
    pub(crate) tx: Sender<(u64, Event)>,
    pub(crate) tag: u64,
}

impl Reply {
    pub(crate) fn send(&self, event: Event) {
        // The submitter may have dropped its ticket: nobody to tell.
        let _ = self.tx.send((self.tag, event));
    }
}

/// Sends a job (given as `&dyn Any`) to a process worker as one frame:
/// the head, then the job's own postcard bytes. Monomorphised per job type.
pub(crate) type SendJobFn = fn(&IpcSender, &wire::ToWorker<'_>, &(dyn Any + Send)) -> Result<(), SendError>;

/// A job on its way to a worker.
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) route: &'static str,
    pub(crate) job: Box<dyn Any + Send>,
    pub(crate) send_job: SendJobFn,
    pub(crate) reply: Reply,
    pub(crate) cancelled: Option<Arc<AtomicBool>>,
    /// `Some(n)`: `job` is a `Vec<J>` of `n` jobs run as one chunk.
    pub(crate) batch: Option<u32>,
}

impl Task {
    /// How many jobs this task carries.
    pub(crate) fn jobs(&self) -> u64 {
        self.batch.map_or(1, u64::from)
    }

    /// The frame head that announces this task to a process worker.
    pub(crate) fn head(&self) -> wire::ToWorker<'static> {
        match self.batch {
            None => wire::ToWorker::Job {
                id: self.id,
                route: self.route,
            },
            Some(count) => wire::ToWorker::Batch {
                id: self.id,
                route: self.route,
                count,
            },
        }
    }
}

impl Task {
    pub(crate) fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the Release store in `Ticket::cancel`.
        self.cancelled.as_ref().is_some_and(|c| c.load(Ordering::Acquire))
    }
}

fn send_job<J: Job>(
    tx: &IpcSender,
    head: &wire::ToWorker<'_>,
    job: &(dyn Any + Send),
) -> Result<(), SendError> {
    match job.downcast_ref::<J>() {
        Some(job) => tx.feed_pair(head, job),
        None => Err(SendError::Unsupported("job value does not match its route")),
    }
}

fn send_chunk<J: Job>(
    tx: &IpcSender,
    head: &wire::ToWorker<'_>,
    jobs: &(dyn Any + Send),
) -> Result<(), SendError> {
    let Some(jobs) = jobs.downcast_ref::<Vec<J>>() else {
        return Err(SendError::Unsupported("chunk value does not match its route"));
    };
    tx.feed_with(std::any::type_name::<J>(), |buf| {
        crate::port::encode_into(head, buf)?;
        for job in jobs {
            // A u32 length, patched once the job is encoded, so the worker
            // can fail one undecodable job and still find the next.
            let at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            crate::port::encode_into(job, buf)?;
            let len = (buf.len() - at - 4) as u32;
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Ok(())
    })
}

/// What the shared queue carries.
pub(crate) enum Work {
    Task(Task),
    /// Tells one thread worker to stop (after the tasks queued before it).
    Stop,
}

/// Per-worker counters, each on its own cache line so workers never
/// contend on them.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct WorkerCounters {
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) running: AtomicUsize,
}

impl WorkerCounters {
    pub(crate) fn finish_n(&self, done: u64, failed: u64) {
        // Relaxed: statistics only; no other memory is published through them.
        if done > 0 {
            self.done.fetch_add(done, Ordering::Relaxed);
        }
        if failed > 0 {
            self.failed.fetch_add(failed, Ordering::Relaxed);
        }
    }
}

/// State both backends share: the bounded queue and the counters.
pub(crate) struct Core {
    pub(crate) queue_tx: Sender<Work>,
    pub(crate) queue_rx: Receiver<Work>,
    pub(crate) closed: AtomicBool,
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Vec<WorkerCounters>,
    /// Process workers whose port is still open (unused for threads).
    pub(crate) live_workers: AtomicUsize,
}

impl Core {
    /// Fails every task still queued with `why` (the pool can no longer run them).
    pub(crate) fn fail_queued(&self, why: &Failure) {
        while let Ok(w) = self.queue_rx.try_recv() {
            if let Work::Task(t) = w {
                t.reply.send(Event::Done(Outcome::Failed(why.clone())));
            }
        }
    }
}

enum Backend {
    Threads(threads::Threads),
    Processes(processes::Processes),
}

/// A pool of workers. Dropping it shuts it down gracefully (running and
/// queued jobs finish first).
pub struct Pool {
    core: Arc<Core>,
    backend: Backend,
    window: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field(
                "kind",
                &match self.backend {
                    Backend::Threads(_) => "threads",
                    Backend::Processes(_) => "processes",
                },
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`]: choose threads or processes, give the handlers.
#[derive(Debug, Default)]
pub struct PoolBuilder {
    kind: Option<Kind>,
    handlers: Option<Handlers>,
    queue_limit: Option<usize>,
    inflight: Option<usize>,
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Threads(usize),
    Processes(usize),
}

/// Why a pool could not be built.
#[derive(Debug)]
pub struct BuildError {
    what: String,
    source: Option<std::io::Error>,
}

impl BuildError {
    pub(crate) fn new(what: impl Into<String>) -> BuildError {
        BuildError {
            what: what.into(),
            source: None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, e: std::io::Error) -> BuildError {
        BuildError {
            what: what.into(),
            source: Some(e),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl PoolBuilder {
    /// `n` thread workers in this process.
    pub fn threads(mut self, n: usize) -> Self {
        self.kind = Some(Kind::Threads(n));
        self
    }

    /// `n` process workers. By default each runs this executable again,
    /// which must call `portpool::worker::serve_if_worker` first thing in
    /// `main`; see [`worker_command`](Self::worker_command) for a separate binary.
    pub fn processes(mut self, n: usize) -> Self {
        self.kind = Some(Kind::Processes(n));
        self
    }

    /// The handlers the workers run (thread workers run these; process
    /// workers run their own registry, which should match).
    pub fn handlers(mut self, handlers: Handlers) -> Self {
        self.handlers = Some(handlers);
        self
    }

    /// At most `n` jobs wait in the queue; `submit` blocks past that and
    /// `try_submit` returns [`TrySubmitError::Full`]. Default: 1024.
    pub fn queue_limit(mut self, n: usize) -> Self {
        self.queue_limit = Some(n.max(1));
        self
    }

    /// Jobs in flight per process worker (pipelining). Default: 4.
    pub fn inflight_per_worker(mut self, k: usize) -> Self {
        self.inflight = Some(k.max(1));
        self
    }

    /// Runs process workers from this command (a binary that calls
    /// `portpool::worker::run(handlers)`) instead of this executable.
    pub fn worker_command(mut self, command: Command) -> Self {
        self.command = Some(command);
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Pool, BuildError> {
        let kind = self
            .kind
            .ok_or_else(|| BuildError::new("choose .threads(n) or .processes(n)"))?;
        let n = match kind {
            Kind::Threads(n) | Kind::Processes(n) => n,
        };
        if n == 0 {
            return Err(BuildError::new("a pool needs at least one worker"));
        }
        let handlers = self.handlers.unwrap_or_default();
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(self.queue_limit.unwrap_or(1024));
        let core = Arc::new(Core {
            queue_tx,
            queue_rx,
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            counters: (0..n).map(|_| WorkerCounters::default()).collect(),
            live_workers: AtomicUsize::new(n),
        });
        let inflight = self.inflight.unwrap_or(4);
        let backend = match kind {
            Kind::Threads(n) => Backend::Threads(threads::Threads::spawn(core.clone(), handlers, n)?),
            Kind::Processes(n) => {
                let command = match self.command {
                    Some(c) => c,
                    None => {
                        let exe = std::env::current_exe()
                            .map_err(|e| BuildError::io("cannot find this executable to re-run", e))?;
                        Command::new(exe)
                    }
                };
                Backend::Processes(processes::Processes::spawn(core.clone(), command, n, inflight)?)
            }
        };
        let window = match kind {
            Kind::Threads(n) => 4 * n,
            Kind::Processes(n) => 2 * n * inflight,
        }
        .max(2);
        Ok(Pool {
            core,
            backend,
            window,
        })
    }
}

/// Why [`Pool::submit`] did not take a job; the job is given back.
pub enum SubmitError<J> {
    /// The pool is shutting down.
    Closed(J),
}

/// Why [`Pool::try_submit`] did not take a job; the job is given back.
pub enum TrySubmitError<J> {
    /// The queue is full.
    Full(J),
    /// The pool is shutting down.
    Closed(J),
}

/// Why [`Pool::submit_timeout`] did not take a job; the job is given back.
pub enum SubmitTimeoutError<J> {
    /// The queue stayed full for the whole timeout.
    Timeout(J),
    /// The pool is shutting down.
    Closed(J),
}

impl<J> fmt::Display for SubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the pool is shutting down")
    }
}

impl<J> fmt::Display for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("the pool's queue is full"),
            TrySubmitError::Closed(_) => f.write_str("the pool is shutting down"),
        }
    }
}

impl<J> fmt::Display for SubmitTimeoutError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitTimeoutError::Timeout(_) => f.write_str("the pool's queue stayed full"),
            SubmitTimeoutError::Closed(_) => f.write_str("the pool is shutting down"),
        }
    }
}

// Debug without `J: Debug`, so `?` works for any job type (crossbeam's
// send errors do the same).
impl<J> fmt::Debug for SubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Closed(..)")
    }
}

impl<J> fmt::Debug for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySubmitError::Full(_) => "Full(..)",
            TrySubmitError::Closed(_) => "Closed(..)",
        })
    }
}

impl<J> fmt::Debug for SubmitTimeoutError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubmitTimeoutError::Timeout(_) => "Timeout(..)",
            SubmitTimeoutError::Closed(_) => "Closed(..)",
        })
    }
}

impl<J> std::error::Error for SubmitError<J> {}
impl<J> std::error::Error for TrySubmitError<J> {}
impl<J> std::error::Error for SubmitTimeoutError<J> {}

/// A snapshot of a pool's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Jobs a worker has taken and not finished.
    pub running: usize,
    /// Jobs finished with their output (or the handler's own error).
    pub done: u64,
    /// Jobs that failed otherwise (panic, worker exit, coding, cancelled).
    pub failed: u64,
    /// The same, per worker.
    pub workers: Vec<WorkerStats>,
}

/// One worker's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// The worker's id.
    pub id: usize,
    /// Its process id (process workers).
    pub pid: Option<u32>,
    /// Jobs it finished.
    pub done: u64,
    /// Jobs that failed on it.
    pub failed: u64,
    /// Jobs it holds now.
    pub running: usize,
}

/// How long to wait without blocking before a blocking wait on a channel:
/// a result that arrives within it skips a cross-core wake-up.
pub(crate) const CHANNEL_SPIN: Duration = Duration::from_micros(50);

/// Receives from `rx`, retrying without blocking (and yielding) for
/// `CHANNEL_SPIN` first, then blocking until `deadline`.
pub(crate) fn recv_spin<T>(rx: &Receiver<T>, deadline: Option<Instant>) -> Option<T> {
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        if start.elapsed() >= CHANNEL_SPIN {
            break;
        }
        // Yield every other try, as the port's receive spin does.
        tries = tries.wrapping_add(1);
        if tries % 2 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    match deadline {
        None => rx.recv().ok(),
        Some(d) => rx.recv_deadline(d).ok(),
    }
}

impl Pool {
    /// Starts building a pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.core.counters.len()
    }

    fn task<J: Job>(&self, job: J, reply: Reply, cancelled: Option<Arc<AtomicBool>>) -> Task {
        Task {
            // Relaxed: ids only need to be unique.
            id: self.core.next_id.fetch_add(1, Ordering::Relaxed),
            route: J::NAME,
            job: Box::new(job),
            send_job: send_job::<J>,
            reply,
            cancelled,
            batch: None,
        }
    }

    /// Submits `jobs` as one chunk whose events go to `reply` (used by
    /// `map`). Blocks while the queue is full. Gives the jobs back if the
    /// pool is closed.
    pub(crate) fn submit_chunk<J: Job>(&self, jobs: Vec<J>, reply: Reply) -> Result<(), Vec<J>> {
        if self.is_closed() {
            return Err(jobs);
        }
        let task = Task {
            // Relaxed: ids only need to be unique.
            id: self.core.next_id.fetch_add(1, Ordering::Relaxed),
            route: J::NAME,
            batch: Some(jobs.len() as u32),
            job: Box::new(jobs),
            send_job: send_chunk::<J>,
            reply,
            cancelled: None,
        };
        match self.core.queue_tx.send(Work::Task(task)) {
            Ok(()) => {
                self.after_enqueue();
                Ok(())
            }
            Err(e) => match e.0 {
                Work::Task(t) => match t.job.downcast::<Vec<J>>() {
                    Ok(jobs) => Err(*jobs),
                    Err(_) => unreachable!("a chunk built from a Vec<J> holds a Vec<J>"),
                },
                Work::Stop => unreachable!("only tasks are submitted"),
            },
        }
    }

    fn take_back<J: Job>(work: Work) -> J {
        match work {
            Work::Task(t) => match t.job.downcast::<J>() {
                Ok(j) => *j,
                Err(_) => unreachable!("a task built from a J holds a J"),
            },
            Work::Stop => unreachable!("only tasks are submitted"),
        }
    }

    fn after_enqueue(&self) {
        if let Backend::Processes(p) = &self.backend {
            p.kick();
        }
    }

    fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release store in `shutdown`.
        self.core.closed.load(Ordering::Acquire)
    }

    /// Submits a job, blocking while the queue is full.
    pub fn submit<J: Job>(&self, job: J) -> Result<Ticket<J>, SubmitError<J>> {
        if self.is_closed() {
            return Err(SubmitError::Closed(job));
        }
        let (ticket, reply, flag) = Ticket::new();
        let task = self.task(job, reply, Some(flag));
        match self.core.queue_tx.send(Work::Task(task)) {
            Ok(()) => {
                self.after_enqueue();
                Ok(ticket)
            }
            Err(e) => Err(SubmitError::Closed(Self::take_back(e.0))),
        }
    }

    /// Submits a job if the queue has room, or gives it back.
    pub fn try_submit<J: Job>(&self, job: J) -> Result<Ticket<J>, TrySubmitError<J>> {
        if self.is_closed() {
            return Err(TrySubmitError::Closed(job));
        }
        let (ticket, reply, flag) = Ticket::new();
        let task = self.task(job, reply, Some(flag));
        match self.core.queue_tx.try_send(Work::Task(task)) {
            Ok(()) => {
                self.after_enqueue();
                Ok(ticket)
            }
            Err(ChanTrySendError::Full(w)) => Err(TrySubmitError::Full(Self::take_back(w))),
            Err(ChanTrySendError::Disconnected(w)) => Err(TrySubmitError::Closed(Self::take_back(w))),
        }
    }

    /// Submits a job, waiting at most `timeout` for room in the queue.
    pub fn submit_timeout<J: Job>(
        &self,
        job: J,
        timeout: Duration,
    ) -> Result<Ticket<J>, SubmitTimeoutError<J>> {
        if self.is_closed() {
            return Err(SubmitTimeoutError::Closed(job));
        }
        let (ticket, reply, flag) = Ticket::new();
        let task = self.task(job, reply, Some(flag));
        match self.core.queue_tx.send_timeout(Work::Task(task), timeout) {
            Ok(()) => {
                self.after_enqueue();
                Ok(ticket)
            }
            Err(crossbeam_channel::SendTimeoutError::Timeout(w)) => {
                Err(SubmitTimeoutError::Timeout(Self::take_back(w)))
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(w)) => {
                Err(SubmitTimeoutError::Closed(Self::take_back(w)))
            }
        }
    }

    /// Runs every job of `jobs` and yields the results in input order.
    /// Pulls from `jobs` lazily, keeping a bounded number in flight, so an
    /// endless iterator works and a slow job does not make memory grow.
    pub fn map<J: Job, I: IntoIterator<Item = J>>(&self, jobs: I) -> Map<'_, J, I::IntoIter> {
        Map::new(self, jobs.into_iter(), self.window, true)
    }

    /// Like [`map`](Self::map), but yields results as they finish.
    pub fn map_unordered<J: Job, I: IntoIterator<Item = J>>(&self, jobs: I) -> Map<'_, J, I::IntoIter> {
        Map::new(self, jobs.into_iter(), self.window, false)
    }

    /// Runs `job` once on every worker and returns the results in worker
    /// order.
    pub fn broadcast<J: Job + Clone>(
        &self,
        job: J,
    ) -> Vec<Result<J::Output, crate::job::JobError<J::Error>>> {
        let tickets: Vec<Ticket<J>> = (0..self.workers())
            .map(|w| {
                let (ticket, reply, flag) = Ticket::new();
                let task = self.task(job.clone(), reply, Some(flag));
                match &self.backend {
                    Backend::Threads(t) => t.send_to(w, task),
                    Backend::Processes(p) => p.send_to(w, task),
                }
                ticket
            })
            .collect();
        tickets.into_iter().map(Ticket::wait).collect()
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        let pids = match &self.backend {
            Backend::Threads(_) => vec![None; self.workers()],
            Backend::Processes(p) => p.pids(),
        };
        // Relaxed: a snapshot of statistics; nothing else is read through them.
        let workers: Vec<WorkerStats> = self
            .core
            .counters
            .iter()
            .enumerate()
            .map(|(id, c)| WorkerStats {
                id,
                pid: pids.get(id).copied().flatten(),
                done: c.done.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                running: c.running.load(Ordering::Relaxed),
            })
            .collect();
        Stats {
            queued: self.core.queue_rx.len(),
            running: workers.iter().map(|w| w.running).sum(),
            done: workers.iter().map(|w| w.done).sum(),
            failed: workers.iter().map(|w| w.failed).sum(),
            workers,
        }
    }

    /// Shuts the pool down gracefully: no new jobs are taken, queued and
    /// running jobs finish, then the workers stop (threads are joined,
    /// processes are waited for). Called by `Drop` too.
    pub fn shutdown(&mut self) {
        // Release: pairs with the Acquire load in `is_closed`.
        if self.core.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        match &mut self.backend {
            Backend::Threads(t) => t.shutdown(),
            Backend::Processes(p) => p.shutdown(),
        }
        // A job that raced past the closed flag after the workers stopped.
        self.core
            .fail_queued(&Failure::Rejected("the pool shut down before the job ran".into()));
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}
