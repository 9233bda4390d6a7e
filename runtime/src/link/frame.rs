//! A conversation's frames: their forms on the wire in each codec
//! (postcard and JSON, `docs/protocol.md` section 4) and the payload a
//! message carries.

use super::*;

/// A value as it travels, still encoded (postcard bytes or a JSON value),
/// with the files of the [`Buffer`](crate::port::Buffer)s in it.
#[derive(Debug, Clone)]
pub struct Payload(Encoded, Files);

/// The files of a payload's buffers, in the order its bytes name them
/// (shared by clones; each decode takes duplicates).
type Files = Option<Arc<[std::os::fd::OwnedFd]>>;

#[derive(Debug, Clone)]
pub(super) enum Encoded {
    Postcard(Vec<u8>),
    Json(serde_json::Value),
}

impl Payload {
    /// A JSON payload's text (`None` for postcard).
    pub(super) fn json_text(&self) -> Option<String> {
        match &self.0 {
            Encoded::Json(v) => Some(v.to_string()),
            Encoded::Postcard(_) => None,
        }
    }

    /// The files of the buffers in it.
    pub(super) fn files(&self) -> &[std::os::fd::OwnedFd] {
        self.1.as_deref().unwrap_or(&[])
    }

    /// Encodes a value that goes nowhere a buffer's file can follow (a
    /// failure's reason).
    pub(super) fn encode<T: Serialize + ?Sized>(codec: Codec, v: &T) -> Result<Payload, LinkError> {
        Payload::encode_for(codec, v, false)
    }

    /// Encodes `v`; with `files`, its buffers are sealed and their files
    /// kept to go beside the frame (a connection that passes fds).
    pub(super) fn encode_for<T: Serialize + ?Sized>(
        codec: Codec,
        v: &T,
        files: bool,
    ) -> Result<Payload, LinkError> {
        match codec {
            Codec::Postcard if files => {
                let (r, fds) = crate::port::collecting_buffers(|| postcard::to_allocvec(v));
                let b = r.map_err(|e| LinkError::Codec(encode_failure(v, &e)))?;
                let files = (!fds.is_empty()).then(|| Arc::from(fds));
                Ok(Payload(Encoded::Postcard(b), files))
            }
            Codec::Postcard => postcard::to_allocvec(v)
                .map(|b| Payload(Encoded::Postcard(b), None))
                .map_err(|e| LinkError::Codec(encode_failure(v, &e))),
            Codec::Json => serde_json::to_value(v)
                .map(|v| Payload(Encoded::Json(v), None))
                .map_err(|e| {
                    LinkError::Codec(format!("could not encode a {}: {e}", std::any::type_name::<T>()))
                }),
        }
    }

    /// Decodes the value as `T`, all of it: bytes left over after a `T`
    /// mean the value is of another type, an error (as a port's receive).
    pub fn decode_value<T: DeserializeOwned>(&self) -> Result<T, LinkError> {
        self.decode()
    }

    pub(super) fn decode<T: DeserializeOwned>(&self) -> Result<T, LinkError> {
        let r = match self {
            Payload(Encoded::Postcard(b), files) => {
                // Each decode gets its own duplicates: a payload may be
                // decoded more than once, and each `Buffer` owns its file.
                let mut fds = Vec::new();
                for f in files.as_deref().unwrap_or(&[]) {
                    let f = f.try_clone().map_err(|e| {
                        LinkError::Codec(format!("could not take a buffer's file from a message: {e}"))
                    })?;
                    fds.push(f);
                }
                // Strict, as a port's receive: bytes left after the value
                // mean the peer sent another type, not this one with extras.
                match crate::port::with_received_fds(fds, || postcard::take_from_bytes::<T>(b)) {
                    Ok((v, [])) => Ok(v),
                    Ok((_, rest)) => Err(format!("{} bytes left over after the value", rest.len())),
                    Err(e) => Err(crate::port::buffer_refusal(&e).unwrap_or_else(|| e.to_string())),
                }
            }
            Payload(Encoded::Json(v), _) => T::deserialize(v).map_err(|e| e.to_string()),
        };
        r.map_err(|e| LinkError::Codec(format!("could not decode a {}: {e}", std::any::type_name::<T>())))
    }
}

/// Why `v` did not encode: a buffer's own refusal, if that was it.
fn encode_failure<T: Serialize + ?Sized>(v: &T, e: &postcard::Error) -> String {
    match crate::port::buffer_refusal(e) {
        Some(why) => format!("cannot encode a `{}`: {why}", std::any::type_name::<T>()),
        None => crate::codec::encode_failure(v, e),
    }
}

/// What a strict message's receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum StrictOutcome {
    Delivered,
    NotListening,
    Deadlock,
}

/// One frame of the conversation protocol.
#[derive(Debug)]
pub(super) enum Frame {
    Message(Payload),
    Strict { id: u64, data: Payload },
    StrictAck { id: u64, outcome: StrictOutcome },
    Request { id: u64, data: Payload },
    Reply { id: u64, ok: bool, data: Payload },
}

/// The postcard form of a frame (values as nested postcard bytes).
#[derive(Serialize, Deserialize)]
pub(super) enum PostcardFrame<'a> {
    Message(#[serde(borrow, with = "serde_bytes")] &'a [u8]),
    Strict {
        id: u64,
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
    StrictAck {
        id: u64,
        outcome: StrictOutcome,
    },
    Request {
        id: u64,
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
    Reply {
        id: u64,
        ok: bool,
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
}

/// The JSON form of a frame: `{"type": "...", ...}` (docs/protocol.md).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum JsonFrame {
    Message {
        data: serde_json::Value,
    },
    Strict {
        id: u64,
        data: serde_json::Value,
    },
    StrictAck {
        id: u64,
        outcome: StrictOutcome,
    },
    Request {
        id: u64,
        data: serde_json::Value,
    },
    Reply {
        id: u64,
        ok: bool,
        data: serde_json::Value,
    },
}

pub(super) fn mismatch() -> LinkError {
    LinkError::Codec("a payload of the other codec".into())
}

impl Frame {
    pub(super) fn encode(&self, codec: Codec) -> Result<Vec<u8>, LinkError> {
        let enc_err = |e: String| LinkError::Codec(format!("could not encode a frame: {e}"));
        match codec {
            Codec::Postcard => {
                fn bytes(p: &Payload) -> Result<&[u8], LinkError> {
                    match p {
                        Payload(Encoded::Postcard(b), _) => Ok(b.as_slice()),
                        Payload(Encoded::Json(_), _) => Err(mismatch()),
                    }
                }
                let f = match self {
                    Frame::Message(p) => PostcardFrame::Message(bytes(p)?),
                    Frame::Strict { id, data } => PostcardFrame::Strict {
                        id: *id,
                        data: bytes(data)?,
                    },
                    Frame::StrictAck { id, outcome } => PostcardFrame::StrictAck {
                        id: *id,
                        outcome: *outcome,
                    },
                    Frame::Request { id, data } => PostcardFrame::Request {
                        id: *id,
                        data: bytes(data)?,
                    },
                    Frame::Reply { id, ok, data } => PostcardFrame::Reply {
                        id: *id,
                        ok: *ok,
                        data: bytes(data)?,
                    },
                };
                postcard::to_allocvec(&f).map_err(|e| enc_err(e.to_string()))
            }
            Codec::Json => {
                let value = |p: &Payload| match p {
                    Payload(Encoded::Json(v), _) => Ok(v.clone()),
                    Payload(Encoded::Postcard(_), _) => Err(mismatch()),
                };
                let f = match self {
                    Frame::Message(p) => JsonFrame::Message { data: value(p)? },
                    Frame::Strict { id, data } => JsonFrame::Strict {
                        id: *id,
                        data: value(data)?,
                    },
                    Frame::StrictAck { id, outcome } => JsonFrame::StrictAck {
                        id: *id,
                        outcome: *outcome,
                    },
                    Frame::Request { id, data } => JsonFrame::Request {
                        id: *id,
                        data: value(data)?,
                    },
                    Frame::Reply { id, ok, data } => JsonFrame::Reply {
                        id: *id,
                        ok: *ok,
                        data: value(data)?,
                    },
                };
                serde_json::to_vec(&f).map_err(|e| enc_err(e.to_string()))
            }
        }
    }

    /// The files of the buffers in its value.
    pub(super) fn files(&self) -> &[std::os::fd::OwnedFd] {
        match self {
            Frame::Message(p)
            | Frame::Strict { data: p, .. }
            | Frame::Request { data: p, .. }
            | Frame::Reply { data: p, .. } => p.files(),
            Frame::StrictAck { .. } => &[],
        }
    }

    /// Decodes a frame; `fds` came with it (its value's buffers' files).
    pub(super) fn decode(
        codec: Codec,
        bytes: &[u8],
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<Frame, String> {
        match codec {
            Codec::Postcard => {
                let f: PostcardFrame<'_> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
                let files: Files = (!fds.is_empty()).then(|| Arc::from(fds));
                let p = |b: &[u8]| Payload(Encoded::Postcard(b.to_vec()), files.clone());
                Ok(match f {
                    PostcardFrame::Message(b) => Frame::Message(p(b)),
                    PostcardFrame::Strict { id, data } => Frame::Strict { id, data: p(data) },
                    PostcardFrame::StrictAck { id, outcome } => Frame::StrictAck { id, outcome },
                    PostcardFrame::Request { id, data } => Frame::Request { id, data: p(data) },
                    PostcardFrame::Reply { id, ok, data } => Frame::Reply {
                        id,
                        ok,
                        data: p(data),
                    },
                })
            }
            Codec::Json => {
                let f: JsonFrame = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                Ok(match f {
                    JsonFrame::Message { data } => Frame::Message(Payload(Encoded::Json(data), None)),
                    JsonFrame::Strict { id, data } => Frame::Strict {
                        id,
                        data: Payload(Encoded::Json(data), None),
                    },
                    JsonFrame::StrictAck { id, outcome } => Frame::StrictAck { id, outcome },
                    JsonFrame::Request { id, data } => Frame::Request {
                        id,
                        data: Payload(Encoded::Json(data), None),
                    },
                    JsonFrame::Reply { id, ok, data } => Frame::Reply {
                        id,
                        ok,
                        data: Payload(Encoded::Json(data), None),
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<Frame, String> {
        Frame::decode(Codec::Json, s.as_bytes(), Vec::new())
    }

    /// What docs/protocol.md, section 4, says of odd JSON frames.
    #[test]
    fn json_frames_at_the_edges_of_the_rules() {
        // Ids: any u64, 0 included; nothing negative or fractional.
        assert!(matches!(
            json(r#"{"type":"request","id":0,"data":1}"#),
            Ok(Frame::Request { id: 0, .. })
        ));
        let max = format!(r#"{{"type":"request","id":{},"data":1}}"#, u64::MAX);
        assert!(matches!(json(&max), Ok(Frame::Request { id: u64::MAX, .. })));
        assert!(json(r#"{"type":"request","id":-1,"data":1}"#).is_err());
        assert!(json(r#"{"type":"request","id":1.5,"data":1}"#).is_err());
        // Every field is required; unknown extra fields are ignored.
        assert!(json(r#"{"type":"request","data":1}"#).is_err());
        assert!(json(r#"{"type":"message"}"#).is_err());
        assert!(matches!(
            json(r#"{"type":"message","data":null,"x":1}"#),
            Ok(Frame::Message(_))
        ));
        // Unknown types and outcomes are errors.
        assert!(json(r#"{"type":"shout","data":1}"#).is_err());
        assert!(json(r#"{"type":"strict_ack","id":1,"outcome":"maybe"}"#).is_err());
        // A key given twice is an error.
        assert!(json(r#"{"type":"request","id":1,"id":2,"data":1}"#).is_err());
        // The frame is one object.
        assert!(json(r#"[{"type":"message","data":1}]"#).is_err());
    }
}
