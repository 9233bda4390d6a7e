//! The two backends every pool test body runs against, and the check
//! that a pool's worker processes are gone after it. A test file that
//! uses this declares `mod jobs` (the fixture's job types) too.
#![allow(dead_code)] // each test binary uses its own subset

use std::process::Command;

use portpool::pool::PoolBuilder;
use portpool::{Pool, Shutdown};

use crate::common::assert_pid_gone;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Threads,
    Processes,
}

/// A pool of `n` workers running the fixture's handlers: threads in this
/// process, or the fixture binary's `pool-worker` mode.
pub(crate) fn builder(backend: Backend, n: usize) -> PoolBuilder {
    match backend {
        Backend::Threads => Pool::builder().threads(n).handlers(crate::jobs::handlers()),
        Backend::Processes => {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_portpool-fixture"));
            cmd.arg("pool-worker");
            Pool::builder()
                .processes(n)
                .worker_command(cmd)
                .forward_worker_stderr(false)
        }
    }
}

/// Shuts `pool` down and asserts that no worker process it had now, or
/// any of `earlier`, is left.
pub(crate) fn finish(pool: Pool, earlier: &[u32]) {
    let mut pids = earlier.to_vec();
    pids.extend(pool.stats().workers.iter().filter_map(|w| w.pid));
    pool.shutdown(Shutdown::default());
    for pid in pids {
        assert_pid_gone(pid);
    }
}
