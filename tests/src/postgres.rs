//! A real PostgreSQL server for one test: `initdb` into a temporary directory, then
//! `pg_ctl start` on 127.0.0.1 and a free port. `stop()` and `start_again()` take it
//! away and bring it back on the same data and port (a sink outage mid-batch); Drop
//! stops it with `pg_ctl stop -m immediate` and removes the directory.

use std::ffi::CString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process::{tail, wait_until, CleanupGuard};
use crate::require::{is_root, require, Service};

/// A running (or deliberately stopped) PostgreSQL server owned by one test. Connect as
/// user `postgres`, no password, database `postgres`.
pub struct Postgres {
    // Stops the server if the test process is killed; a normal Drop stops it first,
    // then drops this guard without running its cleanup.
    _guard: Option<CleanupGuard>,
    dir: TempDir,
    port: u16,
    running: bool,
    /// fsync and full-page writes on (PostgreSQL's defaults); off by default, for speed.
    durable: bool,
}

impl Postgres {
    /// Initializes a fresh cluster and starts it; panics with the server log if it does
    /// not accept connections within 30 s.
    pub fn start() -> Postgres {
        Postgres::launch(false)
    }

    /// Like [`Postgres::start`], with PostgreSQL's default durability (every commit
    /// flushed with fsync), for benchmarks whose figures must hold on a real server.
    pub fn start_durable() -> Postgres {
        Postgres::launch(true)
    }

    fn launch(durable: bool) -> Postgres {
        require(Service::Postgres);
        let started = Instant::now();
        let dir = crate::temp_dir();
        if is_root() {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            let (uid, gid) = postgres_user().expect("look up the `postgres` user");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL test directory to postgres");
        }
        let mut pg = Postgres { _guard: None, port: crate::free_port(), dir, running: false, durable };
        let out = pg
            .as_owner("initdb")
            .arg("-D")
            .arg(pg.data_dir())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // pg_ctl daemonizes the server, so it would outlive a killed test process:
        // a guard stops it and removes the directory if that happens.
        let cleanup = format!(
            "{stop} -D {data} -m immediate -w stop >/dev/null 2>&1; rm -rf {dir}",
            stop = if is_root() { "runuser -u postgres -- pg_ctl" } else { "pg_ctl" },
            data = pg.data_dir().display(),
            dir = pg.dir.path().display(),
        );
        pg._guard = Some(CleanupGuard::new(&cleanup).expect("start the PostgreSQL cleanup guard"));
        pg.start_again();
        eprintln!(
            "[oplet-tests] PostgreSQL on 127.0.0.1:{} ready in {:?}",
            pg.port,
            started.elapsed()
        );
        pg
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string that tokio-postgres (and the host's config) accepts.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A connected client; its connection task is spawned on the current runtime.
    /// Panics if the server cannot be reached.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.try_client()
            .await
            .unwrap_or_else(|e| panic!("connect to PostgreSQL at {}: {e:#}", self.url()))
    }

    /// Like [`Postgres::client`], but returns the error (for tests of an outage).
    pub async fn try_client(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to {}", self.url()))?;
        tokio::spawn(async move {
            // The connection ends with an error when a test stops the server: expected.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Stops the server (`pg_ctl stop -m fast`: open sessions are cut off). The data
    /// directory and port are kept for [`Postgres::start_again`].
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.pg_ctl_stop("fast").unwrap_or_else(|e| panic!("{e:#}"));
        self.running = false;
    }

    /// Starts the server again on the same data directory and port and waits until it
    /// accepts connections. Also used by [`Postgres::start`].
    pub fn start_again(&mut self) {
        if self.running {
            return;
        }
        let mut options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        if !self.durable {
            options.push_str(" -c fsync=off -c full_page_writes=off");
        }
        let out = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-o")
            .arg(&options)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed ({}): {}{}\n--- server log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_path(), 40)
            );
        }
        self.running = true;
        let addr = format!("127.0.0.1:{}", self.port);
        if !wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(&addr).is_ok()) {
            panic!(
                "PostgreSQL started but does not accept connections on {addr}:\n{}",
                tail(&self.log_path(), 40)
            );
        }
    }

    /// Whether the server is meant to be up (between start/start_again and stop).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The server's log file (pg_ctl `-l`).
    /// Turns TLS on (server certificate `cert`, key `key`, and `ca` to check client
    /// certificates against) and replaces pg_hba.conf with `hba` (first match wins),
    /// then reloads: no restart, the port stays.
    pub fn enable_tls(&self, cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path, hba: &str) {
        let data = self.data_dir();
        for (from, to) in [(cert, "server.crt"), (key, "server.key"), (ca, "root.crt")] {
            std::fs::copy(from, data.join(to)).unwrap_or_else(|e| panic!("copy {} into the data directory: {e}", from.display()));
            let path = data.join(to);
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            if is_root() {
                let (uid, gid) = postgres_user().expect("look up the `postgres` user");
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let conf = "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n";
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("open postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let out = self.as_owner("pg_ctl").arg("-D").arg(&data).arg("reload").stdin(Stdio::null()).output().expect("run pg_ctl reload");
        assert!(out.status.success(), "pg_ctl reload failed: {}", String::from_utf8_lossy(&out.stderr));
        // A reload is asynchronous: wait until a TLS connection is taken.
        let ok = wait_until(Duration::from_secs(15), || {
            Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-tAc", "SHOW ssl"])
                .env("PGSSLMODE", "require")
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "on")
        });
        assert!(ok, "PostgreSQL did not turn TLS on:\n{}", tail(&self.log_path(), 40));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command that runs as the `postgres` user when we are root, as us otherwise.
    fn as_owner(&self, program: &str) -> Command {
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--", program]);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let out = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .output()
            .context("run pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop -m {mode} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.pg_ctl_stop("immediate") {
                eprintln!("[oplet-tests] {e:#}");
            }
        }
    }
}

fn postgres_user() -> Result<(u32, u32)> {
    let name = CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns null or a pointer to static storage that we read at once;
    // tests do not call getpwnam concurrently with anything that frees it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("no `postgres` user on this machine (scripts/setup.sh creates it)");
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok((uid, gid))
}

