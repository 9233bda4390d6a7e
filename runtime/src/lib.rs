//! The runtime under the `portpool` crate: use it through `portpool`,
//! which re-exports every module below and adds the worker side.
//!
//! | module | what it is for |
//! |---|---|
//! | [`pool`] | the pool: building one, submitting, tickets, `map`, stats |
//! | [`job`] | the [`job::Job`] trait, the [`job::Handlers`] registry, [`jobs!`] |
//! | [`supervisor`] | restart policies, shutdown modes, pool events, the failure scenarios |
//! | [`runtime`] | keeping a program alive while its pools are, suspend, signals |
//! | [`launch`] | workers started over ssh, in Slurm, or through any command |
//! | [`link`] | conversations on a connection: messages, strict sends, requests |
//! | [`subprocess`] | one child process to talk to and wait for |
//! | [`service`] | one worker serving many clients |
//! | [`port`] | connected port pairs that move between threads and processes |
//! | [`transport`] | the framing under every connection |
//! | [`error`] | the errors of sending and receiving |
//!
//! `unsafe` code lives only in the OS layer (the `sys` module and the
//! transport flavors), each block with a `// SAFETY:` comment;
//! ARCHITECTURE.md in the repository tells how the modules depend on each
//! other.
#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod child;
mod codec;
pub mod error;
#[doc(hidden)] // shown as `transport::frame`
pub mod frame;
pub mod job;
pub mod launch;
pub mod link;
pub mod pool;
pub mod port;
mod proto;
pub mod runtime;
mod serve;
pub mod service;
mod stderr;
pub mod subprocess;
pub mod supervisor;
#[allow(unsafe_code)] // the OS layer: libc calls, fd ownership, pre_exec
mod sys;
mod task;
pub mod transport;
mod util;

pub use sys::{set_parent_death_kill, set_parent_death_signal};

/// Entry points for the fuzz targets (`fuzz/`): decoders a peer can reach
/// that are not public otherwise. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes one frame from a JSON pool worker as the supervisor does;
    /// `Err` says what is wrong with it.
    pub fn decode_json_worker_frame(frame: &[u8]) -> Result<(), String> {
        crate::proto::json::decode(frame).map(drop)
    }

    /// Plays a hostile shared-memory peer following `script` against our
    /// reader and writer (Linux); returns when the script ends.
    #[cfg(target_os = "linux")]
    pub fn shm_hostile_peer(script: &[u8]) {
        crate::transport::shm_hostile_peer(script);
    }
}
