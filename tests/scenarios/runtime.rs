//! The plugin runtime through the real `oplet` binary, fed by the JSON-lines source:
//! faulty plugins fail alone, broken modules are refused with the reason, a plugin
//! replaced mid-stream sees every event once and in order, ungranted effects are
//! refused, and a restart resumes after the checkpoint.

use oplet_tests::{install_plugin, install_plugin_bytes, remove_plugin, wasm_plugins, Oplet, TempDir};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A host folder: config, plugin dir, state dir, events file.
struct HostDir {
    dir: TempDir,
}

impl HostDir {
    fn new(extra_config: &str, follow: bool) -> HostDir {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        let config = format!(
            r#"state_dir = "state"
[plugins]
dir = "plugins"
debounce_ms = 30
[[source]]
type = "jsonl"
name = "events"
path = "events.jsonl"
follow = {follow}
{extra_config}
"#
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        HostDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn plugins(&self) -> PathBuf {
        self.path().join("plugins")
    }
    fn config(&self) -> PathBuf {
        self.path().join("oplet.toml")
    }

    /// Appends change events for `app.items`, one per document given.
    fn append(&self, docs: &[Value]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path().join("events.jsonl")).unwrap();
        let mut text = String::new();
        for d in docs {
            let line = json!({"body": {"kind": "change", "data": {
                "op": "insert", "db": "app", "coll": "items",
                "key": {"_id": d["n"].clone()}, "full_document": d}}});
            text.push_str(&line.to_string());
            text.push('\n');
        }
        f.write_all(text.as_bytes()).unwrap();
    }

    fn audit(&self) -> Vec<Value> {
        read_lines(&self.path().join("state/audit.jsonl"))
    }

    fn dead_letters(&self) -> Vec<Value> {
        read_lines(&self.path().join("state/dead-letters.jsonl"))
    }

    fn audit_of(&self, plugin: &str) -> Vec<Value> {
        self.audit().into_iter().filter(|r| r["plugin"] == plugin).collect()
    }

    async fn wait_audit(&self, plugin: &str, count: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let got = self.audit_of(plugin);
            if got.len() >= count {
                return got;
            }
            assert!(start.elapsed() < WAIT, "waited {WAIT:?} for {count} audit records of {plugin}, have {}", got.len());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

use oplet_tests::read_json_lines as read_lines;

fn manifest(name: &str, limits: &str) -> String {
    format!("name = \"{name}\"\n[[subscribe]]\nnamespaces = [\"app.*\"]\n[capabilities]\naudit = true\n{limits}")
}

const GRANT_AUDIT: &str = "[grants.\"*\"]\naudit = true\n";

fn docs(range: std::ops::Range<i64>) -> Vec<Value> {
    range.map(|n| json!({"n": n})).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_faulty_plugin_fails_alone_and_the_host_keeps_going() {
    let host = HostDir::new(GRANT_AUDIT, false);
    let limits = "[limits]\ntime_ms = 100\nmemory_mb = 16\n";
    install_plugin(&host.plugins(), "faulty", &manifest("faulty", limits));
    install_plugin(&host.plugins(), "echo", &manifest("echo", ""));
    let faults = [None, Some("panic"), None, Some("loop"), None, Some("membomb"), None, Some("error"), Some("unreachable"), None];
    let events: Vec<Value> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            Some(f) => json!({"n": i as i64 + 1, "fault": f}),
            None => json!({"n": i as i64 + 1}),
        })
        .collect();
    host.append(&events);

    let mut oplet = Oplet::start(&host.config());
    let status = oplet.wait_exit(WAIT).expect("the host exits when the file is done");
    assert!(status.success(), "exit status {status:?}\n{}", oplet.logs());

    // The healthy plugin saw all ten events; the faulty one the five good ones.
    let echo: Vec<i64> = host.audit_of("echo").iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(echo, (1..=10).collect::<Vec<_>>());
    let mut ok: Vec<i64> = host.audit_of("faulty").iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    ok.sort();
    assert_eq!(ok, vec![1, 3, 5, 7, 10]);

    // Each failure is dead-lettered with its exact reason.
    let dead = host.dead_letters();
    let reason = |seq: i64| -> String {
        dead.iter()
            .find(|d| d["stage"] == "faulty" && d["seq"] == seq)
            .unwrap_or_else(|| panic!("no dead letter for seq {seq}: {dead:?}"))["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason(2).contains("plugin panicked: panicked at") && reason(2).contains("asked to panic"), "{}", reason(2));
    assert!(reason(4).starts_with("timeout: the call ran past its time budget of 100 ms"), "{}", reason(4));
    assert!(reason(6).starts_with("out of memory:") && reason(6).contains("limit of 16777216 bytes"), "{}", reason(6));
    assert_eq!(reason(8), "plugin error: refused on purpose");
    assert!(reason(9).starts_with("trap: wasm `unreachable` instruction executed"), "{}", reason(9));
    assert_eq!(dead.len(), 5, "only the five faults are dead-lettered: {dead:?}");
    // The log names plugin, event and cause.
    let line = oplet.log_lines_containing("plugin failed on event").into_iter().find(|l| l.contains("seq=4")).expect("a log line for seq 4");
    assert!(line.contains("plugin=faulty") && line.contains("timeout"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_that_break_the_abi_are_refused_with_the_reason() {
    let host = HostDir::new(GRANT_AUDIT, false);
    let plugins = host.plugins();
    install_plugin(&plugins, "missing-handle", &manifest("missing-handle", ""));
    install_plugin(&plugins, "wrong-abi", &manifest("wrong-abi", ""));
    install_plugin_bytes(&plugins, "not-wasm", b"\x7fELF definitely not wasm", &manifest("not-wasm", ""));
    install_plugin(&plugins, "garbage-reply", &manifest("garbage-reply", ""));
    install_plugin(&plugins, "bad-pointer", &manifest("bad-pointer", ""));
    install_plugin(&plugins, "echo", &manifest("echo", ""));
    // A manifest with a typo is refused too, naming the key.
    install_plugin(&plugins, "noop", "name = \"noop\"\n[[subscribe]]\nnamespace = [\"app.*\"]\n");
    host.append(&docs(1..4));

    let mut oplet = Oplet::start(&host.config());
    let status = oplet.wait_exit(WAIT).unwrap();
    assert!(status.success(), "{}", oplet.logs());
    let refused = |name: &str| -> String {
        oplet
            .log_lines_containing("refusing plugin")
            .into_iter()
            .find(|l| l.trim_end().ends_with(&format!("plugin={name}")))
            .unwrap_or_else(|| panic!("no refusal logged for {name}:\n{}", oplet.logs()))
    };
    assert!(refused("missing-handle").contains("missing export `oplet_handle`"));
    assert!(refused("wrong-abi").contains("speaks plugin ABI version 999, this host speaks version 1"));
    assert!(refused("not-wasm").contains("not a valid WebAssembly module"));
    assert!(refused("noop").contains("unknown field `namespace`"));

    // Modules that load but answer badly fail each event, not the host.
    assert_eq!(host.audit_of("echo").len(), 3);
    let dead = host.dead_letters();
    let errors = |stage: &str| -> Vec<String> {
        dead.iter().filter(|d| d["stage"] == stage).map(|d| d["error"].as_str().unwrap().to_string()).collect()
    };
    let garbage = errors("garbage-reply");
    assert_eq!(garbage.len(), 3, "{dead:?}");
    assert!(garbage[0].starts_with("bad reply: not a MessagePack Reply"), "{}", garbage[0]);
    let bad_ptr = errors("bad-pointer");
    assert_eq!(bad_ptr.len(), 3);
    assert!(bad_ptr[0].contains("outside linear memory"), "{}", bad_ptr[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_replaced_mid_stream_sees_every_event_once_in_order() {
    let host = HostDir::new(GRANT_AUDIT, true);
    let plugins = host.plugins();
    let versioned = |v: &str| oplet_tests::install_plugin_from(&plugins, "v", &wasm_plugins().path(v), &manifest("v", ""));
    versioned("versioned-a");
    install_plugin(&plugins, "echo", &manifest("echo", ""));
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("2 plugin(s) loaded", WAIT).await.unwrap();

    // Events flow in bursts before, during and after the swap of the module.
    let mut next = 1;
    let burst = |next: &mut i64| {
        host.append(&docs(*next..*next + 25));
        *next += 25;
    };
    for _ in 0..8 {
        burst(&mut next);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    versioned("versioned-b");
    let swap_started = Instant::now();
    while oplet.log_lines_containing("plugin reloaded").is_empty() {
        assert!(swap_started.elapsed() < WAIT, "no reload within {WAIT:?}:\n{}", oplet.logs());
        burst(&mut next);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for _ in 0..8 {
        burst(&mut next);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let total = (next - 1) as usize;
    let records = host.wait_audit("v", total).await;
    let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>(), "every event once, in order");
    let versions: Vec<&str> = records.iter().map(|r| r["record"]["version"].as_str().unwrap()).collect();
    let first_b = versions.iter().position(|v| *v == "b").expect("version b handled events after the swap");
    assert!(first_b > 0, "version a handled the first events");
    assert!(versions[first_b..].iter().all(|v| *v == "b"), "no event went back to version a after the swap");

    // A corrupt replacement is refused and version b keeps serving.
    install_plugin_bytes(&plugins, "v", b"\0asm\x01\0\0\0\x01garbage", &manifest("v", ""));
    oplet.wait_for_log("refusing new version of plugin", WAIT).await.unwrap();
    host.append(&docs(next..next + 10));
    next += 10;
    let records = host.wait_audit("v", total + 10).await;
    assert!(records[total..].iter().all(|r| r["record"]["version"] == "b"));

    // Removing the file unloads it: later events reach echo only.
    remove_plugin(&plugins, "v");
    oplet.wait_for_log("plugin unloaded", WAIT).await.unwrap();
    host.append(&docs(next..next + 10));
    next += 10;
    host.wait_audit("echo", (next - 1) as usize).await;
    assert_eq!(host.audit_of("v").len(), total + 10, "an unloaded plugin handles nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_effect_the_host_did_not_grant_is_refused() {
    let host = HostDir::new(GRANT_AUDIT, false);
    let asks_for_more = "name = \"greedy\"\n[[subscribe]]\n[capabilities]\naudit = true\ncache_prefixes = [\"secret:\"]\ntables = [\"forbidden\"]\n";
    install_plugin(&host.plugins(), "greedy", asks_for_more);
    host.append(&docs(1..3));
    let mut oplet = Oplet::start(&host.config());
    let status = oplet.wait_exit(WAIT).unwrap();
    assert!(status.success(), "{}", oplet.logs());
    assert!(oplet.logs().contains("the host does not grant cache prefix \"secret:\", table \"forbidden\""), "{}", oplet.logs());
    assert_eq!(host.audit_of("greedy").len(), 2, "the granted effect is applied");
    let dead = host.dead_letters();
    let errors: Vec<&str> = dead.iter().filter(|d| d["seq"] == 1).map(|d| d["error"].as_str().unwrap()).collect();
    assert_eq!(errors.len(), 3, "{dead:?}");
    assert!(errors[0].contains("effect cache_delete refused: capability refused: cache key \"secret:1\" is outside the granted prefixes []"), "{}", errors[0]);
    assert!(errors[1].contains("effect row_upsert refused: capability refused: table \"forbidden\""), "{}", errors[1]);
    assert!(errors[2].contains("effect emit refused: capability refused: emitting \"not_allowed\" is not granted"), "{}", errors[2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_receives_the_manifest_config_and_a_refusing_init_keeps_the_plugin_out() {
    let host = HostDir::new(GRANT_AUDIT, false);
    let with_config = |cfg: &str| format!("{}\n[config]\n{cfg}\n", manifest("config-echo", ""));
    install_plugin(&host.plugins(), "config-echo", &with_config("greeting = \"hi\"\nlimit = 3"));
    host.append(&docs(1..2));
    let mut oplet = Oplet::start(&host.config());
    assert!(oplet.wait_exit(WAIT).unwrap().success());
    let rec = &host.audit_of("config-echo")[0]["record"];
    assert_eq!(rec["config"], json!({"greeting": "hi", "limit": 3}));

    let host = HostDir::new(GRANT_AUDIT, false);
    install_plugin(&host.plugins(), "config-echo", &with_config("fail_init = true"));
    host.append(&docs(1..2));
    let mut oplet = Oplet::start(&host.config());
    assert!(oplet.wait_exit(WAIT).unwrap().success());
    let line = oplet.log_lines_containing("refusing plugin").pop().expect("init refusal logged");
    assert!(line.contains("oplet_init failed: plugin error: init refused: fail_init is set"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_after_the_checkpoint() {
    let host = HostDir::new(GRANT_AUDIT, false);
    install_plugin(&host.plugins(), "echo", &manifest("echo", ""));
    host.append(&docs(1..51));
    let mut first = Oplet::start(&host.config());
    assert!(first.wait_exit(WAIT).unwrap().success());
    assert_eq!(host.audit_of("echo").len(), 50);
    host.append(&docs(51..61));
    let mut second = Oplet::start(&host.config());
    assert!(second.wait_exit(WAIT).unwrap().success());
    assert!(second.logs().contains("resuming after line 50"), "{}", second.logs());
    let seqs: Vec<i64> = host.audit_of("echo").iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "each line handled once across the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_check_and_test_are_the_offline_loop_for_authors() {
    let plugins = wasm_plugins();
    let hello_manifest = oplet_tests::repo_root().join("examples/hello-plugin/hello.toml");
    let hello = plugins.path("hello");
    let out = std::process::Command::new(oplet_tests::oplet_bin())
        .args(["plugin", "check"])
        .arg(&hello)
        .arg("--manifest")
        .arg(&hello_manifest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: hello v0.1.0"));

    let events = oplet_tests::repo_root().join("examples/hello-plugin/events.jsonl");
    let out = std::process::Command::new(oplet_tests::oplet_bin())
        .args(["plugin", "test"])
        .arg(&hello)
        .arg("--manifest")
        .arg(&hello_manifest)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[1]["effects"][0]["kind"], "audit", "{lines:?}");
    assert_eq!(lines[1]["effects"][0]["data"]["record"]["status"], "paid");

    // The hand-written WAT plugin, built from docs/abi.md alone, answers too.
    let dir = oplet_tests::temp_dir();
    let manifest = dir.path().join("wat.toml");
    // `plugin test` of the WAT plugin under a manifest subscribing to `namespaces`:
    // each output line, after the command succeeded.
    let wat_test = |namespaces: &str| -> Vec<Value> {
        std::fs::write(&manifest, format!("name = \"wat-plugin\"\n[[subscribe]]\nnamespaces = [\"{namespaces}\"]\n")).unwrap();
        let out = std::process::Command::new(oplet_tests::oplet_bin())
            .args(["plugin", "test"])
            .arg(plugins.path("wat-plugin"))
            .arg("--manifest")
            .arg(&manifest)
            .arg("--events")
            .arg(&events)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let first = &wat_test("*")[0];
    assert_eq!(first["effects"][0], json!({"kind": "log", "data": {"level": "info", "message": "hello from WAT"}}));

    // Events the manifest does not subscribe to are skipped, as the host skips them.
    let lines = wat_test("other.*");
    assert!(!lines.is_empty() && lines.iter().all(|l| l["subscribed"] == false && l["skipped"].is_string() && l["effects"].is_null()), "{lines:?}");

    // A module with the wrong ABI version fails the check with the reason.
    let out = std::process::Command::new(oplet_tests::oplet_bin())
        .args(["plugin", "check"])
        .arg(plugins.path("wrong-abi"))
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("speaks plugin ABI version 999"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The epoch ticker parks while no plugin runs; a call after a quiet spell must
/// wake it, or a looping plugin would never be stopped.
#[test]
fn a_loop_after_a_quiet_spell_still_times_out() {
    use oplet::runtime::{CallError, Limits, PluginCode, Runtime};
    use oplet_sdk::{Change, Event, EventBody, Map, Value};
    let wasm = std::fs::read(wasm_plugins().path("faulty")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = Runtime::new(None).unwrap();
        let limits = Limits { time_ms: 50, ..Limits::default() };
        let code = PluginCode::load(&runtime, "faulty", &wasm, limits, &Value::Null).unwrap();
        let mut instance = code.new_instance().unwrap();
        let doc: Map = [("fault".to_string(), Value::from("loop"))].into_iter().collect();
        let change = Change { full_document: Some(Value::Map(doc)), ..Default::default() };
        let event = Event { seq: 1, id: "e1".into(), source: "t".into(), time_ms: 0, body: EventBody::Change(change) };
        for _ in 0..2 {
            // Long enough for the ticker to park (20 ticks of 5 ms without a call).
            std::thread::sleep(Duration::from_millis(300));
            let _ = tx.send(instance.handle(&oplet_sdk::codec::encode(&event).unwrap()).map(|_| ()));
            instance = code.new_instance().unwrap();
        }
    });
    for round in 0..2 {
        let result = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("round {round}: the looping call was never interrupted"));
        assert_eq!(result, Err(CallError::Timeout { budget_ms: 50 }), "round {round}");
    }
}
