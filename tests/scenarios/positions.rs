//! `seq` and positions through the real binary: a MongoDB stream's `seq` goes on
//! across runs (saved with its checkpoint, locally or in MongoDB); a JSON-lines
//! checkpoint knows its file, so a replaced, rewritten or rotated file is said
//! loudly and read from its first line (never skipped into), an appended one goes
//! on where it was, and an old bare-number checkpoint still works.

use mongodb::bson::{doc, Document};
use oplet_tests::{install_plugin, Mongo, Oplet, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

struct Host {
    dir: TempDir,
}

impl Host {
    fn new(config: &str, namespaces: &str) -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let text = format!("state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\naudit = true\n{config}\n");
        std::fs::write(dir.path().join("oplet.toml"), text).unwrap();
        let manifest = format!("name = \"echo\"\n[[subscribe]]\nnamespaces = [\"{namespaces}\"]\n[capabilities]\naudit = true\n");
        install_plugin(&dir.path().join("plugins"), "echo", &manifest);
        Host { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn start(&self) -> Oplet {
        Oplet::start(&self.path("oplet.toml"))
    }

    /// (seq, id) of every event echo saw, in file order.
    fn seen(&self) -> Vec<(u64, String)> {
        let text = std::fs::read_to_string(self.path("state/audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|r| (r["record"]["seq"].as_u64().unwrap(), r["record"]["id"].as_str().unwrap().to_string()))
            .collect()
    }

    fn checkpoint(&self, key: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.path(&format!("state/checkpoints/{key}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Runs to the end of a file that is not followed; asserts exit 0.
    fn run_once(&self) -> String {
        let mut oplet = self.start();
        let status = oplet.wait_exit(WAIT).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(status.code(), Some(0), "{}", oplet.logs());
        oplet.logs()
    }
}

/// JSON-lines change events for `app.items`, one per `n`, tagged so that two files
/// with the same numbers differ.
fn lines(tag: &str, ns: std::ops::Range<u64>) -> String {
    ns.map(|n| {
        json!({"body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "items", "key": {"_id": n}, "full_document": {"_id": n, "tag": tag}}}})
            .to_string()
            + "\n"
    })
    .collect()
}

fn jsonl_host() -> Host {
    Host::new("[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\n", "app.*")
}

/// Puts `text` at `path` as a new file (a new inode), as a deploy or logrotate does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn ids(prefix: &str, range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|n| format!("{prefix}{n}")).collect()
}

fn seqs(seen: &[(u64, String)]) -> Vec<u64> {
    seen.iter().map(|s| s.0).collect()
}

#[test]
fn an_appended_file_goes_on_after_its_last_line_and_the_checkpoint_knows_the_file() {
    let host = jsonl_host();
    let file = host.path("events.jsonl");
    std::fs::write(&file, lines("a", 1..4)).unwrap();
    host.run_once();
    let ckpt = host.checkpoint("events").expect("a checkpoint");
    assert_eq!((ckpt["line"].as_u64(), ckpt["seq"].as_u64()), (Some(3), Some(3)), "{ckpt}");
    assert!(ckpt["file"]["ino"].is_u64() && ckpt["file"]["head"].as_str().is_some_and(|h| h.len() == 64), "{ckpt}");
    assert_eq!(ckpt["offset"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));

    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    std::io::Write::write_all(&mut f, lines("a", 4..6).as_bytes()).unwrap();
    let logs = host.run_once();
    assert!(!logs.contains("NOT THE SAME FILE"), "{logs}");
    let seen = host.seen();
    assert_eq!(seqs(&seen), vec![1, 2, 3, 4, 5]);
    assert_eq!(seen.iter().map(|s| s.1.clone()).collect::<Vec<_>>(), ids("events:", 1..=5));
}

#[test]
fn a_replaced_file_is_said_loudly_and_read_from_its_first_line_with_seq_going_on() {
    let host = jsonl_host();
    let file = host.path("events.jsonl");
    std::fs::write(&file, lines("a", 1..6)).unwrap();
    host.run_once();
    assert_eq!(host.seen().len(), 5);

    // A new, shorter file: the old checkpoint (after line 5) would skip all of it.
    replace(&file, &lines("b", 1..4));
    let logs = host.run_once();
    let warning = logs.lines().find(|l| l.contains("NOT THE SAME FILE")).unwrap_or_else(|| panic!("no warning:\n{logs}"));
    assert!(warning.contains("WARN") && warning.contains("first line"), "{warning}");
    let seen = host.seen();
    assert_eq!(seqs(&seen), vec![1, 2, 3, 4, 5, 6, 7, 8], "every line of the new file, seq going on");
    assert_eq!(seen[5..].iter().map(|s| s.1.clone()).collect::<Vec<_>>(), ids("events:1:", 1..=3), "ids never repeat the old file's");
    assert_eq!(host.checkpoint("events").unwrap()["gen"], 1);

    // The same inode rewritten with other content, longer than before: the head differs.
    std::fs::write(&file, lines("c", 1..8)).unwrap();
    let logs = host.run_once();
    assert!(logs.contains("NOT THE SAME FILE"), "{logs}");
    let seen = host.seen();
    assert_eq!(seen.len(), 15);
    assert_eq!(seen[8..].iter().map(|s| s.1.clone()).collect::<Vec<_>>(), ids("events:2:", 1..=7));
    assert_eq!(seqs(&seen[8..]), (9..=15).collect::<Vec<_>>());

    // Run again on the same file: nothing new, nothing repeated, no warning.
    let logs = host.run_once();
    assert!(!logs.contains("NOT THE SAME FILE"), "{logs}");
    assert_eq!(host.seen().len(), 15);
}

#[test]
fn an_old_bare_number_checkpoint_still_resumes_and_one_past_the_end_is_noticed() {
    let host = jsonl_host();
    let file = host.path("events.jsonl");
    std::fs::write(&file, lines("a", 1..6)).unwrap();
    std::fs::create_dir_all(host.path("state/checkpoints")).unwrap();
    std::fs::write(host.path("state/checkpoints/events.json"), "3").unwrap();
    host.run_once();
    assert_eq!(host.seen(), vec![(4, "events:4".to_string()), (5, "events:5".to_string())]);
    let ckpt = host.checkpoint("events").unwrap();
    assert!(ckpt["file"].is_object(), "rewritten with the file's identity: {ckpt}");

    // A bare checkpoint past the end of the file: it was another file.
    let other = jsonl_host();
    std::fs::write(other.path("events.jsonl"), lines("a", 1..3)).unwrap();
    std::fs::create_dir_all(other.path("state/checkpoints")).unwrap();
    std::fs::write(other.path("state/checkpoints/events.json"), "9").unwrap();
    let logs = other.run_once();
    assert!(logs.contains("NOT THE SAME FILE") && logs.contains("fewer than the 9"), "{logs}");
    assert_eq!(other.seen(), vec![(10, "events:1:1".to_string()), (11, "events:1:2".to_string())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_followed_file_rotated_in_place_is_read_from_its_first_line() {
    let host = Host::new("[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\nfollow = true\n", "app.*");
    let file = host.path("events.jsonl");
    std::fs::write(&file, lines("a", 1..3)).unwrap();
    let mut oplet = tokio::task::block_in_place(|| host.start());
    eventually("2 events", || host.seen().len() >= 2).await;
    replace(&file, &lines("b", 1..4));
    eventually("the rotated file's 3 events", || host.seen().len() >= 5).await;
    let seen = host.seen();
    assert_eq!(seqs(&seen), vec![1, 2, 3, 4, 5], "{seen:?}");
    assert_eq!(seen[2].1, "events:1:1");
    assert!(oplet.logs().contains("NOT THE SAME FILE"), "{}", oplet.logs());
    let status = tokio::task::block_in_place(|| oplet.terminate()).unwrap();
    assert_eq!(status.code(), Some(0));
}

async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mongodb_stream_seq_goes_on_across_runs_with_either_checkpoint_store() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    for (i, store) in ["local", "mongo"].into_iter().enumerate() {
        let db = format!("oplet_seq_{}_{i}_{}", std::process::id(), oplet_tests::free_port());
        // nx-27017 keeps every database's collections in one file: names differ too.
        let coll = format!("items{i}");
        let ns = format!("{db}.{coll}");
        let host = Host::new(
            &format!(
                "[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"{}\"\ncollections = [\"{ns}\"]\n[source.checkpoint]\nstore = \"{store}\"\ncollection = \"{db}.ckpt{i}\"\n",
                mongo.uri()
            ),
            &ns,
        );
        let items = mongo.client().await.database(&db).collection::<Document>(&coll);
        for round in 0..2u64 {
            let mut oplet = tokio::task::block_in_place(|| host.start());
            oplet.wait_for_log("watching the change stream", WAIT).await.unwrap();
            for k in 0..3 {
                items.insert_one(doc! { "_id": format!("r{round}-{k}") }).await.unwrap();
            }
            eventually("the round's events", || host.seen().len() as u64 >= 3 * (round + 1)).await;
            let status = tokio::task::block_in_place(|| oplet.terminate()).unwrap();
            assert_eq!(status.code(), Some(0), "{}", oplet.logs());
        }
        let seen = host.seen();
        assert_eq!(seqs(&seen), vec![1, 2, 3, 4, 5, 6], "store = {store}: seq goes on after the restart: {seen:?}");
        if store == "local" {
            let ckpt = host.checkpoint(&format!("m.{ns}")).unwrap();
            assert_eq!(ckpt["seq"], 6, "{ckpt}");
        } else {
            let saved = mongo.client().await.database(&db).collection::<Document>(&format!("ckpt{i}")).find_one(doc! { "_id": format!("m.{ns}") }).await.unwrap();
            let saved = saved.expect("a checkpoint document");
            let seq = saved.get_document("position").unwrap().get("seq").cloned();
            assert!(matches!(seq, Some(mongodb::bson::Bson::Int64(6)) | Some(mongodb::bson::Bson::Int32(6))), "{saved}");
        }
    }
}
