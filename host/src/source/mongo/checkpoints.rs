//! Positions of a MongoDB watch target, and where they are kept.
//!
//! A position is JSON: `{"token": T, "seq": N}` for a change stream, where `T` is
//! the resume token in canonical extended JSON (`{"_data": "8263..."}`), or
//! `{"poll": {"value": V, "id": I}, "seq": N}` for the polling fallback (the last
//! field value and `_id` seen); `seq` is the last event's (see `feed`).
//! They are kept in the host's local checkpoint files, or in a MongoDB collection
//! (`{_id: key, position, saved_at}`) so another host can take over from them.
//! Under `[cluster] mode = "leases"` each write also carries the lease's `epoch`
//! and `owner`, and is refused when the document holds a newer epoch (fencing).

use super::retry::{self, Failure};
use super::ReconnectConfig;
use crate::checkpoint::{CheckpointStore, Position, PositionStore};
use crate::cluster::Fence;
use std::sync::Arc;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::ResumeToken;
use serde_json::json;
use tokio::sync::watch;

/// `{"token": ...}` from a resume token as BSON.
pub fn token_position(token: Bson) -> Position {
    json!({ "token": token.into_canonical_extjson() })
}

/// `{"token": ...}` from a driver `ResumeToken` (an empty batch's postBatchResumeToken).
pub fn resume_token_position(token: &ResumeToken) -> Option<Position> {
    mongodb::bson::to_bson(token).ok().map(token_position)
}

/// The resume token of a `{"token": ...}` position.
pub fn position_token(position: &Position) -> Option<ResumeToken> {
    let bson = Bson::try_from(position.get("token")?.clone()).ok()?;
    mongodb::bson::from_bson(bson).ok()
}

/// `{"poll": {"value": ..., "id": ...}}`.
pub fn poll_position(value: Bson, id: Bson) -> Position {
    json!({ "poll": { "value": value.into_canonical_extjson(), "id": id.into_canonical_extjson() } })
}

/// The (field value, `_id`) of a `{"poll": ...}` position.
pub fn position_poll(position: &Position) -> Option<(Bson, Bson)> {
    let poll = position.get("poll")?;
    let value = Bson::try_from(poll.get("value")?.clone()).ok()?;
    let id = Bson::try_from(poll.get("id")?.clone()).ok()?;
    Some((value, id))
}

#[derive(Clone)]
pub enum Checkpoints {
    Local(CheckpointStore),
    Mongo(mongodb::Collection<Document>),
    /// The MongoDB collection, written only under the lease `Fence` holds.
    Fenced(mongodb::Collection<Document>, Arc<Fence>),
}

impl Checkpoints {
    pub fn mongo(client: &mongodb::Client, db: &str, coll: &str) -> Checkpoints {
        Checkpoints::Mongo(client.database(db).collection(coll))
    }

    async fn load(&self, key: &str) -> Result<Option<Position>, LoadError> {
        match self {
            Checkpoints::Local(store) => store.load(key).map_err(LoadError::Local),
            Checkpoints::Mongo(coll) | Checkpoints::Fenced(coll, _) => {
                let found = coll.find_one(doc! { "_id": key }).await.map_err(LoadError::Mongo)?;
                Ok(found.and_then(|mut d| d.remove("position")).map(|p| p.into_canonical_extjson()))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Checkpoints::Local(_) => "the local checkpoint store".into(),
            Checkpoints::Mongo(coll) => format!("checkpoint collection {}", coll.namespace()),
            Checkpoints::Fenced(coll, f) => format!("checkpoint collection {} (lease epoch {})", coll.namespace(), f.epoch),
        }
    }
}

/// Writes `set` into the checkpoint document of `fence.key` unless it holds an
/// epoch newer than `fence.epoch`; `Ok(false)` when refused (and the fence trips).
async fn fenced_write(coll: &mongodb::Collection<Document>, fence: &Fence, mut set: Document) -> mongodb::error::Result<bool> {
    set.insert("epoch", fence.epoch);
    set.insert("owner", fence.owner.as_str());
    let filter = doc! { "_id": &fence.key, "$or": [ { "epoch": { "$lte": fence.epoch } }, { "epoch": { "$exists": false } } ] };
    let written = match coll.update_one(filter, doc! { "$set": set }).upsert(true).await {
        Ok(r) => r.matched_count == 1 || r.upserted_id.is_some(),
        // The document is there with a newer epoch: the upsert collides with it.
        Err(e) if crate::cluster::lease::duplicate_key(&e) => false,
        Err(e) => return Err(e),
    };
    if !written {
        fence.refuse(&format!("epoch {} is older than the checkpoint's", fence.epoch));
    }
    Ok(written)
}

/// Stamps the checkpoint document with a newly taken lease's epoch before the
/// new owner reads it, so that from now on no older owner can move it.
/// `Ok(false)`: a newer epoch is already there (this lease is stale).
pub async fn claim(coll: &mongodb::Collection<Document>, fence: &Fence) -> anyhow::Result<bool> {
    fenced_write(coll, fence, doc! { "claimed_at": mongodb::bson::DateTime::now() })
        .await
        .map_err(|e| anyhow::anyhow!("checkpoint collection {}: cannot claim {} for epoch {}: {}", coll.namespace(), fence.key, fence.epoch, retry::describe(&e)))
}

enum LoadError {
    Local(anyhow::Error),
    Mongo(mongodb::error::Error),
}

impl PositionStore for Checkpoints {
    async fn persist(&self, key: &str, position: Position) -> anyhow::Result<()> {
        match self {
            Checkpoints::Local(store) => store.persist(key, position).await,
            Checkpoints::Mongo(coll) => {
                let position = Bson::try_from(position)?;
                let record = doc! { "_id": key, "position": position, "saved_at": mongodb::bson::DateTime::now() };
                coll.replace_one(doc! { "_id": key }, record)
                    .upsert(true)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {}", self.describe(), retry::describe(&e)))?;
                Ok(())
            }
            Checkpoints::Fenced(coll, fence) => {
                // `saved_ms` beside `saved_at`: nx-27017 stores dates as text, and
                // `cluster status` computes the checkpoint lag from it.
                let set = doc! { "position": Bson::try_from(position)?, "saved_at": mongodb::bson::DateTime::now(), "saved_ms": crate::cluster::lease::now_ms() };
                match fenced_write(coll, fence, set).await {
                    Ok(true) => Ok(()),
                    Ok(false) => anyhow::bail!("{}: refused, another host holds a newer lease of {key}", self.describe()),
                    Err(e) => anyhow::bail!("{}: {}", self.describe(), retry::describe(&e)),
                }
            }
        }
    }
}

/// The saved position of `key` (`Ok(Some(None))`: none yet). A checkpoint
/// collection that cannot be reached is retried with backoff; `Ok(None)` means
/// `stop` turned true meanwhile.
pub async fn load_with_retry(
    store: &Checkpoints,
    key: &str,
    reconnect: &ReconnectConfig,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Option<Position>>> {
    let mut backoff = reconnect.backoff();
    loop {
        let failure = tokio::select! {
            r = store.load(key) => r,
            _ = stop.wait_for(|s| *s) => return Ok(None),
        };
        match failure {
            Ok(position) => {
                if backoff.attempts() > 0 {
                    tracing::info!(checkpoint = key, "read the checkpoint from {} after {} failed attempt(s)", store.describe(), backoff.attempts());
                }
                return Ok(Some(position));
            }
            Err(LoadError::Local(e)) => return Err(crate::exit::fatal(crate::exit::Cause::Config, format!("{e:#}"))),
            Err(LoadError::Mongo(e)) if retry::classify(&e) != Failure::Transient => {
                let message = format!("cannot read checkpoint {key} from {}: {}", store.describe(), retry::describe(&e));
                return Err(crate::exit::fatal(retry::fatal_cause(&e), message));
            }
            Err(LoadError::Mongo(e)) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    checkpoint = key,
                    "cannot read the checkpoint from {} ({}); retrying in {delay:.1?} (attempt {})",
                    store.describe(),
                    retry::describe(&e),
                    backoff.attempts()
                );
                if !retry::sleep_unless_stopped(delay, stop).await {
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn a_resume_token_survives_the_round_trip_through_json() {
        let token: ResumeToken = mongodb::bson::from_bson(Bson::Document(doc! { "_data": "8263A1" })).unwrap();
        let position = resume_token_position(&token).unwrap();
        assert_eq!(position, json!({"token": {"_data": "8263A1"}}));
        let text = serde_json::to_string(&position).unwrap();
        let back = position_token(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, token);
    }

    #[test]
    fn a_poll_position_keeps_bson_types() {
        let at = mongodb::bson::DateTime::from_millis(1_700_000_000_123);
        let id = ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        let position = poll_position(Bson::DateTime(at), Bson::ObjectId(id));
        let text = serde_json::to_string(&position).unwrap();
        let (value, back_id) = position_poll(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(value, Bson::DateTime(at));
        assert_eq!(back_id, Bson::ObjectId(id));
        let big = poll_position(Bson::Int64(5), Bson::String("a".into()));
        assert_eq!(position_poll(&big).unwrap().0, Bson::Int64(5), "an Int64 stays an Int64");
    }

    #[test]
    fn positions_of_the_other_mode_read_as_none() {
        assert!(position_token(&json!({"poll": {"value": 1, "id": 1}})).is_none());
        assert!(position_poll(&json!({"token": {"_data": "x"}})).is_none());
    }
}
