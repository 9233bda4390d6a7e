//! portpool's runtime: the layers under the `portpool` facade.
//!
//! | layer | module | job |
//! |---|---|---|
//! | 1 | [`transport`] | length-prefixed frames over a socket or a pair of pipes |
//! | 2 | [`port`] | transferable port pairs; [`port::Ipc`], a typed connection |
//! | 3 | [`link`] | conversations: ordered messages, filtered reads, strict sends, request/reply |
//! | 3 | [`subprocess`] | one child process to talk to (execa's `execaNode` with IPC) |
//! | 3 | [`service`] | one worker serving many clients, each on its own connection |
//! | 4 | [`job`] | the [`job::Job`] trait and the [`job::Handlers`] registry |
//! | 5–6 | [`pool`] | thread and process pools: dispatch, tickets, `map`, `broadcast`, stats |
//! | 6 | [`supervisor`] | restarts, timeouts, cancellation, shutdown, events |
//! | 7 | [`runtime`] | ref/unref, suspend/resume, signal-driven shutdown |
//!
//! Errors, one type per operation, are in [`error`]. Each layer uses only
//! the public face of the one below it. `unsafe` code lives only in the OS
//! layer (the `sys` module and the transport flavors), each block with a
//! `// SAFETY:` comment.
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
