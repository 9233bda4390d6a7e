//! The monitor: one thread per pool that keeps the pool's timers. Run
//! timeouts, queue-wait deadlines, cancel grace periods and the SIGTERM →
//! SIGKILL escalation all wait here, so no worker thread ever sleeps on a
//! timer and a pool without deadlines costs nothing per job.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::task::{Failure, JobState, Reply, TimeoutPhase};

/// What the monitor asks of the pool's books (the pool's core implements
/// it, and the pool uses it too): deliver `f` as the outcome of a job that
/// leaves without an answer, unless it was settled already; returns
/// whether it delivered.
pub(crate) trait Books: Send + Sync {
    fn deliver_failure(
        &self,
        state: &JobState,
        reply: &Reply,
        jobs: u64,
        f: Failure,
        worker: Option<usize>,
    ) -> bool;
}

/// What the pool tells its monitor.
pub(crate) enum Control {
    /// A ticket cancelled job `id` (scenario "cancel").
    Cancel { id: u64 },
    /// Job `id` was dispatched to `worker` (incarnation `epoch`) and must
    /// answer within `after` (scenario "run timeout").
    RunDeadline {
        id: u64,
        worker: usize,
        epoch: u64,
        after: Duration,
    },
    /// A job must leave the queue within `after` of its submission
    /// (scenario "queue-wait deadline").
    QueueDeadline {
        id: u64,
        state: Arc<JobState>,
        reply: Reply,
        jobs: u64,
        after: Duration,
    },
    /// The pool is gone: stop.
    Stop,
}

/// What the monitor asks of a backend. Each method finds job `id` where it
/// What a grace period's end did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GraceOver {
    /// Nothing left to do: the job ended, or its thread was abandoned.
    Done,
    /// A process got SIGTERM and needs SIGKILL later.
    Terminated,
    /// The job waits behind others on its worker, which starts jobs in the
    /// order sent: it has not started and will be skipped; look again
    /// after another grace period.
    NotStarted,
}

/// runs now (on `worker` incarnation `epoch` when given) and does nothing if
/// it is not there any more: every timer may fire after its job ended.
pub(crate) trait Supervised: Send + Sync {
    /// Asks the handler running job `id` to stop (sets its flag; tells a
    /// process worker). Returns where it runs, if it runs.
    fn cancel_running(&self, id: u64) -> Option<(usize, u64)>;
    /// Job `id`'s run timeout passed: if it still runs on `(worker, epoch)`,
    /// settle it as timed out and ask it to stop. Returns whether it ran.
    fn time_out(&self, id: u64, worker: usize, epoch: u64, after: Duration) -> bool;
    /// The grace period after a cancel or timeout ended: if job `id` still
    /// runs on `(worker, epoch)`, end that worker (SIGTERM a process, abandon
    /// a thread) and start a replacement.
    fn grace_over(&self, id: u64, worker: usize, epoch: u64) -> GraceOver;
    /// SIGKILL worker `(worker, epoch)` if it is still alive.
    fn kill(&self, worker: usize, epoch: u64);
    /// A scaling pool's look for workers idle too long (scenario "scale");
    /// returns when to look again (`None`: never).
    fn scale_check(&self) -> Option<Duration> {
        None
    }
}

enum Timer {
    Run {
        id: u64,
        worker: usize,
        epoch: u64,
        after: Duration,
    },
    Queue {
        id: u64,
        state: Arc<JobState>,
        reply: Reply,
        jobs: u64,
        after: Duration,
    },
    Grace {
        id: u64,
        worker: usize,
        epoch: u64,
    },
    Kill {
        worker: usize,
        epoch: u64,
    },
}

/// Timers by due time; `seq` keeps equal times in arrival order.
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    kinds: std::collections::HashMap<u64, Timer>,
    seq: u64,
}

impl Timers {
    fn push(&mut self, at: Instant, t: Timer) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.kinds.insert(self.seq, t);
    }

    fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Sets `timer` to fire `after` from `now`; one too far off to
    /// represent never fires (a user's `Duration::MAX` means "never").
    fn push_after(&mut self, now: Instant, after: Duration, timer: Timer) {
        if let Some(at) = crate::util::deadline_from(now, after) {
            self.push(at, timer);
        }
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                let Reverse((_, seq)) = self.heap.pop()?;
                self.kinds.remove(&seq)
            }
            _ => None,
        }
    }
}

/// The monitor's settings.
#[derive(Clone, Copy)]
pub(crate) struct Graces {
    /// From a cancel or timeout to ending the worker.
    pub(crate) cancel: Duration,
    /// From SIGTERM to SIGKILL.
    pub(crate) term: Duration,
}

/// Runs until `Control::Stop` (or every sender is gone).
pub(crate) fn run(rx: Receiver<Control>, target: Arc<dyn Supervised>, core: Arc<dyn Books>, graces: Graces) {
    let mut timers = Timers {
        heap: BinaryHeap::new(),
        kinds: std::collections::HashMap::new(),
        seq: 0,
    };
    let mut next_scale = target
        .scale_check()
        .and_then(|d| crate::util::deadline_from(Instant::now(), d));
    loop {
        let due = match (timers.next_due(), next_scale) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let msg = match due {
            Some(at) => rx.recv_deadline(at),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let now = Instant::now();
        match msg {
            Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Control::Cancel { id }) => {
                if let Some((worker, epoch)) = target.cancel_running(id) {
                    timers.push_after(now, graces.cancel, Timer::Grace { id, worker, epoch });
                }
            }
            Ok(Control::RunDeadline {
                id,
                worker,
                epoch,
                after,
            }) => timers.push_after(
                now,
                after,
                Timer::Run {
                    id,
                    worker,
                    epoch,
                    after,
                },
            ),
            Ok(Control::QueueDeadline {
                id,
                state,
                reply,
                jobs,
                after,
            }) => timers.push_after(
                now,
                after,
                Timer::Queue {
                    id,
                    state,
                    reply,
                    jobs,
                    after,
                },
            ),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        while let Some(t) = timers.pop_due(now) {
            match t {
                Timer::Run {
                    id,
                    worker,
                    epoch,
                    after,
                } => {
                    if target.time_out(id, worker, epoch, after) {
                        timers.push_after(now, graces.cancel, Timer::Grace { id, worker, epoch });
                    }
                }
                Timer::Queue {
                    id,
                    state,
                    reply,
                    jobs,
                    after,
                } => {
                    // Not started: it fails now. Still queued, whoever pops
                    // it later finds it settled and drops it; sent to a
                    // process worker behind other jobs, the worker is told,
                    // and skips it when its turn comes (scenario "cancel":
                    // a job that waits behind others gets nothing killed).
                    if !state.is_started()
                        && core.deliver_failure(
                            &state,
                            &reply,
                            jobs,
                            Failure::TimedOut(TimeoutPhase::Queue, after),
                            None,
                        )
                        && state.is_dispatched()
                    {
                        if let Some((worker, epoch)) = target.cancel_running(id) {
                            timers.push_after(now, graces.cancel, Timer::Grace { id, worker, epoch });
                        }
                    }
                }
                Timer::Grace { id, worker, epoch } => match target.grace_over(id, worker, epoch) {
                    GraceOver::Done => {}
                    GraceOver::Terminated => {
                        timers.push_after(now, graces.term, Timer::Kill { worker, epoch });
                    }
                    GraceOver::NotStarted => {
                        timers.push_after(now, graces.cancel, Timer::Grace { id, worker, epoch });
                    }
                },
                Timer::Kill { worker, epoch } => target.kill(worker, epoch),
            }
        }
        if next_scale.is_some_and(|at| at <= now) {
            next_scale = target
                .scale_check()
                .and_then(|d| crate::util::deadline_from(now, d));
        }
    }
}

/// The monitor's handle: where to send controls, and its thread.
pub(crate) struct MonitorHandle {
    pub(crate) tx: Sender<Control>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl MonitorHandle {
    /// Stops the monitor and waits for its thread.
    pub(crate) fn stop(&mut self) {
        let _ = self.tx.send(Control::Stop);
        if let Some(h) = self.thread.take() {
            if h.join().is_err() {
                log::error!("the pool's monitor thread panicked");
            }
        }
    }
}
