//! Plugins written in AssemblyScript with the PDK in pdk/assemblyscript, built by
//! the real `asc` compiler from npm and run by the real host: the paid-orders
//! example audits exactly the paid orders, and a plugin that traps, refuses, loops
//! or grows fails alone, each event dead-lettered with its reason (a trap carries
//! the AssemblyScript error message), while the host and the other plugin go on.

use oplet_tests::{install_plugin_from, repo_root, Oplet};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Compiles `entry` (relative to the repository) with the PDK's pinned `asc`.
fn asc(entry: &str, out: &Path) {
    let pdk = repo_root().join("pdk/assemblyscript");
    let asc = pdk.join("node_modules/.bin/asc");
    assert!(asc.exists(), "{} is missing: run scripts/setup.sh (it runs `npm ci` in pdk/assemblyscript)", asc.display());
    let status = Command::new(&asc)
        .current_dir(&pdk)
        .arg(repo_root().join(entry))
        .arg("-o")
        .arg(out)
        .args(["--optimizeLevel", "3", "--use", "abort=../../pdk/assemblyscript/assembly/abi/opletAbort"])
        .status()
        .expect("run asc (node is needed: apt-get install nodejs)");
    assert!(status.success(), "asc {entry} failed: {status}");
}

use oplet_tests::read_json_lines as read_lines;

fn change(n: i64, coll: &str, doc: Value) -> String {
    json!({"body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": coll, "key": {"_id": n}, "full_document": doc}}}).to_string()
}

#[test]
fn assemblyscript_plugins_run_in_the_host_and_fail_alone_with_their_reasons() {
    let dir = oplet_tests::temp_dir();
    let build: PathBuf = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    asc("examples/as-plugin/assembly/index.ts", &build.join("paid-orders.wasm"));
    asc("plugins/testing/as-faulty/index.ts", &build.join("as-faulty.wasm"));
    let manifest = |p: &str| std::fs::read_to_string(repo_root().join(p)).unwrap();
    install_plugin_from(&plugins, "paid-orders", &build.join("paid-orders.wasm"), &manifest("examples/as-plugin/paid-orders.toml"));
    install_plugin_from(&plugins, "as-faulty", &build.join("as-faulty.wasm"), &manifest("plugins/testing/as-faulty/as-faulty.toml"));

    // Orders 1..=6, every other one paid; then the faulty plugin's requests.
    let mut lines = Vec::new();
    for n in 1..=6 {
        let status = if n % 2 == 0 { "paid" } else { "open" };
        lines.push(change(n, "orders", json!({"_id": n, "status": status, "total": n * 10})));
    }
    for (n, action) in [(7, "ok"), (8, "trap"), (9, "fail"), (10, "loop"), (11, "grow"), (12, "ok")] {
        lines.push(change(n, "tasks", json!({"_id": n, "do": action, "n": n})));
    }
    std::fs::write(dir.path().join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.path().join("oplet.toml"),
        "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\nwatch = false\n[grants.\"*\"]\naudit = true\n\
         [[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\n",
    )
    .unwrap();

    let mut oplet = Oplet::start(&dir.path().join("oplet.toml"));
    let status = oplet.wait_exit(Duration::from_secs(120)).expect("the host exits when the file is done");
    assert_eq!(status.code(), Some(0), "{}", oplet.logs());

    let audit = read_lines(&dir.path().join("state/audit.jsonl"));
    let of = |plugin: &str| -> Vec<Value> { audit.iter().filter(|r| r["plugin"] == plugin).cloned().collect() };
    let paid: Vec<i64> = of("paid-orders").iter().map(|r| r["record"]["order"].as_i64().unwrap()).collect();
    assert_eq!(paid, vec![2, 4, 6], "exactly the paid orders, in order");
    assert_eq!(of("paid-orders")[0]["record"], json!({"what": "order paid", "order": 2, "total": 20, "ns": "app.orders", "seq": 2}));
    let ok: Vec<i64> = of("as-faulty").iter().map(|r| r["record"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ok, vec![1, 2, 3, 4, 5, 6, 7, 12], "the faulty plugin handled every event it did not fail on");

    let dead = read_lines(&dir.path().join("state/dead-letters.jsonl"));
    let reason = |seq: i64| -> String {
        let d = dead.iter().find(|d| d["stage"] == "as-faulty" && d["seq"] == seq).unwrap_or_else(|| panic!("no dead letter for seq {seq}: {dead:?}"));
        d["error"].as_str().unwrap().to_string()
    };
    assert!(reason(8).starts_with("trap: ") && reason(8).contains("plugin aborted: asked to trap"), "{}", reason(8));
    assert_eq!(reason(9), "plugin error: asked to fail");
    assert!(reason(10).starts_with("timeout: "), "{}", reason(10));
    assert!(reason(11).starts_with("out of memory: "), "{}", reason(11));
    assert_eq!(dead.len(), 4, "nothing else failed: {dead:?}");
}
