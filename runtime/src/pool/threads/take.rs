//! How a thread worker takes its next task: a broadcast copy, a ranked
//! job or the queue's next entry; spinning or sleeping while there is
//! none (module `sleep`); and, on a scaling pool, leaving after its idle
//! timeout, or waking a dormant slot after an enqueue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::select;

use super::{TSlot, Taken, Threads};
use crate::pool::{Core, Task, Work, lock};
use crate::supervisor::PoolEvent;

impl Threads {
    /// Blocks until a task comes for `slot` (a broadcast copy or one from
    /// the queue), or until `deadline`.
    pub(super) fn next_task(&self, id: usize, deadline: Option<Instant>) -> Taken {
        let (slot, core) = (&self.slots[id], &*self.core);
        // Raised only by a first look that finds a task. Relaxed: read by
        // this thread only (the metrics' clock).
        slot.took_at_once.store(false, Ordering::Relaxed);
        let Some(sleepers) = &self.sleepers else {
            return Self::next_task_unqueued(slot, core, deadline);
        };
        let mut first = true;
        let got = loop {
            if let Some(got) = Self::look(slot, core) {
                if first {
                    // Relaxed: as above.
                    slot.took_at_once.store(true, Ordering::Relaxed);
                }
                break got;
            }
            first = false;
            // Back-to-back jobs: the next often comes within microseconds
            // of the last answer. One worker at a time looks for it briefly
            // before sleeping, so neither side pays a futex wake-up; the
            // others sleep at once (module `sleep`).
            if sleepers.try_spin() {
                let spin_from = Instant::now();
                let mut tries = 0u32;
                let found = loop {
                    if let Some(got) = Self::look(slot, core) {
                        break Some(got);
                    }
                    // The clock is read every 16th try: it cost as much as the look.
                    if tries % 16 == 15 && spin_from.elapsed() >= crate::util::CHANNEL_SPIN {
                        break None;
                    }
                    crate::util::spin_pause(&mut tries);
                };
                sleepers.stop_spinning();
                if let Some(got) = found {
                    break got;
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Taken::Nothing;
            }
            sleepers.announce(id);
            if let Some(got) = Self::look(slot, core) {
                sleepers.withdraw(id);
                break got;
            }
            if sleepers.sleep(id, deadline) == super::sleep::Woke::Deadline {
                return Taken::Nothing;
            }
        };
        Self::taken(core, got)
    }

    /// One look, without blocking, for a task for `slot`: a broadcast
    /// copy, a ranked job, or the queue's next entry (`Err(true)`: the
    /// queue is gone). Entries are chosen against the heap (module `ranked`).
    fn look(slot: &TSlot, core: &Core) -> Option<Result<Work, bool>> {
        // Lowered by the caller once a task is counted (see `busy`).
        slot.taking.store(true, Ordering::SeqCst);
        let got = Self::look_now(slot, core);
        if !matches!(got, Some(Ok(Work::Task(_)))) {
            slot.taking.store(false, Ordering::SeqCst);
        }
        got
    }

    fn look_now(slot: &TSlot, core: &Core) -> Option<Result<Work, bool>> {
        if let Ok(t) = slot.private_rx.try_recv() {
            return Some(Ok(Work::Task(t)));
        }
        // A suspended pool's queued jobs stay in the queue (counted
        // queued, as a process pool's do); `resume` wakes a worker, which
        // wakes the next while more wait. (A broadcast copy above is this
        // worker's alone: it is taken and held, module `mod`.) Acquire:
        // pairs with `set_suspended`.
        if core.suspended.load(Ordering::Acquire) {
            return None;
        }
        // A ranked job may wait without a wake: look in rank order.
        if !core.ranked.is_empty() {
            if let Some(w @ (Work::Task(_) | Work::Stop)) = core.pop() {
                return Some(Ok(w));
            }
        }
        loop {
            match core.queue_rx.try_recv() {
                Ok(w) => match core.ranked.choose(w) {
                    Some(w) => return Some(Ok(w)),
                    // A wake whose job another worker took: the next.
                    None => continue,
                },
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Some(Err(true)),
                Err(crossbeam_channel::TryRecvError::Empty) => return None,
            }
        }
    }

    /// [`next_task`](Self::next_task) without a queue (a queue limit of
    /// 0): a submitter hands its task to a worker blocked on the channel.
    fn next_task_unqueued(slot: &TSlot, core: &Core, deadline: Option<Instant>) -> Taken {
        // A ranked job may wait without a wake (module `ranked`): look
        // (in rank order) before blocking.
        if !core.ranked.is_empty() {
            match core.pop() {
                Some(Work::Task(t)) => {
                    // Relaxed: a hint, as in `note_taken`, which decides.
                    if core.saturated.load(Ordering::Relaxed) {
                        core.note_taken();
                    }
                    return Taken::Task(t);
                }
                Some(Work::Stop) => return Taken::Stop,
                Some(Work::Wake) | None => {}
            }
        }
        let got = match deadline {
            None => select! {
                recv(slot.private_rx) -> t => t.map(Work::Task).map_err(|_| false),
                recv(core.queue_rx) -> w => w.map_err(|_| true),
            },
            Some(d) => select! {
                recv(slot.private_rx) -> t => t.map(Work::Task).map_err(|_| false),
                recv(core.queue_rx) -> w => w.map_err(|_| true),
                default(d.saturating_duration_since(Instant::now())) => return Taken::Nothing,
            },
        };
        let got = match got {
            Ok(w) => match core.ranked.choose(w) {
                Some(w) => Ok(w),
                // A wake whose job another worker took.
                None => return Taken::Nothing,
            },
            Err(e) => Err(e),
        };
        Self::taken(core, got)
    }

    /// What a look or a wait gave, for the worker loop (`Err(true)`: the
    /// queue is gone; `Err(false)`: the private channel is, which it never
    /// is while the slot lives).
    fn taken(core: &Core, got: Result<Work, bool>) -> Taken {
        match got {
            Ok(Work::Task(t)) => {
                // Relaxed: a hint, as in `note_taken`, which decides.
                if core.saturated.load(Ordering::Relaxed) {
                    core.note_taken();
                }
                Taken::Task(t)
            }
            Ok(Work::Wake) | Err(false) => Taken::Nothing,
            Ok(Work::Stop) | Err(true) => Taken::Stop,
        }
    }

    /// [`next_task`](Self::next_task) for a scaling pool: a worker that
    /// waits `idle_timeout` for a job leaves if more than `min` are up
    /// (`None`: it leaves, or the pool stops).
    pub(super) fn next_task_or_leave(self: &Arc<Self>, id: usize, epoch: u64) -> Option<Task> {
        let core = &*self.core;
        let scale = core.scale.as_ref()?;
        let slot = &self.slots[id];
        loop {
            // SeqCst: against `grow`'s read after an enqueue (module `scale`).
            scale.waiting.fetch_add(1, Ordering::SeqCst);
            let got = self.next_task(id, crate::util::deadline(scale.idle_timeout));
            scale.waiting.fetch_sub(1, Ordering::SeqCst);
            match got {
                Taken::Task(t) => {
                    // A submitter that queued while this worker had taken
                    // its job but still counted as waiting did not grow the
                    // pool for its own job: look again now that it does not
                    // (SeqCst on both sides, module `scale`).
                    self.grow();
                    return Some(t);
                }
                Taken::Stop => return None,
                Taken::Nothing => {}
            }
            if !core.may_shrink() {
                continue;
            }
            let decide = scale.decide();
            if !scale.may_leave(&decide) {
                continue;
            }
            // After lowering `waiting` above: a job queued before a
            // submitter saw this worker gone is seen here.
            std::sync::atomic::fence(Ordering::SeqCst);
            if core.has_queued() || !slot.private_rx.is_empty() {
                continue;
            }
            use crate::pool::scale::SlotState;
            scale.set(&decide, id, SlotState::Up, SlotState::Dormant);
            drop(decide);
            log::info!("worker thread {id} (epoch {epoch}) leaves: {}", scale.why());
            self.core.event(PoolEvent::WorkerExited {
                worker: id,
                pid: None,
                status: scale.why(),
                jobs_held: 0,
                expected: true,
            });
            return None;
        }
    }

    /// After an enqueue on a scaling pool: if more jobs are queued than
    /// threads wait for work, wakes a dormant slot.
    pub(crate) fn grow(self: &Arc<Self>) {
        let core = &*self.core;
        let Some(scale) = &core.scale else { return };
        // SeqCst: the enqueue before, then this read (module `scale`).
        std::sync::atomic::fence(Ordering::SeqCst);
        let queued = core.queue_rx.len() + core.requeued.load(Ordering::SeqCst);
        if queued <= scale.waiting.load(Ordering::SeqCst) || !core.may_grow() {
            return;
        }
        let Some(id) = scale.grow() else { return };
        let epoch = lock(&self.slots[id].current).0 + 1;
        if let Err(e) = self.start(id, epoch) {
            use crate::pool::scale::SlotState;
            scale.set(&scale.decide(), id, SlotState::Up, SlotState::Dormant);
            self.core.event(PoolEvent::StartFailed {
                worker: id,
                reason: format!("could not start a worker thread: {e}"),
            });
        }
    }
}
