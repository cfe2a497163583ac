//! Test plugin `greedy`: asks for more than it is granted.
//!
//! For every event it returns an audit record (`{"seq"}`, which the tests grant)
//! plus a cache delete, a row upsert and an emit that they do not grant, so the
//! tests can check that the host refuses each of those and says which capability.

use oplet_sdk::{handler, Effect, Event, Map, Result, Value};

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    let seq = Value::Int(event.seq as i64);
    let mut record = Map::new();
    record.insert("seq".into(), seq.clone());
    let mut row = Map::new();
    row.insert("id".into(), seq);
    Ok(vec![
        Effect::Audit { record: Value::Map(record) },
        Effect::cache_delete(["secret:1"]),
        Effect::RowUpsert { table: "forbidden".into(), key: vec!["id".into()], values: row },
        Effect::emit_to_client("c1", "not_allowed", Value::Null),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::EventBody;

    #[test]
    fn asks_for_one_granted_and_three_refused_effects() {
        let e = Event { seq: 2, id: "2".into(), source: "s".into(), time_ms: 0, body: EventBody::Other };
        let kinds: Vec<_> = handle(&e).unwrap().iter().map(Effect::capability).collect();
        use oplet_sdk::CapabilityKind::*;
        assert_eq!(kinds, [Audit, Cache, Tables, Emit]);
    }
}
