//! Test plugin `noop`: asks for nothing, whatever the event.
//!
//! The baseline for runtime tests and benchmarks: what a call costs when the
//! plugin does no work and returns an empty reply. It takes the lazy `EventView`,
//! so it pays only for reading the event's header.

use oplet_sdk::{handler, Effect, EventView, Result};

#[handler]
pub fn handle(_event: &EventView) -> Result<Vec<Effect>> {
    Ok(vec![])
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::{codec, Event, EventBody};

    #[test]
    fn asks_for_nothing() {
        let e = Event { seq: 1, id: "1".into(), source: "s".into(), time_ms: 0, body: EventBody::Other };
        let bytes = codec::encode(&e).unwrap();
        assert_eq!(handle(&EventView::parse(&bytes).unwrap()).unwrap(), vec![]);
    }
}
