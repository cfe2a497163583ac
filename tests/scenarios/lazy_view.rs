//! The SDK's lazy `EventView` reads every value exactly as the owned decode does,
//! on the bytes the real host sends: documents written through the `mongodb`
//! driver to the server (every BSON type it accepts), and, for what the server
//! refuses (Decimal128, regex, NaN, ±Infinity, `$` and dotted keys...), documents
//! built by hand and converted by the host's own BSON converter. The guest-side
//! comparison is the `view-check` test plugin (plugins/testing/view-check).

use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, RawDocumentBuf, Regex, Timestamp};
use oplet::runtime::{Limits, PluginCode, Runtime};
use oplet_sdk::{Change, Effect, Event, EventBody, OperationType};
use oplet_tests::{install_plugin_from, wasm_plugins, Mongo, Oplet};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn binary(subtype: BinarySubtype, bytes: &[u8]) -> Bson {
    Bson::Binary(Binary { subtype, bytes: bytes.to_vec() })
}

/// `levels` documents nested in each other, the innermost `{"leaf": "bottom"}`.
fn nested(levels: usize) -> Bson {
    let mut d = doc! { "leaf": "bottom" };
    for i in 0..levels - 1 {
        let mut outer = Document::new();
        outer.insert(format!("l{i}"), d);
        d = outer;
    }
    Bson::Document(d)
}

/// The JSON-like types every server stores, in one document.
fn rich_document() -> Document {
    doc! {
        "_id": "rich",
        "i32_min": i32::MIN,
        "i64_max": i64::MAX,
        "i64_min": i64::MIN,
        "float": 0.1,
        "neg_zero": -0.0,
        "huge": 1e300,
        "tiny": 5e-324,
        "t": true,
        "f": false,
        "none": Bson::Null,
        "unicode": "é ✓ 日本語 🎉 \u{0}nul \"quoted\" \\",
        "empty_string": "",
        "array": [1, "two", Bson::Null, [3.5, []], { "k": "v" }, {}],
        "nested_100": nested(100),
    }
}

/// One BSON type (or odd key) per document, `{_id: name, v: value}`: a server
/// may refuse some (nx-27017 refuses several); the hand-built test covers every
/// one of them anyway.
fn risky_documents() -> Vec<Document> {
    let one = |id: &str, v: Bson| doc! { "_id": id, "v": v };
    vec![
        one("oid", Bson::ObjectId(ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap())),
        one("date", Bson::DateTime(DateTime::from_millis(1_700_000_000_123))),
        one("before_1970", Bson::DateTime(DateTime::from_millis(-946_771_200_001))),
        one("bin_generic", binary(BinarySubtype::Generic, &[0, 1, 2, 255])),
        one("bin_function", binary(BinarySubtype::Function, b"f")),
        one("bin_uuid_old", binary(BinarySubtype::UuidOld, &[7; 16])),
        one("bin_uuid", binary(BinarySubtype::Uuid, &[9; 16])),
        one("bin_md5", binary(BinarySubtype::Md5, &[5; 16])),
        one("bin_user", binary(BinarySubtype::UserDefined(0x80), b"user")),
        one("bin_empty", binary(BinarySubtype::Generic, &[])),
        one("ts", Bson::Timestamp(Timestamp { time: 1_700_000_000, increment: 7 })),
        doc! { "_id": "dotted", "a.b": 1, "x": { "c.d": "dot" } },
        doc! { "_id": "dollar", "x": { "$y": 1, "$oid": "not an id", "$date": "not a date" } },
        doc! { "_id": "empty_key", "": "empty", "x": { "": 1 } },
        doc! { "_id": "inf", "pos": f64::INFINITY, "neg": f64::NEG_INFINITY },
        doc! { "_id": "nan", "nan": f64::NAN },
        one("decimal", Bson::Decimal128(Decimal128::from_bytes([0xe2, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3c, 0x30]))),
        one("regex", Bson::RegularExpression(Regex { pattern: "^a.*z$".into(), options: "im".into() })),
        doc! { "_id": "code", "js": Bson::JavaScriptCode("x => x".into()), "sym": Bson::Symbol("s".into()), "min": Bson::MinKey, "max": Bson::MaxKey },
    ]
}

/// The shape docs/abi.md §7.4 gives each risky value, where it has one.
fn expected_shape(id: &str) -> Option<Value> {
    Some(match id {
        "oid" => json!({"$oid": "65a1f0c2e4b0a1b2c3d4e5f6"}),
        "date" => json!({"$date": 1_700_000_000_123i64}),
        "before_1970" => json!({"$date": -946_771_200_001i64}),
        "bin_generic" => json!({"$binary": {"base64": "AAEC/w==", "subType": "00"}}),
        "bin_uuid" => json!({"$binary": {"base64": "CQkJCQkJCQkJCQkJCQkJCQ==", "subType": "04"}}),
        "bin_user" => json!({"$binary": {"base64": "dXNlcg==", "subType": "80"}}),
        "ts" => json!({"$timestamp": {"t": 1_700_000_000u32, "i": 7}}),
        "decimal" => json!({"$numberDecimal": "12.50"}),
        "regex" => json!({"$regularExpression": {"pattern": "^a.*z$", "options": "im"}}),
        _ => return None,
    })
}

fn check_manifest() -> String {
    "name = \"view-check\"\n[[subscribe]]\nkind = \"change\"\n[capabilities]\naudit = true\n[limits]\nmemory_mb = 64\n# Wall-clock budget on a shared machine; the check walks every node many times.\ntime_ms = 5000\n".into()
}

fn audit(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_written_through_the_driver_read_the_same_lazily_and_owned() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let db = format!("oplet_view_{}", std::process::id());
    let ns = format!("{db}.docs");
    let dir = oplet_tests::temp_dir();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    let config = format!(
        "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\nall_requested = true\n\
         [[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{}\"\ncollections = [\"{ns}\"]\nfull_document = \"updateLookup\"\n",
        mongo.uri()
    );
    std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
    install_plugin_from(&dir.path().join("plugins"), "view-check", &wasm_plugins().path("view-check"), &check_manifest());
    let oplet = tokio::task::block_in_place(|| Oplet::start(&dir.path().join("oplet.toml")));
    let start = Instant::now();
    while !oplet.logs().contains("watching the change stream") {
        assert!(oplet.is_running() && start.elapsed() < WAIT, "stream not up:\n{}", oplet.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let client = mongo.client().await;
    let coll = client.database(&db).collection::<Document>("docs");
    coll.insert_one(rich_document()).await.expect("the server stores every type of the rich document");
    let mut accepted = vec!["rich".to_string()];
    let mut refused = vec![];
    for d in risky_documents() {
        let id = d.get_str("_id").unwrap().to_string();
        match coll.insert_one(d).await {
            Ok(_) => accepted.push(id),
            Err(e) => refused.push((id, e.to_string())),
        }
    }
    coll.update_one(doc! { "_id": "rich" }, doc! { "$set": { "nested_100.l98.l97": "changed", "added": [1, 2] } })
        .await
        .unwrap();
    coll.delete_one(doc! { "_id": "rich" }).await.unwrap();
    let events = accepted.len() + 2;
    eprintln!("accepted by the server: {accepted:?}; refused (checked by hand below): {refused:?}");

    let audit_path = dir.path().join("state").join("audit.jsonl");
    let start = Instant::now();
    let records = loop {
        let got = audit(&audit_path);
        if got.len() >= events {
            break got;
        }
        assert!(start.elapsed() < WAIT, "{} of {events} events checked:\n{}", got.len(), oplet.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(records.len(), events, "one record per event");
    for r in &records {
        let rec = &r["record"];
        assert_eq!(rec["agree"], json!(true), "seq {}: {}", rec["seq"], rec["mismatches"]);
        assert!(rec["nodes"].as_u64().unwrap() >= 2, "{rec}");
    }
    // The rich insert: every node of a 100-level document was compared.
    let rich = &records[0]["record"];
    assert!(rich["nodes"].as_u64().unwrap() >= 100 + 20, "{}", rich["nodes"]);
    let doc = &rich["doc"];
    assert_eq!(doc["i64_min"], json!(i64::MIN));
    assert_eq!(doc["unicode"], json!("é ✓ 日本語 🎉 \u{0}nul \"quoted\" \\"));
    let mut depth = 0;
    let mut node = &doc["nested_100"];
    while let Some((_, child)) = node.as_object().and_then(|m| m.iter().next()).filter(|(k, _)| k.starts_with('l') && *k != "leaf") {
        node = child;
        depth += 1;
    }
    assert_eq!((depth, &node["leaf"]), (99, &json!("bottom")), "100 levels arrived");
    // Each accepted odd value arrived in its documented shape.
    for r in &records[1..accepted.len()] {
        let doc = &r["record"]["doc"];
        let id = doc["_id"].as_str().unwrap();
        // nx-27017 hands back ObjectIds, dates and binaries inside fullDocument in
        // its own internal shapes ({"__neosqlite_objectid__": true, "id": hex}, a
        // date as an ISO string, {"__neosqlite_binary__": true, ...}); a real server
        // does not. The view and the owned decode agree on those too (checked
        // above), and the hand-built test below pins the documented shapes; the
        // expected shape is checked here only against a real server.
        if !mongo.is_external() {
            continue;
        }
        if let Some(shape) = expected_shape(id) {
            assert_eq!(doc["v"], shape, "{}", doc["_id"]);
        }
    }
    drop(oplet);
}

/// A raw document as the host's transcoder writes it (the one BSON → event mapping),
/// read back as an owned value.
fn transcoded(raw: &RawDocumentBuf) -> oplet_sdk::Value {
    let mut w = oplet::source::mongo::transcode::Writer::with_capacity(raw.as_bytes().len());
    w.document(raw).unwrap();
    oplet_sdk::codec::decode(&w.into_bytes()).unwrap()
}

/// What the server refuses, built by hand: the host's own converter turns each
/// BSON value into the event's shape, the real runtime sends it to the guest.
#[test]
fn hand_built_documents_with_what_the_server_refuses_read_the_same_lazily_and_owned() {
    let runtime = Runtime::new(None).unwrap();
    let wasm = std::fs::read(wasm_plugins().path("view-check")).unwrap();
    // A wall-clock budget for a shared machine: the check walks every node many times.
    let limits = Limits { time_ms: 5000, ..Limits::default() };
    let code = PluginCode::load(&runtime, "view-check", &wasm, limits, &oplet_sdk::Value::Null).unwrap();
    let mut instance = code.new_instance().unwrap();
    let mut all = rich_document();
    for d in risky_documents() {
        let id = d.get_str("_id").unwrap().to_string();
        for (k, v) in d {
            if k == "v" {
                all.insert(id.clone(), v);
            } else if k != "_id" {
                all.insert(k, v);
            }
        }
    }
    all.insert("$top", "a top-level $ key");
    // 120 levels inside the record stays under serde_json's own limit (128) below.
    all.insert("nested_120", nested(120));
    let raw = RawDocumentBuf::from_document(&all).unwrap();
    let value = transcoded(&raw);
    let key = transcoded(&RawDocumentBuf::from_document(&doc! { "_id": "rich" }).unwrap());
    let change = Change {
        op: OperationType::Update,
        db: "app".into(),
        coll: "docs".into(),
        key,
        full_document: Some(value.clone()),
        updated_fields: value.as_map().cloned(),
        removed_fields: Some(vec!["gone".into(), "a.b".into()]),
        before: Some(value),
    };
    let event = Event { seq: 1, id: "hand".into(), source: "test".into(), time_ms: -1, body: EventBody::Change(change) };
    let effects = instance.handle(&oplet_sdk::codec::encode(&event).unwrap()).unwrap();
    let [Effect::Audit { record }] = effects.as_slice() else { panic!("{effects:?}") };
    let record: Value = serde_json::from_str(&record.to_json()).unwrap();
    assert_eq!(record["agree"], json!(true), "{}", record["mismatches"]);
    assert!(record["nodes"].as_u64().unwrap() > 3 * 300, "{}", record["nodes"]);
    let doc = &record["doc"];
    for id in ["oid", "date", "before_1970", "bin_generic", "bin_uuid", "bin_user", "ts", "decimal", "regex"] {
        assert_eq!(doc[id], expected_shape(id).unwrap(), "{id}");
    }
    assert_eq!(doc["a.b"], json!(1));
    assert_eq!(doc[""], json!("empty"));
    assert_eq!(doc["x"][""], json!(1));
    // JSON has no NaN or infinities: the record's JSON text says null, but the
    // comparison above ran on the floats themselves (NaN equal to NaN).
    assert!(doc["nan"].is_null() && doc["pos"].is_null());

    // And the event a socket client sends.
    let payload: oplet_sdk::Value = serde_json::from_str(r#"{"a":[1,{"b":null}],"c.d":"x","":{"$e":2.5}}"#).unwrap();
    let socket = oplet_sdk::SocketEvent { client: "c".into(), event: "e".into(), payload };
    let event = Event { seq: 2, id: "s".into(), source: "socket".into(), time_ms: 0, body: EventBody::Socket(socket) };
    let effects = instance.handle(&oplet_sdk::codec::encode(&event).unwrap()).unwrap();
    let [Effect::Audit { record }] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(record.get("agree"), Some(&oplet_sdk::Value::Bool(true)), "{}", record.to_json());
}
