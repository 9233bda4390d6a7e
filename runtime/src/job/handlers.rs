//! [`Handlers`]: the registry of handlers, route name to function, erased
//! so a handler can be called with a Rust value (thread workers), with
//! postcard bytes (process workers), or with a chunk of either.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use super::{Context, Job};
use crate::task::{Failure, Side};

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
    /// A route a worker in another language serves: its name only (its
    /// types are its own business; a job it cannot read fails alone).
    pub(crate) fn untyped(name: String) -> RouteInfo {
        RouteInfo {
            name,
            types: "(any JSON)".into(),
            fingerprint: 0,
        }
    }

    /// Whether `self` (a worker's announcement) disagrees with `mine` on
    /// the route's types. A worker in another language announces none,
    /// and so never disagrees.
    pub(crate) fn types_differ(&self, mine: &RouteInfo) -> bool {
        self.fingerprint != 0 && self.fingerprint != mine.fingerprint
    }

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

/// The typed results of a chunk run in this process: how long it ran
/// (ns), each job's result in order (`None` where its handler panicked),
/// and those panics, one per `None`, in order.
pub(crate) struct BatchValue<J: Job> {
    pub(crate) nanos: u64,
    pub(crate) results: Vec<Option<Result<J::Output, J::Error>>>,
    pub(crate) panics: Vec<Failure>,
}

/// Splits the next length-prefixed job off a chunk's bytes (the layout
/// `pool::encode_chunk` writes).
pub(crate) fn next_job(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    // The length: LEB128, at most 5 bytes, no more than 32 bits.
    let mut len: u32 = 0;
    for (i, &b) in bytes.iter().take(5).enumerate() {
        if i == 4 && b > 0x0f {
            return None;
        }
        len |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let start = i + 1;
            let end = start.checked_add(len as usize)?;
            let job = bytes.get(start..end)?;
            return Some((job, &bytes[end..]));
        }
    }
    None
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
        // The handler's own encodes and decodes (progress, its own ports)
        // are not the job's: its buffers' files stay out of them.
        let out = crate::port::outside_buffers(|| catch(|| (self.f)(job, cx)))?;
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
        let mut jobs = jobs.into_iter();
        let mut results = Vec::with_capacity(jobs.len());
        let mut panics = Vec::new();
        // One catch for the run of jobs up to a panic, not one per job (it
        // kept the handler from being inlined into the loop): a panic is
        // recorded in its place, and the loop goes on after it.
        // `extend` of an exact-size iterator writes without a capacity
        // check per job, and keeps the results written before a panic.
        while let Err(f) = catch(|| results.extend(jobs.by_ref().map(|job| Some((self.f)(job, cx))))) {
            panics.push(f);
            results.push(None);
        }
        // A handler's own error is a finished job (`Stats::done`); only
        // the panics failed.
        let failed = u32::try_from(panics.len()).unwrap_or(u32::MAX);
        let value = BatchValue::<J> {
            nanos: u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            results,
            panics,
        };
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
        // (every job takes at least its 1-byte length).
        let mut spans: Vec<Result<std::ops::Range<usize>, Failure>> =
            Vec::with_capacity(count.min(jobs.len() + 1));
        for _ in 0..count {
            let Some((job, rest)) = next_job(jobs) else {
                // `count` came off the wire: fewer results than it says
                // make the supervisor fail the chunk; no loop runs on to
                // a count the bytes do not back.
                spans.push(Err(Failure::Codec(
                    Side::Worker,
                    "chunk ended before its last job".into(),
                )));
                break;
            };
            jobs = rest;
            // The handler's own encodes and decodes are not the chunk's
            // (as in `call_bytes`).
            let span = Self::decode(job)
                .and_then(|job| crate::port::outside_buffers(|| catch(|| (self.f)(job, cx))))
                .and_then(|out| {
                    // Appended in place; a failure (or a panic) partway
                    // leaves partial bytes, which are cut off, so every
                    // span keeps pointing at its own result (and the
                    // files of its buffers, so none is sent for nothing).
                    let from = scratch.len();
                    let files = crate::port::buffers_collected();
                    let res = catch(|| crate::port::encode_into(&out, &mut scratch));
                    let res = match res {
                        Ok(Ok(()))
                            if crate::port::buffers_collected() > crate::transport::MAX_FDS_PER_FRAME =>
                        {
                            Err(Failure::Codec(
                                Side::Worker,
                                format!(
                                    "its result's buffers take its chunk's results past the {} buffers one \
                                     answer carries (a map makes its chunks smaller once it sees \
                                     results with buffers; return fewer per job)",
                                    crate::transport::MAX_FDS_PER_FRAME
                                ),
                            ))
                        }
                        Ok(Ok(())) => return Ok(from..scratch.len()),
                        Ok(Err(e)) => Err(Self::encode_failure(&out, &e)),
                        Err(f) => Err(f),
                    };
                    scratch.truncate(from);
                    crate::port::uncollect_buffers(files);
                    res
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
/// # extern crate portpool_runtime as portpool;
/// # use portpool::job::{Handlers, Job};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Square(u64);
/// # impl Job for Square { type Output = u64; type Error = String; const NAME: &'static str = "square"; }
/// let handlers = Handlers::new().on::<Square>(|Square(n), _cx| Ok(n * n));
/// assert!(handlers.routes().any(|r| r == "square"));
/// ```
#[derive(Clone, Default)]
#[must_use = "handlers do nothing until given to a pool or a worker"]
pub struct Handlers {
    map: Arc<HashMap<&'static str, Arc<dyn Erased>, BuildHasherDefault<RouteHasher>>>,
    /// Routes registered for two different job types (refused at build).
    conflicts: Arc<Vec<String>>,
    suspend: Arc<Vec<Hook>>,
    resume: Arc<Vec<Hook>>,
}

use crate::util::Hook;

/// FNV-1a over a route name. Every job looks its handler up by name; the
/// default SipHash cost a tiny thread job more than the rest of the
/// lookup. The table is fixed by the program's own `on` calls, so a
/// peer's names cannot make it degrade.
#[derive(Default)]
struct RouteHasher(u64);

impl std::hash::Hasher for RouteHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

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
    pub(crate) fn run_suspend_hooks(&self, suspend: bool) {
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

#[cfg(test)]
mod tests {
    use super::next_job;

    /// A peer's bytes: whatever they are, splitting ends with a job or
    /// `None`, never a panic, and never reads past the input.
    #[test]
    fn malformed_lengths_are_refused() {
        for bad in [
            &[][..],
            &[0x80][..],
            &[0xff, 0xff, 0xff, 0xff, 0x1f][..],    // past 32 bits
            &[0xff, 0xff, 0xff, 0xff, 0x8f, 0][..], // a sixth length byte
            &[5, 1, 2][..],                         // shorter than it says
            &[0x80, 0x01][..],                      // 128, with no bytes
        ] {
            assert!(next_job(bad).is_none(), "{bad:?}");
        }
        assert_eq!(next_job(&[0]), Some((&[][..], &[][..])));
        assert_eq!(next_job(&[2, 7, 8, 9]), Some((&[7, 8][..], &[9][..])));
    }
}
