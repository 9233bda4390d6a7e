//! Regression tests for what a program written from the docs alone met:
//! wrong results, a fork bomb, a hang, and errors nobody could act on.
//! Each test is named after what broke.

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BOUND, GatePath, assert_pid_gone, both};
use jobs::*;
use portpool::pool::{JobOptions, PoolBuilder, TrySubmitError};
use portpool::{Job, JobError, Pool, Shutdown};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Threads,
    Processes,
}

fn worker_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portpool-fixture"));
    cmd.arg("pool-worker");
    cmd
}

fn builder(backend: Backend, n: usize) -> PoolBuilder {
    match backend {
        Backend::Threads => Pool::builder().threads(n).handlers(jobs::handlers()),
        Backend::Processes => Pool::builder()
            .processes(n)
            .worker_command(worker_cmd())
            .forward_worker_stderr(false),
    }
}

fn finish(pool: Pool) {
    let pids: Vec<u32> = pool.stats().workers.iter().filter_map(|w| w.pid).collect();
    pool.shutdown(Shutdown::default());
    for pid in pids {
        assert_pid_gone(pid);
    }
}

fn chaos(n: u64, fault: Fault) -> Chaos {
    Chaos { n, fault }
}

/// Checks that result `r` is job `n`'s own, given its fault, on `backend`
/// (a thread pool never encodes, so encoding faults do not fail there).
fn assert_own(backend: Backend, n: u64, fault: Fault, r: &Result<ChaosOut, JobError<String>>) {
    let threads = backend == Backend::Threads;
    match (fault, r) {
        (Fault::None, Ok(o)) => assert_eq!(o.n, chaos_value(n), "job {n} got another job's result"),
        (Fault::BadInput, Ok(o)) if threads => assert_eq!(o.n, chaos_value(n)),
        (Fault::BadOutput, Ok(o)) if threads => assert_eq!((o.n, o.refuse), (chaos_value(n), true)),
        (Fault::BadInput, Err(JobError::Codec { side, reason })) => {
            assert_eq!(*side, portpool::job::Side::Supervisor);
            assert!(
                reason.contains(&format!("chaos input {n} refuses")),
                "job {n}: {reason}"
            );
        }
        (Fault::BadOutput, Err(JobError::Codec { side, reason })) => {
            assert_eq!(*side, portpool::job::Side::Worker);
            assert!(
                reason.contains(&format!("chaos output {} refuses", chaos_value(n))),
                "job {n}: {reason}"
            );
        }
        (Fault::Panic, Err(JobError::Panicked { message })) => {
            assert_eq!(message, &format!("chaos {n} panicked"))
        }
        (Fault::HandlerError, Err(JobError::Handler(e))) => assert_eq!(e, &format!("chaos {n} failed")),
        (f, r) => panic!("job {n} with fault {f:?} ({backend:?}) got {r:?}"),
    }
}

// ------------------------------------------------- 1, 2: map and encoding

both!(
    map_gives_every_job_its_own_result_when_some_outputs_will_not_encode,
    |backend| {
        let pool = builder(backend, 2).build().unwrap();
        let faults: Vec<Fault> = (0..1000u64)
            .map(|i| {
                if i % 100 == 37 {
                    Fault::BadOutput
                } else {
                    Fault::None
                }
            })
            .collect();
        let jobs = faults.iter().enumerate().map(|(i, f)| chaos(i as u64, *f));
        let results: Vec<_> = pool.map(jobs).collect();
        assert_eq!(results.len(), 1000);
        for (i, r) in results.iter().enumerate() {
            assert_own(backend, i as u64, faults[i], r);
        }
        finish(pool);
    }
);

both!(map_fails_only_the_job_whose_input_will_not_encode, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let faults: Vec<Fault> = (0..500u64)
        .map(|i| if i % 61 == 5 { Fault::BadInput } else { Fault::None })
        .collect();
    let jobs = faults.iter().enumerate().map(|(i, f)| chaos(i as u64, *f));
    let results: Vec<_> = pool.map(jobs).collect();
    for (i, r) in results.iter().enumerate() {
        assert_own(backend, i as u64, faults[i], r);
    }
    // map_unordered: the same outcomes, each once.
    let jobs = faults.iter().enumerate().map(|(i, f)| chaos(i as u64, *f));
    let mut ok: Vec<u64> = Vec::new();
    let mut failed = 0;
    for r in pool.map_unordered(jobs) {
        match r {
            Ok(o) => ok.push(o.n),
            Err(JobError::Codec { .. }) => failed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let bad = faults.iter().filter(|f| **f == Fault::BadInput).count();
    if backend == Backend::Processes {
        assert_eq!(failed, bad);
    }
    ok.sort_unstable();
    let mut want: Vec<u64> = (0..500u64)
        .filter(|i| backend == Backend::Threads || faults[*i as usize] == Fault::None)
        .map(chaos_value)
        .collect();
    want.sort_unstable();
    assert_eq!(ok, want);
    finish(pool);
});

#[test]
fn map_of_paths_fails_only_the_non_utf8_one() {
    let pool = builder(Backend::Processes, 2).build().unwrap();
    let gate = GatePath::new("non-utf8");
    gate.open();
    let bad = PathBuf::from(OsString::from_vec(vec![b'/', 0xff, 0xfe]));
    let jobs: Vec<Gate> = (0..64)
        .map(|i| Gate(if i == 20 { bad.clone() } else { gate.0.clone() }))
        .collect();
    let results: Vec<_> = pool.map(jobs).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 20 {
            match r {
                Err(JobError::Codec { reason, .. }) => assert!(reason.contains("UTF-8"), "{reason}"),
                other => panic!("job 20: {other:?}"),
            }
        } else {
            assert_eq!(r.as_ref().ok(), Some(&true), "job {i}: {r:?}");
        }
    }
    finish(pool);
}

both!(submit_and_broadcast_give_each_job_its_own_outcome, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let faults = [
        Fault::None,
        Fault::BadInput,
        Fault::BadOutput,
        Fault::Panic,
        Fault::HandlerError,
    ];
    let tickets: Vec<_> = (0..50u64)
        .map(|i| (i, faults[i as usize % faults.len()]))
        .map(|(i, f)| (i, f, pool.submit(chaos(i, f)).unwrap()))
        .collect();
    for (i, f, t) in tickets {
        assert_own(backend, i, f, &t.wait());
    }
    for f in faults {
        for r in pool.broadcast(chaos(9, f)) {
            assert_own(backend, 9, f, &r);
        }
    }
    finish(pool);
});

// -------------------------------------- 11: encode at submit while busy

#[test]
fn an_unencodable_job_fails_at_submit_even_while_every_worker_is_busy() {
    let pool = builder(Backend::Processes, 1)
        .inflight_per_worker(1)
        .build()
        .unwrap();
    let gate = GatePath::new("busy-encode");
    let mut busy = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(busy.recv_progress::<String>().as_deref(), Some("started"));
    // The worker is busy: this job waits in the queue, so it is encoded now.
    let t = pool.submit(chaos(1, Fault::BadInput)).unwrap();
    match t.try_wait() {
        Ok(Err(JobError::Codec { side, reason })) => {
            assert_eq!(side, portpool::job::Side::Supervisor);
            assert!(reason.contains("chaos input 1 refuses"), "{reason}");
        }
        Ok(other) => panic!("{other:?}"),
        Err(_) => panic!("the failure waited for a free worker"),
    }
    // A good job queued behind it still runs.
    let good = pool.submit(chaos(2, Fault::None)).unwrap();
    gate.open();
    assert!(busy.wait().unwrap());
    assert_eq!(good.wait().unwrap().n, chaos_value(2));
    finish(pool);
}

// --------------------------------------------- 3: forgotten serve_if_worker

#[test]
fn a_worker_that_forgot_serve_if_worker_fails_its_build_instead_of_forking() {
    let mut cmd = common::fixture("forgetful");
    cmd.stdout(Stdio::null());
    let err = Pool::builder()
        .processes(2)
        .worker_command(cmd)
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "this process was started as a portpool worker but did not call \
             portpool::worker::serve_if_worker at the top of main"
        ),
        "{msg}"
    );
    // One sentence, not errors nested inside errors.
    assert!(msg.matches("worker").count() <= 6, "{msg}");
    assert!(msg.len() < 400, "{msg}");
    // Debug reads the same (what `main` returning the error prints).
    assert_eq!(format!("{err:?}"), msg);
}

#[test]
fn a_worker_may_build_a_thread_pool_before_it_serves() {
    // Found in review: the forgotten-serve check refused this legitimate
    // worker, whose handlers use a thread pool built before `run`.
    let pool = Pool::builder()
        .processes(1)
        .worker_command(common::fixture("threads-then-serve"))
        .build()
        .unwrap();
    assert_eq!(pool.submit(Square(6)).unwrap().wait().unwrap(), 36);
    finish(pool);
}

#[test]
fn a_program_that_forgot_serve_if_worker_starts_no_grandchildren() {
    // The fixture's `forgetful` mode is the user's whole program: it
    // builds a pool of itself. Only its two workers may ever exist.
    let out = common::fixture("forgetful")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("did not call portpool::worker::serve_if_worker"),
        "{stderr}"
    );
    // One sentence for the user: the workers' own lines are not passed
    // on, and nothing nests.
    assert_eq!(
        stderr
            .matches("did not call portpool::worker::serve_if_worker")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("could not start: worker"), "{stderr}");
}

// ---------------------------------------------------------- 4: Ctrl-C

#[test]
fn ctrl_c_to_the_whole_process_group_lets_running_jobs_finish() {
    use std::io::{BufRead, Read};
    let gate = GatePath::new("pgrp-sigint");
    let mut cmd = common::fixture("drain");
    cmd.arg(&gate.0).stdout(Stdio::piped());
    // The supervisor leads a process group of its own, as a shell's
    // foreground job does; the terminal signals the whole group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let pgid = child.id() as i32;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pids: Vec<u32> = line
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let sup = common::Fixture { child };
    // SAFETY: kill(2) on the process group our child leads; it is not
    // reaped (we hold the Child), so the group id is not reused.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "signal 2");
    gate.open();
    let status = sup.assert_gone();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    assert_eq!(status.code(), Some(130), "{text}");
    assert_eq!(text.matches("job done").count(), 4, "{text}");
    assert!(
        text.contains("report 4 completed, 0 failed, 0 cancelled"),
        "{text}"
    );
    for pid in pids {
        common::wait_pid_gone(pid);
    }
}

// ------------------------------------------------- 5: two types, one NAME

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Double(u64);
impl Job for Double {
    type Output = String;
    type Error = String;
    const NAME: &'static str = "square"; // the same name as jobs::Square
}

#[test]
fn two_job_types_with_one_name_are_refused_at_build_naming_both() {
    let handlers = jobs::handlers().on::<Double>(|Double(n), _| Ok((2 * n).to_string()));
    let err = Pool::builder().threads(1).handlers(handlers).build().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"square\""), "{msg}");
    assert!(msg.contains("Square") && msg.contains("Double"), "{msg}");
}

#[test]
fn a_worker_with_two_types_under_one_name_fails_at_spawn() {
    let err = Pool::builder()
        .processes(1)
        .worker_command(common::fixture("dup-routes"))
        .forward_worker_stderr(false)
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Square") && msg.contains("Triple"), "{msg}");
}

#[test]
fn a_job_whose_type_differs_from_the_workers_route_fails_instead_of_decoding_wrong() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    match pool.submit(Double(21)).unwrap().wait() {
        Err(JobError::Codec { reason, .. }) => {
            assert!(reason.contains("Square -> Result<u64, String>"), "{reason}");
            assert!(reason.contains("Double -> Result<String, String>"), "{reason}");
        }
        other => panic!("expected a route mismatch, got {other:?}"),
    }
    // In a map too, and the pool goes on.
    let all: Vec<_> = pool.map((0..10).map(Double)).collect();
    assert!(
        all.iter().all(|r| matches!(r, Err(JobError::Codec { .. }))),
        "{all:?}"
    );
    assert_eq!(pool.submit(Square(5)).unwrap().wait().unwrap(), 25);
    finish(pool);
}

#[test]
fn a_supervisor_whose_handlers_differ_from_its_workers_fails_at_spawn_with_both() {
    let handlers = portpool::Handlers::new().on::<Double>(|Double(n), _| Ok(n.to_string()));
    let err = Pool::builder()
        .processes(1)
        .handlers(handlers)
        .worker_command(worker_cmd())
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Square -> Result<u64, String>"), "{msg}");
    assert!(msg.contains("Double -> Result<String, String>"), "{msg}");
    // The worker did nothing wrong but run: the kill that ends it is ours,
    // and the message says so rather than blaming a signal.
    assert!(!msg.contains("SIGKILL"), "{msg}");
}

// -------------------------------------------- 6: a hostile peer and a Link

fn link_to(mode: &str, arg: Option<&str>) -> (common::Fixture, portpool::link::Link) {
    let mut cmd = common::fixture(mode);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let (f, ipc) = common::Fixture::connected_with(cmd);
    (f, portpool::link::Link::new(ipc))
}

/// Runs `f` on a thread and fails the test if it does not return within
/// `BOUND` (a hang or a spin, which the bug was).
fn within_bound<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .expect("the call did not return: it hangs or spins")
}

#[test]
fn a_port_frame_on_a_link_ends_the_wait_with_an_error() {
    for (mode, arg) in [("send-port", None), ("raw", Some("port-frame"))] {
        let (f, link) = link_to(mode, arg);
        let link = std::sync::Arc::new(link);
        let l = link.clone();
        let r = within_bound(move || l.recv_message_timeout::<u64>(Duration::from_secs(10)));
        match r {
            Err(portpool::link::LinkError::Broken(why)) => assert!(why.contains("port"), "{why}"),
            other => panic!("{mode}: expected the link to break, got {other:?}"),
        }
        drop(link);
        f.assert_gone();
    }
}

// ------------------------------------------------------- 7: Duration::MAX

both!(a_huge_duration_means_never_and_the_timers_go_on, |backend| {
    let pool = builder(backend, 2)
        .cancel_grace(Duration::MAX)
        .queue_timeout(Duration::MAX)
        .build()
        .unwrap();
    let t = pool
        .submit_with(
            chaos(1, Fault::None),
            JobOptions::new()
                .timeout(Duration::MAX)
                .queue_timeout(Duration::MAX),
        )
        .unwrap();
    assert_eq!(t.wait().unwrap().n, chaos_value(1));
    let t = pool.submit(Square(3)).unwrap();
    assert_eq!(t.wait_timeout(Duration::MAX).ok().map(|r| r.unwrap()), Some(9));
    // The monitor thread is still alive: a short run timeout still fires.
    let t = pool
        .submit_with(
            chaos(2, Fault::Hang),
            JobOptions::new().timeout(Duration::from_millis(20)),
        )
        .unwrap();
    assert!(matches!(t.wait(), Err(JobError::TimedOut { .. })));
    assert!(
        pool.submit_timeout(Square(2), Duration::MAX)
            .unwrap()
            .wait()
            .is_ok()
    );
    let rep = pool.shutdown(Shutdown::graceful(Duration::MAX));
    assert_eq!(rep.failed, 1);
});

// ---------------------------------------------------- 8: queue_limit(0)

both!(
    a_queue_limit_of_zero_takes_a_job_only_when_a_worker_can_start_it,
    |backend| {
        let pool = builder(backend, 1)
            .queue_limit(0)
            .inflight_per_worker(1)
            .build()
            .unwrap();
        let gate = GatePath::new(&format!("queue-zero-{backend:?}"));
        // Wait until the worker is idle (a thread worker blocks in its receive).
        let first = loop {
            match pool.try_submit(Gate(gate.0.clone())) {
                Ok(t) => break t,
                Err(TrySubmitError::Full(_)) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        let mut first = first;
        assert_eq!(first.recv_progress::<String>().as_deref(), Some("started"));
        match pool.try_submit(Square(2)) {
            Err(TrySubmitError::Full(Square(2))) => {}
            other => panic!("expected Full with the job back, got {other:?}"),
        }
        assert_eq!(pool.stats().queued, 0);
        // A blocking submit waits for the worker, then runs.
        let p = std::sync::Arc::new(pool);
        let p2 = p.clone();
        let waiting = std::thread::spawn(move || p2.submit(Square(4)).unwrap().wait().unwrap());
        gate.open();
        assert!(first.wait().unwrap());
        assert_eq!(waiting.join().unwrap(), 16);
        finish(std::sync::Arc::into_inner(p).unwrap());
    }
);

#[test]
fn with_no_queue_a_job_past_its_queue_deadline_never_runs() {
    // Found in review: a submitter waiting for a free slot (queue limit 0)
    // still dispatched its job after the monitor had failed it.
    let pool = std::sync::Arc::new(
        builder(Backend::Processes, 1)
            .queue_limit(0)
            .inflight_per_worker(1)
            .build()
            .unwrap(),
    );
    let gate = GatePath::new("queue-zero-deadline");
    let marker = GatePath::new("queue-zero-deadline-ran");
    let mut busy = pool.submit(Gate(gate.0.clone())).unwrap();
    assert_eq!(busy.recv_progress::<String>().as_deref(), Some("started"));
    let p = pool.clone();
    let (touch, open) = (marker.0.clone(), gate.0.clone());
    let waiting = std::thread::spawn(move || {
        let job = TouchThenWait { touch, gate: open };
        p.submit_with(job, JobOptions::new().queue_timeout(Duration::from_millis(1)))
            .unwrap()
            .wait()
    });
    // The deadline has passed once the pool counts the job as failed.
    let deadline = std::time::Instant::now() + BOUND;
    while pool.stats().failed == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue deadline never fired"
        );
        std::thread::yield_now();
    }
    gate.open();
    assert!(busy.wait().unwrap());
    assert!(matches!(waiting.join().unwrap(), Err(JobError::TimedOut { .. })));
    // The worker runs jobs in order: once this one is done, the timed-out
    // one would have run before it.
    assert_eq!(pool.submit(Square(2)).unwrap().wait().unwrap(), 4);
    assert!(!marker.0.exists(), "a job failed in the queue ran anyway");
    finish(std::sync::Arc::into_inner(pool).unwrap());
}

#[test]
fn a_map_whose_jobs_grow_large_still_gives_every_job_its_result() {
    // Small jobs first (the chunks grow), then large ones: chunks stop at
    // their byte budget instead of failing whole at the frame limit.
    let pool = builder(Backend::Processes, 2).build().unwrap();
    let jobs = (0..20_000u32)
        .map(|i| Reverse(vec![(i % 251) as u8]))
        .chain((0..300u32).map(|i| Reverse(vec![(i % 251) as u8; 256 << 10])));
    let mut n = 0usize;
    for (i, r) in pool.map(jobs).enumerate() {
        let out = r.unwrap_or_else(|e| panic!("job {i}: {e}"));
        let want = if i < 20_000 {
            (i % 251) as u8
        } else {
            ((i - 20_000) % 251) as u8
        };
        assert!(
            out.0.iter().all(|b| *b == want),
            "job {i} got another job's bytes"
        );
        n += 1;
    }
    assert_eq!(n, 20_300);
    finish(pool);
}

#[test]
fn a_finished_job_is_answered_while_the_next_one_runs() {
    // Found by the second docs-only trial: a worker held a finished
    // job's answer until the jobs queued behind it were done, so a result
    // came seconds late and was lost if the worker was killed meanwhile.
    // (Jobs that send no progress: a progress message flushes everything.)
    let pool = builder(Backend::Processes, 1)
        .inflight_per_worker(2)
        .build()
        .unwrap();
    let second = GatePath::new("answer-now");
    // Both jobs reach the worker in one write (dispatched together on
    // resume), so the second is already in its buffer when the first ends.
    pool.suspend();
    let a = pool.submit(Sleep(5)).unwrap();
    let b = pool
        .submit(MaybeGated {
            gate: Some(second.0.clone()),
            n: 5,
        })
        .unwrap();
    pool.resume();
    // `second` stays shut until `a`'s answer is here.
    match a.wait_timeout(BOUND) {
        Ok(r) => assert_eq!(r.unwrap(), 5),
        Err(_) => panic!("the finished job's answer waited for the next job"),
    }
    second.open();
    assert_eq!(b.wait().unwrap(), 5);
    finish(pool);
}

// ------------------------------------------------ 9: errors one can act on

#[test]
fn a_crashed_workers_error_quotes_its_panic_not_the_backtrace_note() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    // A panic outside the handler's catch (in a thread it joins) ends the
    // worker; Rust's hook prints the message, then the backtrace note.
    let die = Die {
        signal: "KILL".into(),
        stderr: vec![
            "thread 'main' panicked at src/main.rs:4:5:".into(),
            "disk on fire".into(),
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace".into(),
        ],
    };
    let err = pool.submit(die).unwrap().wait().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("disk on fire"), "{msg}");
    assert!(!msg.contains("RUST_BACKTRACE"), "{msg}");
    assert_eq!(format!("{err:?}"), msg);
    finish(pool);
}

#[test]
fn a_self_describing_output_says_so_and_what_to_do() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    match pool.submit(JsonOut(3)).unwrap().wait() {
        Err(JobError::Codec { side, reason }) => {
            assert_eq!(side, portpool::job::Side::Supervisor);
            assert!(reason.contains("serde_json::value::Value"), "{reason}");
            assert!(reason.contains("self-describing"), "{reason}");
            assert!(reason.contains("concrete type"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    finish(pool);
}

#[test]
fn an_input_that_will_not_encode_keeps_the_types_own_message() {
    let pool = builder(Backend::Processes, 1).build().unwrap();
    let bad = PathBuf::from(OsString::from_vec(vec![b'/', 0xff]));
    let err = pool.submit(Gate(bad)).unwrap().wait().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("UTF-8"), "{msg}");
    assert!(msg.contains("Gate") || msg.contains("gate"), "{msg}");
    assert!(!msg.contains("Serde Serialization Error"), "{msg}");
    finish(pool);
}

#[test]
fn after_a_pool_failure_later_jobs_say_why_it_failed() {
    let pool = builder(Backend::Processes, 1)
        .restart(portpool::RestartPolicy {
            max_restarts: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    let err = pool.submit(Exit(42)).unwrap().wait().unwrap_err();
    assert!(err.to_string().contains("exit code 42"), "{err}");
    // The pool fails as the worker is not restarted.
    let deadline = std::time::Instant::now() + BOUND;
    while pool.failure().is_none() {
        assert!(std::time::Instant::now() < deadline, "the pool did not fail");
        std::thread::yield_now();
    }
    let results: Vec<_> = pool.map((0..3).map(Square)).collect();
    for r in results {
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("the pool failed") && msg.contains("exit code 42"),
            "{msg}"
        );
    }
    match pool.submit(Square(1)) {
        Err(e) => assert!(e.to_string().contains("exit code 42"), "{e}"),
        Ok(_) => panic!("a failed pool took a job"),
    }
    finish(pool);
}

/// A fast job's answer is not held behind a slow job that its worker
/// took next: the worker batches answers while more jobs wait, and the
/// next one may take a minute. (Both jobs reach the worker in one write.)
#[test]
fn a_finished_answer_is_not_held_behind_a_slow_next_job() {
    let gate = common::GatePath::new("held-answer");
    let pool = Pool::builder()
        .processes(1)
        .worker_command(common::fixture("pool-worker"))
        .build()
        .unwrap();
    pool.suspend();
    let fast = pool.submit(jobs::Square(3)).unwrap();
    let slow = pool
        .submit(jobs::MaybeGated {
            gate: Some(gate.0.clone()),
            n: 1,
        })
        .unwrap();
    pool.resume();
    match fast.wait_timeout(common::BOUND) {
        Ok(r) => assert_eq!(r.unwrap(), 9),
        Err(_) => panic!("the fast job's answer waited for the slow job"),
    }
    gate.open();
    assert_eq!(slow.wait().unwrap(), 1);
    pool.shutdown(portpool::Shutdown::default());
}
