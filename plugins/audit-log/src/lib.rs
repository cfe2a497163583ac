//! Bundled plugin `audit-log`: one audit record per database change.
//!
//! The record says when, where (`ns`), what (`op`, `key`, `changed_fields`) and
//! who (`actor`, read from a configurable field of the document), keyed by the
//! event id so a replayed event writes no second record. It reads only the key,
//! the field names and the actor field, in place: a 16 MB document costs no copy.

use oplet_sdk::{ChangeView, Effect, Error, EventView, Plugin, RawValue, Result};
use serde::{Deserialize, Serialize};

oplet_sdk::export_plugin!(AuditLog);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The document field naming who made the change.
    pub actor_field: String,
    /// `db.coll`, `db.*` or `*` patterns to record; empty means every change.
    pub namespaces: Vec<String>,
    /// Also record `snapshot` events (documents that already existed, read by the
    /// host's initial snapshot or `oplet backfill`). Off: they are not changes, and
    /// a snapshot of a big collection would write one record per document.
    pub snapshots: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { actor_field: "actor".into(), namespaces: vec![], snapshots: false }
    }
}

pub struct AuditLog {
    config: Config,
}

impl Plugin for AuditLog {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        if config.actor_field.is_empty() {
            return Err(Error::new("config.actor_field must be a field path such as \"actor\" or \"meta.by\""));
        }
        if let Some(bad) = config.namespaces.iter().find(|ns| *ns != "*" && !ns.contains('.')) {
            return Err(Error::new(format!("config.namespaces: {bad:?} must be \"db.coll\", \"db.*\" or \"*\"")));
        }
        Ok(AuditLog { config })
    }

    fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
        let Some(change) = event.change() else { return Ok(vec![]) };
        if change.op() == "snapshot" && !self.config.snapshots {
            return Ok(vec![]);
        }
        let ns = &self.config.namespaces;
        if !ns.is_empty() && !ns.iter().any(|p| change.in_namespace(p)) {
            return Ok(vec![]);
        }
        let record = Record {
            time_ms: event.time_ms(),
            ns: change.namespace(),
            op: change.op(),
            key: change.key(),
            changed_fields: changed_fields(change),
            actor: change.field(&self.config.actor_field),
            event_id: event.id(),
        };
        Ok(vec![Effect::audit(&record)?])
    }
}

/// The audit record, borrowing from the event: serialized straight into the effect.
#[derive(Serialize)]
struct Record<'a> {
    time_ms: i64,
    ns: String,
    op: &'a str,
    key: RawValue<'a>,
    changed_fields: Option<Vec<&'a str>>,
    actor: Option<RawValue<'a>>,
    event_id: &'a str,
}

/// The fields an update set or removed, or the top-level fields of an inserted or
/// replacing document; null when the change does not say.
fn changed_fields<'a>(change: &ChangeView<'a>) -> Option<Vec<&'a str>> {
    match change.op() {
        "insert" | "replace" | "snapshot" => Some(change.full_document()?.as_map()?.keys().collect()),
        _ if change.updated_fields().is_some() || change.removed_fields().is_some() => {
            let set = change.updated_fields().into_iter().flat_map(|u| u.keys());
            let removed = change.removed_fields().into_iter().flatten().filter_map(|r| r.as_str());
            Some(set.chain(removed).collect())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, Event, EventBody, OperationType, Value};

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

    fn plugin(config: &[(&str, Value)]) -> AuditLog {
        AuditLog::from_config(&map(config)).unwrap()
    }

    fn record(plugin: &mut AuditLog, e: &Event) -> Value {
        match plugin.handle_event(e).unwrap().as_slice() {
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
        let r = record(&mut plugin(&[]), &event(c));
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
        let r = record(&mut plugin(&[("actor_field", "meta.by".into())]), &event(c));
        assert_eq!(r.get("changed_fields"), Some(&Value::from(vec!["_id", "meta"])));
        assert_eq!(r.get("actor"), Some(&Value::from("bob")));
    }

    #[test]
    fn a_delete_has_unknown_changed_fields_and_no_actor() {
        let r = record(&mut plugin(&[]), &event(change(OperationType::Delete, "users")));
        assert_eq!(r.get("changed_fields"), Some(&Value::Null));
        assert_eq!(r.get("actor"), Some(&Value::Null));
        assert_eq!(r.get("op"), Some(&Value::from("delete")));
    }

    #[test]
    fn snapshot_reads_are_recorded_only_when_asked() {
        let mut c = change(OperationType::Snapshot, "users");
        c.full_document = Some(map(&[("_id", Value::Int(7)), ("name", "Ada".into())]));
        assert!(plugin(&[]).handle_event(&event(c.clone())).unwrap().is_empty(), "off by default");
        let r = record(&mut plugin(&[("snapshots", Value::Bool(true))]), &event(c));
        assert_eq!(r.get("op"), Some(&Value::from("snapshot")));
        assert_eq!(r.get("changed_fields"), Some(&Value::from(vec!["_id", "name"])));
    }

    #[test]
    fn namespaces_restrict_what_is_recorded() {
        let mut p = plugin(&[("namespaces", Value::from(vec!["app.orders"]))]);
        assert!(p.handle_event(&event(change(OperationType::Delete, "users"))).unwrap().is_empty());
        assert_eq!(p.handle_event(&event(change(OperationType::Delete, "orders"))).unwrap().len(), 1);
        let err = AuditLog::from_config(&map(&[("namespaces", Value::from(vec!["orders"]))])).err().unwrap();
        assert!(err.to_string().contains("config.namespaces"), "{err}");
    }

    #[test]
    fn config_mistakes_name_the_key() {
        let err = |c: &[(&str, Value)]| AuditLog::from_config(&map(c)).err().unwrap().to_string();
        assert!(err(&[("actor_field", Value::Int(1))]).starts_with("config.actor_field: invalid type"));
        assert!(err(&[("actor_field", "".into())]).contains("config.actor_field"));
        assert!(err(&[("actor", "x".into())]).starts_with("config.actor: is not a known key"));
    }

    #[test]
    fn a_socket_event_is_not_recorded() {
        let s = oplet_sdk::SocketEvent { client: "c".into(), event: "e".into(), payload: Value::Null };
        let e = Event { seq: 1, id: "1".into(), source: "socket".into(), time_ms: 0, body: EventBody::Socket(s) };
        assert!(plugin(&[]).handle_event(&e).unwrap().is_empty());
    }
}
