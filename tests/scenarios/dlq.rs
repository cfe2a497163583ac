//! `oplet dlq` through the real binary: a plugin fails on one document, the
//! failure is listed and shown, `dlq replay` refuses while the host runs, the
//! plugin is fixed (a new module), the replay applies the effect exactly once,
//! and a second replay does nothing; a replay that fails again goes back to the
//! store with its new cause; a replay cut short leaves its letter in doubt.

use oplet_tests::{install_plugin_from, wasm_plugins, Oplet, TempDir};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

struct Host {
    dir: TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        let config = "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = 30\n[grants.\"*\"]\naudit = true\n\
                      [[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\nfollow = true\n";
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        Host { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> String {
        self.path().join("oplet.toml").display().to_string()
    }

    fn install(&self, module: &str, version: &str) {
        let manifest = format!("name = \"p\"\nversion = \"{version}\"\n[[subscribe]]\nkind = \"change\"\nnamespaces = [\"app.*\"]\n[capabilities]\naudit = true\n");
        install_plugin_from(&self.path().join("plugins"), "p", &wasm_plugins().path(module), &manifest);
    }

    fn append(&self, id: &str, fault: Option<&str>) {
        let mut doc = serde_json::json!({"_id": id});
        if let Some(f) = fault {
            doc["fault"] = f.into();
        }
        let ev = serde_json::json!({"id": id, "body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "users", "key": {"_id": id}, "full_document": doc}}});
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path().join("events.jsonl")).unwrap();
        writeln!(f, "{ev}").unwrap();
    }

    /// Audit records written for the event `id`.
    fn audited(&self, id: &str) -> usize {
        let text = std::fs::read_to_string(self.path().join("state/audit.jsonl")).unwrap_or_default();
        text.lines().filter(|l| serde_json::from_str::<Value>(l).unwrap()["event_id"] == id).count()
    }

    fn checkpoint_line(&self) -> u64 {
        std::fs::read_to_string(self.path().join("state/checkpoints/events.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["line"].as_u64())
            .unwrap_or(0)
    }

    /// `oplet ARGS --config CONFIG`: (exit code, stdout, stderr).
    fn oplet(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(oplet_tests::oplet_bin()).args(args).args(["--config", &self.config()]).env("NO_COLOR", "1").output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_replayed_once_after_the_plugin_is_fixed() {
    let host = Host::new();
    host.install("faulty", "1.0.0");
    let mut oplet = Oplet::start(&host.path().join("oplet.toml"));
    host.append("a", None);
    host.append("b", Some("error"));
    host.append("c", None);
    oplet.wait_until("all three events checkpointed", WAIT, || host.checkpoint_line() >= 3).await;
    assert_eq!((host.audited("a"), host.audited("b"), host.audited("c")), (1, 0, 1));

    let (code, out, err) = host.oplet(&["dlq", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let letters: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 1, "{out}");
    let id = letters[0]["id"].as_str().unwrap().to_string();
    assert_eq!((letters[0]["stage"].as_str(), letters[0]["event_id"].as_str(), letters[0]["replay"].as_str()), (Some("p"), Some("b"), Some("pending")));
    let (_, none, _) = host.oplet(&["dlq", "list", "--json", "--cause", "no such cause"]);
    assert_eq!(none, "", "the cause filter filters");
    let (code, shown, _) = host.oplet(&["dlq", "show", &id]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["error"], "plugin error: refused on purpose");
    assert_eq!(shown["event"]["id"], "b");
    let (code, _, err) = host.oplet(&["dlq", "show", "000000000000"]);
    assert_eq!(code, 2);
    assert!(err.contains("no dead letter has ID \"000000000000\""), "{err}");

    // The host appends to the same store: a replay waits until it is stopped.
    let (code, _, err) = host.oplet(&["dlq", "replay"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a host is running with state_dir") && err.contains("stop it"), "{err}");
    let status = oplet.terminate().unwrap();
    assert!(status.success(), "{status}");

    // Not yet fixed: the replay fails again and the store gets the new failure.
    let (code, out, _) = host.oplet(&["dlq", "replay", "--plugin", "p"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{id}: failed again in p v1.0.0")), "{out}");
    let (_, out, _) = host.oplet(&["dlq", "list", "--json"]);
    let letters: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 2, "{out}");
    assert_eq!(letters[0]["replay"], "failed-again");
    let new_id = letters[1]["id"].as_str().unwrap().to_string();
    assert!(letters[1]["error"].as_str().unwrap().starts_with(&format!("replay of dead letter {id}: plugin error")), "{out}");

    // The fix: a new module under the same name.
    host.install("echo", "1.0.1");
    let (code, out, err) = host.oplet(&["dlq", "replay", "--plugin", "p"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{new_id}: replayed through p v1.0.1")), "{out}");
    assert!(out.contains(&format!("{id}: skipped, already failed-again")), "{out}");
    assert_eq!(host.audited("b"), 1, "the effect is applied once");

    // Again: nothing left to replay, nothing applied twice.
    let (code, out, _) = host.oplet(&["dlq", "replay"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to replay"), "{out}");
    assert_eq!(host.audited("b"), 1);
    let (_, out, _) = host.oplet(&["dlq", "list"]);
    assert!(out.lines().any(|l| l.starts_with(&new_id) && l.contains("replayed")), "{out}");

    // The host starts again on the same state folder and replays nothing committed.
    let mut oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    host.append("d", None);
    oplet.wait_until("the next event", WAIT, || host.audited("d") == 1).await;
    assert_eq!((host.audited("a"), host.audited("b"), host.audited("c")), (1, 1, 1));

    // A replay killed between its claim and its outcome leaves exactly a fsynced
    // `claimed` mark: that letter is in doubt, and only `--id ID --again` runs it.
    // The failing module again, so that `e` becomes a dead letter.
    assert!(oplet.terminate().unwrap().success());
    host.install("faulty", "1.0.2");
    let mut oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    host.append("e", Some("error"));
    oplet.wait_until("the next failure", WAIT, || host.oplet(&["dlq", "list", "--json", "--cause", "refused on purpose"]).1.contains("\"e\""))
        .await;
    assert!(oplet.terminate().unwrap().success());
    host.install("echo", "1.0.3");
    let (_, out, _) = host.oplet(&["dlq", "list", "--json", "--since", "1h"]);
    let e_id = out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|v| v["event_id"] == "e").unwrap()["id"].as_str().unwrap().to_string();
    let mut marks = std::fs::OpenOptions::new().append(true).open(host.path().join("state/dead-letters.replays.jsonl")).unwrap();
    writeln!(marks, "{}", serde_json::json!({"id": e_id, "mark": "claimed", "time_ms": 1, "cause": null})).unwrap();
    let (code, out, _) = host.oplet(&["dlq", "replay"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{e_id}: skipped, already in-doubt")) && out.contains("nothing to replay"), "{out}");
    assert_eq!(host.audited("e"), 0);
    let (code, out, _) = host.oplet(&["dlq", "replay", "--id", &e_id, "--again"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{e_id}: replayed through p v1.0.3")), "{out}");
    assert_eq!(host.audited("e"), 1);
}
