//! `Map::into_stream` (feature `futures`): a map's results as a
//! `futures_core::Stream`, woken by the pool threads that settle chunks.

use std::fmt;

use super::Map;
use super::ticket::JobResult;
use crate::job::Job;

impl<'p, J: Job, I: Iterator<Item = J>> Map<'p, J, I> {
    /// The same results as a [`Stream`](futures_core::Stream), for async
    /// code (feature `futures`): the pool thread that settles a chunk
    /// wakes the task, no executor thread waits. The stream queues chunks
    /// as it is polled; against a full queue
    /// ([`queue_limit`](super::PoolBuilder::queue_limit)) a poll waits for
    /// room, as `submit` does. Dropping it cancels what it has not yielded.
    ///
    /// A separate type rather than `Map` itself, so that `StreamExt` and
    /// `Iterator` methods (`map`, `next`, `collect`) never clash.
    pub fn into_stream(self) -> MapStream<'p, J, I> {
        MapStream(self)
    }
}

/// The stream of [`Map::into_stream`] (feature `futures`).
#[must_use = "streams do nothing unless polled; dropping this one cancels its jobs"]
pub struct MapStream<'p, J: Job, I: Iterator<Item = J>>(Map<'p, J, I>);

impl<J: Job, I: Iterator<Item = J>> fmt::Debug for MapStream<'_, J, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MapStream").field(&self.0).finish()
    }
}

impl<J: Job, I: Iterator<Item = J>> futures_core::Stream for MapStream<'_, J, I> {
    type Item = JobResult<J>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<JobResult<J>>> {
        let map = &mut self.get_mut().0;
        if let std::task::Poll::Ready(r) = map.advance(false) {
            return std::task::Poll::Ready(r);
        }
        map.inbox.wake_slot().register(cx.waker());
        // Looked at again after registering (`WakeSlot`).
        map.advance(false)
    }
}
