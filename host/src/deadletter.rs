//! The dead-letter store: events a plugin or sink could not handle, with the error.
//!
//! One JSON object per line in `state_dir/dead-letters.jsonl`, written and fsynced
//! before the event counts as done, so a failure is never silent and never lost.
//! Re-drive by feeding the `event` fields back through a JSON-lines source.

use oplet_sdk::Event;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct DeadLetters {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    count: AtomicU64,
}

impl DeadLetters {
    pub fn open(path: &Path) -> anyhow::Result<DeadLetters> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open dead-letter file {}: {e}", path.display()))?;
        Ok(DeadLetters { path: path.to_path_buf(), file: Mutex::new(file), count: AtomicU64::new(0) })
    }

    /// Records that `stage` (a plugin name, or `sink:redis`...) failed on `event`.
    pub fn record(&self, stage: &str, event: &Event, error: &str) {
        self.write(line(stage, event, error), 1);
    }

    /// Records that `stage` failed on each of `events` for one `error`, with one
    /// write and one fsync (a removed or quarantined plugin's backlog).
    pub fn record_all(&self, stage: &str, events: &[&Event], error: &str) {
        let text: String = events.iter().map(|e| line(stage, e, error)).collect();
        self.write(text, events.len() as u64);
    }

    fn write(&self, text: String, n: u64) {
        let mut f = self.file.lock().expect("dead-letter lock");
        let res = f.write_all(text.as_bytes()).and_then(|_| f.sync_data());
        if let Err(e) = res {
            // Nowhere safer to put it: say so loudly with the whole record.
            tracing::error!(path = %self.path.display(), "cannot write dead letter ({e}); record: {text}");
        }
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One dead letter as a JSON line.
fn line(stage: &str, event: &Event, error: &str) -> String {
    let mut text = serde_json::json!({
        "time_ms": now_ms(),
        "stage": stage,
        "source": event.source,
        "seq": event.seq,
        "event_id": event.id,
        "error": error,
        "event": event,
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
