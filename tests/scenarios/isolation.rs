//! Isolation between plugins and sources, through the real `oplet` binary: a plugin
//! that fails every event (slowly) is quarantined while its neighbour handles
//! everything; one source's backlog never delays another source's events; a fix
//! takes over a failing backlog (or, with `on_quarantine = "hold"`, the held
//! events: the checkpoint waits for it), and a quick remove + re-install never runs two
//! versions at once; SIGTERM is bounded, and a second signal ends the host at once.

use oplet_tests::{install_plugin_from, wasm_plugins, Oplet, TempDir};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// The exit code of a shutdown cut short (README, "Exit codes").
const EXIT_FORCED: i32 = 75;

/// A host folder with one or more JSON-lines sources (`follow = true`).
struct HostDir {
    dir: TempDir,
}

impl HostDir {
    fn new(sources: &[&str], delivery: &str) -> HostDir {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let mut config = format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\ndebounce_ms = 30\n[grants.\"*\"]\naudit = true\n[delivery]\n{delivery}\n"
        );
        for s in sources {
            std::fs::write(dir.path().join(format!("{s}.jsonl")), "").unwrap();
            config.push_str(&format!("[[source]]\ntype = \"jsonl\"\nname = \"{s}\"\npath = \"{s}.jsonl\"\nfollow = true\n"));
        }
        std::fs::write(dir.path().join("oplet.toml"), config).unwrap();
        HostDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn plugins(&self) -> PathBuf {
        self.path().join("plugins")
    }
    fn config(&self) -> PathBuf {
        self.path().join("oplet.toml")
    }

    /// Appends `count` change events for `app.items` to source `source`.
    fn append(&self, source: &str, count: usize) {
        append_to(self.path(), source, count);
    }

    fn audit_of(&self, plugin: &str) -> Vec<Value> {
        read_lines(&self.path().join("state/audit.jsonl")).into_iter().filter(|r| r["plugin"] == plugin).collect()
    }

    fn dead_letters_of(&self, plugin: &str) -> Vec<Value> {
        read_lines(&self.path().join("state/dead-letters.jsonl")).into_iter().filter(|r| r["stage"] == plugin).collect()
    }

    /// The saved checkpoint of a JSON-lines source: the last line done.
    fn checkpoint(&self, source: &str) -> Option<u64> {
        oplet_tests::jsonl_checkpoint(&self.path().join("state"), source)
    }

    /// The host's view of one plugin (`state_dir/plugins.json`).
    fn status(&self, plugin: &str) -> Value {
        oplet_tests::plugin_status(&self.path().join("state"), plugin)
    }

    /// Deploys built module `module` as plugin `name` (manifest, then module, each
    /// written aside and renamed into place).
    fn deploy(&self, name: &str, module: &str, manifest: &str) {
        install_plugin_from(&self.plugins(), name, &wasm_plugins().path(module), manifest);
    }
}

fn append_to(dir: &Path, source: &str, count: usize) {
    let mut text = String::new();
    for n in 0..count {
        let line = json!({"body": {"kind": "change", "data": {
            "op": "insert", "db": "app", "coll": "items", "key": {"_id": n}, "full_document": {"n": n}}}});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = dir.join(format!("{source}.jsonl"));
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

// A line being written may be cut at the end: read whole lines only.
use oplet_tests::read_complete_json_lines as read_lines;

fn manifest(name: &str, sources: &[&str], limits: &str) -> String {
    let sources = if sources.is_empty() { String::new() } else { format!("sources = {sources:?}\n") };
    format!("name = \"{name}\"\n[[subscribe]]\n{sources}namespaces = [\"app.*\"]\n[capabilities]\naudit = true\n{limits}")
}

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_failing_every_event_is_quarantined_and_its_neighbour_handles_everything() {
    // Unquarantined, `stuck` costs 2 x 100 ms per event: 2,000 events would take
    // over six minutes, and the dispatcher would wait on its full queue of 16.
    const N: usize = 2000;
    let host = HostDir::new(&["events"], "queue = 16\nquarantine_after = 3\nquarantine_ms = 600000\non_quarantine = \"dead_letter\"");
    host.deploy("stuck", "stuck", &manifest("stuck", &[], "[limits]\ntime_ms = 100\n"));
    host.deploy("echo", "echo", &manifest("echo", &[], ""));
    host.append("events", N);
    let mut oplet = Oplet::start(&host.config());

    oplet.wait_until("the checkpoint to reach the last event", WAIT, || host.checkpoint("events") == Some(N as u64)).await;
    assert_eq!(seqs(&host.audit_of("echo")), (1..=N as u64).collect::<Vec<_>>(), "echo handled every event once, in order");

    // Every event of the failing plugin is dead-lettered once, with the cause.
    let dead = host.dead_letters_of("stuck");
    let mut dead_seqs = seqs(&dead);
    dead_seqs.sort();
    assert_eq!(dead_seqs, (1..=N as u64).collect::<Vec<_>>(), "each event of stuck dead-lettered exactly once");
    let by_seq = |s: u64| dead.iter().find(|d| d["seq"] == s).unwrap()["error"].as_str().unwrap().to_string();
    // The first failure is a timeout; from the moment its queue filled while it
    // was failing (or after three failures), it is quarantined.
    assert!(by_seq(1).starts_with("timeout: the call ran past its time budget of 100 ms"), "{}", by_seq(1));
    let quarantined = dead.iter().filter(|d| d["error"].as_str().unwrap().starts_with("plugin stuck is quarantined: ")).count();
    assert!(quarantined >= N - 10, "the backlog was dead-lettered by the quarantine, not run: {quarantined} of {N}");
    assert!(by_seq(N as u64).contains("timeout"), "the cause names the failure: {}", by_seq(N as u64));

    // The host says so: a log line naming the plugin, and its state in plugins.json.
    let line = oplet.log_lines_containing("plugin quarantined").pop().expect("a quarantine log line");
    assert!(line.contains("plugin=stuck") && line.contains("failed event(s) in a row"), "{line}");
    let status = host.status("stuck");
    assert_eq!(status["state"], "quarantined", "{status}");
    assert!(status["reason"].as_str().unwrap().contains("timeout"), "{status}");
    assert_eq!(host.status("echo")["state"], "healthy");

    let exit = oplet.terminate().unwrap();
    assert_eq!(exit.code(), Some(0), "a clean stop:\n{}", oplet.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quarantined_plugin_is_probed_again_and_a_fix_ends_the_quarantine() {
    let host = HostDir::new(&["events"], "quarantine_after = 2\nquarantine_ms = 200");
    host.deploy("p", "stuck", &manifest("p", &[], "[limits]\ntime_ms = 30\n"));
    host.deploy("echo", "echo", &manifest("echo", &[], ""));
    let oplet = Oplet::start(&host.config());
    oplet.wait_for_log("2 plugin(s) loaded", WAIT).await.unwrap();
    host.append("events", 20);
    oplet.wait_until("p to be quarantined", WAIT, || host.status("p")["state"] == "quarantined").await;
    oplet.wait_until("all 20 events done", WAIT, || host.checkpoint("events") == Some(20)).await;
    // More events after the probe period: the probe fails, it stays quarantined.
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.append("events", 5);
    oplet.wait_until("25 events done", WAIT, || host.checkpoint("events") == Some(25)).await;
    assert!(oplet.log_lines_containing("plugin quarantined").len() >= 2, "a failed probe quarantines it again:\n{}", oplet.logs());
    assert_eq!(host.dead_letters_of("p").len(), 25);

    // A fixed version starts healthy and handles the next events.
    host.deploy("p", "versioned-a", &manifest("p", &[], ""));
    oplet.wait_until("the fix to be loaded", WAIT, || host.status("p")["state"] == "healthy").await;
    host.append("events", 5);
    oplet.wait_until("30 events done", WAIT, || host.checkpoint("events") == Some(30)).await;
    assert_eq!(seqs(&host.audit_of("p")), vec![26, 27, 28, 29, 30]);
}

/// `on_quarantine = "hold"`: a quarantined plugin's events are neither run nor
/// dead-lettered; they hold the checkpoint while its neighbour goes on, the host
/// says so in plugins.json, and a fixed version (hot reload) takes over the held
/// events so the checkpoint moves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_quarantine_keeps_the_checkpoint_until_a_fix_delivers_the_held_events() {
    const N: u64 = 20;
    let host = HostDir::new(&["events"], "quarantine_after = 2\nquarantine_ms = 600000\non_quarantine = \"hold\"\ncheckpoint_interval_ms = 20");
    host.deploy("p", "stuck", &manifest("p", &[], "[limits]\ntime_ms = 30\n"));
    host.deploy("echo", "echo", &manifest("echo", &[], ""));
    let mut oplet = Oplet::start(&host.config());
    oplet.wait_until("both plugins loaded", WAIT, || host.status("p")["loaded"] == true && host.status("echo")["loaded"] == true).await;
    host.append("events", N as usize);

    // Event 1 fails and is dead-lettered (on_plugin_error); event 2 is the second
    // failure in a row: quarantined, and held rather than dead-lettered.
    oplet.wait_until("p to be quarantined", WAIT, || host.status("p")["state"] == "quarantined").await;
    let status = host.status("p");
    assert!(status["reason"].as_str().unwrap_or("").contains("failed event(s) in a row"), "{status}");
    oplet.wait_until("echo to handle every event", WAIT, || host.audit_of("echo").len() == N as usize).await;
    assert_eq!(seqs(&host.audit_of("echo")), (1..=N).collect::<Vec<_>>(), "the neighbour is not held back");
    oplet.wait_until("the checkpoint past event 1", WAIT, || host.checkpoint("events") == Some(1)).await;
    // Give a wrong implementation many checkpoint intervals to move past the hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(host.checkpoint("events"), Some(1), "the held event 2 keeps the checkpoint:\n{}", oplet.logs());
    assert_eq!(seqs(&host.dead_letters_of("p")), vec![1], "held events are not dead-lettered");
    assert!(host.audit_of("p").is_empty());
    let line = oplet.log_lines_containing("plugin quarantined").pop().expect("a quarantine log line");
    assert!(line.contains("plugin=p") && line.contains("held (the checkpoint waits)"), "{line}");

    // The fix takes over from the held event: 2..=N are delivered, once, in order.
    host.deploy("p", "versioned-a", &manifest("p", &[], ""));
    oplet.wait_until("the checkpoint to reach the last event", WAIT, || host.checkpoint("events") == Some(N)).await;
    assert_eq!(seqs(&host.audit_of("p")), (2..=N).collect::<Vec<_>>(), "the held events reach the fix");
    assert_eq!(host.status("p")["state"], "healthy");
    assert_eq!(seqs(&host.dead_letters_of("p")), vec![1]);

    let exit = oplet.terminate().unwrap();
    assert_eq!(exit.code(), Some(0), "a clean stop:\n{}", oplet.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_sources_backlog_never_delays_another_sources_events() {
    // `stuck` takes only `bulk` events and is never quarantined: its backlog holds
    // the `bulk` source back (backpressure). `echo` takes only `live` events.
    let host = HostDir::new(&["bulk", "live"], "queue = 64\nquarantine_after = 0\nplugin_retries = 0\nshutdown_timeout_ms = 2000");
    host.deploy("stuck", "stuck", &manifest("stuck", &["bulk"], "[limits]\ntime_ms = 50\n"));
    host.deploy("echo", "echo", &manifest("echo", &["live"], ""));
    let mut oplet = Oplet::start(&host.config());
    oplet.wait_for_log("2 plugin(s) loaded", WAIT).await.unwrap();
    host.append("bulk", 1000);
    oplet.wait_until("a backlog on bulk", WAIT, || host.status("stuck")["queued"].as_u64().unwrap_or(0) >= 32).await;
    host.append("live", 200);
    oplet.wait_until("echo to handle every live event", WAIT, || host.audit_of("echo").len() == 200).await;
    assert_eq!(seqs(&host.audit_of("echo")), (1..=200).collect::<Vec<_>>());
    oplet.wait_until("the live checkpoint", WAIT, || host.checkpoint("live") == Some(200)).await;
    let bulk_done = host.checkpoint("bulk").unwrap_or(0);
    assert!(bulk_done < 900, "live events were handled while bulk was still backed up (bulk at {bulk_done} of 1000)");
    assert!(host.status("stuck")["queued"].as_u64().unwrap() > 0, "bulk still backed up: {}", host.status("stuck"));

    // SIGTERM with that backlog (at least 128 events at 50 ms): bounded by
    // shutdown_timeout_ms.
    let exit = oplet.terminate().unwrap();
    assert_eq!(exit.code(), Some(EXIT_FORCED), "the backlog cannot finish in time:\n{}", oplet.logs());
    let saved = host.checkpoint("bulk").unwrap_or(0);
    let handled: std::collections::BTreeSet<u64> = seqs(&host.dead_letters_of("stuck")).into_iter().collect();
    assert!((1..=saved).all(|s| handled.contains(&s)), "the bulk checkpoint ({saved}) is past an unfinished event");
}

/// The plugin `p` under test, while events stream in: a failing version with a
/// backlog of thousands, a fix, the failing version again, then a removal and a
/// re-install in quick succession. `manifest_first` is the order of the two files
/// in each step.
async fn replace_remove_reinstall(manifest_first: bool) {
    let host = HostDir::new(&["events"], "queue = 4096\nquarantine_after = 0\nplugin_retries = 0");
    let plugins = host.plugins();
    let put = |module: &str, limits: &str| {
        let wasm = std::fs::read(wasm_plugins().path(module)).unwrap();
        let toml = manifest("p", &[], limits);
        let write = |file: &str, bytes: &[u8]| {
            let tmp = plugins.join(format!(".{file}.tmp"));
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, plugins.join(file)).unwrap();
        };
        if manifest_first {
            write("p.toml", toml.as_bytes());
            write("p.wasm", &wasm);
        } else {
            write("p.wasm", &wasm);
            write("p.toml", toml.as_bytes());
        }
    };
    let remove = || {
        let order = if manifest_first { ["p.toml", "p.wasm"] } else { ["p.wasm", "p.toml"] };
        for f in order {
            std::fs::remove_file(plugins.join(f)).unwrap();
        }
    };
    const STUCK: &str = "[limits]\ntime_ms = 20\n";
    put("stuck", STUCK);
    host.deploy("echo", "echo", &manifest("echo", &[], ""));
    let mut oplet = Oplet::start(&host.config());
    oplet.wait_for_log("2 plugin(s) loaded", WAIT).await.unwrap();

    // Events stream in all along, 20 every 10 ms, faster than `stuck` fails them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamer = {
        let (stop, path) = (stop.clone(), host.path().to_path_buf());
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                append_to(&path, "events", 20);
                sent += 20;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        })
    };
    let queued = || host.status("p")["queued"].as_u64().unwrap_or(0);
    oplet.wait_until("a failing backlog", WAIT, || host.dead_letters_of("p").len() >= 5 && queued() >= 1000).await;

    // The fix takes over at the next event not yet started.
    let (failed_before, backlog) = (host.dead_letters_of("p").len(), queued());
    put("versioned-a", "");
    oplet.wait_until("the fix to handle events", WAIT, || !host.audit_of("p").is_empty()).await;

    // The failing version again, with a new backlog; then removed and re-installed.
    put("stuck", STUCK);
    oplet.wait_until("a second failing backlog", WAIT, || host.status("p")["state"] == "failing" && queued() >= 1000).await;
    remove();
    tokio::time::sleep(Duration::from_millis(100)).await;
    put("versioned-b", "");
    oplet.wait_until("version b to handle events", WAIT, || host.audit_of("p").iter().any(|r| r["record"]["version"] == "b")).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total = streamer.await.unwrap();
    oplet.wait_until("every event to be done", WAIT, || host.checkpoint("events") == Some(total as u64)).await;
    assert_eq!(seqs(&host.audit_of("echo")), (1..=total as u64).collect::<Vec<_>>(), "the neighbour saw every event once, in order");

    // What happened to each event in p, by seq: S (a failing version's dead
    // letter), A / B (handled by the fix / the re-installed version), R (dead-
    // lettered because p was removed), or '.' (p was not loaded when it came).
    let mut outcome: Vec<Option<char>> = vec![None; total + 1];
    let mut mark = |seq: u64, what: char| {
        let slot = &mut outcome[seq as usize];
        assert!(slot.is_none(), "seq {seq} had two outcomes in p: {slot:?} and {what}");
        *slot = Some(what);
    };
    let records = host.audit_of("p");
    for r in &records {
        mark(r["seq"].as_u64().unwrap(), if r["record"]["version"] == "a" { 'A' } else { 'B' });
    }
    for d in host.dead_letters_of("p") {
        let error = d["error"].as_str().unwrap();
        let what = if error.starts_with("timeout") {
            'S'
        } else if error.contains("was removed") {
            'R'
        } else {
            panic!("unexpected dead letter for p: {d}")
        };
        mark(d["seq"].as_u64().unwrap(), what);
    }
    // One version after the other, never back: S A S R . B, each a run (the
    // second S, R and the gap may be empty).
    let text: String = outcome[1..].iter().map(|o| o.unwrap_or('.')).collect();
    let runs = compress(&text);
    let mut expected = "SASR.B".chars().peekable();
    for run in runs.split(' ') {
        let c = run.chars().next().unwrap();
        while expected.peek().is_some_and(|e| *e != c) {
            expected.next();
        }
        assert!(expected.next().is_some(), "outcomes out of order (expected S A S R . B): {runs}");
    }
    assert!(runs.starts_with('S') && runs.contains('A') && runs.contains('B'), "{runs}");
    let first_run: usize = runs.split(' ').next().unwrap()[1..].parse().unwrap();
    assert!(
        first_run < failed_before + (backlog as usize) / 2,
        "the fix waited behind the failing backlog: {first_run} failed, {failed_before} before the fix with {backlog} queued ({runs})"
    );
    // Handled in order, by each version.
    let a: Vec<u64> = records.iter().filter(|r| r["record"]["version"] == "a").map(|r| r["seq"].as_u64().unwrap()).collect();
    let b: Vec<u64> = records.iter().filter(|r| r["record"]["version"] == "b").map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]), "each version in order");

    let exit = oplet.terminate().unwrap();
    assert_eq!(exit.code(), Some(0), "{}", oplet.logs());
}

/// "SSSSAAAA" as "S4 A4", so a failure message stays short.
fn compress(text: &str) -> String {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let mut n = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            n += 1;
        }
        out.push(format!("{c}{n}"));
    }
    out.join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fix_takes_over_a_failing_backlog_and_a_quick_reinstall_runs_one_version_manifest_first() {
    replace_remove_reinstall(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fix_takes_over_a_failing_backlog_and_a_quick_reinstall_runs_one_version_module_first() {
    replace_remove_reinstall(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_ends_the_shutdown_at_once_without_checkpointing_unfinished_events() {
    let host = HostDir::new(&["events"], "queue = 4096\nquarantine_after = 0\nplugin_retries = 0\nshutdown_timeout_ms = 600000");
    host.deploy("stuck", "stuck", &manifest("stuck", &[], "[limits]\ntime_ms = 50\n"));
    host.deploy("echo", "echo", &manifest("echo", &[], ""));
    let mut oplet = Oplet::start(&host.config());
    oplet.wait_for_log("2 plugin(s) loaded", WAIT).await.unwrap();
    host.append("events", 2000);
    oplet.wait_until("a backlog", WAIT, || host.dead_letters_of("stuck").len() >= 3).await;
    let mark = oplet.log_mark();
    oplet_tests_signal(oplet.pid(), libc::SIGTERM);
    oplet.wait_for_log_since(mark, "shutting down (Signal)", WAIT).await.unwrap();
    oplet_tests_signal(oplet.pid(), libc::SIGINT);
    let exit = oplet.wait_exit(WAIT).unwrap();
    assert_eq!(exit.code(), Some(EXIT_FORCED), "{}", oplet.logs());
    assert!(oplet.logs().contains("a second signal came during the shutdown"), "{}", oplet.logs());
    let saved = host.checkpoint("events").unwrap_or(0);
    let failed: std::collections::BTreeSet<u64> = seqs(&host.dead_letters_of("stuck")).into_iter().collect();
    assert!(saved < 2000, "the backlog was not finished, so neither is the checkpoint");
    assert!((1..=saved).all(|s| failed.contains(&s)), "checkpoint {saved} is past an unfinished event");

    // The next start delivers the rest: with stuck gone, echo sees every event.
    std::fs::remove_file(host.plugins().join("stuck.wasm")).unwrap();
    let mut again = Oplet::start(&host.config());
    again.wait_until("the rest to be delivered", WAIT, || host.checkpoint("events") == Some(2000)).await;
    let echo: std::collections::BTreeSet<u64> = seqs(&host.audit_of("echo")).into_iter().collect();
    assert_eq!(echo.len(), 2000, "every event reached echo at least once across the two runs");
    assert_eq!(again.terminate().unwrap().code(), Some(0));
}

fn oplet_tests_signal(pid: u32, sig: i32) {
    // SAFETY: sends a signal to a child process this test started.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}
