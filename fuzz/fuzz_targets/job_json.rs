//! Fuzzes the supervisor's reading of a JSON pool worker's frames
//! (docs/protocol.md, section 6): whatever bytes a worker in another
//! language sends, the decoder gives a message or an error naming what is
//! wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = portpool_runtime::fuzzing::decode_json_worker_frame(data);
});
