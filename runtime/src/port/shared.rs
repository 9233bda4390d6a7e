//! "Whoever waits reads": the one receiver that several threads share.
//! A thread that waits for something on a connection takes the receiver
//! (a [`Turn`]) and reads the connection itself while no other thread
//! does, so a reply reaches the thread that wants it without a hand-off.
//! A background reader ([`SharedReceiver::background`]) reads only while
//! nobody waits; when nothing comes it sleeps on a wait handle (a
//! duplicate of the fd, or a shared-memory connection's doorbell),
//! without holding the receiver, so a caller can take it at any moment.
//!
//! Its users (a `Link`, a pool's process worker) say only what a read
//! means to them ([`Reader`]) and when the background reader should leave
//! reading to their waiters; the turn, the hand-off spin, the nap and the
//! sleep on the wait handle are here, once.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::IpcReceiver;
use crate::transport::{Wait, WaitHandle};
use crate::util::lock;

/// How long a thread that wants to read waits, spinning, for the thread
/// that reads to hand the receiver over before it gives up or sleeps.
pub(crate) const HANDOFF_SPIN: Duration = Duration::from_micros(20);

/// How long a background reader leaves reading to others before it looks
/// again (it is also woken when it is needed): the longest an unexpected
/// frame waits while the last caller has just left.
pub(crate) const READER_NAP: Duration = Duration::from_millis(2);

/// Calls `attempt` (yielding between calls) until it gives a value or
/// [`HANDOFF_SPIN`] has passed.
fn spin_for_handoff<T>(mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
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

/// What one read by the holder of a [`Turn`] did.
pub(crate) enum Step {
    /// A frame was read and handled.
    Frame,
    /// Nothing was there (within the wait).
    Nothing,
    /// The connection closed (`None`) or broke.
    End(Option<String>),
}

/// What a connection's user does with the frames its background reader
/// reads.
pub(crate) trait Reader {
    /// Whether the background reader should stop: the connection ended
    /// and the user knows.
    fn done(&mut self) -> bool;
    /// Whether the background reader should leave reading to the user's
    /// waiting threads for now (it naps, see [`READER_NAP`]).
    fn waiters_read(&mut self) -> bool;
    /// Reads at most one frame with `turn` (waiting as told), handles it,
    /// and gives the turn back.
    fn read(&mut self, turn: Turn<'_>, wait: Wait) -> Step;
}

/// A receiver shared by the threads of one connection's user.
pub(crate) struct SharedReceiver {
    /// The receiver, here while no thread reads.
    slot: Mutex<Option<IpcReceiver>>,
    /// The background reader naps here while another thread reads.
    nap: Condvar,
    /// The background reader is napping on `nap`.
    napping: AtomicBool,
    /// Something to sleep on until the connection is readable without
    /// holding the receiver (`None`: the kernel refused one, and the
    /// background reader polls).
    waiter: Option<WaitHandle>,
}

/// The right to read: the receiver, taken out of its [`SharedReceiver`]
/// until the turn is dropped.
pub(crate) struct Turn<'a> {
    owner: &'a SharedReceiver,
    rx: Option<IpcReceiver>,
}

impl Deref for Turn<'_> {
    type Target = IpcReceiver;
    fn deref(&self) -> &IpcReceiver {
        self.rx.as_ref().expect("a turn holds its receiver until dropped")
    }
}

impl DerefMut for Turn<'_> {
    fn deref_mut(&mut self) -> &mut IpcReceiver {
        self.rx.as_mut().expect("a turn holds its receiver until dropped")
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *lock(&self.owner.slot) = self.rx.take();
    }
}

impl SharedReceiver {
    /// Shares `rx`. `who` names the connection in the log.
    pub(crate) fn new(rx: IpcReceiver, who: &str) -> SharedReceiver {
        let waiter = match rx.reader.wait_handle() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("{who}: could not duplicate the connection's fd ({e}); its reader polls");
                None
            }
        };
        SharedReceiver {
            slot: Mutex::new(Some(rx)),
            nap: Condvar::new(),
            napping: AtomicBool::new(false),
            waiter,
        }
    }

    /// The receiver, unless another thread reads.
    pub(crate) fn try_turn(&self) -> Option<Turn<'_>> {
        let rx = lock(&self.slot).take()?;
        Some(Turn {
            owner: self,
            rx: Some(rx),
        })
    }

    /// The receiver, waiting (spinning) up to [`HANDOFF_SPIN`] for the
    /// thread that reads to hand it over.
    pub(crate) fn turn_soon(&self) -> Option<Turn<'_>> {
        spin_for_handoff(|| self.try_turn())
    }

    /// Waits (spinning) up to [`HANDOFF_SPIN`] for the receiver to be
    /// free, without taking it; whether it is.
    pub(crate) fn wait_free(&self) -> bool {
        spin_for_handoff(|| lock(&self.slot).is_some().then_some(())).is_some()
    }

    /// Whether the receiver is here and holds a whole frame already read
    /// from the kernel (which nobody asleep on the fd would see).
    pub(crate) fn has_buffered_frame(&self) -> bool {
        lock(&self.slot)
            .as_mut()
            .is_some_and(|rx| rx.reader.has_buffered_frame())
    }

    /// Hands every frame already in the receiver's buffer to `read` (no
    /// waiting). A thread other than the background reader calls it
    /// before it stops reading.
    pub(crate) fn drain_buffered(&self, mut read: impl FnMut(Turn<'_>) -> Step) -> Step {
        loop {
            if !self.has_buffered_frame() {
                return Step::Nothing;
            }
            let Some(turn) = self.try_turn() else {
                return Step::Nothing;
            };
            match read(turn) {
                Step::Frame => {}
                step => return step,
            }
        }
    }

    /// Wakes the background reader if it naps (frames need reading that
    /// no waiter will read, or the connection ended).
    pub(crate) fn wake_background(&self) {
        // Acquire: pairs with the store before the nap.
        if self.napping.load(Ordering::Acquire) {
            let _g = lock(&self.slot);
            self.nap.notify_all();
        }
    }

    /// Shuts the reading side down, so a reader asleep on the fd (and the
    /// receiver) sees the end at once (sockets only; a no-op otherwise).
    pub(crate) fn shutdown_read(&self) {
        if let Some(w) = &self.waiter {
            w.shutdown_read();
        }
    }

    /// The background reader: reads whenever no waiter does, until the
    /// connection ends, and returns why it ended. After a frame it keeps
    /// looking for `spin` (the next one often follows at once); then it
    /// sleeps until the fd is readable, without the receiver. While a
    /// waiter reads, or `reader` says its waiters will, it naps.
    pub(crate) fn background(&self, reader: &mut impl Reader, spin: Duration) -> Option<String> {
        let mut last = Instant::now();
        let mut tries = 0u32;
        loop {
            if reader.done() {
                return None;
            }
            let turn = if reader.waiters_read() {
                None
            } else {
                self.try_turn()
            };
            let Some(turn) = turn else {
                self.nap(reader.waiters_read());
                last = Instant::now();
                continue;
            };
            match reader.read(turn, Wait::Now) {
                Step::Frame => {
                    last = Instant::now();
                    continue;
                }
                Step::End(why) => return why,
                Step::Nothing if last.elapsed() < spin => {
                    crate::util::spin_pause(&mut tries);
                    continue;
                }
                Step::Nothing => {}
            }
            // Idle: sleep until the fd is readable, without the receiver.
            let slept = match &self.waiter {
                Some(w) => w.wait().map(|()| true).unwrap_or_else(|e| {
                    log::debug!("waiting on a connection failed ({e}); its reader polls");
                    false
                }),
                None => false,
            };
            if !slept {
                // No fd to sleep on: read for a millisecond at a time.
                if let Some(turn) = self.try_turn() {
                    let until = Instant::now() + Duration::from_millis(1);
                    if let Step::End(why) = reader.read(turn, Wait::Until(until)) {
                        return why;
                    }
                }
            }
            last = Instant::now();
        }
    }

    /// Naps up to [`READER_NAP`], unless woken by
    /// [`wake_background`](Self::wake_background), if another thread holds
    /// the receiver or `waiters_read`.
    fn nap(&self, waiters_read: bool) {
        let g = lock(&self.slot);
        if g.is_some() && !waiters_read {
            return;
        }
        // Release: pairs with the Acquire load in `wake_background`.
        self.napping.store(true, Ordering::Release);
        let g = self
            .nap
            .wait_timeout(g, READER_NAP)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
        self.napping.store(false, Ordering::Release);
        drop(g);
    }
}
