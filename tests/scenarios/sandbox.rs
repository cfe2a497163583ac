//! The sandbox against hostile modules, through the real `oplet` binary: modules
//! written by the test in WAT (several memories, memory64, huge tables, huge
//! initial memory, loops in the start function and the version probe, floods of
//! effects and log lines, empty and trailing replies, oversize and slow-to-compile
//! modules) load into ONE running host beside a good plugin fed by a stream. The
//! host never dies, its peak RSS stays within the documented bound, the good plugin
//! handles every event once, and each hostile module is refused or fails per event
//! with its exact reason. Also: the ABI rules of docs/abi.md, pinned one by one.

use oplet_sdk::{codec, Effect, Map, Reply, Value};
use oplet_tests::{install_plugin, install_plugin_bytes, Oplet, TempDir};
use serde_json::{json, Value as Json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// Host ceilings for the hostile host. The memory budget per instance is 64 MiB.
/// The compile budget is short: every module but the slow ones was compiled into
/// the cache by a first run, and loads from it in milliseconds, while the slow
/// ones take seconds to compile even on an idle machine.
const CEILINGS: &str = "[limits]\nmemory_mb = 64\ntime_ms = 1000\neffects = 100\nlog_kb_per_s = 16\nmodule_mb = 4\ncompile_ms = 300\n";
/// The same, with the default compile budget, for the run that fills the cache.
const WARM_CEILINGS: &str = "[limits]\nmemory_mb = 64\ntime_ms = 1000\neffects = 100\nlog_kb_per_s = 16\nmodule_mb = 4\n";

struct HostDir {
    dir: TempDir,
}

impl HostDir {
    fn new(extra_config: &str) -> HostDir {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        let host = HostDir { dir };
        host.write_config("oplet.toml", extra_config);
        host
    }
    fn write_config(&self, file: &str, extra_config: &str) -> PathBuf {
        let config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = 30\n\
             [[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\nfollow = true\n\
             [grants.\"*\"]\naudit = true\n{extra_config}\n"
        );
        std::fs::write(self.path().join(file), config).unwrap();
        self.path().join(file)
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
    fn append_lines(&self, lines: &[String]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path().join("events.jsonl")).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }
    fn append(&self, range: std::ops::Range<i64>) {
        let lines: Vec<String> = range
            .map(|n| {
                json!({"body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "items",
                    "key": {"_id": n}, "full_document": {"n": n}}}})
                .to_string()
            })
            .collect();
        self.append_lines(&lines);
    }
    fn audit(&self) -> Vec<Json> {
        read_lines(&self.path().join("state/audit.jsonl"))
    }
    fn audit_of(&self, plugin: &str) -> Vec<Json> {
        self.audit().into_iter().filter(|r| r["plugin"] == plugin).collect()
    }
    fn dead_of(&self, stage: &str) -> Vec<String> {
        read_lines(&self.path().join("state/dead-letters.jsonl"))
            .into_iter()
            .filter(|d| d["stage"] == stage)
            .map(|d| d["error"].as_str().unwrap_or_default().to_string())
            .collect()
    }
    async fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < WAIT, "waited {WAIT:?} for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

use oplet_tests::read_json_lines as read_lines;

fn manifest(name: &str, extra: &str) -> String {
    format!("name = \"{name}\"\n[[subscribe]]\nnamespaces = [\"app.*\"]\n[capabilities]\naudit = true\n{extra}")
}

/// MessagePack bytes as a WAT data string.
fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

fn reply_bytes(effects: Vec<Effect>) -> Vec<u8> {
    codec::encode(&Reply::Ok { effects }).unwrap()
}

/// The parts of a plugin module a hostile case changes; the rest follows the ABI.
struct Wat<'a> {
    /// Top-level fields before the exports (imports, memories, tables, start).
    head: &'a str,
    memory: &'a str,
    version: &'a str,
    alloc: &'a str,
    /// Instructions run at the start of `oplet_handle`.
    prelude: &'a str,
    reply: Vec<u8>,
    /// The length `oplet_handle` reports (default: the reply's).
    reply_len: Option<usize>,
}

impl Default for Wat<'_> {
    fn default() -> Self {
        Wat {
            head: "",
            memory: "(memory (export \"memory\") 2)",
            version: "(i32.const 1)",
            alloc: "(i32.const 65536)",
            prelude: "",
            reply: reply_bytes(vec![]),
            reply_len: None,
        }
    }
}

impl Wat<'_> {
    fn build(&self) -> Vec<u8> {
        let len = self.reply_len.unwrap_or(self.reply.len());
        let text = format!(
            r#"(module
  {head}
  {memory}
  (data (i32.const 1024) "{data}")
  (func (export "oplet_abi_version") (result i32) {version})
  (func (export "oplet_alloc") (param $len i32) (result i32) {alloc})
  (func (export "oplet_handle") (param $ptr i32) (param $len i32) (result i64)
    {prelude}
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const {len}))))"#,
            head = self.head,
            memory = self.memory,
            data = wat_bytes(&self.reply),
            version = self.version,
            alloc = self.alloc,
            prelude = self.prelude,
        );
        wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

/// A module with `funcs` functions of `n` arithmetic steps each, in binary (the
/// text form would take the test longer to build than the host to refuse it).
fn slow_to_compile(funcs: usize, n: usize, salt: u32) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn sleb(mut n: i64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if (n == 0 && b & 0x40 == 0) || (n == -1 && b & 0x40 != 0) {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    let mut body = vec![0x01, 0x04, 0x7f]; // four i32 locals
    for i in 0..n {
        let x = 1 + (i % 4) as u8;
        body.extend_from_slice(&[0x20, 0x00, 0x41]);
        sleb((i as i64) * 7 + salt as i64, &mut body);
        body.extend_from_slice(&[0x6c, 0x21, x, 0x20, x, 0x20, 0x00, 0x6a, 0x21, 0x00]);
    }
    body.extend_from_slice(&[0x20, 0x00, 0x0b]);
    let mut types = vec![0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f];
    let mut funcs_sec = Vec::new();
    leb(funcs as u64, &mut funcs_sec);
    funcs_sec.extend(std::iter::repeat_n(0u8, funcs));
    let mut code = Vec::new();
    leb(funcs as u64, &mut code);
    for _ in 0..funcs {
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(1, &types, &mut m);
    section(3, &funcs_sec, &mut m);
    section(10, &code, &mut m);
    types.clear();
    m
}

/// A valid module padded with a custom section to `size` bytes.
fn padded(mut wasm: Vec<u8>, size: usize) -> Vec<u8> {
    let pad = size - wasm.len() - 10;
    wasm.push(0);
    let mut len = Vec::new();
    let mut n = (pad + 4) as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            len.push(b);
            break;
        }
        len.push(b | 0x80);
    }
    wasm.extend_from_slice(&len);
    wasm.extend_from_slice(&[3, b'p', b'a', b'd']);
    wasm.extend(std::iter::repeat_n(0u8, pad));
    wasm
}

fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn refusal(oplet: &Oplet, name: &str) -> String {
    oplet
        .log_lines_containing("refusing plugin")
        .into_iter()
        .find(|l| l.trim_end().ends_with(&format!("plugin={name}")))
        .unwrap_or_else(|| panic!("no refusal logged for {name}:\n{}", oplet.logs()))
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_modules_fail_alone_beside_a_good_plugin_in_one_host() {
    let host = HostDir::new(CEILINGS);
    let plugins = host.plugins();
    let m = |name: &str| manifest(name, "[limits]\ntime_ms = 100\n");
    install_plugin(&plugins, "echo", &manifest("echo", ""));
    let log_line = "x".repeat(1000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Refused at load.
        ("multi-memory", Wat { memory: "(memory (export \"memory\") 1) (memory 1000)", ..Wat::default() }.build()),
        ("memory64", Wat { memory: "(memory (export \"memory\") i64 1)", ..Wat::default() }.build()),
        ("many-tables", Wat { head: &"(table 100000 funcref) ".repeat(100), ..Wat::default() }.build()),
        ("big-initial-memory", Wat { memory: "(memory (export \"memory\") 2000)", ..Wat::default() }.build()),
        ("bad-log-import", Wat { head: "(import \"oplet\" \"log\" (func (param i32 i32)))", ..Wat::default() }.build()),
        ("wasi-import", Wat { head: "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))", ..Wat::default() }.build()),
        ("start-loop", Wat { head: "(func $spin (loop $l (br $l))) (start $spin)", ..Wat::default() }.build()),
        ("probe-loop", Wat { version: "(loop $l (br $l)) (i32.const 1)", ..Wat::default() }.build()),
        ("oversize", padded(Wat::default().build(), 5 << 20)),
        ("slow-compile", slow_to_compile(250, 1000, 1)),
        // Fail each event.
        ("table-grow", Wat { head: "(table $t 0 funcref)", prelude: "(drop (table.grow $t (ref.null func) (i32.const 10000000)))", ..Wat::default() }.build()),
        ("memory-grow", Wat { prelude: "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))", ..Wat::default() }.build()),
        ("empty-reply", Wat { reply_len: Some(0), ..Wat::default() }.build()),
        ("trailing-reply", Wat { reply_len: Some(reply_bytes(vec![]).len() + 1), ..Wat::default() }.build()),
        ("effect-flood", Wat { reply: reply_bytes(vec![Effect::Audit { record: Value::Int(1) }; 150]), ..Wat::default() }.build()),
        ("alloc-trap", Wat { alloc: "(unreachable)", ..Wat::default() }.build()),
        // Accepted.
        (
            "lenient-reply",
            Wat {
                reply: codec::encode(&Value::Map(Map::from_iter([("status".to_string(), Value::from("ok")), ("extra".to_string(), Value::Int(1))]))).unwrap(),
                ..Wat::default()
            }
            .build(),
        ),
        ("three-audits", Wat { reply: reply_bytes((0..3).map(|i| Effect::Audit { record: Value::Int(i) }).collect()), ..Wat::default() }.build()),
        (
            "log-flood",
            Wat {
                head: "(import \"oplet\" \"log\" (func $log (param i32 i32 i32))) (global $i (mut i32) (i32.const 0))",
                memory: &format!("(memory (export \"memory\") 2) (data (i32.const 8192) \"{log_line}\")"),
                prelude: "(global.set $i (i32.const 0)) (loop $l (call $log (i32.const 2) (i32.const 8192) (i32.const 1000)) (global.set $i (i32.add (global.get $i) (i32.const 1))) (br_if $l (i32.lt_u (global.get $i) (i32.const 5000))))",
                ..Wat::default()
            }
            .build(),
        ),
    ];
    let late = Wat { reply: reply_bytes(vec![Effect::Audit { record: Value::from("late") }]), ..Wat::default() }.build();
    // First run: fill the module cache with everything but the slow modules.
    for (name, wasm) in cases.iter().filter(|(n, _)| !n.starts_with("slow")).chain([&("late", late.clone())]) {
        // The flood takes a while in a debug build on a busy machine: it must not
        // time out, or a retry would log its lines again.
        let manifest = if *name == "log-flood" { manifest(name, "[limits]\ntime_ms = 1000\n") } else { m(name) };
        install_plugin_bytes(&plugins, name, wasm, &manifest);
    }
    let mut warm = Oplet::start(&host.write_config("warm.toml", WARM_CEILINGS));
    warm.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    let warm_hwm = vm_kib(warm.pid(), "VmHWM");
    assert!(warm.terminate().unwrap().success(), "{}", warm.logs());
    oplet_tests::remove_plugin(&plugins, "late");
    for (name, wasm) in cases.iter().filter(|(n, _)| n.starts_with("slow")) {
        install_plugin_bytes(&plugins, name, wasm, &m(name));
    }

    let mut oplet = Oplet::start_with_env(&host.config(), &[]);
    let pid = oplet.pid();
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    const EVENTS: i64 = 20;
    host.append(1..EVENTS + 1);

    // The good plugin handles every event once, in order.
    host.wait_until("echo to handle every event", || host.audit_of("echo").len() >= EVENTS as usize).await;
    // One more compile past its budget, dropped in while running, does not delay a
    // small plugin dropped right after it: the small one is live first.
    install_plugin_bytes(&plugins, "slow-compile-2", &slow_to_compile(250, 1000, 2), &m("slow-compile-2"));
    install_plugin_bytes(&plugins, "late", &late, &m("late"));
    oplet.wait_for_log("plugin=slow-compile-2", WAIT).await.unwrap();
    let lines = oplet.logs();
    let at = |what: &str, name: &str| lines.lines().position(|l| l.contains(what) && l.contains(&format!("plugin={name}")));
    let (late_at, slow_at) = (at("plugin loaded", "late"), at("refusing plugin", "slow-compile-2"));
    assert!(late_at.is_some() && late_at < slow_at, "the small plugin loaded before the slow compile ended:\n{lines}");
    host.append(EVENTS + 1..EVENTS + 2);
    host.wait_until("late to handle the last event", || !host.audit_of("late").is_empty()).await;
    host.wait_until("every dead letter", || {
        ["table-grow", "memory-grow", "empty-reply", "trailing-reply", "effect-flood", "alloc-trap"]
            .iter()
            .all(|p| host.dead_of(p).len() == EVENTS as usize + 1)
    })
    .await;
    host.wait_until("three-audits and log-flood", || {
        host.audit_of("three-audits").len() == 3 * (EVENTS as usize + 1) && host.audit_of("echo").len() == EVENTS as usize + 1
    })
    .await;
    let hwm = vm_kib(pid, "VmHWM");
    assert!(oplet.is_running(), "the host is alive:\n{}", oplet.logs());
    let status = oplet.terminate().unwrap();
    assert!(status.success(), "{status:?}\n{}", oplet.logs());

    let echo: Vec<i64> = host.audit_of("echo").iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(echo, (1..=EVENTS + 1).collect::<Vec<_>>(), "echo saw every event once, in order");

    // Refused at load, each with its reason.
    for (name, reason) in [
        ("multi-memory", "unsupported module: it declares 2 memories; a plugin has exactly one memory"),
        ("memory64", "unsupported module: it declares a 64-bit memory (memory64)"),
        ("many-tables", "over its memory budget: the module needs 76.4 MiB as soon as it is instantiated (0.1 MiB of initial memory, 10000000 table elements), past its memory budget of 64.0 MiB"),
        ("big-initial-memory", "over its memory budget: the module needs 125.0 MiB as soon as it is instantiated"),
        ("bad-log-import", "imports `oplet.log` with the wrong type: expected (func (param i32 i32 i32)), found (type (func (param i32 i32)))"),
        ("wasi-import", "imports `wasi_snapshot_preview1.fd_write`, which the host does not provide"),
        ("start-loop", "instantiation failed (start function, data or table initialisation): timeout: the call ran past its time budget of 100 ms"),
        ("probe-loop", "oplet_abi_version failed: timeout: the call ran past its time budget of 100 ms"),
        ("oversize", "bytes, past the host's module size limit of 4194304 bytes ([limits] module_mb in the host config)"),
        ("slow-compile", "compiling took longer than the compile budget of 300 ms ([limits] compile_ms in the host config)"),
        ("slow-compile-2", "compiling took longer than the compile budget of 300 ms"),
    ] {
        let line = refusal(&oplet, name);
        assert!(line.contains(reason), "{name}: expected {reason:?} in\n{line}");
    }

    // Fail per event, each with its reason; the instance is replaced, the host goes on.
    let first = |name: &str| {
        let errors = host.dead_of(name);
        assert_eq!(errors.len(), EVENTS as usize + 1, "{name} fails every event: {errors:?}");
        errors[0].clone()
    };
    assert!(first("table-grow").starts_with("out of memory: growing a table from 0 to 10000000 elements would bring the instance to 80131072 bytes"), "{}", first("table-grow"));
    assert!(first("memory-grow").starts_with("out of memory: growing its linear memory from"), "{}", first("memory-grow"));
    assert!(first("memory-grow").contains("past its limit of 67108864 bytes ([limits] memory_mb)"), "{}", first("memory-grow"));
    assert!(first("empty-reply").starts_with("bad reply: the reply is empty (length 0)"), "{}", first("empty-reply"));
    assert_eq!(first("trailing-reply"), "bad reply: 1 byte(s) after the Reply (the reply is 20 bytes, the returned length 21); return the length of the reply exactly");
    assert_eq!(first("effect-flood"), "too many effects: the reply holds 150 effects, past the limit of 100 per call ([limits] effects)");
    assert!(first("alloc-trap").starts_with("trap: in oplet_alloc("), "{}", first("alloc-trap"));

    // Accepted: unknown keys ignored, a missing `effects` is none; several audit
    // records per event, keyed plugin:event_id:index.
    assert!(host.dead_of("lenient-reply").is_empty());
    let keys: Vec<String> = host.audit_of("three-audits").iter().map(|r| r["key"].as_str().unwrap().to_string()).collect();
    assert_eq!(&keys[..3], ["three-audits:events:1:0", "three-audits:events:1:1", "three-audits:events:1:2"]);
    // The log flood: every line either written or counted as dropped.
    assert!(host.dead_of("log-flood").is_empty(), "{:?}", host.dead_of("log-flood"));
    let written = oplet.log_lines_containing(&log_line).len() as u64;
    let dropped: u64 = oplet
        .log_lines_containing("past its log rate limit of 16 KiB/s")
        .iter()
        .map(|l| l.split("dropped ").nth(1).unwrap().split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(written + dropped, 5_000 * (EVENTS as u64 + 1), "every log line written or counted");
    assert!(written < 1_000, "the flood was cut: {written} lines written");

    // Peak memory: the loaded instances' budgets plus the documented overhead.
    let loaded = 1 + 6 + 3 + 1; // echo, failing ones, accepted ones, late
    let bound_kib = (loaded * 64 + OVERHEAD_MIB) * 1024;
    assert!(hwm <= bound_kib, "peak RSS {hwm} KiB is past {bound_kib} KiB");
    eprintln!(
        "peak RSS {} MiB under attack, bound {} MiB; baseline in the same run (same plugins loaded, no events, no slow compile): {} MiB",
        hwm / 1024,
        bound_kib / 1024,
        warm_hwm / 1024
    );
}

/// docs/abi.md section 5: the host's own memory besides the plugins' budgets,
/// compiles included (two 3 MB modules compiling at once).
const OVERHEAD_MIB: u64 = 400;

/// Time limits hold as long as the compiled code exists, not only while the
/// `Runtime` value lives (the CLI used to leak it for that reason).
#[test]
fn time_limits_hold_after_the_runtime_is_dropped() {
    use oplet::runtime::{CallError, Limits, PluginCode, Runtime};
    let wasm = Wat { prelude: "(loop $l (br $l))", ..Wat::default() }.build();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = Runtime::new(None).unwrap();
        let limits = Limits { time_ms: 50, ..Limits::default() };
        let code = PluginCode::load(&runtime, "spin", &wasm, limits, &Value::Null).unwrap();
        drop(runtime);
        let mut instance = code.new_instance().unwrap();
        let event = oplet_sdk::Event {
            seq: 1,
            id: "e1".into(),
            source: "t".into(),
            time_ms: 0,
            body: oplet_sdk::EventBody::Change(Default::default()),
        };
        // Long enough for the ticker to park first (20 ticks of 5 ms).
        std::thread::sleep(Duration::from_millis(300));
        let _ = tx.send(instance.handle(&oplet_sdk::codec::encode(&event).unwrap()).map(|_| ()));
    });
    let result = rx.recv_timeout(Duration::from_secs(60)).expect("the looping call was interrupted");
    assert_eq!(result, Err(CallError::Timeout { budget_ms: 50 }));
}

/// `oplet plugin check` tells the true budget: linear memory and tables together.
#[test]
fn plugin_check_tells_the_whole_memory_budget() {
    let dir = oplet_tests::temp_dir();
    let wasm = dir.path().join("tables.wasm");
    std::fs::write(&wasm, Wat { head: "(table 131072 funcref)", ..Wat::default() }.build()).unwrap();
    std::fs::write(dir.path().join("tables.toml"), "name = \"tables\"\n[limits]\nmemory_mb = 8\n").unwrap();
    let out = std::process::Command::new(oplet_tests::oplet_bin()).args(["plugin", "check"]).arg(&wasm).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("8 MiB memory budget (linear memory and tables together; 1.1 MiB used at instantiation)"),
        "{stdout}"
    );
    // Out of range: refused with the key and range, exit 2.
    std::fs::write(dir.path().join("tables.toml"), "name = \"tables\"\n[limits]\nmemory_mb = 17592186044416\n").unwrap();
    let out = std::process::Command::new(oplet_tests::oplet_bin()).args(["plugin", "check"]).arg(&wasm).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[limits] memory_mb = 17592186044416 is out of range: it must be 1 to 4096 (MiB)"), "{stderr}");
}

/// Startup checks: a plugin folder that is a file, a cache folder others may
/// write, host ceilings out of range, and a grant naming no plugin.
#[tokio::test(flavor = "multi_thread")]
async fn startup_refuses_unsafe_or_wrong_settings_with_the_reason() {
    // The plugin "folder" is a file.
    let host = HostDir::new("");
    std::fs::remove_dir(host.plugins()).unwrap();
    std::fs::write(host.plugins(), "").unwrap();
    let mut oplet = Oplet::start(&host.config());
    assert_eq!(oplet.wait_exit(WAIT).unwrap().code(), Some(2));
    assert!(oplet.logs().contains("is a file, not a folder; point [plugins] dir"), "{}", oplet.logs());

    // A cache folder writable by others: cached modules are native code.
    let host = HostDir::new("");
    std::fs::create_dir_all(host.path().join("state/cache")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(host.path().join("state/cache"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut oplet = Oplet::start(&host.config());
    assert_eq!(oplet.wait_exit(WAIT).unwrap().code(), Some(2));
    assert!(oplet.logs().contains("is writable by group or others (mode 777)"), "{}", oplet.logs());

    // A host ceiling out of range.
    let host = HostDir::new("[limits]\nmemory_mb = 17592186044416\n");
    let mut oplet = Oplet::start(&host.config());
    assert_eq!(oplet.wait_exit(WAIT).unwrap().code(), Some(2));
    assert!(oplet.logs().contains("limits.memory_mb: must be a whole number from 1 to 4096, got 17592186044416"), "{}", oplet.logs());

    // A grant for a plugin that does not exist (yet): a line naming it and what to
    // check (deploying after granting is normal, so not a warning).
    let host = HostDir::new("[grants.ech0]\naudit = true\n");
    install_plugin(&host.plugins(), "echo", &manifest("echo", ""));
    let mut oplet = Oplet::start(&host.config());
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    let line = oplet.wait_for_log("names no plugin", WAIT).await.unwrap();
    assert!(line.contains("[grants.\"ech0\"] names no plugin in") && line.contains("check the spelling"), "{line}");
    assert!(oplet.terminate().unwrap().success());
}

/// The module cache keeps what is loaded plus a few spare entries: reload churn
/// does not grow it without bound.
#[tokio::test(flavor = "multi_thread")]
async fn the_module_cache_is_pruned_under_reload_churn() {
    let host = HostDir::new("");
    let plugins = host.plugins();
    let version = |v: i64| Wat { reply: reply_bytes(vec![Effect::Audit { record: Value::Int(v) }]), ..Wat::default() }.build();
    install_plugin_bytes(&plugins, "churn", &version(0), &manifest("churn", ""));
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    for v in 1..=30 {
        let mark = oplet.log_mark();
        install_plugin_bytes(&plugins, "churn", &version(v), &manifest("churn", ""));
        oplet.wait_for_log_since(mark, "plugin reloaded", WAIT).await.unwrap();
    }
    let entries = std::fs::read_dir(host.path().join("state/cache")).unwrap().count();
    assert!(entries <= 1 + 1 + 8, "the loaded entry, the newest, and 8 spare: {entries} files");
    // And the latest version is the one that runs.
    host.append(1..2);
    host.wait_until("the latest version to handle the event", || host.audit_of("churn").first().is_some_and(|r| r["record"] == 30)).await;
}

/// JSON-lines events follow the ABI's one rule: unknown keys are ignored, every
/// header field may be omitted, `seq` and `source` are the host's.
#[tokio::test(flavor = "multi_thread")]
async fn json_lines_ignore_unknown_keys_and_the_host_sets_seq_and_source() {
    let host = HostDir::new("");
    install_plugin(&host.plugins(), "echo", &manifest("echo", ""));
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
    host.append_lines(&[
        json!({"seq": 999, "source": "elsewhere", "extra": true,
               "body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "items", "unknown": 1, "full_document": {"n": 1}}}})
        .to_string(),
    ]);
    host.wait_until("echo to see the line", || !host.audit_of("echo").is_empty()).await;
    let rec = &host.audit_of("echo")[0];
    assert_eq!(rec["seq"], 1);
    assert_eq!(rec["source"], "events");
    assert_eq!(rec["event_id"], "events:1");
}
