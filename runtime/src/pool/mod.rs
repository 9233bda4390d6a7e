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
//! [`Ticket`] (or to the [`Map`] iterator that submitted it). What happens
//! on crashes, timeouts, cancellation and shutdown is the supervisor's
//! part: see [`crate::supervisor`] and its `README.md`.

mod map;
mod processes;
pub(crate) mod serve;
mod threads;
mod ticket;
pub(crate) mod wire;

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

pub use map::Map;
pub use processes::{WORKER_ID_ENV, WORKER_LINK_ENV};
pub(crate) use processes::{describe_status, wait_or_kill};
pub use serve::serve;
pub use ticket::{JobResult, Ticket};

pub(crate) use crate::util::lock;

pub(crate) use crate::task::{Event, FastRead, Outcome, Reply};

/// Sends a job (given as `&dyn Any`) to a process worker as one frame:
/// the head, then the job's own postcard bytes. Monomorphised per job type.
/// A chunk's sender also tells the chunk's `reply` which of its jobs could
/// not be encoded (`Event::Sent`), before the frame can reach the worker.
pub(crate) type SendJobFn =
    fn(&IpcSender, &wire::ToWorker<'_>, &(dyn Any + Send), Option<&Reply>) -> Result<(), SendFail>;

/// Why a job could not be queued on a worker's port.
pub(crate) enum SendFail {
    /// The job itself: it fails with this.
    Job(Failure),
    /// The port: the worker is going away.
    Port(String),
}

/// A job as it travels: its value, or its bytes.
pub(crate) enum Payload {
    /// `Box<J>`, or `Box<Vec<J>>` for a thread pool's chunk.
    Value(Box<dyn Any + Send>),
    /// The job's postcard bytes (a chunk's: each job a `u32` LE length and
    /// its bytes), encoded when it was submitted to wait in a process
    /// pool's queue, so an unencodable job fails at `submit`.
    Encoded(Vec<u8>),
    /// Out for encoding into a worker's port (`dispatch`): a crash in that
    /// moment cannot send it again.
    Lent,
}

/// A job on its way to a worker.
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) route: &'static str,
    pub(crate) job: Payload,
    pub(crate) send_job: SendJobFn,
    pub(crate) reply: Reply,
    pub(crate) state: Arc<JobState>,
    /// `Some(n)`: `job` is a chunk of `n` jobs run as one.
    pub(crate) batch: Option<u32>,
    /// Run timeout, counted from dispatch.
    pub(crate) timeout: Option<Duration>,
    /// How many more times a worker crash may send it back to the queue.
    pub(crate) retries: u32,
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

    /// The job value back, if the task still holds it as a value.
    fn into_value<T: 'static>(self) -> Option<T> {
        match self.job {
            Payload::Value(v) => v.downcast::<T>().ok().map(|b| *b),
            _ => None,
        }
    }
}

/// The failure of a job of type `J` whose encoding failed in the supervisor.
pub(crate) fn encode_failure<J: Job>(job: &J, e: &postcard::Error) -> Failure {
    Failure::Codec(
        crate::job::Side::Supervisor,
        format!(
            "the supervisor could not send a `{}` job: {}",
            J::NAME,
            crate::codec::encode_failure(job, e)
        ),
    )
}

/// Encodes `job` for a process worker, catching a panicking `Serialize`;
/// on failure `buf` is as it was.
#[inline]
fn encode_job<J: Job>(job: &J, buf: &mut Vec<u8>) -> Result<(), Failure> {
    let at = buf.len();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::port::encode_into(job, buf)
    })) {
        Ok(Ok(())) => Ok(()),
        other => {
            buf.truncate(at);
            Err(encode_job_failure(job, other))
        }
    }
}

#[cold]
#[inline(never)]
fn encode_job_failure<J: Job>(
    job: &J,
    res: Result<Result<(), postcard::Error>, Box<dyn Any + Send>>,
) -> Failure {
    match res {
        Ok(Err(e)) => encode_failure(job, &e),
        Ok(Ok(())) => Failure::Codec(crate::job::Side::Supervisor, "no failure".into()),
        Err(payload) => Failure::Codec(
            crate::job::Side::Supervisor,
            format!(
                "the supervisor could not send a `{}` job: its Serialize impl panicked: {}",
                J::NAME,
                crate::util::panic_message(&*payload)
            ),
        ),
    }
}

fn send_job<J: Job>(
    tx: &IpcSender,
    head: &wire::ToWorker<'_>,
    job: &(dyn Any + Send),
    _: Option<&Reply>,
) -> Result<(), SendFail> {
    let Some(job) = job.downcast_ref::<J>() else {
        return Err(SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            "job value does not match its route".into(),
        )));
    };
    let mut failed = None;
    let res = tx.feed_with(std::any::type_name::<J>(), |buf| {
        crate::port::encode_into(head, buf)?;
        encode_job(job, buf).map_err(|f| {
            failed = Some(f);
            postcard::Error::SerdeSerCustom
        })
    });
    match (res, failed) {
        (_, Some(f)) => Err(SendFail::Job(f)),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(send_failure(e)),
    }
}

/// Sends a task whose job was encoded at submission: the head, then its bytes.
pub(crate) fn send_encoded(tx: &IpcSender, head: &wire::ToWorker<'_>, bytes: &[u8]) -> Result<(), SendFail> {
    tx.feed_with("an encoded job", |buf| {
        crate::port::encode_into(head, buf)?;
        buf.extend_from_slice(bytes);
        Ok(())
    })
    .map_err(send_failure)
}

/// What a failed append to a worker's port means for the job.
fn send_failure(e: SendError) -> SendFail {
    match e {
        SendError::TooLarge { len, limit } => SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            format!("the job encodes to {len} bytes, over the frame limit of {limit}"),
        )),
        SendError::Encode(e) => SendFail::Job(Failure::Codec(crate::job::Side::Supervisor, e.to_string())),
        other => SendFail::Port(other.to_string()),
    }
}

/// Largest encoded chunk a `map` aims for: it stops growing its chunks
/// when their jobs would take more bytes than this.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

thread_local! {
    /// Where a chunk's jobs are encoded before its frame is written (kept,
    /// so a dispatching thread does not allocate per chunk).
    static CHUNK_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends a chunk (given as `&Vec<J>`) to a process worker: each job is
/// encoded alone, length-prefixed, so one that will not encode fails alone
/// (a *hole*, reported to the map with `Event::Sent` before the frame can
/// reach the worker) and the rest go, under a head that counts them.
fn send_chunk<J: Job>(
    tx: &IpcSender,
    head: &wire::ToWorker<'_>,
    jobs: &(dyn Any + Send),
    reply: Option<&Reply>,
) -> Result<(), SendFail> {
    let (Some(jobs), wire::ToWorker::Batch { id, route, .. }) = (jobs.downcast_ref::<Vec<J>>(), head) else {
        return Err(SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            "chunk value does not match its route".into(),
        )));
    };
    CHUNK_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        let mut holes = Vec::new();
        let mut count = 0u32;
        for (i, job) in jobs.iter().enumerate() {
            // A u32 length, patched once the job is encoded, so the worker
            // can fail one undecodable job and still find the next.
            let at = scratch.len();
            scratch.extend_from_slice(&[0; 4]);
            match encode_job(job, &mut scratch) {
                Ok(()) => match u32::try_from(scratch.len() - at - 4) {
                    Ok(len) => {
                        scratch[at..at + 4].copy_from_slice(&len.to_le_bytes());
                        count += 1;
                    }
                    Err(_) => {
                        scratch.truncate(at);
                        holes.push((
                            i,
                            Failure::Codec(
                                crate::job::Side::Supervisor,
                                "the job encodes to more than 4 GiB".into(),
                            ),
                        ));
                    }
                },
                Err(f) => {
                    scratch.truncate(at);
                    holes.push((i, f));
                }
            }
        }
        if let Some(reply) = reply {
            reply.send(Event::Sent {
                holes,
                bytes: scratch.len(),
            });
        }
        let head = wire::ToWorker::Batch {
            id: *id,
            route,
            count,
        };
        let res = tx
            .feed_with(std::any::type_name::<J>(), |buf| {
                crate::port::encode_into(&head, buf)?;
                buf.extend_from_slice(&scratch);
                Ok(())
            })
            .map_err(send_failure);
        // A chunk of large jobs must not keep its memory in this thread.
        if scratch.capacity() > CHUNK_BYTES {
            *scratch = Vec::new();
        }
        res
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

/// A callback that hears [`PoolEvent`]s.
pub(crate) type EventFn = Arc<dyn Fn(&PoolEvent) + Send + Sync>;

/// The pool's settings, as built.
pub(crate) struct Config {
    pub(crate) restart: RestartPolicy,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) per_route: HashMap<&'static str, RouteConfig>,
    pub(crate) on_event: Option<EventFn>,
}

/// Settings for one job type, over the pool's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RouteConfig {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: Option<u32>,
}

/// Wakes a shutdown that waits for the pool to go idle. Workers notify it
/// only while someone waits, so the answer path makes no futex call.
#[derive(Default)]
pub(crate) struct Idle {
    m: Mutex<()>,
    cv: Condvar,
    waiting: AtomicBool,
}

impl Idle {
    pub(crate) fn notify(&self) {
        // SeqCst: pairs with the store in `wait_until`, which then re-checks
        // under the lock.
        if self.waiting.load(Ordering::SeqCst) {
            let _g = lock(&self.m);
            self.cv.notify_all();
        }
    }

    /// Waits until `done()` or `deadline`; returns whether `done()`.
    /// (`None`: no deadline.)
    fn wait_until(&self, deadline: Option<Instant>, done: impl Fn() -> bool) -> bool {
        self.waiting.store(true, Ordering::SeqCst);
        let mut g = lock(&self.m);
        let ok = loop {
            if done() {
                break true;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break false;
            }
            let left = deadline.map_or(Duration::MAX, |d| d - now);
            // The 20 ms bound only guards against a missed notification.
            g = self
                .cv
                .wait_timeout(g, left.min(Duration::from_millis(20)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        };
        drop(g);
        self.waiting.store(false, Ordering::SeqCst);
        ok
    }
}

/// Wakes submitters that wait for a process worker's free slot (a pool
/// with a queue limit of 0 has no queue to wait in). Freeing a slot costs
/// an atomic load unless someone waits.
#[derive(Default)]
pub(crate) struct FreeGate {
    /// Bumped at every wake-up, so a waiter that looked before it never
    /// sleeps through it.
    generation: Mutex<u64>,
    cv: Condvar,
    waiters: AtomicUsize,
}

impl FreeGate {
    /// A slot was freed (or a worker started, or the pool closed).
    pub(crate) fn notify(&self) {
        // SeqCst: pairs with the increment in `wait`; either the waiter's
        // next look sees the slot, or this sees the waiter.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            *lock(&self.generation) += 1;
            self.cv.notify_all();
        }
    }

    /// Calls `attempt` until it succeeds, `give_up()`, or `deadline`;
    /// sleeps between attempts until a slot is freed.
    pub(crate) fn wait<T>(
        &self,
        mut attempt: impl FnMut() -> Option<T>,
        give_up: impl Fn() -> bool,
        deadline: Option<Instant>,
    ) -> Option<T> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let out = loop {
            let seen = *lock(&self.generation);
            if let Some(v) = attempt() {
                break Some(v);
            }
            if give_up() {
                break None;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break None;
            }
            let g = lock(&self.generation);
            if *g == seen {
                // The bound only guards against a missed notification.
                let left = deadline.map_or(Duration::MAX, |d| d - now);
                let _ = self.cv.wait_timeout(g, left.min(Duration::from_millis(50)));
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

/// State both backends share: the bounded queue, the counters, the
/// supervisor's settings and state.
pub(crate) struct Core {
    /// At most this many jobs wait; 0: none wait (a job is taken only
    /// when a worker can start it).
    pub(crate) queue_limit: usize,
    /// Submitters waiting for a free worker slot (queue limit 0).
    pub(crate) free: FreeGate,
    pub(crate) queue_tx: Sender<Work>,
    pub(crate) queue_rx: Receiver<Work>,
    /// Tasks sent back by a crash (retry) or by the kill of a cancelled
    /// job's worker (innocent neighbours): they go before the queue.
    requeue: Mutex<VecDeque<Task>>,
    requeued: AtomicUsize,
    /// No new jobs are taken (shutdown started, or the pool failed).
    pub(crate) closed: AtomicBool,
    /// Shutdown has begun: exits are expected, nothing restarts.
    pub(crate) stopping: AtomicBool,
    /// Set by a second SIGINT (or `immediate`) during a graceful shutdown.
    pub(crate) hurry: AtomicBool,
    pub(crate) suspended: AtomicBool,
    suspend_gate: (Mutex<()>, Condvar),
    /// Why the pool failed (restart limit), once it has.
    failure: Mutex<Option<String>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Vec<WorkerCounters>,
    /// Jobs cancelled, and jobs failed without a worker to count them on.
    cancelled: AtomicU64,
    failed_elsewhere: AtomicU64,
    /// Worker processes signalled by the shutdown.
    pub(crate) killed_by_shutdown: AtomicUsize,
    pub(crate) idle: Idle,
    pub(crate) control: Sender<Control>,
    pub(crate) config: Config,
    pub(crate) handlers: Handlers,
}

impl Core {
    /// The next task: a re-queued one first, then the queue's.
    pub(crate) fn pop(&self) -> Option<Work> {
        // Acquire: pairs with the Release increment in `requeue`.
        if self.requeued.load(Ordering::Acquire) > 0 {
            let mut q = lock(&self.requeue);
            if let Some(t) = q.pop_front() {
                self.requeued.store(q.len(), Ordering::Release);
                return Some(Work::Task(t));
            }
        }
        self.queue_rx.try_recv().ok()
    }

    /// Whether any task waits (queued or re-queued).
    pub(crate) fn has_queued(&self) -> bool {
        self.requeued.load(Ordering::Acquire) > 0 || !self.queue_rx.is_empty()
    }

    /// Puts `t` back at the head of the line.
    pub(crate) fn requeue(&self, t: Task) {
        let mut q = lock(&self.requeue);
        q.push_back(t);
        self.requeued.store(q.len(), Ordering::Release);
    }

    /// Fails every task still queued with `why` (the pool can no longer run them).
    pub(crate) fn fail_queued(&self, why: &Failure) {
        let mut tasks: Vec<Task> = lock(&self.requeue).drain(..).collect();
        self.requeued.store(0, Ordering::Release);
        while let Ok(w) = self.queue_rx.try_recv() {
            if let Work::Task(t) = w {
                tasks.push(t);
            }
        }
        for t in tasks {
            self.retire_task(&t, why.clone(), None);
        }
    }

    /// Delivers `f` as the outcome of a job (of `jobs` jobs) that leaves
    /// the pool without an answer, unless its outcome was settled already.
    /// Counts it on `worker`, or on the pool. Returns whether it delivered.
    /// (A timer or the shutdown, which do not take the task off the books:
    /// whoever removes it later counts it; see `retire_failure`.)
    pub(crate) fn deliver_failure(
        &self,
        state: &JobState,
        reply: &Reply,
        jobs: u64,
        f: Failure,
        worker: Option<usize>,
    ) -> bool {
        if !state.settle() {
            return false;
        }
        // Relaxed: statistics only.
        if matches!(f, Failure::Cancelled) {
            self.cancelled.fetch_add(jobs, Ordering::Relaxed);
        }
        match worker {
            Some(w) => self.counters[w].finish_n(0, jobs),
            None => {
                self.failed_elsewhere.fetch_add(jobs, Ordering::Relaxed);
            }
        }
        reply.fail(f);
        true
    }

    /// Like [`deliver_failure`](Self::deliver_failure), for the one place
    /// that takes the task off the pool's books: a task whose ticket
    /// cancelled it is counted as cancelled here.
    pub(crate) fn retire_failure(
        &self,
        state: &JobState,
        reply: &Reply,
        jobs: u64,
        f: Failure,
        worker: Option<usize>,
    ) -> bool {
        let delivered = self.deliver_failure(state, reply, jobs, f, worker);
        if !delivered {
            self.count_settled_elsewhere(state, jobs);
        }
        delivered
    }

    /// [`retire_failure`](Self::retire_failure) for a whole task.
    pub(crate) fn retire_task(&self, t: &Task, f: Failure, worker: Option<usize>) -> bool {
        self.retire_failure(&t.state, &t.reply, t.jobs(), f, worker)
    }

    /// A job whose outcome someone else settled leaves the pool: if its
    /// ticket cancelled it, count it as cancelled now (once).
    pub(crate) fn count_settled_elsewhere(&self, state: &JobState, jobs: u64) {
        if state.settled_by_cancel() {
            // Relaxed: statistics only.
            self.cancelled.fetch_add(jobs, Ordering::Relaxed);
            self.failed_elsewhere.fetch_add(jobs, Ordering::Relaxed);
        }
    }

    /// Reports `e` to the log and to the pool's event callback.
    pub(crate) fn event(&self, e: PoolEvent) {
        match &e {
            PoolEvent::WorkerStarted {
                worker,
                pid,
                restarts,
            } => match pid {
                Some(pid) => log::info!("worker {worker} started (pid {pid}, restarts {restarts})"),
                None => log::info!("worker {worker} started (thread, restarts {restarts})"),
            },
            PoolEvent::WorkerExited {
                worker,
                pid,
                status,
                jobs_held,
                expected,
            } => {
                let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                if *expected {
                    log::info!("worker {worker}{pid} exited: {status}");
                } else {
                    log::warn!("worker {worker}{pid} exited: {status}; it held {jobs_held} job(s)");
                }
            }
            PoolEvent::StartFailed { worker, reason } => {
                log::error!("worker {worker} could not start: {reason}")
            }
            PoolEvent::PoolFailed { reason } => log::error!("the pool failed: {reason}"),
        }
        if let Some(f) = &self.config.on_event {
            crate::util::call_logged("pool event callback", || f(&e));
        }
    }

    /// Turns the pool failed (restart limit reached): it takes no more
    /// jobs, and queued ones fail with `reason`.
    pub(crate) fn fail_pool(&self, reason: String) {
        {
            let mut f = lock(&self.failure);
            if f.is_some() {
                return;
            }
            *f = Some(reason.clone());
        }
        // Release: pairs with the Acquire load in `is_closed`.
        self.closed.store(true, Ordering::Release);
        self.event(PoolEvent::PoolFailed {
            reason: reason.clone(),
        });
        self.fail_queued(&Failure::Rejected(format!("the pool failed: {reason}")));
        self.idle.notify();
        self.free.notify();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Blocks a thread worker while the pool is suspended.
    pub(crate) fn wait_while_suspended(&self) {
        // Acquire: pairs with the Release stores in `set_suspended`.
        if !self.suspended.load(Ordering::Acquire) {
            return;
        }
        let (m, cv) = &self.suspend_gate;
        let mut g = lock(m);
        while self.suspended.load(Ordering::Acquire) && !self.hurry.load(Ordering::Acquire) {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn set_suspended(&self, on: bool) {
        let (m, cv) = &self.suspend_gate;
        let _g = lock(m);
        self.suspended.store(on, Ordering::Release);
        cv.notify_all();
    }

    /// The run timeout and retries of a job of route `route`.
    fn limits(&self, route: &str) -> (Option<Duration>, u32) {
        let rc = self.config.per_route.get(route).copied().unwrap_or_default();
        (
            rc.timeout.or(self.config.job_timeout),
            rc.retries.unwrap_or(self.config.retries),
        )
    }
}

enum Backend {
    Threads(Arc<threads::Threads>),
    Processes(Arc<processes::Processes>),
}

impl Backend {
    fn supervised(&self) -> Arc<dyn Supervised> {
        match self {
            Backend::Threads(t) => t.clone(),
            Backend::Processes(p) => p.clone(),
        }
    }
}

/// The part of a pool that a [`Runtime`] can shut down or suspend from
/// another thread.
pub(crate) struct PoolInner {
    core: Arc<Core>,
    backend: Backend,
    window: usize,
    monitor: Mutex<MonitorHandle>,
    report: Mutex<Option<ShutdownReport>>,
    pub(crate) rt_ref: RefCount,
}

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

/// Builds a [`Pool`]: choose threads or processes, give the handlers.
#[derive(Default)]
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct PoolBuilder {
    kind: Option<Kind>,
    handlers: Option<Handlers>,
    queue_limit: Option<usize>,
    inflight: Option<usize>,
    command: Option<Command>,
    restart: Option<RestartPolicy>,
    cancel_grace: Option<Duration>,
    job_timeout: Option<Duration>,
    queue_timeout: Option<Duration>,
    retries: u32,
    per_route: HashMap<&'static str, RouteConfig>,
    on_event: Option<EventFn>,
    runtime: Option<Runtime>,
    worker_links: bool,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("kind", &self.kind)
            .field("handlers", &self.handlers)
            .field("queue_limit", &self.queue_limit)
            .field("inflight", &self.inflight)
            .field("command", &self.command)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Threads(usize),
    Processes(usize),
}

/// Why a pool could not be built.
///
/// Its `Debug` is its `Display` (what `main() -> Result<_, Box<dyn Error>>`
/// prints): one sentence that says what failed and why.
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

impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// What a process that was started as a pool's worker, but builds a pool
/// instead of serving, is told (and tells its supervisor, on its stderr).
pub(crate) const FORGOT_SERVE_IF_WORKER: &str = "this process was started as a portpool worker but did \
     not call portpool::worker::serve_if_worker at the top of main";

/// Whether this process was started as a pool's worker and has not begun
/// serving: building a pool here would run the supervisor's program in
/// every worker, each starting workers of its own.
fn unserved_worker() -> bool {
    std::env::var_os(WORKER_ID_ENV).is_some() && crate::port::Port::in_env() && !crate::port::env_port_taken()
}

/// The default grace period between a cancel (or a run timeout) and
/// ending the worker whose handler did not return.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(1);

impl PoolBuilder {
    /// `n` thread workers in this process.
    pub fn threads(mut self, n: usize) -> Self {
        self.kind = Some(Kind::Threads(n));
        self
    }

    /// `n` process workers. By default each runs this executable again,
    /// which must call `portpool::worker::serve_if_worker` first thing in
    /// `main`; see [`worker_command`](Self::worker_command) for a separate binary.
    ///
    /// Each worker runs in a process group of its own (the terminal's
    /// Ctrl-C reaches only the supervisor) and has 10 s to start: to
    /// connect and announce its routes. One that does not fails the build
    /// (or, for a restart, counts against the restart policy).
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
    ///
    /// `0` is a pool without a queue: a job is taken only when a worker can
    /// start it (a thread worker that is idle, a process worker with a free
    /// in-flight slot, see [`inflight_per_worker`](Self::inflight_per_worker));
    /// otherwise `try_submit` gives [`TrySubmitError::Full`] and `submit`
    /// waits for one.
    pub fn queue_limit(mut self, n: usize) -> Self {
        self.queue_limit = Some(n);
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

    /// How crashed process workers are restarted. Default:
    /// [`RestartPolicy::default`].
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = Some(policy);
        self
    }

    /// The time a cancelled or timed-out job's handler has to return
    /// before its process worker is killed (or its thread abandoned) and
    /// replaced. Default: [`DEFAULT_CANCEL_GRACE`].
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = Some(grace);
        self
    }

    /// Every job must finish within `timeout` of being dispatched to a
    /// worker, or it fails with [`TimedOut`](crate::job::JobError::TimedOut).
    /// Time spent queued does not count. Default: none.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// Every job must be dispatched within `timeout` of its submission, or
    /// it fails with [`TimedOut`](crate::job::JobError::TimedOut) without
    /// running. Default: none.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
        self
    }

    /// A job lost to a worker crash is run again, up to `n` times, on
    /// another worker. Handler errors and panics are never retried.
    /// Default: 0.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// The run timeout of jobs of type `J`, over [`job_timeout`](Self::job_timeout).
    pub fn timeout_for<J: Job>(mut self, timeout: Duration) -> Self {
        self.per_route.entry(J::NAME).or_default().timeout = Some(timeout);
        self
    }

    /// The retries of jobs of type `J`, over [`retries`](Self::retries).
    pub fn retries_for<J: Job>(mut self, n: u32) -> Self {
        self.per_route.entry(J::NAME).or_default().retries = Some(n);
        self
    }

    /// Calls `f` for every [`PoolEvent`] (worker started, exited, could not
    /// start; pool failed), on the thread where it happened. Keep it short.
    pub fn on_event(mut self, f: impl Fn(&PoolEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// Gives each process worker a conversation with the supervisor beside
    /// its jobs: a [`Link`](crate::link::Link) on a port of its own, reached
    /// here with [`Pool::worker_link`] and in the worker with
    /// `portpool::worker::link()`. Default: off (each link costs a port and
    /// a thread on each side).
    pub fn worker_links(mut self, on: bool) -> Self {
        self.worker_links = on;
        self
    }

    /// The [`Runtime`] the pool belongs to (default: [`Runtime::global`]).
    /// The pool holds a ref on it until it shuts down, and follows its
    /// suspend, resume and signal-driven shutdown.
    pub fn runtime(mut self, rt: &Runtime) -> Self {
        self.runtime = Some(rt.clone());
        self
    }

    /// Starts the workers.
    ///
    /// Fails at once, without starting anything, in a process that was
    /// started as a pool's worker but did not call
    /// `portpool::worker::serve_if_worker` first in `main` (the supervisor
    /// then reports that sentence as the reason its worker failed), and
    /// when the handlers register two job types under one route name.
    pub fn build(self) -> Result<Pool, BuildError> {
        if unserved_worker() {
            let msg = format!(
                "{FORGOT_SERVE_IF_WORKER}; call it before anything else, so that a worker serves jobs \
                 instead of running the program again"
            );
            eprintln!("portpool: {msg}");
            // Closing the port ends the supervisor's handshake at once; it
            // finds the line above in this process's stderr.
            drop(crate::port::Port::from_env());
            return Err(BuildError::new(msg));
        }
        let kind = self
            .kind
            .ok_or_else(|| BuildError::new("choose .threads(n) or .processes(n)"))?;
        if let Some(h) = &self.handlers {
            h.check().map_err(BuildError::new)?;
        }
        let n = match kind {
            Kind::Threads(n) | Kind::Processes(n) => n,
        };
        if n == 0 {
            return Err(BuildError::new("a pool needs at least one worker"));
        }
        let handlers = self.handlers.unwrap_or_default();
        let queue_limit = self.queue_limit.unwrap_or(1024);
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(queue_limit);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let graces = Graces {
            cancel: self.cancel_grace.unwrap_or(DEFAULT_CANCEL_GRACE),
            term: TERM_GRACE,
        };
        let core = Arc::new(Core {
            queue_limit,
            free: FreeGate::default(),
            queue_tx,
            queue_rx,
            requeue: Mutex::new(VecDeque::new()),
            requeued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
            suspend_gate: (Mutex::new(()), Condvar::new()),
            failure: Mutex::new(None),
            next_id: AtomicU64::new(1),
            counters: (0..n).map(|_| WorkerCounters::default()).collect(),
            cancelled: AtomicU64::new(0),
            failed_elsewhere: AtomicU64::new(0),
            killed_by_shutdown: AtomicUsize::new(0),
            idle: Idle::default(),
            control: control_tx.clone(),
            config: Config {
                restart: self.restart.unwrap_or_default(),
                job_timeout: self.job_timeout,
                queue_timeout: self.queue_timeout,
                retries: self.retries,
                per_route: self.per_route,
                on_event: self.on_event,
            },
            handlers: handlers.clone(),
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
                Backend::Processes(processes::Processes::spawn(
                    core.clone(),
                    command,
                    n,
                    inflight,
                    self.worker_links,
                )?)
            }
        };
        let target = backend.supervised();
        let core2 = core.clone();
        let thread = std::thread::Builder::new()
            .name("portpool-monitor".into())
            .spawn(move || monitor::run(control_rx, target, core2, graces));
        let thread = match thread {
            Ok(h) => h,
            Err(e) => {
                let inner = PoolInner {
                    core,
                    backend,
                    window: 1,
                    monitor: Mutex::new(MonitorHandle {
                        tx: control_tx,
                        thread: None,
                    }),
                    report: Mutex::new(None),
                    rt_ref: RefCount::detached(),
                };
                inner.shutdown(Shutdown::immediate());
                return Err(BuildError::io("could not start the pool's monitor thread", e));
            }
        };
        let window = match kind {
            Kind::Threads(n) => 4 * n,
            Kind::Processes(n) => 2 * n * inflight,
        }
        .max(2);
        let rt = self.runtime.unwrap_or_else(|| Runtime::global().clone());
        let inner = Arc::new(PoolInner {
            core,
            backend,
            window,
            monitor: Mutex::new(MonitorHandle {
                tx: control_tx,
                thread: Some(thread),
            }),
            report: Mutex::new(None),
            rt_ref: rt.new_ref(),
        });
        let managed: Arc<dyn crate::runtime::Managed> = inner.clone();
        rt.attach_pool(Arc::downgrade(&managed));
        Ok(Pool { inner })
    }
}

/// Why [`Pool::submit`] did not take a job; the job is given back.
pub enum SubmitError<J> {
    /// The pool is shutting down.
    Closed(J),
    /// The pool failed (its restart limit was reached); the reason says why.
    Failed(J, String),
}

/// Why [`Pool::try_submit`] did not take a job; the job is given back.
pub enum TrySubmitError<J> {
    /// The queue is full.
    Full(J),
    /// The pool is shutting down.
    Closed(J),
    /// The pool failed (its restart limit was reached); the reason says why.
    Failed(J, String),
}

/// Why [`Pool::submit_timeout`] did not take a job; the job is given back.
pub enum SubmitTimeoutError<J> {
    /// The queue stayed full for the whole timeout.
    Timeout(J),
    /// The pool is shutting down.
    Closed(J),
    /// The pool failed (its restart limit was reached); the reason says why.
    Failed(J, String),
}

impl<J> SubmitError<J> {
    /// The job that was not taken.
    pub fn into_job(self) -> J {
        match self {
            SubmitError::Closed(j) | SubmitError::Failed(j, _) => j,
        }
    }
}

impl<J> fmt::Display for SubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed(_) => f.write_str("the pool is shutting down"),
            SubmitError::Failed(_, why) => write!(f, "the pool failed: {why}"),
        }
    }
}

impl<J> fmt::Display for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("the pool's queue is full"),
            TrySubmitError::Closed(_) => f.write_str("the pool is shutting down"),
            TrySubmitError::Failed(_, why) => write!(f, "the pool failed: {why}"),
        }
    }
}

impl<J> fmt::Display for SubmitTimeoutError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitTimeoutError::Timeout(_) => f.write_str("the pool's queue stayed full"),
            SubmitTimeoutError::Closed(_) => f.write_str("the pool is shutting down"),
            SubmitTimeoutError::Failed(_, why) => write!(f, "the pool failed: {why}"),
        }
    }
}

// Debug without `J: Debug`, so `?` works for any job type, and as
// readable as Display (what `main` prints for an error it returns).
impl<J> fmt::Debug for SubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<J> fmt::Debug for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<J> fmt::Debug for SubmitTimeoutError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<J> std::error::Error for SubmitError<J> {}
impl<J> std::error::Error for TrySubmitError<J> {}
impl<J> std::error::Error for SubmitTimeoutError<J> {}

/// Per-job settings for [`Pool::submit_with`], over the pool's.
///
/// Every `Duration` in portpool's API takes any value: one too long to
/// count from now (such as `Duration::MAX`) means "never".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "options do nothing until given to `Pool::submit_with`"]
pub struct JobOptions {
    /// Run timeout, counted from dispatch.
    pub timeout: Option<Duration>,
    /// The longest the job may wait in the queue.
    pub queue_timeout: Option<Duration>,
    /// Re-runs allowed after a worker crash.
    pub retries: Option<u32>,
}

impl JobOptions {
    /// No overrides: the pool's settings.
    pub fn new() -> JobOptions {
        JobOptions::default()
    }

    /// Sets the run timeout.
    pub fn timeout(mut self, t: Duration) -> JobOptions {
        self.timeout = Some(t);
        self
    }

    /// Sets the queue-wait deadline.
    pub fn queue_timeout(mut self, t: Duration) -> JobOptions {
        self.queue_timeout = Some(t);
        self
    }

    /// Sets the retries after a worker crash.
    pub fn retries(mut self, n: u32) -> JobOptions {
        self.retries = Some(n);
        self
    }
}

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
    /// Its process id (process workers; `None` while it restarts).
    pub pid: Option<u32>,
    /// How many times this worker was replaced.
    pub restarts: u64,
    /// Jobs it finished.
    pub done: u64,
    /// Jobs that failed on it.
    pub failed: u64,
    /// Jobs it holds now.
    pub running: usize,
}

/// Why a job was not enqueued.
enum Refusal {
    Closed,
    Failed(String),
}

/// Why a chunk of a `map` was not taken.
pub(crate) enum Refused {
    Closed,
    Failed(String),
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Refused {
        match r {
            Refusal::Closed => Refused::Closed,
            Refusal::Failed(why) => Refused::Failed(why),
        }
    }
}

impl Refused {
    /// The failure each of the chunk's jobs gets.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            Refused::Closed => Failure::Rejected("the pool is shutting down".into()),
            Refused::Failed(why) => Failure::Rejected(format!("the pool failed: {why}")),
        }
    }
}

/// What `submit_chunk` did with a chunk.
pub(crate) struct ChunkSent {
    /// Jobs that failed before they could be queued, by index in the
    /// chunk (all of them: no task was queued).
    pub(crate) holes: Vec<(usize, Failure)>,
}

/// A job made ready to queue.
enum Prepared<J: Job> {
    /// Its ticket already holds its outcome (a failure): nothing to queue.
    Settled(Ticket<J>),
    /// Its ticket, its task, and the job value if the task holds bytes.
    Ready(Ticket<J>, Task, Option<J>),
}

impl crate::runtime::Managed for PoolInner {
    fn suspend(&self) {
        PoolInner::suspend(self);
    }

    fn resume(&self) {
        PoolInner::resume(self);
    }

    fn hurry(&self) {
        PoolInner::hurry(self);
    }

    fn shutdown(&self, how: Shutdown) -> ShutdownReport {
        PoolInner::shutdown(self, how)
    }
}

impl crate::supervisor::monitor::Books for Core {
    fn deliver_failure(
        &self,
        state: &JobState,
        reply: &Reply,
        jobs: u64,
        f: Failure,
        worker: Option<usize>,
    ) -> bool {
        Core::deliver_failure(self, state, reply, jobs, f, worker)
    }
}

impl PoolInner {
    fn refusal(&self) -> Option<Refusal> {
        // Acquire: pairs with the Release store in `shutdown` / `fail_pool`.
        if !self.core.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(match self.core.failure() {
            Some(why) => Refusal::Failed(why),
            None => Refusal::Closed,
        })
    }

    fn after_enqueue(&self) {
        if let Backend::Processes(p) = &self.backend {
            p.kick();
        }
    }

    /// Suspends dispatch (scenario "suspend"): queued jobs wait, running
    /// ones finish; the workers' suspend hooks run.
    pub(crate) fn suspend(&self) {
        if self.core.suspended.load(Ordering::Acquire) {
            return;
        }
        self.core.set_suspended(true);
        match &self.backend {
            Backend::Threads(_) => self.core.handlers.run_hooks(true),
            Backend::Processes(p) => p.broadcast_control(&wire::ToWorker::Suspend),
        }
    }

    /// Resumes dispatch after [`suspend`](Self::suspend).
    pub(crate) fn resume(&self) {
        if !self.core.suspended.load(Ordering::Acquire) {
            return;
        }
        match &self.backend {
            Backend::Threads(_) => self.core.handlers.run_hooks(false),
            Backend::Processes(p) => p.broadcast_control(&wire::ToWorker::Resume),
        }
        self.core.set_suspended(false);
        self.after_enqueue();
        self.core.free.notify();
    }

    /// Makes a shutdown in progress immediate (a second SIGINT).
    pub(crate) fn hurry(&self) {
        self.core.hurry.store(true, Ordering::Release);
        self.core.idle.notify();
        // Wake thread workers parked by a suspend, so they can stop.
        self.core
            .set_suspended(self.core.suspended.load(Ordering::Acquire));
    }

    fn busy(&self) -> bool {
        match &self.backend {
            Backend::Threads(t) => t.busy(),
            Backend::Processes(p) => p.busy(),
        }
    }

    /// The shutdown (scenario "shutdown" in `supervisor/README.md`).
    pub(crate) fn shutdown(&self, how: Shutdown) -> ShutdownReport {
        let mut report = lock(&self.report);
        if let Some(r) = &*report {
            return r.clone();
        }
        let core = &self.core;
        let deadline = crate::util::deadline(how.deadline);
        // Release: pairs with the Acquire load in `refusal`.
        core.closed.store(true, Ordering::Release);
        core.free.notify();
        if how.mode == ShutdownMode::Immediate {
            core.hurry.store(true, Ordering::Release);
        }
        if how.mode != ShutdownMode::Graceful {
            core.fail_queued(&Failure::Cancelled);
        }
        // Work left may not wait for a resume that will not come. (The
        // workers are not sent a resume: they are about to stop, and a
        // stuck one must not hold the shutdown up.)
        if core.suspended.load(Ordering::Acquire) {
            core.set_suspended(false);
            self.after_enqueue();
        }
        // Phase 1: let the work finish, until the deadline (or a hurry).
        let finished = how.mode != ShutdownMode::Immediate
            && core.idle.wait_until(deadline, || {
                core.hurry.load(Ordering::Acquire)
                    || core.failure().is_some() && !self.busy()
                    || !self.busy() && (how.mode != ShutdownMode::Graceful || !core.has_queued())
            })
            && !core.hurry.load(Ordering::Acquire);
        // From here on, exits are expected and nothing restarts.
        core.stopping.store(true, Ordering::Release);
        let mut rep = ShutdownReport {
            deadline_hit: !finished
                && how.mode != ShutdownMode::Immediate
                && !core.hurry.load(Ordering::Acquire),
            ..ShutdownReport::default()
        };
        // Phase 2: past the deadline, cancel what is left.
        if !finished {
            core.fail_queued(&Failure::Cancelled);
            match &self.backend {
                Backend::Threads(t) => t.cancel_running(),
                Backend::Processes(p) => p.terminate_all(),
            }
        }
        // Phase 3: stop the workers and the monitor.
        match &self.backend {
            Backend::Threads(t) => rep.threads_abandoned = t.stop(!finished),
            Backend::Processes(p) => p.stop(),
        }
        lock(&self.monitor).stop();
        // A job that raced past the closed flag after the workers stopped.
        core.fail_queued(&Failure::Rejected("the pool shut down before the job ran".into()));
        // Relaxed: the workers are stopped; these are final.
        let done: u64 = core.counters.iter().map(|c| c.done.load(Ordering::Relaxed)).sum();
        let failed: u64 = core
            .counters
            .iter()
            .map(|c| c.failed.load(Ordering::Relaxed))
            .sum::<u64>()
            + core.failed_elsewhere.load(Ordering::Relaxed);
        let cancelled = core.cancelled.load(Ordering::Relaxed);
        rep.completed = done;
        rep.cancelled = cancelled;
        rep.failed = failed.saturating_sub(cancelled);
        rep.workers_killed = core.killed_by_shutdown.load(Ordering::Relaxed);
        log::info!("pool shut down: {rep}");
        *report = Some(rep.clone());
        drop(report);
        self.rt_ref.close();
        rep
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

    /// Whether jobs of type `J` have a run timeout (then `map` sends them
    /// one per task, so each has its own).
    pub(crate) fn times_out<J: Job>(&self) -> bool {
        self.inner.core.limits(J::NAME).0.is_some()
    }

    /// Submits `jobs` as one chunk whose events go to `reply` (used by
    /// `map`). Blocks while the queue is full. Gives the jobs back if the
    /// pool is closed.
    ///
    /// On a process pool the jobs are encoded when the chunk is dispatched
    /// (on the thread that frees a worker's slot), each alone: one that
    /// will not encode becomes a hole, reported with `Event::Sent`, and the
    /// rest still run.
    pub(crate) fn submit_chunk<J: Job>(
        &self,
        jobs: Vec<J>,
        reply: Reply,
    ) -> Result<ChunkSent, (Vec<J>, Refused)> {
        if let Some(r) = self.inner.refusal() {
            return Err((jobs, r.into()));
        }
        if let Err(f) = self.check_route::<J>() {
            // Relaxed: statistics only.
            self.inner
                .core
                .failed_elsewhere
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            return Ok(ChunkSent {
                holes: (0..jobs.len()).map(|i| (i, f.clone())).collect(),
            });
        }
        let (timeout, retries) = self.inner.core.limits(J::NAME);
        let task = Task {
            // Relaxed: ids only need to be unique.
            id: self.inner.core.next_id.fetch_add(1, Ordering::Relaxed),
            route: J::NAME,
            batch: Some(jobs.len() as u32),
            job: Payload::Value(Box::new(jobs)),
            send_job: send_chunk::<J>,
            reply,
            state: JobState::new(),
            timeout,
            retries,
        };
        self.watch_queue(&task);
        match self.send_blocking(Work::Task(task), None) {
            Ok(()) => {
                self.inner.after_enqueue();
                Ok(ChunkSent { holes: Vec::new() })
            }
            Err(w) => {
                let back = match w {
                    Work::Task(t) => t.into_value::<Vec<J>>().unwrap_or_default(),
                    Work::Stop => Vec::new(),
                };
                let why = match self.inner.refusal() {
                    Some(r) => r.into(),
                    None => Refused::Closed,
                };
                Err((back, why))
            }
        }
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
    /// for a process pool that will wait in the queue is encoded first
    /// (the bytes wait, not the value): if it will not encode, its ticket
    /// holds that failure at once and nothing is queued. When `enqueue`
    /// refuses the task, the job is given back with its reason.
    fn enqueue<J: Job, E>(
        &self,
        job: J,
        opts: &JobOptions,
        enqueue: impl FnOnce(&Self, Work) -> Result<(), (Work, E)>,
    ) -> Result<Ticket<J>, (J, E)> {
        let waits = match &self.inner.backend {
            Backend::Processes(p) => !p.can_take_now(),
            Backend::Threads(_) => false,
        };
        let (ticket, task, kept) = match self.prepare(job, opts, waits) {
            Prepared::Settled(ticket) => return Ok(ticket),
            Prepared::Ready(ticket, task, kept) => (ticket, task, kept),
        };
        self.watch_queue_for(&task, opts.queue_timeout);
        match enqueue(self, Work::Task(task)) {
            Ok(()) => {
                self.inner.after_enqueue();
                Ok(ticket)
            }
            Err((work, e)) => {
                let job = match (kept, work) {
                    (Some(j), _) => j,
                    (None, Work::Task(t)) => match t.into_value::<J>() {
                        Some(j) => j,
                        None => unreachable!("a task built from a J holds a J"),
                    },
                    (None, Work::Stop) => unreachable!("only tasks are submitted"),
                };
                Err((job, e))
            }
        }
    }

    /// Makes `job`'s ticket and task. With `encode`, the task carries the
    /// job's bytes and the value is kept aside (to give back if the queue
    /// refuses it). A job that cannot go (its route is not served, it will
    /// not encode) gets a ticket that already holds its failure.
    fn prepare<J: Job>(&self, job: J, opts: &JobOptions, encode: bool) -> Prepared<J> {
        let core = &self.inner.core;
        let state = JobState::new();
        // Relaxed: ids only need to be unique.
        let id = core.next_id.fetch_add(1, Ordering::Relaxed);
        let (ticket, reply) = Ticket::new(id, state.clone(), core.control.clone());
        if let Err(f) = self.check_route::<J>() {
            core.deliver_failure(&state, &reply, 1, f, None);
            return Prepared::Settled(ticket);
        }
        let (payload, kept) = if encode {
            let mut bytes = Vec::new();
            if let Err(f) = encode_job(&job, &mut bytes) {
                core.deliver_failure(&state, &reply, 1, f, None);
                return Prepared::Settled(ticket);
            }
            (Payload::Encoded(bytes), Some(job))
        } else {
            (Payload::Value(Box::new(job)), None)
        };
        let (timeout, retries) = core.limits(J::NAME);
        let task = Task {
            id,
            route: J::NAME,
            job: payload,
            send_job: send_job::<J>,
            reply,
            state,
            batch: None,
            timeout: opts.timeout.or(timeout),
            retries: opts.retries.unwrap_or(retries),
        };
        Prepared::Ready(ticket, task, kept)
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
    /// On a process pool, a job that has to wait in the queue is encoded
    /// now, and one dispatched at once is encoded straight into its
    /// worker's port: either way a job that will not encode gets a ticket
    /// whose result is that error at once, and nothing is sent. (A thread
    /// pool never encodes jobs.)
    pub fn submit<J: Job>(&self, job: J) -> Result<Ticket<J>, SubmitError<J>> {
        self.submit_with(job, JobOptions::default())
    }

    /// Submits a job with its own timeout, queue-wait deadline or retries
    /// (see [`submit`](Self::submit)).
    pub fn submit_with<J: Job>(&self, job: J, opts: JobOptions) -> Result<Ticket<J>, SubmitError<J>> {
        match self.inner.refusal() {
            Some(Refusal::Closed) => return Err(SubmitError::Closed(job)),
            Some(Refusal::Failed(why)) => return Err(SubmitError::Failed(job, why)),
            None => {}
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
                    match self.closed_error(job) {
                        SubmitError::Closed(j) => TrySubmitError::Closed(j),
                        SubmitError::Failed(j, why) => TrySubmitError::Failed(j, why),
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
                match self.closed_error(job) {
                    SubmitError::Closed(j) => SubmitTimeoutError::Closed(j),
                    SubmitError::Failed(j, why) => SubmitTimeoutError::Failed(j, why),
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
        match core.queue_tx.try_send(w) {
            Ok(()) => Ok(()),
            Err(ChanTrySendError::Full(w)) => Err((w, true)),
            Err(ChanTrySendError::Disconnected(w)) => Err((w, false)),
        }
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
        match deadline {
            None => core.queue_tx.send(w).map_err(|e| e.0),
            Some(d) => core.queue_tx.send_deadline(w, d).map_err(|e| e.into_inner()),
        }
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
    /// order.
    pub fn broadcast<J: Job + Clone>(
        &self,
        job: J,
    ) -> Vec<Result<J::Output, crate::job::JobError<J::Error>>> {
        if let Some(r) = self.inner.refusal() {
            let reason = match r {
                Refusal::Closed => "the pool is shutting down".to_string(),
                Refusal::Failed(why) => format!("the pool failed: {why}"),
            };
            return (0..self.workers())
                .map(|_| {
                    Err(crate::job::JobError::Rejected {
                        reason: reason.clone(),
                    })
                })
                .collect();
        }
        let tickets: Vec<Ticket<J>> = (0..self.workers())
            .map(
                |w| match self.prepare(job.clone(), &JobOptions::default(), false) {
                    Prepared::Settled(ticket) => ticket,
                    Prepared::Ready(ticket, task, _) => {
                        match &self.inner.backend {
                            Backend::Threads(t) => t.send_to(w, task),
                            Backend::Processes(p) => p.send_to(w, task),
                        }
                        ticket
                    }
                },
            )
            .collect();
        tickets.into_iter().map(Ticket::wait).collect()
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> Stats {
        let (pids, restarts) = match &self.inner.backend {
            Backend::Threads(t) => (vec![None; self.workers()], t.restarts()),
            Backend::Processes(p) => p.pids_and_restarts(),
        };
        let core = &self.inner.core;
        // Relaxed: a snapshot of statistics; nothing else is read through them.
        let workers: Vec<WorkerStats> = core
            .counters
            .iter()
            .enumerate()
            .map(|(id, c)| WorkerStats {
                id,
                pid: pids.get(id).copied().flatten(),
                restarts: restarts.get(id).copied().unwrap_or(0),
                done: c.done.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                running: c.running.load(Ordering::Relaxed),
            })
            .collect();
        Stats {
            queued: core.queue_rx.len() + core.requeued.load(Ordering::Relaxed),
            running: workers.iter().map(|w| w.running).sum(),
            done: workers.iter().map(|w| w.done).sum(),
            failed: workers.iter().map(|w| w.failed).sum::<u64>()
                + core.failed_elsewhere.load(Ordering::Relaxed),
            cancelled: core.cancelled.load(Ordering::Relaxed),
            workers,
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

    /// Keeps the pool's [`Runtime`] running while the pool is alive (the
    /// default).
    pub fn ref_(&self) {
        self.inner.rt_ref.ref_();
    }

    /// Lets the pool's [`Runtime::run`] return even while the pool is alive.
    pub fn unref(&self) {
        self.inner.rt_ref.unref();
    }

    /// Whether the pool holds a ref on its runtime.
    pub fn has_ref(&self) -> bool {
        self.inner.rt_ref.has_ref()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.shutdown(Shutdown::default());
    }
}
