//! `hello`: an example Oplet plugin that audits orders when they are paid.
//!
//! On every change to `app.orders` it asks the host for one effect: an audit
//! record when the order's `status` has just become "paid" (configurable), and a
//! log line otherwise. Built for `wasm32-unknown-unknown`, tested natively.

use oplet_sdk::{handler, init, Change, Effect, Error, Event, EventBody, LogLevel, Map, OperationType, Result, Value};
use std::cell::RefCell;

// A plugin's memory lives as long as its instance. The host replaces the instance
// after a trap and on every hot reload, calling `init` again on the new one, so
// keep only what `init` can rebuild here: config, never data you cannot lose.
thread_local! {
    static PAID_STATUS: RefCell<String> = RefCell::new(DEFAULT_STATUS.to_string());
}

const DEFAULT_STATUS: &str = "paid";

/// Called once per instance with the manifest's `[config]` table. Returning an
/// error makes the host refuse the plugin with this message, so say what to fix.
#[init]
fn configure(config: &Value) -> Result<()> {
    let status = match config.get("paid_status") {
        None => DEFAULT_STATUS,
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(other) => {
            return Err(Error::new(format!("config.paid_status must be a non-empty string, not {}", other.to_json())))
        }
    };
    PAID_STATUS.with(|s| *s.borrow_mut() = status.to_string());
    Ok(())
}

/// Called for every event the manifest subscribes to. No I/O here: the plugin
/// returns effects and the host carries them out, if the manifest may.
#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    // The manifest subscribes to changes only, but a plugin should still ignore
    // kinds it does not handle (a newer host may send new ones).
    let EventBody::Change(change) = &event.body else {
        return Ok(vec![]);
    };
    let paid_status = PAID_STATUS.with(|s| s.borrow().clone());
    // `_id` is usually an ObjectId, `{"$oid": "65a1..."}`: `to_key_string` gives its hex.
    let order = change.id().map(Value::to_key_string).unwrap_or_else(|| "?".into());

    if became(change, &paid_status) {
        let mut record = Map::new();
        record.insert("order".into(), order.into());
        // Amounts often arrive as `{"$numberDecimal": "12.50"}`: keep them as sent.
        record.insert("total".into(), change.field("total").cloned().unwrap_or_default());
        record.insert("status".into(), paid_status.into());
        record.insert("at_ms".into(), event.time_ms.into());
        // The host keys audit records by event id: a replayed event is not recorded twice.
        Ok(vec![Effect::Audit { record: Value::Map(record) }])
    } else {
        let status = change.field("status").map(Value::to_key_string).unwrap_or_else(|| "unchanged".into());
        Ok(vec![Effect::Log {
            level: LogLevel::Debug,
            message: format!("order {order}: {} (status {status})", change.op),
        }])
    }
}

/// Whether this change is the one that set the order's status to `wanted`.
fn became(change: &Change, wanted: &str) -> bool {
    let status = match change.op {
        // A new or replaced order: its document says it all.
        OperationType::Insert | OperationType::Replace => change.full_document.as_ref().and_then(|d| d.get("status")),
        // An update: only if the update itself set the status (an update of some
        // other field of an order paid long ago must not audit it again).
        OperationType::Update => change.updated_fields.as_ref().and_then(|u| u.get("status")),
        _ => None,
    };
    status.and_then(Value::as_str) == Some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn setting_the_status_to_paid_is_audited() {
        let effects = handle(&order_update(&[("status", "paid".into()), ("total", Value::Int(30))])).unwrap();
        let [Effect::Audit { record }] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!(record.get("order"), Some(&Value::from("1")));
        assert_eq!(record.get("total"), Some(&Value::Int(30)));
    }

    #[test]
    fn anything_else_is_a_log_line() {
        let effects = handle(&order_update(&[("note", "gift".into())])).unwrap();
        assert!(matches!(effects.as_slice(), [Effect::Log { level: LogLevel::Debug, .. }]), "{effects:?}");
    }

    #[test]
    fn a_bad_config_value_is_refused_with_the_key_name() {
        let config = Value::Map([("paid_status".to_string(), Value::Int(1))].into_iter().collect());
        assert!(configure(&config).unwrap_err().to_string().contains("config.paid_status"));
    }
}
