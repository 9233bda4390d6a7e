//! A worker slot's life (scenario "restart"): start a worker (spawn,
//! handshake, link, route table), serve it, restart it within the policy.

use super::*;

/// A fresh `Command` with the template's program, arguments, environment
/// and directory (`Command` is not `Clone`).
pub(super) fn copy_command(t: &Command) -> Command {
    let mut c = Command::new(t.get_program());
    c.args(t.get_args());
    crate::child::copy_env_and_dir(t, &mut c);
    c
}

impl Shared {
    /// Waits until `deadline` unless the pool stops first; returns whether
    /// it may go on.
    pub(super) fn backoff(&self, deadline: Instant) -> bool {
        let (m, cv) = &self.stop_gate;
        let mut g = lock(m);
        loop {
            if self.core.stopping.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// A slot's life: start a worker, serve it until it exits, settle what it
/// held, restart it within the policy (scenario "restart").
pub(super) fn slot_loop(
    shared: &Shared,
    id: usize,
    ready: crossbeam_channel::Sender<Result<(), BuildError>>,
) {
    let core = &shared.core;
    let slot = &shared.slots[id];
    let mut ready = Some(ready);
    let mut epoch = 0u64;
    // A scaling pool's slot beyond `min` starts dormant.
    if let Some(scale) = &core.scale {
        if scale.state(id) != super::super::scale::SlotState::Up {
            if let Some(r) = ready.take() {
                let _ = r.send(Ok(()));
            }
            if !scale.wait_woken(id, || core.stopping.load(Ordering::Acquire)) {
                return;
            }
        }
    }
    loop {
        epoch += 1;
        let why = match start_worker(shared, id, epoch) {
            Ok(w) => {
                if core.suspended.load(Ordering::Acquire) {
                    let _ = w.send_control(&ToWorker::Suspend);
                }
                {
                    let mut waiting = lock(&slot.waiting);
                    *lock(&slot.current) = Some(w.clone());
                    for t in waiting.iter_mut().flat_map(|q| q.drain(..)) {
                        // SeqCst: as every other access to the in-flight count.
                        w.in_flight.fetch_add(1, Ordering::SeqCst);
                        dispatch(&w, core, t, 0);
                    }
                }
                // The pool began to stop while this worker started: `stop`
                // may have missed it, so it is told here.
                if core.stopping.load(Ordering::Acquire) {
                    let _ = w.feed_control(&ToWorker::Stop);
                }
                // Write what was dispatched above (`fill_slots` flushes only what
                // it sends itself).
                if let Err(e) = w.tx.flush() {
                    log::debug!("worker {id}: flush failed ({e}); its reader will report the exit");
                }
                core.event(PoolEvent::WorkerStarted {
                    worker: id,
                    pid: Some(w.pid),
                    // Relaxed: statistics only.
                    restarts: slot.restarts.load(Ordering::Relaxed),
                });
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                // Work may have queued up while the slot was empty.
                fill_slots(&w, core, w.max_in_flight, true, 0);
                core.free.notify();
                let exit = reader_loop(&w, shared);
                *lock(&slot.current) = None;
                if w.leaving.load(Ordering::Acquire) && !core.stopping.load(Ordering::Acquire) {
                    // Scenario "scale": it left for being idle; the slot
                    // sleeps until jobs wait again.
                    if !go_dormant(shared, id) {
                        return;
                    }
                    continue;
                }
                if exit.expected || core.stopping.load(Ordering::Acquire) {
                    if core.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    // The pool ended it (a cancelled job's worker): replace
                    // it at once, without counting a restart.
                    slot.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                format!("worker {id} (pid {}) exited: {}", w.pid, exit.status)
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                let reason = e.to_string();
                core.event(PoolEvent::StartFailed {
                    worker: id,
                    reason: reason.clone(),
                });
                reason
            }
        };
        if core.stopping.load(Ordering::Acquire) || core.failure().is_some() {
            return;
        }
        let allowed = lock(&shared.intensity).restart(Instant::now());
        match allowed {
            Ok(wait) => {
                let Some(until) = crate::util::deadline(wait) else {
                    // A backoff too long to wait (`Duration::MAX`) means
                    // never: the pool fails, as with `RestartPolicy::never`,
                    // rather than keep its queued jobs waiting for a worker
                    // that is not coming.
                    core.fail_pool(format!(
                        "the restart backoff of {wait:?} is too long to wait, so the worker is never restarted; the last: {why}"
                    ));
                    return;
                };
                if !shared.backoff(until) {
                    return;
                }
                // Relaxed: statistics only.
                slot.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(n) => {
                let p = core.config.restart;
                core.fail_pool(format!(
                    "{n} restart(s) within {:?} reached the limit of {}; the last: {why}",
                    p.period, p.max_restarts
                ));
                return;
            }
        }
    }
}

/// After slot `id`'s worker left for being idle: the slot goes dormant
/// and waits to be woken, unless work came for it meanwhile (a broadcast
/// copy, or jobs queued with no worker free). `false`: the pool stops.
fn go_dormant(shared: &Shared, id: usize) -> bool {
    let core = &shared.core;
    let Some(scale) = &core.scale else { return true };
    {
        let decide = scale.decide();
        let waiting = lock(&shared.slots[id].waiting)
            .as_ref()
            .is_some_and(|q| !q.is_empty());
        let wanted = waiting || (core.has_queued() && core.may_grow());
        let to = if wanted {
            super::super::scale::SlotState::Up
        } else {
            super::super::scale::SlotState::Dormant
        };
        use super::super::scale::SlotState::Leaving;
        scale.set(&decide, id, Leaving, to);
    }
    scale.wait_woken(id, || core.stopping.load(Ordering::Acquire))
}

pub(super) fn start_worker(shared: &Shared, id: usize, epoch: u64) -> Result<Arc<Worker>, BuildError> {
    let (core, links) = (&shared.core, shared.links);
    let slot = &shared.slots[id];
    let max_in_flight = slot.max_in_flight;
    let template = &shared.template;
    // A local worker inherits a socket; one started through a launcher
    // gets its port on the launcher's stdin and stdout.
    let limit = core.config.recycle.limit;
    let (mut cmd, via) = match slot.launcher.command(template, id, limit) {
        Some(c) => (c, crate::child::Via::Stdio),
        None => {
            let mut c = copy_command(template);
            if let Some(bytes) = limit {
                crate::sys::limit_address_space(&mut c, bytes);
            }
            (c, crate::child::Via::Inherit)
        }
    };
    cmd.env(WORKER_ID_ENV, id.to_string());
    if links {
        cmd.env(WORKER_LINK_ENV, "1");
    } else {
        // (This process may be a linked pool's worker itself.)
        cmd.env_remove(WORKER_LINK_ENV);
    }
    let json = core.config.job_codec == crate::frame::Codec::Json;
    let opts = ConnectOptions {
        role: Role::Supervisor,
        timeout: START_TIMEOUT,
        codec: core.config.job_codec,
        shared_memory: core.config.shared_memory,
        ..ConnectOptions::default()
    };
    // A process group of its own: the terminal's Ctrl-C, Ctrl-\ and Ctrl-Z
    // go to the foreground group, and the supervisor decides what its
    // workers do about them (README "signals"). The worker still dies
    // with its supervisor (EOF on its port, PR_SET_PDEATHSIG).
    let forward = shared.core.config.forward_stderr;
    let started = crate::child::start(cmd, &format!("worker {id}"), true, via, opts, forward);
    let (child, pid, stderr, mut ipc) = match started {
        Ok(s) => (s.child, s.pid, s.stderr, s.ipc),
        Err(crate::child::StartError::Spawn(e)) => {
            let what = match via {
                crate::child::Via::Inherit => {
                    format!("could not start worker {id} ({:?})", template.get_program())
                }
                crate::child::Via::Stdio => format!("could not start worker {id} through {}", slot.launcher),
            };
            return Err(BuildError::io(what, e));
        }
        Err(crate::child::StartError::Handshake {
            pid,
            error,
            status,
            stderr,
            ..
        }) => {
            return Err(start_failure(
                id,
                pid,
                &slot.launcher,
                if error.kind() == std::io::ErrorKind::TimedOut {
                    "did not say hello within 10 s (is it a program whose main calls \
                     portpool::worker::run or serve_if_worker?)"
                } else {
                    "did not complete its handshake"
                },
                Some(error),
                (&status, &stderr),
                limit,
            ));
        }
    };
    // A worker that fails before it serves: a moment to exit, then killed
    // and reaped, and why, leading with its own explanation if it gave one.
    let fail = |child: Child, what: String, e: Option<std::io::Error>| {
        let (status, tail) = crate::child::give_up(child, &stderr);
        start_failure(id, pid, &slot.launcher, &what, e, (&status, &tail), limit)
    };
    if ipc.peer_role() != Role::Worker {
        let role = ipc.peer_role();
        return Err(fail(
            child,
            format!("answered as {role:?}, not as a worker"),
            None,
        ));
    }
    // The pool's own connections do not keep a runtime alive; the pool does.
    ipc.set_keep_alive(false);
    let link = if links {
        match open_link(&ipc) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => return Err(fail(child, "did not open its link".into(), Some(e))),
        }
    } else {
        None
    };
    // The worker announces its routes before its first job: a worker built
    // from other code fails here, not at its first decode.
    let routes = if json {
        let mut buf = Vec::new();
        match ipc.recv_message_wait(&mut buf, crate::transport::Wait::timeout(START_TIMEOUT)) {
            Ok(true) => crate::proto::json::decode(&buf),
            Ok(false) => Err(format!("nothing came within {START_TIMEOUT:?}")),
            Err(e) => Err(e.to_string()),
        }
    } else {
        ipc.recv_timeout::<FromWorker>(START_TIMEOUT)
            .map_err(|e| e.to_string())
    };
    match routes {
        Ok(FromWorker::Routes { jobs_version, .. }) if jobs_version != crate::proto::JOBS_VERSION => {
            let what = format!(
                "speaks version {jobs_version} of the job messages, this supervisor {}: is it built with \
                 the same portpool?",
                crate::proto::JOBS_VERSION
            );
            return Err(fail(child, what, None));
        }
        Ok(FromWorker::Routes { routes, .. }) => {
            if let Err(why) = check_routes(shared, id, routes) {
                return Err(fail(child, why, None));
            }
        }
        Ok(other) => {
            let what = format!("sent {other:?} before announcing its routes");
            return Err(fail(child, what, None));
        }
        Err(e) => {
            let what = format!("did not announce its routes: {e}");
            return Err(fail(child, what, None));
        }
    }
    let transport = ipc.transport();
    log::debug!("worker {id} (pid {pid}): its connection is on {transport}");
    let (tx, rx) = ipc.split();
    Ok(Arc::new_cyclic(|me| Worker {
        id,
        transport,
        epoch,
        pid,
        tx,
        in_flight: AtomicUsize::new(0),
        alive: AtomicBool::new(true),
        pending: Mutex::new(HashMap::new()),
        child: Mutex::new(Some(child)),
        ended_by: Mutex::new(None),
        stderr,
        rx: crate::port::shared::SharedReceiver::new(rx, &format!("worker {id}")),
        me: me.clone(),
        core: core.clone(),
        max_in_flight,
        link,
        broke: Mutex::new(None),
        cut_short: Mutex::new(None),
        broken: AtomicBool::new(false),
        clock_waiting: AtomicBool::new(false),
        started: Instant::now(),
        jobs_done: AtomicU64::new(0),
        jobs_sent: AtomicU64::new(0),
        retiring: AtomicBool::new(false),
        stop_sent: AtomicBool::new(false),
        recycle_why: Mutex::new(None),
        local: slot.launcher.is_local(),
        idle_since: AtomicU64::new(core.clock()),
        leaving: AtomicBool::new(false),
        next_seq: AtomicU64::new(0),
    }))
}

/// Why worker `id` (process `pid`) failed to start: its own sentence if it
/// forgot `serve_if_worker`, else `what` with its status and its stderr's
/// telling line.
fn start_failure(
    id: usize,
    pid: u32,
    launcher: &Launcher,
    what: &str,
    e: Option<std::io::Error>,
    (status, tail): (&str, &[String]),
    limit: Option<u64>,
) -> BuildError {
    let pid = if launcher.is_local() {
        format!("pid {pid}")
    } else {
        format!("pid {pid}, through {launcher}")
    };
    let forgot = crate::pool::FORGOT_SERVE_IF_WORKER;
    if let Some(at) = tail.iter().find_map(|l| l.find(forgot).map(|i| &l[i..])) {
        return BuildError::new(format!("worker {id} ({pid}) could not start: {}", at.trim()));
    }
    let last = crate::stderr::last_meaningful(tail)
        .map(|l| format!("; its stderr ended with: {l}"))
        .unwrap_or_default();
    // Under an address-space limit too small for it, a process dies by a
    // signal (a failed mapping, an aborted allocation) before it can say
    // anything: name the likely cause.
    let limit = match limit {
        Some(bytes) if status.contains("signal") => format!(
            "; its memory_limit of {} may be too small for it to start",
            crate::pool::mib(bytes)
        ),
        _ => String::new(),
    };
    let what = format!("worker {id} ({pid}) {what} ({status}{last}{limit})");
    match e {
        Some(e) => BuildError::io(what, e),
        None => BuildError::new(what),
    }
}

/// Compares the routes worker `id` announced with the supervisor's own
/// handlers (if it has any) and with the first worker's.
pub(super) fn check_routes(shared: &Shared, id: usize, routes: Vec<RouteInfo>) -> Result<(), String> {
    let theirs: HashMap<String, RouteInfo> = routes.into_iter().map(|r| (r.name.clone(), r)).collect();
    for mine in shared.core.handlers.route_table() {
        match theirs.get(&mine.name) {
            None => {
                return Err(format!(
                    "has no handler for route {:?} ({}), which this supervisor registered: is it built \
                     from the same code?",
                    mine.name, mine.types
                ));
            }
            Some(t) if t.types_differ(&mine) => {
                return Err(format!(
                    "serves route {:?} as `{}`, but this supervisor registered it as `{}`: is it built \
                     from the same code?",
                    mine.name, t.types, mine.types
                ));
            }
            Some(_) => {}
        }
    }
    let first = shared.routes.get_or_init(|| theirs.clone());
    if *first != theirs {
        let mut names: Vec<&String> = theirs.keys().chain(first.keys()).collect();
        names.sort();
        names.dedup();
        let differs = names
            .into_iter()
            .find(|n| first.get(*n).map(|r| r.fingerprint) != theirs.get(*n).map(|r| r.fingerprint))
            .cloned()
            .unwrap_or_default();
        return Err(format!(
            "announced other routes than the pool's first worker (route {differs:?} differs): worker {id} \
             runs other code"
        ));
    }
    Ok(())
}

/// Sends a worker the other end of a new port over its job connection and
/// starts a conversation on ours (the worker connects its end at start).
pub(super) fn open_link(ipc: &crate::port::Ipc) -> std::io::Result<crate::link::Link> {
    let (ours, theirs) = port::open()?;
    ipc.send_port(theirs)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))?;
    let conn = ours.connect_with(ConnectOptions {
        role: Role::Supervisor,
        timeout: START_TIMEOUT,
        shared_memory: true,
        ..ConnectOptions::default()
    })?;
    let mut link = crate::link::Link::new(conn);
    link.close_ref();
    Ok(link)
}
