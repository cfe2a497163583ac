//! The `oplet` command line: `run`, `plugin check`, `plugin test`.
//!
//! `plugin check` and `plugin test` are the offline loop for plugin authors: they
//! load a module exactly as the host does (same validation and limits) and run it
//! on events from a JSON-lines file, printing the effects or the error per event.

use crate::config::{Ceilings, Config};
use crate::effect;
use crate::manifest::Manifest;
use crate::plugins::reload::PluginFiles;
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
    let config = Config::load(config_path)?;
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
