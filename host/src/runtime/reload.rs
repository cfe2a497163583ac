//! The plugin folder: load every `NAME.wasm` + `NAME.toml`, and keep watching.
//!
//! A change is loaded after `debounce_ms` of quiet, compiled and validated off the
//! event path, then swapped in atomically. A version that fails validation is
//! refused with a log line naming the file and the cause, and the version already
//! running keeps serving. Deploy by writing elsewhere and renaming into place.
//! The module is the commit point: a loaded plugin is replaced only when its
//! `.wasm` file changes (renamed in, or touched), so a module never runs with a
//! manifest renamed in ahead of it; a manifest changed alone waits for that.

use super::{Limits, PluginCode, Runtime};
use crate::config::Config;
use crate::manifest::Manifest;
use crate::router::Registry;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A plugin's files, read once so a concurrent write cannot mix versions.
pub struct PluginFiles {
    pub name: String,
    pub wasm_path: PathBuf,
    pub manifest_path: PathBuf,
    pub wasm: Vec<u8>,
    pub manifest_text: String,
}

impl PluginFiles {
    pub fn read(wasm_path: &Path, manifest_path: &Path) -> anyhow::Result<PluginFiles> {
        let name = wasm_path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let wasm = std::fs::read(wasm_path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", wasm_path.display()))?;
        let manifest_text = std::fs::read_to_string(manifest_path).map_err(|e| {
            anyhow::anyhow!("cannot read manifest {}: {e} (every NAME.wasm needs a NAME.toml beside it)", manifest_path.display())
        })?;
        Ok(PluginFiles { name, wasm_path: wasm_path.into(), manifest_path: manifest_path.into(), wasm, manifest_text })
    }

    pub fn digest(&self) -> String {
        let mut d = Sha256::new();
        d.update(&self.wasm);
        d.update([0]);
        d.update(self.manifest_text.as_bytes());
        hex::encode(&d.finalize()[..12])
    }

    /// Parses the manifest and loads the module with its limits and config.
    pub fn load(&self, runtime: &Runtime, config: &Config) -> anyhow::Result<(PluginCode, Manifest)> {
        let manifest = Manifest::from_toml(&self.manifest_text, &self.manifest_path)?;
        if manifest.name != self.name {
            anyhow::bail!(
                "manifest {} says name = {:?} but the file is {}.wasm; the two must match",
                self.manifest_path.display(),
                manifest.name,
                self.name
            );
        }
        let limits = Limits::resolve(&manifest.limits, &config.limits);
        let code = PluginCode::load(runtime, &manifest.name, &self.wasm, limits, &manifest.config_value())
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.wasm_path.display()))?;
        Ok((code, manifest))
    }
}

pub struct PluginDir {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    config: Arc<Config>,
    registry: Arc<Registry>,
    /// Digest of the files of each loaded plugin, and of each refused attempt, so
    /// the same bad files are not reported again on every scan.
    loaded: BTreeMap<String, String>,
    refused: BTreeMap<String, String>,
    /// The module file each loaded plugin was read from, to see a new one arrive.
    stamps: BTreeMap<String, ModuleStamp>,
    /// Digest of the manifest each loaded plugin runs with, and of manifests
    /// changed without their module that were already reported.
    manifests: BTreeMap<String, String>,
    pending: BTreeMap<String, String>,
}

/// Which file a module was read from: a rename gives a new inode, a touch a new
/// modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModuleStamp {
    inode: u64,
    modified: Option<std::time::SystemTime>,
    len: u64,
}

impl ModuleStamp {
    fn of(path: &Path) -> Option<ModuleStamp> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Some(ModuleStamp { inode, modified: m.modified().ok(), len: m.len() })
    }
}

impl PluginDir {
    pub fn new(runtime: Arc<Runtime>, config: Arc<Config>, registry: Arc<Registry>) -> PluginDir {
        let dir = config.plugins.dir.clone();
        PluginDir {
            dir,
            runtime,
            config,
            registry,
            loaded: BTreeMap::new(),
            refused: BTreeMap::new(),
            stamps: BTreeMap::new(),
            manifests: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Brings the registry in step with the folder. Returns how many plugins changed.
    pub fn scan(&mut self) -> usize {
        let mut present = BTreeMap::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let path = e.path();
                    let is_wasm = path.extension().is_some_and(|x| x == "wasm");
                    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
                    if is_wasm && !hidden {
                        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                            present.insert(stem.to_string(), path.clone());
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), "cannot read plugin folder: {e}");
                return 0;
            }
        }
        let mut changed = 0;
        let gone: Vec<String> = self.loaded.keys().filter(|n| !present.contains_key(*n)).cloned().collect();
        for name in gone {
            self.loaded.remove(&name);
            self.stamps.remove(&name);
            self.manifests.remove(&name);
            self.pending.remove(&name);
            if self.registry.remove(&name) {
                tracing::info!(plugin = %name, "plugin unloaded: its .wasm file was removed");
                changed += 1;
            }
        }
        self.refused.retain(|n, _| present.contains_key(n));
        for (name, wasm_path) in present {
            let manifest_path = wasm_path.with_extension("toml");
            let stamp = ModuleStamp::of(&wasm_path);
            if self.loaded.contains_key(&name) && stamp.is_some() && self.stamps.get(&name) == stamp.as_ref() {
                self.note_pending_manifest(&name, &manifest_path);
                continue;
            }
            let files = match PluginFiles::read(&wasm_path, &manifest_path) {
                Ok(f) => f,
                Err(e) => {
                    self.refuse(&name, "unreadable".into(), &format!("{e:#}"));
                    continue;
                }
            };
            let digest = files.digest();
            if self.loaded.get(&name) == Some(&digest) || self.refused.get(&name) == Some(&digest) {
                continue;
            }
            let started = Instant::now();
            match files.load(&self.runtime, &self.config) {
                Ok((code, manifest)) => {
                    let caps = self.config.effective_capabilities(&manifest.name, &manifest.capabilities);
                    warn_ungranted(&manifest, &caps);
                    let replaced = self.loaded.contains_key(&name);
                    tracing::info!(
                        plugin = %name,
                        version = %manifest.version,
                        digest = %digest,
                        cached = code.cached,
                        ms = started.elapsed().as_millis() as u64,
                        "plugin {}",
                        if replaced { "reloaded" } else { "loaded" }
                    );
                    self.registry.install(code, manifest, caps, digest.clone());
                    self.loaded.insert(name.clone(), digest);
                    self.refused.remove(&name);
                    self.pending.remove(&name);
                    self.manifests.insert(name.clone(), text_digest(files.manifest_text.as_bytes()));
                    match stamp {
                        Some(s) => self.stamps.insert(name.clone(), s),
                        None => self.stamps.remove(&name),
                    };
                    changed += 1;
                }
                Err(e) => self.refuse(&name, digest, &format!("{e:#}")),
            }
        }
        changed
    }

    /// A loaded plugin whose module did not change: if its manifest did, say once
    /// that it waits for the module (the commit point of a deploy).
    fn note_pending_manifest(&mut self, name: &str, manifest_path: &Path) {
        let Ok(text) = std::fs::read(manifest_path) else { return };
        let digest = text_digest(&text);
        let Some(loaded) = self.registry.get(name) else { return };
        if self.pending.get(name) == Some(&digest) || self.manifests.get(name) == Some(&digest) {
            return;
        }
        tracing::warn!(
            plugin = %name,
            version = %loaded.version,
            "{} changed but {name}.wasm did not: the manifest takes effect when the module is renamed into place \
             (or touched); until then the running module keeps the manifest it was deployed with",
            manifest_path.display()
        );
        self.pending.insert(name.to_string(), digest);
    }

    fn refuse(&mut self, name: &str, digest: String, why: &str) {
        if self.refused.get(name) == Some(&digest) {
            return;
        }
        if self.loaded.contains_key(name) {
            tracing::error!(plugin = %name, "refusing new version of plugin: {why}; the previous version keeps running");
        } else {
            tracing::error!(plugin = %name, "refusing plugin: {why}; it is not loaded");
        }
        self.refused.insert(name.to_string(), digest);
    }

    /// Watches the folder and rescans after each burst of changes. Runs until the
    /// returned guard is dropped.
    pub fn watch(mut self) -> anyhow::Result<WatchGuard> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let _ = tx.send(res.is_ok());
        })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| anyhow::anyhow!("cannot watch plugin folder {}: {e}", self.dir.display()))?;
        let debounce = Duration::from_millis(self.config.plugins.debounce_ms);
        let thread = std::thread::Builder::new().name("oplet-reload".into()).spawn(move || {
            while rx.recv().is_ok() {
                // Wait for a quiet moment: a file still being written keeps firing.
                while rx.recv_timeout(debounce).is_ok() {}
                self.scan();
            }
        })?;
        Ok(WatchGuard { _watcher: watcher, _thread: thread })
    }
}

/// Keeps the folder watch alive.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}

fn text_digest(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..12])
}

fn warn_ungranted(manifest: &Manifest, granted: &crate::manifest::Capabilities) {
    let asked = &manifest.capabilities;
    let mut missing = Vec::new();
    missing.extend(asked.cache_prefixes.iter().filter(|p| !granted.cache_prefixes.contains(p)).map(|p| format!("cache prefix {p:?}")));
    missing.extend(asked.tables.iter().filter(|t| !granted.tables.contains(t)).map(|t| format!("table {t:?}")));
    missing.extend(asked.emit.iter().filter(|e| !granted.emit.contains(e)).map(|e| format!("emit {e:?}")));
    if asked.audit && !granted.audit {
        missing.push("audit".into());
    }
    if !missing.is_empty() {
        tracing::warn!(
            plugin = %manifest.name,
            "the host does not grant {}; such effects will be refused (add them under [grants.\"{}\"] in the host config)",
            missing.join(", "),
            manifest.name
        );
    }
}
