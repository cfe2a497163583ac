//! `oplet plugin test`: runs a module on sample events exactly as the host would
//! (same loader, limits, subscription filter) and prints what each event gave; with
//! `--expect FILE` it compares that, event by event, with a golden file and prints
//! a diff per differing event, so an author's CI fails on a changed behaviour.
//!
//! Exit codes: 0 all as expected; 1 a mismatch, an event that failed (without
//! `--expect`), or with `--check-capabilities` an effect the manifest does not ask
//! for; 2 (from the caller) an unreadable module, manifest or file.

use crate::effect;
use crate::manifest::Manifest;
use crate::runtime::PluginCode;
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::ExitCode;

/// What the command line asked for.
pub struct Options<'a> {
    pub events: &'a Path,
    pub expect: Option<&'a Path>,
    pub update: bool,
    pub check_capabilities: bool,
}

/// What one event gave: the line in the golden file (`id` and one of `effects`,
/// `error`, `skipped`), and the reasons the manifest refuses some of its effects.
struct Outcome {
    line: u64,
    seq: Option<u64>,
    id: String,
    golden: Value,
    failed: bool,
    /// (index of the effect, why the manifest refuses it).
    refused: Vec<(usize, String)>,
}

pub fn run(code: &PluginCode, m: &Manifest, opts: &Options) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(opts.events).with_context(|| format!("cannot read events file {}", opts.events.display()))?;
    let outcomes = run_events(code, m, &text)?;
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| !o.refused.is_empty()).collect();

    let Some(expect_path) = opts.expect else {
        // No golden file: one JSON line per event, as before.
        for o in &outcomes {
            println!("{}", legacy_line(o));
        }
        let failed = outcomes.iter().any(|o| o.failed) || (opts.check_capabilities && !refused.is_empty());
        report_refused(&refused, opts.check_capabilities);
        return Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS });
    };

    // Expectations are matched by event id: two events with one id cannot both have one.
    let mut first_line = std::collections::HashMap::new();
    for o in &outcomes {
        if let Some(first) = first_line.insert(o.id.as_str(), o.line) {
            anyhow::bail!(
                "{} line {}: event id {:?} is also on line {first}; --expect matches events by id: give each event its own \"id\" (or leave ids out: they default to test:LINE)",
                opts.events.display(), o.line, o.id
            );
        }
    }

    if opts.update {
        let mut out = String::new();
        for o in &outcomes {
            out.push_str(&serde_json::to_string(&o.golden).expect("json serializes"));
            out.push('\n');
        }
        write_atomically(expect_path, &out)?;
        println!("wrote the outcomes of {} event(s) to {}", outcomes.len(), expect_path.display());
        report_refused(&refused, opts.check_capabilities);
        let fail = opts.check_capabilities && !refused.is_empty();
        return Ok(if fail { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }

    let expected = read_expected(expect_path)?;
    let (mut mismatches, mut passed) = (0, 0);
    let mut seen = HashSet::new();
    for o in &outcomes {
        seen.insert(o.id.clone());
        match expected.get(&o.id) {
            Some((_, want)) if *want == o.golden => {
                passed += 1;
                println!("ok    {} (events line {})", o.id, o.line)
            }
            Some((at, want)) => {
                mismatches += 1;
                println!("FAIL  {} (events line {}, {} line {at}): {}", o.id, o.line, expect_path.display(), what_differs(want, &o.golden));
                print!("{}", diff(&pretty(want), &pretty(&o.golden)));
            }
            None => {
                mismatches += 1;
                println!("FAIL  {} (events line {}): no expectation for this event id in {}; it gave:", o.id, o.line, expect_path.display());
                print!("{}", diff("", &pretty(&o.golden)));
            }
        }
    }
    let mut orphans: Vec<(&String, &u64)> = expected.iter().filter(|(id, _)| !seen.contains(*id)).map(|(id, (at, _))| (id, at)).collect();
    orphans.sort_by_key(|(_, at)| **at);
    for (id, at) in &orphans {
        mismatches += 1;
        println!("FAIL  {id} ({} line {at}): expected, but no event with this id is in {}", expect_path.display(), opts.events.display());
    }
    report_refused(&refused, opts.check_capabilities);
    let cap_fail = opts.check_capabilities && !refused.is_empty();
    println!(
        "{} event(s): {passed} as expected, {mismatches} mismatch(es){}",
        outcomes.len(),
        if mismatches > 0 { " (after a deliberate change, rerun with --update to rewrite the expected file)" } else { "" }
    );
    Ok(if mismatches > 0 || cap_fail { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Runs every event of the file through one instance (a new one after a trap, as the host does).
fn run_events(code: &PluginCode, m: &Manifest, text: &str) -> anyhow::Result<Vec<Outcome>> {
    let mut instance = code.new_instance().map_err(|e| anyhow::anyhow!("cannot instantiate: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let event = match crate::source::jsonl::parse_line(line, "test", n).and_then(|e| crate::envelope::Event::encode(&e)) {
            Ok(e) => e,
            Err(e) => {
                let id = format!("test:{n}");
                let error = format!("not a valid event: {e}");
                out.push(Outcome { line: n, seq: None, golden: json!({"id": id, "error": error}), id, failed: true, refused: vec![] });
                continue;
            }
        };
        let (id, seq) = (event.id.clone(), Some(event.seq));
        // The host never runs a plugin on an event it does not subscribe to: neither
        // does this test, so its output is what the plugin would do when deployed.
        if !m.matches(&event) {
            out.push(Outcome { line: n, seq, golden: json!({"id": id, "skipped": "not subscribed"}), id, failed: false, refused: vec![] });
            continue;
        }
        match instance.handle(event.bytes()) {
            Ok(effects) => {
                let refused = effects
                    .iter()
                    .enumerate()
                    .filter_map(|(k, eff)| effect::check(eff, &m.capabilities).err().map(|r| (k, format!("effect {} ({}): {r}", k + 1, kind_of(eff)))))
                    .collect();
                let effects: Vec<Value> = effects.iter().map(|e| serde_json::to_value(e).expect("effect serializes")).collect();
                out.push(Outcome { line: n, seq, golden: json!({"id": id, "effects": effects}), id, failed: false, refused });
            }
            Err(e) => {
                out.push(Outcome { line: n, seq, golden: json!({"id": id, "error": e.to_string()}), id, failed: true, refused: vec![] });
                if e.poisons_instance() {
                    instance = code.new_instance().map_err(|e| anyhow::anyhow!("cannot instantiate: {e}"))?;
                }
            }
        }
    }
    Ok(out)
}

fn kind_of(e: &oplet_sdk::Effect) -> String {
    serde_json::to_value(e).ok().and_then(|v| v["kind"].as_str().map(str::to_string)).unwrap_or_else(|| "?".into())
}

/// The output without `--expect`: one JSON object per event, refused effects marked.
fn legacy_line(o: &Outcome) -> Value {
    let mut v = json!({"line": o.line, "seq": o.seq, "id": o.id});
    if let Some(effects) = o.golden.get("effects") {
        let mut effects = effects.clone();
        for (k, reason) in &o.refused {
            effects[*k]["refused"] = Value::String(format!("the manifest does not ask for this: {}", reason.split_once("): ").map_or(reason.as_str(), |x| x.1)));
        }
        v["subscribed"] = true.into();
        v["effects"] = effects;
    } else if o.golden.get("skipped").is_some() {
        v["subscribed"] = false.into();
        v["skipped"] = "the manifest's [[subscribe]] does not match this event (kind, namespace or operation), so the host would not run the plugin on it".into();
    } else {
        v["error"] = o.golden["error"].clone();
    }
    v
}

fn report_refused(refused: &[&Outcome], fatal: bool) {
    for o in refused {
        for (_, r) in &o.refused {
            let tag = if fatal { "REFUSED" } else { "warning" };
            eprintln!("{tag}: {} (events line {}): {r}; the host would dead-letter it: ask for it in the manifest's [capabilities]", o.id, o.line);
        }
    }
}

/// id → (line in the file, expected outcome).
fn read_expected(path: &Path) -> anyhow::Result<BTreeMap<String, (u64, Value)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read expected file {} (create it with --update)", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("{} line {n}: not JSON", path.display()))?;
        let Some(id) = v.get("id").and_then(Value::as_str).map(str::to_string) else {
            anyhow::bail!("{} line {n}: no \"id\" (each line is {{\"id\": EVENT_ID, \"effects\": [...]}}, or \"error\" or \"skipped\" instead of \"effects\")", path.display());
        };
        if !["effects", "error", "skipped"].iter().any(|k| v.get(*k).is_some()) {
            anyhow::bail!("{} line {n}: event {id:?} has none of \"effects\", \"error\", \"skipped\"", path.display());
        }
        if let Some((first, _)) = out.insert(id.clone(), (n, v)) {
            anyhow::bail!("{} line {n}: event {id:?} is also on line {first}: one line per event id", path.display());
        }
    }
    Ok(out)
}

/// A few words on how `got` differs from `want`.
fn what_differs(want: &Value, got: &Value) -> String {
    let outcome = |v: &Value| ["effects", "error", "skipped"].into_iter().find(|k| v.get(*k).is_some()).unwrap_or("?");
    match (outcome(want), outcome(got)) {
        ("effects", "effects") => {
            let (w, g) = (want["effects"].as_array().map_or(0, Vec::len), got["effects"].as_array().map_or(0, Vec::len));
            if w == g {
                format!("the {g} effect(s) differ")
            } else {
                format!("{g} effect(s) instead of {w}")
            }
        }
        (w, g) if w == g => format!("the {g} differs"),
        (w, g) => format!("expected {w}, got {g}"),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("json serializes") + "\n"
}

/// A line diff (`-` expected, `+` got, two spaces both), by longest common subsequence.
fn diff(want: &str, got: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    // Effects are small; past this, print both sides whole instead of a quadratic table.
    if a.len() * b.len() > 4_000_000 {
        let mut out = String::new();
        a.iter().for_each(|l| out.push_str(&format!("    - {l}\n")));
        b.iter().for_each(|l| out.push_str(&format!("    + {l}\n")));
        return out;
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("      {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // What was expected and is gone, before what came instead.
            out.push_str(&format!("    - {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("    + {}\n", b[j]));
            j += 1;
        }
    }
    out
}

/// Writes beside the file and renames over it, so an interrupted `--update`
/// leaves the old file whole.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_marks_what_changed_and_keeps_the_rest() {
        let d = diff("a\nb\nc\n", "a\nx\nc\nd\n");
        assert_eq!(d, "      a\n    - b\n    + x\n      c\n    + d\n");
        assert_eq!(diff("", "a\n"), "    + a\n");
    }

    #[test]
    fn the_summary_names_the_kind_of_difference() {
        let e = |n: usize| json!({"id": "x", "effects": vec![json!({"kind": "log"}); n]});
        assert_eq!(what_differs(&e(1), &e(2)), "2 effect(s) instead of 1");
        assert_eq!(what_differs(&e(1), &json!({"id": "x", "error": "trap"})), "expected effects, got error");
        assert_eq!(what_differs(&json!({"error": "a"}), &json!({"error": "b"})), "the error differs");
    }

    #[test]
    fn an_expected_file_without_ids_or_with_duplicates_is_refused_by_line() {
        let dir = std::env::temp_dir().join(format!("oplet-expect-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("expected.jsonl");
        std::fs::write(&f, "{\"effects\": []}\n").unwrap();
        assert!(read_expected(&f).unwrap_err().to_string().contains("line 1: no \"id\""));
        std::fs::write(&f, "{\"id\":\"a\",\"effects\":[]}\n\n{\"id\":\"a\",\"error\":\"x\"}\n").unwrap();
        assert!(read_expected(&f).unwrap_err().to_string().contains("line 3: event \"a\" is also on line 1"));
        std::fs::write(&f, "{\"id\":\"a\"}\n").unwrap();
        assert!(read_expected(&f).unwrap_err().to_string().contains("none of"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
