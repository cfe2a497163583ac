//! The process-wide wasmtime `Engine`, its `Linker`, and the epoch ticker.
//!
//! Time budgets use epoch interruption: a background thread bumps the engine's
//! epoch every millisecond, and each call sets its deadline in ticks. This costs
//! far less per call than fuel metering and stops any loop, even one without calls.

use super::cache::ModuleCache;
use super::plugin::{StoreState, LOG_LINE_MAX};
use oplet_sdk::LogLevel;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Caller, Config, Engine, Linker, Module, OptLevel};

pub(crate) const TICK: Duration = Duration::from_millis(1);

pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    cache: Option<ModuleCache>,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    /// One per process. `cache_dir`: where compiled modules are kept, if anywhere.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.max_wasm_stack(1 << 20);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        linker.func_wrap("oplet", "log", host_log)?;
        let cache = match cache_dir {
            Some(dir) => Some(ModuleCache::new(dir.clone(), &engine).map_err(|e| {
                anyhow::anyhow!("cannot create module cache folder {}: {e}", dir.display())
            })?),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new().name("oplet-epoch".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                e.increment_epoch();
            }
        })?;
        Ok(Runtime { engine, linker, cache, stop })
    }

    /// Compiles (or loads from the cache) a module. Returns whether it was cached.
    pub(crate) fn compile(&self, wasm: &[u8]) -> wasmtime::Result<(Module, bool)> {
        match &self.cache {
            Some(c) => c.get_or_compile(&self.engine, wasm),
            None => Ok((Module::new(&self.engine, wasm)?, false)),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `oplet.log(level, ptr, len)` import.
fn host_log(mut caller: Caller<'_, StoreState>, level: u32, ptr: u32, len: u32) {
    let len = (len as usize).min(LOG_LINE_MAX);
    let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return;
    };
    let data = mem.data(&caller);
    let text = match data.get(ptr as usize..(ptr as usize).saturating_add(len)) {
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        None => "<log message out of bounds>".to_string(),
    };
    let state = caller.data_mut();
    let plugin = state.plugin.clone();
    match LogLevel::from_u32(level) {
        LogLevel::Error => {
            tracing::error!(plugin = %plugin, "{text}");
            state.last_error = Some(text);
        }
        LogLevel::Warn => tracing::warn!(plugin = %plugin, "{text}"),
        LogLevel::Info => tracing::info!(plugin = %plugin, "{text}"),
        LogLevel::Debug => tracing::debug!(plugin = %plugin, "{text}"),
        LogLevel::Trace => tracing::trace!(plugin = %plugin, "{text}"),
    }
}
