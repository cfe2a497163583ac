//! Socket.IO for browser apps, end to end: a page served from another origin, in
//! real headless Chromium with the real socket.io-client bundle, connects to the
//! real `oplet` binary through CORS (polling, then the WebSocket upgrade), gets an
//! acknowledgement for its event and receives its `start_client` after a MongoDB
//! write; a page from an origin not in `cors_origins` is refused (polling and
//! WebSocket alike), another namespace is refused with its reason, preflights are
//! answered, and an Engine.IO v3 (Socket.IO v2 client) handshake is refused.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use oplet_tests::{free_port, install_plugin, repo_root, temp_dir, Mongo, Oplet, TempDir};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "browser-secret-0123456789";
const WAIT: Duration = Duration::from_secs(60);

/// A host with the Socket.IO server (`cors_origins` as given), the MongoDB source
/// watching `clients` and the bundled client-start plugin.
struct Host {
    _dir: TempDir,
    port: u16,
    oplet: Oplet,
    clients: mongodb::Collection<Document>,
    _mongo: Mongo,
}

impl Host {
    async fn start(cors_origins: &[String]) -> Host {
        let mongo = Mongo::start();
        let db = format!("browser_{}_{}", std::process::id(), free_port());
        let clients = mongo.client().await.database(&db).collection::<Document>("clients");
        let dir = temp_dir();
        let port = free_port();
        let manifest = std::fs::read_to_string(repo_root().join("plugins/client-start/client-start.toml")).unwrap();
        install_plugin(&dir.path().join("plugins"), "client-start", &manifest.replace("\"app.clients\"", &format!("\"{db}.clients\"")));
        let origins: Vec<String> = cors_origins.iter().map(|o| format!("{o:?}")).collect();
        let config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[delivery]\ncheckpoint_interval_ms = 10\n\
             [grants.\"*\"]\nemit = [\"start_client\"]\n\
             [[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{}\"\ncollections = [\"{db}.clients\"]\n\
             full_document = \"updateLookup\"\n\
             [socket]\nlisten = \"127.0.0.1:{port}\"\nsecret = \"{SECRET}\"\ncors_origins = [{}]\n",
            mongo.uri(),
            origins.join(", ")
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        let oplet = Oplet::start(&dir.path().join("oplet.toml"));
        oplet.wait_for_log("socket: listening on", WAIT).await.unwrap();
        oplet.wait_for_log("watching the change stream", WAIT).await.unwrap();
        Host { _dir: dir, port, oplet, clients, _mongo: mongo }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn stats(&self) -> Value {
        let (status, _, body) = http(self.port, "GET /socket/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats body {body:?}: {e}"))
    }
}

/// One raw HTTP/1.1 exchange: status, headers (lowercase names), body.
async fn http(port: u16, request: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// `python3 -m http.server` serving the test page and the socket.io-client bundle
/// on its own port (so its own origin); its request log is how the page reports.
struct PageServer {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl PageServer {
    fn start() -> PageServer {
        let dir = temp_dir();
        let support = repo_root().join("tests/support/browser");
        let bundle = support.join("node_modules/socket.io-client/dist/socket.io.min.js");
        assert!(bundle.exists(), "{} is missing: run scripts/setup.sh (npm ci in tests/support/browser)", bundle.display());
        std::fs::copy(&bundle, dir.path().join("socket.io.min.js")).unwrap();
        std::fs::copy(support.join("page.html"), dir.path().join("page.html")).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("requests.log")).unwrap();
        let child = Command::new("python3")
            .args(["-u", "-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn python3 -m http.server");
        let server = PageServer { child, dir, port };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the page server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The page's address, asking it to connect to `url` as `uuid`.
    fn page(&self, url: &str, uuid: &str, transports: Option<&str>) -> String {
        let token = oplet::source::socket::auth::hmac_hex(SECRET.as_bytes(), uuid);
        let mut page = format!("{}/page.html?url={}&uuid={uuid}&token={token}", self.origin(), encode(url));
        if let Some(t) = transports {
            page.push_str(&format!("&transports={t}"));
        }
        page
    }

    /// What the pages reported, in order: (event, fields).
    fn reports(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let log = std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split_once("\"GET /report?")?.1.split_once(" HTTP/").map(|(q, _)| q.to_string()))
            .map(|q| {
                let fields: BTreeMap<String, String> =
                    q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect();
                (fields.get("event").cloned().unwrap_or_default(), fields)
            })
            .collect()
    }

    /// Waits for a report of `event` and returns its fields.
    async fn wait_for(&self, event: &str, oplet: &Oplet) -> BTreeMap<String, String> {
        let start = Instant::now();
        loop {
            if let Some((_, f)) = self.reports().into_iter().find(|(e, _)| e == event) {
                return f;
            }
            assert!(
                start.elapsed() < WAIT,
                "the page never reported {event:?}; it reported {:?}; host log:\n{}",
                self.reports(),
                oplet.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium showing one page until dropped.
struct Browser {
    child: Child,
    _profile: TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = temp_dir();
        let child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromium (apt-get install -y chromium; scripts/setup.sh installs it)");
        Browser { child, _profile: profile }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// URLSearchParams' encoding back to text (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_on_a_listed_origin_connects_through_cors_and_receives_its_start_client() {
    let pages = PageServer::start();
    let host = Host::start(&[pages.origin()]).await;

    // The preflight a browser sends before a non-simple request is answered for the
    // listed origin, and refused for another.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"
        )
    };
    let (status, headers, body) = http(host.port, &preflight(&pages.origin())).await;
    assert_eq!(status, 200, "preflight from the listed origin: {headers:?} {body}");
    assert_eq!(headers.get("access-control-allow-origin"), Some(&pages.origin()));
    assert!(headers.get("access-control-allow-methods").is_some_and(|m| m.contains("POST")), "{headers:?}");
    let (status, _, body) = http(host.port, &preflight("http://evil.example")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cors_origins"), "the refusal says which key: {body}");

    let _browser = Browser::open(&pages.page(&host.url(), "browser-1", None));
    // Opened with long polling (cross-origin XHR, the part CORS governs); by the
    // `connect` event it may already have upgraded, so that is not asked.
    let open = pages.wait_for("open", &host.oplet).await;
    assert_eq!(open["transport"], "polling", "socket.io-client opens with long polling: {open:?}");
    let connect = pages.wait_for("connect", &host.oplet).await;
    assert!(["polling", "websocket"].contains(&connect["transport"].as_str()), "{connect:?}");
    let upgrade = pages.wait_for("upgrade", &host.oplet).await;
    assert_eq!(upgrade["transport"], "websocket", "the WebSocket upgrade from the listed origin passes: {upgrade:?}");
    let ack = pages.wait_for("ack", &host.oplet).await;
    assert_eq!(serde_json::from_str::<Value>(&ack["reply"]).unwrap(), json!({"ok": true}), "{ack:?}");

    // The client-start flow: the flag turns true in MongoDB, the page gets its start.
    host.clients
        .update_one(doc! {"_id": "b1"}, doc! {"$set": {"connection": true, "uuid": "browser-1", "key": "k-browser"}})
        .upsert(true)
        .await
        .unwrap();
    let start = pages.wait_for("start_client", &host.oplet).await;
    let payload: Value = serde_json::from_str(&start["payload"]).unwrap();
    assert_eq!((payload["uuid"].clone(), payload["key"].clone()), (json!("browser-1"), json!("k-browser")), "{payload}");

    // Another namespace is refused with its reason, logged and counted.
    let _other = Browser::open(&pages.page(&format!("{}/admin", host.url()), "browser-2", None));
    let refused = pages.wait_for("connect_error", &host.oplet).await;
    assert!(refused["message"].contains("namespace refused"), "{refused:?}");
    let stats = host.stats().await;
    assert_eq!(stats["refused_namespaces"], json!(1), "{stats}");
    assert_eq!(stats["refused_origins"], json!(1), "only the evil preflight was refused: {stats}");
    assert!(host.oplet.logs().contains("namespace \"/admin\" refused"), "{}", host.oplet.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_from_an_origin_not_listed_is_refused_by_polling_and_by_websocket() {
    let listed = PageServer::start();
    let other = PageServer::start();
    let host = Host::start(&[listed.origin()]).await;

    let _polling = Browser::open(&other.page(&host.url(), "intruder-1", None));
    let err = other.wait_for("connect_error", &host.oplet).await;
    assert!(!err["message"].is_empty(), "{err:?}");
    let _ws = Browser::open(&other.page(&host.url(), "intruder-2", Some("websocket")));
    let start = Instant::now();
    while other.reports().iter().filter(|(e, _)| e == "connect_error").count() < 2 {
        assert!(start.elapsed() < WAIT, "the websocket-only page never reported its refusal: {:?}", other.reports());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!other.reports().iter().any(|(e, _)| e == "connect"), "{:?}", other.reports());
    host.oplet.wait_for_log("WebSocket upgrade from origin", WAIT).await.unwrap();
    let stats = host.stats().await;
    assert!(stats["refused_origins"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["connects"], json!(0), "{stats}");
    let line = host.oplet.wait_for_log("not in [socket] cors_origins", WAIT).await.unwrap();
    assert!(line.contains(&other.origin()), "the log names the refused origin: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_io_v3_handshake_from_a_socket_io_v2_client_is_refused() {
    let host = Host::start(&[]).await;
    let (status, _, body) = http(host.port, "GET /socket.io/?EIO=3&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "EIO=3 (Socket.IO v2 clients) must be refused: {body}");
    let (status, _, body) = http(host.port, "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200, "EIO=4 (Socket.IO v3/v4 clients) is served: {body}");
    assert!(body.starts_with("0{") && body.contains("\"sid\""), "an Engine.IO v4 open packet: {body}");
    // With no cors_origins, a browser's request (it carries Origin) is refused.
    let (status, _, body) = http(
        host.port,
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: http://127.0.0.1:1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403, "{body}");
}
