//! The one module that turns values (event payloads, snapshot states) into bytes.
//!
//! Layout: one format version byte, then the value in bincode 2 (serde mode, little-endian,
//! fixed-width integers). The version byte lets the encoding change later without guessing:
//! a reader that meets an unknown version refuses with [`CodecError::UnknownFormat`] instead of
//! decoding garbage.
//!
//! Types that go through this codec must be bincode-compatible serde types: externally tagged
//! enums (the serde default), no `#[serde(untagged)]`, `flatten`, `skip_serializing_if` or
//! `serde_json::Value` (bincode is not self-describing).

use serde::{de::DeserializeOwned, Serialize};

/// The codec format this build writes.
pub const CODEC_FORMAT_V1: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("empty buffer: no codec format byte")]
    Empty,
    #[error("unknown codec format {0} (this build reads format {CODEC_FORMAT_V1})")]
    UnknownFormat(u8),
    #[error("payload does not decode: {0}")]
    Decode(String),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("record and payload disagree: {0}")]
    Mismatch(String),
    #[error("no decoder for {event_type} version {event_version}")]
    UnknownVersion {
        event_type: String,
        event_version: String,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

/// Encodes `value` as `[CODEC_FORMAT_V1] ++ bincode(value)`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![CODEC_FORMAT_V1];
    // Encoding into a Vec cannot fail for the serde types we allow (no maps with
    // unknown length, no `deserialize_any`-only types): a failure is a programmer error.
    let body = bincode::serde::encode_to_vec(value, config())
        .unwrap_or_else(|e| panic!("codec: value is not bincode-encodable: {e}"));
    out.extend_from_slice(&body);
    out
}

/// Decodes bytes written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != CODEC_FORMAT_V1 {
        return Err(CodecError::UnknownFormat(format));
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum E {
        A { x: u64, s: String },
        B(Option<i64>),
    }

    #[test]
    fn round_trips_and_refuses_unknown_format() {
        let v = E::A {
            x: 7,
            s: "hi".into(),
        };
        let bytes = encode(&v);
        assert_eq!(bytes[0], CODEC_FORMAT_V1);
        assert_eq!(decode::<E>(&bytes).unwrap(), v);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(decode::<E>(&bad), Err(CodecError::UnknownFormat(9)));
        assert_eq!(decode::<E>(&[]), Err(CodecError::Empty));
        let mut long = encode(&E::B(None));
        long.push(0);
        assert_eq!(decode::<E>(&long), Err(CodecError::TrailingBytes(1)));
    }
}
