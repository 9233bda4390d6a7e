//! portpool: worker pools of threads or processes over transferable port pairs.
//!
//! This crate re-exports the layers of `portpool-runtime` and the worker
//! side from `portpool-worker`.
//!
//! # Port pairs
//!
//! [`port::open`] gives two connected [`port::Port`]s. Move one to a
//! thread, or hand it to a child process, and [`connect`](port::Port::connect)
//! both ends: each side then sends and receives typed messages.
//!
//! ```
//! use portpool::port;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum Msg {
//!     Ping(u32),
//!     Pong(u32),
//! }
//!
//! let (a, b) = port::open()?;
//! let echo = std::thread::spawn(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let mut b = b.connect()?;
//!     while let Ok(Msg::Ping(n)) = b.recv::<Msg>() {
//!         b.send(&Msg::Pong(n))?;
//!     }
//!     Ok(())
//! });
//!
//! let mut a = a.connect()?;
//! for n in 0..3 {
//!     a.send(&Msg::Ping(n))?;
//!     assert_eq!(a.recv::<Msg>()?, Msg::Pong(n));
//! }
//! drop(a); // the peer's recv now fails with Disconnected, and it returns
//! echo.join().unwrap().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Disconnection
//!
//! When one end is dropped (or its process dies), the other end receives
//! every message that was sent, and then [`RecvError::Disconnected`](error::RecvError::Disconnected):
//!
//! ```
//! use portpool::{error::RecvError, port};
//!
//! let (a, b) = port::open()?;
//! let t = std::thread::spawn(move || {
//!     let b = b.connect().unwrap();
//!     b.send("last words").unwrap();
//! }); // b is dropped here
//! let mut a = a.connect()?;
//! t.join().unwrap();
//! assert_eq!(a.recv::<String>()?, "last words");
//! assert!(matches!(a.recv::<String>(), Err(RecvError::Disconnected)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Waiting with a bound
//!
//! `try_recv` never blocks and `recv_timeout` waits at most as long as told:
//!
//! ```
//! use std::time::Duration;
//! use portpool::{error::{RecvTimeoutError, TryRecvError}, port};
//!
//! let (a, b) = port::open()?;
//! let t = std::thread::spawn(move || b.connect().map(|b| {
//!     b.send(&7u8).unwrap();
//!     b // keep the connection open
//! }));
//! let mut a = a.connect()?;
//! let _b = t.join().unwrap()?;
//! assert_eq!(a.recv_timeout::<u8>(Duration::from_secs(10))?, 7);
//! assert!(matches!(a.try_recv::<u8>(), Err(TryRecvError::Empty)));
//! assert!(matches!(a.recv_timeout::<u8>(Duration::from_millis(1)), Err(RecvTimeoutError::Timeout)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Sending a port over a connection
//!
//! A port can itself be sent over a socket connection (the fds travel with
//! `SCM_RIGHTS`), so two parties that never shared a parent can be connected:
//!
//! ```
//! use portpool::port;
//!
//! let (ctl_a, ctl_b) = port::open()?;
//! let t = std::thread::spawn(move || -> std::io::Result<()> {
//!     let mut ctl = ctl_b.connect()?;
//!     let fresh = ctl.recv_port()?; // a brand-new port, from the other side
//!     let fresh = fresh.connect()?;
//!     fresh.send("hello over the new port")?;
//!     Ok(())
//! });
//! let ctl = ctl_a.connect()?;
//! let (mine, theirs) = port::open()?;
//! ctl.send_port(theirs)?;
//! let mut mine = mine.connect()?;
//! assert_eq!(mine.recv::<String>()?, "hello over the new port");
//! t.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # A child process
//!
//! [`Port::pass_to`](port::Port::pass_to) (or [`Port::spawn`](port::Port::spawn))
//! hands a port to a child, which takes it with
//! [`Port::from_env`](port::Port::from_env); `examples/ports.rs` runs the
//! whole scenario with the example's own executable as the child.
//!
//! # A pool of thread workers
//!
//! A [`Job`] is a serde type with an output, an error and a route name.
//! [`Handlers`] maps route names to functions; a [`Pool`] runs them.
//!
//! ```
//! use portpool::{Handlers, Job, JobError, Pool};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Divide { a: i64, b: i64 }
//!
//! impl Job for Divide {
//!     type Output = i64;
//!     type Error = String;
//!     const NAME: &'static str = "divide";
//! }
//!
//! let handlers = Handlers::new().on::<Divide>(|d, _cx| {
//!     if d.b == 0 { Err(format!("{} / 0", d.a)) } else { Ok(d.a / d.b) }
//! });
//! let pool = Pool::builder().threads(2).handlers(handlers).build()?;
//!
//! // One job: submit, then wait for its ticket.
//! assert_eq!(pool.submit(Divide { a: 84, b: 2 })?.wait()?, 42);
//! // The handler's own error arrives typed.
//! match pool.submit(Divide { a: 1, b: 0 })?.wait() {
//!     Err(JobError::Handler(e)) => assert_eq!(e, "1 / 0"),
//!     other => panic!("{other:?}"),
//! }
//! // Many jobs: `map` yields results in input order, pulling lazily.
//! let halves: Vec<i64> = pool
//!     .map((1..=5).map(|a| Divide { a: a * 2, b: 2 }))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(halves, vec![1, 2, 3, 4, 5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Progress from a running job
//!
//! ```
//! use portpool::{Handlers, Job, Pool};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Countdown(u32);
//! impl Job for Countdown {
//!     type Output = String;
//!     type Error = ();
//!     const NAME: &'static str = "countdown";
//! }
//!
//! let handlers = Handlers::new().on::<Countdown>(|Countdown(n), cx| {
//!     for i in (1..=n).rev() {
//!         cx.progress(&i); // reaches the ticket before the result
//!     }
//!     Ok("liftoff".to_string())
//! });
//! let pool = Pool::builder().threads(1).handlers(handlers).build()?;
//! let mut ticket = pool.submit(Countdown(3))?;
//! let mut heard = Vec::new();
//! while let Some(i) = ticket.recv_progress::<u32>() {
//!     heard.push(i);
//! }
//! assert_eq!(heard, vec![3, 2, 1]);
//! assert_eq!(ticket.wait()?, "liftoff");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # A pool of process workers
//!
//! `Pool::builder().processes(n)` runs the same handlers in child
//! processes. By default each worker is this executable run again, so
//! `main` must start with [`worker::serve_if_worker`] (it serves and exits
//! in a worker, and returns at once otherwise); `.worker_command(..)` names
//! a separate binary whose `main` is [`worker::run`]. A worker that panics
//! fails only its job; a worker whose supervisor dies exits on its own.
//!
//! ```no_run
//! use portpool::{Handlers, Job, Pool};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Square(u64);
//! # impl Job for Square { type Output = u64; type Error = (); const NAME: &'static str = "square"; }
//!
//! fn handlers() -> Handlers {
//!     Handlers::new().on::<Square>(|Square(n), _| Ok(n * n))
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     portpool::worker::serve_if_worker(&handlers());
//!     let pool = Pool::builder().processes(2).build()?;
//!     let total: u64 = pool.map((0..1000).map(Square)).map(|r| r.unwrap()).sum();
//!     println!("{total}");
//!     Ok(())
//! }
//! ```
//!
//! `examples/fanout.rs` does this with real CPU work and compares threads,
//! processes and a serial run.
//!
//! # Timeouts, cancellation and shutdown
//!
//! A run timeout counts from the moment a worker is given the job; a
//! handler that polls [`Context::is_cancelled`] can stop early. A
//! cancelled or timed-out job answers at once; a handler that does not
//! return within the pool's grace period loses its worker (a process gets
//! SIGTERM, then SIGKILL; a thread is abandoned), and a replacement starts.
//!
//! ```
//! use std::time::Duration;
//! use portpool::job::TimeoutPhase;
//! use portpool::pool::JobOptions;
//! use portpool::{Handlers, Job, JobError, Pool, Runtime, Shutdown};
//! # use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Poll(u32); // polls for up to n ms, stopping early when cancelled
//! impl Job for Poll {
//!     type Output = u32;
//!     type Error = String;
//!     const NAME: &'static str = "poll";
//! }
//!
//! let handlers = Handlers::new().on::<Poll>(|Poll(n), cx| {
//!     for i in 0..n {
//!         if cx.is_cancelled() {
//!             return Err(format!("stopped after {i} ms"));
//!         }
//!         std::thread::sleep(Duration::from_millis(1));
//!     }
//!     Ok(n)
//! });
//! let pool = Pool::builder()
//!     .threads(2)
//!     .handlers(handlers)
//!     .runtime(&Runtime::new())
//!     .build()?;
//!
//! let slow = pool.submit_with(Poll(60_000), JobOptions::new().timeout(Duration::from_millis(20)))?;
//! match slow.wait() {
//!     Err(JobError::TimedOut { phase: TimeoutPhase::Run, .. }) => {}
//!     other => panic!("{other:?}"),
//! }
//!
//! let ticket = pool.submit(Poll(60_000))?;
//! ticket.cancel();
//! assert!(matches!(ticket.wait(), Err(JobError::Cancelled)));
//!
//! assert_eq!(pool.submit(Poll(1))?.wait()?, 1);
//! // Finish what is queued and running, waiting at most 10 s.
//! let report = pool.shutdown(Shutdown::graceful(Duration::from_secs(10)));
//! assert_eq!((report.completed, report.cancelled), (1, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Process workers that crash are replaced within a [`RestartPolicy`];
//! the jobs they held fail with [`JobError::WorkerExited`] (pid, exit code
//! or signal, the last lines of the worker's stderr), or run again with
//! `.retries(n)`. `runtime/src/supervisor/README.md` tells every case.
//!
//! # Pools that breathe: scaling, recycling, cancel tokens, priorities, metrics
//!
//! A pool can size itself between `min_workers` and the number given to
//! `threads(n)` / `processes(n)`, replace workers that have run too long
//! or grown too big, cancel a whole group of jobs at once, run urgent
//! jobs first, say when its queue is full or drained, and keep per-job-type
//! metrics.
//!
//! ```
//! use std::time::Duration;
//! use portpool::pool::{CancelToken, JobOptions};
//! use portpool::supervisor::PoolEvent;
//! use portpool::{Handlers, Job, JobError, Pool};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Double(u64);
//! impl Job for Double {
//!     type Output = u64;
//!     type Error = String;
//!     const NAME: &'static str = "double";
//! }
//!
//! let handlers = Handlers::new().on::<Double>(|Double(n), _cx| Ok(n * 2));
//! let pool = Pool::builder()
//!     .threads(4)
//!     .handlers(handlers)
//!     // Start with one worker, grow to four while jobs wait, and let a
//!     // worker idle for 5 s go until one remains.
//!     .min_workers(1)
//!     .idle_timeout(Duration::from_secs(5))
//!     // Replace a worker, between jobs, after 10 000 jobs.
//!     .recycle_after_jobs(10_000)
//!     // Queue-wait and run-time quantiles and outcome counts per job type.
//!     .metrics(true)
//!     .on_event(|e| {
//!         if let PoolEvent::Saturated { queued } = e {
//!             eprintln!("the queue is full ({queued} jobs)");
//!         }
//!     })
//!     .build()?;
//!
//! // A priority: among queued jobs, higher runs first (it ages, so none
//! // starves).
//! let urgent = pool.submit_with(Double(21), JobOptions::new().priority(5))?;
//! assert_eq!(urgent.wait()?, 42);
//!
//! // A cancel token: cancelling it cancels every job that carries it;
//! // a job given an already-cancelled token is handed back at once.
//! let token = CancelToken::new();
//! let tickets: Vec<_> = (0..3)
//!     .map(|n| pool.submit_with(Double(n), JobOptions::new().cancel_token(&token)))
//!     .collect::<Result<_, _>>()?;
//! token.cancel();
//! for t in tickets {
//!     // Each job either finished before the cancel or is cancelled.
//!     match t.wait() {
//!         Ok(_) | Err(JobError::Cancelled) => {}
//!         Err(e) => panic!("{e}"),
//!     }
//! }
//! assert!(pool.submit_with(Double(1), JobOptions::new().cancel_token(&token)).is_err());
//!
//! // Drain signals: is the queue full? wait until nothing is queued or running.
//! assert!(!pool.is_saturated());
//! assert!(pool.wait_idle(Duration::from_secs(10)));
//!
//! let stats = pool.stats();
//! let double = &stats.routes["double"];
//! assert!(double.done >= 1); // the urgent one, and those the cancel missed
//! println!("run time p50 {:?}, p99 {:?}", double.run.p50, double.run.p99);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Process pools also recycle a worker whose resident memory passes a
//! limit (`recycle_above_memory`) and can give each worker a hard memory
//! limit (`memory_limit`): an allocation past it fails the job with a
//! message that names the limit, and the worker is replaced.
//!
//! # The runtime: ref counts, suspend, signals
//!
//! A [`Runtime`] counts the handles that keep a program alive. A pool holds
//! a ref until it shuts down; [`Runtime::run`] returns when none is left.
//! With [`Runtime::handle_signals`], SIGINT or SIGTERM shuts every pool of
//! the runtime down gracefully and makes `run` return (a second SIGINT
//! stops at once); `examples/supervise.rs` is a complete program.
//!
//! ```
//! use portpool::{Handlers, Pool, Runtime};
//!
//! let rt = Runtime::new();
//! let pool = Pool::builder().threads(1).handlers(Handlers::new()).runtime(&rt).build()?;
//! assert_eq!(rt.refs(), 1);
//! rt.suspend(); // stops dispatching; queued jobs wait
//! pool.set_keep_alive(false); // a suspended pool need not keep `run` waiting
//! assert!(rt.run_timeout(std::time::Duration::from_secs(30)).is_some());
//! rt.resume();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//!
//! # Conversations
//!
//! A [`link::Link`] on any connection gives execa's and ipc-link's API:
//! ordered messages, filtered reads, strict sends, and requests answered by
//! id. [`subprocess::Subprocess`] is one child to talk to (execa's
//! `execaNode`), [`service::Service`] one worker serving many clients.
//!
//! ```
//! use portpool::link::{Link, LinkError};
//! use portpool::port;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum Event { Started, Progress(u32), Done }
//!
//! let (a, b) = port::open()?;
//! let peer = std::thread::spawn(move || -> Result<(), LinkError> {
//!     let link = Link::new(b.connect().expect("connect"));
//!     link.on_request(|n: u32| if n > 0 { Ok(n * 2) } else { Err("zero".to_string()) });
//!     for e in [Event::Started, Event::Progress(50), Event::Done] {
//!         link.send_message(&e)?;
//!     }
//!     link.wait_closed(); // serves requests until we hang up
//!     Ok(())
//! });
//!
//! let link = Link::new(a.connect()?);
//! assert_eq!(link.request::<u32, u32>(&21)?, 42);
//! assert_eq!(link.request::<u32, u32>(&0), Err(LinkError::Failed("zero".into())));
//! // Take the Done first; the others stay, in order, for later reads.
//! assert_eq!(link.recv_message_where(|e: &Event| *e == Event::Done)?, Event::Done);
//! let rest: Vec<Event> = link.messages().take(2).collect::<Result<_, _>>()?;
//! assert_eq!(rest, [Event::Started, Event::Progress(50)]);
//! drop(link);
//! peer.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use portpool_runtime::job::{Context, Handlers, Job, JobError, JobFn};
pub use portpool_runtime::jobs;
pub use portpool_runtime::pool::{Pool, Ticket};
pub use portpool_runtime::runtime::Runtime;
pub use portpool_runtime::supervisor::{RestartPolicy, Shutdown, ShutdownReport};
pub use portpool_runtime::{
    error, job, launch, link, pool, port, runtime, service, subprocess, supervisor, transport,
};

/// The worker-process side (see the `portpool-worker` crate).
pub mod worker {
    pub use portpool_worker::{connect, is_worker, link, run, serve_if_worker, serve_service};
}

/// A pool of `n` worker processes running `handlers`, the short way: call
/// it first in `main`.
///
/// The workers are this executable run again (they get the environment,
/// not the command-line arguments). In a worker, this call serves
/// `handlers` and ends the process when the pool lets it go, so it never
/// returns there; in the supervisor it returns the pool. Whatever `main`
/// does before it runs in every worker too. It is
/// [`worker::serve_if_worker`] followed by
/// `Pool::builder().processes(n).handlers(handlers).build()`; use those
/// when the pool needs more options.
///
/// `handlers` is a [`Handlers`] or a single [`jobs!`] function.
pub fn process_pool(n: usize, handlers: impl Into<Handlers>) -> Result<Pool, pool::BuildError> {
    let handlers = handlers.into();
    worker::serve_if_worker(&handlers);
    Pool::builder().processes(n).handlers(handlers).build()
}

/// A pool of `n` worker threads running `handlers`: the short form of
/// `Pool::builder().threads(n).handlers(handlers).build()`.
pub fn thread_pool(n: usize, handlers: impl Into<Handlers>) -> Result<Pool, pool::BuildError> {
    Pool::builder().threads(n).handlers(handlers.into()).build()
}
