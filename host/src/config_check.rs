//! `oplet config check --config F [--connect]`: everything `oplet run` would
//! refuse, found before a deploy. Parses the config (keys, types, ranges, the
//! `OPLET__` variables), then checks what it names, printing every problem with
//! the file, the key and what is expected; `--connect` also reaches each service.
//! Exit 0: fine; 2: the config or a file it names is wrong; 20: a service unreachable.

use crate::config::{Config, SourceConfig};
use std::path::Path;
use std::process::ExitCode;

/// `config check --connect` found a service it cannot reach.
pub const EXIT_UNREACHABLE: u8 = 20;

pub fn run(path: &Path, connect: bool) -> anyhow::Result<ExitCode> {
    let file = path.display().to_string();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            // Parsing stops at the first bad key: fix it and run the check again.
            println!("problem: {e:#}");
            println!("{file}: 1 problem (the config does not parse; later keys are checked once it does)");
            return Ok(ExitCode::from(crate::exit::Cause::Config.code()));
        }
    };
    let (problems, warnings) = offline(&config, &file);
    for w in &warnings {
        println!("warning: {w}");
    }
    for p in &problems {
        println!("problem: {p}");
    }
    let mut unreachable = 0;
    if connect && problems.is_empty() {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let timeout = std::time::Duration::from_millis(config.admin.as_ref().map(|a| a.probe_timeout_ms).unwrap_or(3000).max(1000));
        let results = rt.block_on(async { crate::admin::probe::Probes::new(&config, timeout).run().await });
        for r in results {
            match r.error {
                None => println!("reachable: {} ({})", r.part, r.target),
                Some(e) => {
                    unreachable += 1;
                    println!("unreachable: {} ({}): {e}", r.part, r.target);
                }
            }
        }
    }
    if !problems.is_empty() {
        println!("{file}: {} problem(s)", problems.len());
        return Ok(ExitCode::from(crate::exit::Cause::Config.code()));
    }
    if unreachable > 0 {
        println!("{file}: valid, but {unreachable} service(s) unreachable");
        return Ok(ExitCode::from(EXIT_UNREACHABLE));
    }
    println!("{file}: ok{}", if connect { ", every service reachable" } else { " (not connected: add --connect to reach the services)" });
    Ok(ExitCode::SUCCESS)
}

/// Every problem found without connecting, each naming the file and key; and
/// warnings: what the host runs with but probably not as meant (a plugin asking
/// for more than it is granted has those effects refused at run time).
pub fn offline(config: &Config, file: &str) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if let Err(e) = crate::plugins::reload::check_plugin_dir(&config.plugins.dir) {
        problems.push(format!("{file}: key plugins.dir: {e:#}"));
    }
    if let Some(p) = writable_problem(&config.state_dir) {
        problems.push(format!("{file}: key state_dir: {p}"));
    }
    if let Some(parent) = config.audit_path().parent() {
        if config.audit.path.is_some() && !parent.is_dir() {
            problems.push(format!("{file}: key audit.path: the folder {} does not exist; create it or choose another path", parent.display()));
        }
    }
    for (i, s) in config.sources.iter().enumerate() {
        if let SourceConfig::Jsonl(j) = s {
            if !j.path.exists() && j.path.as_os_str() != "-" {
                problems.push(format!("{file}: key source[{i}].path (source {:?}): {} does not exist; expected a JSON-lines file", j.name, j.path.display()));
            }
        }
    }
    let mut names = Vec::new();
    if config.plugins.dir.is_dir() {
        let runtime = match crate::runtime::Runtime::new(None) {
            Ok(r) => std::sync::Arc::new(r),
            Err(e) => {
                problems.push(format!("cannot start the wasm runtime to check plugins: {e:#}"));
                return (problems, warnings);
            }
        };
        let mut entries: Vec<_> = std::fs::read_dir(&config.plugins.dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for wasm in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "wasm")) {
            let name = wasm.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            names.push(name.clone());
            let manifest = wasm.with_extension("toml");
            let loaded = crate::plugins::reload::PluginFiles::read(wasm, &manifest).and_then(|f| f.load(&runtime, config));
            match loaded {
                Ok((_, m)) => {
                    let granted = config.effective_capabilities(&name, &m.capabilities);
                    if granted != m.capabilities {
                        warnings.push(format!(
                            "{file}: plugin {name:?} asks for more than [grants] allows: it asks {:?}, the host grants {:?}; add the rest under [grants.{name:?}] or its effects are refused",
                            m.capabilities, granted
                        ));
                    }
                }
                Err(e) => problems.push(format!("plugin {}: {e:#}", wasm.display())),
            }
        }
    }
    for grant in config.unknown_grants(&names) {
        problems.push(format!("{file}: key grants.{grant:?}: no plugin of that name in {} (a typo?)", config.plugins.dir.display()));
    }
    (problems, warnings)
}

/// Why `dir` cannot hold the host's state, if it cannot.
fn writable_problem(dir: &Path) -> Option<String> {
    let mut probe_dir = dir;
    // The nearest folder that exists must be writable: the host creates the rest.
    while !probe_dir.exists() {
        probe_dir = probe_dir.parent()?;
    }
    if !probe_dir.is_dir() {
        return Some(format!("{} is not a folder", probe_dir.display()));
    }
    let probe = probe_dir.join(format!(".oplet-config-check-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!("cannot write in {} ({e}); the host keeps checkpoints and dead letters there", probe_dir.display())),
    }
}
