//! The author's API: the lazy `EventView` over the encoded bytes (header, dotted
//! paths, borrowed strings, serde into the author's types, owned conversion), the
//! `Plugin` trait with a serde config, the effect constructors and the error type.

use oplet_sdk::{
    codec, BodyView, Change, Context, Effect, EmitTarget, Error, Event, EventBody, EventView, Map, OperationType, Plugin,
    RawValue, Result, SocketEvent, Value,
};
use serde::{Deserialize, Serialize};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn order_event() -> Event {
    let doc = json(
        r#"{"_id":{"$oid":"65a1f0c2e4b0a1b2c3d4e5f6"},"status":"paid","total":{"$numberDecimal":"12.50"},
            "items":[{"sku":"A1","qty":2},{"sku":"B2","qty":1}],"customer":{"name":"Ada","tags":["vip"]},
            "a.b":"dotted key","":"empty key"}"#,
    );
    let change = Change {
        op: OperationType::Update,
        db: "app".into(),
        coll: "orders".into(),
        key: json(r#"{"_id":{"$oid":"65a1f0c2e4b0a1b2c3d4e5f6"}}"#),
        full_document: Some(doc),
        updated_fields: Some(json(r#"{"status":"paid","customer.name":"Ada"}"#).as_map().unwrap().clone()),
        removed_fields: Some(vec!["note".into()]),
        before: None,
    };
    Event { seq: 42, id: "tok-42".into(), source: "mongo".into(), time_ms: -1, body: EventBody::Change(change) }
}

#[test]
fn the_header_and_fields_read_in_place() {
    let bytes = codec::encode(&order_event()).unwrap();
    let view = EventView::parse(&bytes).unwrap();
    assert_eq!((view.seq(), view.id(), view.source(), view.time_ms()), (42, "tok-42", "mongo", -1));
    let c = view.change().unwrap();
    assert_eq!((c.op(), c.db(), c.coll(), c.namespace().as_str()), ("update", "app", "orders", "app.orders"));
    assert_eq!(c.operation(), OperationType::Update);
    assert!(c.in_namespace("app.*") && !c.in_namespace("shop.*"));
    assert_eq!(c.id().unwrap().to_key_string(), "65a1f0c2e4b0a1b2c3d4e5f6");
    let doc = c.full_document().unwrap();
    let status = doc.get("status").unwrap().as_str().unwrap();
    // Borrowed: the &str points into the input bytes.
    let range = bytes.as_ptr_range();
    assert!(range.contains(&status.as_ptr()));
    assert_eq!(doc.get("items.1.sku").and_then(|v| v.as_str()), Some("B2"));
    assert_eq!(doc.get("items.1.qty").and_then(|v| v.as_i64()), Some(1));
    assert_eq!(doc.get("customer.tags.0").and_then(|v| v.as_str()), Some("vip"));
    assert_eq!(doc.get_key("a.b").and_then(|v| v.as_str()), Some("dotted key"));
    assert_eq!(doc.get_key("").and_then(|v| v.as_str()), Some("empty key"));
    assert_eq!(doc.get("total").unwrap().to_key_string(), "12.50");
    assert!(doc.get("items.2").is_none() && doc.get("nope").is_none() && doc.get("status.x").is_none());
    assert_eq!(c.updated("customer.name").and_then(|v| v.as_str()), Some("Ada"));
    assert!(c.removed("note") && !c.removed("status"));
    let keys: Vec<&str> = doc.as_map().unwrap().keys().collect();
    assert_eq!(keys, ["", "_id", "a.b", "customer", "items", "status", "total"]);
}

#[test]
fn the_view_converts_to_the_owned_event_and_to_the_authors_types() {
    let event = order_event();
    let bytes = codec::encode(&event).unwrap();
    let view = EventView::parse(&bytes).unwrap();
    assert_eq!(view.to_event().unwrap(), event);
    assert_eq!(view.body().to_body().unwrap(), event.body);

    #[derive(Deserialize, Debug, PartialEq)]
    struct Item<'a> {
        sku: &'a str,
        qty: u32,
    }
    #[derive(Deserialize, Debug)]
    struct Order<'a> {
        status: &'a str,
        #[serde(borrow)]
        items: Vec<Item<'a>>,
        total: Value,
    }
    let c = view.change().unwrap();
    let order: Order = c.document_as().unwrap().unwrap();
    assert_eq!(order.status, "paid");
    assert_eq!(order.items, vec![Item { sku: "A1", qty: 2 }, Item { sku: "B2", qty: 1 }]);
    assert_eq!(order.total, json(r#"{"$numberDecimal":"12.50"}"#));
    let bad: std::result::Result<Item, _> = c.full_document().unwrap().deserialize();
    assert!(bad.is_err(), "an order is not an item");
}

#[test]
fn a_socket_event_and_an_unknown_kind_are_read_too() {
    let s = SocketEvent { client: "c1".into(), event: "ready".into(), payload: json(r#"{"n":[1,2]}"#) };
    let e = Event { seq: 1, id: "1".into(), source: "socket".into(), time_ms: 0, body: EventBody::Socket(s) };
    let bytes = codec::encode(&e).unwrap();
    let view = EventView::parse(&bytes).unwrap();
    let s = view.socket().unwrap();
    assert_eq!((s.client(), s.event()), ("c1", "ready"));
    assert_eq!(s.payload().get("n.1").and_then(|v| v.as_i64()), Some(2));

    let mut raw = Vec::new();
    codec::encode_into(
        &mut raw,
        &json(r#"{"seq":1,"id":"x","source":"s","time_ms":0,"body":{"kind":"timer","data":{"every":5}},"new_field":1}"#),
    )
    .unwrap();
    let view = EventView::parse(&raw).unwrap();
    assert!(matches!(view.body(), BodyView::Other("timer")));
}

#[test]
fn a_broken_event_is_an_error_naming_what_is_wrong() {
    let bytes = codec::encode(&order_event()).unwrap();
    // Cut in the header: `parse` refuses it. Cut further on: the header reads,
    // and `check` (which walks everything) refuses it.
    for n in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(EventView::parse(&bytes[..n]).and_then(|v| v.check()).is_err(), "cut at {n}");
    }
    assert!(EventView::parse(&bytes[..10]).is_err());
    let cut = EventView::parse(&bytes[..bytes.len() - 1]).expect("the header is whole");
    assert_eq!((cut.seq(), cut.change().unwrap().op()), (42, "update"));
    assert_eq!(cut.check().unwrap_err().to_string(), "MessagePack container claims more items than its bytes hold");
    let mut no_seq = Vec::new();
    codec::encode_into(&mut no_seq, &json(r#"{"id":"x","source":"s","time_ms":0,"body":{"kind":"x"}}"#)).unwrap();
    assert_eq!(EventView::parse(&no_seq).unwrap_err().to_string(), "the event has no field seq");
    let mut bad_op = Vec::new();
    codec::encode_into(
        &mut bad_op,
        &json(r#"{"seq":1,"id":"x","source":"s","time_ms":0,"body":{"kind":"change","data":{"op":1,"db":"d","coll":"c"}}}"#),
    )
    .unwrap();
    assert_eq!(EventView::parse(&bad_op).unwrap_err().to_string(), "event field change.op is not a string");
}

/// `parse` reads the header only and stops once it has it; `check` walks the rest:
/// an unknown key must be UTF-8, a key must be a string, nothing may follow the
/// event. A writer that puts the body's `data` before its `kind`, or the body
/// before the header fields, is read the same.
#[test]
fn keys_are_checked_and_field_order_does_not_matter() {
    let good = codec::encode(&order_event()).unwrap();
    EventView::parse(&good).unwrap().check().expect("what the host writes is well-formed");
    let mut trailing = good.clone();
    trailing.push(0xc0);
    let view = EventView::parse(&trailing).expect("the header is whole");
    assert_eq!(view.check().unwrap_err().to_string(), "1 bytes after the MessagePack value");
    // A sixth top-level key, 0xff as a 1-byte string: not UTF-8.
    let mut bad_key = good.clone();
    bad_key[0] += 1;
    bad_key.extend_from_slice(&[0xa1, 0xff, 0xc0]);
    let view = EventView::parse(&bad_key).expect("the header is whole");
    assert_eq!(view.check().unwrap_err().to_string(), "the event has a key that is not a UTF-8 string");
    let mut int_key = good.clone();
    int_key[0] += 1;
    int_key.extend_from_slice(&[0x01, 0xc0]);
    let view = EventView::parse(&int_key).expect("the header is whole");
    assert_eq!(view.check().unwrap_err().to_string(), "the event has a key that is not a UTF-8 string");
    // The body first: the header fields after it are still found.
    let body_first = json(r#"{"body":{"kind":"change","data":{"key":{"_id":2},"op":"delete","db":"d","coll":"c"}},"time_ms":5,"source":"s","id":"x","seq":3}"#);
    let bytes = codec::encode(&body_first).unwrap();
    let view = EventView::parse(&bytes).unwrap();
    assert_eq!((view.seq(), view.id(), view.source(), view.time_ms()), (3, "x", "s", 5));
    assert_eq!(view.change().unwrap().id().and_then(|v| v.as_i64()), Some(2));
    let mut unknown = good.clone();
    unknown[0] += 1;
    unknown.extend_from_slice(&[0xa3, b'n', b'e', b'w', 0x91, 0x01]);
    assert_eq!(EventView::parse(&unknown).unwrap().body().to_body().unwrap(), order_event().body);
    // `data` before `kind`.
    let data_first = json(
        r#"{"seq":1,"id":"x","source":"s","time_ms":0,"body":{"data":{"op":"insert","db":"d","coll":"c","key":{"_id":1}},"kind":"change"}}"#,
    );
    let bytes = codec::encode(&data_first).unwrap();
    let view = EventView::parse(&bytes).unwrap();
    let change = view.change().expect("a change");
    assert_eq!((change.op(), change.db(), change.coll()), ("insert", "d", "c"));
    assert_eq!(change.id().and_then(|v| v.as_i64()), Some(1));
}

/// A document the handler never reads is never walked: a malformed one (here a
/// map that claims more entries than the event holds) leaves the header readable,
/// reads as absent through the view, and is named by `check`.
#[test]
fn documents_are_read_on_access_not_at_parse() {
    let mut e = order_event();
    let EventBody::Change(c) = &mut e.body else { unreachable!() };
    c.updated_fields = None;
    c.removed_fields = None;
    c.full_document = Some(json(r#"{"a":1}"#));
    let mut bytes = codec::encode(&e).unwrap();
    // Find {"a": 1} (81 a1 61 01) and make it claim 15 entries.
    let at = bytes.windows(4).position(|w| w == [0x81, 0xa1, b'a', 0x01]).unwrap();
    bytes[at] = 0x8f;
    let view = EventView::parse(&bytes).expect("the header does not depend on the document");
    let change = view.change().unwrap();
    assert_eq!((view.seq(), change.op(), change.db()), (42, "update", "app"));
    assert_eq!(change.id().unwrap().to_key_string(), "65a1f0c2e4b0a1b2c3d4e5f6", "fields before the document still read");
    assert!(change.full_document().is_none(), "the whole document is not well-formed");
    // A field is found without measuring the document: what lies before the
    // damage reads, a search that runs into it finds nothing.
    assert_eq!(change.field("a").and_then(|v| v.as_i64()), Some(1));
    assert!(change.field("zz").is_none());
    assert!(view.check().is_err() && view.to_event().is_err() && change.to_change().is_err());
}

/// The host's layout read straight through agrees with the owned decode for the
/// widths the host writes: a fixed-width uint64 `seq` (the MongoDB source's), a
/// str8 `id` (a resume token), a negative `time_ms`.
#[test]
fn the_host_layout_reads_every_width_the_host_writes() {
    let mut e = order_event();
    e.id = "8265A1F0C2000000012B022C0100296E5A1004".repeat(3);
    let plain = codec::encode(&e).unwrap();
    // seq 42 as a fixint after 85 a3 "seq": rewrite it as a uint64, as the MongoDB source does.
    assert_eq!(&plain[..6], &[0x85, 0xa3, b's', b'e', b'q', 42]);
    let mut wide = plain[..5].to_vec();
    wide.push(0xcf);
    wide.extend_from_slice(&42u64.to_be_bytes());
    wide.extend_from_slice(&plain[6..]);
    for bytes in [&plain, &wide] {
        let view = EventView::parse(bytes).unwrap();
        assert_eq!((view.seq(), view.id(), view.source(), view.time_ms()), (42, e.id.as_str(), "mongo", -1));
        assert_eq!(view.to_event().unwrap(), e);
        assert_eq!(view.body().to_body().unwrap(), e.body);
        view.check().unwrap();
    }
}

#[test]
fn raw_values_reemit_through_serde_without_a_tree() {
    let v = json(r#"{"a":[1,-2,2.5,"s",null,true,{"b":{}}]}"#);
    let bytes = codec::encode(&v).unwrap();
    let raw = RawValue::parse(&bytes).unwrap();
    assert_eq!(codec::encode(&raw).unwrap(), bytes, "byte for byte");
    assert_eq!(serde_json::to_string(&raw).unwrap(), r#"{"a":[1,-2,2.5,"s",null,true,{"b":{}}]}"#);
}

// A plugin as an author writes it.

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SyncConfig {
    table: String,
    #[serde(default)]
    max_rows: Option<u32>,
}

struct Sync {
    config: SyncConfig,
    seen: u32,
}

#[derive(Serialize)]
struct Row<'a> {
    id: String,
    status: Option<RawValue<'a>>,
}

impl Plugin for Sync {
    type Config = SyncConfig;

    fn new(config: SyncConfig) -> Result<Self> {
        if config.table.is_empty() {
            return Err(Error::new("config.table must not be empty"));
        }
        Ok(Sync { config, seen: 0 })
    }

    fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
        self.seen += 1;
        let change = event.change().context("only changes are expected")?;
        let id = change.id().context("the change has no _id")?.to_key_string();
        if self.config.max_rows.is_some_and(|m| self.seen > m) {
            return Err(Error::new(format!("more than {} rows", self.seen - 1)));
        }
        let row = Row { id: id.clone(), status: change.field("status") };
        Ok(vec![
            Effect::row_upsert(&self.config.table, ["id"], &row)?,
            Effect::emit(EmitTarget::room("orders"), "changed", &row)?,
            Effect::audit(&row)?,
            Effect::row_delete("old", &[("id", id)].into_iter().collect::<std::collections::BTreeMap<_, _>>())?,
        ])
    }
}

oplet_sdk::export_plugin!(Sync);

#[test]
fn a_plugin_type_gets_its_config_through_serde_and_keeps_state() {
    let mut p = Sync::from_config(&json(r#"{"table":"orders","max_rows":1}"#)).unwrap();
    let effects = p.handle_event(&order_event()).unwrap();
    let row: Map = json(r#"{"id":"65a1f0c2e4b0a1b2c3d4e5f6","status":"paid"}"#).as_map().unwrap().clone();
    assert_eq!(effects[0], Effect::RowUpsert { table: "orders".into(), key: vec!["id".into()], values: row.clone() });
    assert_eq!(effects[1], Effect::Emit { to: EmitTarget::Room("orders".into()), event: "changed".into(), payload: Value::Map(row.clone()) });
    assert_eq!(effects[2], Effect::Audit { record: Value::Map(row) });
    assert_eq!(effects[3], Effect::RowDelete { table: "old".into(), key: json(r#"{"id":"65a1f0c2e4b0a1b2c3d4e5f6"}"#).as_map().unwrap().clone() });
    assert_eq!(p.handle_event(&order_event()).unwrap_err().to_string(), "more than 1 rows", "state is kept");

    let socket = Event { seq: 1, id: "1".into(), source: "s".into(), time_ms: 0, body: EventBody::Socket(SocketEvent::default()) };
    assert_eq!(p.handle_event(&socket).unwrap_err().to_string(), "only changes are expected");
}

#[test]
fn config_mistakes_name_the_key_and_big_numbers_are_refused_not_wrapped() {
    let err = |s: &str| Sync::from_config(&json(s)).err().unwrap().to_string();
    assert_eq!(err(r#"{}"#), "config.table: is required but missing");
    assert!(err(r#"{"table":"t","max_rowz":1}"#).starts_with("config.max_rowz: is not a known key"));
    assert!(err(r#"{"table":7}"#).starts_with("config.table: invalid type: integer `7`"));
    assert!(err(r#"{"table":"t","max_rows":9223372036854775807}"#).starts_with("config.max_rows: invalid value"));
    assert!(err(r#"{"table":"t","max_rows":-1}"#).starts_with("config.max_rows: invalid value"));
    assert_eq!(err(r#"{"table":""}"#), "config.table must not be empty");
}

#[test]
fn effect_constructors_refuse_rows_that_are_not_maps() {
    let err = Effect::row_upsert("t", ["id"], &vec![1, 2]).unwrap_err();
    assert!(err.to_string().contains("must serialize to a map of columns"), "{err}");
    let err = Effect::audit(&std::collections::BTreeMap::from([(1, 2)])).unwrap_err();
    assert!(err.to_string().contains("map keys must be strings"), "{err}");
}

#[test]
fn errors_convert_with_question_mark() {
    fn parse(s: &str) -> Result<i64> {
        Ok(s.parse::<i64>()?)
    }
    assert!(parse("x").unwrap_err().to_string().contains("invalid digit"));
    fn ctx() -> Result<()> {
        Err::<(), _>(std::fmt::Error).context("writing the key")?;
        Ok(())
    }
    assert!(ctx().unwrap_err().to_string().starts_with("writing the key: "));
}
