//! `oplet dlq list|show|replay`: reading and re-driving the dead-letter store.
//!
//! A dead letter's ID is a hash of its line (the store is append-only, so it
//! never changes). Replay marks live in `dead-letters.replays.jsonl` beside the
//! store, fsynced: `claimed` before a letter's event is run, `replayed` or
//! `failed_again` after its effects are applied. A claim without an outcome (the
//! command was killed mid-replay) is "in doubt" and is not run again unless asked
//! by ID with `--again`, so no letter is ever replayed twice by accident.

use crate::append::AppendFile;
use crate::config::Config;
use crate::deadletter::{now_ms, DeadLetters};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// One line of the store.
#[derive(Debug, Clone)]
pub struct Letter {
    pub id: String,
    pub time_ms: i64,
    pub stage: String,
    pub source: String,
    pub seq: u64,
    pub event_id: String,
    pub error: String,
    pub event: Value,
}

/// What the marks file says about a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// Claimed by a replay that never said how it ended (killed mid-replay).
    InDoubt { since_ms: i64 },
    Replayed { at_ms: i64 },
    /// Ran again and failed; the new failure is a new letter in the store.
    FailedAgain { at_ms: i64, cause: String },
}

impl Mark {
    fn word(&self) -> &'static str {
        match self {
            Mark::InDoubt { .. } => "in-doubt",
            Mark::Replayed { .. } => "replayed",
            Mark::FailedAgain { .. } => "failed-again",
        }
    }
}

pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join("dead-letters.jsonl")
}

pub fn marks_path(state_dir: &Path) -> PathBuf {
    state_dir.join("dead-letters.replays.jsonl")
}

/// Every letter in the store, oldest first. A missing store is empty; a line
/// that is not a dead letter is skipped with a warning naming its line number.
pub fn read_store(state_dir: &Path) -> anyhow::Result<Vec<Letter>> {
    let path = store_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read the dead-letter store {}: {e}", path.display()),
    };
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("{} line {}: not a dead letter ({e}); skipped", path.display(), i + 1);
                continue;
            }
        };
        use sha2::Digest;
        let mut id = hex::encode(&sha2::Sha256::digest(line.as_bytes())[..6]);
        // Two identical lines (same stage, event and millisecond) still get two IDs.
        let n = seen.entry(id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            id = format!("{id}-{n}");
        }
        out.push(Letter {
            id,
            time_ms: v["time_ms"].as_i64().unwrap_or(0),
            stage: v["stage"].as_str().unwrap_or("").to_string(),
            source: v["source"].as_str().unwrap_or("").to_string(),
            seq: v["seq"].as_u64().unwrap_or(0),
            event_id: v["event_id"].as_str().unwrap_or("").to_string(),
            error: v["error"].as_str().unwrap_or("").to_string(),
            event: v["event"].clone(),
        });
    }
    Ok(out)
}

/// The latest mark of each letter, by ID.
pub fn read_marks(state_dir: &Path) -> anyhow::Result<BTreeMap<String, Mark>> {
    let path = marks_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => anyhow::bail!("cannot read the replay marks {}: {e}", path.display()),
    };
    let mut marks = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(id), Some(mark), Some(at)) = (v["id"].as_str(), v["mark"].as_str(), v["time_ms"].as_i64()) else { continue };
        let m = match mark {
            "claimed" => Mark::InDoubt { since_ms: at },
            "replayed" => Mark::Replayed { at_ms: at },
            "failed_again" => Mark::FailedAgain { at_ms: at, cause: v["cause"].as_str().unwrap_or("").to_string() },
            _ => continue,
        };
        marks.insert(id.to_string(), m);
    }
    Ok(marks)
}

/// Filters of `dlq list` and `dlq replay`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// The stage: a plugin name, or `sink:postgres (plugin)` and the like.
    pub plugin: Option<String>,
    /// A piece of the error text.
    pub cause: Option<String>,
    /// Only letters written at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    pub ids: Vec<String>,
}

impl Filter {
    fn keeps(&self, l: &Letter) -> bool {
        self.plugin.as_ref().is_none_or(|p| &l.stage == p || l.stage.ends_with(&format!("({p})")))
            && self.cause.as_ref().is_none_or(|c| l.error.contains(c.as_str()))
            && self.since_ms.is_none_or(|t| l.time_ms >= t)
            && (self.ids.is_empty() || self.ids.contains(&l.id))
    }
}

/// `--since`: `30m`, `2h`, `1d`, `45s` ago, or an absolute time in ms since the epoch.
pub fn parse_since(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("--since {s:?}: expected a duration ago like 30s, 15m, 2h, 7d, or milliseconds since the epoch");
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(now_ms().saturating_sub(secs.saturating_mul(1000)))
}

/// `2026-11-30T06:12:39Z` for a time in ms since the epoch (UTC).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::deadletter::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn list(config: &Config, filter: &Filter, as_json: bool) -> anyhow::Result<ExitCode> {
    let letters = read_store(&config.state_dir)?;
    let marks = read_marks(&config.state_dir)?;
    let picked: Vec<&Letter> = letters.iter().filter(|l| filter.keeps(l)).collect();
    for l in &picked {
        let mark = marks.get(&l.id).map(Mark::word).unwrap_or("pending");
        if as_json {
            println!("{}", json!({"id": l.id, "time_ms": l.time_ms, "stage": l.stage, "source": l.source, "seq": l.seq, "event_id": l.event_id, "error": l.error, "replay": mark}));
        } else {
            let error: String = l.error.chars().take(100).collect();
            println!("{}  {}  {:<12}  {:<20}  {}/{}  {}", l.id, utc(l.time_ms), mark, l.stage, l.source, l.seq, error);
        }
    }
    if !as_json {
        eprintln!("{} of {} dead letter(s) in {}", picked.len(), letters.len(), store_path(&config.state_dir).display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(config: &Config, id: &str) -> anyhow::Result<ExitCode> {
    let letters = read_store(&config.state_dir)?;
    let marks = read_marks(&config.state_dir)?;
    let Some(l) = letters.iter().find(|l| l.id == id) else {
        anyhow::bail!("no dead letter has ID {id:?} in {} (`oplet dlq list` shows the IDs)", store_path(&config.state_dir).display());
    };
    let replay = match marks.get(id) {
        None => json!({"state": "pending"}),
        Some(Mark::InDoubt { since_ms }) => json!({"state": "in-doubt", "claimed_at": utc(*since_ms), "note": "a replay claimed it and was cut short: its effects may or may not be applied; `oplet dlq replay --id ID --again` runs it again (effects are idempotent)"}),
        Some(Mark::Replayed { at_ms }) => json!({"state": "replayed", "at": utc(*at_ms)}),
        Some(Mark::FailedAgain { at_ms, cause }) => json!({"state": "failed-again", "at": utc(*at_ms), "cause": cause}),
    };
    let out = json!({"id": l.id, "time": utc(l.time_ms), "stage": l.stage, "source": l.source, "seq": l.seq, "event_id": l.event_id, "error": l.error, "replay": replay, "event": l.event});
    println!("{}", serde_json::to_string_pretty(&out).expect("json serializes"));
    Ok(ExitCode::SUCCESS)
}

/// A lock on the state folder: the running host holds it shared, `dlq replay`
/// exclusive, so a replay never appends to the store while a host does (each
/// keeps its own idea of the file's last good length).
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    fn open(state_dir: &Path) -> anyhow::Result<std::fs::File> {
        let path = state_dir.join("oplet.lock");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the state lock {}: {e}", path.display()))
    }

    /// Held by `oplet run` for its lifetime.
    pub fn shared(state_dir: &Path) -> anyhow::Result<StateLock> {
        let file = StateLock::open(state_dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "state_dir {}: `oplet dlq replay` is running on it; start the host when it is done",
                state_dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => anyhow::bail!("cannot lock {}: {e}", state_dir.join("oplet.lock").display()),
        }
    }

    /// Held by `oplet dlq replay`.
    pub fn exclusive(state_dir: &Path) -> anyhow::Result<StateLock> {
        let file = StateLock::open(state_dir)?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "a host is running with state_dir {}: stop it before replaying (it appends to the same dead-letter store), then start it again",
                state_dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => anyhow::bail!("cannot lock {}: {e}", state_dir.join("oplet.lock").display()),
        }
    }
}

/// What one replay run did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub replayed: usize,
    pub failed_again: usize,
    pub skipped: Vec<String>,
}

/// Runs each selected letter's event through the current version of its plugin
/// (from the plugin folder, with the host's grants and limits) and the same
/// executors as `oplet run`, then marks it. Letters of sinks and sources (not a
/// plugin) and letters already marked are skipped, with the reason printed.
pub fn replay(config: Config, filter: &Filter, again: bool) -> anyhow::Result<ExitCode> {
    let _lock = StateLock::exclusive(&config.state_dir)?;
    let letters = read_store(&config.state_dir)?;
    let marks = read_marks(&config.state_dir)?;
    let mut todo = Vec::new();
    let mut skipped = 0;
    for l in letters.iter().filter(|l| filter.keeps(l)) {
        match marks.get(&l.id) {
            None => {}
            Some(Mark::InDoubt { since_ms }) if again && filter.ids.contains(&l.id) => {
                println!("{}: claimed at {} by a replay that was cut short; running it again (--again)", l.id, utc(*since_ms));
            }
            Some(m) => {
                skipped += 1;
                let hint = if matches!(m, Mark::InDoubt { .. }) { " (cut short: `--id ID --again` runs it again)" } else { "" };
                println!("{}: skipped, already {}{hint}", l.id, m.word());
                continue;
            }
        }
        if l.stage.contains(':') {
            skipped += 1;
            println!("{}: skipped, stage {:?} is not a plugin (a sink or source failure); fix the service and re-send the event through a JSON-lines source", l.id, l.stage);
            continue;
        }
        todo.push(l.clone());
    }
    if todo.is_empty() {
        println!("nothing to replay ({skipped} skipped)");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let done = rt.block_on(replay_letters(Arc::new(config), todo))?;
    println!("replayed {}, failed again {} (now new dead letters), skipped {}", done.replayed, done.failed_again, skipped + done.skipped.len());
    for s in &done.skipped {
        println!("  {s}");
    }
    Ok(if done.failed_again == 0 && done.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn replay_letters(config: Arc<Config>, todo: Vec<Letter>) -> anyhow::Result<Replayed> {
    use crate::effect::{audit::AuditHandle, postgres::PostgresHandle, redis::RedisHandle, Effects, Executors};
    let health = crate::health::Health::new();
    let dead = Arc::new(DeadLetters::open_with_health(&store_path(&config.state_dir), health.clone())?);
    let audit = AuditHandle::start(&config.audit_path(), config.audit.batch_max, config.audit.batch_ms, config.delivery.queue, health.clone())?;
    let cache = config.redis.as_ref().map(|c| RedisHandle::start(c, dead.clone())).transpose()?;
    let rows = config.postgres.as_ref().map(|c| PostgresHandle::start(c, dead.clone())).transpose()?;
    // No Socket.IO server runs here: an emit is refused and goes back to the store.
    let effects = Arc::new(Effects::new(Executors::with_sinks(audit, cache, rows, None), dead.clone()));
    let mut marks = AppendFile::open(&marks_path(&config.state_dir), "replay marks file")?;
    let runtime = Arc::new(crate::runtime::Runtime::new(config.plugins.cache.then(|| config.state_dir.join("cache")))?);
    let tracker = crate::checkpoint::Tracker::unreplayable("dlq-replay");
    let cfg = config.clone();
    let eff = effects.clone();
    let dl = dead.clone();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<Replayed> {
        let mut out = Replayed::default();
        let mut plugins: BTreeMap<String, Result<(crate::runtime::Instance, crate::manifest::Capabilities, String), String>> = BTreeMap::new();
        for (n, l) in todo.into_iter().enumerate() {
            let loaded = plugins.entry(l.stage.clone()).or_insert_with(|| load_plugin(&runtime, &cfg, &l.stage));
            let (instance, caps, version) = match loaded {
                Ok(p) => p,
                Err(why) => {
                    out.skipped.push(format!("{}: plugin {:?}: {why}", l.id, l.stage));
                    continue;
                }
            };
            let event: oplet_sdk::Event = match serde_json::from_value(l.event.clone()) {
                Ok(e) => e,
                Err(e) => {
                    out.skipped.push(format!("{}: its event is not readable ({e})", l.id));
                    continue;
                }
            };
            let event = match crate::envelope::Event::encode(&event) {
                Ok(e) => e,
                Err(e) => {
                    out.skipped.push(format!("{}: its event cannot be encoded ({e})", l.id));
                    continue;
                }
            };
            mark(&mut marks, &l.id, "claimed", None)?;
            match instance.handle(event.bytes()) {
                Ok(returned) => {
                    let event = Arc::new(event);
                    let ticket = tracker.ticket(n as u64 + 1, None);
                    let before = tracker.completed();
                    eff.submit(&l.stage, caps, &event, returned, &ticket);
                    drop(ticket);
                    // Applied (or, failing, dead-lettered anew) before it counts as replayed.
                    while tracker.completed() == before {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    mark(&mut marks, &l.id, "replayed", None)?;
                    println!("{}: replayed through {} v{version} (seq {} of {})", l.id, l.stage, l.seq, l.source);
                    out.replayed += 1;
                }
                Err(e) => {
                    let cause = format!("replay of dead letter {}: {e}", l.id);
                    dl.record(&l.stage, &[&event], &cause).map_err(|e| anyhow::anyhow!("{e}"))?;
                    mark(&mut marks, &l.id, "failed_again", Some(&e.to_string()))?;
                    println!("{}: failed again in {} v{version}: {e}", l.id, l.stage);
                    out.failed_again += 1;
                    if e.poisons_instance() {
                        *loaded = load_plugin(&runtime, &cfg, &l.stage);
                    }
                }
            }
        }
        Ok(out)
    })
    .await?;
    effects.shutdown().await;
    result
}

type LoadedPlugin = (crate::runtime::Instance, crate::manifest::Capabilities, String);

fn load_plugin(runtime: &Arc<crate::runtime::Runtime>, config: &Config, name: &str) -> Result<LoadedPlugin, String> {
    let wasm = config.plugins.dir.join(format!("{name}.wasm"));
    let files = crate::plugins::reload::PluginFiles::read(&wasm, &wasm.with_extension("toml")).map_err(|e| format!("{e:#}"))?;
    let (code, manifest) = files.load(runtime, config).map_err(|e| format!("{e:#}"))?;
    let caps = config.effective_capabilities(name, &manifest.capabilities);
    let instance = code.new_instance().map_err(|e| format!("cannot instantiate: {e}"))?;
    Ok((instance, caps, manifest.version.clone()))
}

fn mark(file: &mut AppendFile, id: &str, what: &str, cause: Option<&str>) -> anyhow::Result<()> {
    let mut line = json!({"id": id, "mark": what, "time_ms": now_ms(), "cause": cause}).to_string();
    line.push('\n');
    file.append(line.as_bytes()).map_err(|e| anyhow::anyhow!("cannot write the replay mark of {id} to {}: {e}; stopping", file.path().display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_019_159_000), "2026-11-30T06:12:39Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn since_takes_durations_and_rejects_the_rest() {
        let t = parse_since("2h").unwrap();
        assert!((now_ms() - t - 7_200_000).abs() < 5_000);
        assert_eq!(parse_since("1234").unwrap(), 1234);
        assert!(parse_since("2 weeks").is_err());
        assert!(parse_since("99999999999999999999d").is_err());
    }

    #[test]
    fn ids_are_stable_and_unique_and_marks_are_read_back() {
        let dir = std::env::temp_dir().join(format!("oplet-dlq-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = r#"{"time_ms":1,"stage":"p","source":"s","seq":3,"event_id":"e","error":"boom","event":{}}"#;
        std::fs::write(store_path(&dir), format!("{line}\n{line}\nnot json\n")).unwrap();
        let a = read_store(&dir).unwrap();
        assert_eq!(a.len(), 2);
        assert_ne!(a[0].id, a[1].id);
        assert_eq!(a[0].id, read_store(&dir).unwrap()[0].id);
        let mut f = AppendFile::open(&marks_path(&dir), "marks").unwrap();
        mark(&mut f, &a[0].id, "claimed", None).unwrap();
        mark(&mut f, &a[1].id, "claimed", None).unwrap();
        mark(&mut f, &a[1].id, "replayed", None).unwrap();
        let m = read_marks(&dir).unwrap();
        assert!(matches!(m.get(&a[0].id), Some(Mark::InDoubt { .. })));
        assert!(matches!(m.get(&a[1].id), Some(Mark::Replayed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
