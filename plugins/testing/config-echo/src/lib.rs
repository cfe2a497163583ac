//! Test plugin `config-echo`: returns the config its init received.
//!
//! Each event becomes an audit record `{"config": <config>, "seq"}`, so tests can
//! check how a manifest's `[config]` table reaches a plugin (and that init runs
//! again on a fresh instance). `fail_init = true` makes init refuse.

use oplet_sdk::{handler, init, Effect, Error, Event, Map, Result, Value};
use std::cell::RefCell;

thread_local! {
    /// The config of this instance; null until init has run.
    static CONFIG: RefCell<Value> = const { RefCell::new(Value::Null) };
}

#[init]
pub fn setup(config: &Value) -> Result<()> {
    if config.get("fail_init") == Some(&Value::Bool(true)) {
        return Err(Error::new("init refused: fail_init is set"));
    }
    CONFIG.with(|c| *c.borrow_mut() = config.clone());
    Ok(())
}

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    let mut record = Map::new();
    record.insert("config".into(), CONFIG.with(|c| c.borrow().clone()));
    record.insert("seq".into(), Value::Int(event.seq as i64));
    Ok(vec![Effect::Audit { record: Value::Map(record) }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::EventBody;

    fn config(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn the_config_init_received_comes_back_with_each_event() {
        let c = config(&[("greeting", "hi".into()), ("n", Value::Int(3))]);
        setup(&c).unwrap();
        let e = Event { seq: 5, id: "5".into(), source: "s".into(), time_ms: 0, body: EventBody::Other };
        let Effect::Audit { record } = &handle(&e).unwrap()[0] else { panic!() };
        assert_eq!(record.get("config"), Some(&c));
        assert_eq!(record.get("seq"), Some(&Value::Int(5)));
    }

    #[test]
    fn fail_init_makes_init_refuse() {
        let err = setup(&config(&[("fail_init", true.into())])).unwrap_err();
        assert_eq!(err.to_string(), "init refused: fail_init is set");
    }
}
