//! The reader loop: a worker's answers until its port closes, then what
//! it held is settled (scenario "crash"), and the process reaped.

use super::*;

/// How a worker's reader loop ended.
pub(super) struct Exit {
    pub(super) status: String,
    /// The pool ended the worker itself.
    pub(super) expected: bool,
}

/// Reads a worker's answers until its port closes, then settles what it
/// held: retried, re-queued or failed (scenario "crash").
///
/// It spins briefly on the port after each answer (the next one often
/// follows at once), then sleeps on a duplicate of the fd without holding
/// the receiver, so a ticket waiting for its worker's only job can read its
/// answer itself; while one does, this thread naps.
pub(super) fn reader_loop(w: &Worker, shared: &Shared) -> Exit {
    let core = &*shared.core;
    let why = w.rx.background(&mut &*w, crate::transport::DEFAULT_SPIN);
    let counters = &core.counters[w.id];
    // A bad frame this thread read: killed now, as when a ticket reads one
    // (else the reap below would wait out its grace for nothing, and report
    // a worker that "closed its port but kept running").
    if let Some(e) = &why {
        w.kill_for_protocol(e);
    }
    let why = why.or_else(|| lock(&w.broke).take());
    // The port is closed (or broken): this worker is finished.
    // Release: pairs with the Acquire loads in `kick` and `fill_slots`.
    w.alive.store(false, Ordering::Release);
    let status = reap(w);
    // A launcher's status is the launcher's (ssh says 255 for a remote
    // command killed by a signal): say so.
    let launcher = &shared.slots[w.id].launcher;
    let status = if launcher.is_local() {
        status
    } else {
        format!("{status}, through {launcher}")
    };
    let stderr = w.stderr.wait_lines();
    let status = match lock(&w.cut_short).take() {
        Some(cut) => format!("{status}; {cut}"),
        None => status,
    };
    let status = match &why {
        Some(e) => format!("it broke its protocol ({e}); {status}"),
        None => status,
    };
    // An allocation that failed under the pool's memory limit (a Rust
    // program says so on stderr, then aborts): say which limit it hit.
    let status = match core.config.recycle.limit {
        Some(limit) => match stderr.iter().rev().find(|l| l.contains("memory allocation of")) {
            Some(line) => format!(
                "it hit its memory limit of {} ({}); {status}",
                crate::pool::mib(limit),
                line.trim()
            ),
            None => status,
        },
        None => status,
    };
    // A retiring worker that was told to stop exits as a recycle; one that
    // crashed before (a job of its own killed it) is a crash.
    let ended_by = lock(&w.ended_by).take().or_else(|| {
        w.stop_sent
            .load(Ordering::SeqCst)
            .then(|| EndReason::Recycle(lock(&w.recycle_why).take().unwrap_or_else(|| "recycled".into())))
    });
    let status = match &ended_by {
        Some(EndReason::Recycle(why)) => format!("{why}; {status}"),
        _ => status,
    };
    let stopping = core.stopping.load(Ordering::Acquire);
    let failure = Failure::WorkerExited {
        worker: w.id,
        pid: Some(w.pid),
        status: Some(status.clone()),
        stderr,
    };
    let mut held: Vec<Task> = lock(&w.pending).drain().map(|(_, t)| t).collect();
    // In the order they were sent (the pending map has none): those that go
    // back to the queue keep it, and run again as they were submitted.
    held.sort_unstable_by_key(|t| t.seq);
    let jobs_held = held.len();
    // The exit is told (and kept for `stats()`) before the jobs it took
    // down fail: whoever sees such a job's error also sees its cause.
    let expected = ended_by.is_some() || stopping;
    core.event(PoolEvent::WorkerExited {
        worker: w.id,
        pid: Some(w.pid),
        status: status.clone(),
        jobs_held,
        expected,
    });
    let mut requeued = false;
    for t in held {
        let jobs = t.jobs();
        counters.running.fetch_sub(jobs as usize, Ordering::Relaxed);
        let retry = match &ended_by {
            // Its neighbours did nothing wrong: back to the queue, no
            // retry spent (scenario "cancel").
            Some(EndReason::Victims(ids)) => !ids.contains(&t.id),
            Some(EndReason::Shutdown) => false,
            // Replaced between jobs: what it had not run goes again.
            Some(EndReason::Recycle(_)) => true,
            // A crash: retried if it has retries left (scenario "retry").
            None => t.retries > 0 && !stopping,
        };
        // A task whose job value was out for encoding when the worker died
        // cannot be sent again (`dispatch`).
        let retry = retry
            && !matches!(t.job, crate::pool::Payload::Lent)
            && !t.state.is_settled()
            && core.failure().is_none();
        if retry {
            let mut t = t;
            if ended_by.is_none() {
                if let Some(m) = core.route_metrics(&t.state, Some(w.id)) {
                    m.retried(jobs);
                }
                t.retries -= 1;
                log::info!(
                    "job {} lost with worker {}: retrying ({} left)",
                    t.id,
                    w.id,
                    t.retries
                );
            }
            core.requeue(t);
            requeued = true;
            continue;
        }
        let f = match ended_by {
            Some(EndReason::Shutdown) => Failure::Cancelled,
            _ => failure.clone(),
        };
        core.retire_failure(&t.state, &t.reply, jobs, f, Some(w.id));
    }
    w.in_flight.store(0, Ordering::SeqCst);
    if requeued {
        shared.kick();
    }
    core.idle.notify();
    Exit { status, expected }
}

/// Waits for the worker process to exit (killing it if it lingers after
/// closing its port) and describes how it ended.
pub(super) fn reap(w: &Worker) -> String {
    let Some(mut child) = lock(&w.child).take() else {
        return "already reaped".into();
    };
    match wait_or_kill(&mut child, EXIT_GRACE) {
        Ok((st, false)) => describe_status(st),
        Ok((st, true)) => format!(
            "{} (killed: it closed its port but kept running)",
            describe_status(st)
        ),
        Err(e) => format!("could not be waited for: {e}"),
    }
}
