//! `cargo run --release --example fanout [LIMIT]`
//!
//! Counts the primes below LIMIT (default 20,000,000) by fanning ranges of
//! numbers out to workers: first serially on this thread, then on a pool
//! of threads, then on a pool of processes (this executable re-run as the
//! workers), and prints how long each took and the speedup over serial.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use portpool::{Handlers, Job, Pool};
use serde::{Deserialize, Serialize};

/// Count the primes in `from..to`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct CountPrimes {
    from: u64,
    to: u64,
}

impl Job for CountPrimes {
    type Output = u64;
    type Error = String;
    const NAME: &'static str = "count-primes";
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

fn count(job: CountPrimes) -> u64 {
    (job.from..job.to).filter(|&n| is_prime(n)).count() as u64
}

fn handlers() -> Handlers {
    Handlers::new().on::<CountPrimes>(|job, _cx| Ok(count(job)))
}

const CHUNK: u64 = 100_000;

fn ranges(limit: u64) -> impl Iterator<Item = CountPrimes> {
    (0..limit.div_ceil(CHUNK)).map(move |i| CountPrimes {
        from: i * CHUNK,
        to: ((i + 1) * CHUNK).min(limit),
    })
}

/// A progress bar over the ranges below `limit`.
fn progress(limit: u64, label: &str) -> Result<ProgressBar, Box<dyn std::error::Error>> {
    let bar = ProgressBar::new(limit.div_ceil(CHUNK));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} ranges")?.progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    Ok(bar)
}

/// Runs every range on `pool`, with a progress bar, and sums the counts.
fn run(pool: &Pool, limit: u64, label: &str) -> Result<(u64, Duration), Box<dyn std::error::Error>> {
    let bar = progress(limit, label)?;
    let t = Instant::now();
    let mut total = 0;
    for r in pool.map_unordered(ranges(limit)) {
        total += r?;
        bar.inc(1);
    }
    let took = t.elapsed();
    bar.finish_and_clear();
    Ok((total, took))
}

/// Runs the count on `pool`, checks it against the serial count and prints
/// the time and the speedup.
fn compare(
    pool: &Pool,
    limit: u64,
    label: &str,
    serial: u64,
    serial_time: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let (n, took) = run(pool, limit, label)?;
    if n != serial {
        return Err(format!("{label} counted {n} primes, serially {serial}").into());
    }
    println!(
        "{label:>10}: {n} primes in {took:.2?}, speedup {:.2}x",
        serial_time.as_secs_f64() / took.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // When this executable is started as a process worker, serve and exit.
    portpool::worker::serve_if_worker(&handlers());

    let limit: u64 = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|e| format!("LIMIT must be a number: {e}"))?,
        None => 20_000_000,
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("counting primes below {limit} in ranges of {CHUNK}, {workers} workers");

    let bar = progress(limit, "serial")?;
    let t = Instant::now();
    let serial: u64 = ranges(limit).map(count).inspect(|_| bar.inc(1)).sum();
    let serial_time = t.elapsed();
    bar.finish_and_clear();
    println!("{:>10}: {serial} primes in {serial_time:.2?}", "serial");

    let threads = Pool::builder().threads(workers).handlers(handlers()).build()?;
    compare(&threads, limit, "threads", serial, serial_time)?;
    drop(threads);

    let processes = Pool::builder().processes(workers).build()?;
    compare(&processes, limit, "processes", serial, serial_time)?;
    let stats = processes.stats();
    for w in &stats.workers {
        let pid = w.pid.map_or("-".to_string(), |p| p.to_string());
        println!("  worker {} (pid {pid}): {} ranges", w.id, w.done);
    }
    Ok(())
}
