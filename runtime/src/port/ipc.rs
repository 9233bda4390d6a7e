//! A connected port: typed messages (serde + postcard), raw bytes, and
//! ports, in both directions.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Port;
use crate::error::{
    DecodeError, EncodeError, ProtocolError, RecvError, RecvTimeoutError, SendError, TryRecvError,
};
use crate::frame::{Hello, Kind, Role};
use crate::transport::{AppendError, Reader, SendStats, Wait, Writer};

/// A connected port: send and receive typed messages, raw bytes and ports.
///
/// Messages arrive whole and in the order they were sent. [`split`](Ipc::split)
/// gives a sender half (cloneable, usable from many threads at once) and a
/// receiver half, so that one thread can block in `recv` while others send.
#[derive(Debug)]
pub struct Ipc {
    tx: IpcSender,
    pub(super) rx: IpcReceiver,
}

/// Why a message was not appended: its encoding failed, or it carries
/// buffers' fds and goes its own way.
enum Append {
    Encode(postcard::Error),
    WithFds(Vec<u8>, Vec<std::os::fd::OwnedFd>),
}

/// The sending half of an [`Ipc`]. Clones share the connection; frames from
/// concurrent senders are coalesced into as few writes as possible, and each
/// `send` returns only once its message has been handed to the kernel.
#[derive(Clone)]
pub struct IpcSender {
    writer: Writer,
    peer: Hello,
}

/// The receiving half of an [`Ipc`].
pub struct IpcReceiver {
    pub(super) reader: Reader,
    peer: Hello,
    /// The fds of the message frame at the front (from its `Fds` frame).
    attached: Vec<std::os::fd::OwnedFd>,
    /// This connection's place in its runtime's count (the receiving half
    /// holds it: a connection that can still receive keeps a loop alive).
    rt_ref: crate::runtime::RefCount,
}

impl fmt::Debug for IpcSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpcSender")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for IpcReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpcReceiver")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// [`IpcSender::send_port`] failed; the port is given back.
#[derive(Debug)]
pub struct SendPortError {
    /// The port that was not sent.
    pub port: Port,
    /// Why.
    pub error: SendError,
}

impl fmt::Display for SendPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not send a port: {}", self.error)
    }
}

impl std::error::Error for SendPortError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<SendPortError> for std::io::Error {
    fn from(e: SendPortError) -> Self {
        e.error.into()
    }
}

/// A postcard output that appends to a borrowed `Vec` (the pending buffer),
/// so a message is encoded straight into the bytes that will be written.
struct AppendFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendFlavor<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[inline]
pub(crate) fn encode_into<T: Serialize + ?Sized>(msg: &T, buf: &mut Vec<u8>) -> Result<(), postcard::Error> {
    postcard::serialize_with_flavor(msg, AppendFlavor(buf))
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, RecvError> {
    let fail = |reason: String| {
        RecvError::Decode(DecodeError {
            type_name: std::any::type_name::<T>(),
            len: payload.len(),
            reason,
        })
    };
    match postcard::take_from_bytes::<T>(payload) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(fail(format!("{} bytes left over after the value", rest.len()))),
        Err(e) => {
            // A buffer's refusal says more than postcard's "custom error".
            #[cfg(target_os = "linux")]
            if matches!(e, postcard::Error::SerdeDeCustom) {
                if let Some(why) = super::buffer::take_refusal() {
                    return Err(fail(why));
                }
            }
            Err(fail(e.to_string()))
        }
    }
}

impl IpcSender {
    /// Sends one message. Returns once the message has been handed to the
    /// kernel: it is delivered even if this process exits right after.
    pub fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), SendError> {
        let seq = self.feed_seq(msg)?;
        self.writer.flush_through(seq)
    }

    /// Queues one message without writing it; [`flush`](Self::flush) (or
    /// any later `send`) writes everything queued in one call.
    pub fn feed<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), SendError> {
        self.feed_seq(msg).map(drop)
    }

    fn feed_seq<T: Serialize + ?Sized>(&self, msg: &T) -> Result<u64, SendError> {
        self.append_encoded(std::any::type_name::<T>(), |buf| encode_into(msg, buf))
    }

    /// Queues one message made of two values encoded back to back (the
    /// receiver decodes the first, then the second from what is left).
    pub fn feed_pair<A, B>(&self, first: &A, second: &B) -> Result<(), SendError>
    where
        A: Serialize + ?Sized,
        B: Serialize + ?Sized,
    {
        self.append_encoded(std::any::type_name::<B>(), |buf| {
            encode_into(first, buf)?;
            encode_into(second, buf)
        })
        .map(drop)
    }

    /// Queues one message whose bytes `encode` appends (for callers that
    /// lay out a frame themselves, like a pool's chunk of jobs).
    pub(crate) fn feed_with(
        &self,
        type_name: &'static str,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), postcard::Error>,
    ) -> Result<(), SendError> {
        self.append_encoded(type_name, encode).map(drop)
    }

    /// Appends one message frame and returns its sequence number; the one
    /// place an append failure becomes a `SendError`.
    fn append_encoded(
        &self,
        type_name: &'static str,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), postcard::Error>,
    ) -> Result<u64, SendError> {
        let res = self.writer.append(Kind::Message, |buf| {
            #[cfg(target_os = "linux")]
            if self.writer.can_pass_fds() {
                // Buffers in the value attach their files: such a message
                // leaves the pending queue and goes at once, fds with it.
                let start = buf.len();
                let (r, fds) = super::buffer::collecting(|| encode(&mut *buf));
                r.map_err(Append::Encode)?;
                return match fds.is_empty() {
                    true => Ok(()),
                    false => Err(Append::WithFds(buf[start..].to_vec(), fds)),
                };
            }
            encode(buf).map_err(Append::Encode)
        });
        match res {
            Ok(seq) => Ok(seq),
            Err(AppendError::Encode(Append::Encode(source))) => {
                #[cfg(target_os = "linux")]
                let detail = matches!(source, postcard::Error::SerdeSerCustom)
                    .then(super::buffer::take_refusal)
                    .flatten();
                #[cfg(not(target_os = "linux"))]
                let detail = None;
                Err(SendError::Encode(EncodeError {
                    type_name,
                    source,
                    detail,
                }))
            }
            Err(AppendError::Encode(Append::WithFds(bytes, fds))) => {
                let fds: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
                self.writer.send_message_with_fds(&bytes, &fds).map(|()| 0)
            }
            Err(AppendError::TooLarge { len, limit }) => Err(SendError::TooLarge { len, limit }),
        }
    }

    /// Writes every queued message.
    pub fn flush(&self) -> Result<(), SendError> {
        self.writer.flush()
    }

    /// Sends several messages with one write (as long as they fit in the
    /// kernel's socket buffer). Returns how many were sent. If one fails to
    /// encode, none after it is queued, and those before it are still sent.
    pub fn send_batch<'a, T, I>(&self, msgs: I) -> Result<usize, SendError>
    where
        T: Serialize + ?Sized + 'a,
        I: IntoIterator<Item = &'a T>,
    {
        let mut n = 0;
        let mut failed = None;
        for m in msgs {
            if let Err(e) = self.feed(m) {
                failed = Some(e);
                break;
            }
            n += 1;
        }
        self.writer.flush()?;
        match failed {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Sends raw bytes as one message (received with
    /// [`IpcReceiver::recv_bytes`]). Long payloads are written from `bytes`
    /// directly, without a copy.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.writer.send_frame(Kind::Message, bytes, &[])
    }

    /// Transfers `port` to the peer (over `SCM_RIGHTS`; sockets only). Our
    /// copy is closed once it is sent. On failure the port is given back.
    pub fn send_port(&self, port: Port) -> Result<(), SendPortError> {
        if !self.writer.can_pass_fds() {
            return Err(SendPortError {
                port,
                error: SendError::Unsupported("passing ports over a pipe connection"),
            });
        }
        let res = {
            let (flavor, fds) = port.fds_for_sending();
            self.writer.send_frame(Kind::Port, &[flavor], &fds)
        };
        match res {
            Ok(()) => Ok(()),
            Err(error) => Err(SendPortError { port, error }),
        }
    }

    /// Frames sent and write calls made so far.
    pub fn stats(&self) -> SendStats {
        self.writer.stats()
    }

    /// Sets the largest message this side sends (default 256 MiB).
    pub fn set_max_frame_len(&self, limit: usize) {
        self.writer.set_max_frame_len(limit);
    }

    /// Whether this connection can carry ports (sockets can, pipes cannot).
    pub fn can_send_ports(&self) -> bool {
        self.writer.can_pass_fds()
    }

    /// A duplicate of the fd this half writes to.
    pub(crate) fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.writer.fd().try_clone_to_owned()
    }

    /// The role the peer announced.
    pub fn peer_role(&self) -> Role {
        self.peer.role
    }
}

impl IpcReceiver {
    /// Sets whether this connection keeps its [`Runtime`](crate::runtime::Runtime)'s
    /// `run` from returning: `true` by default, `false` lets `run` return
    /// while it is alive (the connection is open).
    pub fn set_keep_alive(&self, keep: bool) {
        self.rt_ref.set_keep_alive(keep);
    }

    /// Whether this connection keeps its runtime alive.
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

    /// Moves this connection to `rt` (it belongs to
    /// [`Runtime::global`](crate::runtime::Runtime::global) by default),
    /// keeping its ref state.
    pub fn attach(&mut self, rt: &crate::runtime::Runtime) {
        self.rt_ref = self.rt_ref.moved_to(rt);
    }

    /// Blocks until a message arrives and decodes it as `T`.
    ///
    /// A message that is not a valid `T` is consumed and reported as
    /// [`RecvError::Decode`]; the connection stays usable.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.recv_wait(Wait::Forever)?
            .ok_or_else(|| RecvError::Protocol(ProtocolError::new("a blocking receive returned nothing")))
    }

    /// Returns a message if one is already here.
    pub fn try_recv<T: DeserializeOwned>(&mut self) -> Result<T, TryRecvError> {
        self.recv_wait(Wait::Now)?.ok_or(TryRecvError::Empty)
    }

    /// Waits up to `timeout` for a message.
    pub fn recv_timeout<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_wait(Wait::timeout(timeout))?
            .ok_or(RecvTimeoutError::Timeout)
    }

    /// Waits as told for a message: the general form of the `recv` family.
    pub fn recv_wait<T: DeserializeOwned>(&mut self, wait: Wait) -> Result<Option<T>, RecvError> {
        if !self.next(Kind::Message, wait)? {
            return Ok(None);
        }
        let fds = std::mem::take(&mut self.attached);
        #[cfg(target_os = "linux")]
        let res = super::buffer::providing(fds, || decode(self.reader.payload()));
        #[cfg(not(target_os = "linux"))]
        let res = {
            drop(fds);
            decode(self.reader.payload())
        };
        self.reader.consume();
        res.map(Some)
    }

    /// Whether a complete frame is already here (so a `recv` would not block).
    pub fn has_frame(&mut self) -> Result<bool, RecvError> {
        Ok(self.reader.next_frame(Wait::Now)?.is_some())
    }

    /// Whether a complete frame is already buffered here (no system call;
    /// [`has_frame`](Self::has_frame) also reads what the kernel holds).
    pub(crate) fn has_buffered_frame(&mut self) -> bool {
        self.reader.has_buffered_frame()
    }

    /// Waits as told for a message and copies its raw bytes into `out`
    /// (replacing what it held). `Ok(false)`: the wait ran out.
    pub(crate) fn recv_bytes_wait(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<bool, RecvError> {
        if !self.next(Kind::Message, wait)? {
            return Ok(false);
        }
        out.clear();
        out.extend_from_slice(self.reader.payload());
        self.reader.consume();
        // Raw bytes have no buffers to give fds to: they close.
        self.attached.clear();
        Ok(true)
    }

    /// [`recv_bytes_wait`](Self::recv_bytes_wait) for a reader that takes
    /// only messages (a `Link`): a frame of another kind is consumed, with
    /// any fds it carried closed, and reported as `Unexpected`, so it
    /// cannot stay at the front and be met again and again.
    pub(crate) fn recv_message_wait(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<bool, RecvError> {
        match self.recv_bytes_wait(out, wait) {
            Err(RecvError::Unexpected { expected, found }) => {
                if found == Kind::Port {
                    let n = match self.reader.payload().first() {
                        Some(&crate::frame::PORT_FLAVOR_PIPES) => 2,
                        _ => 1,
                    };
                    // The fds ride on the frame's first byte: they are here
                    // if the peer sent any. Dropping them closes them.
                    drop(self.reader.take_fds(n));
                }
                self.reader.consume();
                Err(RecvError::Unexpected { expected, found })
            }
            other => other,
        }
    }

    /// A duplicate of the fd this half reads from, to wait for readability
    /// without holding the receiver.
    pub(crate) fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.reader.dup_fd()
    }

    /// Blocks until a message arrives and returns its raw bytes.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut out = Vec::new();
        self.recv_bytes_into(&mut out)?;
        Ok(out)
    }

    /// Blocks until a message arrives and puts its raw bytes in `out`
    /// (replacing what was there, reusing its allocation). Returns the length.
    /// Long messages are read from the kernel straight into `out`.
    pub fn recv_bytes_into(&mut self, out: &mut Vec<u8>) -> Result<usize, RecvError> {
        loop {
            match self.reader.recv_message_into(out) {
                // A message with buffers: its fds frame first (raw bytes
                // have no buffers to give them to, so they close).
                Err(RecvError::Unexpected { found: Kind::Fds, .. }) => {
                    self.next(Kind::Message, Wait::Now)?;
                    self.attached.clear();
                }
                other => return other,
            }
        }
    }

    /// Blocks until a port arrives and returns it.
    pub fn recv_port(&mut self) -> Result<Port, RecvError> {
        self.next(Kind::Port, Wait::Forever)?;
        let flavor = self.reader.payload().first().copied();
        self.reader.consume();
        let n = match flavor {
            Some(crate::frame::PORT_FLAVOR_SOCKET) => 1,
            Some(crate::frame::PORT_FLAVOR_PIPES) => 2,
            _ => {
                return Err(RecvError::Protocol(ProtocolError::new(format!(
                    "port frame with unknown flavor {flavor:?}"
                ))));
            }
        };
        let fds = self.reader.take_fds(n).ok_or_else(|| {
            RecvError::Protocol(ProtocolError::new(
                "port frame arrived without its file descriptors",
            ))
        })?;
        flavor
            .and_then(|f| Port::from_received(f, fds))
            .ok_or_else(|| RecvError::Protocol(ProtocolError::new("malformed port frame")))
    }

    /// Waits for the next frame and checks that it is of kind `want`
    /// (leaving it in place if not). `Ok(false)`: the wait ran out.
    fn next(&mut self, want: Kind, wait: Wait) -> Result<bool, RecvError> {
        loop {
            return match self.reader.next_frame(wait)? {
                None => Ok(false),
                Some(h) if h.kind == Kind::Fds => {
                    // The next message's fds: kept for its buffers.
                    let n = match self.reader.payload() {
                        &[n] if usize::from(n) <= crate::transport::MAX_FDS_PER_FRAME => usize::from(n),
                        _ => return Err(RecvError::Protocol(ProtocolError::new("malformed fds frame"))),
                    };
                    self.reader.consume();
                    self.attached = self.reader.take_fds(n).ok_or_else(|| {
                        RecvError::Protocol(ProtocolError::new("an fds frame arrived without its fds"))
                    })?;
                    continue;
                }
                Some(h) if h.kind == want => {
                    if want != Kind::Message {
                        // Fds announced for a message, then no message: closed.
                        self.attached.clear();
                    }
                    Ok(true)
                }
                Some(h) => Err(RecvError::Unexpected {
                    expected: want,
                    found: h.kind,
                }),
            };
        }
    }

    /// Sets how long a blocked receive spins before sleeping (default
    /// [`DEFAULT_SPIN`](crate::transport::DEFAULT_SPIN)). Zero never spins.
    pub fn set_spin(&mut self, spin: Duration) {
        self.reader.set_spin(spin);
    }

    /// Sets the largest message accepted (default 256 MiB). A longer frame
    /// is refused before anything is allocated for it.
    pub fn set_max_frame_len(&mut self, limit: usize) {
        self.reader.set_max_frame_len(limit);
    }

    /// The role the peer announced.
    pub fn peer_role(&self) -> Role {
        self.peer.role
    }

    /// What carries the bytes: `"socket"`, `"pipes"` or `"shared memory"`
    /// (see [`ConnectOptions::shared_memory`](crate::port::ConnectOptions::shared_memory)).
    pub fn transport(&self) -> &'static str {
        self.reader.flavor()
    }
}

impl Ipc {
    pub(crate) fn new(reader: Reader, writer: Writer, peer: Hello) -> Ipc {
        Ipc {
            tx: IpcSender { writer, peer },
            rx: IpcReceiver {
                reader,
                peer,
                attached: Vec::new(),
                rt_ref: crate::runtime::Runtime::global().new_ref(),
            },
        }
    }

    /// Splits into a sender half and a receiver half that two threads can
    /// use at once.
    pub fn split(self) -> (IpcSender, IpcReceiver) {
        (self.tx, self.rx)
    }

    /// Sets whether this connection keeps its [`Runtime`](crate::runtime::Runtime)'s
    /// `run` from returning: `true` by default, `false` lets `run` return
    /// while it is alive; dropping the connection (or its receiver half) lets go for good.
    pub fn set_keep_alive(&self, keep: bool) {
        self.rx.set_keep_alive(keep);
    }

    /// Whether this connection keeps its runtime alive.
    pub fn keeps_alive(&self) -> bool {
        self.rx.keeps_alive()
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

    /// Moves this connection to `rt` (it belongs to
    /// [`Runtime::global`](crate::runtime::Runtime::global) by default),
    /// keeping its ref state.
    pub fn attach(&mut self, rt: &crate::runtime::Runtime) {
        self.rx.attach(rt);
    }

    /// Duplicates of the fds this connection reads from and writes to.
    pub(crate) fn dup_fds(&self) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        Ok((self.rx.dup_fd()?, self.tx.dup_fd()?))
    }

    /// The sender half, borrowed (clone it to send from other threads).
    pub fn sender(&self) -> &IpcSender {
        &self.tx
    }

    /// The role the peer announced.
    pub fn peer_role(&self) -> Role {
        self.tx.peer.role
    }

    /// What carries the bytes: `"socket"`, `"pipes"` or `"shared memory"`.
    pub fn transport(&self) -> &'static str {
        self.rx.transport()
    }

    /// The codec both sides announced (the handshake refuses a mismatch).
    pub fn codec(&self) -> crate::frame::Codec {
        self.tx.peer.codec
    }

    /// See [`IpcSender::send`].
    pub fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), SendError> {
        self.tx.send(msg)
    }

    /// See [`IpcSender::feed`].
    pub fn feed<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), SendError> {
        self.tx.feed(msg)
    }

    /// See [`IpcSender::flush`].
    pub fn flush(&self) -> Result<(), SendError> {
        self.tx.flush()
    }

    /// Writes every queued message, reading incoming bytes into the
    /// receive buffer whenever the socket is full, so that this side never
    /// blocks writing while the peer blocks writing to it. Incoming
    /// messages are kept for later `recv` calls, in order.
    pub fn flush_reading(&mut self) -> Result<(), SendError> {
        let Ipc { tx, rx } = self;
        let write = tx.writer.fd();
        tx.writer
            .flush_with(|| rx.reader.buffer_while_waiting_to_write(write))
    }

    /// See [`IpcSender::send_batch`].
    pub fn send_batch<'a, T, I>(&self, msgs: I) -> Result<usize, SendError>
    where
        T: Serialize + ?Sized + 'a,
        I: IntoIterator<Item = &'a T>,
    {
        self.tx.send_batch(msgs)
    }

    /// See [`IpcSender::send_bytes`].
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.tx.send_bytes(bytes)
    }

    /// See [`IpcSender::send_port`].
    pub fn send_port(&self, port: Port) -> Result<(), SendPortError> {
        self.tx.send_port(port)
    }

    /// See [`IpcSender::stats`].
    pub fn stats(&self) -> SendStats {
        self.tx.stats()
    }

    /// See [`IpcReceiver::recv`].
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.rx.recv()
    }

    /// See [`IpcReceiver::try_recv`].
    pub fn try_recv<T: DeserializeOwned>(&mut self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// See [`IpcReceiver::recv_timeout`].
    pub fn recv_timeout<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// See [`IpcReceiver::has_frame`].
    pub fn has_frame(&mut self) -> Result<bool, RecvError> {
        self.rx.has_frame()
    }

    /// Whether a complete frame is already buffered (no system call).
    pub(crate) fn has_buffered_frame(&mut self) -> bool {
        self.rx.has_buffered_frame()
    }

    /// See [`IpcReceiver::recv_bytes`].
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, RecvError> {
        self.rx.recv_bytes()
    }

    /// See [`IpcReceiver::recv_bytes_into`].
    pub fn recv_bytes_into(&mut self, out: &mut Vec<u8>) -> Result<usize, RecvError> {
        self.rx.recv_bytes_into(out)
    }

    /// See `IpcReceiver::recv_message_wait`.
    pub(crate) fn recv_message_wait(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<bool, RecvError> {
        self.rx.recv_message_wait(out, wait)
    }

    /// See [`IpcReceiver::recv_port`].
    pub fn recv_port(&mut self) -> Result<Port, RecvError> {
        self.rx.recv_port()
    }

    /// See [`IpcReceiver::set_spin`].
    pub fn set_spin(&mut self, spin: Duration) {
        self.rx.set_spin(spin);
    }

    /// Sets the largest message accepted and sent on this connection.
    pub fn set_max_frame_len(&mut self, limit: usize) {
        self.rx.set_max_frame_len(limit);
        self.tx.set_max_frame_len(limit);
    }
}
