//! `Effect`: what a plugin asks the host to do. Typed requests, never raw strings.
//!
//! The host checks each effect against the capabilities the plugin's manifest asks
//! for and the host config grants, then hands it to an executor (Redis, PostgreSQL,
//! audit sink, Socket.IO emit, log). Executors are idempotent: a replayed event
//! deletes the same keys, upserts the same rows, writes no second audit record.

use crate::value::{Map, Value};
use serde::{Deserialize, Serialize};

/// On the wire: `{"kind": "cache_delete", "data": {"keys": [...]}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Effect {
    /// Delete cache keys (Redis `UNLINK`). Each key must start with a granted prefix.
    CacheDelete { keys: Vec<String> },
    /// Insert or update one row, matched on the `key` columns. `values` holds every
    /// column to write, key columns included. Always sent as parameters.
    RowUpsert {
        table: String,
        key: Vec<String>,
        values: Map,
    },
    /// Delete the rows whose columns equal `key`.
    RowDelete { table: String, key: Map },
    /// Append one audit record; the host keys it by the event id, so a replay
    /// writes no duplicate.
    Audit { record: Value },
    /// Send a Socket.IO event to one client or a room.
    Emit {
        to: EmitTarget,
        event: String,
        #[serde(default)]
        payload: Value,
    },
    /// A log line in the host's log, attributed to the plugin.
    Log { level: LogLevel, message: String },
}

/// A serializable row as a map of columns, or an error naming what it was.
fn row(what: &str, value: &impl Serialize) -> crate::Result<Map> {
    match crate::to_value(value)? {
        Value::Map(m) => Ok(m),
        other => Err(crate::Error::new(format!("{what} must serialize to a map of columns, not {}", other.to_json()))),
    }
}

/// Constructors: each takes the author's own serde types for rows, records and
/// payloads (a `#[derive(Serialize)]` struct, a `RawValue` borrowed from the
/// event, a `Value`), so no plugin builds `Map`s by hand.
impl Effect {
    pub fn log(level: LogLevel, message: impl Into<String>) -> Effect {
        Effect::Log { level, message: message.into() }
    }

    pub fn log_info(message: impl Into<String>) -> Effect {
        Effect::log(LogLevel::Info, message)
    }

    pub fn log_warn(message: impl Into<String>) -> Effect {
        Effect::log(LogLevel::Warn, message)
    }

    /// Insert or update one row of `table`, matched on the `key` columns; `row`
    /// (a struct or map) holds every column to write, key columns included.
    pub fn row_upsert<K, S>(table: impl Into<String>, key: K, row: &impl Serialize) -> crate::Result<Effect>
    where
        K: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Ok(Effect::RowUpsert {
            table: table.into(),
            key: key.into_iter().map(Into::into).collect(),
            values: self::row("row_upsert row", row)?,
        })
    }

    /// Delete the rows of `table` whose columns equal `key` (a struct or map).
    pub fn row_delete(table: impl Into<String>, key: &impl Serialize) -> crate::Result<Effect> {
        Ok(Effect::RowDelete { table: table.into(), key: self::row("row_delete key", key)? })
    }

    /// One audit record (any serializable value).
    pub fn audit(record: &impl Serialize) -> crate::Result<Effect> {
        Ok(Effect::Audit { record: crate::to_value(record)? })
    }

    /// A Socket.IO event to a client or a room, with any serializable payload.
    pub fn emit(to: EmitTarget, event: impl Into<String>, payload: &impl Serialize) -> crate::Result<Effect> {
        Ok(Effect::Emit { to, event: event.into(), payload: crate::to_value(payload)? })
    }

    pub fn cache_delete<I, S>(keys: I) -> Effect
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Effect::CacheDelete {
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    pub fn emit_to_client(client: impl Into<String>, event: impl Into<String>, payload: Value) -> Effect {
        Effect::Emit {
            to: EmitTarget::Client(client.into()),
            event: event.into(),
            payload,
        }
    }

    /// The capability an effect needs, for error messages and checks.
    pub fn capability(&self) -> CapabilityKind {
        match self {
            Effect::CacheDelete { .. } => CapabilityKind::Cache,
            Effect::RowUpsert { .. } | Effect::RowDelete { .. } => CapabilityKind::Tables,
            Effect::Audit { .. } => CapabilityKind::Audit,
            Effect::Emit { .. } => CapabilityKind::Emit,
            Effect::Log { .. } => CapabilityKind::Log,
        }
    }
}

/// The kinds of capability a manifest can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapabilityKind {
    Cache,
    Tables,
    Audit,
    Emit,
    Log,
}

/// Where an emit goes: `{"client": "uuid"}` or `{"room": "name"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmitTarget {
    Client(String),
    Room(String),
}

impl EmitTarget {
    pub fn client(id: impl Into<String>) -> EmitTarget {
        EmitTarget::Client(id.into())
    }

    pub fn room(name: impl Into<String>) -> EmitTarget {
        EmitTarget::Room(name.into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The numeric level used by the `oplet.log` import: 0 error .. 4 trace.
    pub fn from_u32(n: u32) -> LogLevel {
        match n {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}
