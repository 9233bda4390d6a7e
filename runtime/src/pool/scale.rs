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
//! - a job queued just as a waiting thread worker takes another: the
//!   worker still counts as waiting, so the submitter does not grow for
//!   it. The worker, having lowered `waiting`, compares the queue with
//!   `waiting` itself (the same check as a submitter's) and grows.
//! - a job dispatched just as a process worker is chosen to shrink: the
//!   worker is retired like a recycled one (`Worker::retiring`), so a job
//!   already in flight is answered before it is told to stop, and one
//!   reserved after is given back to the queue.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::lock;

/// What a slot of a scaling pool is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SlotState {
    /// A worker is up (or starting) here.
    Up = 0,
    /// Its worker was chosen to shrink and has not exited yet.
    Leaving = 1,
    /// No worker: woken when jobs wait.
    Dormant = 2,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            0 => SlotState::Up,
            1 => SlotState::Leaving,
            _ => SlotState::Dormant,
        }
    }
}

/// A scaling pool's bounds and the state of its slots.
///
/// Lock order: `decide`, then a process slot's `waiting`; `sleep` is a
/// leaf. Growing takes neither (it may run with a slot's locks held).
pub(crate) struct Scale {
    pub(crate) min: usize,
    max: usize,
    pub(crate) idle_timeout: Duration,
    /// Slots in state `Up`.
    pub(crate) up: AtomicUsize,
    /// Thread workers blocked waiting for a job (thread pools).
    pub(crate) waiting: AtomicUsize,
    /// Each slot's state (a `SlotState`).
    states: Vec<AtomicU8>,
    /// Held to let a worker go, and by a broadcast choosing its workers.
    decide: Mutex<()>,
    /// Where dormant process slots' threads sleep.
    sleep: Mutex<()>,
    woken: Condvar,
}

/// The right to let workers go (see [`Scale::decide`]).
pub(crate) struct Decide<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

impl Scale {
    /// A pool of `max` slots, `min` of them up at first.
    pub(crate) fn new(min: usize, max: usize, idle_timeout: Duration) -> Scale {
        let states = (0..max)
            .map(|i| {
                AtomicU8::new(if i < min {
                    SlotState::Up as u8
                } else {
                    SlotState::Dormant as u8
                })
            })
            .collect();
        Scale {
            min,
            max,
            idle_timeout,
            up: AtomicUsize::new(min),
            waiting: AtomicUsize::new(0),
            states,
            decide: Mutex::new(()),
            sleep: Mutex::new(()),
            woken: Condvar::new(),
        }
    }

    /// Takes the right to let workers go; a broadcast holds it too, so no
    /// worker it chose leaves before its copy is queued.
    pub(crate) fn decide(&self) -> Decide<'_> {
        Decide(lock(&self.decide))
    }

    /// Slot `i`'s state.
    pub(crate) fn state(&self, i: usize) -> SlotState {
        // SeqCst: as every access to the states.
        self.states.get(i).map_or(SlotState::Dormant, |s| {
            SlotState::from_u8(s.load(Ordering::SeqCst))
        })
    }

    /// Every slot's state.
    pub(crate) fn states(&self) -> Vec<SlotState> {
        (0..self.max).map(|i| self.state(i)).collect()
    }

    /// Whether a slot could be woken (a hint: `grow` decides).
    pub(crate) fn can_grow(&self) -> bool {
        // Relaxed: a hint.
        self.up.load(Ordering::Relaxed) < self.max
    }

    /// Marks a dormant slot up, wakes its thread, and returns it (`None`:
    /// every slot is up or leaving). Takes no lock but the sleepers' leaf
    /// lock: it may be called with a worker's locks held.
    pub(crate) fn grow(&self) -> Option<usize> {
        let i = (0..self.max).find(|&i| self.swap(i, SlotState::Dormant, SlotState::Up))?;
        self.wake_all();
        Some(i)
    }

    /// Slot `i` goes from `from` to `to`, if it is in `from`.
    fn swap(&self, i: usize, from: SlotState, to: SlotState) -> bool {
        // SeqCst: as every access to the states.
        let ok = self.states[i]
            .compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if ok {
            match (from == SlotState::Up, to == SlotState::Up) {
                (true, false) => {
                    self.up.fetch_sub(1, Ordering::SeqCst);
                }
                (false, true) => {
                    self.up.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
        ok
    }

    /// Whether one more worker may leave (more than `min` are up).
    pub(crate) fn may_leave(&self, _: &Decide<'_>) -> bool {
        self.up.load(Ordering::SeqCst) > self.min
    }

    /// Slot `i` goes from `from` to `to` (with the right to decide).
    pub(crate) fn set(&self, _: &Decide<'_>, i: usize, from: SlotState, to: SlotState) -> bool {
        let ok = self.swap(i, from, to);
        if ok && to == SlotState::Up {
            self.wake_all();
        }
        ok
    }

    /// Blocks a dormant process slot's thread until it is woken (`true`)
    /// or `stop()` (`false`).
    pub(crate) fn wait_woken(&self, i: usize, stop: impl Fn() -> bool) -> bool {
        let mut g = lock(&self.sleep);
        loop {
            if stop() {
                return false;
            }
            if self.state(i) == SlotState::Up {
                return true;
            }
            // The bound only guards against a missed notification of `stop`.
            g = self
                .woken
                .wait_timeout(g, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Wakes every dormant slot's thread (one was woken, or the pool stops).
    pub(crate) fn wake_all(&self) {
        let _g = lock(&self.sleep);
        self.woken.notify_all();
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
