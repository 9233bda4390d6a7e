//! The loop a process worker runs: take jobs from the port, run them with
//! the worker's [`Handlers`], send the answers back.

use std::io;

use super::wire::{FromWorker, ToWorker, WireOutcome};
use crate::job::{Context, Handlers, ProgressSink};
use crate::port::Ipc;

/// Serves jobs from a supervisor over `ipc` until it says stop or goes away.
///
/// Answers are queued and written together whenever no further job is
/// already waiting, so pipelined jobs cost one write per batch. A job that
/// fails to decode, a route without a handler, a panicking handler or a
/// result that fails to encode fails that job only; the loop goes on.
/// Returns `Ok(())` when told to stop or when the supervisor closed the
/// port; an error if the port broke.
pub fn serve(mut ipc: Ipc, handlers: &Handlers, worker_id: usize) -> io::Result<()> {
    let tx = ipc.sender().clone();
    let mut buf = Vec::new();
    loop {
        // Phase 1: write the answers queued so far before blocking.
        // (Reading incoming jobs meanwhile if the supervisor, busy writing
        // to us, is not reading: README "Writing while the peer writes".)
        if !ipc.has_frame()? {
            ipc.flush_reading()?;
        }
        // Phase 2: take the next frame.
        match ipc.recv_bytes_into(&mut buf) {
            Ok(_) => {}
            Err(e) if e.is_disconnected() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let (head, job) = postcard::take_from_bytes::<ToWorker<'_>>(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the supervisor sent a frame that is not a job or a stop: {e}"),
            )
        })?;
        // Phase 3: run it and queue the answer.
        match head {
            ToWorker::Stop => {
                ipc.flush_reading()?;
                return Ok(());
            }
            ToWorker::Job { id, route } => {
                let cx = Context::new(worker_id, None, ProgressSink::Port(tx.clone(), id));
                let outcome = match handlers.call_bytes(route, job, &cx) {
                    Ok(bytes) => WireOutcome::Ran(bytes),
                    Err(f) => WireOutcome::Failed(f),
                };
                tx.feed(&FromWorker::Done { id, outcome })?;
            }
            ToWorker::Batch { id, route, count } => {
                let cx = Context::new(worker_id, None, ProgressSink::Discard);
                let outcome = match handlers.call_batch_bytes(route, job, count as usize, &cx) {
                    Ok((bytes, failed)) => WireOutcome::RanChunk { bytes, failed },
                    Err(f) => WireOutcome::Failed(f),
                };
                tx.feed(&FromWorker::Done { id, outcome })?;
            }
        }
    }
}
