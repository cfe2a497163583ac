//! serde between [`Value`] and the author's own types: `from_value::<Config>` and
//! `to_value(&row)`.
//!
//! Errors name the path of the bad field (`config.rules[0].keys: missing`), so a
//! plugin whose config is a `#[derive(Deserialize)]` struct tells the operator
//! which key of the manifest to fix without writing any checks itself.

use crate::value::Value;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// A serde error with the path of the field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// Path segments from the outside in (`rules`, `[0]`, `keys`).
    path: Vec<String>,
    message: String,
}

impl DeError {
    fn at(mut self, segment: String) -> DeError {
        self.path.push(segment);
        self
    }

    /// The message with the path, rooted at `root` (`config.rules[0].keys: ...`).
    pub fn with_root(&self, root: &str) -> String {
        let mut path = root.to_string();
        for seg in self.path.iter().rev() {
            if !seg.starts_with('[') && !path.is_empty() {
                path.push('.');
            }
            path.push_str(seg);
        }
        if path.is_empty() {
            self.message.clone()
        } else {
            format!("{path}: {}", self.message)
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_root(""))
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError { path: vec![], message: msg.to_string() }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError { path: vec![field.to_string()], message: "is required but missing".into() }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            path: vec![field.to_string()],
            message: format!("is not a known key (known: {})", expected.join(", ")),
        }
    }
}

/// Reads the author's type from a `Value` (a plugin's config, a payload).
/// Errors name the field's path; see [`DeError::with_root`].
pub fn from_value<'de, T: Deserialize<'de>>(value: &'de Value) -> Result<T, DeError> {
    T::deserialize(ValueDe(value))
}

/// Turns any serializable value (a row struct, a payload) into a `Value`.
pub fn to_value<T: serde::Serialize + ?Sized>(value: &T) -> Result<Value, crate::Error> {
    let bytes = crate::codec::encode(value).map_err(|e| crate::Error::new(format!("cannot serialize: {e}")))?;
    crate::codec::decode(&bytes).map_err(|e| crate::Error::new(format!("not a Value (map keys must be strings): {e}")))
}

#[derive(Clone, Copy)]
struct ValueDe<'de>(&'de Value);

impl<'de> ValueDe<'de> {
    fn unexpected(&self) -> de::Unexpected<'de> {
        match self.0 {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Int(i) => de::Unexpected::Signed(*i),
            Value::Float(f) => de::Unexpected::Float(*f),
            Value::String(s) => de::Unexpected::Str(s),
            Value::Array(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
        }
    }
}

impl<'de> de::Deserializer<'de> for ValueDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::String(s) => v.visit_borrowed_str(s),
            Value::Array(a) => v.visit_seq(Seq { items: a.iter(), index: 0 }),
            Value::Map(m) => v.visit_map(Entries { iter: m.iter(), key: None }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            Value::String(s) => v.visit_enum(s.as_str().into_deserializer()),
            Value::Map(m) if m.len() == 1 => {
                let (k, x) = m.iter().next().expect("one entry");
                v.visit_enum(Variant { name: k, content: x })
            }
            _ => Err(de::Error::invalid_type(self.unexpected(), &"a string or a map with one key")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct Seq<'de> {
    items: std::slice::Iter<'de, Value>,
    index: usize,
}

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else { return Ok(None) };
        let i = self.index;
        self.index += 1;
        seed.deserialize(ValueDe(item)).map(Some).map_err(|e| e.at(format!("[{i}]")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries<'de> {
    iter: std::collections::btree_map::Iter<'de, String, Value>,
    key: Option<(&'de String, &'de Value)>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.iter.next() else { return Ok(None) };
        self.key = Some((k, v));
        seed.deserialize(de::value::BorrowedStrDeserializer::new(k)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (k, v) = self.key.take().ok_or_else(|| <DeError as de::Error>::custom("value before key"))?;
        seed.deserialize(ValueDe(v)).map_err(|e| e.at(k.clone()))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Variant<'de> {
    name: &'de String,
    content: &'de Value,
}

impl<'de> de::EnumAccess<'de> for Variant<'de> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), DeError> {
        let name = seed.deserialize(de::value::BorrowedStrDeserializer::<DeError>::new(self.name))?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            Value::Null => Ok(()),
            _ => Err(DeError { path: vec![self.name.clone()], message: "takes no value".into() }),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(ValueDe(self.content)).map_err(|e| e.at(self.name.clone()))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(ValueDe(self.content), v).map_err(|e| e.at(self.name.clone()))
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(ValueDe(self.content), v).map_err(|e| e.at(self.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        namespace: String,
        keys: Vec<String>,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        #[default]
        Fast,
        Safe,
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn a_config_struct_reads_from_a_value() {
        let v = json(r#"{"rules":[{"namespace":"app.x","keys":["k:{_id}"],"limit":3}],"mode":"safe"}"#);
        let c: Config = from_value(&v).unwrap();
        assert_eq!(c.rules[0].limit, Some(3));
        assert_eq!(c.mode, Mode::Safe);
        assert_eq!(from_value::<Config>(&json("{}")).unwrap().rules, vec![]);
    }

    #[test]
    fn errors_name_the_path_of_the_field() {
        let e = |s: &str| from_value::<Config>(&json(s)).unwrap_err().with_root("config");
        assert_eq!(e(r#"{"rules":[{"namespace":"a.b"}]}"#), "config.rules[0].keys: is required but missing");
        assert!(e(r#"{"rules":[{"namespace":"a.b","keys":[1]}]}"#).starts_with("config.rules[0].keys[0]: invalid type"));
        assert!(e(r#"{"rulez":[]}"#).starts_with("config.rulez: is not a known key"));
        assert!(e(r#"{"rules":[{"namespace":"a.b","keys":[],"limit":-1}]}"#).starts_with("config.rules[0].limit: invalid value"));
        // 2^63 does not fit a u32 either: refused, not wrapped.
        let big = Value::Map([("rules".to_string(), Value::Array(vec![json(r#"{"namespace":"a.b","keys":[]}"#)]))].into());
        assert!(from_value::<Config>(&big).is_ok());
        assert!(e(r#"{"rules":[{"namespace":"a.b","keys":[],"limit":9223372036854775807}]}"#).contains("limit"));
        assert!(e(r#"{"mode":"slow"}"#).starts_with("config.mode: unknown variant"));
    }

    #[test]
    fn to_value_gives_maps_for_structs() {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            id: &'a str,
            n: i64,
        }
        assert_eq!(to_value(&Row { id: "a", n: 2 }).unwrap(), json(r#"{"id":"a","n":2}"#));
    }
}
