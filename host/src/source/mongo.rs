//! The MongoDB source: change streams in, numbered events out, nothing lost.
//!
//! `run` opens one change stream per watch target (a collection, a database or the
//! whole deployment) with the official driver and fans every change out to the
//! router in-process. Each target has its own tracker and checkpoint (the resume
//! token of the last event whose effects were all applied), resumes from it after a
//! restart or a dropped connection, reconnects with backoff, and falls back to slow
//! polling where the server refuses change streams. See docs/mongo.md.

mod checkpoints;
mod connection;
mod convert;
mod elements;
mod feed;
mod poll;
mod retry;
pub mod snapshot;
mod stream;
pub mod transcode;

use super::SourceContext;
use crate::checkpoint::Tracker;
use crate::deadletter::DeadLetters;
use anyhow::{bail, Context};
use checkpoints::Checkpoints;
use feed::Feed;
use mongodb::bson::Document;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    pub name: String,
    /// A `mongodb://` or `mongodb+srv://` connection string. TLS is set in it
    /// (`tls=true&tlsCAFile=...&tlsCertificateKeyFile=...`, see docs/mongo.md).
    pub uri: String,
    /// The password of the uri's user, kept out of the uri (or
    /// `OPLET__SOURCE__N__PASSWORD`); never logged.
    #[serde(default)]
    pub password: Option<crate::effect::secrets::Secret>,
    /// A file whose first line is that password (a mounted secret).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// `"db.coll"` namespaces; one change stream each.
    #[serde(default, deserialize_with = "namespaces")]
    pub collections: Vec<String>,
    /// Whole databases; one change stream each (not on nx-27017).
    #[serde(default)]
    pub databases: Vec<String>,
    /// One change stream for every database of the deployment.
    #[serde(default)]
    pub deployment: bool,
    /// Operation types the server should send (`insert`, `update`, ...); empty = all.
    #[serde(default)]
    pub operations: Vec<String>,
    /// Aggregation stages appended to every change stream: JSON text of an array
    /// (extended JSON, e.g. `{"$date": ...}`), or a TOML array of tables.
    #[serde(default)]
    pub pipeline: Option<Pipeline>,
    /// `fullDocument`: `default`, `updateLookup`, `whenAvailable` or `required`.
    #[serde(default)]
    pub full_document: FullDocument,
    /// `fullDocumentBeforeChange` (pre-images): `off`, `whenAvailable` or `required`.
    #[serde(default)]
    pub full_document_before_change: BeforeChange,
    /// What to do when the saved resume token is older than the server's history.
    #[serde(default)]
    pub on_history_lost: OnHistoryLost,
    /// Events per server batch; default: the server's.
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// How long the server may hold an empty `getMore` open (`maxAwaitTimeMS`).
    #[serde(default = "default_max_await_ms")]
    pub max_await_ms: u64,
    /// On a server that answers an empty `getMore` at once instead of waiting
    /// `max_await_ms` for changes (nx-27017 does), the pause after an empty batch:
    /// `idle_pause_min_ms` at first, doubling up to `idle_pause_max_ms` while the
    /// stream stays quiet. The minimum bounds the latency added to a busy stream and
    /// batches its changes (fewer round trips per change); the maximum bounds the
    /// latency of the first change after a quiet spell and the cost of being idle.
    #[serde(default = "default_idle_pause_min_ms")]
    pub idle_pause_min_ms: u64,
    #[serde(default = "default_idle_pause_max_ms")]
    pub idle_pause_max_ms: u64,
    /// Server selection timeout when the URI sets none (`serverSelectionTimeoutMS`):
    /// how long one attempt waits for an unreachable server before backing off.
    #[serde(default = "default_server_selection_ms")]
    pub server_selection_timeout_ms: u64,
    /// `"initial"`: on the first start of a collection (no checkpoint yet), deliver
    /// every existing document as a `snapshot` event, then the changes made since
    /// just before the snapshot began. `"never"` (default): changes from now only.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Documents per server batch when a snapshot or backfill reads a collection.
    #[serde(default = "default_snapshot_batch")]
    pub snapshot_batch: u32,
    /// How often a snapshot or backfill logs its progress (done/total, rate, ETA).
    #[serde(default = "default_snapshot_progress_ms")]
    pub snapshot_progress_ms: u64,
    /// Set by `oplet backfill` only (never from a file): read, deliver, stop.
    #[serde(skip)]
    pub backfill: Option<snapshot::Backfill>,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default)]
    pub fallback: FallbackConfig,
}

fn default_max_await_ms() -> u64 {
    1000
}
fn default_idle_pause_min_ms() -> u64 {
    5
}
fn default_idle_pause_max_ms() -> u64 {
    50
}
fn default_server_selection_ms() -> u64 {
    10_000
}
fn default_snapshot_batch() -> u32 {
    5000
}
fn default_snapshot_progress_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Changes from the first start on; existing documents are not read.
    #[default]
    Never,
    /// Existing documents first (once, resumable), then the changes.
    Initial,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FullDocument {
    /// The server's default: the document for inserts and replaces only.
    #[default]
    Default,
    UpdateLookup,
    WhenAvailable,
    Required,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BeforeChange {
    #[default]
    Off,
    WhenAvailable,
    Required,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnHistoryLost {
    /// Stop the source with an error that says what to do (the default).
    #[default]
    Fail,
    /// Log loudly that changes were skipped and go on from now.
    StartFromNow,
}

/// Where this source's checkpoints live.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    #[serde(default)]
    pub store: StoreKind,
    /// `"db.coll"` for `store = "mongo"`.
    #[serde(default = "default_checkpoint_collection", deserialize_with = "namespace")]
    pub collection: String,
    /// For `store = "mongo"`: another deployment than `uri`; default `uri`.
    #[serde(default)]
    pub uri: Option<String>,
}

fn default_checkpoint_collection() -> String {
    "oplet.checkpoints".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A file per change stream in `state_dir/checkpoints`.
    #[default]
    Local,
    /// A document per change stream in a MongoDB collection, so another host can
    /// take over from where this one stopped.
    Mongo,
}

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    #[serde(default = "default_initial_ms")]
    pub initial_ms: u64,
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig { initial_ms: default_initial_ms(), max_ms: default_max_ms() }
    }
}
fn default_initial_ms() -> u64 {
    100
}
fn default_max_ms() -> u64 {
    30_000
}

/// Polling for deployments without change streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default)]
    pub mode: FallbackMode,
    /// The field that grows with every write to poll on (`updatedAt`), or `_id`
    /// (new documents only).
    #[serde(default = "default_field")]
    pub field: String,
    /// One query per collection per interval while nothing is behind.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Documents per query at most.
    #[serde(default = "default_poll_batch")]
    pub batch: u32,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            mode: FallbackMode::default(),
            field: default_field(),
            interval_ms: default_interval_ms(),
            batch: default_poll_batch(),
        }
    }
}
fn default_field() -> String {
    "_id".into()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_poll_batch() -> u32 {
    500
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackMode {
    /// Change streams; poll a collection whose server refuses them.
    #[default]
    Auto,
    /// Change streams only: a server that refuses them stops the source.
    Off,
    /// Always poll, never open a change stream.
    Always,
}

/// Extra pipeline stages, parsed (as extended JSON) when the config is read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pipeline(pub Vec<Document>);

impl<'de> Deserialize<'de> for Pipeline {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spec {
            Text(String),
            Stages(Vec<serde_json::Value>),
        }
        let stages = match Spec::deserialize(d)? {
            Spec::Text(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Array(stages)) => stages,
                Ok(_) => return Err(serde::de::Error::custom("pipeline must be a JSON array of stages, e.g. '[{\"$match\": {...}}]'")),
                Err(e) => return Err(serde::de::Error::custom(format!("pipeline is not valid JSON: {e}"))),
            },
            Spec::Stages(stages) => stages,
        };
        Pipeline::from_json(stages).map_err(serde::de::Error::custom)
    }
}

impl Pipeline {
    fn from_json(stages: Vec<serde_json::Value>) -> Result<Pipeline, String> {
        let mut out = Vec::with_capacity(stages.len());
        for (i, stage) in stages.into_iter().enumerate() {
            match mongodb::bson::Bson::try_from(stage) {
                Ok(mongodb::bson::Bson::Document(doc)) if doc.len() == 1 => out.push(doc),
                Ok(_) => return Err(format!("pipeline stage {i} must be a document with one stage name, e.g. {{\"$match\": {{...}}}}")),
                Err(e) => return Err(format!("pipeline stage {i} is not valid extended JSON: {e}")),
            }
        }
        Ok(Pipeline(out))
    }
}

fn namespace<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let ns = String::deserialize(d)?;
    split_namespace(&ns).map_err(serde::de::Error::custom)?;
    Ok(ns)
}

fn namespaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for ns in &list {
        split_namespace(ns).map_err(serde::de::Error::custom)?;
    }
    Ok(list)
}

/// `"db.coll"` → (`db`, `coll`); the collection name may itself contain dots.
fn split_namespace(ns: &str) -> Result<(&str, &str), String> {
    match ns.split_once('.') {
        Some((db, coll)) if !db.is_empty() && !coll.is_empty() => Ok((db, coll)),
        _ => Err(format!("{ns:?} is not a namespace: write \"database.collection\"")),
    }
}

/// One change stream: a collection, a database, or the whole deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Collection { db: String, coll: String },
    Database(String),
    Deployment,
}

impl Target {
    /// Its checkpoint's name: `SOURCE.db.coll`, `SOURCE.db`, or `SOURCE` for the deployment.
    pub(crate) fn key(&self, source: &str) -> String {
        match self {
            Target::Collection { db, coll } => format!("{source}.{db}.{coll}"),
            Target::Database(db) => format!("{source}.{db}"),
            Target::Deployment => source.to_string(),
        }
    }

    /// How logs name it.
    fn label(&self) -> String {
        match self {
            Target::Collection { db, coll } => format!("{db}.{coll}"),
            Target::Database(db) => format!("{db}.*"),
            Target::Deployment => "*".to_string(),
        }
    }
}

impl MongoSourceConfig {
    pub(crate) fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let mut out = Vec::new();
        if self.deployment {
            out.push(Target::Deployment);
        }
        for db in &self.databases {
            if db.is_empty() || db.contains('.') {
                bail!("databases: {db:?} is not a database name");
            }
            out.push(Target::Database(db.clone()));
        }
        for ns in &self.collections {
            let (db, coll) = split_namespace(ns).map_err(anyhow::Error::msg)?;
            out.push(Target::Collection { db: db.into(), coll: coll.into() });
        }
        if out.is_empty() {
            bail!("nothing to watch: set collections = [\"db.coll\", ...], databases = [...] or deployment = true");
        }
        if self.snapshot == SnapshotMode::Initial && (self.deployment || !self.databases.is_empty()) {
            bail!("snapshot = \"initial\" reads collections: list them in `collections` (a database or deployment watch has no snapshot)");
        }
        if self.snapshot_batch == 0 {
            bail!("snapshot_batch = 0: set the number of documents per read batch, e.g. 5000");
        }
        if self.snapshot_progress_ms == 0 {
            bail!("snapshot_progress_ms = 0: set how often progress is logged, in ms, e.g. 10000");
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = out.iter().find(|t| !seen.insert(t.key(""))) {
            bail!("{} is listed twice", dup.label());
        }
        Ok(out)
    }

    /// The stages after `$changeStream`: the operation filter, then the user's.
    fn stages(&self) -> Vec<Document> {
        let mut stages = Vec::new();
        if !self.operations.is_empty() {
            let mut ops = self.operations.clone();
            // Without its invalidate the stream could not be reopened after a drop.
            if !ops.iter().any(|o| o == "invalidate") {
                ops.push("invalidate".into());
            }
            stages.push(mongodb::bson::doc! { "$match": { "operationType": { "$in": ops } } });
        }
        stages.extend(self.pipeline.iter().flat_map(|p| p.0.iter().cloned()));
        stages
    }
}

/// What every watch target of one source shares.
pub(crate) struct Shared {
    pub cfg: MongoSourceConfig,
    pub client: mongodb::Client,
    pub stages: Vec<Document>,
    pub tx: tokio::sync::mpsc::Sender<crate::envelope::Envelope>,
    pub dead: Arc<DeadLetters>,
}

pub async fn run(cfg: MongoSourceConfig, ctx: SourceContext) -> anyhow::Result<()> {
    let name = cfg.name.clone();
    let targets = cfg.targets().with_context(|| format!("source {name:?}"))?;
    let (client, probe) =
        connect(&name, "MongoDB", &cfg.uri, cfg.server_selection_timeout_ms, source_password(&cfg)?.as_ref())
            .await
            .with_context(|| format!("source {name:?}"))?;
    let mut probes = vec![probe.failed()];
    let store = match cfg.checkpoint.store {
        StoreKind::Local => Checkpoints::Local(ctx.store().clone()),
        StoreKind::Mongo => {
            let ckpt_client = match &cfg.checkpoint.uri {
                Some(uri) => {
                    let (c, p) = connect(&name, "the checkpoint store (checkpoint.uri)", uri, cfg.server_selection_timeout_ms, None)
                        .await
                        .with_context(|| format!("source {name:?}: checkpoint.uri"))?;
                    probes.push(p.failed());
                    c
                }
                None => client.clone(),
            };
            let (db, coll) = split_namespace(&cfg.checkpoint.collection).map_err(anyhow::Error::msg)?;
            Checkpoints::mongo(&ckpt_client, db, coll)
        }
    };
    let shared = Arc::new(Shared { stages: cfg.stages(), cfg, client, tx: ctx.tx.clone(), dead: ctx.dead_letters().clone() });
    if let Some(membership) = ctx.cluster.clone() {
        let saving = ctx.saver();
        let leased = run_leased(shared, targets, store, membership, saving.interval, saving.stop.clone(), saving.savers.clone());
        return leased.run(ctx.shutdown.clone()).await.with_context(|| format!("source {name:?}"));
    }

    // A target that fails stops the others: a source that silently watches only
    // part of what it was asked to is worse than one that stops and says why.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let (shared, store, stop) = (shared.clone(), store.clone(), stop_rx.clone());
        let saver = ctx.saver();
        tasks.spawn(async move {
            let label = target.label();
            let result = watch_target(&shared, target, store, stop, |tracker, store| saver.save(tracker, store))
            .await;
            result.with_context(|| format!("{label}"))
        });
    }
    let mut shutdown = ctx.shutdown.clone();
    let mut stopping = false;
    let mut failure = None;
    // A TLS or not-MongoDB failure before the server ever answered stops the
    // source at once, without waiting out server selection.
    let unusable = async move {
        let waits = probes.into_iter().map(|mut rx| {
            Box::pin(async move {
                let reason = rx.wait_for(Option::is_some).await.map(|r| r.clone().unwrap_or_default());
                match reason {
                    Ok(reason) => reason,
                    Err(_) => std::future::pending().await,
                }
            })
        });
        futures_util::future::select_all(waits).await.0
    };
    tokio::pin!(unusable);
    let mut probed = false;
    loop {
        tokio::select! {
            reason = &mut unusable, if !probed => {
                probed = true;
                failure.get_or_insert(crate::exit::fatal(connection::CAUSE, reason));
                let _ = stop_tx.send(true);
            }
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    // The host logs it when `run` returns (once the others stopped).
                    failure.get_or_insert(e);
                    let _ = stop_tx.send(true);
                }
                Some(Err(e)) => {
                    failure.get_or_insert_with(|| anyhow::anyhow!("a stream task failed: {e}"));
                    let _ = stop_tx.send(true);
                }
            },
            // Then keep draining the tasks: each stops at its next await.
            _ = shutdown.wait_for(|s| *s), if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
            }
        }
    }
    match failure {
        Some(e) => Err(e.context(format!("source {name:?}"))),
        None => Ok(()),
    }
}

/// `[cluster] mode = "leases"`: a coordinator that runs only the targets whose lease
/// this host holds, each with its checkpoint writes fenced by the lease's epoch.
fn run_leased(
    shared: Arc<Shared>,
    targets: Vec<Target>,
    store: Checkpoints,
    membership: Arc<crate::cluster::Membership>,
    interval: Duration,
    host_saver_stop: watch::Receiver<bool>,
    savers: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
) -> crate::cluster::coordinator::Coordinator<LeasedTargets> {
    let coll = match store {
        Checkpoints::Mongo(coll) | Checkpoints::Fenced(coll, _) => coll,
        // Config validation refuses this combination.
        Checkpoints::Local(_) => unreachable!("[cluster] mode = \"leases\" with a local checkpoint store"),
    };
    let (db, name) = split_namespace(&membership.cfg.collection).unwrap_or(("oplet", "leases"));
    let leases = crate::cluster::lease::Leases::new(coll.client().database(db).collection(name), &membership.name, membership.cfg.lease_ms);
    let keys = targets.iter().map(|t| t.key(&shared.cfg.name)).collect();
    let source = shared.cfg.name.clone();
    let runner = Arc::new(LeasedTargets { shared, targets, coll, interval });
    crate::cluster::coordinator::Coordinator { source, keys, leases, membership, runner, host_saver_stop, savers }
}

/// The targets of one source, each started when its lease is taken.
struct LeasedTargets {
    shared: Arc<Shared>,
    targets: Vec<Target>,
    coll: mongodb::Collection<Document>,
    interval: Duration,
}

impl crate::cluster::coordinator::Runner for LeasedTargets {
    fn run(&self, index: usize, fence: Arc<crate::cluster::Fence>, stop: watch::Receiver<bool>) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>> {
        let (shared, target, coll, interval) = (self.shared.clone(), self.targets[index].clone(), self.coll.clone(), self.interval);
        Box::pin(async move {
            // Claimed before anything is read; retried while the lease is held (a
            // server hiccup must not leave a leased stream idle until it expires).
            let mut stop = stop;
            let mut delay = Duration::from_millis(100);
            loop {
                match checkpoints::claim(&coll, &fence).await {
                    Ok(true) => break,
                    Ok(false) => return Ok(()), // a newer lease exists: the fence tripped
                    Err(e) => {
                        tracing::warn!(stream = %fence.key, "{e:#}; retrying in {delay:?}");
                        if !retry::sleep_unless_stopped(delay, &mut stop).await {
                            return Ok(());
                        }
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
            let label = target.label();
            let store = Checkpoints::Fenced(coll, fence.clone());
            watch_target(&shared, target, store, stop, |tracker, store| {
                let saver = tokio::spawn(crate::checkpoint::run_saver(tracker.clone(), store, interval, fence.saver_stop()));
                fence.started(tracker, saver);
            })
            .await
            .with_context(|| label)
        })
    }
}

/// Checks a connection string when the config is read, so a wrong scheme or a
/// malformed option is a config error (exit 2) rather than a source failure later.
pub fn check_uri(uri: &str) -> anyhow::Result<()> {
    mongodb::options::ConnectionString::parse(uri).map(|_| ()).map_err(|e| {
        let why = match e.kind.as_ref() {
            mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("{} is not a MongoDB connection string: {why}; write mongodb://HOST:PORT/... or mongodb+srv://HOST/...", redact(uri))
    })
}

/// A client for `uri` whose server monitor reports to a `Probe` (`what` names the
/// server in its log lines).
async fn connect(
    source: &str,
    what: &'static str,
    uri: &str,
    selection_timeout_ms: u64,
    password: Option<&crate::effect::secrets::Secret>,
) -> anyhow::Result<(mongodb::Client, Arc<connection::Probe>)> {
    let mut options = mongodb::options::ClientOptions::parse(uri).await.map_err(|e| {
        crate::exit::fatal(crate::exit::Cause::MongoConnection, format!("cannot use uri {}: {e}", redact(uri)))
    })?;
    if let Some(password) = password {
        match options.credential.as_mut() {
            Some(c) if c.username.is_some() => c.password = Some(password.expose().to_string()),
            _ => {
                return Err(crate::exit::fatal(
                    crate::exit::Cause::Config,
                    format!("password (or password_file) is set but uri {} names no user; write mongodb://USER@HOST/...", redact(uri)),
                ))
            }
        }
    }
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(Duration::from_millis(selection_timeout_ms));
    }
    if options.app_name.is_none() {
        options.app_name = Some("oplet".into());
    }
    let (probe, handler) = connection::Probe::new(source, what);
    options.sdam_event_handler = Some(handler);
    connection::spawn_hello_probes(&probe, source, what, &options);
    Ok((mongodb::Client::with_options(options)?, probe))
}

/// `password` / `password_file` of a source, read now (a missing file stops the start).
fn source_password(cfg: &MongoSourceConfig) -> anyhow::Result<Option<crate::effect::secrets::Secret>> {
    crate::effect::secrets::password(&format!("source {:?}", cfg.name), cfg.password.as_ref(), cfg.password_file.as_deref())
        .map_err(|e| crate::exit::fatal(crate::exit::Cause::Config, e.to_string()))
}

/// The URI without its password, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..]),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

/// Loads the target's checkpoint, starts its saver, and runs its change stream,
/// or its polling fallback, until `stop`.
async fn watch_target(
    shared: &Shared,
    target: Target,
    store: Checkpoints,
    mut stop: watch::Receiver<bool>,
    start_saver: impl FnOnce(Arc<Tracker>, Checkpoints),
) -> anyhow::Result<()> {
    let key = match &shared.cfg.backfill {
        // Its own checkpoint: a backfill never moves (or reads) the stream's.
        Some(b) => format!("backfill.{}.{}", b.plugin, target.key(&shared.cfg.name)),
        None => target.key(&shared.cfg.name),
    };
    let label = target.label();
    let Some(saved) = checkpoints::load_with_retry(&store, &key, &shared.cfg.reconnect, &mut stop).await? else {
        return Ok(()); // stopped while the checkpoint store was unreachable
    };
    let tracker = Tracker::new(&key, 1, saved.clone());
    crate::metrics::watch_tracker(&tracker);
    start_saver(tracker.clone(), store);
    let mut feed = Feed::new(&shared.cfg.name, &label, tracker, shared.tx.clone(), saved.clone());
    let mut saved = saved;
    if let Target::Collection { db, coll } = &target {
        if let Some(b) = &shared.cfg.backfill {
            snapshot::backfill(shared, db, coll, &mut feed, saved.as_ref(), b, &mut stop).await?;
            return Ok(());
        }
        if shared.cfg.snapshot == SnapshotMode::Initial {
            match snapshot::initial(shared, db, coll, &mut feed, saved.as_ref(), &mut stop).await? {
                snapshot::Ended::Stopped => return Ok(()),
                snapshot::Ended::Done(holder) => {
                    snapshot::hold(holder, stop.clone());
                    saved = feed.last();
                }
                snapshot::Ended::NotNeeded | snapshot::Ended::Unsupported => {}
            }
        }
    }
    let poll_target = |why: &str| -> anyhow::Result<(String, String)> {
        match &target {
            Target::Collection { db, coll } => Ok((db.clone(), coll.clone())),
            _ => Err(crate::exit::fatal(
                crate::exit::Cause::MongoNoChangeStreams,
                format!("{why}, and polling needs a collection: list this database's collections in `collections` instead"),
            )),
        }
    };
    match shared.cfg.fallback.mode {
        FallbackMode::Always => {
            let (db, coll) = poll_target("fallback.mode = \"always\"")?;
            poll::run(shared, &db, &coll, &mut feed, saved, "fallback.mode = \"always\"", &mut stop).await
        }
        mode => match stream::run(shared, &target, &mut feed, saved.clone(), &mut stop).await? {
            stream::Ended::Stopped => Ok(()),
            stream::Ended::Unsupported(e) => {
                let why = format!("the server refuses change streams ({})", retry::describe(&e));
                if mode == FallbackMode::Off {
                    return Err(crate::exit::fatal(
                        crate::exit::Cause::MongoNoChangeStreams,
                        format!("{why}; fallback.mode = \"off\": not polling. Set fallback.mode = \"auto\" (and fallback.field) to poll instead, or use a replica set"),
                    ));
                }
                let (db, coll) = poll_target(&why)?;
                poll::run(shared, &db, &coll, &mut feed, saved, &why, &mut stop).await
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> anyhow::Result<MongoSourceConfig> {
        let text = format!("[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"mongodb://h\"\n{extra}");
        let cfg = crate::config::Config::parse(&text, &[], std::path::Path::new("."))?;
        match cfg.sources.into_iter().next() {
            Some(crate::config::SourceConfig::Mongo(m)) => Ok(m),
            _ => panic!("a mongo source"),
        }
    }

    #[test]
    fn every_option_reads_from_toml() {
        let cfg = parse(
            r#"collections = ["app.clients", "app.a.b"]
databases = ["billing"]
deployment = true
operations = ["insert", "update"]
pipeline = '[{"$match": {"fullDocument.connection": true, "wallTime": {"$gt": {"$date": 0}}}}]'
full_document = "updateLookup"
full_document_before_change = "whenAvailable"
on_history_lost = "start_from_now"
batch_size = 100
[source.checkpoint]
store = "mongo"
collection = "ops.ckpt"
[source.reconnect]
initial_ms = 50
max_ms = 5000
[source.fallback]
mode = "always"
field = "updatedAt"
interval_ms = 2000
"#,
        )
        .unwrap();
        assert_eq!(cfg.full_document, FullDocument::UpdateLookup);
        assert_eq!(cfg.full_document_before_change, BeforeChange::WhenAvailable);
        assert_eq!(cfg.on_history_lost, OnHistoryLost::StartFromNow);
        assert_eq!(cfg.checkpoint.store, StoreKind::Mongo);
        assert_eq!(cfg.fallback.mode, FallbackMode::Always);
        let stage = &cfg.pipeline.as_ref().unwrap().0[0];
        let gt = stage.get_document("$match").unwrap().get_document("wallTime").unwrap();
        assert!(matches!(gt.get("$gt"), Some(mongodb::bson::Bson::DateTime(_))), "extended JSON is read as BSON: {gt}");
        let targets = cfg.targets().unwrap();
        assert_eq!(
            targets,
            vec![
                Target::Deployment,
                Target::Database("billing".into()),
                Target::Collection { db: "app".into(), coll: "clients".into() },
                Target::Collection { db: "app".into(), coll: "a.b".into() },
            ]
        );
        assert_eq!(targets[0].key("m"), "m");
        assert_eq!(targets[3].key("m"), "m.app.a.b");
    }

    #[test]
    fn a_pipeline_may_be_a_toml_array_too() {
        let cfg = parse("collections = [\"a.b\"]\npipeline = [{ \"$match\" = { \"fullDocument.kind\" = \"x\" } }]\n").unwrap();
        assert_eq!(cfg.pipeline.unwrap().0, vec![mongodb::bson::doc! { "$match": { "fullDocument.kind": "x" } }]);
    }

    #[test]
    fn config_mistakes_are_named() {
        let err = |extra: &str| format!("{:#}", parse(extra).unwrap_err());
        assert!(err("collections = [\"clients\"]").contains("\"clients\" is not a namespace"));
        assert!(err("pipeline = '{\"$match\": {}}'").contains("must be a JSON array"));
        assert!(err("pipeline = '[{\"$match\": {}'").contains("not valid JSON"));
        assert!(err("pipeline = '[{\"$match\": {}, \"$project\": {}}]'").contains("stage 0 must be a document with one stage name"));
        assert!(err("full_document = \"update_lookup\"").contains("unknown variant"));
        assert!(err("on_history_lost = \"retry\"").contains("unknown variant"));
        assert!(err("[source.fallback]\nmode = \"sometimes\"").contains("unknown variant"));
        assert!(err("colections = [\"a.b\"]").contains("unknown field `colections`"));
        // Found when the config is read (exit 2), not when the source starts.
        let none = err("");
        assert!(none.contains("source[0]") && none.contains("nothing to watch"), "{none}");
        let twice = err("collections = [\"a.b\", \"a.b\"]");
        assert!(twice.contains("a.b is listed twice"), "{twice}");
        let bad_port = check_uri("mongodb://u:secret@h:notaport").unwrap_err().to_string();
        assert!(bad_port.contains("not a MongoDB connection string") && !bad_port.contains("secret"), "{bad_port}");
    }

    #[test]
    fn the_operation_filter_comes_first_and_keeps_invalidate() {
        let cfg = parse("collections = [\"a.b\"]\noperations = [\"insert\"]\npipeline = '[{\"$match\": {\"x\": 1}}]'").unwrap();
        assert_eq!(
            cfg.stages(),
            vec![
                mongodb::bson::doc! { "$match": { "operationType": { "$in": ["insert", "invalidate"] } } },
                mongodb::bson::doc! { "$match": { "x": 1 } },
            ]
        );
        assert!(parse("collections = [\"a.b\"]").unwrap().stages().is_empty());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("mongodb://u:secret@h:1/db"), "mongodb://u:***@h:1/db");
        assert_eq!(redact("mongodb://h:1/db"), "mongodb://h:1/db");
    }
}
