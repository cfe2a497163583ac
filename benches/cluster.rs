//! What sharing streams through leases costs (`[cluster] mode = "leases"`), against
//! nx-27017 (or `OPLET_TEST_MONGODB_URI`), with real `oplet` processes:
//!
//! 1. failover: an owner and a standby share one collection under steady writes;
//!    `kill -9` the owner and time until the standby's first audit record (its first
//!    handled event), for lease_ms = 2000 and 10000. Baseline in the same run: a
//!    single host killed and restarted at once (a supervisor with no delay), time to
//!    its first event: what a restart costs without any lease to wait out.
//! 2. steady cost: MongoDB commands per second of one idle host watching six
//!    collections, counted by a proxy on the wire, with leases (10 s / 3 s and
//!    2 s / 0.5 s) and without (baseline); the difference is the leasing.
//!
//! Run: `cargo bench -p oplet-benches --bench cluster` (`-- REPS` to change the 3
//! repetitions of each failover).

use mongodb::bson::{doc, Document};
use oplet_tests::{install_plugin, Mongo, MongoProxy, Oplet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let reps: usize = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(3);
    std::env::set_var("OPLET_TEST_NX_LOG_LEVEL", "WARNING");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(reps));
}

async fn run(reps: usize) {
    let mongo = Mongo::start();
    let client = mongo.client().await;
    let mut n = 0;
    let mut next_db = || {
        n += 1;
        format!("bench_cl{}_{n}", std::process::id())
    };

    println!("failover: kill -9 of the owner -> first event handled by the next one ({reps} runs each)");
    let mut base = Vec::new();
    for _ in 0..reps {
        base.push(restart_once(&mongo, &client, &next_db()).await);
    }
    report("single host, restarted at once (baseline)", &base, None);
    for lease in [2000u64, 10_000] {
        let mut times = Vec::new();
        for _ in 0..reps {
            times.push(failover_once(&mongo, &client, &next_db(), lease).await);
        }
        report(&format!("leases, lease_ms = {lease}, renew_ms = {}", lease / 4), &times, Some(lease));
    }

    println!("\nsteady cost: MongoDB commands/s of one idle host watching 6 collections (10 s each, through a counting proxy)");
    let proxy = MongoProxy::start(&mongo.uri()).await;
    let off = commands_per_s(&proxy, &next_db(), None).await;
    println!("  without leases (baseline): {:.1} commands/s  {}", off.0, off.1);
    for (lease, renew) in [(10_000u64, 3000u64), (2000, 500)] {
        let on = commands_per_s(&proxy, &next_db(), Some((lease, renew))).await;
        println!("  leases {lease}/{renew} ms: {:.1} commands/s, {:+.1}/s for leasing  {}", on.0, on.0 - off.0, on.1);
    }
}

fn report(what: &str, times: &[Duration], lease: Option<u64>) {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = ms[ms.len() / 2];
    let vs = lease.map(|l| format!(", {:.2}x the lease", median / l as f64)).unwrap_or_default();
    println!("  {what}: median {median:.0} ms (min {:.0}, max {:.0}){vs}", ms[0], ms[ms.len() - 1]);
}

/// A host folder with the `echo` plugin; `cluster`: `Some((name, lease, renew))`.
fn host(uri: &str, db: &str, colls: usize, cluster: Option<(&str, u64, u64)>) -> oplet_tests::TempDir {
    let dir = oplet_tests::temp_dir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    install_plugin(&plugins, "echo", "name = \"echo\"\n[[subscribe]]\nsources = [\"mongo\"]\n[capabilities]\naudit = true\n");
    let cluster = cluster
        .map(|(name, lease, renew)| format!("[cluster]\nmode = \"leases\"\nname = \"{name}\"\ncollection = \"{db}.leases\"\nlease_ms = {lease}\nrenew_ms = {renew}\n"))
        .unwrap_or_default();
    let colls: Vec<String> = (0..colls).map(|k| format!("\"{db}.c{k}\"")).collect();
    std::fs::write(
        dir.path().join("oplet.toml"),
        format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\nall_requested = true\n{cluster}[[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{uri}\"\ncollections = [{}]\n[source.checkpoint]\nstore = \"mongo\"\ncollection = \"{db}.checkpoints\"\n",
            colls.join(", ")
        ),
    )
    .unwrap();
    dir
}

fn audit_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("state").join("audit.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

/// Inserts into `db.c0` every 5 ms until dropped.
struct Writer(Arc<AtomicBool>);

impl Writer {
    fn start(client: &mongodb::Client, db: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, coll) = (stop.clone(), client.database(db).collection::<Document>("c0"));
        tokio::spawn(async move {
            let mut i = 0i64;
            while !s.load(Ordering::SeqCst) {
                coll.insert_one(doc! { "i": i }).await.expect("insert");
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer(stop)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn owner(client: &mongodb::Client, db: &str) -> Option<String> {
    let d = client.database(db).collection::<Document>("leases").find_one(doc! { "_id": "lease:mongo.".to_string() + db + ".c0" }).await.ok()??;
    d.get_str("owner").ok().map(str::to_string)
}

async fn failover_once(mongo: &Mongo, client: &mongodb::Client, db: &str, lease: u64) -> Duration {
    let (a, b) = (host(&mongo.uri(), db, 1, Some(("a", lease, lease / 4))), host(&mongo.uri(), db, 1, Some(("b", lease, lease / 4))));
    let mut first = Oplet::start(&a.path().join("oplet.toml"));
    let start = Instant::now();
    while owner(client, db).await.as_deref() != Some("a") {
        assert!(start.elapsed() < Duration::from_secs(60), "a never took the lease:\n{}", first.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let standby = Oplet::start(&b.path().join("oplet.toml"));
    standby.wait_for_log("cluster: sharing", Duration::from_secs(60)).await.unwrap();
    let _writer = Writer::start(client, db);
    until("a handling events", || audit_lines(a.path()) > 20).await;
    assert_eq!(audit_lines(b.path()), 0, "the standby handled nothing while a owned the stream");
    let killed = Instant::now();
    first.kill();
    until("b's first event", || audit_lines(b.path()) > 0).await;
    killed.elapsed()
}

async fn restart_once(mongo: &Mongo, client: &mongodb::Client, db: &str) -> Duration {
    let dir = host(&mongo.uri(), db, 1, None);
    let config = dir.path().join("oplet.toml");
    let mut first = Oplet::start(&config);
    first.wait_for_log("watching the change stream", Duration::from_secs(60)).await.unwrap();
    let _writer = Writer::start(client, db);
    until("events", || audit_lines(dir.path()) > 20).await;
    let killed = Instant::now();
    first.kill();
    let before = audit_lines(dir.path());
    let second = Oplet::start(&config);
    until("the restarted host's first event", || audit_lines(dir.path()) > before).await;
    let took = killed.elapsed();
    drop(second);
    took
}

/// Commands per second of one idle host over 10 s, and the busiest commands.
async fn commands_per_s(proxy: &MongoProxy, db: &str, leases: Option<(u64, u64)>) -> (f64, String) {
    let dir = host(&proxy.uri(), db, 6, leases.map(|(l, r)| ("solo", l, r)));
    let oplet = Oplet::start(&dir.path().join("oplet.toml"));
    let start = Instant::now();
    while oplet.logs().matches("watching the change stream").count() < 6 {
        assert!(start.elapsed() < Duration::from_secs(60), "streams not up:\n{}", oplet.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = proxy.counts();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = proxy.counts();
    let secs = t.elapsed().as_secs_f64();
    drop(oplet);
    let mut by: Vec<(String, f64)> = after.iter().map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0)) as f64 / secs)).filter(|(_, r)| *r > 0.0).collect();
    by.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let total = by.iter().map(|(_, r)| r).sum();
    (total, by.iter().map(|(k, r)| format!("{k} {r:.1}")).collect::<Vec<_>>().join(", "))
}

