//! The real `oplet` binary for end-to-end tests. [`oplet_bin`] builds it once per test
//! process with cargo (same profile as the tests); [`Oplet`] runs `oplet run --config`,
//! keeps every stdout/stderr line in memory and in a log file, and lets a test wait for
//! a log line. Drop kills the process; a failing test prints the last log lines.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tempfile::TempDir;

use crate::process::{signal, spawn, wait_until};
use crate::require::{cargo, require, Service};

/// How many log lines an error or a failing test shows.
const TAIL: usize = 40;

/// Set to a path to test a prebuilt `oplet` binary instead of building one.
const BIN_ENV: &str = "OPLET_TEST_BIN";

/// The `oplet` executable, built on first use by `cargo build -p oplet --bin oplet`
/// (`--release` when the tests themselves were built without debug assertions).
/// Panics with cargo's diagnostics if the build fails.
pub fn oplet_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(path) = std::env::var(BIN_ENV) {
            return PathBuf::from(path);
        }
        require(Service::Cargo);
        let started = Instant::now();
        let mut cmd = Command::new(cargo());
        cmd.current_dir(crate::repo_root())
            .args(["build", "-p", "oplet", "--bin", "oplet"])
            .arg("--message-format=json-render-diagnostics");
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.stdin(Stdio::null()).output().expect("run cargo build -p oplet");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            panic!("building the oplet binary failed ({}):\n{stderr}", out.status);
        }
        let bin = executables(&out.stdout)
            .into_iter()
            .find(|(name, _)| name == "oplet")
            .map(|(_, path)| path)
            .unwrap_or_else(|| panic!("cargo built no `oplet` executable:\n{stderr}"));
        eprintln!("[oplet-tests] built {} in {:?}", bin.display(), started.elapsed());
        bin
    })
    .clone()
}

/// (target name, executable path) of every `compiler-artifact` in cargo's JSON output.
fn executables(json_lines: &[u8]) -> Vec<(String, PathBuf)> {
    String::from_utf8_lossy(json_lines)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter_map(|msg| {
            let exe = msg["executable"].as_str()?;
            let name = msg["target"]["name"].as_str()?;
            Some((name.to_string(), PathBuf::from(exe)))
        })
        .collect()
}

/// Lines captured from the process, shared with the reader threads.
#[derive(Default)]
struct Captured {
    lines: Vec<String>,
}

/// A running `oplet` process owned by one test.
pub struct Oplet {
    child: Mutex<Child>,
    captured: Arc<Mutex<Captured>>,
    readers: Vec<JoinHandle<()>>,
    dir: TempDir,
    exit: Option<ExitStatus>,
}

impl Oplet {
    /// Runs `oplet run --config CONFIG_PATH` with `RUST_LOG=info` (or the value of
    /// `OPLET_TEST_RUST_LOG`), in the config file's directory.
    pub fn start(config_path: &Path) -> Oplet {
        Oplet::start_with_env(config_path, &[])
    }

    /// Like [`Oplet::start`], with extra environment variables (`RUST_LOG` among them
    /// overrides the default).
    pub fn start_with_env(config_path: &Path, env: &[(&str, &str)]) -> Oplet {
        let config = config_path.to_string_lossy().into_owned();
        let cwd = config_path.parent().filter(|p| !p.as_os_str().is_empty());
        Oplet::spawn_args(&["run", "--config", &config], env, cwd)
    }

    /// Runs `oplet ARGS...` (any subcommand) with the same log capture.
    pub fn spawn_args(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Oplet {
        let bin = oplet_bin();
        let dir = crate::temp_dir();
        let log_file = File::create(dir.path().join("oplet.log")).expect("create the oplet log file");
        let log_file = Arc::new(Mutex::new(log_file));
        let rust_log =
            std::env::var("OPLET_TEST_RUST_LOG").unwrap_or_else(|_| "info".to_string());
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let mut child = spawn(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let captured = Arc::new(Mutex::new(Captured::default()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            reader("oplet-stdout", stdout, captured.clone(), log_file.clone()),
            reader("oplet-stderr", stderr, captured.clone(), log_file),
        ];
        Oplet { child: Mutex::new(child), captured, readers, dir, exit: None }
    }

    /// Waits until a log line contains `substring` and returns that line. On timeout,
    /// or if the process exits first, the error shows the last 40 log lines.
    pub async fn wait_for_log(&self, substring: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log_since(0, substring, timeout).await
    }

    /// Like [`Oplet::wait_for_log`], looking only at lines after `mark` (from
    /// [`Oplet::log_mark`]), to wait for something to happen *again*.
    pub async fn wait_for_log_since(
        &self,
        mark: usize,
        substring: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.find_line(mark, substring) {
                return Ok(line);
            }
            if let Some(status) = self.exited() {
                // The readers may still be draining the pipes: look once more.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(line) = self.find_line(mark, substring) {
                    return Ok(line);
                }
                bail!(
                    "oplet exited ({status}) without logging {substring:?}; last {TAIL} lines:\n{}",
                    self.tail(TAIL)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for a log line containing {substring:?}; \
                     last {TAIL} lines:\n{}",
                    self.tail(TAIL)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many lines have been logged so far (a mark for [`Oplet::wait_for_log_since`]).
    pub fn log_mark(&self) -> usize {
        self.captured.lock().unwrap_or_else(|e| e.into_inner()).lines.len()
    }

    /// Every line logged so far, stdout and stderr interleaved as they arrived.
    pub fn logs(&self) -> String {
        self.captured.lock().unwrap_or_else(|e| e.into_inner()).lines.join("\n")
    }

    /// Lines logged so far that contain `substring`.
    pub fn log_lines_containing(&self, substring: &str) -> Vec<String> {
        let captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        captured.lines.iter().filter(|l| l.contains(substring)).cloned().collect()
    }

    /// The file that receives a copy of every line.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("oplet.log")
    }

    /// Waits until `done` holds, checking every 25 ms; panics with the log after
    /// `timeout`, or at once if the process ended and `done` still does not hold
    /// (nothing will change it any more).
    pub async fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            if !self.is_running() {
                assert!(done(), "oplet exited while waiting for {what}:\n{}", self.logs());
                return;
            }
            assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}; log:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls the async `check` every 50 ms until it returns `Some`, and returns
    /// that; panics with `what` and the log after `timeout`.
    pub async fn eventually<T, Fut>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Fut) -> T
    where
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}; host log:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.exited().is_none()
    }

    /// SIGKILL, as a crash or an OOM kill would; waits for the process and its output.
    pub fn kill(&mut self) {
        if self.is_running() {
            signal(self.pid(), libc::SIGKILL);
        }
        self.reap(Duration::from_secs(10));
    }

    /// SIGTERM, then waits up to 30 s for a graceful exit and returns its status.
    /// If it does not exit in time it is killed and the error shows the last lines.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if self.is_running() {
            signal(self.pid(), libc::SIGTERM);
        }
        match self.reap(Duration::from_secs(30)) {
            Some(status) => Ok(status),
            None => {
                self.kill();
                bail!(
                    "oplet did not exit within 30 s of SIGTERM and was killed; last {TAIL} lines:\n{}",
                    self.tail(TAIL)
                )
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (a config error, a
    /// `--once` run) and returns its status; the error shows the last lines.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match self.reap(timeout) {
            Some(status) => Ok(status),
            None => bail!(
                "oplet still running after {timeout:?}; last {TAIL} lines:\n{}",
                self.tail(TAIL)
            ),
        }
    }

    fn exited(&self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().ok().flatten()
    }

    /// Waits for exit within `timeout`; once exited, joins the readers so that
    /// `logs()` holds every line.
    fn reap(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let mut status = None;
            wait_until(timeout, || {
                status = self.exited();
                status.is_some()
            });
            self.exit = status;
        }
        if self.exit.is_some() {
            for handle in self.readers.drain(..) {
                let _ = handle.join();
            }
        }
        self.exit
    }

    fn find_line(&self, mark: usize, substring: &str) -> Option<String> {
        let captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        captured.lines.iter().skip(mark).find(|l| l.contains(substring)).cloned()
    }

    fn tail(&self, n: usize) -> String {
        let captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        let lines = &captured.lines;
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Oplet {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "[oplet-tests] last {TAIL} lines of oplet (full log was {}):\n{}",
                self.log_path().display(),
                self.tail(TAIL)
            );
        }
    }
}

/// Reads lines from one pipe into the shared buffer and the log file until EOF.
fn reader(
    name: &str,
    pipe: impl std::io::Read + Send + 'static,
    captured: Arc<Mutex<Captured>>,
    log_file: Arc<Mutex<File>>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match pipe.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = strip_ansi(String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']));
                if let Ok(mut f) = log_file.lock() {
                    let _ = writeln!(f, "{line}");
                }
                captured.lock().unwrap_or_else(|e| e.into_inner()).lines.push(line);
            }
        })
        .expect("start a log reader thread")
}

/// Removes ANSI escape sequences (colors), in case the binary colors its logs anyway.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colors() {
        assert_eq!(strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m hi"), "2026  INFO hi");
    }

    #[test]
    fn reads_executables_from_cargo_json() {
        let json = br#"{"reason":"compiler-artifact","target":{"name":"oplet","kind":["bin"]},"executable":"/t/oplet"}
{"reason":"compiler-artifact","target":{"name":"oplet","kind":["lib"]},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(executables(json), vec![("oplet".to_string(), PathBuf::from("/t/oplet"))]);
    }
}
