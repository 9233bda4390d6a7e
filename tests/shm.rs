//! Connections moved to shared memory: two real processes (the fixture)
//! or two threads, the rings' edge cases, a peer that dies or lies, and
//! what is refused.

mod common;

use std::thread;

use common::{Fixture, assert_pid_gone, fixture};
use portpool::error::SendError;
use portpool::port::{self, ConnectOptions, Ipc};
use portpool::transport::frame::Role;

/// Willing to move to shared memory, and the one that makes the segment
/// (a supervisor, against the fixture's worker role).
fn shm() -> ConnectOptions {
    ConnectOptions {
        shared_memory: true,
        role: Role::Supervisor,
        ..ConnectOptions::default()
    }
}

/// Two ends in this process, both willing.
fn shm_pair() -> (Ipc, Ipc) {
    let (a, b) = port::open().unwrap();
    let peer = ConnectOptions {
        role: Role::Peer,
        ..shm()
    };
    let t = thread::spawn(move || b.connect_with(peer).unwrap());
    let a = a.connect_with(shm()).unwrap();
    (a, t.join().unwrap())
}

/// A fixture child in `mode`, connected over shared memory.
fn shm_fixture(mode: &str) -> (Fixture, Ipc) {
    let (ours, theirs) = port::open().unwrap();
    let f = Fixture::spawn(fixture(mode), theirs);
    let ipc = ours.connect_with(shm()).unwrap();
    (f, ipc)
}

#[test]
fn two_willing_ends_move_to_shared_memory_and_talk() {
    let (mut a, mut b) = shm_pair();
    assert_eq!(a.transport(), "shared memory");
    assert_eq!(b.transport(), "shared memory");
    for i in 0..1000u64 {
        a.send(&i).unwrap();
        assert_eq!(b.recv::<u64>().unwrap(), i);
        b.send(&(i * 2)).unwrap();
        assert_eq!(a.recv::<u64>().unwrap(), i * 2);
    }
}

#[test]
fn one_unwilling_end_keeps_both_on_the_socket() {
    // Either end may be the unwilling one (and either may be the one that
    // would make the segment: the supervisor role makes it).
    let unwilling = ConnectOptions {
        shared_memory: false,
        ..ConnectOptions::default()
    };
    for (opts_a, opts_b) in [(shm(), unwilling), (unwilling, shm())] {
        for role in [port::Role::Supervisor, port::Role::Peer] {
            let (a, b) = port::open().unwrap();
            let t = thread::spawn(move || b.connect_with(opts_b).unwrap());
            let a = a.connect_with(ConnectOptions { role, ..opts_a }).unwrap();
            let mut b = t.join().unwrap();
            assert_eq!(a.transport(), "socket");
            assert_eq!(b.transport(), "socket");
            a.send(&7u8).unwrap();
            assert_eq!(b.recv::<u8>().unwrap(), 7);
        }
    }
}

#[test]
fn a_child_echoes_over_shared_memory() {
    let (mut f, mut ipc) = shm_fixture("echo");
    assert_eq!(ipc.transport(), "shared memory");
    for len in [0usize, 1, 63, 64, 4095, 4096, 70_000, 300_000, 3 << 20] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        ipc.send_bytes(&msg).unwrap();
        assert_eq!(ipc.recv_bytes().unwrap(), msg, "len {len}");
    }
    drop(ipc);
    assert!(f.wait().success());
}

#[test]
fn a_hundred_thousand_messages_arrive_in_order() {
    let n = 100_000u64;
    let mut cmd = fixture("count");
    cmd.arg(n.to_string());
    let (ours, theirs) = port::open().unwrap();
    let mut f = Fixture::spawn(cmd, theirs);
    let mut ipc = ours.connect_with(shm()).unwrap();
    assert_eq!(ipc.transport(), "shared memory");
    for i in 0..n {
        assert_eq!(ipc.recv::<u64>().unwrap(), i);
    }
    drop(ipc);
    assert!(f.wait().success());
    assert_pid_gone(f.pid());
}

#[test]
fn big_messages_cross_both_ways_at_once_through_small_rings() {
    // Each message is 256 times the ring; the child echoes the first while
    // we still write the second, so both rings are full at the same time.
    let (mut f, ipc) = shm_fixture("echo");
    let (tx, mut rx) = ipc.split();
    let msgs: Vec<Vec<u8>> = (0..2u8)
        .map(|k| {
            (0..(64usize << 20))
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(k))
                .collect()
        })
        .collect();
    let sent = msgs.clone();
    let writer = thread::spawn(move || {
        for m in &sent {
            tx.send_bytes(m).unwrap();
        }
        tx
    });
    for m in &msgs {
        assert!(rx.recv_bytes().unwrap() == *m, "an echo differs");
    }
    drop(writer.join().unwrap());
    drop(rx);
    assert!(f.wait().success());
}

#[test]
fn a_peer_killed_while_we_sleep_in_recv_is_seen() {
    let (mut f, mut ipc) = shm_fixture("idle");
    let reader = thread::spawn(move || ipc.recv::<u64>());
    // The reader sleeps (or spins) on the rings; the kill wakes it.
    f.signal(libc::SIGKILL);
    match reader.join().unwrap() {
        Err(e) => assert!(e.is_disconnected(), "{e}"),
        Ok(m) => panic!("a message from a killed peer: {m}"),
    }
    f.wait();
    assert_pid_gone(f.pid());
}

#[test]
fn a_writer_blocked_on_a_full_ring_fails_when_the_peer_is_killed() {
    let (mut f, ipc) = shm_fixture("idle");
    let (tx, _rx) = ipc.split();
    // The idle child never reads: 16 MiB cannot fit a 256 KiB ring.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let writer = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        tx.send_bytes(&vec![7u8; 16 << 20])
    });
    // Wait until the writer has filled the ring and sleeps (it cannot
    // finish while the child lives), then kill the child.
    wait_until_asleep(&format!("/proc/self/task/{}/stat", tid_rx.recv().unwrap()));
    assert!(
        !writer.is_finished(),
        "the writer finished against a peer that never reads"
    );
    f.signal(libc::SIGKILL);
    match writer.join().unwrap() {
        Err(SendError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    f.wait();
    assert_pid_gone(f.pid());
}

/// Waits (bounded) until the thread whose `stat` is at `path` sleeps.
fn wait_until_asleep(path: &str) {
    let deadline = std::time::Instant::now() + common::BOUND;
    loop {
        let stat = std::fs::read_to_string(path).unwrap();
        if stat[stat.rfind(')').unwrap() + 2..].starts_with('S') {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the thread never slept");
        thread::yield_now();
    }
}

#[test]
fn messages_published_just_before_the_peer_exits_arrive_then_the_end() {
    let (mut f, mut ipc) = shm_fixture("send-and-exit");
    assert_eq!(ipc.recv::<String>().unwrap(), "sent just before exit");
    match ipc.recv::<String>() {
        Err(e) => assert!(e.is_disconnected(), "{e}"),
        Ok(m) => panic!("unexpected {m}"),
    }
    assert!(f.wait().success());
}

#[test]
fn a_port_travels_over_a_shared_memory_connection() {
    // The child takes a fresh port over the rings (its fd on the socket
    // beside them), connects it, pings us on it and reports the answer.
    let (mut f, mut ipc) = shm_fixture("dial");
    let (mine, theirs) = port::open().unwrap();
    ipc.send_port(theirs).unwrap();
    let mut direct = mine.connect().unwrap();
    let ping = direct.recv_bytes().unwrap();
    assert!(String::from_utf8_lossy(&ping).starts_with("ping from "));
    direct.send_bytes(b"pong").unwrap();
    assert_eq!(ipc.recv::<String>().unwrap(), "pong");
    drop(ipc);
    assert!(f.wait().success());
}

#[test]
fn a_peer_that_writes_an_impossible_position_breaks_only_its_connection() {
    for (what, check) in [
        ("tail", "impossible ring position"),
        ("bytes", "over the connection's limit"),
    ] {
        let mut cmd = fixture("scribble");
        cmd.arg(what);
        let (ours, theirs) = port::open().unwrap();
        let mut f = Fixture::spawn(cmd, theirs);
        let mut ipc = ours.connect_with(shm()).unwrap();
        let e = ipc.recv_bytes().unwrap_err();
        assert!(!e.is_disconnected(), "{what}: the lie read as a clean end: {e}");
        assert!(e.to_string().contains(check), "{what}: {e}");
        // And it stays broken, saying so.
        assert!(ipc.recv_bytes().is_err());
        f.wait();
        assert_pid_gone(f.pid());
    }
}

#[test]
fn a_peer_that_lies_about_what_it_read_fails_our_writer() {
    let mut cmd = fixture("scribble");
    cmd.arg("head");
    let (ours, theirs) = port::open().unwrap();
    let mut f = Fixture::spawn(cmd, theirs);
    let ipc = ours.connect_with(shm()).unwrap();
    // Fill the ring; the next look at the peer's position finds the lie.
    let mut failed = None;
    for _ in 0..64 {
        if let Err(e) = ipc.send_bytes(&vec![1u8; 64 << 10]) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("sends kept succeeding into a full ring");
    assert!(e.to_string().contains("impossible ring position"), "{e}");
    f.signal(libc::SIGKILL);
    f.wait();
    assert_pid_gone(f.pid());
}

#[test]
fn a_child_told_to_stay_on_the_socket_talks_over_the_socket() {
    let mut cmd = fixture("echo");
    cmd.env(port::TRANSPORT_ENV, "socket");
    let (ours, theirs) = port::open().unwrap();
    let mut f = Fixture::spawn(cmd, theirs);
    let mut ipc = ours.connect_with(shm()).unwrap();
    assert_eq!(ipc.transport(), "socket");
    ipc.send_bytes(b"hi").unwrap();
    assert_eq!(ipc.recv_bytes().unwrap(), b"hi");
    drop(ipc);
    assert!(f.wait().success());
}

/// CPU ticks (user + system) a process or thread has used, from `stat`.
fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_shared_memory_connection_uses_no_cpu() {
    let (mut f, mut ipc) = shm_fixture("idle");
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        ipc.recv::<u64>()
    });
    let tid = tid_rx.recv().unwrap();
    let ours = format!("/proc/self/task/{tid}/stat");
    let theirs = format!("/proc/{}/stat", f.pid());
    // Past the spin: both sides asleep from here on.
    wait_until_asleep(&ours);
    wait_until_asleep(&theirs);
    let before = (cpu_ticks(&ours), cpu_ticks(&theirs));
    thread::sleep(std::time::Duration::from_millis(500));
    let after = (cpu_ticks(&ours), cpu_ticks(&theirs));
    // A tick is 10 ms: a connection that polled or spun would use many.
    assert!(
        after.0 - before.0 <= 1,
        "the waiting reader used {} ticks",
        after.0 - before.0
    );
    assert!(
        after.1 - before.1 <= 1,
        "the idle child used {} ticks",
        after.1 - before.1
    );
    f.signal(libc::SIGKILL);
    assert!(reader.join().unwrap().is_err());
    f.wait();
    assert_pid_gone(f.pid());
}

#[test]
fn a_side_that_cannot_use_shared_memory_sends_the_hello_of_before() {
    // Bytes 12..16 stay zero unless this side offers shared memory, so a
    // peer built before the flags existed still accepts the hello.
    use std::io::{Read, Write};
    let (mut raw, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    let port = port::Port::from_socket(std::os::fd::OwnedFd::from(ours));
    let plain = ConnectOptions {
        shared_memory: false,
        ..ConnectOptions::default()
    };
    let t = thread::spawn(move || port.connect_with(plain).map(drop));
    let mut hello = [0u8; 16];
    raw.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[12..], &[0, 0, 0, 0], "{hello:?}");
    raw.write_all(&hello).unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn a_pool_says_which_transport_each_worker_uses() {
    for (on, want) in [(true, "shared memory"), (false, "socket")] {
        let pool = portpool::Pool::builder()
            .processes(1)
            .worker_command(fixture("pool-worker"))
            .shared_memory(on)
            .build()
            .unwrap();
        // (Up once it has said hello and announced its routes.)
        let deadline = std::time::Instant::now() + common::BOUND;
        while pool.stats().workers[0].transport.is_empty() {
            assert!(std::time::Instant::now() < deadline, "the worker never came up");
            thread::yield_now();
        }
        assert_eq!(pool.stats().workers[0].transport, want);
        drop(pool);
    }
    let threads = portpool::Pool::builder().threads(1).build().unwrap();
    assert_eq!(threads.stats().workers[0].transport, "in-process");
}
