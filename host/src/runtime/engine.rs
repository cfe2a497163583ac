//! The process-wide wasmtime `Engine`, its `Linker`, and the epoch ticker.
//!
//! Time budgets use epoch interruption: a background thread bumps the engine's
//! epoch every `TICK`, and each call sets its deadline in ticks. This costs far less
//! per call than fuel metering and stops any loop, even one without calls. The
//! ticker only runs while guest code may be running: it parks after `IDLE_TICKS`
//! ticks without a call and the next call wakes it, so an idle host does not wake
//! every tick, and a busy one pays one wake-up per tick, not per event.

use super::cache::ModuleCache;
use super::plugin::{StoreState, LOG_LINE_MAX};
use oplet_sdk::LogLevel;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;
use wasmtime::{Caller, Config, Engine, Linker, Module, OptLevel};

/// The epoch period: time budgets are enforced to within about one tick.
pub(crate) const TICK: Duration = Duration::from_millis(5);
/// Ticks without a call after which the ticker parks.
const IDLE_TICKS: u32 = 20;

pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    pub(crate) clock: Arc<Clock>,
    cache: Option<ModuleCache>,
}

/// The epoch ticker's state, shared with every call into guest code.
pub(crate) struct Clock {
    /// Calls into guest code running now.
    running: AtomicUsize,
    /// Calls started so far: the ticker sees activity between two ticks by it.
    started: AtomicU64,
    parked: AtomicBool,
    stop: AtomicBool,
    ticker: std::sync::OnceLock<Thread>,
}

impl Clock {
    /// Marks guest code as running until the guard drops (nesting is fine); wakes
    /// the ticker if it parked.
    pub(crate) fn enter(&self) -> ClockGuard<'_> {
        self.started.fetch_add(1, Ordering::Relaxed);
        // SeqCst pairs with the ticker's `parked` store then `running` load: either
        // it sees this call and stays up, or this sees it parked and wakes it.
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            if let Some(t) = self.ticker.get() {
                t.unpark();
            }
        }
        ClockGuard(self)
    }

    fn tick_loop(&self, engine: &Engine) {
        let mut idle = 0;
        let mut seen = self.started.load(Ordering::Relaxed);
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.started.load(Ordering::Relaxed);
            if now == seen && self.running.load(Ordering::SeqCst) == 0 {
                idle += 1;
            } else {
                idle = 0;
                seen = now;
            }
            if idle >= IDLE_TICKS {
                self.parked.store(true, Ordering::SeqCst);
                if self.running.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::Relaxed) {
                    std::thread::park();
                }
                self.parked.store(false, Ordering::SeqCst);
                idle = 0;
                seen = self.started.load(Ordering::Relaxed);
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    }
}

pub(crate) struct ClockGuard<'a>(&'a Clock);

impl Drop for ClockGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
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
        let clock = Arc::new(Clock {
            running: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticker: std::sync::OnceLock::new(),
        });
        let (e, c) = (engine.clone(), clock.clone());
        let ticker = std::thread::Builder::new().name("oplet-epoch".into()).spawn(move || c.tick_loop(&e))?;
        let _ = clock.ticker.set(ticker.thread().clone());
        Ok(Runtime { engine, linker, clock, cache })
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
        self.clock.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.clock.ticker.get() {
            t.unpark();
        }
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
