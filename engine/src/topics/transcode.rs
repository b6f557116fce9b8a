//! A stored payload's JSON written straight from its MessagePack bytes, without the typed
//! decode, where that gives the bytes the typed path gives.
//!
//! The typed path (`TopicCatalog::payload_writer`: decode the event, then
//! `DomainEvent::write_payload_json`) was about half of a rendered message's cost on the
//! catch-up read: MessagePack decoded by field name into the event struct, each timestamp
//! parsed by chrono, then written back out as JSON with each timestamp formatted again. For
//! a derived event the JSON is the payload struct's `serde_json::to_value` — its fields sorted
//! by name — and most of its leaves are stored as they are written: strings (timestamps are
//! stored as chrono's RFC 3339 text, the very text the JSON carries), integers, booleans,
//! floats, nulls, arrays, maps; a UUID is its 16 bytes in MessagePack and its hyphenated text
//! in JSON. [`Transcoder`] walks the stored bytes and writes that JSON: the outer
//! `{"Variant": payload}` map of the event enum unwrapped, every map's members sorted by key.
//!
//! Where the members go depends on the shape alone (below), so the walk is done in full —
//! maps sorted, keys escaped — once per shape, into a **template**: the JSON with a
//! placeholder for each leaf (a string, number, UUID, boolean or null). Every later payload
//! of that shape is one pass over its bytes that writes its leaves' JSON in stored order,
//! then the template filled in with them.
//!
//! That is not the typed JSON for every type: [`evershard_model::Money`] is stored as minor
//! units and written as a decimal string; a custom `payload_json` may drop or add fields; an
//! upcaster may change the shape; a field removed from the struct is still in old bytes.
//! So the transcoder trusts nothing it has not seen agree: each payload's **shape** — its
//! aggregate type, event type and version, and the tree of its MessagePack kinds with every
//! map key spelled out, a non-finite float marked as the null it becomes (string contents
//! and numbers left out) — is compared once with the typed path, and the verdict kept for
//! that exact shape. A shape whose transcoded JSON
//! differed from the typed JSON is rendered by the typed path from then on; so is anything
//! the transcoder does not handle (format 1 payloads, MessagePack extensions, binary values
//! other than 16 bytes, non-string map keys, duplicate keys, nesting deeper than
//! [`TRANSCODE_DEPTH_MAX`]) and every shape once [`SHAPES_CACHED_MAX`] are known.
//!
//! What this assumes: within one shape, a leaf's JSON is the same function of its stored value
//! on both paths — true of derived serde types, of `String`, the integers, `bool`, floats,
//! `Uuid` and chrono's types (their `Serialize` depends on the serializer's kind, not on the
//! value). A hand-written `Serialize` or `payload_json` whose output depends on a string's or
//! number's *value* beyond its kind (say, one that rewrites some strings and not others)
//! would defeat the check; none of the registered aggregates has one (`tests/topic_contracts.rs`
//! checks every aggregate's published payloads against its `payload_json`). And the stored
//! bytes are taken as `codec::encode` wrote them from the type: a timestamp's text is copied
//! as stored (chrono's own text, which the typed path would write again), and a value the
//! typed decode would refuse in a shape already verified (bytes written by hand, not by the
//! type) is published as stored rather than failing the read.

use super::WritePayloadFn;
use evershard_model::codec::CODEC_FORMAT_V2;
use evershard_model::CodecError;

/// Nesting deeper than this goes to the typed path (the walk recurses).
pub(crate) const TRANSCODE_DEPTH_MAX: usize = 32;

/// Shapes whose verdict one transcoder keeps; a shape seen after that takes the typed path.
/// The seeds' events have a handful of shapes each (an `Option` set or not, a list's length).
pub(crate) const SHAPES_CACHED_MAX: usize = 256;

/// In a template, a leaf's place: this byte, then the leaf's index (`u32`, little-endian).
/// It never occurs in JSON text (UTF-8 has no byte 0xFF).
const LEAF: u8 = 0xFF;

/// Why the walk stopped: the payload goes to the typed path, which decides.
struct Unsupported;

/// One map member while its map's template is written: where its key is in the input, where
/// its value is in the template.
#[derive(Clone, Copy)]
struct Member {
    key_start: usize,
    key_end: usize,
    value_start: usize,
    value_end: usize,
}

/// A piece of a template: bytes of its own, or the payload's leaf `i`.
#[derive(Clone, Copy, Debug)]
enum Piece {
    Text { start: u32, end: u32 },
    Leaf(u32),
}

/// What is known of one shape.
struct Known {
    shape: Box<[u8]>,
    /// `None`: the shape's transcoded JSON differed from the typed JSON (typed path).
    template: Option<Template>,
}

struct Template {
    text: Box<[u8]>,
    pieces: Box<[Piece]>,
}

impl Template {
    fn compile(text: &[u8]) -> Template {
        let mut pieces = Vec::new();
        let (mut at, mut start) = (0, 0);
        while at < text.len() {
            if text[at] == LEAF {
                if start < at {
                    pieces.push(Piece::Text {
                        start: start as u32,
                        end: at as u32,
                    });
                }
                let index = u32::from_le_bytes(text[at + 1..at + 5].try_into().expect("4 bytes"));
                pieces.push(Piece::Leaf(index));
                at += 5;
                start = at;
            } else {
                at += 1;
            }
        }
        if start < text.len() {
            pieces.push(Piece::Text {
                start: start as u32,
                end: text.len() as u32,
            });
        }
        Template {
            text: text.into(),
            pieces: pieces.into(),
        }
    }

    /// The JSON: the template's text with `leaves` in their places.
    fn fill(&self, leaves: &[u8], leaf_ends: &[u32], out: &mut Vec<u8>) {
        for piece in self.pieces.iter() {
            match *piece {
                Piece::Text { start, end } => {
                    out.extend_from_slice(&self.text[start as usize..end as usize])
                }
                Piece::Leaf(i) => {
                    let i = i as usize;
                    let start = if i == 0 { 0 } else { leaf_ends[i - 1] as usize };
                    out.extend_from_slice(&leaves[start..leaf_ends[i] as usize]);
                }
            }
        }
    }
}

/// Transcodes payloads for one reader (one per read, or per consumer across its reads: no
/// locking); keeps the shapes' verdicts and templates.
#[derive(Default)]
pub(crate) struct Transcoder {
    /// The current payload's shape.
    shape: Vec<u8>,
    /// Its leaves' JSON, back to back in stored order, and where each ends.
    leaves: Vec<u8>,
    leaf_ends: Vec<u32>,
    /// The template being written (a shape seen for the first time).
    template: Vec<u8>,
    /// Shapes seen.
    known: Vec<Known>,
    /// The members of the maps being written (a stack: a nested map's above its parent's).
    members: Vec<Member>,
    /// A map's written values while its members are put in key order.
    values: Vec<u8>,
    /// The typed JSON while a shape is checked.
    typed: Vec<u8>,
}

impl Transcoder {
    /// Appends the JSON payload of a stored event to `out`: transcoded when its shape is known
    /// to transcode to the typed bytes, else through `typed` (whose error is the answer).
    pub(crate) fn write(
        &mut self,
        typed: WritePayloadFn,
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        if self
            .walk(aggregate_type, event_type, event_version, payload, false)
            .is_err()
        {
            return typed(event_type, event_version, payload, out);
        }
        if let Some(known) = self.known.iter().find(|k| *k.shape == *self.shape) {
            return match &known.template {
                Some(template) => {
                    template.fill(&self.leaves, &self.leaf_ends, out);
                    Ok(())
                }
                None => typed(event_type, event_version, payload, out),
            };
        }
        if self.known.len() >= SHAPES_CACHED_MAX {
            return typed(event_type, event_version, payload, out);
        }
        // A shape not seen before: its template (the walk again, maps sorted), then the
        // payload rendered both ways; the verdict is kept.
        if self
            .walk(aggregate_type, event_type, event_version, payload, true)
            .is_err()
        {
            return typed(event_type, event_version, payload, out);
        }
        self.typed.clear();
        typed(event_type, event_version, payload, &mut self.typed)?;
        let template = Template::compile(&self.template);
        let start = out.len();
        template.fill(&self.leaves, &self.leaf_ends, out);
        let same = out[start..] == self.typed[..];
        if !same {
            out.truncate(start);
            out.extend_from_slice(&self.typed);
        }
        self.known.push(Known {
            shape: self.shape.as_slice().into(),
            template: same.then_some(template),
        });
        Ok(())
    }

    /// Reads `payload`: its shape into `self.shape`, its leaves' JSON into `self.leaves`,
    /// and with `template`, its template into `self.template`.
    fn walk(
        &mut self,
        aggregate_type: &str,
        event_type: &str,
        event_version: &str,
        payload: &[u8],
        template: bool,
    ) -> Result<(), Unsupported> {
        let Some((&CODEC_FORMAT_V2, body)) = payload.split_first() else {
            return Err(Unsupported);
        };
        self.shape.clear();
        self.leaves.clear();
        self.leaf_ends.clear();
        self.template.clear();
        self.members.clear();
        for part in [aggregate_type, event_type, event_version] {
            self.shape.extend_from_slice(part.as_bytes());
            self.shape.push(0);
        }
        let mut input = Input { bytes: body, at: 0 };
        // The event enum, externally tagged: `{"Variant": payload}`; its JSON is the payload's.
        let 1 = input.map_len()? else {
            return Err(Unsupported);
        };
        let (key_start, key_end) = input.str_range()?;
        self.shape.extend_from_slice(&body[key_start..key_end]);
        self.shape.push(0);
        self.value(&mut input, template, 0)?;
        if input.at != body.len() {
            return Err(Unsupported);
        }
        Ok(())
    }

    /// Ends a leaf written into `self.leaves`: its place in the template.
    fn leaf(&mut self, kind: u8, template: bool) {
        self.shape.push(kind);
        if template {
            self.template.push(LEAF);
            let index = self.leaf_ends.len() as u32;
            self.template.extend_from_slice(&index.to_le_bytes());
        }
        self.leaf_ends.push(self.leaves.len() as u32);
    }

    fn int(&mut self, n: i64, template: bool) {
        self.leaves
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.leaf(b'i', template);
    }

    /// A non-finite float is `null` in JSON: a kind of its own in the shape, as a custom
    /// `payload_json` may treat it as the null it becomes (Plant's drops null members).
    fn float(&mut self, f: f64, kind: u8, template: bool) {
        serde_json::to_writer(&mut self.leaves, &f).expect("a float always encodes");
        self.leaf(if f.is_finite() { kind } else { b'n' }, template);
    }

    fn literal(&mut self, text: &[u8], kind: u8, template: bool) {
        self.leaves.extend_from_slice(text);
        self.leaf(kind, template);
    }

    /// One value: its leaves' JSON, its kind into the shape, with `template` its template.
    fn value(
        &mut self,
        input: &mut Input<'_>,
        template: bool,
        depth: usize,
    ) -> Result<(), Unsupported> {
        if depth > TRANSCODE_DEPTH_MAX {
            return Err(Unsupported);
        }
        let marker = input.byte()?;
        match marker {
            0x00..=0x7f => self.int(i64::from(marker), template),
            0xe0..=0xff => self.int(i64::from(marker as i8), template),
            0xc0 => self.literal(b"null", b'n', template),
            0xc2 => self.literal(b"false", b'f', template),
            0xc3 => self.literal(b"true", b't', template),
            0xcc => self.int(i64::from(u8::from_be_bytes(input.take()?)), template),
            0xcd => self.int(i64::from(u16::from_be_bytes(input.take()?)), template),
            0xce => self.int(i64::from(u32::from_be_bytes(input.take()?)), template),
            0xcf => {
                let n = u64::from_be_bytes(input.take()?);
                self.leaves
                    .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                self.leaf(b'i', template);
            }
            0xd0 => self.int(i64::from(i8::from_be_bytes(input.take()?)), template),
            0xd1 => self.int(i64::from(i16::from_be_bytes(input.take()?)), template),
            0xd2 => self.int(i64::from(i32::from_be_bytes(input.take()?)), template),
            0xd3 => self.int(i64::from_be_bytes(input.take()?), template),
            // serde_json's `Value` holds every float as an `f64` (an `f32` widened), and
            // writes a non-finite one as `null`: its writer does both.
            0xca => {
                let f = f32::from_be_bytes(input.take()?);
                self.float(f64::from(f), b'g', template);
            }
            0xcb => {
                let f = f64::from_be_bytes(input.take()?);
                self.float(f, b'd', template);
            }
            0xa0..=0xbf | 0xd9..=0xdb => {
                let len = match marker {
                    0xd9 => usize::from(input.take::<1>()?[0]),
                    0xda => usize::from(u16::from_be_bytes(input.take()?)),
                    0xdb => u32::from_be_bytes(input.take()?) as usize,
                    _ => usize::from(marker & 0x1f),
                };
                let text = std::str::from_utf8(input.slice(len)?).map_err(|_| Unsupported)?;
                evershard_model::json::write_str(&mut self.leaves, text);
                self.leaf(b's', template);
            }
            // A UUID: serde's non-human-readable form is its 16 bytes. Other binary values
            // (`serde_bytes`) are arrays of numbers in JSON: the shape's check sends them to
            // the typed path. Other lengths: not a UUID, left to the typed path at once.
            0xc4 => {
                if input.take::<1>()?[0] != 16 {
                    return Err(Unsupported);
                }
                let id = uuid::Uuid::from_bytes(input.take()?);
                let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
                self.leaves.push(b'"');
                self.leaves
                    .extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
                self.leaves.push(b'"');
                self.leaf(b'u', template);
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                let len = match marker {
                    0xdc => usize::from(u16::from_be_bytes(input.take()?)),
                    0xdd => u32::from_be_bytes(input.take()?) as usize,
                    _ => usize::from(marker & 0x0f),
                };
                self.shape.push(b'[');
                if template {
                    self.template.push(b'[');
                }
                for i in 0..len {
                    if template && i > 0 {
                        self.template.push(b',');
                    }
                    self.value(input, template, depth + 1)?;
                }
                self.shape.push(b']');
                if template {
                    self.template.push(b']');
                }
            }
            0x80..=0x8f | 0xde | 0xdf => {
                input.at -= 1;
                let len = input.map_len()?;
                self.map(input, len, template, depth)?;
            }
            // Extensions, the unused marker 0xc1, bin16 / bin32 (never 16 bytes).
            _ => return Err(Unsupported),
        }
        Ok(())
    }

    /// A map of `len` members. With `template`: its values' templates written in stored
    /// order, then the members put in key order (a `serde_json::Map` is a `BTreeMap`: sorted
    /// by the keys' bytes).
    fn map(
        &mut self,
        input: &mut Input<'_>,
        len: usize,
        template: bool,
        depth: usize,
    ) -> Result<(), Unsupported> {
        self.shape.push(b'{');
        let base = self.members.len();
        let values_start = self.template.len();
        for _ in 0..len {
            let (key_start, key_end) = input.str_range()?;
            self.shape
                .extend_from_slice(&input.bytes[key_start..key_end]);
            self.shape.push(0);
            let value_start = self.template.len();
            self.value(input, template, depth + 1)?;
            if template {
                self.members.push(Member {
                    key_start,
                    key_end,
                    value_start,
                    value_end: self.template.len(),
                });
            }
        }
        self.shape.push(b'}');
        if !template {
            return Ok(());
        }
        let bytes = input.bytes;
        let key = |m: &Member| &bytes[m.key_start..m.key_end];
        let members = &mut self.members[base..];
        members.sort_by(|a, b| key(a).cmp(key(b)));
        // A struct has no duplicate keys; a map with them is left to the typed path (which
        // keeps the last, as `BTreeMap::insert` does).
        if members.windows(2).any(|w| key(&w[0]) == key(&w[1])) {
            return Err(Unsupported);
        }
        self.values.clear();
        self.values
            .extend_from_slice(&self.template[values_start..]);
        self.template.truncate(values_start);
        self.template.push(b'{');
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                self.template.push(b',');
            }
            let name = std::str::from_utf8(key(m)).map_err(|_| Unsupported)?;
            evershard_model::json::write_str(&mut self.template, name);
            self.template.push(b':');
            self.template.extend_from_slice(
                &self.values[m.value_start - values_start..m.value_end - values_start],
            );
        }
        self.template.push(b'}');
        self.members.truncate(base);
        Ok(())
    }
}

/// The MessagePack body being read.
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn slice(&mut self, len: usize) -> Result<&'a [u8], Unsupported> {
        let end = self.at.checked_add(len).ok_or(Unsupported)?;
        let bytes = self.bytes.get(self.at..end).ok_or(Unsupported)?;
        self.at = end;
        Ok(bytes)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Unsupported> {
        Ok(self.slice(N)?.try_into().expect("N bytes"))
    }

    fn byte(&mut self) -> Result<u8, Unsupported> {
        Ok(self.take::<1>()?[0])
    }

    fn map_len(&mut self) -> Result<usize, Unsupported> {
        match self.byte()? {
            m @ 0x80..=0x8f => Ok(usize::from(m & 0x0f)),
            0xde => Ok(usize::from(u16::from_be_bytes(self.take()?))),
            0xdf => Ok(u32::from_be_bytes(self.take()?) as usize),
            _ => Err(Unsupported),
        }
    }

    /// A string's position in the input (a map key).
    fn str_range(&mut self) -> Result<(usize, usize), Unsupported> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => usize::from(self.byte()?),
            0xda => usize::from(u16::from_be_bytes(self.take()?)),
            0xdb => u32::from_be_bytes(self.take()?) as usize,
            _ => return Err(Unsupported),
        };
        let start = self.at;
        self.slice(len)?;
        Ok((start, self.at))
    }
}

#[cfg(test)]
mod tests {
    //! The transcoder's JSON is the typed path's bytes, for every kind of leaf the seeds'
    //! events hold (strings that need escaping, integers of every width and sign, floats
    //! with non-finite values, options, lists, maps, unit enum variants, UUIDs, timestamps),
    //! on seeded pseudo-random values; the shapes that differ (money, a 16-byte binary that
    //! is not a UUID, a custom payload that drops nulls) and what it does not handle (integer map keys, format 1, bad bytes)
    //! are rendered by the typed path, with its bytes or its error.
    use super::*;
    use chrono::{DateTime, Utc};
    use evershard_model::codec;
    use evershard_model::json::write_json_payload;
    use evershard_model::Money;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;
    use uuid::Uuid;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Alpha,
        BetaGamma,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        zeta: i32,
        alpha: Option<Uuid>,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        product_id: String,
        reservation_id: Uuid,
        quantity: i64,
        big: u64,
        small: i8,
        ratio: f64,
        tiny: f32,
        flag: bool,
        note: Option<String>,
        tags: Vec<String>,
        kind: Kind,
        inner: Inner,
        by_name: BTreeMap<String, i64>,
        #[serde(with = "evershard_model::codec::timestamp")]
        updated_at: DateTime<Utc>,
        unit: (),
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Priced {
        amount: Money,
        order_id: Uuid,
    }

    /// 16 bytes that serialize as bytes but are not a UUID: an array of numbers in JSON.
    #[derive(Clone, Debug, PartialEq)]
    struct Raw([u8; 16]);
    impl Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
            let bytes: serde_bytes_like::Bytes = Deserialize::deserialize(d)?;
            Ok(Raw(bytes.0))
        }
    }
    mod serde_bytes_like {
        pub struct Bytes(pub [u8; 16]);
        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("16 bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                        v.try_into().map(Bytes).map_err(E::custom)
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        raw: Raw,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Numbered {
        by_number: BTreeMap<u32, i64>,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Measured {
        value: f64,
        note: Option<String>,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Event {
        Measured(Measured),
        Plain(Plain),
        Priced(Priced),
        Holder(Holder),
        Numbered(Numbered),
    }

    /// The typed path, as `TopicCatalog` builds it for a derived event.
    fn typed(_: &str, _: &str, payload: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        match codec::decode::<Event>(payload)? {
            // A custom payload as Plant's: its null members dropped (a NaN is null).
            Event::Measured(p) => {
                let mut json = evershard_model::json_payload(&p);
                json.as_object_mut().unwrap().retain(|_, v| !v.is_null());
                serde_json::to_writer(out, &json).unwrap();
            }
            Event::Plain(p) => write_json_payload(&p, out),
            Event::Priced(p) => write_json_payload(&p, out),
            Event::Holder(p) => write_json_payload(&p, out),
            Event::Numbered(p) => write_json_payload(&p, out),
        }
        Ok(())
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn text(&mut self) -> String {
            const PIECES: [&str; 8] = ["a", "Z", "\"", "\\", "\u{1}", "é", "\n", "日本"];
            (0..self.next() % 12)
                .map(|_| PIECES[(self.next() % 8) as usize])
                .collect()
        }
    }

    fn plain(rng: &mut Rng) -> Plain {
        let floats = [0.0, -0.0, 1.0, 0.1, -2.5e300, f64::NAN, f64::INFINITY, 1e-7];
        let micros = (rng.next() % 300_000_000_000_000) as i64;
        Plain {
            product_id: rng.text(),
            reservation_id: Uuid::from_u128(u128::from(rng.next()) << 64 | u128::from(rng.next())),
            quantity: match rng.next() % 4 {
                0 => i64::MIN,
                1 => i64::MAX,
                2 => -((rng.next() % 200) as i64),
                _ => rng.next() as i64 >> (rng.next() % 64),
            },
            big: rng.next() >> (rng.next() % 64),
            small: rng.next() as i8,
            ratio: if rng.next() % 2 == 0 {
                floats[(rng.next() % 8) as usize]
            } else {
                f64::from_bits(rng.next() >> 2)
            },
            tiny: f32::from_bits((rng.next() >> 34) as u32) / 3.0,
            flag: rng.next() % 2 == 0,
            note: (rng.next() % 2 == 0).then(|| rng.text()),
            tags: (0..rng.next() % 3).map(|_| rng.text()).collect(),
            kind: if rng.next() % 2 == 0 {
                Kind::Alpha
            } else {
                Kind::BetaGamma
            },
            inner: Inner {
                zeta: rng.next() as i32,
                alpha: (rng.next() % 2 == 0).then(|| Uuid::from_u128(u128::from(rng.next()))),
            },
            by_name: (0..rng.next() % 4)
                .map(|_| (rng.text(), rng.next() as i64))
                .collect(),
            updated_at: DateTime::from_timestamp_micros(micros).unwrap(),
            unit: (),
        }
    }

    fn both(t: &mut Transcoder, payload: &[u8]) -> (Result<Vec<u8>, CodecError>, Vec<u8>) {
        let mut got = b"prefix".to_vec();
        let result = t
            .write(typed, "T", "E", "1.0", payload, &mut got)
            .map(|()| got[6..].to_vec());
        let mut want = Vec::new();
        let _ = typed("E", "1.0", payload, &mut want);
        (result, want)
    }

    #[test]
    fn transcoded_json_is_the_typed_json() {
        let seed = 0x5eed_0007_u64;
        println!("seed {seed:#x}");
        let mut rng = Rng(seed);
        let mut t = Transcoder::default();
        for i in 0..20_000 {
            let event = Event::Plain(plain(&mut rng));
            let (got, want) = both(&mut t, &codec::encode(&event));
            assert_eq!(
                String::from_utf8(got.unwrap()).unwrap(),
                String::from_utf8(want).unwrap(),
                "value {i} of seed {seed:#x}: {event:?}"
            );
        }
        // Every shape agreed: all of them are transcoded from now on.
        assert!(!t.known.is_empty());
        assert!(t.known.iter().all(|k| k.template.is_some()));
    }

    #[test]
    fn shapes_that_differ_and_what_is_not_handled_take_the_typed_path() {
        let mut t = Transcoder::default();
        let events = [
            Event::Priced(Priced {
                amount: Money::from_minor(12_345),
                order_id: Uuid::from_u128(9),
            }),
            Event::Holder(Holder { raw: Raw([7; 16]) }),
        ];
        for event in &events {
            for _ in 0..3 {
                let (got, want) = both(&mut t, &codec::encode(event));
                assert_eq!(got.unwrap(), want, "{event:?}");
            }
        }
        assert_eq!(t.known.len(), 2, "one shape each, kept");
        assert!(t.known.iter().all(|k| k.template.is_none()));

        // Integer map keys, format 1: not transcoded (no verdict kept), the typed bytes.
        let numbered = Event::Numbered(Numbered {
            by_number: [(3, -1), (1, 2)].into(),
        });
        for payload in [codec::encode(&numbered), codec::encode_compact(&numbered)] {
            let (got, want) = both(&mut t, &payload);
            assert_eq!(got.unwrap(), want);
        }
        assert_eq!(t.known.len(), 2);

        // Bytes that do not decode: the typed path's error, and `out` as it was.
        let good = codec::encode(&Event::Plain(plain(&mut Rng(3))));
        for bad in [
            &good[..good.len() - 1],
            &[good.clone(), vec![0xc0]].concat()[..],
            &[],
        ] {
            let mut out = b"prefix".to_vec();
            assert!(t.write(typed, "T", "E", "1.0", bad, &mut out).is_err());
        }
    }

    /// A payload whose JSON drops its null members: a NaN (null in JSON) and an absent
    /// option are shapes of their own, so a template made from finite values is not used for
    /// them.
    #[test]
    fn values_that_become_null_are_shapes_of_their_own() {
        let mut t = Transcoder::default();
        for value in [1.5, f64::NAN, 2.0, f64::INFINITY, -0.0] {
            for note in [Some("n".to_owned()), None] {
                let event = Event::Measured(Measured {
                    value,
                    note: note.clone(),
                });
                let (got, want) = both(&mut t, &codec::encode(&event));
                assert_eq!(got.unwrap(), want, "{event:?}");
            }
        }
    }

    #[test]
    fn past_the_shape_limit_payloads_take_the_typed_path() {
        let mut t = Transcoder::default();
        let mut rng = Rng(11);
        for i in 0..SHAPES_CACHED_MAX + 50 {
            // A distinct key per payload: a distinct shape each.
            let mut p = plain(&mut rng);
            p.by_name = [(format!("k{i}"), 1)].into();
            let (got, want) = both(&mut t, &codec::encode(&Event::Plain(p)));
            assert_eq!(got.unwrap(), want);
        }
        assert_eq!(t.known.len(), SHAPES_CACHED_MAX);
    }
}
