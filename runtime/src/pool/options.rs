//! `JobOptions`: one job's own settings, over the pool's.

use std::time::Duration;

use super::CancelToken;

/// Per-job settings for [`Pool::submit_with`](super::Pool::submit_with), over the pool's.
///
/// Every `Duration` in portpool's API takes any value: one too long to
/// count from now (such as `Duration::MAX`) means "never".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "options do nothing until given to `Pool::submit_with`"]
pub struct JobOptions {
    /// Run timeout, counted from when the job starts on a worker (see
    /// [`PoolBuilder::job_timeout`](crate::pool::PoolBuilder::job_timeout)).
    pub timeout: Option<Duration>,
    /// The longest the job may wait to start (see
    /// [`PoolBuilder::queue_timeout`](crate::pool::PoolBuilder::queue_timeout)).
    pub queue_timeout: Option<Duration>,
    /// Re-runs allowed after a worker crash.
    pub retries: Option<u32>,
    /// Cancels the job when it is cancelled ([`CancelToken`]).
    pub cancel: Option<CancelToken>,
    /// Higher runs first; 0 (the default) is the lowest. See
    /// [`priority`](Self::priority).
    pub priority: u32,
}

impl JobOptions {
    /// No overrides: the pool's settings.
    pub fn new() -> JobOptions {
        JobOptions::default()
    }

    /// Sets the run timeout.
    pub fn timeout(mut self, t: Duration) -> JobOptions {
        self.timeout = Some(t);
        self
    }

    /// Sets the queue-wait deadline.
    pub fn queue_timeout(mut self, t: Duration) -> JobOptions {
        self.queue_timeout = Some(t);
        self
    }

    /// Sets the retries after a worker crash.
    pub fn retries(mut self, n: u32) -> JobOptions {
        self.retries = Some(n);
        self
    }

    /// Sets the job's priority: among queued jobs, a higher one runs
    /// first, and equal ones in submission order. Priorities age, so none
    /// starves: a job of priority `p` is queued as if it had been submitted
    /// `p × aging` jobs earlier ([`PoolBuilder::priority_aging`](super::PoolBuilder::priority_aging),
    /// 1000 by default), and a job of priority 0 is overtaken by at most
    /// that many later jobs. With a queue limit of 0 nothing waits, so
    /// nothing is reordered. Jobs already sent to a process worker (up to
    /// [`inflight_per_worker`](super::PoolBuilder::inflight_per_worker)
    /// each) and a `map`'s jobs (priority 0) are not reordered; a job
    /// retried after a crash goes before all of them.
    pub fn priority(mut self, p: u32) -> JobOptions {
        self.priority = p;
        self
    }

    /// Cancels the job when `token` is cancelled (a clone of it is kept).
    pub fn cancel_token(mut self, token: &CancelToken) -> JobOptions {
        self.cancel = Some(token.clone());
        self
    }
}

/// What [`PoolBuilder::worker_command`](super::PoolBuilder::worker_command)
/// takes: a [`Command`](std::process::Command), or the `&mut Command` its
/// builder methods return, so that
/// `.worker_command(Command::new("python3").arg("worker.py"))` works. A
/// borrowed command is copied: its program, arguments, environment and
/// directory (stdio and other settings of a borrowed command are not).
pub trait IntoCommand {
    /// The command, owned.
    fn into_command(self) -> std::process::Command;
}

impl IntoCommand for std::process::Command {
    fn into_command(self) -> std::process::Command {
        self
    }
}

impl IntoCommand for &std::process::Command {
    fn into_command(self) -> std::process::Command {
        let mut c = std::process::Command::new(self.get_program());
        c.args(self.get_args());
        crate::child::copy_env_and_dir(self, &mut c);
        c
    }
}

impl IntoCommand for &mut std::process::Command {
    fn into_command(self) -> std::process::Command {
        (&*self).into_command()
    }
}
