//! The async forms of a link's waits: [`Link::request_async`],
//! [`Link::recv_message_async`] and [`Link::recv_message_where_async`].
//!
//! They need no executor of ours and work under any: the thread that reads
//! the connection (the link's background thread, or a thread waiting in a
//! blocking call) files what it read and wakes the futures it may concern
//! (`State::wakers`). A future checks and registers under the same lock
//! the reader files under, so no wake-up is lost. While a future waits,
//! its task does not read the connection itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::*;

impl Link {
    /// Sends `req` now and returns a future of the peer's reply: the async
    /// form of [`request`](Self::request). Dropping the future forgets the
    /// request (a late reply is dropped). The send itself does not wait
    /// for the peer, only for room in the connection's buffer.
    pub fn request_async<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        req: &Req,
    ) -> RequestFuture<'_, Resp> {
        let mut fut = RequestFuture {
            link: self,
            id: None,
            early: None,
            _resp: PhantomData,
        };
        let data = match self.inner.encode(req) {
            Ok(d) => d,
            Err(e) => {
                fut.early = Some(e);
                return fut;
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.inner.lock();
            if let Some(c) = &st.closed {
                fut.early = Some(Inner::closed_error(c));
                return fut;
            }
            st.requests.insert(id, None);
        }
        match self.inner.send(&Frame::Request { id, data }) {
            Ok(()) => fut.id = Some(id),
            Err(e) => {
                self.inner.lock().requests.remove(&id);
                fut.early = Some(e);
            }
        }
        fut
    }

    /// A future of the next message: the async form of
    /// [`recv_message`](Self::recv_message) (a next message that does not
    /// decode as `T` is its error, and stays). While it waits, the link
    /// counts as listening (a strict send from the peer is delivered to
    /// it).
    pub fn recv_message_async<T: DeserializeOwned>(&self) -> MessageFuture<'_, T, fn(&T) -> bool> {
        let any: fn(&T) -> bool = |_| true;
        let mut fut = self.recv_message_where_async(any);
        fut.next_only = true;
        fut
    }

    /// A future of the next message that decodes as `T` and passes
    /// `filter`: the async form of
    /// [`recv_message_where`](Self::recv_message_where).
    pub fn recv_message_where_async<T: DeserializeOwned, F: Fn(&T) -> bool>(
        &self,
        filter: F,
    ) -> MessageFuture<'_, T, F> {
        MessageFuture {
            link: self,
            filter,
            next_only: false,
            listening: false,
            done: false,
            _t: PhantomData,
        }
    }
}

/// The future of [`Link::request_async`]: the peer's reply, decoded.
#[must_use = "futures do nothing unless awaited; the request was sent, and its reply is dropped"]
pub struct RequestFuture<'l, Resp> {
    link: &'l Link,
    /// The request's id, until its reply is taken.
    id: Option<u64>,
    /// What went wrong before the request could go out.
    early: Option<LinkError>,
    _resp: PhantomData<fn() -> Resp>,
}

impl<Resp> fmt::Debug for RequestFuture<'_, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFuture")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<Resp: DeserializeOwned> Future for RequestFuture<'_, Resp> {
    type Output = Result<Resp, LinkError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(e) = this.early.take() {
            return Poll::Ready(Err(e));
        }
        let Some(id) = this.id else {
            panic!("a RequestFuture was polled after it returned its result");
        };
        let mut st = this.link.inner.lock();
        let r = match st.requests.get(&id) {
            Some(None) => {
                // The link's end fills every pending entry, so a closed
                // link never leaves us here.
                st.register(cx.waker());
                return Poll::Pending;
            }
            Some(Some(_)) => st.requests.remove(&id).flatten(),
            None => None,
        };
        drop(st);
        this.id = None;
        Poll::Ready(match r {
            Some(Ok(p)) => p.decode(),
            Some(Err(e)) => Err(e),
            None => Err(LinkError::Broken("a request vanished".into())),
        })
    }
}

impl<Resp> Drop for RequestFuture<'_, Resp> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.link.inner.lock().requests.remove(&id);
        }
    }
}

/// The future of [`Link::recv_message_async`] and
/// [`Link::recv_message_where_async`].
#[must_use = "futures do nothing unless awaited"]
pub struct MessageFuture<'l, T, F> {
    link: &'l Link,
    filter: F,
    /// `recv_message_async`: the next message, whatever its type (the
    /// filter is not asked).
    next_only: bool,
    /// Counted in the link's listeners (from the first poll that waited).
    listening: bool,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> fmt::Debug for MessageFuture<'_, T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageFuture")
            .field("listening", &self.listening)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned, F: Fn(&T) -> bool + Unpin> Future for MessageFuture<'_, T, F> {
    type Output = Result<T, LinkError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(
            !this.done,
            "a MessageFuture was polled after it returned its message"
        );
        let mut st = this.link.inner.lock();
        let filter: Option<&dyn Fn(&T) -> bool> = if this.next_only { None } else { Some(&this.filter) };
        match take_message(&mut st, filter) {
            Some(r) => {
                if this.listening {
                    st.listening -= 1;
                    this.listening = false;
                }
                this.done = true;
                Poll::Ready(r)
            }
            None => {
                if !this.listening {
                    st.listening += 1;
                    this.listening = true;
                }
                st.register(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl<T, F> Drop for MessageFuture<'_, T, F> {
    fn drop(&mut self) {
        if self.listening {
            self.link.inner.lock().listening -= 1;
        }
    }
}
