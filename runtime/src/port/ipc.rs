//! A connected port: typed messages (serde + postcard), raw bytes, and
//! ports, in both directions.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Port;
use crate::error::{EncodeError, RecvError, RecvTimeoutError, SendError, TryRecvError};
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
    pub(super) peer: Hello,
    /// The fds of the message frame at the front (from its `Fds` frame).
    pub(super) attached: Vec<std::os::fd::OwnedFd>,
    /// This connection's place in its runtime's count (the receiving half
    /// holds it: a connection that can still receive keeps a loop alive).
    pub(super) rt_ref: crate::runtime::RefCount,
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

impl IpcSender {
    /// Sends one message. Returns once the message has been handed to the
    /// kernel: it is delivered even if this process exits right after.
    /// Every [`Buffer`](crate::port::Buffer) in it is sealed and its memory
    /// file goes with the message (Linux, socket and shared-memory ports).
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
                let detail = super::buffer_refusal(&source);
                Err(SendError::Encode(EncodeError {
                    type_name,
                    source,
                    detail,
                }))
            }
            Err(AppendError::Encode(Append::WithFds(bytes, fds))) => {
                self.send_raw_with_fds(&bytes, &fds).map(|()| 0)
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

    /// Sends one message of raw bytes with `fds` (the files of buffers
    /// encoded in them) at once, after whatever is queued.
    pub(crate) fn send_raw_with_fds(
        &self,
        bytes: &[u8],
        fds: &[std::os::fd::OwnedFd],
    ) -> Result<(), SendError> {
        let fds: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
        self.writer.send_message_with_fds(bytes, &fds)
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

    /// Sends `msg` (whose own encoding has no buffers) with `fds`, the
    /// files of buffers encoded inside its bytes (a worker's answer), after
    /// every queued message, reading while the connection is full as
    /// [`flush_reading`](Self::flush_reading) does.
    pub(crate) fn send_with_fds_reading<T: Serialize + ?Sized>(
        &mut self,
        msg: &T,
        fds: &[std::os::fd::OwnedFd],
    ) -> Result<(), SendError> {
        let mut bytes = Vec::new();
        encode_into(msg, &mut bytes).map_err(|source| {
            SendError::Encode(EncodeError {
                type_name: std::any::type_name::<T>(),
                source,
                detail: None,
            })
        })?;
        let fds: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
        let Ipc { tx, rx } = self;
        let writer = &tx.writer;
        writer.send_message_with_fds_waiting(&bytes, &fds, || {
            rx.reader.buffer_while_waiting_to_write(writer.fd())
        })
    }

    /// Writes every queued message, reading incoming bytes into the
    /// receive buffer whenever the socket is full, so that this side never
    /// blocks writing while the peer blocks writing to it. Incoming
    /// messages are kept for later `recv` calls, in order.
    pub fn flush_reading(&mut self) -> Result<(), SendError> {
        let Ipc { tx, rx } = self;
        // (The fd to wait on is looked up only when the writer must wait.)
        let writer = &tx.writer;
        writer.flush_with(|| rx.reader.buffer_while_waiting_to_write(writer.fd()))
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
