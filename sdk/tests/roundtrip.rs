//! The ABI on the wire: every Event and Effect variant survives MessagePack both
//! ways, the exact bytes match what docs/abi.md promises other languages, and a
//! reader ignores what a newer host or guest may add (unknown keys and kinds).

use oplet_sdk::{
    codec, Change, Effect, EmitTarget, Event, EventBody, LogLevel, Map, OperationType, Reply,
    SocketEvent, Value,
};

fn map(pairs: &[(&str, Value)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn vmap(pairs: &[(&str, Value)]) -> Value {
    Value::Map(map(pairs))
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn roundtrip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    codec::decode(&codec::encode(value).expect("encodes")).expect("decodes")
}

/// A document with every extended-JSON wrapper docs/abi.md lists.
fn rich_document() -> Value {
    vmap(&[
        ("_id", vmap(&[("$oid", "65a1f0c2e4b0a1b2c3d4e5f6".into())])),
        ("at", vmap(&[("$date", Value::Int(1_700_000_000_000))])),
        ("price", vmap(&[("$numberDecimal", "12.50".into())])),
        (
            "blob",
            vmap(&[(
                "$binary",
                vmap(&[("base64", "AQID".into()), ("subType", "00".into())]),
            )]),
        ),
        (
            "ts",
            vmap(&[(
                "$timestamp",
                vmap(&[("t", Value::Int(1_700_000_000)), ("i", Value::Int(3))]),
            )]),
        ),
        ("n", Value::Int(-42)),
        ("big", Value::Int(i64::MAX)),
        ("ratio", Value::Float(0.25)),
        ("whole_float", Value::Float(2.0)),
        ("ok", Value::Bool(true)),
        ("none", Value::Null),
        ("tags", Value::from(vec!["a", "b"])),
        ("nested", vmap(&[("deep", vmap(&[("x", Value::Int(1))]))])),
    ])
}

fn every_operation_type() -> Vec<OperationType> {
    vec![
        OperationType::Insert,
        OperationType::Update,
        OperationType::Replace,
        OperationType::Delete,
        OperationType::Drop,
        OperationType::Rename,
        OperationType::DropDatabase,
        OperationType::Invalidate,
        OperationType::Snapshot,
        OperationType::Other("shardCollection".into()),
    ]
}

fn event(body: EventBody) -> Event {
    Event {
        seq: 7,
        id: "resume-token-7".into(),
        source: "mongo".into(),
        time_ms: 1_700_000_000_123,
        body,
    }
}

#[test]
fn every_event_body_survives_the_boundary() {
    let full = Change {
        op: OperationType::Update,
        db: "app".into(),
        coll: "users".into(),
        key: vmap(&[("_id", vmap(&[("$oid", "65a1".into())]))]),
        full_document: Some(rich_document()),
        updated_fields: Some(map(&[("profile.name", "Ada".into())])),
        removed_fields: Some(vec!["legacy".into()]),
        before: Some(vmap(&[("profile", vmap(&[("name", "Ad".into())]))])),
    };
    let bodies = vec![
        EventBody::Change(full),
        EventBody::Change(Change {
            op: OperationType::Delete,
            db: "app".into(),
            coll: "users".into(),
            ..Default::default()
        }),
        EventBody::Socket(SocketEvent {
            client: "c-1".into(),
            event: "hello".into(),
            payload: rich_document(),
        }),
        EventBody::Other,
    ];
    for body in bodies {
        let e = event(body);
        assert_eq!(roundtrip(&e), e);
    }
    for op in every_operation_type() {
        let e = event(EventBody::Change(Change {
            op,
            db: "d".into(),
            coll: "c".into(),
            ..Default::default()
        }));
        assert_eq!(roundtrip(&e), e);
    }
}

#[test]
fn every_effect_survives_the_boundary() {
    let effects = vec![
        Effect::cache_delete(["user:1", "model:65a1"]),
        Effect::RowUpsert {
            table: "users".into(),
            key: vec!["id".into()],
            values: map(&[("id", "65a1".into()), ("doc", rich_document())]),
        },
        Effect::RowDelete {
            table: "users".into(),
            key: map(&[("id", "65a1".into())]),
        },
        Effect::Audit {
            record: rich_document(),
        },
        Effect::emit_to_client("c-1", "start_client", vmap(&[("uuid", "c-1".into())])),
        Effect::Emit {
            to: EmitTarget::Room("ops".into()),
            event: "tick".into(),
            payload: Value::Null,
        },
        Effect::Log {
            level: LogLevel::Error,
            message: "e".into(),
        },
        Effect::Log {
            level: LogLevel::Warn,
            message: "w".into(),
        },
        Effect::log_info("i"),
        Effect::Log {
            level: LogLevel::Debug,
            message: "d".into(),
        },
        Effect::Log {
            level: LogLevel::Trace,
            message: "t".into(),
        },
    ];
    let reply = Reply::Ok { effects };
    assert_eq!(roundtrip(&reply), reply);
    let refused = Reply::Err {
        message: "refused on purpose".into(),
    };
    assert_eq!(roundtrip(&refused), refused);
}

#[test]
fn the_smallest_reply_has_the_bytes_the_abi_doc_shows() {
    let bytes = codec::encode(&Reply::Ok { effects: vec![] }).unwrap();
    assert_eq!(
        hex(&bytes),
        "82 a6 73 74 61 74 75 73 a2 6f 6b a7 65 66 66 65 63 74 73 90"
    );
    let bytes = codec::encode(&Reply::Err {
        message: "no".into(),
    })
    .unwrap();
    assert_eq!(
        hex(&bytes),
        "82 a6 73 74 61 74 75 73 a3 65 72 72 a7 6d 65 73 73 61 67 65 a2 6e 6f"
    );
}

#[test]
fn effects_are_adjacently_tagged_maps_with_snake_case_kinds() {
    let log = codec::encode(&Effect::log_info("m")).unwrap();
    // {"kind": "log", "data": {"level": "info", "message": "m"}}
    assert_eq!(
        hex(&log),
        "82 a4 6b 69 6e 64 a3 6c 6f 67 a4 64 61 74 61 82 a5 6c 65 76 65 6c a4 69 6e 66 6f a7 6d 65 73 73 61 67 65 a1 6d"
    );
    let kinds: Vec<String> = [
        Effect::cache_delete(["k"]),
        Effect::RowUpsert {
            table: "t".into(),
            key: vec![],
            values: Map::new(),
        },
        Effect::RowDelete {
            table: "t".into(),
            key: Map::new(),
        },
        Effect::Audit {
            record: Value::Null,
        },
        Effect::emit_to_client("c", "e", Value::Null),
        Effect::log_info("m"),
    ]
    .iter()
    .map(|e| {
        as_value(e)
            .get("kind")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect();
    assert_eq!(
        kinds,
        [
            "cache_delete",
            "row_upsert",
            "row_delete",
            "audit",
            "emit",
            "log"
        ]
    );
}

/// Re-reads any encoded value as a generic `Value`, to look at its wire shape.
fn as_value<T: serde::Serialize>(x: &T) -> Value {
    codec::decode(&codec::encode(x).unwrap()).unwrap()
}

#[test]
fn emit_targets_are_single_key_maps_and_operation_types_are_strings() {
    let emit = as_value(&Effect::emit_to_client("c-1", "e", Value::Null));
    assert_eq!(
        emit.get_path("data.to"),
        Some(&vmap(&[("client", "c-1".into())]))
    );
    let room = as_value(&EmitTarget::Room("ops".into()));
    assert_eq!(room, vmap(&[("room", "ops".into())]));
    for op in every_operation_type() {
        assert_eq!(as_value(&op), Value::from(op.as_str()));
    }
    assert_eq!(
        as_value(&OperationType::DropDatabase),
        Value::from("dropDatabase")
    );
}

#[test]
fn an_event_is_a_map_of_named_fields_with_a_tagged_body() {
    let e = event(EventBody::Socket(SocketEvent {
        client: "c".into(),
        event: "x".into(),
        payload: Value::Int(1),
    }));
    let v = as_value(&e);
    let keys: Vec<&str> = v.as_map().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["body", "id", "seq", "source", "time_ms"]);
    assert_eq!(v.get_path("body.kind"), Some(&Value::from("socket")));
    assert_eq!(v.get_path("body.data.client"), Some(&Value::from("c")));
    // Absent optional change fields are sent as nil, and read back as absent.
    let c = as_value(&event(EventBody::Change(Change::default())));
    assert_eq!(c.get_path("body.data.full_document"), Some(&Value::Null));
    assert_eq!(c.get_path("body.data.op"), Some(&Value::from("insert")));
}

#[test]
fn readers_ignore_unknown_keys_and_unknown_event_kinds() {
    // A newer host adds a field everywhere and a new kind of event.
    let change = vmap(&[
        ("op", "update".into()),
        ("db", "app".into()),
        ("coll", "users".into()),
        ("cluster_time", Value::Int(5)),
    ]);
    let wire = vmap(&[
        ("seq", Value::Int(1)),
        ("id", "a".into()),
        ("source", "mongo".into()),
        ("time_ms", Value::Int(2)),
        ("priority", Value::Int(9)),
        (
            "body",
            vmap(&[
                ("kind", "change".into()),
                ("data", change),
                ("v", Value::Int(2)),
            ]),
        ),
    ]);
    let e: Event = codec::decode(&codec::encode(&wire).unwrap()).unwrap();
    let EventBody::Change(c) = &e.body else {
        panic!("a change: {e:?}")
    };
    assert_eq!(
        (c.op.clone(), c.namespace()),
        (OperationType::Update, "app.users".to_string())
    );
    assert_eq!(
        (c.key.clone(), c.full_document.clone()),
        (Value::Null, None)
    );

    let mut timer = wire.as_map().unwrap().clone();
    timer.insert(
        "body".into(),
        vmap(&[
            ("kind", "timer".into()),
            ("data", vmap(&[("every_ms", Value::Int(10))])),
        ]),
    );
    let e: Event = codec::decode(&codec::encode(&timer).unwrap()).unwrap();
    assert_eq!(e.body, EventBody::Other);

    let reply = vmap(&[
        ("status", "ok".into()),
        ("effects", Value::Array(vec![])),
        ("elapsed_us", Value::Int(3)),
    ]);
    let r: Reply = codec::decode(&codec::encode(&reply).unwrap()).unwrap();
    assert_eq!(r, Reply::Ok { effects: vec![] });
}

#[test]
fn a_known_kind_without_data_is_an_error_that_names_the_field() {
    let wire = vmap(&[
        ("seq", Value::Int(1)),
        ("id", "a".into()),
        ("source", "s".into()),
        ("time_ms", Value::Int(2)),
        ("body", vmap(&[("kind", "change".into())])),
    ]);
    let err = codec::decode::<Event>(&codec::encode(&wire).unwrap()).unwrap_err();
    assert!(err.to_string().contains("data"), "{err}");
}

#[test]
fn events_read_from_json_lines_in_either_key_order() {
    let kind_first = r#"{"seq":3,"id":"f:3","source":"events","time_ms":1,
        "body":{"kind":"change","data":{"op":"insert","db":"app","coll":"orders",
        "key":{"_id":{"$oid":"65a1"}},"full_document":{"_id":{"$oid":"65a1"},"total":1.5,"n":2}}}}"#;
    let data_first = r#"{"seq":3,"id":"f:3","source":"events","time_ms":1,
        "body":{"data":{"op":"insert","db":"app","coll":"orders",
        "key":{"_id":{"$oid":"65a1"}},"full_document":{"_id":{"$oid":"65a1"},"total":1.5,"n":2}},"kind":"change"}}"#;
    let a: Event = serde_json::from_str(kind_first).unwrap();
    let b: Event = serde_json::from_str(data_first).unwrap();
    assert_eq!(a, b);
    let EventBody::Change(c) = &a.body else {
        panic!()
    };
    assert_eq!(c.id().map(Value::to_key_string).as_deref(), Some("65a1"));
    assert_eq!(c.field("total"), Some(&Value::Float(1.5)));
    assert_eq!(c.field("n"), Some(&Value::Int(2)));
    // And the JSON the SDK writes is what it reads.
    assert_eq!(
        serde_json::from_str::<Event>(&serde_json::to_string(&a).unwrap()).unwrap(),
        a
    );
}

#[test]
fn packed_pointer_and_length_split_back() {
    let packed = oplet_sdk::pack_ptr_len(0x0011_0000, 70);
    assert_eq!(packed, 0x0011_0000_0000_0046);
    assert_eq!(oplet_sdk::unpack_ptr_len(packed), (0x0011_0000, 70));
}

/// The worked example of docs/abi.md, byte for byte.
#[test]
fn the_worked_example_of_the_abi_doc() {
    let event = Event {
        seq: 1,
        id: "e1".into(),
        source: "socket".into(),
        time_ms: 1_700_000_000_000,
        body: EventBody::Socket(SocketEvent { client: "c1".into(), event: "hi".into(), payload: Value::Null }),
    };
    assert_eq!(
        hex(&codec::encode(&event).unwrap()),
        "85 a3 73 65 71 01 a2 69 64 a2 65 31 a6 73 6f 75 72 63 65 a6 73 6f 63 6b 65 74 \
         a7 74 69 6d 65 5f 6d 73 cf 00 00 01 8b cf e5 68 00 a4 62 6f 64 79 82 a4 6b 69 6e 64 \
         a6 73 6f 63 6b 65 74 a4 64 61 74 61 83 a6 63 6c 69 65 6e 74 a2 63 31 a5 65 76 65 6e 74 \
         a2 68 69 a7 70 61 79 6c 6f 61 64 c0"
    );
    let reply = Reply::Ok { effects: vec![Effect::emit_to_client("c1", "hello", vmap(&[("n", Value::Int(1))]))] };
    assert_eq!(
        hex(&codec::encode(&reply).unwrap()),
        "82 a6 73 74 61 74 75 73 a2 6f 6b a7 65 66 66 65 63 74 73 91 82 a4 6b 69 6e 64 a4 65 6d 69 74 \
         a4 64 61 74 61 83 a2 74 6f 81 a6 63 6c 69 65 6e 74 a2 63 31 a5 65 76 65 6e 74 a5 68 65 6c 6c 6f \
         a7 70 61 79 6c 6f 61 64 81 a1 6e 01"
    );
}

#[test]
fn the_guests_static_empty_reply_is_the_encoded_empty_reply() {
    assert_eq!(oplet_sdk::EMPTY_OK_REPLY, codec::encode(&Reply::Ok { effects: vec![] }).unwrap().as_slice());
}

#[test]
fn integers_take_their_smallest_encoding_and_floats_are_float64() {
    assert_eq!(hex(&codec::encode(&Value::Int(5)).unwrap()), "05");
    assert_eq!(hex(&codec::encode(&Value::Int(-1)).unwrap()), "ff");
    assert_eq!(hex(&codec::encode(&Value::Int(200)).unwrap()), "cc c8");
    assert_eq!(hex(&codec::encode(&Value::Int(-200)).unwrap()), "d1 ff 38");
    assert_eq!(hex(&codec::encode(&Value::Float(1.5)).unwrap()), "cb 3f f8 00 00 00 00 00 00");
    // Readers must accept any width: a float32 or a uint64 past i64 still decode.
    assert_eq!(codec::decode::<Value>(&[0xca, 0x3f, 0xc0, 0, 0]).unwrap(), Value::Float(1.5));
    assert_eq!(codec::decode::<Value>(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap(), Value::Float(u64::MAX as f64));
    // MessagePack bin arrives in a Value as the `$binary` wrapper (subtype 00),
    // the shape BSON binary has: bytes read one way whoever wrote them.
    assert_eq!(
        codec::decode::<Value>(&[0xc4, 2, 1, 2]).unwrap(),
        vmap(&[("$binary", vmap(&[("base64", "AQI=".into()), ("subType", "00".into())]))])
    );
}

#[test]
fn a_field_under_a_parent_the_update_set_whole_is_found() {
    let updated: Map = serde_json::from_str(r#"{"profile": {"name": "Ada", "tags": {"a": 1}}, "stats.count": 3}"#).unwrap();
    let c = Change { op: OperationType::Update, updated_fields: Some(updated), ..Default::default() };
    assert_eq!(c.field("profile.name"), Some(&Value::String("Ada".into())));
    assert_eq!(c.field("profile.tags.a"), Some(&Value::Int(1)));
    assert_eq!(c.field("stats.count"), Some(&Value::Int(3)), "a dotted key as MongoDB sends it");
    assert_eq!(c.field("profile.missing"), None);
    assert_eq!(c.field("stats"), None, "only stats.count was set: stats as a whole is unknown");
    assert_eq!(c.field("other.name"), None);
}

#[test]
fn namespace_patterns_match_a_collection_a_database_or_everything() {
    use oplet_sdk::namespace_matches;
    assert!(namespace_matches("app.users", "app", "users"));
    assert!(!namespace_matches("app.users", "app", "orders"));
    assert!(namespace_matches("app.*", "app", "orders"));
    assert!(!namespace_matches("app.*", "shop", "orders"));
    assert!(namespace_matches("*", "shop", "orders"));
    assert!(!namespace_matches("app", "app", "users"), "a bare database name is no pattern");
}
