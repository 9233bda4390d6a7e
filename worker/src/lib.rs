//! The worker-process side of portpool.
//!
//! A process worker is a child its supervisor started with a port
//! ([`Port::pass_to`](portpool_runtime::port::Port::pass_to)). Two ways to
//! write one:
//!
//! - a separate binary whose `main` is `portpool::worker::run(handlers())`;
//! - the supervisor's own binary, re-run: `main` starts with
//!   `portpool::worker::serve_if_worker(&handlers())`, which serves and
//!   exits when this process is a worker, and returns at once otherwise.
//!
//! Either way the worker takes its port from the environment, asks the
//! kernel to kill it if the supervisor's spawning thread dies
//! (`PR_SET_PDEATHSIG` on Linux), and exits on its own when the port
//! closes (EOF: the supervisor is gone).
//!
//! Not for: anything the supervisor does; that is in `portpool-runtime`.

use std::io;

use portpool_runtime::job::Handlers;
use portpool_runtime::link::Link;
use portpool_runtime::pool::{self, WORKER_ID_ENV, WORKER_LINK_ENV};
use portpool_runtime::port::{ConnectOptions, Ipc, Port, Role};

/// Connects to the supervisor through the port this process was given.
///
/// Fails with `NotFound` when this process was not started with a port,
/// and with the handshake's error when the supervisor speaks another
/// protocol version.
pub fn connect() -> io::Result<Ipc> {
    let port = Port::from_env()?;
    // SIGKILL: a worker whose supervisor is gone has nothing to finish; EOF
    // on the port is the primary signal, this is the backstop.
    if !portpool_runtime::set_parent_death_kill()? {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the supervisor exited before this worker started",
        ));
    }
    port.connect_with(ConnectOptions {
        role: Role::Worker,
        // The supervisor decides: it offers shared memory unless told not to.
        shared_memory: true,
        ..ConnectOptions::default()
    })
}

/// This worker's conversation with its supervisor, when the pool has
/// worker links.
static LINK: std::sync::OnceLock<Link> = std::sync::OnceLock::new();

/// The conversation with the supervisor beside the jobs, when the pool
/// was built with `worker_links(true)`: usable from handlers (send a
/// message, wait for one, make a request).
pub fn link() -> Option<&'static Link> {
    LINK.get()
}

/// Takes the link's port, which the supervisor sends first, and connects it.
fn open_link(ipc: &mut Ipc) -> io::Result<()> {
    let port = ipc
        .recv_port()
        .map_err(|e| io::Error::other(format!("the supervisor's link port did not come: {e}")))?;
    let conn = port.connect_with(ConnectOptions {
        role: Role::Worker,
        // The supervisor decides: it offers shared memory unless told not to.
        shared_memory: true,
        ..ConnectOptions::default()
    })?;
    let _ = LINK.set(Link::new(conn));
    Ok(())
}

/// Whether this process was started as a pool's worker.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ID_ENV).is_some() && Port::in_env()
}

/// Serves jobs with `handlers` until the supervisor stops this worker or
/// goes away, then exits the process (status 0, or 1 if the port broke).
pub fn run(handlers: Handlers) -> ! {
    let id = std::env::var(WORKER_ID_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Refused before connecting, so the supervisor finds the reason on
    // this worker's stderr when its handshake fails.
    if let Err(e) = handlers.check() {
        eprintln!("portpool worker {id}: {e}");
        std::process::exit(1);
    }
    let res = connect().and_then(|mut ipc| {
        if std::env::var_os(WORKER_LINK_ENV).is_some() {
            open_link(&mut ipc)?;
        }
        pool::serve(ipc, &handlers, id)
    });
    match res {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("portpool worker {id}: {e}");
            std::process::exit(1);
        }
    }
}

/// If this process is a pool's worker, serves and exits; otherwise returns
/// at once. Call it first thing in `main` of a program that builds a
/// process pool without `.worker_command(..)`.
///
/// A worker is this executable run again with no command-line arguments
/// (it gets the supervisor's environment, plus its port and its worker
/// id): anything `main` does before this call, every worker does too. If
/// the call is missing, the worker would run the whole program and build
/// pools of its own; portpool stops that: building a pool in such a
/// process fails at once with "this process was started as a portpool
/// worker but did not call portpool::worker::serve_if_worker at the top of
/// main", and the supervisor's `build()` fails with that sentence.
pub fn serve_if_worker(handlers: &Handlers) {
    if is_worker() {
        run(handlers.clone());
    }
}

/// Serves a [`Service`](portpool_runtime::service::Service)'s clients with
/// `handlers`, then exits the process: takes the control port from the
/// environment, serves every client port the parent sends, and exits once
/// the parent is gone and the last client has disconnected (status 0, or 1
/// if the control port broke).
pub fn serve_service(handlers: Handlers) -> ! {
    let res = connect().and_then(|ipc| portpool_runtime::service::serve_service_on(ipc, &handlers));
    match res {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("portpool service: {e}");
            std::process::exit(1);
        }
    }
}
