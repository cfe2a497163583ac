//! Test plugin `faulty`: an echo plugin that misbehaves on request.
//!
//! When the change's full document (or the socket payload) has a string field
//! `fault`, it panics, traps, loops forever, eats memory without bound, or refuses
//! the event, so the tests can check that the host contains each failure.

use oplet_sdk::{handler, Effect, Error, Event, EventBody, Map, Result, Value};

/// What the event asks this plugin to do wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Panic,
    Unreachable,
    Loop,
    MemBomb,
    Error,
}

impl Fault {
    pub fn of(event: &Event) -> Option<Fault> {
        match document(event).get("fault")?.as_str()? {
            "panic" => Some(Fault::Panic),
            "unreachable" => Some(Fault::Unreachable),
            "loop" => Some(Fault::Loop),
            "membomb" => Some(Fault::MemBomb),
            "error" => Some(Fault::Error),
            _ => None,
        }
    }
}

#[handler]
pub fn handle(event: &Event) -> Result<Vec<Effect>> {
    match Fault::of(event) {
        None => Ok(echo(event)),
        Some(Fault::Panic) => panic!("asked to panic"),
        Some(Fault::Unreachable) => trap(),
        Some(Fault::Loop) => spin(),
        Some(Fault::MemBomb) => hoard(),
        Some(Fault::Error) => Err(Error::new("refused on purpose")),
    }
}

/// Exactly what the `echo` test plugin returns.
fn echo(event: &Event) -> Vec<Effect> {
    let mut record = Map::new();
    record.insert("plugin".into(), "echo".into());
    record.insert("seq".into(), Value::Int(event.seq as i64));
    record.insert("id".into(), event.id.clone().into());
    record.insert("doc".into(), document(event));
    vec![Effect::Audit { record: Value::Map(record) }]
}

fn document(event: &Event) -> Value {
    match &event.body {
        EventBody::Change(c) => c.full_document.clone().unwrap_or_default(),
        EventBody::Socket(s) => s.payload.clone(),
        _ => Value::Null,
    }
}

/// A bare `unreachable` instruction: a trap with no log line before it.
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Runs until the host's time budget stops it; the volatile read keeps the
/// optimizer from proving the loop empty.
fn spin() -> ! {
    let turns = 0u64;
    loop {
        // SAFETY: reads a live local.
        let t = unsafe { std::ptr::read_volatile(&turns) };
        std::hint::black_box(t);
    }
}

/// Allocates and touches 1 MiB after 1 MiB, keeping all of it, until the host's
/// memory ceiling refuses to grow linear memory and the allocator aborts.
fn hoard() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        kept.push(block);
        std::hint::black_box(&mut kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oplet_sdk::Change;

    fn with_doc(doc: Value) -> Event {
        let change = Change { db: "app".into(), coll: "c".into(), full_document: Some(doc), ..Default::default() };
        Event { seq: 1, id: "1".into(), source: "mongo".into(), time_ms: 0, body: EventBody::Change(change) }
    }

    fn fault(name: &str) -> Event {
        with_doc(Value::Map([("fault".to_string(), Value::from(name))].into_iter().collect()))
    }

    #[test]
    fn each_fault_is_read_from_the_document() {
        assert_eq!(Fault::of(&fault("panic")), Some(Fault::Panic));
        assert_eq!(Fault::of(&fault("unreachable")), Some(Fault::Unreachable));
        assert_eq!(Fault::of(&fault("loop")), Some(Fault::Loop));
        assert_eq!(Fault::of(&fault("membomb")), Some(Fault::MemBomb));
        assert_eq!(Fault::of(&fault("error")), Some(Fault::Error));
        assert_eq!(Fault::of(&fault("other")), None);
    }

    #[test]
    fn without_a_fault_it_echoes() {
        let e = with_doc(Value::Map(Map::new()));
        let Effect::Audit { record } = &handle(&e).unwrap()[0] else { panic!() };
        assert_eq!(record.get("plugin"), Some(&Value::from("echo")));
    }

    #[test]
    fn error_refuses_the_event() {
        assert_eq!(handle(&fault("error")).unwrap_err().to_string(), "refused on purpose");
    }

    #[test]
    #[should_panic(expected = "asked to panic")]
    fn panic_panics() {
        let _ = handle(&fault("panic"));
    }
}
