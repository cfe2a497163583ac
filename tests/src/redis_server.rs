//! A real Redis server for one test: `redis-server` as a child process on a free
//! loopback port, no persistence, its log in a temporary directory. Ready once it
//! answers PING; Drop kills it and removes the directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::process::{kill_child, spawn, tail, wait_until};
use crate::require::{require, Service};

/// A running Redis server owned by one test.
pub struct Redis {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl Redis {
    /// Starts `redis-server` and waits (up to 15 s) until it answers PING.
    pub fn start() -> Redis {
        require(Service::Redis);
        let started = Instant::now();
        let port = crate::free_port();
        let (mut redis, log) = Redis::launch(port, |cmd| {
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
        });
        let ready = wait_until(Duration::from_secs(15), || {
            redis.exited() || ping(port).is_ok()
        });
        if !ready || redis.exited() {
            panic!(
                "redis-server on 127.0.0.1:{port} did not answer PING:\n{}",
                tail(&log, 40)
            );
        }
        eprintln!("[oplet-tests] Redis on 127.0.0.1:{port} ready in {:?}", started.elapsed());
        redis
    }

    /// Starts `redis-server` serving only TLS (certificate `cert`/`key`; clients
    /// must present a certificate signed by `ca`) with AUTH `password`. Ready once
    /// its TLS port takes connections and the log says it is ready.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path, password: &str) -> Redis {
        require(Service::Redis);
        let port = crate::free_port();
        let (mut redis, log) = Redis::launch(port, |cmd| {
            cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "yes", "--requirepass", password]);
        });
        let ready = wait_until(Duration::from_secs(15), || {
            redis.exited()
                || (TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Ready to accept connections")))
        });
        if !ready || redis.exited() {
            panic!("redis-server (TLS) on 127.0.0.1:{port} did not start (does this build have TLS?):\n{}", tail(&log, 40));
        }
        redis
    }

    /// Spawns `redis-server` in a folder of its own with the listening arguments
    /// `listen` adds, no persistence, in the foreground, logging to the folder's
    /// `redis.log` (returned, for readiness checks and failure messages).
    fn launch(port: u16, listen: impl FnOnce(&mut Command)) -> (Redis, std::path::PathBuf) {
        let dir = crate::temp_dir();
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        listen(&mut cmd);
        cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(cmd).expect("spawn redis-server");
        (Redis { dir, port, child }, log)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`, as the redis crate and the host's config take it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A multiplexed async connection; panics if the server cannot be reached.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.try_connection()
            .await
            .unwrap_or_else(|e| panic!("connect to Redis at {}: {e:#}", self.url()))
    }

    /// Like [`Redis::connection`], but returns the error.
    pub async fn try_connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).context("parse the Redis URL")?;
        client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connect to {}", self.url()))
    }

    /// The server's log file.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// One raw RESP PING, so readiness does not depend on the client library.
fn ping(port: u16) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("unexpected reply {:?}", String::from_utf8_lossy(&buf))))
    }
}
