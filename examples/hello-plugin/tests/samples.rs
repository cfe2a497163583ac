//! The sample events in `events.jsonl` are real `oplet_sdk::Event`s in the JSON
//! shape the host reads, and the plugin does with them what the README promises:
//! the two payments are audited, everything else is a log line.

use oplet_sdk::{Effect, Event, EventBody, Plugin, Value};

fn samples() -> Vec<Event> {
    let text = include_str!("../events.jsonl");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).unwrap_or_else(|e| panic!("events.jsonl line {}: {e}", i + 1)))
        .collect()
}

#[test]
fn every_line_is_an_event_with_increasing_seq() {
    let events = samples();
    assert!((4..=6).contains(&events.len()));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        let EventBody::Change(c) = &e.body else { panic!("line {} is not a change", i + 1) };
        assert_eq!(c.namespace(), "app.orders");
        assert!(c.id().and_then(|id| id.get("$oid")).is_some(), "line {}: _id is an ObjectId", i + 1);
        // And it survives the MessagePack boundary unchanged.
        let bytes = oplet_sdk::codec::encode(e).unwrap();
        assert_eq!(&oplet_sdk::codec::decode::<Event>(&bytes).unwrap(), e);
    }
}

#[test]
fn the_two_payments_are_audited_and_the_rest_logged() {
    let mut audited = Vec::new();
    let mut plugin = hello::Hello::from_config(&Value::Map(Default::default())).unwrap();
    for e in samples() {
        match plugin.handle_event(&e).unwrap().as_slice() {
            [Effect::Audit { record }] => audited.push((e.seq, record.get("total").cloned())),
            [Effect::Log { .. }] => {}
            other => panic!("event {}: unexpected effects {other:?}", e.seq),
        }
    }
    let decimal = |d: &str| Some(Value::Map([("$numberDecimal".to_string(), Value::from(d))].into_iter().collect()));
    assert_eq!(audited, vec![(2, decimal("42.50")), (4, decimal("9.99"))]);
}
