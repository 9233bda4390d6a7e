//! Process workers: each is a child process with a port. Up to `k` jobs are
//! in flight per worker. Dispatch happens on the thread that frees a slot:
//! the submitter (right after enqueueing) or the worker's reader thread
//! (right after a result), so a job goes from `submit` to the worker's
//! socket without a thread hop.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::wire::{FromWorker, ToWorker, WireOutcome};
use super::{BuildError, Core, Event, Outcome, Reply, Task, Work};
use crate::job::Failure;
use crate::port::{self, ConnectOptions, IpcReceiver, IpcSender, Role};

/// Environment variable that tells a re-run executable it is worker N.
pub const WORKER_ID_ENV: &str = "PORTPOOL_WORKER_ID";

/// How long a worker that closed its port may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long `shutdown` waits for a stopped worker to exit before killing it.
const STOP_GRACE: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wakes a shutdown that waits for the pool to go idle. Answers notify it
/// only while someone waits, so the answer path makes no futex call.
#[derive(Default)]
pub(crate) struct Idle {
    m: Mutex<()>,
    cv: std::sync::Condvar,
    waiting: AtomicBool,
}

impl Idle {
    fn notify(&self) {
        // SeqCst: pairs with the store in `shutdown`, which then re-checks
        // the counters under the lock.
        if self.waiting.load(Ordering::SeqCst) {
            let _g = lock(&self.m);
            self.cv.notify_all();
        }
    }
}

struct Worker {
    id: usize,
    pid: u32,
    tx: IpcSender,
    /// Jobs sent and not answered.
    slots: AtomicUsize,
    alive: AtomicBool,
    /// Each job id sent and not answered: where its answer goes, and how
    /// many jobs it carries.
    pending: Mutex<HashMap<u64, (Reply, u64)>>,
    child: Mutex<Option<Child>>,
}

pub(crate) struct Processes {
    core: Arc<Core>,
    workers: Vec<Arc<Worker>>,
    readers: Vec<(JoinHandle<()>, Receiver<()>)>,
    k: usize,
    next: AtomicUsize,
    idle: Arc<Idle>,
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
    ) -> Result<Processes, BuildError> {
        let idle = Arc::new(Idle::default());
        let mut procs = Processes {
            core: core.clone(),
            workers: Vec::with_capacity(n),
            readers: Vec::with_capacity(n),
            k,
            next: AtomicUsize::new(0),
            idle: idle.clone(),
        };
        // Each worker is spawned from its own reader thread, which lives as
        // long as the worker: PR_SET_PDEATHSIG fires when the *thread* that
        // spawned a child exits, so spawning from the caller's thread would
        // kill the workers when that thread ends (design.md, known traps).
        let template = Arc::new(template);
        let mut started = Vec::with_capacity(n);
        let mut first_error = None;
        for id in 0..n {
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            let (template, core2, idle2) = (template.clone(), core.clone(), idle.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("portpool-reader-{id}"))
                .spawn(move || {
                    match start_worker(&template, id) {
                        Ok((w, rx)) => {
                            let w = Arc::new(w);
                            let _ = ready_tx.send(Ok(w.clone()));
                            reader_loop(&w, rx, &core2, k, &idle2);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                    let _ = done_tx.send(());
                })
                .map_err(|e| BuildError::io(format!("could not start the reader of worker {id}"), e));
            match spawned {
                Ok(h) => started.push((h, done_rx, ready_rx)),
                Err(e) => {
                    // The workers already starting are stopped below.
                    first_error = Some(e);
                    break;
                }
            }
        }
        for (h, done_rx, ready_rx) in started {
            match ready_rx.recv() {
                Ok(Ok(w)) => {
                    procs.workers.push(w);
                    procs.readers.push((h, done_rx));
                }
                Ok(Err(e)) => {
                    let _ = h.join();
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    let _ = h.join();
                    first_error.get_or_insert(BuildError::new("a worker's start-up thread panicked"));
                }
            }
        }
        if let Some(e) = first_error {
            procs.shutdown();
            return Err(e);
        }
        Ok(procs)
    }

    /// Dispatches queued jobs to workers with free slots (after an enqueue).
    pub(crate) fn kick(&self) {
        // SeqCst: the enqueue before this must be visible to a reader that
        // frees a slot and then checks the queue (see `pump`).
        fence(Ordering::SeqCst);
        let n = self.workers.len();
        // Relaxed: only spreads the starting point.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut any_alive = false;
        for i in 0..n {
            let w = &self.workers[(start + i) % n];
            // Acquire: pairs with the Release store when a worker dies.
            if w.alive.load(Ordering::Acquire) {
                any_alive = true;
                pump(w, &self.core, self.k, true);
            }
            if self.core.queue_rx.is_empty() {
                return;
            }
        }
        if !any_alive {
            self.core
                .fail_queued(&Failure::Rejected("every worker of the pool has exited".into()));
        }
    }

    /// Sends `task` to worker `w` whatever its slots (broadcast).
    pub(crate) fn send_to(&self, w: usize, task: Task) {
        let w = &self.workers[w];
        // Acquire: pairs with the Release store when the worker dies.
        if !w.alive.load(Ordering::Acquire) {
            task.reply
                .send(Event::Done(Outcome::Failed(Failure::WorkerExited {
                    worker: w.id,
                    pid: Some(w.pid),
                    status: Some("it had exited before the job was sent".into()),
                })));
            return;
        }
        // SeqCst: as every other access to the slot count (see `pump`).
        w.slots.fetch_add(1, Ordering::SeqCst);
        dispatch(w, &self.core, task);
        if let Err(e) = w.tx.flush() {
            log::warn!("worker {}: could not send a broadcast job: {e}", w.id);
        }
    }

    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.workers.iter().map(|w| Some(w.pid)).collect()
    }

    /// Waits until the queue is empty and nothing is in flight, then tells
    /// each worker to stop and waits for it (killing one that does not exit).
    pub(crate) fn shutdown(&mut self) {
        let Idle { m, cv, waiting } = &*self.idle;
        waiting.store(true, Ordering::SeqCst);
        let mut guard = lock(m);
        loop {
            // Acquire/SeqCst: see `pump`; a dead worker's slots do not count.
            let busy = self
                .workers
                .iter()
                .any(|w| w.alive.load(Ordering::Acquire) && w.slots.load(Ordering::SeqCst) > 0);
            let any_alive = self.workers.iter().any(|w| w.alive.load(Ordering::Acquire));
            if !any_alive || (!busy && self.core.queue_rx.is_empty()) {
                break;
            }
            // The bound only guards against a missed notification.
            guard = cv
                .wait_timeout(guard, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(guard);
        for w in &self.workers {
            if let Err(e) = w.tx.send(&ToWorker::Stop) {
                log::debug!("worker {}: stop not sent ({e}); it is gone", w.id);
            }
        }
        for (i, (h, done)) in self.readers.drain(..).enumerate() {
            if done.recv_timeout(STOP_GRACE).is_err() {
                if let Some(w) = self.workers.get(i) {
                    log::warn!("worker {} did not stop within {STOP_GRACE:?}; killing it", w.id);
                    if let Some(c) = lock(&w.child).as_mut() {
                        let _ = c.kill();
                    }
                }
            }
            if h.join().is_err() {
                log::error!("reader thread {i} panicked");
            }
        }
    }
}

fn start_worker(template: &Command, id: usize) -> Result<(Worker, IpcReceiver), BuildError> {
    let (ours, theirs) = port::open().map_err(|e| BuildError::io("could not open a port", e))?;
    let mut cmd = copy_command(template);
    cmd.env(WORKER_ID_ENV, id.to_string());
    let mut child = theirs.spawn(cmd).map_err(|e| {
        BuildError::io(
            format!("could not start worker {id} ({:?})", template.get_program()),
            e,
        )
    })?;
    let pid = child.id();
    let opts = ConnectOptions {
        role: Role::Supervisor,
        ..ConnectOptions::default()
    };
    let ipc = match ours.connect_with(opts) {
        Ok(ipc) if ipc.peer_role() == Role::Worker => ipc,
        Ok(ipc) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BuildError::new(format!(
                "worker {id} (pid {pid}) answered as {:?}, not as a worker",
                ipc.peer_role()
            )));
        }
        Err(e) => {
            let _ = child.kill();
            let status = child.wait().map(describe_status).unwrap_or_default();
            return Err(BuildError::io(
                format!("worker {id} (pid {pid}) did not complete its handshake ({status})"),
                e,
            ));
        }
    };
    log::info!("worker {id} started (pid {pid})");
    let (tx, rx) = ipc.split();
    Ok((
        Worker {
            id,
            pid,
            tx,
            slots: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            pending: Mutex::new(HashMap::new()),
            child: Mutex::new(Some(child)),
        },
        rx,
    ))
}

/// Takes queued jobs for `w` while it has free slots. Flushes what it sent
/// if `flush` (the reader defers the flush while more results are waiting).
fn pump(w: &Worker, core: &Core, k: usize, flush: bool) {
    let mut sent = false;
    loop {
        // Acquire: pairs with the Release store when the worker dies.
        if !w.alive.load(Ordering::Acquire) {
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
        match core.queue_rx.try_recv() {
            Ok(Work::Task(t)) => {
                if t.is_cancelled() {
                    w.slots.fetch_sub(1, Ordering::SeqCst);
                    core.counters[w.id].finish_n(0, t.jobs());
                    t.reply.send(Event::Done(Outcome::Failed(Failure::Cancelled)));
                    continue;
                }
                dispatch(w, core, t);
                sent = true;
            }
            Ok(Work::Stop) | Err(_) => {
                w.slots.fetch_sub(1, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if core.queue_rx.is_empty() {
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
fn dispatch(w: &Worker, core: &Core, t: Task) {
    let jobs = t.jobs();
    lock(&w.pending).insert(t.id, (t.reply.clone(), jobs));
    // Relaxed: statistics only.
    core.counters[w.id]
        .running
        .fetch_add(jobs as usize, Ordering::Relaxed);
    // Encoding runs the job's Serialize impl, which may panic: that fails
    // this job, not the thread that dispatches (it may be a reader).
    let sent = crate::job::catch(|| (t.send_job)(&w.tx, &t.head(), &*t.job));
    let failure = match sent {
        Ok(Ok(())) => {
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
            }
        }
        Ok(Err(crate::error::SendError::Encode(e))) => {
            Failure::Codec(crate::job::Side::Supervisor, e.to_string())
        }
        Ok(Err(crate::error::SendError::TooLarge { len, limit })) => Failure::Codec(
            crate::job::Side::Supervisor,
            format!("the job encodes to {len} bytes, over the frame limit of {limit}"),
        ),
        Ok(Err(other)) => Failure::WorkerExited {
            worker: w.id,
            pid: Some(w.pid),
            status: Some(format!("its port failed: {other}")),
        },
        Err(Failure::Panicked(msg)) => Failure::Codec(
            crate::job::Side::Supervisor,
            format!("encoding the job panicked: {msg}"),
        ),
        Err(other) => other,
    };
    // Only the side that takes the job out of `pending` answers it, so a
    // job failed here and by the reader still gets exactly one outcome.
    if lock(&w.pending).remove(&t.id).is_some() {
        w.slots.fetch_sub(1, Ordering::SeqCst);
        core.counters[w.id]
            .running
            .fetch_sub(jobs as usize, Ordering::Relaxed);
        core.counters[w.id].finish_n(0, jobs);
        t.reply.send(Event::Done(Outcome::Failed(failure)));
    }
}

/// Reads a worker's answers until its port closes, then reports its exit.
fn reader_loop(w: &Worker, mut rx: IpcReceiver, core: &Core, k: usize, idle: &Idle) {
    let counters = &core.counters[w.id];
    let why = loop {
        let msg = match rx.recv::<FromWorker>() {
            Ok(m) => m,
            Err(e) if e.is_disconnected() => break None,
            Err(e) => break Some(e.to_string()),
        };
        match msg {
            FromWorker::Progress { id, payload } => {
                if let Some((r, _)) = lock(&w.pending).get(&id) {
                    r.send(Event::Progress(payload));
                }
            }
            FromWorker::Done { id, outcome } => {
                let Some((reply, jobs)) = lock(&w.pending).remove(&id) else {
                    log::warn!("worker {} answered job {id}, which it was not given", w.id);
                    continue;
                };
                let (outcome, failed) = match outcome {
                    WireOutcome::Ran(b) => (Outcome::Bytes(b), 0),
                    WireOutcome::RanChunk { bytes, failed } => {
                        (Outcome::Bytes(bytes), u64::from(failed).min(jobs))
                    }
                    WireOutcome::Failed(f) => (Outcome::Failed(f), jobs),
                };
                // Relaxed: statistics only.
                counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
                counters.finish_n(jobs - failed, failed);
                log::trace!("worker {}: job {id} done", w.id);
                reply.send(Event::Done(outcome));
                w.slots.fetch_sub(1, Ordering::SeqCst);
                // Queue the next jobs; write everything queued (by this or an
                // earlier answer) once no more answers wait.
                pump(w, core, k, false);
                let more = rx.has_frame().unwrap_or(false);
                if !more {
                    if let Err(e) = w.tx.flush() {
                        log::debug!("worker {}: flush failed ({e}); the port is closing", w.id);
                    }
                    idle.notify();
                }
            }
        }
    };
    // The port is closed (or broken): this worker is finished.
    // Release: pairs with the Acquire loads in `kick` and `pump`.
    w.alive.store(false, Ordering::Release);
    let status = reap(w);
    match &why {
        Some(e) => log::error!(
            "worker {} (pid {}) broke its protocol: {e}; {status}",
            w.id,
            w.pid
        ),
        None => log::info!("worker {} (pid {}) exited: {status}", w.id, w.pid),
    }
    let failure = Failure::WorkerExited {
        worker: w.id,
        pid: Some(w.pid),
        status: Some(status),
    };
    for (_, (reply, jobs)) in lock(&w.pending).drain() {
        counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
        counters.finish_n(0, jobs);
        reply.send(Event::Done(Outcome::Failed(failure.clone())));
    }
    w.slots.store(0, Ordering::SeqCst);
    // The last worker gone: queued jobs can never run; fail them now rather
    // than when the next submit or the shutdown notices.
    // AcqRel: each reader decrements once; the last one sees 1.
    if core.live_workers.fetch_sub(1, Ordering::AcqRel) == 1 {
        core.fail_queued(&Failure::Rejected("every worker of the pool has exited".into()));
    }
    idle.notify();
}

/// Waits for the worker process to exit (killing it if it lingers after
/// closing its port) and describes how it ended.
fn reap(w: &Worker) -> String {
    let Some(mut child) = lock(&w.child).take() else {
        return "already reaped".into();
    };
    let deadline = Instant::now() + EXIT_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return describe_status(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                let _ = child.kill();
                return child
                    .wait()
                    .map(|st| {
                        format!(
                            "{} (killed: it closed its port but kept running)",
                            describe_status(st)
                        )
                    })
                    .unwrap_or_else(|e| format!("could not be waited for: {e}"));
            }
            Err(e) => return format!("could not be waited for: {e}"),
        }
    }
}
