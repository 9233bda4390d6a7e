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

use serde_json::{Map, Value};

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

/// One job's output (or, `err`, its error) as the ticket decodes it.
fn result_of(err: bool, v: &Value) -> JsonResult {
    JsonResult {
        err,
        json: v.to_string().into_bytes(),
    }
}

/// The common answer to a chunk of tiny jobs, every one of them a
/// success, read without a value tree: each output is kept as its text.
#[derive(serde::Deserialize)]
struct AllOk<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    id: u64,
    #[serde(default)]
    nanos: Option<u64>,
    #[serde(borrow)]
    ok: &'a serde_json::value::RawValue,
    /// Must be absent (a frame with both is refused, by the full path).
    #[serde(default)]
    results: Option<serde::de::IgnoredAny>,
}

/// What a worker's frame says, or why it is not a frame of this protocol.
pub(crate) fn decode(frame: &[u8]) -> Result<FromWorker, String> {
    if let Ok(b) = serde_json::from_slice::<AllOk<'_>>(frame) {
        // (An `ok` that is not an array takes the full path, which
        // refuses it.)
        if b.kind == "done_batch" && b.results.is_none() && b.ok.get().starts_with('[') {
            return Ok(FromWorker::Done {
                id: b.id,
                outcome: WireOutcome::JsonOk {
                    nanos: b.nanos.unwrap_or(0),
                    outputs: b.ok.get().as_bytes().to_vec(),
                },
            });
        }
    }
    let v: Value = serde_json::from_slice(frame).map_err(|e| format!("a frame that is not JSON: {e}"))?;
    let Value::Object(mut m) = v else {
        return Err("a frame that is not a JSON object".into());
    };
    let kind = match m.remove("type") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(format!("a frame whose \"type\" is {other}, not a string")),
        None => return Err("a frame without a \"type\"".into()),
    };
    match kind.as_str() {
        "routes" => {
            let jobs_version = match m.remove("jobs_version") {
                None => super::JOBS_VERSION,
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| format!("a \"routes\" frame whose jobs_version is {v}"))?,
            };
            let Some(Value::Array(names)) = m.remove("routes") else {
                return Err("a \"routes\" frame without a \"routes\" array".into());
            };
            let routes = names
                .into_iter()
                .map(|n| match n {
                    Value::String(name) => Ok(RouteInfo::untyped(name)),
                    other => Err(format!("a route name that is not a string: {other}")),
                })
                .collect::<Result<_, _>>()?;
            Ok(FromWorker::Routes { routes, jobs_version })
        }
        "progress" => {
            let id = id_of(&m, "progress")?;
            let data = m.remove("data").ok_or("a \"progress\" frame without \"data\"")?;
            Ok(FromWorker::Progress {
                id,
                payload: data.to_string().into_bytes(),
            })
        }
        "done" => {
            let id = id_of(&m, "done")?;
            let outcome = match one_result(m)? {
                Ok(bytes) => WireOutcome::Json(bytes),
                Err(f) => WireOutcome::Failed(f),
            };
            Ok(FromWorker::Done { id, outcome })
        }
        "done_batch" => {
            let id = id_of(&m, "done_batch")?;
            let nanos = m.get("nanos").and_then(Value::as_u64).unwrap_or(0);
            let items = match (m.remove("results"), m.remove("ok")) {
                (Some(Value::Array(results)), None) => results
                    .into_iter()
                    .map(|r| match r {
                        Value::Object(r) => one_result(r),
                        other => Err(format!("a batch result that is not an object: {other}")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                // Every job succeeded: just the outputs.
                (None, Some(Value::Array(outputs))) => {
                    outputs.iter().map(|v| Ok(result_of(false, v))).collect()
                }
                _ => {
                    return Err(
                        "a \"done_batch\" frame without exactly one of a \"results\" or an \"ok\" array"
                            .into(),
                    );
                }
            };
            let failed = items.iter().filter(|i| i.is_err()).count();
            Ok(FromWorker::Done {
                id,
                outcome: WireOutcome::JsonChunk {
                    nanos,
                    items,
                    failed: u32::try_from(failed).unwrap_or(u32::MAX),
                },
            })
        }
        other => Err(format!("a frame of unknown type {other:?}")),
    }
}

fn id_of(m: &Map<String, Value>, kind: &str) -> Result<u64, String> {
    match m.get("id") {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("a {kind:?} frame whose id is {v}, not an unsigned integer")),
        None => Err(format!("a {kind:?} frame without an \"id\"")),
    }
}

/// One job's result: exactly one of `ok`, `error`, `panic`, `failed` or
/// `cancelled`.
fn one_result(mut m: Map<String, Value>) -> Result<Result<JsonResult, Failure>, String> {
    const KEYS: [&str; 5] = ["ok", "error", "panic", "failed", "cancelled"];
    let present: Vec<&str> = KEYS.iter().copied().filter(|k| m.contains_key(*k)).collect();
    let [key] = present[..] else {
        return Err(format!(
            "a result that has {}: it needs exactly one of \"ok\", \"error\", \"panic\", \"failed\" or \"cancelled\"",
            if present.is_empty() {
                "none of them".to_string()
            } else {
                present.join(" and ")
            }
        ));
    };
    let v = m.remove(key).unwrap_or(Value::Null);
    let text = |v: Value| match v {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Ok(match key {
        "ok" => Ok(result_of(false, &v)),
        "error" => Ok(result_of(true, &v)),
        "panic" => Err(Failure::Panicked(text(v))),
        "failed" => Err(Failure::Codec(Side::Worker, text(v))),
        _ => Err(Failure::Cancelled),
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
