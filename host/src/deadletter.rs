//! The dead-letter store: events a plugin, sink or source could not handle, with the error.
//!
//! One JSON object per line in `state_dir/dead-letters.jsonl`, written and fsynced
//! before the event counts as done. One operation, `record` (any number of events
//! for one cause, retried while the file cannot be written: the host degraded,
//! backpressure up to the sources); `record_held` also holds the caller's ticket
//! if the host stops first, so the checkpoint never passes an event that is
//! neither applied nor recorded; `record_async` is either, from async code.
//! Re-drive by feeding the `event` fields back through a JSON-lines source.
//! The event arrives as its encoded bytes; it is decoded to JSON only here, on
//! this rare path.

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

    /// Records durably that `stage` (a plugin name, `sink:redis (PLUGIN)`...)
    /// failed on each of `events` with `error`: one write and one fsync for all,
    /// all or nothing. While the file cannot be written the write is retried,
    /// blocking the caller (backpressure) with the host reported degraded; the
    /// error comes back only once the host is stopping, and the caller must then
    /// not pass the events. Call from a blocking thread.
    pub fn record(&self, stage: &str, events: &[&Event], error: &str) -> Result<(), RecordError> {
        let text: String = events.iter().map(|e| line(stage, e, error)).collect();
        self.health.retry_durably(COMPONENT, || self.write(&text, events.len() as u64))
    }

    /// `record` for one event whose ticket the caller holds: if the host stops
    /// before the letter is written, the ticket is held, so the checkpoint never
    /// passes an event that is neither applied nor recorded (it is replayed on
    /// the next start). Call from a blocking thread.
    pub fn record_held(&self, stage: &str, event: &Event, error: &str, ticket: &Ticket) {
        if let Err(e) = self.record(stage, &[event], error) {
            tracing::error!(stage, seq = event.seq, event_id = %event.id, "{e}; stopping with the event held (not checkpointed, replayed on the next start); it failed with: {error}");
            ticket.clone().hold();
        }
    }

    /// `record` (with a ticket: `record_held`) from async code, on the blocking
    /// pool. False when the letter could not be written: the caller must not
    /// pass the event (its position stays unsaved).
    pub async fn record_async(self: &Arc<Self>, stage: String, event: Arc<Event>, error: String, ticket: Option<Ticket>) -> bool {
        let dead = self.clone();
        let held = ticket.clone();
        let written = tokio::task::spawn_blocking(move || match dead.record(&stage, &[event.as_ref()], &error) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(stage = %stage, seq = event.seq, event_id = %event.id, "{e}; stopping without passing the event (replayed on the next start); it failed with: {error}");
                false
            }
        })
        .await
        .unwrap_or(false); // the blocking task panicked: nothing was recorded
        if !written {
            if let Some(t) = held {
                t.hold();
            }
        }
        written
    }

    /// `record_async` without a ticket (the call sites in the sources, until
    /// they move to it).
    pub async fn record_retrying_async(self: &Arc<Self>, stage: String, event: Event, error: String) -> bool {
        self.record_async(stage, Arc::new(event), error, None).await
    }

    /// `record_async` with a ticket (the call sites in the sources, until they
    /// move to it).
    pub async fn record_held_async(self: &Arc<Self>, stage: String, event: Arc<Event>, error: String, ticket: Ticket) {
        self.record_async(stage, event, error, Some(ticket)).await;
    }

    /// One attempt at appending `text` (`n` letters); a failure leaves the file as it was.
    fn write(&self, text: &str, n: u64) -> Result<(), RecordError> {
        let mut f = self.file.lock().expect("dead-letter lock");
        f.append(text.as_bytes()).map_err(|source| RecordError { path: self.path.display().to_string(), source })?;
        self.count.fetch_add(n, Ordering::Relaxed);
        Ok(())
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
        "source": &*event.source,
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

/// (year, month, day) of a day number since 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's civil_from_days).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}
