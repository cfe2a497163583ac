//! The JSON-lines source: one event per line from a file or standard input.
//!
//! Lets the host run with no database at all, for tests, demos and plugin authors.
//! Each line is an `Event` in its JSON shape; `seq`, `id`, `source` and `time_ms`
//! may be left out. The checkpoint remembers the file as well as the line, so a
//! different file at the same path is noticed, said loudly and read from its first
//! line, never silently skipped into. A malformed line is dead-lettered.

use super::SourceContext;
use crate::checkpoint::Position;
use crate::deadletter::now_ms;
use crate::envelope::Envelope;
use crate::exit::{fatal, Cause};
use oplet_sdk::{Event, EventBody, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, BufReader};

/// `[[source]] type = "jsonl"`: owned here, as each source owns its config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceConfig {
    pub name: String,
    /// A file of one JSON event per line, or `-` for standard input.
    pub path: PathBuf,
    /// Keep reading as lines are appended (like `tail -f`).
    #[serde(default)]
    pub follow: bool,
}

/// How many leading bytes of the file identify it (fewer while it is shorter).
const HEAD_MAX: u64 = 64 * 1024;

/// Unknown keys are ignored and a missing one is nil, the rule for every map on
/// the plugin boundary (docs/abi.md section 6).
#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    #[allow(dead_code)]
    seq: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    #[serde(default)]
    time_ms: Option<i64>,
    body: EventBody,
}

/// Parses one line into an event of `source` at line `n` (`seq` = `n`, id `SOURCE:n`).
pub fn parse_line(text: &str, source: &str, n: u64) -> Result<Event, String> {
    parse_line_as(text, source, n, || format!("{source}:{n}"))
}

fn parse_line_as(text: &str, source: &str, seq: u64, id: impl FnOnce() -> String) -> Result<Event, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(Event {
        seq,
        id: line.id.unwrap_or_else(id),
        source: source.to_string(),
        time_ms: line.time_ms.unwrap_or_else(now_ms),
        body: line.body,
    })
}

/// Which file a checkpoint was saved for: where it lives (device and inode) and a
/// SHA-256 of its first `head_len` bytes, which a replaced file does not share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    dev: u64,
    ino: u64,
    head_len: u64,
    head: String,
}

/// A JSON-lines position: after `line` (ending at byte `offset`) of file `file`;
/// `seq` is that line's sequence number, `gen` how many times the file at this
/// path was found replaced. A bare number (checkpoints before file identities) is
/// read as `line` with no identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    line: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    seq: u64,
    #[serde(default)]
    gen: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<FileId>,
}

impl Saved {
    fn from_position(source: &str, p: &Position) -> anyhow::Result<Saved> {
        if let Some(n) = p.as_u64() {
            return Ok(Saved { line: n, offset: None, seq: n, gen: 0, file: None });
        }
        serde_json::from_value(p.clone()).map_err(|e| {
            fatal(
                Cause::Config,
                format!("the checkpoint of source {source:?} is not a JSON-lines position ({e}): {p}; delete state_dir/checkpoints/{source}.json to read the file from its first line"),
            )
        })
    }
}

/// The file being read and where in it: numbers continue across runs and across
/// a replaced file (`seq = base + line`).
struct Cursor {
    line: u64,
    offset: u64,
    base: u64,
    gen: u64,
    /// `None` for standard input.
    file: Option<FileHead>,
}

/// The identity of the open file, and the hash of its head as far as read.
struct FileHead {
    dev: u64,
    ino: u64,
    hasher: Sha256,
    hashed: u64,
    /// Set once `HEAD_MAX` bytes are hashed: the identity no longer changes.
    fixed: Option<String>,
}

impl FileHead {
    fn new(dev: u64, ino: u64) -> FileHead {
        FileHead { dev, ino, hasher: Sha256::new(), hashed: 0, fixed: None }
    }

    /// Feeds the bytes of the file that follow what was hashed, up to `HEAD_MAX`.
    fn feed(&mut self, bytes: &[u8]) {
        if self.fixed.is_some() {
            return;
        }
        let take = (HEAD_MAX - self.hashed).min(bytes.len() as u64) as usize;
        self.hasher.update(&bytes[..take]);
        self.hashed += take as u64;
        if self.hashed == HEAD_MAX {
            self.fixed = Some(hex::encode(self.hasher.clone().finalize()));
        }
    }

    fn id(&self) -> FileId {
        let head = self.fixed.clone().unwrap_or_else(|| hex::encode(self.hasher.clone().finalize()));
        FileId { dev: self.dev, ino: self.ino, head_len: self.hashed, head }
    }
}

impl Cursor {
    fn fresh(base: u64, gen: u64, file: Option<FileHead>) -> Cursor {
        Cursor { line: 0, offset: 0, base, gen, file }
    }

    fn seq(&self) -> u64 {
        self.base + self.line
    }

    /// The default event id: `SOURCE:LINE` for the first file at this path (as
    /// before checkpoints knew files), `SOURCE:GEN:LINE` after a replacement, so
    /// the new file's events never share an id with the old one's.
    fn id(&self, source: &str) -> String {
        if self.gen == 0 {
            format!("{source}:{}", self.line)
        } else {
            format!("{source}:{}:{}", self.gen, self.line)
        }
    }

    /// Counts one line of `bytes` (with its newline, if any).
    fn advance(&mut self, bytes: &[u8]) {
        self.line += 1;
        self.offset += bytes.len() as u64;
        if let Some(f) = self.file.as_mut() {
            f.feed(bytes);
        }
    }

    fn position(&self) -> Position {
        let saved = Saved {
            line: self.line,
            offset: self.file.as_ref().map(|_| self.offset),
            seq: self.seq(),
            gen: self.gen,
            file: self.file.as_ref().map(FileHead::id),
        };
        serde_json::to_value(saved).expect("a position serializes")
    }
}

type Input = BufReader<Box<dyn AsyncRead + Unpin + Send>>;

async fn open(cfg: &JsonlSourceConfig) -> anyhow::Result<(tokio::fs::File, u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let unreadable = |e: std::io::Error| {
        fatal(
            Cause::SourceInput,
            format!("source {:?}: cannot open {}: {e}; check the path ([[source]] path) and its permissions", cfg.name, cfg.path.display()),
        )
    };
    let file = tokio::fs::File::open(&cfg.path).await.map_err(unreadable)?;
    let meta = file.metadata().await.map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(std::io::Error::other("it is a directory")));
    }
    Ok((file, meta.dev(), meta.ino(), meta.len()))
}

/// Opens the input and moves to where the checkpoint left off: after its line in
/// the same file, or at the first line of a file that is not the one it was saved for.
async fn resume(cfg: &JsonlSourceConfig, saved: Option<Saved>) -> anyhow::Result<(Input, Cursor)> {
    let name = &cfg.name;
    if cfg.path.as_os_str() == "-" {
        // Standard input has no identity to check: skip the lines already done.
        let mut input: Input = BufReader::with_capacity(64 * 1024, Box::new(tokio::io::stdin()));
        let mut cursor = Cursor::fresh(0, 0, None);
        if let Some(s) = saved {
            cursor.base = s.seq.saturating_sub(s.line);
            cursor.gen = s.gen;
            skip_lines(&mut input, &mut cursor, s.line).await.map_err(|e| read_error(cfg, e))?;
            tracing::info!(source = %name, "resuming standard input after line {}", cursor.line);
        }
        return Ok((input, cursor));
    }
    let (mut file, dev, ino, len) = open(cfg).await?;
    let Some(s) = saved else {
        return Ok((boxed(file), Cursor::fresh(0, 0, Some(FileHead::new(dev, ino)))));
    };
    let different = match (&s.file, s.offset) {
        (Some(id), Some(offset)) => {
            let mut head = vec![0u8; id.head_len.min(len) as usize];
            file.read_exact(&mut head).await.map_err(|e| read_error(cfg, e))?;
            let mut fh = FileHead::new(dev, ino);
            fh.feed(&head);
            if len < offset {
                Some(format!("it is {len} bytes long, shorter than the {offset} bytes already read"))
            } else if head.len() as u64 != id.head_len || fh.id().head != id.head {
                Some(format!("its first {} bytes differ from those of the file read before", id.head_len))
            } else {
                if (dev, ino) != (id.dev, id.ino) {
                    tracing::info!(source = %name, path = %cfg.path.display(), "the file has a new inode but the same content up to the checkpoint (moved or copied); resuming after line {}", s.line);
                } else {
                    tracing::info!(source = %name, "resuming after line {}", s.line);
                }
                // The head bytes past `offset` are fed again as lines are read.
                let mut fh = FileHead::new(dev, ino);
                fh.feed(&head[..offset.min(head.len() as u64) as usize]);
                file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| read_error(cfg, e))?;
                let cursor = Cursor { line: s.line, offset, base: s.seq.saturating_sub(s.line), gen: s.gen, file: Some(fh) };
                return Ok((boxed(file), cursor));
            }
        }
        _ => {
            // A checkpoint from before files had identities: the line count is all
            // there is. A file with fewer lines than that is surely another file.
            let mut input = boxed(file);
            let mut cursor = Cursor::fresh(s.seq.saturating_sub(s.line), s.gen, Some(FileHead::new(dev, ino)));
            skip_lines(&mut input, &mut cursor, s.line).await.map_err(|e| read_error(cfg, e))?;
            if cursor.line == s.line {
                tracing::info!(source = %name, "resuming after line {} (an older checkpoint without the file's identity; it is recorded from now on)", s.line);
                return Ok((input, cursor));
            }
            Some(format!("it has {} line(s), fewer than the {} already read", cursor.line, s.line))
        }
    };
    let why = different.expect("set on every path that gets here");
    let (mut file, dev, ino, _) = open(cfg).await?;
    file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| read_error(cfg, e))?;
    let cursor = Cursor::fresh(s.seq, s.gen + 1, Some(FileHead::new(dev, ino)));
    tracing::warn!(
        source = %name, path = %cfg.path.display(),
        "NOT THE SAME FILE: {why}: the checkpoint (after line {}) was saved for another file at this path. Reading this one from its first line; seq goes on from {} and event ids become \"{name}:{}:LINE\"",
        s.line, s.seq + 1, cursor.gen
    );
    Ok((boxed(file), cursor))
}

fn boxed(file: tokio::fs::File) -> Input {
    BufReader::with_capacity(64 * 1024, Box::new(file))
}

fn read_error(cfg: &JsonlSourceConfig, e: std::io::Error) -> anyhow::Error {
    fatal(Cause::SourceInput, format!("source {:?}: cannot read {}: {e}", cfg.name, cfg.path.display()))
}

/// Reads and counts up to `n` complete lines; fewer at the end of the input.
async fn skip_lines(input: &mut Input, cursor: &mut Cursor, n: u64) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while cursor.line < n {
        buf.clear();
        if input.read_until(b'\n', &mut buf).await? == 0 || buf.last() != Some(&b'\n') {
            return Ok(());
        }
        cursor.advance(&buf);
    }
    Ok(())
}

/// Whether the file at `path` is no longer the open one (rotated or truncated), as
/// `tail -F` checks while following.
fn replaced(path: &Path, cursor: &Cursor) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let f = cursor.file.as_ref()?;
    let meta = std::fs::metadata(path).ok()?;
    if (meta.dev(), meta.ino()) != (f.dev, f.ino) {
        Some("a new file took its place".into())
    } else if meta.len() < cursor.offset {
        Some(format!("it was truncated to {} bytes", meta.len()))
    } else {
        None
    }
}

pub async fn run(cfg: JsonlSourceConfig, ctx: SourceContext) -> anyhow::Result<()> {
    let dead = ctx.dead_letters().clone();
    let position = ctx.resume(&cfg.name)?;
    // Tickets count from 1 each run; the position says where in the file.
    let tracker = ctx.tracker(&cfg.name, 1, position.clone());
    let saved = position.as_ref().map(|p| Saved::from_position(&cfg.name, p)).transpose()?;
    let (mut reader, mut cursor) = resume(&cfg, saved).await?;
    let mut shutdown = ctx.shutdown.clone();
    let mut buf = Vec::new();
    let mut ticket_no = 0u64;
    let mut checked = Instant::now();
    loop {
        let read = tokio::select! {
            r = reader.read_until(b'\n', &mut buf) => r.map_err(|e| read_error(&cfg, e))?,
            _ = shutdown.changed() => return Ok(()),
        };
        if read == 0 || buf.last() != Some(&b'\n') {
            // End of the data for now. A partial last line waits for its newline
            // when following; otherwise it is the last event.
            if cfg.follow {
                if buf.is_empty() && checked.elapsed() >= Duration::from_secs(1) {
                    checked = Instant::now();
                    if let Some(why) = replaced(&cfg.path, &cursor) {
                        let (file, dev, ino, _) = open(&cfg).await?;
                        let next = Cursor::fresh(cursor.seq(), cursor.gen + 1, Some(FileHead::new(dev, ino)));
                        tracing::warn!(
                            source = %cfg.name, path = %cfg.path.display(),
                            "NOT THE SAME FILE: {why} after line {}; reading the new one from its first line; seq goes on from {} and event ids become \"{}:{}:LINE\"",
                            cursor.line, next.seq() + 1, cfg.name, next.gen
                        );
                        reader = boxed(file);
                        cursor = next;
                        continue;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
        }
        let bytes = std::mem::take(&mut buf);
        cursor.advance(&bytes);
        ticket_no += 1;
        let ticket = tracker.ticket(ticket_no, Some(cursor.position()));
        let text = String::from_utf8_lossy(&bytes);
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue; // ticket dropped: nothing to do for this line
        }
        // Numbered, then encoded once: every plugin gets these bytes.
        let parsed = match std::str::from_utf8(&bytes) {
            Ok(_) => parse_line_as(trimmed, &cfg.name, cursor.seq(), || cursor.id(&cfg.name)).and_then(|e| crate::envelope::Event::encode(&e)),
            Err(e) => Err(format!("the line is not valid UTF-8 ({e})")),
        };
        match parsed {
            Ok(event) => {
                if ctx.tx.send(Envelope { event: Arc::new(event), ticket }).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => {
                let n = cursor.line;
                let where_ = format!("{}:{n}", cfg.path.display());
                tracing::error!(source = %cfg.name, "{where_}: not a valid event: {e}; skipped and dead-lettered");
                let placeholder = Event {
                    seq: cursor.seq(),
                    id: cursor.id(&cfg.name),
                    source: cfg.name.clone(),
                    time_ms: now_ms(),
                    body: EventBody::Socket(oplet_sdk::SocketEvent {
                        client: String::new(),
                        event: "invalid_line".into(),
                        payload: Value::String(trimmed.to_string()),
                    }),
                };
                let stage = format!("source:{}", cfg.name);
                dead.record_held_async(stage, Arc::new(crate::envelope::Event::placeholder(&placeholder)), format!("{where_}: {e}"), ticket).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_seq_and_id_gets_them_from_its_position() {
        let e = parse_line(
            r#"{"body": {"kind": "socket", "data": {"client": "c1", "event": "ready"}}}"#,
            "events",
            7,
        )
        .unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.id, "events:7");
        assert!(matches!(e.body, EventBody::Socket(ref s) if s.event == "ready"));
    }

    #[test]
    fn a_malformed_line_says_what_is_wrong() {
        let err = parse_line(r#"{"body": {"kind": "change", "data": {"op": 5}}}"#, "events", 1).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn a_bare_number_checkpoint_still_reads_and_a_foreign_one_is_refused() {
        let old = Saved::from_position("e", &serde_json::json!(12)).unwrap();
        assert_eq!((old.line, old.seq, old.gen, old.offset, old.file), (12, 12, 0, None, None));
        let err = Saved::from_position("e", &serde_json::json!({"token": "x"})).unwrap_err().to_string();
        assert!(err.contains("not a JSON-lines position") && err.contains("delete"), "{err}");
    }

    #[test]
    fn the_head_hash_stops_growing_at_its_maximum() {
        let mut a = FileHead::new(1, 2);
        a.feed(&vec![b'x'; HEAD_MAX as usize - 1]);
        let short = a.id();
        assert_eq!(short.head_len, HEAD_MAX - 1);
        a.feed(b"yz");
        let full = a.id();
        assert_eq!(full.head_len, HEAD_MAX);
        a.feed(b"more");
        assert_eq!(a.id(), full, "bytes past the head do not change the identity");
        let mut b = FileHead::new(1, 2);
        b.feed(&vec![b'x'; HEAD_MAX as usize]);
        assert_ne!(b.id().head, full.head);
    }

    #[test]
    fn positions_round_trip_and_ids_change_after_a_replacement() {
        let mut c = Cursor::fresh(0, 0, Some(FileHead::new(3, 4)));
        c.advance(b"{}\n");
        let p = c.position();
        let s = Saved::from_position("e", &p).unwrap();
        assert_eq!((s.line, s.offset, s.seq, s.gen), (1, Some(3), 1, 0));
        assert_eq!(c.id("e"), "e:1");
        let mut next = Cursor::fresh(s.seq, s.gen + 1, None);
        next.advance(b"{}\n");
        assert_eq!((next.seq(), next.id("e")), (2, "e:1:1".to_string()));
    }
}
