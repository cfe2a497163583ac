//! Sources turn the outside world into numbered `Event`s with tickets.
//!
//! Each `[[source]]` config builds a `Source` (the component owns its config);
//! the host starts it with a `SourceContext` that hands out what every source
//! needs — trackers whose positions are saved to the checkpoint store, the
//! position saved at the last checkpoint, the dead letters, the bounded queue to
//! the router and the shutdown signal — and learns from `Ended` how it stopped,
//! which decides the host's exit code (`exit.rs`).

pub mod jsonl;
pub mod mongo;
pub mod socket;

use crate::checkpoint::{run_saver, CheckpointStore, Position, PositionStore, Tracker};
use crate::deadletter::DeadLetters;
use crate::envelope::Envelope;
use crate::exit::Cause;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A configured source, ready to run.
pub trait Source: Send + 'static {
    /// Its `name` in the config: the key of its checkpoint and the `source` of its events.
    fn name(&self) -> &str;

    /// Reads until the end of its input, a shutdown (`ctx.shutdown`), or a fatal
    /// error, and says which.
    fn run(self: Box<Self>, ctx: SourceContext) -> Pin<Box<dyn Future<Output = Ended> + Send>>;
}

/// How a source stopped.
#[derive(Debug)]
pub enum Ended {
    /// Its input ended (a JSON-lines file without `follow`), or the host asked it to stop.
    Finished,
    /// It stopped on an error: the host stops too, with `cause`'s exit code.
    Failed { cause: Cause, error: String },
}

impl From<anyhow::Result<()>> for Ended {
    /// A source's own result: an error's `exit::fatal` cause, if it was given
    /// one, decides the exit code; any other error is internal.
    fn from(result: anyhow::Result<()>) -> Ended {
        match result {
            Ok(()) => Ended::Finished,
            Err(e) => Ended::Failed { cause: crate::exit::cause_of(&e).unwrap_or(Cause::Internal), error: format!("{e:#}") },
        }
    }
}

/// What every source is started with.
pub struct SourceContext {
    /// The bounded queue to this source's dispatcher: a full one slows the source.
    pub tx: mpsc::Sender<Envelope>,
    /// Becomes `true` when the host is shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// `[cluster] mode = "leases"`: run only the targets whose lease this host holds.
    pub cluster: Option<Arc<crate::cluster::Membership>>,
    checkpoints: CheckpointSaving,
    dead: Arc<DeadLetters>,
}

impl SourceContext {
    /// The position saved under `key` at the last checkpoint, if any.
    /// An unreadable one is a startup error (exit code 2), as it was before the
    /// source started.
    pub fn resume(&self, key: &str) -> anyhow::Result<Option<Position>> {
        self.checkpoints.store.load(key).map_err(|e| crate::exit::fatal(Cause::Config, format!("{e:#}")))
    }

    /// A tracker for the events of `key` (`first_seq` the first ticket's
    /// number), resuming after `position`; its position is saved to the host's
    /// checkpoint store every `checkpoint_interval_ms`, the last time after the
    /// final flush at shutdown.
    pub fn tracker(&self, key: &str, first_seq: u64, position: Option<Position>) -> Arc<Tracker> {
        let tracker = Tracker::new(key, first_seq, position);
        crate::metrics::watch_tracker(&tracker);
        self.save(tracker.clone(), self.checkpoints.store.clone());
        tracker
    }

    /// A tracker for events that cannot be replayed (Socket.IO client events):
    /// it counts what is done; nothing is saved.
    pub fn unreplayable(&self, key: &str) -> Arc<Tracker> {
        Tracker::unreplayable(key)
    }

    /// Saves `tracker`'s position to `store` (a source's own checkpoint store,
    /// such as a MongoDB collection) on the host's schedule, the last time after
    /// the final flush.
    pub fn save<S: PositionStore>(&self, tracker: Arc<Tracker>, store: S) {
        self.checkpoints.save(tracker, store);
    }

    /// What `save` uses, for tasks of the source that outlive a borrow of the context.
    pub fn saver(&self) -> CheckpointSaving {
        self.checkpoints.clone()
    }

    /// The host's local checkpoint store.
    pub fn store(&self) -> &CheckpointStore {
        &self.checkpoints.store
    }

    /// Where events the source cannot handle go, with the cause.
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead
    }
}

/// What the host shares with every source's context: the store, the saving
/// schedule, and the saver tasks it awaits at the very end.
#[derive(Clone)]
pub struct CheckpointSaving {
    store: CheckpointStore,
    pub(crate) interval: Duration,
    /// Turns true after the final flush: each saver writes once more and ends.
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) savers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl CheckpointSaving {
    pub fn new(store: CheckpointStore, interval: Duration, stop: watch::Receiver<bool>) -> CheckpointSaving {
        CheckpointSaving { store, interval, stop, savers: Arc::default() }
    }

    /// The context of one source.
    pub fn context(&self, tx: mpsc::Sender<Envelope>, shutdown: watch::Receiver<bool>, dead: Arc<DeadLetters>) -> SourceContext {
        SourceContext { tx, shutdown, cluster: None, checkpoints: self.clone(), dead }
    }

    /// Saves `tracker`'s position to `store` every interval until the stop.
    pub fn save<S: PositionStore>(&self, tracker: Arc<Tracker>, store: S) {
        let saver = tokio::spawn(run_saver(tracker, store, self.interval, self.stop.clone()));
        self.savers.lock().expect("savers lock").push(saver);
    }

    /// The saver tasks started so far (call once the savers were told to stop).
    pub fn take_savers(&self) -> Vec<JoinHandle<()>> {
        self.savers.lock().expect("savers lock").drain(..).collect()
    }
}

/// `[[source]] type = "jsonl"`.
impl Source for jsonl::JsonlSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Pin<Box<dyn Future<Output = Ended> + Send>> {
        Box::pin(async move { jsonl::run(*self, ctx).await.into() })
    }
}

/// `[[source]] type = "mongo"`.
impl Source for mongo::MongoSourceConfig {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, ctx: SourceContext) -> Pin<Box<dyn Future<Output = Ended> + Send>> {
        Box::pin(async move { mongo::run(*self, ctx).await.into() })
    }
}
