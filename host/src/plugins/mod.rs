//! The plugin folder: the watcher that keeps the router's set of plugins in step
//! with `NAME.wasm` + `NAME.toml` files (`reload`), and the loader that compiles
//! each change off the watcher's thread (`loader`). Outside `runtime/`, which
//! sees only wasmtime, because it depends on the router it installs into.

mod loader;
pub mod reload;
