//! The conversation layer with real processes: ordered and filtered
//! messages, strict sends, request/reply, and a peer written in Python
//! from docs/protocol.md. Every child is asserted gone afterwards.

mod common;
#[path = "../fixtures/jobs.rs"]
mod jobs;

use std::process::Command;
use std::time::Duration;

use common::{BOUND, Fixture, fixture};
use jobs::Tagged;
use portpool::link::{Codec, Link, LinkError};
use portpool::port;
use serde::{Deserialize, Serialize};

/// Connection options for a JSON link (the codec is announced in the hello).
fn json_options() -> port::ConnectOptions {
    port::ConnectOptions {
        codec: Codec::Json,
        ..port::ConnectOptions::default()
    }
}

/// Spawns the fixture's `link <scenario> [n]` mode and links to it.
fn linked(scenario: &str, n: Option<u32>) -> (Fixture, Link) {
    let mut cmd = fixture("link");
    cmd.arg(scenario);
    if let Some(n) = n {
        cmd.arg(n.to_string());
    }
    let (f, ipc) = Fixture::connected_with(cmd);
    (f, Link::new(ipc))
}

#[test]
fn a_filtered_read_leaves_other_messages_for_later_readers() {
    let (child, link) = linked("kinds", None);
    let b = link
        .recv_message_where(|m: &Tagged| matches!(m, Tagged::B(_)))
        .unwrap();
    assert_eq!(b, Tagged::B(2));
    // The A that arrived first is still there, then the rest in order.
    assert_eq!(link.recv_message::<Tagged>().unwrap(), Tagged::A(1));
    let rest: Vec<Tagged> = link.messages().take(2).map(Result::unwrap).collect();
    assert_eq!(rest, [Tagged::A(3), Tagged::B(4)]);
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn messages_sent_from_four_threads_arrive_in_each_senders_order() {
    const PER: u32 = 2_500;
    let (child, link) = linked("order", Some(4 * PER));
    std::thread::scope(|s| {
        for sender in 0..4u32 {
            let link = &link;
            s.spawn(move || {
                for seq in 0..PER {
                    link.send_message(&(sender, seq)).unwrap();
                }
            });
        }
    });
    let out_of_order: u32 = link.recv_message_timeout(BOUND).unwrap();
    assert_eq!(out_of_order, 0);
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn messages_end_when_the_peer_disconnects_cleanly() {
    let (child, link) = linked("listen", None);
    link.send_message("one").unwrap();
    assert_eq!(link.recv_message::<String>().unwrap(), "heard one");
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn a_strict_message_to_a_peer_that_is_not_listening_fails() {
    let (child, link) = linked("deaf", None);
    assert_eq!(link.send_message_strict("hello?"), Err(LinkError::NotListening));
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn a_strict_message_to_a_listening_peer_is_delivered() {
    let (child, link) = linked("listen", None);
    // The child listens as soon as it has started; until then a strict
    // message is refused (and not delivered), so try until it lands.
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        match link.send_message_strict("ping") {
            Ok(()) => break,
            Err(LinkError::NotListening) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("strict send failed: {e}"),
        }
    }
    assert_eq!(link.recv_message::<String>().unwrap(), "heard ping");
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn a_strict_message_to_a_peer_that_exited_fails_with_peer_exited() {
    let (mut child, link) = linked("exit-on-message", None);
    link.send_message("bye").unwrap();
    child.wait();
    assert_eq!(
        link.send_message_strict("still there?"),
        Err(LinkError::PeerExited)
    );
    drop(link);
    child.assert_gone();
}

#[test]
fn two_strict_sends_crossing_each_other_are_a_deadlock_not_a_hang() {
    let (ours, theirs) = port::open().unwrap();
    let child = Fixture::spawn(fixture("strict-cross"), theirs);
    let link = Link::with_codec(ours.connect_with(json_options()).unwrap(), Codec::Json);
    assert_eq!(
        link.send_message_strict("from the parent"),
        Err(LinkError::Deadlock)
    );
    // The child reports what we answered to its own strict message.
    assert_eq!(link.recv_message::<String>().unwrap(), "deadlock");
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn replies_may_come_out_of_order_and_failures_arrive_as_the_peers_error() {
    let (child, link) = linked("reverse", Some(3));
    let results: Vec<Result<u32, LinkError>> = std::thread::scope(|s| {
        let hs: Vec<_> = [4u32, 13, 7]
            .into_iter()
            .map(|v| {
                let link = &link;
                s.spawn(move || link.request::<u32, u32>(&v))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0], Ok(40));
    assert_eq!(results[1], Err(LinkError::Failed("13 is unlucky".into())));
    assert_eq!(results[2], Ok(70));
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn a_pending_request_fails_when_the_peer_goes_away() {
    let (child, link) = linked("drop-request", None);
    assert_eq!(link.request::<u32, u32>(&1), Err(LinkError::Disconnected));
    // And so does every later one.
    assert_eq!(link.request::<u32, u32>(&2), Err(LinkError::Disconnected));
    drop(link);
    child.assert_gone();
}

#[test]
fn a_pending_request_fails_past_its_deadline() {
    let (child, link) = linked("ignore-request", None);
    assert_eq!(
        link.request_timeout::<u32, u32>(&1, Duration::from_millis(50)),
        Err(LinkError::Timeout)
    );
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn a_registered_handler_answers_the_peers_requests() {
    let (child, link) = linked("ask", Some(41));
    link.on_request(|n: u32| Ok::<u32, String>(n + 1));
    assert_eq!(link.recv_message::<u32>().unwrap(), 42);
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn messages_survive_a_connection_within_one_process_too() {
    // Both ends in this process: a link per side, over a port pair.
    let (a, b) = port::open().unwrap();
    let t = std::thread::spawn(move || {
        let link = Link::new(b.connect().unwrap());
        link.on_request(|s: String| Ok::<usize, String>(s.len()));
        link.wait_closed();
    });
    let link = Link::new(a.connect().unwrap());
    assert_eq!(link.request::<str, usize>("four").unwrap(), 4);
    drop(link);
    t.join().unwrap();
}

/// A message of another type whose bytes start like the one asked for is
/// not read as its prefix: bytes left over mean it is not a `T`. The next
/// message read as `T` is then an error and stays; a filtered read passes
/// it by, and a reader of its own type still gets it.
#[test]
fn a_message_is_not_read_as_a_prefix_of_itself() {
    let (a, b) = port::open().unwrap();
    let t = std::thread::spawn(move || {
        let link = Link::new(b.connect().unwrap());
        link.send_message(&(7u32, 9u32)).unwrap();
        link.send_message(&8u32).unwrap();
        link.wait_closed();
    });
    let link = Link::new(a.connect().unwrap());
    // A filtered read passes the pair by; the pair then is next.
    assert_eq!(link.recv_message_where::<u32>(|_| true).unwrap(), 8);
    assert!(matches!(
        link.recv_message_timeout::<u32>(BOUND),
        Err(LinkError::Codec(_))
    ));
    assert_eq!(link.recv_message_timeout::<(u32, u32)>(BOUND).unwrap(), (7, 9));
    drop(link);
    t.join().unwrap();
}

/// The next message read as the wrong type is an error at once, never a
/// wait for a message that fits, nor a later message read in its place;
/// the message stays for a read of its own type (blocking and async).
#[test]
fn the_next_message_read_as_another_type_is_an_error_and_stays() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Event {
        Started,
        Progress(u32),
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }
    let (a, b) = port::open().unwrap();
    let t = std::thread::spawn(move || {
        let link = Link::new(b.connect().unwrap());
        link.send_message(&Event::Started).unwrap();
        link.send_message(&Event::Progress(50)).unwrap();
        link.send_message(&"not a number".to_string()).unwrap();
        link.wait_closed();
    });
    let link = Link::new(a.connect().unwrap());
    // `Started` is one byte; a Point needs two. (Before, this read passed
    // it by and took `Progress(50)` as Point { x: -1, y: 25 }.)
    assert!(matches!(link.recv_message::<Point>(), Err(LinkError::Codec(_))));
    assert_eq!(link.recv_message::<Event>().unwrap(), Event::Started);
    assert_eq!(
        link.recv_message_timeout::<Event>(BOUND).unwrap(),
        Event::Progress(50)
    );
    // Only the string is left: a u64 read fails at once (it used to wait
    // forever), the async read too, and the string is still there.
    assert!(matches!(link.recv_message::<u64>(), Err(LinkError::Codec(_))));
    let got = futures::executor::block_on(link.recv_message_async::<u64>());
    assert!(matches!(got, Err(LinkError::Codec(_))), "{got:?}");
    assert_eq!(link.recv_message::<String>().unwrap(), "not a number");
    drop(link);
    t.join().unwrap();
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Add { a: i64, b: i64 },
    Fail,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    sum: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Echo<T> {
    echo: T,
}

#[test]
fn a_python_peer_written_from_the_protocol_document_talks_to_us() {
    let (ours, theirs) = port::open().unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/json_peer.py"));
    let child = Fixture::spawn(cmd, theirs);
    let link = Link::with_codec(ours.connect_with(json_options()).unwrap(), Codec::Json);
    assert_eq!(
        link.request::<Op, Sum>(&Op::Add { a: 40, b: 2 }).unwrap(),
        Sum { sum: 42 }
    );
    match link.request::<Op, Sum>(&Op::Fail) {
        Err(LinkError::Failed(why)) => assert!(why.contains("unknown op"), "{why}"),
        other => panic!("expected a failure reply, got {other:?}"),
    }
    link.send_message(&[1, 2, 3]).unwrap();
    assert_eq!(
        link.recv_message::<Echo<Vec<u8>>>().unwrap(),
        Echo { echo: vec![1, 2, 3] }
    );
    link.send_message_strict("strictly").unwrap();
    assert_eq!(
        link.recv_message::<Echo<String>>().unwrap(),
        Echo {
            echo: "strictly".into()
        }
    );
    drop(link);
    assert!(child.assert_gone().success());
}

#[test]
fn a_pool_worker_converses_with_its_supervisor_beside_its_jobs() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portpool-fixture"));
    cmd.arg("pool-worker");
    let pool = portpool::Pool::builder()
        .processes(1)
        .worker_command(cmd)
        .worker_links(true)
        .runtime(&portpool::Runtime::new())
        .build()
        .unwrap();
    let pid = pool.stats().workers[0].pid.unwrap();
    let link = pool.worker_link(0).expect("the worker has a link");
    link.on_request(|n: u32| Ok::<u32, String>(n * 2));
    link.send_message("from the supervisor").unwrap();
    let job = jobs::Converse {
        say: "from the worker".into(),
        ask: 21,
    };
    let (doubled, heard) = pool.submit(job).unwrap().wait().unwrap();
    assert_eq!(doubled, 42);
    assert_eq!(heard, "from the supervisor");
    assert_eq!(link.recv_message::<String>().unwrap(), "from the worker");
    drop(link);
    pool.shutdown(portpool::Shutdown::default());
    common::assert_pid_gone(pid);
}

#[test]
fn a_thread_pool_has_no_worker_links() {
    let pool = portpool::Pool::builder()
        .threads(1)
        .handlers(jobs::handlers())
        .runtime(&portpool::Runtime::new())
        .build()
        .unwrap();
    assert!(pool.worker_link(0).is_none());
    let r = pool
        .submit(jobs::Converse {
            say: String::new(),
            ask: 0,
        })
        .unwrap()
        .wait();
    assert!(
        matches!(r, Err(portpool::JobError::Handler(ref e)) if e.contains("no link")),
        "{r:?}"
    );
}

#[test]
fn a_request_that_came_before_the_handler_is_answered() {
    let (a, b) = port::open().unwrap();
    let asker = std::thread::spawn(move || {
        let link = Link::new(b.connect().unwrap());
        link.request::<u32, u32>(&20).unwrap()
    });
    let mut ipc = a.connect().unwrap();
    // The request is here before our side has a link, let alone a handler.
    let deadline = std::time::Instant::now() + BOUND;
    while !ipc.has_frame().unwrap() {
        assert!(std::time::Instant::now() < deadline, "the request never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    let link = Link::new(ipc);
    link.on_request(|n: u32| Ok::<u32, String>(n + 1));
    assert_eq!(asker.join().unwrap(), 21);
    drop(link);
}

// docs/protocol.md, section 4: a JSON peer's failure whose data is not a
// string arrives as that value's JSON text; a reply to an id we never
// used is ignored.
#[test]
fn a_json_failure_that_is_not_a_string_arrives_as_its_json_text() {
    let (a, b) = port::open().unwrap();
    let peer = std::thread::spawn(move || {
        let mut ipc = b.connect_with(json_options()).unwrap();
        let req: serde_json::Value = serde_json::from_slice(&ipc.recv_bytes().unwrap()).unwrap();
        let stray = serde_json::json!({"type": "reply", "id": 999, "ok": true, "data": 1});
        ipc.send_bytes(&serde_json::to_vec(&stray).unwrap()).unwrap();
        let reply = serde_json::json!({"type": "reply", "id": req["id"], "ok": false, "data": {"code": 3}});
        ipc.send_bytes(&serde_json::to_vec(&reply).unwrap()).unwrap();
        // Until the other side hangs up.
        let _ = ipc.recv_bytes();
    });
    let link = Link::with_codec(a.connect_with(json_options()).unwrap(), Codec::Json);
    assert_eq!(
        link.request::<u32, u32>(&1),
        Err(LinkError::Failed(r#"{"code":3}"#.into()))
    );
    drop(link);
    peer.join().unwrap();
}

// A link over a connection opened for the other codec says so at once.
#[test]
fn a_link_of_the_wrong_codec_for_its_connection_says_so() {
    let (a, b) = port::open().unwrap();
    let peer = std::thread::spawn(move || b.connect().unwrap());
    let link = Link::with_codec(a.connect().unwrap(), Codec::Json);
    let mut b = peer.join().unwrap();
    match link.recv_message::<u32>() {
        Err(LinkError::Broken(why)) => assert!(why.contains("JSON") && why.contains("postcard"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Its sends say the same, and nothing reaches the peer.
    match link.send_message(&7u32) {
        Err(LinkError::Broken(why)) => assert!(why.contains("opened for postcard"), "{why}"),
        other => panic!("{other:?}"),
    }
    match link.request::<_, u32>(&1u32) {
        Err(LinkError::Broken(why)) => assert!(why.contains("opened for postcard"), "{why}"),
        other => panic!("{other:?}"),
    }
    // (Both ends on the same transport: the socket, or shared memory
    // when PORTPOOL_TRANSPORT=shm asks for it.)
    assert_eq!(link.transport(), b.transport());
    drop(link);
    assert!(b.recv_bytes().unwrap_err().is_disconnected());
}
