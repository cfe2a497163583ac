//! The plugin folder: load every `NAME.wasm` + `NAME.toml`, and keep watching.
//!
//! A change is loaded after `debounce_ms` of quiet, compiled and validated off the
//! event path and off this thread (each load on its own thread, `loader`), then
//! swapped in atomically when its load finishes. A version that fails validation is
//! refused with a log line naming the file and the cause, and the version already
//! running keeps serving. Deploy by writing elsewhere and renaming into place.
//! The module is the commit point: a loaded plugin is replaced only when its
//! `.wasm` file changes (renamed in, or touched), so a module never runs with a
//! manifest renamed in ahead of it; a manifest changed alone waits for that.

use super::loader::{Loaded, Loader};
use crate::runtime::{CompileBudget, Limits, LoadError, PluginCode, Runtime};
use crate::config::Config;
use crate::manifest::Manifest;
use crate::router::Registry;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
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
        let limits = Limits::resolve(&manifest.limits, &config.limits)
            .map_err(|e| anyhow::anyhow!("manifest {}: {e}", self.manifest_path.display()))?;
        let budget = CompileBudget::from_ceilings(&config.limits);
        let code = PluginCode::load_budgeted(runtime, &manifest.name, &self.wasm, limits, &manifest.config_value(), &budget)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.wasm_path.display()))?;
        Ok((code, manifest))
    }
}

/// The plugin folder must be a readable folder; the error says which of those it
/// is not, and what to do.
pub fn check_plugin_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::read_dir(dir).map(|_| ()).map_err(|e| {
            anyhow::anyhow!("plugin folder {} cannot be read: {e}; give the host's user read access to it", dir.display())
        }),
        Ok(_) => anyhow::bail!(
            "plugin folder {} is a file, not a folder; point [plugins] dir (OPLET__PLUGINS__DIR) at the folder that holds NAME.wasm + NAME.toml pairs",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "plugin folder {} does not exist; create it or set [plugins] dir (OPLET__PLUGINS__DIR)",
            dir.display()
        ),
        Err(e) => anyhow::bail!("plugin folder {} cannot be read: {e}", dir.display()),
    }
}

pub struct PluginDir {
    dir: PathBuf,
    config: Arc<Config>,
    loader: Loader,
    /// The loads in progress, by plugin: a finished load is installed only if it
    /// is still the latest version of a file still there.
    pending: BTreeMap<String, PendingLoad>,
    wake_tx: Sender<Wake>,
    wake_rx: Receiver<Wake>,
    /// Set when the watch guard drops: the watch thread ends.
    stop: Arc<AtomicBool>,
    registry: Arc<Registry>,
    /// Digest of the files of each loaded plugin, and of each refused attempt, so
    /// the same bad files are not reported again on every scan.
    loaded: BTreeMap<String, String>,
    refused: BTreeMap<String, String>,
    /// The module file each loaded plugin was read from, to see a new one arrive.
    stamps: BTreeMap<String, ModuleStamp>,
    /// Digest of the manifest each loaded plugin runs with.
    manifests: BTreeMap<String, String>,
    /// Manifests changed without their module, already reported (digest).
    waiting_manifests: BTreeMap<String, String>,
}

/// A load in progress: the files' digest, the module file it read, and the
/// manifest's digest, recorded when it is installed.
struct PendingLoad {
    digest: String,
    stamp: Option<ModuleStamp>,
    manifest: String,
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
        let (wake_tx, wake_rx) = channel();
        let loader = Loader::new(runtime, config.clone(), wake_tx.clone());
        PluginDir {
            dir,
            config,
            loader,
            pending: BTreeMap::new(),
            wake_tx,
            wake_rx,
            stop: Arc::new(AtomicBool::new(false)),
            registry,
            loaded: BTreeMap::new(),
            refused: BTreeMap::new(),
            stamps: BTreeMap::new(),
            manifests: BTreeMap::new(),
            waiting_manifests: BTreeMap::new(),
        }
    }

    /// Brings the registry in step with the folder: installs the loads that have
    /// finished, unloads removed plugins, and starts loading new or changed files.
    /// Returns how many plugins changed now.
    pub fn scan(&mut self) -> usize {
        let mut changed = self.install_finished();
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
                return changed;
            }
        }
        let gone: Vec<String> = self.loaded.keys().filter(|n| !present.contains_key(*n)).cloned().collect();
        for name in gone {
            self.loaded.remove(&name);
            self.stamps.remove(&name);
            self.manifests.remove(&name);
            self.waiting_manifests.remove(&name);
            self.pending.remove(&name);
            if self.registry.remove(&name) {
                tracing::info!(plugin = %name, "plugin unloaded: its .wasm file was removed");
                changed += 1;
            }
        }
        self.refused.retain(|n, _| present.contains_key(n));
        self.pending.retain(|n, _| present.contains_key(n));
        for (name, wasm_path) in present {
            let manifest_path = wasm_path.with_extension("toml");
            // A module past the size limit is refused before it is read into memory.
            let limit = CompileBudget::from_ceilings(&self.config.limits).module_bytes;
            if let Ok(meta) = std::fs::metadata(&wasm_path) {
                let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
                if size > limit {
                    let stamp = format!("size:{size}:{:?}", meta.modified().ok());
                    let why = LoadError::TooLarge { size, limit };
                    self.refuse(&name, stamp, &format!("{}: {why}", wasm_path.display()));
                    continue;
                }
            }
            let stamp = ModuleStamp::of(&wasm_path);
            if self.loaded.contains_key(&name) && stamp.is_some() && self.stamps.get(&name) == stamp.as_ref() {
                self.note_waiting_manifest(&name, &manifest_path);
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
            if self.loaded.get(&name) == Some(&digest)
                || self.refused.get(&name) == Some(&digest)
                || self.pending.get(&name).map(|p| &p.digest) == Some(&digest)
            {
                continue;
            }
            let manifest = text_digest(files.manifest_text.as_bytes());
            self.pending.insert(name.clone(), PendingLoad { digest: digest.clone(), stamp, manifest });
            self.loader.start(name, digest, files);
        }
        changed
    }

    /// Installs (or refuses) every load that has finished. Returns how many
    /// plugins changed.
    fn install_finished(&mut self) -> usize {
        let mut changed = 0;
        while let Some(done) = self.loader.try_next() {
            changed += self.finish(done);
        }
        changed
    }

    /// Installs a finished load if it is still wanted (its file is there and no
    /// newer version was started since). Returns 1 if a plugin changed.
    fn finish(&mut self, done: Loaded) -> usize {
        let Loaded { name, digest, result, ms } = done;
        if self.pending.get(&name).map(|p| &p.digest) != Some(&digest) {
            tracing::debug!(plugin = %name, digest = %digest, "dropping a finished load: a newer version was started, or the file is gone");
            return 0;
        }
        let PendingLoad { stamp, manifest: manifest_digest, .. } = self.pending.remove(&name).expect("checked above");
        match result {
            Ok((code, manifest)) => {
                let caps = self.config.effective_capabilities(&manifest.name, &manifest.capabilities);
                warn_ungranted(&manifest, &caps);
                let replaced = self.loaded.contains_key(&name);
                tracing::info!(
                    plugin = %name,
                    version = %manifest.version,
                    digest = %digest,
                    cached = code.cached,
                    ms,
                    "plugin {}",
                    if replaced { "reloaded" } else { "loaded" }
                );
                crate::metrics::reload(true);
                self.registry.install(code, manifest, caps, digest.clone());
                self.loaded.insert(name.clone(), digest);
                self.refused.remove(&name);
                self.waiting_manifests.remove(&name);
                self.manifests.insert(name.clone(), manifest_digest);
                match stamp {
                    Some(s) => self.stamps.insert(name.clone(), s),
                    None => self.stamps.remove(&name),
                };
                1
            }
            Err(e) => {
                self.refuse(&name, digest, &format!("{e:#}"));
                0
            }
        }
    }

    /// Waits up to `wait` for the loads in progress, installing each as it
    /// finishes. Returns the plugins still loading (they are installed later by
    /// the watch thread).
    pub fn settle(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        while !self.pending.is_empty() {
            match self.loader.next_until(deadline) {
                Some(done) => {
                    self.finish(done);
                }
                None => break,
            }
        }
        self.pending.keys().cloned().collect()
    }

    /// Names of the plugins in the folder now (`NAME.wasm`), loaded or not.
    pub fn names_in_folder(&self) -> Vec<String> {
        let mut names: Vec<String> = self.loaded.keys().chain(self.refused.keys()).chain(self.pending.keys()).cloned().collect();
        names.sort();
        names.dedup();
        names
    }

    /// A loaded plugin whose module did not change: if its manifest did, say once
    /// that it waits for the module (the commit point of a deploy).
    fn note_waiting_manifest(&mut self, name: &str, manifest_path: &Path) {
        let Ok(text) = std::fs::read(manifest_path) else { return };
        let digest = text_digest(&text);
        let Some(loaded) = self.registry.get(name) else { return };
        if self.waiting_manifests.get(name) == Some(&digest) || self.manifests.get(name) == Some(&digest) {
            return;
        }
        tracing::warn!(
            plugin = %name,
            version = %loaded.version,
            "{} changed but {name}.wasm did not: the manifest takes effect when the module is renamed into place \
             (or touched); until then the running module keeps the manifest it was deployed with",
            manifest_path.display()
        );
        self.waiting_manifests.insert(name.to_string(), digest);
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
        crate::metrics::reload(false);
        self.refused.insert(name.to_string(), digest);
    }

    /// Watches the folder and rescans after each burst of changes (and after each
    /// finished load). Runs until the returned guard is dropped. With `watch_files`
    /// false, only installs the loads still in progress.
    pub fn watch(self) -> anyhow::Result<WatchGuard> {
        self.watch_with(true)
    }

    pub fn watch_with(mut self, watch_files: bool) -> anyhow::Result<WatchGuard> {
        let watcher = if watch_files {
            let tx = self.wake_tx.clone();
            let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok() {
                    let _ = tx.send(Wake::Files);
                }
            })?;
            watcher
                .watch(&self.dir, RecursiveMode::NonRecursive)
                .map_err(|e| anyhow::anyhow!("cannot watch plugin folder {}: {e}", self.dir.display()))?;
            Some(watcher)
        } else {
            None
        };
        let debounce = Duration::from_millis(self.config.plugins.debounce_ms);
        let (stop, wake) = (self.stop.clone(), self.wake_tx.clone());
        let thread = std::thread::Builder::new().name("oplet-reload".into()).spawn(move || {
            while let Ok(wake) = self.wake_rx.recv() {
                if self.stop.load(Ordering::SeqCst) {
                    break;
                }
                if wake == Wake::Files {
                    // Wait for a quiet moment: a file still being written keeps
                    // firing. A load that finishes meanwhile is installed at once.
                    while let Ok(w) = self.wake_rx.recv_timeout(debounce) {
                        if w == Wake::Loaded {
                            self.install_finished();
                        }
                    }
                    if watch_files {
                        self.scan();
                    }
                }
                self.install_finished();
            }
        })?;
        Ok(WatchGuard { _watcher: watcher, _thread: thread, stop, wake })
    }
}

/// What wakes the watch thread: a change in the folder (debounced), or a load
/// that finished (installed at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Files,
    Loaded,
}

/// Keeps the folder watch alive.
pub struct WatchGuard {
    _watcher: Option<notify::RecommendedWatcher>,
    _thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    wake: Sender<Wake>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(Wake::Files);
    }
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
