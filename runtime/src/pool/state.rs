//! What both backends share: the bounded queue and the re-queue, the
//! counters, the supervisor's settings and state, and the gates a
//! shutdown or a submitter waits on.

use super::*;
pub(crate) use crate::supervisor::monitor::Books;

/// What the shared queue carries.
pub(crate) enum Work {
    Task(Task),
    /// Tells one thread worker to stop (after the tasks queued before it).
    Stop,
    /// A ranked job (priority above 0) waits in the heap (module `ranked`).
    Wake,
}

/// Per-worker counters, each on its own cache line so workers never
/// contend on them.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct WorkerCounters {
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) running: AtomicUsize,
    /// Nanoseconds spent running jobs (pools that keep metrics).
    pub(crate) busy_ns: AtomicU64,
    /// When this worker last answered, on the pool's clock (pools that
    /// keep metrics): a job sent behind others starts running no earlier.
    pub(crate) last_answer: AtomicU64,
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
    pub(crate) recycle: Recycle,
    /// Whether it keeps per-route metrics (`PoolBuilder::metrics`).
    pub(crate) metrics: bool,
    /// Whether process workers' stderr lines are passed on
    /// (`PoolBuilder::forward_worker_stderr`).
    pub(crate) forward_stderr: bool,
    /// Whether process workers' connections may move to shared memory
    /// (`PoolBuilder::shared_memory`).
    pub(crate) shared_memory: bool,
    /// How jobs and results cross to process workers
    /// (`PoolBuilder::job_codec`).
    pub(crate) job_codec: crate::frame::Codec,
}

/// When a worker is replaced between jobs (scenario "recycle").
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Recycle {
    /// After this many jobs.
    pub(crate) jobs: Option<u64>,
    /// After it has lived this long (checked after each job).
    pub(crate) age: Option<Duration>,
    /// When its resident memory exceeds this (local process workers).
    pub(crate) memory: Option<u64>,
    /// The hard address-space limit process workers start with.
    pub(crate) limit: Option<u64>,
}

impl Recycle {
    /// Why a worker that has run `jobs` jobs since `started` is due for
    /// replacement (`None`: it is not). `rss` gives its resident memory,
    /// asked only when a memory limit is set.
    pub(crate) fn due(
        &self,
        jobs: u64,
        started: Instant,
        rss: impl FnOnce() -> Option<u64>,
    ) -> Option<String> {
        if let Some(n) = self.jobs {
            if jobs >= n {
                return Some(format!("recycled after {jobs} job(s)"));
            }
        }
        if let Some(age) = self.age {
            if started.elapsed() >= age {
                return Some(format!("recycled at the age of {age:?}"));
            }
        }
        if let Some(limit) = self.memory {
            if let Some(rss) = rss().filter(|&r| r > limit) {
                return Some(format!(
                    "recycled: its resident memory ({}) passed {}",
                    mib(rss),
                    mib(limit)
                ));
            }
        }
        None
    }
}

/// `bytes` as "12.5 MiB".
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
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
    /// How many wait (a shutdown and `wait_idle` calls may overlap).
    waiting: AtomicUsize,
}

impl Idle {
    pub(crate) fn notify(&self) {
        // SeqCst: pairs with the store in `wait_until`, which then re-checks
        // under the lock.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _g = lock(&self.m);
            self.cv.notify_all();
        }
    }

    /// Waits until `done()` or `deadline`; returns whether `done()`.
    /// (`None`: no deadline.)
    pub(crate) fn wait_until(&self, deadline: Option<Instant>, done: impl Fn() -> bool) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
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
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        ok
    }
}

/// State both backends share: the bounded queue, the counters, the
/// supervisor's settings and state.
pub(crate) struct Core {
    /// At most this many jobs wait; 0: none wait (a job is taken only
    /// when a worker can start it).
    pub(crate) queue_limit: usize,
    /// Submitters waiting for a free worker slot (queue limit 0).
    pub(crate) free: super::processes::FreeGate,
    pub(crate) queue_tx: Sender<Work>,
    pub(crate) queue_rx: Receiver<Work>,
    /// The queue was full and has not drained since (`PoolEvent::Saturated`).
    pub(crate) saturated: AtomicBool,
    /// Tasks sent back by a crash (retry) or by the kill of a cancelled
    /// job's worker (innocent neighbours): they go before the queue.
    pub(crate) requeue: Mutex<VecDeque<Task>>,
    pub(crate) requeued: AtomicUsize,
    /// Jobs a thread worker took from the queue and holds while the pool
    /// is suspended: still queued, as far as `stats` and `wait_idle` can
    /// tell (they run once the pool resumes).
    pub(crate) held: AtomicUsize,
    /// No new jobs are taken (shutdown started, or the pool failed).
    pub(crate) closed: AtomicBool,
    /// Shutdown has begun: exits are expected, nothing restarts.
    pub(crate) stopping: AtomicBool,
    /// Set by a second SIGINT (or `immediate`) during a graceful shutdown.
    pub(crate) hurry: AtomicBool,
    pub(crate) suspended: AtomicBool,
    pub(crate) suspend_gate: (Mutex<()>, Condvar),
    /// Why the pool failed (restart limit), once it has.
    pub(crate) failure: Mutex<Option<String>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Vec<WorkerCounters>,
    /// Jobs cancelled, and jobs failed without a worker to count them on.
    pub(crate) cancelled: AtomicU64,
    pub(crate) failed_elsewhere: AtomicU64,
    /// Worker processes signalled by the shutdown.
    pub(crate) killed_by_shutdown: AtomicUsize,
    pub(crate) idle: Idle,
    pub(crate) control: Sender<Control>,
    pub(crate) config: Config,
    pub(crate) handlers: Handlers,
    /// Per-route metrics, once the routes are known (after the build).
    pub(crate) metrics: std::sync::OnceLock<super::metrics::Metrics>,
    /// The last workers' exits and start failures, for `stats()`.
    pub(crate) exits: Mutex<VecDeque<super::WorkerExit>>,
    /// When the pool was built.
    pub(crate) born: Instant,
    /// Jobs of priority above 0, beside the queue.
    pub(crate) ranked: super::ranked::Ranked,
    /// Bounds and slot states of a pool with `min_workers` below its size.
    pub(crate) scale: Option<super::scale::Scale>,
}

/// How many exits `stats()` remembers.
const EXITS_KEPT: usize = 32;

impl Core {
    /// Prepares a new job of type `J` for the metrics (if kept): its route
    /// index and its submission time in `state`.
    pub(crate) fn metrics_for<J: Job>(&self, state: &JobState) {
        let Some(m) = self.metrics.get() else { return };
        state.set_route(m.index(J::NAME));
        state.set_clock(self.clock());
    }

    /// Now, as a job's metrics clock and a process worker's idle clock
    /// count (nanoseconds since the build, plus one).
    pub(crate) fn clock(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// The metrics of `state`'s route in worker `w`'s shard (`None`: off
    /// the workers), if kept.
    pub(crate) fn route_metrics(
        &self,
        state: &JobState,
        w: Option<usize>,
    ) -> Option<&super::metrics::RouteMetrics> {
        self.metrics.get()?.route(state.route()?, w)
    }

    /// Worker `w` took `t` at `now` (the pool clock): its queue wait is
    /// recorded, its run clock starts.
    pub(crate) fn note_started(&self, t: &Task, w: usize, now: u64) {
        let queued = t.state.clock();
        if queued == 0 {
            return;
        }
        if let Some(m) = self.route_metrics(&t.state, Some(w)) {
            m.waited(Duration::from_nanos(now.saturating_sub(queued)), t.jobs());
        }
        t.state.set_clock(now);
    }

    /// Worker `w` answered a job (of `jobs` jobs, `failed` of them failed)
    /// (started when its clock says): its run time and counts are recorded.
    /// Returns the pool clock it read (0: the job keeps no metrics).
    pub(crate) fn note_answered(&self, state: &JobState, jobs: u64, failed: u64, w: usize) -> u64 {
        let started = state.clock();
        if started == 0 {
            return 0;
        }
        let now = self.clock();
        // A process worker holds several jobs but runs them one at a time:
        // one sent behind another ran from that one's answer on, not from
        // its own dispatch (else busy time would count waits twice and
        // exceed the pool's age). Answers of one worker are read by one
        // thread at a time. (Relaxed: statistics only.)
        let previous = self.counters[w].last_answer.swap(now, Ordering::Relaxed);
        let ran = Duration::from_nanos(now.saturating_sub(started.max(previous)));
        // Relaxed: statistics only.
        self.counters[w].busy_ns.fetch_add(
            u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(m) = self.route_metrics(state, Some(w)) {
            m.ran(ran, jobs);
            use super::metrics::Ended;
            if jobs > failed {
                m.ended(Ended::Done, jobs - failed);
            }
            if failed > 0 {
                m.ended(Ended::Failed, failed);
            }
        }
        now
    }

    /// After an enqueue: the first time the queue is at its limit, says
    /// `Saturated` (once, until it drains).
    pub(crate) fn note_enqueued(&self) {
        // Events are the only thing it makes: without a callback, no work.
        if self.queue_limit == 0 || self.config.on_event.is_none() {
            return;
        }
        let queued = self.queue_rx.len();
        // AcqRel: one `Saturated` per full queue, paired with `note_taken`.
        if queued >= self.queue_limit && !self.saturated.swap(true, Ordering::AcqRel) {
            self.event(PoolEvent::Saturated { queued });
            // The workers may have emptied the queue before the flag was
            // up (their `note_taken` saw nothing to drain): look again.
            self.note_taken();
        }
    }

    /// After a worker took a task: once a full queue is empty again, says
    /// `Drained`. (One relaxed load unless the queue was full.)
    pub(crate) fn note_taken(&self) {
        // Relaxed: a hint; the swap decides.
        if self.saturated.load(Ordering::Relaxed)
            && !self.has_queued()
            && self.saturated.swap(false, Ordering::AcqRel)
        {
            self.event(PoolEvent::Drained);
        }
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
        tasks.extend(self.ranked.drain());
        for t in tasks {
            self.retire_task(&t, why.clone(), None);
        }
    }

    /// Like [`Books::deliver_failure`], for the one place
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
            self.count_settled_elsewhere(state, jobs, worker);
        }
        delivered
    }

    /// [`retire_failure`](Self::retire_failure) for a whole task.
    pub(crate) fn retire_task(&self, t: &Task, f: Failure, worker: Option<usize>) -> bool {
        self.retire_failure(&t.state, &t.reply, t.jobs(), f, worker)
    }

    /// A job whose outcome someone else settled leaves the pool: if its
    /// ticket cancelled it, count it as cancelled now (once), as failed on
    /// `worker` if it was running there (else on the pool).
    pub(crate) fn count_settled_elsewhere(&self, state: &JobState, jobs: u64, worker: Option<usize>) {
        if state.settled_by_cancel() {
            if let Some(m) = self.route_metrics(state, worker) {
                m.ended(super::metrics::Ended::Cancelled, jobs);
            }
            // Relaxed: statistics only.
            self.cancelled.fetch_add(jobs, Ordering::Relaxed);
            match worker.and_then(|w| self.counters.get(w)) {
                Some(c) => c.finish_n(0, jobs),
                None => {
                    self.failed_elsewhere.fetch_add(jobs, Ordering::Relaxed);
                }
            }
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
            PoolEvent::Saturated { queued } => log::debug!("the queue is full ({queued} jobs)"),
            PoolEvent::Drained => log::debug!("the queue drained"),
        }
        let exit = match &e {
            PoolEvent::WorkerExited {
                worker,
                status,
                expected,
                ..
            } => Some((*worker, status.clone(), *expected)),
            PoolEvent::StartFailed { worker, reason } => {
                Some((*worker, format!("could not start: {reason}"), false))
            }
            _ => None,
        };
        if let Some((worker, status, expected)) = exit {
            let mut exits = lock(&self.exits);
            if exits.len() >= EXITS_KEPT {
                exits.pop_front();
            }
            exits.push_back(super::WorkerExit {
                worker,
                status,
                expected,
            });
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

    /// Whether a scaling pool may let a worker go now: not while it is
    /// suspended, closed or stopping.
    pub(crate) fn may_shrink(&self) -> bool {
        !self.suspended.load(Ordering::Acquire)
            && !self.closed.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
    }

    /// Whether a scaling pool may wake a dormant slot now.
    pub(crate) fn may_grow(&self) -> bool {
        self.scale.as_ref().is_some_and(|s| s.can_grow())
            && !self.suspended.load(Ordering::Acquire)
            && !self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn set_suspended(&self, on: bool) {
        let (m, cv) = &self.suspend_gate;
        let _g = lock(m);
        self.suspended.store(on, Ordering::Release);
        cv.notify_all();
    }
}

impl Books for Core {
    /// Delivers `f` as the outcome of a job (of `jobs` jobs) that leaves
    /// the pool without an answer, unless its outcome was settled already.
    /// Counts it on `worker`, or on the pool. Returns whether it delivered.
    /// (A timer or the shutdown, which do not take the task off the books:
    /// whoever removes it later counts it; see `retire_failure`.)
    fn deliver_failure(
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
        if let Some(m) = self.route_metrics(state, worker) {
            use super::metrics::Ended;
            m.ended(
                match f {
                    Failure::Cancelled => Ended::Cancelled,
                    Failure::TimedOut(..) => Ended::TimedOut,
                    _ => Ended::Failed,
                },
                jobs,
            );
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
}
