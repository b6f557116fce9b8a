//! The one module that turns values (event payloads, snapshot states) into bytes.
//!
//! Every encoding starts with one **format byte**, so the encoding can change without
//! guessing: a reader that meets an unknown format refuses with [`CodecError::UnknownFormat`]
//! instead of decoding garbage, and records written in an older format keep decoding forever.
//!
//! | byte | written by | body |
//! |------|------------|------|
//! | [`CODEC_FORMAT_V1`] = 1 | [`encode_compact`] (and every payload before format 2) | bincode 2, serde mode, little-endian, fixed-width integers: positional |
//! | [`CODEC_FORMAT_V2`] = 2 | [`encode`] (every new journal payload) | MessagePack (rmp-serde), structs as maps keyed by field name, enum variants by name |
//!
//! Why two: bincode is positional, so adding a field to a stored event struct (even an
//! `Option` with `#[serde(default)]`) made every record holding that event undecodable.
//! Format 2 names every field and variant, so the evolution rules for events are:
//! - adding an `Option` field, or any field with `#[serde(default)]`, never breaks loading;
//! - removing a field is tolerated (a stored field nobody reads is skipped);
//! - variants may be added and reordered (they are stored by name);
//! - only a rename or a change of meaning or type needs a new `event_version` and an upcaster
//!   in [`crate::Aggregate::decode_event`].
//!
//! [`decode`] reads both formats, so format-1 records (old journals, the committed fixtures)
//! load as before.
//!
//! Snapshot states use [`encode_compact`] (format 1): a snapshot is a cache carrying its
//! state schema version, and one that no longer decodes is skipped in favour of replay, so it
//! gains nothing from field names, while bincode is several times smaller and faster there
//! (docs/design.md, "Payload codec", has the figures).
//!
//! Both formats are not human-readable for serde (`is_human_readable() == false`): [`Money`]
//! is its `i64` of minor units, a uuid its 16 bytes.
//!
//! Types that go through this codec must be plain serde types: externally tagged enums (the
//! serde default), no `#[serde(untagged)]`, `flatten` or `skip_serializing_if` (format 1
//! cannot read them back), and no `serde_json::Value` (bincode is not self-describing).
//!
//! [`Money`]: crate::Money

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Format 1: bincode 2, positional. Still written by [`encode_compact`]; always read.
pub const CODEC_FORMAT_V1: u8 = 1;
/// Format 2: MessagePack with named fields and variants. What [`encode`] writes.
pub const CODEC_FORMAT_V2: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("empty buffer: no codec format byte")]
    Empty,
    #[error(
        "unknown codec format {0} (this build reads formats {CODEC_FORMAT_V1} and {CODEC_FORMAT_V2})"
    )]
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

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

/// Encodes `value` as `[CODEC_FORMAT_V2] ++ msgpack(value)`, structs as maps keyed by field
/// name: the self-describing form every journal payload is written in.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(CODEC_FORMAT_V2);
    // Writing into a Vec cannot fail on I/O; rmp-serde fails only for a `Serialize` impl that
    // returns an error or a sequence of unknown length, both programmer errors in the type.
    let mut serializer = rmp_serde::Serializer::new(&mut out).with_struct_map();
    value
        .serialize(&mut serializer)
        .unwrap_or_else(|e| panic!("codec: value is not MessagePack-encodable: {e}"));
    out
}

/// Encodes `value` as `[CODEC_FORMAT_V1] ++ bincode(value)`: positional and compact.
///
/// For values whose shape is versioned elsewhere and that may be thrown away when it changes:
/// snapshot states (they carry `Aggregate::STATE_SCHEMA_VERSION` and are skipped when stale).
/// Also how format-1 records are produced in tests of old data. Never for journal payloads.
pub fn encode_compact<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![CODEC_FORMAT_V1];
    // Encoding into a Vec cannot fail for the serde types we allow (no maps with
    // unknown length, no `deserialize_any`-only types): a failure is a programmer error.
    let body = bincode::serde::encode_to_vec(value, bincode_config())
        .unwrap_or_else(|e| panic!("codec: value is not bincode-encodable: {e}"));
    out.extend_from_slice(&body);
    out
}

/// Decodes bytes written by [`encode`] or [`encode_compact`] (or any earlier build), refusing
/// an unknown format byte and bytes left over after the value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match format {
        CODEC_FORMAT_V1 => {
            let (value, used) = bincode::serde::decode_from_slice::<T, _>(body, bincode_config())
                .map_err(|e| CodecError::Decode(e.to_string()))?;
            if used != body.len() {
                return Err(CodecError::TrailingBytes(body.len() - used));
            }
            Ok(value)
        }
        CODEC_FORMAT_V2 => {
            // Strings and field names are read borrowed from `body` (no copy into a buffer
            // per string, as through `io::Read`). That reader does not tell where the value
            // ended, so the end is checked by reading one more value: it must find none.
            let mut deserializer = rmp_serde::Deserializer::from_read_ref(body);
            let value =
                T::deserialize(&mut deserializer).map_err(|e| CodecError::Decode(e.to_string()))?;
            match serde::de::IgnoredAny::deserialize(&mut deserializer) {
                Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    Ok(value)
                }
                // Bytes after the value: count them with the reader that says where it
                // stopped (an error path, so its cost does not matter).
                _ => {
                    let mut rest = body;
                    let mut counting = rmp_serde::Deserializer::new(&mut rest);
                    serde::de::IgnoredAny::deserialize(&mut counting)
                        .map_err(|e| CodecError::Decode(e.to_string()))?;
                    Err(CodecError::TrailingBytes(rest.len()))
                }
            }
        }
        other => Err(CodecError::UnknownFormat(other)),
    }
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
        for bytes in [encode(&v), encode_compact(&v)] {
            assert_eq!(decode::<E>(&bytes).unwrap(), v);
            let mut bad = bytes.clone();
            bad[0] = 9;
            assert_eq!(decode::<E>(&bad), Err(CodecError::UnknownFormat(9)));
        }
        assert_eq!(encode(&v)[0], CODEC_FORMAT_V2);
        assert_eq!(encode_compact(&v)[0], CODEC_FORMAT_V1);
        assert_eq!(decode::<E>(&[]), Err(CodecError::Empty));
        for mut long in [encode(&E::B(None)), encode_compact(&E::B(None))] {
            long.push(0);
            assert_eq!(decode::<E>(&long), Err(CodecError::TrailingBytes(1)));
        }
        // Format 2's borrowing reader finds the end by reading on: bytes after the value that
        // are not a value (0xc1 is never used in MessagePack) or a whole second value are
        // trailing bytes, counted.
        for tail in [&[0xc1][..], &[0xc1, 0x00], &[0x92, 0x01, 0x02]] {
            let mut long = encode(&v);
            long.extend_from_slice(tail);
            assert_eq!(
                decode::<E>(&long),
                Err(CodecError::TrailingBytes(tail.len()))
            );
        }
    }

    /// Format 1 as builds before format 2 wrote it, pinned byte for byte: old journals hold
    /// these bytes and must keep loading.
    #[test]
    fn format_1_bytes_pinned_in_the_test_still_decode() {
        let stored: &[u8] = &[
            0x01, // format 1
            0x00, 0x00, 0x00, 0x00, // variant 0 (u32 LE): A
            0x07, 0, 0, 0, 0, 0, 0, 0, // x: u64 LE
            0x02, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', // s: u64 LE length + UTF-8
        ];
        let v = E::A {
            x: 7,
            s: "hi".into(),
        };
        assert_eq!(decode::<E>(stored).unwrap(), v);
        assert_eq!(encode_compact(&v), stored, "format 1 changed its bytes");
    }

    /// Format 2 pinned too: named fields and variants, as docs/design.md describes.
    #[test]
    fn format_2_names_fields_and_variants() {
        let v = E::A {
            x: 7,
            s: "hi".into(),
        };
        let expected: &[u8] = &[
            0x02, // format 2
            0x81, 0xa1, b'A', // map of 1: variant "A"
            0x82, // map of 2 fields
            0xa1, b'x', 0x07, // "x": 7
            0xa1, b's', 0xa2, b'h', b'i', // "s": "hi"
        ];
        assert_eq!(encode(&v), expected);
        assert_eq!(decode::<E>(expected).unwrap(), v);
    }
}
