//! Worker pools of threads or processes: fan CPU work out to workers,
//! keep going when one crashes, stop gracefully on Ctrl-C, and await
//! results from async code (any executor; the library needs none).
//!
//! # A process pool
//!
//! A job is a serde type with an output, an error and a route name; a
//! [`Handlers`] registry says which function runs it; a [`Pool`] of
//! processes runs the jobs in copies of this program. This is a whole
//! program (it needs only `portpool` in `Cargo.toml`):
//!
//! ```standalone_crate
//! use portpool::serde::{Deserialize, Serialize};
//! use portpool::{Handlers, Job, JobError, Pool};
//!
//! /// A job: count the primes in `from..to`.
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "portpool::serde")] // not needed with `serde` in your own dependencies
//! struct CountPrimes {
//!     from: u64,
//!     to: u64,
//! }
//!
//! impl Job for CountPrimes {
//!     type Output = u64; // what a run returns
//!     type Error = String; // what a failed run returns
//!     const NAME: &'static str = "count-primes"; // how workers find its handler
//! }
//!
//! fn count_primes(job: CountPrimes) -> Result<u64, String> {
//!     if job.from > job.to {
//!         return Err(format!("{}..{} is not a range", job.from, job.to));
//!     }
//!     let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
//!     Ok((job.from..job.to).filter(|&n| is_prime(n)).count() as u64)
//! }
//!
//! fn handlers() -> Handlers {
//!     Handlers::new().on::<CountPrimes>(|job, _context| count_primes(job))
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Each worker is this program run again: there, this call serves
//!     // jobs and exits; here it returns at once. Keep it first in `main`.
//!     portpool::worker::serve_if_worker(&handlers());
//!
//!     let pool = Pool::builder().processes(2).build()?;
//!
//!     // `map` sends jobs out as workers take them and yields the results
//!     // in input order.
//!     let ranges = (0..10).map(|i| CountPrimes { from: i * 10_000, to: (i + 1) * 10_000 });
//!     let mut total = 0;
//!     for result in pool.map(ranges) {
//!         total += result?;
//!     }
//!     println!("{total} primes below 100000");
//!     assert_eq!(total, 9592);
//!
//!     // A failed job comes back as its handler's error, typed.
//!     match pool.submit(CountPrimes { from: 9, to: 1 })?.wait() {
//!         Err(JobError::Handler(why)) => println!("refused: {why}"),
//!         other => panic!("expected the handler's error, got {other:?}"),
//!     }
//!     Ok(())
//! }
//! ```
//!
//! What to know about process workers:
//!
//! - **`serve_if_worker` first.** A worker runs `main` from the top until
//!   that call. If it is missing, the worker would build a pool of its
//!   own; instead `build()` fails in the supervisor with an error that
//!   says to add it (no fork bomb, no hang). Code before the call runs in
//!   every worker too.
//! - **Workers get the environment, not the arguments.** Each is started
//!   with no command-line arguments and with the supervisor's
//!   environment, plus `PORTPOOL_WORKER_ID` (its slot number).
//! - **Jobs cross as postcard bytes**, so the job, output and error types
//!   must be types postcard can encode (plain structs, enums, strings,
//!   numbers, vectors, maps); a job that will not encode or decode fails
//!   alone with [`JobError::Codec`], which names the type.
//! - **A worker that crashes** (a signal, `exit`, an abort) fails the jobs
//!   it held with [`JobError::WorkerExited`] (its pid, its exit status and
//!   the last lines of its stderr) and is replaced; in a `map` that is the
//!   whole chunk it was running. `.retries(n)` runs such jobs again. A
//!   panic in a handler fails only its job ([`JobError::Panicked`]).
//! - **Up to 4 jobs wait on each worker** (`inflight_per_worker`), which
//!   hides the round trip for short jobs; a short job behind a long one
//!   waits even while another worker is idle. For long or uneven jobs,
//!   build with `.inflight_per_worker(1)`.
//! - **A separate worker binary**: `.worker_command(Command::new(path))`
//!   runs another program, whose `main` calls [`worker::run`] with the
//!   same handlers.
//!
//! # The short way: functions as jobs
//!
//! For "run this function over these inputs", [`jobs!`] makes a job of a
//! function (its argument is the job, its `Result` the output and error),
//! and [`process_pool`] is `serve_if_worker` and `build` in one call. The
//! file-hashing program below is 17 non-blank lines; the same program
//! with rayon's `par_iter` (same hashing, same error handling) is 16.
//!
//! ```no_run
//! use std::hash::{DefaultHasher, Hasher};
//!
//! portpool::jobs! {
//!     fn hash(path: String) -> Result<u64, String> {
//!         let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
//!         let mut h = DefaultHasher::new();
//!         h.write(&bytes);
//!         Ok(h.finish())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = portpool::process_pool(4, hash)?; // first in main: workers serve here
//!     let paths: Vec<String> = std::env::args().skip(1).collect();
//!     for (path, h) in paths.iter().zip(pool.map_fn(hash, paths.clone())) {
//!         println!("{:016x}  {path}", h?);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Side by side, the two ways to the same job:
//!
//! | | the [`Job`] trait | [`jobs!`] |
//! |---|---|---|
//! | the job | a struct, `#[derive(Serialize, Deserialize)]` | the function's argument (a tuple for several) |
//! | output, error | `type Output`, `type Error` | the function's `Result<O, E>` |
//! | route name | `const NAME` | the function's name |
//! | register | `Handlers::new().on::<J>(\|job, cx\| ..)` | `Handlers::new().func(f)` |
//! | run | `pool.submit(job)`, `pool.map(jobs)` | `pool.submit_fn(f, input)`, `pool.map_fn(f, inputs)` |
//! | progress, cancellation | through the handler's [`Context`] | not available: use the trait |
//!
//! `examples/hash.rs` is the program above.
//!
//! # A pool of threads
//!
//! `Pool::builder().threads(n)` runs the same handlers on threads of this
//! process: jobs move as Rust values and are never encoded.
//!
//! ```
//! use portpool::serde::{Deserialize, Serialize};
//! use portpool::{Handlers, Job, JobError, Pool};
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "portpool::serde")]
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
//! `examples/fanout.rs` counts primes serially, on threads and on
//! processes, and prints the speedups.
//!
//! ## Progress from a running job
//!
//! ```
//! use portpool::serde::{Deserialize, Serialize};
//! use portpool::{Handlers, Job, Pool};
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "portpool::serde")]
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
//! # Awaiting jobs from async code
//!
//! A [`Ticket`] can be awaited (it implements `IntoFuture`) under tokio,
//! async-std, `futures::executor` or any other executor: the pool thread
//! that settles the job wakes the task, and no executor thread blocks.
//! Dropping the future cancels the job, so a request handler whose client
//! went away leaves no work behind (dropping a `Ticket` that was never
//! awaited does not: the job runs, its result unread). To await many at
//! once with a combinator that wants futures, make them futures first:
//! `join_all(tickets.into_iter().map(IntoFuture::into_future))`. With the
//! `futures` feature, `Map::into_stream` gives a `Stream` of a map's
//! results; [`Link`](link::Link) has `request_async` and
//! `recv_message_async`.
//!
//! With process workers, call `serve_if_worker` before the async runtime
//! starts (a plain `fn main` that builds the runtime after it, as
//! `examples/tokio.rs` does): under `#[tokio::main]` every worker would
//! start a tokio runtime of its own before serving.
//!
//! ```
//! # use portpool::serde::{Deserialize, Serialize};
//! # use portpool::{Handlers, Job, Pool};
//! # #[derive(Serialize, Deserialize)]
//! # #[serde(crate = "portpool::serde")]
//! # struct Divide { a: i64, b: i64 }
//! # impl Job for Divide { type Output = i64; type Error = String; const NAME: &'static str = "divide"; }
//! # let handlers = Handlers::new().on::<Divide>(|d, _| Ok(d.a / d.b));
//! let pool = Pool::builder().threads(2).handlers(handlers).build()?;
//! let ticket = pool.submit(Divide { a: 84, b: 2 })?;
//! // Any executor: here the small one from the `futures` crate (a
//! // dependency of its own).
//! let answer = futures::executor::block_on(async { ticket.await })?;
//! assert_eq!(answer, 42);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/tokio.rs` is a TCP server whose connections each await a job
//! on a process pool.
//!
//! # Supervision: timeouts, cancellation, crashes and shutdown
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
//! use portpool::serde::{Deserialize, Serialize};
//! use portpool::{Handlers, Job, JobError, Pool, Runtime, Shutdown};
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "portpool::serde")]
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
//! `.retries(n)`. [`supervisor`] tells every case step by step.
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
//! use portpool::serde::{Deserialize, Serialize};
//! use portpool::{Handlers, Job, JobError, Pool};
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "portpool::serde")]
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
//! # Shared memory and buffers that move without a copy
//!
//! On Linux a process pool's workers (and links, subprocesses and
//! services) talk through two rings in shared memory once both sides
//! agree in their hello; `stats().workers[i].transport` says
//! `"shared memory"`, and `PoolBuilder::shared_memory(false)` or
//! `PORTPOOL_TRANSPORT=socket` keep the socket. Large bytes can move
//! between processes without a copy in a [`port::Buffer`]: fill it in
//! place, send it in a message, and the receiver reads the same pages.
//! It can be a field of any job, result, message or request type: a
//! process pool's jobs (submitted or mapped) and their results, and a
//! [`link::Link`]'s messages, requests and replies, carry its memory file
//! beside their bytes.
//!
//! ```
//! use std::io::Write;
//! use portpool::port::{self, Buffer};
//!
//! let (a, b) = port::open()?;
//! let reader = std::thread::spawn(move || {
//!     let mut b = b.connect().expect("connect");
//!     let frame: Buffer = b.recv().expect("a buffer");
//!     frame.iter().map(|&x| u64::from(x)).sum::<u64>()
//! });
//! let a = a.connect()?;
//! let mut frame = Buffer::with_capacity(1 << 20)?;
//! frame.write_all(&[1u8; 1 << 20])?;
//! a.send(&frame)?; // sealed: read-only from now on, here and there
//! assert_eq!(reader.join().unwrap(), 1 << 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Workers in another language
//!
//! A pool built with `.job_codec(Codec::Json)` speaks the job protocol of
//! `docs/protocol.md` in JSON, so its workers can be any program that
//! follows it (`python/portpool_worker.py` is one). It needs no handlers:
//! the worker announces the routes it serves, and a job type is only its
//! `NAME` and its serde types.
//!
//! ```no_run
//! use portpool::link::Codec;
//! use portpool::Pool;
//!
//! let mut worker = std::process::Command::new("python3");
//! worker.arg("my_worker.py");
//! let pool = Pool::builder()
//!     .processes(2)
//!     .worker_command(worker)
//!     .job_codec(Codec::Json)
//!     .build()?;
//! # drop(pool);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The runtime: keep-alive, suspend, signals
//!
//! A [`Runtime`] counts the handles that keep a program alive: a pool
//! keeps it alive until it shuts down (unless told
//! `set_keep_alive(false)`), and [`Runtime::run`] returns when no handle
//! does.
//! With [`Runtime::handle_signals`], SIGINT or SIGTERM shuts every pool of
//! the runtime down gracefully and makes `run` return (a second SIGINT
//! stops at once); `examples/supervise.rs` is a complete program.
//!
//! ```
//! use portpool::{Handlers, Pool, Runtime};
//!
//! let rt = Runtime::new();
//! let pool = Pool::builder().threads(1).handlers(Handlers::new()).runtime(&rt).build()?;
//! assert_eq!(rt.refs(), 1); // the pool keeps it alive
//! rt.suspend(); // stops dispatching; queued jobs wait
//! pool.set_keep_alive(false); // a suspended pool need not keep `run` waiting
//! assert!(rt.run_timeout(std::time::Duration::from_secs(30)).is_some());
//! rt.resume();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//!
//! # Conversations
//!
//! A [`link::Link`] on any connection is a conversation: ordered
//! messages, reads that pick the message they want, strict sends (that
//! fail unless the peer is waiting for a message), and requests answered
//! by id. [`subprocess::Subprocess`] is one child process to talk to and
//! wait for; [`service::Service`] is one worker serving many clients,
//! each on a connection of its own. `docs/protocol.md` (in the
//! repository) specifies the frames, so a peer can be written in another
//! language.
//!
//! ```
//! use portpool::link::{Link, LinkError};
//! use portpool::port;
//! use portpool::serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[serde(crate = "portpool::serde")]
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
//!
//! # Ports: the connections underneath
//!
//! Every pool worker, link and service talks over a port. [`port::open`]
//! gives two connected [`port::Port`]s: move one to a thread, hand it to a
//! child process, or send it over another connection, then
//! [`connect`](port::Port::connect) both ends; each side then sends and
//! receives typed messages. A connection's fd can be polled from a loop
//! of your own (`Ipc` implements `AsFd`).
//!
//! ```
//! use portpool::port;
//! use portpool::serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! #[serde(crate = "portpool::serde")]
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
//! ## Disconnection
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
//! ## Waiting with a bound
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
//! ## Sending a port over a connection
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
//! ## A child process
//!
//! [`Port::pass_to`](port::Port::pass_to) (or [`Port::spawn`](port::Port::spawn))
//! hands a port to a child, which takes it with
//! [`Port::from_env`](port::Port::from_env); `examples/ports.rs` runs the
//! whole scenario with the example's own executable as the child.
//!
//!
//! # Modules
//!
//! | module | what it is for |
//! |---|---|
//! | [`pool`] | the pool: building one, submitting, tickets, `map`, stats, options per job |
//! | [`job`] | the [`Job`] trait, the [`Handlers`] registry, [`JobError`], the handler's [`Context`] |
//! | [`worker`] | the worker process's side: `serve_if_worker`, `run`, a worker's link |
//! | [`supervisor`] | restart policies, shutdown modes, the events a pool reports, and every failure case step by step |
//! | [`runtime`] | keeping a program alive while pools and connections are, suspend, Ctrl-C |
//! | [`launch`] | workers started elsewhere: over ssh, in Slurm, through any command |
//! | [`link`] | conversations on a connection: messages, strict sends, requests |
//! | [`subprocess`] | one child process to talk to and wait for |
//! | [`service`] | one worker, in a thread or a process, serving many clients |
//! | [`port`] | connected port pairs that move between threads and processes |
//! | [`transport`] | the framing under every connection, its limits and wire format |
//! | [`error`] | the errors of sending and receiving |

pub use portpool_runtime::job::{Context, Handlers, Job, JobError, JobFn};
pub use portpool_runtime::jobs;
pub use portpool_runtime::pool::{Pool, Ticket};
pub use portpool_runtime::runtime::Runtime;
pub use portpool_runtime::supervisor::{RestartPolicy, Shutdown, ShutdownReport};
pub use portpool_runtime::{
    error, job, launch, link, pool, port, runtime, service, subprocess, supervisor, transport,
};
/// The serde version portpool's jobs use, for programs that do not
/// depend on serde themselves (`#[serde(crate = "portpool::serde")]`).
pub use serde;

/// The worker process's side: serving a pool's jobs
/// ([`serve_if_worker`](worker::serve_if_worker) at the top of `main`, or
/// [`run`](worker::run) in a separate worker binary), a worker's
/// [`link`](worker::link) to its supervisor, and serving a
/// [`Service`](service::Service)'s clients.
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
