//! `oplet cluster status --config F`: who holds what, read from MongoDB.
//!
//! Reads the heartbeat and lease documents of `[cluster] collection` and each
//! stream's checkpoint document, in the deployment each MongoDB source keeps its
//! checkpoints in, and prints hosts, the streams each owns, lease ages and how long
//! ago each stream's checkpoint last moved (its lag), as a table or as JSON.

use super::lease::{host_id, lease_id, now_ms, read_hosts, Lease};
use crate::config::{Config, SourceConfig};
use anyhow::Context;
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Everything `cluster status` shows, as JSON.
pub async fn gather(config: &Config) -> anyhow::Result<Value> {
    let now = now_ms();
    let (lease_db, lease_coll) = config.cluster.collection.split_once('.').context("config key cluster.collection: write \"database.collection\"")?;
    let mut hosts: BTreeMap<String, Value> = BTreeMap::new();
    let mut streams = Vec::new();
    for source in &config.sources {
        let SourceConfig::Mongo(m) = source else { continue };
        let uri = m.checkpoint.uri.clone().unwrap_or_else(|| m.uri.clone());
        let mut options = mongodb::options::ClientOptions::parse(&uri).await.with_context(|| format!("source {:?}: cannot use its checkpoint uri", m.name))?;
        options.server_selection_timeout.get_or_insert(Duration::from_millis(m.server_selection_timeout_ms));
        options.app_name.get_or_insert_with(|| "oplet cluster status".into());
        let client = mongodb::Client::with_options(options)?;
        let leases = client.database(lease_db).collection::<Document>(lease_coll);
        let unreachable = |e: mongodb::error::Error| {
            crate::exit::fatal(crate::exit::Cause::MongoConnection, format!("source {:?}: cannot read {}: {e}", m.name, leases.namespace()))
        };
        for h in read_hosts(&leases).await.map_err(unreachable)? {
            let live = h.expires_ms >= now;
            hosts.entry(h.name.clone()).or_insert_with(|| {
                json!({ "name": h.name, "id": host_id(&h.name), "live": live, "pid": h.pid, "heartbeat_age_ms": now - h.beat_ms, "up_ms": now - h.started_ms, "streams": [] })
            });
        }
        let (ck_db, ck_coll) = m.checkpoint.collection.split_once('.').context("checkpoint.collection")?;
        let checkpoints = client.database(ck_db).collection::<Document>(ck_coll);
        let targets = m.targets().with_context(|| format!("source {:?}", m.name))?;
        for key in targets.iter().map(|t| t.key(&m.name)) {
            let lease = leases.find_one(doc! { "_id": lease_id(&key) }).await.map_err(unreachable)?;
            let lease = lease.as_ref().and_then(|d| Lease::from_doc(d));
            let ck = checkpoints.find_one(doc! { "_id": &key }).await.map_err(unreachable)?;
            let checkpoint = ck.map(|d| {
                let saved_ms = d.get_i64("saved_ms").ok().or_else(|| d.get_datetime("saved_at").ok().map(|t| t.timestamp_millis()));
                let saved = saved_ms.map(|t| now - t);
                let seq = d.get_document("position").ok().and_then(|p| p.get_i64("seq").ok().or_else(|| p.get_i32("seq").ok().map(i64::from)));
                let epoch = d.get_i64("epoch").ok().or_else(|| d.get_i32("epoch").ok().map(i64::from));
                json!({ "saved_ago_ms": saved, "seq": seq, "epoch": epoch, "owner": d.get_str("owner").ok() })
            });
            let owner = lease.as_ref().filter(|l| l.live(now)).and_then(|l| l.owner.clone());
            if let Some(o) = &owner {
                let entry = hosts.entry(o.clone()).or_insert_with(|| json!({ "name": o, "live": false, "streams": [] }));
                entry["streams"].as_array_mut().expect("streams array").push(json!(key));
            }
            streams.push(stream_json(&m.name, &key, lease.as_ref(), owner, checkpoint, now));
        }
    }
    Ok(json!({ "now_ms": now, "collection": config.cluster.collection, "mode": format!("{:?}", config.cluster.mode).to_lowercase(), "hosts": hosts.into_values().collect::<Vec<_>>(), "streams": streams }))
}

fn stream_json(source: &str, key: &str, lease: Option<&Lease>, owner: Option<String>, checkpoint: Option<Value>, now: i64) -> Value {
    json!({
        "source": source,
        "stream": key,
        "owner": owner,
        "epoch": lease.map(|l| l.epoch),
        "lease_age_ms": lease.filter(|l| l.live(now)).map(|l| now - l.acquired_ms),
        "renewed_ago_ms": lease.filter(|l| l.live(now)).map(|l| now - l.renewed_ms),
        "expires_in_ms": lease.filter(|l| l.live(now)).map(|l| l.expires_ms - now),
        "checkpoint": checkpoint,
    })
}

/// The table a person reads.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let secs = |v: &Value| v.as_i64().map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into());
    out.push_str(&format!("leases in {} (mode {})\n\nHOSTS\n", status["collection"].as_str().unwrap_or("?"), status["mode"].as_str().unwrap_or("?")));
    let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
    if hosts.is_empty() {
        out.push_str("  (no host has ever joined)\n");
    }
    for h in &hosts {
        let streams: Vec<&str> = h["streams"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        out.push_str(&format!(
            "  {:<28} {:<5} heartbeat {:>7} ago  {} stream(s): {}\n",
            h["name"].as_str().unwrap_or("?"),
            if h["live"].as_bool() == Some(true) { "live" } else { "gone" },
            secs(&h["heartbeat_age_ms"]),
            streams.len(),
            streams.join(", ")
        ));
    }
    out.push_str("\nSTREAMS\n");
    out.push_str(&format!("  {:<36} {:<28} {:>6} {:>10} {:>10} {:>14} {:>8}\n", "stream", "owner", "epoch", "lease age", "renewed", "checkpoint lag", "seq"));
    for s in status["streams"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  {:<36} {:<28} {:>6} {:>10} {:>10} {:>14} {:>8}\n",
            s["stream"].as_str().unwrap_or("?"),
            s["owner"].as_str().unwrap_or("(none)"),
            s["epoch"].as_i64().map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            secs(&s["lease_age_ms"]),
            secs(&s["renewed_ago_ms"]),
            secs(&s["checkpoint"]["saved_ago_ms"]),
            s["checkpoint"]["seq"].as_i64().map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_hosts_streams_and_missing_values() {
        let status = json!({
            "collection": "oplet.leases", "mode": "leases",
            "hosts": [{ "name": "h1", "live": true, "heartbeat_age_ms": 200, "streams": ["m.a.b"] }],
            "streams": [
                { "stream": "m.a.b", "owner": "h1", "epoch": 3, "lease_age_ms": 5000, "renewed_ago_ms": 100, "checkpoint": { "saved_ago_ms": 40, "seq": 17 } },
                { "stream": "m.a.c", "owner": null, "epoch": null, "checkpoint": null },
            ],
        });
        let text = render(&status);
        assert!(text.contains("h1") && text.contains("live") && text.contains("1 stream(s): m.a.b"), "{text}");
        assert!(text.contains("m.a.c") && text.contains("(none)"), "{text}");
        assert!(text.contains("5.0s") && text.contains("17"), "{text}");
    }
}
