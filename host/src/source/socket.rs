//! The Socket.IO server (socketioxide on axum): client events in, emits out.
//!
//! `host::run` starts it; connecting clients prove their `uuid` (see `auth`) and
//! are put in their own room, and nothing a client sends can change its rooms.
//! Each client event becomes an `Event` with a ticket, in the client's order; a
//! flooding client only fills its own small queue. Plugin workers call `emit`;
//! one emitter task sends to the room, or holds per `offline`, and releases the
//! ticket only then. An emit it cannot deliver (offline with `offline = "drop"`,
//! held past `hold_ms` or `hold_max`, a failed send) is dead-lettered with the
//! cause before its ticket goes. Held emits still pending at shutdown keep their
//! tickets, so the checkpoint stays before them and a restart replays them.

pub mod auth;
mod holds;
mod origins;

use crate::checkpoint::{Ticket, Tracker};
use crate::deadletter::{now_ms, DeadLetters};
use crate::envelope::Envelope;
use auth::Authenticator;
use holds::Holds;
use crate::envelope::Event;
use oplet_sdk::{EmitTarget, EventBody, SocketEvent, Value};
use serde::{Deserialize, Serialize};
use socketioxide::extract::{AckSender, Event as EventName, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use socketioxide::SocketIo;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A client event's data: its first argument, or nil when it has none (`emit("ready")`,
/// docs/abi.md §7.3). Read as a tuple, so socketioxide hands over the whole argument
/// list: asked for a plain `Value`, it refuses an event without data.
struct FirstArg(Value);

impl<'de> Deserialize<'de> for FirstArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Args;
        impl<'de> serde::de::Visitor<'de> for Args {
            type Value = FirstArg;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the event's arguments")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FirstArg, A::Error> {
                let first = seq.next_element::<Value>()?.unwrap_or(Value::Null);
                // Later arguments are not part of the event (§7.3): read past them.
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstArg(first))
            }
        }
        d.deserialize_tuple(usize::MAX, Args)
    }
}

/// `[socket]` in the host config. Every key is documented in docs/socket.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    /// Source name client events carry (default `socket`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Address to listen on, e.g. `127.0.0.1:3000` (`0.0.0.0:3000` for every interface).
    pub listen: String,
    /// Shared secret: a client's token is the hex HMAC-SHA256 of its uuid under it.
    #[serde(default)]
    pub secret: Option<crate::effect::secrets::Secret>,
    /// A file whose first line is the secret (a mounted secret), instead of `secret`.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Browser origins (`https://app.example.com`, scheme and port as the browser
    /// sends them) whose pages may connect: CORS answers for them, and a request
    /// (polling or WebSocket upgrade) from any other origin is refused with 403.
    /// `["*"]`: every origin. Empty (default): no browser page may connect;
    /// clients that send no `Origin` (servers, apps) are not affected.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Per-client tokens, uuid → token (checked before `secret`).
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
    /// Named rooms, room → member uuids (`"*"`: every client). Clients are put in
    /// them on connect; they cannot join or leave rooms themselves.
    #[serde(default)]
    pub rooms: BTreeMap<String, Vec<String>>,
    /// What an emit to a client (or room) with no connected socket does.
    #[serde(default)]
    pub offline: Offline,
    /// How long a held emit waits for its client before it is dropped (and logged).
    #[serde(default = "default_hold_ms")]
    pub hold_ms: u64,
    /// Held emits at most, over all clients; past it new ones are dropped (and logged).
    #[serde(default = "default_hold_max")]
    pub hold_max: usize,
    /// Largest message a client may send, in KiB (larger ones close its connection).
    #[serde(default = "default_max_payload_kb")]
    pub max_payload_kb: u64,
    /// Events one client may have waiting to enter the host; past it its events
    /// are refused (logged, counted) until the host catches up.
    #[serde(default = "default_client_queue")]
    pub client_queue: usize,
}

fn default_name() -> String {
    "socket".into()
}
fn default_hold_ms() -> u64 {
    30_000
}
fn default_hold_max() -> usize {
    10_000
}
fn default_max_payload_kb() -> u64 {
    64
}
fn default_client_queue() -> usize {
    64
}

/// `offline = "hold"` (default) or `"drop"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offline {
    #[default]
    Hold,
    Drop,
}

/// Longest event name a client may send.
const MAX_EVENT_NAME: usize = 128;

/// The room of one client, apart from named rooms so neither can reach the other.
pub fn client_room(uuid: &str) -> String {
    format!("client:{uuid}")
}

fn named_room(name: &str) -> String {
    format!("room:{name}")
}

/// Counters, served as JSON at `GET /socket/stats` and logged at shutdown.
#[derive(Debug, Default, Serialize)]
pub struct SocketStats {
    pub connected: AtomicU64,
    /// Requests refused because their `Origin` is not in `cors_origins`.
    pub refused_origins: AtomicU64,
    /// Connections to a namespace other than `/`, refused.
    pub refused_namespaces: AtomicU64,
    pub connects: AtomicU64,
    pub refused_connects: AtomicU64,
    pub events_in: AtomicU64,
    pub events_refused: AtomicU64,
    pub emitted: AtomicU64,
    pub held: AtomicU64,
    pub dropped: AtomicU64,
}

fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// One emit on its way to a room; the ticket is released when this is dropped.
struct EmitJob {
    plugin: String,
    cause: Arc<Event>,
    room: String,
    name: String,
    payload: Value,
    _ticket: Ticket,
}

enum Cmd {
    Emit(EmitJob),
    /// A socket joined these rooms: send what is held for them.
    Online(Vec<String>),
    Shutdown(oneshot::Sender<()>),
}

/// What the connection handlers share.
struct Shared {
    source: String,
    /// Taken when the host shuts down: no client events after that.
    tx: RwLock<Option<mpsc::Sender<Envelope>>>,
    tracker: Arc<Tracker>,
    seq: AtomicU64,
    /// Start time, so event ids differ between runs.
    boot: i64,
    auth: Authenticator,
    rooms: BTreeMap<String, Vec<String>>,
    client_queue: usize,
    stats: Arc<SocketStats>,
    cmds: mpsc::Sender<Cmd>,
}

/// The running server: a source of client events and the executor of emits.
pub struct SocketServer {
    cmds: mpsc::Sender<Cmd>,
    runtime: tokio::runtime::Handle,
    stats: Arc<SocketStats>,
    stop_http: Mutex<Option<oneshot::Sender<()>>>,
    http: Mutex<Option<tokio::task::JoinHandle<()>>>,
    emitter: Mutex<Option<tokio::task::JoinHandle<()>>>,
    addr: std::net::SocketAddr,
}

impl SocketServer {
    /// Binds and serves. Client events go to `ctx.tx` with tickets from an
    /// unreplayable tracker (a client event cannot be read again). Emits that
    /// cannot be delivered go to the dead letters with their cause. Started by
    /// the host rather than as a `Source` task: it is the emit executor too.
    pub async fn start(cfg: &SocketConfig, ctx: super::SourceContext) -> anyhow::Result<Arc<SocketServer>> {
        let dead = ctx.dead_letters().clone();
        let secret = crate::effect::secrets::password("socket", cfg.secret.as_ref(), cfg.secret_file.as_deref())
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("password", "secret")))?;
        let origins = origins::Origins::new(&cfg.cors_origins)?;
        let auth = Authenticator::new(secret.as_ref().map(|s| s.expose()), &cfg.tokens);
        if !auth.is_configured() {
            anyhow::bail!(
                "[socket] has no way to authenticate clients: set `secret` (tokens are HMAC-SHA256 of the uuid) \
                 or list tokens in [socket.tokens]"
            );
        }
        if secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            anyhow::bail!("[socket] secret is shorter than 16 bytes; use a long random value (e.g. `openssl rand -hex 32`)");
        }
        if cfg.client_queue == 0 || cfg.max_payload_kb == 0 {
            anyhow::bail!("[socket] client_queue and max_payload_kb must be at least 1");
        }
        let stats = Arc::new(SocketStats::default());
        let (cmds, cmd_rx) = mpsc::channel(1024);
        let max_payload = cfg.max_payload_kb * 1024;
        let (layer, io) = SocketIo::builder()
            .max_payload(max_payload)
            .max_buffer_size(1024)
            .ws_max_message_size(max_payload as usize)
            .ws_max_frame_size(max_payload as usize)
            .build_layer();
        let shared = Arc::new(Shared {
            source: cfg.name.clone(),
            tracker: ctx.unreplayable(&cfg.name),
            tx: RwLock::new(Some(ctx.tx.clone())),
            seq: AtomicU64::new(1),
            boot: now_ms(),
            auth,
            rooms: cfg.rooms.clone(),
            client_queue: cfg.client_queue,
            stats: stats.clone(),
            cmds: cmds.clone(),
        });
        register(&io, shared.clone());
        refuse_other_namespaces(&io, shared.clone());

        let listener = tokio::net::TcpListener::bind(&cfg.listen).await.map_err(|e| {
            crate::exit::fatal(
                crate::exit::Cause::SocketStart,
                format!("source {:?}: [socket] cannot listen on {}: {e}; free the address or change [socket] listen", cfg.name, cfg.listen),
            )
        })?;
        let addr = listener.local_addr()?;
        let stats_route = {
            let stats = stats.clone();
            axum::routing::get(move || {
                let stats = stats.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], serde_json::to_string(&*stats).unwrap_or_default()) }
            })
        };
        let app = axum::Router::new()
            .route("/socket/stats", stats_route)
            .layer(layer)
            .layer(origins.cors_layer())
            .layer(axum::middleware::from_fn(origins::check(origins.clone(), cfg.name.clone(), stats.clone())));
        let (stop_http, stop_rx) = oneshot::channel::<()>();
        let http = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("socket server stopped: {e}");
            }
        });

        // Client events stop when the host starts shutting down; emits go on until
        // `shutdown`, because plugins are still draining then.
        let mut shutdown = ctx.shutdown.clone();
        let s2 = shared.clone();
        tokio::spawn(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
            s2.tx.write().expect("socket tx lock").take();
        });

        let emitter = Emitter {
            io: io.clone(),
            offline: cfg.offline,
            hold_for: Duration::from_millis(cfg.hold_ms),
            hold_max: cfg.hold_max,
            holds: Holds::new(cfg.hold_max),
            stats: stats.clone(),
            dead,
        };
        let emitter = tokio::spawn(emitter.run(cmd_rx));
        tracing::info!(
            source = %cfg.name,
            "socket: listening on {addr} (Socket.IO at /socket.io/, offline emits: {:?})",
            cfg.offline
        );
        Ok(Arc::new(SocketServer {
            cmds,
            runtime: tokio::runtime::Handle::current(),
            stats,
            stop_http: Mutex::new(Some(stop_http)),
            http: Mutex::new(Some(http)),
            emitter: Mutex::new(Some(emitter)),
            addr,
        }))
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &SocketStats {
        &self.stats
    }

    /// Sends `event` to a client (its room) or a room; already capability-checked.
    /// The ticket is dropped once the emit is handed to the socket (or held /
    /// dropped per the offline policy). Blocks while the emitter's queue is full.
    pub fn emit(&self, plugin: &str, cause: &Arc<Event>, to: EmitTarget, event: String, payload: Value, ticket: Ticket) {
        let room = match &to {
            EmitTarget::Client(uuid) => client_room(uuid),
            EmitTarget::Room(name) => named_room(name),
        };
        let job = EmitJob { plugin: plugin.to_string(), cause: cause.clone(), room, name: event, payload, _ticket: ticket };
        let sent = match tokio::runtime::Handle::try_current() {
            // Plugin workers are plain threads: block here for backpressure.
            Err(_) => self.cmds.blocking_send(Cmd::Emit(job)).map_err(|e| e.0),
            // Called from inside the runtime (not the usual path): never block it.
            Ok(_) => match self.cmds.try_send(Cmd::Emit(job)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    let cmds = self.cmds.clone();
                    self.runtime.spawn(async move {
                        if let Err(e) = cmds.send(cmd).await {
                            lost(e.0);
                        }
                    });
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(cmd)) => Err(cmd),
            },
        };
        if let Err(cmd) = sent {
            bump(&self.stats.dropped);
            lost(cmd);
        }
    }

    /// Sends what is queued, keeps the tickets of held emits (see the module doc)
    /// and stops listening; clients see their connection drop and reconnect.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.cmds.send(Cmd::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        // The guard is let go before the await, so shutdown is a `Send` future.
        let emitter = self.emitter.lock().expect("emitter lock").take();
        if let Some(t) = emitter {
            let _ = t.await;
        }
        // No `io.close()`: that sends Socket.IO disconnect packets, after which
        // clients do not reconnect. Dropping the connections (here, or when the
        // process exits) lets them reconnect to the next run by themselves.
        if let Some(stop) = self.stop_http.lock().expect("stop lock").take() {
            let _ = stop.send(());
        }
        let http = self.http.lock().expect("http lock").take();
        if let Some(mut h) = http {
            if tokio::time::timeout(Duration::from_secs(2), &mut h).await.is_err() {
                h.abort();
            }
        }
        let s = &self.stats;
        tracing::info!(
            "socket: stopped; {} connect(s) ({} refused), {} client event(s) in ({} refused), {} emit(s) sent, {} held, {} dropped",
            s.connects.load(Ordering::Relaxed),
            s.refused_connects.load(Ordering::Relaxed),
            s.events_in.load(Ordering::Relaxed),
            s.events_refused.load(Ordering::Relaxed),
            s.emitted.load(Ordering::Relaxed),
            s.held.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
        );
    }
}

/// An emit that reached a stopped server: its event is held (not checkpointed)
/// and replayed on the next start.
fn lost(cmd: Cmd) {
    if let Cmd::Emit(job) = cmd {
        tracing::error!(
            plugin = %job.plugin, event_id = %job.cause.id,
            "socket: emit {:?} to {} not sent: the socket server has stopped; the event is held (replayed on the next start)", job.name, job.room
        );
        job._ticket.hold();
    }
}

/// Sets up the `/` namespace: auth middleware, rooms, the client-event handler.
fn register(io: &SocketIo, shared: Arc<Shared>) {
    let for_middleware = shared.clone();
    let middleware = move |s: SocketRef, TryData(auth): TryData<serde_json::Value>| {
        let shared = for_middleware.clone();
        async move {
            let auth = auth.unwrap_or(serde_json::Value::Null);
            match shared.auth.check(&auth) {
                Ok(uuid) => {
                    // Joined before the socket is connected, so an emit never finds
                    // it connected but outside its room.
                    s.join(shared.rooms_of(&uuid));
                    Ok(())
                }
                Err(e) => {
                    bump(&shared.stats.refused_connects);
                    tracing::info!(source = %shared.source, "socket: connection refused: {e}");
                    Err(e)
                }
            }
        }
    };
    let handler = move |s: SocketRef, TryData(auth): TryData<serde_json::Value>| {
        let uuid = shared.auth.check(&auth.unwrap_or(serde_json::Value::Null)).unwrap_or_default();
        connected(&shared, &s, uuid);
        async {}
    };
    io.ns("/", handler.with(middleware));
}

/// Every namespace but `/` is refused: the client gets a connect_error saying
/// so, the refusal is logged and counted. The namespace object the router made
/// for the attempt is deleted again, so made-up paths cannot pile up.
fn refuse_other_namespaces(io: &SocketIo, shared: Arc<Shared>) {
    let io2 = io.clone();
    let refuse = move |s: SocketRef| {
        let shared = shared.clone();
        let io = io2.clone();
        async move {
            let ns = s.ns().to_string();
            let n = bump(&shared.stats.refused_namespaces);
            tracing::warn!(source = %shared.source, refused_total = n, "socket: connection to namespace {ns:?} refused: this server serves only \"/\"");
            tokio::spawn(async move { io.delete_ns(ns) });
            Err::<(), _>(NamespaceRefused)
        }
    };
    let handler = |_: SocketRef| async {};
    if let Err(e) = io.dyn_ns("/{*rest}", handler.with(refuse)) {
        tracing::error!("socket: cannot install the refusal of other namespaces: {e}");
    }
}

/// The connect_error a client on another namespace receives.
#[derive(Debug)]
struct NamespaceRefused;

impl std::fmt::Display for NamespaceRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("namespace refused: this server serves only \"/\"; connect with io(url), not io(url + \"/name\")")
    }
}

impl Shared {
    fn rooms_of(&self, uuid: &str) -> Vec<String> {
        let mut rooms = vec![client_room(uuid)];
        for (name, members) in &self.rooms {
            if members.iter().any(|m| m == "*" || m == uuid) {
                rooms.push(named_room(name));
            }
        }
        rooms
    }

    fn sender(&self) -> Option<mpsc::Sender<Envelope>> {
        self.tx.read().expect("socket tx lock").clone()
    }
}

/// An authenticated socket: count it, forward its events, flush its holds.
fn connected(shared: &Arc<Shared>, s: &SocketRef, uuid: String) {
    bump(&shared.stats.connects);
    bump(&shared.stats.connected);
    tracing::debug!(source = %shared.source, client = %uuid, sid = %s.id, "socket: client connected");
    let (queue, rx) = mpsc::channel::<(String, Value)>(shared.client_queue);
    tokio::spawn(forward(shared.clone(), uuid.clone(), rx));
    let for_events = shared.clone();
    let client = uuid.clone();
    let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Not an async closure: the body runs as each message is read, so events keep
    // the client's order and a full queue refuses at once instead of piling up tasks.
    // A client that asks for an acknowledgement (`emitWithAck`, or a callback as
    // the last argument) gets `{ok: true}` once the event is queued into the host
    // (not yet handled by plugins), or `{ok: false, error}` when it is refused.
    s.on_fallback(move |EventName(name): EventName, TryData(payload): TryData<FirstArg>, ack: AckSender| {
        let payload = payload.map(|FirstArg(p)| p);
        let outcome = if name.len() > MAX_EVENT_NAME {
            Err(format!("event name is longer than {MAX_EVENT_NAME} bytes"))
        } else {
            match payload {
                Err(e) => Err(format!("event {name:?} payload is not valid: {e}")),
                Ok(payload) => match queue.try_send((name, payload)) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full((name, _))) => Err(format!(
                        "event {name:?}: {} events already wait to enter the host ([socket] client_queue)",
                        for_events.client_queue
                    )),
                    Err(mpsc::error::TrySendError::Closed((name, _))) => Err(format!("event {name:?}: connection closing")),
                },
            }
        };
        if let Err(why) = &outcome {
            bump(&for_events.stats.events_refused);
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(source = %for_events.source, client = %client, "socket: client event refused: {why} (further refusals for this connection are only counted)");
            }
        }
        ack_reply(ack, outcome.as_ref().map(|_| ()).map_err(String::as_str));
        std::future::ready(())
    });
    let uuid_for_rooms = uuid.clone();
    let for_disconnect = shared.clone();
    s.on_disconnect(move |s: SocketRef, reason: DisconnectReason| {
        for_disconnect.stats.connected.fetch_sub(1, Ordering::Relaxed);
        match reason {
            DisconnectReason::TransportClose | DisconnectReason::ClientNSDisconnect | DisconnectReason::ClosingServer => {
                tracing::debug!(client = %uuid, sid = %s.id, "socket: client disconnected: {reason}")
            }
            // An oversized or unparsable message, a dead peer: worth a line.
            _ => tracing::info!(client = %uuid, sid = %s.id, "socket: client cut off: {reason}"),
        }
        std::future::ready(())
    });
    let rooms = shared.rooms_of(&uuid_for_rooms);
    if shared.cmds.try_send(Cmd::Online(rooms.clone())).is_err() {
        let cmds = shared.cmds.clone();
        tokio::spawn(async move {
            let _ = cmds.send(Cmd::Online(rooms)).await;
        });
    }
}

/// Answers a client's acknowledgement request (a no-op when it asked for none).
/// A failed send means the client is gone: nothing to tell it then.
fn ack_reply(ack: AckSender, outcome: Result<(), &str>) {
    let reply = match outcome {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(why) => serde_json::json!({"ok": false, "error": why}),
    };
    if let Err(e) = ack.send(&reply) {
        tracing::debug!("socket: acknowledgement not sent (client gone): {e}");
    }
}

/// Moves one client's events into the host, in order, with a ticket each.
async fn forward(shared: Arc<Shared>, uuid: String, mut rx: mpsc::Receiver<(String, Value)>) {
    while let Some((event, payload)) = rx.recv().await {
        let Some(tx) = shared.sender() else {
            bump(&shared.stats.events_refused);
            tracing::warn!(client = %uuid, "socket: client event {event:?} refused: the host is shutting down");
            continue;
        };
        let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
        let ev = oplet_sdk::Event {
            seq,
            id: format!("{}:{}:{seq}", shared.source, shared.boot),
            source: shared.source.clone(),
            time_ms: now_ms(),
            body: EventBody::Socket(SocketEvent { client: uuid.clone(), event, payload }),
        };
        let ticket = shared.tracker.ticket(seq, None);
        // Numbered, then encoded once: every plugin gets these bytes.
        let ev = match crate::envelope::Event::encode(&ev) {
            Ok(ev) => ev,
            Err(e) => {
                bump(&shared.stats.events_refused);
                tracing::warn!(client = %uuid, seq, "socket: client event refused: {e}");
                continue; // its ticket is dropped: done, nothing to wait for
            }
        };
        bump(&shared.stats.events_in);
        if tx.send(Envelope { event: Arc::new(ev), ticket }).await.is_err() {
            return;
        }
    }
}

/// The one task that sends emits, so holds and sends for a room keep their order.
struct Emitter {
    io: SocketIo,
    offline: Offline,
    hold_for: Duration,
    hold_max: usize,
    holds: Holds<EmitJob>,
    stats: Arc<SocketStats>,
    dead: Arc<DeadLetters>,
}

impl Emitter {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Emit(job)) => self.deliver(job).await,
                    Some(Cmd::Online(rooms)) => {
                        for room in rooms {
                            for job in self.holds.take(&room) {
                                self.send(job).await;
                            }
                        }
                    }
                    Some(Cmd::Shutdown(done)) => {
                        rx.close();
                        while let Some(cmd) = rx.recv().await {
                            match cmd {
                                Cmd::Emit(job) => self.deliver(job).await,
                                Cmd::Online(_) => {}
                                Cmd::Shutdown(d) => { let _ = d.send(()); }
                            }
                        }
                        self.park();
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.park();
                        return;
                    }
                },
                _ = tick.tick(), if !self.holds.is_empty() => {
                    for (room, job) in self.holds.expire(Instant::now()) {
                        let why = format!("{room} stayed offline for hold_ms = {}", self.hold_for.as_millis());
                        self.drop_job(job, &why).await;
                    }
                }
            }
        }
    }

    fn online(&self, room: &str) -> bool {
        !self.io.to(room.to_string()).sockets().is_empty()
    }

    async fn deliver(&mut self, job: EmitJob) {
        if self.online(&job.room) {
            for held in self.holds.take(&job.room) {
                self.send(held).await;
            }
            self.send(job).await;
            return;
        }
        match self.offline {
            Offline::Drop => {
                let why = format!("{} is offline (offline = \"drop\")", job.room);
                self.drop_job(job, &why).await
            }
            Offline::Hold => {
                let until = Instant::now() + self.hold_for;
                let room = job.room.clone();
                match self.holds.push(&room, job, until) {
                    Ok(()) => {
                        bump(&self.stats.held);
                        tracing::debug!("socket: emit held for {room} until it connects");
                    }
                    Err(job) => {
                        let why = format!("{room} is offline and {} emits are already held (hold_max)", self.hold_max);
                        self.drop_job(job, &why).await;
                    }
                }
            }
        }
    }

    async fn send(&mut self, job: EmitJob) {
        match self.io.to(job.room.clone()).emit(&job.name, &job.payload).await {
            Ok(()) => {
                bump(&self.stats.emitted);
            }
            Err(e) => {
                let why = format!("sending to {} failed: {e}", job.room);
                self.drop_job(job, &why).await
            }
        }
    }

    /// Dead-letters an emit that will not be delivered, with the cause; its
    /// ticket goes only once that record is durable (held if it never is).
    async fn drop_job(&self, job: EmitJob, why: &str) {
        let n = bump(&self.stats.dropped);
        tracing::warn!(plugin = %job.plugin, seq = job.cause.seq, event_id = %job.cause.id, dropped_total = n, "socket: emit {:?} dropped: {why}; dead-lettered", job.name);
        let stage = format!("sink:emit ({})", job.plugin);
        let error = format!("emit {:?} to {} not delivered: {why}", job.name, job.room);
        self.dead.record_held_async(stage, job.cause, error, job._ticket).await;
    }

    /// At shutdown: held emits keep their tickets (never released), so the
    /// checkpoint does not pass their events and the next run replays them.
    fn park(&mut self) {
        if !self.holds.is_empty() {
            tracing::warn!(
                "socket: {} held emit(s) not delivered at shutdown; their events stay before the checkpoint and are replayed on restart",
                self.holds.len()
            );
        }
        for (_, job) in self.holds.drain() {
            job._ticket.hold();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_payload_is_its_first_argument_or_nil() {
        let arg = |json: &str| serde_json::from_str::<FirstArg>(json).unwrap().0;
        assert_eq!(arg("[]"), Value::Null);
        assert_eq!(arg("[{\"n\": 1}]"), Value::Map([("n".to_string(), Value::Int(1))].into()));
        assert_eq!(arg("[\"a\", 2, [3]]"), Value::from("a"));
    }

    #[test]
    fn config_keys_have_defaults_and_typos_are_errors() {
        let cfg: SocketConfig = toml::from_str("listen = \"127.0.0.1:0\"\nsecret = \"0123456789abcdef\"\n").unwrap();
        assert_eq!((cfg.name.as_str(), cfg.offline, cfg.hold_ms, cfg.hold_max), ("socket", Offline::Hold, 30_000, 10_000));
        assert_eq!((cfg.max_payload_kb, cfg.client_queue), (64, 64));
        let err = toml::from_str::<SocketConfig>("listen = \"x\"\nofline = \"drop\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `ofline`"), "{err}");
        let err = toml::from_str::<SocketConfig>("listen = \"x\"\noffline = \"keep\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant `keep`"), "{err}");
    }

    #[test]
    fn client_rooms_and_named_rooms_never_share_a_name() {
        assert_ne!(client_room("ops"), named_room("ops"));
    }
}
