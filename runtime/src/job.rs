//! Layer 4: typed jobs and the registry of handlers that run them.
//!
//! A [`Job`] is a serde type with an [`Output`](Job::Output), an
//! [`Error`](Job::Error) and a stable route name [`NAME`](Job::NAME).
//! [`Handlers`] maps route names to functions. The same `Handlers` run in
//! thread workers (jobs move as Rust values, never serialized) and in
//! process workers (jobs cross as postcard bytes).
//!
//! Not for: deciding where or when a job runs (the pool does that).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A unit of work: the job's data is the type itself.
///
/// ```
/// use portpool_runtime::job::Job;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct CountPrimes { from: u64, to: u64 }
///
/// impl Job for CountPrimes {
///     type Output = u64;
///     type Error = String;
///     const NAME: &'static str = "count-primes";
/// }
/// ```
///
/// On a process pool a job and its result cross as postcard bytes, so the
/// job, output and error types must be ones postcard can encode and
/// decode: not self-describing types such as `serde_json::Value`, nor
/// `#[serde(untagged)]` or `#[serde(flatten)]`, nor sequences whose
/// `Serialize` does not give their length. Such a job fails with
/// [`JobError::Codec`], whose message names the type and says so. A thread
/// pool never encodes, so the same code may work there.
///
/// Each job type needs a `NAME` of its own: a registry with two types
/// under one name is refused when a pool or a worker is built with it.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// What a successful run returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// What a failed run returns (the handler's own error).
    type Error: Serialize + DeserializeOwned + Send + fmt::Debug + 'static;
    /// The stable route name both sides use to find the handler.
    const NAME: &'static str;
}

/// Where a handler's progress messages go.
#[derive(Clone)]
pub(crate) enum ProgressSink {
    /// Straight to the submitter's channel (thread workers).
    Channel(crate::pool::Reply),
    /// Over the worker's port to the supervisor, tagged with the job id.
    Port(crate::port::IpcSender, u64),
    /// Nowhere: nobody listens (jobs of a `map`).
    Discard,
}

/// A submitted job's shared state: its cancellation flag, whether it was
/// taken from the queue, and who settled its one outcome.
#[derive(Default)]
pub(crate) struct JobState {
    cancelled: AtomicBool,
    dispatched: AtomicBool,
    settled: AtomicU8,
    /// The process worker that holds this job as its only one, if so
    /// (weak: a ticket kept after its worker ended must not keep the
    /// worker's port open).
    fast: std::sync::OnceLock<std::sync::Weak<dyn crate::pool::FastRead>>,
}

impl fmt::Debug for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobState")
            .field("cancelled", &self.is_cancelled())
            .field("settled", &self.is_settled())
            .finish_non_exhaustive()
    }
}

const OPEN: u8 = 0;
const SETTLED: u8 = 1;
const SETTLED_BY_CANCEL: u8 = 2;

impl JobState {
    pub(crate) fn new() -> Arc<JobState> {
        Arc::new(JobState::default())
    }

    /// Records the process worker that holds this job alone.
    pub(crate) fn set_fast_reader(&self, w: std::sync::Weak<dyn crate::pool::FastRead>) {
        let _ = self.fast.set(w);
    }

    /// The process worker that held this job alone when it was dispatched,
    /// if it is still there.
    pub(crate) fn fast_reader(&self) -> Option<Arc<dyn crate::pool::FastRead>> {
        self.fast.get().and_then(std::sync::Weak::upgrade)
    }

    /// Sets the cancellation flag a running handler polls.
    pub(crate) fn cancel(&self) {
        // Release: pairs with the Acquire load in `is_cancelled`.
        self.cancelled.store(true, Ordering::Release);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the Release store in `cancel`.
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the job as taken from the queue by a worker.
    pub(crate) fn mark_dispatched(&self) {
        // Release/Acquire: only this flag is communicated.
        self.dispatched.store(true, Ordering::Release);
    }

    pub(crate) fn is_dispatched(&self) -> bool {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Claims the right to deliver the job's outcome. Exactly one caller
    /// ever gets `true` (scenario "one outcome" in `supervisor/README.md`).
    pub(crate) fn settle(&self) -> bool {
        // AcqRel: the winner's outcome is the one the ticket sees.
        self.settled
            .compare_exchange(OPEN, SETTLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Claims the outcome for the ticket's own `cancel`: the ticket then
    /// reports `Cancelled` without waiting for the pool.
    pub(crate) fn settle_by_cancel(&self) -> bool {
        self.settled
            .compare_exchange(OPEN, SETTLED_BY_CANCEL, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire) != OPEN
    }

    pub(crate) fn settled_by_cancel(&self) -> bool {
        self.settled.load(Ordering::Acquire) == SETTLED_BY_CANCEL
    }
}

/// Where a handler learns that its job was cancelled.
#[derive(Clone)]
pub(crate) enum CancelSource {
    /// Not cancellable (a service call).
    Never,
    /// The job's own state (thread workers share it with the ticket).
    Flag(Arc<JobState>),
    /// A process worker: cancel frames arrive on the port while the handler runs.
    Remote(Arc<crate::pool::serve::Inbox>, u64),
}

/// What a handler gets besides its job: which worker runs it, whether the
/// job was cancelled, and a way to report progress to the submitter.
pub struct Context {
    worker_id: usize,
    cancel: CancelSource,
    progress: ProgressSink,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("worker_id", &self.worker_id)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(worker_id: usize, cancel: CancelSource, progress: ProgressSink) -> Context {
        Context {
            worker_id,
            cancel,
            progress,
        }
    }

    /// The id of the worker running this job (0-based within its pool).
    pub fn worker_id(&self) -> usize {
        self.worker_id
    }

    /// Whether this job was cancelled (by its ticket, by its run timeout or
    /// by an immediate shutdown). A handler doing long work should check
    /// this now and then and return early when it is set: past the pool's
    /// grace period a process worker that has not returned is killed, and a
    /// thread worker is abandoned.
    ///
    /// In a process worker this looks at the port for a cancel message
    /// (at most about once a millisecond), so it is cheap to call often.
    pub fn is_cancelled(&self) -> bool {
        match &self.cancel {
            CancelSource::Never => false,
            CancelSource::Flag(s) => s.is_cancelled(),
            CancelSource::Remote(inbox, id) => inbox.is_cancelled(*id),
        }
    }

    /// Sends a progress message to whoever holds this job's ticket. It
    /// arrives before the job's result. Messages that cannot be encoded are
    /// dropped (and logged).
    pub fn progress<P: Serialize + ?Sized>(&self, msg: &P) {
        let payload = match postcard::to_allocvec(msg) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("dropping a progress message that could not be encoded: {e}");
                return;
            }
        };
        match &self.progress {
            ProgressSink::Channel(reply) => reply.send(crate::pool::Event::Progress(payload)),
            ProgressSink::Discard => {}
            ProgressSink::Port(tx, id) => {
                let msg = crate::pool::wire::FromWorker::Progress { id: *id, payload };
                if let Err(e) = tx.send(&msg) {
                    log::warn!("could not send a progress message: {e}");
                }
            }
        }
    }
}

/// Which side of a process boundary a coding failure happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    /// In the supervisor (encoding a job, decoding a result).
    Supervisor,
    /// In the worker (decoding a job, encoding a result).
    Worker,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Supervisor => "supervisor",
            Side::Worker => "worker",
        })
    }
}

/// How a job ended when it did not end with its output.
///
/// Its `Debug` is its `Display`: one sentence that says what happened to
/// the job and, where it helps, what to do. Match on the variants for the
/// details.
#[non_exhaustive]
pub enum JobError<E> {
    /// The handler returned its own error.
    Handler(E),
    /// The handler panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The worker running the job exited before answering.
    WorkerExited {
        /// The worker's id within its pool.
        worker: usize,
        /// Its process id (process workers).
        pid: Option<u32>,
        /// How it ended (exit code or signal), when known.
        status: Option<String>,
        /// The last lines the worker wrote to its stderr (oldest first).
        stderr: Vec<String>,
    },
    /// The job ran out of time, waiting in the queue or running.
    TimedOut {
        /// Which deadline passed.
        phase: TimeoutPhase,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// No handler is registered for the job's route in the worker.
    UnknownRoute {
        /// The route name.
        route: String,
    },
    /// The job or its result could not be encoded or decoded.
    Codec {
        /// Where it failed.
        side: Side,
        /// What failed and why.
        reason: String,
    },
    /// The job was cancelled before it ran (or it returned after its
    /// cancellation without an output).
    Cancelled,
    /// The pool did not take the job (it is shutting down or failed).
    Rejected {
        /// Why.
        reason: String,
    },
}

impl<E: fmt::Debug> fmt::Display for JobError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Handler(e) => write!(f, "job failed: {e:?}"),
            JobError::Panicked { message } => write!(f, "job panicked: {message}"),
            JobError::WorkerExited {
                worker,
                pid,
                status,
                stderr,
            } => {
                write!(f, "worker {worker}")?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                f.write_str(" exited before answering")?;
                if let Some(s) = status {
                    write!(f, ": {s}")?;
                }
                if let Some(last) = crate::stderr::last_meaningful(stderr) {
                    write!(f, "; its stderr ended with: {last}")?;
                }
                Ok(())
            }
            JobError::TimedOut { phase, after } => match phase {
                TimeoutPhase::Queue => write!(f, "job waited in the queue longer than {after:?}"),
                TimeoutPhase::Run => write!(f, "job ran longer than {after:?}"),
            },
            JobError::UnknownRoute { route } => write!(
                f,
                "no handler for route {route:?} in the worker: register its job type with \
                 Handlers::on in the handlers the worker serves"
            ),
            JobError::Codec { side, reason } => write!(f, "coding error in the {side}: {reason}"),
            JobError::Cancelled => f.write_str("job was cancelled"),
            JobError::Rejected { reason } => write!(f, "job was rejected: {reason}"),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for JobError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<E: fmt::Debug> std::error::Error for JobError<E> {}

/// Which of a job's deadlines passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimeoutPhase {
    /// It waited in the queue past its queue-wait deadline and never ran.
    Queue,
    /// It ran past its run timeout, counted from dispatch to a worker.
    Run,
}

/// An outcome that is not the handler's own result, without the job's
/// types: what the pool's plumbing carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Failure {
    Panicked(String),
    WorkerExited {
        worker: usize,
        pid: Option<u32>,
        status: Option<String>,
        stderr: Vec<String>,
    },
    TimedOut(TimeoutPhase, Duration),
    UnknownRoute(String),
    Codec(Side, String),
    Cancelled,
    Rejected(String),
}

impl Failure {
    pub(crate) fn into_job_error<E>(self) -> JobError<E> {
        match self {
            Failure::Panicked(message) => JobError::Panicked { message },
            Failure::WorkerExited {
                worker,
                pid,
                status,
                stderr,
            } => JobError::WorkerExited {
                worker,
                pid,
                status,
                stderr,
            },
            Failure::TimedOut(phase, after) => JobError::TimedOut { phase, after },
            Failure::UnknownRoute(route) => JobError::UnknownRoute { route },
            Failure::Codec(side, reason) => JobError::Codec { side, reason },
            Failure::Cancelled => JobError::Cancelled,
            Failure::Rejected(reason) => JobError::Rejected { reason },
        }
    }
}

/// A handler with its job types erased, callable with a Rust value (thread
/// workers) or with postcard bytes (process workers).
trait Erased: Send + Sync {
    /// Runs a job given as `Box<J>`; returns `Box<Result<J::Output, J::Error>>`.
    fn call_value(&self, job: Box<dyn Any + Send>, cx: &Context) -> Result<Box<dyn Any + Send>, Failure>;
    /// Runs a job given as postcard bytes; returns the postcard bytes of
    /// `Result<J::Output, J::Error>`.
    fn call_bytes(&self, job: &[u8], cx: &Context) -> Result<Vec<u8>, Failure>;
    /// Runs a chunk given as `Box<Vec<J>>`; returns
    /// `Box<(nanos, Vec<Result<Result<J::Output, J::Error>, Failure>>)>`.
    /// Also returns how many of the chunk's jobs failed.
    fn call_batch_value(
        &self,
        jobs: Box<dyn Any + Send>,
        cx: &Context,
    ) -> Result<(Box<dyn Any + Send>, u32), Failure>;
    /// Runs a chunk of `count` jobs, each a `u32` little-endian length and
    /// that many postcard bytes; returns the postcard bytes of
    /// `(nanos, Vec<BatchItem>)`. Each job fails or succeeds alone.
    /// Also returns how many of the chunk's jobs failed.
    fn call_batch_bytes(&self, jobs: &[u8], count: usize, cx: &Context) -> Result<(Vec<u8>, u32), Failure>;
    /// The job type's full name, to tell two registrations apart.
    fn job_type(&self) -> &'static str;
    /// The route's entry in the table a worker announces.
    fn info(&self) -> RouteInfo;
}

/// One route as a worker announces it at start: its name and the shape
/// of its types. The supervisor compares it with its own, so a worker
/// built from other code fails at spawn, not at its first decode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RouteInfo {
    pub(crate) name: String,
    /// `Job -> Result<Output, Error>` with module paths left out (a type's
    /// path differs between two binaries that include the same file).
    pub(crate) types: String,
    /// FNV-1a of `types`.
    pub(crate) fingerprint: u64,
}

impl RouteInfo {
    pub(crate) fn of<J: Job>() -> RouteInfo {
        use std::any::type_name;
        let types = format!(
            "{} -> Result<{}, {}>",
            short_type_name(type_name::<J>()),
            short_type_name(type_name::<J::Output>()),
            short_type_name(type_name::<J::Error>())
        );
        RouteInfo {
            name: J::NAME.to_string(),
            fingerprint: fnv1a(types.as_bytes()),
            types,
        }
    }
}

/// `alloc::vec::Vec<my::Item>` → `Vec<Item>`: every path prefix dropped.
pub(crate) fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            segment.push(c);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            segment.clear();
        } else {
            out.push_str(&segment);
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(&segment);
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One job's outcome inside a chunk's answer: the postcard bytes of its
/// `Result<J::Output, J::Error>`, or why it has none.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum BatchItem<'a> {
    Ran(#[serde(borrow, with = "serde_bytes")] &'a [u8]),
    Failed(Failure),
}

/// The typed results of a chunk run in this process.
pub(crate) type BatchValue<J> = (
    u64,
    Vec<Result<Result<<J as Job>::Output, <J as Job>::Error>, Failure>>,
);

/// Splits the next length-prefixed job off a chunk's bytes.
fn next_job(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let job = bytes.get(4..4 + len)?;
    Some((job, &bytes[4 + len..]))
}

struct Typed<J: Job, F> {
    f: F,
    _job: std::marker::PhantomData<fn(J)>,
}

/// Runs `f`, turning a panic into [`Failure::Panicked`] with its message.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Failure> {
    crate::util::catch_panic(f).map_err(Failure::Panicked)
}

impl<J, F> Erased for Typed<J, F>
where
    J: Job,
    F: Fn(J, &Context) -> Result<J::Output, J::Error> + Send + Sync + 'static,
{
    fn job_type(&self) -> &'static str {
        std::any::type_name::<J>()
    }

    fn info(&self) -> RouteInfo {
        RouteInfo::of::<J>()
    }

    fn call_value(&self, job: Box<dyn Any + Send>, cx: &Context) -> Result<Box<dyn Any + Send>, Failure> {
        let job = job.downcast::<J>().map_err(|_| {
            Failure::Codec(
                Side::Worker,
                format!(
                    "job for route {:?} is not a {}",
                    J::NAME,
                    std::any::type_name::<J>()
                ),
            )
        })?;
        let out = catch(|| (self.f)(*job, cx))?;
        Ok(Box::new(out))
    }

    fn call_bytes(&self, job: &[u8], cx: &Context) -> Result<Vec<u8>, Failure> {
        let job = Self::decode(job)?;
        let out = catch(|| (self.f)(job, cx))?;
        // Encoding runs user Serialize impls, which may panic too.
        catch(|| postcard::to_allocvec(&out))?.map_err(|e| Self::encode_failure(&out, &e))
    }

    fn call_batch_value(
        &self,
        jobs: Box<dyn Any + Send>,
        cx: &Context,
    ) -> Result<(Box<dyn Any + Send>, u32), Failure> {
        let jobs = jobs.downcast::<Vec<J>>().map_err(|_| {
            Failure::Codec(
                Side::Worker,
                format!(
                    "chunk for route {:?} is not a Vec<{}>",
                    J::NAME,
                    std::any::type_name::<J>()
                ),
            )
        })?;
        let start = std::time::Instant::now();
        let out: Vec<_> = jobs.into_iter().map(|job| catch(|| (self.f)(job, cx))).collect();
        let failed = out.iter().filter(|r| r.is_err()).count() as u32;
        let value: BatchValue<J> = (start.elapsed().as_nanos() as u64, out);
        Ok((Box::new(value), failed))
    }

    fn call_batch_bytes(
        &self,
        mut jobs: &[u8],
        count: usize,
        cx: &Context,
    ) -> Result<(Vec<u8>, u32), Failure> {
        let start = std::time::Instant::now();
        // Every result's bytes go into one buffer; items point into it.
        let mut scratch = Vec::new();
        // `count` comes off the wire: trust it only as far as the bytes go
        // (every job takes at least its 4-byte length).
        let mut spans: Vec<Result<std::ops::Range<usize>, Failure>> =
            Vec::with_capacity(count.min(jobs.len() / 4 + 1));
        for _ in 0..count {
            let Some((job, rest)) = next_job(jobs) else {
                spans.push(Err(Failure::Codec(
                    Side::Worker,
                    "chunk ended before its last job".into(),
                )));
                continue;
            };
            jobs = rest;
            let span = Self::decode(job)
                .and_then(|job| catch(|| (self.f)(job, cx)))
                .and_then(|out| {
                    // Appended in place; a failure (or a panic) partway
                    // leaves partial bytes, which are cut off, so every
                    // span keeps pointing at its own result.
                    let from = scratch.len();
                    let res = catch(|| crate::port::encode_into(&out, &mut scratch));
                    match res {
                        Ok(Ok(())) => Ok(from..scratch.len()),
                        Ok(Err(e)) => {
                            scratch.truncate(from);
                            Err(Self::encode_failure(&out, &e))
                        }
                        Err(f) => {
                            scratch.truncate(from);
                            Err(f)
                        }
                    }
                });
            spans.push(span);
        }
        let failed = spans.iter().filter(|s| s.is_err()).count() as u32;
        let items: Vec<BatchItem<'_>> = spans
            .into_iter()
            .map(|s| match s {
                Ok(r) => BatchItem::Ran(&scratch[r]),
                Err(f) => BatchItem::Failed(f),
            })
            .collect();
        postcard::to_allocvec(&(start.elapsed().as_nanos() as u64, items))
            .map(|bytes| (bytes, failed))
            .map_err(|e| Failure::Codec(Side::Worker, format!("could not encode a chunk's results: {e}")))
    }
}

impl<J, F> Typed<J, F>
where
    J: Job,
    F: Fn(J, &Context) -> Result<J::Output, J::Error> + Send + Sync + 'static,
{
    #[inline]
    fn decode(job: &[u8]) -> Result<J, Failure> {
        postcard::from_bytes(job).map_err(Self::decode_failure)
    }

    #[cold]
    #[inline(never)]
    fn decode_failure(e: postcard::Error) -> Failure {
        Failure::Codec(
            Side::Worker,
            format!(
                "the worker could not decode a `{}` job: {}",
                J::NAME,
                crate::codec::decode_failure::<J>(&e)
            ),
        )
    }

    #[cold]
    #[inline(never)]
    fn encode_failure(out: &Result<J::Output, J::Error>, e: &postcard::Error) -> Failure {
        let what = match out {
            Ok(v) => crate::codec::encode_failure(v, e),
            Err(v) => crate::codec::encode_failure(v, e),
        };
        Failure::Codec(
            Side::Worker,
            format!(
                "the worker could not send the result of a `{}` job: {what}",
                J::NAME
            ),
        )
    }
}

/// The registry of handlers: route name → function.
///
/// ```
/// # use portpool_runtime::job::{Handlers, Job};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Square(u64);
/// # impl Job for Square { type Output = u64; type Error = String; const NAME: &'static str = "square"; }
/// let handlers = Handlers::new().on::<Square>(|Square(n), _cx| Ok(n * n));
/// assert!(handlers.routes().any(|r| r == "square"));
/// ```
#[derive(Clone, Default)]
#[must_use = "handlers do nothing until given to a pool or a worker"]
pub struct Handlers {
    map: Arc<HashMap<&'static str, Arc<dyn Erased>>>,
    /// Routes registered for two different job types (refused at build).
    conflicts: Arc<Vec<String>>,
    suspend: Arc<Vec<Hook>>,
    resume: Arc<Vec<Hook>>,
}

use crate::util::Hook;

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl Handlers {
    /// An empty registry.
    pub fn new() -> Handlers {
        Handlers::default()
    }

    /// Registers `f` as the handler of `J`'s route (replacing an earlier
    /// handler of the same type `J`).
    ///
    /// Two different job types with the same [`Job::NAME`] cannot share a
    /// registry: a job of one would run the other's handler. Such a
    /// registry is refused when a pool (or a worker) is built with it, with
    /// an error that names both types.
    pub fn on<J: Job>(
        mut self,
        f: impl Fn(J, &Context) -> Result<J::Output, J::Error> + Send + Sync + 'static,
    ) -> Handlers {
        let entry: Arc<dyn Erased> = Arc::new(Typed::<J, _> {
            f,
            _job: std::marker::PhantomData,
        });
        if let Some(old) = self.map.get(J::NAME) {
            if old.job_type() != entry.job_type() {
                Arc::make_mut(&mut self.conflicts).push(format!(
                    "route {:?} is registered for two job types, `{}` and `{}`: give each a NAME of its own",
                    J::NAME,
                    old.job_type(),
                    entry.job_type()
                ));
                return self;
            }
        }
        Arc::make_mut(&mut self.map).insert(J::NAME, entry);
        self
    }

    /// Fails, saying which, if two job types were registered under one
    /// route name (pools and workers refuse such a registry).
    pub fn check(&self) -> Result<(), String> {
        match self.conflicts.first() {
            Some(c) => Err(c.clone()),
            None => Ok(()),
        }
    }

    /// The routes, as a worker announces them (sorted by name).
    pub(crate) fn route_table(&self) -> Vec<RouteInfo> {
        let mut t: Vec<RouteInfo> = self.map.values().map(|h| h.info()).collect();
        t.sort_by(|a, b| a.name.cmp(&b.name));
        t
    }

    /// Registers a hook that runs when the pool is suspended
    /// ([`Runtime::suspend`](crate::runtime::Runtime::suspend)): in each
    /// process worker, between jobs; for a thread pool, once, in the
    /// thread that suspends. Hooks run in registration order.
    pub fn on_suspend(mut self, f: impl Fn() + Send + Sync + 'static) -> Handlers {
        Arc::make_mut(&mut self.suspend).push(Arc::new(f));
        self
    }

    /// Registers a hook that runs when the pool resumes (see
    /// [`on_suspend`](Self::on_suspend)).
    pub fn on_resume(mut self, f: impl Fn() + Send + Sync + 'static) -> Handlers {
        Arc::make_mut(&mut self.resume).push(Arc::new(f));
        self
    }

    /// Runs the suspend hooks (`true`) or the resume hooks (`false`).
    pub(crate) fn run_hooks(&self, suspend: bool) {
        if suspend {
            crate::util::run_hooks(&self.suspend, "suspend");
        } else {
            crate::util::run_hooks(&self.resume, "resume");
        }
    }

    /// The registered route names.
    pub fn routes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.map.keys().copied()
    }

    /// Runs a job given as a Rust value (thread workers).
    pub(crate) fn call_value(
        &self,
        route: &str,
        job: Box<dyn Any + Send>,
        cx: &Context,
    ) -> Result<Box<dyn Any + Send>, Failure> {
        match self.map.get(route) {
            Some(h) => h.call_value(job, cx),
            None => Err(Failure::UnknownRoute(route.to_string())),
        }
    }

    /// Runs a chunk given as `Box<Vec<J>>` (thread workers).
    pub(crate) fn call_batch_value(
        &self,
        route: &str,
        jobs: Box<dyn Any + Send>,
        cx: &Context,
    ) -> Result<(Box<dyn Any + Send>, u32), Failure> {
        match self.map.get(route) {
            Some(h) => h.call_batch_value(jobs, cx),
            None => Err(Failure::UnknownRoute(route.to_string())),
        }
    }

    /// Runs a chunk of `count` length-prefixed jobs (process workers).
    pub(crate) fn call_batch_bytes(
        &self,
        route: &str,
        jobs: &[u8],
        count: usize,
        cx: &Context,
    ) -> Result<(Vec<u8>, u32), Failure> {
        match self.map.get(route) {
            Some(h) => h.call_batch_bytes(jobs, count, cx),
            None => Err(Failure::UnknownRoute(route.to_string())),
        }
    }

    /// Runs a job given as postcard bytes (process workers).
    pub(crate) fn call_bytes(&self, route: &str, job: &[u8], cx: &Context) -> Result<Vec<u8>, Failure> {
        match self.map.get(route) {
            Some(h) => h.call_bytes(job, cx),
            None => Err(Failure::UnknownRoute(route.to_string())),
        }
    }
}
