//! The sinks end to end, through the real `oplet` binary with the bundled plugins
//! (cache-invalidate, audit-log, pg-sync), a real redis-server and a real
//! PostgreSQL: changes become deleted keys, mirrored rows and audit records; a
//! crash and replay duplicates nothing; SQL-looking data stays data; an ungranted
//! table is refused; PostgreSQL going away mid-stream loses nothing; and the same
//! from real MongoDB writes (nx-27017, or `OPLET_TEST_MONGODB_URI`).

use oplet_tests::{install_plugin, install_plugin_from, repo_root, wasm_plugins, Mongo, Oplet, Postgres, Redis, TempDir};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

const USERS: &str = "CREATE TABLE users (id text PRIMARY KEY, email text, name text, doc jsonb)";

/// A host folder: config, plugin dir, state dir, and the events file it follows.
struct Host {
    dir: TempDir,
}

impl Host {
    /// A host that follows `events.jsonl`; `sinks`: the `[redis]`/`[postgres]`/
    /// `[grants]` part of the config.
    fn new(sinks: &str) -> Host {
        let source = "[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\nfollow = true\n";
        Host::with_source(source, sinks)
    }

    fn with_source(source: &str, sinks: &str) -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        let config = format!("state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = 30\n{source}{sinks}\n");
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        Host { dir }
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

    /// Installs a bundled plugin with the manifest it ships with.
    fn install_bundled(&self, name: &str) {
        let manifest = std::fs::read_to_string(repo_root().join(format!("plugins/{name}/{name}.toml"))).unwrap();
        install_plugin(&self.plugins(), name, &manifest);
    }

    fn append(&self, events: &[Value]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path().join("events.jsonl")).unwrap();
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn audit(&self) -> Vec<Value> {
        read_lines(&self.path().join("state/audit.jsonl"))
    }

    fn dead_letters(&self) -> Vec<Value> {
        read_lines(&self.path().join("state/dead-letters.jsonl"))
    }

    /// The last line the JSON-lines source checkpointed (`{"line": N, ...}`).
    fn checkpoint(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.path().join("state/checkpoints/events.json")).ok()?;
        let v: Value = serde_json::from_str(&text).unwrap();
        Some(v.get("line").cloned().unwrap_or(v))
    }
}

use oplet_tests::read_json_lines as read_lines;

/// `[redis]`, `[postgres]` (with the audit table) and a grant of everything the
/// manifests ask for.
fn sinks(redis: &Redis, pg: &Postgres, extra: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\n[postgres]\nurl = \"{}\"\naudit_table = \"oplet_audit\"\nretries = 30\n\
         backoff_ms = 50\nbackoff_max_ms = 500\n{extra}\n[grants.\"*\"]\nall_requested = true\n",
        redis.url(),
        pg.url()
    )
}

fn oid(n: u32) -> String {
    format!("65a1f0c2e4b0a1b2c3d4{n:04x}")
}

/// One change event line for `app.COLL`.
fn change(op: &str, coll: &str, id: &str, full: Option<Value>) -> Value {
    let mut data = json!({"op": op, "db": "app", "coll": coll, "key": {"_id": {"$oid": id}}});
    if let Some(doc) = full {
        data["full_document"] = doc;
    }
    json!({"body": {"kind": "change", "data": data}})
}

fn user(id: &str, email: &str, name: &str, uuid: &str) -> Value {
    json!({"_id": {"$oid": id}, "email": email, "profile": {"name": name}, "uuid": uuid, "actor": "admin"})
}

/// Rows in `table`; 0 while it does not exist (the audit table is the host's).
async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    let exists: bool = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table]).await.unwrap().get(0);
    if !exists {
        return 0;
    }
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

/// `id -> (email, name, doc)` of every row of `users`.
async fn users(client: &tokio_postgres::Client) -> Vec<(String, Option<String>, Option<String>, Value)> {
    client
        .query("SELECT id, email, name, doc FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, Option<Value>>(3).unwrap_or(Value::Null)))
        .collect()
}

async fn exists(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(conn).await.unwrap() == 1
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_become_deleted_keys_mirrored_rows_and_audit_records_once_each() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let db = pg.client().await;
    db.batch_execute(USERS).await.unwrap();
    let mut cache = redis.connection().await;
    let (u1, u2, m1) = (oid(1), oid(2), oid(0xa1));
    for key in [format!("user:{u1}"), "user:uu-1:profile".into(), format!("user:{u2}"), "user:uu-2:profile".into(), format!("model:{m1}"), "other:keep".into()] {
        let () = redis::cmd("SET").arg(&key).arg("cached").query_async(&mut cache).await.unwrap();
    }

    let host = Host::new(&sinks(&redis, &pg, ""));
    for p in ["cache-invalidate", "audit-log", "pg-sync"] {
        host.install_bundled(p);
    }
    let ada = user(&u1, "ada@x.io", "Ada", "uu-1");
    let mut ada2 = user(&u1, "ada@new.io", "Ada L.", "uu-1");
    ada2["created"] = json!({"$date": 1_732_370_000_000i64});
    ada2["score"] = json!({"$numberDecimal": "4.50"});
    host.append(&[
        change("insert", "users", &u1, Some(ada)),
        change("insert", "users", &u2, Some(user(&u2, "bob@x.io", "Bob", "uu-2"))),
        change("update", "users", &u1, Some(ada2.clone())),
        change("insert", "models", &m1, Some(json!({"_id": {"$oid": m1}, "name": "m"}))),
        change("delete", "users", &u2, None),
    ]);
    let oplet = Oplet::start(&host.config());

    oplet.eventually("5 audit rows in PostgreSQL", WAIT, || async { (count(&db, "oplet_audit").await == 5).then_some(()) }).await;
    oplet.eventually("the checkpoint after event 5", WAIT, || async { (host.checkpoint() == Some(json!(5))).then_some(()) }).await;

    // Rows: Ada updated, Bob inserted then deleted; the document column is the
    // whole document in its extended-JSON shape.
    assert_eq!(users(&db).await, vec![(u1.clone(), Some("ada@new.io".into()), Some("Ada L.".into()), ada2)]);

    // Keys: users' keys go on update and delete (not on insert); a delete carries
    // no uuid, so Bob's profile key stays; models' keys go on every change.
    for (key, kept) in [
        (format!("user:{u1}"), false),
        ("user:uu-1:profile".into(), false),
        (format!("user:{u2}"), false),
        ("user:uu-2:profile".into(), true),
        (format!("model:{m1}"), false),
        ("other:keep".into(), true),
    ] {
        assert_eq!(exists(&mut cache, &key).await, kept, "key {key} should {}be there", if kept { "" } else { "not " });
    }

    // Audit: one record per change in the file and in the table, keyed alike.
    let file = host.audit();
    assert_eq!(file.len(), 5, "{file:?}");
    let rows = db.query("SELECT key, record FROM oplet_audit ORDER BY seq", &[]).await.unwrap();
    let file_keys: Vec<&str> = file.iter().map(|r| r["key"].as_str().unwrap()).collect();
    let table_keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(file_keys, table_keys);
    let first: Value = rows[0].get(1);
    assert_eq!((first["op"].clone(), first["ns"].clone(), first["actor"].clone()), (json!("insert"), json!("app.users"), json!("admin")));
    assert_eq!(first, file[0]["record"]);
    assert!(host.dead_letters().is_empty(), "{:?}", host.dead_letters());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_and_replay_leaves_no_duplicate_rows_or_audit_records() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let db = pg.client().await;
    db.batch_execute(USERS).await.unwrap();
    let host = Host::new(&sinks(&redis, &pg, ""));
    for p in ["audit-log", "pg-sync"] {
        host.install_bundled(p);
    }
    // 40 inserts, 10 updates, 10 deletes.
    let mut events = Vec::new();
    for n in 0..40 {
        events.push(change("insert", "users", &oid(n), Some(user(&oid(n), &format!("u{n}@x.io"), "U", "u"))));
    }
    for n in 0..10 {
        events.push(change("update", "users", &oid(n), Some(user(&oid(n), &format!("u{n}@new.io"), "V", "u"))));
        events.push(change("delete", "users", &oid(39 - n), None));
    }
    host.append(&events);
    // The first run writes no checkpoint before it crashes, so every event replays.
    let mut oplet = Oplet::start_with_env(&host.config(), &[("OPLET__DELIVERY__CHECKPOINT_INTERVAL_MS", "600000")]);
    oplet.eventually("60 audit rows", WAIT, || async { (count(&db, "oplet_audit").await == 60).then_some(()) }).await;
    oplet.eventually("60 audit lines", WAIT, || async { (host.audit().len() == 60).then_some(()) }).await;
    oplet.kill();
    assert_eq!(host.checkpoint(), None, "no checkpoint was written before the crash, so all 60 events replay");

    // The replay: read the file to its end, then stop.
    let mut replay = Oplet::start_with_env(&host.config(), &[("OPLET__SOURCE__0__FOLLOW", "false")]);
    let status = replay.wait_exit(WAIT).unwrap();
    assert!(status.success(), "{}", replay.logs());
    assert_eq!(host.checkpoint(), Some(json!(60)), "the replay went through every event");

    let rows = users(&db).await;
    let expected: Vec<(String, Option<String>)> = (0..30)
        .map(|n| (oid(n), Some(if n < 10 { format!("u{n}@new.io") } else { format!("u{n}@x.io") })))
        .collect();
    assert_eq!(rows.iter().map(|r| (r.0.clone(), r.1.clone())).collect::<Vec<_>>(), expected);
    assert_eq!(count(&db, "oplet_audit").await, 60, "no second audit row for a replayed event");
    let audit = host.audit();
    assert_eq!(audit.len(), 60, "no second audit line for a replayed event");
    let mut keys: Vec<&str> = audit.iter().map(|r| r["key"].as_str().unwrap()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 60);
    assert!(host.dead_letters().is_empty(), "{:?}", host.dead_letters());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_field_that_looks_like_sql_is_stored_as_data_and_a_column_that_does_is_refused() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let db = pg.client().await;
    db.batch_execute(USERS).await.unwrap();
    db.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)").await.unwrap();
    let host = Host::new(&sinks(&redis, &pg, ""));
    host.install_bundled("pg-sync");
    // The same plugin again, configured by a hostile hand to write a column whose
    // name carries SQL.
    let evil = "name = \"pg-sync-evil\"\n[[subscribe]]\nnamespaces = [\"app.users\"]\n[capabilities]\ntables = [\"users\"]\n\
                [[config.tables]]\nnamespace = \"app.users\"\ntable = \"users\"\n\
                [config.tables.columns]\n\"email\" = 'email\" = NULL; DROP TABLE t; --'\n";
    install_plugin_from(&host.plugins(), "pg-sync-evil", &wasm_plugins().path("pg-sync"), evil);

    let sql = "x'); DROP TABLE t; --";
    let id = oid(7);
    let doc = json!({"_id": {"$oid": id}, "email": sql, "profile": {"name": "Robert\"); DROP TABLE users; --"}, sql: sql});
    host.append(&[change("insert", "users", &id, Some(doc.clone()))]);
    let oplet = Oplet::start(&host.config());

    oplet.eventually("the row", WAIT, || async { (count(&db, "users").await == 1).then_some(()) }).await;
    let dead = oplet.eventually("the refused column's dead letter", WAIT, || async {
        let d = host.dead_letters();
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(
        users(&db).await,
        vec![(id.clone(), Some(sql.into()), Some("Robert\"); DROP TABLE users; --".into()), doc)]
    );
    assert_eq!(count(&db, "t").await, 1, "table t is still there, with its row");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "sink:postgres (pg-sync-evil)");
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains(r#"column "email\" = NULL; DROP TABLE t; --" is not a valid identifier"#), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_asking_for_a_table_it_was_not_granted_is_refused() {
    let (redis, pg) = (Redis::start(), Postgres::start());
    let db = pg.client().await;
    db.batch_execute(USERS).await.unwrap();
    db.batch_execute("CREATE TABLE secrets (id text PRIMARY KEY, doc jsonb)").await.unwrap();
    let grants = format!("[redis]\nurl = \"{}\"\n[postgres]\nurl = \"{}\"\n[grants.\"pg-sync\"]\ntables = [\"users\"]\n", redis.url(), pg.url());
    let host = Host::new(&grants);
    let manifest = "name = \"pg-sync\"\n[[subscribe]]\nnamespaces = [\"app.users\"]\n[capabilities]\ntables = [\"users\", \"secrets\"]\n\
                    [[config.tables]]\nnamespace = \"app.users\"\ntable = \"users\"\n\
                    [[config.tables]]\nnamespace = \"app.users\"\ntable = \"secrets\"\n";
    install_plugin(&host.plugins(), "pg-sync", manifest);
    let id = oid(9);
    host.append(&[change("insert", "users", &id, Some(json!({"_id": {"$oid": id}, "email": "e@x.io"})))]);
    let oplet = Oplet::start(&host.config());

    let dead = oplet.eventually("the refusal's dead letter", WAIT, || async {
        let d = host.dead_letters();
        (!d.is_empty()).then_some(d)
    })
    .await;
    oplet.eventually("the granted row", WAIT, || async { (count(&db, "users").await == 1).then_some(()) }).await;
    assert_eq!(count(&db, "secrets").await, 0, "nothing reached the ungranted table");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "pg-sync");
    assert_eq!(
        dead[0]["error"],
        r#"effect row_upsert refused: capability refused: table "secrets" is not among the granted tables ["users"]"#
    );
    assert!(!oplet.log_lines_containing("effect row_upsert refused").is_empty(), "the refusal is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_going_away_mid_stream_loses_nothing_once_it_is_back() {
    let (redis, mut pg) = (Redis::start(), Postgres::start());
    pg.client().await.batch_execute(USERS).await.unwrap();
    let host = Host::new(&sinks(&redis, &pg, "batch_max = 50"));
    host.install_bundled("pg-sync");
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();

    // A writer keeps appending while the server goes away and comes back.
    const TOTAL: u32 = 1500;
    let events_path = host.path().join("events.jsonl");
    let writer = std::thread::spawn(move || {
        for chunk in 0..TOTAL / 5 {
            let mut f = std::fs::OpenOptions::new().append(true).open(&events_path).unwrap();
            for n in chunk * 5..chunk * 5 + 5 {
                let line = change("insert", "users", &oid(n), Some(user(&oid(n), &format!("u{n}@x.io"), "U", "u")));
                writeln!(f, "{line}").unwrap();
            }
            std::thread::sleep(Duration::from_millis(8));
        }
    });
    let db = pg.client().await;
    oplet.eventually("the first rows", WAIT, || async { (count(&db, "users").await >= 100).then_some(()) }).await;
    tokio::task::block_in_place(|| pg.stop());
    let mark = oplet.log_mark();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pg.start_again());
    oplet.wait_for_log_since(mark, "retry", Duration::from_secs(5)).await.expect("the outage is logged as retried");
    tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();

    let db = pg.client().await;
    oplet.eventually("every row after the outage", WAIT, || async { (count(&db, "users").await == i64::from(TOTAL)).then_some(()) }).await;
    let emails: Vec<String> = db.query("SELECT email FROM users ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(emails, (0..TOTAL).map(|n| format!("u{n}@x.io")).collect::<Vec<_>>());
    assert!(host.dead_letters().is_empty(), "nothing was given up: {:?}", host.dead_letters());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_that_is_down_at_start_only_delays_the_rows() {
    let (redis, mut pg) = (Redis::start(), Postgres::start());
    pg.client().await.batch_execute(USERS).await.unwrap();
    tokio::task::block_in_place(|| pg.stop());
    let host = Host::new(&sinks(&redis, &pg, ""));
    host.install_bundled("pg-sync");
    host.append(&(0..10).map(|n| change("insert", "users", &oid(n), Some(user(&oid(n), "e", "n", "u")))).collect::<Vec<_>>());
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("PostgreSQL is not reachable yet", WAIT).await.unwrap();
    oplet.wait_for_log("retry 2/30", WAIT).await.unwrap();
    assert!(oplet.is_running(), "a sink that is down does not stop the host");
    tokio::task::block_in_place(|| pg.start_again());
    let db = pg.client().await;
    oplet.eventually("the 10 rows", WAIT, || async { (count(&db, "users").await == 10).then_some(()) }).await;
    assert!(host.dead_letters().is_empty(), "{:?}", host.dead_letters());
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_writes_become_deleted_keys_mirrored_rows_and_audit_records() {
    use mongodb::bson::{doc, oid::ObjectId, Document};
    let (mongo, redis, pg) = (Mongo::start(), Redis::start(), Postgres::start());
    let db = pg.client().await;
    db.batch_execute(USERS).await.unwrap();
    // A database of its own, in case the server is a shared one (OPLET_TEST_MONGODB_URI).
    let dbname = format!("app_{}_{}", std::process::id(), oplet_tests::free_port());
    let source = format!(
        "[[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{}\"\ncollections = [\"{dbname}.users\"]\n\
         full_document = \"updateLookup\"\n",
        mongo.uri()
    );
    let host = Host::with_source(&source, &sinks(&redis, &pg, ""));
    for p in ["cache-invalidate", "audit-log", "pg-sync"] {
        let manifest = std::fs::read_to_string(repo_root().join(format!("plugins/{p}/{p}.toml"))).unwrap();
        install_plugin(&host.plugins(), p, &manifest.replace("\"app.", &format!("\"{dbname}.")));
    }
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("watching the change stream", WAIT).await.unwrap();

    let users = mongo.client().await.database(&dbname).collection::<Document>("users");
    let (ada, bob) = (ObjectId::new(), ObjectId::new());
    let mut cache = redis.connection().await;
    for key in [format!("user:{ada}"), format!("user:{bob}"), "user:uu-ada:profile".into()] {
        let () = redis::cmd("SET").arg(&key).arg("cached").query_async(&mut cache).await.unwrap();
    }
    users.insert_one(doc! {"_id": ada, "email": "ada@x.io", "profile": {"name": "Ada"}, "uuid": "uu-ada"}).await.unwrap();
    users.insert_one(doc! {"_id": bob, "email": "bob@x.io", "profile": {"name": "Bob"}, "uuid": "uu-bob"}).await.unwrap();
    users.update_one(doc! {"_id": ada}, doc! {"$set": {"email": "ada@new.io", "profile.name": "Ada L."}}).await.unwrap();
    users.delete_one(doc! {"_id": bob}).await.unwrap();

    oplet.eventually("4 audit rows", WAIT, || async { (count(&db, "oplet_audit").await == 4).then_some(()) }).await;
    let rows = oplet.eventually("Ada updated and Bob gone", WAIT, || async {
        let rows: Vec<(String, Option<String>, Option<String>)> = db
            .query("SELECT id, email, name FROM users ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        (rows.len() == 1 && rows[0].1.as_deref() == Some("ada@new.io")).then_some(rows)
    })
    .await;
    assert_eq!(rows, vec![(ada.to_hex(), Some("ada@new.io".into()), Some("Ada L.".into()))]);
    let stored: Value = db.query_one("SELECT doc FROM users", &[]).await.unwrap().get(0);
    assert_eq!((stored["email"].clone(), stored["uuid"].clone()), (json!("ada@new.io"), json!("uu-ada")));
    oplet.eventually("the users' keys deleted", WAIT, || async {
        let mut c = redis.connection().await;
        let gone = !exists(&mut c, &format!("user:{ada}")).await
            && !exists(&mut c, &format!("user:{bob}")).await
            && !exists(&mut c, "user:uu-ada:profile").await;
        gone.then_some(())
    })
    .await;
    let ops: Vec<String> = host.audit().iter().map(|r| r["record"]["op"].as_str().unwrap().to_string()).collect();
    assert_eq!(ops, ["insert", "insert", "update", "delete"]);
    assert!(host.dead_letters().is_empty(), "{:?}", host.dead_letters());
}

// ---------------------------------------------------------------------------
// The PostgreSQL executor itself (the host's library, no binary): the type
// mapping of docs/sinks.md, order within one batch, one bad row among good ones.

mod executor {
    use super::*;
    use oplet::checkpoint::Tracker;
    use oplet::deadletter::DeadLetters;
    use oplet::effect::postgres::{PostgresConfig, PostgresHandle, RowOp};
    use oplet_sdk::{Event, EventBody, Map, Value as V};
    use std::sync::Arc;

    /// A started executor with a long batch window, so what a test queues in a
    /// row lands in one batch.
    struct Executor {
        handle: PostgresHandle,
        tracker: Arc<Tracker>,
        dead: Arc<DeadLetters>,
        _dir: TempDir,
        queued: u64,
    }

    impl Executor {
        fn start(pg: &Postgres, batch_ms: u64) -> Executor {
            let dir = oplet_tests::temp_dir();
            let dead = Arc::new(DeadLetters::open(&dir.path().join("dead-letters.jsonl")).unwrap());
            let mut cfg = PostgresConfig::new(&pg.url());
            cfg.batch_ms = batch_ms;
            let handle = PostgresHandle::start(&cfg, dead.clone()).unwrap();
            Executor { handle, tracker: Tracker::new("t", 1, None), dead, _dir: dir, queued: 0 }
        }

        /// Queues `ops` from a plain thread, as plugin workers do.
        fn queue(&mut self, ops: Vec<RowOp>) {
            let first = self.queued + 1;
            self.queued += ops.len() as u64;
            let tracker = self.tracker.clone();
            let handle = &self.handle;
            std::thread::scope(|s| {
                s.spawn(|| {
                    for (i, op) in ops.into_iter().enumerate() {
                        let seq = first + i as u64;
                        let event = Arc::new(oplet::envelope::Event::encode(&Event { seq, id: format!("t:{seq}"), source: "t".into(), time_ms: 0, body: EventBody::Other }).unwrap());
                        handle.apply("p", &event, op, tracker.ticket(seq, None));
                    }
                });
            });
        }

        /// Waits until everything queued is committed or dead-lettered.
        async fn settle(&self) {
            let start = Instant::now();
            while self.tracker.completed() < self.queued {
                assert!(start.elapsed() < WAIT, "{} of {} operations settled", self.tracker.completed(), self.queued);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    fn map(pairs: Vec<(&str, V)>) -> Map {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn wrap(key: &str, v: V) -> V {
        V::Map(map(vec![(key, v)]))
    }

    fn upsert(table: &str, values: Map) -> RowOp {
        RowOp::Upsert { table: table.into(), key: vec!["id".into()], values }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bson_values_land_in_their_column_types_as_documented() {
        let pg = Postgres::start();
        let db = pg.client().await;
        db.batch_execute(
            "CREATE TABLE typed (id text PRIMARY KEY, oid text, n bigint, f double precision, price numeric(10,2), \
             ok boolean, at timestamptz, day date, doc jsonb, tags text[], raw bytea, u uuid)",
        )
        .await
        .unwrap();
        let mut ex = Executor::start(&pg, 5);
        let mut binary = Map::new();
        binary.insert("base64".into(), "AAECAwQFBgcICQoLDA0ODw==".into());
        binary.insert("subType".into(), "04".into());
        let values = map(vec![
            ("id", wrap("$oid", "65a1f0c2e4b0a1b2c3d4e5f6".into())),
            ("oid", wrap("$oid", "65a1f0c2e4b0a1b2c3d4e5f6".into())),
            ("n", V::Int(-9_007_199_254_740_993)),
            ("f", V::Float(0.1)),
            ("price", wrap("$numberDecimal", "42.50".into())),
            ("ok", V::Int(1)),
            ("at", wrap("$date", V::Int(1_732_370_060_123))),
            ("day", wrap("$date", V::Int(1_732_370_060_123))),
            ("doc", V::Map(map(vec![("_id", wrap("$oid", "65a1".into())), ("nested", V::Array(vec![V::Int(1), "x'); DROP TABLE typed; --".into()]))]))),
            ("tags", V::Array(vec!["a".into(), "b \"c\"".into(), V::Null])),
            ("raw", wrap("$binary", V::Map(binary.clone()))),
            ("u", wrap("$binary", V::Map(binary))),
        ]);
        ex.queue(vec![upsert("typed", values)]);
        ex.settle().await;
        assert_eq!(ex.dead.count(), 0);
        let row = db
            .query_one(
                "SELECT id, oid, n, f, price::text, ok, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), day::text, \
                 doc, tags, raw, u::text FROM typed",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "65a1f0c2e4b0a1b2c3d4e5f6");
        assert_eq!(row.get::<_, String>(1), "65a1f0c2e4b0a1b2c3d4e5f6");
        assert_eq!(row.get::<_, i64>(2), -9_007_199_254_740_993, "a 64-bit integer keeps every digit");
        assert_eq!(row.get::<_, f64>(3), 0.1);
        assert_eq!(row.get::<_, String>(4), "42.50", "a decimal is not rounded through a float");
        assert!(row.get::<_, bool>(5));
        assert_eq!(row.get::<_, String>(6), "2024-11-23 13:54:20.123");
        assert_eq!(row.get::<_, String>(7), "2024-11-23");
        assert_eq!(
            row.get::<_, Value>(8),
            json!({"_id": {"$oid": "65a1"}, "nested": [1, "x'); DROP TABLE typed; --"]}),
            "nested documents stay documents, extended JSON kept"
        );
        assert_eq!(row.get::<_, Vec<Option<String>>>(9), vec![Some("a".into()), Some("b \"c\"".into()), None]);
        assert_eq!(row.get::<_, Vec<u8>>(10), (0u8..16).collect::<Vec<_>>());
        assert_eq!(row.get::<_, String>(11), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_batch_keeps_the_order_of_operations_on_each_row() {
        let pg = Postgres::start();
        let db = pg.client().await;
        db.batch_execute(USERS).await.unwrap();
        db.batch_execute("INSERT INTO users (id, email, name) VALUES ('gone', 'g', 'G'), ('kept', 'k', 'K')").await.unwrap();
        // A window long enough that all of this is one batch.
        let mut ex = Executor::start(&pg, 300);
        let id = |s: &str| ("id", V::from(s));
        ex.queue(vec![
            upsert("users", map(vec![id("a"), ("email", "a1".into()), ("name", "A".into())])),
            upsert("users", map(vec![id("a"), ("email", "a2".into()), ("name", "A".into())])),
            RowOp::Delete { table: "users".into(), key: map(vec![id("gone")]) },
            upsert("users", map(vec![id("b"), ("email", "b1".into())])),
            RowOp::Delete { table: "users".into(), key: map(vec![id("b")]) },
            upsert("users", map(vec![id("b"), ("name", "B again".into())])),
            upsert("users", map(vec![id("kept"), ("email", "k2".into())])),
            upsert("users", map(vec![id("a"), ("name", "A2".into())])),
        ]);
        ex.settle().await;
        assert_eq!(ex.dead.count(), 0);
        let rows: Vec<(String, Option<String>, Option<String>)> = db
            .query("SELECT id, email, name FROM users ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let row = |id: &str, email: Option<&str>, name: Option<&str>| (id.to_string(), email.map(String::from), name.map(String::from));
        assert_eq!(
            rows,
            vec![
                row("a", Some("a2"), Some("A2")),
                row("b", None, Some("B again")),
                row("kept", Some("k2"), Some("K")),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_row_postgres_refuses_is_dead_lettered_alone_and_the_rest_commit() {
        let pg = Postgres::start();
        let db = pg.client().await;
        db.batch_execute("CREATE TABLE scores (id text PRIMARY KEY, n bigint NOT NULL)").await.unwrap();
        let mut ex = Executor::start(&pg, 300);
        let score = |id: &str, n: V| upsert("scores", map(vec![("id", id.into()), ("n", n)]));
        ex.queue(vec![
            score("a", V::Int(1)),
            score("b", V::from("not a number")),
            score("c", V::Null),
            score("d", V::Int(4)),
            RowOp::Delete { table: "nope".into(), key: map(vec![("id", "x".into())]) },
        ]);
        ex.settle().await;
        let ns: Vec<(String, i64)> =
            db.query("SELECT id, n FROM scores ORDER BY id", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(ns, vec![("a".to_string(), 1), ("d".to_string(), 4)]);
        assert_eq!(ex.dead.count(), 3);
        let dead: Vec<Value> = std::fs::read_to_string(ex.dead.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let error = |seq: u64| dead.iter().find(|d| d["seq"] == seq).unwrap()["error"].as_str().unwrap().to_string();
        assert!(error(2).contains("invalid input syntax for type bigint: \"not a number\" (SQLSTATE 22P02)"), "{}", error(2));
        assert!(error(3).contains("null value in column \"n\"") && error(3).contains("23502"), "{}", error(3));
        assert!(error(5).contains("table \"nope\" does not exist"), "{}", error(5));
        assert!(dead.iter().all(|d| d["stage"] == "sink:postgres (p)"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redis_deletes_many_keys_per_round_trip_and_a_refused_key_fails_only_its_effect() {
        use oplet::effect::redis::{RedisConfig, RedisHandle};
        let redis = Redis::start();
        let mut admin = redis.connection().await;
        // A user that may touch `user:*` keys only: `secret:` keys get NOPERM.
        let () = redis::cmd("ACL")
            .arg(&["SETUSER", "limited", "on", ">pw", "~user:*", "+@all"])
            .query_async(&mut admin)
            .await
            .unwrap();
        for k in ["user:1", "user:2", "user:3", "secret:1"] {
            let () = redis::cmd("SET").arg(k).arg("v").query_async(&mut admin).await.unwrap();
        }
        let dir = oplet_tests::temp_dir();
        let dead = Arc::new(DeadLetters::open(&dir.path().join("dead-letters.jsonl")).unwrap());
        let mut cfg = RedisConfig::new(&format!("redis://limited:pw@127.0.0.1:{}/", redis.port()));
        cfg.batch_ms = 300;
        let handle = RedisHandle::start(&cfg, dead.clone()).unwrap();
        let tracker = Tracker::new("t", 1, None);
        let effects = [vec!["user:1", "user:2"], vec!["secret:1", "user:3"], vec!["user:3", "user:404"]];
        std::thread::scope(|s| {
            s.spawn(|| {
                for (i, keys) in effects.iter().enumerate() {
                    let seq = i as u64 + 1;
                    let event = Arc::new(oplet::envelope::Event::encode(&Event { seq, id: format!("t:{seq}"), source: "t".into(), time_ms: 0, body: EventBody::Other }).unwrap());
                    handle.delete("p", &event, keys.iter().map(|k| k.to_string()).collect(), tracker.ticket(seq, None));
                }
            });
        });
        handle.shutdown().await;
        assert_eq!(tracker.completed(), 3, "every effect settled");
        for (key, kept) in [("user:1", false), ("user:2", false), ("user:3", false), ("secret:1", true)] {
            assert_eq!(exists(&mut admin, key).await, kept, "{key}");
        }
        let dead: Vec<Value> = std::fs::read_to_string(dead.path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(dead.len(), 1, "only the effect with the refused key: {dead:?}");
        assert_eq!((dead[0]["seq"].clone(), dead[0]["stage"].clone()), (json!(2), json!("sink:redis (p)")));
        assert!(dead[0]["error"].as_str().unwrap().contains("no permissions to access one of the keys"), "{}", dead[0]["error"]);
    }
}
