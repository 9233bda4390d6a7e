//! The messages a supervisor and a process worker exchange over the
//! worker's port (each one postcard frame), used by both sides: the
//! pool's process backend and the worker's serve loop.

use serde::{Deserialize, Serialize};

use crate::job::{Failure, RouteInfo};

/// Supervisor → worker. A `Job` frame is this head followed, in the same
/// frame, by the job's own postcard bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker<'a> {
    /// Run the job that follows with the handler of `route`.
    Job { id: u64, route: &'a str },
    /// Run the `count` jobs that follow (each a LEB128 length and its
    /// postcard bytes) and answer once for all of them.
    Batch { id: u64, route: &'a str, count: u32 },
    /// Finish what is in flight and exit.
    Stop,
    /// The job `id` was cancelled (or timed out): its handler should
    /// return; if it has not started, it must not run.
    Cancel { id: u64 },
    /// Run the suspend hooks (no jobs come until `Resume`).
    Suspend,
    /// Run the resume hooks.
    Resume,
}

/// The version of the job messages here (the hello's protocol version
/// covers the frames): a worker that speaks another is refused at start.
/// 2: a chunk's job lengths are LEB128 varints.
pub(crate) const JOBS_VERSION: u16 = 2;

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// A progress message from the handler of job `id`.
    Progress {
        id: u64,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Job `id` finished.
    Done { id: u64, outcome: WireOutcome },
    /// The routes this worker serves, and the version of these messages it
    /// speaks: its first message, before any job.
    Routes {
        routes: Vec<RouteInfo>,
        jobs_version: u16,
    },
}

/// How a job ended in a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireOutcome {
    /// postcard bytes of `Result<J::Output, J::Error>`.
    Ran(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A chunk ran: postcard bytes of `(nanos, Vec<BatchItem>)`, and how
    /// many of its jobs failed.
    RanChunk {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        failed: u32,
    },
    /// It did not produce a result.
    Failed(Failure),
    /// From a JSON worker: the output's or error's JSON.
    Json(crate::task::JsonResult),
    /// From a JSON worker, a chunk: how long it ran, each job's result or
    /// failure, and how many failed.
    JsonChunk {
        nanos: u64,
        items: Vec<Result<crate::task::JsonResult, Failure>>,
        failed: u32,
    },
    /// From a JSON worker, a chunk whose every job succeeded (the common
    /// answer to tiny jobs): how long it ran, and the JSON text of the
    /// array of their outputs, decoded in one pass by the map.
    JsonOk {
        nanos: u64,
        #[serde(with = "serde_bytes")]
        outputs: Vec<u8>,
    },
}

pub(crate) mod json;
