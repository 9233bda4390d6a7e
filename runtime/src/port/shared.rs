//! "Whoever waits reads": what every receiver that several threads share
//! uses. A thread that waits for something on a connection reads the
//! connection itself while no other thread does, so a reply reaches the
//! thread that wants it without a hand-off; a background reader reads
//! only while nobody waits, and sleeps on a duplicate of the fd, without
//! holding the receiver, so a caller can take it at any moment.
//!
//! Two users keep their own loop around these pieces because they guard
//! the receiver differently: a `Link` keeps it inside its state lock (a
//! check of what was filed and the decision to sleep must be one step),
//! and a pool's process worker keeps it in a lock of its own (its ticket
//! readers take it with a try-lock on the hot path). The timing, the
//! hand-off spin and the sleep on the fd are here, once.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::IpcReceiver;

/// How long a thread that wants to read waits, spinning, for the thread
/// that reads to hand the receiver over before it gives up or sleeps.
pub(crate) const HANDOFF_SPIN: Duration = Duration::from_micros(20);

/// How long a background reader leaves reading to others before it looks
/// again (it is also woken when it is needed): the longest an unexpected
/// frame waits while the last caller has just left.
pub(crate) const READER_NAP: Duration = Duration::from_millis(2);

/// Calls `attempt` (yielding between calls) until it gives a value or
/// [`HANDOFF_SPIN`] has passed.
pub(crate) fn spin_for_handoff<T>(mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + HANDOFF_SPIN;
    loop {
        if let Some(v) = attempt() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::yield_now();
    }
}

/// A duplicate of a receiver's fd, to sleep until it is readable without
/// holding the receiver.
pub(crate) struct WakeFd(Option<OwnedFd>);

impl WakeFd {
    /// Duplicates `rx`'s fd; without one (the kernel refused), `wait`
    /// reports that the caller must read or poll instead. `who` names the
    /// connection in the log.
    pub(crate) fn of(rx: &IpcReceiver, who: &str) -> WakeFd {
        match rx.dup_fd() {
            Ok(fd) => WakeFd(Some(fd)),
            Err(e) => {
                log::warn!("{who}: could not duplicate the connection's fd ({e}); its reader polls");
                WakeFd(None)
            }
        }
    }

    /// Sleeps until the connection is readable (or its end came). `Ok(false)`
    /// without a duplicate fd: nothing was waited for.
    pub(crate) fn wait(&self) -> std::io::Result<bool> {
        match &self.0 {
            Some(fd) => crate::sys::poll_readable(fd.as_fd(), None).map(|_| true),
            None => Ok(false),
        }
    }

    /// Shuts the reading side down, so a reader asleep in `wait` (and the
    /// receiver) sees the end at once (sockets only; a no-op otherwise).
    pub(crate) fn shutdown_read(&self) {
        if let Some(fd) = &self.0 {
            crate::sys::shutdown_read(fd.as_fd());
        }
    }
}
