//! Connections moved to shared memory: two real processes (the fixture)
//! or two threads, the rings' edge cases, a peer that dies or lies, and
//! what is refused.

mod common;

use std::thread;

use common::{Fixture, fixture};
use portpool::port::{self, ConnectOptions, Ipc};

fn shm() -> ConnectOptions {
    ConnectOptions {
        shared_memory: true,
        ..ConnectOptions::default()
    }
}

/// Two ends in this process, both willing.
fn shm_pair() -> (Ipc, Ipc) {
    let (a, b) = port::open().unwrap();
    let t = thread::spawn(move || b.connect_with(shm()).unwrap());
    let a = a.connect_with(shm()).unwrap();
    (a, t.join().unwrap())
}

/// A fixture child in `mode`, connected over shared memory.
fn shm_fixture(mode: &str) -> (Fixture, Ipc) {
    let (ours, theirs) = port::open().unwrap();
    let f = Fixture::spawn(fixture(mode), theirs);
    let ipc = ours.connect_with(shm()).unwrap();
    (f, ipc)
}

#[test]
fn two_willing_ends_move_to_shared_memory_and_talk() {
    let (mut a, mut b) = shm_pair();
    assert_eq!(a.transport(), "shared memory");
    assert_eq!(b.transport(), "shared memory");
    for i in 0..1000u64 {
        a.send(&i).unwrap();
        assert_eq!(b.recv::<u64>().unwrap(), i);
        b.send(&(i * 2)).unwrap();
        assert_eq!(a.recv::<u64>().unwrap(), i * 2);
    }
}

#[test]
fn one_unwilling_end_keeps_both_on_the_socket() {
    let (a, b) = port::open().unwrap();
    let unwilling = ConnectOptions {
        shared_memory: false,
        ..ConnectOptions::default()
    };
    let t = thread::spawn(move || b.connect_with(unwilling).unwrap());
    let a = a.connect_with(shm()).unwrap();
    let mut b = t.join().unwrap();
    assert_eq!(a.transport(), "socket");
    assert_eq!(b.transport(), "socket");
    a.send(&7u8).unwrap();
    assert_eq!(b.recv::<u8>().unwrap(), 7);
}

#[test]
fn a_child_echoes_over_shared_memory() {
    let (mut f, mut ipc) = shm_fixture("echo");
    assert_eq!(ipc.transport(), "shared memory");
    for len in [0usize, 1, 63, 64, 4095, 4096, 70_000, 300_000, 3 << 20] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        ipc.send_bytes(&msg).unwrap();
        assert_eq!(ipc.recv_bytes().unwrap(), msg, "len {len}");
    }
    drop(ipc);
    assert!(f.wait().success());
}
