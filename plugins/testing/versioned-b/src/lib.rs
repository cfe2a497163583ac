//! Test plugin `versioned-b`: version "b" of a plugin that tests hot-reload.
//!
//! Each event becomes an audit record `{"version": "b", "seq", "id"}`; swapping
//! this module for its sibling shows which version saw each event.

use oplet_sdk::{handler, Effect, Event, Result};

#[path = "../../versioned.rs"]
mod versioned;

pub const VERSION: &str = "b";

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    Ok(versioned::record(VERSION, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{EventBody, Value};

    #[test]
    fn the_record_names_version_b() {
        let e = Event { seq: 9, id: "9".into(), source: "s".into(), time_ms: 0, body: EventBody::Other };
        let Effect::Audit { record } = &handle(&e).unwrap()[0] else { panic!() };
        assert_eq!(record.get("version"), Some(&Value::from("b")));
        assert_eq!(record.get("seq"), Some(&Value::Int(9)));
    }
}
