//! JSON bytes exactly as `serde_json::to_vec(&serde_json::to_value(x)?)` writes them, without
//! building the `serde_json::Value` tree.
//!
//! The outbound payload of an event is its [`crate::json_payload`]: a `Value`, whose objects
//! (serde_json's `Map` without `preserve_order`, a `BTreeMap`) list their members sorted by
//! key. Rendering a topic message used to build that tree — a `String` per key, per string
//! value and per map node — only to serialize it once and drop it; on the topic read path the
//! allocator was most of the cost. [`write_value_json`] writes the same bytes straight into a
//! buffer: each object's members are written to a scratch buffer, then emitted sorted by key
//! (the last of equal keys wins, as `BTreeMap::insert` does). Every conversion follows
//! serde_json's value serializer: floats become `f64` numbers (non-finite: `null`), bytes an
//! array of numbers, enum variants `{"Variant": ...}`, 128-bit integers only when they fit in
//! 64 bits. What it does not mirror (a map key that is not a string, a character, an integer
//! or a unit variant) is an error, and [`write_json_payload`] falls back to the tree. A
//! property test holds the two to the same bytes.

use serde::ser::{self, Error as _, Serialize};
use serde_json::Error;

/// Writes `value` as `serde_json::to_value(value)` would serialize it (compact), appending to
/// `out`. On an error `out` may hold a partial value: the caller truncates it.
pub fn write_value_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    value.serialize(Ser { out })
}

/// The payload JSON of [`crate::json_payload`], written into `out` without the tree (see the
/// module docs); a payload the direct writer does not mirror goes through the tree.
pub fn write_json_payload<T: Serialize>(payload: &T, out: &mut Vec<u8>) {
    let start = out.len();
    if write_value_json(payload, out).is_err() {
        out.truncate(start);
        let json = crate::json_payload(payload);
        serde_json::to_writer(&mut *out, &json).expect("a JSON value always encodes");
    }
}

/// A string as serde_json escapes it (quoted), appended to `out`.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Nothing to escape (the common case: field names, ids, timestamps): quote and copy.
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string always encodes");
    }
}

/// True when `s` holds a byte serde_json escapes: a control character (< 0x20), `"` or `\`.
/// Eight bytes at a time (the byte-by-byte loop was ~200 instructions per string, 17 strings
/// per message): `has_less(w, n)` is non-zero exactly when some byte of `w` is below `n`
/// (n <= 128), and a byte equal to `c` is a zero byte of `w ^ c..c`.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_less = |w: u64, n: u8| w.wrapping_sub(ONES * n as u64) & !w & HIGHS;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes"));
        if has_less(w, 0x20)
            | has_less(w ^ (ONES * b'"' as u64), 1)
            | has_less(w ^ (ONES * b'\\' as u64), 1)
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Text written by `Display` on the stack (`collect_str`: timestamps, decimals), spilling to
/// the heap only past its size.
struct StackText {
    buf: [u8; 64],
    len: usize,
    spill: Option<String>,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if let Some(spill) = &mut self.spill {
            spill.push_str(s);
        } else if self.len + s.len() <= self.buf.len() {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut spill = String::with_capacity(self.len + s.len() + 64);
            spill.push_str(std::str::from_utf8(&self.buf[..self.len]).expect("whole str pieces"));
            spill.push_str(s);
            self.spill = Some(spill);
        }
        Ok(())
    }
}

/// A number or literal through serde_json's own writer (itoa / ryu), appended to `out`.
fn write_plain<T: Serialize>(out: &mut Vec<u8>, v: T) -> Result<(), Error> {
    serde_json::to_writer(&mut *out, &v)
}

struct Ser<'a> {
    out: &'a mut Vec<u8>,
}

/// An array being written: elements comma-separated, straight into `out`.
struct Array<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// A tuple variant, closed with `]}`.
    variant: bool,
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Ser {
            out: &mut *self.out,
        })
    }

    fn close(self) {
        self.out.push(b']');
        if self.variant {
            self.out.push(b'}');
        }
    }
}

/// An object member's key: a struct field's name, or a map key's text in the scratch buffer.
#[derive(Clone, Copy)]
enum Key {
    Field(&'static str),
    Text(usize, usize),
}

/// An object being written: members go to `scratch` (raw key, then the value's bytes) and are
/// emitted sorted by key when it closes.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    scratch: Vec<u8>,
    /// (key, value start, value end): the value's bytes in `scratch`.
    members: Vec<(Key, usize, usize)>,
    /// A map's key written by `serialize_key`, waiting for its value.
    pending: Option<Key>,
    /// A struct variant, closed with `}}`.
    variant: bool,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>, variant: bool, len: usize) -> Self {
        let (scratch, members) = SCRATCH
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_else(|| (Vec::with_capacity(len * 24), Vec::with_capacity(len)));
        Object {
            out,
            scratch,
            members,
            pending: None,
            variant,
        }
    }

    fn value<T: Serialize + ?Sized>(&mut self, key: Key, value: &T) -> Result<(), Error> {
        let start = self.scratch.len();
        value.serialize(Ser {
            out: &mut self.scratch,
        })?;
        self.members.push((key, start, self.scratch.len()));
        Ok(())
    }

    fn close(mut self) {
        self.emit();
    }

    fn emit(&mut self) {
        let scratch = &self.scratch;
        let key = |m: &(Key, usize, usize)| -> &[u8] {
            match m.0 {
                Key::Field(name) => name.as_bytes(),
                Key::Text(start, end) => &scratch[start..end],
            }
        };
        // Stable: of equal keys the last one written stays last.
        self.members.sort_by(|a, b| key(a).cmp(key(b)));
        self.out.push(b'{');
        let mut first = true;
        for (i, m) in self.members.iter().enumerate() {
            if self
                .members
                .get(i + 1)
                .is_some_and(|next| key(next) == key(m))
            {
                continue; // a later member with this key replaces it
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            match m.0 {
                Key::Field(name) => write_str(self.out, name),
                Key::Text(start, end) => write_str(
                    self.out,
                    std::str::from_utf8(&scratch[start..end]).expect("keys are written from str"),
                ),
            }
            self.out.push(b':');
            self.out.extend_from_slice(&scratch[m.1..m.2]);
        }
        self.out.push(b'}');
        if self.variant {
            self.out.push(b'}');
        }
    }
}

/// The scratch buffers of closed objects, kept for the next ones on this thread: every
/// payload is one object or more, and two fresh buffers per object were two allocations per
/// object per message rendered. Bounded in count and in the size of what is kept.
type Scratch = (Vec<u8>, Vec<(Key, usize, usize)>);

/// Buffers kept per thread (a payload nests objects a few levels deep at most).
const SCRATCH_POOL_MAX: usize = 16;
/// A scratch buffer that grew past this is dropped rather than kept.
const SCRATCH_KEPT_BYTES_MAX: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Scratch>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for Object<'_> {
    fn drop(&mut self) {
        // Closed or abandoned on an error: either way the buffers go back to the pool empty.
        if self.scratch.capacity() > SCRATCH_KEPT_BYTES_MAX {
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut members = std::mem::take(&mut self.members);
        scratch.clear();
        members.clear();
        // `try_with`: a thread being torn down has no pool left; the buffers are just freed.
        let _ = SCRATCH.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < SCRATCH_POOL_MAX {
                pool.push((scratch, members));
            }
        });
    }
}

fn unsupported(what: &str) -> Error {
    Error::custom(format!("not mirrored by the direct JSON writer: {what}"))
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        write_plain(self.out, v)
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        write_plain(self.out, v as i64)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        write_plain(self.out, v as i64)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        write_plain(self.out, v as i64)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        write_plain(self.out, v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        // serde_json's value serializer: a number only when it fits in 64 bits.
        if let Ok(v) = u64::try_from(v) {
            write_plain(self.out, v)
        } else if let Ok(v) = i64::try_from(v) {
            write_plain(self.out, v)
        } else {
            Err(unsupported("i128 out of the 64-bit range"))
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        write_plain(self.out, v as u64)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        write_plain(self.out, v as u64)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        write_plain(self.out, v as u64)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        write_plain(self.out, v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        match u64::try_from(v) {
            Ok(v) => write_plain(self.out, v),
            Err(_) => Err(unsupported("u128 out of the 64-bit range")),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // Exactly the value serializer's conversion (to an f64 number, or null).
        write_plain(self.out, serde_json::Value::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        write_plain(self.out, serde_json::Value::from(v))
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        // An array of numbers.
        write_plain(self.out, v.iter().map(|b| *b as u64).collect::<Vec<_>>())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        value.serialize(Ser {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>, Error> {
        self.out.push(b'[');
        Ok(Array {
            out: self.out,
            first: true,
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a>, Error> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.extend_from_slice(b":[");
        Ok(Array {
            out: self.out,
            first: true,
            variant: true,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(Object::new(self.out, false, len.unwrap_or(8)))
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Object<'a>, Error> {
        Ok(Object::new(self.out, false, len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Object<'a>, Error> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        Ok(Object::new(self.out, true, len))
    }
    /// The `Display` text as a string, as the value serializer's
    /// `Value::String(value.to_string())`, formatted on the stack.
    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        use std::fmt::Write as _;
        let mut text = StackText {
            buf: [0; 64],
            len: 0,
            spill: None,
        };
        write!(text, "{value}").map_err(|_| unsupported("a Display that failed"))?;
        match &text.spill {
            Some(spill) => write_str(self.out, spill),
            None => write_str(
                self.out,
                std::str::from_utf8(&text.buf[..text.len]).expect("whole str pieces"),
            ),
        }
        Ok(())
    }
}

/// The four array-shaped serde traits write the same way: each element through
/// [`Array::element`], then [`Array::close`]. Only the trait and its element method's name
/// differ.
macro_rules! array_impls {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl ser::$trait for Array<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close();
                Ok(())
            }
        }
    )*};
}

array_impls!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let start = self.scratch.len();
        key.serialize(KeySer {
            out: &mut self.scratch,
        })?;
        self.pending = Some(Key::Text(start, self.scratch.len()));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .pending
            .take()
            .ok_or_else(|| unsupported("a map value without a key"))?;
        self.value(key, value)
    }
    fn end(self) -> Result<(), Error> {
        self.close();
        Ok(())
    }
}

/// A struct and a struct variant write the same way: each field through [`Object::value`],
/// then [`Object::close`] (which also closes a variant's outer object).
macro_rules! struct_impls {
    ($($trait:ident),* $(,)?) => {$(
        impl ser::$trait for Object<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.value(Key::Field(key), value)
            }
            fn end(self) -> Result<(), Error> {
                self.close();
                Ok(())
            }
        }
    )*};
}

struct_impls!(SerializeStruct, SerializeStructVariant);

/// A map key's text, raw (escaped when the object is emitted): strings, characters, integers
/// (their decimal text, as serde_json's key serializer writes them) and unit variants (their
/// name); anything else is left to the tree.
struct KeySer<'a> {
    out: &'a mut Vec<u8>,
}

impl KeySer<'_> {
    fn text(self, s: &str) -> Result<(), Error> {
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

type Never = ser::Impossible<(), Error>;

/// `KeySer`'s integer methods: each writes the key's decimal text.
macro_rules! integer_keys {
    ($($method:ident: $ty:ty),* $(,)?) => {$(
        fn $method(self, v: $ty) -> Result<(), Error> {
            self.text(&v.to_string())
        }
    )*};
}

impl ser::Serializer for KeySer<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Never;
    type SerializeTuple = Never;
    type SerializeTupleStruct = Never;
    type SerializeTupleVariant = Never;
    type SerializeMap = Never;
    type SerializeStruct = Never;
    type SerializeStructVariant = Never;

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.text(v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.text(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    // An integer key is its decimal text, as serde_json's key serializer writes it.
    integer_keys!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
    );
    fn serialize_bool(self, _v: bool) -> Result<(), Error> {
        Err(unsupported("a bool map key"))
    }
    fn serialize_f32(self, _v: f32) -> Result<(), Error> {
        Err(unsupported("a float map key"))
    }
    fn serialize_f64(self, _v: f64) -> Result<(), Error> {
        Err(unsupported("a float map key"))
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), Error> {
        Err(unsupported("a bytes map key"))
    }
    fn serialize_none(self) -> Result<(), Error> {
        Err(unsupported("a none map key"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), Error> {
        Err(unsupported("an option map key"))
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Err(unsupported("a unit map key"))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        Err(unsupported("a unit struct map key"))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Error> {
        Err(unsupported("a newtype variant map key"))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Never, Error> {
        Err(unsupported("a sequence map key"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Never, Error> {
        Err(unsupported("a tuple map key"))
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Never, Error> {
        Err(unsupported("a tuple struct map key"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Never, Error> {
        Err(unsupported("a tuple variant map key"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Never, Error> {
        Err(unsupported("a map map key"))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Never, Error> {
        Err(unsupported("a struct map key"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Never, Error> {
        Err(unsupported("a struct variant map key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::{BTreeMap, HashMap};

    fn tree_bytes<T: Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(&serde_json::to_value(v).unwrap()).unwrap()
    }

    /// The word-at-a-time escape check answers as the byte-by-byte one for every byte value
    /// at every position of strings of 1..=19 bytes (both sides of each 8-byte chunk and the
    /// tail), around multi-byte UTF-8; and `write_str` writes serde_json's bytes.
    #[test]
    fn escape_check_is_exact() {
        for len in 1..=19usize {
            for at in 0..len {
                for b in 0u8..=0x7f {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let naive = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
                    assert_eq!(needs_escape(&bytes), naive, "{bytes:?}");
                    let s = std::str::from_utf8(&bytes).unwrap();
                    let mut out = Vec::new();
                    write_str(&mut out, s);
                    assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
                }
            }
        }
        for s in [
            "é\"",
            "日本語テキスト\n",
            "ü",
            "\u{7f}\u{80}\u{ff}x",
            "€€€€€€€€\\",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    fn direct_bytes<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = b"prefix".to_vec();
        write_json_payload(v, &mut out);
        out.split_off(6)
    }

    #[derive(Serialize)]
    enum Kind {
        Unit,
        Newtype(i32),
        Tuple(u8, String),
        Struct { b: bool, a: Option<f32> },
    }

    #[derive(Serialize)]
    struct Inner {
        zeta: String,
        alpha: Vec<u8>,
        #[serde(with = "serde_bytes_like")]
        raw: Vec<u8>,
    }

    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    #[derive(Serialize)]
    struct Sample {
        product_id: String,
        quantity_change: i64,
        big: u128,
        small: i128,
        ratio: f64,
        nan: f64,
        tiny: f32,
        when: chrono::DateTime<chrono::Utc>,
        id: uuid::Uuid,
        kinds: Vec<Kind>,
        inner: Inner,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        tags: BTreeMap<String, i64>,
        counts: HashMap<u32, char>,
        #[serde(flatten)]
        extra: BTreeMap<String, String>,
        escaped: &'static str,
        unit: (),
        /// `collect_str` of a text longer than its stack buffer, with characters to escape.
        #[serde(serialize_with = "long_display")]
        long: String,
    }

    fn long_display<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// The direct writer gives the tree's bytes, field for field, over every shape serde can
    /// hand it (sorted keys at every level, flattened duplicates, floats, 128-bit integers,
    /// bytes, enum variants, escapes), for a fixed pseudo-random set of samples.
    #[test]
    fn writes_the_bytes_of_the_value_tree() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..500 {
            let r = next();
            let mut tags = BTreeMap::new();
            for i in 0..(r % 5) {
                tags.insert(format!("t{}", next() % 7), i as i64 - 2);
            }
            let mut counts = HashMap::new();
            for _ in 0..(r % 4) {
                counts.insert(
                    (next() % 1000) as u32,
                    char::from(b'a' + (next() % 26) as u8),
                );
            }
            let mut extra = BTreeMap::new();
            // A flattened key equal to a field's: the tree keeps the later one.
            if round % 3 == 0 {
                extra.insert("product_id".to_owned(), "flattened".to_owned());
            }
            extra.insert(format!("x{}", r % 11), "é\"\\\n".to_owned());
            let sample = Sample {
                product_id: format!("sku-{}", r % 1000),
                quantity_change: r as i64,
                big: if round % 2 == 0 {
                    r as u128
                } else {
                    u64::MAX as u128
                },
                small: -(r as i128 % 1_000_000),
                ratio: (r % 10_000) as f64 / 7.0,
                nan: if round % 5 == 0 {
                    f64::NAN
                } else {
                    f64::INFINITY
                },
                tiny: (r % 1000) as f32 / 3.0,
                when: chrono::DateTime::from_timestamp_micros((r % (1 << 50)) as i64).unwrap(),
                id: uuid::Uuid::from_u128(r as u128 * 31),
                kinds: vec![
                    Kind::Unit,
                    Kind::Newtype(r as i32),
                    Kind::Tuple(r as u8, "t".into()),
                    Kind::Struct {
                        b: r % 2 == 0,
                        a: (r % 3 == 0).then_some(0.1),
                    },
                ],
                inner: Inner {
                    zeta: "z".into(),
                    alpha: vec![1, 2, r as u8],
                    raw: vec![r as u8, 0, 255],
                },
                skipped: (r % 2 == 0).then_some(7),
                tags,
                counts,
                extra,
                escaped: "tab\there \u{1} \u{2028}",
                unit: (),
                long: format!("{}\"{}", "d".repeat((r % 100) as usize), round),
            };
            assert_eq!(
                String::from_utf8(direct_bytes(&sample)).unwrap(),
                String::from_utf8(tree_bytes(&sample)).unwrap(),
                "round {round}"
            );
            // The direct path itself (not its fallback) gives those bytes.
            let mut direct = Vec::new();
            write_value_json(&sample, &mut direct).unwrap();
            assert_eq!(direct, tree_bytes(&sample), "round {round}");
        }
    }

    /// What the direct writer does not mirror goes through the tree: same bytes still.
    #[test]
    fn falls_back_to_the_tree_for_other_map_keys() {
        let mut by_flag = BTreeMap::new();
        by_flag.insert(true, 1);
        by_flag.insert(false, 2);
        assert!(write_value_json(&by_flag, &mut Vec::new()).is_err());
        assert_eq!(direct_bytes(&by_flag), tree_bytes(&by_flag));
    }
}
