//! Reading what a running or stopped host exposes in its `state_dir`: JSON-lines
//! files (audit, dead letters), the checkpoint of a JSON-lines source and the
//! plugin status file. Scenarios wait on these rather than on log wording.

use serde_json::Value;
use std::path::Path;

/// Every line of a JSON-lines file, each parsed (a line that does not parse fails
/// the test, naming the file and line); no file yet is no lines.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse(path, &text)
}

/// Like `read_json_lines`, but for a file the host is still writing: a last line
/// without its newline (being written) is left out.
pub fn read_complete_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    parse(path, complete)
}

fn parse(path: &Path, text: &str) -> Vec<Value> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: unreadable ({e}): {l}", path.display(), n + 1))
        })
        .collect()
}

/// The saved checkpoint of JSON-lines source `source` under `state_dir`: the last
/// line done (`{"line": N, ...}`; a bare number from older hosts is read too).
pub fn jsonl_checkpoint(state_dir: &Path, source: &str) -> Option<u64> {
    let text = std::fs::read_to_string(state_dir.join(format!("checkpoints/{source}.json"))).ok()?;
    let v = serde_json::from_str::<Value>(&text).ok()?;
    v.get("line").and_then(Value::as_u64).or_else(|| v.as_u64())
}

/// The host's view of one plugin (`state_dir/plugins.json`), or null before it
/// was written.
pub fn plugin_status(state_dir: &Path, plugin: &str) -> Value {
    let text = std::fs::read_to_string(state_dir.join("plugins.json")).unwrap_or_default();
    serde_json::from_str::<Value>(&text).map(|v| v["plugins"][plugin].clone()).unwrap_or(Value::Null)
}
