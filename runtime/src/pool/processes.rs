//! Process workers: each is a child process with a port. Up to `k` jobs are
//! in flight per worker. Dispatch happens on the thread that frees a slot:
//! the submitter (right after enqueueing) or the worker's reader thread
//! (right after a result), so a job goes from `submit` to the worker's
//! socket without a thread hop.
//!
//! Each worker slot has one long-lived thread: it spawns the worker, reads
//! its answers until it exits, settles what it held, and starts the
//! replacement (scenario "restart" in `supervisor/README.md`). Spawning
//! from that thread matters: `PR_SET_PDEATHSIG` fires when the *thread*
//! that spawned a child exits (design.md, known traps).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::wire::{FromWorker, ToWorker, WireOutcome};
use super::{BuildError, Core, Event, Outcome, SendFail, Task, Work, lock};
use crate::job::{Failure, Job, RouteInfo, TimeoutPhase};
use crate::port::{self, ConnectOptions, IpcReceiver, IpcSender, Role};
use crate::stderr::StderrTail;
use crate::supervisor::monitor::{Control, Supervised};
use crate::supervisor::{Intensity, PoolEvent, TERM_GRACE};

/// Environment variable that tells a re-run executable it is worker N.
pub const WORKER_ID_ENV: &str = "PORTPOOL_WORKER_ID";

/// Environment variable that tells a worker its supervisor sends it a
/// second port, for a conversation beside its jobs
/// ([`PoolBuilder::worker_links`](super::PoolBuilder::worker_links)).
pub const WORKER_LINK_ENV: &str = "PORTPOOL_WORKER_LINK";

/// How long a worker that closed its port may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long `stop` waits for a stopped worker to exit before killing it.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a worker that failed to start may take to exit on its own
/// (writing why to its stderr) before it is killed.
const FAIL_GRACE: Duration = Duration::from_millis(500);

/// How long a new worker has to complete its handshake.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// SIGTERM (15 on every Unix portpool supports).
const SIGTERM: i32 = 15;

/// Why the pool itself ended a worker.
#[derive(Debug)]
enum EndReason {
    /// To stop these cancelled or timed-out jobs; its other jobs are
    /// innocent and go back to the queue.
    Victims(Vec<u64>),
    /// The shutdown's deadline passed.
    Shutdown,
}

/// One worker process: one incarnation of a slot.
struct Worker {
    id: usize,
    epoch: u64,
    pid: u32,
    tx: IpcSender,
    /// Jobs sent and not answered.
    slots: AtomicUsize,
    alive: AtomicBool,
    /// Each task sent and not answered, by id.
    pending: Mutex<HashMap<u64, Task>>,
    child: Mutex<Option<Child>>,
    ended_by: Mutex<Option<EndReason>>,
    stderr: Arc<StderrTail>,
    /// The receiving half of the worker's port, here while nobody reads
    /// (ARCHITECTURE.md, "a lone job's waiter reads its answer").
    rx: Mutex<Option<IpcReceiver>>,
    /// The reader thread naps here while a ticket reads.
    rx_cv: Condvar,
    /// The reader thread is napping on `rx_cv`.
    reader_napping: AtomicBool,
    /// A duplicate of the port's fd, for waiting without holding `rx`.
    rx_fd: Option<std::os::fd::OwnedFd>,
    me: std::sync::Weak<Worker>,
    core: Arc<Core>,
    k: usize,
    /// The conversation beside the jobs, when the pool has worker links.
    link: Option<Arc<crate::link::Link>>,
    /// A protocol error met by a ticket reading the port (the worker is
    /// killed; its reader reports this as the cause).
    broke: Mutex<Option<String>>,
}

/// What one read of a worker's port did.
enum Step {
    /// A frame was read and handled.
    Frame,
    /// Nothing was there (within the wait).
    Nothing,
    /// Another thread holds the receiver.
    Busy,
    /// The port closed (`None`) or broke.
    End(Option<String>),
}

/// How long the reader thread leaves reading to a ticket before it looks
/// again (it is also woken when other jobs need it).
const READER_NAP: Duration = Duration::from_millis(2);

/// How long a ticket that wants to read its own answer waits for the
/// reader thread to let go of the receiver.
const HANDOFF_SPIN: Duration = Duration::from_micros(20);

impl Worker {
    /// Reads at most one frame from the port (waiting as told) and
    /// handles it, unless another thread holds the receiver.
    fn read_step(&self, wait: crate::transport::Wait) -> Step {
        let Some(mut rx) = lock(&self.rx).take() else {
            return Step::Busy;
        };
        let step = match rx.recv_wait::<FromWorker>(wait) {
            Ok(Some(msg)) => {
                self.handle(msg, &mut rx);
                Step::Frame
            }
            Ok(None) => Step::Nothing,
            Err(e) if e.is_disconnected() => Step::End(None),
            Err(e) => Step::End(Some(e.to_string())),
        };
        *lock(&self.rx) = Some(rx);
        step
    }

    /// Handles every frame already in the receiver's buffer (no waiting).
    /// A thread other than the reader calls it before letting go: frames a
    /// read pulled in beyond its own would otherwise wait unseen while the
    /// reader sleeps on the fd, which shows only what the kernel holds.
    fn drain_buffered(&self) {
        loop {
            let buffered = lock(&self.rx).as_mut().is_some_and(|rx| rx.has_buffered_frame());
            if !buffered {
                return;
            }
            match self.read_step(crate::transport::Wait::Now) {
                Step::Frame => {}
                Step::End(why) => {
                    self.end_from_ticket(why);
                    return;
                }
                Step::Nothing | Step::Busy => return,
            }
        }
    }

    /// A ticket met the end of the port, or a frame it could not take: a
    /// broken protocol is recorded and the worker killed (as the reader
    /// thread would have ended it); the reader reports the exit.
    fn end_from_ticket(&self, why: Option<String>) {
        if let Some(e) = why {
            log::error!("worker {} (pid {}) broke its protocol: {e}", self.id, self.pid);
            lock(&self.broke).get_or_insert(e);
            self.kill();
        }
        self.wake_reader();
    }

    /// Wakes the reader thread if it naps (other jobs need reading, or the
    /// port ended).
    fn wake_reader(&self) {
        // Acquire: pairs with the store before the reader's nap.
        if self.reader_napping.load(Ordering::Acquire) {
            let _g = lock(&self.rx);
            self.rx_cv.notify_all();
        }
    }

    /// Handles one answer or progress message.
    fn handle(&self, msg: FromWorker, rx: &mut IpcReceiver) {
        let core = &*self.core;
        let counters = &core.counters[self.id];
        match msg {
            FromWorker::Routes { .. } => {
                log::warn!("worker {} announced its routes again; ignored", self.id);
            }
            FromWorker::Progress { id, payload } => {
                if let Some(t) = lock(&self.pending).get(&id) {
                    t.reply.send(Event::Progress(payload));
                }
            }
            FromWorker::Done { id, outcome } => {
                let Some(t) = lock(&self.pending).remove(&id) else {
                    log::warn!("worker {} answered job {id}, which it was not given", self.id);
                    return;
                };
                let jobs = t.jobs();
                let (outcome, failed) = match outcome {
                    WireOutcome::Ran(b) => (Outcome::Bytes(b), 0),
                    WireOutcome::RanChunk { bytes, failed } => {
                        (Outcome::Bytes(bytes), u64::from(failed).min(jobs))
                    }
                    WireOutcome::Failed(f) => (Outcome::Failed(f), jobs),
                };
                // Relaxed: statistics only.
                counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
                if t.state.settle() {
                    counters.finish_n(jobs - failed, failed);
                    log::trace!("worker {}: job {id} done", self.id);
                    t.reply.send(Event::Done(outcome));
                } else {
                    // Cancelled or timed out meanwhile: its outcome is out.
                    core.count_settled_elsewhere(&t.state, jobs);
                }
                drop(t);
                self.slots.fetch_sub(1, Ordering::SeqCst);
                // Queue the next jobs; write everything queued (by this or an
                // earlier answer) once no more answers wait.
                pump(self, core, self.k, false);
                core.free.notify();
                // (With nothing else in flight no answer can follow: skip
                // the look at the kernel.)
                let more = self.slots.load(Ordering::SeqCst) > 0 && rx.has_frame().unwrap_or(false);
                if !more {
                    if let Err(e) = self.tx.flush() {
                        log::debug!("worker {}: flush failed ({e}); the port is closing", self.id);
                    }
                    core.idle.notify();
                }
            }
        }
    }
}

impl super::FastRead for Worker {
    /// "A lone job's waiter reads its answer" (ARCHITECTURE.md): when a ticket waits
    /// for the only job its worker holds, the waiting thread reads the
    /// port itself instead of being woken by the reader thread, which
    /// saves a cross-thread wake-up per round trip. It gives up (and the
    /// ticket waits on its channel as usual) when other jobs are in flight,
    /// when the reader thread does not let go, or when the port ends.
    fn read_for(&self, done: &mut dyn FnMut() -> bool, deadline: Option<Instant>) {
        self.read_until(done, deadline);
        self.drain_buffered();
    }
}

impl Worker {
    fn read_until(&self, done: &mut dyn FnMut() -> bool, deadline: Option<Instant>) {
        use crate::transport::Wait;
        loop {
            if done() {
                return;
            }
            // SeqCst: as every other access to the slot count.
            if self.slots.load(Ordering::SeqCst) > 1 || !self.alive.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return;
            }
            // Bounded waits, so a timeout or cancel settled meanwhile is
            // seen within a millisecond.
            let until = now + Duration::from_millis(1);
            let until = deadline.map_or(until, |d| d.min(until));
            let spin_end = now + HANDOFF_SPIN;
            let step = loop {
                match self.read_step(Wait::Until(until)) {
                    Step::Busy if Instant::now() < spin_end => std::thread::yield_now(),
                    step => break step,
                }
            };
            match step {
                Step::Frame | Step::Nothing => {
                    // Answers for other jobs may wait now: the reader reads them.
                    if self.slots.load(Ordering::SeqCst) > 0 {
                        self.wake_reader();
                    }
                }
                Step::Busy => return,
                Step::End(why) => {
                    // The reader thread meets the end too and reports it.
                    self.end_from_ticket(why);
                    return;
                }
            }
        }
    }
}

/// A worker slot: the current incarnation, if one is up.
struct Slot {
    current: Mutex<Option<Arc<Worker>>>,
    /// Broadcast tasks for this slot that came while it was restarting;
    /// its next worker takes them first. `None` once the slot's thread has
    /// ended: nothing will come for them. (Lock order: `waiting`, then
    /// `current`.)
    waiting: Mutex<Option<Vec<Task>>>,
    restarts: AtomicU64,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            current: Mutex::new(None),
            waiting: Mutex::new(Some(Vec::new())),
            restarts: AtomicU64::new(0),
        }
    }
}

impl Slot {
    fn current(&self) -> Option<Arc<Worker>> {
        lock(&self.current).clone()
    }
}

struct Shared {
    core: Arc<Core>,
    slots: Vec<Slot>,
    k: usize,
    links: bool,
    template: Command,
    intensity: Mutex<Intensity>,
    /// Wakes slot threads waiting out a restart backoff when the pool stops.
    stop_gate: (Mutex<()>, Condvar),
    next: AtomicUsize,
    /// The routes the first worker announced (every later one must match).
    routes: std::sync::OnceLock<HashMap<String, RouteInfo>>,
    /// Whether each job type submitted so far matches the workers' route
    /// (by type: the check builds strings, so it runs once per type).
    checked: std::sync::RwLock<HashMap<std::any::TypeId, Result<(), Failure>>>,
}

pub(crate) struct Processes {
    shared: Arc<Shared>,
    threads: Mutex<Vec<(JoinHandle<()>, Receiver<()>)>>,
}

/// A fresh `Command` with the template's program, arguments, environment
/// and directory (`Command` is not `Clone`).
fn copy_command(t: &Command) -> Command {
    let mut c = Command::new(t.get_program());
    c.args(t.get_args());
    for (k, v) in t.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = t.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// "exit code 3" or "signal 9 (SIGKILL)".
pub(crate) fn describe_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = st.code() {
        return format!("exit code {code}");
    }
    match st.signal() {
        Some(sig) => format!("signal {sig} ({})", signal_name(sig)),
        None => format!("{st}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "unknown signal",
    }
}

impl Processes {
    pub(crate) fn spawn(
        core: Arc<Core>,
        template: Command,
        n: usize,
        k: usize,
        links: bool,
    ) -> Result<Arc<Processes>, BuildError> {
        let shared = Arc::new(Shared {
            intensity: Mutex::new(Intensity::new(core.config.restart)),
            core,
            slots: (0..n).map(|_| Slot::default()).collect(),
            k,
            links,
            template,
            stop_gate: (Mutex::new(()), Condvar::new()),
            next: AtomicUsize::new(0),
            routes: std::sync::OnceLock::new(),
            checked: std::sync::RwLock::new(HashMap::new()),
        });
        let procs = Processes {
            shared: shared.clone(),
            threads: Mutex::new(Vec::with_capacity(n)),
        };
        let mut first_error = None;
        let mut ready = Vec::with_capacity(n);
        for id in 0..n {
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("portpool-worker-{id}"))
                .spawn(move || {
                    slot_loop(&shared, id, ready_tx);
                    // No worker will come for broadcasts still waiting.
                    let slot = &shared.slots[id];
                    let waiting: Vec<Task> = {
                        let mut w = lock(&slot.waiting);
                        *lock(&slot.current) = None;
                        w.take().unwrap_or_default()
                    };
                    for t in waiting {
                        shared.core.retire_task(
                            &t,
                            Failure::Rejected(format!("worker {id} stopped before the job could run")),
                            Some(id),
                        );
                    }
                    let _ = done_tx.send(());
                })
                .map_err(|e| BuildError::io(format!("could not start the thread of worker {id}"), e));
            match spawned {
                Ok(h) => {
                    lock(&procs.threads).push((h, done_rx));
                    ready.push(ready_rx);
                }
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        for r in ready {
            match r.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(BuildError::new("a worker's start-up thread panicked"));
                }
            }
        }
        if let Some(e) = first_error {
            shared.core.stopping.store(true, Ordering::Release);
            procs.stop();
            return Err(e);
        }
        Ok(Arc::new(procs))
    }

    /// Dispatches queued jobs to workers with free slots (after an enqueue).
    pub(crate) fn kick(&self) {
        self.shared.kick();
    }

    /// Whether a job submitted now would go to a worker at once (none
    /// waits in the queue, a live worker has a free slot, no suspend).
    pub(crate) fn can_take_now(&self) -> bool {
        let sh = &self.shared;
        !sh.core.has_queued()
            && !sh.core.suspended.load(Ordering::Acquire)
            && sh.slots.iter().any(|s| {
                s.current()
                    // SeqCst: as every other access to the slot count.
                    .is_some_and(|w| w.alive.load(Ordering::Acquire) && w.slots.load(Ordering::SeqCst) < sh.k)
            })
    }

    /// Sends `work` to a worker with a free slot now, or gives it back
    /// (a pool with a queue limit of 0).
    pub(crate) fn dispatch_now(&self, work: Work) -> Result<(), Work> {
        let sh = &self.shared;
        let Work::Task(t) = work else { return Err(work) };
        if sh.core.suspended.load(Ordering::Acquire) {
            return Err(Work::Task(t));
        }
        let n = sh.slots.len();
        // Relaxed: only spreads the starting point.
        let start = sh.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let Some(w) = sh.slots[(start + i) % n].current() else {
                continue;
            };
            if !w.alive.load(Ordering::Acquire) {
                continue;
            }
            // SeqCst: as every other access to the slot count (see `pump`).
            let mut cur = w.slots.load(Ordering::SeqCst);
            while cur < sh.k {
                match w
                    .slots
                    .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => {
                        dispatch(&w, &sh.core, t);
                        if let Err(e) = w.tx.flush() {
                            log::debug!(
                                "worker {}: flush failed ({e}); its reader will report the exit",
                                w.id
                            );
                        }
                        return Ok(());
                    }
                    Err(now) => cur = now,
                }
            }
        }
        Err(Work::Task(t))
    }

    /// [`dispatch_now`](Self::dispatch_now), waiting for a free slot until
    /// `deadline` (or forever) unless `closed()`.
    pub(crate) fn dispatch_blocking(
        &self,
        work: Work,
        deadline: Option<Instant>,
        closed: impl Fn() -> bool,
    ) -> Result<(), Work> {
        let mut held = Some(work);
        let sent = self.shared.core.free.wait(
            || {
                let w = held.take()?;
                match self.dispatch_now(w) {
                    Ok(()) => Some(()),
                    Err(w) => {
                        held = Some(w);
                        None
                    }
                }
            },
            closed,
            deadline,
        );
        match (sent, held) {
            (Some(()), _) => Ok(()),
            (None, Some(w)) => Err(w),
            (None, None) => unreachable!("the work is held until it is sent"),
        }
    }

    /// Whether the workers serve `J`'s route with `J`'s types, from the
    /// route table the workers announced at start.
    pub(crate) fn check_route<J: Job>(&self) -> Result<(), Failure> {
        let key = std::any::TypeId::of::<J>();
        if let Some(r) = self
            .shared
            .checked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return r.clone();
        }
        let Some(routes) = self.shared.routes.get() else {
            return Ok(());
        };
        let mine = RouteInfo::of::<J>();
        let r = match routes.get(J::NAME) {
            None => Err(Failure::UnknownRoute(J::NAME.to_string())),
            Some(theirs) if theirs.fingerprint != mine.fingerprint => Err(Failure::Codec(
                crate::job::Side::Supervisor,
                format!(
                    "the workers serve route {:?} as `{}`, but this job is `{}`: two job types share \
                     one NAME, or supervisor and worker are built from different code",
                    J::NAME,
                    theirs.types,
                    mine.types
                ),
            )),
            Some(_) => Ok(()),
        };
        self.shared
            .checked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.clone());
        r
    }

    /// Sends `task` to worker `w` whatever its slots (broadcast).
    pub(crate) fn send_to(&self, w: usize, task: Task) {
        let core = &self.shared.core;
        let slot = &self.shared.slots[w];
        let worker = {
            let mut waiting = lock(&slot.waiting);
            match (
                slot.current().filter(|w| w.alive.load(Ordering::Acquire)),
                &mut *waiting,
            ) {
                (Some(worker), _) => worker,
                (None, Some(queue)) => {
                    // Exited or restarting: the replacement takes it first.
                    queue.push(task);
                    return;
                }
                (None, None) => {
                    drop(waiting);
                    core.retire_task(
                        &task,
                        Failure::Rejected(format!("worker {w} has stopped")),
                        Some(w),
                    );
                    return;
                }
            }
        };
        // SeqCst: as every other access to the slot count (see `pump`).
        worker.slots.fetch_add(1, Ordering::SeqCst);
        dispatch(&worker, core, task);
        if let Err(e) = worker.tx.flush() {
            log::warn!("worker {}: could not send a broadcast job: {e}", worker.id);
        }
    }

    /// The conversation with worker `w`'s current process, if it is up
    /// and the pool has worker links.
    pub(crate) fn link(&self, w: usize) -> Option<Arc<crate::link::Link>> {
        self.shared.slots.get(w)?.current()?.link.clone()
    }

    pub(crate) fn pids_and_restarts(&self) -> (Vec<Option<u32>>, Vec<u64>) {
        self.shared
            .slots
            .iter()
            .map(|s| {
                (
                    s.current().map(|w| w.pid),
                    // Relaxed: statistics only.
                    s.restarts.load(Ordering::Relaxed),
                )
            })
            .unzip()
    }

    /// Whether any worker holds jobs.
    pub(crate) fn busy(&self) -> bool {
        self.shared.slots.iter().any(|s| {
            s.current()
                // Acquire/SeqCst: see `pump`; a dead worker's slots do not count.
                .is_some_and(|w| w.alive.load(Ordering::Acquire) && w.slots.load(Ordering::SeqCst) > 0)
        })
    }

    /// Sends a control message (suspend, resume) to every live worker.
    pub(crate) fn broadcast_control(&self, msg: &ToWorker<'_>) {
        for s in &self.shared.slots {
            if let Some(w) = s.current() {
                if let Err(e) = w.tx.send(msg) {
                    log::debug!("worker {}: {msg:?} not sent ({e}); it is exiting", w.id);
                }
            }
        }
    }

    /// The shutdown's deadline passed (scenario "shutdown"): SIGTERM every
    /// worker, then SIGKILL those still alive after `TERM_GRACE`. Their
    /// jobs fail with `Cancelled`.
    pub(crate) fn terminate_all(&self) {
        let core = &self.shared.core;
        let live: Vec<Arc<Worker>> = self
            .shared
            .slots
            .iter()
            .filter_map(Slot::current)
            .filter(|w| w.alive.load(Ordering::Acquire))
            .collect();
        for w in &live {
            *lock(&w.ended_by) = Some(EndReason::Shutdown);
            if w.signal(SIGTERM) {
                // Relaxed: a count for the report.
                core.killed_by_shutdown.fetch_add(1, Ordering::Relaxed);
            }
        }
        let deadline = Instant::now() + TERM_GRACE;
        core.idle.wait_until(Some(deadline), || {
            live.iter().all(|w| !w.alive.load(Ordering::Acquire))
        });
        for w in &live {
            if w.alive.load(Ordering::Acquire) {
                log::warn!("worker {} (pid {}) ignored SIGTERM; killing it", w.id, w.pid);
                w.kill();
            }
        }
    }

    /// Stops every worker and its slot thread (scenario "shutdown"): each
    /// is told to stop and waited for; one that does not exit within
    /// `STOP_GRACE` is killed.
    pub(crate) fn stop(&self) {
        let core = &self.shared.core;
        core.stopping.store(true, Ordering::Release);
        {
            let (m, cv) = &self.shared.stop_gate;
            let _g = lock(m);
            cv.notify_all();
        }
        for s in &self.shared.slots {
            if let Some(w) = s.current() {
                send_soon(w, ToWorker::Stop);
            }
        }
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for (i, (h, done)) in threads.into_iter().enumerate() {
            let mut finished = done.recv_timeout(STOP_GRACE).is_ok();
            if !finished {
                if let Some(w) = self.shared.slots.get(i).and_then(Slot::current) {
                    log::warn!("worker {} did not stop within {STOP_GRACE:?}; killing it", w.id);
                    *lock(&w.ended_by) = Some(EndReason::Shutdown);
                    if w.kill() {
                        // Relaxed: a count for the report.
                        core.killed_by_shutdown.fetch_add(1, Ordering::Relaxed);
                    }
                }
                finished = done.recv_timeout(STOP_GRACE).is_ok();
            }
            if !finished {
                log::error!("the thread of worker {i} did not finish; leaving it");
                continue;
            }
            if h.join().is_err() {
                log::error!("the thread of worker {i} panicked");
            }
        }
    }

    fn find(&self, worker: usize, epoch: u64) -> Option<Arc<Worker>> {
        self.shared
            .slots
            .get(worker)?
            .current()
            .filter(|w| w.epoch == epoch)
    }
}

impl Worker {
    /// Sends `sig` to the process if it has not been reaped. Returns
    /// whether it was sent.
    fn signal(&self, sig: i32) -> bool {
        match lock(&self.child).as_ref() {
            Some(c) => crate::sys::signal_child(c, sig).is_ok(),
            None => false,
        }
    }

    /// SIGKILL, if not reaped yet.
    fn kill(&self) -> bool {
        match lock(&self.child).as_mut() {
            Some(c) => c.kill().is_ok(),
            None => false,
        }
    }
}

/// Sends `msg` to `w` from a thread of its own. The monitor and the
/// shutdown use this: a write to a worker whose socket is full (it is stuck
/// in a handler with large jobs queued) must not stop every timer of the
/// pool, or the shutdown that is about to kill that worker.
fn send_soon(w: Arc<Worker>, msg: ToWorker<'static>) {
    let spawned = std::thread::Builder::new()
        .name("portpool-send".into())
        .spawn(move || {
            if let Err(e) = w.tx.send(&msg) {
                log::debug!("worker {}: {msg:?} not sent ({e}); it is exiting", w.id);
            }
        });
    if let Err(e) = spawned {
        log::error!("could not start a thread to send a control message: {e}");
    }
}

impl Supervised for Processes {
    fn cancel_running(&self, id: u64) -> Option<(usize, u64)> {
        for s in &self.shared.slots {
            let Some(w) = s.current() else { continue };
            if lock(&w.pending).contains_key(&id) {
                let at = (w.id, w.epoch);
                send_soon(w, ToWorker::Cancel { id });
                return Some(at);
            }
        }
        None
    }

    fn time_out(&self, id: u64, worker: usize, epoch: u64, after: Duration) -> bool {
        let Some(w) = self.find(worker, epoch) else {
            return false;
        };
        let core = &self.shared.core;
        let settled = {
            let pending = lock(&w.pending);
            let Some(t) = pending.get(&id) else {
                return false;
            };
            t.state.cancel();
            core.deliver_failure(
                &t.state,
                &t.reply,
                t.jobs(),
                Failure::TimedOut(TimeoutPhase::Run, after),
                Some(worker),
            )
        };
        if settled {
            log::warn!("job {id} on worker {worker} ran past its timeout of {after:?}");
            send_soon(w, ToWorker::Cancel { id });
        }
        settled
    }

    fn grace_over(&self, id: u64, worker: usize, epoch: u64) -> bool {
        let Some(w) = self.find(worker, epoch) else {
            return false;
        };
        if !lock(&w.pending).contains_key(&id) {
            return false;
        }
        log::warn!(
            "worker {worker} (pid {}): job {id} did not stop within its grace period; terminating the worker",
            w.pid
        );
        {
            let mut ended = lock(&w.ended_by);
            match &mut *ended {
                Some(EndReason::Victims(ids)) => ids.push(id),
                Some(EndReason::Shutdown) => {}
                None => *ended = Some(EndReason::Victims(vec![id])),
            }
        }
        w.signal(SIGTERM)
    }

    fn kill(&self, worker: usize, epoch: u64) {
        if let Some(w) = self.find(worker, epoch) {
            if w.alive.load(Ordering::Acquire) && w.kill() {
                log::warn!("worker {worker} (pid {}) outlived SIGTERM; killed", w.pid);
            }
        }
    }
}

impl Shared {
    fn kick(&self) {
        // SeqCst: the enqueue before this must be visible to a reader that
        // frees a slot and then checks the queue (see `pump`).
        fence(Ordering::SeqCst);
        let n = self.slots.len();
        // Relaxed: only spreads the starting point.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Some(w) = self.slots[(start + i) % n].current() {
                pump(&w, &self.core, self.k, true);
            }
            if !self.core.has_queued() {
                return;
            }
        }
    }

    /// Waits `d` unless the pool stops first; returns whether it may go on.
    fn backoff(&self, d: Duration) -> bool {
        let Some(deadline) = crate::util::deadline(d) else {
            // A backoff too long to represent: wait until the pool stops.
            let (m, cv) = &self.stop_gate;
            let mut g = lock(m);
            while !self.core.stopping.load(Ordering::Acquire) {
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            return false;
        };
        let (m, cv) = &self.stop_gate;
        let mut g = lock(m);
        loop {
            if self.core.stopping.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// A slot's life: start a worker, serve it until it exits, settle what it
/// held, restart it within the policy (scenario "restart").
fn slot_loop(shared: &Shared, id: usize, ready: crossbeam_channel::Sender<Result<(), BuildError>>) {
    let core = &shared.core;
    let slot = &shared.slots[id];
    let mut ready = Some(ready);
    let mut epoch = 0u64;
    loop {
        epoch += 1;
        let why = match start_worker(shared, id, epoch) {
            Ok(w) => {
                if core.suspended.load(Ordering::Acquire) {
                    let _ = w.tx.send(&ToWorker::Suspend);
                }
                {
                    let mut waiting = lock(&slot.waiting);
                    *lock(&slot.current) = Some(w.clone());
                    for t in waiting.iter_mut().flat_map(|q| q.drain(..)) {
                        // SeqCst: as every other access to the slot count.
                        w.slots.fetch_add(1, Ordering::SeqCst);
                        dispatch(&w, core, t);
                    }
                }
                // The pool began to stop while this worker started: `stop`
                // may have missed it, so it is told here.
                if core.stopping.load(Ordering::Acquire) {
                    let _ = w.tx.feed(&ToWorker::Stop);
                }
                // Write what was dispatched above (`pump` flushes only what
                // it sends itself).
                if let Err(e) = w.tx.flush() {
                    log::debug!("worker {id}: flush failed ({e}); its reader will report the exit");
                }
                core.event(PoolEvent::WorkerStarted {
                    worker: id,
                    pid: Some(w.pid),
                    // Relaxed: statistics only.
                    restarts: slot.restarts.load(Ordering::Relaxed),
                });
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                // Work may have queued up while the slot was empty.
                pump(&w, core, shared.k, true);
                core.free.notify();
                let exit = reader_loop(&w, shared);
                *lock(&slot.current) = None;
                if exit.expected || core.stopping.load(Ordering::Acquire) {
                    if core.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    // The pool ended it (a cancelled job's worker): replace
                    // it at once, without counting a restart.
                    slot.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                format!("worker {id} (pid {}) exited: {}", w.pid, exit.status)
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                let reason = e.to_string();
                core.event(PoolEvent::StartFailed {
                    worker: id,
                    reason: reason.clone(),
                });
                reason
            }
        };
        if core.stopping.load(Ordering::Acquire) || core.failure().is_some() {
            return;
        }
        let allowed = lock(&shared.intensity).restart(Instant::now());
        match allowed {
            Ok(wait) => {
                if !shared.backoff(wait) {
                    return;
                }
                // Relaxed: statistics only.
                slot.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(n) => {
                let p = core.config.restart;
                core.fail_pool(format!(
                    "{n} restart(s) within {:?} reached the limit of {}; the last: {why}",
                    p.period, p.max_restarts
                ));
                return;
            }
        }
    }
}

fn start_worker(shared: &Shared, id: usize, epoch: u64) -> Result<Arc<Worker>, BuildError> {
    let (core, k, links) = (&shared.core, shared.k, shared.links);
    let template = &shared.template;
    let (ours, theirs) = port::open().map_err(|e| BuildError::io("could not open a port", e))?;
    let mut cmd = copy_command(template);
    cmd.env(WORKER_ID_ENV, id.to_string());
    if links {
        cmd.env(WORKER_LINK_ENV, "1");
    }
    cmd.stderr(Stdio::piped());
    // A process group of its own: the terminal's Ctrl-C, Ctrl-\ and Ctrl-Z
    // go to the foreground group, and the supervisor decides what its
    // workers do about them (README "signals"). The worker still dies
    // with its supervisor (EOF on its port, PR_SET_PDEATHSIG).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = theirs.spawn(cmd).map_err(|e| {
        BuildError::io(
            format!("could not start worker {id} ({:?})", template.get_program()),
            e,
        )
    })?;
    let pid = child.id();
    let stderr = match StderrTail::follow(&mut child, &format!("worker {id}")) {
        Ok(t) => t,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BuildError::io(
                format!("could not start worker {id}'s stderr reader"),
                e,
            ));
        }
    };
    // A worker that fails before it serves: kill and reap it, and say why,
    // leading with the worker's own explanation if it gave one.
    // (It may be on its way out, with its reason on its stderr: a moment
    // to exit on its own before it is killed.)
    let fail = |mut child: Child, what: String, e: Option<std::io::Error>| {
        let status = match wait_or_kill(&mut child, FAIL_GRACE) {
            Ok((st, _)) => describe_status(st),
            Err(e) => format!("could not be waited for: {e}"),
        };
        let tail = stderr.wait_lines();
        let forgot = crate::pool::FORGOT_SERVE_IF_WORKER;
        if let Some(at) = tail.iter().find_map(|l| l.find(forgot).map(|i| &l[i..])) {
            return BuildError::new(format!("worker {id} (pid {pid}) could not start: {}", at.trim()));
        }
        let last = crate::stderr::last_meaningful(&tail)
            .map(|l| format!("; its stderr ended with: {l}"))
            .unwrap_or_default();
        let what = format!("worker {id} (pid {pid}) {what} ({status}{last})");
        match e {
            Some(e) => BuildError::io(what, e),
            None => BuildError::new(what),
        }
    };
    let opts = ConnectOptions {
        role: Role::Supervisor,
        timeout: START_TIMEOUT,
        ..ConnectOptions::default()
    };
    let mut ipc = match ours.connect_with(opts) {
        Ok(ipc) if ipc.peer_role() == Role::Worker => ipc,
        Ok(ipc) => {
            let role = ipc.peer_role();
            return Err(fail(
                child,
                format!("answered as {role:?}, not as a worker"),
                None,
            ));
        }
        Err(e) => return Err(fail(child, "did not complete its handshake".into(), Some(e))),
    };
    // The pool's own connections do not keep a runtime alive; the pool does.
    ipc.unref();
    let link = if links {
        match open_link(&ipc) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => return Err(fail(child, "did not open its link".into(), Some(e))),
        }
    } else {
        None
    };
    // The worker announces its routes before its first job: a worker built
    // from other code fails here, not at its first decode.
    match ipc.recv_timeout::<FromWorker>(START_TIMEOUT) {
        Ok(FromWorker::Routes { routes }) => {
            if let Err(why) = check_routes(shared, id, routes) {
                return Err(fail(child, why, None));
            }
        }
        Ok(other) => {
            let what = format!("sent {other:?} before announcing its routes");
            return Err(fail(child, what, None));
        }
        Err(e) => {
            let what = format!("did not announce its routes: {e}");
            return Err(fail(child, what, None));
        }
    }
    let (tx, rx) = ipc.split();
    let rx_fd = match rx.dup_fd() {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::warn!("worker {id}: could not duplicate its port's fd ({e}); its reader polls");
            None
        }
    };
    Ok(Arc::new_cyclic(|me| Worker {
        id,
        epoch,
        pid,
        tx,
        slots: AtomicUsize::new(0),
        alive: AtomicBool::new(true),
        pending: Mutex::new(HashMap::new()),
        child: Mutex::new(Some(child)),
        ended_by: Mutex::new(None),
        stderr,
        rx: Mutex::new(Some(rx)),
        rx_cv: Condvar::new(),
        reader_napping: AtomicBool::new(false),
        rx_fd,
        me: me.clone(),
        core: core.clone(),
        k,
        link,
        broke: Mutex::new(None),
    }))
}

/// Compares the routes worker `id` announced with the supervisor's own
/// handlers (if it has any) and with the first worker's.
fn check_routes(shared: &Shared, id: usize, routes: Vec<RouteInfo>) -> Result<(), String> {
    let theirs: HashMap<String, RouteInfo> = routes.into_iter().map(|r| (r.name.clone(), r)).collect();
    for mine in shared.core.handlers.route_table() {
        match theirs.get(&mine.name) {
            None => {
                return Err(format!(
                    "has no handler for route {:?} ({}), which this supervisor registered: is it built \
                     from the same code?",
                    mine.name, mine.types
                ));
            }
            Some(t) if t.fingerprint != mine.fingerprint => {
                return Err(format!(
                    "serves route {:?} as `{}`, but this supervisor registered it as `{}`: is it built \
                     from the same code?",
                    mine.name, t.types, mine.types
                ));
            }
            Some(_) => {}
        }
    }
    let first = shared.routes.get_or_init(|| theirs.clone());
    if *first != theirs {
        let mut names: Vec<&String> = theirs.keys().chain(first.keys()).collect();
        names.sort();
        names.dedup();
        let differs = names
            .into_iter()
            .find(|n| first.get(*n).map(|r| r.fingerprint) != theirs.get(*n).map(|r| r.fingerprint))
            .cloned()
            .unwrap_or_default();
        return Err(format!(
            "announced other routes than the pool's first worker (route {differs:?} differs): worker {id} \
             runs other code"
        ));
    }
    Ok(())
}

/// Sends a worker the other end of a new port over its job connection and
/// starts a conversation on ours (the worker connects its end at start).
fn open_link(ipc: &crate::port::Ipc) -> std::io::Result<crate::link::Link> {
    let (ours, theirs) = port::open()?;
    ipc.send_port(theirs)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))?;
    let conn = ours.connect_with(ConnectOptions {
        role: Role::Supervisor,
        timeout: START_TIMEOUT,
        ..ConnectOptions::default()
    })?;
    let mut link = crate::link::Link::new(conn);
    link.close_ref();
    Ok(link)
}

/// Takes queued jobs for `w` while it has free slots. Flushes what it sent
/// if `flush` (the reader defers the flush while more results are waiting).
fn pump(w: &Worker, core: &Core, k: usize, flush: bool) {
    let mut sent = false;
    loop {
        // Acquire: pairs with the Release store when the worker dies or
        // the pool is suspended.
        if !w.alive.load(Ordering::Acquire) || core.suspended.load(Ordering::Acquire) {
            break;
        }
        // SeqCst throughout: "free a slot, then look at the queue" here and
        // "enqueue, then look at the slots" in `kick` must not both miss.
        let cur = w.slots.load(Ordering::SeqCst);
        if cur >= k {
            break;
        }
        if w.slots
            .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            continue;
        }
        match core.pop() {
            Some(Work::Task(t)) => {
                if t.state.is_settled() {
                    // Cancelled (or past its queue deadline) while queued:
                    // dropped without reaching the worker.
                    w.slots.fetch_sub(1, Ordering::SeqCst);
                    core.count_settled_elsewhere(&t.state, t.jobs());
                    continue;
                }
                dispatch(w, core, t);
                sent = true;
            }
            Some(Work::Stop) | None => {
                w.slots.fetch_sub(1, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if !core.has_queued() {
                    break;
                }
            }
        }
    }
    if sent && flush {
        if let Err(e) = w.tx.flush() {
            log::debug!(
                "worker {}: flush failed ({e}); its reader will report the exit",
                w.id
            );
        }
    }
}

/// Records `t` as pending on `w` and queues its frame. The caller holds a slot.
fn dispatch(w: &Worker, core: &Core, mut t: Task) {
    let jobs = t.jobs();
    let id = t.id;
    t.state.mark_dispatched();
    // Relaxed: statistics only.
    core.counters[w.id]
        .running
        .fetch_add(jobs as usize, Ordering::Relaxed);
    // The task is pending before its frame can reach the worker (the
    // answer may come back at once); the job value is encoded from here
    // and put back, so a crash can send the task to another worker.
    // The only job in flight on this worker: its ticket may read the
    // answer itself (ARCHITECTURE.md, "a lone job's waiter reads its answer").
    // SeqCst: as every other access to the slot count.
    if w.slots.load(Ordering::SeqCst) == 1 {
        let me: std::sync::Weak<dyn super::FastRead> = w.me.clone();
        t.state.set_fast_reader(me);
    } else {
        // Others are in flight: the reader thread must not nap.
        w.wake_reader();
    }
    let job = std::mem::replace(&mut t.job, super::Payload::Lent);
    let (head, send_job, timeout) = (t.head(), t.send_job, t.timeout);
    // (Only a chunk's sender reports to its reply: no clone per lone job.)
    let reply = t.batch.map(|_| t.reply.clone());
    lock(&w.pending).insert(id, t);
    // Encoding runs the job's Serialize impl, which may panic: that fails
    // this job, not the thread that dispatches (it may be a reader).
    let sent = match &job {
        super::Payload::Value(v) => send_job(&w.tx, &head, &**v, reply.as_ref()),
        super::Payload::Encoded(bytes) => super::send_encoded(&w.tx, &head, bytes),
        super::Payload::Lent => Err(SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            "the job was lost in a crash while it was being sent".into(),
        ))),
    };
    let failure = match sent {
        Ok(()) => {
            // The cancel flag is read after the insert: a cancel from then
            // on finds the task pending; one before is seen here.
            let cancelled = match lock(&w.pending).get_mut(&id) {
                Some(t) => {
                    t.job = job;
                    t.state.is_cancelled()
                }
                None => false,
            };
            if let Some(after) = timeout {
                let _ = core.control.send(Control::RunDeadline {
                    id,
                    worker: w.id,
                    epoch: w.epoch,
                    after,
                });
            }
            if cancelled {
                // Its ticket's cancel may have looked before it was pending.
                let _ = core.control.send(Control::Cancel { id });
            }
            // The worker may have died between our `alive` check and the
            // insert above, after its reader failed what was pending: then
            // nobody else will answer this job. (Acquire: pairs with the
            // Release store in `reader_loop`, which precedes its drain of
            // `pending` under the same lock we took.)
            if w.alive.load(Ordering::Acquire) {
                return;
            }
            Failure::WorkerExited {
                worker: w.id,
                pid: Some(w.pid),
                status: Some("it exited as the job was sent".into()),
                stderr: Vec::new(),
            }
        }
        Err(SendFail::Job(f)) => f,
        Err(SendFail::Port(why)) => Failure::WorkerExited {
            worker: w.id,
            pid: Some(w.pid),
            status: Some(format!("its port failed: {why}")),
            stderr: Vec::new(),
        },
    };
    // Only the side that takes the job out of `pending` answers it, so a
    // job failed here and by the reader still gets exactly one outcome.
    let taken = lock(&w.pending).remove(&id);
    if let Some(t) = taken {
        w.slots.fetch_sub(1, Ordering::SeqCst);
        core.counters[w.id]
            .running
            .fetch_sub(jobs as usize, Ordering::Relaxed);
        core.retire_failure(&t.state, &t.reply, jobs, failure, Some(w.id));
    }
}

/// How a worker's reader loop ended.
struct Exit {
    status: String,
    /// The pool ended the worker itself.
    expected: bool,
}

/// Reads a worker's answers until its port closes, then settles what it
/// held: retried, re-queued or failed (scenario "crash").
///
/// It spins briefly on the port after each answer (the next one often
/// follows at once), then sleeps on a duplicate of the fd without holding
/// the receiver, so a ticket waiting for its worker's only job can read its
/// answer itself; while one does, this thread naps.
fn reader_loop(w: &Worker, shared: &Shared) -> Exit {
    use crate::transport::Wait;
    let core = &*shared.core;
    let why = 'read: loop {
        let mut start = Instant::now();
        let mut tries = 0u32;
        loop {
            match w.read_step(Wait::Now) {
                Step::Frame => start = Instant::now(),
                Step::End(why) => break 'read why,
                Step::Busy => {
                    // A ticket reads; nap until it is done or others need us.
                    let mut g = lock(&w.rx);
                    if g.is_none() {
                        // Release: pairs with the Acquire load in `wake_reader`.
                        w.reader_napping.store(true, Ordering::Release);
                        g = w
                            .rx_cv
                            .wait_timeout(g, READER_NAP)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|p| p.into_inner().0);
                        w.reader_napping.store(false, Ordering::Release);
                    }
                    drop(g);
                    start = Instant::now();
                }
                Step::Nothing => {
                    if start.elapsed() >= crate::transport::DEFAULT_SPIN {
                        break;
                    }
                    crate::util::spin_pause(&mut tries);
                }
            }
        }
        // Idle: sleep until the port is readable, without the receiver.
        match &w.rx_fd {
            Some(fd) => {
                if let Err(e) = crate::sys::poll_readable(std::os::fd::AsFd::as_fd(fd), None) {
                    log::debug!(
                        "worker {}: waiting on its port failed ({e}); reading instead",
                        w.id
                    );
                    if let Step::End(why) = w.read_step(Wait::Forever) {
                        break why;
                    }
                }
            }
            None => {
                if let Step::End(why) = w.read_step(Wait::Forever) {
                    break why;
                }
            }
        }
    };
    let counters = &core.counters[w.id];
    let why = why.or_else(|| lock(&w.broke).take());
    // The port is closed (or broken): this worker is finished.
    // Release: pairs with the Acquire loads in `kick` and `pump`.
    w.alive.store(false, Ordering::Release);
    let status = reap(w);
    let stderr = w.stderr.wait_lines();
    let status = match &why {
        Some(e) => format!("it broke its protocol ({e}); {status}"),
        None => status,
    };
    let ended_by = lock(&w.ended_by).take();
    let stopping = core.stopping.load(Ordering::Acquire);
    let failure = Failure::WorkerExited {
        worker: w.id,
        pid: Some(w.pid),
        status: Some(status.clone()),
        stderr,
    };
    let held: Vec<Task> = lock(&w.pending).drain().map(|(_, t)| t).collect();
    let jobs_held = held.len();
    let mut requeued = false;
    for t in held {
        let jobs = t.jobs();
        counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
        let retry = match &ended_by {
            // Its neighbours did nothing wrong: back to the queue, no
            // retry spent (scenario "cancel").
            Some(EndReason::Victims(ids)) => !ids.contains(&t.id),
            Some(EndReason::Shutdown) => false,
            // A crash: retried if it has retries left (scenario "retry").
            None => t.retries > 0 && !stopping,
        };
        // A task whose job value was out for encoding when the worker died
        // cannot be sent again (`dispatch`).
        let retry = retry
            && !matches!(t.job, super::Payload::Lent)
            && !t.state.is_settled()
            && core.failure().is_none();
        if retry {
            let mut t = t;
            if ended_by.is_none() {
                t.retries -= 1;
                log::info!(
                    "job {} lost with worker {}: retrying ({} left)",
                    t.id,
                    w.id,
                    t.retries
                );
            }
            core.requeue(t);
            requeued = true;
            continue;
        }
        let f = match ended_by {
            Some(EndReason::Shutdown) => Failure::Cancelled,
            _ => failure.clone(),
        };
        core.retire_failure(&t.state, &t.reply, jobs, f, Some(w.id));
    }
    w.slots.store(0, Ordering::SeqCst);
    let expected = ended_by.is_some() || stopping;
    core.event(PoolEvent::WorkerExited {
        worker: w.id,
        pid: Some(w.pid),
        status: status.clone(),
        jobs_held,
        expected,
    });
    if requeued {
        shared.kick();
    }
    core.idle.notify();
    Exit { status, expected }
}

/// Waits for the worker process to exit (killing it if it lingers after
/// closing its port) and describes how it ended.
fn reap(w: &Worker) -> String {
    let Some(mut child) = lock(&w.child).take() else {
        return "already reaped".into();
    };
    match wait_or_kill(&mut child, EXIT_GRACE) {
        Ok((st, false)) => describe_status(st),
        Ok((st, true)) => format!(
            "{} (killed: it closed its port but kept running)",
            describe_status(st)
        ),
        Err(e) => format!("could not be waited for: {e}"),
    }
}

/// Waits up to `grace` for `child` to exit, then kills it (SIGKILL) and
/// reaps it. Returns its status and whether it had to be killed.
pub(crate) fn wait_or_kill(
    child: &mut Child,
    grace: Duration,
) -> std::io::Result<(std::process::ExitStatus, bool)> {
    let deadline = Instant::now() + grace;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok((st, false));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait().map(|st| (st, true));
        }
        // An exiting child sends no event we can wait on here (no pidfd on
        // every kernel we support): poll its status, briefly.
        std::thread::sleep(Duration::from_millis(1));
    }
}
