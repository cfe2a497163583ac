//! Bundled plugin `audit-log`: one audit record per database change.
//!
//! The record says when, where (`ns`), what (`op`, `key`, `changed_fields`) and
//! who (`actor`, read from a configurable field of the document), keyed by the
//! event id so a replayed event writes no second record.

use oplet_sdk::{handler, init, namespace_matches, Change, Effect, Error, Event, EventBody, Map, OperationType, Result, Value};
use std::cell::RefCell;

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

#[init]
pub fn setup(config: &Value) -> Result<()> {
    let config = Config::from_value(config)?;
    CONFIG.with(|c| *c.borrow_mut() = config);
    Ok(())
}

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    Ok(CONFIG.with(|c| c.borrow().effects(event)))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The document field naming who made the change.
    pub actor_field: String,
    /// `db.coll`, `db.*` or `*` patterns to record; empty means every change.
    pub namespaces: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config { actor_field: "actor".into(), namespaces: vec![] }
    }
}

impl Config {
    pub fn from_value(config: &Value) -> Result<Config> {
        let mut out = Config::default();
        if let Some(v) = config.get("actor_field") {
            out.actor_field = v
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Error::new("config.actor_field must be a field path such as \"actor\" or \"meta.by\""))?
                .to_string();
        }
        if let Some(v) = config.get("namespaces") {
            let list =
                v.as_array().and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>());
            out.namespaces =
                list.ok_or_else(|| Error::new("config.namespaces must be a list of \"db.coll\" or \"db.*\""))?;
            if let Some(bad) = out.namespaces.iter().find(|ns| *ns != "*" && !ns.contains('.')) {
                return Err(Error::new(format!("config.namespaces: {bad:?} must be \"db.coll\", \"db.*\" or \"*\"")));
            }
        }
        Ok(out)
    }

    pub fn effects(&self, event: &Event) -> Vec<Effect> {
        let EventBody::Change(change) = &event.body else { return vec![] };
        if !self.namespaces.is_empty()
            && !self.namespaces.iter().any(|p| namespace_matches(p, &change.db, &change.coll))
        {
            return vec![];
        }
        vec![Effect::Audit { record: self.record(event, change) }]
    }

    fn record(&self, event: &Event, change: &Change) -> Value {
        let mut r = Map::new();
        r.insert("time_ms".into(), Value::Int(event.time_ms));
        r.insert("ns".into(), change.namespace().into());
        r.insert("op".into(), change.op.as_str().into());
        r.insert("key".into(), change.key.clone());
        r.insert("changed_fields".into(), changed_fields(change));
        r.insert("actor".into(), change.field(&self.actor_field).cloned().unwrap_or_default());
        r.insert("event_id".into(), event.id.clone().into());
        Value::Map(r)
    }
}

/// The fields an update set or removed, or the top-level fields of an inserted or
/// replacing document; null when the change does not say.
fn changed_fields(change: &Change) -> Value {
    match change.op {
        OperationType::Insert | OperationType::Replace => match change.full_document.as_ref().and_then(Value::as_map) {
            Some(doc) => doc.keys().cloned().collect::<Vec<_>>().into(),
            None => Value::Null,
        },
        _ if change.updated_fields.is_some() || change.removed_fields.is_some() => {
            let set = change.updated_fields.iter().flat_map(|u| u.keys().cloned());
            let removed = change.removed_fields.iter().flatten().cloned();
            set.chain(removed).collect::<Vec<_>>().into()
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn event(change: Change) -> Event {
        Event {
            seq: 3,
            id: "tok-3".into(),
            source: "mongo".into(),
            time_ms: 1_700_000_000_000,
            body: EventBody::Change(change),
        }
    }

    fn change(op: OperationType, coll: &str) -> Change {
        Change { op, db: "app".into(), coll: coll.into(), key: map(&[("_id", Value::Int(7))]), ..Default::default() }
    }

    fn record(config: &Config, e: &Event) -> Value {
        match config.effects(e).as_slice() {
            [Effect::Audit { record }] => record.clone(),
            other => panic!("one audit record expected, got {other:?}"),
        }
    }

    #[test]
    fn an_update_records_set_and_removed_fields_and_the_actor() {
        let mut c = change(OperationType::Update, "users");
        c.updated_fields =
            Some([("name".to_string(), "Ada".into()), ("actor".to_string(), "admin".into())].into_iter().collect());
        c.removed_fields = Some(vec!["legacy".into()]);
        let r = record(&Config::default(), &event(c));
        assert_eq!(
            r,
            map(&[
                ("time_ms", Value::Int(1_700_000_000_000)),
                ("ns", "app.users".into()),
                ("op", "update".into()),
                ("key", map(&[("_id", Value::Int(7))])),
                ("changed_fields", Value::from(vec!["actor", "name", "legacy"])),
                ("actor", "admin".into()),
                ("event_id", "tok-3".into()),
            ])
        );
    }

    #[test]
    fn an_insert_lists_the_documents_top_level_fields_and_reads_a_configured_actor() {
        let mut c = change(OperationType::Insert, "orders");
        c.full_document = Some(map(&[("_id", Value::Int(7)), ("meta", map(&[("by", "bob".into())]))]));
        let config = Config::from_value(&map(&[("actor_field", "meta.by".into())])).unwrap();
        let r = record(&config, &event(c));
        assert_eq!(r.get("changed_fields"), Some(&Value::from(vec!["_id", "meta"])));
        assert_eq!(r.get("actor"), Some(&Value::from("bob")));
    }

    #[test]
    fn a_delete_has_unknown_changed_fields_and_no_actor() {
        let r = record(&Config::default(), &event(change(OperationType::Delete, "users")));
        assert_eq!(r.get("changed_fields"), Some(&Value::Null));
        assert_eq!(r.get("actor"), Some(&Value::Null));
        assert_eq!(r.get("op"), Some(&Value::from("delete")));
    }

    #[test]
    fn namespaces_restrict_what_is_recorded() {
        let config = Config::from_value(&map(&[("namespaces", Value::from(vec!["app.orders"]))])).unwrap();
        assert!(config.effects(&event(change(OperationType::Delete, "users"))).is_empty());
        assert_eq!(config.effects(&event(change(OperationType::Delete, "orders"))).len(), 1);
        assert!(Config::from_value(&map(&[("namespaces", Value::from(vec!["orders"]))])).is_err());
    }
}
