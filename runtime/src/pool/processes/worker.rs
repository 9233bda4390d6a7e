//! One worker process as the supervisor sees it: its port, what it holds,
//! how a frame from it is handled, and how a lone job's waiter reads it.

use super::*;

/// Why the pool itself ended a worker.
#[derive(Debug)]
pub(super) enum EndReason {
    /// To stop these cancelled or timed-out jobs; its other jobs are
    /// innocent and go back to the queue.
    Victims(Vec<u64>),
    /// The shutdown's deadline passed.
    Shutdown,
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
    /// The receiving half of the worker's port, here while nobody reads
    /// (ARCHITECTURE.md, "a lone job's waiter reads its answer").
    pub(super) rx: Mutex<Option<IpcReceiver>>,
    /// The reader thread naps here while a ticket reads.
    pub(super) rx_cv: Condvar,
    /// The reader thread is napping on `rx_cv`.
    pub(super) reader_napping: AtomicBool,
    /// A duplicate of the port's fd, for waiting without holding `rx`.
    pub(super) rx_fd: crate::port::shared::WakeFd,
    pub(super) me: std::sync::Weak<Worker>,
    pub(super) core: Arc<Core>,
    pub(super) max_in_flight: usize,
    /// The conversation beside the jobs, when the pool has worker links.
    pub(super) link: Option<Arc<crate::link::Link>>,
    /// A protocol error met by a ticket reading the port (the worker is
    /// killed; its reader reports this as the cause).
    pub(super) broke: Mutex<Option<String>>,
}

/// What one read of a worker's port did.
pub(super) enum Step {
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
pub(super) use crate::port::shared::READER_NAP;

/// How long a ticket that wants to read its own answer waits for the
/// reader thread to let go of the receiver.
use crate::port::shared::HANDOFF_SPIN;

impl Worker {
    /// Reads at most one frame from the port (waiting as told) and
    /// handles it, unless another thread holds the receiver.
    pub(super) fn read_step(&self, wait: crate::transport::Wait) -> Step {
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
    pub(super) fn drain_buffered(&self) {
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
    pub(super) fn end_from_ticket(&self, why: Option<String>) {
        if let Some(e) = why {
            log::error!("worker {} (pid {}) broke its protocol: {e}", self.id, self.pid);
            lock(&self.broke).get_or_insert(e);
            self.kill();
        }
        self.wake_reader();
    }

    /// Wakes the reader thread if it naps (other jobs need reading, or the
    /// port ended).
    pub(super) fn wake_reader(&self) {
        // Acquire: pairs with the store before the reader's nap.
        if self.reader_napping.load(Ordering::Acquire) {
            let _g = lock(&self.rx);
            self.rx_cv.notify_all();
        }
    }

    /// Handles one answer or progress message.
    pub(super) fn handle(&self, msg: FromWorker, rx: &mut IpcReceiver) {
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
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                // Queue the next jobs; write everything queued (by this or an
                // earlier answer) once no more answers wait.
                fill_slots(self, core, self.max_in_flight, false);
                core.free.notify();
                // (With nothing else in flight no answer can follow: skip
                // the look at the kernel.)
                let more = self.in_flight.load(Ordering::SeqCst) > 0 && rx.has_frame().unwrap_or(false);
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

impl crate::pool::FastRead for Worker {
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
    pub(super) fn read_until(&self, done: &mut dyn FnMut() -> bool, deadline: Option<Instant>) {
        use crate::transport::Wait;
        loop {
            if done() {
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
                    if self.in_flight.load(Ordering::SeqCst) > 0 {
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
            if let Err(e) = w.tx.send(&msg) {
                log::debug!("worker {}: {msg:?} not sent ({e}); it is exiting", w.id);
            }
        });
    if let Err(e) = spawned {
        log::error!("could not start a thread to send a control message: {e}");
    }
}
