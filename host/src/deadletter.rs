//! The dead-letter store: events a plugin, sink or source could not handle, with the error.
//!
//! One JSON object per line in `state_dir/dead-letters.jsonl`, written and fsynced
//! before the event counts as done. `record` says whether that worked; callers
//! holding a ticket use `record_held`, which keeps retrying (the host degraded,
//! backpressure up to the sources) and, if the host stops first, holds the ticket
//! so the checkpoint never passes an event that is neither applied nor recorded.
//! Re-drive by feeding the `event` fields back through a JSON-lines source. The
//! event arrives as its encoded bytes; it is decoded to JSON only here, on this
//! rare path.

use crate::append::AppendFile;
use crate::checkpoint::Ticket;
use crate::health::Health;
use crate::envelope::Event;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The health component the dead-letter store reports as.
pub const COMPONENT: &str = "dead-letters";

pub struct DeadLetters {
    path: PathBuf,
    file: Mutex<AppendFile>,
    count: AtomicU64,
    health: Arc<Health>,
}

/// A dead letter that could not be written (the event is not done).
#[derive(Debug, thiserror::Error)]
#[error("cannot write dead letter to {path}: {source}")]
pub struct RecordError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl DeadLetters {
    /// Opens (or creates) the file, cutting a torn last line; reports to a
    /// health registry of its own (see `open_with_health`).
    pub fn open(path: &Path) -> anyhow::Result<DeadLetters> {
        DeadLetters::open_with_health(path, Health::new())
    }

    /// Opens like `open`, reporting a file it cannot write to `health`.
    pub fn open_with_health(path: &Path, health: Arc<Health>) -> anyhow::Result<DeadLetters> {
        let file = AppendFile::open(path, "dead-letter file")?;
        Ok(DeadLetters { path: path.to_path_buf(), file: Mutex::new(file), count: AtomicU64::new(0), health })
    }

    /// Records, durably, that `stage` (a plugin name, `sink:redis`...) failed on
    /// `event`. One attempt: a failure leaves the file as it was.
    pub fn record(&self, stage: &str, event: &Event, error: &str) -> Result<(), RecordError> {
        self.write(line(stage, event, error), 1)
    }

    /// Records that `stage` failed on each of `events` for one `error`, with one
    /// write and one fsync (a removed or quarantined plugin's backlog). All or
    /// nothing: a failure leaves the file as it was.
    pub fn record_all(&self, stage: &str, events: &[&Event], error: &str) -> Result<(), RecordError> {
        let text: String = events.iter().map(|e| line(stage, e, error)).collect();
        self.write(text, events.len() as u64)
    }

    /// `record_all`, retrying until written like `record_retrying`. Call from a
    /// blocking thread.
    pub fn record_all_retrying(&self, stage: &str, events: &[&Event], error: &str) -> Result<(), RecordError> {
        self.health.retry_durably(COMPONENT, || self.record_all(stage, events, error))
    }

    fn write(&self, text: String, n: u64) -> Result<(), RecordError> {
        let mut f = self.file.lock().expect("dead-letter lock");
        f.append(text.as_bytes()).map_err(|source| RecordError { path: self.path.display().to_string(), source })?;
        self.count.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }


    /// Records like `record`, retrying until it is written (blocking the caller,
    /// with the host reported degraded meanwhile); the error only once the host
    /// is stopping. Call from a blocking thread.
    pub fn record_retrying(&self, stage: &str, event: &Event, error: &str) -> Result<(), RecordError> {
        self.health.retry_durably(COMPONENT, || self.record(stage, event, error))
    }

    /// `record_retrying` from async code; false when the record could not be
    /// written: the caller must not pass the event (its position stays unsaved).
    pub async fn record_retrying_async(self: &Arc<Self>, stage: String, event: Event, error: String) -> bool {
        let dead = self.clone();
        match tokio::task::spawn_blocking(move || dead.record_retrying(&stage, &event, &error).map_err(|e| (e, event))).await {
            Ok(Ok(())) => true,
            Ok(Err((e, event))) => {
                tracing::error!(seq = event.seq, event_id = %event.id, "{e}; stopping without passing the event (replayed on the next start)");
                false
            }
            Err(_) => false,
        }
    }

    /// Records like `record_retrying`. If the host stops first, the event is
    /// held: `ticket` never completes, so its checkpoint is not passed and the
    /// event is replayed on the next start. Call from a blocking thread.
    pub fn record_held(&self, stage: &str, event: &Event, error: &str, ticket: &Ticket) {
        if let Err(e) = self.record_retrying(stage, event, error) {
            tracing::error!(stage, seq = event.seq, event_id = %event.id, "{e}; stopping with the event held (not checkpointed, replayed on the next start); it failed with: {error}");
            ticket.clone().hold();
        }
    }

    /// `record_held` from async code: runs it on the blocking pool.
    pub async fn record_held_async(self: &Arc<Self>, stage: String, event: Arc<Event>, error: String, ticket: Ticket) {
        let dead = self.clone();
        let held = ticket.clone();
        if tokio::task::spawn_blocking(move || dead.record_held(&stage, &event, &error, &ticket)).await.is_err() {
            held.hold(); // the blocking task panicked: nothing was recorded
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }
}

/// One dead letter as a JSON line. The event is decoded from its bytes; bytes that
/// do not decode (never written by this host) are kept as an error beside the header.
fn line(stage: &str, event: &Event, error: &str) -> String {
    let body = match event.decode() {
        Ok(owned) => serde_json::to_value(&owned).unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() })),
        Err(e) => serde_json::json!({ "undecodable": e }),
    };
    let mut text = serde_json::json!({
        "time_ms": now_ms(),
        "stage": stage,
        "source": event.source,
        "seq": event.seq,
        "event_id": event.id,
        "error": error,
        "event": body,
    })
    .to_string();
    text.push('\n');
    text
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
