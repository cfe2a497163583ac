//! Native tests of the handler, no wasm needed: `oplet_sdk::testing` builds events
//! and runs the plugin with its config through the host's encoding.

use oplet_sdk::testing::{change, events_from_jsonl, run_with, Harness};
use oplet_sdk::Effect;
use serde_json::json;
use {{crate}}::{{type}};

fn config() -> serde_json::Value {
    json!({"paid_status": "paid"})
}

#[test]
fn an_update_that_pays_an_order_is_logged_and_audited() {
    let event = change().update("app.orders").id(7).set(json!({"status": "paid", "total": 30}));
    let effects = run_with::<{{type}}>(config(), event).unwrap();
    assert_eq!(effects[0], Effect::log_info("order 7: update"));
    let Effect::Audit { record } = &effects[1] else { panic!("{effects:?}") };
    assert_eq!(record.get("order").and_then(|o| o.as_str()), Some("7"));
    assert_eq!(effects.len(), 2);
}

#[test]
fn another_change_is_only_logged() {
    let event = change().insert("app.orders").doc(json!({"_id": 8, "status": "pending"}));
    assert_eq!(run_with::<{{type}}>(config(), event).unwrap(), vec![Effect::log_info("order 8: insert")]);
}

#[test]
fn the_sample_events_give_one_audit_record() {
    let mut plugin = Harness::<{{type}}>::new(config()).unwrap();
    let audits = events_from_jsonl(include_str!("../events.jsonl"))
        .into_iter()
        .flat_map(|e| plugin.handle(e).unwrap())
        .filter(|e| matches!(e, Effect::Audit { .. }))
        .count();
    assert_eq!(audits, 1);
}

#[test]
fn a_config_typo_is_refused_naming_the_key() {
    let err = Harness::<{{type}}>::new(json!({"paid_status": "paid", "paid_statsu": "paid"})).err().unwrap();
    assert!(err.to_string().contains("paid_statsu"), "{err}");
}
