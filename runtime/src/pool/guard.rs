//! The fork bomb's guard: a process started as a pool's worker that
//! builds a pool of its own executable instead of serving
//! (`PoolBuilder::build`, scenario "start").

use std::process::Command;

use super::WORKER_ID_ENV;

/// Whether this process was started as a pool's worker and has not begun
/// serving: building a pool here would run the supervisor's program in
/// every worker, each starting workers of its own.
pub(super) fn unserved_worker() -> bool {
    std::env::var_os(WORKER_ID_ENV).is_some() && crate::port::Port::in_env() && !crate::port::env_port_taken()
}

/// Whether `command` runs this very executable (the fork bomb's shape: a
/// worker that builds a pool of itself). A thread pool, or a pool of
/// another program, built before serving is legitimate.
pub(super) fn runs_this_executable(command: Option<&Command>) -> bool {
    let Some(c) = command else {
        return true; // the default: this executable, re-run
    };
    let here = std::env::current_exe().and_then(std::fs::canonicalize);
    let there = std::fs::canonicalize(c.get_program());
    matches!((here, there), (Ok(a), Ok(b)) if a == b)
}
