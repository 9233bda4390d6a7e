//! Pools that breathe: scaling between `min_workers` and the pool's size,
//! and job priorities. Every body in `both!` runs on thread workers and on
//! process workers (the fixture binary's `pool-worker` mode). The scaling
//! tests wait on `PoolEvent`s, never on sleeps.

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;
#[path = "common/pools.rs"]
mod pools;

use std::time::Duration;

use common::{BOUND, GatePath, both};
use crossbeam_channel::Receiver;
use jobs::*;
use pools::{Backend, builder, finish};
use portpool::supervisor::PoolEvent;
use portpool::{Pool, Shutdown};

/// What a scaling test hears: `(worker, started)`, `started` false for an
/// exit, with the exit's status and whether it was expected.
type Heard = (usize, bool, String, bool);

fn events() -> (impl Fn(&PoolEvent) + Send + Sync + 'static, Receiver<Heard>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let f = move |e: &PoolEvent| {
        let heard = match e {
            PoolEvent::WorkerStarted { worker, .. } => (*worker, true, String::new(), true),
            PoolEvent::WorkerExited {
                worker,
                status,
                expected,
                ..
            } => (*worker, false, status.clone(), *expected),
            _ => return,
        };
        let _ = tx.send(heard);
    };
    (f, rx)
}

/// The next event, within the bound.
fn next(rx: &Receiver<Heard>) -> Heard {
    rx.recv_timeout(BOUND).expect("an event within the bound")
}

fn up(pool: &Pool) -> Vec<usize> {
    pool.stats()
        .workers
        .iter()
        .filter(|w| w.up)
        .map(|w| w.id)
        .collect()
}

both!(
    a_pool_grows_while_jobs_wait_and_shrinks_back_when_idle,
    |backend| {
        let (on_event, heard) = events();
        let pool = builder(backend, 3)
            .min_workers(1)
            .idle_timeout(Duration::from_millis(50))
            .inflight_per_worker(1)
            .on_event(on_event)
            .build()
            .unwrap();
        assert_eq!(next(&heard).0, 0, "the first worker starts at build");
        assert_eq!(up(&pool), [0], "one worker up at first");
        let gate = GatePath::new(&format!("scale-grow-{backend:?}"));
        let tickets: Vec<_> = (0..3)
            .map(|_| pool.submit(Gate(gate.0.clone())).unwrap())
            .collect();
        // Two more workers start for the two jobs that wait.
        let mut started: Vec<usize> = (0..2)
            .map(|_| {
                let (w, s, status, _) = next(&heard);
                assert!(s, "a start, not an exit: {status}");
                w
            })
            .collect();
        started.sort();
        assert_eq!(started, [1, 2]);
        assert_eq!(up(&pool), [0, 1, 2]);
        let pids: Vec<u32> = pool.stats().workers.iter().filter_map(|w| w.pid).collect();
        gate.open();
        for t in tickets {
            assert!(t.wait().unwrap());
        }
        // Idle, they leave until one remains; each says why.
        for _ in 0..2 {
            let (_, s, status, expected) = next(&heard);
            assert!(!s && expected, "{status}");
            assert!(status.contains("idle for 50ms"), "{status}");
        }
        assert_eq!(up(&pool).len(), 1, "{:?}", pool.stats());
        // And the pool still serves, growing again when it must.
        assert_eq!(pool.submit(Square(7)).unwrap().wait().unwrap(), 49);
        assert!(pool.failure().is_none(), "leaving is not a crash");
        let stats = pool.stats();
        assert_eq!(stats.done, 4, "{stats:?}");
        assert!(stats.workers.iter().all(|w| w.restarts == 0), "{stats:?}");
        finish(pool, &pids);
    }
);

// The idle-timeout race (loky's): jobs come in bursts whose gaps straddle
// a 1 ms idle timeout, so workers keep leaving as jobs arrive. No job may
// be lost or answered twice, and every answer is its own job's.
both!(
    jobs_arriving_as_workers_time_out_are_neither_lost_nor_run_twice,
    |backend| {
        let pool = builder(backend, 3)
            .min_workers(1)
            .idle_timeout(Duration::from_millis(1))
            .build()
            .unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut sent = 0u64;
        for round in 0..300u64 {
            let burst = 1 + rand(4);
            let tickets: Vec<_> = (0..burst)
                .map(|i| {
                    let n = round * 10 + i;
                    (n, pool.submit(Square(n)).unwrap())
                })
                .collect();
            sent += burst;
            for (n, t) in tickets {
                assert_eq!(t.wait().unwrap(), n * n);
            }
            // A pause around the idle timeout (pacing only; nothing is timed).
            std::thread::sleep(Duration::from_micros(rand(2500)));
        }
        assert!(pool.wait_idle(BOUND));
        let stats = pool.stats();
        assert_eq!((stats.done, stats.failed), (sent, 0), "{stats:?}");
        assert!(pool.failure().is_none());
        finish(pool, &[]);
    }
);

both!(a_suspended_pool_does_not_shrink, |backend| {
    let (on_event, heard) = events();
    let pool = builder(backend, 2)
        .min_workers(1)
        .idle_timeout(Duration::from_millis(5))
        .inflight_per_worker(1)
        .on_event(on_event)
        .build()
        .unwrap();
    next(&heard);
    let gate = GatePath::new(&format!("scale-suspend-{backend:?}"));
    let tickets: Vec<_> = (0..2)
        .map(|_| pool.submit(Gate(gate.0.clone())).unwrap())
        .collect();
    let (w, s, status, _) = next(&heard);
    assert!(s && w == 1, "{status}");
    // Both run before the suspend (a suspended thread worker holds a job
    // it has not started).
    common::wait_until("both jobs run", || pool.stats().running >= 2);
    pool.suspend();
    gate.open();
    for t in tickets {
        assert!(t.wait().unwrap());
    }
    // Many idle timeouts pass: nobody leaves while suspended.
    std::thread::sleep(Duration::from_millis(100));
    assert!(heard.try_recv().is_err(), "no worker left while suspended");
    assert_eq!(up(&pool), [0, 1]);
    pool.resume();
    let (_, s, status, expected) = next(&heard);
    assert!(!s && expected && status.contains("idle"), "{status}");
    finish(pool, &[]);
});

both!(a_broadcast_reaches_the_workers_up, |backend| {
    let (on_event, heard) = events();
    let pool = builder(backend, 3)
        .min_workers(1)
        .idle_timeout(Duration::from_secs(3600))
        .on_event(on_event)
        .build()
        .unwrap();
    next(&heard);
    let out = pool.broadcast(Square(3));
    assert_eq!(out.len(), 1, "only the worker up runs it");
    assert_eq!(out[0].as_ref().unwrap(), &9);
    finish(pool, &[]);
});

#[test]
fn scaling_bounds_are_checked_at_build() {
    let err = Pool::builder()
        .threads(2)
        .min_workers(3)
        .build()
        .expect_err("min > max");
    let msg = err.to_string();
    assert!(
        msg.contains("min_workers(3)") && msg.contains("2 worker(s)"),
        "{msg}"
    );
    let err = Pool::builder()
        .threads(2)
        .min_workers(0)
        .build()
        .expect_err("min 0");
    assert!(err.to_string().contains("at least one worker"), "{err}");
    // min == max: a fixed pool.
    let pool = Pool::builder()
        .threads(2)
        .min_workers(2)
        .handlers(jobs::handlers())
        .build()
        .unwrap();
    assert_eq!(up(&pool), [0, 1]);
    pool.shutdown(Shutdown::default());
}

/// A one-worker pool whose worker is held by a gate job while `submit`
/// queues jobs; then the gate opens. Returns the order the jobs ran in
/// (their numbers).
fn run_order(
    backend: Backend,
    aging: Option<u64>,
    submit: impl FnOnce(&Pool) -> Vec<portpool::Ticket<Turn>>,
) -> Vec<u64> {
    let mut b = builder(backend, 1).inflight_per_worker(1);
    if let Some(n) = aging {
        b = b.priority_aging(n);
    }
    let pool = b.build().unwrap();
    let gate = GatePath::new(&format!("order-{backend:?}-{aging:?}"));
    let held = pool.submit(Gate(gate.0.clone())).unwrap();
    // The gate job is on the worker before the others queue.
    common::wait_until("the gate job runs", || pool.stats().running >= 1);
    let tickets = submit(&pool);
    gate.open();
    assert!(held.wait().unwrap());
    let mut ran: Vec<(u64, u64)> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
    ran.sort_by_key(|&(_, turn)| turn);
    finish(pool, &[]);
    ran.into_iter().map(|(n, _)| n).collect()
}

fn with_priority(pool: &Pool, n: u64, p: u32) -> portpool::Ticket<Turn> {
    pool.submit_with(Turn(n), portpool::pool::JobOptions::new().priority(p))
        .unwrap()
}

both!(
    higher_priorities_run_first_and_equal_ones_in_submission_order,
    |backend| {
        let order = run_order(backend, None, |pool| {
            [(1, 0), (2, 5), (3, 1), (4, 5), (5, 0), (6, 1)]
                .into_iter()
                .map(|(n, p)| with_priority(pool, n, p))
                .collect()
        });
        assert_eq!(order, [2, 4, 3, 6, 1, 5]);
    }
);

// With an aging of 2, a job of priority 1 goes two jobs ahead: a stream
// of them overtakes a job of priority 0 only by the two submitted next.
both!(priorities_age_so_a_low_priority_job_still_runs, |backend| {
    let order = run_order(backend, Some(2), |pool| {
        let mut t = vec![with_priority(pool, 0, 0)];
        t.extend((1..=10).map(|n| with_priority(pool, n, 1)));
        t
    });
    assert_eq!(order, [1, 2, 0, 3, 4, 5, 6, 7, 8, 9, 10]);
});

// Seeded random priorities and agings against the documented model: a
// job of priority `p` is queued as if submitted `p × aging` jobs earlier,
// before the job submitted there; equal priorities keep their order.
both!(run_order_matches_the_aging_model, |backend| {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _ in 0..4 {
        let aging = next(4);
        let prios: Vec<u32> = (0..10).map(|_| next(4) as u32).collect();
        let order = run_order(backend, Some(aging), |pool| {
            prios
                .iter()
                .enumerate()
                .map(|(n, &p)| with_priority(pool, n as u64, p))
                .collect()
        });
        let mut model: Vec<u64> = (0..prios.len() as u64).collect();
        model.sort_by_key(|&n| {
            let p = prios[n as usize];
            (
                i128::from(n) - i128::from(p) * i128::from(aging),
                std::cmp::Reverse(p),
                n,
            )
        });
        assert_eq!(order, model, "aging {aging}, priorities {prios:?}");
    }
});

// Ranked jobs and a full queue: every job still ends once, its own.
both!(ranked_jobs_under_a_small_queue_all_complete, |backend| {
    let pool = builder(backend, 2).queue_limit(3).build().unwrap();
    let tickets: Vec<_> = (0..300u64)
        .map(|n| (n, with_priority(&pool, n, (n % 4) as u32)))
        .collect();
    for (n, t) in tickets {
        assert_eq!(t.wait().unwrap().0, n);
    }
    let refused = (0..50u64).filter(|&n| pool.try_submit(Turn(n)).is_err()).count();
    assert!(pool.wait_idle(BOUND));
    let stats = pool.stats();
    assert_eq!(stats.done, 300 + 50 - refused as u64, "{stats:?}");
    finish(pool, &[]);
});

// A ranked job is cancelled by its ticket like any other, whatever the
// queue limit (0: a submitter hands each job to a worker).
both!(a_ranked_job_cancelled_by_its_ticket_is_cancelled, |backend| {
    for queue in [0, 4] {
        let pool = builder(backend, 1).queue_limit(queue).build().unwrap();
        for round in 0..20u64 {
            let opts = portpool::pool::JobOptions::new().priority(7);
            let t = pool
                .submit_with(
                    Chaos {
                        n: round,
                        fault: Fault::Hang,
                    },
                    opts,
                )
                .unwrap();
            t.cancel();
            let got = t.wait();
            assert!(
                matches!(got, Err(portpool::JobError::Cancelled)),
                "queue {queue}, round {round}: {got:?}"
            );
        }
        assert!(pool.wait_idle(BOUND));
        finish(pool, &[]);
    }
});

// Per-route metrics: counts by outcome and quantiles from stats(), on
// every path that settles a job.
both!(stats_report_per_route_metrics, |backend| {
    let pool = builder(backend, 2).retries(1).metrics(true).build().unwrap();
    for n in 0..20 {
        assert_eq!(pool.submit(Square(n)).unwrap().wait().unwrap(), n * n);
    }
    let sum: u64 = pool.map((0..100).map(Square)).map(|r| r.unwrap()).sum();
    assert_eq!(sum, (0..100u64).map(|n| n * n).sum::<u64>());
    for _ in 0..3 {
        assert!(pool.submit(Boom("on purpose".into())).unwrap().wait().is_err());
    }
    let slow = portpool::pool::JobOptions::new().timeout(Duration::from_millis(5));
    let hang = || Chaos {
        n: 1,
        fault: Fault::Hang,
    };
    assert!(pool.submit_with(hang(), slow).unwrap().wait().is_err());
    let t = pool.submit(hang()).unwrap();
    t.cancel();
    assert!(t.wait().is_err());
    if matches!(backend, Backend::Processes) {
        // Killed twice: retried once, then failed.
        let kill = Chaos {
            n: 2,
            fault: Fault::KillWorker,
        };
        assert!(pool.submit(kill).unwrap().wait().is_err());
    }
    assert!(pool.wait_idle(BOUND));
    let stats = pool.stats();
    let square = &stats.routes["square"];
    assert_eq!((square.done, square.failed), (120, 0), "{square:?}");
    assert_eq!(square.run.count, 120, "{square:?}");
    assert_eq!(square.queue_wait.count, 120, "{square:?}");
    assert!(
        square.run.p50 <= square.run.p90 && square.run.p99 <= square.run.max,
        "{square:?}"
    );
    let boom = &stats.routes["boom"];
    assert_eq!((boom.done, boom.failed), (0, 3), "{boom:?}");
    let chaos = &stats.routes["chaos"];
    assert_eq!((chaos.timed_out, chaos.cancelled), (1, 1), "{chaos:?}");
    match backend {
        Backend::Processes => {
            assert_eq!((chaos.retried, chaos.failed), (1, 3), "{chaos:?}");
            let crashes = stats.exits.iter().filter(|e| !e.expected).count();
            assert_eq!(crashes, 2, "{:?}", stats.exits);
        }
        Backend::Threads => assert_eq!((chaos.retried, chaos.failed), (0, 2), "{chaos:?}"),
    }
    let busy: Duration = stats.workers.iter().map(|w| w.busy).sum();
    assert!(busy > Duration::ZERO, "{stats:?}");
    assert!(
        (0..2).all(|w| (0.0..=1.0).contains(&stats.utilization(w))),
        "{stats:?}"
    );
    finish(pool, &[]);
});

#[test]
fn a_pool_keeps_no_route_metrics_unless_asked() {
    let pool = builder(Backend::Threads, 1).build().unwrap();
    assert_eq!(pool.submit(Square(3)).unwrap().wait().unwrap(), 9);
    let stats = pool.stats();
    assert!(stats.routes.is_empty(), "{stats:?}");
    assert_eq!(stats.done, 1);
    finish(pool, &[]);
}

// Both backends tell a shutdown's exits alike: one expected
// `WorkerExited` per worker up, after the start events.
both!(every_worker_says_it_exited_at_shutdown, |backend| {
    let (on_event, heard) = events();
    let pool = builder(backend, 2).on_event(on_event).build().unwrap();
    assert_eq!(pool.submit(Square(4)).unwrap().wait().unwrap(), 16);
    pool.shutdown(Shutdown::default());
    let all: Vec<Heard> = heard.try_iter().collect();
    let starts: Vec<usize> = all.iter().filter(|h| h.1).map(|h| h.0).collect();
    let mut exits: Vec<usize> = all.iter().filter(|h| !h.1).map(|h| h.0).collect();
    exits.sort();
    assert_eq!(starts.len(), 2, "{all:?}");
    assert_eq!(exits, [0, 1], "{all:?}");
    assert!(
        all.iter().filter(|h| !h.1).all(|h| h.3),
        "expected exits: {all:?}"
    );
});

// A recycled thread worker's exit is told before its replacement starts,
// as a process worker's is.
both!(a_recycle_says_exited_then_started, |backend| {
    let (on_event, heard) = events();
    let pool = builder(backend, 1)
        .recycle_after_jobs(1)
        .inflight_per_worker(1)
        .on_event(on_event)
        .build()
        .unwrap();
    assert!(next(&heard).1, "the first start");
    assert_eq!(pool.submit(Square(3)).unwrap().wait().unwrap(), 9);
    let (_, started, status, _) = next(&heard);
    assert!(!started && status.contains("recycled"), "{status}");
    let (w, started, status, _) = next(&heard);
    assert!(started && w == 0, "{status}");
    finish(pool, &[]);
});
