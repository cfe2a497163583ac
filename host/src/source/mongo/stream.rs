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
use super::retry::{self, Backoff, Failure};
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
    let mut token = saved.as_ref().and_then(position_token);
    let mut not_a_token = saved.as_ref().filter(|_| token.is_none());
    let mut conv = Converter::new(feed.source(), target);
    let mut backoff = Backoff::new(&cfg.reconnect);
    let mut down_since: Option<Instant> = None;
    let mut idle = IdlePause::new(cfg.max_await_ms, cfg.idle_pause_max_ms);
    let mut first_open = true;
    loop {
        let opened = tokio::select! {
            r = open(shared, target, token.clone()) => r,
            _ = stop.wait_for(|s| *s) => return Ok(Ended::Stopped),
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => match retry::classify(&e) {
                Failure::HistoryLost => {
                    token = history_lost(shared, feed, token, &e)?;
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
                Failure::Fatal => anyhow::bail!("the server refuses the change stream: {}", retry::describe(&e)),
            },
        };
        if let Some(p) = not_a_token.take() {
            tracing::warn!(
                source = %feed.source(), stream = %feed.label(),
                "the saved position {p} is not a change-stream resume token (was this collection polled before?); changes since it are not replayed"
            );
        }
        let from = match &token {
            Some(_) => "resuming after the last change read",
            None if first_open && saved.is_some() => "starting from now",
            None => "starting from now (no checkpoint yet)",
        };
        match down_since.take() {
            Some(since) => tracing::info!(
                source = %feed.source(), stream = %feed.label(),
                "reconnected after {:.1?} and {} attempt(s); {from}", since.elapsed(), backoff.attempts()
            ),
            None => tracing::info!(source = %feed.source(), stream = %feed.label(), "watching the change stream; {from}"),
        }
        first_open = false;
        // Where this stream starts is a position too: saved at once, so a restart
        // before the first change resumes here instead of at a later "now".
        if let Some(p) = stream.resume_token().as_ref().and_then(resume_token_position) {
            feed.mark(p);
        }

        loop {
            if !stream.is_alive() {
                // The server closed the cursor (after an invalidate: a drop or rename).
                // Reopen after the last token seen, which the driver also takes from
                // the closing batch's postBatchResumeToken.
                let last = stream.resume_token();
                tracing::info!(source = %feed.source(), stream = %feed.label(), "the server closed the change stream; reopening after its last token");
                if last.is_some() && last == token {
                    // Closed again at the same place: not a loop we run at full speed.
                    let delay = backoff.next_delay();
                    if !retry::sleep_unless_stopped(delay, stop).await {
                        return Ok(Ended::Stopped);
                    }
                }
                token = last.or(token);
                break;
            }
            let asked = Instant::now();
            let next = tokio::select! {
                r = stream.next_if_any() => r,
                _ = stop.wait_for(|s| *s) => return Ok(Ended::Stopped),
            };
            match next {
                Ok(Some(raw)) => {
                    backoff.reset();
                    idle.reset();
                    token = stream.resume_token().or(token);
                    if !deliver(shared, feed, &mut conv, &raw).await {
                        return Ok(Ended::Stopped);
                    }
                }
                Ok(None) => {
                    backoff.reset();
                    if let Some(t) = stream.resume_token() {
                        if let Some(p) = resume_token_position(&t) {
                            feed.mark(p);
                        }
                        token = Some(t);
                    }
                    if let Some(pause) = idle.after_empty(asked.elapsed(), feed) {
                        if !retry::sleep_unless_stopped(pause, stop).await {
                            return Ok(Ended::Stopped);
                        }
                    }
                }
                Err(e) => match retry::classify(&e) {
                    Failure::HistoryLost => {
                        token = history_lost(shared, feed, token, &e)?;
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
                    Failure::Fatal => anyhow::bail!("the change stream failed: {}", retry::describe(&e)),
                },
            }
        }
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

/// Converts and sends one change; an unreadable one is dead-lettered and passed.
/// False when the router has stopped.
async fn deliver(shared: &Shared, feed: &mut Feed, conv: &mut Converter, raw: &RawDocumentBuf) -> bool {
    let (id, position) = match conv.token(raw) {
        Ok(t) => t,
        Err(e) => {
            // The driver needs the token too, so this cannot happen with a real
            // server; without a token there is no position to pass it with.
            tracing::error!(source = %feed.source(), stream = %feed.label(), "skipping a change event: {e}");
            return true;
        }
    };
    match conv.event(raw, id.clone()) {
        Ok(event) => feed.send(event, position).await,
        Err(e) => {
            tracing::error!(source = %feed.source(), stream = %feed.label(), event = %id, "unreadable change event: {e}; dead-lettered and skipped");
            let placeholder = Event {
                seq: feed.next_seq(),
                id,
                source: feed.source().to_string(),
                time_ms: crate::deadletter::now_ms(),
                body: EventBody::Change(Change {
                    op: OperationType::Other("unreadable".into()),
                    full_document: Some(Value::String(format!("{raw:?}"))),
                    ..Default::default()
                }),
            };
            let (dead, stage) = (shared.dead.clone(), format!("source:{}", feed.source()));
            let _ = tokio::task::spawn_blocking(move || dead.record(&stage, &placeholder, &e)).await;
            feed.mark(position);
            true
        }
    }
}

/// What `on_history_lost` says to do; the new token (none: from now) or the error.
fn history_lost(
    shared: &Shared,
    feed: &Feed,
    token: Option<ResumeToken>,
    e: &mongodb::error::Error,
) -> anyhow::Result<Option<ResumeToken>> {
    let what = format!(
        "the server no longer has the history after the saved resume token ({}): the changes made since the checkpoint was saved are gone from its oplog",
        retry::describe(e)
    );
    if token.is_none() {
        anyhow::bail!("{what}, although this stream had no token; not retrying");
    }
    match shared.cfg.on_history_lost {
        OnHistoryLost::Fail => anyhow::bail!(
            "{what}. on_history_lost = \"fail\": this stream stops and is not retried. To go on, set on_history_lost = \"start_from_now\" (the changes in the gap are skipped) or resync, then restart"
        ),
        OnHistoryLost::StartFromNow => {
            tracing::error!(
                source = %feed.source(), stream = %feed.label(),
                "CHANGES SKIPPED: {what}. on_history_lost = \"start_from_now\": starting from now; changes in the gap are NOT delivered (resync what depends on them)"
            );
            Ok(None)
        }
    }
}

/// Pauses between empty batches on a server that answers them at once: a
/// MongoDB server holds an empty `getMore` open for `max_await_ms`, but a
/// compatible server may not, and asking again at once would spin. The pause
/// doubles from 1 ms up to `max` while batches stay empty, and resets on a change.
struct IdlePause {
    server_waits_over: Duration,
    max: Duration,
    current: Duration,
    said: bool,
}

impl IdlePause {
    fn new(max_await_ms: u64, max_ms: u64) -> IdlePause {
        IdlePause {
            server_waits_over: Duration::from_millis(max_await_ms / 2),
            max: Duration::from_millis(max_ms),
            current: Duration::ZERO,
            said: false,
        }
    }

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
                "the server answers an empty getMore at once instead of waiting for changes; pausing up to {:?} between empty batches",
                self.max
            );
        }
        self.current = (self.current * 2).clamp(Duration::from_millis(1), self.max);
        Some(self.current)
    }
}
