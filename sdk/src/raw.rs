//! Lazy, borrowed MessagePack values: read a field without decoding the rest.
//!
//! A [`RawValue`] is the bytes of exactly one MessagePack value inside the input
//! buffer. Finding a field walks the encoding (string and binary bodies are jumped
//! over by their length, never copied), and `as_str` returns a `&str` into the
//! input, so a plugin pays for what it reads. [`RawValue::to_value`] gives the
//! owned [`Value`] that `codec::decode` would, shape for shape.

use crate::value::{Map, Value};
use std::fmt;

/// Malformed MessagePack (or a shape the caller asked for that is not there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawError(pub String);

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RawError {}

fn err<T>(msg: impl Into<String>) -> Result<T, RawError> {
    Err(RawError(msg.into()))
}

/// What one MessagePack header says: the kind of value and where its body is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Head {
    Nil,
    Bool(bool),
    Int(i64),
    /// Above i64::MAX.
    BigUint(u64),
    F32(f32),
    F64(f64),
    /// Body offset and length, relative to the value's start.
    Str(usize, usize),
    Bin(usize, usize),
    /// Element count; elements start at the offset.
    Array(usize, usize),
    Map(usize, usize),
    /// Extension type (never sent by the host): total length of the value.
    Ext(usize),
}

fn be(bytes: &[u8], at: usize, n: usize) -> Result<u64, RawError> {
    let s = bytes.get(at..at + n).ok_or_else(|| RawError("MessagePack value is cut short".into()))?;
    Ok(s.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Reads the header of the value at the start of `bytes`.
pub(crate) fn head(bytes: &[u8]) -> Result<Head, RawError> {
    let Some(&b) = bytes.first() else { return err("MessagePack value is empty or cut short") };
    Ok(match b {
        0x00..=0x7f => Head::Int(i64::from(b)),
        0x80..=0x8f => Head::Map((b & 0x0f) as usize, 1),
        0x90..=0x9f => Head::Array((b & 0x0f) as usize, 1),
        0xa0..=0xbf => Head::Str(1, (b & 0x1f) as usize),
        0xc0 => Head::Nil,
        0xc2 => Head::Bool(false),
        0xc3 => Head::Bool(true),
        0xc4 => Head::Bin(2, be(bytes, 1, 1)? as usize),
        0xc5 => Head::Bin(3, be(bytes, 1, 2)? as usize),
        0xc6 => Head::Bin(5, be(bytes, 1, 4)? as usize),
        0xc7 => Head::Ext(3 + be(bytes, 1, 1)? as usize),
        0xc8 => Head::Ext(4 + be(bytes, 1, 2)? as usize),
        0xc9 => Head::Ext(6 + be(bytes, 1, 4)? as usize),
        0xca => Head::F32(f32::from_bits(be(bytes, 1, 4)? as u32)),
        0xcb => Head::F64(f64::from_bits(be(bytes, 1, 8)?)),
        0xcc => Head::Int(be(bytes, 1, 1)? as i64),
        0xcd => Head::Int(be(bytes, 1, 2)? as i64),
        0xce => Head::Int(be(bytes, 1, 4)? as i64),
        0xcf => {
            let u = be(bytes, 1, 8)?;
            i64::try_from(u).map_or(Head::BigUint(u), Head::Int)
        }
        0xd0 => Head::Int(i64::from(be(bytes, 1, 1)? as u8 as i8)),
        0xd1 => Head::Int(i64::from(be(bytes, 1, 2)? as u16 as i16)),
        0xd2 => Head::Int(i64::from(be(bytes, 1, 4)? as u32 as i32)),
        0xd3 => Head::Int(be(bytes, 1, 8)? as i64),
        0xd4 => Head::Ext(3),
        0xd5 => Head::Ext(4),
        0xd6 => Head::Ext(6),
        0xd7 => Head::Ext(10),
        0xd8 => Head::Ext(18),
        0xd9 => Head::Str(2, be(bytes, 1, 1)? as usize),
        0xda => Head::Str(3, be(bytes, 1, 2)? as usize),
        0xdb => Head::Str(5, be(bytes, 1, 4)? as usize),
        0xdc => Head::Array(be(bytes, 1, 2)? as usize, 3),
        0xdd => Head::Array(be(bytes, 1, 4)? as usize, 5),
        0xde => Head::Map(be(bytes, 1, 2)? as usize, 3),
        0xdf => Head::Map(be(bytes, 1, 4)? as usize, 5),
        0xe0..=0xff => Head::Int(i64::from(b as i8)),
        0xc1 => return err("MessagePack byte 0xc1 is never used"),
    })
}

/// Length of the header plus body of a scalar, or of the header alone of a
/// container (whose `n` children follow).
fn scalar_len(bytes: &[u8], h: Head) -> (usize, u64) {
    match h {
        Head::Nil | Head::Bool(_) => (1, 0),
        Head::Int(_) | Head::BigUint(_) => (int_len(bytes[0]), 0),
        Head::F32(_) => (5, 0),
        Head::F64(_) => (9, 0),
        Head::Str(off, len) | Head::Bin(off, len) => (off.saturating_add(len), 0),
        Head::Ext(len) => (len, 0),
        Head::Array(n, off) => (off, n as u64),
        Head::Map(n, off) => (off, 2 * n as u64),
    }
}

fn int_len(b: u8) -> usize {
    match b {
        0xcc | 0xd0 => 2,
        0xcd | 0xd1 => 3,
        0xce | 0xd2 => 5,
        0xcf | 0xd3 => 9,
        _ => 1,
    }
}

/// The length of the one value at the start of `bytes`, checked to lie inside
/// it. Iterative (a counter of values still to skip), so deep nesting costs no
/// stack.
pub(crate) fn value_len(bytes: &[u8]) -> Result<usize, RawError> {
    let mut at = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        let rest = bytes.get(at..).unwrap_or(&[]);
        // The one-byte headers (small ints, nil, bools, fixstr, fixmap, fixarray)
        // are most of any document: read them without building a `Head`.
        let (len, children) = match rest.first() {
            Some(0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3) => (1, 0),
            Some(&b @ 0x80..=0x8f) => (1, 2 * u64::from(b & 0x0f)),
            Some(&b @ 0x90..=0x9f) => (1, u64::from(b & 0x0f)),
            Some(&b @ 0xa0..=0xbf) => (1 + (b & 0x1f) as usize, 0),
            _ => {
                let h = head(rest)?;
                scalar_len(rest, h)
            }
        };
        if len > rest.len() {
            return err("MessagePack value is cut short");
        }
        at += len;
        pending = pending - 1 + children;
        if pending > (bytes.len() - at) as u64 {
            // Every pending value takes at least one byte.
            return err("MessagePack container claims more items than its bytes hold");
        }
    }
    Ok(at)
}

/// The length of the value at the start of `bytes`: a fixstr or a one-byte
/// scalar (most values of a document) read from its first byte, anything else
/// measured by `value_len`.
pub(crate) fn skip_len(bytes: &[u8]) -> Option<usize> {
    let n = match *bytes.first()? {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 1,
        b @ 0xa0..=0xbf => 1 + usize::from(b & 0x1f),
        _ => return value_len(bytes).ok(),
    };
    (n <= bytes.len()).then_some(n)
}

/// The value at dotted `path` inside the value at the start of `bytes`, which may
/// be followed by more bytes (it need not be measured first): only the maps and
/// arrays on the way are entered, the entries before the one wanted are skipped,
/// and only the value found is measured. Keys are compared as bytes. `None` when
/// the path is absent or the bytes on the way are malformed.
pub(crate) fn find_path<'a>(bytes: &'a [u8], path: &str) -> Option<RawValue<'a>> {
    let mut at = bytes;
    for part in path.split('.') {
        at = match head(at).ok()? {
            Head::Map(n, off) => {
                let mut rest = &at[off..];
                let mut found = None;
                for _ in 0..n {
                    let key = match rest.first() {
                        Some(&b @ 0xa0..=0xbf) => {
                            let len = usize::from(b & 0x1f);
                            let k = rest.get(1..1 + len)?;
                            rest = &rest[1 + len..];
                            k
                        }
                        _ => {
                            let (k, tail) = split_value(rest).ok()?;
                            rest = tail;
                            match k.head() {
                                Head::Str(o, l) => &k.bytes[o..o + l],
                                _ => return None,
                            }
                        }
                    };
                    if key == part.as_bytes() {
                        found = Some(rest);
                        break;
                    }
                    rest = &rest[skip_len(rest)?..];
                }
                found?
            }
            Head::Array(n, off) => {
                let index = part.parse::<usize>().ok().filter(|i| *i < n)?;
                let mut rest = &at[off..];
                for _ in 0..index {
                    rest = &rest[skip_len(rest)?..];
                }
                rest
            }
            _ => return None,
        };
    }
    split_value(at).ok().map(|(v, _)| v)
}

/// Splits the value at the start of `bytes` from what follows it.
pub(crate) fn split_value(bytes: &[u8]) -> Result<(RawValue<'_>, &[u8]), RawError> {
    let n = value_len(bytes)?;
    Ok((RawValue { bytes: &bytes[..n] }, &bytes[n..]))
}

/// One MessagePack value, borrowed from the input. Cheap to copy.
#[derive(Clone, Copy, PartialEq)]
pub struct RawValue<'a> {
    bytes: &'a [u8],
}

impl fmt::Debug for RawValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_value() {
            Ok(v) => write!(f, "RawValue({})", v.to_json()),
            Err(e) => write!(f, "RawValue(<{e}>)"),
        }
    }
}

const NIL: &[u8] = &[0xc0];

impl<'a> RawValue<'a> {
    /// The value at the start of `bytes`; trailing bytes are an error.
    pub fn parse(bytes: &'a [u8]) -> Result<RawValue<'a>, RawError> {
        let (v, rest) = split_value(bytes)?;
        if !rest.is_empty() {
            return err(format!("{} bytes after the MessagePack value", rest.len()));
        }
        Ok(v)
    }

    /// A MessagePack nil.
    pub fn null() -> RawValue<'static> {
        RawValue { bytes: NIL }
    }

    /// The value's MessagePack bytes.
    pub fn as_bytes_raw(&self) -> &'a [u8] {
        self.bytes
    }

    pub(crate) fn head(&self) -> Head {
        head(self.bytes).expect("a RawValue holds one checked value")
    }

    pub fn is_null(&self) -> bool {
        self.bytes[0] == 0xc0
    }

    pub fn is_map(&self) -> bool {
        matches!(self.head(), Head::Map(..))
    }

    pub fn is_array(&self) -> bool {
        matches!(self.head(), Head::Array(..))
    }

    /// A string, borrowed from the input (`None` for other types or bad UTF-8).
    pub fn as_str(&self) -> Option<&'a str> {
        let (off, len) = match self.bytes[0] {
            // fixstr, the usual case, without decoding a `Head`.
            b @ 0xa0..=0xbf => (1, usize::from(b & 0x1f)),
            _ => match self.head() {
                Head::Str(off, len) => (off, len),
                _ => return None,
            },
        };
        std::str::from_utf8(&self.bytes[off..off + len]).ok()
    }

    /// A MessagePack `bin`, borrowed. (The host sends BSON binary as the
    /// `{"$binary": ...}` wrapper instead: [`Value::as_binary`] decodes that.)
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.head() {
            Head::Bin(off, len) => Some(&self.bytes[off..off + len]),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.head() {
            Head::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An integer, or a float without fraction (as [`Value::as_i64`]).
    pub fn as_i64(&self) -> Option<i64> {
        match self.head() {
            Head::Int(i) => Some(i),
            Head::F64(f) if f.fract() == 0.0 => Some(f as i64),
            Head::F32(f) if f.fract() == 0.0 => Some(f as i64),
            Head::BigUint(u) => Some(u as f64 as i64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self.head() {
            Head::Int(i) => Some(i as f64),
            Head::BigUint(u) => Some(u as f64),
            Head::F64(f) => Some(f),
            Head::F32(f) => Some(f64::from(f)),
            _ => None,
        }
    }

    /// Lenient truth, as [`Value::is_truthy`].
    pub fn is_truthy(&self) -> bool {
        match self.head() {
            Head::Bool(b) => b,
            Head::Int(i) => i != 0,
            Head::BigUint(_) => true,
            Head::F64(f) => f != 0.0,
            Head::F32(f) => f != 0.0,
            _ => false,
        }
    }

    pub fn as_map(&self) -> Option<RawMap<'a>> {
        match self.head() {
            Head::Map(n, off) => Some(RawMap { len: n, entries: &self.bytes[off..] }),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<RawArray<'a>> {
        match self.head() {
            Head::Array(n, off) => Some(RawArray { len: n, items: &self.bytes[off..] }),
            _ => None,
        }
    }

    /// The field `key` of a map, matched whole (a key may contain dots).
    pub fn get_key(&self, key: &str) -> Option<RawValue<'a>> {
        self.as_map()?.get(key)
    }

    /// A nested field by dotted path (`"profile.name"`, `"items.0.sku"`), found by
    /// walking the bytes: only the maps on the way are scanned.
    pub fn get(&self, path: &str) -> Option<RawValue<'a>> {
        find_path(self.bytes, path)
    }

    /// The owned value, exactly as `codec::decode::<Value>` reads these bytes.
    pub fn to_value(&self) -> Result<Value, RawError> {
        to_value(self.bytes, 0)
    }

    /// The value as the author's type, via serde, borrowing strings where the
    /// type does (`&'a str` fields).
    pub fn deserialize<T: serde::Deserialize<'a>>(&self) -> Result<T, RawError> {
        rmp_serde::from_slice(self.bytes).map_err(|e| RawError(e.to_string()))
    }

    /// As [`Value::to_key_string`]: text for building keys.
    pub fn to_key_string(&self) -> String {
        match self.head() {
            Head::Str(..) => {
                if let Some(s) = self.as_str() {
                    return s.to_string();
                }
            }
            Head::Int(i) => return i.to_string(),
            Head::Bool(b) => return b.to_string(),
            Head::Nil => return "null".to_string(),
            Head::Map(1, _) => {
                let m = self.as_map().expect("a map");
                if let Some((k, v)) = m.iter().next() {
                    match (k, v.head()) {
                        ("$oid" | "$numberDecimal", Head::Str(..)) => {
                            if let Some(s) = v.as_str() {
                                return s.to_string();
                            }
                        }
                        ("$date", Head::Int(ms)) => return ms.to_string(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        self.to_value().map(|v| v.to_key_string()).unwrap_or_default()
    }
}

fn to_value(bytes: &[u8], depth: usize) -> Result<Value, RawError> {
    // The owned decoder (rmp-serde) refuses nesting deeper than this; so do we,
    // and the recursion stays shallow.
    if depth > 1024 {
        return err("MessagePack value nests deeper than 1024 levels");
    }
    let h = head(bytes)?;
    Ok(match h {
        Head::Nil => Value::Null,
        Head::Bool(b) => Value::Bool(b),
        Head::Int(i) => Value::Int(i),
        Head::BigUint(u) => Value::Float(u as f64),
        Head::F32(f) => Value::Float(f64::from(f)),
        Head::F64(f) => Value::Float(f),
        Head::Str(off, len) => {
            let body = bytes.get(off..off + len).ok_or_else(|| RawError("string is cut short".into()))?;
            Value::String(std::str::from_utf8(body).map_err(|e| RawError(format!("string is not UTF-8: {e}")))?.to_string())
        }
        Head::Bin(off, len) => {
            let body = bytes.get(off..off + len).ok_or_else(|| RawError("binary is cut short".into()))?;
            Value::binary(body, 0)
        }
        Head::Array(n, off) => {
            let mut rest = &bytes[off..];
            let mut out = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                let (item, tail) = split_value(rest)?;
                out.push(to_value(item.bytes, depth + 1)?);
                rest = tail;
            }
            Value::Array(out)
        }
        Head::Map(n, off) => {
            let mut rest = &bytes[off..];
            let mut out = Map::new();
            for _ in 0..n {
                let (k, tail) = split_value(rest)?;
                let key = k.as_str().ok_or_else(|| RawError("a map key is not a UTF-8 string".into()))?;
                let (v, tail) = split_value(tail)?;
                out.insert(key.to_string(), to_value(v.bytes, depth + 1)?);
                rest = tail;
            }
            Value::Map(out)
        }
        Head::Ext(_) => return err("MessagePack ext types are not Values"),
    })
}

/// A map, read entry by entry on demand.
#[derive(Clone, Copy, PartialEq)]
pub struct RawMap<'a> {
    len: usize,
    entries: &'a [u8],
}

impl<'a> RawMap<'a> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key` (matched whole). The host never sends a key twice; if a
    /// writer did, this is the first one.
    pub fn get(&self, key: &str) -> Option<RawValue<'a>> {
        self.iter().find_map(|(k, v)| (k == key).then_some(v))
    }

    /// Whether the map has `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in wire order (the host writes keys sorted). Iteration stops at a
    /// key that is not a UTF-8 string; [`RawValue::to_value`] reports it.
    pub fn iter(&self) -> RawMapIter<'a> {
        RawMapIter { left: self.len, rest: self.entries }
    }

    /// The keys in wire order.
    pub fn keys(&self) -> impl Iterator<Item = &'a str> {
        self.iter().map(|(k, _)| k)
    }
}

impl fmt::Debug for RawMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Debug for RawArray<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for RawMap<'a> {
    type Item = (&'a str, RawValue<'a>);
    type IntoIter = RawMapIter<'a>;
    fn into_iter(self) -> RawMapIter<'a> {
        self.iter()
    }
}

pub struct RawMapIter<'a> {
    left: usize,
    rest: &'a [u8],
}

impl<'a> Iterator for RawMapIter<'a> {
    type Item = (&'a str, RawValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Key: almost always a fixstr, read without the general skip.
        let (key, tail) = match self.rest.first() {
            Some(&b @ 0xa0..=0xbf) => {
                let len = (b & 0x1f) as usize;
                let body = self.rest.get(1..1 + len)?;
                (std::str::from_utf8(body).ok()?, &self.rest[1 + len..])
            }
            _ => {
                let (k, tail) = split_value(self.rest).ok()?;
                (k.as_str()?, tail)
            }
        };
        let (value, tail) = split_value(tail).ok()?;
        self.rest = tail;
        Some((key, value))
    }
}

/// An array, read item by item on demand.
#[derive(Clone, Copy, PartialEq)]
pub struct RawArray<'a> {
    len: usize,
    items: &'a [u8],
}

impl<'a> RawArray<'a> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: usize) -> Option<RawValue<'a>> {
        self.iter().nth(index)
    }

    pub fn iter(&self) -> RawArrayIter<'a> {
        RawArrayIter { left: self.len, rest: self.items }
    }
}

impl<'a> IntoIterator for RawArray<'a> {
    type Item = RawValue<'a>;
    type IntoIter = RawArrayIter<'a>;
    fn into_iter(self) -> RawArrayIter<'a> {
        self.iter()
    }
}

pub struct RawArrayIter<'a> {
    left: usize,
    rest: &'a [u8],
}

impl<'a> Iterator for RawArrayIter<'a> {
    type Item = RawValue<'a>;

    fn next(&mut self) -> Option<RawValue<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (v, tail) = split_value(self.rest).ok()?;
        self.rest = tail;
        Some(v)
    }
}

/// Re-emits the value through any serde serializer without building a `Value`
/// (so a borrowed field can go straight into an effect's row or payload).
impl serde::Serialize for RawValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        match self.head() {
            Head::Nil => s.serialize_unit(),
            Head::Bool(b) => s.serialize_bool(b),
            Head::Int(i) => s.serialize_i64(i),
            Head::BigUint(u) => s.serialize_f64(u as f64),
            Head::F32(f) => s.serialize_f64(f64::from(f)),
            Head::F64(f) => s.serialize_f64(f),
            Head::Str(..) => s.serialize_str(self.as_str().ok_or_else(|| S::Error::custom("string is not UTF-8"))?),
            Head::Bin(..) => Value::binary(self.as_bytes().unwrap_or_default(), 0).serialize(s),
            Head::Array(n, _) => {
                let mut seq = s.serialize_seq(Some(n))?;
                for item in self.as_array().expect("an array") {
                    seq.serialize_element(&item)?;
                }
                seq.end()
            }
            Head::Map(n, _) => {
                let mut map = s.serialize_map(Some(n))?;
                for (k, v) in self.as_map().expect("a map") {
                    map.serialize_entry(k, &v)?;
                }
                map.end()
            }
            Head::Ext(_) => Err(S::Error::custom("MessagePack ext types are not Values")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn raw(v: &Value) -> Vec<u8> {
        codec::encode(v).unwrap()
    }

    #[test]
    fn dotted_paths_walk_maps_and_arrays() {
        let doc: Value = serde_json::from_str(r#"{"a":{"b":[{"c":"x"}]},"a.b":1}"#).unwrap();
        let bytes = raw(&doc);
        let v = RawValue::parse(&bytes).unwrap();
        assert_eq!(v.get("a.b.0.c").and_then(|x| x.as_str()), Some("x"));
        assert_eq!(v.get_key("a.b").and_then(|x| x.as_i64()), Some(1));
        assert!(v.get("a.b.1").is_none());
        assert_eq!(v.to_value().unwrap(), doc);
    }

    #[test]
    fn cut_and_lying_inputs_are_errors_not_panics() {
        let bytes = raw(&serde_json::from_str::<Value>(r#"{"a":"hello","b":[1,2,3]}"#).unwrap());
        for n in 0..bytes.len() {
            assert!(RawValue::parse(&bytes[..n]).is_err(), "cut at {n}");
        }
        // An array32 claiming 4 billion items in 5 bytes.
        assert!(RawValue::parse(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(RawValue::parse(&[0xc1]).is_err());
        assert!(RawValue::parse(&[0xc0, 0xc0]).is_err());
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion_and_decoded_to_the_owned_limit() {
        let nested = |levels: usize| {
            let mut bytes = vec![0x91; levels];
            bytes.push(0xc0);
            bytes
        };
        let deep = nested(100_000);
        assert!(RawValue::parse(&deep).is_ok());
        // Unoptimized test builds use large frames: give the decode room, as the
        // 1 MiB wasm stack has room for 1024 optimized frames.
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                assert!(RawValue::parse(&deep).unwrap().to_value().is_err());
                for levels in [1000, 1100] {
                    let b = nested(levels);
                    let owned = codec::decode::<Value>(&b).map_err(|_| ());
                    let lazy = RawValue::parse(&b).unwrap().to_value().map_err(|_| ());
                    assert_eq!(owned.is_ok(), lazy.is_ok(), "{levels} levels");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
