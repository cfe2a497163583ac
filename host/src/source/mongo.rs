//! MongoDB change-stream source.
//! STUB — owned by the issue-3 work: replace the body, keep the public API.

use super::SourceContext;
use crate::checkpoint::CheckpointStore;
use crate::deadletter::DeadLetters;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    pub name: String,
    pub uri: String,
}

/// Everything the Mongo source needs from the host. It makes its own trackers
/// (one per change stream) with `store` and `checkpoint_interval`.
pub struct MongoContext {
    pub base: SourceContext,
    pub store: CheckpointStore,
    pub checkpoint_interval: Duration,
    pub dead: Arc<DeadLetters>,
    /// Pass to `checkpoint::run_saver` for each tracker; turns true at the very end.
    pub saver_stop: tokio::sync::watch::Receiver<bool>,
    /// Push each saver task here; the host awaits them after the final flush.
    pub savers: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

pub async fn run(_cfg: MongoSourceConfig, _ctx: MongoContext) -> anyhow::Result<()> {
    anyhow::bail!("the MongoDB source is not built yet")
}
