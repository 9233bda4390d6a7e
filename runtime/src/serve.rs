//! The worker side: the loop a process worker runs. It takes jobs from
//! the port, runs them with the worker's [`Handlers`], and sends the
//! answers back. (The pool is the other side; `proto.rs` is what they say.)

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::job::{CancelSource, Context, Failure, Handlers, ProgressSink};
use crate::port::Ipc;
use crate::proto::{FromWorker, ToWorker, WireOutcome};

/// How often a handler's `is_cancelled` looks at the port.
const CANCEL_POLL: Duration = Duration::from_millis(1);

/// A job that ran at least this long has its answer written at once
/// (README "Writing while the peer writes": answers to quick jobs wait to
/// be written together).
const FLUSH_AFTER: Duration = Duration::from_micros(200);

/// The longest a finished answer waits unwritten while the worker runs
/// further jobs (see `Flusher`): long enough that a stream of tiny jobs
/// still shares writes, short beside any job worth a process.
const HOLD_AT_MOST: Duration = Duration::from_millis(1);

/// More remembered cancels than this means the supervisor cancelled jobs
/// that had already finished here; forget them.
const MAX_REMEMBERED_CANCELS: usize = 4096;

/// The worker's side of the port, shared between the serve loop (between
/// jobs) and a running handler's [`Context::is_cancelled`] (during one).
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
}

struct InboxState {
    ipc: Ipc,
    /// Frames read while a handler looked for cancels, in arrival order,
    /// with the fds that came with them (their jobs' buffers).
    backlog: VecDeque<(Vec<u8>, Vec<std::os::fd::OwnedFd>)>,
    /// Jobs the supervisor cancelled.
    cancelled: HashSet<u64>,
    last_poll: Option<Instant>,
}

impl InboxState {
    /// Reads every frame already here: cancels are noted, anything else
    /// waits in the backlog for the serve loop.
    fn poll(&mut self) -> io::Result<()> {
        while self.ipc.has_frame()? {
            let mut frame = Vec::new();
            let fds = self.ipc.recv_bytes_with_fds(&mut frame)?;
            match postcard::take_from_bytes::<ToWorker<'_>>(&frame) {
                Ok((ToWorker::Cancel { id }, _)) => self.note_cancel(id),
                _ => self.backlog.push_back((frame, fds)),
            }
        }
        Ok(())
    }

    fn note_cancel(&mut self, id: u64) {
        if self.cancelled.len() >= MAX_REMEMBERED_CANCELS {
            self.cancelled.clear();
        }
        self.cancelled.insert(id);
    }
}

impl Inbox {
    /// Whether job `id` was cancelled; reads the port at most once per
    /// [`CANCEL_POLL`].
    pub(crate) fn is_cancelled(&self, id: u64) -> bool {
        // Another thread of the handler may be looking right now: it will
        // see the cancel; this caller sees it on its next call.
        let Ok(mut s) = self.state.try_lock() else {
            return false;
        };
        if s.cancelled.contains(&id) {
            return true;
        }
        let now = Instant::now();
        if s.last_poll.is_some_and(|t| now.duration_since(t) < CANCEL_POLL) {
            return false;
        }
        s.last_poll = Some(now);
        if let Err(e) = s.poll() {
            // The serve loop meets the same error on its next read.
            log::debug!("looking for cancels: {e}");
        }
        s.cancelled.contains(&id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a running handler reaches of its worker's port: the inbox for
/// cancels, the sender for progress.
struct WorkerSide {
    inbox: std::sync::Arc<Inbox>,
    tx: crate::port::IpcSender,
}

impl crate::job::RemoteJob for WorkerSide {
    fn is_cancelled(&self, id: u64) -> bool {
        self.inbox.is_cancelled(id)
    }

    fn progress(&self, id: u64, payload: Vec<u8>) {
        if let Err(e) = self.tx.send(&FromWorker::Progress { id, payload }) {
            log::warn!("could not send a progress message: {e}");
        }
    }
}

/// Writes answers that wait while a handler runs. The serve loop holds
/// answers back while more jobs are waiting, so one write carries many;
/// but the next job may be slow, and a finished result must not wait for
/// it. The serve loop arms this thread when it starts a job with answers
/// held; [`HOLD_AT_MOST`] later the thread writes whatever is still held
/// (nothing, if the loop wrote first). It writes through the inbox as the
/// loop does (reading incoming frames while the supervisor's side is
/// full), so it cannot deadlock with a supervisor that is writing to us.
struct Flusher {
    /// When to write (`None`: not armed).
    due: Mutex<Option<Instant>>,
    cv: std::sync::Condvar,
    /// The thread waits without a deadline (idle): arming must wake it.
    /// While jobs keep coming it naps in steps of `HOLD_AT_MOST` instead, so
    /// arming costs no wake-up.
    sleeping: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
}

impl Flusher {
    fn start(inbox: std::sync::Arc<Inbox>) -> io::Result<std::sync::Arc<Flusher>> {
        let f = std::sync::Arc::new(Flusher {
            due: Mutex::new(None),
            cv: std::sync::Condvar::new(),
            sleeping: std::sync::atomic::AtomicBool::new(false),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let me = f.clone();
        std::thread::Builder::new()
            .name("portpool-flush".into())
            .spawn(move || me.run(&inbox))?;
        Ok(f)
    }

    /// A job is about to run while answers are held: they go out within
    /// [`HOLD_AT_MOST`] (an earlier arming stands).
    fn arm(&self) {
        let mut due = crate::util::lock(&self.due);
        if due.is_none() {
            *due = Some(Instant::now() + HOLD_AT_MOST);
            // (Read under the lock the thread sets it under.)
            if self.sleeping.load(std::sync::atomic::Ordering::Relaxed) {
                self.cv.notify_one();
            }
        }
    }

    fn finish(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let _g = crate::util::lock(&self.due);
        self.cv.notify_one();
    }

    fn run(&self, inbox: &Inbox) {
        use std::sync::atomic::Ordering;
        // How long without an arming before it sleeps for good.
        const IDLE: Duration = Duration::from_millis(10);
        let mut due = crate::util::lock(&self.due);
        let mut last_armed = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let wait = match *due {
                None if last_armed.elapsed() >= IDLE => None,
                None => Some(HOLD_AT_MOST),
                Some(at) => {
                    last_armed = Instant::now();
                    match at.checked_duration_since(last_armed) {
                        Some(left) if !left.is_zero() => Some(left),
                        _ => {
                            *due = None;
                            drop(due);
                            if let Err(e) = inbox.lock().ipc.flush_reading() {
                                // The serve loop meets the same error on its next write.
                                log::debug!("writing held answers: {e}");
                            }
                            due = crate::util::lock(&self.due);
                            continue;
                        }
                    }
                }
            };
            due = match wait {
                None => {
                    self.sleeping.store(true, Ordering::Relaxed);
                    let g = self.cv.wait(due).unwrap_or_else(|p| p.into_inner());
                    self.sleeping.store(false, Ordering::Relaxed);
                    last_armed = Instant::now();
                    g
                }
                Some(d) => self
                    .cv
                    .wait_timeout(due, d)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0),
            };
        }
    }
}

/// Runs `call` (a job's decode, run and result encode); over a connection
/// that passes fds (`fds_pass`) its result's buffers put their files in
/// `files`, to go with the answer.
fn collecting_results<T, E>(
    fds_pass: bool,
    files: &mut Vec<std::os::fd::OwnedFd>,
    call: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if !fds_pass {
        return call();
    }
    let (res, fds) = crate::port::collecting_buffers(call);
    // A failed result sends no files: those its encode collected before
    // failing close here.
    if res.is_ok() {
        *files = fds;
    }
    res
}

/// A worker connected through pipes (started by a launcher, perhaps on
/// another machine) has no parent-death signal to rely on: when its
/// supervisor, or the ssh between them, goes away, nothing signals it, and
/// a handler that computes for minutes would not read the end until it
/// finished. A thread waits for either pipe's hang-up (reading nothing)
/// and ends the process at once.
fn exit_when_supervisor_gone(ipc: &Ipc, worker_id: usize) -> io::Result<()> {
    let (incoming, outgoing) = ipc.dup_fds()?;
    std::thread::Builder::new()
        .name("portpool-hangup".into())
        .spawn(move || {
            use std::os::fd::AsFd;
            match crate::sys::wait_hangup(incoming.as_fd(), outgoing.as_fd()) {
                Ok(()) => {
                    eprintln!(
                        "portpool worker {worker_id}: the connection to the supervisor is gone; exiting"
                    );
                    std::process::exit(1);
                }
                Err(e) => log::warn!("worker {worker_id}: cannot watch the connection ({e})"),
            }
        })?;
    Ok(())
}

/// Serves jobs from a supervisor over `ipc` until it says stop or goes away.
///
/// It first announces the routes it serves (names and types), and fails at
/// once if `handlers` registers two job types under one name.
///
/// Answers are queued and written together whenever no further job is
/// already waiting, so pipelined jobs cost one write per batch; one held
/// while a later job runs is written within 1 ms by a thread of its own.
/// Over pipes (a launcher), the worker ends itself when the connection
/// goes away, even in the middle of a handler. A job that
/// fails to decode, a route without a handler, a panicking handler or a
/// result that fails to encode fails that job only; the loop goes on.
///
/// A cancel for a job not yet started fails it without running it; a
/// running handler sees it through [`Context::is_cancelled`]. Suspend and
/// resume messages run the handlers' hooks.
/// Returns `Ok(())` when told to stop or when the supervisor closed the
/// port; an error if the port broke.
pub fn serve(ipc: Ipc, handlers: &Handlers, worker_id: usize) -> io::Result<()> {
    handlers.check().map_err(io::Error::other)?;
    if !ipc.sender().can_send_ports() {
        exit_when_supervisor_gone(&ipc, worker_id)?;
    }
    let tx = ipc.sender().clone();
    // First the route table, so the supervisor can refuse a worker built
    // from other code before it sends a job.
    tx.send(&FromWorker::Routes {
        jobs_version: crate::proto::JOBS_VERSION,
        routes: handlers.route_table(),
    })?;
    let inbox = std::sync::Arc::new(Inbox {
        state: Mutex::new(InboxState {
            ipc,
            backlog: VecDeque::new(),
            cancelled: HashSet::new(),
            last_poll: None,
        }),
    });
    let side: std::sync::Arc<dyn crate::job::RemoteJob> = std::sync::Arc::new(WorkerSide {
        inbox: inbox.clone(),
        tx: tx.clone(),
    });
    let flusher = Flusher::start(inbox.clone())?;
    let res = serve_loop(&inbox, &side, handlers, worker_id, &tx, &flusher);
    flusher.finish();
    res
}

/// The body of [`serve`]: reads, runs and answers until told to stop.
fn serve_loop(
    inbox: &std::sync::Arc<Inbox>,
    side: &std::sync::Arc<dyn crate::job::RemoteJob>,
    handlers: &Handlers,
    worker_id: usize,
    tx: &crate::port::IpcSender,
    flusher: &Flusher,
) -> io::Result<()> {
    let mut buf = Vec::new();
    // The job that just ran: its id leaves the cancel set under the next
    // lock, which the loop takes anyway.
    let mut finished = None;
    // An answer to write now, not with the next batch: its job ran long.
    let mut flush_due = false;
    // Answers are queued and not yet written by this loop (see `Flusher`).
    let mut held = false;
    // Files of the buffers in the result being answered, and whether the
    // connection can carry them at all (pipes cannot).
    let mut result_fds: Vec<std::os::fd::OwnedFd> = Vec::new();
    let fds_pass = tx.can_send_ports();
    loop {
        let mut s = inbox.lock();
        if let Some(id) = finished.take() {
            s.cancelled.remove(&id);
        }
        if flush_due {
            flush_due = false;
            held = false;
            s.ipc.flush_reading()?;
        }
        let fds = match s.backlog.pop_front() {
            Some((frame, fds)) => {
                buf = frame;
                fds
            }
            None => {
                // Phase 1: write the answers queued so far before blocking.
                // (Reading incoming jobs meanwhile if the supervisor, busy
                // writing to us, is not reading: README "Writing while the
                // peer writes".)
                // (Only what is already buffered counts: looking at the
                // kernel too would cost a system call per job.)
                if !s.ipc.has_buffered_frame() {
                    held = false;
                    s.ipc.flush_reading()?;
                }
                // Phase 2: take the next frame (and its buffers' files).
                match s.ipc.recv_bytes_with_fds(&mut buf) {
                    Ok(fds) => fds,
                    Err(e) if e.is_disconnected() => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let (head, job) = postcard::take_from_bytes::<ToWorker<'_>>(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the supervisor sent a frame that is not a job or a control: {e}"),
            )
        })?;
        // Phase 3: run it and queue the answer.
        let started = Instant::now();
        let (id, outcome) = match head {
            ToWorker::Stop => {
                s.ipc.flush_reading()?;
                return Ok(());
            }
            ToWorker::Cancel { id } => {
                s.note_cancel(id);
                continue;
            }
            ToWorker::Suspend | ToWorker::Resume => {
                drop(s);
                handlers.run_suspend_hooks(matches!(head, ToWorker::Suspend));
                continue;
            }
            ToWorker::Job { id, .. } | ToWorker::Batch { id, .. } if s.cancelled.remove(&id) => {
                (id, WireOutcome::Failed(Failure::Cancelled))
            }
            ToWorker::Job { id, route } => {
                drop(s);
                finished = Some(id);
                if held {
                    flusher.arm();
                }
                let cx = Context::new(
                    worker_id,
                    CancelSource::Remote(side.clone(), id),
                    ProgressSink::Remote(side.clone(), id),
                );
                // The job's buffers find their files while it decodes; the
                // result's give theirs (over a connection that passes fds).
                let res = collecting_results(fds_pass, &mut result_fds, || {
                    crate::port::with_received_fds(fds, || handlers.call_bytes(route, job, &cx))
                });
                match res {
                    Ok(bytes) => (id, WireOutcome::Ran(bytes)),
                    Err(f) => (id, WireOutcome::Failed(f)),
                }
            }
            ToWorker::Batch { id, route, count } => {
                drop(s);
                finished = Some(id);
                if held {
                    flusher.arm();
                }
                let cx = Context::new(
                    worker_id,
                    CancelSource::Remote(side.clone(), id),
                    ProgressSink::Discard,
                );
                let res = collecting_results(fds_pass, &mut result_fds, || {
                    crate::port::with_received_fds(fds, || {
                        handlers.call_batch_bytes(route, job, count as usize, &cx)
                    })
                });
                match res {
                    Ok((bytes, failed)) => (id, WireOutcome::RanChunk { bytes, failed }),
                    Err(f) => (id, WireOutcome::Failed(f)),
                }
            }
        };
        held = true;
        if !result_fds.is_empty() {
            // Its result's buffers' files go with the answer, at once.
            let fds = std::mem::take(&mut result_fds);
            // What is held goes first, then this answer, reading while it
            // waits for room (README "Writing while the peer writes").
            held = false;
            let sent = inbox
                .lock()
                .ipc
                .send_with_fds_reading(&FromWorker::Done { id, outcome }, &fds);
            let why = match sent {
                Ok(()) => continue,
                Err(e @ crate::error::SendError::Disconnected) => return Err(e.into()),
                // Too large, or more buffers than one frame carries: this
                // job fails, the worker goes on.
                Err(e) => e.to_string(),
            };
            let f = Failure::Codec(
                crate::job::Side::Worker,
                format!("its result could not be sent: {why}"),
            );
            tx.feed(&FromWorker::Done {
                id,
                outcome: WireOutcome::Failed(f),
            })?;
            held = true;
            if started.elapsed() >= FLUSH_AFTER {
                flush_due = true;
            }
            continue;
        }
        match tx.feed(&FromWorker::Done { id, outcome }) {
            Ok(()) => {}
            // A result too large for one frame fails its job (or chunk),
            // not the worker.
            Err(crate::error::SendError::TooLarge { len, limit }) => {
                let f = Failure::Codec(
                    crate::job::Side::Worker,
                    format!(
                        "the result takes {len} bytes, over the connection's frame limit of {limit}: \
                         return less per job (or, in a map, this chunk's results together)"
                    ),
                );
                tx.feed(&FromWorker::Done {
                    id,
                    outcome: WireOutcome::Failed(f),
                })?;
            }
            Err(e) => return Err(e.into()),
        }
        // A job that ran long is answered at once: batching its answer
        // with the next jobs' would hold a finished result back (and lose
        // it if the worker dies meanwhile) to save a write that costs
        // little beside the job.
        if started.elapsed() >= FLUSH_AFTER {
            flush_due = true;
        }
    }
}
