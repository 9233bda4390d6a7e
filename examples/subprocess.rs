//! `cargo run --example subprocess`
//!
//! A parent and a child conversing, as in execa's IPC guide. The child is
//! this executable run again with `child` as its argument.
//!
//! - The parent starts the child with an initial message (`ipc_input`).
//! - The child answers it, then both count in turns: each side adds one
//!   and sends it back (`messages` on both sides), until 10.
//! - The parent asks the child a question (`request`) on the way.
//! - At the end the parent prints everything the child sent (`ipc_output`).

use std::process::Command;

use portpool::link::{Codec, Link};
use portpool::subprocess::Subprocess;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone)]
enum Msg {
    Hello(String),
    Count(u32),
}

fn child() -> Result<(), Box<dyn std::error::Error>> {
    let link = Link::from_env(Codec::Postcard)?;
    link.on_request(|question: String| Ok::<String, String>(format!("the child heard {question:?}")));
    // The initial message comes first.
    if let Msg::Hello(from) = link.recv_message::<Msg>()? {
        link.send_message(&Msg::Hello(format!("hello back, {from}")))?;
    }
    for m in link.messages::<Msg>() {
        match m? {
            Msg::Count(10) => break, // the child exits here
            Msg::Count(n) => link.send_message(&Msg::Count(n + 1))?,
            Msg::Hello(_) => {}
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("child") {
        return child();
    }
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("child");
    let sub = Subprocess::builder(cmd)
        .ipc_input(vec![Msg::Hello("parent".into())])
        .spawn()?;

    println!("child says: {:?}", sub.recv_message::<Msg>()?);
    let answer: String = sub.request(&"are you there?".to_string())?;
    println!("asked, and {answer}");

    sub.send_message(&Msg::Count(0))?;
    // Ends when the child exits.
    for m in sub.messages::<Msg>() {
        let m = m?;
        println!("child counted {m:?}");
        if let Msg::Count(n) = m {
            sub.send_message(&Msg::Count(n + 1))?;
        }
    }

    let out = sub.wait()?;
    println!("child exited: {}", out.status);
    println!("everything it sent: {:?}", out.ipc_output::<Msg>());
    Ok(())
}
