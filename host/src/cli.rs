//! The `oplet` command line: `run`, `backfill`, `plugin check`, `plugin test`.
//!
//! `plugin check` and `plugin test` are the offline loop for plugin authors: they
//! load a module exactly as the host does (same validation and limits) and run it
//! on events from a JSON-lines file, printing the effects or the error per event.

use crate::config::{Ceilings, Config};
use crate::effect;
use crate::manifest::Manifest;
use crate::runtime::reload::PluginFiles;
use crate::runtime::{Limits, PluginCode, Runtime};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "oplet", version, about = "Routes MongoDB changes and Socket.IO events to sandboxed WebAssembly plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: load plugins, watch the folder, consume the sources.
    Run {
        /// Host configuration file.
        #[arg(long, short, env = "OPLET_CONFIG", default_value = "oplet.toml")]
        config: PathBuf,
    },
    /// Deliver the documents that already exist to one plugin (as `snapshot`
    /// events), then stop; resumable, and safe beside a running host.
    Backfill {
        #[arg(long, short, env = "OPLET_CONFIG", default_value = "oplet.toml")]
        config: PathBuf,
        /// The plugin (in the config's plugin folder) that receives the documents.
        #[arg(long)]
        plugin: String,
        /// Only this `db.coll` (one of a source's `collections`); default: all of them.
        #[arg(long)]
        collection: Option<String>,
        /// Only documents matching this query (extended JSON), e.g. '{"status": "active"}'.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Plugin authoring tools.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a plugin: exports, ABI version, manifest, and that init accepts its config.
    Check {
        /// The module (`NAME.wasm`).
        wasm: PathBuf,
        /// The manifest; default `NAME.toml` beside the module.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Run a plugin on each event of a JSON-lines file and print what it returns.
    Test {
        wasm: PathBuf,
        /// One event per line (the JSON shape of `oplet_sdk::Event`).
        #[arg(long)]
        events: PathBuf,
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Backfill { config, plugin, collection, filter } => backfill(&config, &plugin, collection.as_deref(), filter.as_deref()),
        Command::Plugin(PluginCommand::Check { wasm, manifest }) => check(&wasm, manifest.as_deref()),
        Command::Plugin(PluginCommand::Test { wasm, events, manifest }) => test(&wasm, &events, manifest.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // A startup failure with a known cause (a Socket.IO address taken) keeps
            // its code; everything else here is the config or the environment.
            let cause = crate::exit::cause_of(&e).unwrap_or(crate::exit::Cause::Config);
            eprintln!("error: {e:#} (exit code {}: {cause})", cause.code());
            ExitCode::from(cause.code())
        }
    }
}

/// A panic in the host must never let an event count as done (tickets are released
/// on drop, and unwinding drops them): print it, then abort, so a restart replays
/// from the last checkpoint. A hook rather than `panic = "abort"` in the profile,
/// which would make test builds and binary builds compile every crate twice.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("oplet: internal error (a bug); aborting so that no unfinished event is checkpointed");
        std::process::abort();
    }));
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    run_config(Config::load(config_path)?)
}

fn run_config(config: Config) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = rt.block_on(crate::host::run(config))?;
    use crate::host::Outcome;
    use crate::exit::Cause;
    // The last line says why the host stopped, for whoever reads only the tail.
    Ok(match outcome {
        Outcome::Halted => {
            tracing::error!("exit code {}: {}", Cause::Halted.code(), Cause::Halted);
            ExitCode::from(Cause::Halted.code())
        }
        Outcome::SourceFailed { source, cause, error } => {
            tracing::error!(source = %source, "exit code {}: source {source:?} failed: {cause}: {error}", cause.code());
            ExitCode::from(cause.code())
        }
        Outcome::SourcesDone | Outcome::Signal => ExitCode::SUCCESS,
    })
}

/// `oplet backfill`: the host, cut down to one plugin and to reading what exists.
/// Its checkpoints, dead letters and audit file live in `state_dir/backfill/PLUGIN`
/// (a file has one writer, and a running host keeps its own); its sinks are the
/// host's, where upserts by key make two writers harmless.
fn backfill(config_path: &Path, plugin: &str, collection: Option<&str>, filter: Option<&str>) -> anyhow::Result<ExitCode> {
    use crate::config::SourceConfig;
    let mut config = Config::load(config_path)?;
    let dir = config.plugins.dir.clone();
    let (wasm, toml) = (dir.join(format!("{plugin}.wasm")), dir.join(format!("{plugin}.toml")));
    if !wasm.is_file() || !toml.is_file() {
        anyhow::bail!("--plugin {plugin:?}: {} and {} must both exist in the plugin folder (plugins.dir of {})", wasm.display(), toml.display(), config_path.display());
    }
    let (filter_doc, filter_text) = match filter {
        None => (None, String::new()),
        Some(text) => (Some(parse_filter(text)?), text.to_string()),
    };
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut sources = Vec::new();
    let mut namespaces = Vec::new();
    for sc in std::mem::take(&mut config.sources) {
        let SourceConfig::Mongo(mut m) = sc else { continue };
        if let Some(ns) = collection {
            if !m.collections.iter().any(|c| c == ns) {
                continue;
            }
            m.collections = vec![ns.to_string()];
        }
        if m.collections.is_empty() {
            continue;
        }
        m.databases.clear();
        m.deployment = false;
        m.backfill = Some(crate::source::mongo::snapshot::Backfill { plugin: plugin.into(), filter: filter_doc.clone(), filter_text: filter_text.clone(), bar });
        namespaces.extend(m.collections.iter().cloned());
        sources.push(SourceConfig::Mongo(m));
    }
    if sources.is_empty() {
        match collection {
            Some(ns) => anyhow::bail!("--collection {ns:?} is not in the `collections` of any [[source]] of type \"mongo\" in {}", config_path.display()),
            None => anyhow::bail!("no [[source]] of type \"mongo\" lists `collections` in {}: nothing to backfill", config_path.display()),
        }
    }
    // The plugin must take snapshot events, or it would be handed nothing.
    let manifest_text = std::fs::read_to_string(&toml).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", toml.display()))?;
    let manifest = Manifest::from_toml(&manifest_text, &toml)?;
    let takes = |ns: &String| {
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        let change = oplet_sdk::Change { op: oplet_sdk::OperationType::Snapshot, db: db.into(), coll: coll.into(), ..Default::default() };
        manifest.matches(&oplet_sdk::Event { seq: 1, id: String::new(), source: String::new(), time_ms: 0, body: oplet_sdk::EventBody::Change(change) })
    };
    let refused: Vec<&String> = namespaces.iter().filter(|ns| !takes(ns)).collect();
    if !refused.is_empty() {
        anyhow::bail!(
            "plugin {plugin:?} does not subscribe to operation \"snapshot\" on {}: add \"snapshot\" to the `operations` of its [[subscribe]] in {} (or pass --collection)",
            refused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            toml.display()
        );
    }
    let state = config.state_dir.join("backfill").join(plugin);
    let only = state.join("plugins");
    std::fs::create_dir_all(&only).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", only.display()))?;
    for (from, name) in [(&wasm, format!("{plugin}.wasm")), (&toml, format!("{plugin}.toml"))] {
        std::fs::copy(from, only.join(&name)).map_err(|e| anyhow::anyhow!("cannot copy {} into {}: {e}", from.display(), only.display()))?;
    }
    config.sources = sources;
    config.socket = None;
    config.plugins.dir = only;
    config.plugins.watch = false;
    config.audit.path = Some(state.join("audit.jsonl"));
    config.state_dir = state;
    tracing::info!(plugin = %plugin, "backfilling {} for plugin {plugin:?} only (state in {})", namespaces.join(", "), config.state_dir.display());
    run_config(config)
}

/// `--filter` text as a query document, or an error that says what to write.
fn parse_filter(text: &str) -> anyhow::Result<mongodb::bson::Document> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--filter is not valid JSON ({e}): write a query such as '{{\"status\": \"active\"}}'"))?;
    match mongodb::bson::Bson::try_from(json) {
        Ok(mongodb::bson::Bson::Document(d)) => Ok(d),
        Ok(_) => anyhow::bail!("--filter must be a JSON object (a query such as '{{\"status\": \"active\"}}'), not {text}"),
        Err(e) => anyhow::bail!("--filter is not valid extended JSON: {e}"),
    }
}

fn load_for_cli(wasm: &Path, manifest: Option<&Path>) -> anyhow::Result<(PluginCode, Manifest)> {
    let manifest_path = manifest.map(Path::to_path_buf).unwrap_or_else(|| wasm.with_extension("toml"));
    let files = PluginFiles::read(wasm, &manifest_path)?;
    let manifest = Manifest::from_toml(&files.manifest_text, &manifest_path)?;
    let runtime = Runtime::new(None)?;
    let limits = Limits::resolve(&manifest.limits, &Ceilings::default())
        .map_err(|e| anyhow::anyhow!("manifest {}: {e}", manifest_path.display()))?;
    // The code holds the engine and the epoch clock, so time limits hold after
    // `runtime` is dropped here.
    let code = PluginCode::load(&runtime, &manifest.name, &files.wasm, limits, &manifest.config_value())
        .map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    Ok((code, manifest))
}

fn check(wasm: &Path, manifest: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (code, m) = load_for_cli(wasm, manifest)?;
    let l = code.limits();
    println!("ok: {} v{} ({})", m.name, m.version, wasm.display());
    println!(
        "  abi version {}, limits per call: {} ms, {} MiB memory budget (linear memory and tables together; {:.1} MiB used at instantiation), {} KiB reply, {} effects, {} KiB/s of log",
        oplet_sdk::ABI_VERSION,
        l.time_ms,
        l.memory_bytes >> 20,
        code.initial_bytes() as f64 / (1024.0 * 1024.0),
        l.reply_bytes >> 10,
        l.effects,
        l.log_bytes_per_s / 1024
    );
    println!("  subscribes to {} subscription(s); asks for {}", m.subscribe.len(), describe_capabilities(&m.capabilities));
    Ok(ExitCode::SUCCESS)
}

fn test(wasm: &Path, events: &Path, manifest: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (code, m) = load_for_cli(wasm, manifest)?;
    let text = std::fs::read_to_string(events).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", events.display()))?;
    let mut instance = code.new_instance().map_err(|e| anyhow::anyhow!("cannot instantiate: {e}"))?;
    let mut failures = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let event = match crate::source::jsonl::parse_line(line, "test", n) {
            Ok(e) => e,
            Err(e) => {
                failures += 1;
                println!("{}", serde_json::json!({"line": n, "error": format!("not a valid event: {e}")}));
                continue;
            }
        };
        // The host never runs a plugin on an event it does not subscribe to: neither
        // does this test, so its output is what the plugin would do when deployed.
        if !m.matches(&event) {
            println!("{}", serde_json::json!({"line": n, "seq": event.seq, "subscribed": false, "skipped": "the manifest's [[subscribe]] does not match this event (kind, namespace or operation), so the host would not run the plugin on it"}));
            continue;
        }
        let subscribed = true;
        match instance.handle(&event) {
            Ok(effects) => {
                let checked: Vec<serde_json::Value> = effects
                    .iter()
                    .map(|eff| {
                        let mut v = serde_json::to_value(eff).expect("effect serializes");
                        if let Err(r) = effect::check(eff, &m.capabilities) {
                            v["refused"] = serde_json::Value::String(format!("the manifest does not ask for this: {r}"));
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::json!({"line": n, "seq": event.seq, "subscribed": subscribed, "effects": checked}));
            }
            Err(e) => {
                failures += 1;
                println!("{}", serde_json::json!({"line": n, "seq": event.seq, "subscribed": subscribed, "error": e.to_string()}));
                if e.poisons_instance() {
                    instance = code.new_instance().map_err(|e| anyhow::anyhow!("cannot instantiate: {e}"))?;
                }
            }
        }
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What a manifest asks for, as a person reads it: "audit; cache keys starting
/// with "user:"; tables users; emits start_client", or "nothing".
fn describe_capabilities(c: &crate::manifest::Capabilities) -> String {
    let quoted = |items: &[String]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    let mut parts = Vec::new();
    if c.audit {
        parts.push("audit records".to_string());
    }
    if !c.cache_prefixes.is_empty() {
        parts.push(format!("cache deletes of keys starting with {}", quoted(&c.cache_prefixes)));
    }
    if !c.tables.is_empty() {
        parts.push(format!("row upserts and deletes in tables {}", quoted(&c.tables)));
    }
    if !c.emit.is_empty() {
        parts.push(format!("Socket.IO emits of {}", quoted(&c.emit)));
    }
    if parts.is_empty() {
        "nothing (logs only)".to_string()
    } else {
        parts.join("; ")
    }
}
