//! Job priorities (scenario "priority"): jobs submitted with a priority
//! above 0 wait in a heap beside the queue, ordered by a rank that ages.
//!
//! A job's rank is its submission number less `priority × aging`: it is
//! queued as if it had been submitted that many jobs earlier, so it runs
//! before the job submitted then (on equal ranks the higher priority runs
//! first). Higher priorities run first, equal ones in submission order,
//! and a job of priority 0 is overtaken by at most `p × aging` later jobs
//! of priority `p`, so nothing starves.
//!
//! The queue (a bounded channel) still holds an entry per job, so its
//! limit and its blocking work as before: a ranked job's entry is a
//! [`Work::Wake`], queued *before* the job goes into the heap (so the job
//! runs only once its submitter is past the queue's backpressure).
//! Whoever receives an entry compares the best of the heap with it:
//! - a `Wake`: the heap's best runs (there may be none: a job can leave the
//!   heap before its wake is read, or its wake be read before the push);
//! - an inline task (priority 0): the better of it and the heap's best
//!   runs; if that is the heap's, the inline task goes into the heap with
//!   its own rank and keeps its place.
//!
//! No job is stranded in the heap: a worker looks at the heap (in rank
//! order, through `Core::pop`) before it blocks on the queue, a process
//! pool's submitter kicks the workers after its push, and a thread
//! pool's submitter that finds the queue empty after its push queues one
//! more wake for a thread that may have gone to sleep meanwhile.
//!
//! `Core::pop` (the next entry, against the heap) and `Core::has_queued`
//! live here too, beside the choice they make.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Task, Work, lock};

/// A job in the heap, with its rank.
struct Entry {
    rank: i128,
    task: Task,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// The one that runs first is the greater (`BinaryHeap` pops the
    /// greatest): see [`order`].
    fn cmp(&self, other: &Self) -> CmpOrdering {
        order(other.rank, &other.task).cmp(&order(self.rank, &self.task))
    }
}

/// What decides which of two jobs runs first, least first: the lower
/// rank; on equal ranks the higher priority (a job ranked `p × aging`
/// ahead takes the place of the job submitted there, and goes before it);
/// then submission order (the job id).
fn order(rank: i128, t: &Task) -> (i128, std::cmp::Reverse<u32>, u64) {
    (rank, std::cmp::Reverse(t.priority), t.id)
}

/// The heap of ranked jobs.
#[derive(Default)]
pub(crate) struct Ranked {
    heap: Mutex<BinaryHeap<Entry>>,
    /// How many jobs the heap holds (read without the lock).
    len: AtomicUsize,
    /// Jobs of priority `p` go `p × aging` jobs ahead.
    aging: u64,
}

/// The rank of an inline (priority 0) task: its submission number.
fn inline_rank(t: &Task) -> i128 {
    i128::from(t.id)
}

impl Ranked {
    pub(crate) fn new(aging: u64) -> Ranked {
        Ranked {
            aging,
            ..Ranked::default()
        }
    }

    /// Whether the heap holds a job (a hint; the lock decides).
    pub(crate) fn is_empty(&self) -> bool {
        // Acquire: pairs with the Release stores under the lock.
        self.len.load(Ordering::Acquire) == 0
    }

    /// Puts `t` (of `priority` above 0) in the heap.
    pub(crate) fn push(&self, t: Task, priority: u32) {
        let rank = inline_rank(&t) - i128::from(priority) * i128::from(self.aging);
        let mut h = lock(&self.heap);
        h.push(Entry { rank, task: t });
        self.len.store(h.len(), Ordering::Release);
    }

    /// The heap's best job, if any.
    pub(crate) fn pop(&self) -> Option<Task> {
        if self.is_empty() {
            return None;
        }
        let mut h = lock(&self.heap);
        let e = h.pop();
        self.len.store(h.len(), Ordering::Release);
        e.map(|e| e.task)
    }

    /// What a worker runs, given the entry `got` it took from the queue
    /// (`None`: a wake whose job already left the heap; take the next).
    pub(crate) fn choose(&self, got: Work) -> Option<Work> {
        match got {
            Work::Stop => Some(Work::Stop),
            Work::Wake => self.pop().map(Work::Task),
            Work::Task(t) => {
                if self.is_empty() {
                    return Some(Work::Task(t));
                }
                let mut h = lock(&self.heap);
                let better = h
                    .peek()
                    .is_some_and(|best| order(best.rank, &best.task) < order(inline_rank(&t), &t));
                if !better {
                    return Some(Work::Task(t));
                }
                let best = h.pop().map(|e| e.task);
                h.push(Entry {
                    rank: inline_rank(&t),
                    task: t,
                });
                self.len.store(h.len(), Ordering::Release);
                best.map(Work::Task)
            }
        }
    }

    /// Every job in the heap (the pool fails them).
    pub(crate) fn drain(&self) -> Vec<Task> {
        let mut h = lock(&self.heap);
        let out = std::mem::take(&mut *h)
            .into_vec()
            .into_iter()
            .map(|e| e.task)
            .collect();
        self.len.store(0, Ordering::Release);
        out
    }
}

/// The queue's next entry, chosen against the heap: a `Core`'s takers
/// (thread workers, a process worker's dispatch) come here.
impl super::Core {
    /// The next task: a re-queued one first, then the queue's.
    pub(crate) fn pop(&self) -> Option<Work> {
        // Acquire: pairs with the Release increment in `requeue`.
        if self.requeued.load(Ordering::Acquire) > 0 {
            let mut q = lock(&self.requeue);
            if let Some(t) = q.pop_front() {
                self.requeued.store(q.len(), Ordering::Release);
                return Some(Work::Task(t));
            }
        }
        loop {
            match self.queue_rx.try_recv() {
                Ok(w) => match self.ranked.choose(w) {
                    Some(w) => return Some(w),
                    // A wake whose job left the heap already: the next.
                    None => continue,
                },
                // A ranked job may wait without a wake (module `ranked`).
                Err(_) => return self.ranked.pop().map(Work::Task),
            }
        }
    }

    /// Whether any task waits (queued or re-queued).
    pub(crate) fn has_queued(&self) -> bool {
        self.requeued.load(Ordering::Acquire) > 0
            || self.held.load(Ordering::SeqCst) > 0
            || !self.queue_rx.is_empty()
            || !self.ranked.is_empty()
    }
}
