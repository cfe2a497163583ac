//! Several hosts sharing the watch targets of the MongoDB sources, through leases
//! kept in MongoDB itself (`[cluster] mode = "leases"`; see docs/cluster.md).
//!
//! Each target is run by the one host holding its lease document (`lease`); every
//! checkpoint write carries the lease's epoch and is refused once a newer one exists
//! (`Fence`, used by the MongoDB checkpoint store), and `coordinator` renews, spreads
//! and hands targets over. No protocol of our own: MongoDB's conditional updates are it.

pub mod coordinator;
pub mod lease;
pub mod status;

use serde::Deserialize;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// `[cluster]` of the host config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub mode: ClusterMode,
    /// This host's name in lease documents; default `HOSTNAME-PID`. Two hosts
    /// running at once must not share one.
    #[serde(default)]
    pub name: Option<String>,
    /// `"db.coll"` of the lease and heartbeat documents, in the deployment that
    /// holds each source's checkpoints (`checkpoint.uri`, else `uri`).
    #[serde(default = "default_collection")]
    pub collection: String,
    /// How long a lease (and a host's heartbeat) lasts without renewal: the longest
    /// a dead host's streams wait for another host.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often the owner renews; at most a third of `lease_ms`, so that a renewal
    /// can fail twice before the owner must stop.
    #[serde(default = "default_renew_ms")]
    pub renew_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            mode: ClusterMode::Off,
            name: None,
            collection: default_collection(),
            lease_ms: default_lease_ms(),
            renew_ms: default_renew_ms(),
        }
    }
}

fn default_collection() -> String {
    "oplet.leases".into()
}
fn default_lease_ms() -> u64 {
    10_000
}
fn default_renew_ms() -> u64 {
    3_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// One host runs every target (the default).
    #[default]
    Off,
    /// Each target is run by the host holding its lease.
    Leases,
}

impl ClusterConfig {
    /// Checks what the config reader cannot: the renew/lease ratio, the collection
    /// name, and that every MongoDB source keeps its checkpoints in MongoDB (a host
    /// taking a stream over must find where the last owner stopped).
    pub fn validate(&self, sources: &[crate::config::SourceConfig]) -> anyhow::Result<()> {
        if self.mode == ClusterMode::Off {
            return Ok(());
        }
        if self.renew_ms.saturating_mul(3) > self.lease_ms {
            anyhow::bail!(
                "config key cluster.renew_ms: {} ms is more than a third of cluster.lease_ms = {} ms; an owner must be able to miss a renewal and still renew before it has to stop: lower renew_ms or raise lease_ms",
                self.renew_ms,
                self.lease_ms
            );
        }
        match self.collection.split_once('.') {
            Some((db, coll)) if !db.is_empty() && !coll.is_empty() => {}
            _ => anyhow::bail!("config key cluster.collection: {:?} is not a namespace: write \"database.collection\"", self.collection),
        }
        if let Some(name) = &self.name {
            if name.trim().is_empty() || name.len() > 200 {
                anyhow::bail!("config key cluster.name: {name:?} must be 1 to 200 characters, unique per host (default: hostname and pid)");
            }
        }
        let mut mongo = 0;
        for (i, s) in sources.iter().enumerate() {
            if let crate::config::SourceConfig::Mongo(m) = s {
                mongo += 1;
                if m.checkpoint.store != crate::source::mongo::StoreKind::Mongo {
                    anyhow::bail!(
                        "config key source[{i}].checkpoint.store (source {:?}): cluster.mode = \"leases\" needs store = \"mongo\", so that the host taking a stream over resumes where its last owner stopped",
                        m.name
                    );
                }
            }
        }
        if mongo == 0 {
            anyhow::bail!("config key cluster.mode: \"leases\" shares MongoDB sources between hosts, and no [[source]] has type = \"mongo\"");
        }
        Ok(())
    }

    /// This host's membership, or `None` when clustering is off.
    pub fn membership(&self) -> Option<Arc<Membership>> {
        (self.mode == ClusterMode::Leases).then(|| Arc::new(Membership { name: self.name.clone().unwrap_or_else(default_name), cfg: self.clone() }))
    }
}

/// What a MongoDB source needs to run its targets under leases.
#[derive(Debug)]
pub struct Membership {
    pub name: String,
    pub cfg: ClusterConfig,
}

/// The streams this process holds a lease for, for the status page and metrics:
/// stream key → (source, epoch, taken at).
static HELD: Mutex<std::collections::BTreeMap<String, (String, i64, i64)>> = Mutex::new(std::collections::BTreeMap::new());
/// This process's cluster name, once a coordinator runs.
static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records a lease taken (`Some(epoch)`) or given up / lost (`None`, with `how`).
pub(crate) fn note_lease(source: &str, key: &str, epoch: Option<i64>, how: &str) {
    let m = crate::metrics::get();
    let label = crate::metrics::StreamLabel { stream: key.to_string() };
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    match epoch {
        Some(e) => {
            held.insert(key.to_string(), (source.to_string(), e, lease::now_ms()));
            m.lease_held.get_or_create(&label).set(1);
        }
        None => {
            held.remove(key);
            m.lease_held.get_or_create(&label).set(0);
        }
    }
    m.lease_changes.get_or_create(&crate::metrics::LeaseChangeLabel { source: source.to_string(), change: how.to_string() }).inc();
}

/// `{name, streams: [{stream, source, epoch, held_ms}]}` of this host, or null
/// when it runs no cluster coordinator.
pub fn ownership_json() -> serde_json::Value {
    let Some(name) = NAME.get() else { return serde_json::Value::Null };
    let now = lease::now_ms();
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let streams: Vec<serde_json::Value> = held
        .iter()
        .map(|(k, (source, epoch, at))| serde_json::json!({"stream": k, "source": source, "epoch": epoch, "held_ms": now - at}))
        .collect();
    serde_json::json!({"name": name, "streams": streams})
}

/// `HOSTNAME-PID`.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

/// The lease a target is run under, shared by the coordinator and the target's
/// checkpoint store: writes carry `epoch`, and a write refused because a newer
/// epoch exists trips `refused`, which makes the holder give the target up.
pub struct Fence {
    pub key: String,
    pub owner: String,
    pub epoch: i64,
    refused: watch::Sender<bool>,
    /// Turned true when the target's saver should write a last time and end.
    saver_stop: watch::Sender<bool>,
    run: Mutex<Option<(Arc<crate::checkpoint::Tracker>, tokio::task::JoinHandle<()>)>>,
}

impl Fence {
    pub fn new(key: &str, owner: &str, epoch: i64) -> Arc<Fence> {
        Arc::new(Fence {
            key: key.into(),
            owner: owner.into(),
            epoch,
            refused: watch::channel(false).0,
            saver_stop: watch::channel(false).0,
            run: Mutex::new(None),
        })
    }

    /// A checkpoint write under this epoch was refused: a newer owner exists.
    pub fn refuse(&self, why: &str) {
        if !*self.refused.borrow() {
            tracing::warn!(stream = %self.key, epoch = self.epoch, "checkpoint write refused ({why}): another host holds a newer lease; giving the stream up (effects applied since its last checkpoint will be applied again by the new owner)");
        }
        self.refused.send_replace(true);
    }

    pub fn is_refused(&self) -> bool {
        *self.refused.borrow()
    }

    pub fn refused(&self) -> watch::Receiver<bool> {
        self.refused.subscribe()
    }

    /// The stop signal the target's saver runs with.
    pub fn saver_stop(&self) -> watch::Receiver<bool> {
        self.saver_stop.subscribe()
    }

    /// The target's tracker and saver, once its checkpoint was read.
    pub fn started(&self, tracker: Arc<crate::checkpoint::Tracker>, saver: tokio::task::JoinHandle<()>) {
        *self.run.lock().expect("fence lock") = Some((tracker, saver));
    }

    fn tracker(&self) -> Option<Arc<crate::checkpoint::Tracker>> {
        self.run.lock().expect("fence lock").as_ref().map(|(t, _)| t.clone())
    }

    /// Stops the saver at once, without a last write, and waits until it is gone
    /// (a saver running on another thread at this moment must not save after it).
    async fn abort_saver(&self) {
        let saver = self.run.lock().expect("fence lock").take().map(|(_, s)| s);
        if let Some(saver) = saver {
            saver.abort();
            let _ = saver.await;
        }
    }

    /// Stops the saver (it writes a last time) and waits for it.
    async fn stop_saver(&self) {
        self.saver_stop.send_replace(true);
        let saver = self.run.lock().expect("fence lock").take().map(|(_, s)| s);
        if let Some(saver) = saver {
            let _ = saver.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<crate::config::Config> {
        crate::config::Config::parse(text, &[], std::path::Path::new("."))
    }

    const SOURCE: &str = "[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"mongodb://h\"\ncollections = [\"a.b\"]\n";

    #[test]
    fn leases_read_from_toml_with_defaults() {
        let cfg = parse(&format!("[cluster]\nmode = \"leases\"\nname = \"h1\"\n{SOURCE}[source.checkpoint]\nstore = \"mongo\"\n")).unwrap();
        assert_eq!(cfg.cluster.mode, ClusterMode::Leases);
        assert_eq!((cfg.cluster.lease_ms, cfg.cluster.renew_ms), (10_000, 3_000));
        assert_eq!(cfg.cluster.membership().unwrap().name, "h1");
        let off = parse(SOURCE).unwrap();
        assert!(off.cluster.membership().is_none(), "off by default");
        assert!(default_name().ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn cluster_mistakes_are_named() {
        let err = |extra: &str, source_extra: &str| format!("{:#}", parse(&format!("[cluster]\nmode = \"leases\"\n{extra}\n{SOURCE}{source_extra}")).unwrap_err());
        let mongo = "[source.checkpoint]\nstore = \"mongo\"\n";
        let e = err("", "");
        assert!(e.contains("source[0].checkpoint.store") && e.contains("store = \"mongo\""), "{e}");
        let e = err("renew_ms = 5000\nlease_ms = 6000", mongo);
        assert!(e.contains("cluster.renew_ms") && e.contains("a third"), "{e}");
        let e = err("lease_ms = 9223372036854775807", mongo);
        assert!(e.contains("cluster.lease_ms"), "{e}");
        let e = err("renew_ms = 0", mongo);
        assert!(e.contains("cluster.renew_ms"), "{e}");
        let e = err("collection = \"leases\"", mongo);
        assert!(e.contains("cluster.collection") && e.contains("not a namespace"), "{e}");
        let e = format!("{:#}", parse(&format!("[cluster]\nmode = \"raft\"\n{SOURCE}{mongo}")).unwrap_err());
        assert!(e.contains("cluster.mode") && e.contains("unknown variant"), "{e}");
        let e = err("lease = 5", mongo);
        assert!(e.contains("unknown field `lease`"), "{e}");
        let none = format!("{:#}", parse("[cluster]\nmode = \"leases\"\n").unwrap_err());
        assert!(none.contains("no [[source]] has type = \"mongo\""), "{none}");
    }
}
