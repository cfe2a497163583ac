//! A plugin author's loop, with the real `oplet` binary: `plugin new` writes a
//! project (Rust or AssemblyScript) in a folder outside the repository that builds
//! and passes its own expected-effects test as written; a changed handler fails
//! with a diff and a non-zero exit until `--update`; and `events record` captures
//! MongoDB changes that `plugin test` replays exactly as the running host ran them.

use mongodb::bson::{doc, Document};
use oplet_tests::{free_port, install_plugin_from, oplet_bin, repo_root, wasm_plugins, Mongo, Oplet};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// `oplet ARGS` in `cwd`, to completion.
fn oplet(cwd: &Path, args: &[&str]) -> Output {
    Command::new(oplet_bin()).args(args).current_dir(cwd).env("NO_COLOR", "1").output().expect("run oplet")
}

fn text(out: &Output) -> String {
    format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `program ARGS` in `cwd`; panics with its output unless it exits 0.
fn must(cwd: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} in {}:\n{}", cwd.display(), text(&out));
    out
}

/// A temporary folder outside the repository (the system temp dir), so the
/// project cannot lean on the repository's workspace or relative paths.
fn outside_repo() -> oplet_tests::TempDir {
    let dir = oplet_tests::temp_dir();
    assert!(!dir.path().starts_with(repo_root()), "{} is inside the repository", dir.path().display());
    dir
}

/// Replaces `from` with `to` in `file` (which must contain it).
fn edit(file: &Path, from: &str, to: &str) {
    let t = std::fs::read_to_string(file).unwrap();
    assert!(t.contains(from), "{} does not contain {from:?}", file.display());
    std::fs::write(file, t.replace(from, to)).unwrap();
}

/// `plugin test ... --expect expected.jsonl` of a scaffolded project.
fn plugin_test(project: &Path, wasm: &Path, name: &str, extra: &[&str]) -> Output {
    let manifest = format!("{name}.toml");
    let mut args = vec!["plugin", "test", wasm.to_str().unwrap(), "--manifest", &manifest, "--events", "events.jsonl", "--expect", "expected.jsonl"];
    args.extend_from_slice(extra);
    oplet(project, &args)
}

/// The changed handler gives `order:ID:v2`: `plugin test` must say which events
/// differ, show the old key taken away and the new one added, and exit 1; after
/// `--update` the same test passes, and the file holds the new key.
fn assert_change_is_caught_then_accepted(project: &Path, wasm: &Path, name: &str) {
    let out = plugin_test(project, wasm, name, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "a changed handler fails the test:\n{}", text(&out));
    assert!(stdout.contains("FAIL  sample-1 (events line 1, expected.jsonl line 1): the 1 effect(s) differ"), "{stdout}");
    assert!(stdout.contains("    -           \"order:6741a3f0c2e4b0a1b2c3d401\"\n"), "the diff shows the expected key:\n{stdout}");
    assert!(stdout.contains("    +           \"order:6741a3f0c2e4b0a1b2c3d401:v2\"\n"), "the diff shows the new key:\n{stdout}");
    assert!(stdout.contains("ok    sample-5 (events line 5)"), "the unsubscribed event still matches:\n{stdout}");
    assert!(stdout.contains("5 event(s): 1 as expected, 4 mismatch(es)"), "{stdout}");

    let out = plugin_test(project, wasm, name, &["--update"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let expected = std::fs::read_to_string(project.join("expected.jsonl")).unwrap();
    assert_eq!(expected.matches(":v2\"").count(), 4, "{expected}");
    let out = plugin_test(project, wasm, name, &["--check-capabilities"]);
    assert_eq!(out.status.code(), Some(0), "after --update the test passes:\n{}", text(&out));
}

#[test]
fn a_scaffolded_rust_plugin_builds_outside_the_repository_and_passes_its_own_tests() {
    let dir = outside_repo();
    let out = oplet(dir.path(), &["plugin", "new", "order-audit", "--dir", "order-audit"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let project = dir.path().join("order-audit");
    let cargo_toml = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let sdk = repo_root().join("sdk").canonicalize().unwrap();
    assert!(cargo_toml.contains(&format!("oplet-sdk = {{ version = \"0.1\", path = \"{}\" }}", sdk.display())), "{cargo_toml}");

    // One shared target folder keeps the suite fast; offline, since every crate is cached.
    let target = repo_root().join("target/scaffold");
    let env = [("CARGO_TARGET_DIR", target.to_str().unwrap())];
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tested = must(&project, &cargo, &["test", "--offline", "-j", "2"], &env);
    assert!(String::from_utf8_lossy(&tested.stdout).contains("test result: ok. 4 passed"), "{}", text(&tested));
    let build = ["build", "--offline", "-j", "2", "--release", "--target", "wasm32-unknown-unknown"];
    must(&project, &cargo, &build, &env);
    let wasm = target.join("wasm32-unknown-unknown/release/order_audit.wasm");

    let out = plugin_test(&project, &wasm, "order-audit", &["--check-capabilities"]);
    assert_eq!(out.status.code(), Some(0), "the project passes its own test as written:\n{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 event(s): 5 as expected, 0 mismatch(es)"), "{}", text(&out));

    edit(&project.join("src/lib.rs"), "format!(\"{}{order}\", self.config.cache_prefix)", "format!(\"{}{order}:v2\", self.config.cache_prefix)");
    must(&project, &cargo, &build, &env);
    assert_change_is_caught_then_accepted(&project, &wasm, "order-audit");

    // A capability the manifest no longer asks for fails --check-capabilities (and only then).
    edit(&project.join("order-audit.toml"), "cache_prefixes = [\"order:\"]", "cache_prefixes = [\"cart:\"]");
    let out = plugin_test(&project, &wasm, "order-audit", &["--check-capabilities"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REFUSED: sample-1 (events line 1): effect 1 (cache_delete): "), "{stderr}");
    assert_eq!(plugin_test(&project, &wasm, "order-audit", &[]).status.code(), Some(0), "without the flag a refusal is a warning");
}

#[test]
fn a_scaffolded_assemblyscript_plugin_builds_with_npm_and_passes_its_own_test() {
    let dir = outside_repo();
    let out = oplet(dir.path(), &["plugin", "new", "order-audit", "--lang", "assemblyscript", "--dir", "order-audit"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let project = dir.path().join("order-audit");
    let npm = "npm";
    // The compiler comes from the npm registry (the cache makes a second install fast).
    must(&project, npm, &["install", "--no-audit", "--no-fund", "--prefer-offline"], &[]);
    must(&project, npm, &["run", "build"], &[]);
    let tested = must(&project, npm, &["test"], &[]);
    assert!(String::from_utf8_lossy(&tested.stdout).contains("5 event(s): 5 as expected, 0 mismatch(es)"), "{}", text(&tested));

    // The same sample events give the same effects as the Rust template: one expected file.
    let shipped = std::fs::read_to_string(repo_root().join("host/templates/common/expected.jsonl")).unwrap();
    assert_eq!(std::fs::read_to_string(project.join("expected.jsonl")).unwrap(), shipped);

    edit(&project.join("assembly/index.ts"), "Effect.cacheDelete([cachePrefix + order])", "Effect.cacheDelete([cachePrefix + order + \":v2\"])");
    must(&project, npm, &["run", "build"], &[]);
    let out = Command::new(npm).arg("test").current_dir(&project).output().unwrap();
    assert!(!out.status.success(), "npm test fails on a changed handler:\n{}", text(&out));
    assert_change_is_caught_then_accepted(&project, &project.join("order-audit.wasm"), "order-audit");
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn wait_lines(path: &Path, n: usize, what: &str, logs: impl Fn() -> String) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        assert!(start.elapsed() < WAIT, "waited {WAIT:?} for {n} {what} in {}, have {}:\n{}", path.display(), lines.len(), logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_mongodb_changes_replay_through_plugin_test_as_the_host_ran_them() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let db = format!("oplet_rec{}_{}", std::process::id(), free_port());
    let ns = format!("{db}.orders");
    let dir = oplet_tests::temp_dir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let manifest = "name = \"audit-log\"\n[[subscribe]]\nkind = \"change\"\n[capabilities]\naudit = true\n";
    let wasm: PathBuf = wasm_plugins().path("audit-log");
    install_plugin_from(&plugins, "audit-log", &wasm, manifest);
    std::fs::write(dir.path().join("audit-log.toml"), manifest).unwrap();
    let config = dir.path().join("oplet.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\naudit = true\n\
             [[source]]\ntype = \"mongo\"\nname = \"orders\"\nuri = \"{}\"\ncollections = [\"{ns}\"]\nfull_document = \"updateLookup\"\n",
            mongo.uri()
        ),
    )
    .unwrap();

    // The host and the recorder watch the same collection at the same time.
    let host = tokio::task::block_in_place(|| Oplet::start(&config));
    let recorded = dir.path().join("recorded.jsonl");
    let args = ["events", "record", "--config", config.to_str().unwrap(), "--source", "orders", "--limit", "3", "--out", recorded.to_str().unwrap()];
    let mut recorder = tokio::task::block_in_place(|| Oplet::spawn_args(&args, &[], None));
    host.wait_for_log("watching the change stream", WAIT).await.unwrap();
    recorder.wait_for_log("watching the change stream", WAIT).await.unwrap();

    let client = mongo.client().await;
    let orders = client.database(&db).collection::<Document>("orders");
    orders.insert_one(doc! { "_id": "o1", "status": "open", "total": 12.5, "actor": "ada" }).await.unwrap();
    orders.update_one(doc! { "_id": "o1" }, doc! { "$set": { "status": "paid" }, "$unset": { "total": "" } }).await.unwrap();
    orders.delete_one(doc! { "_id": "o1" }).await.unwrap();

    let status = tokio::task::block_in_place(|| recorder.wait_exit(WAIT)).expect("the recorder stops after --limit 3");
    assert_eq!(status.code(), Some(0), "{}", recorder.logs());
    let events = read_lines(&recorded);
    let ops: Vec<&str> = events.iter().map(|e| e["body"]["data"]["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["insert", "update", "delete"], "{events:?}");
    if std::env::var_os(oplet_tests::MONGODB_URI_ENV).is_some() {
        // A real server describes the update.
        assert_eq!(events[1]["body"]["data"]["updated_fields"], serde_json::json!({"status": "paid"}), "{}", events[1]);
        assert_eq!(events[1]["body"]["data"]["removed_fields"], serde_json::json!(["total"]));
    } else {
        // nx-27017 sends no updateDescription (TESTING.md): recorded as it came, nil.
        assert_eq!(events[1]["body"]["data"]["updated_fields"], Value::Null, "{}", events[1]);
    }
    assert!(events.iter().all(|e| e["body"]["data"]["key"]["_id"] == "o1" && e["source"] == "orders"), "{events:?}");
    // It never moved the host's checkpoints: it kept its own.
    assert!(!recorder.logs().contains("state/checkpoints"), "{}", recorder.logs());

    let audit = wait_lines(&dir.path().join("state/audit.jsonl"), 3, "audit records", || host.logs()).await;
    let out = oplet(
        dir.path(),
        &["plugin", "test", wasm.to_str().unwrap(), "--manifest", "audit-log.toml", "--events", "recorded.jsonl", "--expect", "replayed.jsonl", "--update"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let replayed = read_lines(&dir.path().join("replayed.jsonl"));
    assert_eq!(replayed.len(), 3);
    for (i, (live, again)) in audit.iter().zip(&replayed).enumerate() {
        assert_eq!(again["effects"].as_array().unwrap().len(), 1, "{again}");
        assert_eq!(again["effects"][0]["kind"], "audit");
        // Same record, field for field: the event id, the server's time, key, fields, actor.
        // The host reads the server's document in its field order; a JSON line is
        // read back into a map with sorted keys; and nx-27017 has no wall time per
        // change, so each stream stamps its own. Those differ; nothing else may.
        let (mut again, mut live) = (again["effects"][0]["data"]["record"].clone(), live["record"].clone());
        for record in [&mut again, &mut live] {
            if let Some(fields) = record["changed_fields"].as_array_mut() {
                fields.sort_by_key(|f| f.to_string());
            }
            if std::env::var_os(oplet_tests::MONGODB_URI_ENV).is_none() {
                record.as_object_mut().unwrap().remove("time_ms");
            }
        }
        assert_eq!(again, live, "event {}: the replay differs from what the host ran", i + 1);
        assert_eq!(again["id"], live["record"]["event_id"]);
    }
    drop(host);
}
