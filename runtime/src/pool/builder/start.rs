//! `PoolBuilder::build`: what it refuses (settings that cannot work
//! together), then the pool's shared state, its workers and its monitor.

use super::*;

impl PoolBuilder {
    /// Starts the workers.
    ///
    /// In a process that was started as a pool's worker and has not called
    /// `portpool::worker::serve_if_worker`, building a process pool of its
    /// own executable means the call was forgotten: the worker would run
    /// the program and start workers of itself. There the build prints
    /// "this process was started as a portpool worker but did not call
    /// portpool::worker::serve_if_worker at the top of main" and ends the
    /// process (status 1) before starting anything; the supervisor's
    /// `build()` then fails with that sentence. A thread pool, or a pool of
    /// another program, built before serving is fine. Also fails when the handlers register two
    /// job types under one route name.
    pub fn build(mut self) -> Result<Pool, BuildError> {
        if !self.launches.is_empty() {
            match self.kind {
                None => self.kind = Some(Kind::Processes(0)),
                Some(Kind::Threads(_)) => {
                    return Err(BuildError::new(
                        "launch(..) starts process workers; it cannot be combined with .threads(n)",
                    ));
                }
                Some(Kind::Processes(_)) => {}
            }
            if let Some(m) = self.launches.iter().find_map(|(l, _)| l.misuse()) {
                return Err(BuildError::new(m));
            }
            if self.worker_links && self.launches.iter().any(|(l, n)| !l.is_local() && *n > 0) {
                return Err(BuildError::new(
                    "worker_links(true) needs every worker on a local socket: a launcher's pipes cannot \
                     carry the link's port",
                ));
            }
        }
        if self.job_codec != crate::frame::Codec::Postcard {
            if matches!(self.kind, Some(Kind::Threads(_))) {
                return Err(BuildError::new(
                    "job_codec(..) is for process workers: a thread pool moves jobs as Rust values",
                ));
            }
            if self.worker_links {
                return Err(BuildError::new(
                    "worker_links(true) needs workers built with portpool; a JSON pool's workers speak \
                     only the job messages",
                ));
            }
        }
        if matches!(self.kind, Some(Kind::Processes(_))) {
            super::guard::exit_if_unserved_worker(self.command.as_ref());
        }
        let kind = self
            .kind
            .ok_or_else(|| BuildError::new("choose .threads(n) or .processes(n)"))?;
        if self.recycle.jobs == Some(0) {
            return Err(BuildError::new(
                "recycle_after_jobs(0) would replace a worker before its first job: give at least 1",
            ));
        }
        if matches!(kind, Kind::Threads(_)) {
            if self.recycle.memory.is_some() {
                return Err(BuildError::new(
                    "recycle_above_memory applies to process workers: threads share this process's memory",
                ));
            }
            if self.recycle.limit.is_some() {
                return Err(BuildError::new(
                    "memory_limit applies to process workers: threads share this process's memory",
                ));
            }
        }
        if let Some(h) = &self.handlers {
            h.check().map_err(BuildError::new)?;
        }
        let launched: usize = self.launches.iter().map(|(_, n)| n).sum();
        let n = match kind {
            Kind::Threads(n) => n,
            Kind::Processes(n) => n + launched,
        };
        if n == 0 {
            return Err(BuildError::new("a pool needs at least one worker"));
        }
        if let Some(p) = self.restart {
            // Within a zero window no restart is ever counted: a worker that
            // crashes at once would be restarted for ever, with no backoff.
            if p.max_restarts > 0 && p.period.is_zero() {
                return Err(BuildError::new(format!(
                    "RestartPolicy {{ max_restarts: {}, period: 0s, .. }} would never count a restart, so a \
                     crash loop would never stop: give a period above zero (or RestartPolicy::never())",
                    p.max_restarts
                )));
            }
        }
        let scale = match self.min_workers {
            Some(0) => {
                return Err(BuildError::new(
                    "min_workers(0): a pool keeps at least one worker up (it checks its workers at build)",
                ));
            }
            Some(min) if min > n => {
                return Err(BuildError::new(format!(
                    "min_workers({min}) is more than the {n} worker(s) the pool may have: min must not \
                     exceed max"
                )));
            }
            Some(min) if min < n => Some(scale::Scale::new(
                min,
                n,
                self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            )),
            _ => None,
        };
        let handlers = self.handlers.unwrap_or_default();
        let queue_limit = self.queue_limit.unwrap_or(1024);
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(queue_limit);
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let graces = Graces {
            cancel: self.cancel_grace.unwrap_or(DEFAULT_CANCEL_GRACE),
            term: TERM_GRACE,
        };
        let core = Arc::new(Core {
            queue_limit,
            free: processes::FreeGate::default(),
            queue_tx,
            queue_rx,
            saturated: AtomicBool::new(false),
            requeue: Mutex::new(VecDeque::new()),
            requeued: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
            suspend_gate: (Mutex::new(()), Condvar::new()),
            failure: Mutex::new(None),
            next_id: AtomicU64::new(1),
            counters: (0..n).map(|_| WorkerCounters::default()).collect(),
            cancelled: AtomicU64::new(0),
            failed_elsewhere: AtomicU64::new(0),
            killed_by_shutdown: AtomicUsize::new(0),
            idle: Idle::default(),
            control: control_tx.clone(),
            config: Config {
                restart: self.restart.unwrap_or_default(),
                job_timeout: self.job_timeout,
                queue_timeout: self.queue_timeout,
                retries: self.retries,
                per_route: self.per_route,
                on_event: self.on_event,
                recycle: self.recycle,
                metrics: self.metrics.unwrap_or(false),
                forward_stderr: !self.quiet_stderr,
                shared_memory: !self.socket_only,
                job_codec: self.job_codec,
            },
            handlers: handlers.clone(),
            metrics: std::sync::OnceLock::new(),
            exits: Mutex::new(VecDeque::new()),
            born: Instant::now(),
            ranked: ranked::Ranked::new(self.priority_aging.unwrap_or(DEFAULT_PRIORITY_AGING)),
            scale,
        });
        let inflight = self.inflight.unwrap_or(4);
        let inflight_remote = self.inflight.unwrap_or(REMOTE_IN_FLIGHT);
        let backend = match kind {
            Kind::Threads(n) => Backend::Threads(threads::Threads::spawn(core.clone(), handlers, n)?),
            Kind::Processes(local) => {
                let spec = |launcher: &Launcher| processes::SlotSpec {
                    max_in_flight: if launcher.is_local() {
                        inflight
                    } else {
                        inflight_remote
                    },
                    launcher: launcher.clone(),
                };
                let here = Launcher::local();
                let mut slots: Vec<_> = (0..local).map(|_| spec(&here)).collect();
                for (l, k) in &self.launches {
                    slots.extend((0..*k).map(|_| spec(l)));
                }
                let command = match self.command {
                    Some(c) => c,
                    None => {
                        let exe = std::env::current_exe()
                            .map_err(|e| BuildError::io("cannot find this executable to re-run", e))?;
                        Command::new(exe)
                    }
                };
                Backend::Processes(processes::Processes::spawn(
                    core.clone(),
                    command,
                    slots,
                    self.worker_links,
                )?)
            }
        };
        if core.config.metrics {
            // The routes are known now: the handlers', and those the
            // process workers announced.
            let mut names: Vec<String> = handlers_names(&core);
            if let Backend::Processes(p) = &backend {
                names.extend(p.route_names());
            }
            let _ = core
                .metrics
                .set(metrics::Metrics::new(names, core.counters.len()));
        }
        let target = backend.supervised();
        let core2 = core.clone();
        let thread = std::thread::Builder::new()
            .name("portpool-monitor".into())
            .spawn(move || monitor::run(control_rx, target, core2, graces));
        let thread = match thread {
            Ok(h) => h,
            Err(e) => {
                let inner = PoolInner {
                    core,
                    backend,
                    window: 1,
                    monitor: Mutex::new(MonitorHandle {
                        tx: control_tx,
                        thread: None,
                    }),
                    report: Mutex::new(None),
                    rt_ref: RefCount::detached(),
                    chunk_hints: Mutex::default(),
                };
                inner.shutdown(Shutdown::immediate());
                return Err(BuildError::io("could not start the pool's monitor thread", e));
            }
        };
        let window = match kind {
            Kind::Threads(n) => 4 * n,
            Kind::Processes(local) => 2 * (local * inflight + launched * inflight_remote),
        }
        .max(2);
        let rt = self.runtime.unwrap_or_else(|| Runtime::global().clone());
        let inner = Arc::new(PoolInner {
            core,
            backend,
            window,
            monitor: Mutex::new(MonitorHandle {
                tx: control_tx,
                thread: Some(thread),
            }),
            report: Mutex::new(None),
            rt_ref: rt.new_ref(),
            chunk_hints: Mutex::default(),
        });
        let managed: Arc<dyn crate::runtime::Managed> = inner.clone();
        rt.attach_pool(Arc::downgrade(&managed));
        Ok(Pool { inner })
    }
}
