//! One worker process as the supervisor sees it: its port, what it holds,
//! how a frame from it is handled, and how a lone job's waiter reads it.

use super::*;
use crate::port::shared::{self, SharedReceiver, Turn};

/// Why the pool itself ended a worker.
#[derive(Debug)]
pub(super) enum EndReason {
    /// To stop these cancelled or timed-out jobs; its other jobs are
    /// innocent and go back to the queue.
    Victims(Vec<u64>),
    /// The shutdown's deadline passed.
    Shutdown,
    /// Replaced between jobs (scenario "recycle"), for this reason; what it
    /// held goes back to the queue.
    Recycle(String),
}

/// One worker process: one incarnation of a slot.
pub(super) struct Worker {
    pub(super) id: usize,
    pub(super) epoch: u64,
    pub(super) pid: u32,
    pub(super) tx: IpcSender,
    /// Jobs sent and not answered.
    pub(super) in_flight: AtomicUsize,
    pub(super) alive: AtomicBool,
    /// Each task sent and not answered, by id.
    pub(super) pending: Mutex<HashMap<u64, Task>>,
    pub(super) child: Mutex<Option<Child>>,
    pub(super) ended_by: Mutex<Option<EndReason>>,
    pub(super) stderr: Arc<StderrTail>,
    /// The receiving half of the worker's port, shared by its reader
    /// thread and a lone job's waiter (ARCHITECTURE.md, "a lone job's
    /// waiter reads its answer").
    pub(super) rx: SharedReceiver,
    pub(super) me: std::sync::Weak<Worker>,
    pub(super) core: Arc<Core>,
    pub(super) max_in_flight: usize,
    /// The conversation beside the jobs, when the pool has worker links.
    pub(super) link: Option<Arc<crate::link::Link>>,
    /// A protocol error met by a ticket reading the port (the worker is
    /// killed; its reader reports this as the cause).
    pub(super) broke: Mutex<Option<String>>,
    /// Raised with `broke`: nothing it sends after the bad frame is read
    /// (frames already in the buffer included).
    pub(super) broken: AtomicBool,
    /// A pending job with a clock (`clocked`) waits behind older ones and
    /// is not yet marked started: the answer that makes it the oldest
    /// starts it (`start_next_clock`). Set under the `pending` lock; lets an
    /// answer skip the look when no such job is there.
    pub(super) clock_waiting: AtomicBool,
    /// Its port closed in the middle of a frame: how much of it came (told
    /// beside its exit status; a crash mid-write does it too, so it is not
    /// a broken protocol).
    pub(super) cut_short: Mutex<Option<String>>,
    /// When it started, and the jobs it finished (scenario "recycle").
    pub(super) started: Instant,
    pub(super) jobs_done: AtomicU64,
    /// Jobs sent to it (a `recycle_after_jobs` budget is spent at dispatch,
    /// so jobs in flight do not carry it past the limit).
    pub(super) jobs_sent: AtomicU64,
    /// Due for replacement: it takes no more jobs, and is told to stop
    /// once it holds none.
    pub(super) retiring: AtomicBool,
    pub(super) stop_sent: AtomicBool,
    /// Why it is retiring. Its exit counts as a recycle only once it was
    /// told to stop: a crash before that is a crash.
    pub(super) recycle_why: Mutex<Option<String>>,
    /// It runs on this machine (its pid is its own, not a launcher's).
    pub(super) local: bool,
    /// What carries its bytes (`Ipc::transport`).
    pub(super) transport: &'static str,
    /// When it last held no job, on the pool's clock (`Core::clock`; scaling pools).
    pub(super) idle_since: AtomicU64,
    /// It was chosen to leave for being idle (scenario "scale"): it
    /// retires, and its slot goes dormant instead of starting another.
    pub(super) leaving: AtomicBool,
    /// The next job's place in the order this worker is sent jobs (`Task::seq`).
    pub(super) next_seq: AtomicU64,
}

impl shared::Reader for &Worker {
    fn done(&mut self) -> bool {
        false
    }
    fn waiters_read(&mut self) -> bool {
        // A ticket that reads holds the receiver; none waits without it.
        false
    }
    fn read(&mut self, mut turn: Turn<'_>, wait: crate::transport::Wait) -> shared::Step {
        // Acquire: pairs with the Release store in `end_from_ticket`.
        if self.broken.load(Ordering::Acquire) {
            return shared::Step::End(None);
        }
        let rx: &mut IpcReceiver = &mut turn;
        let got = if self.json() {
            let mut buf = Vec::new();
            match rx.recv_message_wait(&mut buf, wait) {
                Ok(true) => match crate::proto::json::decode(&buf) {
                    Ok(msg) => Ok(Some((msg, Vec::new()))),
                    Err(e) => return shared::Step::End(Some(format!("it sent {e}"))),
                },
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            }
        } else {
            rx.recv_wait_with_fds::<FromWorker>(wait)
        };
        match got {
            Ok(Some((msg, fds))) => {
                self.handle(msg, fds, rx);
                shared::Step::Frame
            }
            Ok(None) => shared::Step::Nothing,
            Err(crate::error::RecvError::Truncated { expected, received }) => {
                *lock(&self.cut_short) = Some(format!(
                    "its port closed in the middle of a frame ({received} of {expected} bytes arrived)"
                ));
                shared::Step::End(None)
            }
            Err(e) if e.is_disconnected() => shared::Step::End(None),
            Err(e) => shared::Step::End(Some(e.to_string())),
        }
    }
}

impl Worker {
    /// Reads at most one frame from the port (waiting as told) and
    /// handles it; `None` if another thread still holds the receiver once
    /// the hand-off spin is over.
    pub(super) fn read_step(&self, wait: crate::transport::Wait) -> Option<shared::Step> {
        use shared::Reader;
        let turn = self.rx.turn_soon()?;
        let mut me = self;
        Some(me.read(turn, wait))
    }

    /// Handles every frame already in the receiver's buffer (no waiting).
    /// A thread other than the reader calls it before letting go: frames a
    /// read pulled in beyond its own would otherwise wait unseen while the
    /// reader sleeps on the fd, which shows only what the kernel holds.
    pub(super) fn drain_buffered(&self) {
        use shared::Reader;
        let mut me = self;
        if let shared::Step::End(why) = self
            .rx
            .drain_buffered(|turn| me.read(turn, crate::transport::Wait::Now))
        {
            self.end_from_ticket(why);
        }
    }

    /// A ticket met the end of the port, or a frame it could not take: a
    /// broken protocol is recorded and the worker killed (as the reader
    /// thread would have ended it); the reader reports the exit.
    pub(super) fn end_from_ticket(&self, why: Option<String>) {
        if let Some(e) = why {
            // Recorded before the kill: the reader reports it once the port
            // ends, which the kill may make at once.
            let e = lock(&self.broke).get_or_insert(e).clone();
            self.kill_for_protocol(&e);
        }
        self.rx.wake_background();
    }

    /// It sent a frame outside the protocol (`why`): nothing it sends after
    /// is read, and it is killed now (rule 3). Its port is still open, so
    /// it would not exit by itself.
    pub(super) fn kill_for_protocol(&self, why: &str) {
        log::error!("worker {} (pid {}) broke its protocol: {why}", self.id, self.pid);
        // Before the reader thread is woken (`end_from_ticket`): it must
        // not take the frames that follow the bad one as answers.
        self.broken.store(true, Ordering::Release);
        self.kill();
    }

    /// Whether it speaks the job messages in JSON (`PoolBuilder::job_codec`).
    pub(super) fn json(&self) -> bool {
        self.core.config.job_codec == crate::frame::Codec::Json
    }

    /// Sends a control message (stop, cancel, suspend, resume) in the
    /// worker's codec.
    pub(super) fn send_control(&self, msg: &ToWorker<'_>) -> Result<(), crate::error::SendError> {
        if self.json() {
            self.tx.send_bytes(&crate::proto::json::control(msg))
        } else {
            self.tx.send(msg)
        }
    }

    /// Like [`send_control`](Self::send_control), queued for the next flush.
    pub(super) fn feed_control(&self, msg: &ToWorker<'_>) -> Result<(), crate::error::SendError> {
        if self.json() {
            self.tx.feed_with("a control message", |buf| {
                buf.extend_from_slice(&crate::proto::json::control(msg));
                Ok(())
            })
        } else {
            self.tx.feed(msg)
        }
    }

    /// Handles one message from the worker; `fds` came with it (the files
    /// of the `Buffer`s in a job's result).
    pub(super) fn handle(&self, msg: FromWorker, fds: Vec<std::os::fd::OwnedFd>, rx: &mut IpcReceiver) {
        let core = &*self.core;
        let counters = &core.counters[self.id];
        // Whatever the frame, an answer before it may have left it the write
        // of the jobs it dispatched (they are written once no more frames
        // wait): the last frame of a burst flushes, an ignored one too.
        let an_answer = match msg {
            FromWorker::Routes { .. } => {
                log::warn!("worker {} announced its routes again; ignored", self.id);
                false
            }
            FromWorker::Progress { id, payload } => {
                if let Some(t) = lock(&self.pending).get(&id) {
                    t.reply.send(Event::Progress(crate::task::Progress {
                        json: self.json(),
                        bytes: payload,
                    }));
                }
                false
            }
            FromWorker::Done { id, outcome } => {
                let Some(t) = lock(&self.pending).remove(&id) else {
                    log::warn!("worker {} answered job {id}, which it was not given", self.id);
                    self.flush_unless_more(rx);
                    return;
                };
                // Relaxed: raised under the `pending` lock, which this
                // thread took after (`dispatch`).
                if self.clock_waiting.load(Ordering::Relaxed) {
                    self.start_next_clock();
                }
                let jobs = t.jobs();
                let (outcome, failed) = match outcome {
                    WireOutcome::Ran(b) if fds.is_empty() => (Outcome::Bytes(b), 0),
                    WireOutcome::Ran(b) => (Outcome::BytesFds(b, fds), 0),
                    WireOutcome::RanChunk { bytes, failed } if fds.is_empty() => {
                        (Outcome::Bytes(bytes), u64::from(failed).min(jobs))
                    }
                    WireOutcome::RanChunk { bytes, failed } => {
                        (Outcome::BytesFds(bytes, fds), u64::from(failed).min(jobs))
                    }
                    WireOutcome::Failed(f) => (Outcome::Failed(f), jobs),
                    WireOutcome::Json(b) => (Outcome::Json(b), 0),
                    WireOutcome::JsonChunk { nanos, items, failed } => {
                        (Outcome::JsonChunk(nanos, items), u64::from(failed).min(jobs))
                    }
                    WireOutcome::JsonOk { nanos, outputs } => (Outcome::JsonOk(nanos, outputs), 0),
                };
                // Relaxed: statistics only.
                counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
                // Decided before the answer goes out: whoever it wakes and
                // submits again finds this worker retiring, if it is due.
                self.note_recycle(jobs);
                // The answer's time on the pool clock, if metrics read it: the
                // jobs dispatched below start then.
                let mut answered = 0;
                if t.state.settle() {
                    counters.finish_n(jobs - failed, failed);
                    if core.config.metrics {
                        answered = core.note_answered(&t.state, jobs, failed, self.id);
                    }
                    log::trace!("worker {}: job {id} done", self.id);
                    // Its last word: the outcome and the mailbox's close at once.
                    t.reply.finish(Event::Done(outcome));
                } else {
                    // Cancelled or timed out meanwhile: its outcome is out.
                    core.count_settled_elsewhere(&t.state, jobs, Some(self.id));
                    drop(t);
                }
                // (The slot is given back whether or not the pool scales.)
                if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && core.scale.is_some() {
                    // Relaxed: read by the monitor's idle check, a hint.
                    self.idle_since.store(core.clock(), Ordering::Relaxed);
                }
                // SeqCst: as the first look in `retire_if_idle`.
                if self.retiring.load(Ordering::SeqCst) {
                    self.retire_if_idle();
                }
                // Queue the next jobs; they are written below.
                fill_slots(self, core, self.max_in_flight, false, answered);
                core.free.notify();
                true
            }
        };
        if self.flush_unless_more(rx) && an_answer {
            core.idle.notify();
        }
    }

    /// Writes what dispatch queued, unless more frames wait to be handled
    /// (the last of them flushes). Returns whether it flushed. (With
    /// nothing in flight no answer can follow: no look at the kernel.)
    fn flush_unless_more(&self, rx: &mut IpcReceiver) -> bool {
        let more = self.in_flight.load(Ordering::SeqCst) > 0 && rx.has_frame().unwrap_or(false);
        if !more {
            if let Err(e) = self.tx.flush() {
                log::debug!("worker {}: flush failed ({e}); the port is closing", self.id);
            }
        }
        !more
    }
}

impl crate::pool::FastRead for Worker {
    /// "A lone job's waiter reads its answer" (ARCHITECTURE.md): when a ticket waits
    /// for the only job its worker holds, the waiting thread reads the
    /// port itself instead of being woken by the reader thread, which
    /// saves a cross-thread wake-up per round trip. It gives up (and the
    /// ticket waits on its channel as usual) when other jobs are in flight,
    /// when the reader thread does not let go, or when the port ends.
    fn read_for(&self, job: &crate::job::JobState, deadline: Option<Instant>) {
        self.read_until(job, deadline);
        self.drain_buffered();
    }
}

impl Worker {
    pub(super) fn read_until(&self, job: &crate::job::JobState, deadline: Option<Instant>) {
        use crate::transport::Wait;
        loop {
            if job.is_settled() {
                return;
            }
            // SeqCst: as every other access to the in-flight count.
            if self.in_flight.load(Ordering::SeqCst) > 1 || !self.alive.load(Ordering::Acquire) {
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
            match self.read_step(Wait::Until(until)) {
                Some(shared::Step::Frame | shared::Step::Nothing) => {
                    // Answers for other jobs may wait now: the reader reads them.
                    if self.in_flight.load(Ordering::SeqCst) > 0 {
                        self.rx.wake_background();
                    }
                }
                None => return,
                Some(shared::Step::End(why)) => {
                    // The reader thread meets the end too and reports it.
                    self.end_from_ticket(why);
                    return;
                }
            }
        }
    }
}

impl Worker {
    /// After an answer: the oldest job still pending starts now. If it has
    /// a clock and waited behind others (`dispatch`), it is marked started
    /// (its queue wait is over) and its run timeout starts, whole.
    fn start_next_clock(&self) {
        let pending = lock(&self.pending);
        if let Some(next) = pending.values().min_by_key(|t| t.seq) {
            if clocked(next) && !next.state.is_started() {
                next.state.mark_started();
                if let Some(after) = next.timeout {
                    self.arm_run_timeout(next.id, after);
                }
            }
        }
        let waiting = pending.values().any(|t| clocked(t) && !t.state.is_started());
        // Relaxed: under the `pending` lock, as in `dispatch`.
        self.clock_waiting.store(waiting, Ordering::Relaxed);
    }

    /// Tells the monitor job `id`'s run timeout starts now.
    pub(super) fn arm_run_timeout(&self, id: u64, after: Duration) {
        let _ = self.core.control.send(Control::RunDeadline {
            id,
            worker: self.id,
            epoch: self.epoch,
            after,
        });
    }

    /// On an answer for `jobs` jobs: whether the worker is due for
    /// replacement (scenario "recycle"); it then takes no more jobs, and is
    /// told to stop once it holds none (`retire_if_idle`).
    fn note_recycle(&self, jobs: u64) {
        let policy = &self.core.config.recycle;
        if policy.jobs.is_none() && policy.age.is_none() && policy.memory.is_none() {
            return;
        }
        // Relaxed: a count only this thread's answers add to.
        let done = self.jobs_done.fetch_add(jobs, Ordering::Relaxed) + jobs;
        // SeqCst: against `fill_slots`' reservation (see `retire_if_idle`).
        if !self.retiring.load(Ordering::SeqCst) {
            let local = self.core.config.recycle.memory.is_some() && self.local;
            let rss = || local.then(|| crate::sys::resident_bytes(self.pid).ok()).flatten();
            let Some(why) = policy.due(done, self.started, rss) else {
                return;
            };
            log::info!("worker {} (pid {}): {why}", self.id, self.pid);
            lock(&self.recycle_why).get_or_insert(why);
            self.retiring.store(true, Ordering::SeqCst);
        }
    }

    /// A retiring worker that holds no job is told to stop (once). Called
    /// after an answer and by a dispatcher that backed off a retiring
    /// worker: with SeqCst on both sides, either the dispatcher sees
    /// `retiring` and gives its reservation back, or this sees the job
    /// in flight and waits for its answer.
    pub(super) fn retire_if_idle(&self) {
        if self.retiring.load(Ordering::SeqCst)
            && self.in_flight.load(Ordering::SeqCst) == 0
            && !self.stop_sent.swap(true, Ordering::SeqCst)
        {
            if let Err(e) = self.send_control(&ToWorker::Stop) {
                log::debug!("worker {}: stop not sent ({e}); it is exiting", self.id);
            }
        }
    }
}

impl Worker {
    /// Sends `sig` to the process if it has not been reaped. Returns
    /// whether it was sent.
    pub(super) fn signal(&self, sig: i32) -> bool {
        match lock(&self.child).as_ref() {
            Some(c) => crate::sys::signal_child(c, sig).is_ok(),
            None => false,
        }
    }

    /// SIGKILL, if not reaped yet.
    pub(super) fn kill(&self) -> bool {
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
pub(super) fn send_soon(w: Arc<Worker>, msg: ToWorker<'static>) {
    let spawned = std::thread::Builder::new()
        .name("portpool-send".into())
        .spawn(move || {
            if let Err(e) = w.send_control(&msg) {
                log::debug!("worker {}: {msg:?} not sent ({e}); it is exiting", w.id);
            }
        });
    if let Err(e) = spawned {
        log::error!("could not start a thread to send a control message: {e}");
    }
}

/// Whether a job has a clock that starts when it does: a run timeout, or a
/// queue-wait deadline (which ends then).
pub(super) fn clocked(t: &Task) -> bool {
    t.timeout.is_some() || t.state.is_watched()
}

/// Whether a job sent to a worker as `seq` waits behind one sent before it,
/// still unanswered: a worker starts its jobs in the order sent, so it has
/// not started.
pub(super) fn sent_behind(pending: &HashMap<u64, Task>, seq: u64) -> bool {
    pending.values().any(|o| o.seq < seq)
}
