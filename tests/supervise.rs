//! Supervision with real processes and real signals: crashes, restarts,
//! retries, timeouts, cancellation, shutdown, the runtime's ref counts,
//! suspend/resume and signal handling. After each test every worker pid
//! the pool ever started is asserted gone (reaped, not a zombie).

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;
#[path = "common/pools.rs"]
mod pools;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BOUND, GatePath, assert_pid_gone, both};
use crossbeam_channel::Receiver;
use jobs::*;
use pools::Backend;
use portpool::job::TimeoutPhase;
use portpool::pool::{JobOptions, PoolBuilder, SubmitError};
use portpool::supervisor::PoolEvent;
use portpool::{JobError, Pool, RestartPolicy, Runtime, Shutdown};

/// Everything a pool reported, and a way to wait for one event.
struct Events {
    rx: Receiver<PoolEvent>,
    seen: Arc<Mutex<Vec<PoolEvent>>>,
}

impl Events {
    /// Waits (bounded) for an event matching `f` and returns it.
    fn wait_for(&self, what: &str, f: impl Fn(&PoolEvent) -> bool) -> PoolEvent {
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(e) if f(&e) => return e,
                Ok(_) => {}
                Err(_) => panic!(
                    "no {what} event within {BOUND:?}; saw {:?}",
                    self.seen.lock().unwrap()
                ),
            }
        }
    }

    /// Every worker pid the pool started so far.
    fn pids(&self) -> BTreeSet<u32> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                PoolEvent::WorkerStarted { pid, .. } => *pid,
                _ => None,
            })
            .collect()
    }
}

fn builder(backend: Backend, n: usize) -> (PoolBuilder, Events) {
    let b = pools::builder(backend, n);
    let (tx, rx) = crossbeam_channel::unbounded();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let b = b
        .runtime(&Runtime::new())
        .cancel_grace(Duration::from_millis(50))
        .on_event(move |e| {
            seen2.lock().unwrap().push(e.clone());
            let _ = tx.send(e.clone());
        });
    (b, Events { rx, seen })
}

/// Shuts `pool` down and asserts that no worker it ever started is alive.
fn finish(pool: Pool, events: &Events) {
    pool.shutdown(Shutdown::default());
    for pid in events.pids() {
        assert_pid_gone(pid);
    }
}

fn pid_of(pool: &Pool, worker: usize) -> u32 {
    pool.stats().workers[worker]
        .pid
        .expect("a running worker has a pid")
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a worker pid the pool has not reaped yet (the
    // tests only signal workers they saw running and whose exit they await).
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

fn exited(r: Result<(), JobError<String>>) -> (Option<u32>, String, Vec<String>) {
    match r {
        Err(JobError::WorkerExited {
            pid, status, stderr, ..
        }) => (pid, status.unwrap_or_default(), stderr),
        other => panic!("expected WorkerExited, got {other:?}"),
    }
}

// ---------------------------------------------------------------- crashes

#[test]
fn sigkill_mid_job_fails_that_job_and_a_replacement_serves() {
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b.build().unwrap();
    let gate = GatePath::new("sigkill");
    let old = pid_of(&pool, 0);
    let mut t = pool.submit(Stubborn(gate.0.clone())).unwrap();
    assert_eq!(t.recv_progress::<String>().as_deref(), Some("started"));
    kill(old, libc::SIGKILL);
    match t.wait() {
        Err(JobError::WorkerExited {
            worker: 0,
            pid: Some(p),
            status: Some(s),
            ..
        }) => {
            assert_eq!(p, old);
            assert_eq!(s, "signal 9 (SIGKILL)");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert_eq!(pool.submit(Square(9)).unwrap().wait().unwrap(), 81);
    assert_ne!(pid_of(&pool, 0), old);
    assert_eq!(pool.stats().workers[0].restarts, 1);
    assert_pid_gone(old);
    finish(pool, &ev);
}

#[test]
fn exit_zero_inside_a_handler_does_not_hang() {
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b.build().unwrap();
    let (_, status, _) = exited(pool.submit(Exit(0)).unwrap().wait());
    assert_eq!(status, "exit code 0");
    assert_eq!(pool.submit(Square(4)).unwrap().wait().unwrap(), 16);
    finish(pool, &ev);
}

#[test]
fn a_segfault_is_named_sigsegv() {
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b.build().unwrap();
    let die = Die {
        signal: "SEGV".into(),
        stderr: vec![],
    };
    let (_, status, _) = exited(pool.submit(die).unwrap().wait());
    assert!(status.contains("SIGSEGV"), "{status}");
    assert_eq!(pool.submit(Square(5)).unwrap().wait().unwrap(), 25);
    finish(pool, &ev);
}

#[test]
fn an_abort_carries_the_last_lines_of_the_workers_stderr() {
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b.build().unwrap();
    let die = Die {
        signal: "ABRT".into(),
        stderr: vec!["loading model".into(), "out of patience: giving up".into()],
    };
    let (_, status, stderr) = exited(pool.submit(die).unwrap().wait());
    assert!(status.contains("SIGABRT"), "{status}");
    assert_eq!(
        stderr[stderr.len() - 2..],
        [
            "loading model".to_string(),
            "out of patience: giving up".to_string()
        ]
    );
    finish(pool, &ev);
}

#[test]
fn a_worker_that_dies_while_idle_is_replaced_and_nothing_is_lost() {
    let (b, ev) = builder(Backend::Processes, 2);
    let pool = b.build().unwrap();
    assert_eq!(pool.submit(Square(3)).unwrap().wait().unwrap(), 9);
    let old = pid_of(&pool, 1);
    kill(old, libc::SIGKILL);
    let e = ev.wait_for(
        "exit of the idle worker",
        |e| matches!(e, PoolEvent::WorkerExited { pid: Some(p), .. } if *p == old),
    );
    assert!(
        matches!(
            e,
            PoolEvent::WorkerExited {
                jobs_held: 0,
                expected: false,
                ..
            }
        ),
        "{e:?}"
    );
    ev.wait_for("replacement", |e| {
        matches!(
            e,
            PoolEvent::WorkerStarted {
                worker: 1,
                restarts: 1,
                ..
            }
        )
    });
    let results: Vec<u64> = pool.map((0..200).map(Square)).map(Result::unwrap).collect();
    assert_eq!(results, (0..200).map(|i| i * i).collect::<Vec<_>>());
    assert_eq!(pool.stats().failed, 0);
    finish(pool, &ev);
}

fn workers_killing_each_other(n: usize) {
    let (b, ev) = builder(Backend::Processes, n);
    let pool = b
        .restart(RestartPolicy {
            max_restarts: 1000,
            ..RestartPolicy::default()
        })
        .build()
        .unwrap();
    for _round in 0..3 {
        let pids: Vec<u32> = pool.stats().workers.iter().filter_map(|w| w.pid).collect();
        let tickets: Vec<_> = pids.iter().map(|p| pool.submit(KillPid(*p)).unwrap()).collect();
        for t in tickets {
            match t
                .wait_timeout(BOUND)
                .unwrap_or_else(|_| panic!("a kill job never ended"))
            {
                Ok(_) | Err(JobError::WorkerExited { .. }) => {}
                Err(e) => panic!("unexpected outcome {e:?}"),
            }
        }
    }
    // However it went, the pool serves again with every worker.
    let results: Vec<u64> = pool.map((0..50).map(Square)).map(Result::unwrap).collect();
    assert_eq!(results.len(), 50);
    let who: BTreeSet<usize> = pool.broadcast(WhoAmI).into_iter().map(|r| r.unwrap().0).collect();
    assert_eq!(who, (0..n).collect());
    finish(pool, &ev);
}

#[test]
fn workers_killing_each_other_1() {
    workers_killing_each_other(1);
}

#[test]
fn workers_killing_each_other_2() {
    workers_killing_each_other(2);
}

#[test]
fn workers_killing_each_other_5() {
    workers_killing_each_other(5);
}

// ---------------------------------------------------------- restart limit

/// A one-worker pool under `policy` whose jobs exit with `codes`, one after
/// another, with a `Square(2)` queued behind them: waits for each crash and
/// for the pool to fail. Gives the pool, its events, the failure's reason
/// and the ticket of the job behind.
fn crash_until_the_pool_fails(
    policy: RestartPolicy,
    codes: &[i32],
) -> (Pool, Events, String, portpool::Ticket<Square>) {
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b.inflight_per_worker(1).restart(policy).build().unwrap();
    let crashes: Vec<_> = codes.iter().map(|&c| pool.submit(Exit(c)).unwrap()).collect();
    let behind = pool.submit(Square(2)).unwrap();
    for c in crashes {
        exited(c.wait());
    }
    let PoolEvent::PoolFailed { reason } =
        ev.wait_for("pool failure", |e| matches!(e, PoolEvent::PoolFailed { .. }))
    else {
        unreachable!()
    };
    (pool, ev, reason, behind)
}

#[test]
fn a_crash_loop_hits_the_restart_limit_and_the_pool_fails_with_its_cause() {
    let policy = RestartPolicy {
        max_restarts: 2,
        period: Duration::from_secs(600),
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let (pool, ev, reason, behind) = crash_until_the_pool_fails(policy, &[40, 41, 42]);
    assert!(reason.contains("exit code 42"), "{reason}");
    match behind.wait() {
        Err(JobError::Rejected { reason }) => assert!(reason.contains("the pool failed"), "{reason}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    match pool.submit(Square(1)) {
        Err(SubmitError::Failed(Square(1), why)) => assert!(why.contains("exit code 42"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(pool.failure(), Some(reason));
    finish(pool, &ev);
}

#[test]
fn a_restart_policy_with_a_zero_period_is_refused_at_build() {
    for backend in [Backend::Threads, Backend::Processes] {
        let (b, _ev) = builder(backend, 1);
        let err = b
            .restart(RestartPolicy {
                max_restarts: 2,
                period: Duration::ZERO,
                ..RestartPolicy::default()
            })
            .build()
            .expect_err("a zero period");
        assert!(err.to_string().contains("period above zero"), "{err}");
        // One sentence, as it reads (no gap left by a line break in the source).
        assert!(
            err.to_string().contains("so a crash loop would never stop"),
            "{err}"
        );
    }
    // Never restarting needs no window.
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b
        .restart(RestartPolicy {
            period: Duration::ZERO,
            ..RestartPolicy::never()
        })
        .build()
        .unwrap();
    finish(pool, &ev);
}

// A backoff too long to wait means never: the pool fails at that restart
// (queued jobs fail, submits are refused) instead of waiting for ever.
#[test]
fn a_restart_backoff_too_long_to_wait_fails_the_pool_instead_of_waiting() {
    let policy = RestartPolicy {
        max_restarts: 10,
        period: Duration::from_secs(600),
        backoff: Duration::MAX,
        max_backoff: Duration::MAX,
    };
    // The first restart is immediate; the second would wait the backoff.
    let (pool, ev, reason, behind) = crash_until_the_pool_fails(policy, &[50, 51]);
    assert!(
        reason.contains("too long to wait") && reason.contains("exit code 51"),
        "{reason}"
    );
    match behind.wait_timeout(BOUND) {
        Ok(Err(JobError::Rejected { reason })) => assert!(reason.contains("the pool failed"), "{reason}"),
        Ok(other) => panic!("expected Rejected, got {other:?}"),
        Err(_) => panic!("the queued job was left waiting for a restart that never comes"),
    }
    assert!(matches!(pool.submit(Square(1)), Err(SubmitError::Failed(..))));
    finish(pool, &ev);
}

#[test]
fn a_replacement_that_cannot_start_is_a_start_failure_with_its_cause() {
    // The worker command works once, then exits before its handshake.
    let dir = GatePath::new("start-failure");
    let script = format!(
        "if [ -e '{m}' ]; then echo 'no licence left' >&2; exit 3; fi; touch '{m}'; exec '{bin}' pool-worker",
        m = dir.0.display(),
        bin = env!("CARGO_BIN_EXE_portpool-fixture"),
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b
        .worker_command(cmd)
        .restart(RestartPolicy {
            max_restarts: 2,
            period: Duration::from_secs(600),
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        })
        .build()
        .unwrap();
    exited(pool.submit(Exit(1)).unwrap().wait());
    let PoolEvent::StartFailed { reason, .. } =
        ev.wait_for("start failure", |e| matches!(e, PoolEvent::StartFailed { .. }))
    else {
        unreachable!()
    };
    assert!(
        reason.contains("did not complete its handshake (exit code 3"),
        "{reason}"
    );
    assert!(reason.contains("no licence left"), "{reason}");
    let PoolEvent::PoolFailed { reason } =
        ev.wait_for("pool failure", |e| matches!(e, PoolEvent::PoolFailed { .. }))
    else {
        unreachable!()
    };
    assert!(reason.contains("exit code 3"), "{reason}");
    finish(pool, &ev);
}

#[test]
fn a_worker_that_cannot_start_fails_the_build_with_its_cause() {
    let mut exits_early = Command::new("sh");
    exits_early.args(["-c", "echo 'config missing' >&2; exit 5"]);
    let mut wrong_version = common::fixture("raw");
    wrong_version.arg("version");
    let mut old_jobs = common::fixture("raw");
    old_jobs.arg("old-jobs");
    let cases = [
        (
            Command::new("/nonexistent/portpool-worker"),
            "could not start worker 0",
        ),
        (
            exits_early,
            "did not complete its handshake (exit code 5; its stderr ended with: config missing)",
        ),
        (wrong_version, "version 99"),
        (
            old_jobs,
            "speaks version 1 of the job messages, this supervisor 2",
        ),
    ];
    for (cmd, want) in cases {
        let err = Pool::builder()
            .processes(1)
            .worker_command(cmd)
            .forward_worker_stderr(false)
            .runtime(&Runtime::new())
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(want), "{text}");
    }
}

// ------------------------------------------------------------------ retry

/// Jobs a crashed worker held go back in the order they were sent to it,
/// ahead of the queue: after the restart they run in submission order.
#[test]
fn jobs_lost_to_a_crash_run_again_in_the_order_they_were_sent() {
    let marker = GatePath::new("retry-order");
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b.retries(1).inflight_per_worker(8).build().unwrap();
    let crash = pool
        .submit(CrashOnce {
            marker: marker.0.clone(),
            n: 0,
        })
        .unwrap();
    let turns: Vec<_> = (1..=12).map(|n| pool.submit(Turn(n)).unwrap()).collect();
    assert_eq!(crash.wait().unwrap(), 0);
    let ran: Vec<(u64, u64)> = turns.into_iter().map(|t| t.wait().unwrap()).collect();
    let mut by_turn = ran.clone();
    by_turn.sort_by_key(|&(_, turn)| turn);
    let order: Vec<u64> = by_turn.into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, (1..=12).collect::<Vec<_>>(), "{ran:?}");
    finish(pool, &ev);
}

#[test]
fn a_job_lost_to_a_crash_is_retried_on_another_worker() {
    let marker = GatePath::new("retry");
    let (b, ev) = builder(Backend::Processes, 2);
    let pool = b.retries(1).build().unwrap();
    let job = CrashOnce {
        marker: marker.0.clone(),
        n: 7,
    };
    assert_eq!(pool.submit(job).unwrap().wait().unwrap(), 7);
    // Without retries, the same crash fails the job.
    let marker2 = GatePath::new("no-retry");
    let job = CrashOnce {
        marker: marker2.0.clone(),
        n: 8,
    };
    let r = pool
        .submit_with(job, JobOptions::new().retries(0))
        .unwrap()
        .wait();
    assert!(matches!(r, Err(JobError::WorkerExited { .. })), "{r:?}");
    // Handler errors are never retried: a panic is reported once.
    assert!(matches!(
        pool.submit(Boom("no retry".into())).unwrap().wait(),
        Err(JobError::Panicked { .. })
    ));
    finish(pool, &ev);
}

// --------------------------------------------------------------- timeouts

both!(the_run_timeout_counts_from_dispatch_not_from_enqueue, |backend| {
    let (b, ev) = builder(backend, 1);
    let pool = b.inflight_per_worker(1).build().unwrap();
    let gate = GatePath::new(&format!("from-dispatch-{backend:?}"));
    let mut long = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(long.recv_progress::<String>().as_deref(), Some("started"));
    let timeout = Duration::from_millis(300);
    let short = pool
        .submit_with(Square(6), JobOptions::new().timeout(timeout))
        .unwrap();
    // The short job waits in the queue longer than its run timeout: a
    // probe queued behind it with that long a queue deadline times out.
    let probe = pool
        .submit_with(Square(0), JobOptions::new().queue_timeout(timeout))
        .unwrap();
    assert!(matches!(
        probe.wait(),
        Err(JobError::TimedOut {
            phase: TimeoutPhase::Queue,
            ..
        })
    ));
    gate.open();
    assert!(long.wait().unwrap());
    assert_eq!(short.wait().unwrap(), 36);
    finish(pool, &ev);
});

both!(
    a_job_that_never_returns_times_out_and_its_worker_is_replaced,
    |backend| {
        let (b, ev) = builder(backend, 1);
        let pool = b
            .timeout_for::<Stubborn>(Duration::from_millis(100))
            .build()
            .unwrap();
        let gate = GatePath::new(&format!("timeout-{backend:?}"));
        let old = pool.stats().workers[0].pid;
        match pool.submit(Stubborn(gate.0.clone())).unwrap().wait() {
            Err(JobError::TimedOut {
                phase: TimeoutPhase::Run,
                after,
            }) => assert_eq!(after, Duration::from_millis(100)),
            other => panic!("expected TimedOut, got {other:?}"),
        }
        ev.wait_for("the stuck worker's end", |e| {
            matches!(e, PoolEvent::WorkerExited { expected: true, .. })
        });
        assert_eq!(pool.submit(Square(7)).unwrap().wait().unwrap(), 49);
        if backend == Backend::Processes {
            assert_ne!(pool.stats().workers[0].pid, old);
        }
        abandoned_job_is_off_the_books(pool, backend, gate, &ev, (1, 0));
    }
);

both!(
    a_cancelled_job_that_never_returns_ends_once_and_holds_up_nothing,
    |backend| {
        let (b, ev) = builder(backend, 1);
        let pool = b.build().unwrap();
        let gate = GatePath::new(&format!("cancel-stuck-{backend:?}"));
        let mut t = pool.submit(Stubborn(gate.0.clone())).unwrap();
        assert_eq!(t.recv_progress::<String>().as_deref(), Some("started"));
        t.cancel();
        assert!(matches!(t.wait(), Err(JobError::Cancelled)));
        ev.wait_for("the stuck worker's end", |e| {
            matches!(e, PoolEvent::WorkerExited { expected: true, .. })
        });
        assert_eq!(pool.submit(Square(7)).unwrap().wait().unwrap(), 49);
        abandoned_job_is_off_the_books(pool, backend, gate, &ev, (1, 1));
    }
);

/// After a worker stuck in a handler was replaced (a process killed, a
/// thread abandoned): its job counts once (`failed`, `cancelled`), nothing
/// runs, the pool is idle, and the shutdown neither waits for the
/// abandoned thread nor hits its deadline; it counts the thread as left.
fn abandoned_job_is_off_the_books(
    pool: Pool,
    backend: Backend,
    gate: GatePath,
    ev: &Events,
    (failed, cancelled): (u64, u64),
) {
    assert!(pool.wait_idle(BOUND), "{:?}", pool.stats());
    let st = pool.stats();
    assert_eq!(
        (st.running, st.queued, st.done, st.failed, st.cancelled),
        (0, 0, 1, failed, cancelled),
        "{st:?}"
    );
    // It failed on its worker, cancelled or not.
    assert_eq!(st.workers.iter().map(|w| w.failed).sum::<u64>(), failed, "{st:?}");
    let s = pool.shutdown(Shutdown::default());
    assert_eq!(
        (s.threads_abandoned, s.deadline_hit),
        (usize::from(backend == Backend::Threads), false),
        "{s:?}"
    );
    gate.open(); // lets the abandoned thread return
    finish(pool, ev);
}

both!(
    a_queue_wait_deadline_fails_a_job_that_never_left_the_queue,
    |backend| {
        let (b, ev) = builder(backend, 1);
        let pool = b.inflight_per_worker(1).build().unwrap();
        let gate = GatePath::new(&format!("queue-deadline-{backend:?}"));
        let mut long = pool.submit(Gate(gate.0.clone())).unwrap();
        assert_eq!(long.recv_progress::<String>().as_deref(), Some("started"));
        let waiting = pool
            .submit_with(
                Square(2),
                JobOptions::new().queue_timeout(Duration::from_millis(50)),
            )
            .unwrap();
        match waiting.wait() {
            Err(JobError::TimedOut {
                phase: TimeoutPhase::Queue,
                ..
            }) => {}
            other => panic!("expected a queue timeout, got {other:?}"),
        }
        gate.open();
        assert!(long.wait().unwrap());
        finish(pool, &ev);
    }
);

// ----------------------------------------------------------- cancellation

both!(
    cancelling_a_queued_job_answers_at_once_without_a_worker,
    |backend| {
        let (b, ev) = builder(backend, 1);
        let pool = b.inflight_per_worker(1).build().unwrap();
        let gate = GatePath::new(&format!("cancel-queued-{backend:?}"));
        let mut long = pool.submit(Gate(gate.0.clone())).unwrap();
        assert_eq!(long.recv_progress::<String>().as_deref(), Some("started"));
        let queued = pool.submit(Square(3)).unwrap();
        queued.cancel();
        // The gate is still closed: the answer did not need the worker.
        assert!(matches!(queued.wait(), Err(JobError::Cancelled)));
        gate.open();
        assert!(long.wait().unwrap());
        // The cancelled job is counted when it leaves the queue, which is
        // before the next job runs.
        assert_eq!(pool.submit(Square(4)).unwrap().wait().unwrap(), 16);
        assert_eq!(pool.stats().cancelled, 1);
        finish(pool, &ev);
    }
);

both!(cancelling_a_cooperative_running_job_keeps_its_worker, |backend| {
    let (b, ev) = builder(backend, 1);
    let pool = b.inflight_per_worker(1).cancel_grace(BOUND).build().unwrap();
    let gate = GatePath::new(&format!("cancel-coop-{backend:?}"));
    let pid = pool.stats().workers[0].pid;
    let mut t = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(t.recv_progress::<String>().as_deref(), Some("started"));
    t.cancel();
    assert!(matches!(t.wait(), Err(JobError::Cancelled)));
    // The next job runs on the same worker once the handler has returned.
    assert_eq!(pool.submit(Square(8)).unwrap().wait().unwrap(), 64);
    let w = &pool.stats().workers[0];
    assert_eq!((w.pid, w.restarts), (pid, 0));
    finish(pool, &ev);
});

both!(
    cancelling_a_stubborn_job_replaces_its_worker_and_spares_the_others,
    |backend| {
        let (b, ev) = builder(backend, 1);
        let pool = b.inflight_per_worker(3).build().unwrap();
        let gate = GatePath::new(&format!("cancel-stubborn-{backend:?}"));
        let mut stubborn = pool.submit(Stubborn(gate.0.clone())).unwrap();
        assert_eq!(stubborn.recv_progress::<String>().as_deref(), Some("started"));
        // For processes these two sit in the same worker's pipeline.
        let innocents: Vec<_> = (0..2).map(|i| pool.submit(Square(10 + i)).unwrap()).collect();
        stubborn.cancel();
        assert!(matches!(stubborn.wait(), Err(JobError::Cancelled)));
        ev.wait_for("the stubborn worker's end", |e| {
            matches!(e, PoolEvent::WorkerExited { expected: true, .. })
        });
        let got: Vec<u64> = innocents.into_iter().map(|t| t.wait().unwrap()).collect();
        assert_eq!(got, [100, 121]);
        assert_eq!(pool.stats().workers[0].restarts, 1);
        gate.open();
        finish(pool, &ev);
    }
);

// --------------------------------------------------------------- shutdown

both!(dropping_a_pool_with_work_in_flight_finishes_it, |backend| {
    let (b, ev) = builder(backend, 1);
    let pool = b.inflight_per_worker(1).build().unwrap();
    let gate = GatePath::new(&format!("drop-{backend:?}"));
    let mut first = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(first.recv_progress::<String>().as_deref(), Some("started"));
    let rest: Vec<_> = (0..3).map(|i| pool.submit(Square(i)).unwrap()).collect();
    let pids = ev.pids();
    let dropper = std::thread::spawn(move || drop(pool));
    gate.open();
    dropper.join().unwrap();
    assert!(first.wait().unwrap());
    let got: Vec<u64> = rest.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(got, [0, 1, 4]);
    for pid in pids {
        assert_pid_gone(pid);
    }
});

both!(drain_finishes_running_jobs_and_cancels_queued_ones, |backend| {
    let (b, ev) = builder(backend, 1);
    let pool = Arc::new(b.inflight_per_worker(1).build().unwrap());
    let gate = GatePath::new(&format!("drain-{backend:?}"));
    let mut running = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(running.recv_progress::<String>().as_deref(), Some("started"));
    let queued: Vec<_> = (0..3).map(|i| pool.submit(Square(i)).unwrap()).collect();
    let p2 = pool.clone();
    let drain = std::thread::spawn(move || p2.shutdown(Shutdown::drain(BOUND)));
    for t in queued {
        assert!(matches!(t.wait(), Err(JobError::Cancelled)));
    }
    gate.open();
    let report = drain.join().unwrap();
    assert!(running.wait().unwrap());
    assert_eq!(
        (report.completed, report.cancelled, report.workers_killed),
        (1, 3, 0)
    );
    assert!(!report.deadline_hit);
    let pool = Arc::into_inner(pool).unwrap();
    finish(pool, &ev);
});

both!(
    past_the_deadline_work_is_cancelled_and_workers_are_stopped,
    |backend| {
        let (b, ev) = builder(backend, 1);
        let pool = b.build().unwrap();
        let gate = GatePath::new(&format!("deadline-{backend:?}"));
        let mut stuck = pool.submit(Stubborn(gate.0.clone())).unwrap();
        assert_eq!(stuck.recv_progress::<String>().as_deref(), Some("started"));
        let report = pool.shutdown(Shutdown::graceful(Duration::from_millis(50)));
        assert!(report.deadline_hit);
        assert!(matches!(stuck.wait(), Err(JobError::Cancelled)));
        assert_eq!(report.cancelled, 1);
        match backend {
            Backend::Processes => assert_eq!(report.workers_killed, 1),
            // A thread cannot be killed: it is left in its handler, and said so.
            Backend::Threads => assert_eq!(report.threads_abandoned, 1),
        }
        gate.open();
        finish(pool, &ev);
    }
);

#[test]
fn immediate_shutdown_kills_busy_workers_at_once() {
    let (b, ev) = builder(Backend::Processes, 2);
    let pool = b.build().unwrap();
    let gate = GatePath::new("immediate");
    let mut a = pool.submit(Stubborn(gate.0.clone())).unwrap();
    assert_eq!(a.recv_progress::<String>().as_deref(), Some("started"));
    let report = pool.shutdown(Shutdown::immediate());
    assert!(matches!(a.wait(), Err(JobError::Cancelled)));
    assert_eq!(report.workers_killed, 2);
    finish(pool, &ev);
}

// ------------------------------------------------- runtime and lifecycle

#[test]
fn ref_and_unref_decide_when_run_returns() {
    let rt = Runtime::new();
    let pool = Pool::builder()
        .threads(1)
        .handlers(jobs::handlers())
        .runtime(&rt)
        .build()
        .unwrap();
    assert!(pool.keeps_alive());
    assert_eq!(rt.refs(), 1);
    pool.set_keep_alive(false);
    assert_eq!(rt.run_timeout(BOUND), Some(Default::default()));
    pool.set_keep_alive(true);
    // An Ipc counts too, until unref'd.
    let (a, b) = portpool::port::open().unwrap();
    let t = std::thread::spawn(move || b.connect().map(|_| ()));
    let mut ipc = a.connect().unwrap();
    ipc.attach(&rt);
    t.join().unwrap().unwrap();
    assert_eq!(rt.refs(), 2);
    ipc.set_keep_alive(false);
    assert_eq!(rt.refs(), 1);
    // run() returns once the pool shuts down.
    let rt2 = rt.clone();
    let runner = std::thread::spawn(move || rt2.run_timeout(BOUND));
    pool.shutdown(Shutdown::default());
    assert!(runner.join().unwrap().is_some());
    assert!(!pool.keeps_alive());
}

both!(suspend_keeps_queued_jobs_and_resume_runs_them, |backend| {
    let rt = Runtime::new();
    let (b, ev) = builder(backend, 1);
    let pool = b.runtime(&rt).build().unwrap();
    // Unref on suspend, ref on resume: run() may return while suspended.
    let weak_pool = Arc::new(pool);
    let (p1, p2) = (Arc::downgrade(&weak_pool), Arc::downgrade(&weak_pool));
    rt.on_suspend(move || {
        if let Some(p) = p1.upgrade() {
            p.set_keep_alive(false);
        }
    });
    rt.on_resume(move || {
        if let Some(p) = p2.upgrade() {
            p.set_keep_alive(true);
        }
    });
    rt.suspend();
    let tickets: Vec<_> = (0..3).map(|i| weak_pool.submit(Square(i)).unwrap()).collect();
    assert!(
        rt.run_timeout(BOUND).is_some(),
        "run() must return while suspended"
    );
    let s = weak_pool.stats();
    assert_eq!((s.done, s.running), (0, 0));
    let tickets: Vec<_> = tickets
        .into_iter()
        .map(|t| t.try_wait().expect_err("nothing runs while suspended"))
        .collect();
    rt.resume();
    assert!(weak_pool.keeps_alive());
    let got: Vec<u64> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(got, [0, 1, 4]);
    if backend == Backend::Processes {
        // The worker's own hooks ran once each.
        assert_eq!(weak_pool.submit(HookCounts).unwrap().wait().unwrap(), (1, 1));
    }
    let pool = Arc::into_inner(weak_pool).unwrap();
    finish(pool, &ev);
});

// ---------------------------------------------------------------- signals

/// Starts the fixture's `drain` supervisor and reads its `ready` line.
fn drain_supervisor(
    gate: &GatePath,
) -> (
    common::Fixture,
    std::io::BufReader<std::process::ChildStdout>,
    Vec<u32>,
) {
    use std::io::BufRead;
    let mut cmd = common::fixture("drain");
    cmd.arg(&gate.0).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pids: Vec<u32> = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("unexpected supervisor output {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (common::Fixture { child }, out, pids)
}

fn rest(mut out: impl std::io::Read) -> String {
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn sigint_drains_the_supervisor_which_exits_130_with_its_report() {
    let gate = GatePath::new("sigint");
    let (sup, out, pids) = drain_supervisor(&gate);
    sup.signal(libc::SIGINT);
    gate.open();
    let status = sup.assert_gone();
    let text = rest(out);
    assert_eq!(status.code(), Some(130), "{text}");
    assert!(
        text.contains("report 4 completed, 0 failed, 0 cancelled"),
        "{text}"
    );
    assert_eq!(text.matches("job done").count(), 4, "{text}");
    for pid in pids {
        common::wait_pid_gone(pid);
    }
}

/// A program that took over the signals without a hook of its own says,
/// on the first Ctrl-C, that it is finishing its jobs, while they run.
#[test]
fn sigint_without_a_hook_says_what_it_does() {
    use std::io::BufRead;
    let gate = GatePath::new("sigint-quiet");
    let mut cmd = common::fixture("drain");
    cmd.arg(&gate.0)
        .arg("quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready "), "{line:?}");
    let sup = common::Fixture { child };
    sup.signal(libc::SIGINT);
    // The line comes while the jobs are still held by the closed gate.
    // (Stderr is read to its end on a thread of its own, so the
    // supervisor never writes into a closed pipe.)
    let (tx, rx) = crossbeam_channel::unbounded();
    let reader = std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let said = rx
        .iter()
        .find(|l| l.contains("portpool: signal 2"))
        .expect("a line about the signal on stderr");
    assert!(said.contains("interrupt again to stop at once"), "{said}");
    gate.open();
    let status = sup.assert_gone();
    reader.join().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(rest(out).contains("report 4 completed"));
}

#[test]
fn a_second_sigint_stops_at_once() {
    sigint_after(libc::SIGINT, "sigint-twice", 130);
}

// What the first signal's message says: a SIGINT during a shutdown that a
// SIGTERM began makes it immediate too.
#[test]
fn a_sigint_after_sigterm_stops_at_once() {
    sigint_after(libc::SIGTERM, "sigterm-then-sigint", 143);
}

/// Sends `first`, then (once it was handled) SIGINT, to a supervisor whose
/// 4 jobs are held: they are cancelled at once, it exits with `code`, and
/// no worker is left.
fn sigint_after(first: i32, gate: &str, code: i32) {
    let gate = GatePath::new(gate);
    let (sup, mut out, pids) = drain_supervisor(&gate);
    sup.signal(first);
    // Two signals pending at once would merge into one: wait until the
    // first was handled.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), format!("signal {first}"));
    sup.signal(libc::SIGINT);
    let status = sup.assert_gone();
    let text = rest(out);
    assert_eq!(status.code(), Some(code), "{text}");
    assert!(text.contains("4 cancelled"), "{text}");
    for pid in pids {
        common::wait_pid_gone(pid);
    }
}

#[test]
fn sigterm_shuts_down_gracefully_and_exits_143() {
    let gate = GatePath::new("sigterm");
    let (sup, out, pids) = drain_supervisor(&gate);
    sup.signal(libc::SIGTERM);
    gate.open();
    let status = sup.assert_gone();
    let text = rest(out);
    assert_eq!(status.code(), Some(143), "{text}");
    assert_eq!(text.matches("job done").count(), 4, "{text}");
    for pid in pids {
        common::wait_pid_gone(pid);
    }
}

// ------------------------------------------------- review regressions

both!(broadcast_after_shutdown_is_rejected_not_a_hang, |backend| {
    let (b, ev) = builder(backend, 2);
    let pool = b.build().unwrap();
    pool.shutdown(Shutdown::default());
    for r in pool.broadcast(WhoAmI) {
        assert!(matches!(r, Err(JobError::Rejected { .. })), "{r:?}");
    }
    finish(pool, &ev);
});

#[test]
fn shutdown_with_stuck_threads_and_a_tiny_queue_is_bounded() {
    let (b, ev) = builder(Backend::Threads, 2);
    let pool = b.queue_limit(1).build().unwrap();
    let gate = GatePath::new("stuck-threads");
    let mut stuck: Vec<_> = (0..2)
        .map(|_| pool.submit(Stubborn(gate.0.clone())).unwrap())
        .collect();
    for t in &mut stuck {
        assert_eq!(t.recv_progress::<String>().as_deref(), Some("started"));
    }
    let report = pool.shutdown(Shutdown::graceful(Duration::from_millis(20)));
    assert_eq!(report.threads_abandoned, 2, "{report:?}");
    for t in stuck {
        assert!(matches!(t.wait(), Err(JobError::Cancelled)));
    }
    gate.open();
    finish(pool, &ev);
}

#[test]
fn a_job_cancelled_in_the_queue_with_a_queue_deadline_counts_once() {
    let (b, ev) = builder(Backend::Processes, 1);
    let pool = b
        .inflight_per_worker(1)
        .queue_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let gate = GatePath::new("count-once");
    let mut long = pool
        .submit_with(Gate(gate.0.clone()), JobOptions::new().queue_timeout(BOUND))
        .unwrap();
    assert_eq!(long.recv_progress::<String>().as_deref(), Some("started"));
    let queued = pool.submit(Square(1)).unwrap();
    queued.cancel();
    assert!(matches!(queued.wait(), Err(JobError::Cancelled)));
    // Let the queue deadline of the cancelled job pass, then its turn come:
    // a probe queued after it, with the same deadline, times out later
    // (the monitor fires deadlines in order).
    let probe = pool.submit(Square(2)).unwrap();
    assert!(matches!(
        probe.wait(),
        Err(JobError::TimedOut {
            phase: TimeoutPhase::Queue,
            ..
        })
    ));
    gate.open();
    assert!(long.wait().unwrap());
    assert_eq!(pool.submit(Square(3)).unwrap().wait().unwrap(), 9);
    let s = pool.stats();
    // (`failed` also holds the probe.)
    assert_eq!((s.cancelled, s.failed - 1, s.done), (1, 1, 2), "{s:?}");
    finish(pool, &ev);
}

/// The state letter of process `pid` (R, S, T, Z, ...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().next()?.chars().next()
}

fn wait_state(pid: u32, want: impl Fn(Option<char>) -> bool, what: &str) {
    let deadline = std::time::Instant::now() + BOUND;
    while !want(proc_state(pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} never became {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigtstp_suspends_and_stops_the_supervisor_and_sigcont_resumes_it() {
    use std::io::{BufRead, Write};
    let mut cmd = common::fixture("job-control");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let sup = common::Fixture { child };
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = sup.pid();
    sup.signal(libc::SIGTSTP);
    wait_state(pid, |s| s == Some('T'), "stopped");
    sup.signal(libc::SIGCONT);
    wait_state(pid, |s| s != Some('T'), "running again");
    // Its worker ran its suspend hook, then its resume hook.
    writeln!(input, "check").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "hooks 1 1");
    drop(input); // the supervisor's loop ends; it exits and stops its worker
    assert!(sup.assert_gone().success());
}
