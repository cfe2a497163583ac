//! Shared support for Oplet's end-to-end tests: each fixture starts a real service
//! (PostgreSQL, Redis, the MongoDB-compatible nx-27017, the `oplet` binary) in its own
//! temporary directory on a free loopback port, and stops it and removes the directory
//! when dropped. Scenarios in `tests/scenarios/` use these so each test reads as a story.
//! Nothing here skips silently: a missing tool panics with the command that installs it.

mod cpu;
mod http;
mod mongo;
mod mongo_proxy;
mod oplet;
mod plugins;
mod port;
mod postgres;
mod process;
mod redis_server;
mod require;
mod tls;
mod state;

pub use cpu::{cpu_by_thread, cpu_seconds};
pub use http::{http_get, metric_sample};
pub use mongo::{Mongo, MONGODB_URI_ENV};
pub use mongo_proxy::MongoProxy;
pub use oplet::{oplet_bin, Oplet};
pub use plugins::{
    install_plugin, install_plugin_bytes, install_plugin_from, remove_plugin, wasm_plugins, WasmPlugins,
};
pub use port::free_port;
pub use postgres::Postgres;
pub use redis_server::Redis;
pub use require::{require, Service};
pub use tls::{TestCa, TlsProxy};
pub use state::{jsonl_checkpoint, plugin_status, read_complete_json_lines, read_json_lines};

use std::path::{Path, PathBuf};

/// The repository root (the workspace that holds `host/`, `plugins/`, `tests/`).
pub fn repo_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent directory")
            .to_path_buf()
    })
}

/// A fresh temporary directory, removed when dropped (re-exported for scenarios).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("oplet-test-")
        .tempdir()
        .expect("create a temporary directory")
}

pub use tempfile::TempDir;
