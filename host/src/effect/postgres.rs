//! PostgreSQL executor: row upserts and deletes in batched transactions.
//! STUB — owned by the issue-4 work: replace the body, keep the public API.

use crate::checkpoint::Ticket;
use crate::deadletter::DeadLetters;
use oplet_sdk::{Event, Map};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `host=127.0.0.1 port=5432 user=postgres dbname=app` or a `postgres://` URL.
    pub url: String,
}

/// A row effect, already capability-checked.
#[derive(Debug, Clone)]
pub enum RowOp {
    Upsert { table: String, key: Vec<String>, values: Map },
    Delete { table: String, key: Map },
}

pub struct PostgresHandle {}

impl PostgresHandle {
    pub fn start(_cfg: &PostgresConfig, _dead: Arc<DeadLetters>) -> anyhow::Result<PostgresHandle> {
        anyhow::bail!("the PostgreSQL executor is not built yet")
    }

    /// Queues one row operation; blocks while the executor is behind. The ticket
    /// is dropped once the batch holding it is committed.
    pub fn apply(&self, _plugin: &str, _event: &Arc<Event>, _op: RowOp, _ticket: Ticket) {}

    pub async fn shutdown(&self) {}
}
