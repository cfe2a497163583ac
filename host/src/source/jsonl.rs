//! The JSON-lines source: one event per line from a file or standard input.
//!
//! Lets the host run with no database at all, for tests, demos and plugin authors.
//! Each line is an `Event` in its JSON shape; `seq`, `id`, `source` and `time_ms`
//! may be left out (the line number, `SOURCE:LINE`, the source's name and now).
//! The position is the last line number done, so a restart goes on after it. A
//! malformed line is reported with its file and line number and dead-lettered.

use super::SourceContext;
use crate::config::JsonlSourceConfig;
use crate::deadletter::{now_ms, DeadLetters};
use crate::envelope::Envelope;
use oplet_sdk::{Event, EventBody, Value};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

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

/// Parses one line into an event of `source` at line `n`.
pub fn parse_line(text: &str, source: &str, n: u64) -> Result<Event, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(Event {
        seq: n,
        id: line.id.unwrap_or_else(|| format!("{source}:{n}")),
        source: source.to_string(),
        time_ms: line.time_ms.unwrap_or_else(now_ms),
        body: line.body,
    })
}

pub async fn run(cfg: JsonlSourceConfig, ctx: SourceContext, dead: Arc<DeadLetters>) -> anyhow::Result<()> {
    let skip = ctx.resume.as_ref().and_then(|p| p.as_u64()).unwrap_or(0);
    if skip > 0 {
        tracing::info!(source = %cfg.name, "resuming after line {skip}");
    }
    let reader: Box<dyn AsyncRead + Unpin + Send> = if cfg.path.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&cfg.path)
                .await
                .map_err(|e| anyhow::anyhow!("source {:?}: cannot open {}: {e}", cfg.name, cfg.path.display()))?,
        )
    };
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut shutdown = ctx.shutdown.clone();
    let mut buf = String::new();
    let mut n = 0u64;
    loop {
        let read = tokio::select! {
            r = reader.read_line(&mut buf) => r?,
            _ = shutdown.changed() => return Ok(()),
        };
        if read == 0 || !buf.ends_with('\n') {
            // End of the data for now. A partial last line waits for its newline
            // when following; otherwise it is the last event.
            if cfg.follow {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            if buf.trim().is_empty() {
                return Ok(());
            }
        }
        n += 1;
        let text = std::mem::take(&mut buf);
        if n <= skip {
            continue;
        }
        let ticket = ctx.tracker.ticket(n, Some(serde_json::json!(n)));
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with("//") {
            continue; // ticket dropped: nothing to do for this line
        }
        match parse_line(trimmed, &cfg.name, n) {
            Ok(event) => {
                if ctx.tx.send(Envelope { event: Arc::new(event), ticket }).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => {
                let where_ = format!("{}:{n}", cfg.path.display());
                tracing::error!(source = %cfg.name, "{where_}: not a valid event: {e}; skipped and dead-lettered");
                let placeholder = Event {
                    seq: n,
                    id: format!("{}:{n}", cfg.name),
                    source: cfg.name.clone(),
                    time_ms: now_ms(),
                    body: EventBody::Socket(oplet_sdk::SocketEvent {
                        client: String::new(),
                        event: "invalid_line".into(),
                        payload: Value::String(trimmed.to_string()),
                    }),
                };
                dead.record(&format!("source:{}", cfg.name), &placeholder, &format!("{where_}: {e}"));
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
}
