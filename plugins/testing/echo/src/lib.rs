//! Test plugin `echo`: turns each event into one audit record.
//!
//! The record (`plugin`, `seq`, `id`, and `doc`: the change's full document or
//! the socket payload) lets end-to-end tests see exactly which events reached a
//! plugin, in which order, and with which document.

use oplet_sdk::{handler, Effect, Event, EventBody, Map, Result, Value};

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    let mut record = Map::new();
    record.insert("plugin".into(), "echo".into());
    record.insert("seq".into(), Value::Int(event.seq as i64));
    record.insert("id".into(), event.id.clone().into());
    record.insert("doc".into(), document(event));
    Ok(vec![Effect::Audit { record: Value::Map(record) }])
}

/// The change's full document or the socket payload (null when there is none).
pub fn document(event: &Event) -> Value {
    match &event.body {
        EventBody::Change(c) => c.full_document.clone().unwrap_or_default(),
        EventBody::Socket(s) => s.payload.clone(),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, SocketEvent};

    fn doc() -> Value {
        Value::Map([("a".to_string(), Value::Int(1))].into_iter().collect())
    }

    #[test]
    fn a_change_is_echoed_with_its_full_document() {
        let change = Change { db: "app".into(), coll: "c".into(), full_document: Some(doc()), ..Default::default() };
        let e = Event { seq: 4, id: "t4".into(), source: "mongo".into(), time_ms: 0, body: EventBody::Change(change) };
        let Effect::Audit { record } = &handle(&e).unwrap()[0] else { panic!() };
        assert_eq!(record.get("plugin"), Some(&Value::from("echo")));
        assert_eq!(record.get("seq"), Some(&Value::Int(4)));
        assert_eq!(record.get("id"), Some(&Value::from("t4")));
        assert_eq!(record.get("doc"), Some(&doc()));
    }

    #[test]
    fn a_socket_event_is_echoed_with_its_payload() {
        let s = SocketEvent { client: "c1".into(), event: "hi".into(), payload: doc() };
        let e = Event { seq: 1, id: "1".into(), source: "socket".into(), time_ms: 0, body: EventBody::Socket(s) };
        let effects = handle(&e).unwrap();
        assert_eq!(effects.len(), 1);
        let Effect::Audit { record } = &effects[0] else { panic!() };
        assert_eq!(record.get("doc"), Some(&doc()));
    }
}
