//! Several `oplet` hosts sharing one MongoDB source's streams through leases
//! (`[cluster] mode = "leases"`), against a real server (nx-27017): each stream has
//! one owner and the streams spread evenly; a host killed with SIGKILL is taken over
//! and nothing is lost; a host paused past its lease has its late checkpoint writes
//! refused and gives its streams up; a host that joins receives a share; a second
//! host given a running host's name refuses to start, while a restart under the same
//! name waits out its old heartbeat; the status page and metrics show ownership.

use mongodb::bson::{doc, Document};
use oplet_tests::{free_port, http_get, install_plugin, metric_sample, oplet_bin, Mongo, Oplet, TempDir};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);

/// One scenario at a time: each runs three or four hosts against its own nx-27017,
/// and three at once on two cores made nx-27017 lose lease writes (see
/// docs/cluster.md, "Known issue"), which is not what these tests are about.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LEASE_MS: u64 = 2000;
const RENEW_MS: u64 = 500;
const COLLECTIONS: usize = 6;

fn fresh_db() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("oplet_c{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), free_port())
}

/// One host's folder: `oplet.toml` (its own name and state), `plugins/echo`.
struct Host {
    name: String,
    dir: TempDir,
}

impl Host {
    fn new(name: &str, uri: &str, db: &str, checkpoint_interval_ms: u64) -> Host {
        let dir = oplet_tests::temp_dir();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let namespaces: Vec<String> = (0..COLLECTIONS).map(|k| format!("\"{db}.c{k}\"")).collect();
        let config = format!(
            r#"state_dir = "state"
[plugins]
dir = "plugins"
[grants."*"]
all_requested = true
[delivery]
checkpoint_interval_ms = {checkpoint_interval_ms}
[cluster]
mode = "leases"
name = "{name}"
collection = "{db}.leases"
lease_ms = {LEASE_MS}
renew_ms = {RENEW_MS}
[[source]]
type = "mongo"
name = "mongo"
uri = "{uri}"
collections = [{}]
server_selection_timeout_ms = 1500
[source.checkpoint]
store = "mongo"
collection = "{db}.checkpoints"
[source.reconnect]
initial_ms = 100
max_ms = 1000
"#,
            namespaces.join(", ")
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        install_plugin(&plugins, "echo", "name = \"echo\"\n[[subscribe]]\nsources = [\"mongo\"]\n[capabilities]\naudit = true\n");
        Host { name: name.into(), dir }
    }

    /// Adds an admin listener on `port` (status page and metrics).
    fn with_admin(self, port: u16) -> Host {
        let path = self.config();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
        std::fs::write(&path, text).unwrap();
        self
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("oplet.toml")
    }

    fn start(&self) -> Oplet {
        tokio::task::block_in_place(|| Oplet::start(&self.config()))
    }

    /// Every audit record this host wrote.
    fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("state").join("audit.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// `oplet cluster status --json` with `config`: the command an operator runs.
fn status(config: &Path) -> Value {
    let out = std::process::Command::new(oplet_bin())
        .args(["cluster", "status", "--json", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .output()
        .expect("run oplet cluster status");
    assert!(out.status.success(), "cluster status failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("cluster status printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Streams owned, by live host name (hosts without streams included).
fn ownership(status: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for h in status["hosts"].as_array().unwrap() {
        if h["live"] == true {
            out.insert(h["name"].as_str().unwrap().to_string(), BTreeSet::new());
        }
    }
    for s in status["streams"].as_array().unwrap() {
        if let Some(owner) = s["owner"].as_str() {
            out.entry(owner.to_string()).or_default().insert(s["stream"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Polls `cluster status` until `ready`; on a timeout shows the hosts' logs too.
async fn wait_status(config: &Path, hosts: &[Oplet], what: &str, mut ready: impl FnMut(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = tokio::task::block_in_place(|| status(config));
        if ready(&s) {
            return s;
        }
        if start.elapsed() >= WAIT {
            let logs: Vec<String> = hosts.iter().enumerate().map(|(i, o)| {
                    let lines = o.log_lines_containing("cluster");
                    format!("--- host {}, its last lease lines:\n{}", i + 1, lines[lines.len().saturating_sub(40)..].join("\n"))
                }).collect();
            panic!("timed out after {WAIT:?} waiting for {what}; last status:\n{s:#}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the hosts one after the other: the first creates every lease document
/// alone, the others then receive their share through hand-overs. (Hosts started
/// at the same instant race to insert, or to take, the same lease documents, and
/// nx-27017 can then serve a stale lease document for good: see docs/cluster.md,
/// "Known issue". MongoDB settles those races; the tests are not about them.)
async fn start_staggered(hosts: &[Host]) -> Vec<Oplet> {
    let mut running = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        running.push(h.start());
        // Each newcomer receives its share before the next starts, so a released
        // lease has one taker (two hosts racing for one lease trip the same
        // nx-27017 anomaly as racing inserts).
        let n = i + 1;
        let mut spread: Vec<usize> = (0..n).map(|k| COLLECTIONS / n + usize::from(k < COLLECTIONS % n)).collect();
        spread.sort();
        wait_status(&hosts[0].config(), &running, &format!("{n} host(s) sharing the streams {spread:?}"), |s| spread_is(s, &spread)).await;
    }
    running
}

/// Every stream owned by exactly one live host, and the counts are `spread` (sorted).
fn spread_is(s: &Value, spread: &[usize]) -> bool {
    let owned = ownership(s);
    let total: usize = owned.values().map(BTreeSet::len).sum();
    let mut counts: Vec<usize> = owned.values().map(BTreeSet::len).collect();
    counts.sort();
    let streams_owned = s["streams"].as_array().unwrap().iter().filter(|x| x["owner"].is_string()).count();
    total == COLLECTIONS && streams_owned == COLLECTIONS && counts == spread
}

/// Inserts one document at a time, round-robin over the collections, until stopped;
/// remembers every `_id` the server acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(client: mongodb::Client, db: &str, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let (s, w, db) = (stop.clone(), written.clone(), db.to_string());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                let k = i as usize % COLLECTIONS;
                let id = format!("c{k}-{i:06}");
                // nx-27017 under load sometimes resets a connection: retry, and a
                // retry that finds the document there means the first try landed.
                let coll = client.database(&db).collection::<Document>(&format!("c{k}"));
                let mut tries = 0;
                loop {
                    match coll.insert_one(doc! { "_id": &id, "i": i as i64 }).await {
                        Ok(_) => break,
                        Err(e) if e.to_string().contains("E11000") => break,
                        Err(e) => {
                            tries += 1;
                            assert!(tries < 20, "insert {id}: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                w.lock().unwrap().push(id);
                i += 1;
                tokio::time::sleep(pause).await;
            }
        });
        Writer { stop, written, task }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task");
        let w = self.written.lock().unwrap().clone();
        w
    }
}

/// The union of the hosts' audit files: records by key, and document ids seen.
fn union(hosts: &[&Host]) -> (usize, BTreeMap<String, usize>, BTreeSet<String>) {
    let mut total = 0;
    let mut keys = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for h in hosts {
        for r in h.audit() {
            total += 1;
            *keys.entry(r["key"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
            if let Some(id) = r["record"]["doc"]["_id"].as_str() {
                ids.insert(id.to_string());
            }
        }
    }
    (total, keys, ids)
}

/// Waits until every written document is in some host's audit file.
async fn wait_all_audited(hosts: &[&Host], written: &[String]) -> (usize, usize) {
    let start = Instant::now();
    loop {
        let (total, keys, ids) = union(hosts);
        let missing: Vec<&String> = written.iter().filter(|id| !ids.contains(*id)).collect();
        if missing.is_empty() {
            return (total, total - keys.len());
        }
        assert!(start.elapsed() < WAIT, "{} of {} documents never reached any audit file, e.g. {:?}", missing.len(), written.len(), &missing[..missing.len().min(5)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lease document of `stream`.
async fn lease(client: &mongodb::Client, db: &str, stream: &str) -> Document {
    client.database(db).collection::<Document>("leases").find_one(doc! { "_id": format!("lease:{stream}") }).await.unwrap().unwrap()
}

async fn checkpoint(client: &mongodb::Client, db: &str, stream: &str) -> Document {
    client.database(db).collection::<Document>("checkpoints").find_one(doc! { "_id": stream }).await.unwrap().unwrap()
}

fn int(d: &Document, k: &str) -> i64 {
    d.get_i64(k).or_else(|_| d.get_i32(k).map(i64::from)).unwrap_or_else(|_| panic!("{k} in {d}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_share_six_streams_a_killed_one_is_taken_over_without_loss_and_a_fourth_gets_a_share() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mongo = tokio::task::block_in_place(Mongo::start);
    let (db, uri) = (fresh_db(), mongo.uri());
    let client = mongo.client().await;
    let hosts: Vec<Host> = (1..=3).map(|n| Host::new(&format!("h{n}"), &uri, &db, 100)).collect();
    let mut running = start_staggered(&hosts).await;
    let config = hosts[0].config();
    let s = wait_status(&config, &running, "six streams spread 2/2/2 over three hosts", |s| spread_is(s, &[2, 2, 2])).await;
    let before = ownership(&s);
    eprintln!("[cluster] spread: {before:?}");

    let writer = Writer::start(client.clone(), &db, Duration::from_millis(15));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // kill -9 the host that owns c0's stream.
    let victim_stream = format!("mongo.{db}.c0");
    let victim = before.iter().find(|(_, st)| st.contains(&victim_stream)).map(|(n, _)| n.clone()).unwrap();
    let victim_streams = before[&victim].clone();
    let vi = hosts.iter().position(|h| h.name == victim).unwrap();
    let killed_at = Instant::now();
    running[vi].kill();
    // Its last renewals, read before anyone can take over (that takes ~lease_ms).
    let mut old = BTreeMap::new();
    for st in &victim_streams {
        let d = lease(&client, &db, st).await;
        assert_eq!(d.get_str("owner").unwrap(), victim, "{d}");
        old.insert(st.clone(), d);
    }
    let s = wait_status(&hosts[(vi + 1) % 3].config(), &running, "the killed host's streams taken over by the two others", |s| {
        let owned = ownership(s);
        spread_is(s, &[3, 3]) && !owned.contains_key(&victim)
    })
    .await;
    let takeover = killed_at.elapsed();
    let after = ownership(&s);
    let mut gaps = Vec::new();
    for st in &victim_streams {
        let new = lease(&client, &db, st).await;
        let was = &old[st];
        assert_ne!(new.get_str("owner").unwrap(), victim, "{st}");
        assert!(int(&new, "epoch") > int(was, "epoch"), "a takeover bumps the epoch: {was} -> {new}");
        // Never two owners at once: taken only once the dead owner's lease expired.
        assert!(int(&new, "acquired_ms") > int(was, "expires_ms"), "{was} -> {new}");
        gaps.push(int(&new, "acquired_ms") - int(was, "renewed_ms"));
        let ck = checkpoint(&client, &db, st).await;
        assert_eq!(int(&ck, "epoch"), int(&new, "epoch"), "the new owner fenced the checkpoint: {ck}");
    }
    eprintln!("[cluster] figures: kill -9 of {victim} -> all its streams owned by others after {takeover:?} (lease {LEASE_MS} ms, renew {RENEW_MS} ms); last renewal -> takeover per stream: {gaps:?} ms; owners now {after:?}");

    // A fourth host joins: the others hand over at a safe point until it has a share.
    let fourth = Host::new("h4", &uri, &db, 100);
    running.push(fourth.start());
    // Three live hosts again (the killed one is gone): 2/2/2, h4 among them.
    let s = wait_status(&config, &running, "the fourth host receiving a share (2/2/2)", |s| spread_is(s, &[2, 2, 2]) && ownership(s).get("h4").is_some_and(|o| o.len() == 2)).await;
    eprintln!("[cluster] after h4 joined: {:?}", ownership(&s));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let written = writer.finish().await;
    let all: Vec<&Host> = hosts.iter().chain(std::iter::once(&fourth)).collect();
    let (records, duplicates) = wait_all_audited(&all, &written).await;
    eprintln!("[cluster] figures: {} documents written, {records} audit records over 4 files, {duplicates} duplicate(s) (same key in two files: replays after the kill and the hand-overs)", written.len());
    // Every live host still runs: no lease trouble stopped one.
    for (i, o) in running.iter().enumerate() {
        if i != vi {
            assert!(o.is_running(), "host {} stopped:\n{}", i + 1, o.logs());
        }
    }
    let mut logs = String::new();
    for (i, mut o) in running.into_iter().enumerate() {
        if i != vi {
            let st = o.terminate().unwrap();
            assert!(st.success(), "host {} exit: {st}\n{}", i + 1, o.logs());
            logs.push_str(&o.logs());
        }
    }
    // Clean stops give the leases back at once. A lease still shown as owned must
    // have been given back by its host under that epoch (nx-27017 can show a
    // write late: docs/cluster.md, "Known issue") or belong to a stream that could
    // not stop before its lease ran out (cancelled, and said so); either way it is
    // free once its lease has run out.
    let s = tokio::task::block_in_place(|| status(&config));
    for x in s["streams"].as_array().unwrap() {
        if let Some(owner) = x["owner"].as_str() {
            let st = x["stream"].as_str().unwrap();
            let gave_back = format!("gave the lease back after the last checkpoint stream={st} epoch={}", x["epoch"]);
            let said = logs.lines().any(|l| (l.contains(st) && l.contains("did not stop within")) || l.contains(&gave_back));
            assert!(said, "{st} still owned by {owner} after a clean stop, with no reason logged:\n{s:#}\n{}", logs.lines().filter(|l| l.contains(st)).collect::<Vec<_>>().join("\n"));
            eprintln!("[cluster] {st} still shown as owned by {owner} right after the clean stop; its host said why");
        }
    }
    let start = Instant::now();
    loop {
        let s = tokio::task::block_in_place(|| status(&config));
        if s["streams"].as_array().unwrap().iter().all(|x| x["owner"].is_null()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_millis(LEASE_MS * 3), "leases still owned {LEASE_MS} ms after every host stopped:\n{s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_paused_past_its_lease_has_its_late_checkpoint_writes_refused_and_gives_its_streams_up() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mongo = tokio::task::block_in_place(Mongo::start);
    let (db, uri) = (fresh_db(), mongo.uri());
    let client = mongo.client().await;
    // h1 saves its checkpoints only every 3 s, so that when it is paused it still
    // has progress to save: that late write is what fencing must refuse.
    let hosts = [Host::new("h1", &uri, &db, 3000), Host::new("h2", &uri, &db, 100), Host::new("h3", &uri, &db, 100)];
    let running = start_staggered(&hosts).await;
    let config = hosts[1].config();
    let s = wait_status(&config, &running, "2/2/2", |s| spread_is(s, &[2, 2, 2])).await;
    let paused_streams = ownership(&s)["h1"].clone();
    let writer = Writer::start(client.clone(), &db, Duration::from_millis(15));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut epochs = BTreeMap::new();
    for st in &paused_streams {
        epochs.insert(st.clone(), int(&lease(&client, &db, st).await, "epoch"));
    }

    let pid = running[0].pid() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let s = wait_status(&config, &running, "h1's streams taken over while it is paused", |s| {
        let owned = ownership(s);
        spread_is(s, &[3, 3]) && !owned.contains_key("h1")
    })
    .await;
    eprintln!("[cluster] while h1 is paused: {:?}", ownership(&s));
    // The new owners stamped the checkpoints with their epochs before reading them.
    for st in &paused_streams {
        let start = Instant::now();
        while int(&checkpoint(&client, &db, st).await, "epoch") <= epochs[st] {
            if start.elapsed() >= WAIT {
                let logs: Vec<String> = running.iter().map(|o| o.log_lines_containing(st).join("\n")).collect();
                panic!("{st}'s checkpoint never got the new epoch; each host's lines about it:\n{}", logs.join("\n---\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mark = running[0].log_mark();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    running[0].wait_for_log_since(mark, "checkpoint write refused", WAIT).await.unwrap();
    // Refused, so the checkpoints still carry the new owners' epochs and positions.
    for st in &paused_streams {
        let ck = checkpoint(&client, &db, st).await;
        assert!(int(&ck, "epoch") > epochs[st], "a late write of h1 moved {st}: {ck}");
        assert_ne!(ck.get_str("owner").unwrap(), "h1", "{ck}");
    }
    // h1 gave its old streams up, then receives a share again, under new epochs.
    let s = wait_status(&config, &running, "2/2/2 again with h1 back", |s| spread_is(s, &[2, 2, 2])).await;
    for st in &ownership(&s)["h1"] {
        if let Some(e) = epochs.get(st) {
            assert!(int(&lease(&client, &db, st).await, "epoch") > *e + 1, "{st}: retaken under a new epoch");
        }
    }
    assert!(running.iter().all(Oplet::is_running), "every host still runs");
    let written = writer.finish().await;
    let all: Vec<&Host> = hosts.iter().collect();
    let (records, duplicates) = wait_all_audited(&all, &written).await;
    eprintln!("[cluster] figures: SIGSTOP past the lease: {} documents, {records} audit records, {duplicates} duplicate(s)", written.len());
    for mut o in running {
        assert!(o.terminate().unwrap().success(), "{}", o.logs());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_given_a_running_hosts_name_refuses_to_start_and_a_restart_under_the_same_name_waits_out_its_old_heartbeat() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mongo = tokio::task::block_in_place(Mongo::start);
    let (db, uri) = (fresh_db(), mongo.uri());
    let admin = format!("127.0.0.1:{}", free_port());
    let first = Host::new("same", &uri, &db, 100).with_admin(admin.rsplit(':').next().unwrap().parse().unwrap());
    let mut running = vec![first.start()];
    let config = first.config();
    let s = wait_status(&config, &running, "the first host owning all six streams", |s| spread_is(s, &[COLLECTIONS])).await;
    // The host's own status page and metrics show what it owns, as `cluster status` does.
    let owned: BTreeSet<String> = ownership(&s)["same"].clone();
    let (code, body) = tokio::task::block_in_place(|| http_get(&admin, "/status.json")).unwrap();
    assert_eq!(code, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["cluster"]["name"], "same", "{page:#}");
    let shown: BTreeSet<String> = page["cluster"]["streams"].as_array().unwrap().iter().map(|x| x["stream"].as_str().unwrap().to_string()).collect();
    assert_eq!(shown, owned, "the status page lists the streams whose lease this host holds");
    assert!(page["cluster"]["streams"].as_array().unwrap().iter().all(|x| x["epoch"].as_i64().unwrap() >= 1));
    let (_, metrics) = tokio::task::block_in_place(|| http_get(&admin, "/metrics")).unwrap();
    for st in &owned {
        assert_eq!(metric_sample(&metrics, &format!("oplet_cluster_lease_held{{stream=\"{st}\"}}")), 1.0, "{metrics}");
    }
    assert_eq!(metric_sample(&metrics, "oplet_cluster_lease_changes_total{source=\"mongo\",change=\"taken\"}"), COLLECTIONS as f64, "{metrics}");

    // Another machine's host given the same name: it watches the heartbeat, sees it
    // renewed, and stops with a config error naming the key; the first one goes on.
    let twin_dir = Host::new("same", &uri, &db, 100);
    let mut twin = twin_dir.start();
    let status = tokio::task::block_in_place(|| twin.wait_exit(WAIT)).unwrap();
    assert_eq!(status.code(), Some(2), "a duplicate name is a config error (exit 2):\n{}", twin.logs());
    let logs = twin.logs();
    assert!(logs.contains("cluster.name") && logs.contains("\"same\""), "the error names the key and the name:\n{logs}");
    assert!(running[0].is_running(), "the running host is untouched:\n{}", running[0].logs());
    let s = wait_status(&config, &running, "the first host still owning all six streams", |s| spread_is(s, &[COLLECTIONS])).await;
    assert!(ownership(&s).contains_key("same"));

    // kill -9 and restart under the same name: the old heartbeat is not renewed
    // any more, so the new run waits it out and takes the streams back.
    let epochs_before: BTreeMap<String, i64> = s["streams"].as_array().unwrap().iter().map(|x| (x["stream"].as_str().unwrap().to_string(), x["epoch"].as_i64().unwrap())).collect();
    running[0].kill();
    running[0] = first.start();
    let pid = running[0].pid() as i64;
    // The killed run's leases still read as owned by "same" until they expire: wait
    // for the new process's heartbeat and for every lease retaken under a new epoch.
    wait_status(&config, &running, "the restarted host owning all six streams again", |s| {
        let new_run = s["hosts"].as_array().unwrap().iter().any(|h| h["name"] == "same" && h["pid"] == pid && h["live"] == true);
        let retaken = s["streams"].as_array().unwrap().iter().all(|x| x["owner"] == "same" && x["epoch"].as_i64().unwrap_or(0) > epochs_before[x["stream"].as_str().unwrap()]);
        new_run && retaken
    })
    .await;
    assert!(running[0].is_running(), "{}", running[0].logs());
    assert!(running[0].terminate().unwrap().success(), "{}", running[0].logs());
}
