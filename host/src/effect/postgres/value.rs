//! Values to PostgreSQL: every value goes as a text parameter, cast in SQL to its
//! column's type, and the text is chosen by what kind of column receives it.
//!
//! The server's own input functions do the parsing, so a value that does not fit
//! its column (`"abc"` into a bigint) is refused by PostgreSQL with its message,
//! never mangled. docs/sinks.md has the whole table.

use oplet_sdk::Value;

/// What kind of column receives a value (from `pg_type.typcategory`, and the
/// type's name for json and jsonb).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    /// json, jsonb: the value as JSON, extended-JSON wrappers kept.
    Json,
    Bool,
    /// Integers, floats, numeric.
    Number,
    /// timestamp, timestamptz, date, time.
    DateTime,
    /// bytea.
    Bytes,
    /// uuid.
    Uuid,
    /// text, varchar, char, and every other scalar type read from text.
    Text,
    /// An array type, with its element's kind.
    Array(Box<ColumnKind>),
}

impl ColumnKind {
    /// From `typcategory` and `typname` of the column's type (and of its element
    /// type for arrays).
    pub fn from_catalog(category: u8, name: &str, elem: Option<(u8, &str)>) -> ColumnKind {
        match (category, name) {
            (b'A', _) => {
                let (c, n) = elem.unwrap_or((b'S', "text"));
                ColumnKind::Array(Box::new(ColumnKind::from_catalog(c, n, None)))
            }
            (_, "json" | "jsonb") => ColumnKind::Json,
            (_, "bytea") => ColumnKind::Bytes,
            (_, "uuid") => ColumnKind::Uuid,
            (b'B', _) => ColumnKind::Bool,
            (b'N', _) => ColumnKind::Number,
            (b'D', _) => ColumnKind::DateTime,
            _ => ColumnKind::Text,
        }
    }
}

/// The text PostgreSQL will cast into a column of `kind`; `None` is SQL NULL.
/// An error names what cannot go into such a column.
pub fn to_text(value: &Value, kind: &ColumnKind) -> Result<Option<String>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let text = match kind {
        ColumnKind::Json => value.to_json(),
        ColumnKind::Bool => match value {
            Value::Bool(b) => b.to_string(),
            // Some MongoDB-compatible servers read a stored `true` back as 1.
            Value::Int(i) => (*i != 0).to_string(),
            Value::String(s) => s.clone(),
            other => return Err(format!("{} cannot go into a boolean column", other.to_json())),
        },
        ColumnKind::Number => match value {
            Value::Float(f) => float_text(*f),
            Value::Bool(_) | Value::Array(_) => {
                return Err(format!("{} cannot go into a numeric column", value.to_json()))
            }
            other => match scalar(other) {
                Some(s) => s,
                None => return Err(format!("{} cannot go into a numeric column", other.to_json())),
            },
        },
        ColumnKind::DateTime => match (date_millis(value), date_text(value)) {
            (Some(ms), _) => iso_millis(ms),
            (None, Some(s)) => s.to_string(),
            (None, None) => match value {
                Value::String(s) => s.clone(),
                other => return Err(format!("{} cannot go into a date/time column", other.to_json())),
            },
        },
        ColumnKind::Bytes => match binary(value) {
            Some(bytes) => format!("\\x{}", hex::encode(bytes)),
            None => match value {
                Value::String(s) => s.clone(),
                other => return Err(format!("{} cannot go into a bytea column", other.to_json())),
            },
        },
        ColumnKind::Uuid => match binary(value) {
            Some(b) if b.len() == 16 => {
                let h = hex::encode(b);
                format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
            }
            _ => match scalar(value) {
                Some(s) => s,
                None => return Err(format!("{} cannot go into a uuid column", value.to_json())),
            },
        },
        ColumnKind::Text => match value {
            Value::Float(f) => float_text(*f),
            Value::Map(_) => match (date_millis(value), date_text(value)) {
                (Some(ms), _) => iso_millis(ms),
                (None, Some(s)) => s.to_string(),
                (None, None) => scalar(value).unwrap_or_else(|| value.to_json()),
            },
            other => scalar(other).unwrap_or_else(|| other.to_json()),
        },
        ColumnKind::Array(elem) => match value {
            Value::Array(items) => array_literal(items, elem)?,
            other => return Err(format!("{} cannot go into an array column (not an array)", other.to_json())),
        },
    };
    Ok(Some(text))
}

/// Strings as they are, numbers and booleans printed, and the one-key
/// extended-JSON wrappers unwrapped (`$oid`, `$numberDecimal`, `$numberLong`,
/// `$numberInt`, `$numberDouble`); `None` for anything else.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(float_text(*f)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Map(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            match (k.as_str(), v) {
                ("$oid" | "$numberDecimal" | "$numberLong" | "$numberInt" | "$numberDouble", Value::String(s)) => {
                    Some(s.clone())
                }
                ("$date", _) => date_millis(value).map(|ms| ms.to_string()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Shortest text that reads back as the same float; PostgreSQL's spellings of
/// the special values.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        format!("{f:?}")
    }
}

/// Milliseconds since the epoch of `{"$date": ms}`, `{"$date": {"$numberLong":
/// "ms"}}`, or a bare integer; `{"$date": "ISO text"}` is left to PostgreSQL.
fn date_millis(value: &Value) -> Option<i64> {
    match value {
        Value::Int(ms) => Some(*ms),
        Value::Map(m) if m.len() == 1 => match m.get("$date")? {
            Value::Int(ms) => Some(*ms),
            Value::Float(ms) if ms.is_finite() => Some(*ms as i64),
            Value::Map(inner) => inner.get("$numberLong")?.as_str()?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The text of `{"$date": "2024-01-02T03:04:05Z"}` (relaxed extended JSON), which
/// PostgreSQL parses itself.
fn date_text(value: &Value) -> Option<&str> {
    value.get("$date")?.as_str()
}

/// The bytes of `{"$binary": {"base64": "...", "subType": "..."}}` (canonical) or
/// `{"$binary": "...", "$type": "..."}` (legacy).
fn binary(value: &Value) -> Option<Vec<u8>> {
    let b = value.get("$binary")?;
    let text = b.get("base64").and_then(Value::as_str).or_else(|| b.as_str())?;
    base64_decode(text)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// `2024-01-02T03:04:05.678Z` for milliseconds since the epoch (proleptic
/// Gregorian, UTC).
pub fn iso_millis(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = crate::deadletter::civil_from_days(days);
    let (h, m, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    if year <= 0 {
        // PostgreSQL spells years before 1 AD with BC.
        return format!("{:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03}+00 BC", 1 - year);
    }
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// A PostgreSQL array literal: `{"a","b \"c\"",NULL}`, nested for nested arrays.
fn array_literal(items: &[Value], elem: &ColumnKind) -> Result<String, String> {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Array(inner) => out.push_str(&array_literal(inner, elem)?),
            other => match to_text(other, elem)? {
                None => out.push_str("NULL"),
                Some(text) => {
                    out.push('"');
                    for c in text.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            },
        }
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::Map;

    fn wrap(key: &str, v: Value) -> Value {
        Value::Map([(key.to_string(), v)].into_iter().collect::<Map>())
    }

    fn text(v: &Value, k: &ColumnKind) -> String {
        to_text(v, k).unwrap().unwrap()
    }

    #[test]
    fn extended_json_wrappers_unwrap_into_scalar_columns_and_stay_in_jsonb() {
        let oid = wrap("$oid", "65a1f0c2e4b0a1b2c3d4e5f6".into());
        assert_eq!(text(&oid, &ColumnKind::Text), "65a1f0c2e4b0a1b2c3d4e5f6");
        assert_eq!(text(&oid, &ColumnKind::Json), r#"{"$oid":"65a1f0c2e4b0a1b2c3d4e5f6"}"#);
        let dec = wrap("$numberDecimal", "42.50".into());
        assert_eq!(text(&dec, &ColumnKind::Number), "42.50");
        assert_eq!(text(&Value::Int(7), &ColumnKind::Number), "7");
        assert_eq!(text(&Value::Float(0.1), &ColumnKind::Number), "0.1");
        assert_eq!(text(&Value::Float(f64::NAN), &ColumnKind::Number), "NaN");
        assert_eq!(to_text(&Value::Null, &ColumnKind::Number).unwrap(), None);
    }

    #[test]
    fn dates_become_iso_timestamps_in_utc() {
        let d = wrap("$date", Value::Int(1_732_370_060_123));
        assert_eq!(text(&d, &ColumnKind::DateTime), "2024-11-23T13:54:20.123Z");
        assert_eq!(text(&wrap("$date", Value::Int(0)), &ColumnKind::DateTime), "1970-01-01T00:00:00.000Z");
        assert_eq!(text(&wrap("$date", Value::Int(-1)), &ColumnKind::DateTime), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        let long = wrap("$date", wrap("$numberLong", "1732370060123".into()));
        assert_eq!(text(&long, &ColumnKind::Text), "2024-11-23T13:54:20.123Z");
        assert_eq!(text(&"2024-01-01".into(), &ColumnKind::DateTime), "2024-01-01");
        assert!(to_text(&Value::Bool(true), &ColumnKind::DateTime).is_err());
    }

    #[test]
    fn booleans_accept_the_ones_some_servers_send() {
        assert_eq!(text(&Value::Int(1), &ColumnKind::Bool), "true");
        assert_eq!(text(&Value::Bool(false), &ColumnKind::Bool), "false");
        assert!(to_text(&Value::Array(vec![]), &ColumnKind::Bool).is_err());
    }

    #[test]
    fn text_that_looks_like_sql_is_only_text() {
        let evil = Value::from("x'); DROP TABLE t; --");
        assert_eq!(text(&evil, &ColumnKind::Text), "x'); DROP TABLE t; --");
        assert_eq!(text(&evil, &ColumnKind::Json), r#""x'); DROP TABLE t; --""#);
    }

    #[test]
    fn arrays_quote_every_element_and_nest() {
        let v = Value::Array(vec!["a".into(), "b \"c\" \\".into(), Value::Null]);
        assert_eq!(text(&v, &ColumnKind::Array(Box::new(ColumnKind::Text))), r#"{"a","b \"c\" \\",NULL}"#);
        let nested = Value::Array(vec![Value::Array(vec![Value::Int(1)]), Value::Array(vec![Value::Int(2)])]);
        assert_eq!(text(&nested, &ColumnKind::Array(Box::new(ColumnKind::Number))), r#"{{"1"},{"2"}}"#);
        assert!(to_text(&Value::Int(1), &ColumnKind::Array(Box::new(ColumnKind::Text))).is_err());
    }

    #[test]
    fn binary_goes_into_bytea_as_hex_and_into_uuid_as_its_text() {
        let mut inner = Map::new();
        inner.insert("base64".into(), "AAECAwQFBgcICQoLDA0ODw==".into());
        inner.insert("subType".into(), "04".into());
        let bin = wrap("$binary", Value::Map(inner));
        assert_eq!(text(&bin, &ColumnKind::Bytes), "\\x000102030405060708090a0b0c0d0e0f");
        assert_eq!(text(&bin, &ColumnKind::Uuid), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn kinds_come_from_the_catalog() {
        assert_eq!(ColumnKind::from_catalog(b'U', "jsonb", None), ColumnKind::Json);
        assert_eq!(ColumnKind::from_catalog(b'N', "int8", None), ColumnKind::Number);
        assert_eq!(
            ColumnKind::from_catalog(b'A', "_text", Some((b'S', "text"))),
            ColumnKind::Array(Box::new(ColumnKind::Text))
        );
    }
}
