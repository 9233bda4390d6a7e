//! Async use without an async runtime in the library: tickets awaited,
//! maps consumed as streams (feature `futures`), link requests and
//! messages awaited, under tokio (current-thread and multi-thread) and
//! `futures::executor`. The wakers are woken by the pool's and the link's
//! own threads. Dropping an awaited ticket cancels its job.

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;
#[path = "common/pools.rs"]
mod pools;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use common::{BOUND, Fixture, both, fixture};
use jobs::*;
use pools::{Backend, builder, finish};
use portpool::JobError;
use portpool::link::{Link, LinkError};
use portpool::port;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// One task awaits jobs one after another: the ticket's waker is woken by
// the thread that settles each job (a thread worker, or the process
// worker's reader).
both!(a_ticket_is_awaited_on_a_current_thread_runtime, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    current_thread().block_on(async {
        for n in 0..50u64 {
            assert_eq!(pool.submit(Square(n)).unwrap().await.unwrap(), n * n);
        }
        // The handler's error and a panic arrive as they do for `wait`.
        let failed = pool
            .submit(Chaos {
                n: 5,
                fault: Fault::HandlerError,
            })
            .unwrap()
            .await;
        assert!(
            matches!(failed, Err(JobError::Handler(ref e)) if e == "chaos 5 failed"),
            "{failed:?}"
        );
        let panicked = pool.submit(Boom("awaited".into())).unwrap().await;
        assert!(matches!(panicked, Err(JobError::Panicked { .. })), "{panicked:?}");
    });
    finish(pool, &[]);
});

// Many tasks on a multi-thread runtime await at once; every one gets its
// own result.
both!(
    many_tasks_await_their_own_jobs_on_a_multi_thread_runtime,
    |backend| {
        let pool = Arc::new(builder(backend, 2).build().unwrap());
        let rt = multi_thread();
        let sum = rt.block_on(async {
            let tasks: Vec<_> = (0..200u64)
                .map(|n| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let got = pool.submit(Square(n)).unwrap().await.unwrap();
                        assert_eq!(got, n * n);
                        got
                    })
                })
                .collect();
            let mut sum = 0;
            for t in tasks {
                sum += t.await.unwrap();
            }
            sum
        });
        assert_eq!(sum, (0..200u64).map(|n| n * n).sum::<u64>());
        drop(rt);
        finish(Arc::into_inner(pool).expect("the tasks are done"), &[]);
    }
);

// A second executor: `futures`' own block_on and its joins.
both!(tickets_are_awaited_under_futures_executor, |backend| {
    let pool = builder(backend, 2).build().unwrap();
    let results = futures::executor::block_on(async {
        let tickets: Vec<_> = (0..20u64)
            .map(|n| pool.submit(Square(n)).unwrap().into_future())
            .collect();
        futures::future::join_all(tickets).await
    });
    let got: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(got, (0..20u64).map(|n| n * n).collect::<Vec<_>>());
    finish(pool, &[]);
});

// Dropping an awaited ticket (here: a timeout that gives up on it) cancels
// its job; on processes the hanging handler sees the cancel, or its
// worker is replaced, and the pool goes idle.
both!(dropping_an_awaited_ticket_cancels_its_job, |backend| {
    let pool = builder(backend, 1).build().unwrap();
    let started = pool
        .stats()
        .workers
        .iter()
        .filter_map(|w| w.pid)
        .collect::<Vec<_>>();
    current_thread().block_on(async {
        let hang = pool
            .submit(Chaos {
                n: 1,
                fault: Fault::Hang,
            })
            .unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), hang).await;
        assert!(gave_up.is_err(), "a hanging job cannot finish");
    });
    assert!(pool.wait_idle(BOUND), "the dropped job was not cancelled");
    let stats = pool.stats();
    assert_eq!((stats.cancelled, stats.done), (1, 0), "{stats:?}");
    // The pool still serves.
    assert_eq!(pool.submit(Square(9)).unwrap().wait().unwrap(), 81);
    finish(pool, &started);
});

// A ticket cancelled before it is awaited, and one already finished.
both!(an_awaited_ticket_sees_a_cancel_and_a_finished_job, |backend| {
    let pool = builder(backend, 1).build().unwrap();
    let token = portpool::pool::CancelToken::new();
    let opts = portpool::pool::JobOptions::new().cancel_token(&token);
    let hang = pool
        .submit_with(
            Chaos {
                n: 2,
                fault: Fault::Hang,
            },
            opts,
        )
        .unwrap();
    let done = pool.submit(Square(4)).unwrap();
    token.cancel();
    futures::executor::block_on(async {
        assert!(matches!(hang.await, Err(JobError::Cancelled)));
        assert_eq!(done.await.unwrap(), 16);
    });
    finish(pool, &[]);
});

#[cfg(feature = "futures")]
mod stream {
    use super::*;
    use futures::StreamExt;

    // A map is a stream of the same results in the same order.
    both!(a_map_is_a_stream_in_input_order, |backend| {
        let pool = builder(backend, 2).build().unwrap();
        let got: Vec<u64> = current_thread().block_on(async {
            pool.map((0..500u64).map(Square))
                .into_stream()
                .map(Result::unwrap)
                .collect()
                .await
        });
        assert_eq!(got, (0..500u64).map(|n| n * n).collect::<Vec<_>>());
        let unordered = futures::executor::block_on(async {
            let mut all: Vec<u64> = pool
                .map_unordered((0..100u64).map(Square))
                .into_stream()
                .map(Result::unwrap)
                .collect()
                .await;
            all.sort_unstable();
            all
        });
        assert_eq!(unordered, (0..100u64).map(|n| n * n).collect::<Vec<_>>());
        finish(pool, &[]);
    });

    // Failures keep their places in the stream; a stream dropped early
    // cancels what it has not yielded.
    both!(
        a_stream_yields_failures_in_place_and_cancels_when_dropped,
        |backend| {
            let pool = builder(backend, 2).build().unwrap();
            let chaos = |n| Chaos {
                n,
                fault: if n % 3 == 0 {
                    Fault::HandlerError
                } else {
                    Fault::None
                },
            };
            let got: Vec<bool> = futures::executor::block_on(async {
                pool.map((0..30u64).map(chaos))
                    .into_stream()
                    .map(|r| r.is_ok())
                    .collect()
                    .await
            });
            assert_eq!(got, (0..30u64).map(|n| n % 3 != 0).collect::<Vec<_>>());
            multi_thread().block_on(async {
                let hangs = (0..4u64).map(|n| Chaos {
                    n,
                    fault: Fault::Hang,
                });
                let mut s = pool.map(hangs).into_stream();
                let first = tokio::time::timeout(Duration::from_millis(20), s.next()).await;
                assert!(first.is_err(), "hanging jobs cannot finish");
            });
            assert!(
                pool.wait_idle(BOUND),
                "the dropped stream's jobs were not cancelled"
            );
            assert_eq!(pool.submit(Square(5)).unwrap().wait().unwrap(), 25);
            finish(pool, &[]);
        }
    );
}

/// Spawns the fixture's `link <scenario> [n]` mode and links to it.
fn linked(scenario: &str, n: u32) -> (Fixture, Link) {
    let mut cmd = fixture("link");
    cmd.arg(scenario).arg(n.to_string());
    let (f, ipc) = Fixture::connected_with(cmd);
    (f, Link::new(ipc))
}

// Requests awaited at once, answered by a child in reverse order, each
// with its own reply (or failure).
#[test]
fn link_requests_are_awaited_together() {
    let (child, link) = linked("reverse", 4);
    let replies = current_thread().block_on(async {
        let futures = [11u32, 12, 13, 14].map(|v| link.request_async::<u32, u32>(&v));
        futures::future::join_all(futures).await
    });
    assert_eq!(
        replies,
        [
            Ok(110),
            Ok(120),
            Err(LinkError::Failed("13 is unlucky".into())),
            Ok(140)
        ]
    );
    drop(link);
    assert!(child.assert_gone().success());
}

// An awaited request fails when the peer exits without answering.
#[test]
fn an_awaited_request_fails_when_the_peer_exits() {
    let (child, link) = linked("drop-request", 0);
    let r = multi_thread().block_on(link.request_async::<u32, u32>(&1));
    assert!(
        matches!(r, Err(LinkError::Disconnected | LinkError::Broken(_))),
        "{r:?}"
    );
    drop(link);
    assert!(child.assert_gone().success());
}

// Messages awaited with and without a filter; an awaiting task counts as
// listening, so a strict send from the peer is delivered to it.
#[test]
fn link_messages_are_awaited_and_an_awaiting_task_listens() {
    let (child, link) = linked("kinds", 0);
    futures::executor::block_on(async {
        let b = link
            .recv_message_where_async(|m: &Tagged| matches!(m, Tagged::B(_)))
            .await;
        assert_eq!(b.unwrap(), Tagged::B(2));
        assert_eq!(link.recv_message_async::<Tagged>().await.unwrap(), Tagged::A(1));
        // (All four read: the child's sends must not fail.)
        assert_eq!(link.recv_message_async::<Tagged>().await.unwrap(), Tagged::A(3));
        assert_eq!(link.recv_message_async::<Tagged>().await.unwrap(), Tagged::B(4));
    });
    drop(link);
    assert!(child.assert_gone().success());

    let (a, b) = port::open().unwrap();
    let peer = std::thread::spawn(move || {
        let link = Link::new(b.connect().unwrap());
        // Until the other side's future has been polled, nobody listens.
        loop {
            match link.send_message_strict("to a future") {
                Ok(()) => break,
                Err(LinkError::NotListening) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        link.wait_closed();
    });
    let link = Link::new(a.connect().unwrap());
    let got = current_thread().block_on(link.recv_message_async::<String>());
    assert_eq!(got.unwrap(), "to a future");
    drop(link);
    peer.join().unwrap();
}
