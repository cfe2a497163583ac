//! Checkpoints: a source position is saved only once every event up to it is done.
//!
//! Each event carries a `Ticket`. Whoever still has work for the event (a plugin
//! worker, an effect batch waiting for its fsync or commit) holds a clone; when
//! the last clone is dropped the event is done. The `Tracker` turns done events,
//! which finish out of order, into a contiguous watermark, and `run_saver` writes
//! the position of the watermark's event to a `CheckpointStore` now and then.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// A source's opaque position: a resume token, a line number.
pub type Position = serde_json::Value;

/// A position as a ticket carries it: JSON, or, for a MongoDB change (one per
/// event), only its resume token's `_data` text and the seq, made JSON when it is
/// read or saved. Cheap to clone: the source keeps its last one too.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    Json(Arc<Position>),
    Token { data: Arc<str>, seq: u64 },
}

impl Mark {
    /// The position as it is saved: `{"token": {"_data": ...}, "seq": N}` for a token.
    pub fn to_json(&self) -> Position {
        match self {
            Mark::Json(p) => (**p).clone(),
            Mark::Token { data, seq } => serde_json::json!({ "token": { "_data": &**data }, "seq": seq }),
        }
    }

    /// Records `seq`, the seq of the last event at or before this position.
    pub fn with_seq(self, seq: u64) -> Mark {
        match self {
            Mark::Json(mut p) => {
                if let Some(map) = Arc::make_mut(&mut p).as_object_mut() {
                    map.insert("seq".into(), seq.into());
                }
                Mark::Json(p)
            }
            Mark::Token { data, .. } => Mark::Token { data, seq },
        }
    }
}

impl From<Position> for Mark {
    fn from(p: Position) -> Mark {
        Mark::Json(Arc::new(p))
    }
}

pub struct Tracker {
    source: String,
    /// False for sources whose events are never replayed (Socket.IO clients).
    replayable: bool,
    /// The seq of this run's first event.
    first_seq: u64,
    state: Mutex<TrackerState>,
    changed: Notify,
    /// Tickets handed out, for the checkpoint lag (`metrics`).
    issued: std::sync::atomic::AtomicU64,
}

struct TrackerState {
    /// Lowest sequence number not yet done.
    next: u64,
    done: BTreeMap<u64, Option<Mark>>,
    /// Position of the last event below the watermark that carried one.
    position: Option<Mark>,
    /// Bumped each time `position` changes, so the saver knows what it wrote.
    version: u64,
    /// Events completed in total (for stats and tests).
    completed: u64,
    /// Every event below this one is done and its position durably saved.
    saved_next: u64,
    /// (seq, source time in ms) of tickets handed out and not yet below the
    /// watermark, in the order handed out: the front is the oldest event waiting.
    times: std::collections::VecDeque<(u64, i64)>,
    /// The highest ticket handed out (`first_seq - 1` before the first).
    issued: u64,
}

impl Tracker {
    /// `first_seq`: the sequence number the source will give its first event.
    pub fn new(source: &str, first_seq: u64, position: Option<Position>) -> Arc<Tracker> {
        Tracker::build(source, first_seq, position, true)
    }

    /// A tracker for a source whose events are never replayed (client events):
    /// a done event counts as saved.
    pub fn unreplayable(source: &str) -> Arc<Tracker> {
        Tracker::build(source, 1, None, false)
    }

    fn build(source: &str, first_seq: u64, position: Option<Position>, replayable: bool) -> Arc<Tracker> {
        Arc::new(Tracker {
            source: source.to_string(),
            replayable,
            first_seq,
            state: Mutex::new(TrackerState { next: first_seq, done: BTreeMap::new(), position: position.map(Mark::from), version: 0, completed: 0, saved_next: first_seq, times: std::collections::VecDeque::new(), issued: first_seq - 1 }),
            changed: Notify::new(),
            issued: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A ticket for event `seq`; `position` is where to resume after it. The event
    /// counts as made now (for the checkpoint lag in seconds).
    pub fn ticket(self: &Arc<Self>, seq: u64, position: Option<Position>) -> Ticket {
        self.ticket_at(seq, position, crate::deadletter::now_ms())
    }

    /// Like [`Tracker::ticket`], for an event made at `time_ms` at its source (a
    /// MongoDB change's wallTime or clusterTime).
    pub fn ticket_at(self: &Arc<Self>, seq: u64, position: Option<Position>, time_ms: i64) -> Ticket {
        self.ticket_marked(seq, position.map(Mark::from), time_ms)
    }

    /// Like [`Tracker::ticket_at`], with the position as a `Mark` (the MongoDB
    /// source makes one per change, and keeps a clone).
    pub fn ticket_marked(self: &Arc<Self>, seq: u64, position: Option<Mark>, time_ms: i64) -> Ticket {
        self.issued.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.state.lock().expect("tracker lock");
            st.issued = st.issued.max(seq);
            st.times.push_back((seq, time_ms));
        }
        Ticket(Arc::new(TicketInner { tracker: self.clone(), seq, position, held: AtomicBool::new(false) }))
    }

    fn done(&self, seq: u64, position: Option<Mark>) {
        let mut st = self.state.lock().expect("tracker lock");
        st.completed += 1;
        // The watermark passes an event done in order (the usual case) without the
        // map, then any done after it that waited there.
        let mut moved = false;
        let mut passing = if seq == st.next {
            Some(position)
        } else {
            st.done.insert(seq, position);
            None
        };
        while let Some(p) = passing.take().or_else(|| {
            let next = st.next;
            st.done.remove(&next)
        }) {
            if p.is_some() {
                st.position = p;
                moved = true;
            }
            st.next += 1;
        }
        while st.times.front().is_some_and(|&(seq, _)| seq < st.next) {
            st.times.pop_front();
        }
        if moved {
            st.version += 1;
            drop(st);
            self.changed.notify_one();
        }
    }

    /// The position to resume from, and its version.
    pub fn position(&self) -> (Option<Position>, u64) {
        let st = self.state.lock().expect("tracker lock");
        (st.position.as_ref().map(Mark::to_json), st.version)
    }

    /// Lowest sequence number not yet done.
    pub fn watermark(&self) -> u64 {
        self.state.lock().expect("tracker lock").next
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Every event of this run below the returned seq is done and can never be
    /// replayed (its position is saved, or the source never replays).
    pub fn saved_below(&self) -> u64 {
        let st = self.state.lock().expect("tracker lock");
        if self.replayable {
            st.saved_next
        } else {
            st.next
        }
    }

    /// The position to save, its version, and the watermark it covers.
    fn to_save(&self) -> (Option<Position>, u64, u64) {
        let st = self.state.lock().expect("tracker lock");
        (st.position.as_ref().map(Mark::to_json), st.version, st.next)
    }

    fn saved(&self, below: u64) {
        let mut st = self.state.lock().expect("tracker lock");
        st.saved_next = st.saved_next.max(below);
    }

    /// Events taken in but not done, and how far behind the checkpoint is in
    /// seconds: now minus the source time of the oldest event not done (for
    /// MongoDB the change's own time, so a backlog read after an outage shows its
    /// real age); 0 when nothing waits.
    pub fn lag(&self) -> (u64, f64) {
        let st = self.state.lock().expect("tracker lock");
        let behind = self.issued.load(Ordering::Relaxed).saturating_sub(st.completed);
        let oldest = st.times.iter().find(|&&(seq, _)| seq >= st.next && !st.done.contains_key(&seq)).map(|&(_, t)| t);
        let secs = match oldest {
            Some(t) if behind > 0 => (crate::deadletter::now_ms() - t).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        (behind, secs)
    }

    /// Every ticket handed out so far is done and its position saved: a safe
    /// point to hand the source over to another host (see `cluster`).
    pub fn settled(&self) -> bool {
        let st = self.state.lock().expect("tracker lock");
        st.next > st.issued && st.saved_next > st.issued
    }

    pub fn completed(&self) -> u64 {
        self.state.lock().expect("tracker lock").completed
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Proof that an event still has work pending. Clone it for each holder; the
/// event is done when the last clone is dropped.
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

impl Ticket {
    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.0.tracker
    }

    /// The event's work can neither be applied nor recorded in this run: it
    /// never completes (whatever other clones do), so the checkpoint stays below
    /// it and the event is replayed on the next start.
    pub fn hold(self) {
        self.0.held.store(true, Ordering::SeqCst);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A panic may have cut the holder's work short (an effect not yet handed
        // on): the event must not count as done, even when other clones finish.
        if std::thread::panicking() {
            self.0.held.store(true, Ordering::SeqCst);
        }
    }
}

struct TicketInner {
    tracker: Arc<Tracker>,
    seq: u64,
    position: Option<Mark>,
    held: AtomicBool,
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        if self.held.load(Ordering::SeqCst) || std::thread::panicking() {
            tracing::error!(source = %self.tracker.source, seq = self.seq, "event held: not done in this run; the checkpoint stays below it");
            return;
        }
        self.tracker.done(self.seq, self.position.take());
    }
}

/// Where positions are kept: one small JSON file per source in the state folder,
/// replaced atomically (write, fsync, rename).
#[derive(Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub fn new(dir: &Path) -> anyhow::Result<CheckpointStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create checkpoint folder {}: {e}", dir.display()))?;
        Ok(CheckpointStore { dir: dir.to_path_buf() })
    }

    fn path(&self, source: &str) -> PathBuf {
        self.dir.join(format!("{source}.json"))
    }

    pub fn load(&self, source: &str) -> anyhow::Result<Option<Position>> {
        let path = self.path(source);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("checkpoint {} is unreadable: {e}; delete it to start over from the source's policy", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read checkpoint {}: {e}", path.display())),
        }
    }

    pub fn save(&self, source: &str, position: &Position) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.path(source);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(position).expect("json value serializes"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

/// Where `run_saver` writes positions: the local `CheckpointStore`, or another
/// place a source keeps them (the MongoDB source's checkpoint collection).
pub trait PositionStore: Clone + Send + Sync + 'static {
    /// Saves `position` under `key` durably, or says why not.
    fn persist(&self, key: &str, position: Position) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

impl PositionStore for CheckpointStore {
    async fn persist(&self, key: &str, position: Position) -> anyhow::Result<()> {
        let (store, key) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || store.save(&key, &position)).await??;
        Ok(())
    }
}

/// Saves the tracker's position whenever it moves, at most once per `interval`,
/// until `stop` turns true; then saves a last time.
pub async fn run_saver<S: PositionStore>(tracker: Arc<Tracker>, store: S, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut saved = 0u64;
    loop {
        let stopping = *stop.borrow() || tokio::select! {
            _ = tracker.changed.notified() => false,
            _ = stop.changed() => true,
        };
        // Waits out the interval, but a stop cuts the wait short: shutdown must
        // not take up to `interval` longer.
        let stopping = stopping
            || tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = stop.changed() => true,
            };
        let (pos, version, below) = tracker.to_save();
        if version != saved {
            if let Some(p) = pos {
                match store.persist(&tracker.source, p).await {
                    Ok(()) => {
                        saved = version;
                        tracker.saved(below);
                    }
                    Err(e) => tracing::error!(source = %tracker.source, "cannot save checkpoint: {e:#}; will retry"),
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_lag_in_seconds_is_the_age_of_the_oldest_event_not_done_at_its_source() {
        let t = Tracker::new("s", 1, None);
        assert_eq!(t.lag(), (0, 0.0), "nothing waits");
        let now = crate::deadletter::now_ms();
        let a = t.ticket_at(1, Some(json!(1)), now - 60_000);
        let b = t.ticket_at(2, Some(json!(2)), now - 5_000);
        let (behind, secs) = t.lag();
        assert_eq!(behind, 2);
        assert!((60.0..70.0).contains(&secs), "the oldest waiting change is a minute old: {secs}");
        drop(a);
        let (behind, secs) = t.lag();
        assert_eq!(behind, 1);
        assert!((5.0..15.0).contains(&secs), "now the 5 s old one is the oldest: {secs}");
        drop(b);
        assert_eq!(t.lag(), (0, 0.0), "all done: not behind");
        // Done out of order: the older one still holds the lag.
        let c = t.ticket_at(3, Some(json!(3)), now - 30_000);
        let d = t.ticket_at(4, Some(json!(4)), now);
        drop(d);
        assert!(t.lag().1 >= 30.0, "{:?}", t.lag());
        drop(c);
        assert_eq!(t.lag(), (0, 0.0));
    }

    #[test]
    fn the_watermark_waits_for_the_oldest_event() {
        let t = Tracker::new("s", 1, None);
        let a = t.ticket(1, Some(json!(1)));
        let b = t.ticket(2, Some(json!(2)));
        let c = t.ticket(3, Some(json!(3)));
        drop(c);
        drop(b);
        assert_eq!(t.position().0, None, "event 1 is still pending");
        let a2 = a.clone();
        drop(a);
        assert_eq!(t.watermark(), 1, "a clone still holds event 1");
        drop(a2);
        assert_eq!(t.position().0, Some(json!(3)));
        assert_eq!(t.watermark(), 4);
    }

    #[test]
    fn a_ticket_dropped_while_panicking_never_completes_its_event() {
        let t = Tracker::new("s", 1, None);
        let first = t.ticket(1, Some(json!(1)));
        let other_holder = first.clone();
        let second = t.ticket(2, Some(json!(2)));
        let worker = std::thread::spawn(move || {
            let _mine = first;
            panic!("plugin worker bug");
        });
        assert!(worker.join().is_err());
        drop(other_holder); // the sink that had the other clone finishes normally
        drop(second);
        assert_eq!(t.watermark(), 1, "event 1 is held: the watermark never passes it");
        assert_eq!(t.position().0, None);
        assert_eq!(t.completed(), 1, "event 2 completed, event 1 did not");
        let third = t.ticket(3, Some(json!(3)));
        third.clone().hold();
        drop(third);
        assert_eq!(t.watermark(), 1);
    }

    #[tokio::test]
    async fn saved_below_moves_only_after_the_position_is_written() {
        let dir = std::env::temp_dir().join(format!("oplet-ckpt-saved-{}", std::process::id()));
        let store = CheckpointStore::new(&dir).unwrap();
        let t = Tracker::new("s", 1, None);
        drop(t.ticket(1, Some(json!(1))));
        assert_eq!((t.watermark(), t.saved_below()), (2, 1), "done, not yet saved");
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_tx.send(true).unwrap();
        run_saver(t.clone(), store, Duration::from_millis(1), stop_rx).await;
        assert_eq!(t.saved_below(), 2);
        let socket = Tracker::unreplayable("socket");
        drop(socket.ticket(1, None));
        assert_eq!(socket.saved_below(), 2, "client events are never replayed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_stop_during_the_interval_saves_at_once_and_ends_the_saver() {
        let dir = std::env::temp_dir().join(format!("oplet-ckpt-stop-{}", std::process::id()));
        let store = CheckpointStore::new(&dir).unwrap();
        let tracker = Tracker::new("s", 1, None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let saver = tokio::spawn(run_saver(tracker.clone(), store.clone(), Duration::from_secs(600), stop_rx));
        drop(tracker.ticket(1, Some(json!(1))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), saver).await.expect("the saver ends soon after stop").unwrap();
        assert_eq!(store.load("s").unwrap(), Some(json!(1)), "the last position is saved on the way out");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_saved_position_reads_back() {
        let dir = std::env::temp_dir().join(format!("oplet-ckpt-{}", std::process::id()));
        let store = CheckpointStore::new(&dir).unwrap();
        assert_eq!(store.load("m").unwrap(), None);
        store.save("m", &json!({"token": "abc"})).unwrap();
        assert_eq!(store.load("m").unwrap(), Some(json!({"token": "abc"})));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
