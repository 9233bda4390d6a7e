//! How a task's job reaches a process worker's port: the payload a task
//! carries, and the functions that encode a job or a chunk into the frame
//! (one job that will not encode fails alone).

use super::*;

/// Sends a job (given as `&dyn Any`) to a process worker as one frame:
/// the head, then the job's own postcard bytes. Monomorphised per job type.
pub(crate) type SendJobFn =
    fn(&IpcSender, &crate::proto::ToWorker<'_>, &(dyn Any + Send)) -> Result<(), SendFail>;

/// Why a job could not be queued on a worker's port.
pub(crate) enum SendFail {
    /// The job itself: it fails with this.
    Job(Failure),
    /// The port: the worker is going away.
    Port(String),
    /// The worker's end is gone under this very write (its reader meets
    /// the same end).
    Gone,
}

/// A job as it travels: its value, or its bytes.
pub(crate) enum Payload {
    /// `Box<J>`, or `Box<Vec<J>>` for a thread pool's chunk.
    Value(Box<dyn Any + Send>),
    /// The job's postcard bytes (a chunk's: each job a `u32` LE length and
    /// its bytes), encoded when it was submitted to wait in a process
    /// pool's queue, so an unencodable job fails at `submit`; and the files
    /// of the buffers in them, which go beside the frame. Boxed: a
    /// thread pool's tasks never hold one, and without the box every task
    /// in the queue (a slot of the channel, moved across cores per job)
    /// would be a cache line longer.
    Encoded(Box<(Vec<u8>, Vec<std::os::fd::OwnedFd>)>),
    /// Out for encoding into a worker's port (`dispatch`): a crash in that
    /// moment cannot send it again.
    Lent,
}

/// A job on its way to a worker.
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) route: &'static str,
    pub(crate) job: Payload,
    pub(crate) send_job: SendJobFn,
    pub(crate) reply: Reply,
    pub(crate) state: Arc<JobState>,
    /// `Some(n)`: `job` is a chunk of `n` jobs run as one.
    pub(crate) batch: Option<u32>,
    /// Run timeout, counted from when it starts on its worker.
    pub(crate) timeout: Option<Duration>,
    /// How many more times a worker crash may send it back to the queue.
    pub(crate) retries: u32,
    /// Its priority (0 for a `map`'s chunks and broadcasts).
    pub(crate) priority: u32,
    /// Its place in the order its process worker was sent jobs (set at
    /// dispatch; a worker starts them in that order).
    pub(crate) seq: u64,
}

impl Task {
    /// How many jobs this task carries.
    pub(crate) fn jobs(&self) -> u64 {
        self.batch.map_or(1, u64::from)
    }

    /// The job value back, if the task still holds it as a value.
    pub(crate) fn into_value<T: 'static>(self) -> Option<T> {
        match self.job {
            Payload::Value(v) => v.downcast::<T>().ok().map(|b| *b),
            _ => None,
        }
    }
}

/// The failure of a job of type `J` whose encoding failed in the supervisor.
pub(crate) fn encode_failure<J: Job>(job: &J, e: &postcard::Error) -> Failure {
    if let Some(why) = crate::port::buffer_refusal(e) {
        return Failure::Codec(
            crate::job::Side::Supervisor,
            format!("the supervisor could not send a `{}` job: {why}", J::NAME),
        );
    }
    Failure::Codec(
        crate::job::Side::Supervisor,
        format!(
            "the supervisor could not send a `{}` job: {}",
            J::NAME,
            crate::codec::encode_failure(job, e)
        ),
    )
}

/// Encodes `job` for a process worker, catching a panicking `Serialize`;
/// on failure `buf` is as it was.
#[inline]
pub(crate) fn encode_job<J: Job>(job: &J, buf: &mut Vec<u8>) -> Result<(), Failure> {
    let at = buf.len();
    let failed = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::port::encode_into(job, buf)
    })) {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => Ok(e),
        Err(panic) => Err(panic),
    };
    buf.truncate(at);
    Err(encode_job_failure(job, failed))
}

/// Why `job` did not encode: postcard's error, or its `Serialize`'s panic.
#[cold]
#[inline(never)]
pub(super) fn encode_job_failure<J: Job>(
    job: &J,
    failed: Result<postcard::Error, Box<dyn Any + Send>>,
) -> Failure {
    match failed {
        Ok(e) => encode_failure(job, &e),
        Err(payload) => Failure::Codec(
            crate::job::Side::Supervisor,
            format!(
                "the supervisor could not send a `{}` job: its Serialize impl panicked: {}",
                J::NAME,
                crate::util::panic_message(&*payload)
            ),
        ),
    }
}

/// The task's job value as a `J`.
fn job_of<J: Job>(job: &(dyn Any + Send)) -> Result<&J, SendFail> {
    job.downcast_ref::<J>().ok_or_else(|| {
        SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            "job value does not match its route".into(),
        ))
    })
}

pub(crate) fn send_job<J: Job>(
    tx: &IpcSender,
    head: &crate::proto::ToWorker<'_>,
    job: &(dyn Any + Send),
) -> Result<(), SendFail> {
    let job = job_of::<J>(job)?;
    let mut failed = None;
    let res = tx.feed_with(std::any::type_name::<J>(), |buf| {
        crate::port::encode_into(head, buf)?;
        encode_job(job, buf).map_err(|f| {
            failed = Some(f);
            postcard::Error::SerdeSerCustom
        })
    });
    match (res, failed) {
        (_, Some(f)) => Err(SendFail::Job(f)),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(send_failure(e)),
    }
}

/// [`send_job`] for a worker that speaks JSON: one JSON object, the job's
/// JSON inside.
pub(crate) fn send_job_json<J: Job>(
    tx: &IpcSender,
    head: &crate::proto::ToWorker<'_>,
    job: &(dyn Any + Send),
) -> Result<(), SendFail> {
    let job = job_of::<J>(job)?;
    let bytes = encode_json(job).map_err(SendFail::Job)?;
    send_encoded(tx, head, &bytes, &[], true)
}

/// Sends a task whose job was encoded at submission: the head, then its
/// bytes (`json`: one JSON object with the job's JSON inside).
pub(crate) fn send_encoded(
    tx: &IpcSender,
    head: &crate::proto::ToWorker<'_>,
    bytes: &[u8],
    fds: &[std::os::fd::OwnedFd],
    json: bool,
) -> Result<(), SendFail> {
    if !fds.is_empty() {
        // Its buffers' files go with it, at once (kept here: a crash sends
        // the same chunk, files and all, to the next worker).
        let mut frame = Vec::with_capacity(bytes.len() + 32);
        crate::port::encode_into(head, &mut frame).map_err(|e| SendFail::Port(e.to_string()))?;
        frame.extend_from_slice(bytes);
        return tx.send_raw_with_fds(&frame, fds).map_err(send_failure);
    }
    tx.feed_with("an encoded job", |buf| {
        if json {
            crate::proto::json::job_frame(head, bytes, buf);
        } else {
            crate::port::encode_into(head, buf)?;
            buf.extend_from_slice(bytes);
        }
        Ok(())
    })
    .map_err(send_failure)
}

/// Encodes a job as JSON for a worker in another language.
pub(crate) fn encode_json<J: Job>(job: &J) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    crate::proto::json::encode_value(job, &mut buf).map_err(|why| {
        Failure::Codec(
            crate::job::Side::Supervisor,
            format!("the supervisor could not send a `{}` job: {why}", J::NAME),
        )
    })?;
    Ok(buf)
}

/// Encodes `jobs` as a JSON chunk (their JSON joined by commas), as
/// [`encode_chunk`] does for postcard: one that will not encode is a
/// hole; stops past [`CHUNK_BYTES`].
pub(crate) fn encode_chunk_json<J: Job>(jobs: &[J]) -> (EncodedChunk, usize) {
    let mut c = EncodedChunk {
        fds: Vec::new(),
        bytes: Vec::new(),
        count: 0,
        holes: Vec::new(),
    };
    for (i, job) in jobs.iter().enumerate() {
        let at = c.bytes.len();
        if c.count > 0 {
            c.bytes.push(b',');
        }
        match crate::proto::json::encode_value(job, &mut c.bytes) {
            Ok(()) => c.count += 1,
            Err(why) => {
                c.bytes.truncate(at);
                c.holes.push((
                    i,
                    Failure::Codec(
                        crate::job::Side::Supervisor,
                        format!("the supervisor could not send a `{}` job: {why}", J::NAME),
                    ),
                ));
            }
        }
        if c.bytes.len() > CHUNK_BYTES {
            if c.count > 1 {
                c.bytes.truncate(at);
                c.count -= 1;
                return (c, i);
            }
            return (c, i + 1);
        }
    }
    (c, jobs.len())
}

/// What a failed append to a worker's port means for the job.
pub(crate) fn send_failure(e: SendError) -> SendFail {
    match e {
        SendError::TooLarge { len, limit } => SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            format!("the job encodes to {len} bytes, over the frame limit of {limit}"),
        )),
        SendError::Encode(e) => SendFail::Job(Failure::Codec(crate::job::Side::Supervisor, e.to_string())),
        // (More buffers in one job than a frame carries fds.)
        SendError::Unsupported(what) => SendFail::Job(Failure::Codec(
            crate::job::Side::Supervisor,
            format!("the job cannot be sent: {what}"),
        )),
        SendError::Disconnected => SendFail::Gone,
        other => SendFail::Port(other.to_string()),
    }
}

/// Largest encoded chunk: past it, the rest of a chunk's jobs wait for the
/// next one.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// A chunk of jobs encoded for a process worker: the bytes of those that
/// encoded (each its length as a LEB128 varint, one byte for a job under
/// 128 bytes, then its postcard bytes), how many they are, and the failure
/// of each that did not, by its index.
pub(crate) struct EncodedChunk {
    pub(crate) bytes: Vec<u8>,
    /// The files of the buffers in the jobs' bytes, in order.
    pub(crate) fds: Vec<std::os::fd::OwnedFd>,
    pub(crate) count: u32,
    pub(crate) holes: Vec<(usize, Failure)>,
}

/// Encodes `jobs` as a chunk, each job alone: one that will not encode is
/// a hole, and the others still go. Stops before the job that would take
/// the chunk past [`CHUNK_BYTES`], or past the buffers one frame carries
/// (or after it, if it is the chunk's first), so a chunk holds at most one
/// job that is large on its own; returns how many jobs it took. The jobs'
/// buffers are sealed and their files kept with the bytes.
pub(crate) fn encode_chunk<J: Job>(jobs: &[J]) -> (EncodedChunk, usize) {
    let ((mut c, used), fds) = crate::port::collecting_buffers(|| encode_chunk_jobs(jobs));
    c.fds = fds;
    (c, used)
}

fn encode_chunk_jobs<J: Job>(jobs: &[J]) -> (EncodedChunk, usize) {
    let mut c = EncodedChunk {
        bytes: Vec::with_capacity(jobs.len().saturating_mul(8).min(CHUNK_BYTES)),
        fds: Vec::new(),
        count: 0,
        holes: Vec::new(),
    };
    for (i, job) in jobs.iter().enumerate() {
        let files = crate::port::buffers_collected();
        // A length, patched once the job is encoded, so the worker can
        // fail one undecodable job and still find the next. One byte is
        // kept for it (tiny jobs, where bytes count most, fit); a longer
        // length moves the job's bytes up.
        let at = c.bytes.len();
        c.bytes.push(0);
        match encode_job(job, &mut c.bytes) {
            Ok(()) => match u32::try_from(c.bytes.len() - at - 1) {
                Ok(len) => {
                    put_length(&mut c.bytes, at, len);
                    c.count += 1;
                }
                Err(_) => {
                    c.bytes.truncate(at);
                    crate::port::uncollect_buffers(files);
                    c.holes.push((
                        i,
                        Failure::Codec(
                            crate::job::Side::Supervisor,
                            "the job encodes to more than 4 GiB".into(),
                        ),
                    ));
                }
            },
            Err(f) => {
                c.bytes.truncate(at);
                crate::port::uncollect_buffers(files);
                c.holes.push((i, f));
            }
        }
        let too_many_files = crate::port::buffers_collected() > crate::transport::MAX_FDS_PER_FRAME;
        if c.bytes.len() > CHUNK_BYTES || too_many_files {
            if c.count > 1 && c.bytes.len() > at {
                // This job took the chunk past its budget and others are
                // in it: it goes first in the next chunk, so no frame holds
                // it and up to 4 MiB of others (it may be near the limit
                // alone), or more buffers than a frame carries.
                c.bytes.truncate(at);
                crate::port::uncollect_buffers(files);
                c.count -= 1;
                return (c, i);
            }
            return (c, i + 1);
        }
    }
    (c, jobs.len())
}

/// Writes `len` as LEB128 at `at`, where one byte was kept for it,
/// moving what follows up when it needs more.
fn put_length(bytes: &mut Vec<u8>, at: usize, mut len: u32) {
    let mut v = [0u8; 5];
    let mut k = 0;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            v[k] = b;
            k += 1;
            break;
        }
        v[k] = b | 0x80;
        k += 1;
    }
    bytes[at] = v[0];
    if k > 1 {
        bytes.splice(at + 1..at + 1, v[1..k].iter().copied());
    }
}

/// A chunk goes to a process worker as the bytes `encode_chunk` made at
/// submission; this is never called with a value.
pub(crate) fn send_chunk_value(
    _: &IpcSender,
    _: &crate::proto::ToWorker<'_>,
    _: &(dyn Any + Send),
) -> Result<(), SendFail> {
    Err(SendFail::Job(Failure::Codec(
        crate::job::Side::Supervisor,
        "a chunk for a process worker was not encoded when it was submitted".into(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);
    impl Job for Blob {
        type Output = ();
        type Error = String;
        const NAME: &'static str = "blob";
    }

    #[cfg(target_os = "linux")]
    #[derive(serde::Serialize, serde::Deserialize)]
    struct WithBuffer(u32, crate::port::Buffer);
    #[cfg(target_os = "linux")]
    impl Job for WithBuffer {
        type Output = ();
        type Error = String;
        const NAME: &'static str = "with-buffer";
    }

    /// A chunk of jobs with buffers keeps the files of exactly the jobs it
    /// holds, stops at the files one frame carries, and decodes back with
    /// each job finding its own buffer.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_chunk_carries_the_files_of_its_jobs_and_no_more_than_a_frame_takes() {
        use std::io::Write;
        let jobs: Vec<WithBuffer> = (0..300u32)
            .map(|i| {
                let mut b = crate::port::Buffer::with_capacity(8).unwrap();
                b.write_all(&i.to_le_bytes()).unwrap();
                WithBuffer(i, b)
            })
            .collect();
        let (c, used) = encode_chunk(&jobs);
        let max = crate::transport::MAX_FDS_PER_FRAME;
        assert_eq!(used, max);
        assert_eq!(c.count as usize, max);
        assert_eq!(c.fds.len(), max);
        assert!(jobs[..used].iter().all(|j| j.1.is_sealed()));
        let mut rest = &c.bytes[..];
        let decoded = crate::port::with_received_fds(c.fds, || {
            let mut out = Vec::new();
            while let Some((job, tail)) = crate::job::next_job(rest) {
                rest = tail;
                out.push(postcard::from_bytes::<WithBuffer>(job).unwrap());
            }
            out
        });
        assert_eq!(decoded.len(), max);
        for (i, WithBuffer(n, b)) in decoded.iter().enumerate() {
            assert_eq!(*n as usize, i);
            assert_eq!(&b[..], &n.to_le_bytes());
        }
        // The rest go in the next chunk, whose files start again at 0.
        let (c, used) = encode_chunk(&jobs[max..]);
        assert_eq!((used, c.fds.len()), (300 - max, 300 - max));
    }

    /// Jobs of every length class (one to four length bytes) come back
    /// out of a chunk whole and in order.
    #[test]
    fn chunk_lengths_round_trip_across_varint_sizes() {
        let sizes = [
            0usize, 1, 120, 125, 126, 127, 128, 200, 16_000, 16_381, 16_382, 16_383, 16_384, 70_000,
            2_100_000,
        ];
        let jobs: Vec<Blob> = sizes.iter().map(|&n| Blob(vec![(n % 251) as u8; n])).collect();
        let (chunk, used) = encode_chunk(&jobs);
        assert_eq!(used, jobs.len());
        assert_eq!(chunk.count as usize, jobs.len());
        let mut rest = &chunk.bytes[..];
        for want in &jobs {
            let (job, more) = crate::job::next_job(rest).expect("a job");
            assert_eq!(postcard::from_bytes::<Blob>(job).expect("decodes").0, want.0);
            rest = more;
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn a_chunk_of_large_jobs_stops_at_its_byte_budget() {
        let jobs: Vec<Blob> = (0..200).map(|_| Blob(vec![7; 100 << 10])).collect();
        let (c, used) = encode_chunk(&jobs);
        // Up to 4 MiB: the job that would cross it waits for the next chunk.
        assert!(used < jobs.len());
        assert_eq!(c.count as usize, used);
        assert!(c.bytes.len() <= CHUNK_BYTES && c.bytes.len() > CHUNK_BYTES - (101 << 10));
        assert!(c.holes.is_empty());
    }

    #[test]
    fn a_large_job_after_small_ones_goes_in_the_next_chunk() {
        let mut jobs: Vec<Blob> = (0..3).map(|_| Blob(vec![1; 1 << 20])).collect();
        jobs.push(Blob(vec![2; 8 << 20]));
        let (c, used) = encode_chunk(&jobs);
        assert_eq!((used, c.count), (3, 3));
        // Alone, it goes.
        let (c, used) = encode_chunk(&jobs[3..]);
        assert_eq!((used, c.count), (1, 1));
    }

    #[test]
    fn a_chunk_of_small_jobs_takes_them_all() {
        let jobs: Vec<Blob> = (0..1000).map(|_| Blob(vec![1; 8])).collect();
        let (c, used) = encode_chunk(&jobs);
        assert_eq!((used, c.count), (1000, 1000));
    }
}
