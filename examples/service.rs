//! `cargo run --example service`
//!
//! One service, many clients, as with ipfs-message-port-server: a word
//! counting service runs in its own process (this executable run again
//! with `service`), and clients call it, each over a connection of its
//! own: three threads here, and two client processes (this executable
//! with `client`) that were handed a port to the service and call it
//! directly, without this process relaying.

use std::process::{Command, Stdio};

use portpool::port::Port;
use portpool::service::{Service, ServiceClient};
use portpool::{Handlers, Job};
use serde::{Deserialize, Serialize};

/// Count the words of a text.
#[derive(Serialize, Deserialize, Debug)]
struct CountWords(String);

impl Job for CountWords {
    type Output = usize;
    type Error = String;
    const NAME: &'static str = "count-words";
}

fn handlers() -> Handlers {
    Handlers::new().on::<CountWords>(|CountWords(text), _| {
        if text.is_empty() {
            return Err("nothing to count".into());
        }
        Ok(text.split_whitespace().count())
    })
}

const TEXTS: [&str; 3] = [
    "one service many ports",
    "transfer instead of copy",
    "every client has a connection of its own",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let me = std::env::current_exe()?;
    match std::env::args().nth(1).as_deref() {
        Some("service") => portpool::worker::serve_service(handlers()),
        Some("client") => {
            let client = ServiceClient::from_env()?;
            let n = client.call(&CountWords(format!("client process {}", std::process::id())))?;
            println!("client process {}: {n} words", std::process::id());
            return Ok(());
        }
        _ => {}
    }

    let mut cmd = Command::new(&me);
    cmd.arg("service");
    let mut service = Service::process(cmd)?;
    if let Some(pid) = service.id() {
        println!("service running as pid {pid}");
    }

    // Client threads, each with its own connection.
    std::thread::scope(|s| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let handles: Vec<_> = TEXTS
            .iter()
            .map(|text| {
                let port: Port = service.client_port()?;
                Ok(s.spawn(move || {
                    let client = ServiceClient::connect(port).map_err(|e| e.to_string())?;
                    let n = client
                        .call(&CountWords(text.to_string()))
                        .map_err(|e| e.to_string())?;
                    println!("thread: {text:?} has {n} words");
                    Ok::<(), String>(())
                }))
            })
            .collect::<Result<_, std::io::Error>>()?;
        for h in handles {
            h.join().map_err(|_| "a client thread panicked")??;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;

    // Client processes, handed a port at spawn.
    let mut children = Vec::new();
    for _ in 0..2 {
        let mut cmd = Command::new(&me);
        cmd.arg("client").stdout(Stdio::inherit());
        children.push(service.client_port()?.spawn(cmd)?);
    }
    for mut c in children {
        let st = c.wait()?;
        println!("client process exited: {st}");
    }

    // A handler's own error arrives typed.
    let client = service.connect()?;
    match client.call(&CountWords(String::new())) {
        Err(e) => println!("empty text: {e}"),
        Ok(n) => println!("empty text: {n}?"),
    }
    drop(client);
    service.stop();
    Ok(())
}
