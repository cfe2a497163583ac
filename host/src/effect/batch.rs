//! What the sink executors share: a bounded queue drained in batches by one
//! thread, and the retry schedule of a failing sink.
//!
//! Worker threads push items with `BatchQueue::send` (it blocks while the queue is
//! full: backpressure up to the sources). The executor thread takes up to
//! `batch_max` items, waiting at most `batch_ms` after the first for more, and
//! applies them; `close` lets it drain what is queued and waits for it to stop.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Takes the next batch: blocks for the first item, then gathers more until
/// `max` items or until `window` has passed since the first. `None` once the
/// queue is closed and empty.
pub fn next_batch<T>(rx: &Receiver<T>, max: usize, window: Duration) -> Option<Vec<T>> {
    let first = rx.recv().ok()?;
    let mut batch = Vec::with_capacity(max.clamp(1, 4096));
    batch.push(first);
    let deadline = Instant::now() + window;
    while batch.len() < max {
        // What is already queued goes in without waiting.
        match rx.try_recv() {
            Ok(item) => {
                batch.push(item);
                continue;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(item) => batch.push(item),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(batch)
}

/// The sending half of an executor's queue and its thread.
pub struct BatchQueue<T> {
    tx: Mutex<Option<SyncSender<T>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<T: Send + 'static> BatchQueue<T> {
    /// Starts thread `name` running `run` on the receiving half of a queue of
    /// `capacity` items.
    pub fn start(name: &str, capacity: usize, run: impl FnOnce(Receiver<T>) + Send + 'static) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || run(rx))?;
        Ok(BatchQueue { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Queues `item`, blocking while the queue is full. Gives the item back if
    /// the executor has stopped.
    pub fn send(&self, item: T) -> Result<(), T> {
        let tx = self.tx.lock().expect("queue sender lock").clone();
        match tx {
            Some(tx) => tx.send(item).map_err(|e| e.0),
            None => Err(item),
        }
    }

    /// Closes the queue and waits until the thread has applied what was queued.
    pub async fn close(&self) {
        self.tx.lock().expect("queue sender lock").take();
        let thread = self.thread.lock().expect("queue thread lock").take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// How a failing sink is retried: `retries` more attempts after the first, the
/// delay doubling from `first` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub retries: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(retries: u32, first_ms: u64, max_ms: u64) -> Backoff {
        Backoff { retries, first: Duration::from_millis(first_ms), max: Duration::from_millis(max_ms.max(first_ms)) }
    }

    /// The wait before retry number `attempt` (1-based), or `None` past the limit.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt > self.retries {
            return None;
        }
        let factor = 1u32 << (attempt - 1).min(20);
        Some(self.first.saturating_mul(factor).min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_what_is_queued_up_to_the_maximum() {
        let (tx, rx) = sync_channel(16);
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_batch(&rx, 3, Duration::from_secs(10)), Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&rx, 3, Duration::ZERO), Some(vec![3, 4]));
        drop(tx);
        assert_eq!(next_batch(&rx, 3, Duration::ZERO), None);
    }

    #[test]
    fn a_batch_waits_at_most_the_window_for_more() {
        let (tx, rx) = sync_channel(16);
        tx.send(1).unwrap();
        let started = Instant::now();
        assert_eq!(next_batch(&rx, 100, Duration::from_millis(30)), Some(vec![1]));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_secs(2), "{waited:?}");
        drop(tx);
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_stops_after_the_limit() {
        let b = Backoff::new(4, 100, 250);
        let delays: Vec<_> = (1..=5).map(|a| b.delay(a).map(|d| d.as_millis())).collect();
        assert_eq!(delays, vec![Some(100), Some(200), Some(250), Some(250), None]);
    }
}
