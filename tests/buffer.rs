//! `Buffer`: bytes that cross to a real child process without a copy,
//! sealed on the way; what moves on threads; where it cannot go.

mod common;

use std::io::Write;

use common::{Fixture, assert_pid_gone};
use portpool::port::{self, Buffer, ConnectOptions};
use portpool::{Handlers, Pool};

fn filled(len: usize, seed: u8) -> Buffer {
    let mut b = Buffer::with_capacity(len / 2).unwrap();
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect();
    b.write_all(&bytes).unwrap();
    b
}

/// Both flavors that pass fds: the socket, and shared memory beside it.
fn each_flavor(body: impl Fn(&mut Fixture, &mut port::Ipc)) {
    for shm in [false, true] {
        let (ours, theirs) = port::open().unwrap();
        let mut f = Fixture::spawn(common::fixture("buffers"), theirs);
        let opts = ConnectOptions {
            shared_memory: shm,
            role: port::Role::Supervisor,
            ..ConnectOptions::default()
        };
        let mut ipc = ours.connect_with(opts).unwrap();
        body(&mut f, &mut ipc);
        drop(ipc);
        assert!(f.wait().success());
        assert_pid_gone(f.pid());
    }
}

#[test]
fn a_buffer_reaches_a_child_without_a_copy_and_one_comes_back() {
    each_flavor(|_, ipc| {
        for (i, len) in [0usize, 1, 4096, 100_000, 8 << 20].into_iter().enumerate() {
            let buf = filled(len, i as u8);
            let sum: u64 = buf.iter().map(|&b| u64::from(b)).sum();
            ipc.send(&(format!("#{i}"), &buf)).unwrap();
            let (label, n, their_sum, mapped, back): (String, u64, u64, bool, Buffer) = ipc.recv().unwrap();
            assert_eq!((label, n, their_sum), (format!("#{i}"), len as u64, sum));
            assert!(
                mapped,
                "len {len}: the child's bytes are not in the sender's memory file"
            );
            assert!(back.is_sealed());
            assert!(back.iter().eq(buf.iter().rev()), "len {len}: the reply differs");
        }
    });
}

#[test]
fn a_sent_buffer_is_read_only_for_its_sender() {
    each_flavor(|_, ipc| {
        let mut buf = filled(10_000, 1);
        assert!(!buf.is_sealed());
        buf.as_mut().unwrap()[0] = 99;
        ipc.send(&("x".to_string(), &buf)).unwrap();
        let _: (String, u64, u64, bool, Buffer) = ipc.recv().unwrap();
        assert!(buf.is_sealed());
        assert!(buf.as_mut().is_err());
        assert!(buf.write(b"more").is_err());
        assert!(buf.resize(1).is_err());
        assert_eq!(buf[0], 99, "its bytes are still readable");
    });
}

#[test]
fn a_buffer_cannot_go_where_no_fd_can_and_says_so() {
    let buf = filled(16, 0);
    // A pipe pair passes no fds.
    let (a, b) = port::open_pipes().unwrap();
    let t = std::thread::spawn(move || b.connect().unwrap());
    let a = a.connect().unwrap();
    let _b = t.join().unwrap();
    let e = a.send(&buf).unwrap_err();
    assert!(
        e.to_string()
            .contains("travels only in a message for a connection that passes fds"),
        "{e}"
    );
    assert!(
        !buf.is_sealed(),
        "a send that could not encode leaves it writable"
    );
    // Nor a format of one's own, either way.
    let e = serde_json::to_string(&buf).unwrap_err().to_string();
    assert!(e.contains("not over pipes"), "{e}");
    let e = serde_json::from_str::<Buffer>(r#"{"fd":0,"len":5}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("decoded only from a message received with Ipc::recv"),
        "{e}"
    );
    // Nor a Link over pipes, or one speaking JSON, with the same sentence.
    let (a, b) = port::open_pipes().unwrap();
    let t = std::thread::spawn(move || b.connect().unwrap());
    let link = portpool::link::Link::new(a.connect().unwrap());
    let _b = t.join().unwrap();
    let e = link.send_message(&buf).unwrap_err().to_string();
    assert!(e.contains("not over pipes"), "{e}");
    let json = ConnectOptions {
        codec: portpool::link::Codec::Json,
        ..ConnectOptions::default()
    };
    let (a, b) = port::open().unwrap();
    let t = std::thread::spawn(move || b.connect_with(json).unwrap());
    let link = portpool::link::Link::with_codec(a.connect_with(json).unwrap(), portpool::link::Codec::Json);
    let _b = t.join().unwrap();
    let e = link.request::<_, u32>(&buf).unwrap_err().to_string();
    assert!(e.contains("not over pipes"), "{e}");
    assert!(!buf.is_sealed());
}

#[test]
fn a_buffer_crosses_a_link_in_messages_requests_and_replies_on_both_flavors() {
    use portpool::link::Link;
    for shm in [false, true] {
        let (ours, theirs) = port::open().unwrap();
        let mut f = Fixture::spawn(common::fixture("link-buffers"), theirs);
        let opts = ConnectOptions {
            shared_memory: shm,
            role: port::Role::Supervisor,
            ..ConnectOptions::default()
        };
        let link = Link::new(ours.connect_with(opts).unwrap());
        assert_eq!(link.transport(), if shm { "shared memory" } else { "socket" });
        for (i, len) in [0usize, 1, 5000, 3 << 20].into_iter().enumerate() {
            let buf = filled(len, i as u8);
            let sum: u64 = buf.iter().map(|&b| u64::from(b)).sum();
            let (their_sum, mapped, back): (u64, bool, Buffer) = link.request(&buf).unwrap();
            assert_eq!(their_sum, sum);
            assert!(mapped, "len {len}: the peer's bytes are not in our memory file");
            assert!(buf.is_sealed() && back.is_sealed());
            assert!(back.iter().eq(buf.iter().rev()), "len {len}");
            link.send_message(&(format!("#{i}"), &buf)).unwrap();
            let echo: (String, u64, bool) = link.recv_message().unwrap();
            assert_eq!(echo, (format!("#{i}"), len as u64, true));
        }
        // Several requests in flight from threads at once, each answered
        // with its own buffer.
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let link = &link;
                s.spawn(move || {
                    for k in 0..10u8 {
                        let buf = filled(777 + usize::from(k), t * 16 + k);
                        let (_, _, back): (u64, bool, Buffer) = link.request(&buf).unwrap();
                        assert!(back.iter().eq(buf.iter().rev()));
                    }
                });
            }
        });
        drop(link);
        assert!(f.wait().success());
        assert_pid_gone(f.pid());
    }
}

#[test]
fn a_buffer_over_what_a_receiver_takes_is_refused_by_its_sender() {
    let (a, b) = port::open().unwrap();
    let t = std::thread::spawn(move || b.connect().unwrap());
    let a = a.connect().unwrap();
    let _b = t.join().unwrap();
    let big = Buffer::zeroed(port::MAX_RECEIVED_BUFFER + 1).unwrap();
    let e = a.send(&big).unwrap_err().to_string();
    assert!(e.contains("over the 1073741824 bytes a receiver takes"), "{e}");
}

#[path = "../fixtures/jobs.rs"]
mod jobs;
use jobs::{BufferAsJson, Checksum, CountBuffers, ReverseBuffer};

#[test]
fn a_buffer_in_a_thread_pools_job_moves() {
    let pool = Pool::builder()
        .threads(2)
        .handlers(Handlers::new().on::<Checksum>(|Checksum(b), _| Ok(b.iter().map(|&x| u64::from(x)).sum())))
        .build()
        .unwrap();
    let buf = filled(1 << 20, 3);
    let want: u64 = buf.iter().map(|&x| u64::from(x)).sum();
    assert_eq!(pool.submit(Checksum(buf)).unwrap().wait().unwrap(), want);
}

#[test]
fn a_buffer_in_a_process_pools_job_reaches_its_worker_on_both_flavors() {
    for shm in [true, false] {
        let pool = Pool::builder()
            .processes(2)
            .worker_command(common::fixture("pool-worker"))
            .shared_memory(shm)
            .build()
            .unwrap();
        // Queued and in flight at once: several jobs, each with its buffer.
        let bufs: Vec<Buffer> = (0..8).map(|i| filled(50_000 + i, i as u8)).collect();
        let want: Vec<u64> = bufs
            .iter()
            .map(|b| b.iter().map(|&x| u64::from(x)).sum())
            .collect();
        let tickets: Vec<_> = bufs
            .into_iter()
            .map(|b| pool.submit(Checksum(b)).unwrap())
            .collect();
        let got: Vec<u64> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
        assert_eq!(got, want, "shared memory: {shm}");
        // A result can be a Buffer too: it comes back the same way.
        let buf = filled(300_000, 9);
        let back = pool
            .submit(ReverseBuffer(filled(300_000, 9)))
            .unwrap()
            .wait()
            .unwrap();
        assert!(back.is_sealed());
        assert!(back.iter().eq(buf.iter().rev()), "shared memory: {shm}");
        // A map's chunks carry them both ways: each job its own buffer,
        // each result its own, in order, through chunks that grow.
        let inputs: Vec<Buffer> = (0..600).map(|i| filled(100 + i % 7, i as u8)).collect();
        let want: Vec<Vec<u8>> = inputs.iter().map(|b| b.iter().rev().copied().collect()).collect();
        let got: Vec<Vec<u8>> = pool
            .map(inputs.into_iter().map(ReverseBuffer))
            .map(|r| r.unwrap().to_vec())
            .collect();
        assert_eq!(got, want, "shared memory: {shm}");
        let sums: Vec<u64> = pool
            .map((0..40).map(|i| Checksum(filled(1000, i as u8))))
            .map(|r| r.unwrap())
            .collect();
        let want: Vec<u64> = (0..40)
            .map(|i| filled(1000, i as u8).iter().map(|&x| u64::from(x)).sum())
            .collect();
        assert_eq!(sums, want);
        drop(pool);
    }
}

#[test]
fn many_messages_with_buffers_in_flight_at_once_all_arrive() {
    // More frames with fds queued than any limit on fds held at once:
    // each frame's fds are taken only when it is read.
    each_flavor(|_, ipc| {
        let n = 200;
        let bufs: Vec<Buffer> = (0..n).map(|i| filled(100 + i, i as u8)).collect();
        let tx = ipc.sender().clone();
        let sender = std::thread::spawn(move || {
            for (i, b) in bufs.iter().enumerate() {
                tx.send(&(format!("#{i}"), b)).unwrap();
            }
            bufs
        });
        for i in 0..n {
            let (label, len, _, mapped, _back): (String, u64, u64, bool, Buffer) = ipc.recv().unwrap();
            assert_eq!((label, len), (format!("#{i}"), (100 + i) as u64));
            assert!(mapped);
        }
        sender.join().unwrap();
    });
}

#[test]
fn a_job_with_more_buffers_than_a_frame_carries_fails_alone() {
    let pool = Pool::builder()
        .processes(1)
        .worker_command(common::fixture("pool-worker"))
        .build()
        .unwrap();
    let some: Vec<Buffer> = (0..3).map(|i| filled(1000, i)).collect();
    assert_eq!(
        pool.submit(CountBuffers(some)).unwrap().wait().unwrap(),
        (3, 3000)
    );
    let too_many: Vec<Buffer> = (0..=portpool::port::MAX_BUFFERS_PER_MESSAGE)
        .map(|i| filled(10, i as u8))
        .collect();
    let e = pool
        .submit(CountBuffers(too_many))
        .unwrap()
        .wait()
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 250 buffers"), "{e}");
    // The worker and the pool go on.
    let again: Vec<Buffer> = (0..2).map(|i| filled(5, i)).collect();
    assert_eq!(pool.submit(CountBuffers(again)).unwrap().wait().unwrap(), (2, 10));
    assert_eq!(pool.stats().workers[0].restarts, 0);
}

/// A child that another thread forked holds a copy of every mapping until
/// it execs, which made the kernel refuse to seal a buffer (`EBUSY`)
/// while any thread was spawning a process. Here the child is held
/// between fork and exec while the buffer is sealed and sent.
#[test]
fn a_buffer_seals_while_another_thread_is_between_fork_and_exec() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let buf = filled(64 << 10, 5); // mapped before the fork: the child has it
    let (mut here_r, here_w) = std::io::pipe().unwrap();
    let (go_r, mut go_w) = std::io::pipe().unwrap();
    let (here_fd, go_fd, go_w_fd) = (here_w.as_raw_fd(), go_r.as_raw_fd(), go_w.as_raw_fd());
    let spawner = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new("true");
        // SAFETY: between fork and exec the closure calls only close(2),
        // write(2) and read(2), which are async-signal-safe, on fds the
        // parent keeps open until the child has exec'd. (Its copy of the
        // "go" pipe's write end is closed first, so a parent that fails
        // and drops its own lets the child go on: no hang.)
        unsafe {
            cmd.pre_exec(move || {
                let mut b = 0u8;
                libc::close(go_w_fd);
                libc::write(here_fd, [1u8].as_ptr().cast(), 1);
                libc::read(go_fd, (&mut b as *mut u8).cast(), 1);
                Ok(())
            });
        }
        cmd.status().unwrap()
    });
    let mut b = [0u8];
    here_r.read_exact(&mut b).unwrap(); // the child waits before its exec
    let (a, p) = port::open().unwrap();
    let t = std::thread::spawn(move || p.connect().unwrap());
    let a = a.connect().unwrap();
    let mut p = t.join().unwrap();
    a.send(&buf).unwrap();
    assert!(buf.is_sealed());
    let got: Buffer = p.recv().unwrap();
    assert_eq!(&got[..], &buf[..]);
    go_w.write_all(&[1]).unwrap();
    assert!(spawner.join().unwrap().success());
    drop((here_w, go_r));
}

/// A handler's own serde calls are its own, not the job's, on both paths:
/// encoding a received Buffer as JSON fails in the handler (it is not
/// sealed into the answer and counted as the job's) in a submitted job
/// and in a map's chunk alike.
#[test]
fn a_handlers_own_encode_of_a_buffer_is_not_the_jobs_in_a_job_or_a_chunk() {
    let pool = Pool::builder()
        .processes(1)
        .worker_command(common::fixture("pool-worker"))
        .build()
        .unwrap();
    let single = pool.submit(BufferAsJson(filled(10, 1))).unwrap().wait();
    let mapped: Vec<_> = pool.map((0..3).map(|i| BufferAsJson(filled(10, i)))).collect();
    for r in std::iter::once(single).chain(mapped) {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("as JSON"), "{e}");
    }
    assert_eq!(pool.stats().workers[0].restarts, 0);
}
