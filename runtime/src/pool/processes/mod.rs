//! Process workers: each is a child process with a port. Up to `max_in_flight` jobs are
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

mod dispatch;
pub(crate) use dispatch::FreeGate;
mod reader;
mod slot;
mod worker;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{BuildError, Core, Event, Outcome, SendFail, Task, Work, lock, scale};
use crate::job::{Failure, Job, RouteInfo, TimeoutPhase};
use crate::launch::Launcher;
use crate::port::{self, ConnectOptions, IpcReceiver, IpcSender, Role};
use crate::proto::{FromWorker, ToWorker, WireOutcome};
use crate::stderr::StderrTail;
use crate::supervisor::monitor::GraceOver;
use crate::supervisor::monitor::{Books, Control, Supervised};
use crate::supervisor::{Intensity, PoolEvent, STOP_GRACE, TERM_GRACE};

pub(crate) use crate::child::{describe_status, wait_or_kill};
use dispatch::{dispatch, fill_slots};
use reader::reader_loop;
use slot::slot_loop;
use worker::{EndReason, Worker, clocked, send_soon, sent_behind};

pub use crate::child::{WORKER_ID_ENV, WORKER_LINK_ENV};

/// How long a worker that closed its port may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long a new worker has to complete its handshake.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// SIGTERM (15 on every Unix portpool supports).
const SIGTERM: i32 = libc::SIGTERM;

/// A worker slot: the current incarnation, if one is up.
struct Slot {
    pub(super) current: Mutex<Option<Arc<Worker>>>,
    /// Broadcast tasks for this slot that came while it was restarting;
    /// its next worker takes them first. `None` once the slot's thread has
    /// ended: nothing will come for them. (Lock order: `waiting`, then
    /// `current`.)
    pub(super) waiting: Mutex<Option<Vec<Task>>>,
    pub(super) restarts: AtomicU64,
    /// Where its workers run.
    pub(super) launcher: Launcher,
    /// How many jobs its worker may hold at once.
    pub(super) max_in_flight: usize,
}

impl Slot {
    fn new(spec: SlotSpec) -> Slot {
        Slot {
            current: Mutex::new(None),
            waiting: Mutex::new(Some(Vec::new())),
            restarts: AtomicU64::new(0),
            launcher: spec.launcher,
            max_in_flight: spec.max_in_flight,
        }
    }
}

/// What the builder says about one worker slot.
pub(crate) struct SlotSpec {
    pub(crate) launcher: Launcher,
    pub(crate) max_in_flight: usize,
}

impl Slot {
    fn current(&self) -> Option<Arc<Worker>> {
        lock(&self.current).clone()
    }
}

struct Shared {
    pub(super) core: Arc<Core>,
    pub(super) slots: Vec<Slot>,
    pub(super) links: bool,
    pub(super) template: Command,
    pub(super) intensity: Mutex<Intensity>,
    /// Wakes slot threads waiting out a restart backoff when the pool stops.
    pub(super) stop_gate: (Mutex<()>, Condvar),
    pub(super) next: AtomicUsize,
    /// The routes the first worker announced (every later one must match).
    pub(super) routes: std::sync::OnceLock<HashMap<String, RouteInfo>>,
    /// Whether each job type submitted so far matches the workers' route
    /// (by type: the check builds strings, so it runs once per type).
    pub(super) checked: std::sync::RwLock<HashMap<std::any::TypeId, Result<(), Failure>>>,
    /// Broadcast copies given while the pool is suspended, for their
    /// workers once it resumes (nothing is sent to a suspended worker).
    pub(super) held: Mutex<Vec<(usize, Task)>>,
}

pub(crate) struct Processes {
    shared: Arc<Shared>,
    threads: Mutex<Vec<(JoinHandle<()>, Receiver<()>)>>,
}

impl Processes {
    pub(crate) fn spawn(
        core: Arc<Core>,
        template: Command,
        slots: Vec<SlotSpec>,
        links: bool,
    ) -> Result<Arc<Processes>, BuildError> {
        let n = slots.len();
        let shared = Arc::new(Shared {
            intensity: Mutex::new(Intensity::new(core.config.restart)),
            core,
            slots: slots.into_iter().map(Slot::new).collect(),
            links,
            template,
            stop_gate: (Mutex::new(()), Condvar::new()),
            next: AtomicUsize::new(0),
            routes: std::sync::OnceLock::new(),
            checked: std::sync::RwLock::new(HashMap::new()),
            held: Mutex::new(Vec::new()),
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
}

impl Processes {
    /// The conversation with worker `w`'s current process, if it is up
    /// and the pool has worker links.
    pub(crate) fn link(&self, w: usize) -> Option<Arc<crate::link::Link>> {
        self.shared.slots.get(w)?.current()?.link.clone()
    }

    /// The routes the workers announced.
    pub(crate) fn route_names(&self) -> Vec<String> {
        self.shared
            .routes
            .get()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Each slot's worker pid (if one is up), restart count and launcher.
    pub(crate) fn slot_stats(&self) -> Vec<(Option<u32>, u64, String, &'static str)> {
        self.shared
            .slots
            .iter()
            .map(|s| {
                let w = s.current();
                (
                    w.as_ref().map(|w| w.pid),
                    // Relaxed: statistics only.
                    s.restarts.load(Ordering::Relaxed),
                    s.launcher.to_string(),
                    w.map_or("", |w| w.transport),
                )
            })
            .collect()
    }

    /// Whether every worker's in-flight slots are taken (or it is down).
    pub(crate) fn full(&self) -> bool {
        self.shared.slots.iter().all(|s| {
            s.current().is_none_or(|w| {
                // SeqCst: as every other access to the in-flight count.
                !w.alive.load(Ordering::Acquire) || w.in_flight.load(Ordering::SeqCst) >= w.max_in_flight
            })
        })
    }

    /// Whether any worker holds jobs.
    pub(crate) fn busy(&self) -> bool {
        self.shared.slots.iter().any(|s| {
            s.current()
                // Acquire/SeqCst: see `fill_slots`; a dead worker's slots do not count.
                .is_some_and(|w| w.alive.load(Ordering::Acquire) && w.in_flight.load(Ordering::SeqCst) > 0)
        })
    }

    /// Sends a control message (suspend, resume) to every live worker.
    pub(crate) fn broadcast_control(&self, msg: &ToWorker<'_>) {
        for s in &self.shared.slots {
            if let Some(w) = s.current() {
                if let Err(e) = w.send_control(msg) {
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
        if let Some(scale) = &core.scale {
            scale.wake_all();
        }
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

    fn grace_over(&self, id: u64, worker: usize, epoch: u64) -> GraceOver {
        let Some(w) = self.find(worker, epoch) else {
            return GraceOver::Done;
        };
        {
            let pending = lock(&w.pending);
            let Some(t) = pending.get(&id) else {
                return GraceOver::Done;
            };
            // A worker starts its jobs in the order they were sent: one sent
            // before this is still there, so this has not started. Killing
            // the worker would end the older jobs, which nobody cancelled;
            // it is skipped when its turn comes.
            if sent_behind(&pending, t.seq) {
                log::debug!("worker {worker}: cancelled job {id} waits behind others; not killing");
                return GraceOver::NotStarted;
            }
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
                Some(EndReason::Recycle(_)) | None => *ended = Some(EndReason::Victims(vec![id])),
            }
        }
        if w.signal(SIGTERM) {
            GraceOver::Terminated
        } else {
            GraceOver::Done
        }
    }

    fn scale_check(&self) -> Option<Duration> {
        let core = &self.shared.core;
        let scale = core.scale.as_ref()?;
        if !core.may_shrink() {
            return Some(scale.check_every());
        }
        let now = core.clock();
        for (i, slot) in self.shared.slots.iter().enumerate() {
            let Some(w) = slot.current() else { continue };
            // SeqCst: as every other access to the in-flight count.
            if !w.alive.load(Ordering::Acquire)
                || w.retiring.load(Ordering::SeqCst)
                || w.in_flight.load(Ordering::SeqCst) > 0
            {
                continue;
            }
            // Relaxed: see `idle_since`.
            let idle = now.saturating_sub(w.idle_since.load(Ordering::Relaxed));
            if u128::from(idle) < scale.idle_timeout.as_nanos() {
                continue;
            }
            {
                let decide = scale.decide();
                if !scale.may_leave(&decide)
                    || !scale.set(&decide, i, scale::SlotState::Up, scale::SlotState::Leaving)
                {
                    continue;
                }
            }
            log::info!("worker {i} (pid {}) leaves: {}", w.pid, scale.why());
            // Retired as a recycled worker is: a job dispatched meanwhile
            // is answered first, one reserved after goes back to the queue.
            w.leaving.store(true, Ordering::Release);
            lock(&w.recycle_why).get_or_insert_with(|| scale.why());
            w.retiring.store(true, Ordering::SeqCst);
            w.retire_if_idle();
        }
        Some(scale.check_every())
    }

    fn kill(&self, worker: usize, epoch: u64) {
        if let Some(w) = self.find(worker, epoch) {
            if w.alive.load(Ordering::Acquire) && w.kill() {
                log::warn!("worker {worker} (pid {}) outlived SIGTERM; killed", w.pid);
            }
        }
    }
}
