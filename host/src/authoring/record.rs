//! `oplet events record`: runs one source of a host config exactly as `oplet run`
//! would (same connection, stream options, conversion) and writes each event it
//! delivers as a JSON line that `oplet plugin test` and the JSON-lines source read.
//! It never moves the host's checkpoints: it keeps its own in a temporary folder,
//! starting from now, or from a copy of the host's with `--since-checkpoint`.

use crate::checkpoint::CheckpointStore;
use crate::config::{Config, SourceConfig};
use crate::deadletter::DeadLetters;
use crate::envelope::Envelope;
use crate::source::mongo::StoreKind;
use crate::source;
use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub struct Options<'a> {
    pub config: &'a Path,
    pub source: &'a str,
    pub limit: Option<u64>,
    pub since_checkpoint: bool,
    /// `None`: standard output.
    pub out: Option<&'a Path>,
}

/// A folder removed when dropped (the recorder's own checkpoints and dead letters).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn record(opts: &Options) -> anyhow::Result<ExitCode> {
    let config = Config::load(opts.config)?;
    if opts.limit == Some(0) {
        bail!("--limit 0 records nothing: give a positive number, or leave it out to record until Ctrl-C");
    }
    let names: Vec<String> = config.sources.iter().map(|s| s.name().to_string()).chain(config.socket.iter().map(|s| s.name.clone())).collect();
    let found = config.sources.iter().find(|s| s.name() == opts.source).cloned();
    let socket = config.socket.clone().filter(|s| s.name == opts.source);
    if found.is_none() && socket.is_none() {
        bail!("{} has no source named {:?}; its sources: {}", opts.config.display(), opts.source, if names.is_empty() { "none".into() } else { names.join(", ") });
    }
    if socket.is_some() && opts.since_checkpoint {
        bail!("--since-checkpoint: Socket.IO events are not replayable (the source {:?} has no checkpoint); record without it", opts.source);
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("oplet-record-{}-{}", std::process::id(), crate::deadletter::now_ms())));
    let store = CheckpointStore::new(&scratch.0.join("checkpoints"))?;
    if opts.since_checkpoint {
        copy_checkpoints(&config.state_dir.join("checkpoints"), &scratch.0.join("checkpoints"), opts.source)?;
    }
    let dead = Arc::new(DeadLetters::open(&scratch.0.join("dead-letters.jsonl"))?);
    let mut out = match opts.out {
        Some(p) => Lines::file(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?)?,
        None => Lines::stdout(),
    };

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let written = rt.block_on(async {
        let (tx, rx) = mpsc::channel::<Envelope>(256);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (saver_stop_tx, saver_stop_rx) = watch::channel(false);
        let name = opts.source.to_string();
        // The recorder's positions go to its scratch folder, never to the host's store.
        let saving = crate::source::CheckpointSaving::new(store.clone(), Duration::from_millis(200), saver_stop_rx.clone());
        let ctx = saving.context(tx, shutdown_rx, dead.clone());
        let mut task: tokio::task::JoinHandle<anyhow::Result<()>> = match (found, socket) {
            (Some(SourceConfig::Jsonl(c)), _) => tokio::spawn(async move { source::jsonl::run(c, ctx).await }),
            (Some(SourceConfig::Mongo(mut c)), _) => {
                if c.checkpoint.store == StoreKind::Mongo && opts.since_checkpoint {
                    bail!("--since-checkpoint: source {name:?} keeps its checkpoints in MongoDB ({}); the recorder reads local checkpoints only: record without it", c.checkpoint.collection);
                }
                c.checkpoint.store = StoreKind::Local;
                // A recorder reads every target, whoever owns it (ctx.cluster is None).
                tokio::spawn(async move { source::mongo::run(c, ctx).await })
            }
            (None, Some(sc)) => {
                let server = crate::source::socket::SocketServer::start(&sc, ctx).await?;
                tracing::info!(source = %sc.name, "recording the events Socket.IO clients send to {}", sc.listen);
                // The server runs until shutdown; this task only keeps it alive.
                let mut stop = saver_stop_rx;
                tokio::spawn(async move {
                    let _server = server;
                    let _ = stop.wait_for(|s| *s).await;
                    Ok(())
                })
            }
            (None, None) => unreachable!("checked above"),
        };
        let written = write_events(rx, &mut out, opts.limit, &shutdown_tx, &mut task).await;
        let _ = shutdown_tx.send(true);
        let _ = saver_stop_tx.send(true);
        // The source ends after the shutdown; what it still sends is not written.
        let ended = tokio::time::timeout(Duration::from_secs(10), &mut task).await;
        let result = match ended {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow::anyhow!("the source task failed: {e}")),
            Err(_) => {
                task.abort();
                Ok(())
            }
        };
        let written = written?;
        result.map(|()| written)
    })?;
    let undeliverable = dead.count();
    if undeliverable > 0 {
        eprintln!("warning: the source dead-lettered {undeliverable} change(s) it could not convert (the host would too); they are not in the output");
    }
    eprintln!("recorded {written} event(s) from source {:?}", opts.source);
    Ok(ExitCode::SUCCESS)
}

/// Writes events until `limit`, the source's end, or SIGINT/SIGTERM; each line is
/// flushed at once so a reader (or `tail -f`) sees it.
async fn write_events(
    mut rx: mpsc::Receiver<Envelope>,
    out: &mut Lines,
    limit: Option<u64>,
    shutdown: &watch::Sender<bool>,
    task: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<u64> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut written = 0u64;
    loop {
        tokio::select! {
            env = rx.recv() => {
                let Some(env) = env else { break };
                let event = env.event.decode().map_err(|e| anyhow::anyhow!("an event that cannot be read back: {e}"))?;
                let line = serde_json::to_string(&event).context("an event that is not JSON")?;
                out.line(&line)?;
                written += 1;
                // Done: the recorder's own tracker may move on.
                drop(env);
                if limit.is_some_and(|l| written >= l) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            r = &mut *task => {
                // A source that stops on its own (a file read to its end, an error):
                // take what it already queued, then report how it ended.
                while let Ok(env) = rx.try_recv() {
                    if limit.is_some_and(|l| written >= l) { break; }
                    let event = env.event.decode().map_err(|e| anyhow::anyhow!("an event that cannot be read back: {e}"))?;
                    out.line(&serde_json::to_string(&event)?)?;
                    written += 1;
                }
                let _ = shutdown.send(true);
                match r {
                    Ok(Ok(())) => return Ok(written),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => bail!("the source task failed: {e}"),
                }
            }
        }
    }
    Ok(written)
}

/// Where recorded lines go. A line that cannot be written whole (a full disk) is
/// cut off the file again, so the file holds only whole events, each one readable.
struct Lines {
    out: Box<dyn Write + Send>,
    /// The output file, to cut a torn last line; `None` for standard output.
    file: Option<std::fs::File>,
    /// Bytes of whole lines written so far.
    good: u64,
    lines: u64,
}

impl Lines {
    fn file(f: std::fs::File) -> anyhow::Result<Lines> {
        let cut = f.try_clone().context("cannot duplicate the output file handle")?;
        Ok(Lines { out: Box::new(f), file: Some(cut), good: 0, lines: 0 })
    }

    fn stdout() -> Lines {
        Lines { out: Box::new(std::io::stdout()), file: None, good: 0, lines: 0 }
    }

    fn line(&mut self, text: &str) -> anyhow::Result<()> {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        match self.out.write_all(&bytes).and_then(|()| self.out.flush()) {
            Ok(()) => {
                self.good += bytes.len() as u64;
                self.lines += 1;
                Ok(())
            }
            Err(e) => {
                let kept = match &self.file {
                    Some(f) => match f.set_len(self.good) {
                        Ok(()) => format!("; the file keeps the {} whole event(s) before it", self.lines),
                        Err(cut) => format!("; its torn last line could not be cut off ({cut}): drop the last line before using the file"),
                    },
                    None => String::new(),
                };
                Err(anyhow::anyhow!("cannot write recorded event {}: {e}{kept}", self.lines + 1))
            }
        }
    }
}

/// Copies `SOURCE.json` and the per-stream `SOURCE.*.json` checkpoints.
fn copy_checkpoints(from: &Path, to: &Path, source: &str) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("--since-checkpoint: {} does not exist: the host has saved no checkpoint for source {source:?} yet (run it once, or record without --since-checkpoint)", from.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", from.display())),
    };
    let mut copied = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".json") else { continue };
        if stem == source || stem.starts_with(&format!("{source}.")) {
            std::fs::copy(entry.path(), to.join(&name)).with_context(|| format!("cannot copy {}", entry.path().display()))?;
            copied += 1;
        }
    }
    if copied == 0 {
        bail!("--since-checkpoint: {} holds no checkpoint of source {source:?} (run the host once, or record without --since-checkpoint)", from.display());
    }
    Ok(())
}
