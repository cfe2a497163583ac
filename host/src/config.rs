//! The host's own configuration (`oplet.toml`), with every key also settable from
//! the environment: `OPLET__PLUGINS__DIR=/srv/plugins` sets `[plugins] dir`, and
//! `OPLET__SOURCE__0__URI=...` sets `uri` of the first `[[source]]`. Unknown keys
//! are errors, so a typo never becomes a silent default.

use crate::manifest::Capabilities;
use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where checkpoints, the module cache, dead letters and (by default) the
    /// audit file live. Relative paths are relative to the config file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Ceilings for every plugin's limits.
    #[serde(default)]
    pub limits: Ceilings,
    /// Capabilities the host grants, by plugin name; `"*"` applies to every plugin.
    #[serde(default)]
    pub grants: BTreeMap<String, Grant>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Where cache-delete effects go.
    pub redis: Option<crate::effect::redis::RedisConfig>,
    /// Where row effects (and optionally audit records) go.
    pub postgres: Option<crate::effect::postgres::PostgresConfig>,
    /// The Socket.IO server: client events in, emit effects out.
    pub socket: Option<crate::source::socket::SocketConfig>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".oplet")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    #[serde(default = "default_plugin_dir")]
    pub dir: PathBuf,
    /// Watch the folder and hot-reload plugins.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Quiet time after the last file event before a change is loaded.
    #[serde(default = "default_debounce")]
    pub debounce_ms: u64,
    /// Cache compiled modules under `state_dir/cache`.
    #[serde(default = "yes")]
    pub cache: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig { dir: default_plugin_dir(), watch: true, debounce_ms: default_debounce(), cache: true }
    }
}

fn default_plugin_dir() -> PathBuf {
    PathBuf::from("plugins")
}
fn default_debounce() -> u64 {
    50
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ceilings {
    #[serde(default = "default_ceiling_time")]
    pub time_ms: u64,
    #[serde(default = "default_ceiling_memory")]
    pub memory_mb: u64,
    #[serde(default = "default_ceiling_reply")]
    pub reply_kb: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings { time_ms: default_ceiling_time(), memory_mb: default_ceiling_memory(), reply_kb: default_ceiling_reply() }
    }
}
fn default_ceiling_time() -> u64 {
    5_000
}
fn default_ceiling_memory() -> u64 {
    512
}
fn default_ceiling_reply() -> u64 {
    16 * 1024
}

/// What the host grants one plugin (or `"*"`, every plugin). A plugin gets the
/// intersection of what its manifest asks for and what is granted here.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Grant whatever the manifest asks for (for trusted, reviewed plugins).
    #[serde(default)]
    pub all_requested: bool,
    #[serde(default)]
    pub cache_prefixes: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub audit: bool,
    #[serde(default)]
    pub emit: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Events as JSON lines from a file (or `-` for stdin): tests, demos, authors.
    Jsonl(JsonlSourceConfig),
    /// A MongoDB change stream (with polling fallback).
    Mongo(crate::source::mongo::MongoSourceConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Jsonl(c) => &c.name,
            SourceConfig::Mongo(c) => &c.name,
        }
    }
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Events buffered between a source and the router, and per plugin.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// What a plugin's failure on an event does: `dead_letter` (record it, go on)
    /// or `halt` (stop the host without checkpointing past the event).
    #[serde(default)]
    pub on_plugin_error: OnPluginError,
    /// Extra attempts on a fresh instance before an event is dead-lettered.
    #[serde(default = "default_retries")]
    pub plugin_retries: u32,
    /// How often the checkpoint is written while events complete.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// Consecutive failed events after which a plugin is quarantined; 0: never.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// How long a quarantine lasts before the next event runs as a probe.
    #[serde(default = "default_quarantine_ms")]
    pub quarantine_ms: u64,
    /// What a quarantined plugin's events do: `dead_letter` (at once, with the
    /// cause) or `hold` (wait for the probe; the checkpoint waits too).
    #[serde(default)]
    pub on_quarantine: OnQuarantine,
    /// How long a shutdown may take to finish the events taken in, flush and
    /// checkpoint; past it the host exits at once (exit code 75).
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            queue: default_queue(),
            on_plugin_error: OnPluginError::default(),
            plugin_retries: default_retries(),
            checkpoint_interval_ms: default_checkpoint_ms(),
            quarantine_after: default_quarantine_after(),
            quarantine_ms: default_quarantine_ms(),
            on_quarantine: OnQuarantine::default(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}
fn default_queue() -> usize {
    1024
}
fn default_retries() -> u32 {
    1
}
fn default_checkpoint_ms() -> u64 {
    100
}
fn default_quarantine_after() -> u32 {
    5
}
fn default_quarantine_ms() -> u64 {
    30_000
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnQuarantine {
    #[default]
    DeadLetter,
    Hold,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnPluginError {
    #[default]
    DeadLetter,
    Halt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON-lines file; default `state_dir/audit.jsonl`.
    pub path: Option<PathBuf>,
    /// Records per write+fsync at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long a batch may wait for more records.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { path: None, batch_max: default_batch_max(), batch_ms: default_batch_ms() }
    }
}
fn default_batch_max() -> usize {
    512
}
fn default_batch_ms() -> u64 {
    5
}

impl Config {
    /// Reads the file, applies `OPLET__...` environment overrides, resolves
    /// relative paths against the file's folder, and validates.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("OPLET__")).collect();
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &env, base).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str, env: &[(String, String)], base: &Path) -> anyhow::Result<Config> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
        let mut doc = toml::Value::Table(doc);
        for (key, value) in env {
            apply_env(&mut doc, key, value)?;
        }
        let mut cfg: Config = doc
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.to_string().trim()))?;
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.state_dir);
        abs(&mut self.plugins.dir);
        if let Some(p) = self.audit.path.as_mut() {
            abs(p);
        }
        for s in &mut self.sources {
            match s {
                SourceConfig::Jsonl(c) => abs(&mut c.path),
                SourceConfig::Mongo(_) => {}
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        for s in &self.sources {
            if !names.insert(s.name()) {
                bail!("two [[source]] entries are named {:?}; source names must be unique", s.name());
            }
        }
        if self.delivery.queue == 0 {
            bail!("[delivery] queue must be at least 1");
        }
        Ok(())
    }

    pub fn audit_path(&self) -> PathBuf {
        self.audit.path.clone().unwrap_or_else(|| self.state_dir.join("audit.jsonl"))
    }

    /// What `plugin` may do: its manifest's request intersected with the grants
    /// for its name and for `"*"`.
    pub fn effective_capabilities(&self, plugin: &str, requested: &Capabilities) -> Capabilities {
        let grants: Vec<&Grant> = [self.grants.get("*"), self.grants.get(plugin)].into_iter().flatten().collect();
        let allowed = |f: &dyn Fn(&Grant) -> bool| grants.iter().any(|g| g.all_requested || f(g));
        Capabilities {
            cache_prefixes: requested
                .cache_prefixes
                .iter()
                .filter(|p| allowed(&|g| g.cache_prefixes.iter().any(|gp| p.starts_with(gp.as_str()))))
                .cloned()
                .collect(),
            tables: requested.tables.iter().filter(|t| allowed(&|g| g.tables.contains(t))).cloned().collect(),
            audit: requested.audit && allowed(&|g| g.audit),
            emit: requested.emit.iter().filter(|e| allowed(&|g| g.emit.contains(e))).cloned().collect(),
        }
    }
}

/// `OPLET__A__B=v` sets `a.b = v`; a numeric segment indexes an array of tables.
/// The value is read as a TOML literal when it parses as one, else as a string.
fn apply_env(doc: &mut toml::Value, key: &str, raw: &str) -> anyhow::Result<()> {
    let path: Vec<String> = key["OPLET__".len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
    if path.iter().any(|p| p.is_empty()) {
        bail!("environment variable {key}: empty segment; use OPLET__SECTION__KEY");
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut cur: &mut toml::Value = doc;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        cur = match cur {
            toml::Value::Table(t) => {
                if last {
                    t.insert(seg.clone(), value);
                    return Ok(());
                }
                t.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            toml::Value::Array(a) => {
                let idx: usize = seg.parse().with_context(|| {
                    format!("environment variable {key}: {seg:?} must be an index into the array")
                })?;
                let len = a.len();
                let item = a.get_mut(idx).with_context(|| {
                    format!("environment variable {key}: index {idx} is past the {len} entries in the config file")
                })?;
                if last {
                    *item = value;
                    return Ok(());
                }
                item
            }
            _ => bail!("environment variable {key}: {seg:?} is not a table in the config"),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_reach_nested_keys_and_array_entries() {
        let env = vec![
            ("OPLET__PLUGINS__DIR".to_string(), "/srv/plugins".to_string()),
            ("OPLET__SOURCE__0__FOLLOW".to_string(), "true".to_string()),
            ("OPLET__DELIVERY__QUEUE".to_string(), "16".to_string()),
        ];
        let cfg = Config::parse(
            "[[source]]\ntype = \"jsonl\"\nname = \"e\"\npath = \"e.jsonl\"\n",
            &env,
            Path::new("/etc/oplet"),
        )
        .unwrap();
        assert_eq!(cfg.plugins.dir, PathBuf::from("/srv/plugins"));
        assert_eq!(cfg.delivery.queue, 16);
        let SourceConfig::Jsonl(j) = &cfg.sources[0] else { panic!("a jsonl source") };
        assert!(j.follow);
        assert_eq!(j.path, PathBuf::from("/etc/oplet/e.jsonl"));
    }

    #[test]
    fn a_misspelled_key_is_an_error_that_names_it() {
        let err = Config::parse("[plugins]\ndri = \"x\"\n", &[], Path::new(".")).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `dri`"), "{err:#}");
    }

    #[test]
    fn a_plugin_gets_only_what_it_asks_for_and_the_host_grants() {
        let cfg = Config::parse(
            "[grants.\"*\"]\naudit = true\n[grants.p]\ncache_prefixes = [\"user:\"]\n",
            &[],
            Path::new("."),
        )
        .unwrap();
        let asked = Capabilities {
            cache_prefixes: vec!["user:".into(), "secret:".into()],
            tables: vec!["t".into()],
            audit: true,
            emit: vec![],
        };
        let got = cfg.effective_capabilities("p", &asked);
        assert_eq!(got.cache_prefixes, vec!["user:".to_string()]);
        assert!(got.tables.is_empty());
        assert!(got.audit);
    }
}
