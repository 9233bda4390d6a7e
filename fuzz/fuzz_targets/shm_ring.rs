//! Fuzzes a shared-memory connection against a hostile peer: the input is
//! a script of what the peer writes into the mapping (positions, flags,
//! fd-carrier counts, bytes anywhere in its ring) between steps of our
//! reader and writer. No input may panic, hang, or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|script: &[u8]| {
    portpool_runtime::fuzzing::shm_hostile_peer(script);
});
