//! `oplet run`: wires config, runtime, plugin folder, router, executors and
//! sources together, and shuts them down in the order that loses nothing:
//! sources stop, the router drains, workers drain, executors flush, and the
//! checkpoints are saved last. The shutdown is bounded: past
//! `[delivery] shutdown_timeout_ms`, or on a second signal, the process exits at
//! once with `EXIT_FORCED`, its checkpoints never past an unfinished event.

use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::deadletter::DeadLetters;
use crate::health::Health;
use crate::effect::{audit::AuditHandle, postgres::PostgresHandle, redis::RedisHandle, Effects, Executors};
use crate::source::socket::SocketServer;
use crate::envelope::Envelope;
use crate::router::{Registry, WorkerContext};
use crate::plugins::reload::PluginDir;
use crate::runtime::Runtime;
use crate::source::{CheckpointSaving, Ended};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Exit code when the shutdown was cut short (its timeout passed, or a second
/// SIGTERM/SIGINT came): events not finished were not checkpointed and are
/// delivered again on the next start. 75 is `EX_TEMPFAIL`: retrying is safe.
pub const EXIT_FORCED: i32 = 75;

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
    let _state_lock = crate::dlq::StateLock::shared(&config.state_dir)?;
    crate::plugins::reload::check_plugin_dir(&config.plugins.dir)?;
    let cache = config.plugins.cache.then(|| config.state_dir.join("cache"));
    let runtime = Arc::new(Runtime::new(cache)?);
    let health = Health::new();
    let dead = Arc::new(DeadLetters::open_with_health(&config.state_dir.join("dead-letters.jsonl"), health.clone())?);
    let audit = AuditHandle::start(&config.audit_path(), config.audit.batch_max, config.audit.batch_ms, config.delivery.queue, health.clone())?;
    let cache = config.redis.as_ref().map(|c| RedisHandle::start(c, dead.clone())).transpose()?;
    let rows = config.postgres.as_ref().map(|c| PostgresHandle::start(c, dead.clone())).transpose()?;

    // One bounded queue and one dispatcher per source, so one source's backlog
    // never delays another's events (a queue allocates as it fills, not its bound).
    let queue = || mpsc::channel::<Envelope>(config.delivery.queue);
    let mut source_queues: Vec<(String, mpsc::Receiver<Envelope>)> = Vec::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let store = CheckpointStore::new(&config.state_dir.join("checkpoints"))?;
    let (saver_stop, saver_stop_rx) = watch::channel(false);
    let checkpoint_interval = Duration::from_millis(config.delivery.checkpoint_interval_ms);
    let saving = CheckpointSaving::new(store, checkpoint_interval, saver_stop_rx);
    let socket = match &config.socket {
        Some(sc) => {
            let (tx, rx) = queue();
            crate::metrics::watch_queue(&sc.name, &tx);
            source_queues.push((sc.name.clone(), rx));
            let sctx = saving.context(tx, shutdown_rx.clone(), dead.clone());
            Some(SocketServer::start(sc, sctx).await?)
        }
        None => None,
    };
    let executors = Executors::with_sinks(audit, cache, rows, socket.clone());
    let effects = Arc::new(Effects::new(executors, dead.clone()));
    let halt = Arc::new(Notify::new());
    let ctx = Arc::new(WorkerContext { effects: effects.clone(), dead: dead.clone(), delivery: config.delivery.clone(), halt: halt.clone() });
    let registry = Registry::new(ctx);
    registry.set_status_file(config.state_dir.join("plugins.json"));
    let _admin = crate::admin::start(&config, health.clone(), dead.clone(), socket.clone()).await?;

    let mut dir = PluginDir::new(runtime.clone(), config.clone(), registry.clone());
    // Compiling modules blocks for milliseconds to seconds: not on an async worker.
    // Plugins compile in parallel; the sources wait at most start_wait_ms for them.
    let start_wait = Duration::from_millis(config.plugins.start_wait_ms);
    let (dir, loading) = tokio::task::spawn_blocking(move || {
        dir.scan();
        let loading = dir.settle(start_wait);
        (dir, loading)
    })
    .await
    .context("loading the plugin folder")?;
    let names: Vec<String> = registry.snapshot().into_iter().map(|w| w.name).collect();
    tracing::info!(dir = %config.plugins.dir.display(), "{} plugin(s) loaded: {}", names.len(), names.join(", "));
    for name in &loading {
        tracing::warn!(plugin = %name, "plugin still compiling after [plugins] start_wait_ms = {}; the sources start without it, and it receives events from when it is loaded", config.plugins.start_wait_ms);
    }
    for grant in config.unknown_grants(&dir.names_in_folder()) {
        // Info, not a warning: granting first and deploying after is the normal
        // order for a new plugin; `oplet config check` flags it for typos.
        tracing::info!("[grants.{grant:?}] names no plugin in {} yet: it applies when a plugin of that name is deployed (check the spelling if none is coming)", config.plugins.dir.display());
    }
    let _watch = Some(dir.watch_with(config.plugins.watch)?);

    let mut sources = tokio::task::JoinSet::new();
    for sc in &config.sources {
        let source = sc.clone().build();
        let name = source.name().to_string();
        let (tx, rx) = queue();
        crate::metrics::watch_queue(&name, &tx);
        source_queues.push((name.clone(), rx));
        let mut sctx = saving.context(tx, shutdown_rx.clone(), dead.clone());
        sctx.cluster = config.cluster.membership();
        sources.spawn(async move { (name, source.run(sctx).await) });
    }
    let mut dispatchers = Vec::new();
    for (name, rx) in source_queues {
        dispatchers.push(
            registry
                .spawn_dispatcher(&name, rx)
                .with_context(|| format!("cannot start the dispatcher thread of source {name:?}"))?,
        );
    }
    if config.sources.is_empty() && socket.is_none() {
        tracing::warn!("no [[source]] configured: nothing will arrive; waiting for a signal");
    }

    let outcome = loop {
        tokio::select! {
            done = sources.join_next(), if !sources.is_empty() => {
                // A source that stops on an error stops the host: running on
                // without it would look healthy while its changes pile up unseen.
                match done {
                    Some(Ok((name, Ended::Finished))) => tracing::info!(source = %name, "source finished"),
                    Some(Ok((name, Ended::Failed { cause, error }))) => {
                        tracing::error!(source = %name, "source stopped: {error}");
                        break Outcome::SourceFailed { source: name, cause, error };
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
    let timeout = Duration::from_millis(config.delivery.shutdown_timeout_ms);
    tracing::info!("shutting down ({outcome:?}): finishing the events taken in (bound: [delivery] shutdown_timeout_ms = {} ms)", timeout.as_millis());
    // Work held on a full disk is no longer retried: its events stay unsaved.
    health.stop();
    let _ = shutdown_tx.send(true);
    let drain = async {
        while let Some(r) = sources.join_next().await {
            if let Ok((name, Ended::Failed { error, .. })) = r {
                tracing::error!(source = %name, "source stopped: {error}");
            }
        }
        // Sources have dropped their queues' senders: each dispatcher ends after
        // handing out what is left. Joined off the async workers.
        let joined = tokio::task::spawn_blocking(move || {
            for d in dispatchers {
                let _ = d.join();
            }
        });
        let _ = joined.await;
        drop(_watch);
        let reg = registry.clone();
        let _ = tokio::task::spawn_blocking(move || reg.shutdown()).await;
        effects.shutdown().await;
        let _ = saver_stop.send(true);
        for s in saving.take_savers() {
            let _ = s.await;
        }
    };
    tokio::pin!(drain);
    // Every source reached its end: everything read is finished, however long it
    // takes, until a signal asks for the bounded stop. After a signal (or a halt),
    // the bound runs from now.
    let mut deadline = (outcome != Outcome::SourcesDone).then(|| far_or(timeout));
    loop {
        tokio::select! {
            _ = &mut drain => break,
            _ = sleep_until(deadline), if deadline.is_some() => forced(&format!("the shutdown took longer than [delivery] shutdown_timeout_ms = {} ms", timeout.as_millis())),
            _ = signal.recv() => {
                if deadline.is_some() {
                    forced("a second signal came during the shutdown");
                }
                tracing::info!("signal: finishing the events taken in, within {} ms", timeout.as_millis());
                deadline = Some(far_or(timeout));
            }
        }
    }
    if dead.count() > 0 {
        tracing::warn!(path = %dead.path().display(), "{} event(s) were dead-lettered in this run", dead.count());
    }
    FINISHED.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!("stopped");
    Ok(outcome)
}

/// True once every event taken in is done or held and the last checkpoint is
/// written: a panic after this (a driver's background task torn down with the
/// runtime) can no longer checkpoint past unfinished work.
pub static FINISHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `now + d`, or a moment too far to matter when that does not fit (a huge timeout).
fn far_or(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Ends the process now, without waiting for unfinished events: their tickets
/// were never released, so no saved checkpoint is past them, and they are
/// delivered again on the next start. The checkpoints saved so far stay (each
/// save is a write, fsync and rename, so none is torn).
fn forced(why: &str) -> ! {
    tracing::error!(
        "stopping now: {why}; events not finished are not checkpointed and will be delivered again on the next start (exit code {EXIT_FORCED})"
    );
    std::process::exit(EXIT_FORCED)
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
