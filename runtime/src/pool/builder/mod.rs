//! `PoolBuilder`: the settings of a pool (starting it, `build`, is in
//! `start.rs`).

use super::*;
use crate::launch::Launcher;

mod start;

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
    /// `forward_worker_stderr(false)`.
    quiet_stderr: bool,
    socket_only: bool,
    job_codec: crate::frame::Codec,
    /// Workers started through launchers, beside the local ones.
    launches: Vec<(Launcher, usize)>,
    recycle: Recycle,
    min_workers: Option<usize>,
    idle_timeout: Option<Duration>,
    priority_aging: Option<u64>,
    metrics: Option<bool>,
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
            .field("launches", &self.launches)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Threads(usize),
    Processes(usize),
}

pub(crate) use crate::stderr::FORGOT_SERVE_IF_WORKER;

/// How many jobs a worker started through a launcher holds at once by
/// default: enough to cover a network round trip (about 0.1 ms over ssh
/// here) with tiny jobs.
const REMOTE_IN_FLIGHT: usize = 16;

/// The routes the pool's own handlers serve.
fn handlers_names(core: &Core) -> Vec<String> {
    core.handlers.route_table().into_iter().map(|r| r.name).collect()
}

/// How many jobs a priority of 1 moves a job ahead, unless
/// [`PoolBuilder::priority_aging`] says otherwise.
pub const DEFAULT_PRIORITY_AGING: u64 = 1000;

/// How long a worker of a scaling pool waits for a job before it leaves,
/// unless [`PoolBuilder::idle_timeout`] says otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default grace period between a cancel (or a run timeout) and
/// ending the worker whose handler did not return.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(1);

impl PoolBuilder {
    /// `n` thread workers in this process. `threads` and
    /// [`processes`](Self::processes) choose the backend: the last one
    /// called wins.
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
    ///
    /// Each worker is sent up to 4 jobs at a time
    /// ([`inflight_per_worker`](Self::inflight_per_worker)), which hides
    /// the round trip for short jobs; a short job sent behind a long one
    /// waits for it even while another worker is idle, and a worker that
    /// dies fails (or, with [`retries`](Self::retries), re-queues) every
    /// job it held, started or not. Use `inflight_per_worker(1)` when
    /// jobs are long or their lengths vary widely.
    pub fn processes(mut self, n: usize) -> Self {
        self.kind = Some(Kind::Processes(n));
        self
    }

    /// `n` more process workers, started through `launcher`: on another
    /// machine with [`Launcher::ssh`], in Slurm with [`Launcher::srun`],
    /// or by any command prefix ([`Launcher::prefix`]). Call it once per
    /// launcher; one pool can mix local workers ([`processes`](Self::processes))
    /// and workers on many hosts, with the same jobs and supervision (see
    /// [`crate::launch`]). Unless [`inflight_per_worker`](Self::inflight_per_worker)
    /// is set, a remote worker holds up to 16 jobs at once (a local one 4),
    /// so a round trip of a tenth of a millisecond or more does not leave
    /// it idle. Jobs a worker holds wait for it even when another worker
    /// is idle: for long jobs, set `inflight_per_worker(1)`.
    ///
    /// A remote worker's stdout is its port: what its handlers print goes
    /// to its stderr, which comes back through the launcher (a local
    /// worker's stdout is this process's).
    ///
    /// Each remote worker has the same 10 s to connect and announce its
    /// routes (ssh's own connection set-up included). Not with
    /// [`worker_links`](Self::worker_links): a launcher's pipes cannot carry
    /// the link's port.
    pub fn launch(mut self, launcher: Launcher, n: usize) -> Self {
        self.launches.push((launcher, n));
        self
    }

    /// Makes the pool scale (scenario "scale"): it starts `n` workers,
    /// wakes more (up to the number given to [`threads`](Self::threads),
    /// [`processes`](Self::processes) and [`launch`](Self::launch)) while
    /// jobs wait, and lets a worker that was idle for
    /// [`idle_timeout`](Self::idle_timeout) go until `n` remain.
    ///
    /// "Jobs wait" means: a job is queued and no worker is free, or (on a
    /// process pool) a worker holds a job behind the one it runs. A pool
    /// suspended, shutting down or failed neither grows nor shrinks. The
    /// slots are woken in order, local workers first; a worker that left
    /// shows `up: false` in [`Pool::stats`] and says why in its
    /// [`PoolEvent::WorkerExited`] (`expected: true`), and a woken one
    /// says [`PoolEvent::WorkerStarted`]. A [`Pool::broadcast`] runs on the
    /// workers up at the time.
    ///
    /// `n` must be at least 1 (the pool checks its workers at build) and at
    /// most the pool's size. Without this, every worker starts at build and
    /// stays.
    ///
    /// A process worker holds up to [`inflight_per_worker`](Self::inflight_per_worker)
    /// jobs, and jobs it holds do not move to a worker that starts later:
    /// for jobs that each take a while, set `inflight_per_worker(1)` so the
    /// jobs wait in the queue, where a new worker finds them.
    pub fn min_workers(mut self, n: usize) -> Self {
        self.min_workers = Some(n);
        self
    }

    /// How long a worker of a scaling pool ([`min_workers`](Self::min_workers))
    /// may wait for a job before it leaves; 10 s if not set. A worker
    /// leaves between 1 and 1.25 times this after its last job (never while
    /// one is in flight). Zero lets a worker go as soon as it finds no job
    /// (the pool still grows again for the next burst). Without
    /// `min_workers` it has no effect.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// How far a job's priority moves it ahead: a job of priority `p`
    /// ([`JobOptions::priority`]) is queued as if it had been submitted
    /// `p × n` jobs earlier; 1000 if not set. A larger `n` makes priorities
    /// stricter, a smaller one lets jobs of lower priority through sooner
    /// under a steady stream of higher ones (0: priorities have no effect;
    /// jobs run in submission order).
    pub fn priority_aging(mut self, n: u64) -> Self {
        self.priority_aging = Some(n);
        self
    }

    /// Whether the pool keeps per-route metrics (off by default): for
    /// each job type, queue-wait and run-time quantiles (p50, p90, p99,
    /// max) and counts of jobs done, failed, cancelled, timed out and
    /// retried, and each worker's busy time; [`Pool::stats`] reports them.
    /// They are kept in atomics, one shard per worker (the job path takes
    /// no lock and workers share no cache line), at the cost of three clock
    /// reads per job: about 7 % of the throughput of jobs that do nothing,
    /// measured on 2 cores, and nothing one can see on jobs of a few
    /// microseconds or more. The per-worker counts of [`Stats`] are kept
    /// either way.
    ///
    /// With the cargo feature `metrics`, the same numbers also go to the
    /// [`metrics`](https://docs.rs/metrics) crate's facade, labelled by
    /// route (`portpool_jobs_done_total`, `portpool_job_run_seconds`, …),
    /// for a Prometheus or StatsD exporter: install the recorder before
    /// building the pool.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = Some(on);
        self
    }

    /// Replaces a worker, between jobs and gracefully, once it has run `n`
    /// jobs (each job of a `map` counts). Its replacement starts at once;
    /// the jobs it held go back to the queue. Not a restart: the restart
    /// policy does not count it (`PoolEvent::WorkerExited` says
    /// `expected` and why). For handlers that leak, or state that grows.
    ///
    /// On a process worker the budget is spent as jobs are sent to it, so
    /// the jobs it holds in flight do not carry it past `n`. On either
    /// backend a `map` chunk (several jobs run as one) can cross it, and
    /// then the worker is replaced right after that chunk: a pool of
    /// `recycle_after_jobs(5)` running a `map` may say "recycled after 8
    /// job(s)" (say 4 jobs, then a chunk of 4 that crossed it): up to one
    /// chunk's size more than `n`. `n` must be at least 1.
    pub fn recycle_after_jobs(mut self, n: u64) -> Self {
        self.recycle.jobs = Some(n);
        self
    }

    /// Replaces a worker, as [`recycle_after_jobs`](Self::recycle_after_jobs)
    /// does, after the first job it finishes once it is `age` old.
    pub fn recycle_after(mut self, age: Duration) -> Self {
        self.recycle.age = Some(age);
        self
    }

    /// Replaces a process worker, as [`recycle_after_jobs`](Self::recycle_after_jobs)
    /// does, when its resident memory is above `bytes` after a job (read
    /// from the OS after each job; workers on this machine only, not those
    /// started through a launcher). Not for thread workers, which share
    /// this process's memory: `build()` refuses it.
    pub fn recycle_above_memory(mut self, bytes: u64) -> Self {
        self.recycle.memory = Some(bytes);
        self
    }

    /// Starts every process worker with an address space of at most
    /// `bytes` (`RLIMIT_AS`; through a launcher, `ulimit -v` on the far
    /// side). An allocation past it fails: a Rust handler aborts, its job
    /// fails with `WorkerExited` whose status says the worker hit this
    /// limit, and the worker is replaced; that counts against the restart
    /// policy, so a worker that hits it at once cannot loop. Leave room
    /// for the program itself (its code, stacks and allocator: tens of
    /// MiB). Not for thread workers: `build()` refuses it.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.recycle.limit = Some(bytes);
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

    /// Jobs in flight per process worker (pipelining). Default: 4: enough
    /// to hide the round trip for tiny jobs. A job waits behind those sent
    /// to its worker before it, even if another worker is free, so for
    /// long or uneven jobs 1 spreads them best (see
    /// [`processes`](Self::processes)). 0 is taken as 1.
    pub fn inflight_per_worker(mut self, k: usize) -> Self {
        self.inflight = Some(k.max(1));
        self
    }

    /// Runs process workers from this command (a binary that calls
    /// `portpool::worker::run(handlers)`, or a worker in another language:
    /// see [`job_codec`](Self::job_codec)) instead of this executable: a
    /// path, or a `Command` with arguments ([`IntoCommand`](super::IntoCommand)).
    pub fn worker_command(mut self, command: impl super::IntoCommand) -> Self {
        self.command = Some(command.into_command());
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

    /// Every job must finish within `timeout` of starting on a worker, or
    /// it fails with [`TimedOut`](crate::job::JobError::TimedOut). Time
    /// spent queued does not count, nor (on a process worker, which runs
    /// the jobs it was sent in order) time spent waiting behind another
    /// job sent to the same worker. A zero timeout fails every job that
    /// has not already finished when its timer is looked at. Default: none.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// Every job must start on a worker within `timeout` of its
    /// submission, or it fails with
    /// [`TimedOut`](crate::job::JobError::TimedOut) without running. A job
    /// sent to a process worker behind another job it is running has not
    /// started: the deadline still counts there, the same on both
    /// backends. Default: none.
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

    /// Whether each process worker's stderr is passed on to this
    /// process's stderr, line by line as it comes (default: yes). Either
    /// way its last lines are kept for the errors and events that report
    /// the worker's end ([`JobError::WorkerExited`](crate::job::JobError)'s
    /// `stderr`). Off suits a program whose workers' deliberate noise
    /// (expected panics in a test suite, a chatty library) should not
    /// reach its user.
    pub fn forward_worker_stderr(mut self, on: bool) -> Self {
        self.quiet_stderr = !on;
        self
    }

    /// Whether process workers' connections move to shared memory (default yes, on
    /// Linux, for workers built with portpool): no system call per job while both
    /// sides are busy. Also off with `PORTPOOL_TRANSPORT=socket`.
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.socket_only = !on;
        self
    }

    /// How jobs, results and progress cross to process workers: postcard
    /// (the default; workers built with portpool) or JSON, for workers in
    /// other languages (`python/portpool_worker.py`, or any that follows
    /// `docs/protocol.md`). The types stay serde types; a JSON pool needs
    /// a [`worker_command`](Self::worker_command) that speaks JSON, and a
    /// worker of the other codec fails its handshake, saying so. Such a
    /// pool needs no [`handlers`](Self::handlers) (the crate root's
    /// "Workers in another language" shows one). Not for thread pools, nor
    /// with [`worker_links`](Self::worker_links).
    pub fn job_codec(mut self, codec: crate::link::Codec) -> Self {
        self.job_codec = codec;
        self
    }

    /// The [`Runtime`] the pool belongs to (default: [`Runtime::global`]).
    /// The pool holds a ref on it until it shuts down, and follows its
    /// suspend, resume and signal-driven shutdown.
    pub fn runtime(mut self, rt: &Runtime) -> Self {
        self.runtime = Some(rt.clone());
        self
    }
}
