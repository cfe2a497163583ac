//! The per-event path, measured: call the plugin on the event's bytes (encoded once
//! by the source, shared by every plugin), decode the reply, check the effects'
//! capabilities; and the router end to end with one, two and four plugins.
//! Baseline in the same run: the codec alone (no wasm), so figures read as ratios
//! on a noisy shared machine.
//! Run: `cargo bench -p oplet-benches --bench per_event`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use oplet::checkpoint::Tracker;
use oplet::config::DeliveryConfig;
use oplet::deadletter::DeadLetters;
use oplet::effect::{self, Effects, Executors};
use oplet::envelope::{self, Envelope};
use oplet::manifest::{Capabilities, Manifest};
use oplet::router::{Registry, WorkerContext};
use oplet::runtime::{Limits, PluginCode, Runtime};
use oplet_sdk::{codec, Change, Event, EventBody, Map, OperationType, Reply, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A change event whose document is about `bytes` long in MessagePack.
fn event_with_doc(bytes: usize) -> Event {
    let mut doc = Map::new();
    doc.insert("_id".into(), Value::Map([("$oid".to_string(), Value::from("6741a3f0c2e4b0a1b2c3d401"))].into()));
    doc.insert("uuid".into(), Value::from("c0ffee00-1234-5678-9abc-def012345678"));
    doc.insert("connection".into(), Value::Bool(true));
    let mut i = 0;
    while codec::encode(&Value::Map(doc.clone())).unwrap().len() < bytes {
        doc.insert(format!("field_{i:03}"), Value::from(format!("value number {i} of the document")));
        i += 1;
    }
    Event {
        seq: 1,
        id: "bench".into(),
        source: "mongo".into(),
        time_ms: 1_732_370_000_000,
        body: EventBody::Change(Change {
            op: OperationType::Update,
            db: "app".into(),
            coll: "clients".into(),
            key: Value::Map([("_id".to_string(), doc["_id"].clone())].into()),
            full_document: Some(Value::Map(doc)),
            ..Default::default()
        }),
    }
}

fn load(runtime: &Runtime, name: &str, manifest: &str) -> (PluginCode, Manifest) {
    let wasm = std::fs::read(oplet_tests::wasm_plugins().path(name)).unwrap();
    let manifest = Manifest::from_toml(manifest, Path::new("bench.toml")).unwrap();
    let code = PluginCode::load(runtime, &manifest.name, &wasm, Limits::default(), &manifest.config_value()).unwrap();
    (code, manifest)
}

const CACHE_MANIFEST: &str = r#"
name = "cache-invalidate"
[capabilities]
cache_prefixes = ["client:"]
[[config.rules]]
namespace = "app.clients"
keys = ["client:{uuid}"]
"#;

fn per_event(c: &mut Criterion) {
    let runtime = Runtime::new(None).unwrap();
    // Encoded once, as a source does; every call below reads the same bytes.
    let small = envelope::Event::encode(&event_with_doc(64)).unwrap();
    let doc_1k_owned = event_with_doc(1024);
    let doc_1k = envelope::Event::encode(&doc_1k_owned).unwrap();
    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(1));

    // Baseline: what any host must do with no sandbox at all.
    g.bench_function("baseline_codec_only_1kb", |b| {
        let reply = codec::encode(&Reply::Ok { effects: vec![oplet_sdk::Effect::cache_delete(["client:x"])] }).unwrap();
        let mut buf = Vec::new();
        b.iter(|| {
            buf.clear();
            codec::encode_into(&mut buf, &doc_1k_owned).unwrap();
            let back: Event = codec::decode(&buf).unwrap();
            let r: Reply = codec::decode(&reply).unwrap();
            (back.seq, r)
        })
    });

    // What a source pays once per event, whatever the number of plugins.
    let small_owned = event_with_doc(64);
    g.bench_function("encode_once_small_event", |b| b.iter(|| envelope::Event::encode(&small_owned).unwrap()));

    // Host side alone: a hand-written WAT plugin that never decodes its input.
    let (wat, _) = load(&runtime, "wat-plugin", "name = \"wat-plugin\"\n");
    let mut inst = wat.new_instance().unwrap();
    g.bench_function("host_side_only_wat_plugin_small_event", |b| b.iter(|| inst.handle(small.bytes()).unwrap()));

    let (noop, _) = load(&runtime, "noop", "name = \"noop\"\n");
    let mut inst = noop.new_instance().unwrap();
    g.bench_function("noop_plugin_small_event", |b| b.iter(|| inst.handle(small.bytes()).unwrap()));

    let (ci, manifest) = load(&runtime, "cache-invalidate", CACHE_MANIFEST);
    let mut inst = ci.new_instance().unwrap();
    let caps: Capabilities = manifest.capabilities.clone();
    let effects = inst.handle(doc_1k.bytes()).unwrap();
    assert_eq!(effects, vec![oplet_sdk::Effect::cache_delete(["client:c0ffee00-1234-5678-9abc-def012345678"])]);
    g.bench_function("cache_invalidate_1kb_doc_one_effect", |b| {
        b.iter(|| {
            let effects = inst.handle(doc_1k.bytes()).unwrap();
            effects.iter().all(|e| effect::check(e, &caps).is_ok())
        })
    });
    g.finish();
}

/// Events through the whole router: source queue, dispatcher thread, plugin
/// queue, worker thread, wasm call, effect routing and ticket release. Compare with the bare calls of
/// the same plugins measured just before (`per_event/noop_plugin_small_event`,
/// `per_event/host_side_only_wat_plugin_small_event`): the issue's target is router
/// end to end <= 2x the bare call, with two plugins subscribed to every event; and
/// four WAT plugins (host side only) against one: < 4x, the event being shared.
fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    for (label, plugins) in [
        ("noop_plugin_10k_events_end_to_end", &["noop"][..]),
        ("two_noop_plugins_10k_events_end_to_end", &["noop", "noop"][..]),
        ("two_wat_plugins_10k_events_end_to_end", &["wat-plugin", "wat-plugin"][..]),
        ("one_wat_plugin_10k_events_end_to_end", &["wat-plugin"][..]),
        ("four_wat_plugins_10k_events_end_to_end", &["wat-plugin", "wat-plugin", "wat-plugin", "wat-plugin"][..]),
    ] {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let runtime = Runtime::new(None).unwrap();
        let dir = oplet_tests::temp_dir();
        let dead = Arc::new(DeadLetters::open(&dir.path().join("dead.jsonl")).unwrap());
        let _guard = rt.enter();
        let effects = Arc::new(Effects::new(Executors::default(), dead.clone()));
        let ctx = Arc::new(WorkerContext { effects, dead, delivery: DeliveryConfig::default(), halt: Arc::new(tokio::sync::Notify::new()) });
        let registry = Registry::new(ctx);
        for (i, wasm) in plugins.iter().enumerate() {
            let (code, manifest) = load(&runtime, wasm, &format!("name = \"p{i}\"\n[[subscribe]]\n"));
            registry.install(code, manifest, Capabilities::default(), "bench".into());
        }
        let event = Arc::new(envelope::Event::encode(&event_with_doc(64)).unwrap());
        g.bench_function(label, |b| {
            b.iter_batched(
                || (),
                |()| {
                    let tracker = Tracker::new("bench", 1, None);
                    let (tx, rx) = tokio::sync::mpsc::channel(1024);
                    let d = registry.spawn_dispatcher("bench", rx).unwrap();
                    rt.block_on(async {
                        for seq in 1..=N {
                            let ticket = tracker.ticket(seq, None);
                            tx.send(Envelope { event: event.clone(), ticket }).await.unwrap();
                        }
                    });
                    drop(tx);
                    d.join().unwrap();
                    let start = Instant::now();
                    while tracker.completed() < N {
                        assert!(start.elapsed() < Duration::from_secs(30));
                        std::thread::yield_now();
                    }
                },
                BatchSize::PerIteration,
            )
        });
        registry.shutdown();
    }
    g.finish();
}

criterion_group!(benches, per_event, router);
criterion_main!(benches);
