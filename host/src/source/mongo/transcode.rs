//! Raw BSON → the event's MessagePack bytes, in one pass, with no `Value` tree.
//!
//! The MongoDB source reads each change as a raw BSON document; this module writes
//! the ABI v1 `Event` (docs/abi.md §7) straight from it, BSON types taking the
//! extended-JSON shapes of §7.4. The bytes are written once and shared by every
//! plugin the event goes to; the host reads what it needs (namespace, operation,
//! id) from the `ChangeHeader` it returns. `seq` is written as a fixed-width u64 so
//! it can be set when the event is numbered, without re-encoding.

use super::elements::{Elements, Val};
use mongodb::bson::raw::{RawBsonRef, RawDocument};
use oplet_sdk::OperationType;
use rmp::encode as mp;

/// Where a map or array header was reserved, to be patched with its length.
struct Open(usize);

/// What `document_with_id` did with a document's top-level `_id`.
struct WrittenId {
    /// It was replaced by (or, missing, given) the caller's.
    replaced: bool,
    /// Where the first `_id` written sits in the buffer, if the document has one.
    at: Option<std::ops::Range<usize>>,
}

/// The MessagePack of one event being written.
pub struct Writer {
    buf: Vec<u8>,
}

/// The header fields the host itself needs (filtering, ids, logs, dead letters).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeHeader {
    pub id: String,
    pub op: OperationType,
    pub db: std::sync::Arc<str>,
    pub coll: std::sync::Arc<str>,
    pub time_ms: i64,
}

/// Offset of the 8 bytes of `seq` in every event this module writes (the
/// envelope's `Event::set_seq` patches them there).
pub use crate::envelope::SEQ_AT;

impl Writer {
    pub fn with_capacity(n: usize) -> Writer {
        Writer { buf: Vec::with_capacity(n) }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn str(&mut self, s: &str) {
        mp::write_str(&mut self.buf, s).expect("writing to a Vec cannot fail");
    }

    fn int(&mut self, i: i64) {
        mp::write_sint(&mut self.buf, i).expect("writing to a Vec cannot fail");
    }

    fn nil(&mut self) {
        mp::write_nil(&mut self.buf).expect("writing to a Vec cannot fail");
    }

    /// A map or array whose length is known only at its end: a 32-bit header,
    /// patched by `close` (MessagePack readers accept any header width).
    fn open(&mut self, marker: u8) -> Open {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[marker, 0, 0, 0, 0]);
        Open(at)
    }

    fn close(&mut self, open: Open, len: u32) {
        self.buf[open.0 + 1..open.0 + 5].copy_from_slice(&len.to_be_bytes());
    }

    fn map_len(&mut self, len: u32) {
        mp::write_map_len(&mut self.buf, len).expect("writing to a Vec cannot fail");
    }

    /// `{key: <value written by f>}`: the extended-JSON wrappers.
    fn wrap(&mut self, key: &str, f: impl FnOnce(&mut Writer)) {
        self.map_len(1);
        self.str(key);
        f(self);
    }

    /// A whole document as a map, in document order.
    pub fn document(&mut self, doc: &RawDocument) -> Result<(), String> {
        self.document_with_id(doc, None).map(|_| ())
    }

    /// A document; with `id`, its top-level `_id` is written as `id` (already
    /// transcoded) whenever it differs or is missing, as the converter does.
    /// Says whether it did, and where the `_id` written sits in the buffer.
    fn document_with_id(&mut self, doc: &RawDocument, id: Option<&[u8]>) -> Result<WrittenId, String> {
        let open = self.open(0xdf);
        let mut n: u32 = 0;
        let mut written = WrittenId { replaced: false, at: None };
        for element in Elements::new(doc) {
            let (key, value) = element?;
            self.str(key);
            let at = self.buf.len();
            self.val(value)?;
            if key == "_id" && written.at.is_none() {
                if let Some(id) = id {
                    if &self.buf[at..] != id {
                        self.buf.truncate(at);
                        self.buf.extend_from_slice(id);
                        written.replaced = true;
                    }
                }
                written.at = Some(at..self.buf.len());
            }
            n += 1;
        }
        if let (Some(id), None) = (id, &written.at) {
            self.str("_id");
            self.buf.extend_from_slice(id);
            written.replaced = true;
            n += 1;
        }
        self.close(open, n);
        Ok(written)
    }

    /// An array, given as the document it is on the wire (keys "0", "1", ...).
    fn array(&mut self, arr: &RawDocument) -> Result<(), String> {
        let open = self.open(0xdd);
        let mut n: u32 = 0;
        for element in Elements::new(arr) {
            self.val(element?.1)?;
            n += 1;
        }
        self.close(open, n);
        Ok(())
    }

    fn val(&mut self, value: Val<'_>) -> Result<(), String> {
        match value {
            Val::Bson(v) => self.value(v),
            Val::Array(a) => self.array(a),
        }
    }

    /// One BSON value, in the shape of docs/abi.md §7.4.
    pub fn value(&mut self, value: RawBsonRef<'_>) -> Result<(), String> {
        match value {
            RawBsonRef::Double(f) => mp::write_f64(&mut self.buf, f).expect("writing to a Vec cannot fail"),
            RawBsonRef::String(s) => self.str(s),
            RawBsonRef::Array(a) => self.array(RawDocument::from_bytes(a.as_bytes()).map_err(|e| e.to_string())?)?,
            RawBsonRef::Document(d) => self.document(d)?,
            RawBsonRef::Boolean(b) => mp::write_bool(&mut self.buf, b).expect("writing to a Vec cannot fail"),
            RawBsonRef::Null | RawBsonRef::Undefined => self.nil(),
            RawBsonRef::Int32(i) => self.int(i.into()),
            RawBsonRef::Int64(i) => self.int(i),
            RawBsonRef::ObjectId(oid) => {
                let hex = hex24(&oid.bytes());
                // Safe: hex digits are ASCII.
                self.wrap("$oid", |w| w.str(std::str::from_utf8(&hex).expect("hex is ASCII")));
            }
            RawBsonRef::DateTime(d) => self.wrap("$date", |w| w.int(d.timestamp_millis())),
            RawBsonRef::Decimal128(d) => self.wrap("$numberDecimal", |w| w.str(&d.to_string())),
            RawBsonRef::Timestamp(ts) => self.wrap("$timestamp", |w| {
                w.map_len(2);
                w.str("i");
                w.int(ts.increment.into());
                w.str("t");
                w.int(ts.time.into());
            }),
            RawBsonRef::Binary(b) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(b.bytes);
                let subtype = u8::from(b.subtype);
                self.wrap("$binary", |w| {
                    w.map_len(2);
                    w.str("base64");
                    w.str(&encoded);
                    w.str("subType");
                    let digits = [HEX[usize::from(subtype >> 4)], HEX[usize::from(subtype & 0xf)]];
                    w.str(std::str::from_utf8(&digits).expect("hex is ASCII"));
                });
            }
            RawBsonRef::RegularExpression(r) => self.wrap("$regularExpression", |w| {
                w.map_len(2);
                w.str("options");
                w.str(r.options);
                w.str("pattern");
                w.str(r.pattern);
            }),
            RawBsonRef::JavaScriptCode(code) => self.wrap("$code", |w| w.str(code)),
            RawBsonRef::Symbol(s) => self.wrap("$symbol", |w| w.str(s)),
            RawBsonRef::MaxKey => self.wrap("$maxKey", |w| w.int(1)),
            RawBsonRef::MinKey => self.wrap("$minKey", |w| w.int(1)),
            // Code with scope and DBPointer: deprecated, rare, and their parts are not
            // all public in the raw API; the driver's relaxed extended JSON says them well.
            other @ (RawBsonRef::JavaScriptCodeWithScope(_) | RawBsonRef::DbPointer(_)) => {
                let json = mongodb::bson::Bson::try_from(other).map_err(|e| e.to_string())?.into_relaxed_extjson();
                let v: oplet_sdk::Value = serde_json::from_value(json).map_err(|e| e.to_string())?;
                oplet_sdk::codec::encode_into(&mut self.buf, &v).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// One small BSON value (an `_id`, a polling field) as an owned `Value`, through
/// the same mapping, for the host's own keys and ids; never a whole document.
pub fn owned(value: RawBsonRef<'_>) -> Result<oplet_sdk::Value, String> {
    let mut w = Writer::with_capacity(32);
    w.value(value)?;
    oplet_sdk::codec::decode(&w.buf).map_err(|e| e.to_string())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex24(bytes: &[u8; 12]) -> [u8; 24] {
    let mut out = [0u8; 24];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// The parts of a raw change event the transcoder reads, found by the caller in
/// one pass over its top-level fields.
#[derive(Default)]
pub struct Parts<'a> {
    pub key: Option<RawBsonRef<'a>>,
    pub full: Option<RawBsonRef<'a>>,
    pub before: Option<RawBsonRef<'a>>,
    pub update: Option<RawBsonRef<'a>>,
}

/// What the transcoder noticed that the caller may want to report once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oddity {
    FullDocumentIdDiffers,
    UpdateWithoutDescription,
    RemovedFieldNotString,
}

/// Writes the whole `Event` for a change: header fields from `header`, the body
/// from `parts`. `seq` is 0 until `set_seq`.
pub fn change_event(
    source: &str,
    header: &ChangeHeader,
    parts: &Parts<'_>,
    odd: &mut dyn FnMut(Oddity),
) -> Result<Vec<u8>, String> {
    let mut w = Writer::with_capacity(256 + parts.full.map_or(0, raw_len) + parts.update.map_or(0, raw_len));
    // The event map (5 fields), `seq` first at a fixed offset (SEQ_AT).
    w.map_len(5);
    w.str("seq");
    debug_assert_eq!(w.buf.len() + 1, SEQ_AT);
    w.buf.push(0xcf);
    w.buf.extend_from_slice(&[0; 8]);
    w.str("id");
    w.str(&header.id);
    w.str("source");
    w.str(source);
    w.str("time_ms");
    w.int(header.time_ms);
    w.str("body");
    w.map_len(2);
    w.str("kind");
    w.str("change");
    w.str("data");
    w.map_len(8);
    w.str("op");
    w.str(header.op.as_str());
    w.str("db");
    w.str(&header.db);
    w.str("coll");
    w.str(&header.coll);

    // documentKey, kept aside: fullDocument._id is taken from it.
    w.str("key");
    let key_id = match parts.key {
        Some(RawBsonRef::Document(d)) => w.document_with_id(d, None).map_err(|e| format!("field documentKey: {e}"))?.at,
        Some(v) => {
            w.value(v).map_err(|e| format!("field documentKey: {e}"))?;
            None
        }
        None => {
            w.nil();
            None
        }
    };
    // A copy (the buffer grows below); ids are small, so usually on the stack.
    let mut small = [0u8; 64];
    let spilled: Vec<u8>;
    let key_id: Option<&[u8]> = match key_id {
        Some(r) if r.len() <= small.len() => {
            small[..r.len()].copy_from_slice(&w.buf[r.clone()]);
            Some(&small[..r.len()])
        }
        Some(r) => {
            spilled = w.buf[r].to_vec();
            Some(&spilled)
        }
        None => None,
    };

    w.str("full_document");
    match parts.full {
        Some(RawBsonRef::Document(d)) => {
            let written = w.document_with_id(d, key_id).map_err(|e| format!("field fullDocument: {e}"))?;
            if written.replaced {
                odd(Oddity::FullDocumentIdDiffers);
            }
        }
        Some(RawBsonRef::Null) | Some(RawBsonRef::Undefined) | None => w.nil(),
        Some(other) => w.value(other).map_err(|e| format!("field fullDocument: {e}"))?,
    }

    let (updated, removed) = match parts.update {
        Some(RawBsonRef::Document(d)) => (
            match d.get("updatedFields") {
                Ok(Some(RawBsonRef::Document(u))) => Some(u),
                _ => None,
            },
            match d.get("removedFields") {
                Ok(Some(RawBsonRef::Array(a))) => Some(a),
                _ => None,
            },
        ),
        _ => {
            if header.op == OperationType::Update {
                odd(Oddity::UpdateWithoutDescription);
            }
            (None, None)
        }
    };
    w.str("updated_fields");
    match updated {
        Some(u) => w.document(u).map_err(|e| format!("updatedFields: {e}"))?,
        None => w.nil(),
    }
    w.str("removed_fields");
    match removed {
        Some(a) => {
            let open = w.open(0xdd);
            let mut n = 0;
            for v in a {
                match v {
                    Ok(RawBsonRef::String(s)) => {
                        w.str(s);
                        n += 1;
                    }
                    _ => odd(Oddity::RemovedFieldNotString),
                }
            }
            w.close(open, n);
        }
        None => w.nil(),
    }
    w.str("before");
    match parts.before {
        Some(RawBsonRef::Null) | Some(RawBsonRef::Undefined) | None => w.nil(),
        Some(v) => w.value(v).map_err(|e| format!("field fullDocumentBeforeChange: {e}"))?,
    }
    Ok(w.into_bytes())
}

fn raw_len(v: RawBsonRef<'_>) -> usize {
    match v {
        RawBsonRef::Document(d) => d.as_bytes().len(),
        RawBsonRef::Array(a) => a.as_bytes().len(),
        _ => 16,
    }
}

/// Sets the `seq` of an event written by this module.
pub fn set_seq(bytes: &mut [u8], seq: u64) {
    bytes[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::spec::BinarySubtype;
    use mongodb::bson::{rawdoc, Binary, DateTime, Decimal128, Regex, Timestamp};
    use oplet_sdk::{codec, Change, Event, EventBody, Value};

    fn transcoded(doc: &RawDocument) -> Value {
        let mut w = Writer::with_capacity(64);
        w.document(doc).unwrap();
        codec::decode(&w.into_bytes()).unwrap()
    }

    fn one(value: impl Into<mongodb::bson::RawBson>) -> Value {
        let doc = rawdoc! { "v": value.into() };
        transcoded(&doc).get("v").cloned().unwrap()
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
        assert_eq!(
            json(&transcoded(&doc)),
            r#"{"arr":[1,"two",{"three":3}],"f":1.5,"i32":7,"i64":-9000000000,"n":null,"s":"text","sub":{"a":{"b":false}},"t":true}"#
        );
    }

    #[test]
    fn bson_only_types_take_the_documented_extended_json_shapes() {
        let oid = ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        assert_eq!(json(&one(oid)), r#"{"$oid":"65a1f0c2e4b0a1b2c3d4e5f6"}"#);
        assert_eq!(json(&one(DateTime::from_millis(1_700_000_000_000))), r#"{"$date":1700000000000}"#);
        assert_eq!(json(&one(DateTime::from_millis(-86_400_000))), r#"{"$date":-86400000}"#, "dates before 1970 stay millis");
        let dec: Decimal128 = "12.50".parse().unwrap();
        assert_eq!(json(&one(dec)), r#"{"$numberDecimal":"12.50"}"#);
        let bin = Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] };
        assert_eq!(json(&one(bin)), r#"{"$binary":{"base64":"AQID","subType":"00"}}"#);
        let uuid = Binary { subtype: BinarySubtype::Uuid, bytes: vec![0xff; 16] };
        assert_eq!(one(uuid).get_path("$binary.subType"), Some(&Value::from("04")));
        let user = Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: vec![] };
        assert_eq!(json(&one(user)), r#"{"$binary":{"base64":"","subType":"80"}}"#);
        let ts = Timestamp { time: 1_700_000_000, increment: 3 };
        assert_eq!(json(&one(ts)), r#"{"$timestamp":{"i":3,"t":1700000000}}"#);
        assert_eq!(one(i64::MIN), Value::Int(i64::MIN));
        assert!(one(f64::NAN).as_f64().is_some_and(f64::is_nan));
        assert_eq!(one(f64::NEG_INFINITY), Value::Float(f64::NEG_INFINITY));
    }

    #[test]
    fn keys_with_dots_dollars_unicode_and_deep_nesting_come_through() {
        let mut deep = rawdoc! { "leaf": "x" };
        for i in 0..100 {
            deep = rawdoc! { format!("l{i}"): deep };
        }
        let doc = rawdoc! { "": "empty key", "a.b": "dotted", "$x": "dollar", "ünï": "cödé ✓", "deep": deep };
        let v = transcoded(&doc);
        for (k, want) in [("", "empty key"), ("a.b", "dotted"), ("$x", "dollar"), ("ünï", "cödé ✓")] {
            assert_eq!(v.get(k), Some(&Value::from(want)), "{k}");
        }
        let mut at = v.get("deep").unwrap();
        for i in (0..100).rev() {
            at = at.get(&format!("l{i}")).unwrap();
        }
        assert_eq!(at.get("leaf"), Some(&Value::from("x")));
    }

    #[test]
    fn the_sdk_reads_the_shapes_back_as_keys() {
        let oid = ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        assert_eq!(one(oid).to_key_string(), "65a1f0c2e4b0a1b2c3d4e5f6");
        assert_eq!(one(DateTime::from_millis(42)).to_key_string(), "42");
        assert_eq!(one("12.50".parse::<Decimal128>().unwrap()).to_key_string(), "12.50");
        let doc = rawdoc! { "_id": oid };
        assert_eq!(owned(doc.get("_id").unwrap().unwrap()).unwrap().to_key_string(), "65a1f0c2e4b0a1b2c3d4e5f6");
    }

    #[test]
    fn legacy_types_become_opaque_dollar_maps() {
        assert_eq!(json(&one(Regex { pattern: "^a".into(), options: "i".into() })), r#"{"$regularExpression":{"options":"i","pattern":"^a"}}"#);
        assert_eq!(json(&one(mongodb::bson::RawBson::JavaScriptCode("f()".into()))), r#"{"$code":"f()"}"#);
        assert_eq!(json(&one(mongodb::bson::RawBson::MaxKey)), r#"{"$maxKey":1}"#);
        assert_eq!(json(&one(mongodb::bson::RawBson::MinKey)), r#"{"$minKey":1}"#);
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
        assert!(Writer::with_capacity(16).document(broken).is_err());
    }

    fn event(raw: &RawDocument, op: OperationType) -> (Event, Vec<Oddity>) {
        let mut parts = Parts::default();
        for element in raw {
            let (name, value) = element.unwrap();
            match name {
                "documentKey" => parts.key = Some(value),
                "fullDocument" => parts.full = Some(value),
                "fullDocumentBeforeChange" => parts.before = Some(value),
                "updateDescription" => parts.update = Some(value),
                _ => {}
            }
        }
        let header = ChangeHeader { id: "app.items:t1".into(), op, db: "app".into(), coll: "items".into(), time_ms: 42 };
        let mut seen = Vec::new();
        let mut bytes = change_event("mongo", &header, &parts, &mut |o| seen.push(o)).unwrap();
        set_seq(&mut bytes, 1234);
        (codec::decode(&bytes).unwrap(), seen)
    }

    fn change(e: &Event) -> &Change {
        match &e.body {
            EventBody::Change(c) => c,
            _ => panic!("a change"),
        }
    }

    #[test]
    fn an_update_reads_back_with_every_field_and_its_seq() {
        let raw = rawdoc! {
            "documentKey": { "_id": "a" },
            "updateDescription": { "updatedFields": { "n": 2_i32, "p.q": true }, "removedFields": ["old", 5_i32], "truncatedArrays": [] },
            "fullDocument": { "_id": "a", "n": 2_i32 },
            "fullDocumentBeforeChange": { "_id": "a", "n": 1_i32 },
        };
        let (e, odd) = event(&raw, OperationType::Update);
        assert_eq!((e.seq, e.id.as_str(), e.source.as_str(), e.time_ms), (1234, "app.items:t1", "mongo", 42));
        let ch = change(&e);
        assert_eq!(ch.op, OperationType::Update);
        assert_eq!(ch.key.to_json(), r#"{"_id":"a"}"#);
        assert_eq!(ch.updated_fields.as_ref().unwrap().get("p.q"), Some(&Value::Bool(true)));
        assert_eq!(ch.removed_fields, Some(vec!["old".to_string()]));
        assert_eq!(ch.full_document.as_ref().unwrap().get("n"), Some(&Value::Int(2)));
        assert_eq!(ch.before.as_ref().unwrap().get("n"), Some(&Value::Int(1)));
        assert_eq!(odd, vec![Oddity::RemovedFieldNotString]);
    }

    #[test]
    fn full_document_id_comes_from_the_document_key_as_the_converter_does() {
        let oid = ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        let raw = rawdoc! {
            "documentKey": { "_id": oid },
            "fullDocument": { "_id": { "__neosqlite_objectid__": true, "id": "65a1f0c2e4b0a1b2c3d4e5f6" }, "connection": 1_i32 },
        };
        let (e, odd) = event(&raw, OperationType::Update);
        let ch = change(&e);
        assert_eq!(ch.full_document.as_ref().unwrap().get("_id"), ch.key.get("_id"));
        assert_eq!(odd, vec![Oddity::FullDocumentIdDiffers, Oddity::UpdateWithoutDescription]);
        let missing = rawdoc! { "documentKey": { "_id": 7_i32 }, "fullDocument": { "x": 1_i32 } };
        let (e, _) = event(&missing, OperationType::Insert);
        assert_eq!(change(&e).full_document.as_ref().unwrap().get("_id"), Some(&Value::Int(7)));
        let same = rawdoc! { "documentKey": { "_id": 7_i32 }, "fullDocument": { "_id": 7_i32 } };
        assert_eq!(event(&same, OperationType::Insert).1, vec![]);
    }

    #[test]
    fn a_delete_has_no_document_and_null_documents_are_nil() {
        let raw = rawdoc! { "documentKey": { "_id": "a" }, "fullDocument": null, "fullDocumentBeforeChange": null };
        let (e, _) = event(&raw, OperationType::Delete);
        let ch = change(&e);
        assert_eq!((ch.full_document.as_ref(), ch.before.as_ref(), ch.updated_fields.as_ref()), (None, None, None));
    }

    #[test]
    fn a_broken_document_is_an_error_naming_the_field() {
        let raw = rawdoc! { "documentKey": { "_id": "a" }, "fullDocument": { "s": "text" } };
        let mut bytes = raw.into_bytes();
        let at = bytes.windows(5).position(|w| w == b"text\0").unwrap() - 4;
        bytes[at] = 200;
        let broken = RawDocument::from_bytes(&bytes).unwrap();
        let mut parts = Parts::default();
        for element in broken {
            let Ok((name, value)) = element else { break };
            if name == "documentKey" {
                parts.key = Some(value);
            } else if name == "fullDocument" {
                parts.full = Some(value);
            }
        }
        let header = ChangeHeader { id: "x".into(), op: OperationType::Insert, db: "d".into(), coll: "c".into(), time_ms: 0 };
        let err = change_event("mongo", &header, &parts, &mut |_| {}).unwrap_err();
        assert!(err.contains("fullDocument"), "{err}");
    }
}
