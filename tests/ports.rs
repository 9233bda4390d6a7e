//! Port pairs across threads and real child processes (the fixture worker).

mod common;

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::thread;

use common::{BOUND, Fixture, fixture};
use portpool::error::{RecvError, SendError};
use portpool::port::{self, Ipc, Port};
use portpool::transport::frame::Kind;
use serde::{Deserialize, Serialize};

/// Stress sizes; shrink with PORTPOOL_TEST_SMALL=1 for quick local runs.
fn many() -> u64 {
    if std::env::var_os("PORTPOOL_TEST_SMALL").is_some() {
        1_000
    } else {
        100_000
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Job {
    id: u64,
    name: String,
    data: Vec<u32>,
}

fn connect_pair() -> (Ipc, Ipc) {
    let (a, b) = port::open().unwrap();
    let t = thread::spawn(move || b.connect().unwrap());
    let a = a.connect().unwrap();
    (a, t.join().unwrap())
}

#[test]
fn round_trip_across_a_thread() {
    let (a, b) = port::open().unwrap();
    let peer = thread::spawn(move || {
        let mut b = b.connect().unwrap();
        let job: Job = b.recv().unwrap();
        b.send(&Job {
            id: job.id + 1,
            ..job
        })
        .unwrap();
    });
    let mut a = a.connect().unwrap();
    let job = Job {
        id: 1,
        name: "resize".into(),
        data: vec![1, 2, 3],
    };
    a.send(&job).unwrap();
    assert_eq!(a.recv::<Job>().unwrap(), Job { id: 2, ..job });
    peer.join().unwrap();
}

#[test]
fn many_messages_arrive_in_order_across_a_thread() {
    let n = many();
    let (a, b) = port::open().unwrap();
    let sender = thread::spawn(move || {
        let b = b.connect().unwrap();
        for i in 0..n {
            b.send(&i).unwrap();
        }
    });
    let mut a = a.connect().unwrap();
    for i in 0..n {
        assert_eq!(a.recv::<u64>().unwrap(), i);
    }
    sender.join().unwrap();
    assert!(matches!(a.recv::<u64>(), Err(RecvError::Disconnected)));
}

#[test]
fn round_trip_across_a_child_process() {
    let (f, mut ipc) = Fixture::connected("echo");
    for size in [0usize, 1, 64, 4096, 70_000] {
        let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        ipc.send_bytes(&msg).unwrap();
        assert_eq!(ipc.recv_bytes().unwrap(), msg, "size {size}");
    }
    drop(ipc);
    assert!(f.assert_gone().success());
}

#[test]
fn many_messages_arrive_in_order_from_a_child_process() {
    let n = many();
    let mut cmd = fixture("count");
    cmd.arg(n.to_string());
    let (f, mut ipc) = Fixture::connected_with(cmd);
    for i in 0..n {
        assert_eq!(ipc.recv::<u64>().unwrap(), i);
    }
    drop(ipc);
    assert!(f.assert_gone().success());
}

#[test]
fn a_64_mib_message_arrives_intact() {
    let (f, mut ipc) = Fixture::connected("echo");
    let msg: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    // Send from another thread: the echo fills both socket buffers long
    // before the whole message is written.
    let tx = ipc.sender().clone();
    let to_send = msg.clone();
    let writer = thread::spawn(move || tx.send_bytes(&to_send).unwrap());
    let back = ipc.recv_bytes().unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), msg.len());
    assert!(back == msg, "64 MiB message came back altered");
    drop(ipc);
    assert!(f.assert_gone().success());
}

#[test]
fn a_message_sent_just_before_the_sender_exits_is_received() {
    let (f, mut ipc) = Fixture::connected("send-and-exit");
    let pid = f.pid();
    let st = f.assert_gone();
    assert!(st.success(), "{st:?}");
    // The child is gone (reaped) before we read: the message was in the kernel.
    assert_eq!(ipc.recv::<String>().unwrap(), "sent just before exit");
    assert!(
        matches!(ipc.recv::<String>(), Err(RecvError::Disconnected)),
        "after pid {pid}"
    );
}

#[test]
fn a_port_passed_to_a_running_child_reaches_a_third_process() {
    // Child A is running and connected to us.
    let (a, mut to_a) = Fixture::connected("dial");
    // Child B gets one end of a fresh pair at spawn; A gets the other end
    // over its existing connection. A and B then talk without us.
    let (for_a, for_b) = port::open().unwrap();
    let b = Fixture::spawn(fixture("echo"), for_b);
    to_a.send_port(for_a).unwrap();
    let report: String = to_a.recv().unwrap();
    assert_eq!(report, format!("ping from {}", a.pid()));
    drop(to_a);
    assert!(a.assert_gone().success());
    assert!(b.assert_gone().success());
}

#[test]
fn the_child_inherits_its_port_and_stdio_and_nothing_else() {
    // An fd without close-on-exec, as careless code (or a jobserver) leaves.
    let file = std::fs::File::open("/proc/self/stat").unwrap();
    // SAFETY: dup of an fd we own; the new fd is owned by `leaky` below.
    let raw = unsafe { libc::dup(file.as_raw_fd()) };
    assert!(raw >= 0);
    // SAFETY: `raw` was just returned by dup and nothing else owns it.
    let leaky = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: F_GETFD on an fd we own.
    let flags = unsafe { libc::fcntl(leaky.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, 0, "the test fd must be inheritable");

    let (f, mut ipc) = Fixture::connected("list-fds");
    let (open, port_fds): (Vec<(i32, String)>, Vec<i32>) = ipc.recv().unwrap();
    let fds: BTreeSet<i32> = open.iter().map(|(fd, _)| *fd).collect();
    let mut expected: BTreeSet<i32> = [0, 1, 2].into();
    expected.extend(port_fds);
    assert_eq!(fds, expected, "child's open fds: {open:?}");
    drop(ipc);
    assert!(f.assert_gone().success());
}

#[test]
fn a_grandchild_that_inherits_the_environment_does_not_take_the_port() {
    let (f, mut ipc) = Fixture::connected("spawn-grandchild");
    let said: String = ipc.recv().unwrap();
    assert!(said.starts_with("refused (NotFound)"), "{said}");
    assert!(said.contains("inherited"), "{said}");
    drop(ipc);
    assert!(f.assert_gone().success());
}

#[test]
fn peer_sigkilled_while_we_block_in_recv_is_disconnected() {
    let (f, mut ipc) = Fixture::connected("idle");
    let pid = f.pid();
    let killer = thread::spawn(move || {
        f.signal(libc::SIGKILL);
        f
    });
    let res = ipc.recv_timeout::<u64>(BOUND);
    let f = killer.join().unwrap();
    assert!(
        matches!(&res, Err(e) if e.is_disconnected()),
        "expected Disconnected after SIGKILL of {pid}, got {res:?}"
    );
    let st = f.assert_gone();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
}

#[test]
fn pipe_ports_work_across_a_child_process() {
    let (ours, theirs) = port::open_pipes().unwrap();
    assert!(!ours.is_socket());
    let f = Fixture::spawn(fixture("echo"), theirs);
    let mut ipc = ours.connect().unwrap();
    for i in 0..100u32 {
        let msg = i.to_le_bytes().repeat(i as usize);
        ipc.send_bytes(&msg).unwrap();
        assert_eq!(ipc.recv_bytes().unwrap(), msg);
    }
    // Pipes cannot carry ports; the port comes back.
    let (p, _q) = port::open().unwrap();
    let err = ipc.send_port(p).unwrap_err();
    assert!(matches!(err.error, SendError::Unsupported(_)), "{err}");
    let _port_back: Port = err.port;
    drop(ipc);
    assert!(f.assert_gone().success());
}

#[test]
fn a_batch_costs_one_write() {
    let (a, mut b) = connect_pair();
    let before = a.stats();
    let msgs: Vec<u64> = (0..1000).collect();
    assert_eq!(a.send_batch(&msgs).unwrap(), 1000);
    let after = a.stats();
    assert_eq!(after.frames - before.frames, 1000);
    assert_eq!(after.writes - before.writes, 1);
    // feed then flush: one write too.
    for m in &msgs[..10] {
        a.feed(m).unwrap();
    }
    assert_eq!(a.stats().writes, after.writes, "feed must not write");
    a.flush().unwrap();
    assert_eq!(a.stats().writes, after.writes + 1);
    for i in (0..1000).chain(0..10) {
        assert_eq!(b.recv::<u64>().unwrap(), i);
    }
}

#[test]
fn concurrent_senders_keep_each_senders_order() {
    const THREADS: u64 = 4;
    let per = many() / 10;
    let (a, mut b) = connect_pair();
    let (tx, _rx) = a.split();
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..per {
                    tx.send(&(t, i)).unwrap();
                }
            })
        })
        .collect();
    let mut next = vec![0u64; THREADS as usize];
    for _ in 0..THREADS * per {
        let (t, i): (u64, u64) = b.recv().unwrap();
        assert_eq!(i, next[t as usize], "sender {t} out of order");
        next[t as usize] += 1;
    }
    for s in senders {
        s.join().unwrap();
    }
    let st = tx.stats();
    assert_eq!(st.frames, THREADS * per);
    assert!(st.writes <= st.frames);
}

#[test]
fn split_halves_work_from_two_threads_at_once() {
    let (a, mut b) = connect_pair();
    let (tx, mut rx) = a.split();
    let echo = thread::spawn(move || {
        while let Ok(v) = b.recv::<u32>() {
            b.send(&(v * 2)).unwrap();
        }
    });
    let reader = thread::spawn(move || (0..1000).map(|_| rx.recv::<u32>().unwrap()).sum::<u32>());
    for i in 0..1000u32 {
        tx.send(&i).unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0..1000u32).map(|i| i * 2).sum::<u32>());
    drop(tx);
    echo.join().unwrap();
}

#[test]
fn a_port_frame_is_not_lost_to_a_message_recv() {
    let (a, mut b) = connect_pair();
    let (p, q) = port::open().unwrap();
    a.send_port(p).unwrap();
    a.send(&5u8).unwrap();
    match b.recv::<u8>() {
        Err(RecvError::Unexpected {
            expected: Kind::Message,
            found: Kind::Port,
        }) => {}
        other => panic!("expected Unexpected, got {other:?}"),
    }
    let p = b.recv_port().unwrap();
    assert_eq!(b.recv::<u8>().unwrap(), 5);
    // The received port is live: it reaches `q`.
    let t = thread::spawn(move || q.connect().unwrap().send("through").unwrap());
    let mut p = p.connect().unwrap();
    assert_eq!(p.recv::<String>().unwrap(), "through");
    t.join().unwrap();
}

#[test]
fn an_unencodable_message_fails_alone() {
    struct Unsized;
    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            // A sequence of unknown length: postcard cannot encode it.
            let mut seq = s.serialize_seq(None)?;
            seq.serialize_element(&1u8)?;
            seq.end()
        }
    }
    let (a, mut b) = connect_pair();
    let err = a.send(&Unsized).unwrap_err();
    assert!(
        matches!(&err, SendError::Encode(e) if e.type_name().contains("Unsized")),
        "{err}"
    );
    a.send(&1u8).unwrap();
    assert_eq!(b.recv::<u8>().unwrap(), 1);
}

#[test]
fn a_message_over_the_limit_is_refused_before_sending() {
    let (mut a, mut b) = connect_pair();
    a.set_max_frame_len(100);
    let err = a.send(&vec![0u8; 200]).unwrap_err();
    assert!(matches!(err, SendError::TooLarge { limit: 100, .. }), "{err}");
    let err = a.send_bytes(&[0u8; 101]).unwrap_err();
    assert!(
        matches!(err, SendError::TooLarge { len: 101, limit: 100 }),
        "{err}"
    );
    a.send(&vec![1u8; 10]).unwrap();
    assert_eq!(b.recv::<Vec<u8>>().unwrap(), vec![1u8; 10]);
}

#[test]
fn a_wrong_type_is_a_decode_error_and_the_stream_goes_on() {
    let (a, mut b) = connect_pair();
    a.send("not a number").unwrap();
    a.send(&9u16).unwrap();
    match b.recv::<Job>() {
        Err(RecvError::Decode(e)) => assert!(e.type_name().ends_with("Job"), "{e}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(b.recv::<u16>().unwrap(), 9);
}

/// poll(2) on `fd` for readability, waiting at most `ms` milliseconds.
fn poll_readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, borrowed for the call; `fd` is open (the
    // caller's connection lives across the call).
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 1
}

// A connection's fd can be polled from a loop of one's own, with a child
// process as the peer: readable once frames arrived, drained with
// try_recv until Empty (the echo child sends back what it gets), readable
// again at the peer's end.
#[test]
fn a_connection_is_polled_from_a_loop_of_ones_own() {
    let (mut child, mut ipc) = Fixture::connected_on_socket("echo");
    let bound = BOUND.as_millis() as i32;
    for round in 0..3u32 {
        for i in 0..4u32 {
            ipc.send(&(round * 10 + i)).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 4 {
            assert!(
                poll_readable(ipc.as_raw_fd(), bound),
                "round {round}: nothing to read"
            );
            loop {
                match ipc.try_recv::<u32>() {
                    Ok(m) => got.push(m),
                    Err(portpool::error::TryRecvError::Empty) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let want: Vec<u32> = (0..4).map(|i| round * 10 + i).collect();
        assert_eq!(got, want);
    }
    let (_tx, mut rx) = ipc.split();
    use std::os::fd::AsFd;
    let fd = rx.as_fd().as_raw_fd();
    child.signal(libc::SIGKILL);
    assert!(poll_readable(fd, bound), "the peer's end does not poll readable");
    match rx.try_recv::<u32>() {
        Err(e) => assert!(e.is_disconnected(), "{e}"),
        Ok(m) => panic!("a message after the end: {m}"),
    }
    child.wait();
    common::assert_pid_gone(child.pid());
}
