//! Fuzzes the real receive path: the input is written as a peer's bytes
//! into a socket pair, and a connection reads everything it can from it.
//! No input may panic, hang, or make it allocate past its limits.
#![no_main]

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portpool_runtime::port::{ConnectOptions, Port, Role};
use portpool_runtime::transport::frame::Hello;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok((mut raw, ours)) = UnixStream::pair() else {
        return;
    };
    // Most inputs start with a valid hello, so the fuzzer reaches frames.
    if mode & 1 == 0 {
        let _ = raw.write_all(&Hello::ours(Role::Peer).encode());
    }
    // Socket buffers hold far more than libFuzzer's default max input.
    let _ = raw.write_all(rest);
    let _ = raw.shutdown(std::net::Shutdown::Write);
    let port = Port::from_socket(OwnedFd::from(ours));
    let opts = ConnectOptions {
        timeout: Duration::from_secs(5),
        max_frame_len: 1 << 16,
        ..ConnectOptions::default()
    };
    let Ok(mut ipc) = port.connect_with(opts) else {
        return;
    };
    for _ in 0..1024 {
        let res = if mode & 2 == 0 {
            ipc.recv_bytes().map(drop)
        } else {
            ipc.recv::<(u32, String, Vec<u16>)>().map(drop)
        };
        match res {
            Ok(()) => {}
            Err(portpool_runtime::error::RecvError::Unexpected { .. }) => {
                if ipc.recv_port().is_err() {
                    return;
                }
            }
            Err(portpool_runtime::error::RecvError::Decode(_)) => {}
            Err(_) => return,
        }
    }
});
