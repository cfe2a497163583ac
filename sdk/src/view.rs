//! `EventView`: the event as a plugin reads it, borrowed from the input bytes.
//!
//! Parsing reads only the header (seq, id, source, time, kind, and a change's
//! operation and namespace, or a socket event's client and name) as numbers and
//! `&str`s into the input, with no allocation. Everything else (the document key,
//! the documents, a payload) is found when first asked for, so a plugin pays for
//! what it reads: one that reads nothing walks no document. The owned [`Event`]
//! stays available (`to_event`) for code that wants a tree.

use crate::event::{namespace_matches, Change, Event, EventBody, OperationType, SocketEvent};
use crate::raw::{find_path, head, skip_len, split_value, value_len, Head, RawArray, RawError, RawMap, RawValue};
use std::fmt;

/// A borrowed, lazily read [`Event`]. The header is read by [`EventView::parse`];
/// documents are found on access (each accessor finds its field again: keep the
/// [`RawValue`] it returns rather than asking twice).
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    seq: u64,
    id: &'a str,
    source: &'a str,
    time_ms: i64,
    body: BodyView<'a>,
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

/// The entries of a map the view has not read yet: found on demand by key.
#[derive(Clone, Copy)]
struct Entries<'a> {
    len: usize,
    /// From the first entry on (may run past the map's end: only `len` entries are read).
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// The value of `key`, `None` when absent; an error when the bytes on the way
    /// are malformed.
    fn find(&self, key: &[u8], what: &str) -> Result<Option<RawValue<'a>>, RawError> {
        let mut rest = self.rest;
        for _ in 0..self.len {
            let k = next_key(&mut rest, what)?;
            if k == key {
                return next_value(&mut rest).map(Some);
            }
            skip_value(&mut rest)?;
        }
        Ok(None)
    }

    /// Where the value of `key` starts (not measured: it runs to the end of the
    /// input), `None` when absent.
    fn find_start(&self, key: &[u8], what: &str) -> Result<Option<&'a [u8]>, RawError> {
        let mut rest = self.rest;
        for _ in 0..self.len {
            let k = next_key(&mut rest, what)?;
            if k == key {
                return Ok(Some(rest));
            }
            skip_value(&mut rest)?;
        }
        Ok(None)
    }

    /// Every entry, checked: keys are UTF-8 strings, values well-formed.
    fn check(&self, what: &str) -> Result<(), RawError> {
        let mut rest = self.rest;
        for _ in 0..self.len {
            let k = next_key(&mut rest, what)?;
            other_key(k, what)?;
            skip_value(&mut rest)?;
        }
        Ok(())
    }
}

/// A change, borrowed. The operation and namespace are read with the header;
/// the document key and the documents are found when asked for.
#[derive(Clone, Copy)]
pub struct ChangeView<'a> {
    op: &'a str,
    db: &'a str,
    coll: &'a str,
    entries: Entries<'a>,
}

/// A socket event, borrowed. The payload is found when asked for.
#[derive(Clone, Copy)]
pub struct SocketView<'a> {
    client: &'a str,
    event: &'a str,
    entries: Entries<'a>,
}

fn bad<T>(msg: impl Into<String>) -> Result<T, RawError> {
    Err(RawError(msg.into()))
}

// The header is read front to back and the read stops as soon as every header
// field is found: the host writes the header fields before the body, and a
// change's `op`, `db` and `coll` before its documents, so no document is walked
// at parse. A writer using another order costs a walk of what it put first.

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
/// for are ASCII, so a key equal to one needs no UTF-8 check.
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

/// A key the view does not read: an error when it is not UTF-8 (checked by `check`).
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

/// Moves past the next value, checking it is whole.
fn skip_value(rest: &mut &[u8]) -> Result<(), RawError> {
    let n = match skip_len(rest) {
        Some(n) => n,
        None => value_len(rest)?,
    };
    *rest = &rest[n..];
    Ok(())
}

/// The next value, which must be a string; a fixstr of ASCII (every header string
/// the host writes) is read without the general UTF-8 check.
fn next_str<'a>(rest: &mut &'a [u8], field: &str) -> Result<&'a str, RawError> {
    if let Some(&b @ 0xa0..=0xbf) = rest.first() {
        let len = usize::from(b & 0x1f);
        if let Some(s) = rest.get(1..1 + len) {
            if s.is_ascii() {
                *rest = &rest[1 + len..];
                // SAFETY: ASCII is UTF-8.
                return Ok(unsafe { std::str::from_utf8_unchecked(s) });
            }
        }
    }
    next_value(rest)?.as_str().ok_or_else(|| RawError(format!("event field {field} is not a string")))
}

/// A nil with the input's lifetime (for absent fields).
fn nil<'a>() -> RawValue<'a> {
    RawValue::null()
}

/// `nil` reads as absent, as the owned decode's `Option` does.
fn opt(v: Option<RawValue<'_>>) -> Option<RawValue<'_>> {
    v.filter(|v| !v.is_null())
}

impl<'a> EventView<'a> {
    /// Reads the header of the MessagePack `Event` in `bytes`. Documents are not
    /// read: a malformed document is found when it is asked for (an accessor then
    /// reads it as absent). [`EventView::check`] walks and checks everything.
    pub fn parse(bytes: &'a [u8]) -> Result<EventView<'a>, RawError> {
        if let Some(view) = parse_host_layout(bytes) {
            return Ok(view);
        }
        let mut rest = bytes;
        let n = enter_map(&mut rest, "the event")?;
        let (mut seq, mut id, mut source, mut time_ms, mut body) = (None, None, None, None, None);
        for i in 0..n {
            let k = next_key(&mut rest, "the event")?;
            match k {
                b"body" => {
                    body = Some(body_view(rest)?);
                    if seq.is_some() && id.is_some() && source.is_some() && time_ms.is_some() {
                        break;
                    }
                    if i + 1 < n {
                        skip_value(&mut rest)?;
                    }
                }
                b"seq" => match head(rest)? {
                    Head::Int(v) if v >= 0 => {
                        seq = Some(v as u64);
                        skip_value(&mut rest)?;
                    }
                    Head::BigUint(u) => {
                        seq = Some(u);
                        skip_value(&mut rest)?;
                    }
                    _ => return bad("event field seq is not an unsigned integer"),
                },
                b"id" => id = Some(next_str(&mut rest, "id")?),
                b"source" => source = Some(next_str(&mut rest, "source")?),
                b"time_ms" => match head(rest)? {
                    Head::Int(v) => {
                        time_ms = Some(v);
                        skip_value(&mut rest)?;
                    }
                    _ => return bad("event field time_ms is not an integer"),
                },
                _ => skip_value(&mut rest)?,
            }
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

    /// Walks the whole event and checks it: one well-formed MessagePack value with
    /// nothing after it, string keys, and the change's fields of the right types.
    /// `parse` reads only the header; call this to refuse a malformed event up
    /// front (the host never sends one).
    pub fn check(&self) -> Result<(), RawError> {
        let whole = RawValue::parse(self.bytes)?;
        let map = |v: RawValue<'a>, what: &str| -> Result<Entries<'a>, RawError> {
            let mut rest = v.as_bytes_raw();
            let len = enter_map(&mut rest, what)?;
            let e = Entries { len, rest };
            e.check(what)?;
            Ok(e)
        };
        let top = map(whole, "the event")?;
        let body = top.find(b"body", "the event")?.ok_or_else(|| RawError("the event has no field body".into()))?;
        let body = map(body, "the event body")?;
        let data = body.find(b"data", "the event body")?;
        match (&self.body, data) {
            (BodyView::Change(c), Some(data)) => {
                map(data, "the change")?;
                c.updated_fields_checked()?;
                c.removed_fields_checked()?;
            }
            (BodyView::Socket(_), Some(data)) => {
                map(data, "the socket event")?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Number of the event in its stream (docs/abi.md §7.1).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Stable identity of the event (a resume token, a file position).
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// Name of the source in the host config.
    pub fn source(&self) -> &'a str {
        self.source
    }

    /// When the event happened, ms since the Unix epoch.
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    /// What happened.
    pub fn body(&self) -> BodyView<'a> {
        self.body
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

    /// The whole event as an owned tree (decodes and checks everything: use it
    /// for small events or when you need all of it).
    pub fn to_event(&self) -> Result<Event, RawError> {
        crate::codec::decode(self.bytes).map_err(|e| RawError(e.to_string()))
    }
}

/// The header as the host lays it out (docs/abi.md §6-7: fields in schema order,
/// `kind` before `data`), read straight through by comparing the key bytes in
/// place: most of a no-op call was the general loop's per-key dispatch. `None` at
/// the first byte that differs; `parse` then reads the event the general way.
fn parse_host_layout(bytes: &[u8]) -> Option<EventView<'_>> {
    let mut r = Layout(bytes);
    r.lit(b"\x85\xa3seq")?;
    let seq = r.uint()?;
    r.lit(b"\xa2id")?;
    let id = r.str()?;
    r.lit(b"\xa6source")?;
    let source = r.str()?;
    r.lit(b"\xa7time_ms")?;
    let time_ms = r.int()?;
    r.lit(b"\xa4body\x82\xa4kind")?;
    let kind = r.str()?;
    r.lit(b"\xa4data")?;
    let body = match kind {
        "change" => {
            let (len, entries) = r.map()?;
            r.lit(b"\xa2op")?;
            let op = r.str()?;
            r.lit(b"\xa2db")?;
            let db = r.str()?;
            r.lit(b"\xa4coll")?;
            let coll = r.str()?;
            BodyView::Change(ChangeView { op, db, coll, entries: Entries { len, rest: entries } })
        }
        "socket" => {
            let (len, entries) = r.map()?;
            r.lit(b"\xa6client")?;
            let client = r.str()?;
            r.lit(b"\xa5event")?;
            let event = r.str()?;
            BodyView::Socket(SocketView { client, event, entries: Entries { len, rest: entries } })
        }
        _ => return None,
    };
    Some(EventView { seq, id, source, time_ms, body, bytes })
}

/// A read position for `parse_host_layout`; every method moves past what it read.
struct Layout<'a>(&'a [u8]);

impl<'a> Layout<'a> {
    fn lit(&mut self, expected: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(expected)?;
        Some(())
    }

    /// `n` big-endian bytes after a one-byte marker.
    fn be(&mut self, n: usize) -> Option<u64> {
        let b = self.0.get(1..1 + n)?;
        self.0 = &self.0[1 + n..];
        Some(b.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn int(&mut self) -> Option<i64> {
        Some(match *self.0.first()? {
            b @ (0x00..=0x7f | 0xe0..=0xff) => {
                self.0 = &self.0[1..];
                i64::from(b as i8)
            }
            0xcc => self.be(1)? as i64,
            0xcd => self.be(2)? as i64,
            0xce => self.be(4)? as i64,
            0xcf => i64::try_from(self.be(8)?).ok()?,
            0xd0 => i64::from(self.be(1)? as u8 as i8),
            0xd1 => i64::from(self.be(2)? as u16 as i16),
            0xd2 => i64::from(self.be(4)? as u32 as i32),
            0xd3 => self.be(8)? as i64,
            _ => return None,
        })
    }

    fn uint(&mut self) -> Option<u64> {
        match *self.0.first()? {
            0xcf => self.be(8),
            _ => u64::try_from(self.int()?).ok(),
        }
    }

    /// A fixstr or str8 of ASCII (what the host writes for header strings); anything
    /// else through the general reader.
    fn str(&mut self) -> Option<&'a str> {
        let (off, len) = match *self.0.first()? {
            b @ 0xa0..=0xbf => (1, usize::from(b & 0x1f)),
            0xd9 => (2, usize::from(*self.0.get(1)?)),
            _ => return next_str(&mut self.0, "").ok(),
        };
        let s = self.0.get(off..off + len)?;
        if !s.is_ascii() {
            return next_str(&mut self.0, "").ok();
        }
        self.0 = &self.0[off + len..];
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    }

    /// A map header: its entry count and where its entries start (not moving past them).
    fn map(&mut self) -> Option<(usize, &'a [u8])> {
        let n = enter_map(&mut self.0, "").ok()?;
        Some((n, self.0))
    }
}

impl fmt::Debug for EventView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventView")
            .field("seq", &self.seq)
            .field("id", &self.id)
            .field("source", &self.source)
            .field("time_ms", &self.time_ms)
            .field("body", &self.body)
            .finish()
    }
}

/// Reads the body map at the front of `rest` (not moving past it). The host
/// writes `kind` before `data`, so `data` is read in place; a writer that puts
/// `data` first costs one walk of it.
fn body_view(mut rest: &[u8]) -> Result<BodyView<'_>, RawError> {
    let n = enter_map(&mut rest, "the event body")?;
    let (mut kind, mut data) = (None, None);
    for _ in 0..n {
        let k = next_key(&mut rest, "the event body")?;
        match (k, kind) {
            (b"kind", _) => {
                kind = Some(next_str(&mut rest, "body.kind")?);
                if data.is_some() {
                    break;
                }
            }
            (b"data", Some(kind)) => return data_view(kind, rest),
            (b"data", None) => data = Some(next_value(&mut rest)?.as_bytes_raw()),
            _ => skip_value(&mut rest)?,
        }
    }
    let kind = kind.ok_or_else(|| RawError("the event body has no kind".into()))?;
    match data {
        Some(d) => data_view(kind, d),
        None if matches!(kind, "change" | "socket") => bad(format!("the {kind} event has no data")),
        None => Ok(BodyView::Other(kind)),
    }
}

fn data_view<'a>(kind: &'a str, data: &'a [u8]) -> Result<BodyView<'a>, RawError> {
    Ok(match kind {
        "change" => BodyView::Change(change_view(data)?),
        "socket" => BodyView::Socket(socket_view(data)?),
        other => BodyView::Other(other),
    })
}

fn change_view(mut rest: &[u8]) -> Result<ChangeView<'_>, RawError> {
    let len = enter_map(&mut rest, "the change")?;
    let entries = Entries { len, rest };
    let (mut op, mut db, mut coll) = (None, None, None);
    for _ in 0..len {
        let k = next_key(&mut rest, "the change")?;
        match k {
            b"op" => op = Some(next_str(&mut rest, "change.op")?),
            b"db" => db = Some(next_str(&mut rest, "change.db")?),
            b"coll" => coll = Some(next_str(&mut rest, "change.coll")?),
            _ => skip_value(&mut rest)?,
        }
        if op.is_some() && db.is_some() && coll.is_some() {
            break;
        }
    }
    let missing = |f: &str| RawError(format!("the change has no field {f}"));
    Ok(ChangeView {
        op: op.ok_or_else(|| missing("op"))?,
        db: db.ok_or_else(|| missing("db"))?,
        coll: coll.ok_or_else(|| missing("coll"))?,
        entries,
    })
}

fn socket_view(mut rest: &[u8]) -> Result<SocketView<'_>, RawError> {
    let len = enter_map(&mut rest, "the socket event")?;
    let entries = Entries { len, rest };
    let (mut client, mut event) = (None, None);
    for _ in 0..len {
        let k = next_key(&mut rest, "the socket event")?;
        match k {
            b"client" => client = Some(next_str(&mut rest, "socket.client")?),
            b"event" => event = Some(next_str(&mut rest, "socket.event")?),
            _ => skip_value(&mut rest)?,
        }
        if client.is_some() && event.is_some() {
            break;
        }
    }
    Ok(SocketView {
        client: client.ok_or_else(|| RawError("the socket event has no field client".into()))?,
        event: event.ok_or_else(|| RawError("the socket event has no field event".into()))?,
        entries,
    })
}

impl<'a> ChangeView<'a> {
    /// The operation type as the host wrote it (`"insert"`, `"update"`, ...;
    /// `"snapshot"` for an existing document read by a snapshot or backfill).
    pub fn op(&self) -> &'a str {
        self.op
    }

    /// The operation type as an enum (allocates only for a type this SDK does not know).
    pub fn operation(&self) -> OperationType {
        OperationType::parse(self.op)
    }

    pub fn db(&self) -> &'a str {
        self.db
    }

    pub fn coll(&self) -> &'a str {
        self.coll
    }

    /// `db.coll`.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }

    /// Whether `db.coll` matches a pattern (`"db.coll"`, `"db.*"`, `"*"`).
    pub fn in_namespace(&self, pattern: &str) -> bool {
        namespace_matches(pattern, self.db, self.coll)
    }

    fn find(&self, key: &[u8]) -> Option<RawValue<'a>> {
        self.entries.find(key, "the change").ok().flatten()
    }

    /// The `documentKey`; nil when the event has none.
    pub fn key(&self) -> RawValue<'a> {
        self.find(b"key").unwrap_or_else(nil)
    }

    /// The document after the change, when the change carries it.
    pub fn full_document(&self) -> Option<RawValue<'a>> {
        opt(self.find(b"full_document"))
    }

    /// For updates: the fields the update set, keyed by dotted path.
    pub fn updated_fields(&self) -> Option<RawMap<'a>> {
        self.updated_fields_checked().ok().flatten()
    }

    /// For updates: the dotted paths the update removed.
    pub fn removed_fields(&self) -> Option<RawArray<'a>> {
        self.removed_fields_checked().ok().flatten()
    }

    /// The document before the change (pre-images).
    pub fn before(&self) -> Option<RawValue<'a>> {
        opt(self.find(b"before"))
    }

    fn updated_fields_checked(&self) -> Result<Option<RawMap<'a>>, RawError> {
        match opt(self.entries.find(b"updated_fields", "the change")?) {
            None => Ok(None),
            Some(m) => m.as_map().map(Some).ok_or_else(|| RawError("change.updated_fields is not a map".into())),
        }
    }

    fn removed_fields_checked(&self) -> Result<Option<RawArray<'a>>, RawError> {
        match opt(self.entries.find(b"removed_fields", "the change")?) {
            None => Ok(None),
            Some(a) => a.as_array().map(Some).ok_or_else(|| RawError("change.removed_fields is not an array".into())),
        }
    }

    /// The `_id` of the changed document, from `documentKey`.
    pub fn id(&self) -> Option<RawValue<'a>> {
        self.key().get_key("_id")
    }

    /// A field of the document after the change (dotted path): from the full
    /// document when present, else what the update set (as [`Change::field`]).
    pub fn field(&self, path: &str) -> Option<RawValue<'a>> {
        // Found inside the document without measuring it first: a field near the
        // front of a large document costs little.
        let doc = self.entries.find_start(b"full_document", "the change").ok().flatten();
        if let Some(v) = doc.filter(|d| d.first() != Some(&0xc0)).and_then(|d| find_path(d, path)) {
            return Some(v);
        }
        self.updated(path)
    }

    /// A field's new value from `updated_fields` (keys are dotted paths), as
    /// [`Change::updated`].
    pub fn updated(&self, path: &str) -> Option<RawValue<'a>> {
        let updated = self.updated_fields()?;
        if let Some(v) = updated.get(path) {
            return Some(v);
        }
        path.match_indices('.').find_map(|(dot, _)| updated.get(&path[..dot])?.get(&path[dot + 1..]))
    }

    /// Whether `removed_fields` lists `path` exactly.
    pub fn removed(&self, path: &str) -> bool {
        self.removed_fields().is_some_and(|r| r.iter().any(|p| p.as_str() == Some(path)))
    }

    /// The full document as the author's type (serde), e.g. `document_as::<Order>()`.
    /// `None` when the change carries no full document.
    pub fn document_as<T: serde::Deserialize<'a>>(&self) -> Option<Result<T, RawError>> {
        self.full_document().map(|d| d.deserialize())
    }

    /// The owned [`Change`] (decodes and checks every document).
    pub fn to_change(&self) -> Result<Change, RawError> {
        let find = |k: &[u8]| -> Result<Option<RawValue<'a>>, RawError> { self.entries.find(k, "the change") };
        let doc = |v: Option<RawValue<'_>>| opt(v).map(|d| d.to_value()).transpose();
        Ok(Change {
            op: self.operation(),
            db: self.db.to_string(),
            coll: self.coll.to_string(),
            key: find(b"key")?.unwrap_or_else(nil).to_value()?,
            full_document: doc(find(b"full_document")?)?,
            updated_fields: match self.updated_fields_checked()? {
                None => None,
                Some(m) => {
                    let mut out = crate::Map::new();
                    for (k, v) in m {
                        out.insert(k.to_string(), v.to_value()?);
                    }
                    Some(out)
                }
            },
            removed_fields: match self.removed_fields_checked()? {
                None => None,
                Some(a) => Some(
                    a.iter()
                        .map(|p| p.as_str().map(str::to_string).ok_or_else(|| RawError("a removed field is not a string".into())))
                        .collect::<Result<_, _>>()?,
                ),
            },
            before: doc(find(b"before")?)?,
        })
    }
}

impl fmt::Debug for ChangeView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeView")
            .field("op", &self.op)
            .field("db", &self.db)
            .field("coll", &self.coll)
            .field("key", &self.key())
            .field("full_document", &self.full_document())
            .field("updated_fields", &self.updated_fields())
            .field("removed_fields", &self.removed_fields())
            .field("before", &self.before())
            .finish()
    }
}

impl<'a> SocketView<'a> {
    /// The authenticated identity (uuid) of the client that sent it.
    pub fn client(&self) -> &'a str {
        self.client
    }

    /// The Socket.IO event name.
    pub fn event(&self) -> &'a str {
        self.event
    }

    /// The event's argument; nil if it had none.
    pub fn payload(&self) -> RawValue<'a> {
        self.entries.find(b"payload", "the socket event").ok().flatten().unwrap_or_else(nil)
    }

    /// The payload as the author's type (serde).
    pub fn payload_as<T: serde::Deserialize<'a>>(&self) -> Result<T, RawError> {
        self.payload().deserialize()
    }

    pub fn to_socket_event(&self) -> Result<SocketEvent, RawError> {
        let payload = self.entries.find(b"payload", "the socket event")?.unwrap_or_else(nil);
        Ok(SocketEvent { client: self.client.to_string(), event: self.event.to_string(), payload: payload.to_value()? })
    }
}

impl fmt::Debug for SocketView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketView")
            .field("client", &self.client)
            .field("event", &self.event)
            .field("payload", &self.payload())
            .finish()
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
