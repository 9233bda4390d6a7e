//! `Pool::map` and `Pool::map_unordered`: lazy, bounded, chunked fan-out
//! (`Pool::submit_chunk`, which queues one chunk, is in `submit.rs`).
//!
//! Jobs go to the workers in chunks (one task, one frame, one answer per
//! chunk). The chunk size adapts to what the workers report: it starts at
//! one job and doubles while a chunk runs in well under [`CHUNK_TARGET`],
//! and halves when a chunk runs much longer, so tiny jobs are amortised
//! and slow jobs still spread evenly across workers.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::iter::Fuse;
use std::time::Duration;

use std::sync::Arc;

use std::sync::atomic::Ordering;

use super::ticket::JobResult;
use super::{Backend, CancelToken, Event, Pool, Reply};
use crate::job::{Failure, Job, JobError};
use crate::util::lock;

mod results;
mod submit;

use crate::supervisor::monitor::Control;
use crate::task::JobState;
use results::{Chunk, fill_holes, typed_chunk};

/// How long one chunk should take to run on a worker.
const CHUNK_TARGET: Duration = Duration::from_millis(1);

/// Largest chunk, in jobs, for process workers (whose chunks also stop at
/// `CHUNK_BYTES`).
const MAX_CHUNK: usize = 8192;

/// Largest chunk for thread workers: more jobs (a chunk costs a wake-up
/// and a hand-off each way, which 8192 jobs of a nanosecond do not
/// amortise), but at most about 4 MiB of jobs held at once.
fn max_thread_chunk<J>() -> usize {
    (4 << 20) / std::mem::size_of::<J>().max(1)
}

/// The iterator returned by [`Pool::map`] and [`Pool::map_unordered`].
///
/// It pulls jobs from its input only while fewer than a window of chunks
/// (a few per worker) are between submission and being yielded, so memory
/// stays bounded even with an endless input or a slow first job.
///
/// No job runs until the iterator is consumed, and the compiler says so
/// when it is not (`#[must_use]`):
///
/// ```
/// # extern crate portpool_runtime as portpool;
/// # use portpool::{job::{Handlers, Job}, pool::Pool};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Square(u64);
/// # impl Job for Square { type Output = u64; type Error = String; const NAME: &'static str = "square"; }
/// #[deny(unused_must_use)]
/// fn run(pool: &Pool) -> u64 {
///     pool.map((0..10).map(Square)).map(|r| r.unwrap()).sum()
/// }
/// # let pool = Pool::builder().threads(1).handlers(Handlers::new().on::<Square>(|Square(n), _| Ok(n * n))).build().unwrap();
/// # assert_eq!(run(&pool), 285);
/// ```
///
/// ```compile_fail
/// # extern crate portpool_runtime as portpool;
/// # use portpool::{job::{Handlers, Job}, pool::Pool};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Square(u64);
/// # impl Job for Square { type Output = u64; type Error = String; const NAME: &'static str = "square"; }
/// #[deny(unused_must_use)]
/// fn run(pool: &Pool) {
///     pool.map((0..10).map(Square)); // error: unused `Map` that must be used
/// }
/// ```
#[must_use = "a map runs no job until it is iterated (a `for` loop, `.collect()`, ...)"]
pub struct Map<'p, J: Job, I: Iterator<Item = J>> {
    pool: &'p Pool,
    input: Fuse<I>,
    window: usize,
    ordered: bool,
    pub(super) reply: Reply,
    pub(super) inbox: crate::task::Inbox,
    /// Jobs in the next chunk.
    chunk: usize,
    /// Tag of the next chunk to submit.
    next_tag: u64,
    /// Tag of the next chunk to yield (ordered only).
    next_yield: u64,
    /// Every chunk submitted and not yet answered, by tag.
    in_flight: HashMap<u64, InFlight>,
    /// Answered chunks waiting for their turn (ordered only).
    early: HashMap<u64, Chunk<J>>,
    /// The thread worker's chunk being yielded now, if that is what it
    /// is (before `front` and `ready`): a result is then one step here.
    values: std::vec::IntoIter<Option<Result<J::Output, J::Error>>>,
    /// The panics of `values`' `None`s, in order.
    panics: std::vec::IntoIter<Failure>,
    /// Any other answered chunk being yielded now (before `ready`; only
    /// while `values` is spent).
    front: Chunk<J>,
    /// Answered chunks ready to yield after `front`, in order (none of
    /// them empty).
    ready: VecDeque<Chunk<J>>,
    /// Jobs taken from the input that did not fit in the last chunk's
    /// bytes: they go first in the next one.
    leftover: VecDeque<J>,
    /// Set once the pool refused a chunk: the rest fail at once, with this.
    closed: Option<Failure>,
    /// Largest chunk: 1 when each job has its own run timeout.
    max_chunk: usize,
    /// Cancels every job of this map when cancelled.
    token: Option<CancelToken>,
    /// Whether an answer has resized the chunks (then the pool remembers
    /// the size for the route's next map).
    adapted: bool,
}

impl<J: Job, I: Iterator<Item = J>> fmt::Debug for Map<'_, J, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("route", &J::NAME)
            .field("chunk", &self.chunk)
            .field("chunks_in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

/// A chunk on its way: how many jobs it has, and those that failed before
/// they could go to a worker (by index in the chunk).
struct InFlight {
    len: usize,
    holes: Vec<(usize, Failure)>,
    /// The queued chunk's id and state, to cancel it if the map is dropped.
    task: Option<(u64, Arc<JobState>)>,
}

impl<'p, J: Job, I: Iterator<Item = J>> Map<'p, J, I> {
    pub(crate) fn new(pool: &'p Pool, input: I, window: usize, ordered: bool) -> Self {
        let (inbox, reply) = crate::task::Inbox::new();
        let mut map = Map {
            pool,
            input: input.fuse(),
            window: window.max(1),
            ordered,
            reply,
            inbox,
            chunk: 1,
            adapted: false,
            next_tag: 0,
            next_yield: 0,
            in_flight: HashMap::new(),
            early: HashMap::new(),
            values: Vec::new().into_iter(),
            panics: Vec::new().into_iter(),
            front: Chunk::Results(Vec::new().into_iter()),
            ready: VecDeque::new(),
            leftover: VecDeque::new(),
            closed: None,
            max_chunk: if pool.times_out::<J>() {
                1
            } else if matches!(pool.inner.backend, Backend::Threads(_)) {
                // 16384: in three alternating runs each, map_unordered of
                // 1M tiny jobs ran at 18.7 times the raw pool's rate
                // against 13.6 with 65536 (map_tiny: 0.34 vs 0.47, noisy).
                max_thread_chunk::<J>().clamp(1, 1 << 14)
            } else {
                MAX_CHUNK
            },
            token: None,
        };
        // The size the route's last map ended with, but never more than a
        // share of this input that leaves a chunk for every worker: the
        // same job type may cost far more this time (an input of unknown
        // size starts at one job, as the first map does).
        let share = map.input.size_hint().0 / (2 * pool.workers().max(1));
        if let Some(&hint) = lock(&pool.inner.chunk_hints).get(J::NAME) {
            map.chunk = hint.min(share).clamp(1, map.max_chunk);
        }
        map
    }

    /// Cancels every job of this map when `token` is cancelled: the jobs
    /// queued or running end with `Cancelled` (yielded in their places),
    /// and nothing more is taken from the input (which may be endless):
    /// the map ends after the jobs it had taken. A token cancelled before
    /// the map takes its first input makes a map that yields nothing: zip
    /// its results with the inputs only if an early end is expected, or
    /// look at [`CancelToken::is_cancelled`] after. It may be given at any point: the
    /// chunks already on their way carry it from then on (replacing an
    /// earlier token for the chunks still to come).
    pub fn cancel_token(mut self, token: &CancelToken) -> Self {
        let control = &self.pool.inner.core.control;
        for (&tag, f) in &self.in_flight {
            if let Some((id, state)) = &f.task {
                let reply = self.reply.with_tag(tag);
                if let Err(c) = token.carry(*id, state, &reply, control) {
                    // Already cancelled: as if it had been given before.
                    c.cancel();
                }
            }
        }
        self.token = Some(token.clone());
        self
    }

    /// Submits chunks from the input while the window has room.
    fn top_up(&mut self) {
        while self.in_flight.len() + self.early.len() < self.window {
            // A cancelled map takes nothing more from its input (which may
            // be endless): it ends once what it took is accounted for.
            if self.token.as_ref().is_some_and(CancelToken::is_cancelled) && self.leftover.is_empty() {
                return;
            }
            let from_leftover = self.leftover.len().min(self.chunk);
            let mut jobs: Vec<J> = self.leftover.drain(..from_leftover).collect();
            jobs.extend(self.input.by_ref().take(self.chunk - from_leftover));
            if jobs.is_empty() {
                return;
            }
            let tag = self.next_tag;
            self.next_tag += 1;
            let reply = self.reply.with_tag(tag);
            let taken = jobs.len();
            let mut len = taken;
            if self.closed.is_none() && self.token.as_ref().is_some_and(CancelToken::is_cancelled) {
                self.closed = Some(Failure::Cancelled);
            }
            if matches!(self.closed, Some(Failure::Cancelled)) {
                // Taken before the token was seen cancelled (the leftover of
                // a chunk): never queued, but counted like any cancelled job.
                let core = &self.pool.inner.core;
                // Relaxed: statistics only.
                core.cancelled.fetch_add(taken as u64, Ordering::Relaxed);
                core.failed_elsewhere.fetch_add(taken as u64, Ordering::Relaxed);
            }
            let mut task = None;
            let holes = if let Some(f) = &self.closed {
                (0..len).map(|i| (i, f.clone())).collect()
            } else {
                match self.pool.submit_chunk(jobs, reply.clone(), self.token.as_ref()) {
                    Ok(sent) => {
                        task = sent.task;
                        if !sent.rest.is_empty() {
                            // The chunk hit its byte budget: smaller ones next.
                            len -= sent.rest.len();
                            self.chunk = len.max(1);
                            for j in sent.rest.into_iter().rev() {
                                self.leftover.push_front(j);
                            }
                        }
                        sent.holes
                    }
                    Err((_, why)) => {
                        // Every job taken gets its failure, whatever came back.
                        let f = why.failure();
                        len = taken;
                        let holes = (0..len).map(|i| (i, f.clone())).collect();
                        self.closed = Some(f);
                        holes
                    }
                }
            };
            if holes.len() < len {
                self.in_flight.insert(tag, InFlight { len, holes, task });
                continue;
            }
            // Every job failed before it could go: its results are here.
            self.file(
                tag,
                fill_holes::<J>(Chunk::Results(Vec::new().into_iter()), holes),
            );
            if !self.ready.is_empty() {
                return; // yielded before more is pulled (an endless input stays bounded)
            }
        }
    }

    /// Puts a chunk's results where `next` yields them: now, or (ordered)
    /// once the chunks before it have been yielded.
    fn file(&mut self, tag: u64, results: Chunk<J>) {
        if self.ordered && tag != self.next_yield {
            self.early.insert(tag, results);
        } else {
            self.next_yield += 1;
            self.ready_push(results);
        }
    }

    fn ready_push(&mut self, results: Chunk<J>) {
        if !results.is_empty() {
            self.ready.push_back(results);
        }
    }

    /// The next result ready to yield, if any: the common case, a step
    /// in a thread worker's chunk, small enough to inline into the
    /// caller's loop.
    #[inline(always)]
    fn pop_ready(&mut self) -> Option<JobResult<J>> {
        match self.values.next() {
            Some(Some(r)) => Some(r.map_err(JobError::Handler)),
            Some(None) => Some(Err(self.next_panic())),
            None => self.pop_ready_next_chunk(),
        }
    }

    /// [`next`](Iterator::next) past its common case: `panicked`, the
    /// result just taken from `values` is a panic's.
    #[inline(never)]
    fn next_slow(&mut self, panicked: bool) -> Option<JobResult<J>> {
        if panicked {
            return Some(Err(self.next_panic()));
        }
        if let Some(r) = self.pop_ready_next_chunk() {
            return Some(r);
        }
        match self.advance(true) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => None, // not when blocking
        }
    }

    /// The panic of a `None` in `values`.
    #[cold]
    #[inline(never)]
    fn next_panic(&mut self) -> JobError<J::Error> {
        self.panics
            .next()
            .unwrap_or_else(|| Failure::Panicked("(no message)".into()))
            .into_job_error()
    }

    /// `values` is spent: the next result of `front`, or of the next
    /// ready chunk, which becomes `values` or `front`.
    #[inline(never)]
    fn pop_ready_next_chunk(&mut self) -> Option<JobResult<J>> {
        loop {
            if let Some(r) = self.front.next() {
                return Some(r);
            }
            match self.ready.pop_front()? {
                Chunk::Values { results, panics } => {
                    self.values = results;
                    self.panics = panics;
                    if let Some(r) = self.pop_ready() {
                        return Some(r);
                    }
                }
                other => self.front = other,
            }
        }
    }

    /// Keeps chunks whose results came with `files` buffer files (for `len`
    /// jobs) at half the files one answer carries, so a chunk's results
    /// do not outgrow their frame when some return more.
    fn fit_buffers(&mut self, files: usize, len: usize) {
        let per_job = files.div_ceil(len.max(1)).max(1);
        self.max_chunk = self
            .max_chunk
            .min((crate::transport::MAX_FDS_PER_FRAME / 2 / per_job).max(1));
        self.chunk = self.chunk.min(self.max_chunk);
    }

    /// Adapts the chunk size to how long the last chunk ran.
    fn adapt(&mut self, ran: Duration, len: usize) {
        if len < self.chunk {
            return; // a short final chunk says little
        }
        self.adapted = true;
        if ran < CHUNK_TARGET / 2 {
            self.chunk = (self.chunk * 2).min(self.max_chunk);
        } else if ran > CHUNK_TARGET * 4 {
            self.chunk = (self.chunk / 2).max(1);
        }
    }
}

impl<J: Job, I: Iterator<Item = J>> Map<'_, J, I> {
    /// The next result: waits for one (`block`), or says `Pending` when
    /// none is in yet.
    pub(super) fn advance(&mut self, block: bool) -> std::task::Poll<Option<JobResult<J>>> {
        use std::task::Poll;
        loop {
            if let Some(r) = self.pop_ready() {
                return Poll::Ready(Some(r));
            }
            self.top_up();
            if !self.ready.is_empty() {
                continue; // a chunk whose every job failed before it could go
            }
            if self.ordered {
                if let Some(results) = self.early.remove(&self.next_yield) {
                    self.next_yield += 1;
                    self.ready_push(results);
                    continue;
                }
            }
            if self.in_flight.is_empty() {
                return Poll::Ready(None);
            }
            // The map holds a sender itself, so this only ends with an event.
            let got = if block {
                self.inbox.recv_spin(None).ok()
            } else {
                self.inbox.try_recv().ok()
            };
            let Some((tag, event)) = got else {
                return if block { Poll::Ready(None) } else { Poll::Pending };
            };
            let outcome = match event {
                Event::Done(outcome) => outcome,
                Event::Progress(_) => continue,
            };
            let Some(InFlight { len, holes, .. }) = self.in_flight.remove(&tag) else {
                continue;
            };
            let files = match &outcome {
                crate::task::Outcome::BytesFds(_, fds) => fds.len(),
                _ => 0,
            };
            let (ran, results) = typed_chunk::<J>(outcome, len - holes.len());
            if let Some(ran) = ran {
                self.adapt(ran, len);
            }
            if files > 0 {
                self.fit_buffers(files, len);
            }
            self.file(tag, fill_holes::<J>(results, holes));
        }
    }
}

// A map never hands out pinned references to its fields (jobs and
// results are plain values it moves), so it may move while polled.
impl<J: Job, I: Iterator<Item = J>> Unpin for Map<'_, J, I> {}

impl<J: Job, I: Iterator<Item = J>> Iterator for Map<'_, J, I> {
    type Item = JobResult<J>;

    #[inline(always)]
    fn next(&mut self) -> Option<JobResult<J>> {
        // The common case, a thread worker's result, in a few
        // instructions the caller's loop inlines; the rest out of line.
        match self.values.next() {
            Some(Some(r)) => Some(r.map_err(JobError::Handler)),
            other => self.next_slow(other.is_some()),
        }
    }

    /// Every job taken and not yet yielded gives one result, and so does
    /// every job the input still holds (unless a cancel token may stop
    /// it): `collect` sizes its `Vec` once.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let taken = self.leftover.len()
            + self.in_flight.values().map(|f| f.len).sum::<usize>()
            + self.early.values().map(Chunk::len).sum::<usize>()
            + self.values.len()
            + self.front.len()
            + self.ready.iter().map(Chunk::len).sum::<usize>();
        let (mut lower, upper) = self.input.size_hint();
        if self.token.is_some() {
            lower = 0; // a cancel may stop the input here
        }
        (
            lower.saturating_add(taken),
            upper.and_then(|u| u.checked_add(taken)),
        )
    }
}

impl<J: Job, I: Iterator<Item = J>> Drop for Map<'_, J, I> {
    /// A map dropped before its end cancels the jobs it has not yielded
    /// (queued ones are dropped, running ones get the graded cancel), so
    /// `take(n)` or a `break` leaves no work behind.
    fn drop(&mut self) {
        self.inbox.wake_slot().clear();
        if self.adapted {
            lock(&self.pool.inner.chunk_hints).insert(J::NAME, self.chunk);
        }
        let control = &self.pool.inner.core.control;
        for f in self.in_flight.values() {
            if let Some((id, state)) = &f.task {
                state.cancel();
                if state.settle_by_cancel() {
                    let _ = control.send(Control::Cancel { id: *id });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::job::{Handlers, Job};
    use crate::pool::Pool;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Double(u64);
    impl Job for Double {
        type Output = u64;
        type Error = String;
        const NAME: &'static str = "double";
    }

    /// A route whose last map learned a big chunk of tiny jobs may be
    /// slow this time: a new map still starts with a chunk for each
    /// worker, and one over an input of unknown size at one job.
    #[test]
    fn a_learned_chunk_size_leaves_work_for_every_worker() {
        let pool = Pool::builder()
            .threads(2)
            .handlers(Handlers::new().on::<Double>(|Double(n), _| Ok(2 * n)))
            .build()
            .expect("pool");
        let sum: u64 = pool.map((0..200_000).map(Double)).map(|r| r.expect("job")).sum();
        assert_eq!(sum, 199_999 * 200_000);
        let learned = *crate::util::lock(&pool.inner.chunk_hints)
            .get("double")
            .expect("a hint");
        assert!(learned > 8, "the tiny jobs grew the chunks ({learned})");
        let m = pool.map((0..8).map(Double));
        assert_eq!(m.chunk, 8 / 4);
        drop(m);
        let m = pool.map(std::iter::from_fn(|| Some(Double(1))));
        assert_eq!(m.chunk, 1);
        drop(m);
        // A big input still starts at what was learned.
        let m = pool.map((0..u64::MAX).map(Double));
        assert_eq!(m.chunk, learned);
    }
}
