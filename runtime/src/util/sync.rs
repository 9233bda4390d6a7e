//! Lock and spin idioms.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

/// Locks `m`, going on with the data if a panicking thread poisoned it
/// (every value portpool keeps under a lock stays consistent at each
/// statement, so poisoning carries no meaning here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long to wait without blocking before a blocking wait on a channel:
/// a result that arrives within it skips a cross-core wake-up.
pub(crate) const CHANNEL_SPIN: Duration = Duration::from_micros(50);

/// One pause of a spin-wait: yields every other try, as the port's
/// receive spin does, so a spinning thread lets its peer run on a shared
/// core.
pub(crate) fn spin_pause(tries: &mut u32) {
    *tries = tries.wrapping_add(1);
    if *tries % 2 == 0 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Receives from `rx`, retrying without blocking (and yielding) for
/// `CHANNEL_SPIN` first, then blocking until `deadline`.
pub(crate) fn recv_spin<T>(rx: &Receiver<T>, deadline: Option<Instant>) -> Option<T> {
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        if start.elapsed() >= CHANNEL_SPIN {
            break;
        }
        spin_pause(&mut tries);
    }
    match deadline {
        None => rx.recv().ok(),
        Some(d) => rx.recv_deadline(d).ok(),
    }
}
