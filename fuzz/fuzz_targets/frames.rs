//! Fuzzes the pure wire-format decoders: the hello and the frame splitter,
//! fed the input in chunks whose sizes come from the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portpool_runtime::transport::frame::{self, HELLO_LEN, Hello};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limit = (data[0] as usize) << 4;
    let step = (data[1] as usize).max(1);
    let data = &data[2..];
    if let Some(h) = data.get(..HELLO_LEN) {
        let mut b = [0u8; HELLO_LEN];
        b.copy_from_slice(h);
        if let Ok(hello) = Hello::decode(&b) {
            assert_eq!(hello.encode(), b);
        }
    }
    // Accumulate the input `step` bytes at a time, splitting frames off the
    // front as a reader would; every split must stay in bounds and agree
    // with re-encoding.
    let mut buf = Vec::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match frame::split_frame(&buf, limit) {
                Ok(Some(f)) => {
                    let used = f.used;
                    assert!(f.header.len <= limit);
                    assert_eq!(used, frame::HEADER_LEN + f.payload.len());
                    let mut again = Vec::new();
                    frame::encode_frame(f.header.kind, f.payload, &mut again);
                    assert_eq!(&again[..], &buf[..used]);
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
