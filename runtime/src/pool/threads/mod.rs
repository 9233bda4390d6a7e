//! Thread workers: each takes jobs from the shared queue (or its own
//! channel, for broadcasts) and runs them in this process, as Rust values.
//!
//! A thread cannot be killed. A job past its run timeout, or cancelled, is
//! settled at once (`TimedOut` or `Cancelled`) and its handler sees
//! `is_cancelled`; if the handler has not returned within the grace
//! period, the thread is *abandoned*: a replacement takes its place, and
//! the old thread exits as soon as its handler returns, dropping what it
//! produced (scenario "thread timeout" in `supervisor/README.md`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

mod sleep;
mod supervise;
mod take;

use super::{BuildError, Core, Event, Outcome, Reply, Task, Work, lock};
use crate::job::{CancelSource, Context, Failure, Handlers, JobState, ProgressSink};
use crate::supervisor::monitor::{Books, Control};
use crate::supervisor::{PoolEvent, STOP_GRACE};
use sleep::Sleepers;

/// The job a thread runs now (jobs with a ticket or a timeout only; a
/// `map` chunk without a timeout is not tracked).
struct Running {
    id: u64,
    epoch: u64,
    jobs: u64,
    state: Arc<JobState>,
    reply: Reply,
}

struct TSlot {
    private_tx: Sender<Task>,
    private_rx: Receiver<Task>,
    running: Mutex<Option<Running>>,
    /// The current thread's epoch (its incarnation), and its "you were
    /// replaced" flag.
    current: Mutex<(u64, Arc<AtomicBool>)>,
    restarts: AtomicU64,
    /// Raised while the thread takes a task from the queue, until it
    /// counts it as running: `busy` waits it out, so `wait_idle` never
    /// sees the queue empty and nothing running while a job is in hand.
    taking: AtomicBool,
    /// The slot's thread found its last task at its first look, without
    /// spinning or sleeping (written and read by that thread only).
    took_at_once: AtomicBool,
}

/// What a wait for a task gave.
enum Taken {
    Task(Task),
    /// The wait ended without a task (its deadline).
    Nothing,
    /// A `Stop`, or the queue is gone: the thread ends.
    Stop,
}

/// A thread's slot id, its handle, a channel that disconnects when it
/// ends, and its "you were replaced" flag.
type ThreadHandle = (usize, JoinHandle<()>, Receiver<()>, Arc<AtomicBool>);

pub(crate) struct Threads {
    me: std::sync::Weak<Threads>,
    core: Arc<Core>,
    handlers: Handlers,
    slots: Vec<TSlot>,
    /// Every thread started, with a channel that closes when it ends.
    handles: Mutex<Vec<ThreadHandle>>,
    /// How idle workers wait (with a queue; without one they block on
    /// the channel).
    sleepers: Option<Sleepers>,
}

impl Threads {
    pub(crate) fn spawn(core: Arc<Core>, handlers: Handlers, n: usize) -> Result<Arc<Threads>, BuildError> {
        let slots = (0..n)
            .map(|_| {
                let (tx, rx) = crossbeam_channel::unbounded();
                TSlot {
                    private_tx: tx,
                    private_rx: rx,
                    running: Mutex::new(None),
                    current: Mutex::new((0, Arc::new(AtomicBool::new(false)))),
                    restarts: AtomicU64::new(0),
                    taking: AtomicBool::new(false),
                    took_at_once: AtomicBool::new(false),
                }
            })
            .collect();
        let core_has_queue = core.queue_limit > 0;
        let threads = Arc::new_cyclic(|me| Threads {
            me: me.clone(),
            core,
            handlers,
            slots,
            handles: Mutex::new(Vec::with_capacity(n)),
            sleepers: (core_has_queue).then(|| Sleepers::new(n)),
        });
        // A scaling pool starts its first `min` slots; the others wait.
        let first = threads.core.scale.as_ref().map_or(n, |s| s.min);
        for id in 0..first {
            if let Err(e) = threads.start(id, 0) {
                // Stop the workers already running before giving up.
                threads.stop(true);
                return Err(BuildError::io(format!("could not start worker thread {id}"), e));
            }
        }
        Ok(threads)
    }

    /// Starts the thread of slot `id`, incarnation `epoch`.
    fn start(self: &Arc<Self>, id: usize, epoch: u64) -> std::io::Result<()> {
        // Under the handles' lock: `stop` drains them under it, so a
        // replacement is either joined by it or not started at all.
        let mut handles = lock(&self.handles);
        if epoch > 0 && self.core.stopping.load(Ordering::Acquire) {
            return Err(std::io::Error::other("the pool is stopping"));
        }
        // Threads that ended (recycled, abandoned and returned) are let go,
        // so a pool that recycles often does not keep their handles.
        handles.retain(|(_, _, done, _)| {
            !matches!(
                done.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            )
        });
        let abandoned = Arc::new(AtomicBool::new(false));
        *lock(&self.slots[id].current) = (epoch, abandoned.clone());
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let me = self.clone();
        let flag = abandoned.clone();
        let h = std::thread::Builder::new()
            .name(format!("portpool-worker-{id}"))
            .spawn(move || {
                let _done = done_tx; // dropped when the thread ends
                me.worker_loop(id, epoch, &flag);
            })?;
        handles.push((id, h, done_rx, abandoned));
        drop(handles);
        self.core.event(PoolEvent::WorkerStarted {
            worker: id,
            pid: None,
            // Relaxed: statistics only.
            restarts: self.slots[id].restarts.load(Ordering::Relaxed),
        });
        Ok(())
    }

    /// Gives `task` to worker `w` directly (broadcast).
    pub(crate) fn send_to(&self, w: usize, task: Task) {
        if let Err(e) = self.slots[w].private_tx.send(task) {
            let t = e.0;
            self.core
                .retire_task(&t, Failure::Rejected("the worker has stopped".into()), Some(w));
            return;
        }
        if let Some(s) = &self.sleepers {
            s.wake(w);
        }
    }

    /// After an enqueue: wakes a sleeping worker if nobody looks for work.
    pub(crate) fn notify(&self) {
        if let Some(s) = &self.sleepers {
            s.notify_one();
        }
    }

    pub(crate) fn restarts(&self) -> Vec<u64> {
        // Relaxed: statistics only.
        self.slots
            .iter()
            .map(|s| s.restarts.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether every thread runs a job.
    pub(crate) fn full(&self) -> bool {
        // Relaxed: a snapshot.
        self.core
            .counters
            .iter()
            .all(|c| c.running.load(Ordering::Relaxed) > 0)
    }

    pub(crate) fn busy(&self) -> bool {
        // A thread between taking a task and counting it is waited out (a
        // few instructions): read after the queue and the counts (SeqCst,
        // as the thread raises it before it takes and lowers it after it
        // counts), it tells whether a count may be missing.
        for _ in 0..100_000 {
            let running = self
                .core
                .counters
                .iter()
                .any(|c| c.running.load(Ordering::SeqCst) > 0)
                || self.slots.iter().any(|s| !s.private_rx.is_empty());
            if running {
                return true;
            }
            if !self.slots.iter().any(|s| s.taking.load(Ordering::SeqCst)) {
                return false;
            }
            std::hint::spin_loop();
        }
        true
    }

    /// The shutdown's deadline passed: every tracked running job is
    /// cancelled (its handler sees the flag, its ticket `Cancelled`).
    pub(crate) fn cancel_running(&self) {
        for s in &self.slots {
            if let Some(r) = lock(&s.running).as_ref() {
                r.state.cancel();
                self.core
                    .deliver_failure(&r.state, &r.reply, r.jobs, Failure::Cancelled, None);
            }
        }
    }

    /// Stops every thread: one `Stop` each behind the queued tasks, then
    /// joins them. A thread still in a handler after `STOP_GRACE` (or
    /// `TERM_GRACE` when `hurried`: the work was cancelled) is left;
    /// returns how many were.
    pub(crate) fn stop(&self, hurried: bool) -> usize {
        let grace = if hurried || self.core.hurry.load(Ordering::Acquire) {
            crate::supervisor::TERM_GRACE
        } else {
            STOP_GRACE
        };
        let deadline = Instant::now() + grace;
        // (No thread starts from here on: `start` refuses once stopping.)
        let handles: Vec<_> = lock(&self.handles).drain(..).collect();
        // Which threads still run (recycled ones, those that left idle and
        // abandoned ones that returned have ended, and said so).
        let live: Vec<bool> = handles
            .iter()
            .map(|(_, _, done, _)| {
                !matches!(
                    done.try_recv(),
                    Err(crossbeam_channel::TryRecvError::Disconnected)
                )
            })
            .collect();
        // A thread abandoned earlier (scenario "thread timeout") was
        // replaced and its job taken off the books: it takes no Stop and is
        // not waited for; it is counted as left. Acquire: pairs with the
        // Release store in `grace_over`.
        let replaced = |flag: &AtomicBool| flag.load(Ordering::Acquire);
        // One Stop for each. Bounded: threads stuck in a handler take no
        // Stop, and the queue may be too small to hold one for each.
        let stops = handles
            .iter()
            .zip(&live)
            .filter(|((_, _, _, flag), l)| **l && !replaced(flag))
            .count()
            .min(self.slots.len());
        for _ in 0..stops {
            if self.core.queue_tx.send_deadline(Work::Stop, deadline).is_err() {
                break;
            }
        }
        // The Stops wake the workers asleep (one blocked above on a full
        // queue finds awake workers: none sleeps while the queue holds work).
        if let Some(s) = &self.sleepers {
            s.notify_all();
        }
        let mut abandoned = 0;
        for ((id, h, done, flag), was_live) in handles.into_iter().zip(live) {
            if was_live && replaced(&flag) {
                log::warn!("abandoned worker thread {id} is still in a handler; leaving it");
                abandoned += 1;
                continue;
            }
            // Nothing is ever sent: the channel disconnects when the thread ends.
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = done.recv_deadline(deadline) {
                log::error!(
                    "worker thread {id} is still in a handler; leaving it (threads cannot be killed)"
                );
                abandoned += 1;
                continue;
            }
            if h.join().is_err() {
                log::error!("worker thread {id} panicked outside a job");
            }
            if was_live {
                // As a process worker's exit at shutdown is reported.
                self.core.event(PoolEvent::WorkerExited {
                    worker: id,
                    pid: None,
                    status: "stopped by the shutdown".into(),
                    jobs_held: 0,
                    expected: true,
                });
            }
        }
        // Broadcast copies that came after a worker took its Stop: nobody
        // will run them.
        for (w, s) in self.slots.iter().enumerate() {
            while let Ok(t) = s.private_rx.try_recv() {
                self.core
                    .retire_task(&t, Failure::Rejected("the worker has stopped".into()), Some(w));
            }
        }
        log::info!("thread workers stopped");
        abandoned
    }

    /// The worker loop: take, run, answer. Ends on `Stop`, or after its job
    /// if it was abandoned.
    fn worker_loop(self: &Arc<Self>, id: usize, epoch: u64, abandoned: &AtomicBool) {
        let core = &*self.core;
        let slot = &self.slots[id];
        let counters = &core.counters[id];
        let started = Instant::now();
        let mut jobs_here = 0u64;
        // The pool clock of this worker's last answer (metrics only; 0:
        // none yet).
        let mut answered_at = 0u64;
        if let Some(s) = &self.sleepers {
            s.sit(id);
        }
        loop {
            // The last iteration's answer time, if it answered (a skipped,
            // or elsewhere-settled, task leaves none).
            let mut last_answer = std::mem::take(&mut answered_at);
            // Phase 1: take a task (a broadcast copy first, if any).
            slot.taking.store(true, Ordering::SeqCst); // (see `busy`)
            let first = slot.private_rx.try_recv().ok();
            if first.is_none() {
                slot.taking.store(false, Ordering::SeqCst);
            }
            let at_once = first.is_some();
            let task = match first {
                Some(t) => t,
                None => match &core.scale {
                    None => match self.next_task(id, None) {
                        Taken::Task(t) => t,
                        Taken::Nothing => continue,
                        Taken::Stop => return,
                    },
                    Some(_) => match self.next_task_or_leave(id, epoch) {
                        Some(t) => t,
                        None => return,
                    },
                },
            };
            let jobs = task.jobs();
            // Counted as running from the moment it left the queue, so
            // `wait_idle` never sees an empty queue and nothing running
            // while a taken job is yet to run (it once did, across the
            // suspend wait and the bookkeeping below). Relaxed: statistics
            // and a hint re-checked under the idle lock.
            counters.running.fetch_add(jobs as usize, Ordering::SeqCst);
            slot.taking.store(false, Ordering::SeqCst);
            // More waiting: the next sleeper takes them (a burst spreads
            // over every worker). After counting this one as running: a
            // wake-up is a system call, and `wait_idle` must not see an
            // empty queue and nothing running meanwhile.
            if let Some(s) = &self.sleepers {
                if !core.queue_rx.is_empty() {
                    s.notify_one();
                }
            }
            // Acquire: pairs with the Release store of a suspend. While
            // suspended no worker takes from the queue (`look`), but a job
            // taken as the suspend came, or a broadcast copy, is held: not
            // running (stats say so); it counts again once the pool resumes.
            if core.suspended.load(Ordering::Acquire) {
                // Held, it counts as queued (`stats`, `wait_idle`): held
                // before it stops running and running before it stops
                // being held, never out of both. SeqCst: against the reads
                // of `busy` and `has_queued`.
                core.held.fetch_add(jobs as usize, Ordering::SeqCst);
                counters.running.fetch_sub(jobs as usize, Ordering::SeqCst);
                core.wait_while_suspended();
                // Its start is after the wait, not at the last answer.
                last_answer = 0;
                counters.running.fetch_add(jobs as usize, Ordering::SeqCst);
                core.held.fetch_sub(jobs as usize, Ordering::SeqCst);
            }
            if task.state.is_settled() {
                // Cancelled or past its queue deadline while queued.
                core.count_settled_elsewhere(&task.state, jobs, None);
                counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
                core.idle.notify();
                continue;
            }
            task.state.mark_dispatched();
            task.state.mark_started();
            if core.config.metrics {
                // Relaxed: this thread's own flag.
                let at_once = at_once || slot.took_at_once.load(Ordering::Relaxed);
                // Taken at once after this worker's last answer: its start
                // is that answer's time, one clock read fewer per job (late
                // by the take alone, tens of nanoseconds).
                let now = if at_once && last_answer != 0 {
                    last_answer
                } else {
                    core.clock()
                };
                core.note_started(&task, id, now);
            }
            let tracked = task.batch.is_none() || task.timeout.is_some();
            if tracked {
                *lock(&slot.running) = Some(Running {
                    id: task.id,
                    epoch,
                    jobs,
                    state: task.state.clone(),
                    reply: task.reply.clone(),
                });
                if let Some(after) = task.timeout {
                    let _ = core.control.send(Control::RunDeadline {
                        id: task.id,
                        worker: id,
                        epoch,
                        after,
                    });
                }
                if task.state.is_cancelled() {
                    let _ = core.control.send(Control::Cancel { id: task.id });
                }
            }
            // Phase 2: run it. The handler's context holds the job's state
            // and reply, lent (not cloned) and taken back after.
            let Task {
                id: job_id,
                route,
                job,
                reply,
                state,
                batch,
                ..
            } = task;
            // A thread pool's tasks always hold their values.
            let job = match job {
                super::Payload::Value(v) => v,
                super::Payload::Encoded(..) | super::Payload::Lent => Box::new(()),
            };
            let cancel = CancelSource::Flag(state);
            let (outcome, failed, cx) = match batch {
                None => {
                    let cx = Context::new(id, cancel, ProgressSink::Channel(reply));
                    let o = match self.handlers.call_value(route, job, &cx) {
                        Ok(v) => Outcome::Value(v),
                        Err(f) => Outcome::Failed(f),
                    };
                    let failed = u64::from(!matches!(o, Outcome::Value(_)));
                    (o, failed, cx)
                }
                Some(_) => {
                    let cx = Context::new(id, cancel, ProgressSink::Held(reply));
                    match self.handlers.call_batch_value(route, job, &cx) {
                        Ok((v, failed)) => (Outcome::Value(v), u64::from(failed), cx),
                        Err(f) => (Outcome::Failed(f), jobs, cx),
                    }
                }
            };
            let (CancelSource::Flag(state), ProgressSink::Channel(reply) | ProgressSink::Held(reply)) =
                cx.into_parts()
            else {
                unreachable!("a thread job's context holds the state and reply it was given")
            };
            if tracked {
                let mut r = lock(&slot.running);
                if r.as_ref().is_some_and(|r| r.id == job_id && r.epoch == epoch) {
                    *r = None;
                }
            }
            // Phase 3: answer, unless someone settled it meanwhile. It is
            // counted as running until its outcome is on the books (so an
            // idle pool's stats are final, `wait_idle`), and no longer by
            // the time its ticket has the answer (so a `stats()` right
            // after `wait()` counts it done, not running), as on processes.
            // Acquire: pairs with the Release store in `grace_over`, which
            // took this job off the books when it replaced the thread.
            if abandoned.load(Ordering::Acquire) {
                log::info!("abandoned worker thread {id} (epoch {epoch}) returned; it exits");
                return;
            }
            if state.settle() {
                counters.finish_n(jobs - failed, failed);
                if core.config.metrics {
                    answered_at = core.note_answered(&state, jobs, failed, id);
                }
                // Relaxed: published to the ticket by the mailbox's lock.
                counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
                log::trace!("worker {id}: job {job_id} ({route}) done");
                // Its last word: the outcome and the mailbox's close at once.
                reply.finish(Event::Done(outcome));
            } else {
                core.count_settled_elsewhere(&state, jobs, Some(id));
                // Relaxed: statistics only.
                counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
            }
            core.idle.notify();
            // Scenario "recycle": replaced between jobs, by a new thread.
            jobs_here += jobs;
            if let Some(why) = core.config.recycle.due(jobs_here, started, || None) {
                if self.recycle(id, epoch, why) {
                    return;
                }
            }
        }
    }
}
