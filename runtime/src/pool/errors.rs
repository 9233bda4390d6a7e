//! Why a pool could not be built, and why `submit`, `try_submit` and
//! `submit_timeout` did not take a job (each gives the job back).

use super::*;

/// Why a pool could not be built.
///
/// Its `Debug` is its `Display` (what `main() -> Result<_, Box<dyn Error>>`
/// prints): one sentence that says what failed and why.
pub struct BuildError {
    what: String,
    source: Option<std::io::Error>,
}

impl BuildError {
    pub(crate) fn new(what: impl Into<String>) -> BuildError {
        BuildError {
            what: what.into(),
            source: None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, e: std::io::Error) -> BuildError {
        BuildError {
            what: what.into(),
            source: Some(e),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        if let Some(e) = &self.source {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Why [`Pool::submit`] did not take a job; the job is given back.
pub enum SubmitError<J> {
    /// The pool is shutting down.
    Closed(J),
    /// The pool failed (its restart limit was reached); the reason says why.
    Failed(J, String),
    /// Its [`CancelToken`](super::CancelToken) was already cancelled
    /// ([`Pool::submit_with`]).
    Cancelled(J),
}

/// Why [`Pool::try_submit`] did not take a job; the job is given back.
pub enum TrySubmitError<J> {
    /// The queue is full.
    Full(J),
    /// The pool is shutting down.
    Closed(J),
    /// The pool failed (its restart limit was reached); the reason says why.
    Failed(J, String),
}

/// Why [`Pool::submit_timeout`] did not take a job; the job is given back.
pub enum SubmitTimeoutError<J> {
    /// The queue stayed full for the whole timeout.
    Timeout(J),
    /// The pool is shutting down.
    Closed(J),
    /// The pool failed (its restart limit was reached); the reason says why.
    Failed(J, String),
}

impl<J> SubmitError<J> {
    /// The job that was not taken.
    pub fn into_job(self) -> J {
        match self {
            SubmitError::Closed(j) | SubmitError::Failed(j, _) | SubmitError::Cancelled(j) => j,
        }
    }
}

impl<J> fmt::Display for SubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed(_) => f.write_str("the pool is shut down (or shutting down)"),
            SubmitError::Failed(_, why) => write!(f, "the pool failed: {why}"),
            SubmitError::Cancelled(_) => f.write_str("the job's cancel token was already cancelled"),
        }
    }
}

impl<J> fmt::Display for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("the pool's queue is full"),
            TrySubmitError::Closed(_) => f.write_str("the pool is shut down (or shutting down)"),
            TrySubmitError::Failed(_, why) => write!(f, "the pool failed: {why}"),
        }
    }
}

impl<J> fmt::Display for SubmitTimeoutError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitTimeoutError::Timeout(_) => f.write_str("the pool's queue stayed full"),
            SubmitTimeoutError::Closed(_) => f.write_str("the pool is shut down (or shutting down)"),
            SubmitTimeoutError::Failed(_, why) => write!(f, "the pool failed: {why}"),
        }
    }
}

// Debug without `J: Debug`, so `?` works for any job type, and as
// readable as Display (what `main` prints for an error it returns).
impl<J> fmt::Debug for SubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<J> fmt::Debug for TrySubmitError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<J> fmt::Debug for SubmitTimeoutError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<J> std::error::Error for SubmitError<J> {}
impl<J> std::error::Error for TrySubmitError<J> {}
impl<J> std::error::Error for SubmitTimeoutError<J> {}
