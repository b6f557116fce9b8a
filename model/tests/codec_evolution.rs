//! Events survive schema change (issue 6, section 3): what the payload codec promises when a
//! stored event's type evolves.
//!
//! Proves that, for records written by `codec::encode` (format 2, MessagePack with named
//! fields and variants):
//! - an event stored with the old shape loads after an `Option` field and a
//!   `#[serde(default)]` field are added (absent means `None` / the default);
//! - an event stored with a field that was later removed loads (the stored field is skipped);
//! - variants are found by name, so adding or reordering variants keeps old records loading;
//! - `Money` is its integer minor units (not the JSON decimal string), chrono times and uuids
//!   round-trip, externally tagged enums (unit, newtype and struct variants) round-trip;
//!
//! and, for the codec as a whole:
//! - format-1 (bincode) bytes pinned in this file still decode, and why format 2 exists: the
//!   same positional bytes no longer decode once a field is added;
//! - an unknown format byte, an empty buffer and trailing bytes are refused with typed errors.

use chrono::{DateTime, TimeZone, Utc};
use evershard_model::codec::{self, CODEC_FORMAT_V1, CODEC_FORMAT_V2};
use evershard_model::{CodecError, Currency, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The shape the event had when the journal stored it.
mod stored {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct StockReserved {
        pub reservation_id: Uuid,
        pub quantity: i64,
        pub amount: Money,
        pub currency: Currency,
        pub reserved_at: DateTime<Utc>,
        /// Removed in [`removed::StockReserved`].
        pub legacy_note: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum StockEvent {
        StockReserved(StockReserved),
        StockReleased { reservation_id: Uuid },
        Cleared,
    }
}

/// Today's shape: two fields added, the variants reordered and one added.
mod added {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct StockReserved {
        pub reservation_id: Uuid,
        pub quantity: i64,
        pub amount: Money,
        pub currency: Currency,
        pub reserved_at: DateTime<Utc>,
        pub legacy_note: String,
        /// Added: an `Option` (serde reads an absent one as `None` even without a default).
        pub order_id: Option<Uuid>,
        /// Added with `#[serde(default)]`.
        #[serde(default)]
        pub priority: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum StockEvent {
        Cleared,
        StockExpired(Uuid),
        StockReleased { reservation_id: Uuid },
        StockReserved(StockReserved),
    }
}

/// Today's shape with `legacy_note` removed.
mod removed {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct StockReserved {
        pub reservation_id: Uuid,
        pub quantity: i64,
        pub amount: Money,
        pub currency: Currency,
        pub reserved_at: DateTime<Utc>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum StockEvent {
        StockReserved(StockReserved),
        StockReleased { reservation_id: Uuid },
        Cleared,
    }
}

fn reserved_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap() + chrono::Duration::microseconds(6)
}

fn stored_event() -> stored::StockEvent {
    stored::StockEvent::StockReserved(stored::StockReserved {
        reservation_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        quantity: 3,
        amount: Money::from_minor(123_456),
        currency: Currency::EUR,
        reserved_at: reserved_at(),
        legacy_note: "old".into(),
    })
}

#[test]
fn an_event_stored_with_the_old_shape_loads_after_fields_are_added() {
    let bytes = codec::encode(&stored_event());
    assert_eq!(bytes[0], CODEC_FORMAT_V2);
    let loaded: added::StockEvent = codec::decode(&bytes).unwrap();
    assert_eq!(
        loaded,
        added::StockEvent::StockReserved(added::StockReserved {
            reservation_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            quantity: 3,
            amount: Money::from_minor(123_456),
            currency: Currency::EUR,
            reserved_at: reserved_at(),
            legacy_note: "old".into(),
            order_id: None,
            priority: 0,
        })
    );
    // Variants are found by name, not by index: `StockReleased` moved from 1 to 2.
    let released = stored::StockEvent::StockReleased {
        reservation_id: Uuid::from_u128(9),
    };
    assert_eq!(
        codec::decode::<added::StockEvent>(&codec::encode(&released)).unwrap(),
        added::StockEvent::StockReleased {
            reservation_id: Uuid::from_u128(9)
        }
    );
    assert_eq!(
        codec::decode::<added::StockEvent>(&codec::encode(&stored::StockEvent::Cleared)).unwrap(),
        added::StockEvent::Cleared
    );
}

#[test]
fn an_event_stored_with_a_field_since_removed_loads() {
    let loaded: removed::StockEvent = codec::decode(&codec::encode(&stored_event())).unwrap();
    let removed::StockEvent::StockReserved(reserved) = loaded else {
        panic!("{loaded:?}")
    };
    assert_eq!(reserved.quantity, 3);
    assert_eq!(reserved.amount, Money::from_minor(123_456));
    assert_eq!(reserved.reserved_at, reserved_at());
}

#[test]
fn money_times_uuids_and_enums_round_trip_in_format_2() {
    // Money is not the JSON decimal string: rmp-serde is not human-readable, so it is the
    // integer minor units, as in format 1 (in its smallest MessagePack form: 0xce = uint32).
    assert_eq!(
        codec::encode(&Money::from_minor(123_456)),
        [CODEC_FORMAT_V2, 0xce, 0x00, 0x01, 0xe2, 0x40]
    );
    assert_eq!(
        codec::decode::<Money>(&codec::encode(&Money::from_minor(-5))).unwrap(),
        Money::from_minor(-5)
    );
    // A uuid is its 16 bytes (bin 8), not its 36-character text.
    let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let bytes = codec::encode(&id);
    assert_eq!(&bytes[..3], [CODEC_FORMAT_V2, 0xc4, 16]);
    assert_eq!(codec::decode::<Uuid>(&bytes).unwrap(), id);
    assert_eq!(
        codec::decode::<DateTime<Utc>>(&codec::encode(&reserved_at())).unwrap(),
        reserved_at()
    );
    let events = [
        stored_event(),
        stored::StockEvent::StockReleased { reservation_id: id },
        stored::StockEvent::Cleared,
    ];
    for event in events {
        assert_eq!(
            codec::decode::<stored::StockEvent>(&codec::encode(&event)).unwrap(),
            event
        );
    }
    for currency in [Currency::USD, Currency::EUR, Currency::RUB] {
        assert_eq!(
            codec::decode::<Currency>(&codec::encode(&currency)).unwrap(),
            currency
        );
    }
}

/// `stored_event()` as a build before format 2 wrote it: format 1, bincode 2 (serde mode,
/// little-endian, fixed-width integers). Pinned here byte for byte; never regenerate.
const STORED_EVENT_FORMAT_1: &str = concat!(
    "01",                                                     // codec format 1
    "00000000",                                               // variant 0 (u32 LE): StockReserved
    "1000000000000000",                                       // reservation_id: u64 LE length 16
    "0123456789abcdef0123456789abcdef",                       //   + its 16 bytes
    "0300000000000000",                                       // quantity: i64 LE
    "40e2010000000000",                                       // amount: Money as i64 LE minor units
    "01000000",                                               // currency: variant 1 (u32 LE): EUR
    "1b00000000000000",                                       // reserved_at: u64 LE length 27
    "323032362d30312d30325430333a30343a30352e3030303030365a", // "2026-01-02T03:04:05.000006Z"
    "0300000000000000",                                       // legacy_note: u64 LE length 3
    "6f6c64",                                                 //   + "old"
);

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn format_1_bytes_still_decode() {
    let bytes = unhex(STORED_EVENT_FORMAT_1);
    assert_eq!(bytes[0], CODEC_FORMAT_V1);
    assert_eq!(
        codec::decode::<stored::StockEvent>(&bytes).unwrap(),
        stored_event()
    );
    assert_eq!(
        codec::encode_compact(&stored_event()),
        bytes,
        "format 1 changed its bytes"
    );
}

#[test]
fn format_1_is_positional_which_is_why_new_writes_use_format_2() {
    // The motivating failure: a positional record does not decode once a field is added.
    // The struct alone: bincode runs out of bytes where it expects `order_id`.
    let stored::StockEvent::StockReserved(reserved) = stored_event() else {
        unreachable!()
    };
    match codec::decode::<added::StockReserved>(&codec::encode_compact(&reserved)) {
        Err(CodecError::Decode(message)) => assert!(message.contains("UnexpectedEnd"), "{message}"),
        other => panic!("format 1 with an added field: {other:?}"),
    }
    // The enum, whose variants also moved: variant 0 is now another one. Refused, not misread.
    assert!(codec::decode::<added::StockEvent>(&unhex(STORED_EVENT_FORMAT_1)).is_err());
}

#[test]
fn unknown_formats_empty_buffers_and_trailing_bytes_are_refused() {
    for bytes in [codec::encode(&stored_event()), unhex(STORED_EVENT_FORMAT_1)] {
        let mut unknown = bytes.clone();
        unknown[0] = 3;
        assert_eq!(
            codec::decode::<stored::StockEvent>(&unknown),
            Err(CodecError::UnknownFormat(3))
        );
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0xc0, 0xc0]);
        assert_eq!(
            codec::decode::<stored::StockEvent>(&padded),
            Err(CodecError::TrailingBytes(2))
        );
        let truncated = &bytes[..bytes.len() - 1];
        assert!(matches!(
            codec::decode::<stored::StockEvent>(truncated),
            Err(CodecError::Decode(_))
        ));
    }
    assert_eq!(
        codec::decode::<stored::StockEvent>(&[]),
        Err(CodecError::Empty)
    );
    assert_eq!(
        codec::decode::<stored::StockEvent>(&[0]),
        Err(CodecError::UnknownFormat(0))
    );
}
