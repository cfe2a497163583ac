//! Test plugin `noop`: asks for nothing, whatever the event.
//!
//! The baseline for runtime tests and benchmarks: what a call costs when the
//! plugin does no work and returns an empty reply.

use oplet_sdk::{handler, Effect, Event, Result};

#[handler]
pub fn handle(_event: &Event) -> Result<Vec<Effect>> {
    Ok(vec![])
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::EventBody;

    #[test]
    fn asks_for_nothing() {
        let e = Event { seq: 1, id: "1".into(), source: "s".into(), time_ms: 0, body: EventBody::Other };
        assert_eq!(handle(&e).unwrap(), vec![]);
    }
}
