//! Redis executor: cache deletes, pipelined (many events per round trip).
//! STUB — owned by the issue-4 work: replace the body, keep the public API.

use crate::checkpoint::Ticket;
use crate::deadletter::DeadLetters;
use oplet_sdk::Event;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://127.0.0.1:6379/0`
    pub url: String,
}

pub struct RedisHandle {}

impl RedisHandle {
    /// Starts the executor (connects lazily, retries with backoff).
    pub fn start(_cfg: &RedisConfig, _dead: Arc<DeadLetters>) -> anyhow::Result<RedisHandle> {
        anyhow::bail!("the Redis executor is not built yet")
    }

    /// Queues a delete of `keys` (already capability-checked); blocks while the
    /// executor is behind. The ticket is dropped once the keys are deleted.
    pub fn delete(&self, _plugin: &str, _event: &Arc<Event>, _keys: Vec<String>, _ticket: Ticket) {}

    /// Applies what is queued, then stops.
    pub async fn shutdown(&self) {}
}
