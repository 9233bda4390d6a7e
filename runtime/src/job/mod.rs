//! Typed jobs and the registry of handlers that run them.
//!
//! A [`Job`] is a serde type with an [`Output`](Job::Output), an
//! [`Error`](Job::Error) and a stable route name [`NAME`](Job::NAME).
//! [`Handlers`] maps route names to functions. The same `Handlers` run in
//! thread workers (jobs move as Rust values, never serialized) and in
//! process workers (jobs cross as postcard bytes).
//!
//! Not for: deciding where or when a job runs (the pool does that).

mod context;
mod error;
mod func;
mod handlers;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use crate::task::{Failure, JobState};
pub use crate::task::{Side, TimeoutPhase};
pub use context::Context;
pub(crate) use context::{CancelSource, ProgressSink, RemoteJob};
pub use error::JobError;
pub use func::{Call, JobFn};
pub use handlers::Handlers;
#[cfg(test)] // the chunk layout's round trip is tested beside `encode_chunk`
pub(crate) use handlers::next_job;
pub(crate) use handlers::{BatchItem, BatchValue, RouteInfo};

/// A unit of work: the job's data is the type itself.
///
/// ```
/// # extern crate portpool_runtime as portpool;
/// use portpool::job::Job;
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
