//! The pool's owner side: the backend, the shutdown sequence, suspend and
//! resume, and what the runtime and the monitor reach through traits.

use super::*;

pub(crate) enum Backend {
    Threads(Arc<threads::Threads>),
    Processes(Arc<processes::Processes>),
}

impl Backend {
    pub(crate) fn supervised(&self) -> Arc<dyn Supervised> {
        match self {
            Backend::Threads(t) => t.clone(),
            Backend::Processes(p) => p.clone(),
        }
    }
}

/// The part of a pool that a [`Runtime`] can shut down or suspend from
/// another thread.
pub(crate) struct PoolInner {
    pub(crate) core: Arc<Core>,
    pub(crate) backend: Backend,
    pub(crate) window: usize,
    pub(crate) monitor: Mutex<MonitorHandle>,
    pub(crate) report: Mutex<Option<ShutdownReport>>,
    pub(crate) rt_ref: RefCount,
    /// The chunk size each route's last `map` ended with: the next map of
    /// that route starts there instead of at one job.
    pub(crate) chunk_hints: Mutex<std::collections::HashMap<&'static str, usize>>,
}

/// Why the pool takes no job (or chunk).
pub(crate) enum Refusal {
    Closed,
    Failed(String),
}

impl Refusal {
    /// The failure a job gets when the pool does not take it.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            Refusal::Closed => Failure::Rejected("the pool is shut down (or shutting down)".into()),
            Refusal::Failed(why) => Failure::Rejected(format!("the pool failed: {why}")),
        }
    }
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

impl PoolInner {
    /// Suspends dispatch (scenario "suspend"): queued jobs wait, running
    /// ones finish; the workers' suspend hooks run.
    pub(crate) fn suspend(&self) {
        if self.core.suspended.load(Ordering::Acquire) {
            return;
        }
        self.core.set_suspended(true);
        match &self.backend {
            Backend::Threads(_) => self.core.handlers.run_suspend_hooks(true),
            Backend::Processes(p) => p.broadcast_control(&crate::proto::ToWorker::Suspend),
        }
    }

    /// Resumes dispatch after [`suspend`](Self::suspend).
    pub(crate) fn resume(&self) {
        if !self.core.suspended.load(Ordering::Acquire) {
            return;
        }
        match &self.backend {
            Backend::Threads(_) => self.core.handlers.run_suspend_hooks(false),
            Backend::Processes(p) => p.broadcast_control(&crate::proto::ToWorker::Resume),
        }
        self.lift_suspension();
        self.core.free.notify();
    }

    /// Dispatch goes on: what waited for the resume (the queue, a process
    /// pool's held broadcast copies) goes to the workers.
    fn lift_suspension(&self) {
        self.core.set_suspended(false);
        if let Backend::Processes(p) = &self.backend {
            p.release_held();
        }
        self.after_enqueue();
    }

    /// Makes a shutdown in progress immediate (a second SIGINT).
    pub(crate) fn hurry(&self) {
        self.core.hurry.store(true, Ordering::Release);
        self.core.idle.notify();
        // Wake thread workers parked by a suspend, so they can stop.
        self.core
            .set_suspended(self.core.suspended.load(Ordering::Acquire));
    }

    /// Whether no worker can take a job now.
    pub(crate) fn full(&self) -> bool {
        match &self.backend {
            Backend::Threads(t) => t.full(),
            Backend::Processes(p) => p.full(),
        }
    }

    pub(crate) fn busy(&self) -> bool {
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
            self.lift_suspension();
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
