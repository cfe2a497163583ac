//! `Event`: what a plugin receives — a database change or a socket client event.
//!
//! The host numbers events per source (`seq`) and gives each a stable `id` that is
//! the same when the event is replayed after a crash (a change stream's resume
//! token, a JSON-lines file position), so effects keyed by it are idempotent.

use crate::value::{Map, Value};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position of the event in its source, increasing by one per event.
    pub seq: u64,
    /// Stable identity of the event, equal across replays.
    pub id: String,
    /// Name of the source in the host config (`mongo`, `socket`, `events`...).
    pub source: String,
    /// When the event happened (server time where known), milliseconds since the epoch.
    pub time_ms: i64,
    pub body: EventBody,
}

/// The payload of an event: `{"kind": "change", "data": {...}}` on the wire
/// (adjacently tagged, tag first, so decoding never buffers the document twice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventBody {
    /// A change in a database collection.
    Change(Change),
    /// An event a connected Socket.IO client sent.
    Socket(SocketEvent),
    /// A kind this SDK does not know (sent by a newer host).
    #[serde(other)]
    Other,
}

/// One change from a change stream (or from the polling fallback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Change {
    pub op: OperationType,
    pub db: String,
    pub coll: String,
    /// The `documentKey` (usually `{"_id": ...}`).
    #[serde(default)]
    pub key: Value,
    /// The whole document after the change, when the server sent it.
    #[serde(default)]
    pub full_document: Option<Value>,
    /// Fields set by an update, when the server sent an `updateDescription`.
    #[serde(default)]
    pub updated_fields: Option<Map>,
    /// Fields removed by an update, when the server sent an `updateDescription`.
    #[serde(default)]
    pub removed_fields: Option<Vec<String>>,
    /// The document before the change, where pre-images are enabled.
    #[serde(default)]
    pub before: Option<Value>,
}

impl Change {
    /// `db.coll`.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }

    /// The `_id` of the changed document, from `documentKey`.
    pub fn id(&self) -> Option<&Value> {
        self.key.get("_id")
    }

    /// A field of the document after the change: from `full_document` when
    /// present, else from `updated_fields`.
    pub fn field(&self, path: &str) -> Option<&Value> {
        if let Some(v) = self.full_document.as_ref().and_then(|d| d.get_path(path)) {
            return Some(v);
        }
        self.updated_fields.as_ref().and_then(|u| u.get(path))
    }
}

/// An event a Socket.IO client sent to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SocketEvent {
    /// The authenticated identity of the client (its uuid).
    pub client: String,
    /// The Socket.IO event name.
    pub event: String,
    #[serde(default)]
    pub payload: Value,
}

/// MongoDB's change operation types; a string on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OperationType {
    #[default]
    Insert,
    Update,
    Replace,
    Delete,
    Drop,
    Rename,
    DropDatabase,
    Invalidate,
    /// Any operation type this SDK does not know yet.
    Other(String),
}

impl OperationType {
    pub fn as_str(&self) -> &str {
        match self {
            OperationType::Insert => "insert",
            OperationType::Update => "update",
            OperationType::Replace => "replace",
            OperationType::Delete => "delete",
            OperationType::Drop => "drop",
            OperationType::Rename => "rename",
            OperationType::DropDatabase => "dropDatabase",
            OperationType::Invalidate => "invalidate",
            OperationType::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> OperationType {
        match s {
            "insert" => OperationType::Insert,
            "update" => OperationType::Update,
            "replace" => OperationType::Replace,
            "delete" => OperationType::Delete,
            "drop" => OperationType::Drop,
            "rename" => OperationType::Rename,
            "dropDatabase" => OperationType::DropDatabase,
            "invalidate" => OperationType::Invalidate,
            other => OperationType::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for OperationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for OperationType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OperationType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(OperationType::parse(&s))
    }
}
