//! Every bundled plugin handles a 16 MB document (MongoDB's maximum) within the
//! memory and reply limits of the manifest it ships with: the real `oplet plugin
//! test` loads the module with that manifest's limits and config, sends it one
//! JSON-lines event carrying the document, and must print the plugin's effects,
//! not a failure. Only the time budget is widened (it is wall-clock, and this
//! machine is shared): memory, not speed, is what this checks.

use oplet_tests::{oplet_bin, repo_root, wasm_plugins};
use serde_json::{json, Map, Value};
use std::process::Command;

/// About 16 MB of JSON and of MessagePack: 16,000 fields of 1,000 characters,
/// plus `extra` (the fields the plugin reads).
fn big_document(extra: Value) -> Value {
    let mut doc = Map::new();
    let filler = "x".repeat(990);
    for i in 0..16_000 {
        doc.insert(format!("f{i:05}"), Value::String(format!("{i:09}:{filler}")));
    }
    for (k, v) in extra.as_object().unwrap() {
        doc.insert(k.clone(), v.clone());
    }
    Value::Object(doc)
}

fn change(op: &str, ns: &str, id: Value, doc: Value) -> String {
    let (db, coll) = ns.split_once('.').unwrap();
    let event = json!({
        "seq": 1, "id": "big-1", "source": "events", "time_ms": 1_732_370_000_000i64,
        "body": {"kind": "change", "data": {
            "op": op, "db": db, "coll": coll, "key": {"_id": id}, "full_document": doc,
        }},
    });
    let line = event.to_string();
    assert!(line.len() > 16_000_000 && line.len() < 16 << 20, "{} bytes", line.len());
    line
}

/// Runs the bundled plugin `name` with its shipped manifest on `line`; returns
/// the one printed result line.
fn plugin_test(name: &str, line: &str) -> Value {
    let dir = oplet_tests::temp_dir();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, format!("{line}\n")).unwrap();
    let shipped = std::fs::read_to_string(repo_root().join("plugins").join(name).join(format!("{name}.toml"))).unwrap();
    let lines: Vec<String> =
        shipped.lines().map(|l| if l.starts_with("time_ms = ") { "time_ms = 5000".into() } else { l.to_string() }).collect();
    assert!(lines.iter().any(|l| l == "time_ms = 5000"), "{name}.toml sets time_ms");
    let manifest = dir.path().join(format!("{name}.toml"));
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out = Command::new(oplet_bin())
        .args(["plugin", "test"])
        .arg(wasm_plugins().path(name))
        .arg("--events")
        .arg(&events)
        .arg("--manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed on a 16 MB document ({}):\n{}\n{stderr}", out.status, &stdout[..stdout.len().min(2000)]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: one result line");
    serde_json::from_str(lines[0]).unwrap()
}

#[test]
fn audit_log_records_a_16_mb_insert_reading_only_names_and_the_actor() {
    let doc = big_document(json!({"_id": 1, "actor": "ada"}));
    let result = plugin_test("audit-log", &change("insert", "app.users", json!(1), doc));
    let effects = result["effects"].as_array().unwrap();
    assert_eq!(effects.len(), 1, "{result:.200}");
    let record = &effects[0]["data"]["record"];
    assert_eq!(record["actor"], "ada");
    assert_eq!(record["changed_fields"].as_array().unwrap().len(), 16_002);
    assert!(effects[0].get("refused").is_none());
}

#[test]
fn cache_invalidate_deletes_the_keys_of_a_16_mb_update() {
    let doc = big_document(json!({"_id": "u1", "uuid": "c0ffee"}));
    let result = plugin_test("cache-invalidate", &change("update", "app.users", json!("u1"), doc));
    assert_eq!(result["effects"], json!([{"kind": "cache_delete", "data": {"keys": ["user:u1", "user:c0ffee:profile"]}}]));
}

#[test]
fn pg_sync_upserts_a_16_mb_document_whole_into_its_row() {
    let doc = big_document(json!({"_id": "u1", "email": "a@x.io", "profile": {"name": "Ada"}}));
    let result = plugin_test("pg-sync", &change("insert", "app.users", json!("u1"), doc.clone()));
    let effects = result["effects"].as_array().unwrap();
    assert_eq!(effects.len(), 1);
    let values = &effects[0]["data"]["values"];
    assert_eq!((&values["id"], &values["email"], &values["name"]), (&json!("u1"), &json!("a@x.io"), &json!("Ada")));
    assert!(values["doc"] == doc, "the jsonb column holds the whole document");
    assert!(effects[0].get("refused").is_none());
}

#[test]
fn client_start_starts_a_client_whose_document_is_16_mb() {
    let doc = big_document(json!({"_id": 7, "uuid": "c-1", "key": "k-1", "connection": true}));
    let result = plugin_test("client-start", &change("insert", "app.clients", json!(7), doc));
    assert_eq!(
        result["effects"],
        json!([{"kind": "emit", "data": {"to": {"client": "c-1"}, "event": "start_client", "payload": {"uuid": "c-1", "key": "k-1"}}}])
    );
}
