//! Where a job's events wait for its ticket or map: a small queue with one
//! receiver and any number of [`Reply`] handles.
//!
//! It replaces an unbounded crossbeam channel per ticket, which allocated
//! a block of 31 slots (a few KiB, zeroed) on its first message: for a
//! tiny job that block cost more than the job. A mailbox is one
//! allocation; its first event is kept inline, later ones (progress
//! messages, a map's chunks) in a `VecDeque`.
//!
//! The receiver can look without the lock (`queued`), spins briefly, then
//! sleeps on a condvar that a sender signals only when someone sleeps.
//! When the last `Reply` is dropped, the receiver learns it (a closed
//! mailbox without an outcome is a bug the ticket reports, not a hang).
//! A future awaiting the mailbox keeps its waker in the `WakeSlot`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::{Event, Failure, Outcome};
use crate::util::{lock, spin_pause};

/// The waker of a future waiting on a reply channel (a ticket awaited, a
/// map polled as a stream), woken by whichever thread sends to the
/// channel: the threads that settle jobs wake their waiters, no executor
/// thread of ours is involved.
///
/// The protocol never loses a wake-up: the waiter stores its waker and
/// raises `armed`, then looks at the channel again; the sender puts its
/// event in the channel, then looks at `armed`. A SeqCst fence on each
/// side, between its write and its read, means at least one of them sees
/// the other's write. A reply nobody awaits costs one fence and one load.
#[derive(Default)]
pub(crate) struct WakeSlot {
    armed: AtomicBool,
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl WakeSlot {
    /// Registers `w` to be woken by the next event. The caller must look
    /// at its channel again after this returns.
    pub(crate) fn register(&self, w: &std::task::Waker) {
        {
            let mut slot = lock(&self.waker);
            match &*slot {
                Some(old) if old.will_wake(w) => {}
                _ => *slot = Some(w.clone()),
            }
            // Relaxed: the fence below orders it before the caller's look.
            self.armed.store(true, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Wakes the registered waker, if any (after an event was sent).
    pub(crate) fn wake(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        // Relaxed: ordered by the fences (see the type's docs).
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let w = {
            let mut slot = lock(&self.waker);
            self.armed.store(false, Ordering::Relaxed);
            slot.take()
        };
        // Woken outside the lock: an executor may poll at once, inline.
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Forgets the registered waker (its future is gone).
    pub(crate) fn clear(&self) {
        let mut slot = lock(&self.waker);
        self.armed.store(false, Ordering::Relaxed);
        *slot = None;
    }
}

struct Queue {
    first: Option<(u64, Event)>,
    rest: VecDeque<(u64, Event)>,
    /// The receiver sleeps on the condvar.
    sleeping: bool,
}

impl Queue {
    fn push(&mut self, e: (u64, Event)) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(e);
        } else {
            self.rest.push_back(e);
        }
    }

    fn pop(&mut self) -> Option<(u64, Event)> {
        self.first.take().or_else(|| self.rest.pop_front())
    }
}

/// The mailbox's fields in two groups: what handles change as they are
/// made and dropped (beside the `Arc`'s own counts), and what a spinning
/// receiver reads, on a line of its own. A worker that clones or drops a
/// handle while the receiver spins then does not pull the receiver's
/// line away from it (on two cores that cost more than the job).
#[repr(C)]
struct Mailbox {
    /// Live `Reply` handles.
    senders: AtomicUsize,
    /// The future awaiting this mailbox, if one does.
    wake: WakeSlot,
    cv: Condvar,
    /// Keeps `hot` a cache line away from `senders` and the `Arc`'s
    /// counts. (Padding, not `align`: an over-aligned allocation takes
    /// the allocator's slow path, which cost more than it saved.)
    _apart: [u8; 64],
    hot: Hot,
}

/// The part of a mailbox a receiver spins on: the count alone on its
/// line, then the queue. A receiver that spins reads only the count, so
/// the sender's lock, push and unlock do not pull the queue's line back
/// and forth; it moves once, when the receiver takes the event.
#[repr(C)]
struct Hot {
    /// Events in `queue`, readable without the lock: a hint that sends
    /// raise after they let the lock go (a receiver that sees it then
    /// takes the lock without waiting for the sender to leave it, which
    /// on two cores cost a cache line's round trip per job). So it may
    /// lag the queue, or briefly wrap below zero when a receiver pops an
    /// event under the lock before its count is in; a look that finds
    /// nothing looks again. Whether an event is there is decided under
    /// the lock.
    queued: AtomicUsize,
    /// Keeps `queue` (and its lock) a cache line away from `queued`.
    _apart: [u8; 64],
    queue: Mutex<Queue>,
}

/// Where a job's events go: a mailbox, with a tag telling the jobs that
/// share it apart (a `map` uses one mailbox for all its chunks).
pub(crate) struct Reply {
    mailbox: Arc<Mailbox>,
    pub(crate) tag: u64,
    /// [`finish`](Reply::finish) already counted this handle out.
    finished: bool,
}

impl Clone for Reply {
    fn clone(&self) -> Reply {
        self.with_tag(self.tag)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // AcqRel: the last drop is seen by a receiver's Acquire load.
        if self.mailbox.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Tell a sleeping receiver, under the lock it sleeps with (it
            // looks at `senders` under it before sleeping).
            let q = lock(&self.mailbox.hot.queue);
            if q.sleeping {
                self.mailbox.cv.notify_all();
            }
            drop(q);
            self.mailbox.wake.wake();
        }
    }
}

impl Reply {
    /// Another handle on the same mailbox, for the job tagged `tag`.
    pub(crate) fn with_tag(&self, tag: u64) -> Reply {
        // Relaxed: as `Arc::clone`, a new handle from a live one.
        self.mailbox.senders.fetch_add(1, Ordering::Relaxed);
        Reply {
            mailbox: self.mailbox.clone(),
            tag,
            finished: false,
        }
    }

    /// Puts `event` in the mailbox and wakes whoever waits on it.
    pub(crate) fn send(&self, event: Event) {
        let m = &*self.mailbox;
        let mut q = lock(&m.hot.queue);
        q.push((self.tag, event));
        let sleeping = q.sleeping;
        drop(q);
        // Counted once the lock is let go (see `Hot::queued`). Release:
        // the receiver's Acquire load of a count above 0 then takes the
        // lock and finds the event.
        m.hot.queued.fetch_add(1, Ordering::Release);
        if sleeping {
            m.cv.notify_one();
        }
        m.wake.wake();
    }

    /// Sends `event` and lets go of this handle, under one lock: a job's
    /// last word (its outcome) and, when no other handle is left, the
    /// mailbox's close reach the receiver with one lock and one wake
    /// instead of two of each.
    pub(crate) fn finish(mut self, event: Event) {
        let m = &*self.mailbox;
        let mut q = lock(&m.hot.queue);
        q.push((self.tag, event));
        // AcqRel: as in `drop`; under the lock a sleeping receiver looks
        // at `senders` with.
        let last = m.senders.fetch_sub(1, Ordering::AcqRel) == 1;
        self.finished = true;
        let sleeping = q.sleeping;
        drop(q);
        // Release: as in `send`, after the lock.
        m.hot.queued.fetch_add(1, Ordering::Release);
        if sleeping {
            if last {
                m.cv.notify_all();
            } else {
                m.cv.notify_one();
            }
        }
        m.wake.wake();
    }

    /// Sends `Done(Failed(f))`.
    pub(crate) fn fail(&self, f: Failure) {
        self.send(Event::Done(Outcome::Failed(f)));
    }
}

/// Why nothing was received.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Empty {
    /// Nothing yet (or the deadline passed).
    Now,
    /// Nothing, and every `Reply` is gone: nothing will come.
    Closed,
}

/// The receiving end of a mailbox.
pub(crate) struct Inbox {
    mailbox: Arc<Mailbox>,
}

impl Inbox {
    /// A mailbox, and the first handle that sends to it (tag 0).
    pub(crate) fn new() -> (Inbox, Reply) {
        let mailbox = Arc::new(Mailbox {
            senders: AtomicUsize::new(1),
            wake: WakeSlot::default(),
            cv: Condvar::new(),
            _apart: [0; 64],
            hot: Hot {
                queued: AtomicUsize::new(0),
                _apart: [0; 64],
                queue: Mutex::new(Queue {
                    first: None,
                    rest: VecDeque::new(),
                    sleeping: false,
                }),
            },
        });
        (
            Inbox {
                mailbox: mailbox.clone(),
            },
            Reply {
                mailbox,
                tag: 0,
                finished: false,
            },
        )
    }

    /// The waker slot of the future awaiting this mailbox.
    pub(crate) fn wake_slot(&self) -> &WakeSlot {
        &self.mailbox.wake
    }

    /// The next event, without blocking.
    pub(crate) fn try_recv(&self) -> Result<(u64, Event), Empty> {
        let m = &*self.mailbox;
        // Acquire: pairs with the Release in `send`.
        if m.hot.queued.load(Ordering::Acquire) == 0 {
            // Acquire: pairs with the last `Reply`'s drop; an event sent
            // before that drop is in the queue (its count may lag), which
            // the look under the lock below finds.
            if m.senders.load(Ordering::Acquire) > 0 {
                return Err(Empty::Now);
            }
            return self.pop().map_err(|_| Empty::Closed);
        }
        self.pop()
    }

    /// The next event from the queue, under its lock.
    fn pop(&self) -> Result<(u64, Event), Empty> {
        let m = &*self.mailbox;
        let mut q = lock(&m.hot.queue);
        match q.pop() {
            Some(e) => {
                // Relaxed: a hint (see `Hot::queued`); wraps for a moment
                // if the sender has not counted this event yet.
                m.hot.queued.fetch_sub(1, Ordering::Relaxed);
                Ok(e)
            }
            None => Err(Empty::Now),
        }
    }

    /// The next event, spinning for `CHANNEL_SPIN` before sleeping until
    /// `deadline` (`None`: no deadline). `Err(Now)`: the deadline passed.
    pub(crate) fn recv_spin(&self, deadline: Option<Instant>) -> Result<(u64, Event), Empty> {
        // Read at the first clock check, not here: a wait whose event is
        // already in (a window of pipelined tickets) reads no clock at all.
        let mut start = None;
        let mut tries = 0u32;
        let m = &*self.mailbox;
        loop {
            // Only `queued` between the 16th tries: the handles' count sits
            // on another line, which a worker's clones keep changing.
            // Acquire: pairs with the Release in `send`.
            if m.hot.queued.load(Ordering::Acquire) > 0 {
                if let Ok(e) = self.pop() {
                    return Ok(e);
                }
            }
            // The clock every 16th try: it cost as much as the look.
            // Whether the mailbox closed is asked once the spin is over
            // (`recv_deadline` does), not while spinning: the handles'
            // count is on the line a worker writes as it answers, and
            // reading it pulled that line away from the worker mid-answer.
            if tries % 16 == 15
                && start.get_or_insert_with(Instant::now).elapsed() >= crate::util::CHANNEL_SPIN
            {
                break;
            }
            spin_pause(&mut tries);
        }
        self.recv_deadline(deadline)
    }

    /// The next event, sleeping until one comes or `deadline` passes.
    pub(crate) fn recv_deadline(&self, deadline: Option<Instant>) -> Result<(u64, Event), Empty> {
        let m = &*self.mailbox;
        let mut q = lock(&m.hot.queue);
        loop {
            if let Some(e) = q.pop() {
                // Relaxed: a hint, as in `pop`.
                m.hot.queued.fetch_sub(1, Ordering::Relaxed);
                return Ok(e);
            }
            // Acquire: pairs with the last `Reply`'s drop, which then
            // takes this lock to wake a sleeper.
            if m.senders.load(Ordering::Acquire) == 0 {
                return Err(Empty::Closed);
            }
            q.sleeping = true;
            q = match deadline {
                None => m.cv.wait(q).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        q.sleeping = false;
                        return Err(Empty::Now);
                    }
                    m.cv.wait_timeout(q, d - now).unwrap_or_else(|p| p.into_inner()).0
                }
            };
            q.sleeping = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Progress;

    fn progress(n: u8) -> Event {
        Event::Progress(Progress {
            json: false,
            bytes: vec![n],
        })
    }

    fn byte(e: (u64, Event)) -> (u64, u8) {
        match e {
            (tag, Event::Progress(p)) => (tag, p.bytes[0]),
            (tag, Event::Done(_)) => (tag, 255),
        }
    }

    #[test]
    fn events_come_in_order_with_their_tags() {
        let (inbox, reply) = Inbox::new();
        let other = reply.with_tag(7);
        for i in 0..5 {
            reply.send(progress(i));
            other.send(progress(10 + i));
        }
        let got: Vec<_> = (0..10).map(|_| byte(inbox.try_recv().expect("event"))).collect();
        let want: Vec<_> = (0..5).flat_map(|i| [(0, i), (7, 10 + i)]).collect();
        assert_eq!(got, want);
        assert_eq!(inbox.try_recv().err(), Some(Empty::Now));
        drop((reply, other));
        assert_eq!(inbox.try_recv().err(), Some(Empty::Closed));
    }

    #[test]
    fn a_sleeping_receiver_is_woken_by_an_event_and_by_the_last_drop() {
        let (inbox, reply) = Inbox::new();
        let second = reply.clone();
        let t = std::thread::spawn(move || {
            reply.send(progress(1));
            drop(reply);
            // The receiver may be asleep by now: the last drop wakes it.
            drop(second);
        });
        assert_eq!(byte(inbox.recv_deadline(None).expect("event")), (0, 1));
        assert_eq!(inbox.recv_deadline(None).err(), Some(Empty::Closed));
        t.join().expect("sender");
    }

    #[test]
    fn a_deadline_ends_the_wait() {
        let (inbox, _reply) = Inbox::new();
        let past = Instant::now();
        assert_eq!(inbox.recv_spin(Some(past)).err(), Some(Empty::Now));
    }

    /// Many senders on many threads, one receiver that sleeps between
    /// events: every event arrives once, none is lost to a missed wake-up.
    #[test]
    fn no_event_is_lost_between_threads() {
        let (inbox, reply) = Inbox::new();
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let r = reply.with_tag(t);
                std::thread::spawn(move || {
                    for i in 0..2000u32 {
                        r.send(progress((i % 200) as u8));
                        if i % 97 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(reply);
        let mut per_tag = [0u32; 4];
        loop {
            match inbox.recv_deadline(None) {
                Ok((tag, _)) => per_tag[tag as usize] += 1,
                Err(Empty::Closed) => break,
                Err(Empty::Now) => unreachable!("no deadline"),
            }
        }
        for s in senders {
            s.join().expect("sender");
        }
        assert_eq!(per_tag, [2000; 4]);
    }
}
