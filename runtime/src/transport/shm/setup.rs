//! Moving a connection from its socket to shared memory, right after the
//! hellos: the offer, the answer, and the switch of both halves.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::transport::{Reader, Wait, Writer};

/// The offer, the answers and "no offer", each this long on the socket.
pub(crate) const SETUP_LEN: usize = 24;
const OFFER: [u8; 8] = *b"PPSHMOFR";
const NO_OFFER: [u8; 8] = *b"PPSHMNON";
const ACCEPT: [u8; 8] = *b"PPSHMACK";
const REFUSE: [u8; 8] = *b"PPSHMNAK";

/// What one side says while the connection moves to shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// A segment with these ring capacities (ring 0, ring 1); the memfd and
    /// the offerer's doorbell travel with it.
    Offer { version: u32, caps: [u32; 2] },
    /// The offerer could not make a segment: stay on the socket.
    NoOffer,
    /// Accepted; the accepter's doorbell travels with it.
    Accept,
    /// Refused: stay on the socket.
    Refuse,
}

impl Setup {
    /// The bytes of this message.
    pub(crate) fn encode(&self) -> [u8; SETUP_LEN] {
        let mut b = [0u8; SETUP_LEN];
        let tag = match self {
            Setup::Offer { version, caps } => {
                b[8..12].copy_from_slice(&version.to_le_bytes());
                b[12..16].copy_from_slice(&caps[0].to_le_bytes());
                b[16..20].copy_from_slice(&caps[1].to_le_bytes());
                OFFER
            }
            Setup::NoOffer => NO_OFFER,
            Setup::Accept => ACCEPT,
            Setup::Refuse => REFUSE,
        };
        b[..8].copy_from_slice(&tag);
        b
    }

    /// Parses a message; `None` if it is none of them.
    pub(crate) fn decode(b: &[u8; SETUP_LEN]) -> Option<Setup> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let tag: [u8; 8] = b[..8].try_into().ok()?;
        match tag {
            OFFER => Some(Setup::Offer {
                version: word(8),
                caps: [word(12), word(16)],
            }),
            NO_OFFER => Some(Setup::NoOffer),
            ACCEPT => Some(Setup::Accept),
            REFUSE => Some(Setup::Refuse),
            _ => None,
        }
    }
}

/// Moves a freshly connected socket connection (hellos exchanged) onto
/// shared memory, if both sides manage: `create` says whether this side
/// makes the segment. `Ok(false)`: it stays on the socket (the other side
/// could not, or refused, and both know). An error: the connection broke
/// during the move.
pub(crate) fn upgrade(
    reader: &mut Reader,
    writer: &mut Writer,
    create: bool,
    deadline: Instant,
) -> io::Result<bool> {
    let Some(socket) = reader.socket() else {
        return Ok(false);
    };
    let wait = Wait::Until(deadline);
    if create {
        let made = Segment::create(DEFAULT_RING).and_then(|(seg, fd)| Ok((seg, fd, os::doorbell()?)));
        let (seg, memfd, (bell, bell_theirs)) = match made {
            Ok(m) => m,
            Err(e) => {
                log::debug!("shared memory unavailable ({e}); staying on the socket");
                writer.write_raw_with_fds(&Setup::NoOffer.encode(), &[])?;
                return Ok(false);
            }
        };
        let offer = Setup::Offer {
            version: LAYOUT_VERSION,
            caps: [seg.caps[0] as u32, seg.caps[1] as u32],
        };
        writer.write_raw_with_fds(&offer.encode(), &[memfd.as_fd(), bell_theirs.as_fd()])?;
        drop(memfd);
        let answer = read_setup(reader, wait)?;
        match answer {
            Setup::Accept => {
                let peer_bell = reader
                    .take_fds(1)
                    .and_then(|mut v| v.pop())
                    .ok_or_else(|| setup_error("the peer accepted shared memory without its doorbell"))?;
                switch(reader, writer, seg, 0, socket, (bell, bell_theirs), peer_bell)?;
                Ok(true)
            }
            Setup::Refuse => Ok(false),
            other => Err(setup_error(&format!(
                "expected an answer to the shared-memory offer, got {other:?}"
            ))),
        }
    } else {
        let offer = read_setup(reader, wait)?;
        let (version, caps) = match offer {
            Setup::NoOffer => return Ok(false),
            Setup::Offer { version, caps } => (version, caps),
            other => {
                return Err(setup_error(&format!(
                    "expected a shared-memory offer, got {other:?}"
                )));
            }
        };
        let accepted = reader
            .take_fds(2)
            .ok_or_else(|| "the offer came without its memfd and doorbell".to_string())
            .and_then(|mut fds| {
                let peer_bell = fds.pop().ok_or("no doorbell")?;
                let memfd = fds.pop().ok_or("no memfd")?;
                let seg = Segment::open(&memfd, version, caps)?;
                let bell = os::doorbell().map_err(|e| format!("cannot make a doorbell: {e}"))?;
                Ok((seg, peer_bell, bell))
            });
        match accepted {
            Ok((seg, peer_bell, bell)) => {
                writer.write_raw_with_fds(&Setup::Accept.encode(), &[bell.1.as_fd()])?;
                switch(reader, writer, seg, 1, socket, bell, peer_bell)?;
                Ok(true)
            }
            Err(why) => {
                log::warn!("refused the peer's shared-memory offer: {why}; staying on the socket");
                writer.write_raw_with_fds(&Setup::Refuse.encode(), &[])?;
                Ok(false)
            }
        }
    }
}

fn setup_error(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("moving to shared memory: {why}"),
    )
}

fn read_setup(reader: &mut Reader, wait: Wait) -> io::Result<Setup> {
    let mut b = [0u8; SETUP_LEN];
    match reader.read_exact_raw(&mut b, wait) {
        Ok(true) => {}
        Ok(false) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "moving to shared memory: the peer did not answer in time",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Setup::decode(&b).ok_or_else(|| setup_error("the peer sent something that is no setup message"))
}

/// Both halves move to the rings.
fn switch(
    reader: &mut Reader,
    writer: &mut Writer,
    seg: Segment,
    out: usize,
    socket: Arc<OwnedFd>,
    bell: (OwnedFd, OwnedFd),
    peer_bell: OwnedFd,
) -> io::Result<()> {
    let conn = Conn::new(seg, out, socket, bell, peer_bell);
    // Carriers the peer sent right after its answer may already sit in the
    // reader's buffer (their fds in its queue): they count as taken.
    let leftover = reader.take_raw_leftover();
    if leftover.iter().any(|&b| b != CARRIER) {
        return Err(setup_error(
            "the peer sent bytes on the socket after moving to shared memory",
        ));
    }
    reader.set_io(crate::transport::ReadIo::Shm(ShmRead::new(
        conn.clone(),
        leftover.len() as u64,
    )));
    writer.set_io(crate::transport::WriteIo::Shm(ShmWrite::new(conn)))
}
