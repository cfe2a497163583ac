//! Bundled plugin `client-start`: tells a client to start when its flag turns true.
//!
//! Replaces clients polling "is my `connection` true yet?": when a clients document
//! gets a truthy flag, that client is sent `start_client` with its uuid and key.
//! At-least-once (see the manifest): a client must treat a repeated start as a no-op.

use oplet_sdk::{ChangeView, Effect, Error, EventView, LogLevel, Map, Plugin, RawValue, Result, Value};
use serde::Deserialize;
use std::collections::HashMap;

oplet_sdk::export_plugin!(ClientStart);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub namespace: String,
    pub flag_field: String,
    pub client_field: String,
    pub key_field: String,
    pub event: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "app.clients".into(),
            flag_field: "connection".into(),
            client_field: "uuid".into(),
            key_field: "key".into(),
            event: "start_client".into(),
        }
    }
}

/// The last thing seen of one client document.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    flag: Option<bool>,
    client: Option<String>,
    key: Option<Value>,
}

/// The plugin: its config, and what this instance has seen of each client
/// document, by documentKey. The memory is lost when the instance is replaced;
/// see `fires`.
#[derive(Debug)]
pub struct ClientStart {
    config: Config,
    seen: HashMap<String, Seen>,
}

impl Plugin for ClientStart {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        for (name, v) in [
            ("namespace", &config.namespace),
            ("flag_field", &config.flag_field),
            ("client_field", &config.client_field),
            ("key_field", &config.key_field),
            ("event", &config.event),
        ] {
            if v.is_empty() {
                return Err(Error::new(format!("config.{name} must be a non-empty string")));
            }
        }
        if !config.namespace.contains('.') {
            return Err(Error::new(format!("config.namespace {:?} must be \"db.coll\"", config.namespace)));
        }
        Ok(ClientStart { config, seen: HashMap::new() })
    }

    fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
        let Some(change) = event.change() else { return Ok(vec![]) };
        let config = &self.config;
        if matches!(change.op(), "drop" | "dropDatabase" | "rename" | "invalidate") {
            self.seen.clear();
            return Ok(vec![]);
        }
        // Exactly this collection (no patterns), compared without building "db.coll".
        if config.namespace.split_once('.') != Some((change.db(), change.coll())) {
            return Ok(vec![]);
        }
        let doc_key = change.key().to_value()?.to_json();
        if change.op() == "delete" {
            self.seen.remove(&doc_key);
            return Ok(vec![]);
        }
        let seen = self.seen.entry(doc_key).or_default();
        let now = flag_now(change, &config.flag_field);
        let fire = fires(change, &config.flag_field, now, seen.flag);
        if now.is_some() {
            seen.flag = now;
        }
        if let Some(client) = field(change, &config.client_field).filter(|v| !v.is_null()) {
            seen.client = Some(client.to_key_string());
        }
        if let Some(key) = field(change, &config.key_field) {
            seen.key = Some(key.to_value()?);
        }
        if !fire {
            return Ok(vec![]);
        }
        let Some(client) = seen.client.clone() else {
            return Ok(vec![Effect::Log {
                level: LogLevel::Warn,
                message: format!(
                    "client-start: {} of {} {} (event {}) turned {:?} true, but field {:?} naming the client is not in \
                     the change and was not seen before; no {:?} sent (enable fullDocument \"updateLookup\")",
                    change.op(),
                    change.namespace(),
                    change.key().to_value()?.to_json(),
                    event.id(),
                    config.flag_field,
                    config.client_field,
                    config.event,
                ),
            }]);
        };
        let mut payload = Map::new();
        payload.insert("uuid".into(), client.clone().into());
        payload.insert("key".into(), seen.key.clone().unwrap_or_default());
        Ok(vec![Effect::emit_to_client(client, config.event.clone(), Value::Map(payload))])
    }
}

/// Whether this change turns the flag on. An update that set the flag says so
/// itself; otherwise the flag's previous value is what this instance last saw,
/// and an unknown one counts as off: after the instance is replaced, a flag that
/// is still on fires once more (at-least-once).
fn fires(change: &ChangeView, flag_field: &str, now: Option<bool>, last_seen: Option<bool>) -> bool {
    if change.op() == "insert" {
        return now == Some(true);
    }
    if let Some(set) = change.updated(flag_field) {
        return set.is_truthy();
    }
    now == Some(true) && last_seen != Some(true)
}

/// The flag after the change, if the change says.
fn flag_now(change: &ChangeView, flag_field: &str) -> Option<bool> {
    if let Some(v) = field(change, flag_field) {
        return Some(v.is_truthy());
    }
    // A full document without the flag means the flag is off.
    (change.removed(flag_field) || change.full_document().is_some()).then_some(false)
}

/// A field after the change: from the full document, else the updated fields.
fn field<'a>(change: &ChangeView<'a>, path: &str) -> Option<RawValue<'a>> {
    match change.full_document() {
        Some(doc) => doc.get(path),
        None => change.updated(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, Event, EventBody, OperationType};

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn change(op: OperationType, id: i64) -> Change {
        Change {
            op,
            db: "app".into(),
            coll: "clients".into(),
            key: map(&[("_id", Value::Int(id))]),
            ..Default::default()
        }
    }

    fn doc(flag: Value) -> Option<Value> {
        Some(map(&[("uuid", "c-1".into()), ("key", "k-1".into()), ("connection", flag)]))
    }

    fn set(pairs: &[(&str, Value)]) -> Option<Map> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn run(clients: &mut ClientStart, change: Change) -> Vec<Effect> {
        let e = Event { seq: 1, id: "tok".into(), source: "mongo".into(), time_ms: 0, body: EventBody::Change(change) };
        clients.handle_event(&e).unwrap()
    }

    fn fresh() -> ClientStart {
        ClientStart::new(Config::default()).unwrap()
    }

    fn start() -> Vec<Effect> {
        vec![Effect::emit_to_client("c-1", "start_client", map(&[("uuid", "c-1".into()), ("key", "k-1".into())]))]
    }

    #[test]
    fn an_insert_with_the_flag_on_starts_the_client() {
        let mut c = change(OperationType::Insert, 1);
        c.full_document = doc(true.into());
        assert_eq!(run(&mut fresh(), c), start());
    }

    #[test]
    fn an_update_that_sets_the_flag_starts_the_client_even_without_full_document_if_seen_before() {
        let mut clients = fresh();
        let mut insert = change(OperationType::Insert, 1);
        insert.full_document = doc(false.into());
        assert!(run(&mut clients, insert).is_empty());
        let mut update = change(OperationType::Update, 1);
        update.updated_fields = set(&[("connection", Value::Int(1))]);
        assert_eq!(run(&mut clients, update), start());
    }

    #[test]
    fn an_update_of_other_fields_does_not_start_a_client_already_seen_on() {
        let mut clients = fresh();
        let mut on = change(OperationType::Update, 1);
        on.full_document = doc(true.into());
        on.updated_fields = set(&[("connection", true.into())]);
        assert_eq!(run(&mut clients, on), start());
        let mut other = change(OperationType::Update, 1);
        other.full_document = doc(true.into());
        other.updated_fields = set(&[("last_seen", Value::Int(5))]);
        assert!(run(&mut clients, other.clone()).is_empty());
        // A fresh instance has not seen the flag: it fires once more (at-least-once).
        assert_eq!(run(&mut fresh(), other), start());
    }

    #[test]
    fn a_replace_fires_only_on_a_transition_seen_by_this_instance() {
        let mut clients = fresh();
        let replace = |flag: bool| {
            let mut c = change(OperationType::Replace, 1);
            c.full_document = doc(flag.into());
            c
        };
        assert_eq!(run(&mut clients, replace(true)), start());
        assert!(run(&mut clients, replace(true)).is_empty());
        assert!(run(&mut clients, replace(false)).is_empty());
        assert_eq!(run(&mut clients, replace(true)), start());
    }

    #[test]
    fn an_unknown_client_is_a_warning_not_an_emit() {
        let mut c = change(OperationType::Update, 2);
        c.updated_fields = set(&[("connection", true.into())]);
        let effects = run(&mut fresh(), c);
        let [Effect::Log { level: LogLevel::Warn, message }] = effects.as_slice() else { panic!("{effects:?}") };
        assert!(message.contains("\"uuid\""), "{message}");
    }

    #[test]
    fn a_delete_forgets_the_client() {
        let mut clients = fresh();
        let mut insert = change(OperationType::Insert, 1);
        insert.full_document = doc(false.into());
        run(&mut clients, insert);
        run(&mut clients, change(OperationType::Delete, 1));
        assert!(clients.seen.is_empty());
    }

    #[test]
    fn other_collections_and_socket_events_are_ignored() {
        let mut c = change(OperationType::Insert, 1);
        c.coll = "users".into();
        c.full_document = doc(true.into());
        assert!(run(&mut fresh(), c).is_empty());
        assert!(ClientStart::from_config(&map(&[("namespace", "clients".into())])).is_err());
        let custom = ClientStart::from_config(&map(&[("flag_field", "online".into()), ("event", "go".into())])).unwrap();
        let c = &custom.config;
        assert_eq!((c.flag_field.as_str(), c.event.as_str(), c.client_field.as_str()), ("online", "go", "uuid"));
        let err = ClientStart::from_config(&map(&[("flag_field", Value::Int(1))])).err().unwrap().to_string();
        assert!(err.starts_with("config.flag_field: invalid type"), "{err}");
    }
}
