//! The fuzz harness of the shared-memory flavor (a hostile peer that
//! writes the mapping), and the flavor's unit tests.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::transport::{Reader, Wait, Writer};

/// Both sides of one connection in this process, rings of `cap` bytes:
/// (the maker's read and write halves, the accepter's).
fn pair(cap: usize) -> io::Result<(ShmRead, ShmWrite, ShmRead, ShmWrite)> {
    let (a, b) = crate::sys::socketpair()?;
    let (seg_a, memfd) = Segment::create(cap)?;
    let seg_b = Segment::open(&memfd, LAYOUT_VERSION, [cap as u32, cap as u32]).map_err(io::Error::other)?;
    let (bell_a, bell_b) = (os::doorbell()?, os::doorbell()?);
    let (ring_a, ring_b) = (bell_a.1.try_clone()?, bell_b.1.try_clone()?);
    let a = Conn::new(seg_a, 0, Arc::new(a), bell_a, ring_b);
    let b = Conn::new(seg_b, 1, Arc::new(b), bell_b, ring_a);
    Ok((
        ShmRead::new(a.clone(), 0),
        ShmWrite::new(a),
        ShmRead::new(b.clone(), 0),
        ShmWrite::new(b),
    ))
}

/// The fuzz harness (`fuzz/fuzz_targets/shm_ring.rs`, and a test that
/// replays generated scripts): a hostile peer writes whatever the script
/// says into the shared mapping (positions, flags, counts, bytes) between
/// steps of our reader (framing included) and our writer. Nothing it does
/// may make our side panic, hang or allocate past its frame limit; an
/// impossible position must end in an error.
pub(crate) fn hostile_peer(script: &[u8]) {
    const CAP: usize = 4096;
    let Ok((ra, wa, _rb, wb)) = pair(CAP) else { return };
    let peer = wb.conn.clone();
    let mut reader = Reader::new(crate::transport::ReadIo::Shm(ra));
    reader.set_max_frame_len(64 << 10);
    reader.set_spin(std::time::Duration::ZERO);
    let writer = Writer::new(crate::transport::WriteIo::Shm(wa));
    let mut s = script.iter().copied();
    let word = |s: &mut dyn Iterator<Item = u8>| {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = s.next().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    while let Some(op) = s.next() {
        let seg = &peer.seg;
        match op % 8 {
            // The positions and counts our side reads from the peer's lines.
            0 => seg.word64(1, TAIL).store(word(&mut s), Ordering::Release),
            1 => seg.word64(0, HEAD).store(word(&mut s), Ordering::Release),
            2 => seg.word64(1, CARRIERS).store(word(&mut s), Ordering::Release),
            3 => {
                let v = u32::from(s.next().unwrap_or(0));
                match v % 4 {
                    0 => seg
                        .word64(1, PRODUCER_CLOSED)
                        .store(u64::from(v), Ordering::Release),
                    1 => seg
                        .word64(0, CONSUMER_CLOSED)
                        .store(u64::from(v), Ordering::Release),
                    2 => seg.word32(1, READER_WAITING).store(v, Ordering::Release),
                    _ => seg.word32(0, WRITER_WAITING).store(v, Ordering::Release),
                }
            }
            // Bytes anywhere in the ring it writes.
            4 => {
                let at = u64::from(s.next().unwrap_or(0)) << 4;
                let n = usize::from(s.next().unwrap_or(0));
                let bytes: Vec<u8> = (&mut s).take(n).collect();
                seg.copy_in(1, at, &bytes);
            }
            // Our reader takes what it finds, frame by frame, never waiting.
            5 => {
                if let Ok(Some(_)) = reader.next_frame(Wait::Now) {
                    let _ = reader.payload().len();
                    let _ = reader.take_fds(1);
                    reader.consume();
                }
            }
            // Our writer writes what fits now.
            6 => {
                let n = usize::from(s.next().unwrap_or(0)) * 8;
                let _ = writer.append(crate::frame::Kind::Message, |buf| {
                    buf.resize(buf.len() + n, 0);
                    Ok::<(), ()>(())
                });
                // (Never waits: a full ring ends the flush.)
                let _ = writer.flush_with(|| Err(io::ErrorKind::WouldBlock.into()));
            }
            // The peer also writes by the protocol, to reach deeper states.
            _ => {
                let n = usize::from(s.next().unwrap_or(0));
                let mut frame = Vec::new();
                crate::frame::encode_frame(crate::frame::Kind::Message, &vec![9u8; n], &mut frame);
                let _ = wb.write_some(&frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    use super::super::setup::{SETUP_LEN, Setup};
    use crate::transport::ReadOutcome;

    fn pair(cap: usize) -> (ShmRead, ShmWrite, ShmRead, ShmWrite) {
        super::pair(cap).unwrap()
    }

    proptest! {
        /// The fuzz target's harness over generated scripts: no panic, no
        /// hang, whatever the peer writes.
        #[test]
        fn a_hostile_peer_never_breaks_more_than_its_connection(script in proptest::collection::vec(any::<u8>(), 0..600)) {
            hostile_peer(&script);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The producer writes what fits of this many bytes.
        Write(usize),
        /// The consumer reads at most this many (into a buffer with room
        /// for at most `room`).
        Read { max: usize, room: usize },
    }

    fn op(cap: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3 * cap).prop_map(Op::Write),
            (1..2 * cap, 1..2 * cap).prop_map(|(max, room)| Op::Read { max, room }),
        ]
    }

    proptest! {
        /// Random writes and reads of random sizes, against a `VecDeque`:
        /// the same bytes in the same order, never more than the capacity
        /// in flight, wrapping at every offset.
        #[test]
        fn the_ring_is_a_fifo_of_bytes(cap_shift in 12u32..14, ops in proptest::collection::vec(op(16 << 10), 1..80)) {
            let cap = 1usize << cap_shift;
            let (_ra, wa, mut rb, _wb) = pair(cap);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u8;
            let mut fds = VecDeque::new();
            for op in ops {
                match op {
                    Op::Write(n) => {
                        let bytes: Vec<u8> = (0..n).map(|i| next.wrapping_add(i as u8)).collect();
                        let took = wa.write_some(&bytes).unwrap();
                        prop_assert!(took <= n);
                        prop_assert!(model.len() + took <= cap, "more than the capacity in flight");
                        if took < n {
                            prop_assert_eq!(model.len() + took, cap, "a short write with room left");
                        }
                        model.extend(&bytes[..took]);
                        next = next.wrapping_add(took as u8);
                    }
                    Op::Read { max, room } => {
                        let mut buf = Vec::with_capacity(room);
                        let room = buf.capacity();
                        match rb.read_nonblocking(&mut buf, max, &mut fds).unwrap() {
                            ReadOutcome::Data(n) => {
                                prop_assert_eq!(n, buf.len());
                                prop_assert_eq!(n, model.len().min(max).min(room));
                                let want: Vec<u8> = model.drain(..n).collect();
                                prop_assert_eq!(buf, want);
                            }
                            ReadOutcome::WouldBlock => prop_assert!(model.is_empty()),
                            ReadOutcome::Eof => prop_assert!(false, "an end nobody made"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_closed_producer_is_an_end_after_its_bytes() {
        let (_ra, wa, mut rb, _wb) = pair(4096);
        assert_eq!(wa.write_some(b"last words").unwrap(), 10);
        drop(wa);
        let mut buf = Vec::with_capacity(64);
        let mut fds = VecDeque::new();
        assert_eq!(
            rb.read_nonblocking(&mut buf, 64, &mut fds).unwrap(),
            ReadOutcome::Data(10)
        );
        assert_eq!(
            rb.read_nonblocking(&mut buf, 64, &mut fds).unwrap(),
            ReadOutcome::Eof
        );
    }

    #[test]
    fn a_closed_consumer_fails_the_writer() {
        let (_ra, wa, rb, _wb) = pair(4096);
        drop(rb);
        assert_eq!(wa.write_some(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn setup_messages_round_trip_and_garbage_is_none() {
        for m in [
            Setup::Offer {
                version: 1,
                caps: [4096, 1 << 20],
            },
            Setup::NoOffer,
            Setup::Accept,
            Setup::Refuse,
        ] {
            assert_eq!(Setup::decode(&m.encode()), Some(m));
        }
        assert_eq!(Setup::decode(&[7u8; SETUP_LEN]), None);
    }

    #[test]
    fn an_offer_with_bad_geometry_or_no_seals_is_refused() {
        let (_seg, fd) = Segment::create(DEFAULT_RING).unwrap();
        let cap = DEFAULT_RING as u32;
        assert!(Segment::open(&fd, LAYOUT_VERSION, [cap, cap]).is_ok());
        assert!(Segment::open(&fd, LAYOUT_VERSION + 1, [cap, cap]).is_err());
        assert!(Segment::open(&fd, LAYOUT_VERSION, [cap, cap / 2]).is_err());
        assert!(Segment::open(&fd, LAYOUT_VERSION, [cap + 1, cap]).is_err());
        assert!(Segment::open(&fd, LAYOUT_VERSION, [1 << 30, cap]).is_err());
        // A memfd of the right size whose size is not sealed.
        let total = Segment::total([DEFAULT_RING, DEFAULT_RING]) as u64;
        let loose = os::memfd_create(c"portpool-test", total).unwrap();
        let e = Segment::open(&loose, LAYOUT_VERSION, [cap, cap]).unwrap_err();
        assert!(e.contains("not sealed"), "{e}");
    }
}
