//! What a pool does when a worker crashes, a job runs too long or is
//! cancelled, and when the pool shuts down; the settings for it.
//!
//! - [`RestartPolicy`]: at most `max_restarts` within `period` (Erlang's
//!   intensity and period), with a growing backoff between restarts. Past
//!   it the pool turns *failed*.
//! - [`Shutdown`]: `graceful`, `drain` or `immediate`, each with a deadline
//!   past which process workers get SIGTERM, then SIGKILL. It returns a
//!   [`ShutdownReport`].
//! - [`PoolEvent`]: what happened to workers, for a callback given to
//!   [`PoolBuilder::on_event`](crate::pool::PoolBuilder::on_event); every
//!   event is logged through `log` too.
//!
//! The timers (run timeouts, queue-wait deadlines, cancel grace periods
//! and the SIGTERM → SIGKILL escalation) run on one monitor thread per
//! pool. The scenarios below tell each case step by step; the code's
//! comments name them (the *Where:* lines point maintainers at the code).
#![doc = include_str!("README.md")]

pub(crate) mod monitor;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// How a pool restarts process workers that exit when they should not
/// (scenario "restart").
///
/// A restart is allowed while fewer than `max_restarts` happened within
/// the last `period`. The first restart in a quiet period is immediate;
/// each further one waits `backoff` doubled per recent restart, up to
/// `max_backoff`. A worker the pool killed itself (a cancelled or timed-out
/// job's worker, or at shutdown) does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `period`. `0` turns the pool failed at the
    /// first unexpected exit.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in. Zero (with
    /// `max_restarts` above 0) is refused at build: no restart would
    /// ever count, and a crash loop would never stop.
    pub period: Duration,
    /// The wait before the second restart within `period`.
    pub backoff: Duration,
    /// The longest wait between restarts. A wait too long to represent
    /// (`Duration::MAX`) means never: at the restart that would wait it,
    /// the pool turns failed, as with [`RestartPolicy::never`] (its queued
    /// jobs fail, new ones are refused), rather than wait for ever.
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    /// 10 restarts within 60 s; backoff from 10 ms up to 1 s.
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 10,
            period: Duration::from_secs(60),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RestartPolicy {
    /// Never restart: the first unexpected exit fails the pool.
    pub fn never() -> Self {
        RestartPolicy {
            max_restarts: 0,
            ..RestartPolicy::default()
        }
    }
}

/// Counts restarts in the policy's window.
#[derive(Debug)]
pub(crate) struct Intensity {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl Intensity {
    pub(crate) fn new(policy: RestartPolicy) -> Intensity {
        Intensity {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records one restart at `now`: `Ok(wait before it)` if the policy
    /// allows it, `Err(how many happened within the period)` if not.
    pub(crate) fn restart(&mut self, now: Instant) -> Result<Duration, usize> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.policy.period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.max_restarts as usize {
            return Err(self.recent.len());
        }
        let n = self.recent.len() as u32;
        self.recent.push_back(now);
        if n == 0 {
            return Ok(Duration::ZERO);
        }
        let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
        Ok(self
            .policy
            .backoff
            .saturating_mul(factor)
            .min(self.policy.max_backoff))
    }
}

/// Something that happened to a pool's workers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A worker started (for the first time or as a replacement).
    WorkerStarted {
        /// Its id within the pool.
        worker: usize,
        /// Its process id (process workers).
        pid: Option<u32>,
        /// How many times this worker slot was restarted before.
        restarts: u64,
    },
    /// A worker exited or was abandoned.
    WorkerExited {
        /// Its id within the pool.
        worker: usize,
        /// Its process id (process workers).
        pid: Option<u32>,
        /// How it ended: exit code or signal, or why the pool let it go.
        status: String,
        /// Jobs it held when it exited (failed, retried or re-queued).
        jobs_held: usize,
        /// Whether the pool ended it (shutdown, cancel, timeout).
        expected: bool,
    },
    /// A replacement worker could not be started.
    StartFailed {
        /// The worker slot.
        worker: usize,
        /// Why.
        reason: String,
    },
    /// The restart limit was reached: the pool no longer takes jobs.
    PoolFailed {
        /// Why, with the last start failure or exit.
        reason: String,
    },
    /// The queue reached its limit: `submit` now waits and `try_submit`
    /// gives jobs back, until it drains (piscina's `needsDrain`). Not sent
    /// by a pool with a queue limit of 0, which has no queue.
    Saturated {
        /// Jobs waiting in the queue.
        queued: usize,
    },
    /// After [`Saturated`](Self::Saturated): the workers have taken every
    /// queued job (piscina's `drain`); the next full queue says
    /// `Saturated` again.
    Drained,
}

/// How [`Pool::shutdown`](crate::pool::Pool::shutdown) treats the work
/// the pool holds. `Shutdown::default()` is `graceful` with a 30 s
/// deadline, what dropping a pool does.
///
/// At the deadline the work left is cancelled. A process worker gets
/// SIGTERM and, 500 ms later if still alive, SIGKILL; a thread worker
/// whose handler ignores the cancel has the same 500 ms to return, then
/// is abandoned (counted in `ShutdownReport::threads_abandoned`). So a
/// shutdown may return up to about 500 ms after its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a `Shutdown` does nothing until given to `Pool::shutdown`"]
pub struct Shutdown {
    pub(crate) mode: ShutdownMode,
    pub(crate) deadline: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShutdownMode {
    Graceful,
    Drain,
    Immediate,
}

/// How long a worker that got SIGTERM has before SIGKILL, and how long a
/// thread worker past the deadline has to return before it is abandoned.
pub(crate) const TERM_GRACE: Duration = Duration::from_millis(500);

/// How long a stop waits for a worker (a thread, a process, a service's
/// process) to finish what it holds before it is killed, or, for a
/// thread, left.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

impl Shutdown {
    /// Finish running and queued jobs; past `deadline`, cancel what is
    /// left and stop the workers (SIGTERM, then SIGKILL).
    pub fn graceful(deadline: Duration) -> Shutdown {
        Shutdown {
            mode: ShutdownMode::Graceful,
            deadline,
        }
    }

    /// Finish running jobs, fail queued ones with `Cancelled` at once;
    /// past `deadline`, as [`graceful`](Self::graceful).
    pub fn drain(deadline: Duration) -> Shutdown {
        Shutdown {
            mode: ShutdownMode::Drain,
            deadline,
        }
    }

    /// Cancel everything now: queued and running jobs fail with
    /// `Cancelled`, process workers get SIGTERM, then SIGKILL.
    pub fn immediate() -> Shutdown {
        Shutdown {
            mode: ShutdownMode::Immediate,
            deadline: Duration::ZERO,
        }
    }
}

impl Default for Shutdown {
    /// `graceful` with a 30 s deadline: what dropping a pool does.
    fn default() -> Self {
        Shutdown::graceful(Duration::from_secs(30))
    }
}

/// What a pool did over its life, as counted when its shutdown finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs that finished with their output or their handler's error.
    pub completed: u64,
    /// Jobs that failed otherwise (panic, worker exit, timeout, coding).
    pub failed: u64,
    /// Jobs cancelled (by their ticket or by this shutdown).
    pub cancelled: u64,
    /// Worker processes this shutdown had to signal (SIGTERM or SIGKILL).
    pub workers_killed: usize,
    /// Thread workers still inside a handler when the shutdown ended:
    /// those it gave up waiting for, and those abandoned earlier past a
    /// timeout or cancel (not waited for: their jobs had already ended).
    /// They were detached (threads cannot be killed).
    pub threads_abandoned: usize,
    /// Whether the shutdown hit its deadline.
    pub deadline_hit: bool,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} completed, {} failed, {} cancelled; {} worker(s) killed",
            self.completed, self.failed, self.cancelled, self.workers_killed
        )?;
        if self.threads_abandoned > 0 {
            write!(f, ", {} thread(s) abandoned", self.threads_abandoned)?;
        }
        if self.deadline_hit {
            f.write_str(" (deadline hit)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_allows_max_restarts_per_period_with_growing_backoff() {
        let mut i = Intensity::new(RestartPolicy {
            max_restarts: 3,
            period: Duration::from_secs(10),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(15),
        });
        let t0 = Instant::now();
        assert_eq!(i.restart(t0), Ok(Duration::ZERO));
        assert_eq!(i.restart(t0), Ok(Duration::from_millis(10)));
        assert_eq!(i.restart(t0), Ok(Duration::from_millis(15)));
        assert_eq!(i.restart(t0), Err(3));
        // Once the window has moved past them, restarts are allowed again.
        assert_eq!(i.restart(t0 + Duration::from_secs(11)), Ok(Duration::ZERO));
    }

    #[test]
    fn never_fails_at_the_first_exit() {
        let mut i = Intensity::new(RestartPolicy::never());
        assert_eq!(i.restart(Instant::now()), Err(0));
    }
}
