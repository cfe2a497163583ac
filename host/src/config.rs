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
    /// Several hosts sharing the MongoDB sources' streams through leases.
    #[serde(default)]
    pub cluster: crate::cluster::ClusterConfig,
    /// The admin listener (metrics, health, status page); off when absent.
    pub admin: Option<crate::admin::AdminConfig>,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`: how the host writes its log lines (to stderr).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (one object per line); `--log-format` wins.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
    /// At start, how long the sources wait for plugins still compiling. A plugin
    /// compiled later is installed then and receives events from that moment.
    #[serde(default = "default_start_wait")]
    pub start_wait_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: default_plugin_dir(),
            watch: true,
            debounce_ms: default_debounce(),
            cache: true,
            start_wait_ms: default_start_wait(),
        }
    }
}

fn default_plugin_dir() -> PathBuf {
    PathBuf::from("plugins")
}
fn default_debounce() -> u64 {
    50
}
fn default_start_wait() -> u64 {
    30_000
}
fn yes() -> bool {
    true
}

/// Host-wide ceilings: every plugin's `[limits]` is clamped to these, and the
/// module size and compile budget apply to every module the host loads. A value
/// out of its range (0, or past what the runtime can enforce) is a config error.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ceilings {
    #[serde(default = "default_ceiling_time")]
    pub time_ms: u64,
    /// One budget per instance: linear memory and tables together.
    #[serde(default = "default_ceiling_memory")]
    pub memory_mb: u64,
    #[serde(default = "default_ceiling_reply")]
    pub reply_kb: u64,
    /// Effects one call may return.
    #[serde(default = "default_ceiling_effects")]
    pub effects: u64,
    /// Bytes per second a plugin may write through `oplet.log`.
    #[serde(default = "default_ceiling_log")]
    pub log_kb_per_s: u64,
    /// Largest `.wasm` file the host compiles.
    #[serde(default = "default_module_mb")]
    pub module_mb: u64,
    /// How long one compile may take before the module is refused.
    #[serde(default = "default_compile_ms")]
    pub compile_ms: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            time_ms: default_ceiling_time(),
            memory_mb: default_ceiling_memory(),
            reply_kb: default_ceiling_reply(),
            effects: default_ceiling_effects(),
            log_kb_per_s: default_ceiling_log(),
            module_mb: default_module_mb(),
            compile_ms: default_compile_ms(),
        }
    }
}

impl Ceilings {
    /// Every ceiling must lie in the range the runtime can enforce (see
    /// `runtime::limits::RANGES`); the error names the key and the range.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::runtime::limits::check_range;
        for (key, value) in [
            ("time_ms", self.time_ms),
            ("memory_mb", self.memory_mb),
            ("reply_kb", self.reply_kb),
            ("effects", self.effects),
            ("log_kb_per_s", self.log_kb_per_s),
            ("module_mb", self.module_mb),
            ("compile_ms", self.compile_ms),
        ] {
            check_range(key, value).map_err(|e| anyhow::anyhow!("[limits] {e}"))?;
        }
        Ok(())
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
fn default_ceiling_effects() -> u64 {
    10_000
}
fn default_ceiling_log() -> u64 {
    1024
}
fn default_module_mb() -> u64 {
    16
}
fn default_compile_ms() -> u64 {
    60_000
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
    Jsonl(crate::source::jsonl::JsonlSourceConfig),
    /// A MongoDB change stream (with polling fallback).
    Mongo(crate::source::mongo::MongoSourceConfig),
}

impl SourceConfig {
    /// The source this config describes, ready to start.
    pub fn build(self) -> Box<dyn crate::source::Source> {
        match self {
            SourceConfig::Jsonl(c) => Box::new(c),
            SourceConfig::Mongo(c) => Box::new(c),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Jsonl(c) => &c.name,
            SourceConfig::Mongo(c) => &c.name,
        }
    }
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
    /// relative paths against the file's folder, and validates. Environment
    /// variables not named `OPLET__...` are never looked at, whatever their bytes.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let env = oplet_env(std::env::vars_os())?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &env, base).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str, env: &[(String, String)], base: &Path) -> anyhow::Result<Config> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", syntax_error(text, &e)))?;
        let mut doc = toml::Value::Table(doc);
        // Where each overridden key came from, so an error can name the variable.
        let mut origin = BTreeMap::new();
        for (key, value) in env {
            let path = apply_env(&mut doc, key, value)?;
            origin.insert(path, key.clone());
        }
        check_numbers(&doc, &origin)?;
        let mut cfg: Config = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            let from = env_origin(&origin, &path);
            anyhow::anyhow!("config key {path}{from}: {}", one_line(&e.inner().to_string()))
        })?;
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
                SourceConfig::Mongo(m) => {
                    if let Some(p) = m.password_file.as_mut() {
                        abs(p);
                    }
                }
            }
        }
        // Secret and certificate files of the sinks, like every other path.
        let mut files: Vec<&mut PathBuf> = Vec::new();
        if let Some(r) = self.redis.as_mut() {
            files.extend(r.password_file.as_mut());
            files.extend([r.tls.ca_file.as_mut(), r.tls.cert_file.as_mut(), r.tls.key_file.as_mut()].into_iter().flatten());
        }
        if let Some(p) = self.postgres.as_mut() {
            files.extend(p.password_file.as_mut());
            files.extend([p.tls.ca_file.as_mut(), p.tls.cert_file.as_mut(), p.tls.key_file.as_mut()].into_iter().flatten());
        }
        for f in files {
            abs(f);
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut names = std::collections::HashSet::new();
        for s in &self.sources {
            if !names.insert(s.name()) {
                bail!("two [[source]] entries are named {:?}; source names must be unique", s.name());
            }
        }
        for (i, s) in self.sources.iter().enumerate() {
            if let SourceConfig::Mongo(m) = s {
                m.targets().with_context(|| format!("config key source[{i}] (source {:?})", m.name))?;
                crate::source::mongo::check_uri(&m.uri).with_context(|| format!("config key source[{i}].uri"))?;
                if let Some(uri) = &m.checkpoint.uri {
                    crate::source::mongo::check_uri(uri).with_context(|| format!("config key source[{i}].checkpoint.uri"))?;
                }
            }
        }
        self.limits.validate()?;
        if let Some(admin) = &self.admin {
            admin.addr()?;
        }
        self.cluster.validate(&self.sources)?;
        Ok(())
    }

    pub fn audit_path(&self) -> PathBuf {
        self.audit.path.clone().unwrap_or_else(|| self.state_dir.join("audit.jsonl"))
    }

    /// `[grants."NAME"]` entries that name none of `plugins` (a typo grants nothing).
    pub fn unknown_grants<'a>(&'a self, plugins: &[String]) -> Vec<&'a str> {
        self.grants.keys().filter(|k| *k != "*" && !plugins.contains(k)).map(String::as_str).collect()
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

/// The `OPLET__...` variables of `vars`, in order. Others are skipped unread (a
/// non-UTF-8 `LS_COLORS` is none of our business); an `OPLET__` one that is not
/// UTF-8 is an error naming it, never a panic.
pub fn oplet_env(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> anyhow::Result<Vec<(String, String)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for (key, value) in vars {
        if !key.as_bytes().starts_with(b"OPLET__") {
            continue;
        }
        let Some(name) = key.to_str() else {
            bail!("environment variable {}: its name is not valid UTF-8; unset it", key.to_string_lossy());
        };
        let Some(value) = value.to_str() else {
            // The value is not shown: it may be a password.
            bail!("environment variable {name}: its value is not valid UTF-8; set it to UTF-8 text or unset it");
        };
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

/// `OPLET__A__B=v` sets `a.b = v`; a numeric segment indexes an array of tables.
/// The value is read as a TOML literal when it parses as one, else as a string.
/// Returns the key's path as errors name it (`source[0].uri`).
fn apply_env(doc: &mut toml::Value, key: &str, raw: &str) -> anyhow::Result<String> {
    let path: Vec<String> = key["OPLET__".len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
    if path.iter().any(|p| p.is_empty()) {
        bail!("environment variable {key}: empty segment; use OPLET__SECTION__KEY");
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut shown = String::new();
    let mut cur: &mut toml::Value = doc;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        cur = match cur {
            toml::Value::Table(t) => {
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(seg);
                if last {
                    t.insert(seg.clone(), value);
                    return Ok(shown);
                }
                t.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
            }
            toml::Value::Array(a) => {
                let idx: usize = seg.parse().map_err(|_| {
                    anyhow::anyhow!("environment variable {key}: {seg:?} must be an index into the array {shown}")
                })?;
                shown.push_str(&format!("[{idx}]"));
                let len = a.len();
                let item = a.get_mut(idx).with_context(|| {
                    format!("environment variable {key}: index {idx} is past the {len} entries in the config file")
                })?;
                if last {
                    *item = value;
                    return Ok(shown);
                }
                item
            }
            _ => bail!("environment variable {key}: {shown} is not a table in the config"),
        };
    }
    Ok(shown)
}

/// ` (from OPLET__...)` when `path`, or a table above it, was set from the environment.
fn env_origin(origin: &BTreeMap<String, String>, path: &str) -> String {
    let mut p = path;
    loop {
        if let Some(var) = origin.get(p) {
            return format!(" (from {var})");
        }
        match p.rfind(['.', '[']) {
            Some(i) => p = &p[..i],
            None => return String::new(),
        }
    }
}

/// A TOML syntax error as its line, column and message, without the quoted source
/// line the parser would show: that line may hold a password.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("TOML syntax error at line {line}, column {column}: {}", one_line(e.message()))
        }
        None => one_line(e.message()),
    }
}

/// Error text on one line: the operator reads one line per failure.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The range of every numeric key: checked on the raw document, before serde, so
/// that `2^63`, `-1`, `1e30` or `"abc"` is one error naming the key, and a value that
/// would size a queue or a buffer is bounded before anything allocates. `*` stands
/// for any `[[source]]` index. The README's configuration reference lists the same.
pub const NUMERIC_KEYS: &[(&str, i64, i64)] = &[
    ("plugins.debounce_ms", 0, 60_000),
    ("plugins.start_wait_ms", 0, 3_600_000),
    ("limits.time_ms", 1, 3_600_000),
    ("limits.memory_mb", 1, 4_096),
    ("limits.reply_kb", 1, 1_048_576),
    ("limits.effects", 1, 1_000_000),
    ("limits.log_kb_per_s", 1, 1_048_576),
    ("limits.module_mb", 1, 1_024),
    ("limits.compile_ms", 1, 3_600_000),
    ("delivery.queue", 1, 1_000_000),
    ("delivery.plugin_retries", 0, 100),
    ("delivery.checkpoint_interval_ms", 1, 3_600_000),
    ("delivery.quarantine_after", 0, 1_000_000),
    ("delivery.quarantine_ms", 1, 86_400_000),
    ("delivery.shutdown_timeout_ms", 1, 86_400_000),
    ("cluster.lease_ms", 300, 86_400_000),
    ("cluster.renew_ms", 50, 28_800_000),
    ("audit.batch_max", 1, 100_000),
    ("audit.batch_ms", 0, 60_000),
    ("redis.batch_max", 1, 100_000),
    ("redis.batch_ms", 0, 60_000),
    ("redis.queue", 1, 1_000_000),
    ("redis.retries", 0, 1_000),
    ("redis.backoff_ms", 1, 3_600_000),
    ("redis.backoff_max_ms", 1, 86_400_000),
    ("redis.timeout_ms", 1, 3_600_000),
    ("postgres.batch_max", 1, 100_000),
    ("postgres.batch_ms", 0, 60_000),
    ("postgres.queue", 1, 1_000_000),
    ("postgres.retries", 0, 1_000),
    ("postgres.backoff_ms", 1, 3_600_000),
    ("postgres.backoff_max_ms", 1, 86_400_000),
    ("postgres.connect_timeout_ms", 1, 3_600_000),
    ("postgres.timeout_ms", 1, 3_600_000),
    ("socket.hold_ms", 0, 86_400_000),
    ("socket.hold_max", 0, 1_000_000),
    ("socket.max_payload_kb", 1, 1_048_576),
    ("socket.client_queue", 1, 100_000),
    ("source.*.batch_size", 1, 1_000_000),
    ("source.*.max_await_ms", 1, 3_600_000),
    ("source.*.idle_pause_min_ms", 0, 60_000),
    ("source.*.idle_pause_max_ms", 0, 600_000),
    ("source.*.snapshot_batch", 1, 1_000_000),
    ("source.*.snapshot_progress_ms", 1, 86_400_000),
    ("source.*.server_selection_timeout_ms", 1, 3_600_000),
    ("source.*.reconnect.initial_ms", 1, 3_600_000),
    ("source.*.reconnect.max_ms", 1, 86_400_000),
    ("source.*.fallback.interval_ms", 1, 86_400_000),
    ("source.*.fallback.batch", 1, 100_000),
];

fn check_numbers(doc: &toml::Value, origin: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for &(pattern, min, max) in NUMERIC_KEYS {
        let segs: Vec<&str> = pattern.split('.').collect();
        let mut found = Vec::new();
        find_values(doc, &segs, String::new(), &mut found);
        for (path, value) in found {
            let ok = match value {
                toml::Value::Integer(n) => (min..=max).contains(n),
                _ => false,
            };
            if !ok {
                let got = match value {
                    toml::Value::String(s) => format!("{s:?}"),
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::Float(f) => format!("the fraction {f}"),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => format!("a {}", other.type_str()),
                };
                bail!(
                    "config key {path}{}: must be a whole number from {min} to {max}, got {got}",
                    env_origin(origin, &path)
                );
            }
        }
    }
    Ok(())
}

/// The values at `segs` under `v` (`*`: every entry of an array), with their paths.
fn find_values<'a>(v: &'a toml::Value, segs: &[&str], path: String, out: &mut Vec<(String, &'a toml::Value)>) {
    let Some((first, rest)) = segs.split_first() else {
        out.push((path, v));
        return;
    };
    match (v, *first) {
        (toml::Value::Array(items), "*") => {
            for (i, item) in items.iter().enumerate() {
                find_values(item, rest, format!("{path}[{i}]"), out);
            }
        }
        (toml::Value::Table(t), key) => {
            if let Some(next) = t.get(key) {
                let path = if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
                find_values(next, rest, path, out);
            }
        }
        _ => {}
    }
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
    fn every_numeric_key_refuses_what_is_out_of_its_range_naming_the_key_and_variable() {
        let source = "[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"mongodb://h\"\ncollections = [\"a.b\"]\n";
        let bad = ["0", "-1", "9223372036854775807", "18446744073709551616", "1e30", "\"abc\"", "true"];
        for &(pattern, min, max) in NUMERIC_KEYS {
            let (section, key) = pattern.rsplit_once('.').unwrap();
            let env_name = format!("OPLET__{}", pattern.replace(".*.", ".0.").replace('.', "__").to_uppercase());
            for value in bad {
                let parsed = value.parse::<i128>().ok();
                if parsed.is_some_and(|n| n >= min as i128 && n <= max as i128) {
                    continue; // 0 is in range for some keys
                }
                // From the file...
                let text = match section.strip_prefix("source.*") {
                    Some(rest) => format!("{source}{}{key} = {value}\n", if rest.is_empty() { String::new() } else { format!("[source{rest}]\n") }),
                    None => format!("{source}[{section}]\n{key} = {value}\n"),
                };
                let shown = pattern.replace(".*", "[0]");
                match Config::parse(&text, &[], Path::new(".")) {
                    Ok(_) => panic!("{pattern} = {value} was accepted"),
                    Err(e) => {
                        let msg = format!("{e:#}");
                        assert!(msg.contains(&shown) || value == "18446744073709551616", "{pattern} = {value}: {msg}");
                        assert!(!msg.contains('\n'), "one line: {msg}");
                    }
                }
                // ...and from the environment, named by its variable.
                let env = vec![(env_name.clone(), value.trim_matches('"').to_string())];
                let msg = format!("{:#}", Config::parse(source, &env, Path::new(".")).unwrap_err());
                assert!(msg.contains(&shown) && msg.contains(&env_name), "{env_name}={value}: {msg}");
                assert!(msg.contains(&format!("from {min} to {max}")), "{env_name}={value}: {msg}");
            }
        }
    }

    #[test]
    fn the_defaults_are_inside_the_documented_ranges() {
        Config::parse("[plugins]\n[limits]\n[delivery]\n[audit]\n", &[], Path::new(".")).unwrap();
        let text = "[redis]\nurl = \"redis://h\"\n[postgres]\nurl = \"postgres://h\"\n[socket]\nlisten = \"127.0.0.1:0\"\n";
        Config::parse(text, &[], Path::new(".")).unwrap();
    }

    #[test]
    fn only_oplet_variables_are_read_and_a_non_utf8_one_is_an_error_naming_it() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let junk = OsString::from_vec(vec![0xff, 0xfe]);
        let vars = vec![
            (OsString::from("LS_COLORS"), junk.clone()),
            (junk.clone(), OsString::from("x")),
            (OsString::from("OPLET__DELIVERY__QUEUE"), OsString::from("8")),
        ];
        let env = oplet_env(vars.into_iter()).unwrap();
        assert_eq!(env, vec![("OPLET__DELIVERY__QUEUE".to_string(), "8".to_string())]);
        let err = oplet_env(vec![(OsString::from("OPLET__PLUGINS__DIR"), junk)].into_iter()).unwrap_err().to_string();
        assert!(err.contains("OPLET__PLUGINS__DIR") && err.contains("not valid UTF-8"), "{err}");
    }

    #[test]
    fn a_wrong_type_from_the_environment_names_the_key_and_the_variable() {
        let env = vec![("OPLET__PLUGINS__WATCH".to_string(), "maybe".to_string())];
        let msg = format!("{:#}", Config::parse("", &env, Path::new(".")).unwrap_err());
        assert!(msg.contains("plugins.watch") && msg.contains("OPLET__PLUGINS__WATCH"), "{msg}");
        let msg = format!("{:#}", Config::parse("[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"http://h\"\ncollections = [\"a.b\"]\n", &[], Path::new(".")).unwrap_err());
        assert!(msg.contains("source[0].uri") && msg.contains("not a MongoDB connection string"), "{msg}");
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
