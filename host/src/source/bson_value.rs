//! BSON → `oplet_sdk::Value`: the one shape in which documents reach plugins.
//!
//! The MongoDB source reads change events and polled documents as raw BSON and
//! converts them here, in one pass and without an intermediate `Document`. Types
//! JSON lacks take the extended-JSON shapes of docs/abi.md §7.4 (`{"$oid": hex}`,
//! `{"$date": ms}`, `{"$numberDecimal": s}`, `{"$binary": {"base64", "subType"}}`,
//! `{"$timestamp": {"t", "i"}}`); the rare legacy types become opaque `$` maps.

use base64::Engine as _;
use mongodb::bson::raw::{Error as RawError, RawArray, RawBsonRef, RawDocument};
use mongodb::bson::Bson;
use oplet_sdk::{Map, Value};

/// A whole document as a `Value::Map`.
pub fn document(doc: &RawDocument) -> Result<Value, RawError> {
    Ok(Value::Map(map(doc)?))
}

/// A document's fields as a map (for `updatedFields` and the like).
pub fn map(doc: &RawDocument) -> Result<Map, RawError> {
    let mut out = Map::new();
    for element in doc {
        let (key, value) = element?;
        out.insert(key.to_string(), value_of(value)?);
    }
    Ok(out)
}

fn array(arr: &RawArray) -> Result<Value, RawError> {
    let mut out = Vec::new();
    for value in arr {
        out.push(value_of(value?)?);
    }
    Ok(Value::Array(out))
}

/// One BSON value.
pub fn value_of(value: RawBsonRef<'_>) -> Result<Value, RawError> {
    Ok(match value {
        RawBsonRef::Double(f) => Value::Float(f),
        RawBsonRef::String(s) => Value::String(s.to_string()),
        RawBsonRef::Array(a) => array(a)?,
        RawBsonRef::Document(d) => document(d)?,
        RawBsonRef::Boolean(b) => Value::Bool(b),
        RawBsonRef::Null | RawBsonRef::Undefined => Value::Null,
        RawBsonRef::Int32(i) => Value::Int(i.into()),
        RawBsonRef::Int64(i) => Value::Int(i),
        RawBsonRef::ObjectId(oid) => wrap("$oid", Value::String(hex(&oid.bytes()))),
        RawBsonRef::DateTime(d) => wrap("$date", Value::Int(d.timestamp_millis())),
        RawBsonRef::Decimal128(d) => wrap("$numberDecimal", Value::String(d.to_string())),
        RawBsonRef::Timestamp(ts) => wrap(
            "$timestamp",
            Value::Map(Map::from([("t".into(), Value::Int(ts.time.into())), ("i".into(), Value::Int(ts.increment.into()))])),
        ),
        RawBsonRef::Binary(b) => wrap(
            "$binary",
            Value::Map(Map::from([
                ("base64".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(b.bytes))),
                ("subType".into(), Value::String(format!("{:02x}", u8::from(b.subtype)))),
            ])),
        ),
        RawBsonRef::RegularExpression(r) => wrap(
            "$regularExpression",
            Value::Map(Map::from([
                ("pattern".into(), Value::String(r.pattern.to_string())),
                ("options".into(), Value::String(r.options.to_string())),
            ])),
        ),
        RawBsonRef::JavaScriptCode(code) => wrap("$code", Value::String(code.to_string())),
        RawBsonRef::Symbol(s) => wrap("$symbol", Value::String(s.to_string())),
        RawBsonRef::MaxKey => wrap("$maxKey", Value::Int(1)),
        RawBsonRef::MinKey => wrap("$minKey", Value::Int(1)),
        // Code with scope and DBPointer: deprecated, rare, and their parts are not all
        // public in the raw API; the driver's relaxed extended JSON says them well.
        other @ (RawBsonRef::JavaScriptCodeWithScope(_) | RawBsonRef::DbPointer(_)) => {
            let json = Bson::try_from(other)?.into_relaxed_extjson();
            serde_json::from_value(json).unwrap_or(Value::Null)
        }
    })
}

/// Lowercase hex, without the per-character iterator of `ObjectId::to_hex` (ids
/// are in every event: `_id`, `documentKey`).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn wrap(key: &str, value: Value) -> Value {
    Value::Map(Map::from([(key.to_string(), value)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::spec::BinarySubtype;
    use mongodb::bson::{rawdoc, Binary, DateTime, Decimal128, Regex, Timestamp};

    fn one(value: impl Into<mongodb::bson::RawBson>) -> Value {
        let doc = rawdoc! { "v": value.into() };
        document(&doc).unwrap().get("v").cloned().unwrap()
    }

    fn json(v: &Value) -> String {
        v.to_json()
    }

    #[test]
    fn json_types_map_to_themselves() {
        let doc = rawdoc! {
            "s": "text", "i32": 7_i32, "i64": -9_000_000_000_i64, "f": 1.5, "t": true, "n": null,
            "arr": [1_i32, "two", { "three": 3_i32 }], "sub": { "a": { "b": false } },
        };
        let v = document(&doc).unwrap();
        assert_eq!(
            json(&v),
            r#"{"arr":[1,"two",{"three":3}],"f":1.5,"i32":7,"i64":-9000000000,"n":null,"s":"text","sub":{"a":{"b":false}},"t":true}"#
        );
    }

    #[test]
    fn bson_only_types_take_the_documented_extended_json_shapes() {
        let oid = ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        assert_eq!(json(&one(oid)), r#"{"$oid":"65a1f0c2e4b0a1b2c3d4e5f6"}"#);
        assert_eq!(json(&one(DateTime::from_millis(1_700_000_000_000))), r#"{"$date":1700000000000}"#);
        assert_eq!(json(&one(DateTime::from_millis(-1))), r#"{"$date":-1}"#, "dates before 1970 stay millis");
        let dec: Decimal128 = "12.50".parse().unwrap();
        assert_eq!(json(&one(dec)), r#"{"$numberDecimal":"12.50"}"#);
        let bin = Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] };
        assert_eq!(json(&one(bin)), r#"{"$binary":{"base64":"AQID","subType":"00"}}"#);
        let uuid = Binary { subtype: BinarySubtype::Uuid, bytes: vec![0xff; 16] };
        assert_eq!(one(uuid).get_path("$binary.subType"), Some(&Value::from("04")));
        let ts = Timestamp { time: 1_700_000_000, increment: 3 };
        assert_eq!(json(&one(ts)), r#"{"$timestamp":{"i":3,"t":1700000000}}"#);
    }

    #[test]
    fn the_sdk_reads_the_shapes_back_as_keys() {
        let oid = ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        assert_eq!(one(oid).to_key_string(), "65a1f0c2e4b0a1b2c3d4e5f6");
        assert_eq!(one(DateTime::from_millis(42)).to_key_string(), "42");
        assert_eq!(one("12.50".parse::<Decimal128>().unwrap()).to_key_string(), "12.50");
    }

    #[test]
    fn legacy_types_become_opaque_dollar_maps() {
        assert_eq!(json(&one(Regex { pattern: "^a".into(), options: "i".into() })), r#"{"$regularExpression":{"options":"i","pattern":"^a"}}"#);
        assert_eq!(json(&one(mongodb::bson::RawBson::JavaScriptCode("f()".into()))), r#"{"$code":"f()"}"#);
        assert_eq!(json(&one(mongodb::bson::RawBson::MaxKey)), r#"{"$maxKey":1}"#);
        assert_eq!(one(mongodb::bson::RawBson::Undefined), Value::Null);
        let with_scope = mongodb::bson::RawBson::JavaScriptCodeWithScope(mongodb::bson::raw::RawJavaScriptCodeWithScope {
            code: "x".into(),
            scope: rawdoc! { "a": 1_i32 },
        });
        assert_eq!(one(with_scope).get("$code"), Some(&Value::from("x")));
    }

    #[test]
    fn a_truncated_document_is_an_error_not_a_panic() {
        let doc = rawdoc! { "a": "some text", "b": 1_i32 };
        let mut bytes = doc.into_bytes();
        // Claim a longer string than the document holds.
        bytes[4 + 1 + 2] = 200;
        let broken = RawDocument::from_bytes(&bytes).unwrap();
        assert!(document(broken).is_err());
    }
}
