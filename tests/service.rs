//! `Service`: one worker serving many clients, with real processes.

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use common::{BOUND, Fixture, assert_pid_gone, fixture};
use jobs::*;
use portpool::JobError;
use portpool::service::{Service, ServiceClient};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portpool-service-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for_file(p: &std::path::Path) {
    let deadline = Instant::now() + BOUND;
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Starts a client process with a port to `service`.
fn client(service: &Service, args: &[&str]) -> Fixture {
    let mut cmd = fixture("service-client");
    cmd.args(args).stdout(Stdio::piped());
    Fixture::spawn(cmd, service.client_port().unwrap())
}

fn output(mut f: Fixture) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut out = String::new();
    if let Some(mut o) = f.child.stdout.take() {
        o.read_to_string(&mut out).unwrap();
    }
    (f.assert_gone(), out)
}

#[test]
fn eight_clients_and_one_killed_mid_call_the_others_complete() {
    let dir = scratch("eight");
    let (touch, gate) = (dir.join("touched"), dir.join("gate"));
    let mut service = Service::process(fixture("service")).unwrap();
    let service_pid = service.id().unwrap();
    let victim = client(
        &service,
        &["touch", touch.to_str().unwrap(), gate.to_str().unwrap()],
    );
    wait_for_file(&touch); // its call is running in the service
    let others: Vec<Fixture> = (0..7).map(|_| client(&service, &["50"])).collect();
    victim.signal(libc::SIGKILL);
    for o in others {
        let (st, out) = output(o);
        assert!(st.success(), "{out}");
        assert_eq!(out.trim(), "ok 42925"); // 1² + ... + 50²
    }
    let st = victim.assert_gone();
    assert_eq!(st.code(), None);
    // The service still serves, here too, while the killed client's call
    // is still stuck in its handler.
    let c = service.connect().unwrap();
    assert_eq!(c.call(&Square(12)).unwrap(), 144);
    std::fs::write(&gate, b"open").unwrap();
    drop(c);
    service.stop();
    assert_pid_gone(service_pid);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_sending_garbage_loses_only_its_own_connection() {
    let mut service = Service::process(fixture("service")).unwrap();
    let pid = service.id().unwrap();
    let good = service.connect().unwrap();
    let bad = service.client_port().unwrap().connect().unwrap();
    bad.send_bytes(&[0xff; 40]).unwrap();
    // The bad connection is closed by the service.
    let mut bad = bad;
    assert!(bad.recv_bytes().is_err());
    assert_eq!(good.call(&Square(9)).unwrap(), 81);
    match good.call(&Boom("inside the service".into())) {
        Err(JobError::Panicked { message }) => assert_eq!(message, "inside the service"),
        other => panic!("expected a panic, got {other:?}"),
    }
    drop(good);
    service.stop();
    assert_pid_gone(pid);
}

#[test]
fn a_thread_service_serves_clients_on_other_threads() {
    let service = Service::threads(jobs::handlers()).unwrap();
    std::thread::scope(|s| {
        for i in 0..4u64 {
            let port = service.client_port().unwrap();
            s.spawn(move || {
                let c = ServiceClient::connect(port).unwrap();
                assert_eq!(c.call(&Square(i)).unwrap(), i * i);
            });
        }
    });
}

#[test]
fn a_port_to_the_service_sent_over_a_connection_lets_a_worker_call_it_directly() {
    let mut service = Service::process(fixture("service")).unwrap();
    let pid = service.id().unwrap();
    // The port travels over an existing connection (SCM_RIGHTS) and is
    // connected on the other side, which then calls the service process
    // directly. (The eight-clients test does the same across processes,
    // with the port passed at spawn.)
    let (a, b) = portpool::port::open().unwrap();
    let relay = std::thread::spawn(move || {
        let mut ipc = b.connect().unwrap();
        let port = ipc.recv_port().unwrap();
        let c = ServiceClient::connect(port).unwrap();
        c.call(&Square(7)).unwrap()
    });
    let ipc = a.connect().unwrap();
    ipc.send_port(service.client_port().unwrap()).unwrap();
    assert_eq!(relay.join().unwrap(), 49);
    drop(ipc);
    service.stop();
    assert_pid_gone(pid);
}
