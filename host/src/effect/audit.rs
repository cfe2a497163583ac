//! The audit sink: append-only JSON lines, fsynced once per batch.
//!
//! Records are keyed `plugin:event_id:index`; keys already in the file are loaded
//! at start and skipped, so an event replayed after a crash never writes a second
//! record. Tickets are released only after the batch holding them is on disk.

use super::batch::{next_batch, BatchQueue};
use crate::checkpoint::Ticket;
use crate::deadletter::DeadLetters;
use oplet_sdk::{Event, Value};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

struct Item {
    key: String,
    line: String,
    event: Arc<Event>,
    plugin: String,
    /// Held, never read: dropping it after the fsync marks the event done.
    _ticket: Ticket,
}

pub struct AuditHandle {
    queue: BatchQueue<Item>,
}

impl AuditHandle {
    /// Opens (or creates) the audit file and starts the writer thread.
    pub fn start(path: &Path, batch_max: usize, batch_ms: u64, queue: usize, dead: Arc<DeadLetters>) -> anyhow::Result<AuditHandle> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let seen = load_keys(path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open audit file {}: {e}", path.display()))?;
        let writer = Writer { path: path.to_path_buf(), file, seen, batch_max: batch_max.max(1), batch: Duration::from_millis(batch_ms), dead };
        let queue = BatchQueue::start("oplet-audit", queue, move |rx| writer.run(rx))?;
        Ok(AuditHandle { queue })
    }

    /// Queues one record; blocks while the writer is behind.
    pub fn append(&self, plugin: &str, event: &Arc<Event>, index: usize, record: Value, ticket: Ticket) {
        let key = record_key(plugin, event, index);
        let line = serde_json::json!({
            "key": key,
            "plugin": plugin,
            "source": event.source,
            "seq": event.seq,
            "event_id": event.id,
            "time_ms": event.time_ms,
            "record": record,
        })
        .to_string();
        let item = Item { key, line, event: event.clone(), plugin: plugin.to_string(), _ticket: ticket };
        if self.queue.send(item).is_err() {
            tracing::error!(plugin, seq = event.seq, "audit writer has stopped; record not written, event not checkpointed");
        }
    }

    /// Writes what is queued and stops the writer.
    pub async fn shutdown(&self) {
        self.queue.close().await;
    }
}

/// The key of the `index`-th effect of `event` from `plugin`: the same on every
/// replay of the event, so a record is written once (here and in PostgreSQL).
pub fn record_key(plugin: &str, event: &Event, index: usize) -> String {
    format!("{plugin}:{}:{index}", event.id)
}

fn load_keys(path: &Path) -> anyhow::Result<HashSet<String>> {
    let mut seen = HashSet::new();
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(seen),
        Err(e) => anyhow::bail!("cannot read audit file {}: {e}", path.display()),
    };
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => {
                if let Some(k) = v.get("key").and_then(|k| k.as_str()) {
                    seen.insert(k.to_string());
                }
            }
            // A torn last line after a crash: its batch was never fsynced, so its
            // events were never checkpointed and will be replayed.
            Err(_) => tracing::warn!(path = %path.display(), line = n + 1, "ignoring an unreadable audit line (torn write before a crash?)"),
        }
    }
    Ok(seen)
}

struct Writer {
    path: PathBuf,
    file: std::fs::File,
    seen: HashSet<String>,
    batch_max: usize,
    batch: Duration,
    dead: Arc<DeadLetters>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Item>) {
        while let Some(mut batch) = next_batch(&rx, self.batch_max, self.batch) {
            self.write(&mut batch);
        }
    }

    fn write(&mut self, batch: &mut Vec<Item>) {
        let mut buf = String::new();
        let mut keys = Vec::new();
        for item in batch.iter() {
            if !self.seen.contains(&item.key) && !keys.contains(&&item.key) {
                buf.push_str(&item.line);
                buf.push('\n');
                keys.push(&item.key);
            }
        }
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            let res = self.file.write_all(buf.as_bytes()).and_then(|_| self.file.sync_data());
            match res {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::error!(path = %self.path.display(), attempt, "audit write failed: {e}; retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), "audit write failed {attempt} times: {e}; dead-lettering {} records", batch.len());
                    for item in batch.iter() {
                        self.dead.record(&format!("sink:audit ({})", item.plugin), &item.event, &format!("audit write failed: {e}"));
                    }
                    batch.clear();
                    return;
                }
            }
        }
        let keys: Vec<String> = keys.into_iter().cloned().collect();
        self.seen.extend(keys);
        // Dropping the items releases their tickets: the records are on disk.
        batch.clear();
    }
}
