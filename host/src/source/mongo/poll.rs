//! Degraded mode: slow polling of one collection where change streams are refused.
//!
//! Every `interval_ms` one query asks for the documents whose `field` (e.g.
//! `updatedAt`, or `_id`) is past the last one seen, ordered by (`field`, `_id`),
//! so ties on the field are neither skipped nor repeated; a full batch is followed
//! at once by the next. One query per collection per interval, however many
//! clients wait for a change: a hundred clients polling every 3 s cost 33 queries/s,
//! this costs 1 at the default interval. It cannot see deletes, nor a write whose
//! field value is not past the last one seen (clock skew between writers).

use super::checkpoints::{poll_position, position_poll};
use super::feed::Feed;
use super::retry::{self, Failure};
use super::Shared;
use crate::checkpoint::Position;
use super::transcode::{self, ChangeHeader, Parts};
use crate::envelope::{Event, Kind};
use mongodb::bson::raw::RawBsonRef;
use mongodb::bson::{doc, Bson, Document, RawDocument, RawDocumentBuf};
use oplet_sdk::{Change, EventBody, Map, OperationType, Value};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub async fn run(
    shared: &Shared,
    db: &str,
    coll: &str,
    feed: &mut Feed,
    saved: Option<Position>,
    why: &str,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cfg = &shared.cfg.fallback;
    let poller = Poller { coll: shared.client.database(db).collection(coll), field: cfg.field.clone(), batch: cfg.batch.max(1) };
    let interval = Duration::from_millis(cfg.interval_ms);
    tracing::warn!(
        source = %feed.source(), stream = %feed.label(),
        "DEGRADED MODE: {why}; polling `{}` every {interval:?} instead. {} Deletes are not seen{}",
        poller.field,
        if poller.field == "_id" { "Only new documents are seen (op \"insert\")." } else { "Each document whose field moved past the last value seen arrives as op \"replace\" with its whole document." },
        if shared.cfg.pipeline.is_some() { "; the source's pipeline is not applied (plugins' subscriptions still are)." } else { "." }
    );
    let mut after = saved.as_ref().and_then(position_poll);
    if saved.is_some() && after.is_none() {
        tracing::warn!(source = %feed.source(), stream = %feed.label(), "the saved position is not a polling position (it is a change-stream token); polling starts from now");
    }
    let mut backoff = shared.cfg.reconnect.backoff();
    let mut down_since: Option<Instant> = None;
    loop {
        let query = async {
            match &after {
                Some(a) => poller.fetch(a).await.map(Ok),
                None => poller.latest().await.map(Err),
            }
        };
        let docs = tokio::select! {
            r = query => r,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let docs = match docs {
            Ok(docs) => docs,
            Err(e) if retry::classify(&e) == Failure::Transient => {
                let since = *down_since.get_or_insert_with(Instant::now);
                let delay = backoff.next_delay();
                tracing::warn!(
                    source = %feed.source(), stream = %feed.label(),
                    "polling failed ({}); retrying in {delay:.1?} (attempt {}, down for {:.1?})",
                    retry::describe(&e), backoff.attempts(), since.elapsed()
                );
                if !retry::sleep_unless_stopped(delay, stop).await {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(crate::exit::fatal(retry::fatal_cause(&e), format!("polling failed: {}", retry::describe(&e)))),
        };
        if let Some(since) = down_since.take() {
            tracing::info!(source = %feed.source(), stream = %feed.label(), "polling again after {:.1?}", since.elapsed());
        }
        backoff.reset();
        let docs = match docs {
            Ok(docs) => docs,
            Err((value, id)) => {
                // No position yet: start from now, after the last document there is.
                feed.mark(poll_position(value.clone(), id.clone()));
                after = Some((value, id));
                continue;
            }
        };
        let full = docs.len() >= poller.batch as usize;
        for polled in docs {
            let (value, id) = (polled.value.clone(), polled.id.clone());
            let position = poll_position(value.clone(), id.clone());
            match poller.event(feed.source(), db, coll, polled, &shared.cfg.operations) {
                Ok(Some(event)) => {
                    if !feed.send(event, position).await {
                        return Ok(());
                    }
                }
                Ok(None) => feed.mark(position),
                Err(e) => {
                    // Dead-lettered with the cause before it is passed; if the
                    // record cannot be written the position stays before it.
                    tracing::error!(source = %feed.source(), stream = %feed.label(), "unreadable document {}: {e}; dead-lettered and passed", id);
                    let placeholder = Event::placeholder(&oplet_sdk::Event {
                        seq: feed.next_seq(),
                        id: format!("poll:{db}.{coll}:{id}"),
                        source: feed.source().to_string(),
                        time_ms: crate::deadletter::now_ms(),
                        body: EventBody::Change(Change {
                            op: OperationType::Other("unreadable".into()),
                            db: db.into(),
                            coll: coll.into(),
                            key: Value::Map(Map::from([("_id".into(), Value::String(id.to_string()))])),
                            ..Default::default()
                        }),
                    });
                    let stage = format!("source:{}", feed.source());
                    if !shared.dead.record_retrying_async(stage, placeholder, format!("unreadable document: {e}")).await {
                        return Ok(());
                    }
                    feed.mark(position);
                }
            }
            after = Some((value, id));
        }
        if !full && !retry::sleep_unless_stopped(interval, stop).await {
            return Ok(());
        }
    }
}

struct Poller {
    coll: mongodb::Collection<Document>,
    field: String,
    batch: u32,
}

/// A polled document: its field value and `_id` (for the next query and the
/// position), the field value as text (for the event id), and the raw document,
/// transcoded straight into the event's bytes as a change stream's are.
struct Polled {
    value: Bson,
    id: Bson,
    stamp: String,
    doc: RawDocumentBuf,
}

impl Poller {
    fn by_id(&self) -> bool {
        self.field == "_id"
    }

    fn order(&self, dir: i32) -> Document {
        if self.by_id() {
            doc! { "_id": dir }
        } else {
            doc! { self.field.as_str(): dir, "_id": dir }
        }
    }

    /// The documents after (`value`, `id`) in (`field`, `_id`) order.
    async fn fetch(&self, after: &(Bson, Bson)) -> mongodb::error::Result<Vec<Polled>> {
        self.query(self.filter_after(after), self.order(1), i64::from(self.batch)).await
    }

    fn filter_after(&self, (value, id): &(Bson, Bson)) -> Document {
        match value {
            // Started on an empty collection: everything that has the field.
            Bson::MinKey => doc! { self.field.as_str(): { "$exists": true } },
            _ if self.by_id() => doc! { "_id": { "$gt": value.clone() } },
            _ => doc! { "$or": [
                { self.field.as_str(): { "$gt": value.clone() } },
                { self.field.as_str(): value.clone(), "_id": { "$gt": id.clone() } },
            ] },
        }
    }

    /// Where "now" is: the last document in (`field`, `_id`) order, or before
    /// everything (`MinKey`) when there is none.
    async fn latest(&self) -> mongodb::error::Result<(Bson, Bson)> {
        let filter = doc! { self.field.as_str(): { "$exists": true } };
        let last = self.query(filter, self.order(-1), 1).await?.into_iter().next();
        Ok(last.map_or((Bson::MinKey, Bson::MinKey), |p| (p.value, p.id)))
    }

    async fn query(&self, filter: Document, sort: Document, limit: i64) -> mongodb::error::Result<Vec<Polled>> {
        let mut cursor = self.coll.find(filter).sort(sort).limit(limit).await?;
        let mut out = Vec::new();
        while cursor.advance().await? {
            out.push(self.read(cursor.current()));
        }
        Ok(out)
    }

    fn read(&self, raw: &RawDocument) -> Polled {
        let id = raw.get("_id").ok().flatten();
        let value = if self.by_id() { id } else { get_path(raw, &self.field) };
        let bson = |v: Option<RawBsonRef<'_>>| v.and_then(|v| Bson::try_from(v).ok()).unwrap_or(Bson::Null);
        let stamp = value.and_then(|v| transcode::owned(v).ok()).unwrap_or_default().to_key_string();
        Polled { value: bson(value), id: bson(id), stamp, doc: raw.to_raw_document_buf() }
    }

    /// The event for a polled document, or `None` if `operations` leaves it out.
    fn event(&self, source: &str, db: &str, coll: &str, polled: Polled, operations: &[String]) -> Result<Option<Event>, String> {
        let op = if self.by_id() { OperationType::Insert } else { OperationType::Replace };
        if !operations.is_empty() && !operations.iter().any(|o| o == op.as_str()) {
            return Ok(None);
        }
        let raw_id = polled.doc.get("_id").map_err(|e| format!("field _id: {e}"))?;
        let id = raw_id.map(transcode::owned).transpose().map_err(|e| format!("field _id: {e}"))?.unwrap_or_default();
        let event_id = if self.by_id() {
            format!("poll:{db}.{coll}:{}", id.to_key_string())
        } else {
            format!("poll:{db}.{coll}:{}:{}", id.to_key_string(), polled.stamp)
        };
        let time_ms = match polled.value {
            Bson::DateTime(d) => d.timestamp_millis(),
            _ => crate::deadletter::now_ms(),
        };
        // documentKey as a change stream sends it: `{_id: ...}`.
        let mut key = RawDocumentBuf::new();
        if let Some(raw_id) = raw_id {
            key.append_ref("_id", raw_id);
        }
        let parts = Parts { key: Some(RawBsonRef::Document(&key)), full: Some(RawBsonRef::Document(&polled.doc)), ..Parts::default() };
        let header = ChangeHeader { id: event_id, op, db: db.into(), coll: coll.into(), time_ms };
        let bytes = transcode::change_event(source, &header, &parts, &mut |_| {})?;
        let ChangeHeader { id, op, db, coll, time_ms } = header;
        Ok(Some(Event::from_parts(0, id, source.into(), time_ms, Kind::Change { op, db, coll }, bytes)))
    }
}

/// A nested field by dotted path.
fn get_path<'a>(doc: &'a RawDocument, path: &str) -> Option<RawBsonRef<'a>> {
    match path.split_once('.') {
        None => doc.get(path).ok().flatten(),
        Some((head, rest)) => match doc.get(head).ok().flatten()? {
            RawBsonRef::Document(d) => get_path(d, rest),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{rawdoc, DateTime};

    fn poller(field: &str) -> Poller {
        let client = mongodb::Client::with_options(mongodb::options::ClientOptions::default()).unwrap();
        Poller { coll: client.database("app").collection("items"), field: field.into(), batch: 10 }
    }

    #[tokio::test]
    async fn a_polled_document_becomes_a_replace_with_an_id_that_names_its_version() {
        let p = poller("meta.updatedAt");
        let raw = rawdoc! { "_id": "a", "meta": { "updatedAt": DateTime::from_millis(1_700_000_000_000) }, "n": 1_i32 };
        let polled = p.read(&raw);
        assert_eq!(polled.value, Bson::DateTime(DateTime::from_millis(1_700_000_000_000)));
        let e = p.event("m", "app", "items", polled, &[]).unwrap().unwrap().decode().unwrap();
        assert_eq!(e.id, "poll:app.items:a:1700000000000");
        assert_eq!(e.time_ms, 1_700_000_000_000);
        let EventBody::Change(c) = &e.body else { panic!() };
        assert_eq!(c.op, OperationType::Replace);
        assert_eq!(c.key.to_json(), r#"{"_id":"a"}"#);
        assert_eq!(c.full_document.as_ref().unwrap().get("n"), Some(&Value::Int(1)));
        assert!(p.event("m", "app", "items", p.read(&raw), &["insert".into()]).unwrap().is_none(), "filtered out");
    }

    /// The fallback must hand plugins what the change stream would: the same
    /// bytes for the key and the document, whatever BSON types they hold.
    #[tokio::test]
    async fn a_polled_document_has_the_shape_the_stream_gives_the_same_document() {
        let oid = mongodb::bson::oid::ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        let doc = rawdoc! {
            "_id": oid, "updatedAt": DateTime::from_millis(-5), "n": 1_i64, "f": 0.5, "s": "ü", "a.b": [1_i32, { "$x": null }],
            "bin": mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] },
            "dec": "1.10".parse::<mongodb::bson::Decimal128>().unwrap(),
            "ts": mongodb::bson::Timestamp { time: 9, increment: 2 },
        };
        let polled = poller("updatedAt").event("m", "app", "items", poller("updatedAt").read(&doc), &[]).unwrap().unwrap();
        let streamed = rawdoc! {
            "_id": { "_data": "t1" }, "operationType": "replace", "ns": { "db": "app", "coll": "items" },
            "clusterTime": mongodb::bson::Timestamp { time: 1, increment: 1 },
            "documentKey": { "_id": oid }, "fullDocument": doc.clone(),
        };
        let (streamed, _) = super::super::convert::Converter::new("m", &super::super::Target::Collection { db: "app".into(), coll: "items".into() })
            .convert(&streamed)
            .unwrap();
        assert_eq!(polled.kind, streamed.kind, "what subscriptions match on");
        let (EventBody::Change(p), EventBody::Change(s)) = (polled.decode().unwrap().body, streamed.decode().unwrap().body) else { panic!("changes") };
        assert_eq!(p, s, "every field of the change: op, namespace, key, full document, the rest nil");
        assert_eq!(p.full_document.unwrap().get("_id"), Some(&Value::Map(Map::from([("$oid".into(), Value::from("65a1f0c2e4b0a1b2c3d4e5f6"))]))));
    }

    #[tokio::test]
    async fn polling_on_id_sees_inserts() {
        let p = poller("_id");
        let e = p.event("m", "app", "items", p.read(&rawdoc! { "_id": 7_i32 }), &[]).unwrap().unwrap().decode().unwrap();
        assert_eq!(e.id, "poll:app.items:7");
        let EventBody::Change(c) = &e.body else { panic!() };
        assert_eq!(c.op, OperationType::Insert);
    }

    #[tokio::test]
    async fn the_next_query_starts_after_the_last_value_and_id() {
        let p = poller("updatedAt");
        let at = Bson::DateTime(DateTime::from_millis(5));
        assert_eq!(p.order(1), doc! { "updatedAt": 1, "_id": 1 });
        assert_eq!(
            p.filter_after(&(at.clone(), Bson::String("a".into()))),
            doc! { "$or": [{ "updatedAt": { "$gt": at.clone() } }, { "updatedAt": at, "_id": { "$gt": "a" } }] }
        );
        assert_eq!(p.filter_after(&(Bson::MinKey, Bson::MinKey)), doc! { "updatedAt": { "$exists": true } });
        assert_eq!(poller("_id").filter_after(&(Bson::Int32(3), Bson::Int32(3))), doc! { "_id": { "$gt": 3 } });
        assert!(get_path(&rawdoc! { "a": { "b": 1_i32 } }, "a.b").is_some());
        assert!(get_path(&rawdoc! { "a": 1_i32 }, "a.b").is_none());
    }
}
