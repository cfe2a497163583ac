//! The audit sink: append-only JSON lines, fsynced once per batch, each record once.
//!
//! Records are keyed `plugin:event_id:index`. A record is never lost: a failed
//! write is rolled back and retried with backoff (the host reported degraded, the
//! tickets kept, so backpressure stops the sources) until it lands; only a host
//! that stops meanwhile leaves the events held, to be replayed on the next start.
//! De-duplication of replays is bounded by what can still be replayed: see
//! `Dedup` and docs/sinks.md ("Audit file").

use super::batch::{next_batch, BatchQueue, Receiver};
use crate::append::AppendFile;
use crate::checkpoint::{Ticket, Tracker};
use crate::health::Health;
use crate::envelope::Event;
use oplet_sdk::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The health component the audit sink reports as.
pub const COMPONENT: &str = "audit";

struct Item {
    key: String,
    line: String,
    seq: u64,
    ticket: Ticket,
}

pub struct AuditHandle {
    queue: BatchQueue<Item>,
}

impl AuditHandle {
    /// Opens (or creates) the audit file, cutting a torn tail, loads the keys
    /// that may still be replayed, and starts the writer thread.
    pub fn start(path: &Path, batch_max: usize, batch_ms: u64, queue: usize, health: Arc<Health>) -> anyhow::Result<AuditHandle> {
        let file = AppendFile::open(path, "audit file")?;
        let dedup = Dedup::load(path, file.len())?;
        let writer = Writer { file, dedup, batch_max: batch_max.max(1), batch: Duration::from_millis(batch_ms), health };
        let queue = BatchQueue::start("oplet-audit", queue, move |rx| writer.run(rx))?;
        Ok(AuditHandle { queue })
    }

    /// Queues one record; blocks while the writer is behind.
    pub fn append(&self, plugin: &str, event: &Arc<Event>, index: usize, record: Value, ticket: Ticket) {
        let key = record_key(plugin, event, index);
        let line = record_line(&key, plugin, event, &record, &ticket);
        let item = Item { key, line, seq: ticket.seq(), ticket };
        if let Err(item) = self.queue.send(item) {
            tracing::error!(plugin, seq = event.seq, "audit writer has stopped; record not written: the event is held (not checkpointed, replayed on the next start)");
            item.ticket.hold();
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

/// One audit line. `key`, `checkpoint` and `unsaved` come first so a start reads
/// them without parsing the record (which may be nested beyond any parser's
/// depth limit): `checkpoint` names the tracker of the event, `unsaved` how many
/// of its events (this one included) were not yet checkpointed when written.
fn record_line(key: &str, plugin: &str, event: &Event, record: &Value, ticket: &Ticket) -> String {
    let tracker = ticket.tracker();
    let unsaved = ticket.seq().saturating_add(1).saturating_sub(tracker.saved_below());
    let s = |v: &str| serde_json::to_string(v).expect("a string serializes");
    format!(
        "{{\"key\":{},\"checkpoint\":{},\"unsaved\":{unsaved},\"plugin\":{},\"source\":{},\"seq\":{},\"event_id\":{},\"time_ms\":{},\"record\":{}}}",
        s(key),
        s(tracker.source()),
        s(plugin),
        s(&event.source),
        event.seq,
        s(&event.id),
        event.time_ms,
        serde_json::to_string(record).expect("a Value serializes"),
    )
}

/// What the start needs from a line, read without parsing the record.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    key: String,
    /// `(checkpoint key, unsaved)`; absent in lines written before they existed.
    bound: Option<(String, u64)>,
}

/// Reads the leading fields of an audit line: `{"key":…,"checkpoint":…,"unsaved":N`,
/// or the older `{"event_id":…,"key":…` (serde_json's sorted keys).
fn read_head(line: &[u8]) -> Option<Head> {
    let mut rest = line.strip_prefix(b"{")?;
    let field = |name: &str, rest: &mut &[u8]| -> Option<serde_json::Value> {
        let prefix = format!("\"{name}\":");
        *rest = rest.strip_prefix(prefix.as_bytes())?;
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
        let v = values.next()?.ok()?;
        *rest = &rest[values.byte_offset()..];
        *rest = rest.strip_prefix(b",").unwrap_or(rest);
        Some(v)
    };
    if rest.starts_with(b"\"key\"") {
        let key = field("key", &mut rest)?.as_str()?.to_string();
        let checkpoint = field("checkpoint", &mut rest).and_then(|v| v.as_str().map(str::to_string));
        let unsaved = field("unsaved", &mut rest).and_then(|v| v.as_u64());
        return Some(Head { key, bound: checkpoint.zip(unsaved) });
    }
    field("event_id", &mut rest)?;
    let key = field("key", &mut rest)?.as_str()?.to_string();
    Some(Head { key, bound: None })
}

/// The keys of records whose events may still be replayed, and the mark: the
/// audit file offset before which every record's event is checkpointed.
///
/// At start only the lines after the mark are read. They form one entry that is
/// settled once, for each checkpoint key in it, this run's tracker of that key
/// has saved `unsaved` events past its first (all that can replay them). Each
/// batch of this run is an entry settled once its events are saved. Settled
/// entries leave memory; the mark moves over a settled prefix and is written to
/// `AUDIT.mark` now and then, so memory and start time follow the replay window.
struct Dedup {
    mark_path: PathBuf,
    mark: u64,
    mark_written: u64,
    mark_time: Instant,
    /// Shared with the entries' `keys`: each key is stored once.
    seen: HashSet<Arc<str>>,
    entries: VecDeque<Entry>,
    /// Trackers met in this run, by checkpoint key.
    trackers: HashMap<String, Arc<Tracker>>,
}

struct Entry {
    end: u64,
    keys: Vec<Arc<str>>,
    settled: bool,
    until: Until,
}

enum Until {
    /// Lines from an earlier run: per checkpoint key, events to see saved.
    /// `legacy`: some lines predate `unsaved`; they are kept until a clean stop.
    Start { needs: HashMap<String, u64>, legacy: bool },
    /// A batch of this run: per tracker, its highest seq in the batch.
    Batch(Vec<(Arc<Tracker>, u64)>),
}

impl Dedup {
    fn load(path: &Path, len: u64) -> anyhow::Result<Dedup> {
        let mark_path = mark_path(path);
        let mut mark = read_mark(&mark_path, path, len);
        let mut dedup = Dedup {
            mark_path,
            mark,
            mark_written: mark,
            mark_time: Instant::now(),
            seen: HashSet::new(),
            entries: VecDeque::new(),
            trackers: HashMap::new(),
        };
        if len == mark {
            return Ok(dedup);
        }
        let read_err = |e: std::io::Error| anyhow::anyhow!("cannot read audit file {}: {e}", path.display());
        let mut f = std::fs::File::open(path).map_err(read_err)?;
        f.seek(SeekFrom::Start(mark)).map_err(read_err)?;
        // Lines appended after this point are this run's, not the start's.
        let mut reader = std::io::Read::take(std::io::BufReader::new(f), len - mark);
        let mut needs: HashMap<String, u64> = HashMap::new();
        let mut legacy = false;
        let mut keys = Vec::new();
        let mut line = Vec::new();
        let started = Instant::now();
        while reader.read_until(b'\n', &mut line).map_err(read_err)? > 0 {
            match read_head(&line) {
                Some(head) => {
                    match head.bound {
                        Some((checkpoint, unsaved)) if unsaved > 0 => {
                            let need = needs.entry(checkpoint).or_default();
                            *need = (*need).max(unsaved);
                        }
                        Some(_) => {}
                        None => legacy = true,
                    }
                    let key: Arc<str> = head.key.into();
                    if dedup.seen.insert(key.clone()) {
                        keys.push(key);
                    }
                }
                None => tracing::warn!(path = %path.display(), offset = mark, "an audit line without a readable key: it cannot be de-duplicated"),
            }
            mark += line.len() as u64;
            line.clear();
        }
        tracing::info!(path = %path.display(), from = dedup.mark, records = keys.len(), "audit de-duplication: read the records that may be replayed in {:.1?}", started.elapsed());
        dedup.entries.push_back(Entry { end: len, keys, settled: false, until: Until::Start { needs, legacy } });
        Ok(dedup)
    }

    fn contains(&self, key: &str) -> bool {
        self.seen.contains(key)
    }

    fn meet(&mut self, tracker: &Arc<Tracker>) {
        if !self.trackers.contains_key(tracker.source()) {
            self.trackers.insert(tracker.source().to_string(), tracker.clone());
        }
    }

    /// Remembers a batch written up to `end`.
    fn written(&mut self, end: u64, keys: Vec<Arc<str>>, events: &[(Arc<Tracker>, u64)]) {
        self.seen.extend(keys.iter().cloned());
        self.entries.push_back(Entry { end, keys, settled: false, until: Until::Batch(events.to_vec()) });
    }

    /// Settles what is saved, frees its keys, moves the mark over the settled
    /// prefix, and writes it at most once a second (at once when `stopping`).
    fn settle(&mut self, stopping: bool) {
        let trackers = &self.trackers;
        for e in self.entries.iter_mut().filter(|e| !e.settled) {
            let done = match &e.until {
                Until::Batch(events) => events.iter().all(|(t, seq)| t.saved_below() > *seq),
                Until::Start { needs, legacy } => {
                    (!legacy || stopping)
                        && needs.iter().all(|(key, need)| {
                            trackers.get(key).is_some_and(|t| t.saved_below() >= t.first_seq().saturating_add(*need))
                        })
                }
            };
            if done {
                e.settled = true;
                for k in e.keys.drain(..) {
                    self.seen.remove(&*k);
                }
            }
        }
        while self.entries.front().is_some_and(|e| e.settled) {
            self.mark = self.entries.pop_front().expect("front exists").end;
        }
        if self.mark != self.mark_written && (stopping || self.mark_time.elapsed() >= Duration::from_secs(1)) {
            match write_mark(&self.mark_path, self.mark) {
                Ok(()) => self.mark_written = self.mark,
                // An old mark only means more to read at the next start.
                Err(e) => tracing::warn!(path = %self.mark_path.display(), "cannot write the audit de-duplication mark: {e}"),
            }
            self.mark_time = Instant::now();
        }
    }
}

fn mark_path(audit: &Path) -> PathBuf {
    let mut name = audit.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".mark");
    audit.with_file_name(name)
}

/// The saved mark, if it still fits the file: within it, at a line start.
fn read_mark(mark_path: &Path, audit: &Path, len: u64) -> u64 {
    let text = match std::fs::read_to_string(mark_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(path = %mark_path.display(), "cannot read the audit de-duplication mark ({e}); reading the whole audit file");
            return 0;
        }
    };
    let mark = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("offset").and_then(|o| o.as_u64()));
    let at_line_start = |m: u64| {
        m == 0 || {
            use std::io::Read;
            let mut b = [0u8];
            std::fs::File::open(audit).and_then(|mut f| f.seek(SeekFrom::Start(m - 1)).and_then(|_| f.read_exact(&mut b))).is_ok() && b[0] == b'\n'
        }
    };
    match mark {
        Some(m) if m <= len && at_line_start(m) => m,
        _ => {
            tracing::warn!(path = %mark_path.display(), audit = %audit.display(), "the audit de-duplication mark does not fit the audit file (replaced or cut?); reading the whole file");
            0
        }
    }
}

fn write_mark(path: &Path, offset: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("mark.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_json::json!({ "offset": offset }).to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

struct Writer {
    file: AppendFile,
    dedup: Dedup,
    batch_max: usize,
    batch: Duration,
    health: Arc<Health>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Item>) {
        while let Some(batch) = next_batch(&rx, self.batch_max, self.batch) {
            let (n, t) = (batch.len(), std::time::Instant::now());
            self.write(batch);
            crate::metrics::sink_batch("audit", n, t.elapsed());
            crate::metrics::effects("audit", "applied", n as u64);
            self.dedup.settle(false);
        }
        self.dedup.settle(true);
    }

    fn write(&mut self, batch: Vec<Item>) {
        let mut buf = String::new();
        let mut keys = Vec::new();
        let mut in_batch = HashSet::new();
        let mut events: Vec<(Arc<Tracker>, u64)> = Vec::new();
        for item in &batch {
            // Met even through a replayed record: the start's lines settle by it.
            self.dedup.meet(item.ticket.tracker());
            if self.dedup.contains(&item.key) || !in_batch.insert(item.key.as_str()) {
                continue; // written before: a replay
            }
            buf.push_str(&item.line);
            buf.push('\n');
            keys.push(Arc::from(item.key.as_str()));
            let tracker = item.ticket.tracker();
            match events.iter_mut().find(|(t, _)| Arc::ptr_eq(t, tracker)) {
                Some((_, seq)) => *seq = (*seq).max(item.seq),
                None => events.push((tracker.clone(), item.seq)),
            }
        }
        if buf.is_empty() {
            return; // dropping the batch releases the tickets: all already on disk
        }
        let path = self.file.path().to_path_buf();
        let file = &mut self.file;
        let res = self.health.retry_durably(COMPONENT, || {
            file.append(buf.as_bytes()).map_err(|e| format!("cannot write {} audit record(s) to {}: {e}", keys.len(), path.display()))
        });
        match res {
            Ok(()) => {
                self.dedup.written(self.file.len(), keys, &events);
                // Dropping the items releases their tickets: the records are on disk.
            }
            Err(e) => {
                tracing::error!("{e}; the host is stopping: {} event(s) held (not checkpointed, replayed on the next start)", batch.len());
                for item in batch {
                    item.ticket.hold();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{EventBody, SocketEvent};

    fn event(n: u64) -> Arc<Event> {
        Arc::new(
            Event::encode(&oplet_sdk::Event {
                seq: n,
                id: format!("events:{n}"),
                source: "events".into(),
                time_ms: 0,
                body: EventBody::Socket(SocketEvent { client: String::new(), event: "e".into(), payload: Value::Null }),
            })
            .unwrap(),
        )
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oplet-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    #[test]
    fn the_head_of_a_record_nested_beyond_serde_json_s_depth_limit_reads_back() {
        let tracker = Tracker::new("events", 1, None);
        let ticket = tracker.ticket(1, None);
        let mut deep = Value::Null;
        for _ in 0..600 {
            deep = Value::Array(vec![deep]);
        }
        let line = record_line("p:events:1:0", "p", &event(1), &deep, &ticket);
        assert_eq!(read_head(line.as_bytes()), Some(Head { key: "p:events:1:0".into(), bound: Some(("events".into(), 1)) }));
        let old = br#"{"event_id":"e:1","key":"p:e:1:0","plugin":"p","record":[[[1]]]}"#;
        assert_eq!(read_head(old), Some(Head { key: "p:e:1:0".into(), bound: None }));
        assert_eq!(read_head(b"garbage"), None);
    }

    /// Start time and memory follow the replay window, not the file: 1M records
    /// of which the last 1,000 may be replayed load 1,000 keys and read only
    /// their bytes.
    #[test]
    fn a_start_reads_only_what_may_still_be_replayed() {
        let path = temp("bounded");
        let tracker = Tracker::new("events", 1, None);
        let mut text = String::new();
        let mut mark = 0;
        for n in 1..=1_000_000u64 {
            let ticket = tracker.ticket(n, None);
            text.push_str(&record_line(&format!("p:events:{n}:0"), "p", &event(n), &Value::Int(n as i64), &ticket));
            text.push('\n');
            ticket.hold();
            if n == 999_000 {
                mark = text.len() as u64;
            }
        }
        std::fs::write(&path, &text).unwrap();
        write_mark(&mark_path(&path), mark).unwrap();
        let file = AppendFile::open(&path, "audit file").unwrap();
        let dedup = Dedup::load(&path, file.len()).unwrap();
        assert_eq!(dedup.seen.len(), 1_000, "only the records after the mark are loaded");
        assert!(dedup.contains("p:events:999001:0") && !dedup.contains("p:events:999000:0"));
        // Without a mark (a file from an older host) the whole file is read once.
        std::fs::remove_file(mark_path(&path)).unwrap();
        assert_eq!(Dedup::load(&path, file.len()).unwrap().seen.len(), 1_000_000);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    /// Saves `tracker`'s position as the host's saver does.
    async fn save(tracker: &Arc<Tracker>, dir: &Path) {
        let store = crate::checkpoint::CheckpointStore::new(dir).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(true);
        crate::checkpoint::run_saver(tracker.clone(), store, Duration::from_millis(1), stop_rx).await;
        drop(stop_tx);
    }

    #[tokio::test]
    async fn a_restart_keeps_the_keys_that_can_replay_until_their_source_saved_past_them() {
        let path = temp("settle");
        // The last run wrote events 1..=3 and crashed before saving any of them.
        let before = Tracker::new("events", 1, None);
        let mut text = String::new();
        for n in 1..=3 {
            let ticket = before.ticket(n, None);
            text.push_str(&record_line(&format!("p:events:{n}:0"), "p", &event(n), &Value::Null, &ticket));
            text.push('\n');
            ticket.hold();
        }
        std::fs::write(&path, &text).unwrap();
        let mut dedup = Dedup::load(&path, text.len() as u64).unwrap();
        assert_eq!(dedup.seen.len(), 3);
        // This run replays them: two saved are not enough, three are.
        let now = Tracker::new("events", 1, None);
        dedup.meet(&now);
        let ckpt = path.parent().unwrap().join("checkpoints");
        for n in 1..=2 {
            drop(now.ticket(n, Some(serde_json::json!(n))));
        }
        save(&now, &ckpt).await;
        dedup.settle(false);
        assert_eq!((dedup.seen.len(), dedup.mark), (3, 0), "event 3 may still replay its record");
        drop(now.ticket(3, Some(serde_json::json!(3))));
        save(&now, &ckpt).await;
        dedup.settle(true);
        assert_eq!((dedup.seen.len(), dedup.mark), (0, text.len() as u64), "nothing left that can replay");
        assert_eq!(read_mark(&mark_path(&path), &path, text.len() as u64), text.len() as u64, "the next start reads nothing");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_record_for_a_stopped_writer_holds_its_event() {
        let path = temp("stopped");
        let tracker = Tracker::new("events", 1, None);
        let audit = AuditHandle::start(&path, 64, 0, 16, Health::new()).unwrap();
        audit.shutdown().await;
        let ticket = tracker.ticket(1, Some(serde_json::json!(1)));
        audit.append("p", &event(1), 0, Value::Int(1), ticket); // a closed queue never blocks
        assert_eq!((tracker.watermark(), tracker.position().0), (1, None), "event 1 is held, not done");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_replay_writes_nothing_twice_and_saved_batches_leave_memory() {
        let path = temp("replay");
        let health = Health::new();
        let tracker = Tracker::new("events", 1, None);
        let audit = AuditHandle::start(&path, 64, 0, 16, health.clone()).unwrap();
        for n in 1..=3 {
            // The same record twice in one batch and across batches.
            audit.append("p", &event(n), 0, Value::Int(1), tracker.ticket(n, Some(serde_json::json!(n))));
            audit.append("p", &event(n), 0, Value::Int(1), tracker.ticket(n + 10, None));
        }
        audit.shutdown().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        // Events 1..3 are done but not saved: a restart still knows their keys.
        let file = AppendFile::open(&path, "audit file").unwrap();
        let dedup = Dedup::load(&path, file.len()).unwrap();
        assert_eq!(dedup.seen.len(), 3);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
