//! Loads plugins off the folder-watching thread: each load (read limits, inspect,
//! compile on the compile pool, probe instance) runs on a thread of its own and
//! reports back through a channel, so a module that takes minutes to compile
//! never delays the load of another, nor a fix for a third.

use super::reload::{PluginFiles, Wake};
use crate::runtime::{PluginCode, Runtime};
use crate::config::Config;
use crate::manifest::Manifest;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A finished load: the plugin's code and manifest, or why it was refused.
pub struct Loaded {
    pub name: String,
    pub digest: String,
    pub result: anyhow::Result<(PluginCode, Manifest)>,
    /// How long the load took, compile included.
    pub ms: u64,
}

pub struct Loader {
    runtime: Arc<Runtime>,
    config: Arc<Config>,
    done_tx: Sender<Loaded>,
    done_rx: Receiver<Loaded>,
    /// Poked after each finished load, so the thread that installs wakes up.
    wake: Sender<Wake>,
}

impl Loader {
    pub fn new(runtime: Arc<Runtime>, config: Arc<Config>, wake: Sender<Wake>) -> Loader {
        let (done_tx, done_rx) = channel();
        Loader { runtime, config, done_tx, done_rx, wake }
    }

    /// Starts loading `files` on a thread of its own.
    pub fn start(&self, name: String, digest: String, files: PluginFiles) {
        let (runtime, config, done, wake) = (self.runtime.clone(), self.config.clone(), self.done_tx.clone(), self.wake.clone());
        let thread_name = format!("oplet-load-{name}");
        let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
            let started = Instant::now();
            let result = files.load(&runtime, &config);
            let ms = started.elapsed().as_millis() as u64;
            let _ = done.send(Loaded { name, digest, result, ms });
            let _ = wake.send(Wake::Loaded);
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start a plugin load thread: {e}");
        }
    }

    /// A load that has finished, if any.
    pub fn try_next(&self) -> Option<Loaded> {
        self.done_rx.try_recv().ok()
    }

    /// The next load to finish, waiting at most until `deadline`.
    pub fn next_until(&self, deadline: Instant) -> Option<Loaded> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left == Duration::ZERO {
            return self.try_next();
        }
        self.done_rx.recv_timeout(left).ok()
    }
}
