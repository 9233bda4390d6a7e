//! Lock and spin idioms.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Locks `m`, going on with the data if a panicking thread poisoned it
/// (every value portpool keeps under a lock stays consistent at each
/// statement, so poisoning carries no meaning here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long to wait without blocking before a blocking wait on a channel:
/// a result that arrives within it skips a cross-core wake-up.
pub(crate) const CHANNEL_SPIN: Duration = Duration::from_micros(50);

/// One pause of a spin-wait: a CPU pause for the first tries (an answer
/// due within a few microseconds is caught without a system call), then a
/// yield every other try, as the port's receive spin does, so a spinning
/// thread lets its peer run on a shared core.
pub(crate) fn spin_pause(tries: &mut u32) {
    *tries = tries.wrapping_add(1);
    if *tries < PURE_SPIN || *tries % 2 == 1 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Tries of [`spin_pause`] that only pause the CPU.
const PURE_SPIN: u32 = 200;
