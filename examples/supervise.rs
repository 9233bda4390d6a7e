//! `cargo run --release --example supervise [JOBS]`
//!
//! Supervised long-running jobs on two process workers (this executable
//! re-run). Each job checksums a few megabytes of generated data in steps,
//! reporting progress; "flaky" jobs crash their worker (abort) now and
//! then. The pool replaces crashed workers and retries the lost job once;
//! a job whose retry crashes too is reported with the worker's exit
//! status and the last line of its stderr.
//!
//! Press Ctrl-C: the pool drains gracefully (running and queued jobs
//! finish), prints its report and exits with status 130. Press Ctrl-C
//! again while it drains: it stops at once (queued and running jobs are
//! cancelled, the workers are killed).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portpool::supervisor::PoolEvent;
use portpool::{Context, Handlers, Job, JobError, Pool, Runtime, Shutdown};
use serde::{Deserialize, Serialize};

/// Checksum `mib` MiB of data generated from `seed`.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Checksum {
    seed: u64,
    mib: u64,
    /// Crashes its worker about one time in three.
    flaky: bool,
}

impl Job for Checksum {
    type Output = u64;
    type Error = String;
    const NAME: &'static str = "checksum";
}

fn checksum(job: Checksum, cx: &Context) -> Result<u64, String> {
    if job.flaky {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        if nanos % 3 == 0 {
            eprintln!("checksum {}: corrupted input, aborting", job.seed);
            std::process::abort();
        }
    }
    // FNV-1a over a xorshift stream, one MiB per step.
    let (mut x, mut h) = (job.seed | 1, 0xcbf2_9ce4_8422_2325u64);
    for step in 0..job.mib {
        if cx.is_cancelled() {
            return Err(format!("cancelled after {step} MiB"));
        }
        for _ in 0..(1 << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for b in x.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        cx.progress(&(step + 1));
    }
    Ok(h)
}

fn handlers() -> Handlers {
    Handlers::new().on::<Checksum>(checksum)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker process this serves jobs and never returns.
    portpool::worker::serve_if_worker(&handlers());
    let jobs: u64 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(24);

    let rt = Runtime::global();
    let first = std::sync::atomic::AtomicBool::new(true);
    rt.on_signal(move |sig| {
        if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("\nsignal {sig}: finishing the work in hand (Ctrl-C again to stop at once)");
        } else {
            eprintln!("\nsignal {sig}: stopping now");
        }
    });
    rt.handle_signals()?;

    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .inflight_per_worker(1)
            .retries(1)
            .job_timeout(Duration::from_secs(60))
            .on_event(|e| match e {
                PoolEvent::WorkerStarted {
                    worker,
                    pid: Some(pid),
                    restarts,
                } if *restarts > 0 => {
                    eprintln!("  worker {worker} replaced (pid {pid}, restart {restarts})")
                }
                PoolEvent::WorkerExited {
                    worker,
                    status,
                    expected: false,
                    ..
                } => eprintln!("  worker {worker} crashed: {status}"),
                PoolEvent::PoolFailed { reason } => eprintln!("  pool failed: {reason}"),
                _ => {}
            })
            .build()?,
    );
    println!("running {jobs} jobs on 2 worker processes; press Ctrl-C to drain");

    let tickets: Vec<_> = (0..jobs)
        .map(|i| {
            let job = Checksum {
                seed: i,
                mib: 200 + (i % 8) * 25,
                flaky: i % 5 == 2,
            };
            pool.submit(job).map(|t| (i, t))
        })
        .collect::<Result<_, _>>()?;

    // Results are printed as they come, on their own thread; once every job
    // has ended, that thread shuts the pool down, which lets `run` return.
    let p = pool.clone();
    let results = std::thread::spawn(move || {
        for (i, mut t) in tickets {
            while let Some(step) = t.recv_progress::<u64>() {
                if step % 100 == 0 {
                    println!("  job {i:2}: {step} MiB");
                }
            }
            match t.wait() {
                Ok(sum) => println!("job {i:2}: {sum:016x}"),
                Err(JobError::WorkerExited { status, stderr, .. }) => println!(
                    "job {i:2}: lost with its worker ({}): {}",
                    status.unwrap_or_default(),
                    stderr.last().map(String::as_str).unwrap_or("no stderr")
                ),
                Err(e) => println!("job {i:2}: {e}"),
            }
        }
        p.shutdown(Shutdown::graceful(Duration::from_secs(10)))
    });

    let exit = rt.run();
    match exit.signal {
        Some(_) => {
            for r in &exit.reports {
                println!("interrupted; shut down: {r}");
            }
            // The results thread finishes on its own: every ticket has ended.
            let _ = results.join();
            std::process::exit(exit.code());
        }
        None => {
            let report = results.join().map_err(|_| "the results thread panicked")?;
            println!("all done: {report}");
            Ok(())
        }
    }
}
