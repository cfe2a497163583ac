//! The host's fast read of a plugin's reply: `{"status": "ok", "effects": [...]}`
//! read front to back in one pass, each effect of a plain kind (`cache_delete`,
//! `log`, `audit`) built straight from the bytes. serde's tagged enums buffer every
//! map before reading it, which cost more than the rest of a one-effect call.
//! Anything else is left to the serde decoder, which also words the errors.

use crate::raw::{head, split_value, value_len, Head};
use crate::{Effect, LogLevel};

/// A read position in MessagePack bytes; every method moves past what it read.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn map(&mut self) -> Option<usize> {
        match head(self.rest).ok()? {
            Head::Map(n, off) => {
                self.rest = &self.rest[off..];
                Some(n)
            }
            _ => None,
        }
    }

    fn array(&mut self) -> Option<usize> {
        match head(self.rest).ok()? {
            Head::Array(n, off) => {
                self.rest = &self.rest[off..];
                Some(n)
            }
            _ => None,
        }
    }

    fn nil(&mut self) -> bool {
        if self.rest.first() == Some(&0xc0) {
            self.rest = &self.rest[1..];
            return true;
        }
        false
    }

    fn str(&mut self) -> Option<&'a str> {
        let (off, len) = match head(self.rest).ok()? {
            Head::Str(off, len) => (off, len),
            _ => return None,
        };
        let s = std::str::from_utf8(self.rest.get(off..off.checked_add(len)?)?).ok()?;
        self.rest = &self.rest[off + len..];
        Some(s)
    }

    fn skip(&mut self) -> Option<()> {
        let n = value_len(self.rest).ok()?;
        self.rest = &self.rest[n..];
        Some(())
    }
}

/// The effects of an ok reply (`None` inside when it has no `effects` or they are
/// nil), or `None` when `bytes` is not exactly one plain ok reply: an error reply,
/// extra bytes, or an effect serde must read (or refuse).
#[doc(hidden)]
pub fn read_ok_reply(bytes: &[u8]) -> Option<Option<Vec<Effect>>> {
    let mut c = Cursor { rest: bytes };
    let (mut ok, mut effects) = (false, None);
    for _ in 0..c.map()? {
        match c.str()? {
            "status" => ok = c.str()? == "ok",
            "effects" if c.nil() => effects = None,
            "effects" => {
                let n = c.array()?;
                // Every effect takes at least one byte: a lying count allocates nothing.
                let mut list = Vec::with_capacity(n.min(c.rest.len()));
                for _ in 0..n {
                    list.push(effect(&mut c)?);
                }
                effects = Some(list);
            }
            _ => c.skip()?,
        }
    }
    (ok && c.rest.is_empty()).then_some(effects)
}

/// One effect: a plain kind written `kind` first is read in place; any other is
/// measured and read by serde.
fn effect(c: &mut Cursor<'_>) -> Option<Effect> {
    let start = c.rest;
    if let Some(e) = plain_effect(c) {
        return Some(e);
    }
    let (whole, tail) = split_value(start).ok()?;
    c.rest = tail;
    rmp_serde::from_slice(whole.as_bytes_raw()).ok()
}

fn plain_effect(c: &mut Cursor<'_>) -> Option<Effect> {
    if c.map()? != 2 || c.str()? != "kind" {
        return None;
    }
    let kind = c.str()?;
    if c.str()? != "data" {
        return None;
    }
    let n = c.map()?;
    let mut effect = match kind {
        "cache_delete" => Effect::CacheDelete { keys: Vec::new() },
        "log" => Effect::Log { level: LogLevel::Info, message: String::new() },
        "audit" => Effect::Audit { record: crate::Value::Null },
        _ => return None,
    };
    let mut found = 0;
    for _ in 0..n {
        match (c.str()?, &mut effect) {
            ("keys", Effect::CacheDelete { keys }) => {
                let len = c.array()?;
                keys.reserve(len.min(c.rest.len()));
                for _ in 0..len {
                    keys.push(c.str()?.to_string());
                }
                found += 1;
            }
            ("level", Effect::Log { level, .. }) => {
                *level = match c.str()? {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    _ => return None,
                };
                found += 1;
            }
            ("message", Effect::Log { message, .. }) => {
                *message = c.str()?.to_string();
                found += 1;
            }
            ("record", Effect::Audit { record }) => {
                let (v, tail) = split_value(c.rest).ok()?;
                *record = v.to_value().ok()?;
                c.rest = tail;
                found += 1;
            }
            // Unknown keys are ignored (docs/abi.md section 6).
            _ => c.skip()?,
        }
    }
    // Every field of the kind, each once: anything else is serde's to read or refuse.
    let wanted = match effect {
        Effect::Log { .. } => 2,
        _ => 1,
    };
    (found == wanted).then_some(effect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec, Reply, Value};

    #[test]
    fn plain_effects_read_as_serde_reads_them_and_cut_replies_are_refused_without_panics() {
        let effects = vec![
            Effect::cache_delete(["a", "b"]),
            Effect::log(LogLevel::Error, "e"),
            Effect::Audit { record: Value::Map([("k".to_string(), Value::Array(vec![Value::Float(1.5), Value::Null]))].into()) },
            Effect::Emit { to: crate::EmitTarget::Room("r".into()), event: "x".into(), payload: Value::Int(1) },
        ];
        let bytes = codec::encode(&Reply::Ok { effects: effects.clone() }).unwrap();
        assert_eq!(read_ok_reply(&bytes), Some(Some(effects)));
        for n in 0..bytes.len() {
            assert_eq!(read_ok_reply(&bytes[..n]), None, "cut at {n}");
        }
        let err = codec::encode(&Reply::Err { message: "no".into() }).unwrap();
        assert_eq!(read_ok_reply(&err), None);
    }
}
