//! Snapshot into PostgreSQL (issue 13): documents/s of `snapshot = "initial"` with
//! the bundled `pg-sync`, against the script the guides teach (pymongo reads, psycopg
//! inserts row by row: `pymongo_psycopg_copy.py`), in one run against the same
//! nx-27017 and PostgreSQL, with the CPU seconds each process spent (from /proc).
//!
//! 1. N documents (~400 bytes, nested fields) are inserted with `insert_many` (not timed).
//! 2. baseline: the Python script copies them (or its first `BASE_N`) into `snap_a`.
//! 3. oplet: the release binary with pg-sync snapshots them into `snap_b`; done when
//!    `SELECT count(*)` reaches N. Both tables are then compared row by row.
//! 4. statement shapes: the rows of `snap_b` written again by the executor's
//!    `INSERT ... SELECT FROM unnest(...)` and by `COPY` into a staging table plus one
//!    upsert, per batch of 1000 and 5000, for the executor's choice.
//!
//! Run: `cargo bench -p oplet-benches --bench snapshot` (`-- N BASE_N` to change the
//! defaults 100000 100000).

use futures_util::pin_mut;
use mongodb::bson::{doc, Document};
use oplet_tests::{repo_root, Mongo, Oplet, Postgres};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let n = arg(0, 100_000);
    let base_n = arg(1, n).min(n);
    // Keep nx-27017's INFO logging out of the measurement.
    std::env::set_var("OPLET_TEST_NX_LOG_LEVEL", "WARNING");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(n, base_n));
}

/// One document: about 400 bytes of BSON, a few nested fields, an ObjectId `_id`.
fn document(i: u64) -> Document {
    let city = ["Lyon", "Porto", "Graz", "Turku"][(i % 4) as usize];
    doc! {
        "email": format!("user{i}@example.com"),
        "status": if i % 3 == 0 { "active" } else { "idle" },
        "profile": {
            "name": format!("User Number {i}"),
            "age": (20 + i % 50) as i32,
            "address": { "street": format!("{} Long Street", i % 997), "city": city, "zip": format!("{:05}", i % 99_991) },
        },
        "tags": ["customer", if i % 2 == 0 { "newsletter" } else { "trial" }, format!("cohort-{}", i % 12)],
        "score": (i % 1000) as i32,
        "notes": format!("{i}: a free-text note of moderate length, as applications keep on their users, padded to be realistic."),
        "created": mongodb::bson::DateTime::from_millis(1_700_000_000_000 + i as i64 * 1000),
    }
}

struct Figures {
    docs: u64,
    wall: f64,
    mongo_cpu: f64,
    pg_cpu: f64,
    /// The copier: python for the baseline, oplet for Oplet.
    own_cpu: f64,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.docs as f64 / self.wall
    }
    fn shares(&self) -> String {
        let total = self.mongo_cpu + self.pg_cpu + self.own_cpu;
        let pct = |x: f64| x * 100.0 / total.max(f64::EPSILON);
        format!("{:.0}% / {:.0}% / {:.0}%", pct(self.mongo_cpu), pct(self.own_cpu), pct(self.pg_cpu))
    }
}

async fn run(n: u64, base_n: u64) {
    // Built (or found) before anything is timed.
    let bin = oplet_tests::oplet_bin();
    eprintln!("[snapshot bench] oplet binary {}", bin.display());
    let load_before = load_average();
    let (mongo, pg) = (Mongo::start(), Postgres::start_durable());
    let uri = mongo.uri();
    let client = mongo.client().await;
    let db = format!("snapbench_{}", std::process::id());
    let coll = client.database(&db).collection::<Document>("users");
    let mongo_pid = process_with_arg(&[&format!("{}", port_of(&uri)), "--pid-file"]).expect("the nx-27017 process");
    let pg_pid = process_with_arg(&["-p", &pg.port().to_string()]).filter(|p| comm(*p) == "postgres").expect("the postmaster");

    // 1. The collection, in big batches.
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let chunk: Vec<Document> = (i..(i + 5000).min(n)).map(document).collect();
        i += chunk.len() as u64;
        coll.insert_many(chunk).await.unwrap();
    }
    assert_eq!(coll.estimated_document_count().await.unwrap(), n);
    let bson_size = mongodb::bson::to_vec(&document(n / 2)).unwrap().len();
    eprintln!("[snapshot bench] inserted {n} documents of ~{bson_size} bytes in {:.1?}", started.elapsed());
    let sql = pg.client().await;
    for t in ["snap_a", "snap_b"] {
        sql.batch_execute(&format!("CREATE TABLE {t} (id text PRIMARY KEY, email text, name text, doc jsonb)")).await.unwrap();
    }

    // 2. The baseline.
    let python = std::env::var("OPLET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pymongo_psycopg_copy.py");
    let (m0, p0) = (cpu_tree(mongo_pid), cpu_tree(pg_pid));
    let started = Instant::now();
    let mut child = Command::new(python)
        .arg(&script)
        .args([uri.as_str(), db.as_str(), "users", pg.url().as_str(), "snap_a", &base_n.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the python baseline");
    // Its CPU: what this process's reaped children used, across its run.
    let c0 = children_cpu();
    while child.try_wait().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().unwrap();
    let py_cpu = children_cpu() - c0;
    let base_wall = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "the baseline failed: {}", out.status);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the baseline's JSON line");
    assert_eq!(summary["docs"].as_u64(), Some(base_n), "{summary}");
    let base = Figures { docs: base_n, wall: base_wall, mongo_cpu: cpu_tree(mongo_pid) - m0, pg_cpu: cpu_tree(pg_pid) - p0, own_cpu: py_cpu };
    assert_eq!(count(&sql, "snap_a").await, base_n as i64);

    // 3. Oplet.
    let dir = oplet_tests::temp_dir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    install_pg_sync(&plugins, &db);
    let admin = format!("127.0.0.1:{}", oplet_tests::free_port());
    let config = dir.path().join("oplet.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[admin]\nlisten = \"{admin}\"\n\
             [[source]]\ntype = \"mongo\"\nname = \"mongo\"\nuri = \"{uri}\"\ncollections = [\"{db}.users\"]\n\
             full_document = \"updateLookup\"\nsnapshot = \"initial\"\n\
             [postgres]\nurl = \"{}\"\n[grants.\"*\"]\nall_requested = true\n",
            pg.url()
        ),
    )
    .unwrap();
    let (m0, p0) = (cpu_tree(mongo_pid), cpu_tree(pg_pid));
    let started = Instant::now();
    let oplet = Oplet::start(&config);
    let opid = oplet.pid();
    let mut own = 0.0;
    let mut first_read = None;
    let threads = loop {
        assert!(oplet.is_running(), "oplet exited:\n{}", oplet.logs());
        if first_read.is_none() && !oplet.log_lines_containing("snapshot: about ").is_empty() {
            first_read = Some(started.elapsed().as_secs_f64());
        }
        own = cpu_tree(opid).max(own);
        let threads = oplet_tests::cpu_by_thread(opid);
        if count(&sql, "snap_b").await >= n as i64 {
            break threads;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "the snapshot did not finish:\n{}", oplet.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed().as_secs_f64();
    let first_read = first_read.unwrap_or(0.0);
    let ours = Figures { docs: n, wall, mongo_cpu: cpu_tree(mongo_pid) - m0, pg_cpu: cpu_tree(pg_pid) - p0, own_cpu: cpu_tree(opid).max(own) };
    let done_line = wait_line(&oplet, "snapshot done: read ").await;
    let progress = http_get(&admin, "/metrics").lines().filter(|l| l.starts_with("oplet_snapshot_")).collect::<Vec<_>>().join("\n");
    drop(oplet);

    // Same rows: every row of A is in B with the same columns; B has N rows. The
    // `created` date is left out (pymongo writes {"$date": ISO text}, pg-sync ms).
    assert_eq!(count(&sql, "snap_b").await, n as i64);
    let differ: i64 = sql
        .query_one(
            "SELECT count(*) FROM snap_a a LEFT JOIN snap_b b USING (id) WHERE b.id IS NULL OR a.email IS DISTINCT FROM b.email \
             OR a.name IS DISTINCT FROM b.name OR (a.doc - '_id' - 'created') IS DISTINCT FROM (b.doc - '_id' - 'created')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(differ, 0, "rows of the baseline that Oplet wrote differently");
    let sample: String = sql.query_one("SELECT (doc - 'created')::text FROM snap_b ORDER BY id LIMIT 1", &[]).await.unwrap().get(0);

    // 4. Statement shapes for the executor.
    let shapes = statement_shapes(&pg, pg_pid).await;
    let load_after = load_average();

    println!("\n## Snapshot into PostgreSQL (issue 13) — nx-27017, PostgreSQL 15 (fsync on), {} cores\n", std::thread::available_parallelism().map_or(0, |p| p.get()));
    println!("{n} documents of ~{bson_size} bytes (BSON). Load average before / after: {load_before} / {load_after}.\n");
    println!("| copier | documents | wall | documents/s | CPU s: nx-27017 / copier / PostgreSQL | CPU share nx / copier / PG |");
    println!("|---|---|---|---|---|---|");
    for (name, f) in [("pymongo + psycopg, INSERT per row, commit per 1000", &base), ("oplet snapshot + pg-sync (process start to last row)", &ours)] {
        println!(
            "| {name} | {} | {:.1} s | {:.0} | {:.1} / {:.1} / {:.1} | {} |",
            f.docs,
            f.wall,
            f.rate(),
            f.mongo_cpu,
            f.own_cpu,
            f.pg_cpu,
            f.shares()
        );
    }
    println!("\nRatio (documents/s): **{:.1}x** the baseline.", ours.rate() / base.rate());
    let reading = wall - first_read;
    println!(
        "Without the host's start ({first_read:.2} s to its first snapshot log line, seen by polling every 100 ms): {n} documents in {reading:.2} s, {:.0} documents/s, **{:.1}x** the baseline.",
        n as f64 / reading,
        n as f64 / reading / base.rate()
    );
    println!(
        "Baseline's own account: {:.1} s of its {:.1} s waiting for documents from nx-27017.",
        summary["mongo_seconds"].as_f64().unwrap_or(0.0),
        summary["seconds"].as_f64().unwrap_or(0.0)
    );
    println!("Oplet's log: {}", done_line.trim());
    println!("oplet CPU by thread: {}", thread_list(&threads));
    println!("/metrics at the end:\n```\n{progress}\n```");
    println!("\nRows compared: every baseline row equal in oplet's table (email, name, doc but `_id` and `created`). A row of oplet's: {sample}");
    let rows = n.min(SHAPE_ROWS as u64);
    println!("\n### PostgreSQL statement shapes: {rows} rows of snap_b upserted again, one transaction per batch\n");
    println!("| shape | batch | wall | rows/s | PostgreSQL CPU s |");
    println!("|---|---|---|---|---|");
    for s in shapes {
        println!("| {} | {} | {:.2} s | {:.0} | {:.2} |", s.0, s.1, s.2, rows as f64 / s.2, s.3);
    }
}

/// How many rows the statement-shape comparison writes per shape and batch size.
const SHAPE_ROWS: usize = 100_000;

/// Writes the rows of `snap_b` into a fresh table with the executor's unnest upsert
/// and with COPY into a staging table + one upsert, batch by batch (one transaction
/// each), twice in alternating order. (shape, batch, seconds, PostgreSQL CPU seconds).
async fn statement_shapes(pg: &Postgres, pg_pid: u32) -> Vec<(&'static str, usize, f64, f64)> {
    let sql = pg.client().await;
    let rows: Vec<[Option<String>; 4]> = sql
        .query("SELECT id, email, name, doc::text FROM snap_b ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .take(SHAPE_ROWS)
        .map(|r| [r.get(0), r.get(1), r.get(2), r.get(3)])
        .collect();
    let mut client = pg.client().await;
    client.batch_execute("CREATE TABLE snap_c (id text PRIMARY KEY, email text, name text, doc jsonb)").await.unwrap();
    client.batch_execute("CREATE TEMP TABLE snap_stage (id text, email text, name text, doc text)").await.unwrap();
    const UPSERT: &str = "ON CONFLICT (\"id\") DO UPDATE SET \"email\" = EXCLUDED.\"email\", \"name\" = EXCLUDED.\"name\", \"doc\" = EXCLUDED.\"doc\"";
    let unnest = client
        .prepare(&format!(
            "INSERT INTO \"snap_c\" (\"doc\", \"email\", \"id\", \"name\") SELECT u.c0::jsonb, u.c1::text, u.c2::text, u.c3::text \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(c0, c1, c2, c3) {UPSERT}"
        ))
        .await
        .unwrap();
    let merge = format!("INSERT INTO snap_c (id, email, name, doc) SELECT id, email, name, doc::jsonb FROM snap_stage {UPSERT}");
    let mut out = Vec::new();
    for batch in [1000usize, 5000] {
        for round in 0..2 {
            let order: [bool; 2] = if round == 0 { [false, true] } else { [true, false] };
            for copy in order {
                client.batch_execute("TRUNCATE snap_c").await.unwrap();
                let p0 = cpu_tree(pg_pid);
                let started = Instant::now();
                for chunk in rows.chunks(batch) {
                    let tx = client.transaction().await.unwrap();
                    if copy {
                        let sink = tx.copy_in("COPY snap_stage (id, email, name, doc) FROM STDIN BINARY").await.unwrap();
                        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT]);
                        pin_mut!(writer);
                        for r in chunk {
                            writer.as_mut().write(&[&r[0], &r[1], &r[2], &r[3]]).await.unwrap();
                        }
                        writer.finish().await.unwrap();
                        tx.batch_execute(&merge).await.unwrap();
                        tx.batch_execute("TRUNCATE snap_stage").await.unwrap();
                    } else {
                        // The executor's column order: the values' keys, sorted.
                        let col = |i: usize| chunk.iter().map(|r| r[i].clone()).collect::<Vec<Option<String>>>();
                        let (doc, email, id, name) = (col(3), col(1), col(0), col(2));
                        tx.execute(&unnest, &[&doc, &email, &id, &name]).await.unwrap();
                    }
                    tx.commit().await.unwrap();
                }
                let took = started.elapsed().as_secs_f64();
                assert_eq!(count(&client, "snap_c").await, rows.len() as i64);
                let name = if copy { "COPY to staging + INSERT ... SELECT ON CONFLICT" } else { "INSERT ... SELECT FROM unnest ON CONFLICT (executor)" };
                out.push((name, batch, took, cpu_tree(pg_pid) - p0));
            }
        }
    }
    out
}

/// The bundled pg-sync, following `DB.users` into `snap_b`.
fn install_pg_sync(plugins: &Path, db: &str) {
    let manifest = std::fs::read_to_string(repo_root().join("plugins/pg-sync/pg-sync.toml")).unwrap();
    let manifest = manifest
        .replace("\"app.", &format!("\"{db}."))
        .replace("tables = [\"users\"]", "tables = [\"snap_b\"]")
        .replace("table = \"users\"", "table = \"snap_b\"");
    let wasm = oplet_tests::wasm_plugins().path("pg-sync");
    oplet_tests::install_plugin_from(plugins, "pg-sync", &wasm, &manifest);
}

async fn count(sql: &tokio_postgres::Client, table: &str) -> i64 {
    sql.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0)
}

async fn wait_line(oplet: &Oplet, text: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(l) = oplet.log_lines_containing(text).pop() {
            return l;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no {text:?} in the log:\n{}", oplet.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn port_of(uri: &str) -> u16 {
    uri.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).expect("a port in the URI")
}

/// The first process whose command line holds `args` in a row.
fn process_with_arg(args: &[&str]) -> Option<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let parts: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        parts.windows(args.len()).any(|w| w.iter().zip(args).all(|(a, b)| *a == b.as_bytes()))
    })
}

/// CPU seconds (user + system) of the children this process has waited for.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct given; zeroed is a valid rusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// (ppid, utime + stime, cutime + cstime) in seconds, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((n(1) as u32, (n(11) + n(12)) as f64 / hz, (n(13) + n(14)) as f64 / hz))
}

/// CPU seconds of `pid`, of its live children, and of the children it has reaped
/// (PostgreSQL's backends end with their connection; the postmaster reaps them).
fn cpu_tree(pid: u32) -> f64 {
    let Some((_, own, reaped)) = stat(pid) else { return 0.0 };
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|(ppid, _, _)| *ppid == pid)
        .map(|(_, own, reaped)| own + reaped)
        .sum();
    own + reaped + children
}

fn thread_list(threads: &BTreeMap<String, f64>) -> String {
    let mut d: Vec<(&String, &f64)> = threads.iter().filter(|(_, v)| **v > 0.0).collect();
    d.sort_by(|a, b| b.1.total_cmp(a.1));
    d.iter().map(|(k, v)| format!("{k} {:.2} s", *v)).collect::<Vec<_>>().join(", ")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// A plain HTTP/1.0 GET; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}
