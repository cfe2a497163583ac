//! The process-wide wasmtime `Engine`, its `Linker`, and the epoch ticker.
//!
//! Time budgets use epoch interruption: a background thread bumps the engine's
//! epoch every `TICK`, and each call sets its deadline in ticks. This costs far less
//! per call than fuel metering and stops any loop, even one without calls. The
//! ticker only runs while guest code may be running: it parks after `IDLE_TICKS`
//! ticks without a call and the next call wakes it, so an idle host does not wake
//! every tick, and a busy one pays one wake-up per tick, not per event. The ticker
//! lives as long as any compiled plugin holds the clock, not just the `Runtime`.

use super::cache::{Lease, ModuleCache};
use super::compile::CompilePool;
use super::store::{StoreState, LOG_LINE_MAX};
use oplet_sdk::LogLevel;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
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
    cache: Option<Arc<ModuleCache>>,
    pub(crate) pool: Arc<CompilePool>,
}

/// What a compile thread needs: owned, so a compile past its budget can be left
/// to finish on its own thread.
#[derive(Clone)]
pub(crate) struct Compiler {
    engine: Engine,
    cache: Option<Arc<ModuleCache>>,
}

impl Compiler {
    /// Compiles (or loads from the cache) a module. Returns whether it was cached,
    /// and the cache lease that keeps its entry from being pruned while loaded.
    pub(crate) fn compile(&self, wasm: &[u8]) -> wasmtime::Result<(Module, bool, Option<Arc<Lease>>)> {
        match &self.cache {
            Some(c) => c.get_or_compile(&self.engine, wasm).map(|(m, cached, l)| (m, cached, Some(l))),
            None => Ok((Module::new(&self.engine, wasm)?, false, None)),
        }
    }
}

/// The epoch ticker's state, shared with every call into guest code. The ticker
/// thread runs as long as anything holds the clock (the `Runtime`, and every
/// `PluginCode` and `Instance`, so time limits hold even after the `Runtime` value
/// is gone), and exits when the last holder drops it.
pub(crate) struct Clock {
    /// Calls into guest code running now.
    running: AtomicUsize,
    /// Calls started so far: the ticker sees activity between two ticks by it.
    started: AtomicU64,
    parked: AtomicBool,
    ticker: std::sync::OnceLock<Thread>,
}

impl Clock {
    /// A clock whose ticker thread bumps `engine`'s epoch every `TICK`.
    fn start(engine: &Engine) -> std::io::Result<Arc<Clock>> {
        let clock = Arc::new(Clock {
            running: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            ticker: std::sync::OnceLock::new(),
        });
        let (e, weak) = (engine.clone(), Arc::downgrade(&clock));
        let ticker = std::thread::Builder::new().name("oplet-epoch".into()).spawn(move || tick_loop(weak, e))?;
        let _ = clock.ticker.set(ticker.thread().clone());
        Ok(clock)
    }

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
}

/// The ticker holds the clock only weakly, and never across a sleep or a park, so
/// the last holder's drop ends it.
fn tick_loop(clock: Weak<Clock>, engine: Engine) {
    let mut idle = 0;
    let mut seen = match clock.upgrade() {
        Some(c) => c.started.load(Ordering::Relaxed),
        None => return,
    };
    loop {
        let Some(c) = clock.upgrade() else { return };
        let now = c.started.load(Ordering::Relaxed);
        if now == seen && c.running.load(Ordering::SeqCst) == 0 {
            idle += 1;
        } else {
            idle = 0;
            seen = now;
        }
        if idle >= IDLE_TICKS {
            c.parked.store(true, Ordering::SeqCst);
            let running = c.running.load(Ordering::SeqCst);
            drop(c);
            if running == 0 {
                // Woken by a call, or by the clock's drop (then `upgrade` fails).
                std::thread::park();
            }
            let Some(c) = clock.upgrade() else { return };
            c.parked.store(false, Ordering::SeqCst);
            idle = 0;
            seen = c.started.load(Ordering::Relaxed);
        } else {
            drop(c);
        }
        std::thread::sleep(TICK);
        engine.increment_epoch();
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.get() {
            t.unpark();
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
        // One memory per plugin, 32-bit, so that one budget covers it (the loader
        // refuses such modules first, with the reason; this is the second line).
        config.wasm_multi_memory(false);
        config.wasm_memory64(false);
        // For profiling only: `OPLET_WASM_PROFILER=perfmap` writes /tmp/perf-PID.map
        // so `perf report` names the guest's compiled functions. Off by default.
        if std::env::var("OPLET_WASM_PROFILER").is_ok_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        linker.func_wrap("oplet", "log", host_log)?;
        let cache = match cache_dir {
            Some(dir) => Some(Arc::new(ModuleCache::new(dir, &engine).map_err(|e| anyhow::anyhow!(e))?)),
            None => None,
        };
        let clock = Clock::start(&engine)?;
        Ok(Runtime { engine, linker, clock, cache, pool: Arc::new(CompilePool::default()) })
    }

    pub(crate) fn compiler(&self) -> Compiler {
        Compiler { engine: self.engine.clone(), cache: self.cache.clone() }
    }
}

/// The `oplet.log(level, ptr, len)` import. Lines past the plugin's log rate
/// are dropped and counted (reported at the end of the call).
fn host_log(mut caller: Caller<'_, StoreState>, level: u32, ptr: u32, len: u32) {
    let len = (len as usize).min(LOG_LINE_MAX);
    let admitted = caller.data().log.admit(len);
    let is_error = LogLevel::from_u32(level) == LogLevel::Error;
    if !admitted && !is_error {
        return;
    }
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
            // Kept even when the line is dropped: it explains a trap that follows.
            if admitted {
                tracing::error!(plugin = %plugin, "{text}");
            }
            state.last_error = Some(text);
        }
        LogLevel::Warn => tracing::warn!(plugin = %plugin, "{text}"),
        LogLevel::Info => tracing::info!(plugin = %plugin, "{text}"),
        LogLevel::Debug => tracing::debug!(plugin = %plugin, "{text}"),
        LogLevel::Trace => tracing::trace!(plugin = %plugin, "{text}"),
    }
}
