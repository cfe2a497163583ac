//! The host's health registry: which component is degraded, why, and since when.
//!
//! A component that cannot make its work durable (the audit file, the dead-letter
//! file on a full disk) says so here instead of dropping work; every state change
//! is logged once. `retry_durably` is the one loop those components use: it keeps
//! the work (so its event holds the checkpoint and backpressure stops the sources),
//! retries with capped backoff, and gives up holding only when the host stops.

use crate::backoff::Backoff;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A component's state. `Degraded` means work is held, not lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    Degraded,
}

/// One component's entry, as `/readyz` will show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentHealth {
    pub component: String,
    pub state: State,
    pub reason: String,
    pub since: SystemTime,
}

#[derive(Default)]
pub struct Health {
    components: Mutex<BTreeMap<String, ComponentHealth>>,
    stopping: AtomicBool,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Marks `component` degraded for `reason`; logs when it was not already.
    pub fn degraded(&self, component: &str, reason: &str) {
        let mut map = self.components.lock().expect("health lock");
        match map.get_mut(component) {
            Some(c) if c.state == State::Degraded => c.reason = reason.to_string(),
            _ => {
                tracing::error!(component, "host degraded: {reason}; its work is held (not lost) until this clears");
                let entry = ComponentHealth { component: component.to_string(), state: State::Degraded, reason: reason.to_string(), since: SystemTime::now() };
                map.insert(component.to_string(), entry);
            }
        }
    }

    /// Marks `component` healthy again; logs when it was degraded.
    pub fn ok(&self, component: &str) {
        let mut map = self.components.lock().expect("health lock");
        if let Some(c) = map.get_mut(component) {
            if c.state != State::Ok {
                let held = c.since.elapsed().unwrap_or_default();
                tracing::warn!(component, "recovered after {held:.1?} degraded ({})", c.reason);
                *c = ComponentHealth { component: component.to_string(), state: State::Ok, reason: String::new(), since: SystemTime::now() };
            }
        }
    }

    /// Every component that ever reported, by name.
    pub fn snapshot(&self) -> Vec<ComponentHealth> {
        self.components.lock().expect("health lock").values().cloned().collect()
    }

    /// True when no component is degraded and the host is not stopping.
    pub fn ready(&self) -> bool {
        !self.is_stopping() && self.snapshot().iter().all(|c| c.state == State::Ok)
    }

    /// The host is shutting down: held work stops being retried and stays held
    /// (its events are not checkpointed; they are replayed on the next start).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Runs `op` until it succeeds. Between failures `component` is degraded and
    /// the calling thread waits (50 ms doubling to `RETRY_MAX`), so whatever feeds
    /// it backs up to the sources. Once the host stops, returns the last error
    /// instead of waiting again: the caller must then hold its event's ticket.
    pub fn retry_durably<T, E: std::fmt::Display>(&self, component: &str, mut op: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let mut failed = false;
        loop {
            match op() {
                Ok(v) => {
                    if failed {
                        self.ok(component);
                    }
                    return Ok(v);
                }
                Err(e) => {
                    failed = true;
                    self.degraded(component, &e.to_string());
                    if self.is_stopping() {
                        return Err(e);
                    }
                    let until = Instant::now() + backoff.next_delay();
                    // Sleeps in slices so a stop is noticed at once, not after 5 s.
                    while Instant::now() < until && !self.is_stopping() {
                        std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
                    }
                }
            }
        }
    }
}

/// The first wait between two attempts of held work.
pub const RETRY_FIRST: Duration = Duration::from_millis(50);

/// The longest wait between two attempts of held work.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_work_is_retried_until_it_succeeds_and_the_state_says_so() {
        let health = Health::new();
        let mut tries = 0;
        let r: Result<u32, String> = health.retry_durably("audit", || {
            tries += 1;
            if tries < 3 {
                Err(format!("disk full ({tries})"))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r, Ok(7));
        let s = health.snapshot();
        assert_eq!((s.len(), s[0].state, s[0].component.as_str()), (1, State::Ok, "audit"));
        assert!(health.ready());
    }

    #[test]
    fn a_stopping_host_gets_the_error_back_and_is_not_ready() {
        let health = Health::new();
        health.stop();
        let r: Result<(), &str> = health.retry_durably("dead-letters", || Err("disk full"));
        assert_eq!(r, Err("disk full"));
        let s = health.snapshot();
        assert_eq!((s[0].state, s[0].reason.as_str()), (State::Degraded, "disk full"));
        assert!(!health.ready());
    }
}
