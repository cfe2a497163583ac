//! The log rate limit of one plugin: a token bucket over the bytes it writes
//! through `oplet.log`, shared by all its instances (a fresh instance after a trap
//! does not get a fresh allowance). Lines past the rate are dropped and counted;
//! the count is reported in one line at the end of the call (at most once a
//! second), so a plugin that floods the log costs the host a bounded amount.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogBudget {
    plugin: std::sync::Arc<str>,
    rate: u64,
    state: Mutex<Bucket>,
    /// Whether anything was dropped since the last report: read at the end of
    /// every call, so a plugin that logs within its rate costs no lock there.
    dropped: AtomicBool,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
    reported: Option<Instant>,
}

/// What was dropped since the last report.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    pub bytes: u64,
}

impl LogBudget {
    /// `rate`: bytes per second; the bucket holds one second's worth.
    pub fn new(plugin: std::sync::Arc<str>, rate: u64) -> LogBudget {
        LogBudget {
            plugin,
            rate,
            state: Mutex::new(Bucket { tokens: rate as f64, refilled: Instant::now(), dropped_lines: 0, dropped_bytes: 0, reported: None }),
            dropped: AtomicBool::new(false),
        }
    }

    /// Whether a line of `len` bytes may be written now; if not, it is counted.
    pub fn admit(&self, len: usize) -> bool {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        b.refilled = now;
        // A line costs its bytes plus one, so empty lines are not free.
        let cost = len as f64 + 1.0;
        if b.tokens >= cost {
            b.tokens -= cost;
            true
        } else {
            b.dropped_lines += 1;
            b.dropped_bytes += len as u64;
            self.dropped.store(true, Ordering::Relaxed);
            false
        }
    }

    /// What was dropped since the last report, if anything was and the last report
    /// is at least `every` old (or there was none).
    pub fn take_report(&self, every: Duration) -> Option<Dropped> {
        // Set under the lock by `admit`: seen here at the latest on a later call.
        if !self.dropped.load(Ordering::Relaxed) {
            return None;
        }
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if b.dropped_lines == 0 || b.reported.is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        self.dropped.store(false, Ordering::Relaxed);
        b.reported = Some(Instant::now());
        let d = Dropped { lines: b.dropped_lines, bytes: b.dropped_bytes };
        b.dropped_lines = 0;
        b.dropped_bytes = 0;
        Some(d)
    }

    /// Logs what was dropped, in one line, if it is time to.
    pub fn report(&self, every: Duration) {
        if let Some(d) = self.take_report(every) {
            tracing::warn!(
                plugin = %self.plugin,
                dropped_lines = d.lines,
                dropped_bytes = d.bytes,
                "dropped {} log line(s) ({} bytes) the plugin wrote past its log rate limit of {} KiB/s ([limits] log_kb_per_s)",
                d.lines,
                d.bytes,
                self.rate / 1024
            );
        }
    }
}

impl Drop for LogBudget {
    fn drop(&mut self) {
        // Nothing is left unreported when the plugin is unloaded.
        self.report(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_at_the_rate_and_counted() {
        let b = LogBudget::new("p".into(), 1000);
        let admitted = (0..100).filter(|_| b.admit(99)).count();
        assert_eq!(admitted, 10, "one second's worth: 1000 bytes at 100 per line");
        assert_eq!(b.take_report(Duration::from_secs(1)), Some(Dropped { lines: 90, bytes: 90 * 99 }));
        assert_eq!(b.take_report(Duration::ZERO), None, "reported once");
        assert!(!b.admit(5000), "a line longer than the bucket never passes");
    }
}
