//! Thread workers: each takes jobs from the shared queue (or its own
//! channel, for broadcasts) and runs them in this process, as Rust values.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, select};

use super::{BuildError, Core, Event, Outcome, Task, Work};
use crate::job::{Context, Failure, Handlers, ProgressSink};

pub(crate) struct Threads {
    private: Vec<Sender<Task>>,
    handles: Vec<JoinHandle<()>>,
    core: Arc<Core>,
}

impl Threads {
    pub(crate) fn spawn(core: Arc<Core>, handlers: Handlers, n: usize) -> Result<Threads, BuildError> {
        let mut private = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for id in 0..n {
            let (tx, rx) = crossbeam_channel::unbounded();
            private.push(tx);
            let core2 = core.clone();
            let handlers = handlers.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("portpool-worker-{id}"))
                .spawn(move || worker_loop(id, &core2, &handlers, &rx));
            match spawned {
                Ok(h) => {
                    log::info!("worker {id} started (thread)");
                    handles.push(h);
                }
                Err(e) => {
                    // Stop the workers already running before giving up.
                    let mut started = Threads {
                        private,
                        handles,
                        core,
                    };
                    started.shutdown();
                    return Err(BuildError::io(format!("could not start worker thread {id}"), e));
                }
            }
        }
        Ok(Threads {
            private,
            handles,
            core,
        })
    }

    /// Gives `task` to worker `w` directly (broadcast).
    pub(crate) fn send_to(&self, w: usize, task: Task) {
        if let Err(e) = self.private[w].send(task) {
            e.0.reply.send(Event::Done(Outcome::Failed(Failure::Rejected(
                "the worker has stopped".into(),
            ))));
        }
    }

    /// Lets every worker finish what is queued, then stops and joins them.
    pub(crate) fn shutdown(&mut self) {
        for _ in 0..self.handles.len() {
            // One Stop per worker, behind every task queued before it.
            if self.core.queue_tx.send(Work::Stop).is_err() {
                break;
            }
        }
        for (id, h) in self.handles.drain(..).enumerate() {
            if h.join().is_err() {
                log::error!("worker thread {id} panicked outside a job");
            }
            log::info!("worker {id} stopped (thread)");
        }
        // Broadcast copies that arrived after a worker's Stop.
        for tx in self.private.drain(..) {
            drop(tx);
        }
    }
}

/// The worker loop: take, run, answer. Ends on `Stop`.
fn worker_loop(id: usize, core: &Core, handlers: &Handlers, private: &Receiver<Task>) {
    let counters = &core.counters[id];
    loop {
        // Phase 1: take a task (a broadcast copy first, if any).
        let task = match private.try_recv() {
            Ok(t) => t,
            Err(_) => select! {
                recv(private) -> t => match t {
                    Ok(t) => t,
                    Err(_) => continue,
                },
                recv(core.queue_rx) -> w => match w {
                    Ok(Work::Task(t)) => t,
                    Ok(Work::Stop) | Err(_) => return,
                },
            },
        };
        // Phase 2: run it.
        let jobs = task.jobs();
        // Relaxed: statistics only.
        counters.running.fetch_add(jobs as usize, Ordering::Relaxed);
        let (outcome, failed) = match task.batch {
            None => {
                let o = run(
                    id,
                    handlers,
                    task.route,
                    task.job,
                    &task.reply,
                    task.cancelled.clone(),
                );
                let failed = u64::from(!matches!(o, Outcome::Value(_)));
                (o, failed)
            }
            Some(_) => {
                let cx = Context::new(id, None, ProgressSink::Discard);
                match handlers.call_batch_value(task.route, task.job, &cx) {
                    Ok((v, failed)) => (Outcome::Value(v), u64::from(failed)),
                    Err(f) => (Outcome::Failed(f), jobs),
                }
            }
        };
        counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
        counters.finish_n(jobs - failed, failed);
        // Phase 3: answer.
        log::trace!("worker {id}: job {} ({}) done", task.id, task.route);
        task.reply.send(Event::Done(outcome));
    }
}

fn run(
    id: usize,
    handlers: &Handlers,
    route: &str,
    job: Box<dyn std::any::Any + Send>,
    reply: &super::Reply,
    cancelled: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Outcome {
    // Acquire: pairs with the Release store in `Ticket::cancel`.
    if cancelled.as_ref().is_some_and(|c| c.load(Ordering::Acquire)) {
        return Outcome::Failed(Failure::Cancelled);
    }
    let cx = Context::new(id, cancelled, ProgressSink::Channel(reply.clone()));
    match handlers.call_value(route, job, &cx) {
        Ok(v) => Outcome::Value(v),
        Err(f) => Outcome::Failed(f),
    }
}
