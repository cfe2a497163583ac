//! Reachability probes behind `/readyz`: one per MongoDB source (a `ping`
//! through the official driver, so TLS and auth options in the URI apply) and
//! one per configured sink, connecting as the sink does (its URL, password file
//! and TLS settings): `SELECT 1` on PostgreSQL, `PING` on Redis. Probes run
//! concurrently, each bounded by `[admin] probe_timeout_ms`.

use crate::config::{Config, SourceConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

pub struct ProbeResult {
    /// `source:NAME`, `sink:postgres`, `sink:redis`.
    pub part: String,
    /// Where it looked (passwords left out).
    pub target: String,
    /// Why it is not reachable; `None` when it is.
    pub error: Option<String>,
}

enum Kind {
    Mongo { uri: String, client: OnceCell<Result<mongodb::Client, String>> },
    Postgres(crate::effect::postgres::PostgresConfig),
    Redis(crate::effect::redis::RedisConfig),
}

struct Probe {
    part: String,
    target: String,
    kind: Kind,
}

pub struct Probes {
    probes: Vec<Arc<Probe>>,
    timeout: Duration,
}

impl Probes {
    pub fn new(config: &Config, timeout: Duration) -> Probes {
        let mut probes = Vec::new();
        for sc in &config.sources {
            if let SourceConfig::Mongo(m) = sc {
                probes.push(Probe { part: format!("source:{}", m.name), target: redact(&m.uri), kind: Kind::Mongo { uri: m.uri.clone(), client: OnceCell::new() } });
            }
        }
        if let Some(pg) = &config.postgres {
            let addr = postgres_addr(&pg.url);
            probes.push(Probe { part: "sink:postgres".into(), target: addr, kind: Kind::Postgres(pg.clone()) });
        }
        if let Some(r) = &config.redis {
            let addr = redis_addr(&r.url);
            probes.push(Probe { part: "sink:redis".into(), target: addr, kind: Kind::Redis(r.clone()) });
        }
        Probes { probes: probes.into_iter().map(Arc::new).collect(), timeout }
    }

    pub async fn run(&self) -> Vec<ProbeResult> {
        let timeout = self.timeout;
        let tasks: Vec<_> = self
            .probes
            .iter()
            .cloned()
            .map(|p| {
                tokio::spawn(async move {
                    let error = match tokio::time::timeout(timeout, p.check(timeout)).await {
                        Ok(r) => r.err(),
                        Err(_) => Some(format!("no answer within {} ms ([admin] probe_timeout_ms)", timeout.as_millis())),
                    };
                    ProbeResult { part: p.part.clone(), target: p.target.clone(), error }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    }
}

impl Probe {
    async fn check(&self, timeout: Duration) -> Result<(), String> {
        match &self.kind {
            Kind::Postgres(cfg) => crate::effect::postgres::probe(cfg).await.map_err(|e| format!("{e} (PostgreSQL at {})", self.target)),
            Kind::Redis(cfg) => crate::effect::redis::probe(cfg).await,
            Kind::Mongo { uri, client } => {
                let client = client
                    .get_or_init(|| async {
                        let mut options = mongodb::options::ClientOptions::parse(uri.as_str()).await.map_err(|e| format!("cannot use the uri: {e}"))?;
                        options.server_selection_timeout = Some(timeout);
                        options.connect_timeout = Some(timeout);
                        options.app_name = Some("oplet-readyz".into());
                        mongodb::Client::with_options(options).map_err(|e| e.to_string())
                    })
                    .await
                    .clone()?;
                client
                    .database("admin")
                    .run_command(mongodb::bson::doc! {"ping": 1})
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("MongoDB does not answer a ping: {}", first_line(&e.to_string())))
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// `host:port` of a PostgreSQL URL or key=value string (default 127.0.0.1:5432).
pub fn postgres_addr(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
        let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        let hostport = rest.split(['/', '?']).next().unwrap_or("");
        let hostport = hostport.split(',').next().unwrap_or("");
        return with_port(hostport, 5432);
    }
    let mut host = "127.0.0.1".to_string();
    let mut port = "5432".to_string();
    for kv in url.split_whitespace() {
        match kv.split_once('=') {
            Some(("host", h)) => host = h.split(',').next().unwrap_or(h).to_string(),
            Some(("hostaddr", h)) => host = h.to_string(),
            Some(("port", p)) => port = p.split(',').next().unwrap_or(p).to_string(),
            _ => {}
        }
    }
    format!("{host}:{port}")
}

/// `host:port` of a `redis://` URL (default port 6379).
pub fn redis_addr(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    with_port(rest.split(['/', '?']).next().unwrap_or(""), 6379)
}

fn with_port(hostport: &str, default: u16) -> String {
    let hostport = if hostport.is_empty() { "127.0.0.1" } else { hostport };
    // `[::1]:5432`, `host:5432`, or a host alone.
    if hostport.ends_with(']') || !hostport.contains(':') {
        format!("{hostport}:{default}")
    } else {
        hostport.to_string()
    }
}

/// A URI without its password.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &uri[..scheme + 3], &uri[at..]),
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_each_url_shape() {
        assert_eq!(postgres_addr("host=127.0.0.1 port=5544 user=postgres dbname=app"), "127.0.0.1:5544");
        assert_eq!(postgres_addr("postgres://u:p@db.example:6000/app?sslmode=require"), "db.example:6000");
        assert_eq!(postgres_addr("postgresql://db/app"), "db:5432");
        assert_eq!(redis_addr("redis://127.0.0.1:7000/0"), "127.0.0.1:7000");
        assert_eq!(redis_addr("redis://:secret@cache/"), "cache:6379");
        assert_eq!(redact("mongodb://u:pw@h:1/"), "mongodb://***@h:1/");
    }
}
