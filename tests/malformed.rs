//! Bad input from a real peer process: each case ends in its documented
//! error, with no panic and no large allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{Fixture, fixture};
use portpool::error::{HandshakeError, RecvError};
use portpool::port::{self, ConnectOptions};
use portpool::transport::frame::{HelloError, MAX_FRAME_LIMIT, PROTOCOL_VERSION};

/// Records the largest single allocation each thread asks for, so a test
/// can prove that a peer's length never turned into an allocation.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the
// bookkeeping touches only a const-initialised thread-local Cell.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

fn largest_allocation_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

/// Spawns the fixture writing hand-made bytes of `variant`.
fn raw_peer(variant: &str, opts: ConnectOptions) -> (Fixture, std::io::Result<portpool::port::Ipc>) {
    let mut cmd = fixture("raw");
    cmd.arg(variant);
    let (ours, theirs) = port::open().unwrap();
    let f = Fixture::spawn(cmd, theirs);
    (f, ours.connect_with(opts))
}

#[test]
fn garbage_instead_of_a_hello_is_refused_as_not_a_portpool_peer() {
    let (f, res) = raw_peer("garbage-hello", ConnectOptions::default());
    let err = res.unwrap_err();
    match HandshakeError::from_io(&err) {
        Some(HandshakeError::Hello(HelloError::BadMagic { found })) => assert_eq!(found, b"GET / HT"),
        other => panic!("expected BadMagic, got {other:?} ({err})"),
    }
    assert!(f.assert_gone().success());
}

#[test]
fn another_protocol_version_fails_naming_both_versions() {
    let (f, res) = raw_peer("version", ConnectOptions::default());
    let err = res.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    match HandshakeError::from_io(&err) {
        Some(HandshakeError::Hello(HelloError::VersionMismatch { ours, theirs })) => {
            assert_eq!((*ours, *theirs), (PROTOCOL_VERSION, 99));
        }
        other => panic!("expected VersionMismatch, got {other:?} ({err})"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")) && text.contains("version 99"),
        "{text}"
    );
    assert!(f.assert_gone().success());
}

#[test]
fn an_unknown_frame_kind_is_a_protocol_error() {
    let (f, res) = raw_peer("unknown-kind", ConnectOptions::default());
    let mut ipc = res.unwrap();
    match ipc.recv_bytes() {
        Err(RecvError::Protocol(e)) => assert!(e.what().contains("unknown frame kind 119"), "{e}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    // The connection stays failed; it does not resynchronise on garbage.
    assert!(matches!(ipc.recv_bytes(), Err(RecvError::Protocol(_))));
    assert!(f.assert_gone().success());
}

#[test]
fn an_undecodable_message_is_reported_and_the_next_one_still_arrives() {
    // Connect only after the peer has written everything and exited: its
    // hello and messages must still be there (our hello meets EPIPE).
    let mut cmd = fixture("raw");
    cmd.arg("undecodable");
    let (ours, theirs) = port::open().unwrap();
    let f = Fixture::spawn(cmd, theirs);
    assert!(f.assert_gone().success());
    let mut ipc = ours.connect().unwrap();
    match ipc.recv::<u64>() {
        Err(RecvError::Decode(e)) => {
            assert_eq!((e.type_name(), e.message_len()), ("u64", 11));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(ipc.recv::<u64>().unwrap(), 7);
    assert!(matches!(ipc.recv::<u64>(), Err(RecvError::Disconnected)));
    assert!(ipc.send(&1u8).unwrap_err().is_disconnected());
}

#[test]
fn a_truncated_frame_is_reported_as_truncated() {
    let (f, res) = raw_peer("truncated", ConnectOptions::default());
    let mut ipc = res.unwrap();
    match ipc.recv_bytes() {
        Err(RecvError::Truncated { expected, received }) => assert_eq!((expected, received), (105, 15)),
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(matches!(ipc.recv_bytes(), Err(RecvError::Disconnected)));
    assert!(f.assert_gone().success());
}

#[test]
fn a_4_gib_length_is_refused_without_allocating() {
    let (f, res) = raw_peer("huge-len", ConnectOptions::default());
    let mut ipc = res.unwrap();
    let (res, largest) = largest_allocation_during(|| ipc.recv_bytes());
    match res {
        Err(RecvError::TooLarge { len, limit }) => {
            assert_eq!((len, limit), (u32::MAX as u64, 256 << 20));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(largest < 1 << 20, "allocated {largest} bytes for a refused frame");
    assert!(f.assert_gone().success());
}

#[test]
fn a_4_gib_length_under_a_raised_limit_still_allocates_only_what_arrives() {
    let opts = ConnectOptions {
        max_frame_len: MAX_FRAME_LIMIT,
        ..ConnectOptions::default()
    };
    let (f, res) = raw_peer("huge-len", opts);
    let mut ipc = res.unwrap();
    let (res, largest) = largest_allocation_during(|| ipc.recv_bytes());
    assert!(
        matches!(res, Err(RecvError::Truncated { received: 69, .. })),
        "{res:?}"
    );
    assert!(
        largest <= 8 << 20,
        "allocated {largest} bytes for a frame that never came"
    );
    assert!(f.assert_gone().success());
}

// docs/protocol.md, section 3: a frame cut short breaks a conversation
// too; it is not the clean end `Disconnected` means.
#[test]
fn a_truncated_frame_breaks_a_link_rather_than_ending_it_cleanly() {
    let (f, res) = raw_peer("truncated", ConnectOptions::default());
    let link = portpool::link::Link::new(res.unwrap());
    match link.recv_message::<String>() {
        Err(portpool::link::LinkError::Broken(why)) => assert!(why.contains("105"), "{why}"),
        other => panic!("expected Broken, got {other:?}"),
    }
    drop(link);
    assert!(f.assert_gone().success());
}
