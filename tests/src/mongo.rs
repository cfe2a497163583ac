//! A MongoDB-compatible server for one test: nx-27017 (MongoDB wire protocol on
//! SQLite, from PyPI) started through `tests/support/nx_launcher.py` on a free port,
//! with its database file, pid file and logs in a temporary directory. `stop()` and
//! `start_again()` restart it on the same file, which keeps documents and resume
//! tokens. Set `OPLET_TEST_MONGODB_URI` to run the same tests against a real MongoDB.
//!
//! Known differences from MongoDB (see tests/support/README.md for the full list):
//! read change events as raw `bson::Document` (the driver's typed `ChangeStreamEvent`
//! fails: `clusterTime` is a date, not a Timestamp); `updateDescription` is null;
//! `$set` of `true` reads back as `1`; take the id from `documentKey._id`; only
//! collection-level watches yield events; no error 286 for an old token.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mongodb::bson::doc;
use tempfile::TempDir;

use crate::process::{kill_child, spawn, stop_child, tail, wait_until};
use crate::require::{python, require, Service};

/// Set this to a `mongodb://` URI to run the tests against that server instead of a
/// local nx-27017. Such a server cannot be stopped by a test: see [`Mongo::is_external`].
pub const MONGODB_URI_ENV: &str = "OPLET_TEST_MONGODB_URI";

/// A MongoDB-compatible server owned by one test (or a handle to an external one).
pub struct Mongo {
    kind: Kind,
}

enum Kind {
    External { uri: String },
    /// `flags`: the launcher's own options (`--no-change-streams`, `--lose-history`, `--refuse-auth`).
    Local { dir: TempDir, port: u16, child: Option<Child>, flags: &'static [&'static str] },
}

impl Mongo {
    /// Starts nx-27017 on a fresh database file and waits (up to 30 s) until the Rust
    /// driver can ping it; or, when `OPLET_TEST_MONGODB_URI` is set, returns a handle
    /// to that server.
    pub fn start() -> Mongo {
        Mongo::start_with(&[])
    }

    /// Like [`Mongo::start`], but the local server refuses every `$changeStream` the
    /// way a standalone mongod does (error 40573), for the polling fallback. An
    /// external server (`OPLET_TEST_MONGODB_URI`) is returned as it is: check
    /// [`Mongo::is_external`] and force polling there instead.
    pub fn start_without_change_streams() -> Mongo {
        Mongo::start_with(&["--no-change-streams"])
    }

    /// Like [`Mongo::start`], but the local server refuses every change stream that
    /// resumes from a token with error 286 ChangeStreamHistoryLost (an oplog that no
    /// longer holds it); streams without a token work. An external server is
    /// returned as it is (it cannot be made to lose history): check `is_external`.
    pub fn start_losing_history() -> Mongo {
        Mongo::start_with(&["--lose-history"])
    }

    /// Like [`Mongo::start`], but the local server refuses every login with error 18
    /// AuthenticationFailed, as for a wrong password. An external server is returned
    /// as it is: check `is_external` and give it a wrong password instead.
    pub fn start_refusing_auth() -> Mongo {
        Mongo::start_with(&["--refuse-auth"])
    }

    fn start_with(flags: &'static [&'static str]) -> Mongo {
        if let Ok(uri) = std::env::var(MONGODB_URI_ENV) {
            if !uri.trim().is_empty() {
                return Mongo { kind: Kind::External { uri } };
            }
        }
        require(Service::Nx27017);
        let started = Instant::now();
        let mut mongo = Mongo {
            kind: Kind::Local { dir: crate::temp_dir(), port: crate::free_port(), child: None, flags },
        };
        mongo.start_again();
        eprintln!("[oplet-tests] nx-27017 at {} ready in {:?}", mongo.uri(), started.elapsed());
        mongo
    }

    /// True when the tests run against `OPLET_TEST_MONGODB_URI` rather than a server
    /// of their own; such a server cannot be stopped or restarted.
    pub fn is_external(&self) -> bool {
        matches!(self.kind, Kind::External { .. })
    }

    /// A URI that the Rust `mongodb` driver accepts.
    pub fn uri(&self) -> String {
        match &self.kind {
            Kind::External { uri } => uri.clone(),
            Kind::Local { port, .. } => {
                format!("mongodb://127.0.0.1:{port}/?directConnection=true")
            }
        }
    }

    /// A connected driver client; panics if the server cannot be pinged.
    pub async fn client(&self) -> mongodb::Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("connect to MongoDB at {}: {e:#}", self.uri()))
    }

    /// Like [`Mongo::client`], but returns the error.
    pub async fn try_client(&self) -> Result<mongodb::Client> {
        let client = mongodb::Client::with_uri_str(self.uri())
            .await
            .with_context(|| format!("parse {}", self.uri()))?;
        client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .with_context(|| format!("ping {}", self.uri()))?;
        Ok(client)
    }

    /// Stops the server gracefully (SIGTERM, SIGKILL after 10 s). The database file
    /// and port are kept for [`Mongo::start_again`]. Panics for an external server.
    pub fn stop(&mut self) {
        let Kind::Local { child, .. } = &mut self.kind else {
            panic!("cannot stop an external server ({MONGODB_URI_ENV} is set); check is_external()");
        };
        if let Some(mut c) = child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }

    /// Kills the server with SIGKILL, as a crash would. Panics for an external server.
    pub fn kill(&mut self) {
        let Kind::Local { child, .. } = &mut self.kind else {
            panic!("cannot stop an external server ({MONGODB_URI_ENV} is set); check is_external()");
        };
        if let Some(mut c) = child.take() {
            kill_child(&mut c);
        }
    }

    /// Starts the server again on the same database file and port, and waits until
    /// the driver can ping it. Panics for an external server.
    pub fn start_again(&mut self) {
        let log = self.log_path();
        let uri = self.uri();
        let Kind::Local { dir, port, child, flags } = &mut self.kind else {
            panic!("cannot stop an external server ({MONGODB_URI_ENV} is set); check is_external()");
        };
        if child.is_some() {
            return;
        }
        let port = *port;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the nx-27017 log file");
        let mut cmd = Command::new(python());
        cmd.arg("-u")
            .arg(launcher())
            .arg("--db")
            .arg(dir.path().join("nx.db"))
            .args(["--host", "127.0.0.1", "-p", &port.to_string()])
            .arg("--pid-file")
            .arg(dir.path().join("nx.pid"))
            .arg("--log-file")
            .arg(dir.path().join("nx-server.log"))
            .args(flags.iter())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log file handle"))
            .stderr(out);
        let mut started = spawn(cmd).expect("spawn the nx-27017 launcher");
        let addr = format!("127.0.0.1:{port}");
        let mut exited = None;
        let listening = wait_until(Duration::from_secs(30), || {
            if let Ok(Some(status)) = started.try_wait() {
                exited = Some(status);
                return true;
            }
            std::net::TcpStream::connect(&addr).is_ok()
        });
        if let Some(status) = exited {
            panic!("nx-27017 exited ({status}) before listening on {addr}:\n{}", tail(&log, 40));
        }
        if !listening {
            kill_child(&mut started);
            panic!("nx-27017 did not listen on {addr} within 30 s:\n{}", tail(&log, 40));
        }
        *child = Some(started);
        if let Err(e) = ping_with_driver(&uri) {
            panic!("nx-27017 listens on {addr} but the driver cannot ping it: {e:#}\n{}", tail(&log, 40));
        }
    }

    /// Whether a local server is running (always true for an external one).
    pub fn is_running(&mut self) -> bool {
        match &mut self.kind {
            Kind::External { .. } => true,
            Kind::Local { child, .. } => {
                child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            }
        }
    }

    /// The launcher's stdout and stderr (nx-27017's INFO log).
    pub fn log_path(&self) -> PathBuf {
        match &self.kind {
            Kind::External { .. } => PathBuf::from("/dev/null"),
            Kind::Local { dir, .. } => dir.path().join("nx.log"),
        }
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        if let Kind::Local { child: Some(c), .. } = &mut self.kind {
            kill_child(c);
        }
    }
}

/// `tests/support/nx_launcher.py`, which fixes the change-stream cursor ids.
fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("support").join("nx_launcher.py")
}

/// Pings with the real Rust driver, on a runtime of its own so that this works from
/// synchronous code and from inside a test's runtime alike.
fn ping_with_driver(uri: &str) -> Result<()> {
    let uri = uri.to_string();
    std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let mut options = mongodb::options::ClientOptions::parse(&uri).await?;
            options.server_selection_timeout = Some(Duration::from_secs(10));
            let client = mongodb::Client::with_options(options)?;
            client.database("admin").run_command(doc! { "ping": 1 }).await?;
            client.shutdown().immediate(true).await;
            Ok(())
        })
    })
    .join()
    .expect("driver ping thread panicked")
}
