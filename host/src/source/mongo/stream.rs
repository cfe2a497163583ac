//! One change stream, kept open: open, read, reconnect, resume.
//!
//! The stream starts after the saved token (or now, without one), hands each
//! change to the feed, and marks the server's postBatchResumeToken on empty
//! batches. When the server goes away it reopens after the last change read, with
//! exponential backoff and jitter, logging each state change. A token too old for
//! the server follows `on_history_lost` and is never retried; a server without
//! change streams ends the stream as `Unsupported` so the caller can poll instead.

use super::checkpoints::{position_token, resume_token_position};
use super::convert::Converter;
use super::feed::Feed;
use super::retry::{self, Failure};
use super::{BeforeChange, FullDocument, OnHistoryLost, Shared, Target};
use crate::checkpoint::Position;
use mongodb::bson::{Document, RawDocumentBuf};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::options::{ChangeStreamOptions, FullDocumentBeforeChangeType, FullDocumentType};
use oplet_sdk::{Change, Event, EventBody, OperationType, Value};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub enum Ended {
    /// `stop` turned true.
    Stopped,
    /// The server refuses `$changeStream` here.
    Unsupported(mongodb::error::Error),
}

pub async fn run(
    shared: &Shared,
    target: &Target,
    feed: &mut Feed,
    saved: Option<Position>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    let cfg = &shared.cfg;
    let mut not_a_token = saved.as_ref().filter(|p| position_token(p).is_none());
    let mut conv = Converter::new(feed.source(), target);
    let mut backoff = cfg.reconnect.backoff();
    let mut down_since: Option<Instant> = None;
    let mut idle = IdlePause::new(cfg.max_await_ms, cfg.idle_pause_min_ms, cfg.idle_pause_max_ms);
    // After a lost history, the next stream starts from now whatever was read before.
    let mut from_now = false;
    loop {
        // Resume after the last change read (or mark made): the feed knows it.
        let token = if from_now { None } else { feed.last().as_ref().and_then(position_token) };
        let opened = tokio::select! {
            r = open(shared, target, token.clone()) => r,
            _ = stop.wait_for(|s| *s) => return Ok(Ended::Stopped),
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => match retry::classify(&e) {
                Failure::HistoryLost => {
                    from_now = history_lost(shared, feed, token.is_some(), &e)?;
                    continue;
                }
                Failure::Unsupported => return Ok(Ended::Unsupported(e)),
                Failure::Transient => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        source = %feed.source(), stream = %feed.label(),
                        "cannot open the change stream ({}); retrying in {delay:.1?} (attempt {}, down for {:.1?})",
                        retry::describe(&e), backoff.attempts(), since.elapsed()
                    );
                    if !retry::sleep_unless_stopped(delay, stop).await {
                        return Ok(Ended::Stopped);
                    }
                    continue;
                }
                Failure::Fatal => {
                    return Err(crate::exit::fatal(retry::fatal_cause(&e), format!("the server refuses the change stream: {}", retry::describe(&e))))
                }
            },
        };
        from_now = false;
        if let Some(p) = not_a_token.take() {
            tracing::warn!(
                source = %feed.source(), stream = %feed.label(),
                "the saved position {p} is not a change-stream resume token (was this collection polled before?); changes since it are not replayed"
            );
        }
        let from = match (&token, feed.has_last()) {
            (Some(_), _) => "resuming after the last change read",
            (None, true) => "starting from now",
            (None, false) => "starting from now (no checkpoint yet)",
        };
        match down_since.take() {
            Some(since) => tracing::info!(
                source = %feed.source(), stream = %feed.label(),
                "reconnected after {:.1?} and {} attempt(s); {from}", since.elapsed(), backoff.attempts()
            ),
            None => tracing::info!(source = %feed.source(), stream = %feed.label(), "watching the change stream; {from}"),
        }
        // Where this stream starts is a position too: saved at once, so a restart
        // before the first change resumes here instead of at a later "now".
        mark_resume_token(&stream, feed);

        let mut pending: Vec<(crate::envelope::Event, crate::checkpoint::Mark)> = Vec::with_capacity(HANDOFF_BATCH);
        loop {
            if !stream.is_alive() {
                if !feed.send_batch(&mut pending).await {
                    return Ok(Ended::Stopped);
                }
                // The server closed the cursor (after an invalidate: a drop or rename).
                // Reopen after its last token, the closing batch's postBatchResumeToken.
                let before = feed.last();
                mark_resume_token(&stream, feed);
                tracing::info!(source = %feed.source(), stream = %feed.label(), "the server closed the change stream; reopening after its last token");
                if feed.last() == before {
                    // Closed again at the same place: not a loop to run at full speed.
                    if !retry::sleep_unless_stopped(backoff.next_delay(), stop).await {
                        return Ok(Ended::Stopped);
                    }
                }
                break;
            }
            let mut asked = Instant::now();
            // A change already in the driver's batch is ready at the first poll: it
            // joins `pending`, and the batch is handed on when the next read would
            // wait for the server (or is full), so the router is woken once per
            // batch rather than once per change. A change read alone goes at once.
            let next = {
                let read = stream.next_if_any();
                tokio::pin!(read);
                let first = std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))).await;
                match first {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => {
                        if !pending.is_empty() {
                            if !feed.send_batch(&mut pending).await {
                                return Ok(Ended::Stopped);
                            }
                            // The server's answer time (for the idle pause) starts now.
                            asked = Instant::now();
                        }
                        tokio::select! {
                            r = read => r,
                            _ = stop.wait_for(|s| *s) => return Ok(Ended::Stopped),
                        }
                    }
                }
            };
            if !matches!(next, Ok(Some(_))) && !pending.is_empty() && !feed.send_batch(&mut pending).await {
                return Ok(Ended::Stopped);
            }
            match next {
                Ok(Some(raw)) => {
                    backoff.reset();
                    idle.reset();
                    match conv.convert(&raw) {
                        Ok(ready) => {
                            pending.push(ready);
                            if pending.len() >= HANDOFF_BATCH && !feed.send_batch(&mut pending).await {
                                return Ok(Ended::Stopped);
                            }
                        }
                        Err(bad) => {
                            // In order: what was read before it goes first.
                            if !feed.send_batch(&mut pending).await || !dead_letter(shared, feed, &raw, bad).await {
                                return Ok(Ended::Stopped);
                            }
                        }
                    }
                    if *stop.borrow() {
                        return Ok(Ended::Stopped);
                    }
                }
                Ok(None) => {
                    backoff.reset();
                    // An empty batch: the server's postBatchResumeToken moves the
                    // checkpoint of a quiet (or filtered) stream.
                    mark_resume_token(&stream, feed);
                    if let Some(pause) = idle.after_empty(asked.elapsed(), feed) {
                        if !retry::sleep_unless_stopped(pause, stop).await {
                            return Ok(Ended::Stopped);
                        }
                    }
                }
                Err(e) => match retry::classify(&e) {
                    Failure::HistoryLost => {
                        from_now = history_lost(shared, feed, true, &e)?;
                        break;
                    }
                    Failure::Unsupported => return Ok(Ended::Unsupported(e)),
                    Failure::Transient => {
                        down_since = Some(Instant::now());
                        tracing::warn!(
                            source = %feed.source(), stream = %feed.label(),
                            "lost the change stream ({}); reconnecting with backoff, resuming after the last change read",
                            retry::describe(&e)
                        );
                        break;
                    }
                    Failure::Fatal => {
                        return Err(crate::exit::fatal(retry::fatal_cause(&e), format!("the change stream failed: {}", retry::describe(&e))))
                    }
                },
            }
        }
    }
}

/// Marks the driver's current resume token (after the last event, or the last
/// batch's postBatchResumeToken) as the feed's position.
fn mark_resume_token(stream: &ChangeStream<RawDocumentBuf>, feed: &mut Feed) {
    if let Some(p) = stream.resume_token().as_ref().and_then(resume_token_position) {
        feed.mark(p);
    }
}

/// Opens the stream after `token` (`startAfter`, which also passes an invalidate).
async fn open(shared: &Shared, target: &Target, token: Option<ResumeToken>) -> mongodb::error::Result<ChangeStream<RawDocumentBuf>> {
    let cfg = &shared.cfg;
    let mut options = ChangeStreamOptions::default();
    options.full_document = match cfg.full_document {
        FullDocument::Default => None,
        FullDocument::UpdateLookup => Some(FullDocumentType::UpdateLookup),
        FullDocument::WhenAvailable => Some(FullDocumentType::WhenAvailable),
        FullDocument::Required => Some(FullDocumentType::Required),
    };
    options.full_document_before_change = match cfg.full_document_before_change {
        BeforeChange::Off => None,
        BeforeChange::WhenAvailable => Some(FullDocumentBeforeChangeType::WhenAvailable),
        BeforeChange::Required => Some(FullDocumentBeforeChangeType::Required),
    };
    options.start_after = token;
    options.max_await_time = Some(Duration::from_millis(cfg.max_await_ms));
    options.batch_size = cfg.batch_size;
    let (client, stages) = (&shared.client, shared.stages.clone());
    let stream = match target {
        Target::Collection { db, coll } => {
            client.database(db).collection::<Document>(coll).watch().pipeline(stages).with_options(options).await?
        }
        Target::Database(db) => client.database(db).watch().pipeline(stages).with_options(options).await?,
        Target::Deployment => client.watch().pipeline(stages).with_options(options).await?,
    };
    Ok(stream.with_type::<RawDocumentBuf>())
}

/// Most changes converted and held before they are handed to the router together.
const HANDOFF_BATCH: usize = 256;

/// Dead-letters a change that cannot be read, and passes it.
/// False when the host is stopping.
async fn dead_letter(shared: &Shared, feed: &mut Feed, raw: &RawDocumentBuf, bad: super::convert::Unreadable) -> bool {
    tracing::error!(
        source = %feed.source(), stream = %feed.label(), event = bad.id.as_deref().unwrap_or("?"),
        "unreadable change event: {}; dead-lettered and skipped", bad.error
    );
    let placeholder = crate::envelope::Event::placeholder(&Event {
        seq: feed.next_seq(),
        id: bad.id.unwrap_or_default(),
        source: feed.source().to_string(),
        time_ms: crate::deadletter::now_ms(),
        body: EventBody::Change(Change {
            op: OperationType::Other("unreadable".into()),
            full_document: Some(Value::String(format!("{raw:?}"))),
            ..Default::default()
        }),
    });
    let stage = format!("source:{}", feed.source());
    if !shared.dead.record_retrying_async(stage, placeholder, bad.error).await {
        return false; // the host is stopping: the event is not passed
    }
    // Without a position (no readable token) there is nothing to pass it with;
    // the driver needs that token too, so a real server never sends one.
    if let Some(p) = bad.position {
        feed.mark(p);
    }
    true
}

/// What `on_history_lost` says to do: start the next stream from now (`Ok(true)`)
/// or stop with the error. `had_token`: whether the refused stream resumed from one.
fn history_lost(shared: &Shared, feed: &Feed, had_token: bool, e: &mongodb::error::Error) -> anyhow::Result<bool> {
    let what = format!(
        "the server no longer has the history after the saved resume token ({}): the changes made since the checkpoint was saved are gone from its oplog",
        retry::describe(e)
    );
    let lost = |message: String| crate::exit::fatal(crate::exit::Cause::MongoHistoryLost, message);
    if !had_token {
        return Err(lost(format!("{what}, although this stream had no token; not retrying")));
    }
    match shared.cfg.on_history_lost {
        OnHistoryLost::Fail => Err(lost(format!(
            "{what}. on_history_lost = \"fail\": this stream stops and is not retried. To go on, set on_history_lost = \"start_from_now\" (the changes in the gap are skipped) or resync, then restart"
        ))),
        OnHistoryLost::StartFromNow => {
            tracing::error!(
                source = %feed.source(), stream = %feed.label(),
                "CHANGES SKIPPED: {what}. on_history_lost = \"start_from_now\": starting from now; changes in the gap are NOT delivered (resync what depends on them)"
            );
            Ok(true)
        }
    }
}

/// Pauses between empty batches on a server that answers them at once: a
/// MongoDB server holds an empty `getMore` open for `max_await_ms`, but a
/// compatible server may not, and asking again at once would spin. The first empty
/// batch after a change pauses `min`, each further one twice as long, up to `max`.
struct IdlePause {
    server_waits_over: Duration,
    min: Duration,
    max: Duration,
    current: Duration,
    said: bool,
}

impl IdlePause {
    fn new(max_await_ms: u64, min_ms: u64, max_ms: u64) -> IdlePause {
        IdlePause {
            server_waits_over: Duration::from_millis(max_await_ms / 2),
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms.max(min_ms)),
            current: Duration::ZERO,
            said: false,
        }
    }

    /// A change arrived: the next empty batch pauses `min` again.
    fn reset(&mut self) {
        self.current = Duration::ZERO;
    }

    /// The pause after an empty batch the server took `took` to answer, if any.
    fn after_empty(&mut self, took: Duration, feed: &Feed) -> Option<Duration> {
        if took >= self.server_waits_over || self.max.is_zero() {
            return None;
        }
        if !self.said {
            self.said = true;
            tracing::info!(
                source = %feed.source(), stream = %feed.label(),
                "the server answers an empty getMore at once instead of waiting for changes; pausing {:?} to {:?} between empty batches",
                self.min, self.max
            );
        }
        self.current = if self.current.is_zero() { self.min } else { (self.current * 2).min(self.max) };
        Some(self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_min_to_max_and_starts_over_after_a_change() {
        let tracker = crate::checkpoint::Tracker::new("m.a.b", 1, None);
        let feed = Feed::new("m", "a.b", tracker, tokio::sync::mpsc::channel(1).0, None);
        let mut p = IdlePause::new(1000, 5, 50);
        let fast = Duration::from_millis(1);
        let pauses: Vec<u64> = (0..6).map(|_| p.after_empty(fast, &feed).unwrap().as_millis() as u64).collect();
        assert_eq!(pauses, vec![5, 10, 20, 40, 50, 50]);
        p.reset();
        assert_eq!(p.after_empty(fast, &feed), Some(Duration::from_millis(5)));
        assert_eq!(p.after_empty(Duration::from_millis(600), &feed), None, "a server that waited needs no pause");
    }
}
