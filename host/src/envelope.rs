//! `Event` and `Envelope`: an event on its way through the host.
//!
//! A source encodes each event ONCE into the MessagePack bytes plugins receive
//! (ABI v1, docs/abi.md §7.1); every plugin subscribed to it is handed those same
//! bytes (the `Arc<Event>` is what is shared). Beside the bytes the host keeps a
//! small header — what it filters, logs, dead-letters and audits by — so the hot
//! path never decodes the bytes; only rare paths (dead letters) do.

use crate::checkpoint::Ticket;
use oplet_sdk::{codec, EventBody, OperationType};
use std::sync::Arc;

/// An event as the host carries it: header fields plus the encoded event.
///
/// The field names `seq`, `id`, `source`, `time_ms` are those of `oplet_sdk::Event`,
/// so host code reads `event.seq` either way.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    /// Stable identity (a resume token, a file position), as in the bytes.
    pub id: String,
    /// The source's name in the host config (shared by its events).
    pub source: Arc<str>,
    pub time_ms: i64,
    /// What subscriptions are matched on.
    pub kind: Kind,
    /// The whole event in MessagePack, ABI v1. A `Vec` inside the shared
    /// `Arc<Event>` rather than an `Arc<[u8]>` of its own: making an `Arc<[u8]>`
    /// from the encoder's `Vec` copies it (16 MB for the largest document).
    bytes: Vec<u8>,
}

/// What the router filters on, read from the event when it was encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `db`, `coll`: shared by a stream's events rather than copied per event.
    Change { op: OperationType, db: Arc<str>, coll: Arc<str> },
    Socket { event: String },
    /// A kind a subscription cannot name (never produced by this host's sources).
    Other,
}

/// Where the 8 bytes of `seq` sit in events whose `seq` is written as a fixed-width
/// uint64 (the MongoDB source's, numbered after they are encoded): after the fixmap
/// header (1), the key "seq" (4) and the uint64 marker (1).
pub const SEQ_AT: usize = 1 + 4 + 1;

/// The bytes every fixed-width-seq event starts with: a 5-entry map, "seq", uint64.
const SEQ_PREFIX: [u8; SEQ_AT] = [0x85, 0xa3, b's', b'e', b'q', 0xcf];

impl Event {
    /// Encodes an SDK event (JSON lines, Socket.IO, `plugin test`): integers in
    /// their smallest encoding, exactly as `oplet_sdk::codec` writes them.
    pub fn encode(event: &oplet_sdk::Event) -> Result<Event, String> {
        let bytes = codec::encode(event).map_err(|e| format!("cannot encode event {} (seq {}): {e}", event.id, event.seq))?;
        let kind = match &event.body {
            EventBody::Change(c) => Kind::Change { op: c.op.clone(), db: c.db.as_str().into(), coll: c.coll.as_str().into() },
            EventBody::Socket(s) => Kind::Socket { event: s.event.clone() },
            _ => Kind::Other,
        };
        Ok(Event { seq: event.seq, id: event.id.clone(), source: event.source.as_str().into(), time_ms: event.time_ms, kind, bytes })
    }

    /// A stand-in for an event that could not be read, made only to be dead-lettered:
    /// if even it cannot be encoded, its header is kept and the record says so.
    pub fn placeholder(event: &oplet_sdk::Event) -> Event {
        Event::encode(event).unwrap_or_else(|_| Event {
            seq: event.seq,
            id: event.id.clone(),
            source: event.source.as_str().into(),
            time_ms: event.time_ms,
            kind: Kind::Other,
            bytes: Vec::new(),
        })
    }

    /// An event whose bytes were written elsewhere (the MongoDB transcoder); the
    /// header must say what the bytes say.
    pub fn from_parts(seq: u64, id: String, source: Arc<str>, time_ms: i64, kind: Kind, bytes: Vec<u8>) -> Event {
        Event { seq, id, source, time_ms, kind, bytes }
    }

    /// The MessagePack bytes handed to plugins.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Numbers the event, in the header and in the bytes. Bytes with a fixed-width
    /// `seq` (`SEQ_AT`) are patched in place; others are decoded and re-encoded
    /// (not on any hot path: SDK-encoded events are numbered before they are encoded).
    pub fn set_seq(&mut self, seq: u64) -> Result<(), String> {
        self.seq = seq;
        if self.bytes.len() >= SEQ_AT + 8 && self.bytes[..SEQ_AT] == SEQ_PREFIX {
            self.bytes[SEQ_AT..SEQ_AT + 8].copy_from_slice(&seq.to_be_bytes());
            return Ok(());
        }
        let mut event = self.decode()?;
        event.seq = seq;
        self.bytes = codec::encode(&event).map_err(|e| format!("cannot encode event {} (seq {seq}): {e}", self.id))?;
        Ok(())
    }

    /// The owned event, decoded from the bytes: for rare paths (dead letters).
    pub fn decode(&self) -> Result<oplet_sdk::Event, String> {
        codec::decode(&self.bytes).map_err(|e| format!("cannot decode event {} (seq {}): {e}", self.id, self.seq))
    }
}

pub struct Envelope {
    pub event: Arc<Event>,
    pub ticket: Ticket,
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, SocketEvent, Value};

    fn change() -> oplet_sdk::Event {
        oplet_sdk::Event {
            seq: 3,
            id: "e3".into(),
            source: "events".into(),
            time_ms: 7,
            body: EventBody::Change(Change { op: OperationType::Insert, db: "app".into(), coll: "orders".into(), ..Default::default() }),
        }
    }

    #[test]
    fn an_sdk_event_is_encoded_once_with_its_header() {
        let owned = change();
        let e = Event::encode(&owned).unwrap();
        assert_eq!((e.seq, e.id.as_str(), &*e.source, e.time_ms), (3, "e3", "events", 7));
        assert_eq!(e.kind, Kind::Change { op: OperationType::Insert, db: "app".into(), coll: "orders".into() });
        assert_eq!(e.bytes(), codec::encode(&owned).unwrap().as_slice(), "the SDK's exact bytes");
        assert_eq!(e.decode().unwrap(), owned);
        let socket = oplet_sdk::Event {
            body: EventBody::Socket(SocketEvent { client: "c".into(), event: "hi".into(), payload: Value::Null }),
            ..change()
        };
        assert_eq!(Event::encode(&socket).unwrap().kind, Kind::Socket { event: "hi".into() });
    }

    #[test]
    fn set_seq_patches_fixed_width_bytes_and_re_encodes_others() {
        let mut e = Event::encode(&change()).unwrap();
        e.set_seq(300).unwrap();
        assert_eq!((e.seq, e.decode().unwrap().seq), (300, 300));
        // Fixed width, as the MongoDB transcoder writes it: patched in place.
        let mut bytes = SEQ_PREFIX.to_vec();
        bytes.extend_from_slice(&0u64.to_be_bytes());
        let mut tail = codec::encode(&change()).unwrap();
        // Drop the SDK's map header, "seq" and its 1-byte value (3): 6 bytes.
        tail.drain(..SEQ_AT);
        bytes.extend_from_slice(&tail);
        let mut fixed = Event::from_parts(0, "e3".into(), "events".into(), 7, Kind::Other, bytes);
        let len = fixed.bytes().len();
        fixed.set_seq(u64::MAX).unwrap();
        assert_eq!(fixed.bytes().len(), len, "patched, not re-encoded");
        assert_eq!(fixed.decode().unwrap().seq, u64::MAX);
    }
}
