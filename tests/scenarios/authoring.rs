//! A plugin author's loop, with the real `oplet` binary: `plugin new` writes a
//! project (Rust or AssemblyScript) in a folder outside the repository that builds
//! and passes its own expected-effects test as written; a changed handler fails
//! with a diff and a non-zero exit until `--update`; and `events record` captures
//! MongoDB changes and Socket.IO client events (real python-socketio clients) that
//! `plugin test` replays exactly as the running host ran them, and on a full disk
//! fails naming it while keeping only whole events.

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

/// The changed handler logs `order ID (v2): OP`: `plugin test` must say which
/// events differ, show the old line taken away and the new one added, and exit 1;
/// after `--update` the same test passes, and the file holds the new line.
fn assert_change_is_caught_then_accepted(project: &Path, wasm: &Path, name: &str) {
    let out = plugin_test(project, wasm, name, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "a changed handler fails the test:\n{}", text(&out));
    assert!(stdout.contains("FAIL  sample-1 (events line 1, expected.jsonl line 1): the 1 effect(s) differ"), "{stdout}");
    assert!(stdout.contains("    -         \"message\": \"order 6741a3f0c2e4b0a1b2c3d401: insert\"\n"), "the diff shows the expected line:\n{stdout}");
    assert!(stdout.contains("    +         \"message\": \"order 6741a3f0c2e4b0a1b2c3d401 (v2): insert\"\n"), "the diff shows the new line:\n{stdout}");
    assert!(stdout.contains("ok    sample-5 (events line 5)"), "the unsubscribed event still matches:\n{stdout}");
    assert!(stdout.contains("5 event(s): 1 as expected, 4 mismatch(es)"), "{stdout}");

    let out = plugin_test(project, wasm, name, &["--update"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let expected = std::fs::read_to_string(project.join("expected.jsonl")).unwrap();
    assert_eq!(expected.matches(" (v2): ").count(), 4, "{expected}");
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

    edit(&project.join("src/lib.rs"), "format!(\"order {order}: {}\", change.op())", "format!(\"order {order} (v2): {}\", change.op())");
    must(&project, &cargo, &build, &env);
    assert_change_is_caught_then_accepted(&project, &wasm, "order-audit");

    // A capability the manifest no longer asks for fails --check-capabilities (and only then).
    edit(&project.join("order-audit.toml"), "audit = true ", "audit = false ");
    let out = plugin_test(&project, &wasm, "order-audit", &["--check-capabilities"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REFUSED: sample-2 (events line 2): effect 2 (audit): "), "{stderr}");
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

    edit(&project.join("assembly/index.ts"), "\"order \" + order + \": \"", "\"order \" + order + \" (v2): \"");
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

/// python-socketio clients (tests/support/sio_clients.py) connected to `url`, each
/// authenticating with the shared `secret`; every JSON line it prints is kept.
struct SioClients {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    _spec: oplet_tests::TempDir,
}

impl SioClients {
    fn start(url: &str, uuids: &[&str], secret: &str) -> SioClients {
        use std::io::BufRead;
        let python = std::env::var("OPLET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = Command::new(&python).args(["-c", "import socketio, aiohttp"]).status().is_ok_and(|s| s.success());
        assert!(ok, "`{python}` cannot import socketio and aiohttp: run `bash scripts/setup.sh` (pip install python-socketio aiohttp)");
        let spec = oplet_tests::temp_dir();
        let spec_path = spec.path().join("clients.json");
        let specs: Vec<Value> = uuids.iter().map(|u| serde_json::json!({"uuid": u, "secret": secret})).collect();
        std::fs::write(&spec_path, serde_json::to_vec(&specs).unwrap()).unwrap();
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(repo_root().join("tests/support/sio_clients.py"))
            .arg(url)
            .arg(&spec_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn sio_clients.py");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(_) => eprintln!("[sio_clients] {line}"),
                }
            }
        });
        let stdin = child.stdin.take();
        SioClients { child, stdin, lines, _spec: spec }
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        while !pred(&self.lines.lock().unwrap()) {
            assert!(start.elapsed() < WAIT, "waited {WAIT:?} for {what}; client lines: {:?}", self.lines.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn emit(&mut self, uuid: &str, event: &str, data: &Value) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", serde_json::json!({"op": "emit", "uuid": uuid, "event": event, "data": data})).unwrap();
        stdin.flush().unwrap();
    }

    /// Every event a client received: (receiving uuid, event name, data).
    fn received(&self) -> Vec<(String, String, Value)> {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|v| v["type"] == "event").map(|v| (v["uuid"].as_str().unwrap().into(), v["event"].as_str().unwrap().into(), v["data"].clone())).collect()
    }
}

impl Drop for SioClients {
    fn drop(&mut self) {
        // End of stdin: the script disconnects its clients and exits.
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same items in any order (JSON maps compare by content, not key order).
fn assert_same_items(got: Vec<(String, String, Value)>, want: Vec<(String, String, Value)>, what: &str) {
    let mut left = got.clone();
    for w in &want {
        let at = left.iter().position(|g| g == w).unwrap_or_else(|| panic!("{what}: {w:?} is missing:\n got {got:?}\nwant {want:?}"));
        left.remove(at);
    }
    assert!(left.is_empty(), "{what}: unexpected {left:?}:\n got {got:?}\nwant {want:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_socket_io_events_replay_through_plugin_test_as_the_host_ran_them() {
    const SECRET: &str = "record-secret-0123456789";
    let dir = oplet_tests::temp_dir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let manifest = "name = \"socket-echo\"\n[[subscribe]]\nkind = \"socket\"\nevents = [\"ping\"]\n[capabilities]\nemit = [\"echo\"]\n";
    let wasm = wasm_plugins().path("socket-echo");
    install_plugin_from(&plugins, "socket-echo", &wasm, manifest);
    std::fs::write(dir.path().join("socket-echo.toml"), manifest).unwrap();
    // The same host config twice but for the port: one runs the host, one the recorder.
    let config = |port: u16| {
        format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\nemit = [\"echo\"]\n\
             [socket]\nlisten = \"127.0.0.1:{port}\"\nsecret = \"{SECRET}\"\n"
        )
    };
    let (host_port, rec_port) = (free_port(), free_port());
    std::fs::write(dir.path().join("host.toml"), config(host_port)).unwrap();
    std::fs::write(dir.path().join("record.toml"), config(rec_port)).unwrap();
    let record_config = dir.path().join("record.toml");

    // Socket.IO events are not replayable: --since-checkpoint is refused, saying so.
    let out = oplet(dir.path(), &["events", "record", "--config", record_config.to_str().unwrap(), "--source", "socket", "--since-checkpoint"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Socket.IO events are not replayable"), "{}", text(&out));

    let host = tokio::task::block_in_place(|| Oplet::start(&dir.path().join("host.toml")));
    host.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    host.wait_for_log("socket: listening on", WAIT).await.unwrap();
    let recorded = dir.path().join("recorded.jsonl");
    let args = ["events", "record", "--config", record_config.to_str().unwrap(), "--source", "socket", "--limit", "5", "--out", recorded.to_str().unwrap()];
    let mut recorder = tokio::task::block_in_place(|| Oplet::spawn_args(&args, &[], None));
    recorder.wait_for_log("socket: listening on", WAIT).await.unwrap();

    // The same two clients connect to both, and send the same events to both: payloads
    // of every JSON shape (nested, unicode, a float with no fraction, a 2^53+1 integer).
    let uuids = ["client-a", "client-b"];
    let mut to_host = SioClients::start(&format!("http://127.0.0.1:{host_port}"), &uuids, SECRET);
    let mut to_rec = SioClients::start(&format!("http://127.0.0.1:{rec_port}"), &uuids, SECRET);
    for c in [&to_host, &to_rec] {
        c.wait_for("both clients connected", |l| l.iter().any(|v| v["type"] == "ready" && v["connected"] == 2)).await;
    }
    let sent: Vec<(&str, &str, Value)> = vec![
        ("client-a", "ping", serde_json::json!({"n": 1, "text": "héllo ✓", "nested": {"list": [1, 2.5, null, true, "x"]}})),
        ("client-b", "ping", serde_json::json!({"to_client": "client-a", "f": 1.0, "big": 9007199254740993u64, "neg": -5})),
        ("client-a", "ping", serde_json::json!("just a string")),
        ("client-b", "ping", Value::Null),
        // Recorded too, but the manifest subscribes to "ping" only: skipped in the replay.
        ("client-b", "typing", serde_json::json!({"page": "/orders"})),
    ];
    for (uuid, event, data) in &sent {
        to_host.emit(uuid, event, data);
        to_rec.emit(uuid, event, data);
    }

    let status = tokio::task::block_in_place(|| recorder.wait_exit(WAIT)).expect("the recorder stops after --limit 5");
    assert_eq!(status.code(), Some(0), "{}", recorder.logs());
    assert!(recorder.logs().contains("recorded 5 event(s) from source \"socket\""), "{}", recorder.logs());
    let events = read_lines(&recorded);
    // Each client's events in the order it sent them; the two clients may interleave.
    let got: Vec<(String, String, Value)> = events
        .iter()
        .map(|e| {
            assert_eq!((&e["source"], &e["body"]["kind"]), (&Value::from("socket"), &Value::from("socket")), "{e}");
            let d = &e["body"]["data"];
            (d["client"].as_str().unwrap().to_string(), d["event"].as_str().unwrap().to_string(), d["payload"].clone())
        })
        .collect();
    let want: Vec<(String, String, Value)> = sent.iter().map(|(u, e, d)| (u.to_string(), e.to_string(), d.clone())).collect();
    for u in uuids {
        let of = |v: &[(String, String, Value)]| v.iter().filter(|x| x.0 == u).cloned().collect::<Vec<_>>();
        assert_eq!(of(&got), of(&want), "client {u}: recorded events, in its order");
    }
    assert_same_items(got, want, "recorded events");

    // The live host answered the four pings; the replay of the recorded lines must
    // give the same emits (target, event, payload), and skip the unsubscribed event.
    to_host.wait_for("the host's four echoes", |l| l.iter().filter(|v| v["type"] == "event").count() >= 4).await;
    let out = oplet(
        dir.path(),
        &["plugin", "test", wasm.to_str().unwrap(), "--manifest", "socket-echo.toml", "--events", "recorded.jsonl", "--expect", "replayed.jsonl", "--update", "--check-capabilities"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let replayed = read_lines(&dir.path().join("replayed.jsonl"));
    assert_eq!(replayed.len(), 5, "{replayed:?}");
    let mut emits = Vec::new();
    for (line, event) in replayed.iter().zip(&events) {
        assert_eq!(line["id"], event["id"], "the replay keeps the recorded event ids");
        if event["body"]["data"]["event"] == "typing" {
            assert_eq!(line["skipped"], "not subscribed", "{line}");
            continue;
        }
        let [effect] = line["effects"].as_array().unwrap().as_slice() else { panic!("one emit per ping: {line}") };
        assert_eq!(effect["kind"], "emit", "{line}");
        let to = effect["data"]["to"]["client"].as_str().unwrap_or_else(|| panic!("an emit to a client: {effect}"));
        emits.push((to.to_string(), effect["data"]["event"].as_str().unwrap().to_string(), effect["data"]["payload"].clone()));
    }
    assert_same_items(emits, to_host.received(), "the replayed emits (left) and what the host emitted (right)");
    // And the recorded lines pass their own expected file as they are.
    let out = oplet(dir.path(), &["plugin", "test", wasm.to_str().unwrap(), "--manifest", "socket-echo.toml", "--events", "recorded.jsonl", "--expect", "replayed.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Without --limit it records until SIGTERM (or Ctrl-C), then exits 0 with every
    // line it took whole. The clients reconnect to the new recorder by themselves.
    let again = dir.path().join("again.jsonl");
    let args = ["events", "record", "--config", record_config.to_str().unwrap(), "--source", "socket", "--out", again.to_str().unwrap()];
    let mut recorder = tokio::task::block_in_place(|| Oplet::spawn_args(&args, &[], None));
    recorder.wait_for_log("socket: listening on", WAIT).await.unwrap();
    to_rec.wait_for("both clients reconnected", |l| l.iter().filter(|v| v["type"] == "connected" && v["n"] == 2).count() == 2).await;
    to_rec.emit("client-a", "ping", &serde_json::json!({"after": "restart"}));
    let lines = wait_lines(&again, 1, "recorded events", || recorder.logs()).await;
    assert_eq!(lines[0]["body"]["data"]["payload"], serde_json::json!({"after": "restart"}));
    let status = tokio::task::block_in_place(|| recorder.terminate()).unwrap();
    assert_eq!(status.code(), Some(0), "{}", recorder.logs());
    assert!(recorder.logs().contains("recorded 1 event(s)"), "{}", recorder.logs());
    assert_eq!(read_lines(&again).len(), 1);
    drop(host);
}

/// A tmpfs mounted for one test (needs root, as the durability scenario); unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output().expect("run mount (this test needs root)");
        assert!(out.status.success(), "mount a tmpfs on {} failed (this test needs root): {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.0).output().expect("run umount");
        if !out.status.success() && !std::thread::panicking() {
            panic!("umount {}: {}", self.0.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[test]
fn a_recording_that_fills_the_disk_fails_naming_it_and_keeps_only_whole_events() {
    let dir = oplet_tests::temp_dir();
    // 1,000 events of ~600 bytes from a JSON-lines source; the output disk holds ~100.
    let line = serde_json::json!({"body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "orders", "key": {"_id": "o1"}, "full_document": {"_id": "o1", "pad": "x".repeat(500)}}}});
    std::fs::write(dir.path().join("events.jsonl"), format!("{line}\n").repeat(1000)).unwrap();
    std::fs::write(dir.path().join("oplet.toml"), "[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\n").unwrap();
    let disk = SmallDisk::mount(&dir.path().join("full"), "64k");
    let out = oplet(dir.path(), &["events", "record", "--config", "oplet.toml", "--source", "events", "--out", "full/recorded.jsonl"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device") && stderr.contains("whole event(s) before it"), "{stderr}");
    let recorded = std::fs::read_to_string(disk.0.join("recorded.jsonl")).unwrap();
    assert!(!recorded.is_empty() && recorded.ends_with('\n'), "no torn last line: {:?}", &recorded[recorded.len().saturating_sub(80)..]);
    let n = recorded.lines().count();
    assert!(stderr.contains(&format!("the file keeps the {n} whole event(s)")), "{stderr}");
    // Every line left is an event plugin test reads.
    assert!(recorded.lines().all(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["body"]["kind"] == "change")));
}

#[test]
fn a_report_piped_into_a_reader_that_stops_early_ends_quietly_without_a_panic() {
    // `oplet plugin check X | head -0`: the reader is gone before the first line.
    let wasm = wasm_plugins().path("audit_log");
    let manifest = repo_root().join("plugins/audit-log/audit-log.toml");
    let mut child = Command::new(oplet_bin())
        .args(["plugin", "check"])
        .arg(&wasm)
        .arg("--manifest")
        .arg(&manifest)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run oplet plugin check");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for oplet plugin check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "a closed pipe made it panic:\n{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "ended by SIGPIPE as a Unix tool is ({:?}):\n{stderr}", out.status);
}
