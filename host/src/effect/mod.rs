//! Effects: capability checks, then hand-off to the executor registered for the
//! effect's capability kind.
//!
//! Plugin workers call `Effects::submit` with what a plugin returned for one event.
//! Each effect is checked against the plugin's effective capabilities (its
//! manifest's request intersected with the host's grants); a refused effect is
//! logged and dead-lettered, never applied. Accepted effects go to the `Executor`
//! registered for `Effect::capability()` (the SDK's one table), with a clone of
//! the event's ticket, so the checkpoint waits until they are durably applied.
//! A new effect kind is an SDK variant with its capability, a `check` arm, an
//! `Executor` and one `register` line in `host.rs`.

pub mod audit;
pub mod batch;
pub mod postgres;
pub mod redis;
pub mod secrets;
pub mod tls;

use crate::checkpoint::Ticket;
use crate::deadletter::DeadLetters;
use crate::manifest::Capabilities;
use crate::envelope::Event;
use oplet_sdk::CapabilityKind;
use oplet_sdk::{Effect, LogLevel};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why an effect was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("capability refused: {0}")]
    NotGranted(String),
    #[error("no executor: {0}")]
    NoExecutor(String),
}

/// Applies the effects of one capability kind. `apply` is called from plugin
/// worker threads and may block while the executor is behind (backpressure);
/// the ticket clone it is given is released once the effect is durable.
pub trait Executor: Send + Sync {
    /// Applies (or queues) `effect`, already capability-checked; `index` is its
    /// place among the effects the plugin returned for `event`.
    fn apply(&self, plugin: &str, event: &Arc<Event>, index: usize, effect: Effect, ticket: &Ticket);

    /// Applies what is queued, then stops.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The executors of this host, by the capability kind they serve. `log` is
/// always there; the others only when their config section is.
pub struct Executors {
    by_kind: HashMap<CapabilityKind, Arc<dyn Executor>>,
}

impl Default for Executors {
    fn default() -> Executors {
        let mut ex = Executors { by_kind: HashMap::new() };
        ex.register(CapabilityKind::Log, Arc::new(LogExecutor));
        ex
    }
}

impl Executors {
    /// The host's executors: the audit file (and table), and each configured
    /// sink; `emit` only where a Socket.IO server runs.
    pub fn with_sinks(
        audit: audit::AuditHandle,
        cache: Option<redis::RedisHandle>,
        rows: Option<postgres::PostgresHandle>,
        emit: Option<Arc<crate::source::socket::SocketServer>>,
    ) -> Executors {
        let rows = rows.map(Arc::new);
        let mut executors = Executors::default();
        executors.register(CapabilityKind::Audit, Arc::new(AuditExecutor { file: audit, rows: rows.clone() }));
        if let Some(cache) = cache {
            executors.register(CapabilityKind::Cache, Arc::new(cache));
        }
        if let Some(rows) = rows {
            executors.register(CapabilityKind::Tables, rows);
        }
        if let Some(socket) = emit {
            executors.register(CapabilityKind::Emit, socket);
        }
        executors
    }

    /// Registers `executor` for effects needing `kind` (replacing any before).
    pub fn register(&mut self, kind: CapabilityKind, executor: Arc<dyn Executor>) -> &mut Executors {
        self.by_kind.insert(kind, executor);
        self
    }

    fn get(&self, effect: &Effect) -> Result<&Arc<dyn Executor>, Refusal> {
        let kind = effect.capability();
        self.by_kind.get(&kind).ok_or_else(|| {
            Refusal::NoExecutor(format!("{} needs {} in the host config", self::kind(effect), config_section(kind)))
        })
    }
}

/// The host config section that starts the executor of `kind`.
fn config_section(kind: CapabilityKind) -> &'static str {
    match kind {
        CapabilityKind::Audit => "[audit]",
        CapabilityKind::Cache => "a [redis] section",
        CapabilityKind::Tables => "a [postgres] section",
        CapabilityKind::Emit => "a [socket] section",
        CapabilityKind::Log => "nothing",
    }
}

pub struct Effects {
    ex: Executors,
    dead: Arc<DeadLetters>,
    refused: AtomicU64,
}

impl Effects {
    pub fn new(ex: Executors, dead: Arc<DeadLetters>) -> Effects {
        Effects { ex, dead, refused: AtomicU64::new(0) }
    }

    /// Checks and dispatches the effects `plugin` returned for `event`. Blocks when
    /// an executor's queue is full (backpressure). Call from a worker thread.
    pub fn submit(&self, plugin: &str, caps: &Capabilities, event: &Arc<Event>, effects: Vec<Effect>, ticket: &Ticket) {
        for (index, effect) in effects.into_iter().enumerate() {
            match check(&effect, caps).and_then(|_| self.ex.get(&effect)) {
                Ok(executor) => executor.apply(plugin, event, index, effect, ticket),
                Err(refusal) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::effects(kind(&effect), "refused", 1);
                    tracing::warn!(plugin, source = %event.source, seq = event.seq, event_id = %event.id, "effect {} refused: {refusal}", kind(&effect));
                    self.dead.record_held(plugin, event, &format!("effect {} refused: {refusal}", kind(&effect)), ticket);
                }
            }
        }
    }

    /// Effects refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Flushes and stops the executors; returns when everything accepted is
    /// applied. Emits go last, as their clients see the end of the host.
    pub async fn shutdown(&self) {
        use CapabilityKind::*;
        for kind in [Audit, Cache, Tables, Emit, Log] {
            if let Some(executor) = self.ex.by_kind.get(&kind) {
                executor.shutdown().await;
            }
        }
    }
}

/// `log` effects: lines in the host's log, tagged with the plugin and event.
struct LogExecutor;

impl Executor for LogExecutor {
    fn apply(&self, plugin: &str, event: &Arc<Event>, _index: usize, effect: Effect, _ticket: &Ticket) {
        if let Effect::Log { level, message } = effect {
            log(plugin, event, level, &message);
        }
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// `audit` effects: the audit file, and the PostgreSQL audit table when
/// `[postgres] audit_table` is set.
pub struct AuditExecutor {
    pub file: audit::AuditHandle,
    pub rows: Option<Arc<postgres::PostgresHandle>>,
}

impl Executor for AuditExecutor {
    fn apply(&self, plugin: &str, event: &Arc<Event>, index: usize, effect: Effect, ticket: &Ticket) {
        let Effect::Audit { record } = effect else { return wrong(plugin, &effect, "audit", ticket) };
        if let Some(rows) = self.rows.as_ref().filter(|r| r.keeps_audit()) {
            rows.audit(plugin, event, audit::record_key(plugin, event, index), record.clone(), ticket.clone());
        }
        self.file.append(plugin, event, index, record, ticket.clone());
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.file.shutdown())
    }
}

impl Executor for redis::RedisHandle {
    fn apply(&self, plugin: &str, event: &Arc<Event>, _index: usize, effect: Effect, ticket: &Ticket) {
        let Effect::CacheDelete { keys } = effect else { return wrong(plugin, &effect, "cache", ticket) };
        self.delete(plugin, event, keys, ticket.clone());
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(redis::RedisHandle::shutdown(self))
    }
}

impl Executor for postgres::PostgresHandle {
    fn apply(&self, plugin: &str, event: &Arc<Event>, _index: usize, effect: Effect, ticket: &Ticket) {
        let op = match effect {
            Effect::RowUpsert { table, key, values } => postgres::RowOp::Upsert { table, key, values },
            Effect::RowDelete { table, key } => postgres::RowOp::Delete { table, key },
            other => return wrong(plugin, &other, "tables", ticket),
        };
        postgres::PostgresHandle::apply(self, plugin, event, op, ticket.clone());
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(postgres::PostgresHandle::shutdown(self))
    }
}

impl Executor for crate::source::socket::SocketServer {
    fn apply(&self, plugin: &str, event: &Arc<Event>, _index: usize, effect: Effect, ticket: &Ticket) {
        let Effect::Emit { to, event: name, payload } = effect else { return wrong(plugin, &effect, "emit", ticket) };
        self.emit(plugin, event, to, name, payload, ticket.clone());
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(crate::source::socket::SocketServer::shutdown(self))
    }
}

/// An executor registered for the wrong kind: a wiring bug, not input. Logged
/// loudly, and the event is held (never checkpointed) rather than lost.
fn wrong(plugin: &str, effect: &Effect, executor: &str, ticket: &Ticket) {
    tracing::error!(plugin, "effect {} reached the {executor} executor: a registration bug; not applied, the event is held", kind(effect));
    ticket.clone().hold();
}

/// The effect kind as it appears on the wire (`cache_delete`, `row_upsert`...).
pub fn kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::CacheDelete { .. } => "cache_delete",
        Effect::RowUpsert { .. } => "row_upsert",
        Effect::RowDelete { .. } => "row_delete",
        Effect::Audit { .. } => "audit",
        Effect::Emit { .. } => "emit",
        Effect::Log { .. } => "log",
        _ => "unknown",
    }
}

/// Whether `caps` cover `effect`. The error says what was asked and what to grant.
pub fn check(effect: &Effect, caps: &Capabilities) -> Result<(), Refusal> {
    match effect {
        Effect::Log { .. } => Ok(()),
        Effect::Audit { .. } if caps.audit => Ok(()),
        Effect::Audit { .. } => Err(Refusal::NotGranted("audit is not granted (capabilities.audit = true, and a grant)".into())),
        Effect::CacheDelete { keys } => {
            match keys.iter().find(|k| !caps.cache_prefixes.iter().any(|p| k.starts_with(p.as_str()))) {
                None => Ok(()),
                Some(k) => Err(Refusal::NotGranted(format!(
                    "cache key {k:?} is outside the granted prefixes {:?}",
                    caps.cache_prefixes
                ))),
            }
        }
        Effect::RowUpsert { table, .. } | Effect::RowDelete { table, .. } => {
            if caps.tables.iter().any(|t| t == table) {
                Ok(())
            } else {
                Err(Refusal::NotGranted(format!("table {table:?} is not among the granted tables {:?}", caps.tables)))
            }
        }
        Effect::Emit { event, .. } => {
            if caps.emit.iter().any(|e| e == event) {
                Ok(())
            } else {
                Err(Refusal::NotGranted(format!("emitting {event:?} is not granted (granted: {:?})", caps.emit)))
            }
        }
        _ => Err(Refusal::NotGranted(format!("{} is not known to this host", kind(effect)))),
    }
}

fn log(plugin: &str, event: &Event, level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!(plugin, seq = event.seq, "{message}"),
        LogLevel::Warn => tracing::warn!(plugin, seq = event.seq, "{message}"),
        LogLevel::Info => tracing::info!(plugin, seq = event.seq, "{message}"),
        LogLevel::Debug => tracing::debug!(plugin, seq = event.seq, "{message}"),
        LogLevel::Trace => tracing::trace!(plugin, seq = event.seq, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_must_start_with_a_granted_prefix() {
        let caps = Capabilities { cache_prefixes: vec!["user:".into()], ..Default::default() };
        assert!(check(&Effect::cache_delete(["user:1"]), &caps).is_ok());
        let err = check(&Effect::cache_delete(["user:1", "secret:1"]), &caps).unwrap_err();
        assert!(err.to_string().contains("\"secret:1\""), "{err}");
    }

    #[test]
    fn tables_and_emits_must_be_granted_by_name() {
        let caps = Capabilities { tables: vec!["users".into()], emit: vec!["start_client".into()], ..Default::default() };
        let upsert = |t: &str| Effect::RowUpsert { table: t.into(), key: vec![], values: Default::default() };
        assert!(check(&upsert("users"), &caps).is_ok());
        assert!(check(&upsert("users; drop table x"), &caps).is_err());
        assert!(check(&Effect::emit_to_client("c", "start_client", Default::default()), &caps).is_ok());
        assert!(check(&Effect::emit_to_client("c", "other", Default::default()), &caps).is_err());
    }
}
