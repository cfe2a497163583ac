//! `hello`: an example Oplet plugin that audits orders when they are paid.
//!
//! On every change to `app.orders` it asks the host for one effect: an audit
//! record when the order's `status` has just become "paid" (configurable), and a
//! log line otherwise. Built for `wasm32-unknown-unknown`, tested natively.

use oplet_sdk::{ChangeView, Effect, Error, EventView, LogLevel, Plugin, RawValue, Result};
use serde::{Deserialize, Serialize};

/// The manifest's `[config]` table, read by serde: a typo in a key or a value of
/// the wrong type refuses the plugin at load, naming the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The status that means "paid".
    pub paid_status: String,
}

impl Default for Config {
    fn default() -> Self {
        Config { paid_status: "paid".into() }
    }
}

/// The plugin's state. It lives as long as its instance: the host replaces the
/// instance after a trap and on every hot reload, calling `new` again, so keep
/// only what `new` can rebuild here: config, never data you cannot lose.
pub struct Hello {
    paid_status: String,
}

/// The audit record, borrowing from the event (no copy of the document).
#[derive(Serialize)]
struct Paid<'a> {
    order: String,
    /// Amounts often arrive as `{"$numberDecimal": "12.50"}`: kept as sent.
    total: Option<RawValue<'a>>,
    status: &'a str,
    at_ms: i64,
}

impl Plugin for Hello {
    type Config = Config;

    /// Called once per instance with the manifest's `[config]`. Returning an
    /// error makes the host refuse the plugin with this message: say what to fix.
    fn new(config: Config) -> Result<Self> {
        if config.paid_status.is_empty() {
            return Err(Error::new("config.paid_status must be a non-empty string"));
        }
        Ok(Hello { paid_status: config.paid_status })
    }

    /// Called for every event the manifest subscribes to, with a view that reads
    /// fields on demand. No I/O here: the plugin returns effects and the host
    /// carries them out, if the manifest may.
    fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
        // The manifest subscribes to changes only, but a plugin should still ignore
        // kinds it does not handle (a newer host may send new ones).
        let Some(change) = event.change() else { return Ok(vec![]) };
        // `_id` is usually an ObjectId, `{"$oid": "65a1..."}`: `to_key_string` gives its hex.
        let order = change.id().map(|id| id.to_key_string()).unwrap_or_else(|| "?".into());

        if became(change, &self.paid_status) {
            let record = Paid { order, total: change.field("total"), status: &self.paid_status, at_ms: event.time_ms() };
            // The host keys audit records by event id: a replayed event is not recorded twice.
            Ok(vec![Effect::audit(&record)?])
        } else {
            let status = change.field("status").map(|s| s.to_key_string()).unwrap_or_else(|| "unchanged".into());
            Ok(vec![Effect::log(LogLevel::Debug, format!("order {order}: {} (status {status})", change.op()))])
        }
    }
}

oplet_sdk::export_plugin!(Hello);

/// Whether this change is the one that set the order's status to `wanted`.
fn became(change: &ChangeView, wanted: &str) -> bool {
    let status = match change.op() {
        // A new or replaced order: its document says it all.
        "insert" | "replace" => change.full_document().and_then(|d| d.get_key("status")),
        // An update: only if the update itself set the status (an update of some
        // other field of an order paid long ago must not audit it again).
        "update" => change.updated_fields().and_then(|u| u.get("status")),
        _ => None,
    };
    status.and_then(|s| s.as_str()) == Some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{Change, Event, EventBody, OperationType, Value};

    fn order_update(set: &[(&str, Value)]) -> Event {
        let change = Change {
            op: OperationType::Update,
            db: "app".into(),
            coll: "orders".into(),
            key: Value::Map([("_id".to_string(), Value::Int(1))].into_iter().collect()),
            updated_fields: Some(set.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
            ..Default::default()
        };
        Event { seq: 1, id: "e1".into(), source: "mongo".into(), time_ms: 5, body: EventBody::Change(change) }
    }

    fn hello() -> Hello {
        Hello::from_config(&Value::Map(Default::default())).unwrap()
    }

    #[test]
    fn setting_the_status_to_paid_is_audited() {
        let effects = hello().handle_event(&order_update(&[("status", "paid".into()), ("total", Value::Int(30))])).unwrap();
        let [Effect::Audit { record }] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!(record.get("order"), Some(&Value::from("1")));
        assert_eq!(record.get("total"), Some(&Value::Int(30)));
    }

    #[test]
    fn anything_else_is_a_log_line() {
        let effects = hello().handle_event(&order_update(&[("note", "gift".into())])).unwrap();
        assert!(matches!(effects.as_slice(), [Effect::Log { level: LogLevel::Debug, .. }]), "{effects:?}");
    }

    #[test]
    fn a_bad_config_value_is_refused_with_the_key_name() {
        let config = Value::Map([("paid_status".to_string(), Value::Int(1))].into_iter().collect());
        assert!(Hello::from_config(&config).err().unwrap().to_string().starts_with("config.paid_status: invalid type"));
        let config = Value::Map([("paid_status".to_string(), Value::from(""))].into_iter().collect());
        assert!(Hello::from_config(&config).err().unwrap().to_string().contains("config.paid_status"));
    }
}
