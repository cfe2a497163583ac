//! The WebAssembly runtime: the only part of the host that sees wasmtime types.
//!
//! `Runtime` owns the one `Engine`, the `Linker`, the compile pool and the
//! compiled-module cache; `PluginCode` is a validated module ready to instantiate;
//! `Instance` takes an event and gives effects or a typed `CallError`. The plugin
//! folder watcher that feeds it lives in `crate::plugins`, outside the runtime.

mod cache;
pub mod compile;
mod engine;
pub mod inspect;
pub(crate) mod limits;
mod lograte;
mod plugin;
mod store;

pub use compile::CompileBudget;
pub use engine::Runtime;
pub use limits::Limits;
pub use plugin::{CallError, Instance, LoadError, PluginCode};
