//! Shared body of the `versioned-a` and `versioned-b` test plugins (included by
//! `#[path]`): an audit record naming the version that handled the event, so a
//! hot-reload test can see which events ran on the old module and which on the new.

use oplet_sdk::{Effect, Event, Map, Value};

pub fn record(version: &str, event: &Event) -> Vec<Effect> {
    let mut record = Map::new();
    record.insert("version".into(), version.into());
    record.insert("seq".into(), Value::Int(event.seq as i64));
    record.insert("id".into(), event.id.clone().into());
    vec![Effect::Audit { record: Value::Map(record) }]
}
