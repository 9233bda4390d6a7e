//! `Pool::submit_chunk`: one chunk of a `map` into the queue, encoded
//! (process pools) or as a `Vec` of values (thread pools), with the jobs
//! that failed before they could go as holes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::{CancelToken, Payload, Pool, Refusal, Reply, Task, Work, encode_chunk, send_chunk_value};
use crate::job::{Failure, Job};
use crate::pool::Backend;
use crate::task::JobState;

/// What `submit_chunk` did with a chunk.
pub(crate) struct ChunkSent<J> {
    /// Jobs that failed before they could be queued, by index in the chunk.
    pub(crate) holes: Vec<(usize, Failure)>,
    /// Jobs past the chunk's byte budget: they go in the next chunk.
    pub(crate) rest: Vec<J>,
    /// The queued chunk's id and state (to cancel it), if one was queued.
    pub(crate) task: Option<(u64, Arc<JobState>)>,
}

impl Pool {
    /// Submits `jobs` as one chunk whose events go to `reply` (used by
    /// `map`). Blocks while the queue is full. Gives the jobs back if the
    /// pool is closed.
    ///
    /// On a process pool the jobs are encoded here, each alone: one that
    /// will not encode becomes a hole (its failure, by index) and the rest
    /// still run. A chunk stops at [`CHUNK_BYTES`]: the jobs past that
    /// point come back in `ChunkSent::rest`, for the next chunk.
    pub(crate) fn submit_chunk<J: Job>(
        &self,
        mut jobs: Vec<J>,
        reply: Reply,
        token: Option<&CancelToken>,
    ) -> Result<ChunkSent<J>, (Vec<J>, Refusal)> {
        if let Some(r) = self.inner.refusal() {
            return Err((jobs, r));
        }
        if let Err(f) = self.check_route::<J>() {
            // Relaxed: statistics only.
            self.inner
                .core
                .failed_elsewhere
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            return Ok(ChunkSent {
                holes: (0..jobs.len()).map(|i| (i, f.clone())).collect(),
                rest: Vec::new(),
                task: None,
            });
        }
        // `kept`: a process pool's jobs, which stay here while their bytes
        // are queued (to give back if the queue refuses them).
        let (job, count, holes, kept, rest) = match &self.inner.backend {
            Backend::Threads(_) => {
                let n = jobs.len() as u32;
                (
                    Payload::Value(Box::new(jobs)),
                    n,
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                )
            }
            Backend::Processes(_) => {
                let (chunk, used) = if self.inner.core.config.job_codec == crate::frame::Codec::Json {
                    super::super::encode_chunk_json(&jobs)
                } else {
                    encode_chunk(&jobs)
                };
                let rest = jobs.split_off(used);
                if chunk.count == 0 {
                    self.count_holes(chunk.holes.len());
                    return Ok(ChunkSent {
                        holes: chunk.holes,
                        rest,
                        task: None,
                    });
                }
                (
                    Payload::Encoded(Box::new((chunk.bytes, chunk.fds))),
                    chunk.count,
                    chunk.holes,
                    jobs,
                    rest,
                )
            }
        };
        let (timeout, retries) = self.inner.core.limits(J::NAME);
        let core = &self.inner.core;
        // Relaxed: ids only need to be unique.
        let id = core.next_id.fetch_add(1, Ordering::Relaxed);
        let state = JobState::new();
        if core.config.metrics {
            core.metrics_for::<J>(&state);
        }
        if let Some(token) = token {
            if token.carry(id, &state, &reply, &core.control).is_err() {
                // Cancelled meanwhile: none of these jobs goes.
                let n = count as usize + holes.len();
                // Relaxed: statistics only.
                core.cancelled.fetch_add(count as u64, Ordering::Relaxed);
                self.count_holes(n);
                let mut holes = holes;
                let have: std::collections::HashSet<usize> = holes.iter().map(|(i, _)| *i).collect();
                holes.extend(
                    (0..n)
                        .filter(|i| !have.contains(i))
                        .map(|i| (i, Failure::Cancelled)),
                );
                holes.sort_by_key(|(i, _)| *i);
                return Ok(ChunkSent {
                    holes,
                    rest,
                    task: None,
                });
            }
        }
        let task = Task {
            id,
            route: J::NAME,
            batch: Some(count),
            job,
            send_job: send_chunk_value,
            reply,
            state: state.clone(),
            timeout,
            retries,
            priority: 0,
            seq: 0,
        };
        self.watch_queue(&task);
        match self.send_blocking(Work::Task(task), None) {
            Ok(()) => {
                drop(kept);
                self.count_holes(holes.len());
                if self.inner.core.config.on_event.is_some() {
                    self.inner.core.note_enqueued();
                }
                self.inner.after_enqueue();
                Ok(ChunkSent {
                    holes,
                    rest,
                    task: Some((id, state)),
                })
            }
            Err(w) => {
                // A thread pool's chunk holds its jobs; a process pool's
                // jobs are still here (only their bytes were queued).
                let mut back = match w {
                    Work::Task(t) => {
                        // Claimed, so its queue timer cannot count it.
                        t.state.settle();
                        t.into_value::<Vec<J>>().unwrap_or_default()
                    }
                    Work::Stop | Work::Wake => Vec::new(),
                };
                back.extend(kept);
                back.extend(rest);
                let why = match self.inner.refusal() {
                    Some(r) => r,
                    None => Refusal::Closed,
                };
                Err((back, why))
            }
        }
    }
}
