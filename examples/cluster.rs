//! `cargo run --release --example cluster -- [LAUNCHER...]`
//!
//! Counts the primes below 20,000,000 (or `--limit N`) on workers started
//! through the launchers on the command line, and prints where each worker
//! ran and how many jobs it did. Each LAUNCHER is one of:
//!
//! - `local:N`: N workers on this machine;
//! - `ssh:N:[USER@]HOST[:PORT]`: N workers over ssh (your ssh config
//!   applies; `--ssh-key FILE` and `--known-hosts FILE` add a key and a
//!   known-hosts file, `--ssh-option Name=value` any option);
//! - `srun:N`: N workers as Slurm tasks (`SLURM_CONF` must be set).
//!
//! With no launcher it uses `local:2`. The workers run this same
//! executable (the same path on every host: a shared file system, or one
//! machine), which serves jobs when it finds it is a worker.
//!
//! Over ssh to this machine (README, "Workers on other machines"):
//! `cargo run --release --example cluster -- local:1 ssh:2:root@127.0.0.1:2222 --ssh-key KEY --known-hosts FILE --ssh-option IdentitiesOnly=yes`

use std::collections::BTreeMap;
use std::time::Instant;

use portpool::launch::Launcher;
use portpool::{Handlers, Job, Pool};
use serde::{Deserialize, Serialize};

/// Count the primes in `from..to`; the answer says where it ran.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct CountPrimes {
    from: u64,
    to: u64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Counted {
    primes: u64,
    host: String,
    pid: u32,
}

impl Job for CountPrimes {
    type Output = Counted;
    type Error = String;
    const NAME: &'static str = "count-primes";
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn handlers() -> Handlers {
    Handlers::new().on::<CountPrimes>(|job, _cx| {
        Ok(Counted {
            primes: (job.from..job.to).filter(|&n| is_prime(n)).count() as u64,
            host: hostname(),
            pid: std::process::id(),
        })
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    portpool::worker::serve_if_worker(&handlers());

    let mut limit: u64 = 20_000_000;
    let mut ssh_extra: Vec<String> = Vec::new();
    let mut specs: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--limit" => limit = value("--limit")?.parse()?,
            "--ssh-key" => ssh_extra.push(format!("IdentityFile={}", value("--ssh-key")?)),
            "--known-hosts" => ssh_extra.push(format!("UserKnownHostsFile={}", value("--known-hosts")?)),
            "--ssh-option" => ssh_extra.push(value("--ssh-option")?),
            _ => specs.push(a),
        }
    }
    if specs.is_empty() {
        specs.push("local:2".into());
    }

    let mut builder = Pool::builder().handlers(handlers());
    for spec in &specs {
        let (launcher, n) = parse(spec, &ssh_extra)?;
        builder = builder.launch(launcher, n);
    }
    let start = Instant::now();
    let pool = builder.build()?;
    println!("{} workers up in {:.2?}", pool.workers(), start.elapsed());

    const CHUNK: u64 = 100_000;
    let jobs = (0..limit.div_ceil(CHUNK)).map(|i| CountPrimes {
        from: i * CHUNK,
        to: ((i + 1) * CHUNK).min(limit),
    });
    let total_jobs = limit.div_ceil(CHUNK);
    let start = Instant::now();
    let mut primes = 0;
    let mut by_place: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for (i, r) in pool.map(jobs).enumerate() {
        let c = r?;
        primes += c.primes;
        *by_place.entry((c.host, c.pid)).or_default() += 1;
        if (i + 1) % 20 == 0 || i as u64 + 1 == total_jobs {
            eprint!("\r{}/{} jobs", i + 1, total_jobs);
        }
    }
    eprintln!();
    println!("{primes} primes below {limit} in {:.2?}", start.elapsed());
    println!("{:<4} {:<28} {:>7} {:>8}", "id", "launcher", "pid", "jobs");
    let stats = pool.stats();
    for w in &stats.workers {
        println!(
            "{:<4} {:<28} {:>7} {:>8}",
            w.id,
            w.launcher,
            w.pid.map_or("-".into(), |p| p.to_string()),
            w.done,
        );
    }
    for ((host, pid), n) in &by_place {
        println!("  worker process {pid} on {host}: {n} jobs");
    }
    pool.shutdown(portpool::Shutdown::graceful(std::time::Duration::from_secs(10)));
    Ok(())
}

/// `local:N`, `ssh:N:[USER@]HOST[:PORT]` or `srun:N`.
fn parse(spec: &str, ssh_extra: &[String]) -> Result<(Launcher, usize), String> {
    let mut parts = spec.splitn(3, ':');
    let kind = parts.next().unwrap_or_default();
    let n: usize = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or(format!("{spec:?}: expected KIND:N[:…]"))?;
    let launcher = match kind {
        "local" => Launcher::local(),
        "srun" => Launcher::srun(),
        "ssh" => {
            let target = parts.next().ok_or(format!("{spec:?}: ssh needs a host"))?;
            let (user, hostport) = match target.split_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, target),
            };
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h,
                    Some(p.parse::<u16>().map_err(|e| format!("{spec:?}: port: {e}"))?),
                ),
                None => (hostport, None),
            };
            let mut l = Launcher::ssh(host);
            if let Some(u) = user {
                l = l.user(u);
            }
            if let Some(p) = port {
                l = l.port(p);
            }
            for o in ssh_extra {
                l = l.ssh_option(o.clone());
            }
            l
        }
        _ => return Err(format!("{spec:?}: unknown launcher {kind:?} (local, ssh, srun)")),
    };
    Ok((launcher, n))
}
