//! What one watch target hands the router: numbered events with tickets, and
//! progress marks while it is idle.
//!
//! Events are numbered from 1 per target (`Event::seq`). Tickets are numbered
//! separately, because a mark (the server's postBatchResumeToken on an empty batch,
//! or a new stream's starting point) takes a ticket too: it is done at once, so the
//! checkpoint reaches it as soon as every event before it is done, and a quiet
//! collection's saved token keeps moving and never ages out of the oplog.

use crate::checkpoint::{Position, Tracker};
use crate::envelope::Envelope;
use oplet_sdk::Event;
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Feed {
    source: String,
    label: String,
    tracker: Arc<Tracker>,
    tx: mpsc::Sender<Envelope>,
    next_ticket: u64,
    next_seq: u64,
    /// The position of the last event sent or mark made: a mark equal to it is skipped.
    last: Option<Position>,
}

impl Feed {
    /// `saved`: the position the tracker starts from.
    pub fn new(source: &str, label: &str, tracker: Arc<Tracker>, tx: mpsc::Sender<Envelope>, saved: Option<Position>) -> Feed {
        Feed { source: source.into(), label: label.into(), tracker, tx, next_ticket: 1, next_seq: 1, last: saved }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// How logs name the target (`db.coll`, `db.*`, `*`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The position of the last event sent or mark made (at first: the saved one).
    pub fn last(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sends `event` (its `seq` is set here); once it and every earlier event are
    /// done, the checkpoint may move to `position`. Waits while the router is full.
    /// False when the router has stopped.
    pub async fn send(&mut self, mut event: Event, position: Position) -> bool {
        event.seq = self.next_seq;
        self.next_seq += 1;
        let ticket = self.tracker.ticket(self.next_ticket, Some(position.clone()));
        self.next_ticket += 1;
        self.last = Some(position);
        match self.tx.send(Envelope { event: Arc::new(event), ticket }).await {
            Ok(()) => true,
            Err(undelivered) => {
                // Dropping the ticket would count the event as done and let the
                // checkpoint pass it; keep it pending forever instead.
                std::mem::forget(undelivered.0.ticket);
                false
            }
        }
    }

    /// Lets the checkpoint move to `position` once everything sent before is done
    /// (also for a change that is not sent, such as one filtered out here).
    pub fn mark(&mut self, position: Position) {
        if self.last.as_ref() == Some(&position) {
            return;
        }
        drop(self.tracker.ticket(self.next_ticket, Some(position.clone())));
        self.next_ticket += 1;
        self.last = Some(position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::EventBody;
    use serde_json::json;

    fn event() -> Event {
        Event { seq: 0, id: "x".into(), source: "m".into(), time_ms: 0, body: EventBody::Other }
    }

    #[tokio::test]
    async fn events_count_from_one_and_marks_do_not_take_their_numbers() {
        let tracker = Tracker::new("m.a.b", 1, None);
        let (tx, mut rx) = mpsc::channel(8);
        let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, None);
        feed.mark(json!({"token": "t0"}));
        assert_eq!(tracker.position().0, Some(json!({"token": "t0"})), "a mark with nothing pending moves at once");
        assert!(feed.send(event(), json!({"token": "t1"})).await);
        feed.mark(json!({"token": "t2"}));
        assert!(feed.send(event(), json!({"token": "t3"})).await);
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        assert_eq!((first.event.seq, second.event.seq), (1, 2));
        assert_eq!(tracker.position().0, Some(json!({"token": "t0"})), "the mark waits for the event before it");
        drop(first);
        assert_eq!(tracker.position().0, Some(json!({"token": "t2"})));
        drop(second);
        assert_eq!(tracker.position().0, Some(json!({"token": "t3"})));
    }

    #[tokio::test]
    async fn a_repeated_mark_is_skipped() {
        let tracker = Tracker::new("m.a.b", 1, Some(json!("p")));
        let (tx, _rx) = mpsc::channel(8);
        let mut feed = Feed::new("m", "a.b", tracker.clone(), tx, Some(json!("p")));
        feed.mark(json!("p"));
        assert_eq!(tracker.position().1, 0, "the saved position is not a change");
        feed.mark(json!("q"));
        assert_eq!(tracker.position(), (Some(json!("q")), 1));
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
