//! Effects: capability checks, then hand-off to the executor that applies them.
//!
//! Plugin workers call `Effects::submit` with what a plugin returned for one event.
//! Each effect is checked against the plugin's effective capabilities (its
//! manifest's request intersected with the host's grants); a refused effect is
//! logged and dead-lettered, never applied. Accepted effects go to their executor
//! with a clone of the event's ticket, so the checkpoint waits until they are
//! durably applied.

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
use oplet_sdk::{Effect, LogLevel};
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

/// The executors this host has, each optional (configured or not).
#[derive(Default)]
pub struct Executors {
    pub audit: Option<audit::AuditHandle>,
    pub cache: Option<redis::RedisHandle>,
    pub rows: Option<postgres::PostgresHandle>,
    pub emit: Option<Arc<crate::source::socket::SocketServer>>,
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
            if let Err(refusal) = check(&effect, caps).and_then(|_| self.executor_for(&effect)) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                crate::metrics::effects(kind(&effect), "refused", 1);
                tracing::warn!(plugin, source = %event.source, seq = event.seq, event_id = %event.id, "effect {} refused: {refusal}", kind(&effect));
                self.dead.record_held(plugin, event, &format!("effect {} refused: {refusal}", kind(&effect)), ticket);
                continue;
            }
            match effect {
                Effect::Log { level, message } => log(plugin, event, level, &message),
                Effect::Audit { record } => {
                    if let Some(rows) = self.ex.rows.as_ref().filter(|r| r.keeps_audit()) {
                        let key = audit::record_key(plugin, event, index);
                        rows.audit(plugin, event, key, record.clone(), ticket.clone());
                    }
                    let audit = self.ex.audit.as_ref().expect("checked by executor_for");
                    audit.append(plugin, event, index, record, ticket.clone());
                }
                Effect::CacheDelete { keys } => {
                    let cache = self.ex.cache.as_ref().expect("checked by executor_for");
                    cache.delete(plugin, event, keys, ticket.clone());
                }
                Effect::RowUpsert { table, key, values } => {
                    let rows = self.ex.rows.as_ref().expect("checked by executor_for");
                    rows.apply(plugin, event, postgres::RowOp::Upsert { table, key, values }, ticket.clone());
                }
                Effect::RowDelete { table, key } => {
                    let rows = self.ex.rows.as_ref().expect("checked by executor_for");
                    rows.apply(plugin, event, postgres::RowOp::Delete { table, key }, ticket.clone());
                }
                Effect::Emit { to, event: name, payload } => {
                    let emit = self.ex.emit.as_ref().expect("checked by executor_for");
                    emit.emit(plugin, event, to, name, payload, ticket.clone());
                }
                other => unreachable!("executor_for refuses {}", kind(&other)),
            }
        }
    }

    fn executor_for(&self, effect: &Effect) -> Result<(), Refusal> {
        let missing = |what: &str| Err(Refusal::NoExecutor(format!("{} needs {what} in the host config", kind(effect))));
        match effect {
            Effect::Log { .. } => Ok(()),
            Effect::Audit { .. } if self.ex.audit.is_some() => Ok(()),
            Effect::Audit { .. } => missing("[audit]"),
            Effect::CacheDelete { .. } if self.ex.cache.is_some() => Ok(()),
            Effect::CacheDelete { .. } => missing("a [redis] section"),
            Effect::RowUpsert { .. } | Effect::RowDelete { .. } if self.ex.rows.is_some() => Ok(()),
            Effect::RowUpsert { .. } | Effect::RowDelete { .. } => missing("a [postgres] section"),
            Effect::Emit { .. } if self.ex.emit.is_some() => Ok(()),
            Effect::Emit { .. } => missing("a [socket] section"),
            _ => Err(Refusal::NoExecutor(format!("{} is not known to this host", kind(effect)))),
        }
    }

    /// Effects refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Flushes and stops the executors; returns when everything accepted is applied.
    pub async fn shutdown(&self) {
        if let Some(a) = &self.ex.audit {
            a.shutdown().await;
        }
        if let Some(c) = &self.ex.cache {
            c.shutdown().await;
        }
        if let Some(r) = &self.ex.rows {
            r.shutdown().await;
        }
        if let Some(e) = &self.ex.emit {
            e.shutdown().await;
        }
    }
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
