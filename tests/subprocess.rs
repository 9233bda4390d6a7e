//! `Subprocess`: one child to talk to, with real child processes.

mod common;

use std::time::Duration;

use common::{BOUND, assert_pid_gone, fixture};
use portpool::Runtime;
use portpool::subprocess::{Subprocess, SubprocessError};

fn sub(scenario: &str) -> std::process::Command {
    let mut c = fixture("sub");
    c.arg(scenario);
    c
}

#[test]
fn ipc_input_comes_first_and_ipc_output_holds_every_message() {
    let child = Subprocess::builder(sub("greet"))
        .ipc_input(vec!["lint".to_string()])
        .runtime(&Runtime::new())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    assert_eq!(child.recv_message::<String>().unwrap(), "got lint");
    child.send_message("a").unwrap();
    assert_eq!(child.recv_message::<String>().unwrap(), "echo a");
    child.send_message("b").unwrap();
    child.send_message("done").unwrap();
    let out = child.wait().unwrap();
    assert!(out.status.success());
    // Every message the child sent, also those already read.
    assert_eq!(
        out.ipc_output::<String>(),
        ["got lint", "echo a", "echo b", "bye"]
    );
    assert_pid_gone(pid);
}

#[test]
fn a_failed_child_reports_its_messages_and_the_tail_of_its_stderr() {
    let child = Subprocess::builder(sub("fail"))
        .runtime(&Runtime::new())
        .forward_stderr(false)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    match child.wait() {
        Err(e @ SubprocessError::Failed { .. }) => {
            assert_eq!(e.ipc_output::<String>(), ["working", "stuck"]);
            let SubprocessError::Failed { status, stderr, .. } = &e else {
                unreachable!()
            };
            assert_eq!(status.and_then(|s| s.code()), Some(3));
            assert_eq!(stderr.last().map(String::as_str), Some("fatal: the disk is full"));
            let text = e.to_string();
            assert!(
                text.contains("exit code 3") && text.contains("the disk is full"),
                "{text}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_pid_gone(pid);
}

#[test]
fn an_unrefd_subprocess_does_not_keep_the_runtime_running() {
    let rt = Runtime::new();
    let child = Subprocess::builder(sub("wait")).runtime(&rt).spawn().unwrap();
    let pid = child.id().unwrap();
    assert_eq!(rt.refs(), 1);
    child.set_keep_alive(false);
    // Returns although the child still runs.
    assert!(rt.run_timeout(BOUND).is_some());
    assert!(!child.keeps_alive());
    child.set_keep_alive(true);
    assert_eq!(rt.refs(), 1);
    // wait() closes our side of the conversation: the child's wait ends.
    let out = child.wait().unwrap();
    assert!(out.status.success());
    assert_eq!(rt.refs(), 0);
    assert_pid_gone(pid);
}

#[test]
fn a_child_that_cannot_start_is_an_error() {
    let err = Subprocess::builder(std::process::Command::new("/nonexistent/child"))
        .runtime(&Runtime::new())
        .spawn()
        .unwrap_err();
    assert!(err.to_string().contains("could not start"), "{err}");
    let _ = Duration::ZERO;
}
