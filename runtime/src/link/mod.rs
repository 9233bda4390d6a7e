//! Conversations on a connection: messages in order, reads that pick the
//! message they want, strict sends, and requests answered by id, from
//! blocking or async code.
//!
//! A [`Link`] wraps an [`Ipc`] and gives it:
//!
//! - ordered messages: [`send_message`](Link::send_message),
//!   [`recv_message`](Link::recv_message), a filtered
//!   [`recv_message_where`](Link::recv_message_where) that leaves
//!   other messages for later readers, and [`messages`](Link::messages);
//! - strict sends ([`send_message_strict`](Link::send_message_strict)):
//!   delivered only to a peer that is waiting for a message, otherwise an
//!   error (`NotListening`, `PeerExited`, or `Deadlock` when both sides
//!   strict-send at once), never a hang;
//! - requests correlated by id ([`request`](Link::request)): replies may
//!   come in any order, a failure reply arrives as the peer's error, and
//!   every pending request fails when the peer goes away or past its
//!   deadline. The answering side registers a handler
//!   ([`on_request`](Link::on_request)) or takes requests one by one
//!   ([`next_request`](Link::next_request)) and replies.
//!
//! Frames are postcard by default, or JSON ([`Codec::Json`]) so that a
//! peer written in another language can speak the protocol
//! (`docs/protocol.md`). In postcard over a connection that passes fds,
//! a value may hold [`Buffer`](crate::port::Buffer)s: their memory files
//! go beside the frame, and each decode of the value maps them again.
//!
//! Scenario "whoever waits reads": a link has no thread that owns the
//! connection. Any thread that waits on the link (for a reply, a message,
//! an ack, the end) takes the receiving half and reads itself while no
//! other thread does, files whatever frames it reads for others, and
//! wakes only those asleep. A background thread reads while nobody waits,
//! so strict messages are acknowledged and requests answered even then;
//! it sleeps on a duplicate of the fd without holding the receiver, and
//! leaves reading to callers for up to 2 ms at a time. The reply a caller
//! waits for is thus usually read by that caller, with no hand-off
//! between threads.

mod error;
mod frame;
mod future;
mod incoming;
mod state;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::port::{Ipc, IpcSender};
use crate::runtime::{RefCount, Runtime};
use crate::transport::Wait;

pub use error::LinkError;
pub use frame::Payload;
use frame::{Frame, StrictOutcome};
pub use future::{MessageFuture, RequestFuture};
#[allow(deprecated)]
pub use incoming::EachMessage;
pub use incoming::{IncomingRequest, Messages};
use state::{Action, Closed, Handler, Inner, State, background};

/// How a link encodes its frames and the values in them (announced in
/// the hello: see [`ConnectOptions::codec`](crate::port::ConnectOptions::codec)).
pub use crate::frame::Codec;

/// A conversation over one connection. Cheap to share between threads
/// (`&Link` is enough for every operation).
pub struct Link {
    inner: Arc<Inner>,
    /// `None` once this side has stopped sending (`close_sending`).
    tx: Option<Arc<IpcSender>>,
    rt_ref: RefCount,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("codec", &self.inner.codec)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Starts a conversation on `ipc` with postcard frames.
    pub fn new(ipc: Ipc) -> Link {
        Link::with_codec(ipc, Codec::Postcard)
    }

    /// Starts a conversation on `ipc` with frames in `codec`, which must be
    /// the codec the connection was opened with
    /// ([`ConnectOptions::codec`](crate::port::ConnectOptions), announced
    /// to the peer in the hello). A link on a connection opened for the
    /// other codec is broken from the start: every call fails with
    /// [`LinkError::Broken`] saying so, and nothing is sent.
    pub fn with_codec(ipc: Ipc, codec: Codec) -> Link {
        Link::build(ipc, codec, false)
    }

    /// Like [`with_codec`](Self::with_codec), also keeping every message
    /// received for [`received`](Self::received).
    pub fn with_log(ipc: Ipc, codec: Codec) -> Link {
        Link::build(ipc, codec, true)
    }

    fn build(ipc: Ipc, codec: Codec, log: bool) -> Link {
        // The link's own ref stands for the connection in its runtime.
        ipc.set_keep_alive(false);
        // Both sides announced their codec in the hello: a link that reads
        // another fails at once with the reason, not at its first frame.
        let wrong_codec = (ipc.codec() != codec).then(|| {
            format!(
                "this link reads {codec} frames, but its connection was opened for {} (connect it with \
                 ConnectOptions {{ codec: Codec::{codec:?}, .. }})",
                ipc.codec()
            )
        });
        let transport = ipc.transport();
        let (tx, rx) = ipc.split();
        let tx = Arc::new(tx);
        let inner = Arc::new(Inner {
            tx: Arc::downgrade(&tx),
            refused: wrong_codec.clone(),
            transport,
            codec,
            files: codec == Codec::Postcard && tx.can_send_ports(),
            state: Mutex::new(State {
                log: log.then(Vec::new),
                ..State::default()
            }),
            cv: Condvar::new(),
            shared: crate::port::shared::SharedReceiver::new(rx, "link"),
            next_id: AtomicU64::new(1),
        });
        let inner2 = inner.clone();
        // Not joined: the thread ends with the connection (see `Drop`).
        let spawned = std::thread::Builder::new()
            .name("portpool-link".into())
            .spawn(move || background(&inner2));
        if let Err(e) = spawned {
            Inner::close(
                &mut inner.lock(),
                Closed::Broken(format!("could not start the link's thread: {e}")),
            );
        }
        if let Some(why) = wrong_codec {
            Inner::close(&mut inner.lock(), Closed::Broken(why));
        }
        Link {
            inner,
            tx: Some(tx),
            rt_ref: Runtime::global().new_ref(),
        }
    }

    /// Which transport the connection uses: `"shared memory"`, `"socket"`
    /// or `"pipes"` (as [`Ipc::transport`]).
    pub fn transport(&self) -> &'static str {
        self.inner.transport
    }

    /// Connects the port this process was started with
    /// ([`Port::from_env`](crate::port::Port::from_env)) and starts a
    /// conversation on it: the child side of a
    /// [`Subprocess`](crate::subprocess::Subprocess).
    pub fn from_env(codec: Codec) -> std::io::Result<Link> {
        let opts = crate::port::ConnectOptions {
            codec,
            shared_memory: true,
            ..crate::port::ConnectOptions::default()
        };
        let ipc = crate::port::Port::from_env()?.connect_with(opts)?;
        Ok(Link::with_codec(ipc, codec))
    }

    /// Every message received so far, still encoded (with a log only).
    pub(crate) fn received_raw(&self) -> Vec<Payload> {
        self.inner.lock().log.clone().unwrap_or_default()
    }

    /// Stops sending: the peer reads EOF once it has read what was sent;
    /// messages from the peer still arrive. Later sends fail with
    /// `Disconnected`.
    pub fn close_sending(&mut self) {
        self.tx = None;
    }

    /// Drops this link's runtime ref for good (its owner holds one).
    pub(crate) fn close_ref(&mut self) {
        self.rt_ref.close();
    }

    /// The codec of this link's frames.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// Sends a message. Messages from one thread arrive in the order sent,
    /// also when several threads send at once.
    pub fn send_message<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), LinkError> {
        let p = self.inner.encode(msg)?;
        self.inner.send(&Frame::Message(p))
    }

    /// Sends a message that must be received by a peer waiting for one
    /// (in `recv_message`, `recv_message_where` or `messages`).
    /// Returns once the peer took it; fails with `NotListening` if it was
    /// not waiting (the message is dropped), `PeerExited` if it went away
    /// first, `Deadlock` if it was itself strict-sending to us.
    pub fn send_message_strict<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), LinkError> {
        let data = self.inner.encode(msg)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.inner.lock();
            if let Some(c) = &st.closed {
                return Err(match c {
                    Closed::Clean => LinkError::PeerExited,
                    c => Inner::closed_error(c),
                });
            }
            st.stricts.insert(id, None);
        }
        if let Err(e) = self.inner.send(&Frame::Strict { id, data }) {
            self.inner.lock().stricts.remove(&id);
            return Err(match e {
                LinkError::Disconnected => LinkError::PeerExited,
                e => e,
            });
        }
        self.inner.wait_for(None, false, |st| match st.stricts.get(&id) {
            Some(Some(_)) => st.stricts.remove(&id).flatten(),
            Some(None) => None,
            None => Some(Err(LinkError::Broken("a strict send vanished".into()))),
        })?
    }

    /// Waits for the next message and decodes it as `T` (crossbeam's
    /// `recv`).
    ///
    /// A next message that does not decode as `T` is an error
    /// ([`LinkError::Codec`]) and stays first in the inbox, so nothing is
    /// lost: a read of its own type (or [`recv_message_where`](Self::recv_message_where),
    /// which passes over messages of other types) still gets it.
    ///
    /// Postcard frames carry no type: a message of another type whose bytes
    /// happen to fit `T` decodes as `T` (an `enum Event { Progress(u32) }`
    /// sent, a `struct Point { x: i32, y: i32 }` read). Use one message type
    /// per link, an enum if there are several kinds, or [`Codec::Json`],
    /// whose frames say more.
    pub fn recv_message<T: DeserializeOwned>(&self) -> Result<T, LinkError> {
        self.get_one(None, None)
    }

    /// Waits for the next message that decodes as `T` and passes `filter`.
    /// Other messages (those of other types too) stay, in order, for later
    /// readers.
    pub fn recv_message_where<T: DeserializeOwned>(
        &self,
        filter: impl Fn(&T) -> bool,
    ) -> Result<T, LinkError> {
        self.get_one(None, Some(&filter))
    }

    /// Like [`recv_message`](Self::recv_message), giving up with
    /// `Timeout` after `timeout`.
    pub fn recv_message_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, LinkError> {
        self.get_one(crate::util::deadline(timeout), None)
    }

    /// The old name of [`recv_message`](Self::recv_message).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `recv_message`, after crossbeam's and std's `recv`"
    )]
    pub fn get_one_message<T: DeserializeOwned>(&self) -> Result<T, LinkError> {
        self.recv_message()
    }

    /// The old name of [`recv_message_where`](Self::recv_message_where).
    #[deprecated(since = "0.1.0", note = "renamed `recv_message_where`")]
    pub fn get_one_message_where<T: DeserializeOwned>(
        &self,
        filter: impl Fn(&T) -> bool,
    ) -> Result<T, LinkError> {
        self.recv_message_where(filter)
    }

    /// The old name of [`recv_message_timeout`](Self::recv_message_timeout).
    #[deprecated(since = "0.1.0", note = "renamed `recv_message_timeout`")]
    pub fn get_one_message_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, LinkError> {
        self.recv_message_timeout(timeout)
    }

    fn get_one<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        filter: Option<&dyn Fn(&T) -> bool>,
    ) -> Result<T, LinkError> {
        self.inner
            .wait_for(deadline, true, |st| take_message(st, filter))?
    }

    /// Every message, as it comes (crossbeam's `iter`); the iterator ends
    /// when the peer disconnects cleanly and yields an error (then ends)
    /// if the connection breaks or a message does not decode as `T`.
    pub fn messages<T: DeserializeOwned>(&self) -> Messages<'_, T> {
        Messages {
            link: self,
            done: false,
            _t: PhantomData,
        }
    }

    /// The old name of [`messages`](Self::messages).
    #[deprecated(since = "0.1.0", note = "renamed `messages`, after crossbeam's `iter`")]
    pub fn each_message<T: DeserializeOwned>(&self) -> Messages<'_, T> {
        self.messages()
    }

    /// Sends `req` and waits for the peer's reply.
    pub fn request<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        req: &Req,
    ) -> Result<Resp, LinkError> {
        self.request_until(req, None)
    }

    /// Like [`request`](Self::request), failing with `Timeout` after `timeout`.
    pub fn request_timeout<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, LinkError> {
        self.request_until(req, crate::util::deadline(timeout))
    }

    fn request_until<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        req: &Req,
        deadline: Option<Instant>,
    ) -> Result<Resp, LinkError> {
        let data = self.inner.encode(req)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.inner.lock();
            if let Some(c) = &st.closed {
                return Err(Inner::closed_error(c));
            }
            st.requests.insert(id, None);
        }
        if let Err(e) = self.inner.send(&Frame::Request { id, data }) {
            self.inner.lock().requests.remove(&id);
            return Err(e);
        }
        let r = self
            .inner
            .wait_for(deadline, false, |st| match st.requests.get(&id) {
                Some(Some(_)) => st.requests.remove(&id).flatten(),
                Some(None) => None,
                None => Some(Err(LinkError::Broken("a request vanished".into()))),
            });
        match r {
            Ok(Ok(p)) => p.decode(),
            Ok(Err(e)) => Err(e),
            Err(e) => {
                // Timed out: a late reply finds no entry and is dropped.
                self.inner.lock().requests.remove(&id);
                Err(e)
            }
        }
    }

    /// Answers the peer's requests of type `Req` with `f` (requests that
    /// came before included). The handler runs on whichever thread read
    /// the request: the link's background thread, or a thread waiting on
    /// the link in another call. An `Err` (or a panic) reaches the
    /// requester as [`LinkError::Failed`]. The handler may itself make
    /// requests on this link.
    pub fn on_request<Req, Resp, F>(&self, f: F)
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req) -> Result<Resp, String> + Send + Sync + 'static,
    {
        let (codec, files) = (self.inner.codec, self.inner.files);
        let h: Handler = Arc::new(move |p: &Payload| {
            let req: Req = p.decode().map_err(|e| e.to_string())?;
            let resp = f(req)?;
            Payload::encode_for(codec, &resp, files).map_err(|e| e.to_string())
        });
        let queued: Vec<(u64, Payload)> = {
            let mut st = self.inner.lock();
            st.handler = Some(h.clone());
            st.incoming.drain(..).collect()
        };
        // Requests that came before: answered here, now (later ones go to
        // the handler as they are read).
        self.inner.run(
            queued
                .into_iter()
                .map(|(id, p)| Action::Handle(h.clone(), id, p))
                .collect(),
        );
    }

    /// Waits for the next request from the peer (when no handler is
    /// registered); answer it with [`IncomingRequest::reply`].
    pub fn next_request<Req: DeserializeOwned>(&self) -> Result<IncomingRequest<Req>, LinkError> {
        let (id, p) = self.inner.wait_for(None, false, |st| {
            if let Some(r) = st.incoming.pop_front() {
                return Some(Ok(r));
            }
            st.closed.as_ref().map(|c| Err(Inner::closed_error(c)))
        })??;
        let value = match p.decode::<Req>() {
            Ok(v) => v,
            Err(e) => {
                let _ = self.inner.reply(id, Err(e.to_string()));
                return Err(e);
            }
        };
        Ok(IncomingRequest {
            id,
            value,
            inner: self.inner.clone(),
        })
    }

    /// Every message received so far, decoded as `T` (the link must have
    /// been made with [`with_log`](Self::with_log)); a message that does
    /// not decode is skipped.
    pub fn received<T: DeserializeOwned>(&self) -> Vec<T> {
        let st = self.inner.lock();
        st.log.iter().flatten().filter_map(|p| p.decode().ok()).collect()
    }

    /// Whether the peer has gone (clean close or broken connection).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// Waits until the peer has closed the connection.
    pub fn wait_closed(&self) {
        let _ = self
            .inner
            .wait_for(None, false, |st| st.closed.as_ref().map(|_| ()));
    }

    /// Sets whether the open link keeps its [`Runtime`]'s `run` from
    /// returning (it does by default; `false` lets `run` return while it
    /// is open). A link counts until it is dropped, even once its peer has
    /// gone (`is_closed`): drop it, or set this to `false`, to let `run`
    /// return.
    pub fn set_keep_alive(&self, keep: bool) {
        self.rt_ref.set_keep_alive(keep);
    }

    /// Whether the link keeps its runtime alive.
    pub fn keeps_alive(&self) -> bool {
        self.rt_ref.keeps_alive()
    }

    /// The old name of `set_keep_alive(true)`.
    #[deprecated(since = "0.1.0", note = "use `set_keep_alive(true)`")]
    pub fn ref_(&self) {
        self.set_keep_alive(true);
    }

    /// The old name of `set_keep_alive(false)`.
    #[deprecated(since = "0.1.0", note = "use `set_keep_alive(false)`")]
    pub fn unref(&self) {
        self.set_keep_alive(false);
    }

    /// The old name of [`keeps_alive`](Self::keeps_alive).
    #[deprecated(since = "0.1.0", note = "renamed `keeps_alive`")]
    pub fn has_ref(&self) -> bool {
        self.keeps_alive()
    }

    /// Moves the link to `rt` (it belongs to [`Runtime::global`] by
    /// default), keeping its ref state.
    pub fn attach(&mut self, rt: &Runtime) {
        self.rt_ref = self.rt_ref.moved_to(rt);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Dropping `tx` (the only strong handle) closes our sending side:
        // the peer reads EOF. Shutting down our reading side makes the
        // background thread see the end at once (sockets; over pipes it
        // ends when the peer closes), so it does not outlive the link
        // waiting for a peer that keeps its end open. It is not joined:
        // it may be inside a request handler.
        //
        // First, the acknowledgements of strict messages already filed go
        // out (a thread that read them sends them; bounded, in case it is
        // stuck writing to a peer that does not read).
        {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut st = self.inner.lock();
            while st.acks_due > 0 {
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                st = self
                    .inner
                    .cv
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        self.tx.take();
        self.inner.shared.shutdown_read();
    }
}

/// With a `filter`: takes the first message in the inbox that decodes as
/// `T` and passes it. Without one: the first message, which must decode
/// as `T` (else the error, and it stays). Once the link is closed and no
/// message is taken, the reason.
fn take_message<T: DeserializeOwned>(
    st: &mut State,
    filter: Option<&dyn Fn(&T) -> bool>,
) -> Option<Result<T, LinkError>> {
    let Some(filter) = filter else {
        if let Some(p) = st.inbox.front() {
            let r = p.decode::<T>();
            if r.is_ok() {
                st.inbox.pop_front();
            }
            return Some(r);
        }
        return st.closed.as_ref().map(|c| Err(Inner::closed_error(c)));
    };
    let mut first_err = None;
    let mut found = None;
    for (i, p) in st.inbox.iter().enumerate() {
        match p.decode::<T>() {
            Ok(v) if filter(&v) => {
                found = Some((i, v));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some((i, v)) = found {
        st.inbox.remove(i);
        return Some(Ok(v));
    }
    let c = st.closed.as_ref()?;
    // A lone message of another type, with nothing else coming: report why
    // it did not match rather than "disconnected".
    Some(Err(match (first_err, st.inbox.len()) {
        (Some(e), 1) => e,
        _ => Inner::closed_error(c),
    }))
}
