//! Property tests: framing round-trips arbitrary message sizes across
//! arbitrary read splits, both in the pure decoder and over a real socket
//! written in arbitrary chunks.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use portpool::port::{Port, Role};
use portpool::transport::frame::{self, Hello, Kind};
use proptest::prelude::*;

fn message(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sizes weighted towards the edges: empty, tiny, around the 64 KiB read
/// chunk and direct-write threshold, and a few large ones.
fn sizes() -> impl Strategy<Value = Vec<usize>> {
    let size = prop_oneof![
        4 => 0usize..16,
        3 => 16usize..2048,
        2 => (64usize << 10) - 8..(64 << 10) + 8,
        1 => 100_000usize..600_000,
    ];
    prop::collection::vec(size, 1..12)
}

fn encode_all(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for m in msgs {
        frame::encode_frame(Kind::Message, m, &mut wire);
    }
    wire
}

/// Cuts `wire` at the given fractions into chunks.
fn chunks<'a>(wire: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| (c as usize * wire.len()) / u16::MAX as usize)
        .collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &wire[w[0]..w[1]]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn pure_decoder_round_trips_across_any_split(lens in sizes(), cuts in prop::collection::vec(any::<u16>(), 0..40)) {
        let msgs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| message(l, i as u8)).collect();
        let wire = encode_all(&msgs);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for chunk in chunks(&wire, &cuts) {
            buf.extend_from_slice(chunk);
            while let Some(f) = frame::split_frame(&buf, frame::DEFAULT_MAX_FRAME).unwrap() {
                prop_assert_eq!(f.header.kind, Kind::Message);
                got.push(f.payload.to_vec());
                let used = f.used;
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn a_connection_round_trips_across_any_write_split(lens in sizes(), cuts in prop::collection::vec(any::<u16>(), 0..40)) {
        let msgs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| message(l, i as u8)).collect();
        let mut wire = Hello::ours(Role::Peer).encode().to_vec();
        wire.extend(encode_all(&msgs));
        let (mut raw, ours) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            for chunk in chunks(&wire, &cuts) {
                raw.write_all(chunk).unwrap();
                raw.flush().unwrap();
            }
            raw
        });
        let mut ipc = Port::from_socket(OwnedFd::from(ours)).connect().unwrap();
        for m in &msgs {
            prop_assert_eq!(&ipc.recv_bytes().unwrap(), m);
        }
        drop(writer.join().unwrap());
        prop_assert!(ipc.recv_bytes().unwrap_err().is_disconnected());
    }
}
