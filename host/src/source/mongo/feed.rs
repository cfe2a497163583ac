//! What one watch target hands the router: numbered events with tickets, and
//! progress marks while it is idle.
//!
//! Events are numbered per target (`Event::seq`): 1 for the first event the target
//! ever delivered, and on from the saved checkpoint after a restart, because every
//! position carries the seq of the last event at or before it (`"seq"` beside the
//! token). Tickets are numbered separately, because a mark (the server's
//! postBatchResumeToken on an empty batch, or a new stream's starting point) takes
//! a ticket too: it is done at once, so the checkpoint reaches it as soon as every
//! event before it is done, and a quiet collection's saved token keeps moving.

use crate::checkpoint::{Mark, Position, Tracker};
use crate::envelope::{Envelope, Event};
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Feed {
    source: String,
    label: String,
    tracker: Arc<Tracker>,
    tx: mpsc::Sender<Envelope>,
    next_ticket: u64,
    next_seq: u64,
    /// The position of the last event sent or mark made: a mark equal to it is
    /// skipped. Shared with that event's ticket rather than copied.
    last: Option<Mark>,
}

impl Feed {
    /// `saved`: the position the tracker starts from.
    pub fn new(source: &str, label: &str, tracker: Arc<Tracker>, tx: mpsc::Sender<Envelope>, saved: Option<Position>) -> Feed {
        let next_seq = saved.as_ref().and_then(position_seq).unwrap_or(0) + 1;
        Feed { source: source.into(), label: label.into(), tracker, tx, next_ticket: 1, next_seq, last: saved.map(Mark::from) }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// How logs name the target (`db.coll`, `db.*`, `*`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The position of the last event sent or mark made (at first: the saved one).
    pub fn last(&self) -> Option<Position> {
        self.last.as_ref().map(Mark::to_json)
    }

    /// Whether an event was sent or a mark made (or a position was saved before).
    pub fn has_last(&self) -> bool {
        self.last.is_some()
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sends `event` (its `seq` is set here, in its bytes too); once it and every
    /// earlier event are done, the checkpoint may move to `position`. Waits while
    /// the router is full. False when the router has stopped.
    pub async fn send(&mut self, event: Event, position: impl Into<Mark>) -> bool {
        let envelope = self.number(event, position.into());
        match self.tx.send(envelope).await {
            Ok(()) => true,
            Err(undelivered) => {
                // Dropping the ticket would count the event as done and let the
                // checkpoint pass it; keep it pending forever instead.
                std::mem::forget(undelivered.0.ticket);
                false
            }
        }
    }

    /// Sends `batch` in order, as `send` would one by one, but takes the queue's
    /// room for many events at once, so the router's dispatcher is woken once per
    /// batch rather than once per event (the initial snapshot's bulk reads). Empties
    /// `batch`. False when the router has stopped.
    pub async fn send_batch<P: Into<Mark>>(&mut self, batch: &mut Vec<(Event, P)>) -> bool {
        // A handle of its own: the permits borrow it while `self` numbers events.
        let tx = self.tx.clone();
        let room = tx.max_capacity().max(1);
        let mut events = batch.drain(..);
        loop {
            let n = events.len().min(room);
            if n == 0 {
                return true;
            }
            let Ok(permits) = tx.reserve_many(n).await else {
                // As in `send`: the events never taken hold the checkpoint.
                for (_, position) in events.by_ref() {
                    std::mem::forget(self.ticket(position.into(), crate::deadletter::now_ms()));
                }
                return false;
            };
            for (permit, (event, position)) in permits.zip(events.by_ref()) {
                permit.send(self.number(event, position.into()));
            }
        }
    }

    /// `event` numbered (its `seq` set, in its bytes too) with its ticket, ready to send.
    fn number(&mut self, mut event: Event, position: Mark) -> Envelope {
        if let Err(e) = event.set_seq(self.next_seq) {
            // Only for bytes this host did not write: the header still has the seq.
            tracing::error!(source = %self.source, stream = %self.label, seq = self.next_seq, "{e}; the event is sent with its old seq in its bytes");
        }
        let ticket = self.ticket(position, event.time_ms);
        Envelope { event: Arc::new(event), ticket }
    }

    /// The ticket of the next event, at `position` (its seq recorded there), made
    /// at `time_ms` at its source (for the lag).
    fn ticket(&mut self, position: Mark, time_ms: i64) -> crate::checkpoint::Ticket {
        let position = position.with_seq(self.next_seq);
        self.next_seq += 1;
        let ticket = self.tracker.ticket_marked(self.next_ticket, Some(position.clone()), time_ms);
        self.next_ticket += 1;
        self.last = Some(position);
        ticket
    }

    /// Lets the checkpoint move to `position` once everything sent before is done
    /// (also for a change that is not sent, such as one filtered out here).
    pub fn mark(&mut self, position: impl Into<Mark>) {
        let position = position.into().with_seq(self.next_seq - 1);
        if self.last.as_ref().map(Mark::to_json) == Some(position.to_json()) {
            return;
        }
        drop(self.tracker.ticket_marked(self.next_ticket, Some(position.clone()), crate::deadletter::now_ms()));
        self.next_ticket += 1;
        self.last = Some(position);
    }
}

/// The seq saved with a position: a plain number from a local checkpoint, or
/// `{"$numberLong": "N"}` / `{"$numberInt": "N"}` as a checkpoint read back from
/// a MongoDB collection comes (canonical extended JSON). None before seqs were saved.
pub fn position_seq(position: &Position) -> Option<u64> {
    let seq = position.get("seq")?;
    seq.as_u64().or_else(|| {
        let text = seq.get("$numberLong").or_else(|| seq.get("$numberInt"))?.as_str()?;
        text.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::EventBody;
    use serde_json::json;

    fn event() -> Event {
        Event::encode(&oplet_sdk::Event { seq: 0, id: "x".into(), source: "m".into(), time_ms: 0, body: EventBody::Other }).unwrap()
    }

    #[tokio::test]
    async fn events_count_from_one_and_marks_do_not_take_their_numbers() {
        let tracker = Tracker::new("m.a.b", 1, None);
        let (tx, mut rx) = mpsc::channel(8);
        let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, None);
        feed.mark(json!({"token": "t0"}));
        assert_eq!(tracker.position().0, Some(json!({"token": "t0", "seq": 0})), "a mark with nothing pending moves at once");
        assert!(feed.send(event(), json!({"token": "t1"})).await);
        feed.mark(json!({"token": "t2"}));
        assert!(feed.send(event(), json!({"token": "t3"})).await);
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert_eq!((first.event.seq, second.event.seq), (1, 2));
        assert_eq!(tracker.position().0, Some(json!({"token": "t0", "seq": 0})), "the mark waits for the event before it");
        drop(first);
        assert_eq!(tracker.position().0, Some(json!({"token": "t2", "seq": 1})));
        drop(second);
        assert_eq!(tracker.position().0, Some(json!({"token": "t3", "seq": 2})));
    }

    #[tokio::test]
    async fn a_batch_is_numbered_and_tracked_as_single_sends_are() {
        let tracker = Tracker::new("m.a.b", 1, None);
        let (tx, mut rx) = mpsc::channel(2);
        let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, None);
        let mut batch: Vec<(Event, Position)> = (1..=5).map(|i| (event(), json!({ "token": format!("t{i}") }))).collect();
        // Five events through a queue of two: the batch waits for room in turns.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = rx.recv().await {
                got.push(e);
            }
            got
        });
        assert!(feed.send_batch(&mut batch).await);
        assert!(batch.is_empty());
        assert!(feed.send(event(), json!({"token": "t6"})).await);
        drop(feed);
        let got = reader.await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|e| e.event.decode().unwrap().seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "in order, numbered in their bytes too");
        drop(got);
        assert_eq!(tracker.position().0, Some(json!({"token": "t6", "seq": 6})));
    }

    #[tokio::test]
    async fn a_batch_the_router_never_took_holds_the_checkpoint() {
        let tracker = Tracker::new("m.a.b", 1, None);
        let (tx, rx) = mpsc::channel(8);
        drop(rx);
        let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, None);
        let mut batch = vec![(event(), json!({"token": "t1"}))];
        assert!(!feed.send_batch(&mut batch).await);
        feed.mark(json!({"token": "t2"}));
        assert_eq!(tracker.position().0, None);
    }

    #[tokio::test]
    async fn a_repeated_mark_is_skipped() {
        let saved = json!({"token": "p", "seq": 0});
        let tracker = Tracker::new("m.a.b", 1, Some(saved.clone()));
        let (tx, _rx) = mpsc::channel(8);
        let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, Some(saved));
        feed.mark(json!({"token": "p"}));
        assert_eq!(tracker.position().1, 0, "the saved position is not a change");
        feed.mark(json!({"token": "q"}));
        assert_eq!(tracker.position(), (Some(json!({"token": "q", "seq": 0})), 1));
    }

    #[tokio::test]
    async fn seq_goes_on_from_the_saved_position() {
        for saved in [json!({"token": "p", "seq": 41}), json!({"token": "p", "seq": {"$numberLong": "41"}}), json!({"token": "p", "seq": {"$numberInt": "41"}})] {
            let tracker = Tracker::new("m.a.b", 1, Some(saved.clone()));
            let (tx, mut rx) = mpsc::channel(8);
            let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, Some(saved));
            assert!(feed.send(event(), json!({"token": "t"})).await);
            let sent = rx.recv().await.unwrap();
            assert_eq!((sent.event.seq, sent.event.decode().unwrap().seq), (42, 42), "header and bytes");
            drop(sent);
            assert_eq!(tracker.position().0, Some(json!({"token": "t", "seq": 42})));
        }
        let old = json!({"token": "p"});
        let feed = Feed::new("m", "a.b", Tracker::new("m.a.b", 1, None), mpsc::channel(1).0, Some(old));
        assert_eq!(feed.next_seq(), 1, "a checkpoint saved before seqs were kept starts at 1");
    }

    #[tokio::test]
    async fn an_event_the_router_never_took_holds_the_checkpoint() {
        let tracker = Tracker::new("m.a.b", 1, None);
        let (tx, rx) = mpsc::channel(8);
        drop(rx);
        let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, None);
        assert!(!feed.send(event(), json!({"token": "t1"})).await);
        feed.mark(json!({"token": "t2"}));
        assert_eq!(tracker.position().0, None);
    }
}
