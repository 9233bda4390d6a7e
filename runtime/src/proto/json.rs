//! The job messages in JSON, for workers written in other languages
//! (`docs/protocol.md`, section 6): the same messages as the postcard
//! ones beside this file, one JSON object per frame, with the job,
//! output, error and progress values as the JSON serde makes of them.
//!
//! The supervisor writes `job`, `batch`, `cancel`, `suspend`, `resume`
//! and `stop`, and reads `routes`, `progress`, `done` and `done_batch`.
//! A worker's frame is untrusted: anything that is not one of these, with
//! the fields each needs, is an error naming what is wrong, and the
//! worker is ended as one that broke its protocol.

use serde_json::Value;
use serde_json::value::RawValue;

use super::{FromWorker, ToWorker, WireOutcome};
use crate::job::{Failure, RouteInfo, Side};
use crate::task::JsonResult;

/// A control message (`stop`, `cancel`, `suspend`, `resume`) as a frame.
pub(crate) fn control(msg: &ToWorker<'_>) -> Vec<u8> {
    let v = match msg {
        ToWorker::Stop => serde_json::json!({"type": "stop"}),
        ToWorker::Suspend => serde_json::json!({"type": "suspend"}),
        ToWorker::Resume => serde_json::json!({"type": "resume"}),
        ToWorker::Cancel { id } => serde_json::json!({"type": "cancel", "id": id}),
        // Jobs go through `job_frame`, with their encoded values.
        ToWorker::Job { .. } | ToWorker::Batch { .. } => {
            let mut b = Vec::new();
            job_frame(msg, b"null", &mut b);
            return b;
        }
    };
    v.to_string().into_bytes()
}

/// Appends a `job` frame (or a `batch` frame, for a chunk) to `buf`:
/// `job` is the job's JSON (a chunk's: the jobs' JSON joined by commas).
pub(crate) fn job_frame(head: &ToWorker<'_>, job: &[u8], buf: &mut Vec<u8>) {
    let (kind, id, route, field, open, close) = match head {
        ToWorker::Batch { id, route, .. } => ("batch", *id, *route, "jobs", "[", "]"),
        ToWorker::Job { id, route } => ("job", *id, *route, "job", "", ""),
        other => {
            buf.extend_from_slice(&control(other));
            return;
        }
    };
    buf.extend_from_slice(br#"{"type":""#);
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(br#"","id":"#);
    buf.extend_from_slice(id.to_string().as_bytes());
    buf.extend_from_slice(br#","route":"#);
    buf.extend_from_slice(Value::from(route).to_string().as_bytes());
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(field.as_bytes());
    buf.extend_from_slice(b"\":");
    buf.extend_from_slice(open.as_bytes());
    buf.extend_from_slice(job);
    buf.extend_from_slice(close.as_bytes());
    buf.push(b'}');
}

/// Writes `v` as JSON to `w`, catching a panicking `Serialize`; the error
/// names the type.
fn write_value<T: serde::Serialize + ?Sized, W: std::io::Write>(v: &T, w: W) -> Result<(), String> {
    match crate::util::catch_panic(|| serde_json::to_writer(w, v)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "cannot encode a `{}` as JSON: {e}",
            std::any::type_name::<T>()
        )),
        Err(p) => Err(format!(
            "cannot encode a `{}` as JSON: its Serialize impl panicked: {p}",
            std::any::type_name::<T>()
        )),
    }
}

/// Appends `v`'s JSON to `buf` (a chunk's jobs are joined with commas);
/// on failure `buf` is as it was.
pub(crate) fn encode_value<T: serde::Serialize + ?Sized>(v: &T, buf: &mut Vec<u8>) -> Result<(), String> {
    let at = buf.len();
    write_value(v, &mut *buf).inspect_err(|_| buf.truncate(at))
}

/// How long `v`'s JSON is, found without keeping it (a submit's check).
pub(crate) fn encoded_len<T: serde::Serialize + ?Sized>(v: &T) -> Result<usize, String> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    write_value(v, &mut c).map(|()| c.0)
}

/// A frame's fields as their JSON text, unparsed: each value is checked
/// and read by the field's rule in `decode`. serde refuses a key given
/// twice (a frame that says two things is not one of this protocol), and
/// a value keeps its own text (an integer too big for 64 bits is quoted
/// back as it came, not as a float). A present `null` is `Some`.
#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    jobs_version: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    routes: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    nanos: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    results: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    ok: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    panic: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    failed: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    cancelled: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    /// The frame's RESULT keys (a `done` frame's one result).
    fn result(&self) -> ResultFields<'a> {
        ResultFields {
            ok: self.ok,
            error: self.error,
            panic: self.panic,
            failed: self.failed,
            cancelled: self.cancelled,
        }
    }
}

/// The keys of one RESULT (in a `done` frame, or one of a `done_batch`'s
/// `results`), as their JSON text; a key given twice is refused. `Fields`
/// repeats them: serde's `flatten` would buffer the values, which loses
/// both their text and the duplicate check.
#[derive(serde::Deserialize)]
struct ResultFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    ok: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    panic: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    failed: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    cancelled: Option<&'a RawValue>,
}

/// A field that is there, even as `null` (serde's `Option` would make a
/// `null` look absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// What a worker's frame says, or why it is not a frame of this protocol.
pub(crate) fn decode(frame: &[u8]) -> Result<FromWorker, String> {
    let text = std::str::from_utf8(frame).map_err(|e| format!("a frame that is not JSON: {e}"))?;
    // (serde would read an array as a struct's fields in order.)
    let f: Fields<'_> = match serde_json::from_str(text) {
        Ok(f) if text.trim_start().starts_with('{') => f,
        Ok(_) => return Err("a frame that is not a JSON object".into()),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => format!("a frame that breaks the protocol: {e}"),
                Ok(_) => "a frame that is not a JSON object".into(),
                Err(e) => format!("a frame that is not JSON: {e}"),
            });
        }
        Err(e) => return Err(format!("a frame that is not JSON: {e}")),
    };
    let kind = match f.kind {
        None => return Err("a frame without a \"type\"".into()),
        Some(k) => match serde_json::from_str::<&str>(k.get()) {
            Ok(k) => std::borrow::Cow::Borrowed(k),
            // A string with escapes in it cannot be borrowed.
            Err(_) => match serde_json::from_str::<String>(k.get()) {
                Ok(k) => std::borrow::Cow::Owned(k),
                Err(_) => return Err(format!("a frame whose \"type\" is {}, not a string", k.get())),
            },
        },
    };
    match &*kind {
        "routes" => {
            let jobs_version = match f.jobs_version {
                None => super::JOBS_VERSION,
                Some(v) => serde_json::from_str::<u16>(v.get())
                    .map_err(|_| format!("a \"routes\" frame whose jobs_version is {}", v.get()))?,
            };
            let names = f
                .routes
                .and_then(|r| serde_json::from_str::<Vec<&RawValue>>(r.get()).ok())
                .ok_or("a \"routes\" frame without a \"routes\" array")?;
            let routes = names
                .into_iter()
                .map(|n| match serde_json::from_str::<String>(n.get()) {
                    Ok(name) => Ok(RouteInfo::untyped(name)),
                    Err(_) => Err(format!("a route name that is not a string: {}", n.get())),
                })
                .collect::<Result<_, _>>()?;
            Ok(FromWorker::Routes { routes, jobs_version })
        }
        "progress" => {
            let id = id_of(f.id, "progress")?;
            let data = f.data.ok_or("a \"progress\" frame without \"data\"")?;
            Ok(FromWorker::Progress {
                id,
                payload: data.get().as_bytes().to_vec(),
            })
        }
        "done" => {
            let id = id_of(f.id, "done")?;
            let outcome = match one_result(&f.result())? {
                Ok(r) => WireOutcome::Json(r),
                Err(failure) => WireOutcome::Failed(failure),
            };
            Ok(FromWorker::Done { id, outcome })
        }
        "done_batch" => {
            let id = id_of(f.id, "done_batch")?;
            let nanos = f
                .nanos
                .and_then(|n| serde_json::from_str::<u64>(n.get()).ok())
                .unwrap_or(0);
            let outcome = match (f.results, f.ok, f.result().has_other_than_ok()) {
                (Some(results), None, false) => {
                    let results = serde_json::from_str::<Vec<&RawValue>>(results.get()).map_err(|_| {
                        format!(
                            "a \"done_batch\" frame whose results are {}, not an array",
                            results.get()
                        )
                    })?;
                    let items = results
                        .into_iter()
                        .map(|r| {
                            if !r.get().starts_with('{') {
                                return Err(format!("a batch result that is not an object: {}", r.get()));
                            }
                            match serde_json::from_str::<ResultFields<'_>>(r.get()) {
                                Ok(fields) => one_result(&fields),
                                Err(e) => Err(format!("a batch result that breaks the protocol: {e}")),
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let failed = items.iter().filter(|i| i.is_err()).count();
                    WireOutcome::JsonChunk {
                        nanos,
                        items,
                        failed: u32::try_from(failed).unwrap_or(u32::MAX),
                    }
                }
                // Every job succeeded: just the outputs, kept as their text.
                (None, Some(ok), false) if ok.get().starts_with('[') => WireOutcome::JsonOk {
                    nanos,
                    outputs: ok.get().as_bytes().to_vec(),
                },
                _ => {
                    return Err(
                        "a \"done_batch\" frame without exactly one of a \"results\" or an \"ok\" array"
                            .into(),
                    );
                }
            };
            Ok(FromWorker::Done { id, outcome })
        }
        other => Err(format!("a frame of unknown type {other:?}")),
    }
}

fn id_of(id: Option<&RawValue>, kind: &str) -> Result<u64, String> {
    match id {
        Some(v) => serde_json::from_str::<u64>(v.get()).map_err(|_| {
            format!(
                "a {kind:?} frame whose id is {}, not an unsigned integer",
                v.get()
            )
        }),
        None => Err(format!("a {kind:?} frame without an \"id\"")),
    }
}

impl ResultFields<'_> {
    /// Whether a key of a single result is there besides `ok` (a
    /// `done_batch` frame carries its results in `results` or `ok`).
    fn has_other_than_ok(&self) -> bool {
        self.error.is_some() || self.panic.is_some() || self.failed.is_some() || self.cancelled.is_some()
    }
}

/// One job's result: exactly one of `ok`, `error`, `panic`, `failed` or
/// `cancelled` (which must be `true`).
fn one_result(r: &ResultFields<'_>) -> Result<Result<JsonResult, Failure>, String> {
    let keys = [
        ("ok", r.ok),
        ("error", r.error),
        ("panic", r.panic),
        ("failed", r.failed),
        ("cancelled", r.cancelled),
    ];
    let present: Vec<(&str, &RawValue)> = keys.iter().filter_map(|&(k, v)| v.map(|v| (k, v))).collect();
    let [(key, v)] = present[..] else {
        return Err(format!(
            "a result that has {}: it needs exactly one of \"ok\", \"error\", \"panic\", \"failed\" or \"cancelled\"",
            if present.is_empty() {
                "none of them".to_string()
            } else {
                present.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(" and ")
            }
        ));
    };
    // A string as its text; anything else as its JSON.
    let text = |v: &RawValue| serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_string());
    let json = |err: bool| JsonResult {
        err,
        json: v.get().as_bytes().to_vec(),
    };
    Ok(match key {
        "ok" => Ok(json(false)),
        "error" => Ok(json(true)),
        "panic" => Err(Failure::Panicked(text(v))),
        "failed" => Err(Failure::Codec(Side::Worker, text(v))),
        _ if v.get() == "true" => Err(Failure::Cancelled),
        _ => {
            return Err(format!(
                "a result whose \"cancelled\" is {}: it must be true",
                v.get()
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_frame_is_one_json_object() {
        let mut buf = Vec::new();
        job_frame(
            &ToWorker::Job {
                id: 7,
                route: "re\"size",
            },
            br#"{"w":3}"#,
            &mut buf,
        );
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "job", "id": 7, "route": "re\"size", "job": {"w": 3}})
        );
        buf.clear();
        job_frame(
            &ToWorker::Batch {
                id: 8,
                route: "sq",
                count: 3,
            },
            b"1,2,3",
            &mut buf,
        );
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "batch", "id": 8, "route": "sq", "jobs": [1, 2, 3]})
        );
    }

    /// Seeded random frames, made by mutating valid ones (a byte changed,
    /// dropped, or a field's value swapped for another JSON value), never
    /// panic the decoder: each decodes or says why not.
    #[test]
    fn mutated_worker_frames_decode_or_fail_but_never_panic() {
        let valid: [&[u8]; 7] = [
            br#"{"type":"routes","jobs_version":2,"routes":["a","b"]}"#,
            br#"{"type":"progress","id":1,"data":{"x":[1,2]}}"#,
            br#"{"type":"done","id":2,"ok":{"n":1}}"#,
            br#"{"type":"done","id":3,"panic":"boom"}"#,
            br#"{"type":"done_batch","id":4,"nanos":9,"ok":[1,2,3]}"#,
            br#"{"type":"done_batch","id":5,"nanos":9,"results":[{"ok":1},{"error":"e"},{"cancelled":true}]}"#,
            br#"{"type":"done","id":6,"failed":"no"}"#,
        ];
        let swaps: [&[u8]; 9] = [
            b"null",
            b"-1",
            b"1.5",
            b"\"s\"",
            b"[]",
            b"{}",
            b"true",
            b"18446744073709551616",
            b"[{\"ok\":1,\"error\":2}]",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut decoded, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut f = valid[next(valid.len())].to_vec();
            for _ in 0..1 + next(3) {
                match next(3) {
                    0 if !f.is_empty() => {
                        let i = next(f.len());
                        f[i] = next(256) as u8;
                    }
                    1 if !f.is_empty() => {
                        f.remove(next(f.len()));
                    }
                    _ => {
                        // Replace what follows a ':' up to the next ',' or '}'.
                        let colons: Vec<usize> = (0..f.len()).filter(|&i| f[i] == b':').collect();
                        if let Some(&at) = colons.get(next(colons.len().max(1))) {
                            let end = (at + 1..f.len())
                                .find(|&i| f[i] == b',' || f[i] == b'}')
                                .unwrap_or(f.len());
                            f.splice(at + 1..end, swaps[next(swaps.len())].iter().copied());
                        }
                    }
                }
            }
            match decode(&f) {
                Ok(_) => decoded += 1,
                Err(why) => {
                    assert!(!why.is_empty());
                    refused += 1;
                }
            }
        }
        // Both outcomes were reached: the mutations stay near the protocol.
        assert!(
            decoded > 100 && refused > 100,
            "{decoded} decoded, {refused} refused"
        );
    }

    /// A frame that says two things, or a result outside the table, is
    /// refused; values keep the text they came as.
    #[test]
    fn duplicate_keys_and_odd_results_are_refused_and_values_keep_their_text() {
        for dup in [
            br#"{"type":"done","id":1,"ok":1,"ok":2}"#.as_slice(),
            br#"{"type":"done","id":1,"id":2,"ok":1}"#,
            br#"{"type":"done","type":"progress","id":1,"ok":1}"#,
            br#"{"type":"done_batch","id":1,"results":[{"ok":1,"ok":2}]}"#,
            br#"{"type":"progress","id":1,"data":1,"data":2}"#,
        ] {
            let why = decode(dup).unwrap_err();
            assert!(why.contains("duplicate field"), "{why}");
        }
        for (frame, says) in [
            (
                br#"{"type":"done","id":1,"cancelled":false}"#.as_slice(),
                "must be true",
            ),
            (br#"{"type":"done","id":1,"cancelled":"yes"}"#, "must be true"),
            (
                br#"{"type":"done_batch","id":1,"results":[{"cancelled":0}]}"#,
                "must be true",
            ),
            (
                br#"{"type":"done_batch","id":1,"ok":[1],"error":"e"}"#,
                "exactly one",
            ),
            (br#"{"type":"done_batch","id":1,"results":[1]}"#, "not an object"),
            (
                br#"{"type":"done_batch","id":1,"results":[["x"]]}"#,
                "not an object",
            ),
            (br#"["done",1]"#, "not a JSON object"),
            (
                br#"{"type":"done_batch","id":1,"results":{"ok":1}}"#,
                "not an array",
            ),
            (br#"{"type":7,"id":1,"ok":1}"#, "not a string"),
            (br#"{"id":1,"ok":1}"#, "without a \"type\""),
            (
                br#"{"type":"done","id":18446744073709551616,"ok":1}"#,
                "not an unsigned integer",
            ),
            (br#"{"type":"done","id":1,"ok":1"#, "not JSON"),
        ] {
            let why = decode(frame).unwrap_err();
            assert!(why.contains(says), "{} -> {why}", String::from_utf8_lossy(frame));
        }
        // An integer past 64 bits stays as written (no float), a present
        // null is an output, and an escaped type is still its name.
        let big = decode(br#"{"type":"done","id":1,"ok":1180591620717411303424}"#).unwrap();
        assert!(
            matches!(big, FromWorker::Done { outcome: WireOutcome::Json(ref r), .. } if r.json == b"1180591620717411303424")
        );
        let null = decode(br#"{"type":"d\u006fne","id":2,"ok":null}"#).unwrap();
        assert!(
            matches!(null, FromWorker::Done { id: 2, outcome: WireOutcome::Json(ref r) } if !r.err && r.json == b"null")
        );
        let cancelled = decode(br#"{"type":"done","id":3,"cancelled":true}"#).unwrap();
        assert!(matches!(
            cancelled,
            FromWorker::Done {
                outcome: WireOutcome::Failed(Failure::Cancelled),
                ..
            }
        ));
        let panic = decode(br#"{"type":"done","id":4,"panic":"boom \"x\""}"#).unwrap();
        assert!(
            matches!(panic, FromWorker::Done { outcome: WireOutcome::Failed(Failure::Panicked(ref p)), .. } if p == "boom \"x\"")
        );
    }

    #[test]
    fn results_decode_and_bad_frames_say_what_is_wrong() {
        let done = decode(br#"{"type":"done","id":3,"ok":{"n":1}}"#).unwrap();
        assert!(
            matches!(done, FromWorker::Done { id: 3, outcome: WireOutcome::Json(ref r) } if !r.err && r.json == br#"{"n":1}"#)
        );
        let err = decode(br#"{"type":"done","id":3,"ok":1,"error":2}"#).unwrap_err();
        assert!(err.contains("has ok and error"), "{err}");
        assert!(decode(b"[1]").unwrap_err().contains("not a JSON object"));
        assert!(
            decode(br#"{"type":"done","id":-1,"ok":1}"#)
                .unwrap_err()
                .contains("id is -1")
        );
        assert!(
            decode(br#"{"type":"nope"}"#)
                .unwrap_err()
                .contains("unknown type")
        );
        assert!(decode(b"\xff").unwrap_err().contains("not JSON"));
        let all_ok = decode(br#"{"type":"done_batch","id":4,"nanos":9,"ok":[1,2]}"#).unwrap();
        assert!(
            matches!(all_ok, FromWorker::Done { id: 4, outcome: WireOutcome::JsonOk { ref outputs, nanos: 9 } } if outputs == b"[1,2]")
        );
        let both = decode(br#"{"type":"done_batch","id":4,"ok":[1],"results":[{"ok":1}]}"#).unwrap_err();
        assert!(both.contains("exactly one"), "{both}");
        // An `ok` that is not an array is refused, not passed on.
        let not_array = decode(br#"{"type":"done_batch","id":4,"ok":{"a":1}}"#).unwrap_err();
        assert!(not_array.contains("exactly one"), "{not_array}");
    }
}
