//! Test plugin `view-check`: does the lazy `EventView` read every value exactly as
//! the owned decode does, on the bytes the real host sends?
//!
//! For each event it decodes the owned `Event` too, walks every node of every
//! document (key, full document, updated fields, pre-image, payload), reaches the
//! same node through the view (`get_key`, array `get`, dotted `get` where the path
//! is unambiguous) and compares values and accessors. One audit record per event:
//! `{seq, agree, nodes, mismatches, doc}`; end-to-end tests assert on it.

use oplet_sdk::{codec, handler, BodyView, Effect, Event, EventBody, EventView, RawValue, Result, Value};
use serde::Serialize;

#[handler]
pub fn handle(event: &EventView) -> Result<Vec<Effect>> {
    Ok(vec![Effect::audit(&check(event))?])
}

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub seq: u64,
    pub agree: bool,
    pub nodes: u64,
    pub mismatches: Vec<String>,
    /// The full document (or payload) as the view re-emits it, for shape checks.
    pub doc: Option<RawValue<'a>>,
}

pub fn check<'a>(view: &EventView<'a>) -> Report<'a> {
    let mut r = Report { seq: view.seq(), agree: true, nodes: 0, mismatches: vec![], doc: None };
    let owned: Event = match codec::decode(view.bytes()) {
        Ok(e) => e,
        Err(e) => {
            r.fail(format!("owned decode failed: {e}"));
            return r;
        }
    };
    if (owned.seq, owned.id.as_str(), owned.source.as_str(), owned.time_ms) != (view.seq(), view.id(), view.source(), view.time_ms()) {
        r.fail("header differs".into());
    }
    if let Err(e) = view.check() {
        r.fail(format!("check() refused the event: {e}"));
    }
    match view.body().to_body() {
        Ok(b) if same_body(&b, &owned.body) => {}
        Ok(_) => r.fail("body.to_body() differs from the owned body".into()),
        Err(e) => r.fail(format!("view body failed: {e}")),
    }
    match (&view.body(), &owned.body) {
        (BodyView::Change(c), EventBody::Change(o)) => {
            if c.operation() != o.op || c.db() != o.db || c.coll() != o.coll {
                r.fail("change header differs".into());
            }
            r.walk("key", c.key(), &o.key);
            if let (Some(v), Some(w)) = (c.full_document(), &o.full_document) {
                r.walk("full_document", v, w);
                r.doc = Some(v);
            } else if c.full_document().is_some() != o.full_document.is_some() {
                r.fail("full_document presence differs".into());
            }
            if let (Some(v), Some(w)) = (c.before(), &o.before) {
                r.walk("before", v, w);
            }
            if let (Some(u), Some(w)) = (c.updated_fields(), &o.updated_fields) {
                for (k, x) in w {
                    match u.get(k) {
                        Some(v) => r.walk(&format!("updated_fields[{k:?}]"), v, x),
                        None => r.fail(format!("updated_fields[{k:?}] missing in the view")),
                    }
                }
                if u.len() != w.len() {
                    r.fail("updated_fields sizes differ".into());
                }
            }
            if let Some(id) = o.id() {
                match c.id() {
                    Some(v) if v.to_key_string() == id.to_key_string() => {}
                    _ => r.fail("id() differs".into()),
                }
            }
        }
        (BodyView::Socket(s), EventBody::Socket(o)) => {
            if s.client() != o.client || s.event() != o.event {
                r.fail("socket header differs".into());
            }
            r.walk("payload", s.payload(), &o.payload);
            r.doc = Some(s.payload());
        }
        (BodyView::Other(_), EventBody::Other) => {}
        _ => r.fail("body kinds differ".into()),
    }
    r
}

impl Report<'_> {
    fn fail(&mut self, m: String) {
        self.agree = false;
        if self.mismatches.len() < 20 {
            self.mismatches.push(m);
        }
    }

    /// Compares the node and, below it, every child reached through the view.
    fn walk(&mut self, path: &str, v: RawValue<'_>, w: &Value) {
        self.nodes += 1;
        match v.to_value() {
            Ok(x) if same(&x, w) => {}
            Ok(x) => self.fail(format!("{path}: view {} owned {}", x.to_json(), w.to_json())),
            Err(e) => self.fail(format!("{path}: view failed: {e}")),
        }
        let f = |a: Option<f64>, b: Option<f64>| a.map(f64::to_bits) == b.map(f64::to_bits);
        if v.as_str() != w.as_str()
            || v.as_i64() != w.as_i64()
            || !f(v.as_f64(), w.as_f64())
            || v.as_bool() != w.as_bool()
            || v.is_null() != w.is_null()
            || v.is_truthy() != w.is_truthy()
            || v.to_key_string() != w.to_key_string()
        {
            self.fail(format!("{path}: an accessor differs"));
        }
        match w {
            Value::Map(m) => {
                let Some(vm) = v.as_map() else { return self.fail(format!("{path}: not a map in the view")) };
                // The view keeps the document's field order; the owned map sorts its
                // keys. The same keys, in any order, is what must agree.
                let mut keys: Vec<&str> = vm.keys().collect();
                keys.sort_unstable();
                let owned_keys: Vec<&str> = m.keys().map(String::as_str).collect();
                if keys != owned_keys {
                    self.fail(format!("{path}: keys differ: {keys:?} vs {owned_keys:?}"));
                }
                for (k, x) in m {
                    match v.get_key(k) {
                        Some(c) => self.walk(&format!("{path}[{k:?}]"), c, x),
                        None => self.fail(format!("{path}: key {k:?} not found by get_key")),
                    }
                    // The dotted path finds the same node when the key is plain.
                    if !k.is_empty() && !k.contains('.') && k.parse::<usize>().is_err() {
                        let dotted = v.get(k).map(|c| c.as_bytes_raw());
                        if dotted != v.get_key(k).map(|c| c.as_bytes_raw()) {
                            self.fail(format!("{path}: get({k:?}) and get_key differ"));
                        }
                    }
                }
            }
            Value::Array(a) => {
                let Some(va) = v.as_array() else { return self.fail(format!("{path}: not an array in the view")) };
                if va.len() != a.len() {
                    self.fail(format!("{path}: lengths differ"));
                }
                for (i, (c, x)) in va.iter().zip(a).enumerate() {
                    self.walk(&format!("{path}[{i}]"), c, x);
                }
            }
            _ => {}
        }
    }
}

/// Equality where NaN equals NaN (a document may hold one).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((k1, v1), (k2, v2))| k1 == k2 && same(v1, v2))
        }
        _ => a == b,
    }
}

fn same_body(a: &EventBody, b: &EventBody) -> bool {
    let (Ok(x), Ok(y)) = (oplet_sdk::to_value(a), oplet_sdk::to_value(b)) else { return false };
    same(&x, &y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, OperationType};

    #[test]
    fn a_rich_change_agrees_and_every_node_is_visited() {
        let doc: Value = serde_json::from_str(
            r#"{"_id":{"$oid":"65a1f0c2e4b0a1b2c3d4e5f6"},"a.b":1,"$x":[1,2.5,"s",null,true],"":{"":"empty"},"u":"é✓"}"#,
        )
        .unwrap();
        let change = Change { op: OperationType::Insert, db: "d".into(), coll: "c".into(), full_document: Some(doc), ..Default::default() };
        let e = Event { seq: 9, id: "i".into(), source: "s".into(), time_ms: -5, body: EventBody::Change(change) };
        let bytes = codec::encode(&e).unwrap();
        let r = check(&EventView::parse(&bytes).unwrap());
        assert!(r.agree, "{:?}", r.mismatches);
        assert_eq!(r.nodes, 1 + 13);
    }

    #[test]
    fn a_difference_is_caught() {
        let mut r = Report { seq: 0, agree: true, nodes: 0, mismatches: vec![], doc: None };
        let bytes = codec::encode(&Value::from("a")).unwrap();
        r.walk("x", RawValue::parse(&bytes).unwrap(), &Value::from("b"));
        assert!(!r.agree);
    }
}
