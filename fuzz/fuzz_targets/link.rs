//! Fuzzes a `Link`'s receive path with frames of any kind: the input is a
//! peer's bytes (a valid hello, then frames whose kind, length and payload
//! the fuzzer picks), and a conversation reads what it can with deadlines.
//! No input may panic, spin, or hang past a deadline: every frame the link
//! does not expect is consumed and reported, and every wait ends.
#![no_main]

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portpool_runtime::link::{Codec, Link};
use portpool_runtime::port::{ConnectOptions, Port, Role};
use portpool_runtime::transport::frame::Hello;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let Ok((mut raw, ours)) = UnixStream::pair() else {
        return;
    };
    let codec = if mode & 1 == 0 { Codec::Postcard } else { Codec::Json };
    // Both hellos announce the codec (a mismatch would end the handshake).
    let mut bytes = Hello::with_codec(Role::Peer, codec).encode().to_vec();
    // The rest, as frames: a kind byte (any value), a length byte, then
    // that many payload bytes; with mode bit 2 set, as raw bytes instead.
    if mode & 4 == 0 {
        while let [kind, len, tail @ ..] = rest {
            let n = (*len as usize).min(tail.len());
            bytes.extend_from_slice(&(n as u32).to_le_bytes());
            bytes.push(*kind);
            bytes.extend_from_slice(&tail[..n]);
            rest = &tail[n..];
        }
    } else {
        bytes.extend_from_slice(rest);
    }
    let _ = raw.write_all(&bytes);
    if mode & 8 == 0 {
        let _ = raw.shutdown(std::net::Shutdown::Write);
    }
    let port = Port::from_socket(OwnedFd::from(ours));
    let opts = ConnectOptions {
        timeout: Duration::from_secs(5),
        max_frame_len: 1 << 16,
        codec,
        ..ConnectOptions::default()
    };
    let Ok(ipc) = port.connect_with(opts) else {
        return;
    };
    let link = Link::with_codec(ipc, codec);
    let wait = Duration::from_millis(2);
    for _ in 0..32 {
        let got = if mode & 2 == 0 {
            link.recv_message_timeout::<u64>(wait).map(drop)
        } else {
            link.request_timeout::<_, String>(&7u32, wait).map(drop)
        };
        // A timeout: everything sent has been read (the peer is quiet).
        if matches!(got, Err(portpool_runtime::link::LinkError::Timeout)) || link.is_closed() {
            break;
        }
    }
    drop(link);
    drop(raw);
});
