//! The program `scripts/hops` measures: one lone process job at a time,
//! `submit` then `wait`, N times, on a pool of one worker process.

use portpool::{Handlers, Job, Pool};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Tiny(u64);

impl Job for Tiny {
    type Output = u64;
    type Error = ();
    const NAME: &'static str = "tiny";
}

fn handlers() -> Handlers {
    Handlers::new().on::<Tiny>(|Tiny(x), _| Ok(x.wrapping_mul(2).wrapping_add(1)))
}

fn main() {
    portpool::worker::serve_if_worker(&handlers());
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let pool = Pool::builder()
        .processes(1)
        .handlers(handlers())
        .build()
        .expect("pool");
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(pool.submit(Tiny(i)).expect("submit").wait().expect("job"));
    }
    println!("{n} jobs, sum {sum}");
}
