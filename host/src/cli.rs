//! The `oplet` command line: `run`, `backfill`, `plugin new|check|test`, `events
//! record`, `dlq list|show|replay` (dead letters, see `dlq`), `config check`,
//! `cluster status`.
//!
//! `plugin check` and `plugin test` are the offline loop for plugin authors: they
//! load a module exactly as the host does (same validation and limits) and run it
//! on events from a JSON-lines file, printing the effects or the error per event
//! (or comparing them with an expected file). The authoring commands live in
//! `crate::authoring`; this file only parses and dispatches.

use crate::config::{Ceilings, Config};
use crate::manifest::Manifest;
use crate::plugins::reload::PluginFiles;
use crate::runtime::{Limits, PluginCode, Runtime};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "oplet", version, about = "Routes MongoDB changes and Socket.IO events to sandboxed WebAssembly plugins")]
struct Cli {
    /// Log lines as `text` or `json` (one object per line); default: `[log] format`, else text.
    #[arg(long, global = true, value_enum)]
    log_format: Option<crate::config::LogFormat>,
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
    /// The dead-letter store: list, show and replay events that failed.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Host configuration tools.
    #[command(subcommand, name = "config")]
    ConfigCmd(ConfigCommand),
    /// Real events for plugin tests.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Several hosts sharing streams through leases (`[cluster]`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Write the events a source of a host config delivers, as JSON lines for `plugin test`.
    Record {
        /// The host configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The `[[source]]` (or `[socket]`) name to record.
        #[arg(long)]
        source: String,
        /// Stop after this many events (default: until Ctrl-C or the source's end).
        #[arg(long)]
        limit: Option<u64>,
        /// Start where the host's last checkpoint of this source is, instead of now
        /// (the host's checkpoint is read, never moved).
        #[arg(long)]
        since_checkpoint: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the config and everything it names (plugin folder, plugins, paths,
    /// grants) without connecting; `--connect` also reaches every service.
    Check {
        #[arg(long, short, env = "OPLET_CONFIG", default_value = "oplet.toml")]
        config: PathBuf,
        /// Also connect to every MongoDB source, PostgreSQL and Redis.
        #[arg(long)]
        connect: bool,
    },
}

#[derive(clap::Args)]
struct DlqFilter {
    /// Only letters of this plugin (the stage; `sink:... (PLUGIN)` letters too).
    #[arg(long)]
    plugin: Option<String>,
    /// Only letters whose error contains this text.
    #[arg(long)]
    cause: Option<String>,
    /// Only letters written since: `30m`, `2h`, `7d` ago, or ms since the epoch.
    #[arg(long)]
    since: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// One line per dead letter: ID, time (UTC), replay state, stage, source/seq, error.
    List {
        #[arg(long, short, env = "OPLET_CONFIG", default_value = "oplet.toml")]
        config: PathBuf,
        #[command(flatten)]
        filter: DlqFilter,
        /// One JSON object per line instead of columns.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter, its event included.
    Show {
        #[arg(long, short, env = "OPLET_CONFIG", default_value = "oplet.toml")]
        config: PathBuf,
        id: String,
    },
    /// Run dead letters again through the current version of their plugin and the
    /// configured sinks; each is marked and never replayed twice. Stop the host first.
    Replay {
        #[arg(long, short, env = "OPLET_CONFIG", default_value = "oplet.toml")]
        config: PathBuf,
        #[command(flatten)]
        filter: DlqFilter,
        /// Only these IDs (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Run the given `--id`s again even if a replay claimed them and was cut short.
        #[arg(long)]
        again: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Hosts, the streams each owns, lease ages and checkpoint lag, read from MongoDB.
    Status {
        #[arg(long, short, env = "OPLET_CONFIG", default_value = "oplet.toml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin project (source, manifest, sample events, expected effects, README).
    New {
        /// The plugin's name (its module is NAME.wasm): lower-case letters, digits, '-', '_'.
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::authoring::scaffold::Lang,
        /// The project folder to create (default: ./NAME); must be absent or empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Validate a plugin: exports, ABI version, manifest, and that init accepts its config.
    Check {
        /// The module (`NAME.wasm`).
        wasm: PathBuf,
        /// The manifest; default `NAME.toml` beside the module.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Run a plugin on each event of a JSON-lines file and print what it returns,
    /// or compare that with an expected file. Exit code 0: as expected; 1: a
    /// mismatch, a failed event (without --expect) or a refused effect (with
    /// --check-capabilities); 2: the module, manifest or a file cannot be used.
    Test {
        wasm: PathBuf,
        /// One event per line (the JSON shape of `oplet_sdk::Event`).
        #[arg(long)]
        events: PathBuf,
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Expected outcomes, one JSON line per event id: compare, print a diff per event.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Rewrite the --expect file with what the plugin does now.
        #[arg(long, requires = "expect")]
        update: bool,
        /// Fail when an effect is not asked for by the manifest's [capabilities].
        #[arg(long)]
        check_capabilities: bool,
    },
}

pub fn main() -> ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    // `run` reads `[log] format` first; a config it cannot read is reported below.
    let format = cli.log_format.or_else(|| match &cli.command {
        Command::Run { config } => Config::load(config).ok().map(|c| c.log.format),
        _ => None,
    });
    init_logging(format.unwrap_or_default());
    if prints_a_report(&cli.command) {
        // `oplet dlq list | head`: a closed pipe ends the command quietly, as it
        // does any Unix tool, instead of a panic in println!. Not for the host and
        // the streaming commands, whose sockets must not raise SIGPIPE.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Backfill { config, plugin, collection, filter } => backfill(&config, &plugin, collection.as_deref(), filter.as_deref()),
        Command::Plugin(PluginCommand::Check { wasm, manifest }) => check(&wasm, manifest.as_deref()),
        Command::Plugin(PluginCommand::Test { wasm, events, manifest, expect, update, check_capabilities }) => {
            let opts = crate::authoring::plugin_test::Options { events: &events, expect: expect.as_deref(), update, check_capabilities };
            load_for_cli(&wasm, manifest.as_deref()).and_then(|(code, m)| crate::authoring::plugin_test::run(&code, &m, &opts))
        }
        Command::Plugin(PluginCommand::New { name, lang, dir }) => crate::authoring::scaffold::new_plugin(&name, lang, dir.as_deref()).map(|project| {
            println!("{}", crate::authoring::scaffold::next_steps(&name, lang, &project));
            ExitCode::SUCCESS
        }),
        Command::Events(EventsCommand::Record { config, source, limit, since_checkpoint, out }) => {
            crate::authoring::record::record(&crate::authoring::record::Options { config: &config, source: &source, limit, since_checkpoint, out: out.as_deref() })
        }
        Command::Dlq(cmd) => dlq(cmd),
        Command::ConfigCmd(ConfigCommand::Check { config, connect }) => crate::config_check::run(&config, connect),
        Command::Cluster(ClusterCommand::Status { config, json }) => cluster_status(&config, json),
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

/// Commands that print a report to stdout and end.
fn prints_a_report(command: &Command) -> bool {
    matches!(command, Command::Plugin(_) | Command::Dlq(_) | Command::ConfigCmd(_) | Command::Cluster(_))
}

/// A panic in the host must never let an event count as done (tickets are released
/// on drop, and unwinding drops them): print it, then abort, so a restart replays
/// from the last checkpoint. A hook rather than `panic = "abort"` in the profile,
/// which would make test builds and binary builds compile every crate twice.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if crate::host::FINISHED.load(std::sync::atomic::Ordering::SeqCst) {
            // Seen with the MongoDB driver's pool task as the runtime is dropped.
            eprintln!("oplet: a background task panicked after the host stopped (ignored: every checkpoint was already written)");
            return;
        }
        eprintln!("oplet: internal error (a bug); aborting so that no unfinished event is checkpointed");
        std::process::abort();
    }));
}

fn init_logging(format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        crate::config::LogFormat::Text => fmt.with_ansi(ansi).init(),
        // The event's fields (plugin, source, seq, event_id) sit at the top level
        // of each object, beside `message`, so a log pipeline can filter on them.
        crate::config::LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).with_ansi(false).init(),
    }
}

fn dlq(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let filter = |f: DlqFilter, ids: Vec<String>| -> anyhow::Result<crate::dlq::Filter> {
        Ok(crate::dlq::Filter { plugin: f.plugin, cause: f.cause, since_ms: f.since.as_deref().map(crate::dlq::parse_since).transpose()?, ids })
    };
    match cmd {
        DlqCommand::List { config, filter: f, json } => crate::dlq::list(&Config::load(&config)?, &filter(f, Vec::new())?, json),
        DlqCommand::Show { config, id } => crate::dlq::show(&Config::load(&config)?, &id),
        DlqCommand::Replay { config, filter: f, ids, again } => crate::dlq::replay(Config::load(&config)?, &filter(f, ids)?, again),
    }
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
        manifest.matches(&crate::envelope::Event::placeholder(&oplet_sdk::Event { seq: 1, id: String::new(), source: String::new(), time_ms: 0, body: oplet_sdk::EventBody::Change(change) }))
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
    // Beside a running host: its admin port is taken, and its leases are its own
    // (a backfill reads what exists; it owns no stream).
    config.admin = None;
    config.cluster = crate::cluster::ClusterConfig::default();
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

/// `oplet cluster status`: read-only, from the lease and checkpoint collections.
fn cluster_status(config_path: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let status = rt.block_on(crate::cluster::status::gather(&config))?;
    if as_json {
        println!("{status}");
    } else {
        print!("{}", crate::cluster::status::render(&status));
    }
    Ok(ExitCode::SUCCESS)
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
