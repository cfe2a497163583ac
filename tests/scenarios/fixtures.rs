//! Self-tests of the shared fixtures: each starts the real service, uses it through
//! the same client a scenario would, and (where a scenario needs it) stops it and
//! brings it back. If these fail, every end-to-end scenario would fail for the same
//! reason; run them first: `cargo test -p oplet-tests --test fixtures`.

use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Document};
use oplet_tests::{free_port, repo_root, wasm_plugins, Mongo, Oplet, Postgres, Redis};

#[tokio::test(flavor = "multi_thread")]
async fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "free_port repeated a port: {ports:?}");
    std::net::TcpListener::bind(("127.0.0.1", ports[0])).expect("a free port can be bound");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_answers_and_comes_back_after_a_stop() {
    let mut pg = Postgres::start();
    let client = pg.client().await;
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    client.batch_execute("create table kept (id int primary key)").await.unwrap();
    client.execute("insert into kept values (7)", &[]).await.unwrap();

    pg.stop();
    assert!(client.query_one("select 1", &[]).await.is_err(), "a stopped server answered");
    assert!(pg.try_client().await.is_err(), "connected to a stopped server");

    pg.start_again();
    let client = pg.client().await;
    let id: i32 = client.query_one("select id from kept", &[]).await.unwrap().get(0);
    assert_eq!(id, 7, "data survives stop + start_again");
    assert!(pg.url().contains(&pg.port().to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_sets_and_gets() {
    let redis = Redis::start();
    let mut conn = redis.connection().await;
    let () = redis::cmd("SET").arg("k").arg("v").query_async(&mut conn).await.unwrap();
    let v: String = redis::cmd("GET").arg("k").query_async(&mut conn).await.unwrap();
    assert_eq!(v, "v");
    let port = redis.port();
    drop(redis);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "redis-server still listens after Drop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mongo_streams_a_change_and_keeps_data_across_a_restart() {
    let mut mongo = Mongo::start();
    let client = mongo.client().await;
    let coll = client.database("oplet_fixtures").collection::<Document>("items");
    // Raw documents: the driver's typed ChangeStreamEvent fails on nx-27017.
    let mut stream = coll.watch().await.unwrap().with_type::<Document>();
    coll.insert_one(doc! { "_id": "a", "n": 1 }).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a change event within 10 s")
        .expect("the stream is open")
        .expect("a well-formed event");
    assert_eq!(event.get_str("operationType").unwrap(), "insert");
    assert_eq!(event.get_document("documentKey").unwrap().get_str("_id").unwrap(), "a");
    let token = stream.resume_token().expect("a resume token after an event");
    drop(stream);

    if mongo.is_external() {
        return; // a real server of someone else's cannot be restarted here
    }
    mongo.stop();
    assert!(!mongo.is_running());
    mongo.start_again();
    let client = mongo.client().await;
    let coll = client.database("oplet_fixtures").collection::<Document>("items");
    let kept = coll.find_one(doc! { "_id": "a" }).await.unwrap();
    assert_eq!(kept.and_then(|d| d.get_i32("n").ok()), Some(1), "document survives a restart");

    // A change made while nobody watched is delivered when resuming from the old token.
    coll.insert_one(doc! { "_id": "b" }).await.unwrap();
    let mut resumed = coll.watch().resume_after(token).await.unwrap().with_type::<Document>();
    let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("the missed event within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(event.get_document("documentKey").unwrap().get_str("_id").unwrap(), "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_plugins_build_when_the_plugin_tree_exists() {
    let root = repo_root();
    if !root.join("plugins/Cargo.toml").exists()
        && !root.join("examples/hello-plugin/Cargo.toml").exists()
        && !root.join("plugins/testing/wat").exists()
    {
        eprintln!("no plugins/ or examples/ crates yet: nothing to build");
        return;
    }
    let plugins = tokio::task::spawn_blocking(wasm_plugins).await.unwrap();
    assert!(!plugins.names().is_empty(), "the plugin build produced no module");
    for name in plugins.names() {
        let bytes = std::fs::read(plugins.path(&name)).unwrap();
        assert_eq!(&bytes[..4], b"\0asm", "{name} is a wasm module");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oplet_runs_logs_and_stops_on_sigterm_or_sigkill() {
    let dir = oplet_tests::temp_dir();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let config = dir.path().join("oplet.toml");
    std::fs::write(&config, "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n").unwrap();

    let mut oplet = tokio::task::block_in_place(|| Oplet::start(&config));
    let line = oplet.wait_for_log("plugin", Duration::from_secs(60)).await.unwrap();
    assert!(!line.contains('\u{1b}'), "log lines are free of color codes: {line:?}");
    assert!(oplet.is_running());
    let status = oplet.terminate().unwrap();
    assert!(!oplet.is_running());
    assert!(status.success(), "SIGTERM is a clean shutdown, got {status}:\n{}", oplet.logs());
    let on_disk = std::fs::read_to_string(oplet.log_path()).unwrap();
    assert_eq!(on_disk.trim_end(), oplet.logs(), "the log file holds the same lines");

    let mut again = tokio::task::block_in_place(|| Oplet::start(&config));
    again.wait_for_log("plugin", Duration::from_secs(30)).await.unwrap();
    again.kill();
    assert!(!again.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn oplet_with_a_missing_config_exits_and_says_why() {
    let dir = oplet_tests::temp_dir();
    let mut oplet = tokio::task::block_in_place(|| Oplet::start(&dir.path().join("missing.toml")));
    let err = oplet.wait_for_log("never logged", Duration::from_secs(60)).await.unwrap_err();
    assert!(err.to_string().contains("oplet exited"), "{err:#}");
    let status = oplet.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(!status.success());
    assert!(oplet.logs().contains("missing.toml"), "the error names the file:\n{}", oplet.logs());
}
