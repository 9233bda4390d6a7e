//! One worker serving many clients: a [`Service`] runs [`Handlers`] in a
//! thread or in a child process, and each client talks to it over a
//! connection of its own. A client that dies or sends garbage loses its own
//! connection; the others do not notice.
//!
//! A client's port can be handed to another process (with
//! [`Port::pass_to`] or over an existing connection with
//! [`Ipc::send_port`](crate::port::Ipc::send_port)), which then calls the
//! service directly, without the supervisor relaying.

use std::fmt;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::job::{CancelSource, Context, Failure, Handlers, Job, JobError, Side};
use crate::link::{Link, LinkError};
use crate::port::{self, ConnectOptions, Ipc, Port, Role};
use crate::stderr::StderrTail;
use crate::util::lock;

/// A call to a service: the job's route and its postcard bytes.
#[derive(Serialize, Deserialize)]
struct Call {
    route: String,
    #[serde(with = "serde_bytes")]
    job: Vec<u8>,
}

/// A service's answer: the postcard bytes of `Result<J::Output, J::Error>`,
/// or why there is none.
#[derive(Serialize, Deserialize)]
enum Answer {
    Ran(#[serde(with = "serde_bytes")] Vec<u8>),
    Failed(Failure),
}

// One per service, made once and never moved on a hot path: its size is no cost.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Thread {
        ports: Option<Sender<Port>>,
        acceptor: Option<JoinHandle<()>>,
    },
    Process {
        control: Mutex<Option<Ipc>>,
        child: Mutex<Option<Child>>,
        stderr: Arc<StderrTail>,
    },
}

/// A worker that serves many clients at once, each on its own connection.
pub struct Service {
    kind: Kind,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Thread { .. } => "thread",
            Kind::Process { .. } => "process",
        };
        f.debug_struct("Service")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// Serves one client's connection until it closes or breaks.
fn serve_client(port: Port, handlers: Handlers) {
    let ipc = match port.connect() {
        Ok(ipc) => ipc,
        Err(e) => {
            log::warn!("a service client did not complete its handshake: {e}");
            return;
        }
    };
    let mut link = Link::new(ipc);
    link.close_ref();
    link.on_request(move |call: Call| {
        let cx = Context::new(0, CancelSource::Never, crate::job::ProgressSink::Discard);
        Ok(match handlers.call_bytes(&call.route, &call.job, &cx) {
            Ok(bytes) => Answer::Ran(bytes),
            Err(f) => Answer::Failed(f),
        })
    });
    link.wait_closed();
}

/// Accepts client ports and serves each on its own threads.
fn accept(ports: impl Iterator<Item = Port>, handlers: &Handlers) {
    for port in ports {
        let h = handlers.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("portpool-service-client".into())
            .spawn(move || serve_client(port, h))
        {
            log::error!("could not start a thread for a service client: {e}");
        }
    }
}

impl Service {
    /// A service running `handlers` in this process, on threads.
    pub fn threads(handlers: Handlers) -> io::Result<Service> {
        let (tx, rx) = crossbeam_channel::unbounded::<Port>();
        let acceptor = std::thread::Builder::new()
            .name("portpool-service".into())
            .spawn(move || accept(rx.into_iter(), &handlers))?;
        Ok(Service {
            kind: Kind::Thread {
                ports: Some(tx),
                acceptor: Some(acceptor),
            },
        })
    }

    /// A service in a child process running `command`, a binary whose
    /// `main` calls `portpool::worker::serve_service(handlers)`. Its stderr
    /// is passed through. Like a pool's process worker, it starts in a
    /// process group of its own, so the terminal's Ctrl-C reaches only this
    /// process, which decides (it still exits when this process is gone).
    pub fn process(command: Command) -> io::Result<Service> {
        let opts = ConnectOptions {
            role: Role::Supervisor,
            shared_memory: true,
            ..ConnectOptions::default()
        };
        let started =
            match crate::child::start(command, "service", true, crate::child::Via::Inherit, opts, true) {
                Ok(s) => s,
                Err(crate::child::StartError::Spawn(e)) => return Err(e),
                Err(crate::child::StartError::Handshake {
                    error,
                    status,
                    stderr,
                    ..
                }) => {
                    let last = crate::stderr::last_meaningful(&stderr).unwrap_or_default();
                    return Err(io::Error::new(
                        error.kind(),
                        format!("the service did not complete its handshake ({status}; {last}): {error}"),
                    ));
                }
            };
        let (child, stderr, control) = (started.child, started.stderr, started.ipc);
        control.set_keep_alive(false);
        Ok(Service {
            kind: Kind::Process {
                control: Mutex::new(Some(control)),
                child: Mutex::new(Some(child)),
                stderr,
            },
        })
    }

    /// A port whose other end the service now serves. Connect it here
    /// with [`ServiceClient::connect`], or hand it to another thread or
    /// process (moved, passed to a child, or sent over a connection) that
    /// connects it there.
    pub fn client_port(&self) -> io::Result<Port> {
        let (client, served) = port::open()?;
        match &self.kind {
            Kind::Thread { ports, .. } => ports
                .as_ref()
                .and_then(|p| p.send(served).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the service has stopped"))?,
            Kind::Process { control, .. } => {
                let c = lock(control);
                let c = c
                    .as_ref()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the service has stopped"))?;
                c.send_port(served).map_err(|e| {
                    io::Error::new(io::ErrorKind::BrokenPipe, format!("the service is gone: {e}"))
                })?;
            }
        }
        Ok(client)
    }

    /// A new client of this service, connected here.
    pub fn connect(&self) -> io::Result<ServiceClient> {
        ServiceClient::connect(self.client_port()?)
    }

    /// The service process's id (process services).
    pub fn id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Process { child, .. } => lock(child).as_ref().map(Child::id),
            Kind::Thread { .. } => None,
        }
    }

    /// Stops taking new clients; clients already connected keep being
    /// served until they disconnect. A service process exits once its last
    /// client is gone; it is waited for (and killed past a few seconds).
    pub fn stop(&mut self) {
        match &mut self.kind {
            Kind::Thread { ports, acceptor } => {
                ports.take();
                if let Some(h) = acceptor.take() {
                    let _ = h.join();
                }
            }
            Kind::Process {
                control,
                child,
                stderr,
                ..
            } => {
                lock(control).take();
                if let Some(mut c) = lock(child).take() {
                    if let Ok((_, true)) = crate::child::wait_or_kill(&mut c, crate::supervisor::STOP_GRACE) {
                        log::warn!(
                            "the service process did not exit within {:?}; killed it",
                            crate::supervisor::STOP_GRACE
                        );
                    }
                    let _ = stderr.wait_lines();
                }
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves clients for a service's child process: takes the control port
/// from the environment, then serves every port the parent sends over it,
/// each on its own threads, until the parent goes away and the last client
/// is done.
pub fn serve_service_on(mut control: Ipc, handlers: &Handlers) -> io::Result<()> {
    let mut clients: Vec<JoinHandle<()>> = Vec::new();
    loop {
        match control.recv_port() {
            Ok(port) => {
                let h = handlers.clone();
                clients.retain(|c| !c.is_finished());
                clients.push(
                    std::thread::Builder::new()
                        .name("portpool-service-client".into())
                        .spawn(move || serve_client(port, h))?,
                );
            }
            Err(e) if e.is_disconnected() => break,
            Err(e) => return Err(e.into()),
        }
    }
    for c in clients {
        let _ = c.join();
    }
    Ok(())
}

/// A client of a [`Service`]: calls typed jobs on it.
#[derive(Debug)]
pub struct ServiceClient {
    link: Link,
}

impl ServiceClient {
    /// Connects a port given by [`Service::client_port`].
    pub fn connect(port: Port) -> io::Result<ServiceClient> {
        let mut link = Link::new(port.connect()?);
        link.close_ref();
        Ok(ServiceClient { link })
    }

    /// Connects the port this process was started with.
    pub fn from_env() -> io::Result<ServiceClient> {
        ServiceClient::connect(Port::from_env()?)
    }

    /// Runs `job` on the service and waits for its result. Several threads
    /// may call at once; the service answers them in the order they came.
    pub fn call<J: Job>(&self, job: &J) -> Result<J::Output, JobError<J::Error>> {
        let bytes = postcard::to_allocvec(job).map_err(|e| JobError::Codec {
            side: Side::Supervisor,
            reason: format!("could not encode a `{}` job: {e}", J::NAME),
        })?;
        let call = Call {
            route: J::NAME.to_string(),
            job: bytes,
        };
        let answer: Answer = self.link.request(&call).map_err(|e| match e {
            LinkError::Disconnected | LinkError::Broken(_) => JobError::WorkerExited {
                worker: 0,
                pid: None,
                status: Some(format!("the service connection ended: {e}")),
                stderr: Vec::new(),
            },
            e => JobError::Codec {
                side: Side::Supervisor,
                reason: e.to_string(),
            },
        })?;
        match answer {
            Answer::Ran(b) => match postcard::from_bytes::<Result<J::Output, J::Error>>(&b) {
                Ok(r) => r.map_err(JobError::Handler),
                Err(e) => Err(JobError::Codec {
                    side: Side::Supervisor,
                    reason: format!("could not decode the result of a `{}` job: {e}", J::NAME),
                }),
            },
            Answer::Failed(f) => Err(f.into_job_error()),
        }
    }
}
