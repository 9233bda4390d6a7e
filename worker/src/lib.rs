//! The worker-process side of portpool.
//!
//! A worker is a child process its supervisor started with a port
//! ([`Port::pass_to`](portpool_runtime::port::Port::pass_to)). [`connect`]
//! takes that port from the environment, asks the kernel to end this
//! process if the supervisor's spawning thread dies (`PR_SET_PDEATHSIG`
//! on Linux), and completes the handshake in the worker role.
//!
//! Not for: anything the supervisor does; that is in `portpool-runtime`.

use std::io;

use portpool_runtime::port::{ConnectOptions, Ipc, Port, Role};

/// Connects to the supervisor through the port this process was given.
///
/// Fails with `NotFound` when this process was not started as a worker,
/// and with the handshake's error when the supervisor speaks another
/// protocol version.
pub fn connect() -> io::Result<Ipc> {
    let port = Port::from_env()?;
    // SIGKILL: a worker whose supervisor is gone has nothing to finish; EOF
    // on the port is the primary signal, this is the backstop.
    if !portpool_runtime::set_parent_death_signal(libc_sigkill())? {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the supervisor exited before this worker started",
        ));
    }
    port.connect_with(ConnectOptions {
        role: Role::Worker,
        ..ConnectOptions::default()
    })
}

/// SIGKILL's number (9 on every Unix portpool supports).
const fn libc_sigkill() -> i32 {
    9
}
