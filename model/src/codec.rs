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

mod fast;

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
            // The lean reader first (replay's hot path); whatever it does not decode whole,
            // rmp-serde decodes and decides (value or error), as it always did.
            if let Ok(value) = fast::decode::<T>(body) {
                return Ok(value);
            }
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

/// A `DateTime<Utc>` field stored as chrono stores it (its RFC 3339 text, `…Z`, as
/// `collect_str` writes it: the bytes do not change), read back through a parser for the one
/// shape chrono writes (`YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z`), which is several
/// times cheaper than chrono's general RFC 3339 parser; any other text (another offset, a
/// leap second, a year beyond 9999, text written by hand) goes to chrono's parser, so
/// exactly what chrono accepts is accepted, with the same value. For stored event and state
/// fields: `#[serde(with = "evershard_model::codec::timestamp")]`, and
/// [`timestamp::option`] for an `Option<DateTime<Utc>>`.
pub mod timestamp {
    use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    use serde::{de, Deserializer, Serialize, Serializer};
    use std::fmt;

    /// Writes `time` exactly as chrono's own `Serialize` does.
    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        time.serialize(serializer)
    }

    /// Reads what [`serialize`] (or chrono) wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }

    /// The text of a `DateTime<Utc>`: the common shape parsed here, anything else by chrono.
    pub fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
        match parse_utc_shape(text.as_bytes()) {
            Some(time) => Ok(time),
            None => text
                .parse::<DateTime<FixedOffset>>()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS` and a fraction of 0, 3, 6 or 9 digits, then `Z`; `None` for any
    /// other text or for fields out of range (chrono then decides).
    pub(crate) fn parse_utc_shape(b: &[u8]) -> Option<DateTime<Utc>> {
        let fraction_digits = match b.len() {
            20 => 0,
            24 => 3,
            27 => 6,
            30 => 9,
            _ => return None,
        };
        // Replay parses every stored time (several per event): the fixed positions are read
        // two digits at a time, without a loop or a closure per field.
        let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
        if separators.iter().any(|&(at, c)| b[at] != c) || b[b.len() - 1] != b'Z' {
            return None;
        }
        let nanos = if fraction_digits == 0 {
            0
        } else {
            if b[19] != b'.' {
                return None;
            }
            let mut n = 0u32;
            for &c in &b[20..20 + fraction_digits] {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    return None;
                }
                n = n * 10 + u32::from(d);
            }
            n * 10u32.pow(9 - fraction_digits as u32)
        };
        let year = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
        let date = NaiveDate::from_ymd_opt(
            i32::try_from(year).ok()?,
            two_digits(b, 5)?,
            two_digits(b, 8)?,
        )?;
        // A leap second (`:60`) is not built here: `from_hms_nano_opt` refuses it and chrono's
        // parser takes it.
        let time = NaiveTime::from_hms_nano_opt(
            two_digits(b, 11)?,
            two_digits(b, 14)?,
            two_digits(b, 17)?,
            nanos,
        )?;
        Some(NaiveDateTime::new(date, time).and_utc())
    }

    /// The number written by the two ASCII digits at `b[at..at + 2]`; `None` if either is
    /// not a digit.
    #[inline(always)]
    fn two_digits(b: &[u8], at: usize) -> Option<u32> {
        let (tens, ones) = (b[at].wrapping_sub(b'0'), b[at + 1].wrapping_sub(b'0'));
        (tens <= 9 && ones <= 9).then(|| u32::from(tens) * 10 + u32::from(ones))
    }

    struct TextVisitor;

    impl de::Visitor<'_> for TextVisitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("an RFC 3339 formatted date and time string")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<DateTime<Utc>, E> {
            parse(value).map_err(E::custom)
        }
    }

    /// [`timestamp`](self) for an `Option<DateTime<Utc>>`.
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// Writes `time` exactly as chrono's own `Serialize` does for the `Option`.
        pub fn serialize<S: Serializer>(
            time: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            time.serialize(serializer)
        }

        /// Reads what [`serialize`] wrote.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            #[serde(transparent)]
            struct Text(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Text>::deserialize(deserializer)?.map(|Text(t)| t))
        }
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

    /// The timestamp reader gives chrono's verdict and value on chrono's own output (every
    /// fraction width, a wide range of instants) and on texts outside its fast shape, and its
    /// fields encode to the very bytes of plain chrono fields in both formats.
    #[test]
    fn timestamps_read_as_chrono_reads_them() {
        use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
        let seed: u64 = 0x7157_a3f0;
        println!("seed {seed:#x}");
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let chrono_parse = |t: &str| {
            t.parse::<DateTime<chrono::FixedOffset>>()
                .map(|t| t.with_timezone(&Utc))
        };
        let min = DateTime::<Utc>::MIN_UTC.timestamp();
        let max = DateTime::<Utc>::MAX_UTC.timestamp();
        for i in 0..20_000u64 {
            let secs = match i % 3 {
                // Years 0000..=9999, where the fast shape applies, and chrono's whole range.
                0 => (next() % 253_402_300_800) as i64 - 62_167_219_200,
                1 => 1_767_225_600 + (next() % 100_000_000) as i64,
                _ => min + (next() % (max - min) as u64) as i64,
            };
            let nanos = match i % 4 {
                0 => 0,
                1 => (next() % 1_000) as u32 * 1_000_000,
                2 => (next() % 1_000_000) as u32 * 1_000,
                _ => (next() % 1_000_000_000) as u32,
            };
            let time = Utc.timestamp_opt(secs, nanos).unwrap();
            let text = time.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            assert_eq!(timestamp::parse(&text), Ok(time), "seed {seed:#x}: {text}");
            if (0..=9999).contains(&chrono::Datelike::year(&time)) {
                assert!(
                    timestamp::parse_utc_shape(text.as_bytes()).is_some(),
                    "{text}"
                );
            }
        }
        for text in [
            "2026-11-26T14:12:56+01:00",
            "2026-11-26T14:12:56.5Z",
            "2026-11-26T14:12:56.12345Z",
            "2026-11-26t14:12:56z",
            "2026-11-26 14:12:56Z",
            "2016-12-31T23:59:60Z",
            "2016-12-31T23:59:60.5Z",
            "+10000-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T14:12:5xZ",
            "2026-11-26T14:12:56.1234567890Z",
            "",
            "not a time",
        ] {
            assert_eq!(timestamp::parse(text), chrono_parse(text), "{text}");
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Plain {
            at: DateTime<Utc>,
            maybe: Option<DateTime<Utc>>,
            never: Option<DateTime<Utc>>,
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Fast {
            #[serde(with = "timestamp")]
            at: DateTime<Utc>,
            #[serde(with = "timestamp::option")]
            maybe: Option<DateTime<Utc>>,
            #[serde(with = "timestamp::option")]
            never: Option<DateTime<Utc>>,
        }
        let at = Utc.timestamp_micros(1_767_225_600_123_456).unwrap();
        let plain = Plain {
            at,
            maybe: Some(at),
            never: None,
        };
        let fast = Fast {
            at,
            maybe: Some(at),
            never: None,
        };
        for (a, b) in [
            (encode(&plain), encode(&fast)),
            (encode_compact(&plain), encode_compact(&fast)),
        ] {
            assert_eq!(a, b, "the stored bytes changed");
            assert_eq!(decode::<Fast>(&a).unwrap(), fast);
        }
        let json = serde_json::to_string(&fast).unwrap();
        assert_eq!(json, serde_json::to_string(&plain).unwrap());
        assert_eq!(serde_json::from_str::<Fast>(&json).unwrap(), fast);
    }
}
