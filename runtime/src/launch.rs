//! Launchers: where a pool's process worker runs. A worker is any command
//! that speaks the port protocol over a pair of fds; a launcher is a
//! prefix that starts that command somewhere else while carrying its stdin
//! and stdout: `ssh host …`, Slurm's `srun -u …`, or any command of your
//! own (`docker exec -i box …`). The port travels over the launcher's
//! stdio as a pipe pair; the worker finds it in `PORTPOOL_PORT=stdio:<pid>`,
//! set by a small `sh -c 'exec env … program'` on the far side (ssh does
//! not forward the environment).
//!
//! ```no_run
//! # extern crate portpool_runtime as portpool;
//! use portpool::job::Handlers;
//! use portpool::launch::Launcher;
//! use portpool::pool::Pool;
//!
//! # fn handlers() -> Handlers { Handlers::new() }
//! let pool = Pool::builder()
//!     .handlers(handlers())
//!     .processes(2) // two local workers
//!     .launch(Launcher::ssh("node1").user("me"), 4) // four on node1
//!     .launch(Launcher::srun().arg("--partition=short"), 8) // eight in Slurm
//!     .build()?;
//! # Ok::<(), portpool::pool::BuildError>(())
//! ```
//!
//! What a remote worker runs is by default the same path (and arguments)
//! as a local worker's command, which suits clusters whose machines share
//! a file system; [`Launcher::program`] names another. Supervision is the
//! same as for local workers (restarts, timeouts, cancel, graceful
//! shutdown): the process the pool holds is the launcher's (ssh's or
//! srun's), a launcher that cannot connect is a start failure with its own
//! error text, and a connection that drops is a worker exit. A remote
//! worker ends itself as soon as its connection goes away, even in the
//! middle of a long handler.
//!
//! Throughput over ssh is bounded by ssh itself (about 65 MiB/s through
//! one connection here, with its default cipher): a map of tiny jobs over
//! two ssh workers on this 2-core machine ran at about half the rate of
//! two local workers, and about 0.6 of it with
//! `.ssh_option("Ciphers=^aes128-gcm@openssh.com")` (AES first, on CPUs
//! with AES instructions). Latency is about 0.1 ms a round trip, which is
//! why a remote worker holds 16 jobs at once by default.
//!
//! Not for: starting machines, copying binaries, or forwarding ports: use
//! your cluster's tools for that; nothing here listens on the network.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;

/// Where a process worker runs, and how it is started there. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct Launcher {
    how: How,
    /// Extra arguments for the launcher itself.
    args: Vec<OsString>,
    /// The program to run on the far side, instead of the local worker
    /// command's.
    program: Option<(OsString, Vec<OsString>)>,
    /// Variables set on the far side's command line.
    env: Vec<(String, OsString)>,
    /// A setting that does not apply to this kind of launcher (reported
    /// by the pool's `build()`).
    misuse: Option<String>,
}

#[derive(Clone, Debug)]
enum How {
    Local,
    Ssh(Ssh),
    Srun,
    Prefix(Vec<OsString>),
}

#[derive(Clone, Debug, Default)]
struct Ssh {
    host: String,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<PathBuf>,
    options: Vec<String>,
    no_config: bool,
}

impl Launcher {
    fn new(how: How) -> Launcher {
        Launcher {
            how,
            args: Vec::new(),
            program: None,
            env: Vec::new(),
            misuse: None,
        }
    }

    /// Workers on this machine, as [`PoolBuilder::processes`](crate::pool::PoolBuilder::processes) starts them.
    pub fn local() -> Launcher {
        Launcher::new(How::Local)
    }

    /// Workers started with `ssh host`, in batch mode (never a password
    /// prompt) and without a terminal. Your own ssh configuration
    /// (`~/.ssh/config`, known hosts, agent) applies unless
    /// [`no_ssh_config`](Self::no_ssh_config) is set.
    pub fn ssh(host: impl Into<String>) -> Launcher {
        Launcher::new(How::Ssh(Ssh {
            host: host.into(),
            ..Ssh::default()
        }))
    }

    /// Workers started with `srun -u -N1 -n1 --exact` (one Slurm task per
    /// worker; inside an `salloc` allocation each is a step of it, and an
    /// allocation of N tasks holds N workers at once). `SLURM_CONF` and the
    /// rest of this process's environment reach srun as usual.
    pub fn srun() -> Launcher {
        Launcher::new(How::Srun)
    }

    /// Workers started by any command that runs its last arguments
    /// somewhere else while carrying stdin and stdout, such as
    /// `["docker", "exec", "-i", "box"]`. The launcher appends
    /// `sh -c '<the worker command>'`.
    pub fn prefix<I, S>(command: I) -> Launcher
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let argv: Vec<OsString> = command.into_iter().map(Into::into).collect();
        let mut l = Launcher::new(How::Prefix(argv));
        if matches!(&l.how, How::Prefix(v) if v.is_empty()) {
            l.misuse = Some("Launcher::prefix needs a command".into());
        }
        l
    }

    fn ssh_mut(&mut self, what: &str) -> Option<&mut Ssh> {
        match &mut self.how {
            How::Ssh(s) => Some(s),
            _ => {
                self.misuse
                    .get_or_insert_with(|| format!("{what} applies to ssh launchers only"));
                None
            }
        }
    }

    /// The ssh port (`ssh -p`).
    pub fn port(mut self, port: u16) -> Self {
        if let Some(s) = self.ssh_mut("Launcher::port") {
            s.port = Some(port);
        }
        self
    }

    /// The remote user (`ssh -l`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        if let Some(s) = self.ssh_mut("Launcher::user") {
            s.user = Some(user.into());
        }
        self
    }

    /// The private key to log in with (`ssh -i`).
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Some(s) = self.ssh_mut("Launcher::identity_file") {
            s.identity = Some(path.into());
        }
        self
    }

    /// An ssh option, as `"Name=value"` (`ssh -o`). Options given here win
    /// over the launcher's own defaults and over your ssh configuration.
    pub fn ssh_option(mut self, option: impl Into<String>) -> Self {
        if let Some(s) = self.ssh_mut("Launcher::ssh_option") {
            s.options.push(option.into());
        }
        self
    }

    /// Ignores your ssh configuration files (`ssh -F none`): only what is
    /// set on this launcher applies.
    pub fn no_ssh_config(mut self) -> Self {
        if let Some(s) = self.ssh_mut("Launcher::no_ssh_config") {
            s.no_config = true;
        }
        self
    }

    /// An extra argument for the launcher command itself (ssh's or srun's,
    /// or after a prefix), before the worker command.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        if matches!(self.how, How::Local) {
            self.misuse
                .get_or_insert_with(|| "Launcher::arg does not apply to local workers".into());
        }
        self.args.push(arg.into());
        self
    }

    /// The program to run on the far side (with its arguments), instead of
    /// the local worker command's path and arguments.
    pub fn program<I, S>(mut self, program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        if matches!(self.how, How::Local) {
            self.misuse.get_or_insert_with(|| {
                "Launcher::program does not apply to local workers (use worker_command)".into()
            });
        }
        self.program = Some((program.into(), args.into_iter().map(Into::into).collect()));
        self
    }

    /// Sets a variable for the far side's worker. It travels on the
    /// launcher's command line (visible to `ps` on both machines): never
    /// put a secret here.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<OsString>) -> Self {
        let key = key.into();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            self.misuse
                .get_or_insert_with(|| format!("Launcher::env: {key:?} is not a variable name"));
        }
        if matches!(self.how, How::Local) {
            self.misuse.get_or_insert_with(|| {
                "Launcher::env does not apply to local workers (use worker_command)".into()
            });
        }
        self.env.push((key, value.into()));
        self
    }

    /// Whether this is [`Launcher::local`].
    pub fn is_local(&self) -> bool {
        matches!(self.how, How::Local)
    }

    /// A setting given that does not apply to this launcher.
    pub(crate) fn misuse(&self) -> Option<&str> {
        self.misuse.as_deref()
    }

    /// The command that starts worker `id` through this launcher, its port
    /// on the command's stdin and stdout; `None` for a local worker.
    /// `worker` is the local worker command (program, arguments and
    /// environment, which the launcher process inherits).
    /// `memory_limit` (bytes) becomes `ulimit -v` on the far side.
    pub(crate) fn command(&self, worker: &Command, id: usize, memory_limit: Option<u64>) -> Option<Command> {
        let (program, args): (OsString, Vec<OsString>) = match &self.program {
            Some((p, a)) => (p.clone(), a.clone()),
            None => (
                worker.get_program().to_owned(),
                worker.get_args().map(OsStr::to_owned).collect(),
            ),
        };
        let ulimit = memory_limit
            .map(|b| format!("ulimit -v {} && ", (b / 1024).max(1)))
            .unwrap_or_default();
        let mut script = format!(
            "{ulimit}exec env {}=stdio:$$ {}={id}",
            crate::port::PORT_ENV,
            crate::child::WORKER_ID_ENV
        )
        .into_bytes();
        for (k, v) in &self.env {
            script.push(b' ');
            script.extend_from_slice(k.as_bytes());
            script.push(b'=');
            script.extend_from_slice(&quote(v));
        }
        for word in std::iter::once(&program).chain(&args) {
            script.push(b' ');
            script.extend_from_slice(&quote(word));
        }
        let script = <OsString as std::os::unix::ffi::OsStringExt>::from_vec(script);
        let mut c = match &self.how {
            How::Local => return None,
            How::Ssh(s) => {
                let mut c = Command::new("ssh");
                // ssh takes the first value it sees for each option: the
                // user's come first, then the ones set here, then defaults.
                for o in &s.options {
                    c.arg("-o").arg(o);
                }
                if let Some(p) = s.port {
                    c.arg("-p").arg(p.to_string());
                }
                if let Some(u) = &s.user {
                    c.arg("-l").arg(u);
                }
                if let Some(i) = &s.identity {
                    c.arg("-i").arg(i);
                }
                if s.no_config {
                    c.arg("-F").arg("none");
                }
                // Never prompt (a prompt would wait for a terminal that is
                // not there); notice a dead network within about 15 s.
                c.args(["-T", "-e", "none", "-o", "BatchMode=yes"]);
                c.args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]);
                c.args(&self.args);
                c.arg("--").arg(&s.host);
                // The remote side runs this through the user's login shell.
                let mut remote = b"sh -c ".to_vec();
                remote.extend_from_slice(&quote(&script));
                c.arg(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(remote));
                c
            }
            How::Srun => {
                let mut c = Command::new("srun");
                // -u: unbuffered, or srun forwards output only up to the
                // last newline and binary frames stall. --exact: inside an
                // allocation a step takes only its own task's share, so
                // several workers run as concurrent steps (without it the
                // second waits for the first to end).
                c.args(["-u", "-N1", "-n1", "--exact"]);
                c.args(&self.args);
                c.arg("sh").arg("-c").arg(&script);
                c
            }
            How::Prefix(argv) => {
                let (first, rest) = argv.split_first()?;
                let mut c = Command::new(first);
                c.args(rest).args(&self.args);
                c.arg("sh").arg("-c").arg(&script);
                c
            }
        };
        crate::child::copy_env_and_dir(worker, &mut c);
        Some(c)
    }
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.how {
            How::Local => f.write_str("local"),
            How::Ssh(s) => {
                f.write_str("ssh ")?;
                if let Some(u) = &s.user {
                    write!(f, "{u}@")?;
                }
                f.write_str(&s.host)?;
                if let Some(p) = s.port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
            How::Srun => f.write_str("srun"),
            How::Prefix(argv) => {
                f.write_str("prefix")?;
                for a in argv {
                    write!(f, " {}", a.to_string_lossy())?;
                }
                Ok(())
            }
        }
    }
}

/// `s` in single quotes for a POSIX shell (a `'` inside becomes `'\''`).
fn quote(s: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sh -c 'printf "%s\n" <quoted>'` prints for `s`.
    fn through_sh(s: &OsStr) -> Vec<u8> {
        let mut script = b"printf '%s' ".to_vec();
        script.extend_from_slice(&quote(s));
        let out = Command::new("sh")
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .output()
            .expect("sh runs");
        out.stdout
    }

    #[test]
    fn quoting_survives_a_real_shell() {
        for s in [
            "plain",
            "with space",
            "it's",
            "'",
            "''",
            "$HOME `id` \"x\" \\n",
            "",
            "a\nb",
            "*?[]~",
        ] {
            assert_eq!(through_sh(OsStr::new(s)), s.as_bytes(), "{s:?}");
        }
        let bytes = OsStr::from_bytes(b"\xff\xfe raw");
        assert_eq!(through_sh(bytes), bytes.as_bytes());
    }

    #[test]
    fn misapplied_settings_are_named() {
        assert!(
            Launcher::srun()
                .port(22)
                .misuse()
                .is_some_and(|m| m.contains("ssh"))
        );
        assert!(Launcher::local().arg("x").misuse().is_some());
        assert!(Launcher::prefix(Vec::<String>::new()).misuse().is_some());
        assert!(Launcher::ssh("h").env("1X", "v").misuse().is_some());
        assert!(
            Launcher::ssh("h")
                .port(2)
                .user("u")
                .env("OK_1", "v")
                .misuse()
                .is_none()
        );
    }

    #[test]
    fn ssh_command_puts_the_users_options_first() {
        let worker = Command::new("/bin/worker");
        let c = Launcher::ssh("h")
            .ssh_option("BatchMode=no")
            .port(2222)
            .command(&worker, 3, None)
            .expect("a remote command");
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let user = args.iter().position(|a| a == "BatchMode=no");
        let ours = args.iter().position(|a| a == "BatchMode=yes");
        assert!(user < ours, "{args:?}");
        let last = args.last().expect("a remote command");
        assert!(
            last.starts_with("sh -c ") && last.contains("PORTPOOL_WORKER_ID=3"),
            "{last}"
        );
    }
}
