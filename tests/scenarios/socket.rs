//! The Socket.IO server end to end: real python-socketio clients (through
//! `tests/support/sio_clients.py`) against the real `oplet` binary. Client events
//! reach plugins, plugin emits reach the right client and only it, bad auth is
//! refused with its reason, and the client-start flow replaces the polling loop,
//! across a host restart too. Changes are real writes to a MongoDB-compatible
//! server (nx-27017, or `OPLET_TEST_MONGODB_URI`) that the host watches.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mongodb::bson::{doc, Document};
use mongodb::Collection;
use oplet_tests::{free_port, install_plugin, repo_root, temp_dir, Mongo, Oplet, TempDir};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// A host with a Socket.IO server, the MongoDB source watching a `clients`
/// collection, the bundled client-start plugin and an echo plugin.
struct Host {
    dir: TempDir,
    port: u16,
    oplet: Option<Oplet>,
    clients: Collection<Document>,
    _mongo: Mongo,
}

impl Host {
    /// `socket_extra` is appended to the `[socket]` section.
    async fn start(socket_extra: &str) -> Host {
        let mongo = Mongo::start();
        // A database of its own, in case the server is a shared one (OPLET_TEST_MONGODB_URI).
        let db = format!("app_{}_{}", std::process::id(), free_port());
        let clients = mongo.client().await.database(&db).collection::<Document>("clients");
        let dir = temp_dir();
        let port = free_port();
        let plugins = dir.path().join("plugins");
        let echo = "name = \"socket-echo\"\n[[subscribe]]\nkind = \"socket\"\nevents = [\"ping\"]\n\
                    [capabilities]\nemit = [\"echo\"]\n";
        install_plugin(&plugins, "socket-echo", echo);
        let manifest = std::fs::read_to_string(repo_root().join("plugins/client-start/client-start.toml")).unwrap();
        install_plugin(&plugins, "client-start", &manifest.replace("\"app.clients\"", &format!("\"{db}.clients\"")));
        let config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[delivery]\ncheckpoint_interval_ms = 10\n\
             [grants.\"*\"]\nemit = [\"echo\", \"start_client\"]\n\
             [[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{}\"\ncollections = [\"{db}.clients\"]\n\
             full_document = \"updateLookup\"\n\
             [socket]\nlisten = \"127.0.0.1:{port}\"\nsecret = \"{SECRET}\"\n{socket_extra}\n",
            mongo.uri()
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        let mut host = Host { dir, port, oplet: None, clients, _mongo: mongo };
        host.run().await;
        host
    }

    async fn run(&mut self) {
        let oplet = Oplet::start(&self.dir.path().join("oplet.toml"));
        oplet.wait_for_log("plugin(s) loaded", WAIT).await.unwrap();
        oplet.wait_for_log("socket: listening on", WAIT).await.unwrap();
        // Writes before the stream is open would not be seen (no checkpoint yet).
        oplet.wait_for_log("watching the change stream", WAIT).await.unwrap();
        self.oplet = Some(oplet);
    }

    fn oplet(&self) -> &Oplet {
        self.oplet.as_ref().expect("host running")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes client `n`'s document to MongoDB with `connection` set to `on`: an
    /// insert the first time, an update after.
    async fn flag(&self, n: usize, on: bool) {
        self.clients
            .update_one(doc! { "_id": format!("id-{n}") }, doc! { "$set": { "connection": on, "uuid": uuid(n), "key": key(n) } })
            .upsert(true)
            .await
            .unwrap();
    }

    async fn stats(&self) -> Value {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /socket/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("stats body {body:?}: {e}"))
    }
}

fn uuid(n: usize) -> String {
    format!("client-{n:04}")
}
fn key(n: usize) -> String {
    format!("key-{n}-{}", n * 7919 % 1000)
}

/// python-socketio clients in one subprocess; every line it prints is kept.
struct Clients {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
    _spec: TempDir,
}

impl Clients {
    fn start(url: &str, specs: &[Value]) -> Clients {
        let python = std::env::var("OPLET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = Command::new(&python).args(["-c", "import socketio, aiohttp"]).status().is_ok_and(|s| s.success());
        assert!(ok, "`{python}` cannot import socketio and aiohttp: run `bash scripts/setup.sh` (pip install python-socketio aiohttp)");
        let spec = temp_dir();
        let spec_path = spec.path().join("clients.json");
        std::fs::write(&spec_path, serde_json::to_vec(specs).unwrap()).unwrap();
        let script = repo_root().join("tests/support/sio_clients.py");
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(script)
            .arg(url)
            .arg(&spec_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sio_clients.py");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(_) => eprintln!("[sio_clients] {line}"),
                }
            }
        });
        let stdin = child.stdin.take();
        Clients { child, stdin, lines, _spec: spec }
    }

    /// The specs of `n` clients that authenticate with the shared secret.
    fn signed(range: std::ops::Range<usize>) -> Vec<Value> {
        range.map(|n| json!({"uuid": uuid(n), "secret": SECRET})).collect()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.lines.lock().unwrap()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}; client lines: {:?}", self.tail(20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ready(&self) -> Value {
        self.wait_for("ready", |l| l.iter().any(|v| v["type"] == "ready"), WAIT).await.unwrap();
        self.lines.lock().unwrap().iter().find(|v| v["type"] == "ready").cloned().unwrap()
    }

    fn emit(&mut self, uuid: &str, event: &str, data: Value) {
        let cmd = json!({"op": "emit", "uuid": uuid, "event": event, "data": data});
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// Every received event, as (receiving uuid, event name, data).
    fn events(&self) -> Vec<(String, String, Value)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "event")
            .map(|v| (v["uuid"].as_str().unwrap().to_string(), v["event"].as_str().unwrap().to_string(), v["data"].clone()))
            .collect()
    }

    fn tail(&self, n: usize) -> Vec<Value> {
        let l = self.lines.lock().unwrap();
        l[l.len().saturating_sub(n)..].to_vec()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits a little longer for anything unexpected (a duplicate, a stray emit).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// start_client events per receiving uuid, each checked to be for that client.
fn starts(clients: &Clients) -> BTreeMap<String, Vec<Value>> {
    let mut by = BTreeMap::<String, Vec<Value>>::new();
    for (to, event, data) in clients.events() {
        assert_eq!(event, "start_client", "unexpected event to {to}: {data}");
        assert_eq!(data["uuid"], json!(to), "{to} received another client's start: {data}");
        by.entry(to).or_default().push(data);
    }
    by
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_valid_auth_is_refused_with_the_reason() {
    let host = Host::start("[socket.tokens]\nlisted = \"listed-token\"\n").await;
    let specs = vec![
        json!({"uuid": "no-auth", "auth": null}),
        json!({"uuid": "not-a-map", "auth": "hello"}),
        json!({"uuid": "no-token", "auth": {"uuid": "no-token"}}),
        json!({"uuid": "bad uuid!", "auth": {"uuid": "bad uuid!", "token": "x"}}),
        json!({"uuid": "wrong", "token": "not-the-hmac"}),
        // Another client's valid token does not prove this identity.
        json!({"uuid": "thief", "token": "listed-token"}),
        json!({"uuid": "listed", "token": "listed-token"}),
        json!({"uuid": uuid(1), "secret": SECRET}),
    ];
    let clients = Clients::start(&host.url(), &specs);
    assert_eq!(clients.ready().await, json!({"type": "ready", "connected": 2, "failed": 6}));
    let refusals: BTreeMap<String, String> = clients
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "connect_error")
        .map(|v| (v["uuid"].as_str().unwrap().to_string(), v["message"].as_str().unwrap().to_string()))
        .collect();
    let expected: BTreeMap<String, String> = [
        ("no-auth", r#"auth required: connect with auth={"uuid": "<your id>", "token": "<your token>"}"#),
        ("not-a-map", r#"auth is malformed: got a string; expected {"uuid": string, "token": string}"#),
        ("no-token", r#"auth is malformed: `token` is missing; expected {"uuid": string, "token": string}"#),
        ("bad uuid!", r#"uuid "bad uuid!" is not valid: use 1 to 128 letters, digits, '-', '_', '.' or ':'"#),
        ("wrong", r#"invalid token for uuid "wrong""#),
        ("thief", r#"invalid token for uuid "thief""#),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(refusals, expected);
    host.oplet().wait_for_log(r#"socket: connection refused: invalid token for uuid "thief""#, WAIT).await.unwrap();
    assert_eq!(host.stats().await["refused_connects"], json!(6));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_events_reach_a_plugin_and_its_emit_reaches_only_that_client() {
    let host = Host::start("").await;
    let mut clients = Clients::start(&host.url(), &Clients::signed(0..3));
    assert_eq!(clients.ready().await["connected"], json!(3));
    clients.emit(&uuid(0), "ping", json!({"n": 1, "text": "héllo"}));
    clients.wait_for("an echo", |l| l.iter().any(|v| v["type"] == "event"), WAIT).await.unwrap();
    // Client 1 asks the plugin to emit to client 2: only client 2 gets it.
    clients.emit(&uuid(1), "ping", json!({"to_client": uuid(2)}));
    clients.wait_for("two echoes", |l| l.iter().filter(|v| v["type"] == "event").count() == 2, WAIT).await.unwrap();
    settle().await;
    let events = clients.events();
    assert_eq!(
        events,
        vec![
            (uuid(0), "echo".into(), json!({"client": uuid(0), "event": "ping", "payload": {"n": 1, "text": "héllo"}})),
            (uuid(2), "echo".into(), json!({"client": uuid(1), "event": "ping", "payload": {"to_client": uuid(2)}})),
        ]
    );
    let stats = host.stats().await;
    assert_eq!((stats["events_in"].clone(), stats["emitted"].clone()), (json!(2), json!(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_tries_to_join_another_room_gets_nothing() {
    let host = Host::start("[socket.rooms]\nops = [\"client-0002\"]\n").await;
    let mut clients = Clients::start(&host.url(), &Clients::signed(0..3));
    assert_eq!(clients.ready().await["connected"], json!(3));
    // The classic ways to ask a Socket.IO server for a room: none is honoured.
    for (event, data) in [
        ("join", json!(uuid(1))),
        ("join", json!("client:client-0001")),
        ("join_room", json!({"room": "ops"})),
        ("subscribe", json!(["client:client-0001", "room:ops"])),
    ] {
        clients.emit(&uuid(0), event, data);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Client 2 sends to client 1 and to room `ops` (client 2 alone is a member).
    clients.emit(&uuid(2), "ping", json!({"to_client": uuid(1)}));
    clients.emit(&uuid(2), "ping", json!({"to_room": "ops"}));
    clients.wait_for("two echoes", |l| l.iter().filter(|v| v["type"] == "event").count() >= 2, WAIT).await.unwrap();
    settle().await;
    // Two sockets: the order in which they receive is not defined.
    let mut receivers: Vec<String> = clients.events().into_iter().map(|(to, _, _)| to).collect();
    receivers.sort();
    assert_eq!(receivers, vec![uuid(1), uuid(2)], "client 0 must receive nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_clients_each_get_exactly_their_own_start_client() {
    let host = Host::start("").await;
    let clients = Clients::start(&host.url(), &Clients::signed(0..100));
    assert_eq!(clients.ready().await, json!({"type": "ready", "connected": 100, "failed": 0}));
    for n in 0..100 {
        host.flag(n, false).await;
    }
    for n in 0..100 {
        host.flag(n, true).await;
    }
    clients.wait_for("100 start_client", |l| l.iter().filter(|v| v["type"] == "event").count() >= 100, WAIT).await.unwrap();
    settle().await;
    let by = starts(&clients);
    assert_eq!(by.len(), 100, "every client got a start");
    for n in 0..100 {
        assert_eq!(by[&uuid(n)], vec![json!({"uuid": uuid(n), "key": key(n)})], "client {n}");
    }
    let stats = host.stats().await;
    assert_eq!((stats["emitted"].clone(), stats["dropped"].clone()), (json!(100), json!(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emit_to_an_offline_client_is_held_until_it_connects() {
    let host = Host::start("hold_ms = 60000\n").await;
    host.flag(7, true).await;
    // The client is not connected yet: the emit waits for it.
    let deadline = Instant::now() + WAIT;
    while host.stats().await["held"] != json!(1) {
        assert!(Instant::now() < deadline, "the emit was not held: {}", host.stats().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clients = Clients::start(&host.url(), &Clients::signed(7..8));
    clients.wait_for("the held start", |l| l.iter().any(|v| v["type"] == "event"), WAIT).await.unwrap();
    settle().await;
    assert_eq!(starts(&clients)[&uuid(7)], vec![json!({"uuid": uuid(7), "key": key(7)})]);
    assert_eq!((host.stats().await["held"].clone(), host.stats().await["dropped"].clone()), (json!(1), json!(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_offline_drop_an_emit_to_an_offline_client_is_logged_and_counted() {
    let host = Host::start("offline = \"drop\"\n").await;
    host.flag(3, true).await;
    let line = host.oplet().wait_for_log("socket: emit \"start_client\" dropped", WAIT).await.unwrap();
    assert!(line.contains(r#"client:client-0003 is offline (offline = "drop")"#), "{line}");
    assert!(line.contains("plugin=client-start"), "{line}");
    let clients = Clients::start(&host.url(), &Clients::signed(3..4));
    clients.ready().await;
    settle().await;
    assert!(clients.events().is_empty(), "a dropped emit was delivered: {:?}", clients.events());
    assert_eq!(host.stats().await["dropped"], json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_payload_closes_only_that_connection() {
    let host = Host::start("max_payload_kb = 16\n").await;
    let mut clients = Clients::start(&host.url(), &Clients::signed(0..2));
    assert_eq!(clients.ready().await["connected"], json!(2));
    clients.emit(&uuid(0), "ping", json!({"blob": "x".repeat(64 * 1024)}));
    clients.wait_for("client 0 cut off", |l| l.iter().any(|v| v["type"] == "disconnected"), WAIT).await.unwrap();
    clients.emit(&uuid(1), "ping", json!({"n": 2}));
    clients.wait_for("client 1's echo", |l| l.iter().any(|v| v["type"] == "event"), WAIT).await.unwrap();
    let events = clients.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, uuid(1));
    let line = host.oplet().wait_for_log("socket: client cut off", WAIT).await.unwrap();
    assert!(line.contains("client=client-0000"), "{line}");
    assert!(host.oplet().is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_host_restart_clients_reconnect_and_no_start_is_lost() {
    let mut host = Host::start("").await;
    for n in 0..20 {
        host.flag(n, false).await;
    }
    let clients = Clients::start(&host.url(), &Clients::signed(0..20));
    assert_eq!(clients.ready().await["connected"], json!(20));
    for n in 0..10 {
        host.flag(n, true).await;
    }
    clients.wait_for("10 starts", |l| l.iter().filter(|v| v["type"] == "event").count() >= 10, WAIT).await.unwrap();
    settle().await; // lets the checkpoint cover them

    let status = host.oplet.as_mut().unwrap().terminate().unwrap();
    assert!(status.success(), "oplet exited with {status}");
    host.oplet = None;
    clients.wait_for("20 disconnects", |l| l.iter().filter(|v| v["type"] == "disconnected").count() >= 20, WAIT).await.unwrap();
    // While the host is down, the other ten flags turn true in MongoDB.
    for n in 10..20 {
        host.flag(n, true).await;
    }
    host.run().await;
    clients
        .wait_for("20 reconnects", |l| l.iter().filter(|v| v["type"] == "connected" && v["n"] == 2).count() >= 20, WAIT)
        .await
        .unwrap();
    clients.wait_for("20 starts", |l| l.iter().filter(|v| v["type"] == "event").count() >= 20, WAIT).await.unwrap();
    settle().await;
    let by = starts(&clients);
    for n in 0..20 {
        assert_eq!(by.get(&uuid(n)).map(Vec::len), Some(1), "client {n}: {:?}", by.get(&uuid(n)));
        assert_eq!(by[&uuid(n)][0]["key"], json!(key(n)));
    }
    // While the host was down, reconnect attempts failed (connection refused);
    // none was refused for its auth.
    let auth_refusals: Vec<Value> = clients
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "connect_error" && v["message"].as_str().is_some_and(|m| m.contains("token") || m.contains("auth")))
        .cloned()
        .collect();
    assert!(auth_refusals.is_empty(), "{auth_refusals:?}");
}
