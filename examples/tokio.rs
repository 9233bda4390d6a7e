//! A tokio TCP server whose connections each await a job on a process
//! pool: the pool's threads wake the tasks, so no tokio thread blocks
//! while a worker process computes. A client that hangs up mid-job drops
//! its handler's future, which cancels the job.
//!
//! The server listens on loopback; the example starts a few clients of
//! its own, prints what they got, and exits.
//!
//! ```sh
//! cargo run --example tokio
//! ```

use std::sync::Arc;

use portpool::serde::{Deserialize, Serialize};
use portpool::{Handlers, Job, Pool};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Sums the digits of `n`, `rounds` times over (CPU work for a worker).
#[derive(Serialize, Deserialize)]
#[serde(crate = "portpool::serde")]
struct DigitSum {
    n: u64,
    rounds: u32,
}

impl Job for DigitSum {
    type Output = u64;
    type Error = String;
    const NAME: &'static str = "digit-sum";
}

fn handlers() -> Handlers {
    Handlers::new().on::<DigitSum>(|job, cx| {
        let mut total = 0;
        for round in 0..job.rounds {
            if cx.is_cancelled() {
                return Err(format!("cancelled after {round} rounds"));
            }
            let mut n = job.n + u64::from(round);
            while n > 0 {
                total += n % 10;
                n /= 10;
            }
        }
        Ok(total)
    })
}

/// One connection: each line is a number; each answer is awaited from
/// the pool.
async fn serve(pool: Arc<Pool>, stream: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match line.trim().parse::<u64>() {
            Ok(n) => match pool.submit(DigitSum { n, rounds: 100_000 }) {
                // `.await`: the task sleeps until a worker's answer wakes it.
                Ok(ticket) => match ticket.await {
                    Ok(sum) => format!("{n}: {sum}\n"),
                    Err(e) => format!("{n}: failed: {e}\n"),
                },
                Err(e) => format!("{n}: not taken: {e}\n"),
            },
            Err(e) => format!("{line:?} is not a number: {e}\n"),
        };
        write.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Workers are this program run again: serve there, before tokio starts.
    portpool::worker::serve_if_worker(&handlers());
    let pool = Arc::new(Pool::builder().processes(2).build()?);

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        println!("listening on {addr}");
        let server = {
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        break;
                    };
                    tokio::spawn(serve(pool.clone(), stream));
                }
            })
        };
        let clients: Vec<_> = (0..4u64)
            .map(|c| {
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await?;
                    let ask = format!("{}\n{}\nseven\n", c * 1000, c * 1000 + 1);
                    stream.write_all(ask.as_bytes()).await?;
                    stream.shutdown().await?;
                    let mut lines = BufReader::new(stream).lines();
                    let mut got = Vec::new();
                    while let Some(l) = lines.next_line().await? {
                        got.push(l);
                    }
                    Ok::<_, std::io::Error>((c, got))
                })
            })
            .collect();
        for client in clients {
            let (c, got) = client.await??;
            println!("client {c}: {}", got.join(" | "));
        }
        server.abort();
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let stats = pool.stats();
    println!(
        "{} jobs done on {} worker processes",
        stats.done,
        stats.workers.len()
    );
    Ok(())
}
