//! On-disk cache of compiled modules, keyed by content hash and engine config.
//!
//! Cranelift takes milliseconds to seconds per module; deserializing a cached
//! artifact takes almost nothing, so restarts and reloads of unchanged code are
//! fast. The key covers the wasm bytes and wasmtime's compatibility hash (version
//! and engine settings), so a new wasmtime or config never reads a stale entry.
//! Entries are native code the host will run, so the folder (and each entry) must
//! belong to the host's user and be writable by no one else; the cache keeps the
//! entries of loaded plugins plus the `SPARE` most recently used, pruning the rest.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use wasmtime::{Engine, Module};

/// Entries kept beyond those in use: a plugin rolled back to its previous version
/// loads from the cache.
pub const SPARE: usize = 8;

pub struct ModuleCache {
    dir: PathBuf,
    engine_key: u64,
    /// Entries held by loaded code, by file name. An entry with a live lease is
    /// never pruned.
    leases: Mutex<HashMap<String, Weak<Lease>>>,
}

/// Held by a `PluginCode` compiled from (or into) a cache entry.
#[derive(Debug)]
pub struct Lease {
    #[allow(dead_code)]
    file: String,
}

impl ModuleCache {
    /// Creates the folder (mode 0700) if needed and refuses one that another user
    /// owns or that group or others may write.
    pub fn new(dir: PathBuf, engine: &Engine) -> Result<ModuleCache, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create module cache folder {}: {e}", dir.display()))?;
        check_private(&dir).map_err(|why| {
            format!(
                "module cache folder {} {why}; cached modules are loaded as native code, so the host refuses it. \
                 Fix the folder (chown it to this user, chmod 700) or set [plugins] cache = false",
                dir.display()
            )
        })?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ModuleCache { dir, engine_key: h.finish(), leases: Mutex::new(HashMap::new()) })
    }

    fn file_for(&self, wasm: &[u8]) -> String {
        let mut d = Sha256::new();
        d.update(self.engine_key.to_le_bytes());
        d.update(wasm);
        format!("{}.cwasm", hex::encode(d.finalize()))
    }

    fn lease(&self, file: &str) -> Arc<Lease> {
        let mut leases = self.leases.lock().expect("cache leases lock");
        if let Some(l) = leases.get(file).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(Lease { file: file.to_string() });
        leases.insert(file.to_string(), Arc::downgrade(&l));
        l
    }

    /// A cached module for these bytes, or a fresh compile (then cached and the
    /// folder pruned). Returns whether it came from the cache, and the lease that
    /// keeps its entry while the code is loaded.
    pub fn get_or_compile(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<(Module, bool, Arc<Lease>)> {
        let file = self.file_for(wasm);
        let path = self.dir.join(&file);
        let lease = self.lease(&file);
        if path.exists() {
            match check_private(&path) {
                Err(why) => tracing::warn!(path = %path.display(), "ignoring module cache entry that {why}; compiling instead"),
                Ok(()) => {
                    // SAFETY: the entry belongs to this user, is writable by no one
                    // else, in a folder checked the same way, and was written by
                    // `store` from `Module::serialize` of this engine configuration
                    // (its name includes the compatibility hash); wasmtime still
                    // checks the header and version.
                    match unsafe { Module::deserialize_file(engine, &path) } {
                        Ok(m) => {
                            touch(&path);
                            return Ok((m, true, lease));
                        }
                        Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable module cache entry: {e:#}"),
                    }
                }
            }
        }
        let module = Module::new(engine, wasm)?;
        match store(&path, &module) {
            Ok(()) => self.prune(),
            Err(e) => tracing::warn!(path = %path.display(), "could not write module cache entry: {e:#}"),
        }
        Ok((module, false, lease))
    }

    /// Removes entries no loaded code holds, beyond the `SPARE` most recently used,
    /// and temporary files that a crashed write left.
    pub fn prune(&self) {
        let live: Vec<String> = {
            let mut leases = self.leases.lock().expect("cache leases lock");
            leases.retain(|_, l| l.strong_count() > 0);
            leases.keys().cloned().collect()
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut idle = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            if name.ends_with(".cwasm") {
                if !live.contains(&name) {
                    idle.push((modified, e.path()));
                }
            } else if name.contains(".cwasm.tmp") && !name.ends_with(&format!("tmp{}", std::process::id())) {
                // Another process's write in progress is renamed within a second.
                if modified.elapsed().is_ok_and(|age| age.as_secs() > 60) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        idle.sort_by(|a, b| b.0.cmp(&a.0));
        for (_, path) in idle.into_iter().skip(SPARE) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "pruned module cache entry"),
                Err(e) => tracing::warn!(path = %path.display(), "could not prune module cache entry: {e}"),
            }
        }
    }
}

/// `Err(why)` when `path` is not owned by this process's user or is writable by
/// group or others.
fn check_private(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot be read ({e})"))?;
    if meta.file_type().is_symlink() {
        return Err("is a symbolic link".into());
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(format!("is owned by uid {}, not by this user (uid {me})", meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!("is writable by group or others (mode {mode:03o})"));
    }
    Ok(())
}

/// This process's effective user id: from /proc, else the owner of a file it
/// creates (no libc dependency for one call).
fn effective_uid() -> u32 {
    let from_proc = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
        line.split_whitespace().nth(2)?.parse().ok()
    });
    from_proc.unwrap_or_else(|| {
        let probe = std::env::temp_dir().join(format!(".oplet-uid-{}", std::process::id()));
        let uid = std::fs::write(&probe, b"").and_then(|()| std::fs::metadata(&probe)).map(|m| m.uid()).unwrap_or(u32::MAX);
        let _ = std::fs::remove_file(&probe);
        uid
    })
}

/// Marks an entry as just used, for pruning by age of last use.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

fn store(path: &Path, module: &Module) -> anyhow::Result<()> {
    use std::io::Write;
    let bytes = module.serialize()?;
    let tmp = path.with_extension(format!("cwasm.tmp{}", std::process::id()));
    let mut f = std::fs::File::options().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_others_may_write_is_refused() {
        let dir = tempfile_dir();
        let cache = dir.join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        let engine = Engine::default();
        let err = ModuleCache::new(cache.clone(), &engine).err().expect("refused");
        assert!(err.contains("is writable by group or others (mode 777)") && err.contains("cache = false"), "{err}");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        ModuleCache::new(cache, &engine).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn entries_not_in_use_are_pruned_beyond_the_spare_ones() {
        let dir = tempfile_dir();
        let engine = Engine::default();
        let cache = ModuleCache::new(dir.join("cache"), &engine).unwrap();
        let mut held = Vec::new();
        for i in 0..(SPARE + 12) {
            let wasm = wat::parse_str(format!("(module (func (export \"f{i}\")))")).unwrap();
            let (_, cached, lease) = cache.get_or_compile(&engine, &wasm).unwrap();
            assert!(!cached);
            if i < 2 {
                held.push(lease);
            }
        }
        let files = std::fs::read_dir(dir.join("cache")).unwrap().count();
        // The last prune ran while the newest entry was still held by its compile.
        assert_eq!(files, 2 + 1 + SPARE, "the two held entries, the newest, and the {SPARE} most recent others");
        // The held (oldest) entries survived the pruning and still load.
        let wasm = wat::parse_str("(module (func (export \"f0\")))").unwrap();
        assert!(cache.get_or_compile(&engine, &wasm).unwrap().1, "a held entry is kept");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "oplet-cache-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
