//! A loaded plugin: validated module code (`PluginCode`) and a live `Instance`.
//!
//! Loading checks everything that can be checked before an event arrives: the
//! exports and their signatures, the imports, the ABI version, and that `oplet_init`
//! accepts the manifest's config. A call that traps, runs out of time or memory,
//! or returns a bad reply gives a typed `CallError`; the caller then throws the
//! instance away (its state may be corrupt) and makes a fresh one.

use super::engine::{Clock, Runtime};
use super::limits::Limits;
use oplet_sdk::{codec, Effect, Event, Reply, Value, ABI_VERSION};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{
    ExternType, InstancePre, Memory, Module, ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

/// Longest log line a plugin may write through the `oplet.log` import.
pub(crate) const LOG_LINE_MAX: usize = 16 * 1024;

/// Why a module was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly module: {0}")]
    Compile(String),
    #[error("missing export `{0}`; a plugin must export memory, oplet_abi_version, oplet_alloc and oplet_handle (see docs/abi.md)")]
    MissingExport(&'static str),
    #[error("export `{name}` has the wrong type: expected {expected}, found {found}")]
    ExportType { name: &'static str, expected: &'static str, found: String },
    #[error("imports `{module}.{name}`, which the host does not provide (only `oplet.log` exists)")]
    ForbiddenImport { module: String, name: String },
    #[error("speaks plugin ABI version {found}, this host speaks version {expected}; rebuild it with a matching oplet-sdk")]
    AbiVersion { found: u32, expected: u32 },
    #[error("oplet_init failed: {0}")]
    Init(CallError),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

/// Why one call into a plugin failed. Every variant fails that event for that
/// plugin only.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("timeout: the call ran past its time budget of {budget_ms} ms")]
    Timeout { budget_ms: u64 },
    #[error("out of memory: the plugin tried to grow its linear memory to {wanted} bytes, past its limit of {limit} bytes")]
    OutOfMemory { wanted: usize, limit: usize },
    #[error("trap: {0}")]
    Trap(String),
    #[error("reply too large: {len} bytes, limit {limit} bytes")]
    ReplyTooLarge { len: usize, limit: usize },
    #[error("bad reply: {0}")]
    BadReply(String),
    #[error("plugin error: {0}")]
    Plugin(String),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

impl CallError {
    /// Whether the instance must be replaced (its memory may be inconsistent).
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, CallError::Plugin(_))
    }
}

/// Data each store carries: the plugin's name, its memory ceiling, and what the
/// guest said last at error level (a Rust plugin's panic message).
pub struct StoreState {
    pub(crate) plugin: Arc<str>,
    pub(crate) last_error: Option<String>,
    memory_limit: usize,
    memory_refused: Option<usize>,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_refused = Some(desired);
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes exceeded (wanted {desired})",
                self.memory_limit
            )));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A validated, compiled plugin module with its limits and init config.
pub struct PluginCode {
    name: Arc<str>,
    pre: InstancePre<StoreState>,
    limits: Limits,
    config: Vec<u8>,
    has_init: bool,
    clock: Arc<Clock>,
    /// Whether the compiled code came from the on-disk cache.
    pub cached: bool,
}

impl PluginCode {
    /// Compiles (or loads from cache) and validates `wasm`, then instantiates it
    /// once to check the ABI version and run `oplet_init` with `config`.
    pub fn load(runtime: &Runtime, name: &str, wasm: &[u8], limits: Limits, config: &Value) -> Result<PluginCode, LoadError> {
        let (module, cached) = runtime.compile(wasm).map_err(|e| LoadError::Compile(one_line(&format!("{e:#}"))))?;
        check_interface(&module)?;
        let pre = runtime
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let has_init = module.get_export("oplet_init").is_some();
        let config = codec::encode(config).map_err(|e| LoadError::Instantiate(format!("cannot encode config: {e}")))?;
        let code = PluginCode { name: name.into(), pre, limits, config, has_init, clock: runtime.clock.clone(), cached };
        // A probe instance proves the module instantiates, speaks our ABI and
        // accepts its config, before the module may replace a working version.
        code.instantiate().map_err(|e| match e {
            LoadErrorOrCall::Load(l) => l,
            LoadErrorOrCall::Call(c) => LoadError::Init(c),
        })?;
        Ok(code)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A fresh instance: instantiated, ABI version checked, `oplet_init` run.
    pub fn new_instance(&self) -> Result<Instance, CallError> {
        self.instantiate().map_err(|e| match e {
            LoadErrorOrCall::Load(l) => CallError::Instantiate(l.to_string()),
            LoadErrorOrCall::Call(c) => c,
        })
    }

    fn instantiate(&self) -> Result<Instance, LoadErrorOrCall> {
        // A start function or the version probe may loop too: the clock must run.
        let _running = self.clock.enter();
        let state = StoreState {
            plugin: self.name.clone(),
            last_error: None,
            memory_limit: self.limits.memory_bytes,
            memory_refused: None,
        };
        let mut store = Store::new(self.pre.module().engine(), state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(ticks(self.limits.time_ms));
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            let call = classify(&store, e, self.limits);
            match call {
                CallError::OutOfMemory { .. } => LoadErrorOrCall::Call(call),
                other => LoadErrorOrCall::Load(LoadError::Instantiate(other.to_string())),
            }
        })?;
        let get = |name: &'static str| LoadError::MissingExport(name);
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| get("memory"))?;
        let version: TypedFunc<(), u32> = instance
            .get_typed_func(&mut store, "oplet_abi_version")
            .map_err(|_| get("oplet_abi_version"))?;
        let alloc = instance.get_typed_func(&mut store, "oplet_alloc").map_err(|_| get("oplet_alloc"))?;
        let handle = instance.get_typed_func(&mut store, "oplet_handle").map_err(|_| get("oplet_handle"))?;
        let init = if self.has_init {
            Some(instance.get_typed_func(&mut store, "oplet_init").map_err(|_| get("oplet_init"))?)
        } else {
            None
        };
        let found = version.call(&mut store, ()).map_err(|e| LoadErrorOrCall::Call(classify(&store, e, self.limits)))?;
        if found != ABI_VERSION {
            return Err(LoadErrorOrCall::Load(LoadError::AbiVersion { found, expected: ABI_VERSION }));
        }
        let mut inst = Instance { store, memory, alloc, handle, init, limits: self.limits, clock: self.clock.clone(), input: Vec::new() };
        if let Some(init) = inst.init.clone() {
            let config = self.config.clone();
            let reply = inst.call(init, &config).map_err(LoadErrorOrCall::Call)?;
            if let Reply::Err { message } = reply {
                return Err(LoadErrorOrCall::Call(CallError::Plugin(message)));
            }
        }
        Ok(inst)
    }
}

enum LoadErrorOrCall {
    Load(LoadError),
    Call(CallError),
}

impl From<LoadError> for LoadErrorOrCall {
    fn from(e: LoadError) -> Self {
        LoadErrorOrCall::Load(e)
    }
}

/// One live instance of a plugin. Not shared between threads: the router gives
/// each plugin its own worker.
pub struct Instance {
    store: Store<StoreState>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    handle: TypedFunc<(u32, u32), u64>,
    init: Option<TypedFunc<(u32, u32), u64>>,
    limits: Limits,
    clock: Arc<Clock>,
    input: Vec<u8>,
}

impl Instance {
    /// Runs the plugin on one event.
    pub fn handle(&mut self, event: &Event) -> Result<Vec<Effect>, CallError> {
        let mut input = std::mem::take(&mut self.input);
        input.clear();
        codec::encode_into(&mut input, event).map_err(|e| CallError::BadReply(format!("cannot encode event: {e}")))?;
        let handle = self.handle.clone();
        let result = self.call(handle, &input);
        self.input = input;
        match result? {
            Reply::Ok { effects } => Ok(effects),
            Reply::Err { message } => Err(CallError::Plugin(message)),
        }
    }

    fn call(&mut self, f: TypedFunc<(u32, u32), u64>, input: &[u8]) -> Result<Reply, CallError> {
        let started = Instant::now();
        let _running = self.clock.enter();
        self.store.set_epoch_deadline(ticks(self.limits.time_ms));
        self.store.data_mut().last_error = None;
        let len = u32::try_from(input.len()).map_err(|_| CallError::BadReply("event larger than 4 GiB".into()))?;
        let ptr = self.alloc.call(&mut self.store, len).map_err(|e| classify(&self.store, e, self.limits))?;
        let dst = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(ptr as usize..ptr as usize + input.len())
            .ok_or_else(|| CallError::BadReply(format!("oplet_alloc({len}) returned {ptr}, outside linear memory")))?;
        dst.copy_from_slice(input);
        let packed = f.call(&mut self.store, (ptr, len)).map_err(|e| {
            let mut err = classify(&self.store, e, self.limits);
            if let CallError::Timeout { .. } = err {
                tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "plugin call interrupted");
            }
            if let (CallError::Trap(msg), Some(said)) = (&mut err, self.store.data().last_error.as_ref()) {
                *msg = format!("{msg} ({said})");
            }
            err
        })?;
        let (rptr, rlen) = oplet_sdk::unpack_ptr_len(packed);
        let rlen = rlen as usize;
        if rlen > self.limits.reply_bytes {
            return Err(CallError::ReplyTooLarge { len: rlen, limit: self.limits.reply_bytes });
        }
        let bytes = self
            .memory
            .data(&self.store)
            .get(rptr as usize..rptr as usize + rlen)
            .ok_or_else(|| CallError::BadReply(format!("reply at {rptr}+{rlen} lies outside linear memory")))?;
        codec::decode::<Reply>(bytes).map_err(|e| CallError::BadReply(format!("not a MessagePack Reply: {e}")))
    }
}

fn ticks(time_ms: u64) -> u64 {
    // +1 so a budget is never cut short by a tick that was already about to fire.
    time_ms.div_ceil(super::engine::TICK.as_millis() as u64).max(1) + 1
}

fn classify(store: &Store<StoreState>, err: wasmtime::Error, limits: Limits) -> CallError {
    if let Some(wanted) = store.data().memory_refused {
        return CallError::OutOfMemory { wanted, limit: limits.memory_bytes };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout { budget_ms: limits.time_ms },
        Some(t) => CallError::Trap(t.to_string().trim_start_matches("wasm trap: ").to_string()),
        None => CallError::Trap(format!("{err:#}")),
    }
}

/// Checks exports and imports against the ABI before anything runs.
fn check_interface(module: &Module) -> Result<(), LoadError> {
    for import in module.imports() {
        let ok = import.module() == "oplet"
            && import.name() == "log"
            && matches!(import.ty(), ExternType::Func(ref f) if f.params().len() == 3 && f.results().len() == 0);
        if !ok {
            return Err(LoadError::ForbiddenImport { module: import.module().into(), name: import.name().into() });
        }
    }
    let func = |name: &'static str, params: &[ValType], results: &[ValType], expected: &'static str, required: bool| {
        match module.get_export(name) {
            None if required => Err(LoadError::MissingExport(name)),
            None => Ok(()),
            Some(ExternType::Func(f)) => {
                let p: Vec<ValType> = f.params().collect();
                let r: Vec<ValType> = f.results().collect();
                let same = |a: &[ValType], b: &[ValType]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ValType::eq(x, y));
                if same(&p, params) && same(&r, results) {
                    Ok(())
                } else {
                    Err(LoadError::ExportType { name, expected, found: format!("{f}") })
                }
            }
            Some(other) => Err(LoadError::ExportType { name, expected, found: format!("{other:?}") }),
        }
    };
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        None => return Err(LoadError::MissingExport("memory")),
        Some(other) => {
            return Err(LoadError::ExportType { name: "memory", expected: "a memory", found: format!("{other:?}") })
        }
    }
    use ValType::{I32, I64};
    func("oplet_abi_version", &[], &[I32], "(func (result i32))", true)?;
    func("oplet_alloc", &[I32], &[I32], "(func (param i32) (result i32))", true)?;
    func("oplet_handle", &[I32, I32], &[I64], "(func (param i32 i32) (result i64))", true)?;
    func("oplet_init", &[I32, I32], &[I64], "(func (param i32 i32) (result i64))", false)?;
    Ok(())
}

/// wasmtime's parse errors span lines (pretty-printed byte arrays); a log line must not.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
