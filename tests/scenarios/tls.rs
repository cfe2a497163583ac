//! TLS and secrets for the sinks, end to end: PostgreSQL and Redis started with TLS
//! on and a test CA (Redis also demands a client certificate and a password), the
//! real `oplet` binary applying effects through them with passwords read from a
//! file and from the environment, no password in any log line, and a wrong CA
//! refused with an error naming the sink and the key to fix.

use oplet_tests::{install_plugin, repo_root, Oplet, Postgres, Redis, TempDir, TestCa};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const PG_PASSWORD: &str = "pg-Secret-4f1e9c";
const REDIS_PASSWORD: &str = "redis-Secret-7a2b3d";

/// `app` may only log in over TLS with its password; `postgres` (the test's own
/// client) keeps trust on loopback.
const HBA: &str = "local all all trust\n\
                   hostssl all app 127.0.0.1/32 scram-sha-256\n\
                   hostnossl all app 127.0.0.1/32 reject\n\
                   host all postgres 127.0.0.1/32 trust\n";

/// A TLS PostgreSQL with role `app` and table `users`, a TLS Redis, and the CA.
struct Servers {
    ca: TestCa,
    pg: Postgres,
    redis: Redis,
}

async fn servers() -> (Servers, tokio_postgres::Client) {
    let ca = TestCa::new();
    let pg = Postgres::start();
    let db = pg.client().await;
    db.batch_execute(&format!(
        "CREATE ROLE app LOGIN PASSWORD '{PG_PASSWORD}';
         CREATE TABLE users (id text PRIMARY KEY, email text, name text, doc jsonb);
         GRANT ALL ON users TO app; GRANT CREATE ON SCHEMA public TO app;"
    ))
    .await
    .unwrap();
    pg.enable_tls(&ca.server_cert(), &ca.server_key(), &ca.ca(), HBA);
    let redis = Redis::start_tls(&ca.server_cert(), &ca.server_key(), &ca.ca(), REDIS_PASSWORD);
    (Servers { ca, pg, redis }, db)
}

/// The test's own Redis client: TLS, the CA, the client certificate, the password.
async fn cache(s: &Servers) -> redis::aio::MultiplexedConnection {
    let certs = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: std::fs::read(s.ca.client_cert()).unwrap(),
            client_key: std::fs::read(s.ca.client_key()).unwrap(),
        }),
        root_cert: Some(std::fs::read(s.ca.ca()).unwrap()),
    };
    let url = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{}/", s.redis.port());
    let client = redis::Client::build_with_tls(url, certs).unwrap();
    client.get_multiplexed_async_connection().await.expect("the test connects to the TLS Redis")
}

/// A host folder following `events.jsonl`, with the cache-invalidate and pg-sync
/// plugins, and `[redis]`/`[postgres]` from `sinks`.
struct Host {
    dir: TempDir,
}

impl Host {
    fn new(sinks: &str) -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        let config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = 30\n\
             [[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\nfollow = true\n\
             {sinks}\n[grants.\"*\"]\nall_requested = true\n"
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        for name in ["cache-invalidate", "pg-sync"] {
            let manifest = std::fs::read_to_string(repo_root().join(format!("plugins/{name}/{name}.toml"))).unwrap();
            install_plugin(&dir.path().join("plugins"), name, &manifest);
        }
        Host { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("oplet.toml")
    }

    fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn append(&self, events: &[Value]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("events.jsonl")).unwrap();
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn checkpoint(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("state/checkpoints/events.json")).ok()?;
        let v: Value = serde_json::from_str(&text).unwrap();
        Some(v.get("line").cloned().unwrap_or(v))
    }
}

/// `[redis]` and `[postgres]` over TLS: `ca` as the CA file, Redis with the client
/// certificate and its password in a file; PostgreSQL's password comes from the
/// environment (`OPLET__POSTGRES__PASSWORD`).
fn tls_sinks(s: &Servers, host_dir: &Path, ca: &Path, mode: &str) -> String {
    let pw = host_dir.join("redis-password");
    std::fs::write(&pw, format!("{REDIS_PASSWORD}\n")).unwrap();
    format!(
        "[redis]\nurl = \"redis://127.0.0.1:{rport}/\"\npassword_file = \"{pw}\"\nretries = 1000\nbackoff_ms = 50\nbackoff_max_ms = 500\n\
         [redis.tls]\nmode = \"{mode}\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         [postgres]\nurl = \"postgres://app@127.0.0.1:{pport}/postgres\"\nretries = 1000\nbackoff_ms = 50\nbackoff_max_ms = 500\n\
         [postgres.tls]\nmode = \"{mode}\"\nca_file = \"{ca}\"\n",
        rport = s.redis.port(),
        pport = s.pg.port(),
        pw = pw.display(),
        ca = ca.display(),
        cert = s.ca.client_cert().display(),
        key = s.ca.client_key().display(),
    )
}

fn oid(n: u32) -> String {
    format!("65a1f0c2e4b0a1b2c3d4{n:04x}")
}

fn user_update(n: u32) -> Value {
    let id = oid(n);
    let doc = json!({"_id": {"$oid": id}, "email": format!("u{n}@x.io"), "profile": {"name": "U"}, "uuid": format!("uu-{n}")});
    json!({"body": {"kind": "change", "data": {"op": "update", "db": "app", "coll": "users", "key": {"_id": {"$oid": id}}, "full_document": doc}}})
}

async fn exists(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(conn).await.unwrap() == 1
}

/// Every captured line (stdout and stderr) and the host's log file: no password in any.
fn assert_no_password_logged(oplet: &Oplet) {
    let logs = format!("{}\n{}", oplet.logs(), std::fs::read_to_string(oplet.log_path()).unwrap_or_default());
    for secret in [PG_PASSWORD, REDIS_PASSWORD] {
        let hits: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(hits.is_empty(), "a password appears in the host's log:\n{}", hits.join("\n"));
    }
    assert!(!logs.is_empty(), "the host logged nothing at all");
}

async fn wait_for(oplet: &Oplet, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "waited {WAIT:?} for {what}; host log:\n{}", oplet.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn effects_reach_postgres_and_redis_over_verified_tls_and_no_password_is_logged() {
    let (s, db) = servers().await;
    let mut cache = cache(&s).await;
    for n in 1..=3 {
        let () = redis::cmd("SET").arg(format!("user:{}", oid(n))).arg("cached").query_async(&mut cache).await.unwrap();
    }
    let host = Host::new("");
    std::fs::write(host.config(), std::fs::read_to_string(host.config()).unwrap() + &tls_sinks(&s, host.dir.path(), &s.ca.ca(), "verify-full")).unwrap();
    host.append(&[user_update(1), user_update(2), user_update(3)]);
    let mut oplet = Oplet::start_with_env(&host.config(), &[("OPLET__POSTGRES__PASSWORD", PG_PASSWORD)]);

    wait_for(&oplet, "three rows in users", async || {
        db.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get::<_, i64>(0) == 3
    })
    .await;
    wait_for(&oplet, "the checkpoint after event 3", async || host.checkpoint() == Some(json!(3))).await;
    for n in 1..=3 {
        assert!(!exists(&mut cache, &format!("user:{}", oid(n))).await, "user:{} was not deleted", oid(n));
    }
    // The server itself says the host's session is encrypted and who it is.
    let row = db
        .query_one(
            "SELECT s.ssl, a.usename FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'oplet'",
            &[],
        )
        .await
        .expect("the host's session is listed");
    assert_eq!((row.get::<_, bool>(0), row.get::<_, String>(1)), (true, "app".to_string()));
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut cache).await.unwrap();
    assert!(clients.lines().count() >= 2, "the host holds a connection to the TLS-only Redis: {clients}");

    oplet.terminate().expect("the host stops on SIGTERM");
    assert_no_password_logged(&oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_is_refused_with_an_error_naming_the_sink_and_what_to_fix() {
    let (s, db) = servers().await;
    let mut cache = cache(&s).await;
    let key = format!("user:{}", oid(7));
    let () = redis::cmd("SET").arg(&key).arg("cached").query_async(&mut cache).await.unwrap();
    let host = Host::new("");
    std::fs::write(host.config(), std::fs::read_to_string(host.config()).unwrap() + &tls_sinks(&s, host.dir.path(), &s.ca.other_ca(), "verify-full")).unwrap();
    host.append(&[user_update(7)]);
    let mut oplet = Oplet::start_with_env(&host.config(), &[("OPLET__POSTGRES__PASSWORD", PG_PASSWORD)]);

    let pg_line = oplet.wait_for_log("cannot connect to PostgreSQL", WAIT).await.unwrap();
    assert!(
        pg_line.contains("UnknownIssuer") && pg_line.contains("[postgres.tls] ca_file"),
        "the PostgreSQL error names the failed check and the key to fix: {pg_line}"
    );
    let redis_line = oplet.wait_for_log("cannot connect to Redis", WAIT).await.unwrap();
    assert!(
        redis_line.contains("[redis.tls] ca_file") && !redis_line.contains(REDIS_PASSWORD),
        "the Redis error names the key to fix: {redis_line}"
    );
    // Nothing went through a connection it could not trust, and the event is held.
    let rows: i64 = db.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0);
    assert!(exists(&mut cache, &key).await, "{key} must still be there");
    assert_ne!(host.checkpoint(), Some(json!(1)), "the checkpoint must not pass an event whose effects were not applied");

    oplet.terminate().expect("the host stops on SIGTERM");
    assert_no_password_logged(&oplet);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_config_mistakes_stop_the_start_naming_the_key() {
    let (s, _db) = servers().await;
    let host = Host::new("");
    let base = std::fs::read_to_string(host.config()).unwrap();
    let missing = host.dir.path().join("no-such-ca.pem");
    let not_pem = host.write_file("not-a-cert.pem", "hello\n");
    let cases = [
        (format!("[postgres]\nurl = \"postgres://app@127.0.0.1:{}/postgres\"\n[postgres.tls]\nmode = \"verify-full\"\nca_file = \"{}\"\n", s.pg.port(), missing.display()), "[postgres.tls] ca_file"),
        (format!("[redis]\nurl = \"redis://127.0.0.1:{}/\"\n[redis.tls]\nmode = \"verify-ca\"\nca_file = \"{}\"\n", s.redis.port(), not_pem.display()), "[redis.tls] ca_file"),
        (format!("[redis]\nurl = \"redis://127.0.0.1:{}/\"\n[redis.tls]\nmode = \"verify-full\"\ncert_file = \"{}\"\n", s.redis.port(), s.ca.client_cert().display()), "cert_file and key_file go together"),
        (format!("[redis]\nurl = \"redis://:{REDIS_PASSWORD}@127.0.0.1:{}/\"\npassword_file = \"{}\"\n", s.redis.port(), missing.display()), "[redis] password_file"),
        (format!("[postgres]\nurl = \"postgres://app:{PG_PASSWORD}@127.0.0.1:{}/postgres?sslmode=require\"\n", s.pg.port()), "[postgres.tls] mode"),
        ("[postgres.tls]\nmode = \"verify-everything\"\n".to_string(), "unknown variant `verify-everything`"),
    ];
    for (sinks, expected) in cases {
        std::fs::write(host.config(), format!("{base}{sinks}")).unwrap();
        let mut oplet = Oplet::start(&host.config());
        let status = oplet.wait_exit(WAIT).expect("the host exits on a bad TLS config");
        assert_eq!(status.code(), Some(2), "{sinks}: a config error exits with code 2");
        let logs = oplet.logs();
        assert!(logs.contains(expected), "{sinks}: expected {expected:?} in:\n{logs}");
        assert_no_password_logged(&oplet);
    }
}
