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
//! (`docs/protocol.md`).
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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::port::{Ipc, IpcReceiver, IpcSender};
use crate::runtime::{RefCount, Runtime};
use crate::transport::Wait;

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

/// How long the background thread leaves reading to callers before it
/// looks whether any is left: the longest a strict message or a request
/// waits for an answer after the last caller left the link.
const BACKGROUND_NAP: Duration = Duration::from_millis(2);

/// How long a thread that wants to read waits, spinning, for the reader in
/// turn to hand the receiver back before it sleeps on the condvar.
const HANDOFF_SPIN: Duration = Duration::from_micros(20);

#[derive(Default)]
struct State {
    /// The receiving half, here when no thread is reading (scenario
    /// "whoever waits reads" in the module docs).
    rx: Option<IpcReceiver>,
    /// Threads inside a link call that waits for something.
    waiters: usize,
    /// Of those, the ones asleep on the condvar (the others read or spin).
    sleepers: usize,
    /// Messages received and not yet taken, in arrival order.
    inbox: VecDeque<Payload>,
    /// Every message received, when the link keeps a log (`ipc_output`).
    log: Option<Vec<Payload>>,
    /// Readers waiting for a message.
    listening: usize,
    closed: Option<Closed>,
    /// Our requests waiting for their reply.
    requests: HashMap<u64, Option<Result<Payload, LinkError>>>,
    /// Our strict sends waiting for their acknowledgement.
    stricts: HashMap<u64, Option<Result<(), LinkError>>>,
    /// Requests from the peer not yet taken (no handler registered).
    incoming: VecDeque<(u64, Payload)>,
    handler: Option<Handler>,
}

struct Inner {
    /// The link's sender, held strongly only by the [`Link`]: dropping the
    /// link drops it, which tells the peer (EOF) even while the background
    /// thread still runs.
    tx: std::sync::Weak<IpcSender>,
    codec: Codec,
    state: Mutex<State>,
    /// Callers waiting for data or for the receiver.
    cv: Condvar,
    /// The background thread, waiting for its turn to read.
    bg_cv: Condvar,
    next_id: AtomicU64,
}

/// What a frame asks of the thread that read it, once the lock is released.
enum Action {
    Ack(u64, StrictOutcome),
    Handle(Handler, u64, Payload),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Waits until `check` yields a result (it is called with the lock held
    /// and must yield once the link is closed), or until `deadline`
    /// (`Timeout`). While it waits, the calling thread reads frames itself
    /// whenever no other thread is reading: the reply a caller waits for
    /// is read by that caller, without a hand-off between threads.
    fn wait_for<R>(
        &self,
        deadline: Option<Instant>,
        listening: bool,
        mut check: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<R, LinkError> {
        let mut st = self.lock();
        st.waiters += 1;
        if listening {
            st.listening += 1;
        }
        let mut buf = Vec::new();
        let mut spun = false;
        let out = loop {
            // (Checked again after every read and after the hand-off spin,
            // with the lock held up to the sleep: nothing filed for us can
            // slip between the check and the wait.)
            if let Some(r) = check(&mut st) {
                break Ok(r);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Err(LinkError::Timeout);
            }
            if let Some(c) = &st.closed {
                break Err(Inner::closed_error(c));
            }
            if let Some(mut rx) = st.rx.take() {
                drop(st);
                let res = rx.recv_message_wait(&mut buf, deadline.map_or(Wait::Forever, Wait::Until));
                st = self.lock();
                st.rx = Some(rx);
                let actions = self.absorb(&mut st, res, &buf);
                self.wake(&st);
                if !actions.is_empty() {
                    drop(st);
                    self.run(actions);
                    st = self.lock();
                }
                spun = false;
                continue;
            }
            if !spun {
                // Another thread reads: spin briefly for it to hand over
                // (it often is about to), then check again.
                drop(st);
                let spin_until = Instant::now() + HANDOFF_SPIN;
                loop {
                    std::thread::yield_now();
                    st = self.lock();
                    if st.rx.is_some() || Instant::now() >= spin_until {
                        break;
                    }
                    drop(st);
                }
                spun = true;
                continue;
            }
            // Sleep until the reader files something or hands over.
            st.sleepers += 1;
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.cv
                        .wait_timeout(st, left)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0)
                }
            };
            st.sleepers -= 1;
            spun = false;
        };
        if listening {
            st.listening -= 1;
        }
        st.waiters -= 1;
        // Frames a read pulled in beyond ours wait in the receiver's
        // buffer, where nobody sleeping on the fd would see them: file them
        // before leaving (a strict message or a request may be among them).
        let st = self.drain_buffered(st, &mut buf);
        if st.waiters == 0 && st.closed.is_some() {
            self.bg_cv.notify_all();
        }
        drop(st);
        out
    }

    /// Files every frame already in the receiver's buffer (no waiting).
    fn drain_buffered<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        buf: &mut Vec<u8>,
    ) -> MutexGuard<'a, State> {
        loop {
            if st.closed.is_some() {
                return st;
            }
            let Some(mut rx) = st.rx.take() else {
                return st;
            };
            if !rx.has_buffered_frame() {
                st.rx = Some(rx);
                return st;
            }
            drop(st);
            let res = rx.recv_message_wait(buf, Wait::Now);
            st = self.lock();
            st.rx = Some(rx);
            let actions = self.absorb(&mut st, res, buf);
            self.wake(&st);
            if !actions.is_empty() {
                drop(st);
                self.run(actions);
                st = self.lock();
            }
        }
    }

    /// After a read: wakes the callers asleep on the condvar (their data,
    /// or the receiver, may be here now). A read that ended the link wakes
    /// the background thread too.
    fn wake(&self, st: &State) {
        if st.sleepers > 0 {
            self.cv.notify_all();
        }
        if st.closed.is_some() {
            self.bg_cv.notify_all();
        }
    }

    /// Files what a read returned (a frame, nothing, or the end).
    fn absorb(&self, st: &mut State, res: Result<bool, crate::error::RecvError>, buf: &[u8]) -> Vec<Action> {
        match res {
            Ok(true) => match Frame::decode(self.codec, buf) {
                Ok(f) => self.file(st, f).into_iter().collect(),
                Err(e) => {
                    Self::close(
                        st,
                        Closed::Broken(format!("the peer sent a malformed frame: {e}")),
                    );
                    Vec::new()
                }
            },
            Ok(false) => Vec::new(),
            Err(e) if e.is_disconnected() => {
                Self::close(st, Closed::Clean);
                Vec::new()
            }
            Err(crate::error::RecvError::Unexpected { found, .. }) => {
                Self::close(
                    st,
                    Closed::Broken(format!(
                        "the peer sent a port (a frame of kind {}), which a conversation does not take",
                        found as u8
                    )),
                );
                Vec::new()
            }
            Err(e) => {
                Self::close(st, Closed::Broken(e.to_string()));
                Vec::new()
            }
        }
    }

    fn close(st: &mut State, closed: Closed) {
        if st.closed.is_some() {
            return;
        }
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
    }

    /// Files one frame; returns what must be done outside the lock.
    fn file(&self, st: &mut State, frame: Frame) -> Option<Action> {
        match frame {
            Frame::Message(p) => {
                if let Some(log) = &mut st.log {
                    log.push(p.clone());
                }
                st.inbox.push_back(p);
                None
            }
            Frame::Strict { id, data } => {
                let outcome = if st.listening > 0 {
                    if let Some(log) = &mut st.log {
                        log.push(data.clone());
                    }
                    st.inbox.push_back(data);
                    StrictOutcome::Delivered
                } else if st.stricts.values().any(Option::is_none) {
                    // We are blocked strict-sending to the peer, which is
                    // blocked strict-sending to us (scenario "deadlock").
                    StrictOutcome::Deadlock
                } else {
                    StrictOutcome::NotListening
                };
                Some(Action::Ack(id, outcome))
            }
            Frame::StrictAck { id, outcome } => {
                if let Some(slot) = st.stricts.get_mut(&id) {
                    *slot = Some(match outcome {
                        StrictOutcome::Delivered => Ok(()),
                        StrictOutcome::NotListening => Err(LinkError::NotListening),
                        StrictOutcome::Deadlock => Err(LinkError::Deadlock),
                    });
                }
                None
            }
            Frame::Request { id, data } => match &st.handler {
                Some(h) => Some(Action::Handle(h.clone(), id, data)),
                None => {
                    st.incoming.push_back((id, data));
                    None
                }
            },
            Frame::Reply { id, ok, data } => {
                if let Some(slot) = st.requests.get_mut(&id) {
                    *slot = Some(if ok {
                        Ok(data)
                    } else {
                        Err(LinkError::Failed(
                            data.decode::<String>()
                                .unwrap_or_else(|e| format!("(undecodable failure: {e})")),
                        ))
                    });
                }
                None
            }
        }
    }

    fn run(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Ack(id, outcome) => {
                    if let Err(e) = self.send(&Frame::StrictAck { id, outcome }) {
                        log::debug!("strict ack {id} not sent: {e}");
                    }
                }
                Action::Handle(h, id, p) => {
                    let reply = match crate::util::catch_panic(|| h(&p)) {
                        Ok(r) => r,
                        Err(m) => Err(format!("the request handler panicked: {m}")),
                    };
                    if let Err(e) = self.reply(id, reply) {
                        log::debug!("reply to request {id} not sent: {e}");
                    }
                }
            }
        }
    }
}

/// The background thread: reads whenever no caller does, so that strict
/// messages are acknowledged, requests answered and the end noticed even
/// while nobody waits on the link. It never holds the receiver while
/// sleeping: it waits for readability on a duplicate of the fd.
fn background(inner: &Inner, fd: Option<Arc<std::os::fd::OwnedFd>>) {
    let mut buf = Vec::new();
    let mut st = inner.lock();
    loop {
        if st.closed.is_some() {
            break;
        }
        if st.waiters > 0 {
            // Callers read for themselves. Waking this thread each time the
            // last of them leaves would cost every call a wake-up, so it
            // looks again after `BACKGROUND_NAP` instead.
            st = inner
                .bg_cv
                .wait_timeout(st, BACKGROUND_NAP)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            continue;
        }
        if st.rx.is_none() {
            // Only callers take the receiver, and they are gone: it is on
            // its way back.
            st = inner
                .bg_cv
                .wait_timeout(st, BACKGROUND_NAP)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            continue;
        }
        let Some(mut rx) = st.rx.take() else { continue };
        drop(st);
        let res = rx.recv_message_wait(&mut buf, Wait::Now);
        st = inner.lock();
        st.rx = Some(rx);
        let got = matches!(res, Ok(true));
        let actions = inner.absorb(&mut st, res, &buf);
        inner.wake(&st);
        if !actions.is_empty() {
            drop(st);
            inner.run(actions);
            st = inner.lock();
        }
        if got || st.closed.is_some() {
            continue;
        }
        // Nothing buffered: sleep until the fd is readable, without the
        // receiver (a caller may take it and read meanwhile).
        drop(st);
        match &fd {
            Some(fd) => {
                if let Err(e) = crate::sys::poll_readable(std::os::fd::AsFd::as_fd(&**fd), None) {
                    log::debug!("link: waiting for data failed ({e}); stopping the background reader");
                    return;
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
        st = inner.lock();
    }
    inner.cv.notify_all();
    inner.bg_cv.notify_all();
}

/// A conversation over one connection. Cheap to share between threads
/// (`&Link` is enough for every operation).
pub struct Link {
    inner: Arc<Inner>,
    /// `None` once this side has stopped sending (`close_sending`).
    tx: Option<Arc<IpcSender>>,
    /// The duplicate fd the background thread sleeps on.
    wake_fd: Option<Arc<std::os::fd::OwnedFd>>,
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
        let fd = match rx.dup_fd() {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                log::warn!(
                    "link: could not duplicate the connection's fd ({e}); the background reader polls"
                );
                None
            }
        };
        let tx = Arc::new(tx);
        let inner = Arc::new(Inner {
            tx: Arc::downgrade(&tx),
            codec,
            state: Mutex::new(State {
                rx: Some(rx),
                log: log.then(Vec::new),
                ..State::default()
            }),
            cv: Condvar::new(),
            bg_cv: Condvar::new(),
            next_id: AtomicU64::new(1),
        });
        let inner2 = inner.clone();
        // Not joined: the thread ends with the connection (see `Drop`).
        let spawned = std::thread::Builder::new().name("portpool-link".into()).spawn({
            let fd = fd.clone();
            move || background(&inner2, fd)
        });
        if let Err(e) = spawned {
            Inner::close(
                &mut inner.lock(),
                Closed::Broken(format!("could not start the link's thread: {e}")),
            );
        }
        Link {
            inner,
            tx: Some(tx),
            wake_fd: fd,
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
        self.inner.wait_for(None, false, |st| match st.stricts.get(&id) {
            Some(Some(_)) => st.stricts.remove(&id).flatten(),
            Some(None) => None,
            None => Some(Err(LinkError::Broken("a strict send vanished".into()))),
        })?
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
        self.get_one(crate::util::deadline(timeout), |_: &T| true)
    }

    fn get_one<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        filter: impl Fn(&T) -> bool,
    ) -> Result<T, LinkError> {
        self.inner.wait_for(deadline, true, |st| {
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
            // A lone message of another type, with nothing else coming:
            // report why it did not match rather than "disconnected".
            Some(Err(match (first_err, st.inbox.len()) {
                (Some(e), 1) => e,
                _ => Inner::closed_error(c),
            }))
        })?
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
        self.request_until(req, crate::util::deadline(timeout))
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
        let codec = self.inner.codec;
        let h: Handler = Arc::new(move |p: &Payload| {
            let req: Req = p.decode().map_err(|e| e.to_string())?;
            let resp = f(req)?;
            Payload::encode(codec, &resp).map_err(|e| e.to_string())
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
        // the peer reads EOF. Shutting down our reading side makes the
        // background thread see the end at once (sockets; over pipes it
        // ends when the peer closes), so it does not outlive the link
        // waiting for a peer that keeps its end open. It is not joined:
        // it may be inside a request handler.
        self.tx.take();
        if let Some(fd) = &self.wake_fd {
            crate::sys::shutdown_read(std::os::fd::AsFd::as_fd(&**fd));
        }
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
#[must_use = "messages are read only while the iterator is iterated"]
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
