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
    /// Run timeout, counted from dispatch.
    pub timeout: Option<Duration>,
    /// The longest the job may wait in the queue.
    pub queue_timeout: Option<Duration>,
    /// Re-runs allowed after a worker crash.
    pub retries: Option<u32>,
    /// Cancels the job when it is cancelled ([`CancelToken`]).
    pub cancel: Option<CancelToken>,
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

    /// Cancels the job when `token` is cancelled (a clone of it is kept).
    pub fn cancel_token(mut self, token: &CancelToken) -> JobOptions {
        self.cancel = Some(token.clone());
        self
    }
}
