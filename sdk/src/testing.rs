//! Native unit tests for plugins: build events in a line, run a plugin's handler
//! with its config, no wasm and no host needed (`cargo test` in a plugin project).
//!
//! Events go through the same MessagePack encoding and lazy `EventView` the host's
//! calls use, so what passes here sees the bytes the deployed plugin would see.
//!
//! ```ignore
//! use oplet_sdk::testing::{change, run_with};
//! let effects = run_with::<MyPlugin>(json!({"paid_status": "paid"}),
//!     change().update("app.orders").id(7).set(json!({"status": "paid"})))?;
//! ```

use crate::{to_value, Change, Effect, Event, EventBody, Map, OperationType, Plugin, Result, SocketEvent, Value};
use serde::Serialize;

/// A change event being built: `change().insert("app.orders").doc(json!({...}))`.
#[derive(Debug, Clone)]
#[must_use = "pass it to `run`/`Harness::handle`, or call `.event()`"]
pub struct ChangeBuilder {
    event: Event,
    change: Change,
}

/// Starts a change event (an insert into `test.test` until told otherwise).
pub fn change() -> ChangeBuilder {
    ChangeBuilder {
        event: header(),
        change: Change { op: OperationType::Insert, db: "test".into(), coll: "test".into(), ..Default::default() },
    }
}

fn header() -> Event {
    Event { seq: 1, id: "test:1".into(), source: "test".into(), time_ms: 1_700_000_000_000, body: EventBody::Other }
}

/// Serializes a test value into a `Value`; a value that cannot be one is a bug in
/// the test, so it panics with the reason.
fn value(v: impl Serialize) -> Value {
    to_value(&v).unwrap_or_else(|e| panic!("oplet_sdk::testing: not a document or value: {e}"))
}

impl ChangeBuilder {
    fn op(mut self, op: OperationType, namespace: &str) -> Self {
        let (db, coll) = namespace
            .split_once('.')
            .unwrap_or_else(|| panic!("oplet_sdk::testing: {namespace:?} is not a namespace: write \"database.collection\""));
        self.change.op = op;
        self.change.db = db.into();
        self.change.coll = coll.into();
        self
    }

    /// An insert into `db.coll`.
    pub fn insert(self, namespace: &str) -> Self {
        self.op(OperationType::Insert, namespace)
    }
    /// An update in `db.coll` (add `.set(...)`, `.unset(...)`, `.doc(...)` for a looked-up document).
    pub fn update(self, namespace: &str) -> Self {
        self.op(OperationType::Update, namespace)
    }
    /// A replace in `db.coll`.
    pub fn replace(self, namespace: &str) -> Self {
        self.op(OperationType::Replace, namespace)
    }
    /// A delete in `db.coll` (set the key with `.id(...)`).
    pub fn delete(self, namespace: &str) -> Self {
        self.op(OperationType::Delete, namespace)
    }
    /// Any other operation type, by its MongoDB name (`"drop"`, `"rename"` ...).
    pub fn operation(self, op: &str, namespace: &str) -> Self {
        let op = from_value::<OperationType>(Value::String(op.into()));
        self.op(op, namespace)
    }

    /// The full document after the change; its `_id` becomes the document key
    /// unless `.id(...)` set one.
    pub fn doc(mut self, doc: impl Serialize) -> Self {
        let doc = value(doc);
        if self.change.key.get("_id").is_none() {
            if let Some(id) = doc.get("_id") {
                self.change.key = Value::Map([("_id".to_string(), id.clone())].into_iter().collect());
            }
        }
        self.change.full_document = Some(doc);
        self
    }
    /// The document key's `_id` (`.id(7)`, `.id(json!({"$oid": "65a1..."}))`).
    pub fn id(mut self, id: impl Serialize) -> Self {
        self.change.key = Value::Map([("_id".to_string(), value(id))].into_iter().collect());
        self
    }
    /// The fields an update set (`updateDescription.updatedFields`): a map.
    pub fn set(mut self, fields: impl Serialize) -> Self {
        match value(fields) {
            Value::Map(m) => self.change.updated_fields = Some(m),
            other => panic!("oplet_sdk::testing: .set() takes a map of fields, not {other:?}"),
        }
        self.change.removed_fields.get_or_insert_with(Vec::new);
        self
    }
    /// The fields an update removed.
    pub fn unset<S: Into<String>>(mut self, fields: impl IntoIterator<Item = S>) -> Self {
        self.change.removed_fields = Some(fields.into_iter().map(Into::into).collect());
        self.change.updated_fields.get_or_insert_with(Map::new);
        self
    }
    /// The document before the change (pre-images).
    pub fn before(mut self, doc: impl Serialize) -> Self {
        self.change.before = Some(value(doc));
        self
    }
    /// The event's `seq` (default 1); the id stays `test:SEQ` unless set.
    pub fn seq(mut self, seq: u64) -> Self {
        self.event = with_seq(self.event, seq);
        self
    }
    /// The event's `id` (the host keys audit records by it).
    pub fn event_id(mut self, id: &str) -> Self {
        self.event.id = id.into();
        self
    }
    /// The event's `time_ms`.
    pub fn time_ms(mut self, ms: i64) -> Self {
        self.event.time_ms = ms;
        self
    }
    /// The finished `Event`.
    pub fn event(self) -> Event {
        Event { body: EventBody::Change(self.change), ..self.event }
    }
}

fn with_seq(mut e: Event, seq: u64) -> Event {
    if e.id == format!("{}:{}", e.source, e.seq) {
        e.id = format!("{}:{seq}", e.source);
    }
    e.seq = seq;
    e
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> T {
    crate::from_value(&v).unwrap_or_else(|e| panic!("oplet_sdk::testing: {e}"))
}

/// A Socket.IO client event being built: `socket("ready").client("c1").payload(json!({...}))`.
#[derive(Debug, Clone)]
#[must_use = "pass it to `run`/`Harness::handle`, or call `.event()`"]
pub struct SocketBuilder {
    event: Event,
    socket: SocketEvent,
}

/// Starts a Socket.IO event named `event`, from client `"client-1"`.
pub fn socket(event: &str) -> SocketBuilder {
    let mut header = header();
    header.source = "socket".into();
    header.id = "socket:1".into();
    SocketBuilder { event: header, socket: SocketEvent { client: "client-1".into(), event: event.into(), payload: Value::Null } }
}

impl SocketBuilder {
    /// The client's authenticated identity.
    pub fn client(mut self, client: &str) -> Self {
        self.socket.client = client.into();
        self
    }
    /// What the client sent with the event.
    pub fn payload(mut self, payload: impl Serialize) -> Self {
        self.socket.payload = value(payload);
        self
    }
    pub fn seq(mut self, seq: u64) -> Self {
        self.event = with_seq(self.event, seq);
        self
    }
    pub fn event(self) -> Event {
        Event { body: EventBody::Socket(self.socket), ..self.event }
    }
}

impl From<ChangeBuilder> for Event {
    fn from(b: ChangeBuilder) -> Event {
        b.event()
    }
}

impl From<SocketBuilder> for Event {
    fn from(b: SocketBuilder) -> Event {
        b.event()
    }
}

/// One plugin instance, made from a config as the host makes it (through serde,
/// errors naming the key), handling events as the host hands them over.
pub struct Harness<P: Plugin> {
    plugin: P,
}

impl<P: Plugin> Harness<P> {
    /// `P::new` with `config` (anything serializable: `json!({...})`, a struct,
    /// `()` for an empty table). Errors are what the host would refuse the plugin with.
    pub fn new(config: impl Serialize) -> Result<Self> {
        let config = match value(config) {
            Value::Null => Value::Map(Map::new()),
            v => v,
        };
        Ok(Harness { plugin: P::from_config(&config)? })
    }

    /// The plugin's effects for `event` (encoded and read back as the host does).
    pub fn handle(&mut self, event: impl Into<Event>) -> Result<Vec<Effect>> {
        self.plugin.handle_event(&event.into())
    }

    /// The plugin itself, to look at its state.
    pub fn plugin(&mut self) -> &mut P {
        &mut self.plugin
    }
}

/// One event through a fresh instance of `P` made with `config`: its effects, or
/// the error of `new` or of `handle`.
pub fn run_with<P: Plugin>(config: impl Serialize, event: impl Into<Event>) -> Result<Vec<Effect>> {
    Harness::<P>::new(config)?.handle(event)
}

/// The events of a JSON-lines file as `oplet plugin test` and the JSON-lines
/// source read them (`include_str!("../events.jsonl")`): one per non-empty line
/// not starting with `//`; `seq` is the line number, `id` defaults to `test:LINE`.
/// Panics naming the line that is not an event.
pub fn events_from_jsonl(text: &str) -> Vec<Event> {
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        time_ms: Option<i64>,
        body: EventBody,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let n = i as u64 + 1;
        let parsed: Line = serde_json::from_str(line).unwrap_or_else(|e| panic!("events line {n}: not an event: {e}"));
        out.push(Event {
            seq: n,
            id: parsed.id.unwrap_or_else(|| format!("test:{n}")),
            source: "test".into(),
            time_ms: parsed.time_ms.unwrap_or(1_700_000_000_000),
            body: parsed.body,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventView;

    struct Echo {
        prefix: String,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EchoConfig {
        prefix: String,
    }

    impl Plugin for Echo {
        type Config = EchoConfig;
        fn new(config: EchoConfig) -> Result<Self> {
            Ok(Echo { prefix: config.prefix })
        }
        fn handle(&mut self, event: &EventView<'_>) -> Result<Vec<Effect>> {
            let Some(c) = event.change() else { return Ok(vec![]) };
            let id = c.id().map(|i| i.to_key_string()).unwrap_or_default();
            Ok(vec![Effect::cache_delete([format!("{}{}:{}:{}", self.prefix, c.op(), c.coll(), id)])])
        }
    }

    #[test]
    fn built_events_reach_the_handler_as_the_host_sends_them() {
        let config = serde_json::json!({"prefix": "k:"});
        let e = change().insert("app.orders").doc(serde_json::json!({"_id": 7, "status": "paid"}));
        assert_eq!(run_with::<Echo>(&config, e).unwrap(), vec![Effect::CacheDelete { keys: vec!["k:insert:orders:7".into()] }]);
        let mut h = Harness::<Echo>::new(&config).unwrap();
        let e = change().delete("app.users").id("u1").seq(9).event();
        assert_eq!((e.seq, e.id.as_str()), (9, "test:9"));
        assert_eq!(h.handle(e).unwrap(), vec![Effect::CacheDelete { keys: vec!["k:delete:users:u1".into()] }]);
        assert_eq!(h.handle(socket("ready").client("c1")).unwrap(), vec![]);
    }

    #[test]
    fn a_bad_config_is_refused_naming_the_key() {
        let err = Harness::<Echo>::new(serde_json::json!({"prefix": 1})).err().unwrap();
        assert!(err.to_string().starts_with("config.prefix: invalid type"), "{err}");
    }

    #[test]
    fn sample_lines_read_like_plugin_test_reads_them() {
        let events = events_from_jsonl(
            "// a comment\n{\"body\":{\"kind\":\"change\",\"data\":{\"op\":\"update\",\"db\":\"a\",\"coll\":\"b\",\"key\":{\"_id\":1},\"updated_fields\":{\"x\":2}}}}\n\n",
        );
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].seq, events[0].id.as_str()), (2, "test:2"));
        let EventBody::Change(c) = &events[0].body else { panic!() };
        assert_eq!(c.updated_fields.as_ref().unwrap().get("x"), Some(&Value::Int(2)));
    }
}
