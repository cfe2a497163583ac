//! The lease and heartbeat documents, and the conditional updates that move them.
//!
//! One collection holds `{_id: "lease:KEY", kind: "lease", target: KEY, owner,
//! epoch, expires_ms, renewed_ms, acquired_ms}` per watch target and `{_id:
//! "host:NAME", kind: "host", expires_ms, ...}` per live host. Times are wall-clock
//! milliseconds; a lease is taken only once expired or released, and every take
//! bumps `epoch`, which fences the previous owner's checkpoint writes.

use mongodb::bson::{doc, Document};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn lease_id(key: &str) -> String {
    format!("lease:{key}")
}

pub fn host_id(name: &str) -> String {
    format!("host:{name}")
}

/// A lease document as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub key: String,
    pub owner: Option<String>,
    pub epoch: i64,
    pub expires_ms: i64,
    pub renewed_ms: i64,
    pub acquired_ms: i64,
}

impl Lease {
    pub(crate) fn from_doc(d: &Document) -> Option<Lease> {
        let int = |k: &str| d.get_i64(k).ok().or_else(|| d.get_i32(k).ok().map(i64::from)).unwrap_or(0);
        Some(Lease {
            key: d.get_str("target").ok()?.to_string(),
            owner: d.get_str("owner").ok().map(str::to_string),
            epoch: int("epoch"),
            expires_ms: int("expires_ms"),
            renewed_ms: int("renewed_ms"),
            acquired_ms: int("acquired_ms"),
        })
    }

    /// Held by someone at `now`.
    pub fn live(&self, now: i64) -> bool {
        self.owner.is_some() && self.expires_ms >= now
    }
}

/// A host's heartbeat document as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub name: String,
    pub expires_ms: i64,
    pub beat_ms: i64,
    pub started_ms: i64,
    pub pid: i64,
}

/// The lease collection, seen by one host (`owner`).
#[derive(Clone)]
pub struct Leases {
    pub coll: mongodb::Collection<Document>,
    pub owner: String,
    pub lease_ms: i64,
    started_ms: i64,
}

/// E11000: an upsert found the document there but not matching (MongoDB answers
/// a lost race for a lease this way; nx-27017 answers with no document).
pub fn duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    let code = match e.kind.as_ref() {
        ErrorKind::Command(c) => c.code,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code,
        _ => 0,
    };
    code == 11000 || e.to_string().contains("E11000")
}

impl Leases {
    pub fn new(coll: mongodb::Collection<Document>, owner: &str, lease_ms: u64) -> Leases {
        Leases { coll, owner: owner.into(), lease_ms: lease_ms.min(i64::MAX as u64) as i64, started_ms: now_ms() }
    }

    /// Says this host is alive until `now + lease_ms`.
    pub async fn heartbeat(&self) -> mongodb::error::Result<()> {
        let now = now_ms();
        let set = doc! {
            "kind": "host", "name": &self.owner, "expires_ms": now + self.lease_ms, "beat_ms": now,
            "started_ms": self.started_ms, "pid": std::process::id() as i64,
        };
        self.coll.update_one(doc! { "_id": host_id(&self.owner) }, doc! { "$set": set }).upsert(true).await?;
        Ok(())
    }

    /// Whether `beat` was written by this process (not by another host that was
    /// given the same `name`).
    pub fn is_mine(&self, beat: &Heartbeat) -> bool {
        beat.pid == std::process::id() as i64 && beat.started_ms == self.started_ms
    }

    /// Marks this host gone at once (a clean stop), so the others recount their share.
    pub async fn leave(&self) -> mongodb::error::Result<()> {
        self.coll.update_one(doc! { "_id": host_id(&self.owner) }, doc! { "$set": { "expires_ms": 0i64 } }).await?;
        Ok(())
    }

    /// Every heartbeat document, live or not.
    pub async fn hosts(&self) -> mongodb::error::Result<Vec<Heartbeat>> {
        read_hosts(&self.coll).await
    }

    /// The lease documents of `keys` that exist.
    pub async fn leases(&self, keys: &[String]) -> mongodb::error::Result<Vec<Lease>> {
        let ids: Vec<String> = keys.iter().map(|k| lease_id(k)).collect();
        let mut cursor = self.coll.find(doc! { "_id": { "$in": ids } }).await?;
        let mut out = Vec::new();
        while cursor.advance().await? {
            let d: Document = cursor.deserialize_current()?;
            out.extend(Lease::from_doc(&d));
        }
        Ok(out)
    }

    /// Takes the lease of `key` if it is free (never taken, released, or expired);
    /// returns the new epoch, or `None` when another host holds it or won the race.
    /// A compare-and-set on the epoch read (`update {_id, epoch: E, free}` to `E +
    /// 1`), or an insert at epoch 1 that collides on `_id` when another host was
    /// first: never an upsert with `$or`, which nx-27017 answers inconsistently
    /// when hosts race (seen: a returned epoch that went back to 1).
    pub async fn acquire(&self, key: &str) -> mongodb::error::Result<Option<i64>> {
        let now = now_ms();
        let id = lease_id(key);
        let set = |epoch: i64| doc! { "kind": "lease", "target": key, "owner": &self.owner, "epoch": epoch, "expires_ms": now + self.lease_ms, "renewed_ms": now, "acquired_ms": now };
        match self.coll.find_one(doc! { "_id": &id }).await? {
            None => {
                let mut d = set(1);
                d.insert("_id", id.as_str());
                match self.coll.insert_one(d).await {
                    Ok(_) => Ok(Some(1)),
                    Err(e) if duplicate_key(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Some(d) => {
                let Some(lease) = Lease::from_doc(&d) else { return Ok(None) };
                if lease.live(now) {
                    return Ok(None);
                }
                let filter = doc! { "_id": &id, "epoch": lease.epoch, "$or": [ { "expires_ms": { "$lt": now } }, { "owner": null } ] };
                let r = self.coll.update_one(filter, doc! { "$set": set(lease.epoch + 1) }).await?;
                Ok((r.modified_count == 1).then_some(lease.epoch + 1))
            }
        }
    }

    /// Extends the lease this host holds at `epoch`; false when it is no longer
    /// ours (expired, taken, or released). An expired lease is never renewed, only
    /// taken again under a new epoch, so nothing run under the old one goes on.
    pub async fn renew(&self, key: &str, epoch: i64) -> mongodb::error::Result<bool> {
        let now = now_ms();
        let filter = doc! { "_id": lease_id(key), "owner": &self.owner, "epoch": epoch, "expires_ms": { "$gte": now } };
        let r = self.coll.update_one(filter, doc! { "$set": { "expires_ms": now + self.lease_ms, "renewed_ms": now } }).await?;
        Ok(r.matched_count == 1)
    }

    /// Gives the lease up at once (after a last checkpoint), if still ours at `epoch`.
    pub async fn release(&self, key: &str, epoch: i64) -> mongodb::error::Result<bool> {
        let filter = doc! { "_id": lease_id(key), "owner": &self.owner, "epoch": epoch };
        let r = self.coll.update_one(filter, doc! { "$set": { "owner": null, "expires_ms": 0i64 } }).await?;
        Ok(r.matched_count == 1)
    }
}

/// Every heartbeat document of `coll`.
pub async fn read_hosts(coll: &mongodb::Collection<Document>) -> mongodb::error::Result<Vec<Heartbeat>> {
    let mut cursor = coll.find(doc! { "kind": "host" }).await?;
    let mut out = Vec::new();
    while cursor.advance().await? {
        let d: Document = cursor.deserialize_current()?;
        let int = |k: &str| d.get_i64(k).ok().or_else(|| d.get_i32(k).ok().map(i64::from)).unwrap_or(0);
        if let Ok(name) = d.get_str("name") {
            out.push(Heartbeat {
                name: name.to_string(),
                expires_ms: int("expires_ms"),
                beat_ms: int("beat_ms"),
                started_ms: int("started_ms"),
                pid: int("pid"),
            });
        }
    }
    Ok(out)
}

/// Every lease document of `coll`.
pub async fn read_leases(coll: &mongodb::Collection<Document>) -> mongodb::error::Result<Vec<Lease>> {
    let mut cursor = coll.find(doc! { "kind": "lease" }).await?;
    let mut out = Vec::new();
    while cursor.advance().await? {
        let d: Document = cursor.deserialize_current()?;
        out.extend(Lease::from_doc(&d));
    }
    Ok(out)
}

/// How many targets one host may hold: `ceil(targets / live hosts)`, and the
/// `floor` below which a host is owed targets by those above it.
pub fn fair_share(targets: usize, live_hosts: usize) -> (usize, usize) {
    let hosts = live_hosts.max(1);
    (targets.div_ceil(hosts), targets / hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_rounded_up_and_never_divides_by_zero() {
        assert_eq!(fair_share(6, 3), (2, 2));
        assert_eq!(fair_share(6, 4), (2, 1));
        assert_eq!(fair_share(6, 2), (3, 3));
        assert_eq!(fair_share(6, 0), (6, 6));
        assert_eq!(fair_share(1, 5), (1, 0));
    }

    #[test]
    fn a_lease_reads_back_from_int32_or_int64() {
        let d = doc! { "target": "m.a.b", "owner": "h1", "epoch": 3i32, "expires_ms": 10i64, "renewed_ms": 5i64, "acquired_ms": 1i64 };
        let l = Lease::from_doc(&d).unwrap();
        assert_eq!((l.epoch, l.owner.as_deref()), (3, Some("h1")));
        assert!(l.live(10) && !l.live(11));
        let released = doc! { "target": "m.a.b", "owner": null, "epoch": 3i64, "expires_ms": 0i64 };
        assert!(!Lease::from_doc(&released).unwrap().live(0), "a released lease is free");
    }
}
