//! Small helpers every layer uses, and that use nothing of portpool:
//! deadlines from a user's `Duration` (here), lock and spin idioms
//! (`sync`), and catching a user's panics (`unwind`).
//!
//! Not for: anything that knows about ports, jobs or pools.

mod sync;
mod unwind;

use std::time::{Duration, Instant};

pub(crate) use sync::{CHANNEL_SPIN, lock, spin_pause};
pub(crate) use unwind::{Hook, call_logged, catch_panic, panic_message, run_hooks};

/// The instant `d` from `now`, or `None` if it is too far to represent:
/// a `Duration` a user gives (even `Duration::MAX`) means "never" then,
/// instead of overflowing.
pub(crate) fn deadline_from(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// [`deadline_from`] now.
pub(crate) fn deadline(d: Duration) -> Option<Instant> {
    deadline_from(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_duration_is_never_not_a_panic() {
        assert_eq!(deadline(Duration::MAX), None);
        assert!(deadline(Duration::from_secs(1)).is_some());
    }
}
