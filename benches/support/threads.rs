//! Thread-pool metrics, each beside its fair peer measured in the same
//! run, and the scaling metric.

use std::time::{Duration, Instant};

use portpool::Pool;

use super::{Tiny, alternate, handlers, median, report};

/// Tickets a submitting bench keeps ahead of its waits.
const WINDOW: u64 = 512;

/// A minimal crossbeam-channel pool of 2 threads (a job channel, a result
/// channel): the raw limit of a thread pool's dispatch.
pub(crate) struct RawPool {
    job_tx: Option<crossbeam_channel::Sender<u64>>,
    res_rx: crossbeam_channel::Receiver<u64>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl RawPool {
    pub(crate) fn new() -> RawPool {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<u64>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<u64>();
        let workers = (0..2)
            .map(|_| {
                let (job_rx, res_tx) = (job_rx.clone(), res_tx.clone());
                std::thread::spawn(move || {
                    for x in job_rx {
                        let _ = res_tx.send(x.wrapping_mul(2).wrapping_add(1));
                    }
                })
            })
            .collect();
        RawPool {
            job_tx: Some(job_tx),
            res_rx,
            workers,
        }
    }

    fn send(&self, x: u64) {
        if let Some(tx) = &self.job_tx {
            tx.send(x).expect("send");
        }
    }

    /// Another handle on the job channel (for a feeder thread).
    pub(crate) fn sender(&self) -> crossbeam_channel::Sender<u64> {
        match &self.job_tx {
            Some(tx) => tx.clone(),
            None => unreachable!("the job channel closes only in drop"),
        }
    }

    pub(crate) fn recv(&self) -> u64 {
        self.res_rx.recv().expect("recv")
    }
}

impl Drop for RawPool {
    fn drop(&mut self) {
        self.job_tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn thread_pool() -> Pool {
    Pool::builder()
        .threads(2)
        .handlers(handlers())
        .build()
        .expect("pool")
}

/// jobs/s of our `map` over 2 threads (results collected in order), beside
/// rayon's `par_iter().map(..).collect::<Vec<_>>()` of the same work.
pub(crate) fn map_tiny(reps: usize, n: u64) {
    use rayon::prelude::*;
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon");
    let input: Vec<u64> = (0..n).collect();
    let run_rayon = || {
        let t = Instant::now();
        let out: Vec<u64> = rayon.install(|| {
            input
                .par_iter()
                .map(|x| x.wrapping_mul(2).wrapping_add(1))
                .collect()
        });
        let d = t.elapsed();
        std::hint::black_box(out);
        n as f64 / d.as_secs_f64()
    };
    let pool = thread_pool();
    let run_pool = || {
        let t = Instant::now();
        let out: Vec<u64> = pool.map((0..n).map(Tiny)).map(|r| r.expect("job")).collect();
        let d = t.elapsed();
        std::hint::black_box(out);
        n as f64 / d.as_secs_f64()
    };
    alternate("pool_thread_map_tiny", "jobs/s", reps, run_rayon, run_pool);
}

/// jobs/s with one `submit` per job, `window` tickets ahead, on 2 threads,
/// beside the hand-made crossbeam pool doing the same.
pub(crate) fn submit_tiny(reps: usize, n: u64) {
    let run_raw = || {
        let raw = RawPool::new();
        let t = Instant::now();
        let mut sum = 0u64;
        let mut sent = 0;
        while sent < n {
            let k = WINDOW.min(n - sent);
            for i in 0..k {
                raw.send(sent + i);
            }
            for _ in 0..k {
                sum = sum.wrapping_add(raw.recv());
            }
            sent += k;
        }
        let d = t.elapsed();
        std::hint::black_box(sum);
        n as f64 / d.as_secs_f64()
    };
    let pool = thread_pool();
    let run_pool = || submit_window(&pool, n);
    alternate("pool_thread_submit_tiny", "jobs/s", reps, run_raw, run_pool);
}

/// jobs/s for `n` tiny jobs, one `submit` each, `WINDOW` tickets ahead.
fn submit_window(pool: &Pool, n: u64) -> f64 {
    let t = Instant::now();
    let mut sum = 0u64;
    let mut sent = 0;
    let mut tickets = Vec::with_capacity(WINDOW as usize);
    while sent < n {
        let k = WINDOW.min(n - sent);
        tickets.extend((0..k).map(|i| pool.submit(Tiny(sent + i)).expect("submit")));
        for tk in tickets.drain(..) {
            sum = sum.wrapping_add(tk.wait().expect("job"));
        }
        sent += k;
    }
    std::hint::black_box(sum);
    n as f64 / t.elapsed().as_secs_f64()
}

/// µs for one `submit` then `wait`, one job at a time, on 2 threads,
/// beside the hand-made crossbeam pool (rayon's `install` is printed too).
pub(crate) fn roundtrip(reps: usize, iters: u64) {
    let run_raw = || {
        let raw = RawPool::new();
        let t = Instant::now();
        for i in 0..iters {
            raw.send(i);
            std::hint::black_box(raw.recv());
        }
        t.elapsed().as_secs_f64() * 1e6 / iters as f64
    };
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon");
    let run_rayon = || {
        let t = Instant::now();
        for i in 0..iters {
            std::hint::black_box(rayon.install(|| i.wrapping_mul(2).wrapping_add(1)));
        }
        t.elapsed().as_secs_f64() * 1e6 / iters as f64
    };
    let pool = thread_pool();
    let run_pool = || {
        let t = Instant::now();
        for i in 0..iters {
            std::hint::black_box(pool.submit(Tiny(i)).expect("submit").wait().expect("job"));
        }
        t.elapsed().as_secs_f64() * 1e6 / iters as f64
    };
    let (mut base, mut ours, mut ray) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(run_raw());
        ray.push(run_rayon());
        ours.push(run_pool());
    }
    println!("pool_thread_roundtrip rayon_install={:.2} unit=us", median(ray));
    report("pool_thread_roundtrip", median(ours), median(base), "us");
}

/// ms from a burst of jobs on an idle scaling pool of processes
/// (`min_workers(1)`, 2 at most) until two jobs that need both workers
/// at once have finished, beside a fixed pool of 2 doing the same.
pub(crate) fn scale_up(reps: usize) {
    // Two jobs that each wait for the other to start: they finish only
    // when two workers run them at the same time.
    let burst = |pool: &Pool| {
        let dir = std::env::temp_dir().join(format!("portpool-bench-scale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let t = Instant::now();
        let tickets: Vec<_> = (0..2)
            .map(|i| {
                pool.submit(super::Rendezvous {
                    dir: dir.display().to_string(),
                    me: i,
                })
                .expect("submit")
            })
            .collect();
        for tk in tickets {
            tk.wait().expect("job");
        }
        let d = t.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        d.as_secs_f64() * 1e3
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let fixed = Pool::builder()
            .processes(2)
            .inflight_per_worker(1)
            .build()
            .expect("pool");
        base.push(burst(&fixed));
        drop(fixed);
        let scaling = Pool::builder()
            .processes(2)
            .inflight_per_worker(1)
            .min_workers(1)
            .idle_timeout(Duration::from_secs(60))
            .build()
            .expect("pool");
        ours.push(burst(&scaling));
    }
    report("pool_scale_up", median(ours), median(base), "ms");
}

/// Throughput with per-route metrics on, as a share of the same pool's
/// with them off (alternating runs): one `submit` per job, 512 tickets
/// ahead, on 2 thread workers, and on 2 process workers.
pub(crate) fn metrics_cost(reps: usize, n: u64) {
    for processes in [false, true] {
        let build = |on: bool| {
            let b = Pool::builder().metrics(on);
            if processes {
                b.processes(2)
            } else {
                b.threads(2).handlers(handlers())
            }
            .build()
            .expect("pool")
        };
        let (with, without) = (build(true), build(false));
        let run = |pool: &Pool| submit_window(pool, n);
        let metric = if processes {
            "pool_process_metrics_on"
        } else {
            "pool_thread_metrics_on"
        };
        alternate(metric, "jobs/s", reps, || run(&without), || run(&with));
    }
}
