//! A Rust pool over two Python workers (the JSON job protocol and
//! python/portpool_worker.py) beside Python's own
//! `multiprocessing.Pool(2)` doing the same work, in the same run.

use std::process::Command;
use std::time::Instant;

use portpool::Pool;
use portpool::link::Codec;

use super::{Tiny, median, report};

/// `multiprocessing.Pool(2)`: `apply` round trips (prints µs each), or a
/// `map` with chunksize 12,500 (prints jobs/s), of the same tiny job.
const MULTIPROCESSING: &str = r#"
import multiprocessing, sys, time
def tiny(x):
    return x * 2 + 1
if __name__ == "__main__":
    what, n = sys.argv[1], int(sys.argv[2])
    with multiprocessing.Pool(2) as pool:
        pool.map(tiny, range(1000), chunksize=100)  # start the workers
        for i in range(100):
            pool.apply(tiny, (i,))
        t = time.perf_counter()
        if what == "roundtrip":
            for i in range(n):
                pool.apply(tiny, (i,))
        else:
            out = pool.map(tiny, range(n), chunksize=12500)
            assert len(out) == n
        d = time.perf_counter() - t
    print(d / n * 1e6 if what == "roundtrip" else n / d)
"#;

/// What `multiprocessing.Pool(2)` measured (`what`: "roundtrip" or
/// "map"), run through `python3`; `None` without Python.
pub(crate) fn multiprocessing(what: &str, n: u64) -> Option<f64> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(MULTIPROCESSING)
        .arg(what)
        .arg(n.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn python_pool() -> Option<Pool> {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/support/tiny_worker.py"
    ));
    Pool::builder()
        .processes(2)
        .worker_command(cmd)
        .job_codec(Codec::Json)
        .build()
        .ok()
}

/// µs per job: submit, wait, one at a time, over 2 Python workers.
pub(crate) fn roundtrip(reps: usize, n: u64) {
    let Some(pool) = python_pool() else {
        println!("pool_python_roundtrip skipped: python3 is not available");
        return;
    };
    for i in 0..200 {
        pool.submit(Tiny(i)).expect("submit").wait().expect("job");
    }
    let run = || {
        let t = Instant::now();
        for i in 0..n {
            std::hint::black_box(pool.submit(Tiny(i)).expect("submit").wait().expect("job"));
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let Some(b) = multiprocessing("roundtrip", n) else {
            println!("pool_python_roundtrip skipped: python3 with multiprocessing is not available");
            return;
        };
        base.push(b);
        ours.push(run());
    }
    report("pool_python_roundtrip", median(ours), median(base), "us");
}

/// jobs/s through `map` over 2 Python workers (chunks adapt as for Rust
/// workers), beside `multiprocessing.Pool(2).map` with chunksize 12,500.
pub(crate) fn map_tiny(reps: usize, n: u64) {
    let Some(pool) = python_pool() else {
        println!("pool_python_map_tiny skipped: python3 is not available");
        return;
    };
    for r in pool.map((0..20_000).map(Tiny)) {
        r.expect("job");
    }
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let Some(b) = multiprocessing("map", n) else {
            println!("pool_python_map_tiny skipped: python3 with multiprocessing is not available");
            return;
        };
        base.push(b);
        ours.push(super::map_rate(&pool, n));
    }
    report("pool_python_map_tiny", median(ours), median(base), "jobs/s");
}
