//! The supervisor's side of thread workers: recycling a thread between
//! jobs, and what the monitor does to a thread's running job (time it out,
//! cancel it, abandon the thread once the grace period is over; scenario
//! "thread timeout" in `supervisor/README.md`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Threads;
use crate::job::{Failure, TimeoutPhase};
use crate::pool::lock;
use crate::supervisor::PoolEvent;
use crate::supervisor::monitor::{Books, GraceOver, Supervised};

impl Threads {
    /// Starts a fresh thread for slot `id` in place of the calling one
    /// (incarnation `epoch`), which then returns. `false`: the pool is
    /// stopping, or no thread could start; the caller goes on serving.
    pub(super) fn recycle(self: &Arc<Self>, id: usize, epoch: u64, why: String) -> bool {
        if self.core.stopping.load(Ordering::Acquire) {
            return false;
        }
        let s = &self.slots[id];
        // Relaxed: statistics only.
        s.restarts.fetch_add(1, Ordering::Relaxed);
        // Said before the replacement's `WorkerStarted`, in the order a
        // process worker's recycle is told.
        self.core.event(PoolEvent::WorkerExited {
            worker: id,
            pid: None,
            status: why.clone(),
            jobs_held: 0,
            expected: true,
        });
        if let Err(e) = self.start(id, epoch + 1) {
            s.restarts.fetch_sub(1, Ordering::Relaxed);
            self.core.event(PoolEvent::StartFailed {
                worker: id,
                reason: format!(
                    "worker thread {id} was due for recycling ({why}), but no thread could start: {e}; \
                     it serves on"
                ),
            });
            return false;
        }
        true
    }
}

impl Supervised for Threads {
    fn cancel_running(&self, id: u64) -> Option<(usize, u64)> {
        self.slots.iter().enumerate().find_map(|(w, s)| {
            lock(&s.running)
                .as_ref()
                .filter(|r| r.id == id)
                .map(|r| (w, r.epoch))
        })
    }

    fn time_out(&self, id: u64, worker: usize, epoch: u64, after: Duration) -> bool {
        let Some(s) = self.slots.get(worker) else {
            return false;
        };
        let r = lock(&s.running);
        match r.as_ref() {
            Some(r) if r.id == id && r.epoch == epoch => {
                r.state.cancel();
                let settled = self.core.deliver_failure(
                    &r.state,
                    &r.reply,
                    r.jobs,
                    Failure::TimedOut(TimeoutPhase::Run, after),
                    Some(worker),
                );
                if settled {
                    log::warn!("job {id} on worker thread {worker} ran past its timeout of {after:?}");
                }
                settled
            }
            _ => false,
        }
    }

    fn grace_over(&self, id: u64, worker: usize, epoch: u64) -> GraceOver {
        // Scenario "thread timeout": abandon the thread, start another.
        let Some(me) = self.me.upgrade() else {
            return GraceOver::Done;
        };
        let s = &self.slots[worker];
        let cur = lock(&s.current).clone();
        if cur.0 != epoch {
            return GraceOver::Done;
        }
        let held = {
            let mut r = lock(&s.running);
            if !r.as_ref().is_some_and(|r| r.id == id && r.epoch == epoch) {
                return GraceOver::Done;
            }
            // Flagged under the `running` lock: a handler returning now
            // clears its record under the same lock, then reads the flag,
            // so it either sees the flag or is not abandoned at all.
            // Release: pairs with the Acquire loads in `worker_loop` and `stop`.
            cur.1.store(true, Ordering::Release);
            r.take()
        };
        // The job leaves the books now, as a replaced process worker's do:
        // the abandoned thread counts nothing when (if ever) it returns, so
        // `stats`, `wait_idle` and the shutdown do not wait for it.
        if let Some(job) = held {
            if !self
                .core
                .deliver_failure(&job.state, &job.reply, job.jobs, Failure::Cancelled, Some(worker))
            {
                self.core
                    .count_settled_elsewhere(&job.state, job.jobs, Some(worker));
            }
            // SeqCst: as `busy` reads it.
            self.core.counters[worker]
                .running
                .fetch_sub(job.jobs as usize, Ordering::SeqCst);
            self.core.idle.notify();
        }
        self.core.event(PoolEvent::WorkerExited {
            worker,
            pid: None,
            status: format!("abandoned: the handler of job {id} did not return within the grace period"),
            jobs_held: 1,
            expected: true,
        });
        // Relaxed: statistics only.
        s.restarts.fetch_add(1, Ordering::Relaxed);
        if self.core.stopping.load(Ordering::Acquire) {
            return GraceOver::Done;
        }
        if let Err(e) = me.start(worker, epoch + 1) {
            self.core.event(PoolEvent::StartFailed {
                worker,
                reason: format!("could not start a replacement thread: {e}"),
            });
        }
        GraceOver::Done
    }

    fn kill(&self, _worker: usize, _epoch: u64) {}
}
