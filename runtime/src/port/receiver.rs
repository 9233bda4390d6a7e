//! The receiving half's methods: typed and raw receives, ports, the
//! frame kinds a receiver meets (a message, a port, a message's fds), and
//! the decode that turns a message into a value (with its buffers' fds).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::Port;
use crate::error::{DecodeError, ProtocolError, RecvError, RecvTimeoutError, TryRecvError};
use crate::frame::{Kind, Role};
use crate::transport::Wait;

use super::ipc::IpcReceiver;

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
            Err(fail(super::buffer_refusal(&e).unwrap_or_else(|| e.to_string())))
        }
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
        let res = super::with_received_fds(fds, || decode(self.reader.payload()));
        self.reader.consume();
        res.map(Some)
    }

    /// [`recv_wait`](Self::recv_wait) for a message whose own type has no
    /// buffers but carries some inside its bytes (a job's result): the
    /// fds that came with it are returned for the later decode.
    pub(crate) fn recv_wait_with_fds<T: DeserializeOwned>(
        &mut self,
        wait: Wait,
    ) -> Result<Option<(T, Vec<std::os::fd::OwnedFd>)>, RecvError> {
        if !self.next(Kind::Message, wait)? {
            return Ok(None);
        }
        let fds = std::mem::take(&mut self.attached);
        let res = decode(self.reader.payload());
        self.reader.consume();
        res.map(|v| Some((v, fds)))
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
    /// (replacing what it held), leaving the fds that came with it in
    /// `attached`. `Ok(false)`: the wait ran out.
    fn recv_bytes_keeping_fds(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<bool, RecvError> {
        if !self.next(Kind::Message, wait)? {
            return Ok(false);
        }
        out.clear();
        out.extend_from_slice(self.reader.payload());
        self.reader.consume();
        Ok(true)
    }

    /// Waits as told for a message's raw bytes, for a reader that takes
    /// only messages (a pool's reader; fds that came with it close): a frame of another kind is
    /// consumed, with any fds it carried closed, and reported as
    /// `Unexpected`, so it cannot stay at the front and be met again and
    /// again.
    pub(crate) fn recv_message_wait(&mut self, out: &mut Vec<u8>, wait: Wait) -> Result<bool, RecvError> {
        let got = self.recv_message_wait_with_fds(out, wait)?;
        Ok(got.is_some())
    }

    /// [`recv_message_wait`](Self::recv_message_wait) that returns the fds
    /// that came with the message (its buffers' files; a `Link`'s reader).
    pub(crate) fn recv_message_wait_with_fds(
        &mut self,
        out: &mut Vec<u8>,
        wait: Wait,
    ) -> Result<Option<Vec<std::os::fd::OwnedFd>>, RecvError> {
        match self.recv_bytes_keeping_fds(out, wait) {
            Ok(true) => Ok(Some(std::mem::take(&mut self.attached))),
            Ok(false) => Ok(None),
            Err(RecvError::Unexpected { expected, found }) => {
                // Fds an Fds frame brought for this frame close with it;
                // none is left to ride on the next message.
                self.attached.clear();
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
            Err(e) => Err(e),
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

    /// [`recv_bytes_into`](Self::recv_bytes_into), keeping the fds that
    /// came with the message (its buffers' files) for a later decode.
    pub(crate) fn recv_bytes_with_fds(
        &mut self,
        out: &mut Vec<u8>,
    ) -> Result<Vec<std::os::fd::OwnedFd>, RecvError> {
        loop {
            match self.reader.recv_message_into(out) {
                Err(RecvError::Unexpected { found: Kind::Fds, .. }) => {
                    self.next(Kind::Message, Wait::Now)?;
                }
                Ok(_) => return Ok(std::mem::take(&mut self.attached)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Blocks until a message arrives and puts its raw bytes in `out`
    /// (replacing what was there, reusing its allocation). Returns the length.
    /// Long messages are read from the kernel straight into `out`.
    pub fn recv_bytes_into(&mut self, out: &mut Vec<u8>) -> Result<usize, RecvError> {
        // Raw bytes have no buffers to give a message's fds to: they close.
        self.recv_bytes_with_fds(out).map(|_fds| out.len())
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

/// The receiving methods of a whole [`Ipc`](super::Ipc) that only its own
/// crate uses: here, beside what they call.
impl super::Ipc {
    /// Whether a complete frame is already buffered (no system call).
    pub(crate) fn has_buffered_frame(&mut self) -> bool {
        self.rx.has_buffered_frame()
    }

    /// See `IpcReceiver::recv_bytes_with_fds`.
    pub(crate) fn recv_bytes_with_fds(
        &mut self,
        out: &mut Vec<u8>,
    ) -> Result<Vec<std::os::fd::OwnedFd>, RecvError> {
        self.rx.recv_bytes_with_fds(out)
    }
}
