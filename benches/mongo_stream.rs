//! The MongoDB source end to end, beside the baseline the seed guides teach (pymongo
//! `watch()` with a Python callback, `pymongo_watch.py`), in one run against the
//! same server (nx-27017, or `OPLET_TEST_MONGODB_URI`):
//!
//! A third watcher gives the floor for any host built on the official Rust driver:
//! this bench binary re-run as `driver-floor`, which reads the same change stream as
//! raw documents with the `mongodb` crate, the way the host opens it, and does
//! nothing else (no mapping, no plugin).
//!
//! 1. idle: CPU while nothing is written;
//! 2. throughput: N documents in `insert_many`s of 10,000, then an update as end marker;
//!    both watchers drain the same changes; events/s into the `noop` plugin and CPU
//!    time per event of each process (from /proc, the same way for both);
//! 3. latency: M single inserts at a steady rate carrying the writer's clock; the
//!    baseline's callback notes write → callback, Oplet's `echo` plugin writes an
//!    audit record and this bench notes write → record on disk (an upper bound of
//!    write → plugin: it includes the audit batch and its fsync).
//!
//! Run: `cargo bench -p oplet-benches --bench mongo_stream` (`-- N M RATE [PAUSE_MS]`
//! to change the defaults 20000 2000 500, and set the source's `idle_pause_min_ms`).

use mongodb::bson::{doc, Document};
use oplet_tests::{install_plugin, install_plugin_from, wasm_plugins, Mongo, Oplet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if args.first().map(String::as_str) == Some(FLOOR) {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        return rt.block_on(driver_floor(&args[1], &args[2], &args[3]));
    }
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (n, m, rate) = (arg(0, 20_000), arg(1, 2_000), arg(2, 500));
    let pause = args.get(3).map(|p| format!("idle_pause_min_ms = {p}\n")).unwrap_or_default();
    // Keep nx-27017's INFO logging out of the measurement.
    std::env::set_var("OPLET_TEST_NX_LOG_LEVEL", "WARNING");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(n, m, rate, &pause));
}

async fn run(n: u64, m: u64, rate: u64, extra: &str) {
    let mongo = Mongo::start();
    let uri = mongo.uri();
    let client = mongo.client().await;
    let db = format!("bench_{}", std::process::id());
    let items = client.database(&db).collection::<Document>("items");
    let lat = client.database(&db).collection::<Document>("lat");

    let dir = oplet_tests::temp_dir();
    let plugins = dir.path().join("plugins");
    install_plugin(&plugins, "noop", &format!("name = \"noop\"\n[[subscribe]]\nnamespaces = [\"{db}.items\"]\noperations = [\"insert\"]\n"));
    let echo = wasm_plugins().path("echo");
    let audited = |name: &str, subscribe: &str| format!("name = \"{name}\"\n[[subscribe]]\n{subscribe}\n[capabilities]\naudit = true\n");
    install_plugin_from(&plugins, "marker", &echo, &audited("marker", &format!("namespaces = [\"{db}.items\"]\noperations = [\"update\"]")));
    install_plugin_from(&plugins, "lat", &echo, &audited("lat", &format!("namespaces = [\"{db}.lat\"]")));
    let config = dir.path().join("oplet.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\nall_requested = true\n\
             [[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{uri}\"\ncollections = [\"{db}.items\", \"{db}.lat\"]\n{extra}"
        ),
    )
    .unwrap();
    let oplet = Oplet::start(&config);
    while oplet.logs().matches("watching the change stream").count() < 2 {
        assert!(oplet.is_running(), "oplet exited:\n{}", oplet.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = dir.path().join("state");
    let opid = oplet.pid();

    // 1. idle
    let mut base = Watcher::pymongo(&uri, &db, "items");
    let mut floor = Watcher::driver_floor(&uri, &db, "items");
    let idle = Duration::from_secs(3);
    let (o0, b0, f0) = (oplet_tests::cpu_seconds(opid), oplet_tests::cpu_seconds(base.pid()), oplet_tests::cpu_seconds(floor.pid()));
    tokio::time::sleep(idle).await;
    let (o_idle, b_idle, f_idle) = (oplet_tests::cpu_seconds(opid) - o0, oplet_tests::cpu_seconds(base.pid()) - b0, oplet_tests::cpu_seconds(floor.pid()) - f0);

    // 2. throughput
    let docs: Vec<Document> = (0..n).map(|i| doc! { "_id": format!("i{i:07}"), "i": i as i64, "pad": "x".repeat(64) }).collect();
    let (o0, b0, f0) = (oplet_tests::cpu_seconds(opid), oplet_tests::cpu_seconds(base.pid()), oplet_tests::cpu_seconds(floor.pid()));
    let threads0 = oplet_tests::cpu_by_thread(opid);
    let started = Instant::now();
    // In inserts of 10,000: one huge insert_many can stall nx-27017 past the
    // driver's server-monitor timeout on a loaded machine.
    for chunk in docs.chunks(10_000) {
        items.insert_many(chunk).await.unwrap();
    }
    let inserted = started.elapsed();
    items.update_one(doc! { "_id": format!("i{:07}", n - 1) }, doc! { "$set": { "done": true } }).await.unwrap();
    let (mut o_done, mut b_done, mut f_done) = (None, None, None);
    while o_done.is_none() || b_done.is_none() || f_done.is_none() {
        if o_done.is_none() && oplet_caught_up(&state, &db, "marker") {
            o_done = Some((started.elapsed(), oplet_tests::cpu_seconds(opid) - o0));
        }
        if b_done.is_none() {
            if let Some(summary) = base.summary() {
                assert_eq!(summary["events"], n, "the baseline saw every insert");
                b_done = Some((started.elapsed(), oplet_tests::cpu_seconds(base.pid()) - b0));
            }
        }
        if f_done.is_none() {
            if let Some(summary) = floor.summary() {
                assert_eq!(summary["events"], n, "the driver floor saw every insert");
                f_done = Some((started.elapsed(), oplet_tests::cpu_seconds(floor.pid()) - f0));
            }
        }
        assert!(started.elapsed() < Duration::from_secs(600), "throughput phase did not finish:\n{}", oplet.logs());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (o_done, b_done, f_done) = (o_done.unwrap(), b_done.unwrap(), f_done.unwrap());
    let threads_throughput = thread_delta(&threads0, &oplet_tests::cpu_by_thread(opid));
    drop(base);
    drop(floor);

    // 3. latency
    let mut base = Watcher::pymongo(&uri, &db, "lat");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tail = AuditTail::start(state.join("audit.jsonl"), "lat");
    let (o0, b0) = (oplet_tests::cpu_seconds(opid), oplet_tests::cpu_seconds(base.pid()));
    let threads0 = oplet_tests::cpu_by_thread(opid);
    let started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..m {
        let due = started + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        lat.insert_one(doc! { "_id": format!("l{i:07}"), "t": now_ms() }).await.unwrap();
    }
    let wrote = started.elapsed();
    // The end marker; `t` cleared so that its record is no latency sample.
    lat.update_one(doc! { "_id": "l0000000" }, doc! { "$set": { "done": true, "t": null } }).await.unwrap();
    let mut oplet_lat = Vec::new();
    let (mut o_cpu, mut b_summary, mut b_cpu) = (None, None, None);
    while o_cpu.is_none() || b_summary.is_none() {
        oplet_lat.extend(tail.take());
        if o_cpu.is_none() && oplet_lat.len() as u64 >= m {
            o_cpu = Some((oplet_tests::cpu_seconds(opid) - o0, thread_delta(&threads0, &oplet_tests::cpu_by_thread(opid))));
        }
        if b_summary.is_none() {
            if let Some(s) = base.summary() {
                b_cpu = Some(oplet_tests::cpu_seconds(base.pid()) - b0);
                b_summary = Some(s);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(600), "latency phase did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (o_cpu, threads_latency) = o_cpu.unwrap();
    let o_cpu = Some(o_cpu);
    let b_summary = b_summary.unwrap();
    let mut base_lat: Vec<f64> = b_summary["latencies_ms"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    drop(base);
    drop(oplet);

    let per_event_us = |cpu_s: f64, events: u64| cpu_s * 1e6 / events as f64;
    let server = if mongo.is_external() { "MongoDB (OPLET_TEST_MONGODB_URI)" } else { "nx-27017" };
    println!("\n## MongoDB source vs pymongo watch() — {server}, {} cores\n", std::thread::available_parallelism().map_or(0, |p| p.get()));
    println!("| phase | figure | oplet (noop / echo plugin) | pymongo watch() + callback | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| idle {:.0} s | CPU | {:.1}% | {:.1}% | {} |",
        idle.as_secs_f64(),
        o_idle * 100.0 / idle.as_secs_f64(),
        b_idle * 100.0 / idle.as_secs_f64(),
        ratio(b_idle, o_idle)
    );
    let drain = |(done, _): (Duration, f64)| n as f64 / (done.saturating_sub(inserted)).as_secs_f64();
    println!(
        "| throughput, {n} inserts (insert_many by 10,000, {:.2} s) | events/s after the insert returned | {:.0} | {:.0} | {:.2}x |",
        inserted.as_secs_f64(),
        drain(o_done),
        drain(b_done),
        drain(o_done) / drain(b_done)
    );
    println!(
        "| | CPU time per event | {:.1} µs | {:.1} µs | {} lower |",
        per_event_us(o_done.1, n),
        per_event_us(b_done.1, n),
        ratio(b_done.1, o_done.1)
    );
    let floor_line = format!(
        "Floor, the Rust driver alone reading the same stream as raw documents (`driver-floor`): \
         idle {:.1}% CPU; throughput {:.0} events/s, {:.1} µs CPU per event ({} lower than pymongo; oplet uses {:.1}x the floor).",
        f_idle * 100.0 / idle.as_secs_f64(),
        drain(f_done),
        per_event_us(f_done.1, n),
        ratio(b_done.1, f_done.1),
        o_done.1 / f_done.1.max(f64::EPSILON)
    );
    println!(
        "| latency, {m} inserts at {rate}/s ({:.2} s) | CPU time per event | {:.1} µs | {:.1} µs | {} lower |",
        wrote.as_secs_f64(),
        per_event_us(o_cpu.unwrap(), m),
        per_event_us(b_cpu.unwrap(), m),
        ratio(b_cpu.unwrap(), o_cpu.unwrap())
    );
    let (op, bp) = (percentiles(&mut oplet_lat), percentiles(&mut base_lat));
    println!("| | latency p50 / p99 / max | {op} (write → audit record on disk) | {bp} (write → callback) | |");
    println!("\n{floor_line}");
    println!("\nevents: oplet {} / baseline {} in the latency phase", oplet_lat.len(), base_lat.len());
    println!("oplet CPU by thread, throughput phase: {threads_throughput}");
    println!("oplet CPU by thread, latency phase: {threads_latency}");
}

fn ratio(baseline: f64, oplet: f64) -> String {
    if oplet <= 0.0 {
        return "∞ (below /proc resolution)".into();
    }
    format!("{:.1}x", baseline / oplet)
}

fn percentiles(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    format!("{:.1} / {:.1} / {:.1} ms", at(0.5), at(0.99), v[v.len() - 1])
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

/// `after - before` per thread, as "name 12 ms" pairs, largest first.
fn thread_delta(before: &std::collections::BTreeMap<String, f64>, after: &std::collections::BTreeMap<String, f64>) -> String {
    let mut d: Vec<(String, f64)> = after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).filter(|(_, v)| *v > 0.0).collect();
    d.sort_by(|a, b| b.1.total_cmp(&a.1));
    d.iter().map(|(k, v)| format!("{k} {:.0} ms", v * 1000.0)).collect::<Vec<_>>().join(", ")
}

/// True once `marker` (the echo plugin on the end marker) has written its record and
/// the checkpoint has reached that event: every event before it is done too.
fn oplet_caught_up(state: &Path, db: &str, marker: &str) -> bool {
    let audit = std::fs::read_to_string(state.join("audit.jsonl")).unwrap_or_default();
    let Some(id) = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["plugin"] == marker)
        .and_then(|r| r["event_id"].as_str().map(str::to_string))
    else {
        return false;
    };
    let data = id.split_once(':').map(|(_, d)| d).unwrap_or_default();
    let checkpoint = std::fs::read_to_string(state.join("checkpoints").join(format!("mongo.{db}.items.json"))).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&checkpoint).is_ok_and(|c| c["token"]["_data"] == data)
}

/// A watcher process: the pymongo baseline or the driver floor. It prints `ready`
/// once its stream is open, and one JSON line `{"events", ...}` after the end marker.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn pymongo(uri: &str, db: &str, coll: &str) -> Watcher {
        let python = std::env::var("OPLET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(python);
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pymongo_watch.py")).args([uri, db, coll]);
        Watcher::start(cmd)
    }

    fn driver_floor(uri: &str, db: &str, coll: &str) -> Watcher {
        let mut cmd = Command::new(std::env::current_exe().expect("the bench's own path"));
        cmd.args([FLOOR, uri, db, coll]);
        Watcher::start(cmd)
    }

    fn start(mut cmd: Command) -> Watcher {
        let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().expect("start a watcher");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(30)).expect("the watcher says ready");
        assert_eq!(first, "ready");
        Watcher { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its final JSON line, once it has printed it.
    fn summary(&mut self) -> Option<serde_json::Value> {
        self.lines.try_recv().ok().and_then(|l| serde_json::from_str(&l).ok())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Follows the audit file and, for each new record of `plugin` whose document has
/// `t`, notes now − t.
struct AuditTail {
    rx: mpsc::Receiver<f64>,
}

impl AuditTail {
    fn start(path: PathBuf, plugin: &'static str) -> AuditTail {
        let (tx, rx) = mpsc::channel();
        let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        std::thread::spawn(move || {
            let mut pending = String::new();
            loop {
                if let Ok(mut f) = std::fs::File::open(&path) {
                    if f.seek(SeekFrom::Start(offset)).is_ok() {
                        let mut chunk = String::new();
                        if let Ok(read) = f.read_to_string(&mut chunk) {
                            offset += read as u64;
                            pending.push_str(&chunk);
                        }
                    }
                }
                let now = now_ms();
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let Ok(r) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    if r["plugin"] != plugin {
                        continue;
                    }
                    if let Some(t) = r["record"]["doc"]["t"].as_f64() {
                        if tx.send(now - t).is_err() {
                            return;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        AuditTail { rx }
    }

    fn take(&self) -> Vec<f64> {
        self.rx.try_iter().collect()
    }
}

/// The argument that runs this binary as the driver-floor watcher.
const FLOOR: &str = "driver-floor";

/// The driver-floor watcher: the collection's change stream read as raw documents,
/// opened as the host opens it, with the host's pause after an empty batch on a
/// server that answers at once (5 ms); counts events until the first update.
async fn driver_floor(uri: &str, db: &str, coll: &str) {
    use mongodb::bson::RawDocumentBuf;
    use mongodb::options::ChangeStreamOptions;
    let client = mongodb::Client::with_uri_str(uri).await.unwrap();
    let mut options = ChangeStreamOptions::default();
    options.max_await_time = Some(Duration::from_millis(1000));
    let mut stream = client.database(db).collection::<Document>(coll).watch().with_options(options).await.unwrap().with_type::<RawDocumentBuf>();
    println!("ready");
    let mut events = 0u64;
    loop {
        match stream.next_if_any().await.unwrap() {
            Some(raw) if raw.get_str("operationType") == Ok("update") => break,
            Some(_) => events += 1,
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    println!("{}", serde_json::json!({ "events": events }));
}
