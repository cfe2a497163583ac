//! The sinks measured against real servers started by the test fixtures, through
//! the host's own executors: rows/s into PostgreSQL batched (up to 1000 row
//! operations per transaction) vs one row per round trip (`batch_max = 1`), on a
//! server with the test fixtures' fsync off and on one with PostgreSQL's default
//! durability (fsync per commit); and Redis keys/s pipelined vs one round trip per
//! key. Each pair runs in the same process, alternating, three rounds; the medians
//! and their ratio are printed.
//! Run: `cargo bench -p oplet-benches --bench sinks`.

use oplet::checkpoint::Tracker;
use oplet::deadletter::DeadLetters;
use oplet::effect::postgres::{PostgresConfig, PostgresHandle, RowOp};
use oplet::effect::redis::{RedisConfig, RedisHandle};
use oplet_sdk::{Event, EventBody, Map, Value};
use oplet_tests::{Postgres, Redis};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const PG_BATCHED_ROWS: u64 = 40_000;
const PG_SINGLE_ROWS: u64 = 4_000;
const PG_DURABLE_SINGLE_ROWS: u64 = 1_000;
const REDIS_PIPELINED_KEYS: u64 = 200_000;
const REDIS_SINGLE_KEYS: u64 = 10_000;

/// Rates of one round, by measurement.
#[derive(Default)]
struct Rates {
    pg_batched: Vec<f64>,
    pg_single: Vec<f64>,
    durable_batched: Vec<f64>,
    durable_single: Vec<f64>,
    redis_pipelined: Vec<f64>,
    redis_single: Vec<f64>,
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let (pg, durable, redis) = (Postgres::start(), Postgres::start_durable(), Redis::start());
    let dir = oplet_tests::temp_dir();
    let dead = Arc::new(DeadLetters::open(&dir.path().join("dead-letters.jsonl")).unwrap());
    for server in [&pg, &durable] {
        rt.block_on(async {
            server
                .client()
                .await
                .batch_execute("CREATE TABLE bench_rows (id text PRIMARY KEY, n bigint, email text, doc jsonb)")
                .await
                .unwrap()
        });
    }

    let (mut next_id, mut next_durable_id) = (0u64, 0u64);
    let mut r = Rates::default();
    for round in 1..=ROUNDS {
        r.pg_batched.push(postgres_rate(&rt, &pg, &dead, 1000, 5, PG_BATCHED_ROWS, &mut next_id));
        r.pg_single.push(postgres_rate(&rt, &pg, &dead, 1, 0, PG_SINGLE_ROWS, &mut next_id));
        r.durable_batched.push(postgres_rate(&rt, &durable, &dead, 1000, 5, PG_BATCHED_ROWS, &mut next_durable_id));
        r.durable_single.push(postgres_rate(&rt, &durable, &dead, 1, 0, PG_DURABLE_SINGLE_ROWS, &mut next_durable_id));
        r.redis_pipelined.push(redis_rate(&rt, &redis, &dead, 1000, 2, REDIS_PIPELINED_KEYS));
        r.redis_single.push(redis_rate(&rt, &redis, &dead, 1, 0, REDIS_SINGLE_KEYS));
        let i = round - 1;
        println!(
            "round {round}: PostgreSQL (fsync off) {:.0} rows/s batched, {:.0} one at a time; \
             PostgreSQL (fsync on) {:.0} batched, {:.0} one at a time; Redis {:.0} keys/s pipelined, {:.0} one at a time",
            r.pg_batched[i], r.pg_single[i], r.durable_batched[i], r.durable_single[i], r.redis_pipelined[i], r.redis_single[i]
        );
    }
    assert_eq!(dead.count(), 0, "the benchmark dead-lettered something: see {}", dead.path().display());
    for (server, expected) in [(&pg, next_id), (&durable, next_durable_id)] {
        let rows: i64 = rt.block_on(async {
            server.client().await.query_one("SELECT count(*) FROM bench_rows", &[]).await.unwrap().get(0)
        });
        assert_eq!(rows as u64, expected, "every row arrived");
    }

    let report = |what: &str, unit: &str, fast: &[f64], slow: &[f64], fast_name: &str| {
        let (f, s) = (median(fast), median(slow));
        let ratio = f / s;
        println!(
            "{what}: {fast_name} {f:.0} {unit}/s, one at a time {s:.0} {unit}/s: {ratio:.1}x ({})",
            if ratio >= 10.0 { "target 10x met" } else { "BELOW the 10x target" }
        );
    };
    println!("--- medians of {ROUNDS} rounds ---");
    report("PostgreSQL upserts, fsync off (test fixture)", "rows", &r.pg_batched, &r.pg_single, "batched");
    report("PostgreSQL upserts, fsync on (PostgreSQL default)", "rows", &r.durable_batched, &r.durable_single, "batched");
    report("Redis deletes", "keys", &r.redis_pipelined, &r.redis_single, "pipelined");
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn event(seq: u64) -> Arc<oplet::envelope::Event> {
    Arc::new(oplet::envelope::Event::encode(&Event { seq, id: format!("bench:{seq}"), source: "bench".into(), time_ms: 0, body: EventBody::Other }).unwrap())
}

/// Submits `count` tickets' worth of work with `submit` and returns per second
/// once every ticket is released (the work is applied).
fn measure(count: u64, mut submit: impl FnMut(u64, oplet::checkpoint::Ticket)) -> f64 {
    let tracker = Tracker::new("bench", 1, None);
    let started = Instant::now();
    for seq in 1..=count {
        submit(seq, tracker.ticket(seq, None));
    }
    while tracker.completed() < count {
        std::thread::sleep(Duration::from_micros(200));
        assert!(started.elapsed() < Duration::from_secs(300), "the sink stopped making progress");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Rows per second through the PostgreSQL executor: `rows` upserts of new rows.
fn postgres_rate(
    rt: &tokio::runtime::Runtime,
    pg: &Postgres,
    dead: &Arc<DeadLetters>,
    batch_max: usize,
    batch_ms: u64,
    rows: u64,
    next_id: &mut u64,
) -> f64 {
    let mut cfg = PostgresConfig::new(&pg.url());
    (cfg.batch_max, cfg.batch_ms) = (batch_max, batch_ms);
    let handle = PostgresHandle::start(&cfg, dead.clone()).unwrap();
    let mut upsert = || {
        let n = *next_id;
        *next_id += 1;
        let mut values = Map::new();
        values.insert("id".into(), Value::String(format!("{n:012}")));
        values.insert("n".into(), Value::Int(n as i64));
        values.insert("email".into(), Value::String(format!("user{n}@example.com")));
        let mut doc = Map::new();
        doc.insert("_id".into(), Value::Map([("$oid".to_string(), Value::from(format!("{n:024x}")))].into()));
        doc.insert("profile".into(), Value::Map([("name".to_string(), Value::from("Ada"))].into()));
        values.insert("doc".into(), Value::Map(doc));
        RowOp::Upsert { table: "bench_rows".into(), key: vec!["id".into()], values }
    };
    // Warm up: connect, read the table, prepare the statement.
    measure(10, |seq, ticket| handle.apply("bench", &event(seq), upsert(), ticket));
    let rate = measure(rows, |seq, ticket| handle.apply("bench", &event(seq), upsert(), ticket));
    rt.block_on(handle.shutdown());
    rate
}

/// Keys per second through the Redis executor: `keys` cache deletes of one
/// existing key each.
fn redis_rate(
    rt: &tokio::runtime::Runtime,
    redis: &Redis,
    dead: &Arc<DeadLetters>,
    batch_max: usize,
    batch_ms: u64,
    keys: u64,
) -> f64 {
    rt.block_on(async {
        let mut conn = redis.connection().await;
        for chunk in (0..keys).collect::<Vec<_>>().chunks(10_000) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("SET").arg(format!("user:{k}")).arg("cached").ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
    });
    let mut cfg = RedisConfig::new(&redis.url());
    (cfg.batch_max, cfg.batch_ms) = (batch_max, batch_ms);
    let handle = RedisHandle::start(&cfg, dead.clone()).unwrap();
    measure(10, |seq, ticket| handle.delete("bench", &event(seq), vec![format!("warm:{seq}")], ticket));
    let rate = measure(keys, |seq, ticket| handle.delete("bench", &event(seq), vec![format!("user:{}", seq - 1)], ticket));
    rt.block_on(handle.shutdown());
    let left: i64 = rt.block_on(async {
        let mut conn = redis.connection().await;
        redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap()
    });
    assert_eq!(left, 0, "every key was deleted");
    rate
}
