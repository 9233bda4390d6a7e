//! What a reader holds: a request from the peer waiting for its reply,
//! and the iterator over ordered messages.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::state::{Closed, Inner};
use super::{Link, LinkError};

/// A request from the peer, to answer with [`reply`](Self::reply).
pub struct IncomingRequest<Req> {
    pub(super) id: u64,
    /// The request.
    pub value: Req,
    pub(super) inner: Arc<Inner>,
}

impl<Req: fmt::Debug> fmt::Debug for IncomingRequest<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("id", &self.id)
            .field("value", &self.value)
            .finish()
    }
}

impl<Req> IncomingRequest<Req> {
    /// Sends the reply: `Ok` is the response, `Err` a failure the
    /// requester receives as [`LinkError::Failed`].
    pub fn reply<Resp: Serialize>(self, result: Result<Resp, String>) -> Result<(), LinkError> {
        let payload = match result {
            Ok(r) => Ok(self.inner.encode(&r)?),
            Err(why) => Err(why),
        };
        self.inner.reply(self.id, payload)
    }
}

/// The iterator of [`Link::messages`].
#[must_use = "messages are read only while the iterator is iterated"]
pub struct Messages<'l, T> {
    pub(super) link: &'l Link,
    pub(super) done: bool,
    pub(super) _t: PhantomData<fn() -> T>,
}

/// The old name of [`Messages`].
#[deprecated(since = "0.1.0", note = "renamed `Messages`")]
pub type EachMessage<'l, T> = Messages<'l, T>;

impl<T> fmt::Debug for Messages<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages").field("done", &self.done).finish()
    }
}

impl<T: DeserializeOwned> Iterator for Messages<'_, T> {
    type Item = Result<T, LinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.link.inner.wait_for(None, true, |st| {
            if let Some(p) = st.inbox.pop_front() {
                return Some(Some(p.decode::<T>()));
            }
            match &st.closed {
                Some(Closed::Clean) => Some(None),
                Some(c) => Some(Some(Err(Inner::closed_error(c)))),
                None => None,
            }
        });
        let item = match r {
            Ok(item) => item,
            Err(e) => Some(Err(e)),
        };
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}
