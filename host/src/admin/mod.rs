//! The admin listener (`[admin] listen`): what an operator reads at 3 a.m.
//!
//! `GET /metrics` (Prometheus), `GET /healthz` (the process answers and its loops
//! turn), `GET /readyz` (every source's server and every sink reachable, nothing
//! degraded), `GET /status.json` and `GET /` (a self-refreshing status page). It
//! only reads what the host already keeps (health registry, plugins.json, the
//! checkpoint files, the dead-letter store), so it never slows the event path.

pub mod probe;

use crate::config::{Config, SourceConfig};
use crate::deadletter::DeadLetters;
use crate::health::Health;
use crate::source::socket::SocketServer;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `[admin]`: the admin listener. Absent means off (nothing listens).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `127.0.0.1:9464`. Bind to loopback unless a proxy guards it: the status
    /// page names plugins, sources and dead-letter causes.
    pub listen: String,
    /// How long each `/readyz` reachability probe may take.
    #[serde(default = "default_probe_ms")]
    pub probe_timeout_ms: u64,
}

fn default_probe_ms() -> u64 {
    1000
}

impl AdminConfig {
    /// The address, or an error naming the key.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen
            .parse()
            .map_err(|e| anyhow::anyhow!("config key admin.listen: {:?} is not an address like \"127.0.0.1:9464\" ({e})", self.listen))
    }
}

/// What the handlers read.
struct State {
    config: Arc<Config>,
    health: Arc<Health>,
    dead: Arc<DeadLetters>,
    socket: Option<Arc<SocketServer>>,
    probes: probe::Probes,
    started: std::time::Instant,
}

/// The running listener; stops when dropped.
pub struct Admin {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Admin {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Starts the listener when `[admin]` is configured. A taken address is a
/// startup error naming the key.
pub async fn start(config: &Arc<Config>, health: Arc<Health>, dead: Arc<DeadLetters>, socket: Option<Arc<SocketServer>>) -> anyhow::Result<Option<Admin>> {
    let Some(ac) = &config.admin else { return Ok(None) };
    let addr = ac.addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::exit::fatal(crate::exit::Cause::Config, format!("config key admin.listen: cannot listen on {addr}: {e} (another process on that port? choose another address)")))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        config: config.clone(),
        health,
        dead,
        socket,
        probes: probe::Probes::new(config, Duration::from_millis(ac.probe_timeout_ms)),
        started: std::time::Instant::now(),
    });
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status.json", get(status))
        .with_state(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!("admin listener stopped: {e}");
        }
    });
    tracing::info!(%addr, "admin listener: status page http://{addr}/, metrics /metrics, health /healthz and /readyz");
    Ok(Some(Admin { addr, _stop: stop }))
}

type Shared = axum::extract::State<Arc<State>>;

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

async fn metrics(axum::extract::State(s): Shared) -> Response {
    let m = crate::metrics::get();
    m.dead_letters.set(s.dead.count() as i64);
    if let Some(sock) = &s.socket {
        m.socket_clients.set(sock.stats().connected.load(std::sync::atomic::Ordering::Relaxed) as i64);
    }
    if let Some(plugins) = read_plugins(&s.config) {
        for (name, p) in plugins.as_object().into_iter().flatten() {
            let label = crate::metrics::PluginLabel { plugin: name.clone() };
            m.plugin_queue_depth.get_or_create(&label).set(p["queued"].as_i64().unwrap_or(0));
            m.plugin_dead_lettered.get_or_create(&label).set(p["dead_lettered"].as_i64().unwrap_or(0));
            for state in ["healthy", "failing", "quarantined"] {
                let on = p["state"].as_str() == Some(state);
                m.plugin_state.get_or_create(&crate::metrics::PluginStateLabel { plugin: name.clone(), state: state.into() }).set(on as i64);
            }
        }
    }
    let body = m.encode();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// Alive: this answer comes from the async runtime, and the plugin status
/// thread (which rewrites plugins.json every second) still turns.
async fn healthz(axum::extract::State(s): Shared) -> Response {
    let path = s.config.state_dir.join("plugins.json");
    let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
    let (ok, status_thread) = match age {
        Some(a) if a < Duration::from_secs(10) => (true, format!("plugins.json written {:.1} s ago", a.as_secs_f64())),
        Some(a) => (false, format!("plugins.json last written {:.0} s ago: the plugin status thread is stuck", a.as_secs_f64())),
        None if s.started.elapsed() < Duration::from_secs(10) => (true, "starting".to_string()),
        None => (false, format!("{} is missing: the plugin status thread never ran", path.display())),
    };
    let body = json!({"status": if ok { "ok" } else { "stuck" }, "checks": {"runtime": "ok", "status_thread": status_thread}, "uptime_s": s.started.elapsed().as_secs()});
    json_response(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

/// Ready: nothing degraded, the host not stopping, every source's server and
/// every sink reachable. 503 names each failing part and why.
async fn readyz(axum::extract::State(s): Shared) -> Response {
    let (ready, parts) = readiness(&s).await;
    let failing: Vec<&Value> = parts.iter().filter(|p| p["ok"] == false).collect();
    let body = json!({"ready": ready, "failing": failing, "checks": parts});
    json_response(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

async fn readiness(s: &State) -> (bool, Vec<Value>) {
    let mut parts = Vec::new();
    if s.health.is_stopping() {
        parts.push(json!({"part": "host", "ok": false, "why": "shutting down: no longer taking events"}));
    }
    for c in s.health.snapshot() {
        let ok = c.state == crate::health::State::Ok;
        parts.push(json!({"part": c.component, "ok": ok, "why": c.reason, "since_s": c.since.elapsed().map(|d| d.as_secs()).unwrap_or(0)}));
    }
    // With on_quarantine = "hold", a quarantined plugin's events wait, and the
    // checkpoint with them: the host takes nothing further from that point on.
    if s.config.delivery.on_quarantine == crate::config::OnQuarantine::Hold {
        if let Some(Value::Object(plugins)) = read_plugins(&s.config) {
            for (name, p) in plugins {
                if p["state"] == "quarantined" {
                    let why = format!(
                        "quarantined ({}); its events wait, and the checkpoint with them ([delivery] on_quarantine = \"hold\"); next probe in {} ms",
                        p["reason"].as_str().unwrap_or("failing"),
                        p["probe_in_ms"].as_u64().unwrap_or(0)
                    );
                    parts.push(json!({"part": format!("plugin:{name}"), "ok": false, "why": why}));
                }
            }
        }
    }
    for r in s.probes.run().await {
        parts.push(json!({"part": r.part, "ok": r.error.is_none(), "why": r.error.unwrap_or_default(), "target": r.target}));
    }
    let ready = parts.iter().all(|p| p["ok"] == true);
    (ready, parts)
}

async fn status(axum::extract::State(s): Shared) -> Response {
    let (ready, checks) = readiness(&s).await;
    let plugins = read_plugins(&s.config).unwrap_or(json!({}));
    let store = s.config.state_dir.join("checkpoints");
    let lags = crate::metrics::stream_lags();
    let snapshots = crate::metrics::snapshots();
    let sources: Vec<Value> = s
        .config
        .sources
        .iter()
        .map(|sc| {
            let name = sc.name();
            let kind = match sc {
                SourceConfig::Jsonl(_) => "jsonl",
                SourceConfig::Mongo(_) => "mongo",
            };
            let reach = checks.iter().find(|c| c["part"] == format!("source:{name}"));
            let state = match reach {
                Some(c) if c["ok"] == false => format!("unreachable: {}", c["why"].as_str().unwrap_or("")),
                _ => "streaming".to_string(),
            };
            // A MongoDB source saves one checkpoint per stream, named after the source.
            let positions: Vec<Value> = checkpoint_files(&store, name);
            let lag: Vec<Value> = lags
                .iter()
                .filter(|(stream, ..)| stream == name || stream.starts_with(&format!("{name}/")) || stream.starts_with(&format!("{name}:")))
                .map(|(stream, events, secs)| json!({"stream": stream, "events": events, "seconds": secs}))
                .collect();
            // Initial snapshots of this run (`NAME.db.coll`), finished or not.
            let snapshot: Vec<Value> = snapshots
                .iter()
                .filter(|(stream, ..)| stream.starts_with(&format!("{name}.")))
                .map(|(stream, done, total, rate)| json!({"stream": stream, "done": done, "estimated": total, "per_second": rate}))
                .collect();
            json!({"name": name, "type": kind, "state": state, "positions": positions, "lag": lag, "snapshots": snapshot})
        })
        .collect();
    let sinks: Vec<Value> = checks.iter().filter(|c| c["part"].as_str().is_some_and(|p| p.starts_with("sink:"))).cloned().collect();
    let clients = s.socket.as_ref().map(|sock| serde_json::to_value(sock.stats()).unwrap_or(Value::Null));
    let dead_total = crate::dlq::read_store(&s.config.state_dir).map(|l| l.len()).ok();
    let recent: Vec<Value> = crate::dlq::read_store(&s.config.state_dir)
        .map(|letters| letters.iter().rev().take(10).map(|l| json!({"id": l.id, "stage": l.stage, "seq": l.seq, "error": l.error, "time_ms": l.time_ms})).collect())
        .unwrap_or_default();
    let body = json!({
        "time_ms": crate::deadletter::now_ms(),
        "uptime_s": s.started.elapsed().as_secs(),
        "ready": ready,
        "checks": checks,
        "sources": sources,
        "plugins": plugins,
        "sinks": sinks,
        "dead_letters": {"this_run": s.dead.count(), "in_store": dead_total, "recent": recent, "path": s.dead.path()},
        "clients": clients,
        "cluster": crate::cluster::ownership_json(),
    });
    json_response(StatusCode::OK, &body)
}

fn checkpoint_files(store: &std::path::Path, source: &str) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(store) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        let Some(stem) = file.strip_suffix(".json") else { continue };
        if stem == source || stem.starts_with(&format!("{source}.")) || stem.starts_with(&format!("{source}-")) {
            let pos = std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).map(|d| d.as_secs());
            out.push(json!({"checkpoint": stem, "position": pos, "saved_s_ago": age}));
        }
    }
    out
}

/// The `plugins` object of `state_dir/plugins.json`, which the router rewrites.
fn read_plugins(config: &Config) -> Option<Value> {
    let text = std::fs::read(config.state_dir.join("plugins.json")).ok()?;
    let mut v: Value = serde_json::from_slice(&text).ok()?;
    Some(v["plugins"].take())
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
