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

impl Effect {
    pub fn log_info(message: impl Into<String>) -> Effect {
        Effect::Log {
            level: LogLevel::Info,
            message: message.into(),
        }
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
