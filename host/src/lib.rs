//! Oplet host: sources produce events, the router hands them to plugins, plugins
//! return effects, executors apply them, and checkpoints move only after that.
//!
//! Modules follow the path an event takes: `source` → `router` → `runtime` →
//! `effect` → `checkpoint`. `config` and `manifest` describe the host and plugins.

pub mod admin;
pub mod append;
pub mod authoring;
pub mod backoff;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_check;
pub mod deadletter;
pub mod dlq;
pub mod effect;
pub mod envelope;
pub mod exit;
pub mod health;
pub mod host;
pub mod manifest;
pub mod metrics;
pub mod plugins;
pub mod router;
pub mod runtime;
pub mod source;
