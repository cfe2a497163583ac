//! Durability under faults, through the real `oplet` binary: a full disk (a small
//! tmpfs this test mounts as the state_dir) mid-stream loses no audit record and
//! writes none twice, whether the space comes back while the host runs or after a
//! `kill -9`; a torn last line of the audit and dead-letter files is cut on start
//! so no record is glued to it; an emit dropped by the offline policy is
//! dead-lettered with its cause. Needs root (mount); CI runs as root.

use oplet_tests::{install_plugin, install_plugin_from, repo_root, wasm_plugins, Oplet, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// A tmpfs mounted on `dir` for this test; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &dir.to_string_lossy()]);
        Tmpfs { dir: dir.to_path_buf() }
    }

    fn resize(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}"), &self.dir.to_string_lossy()]);
    }

    /// Bytes still free for an unprivileged writer.
    fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.dir.to_string_lossy().as_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0, "statvfs {}", self.dir.display());
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.dir).output().expect("run umount");
        if !out.status.success() && !std::thread::panicking() {
            panic!("umount {}: {}", self.dir.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("run mount (this test needs root)");
    assert!(out.status.success(), "mount {args:?} failed (this test needs root): {}", String::from_utf8_lossy(&out.stderr));
}

/// A host folder following `events.jsonl`, its state_dir at `state/`.
struct Host {
    dir: TempDir,
}

impl Host {
    fn new(extra: &str) -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        // No module cache: the state_dir is a 1 MB disk meant for records.
        let config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = 30\ncache = false\n\
             [audit]\nbatch_max = 64\n\
             [[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\nfollow = true\n{extra}\n"
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        Host { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn state(&self) -> PathBuf {
        self.path().join("state")
    }
    fn config(&self) -> PathBuf {
        self.path().join("oplet.toml")
    }

    fn install_echo(&self, name: &str) {
        let manifest = format!("name = \"{name}\"\n[[subscribe]]\nnamespaces = [\"*\"]\n[capabilities]\naudit = true\n");
        install_plugin_from(&self.path().join("plugins"), name, &wasm_plugins().path("echo"), &manifest);
    }

    /// Appends change events for orders `range` (a ~200-byte document each).
    fn append_orders(&self, range: std::ops::RangeInclusive<u64>) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path().join("events.jsonl")).unwrap();
        let mut text = String::new();
        for n in range {
            let doc = json!({"_id": n, "status": "paid", "note": "x".repeat(160)});
            let line = json!({"body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "orders", "key": {"_id": n}, "full_document": doc}}});
            text.push_str(&format!("{line}\n"));
        }
        f.write_all(text.as_bytes()).unwrap();
    }

    /// The saved checkpoint of the JSON-lines source: the last line done.
    fn checkpoint(&self) -> Option<u64> {
        oplet_tests::jsonl_checkpoint(&self.state(), "events")
    }

    async fn wait_checkpoint(&self, oplet: &Oplet, line: u64) {
        let start = Instant::now();
        while self.checkpoint() != Some(line) {
            assert!(oplet.is_running(), "the host stopped before checkpoint {line}:\n{}", oplet.logs());
            assert!(start.elapsed() < WAIT, "waited {WAIT:?} for checkpoint {line} (at {:?}); log:\n{}", self.checkpoint(), oplet.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every line of a state file, each parsed (a glued or torn line fails here).
    fn lines(&self, file: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state().join(file)).unwrap_or_default();
        assert!(text.is_empty() || text.ends_with('\n'), "{file} does not end with a newline");
        text.lines().enumerate().map(|(n, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{file}:{}: unreadable ({e}): {l}", n + 1))).collect()
    }

    /// Asserts the audit file holds exactly one record per event 1..=n of `plugin`.
    fn assert_each_record_once(&self, plugin: &str, n: u64) {
        let mut by_seq: BTreeMap<u64, usize> = BTreeMap::new();
        for r in self.lines("audit.jsonl").iter().filter(|r| r["plugin"] == plugin) {
            *by_seq.entry(r["record"]["seq"].as_u64().unwrap()).or_default() += 1;
        }
        let missing: Vec<u64> = (1..=n).filter(|s| !by_seq.contains_key(s)).collect();
        let twice: Vec<(&u64, &usize)> = by_seq.iter().filter(|(_, c)| **c > 1).collect();
        assert!(missing.is_empty(), "{} record(s) missing, first {:?}", missing.len(), &missing[..missing.len().min(10)]);
        assert!(twice.is_empty(), "records written more than once: {:?}", &twice[..twice.len().min(10)]);
        assert_eq!(by_seq.len() as u64, n, "records of events that do not exist: {:?}", by_seq.keys().last());
    }
}

/// Starts the host on `host` and waits until it runs its plugins.
async fn start(host: &Host) -> Oplet {
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    oplet
}

/// Waits until the state_dir's disk is full (less than a batch free) and the
/// audit file has stopped growing, while the host keeps running.
async fn wait_disk_full(disk: &Tmpfs, host: &Host, oplet: &Oplet, events: u64) {
    let audit_len = || std::fs::metadata(host.state().join("audit.jsonl")).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < WAIT, "the 1 MB disk never filled ({} bytes free); log:\n{}", disk.free(), oplet.logs());
        if disk.free() < 64 * 1024 {
            let before = audit_len();
            tokio::time::sleep(Duration::from_secs(1)).await;
            if audit_len() == before {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Held, not released: the checkpoint stays short of the stream.
    assert!(oplet.is_running(), "the host stopped on a full disk:\n{}", oplet.logs());
    assert!(host.checkpoint().unwrap_or(0) < events, "checkpoint {:?} passed records that cannot be on disk", host.checkpoint());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_mid_stream_loses_no_record_once_space_comes_back() {
    let host = Host::new("[grants.\"*\"]\naudit = true\n");
    let disk = Tmpfs::mount(&host.state(), "1m");
    host.install_echo("echo");
    let events = 10_000;
    host.append_orders(1..=events);
    let mut oplet = start(&host).await;
    wait_disk_full(&disk, &host, &oplet, events).await;

    disk.resize("200m");
    host.wait_checkpoint(&oplet, events).await;
    let status = oplet.terminate().unwrap();
    assert!(status.success(), "exit {status:?}:\n{}", oplet.logs());

    // A restart replays nothing twice; new events still flow.
    let mut oplet = start(&host).await;
    host.append_orders(events + 1..=events + 10);
    host.wait_checkpoint(&oplet, events + 10).await;
    let status = oplet.terminate().unwrap();
    assert!(status.success(), "exit {status:?}:\n{}", oplet.logs());
    host.assert_each_record_once("echo", events + 10);
    assert!(host.lines("dead-letters.jsonl").is_empty(), "nothing was dead-lettered: {:?}", host.lines("dead-letters.jsonl").first());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_on_a_full_disk_replays_what_it_held_once() {
    let host = Host::new("[grants.\"*\"]\naudit = true\n");
    let disk = Tmpfs::mount(&host.state(), "1m");
    host.install_echo("echo");
    let events = 10_000;
    host.append_orders(1..=events);
    let mut oplet = start(&host).await;
    wait_disk_full(&disk, &host, &oplet, events).await;
    oplet.kill();

    disk.resize("200m");
    let mut oplet = start(&host).await;
    host.wait_checkpoint(&oplet, events).await;
    let status = oplet.terminate().unwrap();
    assert!(status.success(), "exit {status:?}:\n{}", oplet.logs());
    host.assert_each_record_once("echo", events);
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_last_lines_are_cut_on_start_and_no_record_is_glued_to_them() {
    // `refused` asks for audit without a grant: each event leaves a dead letter.
    let host = Host::new("[grants.\"echo\"]\naudit = true\n");
    host.install_echo("echo");
    host.install_echo("refused");
    host.append_orders(1..=400);
    let mut oplet = start(&host).await;
    host.wait_checkpoint(&oplet, 400).await;
    assert!(oplet.terminate().unwrap().success(), "{}", oplet.logs());
    assert_eq!(host.lines("dead-letters.jsonl").len(), 400);

    // A crash mid-write: both files end in half a line, and the last ten events
    // were never checkpointed (nor covered by the de-duplication mark).
    for file in ["audit.jsonl", "dead-letters.jsonl"] {
        let path = host.state().join(file);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 25).unwrap();
    }
    std::fs::write(host.state().join("checkpoints/events.json"), "390").unwrap();
    let _ = std::fs::remove_file(host.state().join("audit.jsonl.mark"));
    host.append_orders(401..=410);

    let mut oplet = start(&host).await;
    host.wait_checkpoint(&oplet, 410).await;
    assert!(oplet.terminate().unwrap().success(), "{}", oplet.logs());
    host.assert_each_record_once("echo", 410);
    // 399 whole dead letters survived the tear; events 391..=410 left one each.
    let dead = host.lines("dead-letters.jsonl");
    assert_eq!(dead.len(), 399 + 20);
    assert_eq!(dead.last().unwrap()["seq"], json!(410));
    assert!(dead.iter().all(|d| d["stage"] == "refused"), "{:?}", dead.first());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emit_dropped_by_the_offline_policy_is_dead_lettered_with_its_cause() {
    let port = oplet_tests::free_port();
    let host = Host::new(&format!(
        "[socket]\nlisten = \"127.0.0.1:{port}\"\nsecret = \"0123456789abcdef0123456789abcdef\"\noffline = \"drop\"\n\
         [grants.\"*\"]\nemit = [\"start_client\"]\n"
    ));
    let manifest = std::fs::read_to_string(repo_root().join("plugins/client-start/client-start.toml")).unwrap();
    install_plugin(&host.path().join("plugins"), "client-start", &manifest);
    let doc = json!({"_id": "c1", "uuid": "client-0001", "connection": true, "key": "k1"});
    let line = json!({"body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "clients", "key": {"_id": "c1"}, "full_document": doc}}});
    std::fs::write(host.path().join("events.jsonl"), format!("{line}\n")).unwrap();
    let mut oplet = start(&host).await;
    // The event completes only once its dead letter is durable.
    host.wait_checkpoint(&oplet, 1).await;
    let dead = host.lines("dead-letters.jsonl");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "sink:emit (client-start)");
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("start_client") && error.contains("client:client-0001 is offline (offline = \"drop\")"), "{error}");
    assert_eq!(dead[0]["event"]["body"]["data"]["full_document"]["uuid"], "client-0001", "the whole event is kept for a re-drive");
    assert!(oplet.terminate().unwrap().success(), "{}", oplet.logs());
}

/// The same with the MongoDB source and its checkpoints in MongoDB (`store =
/// "mongo"`): the audit file and dead letters are on the full disk, the
/// checkpoint is not, and still no change is lost or recorded twice.
#[tokio::test(flavor = "multi_thread")]
async fn with_mongodb_checkpoints_a_host_killed_on_a_full_disk_loses_and_repeats_nothing() {
    use mongodb::bson::{doc, Document};
    const N: u32 = 10_000;
    let mongo = tokio::task::block_in_place(oplet_tests::Mongo::start);
    let db = format!("oplet_durability_{}_{}", std::process::id(), oplet_tests::free_port());
    let ns = format!("{db}.orders");
    let source = format!(
        "[grants.\"*\"]\naudit = true\n[[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{}\"\nserver_selection_timeout_ms = 1500\n\
         collections = [\"{ns}\"]\n[source.reconnect]\ninitial_ms = 100\nmax_ms = 1500\n\
         [source.checkpoint]\nstore = \"mongo\"\ncollection = \"{db}.checkpoints\"\n",
        mongo.uri()
    );
    let host = Host::new("");
    // No JSON-lines source here: the config is the MongoDB one alone.
    let config = std::fs::read_to_string(host.config()).unwrap();
    let config = config[..config.find("[[source]]").unwrap()].to_string() + &source;
    std::fs::write(host.config(), config).unwrap();
    let disk = Tmpfs::mount(&host.state(), "1m");
    host.install_echo("echo");
    let client = mongo.client().await;
    let orders = client.database(&db).collection::<Document>("orders");
    // nx-27017 trims change history ~1000 entries behind the slowest open stream;
    // this idle stream, opened first, keeps what the killed host must resume from
    // (tests/support/README.md).
    let _anchor = orders.watch().await.unwrap();

    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("watching the change stream", WAIT).await.unwrap();
    let writer = tokio::spawn({
        let orders = orders.clone();
        async move {
            for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
                let docs: Vec<Document> = chunk.iter().map(|i| doc! { "_id": format!("o{i:05}"), "status": "paid", "note": "x".repeat(160) }).collect();
                orders.insert_many(docs).await.unwrap();
            }
        }
    });
    let mut oplet = oplet;
    wait_disk_full(&disk, &host, &oplet, u64::MAX).await;
    oplet.kill();
    writer.await.unwrap();

    disk.resize("200m");
    let mut oplet = Oplet::start(&host.config());
    let start = Instant::now();
    let ids = loop {
        let text = std::fs::read_to_string(host.state().join("audit.jsonl")).unwrap_or_default();
        let ids: Vec<String> = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).map(|r| r["record"]["doc"]["_id"].as_str().unwrap_or_default().to_string()).collect();
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        if unique.len() == N as usize {
            break ids;
        }
        assert!(oplet.is_running(), "the host stopped:\n{}", oplet.logs());
        assert!(start.elapsed() < WAIT, "waited {WAIT:?} for {N} records, have {}; log:\n{}", unique.len(), oplet.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ids.len(), N as usize, "records written twice: {}", ids.len() - N as usize);
    let status = oplet.terminate().unwrap();
    assert!(status.success(), "exit {status:?}:\n{}", oplet.logs());
    let after: Vec<Value> = host.lines("audit.jsonl"); // every line readable
    assert_eq!(after.len(), N as usize, "nothing more was written on the way out");
    let saved = client.database(&db).collection::<Document>("checkpoints").find_one(doc! {}).await.unwrap();
    assert!(saved.is_some(), "the checkpoint lives in MongoDB");
    assert!(!host.state().join("checkpoints").join(format!("mongo.{ns}.json")).exists(), "not in the local store");
}
