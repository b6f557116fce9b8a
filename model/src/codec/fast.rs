//! A lean reader of codec format 2 (MessagePack as `codec::encode` writes it), for the hot
//! path of replay: it decodes the common shapes straight from the slice and gives up
//! ([`GiveUp`]) on anything else — an extension type, a 128-bit integer, an enum written as
//! an array, an identifier its visitor refuses as bytes, any error at all — after which
//! `codec::decode` decodes the same bytes with rmp-serde, whose result (value or error) is
//! then the answer. So this reader never decides an error and never accepts bytes rmp-serde
//! would refuse for what it does accept: it makes the calls to the visitor rmp-serde makes
//! for the same bytes (the same `visit_*` per marker, borrowed strings and bytes, the same
//! checks of lengths left over), with two shortcuts rmp-serde's generic reader cannot take:
//!
//! - no reader state per value (a marker kept between calls, an `io::Read` adapter): one
//!   slice cursor;
//! - identifiers (field and variant names) go to the visitor as bytes, not through
//!   `str::from_utf8` first: a derived identifier visitor compares bytes with bytes, and
//!   rmp-serde itself hands a name that is not UTF-8 to the same `visit_borrowed_bytes`.
//!   (Names were a fifth of replay's instructions, validated one short string at a time.)

use serde::de::{self, DeserializeSeed, Visitor};
use std::fmt;

/// Why the fast reader stopped: never shown, the caller decodes again with rmp-serde.
#[derive(Debug)]
pub(super) struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not decoded by the fast reader")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

type Result<T> = std::result::Result<T, GiveUp>;

/// Nesting deeper than this is left to rmp-serde (and its own depth limit).
const DEPTH_MAX: u32 = 64;

/// Decodes one value from the whole of `bytes`: bytes left over are a give-up too.
pub(super) fn decode<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    let mut reader = Reader {
        input: bytes,
        depth: 0,
    };
    let value = T::deserialize(&mut reader)?;
    if reader.input.is_empty() {
        Ok(value)
    } else {
        Err(GiveUp)
    }
}

struct Reader<'de> {
    input: &'de [u8],
    depth: u32,
}

impl<'de> Reader<'de> {
    fn peek(&self) -> Result<u8> {
        self.input.first().copied().ok_or(GiveUp)
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if self.input.len() < n {
            return Err(GiveUp);
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// The length of a str or bin whose marker was `marker`, `None` for another marker.
    fn data_len(&mut self, marker: u8) -> Result<Option<usize>> {
        Ok(Some(match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 | 0xc4 => usize::from(self.byte()?),
            0xda | 0xc5 => usize::from(u16::from_be_bytes(self.be()?)),
            0xdb | 0xc6 => u32::from_be_bytes(self.be()?) as usize,
            _ => return Ok(None),
        }))
    }

    /// The entry count of an array or map whose marker was `marker`.
    fn container_len(&mut self, marker: u8) -> Result<usize> {
        Ok(match marker {
            0x80..=0x8f => usize::from(marker & 0x0f),
            0x90..=0x9f => usize::from(marker & 0x0f),
            0xdc | 0xde => usize::from(u16::from_be_bytes(self.be()?)),
            0xdd | 0xdf => u32::from_be_bytes(self.be()?) as usize,
            _ => return Err(GiveUp),
        })
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth >= DEPTH_MAX {
            return Err(GiveUp);
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    /// rmp-serde's `any_inner`: one value, its marker deciding the visit. `allow_bytes =
    /// false` (a seq, tuple or struct was asked for) leaves a bin to rmp-serde.
    fn any<V: Visitor<'de>>(&mut self, visitor: V, allow_bytes: bool) -> Result<V::Value> {
        let marker = self.byte()?;
        match marker {
            0x00..=0x7f => visitor.visit_u8(marker),
            0xe0..=0xff => visitor.visit_i8(marker as i8),
            0xc0 => visitor.visit_unit(),
            0xc2 => visitor.visit_bool(false),
            0xc3 => visitor.visit_bool(true),
            0xcc => visitor.visit_u8(self.byte()?),
            0xcd => visitor.visit_u16(u16::from_be_bytes(self.be()?)),
            0xce => visitor.visit_u32(u32::from_be_bytes(self.be()?)),
            0xcf => visitor.visit_u64(u64::from_be_bytes(self.be()?)),
            0xd0 => visitor.visit_i8(self.byte()? as i8),
            0xd1 => visitor.visit_i16(i16::from_be_bytes(self.be()?)),
            0xd2 => visitor.visit_i32(i32::from_be_bytes(self.be()?)),
            0xd3 => visitor.visit_i64(i64::from_be_bytes(self.be()?)),
            0xca => visitor.visit_f32(f32::from_be_bytes(self.be()?)),
            0xcb => visitor.visit_f64(f64::from_be_bytes(self.be()?)),
            0xa0..=0xbf | 0xd9..=0xdb => {
                let len = self.data_len(marker)?.ok_or(GiveUp)?;
                let data = self.take(len)?;
                // Not UTF-8: rmp-serde tries the bytes with the visitor; left to it.
                let text = std::str::from_utf8(data).map_err(|_| GiveUp)?;
                visitor.visit_borrowed_str(text)
            }
            0xc4..=0xc6 if allow_bytes => {
                let len = self.data_len(marker)?.ok_or(GiveUp)?;
                visitor.visit_borrowed_bytes(self.take(len)?)
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                let len = self.container_len(marker)?;
                self.nested(|r| {
                    let mut seq = Counted {
                        reader: r,
                        left: len,
                    };
                    let value = visitor.visit_seq(&mut seq)?;
                    // Elements the visitor did not take: rmp-serde's `LengthMismatch`.
                    if seq.left == 0 {
                        Ok(value)
                    } else {
                        Err(GiveUp)
                    }
                })
            }
            0x80..=0x8f | 0xde | 0xdf => {
                let len = self.container_len(marker)?;
                self.nested(|r| {
                    let mut map = Counted {
                        reader: r,
                        left: len,
                    };
                    let value = visitor.visit_map(&mut map)?;
                    if map.left == 0 {
                        Ok(value)
                    } else {
                        Err(GiveUp)
                    }
                })
            }
            // Extension types, a bin where a sequence was asked for, 0xc1.
            _ => Err(GiveUp),
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = GiveUp;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.any(visitor, true)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.peek()? == 0xc0 {
            self.input = &self.input[1..];
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.peek()? {
            // `{ variant: value }`, how every variant with data is written.
            0x81 => {
                self.input = &self.input[1..];
                self.nested(|r| visitor.visit_enum(Variant { reader: r }))
            }
            // A unit variant: its name.
            0xa0..=0xbf | 0xd9..=0xdb => visitor.visit_enum(UnitVariant { reader: self }),
            _ => Err(GiveUp),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        // rmp-serde's extension-type wrapper is left to it.
        if name == "_ExtStruct" {
            return Err(GiveUp);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        // rmp-serde writes a unit struct as `[]` and reads `nil` or `[]` as one.
        match self.peek()? {
            0xc0 | 0x90 => {
                self.input = &self.input[1..];
                visitor.visit_unit()
            }
            _ => self.any(visitor, true),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let marker = self.byte()?;
        match self.data_len(marker)? {
            // A str marker: the name as bytes (see the module docs).
            Some(len) if !(0xc4..=0xc6).contains(&marker) => {
                visitor.visit_borrowed_bytes(self.take(len)?)
            }
            _ => Err(GiveUp),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.any(visitor, false)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.any(visitor, false)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.any(visitor, false)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.any(visitor, false)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string
        bytes byte_buf unit map ignored_any
    }
}

/// The elements of an array, or the entries of a map, with how many are left.
struct Counted<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = GiveUp;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// A variant written as `{ name: value }` (the map marker already read).
struct Variant<'a, 'de> {
    reader: &'a mut Reader<'de>,
}

impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
    type Error = GiveUp;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let name = seed.deserialize(&mut *self.reader)?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = GiveUp;

    fn unit_variant(self) -> Result<()> {
        // Not how a unit variant is written (it is its name alone): left to rmp-serde.
        Err(GiveUp)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(&mut *self.reader)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.reader.any(visitor, false)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.reader.any(visitor, false)
    }
}

/// A unit variant written as its name.
struct UnitVariant<'a, 'de> {
    reader: &'a mut Reader<'de>,
}

impl<'a, 'de> de::EnumAccess<'de> for UnitVariant<'a, 'de> {
    type Error = GiveUp;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let name = seed.deserialize(&mut *self.reader)?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_, 'de> {
    type Error = GiveUp;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value> {
        Err(GiveUp)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value> {
        Err(GiveUp)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value> {
        Err(GiveUp)
    }
}

#[cfg(test)]
mod tests {
    //! The fast reader against rmp-serde on the same bytes: on whole values of every shape
    //! the codec writes, and on each of them damaged at every byte (three flips) and cut at
    //! every length. Where the fast reader decodes, rmp-serde decodes the same value; where
    //! rmp-serde refuses, the fast reader gives up (and `codec::decode` then answers with
    //! rmp-serde's error).
    use super::*;
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Id(u64);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Plain,
        Wrapped(Inner),
        Pair(i32, String),
        Named { a: Option<i64>, b: Vec<u8> },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Inner {
        id: uuid::Uuid,
        #[serde(with = "crate::codec::timestamp")]
        at: DateTime<Utc>,
        #[serde(with = "crate::codec::timestamp::option")]
        maybe_at: Option<DateTime<Utc>>,
        text: String,
        flag: bool,
        ratio: f64,
        small: u8,
        big: u64,
        negative: i64,
        #[serde(with = "serde_bytes_like")]
        raw: Vec<u8>,
        tags: BTreeMap<String, i32>,
        unit: Unit,
        id2: Id,
        nested: Option<Box<Inner>>,
        kinds: Vec<Kind>,
        tuple: (u16, i8),
    }

    /// A `Vec<u8>` as MessagePack bin (as a uuid is), not as an array.
    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
            }
            d.deserialize_bytes(V)
        }
    }

    fn sample(depth: u32) -> Inner {
        let at = DateTime::from_timestamp(1_764_000_000, 123_456_789).unwrap();
        Inner {
            id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            at,
            maybe_at: (depth % 2 == 0).then_some(at),
            text: "héllo, wörld".repeat(depth as usize + 1),
            flag: depth % 2 == 1,
            ratio: -1.5,
            small: 200,
            big: u64::MAX - u64::from(depth),
            negative: -(1 << 40),
            raw: vec![0, 1, 2, 0xff],
            tags: [("a".to_string(), -1), ("bb".to_string(), 70_000)].into(),
            unit: Unit,
            id2: Id(300),
            nested: (depth > 0).then(|| Box::new(sample(depth - 1))),
            kinds: vec![
                Kind::Plain,
                Kind::Pair(-40, "x".into()),
                Kind::Named {
                    a: Some(-3),
                    b: vec![9; 20],
                },
                Kind::Named { a: None, b: vec![] },
            ],
            tuple: (65_000, -100),
        }
    }

    /// rmp-serde alone, as `codec::decode` runs it, the whole input taken.
    fn by_rmp_serde<T: de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
        let mut rest = bytes;
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        let value = T::deserialize(&mut de).ok()?;
        rest.is_empty().then_some(value)
    }

    fn agree<T: de::DeserializeOwned + PartialEq + fmt::Debug>(bytes: &[u8], what: &str) {
        let fast = decode::<T>(bytes).ok();
        if let Some(fast) = fast {
            assert_eq!(Some(fast), by_rmp_serde::<T>(bytes), "{what}");
        }
    }

    #[test]
    fn decodes_what_rmp_serde_decodes_and_never_more() {
        let values = vec![
            Kind::Wrapped(sample(0)),
            Kind::Wrapped(sample(2)),
            Kind::Plain,
            Kind::Pair(7, String::new()),
        ];
        for value in &values {
            let bytes = &crate::codec::encode(value)[1..];
            assert_eq!(decode::<Kind>(bytes).ok().as_ref(), Some(value));
            for len in 0..bytes.len() {
                agree::<Kind>(&bytes[..len], &format!("cut at {len}"));
            }
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x10, 0x80] {
                    let mut damaged = bytes.to_vec();
                    damaged[at] ^= flip;
                    agree::<Kind>(&damaged, &format!("byte {at} ^ {flip:#x}"));
                }
            }
            let mut long = bytes.to_vec();
            long.push(0xc0);
            assert!(decode::<Kind>(&long).is_err(), "trailing bytes");
        }
        // Shapes the codec does not write are left to rmp-serde: a variant by index, an
        // extension type, an enum as an array.
        assert!(decode::<Kind>(&[0x00]).is_err());
        assert!(decode::<u8>(&[0xd4, 0x01, 0x02]).is_err());
        assert!(decode::<Kind>(&[0x91, 0xa5, b'P', b'l', b'a', b'i', b'n']).is_err());
    }
}
