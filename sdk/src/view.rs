//! `EventView`: the event as a plugin reads it, borrowed from the input bytes.
//!
//! Parsing reads the header (seq, id, source, time, kind, operation, namespace,
//! document key) as numbers and `&str`s into the input, with no allocation, and
//! keeps each document as a [`RawValue`] whose fields are found on demand. The
//! owned [`Event`] stays available (`to_event`) for code that wants a tree.

use crate::event::{namespace_matches, Change, Event, EventBody, OperationType, SocketEvent};
use crate::raw::{head, split_value, Head, RawArray, RawError, RawMap, RawValue};

/// A borrowed, lazily read [`Event`].
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub seq: u64,
    pub id: &'a str,
    pub source: &'a str,
    pub time_ms: i64,
    pub body: BodyView<'a>,
    bytes: &'a [u8],
}

/// What happened: a change, a socket event, or a kind this SDK does not know.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum BodyView<'a> {
    Change(ChangeView<'a>),
    Socket(SocketView<'a>),
    /// A kind a newer host sends; the name of the kind.
    Other(&'a str),
}

/// A change, borrowed. Documents are [`RawValue`]s (maps when present).
#[derive(Debug, Clone, Copy)]
pub struct ChangeView<'a> {
    /// The operation type as the host wrote it (`"insert"`, `"update"`, ...;
    /// `"snapshot"` for an existing document read by a snapshot or backfill).
    pub op: &'a str,
    pub db: &'a str,
    pub coll: &'a str,
    /// The `documentKey`; nil when the event has none.
    pub key: RawValue<'a>,
    pub full_document: Option<RawValue<'a>>,
    pub updated_fields: Option<RawMap<'a>>,
    pub removed_fields: Option<RawArray<'a>>,
    pub before: Option<RawValue<'a>>,
}

/// A socket event, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct SocketView<'a> {
    pub client: &'a str,
    pub event: &'a str,
    pub payload: RawValue<'a>,
}

fn bad<T>(msg: impl Into<String>) -> Result<T, RawError> {
    Err(RawError(msg.into()))
}

// Parsing walks the event once, front to back: each map the view reads is entered
// in place (its header, then its entries) rather than first measured whole and then
// re-read, so a document is walked once, not once per level above it. Values the
// view keeps (documents, payloads) are measured once by `split_value` and kept as
// `RawValue`s; everything else is skipped the same way, so the whole input is still
// checked to be well-formed.

/// Reads the header of the map at the front of `rest` and moves past it: its entry count.
fn enter_map(rest: &mut &[u8], what: &str) -> Result<usize, RawError> {
    match head(rest)? {
        Head::Map(n, off) => {
            *rest = &rest[off..];
            Ok(n)
        }
        _ => bad(format!("{what} is not a MessagePack map")),
    }
}

/// The next key of a map being read in place, as bytes. The keys the view looks
/// for are ASCII, so a key equal to one needs no UTF-8 check; any other key is
/// checked by [`other_key`] (profiling showed the checks of known keys as a tenth
/// of a no-op plugin's call).
fn next_key<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], RawError> {
    if let Some(&b @ 0xa0..=0xbf) = rest.first() {
        let len = usize::from(b & 0x1f);
        if let Some(key) = rest.get(1..1 + len) {
            *rest = &rest[1 + len..];
            return Ok(key);
        }
    }
    let (k, tail) = split_value(rest)?;
    *rest = tail;
    match k.head() {
        Head::Str(off, len) => Ok(&k.as_bytes_raw()[off..off + len]),
        _ => bad(format!("{what} has a key that is not a UTF-8 string")),
    }
}

/// A key the view does not read: still an error when it is not UTF-8.
fn other_key(key: &[u8], what: &str) -> Result<(), RawError> {
    match std::str::from_utf8(key) {
        Ok(_) => Ok(()),
        Err(_) => bad(format!("{what} has a key that is not a UTF-8 string")),
    }
}

/// The next value, measured and checked whole.
fn next_value<'a>(rest: &mut &'a [u8]) -> Result<RawValue<'a>, RawError> {
    let (v, tail) = split_value(rest)?;
    *rest = tail;
    Ok(v)
}

fn string<'a>(v: RawValue<'a>, field: &str) -> Result<&'a str, RawError> {
    v.as_str().ok_or_else(|| RawError(format!("event field {field} is not a string")))
}

/// `nil` reads as absent, as the owned decode's `Option` does.
fn opt(v: RawValue<'_>) -> Option<RawValue<'_>> {
    (!v.is_null()).then_some(v)
}

impl<'a> EventView<'a> {
    /// Reads the header of the MessagePack `Event` in `bytes`. Documents are not
    /// decoded; their bytes are only checked to be whole (their length walked, once).
    pub fn parse(bytes: &'a [u8]) -> Result<EventView<'a>, RawError> {
        let mut rest = bytes;
        let n = enter_map(&mut rest, "the event")?;
        let (mut seq, mut id, mut source, mut time_ms, mut body) = (None, None, None, None, None);
        for _ in 0..n {
            let k = next_key(&mut rest, "the event")?;
            if k == b"body" {
                body = Some(body_view(&mut rest)?);
                continue;
            }
            let v = next_value(&mut rest)?;
            match k {
                b"seq" => match v.head() {
                    Head::Int(i) if i >= 0 => seq = Some(i as u64),
                    Head::BigUint(u) => seq = Some(u),
                    _ => return bad("event field seq is not an unsigned integer"),
                },
                b"id" => id = Some(string(v, "id")?),
                b"source" => source = Some(string(v, "source")?),
                b"time_ms" => match v.head() {
                    Head::Int(i) => time_ms = Some(i),
                    _ => return bad("event field time_ms is not an integer"),
                },
                _ => other_key(k, "the event")?,
            }
        }
        if !rest.is_empty() {
            return bad(format!("{} bytes after the MessagePack value", rest.len()));
        }
        let missing = |f: &str| RawError(format!("the event has no field {f}"));
        Ok(EventView {
            seq: seq.ok_or_else(|| missing("seq"))?,
            id: id.ok_or_else(|| missing("id"))?,
            source: source.ok_or_else(|| missing("source"))?,
            time_ms: time_ms.ok_or_else(|| missing("time_ms"))?,
            body: body.ok_or_else(|| missing("body"))?,
            bytes,
        })
    }

    /// The change, if this event is one.
    pub fn change(&self) -> Option<&ChangeView<'a>> {
        match &self.body {
            BodyView::Change(c) => Some(c),
            _ => None,
        }
    }

    /// The socket event, if this event is one.
    pub fn socket(&self) -> Option<&SocketView<'a>> {
        match &self.body {
            BodyView::Socket(s) => Some(s),
            _ => None,
        }
    }

    /// The event's MessagePack bytes, as the host sent them.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The whole event as an owned tree (decodes everything: use it for small
    /// events or when you need all of it).
    pub fn to_event(&self) -> Result<Event, RawError> {
        crate::codec::decode(self.bytes).map_err(|e| RawError(e.to_string()))
    }
}

/// Reads the body map at the front of `rest` and moves past it. The host writes
/// `kind` before `data`, so `data` is read in place; a writer that puts `data`
/// first costs one more walk of it.
fn body_view<'a>(rest: &mut &'a [u8]) -> Result<BodyView<'a>, RawError> {
    let n = enter_map(rest, "the event body")?;
    let (mut kind, mut data, mut read) = (None, None, None);
    for _ in 0..n {
        let k = next_key(rest, "the event body")?;
        match (k, kind) {
            (b"kind", _) => kind = Some(string(next_value(rest)?, "body.kind")?),
            (b"data", Some("change")) => read = Some(BodyView::Change(change_view(rest)?)),
            (b"data", Some("socket")) => read = Some(BodyView::Socket(socket_view(rest)?)),
            (b"data", _) => data = Some(next_value(rest)?),
            _ => {
                other_key(k, "the event body")?;
                next_value(rest)?;
            }
        }
    }
    let kind = kind.ok_or_else(|| RawError("the event body has no kind".into()))?;
    if let Some(view) = read {
        return Ok(view);
    }
    let mut data = match (kind, data) {
        ("change" | "socket", None) => return bad(format!("the {kind} event has no data")),
        (_, None) => return Ok(BodyView::Other(kind)),
        (_, Some(d)) => d.as_bytes_raw(),
    };
    Ok(match kind {
        "change" => BodyView::Change(change_view(&mut data)?),
        "socket" => BodyView::Socket(socket_view(&mut data)?),
        other => BodyView::Other(other),
    })
}

fn change_view<'a>(rest: &mut &'a [u8]) -> Result<ChangeView<'a>, RawError> {
    let n = enter_map(rest, "the change")?;
    let mut c = ChangeView {
        op: "",
        db: "",
        coll: "",
        key: RawValue::null(),
        full_document: None,
        updated_fields: None,
        removed_fields: None,
        before: None,
    };
    let (mut op, mut db, mut coll) = (None, None, None);
    for _ in 0..n {
        let k = next_key(rest, "the change")?;
        let v = next_value(rest)?;
        match k {
            b"op" => op = Some(string(v, "change.op")?),
            b"db" => db = Some(string(v, "change.db")?),
            b"coll" => coll = Some(string(v, "change.coll")?),
            b"key" => c.key = v,
            b"full_document" => c.full_document = opt(v),
            b"updated_fields" => {
                c.updated_fields = match opt(v) {
                    None => None,
                    Some(m) => Some(m.as_map().ok_or_else(|| RawError("change.updated_fields is not a map".into()))?),
                }
            }
            b"removed_fields" => {
                c.removed_fields = match opt(v) {
                    None => None,
                    Some(a) => {
                        Some(a.as_array().ok_or_else(|| RawError("change.removed_fields is not an array".into()))?)
                    }
                }
            }
            b"before" => c.before = opt(v),
            _ => other_key(k, "the change")?,
        }
    }
    let missing = |f: &str| RawError(format!("the change has no field {f}"));
    c.op = op.ok_or_else(|| missing("op"))?;
    c.db = db.ok_or_else(|| missing("db"))?;
    c.coll = coll.ok_or_else(|| missing("coll"))?;
    Ok(c)
}

fn socket_view<'a>(rest: &mut &'a [u8]) -> Result<SocketView<'a>, RawError> {
    let n = enter_map(rest, "the socket event")?;
    let (mut client, mut event, mut payload) = (None, None, RawValue::null());
    for _ in 0..n {
        let k = next_key(rest, "the socket event")?;
        let v = next_value(rest)?;
        match k {
            b"client" => client = Some(string(v, "socket.client")?),
            b"event" => event = Some(string(v, "socket.event")?),
            b"payload" => payload = v,
            _ => other_key(k, "the socket event")?,
        }
    }
    Ok(SocketView {
        client: client.ok_or_else(|| RawError("the socket event has no field client".into()))?,
        event: event.ok_or_else(|| RawError("the socket event has no field event".into()))?,
        payload,
    })
}

impl<'a> ChangeView<'a> {
    /// The operation type (allocates only for a type this SDK does not know).
    pub fn op(&self) -> OperationType {
        OperationType::parse(self.op)
    }

    /// `db.coll`.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }

    /// Whether `db.coll` matches a pattern (`"db.coll"`, `"db.*"`, `"*"`).
    pub fn in_namespace(&self, pattern: &str) -> bool {
        namespace_matches(pattern, self.db, self.coll)
    }

    /// The `_id` of the changed document, from `documentKey`.
    pub fn id(&self) -> Option<RawValue<'a>> {
        self.key.get_key("_id")
    }

    /// A field of the document after the change (dotted path): from the full
    /// document when present, else what the update set (as [`Change::field`]).
    pub fn field(&self, path: &str) -> Option<RawValue<'a>> {
        if let Some(v) = self.full_document.and_then(|d| d.get(path)) {
            return Some(v);
        }
        self.updated(path)
    }

    /// A field's new value from `updated_fields` (keys are dotted paths), as
    /// [`Change::updated`].
    pub fn updated(&self, path: &str) -> Option<RawValue<'a>> {
        let updated = self.updated_fields?;
        if let Some(v) = updated.get(path) {
            return Some(v);
        }
        path.match_indices('.').find_map(|(dot, _)| updated.get(&path[..dot])?.get(&path[dot + 1..]))
    }

    /// Whether `removed_fields` lists `path` exactly.
    pub fn removed(&self, path: &str) -> bool {
        self.removed_fields.is_some_and(|r| r.iter().any(|p| p.as_str() == Some(path)))
    }

    /// The full document as the author's type (serde), e.g. `document_as::<Order>()`.
    /// `None` when the change carries no full document.
    pub fn document_as<T: serde::Deserialize<'a>>(&self) -> Option<Result<T, RawError>> {
        self.full_document.map(|d| d.deserialize())
    }

    /// The owned [`Change`] (decodes every document).
    pub fn to_change(&self) -> Result<Change, RawError> {
        let doc = |v: Option<RawValue<'_>>| v.map(|d| d.to_value()).transpose();
        Ok(Change {
            op: self.op(),
            db: self.db.to_string(),
            coll: self.coll.to_string(),
            key: self.key.to_value()?,
            full_document: doc(self.full_document)?,
            updated_fields: match self.updated_fields {
                None => None,
                Some(m) => {
                    let mut out = crate::Map::new();
                    for (k, v) in m {
                        out.insert(k.to_string(), v.to_value()?);
                    }
                    Some(out)
                }
            },
            removed_fields: match self.removed_fields {
                None => None,
                Some(a) => Some(
                    a.iter()
                        .map(|p| p.as_str().map(str::to_string).ok_or_else(|| RawError("a removed field is not a string".into())))
                        .collect::<Result<_, _>>()?,
                ),
            },
            before: doc(self.before)?,
        })
    }
}

impl<'a> SocketView<'a> {
    /// The payload as the author's type (serde).
    pub fn payload_as<T: serde::Deserialize<'a>>(&self) -> Result<T, RawError> {
        self.payload.deserialize()
    }

    pub fn to_socket_event(&self) -> Result<SocketEvent, RawError> {
        Ok(SocketEvent { client: self.client.to_string(), event: self.event.to_string(), payload: self.payload.to_value()? })
    }
}

/// Owned body of a view, for tests comparing the two reads.
impl BodyView<'_> {
    pub fn to_body(&self) -> Result<EventBody, RawError> {
        Ok(match self {
            BodyView::Change(c) => EventBody::Change(c.to_change()?),
            BodyView::Socket(s) => EventBody::Socket(s.to_socket_event()?),
            BodyView::Other(_) => EventBody::Other,
        })
    }
}
