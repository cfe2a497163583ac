//! Plugin manifests: `NAME.toml` beside `NAME.wasm`.
//!
//! A manifest names the plugin, says which events it subscribes to, which
//! capabilities it asks for, its limits and its config. Unknown keys are errors
//! (a typo must not silently widen or narrow a subscription).

use crate::envelope::{Event, Kind};
use oplet_sdk::Value;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// What the plugin receives; an empty list receives nothing.
    #[serde(default)]
    pub subscribe: Vec<Subscription>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub limits: LimitsRequest,
    /// Passed to the plugin's `oplet_init` as a map.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_version() -> String {
    "0.0.0".into()
}

/// One subscription: every listed criterion must match (an omitted one matches all).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// `change` (database changes) or `socket` (client events).
    #[serde(default)]
    pub kind: SubscriptionKind,
    /// Source names from the host config; omitted = every source.
    #[serde(default)]
    pub sources: Vec<String>,
    /// `db.coll`, `db.*` or `*`; omitted = every namespace. Changes only.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Operation types (`insert`, `update`, `replace`, `delete`, ...); omitted = all.
    #[serde(default)]
    pub operations: Vec<String>,
    /// Socket.IO event names; omitted = all. Socket events only.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionKind {
    #[default]
    Change,
    Socket,
}

/// What a plugin asks to be allowed to do. The host config decides what it gets.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Cache key prefixes it may delete (`user:`); `""` would mean every key.
    #[serde(default)]
    pub cache_prefixes: Vec<String>,
    /// PostgreSQL tables it may upsert into and delete from.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Whether it may append audit records.
    #[serde(default)]
    pub audit: bool,
    /// Socket.IO event names it may emit.
    #[serde(default)]
    pub emit: Vec<String>,
}

/// Per-call limits a plugin asks for; the host range-checks them and clamps them
/// to its ceilings (`runtime::Limits::resolve`). Omitted: the documented default.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Time budget of one call (and of instantiation, the version probe and init).
    pub time_ms: Option<u64>,
    /// One budget for the instance: linear memory and tables together.
    pub memory_mb: Option<u64>,
    /// Largest reply one call may return.
    pub reply_kb: Option<u64>,
    /// Most effects one call may return; more fails the event.
    pub effects: Option<u64>,
    /// Log bytes per second through `oplet.log`; the excess is dropped and counted.
    pub log_kb_per_s: Option<u64>,
}

impl Manifest {
    pub fn from_toml(text: &str, path: &Path) -> anyhow::Result<Manifest> {
        let m: Manifest = toml::from_str(text).map_err(|e| {
            // The message alone does not name the key: say where it is.
            let at = e.span().map(|s| format!(" (line {})", text[..s.start.min(text.len())].lines().count().max(1))).unwrap_or_default();
            let key = e.span().map(|s| {
                let before = &text[..s.start.min(text.len())];
                before[before.rfind('\n').map_or(0, |i| i + 1)..].trim().to_string()
            });
            let key = key.filter(|l| !l.is_empty());
            let key = key.map(|k| format!(" at `{}`", k.trim_end_matches('=').trim())).unwrap_or_default();
            anyhow::anyhow!("manifest {} is invalid{at}{key}: {}", path.display(), e.message().trim())
        })?;
        m.validate().map_err(|e| anyhow::anyhow!("manifest {}: {e}", path.display()))?;
        Ok(m)
    }

    pub fn read(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read manifest {}: {e} (every NAME.wasm needs a NAME.toml beside it)",
                path.display()
            )
        })?;
        Manifest::from_toml(&text, path)
    }

    fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        for (key, value) in [
            ("time_ms", l.time_ms),
            ("memory_mb", l.memory_mb),
            ("reply_kb", l.reply_kb),
            ("effects", l.effects),
            ("log_kb_per_s", l.log_kb_per_s),
        ] {
            if let Some(v) = value {
                crate::runtime::limits::check_range(key, v).map_err(|e| format!("[limits] {e}"))?;
            }
        }
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("name {:?} must be letters, digits, '-' or '_'", self.name));
        }
        for s in &self.subscribe {
            for ns in &s.namespaces {
                if ns != "*" && !ns.contains('.') {
                    return Err(format!("namespace {ns:?} must be \"db.coll\", \"db.*\" or \"*\""));
                }
            }
            if s.kind == SubscriptionKind::Socket && (!s.namespaces.is_empty() || !s.operations.is_empty()) {
                return Err("a socket subscription takes `events`, not `namespaces` or `operations`".into());
            }
            if s.kind == SubscriptionKind::Change && !s.events.is_empty() {
                return Err("a change subscription takes `namespaces` and `operations`, not `events` (use kind = \"socket\")".into());
            }
        }
        Ok(())
    }

    /// The `[config]` table as the `Value` map the plugin's init receives.
    pub fn config_value(&self) -> Value {
        toml_to_value(&toml::Value::Table(self.config.clone()))
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.subscribe.iter().any(|s| s.matches(event))
    }
}

impl Subscription {
    pub fn matches(&self, event: &Event) -> bool {
        if !self.sources.is_empty() && !self.sources.iter().any(|s| **s == *event.source) {
            return false;
        }
        // The header only: the event's bytes are never read to route it.
        match (&event.kind, self.kind) {
            (Kind::Change { op, db, coll }, SubscriptionKind::Change) => {
                let ns_ok = self.namespaces.is_empty() || self.namespaces.iter().any(|pat| ns_matches(pat, db, coll));
                let op_ok = self.operations.is_empty() || self.operations.iter().any(|o| o == op.as_str());
                ns_ok && op_ok
            }
            (Kind::Socket { event: name }, SubscriptionKind::Socket) => self.events.is_empty() || self.events.iter().any(|e| e == name),
            _ => false,
        }
    }
}

/// `oplet_sdk::namespace_matches` without searching the pattern for its dot, for
/// the router's per-event filter: a pattern is `*`, or `db.` then `*` or the
/// collection (database names have no dot, so the first dot follows `db`).
fn ns_matches(pattern: &str, db: &str, coll: &str) -> bool {
    let p = pattern.as_bytes();
    if p == b"*" {
        return true;
    }
    p.len() > db.len() && p[db.len()] == b'.' && p[..db.len()] == *db.as_bytes() && {
        let rest = &p[db.len() + 1..];
        rest == b"*" || rest == coll.as_bytes()
    }
}

pub fn toml_to_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_value).collect()),
        toml::Value::Table(t) => Value::Map(t.iter().map(|(k, v)| (k.clone(), toml_to_value(v))).collect()),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_routers_namespace_filter_agrees_with_the_sdks() {
        let patterns = ["*", "app.*", "app.items", "app.items.v2", "app", "ap.*", "app.item", "other.items", "app.", ".*"];
        let names = [("app", "items"), ("app", "items.v2"), ("app", "other"), ("ap", "p.items"), ("apx", "items"), ("", "*")];
        for p in patterns {
            for (db, coll) in names {
                assert_eq!(ns_matches(p, db, coll), oplet_sdk::namespace_matches(p, db, coll), "{p} vs {db}.{coll}");
            }
        }
    }
    use super::*;
    use oplet_sdk::{Change, EventBody, OperationType};

    fn change(db: &str, coll: &str, op: OperationType) -> Event {
        Event::encode(&oplet_sdk::Event {
            seq: 1,
            id: "1".into(),
            source: "mongo".into(),
            time_ms: 0,
            body: EventBody::Change(Change { op, db: db.into(), coll: coll.into(), ..Default::default() }),
        })
        .unwrap()
    }

    #[test]
    fn a_subscription_matches_namespace_patterns_and_operations() {
        let m = Manifest::from_toml(
            r#"
            name = "x"
            [[subscribe]]
            namespaces = ["app.*"]
            operations = ["update"]
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(m.matches(&change("app", "users", OperationType::Update)));
        assert!(!m.matches(&change("app", "users", OperationType::Insert)));
        assert!(!m.matches(&change("other", "users", OperationType::Update)));
    }

    #[test]
    fn a_typo_in_a_manifest_is_an_error_naming_the_key() {
        let err = Manifest::from_toml("name = \"x\"\n[[subscribe]]\nnamespace = [\"a.b\"]\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `namespace`"), "{err}");
    }

    #[test]
    fn out_of_range_limits_are_refused_with_the_key_and_range() {
        let err = Manifest::from_toml("name = \"x\"\n[limits]\nreply_kb = 0\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("[limits] reply_kb = 0 is out of range: it must be 1 to"), "{err}");
        let err = Manifest::from_toml("name = \"x\"\n[limits]\nmemory_mb = 17592186044416\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("memory_mb = 17592186044416 is out of range"), "{err}");
        let err = Manifest::from_toml("name = \"x\"\n[limits]\ntime_ms = -1\n", Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("time_ms"), "{err}");
    }

    #[test]
    fn a_socket_subscription_ignores_changes() {
        let m = Manifest::from_toml("name = \"x\"\n[[subscribe]]\nkind = \"socket\"\n", Path::new("x.toml")).unwrap();
        assert!(!m.matches(&change("app", "users", OperationType::Insert)));
    }
}
