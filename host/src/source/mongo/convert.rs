//! A raw change-stream document → the event's bytes and header, leniently.
//!
//! Events are read as raw BSON, not the driver's typed `ChangeStreamEvent`,
//! because MongoDB-compatible servers differ: `clusterTime` may be a date instead
//! of a timestamp, `updateDescription` may be missing or null, `fullDocument._id`
//! may come back in another shape than `documentKey._id`. Each such oddity is
//! logged once per stream and mapped to the nearest honest value; none is fatal.
//! The header fields are read here; the body is written by `transcode` in one pass
//! straight into MessagePack, with no `Value` tree.

use super::checkpoints::token_position;
use super::elements::{Elements, Val};
use super::transcode::{self, ChangeHeader, Oddity, Parts};
use super::Target;
use crate::checkpoint::Mark;
use crate::envelope::{Event, Kind};
use mongodb::bson::raw::{RawBsonRef, RawDocument};
use mongodb::bson::Bson;
use oplet_sdk::OperationType;
use std::sync::Arc;

pub struct Converter {
    source: std::sync::Arc<str>,
    label: String,
    /// The namespace to use when an event has none (a collection target's).
    fallback: (String, String),
    seen: Vec<&'static str>,
    /// The last namespace read, shared by the events that follow while it holds.
    last_ns: (Arc<str>, Arc<str>),
}

impl Converter {
    pub fn new(source: &str, target: &Target) -> Converter {
        let fallback = match target {
            Target::Collection { db, coll } => (db.clone(), coll.clone()),
            Target::Database(db) => (db.clone(), String::new()),
            Target::Deployment => (String::new(), String::new()),
        };
        Converter { source: source.into(), label: target.label(), fallback, seen: Vec::new(), last_ns: ("".into(), "".into()) }
    }

    /// The event for `raw` (its `seq` is set when it is sent) and the position after
    /// it; or, for an event that cannot be read, what is known of it.
    pub fn convert(&mut self, raw: &RawDocument) -> Result<(Event, Mark), Unreadable> {
        let mut fields = Fields::default();
        let mut failure = None;
        for element in Elements::new(raw) {
            match element {
                Ok((name, Val::Bson(value))) => fields.take(name, value),
                // An array where a change has none: taken as the driver reads it.
                Ok((name, Val::Array(_))) => {
                    if let Ok(Some(value)) = raw.get(name) {
                        fields.take(name, value);
                    }
                }
                Err(e) => {
                    failure = Some(format!("unreadable change event: {e}"));
                    break;
                }
            }
        }
        let (db, coll) = self.namespace(fields.ns);
        let (id, position) = match fields.id.map(|t| token(&db, &coll, t)) {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Err(Unreadable { id: None, position: None, error: e }),
            None => {
                let error = failure.unwrap_or_else(|| "no _id (resume token); a pipeline must not remove it".into());
                return Err(Unreadable { id: None, position: None, error });
            }
        };
        if let Some(error) = failure {
            return Err(Unreadable { id: Some(id), position: Some(position), error });
        }
        match self.event(fields, db, coll, id) {
            Ok(event) => Ok((event, position)),
            Err((error, id)) => Err(Unreadable { id: Some(id), position: Some(position), error }),
        }
    }

    fn namespace(&mut self, ns: Option<RawBsonRef<'_>>) -> (Arc<str>, Arc<str>) {
        let ns = match ns {
            Some(RawBsonRef::Document(d)) => Some(d),
            _ => None,
        };
        // One pass over `ns` for both names.
        let (mut db, mut coll) = (None, None);
        for (key, value) in ns.into_iter().flat_map(Elements::new).map_while(Result::ok) {
            match (key, value) {
                ("db", Val::Bson(RawBsonRef::String(s))) if db.is_none() => db = Some(s),
                ("coll", Val::Bson(RawBsonRef::String(s))) if coll.is_none() => coll = Some(s),
                _ => {}
            }
        }
        let (db, coll) = (db.unwrap_or(&self.fallback.0), coll.unwrap_or(&self.fallback.1));
        if *self.last_ns.0 != *db || *self.last_ns.1 != *coll {
            self.last_ns = (db.into(), coll.into());
        }
        self.last_ns.clone()
    }

    /// The event; or why not, with `id` given back.
    fn event(&mut self, f: Fields<'_>, db: Arc<str>, coll: Arc<str>, id: String) -> Result<Event, (String, String)> {
        let op = match f.op {
            Some(RawBsonRef::String(s)) => OperationType::parse(s),
            _ => {
                self.odd("a change event without a string operationType", "it is delivered with operation \"unknown\"");
                OperationType::Other("unknown".into())
            }
        };
        if f.ns.is_none() && !matches!(op, OperationType::Invalidate) {
            self.odd("a change event without ns", "the watched namespace is used");
        }
        let time_ms = self.time_ms(f.wall_time, f.cluster_time);
        let header = ChangeHeader { id, op, db, coll, time_ms };
        let parts = Parts { key: f.key, full: f.full, before: f.before, update: f.update };
        let mut noticed = Vec::new();
        let bytes = match transcode::change_event(&self.source, &header, &parts, &mut |o| noticed.push(o)) {
            Ok(bytes) => bytes,
            Err(e) => return Err((e, header.id)),
        };
        for o in noticed {
            match o {
                Oddity::FullDocumentIdDiffers => {
                    self.odd("fullDocument._id unlike documentKey._id", "documentKey._id is used in the full document")
                }
                Oddity::UpdateWithoutDescription => {
                    self.odd("update events without updateDescription", "updated and removed fields are left empty")
                }
                Oddity::RemovedFieldNotString => self.odd("a removedFields entry that is not a string", "it is left out"),
            }
        }
        let ChangeHeader { id, op, db, coll, time_ms } = header;
        Ok(Event::from_parts(0, id, self.source.clone(), time_ms, Kind::Change { op, db, coll }, bytes))
    }

    /// wallTime (a date, ms precision) when sent, else clusterTime: a timestamp (s
    /// precision), or a date on some compatible servers; else now.
    fn time_ms(&mut self, wall: Option<RawBsonRef<'_>>, cluster: Option<RawBsonRef<'_>>) -> i64 {
        let from_cluster = match cluster {
            Some(RawBsonRef::Timestamp(ts)) => Some(i64::from(ts.time) * 1000),
            Some(RawBsonRef::DateTime(d)) => {
                self.odd("clusterTime as a date instead of a timestamp", "it is read as a date");
                Some(d.timestamp_millis())
            }
            _ => None,
        };
        match (wall, from_cluster) {
            (Some(RawBsonRef::DateTime(d)), _) => d.timestamp_millis(),
            (_, Some(ms)) => ms,
            _ => {
                self.odd("a change event without clusterTime or wallTime", "the host's clock is used");
                crate::deadletter::now_ms()
            }
        }
    }

    /// Logs an oddity of the server the first time this stream meets it.
    fn odd(&mut self, what: &'static str, consequence: &str) {
        // A short list, searched per call: cheaper than hashing for a handful.
        if !self.seen.contains(&what) {
            self.seen.push(what);
            tracing::warn!(source = %self.source, stream = %self.label, "the server sent {what}; {consequence} (said once per stream)");
        }
    }

    /// What the converter has noticed so far (for tests).
    #[cfg(test)]
    fn oddities(&self) -> Vec<&'static str> {
        let mut v = self.seen.clone();
        v.sort();
        v
    }
}

/// A change event that cannot be mapped: dead-lettered, and passed with its
/// position when it has one.
#[derive(Debug)]
pub struct Unreadable {
    pub id: Option<String>,
    pub position: Option<Mark>,
    pub error: String,
}

/// The top-level fields of a change event, found in one pass.
#[derive(Default)]
struct Fields<'a> {
    id: Option<RawBsonRef<'a>>,
    op: Option<RawBsonRef<'a>>,
    ns: Option<RawBsonRef<'a>>,
    key: Option<RawBsonRef<'a>>,
    full: Option<RawBsonRef<'a>>,
    before: Option<RawBsonRef<'a>>,
    update: Option<RawBsonRef<'a>>,
    cluster_time: Option<RawBsonRef<'a>>,
    wall_time: Option<RawBsonRef<'a>>,
}

impl<'a> Fields<'a> {
    fn take(&mut self, name: &str, value: RawBsonRef<'a>) {
        let slot = match name {
            "_id" => &mut self.id,
            "operationType" => &mut self.op,
            "ns" => &mut self.ns,
            "documentKey" => &mut self.key,
            "fullDocument" => &mut self.full,
            "fullDocumentBeforeChange" => &mut self.before,
            "updateDescription" => &mut self.update,
            "clusterTime" => &mut self.cluster_time,
            "wallTime" => &mut self.wall_time,
            _ => return,
        };
        *slot = Some(value);
    }
}

/// The event's stable id (`db.coll:` and the token's `_data`) and the position
/// after it, from its `_id` (the resume token).
fn token(db: &str, coll: &str, token: RawBsonRef<'_>) -> Result<(String, Mark), String> {
    if let RawBsonRef::Document(d) = token {
        if let Ok(data) = d.get_str("_data") {
            // `db.coll:data`, sized once (format! grows its buffer as it goes).
            let mut id = String::with_capacity(db.len() + coll.len() + data.len() + 2);
            for part in [db, ".", coll, ":", data] {
                id.push_str(part);
            }
            return Ok((id, Mark::Token { data: data.into(), seq: 0 }));
        }
    }
    let bson = Bson::try_from(token).map_err(|e| format!("unreadable resume token: {e}"))?;
    let position = token_position(bson);
    Ok((format!("{db}.{coll}:{}", position["token"]), position.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{rawdoc, DateTime, Timestamp};
    use oplet_sdk::{Change, EventBody, Value};

    fn target() -> Target {
        Target::Collection { db: "app".into(), coll: "items".into() }
    }

    /// The event as a plugin decodes it, checked against its header.
    fn convert(c: &mut Converter, raw: &RawDocument) -> oplet_sdk::Event {
        decoded(&c.convert(raw).unwrap().0)
    }

    fn decoded(e: &Event) -> oplet_sdk::Event {
        let owned = e.decode().unwrap();
        assert_eq!((owned.seq, &owned.id, owned.source.as_str(), owned.time_ms), (e.seq, &e.id, &*e.source, e.time_ms));
        let EventBody::Change(c) = &owned.body else { panic!("a change") };
        assert_eq!(e.kind, Kind::Change { op: c.op.clone(), db: c.db.as_str().into(), coll: c.coll.as_str().into() }, "header and bytes agree");
        owned
    }

    fn change(e: &oplet_sdk::Event) -> &Change {
        match &e.body {
            EventBody::Change(c) => c,
            _ => panic!("a change"),
        }
    }

    #[test]
    fn a_mongodb_update_maps_every_field() {
        let raw = rawdoc! {
            "_id": { "_data": "8263A1" },
            "operationType": "update",
            "clusterTime": Timestamp { time: 1_700_000_000, increment: 1 },
            "wallTime": DateTime::from_millis(1_700_000_000_250),
            "ns": { "db": "app", "coll": "items" },
            "documentKey": { "_id": "a" },
            "updateDescription": { "updatedFields": { "n": 2_i32, "p.q": true }, "removedFields": ["old"], "truncatedArrays": [] },
            "fullDocument": { "_id": "a", "n": 2_i32 },
            "fullDocumentBeforeChange": { "_id": "a", "n": 1_i32 },
        };
        let mut c = Converter::new("mongo", &target());
        let (e, position) = c.convert(&raw).unwrap();
        let e = decoded(&e);
        assert_eq!(e.id, "app.items:8263A1");
        assert_eq!(position.with_seq(7).to_json(), serde_json::json!({"token": {"_data": "8263A1"}, "seq": 7}));
        assert_eq!((e.source.as_str(), e.time_ms), ("mongo", 1_700_000_000_250), "wallTime wins: ms precision");
        let ch = change(&e);
        assert_eq!(ch.op, OperationType::Update);
        assert_eq!(ch.namespace(), "app.items");
        assert_eq!(ch.key.to_json(), r#"{"_id":"a"}"#);
        assert_eq!(ch.updated_fields.as_ref().unwrap().get("p.q"), Some(&Value::Bool(true)));
        assert_eq!(ch.removed_fields, Some(vec!["old".to_string()]));
        assert_eq!(ch.full_document.as_ref().unwrap().get("n"), Some(&Value::Int(2)));
        assert_eq!(ch.before.as_ref().unwrap().get("n"), Some(&Value::Int(1)));
        assert!(c.oddities().is_empty(), "{:?}", c.oddities());
    }

    #[test]
    fn an_nx_27017_event_is_read_leniently_and_each_oddity_is_noted_once() {
        let raw = rawdoc! {
            "_id": { "_data": "nx:7" },
            "operationType": "update",
            "clusterTime": DateTime::from_millis(1_700_000_000_500),
            "fullDocument": { "_id": { "__neosqlite_objectid__": true, "id": "65a1f0c2e4b0a1b2c3d4e5f6" }, "connection": 1_i32 },
            "ns": { "db": "app", "coll": "items" },
            "documentKey": { "_id": mongodb::bson::oid::ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap() },
            "updateDescription": null,
        };
        let mut c = Converter::new("mongo", &target());
        let e = convert(&mut c, &raw);
        assert_eq!(e.time_ms, 1_700_000_000_500, "a clusterTime date is read as a date");
        let ch = change(&e);
        assert_eq!(ch.updated_fields, None);
        assert_eq!(ch.removed_fields, None);
        let full = ch.full_document.as_ref().unwrap();
        assert_eq!(full.get("_id"), ch.key.get("_id"), "fullDocument._id is taken from documentKey");
        assert!(full.get("connection").unwrap().is_truthy(), "1 reads as true for plugins that ask leniently");
        let once = c.oddities();
        assert_eq!(
            once,
            vec!["clusterTime as a date instead of a timestamp", "fullDocument._id unlike documentKey._id", "update events without updateDescription"]
        );
        convert(&mut c, &raw);
        assert_eq!(c.oddities(), once, "nothing new the second time");
    }

    #[test]
    fn a_missing_update_description_or_time_or_op_is_not_fatal() {
        let raw = rawdoc! { "_id": { "_data": "t" }, "documentKey": { "_id": 1_i32 } };
        let mut c = Converter::new("mongo", &target());
        let e = convert(&mut c, &raw);
        let ch = change(&e);
        assert_eq!(ch.op, OperationType::Other("unknown".into()));
        assert_eq!(ch.namespace(), "app.items", "the watched namespace stands in");
        assert!(e.time_ms > 1_600_000_000_000, "now");
        assert_eq!(e.id, "app.items:t");
    }

    #[test]
    fn a_delete_has_no_document_and_a_null_full_document_is_none() {
        let raw = rawdoc! {
            "_id": { "_data": "d" }, "operationType": "delete", "ns": { "db": "app", "coll": "items" },
            "documentKey": { "_id": "a" }, "fullDocument": null, "clusterTime": Timestamp { time: 5, increment: 0 },
        };
        let mut c = Converter::new("mongo", &target());
        let e = convert(&mut c, &raw);
        assert_eq!(e.time_ms, 5000);
        assert_eq!(change(&e).full_document, None);
        assert_eq!(change(&e).op, OperationType::Delete);
    }

    #[test]
    fn a_token_of_another_shape_is_kept_whole() {
        let raw = rawdoc! { "_id": { "ts": 5_i64, "n": 1_i32 }, "operationType": "insert", "ns": { "db": "d", "coll": "c" } };
        let mut c = Converter::new("mongo", &Target::Deployment);
        let (e, position) = c.convert(&raw).unwrap();
        let e = decoded(&e);
        assert_eq!(position.to_json(), serde_json::json!({"token": {"ts": {"$numberLong": "5"}, "n": {"$numberInt": "1"}}}));
        assert!(e.id.starts_with("d.c:{"), "{}", e.id);
        let no_token = c.convert(&rawdoc! { "operationType": "insert" }).unwrap_err();
        assert!(no_token.error.contains("no _id") && no_token.position.is_none());
    }

    #[test]
    fn an_unreadable_event_keeps_its_position_so_it_can_be_passed() {
        let raw = rawdoc! { "_id": { "_data": "t9" }, "operationType": "insert", "ns": { "db": "app", "coll": "items" }, "fullDocument": { "s": "text" } };
        let mut bytes = raw.into_bytes();
        // Break the length of the string inside fullDocument.
        let at = bytes.windows(5).position(|w| w == b"text\0").unwrap() - 4;
        bytes[at] = 200;
        let broken = RawDocument::from_bytes(&bytes).unwrap();
        let err = Converter::new("mongo", &target()).convert(broken).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("app.items:t9"));
        assert_eq!(err.position.map(|p| p.with_seq(0).to_json()), Some(serde_json::json!({"token": {"_data": "t9"}, "seq": 0})));
        assert!(err.error.contains("fullDocument"), "{}", err.error);
    }
}
