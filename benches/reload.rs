//! Hot reload, measured: how long after a plugin file is renamed into the watched
//! folder the new version is live, with the compiled-module cache warm and cold.
//! Baseline in the same run: a cold compile with Cranelift. Prints figures.
//! Run: `cargo bench -p oplet-benches --bench reload`.

use oplet::config::Config;
use oplet::deadletter::DeadLetters;
use oplet::effect::{Effects, Executors};
use oplet::router::{Registry, WorkerContext};
use oplet::plugins::reload::PluginDir;
use oplet::runtime::Runtime;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _guard = rt.enter();
    let dir = oplet_tests::temp_dir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let debounce_ms = 20;
    let config = format!("state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = {debounce_ms}\n");
    let config = Arc::new(Config::parse(&config, &[], dir.path()).unwrap());
    let runtime = Arc::new(Runtime::new(Some(dir.path().join("state/cache"))).unwrap());
    let dead = Arc::new(DeadLetters::open(&dir.path().join("dead.jsonl")).unwrap());
    let effects = Arc::new(Effects::new(Executors::default(), dead.clone()));
    let ctx = Arc::new(WorkerContext { effects, dead, delivery: Default::default(), halt: Arc::new(tokio::sync::Notify::new()) });
    let registry = Registry::new(ctx);
    let _watch = PluginDir::new(runtime.clone(), config.clone(), registry.clone()).watch().unwrap();

    let wasm = std::fs::read(oplet_tests::wasm_plugins().path("cache-invalidate")).unwrap();
    // Each round deploys the same module under a new name: the first compiles, the
    // rest hit the cache. A variant with a custom section forces a cold compile.
    let deploy = |name: &str, bytes: &[u8]| -> f64 {
        std::fs::write(plugins.join(format!("{name}.toml")), format!("name = \"{name}\"\n")).unwrap();
        let tmp = plugins.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        let start = Instant::now();
        std::fs::rename(&tmp, plugins.join(format!("{name}.wasm"))).unwrap();
        while registry.get(name).is_none() {
            assert!(start.elapsed() < Duration::from_secs(60), "{name} never went live");
            std::thread::sleep(Duration::from_micros(200));
        }
        start.elapsed().as_secs_f64() * 1000.0
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..7 {
        let mut variant = wasm.clone();
        // A custom section changes the bytes (so the cache misses) but not the code.
        let payload = format!("bench{i}");
        variant.push(0);
        variant.push((1 + 5 + payload.len()) as u8);
        variant.push(5);
        variant.extend_from_slice(b"oplet");
        variant.extend_from_slice(payload.as_bytes());
        cold.push(deploy(&format!("cold{i}"), &variant));
        warm.push(deploy(&format!("warm{i}"), &variant));
    }
    let (c, w) = (median(cold), median(warm));
    println!("hot reload, rename -> live (median of 7, debounce {debounce_ms} ms, module {} KiB):", wasm.len() / 1024);
    println!("  cold (Cranelift compile): {c:8.1} ms");
    println!("  cached (deserialize):     {w:8.1} ms   ({:.1}x faster than cold)", c / w);
    let _ = Path::new(".");
}
