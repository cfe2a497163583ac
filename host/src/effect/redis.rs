//! Redis executor: cache deletes, pipelined (many events per round trip).
//!
//! A `BatchSink` (see `batch`): the shared sink thread hands it batches of cache
//! deletes, and it sends their keys as a few `UNLINK` (or `DEL`) commands in a
//! single pipeline, saying per item whether it is done, worth retrying (on a
//! fresh connection) or refused for good (`NOPERM`...). Deletes are idempotent and
//! commute, so a retried or replayed batch is harmless.

use super::batch::{BatchSink, Batching, Outcome, Queued, SinkHandle};
use crate::checkpoint::Ticket;
use crate::deadletter::DeadLetters;
use crate::envelope::Event;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use super::secrets::{redact, Secret};
use super::tls::{TlsConfig, TlsMode};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://127.0.0.1:6379/0`, or `rediss://...` for TLS with the system's
    /// roots (`[redis.tls]` sets the mode, CA and client certificate).
    pub url: String,
    /// The password (AUTH), if the URL has none (or `OPLET__REDIS__PASSWORD`); never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose first line is the password (a mounted secret, a systemd credential).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// ACL user name for AUTH (Redis 6+), if the URL has none.
    #[serde(default)]
    pub username: Option<String>,
    /// `[redis.tls]`: mode, CA, client certificate.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Cache-delete effects per pipeline at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long a pipeline may wait for more effects after the first.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// Effects buffered before plugin workers block.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Attempts after the first before a failing delete is dead-lettered.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First wait before a retry; doubles up to `backoff_max_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// `unlink` (frees memory off the main thread, Redis >= 4) or `del`.
    #[serde(default)]
    pub command: DeleteCommand,
    /// Time limit for connecting and for each pipeline's replies.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeleteCommand {
    #[default]
    Unlink,
    Del,
}

impl DeleteCommand {
    fn name(self) -> &'static str {
        match self {
            DeleteCommand::Unlink => "UNLINK",
            DeleteCommand::Del => "DEL",
        }
    }
}

/// Batching defaults: small, fast deletes, many per pipeline.
const DEFAULTS: Batching =
    Batching { batch_max: 512, batch_ms: 2, queue: 4096, retries: 10, backoff_ms: 100, backoff_max_ms: 5_000 };

fn default_batch_max() -> usize {
    DEFAULTS.batch_max
}
fn default_batch_ms() -> u64 {
    DEFAULTS.batch_ms
}
fn default_queue() -> usize {
    DEFAULTS.queue
}
fn default_retries() -> u32 {
    DEFAULTS.retries
}
fn default_backoff_ms() -> u64 {
    DEFAULTS.backoff_ms
}
fn default_backoff_max_ms() -> u64 {
    DEFAULTS.backoff_max_ms
}
fn default_timeout_ms() -> u64 {
    5_000
}

impl RedisConfig {
    /// A config with every default, for `url`.
    pub fn new(url: &str) -> RedisConfig {
        let d = DEFAULTS;
        RedisConfig {
            url: url.to_string(),
            batch_max: d.batch_max,
            batch_ms: d.batch_ms,
            queue: d.queue,
            retries: d.retries,
            backoff_ms: d.backoff_ms,
            backoff_max_ms: d.backoff_max_ms,
            command: DeleteCommand::default(),
            timeout_ms: default_timeout_ms(),
            password: None,
            password_file: None,
            username: None,
            tls: TlsConfig::default(),
        }
    }

    /// The keys the shared batching sink reads.
    pub fn batching(&self) -> Batching {
        Batching {
            batch_max: self.batch_max,
            batch_ms: self.batch_ms,
            queue: self.queue,
            retries: self.retries,
            backoff_ms: self.backoff_ms,
            backoff_max_ms: self.backoff_max_ms,
        }
    }
}

pub struct RedisHandle {
    sink: SinkHandle<Vec<String>>,
}

/// Whether Redis answers as the sink would use it: the same URL, password and
/// TLS settings, a connection and `PING` (for `/readyz`).
pub async fn probe(cfg: &RedisConfig) -> Result<(), String> {
    let client = client(cfg).map_err(|e| format!("{e:#}"))?;
    let timeout = Some(Duration::from_millis(cfg.timeout_ms));
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| {
        let text = e.to_string();
        format!("cannot connect to Redis at {}: {text}{}", redact(&cfg.url), super::tls::explain("redis", &text))
    })?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.map_err(|e| format!("Redis at {} refused PING: {e}", redact(&cfg.url)))?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("Redis at {} answered PING with {pong:?}", redact(&cfg.url)))
    }
}

impl RedisHandle {
    /// Starts the executor thread. It connects at once but a Redis that is down
    /// only delays deletes (logged, retried); a malformed URL is an error here.
    pub fn start(cfg: &RedisConfig, dead: Arc<DeadLetters>) -> anyhow::Result<RedisHandle> {
        let client = client(cfg)?;
        let sink = Sink { cfg: cfg.clone(), client, conn: None };
        Ok(RedisHandle { sink: SinkHandle::start("oplet-redis", sink, cfg.batching(), dead)? })
    }

    /// Queues a delete of `keys` (already capability-checked); blocks while the
    /// executor is behind. The ticket is dropped once the keys are deleted.
    pub fn delete(&self, plugin: &str, event: &Arc<Event>, keys: Vec<String>, ticket: Ticket) {
        if !keys.is_empty() {
            self.sink.send(plugin, event, keys, ticket);
        }
    }

    /// Applies what is queued, then stops.
    pub async fn shutdown(&self) {
        self.sink.shutdown().await;
    }
}

/// The client for `cfg`: its URL, with `password`/`password_file`/`username`
/// and `[redis.tls]` applied. A `rediss://` URL without `[redis.tls]` means
/// `verify-full` against the system's roots. Errors never show the password.
fn client(cfg: &RedisConfig) -> anyhow::Result<redis::Client> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let invalid = |e: redis::RedisError| {
        anyhow::anyhow!("[redis] url {} is invalid: {e}; write redis://HOST:PORT/DB (or rediss:// for TLS)", redact(&cfg.url))
    };
    let mut info = cfg.url.as_str().into_connection_info().map_err(invalid)?;
    let mut settings = info.redis_settings().clone();
    if let Some(p) = super::secrets::password("redis", cfg.password.as_ref(), cfg.password_file.as_deref())? {
        settings = settings.set_password(p.expose());
    }
    if let Some(u) = &cfg.username {
        settings = settings.set_username(u);
    }
    info = info.set_redis_settings(settings);
    let files = cfg.tls.load("redis")?;
    let (host, port, url_tls) = match info.addr() {
        ConnectionAddr::Tcp(h, p) => (h.clone(), *p, false),
        ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
        _ => {
            if cfg.tls.mode != TlsMode::Disable {
                anyhow::bail!("[redis.tls] is set but [redis] url is a Unix socket; TLS needs a TCP address (redis://HOST:PORT)");
            }
            return redis::Client::open(info).map_err(invalid);
        }
    };
    let mode = match (cfg.tls.mode, url_tls) {
        (TlsMode::Disable, true) if cfg.tls.ca_file.is_none() => TlsMode::VerifyFull,
        (m, _) => m,
    };
    if mode == TlsMode::Disable {
        return redis::Client::open(info.set_addr(ConnectionAddr::Tcp(host, port))).map_err(invalid);
    }
    info = info.set_addr(ConnectionAddr::TcpTls { host, port, insecure: mode == TlsMode::Require, tls_params: None });
    let certs = redis::TlsCertificates {
        client_tls: match (files.cert_pem, files.key_pem) {
            (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig { client_cert, client_key }),
            _ => None,
        },
        root_cert: files.ca_pem,
    };
    let client = redis::Client::build_with_tls(info, certs)
        .map_err(|e| anyhow::anyhow!("[redis.tls] cannot use the certificate files: {e}"))?;
    if mode != TlsMode::VerifyCa {
        return Ok(client);
    }
    // verify-ca: the chain is checked, the host name is not.
    let mut addr = client.get_connection_info().addr().clone();
    addr.set_danger_accept_invalid_hostnames(true);
    redis::Client::open(client.get_connection_info().clone().set_addr(addr)).map_err(invalid)
}

struct Sink {
    cfg: RedisConfig,
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
}

/// Keys per `UNLINK` command at most: large enough that Redis spends its time
/// deleting rather than dispatching commands, small enough to keep each command
/// short on the server's single thread.
const KEYS_PER_COMMAND: usize = 1024;

impl BatchSink for Sink {
    type Op = Vec<String>;
    const STORE: &'static str = "Redis";
    const STAGE: &'static str = "sink:redis";
    const ITEMS: &'static str = "cache delete(s)";
    const METRIC: &'static str = "redis";
    const EFFECT: &'static str = "cache_delete";

    async fn warm_up(&mut self) -> Result<(), String> {
        self.connect().await.map(|_| ())
    }

    async fn attempt(&mut self, batch: &[Queued<Vec<String>>]) -> Vec<Outcome> {
        self.commands(batch).await
    }

    fn describe(keys: &Vec<String>) -> String {
        format!("cache delete of {keys:?}")
    }
}

impl Sink {
    async fn connect(&mut self) -> Result<&mut redis::aio::MultiplexedConnection, String> {
        if self.conn.is_none() {
            let timeout = Some(Duration::from_millis(self.cfg.timeout_ms));
            let config =
                redis::AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
            let conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| {
                    let text = e.to_string();
                    format!("cannot connect to Redis at {}: {text}{}", redact(&self.cfg.url), super::tls::explain("redis", &text))
                })?;
            tracing::info!(url = %redact(&self.cfg.url), tls = matches!(self.client.get_connection_info().addr(), redis::ConnectionAddr::TcpTls { .. }), "connected to Redis");
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// One pipeline: the keys of consecutive items share `UNLINK` commands of up
    /// to `KEYS_PER_COMMAND` keys. A command Redis refuses for good is sent again
    /// as one command per item, so the refusal lands on the item that caused it.
    /// One outcome per item.
    async fn commands(&mut self, items: &[Queued<Vec<String>>]) -> Vec<Outcome> {
        let mut commands = Vec::new();
        let mut start = 0;
        let mut keys = 0;
        for (i, item) in items.iter().enumerate() {
            if keys > 0 && keys + item.op.len() > KEYS_PER_COMMAND {
                commands.push(start..i);
                (start, keys) = (i, 0);
            }
            keys += item.op.len();
        }
        commands.push(start..items.len());
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for (range, outcome) in commands.iter().zip(self.pipeline(items, &commands).await) {
            match outcome {
                Outcome::Refused(_) if range.len() > 1 => {
                    refused.extend(range.clone());
                    outcomes.extend(range.clone().map(|_| Outcome::Done));
                }
                other => {
                    outcomes.extend(range.clone().skip(1).map(|_| other.clone()));
                    outcomes.push(other);
                }
            }
        }
        if !refused.is_empty() {
            let singles: Vec<_> = refused.iter().map(|&i| i..i + 1).collect();
            for (i, outcome) in refused.into_iter().zip(self.pipeline(items, &singles).await) {
                outcomes[i] = outcome;
            }
        }
        outcomes
    }

    /// Sends one delete command per range of items, all in one pipeline; one
    /// outcome per command.
    async fn pipeline(&mut self, items: &[Queued<Vec<String>>], commands: &[std::ops::Range<usize>]) -> Vec<Outcome> {
        let all = |e: String| commands.iter().map(|_| Outcome::Retry(e.clone())).collect();
        let command = self.cfg.command.name();
        let conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => return all(e),
        };
        let mut pipe = redis::pipe();
        for range in commands {
            let cmd = pipe.cmd(command);
            for item in &items[range.clone()] {
                cmd.arg(&item.op);
            }
        }
        match pipe.ignore_errors().query_async::<Vec<redis::RedisResult<i64>>>(conn).await {
            Ok(replies) if replies.len() == commands.len() => replies
                .into_iter()
                .map(|r| match r {
                    Ok(_) => Outcome::Done,
                    Err(e) if transient(&e) => Outcome::Retry(e.to_string()),
                    Err(e) => Outcome::Refused(e.to_string()),
                })
                .collect(),
            Ok(replies) => {
                self.conn = None;
                all(format!("expected {} replies from Redis, got {}", commands.len(), replies.len()))
            }
            Err(e) => {
                // The connection may be half-read: start the next attempt afresh.
                self.conn = None;
                all(e.to_string())
            }
        }
    }
}

/// Whether a per-command error from Redis may pass by itself.
fn transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_only_a_url_takes_the_defaults_and_typos_are_refused() {
        let cfg: RedisConfig = toml::from_str("url = \"redis://127.0.0.1:6379/\"").unwrap();
        assert_eq!(cfg.batch_max, 512);
        assert_eq!(cfg.command, DeleteCommand::Unlink);
        let err = toml::from_str::<RedisConfig>("url = \"redis://x/\"\nbatch_mx = 3").unwrap_err();
        assert!(err.to_string().contains("batch_mx"), "{err}");
        let cfg: RedisConfig = toml::from_str("url = \"redis://x/\"\ncommand = \"del\"").unwrap();
        assert_eq!(cfg.command.name(), "DEL");
    }
}
