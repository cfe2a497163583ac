//! Bundled plugin `pg-sync`: mirrors MongoDB collections into PostgreSQL tables.
//!
//! Each configured table follows one namespace: inserts, updates and replaces
//! become a row upsert keyed by `_id` (mapped fields in their own columns, the
//! whole document in a jsonb column); deletes become a row delete.

use oplet_sdk::{handler, init, namespace_matches, Change, Effect, Error, Event, EventBody, LogLevel, Map, OperationType, Result, Value};
use std::cell::RefCell;

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

#[init]
pub fn setup(config: &Value) -> Result<()> {
    let config = Config::from_value(config)?;
    if config.tables.is_empty() {
        oplet_sdk::log(LogLevel::Warn, "pg-sync has no [[config.tables]]: it will write nothing");
    }
    CONFIG.with(|c| *c.borrow_mut() = config);
    Ok(())
}

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    Ok(CONFIG.with(|c| c.borrow().effects(event)))
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// `db.coll` or `db.*`.
    pub namespace: String,
    pub table: String,
    /// Receives the document's `_id` as text.
    pub key_column: String,
    /// Receives the whole document (jsonb); `None` when disabled with `""`.
    pub document_column: Option<String>,
    /// Document field path -> column name.
    pub columns: Vec<(String, String)>,
}

impl Config {
    pub fn from_value(config: &Value) -> Result<Config> {
        let tables = match config.get("tables") {
            None | Some(Value::Null) => return Ok(Config::default()),
            Some(Value::Array(t)) => t,
            Some(_) => return Err(Error::new("config.tables must be a list of [[config.tables]] tables")),
        };
        let tables = tables.iter().enumerate().map(|(i, t)| Table::from_value(i, t)).collect::<Result<_>>()?;
        Ok(Config { tables })
    }

    pub fn effects(&self, event: &Event) -> Vec<Effect> {
        let EventBody::Change(change) = &event.body else { return vec![] };
        let tables: Vec<&Table> = self.tables.iter().filter(|t| namespace_matches(&t.namespace, &change.db, &change.coll)).collect();
        if tables.is_empty() {
            return vec![];
        }
        let Some(id) = change.id().filter(|v| !v.is_null()) else {
            return vec![warn(format!(
                "pg-sync: {} {} (event {}) has no documentKey._id; nothing written",
                change.op,
                change.namespace(),
                event.id
            ))];
        };
        let id = Value::String(id.to_key_string());
        let mut effects = Vec::new();
        match (&change.op, &change.full_document) {
            (OperationType::Insert | OperationType::Update | OperationType::Replace, Some(doc)) => {
                effects.extend(tables.iter().map(|t| t.upsert_document(&id, doc)));
            }
            (OperationType::Update, None) => {
                effects.extend(tables.iter().filter_map(|t| t.upsert_updated_fields(&id, change)));
                effects.push(warn(format!(
                    "pg-sync: update of {} {} (event {}) came without its full document, so only the changed \
                     mapped columns were written and the document column was not; enable fullDocument \
                     \"updateLookup\" on the watch",
                    change.namespace(),
                    id.to_key_string(),
                    event.id
                )));
            }
            (OperationType::Delete, _) => {
                effects.extend(tables.iter().map(|t| t.delete(&id)));
            }
            (op @ (OperationType::Insert | OperationType::Replace), None) => effects.push(warn(format!(
                "pg-sync: {op} of {} {} (event {}) came without a document; nothing written",
                change.namespace(),
                id.to_key_string(),
                event.id
            ))),
            _ => {}
        }
        effects
    }
}

fn warn(message: String) -> Effect {
    Effect::Log { level: LogLevel::Warn, message }
}

impl Table {
    fn from_value(i: usize, t: &Value) -> Result<Table> {
        let at = |key: &str| format!("config.tables[{i}].{key}");
        let string = |key: &str| -> Result<Option<String>> {
            match t.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Error::new(format!("{} must be a string", at(key)))),
            }
        };
        let namespace = string("namespace")?
            .ok_or_else(|| Error::new(format!("{} is required (\"db.coll\" or \"db.*\")", at("namespace"))))?;
        if !namespace.contains('.') {
            return Err(Error::new(format!("{} {namespace:?} must be \"db.coll\" or \"db.*\"", at("namespace"))));
        }
        let table = string("table")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::new(format!("{} is required", at("table"))))?;
        let key_column = string("key_column")?.unwrap_or_else(|| "id".into());
        if key_column.is_empty() {
            return Err(Error::new(format!("{} must not be empty", at("key_column"))));
        }
        let document_column = match string("document_column")? {
            None => Some("doc".to_string()),
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s),
        };
        let columns = match t.get("columns") {
            None => vec![],
            Some(Value::Map(m)) => m
                .iter()
                .map(|(path, col)| match col.as_str() {
                    Some(c) if !c.is_empty() => Ok((path.clone(), c.to_string())),
                    _ => Err(Error::new(format!("{}.{path:?} must be a column name", at("columns")))),
                })
                .collect::<Result<_>>()?,
            Some(_) => Err(Error::new(format!("{} must be a table of field path = column name", at("columns"))))?,
        };
        Ok(Table { namespace, table, key_column, document_column, columns })
    }

    /// The whole row from the document after the change: a mapped field the
    /// document lacks is written as NULL, so the row matches the document.
    fn upsert_document(&self, id: &Value, doc: &Value) -> Effect {
        let mut values = Map::new();
        for (path, column) in &self.columns {
            values.insert(column.clone(), doc.get_path(path).cloned().unwrap_or_default());
        }
        if let Some(column) = &self.document_column {
            values.insert(column.clone(), doc.clone());
        }
        values.insert(self.key_column.clone(), id.clone());
        self.upsert(values)
    }

    /// Only the mapped columns this update touched: set fields with their value,
    /// removed fields as NULL. Nothing when the update touched none of them.
    fn upsert_updated_fields(&self, id: &Value, change: &Change) -> Option<Effect> {
        let mut values = Map::new();
        for (path, column) in &self.columns {
            if let Some(v) = change.updated(path) {
                values.insert(column.clone(), v.clone());
            } else if was_removed(change, path) {
                values.insert(column.clone(), Value::Null);
            }
        }
        if values.is_empty() {
            return None;
        }
        values.insert(self.key_column.clone(), id.clone());
        Some(self.upsert(values))
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
fn was_removed(change: &Change, path: &str) -> bool {
    change
        .removed_fields
        .iter()
        .flatten()
        .any(|r| path == r || path.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with('.')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn fields(pairs: &[(&str, Value)]) -> Map {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn config() -> Config {
        Config::from_value(&map(&[(
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
        let effects = config().effects(&event(OperationType::Insert, Some(doc.clone())));
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
    fn an_update_without_full_document_writes_only_touched_columns_and_warns_once() {
        let e = with_update(
            event(OperationType::Update, None),
            fields(&[("profile", map(&[("name", "Ada".into())])), ("age", Value::Int(3))]),
            vec!["email"],
        );
        let effects = config().effects(&e);
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
        let effects = config().effects(&e);
        assert!(matches!(effects.as_slice(), [Effect::Log { level: LogLevel::Warn, .. }]), "{effects:?}");
    }

    #[test]
    fn a_delete_deletes_by_key_column() {
        let effects = config().effects(&event(OperationType::Delete, None));
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
        assert!(config().effects(&e).is_empty());
        let bad = map(&[("tables", Value::Array(vec![map(&[("namespace", "app.users".into())])]))]);
        assert!(Config::from_value(&bad).unwrap_err().to_string().contains("config.tables[0].table"));
    }
}
