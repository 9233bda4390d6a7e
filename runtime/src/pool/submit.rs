//! The submit paths: a job's ticket and task made (`prepare`), checked
//! (a process pool's job must encode and fit in a frame: `check_encodes`,
//! which encodes into a byte counter), queued
//! (`enqueue`, blocking, or not, or until a deadline; a ranked job beside
//! the queue), and the backend told (`after_enqueue`); and whether the
//! pool takes jobs at all (`refusal`).

use super::*;

/// A job made ready to queue.
pub(super) enum Prepared<J: Job> {
    /// Its ticket already holds its outcome (a failure): nothing to queue.
    Settled(Ticket<J>),
    /// Its ticket and its task.
    Ready(Ticket<J>, Task),
}

impl Pool {
    /// Whether jobs of type `J` have a run timeout (then `map` sends them
    /// one per task, so each has its own).
    pub(crate) fn times_out<J: Job>(&self) -> bool {
        self.inner.core.limits(J::NAME).0.is_some()
    }

    /// Jobs of a chunk that failed before they were queued are on the
    /// pool's books too.
    pub(super) fn count_holes(&self, n: usize) {
        // Relaxed: statistics only.
        self.inner
            .core
            .failed_elsewhere
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Starts the queue-wait clock of `t`, if it has one.
    pub(super) fn watch_queue(&self, t: &Task) {
        self.watch_queue_for(t, None);
    }

    pub(super) fn watch_queue_for(&self, t: &Task, over: Option<Duration>) {
        if let Some(after) = over.or(self.inner.core.config.queue_timeout) {
            t.state.mark_watched();
            let _ = self.inner.core.control.send(Control::QueueDeadline {
                id: t.id,
                state: t.state.clone(),
                reply: t.reply.clone(),
                jobs: t.jobs(),
                after,
            });
        }
    }

    /// Makes `job`'s ticket and task and hands the task to `enqueue`. A job
    /// for a process pool is checked first (it must encode and fit in a
    /// frame; the check allocates nothing): if it cannot go, its ticket
    /// holds that failure at once and nothing is queued, whether or not it
    /// would have waited. When `enqueue` refuses the task, the job is given
    /// back with its reason.
    pub(super) fn enqueue<J: Job, E>(
        &self,
        job: J,
        opts: &JobOptions,
        enqueue: impl FnOnce(&Self, Work) -> Result<(), (Work, E)>,
    ) -> Result<Ticket<J>, (J, E)> {
        let check = matches!(self.inner.backend, Backend::Processes(_));
        let (ticket, task) = match self.prepare(job, opts, check) {
            Prepared::Settled(ticket) => return Ok(ticket),
            Prepared::Ready(ticket, task) => (ticket, task),
        };
        self.watch_queue_for(&task, opts.queue_timeout);
        match enqueue(self, Work::Task(task)) {
            Ok(()) => {
                if self.inner.core.config.on_event.is_some() {
                    self.inner.core.note_enqueued();
                }
                self.inner.after_enqueue();
                Ok(ticket)
            }
            Err((work, e)) => {
                // Claimed, so its queue timer neither settles nor counts
                // a job that is given back.
                if let Work::Task(t) = &work {
                    t.state.settle();
                }
                let job = match work {
                    Work::Task(t) => match t.into_value::<J>() {
                        Some(j) => j,
                        None => unreachable!("a task built from a J holds a J"),
                    },
                    Work::Stop | Work::Wake => unreachable!("only tasks are submitted"),
                };
                Err((job, e))
            }
        }
    }

    /// Makes `job`'s ticket and task. A job that cannot go (its route is
    /// not served; with `check`, it will not encode or fit in a frame) gets
    /// a ticket that already holds its failure.
    pub(super) fn prepare<J: Job>(&self, job: J, opts: &JobOptions, check: bool) -> Prepared<J> {
        let core = &self.inner.core;
        let state = JobState::new();
        if core.config.metrics {
            core.metrics_for::<J>(&state);
        }
        // Relaxed: ids only need to be unique.
        let id = core.next_id.fetch_add(1, Ordering::Relaxed);
        let (ticket, reply) = Ticket::new(id, state.clone(), core.control.clone());
        if let Some(token) = &opts.cancel {
            if token.carry(id, &state, &reply, &core.control).is_err() {
                // Cancelled since `submit_with` looked: the job never goes.
                core.deliver_failure(&state, &reply, 1, Failure::Cancelled, None);
                return Prepared::Settled(ticket);
            }
        }
        if let Err(f) = self.check_route::<J>() {
            core.deliver_failure(&state, &reply, 1, f, None);
            return Prepared::Settled(ticket);
        }
        let json = core.config.job_codec == crate::frame::Codec::Json;
        if check {
            let checked = if json {
                check_encodes_json(&job)
            } else {
                check_encodes(&job)
            };
            if let Err(f) = checked {
                core.deliver_failure(&state, &reply, 1, f, None);
                return Prepared::Settled(ticket);
            }
        }
        let (timeout, retries) = core.limits(J::NAME);
        let task = Task {
            id,
            route: J::NAME,
            job: Payload::Value(Box::new(job)),
            send_job: if json { send_job_json::<J> } else { send_job::<J> },
            reply,
            state,
            batch: None,
            timeout: opts.timeout.or(timeout),
            retries: opts.retries.unwrap_or(retries),
            priority: opts.priority,
            seq: 0,
        };
        Prepared::Ready(ticket, task)
    }

    /// On a process pool, whether the workers serve `J`'s route with `J`'s
    /// types (from the route table each worker announces at start).
    pub(super) fn check_route<J: Job>(&self) -> Result<(), Failure> {
        match &self.inner.backend {
            Backend::Processes(p) => p.check_route::<J>(),
            Backend::Threads(_) => Ok(()),
        }
    }

    /// Submits a job, blocking while the queue is full.
    ///
    /// On a process pool the job is checked now (it must encode and fit in
    /// a frame) and encoded into its worker's port at dispatch: a job that
    /// will not encode gets a ticket whose result is that error at once,
    /// even on a busy pool, and nothing is sent. (A thread pool never
    /// encodes jobs.)
    pub fn submit<J: Job>(&self, job: J) -> Result<Ticket<J>, SubmitError<J>> {
        self.submit_with(job, JobOptions::default())
    }

    /// Submits a job with its own timeout, queue-wait deadline or retries
    /// (see [`submit`](Self::submit)).
    ///
    /// A job whose [`CancelToken`] is already cancelled is refused
    /// ([`SubmitError::Cancelled`]).
    pub fn submit_with<J: Job>(&self, job: J, opts: JobOptions) -> Result<Ticket<J>, SubmitError<J>> {
        match self.inner.refusal() {
            Some(Refusal::Closed) => return Err(SubmitError::Closed(job)),
            Some(Refusal::Failed(why)) => return Err(SubmitError::Failed(job, why)),
            None => {}
        }
        if opts.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(SubmitError::Cancelled(job));
        }
        self.enqueue(job, &opts, |me, w| me.send_blocking(w, None).map_err(|w| (w, ())))
            .map_err(|(job, ())| self.closed_error(job))
    }

    /// The error for a job refused because the pool closed meanwhile.
    pub(super) fn closed_error<J>(&self, job: J) -> SubmitError<J> {
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
                    match self.inner.core.failure() {
                        Some(why) => TrySubmitError::Failed(job, why),
                        None => TrySubmitError::Closed(job),
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
                match self.inner.core.failure() {
                    Some(why) => SubmitTimeoutError::Failed(job, why),
                    None => SubmitTimeoutError::Closed(job),
                }
            } else {
                SubmitTimeoutError::Timeout(job)
            }
        })
    }

    /// Puts `w` in the queue without waiting. `Err(true)`: full.
    #[allow(clippy::result_large_err)] // the Err gives the task back, as crossbeam's try_send does
    pub(super) fn send_now(&self, w: Work) -> Result<(), (Work, bool)> {
        let core = &self.inner.core;
        if core.queue_limit == 0 {
            if let Backend::Processes(p) = &self.inner.backend {
                return p.dispatch_now(w).map_err(|w| (w, true));
            }
        }
        self.ranked(w, |w| match core.queue_tx.try_send(w) {
            Ok(()) => Ok(()),
            Err(ChanTrySendError::Full(w)) => Err((w, true)),
            Err(ChanTrySendError::Disconnected(w)) => Err((w, false)),
        })
    }

    /// Queues `w` with `send`; for a task of priority above 0, `send`
    /// queues its wake and the task goes into the heap (module `ranked`).
    /// If the wake cannot go, the task is given back.
    #[allow(clippy::result_large_err)] // the Err gives the task back
    pub(super) fn ranked<E>(
        &self,
        w: Work,
        send: impl FnOnce(Work) -> Result<(), (Work, E)>,
    ) -> Result<(), (Work, E)> {
        let core = &self.inner.core;
        let t = match w {
            // Without a queue (limit 0) nothing waits to be reordered, and
            // the submitter must return once a worker has its job.
            Work::Task(t) if t.priority > 0 && core.queue_limit > 0 => t,
            w => return send(w),
        };
        let priority = t.priority;
        // Room first, then the job: it becomes runnable only once its
        // submitter is past the queue's backpressure (a submitter waiting
        // for room while its own job runs could wait on that very job).
        if let Err((_, e)) = send(Work::Wake) {
            return Err((Work::Task(t), e));
        }
        core.ranked.push(t, priority);
        // A thread worker that took that wake before the push, found
        // nothing and went to sleep: an empty queue means one may sleep,
        // so one more wake (a full queue means none sleeps; a process
        // pool's `kick` after the enqueue finds the job).
        if matches!(self.inner.backend, Backend::Threads(_)) && core.queue_rx.is_empty() {
            let _ = core.queue_tx.try_send(Work::Wake);
        }
        Ok(())
    }

    /// Puts `w` in the queue, waiting for room until `deadline` (or
    /// forever). Gives it back if the pool closed or the deadline passed.
    pub(super) fn send_blocking(&self, w: Work, deadline: Option<Instant>) -> Result<(), Work> {
        let core = &self.inner.core;
        if core.queue_limit == 0 {
            if let Backend::Processes(p) = &self.inner.backend {
                return p.dispatch_blocking(w, deadline, || self.inner.refusal().is_some());
            }
        }
        let sent = self.ranked(w, |w| match deadline {
            None => core.queue_tx.send(w).map_err(|e| (e.0, ())),
            Some(d) => core
                .queue_tx
                .send_deadline(w, d)
                .map_err(|e| (e.into_inner(), ())),
        });
        sent.map_err(|(w, ())| w)
    }
}

impl PoolInner {
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        // Acquire: pairs with the Release store in `shutdown` / `fail_pool`.
        if !self.core.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(match self.core.failure() {
            Some(why) => Refusal::Failed(why),
            None => Refusal::Closed,
        })
    }

    pub(crate) fn after_enqueue(&self) {
        match &self.backend {
            Backend::Processes(p) => p.kick(),
            Backend::Threads(t) => {
                t.notify();
                if self.core.scale.is_some() {
                    t.grow();
                }
            }
        }
    }
}

/// A postcard output that only counts bytes: encoding into it checks that
/// a job encodes, and how long it is, without allocating.
struct Count(usize);

impl postcard::ser_flavors::Flavor for Count {
    type Output = usize;

    #[inline]
    fn try_push(&mut self, _: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 += data.len();
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

/// Checks, at submit, that `job` will encode for a process worker and fit
/// in a frame (the job itself is encoded into the port at dispatch): a
/// job that cannot go fails at once, even when it has to wait in the
/// queue. Nothing is allocated.
#[inline]
pub(crate) fn check_encodes<J: Job>(job: &J) -> Result<(), Failure> {
    let failed = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::port::checking_buffers(|| postcard::serialize_with_flavor(job, Count(0)))
    })) {
        Ok(Ok(len)) if len < crate::frame::DEFAULT_MAX_FRAME - 64 => return Ok(()),
        Ok(Ok(len)) => {
            return Err(Failure::Codec(
                crate::job::Side::Supervisor,
                format!(
                    "the job encodes to {len} bytes, over the frame limit of {}",
                    crate::frame::DEFAULT_MAX_FRAME
                ),
            ));
        }
        Ok(Err(e)) => Ok(e),
        Err(panic) => Err(panic),
    };
    Err(encode_job_failure(job, failed))
}

/// Checks, at submit, that `job` encodes as JSON and fits in a frame
/// (it is encoded into the port at dispatch): nothing is kept.
pub(crate) fn check_encodes_json<J: Job>(job: &J) -> Result<(), Failure> {
    let fail = |why: String| {
        Failure::Codec(
            crate::job::Side::Supervisor,
            format!("the supervisor could not send a `{}` job: {why}", J::NAME),
        )
    };
    match crate::proto::json::encoded_len(job) {
        Ok(len) if len < crate::frame::DEFAULT_MAX_FRAME - 64 => Ok(()),
        Ok(len) => Err(fail(format!(
            "it encodes to {len} bytes, over the frame limit of {}",
            crate::frame::DEFAULT_MAX_FRAME
        ))),
        Err(why) => Err(fail(why)),
    }
}

impl Core {
    /// The run timeout and retries of a job of route `route`.
    pub(crate) fn limits(&self, route: &str) -> (Option<Duration>, u32) {
        let rc = self.config.per_route.get(route).copied().unwrap_or_default();
        (
            rc.timeout.or(self.config.job_timeout),
            rc.retries.unwrap_or(self.config.retries),
        )
    }
}
