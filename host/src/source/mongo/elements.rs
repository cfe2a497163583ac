//! The elements of a raw BSON document, read in place in one pass.
//!
//! The driver's own iterator finds each element's size, then reads it again to
//! make its value, wrapping every step in a keyed error; per change that was the
//! largest part of turning BSON into MessagePack. This one reads each element once,
//! checks every length against the document's end, and refuses what the driver's
//! would (non-UTF-8 keys and strings, booleans other than 0/1, unknown types).

use mongodb::bson::raw::{RawBinaryRef, RawBsonRef, RawDocument, RawRegexRef};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{DateTime, Decimal128, Timestamp};

/// A value as read: any BSON value, or an array, given as the document it is on
/// the wire (the driver makes no `RawArray` from bytes outside its own crate).
pub enum Val<'a> {
    Bson(RawBsonRef<'a>),
    Array(&'a RawDocument),
}

pub struct Elements<'a> {
    doc: &'a RawDocument,
    at: usize,
    done: bool,
}

impl<'a> Elements<'a> {
    pub fn new(doc: &'a RawDocument) -> Elements<'a> {
        // A `RawDocument` has its length header right and ends with its 0.
        Elements { doc, at: 4, done: false }
    }

    fn element(&mut self) -> Result<(&'a str, Val<'a>), String> {
        let bytes = self.doc.as_bytes();
        let end = bytes.len() - 1; // the document's closing 0
        let tag = bytes[self.at];
        let (key, v) = cstring(bytes, self.at + 1, end).map_err(|e| format!("malformed BSON: a key {e}"))?;
        let bad = |what: &str| format!("malformed BSON at key {key:?}: {what}");
        let rest = &bytes[v..end];
        let (val, size) = match tag {
            0x01 => (Val::Bson(RawBsonRef::Double(f64::from_le_bytes(fixed(rest).ok_or_else(|| bad("a double needs 8 bytes"))?))), 8),
            0x02 => string(rest).map(|(s, n)| (Val::Bson(RawBsonRef::String(s)), n)).map_err(|e| bad(&e))?,
            0x03 => {
                let d = subdocument(rest).map_err(|e| bad(&e))?;
                (Val::Bson(RawBsonRef::Document(d)), d.as_bytes().len())
            }
            0x04 => {
                let d = subdocument(rest).map_err(|e| bad(&e))?;
                (Val::Array(d), d.as_bytes().len())
            }
            0x05 => {
                let len = length(rest).map_err(|e| bad(&e))?;
                let data = rest.get(5..5 + len).ok_or_else(|| bad("binary data runs past the document"))?;
                let subtype = BinarySubtype::from(rest[4]);
                let bytes = if subtype == BinarySubtype::BinaryOld {
                    // The old binary subtype repeats the length inside the data.
                    match data.get(..4).map(|l| i32::from_le_bytes(l.try_into().expect("4 bytes"))) {
                        Some(inner) if inner >= 0 && inner as usize + 4 == len => &data[4..],
                        _ => return Err(bad("old binary subtype with a wrong inner length")),
                    }
                } else {
                    data
                };
                (Val::Bson(RawBsonRef::Binary(RawBinaryRef { subtype, bytes })), 5 + len)
            }
            0x06 => (Val::Bson(RawBsonRef::Undefined), 0),
            0x07 => (Val::Bson(RawBsonRef::ObjectId(mongodb::bson::oid::ObjectId::from_bytes(fixed(rest).ok_or_else(|| bad("an ObjectId needs 12 bytes"))?))), 12),
            0x08 => match rest.first() {
                Some(0) => (Val::Bson(RawBsonRef::Boolean(false)), 1),
                Some(1) => (Val::Bson(RawBsonRef::Boolean(true)), 1),
                _ => return Err(bad("a boolean that is neither 0 nor 1")),
            },
            0x09 => (Val::Bson(RawBsonRef::DateTime(DateTime::from_millis(i64::from_le_bytes(fixed(rest).ok_or_else(|| bad("a date needs 8 bytes"))?)))), 8),
            0x0A => (Val::Bson(RawBsonRef::Null), 0),
            0x0B => {
                let (pattern, after) = cstring(bytes, v, end).map_err(|e| bad(&format!("a regex pattern {e}")))?;
                let (options, after) = cstring(bytes, after, end).map_err(|e| bad(&format!("regex options {e}")))?;
                (Val::Bson(RawBsonRef::RegularExpression(RawRegexRef { pattern, options })), after - v)
            }
            0x0D => string(rest).map(|(s, n)| (Val::Bson(RawBsonRef::JavaScriptCode(s)), n)).map_err(|e| bad(&e))?,
            0x0E => string(rest).map(|(s, n)| (Val::Bson(RawBsonRef::Symbol(s)), n)).map_err(|e| bad(&e))?,
            0x0C | 0x0F => {
                // DBPointer and code with scope: deprecated and rare; the driver reads them.
                let size = if tag == 0x0C { string(rest).map_err(|e| bad(&e))?.1 + 12 } else { length(rest).map_err(|e| bad(&e))? };
                if size > rest.len() {
                    return Err(bad("a value runs past the document"));
                }
                match self.doc.get(key) {
                    Ok(Some(value)) => (Val::Bson(value), size),
                    Ok(None) => return Err(bad("unreadable value")),
                    Err(e) => return Err(e.to_string()),
                }
            }
            0x10 => (Val::Bson(RawBsonRef::Int32(i32::from_le_bytes(fixed(rest).ok_or_else(|| bad("an int32 needs 4 bytes"))?))), 4),
            0x11 => {
                let raw: [u8; 8] = fixed(rest).ok_or_else(|| bad("a timestamp needs 8 bytes"))?;
                let increment = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
                let time = u32::from_le_bytes(raw[4..].try_into().expect("4 bytes"));
                (Val::Bson(RawBsonRef::Timestamp(Timestamp { time, increment })), 8)
            }
            0x12 => (Val::Bson(RawBsonRef::Int64(i64::from_le_bytes(fixed(rest).ok_or_else(|| bad("an int64 needs 8 bytes"))?))), 8),
            0x13 => (Val::Bson(RawBsonRef::Decimal128(Decimal128::from_bytes(fixed(rest).ok_or_else(|| bad("a decimal128 needs 16 bytes"))?))), 16),
            0x7F => (Val::Bson(RawBsonRef::MaxKey), 0),
            0xFF => (Val::Bson(RawBsonRef::MinKey), 0),
            other => return Err(bad(&format!("unknown element type 0x{other:02x}"))),
        };
        if size > rest.len() {
            return Err(bad("a value runs past the document"));
        }
        self.at = v + size;
        Ok((key, val))
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<(&'a str, Val<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at >= self.doc.as_bytes().len() - 1 {
            return None;
        }
        let element = self.element();
        self.done = element.is_err();
        Some(element)
    }
}

/// The first `N` bytes of `rest`.
fn fixed<const N: usize>(rest: &[u8]) -> Option<[u8; N]> {
    rest.get(..N).map(|b| b.try_into().expect("N bytes"))
}

/// A non-negative int32 length at the start of `rest`.
fn length(rest: &[u8]) -> Result<usize, String> {
    match fixed::<4>(rest).map(i32::from_le_bytes) {
        Some(n) if n >= 0 => Ok(n as usize),
        Some(_) => Err("a negative length".into()),
        None => Err("a length runs past the document".into()),
    }
}

/// A BSON string (length, UTF-8 bytes, 0) and the bytes it takes.
fn string(rest: &[u8]) -> Result<(&str, usize), String> {
    let len = length(rest)?;
    if len == 0 {
        return Err("a string of length 0 (it must count its closing 0)".into());
    }
    let body = rest.get(4..4 + len).ok_or("a string runs past the document")?;
    if body[len - 1] != 0 {
        return Err("a string without its closing 0".into());
    }
    let text = std::str::from_utf8(&body[..len - 1]).map_err(|_| "a string that is not UTF-8")?;
    Ok((text, 4 + len))
}

/// An embedded document (or array) at the start of `rest`.
fn subdocument(rest: &[u8]) -> Result<&RawDocument, String> {
    let len = length(rest)?;
    let bytes = rest.get(..len).ok_or("an embedded document runs past the document")?;
    RawDocument::from_bytes(bytes).map_err(|e| e.to_string())
}

/// The C string at `bytes[at..]`, ending before `end`, and the offset after its 0.
fn cstring(bytes: &[u8], at: usize, end: usize) -> Result<(&str, usize), &'static str> {
    let field = bytes.get(at..end).ok_or("runs past the document")?;
    let len = field.iter().position(|&b| b == 0).ok_or("has no closing 0")?;
    let text = std::str::from_utf8(&field[..len]).map_err(|_| "is not UTF-8")?;
    Ok((text, at + len + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, rawdoc, Binary, Bson, Regex};

    /// Every element as the driver's own iterator reads it.
    fn driver(doc: &RawDocument) -> Vec<(String, Bson)> {
        doc.iter().map(|e| e.unwrap()).map(|(k, v)| (k.to_string(), Bson::try_from(v).unwrap())).collect()
    }

    fn ours(doc: &RawDocument) -> Vec<(String, Bson)> {
        Elements::new(doc)
            .map(|e| e.unwrap())
            .map(|(k, v)| {
                let value = match v {
                    Val::Bson(b) => Bson::try_from(b).unwrap(),
                    Val::Array(d) => Bson::Array(driver(d).into_iter().map(|(_, v)| v).collect()),
                };
                (k.to_string(), value)
            })
            .collect()
    }

    #[test]
    fn every_type_reads_as_the_drivers_iterator_reads_it() {
        let doc = doc! {
            "f": 1.5, "s": "héllo", "d": { "a": 1_i32, "": "empty key" }, "a": [1_i32, "two", { "x": null }],
            "b": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2] },
            "u": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] },
            "o": mongodb::bson::oid::ObjectId::from_bytes([1; 12]), "t": true, "ff": false,
            "dt": DateTime::from_millis(-86_400_000), "n": null,
            "re": Regex { pattern: "^a.*".into(), options: "i".into() },
            "i": -7_i32, "ts": Timestamp { time: 1_700_000_000, increment: 9 }, "l": i64::MIN,
            "dec": Decimal128::from_bytes([3; 16]), "max": Bson::MaxKey, "min": Bson::MinKey,
            "js": Bson::JavaScriptCode("f()".into()), "sym": Bson::Symbol("s".into()), "und": Bson::Undefined,
            "a.b$c": 1_i32, "nan": f64::NAN,
            "old": Binary { subtype: BinarySubtype::BinaryOld, bytes: vec![9, 8, 7] },
            "cws": Bson::JavaScriptCodeWithScope(mongodb::bson::JavaScriptCodeWithScope { code: "g()".into(), scope: doc! { "v": 1_i32 } }),
            "after": "still read",
        };
        let doc = mongodb::bson::RawDocumentBuf::from_document(&doc).unwrap();
        let (d, o) = (driver(&doc), ours(&doc));
        assert_eq!(d.len(), o.len());
        for ((dk, dv), (ok, ov)) in d.iter().zip(&o) {
            assert_eq!(dk, ok);
            if dk == "nan" {
                assert!(matches!(ov, Bson::Double(f) if f.is_nan()));
            } else {
                assert_eq!(dv, ov, "key {dk}");
            }
        }
    }

    /// Both readers over one document: every element's key and value, or where
    /// each stopped with an error.
    fn both(doc: &RawDocument) -> (Result<Vec<(String, Bson)>, ()>, Result<Vec<(String, Bson)>, ()>) {
        let driver: Result<Vec<_>, ()> = doc
            .iter()
            .map(|e| e.map_err(|_| ()).and_then(|(k, v)| Bson::try_from(v).map(|v| (k.to_string(), v)).map_err(|_| ())))
            .collect();
        let ours: Result<Vec<_>, ()> = Elements::new(doc)
            .map(|e| {
                e.map_err(|_| ()).and_then(|(k, v)| {
                    let value = match v {
                        Val::Bson(b) => Bson::try_from(b).map_err(|_| ())?,
                        Val::Array(d) => Bson::Array(
                            d.iter().map(|e| e.map_err(|_| ()).and_then(|(_, v)| Bson::try_from(v).map_err(|_| ()))).collect::<Result<_, _>>()?,
                        ),
                    };
                    Ok((k.to_string(), value))
                })
            })
            .collect();
        (driver, ours)
    }

    #[test]
    fn every_single_byte_corruption_reads_as_the_drivers_iterator_reads_it() {
        // Each byte of a document of every type, set to a few telling values: both
        // readers must accept the same documents, with the same values.
        let doc = doc! {
            "s": "héllo", "d": { "a": 1_i32 }, "a": [1_i32, "two"], "b": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1] },
            "old": Binary { subtype: BinarySubtype::BinaryOld, bytes: vec![9] }, "t": true, "re": Regex { pattern: "x".into(), options: "i".into() },
            "ts": Timestamp { time: 5, increment: 6 }, "l": 7_i64, "n": null, "f": 0.5,
        };
        let good = mongodb::bson::RawDocumentBuf::from_document(&doc).unwrap().into_bytes();
        let mut compared = 0;
        for at in 4..good.len() - 1 {
            for value in [0x00, 0x01, 0x02, 0x05, 0x7f, 0x80, 0xff, good[at].wrapping_add(1)] {
                let mut bytes = good.clone();
                bytes[at] = value;
                let Ok(doc) = RawDocument::from_bytes(&bytes) else { continue };
                let (driver, ours) = both(doc);
                match (&driver, &ours) {
                    (Ok(d), Ok(o)) => assert_eq!(format!("{d:?}"), format!("{o:?}"), "byte {at} = {value:#x}"),
                    (Err(()), Err(())) => {}
                    _ => panic!("byte {at} = {value:#x}: the driver read {driver:?}, this reader {ours:?}"),
                }
                compared += 1;
            }
        }
        assert!(compared > 500, "{compared}");
    }

    #[test]
    fn a_length_past_the_end_or_a_bad_byte_is_an_error_naming_the_key() {
        let doc = rawdoc! { "s": "text", "b": true };
        let mut bytes = doc.into_bytes();
        let at = bytes.windows(5).position(|w| w == b"text\0").unwrap() - 4;
        bytes[at] = 200;
        let broken = RawDocument::from_bytes(&bytes).unwrap();
        let errors: Vec<String> = Elements::new(broken).filter_map(Result::err).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("\"s\"") && errors[0].contains("past"), "{}", errors[0]);

        let mut bytes = rawdoc! { "b": true }.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = 2;
        let err = Elements::new(RawDocument::from_bytes(&bytes).unwrap()).next().unwrap().err().unwrap();
        assert!(err.contains("boolean"), "{err}");

        let mut bytes = rawdoc! { "k": 1_i32 }.into_bytes();
        bytes[4] = 0x42;
        let err = Elements::new(RawDocument::from_bytes(&bytes).unwrap()).next().unwrap().err().unwrap();
        assert!(err.contains("unknown element type 0x42"), "{err}");
    }
}
