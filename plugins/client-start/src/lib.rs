//! Bundled plugin `client-start`: tells a client to start when its flag turns true.
//!
//! Replaces clients polling "is my `connection` true yet?": when a clients document
//! gets a truthy flag, that client is sent `start_client` with its uuid and key.
//! At-least-once (see the manifest): a client must treat a repeated start as a no-op.

use oplet_sdk::{handler, init, Change, Effect, Error, Event, EventBody, LogLevel, Map, OperationType, Result, Value};
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    /// What this instance has seen of each client document, by documentKey. Lost
    /// when the instance is replaced; see `Clients::fires`.
    static CLIENTS: RefCell<Clients> = RefCell::new(Clients::default());
}

#[init]
pub fn setup(config: &Value) -> Result<()> {
    let config = Config::from_value(config)?;
    CONFIG.with(|c| *c.borrow_mut() = config);
    Ok(())
}

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    Ok(CONFIG.with(|c| CLIENTS.with(|s| s.borrow_mut().effects(&c.borrow(), event))))
}

#[derive(Debug, Clone, PartialEq)]
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

impl Config {
    pub fn from_value(config: &Value) -> Result<Config> {
        let mut out = Config::default();
        for (name, slot) in [
            ("namespace", &mut out.namespace),
            ("flag_field", &mut out.flag_field),
            ("client_field", &mut out.client_field),
            ("key_field", &mut out.key_field),
            ("event", &mut out.event),
        ] {
            match config.get(name) {
                None => {}
                Some(Value::String(s)) if !s.is_empty() => *slot = s.clone(),
                Some(_) => return Err(Error::new(format!("config.{name} must be a non-empty string"))),
            }
        }
        if !out.namespace.contains('.') {
            return Err(Error::new(format!("config.namespace {:?} must be \"db.coll\"", out.namespace)));
        }
        Ok(out)
    }
}

/// The last thing seen of one client document.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    flag: Option<bool>,
    client: Option<String>,
    key: Option<Value>,
}

#[derive(Debug, Default)]
pub struct Clients {
    seen: HashMap<String, Seen>,
}

impl Clients {
    pub fn effects(&mut self, config: &Config, event: &Event) -> Vec<Effect> {
        let EventBody::Change(change) = &event.body else { return vec![] };
        match change.op {
            OperationType::Drop | OperationType::DropDatabase | OperationType::Rename | OperationType::Invalidate => {
                self.seen.clear();
                return vec![];
            }
            _ => {}
        }
        if change.namespace() != config.namespace {
            return vec![];
        }
        let doc_key = change.key.to_json();
        if change.op == OperationType::Delete {
            self.seen.remove(&doc_key);
            return vec![];
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
            seen.key = Some(key.clone());
        }
        if !fire {
            return vec![];
        }
        let Some(client) = seen.client.clone() else {
            return vec![Effect::Log {
                level: LogLevel::Warn,
                message: format!(
                    "client-start: {} of {} {} (event {}) turned {:?} true, but field {:?} naming the client is not in \
                     the change and was not seen before; no {:?} sent (enable fullDocument \"updateLookup\")",
                    change.op,
                    change.namespace(),
                    change.key.to_json(),
                    event.id,
                    config.flag_field,
                    config.client_field,
                    config.event,
                ),
            }];
        };
        let mut payload = Map::new();
        payload.insert("uuid".into(), client.clone().into());
        payload.insert("key".into(), seen.key.clone().unwrap_or_default());
        vec![Effect::emit_to_client(client, config.event.clone(), Value::Map(payload))]
    }
}

/// Whether this change turns the flag on. An update that set the flag says so
/// itself; otherwise the flag's previous value is what this instance last saw,
/// and an unknown one counts as off: after the instance is replaced, a flag that
/// is still on fires once more (at-least-once).
fn fires(change: &Change, flag_field: &str, now: Option<bool>, last_seen: Option<bool>) -> bool {
    if change.op == OperationType::Insert {
        return now == Some(true);
    }
    if let Some(set) = change.updated(flag_field) {
        return set.is_truthy();
    }
    now == Some(true) && last_seen != Some(true)
}

/// The flag after the change, if the change says.
fn flag_now(change: &Change, flag_field: &str) -> Option<bool> {
    if let Some(v) = field(change, flag_field) {
        return Some(v.is_truthy());
    }
    let removed = change.removed_fields.iter().flatten().any(|r| r == flag_field);
    // A full document without the flag means the flag is off.
    (removed || change.full_document.is_some()).then_some(false)
}

/// A field after the change: from the full document, else the updated fields.
fn field<'a>(change: &'a Change, path: &str) -> Option<&'a Value> {
    match &change.full_document {
        Some(doc) => doc.get_path(path),
        None => change.updated(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn run(clients: &mut Clients, change: Change) -> Vec<Effect> {
        let e = Event { seq: 1, id: "tok".into(), source: "mongo".into(), time_ms: 0, body: EventBody::Change(change) };
        clients.effects(&Config::default(), &e)
    }

    fn start() -> Vec<Effect> {
        vec![Effect::emit_to_client("c-1", "start_client", map(&[("uuid", "c-1".into()), ("key", "k-1".into())]))]
    }

    #[test]
    fn an_insert_with_the_flag_on_starts_the_client() {
        let mut c = change(OperationType::Insert, 1);
        c.full_document = doc(true.into());
        assert_eq!(run(&mut Clients::default(), c), start());
    }

    #[test]
    fn an_update_that_sets_the_flag_starts_the_client_even_without_full_document_if_seen_before() {
        let mut clients = Clients::default();
        let mut insert = change(OperationType::Insert, 1);
        insert.full_document = doc(false.into());
        assert!(run(&mut clients, insert).is_empty());
        let mut update = change(OperationType::Update, 1);
        update.updated_fields = set(&[("connection", Value::Int(1))]);
        assert_eq!(run(&mut clients, update), start());
    }

    #[test]
    fn an_update_of_other_fields_does_not_start_a_client_already_seen_on() {
        let mut clients = Clients::default();
        let mut on = change(OperationType::Update, 1);
        on.full_document = doc(true.into());
        on.updated_fields = set(&[("connection", true.into())]);
        assert_eq!(run(&mut clients, on), start());
        let mut other = change(OperationType::Update, 1);
        other.full_document = doc(true.into());
        other.updated_fields = set(&[("last_seen", Value::Int(5))]);
        assert!(run(&mut clients, other.clone()).is_empty());
        // A fresh instance has not seen the flag: it fires once more (at-least-once).
        assert_eq!(run(&mut Clients::default(), other), start());
    }

    #[test]
    fn a_replace_fires_only_on_a_transition_seen_by_this_instance() {
        let mut clients = Clients::default();
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
        let effects = run(&mut Clients::default(), c);
        let [Effect::Log { level: LogLevel::Warn, message }] = effects.as_slice() else { panic!("{effects:?}") };
        assert!(message.contains("\"uuid\""), "{message}");
    }

    #[test]
    fn a_delete_forgets_the_client() {
        let mut clients = Clients::default();
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
        assert!(run(&mut Clients::default(), c).is_empty());
        assert!(Config::from_value(&map(&[("namespace", "clients".into())])).is_err());
        let custom = Config::from_value(&map(&[("flag_field", "online".into()), ("event", "go".into())])).unwrap();
        assert_eq!(
            (custom.flag_field.as_str(), custom.event.as_str(), custom.client_field.as_str()),
            ("online", "go", "uuid")
        );
    }
}
