//! Builds the guest plugins once per test process and deploys them into a plugin
//! folder. [`wasm_plugins`] runs a nested `cargo build --target wasm32-unknown-unknown`
//! of `plugins/` and `examples/hello-plugin/` into `target/wasm` (its own target dir,
//! so it never waits on the outer build's lock) and compiles every test `.wat` file.
//! [`install_plugin`] deploys the way users should: write aside, then rename.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::require::{cargo, require, Service};

/// The built plugin modules, by name.
///
/// Names are crate names with dashes (`cache-invalidate`, `noop`, `garbage-reply`,
/// `hello`); a `.wat` file is named by its file stem (`plugins/testing/wat/trap.wat` is
/// `trap`), except that a file called `plugin.wat` takes its folder's name
/// (`examples/wat-plugin/plugin.wat` is `wat-plugin`). Dashes and underscores are the
/// same in a name: files on disk use underscores (`cache_invalidate.wasm`).
#[derive(Debug)]
pub struct WasmPlugins {
    dir: PathBuf,
    modules: BTreeMap<String, PathBuf>,
}

impl WasmPlugins {
    /// The `.wasm` file of plugin `name`; panics, listing the known names, if no such
    /// plugin was built.
    pub fn path(&self, name: &str) -> PathBuf {
        self.modules.get(&key(name)).cloned().unwrap_or_else(|| {
            panic!(
                "no wasm plugin named {name:?} was built; built: {:?} (in {})",
                self.names(),
                self.dir.display()
            )
        })
    }

    /// Whether plugin `name` was built.
    pub fn has(&self, name: &str) -> bool {
        self.modules.contains_key(&key(name))
    }

    /// Every built plugin name, with dashes.
    pub fn names(&self) -> Vec<String> {
        self.modules.keys().map(|k| k.replace('_', "-")).collect()
    }

    /// The folder that holds the built modules.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Builds every guest plugin once per process (see [`WasmPlugins`] for the names).
/// Parts of the tree that do not exist yet are left out; a build that fails panics
/// with cargo's output.
pub fn wasm_plugins() -> &'static WasmPlugins {
    static PLUGINS: OnceLock<WasmPlugins> = OnceLock::new();
    PLUGINS.get_or_init(|| build().unwrap_or_else(|e| panic!("building the wasm plugins: {e:#}")))
}

fn key(name: &str) -> String {
    name.replace('-', "_")
}

fn build() -> Result<WasmPlugins> {
    let started = Instant::now();
    let root = crate::repo_root();
    let target_dir = root.join("target").join("wasm");
    let dir = target_dir.join("wasm32-unknown-unknown").join("release");
    let mut modules = BTreeMap::new();
    for manifest in [root.join("plugins/Cargo.toml"), root.join("examples/hello-plugin/Cargo.toml")] {
        if manifest.exists() {
            for (name, path) in cargo_build_wasm(&manifest, &target_dir)? {
                modules.insert(key(&name), path);
            }
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for wat_dir in [root.join("plugins/testing/wat"), root.join("examples/wat-plugin")] {
        for source in wat_files(&wat_dir)? {
            let name = wat_name(&source);
            let out = dir.join(format!("{}.wasm", key(&name)));
            let bytes = wat::parse_file(&source)
                .with_context(|| format!("compile {}", source.display()))?;
            write_atomically(&out, &bytes)?;
            modules.insert(key(&name), out);
        }
    }
    eprintln!(
        "[oplet-tests] wasm plugins {:?} ready in {:?}",
        modules.keys().collect::<Vec<_>>(),
        started.elapsed()
    );
    Ok(WasmPlugins { dir, modules })
}

/// `cargo build --release --target wasm32-unknown-unknown` of one manifest; returns
/// (target name, .wasm path) of every module it produced.
fn cargo_build_wasm(manifest: &Path, target_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    require(Service::Cargo);
    let out = Command::new(cargo())
        .current_dir(manifest.parent().unwrap_or(Path::new(".")))
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run cargo build for {}", manifest.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "cargo build --target wasm32-unknown-unknown --manifest-path {} failed ({}):\n{}",
            manifest.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut built = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(name) = msg["target"]["name"].as_str() else { continue };
        for file in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(file) = file.as_str().filter(|f| f.ends_with(".wasm")) {
                built.push((name.to_string(), PathBuf::from(file)));
            }
        }
    }
    Ok(built)
}

fn wat_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wat") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `dir/x.wat` is `x`; `dir/plugin.wat` is named after `dir`.
fn wat_name(source: &Path) -> String {
    let stem = source.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    if stem == "plugin" {
        if let Some(parent) = source.parent().and_then(|p| p.file_name()) {
            return parent.to_string_lossy().into_owned();
        }
    }
    stem
}

/// Writes `bytes` to a hidden temporary name in the same folder, then renames it over
/// `dest`, so a watcher never sees a half-written file.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = dest.parent().context("destination has a parent folder")?;
    let file_name = dest.file_name().context("destination has a file name")?.to_string_lossy();
    let tmp = dir.join(format!(
        ".{file_name}.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
    Ok(())
}

/// Deploys built plugin `name` into `dir` as `NAME.wasm` with `NAME.toml` beside it.
/// The manifest goes first, then the module, each written aside and renamed into
/// place, so the host's watcher sees a complete pair. Returns the `.wasm` path.
pub fn install_plugin(dir: &Path, name: &str, manifest_toml: &str) -> PathBuf {
    install_plugin_from(dir, name, &wasm_plugins().path(name), manifest_toml)
}

/// Like [`install_plugin`], with any module file (e.g. one built plugin deployed under
/// another name, or a deliberately broken module).
pub fn install_plugin_from(dir: &Path, name: &str, wasm: &Path, manifest_toml: &str) -> PathBuf {
    let bytes =
        std::fs::read(wasm).unwrap_or_else(|e| panic!("read plugin module {}: {e}", wasm.display()));
    install_plugin_bytes(dir, name, &bytes, manifest_toml)
}

/// Like [`install_plugin`], with the module's bytes.
pub fn install_plugin_bytes(dir: &Path, name: &str, wasm: &[u8], manifest_toml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let wasm_path = dir.join(format!("{name}.wasm"));
    write_atomically(&dir.join(format!("{name}.toml")), manifest_toml.as_bytes())
        .and_then(|()| write_atomically(&wasm_path, wasm))
        .unwrap_or_else(|e| panic!("install plugin {name} into {}: {e:#}", dir.display()));
    wasm_path
}

/// Removes plugin `name` from `dir`: the module first, so the host unloads it, then
/// its manifest. Missing files are not an error.
pub fn remove_plugin(dir: &Path, name: &str) {
    for ext in ["wasm", "toml"] {
        let path = dir.join(format!("{name}.{ext}"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_wat_files() {
        assert_eq!(wat_name(Path::new("/r/plugins/testing/wat/trap.wat")), "trap");
        assert_eq!(wat_name(Path::new("/r/examples/wat-plugin/plugin.wat")), "wat-plugin");
        assert_eq!(key("cache-invalidate"), "cache_invalidate");
    }

    #[test]
    fn installs_a_pair_atomically() {
        let dir = crate::temp_dir();
        let wasm = install_plugin_bytes(dir.path(), "p", b"\0asm", "name = \"p\"\n");
        assert_eq!(std::fs::read(&wasm).unwrap(), b"\0asm");
        assert!(dir.path().join("p.toml").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        remove_plugin(dir.path(), "p");
        assert!(!wasm.exists());
    }
}
