//! Keeping a program alive while its pools and connections are, pausing
//! them, and shutting them down gracefully on Ctrl-C or SIGTERM.
//!
//! A [`Runtime`] counts the handles that keep it alive (pools,
//! [`Ipc`](crate::port::Ipc) connections, links, subprocesses):
//! [`Runtime::run`] blocks while any of them does and returns when none
//! is left. `set_keep_alive(false)` on a handle lets `run` return while
//! it is still open. [`suspend`](Runtime::suspend) stops pools from
//! dispatching (hooks let workers react) and [`resume`](Runtime::resume)
//! carries on.
//!
//! Handles belong to [`Runtime::global`] unless given another runtime
//! ([`PoolBuilder::runtime`](crate::pool::PoolBuilder::runtime),
//! [`Ipc::attach`](crate::port::Ipc::attach)). Tests create their own
//! with [`Runtime::new`].

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::supervisor::{Shutdown, ShutdownReport};
use crate::util::Hook;
use crate::util::lock;

/// What a runtime does with the pools that belong to it (a pool
/// implements it; the runtime names no pool type, so it sits below them).
pub(crate) trait Managed: Send + Sync {
    /// Stops dispatching; the workers' suspend hooks run.
    fn suspend(&self);
    /// Dispatches again after `suspend`.
    fn resume(&self);
    /// Makes a shutdown in progress immediate (a second SIGINT).
    fn hurry(&self);
    /// Shuts the pool down and reports what it did.
    fn shutdown(&self, how: Shutdown) -> ShutdownReport;
}

/// A hook run on each shutdown signal, with its number.
type SignalHook = Arc<dyn Fn(i32) + Send + Sync>;

/// The process-wide default runtime.
static GLOBAL: OnceLock<Runtime> = OnceLock::new();

/// SIGINT, SIGTERM (the same numbers on every Unix portpool supports).
const SIGINT: i32 = libc::SIGINT;
const SIGTERM: i32 = libc::SIGTERM;

/// A lifecycle: ref counts, suspend/resume hooks, signal-driven shutdown.
/// Cloning gives another handle to the same runtime.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RtInner>,
}

struct RtInner {
    refs: Mutex<usize>,
    cv: Condvar,
    suspended: AtomicBool,
    suspend_hooks: Mutex<Vec<Hook>>,
    resume_hooks: Mutex<Vec<Hook>>,
    signal_hooks: Mutex<Vec<SignalHook>>,
    pools: Mutex<Vec<Weak<dyn Managed>>>,
    exit: Mutex<ExitState>,
    shutdown_deadline: Mutex<Duration>,
    signals: Mutex<Option<signal_hook::iterator::Handle>>,
}

#[derive(Default)]
struct ExitState {
    /// The first shutdown signal received.
    signal: Option<i32>,
    /// Set once a signal-driven shutdown has finished.
    done: bool,
    reports: Vec<ShutdownReport>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("refs", &self.refs())
            .field("suspended", &self.is_suspended())
            .finish_non_exhaustive()
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

/// How [`Runtime::run`] ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunExit {
    /// The signal that started the shutdown, if one did (2 for SIGINT,
    /// 15 for SIGTERM).
    pub signal: Option<i32>,
    /// The reports of the pools that signal shut down.
    pub reports: Vec<ShutdownReport>,
}

impl RunExit {
    /// The conventional exit status: 128 + the signal's number, or 0.
    pub fn code(&self) -> i32 {
        self.signal.map_or(0, |s| 128 + s)
    }
}

impl Runtime {
    /// A new runtime with no handles, not suspended, not handling signals.
    pub fn new() -> Runtime {
        Runtime {
            inner: Arc::new(RtInner {
                refs: Mutex::new(0),
                cv: Condvar::new(),
                suspended: AtomicBool::new(false),
                suspend_hooks: Mutex::new(Vec::new()),
                resume_hooks: Mutex::new(Vec::new()),
                signal_hooks: Mutex::new(Vec::new()),
                pools: Mutex::new(Vec::new()),
                exit: Mutex::new(ExitState::default()),
                shutdown_deadline: Mutex::new(Shutdown::default().deadline),
                signals: Mutex::new(None),
            }),
        }
    }

    /// The process-wide runtime that handles belong to by default.
    pub fn global() -> &'static Runtime {
        GLOBAL.get_or_init(Runtime::new)
    }

    /// How many ref'd handles keep [`run`](Self::run) blocking.
    pub fn refs(&self) -> usize {
        *lock(&self.inner.refs)
    }

    /// Registers a hook that [`suspend`](Self::suspend) runs.
    pub fn on_suspend(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.inner.suspend_hooks).push(Arc::new(f));
    }

    /// Registers a hook that [`resume`](Self::resume) runs.
    pub fn on_resume(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.inner.resume_hooks).push(Arc::new(f));
    }

    /// Registers a hook that runs on every shutdown signal (SIGINT,
    /// SIGTERM) once [`handle_signals`](Self::handle_signals) took them
    /// over, before the runtime acts on it: the place to tell a user
    /// "stopping; press Ctrl-C again to stop at once".
    pub fn on_signal(&self, f: impl Fn(i32) + Send + Sync + 'static) {
        lock(&self.inner.signal_hooks).push(Arc::new(f));
    }

    /// Whether the runtime is suspended.
    pub fn is_suspended(&self) -> bool {
        self.inner.suspended.load(Ordering::Acquire)
    }

    /// Suspends (scenario "suspend"): runs the suspend hooks, then every
    /// pool of this runtime stops dispatching (queued jobs wait, nothing is
    /// lost) and tells its process workers, whose own suspend hooks run.
    /// Does nothing if already suspended.
    pub fn suspend(&self) {
        if self.inner.suspended.swap(true, Ordering::AcqRel) {
            return;
        }
        run_locked_hooks(&self.inner.suspend_hooks, "suspend");
        for p in self.pools() {
            p.suspend();
        }
    }

    /// Resumes after [`suspend`](Self::suspend): the pools dispatch again,
    /// then this runtime's resume hooks run. A thread pool runs its
    /// handlers' resume hooks before it dispatches; a process worker runs
    /// its own when the resume message reaches it, before any job sent after
    /// it, but possibly after this returns (nothing waits for the worker).
    pub fn resume(&self) {
        if !self.inner.suspended.swap(false, Ordering::AcqRel) {
            return;
        }
        for p in self.pools() {
            p.resume();
        }
        run_locked_hooks(&self.inner.resume_hooks, "resume");
    }

    /// Blocks while any ref'd handle of this runtime is alive; returns when
    /// the count reaches zero, or once a signal-driven shutdown has
    /// finished (see [`handle_signals`](Self::handle_signals)).
    pub fn run(&self) -> RunExit {
        self.run_until(None).unwrap_or_default()
    }

    /// Like [`run`](Self::run), but gives up after `timeout` (`None`).
    pub fn run_timeout(&self, timeout: Duration) -> Option<RunExit> {
        self.run_until(crate::util::deadline(timeout))
    }

    fn run_until(&self, deadline: Option<Instant>) -> Option<RunExit> {
        let mut refs = lock(&self.inner.refs);
        loop {
            {
                let exit = lock(&self.inner.exit);
                // Once a signal started a shutdown, wait for it to finish
                // (the pools' refs drop before their reports are in).
                if (*refs == 0 && exit.signal.is_none()) || exit.done {
                    return Some(RunExit {
                        signal: exit.signal,
                        reports: exit.reports.clone(),
                    });
                }
            }
            refs = match deadline {
                None => self.inner.cv.wait(refs).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.inner
                        .cv
                        .wait_timeout(refs, d - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0)
                }
            };
        }
    }

    /// The deadline of the graceful shutdown a signal starts (default
    /// 30 s). Past it, work left is cancelled and workers are killed.
    pub fn set_shutdown_deadline(&self, deadline: Duration) {
        *lock(&self.inner.shutdown_deadline) = deadline;
    }

    /// Shuts down every live pool of this runtime and returns their reports.
    pub fn shutdown(&self, how: Shutdown) -> Vec<ShutdownReport> {
        self.pools().iter().map(|p| p.shutdown(how)).collect()
    }

    /// Takes over SIGINT and SIGTERM (scenario "signals"): the first starts
    /// a graceful shutdown of every pool of this runtime (see
    /// [`set_shutdown_deadline`](Self::set_shutdown_deadline)), after which
    /// [`run`](Self::run) returns with the signal and the reports; a second
    /// SIGINT makes the shutdown immediate. Without a hook of your own
    /// ([`on_signal`](Self::on_signal)) each of these prints one line to
    /// stderr saying what happens, so a program that finishes its jobs does
    /// not look hung. Signal handlers are process-wide: call this from a
    /// program's `main`, once.
    ///
    /// The first signal lets queued jobs run too (a graceful shutdown);
    /// jobs submitted after it are refused, so a `map` still being
    /// consumed yields `Rejected` for the rest. `run` returns a
    /// [`RunExit`] whose [`code`](RunExit::code) (130 after SIGINT, 143
    /// after SIGTERM) is the exit status a shell expects. A program that
    /// only waits on its tickets exits 0 as if not interrupted: to report
    /// the signal, drop (or shut down) its pools, then end with
    /// `std::process::exit(rt.run().code())` (with no pool left, `run`
    /// returns at once).
    pub fn handle_signals(&self) -> io::Result<()> {
        let mut slot = lock(&self.inner.signals);
        if slot.is_some() {
            return Ok(());
        }
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        *slot = Some(signals.handle());
        let rt = self.clone();
        std::thread::Builder::new()
            .name("portpool-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    rt.signalled(sig);
                }
            })?;
        Ok(())
    }

    /// Maps job control to the lifecycle (opt-in, since it changes what
    /// Ctrl-Z does): on SIGTSTP the runtime suspends (hooks run, pools stop
    /// dispatching, process workers run their suspend hooks), then the
    /// process stops as it would have; on SIGCONT it resumes. Signal
    /// handlers are process-wide: call this from a program's `main`, once.
    pub fn handle_job_control(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGCONT, SIGTSTP};
        let mut signals = signal_hook::iterator::Signals::new([SIGTSTP, SIGCONT])?;
        let rt = self.clone();
        std::thread::Builder::new()
            .name("portpool-job-control".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == SIGTSTP {
                        rt.suspend();
                        // Then stop, as SIGTSTP's default action does.
                        if let Err(e) = signal_hook::low_level::emulate_default_handler(SIGTSTP) {
                            log::error!("could not stop on SIGTSTP: {e}");
                        }
                    } else {
                        rt.resume();
                    }
                }
            })?;
        Ok(())
    }

    /// What a shutdown signal does (also callable without a real signal).
    fn signalled(&self, sig: i32) {
        let hooks: Vec<SignalHook> = lock(&self.inner.signal_hooks).clone();
        let hooks_empty = hooks.is_empty();
        for h in hooks {
            crate::util::call_logged("signal hook", || h(sig));
        }
        let first = {
            let mut exit = lock(&self.inner.exit);
            let first = exit.signal.is_none();
            exit.signal.get_or_insert(sig);
            first
        };
        // A program that took over the signals without hooks of its own
        // would otherwise look hung while its jobs finish: one line says
        // what happens (a program with hooks says what it wants).
        let quiet = !hooks_empty;
        if first {
            let deadline = *lock(&self.inner.shutdown_deadline);
            // A SIGINT (Ctrl-C) during the shutdown makes it immediate,
            // whichever signal began it.
            let hurry = if sig == SIGINT {
                "interrupt again to stop at once"
            } else {
                "send SIGINT (Ctrl-C) to stop at once"
            };
            if quiet {
                log::warn!("signal {sig}: shutting down gracefully ({hurry})");
            } else {
                eprintln!(
                    "portpool: signal {sig}: finishing the queued and running jobs (for up to {deadline:?}); {hurry}"
                );
            }
            let rt = self.clone();
            let spawned = std::thread::Builder::new()
                .name("portpool-shutdown".into())
                .spawn(move || {
                    let reports = rt.shutdown(Shutdown::graceful(deadline));
                    rt.finish_exit(reports);
                });
            if let Err(e) = spawned {
                log::error!("could not start the shutdown thread ({e}); shutting down here");
                let reports = self.shutdown(Shutdown::graceful(deadline));
                self.finish_exit(reports);
            }
        } else if sig == SIGINT {
            if quiet {
                log::warn!("second SIGINT: stopping at once");
            } else {
                eprintln!("portpool: second SIGINT: stopping at once");
            }
            for p in self.pools() {
                p.hurry();
            }
        }
    }

    fn finish_exit(&self, reports: Vec<ShutdownReport>) {
        let _refs = lock(&self.inner.refs);
        let mut exit = lock(&self.inner.exit);
        exit.done = true;
        exit.reports = reports;
        self.inner.cv.notify_all();
    }

    /// A new handle's ref count, ref'd.
    pub(crate) fn new_ref(&self) -> RefCount {
        let r = RefCount {
            rt: Some(self.inner.clone()),
            state: Mutex::new(RefState::Unref),
        };
        r.ref_();
        r
    }

    pub(crate) fn attach_pool(&self, pool: Weak<dyn Managed>) {
        let mut pools = lock(&self.inner.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
        // A pool built while suspended starts suspended.
        if self.is_suspended() {
            if let Some(p) = pools.last().and_then(Weak::upgrade) {
                p.suspend();
            }
        }
    }

    fn pools(&self) -> Vec<Arc<dyn Managed>> {
        lock(&self.inner.pools).iter().filter_map(Weak::upgrade).collect()
    }
}

impl Drop for RtInner {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.signals).take() {
            h.close();
        }
    }
}

fn run_locked_hooks(hooks: &Mutex<Vec<Hook>>, what: &str) {
    // Cloned out of the lock: a hook may register another.
    let hooks: Vec<Hook> = lock(hooks).clone();
    crate::util::run_hooks(&hooks, what);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefState {
    Unref,
    Ref,
    /// The handle is finished: it never counts again.
    Closed,
}

/// One handle's place in its runtime's count.
pub(crate) struct RefCount {
    rt: Option<Arc<RtInner>>,
    state: Mutex<RefState>,
}

impl fmt::Debug for RefCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", *lock(&self.state))
    }
}

impl RefCount {
    /// Belongs to no runtime.
    pub(crate) fn detached() -> RefCount {
        RefCount {
            rt: None,
            state: Mutex::new(RefState::Unref),
        }
    }

    fn change(&self, to: RefState) {
        let mut st = lock(&self.state);
        if *st == to || *st == RefState::Closed {
            return;
        }
        let Some(rt) = &self.rt else {
            *st = to;
            return;
        };
        let mut refs = lock(&rt.refs);
        match (*st, to) {
            (RefState::Unref, RefState::Ref) => *refs += 1,
            (RefState::Ref, _) => *refs = refs.saturating_sub(1),
            _ => {}
        }
        *st = to;
        if *refs == 0 {
            rt.cv.notify_all();
        }
    }

    pub(crate) fn ref_(&self) {
        self.change(RefState::Ref);
    }

    pub(crate) fn unref(&self) {
        self.change(RefState::Unref);
    }

    /// Unrefs for good (the handle is finished).
    pub(crate) fn close(&self) {
        self.change(RefState::Closed);
    }

    pub(crate) fn has_ref(&self) -> bool {
        *lock(&self.state) == RefState::Ref
    }

    /// A public handle's `set_keep_alive`.
    pub(crate) fn set_keep_alive(&self, keep: bool) {
        if keep { self.ref_() } else { self.unref() }
    }

    /// A public handle's `keeps_alive`.
    pub(crate) fn keeps_alive(&self) -> bool {
        self.has_ref()
    }

    /// The same state, moved to `rt`.
    pub(crate) fn moved_to(&self, rt: &Runtime) -> RefCount {
        let was = *lock(&self.state);
        self.close();
        let r = RefCount {
            rt: Some(rt.inner.clone()),
            state: Mutex::new(RefState::Unref),
        };
        if was == RefState::Ref {
            r.ref_();
        }
        r
    }
}

impl Drop for RefCount {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_returns_when_the_last_ref_goes() {
        let rt = Runtime::new();
        let a = rt.new_ref();
        let b = rt.new_ref();
        assert_eq!(rt.refs(), 2);
        b.unref();
        assert!(!b.has_ref());
        assert_eq!(rt.refs(), 1);
        b.ref_();
        assert_eq!(rt.refs(), 2);
        drop(b);
        a.close();
        a.ref_(); // closed: no effect
        assert_eq!(rt.refs(), 0);
        assert_eq!(rt.run_timeout(Duration::from_secs(30)), Some(RunExit::default()));
    }
}
