//! `Pool::map` and `Pool::map_unordered`: lazy, bounded fan-out.

use std::collections::HashMap;
use std::fmt;
use std::iter::Fuse;

use crossbeam_channel::Receiver;

use super::ticket::{JobResult, typed};
use super::{Event, Outcome, Pool, Reply, recv_spin};
use crate::job::{Failure, Job};

/// The iterator returned by [`Pool::map`] and [`Pool::map_unordered`].
///
/// It pulls jobs from its input only while fewer than a window of jobs
/// (a few per worker) are between submission and being yielded, so memory
/// stays bounded even with an endless input or a slow first job.
pub struct Map<'p, J: Job, I: Iterator<Item = J>> {
    pool: &'p Pool,
    input: Fuse<I>,
    window: u64,
    ordered: bool,
    reply: Reply,
    rx: Receiver<(u64, Event)>,
    /// Jobs submitted so far (the next job's tag).
    submitted: u64,
    /// Results yielded so far (in order: the next tag to yield).
    yielded: u64,
    /// Finished out of order, waiting for their turn (ordered only).
    early: HashMap<u64, Outcome>,
    /// Set once the pool refused a job: the rest fail at once.
    closed: bool,
}

impl<J: Job, I: Iterator<Item = J>> fmt::Debug for Map<'_, J, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("route", &J::NAME)
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl<'p, J: Job, I: Iterator<Item = J>> Map<'p, J, I> {
    pub(crate) fn new(pool: &'p Pool, input: I, window: usize, ordered: bool) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Map {
            pool,
            input: input.fuse(),
            window: window as u64,
            ordered,
            reply: Reply { tx, tag: 0 },
            rx,
            submitted: 0,
            yielded: 0,
            early: HashMap::new(),
            closed: false,
        }
    }

    /// Submits from the input while the window has room.
    fn top_up(&mut self) {
        while self.submitted - self.yielded < self.window {
            let Some(job) = self.input.next() else { return };
            let reply = Reply {
                tx: self.reply.tx.clone(),
                tag: self.submitted,
            };
            if self.closed || !self.pool.submit_with(job, reply.clone()) {
                self.closed = true;
                reply.send(Event::Done(Outcome::Failed(Failure::Rejected(
                    "the pool is shutting down".into(),
                ))));
            }
            self.submitted += 1;
        }
    }
}

impl<J: Job, I: Iterator<Item = J>> Iterator for Map<'_, J, I> {
    type Item = JobResult<J>;

    fn next(&mut self) -> Option<JobResult<J>> {
        self.top_up();
        loop {
            if self.ordered {
                if let Some(o) = self.early.remove(&self.yielded) {
                    self.yielded += 1;
                    return Some(typed::<J>(o));
                }
            }
            if self.yielded == self.submitted {
                return None;
            }
            // The map holds a sender itself, so this only ends with an event.
            let (tag, event) = recv_spin(&self.rx, None)?;
            let Event::Done(o) = event else { continue };
            if self.ordered && tag != self.yielded {
                self.early.insert(tag, o);
                continue;
            }
            self.yielded += 1;
            self.top_up();
            return Some(typed::<J>(o));
        }
    }
}
