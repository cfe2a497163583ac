//! The initial snapshot and `oplet backfill`: the documents that already exist,
//! read in `_id` order and delivered as `snapshot` events through the same feed,
//! router and executors as changes.
//!
//! An initial snapshot first captures where the change stream stands (a stream's
//! postBatchResumeToken), then reads, then hands the stream that token, so no write
//! made during the read is missed (docs/mongo.md, "Initial snapshot"). Progress is
//! a position like a change's (`{"token": T, "snapshot": {"after": _id, "done": n}}`,
//! saved only once the event is applied), so a restart reads on after the last
//! applied `_id`. A backfill keeps its own position under its own key.

use super::feed::Feed;
use super::retry::{self, Failure};
use super::Shared;
use super::transcode::{self, ChangeHeader, Parts};
use crate::checkpoint::Position;
use crate::envelope::{Event, Kind};
use mongodb::bson::{doc, raw::RawBsonRef, Bson, Document, RawDocument, RawDocumentBuf};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use oplet_sdk::{Change, EventBody, OperationType, Value};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What `oplet backfill` asks of the source: deliver existing documents, stop.
#[derive(Debug, Clone)]
pub struct Backfill {
    /// The one plugin loaded; names the checkpoint key.
    pub plugin: String,
    /// `--filter`, parsed, and its text as given (kept in the position, so a
    /// different filter starts over instead of resuming someone else's run).
    pub filter: Option<Document>,
    pub filter_text: String,
    /// Draw a progress bar on stderr (it is a terminal).
    pub bar: bool,
}

/// How an initial snapshot ended.
pub enum Ended {
    /// Every document was handed on; the change stream starts from the captured
    /// point (the feed's last position). The holder keeps the captured stream open
    /// a little longer (see `hold`).
    Done(Option<ChangeStream<RawDocumentBuf>>),
    /// A checkpoint exists that is not a snapshot's: the stream already ran.
    NotNeeded,
    /// The server refuses change streams: without a point to start from, no
    /// snapshot (the caller polls instead, and says so).
    Unsupported,
    Stopped,
}

/// Runs the initial snapshot of `db.coll` if it has not finished yet.
pub(crate) async fn initial(
    shared: &Shared,
    db: &str,
    coll: &str,
    feed: &mut Feed,
    saved: Option<&Position>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    let (token, after, done) = match saved {
        None => (None, None, 0),
        Some(p) => match p.get("snapshot") {
            None => return Ok(Ended::NotNeeded),
            Some(s) => {
                let token = super::checkpoints::position_token(p);
                if token.is_none() {
                    anyhow::bail!("the saved snapshot position {p} has no resume token; delete the checkpoint of {db}.{coll} to snapshot again");
                }
                (token, after_of(s)?, done_of(s))
            }
        },
    };
    let resuming = token.is_some();
    // The start point is captured before the first read, and the stream opened for
    // it stays open while the snapshot runs: a server that prunes change history
    // behind its open streams (nx-27017) then keeps what the stream will need.
    let Some(holder) = capture(shared, db, coll, token, feed, stop).await? else {
        return Ok(Ended::Stopped);
    };
    let (holder, start) = match holder {
        Captured::Stream(s, start) => (Some(s), start),
        Captured::Unsupported => return Ok(Ended::Unsupported),
        Captured::Lost(start) => (None, start),
    };
    let run = token_text(&start);
    let label = format!("{db}.{coll}");
    match &after {
        Some(id) => tracing::info!(
            source = %feed.source(), stream = %label,
            "resuming the initial snapshot after _id {} ({done} document(s) done before)", id.clone().into_relaxed_extjson()
        ),
        None if resuming => tracing::info!(source = %feed.source(), stream = %label, "starting the initial snapshot again from the beginning (nothing was done)"),
        None => tracing::info!(source = %feed.source(), stream = %label, "starting the initial snapshot; changes from now on are delivered after it"),
    }
    let begin = json!({ "token": start.clone(), "snapshot": { "after": null, "done": 0 } });
    if !resuming {
        feed.mark(begin);
    }
    let position = |id: &Bson, done: u64| json!({ "token": start.clone(), "snapshot": { "after": id.clone().into_canonical_extjson(), "done": done } });
    let read = Read { db, coll, filter: None, run: &run, bar: false, stream: format!("{}.{label}", feed.source()) };
    match read_all(shared, &read, feed, after, done, &position, stop).await? {
        None => Ok(Ended::Stopped),
        Some(_) => {
            // Done: the checkpoint moves to the captured point once every snapshot
            // event is applied, and the stream starts there.
            feed.mark(json!({ "token": start }));
            Ok(Ended::Done(holder))
        }
    }
}

/// Keeps the stream that captured the start point open a while after the snapshot,
/// so that the change stream opening from that point finds its history (see
/// `initial`); dropped at `stop` or after a minute, whichever comes first.
pub fn hold(holder: Option<ChangeStream<RawDocumentBuf>>, mut stop: watch::Receiver<bool>) {
    if let Some(stream) = holder {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), stop.wait_for(|s| *s)).await;
            drop(stream);
        });
    }
}

/// Runs `oplet backfill` on `db.coll`: every document (matching the filter) goes
/// to the one loaded plugin. Resumes a run stopped with the same filter; a run that
/// finished, or had another filter, starts over. False when stopped.
pub(crate) async fn backfill(
    shared: &Shared,
    db: &str,
    coll: &str,
    feed: &mut Feed,
    saved: Option<&Position>,
    bf: &Backfill,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let label = format!("{db}.{coll}");
    let previous = saved.and_then(|p| p.get("backfill"));
    let same = previous.filter(|b| b.get("filter").and_then(|f| f.as_str()) == Some(bf.filter_text.as_str()));
    let (run, after, done) = match same {
        Some(b) if b.get("finished") != Some(&json!(true)) => {
            let run = b.get("run").and_then(|r| r.as_str()).unwrap_or("0").to_string();
            let (after, done) = (after_of(b)?, done_of(b));
            match &after {
                Some(id) => tracing::info!(
                    source = %feed.source(), stream = %label, plugin = %bf.plugin,
                    "resuming the backfill after _id {} ({done} document(s) done before)", id.clone().into_relaxed_extjson()
                ),
                None => tracing::info!(source = %feed.source(), stream = %label, plugin = %bf.plugin, "starting the backfill again from the beginning"),
            }
            (run, after, done)
        }
        _ => {
            let why = match previous {
                Some(b) if b.get("finished") == Some(&json!(true)) => " (the previous backfill finished; this is a new one)",
                Some(_) => " (the previous backfill had another --filter; this one starts over)",
                None => "",
            };
            tracing::info!(source = %feed.source(), stream = %label, plugin = %bf.plugin, "starting the backfill{why}");
            (crate::deadletter::now_ms().to_string(), None, 0)
        }
    };
    let filter_text = bf.filter_text.clone();
    let position = |id: &Bson, done: u64| {
        json!({ "backfill": { "run": run.clone(), "filter": filter_text.clone(), "after": id.clone().into_canonical_extjson(), "done": done } })
    };
    let tag = format!("backfill-{run}");
    let read = Read { db, coll, filter: bf.filter.as_ref(), run: &tag, bar: bf.bar, stream: format!("backfill.{}.{}.{label}", bf.plugin, feed.source()) };
    match read_all(shared, &read, feed, after, done, &position, stop).await? {
        None => Ok(false),
        Some(done) => {
            feed.mark(json!({ "backfill": { "run": run, "filter": bf.filter_text, "finished": true, "done": done } }));
            Ok(true)
        }
    }
}

enum Captured {
    /// The stream, and its starting point as a position's `token`.
    Stream(ChangeStream<RawDocumentBuf>, serde_json::Value),
    Unsupported,
    /// Resuming from a saved point the server no longer has: the snapshot goes on,
    /// and the stream that follows meets the loss and handles it (`on_history_lost`).
    Lost(serde_json::Value),
}

/// Opens a change stream on `db.coll` (after `token` when resuming) and reads its
/// starting point. None when stopped.
async fn capture(
    shared: &Shared,
    db: &str,
    coll: &str,
    token: Option<ResumeToken>,
    feed: &Feed,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Captured>> {
    let mut backoff = shared.cfg.reconnect.backoff();
    let saved = token.as_ref().and_then(super::checkpoints::resume_token_position).map(|p| p["token"].clone());
    loop {
        let mut options = mongodb::options::ChangeStreamOptions::default();
        options.start_after = token.clone();
        let collection = shared.client.database(db).collection::<Document>(coll);
        let open = collection.watch().with_options(options);
        let opened = tokio::select! {
            r = open => r,
            _ = stop.wait_for(|s| *s) => return Ok(None),
        };
        let e = match opened {
            Ok(mut stream) => {
                let mut start = stream.resume_token().as_ref().and_then(super::checkpoints::resume_token_position).map(|p| p["token"].clone());
                if start.is_none() {
                    // No postBatchResumeToken on the first reply: one empty getMore gives it.
                    let _ = stream.next_if_any().await;
                    start = stream.resume_token().as_ref().and_then(super::checkpoints::resume_token_position).map(|p| p["token"].clone());
                }
                let Some(start) = saved.clone().or(start) else {
                    return Err(crate::exit::fatal(
                        crate::exit::Cause::MongoNoChangeStreams,
                        format!("{db}.{coll}: the server gives no resume token for a new change stream, so the initial snapshot has no point to start the stream from; set snapshot = \"never\""),
                    ));
                };
                return Ok(Some(Captured::Stream(stream.with_type::<RawDocumentBuf>(), start)));
            }
            Err(e) => e,
        };
        match retry::classify(&e) {
            Failure::Unsupported => {
                tracing::warn!(
                    source = %feed.source(), stream = %format!("{db}.{coll}"),
                    "snapshot = \"initial\" needs a change stream to start from after the snapshot, and the server refuses them ({}); no snapshot", retry::describe(&e)
                );
                return Ok(Some(Captured::Unsupported));
            }
            Failure::HistoryLost if saved.is_some() => return Ok(Some(Captured::Lost(saved.clone().expect("checked")))),
            Failure::Transient => {
                let delay = backoff.next_delay();
                tracing::warn!(source = %feed.source(), stream = %format!("{db}.{coll}"), "cannot open a change stream to capture the snapshot's start point ({}); retrying in {delay:.1?}", retry::describe(&e));
                if !retry::sleep_unless_stopped(delay, stop).await {
                    return Ok(None);
                }
            }
            _ => return Err(crate::exit::fatal(retry::fatal_cause(&e), format!("{db}.{coll}: cannot capture the snapshot's start point: {}", retry::describe(&e)))),
        }
    }
}

/// Snapshot events handed to the router at once (`Feed::send_batch`). A batch
/// waits for at most one server round trip (a getMore) before it goes.
const SEND_BATCH: usize = 256;

/// Chunks of documents the reader task may hold ahead of the events made of them
/// (each chunk is at most SEND_BATCH documents): memory stays bounded whatever the
/// collection's size.
const READ_AHEAD: usize = 4;

/// Reads `filter` in `_id` order into chunks for `read_all`; ends after the last
/// document (dropping `chunks`), after sending a read error, or when `read_all`
/// is gone.
async fn read_ahead(
    coll: mongodb::Collection<RawDocumentBuf>,
    filter: Document,
    batch_size: u32,
    chunks: tokio::sync::mpsc::Sender<Result<Vec<RawDocumentBuf>, mongodb::error::Error>>,
) {
    let mut cursor = match coll.find(filter).sort(doc! { "_id": 1 }).batch_size(batch_size).await {
        Ok(c) => c,
        Err(e) => {
            // Nobody listening any more is fine: the snapshot was stopped.
            chunks.send(Err(e)).await.ok();
            return;
        }
    };
    let mut chunk = Vec::with_capacity(SEND_BATCH);
    loop {
        match cursor.advance().await {
            Ok(true) => {
                chunk.push(cursor.current().to_raw_document_buf());
                // A chunk waits for at most one more server round trip (a getMore).
                if chunk.len() >= SEND_BATCH {
                    if chunks.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
                        return;
                    }
                }
            }
            Ok(false) => {
                if !chunk.is_empty() {
                    chunks.send(Ok(chunk)).await.ok();
                }
                return;
            }
            Err(e) => {
                if !chunk.is_empty() && chunks.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
                    return;
                }
                chunks.send(Err(e)).await.ok();
                return;
            }
        }
    }
}

/// Aborts the reader task when the snapshot read ends or is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One read of a collection.
struct Read<'a> {
    db: &'a str,
    coll: &'a str,
    filter: Option<&'a Document>,
    /// Names the run in event ids (`db.coll:snapshot:RUN:ID`).
    run: &'a str,
    bar: bool,
    /// The `stream` label of its progress in `/metrics`.
    stream: String,
}

/// Reads every document after `after` in `_id` order and sends each as a
/// `snapshot` event at `position(_id, done)`, reopening the cursor after the last
/// `_id` read when the server goes away. The number done in all, or None if stopped.
async fn read_all(
    shared: &Shared,
    read: &Read<'_>,
    feed: &mut Feed,
    mut after: Option<Bson>,
    mut done: u64,
    position: &(dyn Fn(&Bson, u64) -> Position + Sync),
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<u64>> {
    let cfg = &shared.cfg;
    let label = format!("{}.{}", read.db, read.coll);
    let coll = shared.client.database(read.db).collection::<RawDocumentBuf>(read.coll);
    let total = estimate(&shared.client, read, feed, stop).await;
    let mut progress = Progress::new(feed.source(), &label, &read.stream, total, done, cfg.snapshot_progress_ms, read.bar);
    let mut backoff = cfg.reconnect.backoff();
    let mut pending: Vec<(Event, Position)> = Vec::with_capacity(SEND_BATCH);
    loop {
        let filter = query(read.filter, after.as_ref());
        // The cursor is read ahead by a task of its own, up to READ_AHEAD chunks:
        // the server prepares the next batch while this one is turned into events
        // and handed on (nx-27017 sat idle half the time when both were in turn).
        let (chunks, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<RawDocumentBuf>, mongodb::error::Error>>(READ_AHEAD);
        let reader = tokio::spawn(read_ahead(coll.clone(), filter, cfg.snapshot_batch, chunks));
        let _reader = AbortOnDrop(reader);
        let failure = loop {
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = stop.wait_for(|s| *s) => return Ok(None),
            };
            match next {
                Some(Ok(docs)) => {
                    backoff.reset();
                    for raw in &docs {
                        let Some(id) = raw.get("_id").ok().flatten().and_then(|v| Bson::try_from(v).ok()) else {
                            tracing::error!(source = %feed.source(), stream = %label, "a document without a readable _id; skipped (it cannot be resumed after or keyed)");
                            continue;
                        };
                        done += 1;
                        let at = position(&id, done);
                        match snapshot_event(feed.source(), read.db, read.coll, read.run, raw) {
                            Ok(event) => pending.push((event, at)),
                            Err((event, error)) => {
                                // What was read before it goes first: the mark must follow it.
                                if !feed.send_batch(&mut pending).await || !dead_letter(shared, read, feed, event, error, at).await {
                                    return Ok(None);
                                }
                            }
                        }
                        if pending.len() >= SEND_BATCH && !feed.send_batch(&mut pending).await {
                            return Ok(None);
                        }
                        after = Some(id);
                    }
                    progress.tick(done);
                }
                // The reader ended without an error: every document was read.
                None => {
                    if !feed.send_batch(&mut pending).await {
                        return Ok(None);
                    }
                    progress.finish(done);
                    return Ok(Some(done));
                }
                Some(Err(e)) => break e,
            }
        };
        // What was read before the failure is handed on before reading resumes after it.
        if !feed.send_batch(&mut pending).await {
            return Ok(None);
        }
        match retry::classify(&failure) {
            Failure::Transient => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    source = %feed.source(), stream = %label,
                    "the snapshot read failed ({}); reading on after the last _id in {delay:.1?} (attempt {})",
                    retry::describe(&failure), backoff.attempts()
                );
                if !retry::sleep_unless_stopped(delay, stop).await {
                    return Ok(None);
                }
            }
            _ => {
                return Err(crate::exit::fatal(retry::fatal_cause(&failure), format!("{label}: the snapshot read failed: {}", retry::describe(&failure))));
            }
        }
    }
}

/// Dead-letters an unreadable document and passes it. False when the host is
/// stopping.
async fn dead_letter(shared: &Shared, read: &Read<'_>, feed: &mut Feed, event: Event, error: String, at: Position) -> bool {
    tracing::error!(source = %feed.source(), stream = %format!("{}.{}", read.db, read.coll), event = %event.id, "unreadable document: {error}; dead-lettered and skipped");
    if !shared.dead.record_retrying_async(format!("source:{}", feed.source()), event, error).await {
        return false;
    }
    feed.mark(at);
    true
}

/// The one place a document read by a snapshot becomes an `Event` (its `seq` is
/// set when it is sent). On a document that cannot be read: a placeholder to
/// dead-letter, and why.
pub fn snapshot_event(source: &str, db: &str, coll: &str, run: &str, raw: &RawDocument) -> Result<Event, (Event, String)> {
    let raw_id = raw.get("_id").ok().flatten();
    let id_value = match raw_id {
        Some(id) => transcode::owned(id).unwrap_or_else(|e| Value::String(format!("unreadable _id: {e}"))),
        None => Value::Null,
    };
    let event_id = format!("{db}.{coll}:snapshot:{run}:{}", id_value.to_key_string());
    let time_ms = crate::deadletter::now_ms();
    // documentKey as a change stream sends it: `{_id: ...}`; the body is the document.
    let mut key = RawDocumentBuf::new();
    if let Some(id) = raw_id {
        key.append_ref("_id", id);
    }
    let parts = Parts { key: Some(RawBsonRef::Document(&key)), full: Some(RawBsonRef::Document(raw)), ..Parts::default() };
    let header = ChangeHeader { id: event_id, op: OperationType::Snapshot, db: db.into(), coll: coll.into(), time_ms };
    match transcode::change_event(source, &header, &parts, &mut |_| {}) {
        Ok(bytes) => {
            let ChangeHeader { id, op, db, coll, time_ms } = header;
            Ok(Event::from_parts(0, id, source.into(), time_ms, Kind::Change { op, db, coll }, bytes))
        }
        Err(e) => {
            let change = Change {
                op: OperationType::Snapshot,
                db: db.into(),
                coll: coll.into(),
                key: Value::Map([("_id".to_string(), id_value)].into_iter().collect()),
                full_document: Some(Value::String(format!("{raw:?}"))),
                ..Default::default()
            };
            let stand_in = oplet_sdk::Event { seq: 0, id: header.id.clone(), source: source.into(), time_ms, body: EventBody::Change(change) };
            Err((Event::placeholder(&stand_in), format!("unreadable document: {e}")))
        }
    }
}

/// The documents to read: the filter's, after `after` in `_id` order. `$gt`
/// compares within one BSON type only, so documents whose `_id` is of a type that
/// sorts later (a string after a number) are asked for by type too.
fn query(filter: Option<&Document>, after: Option<&Bson>) -> Document {
    let after = after.map(|id| {
        let mut either = vec![Bson::Document(doc! { "_id": { "$gt": id.clone() } })];
        either.extend(later_types(id).iter().map(|t| Bson::Document(doc! { "_id": { "$type": *t } })));
        match either.len() {
            1 => doc! { "_id": { "$gt": id.clone() } },
            _ => doc! { "$or": either },
        }
    });
    match (filter, after) {
        (None, None) => Document::new(),
        (Some(f), None) => f.clone(),
        (None, Some(a)) => a,
        (Some(f), Some(a)) => doc! { "$and": [f.clone(), a] },
    }
}

/// The `$type` names of the types MongoDB sorts after `id`'s type (`_id` is never
/// an array).
fn later_types(id: &Bson) -> &'static [&'static str] {
    const ORDER: [&str; 12] = ["null", "double", "string", "object", "binData", "objectId", "bool", "date", "timestamp", "regex", "maxKey", "minKey"];
    let bracket = match id {
        Bson::MinKey => return &ORDER[..11],
        Bson::Null | Bson::Undefined => 0,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 1,
        Bson::String(_) | Bson::Symbol(_) => 2,
        Bson::Document(_) => 3,
        Bson::Binary(_) => 4,
        Bson::ObjectId(_) => 5,
        Bson::Boolean(_) => 6,
        Bson::DateTime(_) => 7,
        Bson::Timestamp(_) => 8,
        Bson::RegularExpression(_) => 9,
        _ => return &[],
    };
    // Numbers: one clause per number type is not needed: `$gt` covers them all.
    let rest = &ORDER[bracket + 1..11];
    if bracket == 0 {
        // After null come the numbers, of four $type names.
        return &["double", "int", "long", "decimal", "string", "object", "binData", "objectId", "bool", "date", "timestamp", "regex", "maxKey"];
    }
    rest
}

/// The document count to show progress against: the collection's estimate without
/// a filter, a count with one; 0 (unknown) if the server does not answer.
async fn estimate(client: &mongodb::Client, read: &Read<'_>, feed: &Feed, stop: &mut watch::Receiver<bool>) -> u64 {
    let coll = client.database(read.db).collection::<Document>(read.coll);
    let counted = async {
        match read.filter {
            None => coll.estimated_document_count().await,
            Some(f) => coll.count_documents(f.clone()).await,
        }
    };
    let counted = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(30), counted) => r,
        _ = stop.wait_for(|s| *s) => return 0,
    };
    match counted {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(source = %feed.source(), stream = %format!("{}.{}", read.db, read.coll), "cannot count the documents ({}); progress is shown without a total", retry::describe(&e));
            0
        }
        Err(_) => 0,
    }
}

fn after_of(state: &serde_json::Value) -> anyhow::Result<Option<Bson>> {
    match state.get("after") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => Bson::try_from(v.clone()).map(Some).map_err(|e| anyhow::anyhow!("the saved snapshot position's last _id {v} is unreadable: {e}")),
    }
}

fn done_of(state: &serde_json::Value) -> u64 {
    let done = state.get("done");
    done.and_then(|d| d.as_u64())
        .or_else(|| done?.get("$numberLong").or_else(|| done?.get("$numberInt"))?.as_str()?.parse().ok())
        .unwrap_or(0)
}

/// A token as short text for event ids: its `_data`, or its JSON.
fn token_text(token: &serde_json::Value) -> String {
    token.get("_data").and_then(|d| d.as_str()).map(str::to_string).unwrap_or_else(|| token.to_string())
}

/// Documents done / estimated total, rate and ETA: a log line every
/// `snapshot_progress_ms`, a bar on a terminal, and gauges in `/metrics`.
struct Progress {
    gauges: crate::metrics::SnapshotGauges,
    /// When the rate gauge was last set.
    last_rate: Instant,
    source: String,
    label: String,
    total: u64,
    done_before: u64,
    started: Instant,
    every: Duration,
    last_log: Instant,
    /// `done` at the last log line: the rate logged is the one since then.
    done_at_log: u64,
    bar: Option<Instant>,
}

impl Progress {
    fn new(source: &str, label: &str, stream: &str, total: u64, done_before: u64, every_ms: u64, bar: bool) -> Progress {
        let now = Instant::now();
        let gauges = crate::metrics::snapshot(stream);
        gauges.total(total);
        gauges.done(done_before);
        gauges.rate(0.0);
        tracing::info!(source = %source, stream = %label, "snapshot: about {total} document(s) to read ({done_before} done before)");
        Progress {
            gauges,
            last_rate: now,
            source: source.into(),
            label: label.into(),
            total,
            done_before,
            started: now,
            every: Duration::from_millis(every_ms),
            last_log: now,
            done_at_log: done_before,
            bar: bar.then_some(now),
        }
    }

    /// Documents per second in this run.
    fn rate(&self, done: u64) -> f64 {
        (done - self.done_before) as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn tick(&mut self, done: u64) {
        self.gauges.done(done);
        if done % 256 == 0 && self.last_rate.elapsed() >= Duration::from_millis(250) {
            self.last_rate = Instant::now();
            self.gauges.rate(self.rate(done));
        }
        if done == self.done_before + 1 {
            // Rates count from the first document, not from the count and the query.
            self.started = Instant::now();
            self.last_log = self.started;
        } else if self.last_log.elapsed() >= self.every {
            let rate = (done - self.done_at_log) as f64 / self.last_log.elapsed().as_secs_f64().max(1e-3);
            self.last_log = Instant::now();
            self.done_at_log = done;
            let eta = match self.total.checked_sub(done) {
                Some(left) if rate > 0.0 && self.total > 0 => format!("{:.0}s", left as f64 / rate),
                _ => "unknown".into(),
            };
            tracing::info!(source = %self.source, stream = %self.label, "snapshot progress: {done}/{} document(s), {rate:.0} docs/s, ETA {eta}", self.total);
        }
        if let Some(drawn) = self.bar {
            if drawn.elapsed() >= Duration::from_millis(200) {
                self.bar = Some(Instant::now());
                self.draw(done);
            }
        }
    }

    fn draw(&self, done: u64) {
        const WIDTH: u64 = 30;
        let filled = match self.total {
            0 => 0,
            t => (done.min(t) * WIDTH / t) as usize,
        };
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(WIDTH as usize - filled));
        let _ = write!(std::io::stderr(), "\r{} [{bar}] {done}/{} {:.0} docs/s ", self.label, self.total, self.rate(done));
    }

    fn finish(&mut self, done: u64) {
        if self.bar.is_some() {
            self.draw(done);
            let _ = writeln!(std::io::stderr());
        }
        let read = done - self.done_before;
        self.gauges.done(done);
        self.gauges.rate(self.rate(done));
        tracing::info!(
            source = %self.source, stream = %self.label,
            "snapshot done: read {read} document(s) in this run ({done} in all) in {:.1?}, {:.0} docs/s",
            self.started.elapsed(), self.rate(done)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{oid::ObjectId, rawdoc};

    #[test]
    fn a_document_becomes_a_snapshot_event_keyed_by_run_and_id() {
        let id = ObjectId::parse_str("65a1f0c2e4b0a1b2c3d4e5f6").unwrap();
        let raw = rawdoc! { "_id": id, "email": "a@x.io" };
        let e = snapshot_event("m", "app", "users", "nx:7", &raw).unwrap();
        assert_eq!(e.id, "app.users:snapshot:nx:7:65a1f0c2e4b0a1b2c3d4e5f6");
        let e = e.decode().unwrap();
        let EventBody::Change(c) = &e.body else { panic!("a change") };
        assert_eq!(c.op, OperationType::Snapshot);
        assert_eq!(c.key.get("_id").unwrap().to_key_string(), "65a1f0c2e4b0a1b2c3d4e5f6");
        assert_eq!(c.full_document.as_ref().unwrap().get("email"), Some(&Value::from("a@x.io")));
    }

    #[test]
    fn a_resumed_read_asks_for_later_ids_and_later_id_types() {
        assert_eq!(query(None, None), Document::new());
        let q = query(Some(&doc! { "k": 1 }), Some(&Bson::Int32(5)));
        let either = q.get_array("$and").unwrap()[1].as_document().unwrap().get_array("$or").unwrap().clone();
        assert_eq!(either[0], Bson::Document(doc! { "_id": { "$gt": 5 } }));
        assert_eq!(either[1], Bson::Document(doc! { "_id": { "$type": "string" } }), "strings sort after numbers");
        assert!(!either.iter().any(|c| c.as_document().unwrap().get_document("_id").unwrap().get_str("$type") == Ok("double")));
        assert_eq!(query(None, Some(&Bson::MaxKey)), doc! { "_id": { "$gt": Bson::MaxKey } });
        let after_null = later_types(&Bson::Null);
        assert!(after_null.contains(&"int") && after_null.contains(&"objectId"));
    }

    #[test]
    fn saved_progress_reads_back_from_either_store() {
        let local = json!({"after": {"$oid": "65a1f0c2e4b0a1b2c3d4e5f6"}, "done": 41});
        assert!(matches!(after_of(&local).unwrap(), Some(Bson::ObjectId(_))));
        assert_eq!(done_of(&local), 41);
        assert_eq!(done_of(&json!({"after": null, "done": {"$numberLong": "7"}})), 7);
        assert_eq!(after_of(&json!({"after": null})).unwrap(), None);
    }
}
