//! What each wasmtime `Store` carries for one plugin instance, and the memory
//! budget it enforces: the plugin's name, what its memories and tables hold, its
//! log budget, and what the guest said last at error level. Used by the engine's
//! host functions and by `plugin`, so neither of those depends on the other for it.

use super::inspect::TABLE_ELEMENT_BYTES;
use super::lograte::LogBudget;
use std::sync::Arc;
use wasmtime::ResourceLimiter;

/// Longest log line a plugin may write through the `oplet.log` import.
pub(crate) const LOG_LINE_MAX: usize = 16 * 1024;

/// Data each store carries: the plugin's name, its memory budget and what it
/// holds, its log budget, and what the guest said last at error level (a Rust
/// plugin's panic message).
pub struct StoreState {
    pub(crate) plugin: Arc<str>,
    pub(crate) last_error: Option<String>,
    pub(crate) log: Arc<LogBudget>,
    pub(super) memory_limit: usize,
    /// Bytes of linear memory (one memory: the loader refuses more).
    pub(super) memory_bytes: usize,
    /// Bytes of all tables, `TABLE_ELEMENT_BYTES` per element.
    pub(super) table_bytes: usize,
    pub(super) memory_refused: Option<(String, usize)>,
}

impl StoreState {
    fn refuse(&mut self, what: String, wanted: usize) -> wasmtime::Result<bool> {
        let limit = self.memory_limit;
        self.memory_refused = Some((what, wanted));
        Err(wasmtime::Error::msg(format!("memory budget of {limit} bytes exceeded (wanted {wanted})")))
    }
}

/// One budget per instance: every memory and table growth (the initial sizes at
/// instantiation too) is checked against the sum of both.
impl ResourceLimiter for StoreState {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = desired.saturating_add(self.table_bytes);
        if total > self.memory_limit {
            return self.refuse(format!("its linear memory from {current} to {desired} bytes"), total);
        }
        self.memory_bytes = desired;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let added = desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES as usize);
        let total = self.memory_bytes.saturating_add(self.table_bytes).saturating_add(added);
        if total > self.memory_limit {
            return self.refuse(format!("a table from {current} to {desired} elements"), total);
        }
        self.table_bytes += added;
        Ok(true)
    }

    fn memories(&self) -> usize {
        1
    }
}

