//! Test plugin `socket-echo`: answers each client event with an emit.
//!
//! A client event `E` with payload `P` from client `C` is answered with `echo`
//! `{"client": C, "event": E, "payload": P}`: to `C` itself, or to
//! `P.to_client` / the named room `P.to_room` when the payload names one. Lets
//! end-to-end tests check that client events reach plugins and emits reach the
//! right client, and only it.

use oplet_sdk::{handler, EmitTarget, Effect, Event, EventBody, Map, Result, Value};

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    let EventBody::Socket(s) = &event.body else { return Ok(vec![]) };
    let to = match (s.payload.get("to_client").and_then(Value::as_str), s.payload.get("to_room").and_then(Value::as_str)) {
        (Some(c), _) => EmitTarget::Client(c.to_string()),
        (None, Some(r)) => EmitTarget::Room(r.to_string()),
        (None, None) => EmitTarget::Client(s.client.clone()),
    };
    let mut answer = Map::new();
    answer.insert("client".into(), s.client.clone().into());
    answer.insert("event".into(), s.event.clone().into());
    answer.insert("payload".into(), s.payload.clone());
    Ok(vec![Effect::Emit { to, event: "echo".into(), payload: Value::Map(answer) }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::SocketEvent;

    fn ev(payload: Value) -> Event {
        let s = SocketEvent { client: "c1".into(), event: "ping".into(), payload };
        Event { seq: 1, id: "1".into(), source: "socket".into(), time_ms: 0, body: EventBody::Socket(s) }
    }

    #[test]
    fn answers_the_sender_unless_the_payload_names_a_target() {
        let effects = handle(&ev(Value::Int(5))).unwrap();
        let [Effect::Emit { to, event, payload }] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!((to, event.as_str()), (&EmitTarget::Client("c1".into()), "echo"));
        assert_eq!(payload.get("payload"), Some(&Value::Int(5)));
        let p = Value::Map([("to_room".to_string(), Value::from("ops"))].into_iter().collect());
        let effects = handle(&ev(p)).unwrap();
        let [Effect::Emit { to, .. }] = effects.as_slice() else { panic!("{effects:?}") };
        assert_eq!(to, &EmitTarget::Room("ops".into()));
    }
}
