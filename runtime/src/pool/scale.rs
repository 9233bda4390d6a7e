//! Scaling (scenario "scale"): a pool with `min_workers` below its size
//! starts `min` workers, wakes a dormant slot while jobs wait, and lets a
//! worker idle for `idle_timeout` go until `min` remain.
//!
//! Every decision to grow or to shrink is taken under one lock, which the
//! job path never takes: a submit looks at one atomic (are threads waiting
//! for work?) and takes the lock only to grow. The races that matter are
//! closed by ordering, not by the lock:
//!
//! - a job queued just as a thread worker times out: the submitter
//!   queues, then compares the queue's length with `waiting`; the worker
//!   lowers `waiting`, then looks at the queue (both SeqCst). Either the
//!   worker sees the job and stays, or the submitter sees too few waiting
//!   workers and grows.
//! - a job dispatched just as a process worker is chosen to shrink: the
//!   worker is retired like a recycled one (`Worker::retiring`), so a job
//!   already in flight is answered before it is told to stop, and one
//!   reserved after is given back to the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::lock;

/// What a slot of a scaling pool is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// A worker is up (or starting) here.
    Up,
    /// Its worker was chosen to shrink and has not exited yet.
    Leaving,
    /// No worker: woken when jobs wait.
    Dormant,
}

/// A scaling pool's bounds and the state of its slots.
pub(crate) struct Scale {
    pub(crate) min: usize,
    max: usize,
    pub(crate) idle_timeout: Duration,
    /// Slots in state `Up`.
    pub(crate) up: AtomicUsize,
    /// Thread workers blocked waiting for a job (thread pools).
    pub(crate) waiting: AtomicUsize,
    /// Each slot's state; dormant process slots wait on `woken`.
    slots: Mutex<Vec<SlotState>>,
    woken: Condvar,
    /// The origin of the process workers' idle clocks.
    pub(crate) origin: Instant,
}

impl Scale {
    /// A pool of `max` slots, `min` of them up at first.
    pub(crate) fn new(min: usize, max: usize, idle_timeout: Duration) -> Scale {
        let slots = (0..max)
            .map(|i| {
                if i < min {
                    SlotState::Up
                } else {
                    SlotState::Dormant
                }
            })
            .collect();
        Scale {
            min,
            max,
            idle_timeout,
            up: AtomicUsize::new(min),
            waiting: AtomicUsize::new(0),
            slots: Mutex::new(slots),
            woken: Condvar::new(),
            origin: Instant::now(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<SlotState>> {
        lock(&self.slots)
    }

    /// Whether a slot could be woken (a hint: `grow` decides).
    pub(crate) fn can_grow(&self) -> bool {
        // Relaxed: a hint, re-checked under the lock.
        self.up.load(Ordering::Relaxed) < self.max
    }

    /// Marks a dormant slot up and returns it (`None`: every slot is up or
    /// leaving, or another thread is deciding now). Never blocks: it may be
    /// called with a worker's locks held.
    pub(crate) fn grow(&self) -> Option<usize> {
        let mut s = self.slots.try_lock().ok()?;
        let i = s.iter().position(|st| *st == SlotState::Dormant)?;
        s[i] = SlotState::Up;
        self.up.fetch_add(1, Ordering::SeqCst);
        self.woken.notify_all();
        Some(i)
    }

    /// Whether one more worker may leave (more than `min` are up), under the lock.
    pub(crate) fn may_leave(&self, s: &[SlotState]) -> bool {
        s.iter().filter(|st| **st == SlotState::Up).count() > self.min
    }

    /// Sets slot `i`'s state, under the lock.
    pub(crate) fn set(&self, s: &mut [SlotState], i: usize, to: SlotState) {
        let was = s[i];
        s[i] = to;
        match (was == SlotState::Up, to == SlotState::Up) {
            (true, false) => {
                self.up.fetch_sub(1, Ordering::SeqCst);
            }
            (false, true) => {
                self.up.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        self.woken.notify_all();
    }

    /// Whether slot `i` is up.
    pub(crate) fn is_up(&self, i: usize) -> bool {
        lock(&self.slots).get(i) == Some(&SlotState::Up)
    }

    /// Blocks a dormant process slot's thread until it is woken (`true`)
    /// or `stop()` (`false`).
    pub(crate) fn wait_woken(&self, i: usize, stop: impl Fn() -> bool) -> bool {
        let mut s = lock(&self.slots);
        loop {
            if stop() {
                return false;
            }
            if s[i] == SlotState::Up {
                return true;
            }
            // The bound only guards against a missed notification of `stop`.
            s = self
                .woken
                .wait_timeout(s, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wakes every dormant slot's thread (the pool stops).
    pub(crate) fn wake_all(&self) {
        let _g = lock(&self.slots);
        self.woken.notify_all();
    }

    /// Now, on the process workers' idle clock.
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// How often the monitor looks for idle process workers: a quarter of
    /// the idle timeout (so one leaves within 1.25 of it), at least every
    /// 5 ms and at most every second.
    pub(crate) fn check_every(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// The status of a worker that left for being idle.
    pub(crate) fn why(&self) -> String {
        format!(
            "retired: idle for {:?} with more than {} worker(s) up",
            self.idle_timeout, self.min
        )
    }
}
