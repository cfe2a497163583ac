//! `Value`: the one shape in which documents and payloads cross the boundary.
//!
//! JSON-like (null, bool, 64-bit integer, float, string, array, map). BSON types
//! without a JSON equivalent arrive in extended-JSON style: `{"$oid": "hex"}`,
//! `{"$date": millis}`, `{"$numberDecimal": "1.50"}`, `{"$binary": {"base64",
//! "subType"}}`, `{"$timestamp": {"t", "i"}}`. Helpers read ids and flags the way
//! MongoDB-compatible servers actually send them (a `true` may come back as `1`).

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// A document or map of fields.
pub type Map = BTreeMap<String, Value>;

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Array(Vec<Value>),
    Map(Map),
}

impl Value {
    /// The field `key` of a map, or `None`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// A nested field by dotted path (`"profile.name"`, `"items.0.sku"`).
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        let mut cur = self;
        for part in path.split('.') {
            cur = match cur {
                Value::Map(m) => m.get(part)?,
                Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Strict boolean: only `true` / `false`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Lenient truth as some MongoDB-compatible servers store it: `true`, or a
    /// non-zero number (a `$set` of `true` may read back as `1`).
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            _ => false,
        }
    }

    /// The value as text for building keys and messages: strings as they are,
    /// numbers and booleans printed, `{"$oid": h}` as `h`, `{"$numberDecimal": d}`
    /// as `d`, `{"$date": ms}` as the millis; anything else as compact JSON.
    pub fn to_key_string(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".to_string(),
            Value::Map(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                match (k.as_str(), v) {
                    ("$oid", Value::String(s)) | ("$numberDecimal", Value::String(s)) => s.clone(),
                    ("$date", Value::Int(ms)) => ms.to_string(),
                    _ => self.to_json(),
                }
            }
            _ => self.to_json(),
        }
    }

    /// Bytes as the extended-JSON wrapper `{"$binary": {"base64", "subType"}}`
    /// (docs/abi.md §7.4), the shape the host sends BSON binary in.
    pub fn binary(bytes: &[u8], subtype: u8) -> Value {
        let mut inner = Map::new();
        inner.insert("base64".into(), Value::String(crate::base64::encode(bytes)));
        inner.insert("subType".into(), Value::String(format!("{subtype:02x}")));
        let mut m = Map::new();
        m.insert("$binary".into(), Value::Map(inner));
        Value::Map(m)
    }

    /// The bytes and subtype of a `{"$binary": ...}` wrapper (as the host sends
    /// BSON binary, and as a MessagePack `bin` reads); `None` for anything else.
    pub fn as_binary(&self) -> Option<(Vec<u8>, u8)> {
        let inner = self.as_map().filter(|m| m.len() == 1)?.get("$binary")?;
        let bytes = crate::base64::decode(inner.get("base64")?.as_str()?)?;
        let subtype = u8::from_str_radix(inner.get("subType")?.as_str()?, 16).ok()?;
        Some((bytes, subtype))
    }

    /// Compact JSON text of the value (extended-JSON wrappers kept as maps).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        write_json(self, &mut out);
        out
    }
}

fn write_json(v: &Value, out: &mut String) {
    use std::fmt::Write;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_finite() => {
            let _ = write!(out, "{f:?}");
        }
        Value::Float(_) => out.push_str("null"),
        Value::String(s) => write_json_str(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_str(k, out);
                out.push(':');
                write_json(x, out);
            }
            out.push('}');
        }
    }
}

fn write_json_str(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i as i64)
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i as i64)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<Map> for Value {
    fn from(m: Map) -> Self {
        Value::Map(m)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(x) => s.serialize_str(x),
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, x) in m {
                    map.serialize_entry(k, x)?;
                }
                map.end()
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-like value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        match i64::try_from(u) {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) => Ok(Value::Float(u as f64)),
        }
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    /// A MessagePack `bin` reads as the same `{"$binary": ...}` wrapper the host
    /// uses for BSON binary (subtype `00`), so one shape means bytes everywhere.
    fn visit_bytes<E>(self, b: &[u8]) -> Result<Value, E> {
        Ok(Value::binary(b, 0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element()? {
            out.push(x);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.insert(k, v);
        }
        Ok(Value::Map(out))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_reach_nested_fields_and_array_items() {
        let mut inner = Map::new();
        inner.insert("sku".into(), "A1".into());
        let mut doc = Map::new();
        doc.insert("items".into(), Value::Array(vec![Value::Map(inner)]));
        let doc = Value::Map(doc);
        assert_eq!(doc.get_path("items.0.sku"), Some(&Value::from("A1")));
        assert_eq!(doc.get_path("items.1.sku"), None);
    }

    #[test]
    fn a_true_stored_as_one_is_truthy() {
        assert!(Value::Int(1).is_truthy());
        assert!(Value::Bool(true).is_truthy());
        assert!(!Value::Int(0).is_truthy());
        assert!(!Value::Null.is_truthy());
    }

    #[test]
    fn object_ids_print_as_their_hex_in_keys() {
        let mut m = Map::new();
        m.insert("$oid".into(), "65a1".into());
        assert_eq!(Value::Map(m).to_key_string(), "65a1");
    }

    #[test]
    fn a_messagepack_bin_reads_as_a_binary_wrapper_and_back_to_bytes() {
        let mut bytes = Vec::new();
        rmp::encode::write_bin(&mut bytes, &[0, 1, 2, 255]).unwrap();
        let v: Value = crate::codec::decode(&bytes).unwrap();
        assert_eq!(v, Value::binary(&[0, 1, 2, 255], 0));
        assert_eq!(v.as_binary(), Some((vec![0, 1, 2, 255], 0)));
        assert_eq!(v.get("$binary").and_then(|b| b.get("base64")), Some(&Value::from("AAEC/w==")));
    }

    #[test]
    fn json_text_escapes_quotes_and_control_characters() {
        let v = Value::from("a\"b\n");
        assert_eq!(v.to_json(), r#""a\"b\n""#);
    }
}
