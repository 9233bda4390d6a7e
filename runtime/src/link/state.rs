//! The protocol state machine behind a `Link`: what was received and
//! filed, who waits for what, and how its waiters and its background
//! thread take turns on the shared receiver (`port::shared`): a caller
//! that waits reads the connection itself while no other thread does; the
//! background thread reads only when nobody waits.

use super::*;

/// How the connection ended, once it has.
#[derive(Debug, Clone)]
pub(super) enum Closed {
    Clean,
    Broken(String),
}

/// A request handler with its types erased.
pub(super) type Handler = Arc<dyn Fn(&Payload) -> Result<Payload, String> + Send + Sync>;

use crate::port::shared::{Reader, SharedReceiver, Step, Turn};

#[derive(Default)]
pub(super) struct State {
    /// Threads inside a link call that waits for something.
    pub(super) waiters: usize,
    /// Of those, the ones asleep on the condvar (the others read or spin).
    pub(super) sleepers: usize,
    /// Messages received and not yet taken, in arrival order.
    pub(super) inbox: VecDeque<Payload>,
    /// Every message received, when the link keeps a log (`ipc_output`).
    pub(super) log: Option<Vec<Payload>>,
    /// Readers waiting for a message.
    pub(super) listening: usize,
    pub(super) closed: Option<Closed>,
    /// Our requests waiting for their reply.
    pub(super) requests: HashMap<u64, Option<Result<Payload, LinkError>>>,
    /// Our strict sends waiting for their acknowledgement.
    pub(super) stricts: HashMap<u64, Option<Result<(), LinkError>>>,
    /// Requests from the peer not yet taken (no handler registered).
    pub(super) incoming: VecDeque<(u64, Payload)>,
    pub(super) handler: Option<Handler>,
    /// Futures waiting on the link (`link::future`), woken after every
    /// read that filed something and when the link ends.
    pub(super) wakers: Vec<std::task::Waker>,
    /// Strict messages filed whose acknowledgement is not sent yet: a
    /// dropped link sends them first (else the peer, told of our exit
    /// instead, would report a delivered message as lost).
    pub(super) acks_due: usize,
}

impl State {
    /// Registers a future's waker (once, however often it is polled).
    pub(super) fn register(&mut self, w: &std::task::Waker) {
        if !self.wakers.iter().any(|old| old.will_wake(w)) {
            self.wakers.push(w.clone());
        }
    }
}

pub(super) struct Inner {
    /// The link's sender, held strongly only by the [`Link`]: dropping the
    /// link drops it, which tells the peer (EOF) even while the background
    /// thread still runs.
    pub(super) tx: std::sync::Weak<IpcSender>,
    /// Why the link is broken from the start (a connection opened for the
    /// other codec): nothing is ever sent.
    pub(super) refused: Option<String>,
    /// The connection's transport, as it was set up.
    pub(super) transport: &'static str,
    pub(super) codec: Codec,
    /// Whether values' buffers travel (postcard over a connection that
    /// passes fds): then their files go beside the frames.
    pub(super) files: bool,
    pub(super) state: Mutex<State>,
    /// Callers waiting for data or for the receiver.
    pub(super) cv: Condvar,
    /// The receiving half (scenario "whoever waits reads" in the module
    /// docs). Its turn is given back with `state` locked, so a caller that
    /// checks, finds it taken and sleeps on `cv` is always woken.
    pub(super) shared: SharedReceiver,
    pub(super) next_id: AtomicU64,
}

/// What a frame asks of the thread that read it, once the lock is released.
pub(super) enum Action {
    Ack(u64, StrictOutcome),
    Handle(Handler, u64, Payload),
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes a value to send (its buffers' files kept with it).
    pub(super) fn encode<T: Serialize + ?Sized>(&self, v: &T) -> Result<Payload, LinkError> {
        Payload::encode_for(self.codec, v, self.files)
    }

    pub(super) fn send(&self, f: &Frame) -> Result<(), LinkError> {
        if let Some(why) = &self.refused {
            return Err(LinkError::Broken(why.clone()));
        }
        let bytes = f.encode(self.codec)?;
        let Some(tx) = self.tx.upgrade() else {
            return Err(LinkError::Disconnected);
        };
        let files = f.files();
        let sent = match files.is_empty() {
            true => tx.send_bytes(&bytes),
            false => tx.send_raw_with_fds(&bytes, files),
        };
        sent.map_err(|e| match e {
            crate::error::SendError::Disconnected => LinkError::Disconnected,
            // (More buffers than a frame carries: this value only.)
            e @ crate::error::SendError::Unsupported(_) => LinkError::Codec(e.to_string()),
            e => LinkError::Broken(e.to_string()),
        })
    }

    pub(super) fn closed_error(c: &Closed) -> LinkError {
        match c {
            Closed::Clean => LinkError::Disconnected,
            Closed::Broken(why) => LinkError::Broken(why.clone()),
        }
    }

    /// Sends a reply to request `id`.
    pub(super) fn reply(&self, id: u64, result: Result<Payload, String>) -> Result<(), LinkError> {
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
    pub(super) fn wait_for<R>(
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
            if let Some(turn) = self.shared.try_turn() {
                let wait = deadline.map_or(Wait::Forever, Wait::Until);
                st = self.read_turn(st, turn, &mut buf, wait).0;
                spun = false;
                continue;
            }
            if !spun {
                // Another thread reads: spin briefly for it to hand over
                // (it often is about to), then check again.
                drop(st);
                self.shared.wait_free();
                st = self.lock();
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
            self.shared.wake_background();
        }
        drop(st);
        out
    }

    /// Files every frame already in the receiver's buffer (no waiting).
    pub(super) fn drain_buffered<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        buf: &mut Vec<u8>,
    ) -> MutexGuard<'a, State> {
        while st.closed.is_none() && self.shared.has_buffered_frame() {
            let Some(turn) = self.shared.try_turn() else {
                break;
            };
            st = self.read_turn(st, turn, buf, Wait::Now).0;
        }
        st
    }

    /// One turn on the shared receiver: reads one frame (waiting as told)
    /// without the lock, gives the turn back with the lock held, files
    /// what came, wakes whom it concerns, and runs what the frame asks
    /// (acks, request handlers) outside the lock. Returns the lock again
    /// and whether a frame was read.
    pub(super) fn read_turn<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        mut turn: Turn<'_>,
        buf: &mut Vec<u8>,
        wait: Wait,
    ) -> (MutexGuard<'a, State>, bool) {
        drop(st);
        let res = turn.recv_message_wait_with_fds(buf, wait);
        let mut st = self.lock();
        drop(turn);
        let got = matches!(res, Ok(Some(_)));
        let actions = self.absorb(&mut st, res, buf);
        self.wake(&st);
        // Futures are woken outside the lock: an executor may poll inline.
        let wakers = std::mem::take(&mut st.wakers);
        if !actions.is_empty() || !wakers.is_empty() {
            drop(st);
            wakers.into_iter().for_each(std::task::Waker::wake);
            self.run(actions);
            st = self.lock();
        }
        (st, got)
    }

    /// After a read: wakes the callers asleep on the condvar (their data,
    /// or the receiver, may be here now). A read that ended the link wakes
    /// the background thread too.
    pub(super) fn wake(&self, st: &State) {
        if st.sleepers > 0 {
            self.cv.notify_all();
        }
        if st.closed.is_some() {
            self.shared.wake_background();
        }
    }

    /// Files what a read returned (a frame, nothing, or the end).
    pub(super) fn absorb(
        &self,
        st: &mut State,
        res: Result<Option<Vec<std::os::fd::OwnedFd>>, crate::error::RecvError>,
        buf: &[u8],
    ) -> Vec<Action> {
        match res {
            Ok(Some(fds)) => match Frame::decode(self.codec, buf, fds) {
                Ok(f) => self.file(st, f).into_iter().collect(),
                Err(e) => {
                    Self::close(
                        st,
                        Closed::Broken(format!("the peer sent a malformed frame: {e}")),
                    );
                    Vec::new()
                }
            },
            Ok(None) => Vec::new(),
            // A frame cut short is not a clean end: the peer died or wrote
            // garbage mid-frame (docs/protocol.md, section 3).
            Err(e @ crate::error::RecvError::Truncated { .. }) => {
                Self::close(st, Closed::Broken(e.to_string()));
                Vec::new()
            }
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

    pub(super) fn close(st: &mut State, closed: Closed) {
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
    pub(super) fn file(&self, st: &mut State, frame: Frame) -> Option<Action> {
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
                st.acks_due += 1;
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
                        // A failure's data is a string; a JSON peer's
                        // other value is kept as its JSON text.
                        Err(LinkError::Failed(data.decode::<String>().unwrap_or_else(|e| {
                            data.json_text()
                                .unwrap_or_else(|| format!("(undecodable failure: {e})"))
                        })))
                    });
                }
                None
            }
        }
    }

    pub(super) fn run(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Ack(id, outcome) => {
                    if let Err(e) = self.send(&Frame::StrictAck { id, outcome }) {
                        log::debug!("strict ack {id} not sent: {e}");
                    }
                    let mut st = self.lock();
                    st.acks_due = st.acks_due.saturating_sub(1);
                    if st.acks_due == 0 {
                        self.cv.notify_all();
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
/// while nobody waits on the link (`SharedReceiver::background`).
pub(super) fn background(inner: &Inner) {
    struct Background<'a> {
        inner: &'a Inner,
        buf: Vec<u8>,
    }
    impl Reader for Background<'_> {
        fn done(&mut self) -> bool {
            self.inner.lock().closed.is_some()
        }
        fn waiters_read(&mut self) -> bool {
            // Callers read for themselves. Waking this thread each time the
            // last of them leaves would cost every call a wake-up, so it
            // looks again after a nap instead.
            self.inner.lock().waiters > 0
        }
        fn read(&mut self, turn: Turn<'_>, wait: Wait) -> Step {
            let st = self.inner.lock();
            let (st, got) = self.inner.read_turn(st, turn, &mut self.buf, wait);
            match (&st.closed, got) {
                (Some(_), _) => Step::End(None),
                (None, true) => Step::Frame,
                (None, false) => Step::Nothing,
            }
        }
    }
    inner.shared.background(
        &mut Background {
            inner,
            buf: Vec::new(),
        },
        Duration::ZERO,
    );
    inner.cv.notify_all();
    let wakers = std::mem::take(&mut inner.lock().wakers);
    wakers.into_iter().for_each(std::task::Waker::wake);
}
