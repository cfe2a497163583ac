//! PostgreSQL executor: row upserts and deletes (and optionally audit records) in
//! batched transactions.
//!
//! A `BatchSink` (see `batch`): the shared sink thread hands it batches of row
//! operations; it reads each table's columns from the catalog once, plans a few
//! multi-row statements (`plan`), and runs them in one transaction, so tickets
//! are released after COMMIT returns. A lost connection or other passing error
//! makes the whole batch worth retrying (on a fresh connection); an operation
//! PostgreSQL refuses for good (a constraint, a value its column cannot take) is
//! found by replaying the batch row by row under savepoints and is refused alone,
//! while the rest commit. Nothing is dropped silently.

mod plan;
mod value;

use super::batch::{BatchSink, Batching, Outcome, Queued, SinkHandle};
use crate::checkpoint::Ticket;
use crate::deadletter::DeadLetters;
use crate::envelope::Event;
use oplet_sdk::{Map, Value};
use plan::{quote_table, Column, Op, OpKind, Refusal, Statement, TableInfo};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use value::ColumnKind;
use super::secrets::Secret;
use super::tls::{PgRustls, TlsConfig, TlsMode};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `host=127.0.0.1 port=5432 user=postgres dbname=app` or a `postgres://` URL.
    pub url: String,
    /// Row operations per transaction at most.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long a batch may wait for more operations after the first.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// Operations buffered before plugin workers block.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Attempts after the first before a failing batch is dead-lettered.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First wait before a retry; doubles up to `backoff_max_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Time limit for connecting (unless the URL sets `connect_timeout`).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time limit for one attempt at a batch; past it the connection is
    /// dropped and the batch retried.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Also write audit records to this table (`name` or `schema.name`), created
    /// if missing; a record already there (a replay) is not written again.
    #[serde(default)]
    pub audit_table: Option<String>,
    /// The password, if the URL has none (or `OPLET__POSTGRES__PASSWORD`); never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose first line is the password (a mounted secret, a systemd credential).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// `[postgres.tls]`: mode, CA, client certificate.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// Batching defaults: transactions of many rows; a bigger queue to cover them.
const DEFAULTS: Batching =
    Batching { batch_max: 1000, batch_ms: 5, queue: 8192, retries: 10, backoff_ms: 100, backoff_max_ms: 5_000 };

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
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_timeout_ms() -> u64 {
    30_000
}

impl PostgresConfig {
    /// A config with every default, for `url`.
    pub fn new(url: &str) -> PostgresConfig {
        let d = DEFAULTS;
        PostgresConfig {
            url: url.to_string(),
            batch_max: d.batch_max,
            batch_ms: d.batch_ms,
            queue: d.queue,
            retries: d.retries,
            backoff_ms: d.backoff_ms,
            backoff_max_ms: d.backoff_max_ms,
            connect_timeout_ms: default_connect_timeout_ms(),
            timeout_ms: default_timeout_ms(),
            audit_table: None,
            password: None,
            password_file: None,
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

/// A row effect, already capability-checked.
#[derive(Debug, Clone)]
pub enum RowOp {
    Upsert { table: String, key: Vec<String>, values: Map },
    Delete { table: String, key: Map },
}

impl From<RowOp> for Op {
    fn from(op: RowOp) -> Op {
        match op {
            RowOp::Upsert { table, mut key, values } => {
                key.sort_unstable();
                key.dedup();
                Op { table, kind: OpKind::Upsert, key, values }
            }
            RowOp::Delete { table, key } => Op { table, kind: OpKind::Delete, key: key.keys().cloned().collect(), values: key },
        }
    }
}

pub struct PostgresHandle {
    sink: SinkHandle<Op>,
    audit_table: Option<String>,
}

/// Whether PostgreSQL answers as the sink would use it: the same URL, password
/// and TLS settings, a connection and `SELECT 1` (for `/readyz`).
pub async fn probe(cfg: &PostgresConfig) -> Result<(), String> {
    let (mut pg, tls) = connect_config(cfg).map_err(|e| format!("{e:#}"))?;
    pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
    pg.application_name("oplet-readyz");
    let failed = |e: tokio_postgres::Error| {
        let text = error_text(&e);
        format!("cannot connect to PostgreSQL: {text}{}", super::tls::explain("postgres", &text))
    };
    let client = match tls {
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
            spawn_connection(connection);
            client
        }
        Some(tls) => {
            let (client, connection) = pg.connect(tls).await.map_err(failed)?;
            spawn_connection(connection);
            client
        }
    };
    client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| format!("PostgreSQL refused SELECT 1: {}", error_text(&e)))
}

impl PostgresHandle {
    /// Starts the executor thread. It connects at once, but a PostgreSQL that is
    /// down only delays the rows (logged, retried); a malformed URL or audit
    /// table name is an error here.
    pub fn start(cfg: &PostgresConfig, dead: Arc<DeadLetters>) -> anyhow::Result<PostgresHandle> {
        let (mut pg, tls) = connect_config(cfg)?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("oplet");
        }
        if let Some(t) = &cfg.audit_table {
            quote_table(t).map_err(|e| anyhow::anyhow!("[postgres] audit_table: {e}"))?;
        }
        let sink = Sink {
            cfg: cfg.clone(),
            pg,
            tls,
            conn: None,
            tables: HashMap::new(),
            missing: HashSet::new(),
        };
        let sink = SinkHandle::start("oplet-postgres", sink, cfg.batching(), dead)?;
        Ok(PostgresHandle { sink, audit_table: cfg.audit_table.clone() })
    }

    /// Queues one row operation; blocks while the executor is behind. The ticket
    /// is dropped once the batch holding it is committed.
    pub fn apply(&self, plugin: &str, event: &Arc<Event>, op: RowOp, ticket: Ticket) {
        self.send(plugin, event, op.into(), ticket);
    }

    /// Whether audit records also go to a table here (`audit_table`).
    pub fn keeps_audit(&self) -> bool {
        self.audit_table.is_some()
    }

    /// Queues audit record `key` (see `audit::record_key`) for the audit table,
    /// written once: a replayed record is skipped by its key.
    pub fn audit(&self, plugin: &str, event: &Arc<Event>, key: String, record: Value, ticket: Ticket) {
        let Some(table) = &self.audit_table else { return };
        let values: Map = [
            ("key", Value::String(key)),
            ("plugin", plugin.into()),
            ("source", (&*event.source).into()),
            ("seq", Value::Int(event.seq as i64)),
            ("event_id", event.id.as_str().into()),
            ("time_ms", Value::Int(event.time_ms)),
            ("record", record),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let op = Op { table: table.clone(), kind: OpKind::InsertOnce, key: vec!["key".into()], values };
        self.send(plugin, event, op, ticket);
    }

    fn send(&self, plugin: &str, event: &Arc<Event>, op: Op, ticket: Ticket) {
        self.sink.send(plugin, event, op, ticket);
    }

    /// Applies what is queued, then stops.
    pub async fn shutdown(&self) {
        self.sink.shutdown().await;
    }
}

struct Conn {
    client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    /// Whether the audit table was created (or found) on this connection.
    audit_ready: bool,
}

struct Sink {
    cfg: PostgresConfig,
    pg: tokio_postgres::Config,
    /// `None`: plain TCP (`[postgres.tls] mode = "disable"`).
    tls: Option<PgRustls>,
    conn: Option<Conn>,
    /// Catalog entries by table name as plugins write it.
    tables: HashMap<String, TableInfo>,
    /// Tables looked up and not found.
    missing: HashSet<String>,
}

impl Conn {
    /// Prepares (once per connection) the statements not prepared yet.
    async fn prepare<'a>(&mut self, statements: impl Iterator<Item = &'a Statement>) -> Result<(), tokio_postgres::Error> {
        for s in statements {
            if !self.statements.contains_key(&s.sql) {
                let prepared = self.client.prepare(&s.sql).await?;
                self.statements.insert(s.sql.clone(), prepared);
            }
        }
        Ok(())
    }
}

/// A failure of the whole attempt that is worth retrying.
struct Transient(String);

impl BatchSink for Sink {
    type Op = Op;
    const STORE: &'static str = "PostgreSQL";
    const STAGE: &'static str = "sink:postgres";
    const ITEMS: &'static str = "row operation(s)";
    const METRIC: &'static str = "postgres";
    const EFFECT: &'static str = "row";

    async fn warm_up(&mut self) -> Result<(), String> {
        self.connect().await.map_err(|Transient(e)| e)?;
        // The audit table is there from the start, not from the first record.
        match self.cfg.audit_table.clone() {
            Some(t) => self.ensure_audit_table(&quote_table(&t).expect("checked by start")).await.map_err(|Transient(e)| e),
            None => Ok(()),
        }
    }

    /// The whole batch in one transaction: committed but for the operations
    /// refused for good, or (a passing failure) all to be tried again.
    async fn attempt(&mut self, batch: &[Queued<Op>]) -> Vec<Outcome> {
        let limit = Duration::from_millis(self.cfg.timeout_ms);
        let result = match tokio::time::timeout(limit, self.transaction(batch)).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that does not answer is not trusted again.
                self.conn = None;
                Err(Transient(format!("no answer within {limit:?}")))
            }
        };
        match result {
            Ok(refused) => {
                let mut outcomes = vec![Outcome::Done; batch.len()];
                for r in refused {
                    outcomes[r.op] = Outcome::Refused(r.error);
                }
                outcomes
            }
            Err(Transient(e)) => vec![Outcome::Retry(e); batch.len()],
        }
    }

    fn describe(op: &Op) -> String {
        format!("{:?} on {}", op.kind, op.table)
    }
}

impl Sink {
    async fn connect(&mut self) -> Result<&mut Conn, Transient> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let failed = |e: tokio_postgres::Error| {
                let text = error_text(&e);
                Transient(format!("cannot connect to PostgreSQL: {text}{}", super::tls::explain("postgres", &text)))
            };
            let client = match &self.tls {
                None => {
                    let (client, connection) = self.pg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
                    spawn_connection(connection);
                    client
                }
                Some(tls) => {
                    let (client, connection) = self.pg.connect(tls.clone()).await.map_err(failed)?;
                    spawn_connection(connection);
                    client
                }
            };
            tracing::info!(tls = ?self.cfg.tls.mode, "connected to PostgreSQL");
            // The schema may have changed while we were away.
            self.tables.clear();
            self.missing.clear();
            self.conn = Some(Conn { client, statements: HashMap::new(), audit_ready: false });
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// One try at the whole batch. `Ok` holds the operations refused for good
    /// (everything else is committed); `Err` means nothing is, try again.
    async fn transaction(&mut self, batch: &[Queued<Op>]) -> Result<Vec<Refusal>, Transient> {
        self.connect().await?;
        let ops: Vec<&Op> = batch.iter().map(|i| &i.op).collect();
        let (statements, mut refused) = self.plan(&ops).await?;
        if statements.is_empty() {
            return Ok(refused);
        }
        match self.execute(&statements).await {
            Ok(()) => Ok(refused),
            Err(e) if transient(&e) => Err(Transient(error_text(&e))),
            Err(e) => {
                tracing::warn!(
                    "PostgreSQL refused a batch of {} row operation(s) ({}); applying them one by one to find the culprit",
                    ops.len(),
                    error_text(&e)
                );
                // The catalog may be what changed (a dropped column...).
                self.forget_tables(&ops);
                let mut order: Vec<usize> = statements.iter().flat_map(|s| s.ops.iter().copied()).collect();
                order.sort_unstable();
                refused.extend(self.one_by_one(&ops, &order).await?);
                refused.sort_by_key(|r| r.op);
                Ok(refused)
            }
        }
    }

    /// Plans `ops`; when an operation names a table or column the cached catalog
    /// lacks, reads that table again once (it may have just been created or
    /// altered).
    async fn plan(&mut self, ops: &[&Op]) -> Result<(Vec<Statement>, Vec<Refusal>), Transient> {
        let mut refused = self.prepare_tables(ops).await?;
        let (mut statements, mut planned) = plan::plan(ops, &self.tables);
        let stale: Vec<&Op> = planned.iter().filter(|r| r.stale).map(|r| ops[r.op]).collect();
        if !stale.is_empty() {
            self.forget_tables(&stale);
            self.prepare_tables(ops).await?;
            (statements, planned) = plan::plan(ops, &self.tables);
        }
        // A name that is not an identifier was refused first, by prepare_tables.
        let mut seen: HashSet<usize> = refused.iter().map(|r| r.op).collect();
        refused.extend(planned.into_iter().filter(|r| seen.insert(r.op)));
        Ok((statements, refused))
    }

    fn forget_tables(&mut self, ops: &[&Op]) {
        for op in ops {
            self.tables.remove(&op.table);
            self.missing.remove(&op.table);
        }
    }

    /// Reads the catalog entry of every table in `ops` not yet known (and
    /// creates the audit table if needed). Operations on a table whose name is
    /// not an identifier come back refused.
    async fn prepare_tables(&mut self, ops: &[&Op]) -> Result<Vec<Refusal>, Transient> {
        let mut refused = Vec::new();
        let mut checked: HashMap<&str, Result<(), String>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            if !checked.contains_key(op.table.as_str()) {
                let result = match quote_table(&op.table) {
                    Ok(quoted) => {
                        self.prepare_table(&op.table, &quoted).await?;
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                checked.insert(&op.table, result);
            }
            if let Err(e) = &checked[op.table.as_str()] {
                refused.push(Refusal { op: i, error: e.clone(), stale: false });
            }
        }
        Ok(refused)
    }

    async fn prepare_table(&mut self, table: &str, quoted: &str) -> Result<(), Transient> {
        if self.cfg.audit_table.as_deref() == Some(table) {
            self.ensure_audit_table(quoted).await?;
        }
        if !self.tables.contains_key(table) && !self.missing.contains(table) {
            match self.read_table(quoted).await? {
                Some(info) => {
                    self.tables.insert(table.to_string(), info);
                }
                None => {
                    tracing::warn!(table, "PostgreSQL has no table {quoted}");
                    self.missing.insert(table.to_string());
                }
            }
        }
        Ok(())
    }

    async fn ensure_audit_table(&mut self, quoted: &str) -> Result<(), Transient> {
        let conn = self.connect().await?;
        if conn.audit_ready {
            return Ok(());
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {quoted} (\
             key text PRIMARY KEY, plugin text NOT NULL, source text NOT NULL, seq bigint NOT NULL, \
             event_id text NOT NULL, time_ms bigint NOT NULL, record jsonb NOT NULL, \
             written_at timestamptz NOT NULL DEFAULT now())"
        );
        match conn.client.batch_execute(&sql).await {
            Ok(()) => {
                conn.audit_ready = true;
                Ok(())
            }
            // Two hosts creating it at once: the loser sees a unique violation.
            Err(e) if e.code().is_some_and(|c| c.code() == "23505" || c.code() == "42P07") => {
                conn.audit_ready = true;
                Ok(())
            }
            Err(e) if transient(&e) => Err(Transient(error_text(&e))),
            Err(e) => {
                // Left to fail per operation: "table does not exist".
                tracing::error!("cannot create the audit table {quoted}: {}", error_text(&e));
                Ok(())
            }
        }
    }

    /// The columns of `quoted` (a checked, quoted name), or `None` if there is
    /// no such table.
    async fn read_table(&mut self, quoted: &str) -> Result<Option<TableInfo>, Transient> {
        const SQL: &str = "SELECT a.attname::text, a.atttypid::regtype::text, t.typcategory, t.typname::text, \
                           e.typcategory, e.typname::text \
                           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                           LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
                           WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";
        let conn = self.connect().await?;
        let rows = conn.client.query(SQL, &[&quoted]).await.map_err(|e| Transient(error_text(&e)))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = rows
            .iter()
            .map(|r| {
                let category = r.get::<_, i8>(2) as u8;
                let elem = r.get::<_, Option<i8>>(4).map(|c| c as u8).zip(r.get::<_, Option<String>>(5));
                let kind = ColumnKind::from_catalog(category, r.get::<_, &str>(3), elem.as_ref().map(|(c, n)| (*c, n.as_str())));
                (r.get::<_, String>(0), Column { sql_type: r.get(1), kind })
            })
            .collect();
        Ok(Some(TableInfo { quoted: quoted.to_string(), columns }))
    }

    /// Runs the statements in one transaction (a single statement is its own).
    async fn execute(&mut self, statements: &[Statement]) -> Result<(), tokio_postgres::Error> {
        let conn = self.conn.as_mut().expect("connected by attempt");
        conn.prepare(statements.iter()).await?;
        if let [s] = statements {
            conn.client.execute(&conn.statements[&s.sql], &params(s)).await?;
            return Ok(());
        }
        let tx = conn.client.transaction().await?;
        for s in statements {
            tx.execute(&conn.statements[&s.sql], &params(s)).await?;
        }
        tx.commit().await
    }

    /// The fallback after a refused batch: each operation alone, in queue order,
    /// under a savepoint in one transaction; the refused ones are rolled back to
    /// their savepoint and returned.
    async fn one_by_one(&mut self, ops: &[&Op], order: &[usize]) -> Result<Vec<Refusal>, Transient> {
        let t = |e: tokio_postgres::Error| Transient(error_text(&e));
        let mut single = Vec::with_capacity(order.len());
        let mut refused = Vec::new();
        self.prepare_tables(ops).await?;
        for &i in order {
            let (mut statements, mut r) = plan::plan(&ops[i..=i], &self.tables);
            match (statements.pop(), r.pop()) {
                (Some(s), _) => single.push((i, s)),
                (None, Some(r)) => refused.push(Refusal { op: i, ..r }),
                (None, None) => {}
            }
        }
        let conn = self.conn.as_mut().expect("connected by attempt");
        // The same SQL as the batch's statements: one row is an array of one.
        if let Err(e) = conn.prepare(single.iter().map(|(_, s)| s)).await {
            if transient(&e) {
                return Err(t(e));
            }
        }
        let Conn { client, statements, .. } = conn;
        let tx = client.transaction().await.map_err(t)?;
        for (i, s) in &single {
            tx.batch_execute("SAVEPOINT oplet_row").await.map_err(t)?;
            let result = match statements.get(&s.sql) {
                Some(prepared) => tx.execute(prepared, &params(s)).await,
                None => match tx.prepare(&s.sql).await {
                    Ok(prepared) => tx.execute(&prepared, &params(s)).await,
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(_) => tx.batch_execute("RELEASE SAVEPOINT oplet_row").await.map_err(t)?,
                Err(e) if transient(&e) => return Err(t(e)),
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT oplet_row").await.map_err(t)?;
                    refused.push(Refusal { op: *i, error: error_text(&e), stale: false });
                }
            }
        }
        tx.commit().await.map_err(t)?;
        Ok(refused)
    }
}

/// The client config for `cfg` and its TLS connector: the URL's password is
/// replaced by `password` / `password_file` when those are set, and the URL never
/// appears in an error (it may hold a password).
fn connect_config(cfg: &PostgresConfig) -> anyhow::Result<(tokio_postgres::Config, Option<PgRustls>)> {
    let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e| {
        anyhow::anyhow!("[postgres] url {} is invalid: {e}; write postgres://USER@HOST:PORT/DB or host=H user=U dbname=D", super::secrets::redact(&cfg.url))
    })?;
    if let Some(p) = super::secrets::password("postgres", cfg.password.as_ref(), cfg.password_file.as_deref())? {
        pg.password(p.expose());
    }
    let files = cfg.tls.load("postgres")?;
    let tls = match cfg.tls.mode {
        TlsMode::Disable => {
            if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
                anyhow::bail!("[postgres] url asks for sslmode=require but [postgres.tls] mode is \"disable\"; set [postgres.tls] mode = \"verify-full\" (with ca_file) or \"require\"");
            }
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            None
        }
        mode => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(PgRustls::new(files.client_config("postgres", mode)?))
        }
    };
    Ok((pg, tls))
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
}

fn params(s: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    s.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Whether an error may pass by itself: the connection, the server going away
/// or overloaded, a serialization failure or deadlock. A refusal of the data
/// (a constraint, a type, a missing column) is not.
fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Not from the server: I/O, the connection, the protocol.
        None => true,
        Some(code) => matches!(&code.code()[..2], "08" | "40" | "53" | "57" | "58") || code.code() == "55P03",
    }
}

/// The server's message with its detail and SQLSTATE, or the client's error.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(&format!(": {detail}"));
            }
            s
        }
        None => {
            // The cause (an I/O or TLS error) is the part an operator can act on.
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_only_a_url_takes_the_defaults_and_typos_are_refused() {
        let cfg: PostgresConfig = toml::from_str("url = \"postgres://u@h/db\"").unwrap();
        assert_eq!((cfg.batch_max, cfg.batch_ms, cfg.audit_table), (1000, 5, None));
        let err = toml::from_str::<PostgresConfig>("url = \"x\"\naudit_tabel = \"a\"").unwrap_err();
        assert!(err.to_string().contains("audit_tabel"), "{err}");
    }

    #[test]
    fn a_bad_audit_table_name_stops_the_start() {
        let dir = tempdir();
        let dead = Arc::new(DeadLetters::open(&dir.join("dl.jsonl")).unwrap());
        let mut cfg = PostgresConfig::new("postgres://postgres@127.0.0.1:1/x");
        cfg.audit_table = Some("audit; drop table x".into());
        let err = PostgresHandle::start(&cfg, dead).err().expect("refused");
        assert!(err.to_string().contains("audit_table") && err.to_string().contains("not a valid identifier"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn row_ops_sort_their_key_columns() {
        let op: Op = RowOp::Upsert { table: "t".into(), key: vec!["b".into(), "a".into(), "b".into()], values: Map::new() }.into();
        assert_eq!(op.key, vec!["a".to_string(), "b".to_string()]);
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("oplet-pg-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
