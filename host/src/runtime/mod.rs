//! The WebAssembly runtime: the only part of the host that sees wasmtime types.
//!
//! `Runtime` owns the one `Engine`, the `Linker` and the compiled-module cache;
//! `PluginCode` is a validated module ready to instantiate; `Instance` takes an
//! event and gives effects or a typed `CallError`. `reload` keeps the set of
//! loaded plugins in step with the plugin folder.

mod cache;
mod engine;
mod limits;
mod plugin;
pub mod reload;

pub use engine::Runtime;
pub use limits::Limits;
pub use plugin::{CallError, Instance, LoadError, PluginCode};
