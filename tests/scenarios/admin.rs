//! The admin listener through the real binary: metrics move as events flow
//! (scrape, write, scrape, compare); `/readyz` turns not-ready while the
//! MongoDB-compatible server is down and while PostgreSQL is stopped, naming the
//! part, and ready again when each returns; the status page, rendered by a real
//! headless Chromium, shows a failing plugin's last failure (with a screenshot);
//! JSON logs name the event; SIGTERM mid-burst loses nothing and the next start
//! runs the plugin only on what was not committed (counted through /metrics).

use oplet_tests::{http_get, metric_sample, install_plugin_from, repo_root, wasm_plugins, Mongo, Oplet, Postgres, TempDir};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A host folder with the admin listener on a free port.
struct Host {
    dir: TempDir,
    admin: String,
}

impl Host {
    fn new(rest: &str) -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
        let admin = format!("127.0.0.1:{}", oplet_tests::free_port());
        let config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = 30\n[admin]\nlisten = \"{admin}\"\n[grants.\"*\"]\naudit = true\n{rest}\n"
        );
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        Host { dir, admin }
    }

    fn jsonl(extra: &str) -> Host {
        Host::new(&format!("[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"events.jsonl\"\nfollow = true\n{extra}"))
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn install(&self, name: &str, module: &str) {
        let manifest = format!("name = \"{name}\"\nversion = \"1.2.3\"\n[[subscribe]]\nkind = \"change\"\nnamespaces = [\"app.*\"]\n[capabilities]\naudit = true\n");
        install_plugin_from(&self.path().join("plugins"), name, &wasm_plugins().path(module), &manifest);
    }

    fn append(&self, from: u64, n: u64, fault: Option<&str>) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.path().join("events.jsonl")).unwrap();
        for i in from..from + n {
            let mut doc = serde_json::json!({"_id": format!("u{i}"), "n": i});
            if let Some(fault) = fault {
                doc["fault"] = fault.into();
            }
            let ev = serde_json::json!({"id": format!("e{i}"),
                "body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "users", "key": {"_id": format!("u{i}")}, "full_document": doc}}});
            writeln!(f, "{ev}").unwrap();
        }
    }

    fn audit_lines(&self) -> usize {
        std::fs::read_to_string(self.path().join("state/audit.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path).unwrap_or_else(|e| panic!("GET http://{}{path}: {e}", self.admin))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_events_flow() {
    let host = Host::jsonl("");
    host.install("p", "faulty");
    let oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("admin listener", WAIT).await.unwrap();
    host.append(1, 3, None);
    oplet.wait_until("3 audit records", WAIT, || host.audit_lines() == 3).await;

    let (code, before) = host.get("/metrics");
    assert_eq!(code, 200, "{before}");
    let series = [
        "oplet_events_in_total{source=\"events\"}",
        "oplet_plugin_events_handled_total{plugin=\"p\",version=\"1.2.3\"}",
        "oplet_effects_total{kind=\"audit\",outcome=\"applied\"}",
        "oplet_plugin_call_seconds_count{plugin=\"p\"}",
        "oplet_sink_batch_size_sum{sink=\"audit\"}",
    ];
    for s in series {
        assert_eq!(metric_sample(&before, s), 3.0, "{s} after 3 events:\n{before}");
    }
    assert_eq!(metric_sample(&before, "oplet_reloads_total"), 1.0, "{before}");
    assert!(metric_sample(&before, "oplet_process_resident_memory_bytes") > 1e6, "{before}");

    host.append(4, 7, None);
    host.append(11, 1, Some("error"));
    oplet.wait_until("10 audit records", WAIT, || host.audit_lines() == 10).await;
    oplet.wait_until("the failure dead-lettered", WAIT, || {
        std::fs::read_to_string(host.path().join("state/dead-letters.jsonl")).map(|t| t.lines().count()).unwrap_or(0) == 1
    })
    .await;
    let (_, after) = host.get("/metrics");
    assert_eq!(metric_sample(&after, series[0]), 11.0, "{after}");
    assert_eq!(metric_sample(&after, series[1]), 10.0, "{after}");
    assert_eq!(metric_sample(&after, series[2]), 10.0, "{after}");
    assert_eq!(metric_sample(&after, series[3]), 11.0, "every call is timed, the failed one too:\n{after}");
    assert_eq!(metric_sample(&after, "oplet_plugin_failures_total{plugin=\"p\",cause=\"plugin_error\"}"), 1.0, "{after}");
    assert_eq!(metric_sample(&after, "oplet_dead_letters"), 1.0, "{after}");
    // Every event is done: nothing behind the checkpoint.
    oplet.wait_until("no checkpoint lag", WAIT, || metric_sample(&host.get("/metrics").1, "oplet_checkpoint_lag_events{stream=\"events\"}") == 0.0).await;

    let (code, health) = host.get("/healthz");
    assert_eq!(code, 200, "{health}");
    let (code, ready) = host.get("/readyz");
    assert_eq!(code, 200, "a host with no remote service and nothing degraded is ready: {ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_mongo_while_it_is_down_and_postgres_while_it_is_stopped() {
    let mut mongo = Mongo::start();
    let mut pg = Postgres::start();
    let host = Host::new(&format!(
        "[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"{}\"\ncollections = [\"app.users\"]\nserver_selection_timeout_ms = 1000\n[source.reconnect]\ninitial_ms = 100\nmax_ms = 500\n[postgres]\nurl = \"{}\"\n",
        mongo.uri(),
        pg.url()
    ));
    let oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("admin listener", WAIT).await.unwrap();
    let ready = || host.get("/readyz");
    oplet.wait_until("ready with both up", WAIT, || ready().0 == 200).await;

    mongo.stop();
    oplet.wait_until("not ready while MongoDB is down", WAIT, || ready().0 == 503).await;
    let (_, body) = ready();
    let v: Value = serde_json::from_str(&body).unwrap();
    let failing = v["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{body}");
    assert_eq!(failing[0]["part"], "source:m", "{body}");
    assert!(failing[0]["why"].as_str().unwrap().contains("MongoDB"), "{body}");

    mongo.start_again();
    oplet.wait_until("ready again once MongoDB is back", WAIT, || ready().0 == 200).await;

    pg.stop();
    oplet.wait_until("not ready while PostgreSQL is stopped", WAIT, || ready().0 == 503).await;
    let (_, body) = ready();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["failing"][0]["part"], "sink:postgres", "{body}");
    assert!(v["failing"][0]["why"].as_str().unwrap().contains(&format!("{}", pg.port())), "the port is named: {body}");

    pg.start_again();
    oplet.wait_until("ready again once PostgreSQL is back", WAIT, || ready().0 == 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_speaks_each_sinks_protocol_a_listening_port_is_not_enough() {
    let pg = Postgres::start();
    // PostgreSQL listens but the database does not exist; "Redis" is PostgreSQL's
    // port: both accept a TCP connection, neither can take the sink's writes.
    let wrong_db = format!("postgresql://postgres@127.0.0.1:{}/no_such_db", pg.port());
    let host = Host::jsonl(&format!("[postgres]\nurl = \"{wrong_db}\"\n[redis]\nurl = \"redis://127.0.0.1:{}/\"\ntimeout_ms = 1000\n", pg.port()));
    let oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("admin listener", WAIT).await.unwrap();
    let (code, body) = host.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let why = |part: &str| -> String {
        let f = v["failing"].as_array().unwrap().iter().find(|f| f["part"] == part);
        f.unwrap_or_else(|| panic!("{part} is not named as failing: {body}"))["why"].as_str().unwrap().to_string()
    };
    assert!(why("sink:postgres").contains("no_such_db"), "PostgreSQL's own refusal is shown: {body}");
    assert!(why("sink:redis").contains("Redis"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_not_ready_while_a_quarantined_plugin_holds_its_events() {
    let host = Host::jsonl("[delivery]\nquarantine_after = 2\nquarantine_ms = 600000\non_quarantine = \"hold\"\n");
    host.install("stuckp", "faulty");
    let oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("admin listener", WAIT).await.unwrap();
    host.append(1, 1, None);
    let state = host.path().join("state");
    oplet.wait_until("the first event handled", WAIT, || oplet_tests::plugin_status(&state, "stuckp")["handled"] == 1).await;
    assert_eq!(host.get("/readyz").0, 200, "ready while the plugin is healthy");
    host.append(2, 3, Some("error"));
    oplet.wait_until("the plugin quarantined", WAIT, || oplet_tests::plugin_status(&state, "stuckp")["state"] == "quarantined").await;
    let (code, body) = host.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let f = v["failing"].as_array().unwrap().iter().find(|f| f["part"] == "plugin:stuckp").unwrap_or_else(|| panic!("the plugin is not named: {body}"));
    let why = f["why"].as_str().unwrap();
    assert!(why.contains("quarantined") && why.contains("on_quarantine = \"hold\""), "{body}");
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = std::process::Command::new("which").arg(name).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!("no chromium on PATH: run scripts/setup.sh (apt-get install chromium)");
}

/// Runs headless Chromium with `args` and the URL; returns stdout.
fn run_chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let out = std::process::Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Lets the page's timers and fetches run before the DOM is dumped.
        .arg("--virtual-time-budget=6000")
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_chromium_and_shows_a_plugins_failure() {
    let host = Host::jsonl("");
    host.install("flaky", "faulty");
    let oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("admin listener", WAIT).await.unwrap();
    host.append(1, 2, None);
    host.append(3, 1, Some("error"));
    let status = host.path().join("state/plugins.json");
    oplet.wait_until("the plugin failing", WAIT, || {
        std::fs::read_to_string(&status).is_ok_and(|t| t.contains("\"failing\"") && t.contains("refused on purpose"))
    })
    .await;

    let profile = host.path().join("chromium-profile");
    let url = format!("http://{}/", host.admin);
    let dom = run_chromium(&profile, &["--dump-dom"], &url);
    // The DOM after the page's own fetch of /status.json, not the served HTML.
    assert!(!dom.contains("data-refreshed=\"0\""), "the page never refreshed:\n{dom}");
    let row_start = dom.find("data-plugin=\"flaky\"").unwrap_or_else(|| panic!("no row for the plugin:\n{dom}"));
    let row = &dom[row_start..dom[row_start..].find("</tr>").map(|e| row_start + e).unwrap_or(dom.len())];
    assert!(row.contains("failing"), "state shown: {row}");
    assert!(row.contains("flaky failed on seq 3: plugin error: refused on purpose"), "last failure shown: {row}");
    assert!(row.contains("1.2.3"), "version shown: {row}");
    assert!(dom.contains("refused on purpose"), "the dead letter is listed too");

    let out_dir = repo_root().join("target/test-output/admin");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(&profile, &[&format!("--screenshot={}", shot.display()), "--window-size=1400,900"], &url);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.len() > 10_000 && png.starts_with(b"\x89PNG"), "a real PNG");
    println!("status page screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_plugin_source_seq_and_event_id_of_a_failure() {
    let host = Host::jsonl("");
    host.install("p", "faulty");
    let config = host.path().join("oplet.toml").display().to_string();
    let oplet = Oplet::spawn_args(&["--log-format", "json", "run", "--config", &config], &[], Some(host.path()));
    oplet.wait_for_log("admin listener", WAIT).await.unwrap();
    host.append(1, 1, Some("error"));
    let line = oplet.wait_for_log("plugin failed on event", WAIT).await.unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
    assert_eq!((v["level"].as_str(), v["plugin"].as_str(), v["source"].as_str()), (Some("ERROR"), Some("p"), Some("events")), "{line}");
    assert_eq!((v["seq"].as_u64(), v["event_id"].as_str()), (Some(1), Some("e1")), "{line}");
    assert!(v["message"].as_str().unwrap().contains("refused on purpose"), "{line}");
    // Every line is JSON, not only the ones about events.
    for l in oplet.logs().lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "a log line that is not JSON: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_loses_nothing_and_the_next_start_replays_nothing_committed() {
    let host = Host::jsonl("");
    host.install("p", "faulty");
    let mut oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_for_log("admin listener", WAIT).await.unwrap();
    // A writer appends 20 events every 5 ms while the host is stopped mid-stream.
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, written, stop) = (host.path().to_path_buf(), written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(path.join("events.jsonl")).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let from = written.load(std::sync::atomic::Ordering::SeqCst) + 1;
                let text: String = (from..from + 20)
                    .map(|i| format!("{}\n", serde_json::json!({"id": format!("e{i}"), "body": {"kind": "change", "data": {"op": "insert", "db": "app", "coll": "users", "key": {"_id": i}, "full_document": {"_id": i}}}})))
                    .collect();
                f.write_all(text.as_bytes()).unwrap();
                written.fetch_add(20, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    oplet.wait_until("a few hundred records", WAIT, || host.audit_lines() >= 300).await;
    let status = oplet.terminate().unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop: {}", oplet.logs());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let total = written.load(std::sync::atomic::Ordering::SeqCst);
    let saved = checkpoint_line(host.path());
    assert!(saved >= 300 && saved < total, "stopped mid-burst: checkpoint {saved} of {total}");
    let ids = audited_ids(host.path());
    for i in 1..=saved {
        assert_eq!(ids.get(&format!("e{i}")), Some(&1), "event {i} (checkpointed) has exactly one record");
    }

    // The next start runs the plugin only on what was not committed.
    let oplet = Oplet::start(&host.path().join("oplet.toml"));
    oplet.wait_until("every event checkpointed", WAIT, || checkpoint_line(host.path()) == total).await;
    let (_, metrics) = host.get("/metrics");
    assert_eq!(
        metric_sample(&metrics, "oplet_plugin_events_handled_total{plugin=\"p\",version=\"1.2.3\"}") as u64,
        total - saved,
        "the plugin ran again on committed events:\n{metrics}"
    );
    let ids = audited_ids(host.path());
    assert_eq!(ids.len() as u64, total);
    assert!(ids.values().all(|&n| n == 1), "a record written twice");
}

fn checkpoint_line(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("state/checkpoints/events.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["line"].as_u64())
        .unwrap_or(0)
}

fn audited_ids(dir: &Path) -> std::collections::BTreeMap<String, u32> {
    let mut ids = std::collections::BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap_or_default().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        *ids.entry(v["event_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    ids
}
