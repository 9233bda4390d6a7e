//! Following a child's stderr: every line is passed on to this process's
//! stderr as it comes, and the last ones are kept for error reports.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::util::lock;

/// How many of a child's last stderr lines a report carries, and how long
/// each may be.
const STDERR_LINES: usize = 20;
const STDERR_LINE_MAX: usize = 1000;

/// How long an exited child's stderr may stay open (held by a grandchild)
/// before its exit is reported without the rest.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// The last lines of a worker's stderr, kept by a thread that also passes
/// them on to this process's stderr.
#[derive(Default)]
pub(crate) struct StderrTail {
    lines: Mutex<VecDeque<String>>,
    done: Mutex<bool>,
    cv: Condvar,
}

impl StderrTail {
    /// The lines so far, once the stream ended or `STDERR_GRACE` passed.
    pub(crate) fn wait_lines(&self) -> Vec<String> {
        let deadline = Instant::now() + STDERR_GRACE;
        let mut done = lock(&self.done);
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            done = self
                .cv
                .wait_timeout(done, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(done);
        lock(&self.lines).iter().cloned().collect()
    }
}

/// What a process that was started as a pool's worker, but builds a pool
/// of itself instead of serving, writes on its stderr: its supervisor
/// reports it as the reason the worker failed, and does not pass the line
/// on (one sentence for the user, not one per worker).
pub(crate) const FORGOT_SERVE_IF_WORKER: &str = "this process was started as a portpool worker but did \
     not call portpool::worker::serve_if_worker at the top of main";

fn pass_on(who: &str, pipe: std::process::ChildStderr, tail: Arc<StderrTail>, forward: bool) {
    let mut r = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // Passed on as written, so the worker's messages still reach
                // whoever reads this process's stderr (but for the one line
                // the supervisor reports itself).
                if forward && !String::from_utf8_lossy(&line).contains(FORGOT_SERVE_IF_WORKER) {
                    let _ = std::io::stderr().write_all(&line);
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let mut cut = text.len().min(STDERR_LINE_MAX);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                // A backtrace's frames would push the lines that say what
                // happened out of the tail: they are passed on, not kept.
                if is_backtrace_frame(text) {
                    continue;
                }
                let mut lines = lock(&tail.lines);
                if lines.len() == STDERR_LINES {
                    lines.pop_front();
                }
                lines.push_back(text[..cut].to_string());
            }
        }
    }
    log::trace!("{who}: stderr closed");
    *lock(&tail.done) = true;
    tail.cv.notify_all();
}

impl StderrTail {
    /// Takes `child`'s piped stderr (if it was piped) and follows it on a
    /// thread of its own, passing its lines on to ours with `forward`.
    pub(crate) fn follow(child: &mut Child, who: &str, forward: bool) -> std::io::Result<Arc<StderrTail>> {
        let tail = Arc::new(StderrTail::default());
        match child.stderr.take() {
            Some(pipe) => {
                let (t, who) = (tail.clone(), who.to_string());
                std::thread::Builder::new()
                    .name("portpool-stderr".into())
                    .spawn(move || pass_on(&who, pipe, t, forward))?;
            }
            None => {
                *lock(&tail.done) = true;
            }
        }
        Ok(tail)
    }
}

/// The line of a stderr tail that best says why a process ended: a Rust
/// panic's "panicked at" line with its message (the next line, in the
/// format Rust uses since 1.73) when nothing but Rust's notes and
/// backtrace follows it, else the last line that is not Rust's backtrace
/// note or a blank (or a launcher's summary of the exit, such as srun's
/// "task 0: Exited with exit code 127", when the process said something
/// itself). A panic with lines after it was caught (a handler's panic,
/// already its own job's error): what came later says more.
pub(crate) fn last_meaningful(lines: &[String]) -> Option<String> {
    if let Some(i) = lines.iter().rposition(|l| l.contains("panicked at")) {
        let at = lines[i].trim_end();
        let message = lines
            .get(i + 1)
            .filter(|msg| at.ends_with(':') && !is_noise(msg) && !is_backtrace_frame(msg));
        let after = i + 1 + usize::from(message.is_some());
        let said_more = lines[after..]
            .iter()
            .any(|l| !(is_noise(l) || is_backtrace_frame(l)));
        if !said_more {
            return Some(match message {
                Some(msg) => format!("{at} {}", msg.trim()),
                None => at.to_string(),
            });
        }
    }
    let last = |skip_summaries: bool| {
        lines
            .iter()
            .rev()
            .find(|l| !(is_noise(l) || skip_summaries && is_launcher_summary(l)))
            .map(|l| l.trim_end().to_string())
    };
    last(true).or_else(|| last(false))
}

/// A launcher's line about how the process it carried ended (it repeats
/// the status, not the cause).
fn is_launcher_summary(line: &str) -> bool {
    let l = line.trim();
    l.starts_with("srun: error: ") && l.contains(": task ")
}

/// A frame of a Rust backtrace: `  12: name` or `        at file:line`.
fn is_backtrace_frame(line: &str) -> bool {
    if !line.starts_with(' ') {
        return false;
    }
    let t = line.trim_start();
    if t.starts_with("at ") {
        return true;
    }
    match t.split_once(':') {
        Some((n, _)) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// Lines that say nothing about the cause.
fn is_noise(line: &str) -> bool {
    let l = line.trim();
    l.is_empty()
        || l.starts_with("note: run with `RUST_BACKTRACE=")
        || l.starts_with("note: Some details are omitted")
        || l == "stack backtrace:"
}

#[cfg(test)]
mod tests {
    use super::last_meaningful;

    fn v(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn backtrace_frames_are_recognised() {
        use super::is_backtrace_frame;
        assert!(is_backtrace_frame("   0: std::alloc::rust_oom"));
        assert!(is_backtrace_frame("  12: main"));
        assert!(is_backtrace_frame(
            "             at /rustc/x/library/std/src/alloc.rs:424:5"
        ));
        assert!(!is_backtrace_frame(
            "memory allocation of 1073741824 bytes failed"
        ));
        assert!(!is_backtrace_frame("stack backtrace:"));
        assert!(!is_backtrace_frame("  note: a: b"));
        assert!(!is_backtrace_frame("thread 'main' panicked at src/main.rs:4:5:"));
    }

    #[test]
    fn a_launchers_exit_summary_gives_way_to_the_cause() {
        let tail = v(&[
            "env: '/x/worker': No such file or directory",
            "srun: error: localhost: task 0: Exited with exit code 127",
        ]);
        assert_eq!(
            last_meaningful(&tail).as_deref(),
            Some("env: '/x/worker': No such file or directory")
        );
        let only = v(&["srun: error: localhost: task 0: Killed"]);
        assert_eq!(
            last_meaningful(&only).as_deref(),
            Some("srun: error: localhost: task 0: Killed")
        );
    }

    #[test]
    fn a_panic_is_quoted_with_its_message_not_the_backtrace_note() {
        let tail = v(&[
            "thread 'main' panicked at src/main.rs:4:5:",
            "disk on fire",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]);
        assert_eq!(
            last_meaningful(&tail).as_deref(),
            Some("thread 'main' panicked at src/main.rs:4:5: disk on fire")
        );
    }

    #[test]
    fn a_panic_followed_by_more_gives_way_to_what_came_after() {
        // A handler's panic, caught (its job already failed with it), then
        // the process says why it ends.
        let caught = v(&[
            "thread 'main' (31) panicked at src/main.rs:121:18:",
            "boom panic 0",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
            "about to abort",
        ]);
        assert_eq!(last_meaningful(&caught).as_deref(), Some("about to abort"));
        // A second caught panic has no note after it.
        let again = v(&["thread 'main' panicked at a.rs:1:1:", "first", "exiting: 3"]);
        assert_eq!(last_meaningful(&again).as_deref(), Some("exiting: 3"));
        // A panic that ends the process, with its backtrace after it.
        let fatal = v(&[
            "thread 'main' panicked at a.rs:1:1:",
            "fatal",
            "stack backtrace:",
            "   0: rust_begin_unwind",
            "             at /rustc/x/library/std/src/panicking.rs:1:1",
            "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.",
        ]);
        assert_eq!(
            last_meaningful(&fatal).as_deref(),
            Some("thread 'main' panicked at a.rs:1:1: fatal")
        );
    }

    #[test]
    fn otherwise_the_last_line_that_says_something() {
        assert_eq!(last_meaningful(&v(&["a", "b", ""])).as_deref(), Some("b"));
        assert_eq!(last_meaningful(&v(&[])), None);
    }
}
