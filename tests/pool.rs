//! One suite, two backends: every body in `both!` runs once on thread
//! workers and once on process workers (the fixture binary's `pool-worker`
//! mode, which registers the same handlers from `fixtures/jobs.rs`).

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;
#[path = "common/pools.rs"]
mod pools;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use common::{BOUND, GatePath, assert_pid_gone, both};
use jobs::*;
use pools::{Backend, builder};
use portpool::pool::TrySubmitError;
use portpool::{Job, JobError, Pool, Shutdown};
use serde::{Deserialize, Serialize};

fn many() -> u64 {
    if std::env::var_os("PORTPOOL_TEST_SMALL").is_some() {
        1_000
    } else {
        100_000
    }
}

/// Shuts `pool` down and asserts its worker processes are gone.
fn finish(pool: Pool) {
    let pids: Vec<u32> = pool.stats().workers.iter().filter_map(|w| w.pid).collect();
    pool.shutdown(Shutdown::default());
    for pid in pids {
        assert_pid_gone(pid);
    }
}

// The short way: functions made jobs by `jobs!`, one argument or a tuple,
// through submit_fn, map_fn and map_fn_unordered, with their errors.
both!(jobs_made_of_functions_run_on_both_backends, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    assert_eq!(
        pool.submit_fn(word_count, "a b c".into())
            .unwrap()
            .wait()
            .unwrap(),
        3
    );
    match pool.submit_fn(word_count, String::new()).unwrap().wait() {
        Err(JobError::Handler(e)) => assert_eq!(e, "no text"),
        other => panic!("{other:?}"),
    }
    let texts: Vec<String> = (0..200).map(|n| "w ".repeat(n)).collect();
    let counts: Vec<Result<usize, _>> = pool.map_fn(word_count, texts).collect();
    assert!(counts[0].is_err());
    for (n, c) in counts.iter().enumerate().skip(1) {
        assert_eq!(*c.as_ref().unwrap(), n);
    }
    let mut joined: Vec<String> = pool
        .map_fn_unordered(repeat, [("a".to_string(), 3, '-'), ("b".to_string(), 2, '+')])
        .map(Result::unwrap)
        .collect();
    joined.sort();
    assert_eq!(joined, ["a-a-a", "b+b"]);
    assert!(
        pool.submit_fn(repeat, ("x".into(), 5000, ','))
            .unwrap()
            .wait()
            .is_err()
    );
    // The job type underneath is an ordinary `Job`, named after the function.
    assert_eq!(<portpool::job::Call<word_count> as Job>::NAME, "word_count");
    finish(pool);
});

both!(typed_round_trips_of_three_job_types, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    assert_eq!(pool.submit(Square(12)).unwrap().wait().unwrap(), 144);
    assert_eq!(
        pool.submit(Greet { name: "ada".into() }).unwrap().wait().unwrap(),
        "hello, ada"
    );
    assert_eq!(
        pool.submit(Divide { a: 17, b: 5 }).unwrap().wait().unwrap(),
        (3, 2)
    );
    finish(pool);
});

both!(handler_errors_arrive_typed, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    match pool.submit(Divide { a: 7, b: 0 }).unwrap().wait() {
        Err(JobError::Handler(DivError::ByZero { a: 7 })) => {}
        other => panic!("expected the handler's error, got {other:?}"),
    }
    match pool.submit(Greet { name: String::new() }).unwrap().wait() {
        Err(JobError::Handler(GreetError::EmptyName)) => {}
        other => panic!("expected the handler's error, got {other:?}"),
    }
    finish(pool);
});

both!(a_panic_fails_its_job_and_the_pool_goes_on, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    match pool.submit(Boom("kaboom 42".into())).unwrap().wait() {
        Err(JobError::Panicked { message }) => assert_eq!(message, "kaboom 42"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    // Same number of workers, all still serving.
    let who: BTreeSet<usize> = pool.broadcast(WhoAmI).into_iter().map(|r| r.unwrap().0).collect();
    assert_eq!(who, (0..2).collect());
    assert_eq!(pool.submit(Square(3)).unwrap().wait().unwrap(), 9);
    finish(pool);
});

/// A job type no worker registers.
#[derive(Serialize, Deserialize, Debug)]
struct Unrouted;
impl Job for Unrouted {
    type Output = ();
    type Error = String;
    const NAME: &'static str = "nobody-handles-this";
}

both!(an_unknown_route_fails_naming_the_route, |backend| {
    let pool = builder(backend, 1).build().unwrap();
    match pool.submit(Unrouted).unwrap().wait() {
        Err(JobError::UnknownRoute { route }) => assert_eq!(route, "nobody-handles-this"),
        other => panic!("expected UnknownRoute, got {other:?}"),
    }
    assert_eq!(pool.submit(Square(4)).unwrap().wait().unwrap(), 16);
    finish(pool);
});

both!(a_full_queue_gives_the_job_back, |backend| {
    let pool = builder(backend, 1)
        .queue_limit(1)
        .inflight_per_worker(1)
        .build()
        .unwrap();
    let gate = GatePath::new(&format!("full-{backend:?}"));
    let mut running = pool.submit(Gate(gate.0.clone())).unwrap();
    // The worker has the gate job (it said so); the queue is empty.
    assert_eq!(running.recv_progress::<String>().as_deref(), Some("started"));
    let queued = pool.submit(Square(5)).unwrap();
    match pool.try_submit(Square(6)) {
        Err(TrySubmitError::Full(job)) => assert_eq!(job, Square(6)),
        other => panic!("expected Full, got {other:?}"),
    }
    gate.open();
    assert!(running.wait().unwrap());
    assert_eq!(queued.wait().unwrap(), 25);
    finish(pool);
});

both!(map_keeps_input_order_over_many_jobs, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let n = many();
    let mut count = 0u64;
    for (i, r) in pool.map((0..n).map(Square)).enumerate() {
        assert_eq!(r.unwrap(), (i as u64) * (i as u64));
        count += 1;
    }
    assert_eq!(count, n);
    finish(pool);
});

both!(a_slow_first_job_does_not_make_map_pull_more_input, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let gate = GatePath::new(&format!("slow-first-{backend:?}"));
    let pulled = std::sync::atomic::AtomicU64::new(0);
    let input = (0..).map(|n| {
        pulled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        MaybeGated {
            gate: (n == 0).then(|| gate.0.clone()),
            n,
        }
    });
    std::thread::scope(|s| {
        let mut results = pool.map(input);
        // Open the gate once other jobs have finished behind the stuck
        // first one (waiting on that event, with a bound).
        s.spawn(|| {
            let deadline = std::time::Instant::now() + BOUND;
            while pool.stats().done < 7 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            gate.open();
        });
        assert_eq!(results.next().unwrap().unwrap(), 0);
        // While the first job was stuck, the map pulled one window of jobs
        // and no more: an endless input behind a slow job stays bounded.
        let at_first = pulled.load(std::sync::atomic::Ordering::Relaxed);
        assert!(at_first <= 64, "pulled {at_first} jobs while the first was stuck");
        let next: Vec<u64> = results.take(1000).map(|r| r.unwrap()).collect();
        assert_eq!(next, (1..=1000).collect::<Vec<u64>>());
    });
    finish(pool);
});

both!(map_unordered_yields_every_result_once, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let got: BTreeSet<u64> = pool
        .map_unordered((0..1000).map(Square))
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got, (0..1000u64).map(|i| i * i).collect());
    finish(pool);
});

both!(map_over_an_endless_iterator_with_take, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let firsts: Vec<u64> = pool
        .map((0..).map(Square))
        .take(1000)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(firsts, (0..1000u64).map(|i| i * i).collect::<Vec<_>>());
    finish(pool);
});

both!(broadcast_reaches_every_worker, |backend| {
    let pool = builder(backend, 3).build().unwrap();
    let answers: Vec<(usize, u32)> = pool.broadcast(WhoAmI).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    let pids: BTreeSet<u32> = answers.iter().map(|a| a.1).collect();
    match backend {
        Backend::Threads => assert_eq!(pids, [std::process::id()].into()),
        Backend::Processes => assert_eq!(pids.len(), 3, "three distinct processes"),
    }
    finish(pool);
});

both!(progress_messages_arrive_before_the_result, |backend| {
    let pool = builder(backend, 1).build().unwrap();
    let mut t = pool.submit(Steps(5)).unwrap();
    let mut seen = Vec::new();
    while let Some(p) = t.recv_progress::<u32>() {
        seen.push(p);
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    assert_eq!(t.wait().unwrap(), 5);
    finish(pool);
});

both!(progress_of_another_type_is_skipped_not_misread, |backend| {
    // Steps sends u32s, 0..300; read as u8 (one byte in postcard), only
    // those below 128 (a one-byte varint) are whole u8 messages. The rest
    // would decode from their first byte, a wrong value, if the bytes
    // left over were not noticed.
    let pool = builder(backend, 1).build().unwrap();
    let mut t = pool.submit(Steps(300)).unwrap();
    let mut seen = Vec::new();
    while let Some(p) = t.recv_progress::<u8>() {
        seen.push(p);
    }
    assert_eq!(seen, (0..128).collect::<Vec<u8>>());
    assert_eq!(t.wait().unwrap(), 300);
    finish(pool);
});

both!(one_failing_job_in_a_map_fails_alone, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    // Enough jobs that the map sends them in chunks of many.
    let results: Vec<_> = pool.map((1..=5000).map(SquareOrPanic)).collect();
    assert_eq!(results.len(), 5000);
    for (i, r) in results.into_iter().enumerate() {
        let n = i as u64 + 1;
        match r {
            Ok(v) => assert_eq!(v, n * n),
            Err(JobError::Panicked { message }) => {
                assert_eq!(n % 997, 0, "job {n} failed: {message}");
                assert_eq!(message, format!("{n} is a multiple of 997"));
            }
            Err(e) => panic!("job {n}: {e}"),
        }
    }
    let s = pool.stats();
    assert_eq!((s.done, s.failed), (5000 - 5, 5));
    let errors: Vec<_> = pool.map((0..100).map(|b| Divide { a: 100, b })).collect();
    assert!(matches!(
        errors[0],
        Err(JobError::Handler(DivError::ByZero { a: 100 }))
    ));
    assert!(errors[1..].iter().all(Result::is_ok));
    finish(pool);
});

// `collect` sizes its Vec from the map's hint: it must never promise more
// results than come (a cancel token may stop the input) nor fewer.
both!(a_maps_size_hint_is_true_as_it_goes, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let mut m = pool.map((0..1000).map(Square));
    assert_eq!(m.size_hint(), (1000, Some(1000)));
    for left in (0..1000).rev() {
        assert!(m.next().is_some());
        let (lower, upper) = m.size_hint();
        assert!(
            lower <= left && upper.is_some_and(|u| u >= left),
            "{left}: {lower} {upper:?}"
        );
    }
    assert!(m.next().is_none());
    drop(m);
    let token = portpool::pool::CancelToken::new();
    let m = pool.map((0..10).map(Square)).cancel_token(&token);
    assert_eq!(m.size_hint(), (0, Some(10)));
    token.cancel();
    assert!(m.count() <= 10);
    finish(pool);
});

// A handler's own error is a finished job in the stats, in a map as for
// a single job (a thread map once counted it as failed).
both!(a_maps_handler_errors_count_as_done, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let results: Vec<_> = pool.map((0..100).map(|b| Divide { a: 100, b })).collect();
    assert!(matches!(
        results[0],
        Err(JobError::Handler(DivError::ByZero { a: 100 }))
    ));
    let t = pool.submit(Divide { a: 1, b: 0 }).unwrap();
    assert!(matches!(t.wait(), Err(JobError::Handler(_))));
    assert!(pool.wait_idle(BOUND));
    let s = pool.stats();
    assert_eq!((s.done, s.failed), (101, 0), "{s:?}");
    finish(pool);
});

both!(stats_count_what_happened, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    for r in pool.map((0..100).map(Square)) {
        r.unwrap();
    }
    assert!(pool.submit(Boom("x".into())).unwrap().wait().is_err());
    let s = pool.stats();
    assert_eq!((s.done, s.failed, s.queued, s.running), (100, 1, 0, 0));
    assert_eq!(s.workers.len(), 2);
    assert_eq!(s.workers.iter().map(|w| w.done).sum::<u64>(), 100);
    finish(pool);
});

both!(a_cancelled_queued_job_never_runs, |backend| {
    let pool = builder(backend, 1).inflight_per_worker(1).build().unwrap();
    let gate = GatePath::new(&format!("cancel-{backend:?}"));
    let mut running = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(running.recv_progress::<String>().as_deref(), Some("started"));
    let queued = pool.submit(Steps(3)).unwrap();
    queued.cancel();
    gate.open();
    assert!(running.wait().unwrap());
    assert!(matches!(queued.wait(), Err(JobError::Cancelled)));
    finish(pool);
});

#[test]
fn processes_a_job_that_fails_to_decode_in_the_worker_fails_alone() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    match pool.submit(Poison(13)).unwrap().wait() {
        Err(JobError::Codec { side, reason }) => {
            assert_eq!(side, portpool::job::Side::Worker);
            // postcard keeps no text of a custom serde error; the type is named.
            assert!(
                reason.contains("could not decode") && reason.contains("Poison"),
                "{reason}"
            );
        }
        other => panic!("expected a worker-side decode error, got {other:?}"),
    }
    assert_eq!(pool.submit(Poison(12)).unwrap().wait().unwrap(), 12);
    finish(pool);
}

#[test]
fn processes_an_undecodable_job_in_a_map_chunk_fails_alone() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    let results: Vec<_> = pool.map((0..=255u8).cycle().take(4096).map(Poison)).collect();
    for (i, r) in results.iter().enumerate() {
        if i % 256 == 13 {
            assert!(
                matches!(
                    r,
                    Err(JobError::Codec {
                        side: portpool::job::Side::Worker,
                        ..
                    })
                ),
                "{r:?}"
            );
        } else {
            assert_eq!(r.as_ref().ok(), Some(&((i % 256) as u8)));
        }
    }
    finish(pool);
}

#[test]
fn processes_a_result_that_fails_to_encode_fails_alone() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    match pool.submit(MakeUnencodable).unwrap().wait() {
        Err(JobError::Codec { side, reason }) => {
            assert_eq!(side, portpool::job::Side::Worker);
            assert!(reason.contains("could not send the result"), "{reason}");
            assert!(reason.contains("without saying its length"), "{reason}");
        }
        other => panic!("expected a worker-side encode error, got {other:?}"),
    }
    assert_eq!(pool.submit(Square(2)).unwrap().wait().unwrap(), 4);
    finish(pool);
}

#[test]
fn processes_pipeline_several_jobs_per_worker() {
    let pool = builder(Backend::Processes, 1)
        .inflight_per_worker(3)
        .build()
        .unwrap();
    let gate = GatePath::new("pipeline");
    let tickets: Vec<_> = (0..3)
        .map(|_| pool.submit(Gate(gate.0.clone())).unwrap())
        .collect();
    // All three were sent to the one worker at submit time: none waits in the queue.
    let s = pool.stats();
    assert_eq!((s.queued, s.workers[0].running), (0, 3), "{s:?}");
    let fourth = pool.submit(Square(9)).unwrap();
    assert_eq!(pool.stats().queued, 1, "the fourth waits for a free slot");
    gate.open();
    for t in tickets {
        assert!(t.wait().unwrap());
    }
    assert_eq!(fourth.wait().unwrap(), 81);
    finish(pool);
}

#[test]
fn processes_workers_exit_on_their_own_when_the_supervisor_is_killed() {
    let mut sup = Command::new(env!("CARGO_BIN_EXE_portpool-fixture"))
        .arg("supervisor")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sup.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pids: Vec<u32> = line
        .strip_prefix("pids ")
        .unwrap_or_else(|| panic!("unexpected supervisor output {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    sup.kill().unwrap(); // SIGKILL: no chance to clean up
    sup.wait().unwrap();
    for pid in pids {
        // The workers are not our children: wait for them to vanish or
        // become zombies awaiting their new parent.
        common::wait_pid_gone(pid);
    }
}

#[test]
fn processes_a_worker_that_exits_mid_job_fails_its_job_and_is_replaced() {
    let pool = builder(Backend::Processes, 1)
        .inflight_per_worker(1)
        .build()
        .unwrap();
    let pid = pool.stats().workers[0].pid.unwrap();
    let dying = pool.submit(Exit(7)).unwrap();
    let queued: Vec<_> = (0..3).map(|i| pool.submit(Square(i)).unwrap()).collect();
    match dying.wait() {
        Err(JobError::WorkerExited {
            worker: 0,
            pid: Some(p),
            status: Some(s),
            ..
        }) => {
            assert_eq!(p, pid);
            assert_eq!(s, "exit code 7");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    // The replacement runs the jobs queued behind the one that crashed.
    for (i, t) in queued.into_iter().enumerate() {
        let r = t
            .wait_timeout(BOUND)
            .unwrap_or_else(|_| panic!("a queued job never ended"));
        assert_eq!(r.unwrap(), (i * i) as u64);
    }
    assert_pid_gone(pid);
    finish(pool);
}

/// A gate job running on `pool` (it said "started"), held until the
/// returned gate opens.
fn gate_job(pool: &Pool, name: &str) -> (GatePath, portpool::Ticket<Gate>) {
    let gate = GatePath::new(name);
    let mut running = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(running.recv_progress::<String>().as_deref(), Some("started"));
    (gate, running)
}

// A queue-wait deadline ends when the job starts, on both backends: a job
// sent to a busy process worker behind another has not started, so a zero
// deadline fails it (it used to wait there and succeed), and the worker
// skips it without being killed.
both!(
    a_zero_queue_deadline_fails_a_job_waiting_behind_a_busy_worker,
    |backend| {
        let pool = builder(backend, 1).inflight_per_worker(4).build().unwrap();
        let pid = pool.stats().workers[0].pid;
        let (gate, first) = gate_job(&pool, &format!("queue-behind-{backend:?}"));
        let opts = portpool::pool::JobOptions::new().queue_timeout(std::time::Duration::ZERO);
        let behind = pool.submit_with(Square(3), opts).unwrap();
        match behind.wait_timeout(BOUND) {
            Ok(Err(JobError::TimedOut {
                phase: portpool::job::TimeoutPhase::Queue,
                ..
            })) => {}
            Ok(other) => panic!("expected a queue timeout, got {other:?}"),
            Err(_) => panic!("the job behind the gate did not time out in the queue"),
        }
        gate.open();
        assert_eq!(first.wait(), Ok(true));
        assert_eq!(pool.submit(Square(4)).unwrap().wait(), Ok(16));
        assert_eq!(pool.stats().workers[0].pid, pid, "nothing was killed");
        finish(pool);
    }
);

// A run timeout counts from when the job starts: on a process worker a job
// sent behind another waits there without its clock running (it used to
// fail as "ran longer than" a timeout it never started).
#[test]
fn processes_a_run_timeout_starts_when_the_job_does_not_when_it_is_sent() {
    let pool = builder(Backend::Processes, 1)
        .inflight_per_worker(4)
        .build()
        .unwrap();
    let clock = builder(Backend::Threads, 1).build().unwrap();
    let timeout = std::time::Duration::from_millis(200);
    let (gate, first) = gate_job(&pool, "timeout-behind");
    // Sent to the same worker at once, behind the gate job.
    let behind = pool
        .submit_with(Square(3), portpool::pool::JobOptions::new().timeout(timeout))
        .unwrap();
    // A job given the same timeout later, that never returns by itself:
    // once it has timed out, so would the one behind the gate have, had its
    // clock run from when it was sent.
    let hang = Chaos {
        n: 1,
        fault: Fault::Hang,
    };
    let timed = clock
        .submit_with(hang, portpool::pool::JobOptions::new().timeout(timeout))
        .unwrap()
        .wait();
    assert!(matches!(timed, Err(JobError::TimedOut { .. })), "{timed:?}");
    gate.open();
    assert_eq!(first.wait(), Ok(true));
    assert_eq!(behind.wait(), Ok(9));
    // And the clock of a job sent behind another does run once it starts.
    let (gate, first) = gate_job(&pool, "timeout-behind-2");
    let hang = Chaos {
        n: 2,
        fault: Fault::Hang,
    };
    let behind = pool
        .submit_with(hang, portpool::pool::JobOptions::new().timeout(timeout))
        .unwrap();
    gate.open();
    assert_eq!(first.wait(), Ok(true));
    match behind.wait_timeout(BOUND) {
        Ok(Err(JobError::TimedOut { .. })) => {}
        Ok(other) => panic!("expected TimedOut, got {other:?}"),
        Err(_) => panic!("the job behind never timed out"),
    }
    clock.shutdown(Shutdown::default());
    finish(pool);
}

// A handler's panic is caught and is its own job's error; when the same
// worker later dies, its error quotes what its stderr ended with, not that
// earlier panic.
#[test]
fn processes_a_crash_after_a_caught_panic_quotes_the_crash_not_the_panic() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    let pid = pool.stats().workers[0].pid.unwrap();
    let panicked = pool
        .submit(Chaos {
            n: 5,
            fault: Fault::Panic,
        })
        .unwrap()
        .wait();
    assert!(matches!(panicked, Err(JobError::Panicked { .. })), "{panicked:?}");
    let died = pool
        .submit(Die {
            signal: "ABRT".into(),
            stderr: vec!["about to abort".into()],
        })
        .unwrap()
        .wait();
    match died {
        Err(e @ JobError::WorkerExited { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("its stderr ended with: about to abort") && !text.contains("chaos 5 panicked"),
                "{text}"
            );
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    assert_pid_gone(pid);
    finish(pool);
}

#[test]
fn processes_large_jobs_and_results_pipelined_do_not_deadlock() {
    // Jobs and results far larger than the socket buffers, several in
    // flight: each side must keep reading while it writes.
    let pool = builder(Backend::Processes, 1)
        .inflight_per_worker(4)
        .build()
        .unwrap();
    let size = 1 << 20;
    let tickets: Vec<_> = (0..12u8)
        .map(|i| pool.submit(Reverse(vec![i; size])).unwrap())
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        let r = t
            .wait_timeout(BOUND)
            .unwrap_or_else(|_| panic!("job {i} never ended: deadlock"));
        assert_eq!(r.unwrap(), Reverse(vec![i as u8; size]));
    }
    finish(pool);
}

#[test]
fn processes_build_fails_clearly_when_the_worker_binary_does_not_exist() {
    let err = Pool::builder()
        .processes(1)
        .worker_command(Command::new("/nonexistent/portpool-worker"))
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("could not start worker 0"), "{text}");
}

/// Jobs that wait in the queue are spread over the workers when they are
/// dispatched together, not packed into the first worker's in-flight
/// slots: with long jobs, a worker holding four would keep three from
/// workers that sit idle.
#[test]
fn a_burst_of_queued_jobs_spreads_over_the_workers() {
    let pool = builder(Backend::Processes, 3).build().unwrap();
    let gate = GatePath::new("spread");
    pool.suspend();
    let tickets: Vec<_> = (0..6)
        .map(|_| pool.submit(Gate(gate.0.clone())).unwrap())
        .collect();
    assert_eq!(pool.stats().queued, 6);
    // One kick dispatches all six at once.
    pool.resume();
    common::wait_until("six jobs run", || pool.stats().running >= 6);
    let held: Vec<usize> = pool.stats().workers.iter().map(|w| w.running).collect();
    assert_eq!(held, vec![2, 2, 2]);
    gate.open();
    for t in tickets {
        assert!(t.wait().unwrap());
    }
    finish(pool);
}

both!(a_cancel_token_cancels_queued_and_running_jobs, |backend| {
    use portpool::pool::{CancelToken, JobOptions, SubmitError};
    let pool = builder(backend, 1).inflight_per_worker(1).build().unwrap();
    let gate = GatePath::new(&format!("token-{backend:?}"));
    let token = CancelToken::new();
    let opts = JobOptions::new().cancel_token(&token);
    let mut first = pool.submit_with(Gate(gate.0.clone()), opts.clone()).unwrap();
    assert_eq!(first.recv_progress::<String>().as_deref(), Some("started"));
    let queued: Vec<_> = (0..2)
        .map(|_| pool.submit_with(Gate(gate.0.clone()), opts.clone()).unwrap())
        .collect();
    // A job without the token, behind them, is not touched.
    let other = pool.submit(Square(3)).unwrap();
    token.cancel();
    assert!(matches!(first.wait(), Err(JobError::Cancelled)));
    for t in queued {
        assert!(matches!(t.wait(), Err(JobError::Cancelled)));
    }
    assert_eq!(other.wait().unwrap(), 9);
    // An already-cancelled token: refused at once, the job handed back.
    match pool.submit_with(Square(4), JobOptions::new().cancel_token(&token)) {
        Err(SubmitError::Cancelled(Square(4))) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(pool.wait_idle(BOUND));
    let stats = pool.stats();
    assert_eq!((stats.cancelled, stats.done), (3, 1), "{stats:?}");
    finish(pool);
});

both!(a_cancel_token_cancels_a_map, |backend| {
    use portpool::pool::CancelToken;
    let pool = builder(backend, 2).build().unwrap();
    let gate = GatePath::new(&format!("token-map-{backend:?}"));
    let token = CancelToken::new();
    let results: Vec<_> = std::thread::scope(|s| {
        s.spawn(|| {
            common::wait_until("a job runs", || pool.stats().running > 0);
            token.cancel();
        });
        pool.map((0..50).map(|_| Gate(gate.0.clone())))
            .cancel_token(&token)
            .collect()
    });
    // What the map had taken is cancelled; the rest of the input is not
    // taken at all.
    assert!(!results.is_empty() && results.len() <= 50, "{}", results.len());
    assert!(
        results.iter().all(|r| matches!(r, Err(JobError::Cancelled))),
        "{results:?}"
    );
    assert!(pool.wait_idle(BOUND));
    assert_eq!(pool.submit(Square(5)).unwrap().wait().unwrap(), 25);
    finish(pool);
});

both!(dropping_a_map_cancels_what_it_has_not_yielded, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let gate = GatePath::new(&format!("map-drop-{backend:?}"));
    // Five jobs: all submitted at once (the window is larger); all but the
    // first wait on a gate that never opens.
    let jobs = (0..5).map(|n| MaybeGated {
        gate: (n > 0).then(|| gate.0.clone()),
        n,
    });
    let mut m = pool.map(jobs);
    assert_eq!(m.next().unwrap().unwrap(), 0);
    drop(m);
    assert!(pool.wait_idle(BOUND), "the dropped map's jobs were cancelled");
    // A cancelled job still queued is counted when a worker takes it off
    // the queue, which a thread worker does just after the queue shows
    // empty: wait for the count rather than read it once.
    common::wait_until("four jobs counted as cancelled", || pool.stats().cancelled >= 4);
    assert_eq!(pool.stats().cancelled, 4, "{:?}", pool.stats());
    assert_eq!(pool.submit(Square(2)).unwrap().wait().unwrap(), 4);
    finish(pool);
});

both!(a_full_queue_says_saturated_then_drained, |backend| {
    use portpool::supervisor::PoolEvent;
    let (tx, rx) = crossbeam_channel::unbounded();
    let pool = builder(backend, 1)
        .queue_limit(2)
        .inflight_per_worker(1)
        .on_event(move |e| {
            if matches!(e, PoolEvent::Saturated { .. } | PoolEvent::Drained) {
                let _ = tx.send(e.clone());
            }
        })
        .build()
        .unwrap();
    let gate = GatePath::new(&format!("saturated-{backend:?}"));
    let mut first = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(first.recv_progress::<String>().as_deref(), Some("started"));
    assert!(!pool.is_saturated());
    let queued: Vec<_> = (0..2)
        .map(|_| pool.submit(Gate(gate.0.clone())).unwrap())
        .collect();
    assert_eq!(
        rx.recv_timeout(BOUND).unwrap(),
        PoolEvent::Saturated { queued: 2 }
    );
    assert!(pool.is_saturated());
    assert!(matches!(pool.try_submit(Square(1)), Err(TrySubmitError::Full(_))));
    assert!(
        !pool.wait_idle(std::time::Duration::from_millis(20)),
        "three jobs hold the pool"
    );
    gate.open();
    assert_eq!(rx.recv_timeout(BOUND).unwrap(), PoolEvent::Drained);
    assert!(pool.wait_idle(BOUND));
    assert!(!pool.is_saturated());
    for t in std::iter::once(first).chain(queued) {
        assert!(t.wait().unwrap());
    }
    assert!(rx.try_recv().is_err(), "one event each");
    finish(pool);
});

/// A pool that fails at its first unexpected exit: recycling must not count.
fn no_restarts() -> portpool::RestartPolicy {
    portpool::RestartPolicy {
        max_restarts: 0,
        ..portpool::RestartPolicy::default()
    }
}

/// Collects the pool's `WorkerExited` events.
fn exits() -> (
    impl Fn(&portpool::supervisor::PoolEvent) + Send + Sync + 'static,
    crossbeam_channel::Receiver<(String, bool)>,
) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let f = move |e: &portpool::supervisor::PoolEvent| {
        if let portpool::supervisor::PoolEvent::WorkerExited { status, expected, .. } = e {
            let _ = tx.send((status.clone(), *expected));
        }
    };
    (f, rx)
}

both!(a_worker_is_recycled_after_n_jobs, |backend| {
    let (on_exit, exited) = exits();
    let pool = builder(backend, 1)
        .inflight_per_worker(1)
        .recycle_after_jobs(3)
        .restart(no_restarts())
        .on_event(on_exit)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..7)
        .map(|_| pool.submit(WhoAmI).unwrap().wait().unwrap().1)
        .collect();
    for _ in 0..2 {
        let (status, expected) = exited.recv_timeout(BOUND).unwrap();
        assert!(expected, "{status}");
        assert!(status.contains("recycled after 3 job(s)"), "{status}");
    }
    if matches!(backend, Backend::Processes) {
        // Three jobs per process: a new process each time.
        assert_eq!(pids[0..3], [pids[0]; 3], "{pids:?}");
        assert_eq!(pids[3..6], [pids[3]; 3], "{pids:?}");
        assert!(pids[0] != pids[3] && pids[3] != pids[6], "{pids:?}");
        common::wait_pid_gone(pids[0]);
        common::wait_pid_gone(pids[3]);
    }
    assert_eq!(pool.stats().workers[0].restarts, 2);
    assert!(pool.failure().is_none(), "recycling is not a restart");
    finish(pool);
});

both!(a_worker_is_recycled_after_its_age, |backend| {
    let (on_exit, exited) = exits();
    let pool = builder(backend, 1)
        .recycle_after(std::time::Duration::ZERO)
        .restart(no_restarts())
        .on_event(on_exit)
        .build()
        .unwrap();
    for n in 0..3 {
        assert_eq!(pool.submit(Square(n)).unwrap().wait().unwrap(), n * n);
    }
    for _ in 0..3 {
        let (status, expected) = exited.recv_timeout(BOUND).unwrap();
        assert!(expected && status.contains("recycled at the age of"), "{status}");
    }
    assert!(pool.failure().is_none());
    finish(pool);
});

// Jobs a retiring worker held (it takes no more once due) are not lost:
// a burst with several in flight per worker all complete.
both!(recycling_under_load_loses_no_job, |backend| {
    let pool = builder(backend, 2)
        .recycle_after_jobs(5)
        .restart(no_restarts())
        .build()
        .unwrap();
    let tickets: Vec<_> = (0..200).map(|n| pool.submit(Square(n)).unwrap()).collect();
    for (n, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.wait().unwrap(), (n * n) as u64);
    }
    let sum: u64 = pool.map((0..2000).map(Square)).map(|r| r.unwrap()).sum();
    assert_eq!(sum, (0..2000u64).map(|n| n * n).sum::<u64>());
    // Jobs in flight do not carry a worker past its budget: no process
    // runs more than five of a burst of single jobs.
    if matches!(backend, Backend::Processes) {
        let tickets: Vec<_> = (0..200).map(|_| pool.submit(WhoAmI).unwrap()).collect();
        let mut per_pid = std::collections::HashMap::<u32, usize>::new();
        for t in tickets {
            *per_pid.entry(t.wait().unwrap().1).or_default() += 1;
        }
        assert!(per_pid.values().all(|&n| n <= 5), "{per_pid:?}");
    }
    assert!(pool.failure().is_none());
    finish(pool);
});

#[test]
fn recycle_after_zero_jobs_is_refused() {
    let msg = Pool::builder()
        .threads(1)
        .recycle_after_jobs(0)
        .build()
        .expect_err("refused")
        .to_string();
    assert!(msg.contains("at least 1"), "{msg}");
}

both!(
    a_cancel_token_given_to_a_running_map_reaches_its_chunks,
    |backend| {
        use portpool::pool::CancelToken;
        let pool = builder(backend, 2).build().unwrap();
        let gate = GatePath::new(&format!("token-late-{backend:?}"));
        let jobs = (0..5).map(|n| MaybeGated {
            gate: (n > 0).then(|| gate.0.clone()),
            n,
        });
        let mut m = pool.map(jobs);
        assert_eq!(m.next().unwrap().unwrap(), 0);
        let token = CancelToken::new();
        let mut m = m.cancel_token(&token);
        token.cancel();
        let rest: Vec<_> = m.by_ref().collect();
        assert_eq!(rest.len(), 4);
        assert!(
            rest.iter().all(|r| matches!(r, Err(JobError::Cancelled))),
            "{rest:?}"
        );
        // A map whose token is cancelled before it starts takes nothing
        // from its input, even an endless one.
        assert!(pool.wait_idle(BOUND));
        let before = pool.stats().cancelled;
        assert_eq!(pool.map((0..).map(Square)).cancel_token(&token).count(), 0);
        assert!(pool.wait_idle(BOUND));
        assert_eq!(pool.stats().cancelled, before);
        drop(m);
        finish(pool);
    }
);

#[test]
fn a_process_worker_is_recycled_when_its_memory_grows() {
    let (on_exit, exited) = exits();
    let pool = builder(Backend::Processes, 1)
        .recycle_above_memory(64 << 20)
        .restart(no_restarts())
        .on_event(on_exit)
        .build()
        .unwrap();
    let small = pool.submit(Grow(1)).unwrap().wait().unwrap();
    let big = pool.submit(Grow(100)).unwrap().wait().unwrap();
    assert_eq!(small, big, "1 MiB more stays under the limit");
    let (status, expected) = exited.recv_timeout(BOUND).unwrap();
    assert!(expected && status.contains("resident memory"), "{status}");
    let next = pool.submit(WhoAmI).unwrap().wait().unwrap().1;
    assert_ne!(next, big, "a fresh process");
    common::wait_pid_gone(big);
    finish(pool);
}

#[test]
fn a_hard_memory_limit_fails_the_job_that_hits_it() {
    let pool = builder(Backend::Processes, 1)
        .memory_limit(512 << 20)
        .build()
        .unwrap();
    let before = pool.submit(WhoAmI).unwrap().wait().unwrap().1;
    match pool.submit(Grow(1024)).unwrap().wait() {
        Err(JobError::WorkerExited { status, .. }) => {
            let status = status.unwrap_or_default();
            assert!(status.contains("memory limit of 512.0 MiB"), "{status}");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    // Replaced (a restart); the next job runs in a fresh process.
    let after = pool.submit(WhoAmI).unwrap().wait().unwrap().1;
    assert_ne!(before, after);
    assert_eq!(
        pool.submit(Grow(16)).unwrap().wait().unwrap(),
        after,
        "room below the limit"
    );
    finish(pool);
}

// A limit too small for the worker to start at all: the build error names
// it, not only the signal the worker died of.
#[test]
fn a_memory_limit_too_small_to_start_a_worker_says_so() {
    for limit in [0, 1 << 20] {
        let err = builder(Backend::Processes, 1)
            .memory_limit(limit)
            .build()
            .expect_err("no worker can start under it");
        let msg = err.to_string();
        assert!(
            msg.contains("memory_limit of") && msg.contains("too small for it to start"),
            "{msg}"
        );
    }
}

#[test]
fn memory_settings_are_refused_for_threads() {
    for b in [
        Pool::builder().threads(1).recycle_above_memory(1 << 30),
        Pool::builder().threads(1).memory_limit(1 << 30),
    ] {
        let msg = b.build().expect_err("refused").to_string();
        assert!(msg.contains("process workers"), "{msg}");
    }
}

/// A worker due for recycling that crashes on a job it still held is a
/// crash, not a recycle: the job fails (it is not run again), and the
/// restart policy counts the exit.
#[test]
fn a_retiring_worker_that_crashes_is_a_crash() {
    let gate = GatePath::new("retiring-crash");
    let pool = builder(Backend::Processes, 1)
        .inflight_per_worker(2)
        .recycle_after(std::time::Duration::ZERO)
        .restart(no_restarts())
        .build()
        .unwrap();
    pool.suspend();
    let first = pool.submit(Square(2)).unwrap();
    let mut held = pool.submit(Stubborn(gate.0.clone())).unwrap();
    pool.resume(); // both reach the worker before either answers
    assert_eq!(first.wait().unwrap(), 4); // now due, but it holds a job
    assert_eq!(held.recv_progress::<String>().as_deref(), Some("started"));
    let pid = pool.stats().workers[0].pid.unwrap();
    let rc = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    match held.wait() {
        Err(JobError::WorkerExited { status, .. }) => {
            let status = status.unwrap_or_default();
            assert!(status.contains("SIGKILL"), "{status}");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    // Counted: with no restarts allowed, the pool has failed.
    common::wait_until("the crash is counted", || pool.failure().is_some());
    pool.shutdown(Shutdown::default());
    common::wait_pid_gone(pid);
}

// A broadcast reaches every slot once, also while its workers are being
// recycled after every job.
both!(a_broadcast_reaches_each_slot_while_workers_recycle, |backend| {
    let pool = builder(backend, 2)
        .recycle_after_jobs(1)
        .restart(no_restarts())
        .build()
        .unwrap();
    for _ in 0..20 {
        let ids: BTreeSet<usize> = pool.broadcast(WhoAmI).into_iter().map(|r| r.unwrap().0).collect();
        assert_eq!(ids, BTreeSet::from([0, 1]));
    }
    assert!(pool.failure().is_none());
    finish(pool);
});

// Nothing runs on a suspended pool's workers, broadcast copies included:
// they wait (counted as queued) and run after the resume, between the
// workers' resume hooks and nothing else.
both!(a_broadcast_on_a_suspended_pool_waits_for_the_resume, |backend| {
    let pool = std::sync::Arc::new(builder(backend, 2).build().unwrap());
    pool.suspend();
    let p = pool.clone();
    let caster = std::thread::spawn(move || p.broadcast(HookCounts));
    common::wait_until("both copies wait", || pool.stats().queued == 2);
    pool.resume();
    let got = caster.join().unwrap();
    assert_eq!(got.len(), 2);
    for r in got {
        let (suspends, resumes) = r.unwrap();
        // A process worker counts its own hooks: one suspend, then the
        // resume, before the copy. (A thread pool's hooks count in this
        // test process, which other tests suspend too: the wait above, on
        // both copies counted as queued, is what shows they waited.)
        if backend == Backend::Processes {
            assert_eq!((suspends, resumes), (1, 1));
        }
    }
    let pool = std::sync::Arc::try_unwrap(pool).unwrap_or_else(|_| panic!("the broadcaster is done"));
    finish(pool);
});

// A shutdown lifts the suspension: a broadcast waiting for the resume
// runs (gracefully) and returns, rather than holding the shutdown up.
both!(a_shutdown_ends_a_broadcast_that_waits_for_the_resume, |backend| {
    let pool = std::sync::Arc::new(builder(backend, 2).build().unwrap());
    pool.suspend();
    let p = pool.clone();
    let caster = std::thread::spawn(move || p.broadcast(WhoAmI));
    common::wait_until("both copies wait", || pool.stats().queued == 2);
    let report = pool.shutdown(portpool::Shutdown::default());
    assert!(!report.deadline_hit, "{report}");
    let ids: BTreeSet<usize> = caster.join().unwrap().into_iter().map(|r| r.unwrap().0).collect();
    assert_eq!(ids, BTreeSet::from([0, 1]));
    let pool = std::sync::Arc::try_unwrap(pool).unwrap_or_else(|_| panic!("the broadcaster is done"));
    finish(pool);
});

// A suspended pool's stats count every job that waits as queued (a thread
// worker may already hold one, taken before it saw the suspend), and
// `wait_idle` does not call it idle; after `resume` every job runs once.
both!(
    a_suspended_pools_waiting_jobs_are_queued_not_lost_from_view,
    |backend| {
        let pool = builder(backend, 2).build().unwrap();
        pool.suspend();
        let tickets: Vec<_> = (0..6u64).map(|i| pool.submit(Square(i)).unwrap()).collect();
        common::wait_until("every job counted as queued", || {
            let s = pool.stats();
            s.queued == 6 && s.running == 0
        });
        assert!(
            !pool.wait_idle(std::time::Duration::from_millis(20)),
            "six jobs wait"
        );
        assert_eq!(pool.stats().queued, 6);
        pool.resume();
        let got: Vec<u64> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 4, 9, 16, 25]);
        assert!(pool.wait_idle(std::time::Duration::from_secs(60)));
        let s = pool.stats();
        assert_eq!((s.queued, s.running, s.done), (0, 0, 6));
        finish(pool);
    }
);
