//! Socket.IO server: client events in, emits out.
//! STUB — owned by the issue-5 work: replace the body, keep the public API.

use crate::checkpoint::Ticket;
use oplet_sdk::{EmitTarget, Event, Value};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// Source name client events carry (default `socket`).
    #[serde(default = "default_name")]
    pub name: String,
    /// `127.0.0.1:3000`
    pub listen: String,
}

fn default_name() -> String {
    "socket".into()
}

/// The running server: a source of client events and the executor of emits.
pub struct SocketServer {}

impl SocketServer {
    /// Binds and serves. Client events go to `ctx.tx` with tickets from `ctx.tracker`.
    pub async fn start(_cfg: &SocketConfig, _ctx: super::SourceContext) -> anyhow::Result<Arc<SocketServer>> {
        anyhow::bail!("the Socket.IO server is not built yet")
    }

    /// Sends `event` to a client (its room) or a room; already capability-checked.
    /// The ticket is dropped once the emit is handed to the socket (or held /
    /// dropped per the offline policy).
    pub fn emit(&self, _plugin: &str, _cause: &Arc<Event>, _to: EmitTarget, _event: String, _payload: Value, _ticket: Ticket) {}

    pub async fn shutdown(&self) {}
}
