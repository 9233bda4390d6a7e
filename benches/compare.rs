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
use portpool::{Handlers, Job, Pool};
use serde::{Deserialize, Serialize};

const PEER_ENV: &str = "PORTPOOL_BENCH_PEER";
const PIN_ENV: &str = "PORTPOOL_BENCH_PIN";
const MSG: usize = 64;
const MIB: usize = 1 << 20;

/// A job that costs next to nothing: dispatch overhead is all there is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Tiny(u64);
impl Job for Tiny {
    type Output = u64;
    type Error = ();
    const NAME: &'static str = "tiny";
}

/// A job that burns about 100 µs of CPU.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
struct Burn(u64);
impl Job for Burn {
    type Output = u64;
    type Error = ();
    const NAME: &'static str = "burn";
}

/// Iterations of `burn` that take about 100 µs (calibrated at start-up).
static BURN_ITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn burn(seed: u64) -> u64 {
    let iters = BURN_ITERS.load(std::sync::atomic::Ordering::Relaxed);
    let mut x = seed | 1;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

fn calibrate_burn() {
    BURN_ITERS.store(100_000, std::sync::atomic::Ordering::Relaxed);
    let mut per = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        burn(7);
        per.push(t.elapsed().as_secs_f64() / 100_000.0);
    }
    let iters = (100e-6 / median(per)) as u64;
    BURN_ITERS.store(iters.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Marks `me` as started in `dir`, then waits (bounded) until the other
/// of two has started too: both finish only when they run at once.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Rendezvous {
    dir: String,
    me: u8,
}
impl Job for Rendezvous {
    type Output = ();
    type Error = String;
    const NAME: &'static str = "rendezvous";
}

fn rendezvous(r: Rendezvous) -> Result<(), String> {
    let dir = std::path::Path::new(&r.dir);
    std::fs::write(dir.join(r.me.to_string()), b"").map_err(|e| e.to_string())?;
    let other = dir.join((1 - r.me.min(1)).to_string());
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !other.exists() {
        if Instant::now() > deadline {
            return Err("the other job never started".into());
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// A job that reads every byte of a buffer (the pool rows of `transfer_64MiB`).
#[derive(Serialize, Deserialize, Debug)]
struct SumBuffer(portpool::port::Buffer);
impl Job for SumBuffer {
    type Output = u64;
    type Error = ();
    const NAME: &'static str = "sum-buffer";
}

/// The same bytes as a plain byte vector (copied into the job's frame).
#[derive(Serialize, Deserialize, Debug)]
struct SumBytes(serde_bytes::ByteBuf);
impl Job for SumBytes {
    type Output = u64;
    type Error = ();
    const NAME: &'static str = "sum-bytes";
}

fn handlers() -> Handlers {
    Handlers::new()
        .on::<SumBuffer>(|SumBuffer(b), _| Ok(byte_sum(&b)))
        .on::<SumBytes>(|SumBytes(b), _| Ok(byte_sum(&b)))
        .on::<Tiny>(|Tiny(x), _| Ok(x.wrapping_mul(2).wrapping_add(1)))
        .on::<Burn>(|Burn(x), _| Ok(burn(x)))
        .on::<Rendezvous>(|r, _| rendezvous(r))
}

#[path = "support/threads.rs"]
mod threads;

#[path = "support/python.rs"]
mod python;

fn main() {
    portpool::worker::serve_if_worker(&handlers());
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
    if wanted("shm_roundtrip_64B") {
        shm_roundtrip(reps, if quick { 20_000 } else { 100_000 });
    }
    if wanted("shm_idle_cpu") {
        shm_idle_cpu();
    }
    if wanted("port_bandwidth_1MiB") {
        let count = if quick { 128 } else { 512 };
        bandwidth(reps, count);
    }
    if wanted("transfer_64MiB") {
        transfer(if quick { 3 } else { 7 });
    }
    if wanted("pool_thread_tiny_jobs") {
        thread_tiny(reps, 1_000_000);
    }
    if wanted("pool_thread_map_tiny") {
        threads::map_tiny(reps, if quick { 200_000 } else { 1_000_000 });
    }
    if wanted("pool_thread_submit_tiny") {
        threads::submit_tiny(reps, if quick { 200_000 } else { 1_000_000 });
    }
    if wanted("pool_thread_roundtrip") {
        threads::roundtrip(reps, if quick { 20_000 } else { 100_000 });
    }
    if wanted("pool_thread_metrics_on") || wanted("pool_process_metrics_on") {
        threads::metrics_cost(reps, if quick { 100_000 } else { 400_000 });
    }
    if wanted("pool_scale_up") {
        threads::scale_up(reps);
    }
    if wanted("pool_thread_fanout_100us") {
        calibrate_burn();
        thread_fanout(reps, if quick { 1000 } else { 4000 });
    }
    if wanted("pool_process_roundtrip") {
        process_roundtrip(reps, if quick { 5_000 } else { 20_000 });
    }
    if wanted("pool_process_tiny_jobs") {
        process_tiny(reps, if quick { 200_000 } else { 1_000_000 });
    }
    if wanted("pool_process_map_tiny") {
        process_map_tiny(if quick { 3 } else { 7 }, 1_000_000);
    }
    if wanted("pool_python_roundtrip") {
        python::roundtrip(if quick { 3 } else { 5 }, if quick { 2_000 } else { 10_000 });
    }
    if wanted("pool_python_map_tiny") {
        python::map_tiny(if quick { 3 } else { 5 }, if quick { 200_000 } else { 1_000_000 });
    }
    if wanted("request_roundtrip") {
        request_roundtrip(reps, if quick { 5_000 } else { 20_000 });
    }
    if wanted("messages_pipelined") {
        messages_pipelined(reps, if quick { 200_000 } else { 1_000_000 });
    }
    if wanted("supervise_respawn") {
        respawn(reps);
    }
    if wanted("shutdown_graceful_idle") {
        shutdown_idle(reps);
    }
    if wanted("pool_ssh_roundtrip") {
        launcher_roundtrip(Remote::Ssh, reps, if quick { 1_000 } else { 5_000 });
    }
    if wanted("pool_srun_roundtrip") {
        launcher_roundtrip(Remote::Srun, reps, if quick { 1_000 } else { 5_000 });
    }
    if wanted("pool_ssh_map_tiny") {
        ssh_map_tiny(if quick { 3 } else { 7 }, if quick { 200_000 } else { 1_000_000 });
    }
    if wanted("pool_ssh_spawn") {
        ssh_spawn(reps);
    }
}

/// A launcher the test daemons serve (`scripts/daemons`). The ssh metrics
/// use ssh's defaults; `PORTPOOL_BENCH_SSH_OPT=Name=value` adds one option
/// to the pool's launcher (not to the raw baseline), to measure a setting
/// such as `Ciphers=^aes128-gcm@openssh.com`.
#[derive(Clone, Copy, PartialEq)]
enum Remote {
    Ssh,
    Srun,
}

/// The ssh client arguments for the test sshd (`PORTPOOL_TEST_SSH` =
/// `user@host:port`, keys in `PORTPOOL_TEST_SSH_DIR`), up to the host.
fn test_ssh() -> Option<(Vec<String>, String, String, u16, String)> {
    let target = std::env::var("PORTPOOL_TEST_SSH").ok()?;
    let dir = std::env::var("PORTPOOL_TEST_SSH_DIR").ok()?;
    let (user, hostport) = target.split_once('@')?;
    let (host, port) = hostport.rsplit_once(':')?;
    let opts = vec![
        "IdentitiesOnly=yes".to_string(),
        "IdentityAgent=none".into(),
        format!("UserKnownHostsFile={dir}/known_hosts"),
        "StrictHostKeyChecking=yes".into(),
        "LogLevel=ERROR".into(),
    ];
    Some((
        opts,
        user.into(),
        host.into(),
        port.parse().ok()?,
        format!("{dir}/client_key"),
    ))
}

fn launcher(r: Remote) -> Option<portpool::launch::Launcher> {
    use portpool::launch::Launcher;
    match r {
        Remote::Ssh => {
            let (opts, user, host, port, key) = test_ssh()?;
            let mut l = Launcher::ssh(host)
                .user(user)
                .port(port)
                .identity_file(key)
                .no_ssh_config();
            for o in opts {
                l = l.ssh_option(o);
            }
            if let Ok(o) = std::env::var("PORTPOOL_BENCH_SSH_OPT") {
                l = l.ssh_option(o);
            }
            Some(l)
        }
        Remote::Srun => {
            let conf = std::env::var_os("PORTPOOL_TEST_SLURM")?;
            (std::env::var_os("SLURM_CONF").as_deref() == Some(conf.as_os_str())).then(Launcher::srun)
        }
    }
}

/// The raw baseline's command: `ssh … cat` or `srun -u … cat`, as the
/// launcher would start it.
fn raw_cat(r: Remote, cmd: &str) -> Command {
    match r {
        Remote::Ssh => {
            let (opts, user, host, port, key) = test_ssh().expect("checked by the caller");
            let mut c = Command::new("ssh");
            for o in opts {
                c.arg("-o").arg(o);
            }
            c.args([
                "-p",
                &port.to_string(),
                "-l",
                &user,
                "-i",
                &key,
                "-F",
                "none",
                "-T",
                "-e",
                "none",
            ]);
            c.args(["-o", "BatchMode=yes", "--", &host, cmd]);
            c
        }
        Remote::Srun => {
            let mut c = Command::new("srun");
            c.args(["-u", "-N1", "-n1", cmd]);
            c
        }
    }
}

fn skipped(metric: &str, r: Remote) {
    let var = match r {
        Remote::Ssh => "PORTPOOL_TEST_SSH",
        Remote::Srun => "PORTPOOL_TEST_SLURM",
    };
    println!(
        "{metric} skipped: {var} is not set (scripts/daemons/{} start prints it)",
        match r {
            Remote::Ssh => "sshd",
            Remote::Srun => "slurm",
        }
    );
}

/// µs for one tiny job's round trip on one worker started through the
/// launcher, beside a 64-byte echo through the same launcher's `cat`.
fn launcher_roundtrip(r: Remote, reps: usize, iters: usize) {
    let metric = match r {
        Remote::Ssh => "pool_ssh_roundtrip",
        Remote::Srun => "pool_srun_roundtrip",
    };
    let Some(l) = launcher(r) else {
        skipped(metric, r);
        return;
    };
    let raw = || {
        let mut child = raw_cat(r, "cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("raw cat");
        let mut inp = child.stdin.take().expect("stdin");
        let mut out = child.stdout.take().expect("stdout");
        let msg = [7u8; MSG];
        let mut back = [0u8; MSG];
        let mut one = |n: usize| {
            let t = Instant::now();
            for _ in 0..n {
                inp.write_all(&msg).expect("write");
                out.read_exact(&mut back).expect("read");
            }
            t.elapsed()
        };
        one(100);
        let us = one(iters).as_secs_f64() * 1e6 / iters as f64;
        drop(inp);
        let _ = child.wait();
        us
    };
    let pool = Pool::builder().launch(l, 1).build().expect("pool");
    let run_pool = || {
        let time = |n: usize| {
            let t = Instant::now();
            for i in 0..n as u64 {
                std::hint::black_box(pool.submit(Tiny(i)).expect("submit").wait().expect("job"));
            }
            t.elapsed()
        };
        time(100);
        time(iters).as_secs_f64() * 1e6 / iters as f64
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(raw());
        ours.push(run_pool());
    }
    report(metric, median(ours), median(base), "us");
}

/// jobs/s of a map of tiny jobs over 2 ssh workers, beside the same map
/// over 2 local process workers.
fn ssh_map_tiny(reps: usize, n: u64) {
    let Some(l) = launcher(Remote::Ssh) else {
        skipped("pool_ssh_map_tiny", Remote::Ssh);
        return;
    };
    let remote = Pool::builder().launch(l, 2).build().expect("ssh pool");
    let local = Pool::builder().processes(2).build().expect("local pool");
    let run = |pool: &Pool| {
        for r in pool.map((0..10_000).map(Tiny)) {
            r.expect("job");
        }
        map_rate(pool, n)
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(run(&local));
        ours.push(run(&remote));
    }
    report("pool_ssh_map_tiny", median(ours), median(base), "jobs/s");
}

/// Seconds from `build()` of a one-worker ssh pool to its first reply,
/// beside `ssh … true`.
fn ssh_spawn(reps: usize) {
    let Some(l) = launcher(Remote::Ssh) else {
        skipped("pool_ssh_spawn", Remote::Ssh);
        return;
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        let st = raw_cat(Remote::Ssh, "true").status().expect("ssh true");
        assert!(st.success());
        base.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let pool = Pool::builder().launch(l.clone(), 1).build().expect("pool");
        pool.submit(Tiny(1)).expect("submit").wait().expect("job");
        ours.push(t.elapsed().as_secs_f64());
        pool.shutdown(portpool::Shutdown::graceful(Duration::from_secs(10)));
    }
    report("pool_ssh_spawn", median(ours), median(base), "s");
}

/// µs for one 64-byte request and its reply over a `Link` between two
/// processes, beside the busy-polling raw socketpair ping-pong.
fn request_roundtrip(reps: usize, iters: usize) {
    link_roundtrip("request_roundtrip", reps, iters, false);
    link_roundtrip("request_roundtrip_shm", reps, iters, true);
}

/// [`request_roundtrip`] over a socket, or (`shm`) over shared memory
/// beside the raw ring.
fn link_roundtrip(metric: &str, reps: usize, iters: usize, shm: bool) {
    let (a, b) = port::open().expect("open");
    let child = spawn_peer(if shm { "link-echo:shm" } else { "link-echo" }, b, false, &[]);
    let opts = port::ConnectOptions {
        shared_memory: shm,
        role: port::Role::Supervisor,
        ..port::ConnectOptions::default()
    };
    let link = portpool::link::Link::new(a.connect_with(opts).expect("connect"));
    let msg = serde_bytes::ByteBuf::from(vec![1u8; MSG]);
    let run = || {
        let time = || {
            let t = Instant::now();
            for _ in 0..iters {
                let r: serde_bytes::ByteBuf = link.request(&msg).expect("request");
                std::hint::black_box(r);
            }
            t.elapsed()
        };
        time();
        time().as_secs_f64() * 1e6 / iters as f64
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(if shm {
            raw_ring_roundtrip(iters)
        } else {
            raw_roundtrip(iters, false)
        });
        ours.push(run());
    }
    drop(link);
    finish(child);
    report(metric, median(ours), median(base), "us");
}

/// 64-byte messages per second one way over a `Link` (the receiver takes
/// each with `messages`), beside raw writes of the same bytes, each
/// message written on its own.
fn messages_pipelined(reps: usize, n: usize) {
    // A link message frame for 64 bytes: header, tag, length, bytes.
    const BYTES: usize = 5 + 1 + 1 + 1 + MSG;
    let run_raw = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("raw-sink", b, false, &[n.to_string(), BYTES.to_string()]);
        let mut s = raw_stream(a);
        let msg = [7u8; BYTES];
        let t = Instant::now();
        for _ in 0..n {
            s.write_all(&msg).expect("write");
        }
        let mut one = [0u8; 1];
        s.read_exact(&mut one).expect("read");
        let rate = n as f64 / t.elapsed().as_secs_f64();
        drop(s);
        finish(child);
        rate
    };
    let run_link = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("link-sink", b, false, &[n.to_string()]);
        let link = portpool::link::Link::new(a.connect().expect("connect"));
        let msg = serde_bytes::Bytes::new(&[7u8; MSG]);
        let t = Instant::now();
        for _ in 0..n {
            link.send_message(&msg).expect("send");
        }
        let got: u64 = link.recv_message().expect("count");
        let rate = n as f64 / t.elapsed().as_secs_f64();
        assert_eq!(got, n as u64);
        drop(link);
        finish(child);
        rate
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(run_raw());
        ours.push(run_link());
    }
    report("messages_pipelined", median(ours), median(base), "msgs/s");

    // The same over shared memory, beside a raw byte ring: each message
    // copied in and published on its own, the reader spinning.
    let run_raw_ring = || {
        let ring = RawByteRing::create();
        let (_a, b) = port::open().expect("open");
        let path = ring.map.file.path.clone().expect("path");
        let child = spawn_peer(
            "raw-ring-sink",
            b,
            false,
            &[n.to_string(), BYTES.to_string(), path],
        );
        let msg = [7u8; BYTES];
        let t = Instant::now();
        let mut tail = 0u64;
        for _ in 0..n {
            tail = ring.put(tail, &msg);
        }
        while ring.done().load(std::sync::atomic::Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        finish(child);
        rate
    };
    let run_link_shm = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("link-sink:shm", b, false, &[n.to_string()]);
        let opts = port::ConnectOptions {
            role: port::Role::Supervisor,
            ..shm_options()
        };
        let link = portpool::link::Link::new(a.connect_with(opts).expect("connect"));
        let msg = serde_bytes::Bytes::new(&[7u8; MSG]);
        let t = Instant::now();
        for _ in 0..n {
            link.send_message(&msg).expect("send");
        }
        let got: u64 = link.recv_message().expect("count");
        let rate = n as f64 / t.elapsed().as_secs_f64();
        assert_eq!(got, n as u64);
        drop(link);
        finish(child);
        rate
    };
    alternate(
        "messages_pipelined_shm",
        "msgs/s",
        reps,
        run_raw_ring,
        run_link_shm,
    );
}

/// A raw single-producer byte ring in a /dev/shm file, both sides
/// spinning (the baseline of `messages_pipelined_shm`): tail and head words
/// on their own lines, a done word, then `CAP` bytes of data.
struct RawByteRing {
    map: RawRing,
}

impl RawByteRing {
    const CAP: u64 = 2048;
    const DATA: usize = 1024;

    fn create() -> RawByteRing {
        RawByteRing {
            map: RawRing::create(),
        }
    }

    fn open(path: &str) -> RawByteRing {
        RawByteRing {
            map: RawRing::open(path),
        }
    }

    fn word(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: offsets 0, 128 and 640 are 8-aligned and inside the
        // mapping of RawRing::LEN (4096) bytes, alive as long as `self`.
        unsafe { &*self.map.file.ptr.add(off).cast() }
    }

    fn done(&self) -> &std::sync::atomic::AtomicU64 {
        self.word(640)
    }

    /// Copies `msg` in at `tail` (waiting for room) and publishes it.
    fn put(&self, tail: u64, msg: &[u8]) -> u64 {
        self.put_waiting(tail, msg, false)
    }

    /// [`put`](Self::put); with `yielding`, a wait longer than a few
    /// hundred spins yields the core (for more spinning threads than cores).
    fn put_waiting(&self, tail: u64, msg: &[u8], yielding: bool) -> u64 {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let mut spins = 0u32;
        while tail + msg.len() as u64 - self.word(128).load(Acquire) > Self::CAP {
            spin_or_yield(&mut spins, yielding);
        }
        for (i, &b) in msg.iter().enumerate() {
            let at = Self::DATA + ((tail + i as u64) % Self::CAP) as usize;
            // SAFETY: `at` is inside the data area of the mapping; the
            // protocol gives this byte to the producer until published.
            unsafe { self.map.file.ptr.add(at).write(b) };
        }
        let end = tail + msg.len() as u64;
        self.word(0).store(end, Release);
        end
    }

    /// Takes `out.len()` bytes from `head` (waiting for them).
    fn take(&self, head: u64, out: &mut [u8]) -> u64 {
        self.take_waiting(head, out, false)
    }

    /// [`take`](Self::take), yielding as [`put_waiting`](Self::put_waiting).
    fn take_waiting(&self, head: u64, out: &mut [u8], yielding: bool) -> u64 {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let mut spins = 0u32;
        while self.word(0).load(Acquire) - head < out.len() as u64 {
            spin_or_yield(&mut spins, yielding);
        }
        for (i, b) in out.iter_mut().enumerate() {
            let at = Self::DATA + ((head + i as u64) % Self::CAP) as usize;
            // SAFETY: as in `put`, for a published byte.
            *b = unsafe { self.map.file.ptr.add(at).read() };
        }
        let end = head + out.len() as u64;
        self.word(128).store(end, Release);
        end
    }
}

/// One turn of a wait loop: a spin, or past 256 spins (with `yielding`)
/// a yield of the core.
fn spin_or_yield(spins: &mut u32, yielding: bool) {
    *spins += 1;
    if yielding && *spins > 256 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// ms from a worker's SIGKILL to its replacement answering a job, beside
/// the time from spawning a fresh worker (a new pool of one) to its first
/// answer. Each rep uses a new pool, so the restart is the policy's first
/// (immediate) one.
fn respawn(reps: usize) {
    let fresh = || {
        let t = Instant::now();
        let pool = Pool::builder().processes(1).build().expect("pool");
        pool.submit(Tiny(1)).expect("submit").wait().expect("job");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        drop(pool);
        ms
    };
    let replaced = || {
        // One retry: a job that reaches the dying worker runs on its
        // replacement; the time still ends with the replacement's answer.
        let pool = Pool::builder().processes(1).retries(1).build().expect("pool");
        pool.submit(Tiny(1)).expect("submit").wait().expect("job");
        let pid = pool.stats().workers[0].pid.expect("pid") as libc::pid_t;
        let t = Instant::now();
        // SAFETY: kill(2) on the pool's live, unreaped worker.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0);
        pool.submit(Tiny(2))
            .expect("submit")
            .wait()
            .expect("job after respawn");
        t.elapsed().as_secs_f64() * 1e3
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    fresh();
    for _ in 0..reps {
        base.push(fresh());
        ours.push(replaced());
    }
    report("supervise_respawn", median(ours), median(base), "ms");
}

/// ms to shut down an idle pool of 2 process workers, beside closing the
/// sockets of 2 raw echo children and reaping them.
fn shutdown_idle(reps: usize) {
    let raw = || {
        let mut children = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..2 {
            let (a, b) = port::open().expect("open");
            children.push(spawn_peer("raw-stream-echo", b, false, &[]));
            let mut s = raw_stream(a);
            // One echo proves the child is up before the clock starts.
            s.write_all(&[7; 16]).expect("write");
            let mut buf = [0; 16];
            s.read_exact(&mut buf).expect("read");
            streams.push(s);
        }
        let t = Instant::now();
        drop(streams);
        for c in children {
            finish(c);
        }
        t.elapsed().as_secs_f64() * 1e3
    };
    let pooled = || {
        let pool = Pool::builder().processes(2).build().expect("pool");
        for r in pool.broadcast(Tiny(1)) {
            r.expect("job");
        }
        let t = Instant::now();
        pool.shutdown(portpool::Shutdown::graceful(Duration::from_secs(10)));
        t.elapsed().as_secs_f64() * 1e3
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(raw());
        ours.push(pooled());
    }
    report("shutdown_graceful_idle", median(ours), median(base), "ms");
}

/// jobs/s for `n` tiny jobs through `map_unordered` on 2 threads, beside a
/// minimal crossbeam-channel pool (2 threads: a job channel, a result channel).
fn thread_tiny(reps: usize, n: u64) {
    let run_raw = || {
        let raw = threads::RawPool::new();
        let t = Instant::now();
        let job_tx = raw.sender();
        let feeder = std::thread::spawn(move || {
            for i in 0..n {
                job_tx.send(i).expect("send");
            }
        });
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(raw.recv());
        }
        let d = t.elapsed();
        feeder.join().expect("feeder");
        drop(raw);
        std::hint::black_box(sum);
        n as f64 / d.as_secs_f64()
    };
    let pool = Pool::builder()
        .threads(2)
        .handlers(handlers())
        .build()
        .expect("pool");
    let run_pool = || {
        let t = Instant::now();
        let mut sum = 0u64;
        for r in pool.map_unordered((0..n).map(Tiny)) {
            sum = sum.wrapping_add(r.expect("job"));
        }
        let d = t.elapsed();
        std::hint::black_box(sum);
        n as f64 / d.as_secs_f64()
    };
    alternate("pool_thread_tiny_jobs", "jobs/s", reps, run_raw, run_pool);
}

/// Speedup over serial of `n` jobs of ~100 µs on this machine's cores,
/// beside rayon's `par_iter` on the same work.
fn thread_fanout(reps: usize, n: u64) {
    use rayon::prelude::*;
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let serial = || {
        let t = Instant::now();
        let s: u64 = (0..n).map(burn).fold(0, u64::wrapping_add);
        std::hint::black_box(s);
        t.elapsed().as_secs_f64()
    };
    let run_rayon = || {
        let t = Instant::now();
        let s: u64 = (0..n).into_par_iter().map(burn).reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(s);
        t.elapsed().as_secs_f64()
    };
    let pool = Pool::builder()
        .threads(cores)
        .handlers(handlers())
        .build()
        .expect("pool");
    let run_pool = || {
        let t = Instant::now();
        let s: u64 = pool
            .map_unordered((0..n).map(Burn))
            .map(|r| r.expect("job"))
            .fold(0, u64::wrapping_add);
        std::hint::black_box(s);
        t.elapsed().as_secs_f64()
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let s = serial();
        base.push(s / run_rayon());
        ours.push(s / run_pool());
    }
    report("pool_thread_fanout_100us", median(ours), median(base), "x");
}

/// µs for one small job submitted and waited for, one process worker,
/// beside the busy-polling raw socketpair ping-pong.
fn process_roundtrip(reps: usize, iters: usize) {
    let pool = Pool::builder().processes(1).build().expect("pool");
    let run_pool = || {
        let time = || {
            let t = Instant::now();
            for i in 0..iters as u64 {
                let r = pool.submit(Tiny(i)).expect("submit").wait().expect("job");
                std::hint::black_box(r);
            }
            t.elapsed()
        };
        time();
        time().as_secs_f64() * 1e6 / iters as f64
    };
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(raw_roundtrip(iters, false));
        ours.push(run_pool());
    }
    report("pool_process_roundtrip", median(ours), median(base), "us");
}

/// jobs/s with pipelining over 2 process workers, beside a raw pipelined
/// echo over one socketpair per worker, each keeping the same number of
/// messages of the same size in flight and writing each message on its own.
fn process_tiny(reps: usize, n: u64) {
    const INFLIGHT: usize = 16;
    const WORKERS: usize = 2;
    // A pool job frame for Tiny is about this long (header, head, payload).
    const BYTES: usize = 16;
    let run_raw = || {
        let per = n as usize / WORKERS;
        let mut children = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..WORKERS {
            let (a, b) = port::open().expect("open");
            children.push(spawn_peer("raw-stream-echo", b, false, &[]));
            streams.push(raw_stream(a));
        }
        let t = Instant::now();
        let threads: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                std::thread::spawn(move || {
                    let msg = [3u8; BYTES];
                    let mut buf = [0u8; BYTES];
                    for _ in 0..INFLIGHT {
                        s.write_all(&msg).expect("write");
                    }
                    for i in 0..per {
                        s.read_exact(&mut buf).expect("read");
                        if i + INFLIGHT < per {
                            s.write_all(&msg).expect("write");
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("stream thread");
        }
        let d = t.elapsed();
        for c in children {
            finish(c);
        }
        (per * WORKERS) as f64 / d.as_secs_f64()
    };
    // The same over a pair of raw shared-memory byte rings per worker
    // (the floor of the shared-memory transport), each side spinning and
    // yielding when a wait runs long: there are more spinning threads
    // (two supervisor threads, two peers) than this machine has cores.
    let run_raw_ring = || {
        let per = n as usize / WORKERS;
        let mut children = Vec::new();
        let mut rings = Vec::new();
        for _ in 0..WORKERS {
            let (out, back) = (RawByteRing::create(), RawByteRing::create());
            let (_a, b) = port::open().expect("open");
            let paths = [&out, &back].map(|r| r.map.file.path.clone().expect("path"));
            let [p_out, p_back] = paths;
            children.push(spawn_peer(
                "raw-byte-ring-echo",
                b,
                false,
                &[per.to_string(), BYTES.to_string(), p_out, p_back],
            ));
            rings.push((out, back));
        }
        let t = Instant::now();
        std::thread::scope(|s| {
            for (out, back) in &rings {
                s.spawn(move || {
                    let msg = [3u8; BYTES];
                    let mut buf = [0u8; BYTES];
                    let (mut tail, mut head) = (0u64, 0u64);
                    for _ in 0..INFLIGHT.min(per) {
                        tail = out.put_waiting(tail, &msg, true);
                    }
                    for i in 0..per {
                        head = back.take_waiting(head, &mut buf, true);
                        if i + INFLIGHT < per {
                            tail = out.put_waiting(tail, &msg, true);
                        }
                    }
                });
            }
        });
        let d = t.elapsed();
        for c in children {
            finish(c);
        }
        (per * WORKERS) as f64 / d.as_secs_f64()
    };
    let pool = Pool::builder()
        .processes(WORKERS)
        .inflight_per_worker(INFLIGHT)
        .queue_limit(4096)
        .build()
        .expect("pool");
    // One ticket per job (no chunking): INFLIGHT jobs per worker in flight.
    let run_pool = || {
        let window = INFLIGHT * WORKERS;
        let mut tickets = std::collections::VecDeque::with_capacity(window);
        let t = Instant::now();
        let mut sum = 0u64;
        for i in 0..n {
            if tickets.len() == window {
                let tk: portpool::Ticket<Tiny> = tickets.pop_front().expect("ticket");
                sum = sum.wrapping_add(tk.wait().expect("job"));
            }
            tickets.push_back(pool.submit(Tiny(i)).expect("submit"));
        }
        for tk in tickets {
            sum = sum.wrapping_add(tk.wait().expect("job"));
        }
        std::hint::black_box(sum);
        n as f64 / t.elapsed().as_secs_f64()
    };
    let (mut base, mut ring, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(run_raw());
        ring.push(run_raw_ring());
        ours.push(run_pool());
    }
    let ours = median(ours);
    // The baseline is the ring echo; the socket echo, the floor
    // before the shared-memory transport, is kept beside it.
    report("pool_process_tiny_jobs", ours, median(ring), "jobs/s");
    report(
        "pool_process_tiny_jobs_vs_socket_echo",
        ours,
        median(base),
        "jobs/s",
    );
}

/// jobs/s of one `map` of `n` tiny jobs over `pool`.
fn map_rate(pool: &Pool, n: u64) -> f64 {
    let t = Instant::now();
    let mut sum = 0u64;
    for r in pool.map((0..n).map(Tiny)) {
        sum = sum.wrapping_add(r.expect("job"));
    }
    std::hint::black_box(sum);
    n as f64 / t.elapsed().as_secs_f64()
}

/// Runs `base` then `ours` `reps` times, alternating, and reports the
/// medians as `metric`.
fn alternate(
    metric: &str,
    unit: &str,
    reps: usize,
    mut base: impl FnMut() -> f64,
    mut ours: impl FnMut() -> f64,
) {
    let (mut b, mut o) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        b.push(base());
        o.push(ours());
    }
    report(metric, median(o), median(b), unit);
}

fn report(metric: &str, ours: f64, base: f64, unit: &str) {
    // Enough digits that a small figure (idle CPU seconds) is not shown as 0.
    let digits = if ours.abs() < 0.01 || base.abs() < 0.01 {
        6
    } else {
        3
    };
    println!(
        "{metric} portpool={ours:.digits$} baseline={base:.digits$} unit={unit} ratio={:.digits$}",
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
    // `link-echo:shm` is `link-echo` with its connection on shared memory.
    if let Some(plain) = role.strip_suffix(":shm") {
        cmd.env(PEER_ENV, plain).env(port::TRANSPORT_ENV, "shm");
    }
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
        // Baseline: echo whatever bytes arrive, as they arrive.
        "raw-stream-echo" => {
            let mut s = raw_stream(port);
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        // Baseline: the raw shared-memory ring's echo (see `RawRing`).
        "raw-ring-echo" => {
            let path = std::env::args().nth(1).expect("ring path");
            let ring = RawRing::open(&path);
            let mut msg = [0u8; MSG];
            let mut seen = 0u64;
            loop {
                let seq = ring.wait_seq(0, seen);
                if seq == u64::MAX {
                    return;
                }
                ring.read_msg(0, &mut msg);
                ring.write_msg(1, &msg);
                ring.publish(1, seq);
                seen = seq;
            }
        }
        // Sums every byte of each Buffer it receives and answers the sum.
        "buffer-sum" => {
            let mut ipc = port.connect_with(shm_options()).expect("connect");
            while let Ok(buf) = ipc.recv::<portpool::port::Buffer>() {
                if ipc.send(&byte_sum(&buf)).is_err() {
                    return;
                }
            }
        }
        // The same for bytes sent as a message (a copy through the rings).
        "vec-sum" => {
            let mut ipc = port.connect_with(shm_options()).expect("connect");
            let mut buf = Vec::new();
            while ipc.recv_bytes_into(&mut buf).is_ok() {
                if ipc.send(&byte_sum(&buf)).is_err() {
                    return;
                }
            }
        }
        // Baseline: sums a mapping kept from round to round, told by the ring.
        "kept-sum" => {
            let mut args = std::env::args().skip(1);
            let ring = RawRing::open(&args.next().expect("ring path"));
            let data = RawData::open(&args.next().expect("data path"));
            let mut seen = 0u64;
            loop {
                let seq = ring.wait_seq(0, seen);
                if seq == u64::MAX {
                    return;
                }
                let sum = byte_sum(data.bytes());
                ring.write_msg(1, &{
                    let mut m = [0u8; MSG];
                    m[..8].copy_from_slice(&sum.to_le_bytes());
                    m
                });
                ring.publish(1, seq);
                seen = seq;
            }
        }
        "port-echo-shm" => {
            let opts = port::ConnectOptions {
                shared_memory: true,
                ..port::ConnectOptions::default()
            };
            let mut ipc = port.connect_with(opts).expect("connect");
            let mut buf = Vec::new();
            while ipc.recv_bytes_into(&mut buf).is_ok() {
                if ipc.send_bytes(&buf).is_err() {
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
        // A link that answers every request with its bytes.
        "link-echo" => {
            let link = portpool::link::Link::new(port.connect().expect("connect"));
            link.on_request(|b: serde_bytes::ByteBuf| Ok::<_, String>(b));
            link.wait_closed();
        }
        // A link that takes `n` messages, then says how many it got.
        "link-sink" => {
            let n = arg(1);
            let link = portpool::link::Link::new(port.connect().expect("connect"));
            let mut got = 0u64;
            for m in link.messages::<serde_bytes::ByteBuf>().take(n) {
                m.expect("message");
                got += 1;
            }
            link.send_message(&got).expect("send");
            link.wait_closed();
        }
        // Baseline: takes `n` messages of `size` bytes off the raw byte ring,
        // then raises the done word.
        // Baseline: echoes `n` messages of `size` bytes from one raw byte
        // ring to another, yielding when a wait runs long.
        "raw-byte-ring-echo" => {
            let (n, size) = (arg(1), arg(2));
            let inbound = RawByteRing::open(&std::env::args().nth(3).expect("ring path"));
            let outbound = RawByteRing::open(&std::env::args().nth(4).expect("ring path"));
            let mut buf = vec![0u8; size];
            let (mut head, mut tail) = (0u64, 0u64);
            for _ in 0..n {
                head = inbound.take_waiting(head, &mut buf, true);
                tail = outbound.put_waiting(tail, &buf, true);
            }
        }
        "raw-ring-sink" => {
            let (n, size) = (arg(1), arg(2));
            let path = std::env::args().nth(3).expect("ring path");
            let ring = RawByteRing::open(&path);
            let mut buf = vec![0u8; size];
            let mut head = 0u64;
            for _ in 0..n {
                head = ring.take(head, &mut buf);
            }
            ring.done().store(1, std::sync::atomic::Ordering::Release);
        }
        // Baseline: reads `n` messages of `size` bytes as raw bytes, then
        // writes one byte back.
        "raw-sink" => {
            let (n, size) = (arg(1), arg(2));
            let mut s = raw_stream(port);
            let mut buf = vec![0u8; size];
            for _ in 0..n {
                s.read_exact(&mut buf).expect("read");
            }
            s.write_all(&[1]).expect("write");
            let _ = s.read(&mut buf);
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

/// µs per 64-byte round trip over a raw socketpair: both sides busy-poll
/// non-blocking reads (blocking reads when pinned to one core).
fn raw_roundtrip(iters: usize, pinned: bool) -> f64 {
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
}

/// µs per 64-byte round trip between two processes.
fn roundtrip(metric: &str, reps: usize, iters: usize, pinned: bool) {
    let run_raw = || raw_roundtrip(iters, pinned);
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

/// The strongest raw technique for a shared-memory round trip, as a
/// baseline: a file in /dev/shm mapped by both processes, one 64-byte
/// message slot and one sequence word per direction, both sides spinning
/// on the other's word (no sleeping, no validation, no framing).
struct RawRing {
    file: ShmFile,
}

impl RawRing {
    const LEN: usize = 4096;
    /// Offsets: sequence words on their own lines, then the two slots.
    const SEQ: [usize; 2] = [0, 128];
    const SLOT: [usize; 2] = [256, 512];

    fn create() -> RawRing {
        RawRing {
            file: ShmFile::create("ring", Self::LEN),
        }
    }

    fn open(path: &str) -> RawRing {
        RawRing {
            file: ShmFile::open(path, Self::LEN),
        }
    }

    fn seq(&self, dir: usize) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: SEQ offsets are 8-aligned and inside the LEN-byte mapping,
        // which lives as long as `self`; both processes use it atomically.
        unsafe { &*self.file.ptr.add(Self::SEQ[dir]).cast() }
    }

    /// Spins until direction `dir`'s sequence word differs from `seen`.
    fn wait_seq(&self, dir: usize, seen: u64) -> u64 {
        loop {
            let s = self.seq(dir).load(std::sync::atomic::Ordering::Acquire);
            if s != seen {
                return s;
            }
            std::hint::spin_loop();
        }
    }

    fn publish(&self, dir: usize, seq: u64) {
        self.seq(dir).store(seq, std::sync::atomic::Ordering::Release);
    }

    fn write_msg(&self, dir: usize, msg: &[u8; MSG]) {
        // SAFETY: the slot is MSG bytes inside the mapping; the peer does not
        // touch it until the sequence word says so (the protocol).
        unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), self.file.ptr.add(Self::SLOT[dir]), MSG) };
    }

    fn read_msg(&self, dir: usize, msg: &mut [u8; MSG]) {
        // SAFETY: as in `write_msg`, reading the published slot.
        unsafe { std::ptr::copy_nonoverlapping(self.file.ptr.add(Self::SLOT[dir]), msg.as_mut_ptr(), MSG) };
    }
}

/// A file in /dev/shm mapped read-write by the bench's processes (the raw
/// baselines' memory); the process that made it removes it.
struct ShmFile {
    ptr: *mut u8,
    len: usize,
    path: Option<String>,
}

// SAFETY: a ShmFile is a mapping owned by this value; the rings over it
// share it between one producer and one consumer thread, which touch its
// words only through atomics and its data bytes only as their protocol
// hands them over.
unsafe impl Send for ShmFile {}
// SAFETY: as for Send.
unsafe impl Sync for ShmFile {}

impl ShmFile {
    fn create(tag: &str, len: usize) -> ShmFile {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/dev/shm/portpool-bench-{tag}-{}-{n}", std::process::id());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create shm file");
        f.set_len(len as u64).expect("size shm file");
        let mut m = Self::map(&f, len);
        m.path = Some(path);
        m
    }

    fn open(path: &str, len: usize) -> ShmFile {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open shm file");
        Self::map(&f, len)
    }

    fn map(f: &std::fs::File, len: usize) -> ShmFile {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of an open file of `len` bytes, at
        // an address the kernel picks; it overlaps no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap shm file");
        ShmFile {
            ptr: p.cast(),
            len,
            path: None,
        }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        // SAFETY: the range `map` created, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// µs per 64-byte round trip over the raw shared-memory ring (`RawRing`),
/// two processes, both spinning.
fn raw_ring_roundtrip(iters: usize) -> f64 {
    let ring = RawRing::create();
    let (_a, b) = port::open().expect("open");
    let path = ring.file.path.clone().expect("path");
    let child = spawn_peer("raw-ring-echo", b, false, &[path]);
    let msg = [1u8; MSG];
    let mut back = [0u8; MSG];
    let mut seq = 0u64;
    let mut time = |n: usize| {
        let t = Instant::now();
        for _ in 0..n {
            seq += 1;
            ring.write_msg(0, &msg);
            ring.publish(0, seq);
            ring.wait_seq(1, seq - 1);
            ring.read_msg(1, &mut back);
        }
        t.elapsed()
    };
    time(iters / 10);
    let d = time(iters);
    ring.publish(0, u64::MAX);
    finish(child);
    d.as_secs_f64() * 1e6 / iters as f64
}

/// Options for a connection that moves to shared memory.
fn shm_options() -> port::ConnectOptions {
    port::ConnectOptions {
        shared_memory: true,
        ..port::ConnectOptions::default()
    }
}

/// A checksum that reads every byte: the wrapping sum of its 8-byte words
/// (and of a short tail's bytes).
fn byte_sum(b: &[u8]) -> u64 {
    let words = b.chunks_exact(8);
    let tail = words
        .remainder()
        .iter()
        .fold(0u64, |a, &x| a.wrapping_add(u64::from(x)));
    words
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .fold(tail, u64::wrapping_add)
}

/// A file in /dev/shm of `LEN` bytes mapped read-write, kept from round to
/// round (the "memfd kept mapped" baseline of `transfer_64MiB`).
struct RawData {
    file: ShmFile,
}

impl RawData {
    const LEN: usize = 64 << 20;

    fn create() -> RawData {
        RawData {
            file: ShmFile::create("data", Self::LEN),
        }
    }

    fn open(path: &str) -> RawData {
        RawData {
            file: ShmFile::open(path, Self::LEN),
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: LEN bytes mapped for as long as `self`; the baseline's
        // protocol (the ring's sequence words) keeps writer and reader apart.
        unsafe { std::slice::from_raw_parts(self.file.ptr, Self::LEN) }
    }

    fn fill(&mut self, pattern: &[u8]) {
        // SAFETY: as in `bytes`; `&mut self` and the protocol make this the
        // only access while it writes.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.file.ptr, Self::LEN) };
        for c in dst.chunks_mut(pattern.len()) {
            c.copy_from_slice(&pattern[..c.len()]);
        }
    }
}

/// ms to fill 64 MiB and have a child process read every byte: in a
/// `Buffer` (sealed, its file passed, mapped by the child), as a message's
/// bytes (`Vec<u8>`, copied through the connection), and in a mapping both
/// keep from round to round (the floor: no copy, no new pages).
fn transfer(reps: usize) {
    const LEN: usize = 64 << 20;
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let want = byte_sum(&pattern).wrapping_mul((LEN / pattern.len()) as u64);
    let connect = |role: &str| {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer(role, b, false, &[]);
        let opts = port::ConnectOptions {
            role: port::Role::Supervisor,
            ..shm_options()
        };
        let ipc = a.connect_with(opts).expect("connect");
        (child, ipc)
    };
    let (buffer_child, mut buffer_ipc) = connect("buffer-sum");
    let (vec_child, mut vec_ipc) = connect("vec-sum");
    let ring = RawRing::create();
    let mut data = RawData::create();
    let (_a, b) = port::open().expect("open");
    let kept_child = spawn_peer(
        "kept-sum",
        b,
        false,
        &[
            ring.file.path.clone().expect("ring"),
            data.file.path.clone().expect("data"),
        ],
    );
    let mut seq = 0u64;
    let mut kept = || {
        let t = Instant::now();
        data.fill(&pattern);
        seq += 1;
        ring.publish(0, seq);
        ring.wait_seq(1, seq - 1);
        let mut m = [0u8; MSG];
        ring.read_msg(1, &mut m);
        let d = t.elapsed();
        assert_eq!(u64::from_le_bytes(m[..8].try_into().expect("8 bytes")), want);
        d.as_secs_f64() * 1e3
    };
    let mut buffer = || {
        let t = Instant::now();
        let mut buf = portpool::port::Buffer::with_capacity(LEN).expect("buffer");
        buf.resize(LEN).expect("resize");
        for c in buf.as_mut().expect("writable").chunks_mut(pattern.len()) {
            c.copy_from_slice(&pattern[..c.len()]);
        }
        buffer_ipc.send(&buf).expect("send buffer");
        let sum: u64 = buffer_ipc.recv().expect("sum");
        let d = t.elapsed();
        assert_eq!(sum, want);
        d.as_secs_f64() * 1e3
    };
    let mut vec = || {
        let t = Instant::now();
        let mut v = vec![0u8; LEN];
        for c in v.chunks_mut(pattern.len()) {
            c.copy_from_slice(&pattern[..c.len()]);
        }
        vec_ipc.send_bytes(&v).expect("send bytes");
        let sum: u64 = vec_ipc.recv().expect("sum");
        let d = t.elapsed();
        assert_eq!(sum, want);
        d.as_secs_f64() * 1e3
    };
    // One warm-up round each (the kept mapping's pages fault in here, once).
    kept();
    buffer();
    vec();
    let (mut k, mut b, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        k.push(kept());
        b.push(buffer());
        v.push(vec());
    }
    let kept_ms = median(k);
    let ours = median(b);
    report("transfer_64MiB", ours, kept_ms, "ms");
    report("transfer_64MiB_vs_vec", ours, median(v), "ms");
    // The same through a process pool: a job with the Buffer, a job with the
    // bytes, one worker that reads every byte.
    let pool = Pool::builder()
        .processes(1)
        .handlers(handlers())
        .build()
        .expect("pool");
    let pool_buffer = || {
        let t = Instant::now();
        let mut buf = portpool::port::Buffer::with_capacity(LEN).expect("buffer");
        buf.resize(LEN).expect("resize");
        for c in buf.as_mut().expect("writable").chunks_mut(pattern.len()) {
            c.copy_from_slice(&pattern[..c.len()]);
        }
        let sum = pool.submit(SumBuffer(buf)).expect("submit").wait().expect("job");
        let d = t.elapsed();
        assert_eq!(sum, want);
        d.as_secs_f64() * 1e3
    };
    let pool_vec = || {
        let t = Instant::now();
        let mut v = vec![0u8; LEN];
        for c in v.chunks_mut(pattern.len()) {
            c.copy_from_slice(&pattern[..c.len()]);
        }
        let job = SumBytes(serde_bytes::ByteBuf::from(v));
        let sum = pool.submit(job).expect("submit").wait().expect("job");
        let d = t.elapsed();
        assert_eq!(sum, want);
        d.as_secs_f64() * 1e3
    };
    pool_buffer();
    pool_vec();
    let (mut pb, mut pv) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        pb.push(pool_buffer());
        pv.push(pool_vec());
    }
    let ours = median(pb);
    report("transfer_64MiB_pool", ours, kept_ms, "ms");
    report("transfer_64MiB_pool_vs_vec", ours, median(pv), "ms");
    drop(pool);
    ring.publish(0, u64::MAX);
    finish(kept_child);
    drop(buffer_ipc);
    drop(vec_ipc);
    finish(buffer_child);
    finish(vec_child);
}

/// µs per 64-byte round trip: our `Ipc` over shared memory against the raw
/// ring, and against the raw busy-polling socketpair of `port_roundtrip_64B`.
fn shm_roundtrip(reps: usize, iters: usize) {
    let run_raw_ring = || raw_ring_roundtrip(iters);
    let run_shm = || {
        let (a, b) = port::open().expect("open");
        let child = spawn_peer("port-echo-shm", b, false, &[]);
        let opts = port::ConnectOptions {
            shared_memory: true,
            role: port::Role::Supervisor,
            ..port::ConnectOptions::default()
        };
        let mut ipc: Ipc = a.connect_with(opts).expect("connect");
        assert_eq!(ipc.transport(), "shared memory", "the bench needs shared memory");
        let msg = [1u8; MSG];
        let mut buf = Vec::new();
        let mut time = |n: usize| {
            let t = Instant::now();
            for _ in 0..n {
                ipc.send_bytes(&msg).expect("send");
                ipc.recv_bytes_into(&mut buf).expect("recv");
            }
            t.elapsed()
        };
        time(iters / 10);
        let d = time(iters);
        drop(ipc);
        finish(child);
        d.as_secs_f64() * 1e6 / iters as f64
    };
    let run_socket = || raw_roundtrip(iters / 4, false);
    let (mut ring, mut ours, mut sock) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        ring.push(run_raw_ring());
        ours.push(run_shm());
        sock.push(run_socket());
    }
    let ours = median(ours);
    report("shm_roundtrip_64B", ours, median(ring), "us");
    report("shm_roundtrip_64B_vs_socket", ours, median(sock), "us");
}

/// CPU seconds an idle shared-memory connection (blocked in `recv`) uses
/// over 2 s of wall time.
fn shm_idle_cpu() {
    let (a, b) = port::open().expect("open");
    let opts = port::ConnectOptions {
        shared_memory: true,
        ..port::ConnectOptions::default()
    };
    let peer = std::thread::spawn(move || b.connect_with(opts).expect("connect"));
    let mut ipc = a.connect_with(opts).expect("connect");
    let _keep = peer.join().expect("peer");
    assert_eq!(ipc.transport(), "shared memory", "the bench needs shared memory");
    let wall = Duration::from_secs(2);
    let cpu = std::thread::spawn(move || {
        let before = thread_cpu();
        let res = ipc.recv_timeout::<u8>(wall);
        assert!(res.is_err(), "nothing was sent");
        thread_cpu() - before
    })
    .join()
    .expect("idle thread");
    report("shm_idle_cpu", cpu, wall.as_secs_f64(), "s");
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

/// jobs/s for `n` tiny jobs through `map` over 2 process workers, beside
/// Python's `multiprocessing.Pool(2).map` with chunksize 12,500, run
/// through `python3` in the same run (alternating).
fn process_map_tiny(reps: usize, n: u64) {
    let run_python = || python::multiprocessing("map", n);
    let pool = Pool::builder().processes(2).build().expect("pool");
    // Warm up: the map's chunk size adapts within its first few chunks.
    for r in pool.map((0..10_000).map(Tiny)) {
        r.expect("job");
    }
    let run_pool = || map_rate(&pool, n);
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        match run_python() {
            Some(v) => base.push(v),
            None => {
                println!("pool_process_map_tiny skipped: python3 with multiprocessing is not available");
                return;
            }
        }
        ours.push(run_pool());
    }
    report("pool_process_map_tiny", median(ours), median(base), "jobs/s");
}
