//! `oplet run`: wires config, runtime, plugin folder, router, executors and
//! sources together, and shuts them down in the order that loses nothing:
//! sources stop, the router drains, workers drain, executors flush, and the
//! checkpoints are saved last.

use crate::checkpoint::{run_saver, CheckpointStore, Tracker};
use crate::config::{Config, SourceConfig};
use crate::deadletter::DeadLetters;
use crate::health::Health;
use crate::effect::{audit::AuditHandle, postgres::PostgresHandle, redis::RedisHandle, Effects, Executors};
use crate::source::mongo::MongoContext;
use crate::source::socket::SocketServer;
use crate::router::{dispatch, Registry, WorkerContext};
use crate::runtime::reload::PluginDir;
use crate::runtime::Runtime;
use crate::source::{self, SourceContext};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};


/// How `run` ended.
#[derive(PartialEq, Eq)]
pub enum Outcome {
    /// Every source reached its end (a JSON-lines file without `follow`).
    SourcesDone,
    /// SIGINT or SIGTERM.
    Signal,
    /// A plugin failed and `on_plugin_error = "halt"`.
    Halted,
    /// A source stopped on an error: the host stops too, rather than run on
    /// without it. `cause` decides the exit code.
    SourceFailed { source: String, cause: crate::exit::Cause, error: String },
}

/// Short, for "shutting down (...)": the error itself is logged once where it
/// happens and once on the last line, not a third time here.
impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::SourcesDone => f.write_str("SourcesDone"),
            Outcome::Signal => f.write_str("Signal"),
            Outcome::Halted => f.write_str("Halted"),
            Outcome::SourceFailed { source, cause, .. } => write!(f, "source {source:?} failed: {cause}"),
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<Outcome> {
    let mut signal = ShutdownSignal::listen()?;
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    crate::runtime::reload::check_plugin_dir(&config.plugins.dir)?;
    let cache = config.plugins.cache.then(|| config.state_dir.join("cache"));
    let runtime = Arc::new(Runtime::new(cache)?);
    let health = Health::new();
    let dead = Arc::new(DeadLetters::open_with_health(&config.state_dir.join("dead-letters.jsonl"), health.clone())?);
    let audit = AuditHandle::start(&config.audit_path(), config.audit.batch_max, config.audit.batch_ms, config.delivery.queue, health.clone())?;
    let cache = config.redis.as_ref().map(|c| RedisHandle::start(c, dead.clone())).transpose()?;
    let rows = config.postgres.as_ref().map(|c| PostgresHandle::start(c, dead.clone())).transpose()?;

    let (tx, rx) = mpsc::channel(config.delivery.queue);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let store = CheckpointStore::new(&config.state_dir.join("checkpoints"))?;
    let (saver_stop, saver_stop_rx) = watch::channel(false);
    let checkpoint_interval = Duration::from_millis(config.delivery.checkpoint_interval_ms);
    let mut savers = Vec::new();
    let extra_savers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let socket = match &config.socket {
        Some(sc) => {
            // Client events are not replayable: the position is only a count.
            let tracker = Tracker::unreplayable(&sc.name);
            let sctx = SourceContext { tracker, resume: None, tx: tx.clone(), shutdown: shutdown_rx.clone() };
            Some(SocketServer::start(sc, sctx, dead.clone()).await?)
        }
        None => None,
    };
    let executors = Executors { audit: Some(audit), cache, rows, emit: socket.clone() };
    let effects = Arc::new(Effects::new(executors, dead.clone()));
    let halt = Arc::new(Notify::new());
    let ctx = Arc::new(WorkerContext { effects: effects.clone(), dead: dead.clone(), delivery: config.delivery.clone(), halt: halt.clone() });
    let registry = Registry::new(ctx);

    let mut dir = PluginDir::new(runtime.clone(), config.clone(), registry.clone());
    dir.scan();
    // Plugins compile in parallel; the sources wait at most start_wait_ms for them.
    let loading = dir.settle(Duration::from_millis(config.plugins.start_wait_ms));
    let names: Vec<String> = registry.snapshot().iter().map(|w| w.name.clone()).collect();
    tracing::info!(dir = %config.plugins.dir.display(), "{} plugin(s) loaded: {}", names.len(), names.join(", "));
    for name in &loading {
        tracing::warn!(plugin = %name, "plugin still compiling after [plugins] start_wait_ms = {}; the sources start without it, and it receives events from when it is loaded", config.plugins.start_wait_ms);
    }
    for grant in config.unknown_grants(&dir.names_in_folder()) {
        tracing::warn!("[grants.{grant:?}] names no plugin in {}: it grants nothing (a typo in the plugin name?)", config.plugins.dir.display());
    }
    let _watch = Some(dir.watch_with(config.plugins.watch)?);

    let dispatcher = tokio::spawn(dispatch(rx, registry.clone()));
    let mut sources = tokio::task::JoinSet::new();
    for sc in &config.sources {
        let resume = store.load(sc.name())?;
        let name = sc.name().to_string();
        match sc.clone() {
            SourceConfig::Jsonl(c) => {
                // Tickets count from 1 each run; the position says where in the file.
                let tracker = Tracker::new(sc.name(), 1, resume.clone());
                savers.push(tokio::spawn(run_saver(tracker.clone(), store.clone(), checkpoint_interval, saver_stop_rx.clone())));
                let sctx = SourceContext { tracker, resume, tx: tx.clone(), shutdown: shutdown_rx.clone() };
                let d = dead.clone();
                sources.spawn(async move { (name, source::jsonl::run(c, sctx, d).await) });
            }
            SourceConfig::Mongo(c) => {
                // The Mongo source keeps one tracker and checkpoint per change stream.
                let tracker = Tracker::new(sc.name(), 1, None);
                let base = SourceContext { tracker, resume, tx: tx.clone(), shutdown: shutdown_rx.clone() };
                let mctx = MongoContext { base, store: store.clone(), checkpoint_interval, dead: dead.clone(), saver_stop: saver_stop_rx.clone(), savers: extra_savers.clone() };
                sources.spawn(async move { (name, source::mongo::run(c, mctx).await) });
            }
        }
    }
    drop(tx);
    if config.sources.is_empty() && socket.is_none() {
        tracing::warn!("no [[source]] configured: nothing will arrive; waiting for a signal");
    }

    let outcome = loop {
        tokio::select! {
            done = sources.join_next(), if !sources.is_empty() => {
                // A source that stops on an error stops the host: running on
                // without it would look healthy while its changes pile up unseen.
                match done {
                    Some(Ok((name, Ok(())))) => tracing::info!(source = %name, "source finished"),
                    Some(Ok((name, Err(e)))) => {
                        let cause = crate::exit::cause_of(&e).unwrap_or(crate::exit::Cause::Internal);
                        tracing::error!(source = %name, "source stopped: {e:#}");
                        break Outcome::SourceFailed { source: name, cause, error: format!("{e:#}") };
                    }
                    Some(Err(e)) => {
                        tracing::error!("source task failed: {e}");
                        break Outcome::SourceFailed { source: "?".into(), cause: crate::exit::Cause::Internal, error: e.to_string() };
                    }
                    None => {}
                }
                if sources.is_empty() && socket.is_none() {
                    break Outcome::SourcesDone;
                }
            }
            _ = signal.recv() => break Outcome::Signal,
            _ = halt.notified() => break Outcome::Halted,
        }
    };
    tracing::info!("shutting down ({outcome:?}): draining events in flight");
    // Work held on a full disk is no longer retried: its events stay unsaved.
    health.stop();
    let _ = shutdown_tx.send(true);
    while let Some(r) = sources.join_next().await {
        if let Ok((name, Err(e))) = r {
            tracing::error!(source = %name, "source stopped: {e:#}");
        }
    }
    let _ = dispatcher.await;
    drop(_watch);
    let reg = registry.clone();
    tokio::task::spawn_blocking(move || reg.shutdown()).await?;
    drop(registry);
    effects.shutdown().await;
    let _ = saver_stop.send(true);
    savers.extend(extra_savers.lock().expect("savers lock").drain(..));
    for s in savers {
        let _ = s.await;
    }
    if dead.count() > 0 {
        tracing::warn!(path = %dead.path().display(), "{} event(s) were dead-lettered in this run", dead.count());
    }
    tracing::info!("stopped");
    Ok(outcome)
}

/// SIGTERM and SIGINT, listened for from the start of `run`: a signal that comes
/// while plugins load is a clean shutdown too, not the default action's kill, and
/// one that comes between two turns of the main loop is not missed.
struct ShutdownSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn listen() -> anyhow::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
            let int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
            Ok(ShutdownSignal { term, int })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
