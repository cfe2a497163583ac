//! The one batching sink every external-store executor shares (Redis, PostgreSQL):
//! a bounded queue (allocated as it fills, never up front) drained in batches by
//! one thread, retry with the host's `Backoff`, and give-up to the dead letters.
//!
//! Plugin workers queue items with `SinkHandle::send` (it blocks while the queue is
//! full: backpressure up to the sources). The sink thread takes up to `batch_max`
//! items, waiting at most `batch_ms` after the first for more, and hands them to
//! the store's `BatchSink::attempt`, which says per item: done, retry, or refused
//! for good. Refused items, and items still failing after the retries, are
//! dead-lettered (the event held if even that cannot be written before the host
//! stops); an item's ticket is released only then or once it is applied.

use crate::backoff::Backoff;
use crate::checkpoint::Ticket;
use crate::deadletter::DeadLetters;
use crate::envelope::Event;
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

/// The batching settings every sink has (`[redis]`, `[postgres]`: same keys,
/// per-sink defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Items per batch at most.
    pub batch_max: usize,
    /// How long a batch may wait for more items after the first.
    pub batch_ms: u64,
    /// Items buffered before plugin workers block.
    pub queue: usize,
    /// Attempts after the first before a failing item is dead-lettered.
    pub retries: u32,
    /// First wait before a retry; doubles up to `backoff_max_ms`.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
}

impl Batching {
    /// The retry schedule of one batch.
    pub fn backoff(&self) -> Backoff {
        Backoff::from_ms(self.backoff_ms, self.backoff_max_ms).limited(self.retries)
    }
}

/// What became of one item in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: its ticket may be released.
    Done,
    /// Worth another attempt (connection lost, server busy, time limit...).
    Retry(String),
    /// The store refused it for good: dead-lettered at once, never retried.
    Refused(String),
}

/// One queued effect: the operation and what its dead letter needs.
pub struct Queued<T> {
    pub plugin: String,
    pub event: Arc<Event>,
    pub op: T,
    /// Dropping it once the operation is applied (or dead-lettered) marks the
    /// event done; held when neither happened.
    ticket: Ticket,
}

/// What a store does with batches; `run_sink` does the rest (queue, batching,
/// retries, dead letters). Runs on the sink's own thread, in a current-thread
/// Tokio runtime, so futures need not be `Send`.
#[allow(async_fn_in_trait)] // run on one thread: no `Send` bound is wanted
pub trait BatchSink: Send + 'static {
    type Op: Send + 'static;
    /// The store's name in logs and dead letters (`Redis`, `PostgreSQL`).
    const STORE: &'static str;
    /// The stage of its dead letters (`sink:redis`).
    const STAGE: &'static str;
    /// What one item is, plural, in logs (`cache delete(s)`).
    const ITEMS: &'static str;
    /// Its `sink` label in the metrics (`redis`).
    const METRIC: &'static str;
    /// The effect kind it applies, as the metrics name it (`cache_delete`).
    const EFFECT: &'static str;

    /// Connects ahead of the first batch; a failure only delays the items (logged).
    async fn warm_up(&mut self) -> Result<(), String>;

    /// One attempt at `batch`: one outcome per item, in order.
    async fn attempt(&mut self, batch: &[Queued<Self::Op>]) -> Vec<Outcome>;

    /// The operation, for a dead letter's error (`UNLINK ["k"]`, `Upsert on t`).
    fn describe(op: &Self::Op) -> String;
}

/// The sending half of a sink: what the effect executors hold.
pub struct SinkHandle<T> {
    queue: BatchQueue<Queued<T>>,
    store: &'static str,
}

impl<T: Send + 'static> SinkHandle<T> {
    /// Starts `sink` on thread `thread` with `batching`.
    pub fn start<S: BatchSink<Op = T>>(thread: &str, sink: S, batching: Batching, dead: Arc<DeadLetters>) -> std::io::Result<Self> {
        let queue = BatchQueue::start(thread, batching.queue, move |rx| run_sink(sink, batching, dead, rx))?;
        Ok(SinkHandle { queue, store: S::STORE })
    }

    /// Queues `op`, blocking while the sink is behind. The ticket is released
    /// once the operation is applied or dead-lettered.
    pub fn send(&self, plugin: &str, event: &Arc<Event>, op: T, ticket: Ticket) {
        let item = Queued { plugin: plugin.to_string(), event: event.clone(), op, ticket };
        if let Err(item) = self.queue.send(item) {
            // Only at shutdown: the event stays unsaved and is replayed on the next start.
            tracing::error!(plugin, seq = event.seq, "{} executor has stopped; effect not applied: the event is held (not checkpointed)", self.store);
            item.ticket.hold();
        }
    }

    /// Applies what is queued, then stops.
    pub async fn shutdown(&self) {
        self.queue.close().await;
    }
}

/// The sink thread: batches from `rx`, each applied with retries until every
/// item is done or dead-lettered.
fn run_sink<S: BatchSink>(mut sink: S, batching: Batching, dead: Arc<DeadLetters>, rx: Receiver<Queued<S::Op>>) {
    let max = batching.batch_max.max(1);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("{} executor cannot start its runtime: {e}; every {} will be dead-lettered", S::STORE, S::ITEMS);
            while let Some(batch) = next_batch(&rx, max, Duration::ZERO) {
                give_up::<S>(&dead, batch, &format!("{} executor has no runtime: {e}", S::STORE));
            }
            return;
        }
    };
    if let Err(e) = rt.block_on(sink.warm_up()) {
        tracing::warn!("{} is not reachable yet ({e}); {} will wait and retry", S::STORE, S::ITEMS);
    }
    let window = Duration::from_millis(batching.batch_ms);
    while let Some(batch) = next_batch(&rx, max, window) {
        let (n, started) = (batch.len(), std::time::Instant::now());
        rt.block_on(apply(&mut sink, &batching, &dead, batch));
        crate::metrics::sink_batch(S::METRIC, n, started.elapsed());
    }
}

/// Applies one batch: every item is applied, or dead-lettered with its error.
async fn apply<S: BatchSink>(sink: &mut S, batching: &Batching, dead: &DeadLetters, mut pending: Vec<Queued<S::Op>>) {
    let mut backoff = batching.backoff();
    loop {
        let outcomes = sink.attempt(&pending).await;
        debug_assert_eq!(outcomes.len(), pending.len(), "one outcome per item");
        let mut retry = Vec::new();
        let mut last_error = String::new();
        let mut outcomes = outcomes.into_iter();
        for item in pending {
            // A sink that answered for fewer items: the rest are tried again.
            match outcomes.next().unwrap_or_else(|| Outcome::Retry(format!("{} gave no outcome", S::STORE))) {
                // Dropping the item releases its ticket.
                Outcome::Done => crate::metrics::effects(S::EFFECT, "applied", 1),
                Outcome::Refused(e) => {
                    tracing::error!(plugin = %item.plugin, seq = item.event.seq, "{} refused {}: {e}; dead-lettered", S::STORE, S::describe(&item.op));
                    letter::<S>(dead, item, &format!("{} refused: {e}", S::STORE));
                }
                Outcome::Retry(e) => {
                    last_error = e;
                    retry.push(item);
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        let Some(delay) = backoff.next_retry() else {
            let error = format!("{} still failing after {} retries: {last_error}", S::STORE, batching.retries);
            give_up::<S>(dead, retry, &error);
            return;
        };
        tracing::warn!(
            "{}: {} {} failed: {last_error}; retry {}/{} in {delay:?}",
            S::STORE,
            retry.len(),
            S::ITEMS,
            backoff.attempts(),
            batching.retries
        );
        tokio::time::sleep(delay).await;
        pending = retry;
    }
}

fn give_up<S: BatchSink>(dead: &DeadLetters, items: Vec<Queued<S::Op>>, error: &str) {
    tracing::error!("{error}; dead-lettering {} {}", items.len(), S::ITEMS);
    for item in items {
        letter::<S>(dead, item, error);
    }
}

/// Dead-letters one item; if the host stops before that is written, its event
/// is held (never checkpointed) instead.
fn letter<S: BatchSink>(dead: &DeadLetters, item: Queued<S::Op>, error: &str) {
    crate::metrics::effects(S::EFFECT, "dead_lettered", 1);
    let stage = format!("{} ({})", S::STAGE, item.plugin);
    dead.record_held(&stage, &item.event, &format!("{}: {error}", S::describe(&item.op)), &item.ticket);
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

    /// A store that answers from a script: per attempt, one outcome per item.
    struct Scripted {
        script: std::collections::VecDeque<Vec<Outcome>>,
        attempts: Arc<Mutex<Vec<Vec<u32>>>>,
    }

    impl BatchSink for Scripted {
        type Op = u32;
        const STORE: &'static str = "Scripted";
        const STAGE: &'static str = "sink:scripted";
        const ITEMS: &'static str = "op(s)";
        const METRIC: &'static str = "scripted";
        const EFFECT: &'static str = "scripted";

        async fn warm_up(&mut self) -> Result<(), String> {
            Err("not there yet".into())
        }

        async fn attempt(&mut self, batch: &[Queued<u32>]) -> Vec<Outcome> {
            self.attempts.lock().unwrap().push(batch.iter().map(|q| q.op).collect());
            self.script.pop_front().unwrap_or_else(|| vec![Outcome::Done; batch.len()])
        }

        fn describe(op: &u32) -> String {
            format!("op {op}")
        }
    }

    /// Through the real queue, thread, dead-letter file and tracker: a refused
    /// item is dead-lettered at once, a failing one is retried alone and then
    /// given up, and every ticket is released only after that.
    #[test]
    fn a_batch_is_retried_item_by_item_and_what_fails_for_good_is_dead_lettered() {
        use crate::checkpoint::Tracker;
        let dir = std::env::temp_dir().join(format!("oplet-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dead = Arc::new(DeadLetters::open(&dir.join("dl.jsonl")).unwrap());
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let script = [
            vec![Outcome::Done, Outcome::Refused("no".into()), Outcome::Retry("busy".into())],
            vec![Outcome::Retry("still busy".into())],
            vec![Outcome::Retry("still busy".into())],
        ];
        let sink = Scripted { script: script.into_iter().collect(), attempts: attempts.clone() };
        let batching = Batching { batch_max: 3, batch_ms: 1000, queue: 8, retries: 2, backoff_ms: 1, backoff_max_ms: 2 };
        let handle = SinkHandle::start("test-sink", sink, batching, dead.clone()).unwrap();
        let tracker = Tracker::new("s", 1, None);
        for seq in 1..=3u64 {
            let body = oplet_sdk::EventBody::Socket(oplet_sdk::SocketEvent { client: String::new(), event: "e".into(), payload: oplet_sdk::Value::Null });
            let event = Arc::new(Event::encode(&oplet_sdk::Event { seq, id: format!("s:{seq}"), source: "s".into(), time_ms: 0, body }).unwrap());
            handle.send("p", &event, seq as u32, tracker.ticket(seq, Some(serde_json::json!(seq))));
        }
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(handle.shutdown());
        assert_eq!(*attempts.lock().unwrap(), vec![vec![1, 2, 3], vec![3], vec![3]], "only the failing item is tried again");
        let text = std::fs::read_to_string(dir.join("dl.jsonl")).unwrap();
        let letters: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let got: Vec<(u64, &str, &str)> =
            letters.iter().map(|l| (l["seq"].as_u64().unwrap(), l["stage"].as_str().unwrap(), l["error"].as_str().unwrap())).collect();
        assert_eq!(
            got,
            vec![
                (2, "sink:scripted (p)", "op 2: Scripted refused: no"),
                (3, "sink:scripted (p)", "op 3: Scripted still failing after 2 retries: still busy"),
            ]
        );
        assert_eq!(tracker.position().0, Some(serde_json::json!(3)), "every ticket released: applied or dead-lettered");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
