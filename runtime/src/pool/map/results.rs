//! One answered chunk of a map, as the map yields it: a thread worker's
//! typed results are turned into `JobResult`s one by one as they are
//! yielded (no pass over the chunk, no copy into a queue), other answers
//! are decoded into a `Vec` first.

use std::time::Duration;

use super::super::Outcome;
use super::super::ticket::JobResult;
use crate::job::{BatchItem, BatchValue, Failure, Job, JobError, Side};

/// An answered chunk's results, yielded in order.
pub(super) enum Chunk<J: Job> {
    /// From a thread worker: each job's result (`None` where its handler
    /// panicked), and those panics in order.
    Values {
        results: std::vec::IntoIter<Option<Result<J::Output, J::Error>>>,
        panics: std::vec::IntoIter<Failure>,
    },
    /// Decoded (a process or JSON worker's answer), or with failures
    /// put in their places.
    Results(std::vec::IntoIter<JobResult<J>>),
    /// Every job's output (a JSON worker's answer where all succeeded).
    Outputs(std::vec::IntoIter<J::Output>),
}

impl<J: Job> Chunk<J> {
    /// Results not yet yielded.
    pub(super) fn len(&self) -> usize {
        match self {
            Chunk::Values { results, .. } => results.len(),
            Chunk::Results(r) => r.len(),
            Chunk::Outputs(o) => o.len(),
        }
    }

    /// Whether every result has been yielded.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<J: Job> Iterator for Chunk<J> {
    type Item = JobResult<J>;

    #[inline(always)]
    fn next(&mut self) -> Option<JobResult<J>> {
        match self {
            Chunk::Values { results, panics } => Some(match results.next()? {
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(JobError::Handler(e)),
                None => Err(panics
                    .next()
                    .unwrap_or_else(|| Failure::Panicked("(no message)".into()))
                    .into_job_error()),
            }),
            Chunk::Results(r) => r.next(),
            Chunk::Outputs(o) => o.next().map(Ok),
        }
    }
}

/// Puts the failures of the jobs that never left back in their places
/// among the results of those that did.
pub(super) fn fill_holes<J: Job>(results: Chunk<J>, holes: Vec<(usize, Failure)>) -> Chunk<J> {
    if holes.is_empty() {
        return results;
    }
    let mut results = results;
    let mut out = Vec::with_capacity(holes.len());
    for (i, f) in holes {
        while out.len() < i {
            match results.next() {
                Some(r) => out.push(r),
                None => break,
            }
        }
        out.push(Err(f.into_job_error()));
    }
    out.extend(results);
    Chunk::Results(out.into_iter())
}

/// Turns one answered chunk into its typed results (`len` of them).
pub(super) fn typed_chunk<J: Job>(outcome: Outcome, len: usize) -> (Option<Duration>, Chunk<J>) {
    let item = |r: Result<Result<J::Output, J::Error>, Failure>| match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(JobError::Handler(e)),
        Err(f) => Err(f.into_job_error()),
    };
    let all_failed = |f: Failure| {
        let v: Vec<JobResult<J>> = (0..len).map(|_| Err(f.clone().into_job_error())).collect();
        (None, Chunk::Results(v.into_iter()))
    };
    match outcome {
        Outcome::Value(v) => match v.downcast::<BatchValue<J>>() {
            Ok(b) => {
                let BatchValue {
                    nanos,
                    results,
                    panics,
                } = *b;
                // (From this process's own worker: a `None` without its panic
                // reads as a panic without a message, see `next`.)
                if results.len() != len {
                    return all_failed(Failure::Codec(
                        Side::Supervisor,
                        format!("a chunk of {len} jobs came back with {} results", results.len()),
                    ));
                }
                (
                    Some(Duration::from_nanos(nanos)),
                    Chunk::Values {
                        results: results.into_iter(),
                        panics: panics.into_iter(),
                    },
                )
            }
            Err(_) => all_failed(Failure::Codec(
                Side::Supervisor,
                "a chunk's answer has the wrong type".into(),
            )),
        },
        // The results' buffers find their files as they decode.
        Outcome::BytesFds(b, fds) => {
            crate::port::with_received_fds(fds, || typed_chunk::<J>(Outcome::Bytes(b), len))
        }
        Outcome::Bytes(b) => match postcard::from_bytes::<(u64, Vec<BatchItem<'_>>)>(&b) {
            Ok((nanos, items)) => {
                let results = items
                    .into_iter()
                    .map(|it| match it {
                        BatchItem::Ran(bytes) => match super::super::ticket::decode_result::<J>(bytes) {
                            Ok(r) => item(Ok(r)),
                            Err(reason) => Err(JobError::Codec {
                                side: Side::Supervisor,
                                reason,
                            }),
                        },
                        BatchItem::Failed(f) => Err(f.into_job_error()),
                    })
                    .collect::<Vec<_>>();
                if results.len() != len {
                    return all_failed(Failure::Codec(
                        Side::Supervisor,
                        format!("a chunk of {len} jobs came back with {} results", results.len()),
                    ));
                }
                (
                    Some(Duration::from_nanos(nanos)),
                    Chunk::Results(results.into_iter()),
                )
            }
            Err(e) => all_failed(Failure::Codec(
                Side::Supervisor,
                format!("could not decode a chunk's answer: {e}"),
            )),
        },
        Outcome::Json(_) => all_failed(Failure::Codec(
            Side::Supervisor,
            "a chunk was answered as a single job".into(),
        )),
        Outcome::JsonChunk(nanos, items) => {
            if items.len() != len {
                return all_failed(Failure::Codec(
                    Side::Supervisor,
                    format!("a chunk of {len} jobs came back with {} results", items.len()),
                ));
            }
            let results = items
                .into_iter()
                .map(|it| match it {
                    Ok(r) => match super::super::ticket::decode_json_result::<J>(&r) {
                        Ok(r) => item(Ok(r)),
                        Err(reason) => Err(JobError::Codec {
                            side: Side::Supervisor,
                            reason,
                        }),
                    },
                    Err(f) => Err(f.into_job_error()),
                })
                .collect::<Vec<_>>();
            (
                Some(Duration::from_nanos(nanos)),
                Chunk::Results(results.into_iter()),
            )
        }
        Outcome::JsonOk(nanos, text) => match serde_json::from_slice::<Vec<J::Output>>(&text) {
            Ok(outputs) if outputs.len() == len => (
                Some(Duration::from_nanos(nanos)),
                Chunk::Outputs(outputs.into_iter()),
            ),
            Ok(outputs) => all_failed(Failure::Codec(
                Side::Supervisor,
                format!("a chunk of {len} jobs came back with {} results", outputs.len()),
            )),
            // Some output is not a `J::Output`: each is read alone, so that
            // only those fail, each saying why.
            Err(_) => match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&text) {
                Ok(raw) => {
                    let items = raw
                        .iter()
                        .map(|v| {
                            Ok(crate::task::JsonResult {
                                err: false,
                                json: v.get().as_bytes().to_vec(),
                            })
                        })
                        .collect();
                    typed_chunk::<J>(Outcome::JsonChunk(nanos, items), len)
                }
                Err(e) => all_failed(Failure::Codec(
                    Side::Supervisor,
                    format!("could not read a chunk's outputs from its JSON worker: {e}"),
                )),
            },
        },
        Outcome::Failed(f) => all_failed(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Double(u64);
    impl Job for Double {
        type Output = u64;
        type Error = String;
        const NAME: &'static str = "double";
    }

    fn chunk(text: &str, len: usize) -> Vec<Result<u64, String>> {
        let (_, c) = typed_chunk::<Double>(Outcome::JsonOk(5, text.as_bytes().to_vec()), len);
        c.map(|r| r.map_err(|e| e.to_string())).collect()
    }

    /// A JSON worker's all-ok answer decodes in one pass; an output of the
    /// wrong type fails only its own job, saying so; a wrong count or an
    /// unreadable array fails the chunk, every job with the same reason.
    #[test]
    fn an_all_ok_json_chunk_decodes_at_once_and_a_bad_output_fails_alone() {
        assert_eq!(chunk("[1, 2,3]", 3), [Ok(1), Ok(2), Ok(3)]);
        let mixed = chunk(r#"[1,"two",3]"#, 3);
        assert_eq!((&mixed[0], &mixed[2]), (&Ok(1), &Ok(3)));
        let e = mixed[1].as_ref().unwrap_err();
        assert!(
            e.contains("could not read the output") && e.contains("\"two\""),
            "{e}"
        );
        let short = chunk("[1,2]", 3);
        assert!(
            short
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.contains("came back with 2"))),
            "{short:?}"
        );
        let bad = chunk("[1,", 2);
        assert_eq!(bad.len(), 2);
        assert!(
            bad.iter()
                .all(|r| r.as_ref().is_err_and(|e| e.contains("could not read"))),
            "{bad:?}"
        );
    }
}
