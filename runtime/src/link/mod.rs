//! Layer 3: conversations on a connection, in the manner of execa's IPC
//! and ipc-link.
//!
//! A [`Link`] wraps an [`Ipc`] and gives it:
//!
//! - ordered messages: [`send_message`](Link::send_message),
//!   [`get_one_message`](Link::get_one_message), a filtered
//!   [`get_one_message_where`](Link::get_one_message_where) that leaves
//!   other messages for later readers, and [`each_message`](Link::each_message);
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
//! (`docs/protocol.md`). One reader thread per link sorts incoming frames.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::port::{Ipc, IpcReceiver, IpcSender};
use crate::runtime::{RefCount, Runtime};

/// How a link encodes its frames and the values in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// postcard: compact, Rust-to-Rust (the default).
    #[default]
    Postcard,
    /// JSON text, one object per frame (see `docs/protocol.md`).
    Json,
}

/// Why a conversation operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer closed the connection (or exited) cleanly; nothing more
    /// will arrive.
    Disconnected,
    /// A strict message found the peer not waiting for a message; it was
    /// not delivered.
    NotListening,
    /// The peer exited before acknowledging a strict message.
    PeerExited,
    /// Both sides sent a strict message to each other at once; neither is
    /// listening, so neither message was delivered.
    Deadlock,
    /// The request's deadline passed without a reply.
    Timeout,
    /// The peer answered the request with a failure (ipc-link's
    /// `success = false`), with its reason.
    Failed(String),
    /// A value could not be encoded or decoded.
    Codec(String),
    /// The connection broke (not a clean close), with why.
    Broken(String),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Disconnected => f.write_str("the peer disconnected"),
            LinkError::NotListening => f.write_str("the peer was not waiting for a message"),
            LinkError::PeerExited => f.write_str("the peer exited before receiving the message"),
            LinkError::Deadlock => f.write_str("both sides sent a strict message to each other at once"),
            LinkError::Timeout => f.write_str("no reply within the deadline"),
            LinkError::Failed(why) => write!(f, "the peer failed the request: {why}"),
            LinkError::Codec(why) => write!(f, "coding error: {why}"),
            LinkError::Broken(why) => write!(f, "the connection broke: {why}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// A value as it travels, still encoded (postcard bytes or a JSON value).
#[derive(Debug, Clone)]
pub struct Payload(Encoded);

#[derive(Debug, Clone)]
enum Encoded {
    Postcard(Vec<u8>),
    Json(serde_json::Value),
}

impl Payload {
    fn encode<T: Serialize + ?Sized>(codec: Codec, v: &T) -> Result<Payload, LinkError> {
        match codec {
            Codec::Postcard => postcard::to_allocvec(v)
                .map(|b| Payload(Encoded::Postcard(b)))
                .map_err(|e| {
                    LinkError::Codec(format!("could not encode a {}: {e}", std::any::type_name::<T>()))
                }),
            Codec::Json => serde_json::to_value(v)
                .map(|v| Payload(Encoded::Json(v)))
                .map_err(|e| {
                    LinkError::Codec(format!("could not encode a {}: {e}", std::any::type_name::<T>()))
                }),
        }
    }

    /// Decodes the value as `T`.
    pub fn decode_value<T: DeserializeOwned>(&self) -> Result<T, LinkError> {
        self.decode()
    }

    fn decode<T: DeserializeOwned>(&self) -> Result<T, LinkError> {
        let r = match self {
            Payload(Encoded::Postcard(b)) => postcard::from_bytes(b).map_err(|e| e.to_string()),
            Payload(Encoded::Json(v)) => T::deserialize(v).map_err(|e| e.to_string()),
        };
        r.map_err(|e| LinkError::Codec(format!("could not decode a {}: {e}", std::any::type_name::<T>())))
    }
}

/// What a strict message's receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StrictOutcome {
    Delivered,
    NotListening,
    Deadlock,
}

/// One frame of the conversation protocol.
#[derive(Debug)]
enum Frame {
    Message(Payload),
    Strict { id: u64, data: Payload },
    StrictAck { id: u64, outcome: StrictOutcome },
    Request { id: u64, data: Payload },
    Reply { id: u64, ok: bool, data: Payload },
}

/// The postcard form of a frame (values as nested postcard bytes).
#[derive(Serialize, Deserialize)]
enum PostcardFrame<'a> {
    Message(#[serde(borrow, with = "serde_bytes")] &'a [u8]),
    Strict {
        id: u64,
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
    StrictAck {
        id: u64,
        outcome: StrictOutcome,
    },
    Request {
        id: u64,
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
    Reply {
        id: u64,
        ok: bool,
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
}

/// The JSON form of a frame: `{"type": "...", ...}` (docs/protocol.md).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum JsonFrame {
    Message {
        data: serde_json::Value,
    },
    Strict {
        id: u64,
        data: serde_json::Value,
    },
    StrictAck {
        id: u64,
        outcome: StrictOutcome,
    },
    Request {
        id: u64,
        data: serde_json::Value,
    },
    Reply {
        id: u64,
        ok: bool,
        data: serde_json::Value,
    },
}

fn mismatch() -> LinkError {
    LinkError::Codec("a payload of the other codec".into())
}

impl Frame {
    fn encode(&self, codec: Codec) -> Result<Vec<u8>, LinkError> {
        let enc_err = |e: String| LinkError::Codec(format!("could not encode a frame: {e}"));
        match codec {
            Codec::Postcard => {
                fn bytes(p: &Payload) -> Result<&[u8], LinkError> {
                    match p {
                        Payload(Encoded::Postcard(b)) => Ok(b.as_slice()),
                        Payload(Encoded::Json(_)) => Err(mismatch()),
                    }
                }
                let f = match self {
                    Frame::Message(p) => PostcardFrame::Message(bytes(p)?),
                    Frame::Strict { id, data } => PostcardFrame::Strict {
                        id: *id,
                        data: bytes(data)?,
                    },
                    Frame::StrictAck { id, outcome } => PostcardFrame::StrictAck {
                        id: *id,
                        outcome: *outcome,
                    },
                    Frame::Request { id, data } => PostcardFrame::Request {
                        id: *id,
                        data: bytes(data)?,
                    },
                    Frame::Reply { id, ok, data } => PostcardFrame::Reply {
                        id: *id,
                        ok: *ok,
                        data: bytes(data)?,
                    },
                };
                postcard::to_allocvec(&f).map_err(|e| enc_err(e.to_string()))
            }
            Codec::Json => {
                let value = |p: &Payload| match p {
                    Payload(Encoded::Json(v)) => Ok(v.clone()),
                    Payload(Encoded::Postcard(_)) => Err(mismatch()),
                };
                let f = match self {
                    Frame::Message(p) => JsonFrame::Message { data: value(p)? },
                    Frame::Strict { id, data } => JsonFrame::Strict {
                        id: *id,
                        data: value(data)?,
                    },
                    Frame::StrictAck { id, outcome } => JsonFrame::StrictAck {
                        id: *id,
                        outcome: *outcome,
                    },
                    Frame::Request { id, data } => JsonFrame::Request {
                        id: *id,
                        data: value(data)?,
                    },
                    Frame::Reply { id, ok, data } => JsonFrame::Reply {
                        id: *id,
                        ok: *ok,
                        data: value(data)?,
                    },
                };
                serde_json::to_vec(&f).map_err(|e| enc_err(e.to_string()))
            }
        }
    }

    fn decode(codec: Codec, bytes: &[u8]) -> Result<Frame, String> {
        match codec {
            Codec::Postcard => {
                let f: PostcardFrame<'_> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
                let p = |b: &[u8]| Payload(Encoded::Postcard(b.to_vec()));
                Ok(match f {
                    PostcardFrame::Message(b) => Frame::Message(p(b)),
                    PostcardFrame::Strict { id, data } => Frame::Strict { id, data: p(data) },
                    PostcardFrame::StrictAck { id, outcome } => Frame::StrictAck { id, outcome },
                    PostcardFrame::Request { id, data } => Frame::Request { id, data: p(data) },
                    PostcardFrame::Reply { id, ok, data } => Frame::Reply {
                        id,
                        ok,
                        data: p(data),
                    },
                })
            }
            Codec::Json => {
                let f: JsonFrame = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                Ok(match f {
                    JsonFrame::Message { data } => Frame::Message(Payload(Encoded::Json(data))),
                    JsonFrame::Strict { id, data } => Frame::Strict {
                        id,
                        data: Payload(Encoded::Json(data)),
                    },
                    JsonFrame::StrictAck { id, outcome } => Frame::StrictAck { id, outcome },
                    JsonFrame::Request { id, data } => Frame::Request {
                        id,
                        data: Payload(Encoded::Json(data)),
                    },
                    JsonFrame::Reply { id, ok, data } => Frame::Reply {
                        id,
                        ok,
                        data: Payload(Encoded::Json(data)),
                    },
                })
            }
        }
    }
}

/// How the connection ended, once it has.
#[derive(Debug, Clone)]
enum Closed {
    Clean,
    Broken(String),
}

/// A request handler with its types erased.
type Handler = Arc<dyn Fn(&Payload) -> Result<Payload, String> + Send + Sync>;

/// Where incoming requests go once a handler is registered: its thread.
type HandlerQueue = crossbeam_channel::Sender<(u64, Payload)>;

#[derive(Default)]
struct State {
    /// Messages received and not yet taken, in arrival order.
    inbox: VecDeque<Payload>,
    /// Every message received, when the link keeps a log (`ipc_output`).
    log: Option<Vec<Payload>>,
    /// Readers blocked waiting for a message.
    listening: usize,
    closed: Option<Closed>,
    /// Our requests waiting for their reply.
    requests: HashMap<u64, Option<Result<Payload, LinkError>>>,
    /// Our strict sends waiting for their acknowledgement.
    stricts: HashMap<u64, Option<Result<(), LinkError>>>,
    /// Requests from the peer not yet taken (no handler registered).
    incoming: VecDeque<(u64, Payload)>,
    handler: Option<HandlerQueue>,
}

struct Inner {
    /// The link's sender, held strongly only by the [`Link`]: dropping the
    /// link drops it, which tells the peer (EOF) even while the reader
    /// thread still runs.
    tx: std::sync::Weak<IpcSender>,
    codec: Codec,
    state: Mutex<State>,
    cv: Condvar,
    next_id: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>, deadline: Option<Instant>) -> (MutexGuard<'a, State>, bool) {
        match deadline {
            None => (self.cv.wait(g).unwrap_or_else(|p| p.into_inner()), false),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (g, true);
                }
                let (g, r) = self
                    .cv
                    .wait_timeout(g, d - now)
                    .unwrap_or_else(|p| p.into_inner());
                (g, r.timed_out() && Instant::now() >= d)
            }
        }
    }

    fn send(&self, f: &Frame) -> Result<(), LinkError> {
        let bytes = f.encode(self.codec)?;
        let Some(tx) = self.tx.upgrade() else {
            return Err(LinkError::Disconnected);
        };
        tx.send_bytes(&bytes).map_err(|e| match e {
            crate::error::SendError::Disconnected => LinkError::Disconnected,
            e => LinkError::Broken(e.to_string()),
        })
    }

    fn closed_error(c: &Closed) -> LinkError {
        match c {
            Closed::Clean => LinkError::Disconnected,
            Closed::Broken(why) => LinkError::Broken(why.clone()),
        }
    }

    /// Sends a reply to request `id`.
    fn reply(&self, id: u64, result: Result<Payload, String>) -> Result<(), LinkError> {
        let (ok, data) = match result {
            Ok(p) => (true, p),
            Err(why) => (false, Payload::encode(self.codec, &why)?),
        };
        self.send(&Frame::Reply { id, ok, data })
    }
}

/// A conversation over one connection. Cheap to share between threads
/// (`&Link` is enough for every operation).
pub struct Link {
    inner: Arc<Inner>,
    /// `None` once this side has stopped sending (`close_sending`).
    tx: Option<Arc<IpcSender>>,
    reader: Option<JoinHandle<()>>,
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

    /// Starts a conversation on `ipc` with frames in `codec`.
    pub fn with_codec(ipc: Ipc, codec: Codec) -> Link {
        Link::build(ipc, codec, false)
    }

    /// Like [`with_codec`](Self::with_codec), also keeping every message
    /// received for [`received`](Self::received) (execa's `ipcOutput`).
    pub fn with_log(ipc: Ipc, codec: Codec) -> Link {
        Link::build(ipc, codec, true)
    }

    fn build(ipc: Ipc, codec: Codec, log: bool) -> Link {
        // The link's own ref stands for the connection in its runtime.
        ipc.unref();
        let (tx, rx) = ipc.split();
        let tx = Arc::new(tx);
        let inner = Arc::new(Inner {
            tx: Arc::downgrade(&tx),
            codec,
            state: Mutex::new(State {
                log: log.then(Vec::new),
                ..State::default()
            }),
            cv: Condvar::new(),
            next_id: AtomicU64::new(1),
        });
        let inner2 = inner.clone();
        let reader = std::thread::Builder::new()
            .name("portpool-link".into())
            .spawn(move || read_loop(&inner2, rx));
        let reader = match reader {
            Ok(h) => Some(h),
            Err(e) => {
                inner.lock().closed = Some(Closed::Broken(format!("could not start the reader thread: {e}")));
                None
            }
        };
        Link {
            inner,
            tx: Some(tx),
            reader,
            rt_ref: Runtime::global().new_ref(),
        }
    }

    /// Connects the port this process was started with
    /// ([`Port::from_env`](crate::port::Port::from_env)) and starts a
    /// conversation on it: the child side of a
    /// [`Subprocess`](crate::subprocess::Subprocess).
    pub fn from_env(codec: Codec) -> std::io::Result<Link> {
        let ipc = crate::port::Port::from_env()?.connect()?;
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
        let p = Payload::encode(self.inner.codec, msg)?;
        self.inner.send(&Frame::Message(p))
    }

    /// Sends a message that must be received by a peer waiting for one
    /// (in `get_one_message`, `get_one_message_where` or `each_message`).
    /// Returns once the peer took it; fails with `NotListening` if it was
    /// not waiting (the message is dropped), `PeerExited` if it went away
    /// first, `Deadlock` if it was itself strict-sending to us.
    pub fn send_message_strict<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), LinkError> {
        let data = Payload::encode(self.inner.codec, msg)?;
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
        let mut st = self.inner.lock();
        loop {
            if let Some(Some(r)) = st.stricts.get(&id) {
                let r = r.clone();
                st.stricts.remove(&id);
                return r;
            }
            st = self.inner.wait(st, None).0;
        }
    }

    /// Waits for the next message.
    pub fn get_one_message<T: DeserializeOwned>(&self) -> Result<T, LinkError> {
        self.get_one(None, |_: &T| true)
    }

    /// Waits for the next message that decodes as `T` and passes `filter`.
    /// Other messages stay, in order, for later readers.
    pub fn get_one_message_where<T: DeserializeOwned>(
        &self,
        filter: impl Fn(&T) -> bool,
    ) -> Result<T, LinkError> {
        self.get_one(None, filter)
    }

    /// Like [`get_one_message`](Self::get_one_message), giving up with
    /// `Timeout` after `timeout`.
    pub fn get_one_message_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, LinkError> {
        self.get_one(Some(Instant::now() + timeout), |_: &T| true)
    }

    fn get_one<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        filter: impl Fn(&T) -> bool,
    ) -> Result<T, LinkError> {
        let mut st = self.inner.lock();
        loop {
            let mut found = None;
            let mut first_err = None;
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
                return Ok(v);
            }
            if let Some(c) = &st.closed {
                // A lone message of another type, with nothing else coming:
                // report why it did not match rather than "disconnected".
                return Err(match (first_err, st.inbox.len()) {
                    (Some(e), 1) => e,
                    _ => Inner::closed_error(c),
                });
            }
            st.listening += 1;
            let (g, timed_out) = self.inner.wait(st, deadline);
            st = g;
            st.listening -= 1;
            if timed_out {
                return Err(LinkError::Timeout);
            }
        }
    }

    /// Every message, as it comes; the iterator ends when the peer
    /// disconnects cleanly and yields an error (then ends) if the
    /// connection breaks or a message does not decode as `T`.
    pub fn each_message<T: DeserializeOwned>(&self) -> EachMessage<'_, T> {
        EachMessage {
            link: self,
            done: false,
            _t: PhantomData,
        }
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
        self.request_until(req, Some(Instant::now() + timeout))
    }

    fn request_until<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        req: &Req,
        deadline: Option<Instant>,
    ) -> Result<Resp, LinkError> {
        let data = Payload::encode(self.inner.codec, req)?;
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
        let mut st = self.inner.lock();
        loop {
            if let Some(Some(_)) = st.requests.get(&id) {
                let r = st.requests.remove(&id).flatten();
                return match r {
                    Some(Ok(p)) => p.decode(),
                    Some(Err(e)) => Err(e),
                    None => Err(LinkError::Broken("a reply vanished".into())),
                };
            }
            let (g, timed_out) = self.inner.wait(st, deadline);
            st = g;
            if timed_out {
                // A late reply finds no entry and is dropped.
                st.requests.remove(&id);
                return Err(LinkError::Timeout);
            }
        }
    }

    /// Answers the peer's requests of type `Req` with `f`, on a thread of
    /// its own, in arrival order (requests already queued included). An
    /// `Err` (or a panic) reaches the requester as [`LinkError::Failed`].
    /// The handler may itself make requests on this link.
    pub fn on_request<Req, Resp, F>(&self, f: F)
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req) -> Result<Resp, String> + Send + Sync + 'static,
    {
        let codec = self.inner.codec;
        let h: Handler = Arc::new(move |p: &Payload| {
            let req: Req = p.decode().map_err(|e| e.to_string())?;
            let resp = f(req)?;
            Payload::encode(codec, &resp).map_err(|e| e.to_string())
        });
        let (qtx, qrx) = crossbeam_channel::unbounded::<(u64, Payload)>();
        {
            let mut st = self.inner.lock();
            for r in st.incoming.drain(..) {
                let _ = qtx.send(r);
            }
            if st.closed.is_none() {
                st.handler = Some(qtx);
            }
        }
        // The thread ends when the link closes (the queue's sender is
        // dropped then) and the queue is empty.
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("portpool-link-handler".into())
            .spawn(move || {
                for (id, p) in qrx {
                    let reply = match crate::job::catch(|| h(&p)) {
                        Ok(r) => r,
                        Err(f) => Err(format!("the request handler panicked: {f:?}")),
                    };
                    if let Err(e) = inner.reply(id, reply) {
                        log::debug!("reply to request {id} not sent: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("could not start a request handler thread: {e}");
            self.inner.lock().handler = None;
        }
    }

    /// Waits for the next request from the peer (when no handler is
    /// registered); answer it with [`IncomingRequest::reply`].
    pub fn next_request<Req: DeserializeOwned>(&self) -> Result<IncomingRequest<Req>, LinkError> {
        let mut st = self.inner.lock();
        loop {
            if let Some((id, p)) = st.incoming.pop_front() {
                drop(st);
                let value = match p.decode::<Req>() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = self.inner.reply(id, Err(e.to_string()));
                        return Err(e);
                    }
                };
                return Ok(IncomingRequest {
                    id,
                    value,
                    inner: self.inner.clone(),
                });
            }
            if let Some(c) = &st.closed {
                return Err(Inner::closed_error(c));
            }
            st = self.inner.wait(st, None).0;
        }
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
        let mut st = self.inner.lock();
        while st.closed.is_none() {
            st = self.inner.wait(st, None).0;
        }
    }

    /// Keeps the link's [`Runtime`] running (the default).
    pub fn ref_(&self) {
        self.rt_ref.ref_();
    }

    /// Lets the link's runtime's `run` return while the link is open.
    pub fn unref(&self) {
        self.rt_ref.unref();
    }

    /// Whether the link holds a ref on its runtime.
    pub fn has_ref(&self) -> bool {
        self.rt_ref.has_ref()
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
        // the peer reads EOF. The reader thread ends when the peer closes
        // too; it is not waited for, so a peer that keeps its end open
        // cannot hang this drop.
        self.reader.take();
        let _ = &self.tx;
    }
}

/// A request from the peer, to answer with [`reply`](Self::reply).
pub struct IncomingRequest<Req> {
    id: u64,
    /// The request.
    pub value: Req,
    inner: Arc<Inner>,
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
            Ok(r) => Ok(Payload::encode(self.inner.codec, &r)?),
            Err(why) => Err(why),
        };
        self.inner.reply(self.id, payload)
    }
}

/// The iterator of [`Link::each_message`].
pub struct EachMessage<'l, T> {
    link: &'l Link,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for EachMessage<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EachMessage").field("done", &self.done).finish()
    }
}

impl<T: DeserializeOwned> Iterator for EachMessage<'_, T> {
    type Item = Result<T, LinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let inner = &self.link.inner;
        let mut st = inner.lock();
        loop {
            if let Some(p) = st.inbox.pop_front() {
                let r = p.decode::<T>();
                self.done = r.is_err();
                return Some(r);
            }
            match &st.closed {
                Some(Closed::Clean) => {
                    self.done = true;
                    return None;
                }
                Some(c) => {
                    self.done = true;
                    return Some(Err(Inner::closed_error(c)));
                }
                None => {}
            }
            st.listening += 1;
            st = inner.wait(st, None).0;
            st.listening -= 1;
        }
    }
}

/// Sorts incoming frames until the connection ends.
fn read_loop(inner: &Inner, mut rx: IpcReceiver) {
    rx.unref();
    let mut buf = Vec::new();
    let closed = loop {
        match rx.recv_bytes_into(&mut buf) {
            Ok(_) => {}
            Err(e) if e.is_disconnected() => break Closed::Clean,
            Err(e) => break Closed::Broken(e.to_string()),
        }
        let frame = match Frame::decode(inner.codec, &buf) {
            Ok(f) => f,
            Err(e) => break Closed::Broken(format!("the peer sent a malformed frame: {e}")),
        };
        handle(inner, frame);
    };
    let mut st = inner.lock();
    for r in st.requests.values_mut() {
        r.get_or_insert_with(|| Err(Inner::closed_error(&closed)));
    }
    for s in st.stricts.values_mut() {
        s.get_or_insert(Err(match &closed {
            Closed::Clean => LinkError::PeerExited,
            c => Inner::closed_error(c),
        }));
    }
    st.closed = Some(closed);
    // The handler thread ends once it has answered what it holds.
    st.handler = None;
    inner.cv.notify_all();
}

fn handle(inner: &Inner, frame: Frame) {
    match frame {
        Frame::Message(p) => {
            let mut st = inner.lock();
            if let Some(log) = &mut st.log {
                log.push(p.clone());
            }
            st.inbox.push_back(p);
            inner.cv.notify_all();
        }
        Frame::Strict { id, data } => {
            let outcome = {
                let mut st = inner.lock();
                if st.listening > 0 {
                    if let Some(log) = &mut st.log {
                        log.push(data.clone());
                    }
                    st.inbox.push_back(data);
                    inner.cv.notify_all();
                    StrictOutcome::Delivered
                } else if st.stricts.values().any(Option::is_none) {
                    // We are blocked strict-sending to the peer, which is
                    // blocked strict-sending to us (scenario "deadlock").
                    StrictOutcome::Deadlock
                } else {
                    StrictOutcome::NotListening
                }
            };
            if let Err(e) = inner.send(&Frame::StrictAck { id, outcome }) {
                log::debug!("strict ack {id} not sent: {e}");
            }
        }
        Frame::StrictAck { id, outcome } => {
            let mut st = inner.lock();
            if let Some(slot) = st.stricts.get_mut(&id) {
                *slot = Some(match outcome {
                    StrictOutcome::Delivered => Ok(()),
                    StrictOutcome::NotListening => Err(LinkError::NotListening),
                    StrictOutcome::Deadlock => Err(LinkError::Deadlock),
                });
                inner.cv.notify_all();
            }
        }
        Frame::Request { id, data } => {
            let mut st = inner.lock();
            let unsent = match &st.handler {
                Some(q) => q.send((id, data)).err().map(|e| e.0),
                None => Some((id, data)),
            };
            if let Some(r) = unsent {
                st.incoming.push_back(r);
                inner.cv.notify_all();
            }
        }
        Frame::Reply { id, ok, data } => {
            let mut st = inner.lock();
            if let Some(slot) = st.requests.get_mut(&id) {
                *slot = Some(if ok {
                    Ok(data)
                } else {
                    Err(LinkError::Failed(
                        data.decode::<String>()
                            .unwrap_or_else(|e| format!("(undecodable failure: {e})")),
                    ))
                });
                inner.cv.notify_all();
            }
        }
    }
}
