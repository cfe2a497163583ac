//! Per-event cost of plugins written in AssemblyScript (pdk/assemblyscript), beside
//! the same work in Rust measured in the same run: the host's own part (a WAT module
//! that decodes nothing), the no-op plugins (the PDK's and the SDK's fixed cost per
//! call, the AS one under each `--runtime`), and paid-orders vs the Rust `hello` (read
//! three fields lazily, build one audit record). Read the figures as ratios.
//! Run: `cargo bench -p oplet-benches --bench as_plugin` (needs `npm ci` in pdk/assemblyscript).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oplet::manifest::Manifest;
use oplet::runtime::{Limits, PluginCode, Runtime};
use oplet_sdk::{Change, Effect, Event, EventBody, OperationType, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `entry` (relative to the repository) with the PDK's pinned `asc`, as
/// tests/scenarios/assemblyscript.rs does, into a folder removed after the run.
fn asc(entry: &str, out: &Path, extra: &[&str]) -> Vec<u8> {
    let root = oplet_tests::repo_root();
    let pdk = root.join("pdk/assemblyscript");
    let asc = pdk.join("node_modules/.bin/asc");
    assert!(asc.exists(), "{} is missing: run scripts/setup.sh (npm ci in pdk/assemblyscript)", asc.display());
    let status = Command::new(&asc)
        .current_dir(&pdk)
        .arg(root.join(entry))
        .arg("-o")
        .arg(out)
        .args(["--optimizeLevel", "3", "--shrinkLevel", "1", "--noAssert", "--use", "abort=../../pdk/assemblyscript/assembly/abi/opletAbort"])
        .args(extra)
        .status()
        .expect("run asc (node is needed)");
    assert!(status.success(), "asc {entry} failed: {status}");
    std::fs::read(out).unwrap()
}

fn load(runtime: &Runtime, wasm: &[u8], manifest: &str) -> PluginCode {
    let manifest = Manifest::from_toml(manifest, Path::new("bench.toml")).unwrap();
    PluginCode::load(runtime, &manifest.name, wasm, Limits::default(), &manifest.config_value()).unwrap()
}

/// An order update that sets `status` to `status` (paid-orders and hello audit "paid").
fn order_update(status: &str) -> Event {
    let id = Value::Map([("$oid".to_string(), Value::from("6741a3f0c2e4b0a1b2c3d401"))].into());
    let doc: oplet_sdk::Map = [
        ("_id".to_string(), id.clone()),
        ("customer".to_string(), Value::from("ada")),
        ("status".to_string(), Value::from(status)),
        ("total".to_string(), Value::Float(42.5)),
    ]
    .into();
    Event {
        seq: 2,
        id: "bench".into(),
        source: "mongo".into(),
        time_ms: 1_732_370_060_000,
        body: EventBody::Change(Change {
            op: OperationType::Update,
            db: "app".into(),
            coll: "orders".into(),
            key: Value::Map([("_id".to_string(), id)].into()),
            full_document: Some(Value::Map(doc)),
            updated_fields: Some([("status".to_string(), Value::from(status))].into()),
            removed_fields: Some(vec![]),
            before: None,
        }),
    }
}

fn as_plugin(c: &mut Criterion) {
    let runtime = Runtime::new(None).unwrap();
    let build = std::env::temp_dir().join(format!("oplet-bench-as-{}", std::process::id()));
    std::fs::create_dir_all(&build).unwrap();
    let out = |n: &str| -> PathBuf { build.join(n) };
    let as_noop = asc("plugins/testing/as-noop/index.ts", &out("as-noop.wasm"), &[]);
    // The same no-op under the other runtimes: `minimal` collects only when asked
    // (the PDK then collects once per event), `stub` never frees (a bounded bench only).
    let as_noop_minimal = asc("plugins/testing/as-noop/index.ts", &out("as-noop-minimal.wasm"), &["--runtime", "minimal"]);
    // The PDK's call and reply without reading the event: splits the no-op's cost.
    let as_reply_only = asc("plugins/testing/as-noop/reply-only.ts", &out("as-reply-only.wasm"), &[]);
    let as_paid = asc("examples/as-plugin/assembly/index.ts", &out("paid-orders.wasm"), &[]);
    std::fs::remove_dir_all(&build).unwrap();
    let rust = |name: &str| std::fs::read(oplet_tests::wasm_plugins().path(name)).unwrap();

    // Encoded once, as a source does; every call reads the same bytes.
    let encoded = oplet::envelope::Event::encode(&order_update("paid")).unwrap();
    let event = encoded.bytes();
    let mut g = c.benchmark_group("as_plugin");
    g.throughput(Throughput::Elements(1));

    // The host's own part: a hand-written module that decodes nothing.
    let mut inst = load(&runtime, &rust("wat-plugin"), "name = \"wat-plugin\"\n").new_instance().unwrap();
    inst.handle(event).unwrap();
    g.bench_function("host_side_only_wat", |b| b.iter(|| inst.handle(event).unwrap()));

    // The baseline: the Rust SDK's no-op, then the PDK's.
    let mut inst = load(&runtime, &rust("noop"), "name = \"noop\"\n").new_instance().unwrap();
    assert_eq!(inst.handle(event).unwrap(), vec![]);
    g.bench_function("rust_noop", |b| b.iter(|| inst.handle(event).unwrap()));
    let mut inst = load(&runtime, &as_noop, "name = \"as-noop\"\n").new_instance().unwrap();
    assert_eq!(inst.handle(event).unwrap(), vec![]);
    g.bench_function("as_noop", |b| b.iter(|| inst.handle(event).unwrap()));
    let mut inst = load(&runtime, &as_reply_only, "name = \"as-reply-only\"\n").new_instance().unwrap();
    assert_eq!(inst.handle(event).unwrap(), vec![]);
    g.bench_function("as_reply_only_no_event_read", |b| b.iter(|| inst.handle(event).unwrap()));
    let mut inst = load(&runtime, &as_noop_minimal, "name = \"as-noop\"\n").new_instance().unwrap();
    assert_eq!(inst.handle(event).unwrap(), vec![]);
    g.bench_function("as_noop_runtime_minimal", |b| b.iter(|| inst.handle(event).unwrap()));

    // The same plugin in both languages: one audit record for the paid order.
    let mut inst = load(&runtime, &rust("hello"), "name = \"hello\"\n[config]\npaid_status = \"paid\"\n").new_instance().unwrap();
    assert!(matches!(inst.handle(event).unwrap().as_slice(), [Effect::Audit { .. }]));
    g.bench_function("rust_hello_paid_order", |b| b.iter(|| inst.handle(event).unwrap()));
    let mut inst = load(&runtime, &as_paid, "name = \"paid-orders\"\n[config]\npaid_status = \"paid\"\n").new_instance().unwrap();
    assert!(matches!(inst.handle(event).unwrap().as_slice(), [Effect::Audit { .. }]));
    g.bench_function("as_paid_orders_paid_order", |b| b.iter(|| inst.handle(event).unwrap()));
    g.finish();
}

criterion_group!(benches, as_plugin);
criterion_main!(benches);
