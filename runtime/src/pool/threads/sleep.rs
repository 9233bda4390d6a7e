//! How idle thread workers wait for work without waking one another.
//!
//! A worker that finds the queue empty looks again for a moment before it
//! sleeps, so back-to-back jobs pay no futex wake-up. But only one worker
//! at a time does that (the *spinner*): on two cores, two spinning
//! workers and a spinning waiter leave no core for the worker that has
//! the job. The others sleep at once, each on its own seat, and a
//! submitter wakes one only when nobody spins (the spinner will find the
//! job) and someone sleeps. A worker that takes a job while more wait
//! wakes the next, so a burst spreads over every worker.
//!
//! No wake-up is lost: a submitter enqueues, then (SeqCst fence) reads
//! `spinning` and `sleeping`; a worker raises `sleeping` (or lowers
//! `spinning`), then (SeqCst fence) looks at the queue once more before
//! it sleeps. One of the two sees the other's write.
//!
//! Used only with a queue (a queue limit above 0): without one, a
//! submitter hands its job to a worker blocked in the channel itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::thread::Thread;
use std::time::Instant;

use crate::util::lock;

struct Seat {
    /// Set by the worker before it sleeps, cleared by whoever wakes it.
    asleep: AtomicBool,
    thread: Mutex<Option<Thread>>,
}

pub(crate) struct Sleepers {
    /// Workers looking for work without sleeping (at most one).
    spinning: AtomicUsize,
    /// Workers asleep, or about to be.
    sleeping: AtomicUsize,
    seats: Vec<Seat>,
}

/// How a worker's sleep ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Someone woke it (or it must look again).
    Look,
    /// Its deadline passed.
    Deadline,
}

impl Sleepers {
    pub(crate) fn new(n: usize) -> Sleepers {
        Sleepers {
            spinning: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            seats: (0..n)
                .map(|_| Seat {
                    asleep: AtomicBool::new(false),
                    thread: Mutex::new(None),
                })
                .collect(),
        }
    }

    /// The calling thread now serves seat `w` (a worker's first act).
    pub(crate) fn sit(&self, w: usize) {
        if let Some(s) = self.seats.get(w) {
            *lock(&s.thread) = Some(std::thread::current());
        }
    }

    /// Tries to become the spinner; `true`: the caller must call
    /// [`stop_spinning`](Self::stop_spinning) when it stops.
    pub(crate) fn try_spin(&self) -> bool {
        self.spinning
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn stop_spinning(&self) {
        // SeqCst: a submitter that reads 0 after this wakes a sleeper; a
        // spinner that stops to sleep looks again after `announce`.
        self.spinning.fetch_sub(1, Ordering::SeqCst);
    }

    /// Seat `w` is about to sleep. The caller must then look for work once
    /// more, and either [`withdraw`](Self::withdraw) (it found some) or
    /// [`sleep`](Self::sleep).
    pub(crate) fn announce(&self, w: usize) {
        let Some(s) = self.seats.get(w) else { return };
        s.asleep.store(true, Ordering::SeqCst);
        self.sleeping.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Seat `w` found work after announcing: it no longer sleeps.
    pub(crate) fn withdraw(&self, w: usize) {
        let Some(s) = self.seats.get(w) else { return };
        if s.asleep.swap(false, Ordering::SeqCst) {
            self.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        // Else a waker counted it out already; that wake went to a worker
        // that takes a job now, which wakes the next if more wait.
    }

    /// Sleeps on seat `w` until woken or `deadline`.
    pub(crate) fn sleep(&self, w: usize, deadline: Option<Instant>) -> Woke {
        let Some(s) = self.seats.get(w) else {
            return Woke::Look;
        };
        // Acquire: pairs with the waker's swap.
        while s.asleep.load(Ordering::Acquire) {
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        if s.asleep.swap(false, Ordering::SeqCst) {
                            self.sleeping.fetch_sub(1, Ordering::SeqCst);
                            return Woke::Deadline;
                        }
                        return Woke::Look; // woken just now
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        }
        Woke::Look
    }

    /// After an enqueue: wakes one sleeping worker unless one spins (it
    /// will find the job) or none sleeps.
    pub(crate) fn notify_one(&self) {
        fence(Ordering::SeqCst);
        if self.spinning.load(Ordering::SeqCst) > 0 || self.sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
        for s in &self.seats {
            if s.asleep.load(Ordering::Relaxed) && s.asleep.swap(false, Ordering::SeqCst) {
                self.sleeping.fetch_sub(1, Ordering::SeqCst);
                if let Some(t) = lock(&s.thread).as_ref() {
                    t.unpark();
                }
                return;
            }
        }
    }

    /// Wakes seat `w` (a job sent to it alone), if it sleeps.
    pub(crate) fn wake(&self, w: usize) {
        fence(Ordering::SeqCst);
        let Some(s) = self.seats.get(w) else { return };
        if s.asleep.swap(false, Ordering::SeqCst) {
            self.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        // Unparked even if it was not asleep: a seat that announced and is
        // between its last look and `sleep` then returns at once.
        if let Some(t) = lock(&s.thread).as_ref() {
            t.unpark();
        }
    }

    /// Wakes every sleeping worker (the pool stops).
    pub(crate) fn notify_all(&self) {
        for w in 0..self.seats.len() {
            self.wake(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    /// Jobs (a counter) submitted from one thread, taken by several
    /// workers that spin or sleep by the protocol: every job is taken,
    /// none waits forever behind a sleeping worker.
    #[test]
    fn no_job_is_left_while_workers_sleep() {
        const WORKERS: usize = 3;
        const JOBS: u64 = 20_000;
        let sleepers = Arc::new(Sleepers::new(WORKERS));
        let queue = Arc::new(AtomicU64::new(0)); // jobs waiting
        let taken = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let take = |queue: &AtomicU64| {
            queue
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (sleepers, queue, taken, stop) =
                    (sleepers.clone(), queue.clone(), taken.clone(), stop.clone());
                std::thread::spawn(move || {
                    sleepers.sit(w);
                    loop {
                        if take(&queue) {
                            taken.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if sleepers.try_spin() {
                            let mut found = false;
                            for _ in 0..50 {
                                if take(&queue) {
                                    found = true;
                                    break;
                                }
                                std::hint::spin_loop();
                            }
                            sleepers.stop_spinning();
                            if found {
                                taken.fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                        }
                        sleepers.announce(w);
                        if queue.load(Ordering::SeqCst) > 0 || stop.load(Ordering::SeqCst) {
                            sleepers.withdraw(w);
                            continue;
                        }
                        sleepers.sleep(w, None);
                    }
                })
            })
            .collect();
        for i in 0..JOBS {
            queue.fetch_add(1, Ordering::SeqCst);
            sleepers.notify_one();
            if i % 64 == 0 {
                std::thread::yield_now();
            }
        }
        // Every job is taken without any further wake (the bound only
        // turns a lost wake-up into a failure instead of a hang).
        let bound = Instant::now() + std::time::Duration::from_secs(60);
        while taken.load(Ordering::SeqCst) < JOBS && Instant::now() < bound {
            std::thread::yield_now();
        }
        let left = JOBS - taken.load(Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        sleepers.notify_all();
        for w in workers {
            w.join().expect("worker");
        }
        assert_eq!(left, 0, "jobs left while every worker slept");
        assert_eq!(taken.load(Ordering::SeqCst), JOBS);
    }

    #[test]
    fn a_deadline_ends_a_sleep() {
        let s = Sleepers::new(1);
        s.sit(0);
        s.announce(0);
        assert_eq!(s.sleep(0, Some(Instant::now())), Woke::Deadline);
        assert_eq!(s.sleeping.load(Ordering::SeqCst), 0);
    }
}
