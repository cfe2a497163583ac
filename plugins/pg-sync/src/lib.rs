//! Bundled plugin `pg-sync`: mirrors MongoDB collections into PostgreSQL tables.
//!
//! Each configured table follows one namespace: inserts, updates, replaces and
//! snapshot reads (existing documents, from the host's initial snapshot or
//! `oplet backfill`) become a row upsert keyed by `_id` (mapped fields in their own
//! columns, the whole document in a jsonb column); deletes become a row delete.

use oplet_sdk::{ChangeView, Effect, Error, EventView, LogLevel, Map, Plugin, Result, Value};
use serde::Deserialize;
use std::collections::BTreeMap;

oplet_sdk::export_plugin!(PgSync);

/// The manifest's `[config]`: `[[config.tables]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tables: Vec<TableConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `db.coll` or `db.*`.
    pub namespace: String,
    pub table: String,
    /// Receives the document's `_id` as text.
    #[serde(default = "default_key_column")]
    pub key_column: String,
    /// Receives the whole document (jsonb); `""` disables it.
    #[serde(default = "default_document_column")]
    pub document_column: String,
    /// Document field path -> column name.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

fn default_key_column() -> String {
    "id".into()
}

fn default_document_column() -> String {
    "doc".into()
}

pub struct PgSync {
    tables: Vec<Table>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub namespace: String,
    pub table: String,
    pub key_column: String,
    /// `None` when disabled with `""`.
    pub document_column: Option<String>,
    pub columns: Vec<(String, String)>,
}

impl Plugin for PgSync {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        let tables = config.tables.into_iter().enumerate().map(|(i, t)| Table::new(i, t)).collect::<Result<Vec<_>>>()?;
        if tables.is_empty() {
            oplet_sdk::log(LogLevel::Warn, "pg-sync has no [[config.tables]]: it will write nothing");
        }
        Ok(PgSync { tables })
    }

    fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
        let Some(change) = event.change() else { return Ok(vec![]) };
        let tables: Vec<&Table> = self.tables.iter().filter(|t| change.in_namespace(&t.namespace)).collect();
        if tables.is_empty() {
            return Ok(vec![]);
        }
        let Some(id) = change.id().filter(|v| !v.is_null()) else {
            return Ok(vec![warn(format!(
                "pg-sync: {} {} (event {}) has no documentKey._id; nothing written",
                change.op(),
                change.namespace(),
                event.id()
            ))]);
        };
        let id = Value::String(id.to_key_string());
        let mut effects = Vec::new();
        match (change.op(), change.full_document()) {
            ("insert" | "update" | "replace" | "snapshot", Some(doc)) => {
                // The document is turned into an owned value once, whatever the
                // number of tables, and moved into the last row that takes it: it
                // is the biggest thing a plugin holds (a 16 MB document is held as
                // input, row and reply, never more).
                let takers = tables.iter().filter(|t| t.document_column.is_some()).count();
                let mut whole = match takers {
                    0 => None,
                    _ => Some(doc.to_value()?),
                };
                let mut taken = 0;
                for t in &tables {
                    let mut values = Map::new();
                    for (path, column) in &t.columns {
                        let v = doc.get(path).map(|v| v.to_value()).transpose()?;
                        values.insert(column.clone(), v.unwrap_or_default());
                    }
                    if let Some(column) = &t.document_column {
                        taken += 1;
                        let v = if taken == takers { whole.take() } else { whole.clone() };
                        values.insert(column.clone(), v.unwrap_or_default());
                    }
                    values.insert(t.key_column.clone(), id.clone());
                    effects.push(t.upsert(values));
                }
            }
            ("update", None) => {
                for t in &tables {
                    effects.extend(t.upsert_updated_fields(&id, change)?);
                }
                effects.push(warn(format!(
                    "pg-sync: update of {} {} (event {}) came without its full document, so only the changed \
                     mapped columns were written and the document column was not; enable fullDocument \
                     \"updateLookup\" on the watch",
                    change.namespace(),
                    id.to_key_string(),
                    event.id()
                )));
            }
            ("delete", _) => {
                effects.extend(tables.iter().map(|t| t.delete(&id)));
            }
            (op @ ("insert" | "replace" | "snapshot"), None) => effects.push(warn(format!(
                "pg-sync: {op} of {} {} (event {}) came without a document; nothing written",
                change.namespace(),
                id.to_key_string(),
                event.id()
            ))),
            _ => {}
        }
        Ok(effects)
    }
}

fn warn(message: String) -> Effect {
    Effect::Log { level: LogLevel::Warn, message }
}

impl Table {
    fn new(i: usize, t: TableConfig) -> Result<Table> {
        let at = |key: &str| format!("config.tables[{i}].{key}");
        if !t.namespace.contains('.') {
            return Err(Error::new(format!("{} {:?} must be \"db.coll\" or \"db.*\"", at("namespace"), t.namespace)));
        }
        if t.table.is_empty() {
            return Err(Error::new(format!("{} is required", at("table"))));
        }
        if t.key_column.is_empty() {
            return Err(Error::new(format!("{} must not be empty", at("key_column"))));
        }
        if let Some((path, _)) = t.columns.iter().find(|(_, c)| c.is_empty()) {
            return Err(Error::new(format!("{}.{path:?} must be a column name", at("columns"))));
        }
        Ok(Table {
            namespace: t.namespace,
            table: t.table,
            key_column: t.key_column,
            document_column: Some(t.document_column).filter(|c| !c.is_empty()),
            columns: t.columns.into_iter().collect(),
        })
    }

    /// Only the mapped columns this update touched: set fields with their value,
    /// removed fields as NULL. Nothing when the update touched none of them.
    fn upsert_updated_fields(&self, id: &Value, change: &ChangeView) -> Result<Option<Effect>> {
        let mut values = Map::new();
        for (path, column) in &self.columns {
            if let Some(v) = change.updated(path) {
                values.insert(column.clone(), v.to_value()?);
            } else if was_removed(change, path) {
                values.insert(column.clone(), Value::Null);
            }
        }
        if values.is_empty() {
            return Ok(None);
        }
        values.insert(self.key_column.clone(), id.clone());
        Ok(Some(self.upsert(values)))
    }

    fn upsert(&self, values: Map) -> Effect {
        Effect::RowUpsert { table: self.table.clone(), key: vec![self.key_column.clone()], values }
    }

    fn delete(&self, id: &Value) -> Effect {
        let key = [(self.key_column.clone(), id.clone())].into_iter().collect();
        Effect::RowDelete { table: self.table.clone(), key }
    }
}

/// Whether `removedFields` lists the path or one of its parents.
fn was_removed(change: &ChangeView, path: &str) -> bool {
    change
        .removed_fields()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .any(|r| path == r || path.strip_prefix(r).is_some_and(|rest| rest.starts_with('.')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, Event, EventBody, OperationType};

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn fields(pairs: &[(&str, Value)]) -> Map {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn config() -> PgSync {
        PgSync::from_config(&map(&[(
            "tables",
            Value::Array(vec![
                map(&[
                    ("namespace", "app.users".into()),
                    ("table", "users".into()),
                    ("columns", map(&[("email", "email".into()), ("profile.name", "name".into())])),
                ]),
                map(&[
                    ("namespace", "app.users".into()),
                    ("table", "user_emails".into()),
                    ("key_column", "user_id".into()),
                    ("document_column", "".into()),
                    ("columns", map(&[("email", "address".into())])),
                ]),
            ]),
        )]))
        .unwrap()
    }

    const ID: &str = "65a1f0c2e4b0a1b2c3d4e5f6";

    fn event(op: OperationType, full: Option<Value>) -> Event {
        let change = Change {
            op,
            db: "app".into(),
            coll: "users".into(),
            key: map(&[("_id", map(&[("$oid", ID.into())]))]),
            full_document: full,
            ..Default::default()
        };
        Event { seq: 1, id: "tok-1".into(), source: "mongo".into(), time_ms: 0, body: EventBody::Change(change) }
    }

    fn with_update(mut e: Event, updated: Map, removed: Vec<&str>) -> Event {
        if let EventBody::Change(c) = &mut e.body {
            c.updated_fields = Some(updated);
            c.removed_fields = Some(removed.into_iter().map(String::from).collect());
        }
        e
    }

    #[test]
    fn an_insert_upserts_the_whole_row_in_every_table_of_the_namespace() {
        let doc = map(&[("_id", map(&[("$oid", ID.into())])), ("email", "a@x.io".into())]);
        let effects = config().handle_event(&event(OperationType::Insert, Some(doc.clone()))).unwrap();
        assert_eq!(
            effects,
            vec![
                Effect::RowUpsert {
                    table: "users".into(),
                    key: vec!["id".into()],
                    values: fields(&[
                        ("id", ID.into()),
                        ("email", "a@x.io".into()),
                        ("name", Value::Null),
                        ("doc", doc)
                    ]),
                },
                Effect::RowUpsert {
                    table: "user_emails".into(),
                    key: vec!["user_id".into()],
                    values: fields(&[("user_id", ID.into()), ("address", "a@x.io".into())]),
                },
            ]
        );
    }

    #[test]
    fn a_snapshot_read_upserts_like_an_insert() {
        let doc = map(&[("_id", map(&[("$oid", ID.into())])), ("email", "a@x.io".into())]);
        let insert = config().handle_event(&event(OperationType::Insert, Some(doc.clone()))).unwrap();
        let snapshot = config().handle_event(&event(OperationType::Snapshot, Some(doc))).unwrap();
        assert_eq!(snapshot, insert);
    }

    #[test]
    fn an_update_without_full_document_writes_only_touched_columns_and_warns_once() {
        let e = with_update(
            event(OperationType::Update, None),
            fields(&[("profile", map(&[("name", "Ada".into())])), ("age", Value::Int(3))]),
            vec!["email"],
        );
        let effects = config().handle_event(&e).unwrap();
        assert_eq!(
            effects[..2],
            [
                Effect::RowUpsert {
                    table: "users".into(),
                    key: vec!["id".into()],
                    values: fields(&[("id", ID.into()), ("email", Value::Null), ("name", "Ada".into())]),
                },
                Effect::RowUpsert {
                    table: "user_emails".into(),
                    key: vec!["user_id".into()],
                    values: fields(&[("user_id", ID.into()), ("address", Value::Null)]),
                },
            ]
        );
        assert_eq!(effects.len(), 3);
        let Effect::Log { level: LogLevel::Warn, message } = &effects[2] else { panic!("{effects:?}") };
        assert!(message.contains("full document") && message.contains("updateLookup"), "{message}");
    }

    #[test]
    fn an_update_touching_no_mapped_column_writes_nothing_but_still_warns() {
        let e = with_update(event(OperationType::Update, None), fields(&[("age", Value::Int(3))]), vec![]);
        let effects = config().handle_event(&e).unwrap();
        assert!(matches!(effects.as_slice(), [Effect::Log { level: LogLevel::Warn, .. }]), "{effects:?}");
    }

    #[test]
    fn a_delete_deletes_by_key_column() {
        let effects = config().handle_event(&event(OperationType::Delete, None)).unwrap();
        assert_eq!(
            effects,
            vec![
                Effect::RowDelete { table: "users".into(), key: fields(&[("id", ID.into())]) },
                Effect::RowDelete { table: "user_emails".into(), key: fields(&[("user_id", ID.into())]) },
            ]
        );
    }

    #[test]
    fn other_namespaces_are_ignored_and_config_mistakes_name_the_key() {
        let mut e = event(OperationType::Delete, None);
        if let EventBody::Change(c) = &mut e.body {
            c.coll = "orders".into();
        }
        assert!(config().handle_event(&e).unwrap().is_empty());
        let bad = map(&[("tables", Value::Array(vec![map(&[("namespace", "app.users".into())])]))]);
        assert!(PgSync::from_config(&bad).err().unwrap().to_string().contains("config.tables[0].table"));
    }
}
