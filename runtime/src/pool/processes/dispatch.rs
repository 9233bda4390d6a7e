//! Dispatch: queued jobs to workers with free in-flight slots, on the
//! thread that frees a slot or enqueues, the route check per job type,
//! and the gate where submitters wait for a free slot (`FreeGate`).

use super::*;

impl Processes {
    /// Dispatches queued jobs to workers with free slots (after an enqueue).
    pub(crate) fn kick(&self) {
        self.shared.kick();
    }

    /// Sends `work` to a worker with a free slot now, or gives it back
    /// (a pool with a queue limit of 0).
    pub(crate) fn dispatch_now(&self, work: Work) -> Result<(), Work> {
        let sh = &self.shared;
        let Work::Task(t) = work else { return Err(work) };
        if t.state.is_settled() {
            // Its queue-wait deadline passed (or it was cancelled) while
            // its submitter waited for a slot: it must not run.
            sh.core.count_settled_elsewhere(&t.state, t.jobs(), None);
            return Ok(());
        }
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
            // SeqCst: as every other access to the in-flight count (see `fill_slots`).
            let mut cur = w.in_flight.load(Ordering::SeqCst);
            while cur < w.max_in_flight {
                match w
                    .in_flight
                    .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => {
                        // SeqCst, after the reservation: see `Worker::retire_if_idle`.
                        if w.closed_to_jobs() {
                            w.in_flight.fetch_sub(1, Ordering::SeqCst);
                            // SeqCst: as the first look in `retire_if_idle`.
                            if w.retiring.load(Ordering::SeqCst) {
                                w.retire_if_idle();
                            }
                            break;
                        }
                        dispatch(&w, &sh.core, t, 0);
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
            Some(theirs) if theirs.types_differ(&mine) => Err(Failure::Codec(
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

    /// Sends the broadcast copies held while the pool was suspended (after
    /// the resume, or when a shutdown lifts the suspension).
    pub(crate) fn release_held(&self) {
        let held = std::mem::take(&mut *lock(&self.shared.held));
        for (w, t) in held {
            // SeqCst: as in `send_to`.
            self.shared
                .core
                .held
                .fetch_sub(t.jobs() as usize, Ordering::SeqCst);
            self.send_to(w, t);
        }
    }

    /// Sends `task` to worker `w` whatever its slots (broadcast); while
    /// the pool is suspended, it waits for the resume.
    pub(crate) fn send_to(&self, w: usize, task: Task) {
        let core = &self.shared.core;
        {
            // Under the lock `release_held` takes after the resume: a copy
            // either sees the pool resumed or is released with the rest.
            let mut held = lock(&self.shared.held);
            // Acquire: pairs with the Release store in `set_suspended`.
            if core.suspended.load(Ordering::Acquire) {
                // Counted as queued, as a thread pool's held copies are.
                // SeqCst: as every access to `held`.
                core.held.fetch_add(task.jobs() as usize, Ordering::SeqCst);
                held.push((w, task));
                return;
            }
        }
        let slot = &self.shared.slots[w];
        let worker = {
            let mut waiting = lock(&slot.waiting);
            // A worker told to stop (recycled) will not read it: its
            // replacement takes it, as for one that exited.
            let live = slot
                .current()
                .filter(|w| w.alive.load(Ordering::Acquire) && !w.stop_sent.load(Ordering::SeqCst));
            match (live, &mut *waiting) {
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
        // SeqCst: as every other access to the in-flight count (see `fill_slots`).
        worker.in_flight.fetch_add(1, Ordering::SeqCst);
        // (Against `retire_if_idle`: either it sees this job in flight, or
        // this sees its Stop and leaves the copy to the replacement.)
        if worker.stop_sent.load(Ordering::SeqCst) {
            worker.in_flight.fetch_sub(1, Ordering::SeqCst);
            // Again, now that this worker no longer counts: its
            // replacement's queue, or the replacement itself.
            return self.send_to(w, task);
        }
        dispatch(&worker, core, task, 0);
        if let Err(e) = worker.tx.flush() {
            log::warn!("worker {}: could not send a broadcast job: {e}", worker.id);
        }
    }
}

impl Worker {
    /// Whether it takes no more jobs: it is retiring, or it has been sent
    /// its `recycle_after_jobs` budget (then it starts retiring). Called
    /// by a dispatcher after reserving a slot (SeqCst: see
    /// `retire_if_idle`).
    pub(super) fn closed_to_jobs(&self) -> bool {
        if self.retiring.load(Ordering::SeqCst) {
            return true;
        }
        let Some(n) = self.core.config.recycle.jobs else {
            return false;
        };
        // Relaxed: see `jobs_sent`.
        let sent = self.jobs_sent.load(Ordering::Relaxed);
        if sent < n {
            return false;
        }
        let why = format!("recycled after {sent} job(s)");
        {
            let mut slot = lock(&self.recycle_why);
            if slot.is_none() {
                log::info!("worker {} (pid {}): {why}", self.id, self.pid);
                *slot = Some(why);
            }
        }
        self.retiring.store(true, Ordering::SeqCst);
        true
    }
}

impl Task {
    /// The frame head that announces this task to a process worker.
    fn head(&self) -> crate::proto::ToWorker<'static> {
        match self.batch {
            None => crate::proto::ToWorker::Job {
                id: self.id,
                route: self.route,
            },
            Some(count) => crate::proto::ToWorker::Batch {
                id: self.id,
                route: self.route,
                count,
            },
        }
    }
}

impl Shared {
    /// Dispatches what is queued to the workers with free slots, the least
    /// loaded first: each round fills every worker up to one more job in
    /// flight, so a burst spreads over the workers instead of filling the
    /// first one's slots (with long jobs, one worker would hold jobs that
    /// others could run now).
    pub(super) fn kick(&self) {
        // SeqCst: the enqueue before this must be visible to a reader that
        // frees a slot and then checks the queue (see `fill_slots`).
        fence(Ordering::SeqCst);
        let n = self.slots.len();
        // Relaxed: only spreads the starting point among equals.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // One job at a time to the least loaded worker with a free slot:
        // a submit (one job queued) looks once; a burst spreads.
        while self.core.has_queued() && !self.core.suspended.load(Ordering::Acquire) {
            let least = (0..n)
                .filter_map(|i| lock(&self.slots[(start + i) % n].current).clone())
                .filter(|w| w.alive.load(Ordering::Acquire) && !w.retiring.load(Ordering::SeqCst))
                // SeqCst: as every other access to the in-flight count.
                .map(|w| (w.in_flight.load(Ordering::SeqCst), w))
                .filter(|(load, w)| *load < w.max_in_flight)
                .min_by_key(|(load, _)| *load);
            let Some((load, w)) = least else {
                // Jobs wait and no worker is free: a scaling pool grows.
                if self.core.may_grow() {
                    if let Some(scale) = &self.core.scale {
                        scale.grow();
                    }
                }
                return;
            };
            // (Sending nothing means another thread took that slot, the
            // queue emptied, or the worker closed: the next look sees it.)
            fill_slots(&w, &self.core, load + 1, true, 0);
        }
    }
}

/// Takes queued jobs for `w` while it has fewer than `max_in_flight` in
/// flight. Flushes what it sent if `flush` (the reader defers the flush
/// while more results are waiting).
///
/// `now`: the pool clock its caller just read (an answer's, for metrics),
/// or 0; the jobs it dispatches start then, one clock read fewer each.
pub(super) fn fill_slots(w: &Worker, core: &Core, max_in_flight: usize, flush: bool, now: u64) {
    let mut sent = false;
    loop {
        // Acquire: pairs with the Release store when the worker dies or
        // the pool is suspended.
        if !w.alive.load(Ordering::Acquire) || core.suspended.load(Ordering::Acquire) {
            break;
        }
        // SeqCst throughout: "free a slot, then look at the queue" here and
        // "enqueue, then look at the slots" in `kick` must not both miss.
        let cur = w.in_flight.load(Ordering::SeqCst);
        if cur >= max_in_flight {
            break;
        }
        if w.in_flight
            .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            continue;
        }
        // SeqCst, after the reservation: see `Worker::retire_if_idle`.
        if w.closed_to_jobs() {
            w.in_flight.fetch_sub(1, Ordering::SeqCst);
            // SeqCst: as the first look in `retire_if_idle`.
            if w.retiring.load(Ordering::SeqCst) {
                w.retire_if_idle();
            }
            break;
        }
        match core.pop() {
            Some(Work::Task(t)) => {
                // Relaxed: a hint, as in `note_taken`, which decides.
                if core.saturated.load(Ordering::Relaxed) {
                    core.note_taken();
                }
                if t.state.is_settled() {
                    // Cancelled (or past its queue deadline) while queued:
                    // dropped without reaching the worker.
                    w.in_flight.fetch_sub(1, Ordering::SeqCst);
                    core.count_settled_elsewhere(&t.state, t.jobs(), None);
                    core.free.notify();
                    continue;
                }
                dispatch(w, core, t, now);
                sent = true;
            }
            Some(Work::Stop | Work::Wake) | None => {
                w.in_flight.fetch_sub(1, Ordering::SeqCst);
                // (A submitter that saw this slot taken must look again.)
                core.free.notify();
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
    // A reservation given back above may have been the last thing a
    // retiring worker held.
    // SeqCst: as the first look in `retire_if_idle`.
    if w.retiring.load(Ordering::SeqCst) {
        w.retire_if_idle();
    }
}

/// Records `t` as pending on `w` and queues its frame. The caller holds a
/// slot. `now`: the pool clock if the caller just read it, else 0.
pub(super) fn dispatch(w: &Worker, core: &Core, mut t: Task, now: u64) {
    let jobs = t.jobs();
    let id = t.id;
    // Relaxed: an order among this worker's pending jobs, read under the
    // `pending` lock that the insert below takes.
    t.seq = w.next_seq.fetch_add(1, Ordering::Relaxed);
    t.state.mark_dispatched();
    if core.config.metrics {
        core.note_started(&t, w.id, if now == 0 { core.clock() } else { now });
    }
    if core.config.recycle.jobs.is_some() {
        // Relaxed: a budget for `recycle_after_jobs`, read by dispatchers.
        w.jobs_sent.fetch_add(jobs, Ordering::Relaxed);
    }
    // Relaxed: statistics only.
    core.counters[w.id]
        .running
        .fetch_add(jobs as usize, Ordering::Relaxed);
    // The task is pending before its frame can reach the worker (the
    // answer may come back at once); the job value is encoded from here
    // and put back, so a crash can send the task to another worker.
    // The only job in flight on this worker: its ticket may read the
    // answer itself (ARCHITECTURE.md, "a lone job's waiter reads its answer").
    // SeqCst: as every other access to the in-flight count.
    if w.in_flight.load(Ordering::SeqCst) == 1 {
        let me: std::sync::Weak<dyn crate::pool::FastRead> = w.me.clone();
        t.state.set_fast_reader(me);
    } else {
        // Others are in flight: the reader thread must not nap.
        w.rx.wake_background();
        // And this job waits behind them: a scaling pool grows.
        if core.may_grow() {
            if let Some(scale) = &core.scale {
                scale.grow();
            }
        }
    }
    let job = std::mem::replace(&mut t.job, crate::pool::Payload::Lent);
    let (head, send_job, timeout) = (t.head(), t.send_job, t.timeout);
    lock(&w.pending).insert(id, t);
    // Encoding runs the job's Serialize impl, which may panic: that fails
    // this job, not the thread that dispatches (it may be a reader).
    let sent = match &job {
        crate::pool::Payload::Value(v) => send_job(&w.tx, &head, &**v),
        crate::pool::Payload::Encoded(e) => crate::pool::send_encoded(&w.tx, &head, &e.0, &e.1, w.json()),
        crate::pool::Payload::Lent => Err(SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            "the job was lost in a crash while it was being sent".into(),
        ))),
    };
    let failure = match sent {
        Ok(()) => {
            // The cancel flag is read after the insert: a cancel from then
            // on finds the task pending; one before is seen here.
            let (cancelled, start_clock) = {
                let mut pending = lock(&w.pending);
                let (cancelled, clock) = match pending.get_mut(&id) {
                    Some(t) => {
                        t.job = job;
                        (t.state.is_cancelled(), clocked(t).then_some(t.seq))
                    }
                    None => (false, None),
                };
                // A job with a clock starts it now if it is the worker's
                // oldest; sent behind others, it has not started, and the
                // answer that makes it the oldest starts it
                // (`Worker::start_next_clock`).
                let start = match clock {
                    Some(seq) if !sent_behind(&pending, seq) => {
                        if let Some(t) = pending.get(&id) {
                            t.state.mark_started();
                        }
                        true
                    }
                    Some(_) => {
                        // Relaxed: under the `pending` lock, which the
                        // reader takes before it looks.
                        w.clock_waiting.store(true, Ordering::Relaxed);
                        false
                    }
                    None => false,
                };
                (cancelled, start)
            };
            if let (Some(after), true) = (timeout, start_clock) {
                w.arm_run_timeout(id, after);
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
        Err(SendFail::Gone) => {
            // The worker's end went under this very write (a job with
            // buffers is written at once, not queued): the job goes back to
            // `pending`, whole, and the reader, which meets the same end,
            // answers or retries it as it does every job the worker held.
            // (Acquire: as above.)
            if w.alive.load(Ordering::Acquire) {
                if let Some(t) = lock(&w.pending).get_mut(&id) {
                    t.job = job;
                    return;
                }
            }
            Failure::WorkerExited {
                worker: w.id,
                pid: Some(w.pid),
                status: Some("its port closed as the job was sent".into()),
                stderr: Vec::new(),
            }
        }
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
        w.in_flight.fetch_sub(1, Ordering::SeqCst);
        core.counters[w.id]
            .running
            .fetch_sub(jobs as usize, Ordering::Relaxed);
        core.retire_failure(&t.state, &t.reply, jobs, failure, Some(w.id));
        core.free.notify();
    }
}

/// Wakes submitters that wait for a process worker's free slot (a pool
/// with a queue limit of 0 has no queue to wait in). Freeing a slot costs
/// an atomic load unless someone waits.
#[derive(Default)]
pub(crate) struct FreeGate {
    /// Bumped at every wake-up, so a waiter that looked before it never
    /// sleeps through it.
    wakeups: Mutex<u64>,
    cv: Condvar,
    waiters: AtomicUsize,
}

impl FreeGate {
    /// A slot was freed (or a worker started, or the pool closed).
    pub(crate) fn notify(&self) {
        // SeqCst: pairs with the increment in `wait`; either the waiter's
        // next look sees the slot, or this sees the waiter.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            *lock(&self.wakeups) += 1;
            self.cv.notify_all();
        }
    }

    /// Calls `attempt` until it succeeds, `give_up()`, or `deadline`;
    /// sleeps between attempts until a slot is freed.
    pub(crate) fn wait<T>(
        &self,
        mut attempt: impl FnMut() -> Option<T>,
        give_up: impl Fn() -> bool,
        deadline: Option<Instant>,
    ) -> Option<T> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let out = loop {
            let seen = *lock(&self.wakeups);
            if let Some(v) = attempt() {
                break Some(v);
            }
            if give_up() {
                break None;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break None;
            }
            let g = lock(&self.wakeups);
            if *g == seen {
                // The bound only guards against a missed notification.
                let left = deadline.map_or(Duration::MAX, |d| d - now);
                let _ = self.cv.wait_timeout(g, left.min(Duration::from_millis(50)));
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        out
    }
}
