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

pub use portpool_runtime::job::{Context, Handlers, Job, JobError};
pub use portpool_runtime::pool::{Pool, Ticket};
pub use portpool_runtime::{error, job, pool, port, transport};

/// The worker-process side (see the `portpool-worker` crate).
pub mod worker {
    pub use portpool_worker::{connect, is_worker, run, serve_if_worker};
}
