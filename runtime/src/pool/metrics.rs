//! Per-route metrics (scenario "metrics"): queue-wait and run-time
//! distributions and outcome counts, kept in atomics so the job path
//! takes no lock, read by [`Pool::stats`](super::Pool::stats).
//!
//! A route's metrics live at a fixed index, chosen at build from the
//! routes the pool serves; each job carries its route's index in its
//! [`JobState`](crate::task::JobState), so whoever settles it (a worker's
//! answer, a timer, a cancel, a crash) counts it without a lookup. Each
//! worker records into a shard of its own (one more shard takes what is
//! settled off the workers), so workers never write the same cache line;
//! `stats()` adds the shards up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: values are kept within 1/8 (12.5 %).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Values below this many nanoseconds get a bucket each.
const LINEAR: usize = 2 * SUB;
/// Values from 2^TOP ns (about 18 minutes) share the last bucket.
const TOP: u32 = 40;
const BUCKETS: usize = LINEAR + (TOP as usize - (SUB_BITS as usize + 1)) * SUB;

/// A histogram of durations (in nanoseconds), log-linear, lock-free.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    if e >= TOP {
        return BUCKETS - 1;
    }
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR + (e - SUB_BITS - 1) as usize * SUB + sub
}

/// The largest value bucket `i` holds.
fn upper(i: usize) -> u64 {
    if i < LINEAR {
        return i as u64;
    }
    if i >= BUCKETS - 1 {
        return u64::MAX;
    }
    let k = i - LINEAR;
    let e = (k / SUB) as u32 + SUB_BITS + 1;
    let sub = (k % SUB) as u64;
    let low = (1u64 << e) | (sub << (e - SUB_BITS));
    low.saturating_add((1u64 << (e - SUB_BITS)) - 1)
}

impl Histogram {
    /// Records `n` values of `d` each.
    pub(crate) fn record(&self, d: Duration, n: u64) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: statistics only.
        self.buckets[bucket(v)].fetch_add(n, Ordering::Relaxed);
        // A load first: the max rarely moves, and a plain load is cheaper
        // than the read-modify-write.
        if v > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// The quantiles of `shards` together.
    pub(crate) fn snapshot<'a>(shards: impl Iterator<Item = &'a Histogram> + Clone) -> Quantiles {
        // Relaxed: a snapshot; concurrent records may or may not show.
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|i| shards.clone().map(|h| h.buckets[i].load(Ordering::Relaxed)).sum())
            .collect();
        let count: u64 = counts.iter().sum();
        let max = Duration::from_nanos(shards.map(|h| h.max.load(Ordering::Relaxed)).max().unwrap_or(0));
        let at = |q: f64| {
            if count == 0 {
                return Duration::ZERO;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(upper(i)).min(max);
                }
            }
            max
        };
        Quantiles {
            count,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max,
        }
    }
}

/// A distribution of durations: how many, and its quantiles (each within
/// 12.5 % of the true value, never above `max`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quantiles {
    /// How many values.
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest.
    pub max: Duration,
}

/// One route's metrics, as [`Pool::stats`](super::Pool::stats) reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Jobs finished with their output (or the handler's own error).
    pub done: u64,
    /// Jobs that failed otherwise (panic, crash, coding, timeout, cancel).
    pub failed: u64,
    /// Of `failed`, the jobs cancelled.
    pub cancelled: u64,
    /// Of `failed`, the jobs that ran or waited past a deadline.
    pub timed_out: u64,
    /// Runs again after a worker crash (`retries`).
    pub retried: u64,
    /// From submission to a worker taking the job (a process worker: to
    /// the job being sent to it; time it then waits there behind jobs sent
    /// before it counts in `run`).
    pub queue_wait: Quantiles,
    /// From a worker taking the job to its answer (for a process worker,
    /// the trip there and back included; a `map` chunk counts each of its
    /// jobs as the chunk's time divided among them). A thread worker that
    /// takes a job at its first look after answering the previous one
    /// counts from that answer, which the take follows by tens of
    /// nanoseconds. Only jobs whose answer settled them are in it: a job
    /// that timed out or was cancelled while it ran is counted in
    /// `timed_out` or `cancelled` but adds no run time.
    pub run: Quantiles,
}

/// The live counters of one route.
#[derive(Default)]
pub(crate) struct RouteMetrics {
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) queue_wait: Histogram,
    pub(crate) run: Histogram,
    #[cfg(feature = "metrics")]
    pub(crate) export: Option<std::sync::Arc<Export>>,
}

/// The `metrics` crate's handles for one route (feature `metrics`).
#[cfg(feature = "metrics")]
pub(crate) struct Export {
    done: metrics::Counter,
    failed: metrics::Counter,
    cancelled: metrics::Counter,
    timed_out: metrics::Counter,
    retried: metrics::Counter,
    queue_wait: metrics::Histogram,
    run: metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Export {
    fn new(route: &str) -> Export {
        let r = route.to_string();
        Export {
            done: metrics::counter!("portpool_jobs_done_total", "route" => r.clone()),
            failed: metrics::counter!("portpool_jobs_failed_total", "route" => r.clone()),
            cancelled: metrics::counter!("portpool_jobs_cancelled_total", "route" => r.clone()),
            timed_out: metrics::counter!("portpool_jobs_timed_out_total", "route" => r.clone()),
            retried: metrics::counter!("portpool_jobs_retried_total", "route" => r.clone()),
            queue_wait: metrics::histogram!("portpool_job_queue_wait_seconds", "route" => r.clone()),
            run: metrics::histogram!("portpool_job_run_seconds", "route" => r),
        }
    }
}

/// How a job ended, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Done,
    Failed,
    Cancelled,
    TimedOut,
}

impl RouteMetrics {
    /// `jobs` jobs waited `d` in the queue.
    pub(crate) fn waited(&self, d: Duration, jobs: u64) {
        self.queue_wait.record(d, 1.max(jobs));
        #[cfg(feature = "metrics")]
        if let Some(x) = &self.export {
            x.queue_wait.record(d.as_secs_f64());
        }
    }

    /// `jobs` jobs ran for `d` together.
    pub(crate) fn ran(&self, d: Duration, jobs: u64) {
        let jobs = jobs.max(1);
        let each = if jobs == 1 {
            d
        } else {
            d / u32::try_from(jobs).unwrap_or(u32::MAX)
        };
        self.run.record(each, jobs);
        #[cfg(feature = "metrics")]
        if let Some(x) = &self.export {
            x.run.record(each.as_secs_f64());
        }
    }

    /// `jobs` jobs ended `how`.
    pub(crate) fn ended(&self, how: Ended, jobs: u64) {
        // Relaxed: statistics only.
        let (main, of) = match how {
            Ended::Done => (&self.done, None),
            Ended::Failed => (&self.failed, None),
            Ended::Cancelled => (&self.failed, Some(&self.cancelled)),
            Ended::TimedOut => (&self.failed, Some(&self.timed_out)),
        };
        main.fetch_add(jobs, Ordering::Relaxed);
        if let Some(c) = of {
            c.fetch_add(jobs, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        if let Some(x) = &self.export {
            match how {
                Ended::Done => x.done.increment(jobs),
                Ended::Failed => x.failed.increment(jobs),
                Ended::Cancelled => {
                    x.failed.increment(jobs);
                    x.cancelled.increment(jobs);
                }
                Ended::TimedOut => {
                    x.failed.increment(jobs);
                    x.timed_out.increment(jobs);
                }
            }
        }
    }

    /// A crash sent `jobs` jobs to run again.
    pub(crate) fn retried(&self, jobs: u64) {
        self.retried.fetch_add(jobs, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(x) = &self.export {
            x.retried.increment(jobs);
        }
    }

    /// The stats of `shards` (one route's) together.
    fn snapshot<'a>(shards: impl Iterator<Item = &'a RouteMetrics> + Clone) -> RouteStats {
        // Relaxed: a snapshot.
        let sum =
            |f: fn(&RouteMetrics) -> &AtomicU64| shards.clone().map(|m| f(m).load(Ordering::Relaxed)).sum();
        RouteStats {
            done: sum(|m| &m.done),
            failed: sum(|m| &m.failed),
            cancelled: sum(|m| &m.cancelled),
            timed_out: sum(|m| &m.timed_out),
            retried: sum(|m| &m.retried),
            queue_wait: Histogram::snapshot(shards.clone().map(|m| &m.queue_wait)),
            run: Histogram::snapshot(shards.map(|m| &m.run)),
        }
    }
}

/// Every route's metrics, fixed at build, one shard per worker and one
/// for what is settled off the workers.
pub(crate) struct Metrics {
    names: Vec<String>,
    /// `[shard][route]`.
    shards: Vec<Vec<RouteMetrics>>,
}

/// A job's route index when the pool keeps no metrics for it.
pub(crate) const NO_ROUTE: u16 = u16::MAX;

impl Metrics {
    /// Metrics for `names` (at most `NO_ROUTE` routes get them) on a
    /// pool of `workers`.
    pub(crate) fn new(mut names: Vec<String>, workers: usize) -> Metrics {
        names.sort();
        names.dedup();
        names.truncate(usize::from(NO_ROUTE));
        #[cfg(feature = "metrics")]
        let exports: Vec<std::sync::Arc<Export>> = names
            .iter()
            .map(|n| std::sync::Arc::new(Export::new(n)))
            .collect();
        let shards = (0..=workers)
            .map(|_| {
                (0..names.len())
                    .map(|_i| RouteMetrics {
                        #[cfg(feature = "metrics")]
                        export: Some(exports[_i].clone()),
                        ..RouteMetrics::default()
                    })
                    .collect()
            })
            .collect();
        Metrics { names, shards }
    }

    /// The index of route `name` (`NO_ROUTE`: not served).
    pub(crate) fn index(&self, name: &str) -> u16 {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .ok()
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(NO_ROUTE)
    }

    /// Route `i`'s metrics in worker `w`'s shard (`None`: off the workers).
    pub(crate) fn route(&self, i: u16, w: Option<usize>) -> Option<&RouteMetrics> {
        let last = self.shards.len().checked_sub(1)?;
        let shard = w.filter(|&w| w < last).unwrap_or(last);
        self.shards.get(shard)?.get(usize::from(i))
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, RouteStats> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    RouteMetrics::snapshot(self.shards.iter().filter_map(move |s| s.get(i))),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_hold_their_values() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, (1 << 39) + 7, (1 << 40) + 7, u64::MAX / 3, u64::MAX]) {
            let b = bucket(v);
            assert!(b < BUCKETS, "{v}");
            assert!(b >= last, "{v}");
            last = b;
            assert!(upper(b) >= v, "{v} above its bucket's top {}", upper(b));
            // Within 12.5 % below the last bucket.
            assert!(b == BUCKETS - 1 || upper(b) - v <= v / 8 + 1, "{v}: {}", upper(b));
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms), 1);
        }
        let q = Histogram::snapshot([&h].into_iter());
        assert_eq!(q.count, 100);
        assert_eq!(q.max, Duration::from_millis(100));
        let near = |got: Duration, want_ms: u64| {
            let want = Duration::from_millis(want_ms);
            got >= want && got <= want + want / 8
        };
        assert!(near(q.p50, 50), "{q:?}");
        assert!(near(q.p90, 90), "{q:?}");
        assert!(near(q.p99, 99), "{q:?}");
        let empty = Histogram::default();
        assert_eq!(Histogram::snapshot([&empty].into_iter()), Quantiles::default());
    }
}
