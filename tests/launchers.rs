//! Workers started through launchers, against a real OpenSSH server and a
//! real one-node Slurm on loopback (`scripts/daemons`; README's test
//! command, `scripts/with-daemons cargo test --workspace`, starts both,
//! runs every test, and stops them).
//!
//! The ssh tests run when `PORTPOOL_TEST_SSH` is set, the srun tests when
//! `PORTPOOL_TEST_SLURM` is; without them this file says, in one line at
//! the end, which tests it skipped and how to run them. With a variable
//! set and its daemon not answering, each of its tests fails saying so.
//!
//! Its own harness (`harness = false`): the tests share two daemons and
//! run one after another; each asserts that no process it started, here or
//! on the "remote" side, is left alive.

#[path = "common/mod.rs"]
mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BOUND, GatePath, assert_pid_gone, fixture, wait_pid_gone};
use portpool::job::TimeoutPhase;
use portpool::launch::Launcher;
use portpool::pool::{JobOptions, PoolBuilder, TrySubmitError};
use portpool::{JobError, Pool, Shutdown};

/// Where the tests' workers run: through ssh, through srun, or a pool
/// that mixes one local, one ssh and one srun worker.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ssh,
    Srun,
    Mixed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ssh => "ssh",
            Kind::Srun => "srun",
            Kind::Mixed => "mixed",
        }
    }

    /// The daemons its tests need.
    fn needs(self) -> Vec<Kind> {
        match self {
            Kind::Mixed => vec![Kind::Ssh, Kind::Srun],
            k => vec![k],
        }
    }

    fn var(self) -> &'static str {
        match self {
            Kind::Ssh => "PORTPOOL_TEST_SSH",
            Kind::Srun | Kind::Mixed => "PORTPOOL_TEST_SLURM",
        }
    }

    fn launcher(self) -> Launcher {
        launcher_with(self, "client_key", "known_hosts")
    }

    /// The launcher names `stats()` shows for its workers.
    fn places(self, n: usize) -> Vec<String> {
        match self {
            Kind::Mixed => vec!["local".into(), Kind::Ssh.launcher().to_string(), "srun".into()],
            k => vec![k.launcher().to_string(); n],
        }
    }
}

fn launcher_with(kind: Kind, key: &str, known_hosts: &str) -> Launcher {
    jobs::test_launcher(kind.name(), key, known_hosts).unwrap_or_else(|| {
        panic!(
            "{} is set but the launcher cannot be made from the environment (for srun, SLURM_CONF must \
             be set to the same file)",
            kind.var()
        )
    })
}

/// A pool of `n` fixture workers through `kind`'s launcher (three, one
/// of each, for `Mixed`).
fn builder(kind: Kind, n: usize) -> PoolBuilder {
    let b = Pool::builder()
        .worker_command(fixture("pool-worker"))
        .cancel_grace(Duration::from_millis(200));
    match kind {
        Kind::Mixed => b
            .processes(1)
            .launch(Kind::Ssh.launcher(), 1)
            .launch(Kind::Srun.launcher(), 1),
        k => b.launch(k.launcher(), n),
    }
}

/// Waits (bounded) until at least one of `pids` has exited.
fn wait_any_gone(pids: &[u32]) {
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let gone = pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        });
        if gone {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "none of {pids:?} exited");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pids of every worker (their own, on the far side) and of every
/// launcher process (here): each must be gone when the test ends.
struct Procs {
    remote: Vec<u32>,
    launchers: Vec<u32>,
}

fn procs(pool: &Pool) -> Procs {
    let remote = pool
        .broadcast(jobs::WhoAmI)
        .into_iter()
        .map(|r| r.expect("who-am-i").1)
        .collect();
    let launchers = pool.stats().workers.iter().filter_map(|w| w.pid).collect();
    Procs { remote, launchers }
}

impl Procs {
    fn assert_gone(&self) {
        for &p in &self.remote {
            wait_pid_gone(p);
        }
        for &p in &self.launchers {
            wait_pid_gone(p);
            assert_pid_gone(p);
        }
    }
}

fn jobs_map_and_progress(kind: Kind) {
    let pool = builder(kind, 2).build().expect("build");
    let procs = procs(&pool);
    let places: Vec<String> = pool.stats().workers.into_iter().map(|w| w.launcher).collect();
    assert_eq!(places, kind.places(2));
    let mut distinct = procs.remote.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), places.len(), "one process per worker");
    assert_eq!(
        pool.submit(jobs::Square(7))
            .expect("submit")
            .wait()
            .expect("square"),
        49
    );
    let squares: Vec<u64> = pool
        .map((0..500).map(jobs::Square))
        .map(|r| r.expect("map"))
        .collect();
    assert_eq!(squares, (0..500).map(|n| n * n).collect::<Vec<_>>());
    let mut t = pool.submit(jobs::Steps(5)).expect("submit");
    let seen: Vec<u32> = (0..5).filter_map(|_| t.recv_progress::<u32>()).collect();
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    assert_eq!(t.wait().expect("steps"), 5);
    let report = pool.shutdown(Shutdown::graceful(BOUND));
    assert_eq!(report.workers_killed, 0, "{report}");
    procs.assert_gone();
}

/// Python and Node.js workers (python/portpool_worker.py and
/// node/portpool_worker.js, the JSON job protocol) through the launcher:
/// their port is the launcher's stdio.
fn json_workers_through_the_launcher(kind: Kind) {
    let mut py = Command::new("python3");
    py.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/conformance_worker.py"
    ));
    let mut node = Command::new("node");
    node.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/conformance_worker.js"
    ));
    json_worker_through(kind, py);
    json_worker_through(kind, node);
}

fn json_worker_through(kind: Kind, worker: Command) {
    let pool = Pool::builder()
        .worker_command(worker)
        .job_codec(portpool::link::Codec::Json)
        .launch(kind.launcher(), 2)
        .build()
        .expect("build");
    let procs = procs(&pool);
    assert_eq!(
        pool.submit(jobs::Square(9))
            .expect("submit")
            .wait()
            .expect("square"),
        81
    );
    let sum: u64 = pool
        .map((0..300).map(jobs::Square))
        .map(|r| r.expect("map"))
        .sum();
    assert_eq!(sum, (0..300u64).map(|n| n * n).sum::<u64>());
    let mut t = pool.submit(jobs::Tick(3)).expect("submit");
    let seen: Vec<u32> = (0..3).filter_map(|_| t.recv_progress::<u32>()).collect();
    assert_eq!(seen, vec![0, 1, 2]);
    assert_eq!(t.wait().expect("tick"), 3);
    match pool
        .submit(jobs::Greet { name: String::new() })
        .expect("submit")
        .wait()
    {
        Err(JobError::Handler(jobs::GreetError::EmptyName)) => {}
        other => panic!("{other:?}"),
    }
    let report = pool.shutdown(Shutdown::graceful(BOUND));
    assert_eq!(report.workers_killed, 0, "{report}");
    procs.assert_gone();
}

fn cancel_and_timeout(kind: Kind) {
    let pool = builder(kind, 1).inflight_per_worker(1).build().expect("build");
    let procs = procs(&pool);
    // A cancelled job whose handler sees it.
    let gate = GatePath::new(&format!("launch-cancel-{}", kind.name()));
    let mut t = pool.submit(jobs::Gate(gate.0.clone())).expect("submit");
    assert_eq!(t.recv_progress::<String>().as_deref(), Some("started"));
    t.cancel();
    assert!(matches!(t.wait(), Err(JobError::Cancelled)));
    // A run timeout on a handler that does not look: the worker is ended
    // after the grace, the job says TimedOut, and a new worker comes.
    let never = GatePath::new(&format!("launch-timeout-{}", kind.name()));
    let t = pool
        .submit_with(
            jobs::Stubborn(never.0.clone()),
            JobOptions::new().timeout(Duration::from_millis(300)),
        )
        .expect("submit");
    match t.wait() {
        Err(JobError::TimedOut {
            phase: TimeoutPhase::Run,
            ..
        }) => {}
        other => panic!("expected a run timeout, got {other:?}"),
    }
    // The worker that ran it was ended (through its launcher); a new one
    // takes its place.
    wait_any_gone(&procs.remote);
    assert_eq!(
        pool.submit(jobs::Square(9))
            .expect("submit")
            .wait()
            .expect("square"),
        81
    );
    let after = procs_of(&pool);
    pool.shutdown(Shutdown::graceful(BOUND));
    procs.assert_gone();
    after.assert_gone();
}

fn procs_of(pool: &Pool) -> Procs {
    procs(pool)
}

fn graceful_shutdown(kind: Kind) {
    let pool = builder(kind, 2).inflight_per_worker(1).build().expect("build");
    let procs = procs(&pool);
    let gate = GatePath::new(&format!("launch-drain-{}", kind.name()));
    let mut tickets: Vec<_> = (0..pool.workers())
        .map(|_| pool.submit(jobs::Gate(gate.0.clone())).expect("submit"))
        .collect();
    for t in &mut tickets {
        assert_eq!(t.recv_progress::<String>().as_deref(), Some("started"));
    }
    // All run; the shutdown waits for them, and they finish once the gate
    // opens: from another thread, once the pool refuses new jobs (the
    // shutdown has begun).
    let report = std::thread::scope(|sc| {
        sc.spawn(|| {
            let deadline = std::time::Instant::now() + BOUND;
            while !matches!(pool.try_submit(jobs::Square(0)), Err(TrySubmitError::Closed(_))) {
                assert!(std::time::Instant::now() < deadline, "the shutdown never began");
                std::thread::yield_now();
            }
            gate.open();
        });
        pool.shutdown(Shutdown::graceful(BOUND))
    });
    assert_eq!(report.workers_killed, 0, "{report}");
    assert!(!report.deadline_hit, "{report}");
    for t in tickets {
        assert!(t.wait().expect("gate"), "the handler saw its gate open");
    }
    procs.assert_gone();
}

fn killed_worker_is_replaced(kind: Kind) {
    let pool = builder(kind, 1).inflight_per_worker(1).build().expect("build");
    let procs = procs(&pool);
    let never = GatePath::new(&format!("launch-kill-{}", kind.name()));
    let mut t = pool.submit(jobs::Stubborn(never.0.clone())).expect("submit");
    assert_eq!(t.recv_progress::<String>().as_deref(), Some("started"));
    // SIGKILL the worker itself, on the far side.
    let rc = Command::new("kill")
        .args(["-KILL", &procs.remote[0].to_string()])
        .status()
        .expect("kill");
    assert!(rc.success());
    match t.wait() {
        Err(JobError::WorkerExited { status, .. }) => {
            let status = status.expect("the launcher's exit status is reported");
            assert!(status.contains(&format!("through {}", kind.name())), "{status}");
        }
        other => panic!("expected WorkerExited, got {other:?}"),
    }
    // Replaced: a new worker, through the launcher again.
    let again = procs_of(&pool);
    assert_ne!(again.remote, procs.remote);
    assert_eq!(
        pool.submit(jobs::Square(3))
            .expect("submit")
            .wait()
            .expect("square"),
        9
    );
    assert!(pool.stats().workers[0].restarts >= 1);
    pool.shutdown(Shutdown::graceful(BOUND));
    procs.assert_gone();
    again.assert_gone();
}

fn stdout_does_not_break_the_port(kind: Kind) {
    let pool = builder(kind, 1).build().expect("build");
    let procs = procs(&pool);
    let text = "a handler printing\nseveral lines\n\0 and bytes that look like frames: \u{5}\u{0}\u{0}";
    for _ in 0..3 {
        assert_eq!(
            pool.submit(jobs::Shout(text.into()))
                .expect("submit")
                .wait()
                .expect("shout"),
            text.len()
        );
    }
    assert_eq!(
        pool.submit(jobs::Square(12))
            .expect("submit")
            .wait()
            .expect("square"),
        144
    );
    let report = pool.shutdown(Shutdown::graceful(BOUND));
    assert_eq!(report.failed, 0, "{report}");
    procs.assert_gone();
}

fn supervisor_killed_leaves_no_worker(kind: Kind) {
    let mut sup = fixture("remote-supervisor");
    sup.arg(kind.name()).stdout(Stdio::piped());
    let mut child = sup.spawn().expect("spawn the supervisor");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).expect("read");
    let pids: Vec<u32> = line
        .strip_prefix("remote ")
        .unwrap_or_else(|| panic!("expected `remote <pids>`, got {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2, "{line:?}");
    child.kill().expect("SIGKILL the supervisor");
    child.wait().expect("reap");
    // Both workers were inside a handler that never returns; they must
    // notice that their connection went away and end.
    for p in pids {
        wait_pid_gone(p);
    }
}

fn start_failures_name_the_cause() {
    let cases = [
        (
            launcher_with(Kind::Ssh, "client_key", "wrong_known_hosts"),
            "Host key verification failed",
        ),
        (
            launcher_with(Kind::Ssh, "stranger_key", "known_hosts"),
            "Permission denied",
        ),
        (
            Kind::Ssh
                .launcher()
                .program("/nonexistent/portpool-worker", ["pool-worker"]),
            "/nonexistent/portpool-worker",
        ),
    ];
    for (launcher, expected) in cases {
        let shown = launcher.to_string();
        let err = Pool::builder()
            .worker_command(fixture("pool-worker"))
            .launch(launcher, 1)
            .build()
            .expect_err("a launcher that cannot start a worker fails the build");
        let msg = err.to_string();
        assert!(msg.contains(expected), "{shown}: {msg}");
        assert!(msg.contains("through ssh"), "{msg}");
    }
}

fn missing_binary_under_srun() {
    let err = Pool::builder()
        .worker_command(fixture("pool-worker"))
        .launch(
            Kind::Srun
                .launcher()
                .program("/nonexistent/portpool-worker", ["x"]),
            1,
        )
        .build()
        .expect_err("a missing program fails the build");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/portpool-worker"), "{msg}");
    assert!(msg.contains("through srun"), "{msg}");
}

fn prefix_launcher() {
    let pool = Pool::builder()
        .worker_command(fixture("pool-worker"))
        .launch(Launcher::prefix(["nice", "-n", "1"]), 2)
        .forward_worker_stderr(false)
        .build()
        .expect("build");
    let procs = procs(&pool);
    for w in pool.stats().workers {
        assert_eq!(w.launcher, "prefix nice -n 1");
    }
    let sum: u64 = pool
        .map((0..1000).map(jobs::Square))
        .map(|r| r.expect("map"))
        .sum();
    assert_eq!(sum, (0..1000u64).map(|n| n * n).sum::<u64>());
    assert_eq!(
        pool.submit(jobs::Shout("hi".into()))
            .expect("submit")
            .wait()
            .expect("shout"),
        2
    );
    pool.shutdown(Shutdown::graceful(BOUND));
    procs.assert_gone();
}

fn settings_that_cannot_work_fail_the_build() {
    let cases: [(PoolBuilder, &str); 5] = [
        (
            Pool::builder().launch(Launcher::srun().port(22), 1),
            "ssh launchers only",
        ),
        (
            Pool::builder().threads(1).launch(Launcher::ssh("h"), 1),
            "cannot be combined with .threads(n)",
        ),
        (
            Pool::builder().worker_links(true).launch(Launcher::ssh("h"), 1),
            "cannot carry the link's port",
        ),
        (
            Pool::builder().launch(Launcher::prefix(["/nonexistent/launcher"]), 1),
            "through prefix /nonexistent/launcher",
        ),
        (
            Pool::builder().launch(Launcher::ssh("h").env("A B", "v"), 1),
            "not a variable name",
        ),
    ];
    for (b, expected) in cases {
        let msg = b
            .worker_command(fixture("pool-worker"))
            .build()
            .expect_err("refused")
            .to_string();
        assert!(msg.contains(expected), "{msg}");
    }
}

fn inside_salloc() {
    // A supervisor started inside an allocation: its srun workers are steps
    // of that allocation.
    let out = Command::new("timeout")
        .args(["120", "salloc", "-N1", "-n2", "--quiet"])
        .arg(env!("CARGO_BIN_EXE_portpool-fixture"))
        .args(["remote-jobs", "srun"])
        .output()
        .expect("salloc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: u64 = (0..100u64).map(|n| n * n).sum();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("sum "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.get(1), Some(&expected.to_string().as_str()), "{line}");
    assert!(
        words.get(3).is_some_and(|j| !j.is_empty() && *j != "-"),
        "ran in an allocation: {line}"
    );
}

/// A test: its name, the daemons it needs, its body.
struct Case {
    name: String,
    needs: Vec<Kind>,
    run: Box<dyn Fn()>,
}

fn cases() -> Vec<Case> {
    type Body = fn(Kind);
    let all = [Kind::Ssh, Kind::Srun, Kind::Mixed];
    let remote = [Kind::Ssh, Kind::Srun];
    let per_kind: [(&str, Body, &[Kind]); 7] = [
        (
            "json_workers_through_the_launcher",
            json_workers_through_the_launcher,
            &remote,
        ),
        ("jobs_map_and_progress", jobs_map_and_progress, &all),
        ("cancel_and_timeout", cancel_and_timeout, &all),
        ("graceful_shutdown", graceful_shutdown, &all),
        ("killed_worker_is_replaced", killed_worker_is_replaced, &remote),
        (
            "stdout_does_not_break_the_port",
            stdout_does_not_break_the_port,
            &remote,
        ),
        (
            "supervisor_killed_leaves_no_worker",
            supervisor_killed_leaves_no_worker,
            &remote,
        ),
    ];
    let mut out = Vec::new();
    for kind in all {
        for (name, body, kinds) in per_kind {
            if kinds.contains(&kind) {
                out.push(Case {
                    name: format!("{}::{name}", kind.name()),
                    needs: kind.needs(),
                    run: Box::new(move || body(kind)),
                });
            }
        }
    }
    type Fixed = (&'static str, Vec<Kind>, fn());
    let fixed: [Fixed; 5] = [
        (
            "ssh::start_failures_name_the_cause",
            vec![Kind::Ssh],
            start_failures_name_the_cause,
        ),
        (
            "srun::missing_binary",
            vec![Kind::Srun],
            missing_binary_under_srun,
        ),
        ("srun::inside_salloc", vec![Kind::Srun], inside_salloc),
        ("prefix::jobs_through_nice", vec![], prefix_launcher),
        (
            "config::settings_that_cannot_work_fail_the_build",
            vec![],
            settings_that_cannot_work_fail_the_build,
        ),
    ];
    for (name, needs, body) in fixed {
        out.push(Case {
            name: name.into(),
            needs,
            run: Box::new(body),
        });
    }
    out
}

/// Whether `kind`'s daemon answers; `Err` says what is wrong.
fn daemon_answers(kind: Kind) -> Result<(), String> {
    let ok = match kind {
        Kind::Ssh => {
            let dir = std::env::var("PORTPOOL_TEST_SSH_DIR").unwrap_or_default();
            let target = std::env::var("PORTPOOL_TEST_SSH").unwrap_or_default();
            let (user_host, port) = target.rsplit_once(':').unwrap_or((&target, "22"));
            Command::new("ssh")
                .args(["-F", "none", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={dir}/known_hosts"))
                .args(["-i", &format!("{dir}/client_key"), "-p", port, user_host, "true"])
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        }
        Kind::Srun | Kind::Mixed => Command::new("sinfo")
            .args(["-h", "-o", "%t"])
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle"))
            .unwrap_or(false),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is set but its daemon does not answer: start it with scripts/daemons/{} start, or run \
             everything with scripts/with-daemons cargo test --workspace",
            kind.var(),
            match kind {
                Kind::Ssh => "sshd",
                Kind::Srun | Kind::Mixed => "slurm",
            }
        ))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for c in cases() {
            println!("{}: test", c.name);
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect();
    let mut health: Vec<(Kind, Option<Result<(), String>>)> = Vec::new();
    for kind in [Kind::Ssh, Kind::Srun] {
        let set = std::env::var_os(kind.var()).is_some();
        health.push((kind, set.then(|| daemon_answers(kind))));
    }
    let status = |k: Kind| health.iter().find(|(h, _)| *h == k).and_then(|(_, s)| s.clone());
    // Worker fixture output stays short: one line per panic, not a backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    let (mut passed, mut failed, mut skipped) = (0, Vec::new(), Vec::new());
    println!("\nrunning {} tests", selected.len());
    for c in &selected {
        let missing: Vec<Kind> = c.needs.iter().copied().filter(|k| status(*k).is_none()).collect();
        if !missing.is_empty() {
            skipped.push(c.name.clone());
            println!("test {} ... skipped", c.name);
            continue;
        }
        if let Some(Err(why)) = c.needs.iter().find_map(|k| status(*k).filter(|s| s.is_err())) {
            println!("test {} ... FAILED\n  {why}", c.name);
            failed.push(c.name.clone());
            continue;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (c.run)())) {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok", c.name);
            }
            Err(_) => {
                println!("test {} ... FAILED", c.name);
                failed.push(c.name.clone());
            }
        }
    }
    let result = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {passed} passed; {} failed; {} ignored; 0 measured; 0 filtered out",
        failed.len(),
        skipped.len()
    );
    if !skipped.is_empty() {
        println!(
            "launchers: skipped {} test(s) needing a daemon ({}): run scripts/with-daemons cargo test --workspace, which starts sshd and \
             Slurm on loopback, or set PORTPOOL_TEST_SSH / PORTPOOL_TEST_SLURM as scripts/daemons prints",
            skipped.len(),
            skipped.join(", ")
        );
    }
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
        std::process::exit(101);
    }
}
