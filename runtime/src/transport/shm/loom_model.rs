//! A loom model of the shared-memory wake-up protocol (`Conn::wait` and
//! `Conn::wake_peer`): `RUSTFLAGS="--cfg loom" cargo test -p
//! portpool-runtime --release --lib loom`. Loom runs every interleaving
//! (up to its preemption bound) and fails on a deadlock: a waiter asleep
//! while the state it waits for holds is exactly a lost wake-up.
//!
//! The model keeps the protocol's steps and orderings: the waiter reads
//! the sleeper generation, announces in a shared flag, fences (SeqCst),
//! looks again, then either waits on the local condvar for the kernel
//! sleeper or becomes it; the kernel sleep is a doorbell whose count is
//! sticky (a ring before the sleep is not lost) and is drained after
//! waking; the notifier publishes, fences, and rings only if it swaps the
//! flag from 1. The doorbell is a mutex and a condvar here, as the real
//! one is a socket whose readiness `poll` re-checks.

use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use loom::sync::{Arc, Condvar, Mutex};

/// One side's doorbell and its sleeper bookkeeping, plus the words the
/// peer writes.
struct Side {
    /// The peer's published position (a ring's tail), and a released one
    /// (the other ring's head).
    tail: AtomicU64,
    head: AtomicU64,
    reader_waiting: AtomicU32,
    writer_waiting: AtomicU32,
    /// The doorbell: its count (sticky until drained) and who sleeps on it.
    bell: Mutex<u64>,
    rung: Condvar,
    /// `Conn::sleep`: is a thread in the kernel, and its generation.
    sleep: Mutex<(bool, u64)>,
    woke: Condvar,
}

impl Side {
    fn new() -> Side {
        Side {
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
            reader_waiting: AtomicU32::new(0),
            writer_waiting: AtomicU32::new(0),
            bell: Mutex::new(0),
            rung: Condvar::new(),
            sleep: Mutex::new((false, 0)),
            woke: Condvar::new(),
        }
    }

    /// The peer's notify step after it published.
    fn wake(&self, flag: &AtomicU32) {
        fence(Ordering::SeqCst);
        if flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0 {
            *self.bell.lock().unwrap() += 1;
            self.rung.notify_all();
        }
    }

    /// `Conn::wait` without deadlines.
    fn wait(&self, ready: &dyn Fn() -> bool, flag: &AtomicU32) {
        loop {
            if ready() {
                return;
            }
            let seen = self.sleep.lock().unwrap().1;
            flag.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if ready() {
                return;
            }
            let mut s = self.sleep.lock().unwrap();
            if s.1 != seen {
                continue;
            }
            if s.0 {
                let _s = self.woke.wait(s).unwrap();
                continue;
            }
            s.0 = true;
            drop(s);
            // poll: returns once the doorbell is readable ...
            let mut count = self.bell.lock().unwrap();
            while *count == 0 {
                count = self.rung.wait(count).unwrap();
            }
            drop(count);
            // ... and the poller drains it afterwards (another step).
            *self.bell.lock().unwrap() = 0;
            let mut s = self.sleep.lock().unwrap();
            s.0 = false;
            s.1 += 1;
            self.woke.notify_all();
        }
    }
}

fn bounded() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

#[test]
fn loom_one_waiter_never_misses_the_publish() {
    bounded().check(|| {
        let side = Arc::new(Side::new());
        let peer = side.clone();
        let t = loom::thread::spawn(move || {
            peer.tail.store(1, Ordering::Release);
            peer.wake(&peer.reader_waiting);
        });
        side.wait(&|| side.tail.load(Ordering::Acquire) >= 1, &side.reader_waiting);
        t.join().unwrap();
    });
}

#[test]
fn loom_two_waiters_on_one_side_both_wake() {
    // A ticket reading and a background reader's wait handle, both waiting
    // for the same data: one sleeps in the kernel, the other on the condvar.
    bounded().check(|| {
        let side = Arc::new(Side::new());
        let (peer, other) = (side.clone(), side.clone());
        let t = loom::thread::spawn(move || {
            peer.tail.store(1, Ordering::Release);
            peer.wake(&peer.reader_waiting);
        });
        let w = loom::thread::spawn(move || {
            other.wait(&|| other.tail.load(Ordering::Acquire) >= 1, &other.reader_waiting);
        });
        side.wait(&|| side.tail.load(Ordering::Acquire) >= 1, &side.reader_waiting);
        w.join().unwrap();
        t.join().unwrap();
    });
}

#[test]
fn loom_a_reader_and_a_writer_waiting_on_one_side_both_wake() {
    // The mixed case: one thread waits for data (reader flag), another for
    // space (writer flag); the peer publishes data, then releases space.
    bounded().check(|| {
        let side = Arc::new(Side::new());
        let (peer, writer) = (side.clone(), side.clone());
        let t = loom::thread::spawn(move || {
            peer.tail.store(1, Ordering::Release);
            peer.wake(&peer.reader_waiting);
            peer.head.store(1, Ordering::Release);
            peer.wake(&peer.writer_waiting);
        });
        let w = loom::thread::spawn(move || {
            writer.wait(
                &|| writer.head.load(Ordering::Acquire) >= 1,
                &writer.writer_waiting,
            );
        });
        side.wait(&|| side.tail.load(Ordering::Acquire) >= 1, &side.reader_waiting);
        w.join().unwrap();
        t.join().unwrap();
    });
}

#[test]
#[should_panic]
fn loom_finds_the_lost_wake_up_of_a_waiter_that_does_not_look_again() {
    // The model can fail: without the look after announcing, the publish
    // can fall between the first look and the announcement, and the
    // waiter sleeps on data that is there.
    bounded().check(|| {
        let side = Arc::new(Side::new());
        let peer = side.clone();
        let t = loom::thread::spawn(move || {
            peer.tail.store(1, Ordering::Release);
            peer.wake(&peer.reader_waiting);
        });
        if side.tail.load(Ordering::Acquire) < 1 {
            side.reader_waiting.store(1, Ordering::Relaxed);
            // (no fence, no second look)
            let mut count = side.bell.lock().unwrap();
            while *count == 0 {
                count = side.rung.wait(count).unwrap();
            }
        }
        t.join().unwrap();
    });
}
