//! The MongoDB source through the real `oplet` binary and a real server (nx-27017,
//! or a real MongoDB when `OPLET_TEST_MONGODB_URI` is set): changes reach the
//! plugins that subscribe to them with their fields; a SIGKILL mid-stream or a
//! server outage loses nothing and duplicates nothing; a token the server no longer
//! has follows the configured policy and is never retried in a loop; a server
//! without change streams is polled slowly, and says so.

use mongodb::bson::{doc, Document};
use oplet_tests::{free_port, install_plugin, install_plugin_from, wasm_plugins, Mongo, MongoProxy, Oplet, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A database name no other test (or earlier run against a shared server) uses.
fn fresh_db() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("oplet_t{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), free_port())
}

/// A host folder: `oplet.toml`, `plugins/`, `state/`.
struct Host {
    dir: TempDir,
}

impl Host {
    /// `sources`: the `[[source]]` tables, appended to a config that grants every
    /// plugin what it asks for.
    fn new(sources: &str) -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\nall_requested = true\n{sources}\n"
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        Host { dir }
    }

    /// Installs built plugin `wasm` as `name` with `manifest`.
    fn plugin(&self, name: &str, wasm: &str, manifest: &str) {
        let plugins = self.dir.path().join("plugins");
        if name == wasm {
            install_plugin(&plugins, name, manifest);
        } else {
            install_plugin_from(&plugins, name, &wasm_plugins().path(wasm), manifest);
        }
    }

    /// Starts `oplet run` and waits until every change stream (or poller) is up.
    async fn start(&self, streams: usize) -> Oplet {
        let config = self.dir.path().join("oplet.toml");
        let oplet = tokio::task::block_in_place(|| Oplet::start(&config));
        let start = Instant::now();
        loop {
            let up = oplet.logs().lines().filter(|l| l.contains("watching the change stream") || l.contains("DEGRADED MODE")).count();
            if up >= streams {
                return oplet;
            }
            assert!(oplet.is_running(), "oplet exited before its streams were up:\n{}", oplet.logs());
            assert!(start.elapsed() < WAIT, "streams not up within {WAIT:?}:\n{}", oplet.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Every audit record, in file order.
    fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state().join("audit.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn audit_of(&self, plugin: &str) -> Vec<Value> {
        self.audit().into_iter().filter(|r| r["plugin"] == plugin).collect()
    }

    /// Waits until `plugin` has at least `count` records, then a little longer so
    /// that a record too many would show; returns them.
    async fn wait_audit(&self, plugin: &str, count: usize) -> Vec<Value> {
        eventually(&format!("{count} audit records of {plugin}"), || {
            let got = self.audit_of(plugin);
            (got.len() >= count).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.audit_of(plugin)
    }

    fn checkpoint(&self, key: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.state().join("checkpoints").join(format!("{key}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Polls `ready` every 25 ms for up to a minute.
async fn eventually<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `[[source]]` table for a mongo source that reconnects quickly (test timings).
fn mongo_source(name: &str, uri: &str, extra: &str) -> String {
    format!(
        "[[source]]\ntype = \"mongo\"\nname = \"{name}\"\nuri = \"{uri}\"\nserver_selection_timeout_ms = 1500\n{extra}\n[source.reconnect]\ninitial_ms = 100\nmax_ms = 1500\n"
    )
}

fn echo_manifest(name: &str, subscribe: &str) -> String {
    format!("name = \"{name}\"\n[[subscribe]]\n{subscribe}\n[capabilities]\naudit = true\n")
}

/// The documents an echo plugin saw, by `_id`.
fn docs_by_id(records: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        let id = r["record"]["doc"]["_id"].as_str().unwrap_or_default().to_string();
        out.entry(id).or_default().push(r.clone());
    }
    out
}

/// Inserts `{_id: "dNNNNN", i}` for `range`, one document per insert, as an
/// application would; retries a write the server refused while it was away.
async fn write_docs(coll: mongodb::Collection<Document>, range: std::ops::Range<u32>) {
    for i in range {
        let d = doc! { "_id": format!("d{i:05}"), "i": i as i64 };
        let start = Instant::now();
        while let Err(e) = coll.insert_one(d.clone()).await {
            if e.to_string().contains("duplicate") || e.to_string().contains("E11000") {
                break; // it went in before the error reached us
            }
            assert!(start.elapsed() < WAIT, "insert d{i:05} kept failing: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_the_subscribed_plugins_with_their_fields_and_nothing_else() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let db = fresh_db();
    let ns = format!("{db}.items");
    let uri = mongo.uri();
    let host = Host::new(&format!(
        "{}{}",
        mongo_source("mongo", &uri, &format!("collections = [\"{ns}\"]\nfull_document = \"updateLookup\"")),
        mongo_source(
            "inserts",
            &uri,
            &format!(
                "collections = [\"{ns}\"]\noperations = [\"insert\"]\npipeline = '[{{\"$match\": {{\"fullDocument.kind\": {{\"$ne\": \"hidden\"}}}}}}]'"
            ),
        )
    ));
    host.plugin("audit-log", "audit-log", "name = \"audit-log\"\n[[subscribe]]\nsources = [\"mongo\"]\n[capabilities]\naudit = true\n");
    host.plugin("echo", "echo", &echo_manifest("echo", &format!("sources = [\"mongo\"]\nnamespaces = [\"{ns}\"]")));
    host.plugin("echo-inserts", "echo", &echo_manifest("echo-inserts", "sources = [\"inserts\"]"));
    let oplet = host.start(2).await;

    let client = mongo.client().await;
    let items = client.database(&db).collection::<Document>("items");
    items.insert_one(doc! { "_id": "a", "n": 1, "kind": "shown" }).await.unwrap();
    items.update_one(doc! { "_id": "a" }, doc! { "$set": { "n": 2 } }).await.unwrap();
    items.replace_one(doc! { "_id": "a" }, doc! { "n": 3, "kind": "shown" }).await.unwrap();
    items.delete_one(doc! { "_id": "a" }).await.unwrap();
    items.insert_one(doc! { "_id": "b", "kind": "hidden" }).await.unwrap();
    client.database(&db).collection::<Document>("unwatched").insert_one(doc! { "_id": "o" }).await.unwrap();

    let audit = host.wait_audit("audit-log", 5).await;
    let ops: Vec<(&str, &str, &Value)> = audit
        .iter()
        .map(|r| (r["record"]["ns"].as_str().unwrap(), r["record"]["op"].as_str().unwrap(), &r["record"]["key"]["_id"]))
        .collect();
    // nx-27017 reports a replace as an update (tests/support/README.md).
    let replace = if mongo.is_external() { "replace" } else { "update" };
    assert_eq!(
        ops,
        vec![
            (ns.as_str(), "insert", &json!("a")),
            (ns.as_str(), "update", &json!("a")),
            (ns.as_str(), replace, &json!("a")),
            (ns.as_str(), "delete", &json!("a")),
            (ns.as_str(), "insert", &json!("b")),
        ],
        "every change of the watched collection, in order; nothing of the unwatched one"
    );
    let seqs: Vec<i64> = audit.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "events are numbered from 1 per stream");
    let ids: std::collections::HashSet<&str> = audit.iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "each event has its own id");
    assert!(audit.iter().all(|r| r["record"]["time_ms"].as_i64().unwrap() > 1_600_000_000_000), "server time");
    if mongo.is_external() {
        assert_eq!(audit[1]["record"]["changed_fields"], json!(["n"]), "a real server sends updateDescription");
    }

    let echo = host.wait_audit("echo", 5).await;
    let docs: Vec<&Value> = echo.iter().map(|r| &r["record"]["doc"]).collect();
    assert_eq!(docs[0], &json!({"_id": "a", "n": 1, "kind": "shown"}));
    assert_eq!(docs[1], &json!({"_id": "a", "n": 2, "kind": "shown"}), "updateLookup brings the whole document");
    assert_eq!(docs[2], &json!({"_id": "a", "n": 3, "kind": "shown"}));
    assert_eq!(docs[4], &json!({"_id": "b", "kind": "hidden"}));

    let inserts = host.wait_audit("echo-inserts", 1).await;
    assert_eq!(inserts.len(), 1, "operations and pipeline filter on the server: {inserts:#?}");
    assert_eq!(inserts[0]["record"]["doc"]["_id"], "a");

    assert!(host.checkpoint(&format!("mongo.{ns}")).is_some_and(|c| c["token"].is_object()), "a token is saved per stream");
    assert!(host.checkpoint(&format!("inserts.{ns}")).is_some());
    drop(oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_a_writer_inserts_thousands_loses_nothing_and_duplicates_nothing() {
    const N: u32 = 3000;
    let mongo = tokio::task::block_in_place(Mongo::start);
    let db = fresh_db();
    let ns = format!("{db}.items");
    let host = Host::new(&mongo_source("mongo", &mongo.uri(), &format!("collections = [\"{ns}\"]")));
    host.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let mut oplet = host.start(1).await;
    eventually("the first checkpoint", || host.checkpoint(&format!("mongo.{ns}"))).await;

    let client = mongo.client().await;
    let writer = tokio::spawn(write_docs(client.database(&db).collection("items"), 0..N));
    for kill_at in [N as usize / 5, N as usize / 2] {
        eventually(&format!("{kill_at} records before the kill"), || (host.audit_of("echo").len() >= kill_at).then_some(())).await;
        oplet.kill();
        assert!(!oplet.is_running());
        oplet = host.start(1).await;
        assert!(oplet.logs().contains("resuming after the last change read"), "{}", oplet.logs());
    }
    writer.await.unwrap();
    eventually(&format!("all {N} documents in the sink"), || (docs_by_id(&host.audit_of("echo")).len() >= N as usize).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let records = host.audit_of("echo");
    let by_id = docs_by_id(&records);
    let missing: Vec<String> = (0..N).map(|i| format!("d{i:05}")).filter(|id| !by_id.contains_key(id)).collect();
    assert!(missing.is_empty(), "{} documents missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    let twice: Vec<&String> = by_id.iter().filter(|(_, r)| r.len() > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "{} documents have more than one record, e.g. {:?}", twice.len(), &twice[..twice.len().min(5)]);
    assert_eq!(records.len(), N as usize, "exactly one record per document");
    drop(oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_outage_mid_stream_is_survived_with_nothing_lost() {
    let mut mongo = tokio::task::block_in_place(Mongo::start);
    // A real server of someone else's cannot be stopped: cut the network instead.
    let proxy = MongoProxy::start(&mongo.uri()).await;
    let db = fresh_db();
    let ns = format!("{db}.items");
    let host = Host::new(&mongo_source("mongo", &proxy.uri(), &format!("collections = [\"{ns}\"]")));
    host.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let oplet = host.start(1).await;
    let client = mongo.client().await;
    let items = client.database(&db).collection::<Document>("items");

    write_docs(items.clone(), 0..200).await;
    host.wait_audit("echo", 200).await;
    let mark = oplet.logs().lines().count();
    let outage = |mongo: &mut Mongo, down: bool| {
        if mongo.is_external() {
            proxy.set_down(down);
        } else if down {
            mongo.stop();
        } else {
            mongo.start_again();
        }
    };
    tokio::task::block_in_place(|| outage(&mut mongo, true));
    // Down long enough for several failed attempts and a long backoff.
    let line = eventually("a log line about the outage", || {
        oplet.logs().lines().skip(mark).find(|l| l.contains("retrying in") && l.contains("attempt 3")).map(str::to_string)
    })
    .await;
    assert!(line.contains("mongo") && line.contains(&ns), "{line}");
    assert!(oplet.is_running(), "the host stays up while the server is away");
    tokio::task::block_in_place(|| outage(&mut mongo, false));
    // Written before the host is back: only a resumed stream sees these.
    let client = mongo.client().await;
    let items = client.database(&db).collection::<Document>("items");
    write_docs(items, 200..400).await;

    let records = host.wait_audit("echo", 400).await;
    let by_id = docs_by_id(&records);
    assert_eq!(by_id.len(), 400, "every document, none missing");
    assert!(by_id.values().all(|r| r.len() == 1), "no document twice");
    let logs = oplet.logs();
    let reconnected = logs.lines().skip(mark).find(|l| l.contains("reconnected after")).unwrap_or_else(|| panic!("no reconnect line:\n{logs}"));
    assert!(reconnected.contains("resuming after the last change read"), "{reconnected}");
    drop(oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_change_streams_the_source_polls_slowly_and_says_so() {
    let mongo = tokio::task::block_in_place(Mongo::start_without_change_streams);
    let proxy = MongoProxy::start(&mongo.uri()).await;
    let db = fresh_db();
    let ns = format!("{db}.clients");
    // A real server has change streams: make it poll anyway.
    let mode = if mongo.is_external() { "always" } else { "auto" };
    let host = Host::new(&mongo_source(
        "mongo",
        &proxy.uri(),
        &format!("collections = [\"{ns}\"]\n[source.fallback]\nmode = \"{mode}\"\nfield = \"updatedAt\"\ninterval_ms = 1000"),
    ));
    host.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let oplet = host.start(1).await;
    let degraded = oplet.logs().lines().find(|l| l.contains("DEGRADED MODE")).unwrap().to_string();
    assert!(degraded.contains("polling `updatedAt` every 1s"), "{degraded}");
    if !mongo.is_external() {
        assert!(degraded.contains("40573"), "the reason is given: {degraded}");
    }

    let client = mongo.client().await;
    let clients = client.database(&db).collection::<Document>("clients");
    // A version stamp in ms; not a date: nx-27017 stores a `$set` date as a string.
    let now = mongodb::bson::DateTime::now().timestamp_millis();
    let at = |ms: i64| now + ms;
    clients.insert_one(doc! { "_id": "c1", "connection": false, "updatedAt": at(1) }).await.unwrap();
    clients.insert_one(doc! { "_id": "c2", "connection": false, "updatedAt": at(1) }).await.unwrap();
    let first = host.wait_audit("echo", 2).await;
    clients.update_one(doc! { "_id": "c1" }, doc! { "$set": { "connection": true, "updatedAt": at(2) } }).await.unwrap();
    let records = host.wait_audit("echo", 3).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    assert_eq!(docs_by_id(&first).keys().collect::<Vec<_>>(), vec!["c1", "c2"], "equal stamps: both, by _id");
    assert_eq!(records[2]["record"]["doc"]["_id"], "c1");
    assert!(records[2]["record"]["doc"]["connection"].as_bool() == Some(true) || records[2]["record"]["doc"]["connection"] == 1);

    // The cost, against the seed's 100 clients polling every 3 s (33 queries/s).
    let before = proxy.count("find");
    let window = Duration::from_secs(6);
    tokio::time::sleep(window).await;
    let queries = proxy.count("find") - before;
    let per_second = queries as f64 / window.as_secs_f64();
    eprintln!("[mongo] polling fallback: {queries} queries in {window:?} = {per_second:.2}/s (seed: 33.3/s per 100 clients)");
    assert!(queries >= 3, "it does poll: {queries}");
    assert!(per_second <= 33.3 / 10.0, "at least 10x fewer queries than the seed's polling: {per_second:.2}/s");
    assert!(host.checkpoint(&format!("mongo.{ns}")).is_some_and(|c| c["poll"].is_object()));

    // A restart goes on from the saved position: nothing again, the next change once.
    drop(oplet);
    let oplet = host.start(1).await;
    clients.update_one(doc! { "_id": "c2" }, doc! { "$set": { "connection": true, "updatedAt": at(3) } }).await.unwrap();
    let records = host.wait_audit("echo", 4).await;
    assert_eq!(records.len(), 4, "{records:#?}");
    assert_eq!(records[3]["record"]["doc"]["_id"], "c2");
    drop(oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_fallback_off_a_server_without_change_streams_stops_the_source_and_says_why() {
    let mongo = tokio::task::block_in_place(Mongo::start_without_change_streams);
    if mongo.is_external() {
        return; // a real replica set has change streams
    }
    let host = Host::new(&mongo_source("mongo", &mongo.uri(), "collections = [\"app.items\"]\n[source.fallback]\nmode = \"off\""));
    let config = host.dir.path().join("oplet.toml");
    let mut oplet = tokio::task::block_in_place(|| Oplet::start(&config));
    let line = oplet.wait_for_log("source stopped", WAIT).await.unwrap();
    assert!(line.contains("40573") && line.contains("fallback.mode = \"off\": not polling"), "{line}");
    let status = tokio::task::block_in_place(|| oplet.wait_exit(Duration::from_secs(30))).unwrap();
    assert_eq!(status.code(), Some(8), "the README's exit code for no change streams with fallback off");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_history_fails_by_default_and_is_never_retried() {
    let mongo = tokio::task::block_in_place(Mongo::start_losing_history);
    if mongo.is_external() {
        return; // a real server cannot be made to lose its history on demand
    }
    let db = fresh_db();
    let ns = format!("{db}.items");
    let host = Host::new(&mongo_source("mongo", &mongo.uri(), &format!("collections = [\"{ns}\"]")));
    host.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let oplet = host.start(1).await;
    let items = mongo.client().await.database(&db).collection::<Document>("items");
    write_docs(items.clone(), 0..3).await;
    host.wait_audit("echo", 3).await;
    drop(oplet);

    let config = host.dir.path().join("oplet.toml");
    let mut oplet = tokio::task::block_in_place(|| Oplet::start(&config));
    let line = oplet.wait_for_log("source stopped", WAIT).await.unwrap();
    assert!(line.contains("286") && line.contains("on_history_lost = \"fail\""), "{line}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = tokio::task::block_in_place(|| oplet.wait_exit(Duration::from_secs(30))).unwrap();
    assert_eq!(status.code(), Some(7), "the README's exit code for a lost history with fail");
    // Once where it happened; the last line repeats it with the exit code.
    let tries = oplet.logs().lines().filter(|l| l.contains("ChangeStreamHistoryLost") && !l.contains("exit code 7")).count();
    assert_eq!(tries, 1, "said once, never retried:\n{}", oplet.logs());
    assert!(!oplet.logs().contains("retrying in"), "no backoff loop on a lost history");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_history_with_start_from_now_says_so_loudly_and_goes_on() {
    let mongo = tokio::task::block_in_place(Mongo::start_losing_history);
    if mongo.is_external() {
        return;
    }
    let db = fresh_db();
    let ns = format!("{db}.items");
    let host = Host::new(&mongo_source("mongo", &mongo.uri(), &format!("collections = [\"{ns}\"]\non_history_lost = \"start_from_now\"")));
    host.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let oplet = host.start(1).await;
    let items = mongo.client().await.database(&db).collection::<Document>("items");
    write_docs(items.clone(), 0..3).await;
    host.wait_audit("echo", 3).await;
    drop(oplet);

    let oplet = host.start(1).await;
    let warning = oplet.logs().lines().find(|l| l.contains("CHANGES SKIPPED")).map(str::to_string);
    let warning = warning.unwrap_or_else(|| panic!("no loud warning:\n{}", oplet.logs()));
    assert!(warning.contains("ERROR") && warning.contains("286"), "{warning}");
    write_docs(items, 3..6).await;
    let records = host.wait_audit("echo", 6).await;
    assert_eq!(docs_by_id(&records).len(), 6, "the stream goes on from now");
    drop(oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_quiet_stream_still_moves_its_checkpoint() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let db = fresh_db();
    let ns = format!("{db}.items");
    let host = Host::new(&mongo_source(
        "mongo",
        &mongo.uri(),
        &format!("collections = [\"{ns}\"]\npipeline = '[{{\"$match\": {{\"fullDocument.kind\": \"wanted\"}}}}]'"),
    ));
    host.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let oplet = host.start(1).await;
    let key = format!("mongo.{ns}");
    let first = eventually("the first checkpoint", || host.checkpoint(&key)).await;
    let items = mongo.client().await.database(&db).collection::<Document>("items");
    for i in 0..20 {
        items.insert_one(doc! { "_id": format!("x{i}"), "kind": "other" }).await.unwrap();
    }
    // Only the server's postBatchResumeToken can move it: no event reaches a plugin.
    let moved = eventually("the checkpoint to move past filtered-out changes", || {
        host.checkpoint(&key).filter(|c| *c != first)
    })
    .await;
    assert!(host.audit_of("echo").is_empty());
    // And it is a real position: a restart resumes there and sees the next change only.
    drop(oplet);
    let oplet = host.start(1).await;
    items.insert_one(doc! { "_id": "w", "kind": "wanted" }).await.unwrap();
    let records = host.wait_audit("echo", 1).await;
    assert_eq!(records.len(), 1, "{moved}");
    drop(oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_checkpoints_in_mongodb_another_host_takes_over_where_the_first_stopped() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let db = fresh_db();
    let ns = format!("{db}.items");
    let source = mongo_source(
        "mongo",
        &mongo.uri(),
        &format!("collections = [\"{ns}\"]\n[source.checkpoint]\nstore = \"mongo\"\ncollection = \"{db}.checkpoints\""),
    );
    let first = Host::new(&source);
    first.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let oplet = first.start(1).await;
    let client = mongo.client().await;
    let items = client.database(&db).collection::<Document>("items");
    write_docs(items.clone(), 0..10).await;
    first.wait_audit("echo", 10).await;
    let mut terminated = oplet;
    assert!(terminated.terminate().unwrap().success());
    let saved = client.database(&db).collection::<Document>("checkpoints").find_one(doc! { "_id": format!("mongo.{ns}") }).await.unwrap();
    let saved = saved.unwrap_or_else(|| panic!("no checkpoint document in {db}.checkpoints"));
    assert!(saved.get_document("position").unwrap().contains_key("token"), "{saved}");
    assert!(!first.state().join("checkpoints").join(format!("mongo.{ns}.json")).exists(), "not in the local store");

    // Written while no host runs; a second host with nothing local picks them up.
    write_docs(items, 10..15).await;
    let second = Host::new(&source);
    second.plugin("echo", "echo", &echo_manifest("echo", &format!("namespaces = [\"{ns}\"]")));
    let oplet = second.start(1).await;
    let records = second.wait_audit("echo", 5).await;
    let ids: Vec<String> = docs_by_id(&records).into_keys().collect();
    assert_eq!(ids, (10..15).map(|i| format!("d{i:05}")).collect::<Vec<_>>(), "from where the first host stopped, not from the start");
    drop(oplet);
}

