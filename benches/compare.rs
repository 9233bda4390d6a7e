//! portpool beside the physical limit, in one run, as ratios.
//!
//! `cargo bench --bench compare -- [--quick]` prints one line per metric:
//! `<metric> portpool=<value> baseline=<value> unit=<unit> ratio=<portpool/baseline>`
//!
//! Each baseline is the strongest raw technique for the same work, written
//! here and measured in the same run, alternating with portpool (A B A B ...);
//! figures are medians. Two-process metrics re-execute this binary as the
//! peer (`PORTPOOL_BENCH_PEER=<role>`). See ../shared/benchmarking.md.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use portpool::port::{self, Ipc, Port};

const PEER_ENV: &str = "PORTPOOL_BENCH_PEER";
const PIN_ENV: &str = "PORTPOOL_BENCH_PIN";
const MSG: usize = 64;
const MIB: usize = 1 << 20;

fn main() {
    if let Ok(role) = std::env::var(PEER_ENV) {
        peer(&role);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let reps = if quick { 5 } else { 11 };

    if wanted("port_roundtrip_64B") {
        let iters = if quick { 5_000 } else { 20_000 };
        roundtrip("port_roundtrip_64B", reps, iters, false);
        // Pinned to one core, busy-polling is pathological (each side spins
        // out its time slice: about 8 ms a round trip); the strongest raw
        // technique there is plain blocking reads.
        roundtrip("port_roundtrip_64B_pinned", reps, iters, true);
    }
    if wanted("port_idle_cpu") {
        idle_cpu();
    }
    if wanted("port_bandwidth_1MiB") {
        let count = if quick { 128 } else { 512 };
        bandwidth(reps, count);
    }
}

fn report(metric: &str, ours: f64, base: f64, unit: &str) {
    println!(
        "{metric} portpool={ours:.3} baseline={base:.3} unit={unit} ratio={:.3}",
        ours / base
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Pins the calling thread to CPU 0 (both sides of a pinned run share it).
fn pin_to_cpu0() {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes bit 0 of a valid set.
    unsafe { libc::CPU_SET(0, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity");
}

/// Spawns this binary as a peer in `role`, with `port` passed to it.
fn spawn_peer(role: &str, port: Port, pinned: bool, args: &[String]) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.env(PEER_ENV, role).args(args);
    if pinned {
        cmd.env(PIN_ENV, "1");
    }
    port.spawn(cmd).expect("spawn peer")
}

fn raw_stream(port: Port) -> UnixStream {
    UnixStream::from(port.incoming_fd().as_fd().try_clone_to_owned().expect("dup"))
}

/// The peer side of every two-process metric.
fn peer(role: &str) {
    if std::env::var_os(PIN_ENV).is_some() {
        pin_to_cpu0();
    }
    let port = Port::from_env().expect("port from env");
    let arg = |i: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .expect("numeric argument")
    };
    match role {
        // Baseline: busy-polling non-blocking echo on the raw socket
        // (blocking reads when pinned to one core).
        "raw-echo" => {
            let mut s = raw_stream(port);
            let pinned = std::env::var_os(PIN_ENV).is_some();
            s.set_nonblocking(!pinned).expect("set_nonblocking");
            let mut buf = [0u8; MSG];
            loop {
                if !spin_read_exact(&mut s, &mut buf) {
                    return;
                }
                if s.write_all(&buf).is_err() {
                    return;
                }
            }
        }
        "port-echo" => {
            let mut ipc = port.connect().expect("connect");
            let mut buf = Vec::new();
            while ipc.recv_bytes_into(&mut buf).is_ok() {
                if ipc.send_bytes(&buf).is_err() {
                    return;
                }
            }
        }
        // Baseline: plain blocking writes of `size` bytes, `count` times.
        "raw-source" => {
            let (count, size) = (arg(1), arg(2));
            let mut s = raw_stream(port);
            let buf = vec![7u8; size];
            for _ in 0..count {
                s.write_all(&buf).expect("write");
            }
            let mut ack = [0u8; 1];
            let _ = s.read(&mut ack);
        }
        "port-source" => {
            let (count, size) = (arg(1), arg(2));
            let mut ipc = port.connect().expect("connect");
            let buf = vec![7u8; size];
            for _ in 0..count {
                ipc.send_bytes(&buf).expect("send");
            }
            let _ = ipc.recv_bytes();
        }
        other => panic!("unknown peer role {other}"),
    }
}

/// Busy-polls a non-blocking stream until `buf` is full. False on EOF.
fn spin_read_exact(s: &mut UnixStream, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn finish(mut child: Child) {
    let st = child.wait().expect("wait peer");
    assert!(st.success(), "peer failed: {st:?}");
}

/// µs per 64-byte round trip between two processes.
fn roundtrip(metric: &str, reps: usize, iters: usize, pinned: bool) {
    let run_raw = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("raw-echo", b, pinned, &[]);
        let mut s = raw_stream(a);
        s.set_nonblocking(!pinned).expect("set_nonblocking");
        let msg = [1u8; MSG];
        let mut buf = [0u8; MSG];
        let mut time = || {
            let t = Instant::now();
            for _ in 0..iters {
                s.write_all(&msg).expect("write");
                assert!(spin_read_exact(&mut s, &mut buf));
            }
            t.elapsed()
        };
        time(); // warm-up
        let d = time();
        drop(s);
        finish(child);
        d.as_secs_f64() * 1e6 / iters as f64
    };
    let run_port = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("port-echo", b, pinned, &[]);
        let mut ipc: Ipc = a.connect().expect("connect");
        let msg = [1u8; MSG];
        let mut buf = Vec::new();
        let mut time = || {
            let t = Instant::now();
            for _ in 0..iters {
                ipc.send_bytes(&msg).expect("send");
                ipc.recv_bytes_into(&mut buf).expect("recv");
            }
            t.elapsed()
        };
        time();
        let d = time();
        drop(ipc);
        finish(child);
        d.as_secs_f64() * 1e6 / iters as f64
    };
    let mut saved = None;
    if pinned {
        saved = Some(current_affinity());
        pin_to_cpu0();
    }
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(run_raw());
        ours.push(run_port());
    }
    if let Some(set) = saved {
        restore_affinity(&set);
    }
    report(metric, median(ours), median(base), "us");
}

fn current_affinity() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a valid out-pointer.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity");
    set
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    assert_eq!(rc, 0, "sched_setaffinity");
}

/// CPU seconds a connection blocked in `recv` uses over 2 s of wall time.
fn idle_cpu() {
    let (a, b) = port::open().expect("open");
    let peer = std::thread::spawn(move || b.connect().expect("connect"));
    let mut ipc = a.connect().expect("connect");
    let _keep = peer.join().expect("peer");
    let wall = Duration::from_secs(2);
    let cpu = std::thread::spawn(move || {
        let before = thread_cpu();
        let res = ipc.recv_timeout::<u8>(wall);
        assert!(res.is_err(), "nothing was sent");
        thread_cpu() - before
    })
    .join()
    .expect("idle thread");
    report("port_idle_cpu", cpu, wall.as_secs_f64(), "s");
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// GB/s one way, `count` messages of 1 MiB from a child process.
fn bandwidth(reps: usize, count: usize) {
    let args = vec![count.to_string(), MIB.to_string()];
    let run_raw = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("raw-source", b, false, &args);
        let mut s = raw_stream(a);
        let mut buf = vec![0u8; MIB];
        // Time from the first message on, so the peer's start-up is not counted.
        s.read_exact(&mut buf).expect("read");
        let t = Instant::now();
        for _ in 1..count {
            s.read_exact(&mut buf).expect("read");
        }
        let d = t.elapsed();
        s.write_all(&[1]).expect("ack");
        finish(child);
        ((count - 1) * MIB) as f64 / d.as_secs_f64() / 1e9
    };
    let run_port = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("port-source", b, false, &args);
        let mut ipc = a.connect().expect("connect");
        let mut buf = Vec::new();
        ipc.recv_bytes_into(&mut buf).expect("recv");
        let t = Instant::now();
        for _ in 1..count {
            let n = ipc.recv_bytes_into(&mut buf).expect("recv");
            assert_eq!(n, MIB);
        }
        let d = t.elapsed();
        ipc.send_bytes(&[1]).expect("ack");
        finish(child);
        ((count - 1) * MIB) as f64 / d.as_secs_f64() / 1e9
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(run_raw());
        ours.push(run_port());
    }
    report("port_bandwidth_1MiB", median(ours), median(base), "GB/s");
}
