//! `cargo run --example ports`
//!
//! A parent hands one end of a port pair to a child process and the two
//! converse: the parent asks for word counts of a few lines of text, the
//! child answers each, then the parent gives the child a *second* port
//! over the first connection and they say goodbye on that one.
//!
//! The child is this same executable, started again with the port in its
//! environment (`Port::from_env`).

use std::process::Command;

use portpool::port::{self, Port};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
enum Request {
    CountWords(String),
    Done,
}

#[derive(Serialize, Deserialize, Debug)]
struct Counted {
    line: String,
    words: usize,
    by_pid: u32,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    if Port::in_env() {
        return child();
    }
    parent()
}

fn parent() -> Result<()> {
    let (ours, theirs) = port::open()?;
    let exe = std::env::current_exe()?;
    // The child inherits exactly its port (and stdio); the parent's copy of
    // the child's end is closed as soon as it is spawned.
    let mut child = theirs.spawn(Command::new(exe))?;
    let mut ipc = ours.connect()?;
    println!("parent {}: connected to child {}", std::process::id(), child.id());

    let lines = [
        "a port pair is two ends of one connection",
        "move one end to a thread or a child process",
        "messages arrive whole and in order",
    ];
    for line in lines {
        ipc.send(&Request::CountWords(line.to_string()))?;
        let c: Counted = ipc.recv()?;
        println!(
            "  child {} counted {:>2} words in {:?}",
            c.by_pid, c.words, c.line
        );
    }

    // Hand the child a second port over the first connection.
    let (side, side_for_child) = port::open()?;
    ipc.send(&Request::Done)?;
    ipc.send_port(side_for_child)?;
    let mut side = side.connect()?;
    let bye: String = side.recv()?;
    println!("parent: on the second port the child says {bye:?}");

    drop((ipc, side));
    let status = child.wait()?;
    println!("parent: child exited with {status}");
    Ok(())
}

fn child() -> Result<()> {
    let mut ipc = Port::from_env()?.connect()?;
    // Answer until the parent says Done.
    while let Request::CountWords(line) = ipc.recv::<Request>()? {
        let words = line.split_whitespace().count();
        ipc.send(&Counted {
            line,
            words,
            by_pid: std::process::id(),
        })?;
    }
    let side = ipc.recv_port()?.connect()?;
    side.send("goodbye from the second port")?;
    Ok(())
}
