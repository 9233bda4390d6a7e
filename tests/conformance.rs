//! The job protocol's conformance suite (docs/protocol.md, section 7):
//! every scenario runs against the Rust worker (the fixture binary,
//! postcard), the Python worker (python/portpool_worker.py serving
//! tests/peers/conformance_worker.py, JSON) and the Node.js worker
//! (node/portpool_worker.js serving tests/peers/conformance_worker.js,
//! JSON). Each test names the rule it checks. Every worker process is
//! asserted gone afterwards.

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;

use std::process::Command;
use std::time::Duration;

use common::{BOUND, GatePath, assert_pid_gone, wait_until};
use jobs::*;
use portpool::link::Codec;
use portpool::pool::{JobOptions, PoolBuilder};
use portpool::{JobError, Pool, Runtime, Shutdown};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Worker {
    Rust,
    Python,
    Node,
}

fn python_worker() -> Command {
    let mut c = Command::new("python3");
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/conformance_worker.py"
    ));
    c
}

fn node_worker() -> Command {
    let mut c = Command::new("node");
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/conformance_worker.js"
    ));
    c
}

fn rust_worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portpool-fixture"));
    c.arg("pool-worker");
    c
}

fn builder(w: Worker, n: usize) -> PoolBuilder {
    let b = Pool::builder().processes(n).forward_worker_stderr(false);
    match w {
        Worker::Rust => b.worker_command(rust_worker()),
        Worker::Python => b.worker_command(python_worker()).job_codec(Codec::Json),
        Worker::Node => b.worker_command(node_worker()).job_codec(Codec::Json),
    }
}

fn pids(pool: &Pool) -> Vec<u32> {
    pool.stats().workers.iter().filter_map(|w| w.pid).collect()
}

fn finish(pool: Pool, earlier: &[u32]) {
    let mut all = earlier.to_vec();
    all.extend(pids(&pool));
    let report = pool.shutdown(Shutdown::graceful(BOUND));
    assert_eq!(report.workers_killed, 0, "{report:?}");
    for pid in all {
        assert_pid_gone(pid);
    }
}

/// One body, run as `<name>::rust`, `<name>::python` and `<name>::node`.
macro_rules! conform {
    ($name:ident, |$w:ident| $body:block) => {
        mod $name {
            use super::*;
            fn body($w: Worker) $body
            #[test]
            fn rust() {
                body(Worker::Rust)
            }
            #[test]
            fn python() {
                body(Worker::Python)
            }
            #[test]
            fn node() {
                body(Worker::Node)
            }
        }
    };
}

// Rules 1-3: the handshake, the route table, one job and its typed result
// or typed error.
conform!(jobs_and_their_typed_results, |w| {
    let pool = builder(w, 2).build().unwrap();
    assert_eq!(pool.submit(Square(12)).unwrap().wait().unwrap(), 144);
    assert_eq!(
        pool.submit(Greet { name: "ada".into() }).unwrap().wait().unwrap(),
        "hello, ada"
    );
    match pool.submit(Greet { name: String::new() }).unwrap().wait() {
        Err(JobError::Handler(GreetError::EmptyName)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pool.submit(Divide { a: -7, b: 2 }).unwrap().wait().unwrap(),
        (-3, -1)
    );
    match pool.submit(Divide { a: 5, b: 0 }).unwrap().wait() {
        Err(JobError::Handler(DivError::ByZero { a: 5 })) => {}
        other => panic!("{other:?}"),
    }
    finish(pool, &[]);
});

// Rule 4: a chunk (batch) is answered once, each job in its place, failures
// among them.
conform!(a_chunked_map_keeps_order_and_failures_in_place, |w| {
    let pool = builder(w, 2).build().unwrap();
    let sum: u64 = pool.map((0..2000).map(Square)).map(Result::unwrap).sum();
    assert_eq!(sum, (0..2000u64).map(|n| n * n).sum::<u64>());
    let got: Vec<bool> = pool
        .map((0..300).map(|a| Divide { a, b: a % 7 }))
        .map(|r| r.is_ok())
        .collect();
    assert_eq!(got, (0..300).map(|a| a % 7 != 0).collect::<Vec<_>>());
    finish(pool, &[]);
});

// Rule 5: a panic (a Python exception) fails its job alone; the worker
// goes on.
conform!(a_panic_fails_its_job_alone, |w| {
    let pool = builder(w, 1).build().unwrap();
    let before = pids(&pool);
    match pool.submit(Boom("on purpose".into())).unwrap().wait() {
        Err(JobError::Panicked { message }) => assert!(message.contains("on purpose"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.submit(Square(3)).unwrap().wait().unwrap(), 9);
    assert_eq!(pids(&pool), before, "the worker was replaced");
    finish(pool, &[]);
});

// Rule 6: progress reaches the ticket before the result.
conform!(progress_comes_before_the_result, |w| {
    let pool = builder(w, 1).build().unwrap();
    let mut t = pool.submit(Tick(5)).unwrap();
    let mut heard = Vec::new();
    while let Some(i) = t.recv_progress::<u32>() {
        heard.push(i);
    }
    assert_eq!(heard, [0, 1, 2, 3, 4]);
    assert_eq!(t.wait().unwrap(), 5);
    finish(pool, &[]);
});

// Rule 7: a cancel reaches a running handler, which returns; a run timeout
// is a cancel too. The worker is not replaced.
conform!(cancel_and_timeout_reach_the_handler, |w| {
    let pool = builder(w, 1).cancel_grace(BOUND).build().unwrap();
    let before = pids(&pool);
    let hang = || Chaos {
        n: 1,
        fault: Fault::Hang,
    };
    let t = pool.submit(hang()).unwrap();
    t.cancel();
    assert!(matches!(t.wait(), Err(JobError::Cancelled)));
    let slow = JobOptions::new().timeout(Duration::from_millis(20));
    assert!(matches!(
        pool.submit_with(hang(), slow).unwrap().wait(),
        Err(JobError::TimedOut { .. })
    ));
    assert!(pool.wait_idle(BOUND));
    assert_eq!(pool.submit(Square(4)).unwrap().wait().unwrap(), 16);
    assert_eq!(pids(&pool), before, "the worker was replaced");
    finish(pool, &[]);
});

// Rule 7 (cancel of a job not started): a cancelled job that waits on its
// worker behind another is skipped when its turn comes; the worker, and
// the job before it, are not killed for it, however short the grace.
conform!(cancelling_a_job_queued_behind_another_kills_nothing, |w| {
    let pool = builder(w, 1)
        .cancel_grace(Duration::from_millis(5))
        .build()
        .unwrap();
    let before = pids(&pool);
    let (touch, gate) = (
        GatePath::new(&format!("conform-touch-{w:?}")),
        GatePath::new(&format!("conform-gate-{w:?}")),
    );
    let first = pool
        .submit(TouchThenWait {
            touch: touch.0.clone(),
            gate: gate.0.clone(),
        })
        .unwrap();
    wait_until("the first job to start", || touch.0.exists());
    let behind = pool.submit(Square(8)).unwrap();
    behind.cancel();
    assert!(matches!(behind.wait(), Err(JobError::Cancelled)));
    // Forty grace periods: with the kill, the worker would be gone by now.
    std::thread::sleep(Duration::from_millis(200));
    gate.open();
    first.wait().unwrap();
    assert_eq!(pids(&pool), before, "the worker was killed");
    assert_eq!(pool.stats().workers[0].restarts, 0);
    finish(pool, &[]);
});

// Rule 12 (suspend and resume): the runtime's suspend reaches each
// worker's hooks, nothing runs while suspended, and resume carries on.
conform!(suspend_and_resume_reach_the_workers_hooks, |w| {
    let rt = Runtime::new();
    let pool = builder(w, 1).runtime(&rt).build().unwrap();
    rt.suspend();
    let t = pool.submit(Square(3)).unwrap();
    let t = t.try_wait().expect_err("nothing runs while suspended");
    rt.resume();
    assert_eq!(t.wait().unwrap(), 9);
    assert_eq!(pool.submit(HookCounts).unwrap().wait().unwrap(), (1, 1));
    finish(pool, &[]);
});

// Rule 8: a worker that exits mid-job fails what it held with its exit
// status, and is replaced.
conform!(a_crash_mid_job_is_reported_and_the_worker_replaced, |w| {
    let pool = builder(w, 1).build().unwrap();
    let before = pids(&pool);
    match pool
        .submit(Chaos {
            n: 2,
            fault: Fault::KillWorker,
        })
        .unwrap()
        .wait()
    {
        Err(JobError::WorkerExited { status, .. }) => {
            assert!(
                status.as_deref().unwrap_or("").contains("exit code 7"),
                "{status:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.submit(Square(5)).unwrap().wait().unwrap(), 25);
    assert_ne!(pids(&pool), before);
    finish(pool, &before);
});

// Rule 9: an output that does not decode as the job's type fails that
// job, saying which type.
conform!(an_output_of_the_wrong_shape_fails_its_job, |w| {
    let pool = builder(w, 1).build().unwrap();
    let bad = pool
        .submit(Chaos {
            n: 3,
            fault: Fault::BadOutput,
        })
        .unwrap()
        .wait();
    match bad {
        Err(JobError::Codec { reason, .. }) => assert!(reason.contains("ChaosOut"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.submit(Square(6)).unwrap().wait().unwrap(), 36);
    finish(pool, &[]);
});

// Rule 2: a worker of the other codec fails the handshake, and the error
// says both codecs.
#[test]
fn a_codec_mismatch_fails_the_build_naming_both_codecs() {
    let rust_as_json = Pool::builder()
        .processes(1)
        .worker_command(rust_worker())
        .job_codec(Codec::Json)
        .forward_worker_stderr(false)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        rust_as_json.contains("postcard") && rust_as_json.contains("JSON"),
        "{rust_as_json}"
    );
    let python_as_postcard = Pool::builder()
        .processes(1)
        .worker_command(python_worker())
        .forward_worker_stderr(false)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        python_as_postcard.contains("postcard") && python_as_postcard.contains("JSON"),
        "{python_as_postcard}"
    );
    let node_as_postcard = Pool::builder()
        .processes(1)
        .worker_command(node_worker())
        .forward_worker_stderr(false)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        node_as_postcard.contains("postcard") && node_as_postcard.contains("JSON"),
        "{node_as_postcard}"
    );
}

// Rule 10: a frame that is not the protocol ends that worker as one that
// broke its protocol; its job fails saying so; a replacement serves.
#[test]
fn a_malformed_frame_ends_the_worker_that_sent_it() {
    malformed_frame(Worker::Python);
    malformed_frame(Worker::Node);
}

fn malformed_frame(w: Worker) {
    let pool = builder(w, 1).build().unwrap();
    let before = pids(&pool);
    match pool.submit(Garbage).unwrap().wait() {
        Err(JobError::WorkerExited { status, .. }) => {
            let status = status.unwrap_or_default();
            assert!(
                status.contains("broke its protocol") && status.contains("not JSON"),
                "{status}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.submit(Square(7)).unwrap().wait().unwrap(), 49);
    finish(pool, &before);
}

// Rule 3: a frame that says a thing twice, or a RESULT outside the table,
// ends its worker with the reason; a value is quoted as it came.
#[test]
fn a_frame_with_a_key_twice_or_an_odd_result_ends_its_worker() {
    let pool = builder(Worker::Python, 1).build().unwrap();
    let mut before = Vec::new();
    for (frame, says) in [
        (
            r#"{"type":"done","id":{id},"ok":1,"ok":2}"#,
            "duplicate field `ok`",
        ),
        (
            r#"{"type":"done","id":{id},"id":{id},"ok":1}"#,
            "duplicate field `id`",
        ),
        (r#"{"type":"done","id":{id},"cancelled":false}"#, "must be true"),
    ] {
        // Met by the waiting ticket, which reads its worker's port itself,
        // then by the reader thread (the ticket only polled). Either way the
        // worker is killed at once, not after its grace for leaving.
        for poll in [false, true] {
            // Each worker ended here must be gone at the end.
            before.extend(pids(&pool));
            let ticket = pool.submit(RawAnswer(frame.into())).unwrap();
            let got = if poll {
                let mut t = Some(ticket);
                let mut got = None;
                wait_until("the job's outcome", || match t.take().unwrap().try_wait() {
                    Ok(r) => {
                        got = Some(r);
                        true
                    }
                    Err(back) => {
                        t = Some(back);
                        false
                    }
                });
                got.unwrap()
            } else {
                ticket.wait()
            };
            match got {
                Err(JobError::WorkerExited { status, .. }) => {
                    let status = status.unwrap_or_default();
                    assert!(
                        status.contains("broke its protocol")
                            && status.contains(says)
                            && !status.contains("kept running"),
                        "{status}"
                    );
                }
                other => panic!("{frame}: {other:?}"),
            }
        }
    }
    // A frame cut short, then a clean exit: the exit says so.
    before.extend(pids(&pool));
    match pool.submit(RawAnswer("cut-and-exit".into())).unwrap().wait() {
        Err(JobError::WorkerExited { status, .. }) => {
            let status = status.unwrap_or_default();
            assert!(
                status.contains("exit code 0") && status.contains("in the middle of a frame (15 of 55 bytes"),
                "{status}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A valid frame whose output is past 64 bits: that job fails, quoting
    // the number as written; the worker stays.
    let big = r#"{"type":"done","id":{id},"ok":1180591620717411303424}"#;
    match pool.submit(RawAnswer(big.into())).unwrap().wait() {
        Err(JobError::Codec { reason, .. }) => assert!(reason.contains("1180591620717411303424"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.submit(Square(7)).unwrap().wait().unwrap(), 49);
    finish(pool, &before);
}

// Rule 1: an answer for a job the worker does not hold (here a second
// and a third answer for one job, the first two in one write) is ignored,
// and loses no other job: the job dispatched on the first answer still
// goes out, though its write was left to the frame behind it.
#[test]
fn a_second_answer_for_a_job_is_ignored_and_loses_no_other_job() {
    let pool = builder(Worker::Python, 1).inflight_per_worker(1).build().unwrap();
    let before = pids(&pool);
    for round in 0..20u64 {
        let tickets: Vec<_> = (0..3)
            .map(|i| pool.submit(AnswerTwice(round * 3 + i)).unwrap())
            .collect();
        for (i, t) in (0..3).zip(tickets) {
            match t.wait_timeout(BOUND) {
                Ok(got) => assert_eq!(got, Ok(round * 3 + i)),
                Err(_) => panic!("job {} of round {round} was never answered", round * 3 + i),
            }
        }
    }
    assert_eq!(pids(&pool), before, "the worker was not replaced");
    finish(pool, &before);
}

// Rule 11: a JSON pool's job that will not encode as JSON fails at submit.
#[test]
fn a_job_that_will_not_encode_fails_at_submit() {
    let pool = builder(Worker::Python, 1).build().unwrap();
    match pool
        .submit(Chaos {
            n: 4,
            fault: Fault::BadInput,
        })
        .unwrap()
        .wait()
    {
        Err(JobError::Codec { reason, .. }) => assert!(reason.contains("refuses to encode"), "{reason}"),
        other => panic!("{other:?}"),
    }
    finish(pool, &[]);
}

// The document cannot name a test that does not exist: every test named
// in docs/protocol.md's conformance table is a `fn` in the tests or in
// the runtime's unit tests.
#[test]
fn every_test_the_protocol_document_names_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/protocol.md")).unwrap();
    let table = doc
        .split("## 7. Conformance")
        .nth(1)
        .expect("a conformance section");
    let mut sources = String::new();
    for dir in ["tests", "runtime/src", "runtime/src/link", "runtime/src/proto"] {
        for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    // The test column: the last cell of each numbered row.
    let tests: String = table
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|l| l.trim_end_matches('|').rsplit('|').next())
        .collect();
    let mut named = 0;
    for name in tests.split('`').skip(1).step_by(2) {
        if name.contains('/') || name.contains('.') || !name.contains('_') {
            continue; // a file, not a test
        }
        named += 1;
        let as_fn = format!("fn {name}(");
        let as_conform = format!("conform!({name},");
        assert!(
            sources.contains(&as_fn) || sources.contains(&as_conform),
            "docs/protocol.md names the test {name}, which does not exist"
        );
    }
    assert!(named >= 16, "only {named} tests named");
}

// A Python worker started through a launcher takes its port from its
// stdio (`PORTPOOL_PORT=stdio:<pid>`); a plain prefix launcher needs no
// daemon (tests/launchers.rs runs the same over ssh and Slurm).
#[test]
fn a_python_or_node_worker_serves_through_a_launcher() {
    for worker in [python_worker(), node_worker()] {
        through_a_launcher(worker);
    }
}

fn through_a_launcher(worker: Command) {
    let pool = Pool::builder()
        .worker_command(worker)
        .job_codec(Codec::Json)
        .launch(portpool::launch::Launcher::prefix(["nice", "-n", "1"]), 2)
        .forward_worker_stderr(false)
        .build()
        .unwrap();
    assert_eq!(pool.submit(Square(11)).unwrap().wait().unwrap(), 121);
    let sum: u64 = pool.map((0..500).map(Square)).map(Result::unwrap).sum();
    assert_eq!(sum, (0..500u64).map(|n| n * n).sum::<u64>());
    finish(pool, &[]);
}
