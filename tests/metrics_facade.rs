//! With the `metrics` feature, a pool's per-route numbers reach the
//! `metrics` crate's facade: a recorder installed before the build sees
//! the counters and histograms, labelled by route.

#[path = "../fixtures/jobs.rs"]
mod jobs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jobs::*;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use portpool::Pool;

#[derive(Default)]
struct Count(AtomicU64);
impl CounterFn for Count {
    fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn absolute(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}
impl HistogramFn for Count {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every metric registered, by "name{route}".
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<HashMap<String, Arc<Count>>>>);

impl Seen {
    fn get(&self, key: &Key) -> Arc<Count> {
        let route = key
            .labels()
            .find(|l| l.key() == "route")
            .map(|l| l.value().to_string())
            .unwrap_or_default();
        let name = format!("{}{{{route}}}", key.name());
        self.0.lock().unwrap().entry(name).or_default().clone()
    }
    fn value(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }
}

impl Recorder for Seen {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.get(key))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.get(key))
    }
}

#[test]
fn a_recorder_sees_the_pools_numbers() {
    let seen = Seen::default();
    metrics::set_global_recorder(seen.clone()).expect("the only recorder");
    let pool = Pool::builder()
        .threads(2)
        .handlers(jobs::handlers())
        .metrics(true)
        .build()
        .unwrap();
    for n in 0..10 {
        pool.submit(Square(n)).unwrap().wait().unwrap();
    }
    assert!(pool.submit(Boom("on purpose".into())).unwrap().wait().is_err());
    assert!(pool.wait_idle(std::time::Duration::from_secs(30)));
    assert_eq!(seen.value("portpool_jobs_done_total{square}"), 10);
    assert_eq!(seen.value("portpool_job_run_seconds{square}"), 10);
    assert_eq!(seen.value("portpool_job_queue_wait_seconds{square}"), 10);
    assert_eq!(seen.value("portpool_jobs_failed_total{boom}"), 1);
    // The same numbers as stats().
    assert_eq!(pool.stats().routes["square"].done, 10);
}
