//! `Event`: what a plugin receives — a database change or a socket client event.
//!
//! The host numbers events per source (`seq`) and gives each a stable `id` that is
//! the same when the event is replayed after a crash (a change stream's resume
//! token, a JSON-lines file position), so effects keyed by it are idempotent.

use crate::value::{Map, Value};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
/// Deserialize is written by hand: serde's derived `#[serde(other)]` rejects an
/// unknown kind that carries `data`, which is exactly what a newer host sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventBody {
    /// A change in a database collection.
    Change(Change),
    /// An event a connected Socket.IO client sent.
    Socket(SocketEvent),
    /// A kind this SDK does not know (sent by a newer host); its data is skipped.
    Other,
}

impl<'de> Deserialize<'de> for EventBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("EventBody", &["kind", "data"], BodyVisitor)
    }
}

struct BodyVisitor;

impl BodyVisitor {
    /// Reads `data` for a known `kind` (unknown kinds skip it).
    fn data<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<EventBody, A::Error> {
        Ok(match kind {
            "change" => EventBody::Change(map.next_value()?),
            "socket" => EventBody::Socket(map.next_value()?),
            _ => {
                map.next_value::<IgnoredAny>()?;
                EventBody::Other
            }
        })
    }

    /// `data` came before `kind` (hand-written JSON): decode the buffered value.
    fn buffered<E: de::Error>(kind: &str, data: Value) -> Result<EventBody, E> {
        fn again<T: serde::de::DeserializeOwned, E: de::Error>(v: &Value) -> Result<T, E> {
            let bytes = crate::codec::encode(v).map_err(E::custom)?;
            crate::codec::decode(&bytes).map_err(E::custom)
        }
        Ok(match kind {
            "change" => EventBody::Change(again(&data)?),
            "socket" => EventBody::Socket(again(&data)?),
            _ => EventBody::Other,
        })
    }

    fn missing_data<E: de::Error>(kind: &str) -> Result<EventBody, E> {
        match kind {
            "change" | "socket" => Err(E::missing_field("data")),
            _ => Ok(EventBody::Other),
        }
    }
}

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = EventBody;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(r#"an event body {"kind": ..., "data": ...}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventBody, A::Error> {
        let mut kind: Option<String> = None;
        let mut body: Option<EventBody> = None;
        let mut early_data: Option<Value> = None;
        while let Some(key) = map.next_key::<String>()? {
            match (key.as_str(), &kind) {
                ("kind", None) => kind = Some(map.next_value()?),
                ("kind", Some(_)) => return Err(de::Error::duplicate_field("kind")),
                ("data", _) if body.is_some() || early_data.is_some() => {
                    return Err(de::Error::duplicate_field("data"))
                }
                ("data", Some(k)) => body = Some(Self::data(k, &mut map)?),
                ("data", None) => early_data = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        match (body, early_data) {
            (Some(b), _) => Ok(b),
            (None, Some(data)) => Self::buffered(&kind, data),
            (None, None) => Self::missing_data(&kind),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventBody, A::Error> {
        let kind: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let body = match kind.as_str() {
            "change" => seq.next_element()?.map(EventBody::Change),
            "socket" => seq.next_element()?.map(EventBody::Socket),
            _ => seq.next_element::<IgnoredAny>()?.map(|_| EventBody::Other),
        };
        match body {
            Some(b) => Ok(b),
            None => Self::missing_data(&kind),
        }
    }
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

    /// A field of the document after the change (`path` may be dotted): from
    /// `full_document` when present, else what the update set (see [`Change::updated`]).
    pub fn field(&self, path: &str) -> Option<&Value> {
        if let Some(v) = self.full_document.as_ref().and_then(|d| d.get_path(path)) {
            return Some(v);
        }
        self.updated(path)
    }

    /// A field's new value from `updated_fields`, whose keys are the dotted paths
    /// the update set: the path itself (`profile.name`), or a parent set whole
    /// (`profile` = {name: ...}). None if the update did not set it.
    pub fn updated(&self, path: &str) -> Option<&Value> {
        let updated = self.updated_fields.as_ref()?;
        if let Some(v) = updated.get(path) {
            return Some(v);
        }
        path.match_indices('.').find_map(|(dot, _)| updated.get(&path[..dot])?.get_path(&path[dot + 1..]))
    }
}

/// Whether the namespace `db.coll` matches `pattern`: `"db.coll"`, `"db.*"` (every
/// collection of `db`) or `"*"` (everything). The host's manifest subscriptions
/// and the bundled plugins' configs use these patterns.
pub fn namespace_matches(pattern: &str, db: &str, coll: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('.') {
        Some((d, "*")) => d == db,
        Some((d, c)) => d == db && c == coll,
        None => false,
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
    /// Not a change: a document as it already was, read by the host's initial
    /// snapshot or an `oplet backfill` (its whole document in `full_document`).
    /// Only plugins that subscribe to it (or to every operation) receive it.
    Snapshot,
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
            OperationType::Snapshot => "snapshot",
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
            "snapshot" => OperationType::Snapshot,
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
