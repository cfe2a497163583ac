//! The MongoDB source over TLS, against a real TLS endpoint: nx-27017 has no TLS, so a
//! TLS-terminating proxy with a test CA's certificate stands in front of it
//! (tests/support/tls_proxy.py). The driver's own TLS options in the URI are what is
//! exercised: a verified CA and a client certificate work end to end (changes reach a
//! plugin, checkpoints are saved); a server certificate from another CA, or no client
//! certificate where one is required, stops the host with exit code 6 and says why.

use oplet_tests::{install_plugin, read_json_lines, temp_dir, Mongo, Oplet, TempDir, TestCa, TlsProxy};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// `HOST:PORT` of the test server, from its URI.
fn address(mongo: &Mongo) -> String {
    let uri = mongo.uri();
    let rest = uri.strip_prefix("mongodb://").expect("a mongodb:// URI");
    rest.split(['/', '?']).next().unwrap().to_string()
}

/// A host folder watching `app.orders` through `uri`, with the `echo` plugin writing
/// one audit record per change.
fn host(uri: &str) -> TempDir {
    let dir = temp_dir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let config = format!(
        r#"state_dir = "state"
[plugins]
dir = "plugins"
[grants."*"]
all_requested = true
[[source]]
type = "mongo"
name = "mongo"
uri = "{uri}"
collections = ["app_tls.orders"]
server_selection_timeout_ms = 3000
"#
    );
    std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
    install_plugin(&plugins, "echo", "name = \"echo\"\n[[subscribe]]\nsources = [\"mongo\"]\n[capabilities]\naudit = true\n");
    dir
}

/// A client PEM with certificate and key in one file, as `tlsCertificateKeyFile` takes it.
fn client_pem(ca: &TestCa) -> std::path::PathBuf {
    let pem = ca.path("client.pem");
    let text = format!("{}{}", std::fs::read_to_string(ca.client_cert()).unwrap(), std::fs::read_to_string(ca.client_key()).unwrap());
    std::fs::write(&pem, text).unwrap();
    pem
}

fn checkpoint_saved(state: &Path) -> bool {
    std::fs::read_dir(state.join("checkpoints")).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("mongo")))
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_arrive_over_verified_tls_with_a_client_certificate() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let ca = TestCa::new();
    let proxy = TlsProxy::start(&ca, &address(&mongo), true);
    let uri = format!(
        "mongodb://127.0.0.1:{}/?directConnection=true&tls=true&tlsCAFile={}&tlsCertificateKeyFile={}",
        proxy.port(),
        ca.ca().display(),
        client_pem(&ca).display()
    );
    let dir = host(&uri);
    let mut oplet = tokio::task::block_in_place(|| Oplet::start(&dir.path().join("oplet.toml")));
    let state = dir.path().join("state");
    // The stream's starting point is saved as soon as it is open.
    oplet.wait_until("the change stream to open over TLS", WAIT, || checkpoint_saved(&state)).await;

    let client = mongo.client().await;
    let orders = client.database("app_tls").collection::<mongodb::bson::Document>("orders");
    for n in 0..5 {
        orders.insert_one(mongodb::bson::doc! { "_id": format!("o{n}"), "n": n }).await.unwrap();
    }
    let audit = state.join("audit.jsonl");
    oplet.wait_until("five audit records", WAIT, || read_json_lines(&audit).len() >= 5).await;
    let records = read_json_lines(&audit);
    for n in 0..5 {
        let id = format!("o{n}");
        assert!(records.iter().any(|r| r.to_string().contains(&id)), "no audit record for {id}: {records:?}");
    }
    let status = oplet.terminate().unwrap();
    assert!(status.success(), "exit {status}:\n{}", oplet.logs());
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_from_another_ca_stops_the_host_with_exit_6() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let ca = TestCa::new();
    let proxy = TlsProxy::start(&ca, &address(&mongo), false);
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true&tls=true&tlsCAFile={}", proxy.port(), ca.other_ca().display());
    let dir = host(&uri);
    let mut oplet = tokio::task::block_in_place(|| Oplet::start(&dir.path().join("oplet.toml")));
    let status = tokio::task::block_in_place(|| oplet.wait_exit(WAIT)).unwrap();
    let logs = oplet.logs();
    assert_eq!(status.code(), Some(6), "a TLS failure is exit 6:\n{logs}");
    eprintln!("[mongo_tls] wrong CA, the host said: {}", logs.lines().last().unwrap_or(""));
    let lower = logs.to_lowercase();
    assert!(lower.contains("tls") && logs.contains("tlsCAFile"), "the error says it is the server's certificate and what to set:\n{logs}");
    assert!(!checkpoint_saved(&dir.path().join("state")), "nothing was streamed");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_client_certificate_where_the_server_requires_one_stops_the_host_with_exit_6() {
    let mongo = tokio::task::block_in_place(Mongo::start);
    let ca = TestCa::new();
    let proxy = TlsProxy::start(&ca, &address(&mongo), true);
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true&tls=true&tlsCAFile={}", proxy.port(), ca.ca().display());
    let dir = host(&uri);
    let mut oplet = tokio::task::block_in_place(|| Oplet::start(&dir.path().join("oplet.toml")));
    let status = tokio::task::block_in_place(|| oplet.wait_exit(WAIT)).unwrap();
    let logs = oplet.logs();
    assert_eq!(status.code(), Some(6), "a refused TLS handshake is exit 6:\n{logs}");
    eprintln!("[mongo_tls] no client certificate, the host said: {}", logs.lines().last().unwrap_or(""));
    assert!(logs.contains("tlsCertificateKeyFile"), "the error says what to set:\n{logs}");
}
