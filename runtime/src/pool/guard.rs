//! The fork bomb's guard: a process started as a pool's worker that
//! builds a pool of its own executable instead of serving
//! (`PoolBuilder::build`, scenario "start").

use std::process::Command;

use super::WORKER_ID_ENV;

/// Whether this process was started as a pool's worker and has not begun
/// serving: building a pool here would run the supervisor's program in
/// every worker, each starting workers of its own.
fn unserved_worker() -> bool {
    std::env::var_os(WORKER_ID_ENV).is_some() && crate::port::Port::in_env() && !crate::port::env_port_taken()
}

/// Whether `command` runs this very executable (the fork bomb's shape: a
/// worker that builds a pool of itself). A thread pool, or a pool of
/// another program, built before serving is legitimate.
fn runs_this_executable(command: Option<&Command>) -> bool {
    let Some(c) = command else {
        return true; // the default: this executable, re-run
    };
    let here = std::env::current_exe().and_then(std::fs::canonicalize);
    let there = std::fs::canonicalize(c.get_program());
    matches!((here, there), (Ok(a), Ok(b)) if a == b)
}

/// Ends this process (status 1) if building a pool of `command` here would
/// be the fork bomb: it was started as a worker that has not served and
/// `command` runs this very executable. It says why on stderr first, where
/// the supervisor's handshake finds the line and reports it, once.
pub(super) fn exit_if_unserved_worker(command: Option<&Command>) {
    if !(runs_this_executable(command) && unserved_worker()) {
        return;
    }
    let msg = format!(
        "{}; call it before anything else, so that a worker serves jobs instead of running the \
         program again",
        crate::stderr::FORGOT_SERVE_IF_WORKER
    );
    eprintln!("portpool: {msg}");
    // Closing the port ends the supervisor's handshake at once. This process
    // was started to serve, not to run the program: it ends here, before the
    // program goes on as a worker that serves nothing (and repeats what main
    // does).
    drop(crate::port::Port::from_env());
    let _ = std::io::Write::flush(&mut std::io::stderr());
    std::process::exit(1);
}
