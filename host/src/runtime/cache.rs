//! On-disk cache of compiled modules, keyed by content hash and engine config.
//!
//! Cranelift takes milliseconds to seconds per module; deserializing a cached
//! artifact takes almost nothing, so restarts and reloads of unchanged code are
//! fast. The key covers the wasm bytes and wasmtime's compatibility hash (version
//! and engine settings), so a new wasmtime or config never reads a stale entry.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::{Engine, Module};

pub struct ModuleCache {
    dir: PathBuf,
    engine_key: u64,
}

impl ModuleCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> std::io::Result<ModuleCache> {
        std::fs::create_dir_all(&dir)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ModuleCache { dir, engine_key: h.finish() })
    }

    fn path_for(&self, wasm: &[u8]) -> PathBuf {
        let mut d = Sha256::new();
        d.update(self.engine_key.to_le_bytes());
        d.update(wasm);
        self.dir.join(format!("{}.cwasm", hex::encode(d.finalize())))
    }

    /// A cached module for these bytes, or a fresh compile (then cached).
    pub fn get_or_compile(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<(Module, bool)> {
        let path = self.path_for(wasm);
        if path.exists() {
            // SAFETY: files in this directory are written only by `store` below from
            // `Module::serialize` of this engine configuration (the name includes its
            // compatibility hash); wasmtime still checks the header and version.
            match unsafe { Module::deserialize_file(engine, &path) } {
                Ok(m) => return Ok((m, true)),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable module cache entry: {e:#}"),
            }
        }
        let module = Module::new(engine, wasm)?;
        if let Err(e) = store(&path, &module) {
            tracing::warn!(path = %path.display(), "could not write module cache entry: {e:#}");
        }
        Ok((module, false))
    }
}

fn store(path: &Path, module: &Module) -> anyhow::Result<()> {
    let bytes = module.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
