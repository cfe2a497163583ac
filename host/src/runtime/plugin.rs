//! A loaded plugin: validated module code (`PluginCode`) and a live `Instance`.
//!
//! Loading checks everything that can be checked before an event arrives: size and
//! declared memories/tables (before compiling), the exports and their signatures,
//! the imports, the ABI version, and that `oplet_init` accepts the manifest's
//! config — each phase under the plugin's limits. A call that traps, runs out of
//! time or memory, or returns a bad reply gives a typed `CallError`; the caller
//! then throws the instance away (its state may be corrupt) and makes a fresh one.

use super::cache::Lease;
use super::compile::{one_line, CompileBudget};
use super::engine::{Clock, Runtime};
use super::limits::Limits;
use super::lograte::LogBudget;
use super::store::StoreState;
use oplet_sdk::{codec, Effect, Value, ABI_VERSION};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{
    ExternType, InstancePre, Memory, Module, ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

/// Why a module was refused at load. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly module: {0}")]
    Compile(String),
    #[error("the module is {size} bytes, past the host's module size limit of {limit} bytes ([limits] module_mb in the host config); shrink it (release build, opt-level = \"s\", strip) or raise the limit")]
    TooLarge { size: usize, limit: usize },
    #[error("compiling took longer than the compile budget of {budget_ms} ms ([limits] compile_ms in the host config); the module is refused. wasmtime cannot cancel a compile: it runs to its end on its own thread and is then discarded ({abandoned} such compile(s) running now)")]
    CompileBudget { budget_ms: u64, abandoned: usize },
    #[error("unsupported module: it {0}")]
    Unsupported(String),
    #[error("over its memory budget: the module {0}")]
    Budget(String),
    #[error("missing export `{0}`; a plugin must export memory, oplet_abi_version, oplet_alloc and oplet_handle (see docs/abi.md)")]
    MissingExport(&'static str),
    #[error("export `{name}` has the wrong type: expected {expected}, found {found}")]
    ExportType { name: &'static str, expected: &'static str, found: String },
    #[error("imports `{module}.{name}`, which the host does not provide; the only import is `oplet.log` (docs/abi.md section 3): remove it (a WASI import means the module was built for wasm32-wasip1, build for wasm32-unknown-unknown)")]
    ForbiddenImport { module: String, name: String },
    #[error("imports `oplet.log` with the wrong type: expected (func (param i32 i32 i32)), found {found} (docs/abi.md section 3)")]
    ImportType { found: String },
    #[error("speaks plugin ABI version {found}, this host speaks version {expected}; rebuild it with a matching oplet-sdk")]
    AbiVersion { found: u32, expected: u32 },
    #[error("instantiation failed (start function, data or table initialisation): {0}")]
    Start(CallError),
    #[error("oplet_abi_version failed: {0}")]
    Probe(CallError),
    #[error("oplet_abi_features failed: {0}")]
    Features(CallError),
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
    #[error("out of memory: growing {what} would bring the instance to {wanted} bytes (linear memory and tables together), past its limit of {limit} bytes ([limits] memory_mb)")]
    OutOfMemory { what: String, wanted: usize, limit: usize },
    #[error("trap: {0}")]
    Trap(String),
    #[error("reply too large: {len} bytes, limit {limit} bytes")]
    ReplyTooLarge { len: usize, limit: usize },
    #[error("bad reply: {0}")]
    BadReply(String),
    #[error("too many effects: the reply holds {count} effects, past the limit of {limit} per call ([limits] effects)")]
    TooManyEffects { count: usize, limit: usize },
    #[error("plugin error: {0}")]
    Plugin(String),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

impl CallError {
    /// Whether the instance must be replaced (its memory may be inconsistent).
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, CallError::Plugin(_) | CallError::TooManyEffects { .. })
    }
}

/// A validated, compiled plugin module with its limits and init config. Holds the
/// epoch clock, so its time limits hold as long as it exists, and its cache lease.
pub struct PluginCode {
    name: Arc<str>,
    pre: InstancePre<StoreState>,
    limits: Limits,
    config: Vec<u8>,
    has_init: bool,
    /// Whether the module exports `oplet_abi_features` (probed per instance).
    has_features: bool,
    clock: Arc<Clock>,
    log: Arc<LogBudget>,
    footprint: super::inspect::Footprint,
    _lease: Option<Arc<Lease>>,
    /// Whether the compiled code came from the on-disk cache.
    pub cached: bool,
}

impl PluginCode {
    /// Loads with the default module size and compile budget (`plugin check`,
    /// tests); the host uses `load_budgeted` with its configured ones.
    pub fn load(runtime: &Runtime, name: &str, wasm: &[u8], limits: Limits, config: &Value) -> Result<PluginCode, LoadError> {
        PluginCode::load_budgeted(runtime, name, wasm, limits, config, &CompileBudget::default())
    }

    /// Checks the size and the declared memories and tables, compiles (or loads
    /// from the cache) on the compile pool within `budget`, validates the
    /// interface, then instantiates once to check the ABI version and run
    /// `oplet_init` with `config`, all under `limits`.
    pub fn load_budgeted(
        runtime: &Runtime,
        name: &str,
        wasm: &[u8],
        limits: Limits,
        config: &Value,
        budget: &CompileBudget,
    ) -> Result<PluginCode, LoadError> {
        if wasm.len() > budget.module_bytes {
            return Err(LoadError::TooLarge { size: wasm.len(), limit: budget.module_bytes });
        }
        let footprint = super::inspect::inspect(wasm, limits.memory_bytes)?;
        let (module, cached, lease) = runtime.pool.compile(runtime.compiler(), Arc::from(wasm), budget)?;
        check_interface(&module)?;
        let pre = runtime
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Instantiate(one_line(&format!("{e:#}"))))?;
        let has_init = module.get_export("oplet_init").is_some();
        let has_features = module.get_export("oplet_abi_features").is_some();
        let config = codec::encode(config).map_err(|e| LoadError::Instantiate(format!("cannot encode config: {e}")))?;
        let code = PluginCode {
            name: name.into(),
            pre,
            limits,
            config,
            has_init,
            has_features,
            clock: runtime.clock.clone(),
            log: Arc::new(LogBudget::new(name.into(), limits.log_bytes_per_s)),
            footprint,
            _lease: lease,
            cached,
        };
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

    /// Bytes of linear memory and tables the module declares initially.
    pub fn initial_bytes(&self) -> u64 {
        self.footprint.initial_bytes()
    }

    /// A fresh instance: instantiated, ABI version checked, `oplet_init` run.
    pub fn new_instance(&self) -> Result<Instance, CallError> {
        self.instantiate().map_err(|e| match e {
            LoadErrorOrCall::Load(LoadError::Start(c) | LoadError::Probe(c) | LoadError::Features(c)) => c,
            LoadErrorOrCall::Load(l) => CallError::Instantiate(l.to_string()),
            LoadErrorOrCall::Call(c) => c,
        })
    }

    fn instantiate(&self) -> Result<Instance, LoadErrorOrCall> {
        // A start function or the version probe may loop too: the clock must run,
        // and each phase gets the whole time budget of one call.
        let _running = self.clock.enter();
        let state = StoreState {
            plugin: self.name.clone(),
            last_error: None,
            log: self.log.clone(),
            memory_limit: self.limits.memory_bytes,
            memory_bytes: 0,
            table_bytes: 0,
            memory_refused: None,
        };
        let mut store = Store::new(self.pre.module().engine(), state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.set_epoch_deadline(ticks(self.limits.time_ms));
        let instance = self.pre.instantiate(&mut store).map_err(|e| LoadError::Start(classify(&store, e, self.limits)));
        self.log.report(LOG_REPORT_EVERY);
        let instance = instance?;
        let get = |name: &'static str| LoadError::MissingExport(name);
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| get("memory"))?;
        let version: TypedFunc<(), u32> = instance
            .get_typed_func(&mut store, "oplet_abi_version")
            .map_err(|_| get("oplet_abi_version"))?;
        let alloc = instance.get_typed_func(&mut store, "oplet_alloc").map_err(|_| get("oplet_alloc"))?;
        let handle = instance.get_typed_func(&mut store, "oplet_handle").map_err(|_| get("oplet_handle"))?;
        let features: Option<TypedFunc<(), u32>> = if self.has_features {
            Some(instance.get_typed_func(&mut store, "oplet_abi_features").map_err(|_| get("oplet_abi_features"))?)
        } else {
            None
        };
        let init = if self.has_init {
            Some(instance.get_typed_func(&mut store, "oplet_init").map_err(|_| get("oplet_init"))?)
        } else {
            None
        };
        store.set_epoch_deadline(ticks(self.limits.time_ms));
        let found = version.call(&mut store, ()).map_err(|e| LoadError::Probe(classify(&store, e, self.limits)));
        self.log.report(LOG_REPORT_EVERY);
        let found = found?;
        if found != ABI_VERSION {
            return Err(LoadErrorOrCall::Load(LoadError::AbiVersion { found, expected: ABI_VERSION }));
        }
        // Optional features (docs/abi.md §2.1); bits this host does not know are ignored.
        let features = match features {
            None => 0,
            Some(f) => {
                store.set_epoch_deadline(ticks(self.limits.time_ms));
                let bits = f.call(&mut store, ()).map_err(|e| LoadError::Features(classify(&store, e, self.limits)));
                self.log.report(LOG_REPORT_EVERY);
                bits?
            }
        };
        let reuse_input = features & oplet_sdk::FEATURE_INPUT_REUSE != 0;
        let mut inst = Instance {
            store,
            memory,
            alloc,
            handle,
            init,
            limits: self.limits,
            clock: self.clock.clone(),
            reuse_input,
            input: None,
        };
        if inst.init.is_some() {
            match inst.call(Export::Init, &self.config).map_err(LoadErrorOrCall::Call)? {
                WireReply::Err { message } => {
                    return Err(LoadErrorOrCall::Call(CallError::Plugin(message.unwrap_or_default())));
                }
                WireReply::Ok { .. } => {}
            }
        }
        Ok(inst)
    }
}

/// How often a plugin's dropped log lines are reported, at most.
const LOG_REPORT_EVERY: Duration = Duration::from_secs(1);

/// A reply as the host reads it: unknown keys are ignored and a missing key is
/// nil (so `{"status": "ok"}` has no effects), as docs/abi.md section 6 says of
/// every map on the boundary.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum WireReply {
    Ok {
        #[serde(default)]
        effects: Option<Vec<Effect>>,
    },
    Err {
        #[serde(default)]
        message: Option<String>,
    },
}

/// Decodes exactly one `Reply`: an empty reply and bytes after the value are
/// errors (a length that does not match the value is a bug in the plugin).
fn decode_reply(bytes: &[u8]) -> Result<WireReply, CallError> {
    if bytes.is_empty() {
        return Err(CallError::BadReply(
            "the reply is empty (length 0); return the packed pointer and length of a MessagePack map such as {\"status\": \"ok\", \"effects\": []} (docs/abi.md section 7.5)".into(),
        ));
    }
    if bytes == oplet_sdk::EMPTY_OK_REPLY {
        // What the SDK sends when a call asks for nothing: no need to read it.
        return Ok(WireReply::Ok { effects: None });
    }
    if let Some(reply) = decode_ok_reply(bytes) {
        return Ok(reply);
    }
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    let reply = WireReply::deserialize(&mut de)
        .map_err(|e| CallError::BadReply(format!("not a MessagePack Reply: {e} (docs/abi.md section 7.5)")))?;
    let used = de.position() as usize;
    if used != bytes.len() {
        return Err(CallError::BadReply(format!(
            "{} byte(s) after the Reply (the reply is {used} bytes, the returned length {}); return the length of the reply exactly",
            bytes.len() - used,
            bytes.len()
        )));
    }
    Ok(reply)
}

/// The common reply, `{"status": "ok", "effects": [...]}`, read in place by the
/// SDK in one pass (`oplet_sdk::read_ok_reply`): serde's tagged enums buffer every
/// map first, which cost more than the rest of a no-op call. Anything else (an
/// error, a malformed reply) is left to the full decoder, which also words the errors.
fn decode_ok_reply(bytes: &[u8]) -> Option<WireReply> {
    oplet_sdk::read_ok_reply(bytes).map(|effects| WireReply::Ok { effects })
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

/// Which export `Instance::call` runs.
#[derive(Clone, Copy)]
enum Export {
    Handle,
    Init,
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
    /// The module declared `FEATURE_INPUT_REUSE`: the buffer of its last
    /// `oplet_alloc` takes any input up to that call's length.
    reuse_input: bool,
    /// That buffer (pointer, length asked for), once `oplet_alloc` has run.
    input: Option<(u32, u32)>,
}

impl Instance {
    /// Runs the plugin on one event, given as its MessagePack bytes (ABI v1,
    /// docs/abi.md §7.1), encoded once by the source and shared by every plugin.
    pub fn handle(&mut self, event: &[u8]) -> Result<Vec<Effect>, CallError> {
        match self.call(Export::Handle, event)? {
            WireReply::Ok { effects } => {
                let effects = effects.unwrap_or_default();
                if effects.len() > self.limits.effects {
                    return Err(CallError::TooManyEffects { count: effects.len(), limit: self.limits.effects });
                }
                Ok(effects)
            }
            WireReply::Err { message } => Err(CallError::Plugin(message.unwrap_or_else(|| "(no message)".into()))),
        }
    }

    fn call(&mut self, f: Export, input: &[u8]) -> Result<WireReply, CallError> {
        let result = self.call_inner(f, input);
        self.store.data().log.report(LOG_REPORT_EVERY);
        result
    }

    fn call_inner(&mut self, f: Export, input: &[u8]) -> Result<WireReply, CallError> {
        // Borrowed, not cloned: cloning a `TypedFunc` clones its registered type
        // (reference counts and a registry lookup), which showed in the profile.
        let f = match f {
            Export::Handle => &self.handle,
            Export::Init => self.init.as_ref().expect("oplet_init is called only when exported"),
        };
        let _running = self.clock.enter();
        self.store.set_epoch_deadline(ticks(self.limits.time_ms));
        self.store.data_mut().last_error = None;
        let len = u32::try_from(input.len()).map_err(|_| CallError::BadReply("event larger than 4 GiB".into()))?;
        let ptr = match self.input {
            // The guest keeps this buffer for inputs up to its length: no call.
            Some((ptr, cap)) if self.reuse_input && len <= cap => ptr,
            _ => {
                let ptr = self.alloc.call(&mut self.store, len).map_err(|e| {
                    let err = classify(&self.store, e, self.limits);
                    match err {
                        CallError::Trap(msg) => CallError::Trap(format!("in oplet_alloc({len}): {msg}")),
                        other => other,
                    }
                })?;
                self.input = Some((ptr, len));
                ptr
            }
        };
        let dst = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(ptr as usize..ptr as usize + input.len())
            .ok_or_else(|| CallError::BadReply(format!("oplet_alloc({len}) returned {ptr}, outside linear memory")))?;
        dst.copy_from_slice(input);
        let packed = f.call(&mut self.store, (ptr, len)).map_err(|e| {
            let mut err = classify(&self.store, e, self.limits);
            if let CallError::Timeout { .. } = err {
                tracing::debug!(budget_ms = self.limits.time_ms, "plugin call interrupted");
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
        decode_reply(bytes)
    }
}

fn ticks(time_ms: u64) -> u64 {
    // +1 so a budget is never cut short by a tick that was already about to fire.
    time_ms.div_ceil(super::engine::TICK.as_millis() as u64).max(1) + 1
}

fn classify(store: &Store<StoreState>, err: wasmtime::Error, limits: Limits) -> CallError {
    if let Some((what, wanted)) = store.data().memory_refused.clone() {
        return CallError::OutOfMemory { what, wanted, limit: limits.memory_bytes };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout { budget_ms: limits.time_ms },
        Some(t) => CallError::Trap(t.to_string().trim_start_matches("wasm trap: ").to_string()),
        None => CallError::Trap(one_line(&format!("{err:#}"))),
    }
}

/// Checks exports and imports against the ABI before anything runs.
fn check_interface(module: &Module) -> Result<(), LoadError> {
    for import in module.imports() {
        if import.module() != "oplet" || import.name() != "log" {
            return Err(LoadError::ForbiddenImport { module: import.module().into(), name: import.name().into() });
        }
        let ok = matches!(import.ty(), ExternType::Func(ref f)
            if f.params().len() == 3 && f.params().all(|p| matches!(p, ValType::I32)) && f.results().len() == 0);
        if !ok {
            let found = match import.ty() {
                ExternType::Func(f) => format!("{f}"),
                other => format!("{other:?}"),
            };
            return Err(LoadError::ImportType { found: one_line(&found) });
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
    func("oplet_abi_features", &[], &[I32], "(func (result i32))", false)?;
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;
    use oplet_sdk::Reply;

    fn full_decoder(bytes: &[u8]) -> Option<Vec<Effect>> {
        match WireReply::deserialize(&mut rmp_serde::Deserializer::new(std::io::Cursor::new(bytes))).unwrap() {
            WireReply::Ok { effects } => effects,
            WireReply::Err { .. } => panic!("an ok reply"),
        }
    }

    /// A module whose `oplet_alloc` traps when asked for no more than it last
    /// handed out: with `oplet_abi_features` = 1 the host must reuse that buffer
    /// (one call per event), and call `oplet_alloc` again only for a larger input;
    /// without the export (a v1 module) the host calls it every time, so the same
    /// module traps on the second event.
    fn reuse_module(features: bool) -> Vec<u8> {
        let export = if features { r#"(func (export "oplet_abi_features") (result i32) (i32.const 1))"# } else { "" };
        wat::parse_str(format!(
            r#"(module
              (memory (export "memory") 1)
              (global $cap (mut i32) (i32.const 0))
              {export}
              (func (export "oplet_abi_version") (result i32) (i32.const 1))
              (func (export "oplet_alloc") (param $len i32) (result i32)
                (if (i32.le_u (local.get $len) (global.get $cap)) (then unreachable))
                (global.set $cap (local.get $len))
                (i32.const 1024))
              (func (export "oplet_handle") (param $ptr i32) (param $len i32) (result i64)
                (if (i32.ne (local.get $ptr) (i32.const 1024)) (then unreachable))
                (if (i32.gt_u (local.get $len) (global.get $cap)) (then unreachable))
                (i64.const 0x0000001000000014))
              (data (i32.const 16) "\82\a6status\a2ok\a7effects\90"))"#
        ))
        .unwrap()
    }

    #[test]
    fn a_module_declaring_input_reuse_gets_one_call_per_event_and_a_v1_module_two() {
        let runtime = Runtime::new(None).unwrap();
        let load = |features| PluginCode::load(&runtime, "reuse", &reuse_module(features), Limits::default(), &Value::Null).unwrap();
        let code = load(true);
        let mut inst = code.new_instance().unwrap();
        for len in [100, 50, 100, 200, 150, 201, 1] {
            assert_eq!(inst.handle(&vec![0xc0; len]).unwrap(), vec![], "input of {len} bytes");
        }
        let code = load(false);
        let mut inst = code.new_instance().unwrap();
        inst.handle(&[0xc0; 100]).unwrap();
        let err = inst.handle(&[0xc0; 50]).unwrap_err();
        assert!(matches!(&err, CallError::Trap(m) if m.starts_with("in oplet_alloc(50)")), "{err}");
        // A mistyped export refuses the module at load.
        let bad = wat::parse_str(
            r#"(module (memory (export "memory") 1)
              (func (export "oplet_abi_version") (result i32) (i32.const 1))
              (func (export "oplet_abi_features") (result i64) (i64.const 1))
              (func (export "oplet_alloc") (param i32) (result i32) (i32.const 0))
              (func (export "oplet_handle") (param i32 i32) (result i64) (i64.const 0)))"#,
        )
        .unwrap();
        let err = PluginCode::load(&runtime, "bad", &bad, Limits::default(), &Value::Null).err().unwrap().to_string();
        assert!(err.starts_with("export `oplet_abi_features` has the wrong type: expected (func (result i32))"), "{err}");
        // A probe that traps refuses the module at load, naming the export.
        let trapping = wat::parse_str(
            r#"(module (memory (export "memory") 1)
              (func (export "oplet_abi_version") (result i32) (i32.const 1))
              (func (export "oplet_abi_features") (result i32) unreachable)
              (func (export "oplet_alloc") (param i32) (result i32) (i32.const 0))
              (func (export "oplet_handle") (param i32 i32) (result i64) (i64.const 0)))"#,
        )
        .unwrap();
        let err = PluginCode::load(&runtime, "trapping", &trapping, Limits::default(), &Value::Null).err().unwrap().to_string();
        assert!(err.starts_with("oplet_abi_features failed: trap:"), "{err}");
    }

    #[test]
    fn the_in_place_ok_reply_reads_as_the_full_decoder_does() {
        let effects = vec![
            Effect::cache_delete(["client:1", "client:2"]),
            Effect::Audit { record: Value::from("x") },
            Effect::log(oplet_sdk::LogLevel::Warn, "w"),
            Effect::Audit { record: Value::Map([("a".to_string(), Value::Array(vec![Value::Int(-1), Value::Null]))].into()) },
            Effect::cache_delete(Vec::<String>::new()),
            Effect::RowDelete { table: "t".into(), key: [("id".to_string(), Value::Int(1))].into() },
        ];
        let replies = [
            codec::encode(&Reply::Ok { effects: vec![] }).unwrap(),
            codec::encode(&Reply::Ok { effects: effects.clone() }).unwrap(),
            codec::encode(&Value::Map([("status".to_string(), Value::from("ok"))].into())).unwrap(),
            codec::encode(&Value::Map([("status".to_string(), Value::from("ok")), ("effects".to_string(), Value::Null), ("more".to_string(), Value::Int(1))].into())).unwrap(),
        ];
        for bytes in &replies {
            let Some(WireReply::Ok { effects: fast }) = decode_ok_reply(bytes) else { panic!("read in place") };
            assert_eq!(fast, full_decoder(bytes));
        }
        assert!(matches!(decode_reply(&replies[1]), Ok(WireReply::Ok { effects: Some(e) }) if e == effects));
        // Not for it: errors, trailing bytes, effects that do not decode.
        let err = codec::encode(&Reply::Err { message: "no".into() }).unwrap();
        assert!(decode_ok_reply(&err).is_none());
        assert!(matches!(decode_reply(&err), Ok(WireReply::Err { message: Some(m) }) if m == "no"));
        let mut trailing = replies[0].clone();
        trailing.push(0xc0);
        assert!(decode_ok_reply(&trailing).is_none());
        assert!(matches!(decode_reply(&trailing), Err(CallError::BadReply(m)) if m.contains("1 byte(s) after the Reply")));
        let bad = codec::encode(&Value::Map([("status".to_string(), Value::from("ok")), ("effects".to_string(), Value::Array(vec![Value::Int(3)]))].into())).unwrap();
        assert!(decode_ok_reply(&bad).is_none());
        assert!(matches!(decode_reply(&bad), Err(CallError::BadReply(_))));
        // Effects the in-place reader does not take (odd shapes) are read by serde,
        // and agree; those serde refuses are refused.
        let effect = |kind: &str, data: Value| Value::Map([("kind".to_string(), Value::from(kind)), ("data".to_string(), data)].into());
        let reply = |e: Value| codec::encode(&Value::Map([("status".to_string(), Value::from("ok")), ("effects".to_string(), Value::Array(vec![e]))].into())).unwrap();
        let data = |pairs: Vec<(&str, Value)>| Value::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        let odd = [
            effect("cache_delete", data(vec![("keys", Value::from(vec!["a"])), ("extra", Value::Int(1))])),
            effect("log", data(vec![("level", Value::from("info")), ("message", Value::from("m")), ("more", Value::Null)])),
        ];
        for e in odd {
            let bytes = reply(e);
            let Some(WireReply::Ok { effects: fast }) = decode_ok_reply(&bytes) else { panic!("read in place") };
            assert_eq!(fast, full_decoder(&bytes));
        }
        let refused = [
            effect("cache_delete", data(vec![("keys", Value::Array(vec![Value::from("a"), Value::Int(2)]))])),
            effect("log", data(vec![("level", Value::from("loud")), ("message", Value::from("m"))])),
            effect("audit", data(vec![])),
            effect("teleport", data(vec![])),
        ];
        for e in refused {
            let bytes = reply(e.clone());
            assert!(decode_ok_reply(&bytes).is_none(), "{e:?}");
            assert!(matches!(decode_reply(&bytes), Err(CallError::BadReply(_))), "{e:?}");
        }
    }
}
