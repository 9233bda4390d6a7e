//! Sentences for postcard's coding errors that a user can act on.
//!
//! postcard drops the message a type's own `Serialize` or `Deserialize`
//! gives (`Error::custom`), and its other errors name the format, not the
//! user's type. These helpers say which type failed, which way, and what
//! to do about it.

use serde::Serialize;

/// Why `value` (of type `T`) could not be encoded, as a sentence part:
/// "cannot encode a `T`: <reason>". The type's own error message, which
/// postcard drops, is recovered by encoding the value once more with
/// serde_json (only on this failure path).
pub(crate) fn encode_failure<T: Serialize + ?Sized>(value: &T, e: &postcard::Error) -> String {
    let ty = std::any::type_name::<T>();
    let reason = match e {
        postcard::Error::SerdeSerCustom => match crate::util::catch_panic(|| serde_json::to_vec(value)) {
            Ok(Err(json)) => format!("its Serialize impl failed: {json}"),
            _ => "its Serialize impl failed (postcard does not keep the message)".to_string(),
        },
        postcard::Error::SerializeSeqLengthUnknown => {
            "it serializes a sequence or map without saying its length \
             up front, which postcard needs (collect it into a Vec or a map first)"
                .to_string()
        }
        other => other.to_string(),
    };
    format!("cannot encode a `{ty}`: {reason}")
}

/// Why bytes could not be decoded as a `T`, as a sentence part:
/// "cannot decode a `T`: <reason>".
pub(crate) fn decode_failure_named(ty: &str, e: &postcard::Error) -> String {
    let reason = match e {
        postcard::Error::WontImplement => "the type needs a self-describing format (like \
             serde_json::Value, #[serde(untagged)] or #[serde(flatten)]), which postcard, the pool's \
             codec, cannot decode; use a concrete type"
            .to_string(),
        postcard::Error::SerdeDeCustom => {
            "its Deserialize impl rejected the bytes (postcard does not keep the message)".to_string()
        }
        postcard::Error::DeserializeUnexpectedEnd => {
            "the bytes ended early: the two sides disagree on the type (are supervisor and worker \
             built from the same code?)"
                .to_string()
        }
        other => format!("{other} (are supervisor and worker built from the same code?)"),
    };
    format!("cannot decode a `{ty}`: {reason}")
}

/// [`decode_failure_named`] for the type `T`.
pub(crate) fn decode_failure<T: ?Sized>(e: &postcard::Error) -> String {
    decode_failure_named(std::any::type_name::<T>(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refusing on purpose"))
        }
    }

    #[test]
    fn an_encode_failure_keeps_the_types_own_message() {
        let e = postcard::to_allocvec(&Refuses).unwrap_err();
        let msg = encode_failure(&Refuses, &e);
        assert!(msg.contains("refusing on purpose"), "{msg}");
        assert!(msg.contains("Refuses"), "{msg}");
    }

    #[test]
    fn a_self_describing_type_is_named_as_the_cause() {
        let bytes = postcard::to_allocvec(&serde_json::json!({"a": 1})).unwrap();
        let e = postcard::from_bytes::<serde_json::Value>(&bytes).unwrap_err();
        let msg = decode_failure::<serde_json::Value>(&e);
        assert!(msg.contains("self-describing"), "{msg}");
        assert!(msg.contains("concrete type"), "{msg}");
    }
}
