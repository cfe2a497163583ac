//! What the sink executors share: a bounded queue drained in batches by one
//! thread (allocated as it fills, never up front), and the retry schedule of a
//! failing sink.
//!
//! Worker threads push items with `BatchQueue::send` (it blocks while the queue is
//! full: backpressure up to the sources). The executor thread takes up to
//! `batch_max` items, waiting at most `batch_ms` after the first for more, and
//! applies them; `close` lets it drain what is queued and waits for it to stop.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A bounded queue that allocates as it fills (`sync_channel(cap)` allocates
/// all `cap` slots up front: `queue = 2e7` would hold 1 GB while idle).
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item arrives or the queue closes.
    filled: Condvar,
    /// Signalled when room frees up or the receiver goes away.
    drained: Condvar,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// No more sends: the receiver drains what is left, then sees the end.
    closed: bool,
    /// The receiver is gone: sends give their item back.
    gone: bool,
}

/// The receiving half, owned by the executor thread.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().expect("queue lock");
        st.gone = true;
        drop(st);
        self.shared.drained.notify_all();
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting until `deadline` (forever with `None`). `Err(true)`
    /// when the queue is closed and empty, `Err(false)` on timeout.
    fn recv(&self, deadline: Option<Instant>) -> Result<T, bool> {
        let mut st = self.shared.state.lock().expect("queue lock");
        loop {
            if let Some(item) = st.items.pop_front() {
                drop(st);
                self.shared.drained.notify_one();
                return Ok(item);
            }
            if st.closed {
                return Err(true);
            }
            st = match deadline {
                None => self.shared.filled.wait(st).expect("queue lock"),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(false);
                    }
                    self.shared.filled.wait_timeout(st, left).expect("queue lock").0
                }
            };
        }
    }
}

fn queue<T>(capacity: usize) -> (Arc<Shared<T>>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { items: VecDeque::new(), closed: false, gone: false }),
        filled: Condvar::new(),
        drained: Condvar::new(),
        capacity: capacity.max(1),
    });
    (shared.clone(), Receiver { shared })
}

impl<T> Shared<T> {
    fn send(&self, item: T) -> Result<(), T> {
        let mut st = self.state.lock().expect("queue lock");
        loop {
            if st.closed || st.gone {
                return Err(item);
            }
            if st.items.len() < self.capacity {
                st.items.push_back(item);
                drop(st);
                self.filled.notify_one();
                return Ok(());
            }
            st = self.drained.wait(st).expect("queue lock");
        }
    }

    fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.filled.notify_all();
        self.drained.notify_all();
    }
}

/// Takes the next batch: blocks for the first item, then gathers more until
/// `max` items or until `window` has passed since the first. `None` once the
/// queue is closed and empty.
pub fn next_batch<T>(rx: &Receiver<T>, max: usize, window: Duration) -> Option<Vec<T>> {
    let first = rx.recv(None).ok()?;
    let mut batch = Vec::with_capacity(max.clamp(1, 4096));
    batch.push(first);
    let deadline = Instant::now() + window;
    while batch.len() < max {
        // What is already queued goes in without waiting (a past deadline).
        match rx.recv(Some(deadline)) {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The sending half of an executor's queue and its thread.
pub struct BatchQueue<T> {
    queue: Arc<Shared<T>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<T: Send + 'static> BatchQueue<T> {
    /// Starts thread `name` running `run` on the receiving half of a queue of
    /// at most `capacity` items (allocated as they arrive).
    pub fn start(name: &str, capacity: usize, run: impl FnOnce(Receiver<T>) + Send + 'static) -> std::io::Result<Self> {
        let (queue, rx) = self::queue(capacity);
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || run(rx))?;
        Ok(BatchQueue { queue, thread: Mutex::new(Some(thread)) })
    }

    /// Queues `item`, blocking while the queue is full. Gives the item back if
    /// the executor has stopped.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.queue.send(item)
    }

    /// Closes the queue and waits until the thread has applied what was queued.
    pub async fn close(&self) {
        self.queue.close();
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
        let (tx, rx) = queue(16);
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        assert_eq!(next_batch(&rx, 3, Duration::from_secs(10)), Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&rx, 3, Duration::ZERO), Some(vec![3, 4]));
        tx.close();
        assert_eq!(next_batch(&rx, 3, Duration::ZERO), None);
        assert_eq!(tx.send(9), Err(9), "a closed queue gives the item back");
    }

    #[test]
    fn a_batch_waits_at_most_the_window_for_more() {
        let (tx, rx) = queue(16);
        tx.send(1).unwrap();
        let started = Instant::now();
        assert_eq!(next_batch(&rx, 100, Duration::from_millis(30)), Some(vec![1]));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
    }

    #[test]
    fn a_huge_bound_allocates_nothing_up_front_and_still_blocks_when_full() {
        let (tx, rx) = queue::<u64>(20_000_000);
        assert_eq!(tx.state.lock().unwrap().items.capacity(), 0, "no slot is allocated before an item arrives");
        let (small, small_rx) = queue(2);
        small.send(1).unwrap();
        small.send(2).unwrap();
        let sender = std::thread::spawn(move || small.send(3));
        // The third send waits for room; a batch of two makes it.
        assert_eq!(next_batch(&small_rx, 2, Duration::ZERO), Some(vec![1, 2]));
        assert_eq!(sender.join().unwrap(), Ok(()));
        assert_eq!(next_batch(&small_rx, 2, Duration::ZERO), Some(vec![3]));
        drop(rx);
        assert_eq!(tx.send(1), Err(1), "a receiver that is gone gives the item back");
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_stops_after_the_limit() {
        let b = Backoff::new(4, 100, 250);
        let delays: Vec<_> = (1..=5).map(|a| b.delay(a).map(|d| d.as_millis())).collect();
        assert_eq!(delays, vec![Some(100), Some(200), Some(250), Some(250), None]);
    }
}
